//! Images against a real containerd (a private one per test) and a real registry (Debian's
//! `docker-registry` on a loopback port, fed by `skopeo`). Root; cluster/install-deps.sh
//! installs containerd, busybox-static, docker-registry, skopeo and apache2-utils (htpasswd).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::{GetImageRequest, InfoRequest, ListRequest};
use futures::StreamExt as _;
use skiff_node::runtime::images::{
    self, ensure_image, import_archive, BuiltImage, ImageError, PullPolicy, RegistryAuth,
    TEST_IMAGE,
};
use skiff_node::runtime::Containerd;
use skiff_node::testing;

async fn connect(daemon: &testing::Containerd) -> Containerd {
    Containerd::connect(daemon.address())
        .await
        .expect("connect to the test containerd")
}

fn build(dir: &Path, name: &str) -> (PathBuf, BuiltImage) {
    let archive = dir.join(name);
    let built = images::build_busybox_archive(&archive, TEST_IMAGE).expect("build busybox image");
    (archive, built)
}

async fn snapshot_names(runtime: &Containerd) -> Vec<String> {
    let mut names: Vec<String> = runtime
        .client()
        .snapshots()
        .list(runtime.request(ListSnapshotsRequest {
            snapshotter: images::store::SNAPSHOTTER.into(),
            filters: vec![],
        }))
        .await
        .expect("list snapshots")
        .into_inner()
        .filter_map(|r| async move { r.ok() })
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|r| r.info.into_iter().map(|i| i.name))
        .collect();
    names.sort();
    names
}

async fn lease_count(runtime: &Containerd) -> usize {
    runtime
        .client()
        .leases()
        .list(runtime.request(ListRequest { filters: vec![] }))
        .await
        .expect("list leases")
        .into_inner()
        .leases
        .len()
}

/// Runs containerd's garbage collector now: deleting a lease with `sync` waits for a collection.
async fn collect_garbage(runtime: &Containerd) {
    use containerd_client::services::v1::{CreateRequest, DeleteRequest};
    let id = format!("gc-{}", std::process::id());
    let leases = runtime.client().leases();
    leases
        .clone()
        .create(runtime.request(CreateRequest {
            id: id.clone(),
            labels: Default::default(),
        }))
        .await
        .expect("create lease");
    leases
        .clone()
        .delete(runtime.request(DeleteRequest { id, sync: true }))
        .await
        .expect("delete lease with sync");
}

#[tokio::test]
async fn an_imported_busybox_image_is_unpacked_and_resolves_with_never() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = connect(&daemon).await;
    let (archive, built) = build(daemon.dir(), "busybox.tar");

    // Before the import, Never fails the way kubelet says it.
    let err = ensure_image(&runtime, TEST_IMAGE, PullPolicy::Never, &[])
        .await
        .expect_err("nothing imported yet");
    assert!(matches!(err, ImageError::NeverPull { .. }), "{err}");
    assert_eq!(err.reason(), "ErrImageNeverPull");

    let names = import_archive(&runtime, &archive).await.expect("import");
    assert_eq!(names, vec![TEST_IMAGE.to_string()]);

    let info = ensure_image(&runtime, TEST_IMAGE, PullPolicy::Never, &[])
        .await
        .expect("the imported image resolves");
    assert_eq!(info.name, TEST_IMAGE);
    assert_eq!(info.digest, built.manifest_digest);
    assert_eq!(info.config_digest, built.config_digest);
    assert_eq!(
        info.chain_id, built.chain_id,
        "one layer: chain ID = diff ID"
    );
    assert_eq!(info.config.cmd, vec!["sh".to_string()]);
    assert!(info.config.entrypoint.is_empty());
    assert!(
        info.config
            .env
            .iter()
            .any(|e| e.starts_with("PATH=") && e.contains("/bin")),
        "{:?}",
        info.config.env
    );
    assert_eq!(snapshot_names(&runtime).await, vec![built.chain_id.clone()]);

    // What keeps the image from containerd's garbage collector is in place, and no lease is
    // left behind.
    let config = runtime
        .client()
        .content()
        .info(runtime.request(InfoRequest {
            digest: built.config_digest.clone(),
        }))
        .await
        .expect("config info")
        .into_inner()
        .info
        .expect("config info");
    assert_eq!(
        config.labels.get("containerd.io/gc.ref.snapshot.overlayfs"),
        Some(&built.chain_id)
    );
    assert_eq!(lease_count(&runtime).await, 0);
    // A synchronous garbage collection (deleting a lease with sync) keeps all of it.
    collect_garbage(&runtime).await;
    assert_eq!(snapshot_names(&runtime).await, vec![built.chain_id.clone()]);
    ensure_image(&runtime, TEST_IMAGE, PullPolicy::Never, &[])
        .await
        .expect("still resolves after garbage collection");

    // Importing again changes nothing: same names, same image record, same snapshots.
    let image = |runtime: Containerd| async move {
        runtime
            .client()
            .images()
            .get(runtime.request(GetImageRequest {
                name: TEST_IMAGE.into(),
            }))
            .await
            .expect("get image")
            .into_inner()
            .image
            .expect("image")
    };
    let before = image(runtime.clone()).await;
    let names = import_archive(&runtime, &archive)
        .await
        .expect("import again");
    assert_eq!(names, vec![TEST_IMAGE.to_string()]);
    assert_eq!(image(runtime.clone()).await, before);
    assert_eq!(snapshot_names(&runtime).await, vec![built.chain_id.clone()]);

    // A read-only view on the chain ID holds busybox and its applets.
    let target = daemon.dir().join("view");
    view(&runtime, &info.chain_id, &target, |root| {
        let busybox = std::fs::metadata(root.join("bin/busybox")).expect("bin/busybox");
        let original = std::fs::metadata(images::busybox::BUSYBOX_BINARY).unwrap();
        assert_eq!(busybox.len(), original.len());
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    })
    .await;

    // A bad reference is its own error.
    let err = ensure_image(&runtime, "Not A Reference", PullPolicy::Never, &[])
        .await
        .expect_err("invalid");
    assert_eq!(err.reason(), "InvalidImageName", "{err}");

    // A file that is no image archive says so.
    let junk = daemon.dir().join("junk.tar");
    std::fs::write(&junk, b"definitely not a tar").unwrap();
    let err = import_archive(&runtime, &junk).await.expect_err("junk");
    assert!(matches!(err, ImageError::Archive { .. }), "{err}");
}

#[tokio::test]
async fn a_two_layer_image_unpacks_onto_its_parent_and_keeps_its_config() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = connect(&daemon).await;
    let spec = images::ImageSpec {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: Some(vec!["cat /app/hello.txt".into()]),
        env: vec!["GREETING=hello".into()],
        working_dir: Some("/app".into()),
        user: Some("65534:65534".into()),
        files: vec![(
            "app/hello.txt".into(),
            0o644,
            b"hello from layer two\n".to_vec(),
        )],
        index: true,
        ..Default::default()
    };
    let archive = daemon.dir().join("app.tar");
    let built = images::build_archive(&archive, "skiff.test/app:2", &spec).expect("build");
    assert_eq!(
        import_archive(&runtime, &archive).await.expect("import"),
        vec!["skiff.test/app:2".to_string()]
    );
    // The short name normalises to the same image.
    let info = ensure_image(&runtime, "skiff.test/app:2", PullPolicy::Never, &[])
        .await
        .expect("resolve");
    assert_eq!(info.chain_id, built.chain_id);
    assert_eq!(
        Some(&info.digest),
        built.index_digest.as_ref(),
        "the index is the target"
    );
    assert_eq!(info.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(info.config.cmd, vec!["cat /app/hello.txt"]);
    assert_eq!(info.config.working_dir, "/app");
    assert_eq!(info.config.user, "65534:65534");
    assert!(info.config.env.contains(&"GREETING=hello".to_string()));
    let mut expected = vec![built.diff_ids[0].clone(), built.chain_id.clone()];
    expected.sort();
    assert_eq!(snapshot_names(&runtime).await, expected);

    // The busybox image shares the base layer: importing it unpacks nothing new.
    let (busybox, base) = build(daemon.dir(), "busybox.tar");
    assert_eq!(base.chain_id, built.diff_ids[0]);
    import_archive(&runtime, &busybox)
        .await
        .expect("import busybox");
    assert_eq!(snapshot_names(&runtime).await, expected);

    // The node lists both, the two-layer one (through its index) larger.
    let listed = images::list_images(&runtime).await.expect("list images");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["skiff.test/app:2", TEST_IMAGE]);
    assert_eq!(listed[1].digest, base.manifest_digest);
    assert_eq!(Some(&listed[0].digest), built.index_digest.as_ref());
    assert!(listed[1].size_bytes > 500_000, "{listed:?}");
    assert!(listed[0].size_bytes > listed[1].size_bytes, "{listed:?}");

    let target = daemon.dir().join("view");
    view(&runtime, &info.chain_id, &target, |root| {
        assert_eq!(
            std::fs::read_to_string(root.join("app/hello.txt")).unwrap(),
            "hello from layer two\n"
        );
        assert!(root.join("bin/busybox").is_file());
    })
    .await;
}

#[tokio::test]
async fn a_preload_directory_imports_each_archive() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = connect(&daemon).await;
    let preload = daemon.dir().join("preload");
    std::fs::create_dir_all(&preload).unwrap();
    build(&preload, "busybox.tar");
    std::fs::write(preload.join("README"), "not an archive, skipped").unwrap();
    let names = images::import_dir(&runtime, &preload)
        .await
        .expect("import dir");
    assert_eq!(names, vec![TEST_IMAGE.to_string()]);
    let none = images::import_dir(&runtime, &daemon.dir().join("absent"))
        .await
        .expect("a missing directory is empty");
    assert!(none.is_empty());
}

/// Mounts a read-only view of the snapshot `chain_id` on `target`, runs `check` on it, then
/// unmounts and removes the view.
async fn view(runtime: &Containerd, chain_id: &str, target: &Path, check: impl FnOnce(&Path)) {
    let key = format!("view-{}-{chain_id}", std::process::id());
    // Under a lease: containerd collects active snapshots that nothing references.
    let lease = images::store::Lease::create(runtime).await.expect("lease");
    let mounts = runtime
        .client()
        .snapshots()
        .view(lease.request(
            runtime,
            ViewSnapshotRequest {
                snapshotter: images::store::SNAPSHOTTER.into(),
                key: key.clone(),
                parent: chain_id.to_string(),
                labels: Default::default(),
            },
        ))
        .await
        .expect("view snapshot")
        .into_inner()
        .mounts;
    std::fs::create_dir_all(target).unwrap();
    {
        let _mounted = Mounted::mount(&mounts, target);
        check(target);
    }
    runtime
        .client()
        .snapshots()
        .remove(runtime.request(RemoveSnapshotRequest {
            snapshotter: images::store::SNAPSHOTTER.into(),
            key,
        }))
        .await
        .expect("remove view");
    lease.end(runtime).await.expect("end lease");
}

/// Mounts a snapshot's mounts on a directory; unmounts when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn mount(mounts: &[containerd_client::types::Mount], target: &Path) -> Mounted {
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        let m = &mounts[0];
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let target_c = c(target.to_str().unwrap());
        let rc = if m.r#type == "bind" {
            // SAFETY: mount(2) with valid C strings and no data.
            unsafe {
                libc::mount(
                    c(&m.source).as_ptr(),
                    target_c.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            }
        } else {
            let options: Vec<&str> = m
                .options
                .iter()
                .map(String::as_str)
                .filter(|o| *o != "ro")
                .collect();
            let data = c(&options.join(","));
            // SAFETY: mount(2) with valid C strings; data is the overlay option string.
            unsafe {
                libc::mount(
                    c(&m.source).as_ptr(),
                    target_c.as_ptr(),
                    c(&m.r#type).as_ptr(),
                    libc::MS_RDONLY,
                    data.as_ptr().cast(),
                )
            }
        };
        assert_eq!(rc, 0, "mount {m:?}: {}", std::io::Error::last_os_error());
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.to_str().unwrap_or_default()) {
            // SAFETY: umount2 with a valid C string.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Debian's docker-registry on a loopback port, a child of this test; killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `htpasswd` = (user, password) it demands those credentials.
    fn start(htpasswd: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = htpasswd {
            let output = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils; cluster/install-deps.sh installs it)");
            assert!(output.status.success(), "htpasswd: {output:?}");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, output.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (cluster/install-deps.sh installs it)");
        let registry = Registry {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the OCI archive to `repository:tag` with skopeo.
    fn push(&self, archive: &Path, repository: &str, creds: Option<&str>) {
        self.push_with(archive, repository, creds, &[]);
    }

    /// [`push`](Self::push) with more `skopeo copy` flags.
    fn push_with(&self, archive: &Path, repository: &str, creds: Option<&str>, flags: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--dest-tls-verify=false", "-q"]);
        cmd.args(flags);
        if let Some(creds) = creds {
            cmd.args(["--dest-creds", creds]);
        }
        let output = cmd
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repository}", self.host()))
            .output()
            .expect("skopeo (cluster/install-deps.sh installs it)");
        assert!(
            output.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn images_are_pulled_from_a_loopback_registry() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = connect(&daemon).await;
    let registry = Registry::start(None);
    let (archive, built) = build(daemon.dir(), "busybox.tar");
    registry.push(&archive, "busybox:1", None);
    let reference = format!("{}/busybox:1", registry.host());

    let info = ensure_image(&runtime, &reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("pull");
    assert_eq!(info.name, reference);
    assert_eq!(info.chain_id, built.chain_id);
    assert_eq!(info.config.cmd, vec!["sh".to_string()]);
    assert_eq!(snapshot_names(&runtime).await, vec![built.chain_id.clone()]);
    assert_eq!(lease_count(&runtime).await, 0);

    // Another image under the same tag: IfNotPresent keeps the node's copy, Always re-resolves.
    let fake = daemon.dir().join("fake-busybox");
    std::fs::write(&fake, b"#!/bin/sh\necho another image\n").unwrap();
    let other = daemon.dir().join("other.tar");
    let rebuilt = images::build_busybox_archive_from(&fake, &other, TEST_IMAGE).unwrap();
    registry.push(&other, "busybox:1", None);
    let kept = ensure_image(&runtime, &reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("present");
    assert_eq!(kept.digest, info.digest);
    let moved = ensure_image(&runtime, &reference, PullPolicy::Always, &[])
        .await
        .expect("pull again");
    assert_ne!(moved.digest, info.digest);
    assert_eq!(moved.chain_id, rebuilt.chain_id);

    // An image index (what registries serve for multi-arch images) resolves to this platform.
    let indexed = daemon.dir().join("indexed.tar");
    let spec = images::ImageSpec {
        index: true,
        ..Default::default()
    };
    let built_indexed = images::build_archive(&indexed, TEST_IMAGE, &spec).unwrap();
    registry.push_with(&indexed, "indexed:1", None, &["--all"]);
    let info = ensure_image(
        &runtime,
        &format!("{}/indexed:1", registry.host()),
        PullPolicy::IfNotPresent,
        &[],
    )
    .await
    .expect("pull an index");
    assert_eq!(Some(&info.digest), built_indexed.index_digest.as_ref());
    assert_eq!(info.chain_id, built.chain_id);

    // Docker's manifest format (v2 schema 2, docker layer media types) pulls the same.
    registry.push_with(&archive, "docker:1", None, &["--format", "v2s2"]);
    let info = ensure_image(
        &runtime,
        &format!("{}/docker:1", registry.host()),
        PullPolicy::IfNotPresent,
        &[],
    )
    .await
    .expect("pull a docker v2s2 image");
    assert_ne!(info.digest, built.manifest_digest, "skopeo converted it");
    assert_eq!(info.chain_id, built.chain_id);
    assert_eq!(info.config.cmd, vec!["sh".to_string()]);

    // A tag the registry does not have is a typed not-found.
    let missing = format!("{}/busybox:nope", registry.host());
    let err = ensure_image(&runtime, &missing, PullPolicy::IfNotPresent, &[])
        .await
        .expect_err("no such tag");
    assert!(matches!(err, ImageError::NotFound { .. }), "{err:?}");
    assert_eq!(err.reason(), "ErrImagePull");

    // Nothing listens on a closed port: a pull error, not a hang.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = ensure_image(
        &runtime,
        &format!("127.0.0.1:{closed}/busybox:1"),
        PullPolicy::IfNotPresent,
        &[],
    )
    .await
    .expect_err("no registry there");
    assert!(matches!(err, ImageError::Pull { .. }), "{err:?}");
}

#[tokio::test]
async fn a_registry_with_htpasswd_needs_the_pull_secret() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = connect(&daemon).await;
    let registry = Registry::start(Some(("skiff", "s3cret-pw")));
    let (archive, built) = build(daemon.dir(), "busybox.tar");
    registry.push(&archive, "private/busybox:1", Some("skiff:s3cret-pw"));
    let reference = format!("{}/private/busybox:1", registry.host());

    let err = ensure_image(&runtime, &reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect_err("no credentials");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");

    let wrong = RegistryAuth {
        registry: registry.host(),
        username: "skiff".into(),
        password: "wrong".into(),
    };
    let err = ensure_image(&runtime, &reference, PullPolicy::IfNotPresent, &[wrong])
        .await
        .expect_err("wrong credentials");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");

    // As kubelet reads a kubernetes.io/dockerconfigjson secret.
    let secret = serde_json::json!({"auths": {
        format!("http://{}", registry.host()): {"username": "skiff", "password": "s3cret-pw"}
    }})
    .to_string();
    let auth = RegistryAuth::from_dockerconfigjson(secret.as_bytes(), &registry.host())
        .expect("credentials for the registry");
    // Wrong credentials first, as a pod with two pull secrets may have: the next one is tried.
    let wrong = RegistryAuth {
        registry: registry.host(),
        username: "skiff".into(),
        password: "wrong".into(),
    };
    let info = ensure_image(
        &runtime,
        &reference,
        PullPolicy::IfNotPresent,
        &[wrong, auth],
    )
    .await
    .expect("pull with the secret");
    assert_eq!(info.chain_id, built.chain_id);
}

#[tokio::test]
async fn skiff_node_image_builds_and_imports_from_the_command_line() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = connect(&daemon).await;
    let bin = env!("CARGO_BIN_EXE_skiff-node");
    let archive = daemon.dir().join("cli.tar");
    let output = Command::new(bin)
        .args(["image", "build-test-image"])
        .arg(&archive)
        .output()
        .expect("run skiff-node");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with(TEST_IMAGE));

    let import = |path: &Path| {
        Command::new(bin)
            .arg("image")
            .arg("--containerd-address")
            .arg(daemon.address())
            .arg("import")
            .arg(path)
            .output()
            .expect("run skiff-node")
    };
    let output = import(&archive);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{TEST_IMAGE}\n")
    );
    ensure_image(&runtime, TEST_IMAGE, PullPolicy::Never, &[])
        .await
        .expect("imported from the command line");

    let output = import(&daemon.dir().join("missing.tar"));
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("missing.tar"),
        "{output:?}"
    );
}

#[tokio::test]
async fn an_archive_with_a_corrupt_blob_is_refused() {
    let daemon = testing::Containerd::start().expect("start containerd");
    let runtime = connect(&daemon).await;
    let (archive, built) = build(daemon.dir(), "busybox.tar");
    // Rewrite the archive with one byte of the config changed (its name still claims the old
    // digest).
    let config_name = format!(
        "blobs/sha256/{}",
        built.config_digest.trim_start_matches("sha256:")
    );
    let tampered = daemon.dir().join("tampered.tar");
    let mut out = tar::Builder::new(std::fs::File::create(&tampered).unwrap());
    let mut input = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if path.to_string_lossy() == config_name {
            let last = data.len() - 2;
            data[last] ^= 1;
        }
        out.append_data(&mut header, &path, data.as_slice())
            .unwrap();
    }
    out.finish().unwrap();
    drop(out);

    let err = import_archive(&runtime, &tampered)
        .await
        .expect_err("a corrupt blob");
    assert!(
        err.to_string().contains(&built.config_digest),
        "names the blob: {err}"
    );
    let err = ensure_image(&runtime, TEST_IMAGE, PullPolicy::Never, &[])
        .await
        .expect_err("nothing was imported as an image");
    assert!(matches!(err, ImageError::NeverPull { .. }), "{err}");
    assert_eq!(
        lease_count(&runtime).await,
        0,
        "the lease ends on failure too"
    );
}
