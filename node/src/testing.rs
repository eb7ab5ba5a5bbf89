//! What the node's tests share: a private containerd per test.
//!
//! [`Containerd::start`] runs the machine's `containerd` (Debian's 1.6) as a child process with
//! its own root, state and socket under a temporary directory, and the CRI plugin off, so tests
//! never touch a system containerd and never see each other's containers. Dropping it stops
//! that process (by its PID) and removes what it left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long containerd may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A containerd started for one test.
pub struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    address: PathBuf,
}

impl Containerd {
    /// Starts containerd and waits until its socket accepts connections.
    ///
    /// Fails with a message that says what to install when `containerd` is missing
    /// (`cluster/install-deps.sh` installs it).
    pub fn start() -> anyhow::Result<Containerd> {
        // Under /var/lib, not /tmp: overlayfs snapshots need a filesystem that supports them,
        // and the shim's state must outlive nothing but this test.
        std::fs::create_dir_all("/var/lib/skiff-test")?;
        let dir = tempfile::Builder::new()
            .prefix("containerd-")
            .tempdir_in("/var/lib/skiff-test")?;
        let address = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{address}\"\n\
                 [ttrpc]\n  address = \"{address}.ttrpc\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                address = address.display(),
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start containerd ({e}); install it with cluster/install-deps.sh"
                )
            })?;
        let mut started = Containerd {
            child,
            dir,
            address,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::os::unix::net::UnixStream::connect(&started.address).is_ok() {
                return Ok(started);
            }
            if let Some(status) = started.child.try_wait()? {
                anyhow::bail!(
                    "containerd exited with {status} before it served; its log:\n{}",
                    started.log()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "containerd did not answer on {} within {START_TIMEOUT:?}; its log:\n{}",
                    started.address.display(),
                    started.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC socket (what `--containerd-address` takes).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// A directory that lives as long as this containerd, for the test's other state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM first so containerd closes its database; shims of containers a test left
        // running are killed by the tests that made them (each test cleans its own).
        // SAFETY: kill(2) on the PID of our own child, which we have not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots may still be mounted if a test failed midway; unmount before removal.
        unmount_under(self.dir.path());
    }
}

/// Lazily unmounts every mount point under `dir` (deepest first), so the directory can go.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Ok(c) = std::ffi::CString::new(point) {
            // SAFETY: umount2 with a valid C string; MNT_DETACH never blocks.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Makes a committed snapshot `name` holding the host's static busybox (`/bin/busybox` from
/// Debian's busybox-static) with a symlink per applet, `/etc/passwd` and `/etc/group`: a
/// rootfs parent for runtime tests that need no image.
pub async fn busybox_snapshot(
    runtime: &crate::runtime::Containerd,
    name: &str,
) -> anyhow::Result<()> {
    use crate::runtime::containers::SNAPSHOTTER;
    use containerd_client::services::v1::snapshots::{
        CommitSnapshotRequest, PrepareSnapshotRequest,
    };

    // Roots for containerd's garbage collector, which would otherwise remove them at once.
    let gc_root = || {
        std::collections::HashMap::from([(
            crate::runtime::containers::GC_ROOT_LABEL.to_string(),
            crate::runtime::containers::gc_root_value(),
        )])
    };
    let key = format!("{name}-extract");
    let mounts = runtime
        .client()
        .snapshots()
        .prepare(runtime.request(PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: String::new(),
            labels: gc_root(),
        }))
        .await?
        .into_inner()
        .mounts;
    // A snapshot without a parent is a plain directory, bind-mounted: write into it directly.
    let dir = match mounts.as_slice() {
        [m] if m.r#type == "bind" => PathBuf::from(&m.source),
        other => anyhow::bail!("unexpected mounts for a parentless snapshot: {other:?}"),
    };
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.exists(),
        "/bin/busybox is missing: install busybox-static (cluster/install-deps.sh)"
    );
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "var/run"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(busybox, dir.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    runtime
        .client()
        .snapshots()
        .commit(runtime.request(CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: name.into(),
            key,
            labels: gc_root(),
        }))
        .await?;
    Ok(())
}
