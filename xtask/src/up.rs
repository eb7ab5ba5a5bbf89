//! `cargo xtask up`: a working single-node cluster on this machine, in the foreground.
//!
//! 1. containerd: the system's if `/run/containerd/containerd.sock` answers, else one of
//!    Skiff's own (root `<data-dir>/containerd`, socket `/run/skiff/containerd.sock`);
//! 2. the busybox test image imported into it (no registry is needed for the example app);
//! 3. `skiff-master` on the embedded store (HTTPS 6443, admin kubeconfig
//!    `/etc/skiff/admin.kubeconfig`);
//! 4. `skiff-node run` against it, until the node is Ready.
//!
//! Then it waits. Ctrl-C reaches every process of the foreground group; what is still running
//! afterwards is stopped here, by PID. Containers keep running (as with kubelet) until their
//! pods are deleted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";
const OWN_CONTAINERD: &str = "/run/skiff/containerd.sock";
const KUBECONFIG: &str = "/etc/skiff/admin.kubeconfig";

/// The processes `up` started, stopped by PID when it ends.
struct Started(Vec<(String, Child)>);

impl Drop for Started {
    fn drop(&mut self) {
        for (name, child) in self.0.iter_mut().rev() {
            if let Ok(None) = child.try_wait() {
                // SIGTERM first, so each can shut down cleanly (our own unreaped child's PID).
                signal_pid(child.id(), "TERM");
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("up: stopped {name}");
            }
        }
    }
}

/// Sends `signal` to `pid` with kill(1) (xtask has no libc dependency).
fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

fn answers(socket: &str) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("{what} did not happen within {limit:?}")
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<(std::fs::File, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.log"));
    Ok((std::fs::File::create(&path)?, path))
}

fn start_containerd(data_dir: &Path, started: &mut Started) -> anyhow::Result<String> {
    if answers(SYSTEM_CONTAINERD) {
        println!("up: using the running containerd at {SYSTEM_CONTAINERD}");
        return Ok(SYSTEM_CONTAINERD.into());
    }
    if answers(OWN_CONTAINERD) {
        println!("up: using Skiff's containerd already at {OWN_CONTAINERD}");
        return Ok(OWN_CONTAINERD.into());
    }
    let dir = data_dir.join("containerd");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all("/run/skiff")?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"/run/skiff/containerd\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{OWN_CONTAINERD}\"\n\
             [ttrpc]\n  address = \"{OWN_CONTAINERD}.ttrpc\"\n",
            root = dir.join("root").display()
        ),
    )?;
    let (log, path) = log_file(data_dir, "containerd")?;
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start containerd (cluster/install-deps.sh installs it)")?;
    started.0.push(("containerd".into(), child));
    wait_for("containerd answering", Duration::from_secs(20), || {
        answers(OWN_CONTAINERD)
    })
    .with_context(|| format!("see {}", path.display()))?;
    println!(
        "up: containerd at {OWN_CONTAINERD} (log {})",
        path.display()
    );
    Ok(OWN_CONTAINERD.into())
}

fn kubectl(args: &[&str]) -> Option<String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(KUBECONFIG)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Brings the cluster up and waits until the master exits (Ctrl-C).
pub fn run(root: &Path, data_dir: &Path, master_args: &[String]) -> anyhow::Result<()> {
    let mut started = Started(Vec::new());
    let release = root.join("target/release");
    let containerd = start_containerd(data_dir, &mut started)?;

    let image = root.join("target/images/busybox.tar");
    std::fs::create_dir_all(image.parent().unwrap_or(root))?;
    crate::busybox::build_busybox_archive(&image, crate::busybox::TEST_IMAGE)
        .with_context(|| format!("cannot build {}", image.display()))?;
    crate::run(
        Command::new(release.join("skiff-node"))
            .args(["image", "--containerd-address", &containerd, "import"])
            .arg(&image),
    )?;

    let (log, master_log) = log_file(data_dir, "skiff-master")?;
    let master = Command::new(release.join("skiff-master"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(master_args)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start skiff-master")?;
    started.0.push(("skiff-master".into(), master));
    wait_for("skiff-master ready", Duration::from_secs(60), || {
        Path::new(KUBECONFIG).exists() && kubectl(&["get", "--raw", "/readyz"]).is_some()
    })
    .with_context(|| format!("see {}", master_log.display()))?;
    println!(
        "up: skiff-master serving on https://127.0.0.1:6443 (log {})",
        master_log.display()
    );

    let (log, node_log) = log_file(data_dir, "skiff-node")?;
    let node = Command::new(release.join("skiff-node"))
        .args([
            "run",
            "--kubeconfig",
            KUBECONFIG,
            "--containerd-address",
            &containerd,
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start skiff-node")?;
    started.0.push(("skiff-node".into(), node));
    wait_for("the node Ready", Duration::from_secs(90), || {
        kubectl(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .is_some_and(|s| s.split_whitespace().any(|v| v == "True"))
    })
    .with_context(|| format!("see {}", node_log.display()))?;
    println!("up: skiff-node is Ready (log {})", node_log.display());
    println!();
    println!("A single-node cluster is up. In another terminal:");
    println!("  export KUBECONFIG={KUBECONFIG}");
    println!("  kubectl get nodes");
    println!("  kubectl apply -f cluster/examples/hello.yaml");
    println!("Ctrl-C stops skiff-node, skiff-master and the containerd started here.");

    // Wait for the master (Ctrl-C reaches it); then the rest are stopped by Started's drop.
    loop {
        for (name, child) in started.0.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                println!("up: {name} exited ({status}); stopping the rest");
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
