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

impl Containerd {
    /// Kills every task in every namespace of this containerd (SIGKILL) and deletes them, and
    /// removes the network namespaces of their pods, so a test leaves nothing running behind.
    fn kill_all_tasks(&self) {
        let address = self.address.clone();
        let worker = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = containerd_client::Client::from_path(&address).await else {
                    return;
                };
                let Ok(namespaces) = client
                    .namespaces()
                    .list(containerd_client::services::v1::ListNamespacesRequest::default())
                    .await
                else {
                    return;
                };
                for ns in namespaces.into_inner().namespaces {
                    let Ok(rt) = crate::runtime::Containerd::connect_in(&address, &ns.name).await
                    else {
                        continue;
                    };
                    let Ok(records) = rt.list_containers(&[]).await else {
                        continue;
                    };
                    for r in records {
                        let _ = rt.signal(&r.id, libc::SIGKILL as u32, true).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), rt.wait(&r.id)).await;
                        let _ = rt.remove_container(&r.id).await;
                        // The agent names each pod's network namespace after the pod's UID.
                        let uid = r.label(crate::runtime::containers::POD_UID_LABEL);
                        if !uid.is_empty() {
                            let _ = crate::network::remove_netns(&format!("skiff-{uid}"));
                        }
                    }
                }
            });
        });
        let _ = worker.join();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill_all_tasks();
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
        crate::agent::volumes::unmount_under(self.dir.path());
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

/// Polls `check` every 250 ms until it holds (true) or `timeout` passes (false).
pub async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Address ranges and a bridge of one test's own, so tests on one machine never share them,
/// and the routes the agent installed for them are removed afterwards.
pub struct NodeLab {
    /// The cluster's pod range (`10.<200+n>.0.0/16`, n < 44).
    pub cluster_cidr: String,
    /// The Service range (`172.<16+n>.0.0/16`).
    pub service_cidr: String,
    /// The bridge skiff-cni makes (`skt<n>`).
    pub bridge: String,
}

impl NodeLab {
    /// A lab with ranges no other running test uses (by PID and a process-wide counter). The
    /// pod ranges stop at 10.243: 10.244.0.0/16 is the default cluster range (`cargo xtask up`'s
    /// and many clusters'), and a node of a real cluster on the same host routes it to its own
    /// bridge.
    pub fn new() -> NodeLab {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n =
            (std::process::id() + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) * 7) % 44;
        NodeLab {
            cluster_cidr: format!("10.{}.0.0/16", 200 + n),
            service_cidr: format!("172.{}.0.0/16", 16 + n % 16),
            bridge: format!("skt{n}"),
        }
    }

    /// The master flags that give out these ranges.
    pub fn master_args(&self) -> Vec<String> {
        vec![
            "--cluster-cidr".into(),
            self.cluster_cidr.clone(),
            "--service-cluster-ip-range".into(),
            self.service_cidr.clone(),
        ]
    }
}

impl Default for NodeLab {
    fn default() -> Self {
        NodeLab::new()
    }
}

impl Drop for NodeLab {
    fn drop(&mut self) {
        let nets: Vec<ipnet::IpNet> = [&self.cluster_cidr, &self.service_cidr]
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        // The routes are removed over netlink, which is async: on a thread of its own, since
        // drop may run inside a test's runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(crate::network::remove_blackhole_routes(&nets));
            }
        })
        .join();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A `skiff-node run` process for one test, killed (by its PID) on drop. Containers it
/// started keep running, as with a real agent; the test's [`Containerd`] removes them.
pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    /// The node's name.
    pub node_name: String,
    /// The node API's port.
    pub port: u16,
    args: Vec<String>,
    binary: PathBuf,
}

impl Agent {
    /// Starts `binary` (`env!("CARGO_BIN_EXE_skiff-node")`) as node `node_name` of the master
    /// whose admin kubeconfig is `kubeconfig`, on `containerd`, in `lab`'s ranges; its state
    /// and logs live under `containerd.dir()/<node_name>`.
    pub fn start(
        binary: &Path,
        kubeconfig: &Path,
        containerd: &Containerd,
        lab: &NodeLab,
        node_name: &str,
        extra: &[&str],
    ) -> anyhow::Result<Agent> {
        let dir = containerd.dir().join(node_name);
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--node-name".into(),
            node_name.into(),
            "--node-ip".into(),
            "127.0.0.1".into(),
            "--containerd-address".into(),
            containerd.address().display().to_string(),
            "--root-dir".into(),
            dir.join("root").display().to_string(),
            "--pod-logs-dir".into(),
            dir.join("logs").display().to_string(),
            "--cni-conf-dir".into(),
            dir.join("cni").display().to_string(),
            "--cni-bin-dir".into(),
            "/usr/lib/cni".into(),
            "--cluster-cidr".into(),
            lab.cluster_cidr.clone(),
            "--service-cluster-ip-range".into(),
            lab.service_cidr.clone(),
            "--bridge".into(),
            lab.bridge.clone(),
            "--port".into(),
            port.to_string(),
            // Test machines run with little free disk; pressure would taint the node.
            "--eviction-hard=memory.available<1Mi".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut agent = Agent {
            child: None,
            log: dir.join("agent.log"),
            node_name: node_name.to_string(),
            port,
            args,
            binary: binary.to_path_buf(),
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "info,skiff_node=debug,kube_client=off")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9` of the agent, then a fresh start with the same flags.
    pub fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn()
    }

    /// The agent's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last 8 KiB of the agent's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(8192);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `skiff-master` binary for end-to-end tests: `$SKIFF_MASTER_BIN`, else the one in the
/// calling test's profile directory (`target/debug` or `target/release`), else the other.
pub fn master_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("skiff-master", "SKIFF_MASTER_BIN", "skiff-master")
}

/// The `skiff` command line for end-to-end tests: `$SKIFF_BIN`, else found as
/// [`master_binary`] finds the master.
pub fn ctl_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("skiff", "SKIFF_BIN", "skiff")
}

/// A binary of this workspace: `$<env>`, else beside the running test's profile directory.
fn workspace_binary(name: &str, env: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    // Tests run from target/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target/<profile> above {}", exe.display()))?;
    let target = profile
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no target/ above {}", profile.display()))?;
    [
        profile.join(name),
        target.join("release").join(name),
        target.join("debug").join(name),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .ok_or_else(|| {
        anyhow::anyhow!(
            "no {name} binary under {}: run `cargo build -p {package}` or set {env}",
            target.display()
        )
    })
}
