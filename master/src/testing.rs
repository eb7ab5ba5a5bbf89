//! Helpers for tests and benchmarks: a real etcd and a real `skiff-master` on loopback.
//!
//! [`Etcd::start`] runs a single-member etcd with its data in a temporary directory, on two free
//! loopback ports, and returns once it answers requests. Dropping the [`Etcd`] kills it and
//! deletes its data.
//!
//! The binary is `$SKIFF_ETCD_BIN` if set, else `etcd` on the `PATH` (`cluster/install-deps.sh`
//! installs Debian's).

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// How long etcd may take to answer after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often to try a request while waiting.
const READY_POLL: Duration = Duration::from_millis(100);
/// Attempts with fresh ports when another process takes one of ours first.
const PORT_ATTEMPTS: usize = 5;
/// How much of etcd's log an error shows.
const LOG_TAIL_BYTES: u64 = 4096;

/// A running single-member etcd, killed on drop.
pub struct Etcd {
    child: Option<Child>,
    data_dir: tempfile::TempDir,
    /// The client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd and waits (at most 20 s) until it answers.
    pub async fn start() -> anyhow::Result<Etcd> {
        let binary = find_etcd()?;
        let mut last_error = None;
        for attempt in 1..=PORT_ATTEMPTS {
            match Self::start_once(&binary).await? {
                Ok(etcd) => return Ok(etcd),
                Err(port_clash) => {
                    tracing::debug!(attempt, error = %port_clash, "etcd port taken; retrying");
                    last_error = Some(port_clash);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("no attempt made"))
            .context(format!(
                "etcd could not bind free ports in {PORT_ATTEMPTS} attempts"
            )))
    }

    /// One attempt. The outer error is final; the inner one is a port clash worth retrying.
    async fn start_once(binary: &Path) -> anyhow::Result<anyhow::Result<Etcd>> {
        let data_dir = tempfile::Builder::new()
            .prefix("skiff-etcd-")
            .tempdir()
            .context("cannot create a temporary directory for etcd")?;
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = data_dir.path().join("etcd.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log_path.display()))?;

        let mut command = Command::new(binary);
        command
            .arg("--name")
            .arg("skiff-test")
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("skiff-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // etcd refuses to start when an ETCD_* variable shadows a flag; keep the caller's out.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut etcd = Etcd {
            child: Some(child),
            data_dir,
            endpoint: client_url,
        };
        tracing::debug!(endpoint = %etcd.endpoint, dir = %etcd.data_dir.path().display(), "started etcd");

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = etcd.exited()? {
                let tail = etcd.log_tail();
                if tail.contains("address already in use") {
                    return Ok(Err(anyhow!(
                        "etcd exited ({status}): a port was taken\n{tail}"
                    )));
                }
                bail!("etcd exited during startup ({status}); its log ends with:\n{tail}");
            }
            if etcd.answers().await {
                return Ok(Ok(etcd));
            }
            if Instant::now() >= deadline {
                let tail = etcd.log_tail();
                bail!(
                    "etcd at {} did not answer within {READY_TIMEOUT:?}; its log ends with:\n{tail}",
                    etcd.endpoint
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The client endpoints, as [`crate::store::Backend::Etcd`] takes them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    /// The directory holding etcd's data and log.
    pub fn dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The end of etcd's log (stdout and stderr), for a failure message.
    pub fn log_tail(&self) -> String {
        tail(&self.data_dir.path().join("etcd.log"))
    }

    /// Kills etcd now (to test an unavailable store); dropping does the same.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            if let Err(e) = child.kill() {
                tracing::warn!(pid, error = %e, "cannot kill etcd");
            }
            if let Err(e) = child.wait() {
                tracing::warn!(pid, error = %e, "cannot reap etcd");
            }
        }
    }

    /// The exit status, if etcd has exited.
    fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().context("cannot check on etcd"),
            None => bail!("etcd was stopped"),
        }
    }

    /// Whether etcd answers a read, within a second.
    async fn answers(&self) -> bool {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(1));
        let attempt = async {
            let mut client =
                etcd_client::Client::connect([self.endpoint.as_str()], Some(options)).await?;
            client.get("/", None).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), attempt).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The etcd binary: `$SKIFF_ETCD_BIN`, or `etcd` on the `PATH`.
fn find_etcd() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SKIFF_ETCD_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "etcd not found at SKIFF_ETCD_BIN={}: run cluster/install-deps.sh",
            path.display()
        );
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow!("etcd not found: run cluster/install-deps.sh"))
}

/// A loopback port free right now (another process may still take it before etcd does).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("cannot bind a loopback port to find a free one")?;
    Ok(listener
        .local_addr()
        .context("cannot read a bound port")?
        .port())
}

/// A running `skiff-master` on loopback with its data in a temporary directory, killed on drop.
///
/// Integration tests pass `env!("CARGO_BIN_EXE_skiff-master")`; benchmarks pass the release
/// binary's path.
pub struct Master {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The HTTPS URL, `https://127.0.0.1:<port>`.
    pub url: String,
    /// The admin kubeconfig the master wrote.
    pub kubeconfig: PathBuf,
}

impl Master {
    /// Starts the master (on etcd if `etcd_servers` is given, else on the embedded store) and
    /// waits (at most 30 s) until `/readyz` answers.
    pub fn start(
        binary: &Path,
        etcd_servers: Option<&str>,
        extra_args: &[&str],
    ) -> anyhow::Result<Master> {
        let dir = tempfile::Builder::new().prefix("skiff-master-").tempdir()?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let port = free_port()?;
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(dir.path())
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &port.to_string(),
            ])
            .arg("--admin-kubeconfig")
            .arg(&kubeconfig)
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("master.log"))?);
        if let Some(servers) = etcd_servers {
            cmd.args(["--etcd-servers", servers]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let mut master = Master {
            child: Some(child),
            dir,
            url: format!("https://127.0.0.1:{port}"),
            kubeconfig,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if master.kubeconfig.exists() && master.ready() {
                return Ok(master);
            }
            if let Some(child) = master.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("skiff-master exited with {status}: {}", master.log_tail());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "skiff-master did not become ready in 30 s: {}",
                    master.log_tail()
                );
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// Whether `/readyz` answers 200 (a plain TLS request, certificate not checked).
    fn ready(&self) -> bool {
        Command::new("curl")
            .args(["-ksf", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("{}/readyz", self.url))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The master's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kube client authenticated by the admin kubeconfig (its own connection pool).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("read {}", self.kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .context("client config from the admin kubeconfig")?;
        kube::Client::try_from(config).context("build the kube client")
    }

    /// Runs the real `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .context("run kubectl (install it with cluster/install-deps.sh)")
    }

    /// The process id, for RSS and CPU readings.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last few KiB of the master's log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("master.log"))
    }

    /// Stops the master (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log file, or a note that it could not be read.
fn tail(path: &Path) -> String {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(no log at {}: {e})", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Hollow nodes (`skiff-node hollow`) registered with a [`Master`], killed on drop — a kill is
/// how tests make nodes stop renewing their Leases.
pub struct Hollow {
    child: Option<Child>,
    log: PathBuf,
}

impl Hollow {
    /// The `skiff-node` binary next to `master_binary` (cargo builds every workspace binary into
    /// the same directory).
    pub fn binary_beside(master_binary: &Path) -> anyhow::Result<PathBuf> {
        let path = master_binary.with_file_name("skiff-node");
        if !path.exists() {
            bail!(
                "{} is missing: build it with `cargo build --release -p skiff-node` \
                 (cargo xtask test builds the whole workspace)",
                path.display()
            );
        }
        Ok(path)
    }

    /// Starts `count` hollow nodes named `<prefix><index>` from `start_index`, with extra flags.
    pub fn start(
        binary: &Path,
        master: &Master,
        prefix: &str,
        start_index: usize,
        count: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<Hollow> {
        let log = master
            .dir()
            .join(format!("hollow-{prefix}{start_index}.log"));
        let child = Command::new(binary)
            .arg("hollow")
            .arg("--kubeconfig")
            .arg(&master.kubeconfig)
            .args(["--name-prefix", prefix])
            .args(["--start-index", &start_index.to_string()])
            .args(["--count", &count.to_string()])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {} hollow", binary.display()))?;
        Ok(Hollow {
            child: Some(child),
            log,
        })
    }

    /// The process id, for RSS and CPU readings.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last few KiB of the hollow nodes' log.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// Kills the process (SIGKILL): its nodes stop renewing their Leases at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Hollow {
    fn drop(&mut self) {
        self.kill();
    }
}
