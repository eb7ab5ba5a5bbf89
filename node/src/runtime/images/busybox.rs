//! The test image: an OCI image-layout archive built from the machine's static busybox.
//!
//! No registry is reachable from the machines Skiff is tested on, so tests and `cargo xtask
//! image` make their image here, from Debian's `busybox-static` (`/bin/busybox`): one gzip
//! layer holding `/bin/busybox`, a symlink per applet the tests use, `/etc/passwd`,
//! `/etc/group` and `/tmp`; a config with `Cmd ["sh"]` and a `PATH`. Every timestamp, owner
//! and the order of entries are fixed, so the same busybox binary always gives the same digests.
//!
//! This file depends only on `std`, `tar`, `flate2`, `sha2` and `serde_json`: xtask includes it
//! with `#[path]` so that `cargo xtask image` needs none of skiff-node's heavier dependencies.

use std::io::{self, Write as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";

/// The reference tests give the image.
pub const TEST_IMAGE: &str = "skiff.test/busybox:1";

/// The applets linked in `/bin` (each a symlink to `busybox`).
pub const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "chmod", "cp", "cut", "date", "df", "dirname", "du", "echo", "env",
    "false", "find", "grep", "head", "hostname", "httpd", "id", "ip", "kill", "ln", "ls", "mkdir",
    "mount", "mv", "nc", "nslookup", "ping", "printf", "ps", "pwd", "readlink", "rm", "sed", "seq",
    "sleep", "sort", "stat", "tail", "tee", "test", "timeout", "top", "touch", "tr", "true",
    "uname", "wc", "wget", "whoami", "xargs",
];

/// The `PATH` in the image's config.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every entry's modification time (2024-01-01T00:00:00Z), so digests do not change.
const MTIME: u64 = 1_704_067_200;

/// OCI media types written here.
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What [`build_archive`] wrote: the digests a test can check against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// The reference in the archive's `org.opencontainers.image.ref.name` annotation.
    pub reference: String,
    /// The manifest's digest (`sha256:…`), the image's target in containerd.
    pub manifest_digest: String,
    /// The config's digest (the image ID).
    pub config_digest: String,
    /// The digests of the uncompressed layers, base first.
    pub diff_ids: Vec<String>,
    /// The top layer's chain ID: the snapshot a container's rootfs sits on.
    pub chain_id: String,
    /// With [`ImageSpec::index`]: the image index's digest, which is then the image's target.
    pub index_digest: Option<String>,
}

/// What goes into a test image besides busybox: the process defaults and, optionally, a
/// second layer of files. The default is the plain busybox image (`Cmd ["sh"]`).
#[derive(Clone, Debug, Default)]
pub struct ImageSpec {
    /// The busybox binary (default [`BUSYBOX_BINARY`]).
    pub busybox: Option<std::path::PathBuf>,
    /// `Entrypoint` (default none).
    pub entrypoint: Vec<String>,
    /// `Cmd` (default `["sh"]`).
    pub cmd: Option<Vec<String>>,
    /// `Env` after `PATH`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir` (default `/`).
    pub working_dir: Option<String>,
    /// `User` (default none: root).
    pub user: Option<String>,
    /// Files for a second layer on top of busybox's: (path without leading `/`, mode,
    /// content). Their directories are added as needed. None: a one-layer image.
    pub files: Vec<(String, u32, Vec<u8>)>,
    /// Wrap the manifest in an image index (a one-platform "multi-arch" image), as registries
    /// serve most public images.
    pub index: bool,
}

/// Writes an OCI image-layout tar to `out` holding the busybox image named `reference`,
/// from the machine's [`BUSYBOX_BINARY`].
pub fn build_busybox_archive(out: &Path, reference: &str) -> io::Result<BuiltImage> {
    build_archive(out, reference, &ImageSpec::default())
}

/// [`build_busybox_archive`] from the busybox binary at `busybox`.
pub fn build_busybox_archive_from(
    busybox: &Path,
    out: &Path,
    reference: &str,
) -> io::Result<BuiltImage> {
    let spec = ImageSpec {
        busybox: Some(busybox.to_path_buf()),
        ..ImageSpec::default()
    };
    build_archive(out, reference, &spec)
}

/// Writes an OCI image-layout tar to `out` holding the image `spec` describes, named
/// `reference`.
pub fn build_archive(out: &Path, reference: &str, spec: &ImageSpec) -> io::Result<BuiltImage> {
    let busybox = spec.busybox.as_deref().unwrap_or(Path::new(BUSYBOX_BINARY));
    let binary = std::fs::read(busybox).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot read the busybox binary {} ({e}); install Debian's busybox-static \
                 (cluster/install-deps.sh does)",
                busybox.display()
            ),
        )
    })?;
    let mut layers = vec![layer(&binary)?];
    if !spec.files.is_empty() {
        layers.push(files_layer(&spec.files)?);
    }
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let mut chain_id = String::new();
    for diff_id in &diff_ids {
        chain_id = if chain_id.is_empty() {
            diff_id.clone()
        } else {
            sha256(format!("{chain_id} {diff_id}").as_bytes())
        };
    }
    let compressed = layers
        .iter()
        .map(|l| gzip(l))
        .collect::<io::Result<Vec<_>>>()?;
    let layer_descriptors: Vec<serde_json::Value> = compressed
        .iter()
        .map(|gz| {
            serde_json::json!({ "mediaType": MEDIA_LAYER_GZIP, "digest": sha256(gz), "size": gz.len() })
        })
        .collect();

    let mut env = vec![PATH_ENV.to_string()];
    env.extend(spec.env.iter().cloned());
    let mut process = serde_json::json!({
        "Env": env,
        "Cmd": spec.cmd.clone().unwrap_or_else(|| vec!["sh".to_string()]),
        "WorkingDir": spec.working_dir.clone().unwrap_or_else(|| "/".to_string()),
    });
    if !spec.entrypoint.is_empty() {
        process["Entrypoint"] = serde_json::json!(spec.entrypoint);
    }
    if let Some(user) = &spec.user {
        process["User"] = serde_json::json!(user);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": process,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))?;
    let config_digest = sha256(&config);

    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layer_descriptors,
    }))?;
    let manifest_digest = sha256(&manifest);

    let platform = serde_json::json!({ "architecture": go_arch(), "os": "linux" });
    let image_index = if spec.index {
        Some(serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": platform,
            }],
        }))?)
    } else {
        None
    };
    let index_digest = image_index.as_deref().map(sha256);
    let (target_type, target_digest, target_size) = match (&image_index, &index_digest) {
        (Some(bytes), Some(digest)) => (MEDIA_INDEX, digest.clone(), bytes.len()),
        _ => (MEDIA_MANIFEST, manifest_digest.clone(), manifest.len()),
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": target_type,
            "digest": target_digest,
            "size": target_size,
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": reference,
            },
        }],
    }))?;

    let mut archive = tar::Builder::new(Vec::new());
    archive.mode(tar::HeaderMode::Deterministic);
    append_dir(&mut archive, "blobs/", 0o755)?;
    append_dir(&mut archive, "blobs/sha256/", 0o755)?;
    // Blobs sorted by digest: a fixed order however the digests come out.
    let mut blobs: Vec<(String, &[u8])> = compressed
        .iter()
        .map(|gz| (sha256(gz), gz.as_slice()))
        .collect();
    blobs.push((config_digest.clone(), &config));
    blobs.push((manifest_digest.clone(), &manifest));
    if let (Some(bytes), Some(digest)) = (&image_index, &index_digest) {
        blobs.push((digest.clone(), bytes));
    }
    blobs.sort();
    blobs.dedup();
    for (digest, data) in blobs {
        let hex = digest.trim_start_matches("sha256:");
        append_file(&mut archive, &format!("blobs/sha256/{hex}"), 0o644, data)?;
    }
    append_file(&mut archive, "index.json", 0o644, &index)?;
    append_file(
        &mut archive,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let bytes = archive.into_inner()?;

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside the target and renamed, so a reader never sees half an archive.
    let partial = out.with_extension("tar.partial");
    std::fs::write(&partial, &bytes)?;
    std::fs::rename(&partial, out)?;
    Ok(BuiltImage {
        reference: reference.to_string(),
        manifest_digest,
        config_digest,
        diff_ids,
        chain_id,
        index_digest,
    })
}

/// A layer of `files`, with the directories they need, in path order.
fn files_layer(files: &[(String, u32, Vec<u8>)]) -> io::Result<Vec<u8>> {
    let mut dirs = std::collections::BTreeSet::new();
    let mut sorted: Vec<&(String, u32, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, _, _) in &sorted {
        let path = path.trim_start_matches('/');
        let mut prefix = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            prefix.push_str(part);
            prefix.push('/');
            dirs.insert(prefix.clone());
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for dir in &dirs {
        append_dir(&mut tar, dir, if dir == "tmp/" { 0o1777 } else { 0o755 })?;
    }
    for (path, mode, data) in sorted {
        append_file(&mut tar, path.trim_start_matches('/'), *mode, data)?;
    }
    tar.into_inner()
}

/// The uncompressed layer: the root filesystem as a tar.
fn layer(busybox: &[u8]) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for dir in [
        "bin/", "etc/", "root/", "usr/", "usr/bin/", "var/", "var/www/",
    ] {
        append_dir(&mut tar, dir, if dir == "root/" { 0o700 } else { 0o755 })?;
    }
    append_dir(&mut tar, "tmp/", 0o1777)?;
    append_file(&mut tar, "bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        append_symlink(&mut tar, &format!("bin/{applet}"), "busybox")?;
    }
    append_symlink(&mut tar, "usr/bin/env", "/bin/busybox")?;
    append_file(
        &mut tar,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    append_file(
        &mut tar,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    )?;
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> io::Result<()> {
    let mut header = header(tar::EntryType::Directory, mode, 0);
    tar.append_data(&mut header, path, io::empty())
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut header, path, data)
}

fn append_symlink(tar: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> io::Result<()> {
    let mut header = header(tar::EntryType::Symlink, 0o777, 0);
    tar.append_link(&mut header, path, target)
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    // GzBuilder leaves the header's mtime at 0 and names no file: the output depends on the
    // input alone.
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

/// `sha256:<hex>` of `data`.
fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// This machine's architecture in Go's (and OCI's) spelling.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_deterministic_and_names_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let fake_busybox = dir.path().join("busybox");
        std::fs::write(&fake_busybox, b"\x7fELF not really").unwrap();
        let a = dir.path().join("a.tar");
        let b = dir.path().join("b.tar");
        let first = build_busybox_archive_from(&fake_busybox, &a, TEST_IMAGE).unwrap();
        let second = build_busybox_archive_from(&fake_busybox, &b, TEST_IMAGE).unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        let mut names = Vec::new();
        let mut index = String::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&a).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            if path == "index.json" {
                io::Read::read_to_string(&mut entry, &mut index).unwrap();
            }
            names.push(path);
        }
        assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
        let manifest_blob = format!(
            "blobs/sha256/{}",
            first.manifest_digest.trim_start_matches("sha256:")
        );
        assert!(names.contains(&manifest_blob), "{names:?}");
        assert!(index.contains(TEST_IMAGE), "{index}");

        // Another binary gives other digests.
        std::fs::write(&fake_busybox, b"\x7fELF another").unwrap();
        let third = build_busybox_archive_from(&fake_busybox, &b, TEST_IMAGE).unwrap();
        assert_ne!(first.diff_ids, third.diff_ids);
        assert_eq!(first.chain_id, first.diff_ids[0]);
    }

    #[test]
    fn files_make_a_second_layer_and_the_config_follows_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let fake_busybox = dir.path().join("busybox");
        std::fs::write(&fake_busybox, b"\x7fELF not really").unwrap();
        let spec = ImageSpec {
            busybox: Some(fake_busybox),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: Some(vec!["echo hi".into()]),
            env: vec!["GREETING=hello".into()],
            working_dir: Some("/app".into()),
            user: Some("65534".into()),
            files: vec![("app/data/hello.txt".into(), 0o644, b"hello\n".to_vec())],
            index: true,
        };
        let out = dir.path().join("app.tar");
        let built = build_archive(&out, "skiff.test/app:1", &spec).unwrap();
        assert_eq!(built.diff_ids.len(), 2);
        let chain = sha256(format!("{} {}", built.diff_ids[0], built.diff_ids[1]).as_bytes());
        assert_eq!(built.chain_id, chain);
        assert!(built.index_digest.is_some());
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let config_path = format!(
            "blobs/sha256/{}",
            built.config_digest.trim_start_matches("sha256:")
        );
        let mut config = String::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_string_lossy() == config_path {
                io::Read::read_to_string(&mut entry, &mut config).unwrap();
            }
        }
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/bin/sh");
        assert_eq!(config["config"]["User"], "65534");
        assert_eq!(config["config"]["WorkingDir"], "/app");
        assert_eq!(config["config"]["Env"][1], "GREETING=hello");
    }

    #[test]
    fn a_missing_binary_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_busybox_archive_from(
            &dir.path().join("nope"),
            &dir.path().join("out.tar"),
            TEST_IMAGE,
        )
        .unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
    }
}
