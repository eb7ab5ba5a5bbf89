//! The node agent (`skiff-node run`): Skiff's kubelet.
//!
//! It registers the Node, keeps its Lease and status fresh, sets up the node's pod network,
//! and runs one [`worker`] per pod bound to it. It is an ordinary API client: it watches the
//! pods whose `spec.nodeName` is this node and writes their status; everything it knows about
//! containers it reads back from containerd, so it can be killed and restarted at any time
//! without touching running containers.
//!
//! ```text
//! watch pods (spec.nodeName=me) ──▶ pod manager ──▶ one worker per pod UID
//!                                     ▲   │            │ sandbox: netns + CNI (network/)
//!     containerd containers (labels) ─┘   │            │ images (runtime/images)
//!       (adopted at start, orphans removed)            │ containers + tasks (runtime/containers)
//!                                                      └▶ PATCH pods/status when it changes
//! ```

pub mod env;
pub mod node;
pub mod probe;
pub mod quantity;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use tokio::sync::mpsc;

use crate::network::{self, CniNetworking, NodeNetworkConfig, PluginConf, PodNetworking};
use crate::runtime::containers::{ContainerRecord, TaskState, POD_UID_LABEL};
use crate::runtime::Containerd;

/// `skiff-node run` flags (kubelet's names where kubelet has one).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The kubeconfig to reach the master with (the admin one works on a single node).
    #[arg(
        long,
        env = "SKIFF_KUBECONFIG",
        default_value = "/etc/skiff/admin.kubeconfig"
    )]
    pub kubeconfig: PathBuf,
    /// Join the master at this URL (`https://master:6443`) with `--token` and
    /// `--certificate-authority` instead of a kubeconfig.
    #[arg(long, env = "SKIFF_SERVER", requires_all = ["token", "certificate_authority"])]
    pub server: Option<String>,
    /// The bearer token for `--server` (the master's `pki/admin.token`).
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA certificate for `--server` (the master's `pki/ca.crt`).
    #[arg(long, env = "SKIFF_CERTIFICATE_AUTHORITY")]
    pub certificate_authority: Option<PathBuf>,
    /// The node's name (default: the host name, lowercased).
    #[arg(long, env = "SKIFF_NODE_NAME")]
    pub node_name: Option<String>,
    /// The node's InternalIP (default: the source address of the default route).
    #[arg(long, env = "SKIFF_NODE_IP")]
    pub node_ip: Option<IpAddr>,
    /// containerd's gRPC socket.
    #[arg(long, env = "SKIFF_CONTAINERD_ADDRESS", default_value = crate::runtime::DEFAULT_ADDRESS)]
    pub containerd_address: PathBuf,
    /// Where the agent keeps pod directories, volumes and network state.
    #[arg(long, env = "SKIFF_ROOT_DIR", default_value = "/var/lib/skiff-node")]
    pub root_dir: PathBuf,
    /// Where container logs go (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    #[arg(long, env = "SKIFF_POD_LOGS_DIR", default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// The CNI configuration directory; skiff-cni's is written there when it is empty.
    #[arg(long, env = "SKIFF_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked for (comma-separated); skiff-node's own directory is added.
    #[arg(
        long,
        env = "SKIFF_CNI_BIN_DIR",
        value_delimiter = ',',
        default_value = "/opt/cni/bin,/usr/lib/cni"
    )]
    pub cni_bin_dir: Vec<PathBuf>,
    /// The cluster's pod range (blackholed so untranslated traffic never leaves the node).
    #[arg(long, env = "SKIFF_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::IpNet,
    /// The Service range (blackholed too).
    #[arg(
        long,
        env = "SKIFF_SERVICE_CLUSTER_IP_RANGE",
        default_value = "10.96.0.0/12"
    )]
    pub service_cluster_ip_range: ipnet::IpNet,
    /// This node's pod range when the master does not assign one (`spec.podCIDR` wins).
    #[arg(long, env = "SKIFF_POD_CIDR")]
    pub pod_cidr: Option<ipnet::IpNet>,
    /// The bridge skiff-cni puts pods on.
    #[arg(long, default_value = "skiff0")]
    pub bridge: String,
    /// The node API's port (logs, exec, image import).
    #[arg(long, env = "SKIFF_NODE_PORT", default_value_t = 10250)]
    pub port: u16,
    /// The most pods the node takes.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Labels to register the node with (`k=v,k2=v2`).
    #[arg(long, default_value = "")]
    pub node_labels: String,
    /// Taints to register the node with (`key=value:Effect,…`).
    #[arg(long, default_value = "")]
    pub register_with_taints: String,
    /// How long the node's Lease lasts; it is renewed every quarter of that.
    #[arg(long, default_value_t = 40)]
    pub node_lease_duration_seconds: i32,
    /// How many pods set up their sandbox and start containers at once (default: two per CPU;
    /// 0: no limit).
    #[arg(long, env = "SKIFF_PARALLEL_POD_STARTS")]
    pub parallel_pod_starts: Option<usize>,
    /// The OCI runtime containers run with: `auto` (crun when installed and the host's cgroup
    /// layout allows it, else runc), `runc`, `crun`, or a path to a runc-compatible binary.
    #[arg(long, env = "SKIFF_OCI_RUNTIME", default_value = "auto")]
    pub oci_runtime: String,
    /// OCI image archives (`*.tar`) imported into containerd at start, like k3s's
    /// `agent/images` (a missing directory imports nothing).
    #[arg(
        long,
        env = "SKIFF_IMAGE_PRELOAD_DIR",
        default_value = "/var/lib/skiff-node/images"
    )]
    pub image_preload_dir: PathBuf,
    /// The largest image archive `POST /images/import` (`skiff image import`) takes, in
    /// bytes; uploads are spooled under `<root-dir>/image-imports`.
    #[arg(long, env = "SKIFF_MAX_IMAGE_IMPORT_BYTES", default_value_t = crate::server::images::DEFAULT_MAX_BYTES)]
    pub max_image_import_bytes: u64,
    /// The pressure thresholds (kubelet's flag): `memory.available<100Mi,nodefs.available<10%,
    /// pid.available<10%` by default; an empty value reports no pressure.
    #[arg(long, default_value = "memory.available<100Mi,nodefs.available<10%,pid.available<10%", value_parser = node::Thresholds::parse)]
    pub eviction_hard: node::Thresholds,
    /// How often the node's status is checked (and written when it changed).
    #[arg(long, default_value = "10s", value_parser = humantime_secs)]
    pub node_status_update_frequency: Duration,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a duration like 10s"))
}

/// What every pod worker shares.
pub struct Deps {
    pub client: kube::Client,
    pub runtime: Containerd,
    pub network: Arc<dyn PodNetworking>,
    pub node_name: String,
    pub node_ip: String,
    pub root: PathBuf,
    pub pod_logs_dir: PathBuf,
    /// The stdout/stderr URI of a container whose log goes to the given path.
    pub log_uri: Box<dyn Fn(&Path) -> String + Send + Sync>,
    /// Bounds how many pods set up sandboxes and start containers at once. Starting a burst
    /// of pods all together makes every one of them wait for the whole burst; a few at a time
    /// lets the first ones reach Running first, at the same total cost.
    pub starts: tokio::sync::Semaphore,
    /// The `kubernetes` Service in `default`, watched (its variables go into every container,
    /// as kubelet's service lister gives them; one watch instead of a GET per container start).
    pub kubernetes_service: kube::runtime::reflector::Store<Service>,
}

/// Pods starting at once: `--parallel-pod-starts`, else two per CPU (the work is mostly
/// containerd's, runc's and the CNI plugin's, on the same CPUs); 0 is no limit.
pub fn parallel_starts(flag: Option<usize>) -> usize {
    match flag {
        Some(0) => tokio::sync::Semaphore::MAX_PERMITS,
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
    }
}

/// The containerd version as the node reports it (`containerd://1.6.20`).
async fn runtime_version(runtime: &Containerd) -> String {
    runtime
        .client()
        .version()
        .version(())
        .await
        .map(|v| {
            format!(
                "containerd://{}",
                v.into_inner().version.trim_start_matches('v')
            )
        })
        .unwrap_or_else(|_| "containerd://unknown".into())
}

fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname into a buffer of its size.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    };
    name.to_lowercase()
}

/// Runs the agent until `shutdown`; running containers are left alone on the way out.
pub async fn run(
    args: Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let labels = crate::hollow::parse_labels(&args.node_labels)
        .map_err(|e| anyhow::anyhow!("--node-labels: {e}"))?;
    let taints: Vec<Taint> = crate::hollow::parse_taints(&args.register_with_taints)
        .map_err(|e| anyhow::anyhow!("--register-with-taints: {e}"))?;
    let node_name = args.node_name.clone().unwrap_or_else(default_node_name);
    let node_ip = args.node_ip.unwrap_or_else(node::detect_node_ip);
    std::fs::create_dir_all(&args.root_dir)
        .with_context(|| format!("cannot create --root-dir {}", args.root_dir.display()))?;
    std::fs::create_dir_all(&args.pod_logs_dir).with_context(|| {
        format!(
            "cannot create --pod-logs-dir {}",
            args.pod_logs_dir.display()
        )
    })?;

    let mut args = args;
    if let Some(server) = args.server.clone() {
        args.kubeconfig = write_join_kubeconfig(&args, &server)?;
    }
    let client = crate::hollow::connect(&args.kubeconfig)
        .await
        .with_context(|| format!("cannot reach the master with {}", args.kubeconfig.display()))?;
    let (oci, why) = crate::runtime::oci::choose(&args.oci_runtime)?;
    tracing::info!(oci_runtime = oci.name(), reason = %why, "containers run with {}", oci.name());
    match crate::runtime::cgroups::prepare_cpuset() {
        Ok(Some(root)) => tracing::debug!(cpuset = %root.display(), "QoS cgroups ready"),
        Ok(None) => {}
        // Containers still start (the runtime makes the levels); each just costs more.
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot prepare the QoS cpusets"),
    }
    let runtime = Containerd::connect(&args.containerd_address)
        .await?
        .with_oci_runtime(oci);
    let runtime_version = runtime_version(&runtime).await;
    match crate::runtime::images::import_dir(&runtime, &args.image_preload_dir).await {
        Ok(names) if !names.is_empty() => tracing::info!(?names, "preloaded images"),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(dir = %args.image_preload_dir.display(), error = %e, "cannot preload images")
        }
    }
    let machine = node::Machine::read(&args.root_dir);

    // Register (or take over) the Node, then learn its pod range.
    let nodes: Api<Node> = Api::all(client.clone());
    let desired = node::node_object(&node_name, &labels, &taints);
    let registered = match nodes.create(&PostParams::default(), &desired).await {
        Ok(n) => n,
        Err(kube::Error::Api(s)) if s.code == 409 => crate::hollow::take_over(&nodes, &desired)
            .await
            .with_context(|| format!("cannot take over node {node_name}"))?,
        Err(e) => return Err(e).with_context(|| format!("cannot register node {node_name}")),
    };
    tracing::info!(node = %node_name, ip = %node_ip, "node registered");
    let health = node::Health::read(
        &args.root_dir,
        &args.eviction_hard,
        Some("the pod network is not configured yet".into()),
        false,
    );
    write_node_status(
        &nodes,
        &node_name,
        &machine,
        &health,
        &args,
        node_ip,
        &runtime_version,
        registered.status.as_ref(),
    )
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), crate::hollow::LEASE_NAMESPACE);
    crate::hollow::ensure_lease(
        &leases,
        &node_name,
        registered.metadata.uid.as_deref(),
        args.node_lease_duration_seconds,
    )
    .await
    .context("cannot create the node's Lease")?;
    let lease_task = tokio::spawn(renew_leases(
        leases,
        node_name.clone(),
        registered.metadata.uid.clone(),
        args.node_lease_duration_seconds,
    ));

    let pod_cidr = wait_for_pod_cidr(&nodes, &node_name, args.pod_cidr).await?;
    let cni = network::prepare_node(&NodeNetworkConfig {
        conf_dir: args.cni_conf_dir.clone(),
        bin_dirs: cni_bin_dirs(&args.cni_bin_dir),
        default_conf: Some(PluginConf {
            bridge: args.bridge.clone(),
            pod_cidr,
            data_dir: args.root_dir.join("cni"),
            mtu: 1500,
            hairpin_mode: true,
        }),
        blackhole: vec![args.cluster_cidr, args.service_cluster_ip_range],
        result_cache_dir: Some(args.root_dir.join("cni-cache")),
    })
    .await
    .context("cannot set up the node's pod network")?;
    if let Err(e) = network::enable_ip_forwarding(false) {
        tracing::warn!(error = %e, "cannot enable IP forwarding; pods on other nodes are unreachable");
    }
    tracing::info!(%pod_cidr, cni = %cni.name(), "pod network ready");
    let network: Arc<dyn PodNetworking> = Arc::new(CniNetworking::new(cni));

    let server_task = start_server(&args, &node_name, node_ip, &runtime).await?;
    let exe = std::env::current_exe().context("cannot find the skiff-node binary")?;
    let (kubernetes_service, service_task) = watch_kubernetes_service(&client);
    let deps = Arc::new(Deps {
        client: client.clone(),
        runtime: runtime.clone(),
        network,
        node_name: node_name.clone(),
        node_ip: node_ip.to_string(),
        root: args.root_dir.clone(),
        pod_logs_dir: args.pod_logs_dir.clone(),
        log_uri: log_uri_fn(exe),
        starts: tokio::sync::Semaphore::new(parallel_starts(args.parallel_pod_starts)),
        kubernetes_service,
    });

    let status_task = tokio::spawn(report_status(
        nodes.clone(),
        node_name.clone(),
        machine,
        args.clone(),
        node_ip,
        runtime.clone(),
        runtime_version,
    ));
    let manager = tokio::spawn(manage_pods(deps));
    let routes_task = tokio::spawn(route_to_other_nodes(nodes.clone(), node_name.clone()));
    shutdown.await;
    tracing::info!("stopping; running containers are left as they are");
    manager.abort();
    routes_task.abort();
    service_task.abort();
    server_task.abort();
    status_task.abort();
    lease_task.abort();
    Ok(())
}

/// A cache of the `kubernetes` Service in `default` (empty while there is none), and the task
/// that keeps it.
fn watch_kubernetes_service(
    client: &kube::Client,
) -> (
    kube::runtime::reflector::Store<Service>,
    tokio::task::JoinHandle<()>,
) {
    let (reader, writer) = kube::runtime::reflector::store();
    let api: kube::Api<Service> = kube::Api::namespaced(client.clone(), "default");
    let config = watcher::Config::default().fields("metadata.name=kubernetes");
    let stream = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "watching service default/kubernetes");
            }
        }
    });
    (reader, task)
}

/// Writes `<root>/kubeconfig` for `--server`, `--token` and `--certificate-authority` (mode
/// 0600), so the client and the node API read one file either way.
fn write_join_kubeconfig(args: &Args, server: &str) -> anyhow::Result<PathBuf> {
    use base64::Engine as _;
    let token = args.token.as_deref().unwrap_or_default().trim();
    anyhow::ensure!(!token.is_empty(), "--token is empty");
    let ca_path = args
        .certificate_authority
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--server needs --certificate-authority"))?;
    let ca = std::fs::read(ca_path)
        .with_context(|| format!("cannot read --certificate-authority {}", ca_path.display()))?;
    anyhow::ensure!(
        String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE"),
        "--certificate-authority {} is not a PEM certificate",
        ca_path.display()
    );
    let url: http::Uri = server
        .parse()
        .map_err(|e| anyhow::anyhow!("--server {server:?} is not a URL: {e}"))?;
    anyhow::ensure!(
        url.scheme_str() == Some("https"),
        "--server {server:?} must be an https:// URL"
    );
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "skiff", "cluster": {
            "server": server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&ca),
        }}],
        "users": [{"name": "node", "user": {"token": token}}],
        "contexts": [{"name": "skiff", "context": {"cluster": "skiff", "user": "node"}}],
        "current-context": "skiff",
    });
    let path = args.root_dir.join("kubeconfig");
    std::fs::create_dir_all(&args.root_dir)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, serde_json::to_string_pretty(&config)?.as_bytes())?;
    Ok(path)
}

/// The configured CNI plugin directories plus the one skiff-node (and skiff-cni) is in.
fn cni_bin_dirs(configured: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = configured.to_vec();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// A container's output goes to `skiff-node log-driver`, which the runc shim starts per
/// container (so logging outlives the agent) and which writes CRI-format files with rotation.
fn log_uri_fn(exe: PathBuf) -> Box<dyn Fn(&Path) -> String + Send + Sync> {
    let limits = crate::logs::LogLimits::default();
    Box::new(move |path: &Path| crate::logs::log_uri(&exe, path, &limits))
}

/// The node's HTTPS API (logs, exec, image import) on `--port`: a self-signed serving certificate kept under
/// the root directory, client certificates required from the cluster's CA.
async fn start_server(
    args: &Args,
    node_name: &str,
    node_ip: IpAddr,
    runtime: &Containerd,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use crate::server::{self, tls};
    let cert = tls::load_or_create_serving_cert(&args.root_dir.join("pki"), node_name, &[node_ip])
        .context("cannot set up the node API's serving certificate")?;
    let ca = tls::cluster_ca_from_kubeconfig(&args.kubeconfig)
        .context("the node API needs the cluster CA from the kubeconfig")?;
    let config = tls::server_config(&cert, &ca).context("cannot configure the node API's TLS")?;
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the node API (--port)"))?;
    let fifo_dir = args.root_dir.join("exec");
    std::fs::create_dir_all(&fifo_dir)?;
    std::fs::set_permissions(
        &fifo_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let image_import = server::images::ImageImport::new(
        args.root_dir.join("image-imports"),
        args.max_image_import_bytes,
    );
    image_import.prepare().with_context(|| {
        format!(
            "cannot prepare {} for image uploads",
            image_import.dir.display()
        )
    })?;
    let node = Arc::new(server::Node {
        containerd: runtime.clone(),
        pod_logs_dir: args.pod_logs_dir.clone(),
        fifo_dir,
        image_import,
    });
    tracing::info!(%addr, "serving the node API");
    Ok(tokio::spawn(server::serve(
        listener,
        config,
        node,
        std::future::pending(),
    )))
}

/// Waits for the master's node IPAM to give the node a `spec.podCIDR` (or uses `--pod-cidr`).
async fn wait_for_pod_cidr(
    nodes: &Api<Node>,
    name: &str,
    fallback: Option<ipnet::IpNet>,
) -> anyhow::Result<ipnet::IpNet> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node = nodes.get(name).await.context("cannot read the node")?;
        if let Some(cidr) = node.spec.and_then(|s| s.pod_cidr) {
            return cidr.parse().map_err(|e| {
                anyhow::anyhow!("the node's spec.podCIDR {cidr:?} is not a CIDR: {e}")
            });
        }
        if let Some(cidr) = fallback {
            return Ok(cidr);
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "node {name} has no spec.podCIDR after 30 s: run the master with its node IPAM \
                 controller (--cluster-cidr, the default) or pass --pod-cidr"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_node_status(
    nodes: &Api<Node>,
    name: &str,
    machine: &node::Machine,
    health: &node::Health,
    args: &Args,
    node_ip: IpAddr,
    runtime_version: &str,
    old: Option<&k8s_openapi::api::core::v1::NodeStatus>,
) -> anyhow::Result<Node> {
    let status = node::node_status(
        machine,
        health,
        args.max_pods,
        node_ip,
        name,
        args.port,
        runtime_version,
        old,
        Timestamp::now(),
    );
    crate::hollow::patch_node_status(nodes, name, &serde_json::json!({ "status": status }))
        .await
        .context("cannot write the node's status")
}

async fn renew_leases(leases: Api<Lease>, name: String, uid: Option<String>, duration: i32) {
    let every = Duration::from_secs((duration.max(4) / 4) as u64).min(Duration::from_secs(10));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = crate::hollow::renew_lease(&leases, &name, uid.as_deref(), duration).await {
            tracing::warn!(error = %e, "cannot renew the node's lease");
        }
    }
}

/// Re-reads the node's health every `--node-status-update-frequency`; writes the status when
/// a condition changed, and at least every minute (kubelet's report frequency is 5 min; the
/// Lease is the heartbeat).
async fn report_status(
    nodes: Api<Node>,
    name: String,
    machine: node::Machine,
    args: Args,
    node_ip: IpAddr,
    runtime: Containerd,
    runtime_version: String,
) {
    let mut last: Option<(node::Health, tokio::time::Instant)> = None;
    let mut old = None;
    loop {
        let not_ready = match runtime.client().version().version(()).await {
            Ok(_) => None,
            Err(e) => Some(format!("container runtime is down: {}", e.message())),
        };
        let health = node::Health::read(&args.root_dir, &args.eviction_hard, not_ready, true);
        let due = match &last {
            Some((h, at)) => *h != health || at.elapsed() >= Duration::from_secs(60),
            None => true,
        };
        if due {
            match write_node_status(
                &nodes,
                &name,
                &machine,
                &health,
                &args,
                node_ip,
                &runtime_version,
                old.as_ref(),
            )
            .await
            {
                Ok(node) => {
                    old = node.status;
                    last = Some((health, tokio::time::Instant::now()));
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot report node status"),
            }
        }
        tokio::time::sleep(args.node_status_update_frequency).await;
    }
}

/// Every 10 s: a route to each other node's `podCIDR` via its InternalIP, stale ones removed.
/// A node that has never had a peer leaves the routing table alone.
async fn route_to_other_nodes(nodes: Api<Node>, me: String) {
    let mut had_routes = false;
    loop {
        match nodes.list(&Default::default()).await {
            Ok(list) => {
                let routes: Vec<(ipnet::IpNet, IpAddr)> = list
                    .items
                    .iter()
                    .filter(|n| n.metadata.name.as_deref() != Some(me.as_str()))
                    .filter_map(peer_route)
                    .collect();
                if !routes.is_empty() || had_routes {
                    match network::sync_node_routes(&routes).await {
                        Ok(()) => had_routes = !routes.is_empty(),
                        Err(e) => tracing::warn!(error = %e, "cannot sync routes to other nodes"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list nodes for pod routes"),
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// (podCIDR, InternalIP) of a node that has both.
fn peer_route(node: &Node) -> Option<(ipnet::IpNet, IpAddr)> {
    let cidr = node.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let ip = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((cidr, ip))
}

/// A running worker.
struct Running {
    tx: mpsc::Sender<worker::Msg>,
    task: tokio::task::JoinHandle<()>,
}

/// Watches this node's pods and keeps one worker per pod UID; adopts what containerd has at
/// start and removes containers of pods that no longer exist.
async fn manage_pods(deps: Arc<Deps>) {
    let mut adopted: HashMap<String, Vec<ContainerRecord>> = HashMap::new();
    match deps.runtime.list_containers(&[]).await {
        Ok(records) => {
            for r in records {
                let uid = r.label(POD_UID_LABEL).to_string();
                if !uid.is_empty() {
                    adopted.entry(uid).or_default().push(r);
                }
            }
            tracing::info!(pods = adopted.len(), "containers found in containerd");
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot list containers; nothing adopted")
        }
    }
    let pods: Api<Pod> = Api::all(deps.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", deps.node_name));
    let stream = watcher(pods, config).default_backoff();
    futures::pin_mut!(stream);
    let mut workers: HashMap<String, Running> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut orphans_checked = false;
    while let Some(event) = stream.next().await {
        workers.retain(|_, w| !w.task.is_finished());
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Init => listing = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if let Some(seen) = listing.as_mut() {
                    seen.insert(uid.clone());
                }
                let pod = Arc::new(pod);
                match workers.get(&uid) {
                    Some(w) => {
                        let _ = w.tx.send(worker::Msg::Update(pod)).await;
                    }
                    None => {
                        let (tx, rx) = mpsc::channel(64);
                        let records = adopted.remove(&uid).unwrap_or_default();
                        let w = worker::Worker::new(deps.clone(), pod, records, tx.clone());
                        let task = tokio::spawn(w.run(rx));
                        workers.insert(uid, Running { tx, task });
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(w) = pod.metadata.uid.as_ref().and_then(|u| workers.get(u)) {
                    let _ = w.tx.send(worker::Msg::Gone).await;
                }
            }
            watcher::Event::InitDone => {
                let seen = listing.take().unwrap_or_default();
                for (uid, w) in &workers {
                    if !seen.contains(uid) {
                        let _ = w.tx.send(worker::Msg::Gone).await;
                    }
                }
                if !orphans_checked {
                    orphans_checked = true;
                    let orphans: Vec<(String, Vec<ContainerRecord>)> = adopted.drain().collect();
                    for (uid, records) in orphans {
                        remove_orphan(&deps, &uid, &records).await;
                    }
                }
            }
        }
    }
}

/// Removes the containers, network and directory of a pod that no longer exists.
async fn remove_orphan(deps: &Deps, uid: &str, records: &[ContainerRecord]) {
    tracing::info!(pod_uid = %uid, containers = records.len(), "removing the containers of a pod that no longer exists");
    for r in records {
        if matches!(r.state, TaskState::Running { .. }) {
            let _ = deps.runtime.signal(&r.id, libc::SIGKILL as u32, true).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), deps.runtime.wait(&r.id)).await;
        }
        if let Err(e) = deps.runtime.remove_container(&r.id).await {
            tracing::warn!(container = %r.id, error = %format!("{e:#}"), "cannot remove an orphaned container");
        }
    }
    let sandbox = network::Sandbox {
        id: uid.to_string(),
        pod_namespace: String::new(),
        pod_name: String::new(),
        pod_uid: uid.to_string(),
    };
    if let Err(e) = deps.network.teardown(&sandbox).await {
        tracing::warn!(pod_uid = %uid, error = %e, "cannot tear down an orphaned pod network");
    }
    let _ = volumes::remove_pod_dir(&volumes::pod_dir(&deps.root, uid));
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(cidr: Option<&str>, ip: Option<&str>) -> Node {
        Node {
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: ip.map(|ip| {
                    vec![
                        NodeAddress {
                            type_: "Hostname".into(),
                            address: "n2".into(),
                        },
                        NodeAddress {
                            type_: "InternalIP".into(),
                            address: ip.into(),
                        },
                    ]
                }),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn peers_need_a_pod_cidr_and_an_internal_ip() {
        assert_eq!(
            peer_route(&node(Some("10.244.1.0/24"), Some("192.168.0.2"))),
            Some((
                "10.244.1.0/24".parse().unwrap(),
                "192.168.0.2".parse().unwrap()
            ))
        );
        assert_eq!(peer_route(&node(None, Some("192.168.0.2"))), None);
        assert_eq!(peer_route(&node(Some("10.244.1.0/24"), None)), None);
        assert_eq!(
            peer_route(&node(Some("nonsense"), Some("192.168.0.2"))),
            None
        );
    }

    #[test]
    fn parallel_starts_default_to_two_per_cpu() {
        assert_eq!(parallel_starts(Some(3)), 3);
        assert_eq!(
            parallel_starts(Some(0)),
            tokio::sync::Semaphore::MAX_PERMITS
        );
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parallel_starts(None), cpus * 2);
    }

    #[test]
    fn durations_parse_in_seconds() {
        assert_eq!(humantime_secs("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(humantime_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(humantime_secs("0s").is_err());
        assert!(humantime_secs("soon").is_err());
    }
}
