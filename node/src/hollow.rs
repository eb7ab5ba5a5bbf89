//! Hollow nodes: `skiff-node hollow` fakes many nodes purely over the Kubernetes API, like
//! kubemark's hollow kubelet or KWOK, so the scheduler and controllers can be tested at cluster
//! scale without containers.
//!
//! For each of its nodes the process registers a `Node` (or takes an existing one over), keeps a
//! `coordination.k8s.io/v1` Lease in `kube-node-lease` renewed (the renewals of all nodes spread
//! evenly over `--renew-interval`), re-sends the node status every five minutes and at once when
//! the node's `Ready` condition is not `True`. One watch over all bound pods drives a fake
//! kubelet: a pod bound to one of our nodes becomes `Running` (with a pod IP) after
//! `--pod-start-delay`; Job pods, and pods with the `hollow.skiff.io/run-ms` or
//! `hollow.skiff.io/exit-code` annotations, "exit" later and end `Succeeded` or `Failed` (or
//! restart, as their `restartPolicy` says); a pod marked for deletion is deleted with grace 0,
//! the kubelet's part of graceful deletion.
//!
//! The pure parts — flags to [`Settings`], the Node object, the pod state machine
//! ([`next_step`]), the pod statuses and the pod IPs — are plain functions with table-driven
//! tests. The API-talking parts are small async functions that go through `Writes`: at most
//! `--concurrency` requests in flight, retries with backoff on conflicts, server errors and
//! transport errors, and no retry on 404.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    DaemonEndpoint, HostIP, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec,
    NodeStatus, NodeSystemInfo, Pod, PodCondition, PodIP, PodStatus, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt as _};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument as _;

/// The label every hollow node carries.
pub const HOLLOW_LABEL: &str = "node.skiff.io/hollow";
/// Pod annotation: milliseconds the pod's containers run before they exit.
pub const RUN_MS_ANNOTATION: &str = "hollow.skiff.io/run-ms";
/// Pod annotation: the exit code the pod's containers exit with (default 0).
pub const EXIT_CODE_ANNOTATION: &str = "hollow.skiff.io/exit-code";
/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The kubelet version hollow nodes report.
pub const KUBELET_VERSION: &str = "v1.33.0-skiff-hollow";
/// How often the node status is re-sent while nothing changes (kubelet's
/// `nodeStatusReportFrequency`).
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(300);
/// Node indexes above this have no fake addresses (see [`fake_pod_range`]).
pub const MAX_NODE_INDEX: u32 = 14_079;
/// Pod IPs a fake /24 pod range holds.
const FAKE_RANGE_HOSTS: u32 = 254;
/// At most this many addresses of a large podCIDR are used.
const MAX_RANGE_HOSTS: u32 = 65_534;
/// Ephemeral storage every hollow node reports.
const EPHEMERAL_STORAGE: &str = "100Gi";
/// First and longest pause between retries of a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Attempts for registration writes (about half a minute with backoff) and for later writes.
const REGISTER_ATTEMPTS: u32 = 12;
const WRITE_ATTEMPTS: u32 = 6;
/// How long one attempt of a write (a request, or a read and a write) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a pod write gave up, when the pod is looked at again.
const POD_RETRY_MS: i64 = 30_000;
/// How long in-flight writes may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Crash-loop backoff of restarting containers: first pause and cap (as the kubelet's).
const CRASH_BACKOFF_FIRST_MS: u64 = 10_000;
const CRASH_BACKOFF_MAX_MS: u64 = 300_000;

// ---------------------------------------------------------------------------------------------
// Flags and settings
// ---------------------------------------------------------------------------------------------

/// Log format of the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `skiff-node hollow`: fake nodes over the Kubernetes API (no containers).
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Kubeconfig of the cluster to join (skiff-master writes an admin one, see its
    /// --admin-kubeconfig).
    #[arg(long, env = "SKIFF_KUBECONFIG")]
    pub kubeconfig: PathBuf,

    /// How many nodes to fake.
    #[arg(long, env = "SKIFF_HOLLOW_COUNT", default_value_t = 10)]
    pub count: u32,

    /// Node names are `{prefix}{index}`.
    #[arg(long, env = "SKIFF_HOLLOW_NAME_PREFIX", default_value = "hollow-")]
    pub name_prefix: String,

    /// Index of the first node (several processes can share a prefix with disjoint ranges).
    #[arg(long, env = "SKIFF_HOLLOW_START_INDEX", default_value_t = 0)]
    pub start_index: u32,

    /// CPU capacity of each node (a Kubernetes quantity: 4, 3500m).
    #[arg(long, env = "SKIFF_HOLLOW_CPU", default_value = "4")]
    pub cpu: String,

    /// Memory capacity of each node (a Kubernetes quantity: 16Gi, 512M).
    #[arg(long, env = "SKIFF_HOLLOW_MEMORY", default_value = "16Gi")]
    pub memory: String,

    /// How many pods each node takes (1 to 254: the fake pod ranges are /24s).
    #[arg(long, env = "SKIFF_HOLLOW_PODS", default_value_t = 110)]
    pub pods: u32,

    /// Zones to spread the nodes over: topology.kubernetes.io/zone=zone-{index % zones}.
    #[arg(long, env = "SKIFF_HOLLOW_ZONES", default_value_t = 1)]
    pub zones: u32,

    /// Extra node labels, `key=value,...` (applied last, so they can override the defaults).
    #[arg(long, env = "SKIFF_HOLLOW_LABELS", default_value = "")]
    pub labels: String,

    /// Node taints, `key=value:Effect,...` or `key:Effect` (NoSchedule, PreferNoSchedule,
    /// NoExecute).
    #[arg(long, env = "SKIFF_HOLLOW_TAINTS", default_value = "")]
    pub taints: String,

    /// The nodes' Lease duration, in seconds.
    #[arg(
        long,
        env = "SKIFF_HOLLOW_LEASE_DURATION_SECONDS",
        default_value_t = 40
    )]
    pub lease_duration_seconds: u32,

    /// Seconds between two renewals of a node's Lease (the N nodes' renewals are spread over it).
    #[arg(long, env = "SKIFF_HOLLOW_RENEW_INTERVAL", default_value_t = 10)]
    pub renew_interval: u64,

    /// Milliseconds between a pod's binding and its becoming Running.
    #[arg(long, env = "SKIFF_HOLLOW_POD_START_DELAY", default_value_t = 0)]
    pub pod_start_delay: u64,

    /// Milliseconds a Job's pod runs before it exits (0 unless annotated otherwise).
    #[arg(long, env = "SKIFF_HOLLOW_JOB_DURATION", default_value_t = 5000)]
    pub job_duration: u64,

    /// At most this many API writes in flight.
    #[arg(long, env = "SKIFF_HOLLOW_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,

    /// Log format. The level comes from RUST_LOG (default info).
    #[arg(long, env = "SKIFF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A flag value that cannot be used; the message says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn invalid(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

/// How long pods take: the `--pod-start-delay` and `--job-duration` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub pod_start_delay_ms: u64,
    pub job_duration_ms: u64,
}

/// The validated flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub kubeconfig: PathBuf,
    pub name_prefix: String,
    pub start_index: u32,
    pub count: u32,
    pub cpu: Quantity,
    pub memory: Quantity,
    pub pods: u32,
    pub zones: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub lease_duration_seconds: i32,
    pub renew_interval: Duration,
    pub timing: Timing,
    pub concurrency: usize,
}

impl Settings {
    /// Checks every flag before anything is contacted.
    pub fn from_args(args: &Args) -> Result<Settings, ConfigError> {
        if args.count == 0 {
            return Err(invalid("count", "must be at least 1"));
        }
        let last = args.start_index.checked_add(args.count - 1);
        if last.is_none_or(|last| last > MAX_NODE_INDEX) {
            return Err(invalid(
                "count",
                format!(
                    "--start-index {} with --count {} goes past node index {MAX_NODE_INDEX}, \
                     the last one with fake addresses; run fewer nodes",
                    args.start_index, args.count
                ),
            ));
        }
        for index in [args.start_index, args.start_index + args.count - 1] {
            let name = format!("{}{index}", args.name_prefix);
            if let Err(why) = check_dns_subdomain(&name) {
                return Err(invalid(
                    "name-prefix",
                    format!(
                        "{:?} makes node name {name:?}, which {why}",
                        args.name_prefix
                    ),
                ));
            }
        }
        check_quantity(&args.cpu)
            .map_err(|why| invalid("cpu", format!("{:?} {why}; use e.g. 4 or 3500m", args.cpu)))?;
        check_quantity(&args.memory).map_err(|why| {
            invalid(
                "memory",
                format!("{:?} {why}; use e.g. 16Gi or 512M", args.memory),
            )
        })?;
        if args.pods == 0 || args.pods > FAKE_RANGE_HOSTS {
            return Err(invalid(
                "pods",
                format!(
                    "{} is out of range: use 1 to {FAKE_RANGE_HOSTS} (a hollow node's fake pod \
                     range is a /24)",
                    args.pods
                ),
            ));
        }
        if args.zones == 0 {
            return Err(invalid("zones", "must be at least 1"));
        }
        let labels = parse_labels(&args.labels).map_err(|e| invalid("labels", e))?;
        let taints = parse_taints(&args.taints).map_err(|e| invalid("taints", e))?;
        let lease_duration_seconds = i32::try_from(args.lease_duration_seconds)
            .ok()
            .filter(|d| *d >= 1)
            .ok_or_else(|| invalid("lease-duration-seconds", "use 1 or more seconds"))?;
        if args.renew_interval == 0 || args.renew_interval >= u64::from(args.lease_duration_seconds)
        {
            return Err(invalid(
                "renew-interval",
                format!(
                    "{}s must be at least 1s and shorter than --lease-duration-seconds ({}s), \
                     or the leases expire between renewals",
                    args.renew_interval, args.lease_duration_seconds
                ),
            ));
        }
        if args.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        Ok(Settings {
            kubeconfig: args.kubeconfig.clone(),
            name_prefix: args.name_prefix.clone(),
            start_index: args.start_index,
            count: args.count,
            cpu: Quantity(args.cpu.clone()),
            memory: Quantity(args.memory.clone()),
            pods: args.pods,
            zones: args.zones,
            labels,
            taints,
            lease_duration_seconds,
            renew_interval: Duration::from_secs(args.renew_interval),
            timing: Timing {
                pod_start_delay_ms: args.pod_start_delay,
                job_duration_ms: args.job_duration,
            },
            concurrency: args.concurrency,
        })
    }

    /// The name of the node with this (absolute) index.
    pub fn node_name(&self, index: u32) -> String {
        format!("{}{index}", self.name_prefix)
    }

    /// The absolute indexes of our nodes.
    pub fn indexes(&self) -> std::ops::Range<u32> {
        self.start_index..self.start_index + self.count
    }
}

/// Whether `s` is a DNS-1123 subdomain (what node names must be).
fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for part in s.split('.') {
        let ok = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(
                "is not a DNS subdomain (lowercase letters, digits, '-' and '.', \
                 starting and ending with a letter or digit)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Whether `s` is a label value: empty, or up to 63 of `[A-Za-z0-9._-]` starting and ending
/// with a letter or digit.
fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let ok = s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid label value (up to 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit)"
        ))
    }
}

/// Whether `s` is a label key (also taint keys): `[prefix/]name`.
fn check_label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix).map_err(|why| format!("the prefix of key {s:?} {why}"))?;
    }
    if name.is_empty() || check_label_value(name).is_err() {
        return Err(format!(
            "{s:?} is not a valid key (an optional DNS prefix and '/', then up to 63 letters, \
             digits, '-', '_' or '.')"
        ));
    }
    Ok(())
}

/// Parses `--labels`: `key=value,...` (empty: none).
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("{item:?} is not key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        check_label_key(key)?;
        check_label_value(value)?;
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("label {key:?} is given twice"));
        }
    }
    Ok(labels)
}

/// Parses `--taints`: `key=value:Effect,...` or `key:Effect` (empty: none).
pub fn parse_taints(s: &str) -> Result<Vec<Taint>, String> {
    let mut taints: Vec<Taint> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key_value, effect)) = item.rsplit_once(':') else {
            return Err(format!(
                "{item:?} has no effect: write key=value:Effect or key:Effect"
            ));
        };
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "{item:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        let (key, value) = match key_value.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (key_value, None),
        };
        check_label_key(key)?;
        if let Some(value) = value {
            check_label_value(value)?;
        }
        if taints.iter().any(|t| t.key == key && t.effect == effect) {
            return Err(format!("taint {key}:{effect} is given twice"));
        }
        taints.push(Taint {
            key: key.to_string(),
            value: value.filter(|v| !v.is_empty()).map(str::to_string),
            effect: effect.to_string(),
            time_added: None,
        });
    }
    Ok(taints)
}

/// Checks a Kubernetes quantity that may not be negative: a decimal number and an optional
/// suffix (`Ki Mi Gi Ti Pi Ei`, `n u m k M G T P E`, or an exponent `e3`/`E-2`).
pub fn check_quantity(s: &str) -> Result<(), String> {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    if s.starts_with('-') {
        return Err("is negative".into());
    }
    let mut parts = number.split('.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next();
    if parts.next().is_some() || (whole.is_empty() && fraction.is_none_or(str::is_empty)) {
        return Err("is not a number with an optional unit".into());
    }
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exp if exp.starts_with(['e', 'E']) => {
            let exp = exp[1..].strip_prefix(['+', '-']).unwrap_or(&exp[1..]);
            !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    };
    if suffix_ok {
        Ok(())
    } else {
        Err(format!("has an unknown unit {suffix:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes and leases (pure)
// ---------------------------------------------------------------------------------------------

/// The node's fake InternalIP: `10.250.{index / 250}.{index % 250 + 1}`.
pub fn node_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (index / 250) as u8, (index % 250 + 1) as u8)
}

/// The node's labels: well-known ones, the zone, then `--labels`.
pub fn node_labels(settings: &Settings, index: u32) -> BTreeMap<String, String> {
    let name = settings.node_name(index);
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        (HOLLOW_LABEL.to_string(), "true".to_string()),
        (
            "topology.kubernetes.io/zone".to_string(),
            format!("zone-{}", index % settings.zones),
        ),
    ]);
    labels.extend(settings.labels.clone());
    labels
}

/// The Node to register (metadata and spec; the status is written through `nodes/status`).
pub fn node_object(settings: &Settings, index: u32) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(settings.node_name(index)),
            labels: Some(node_labels(settings, index)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!settings.taints.is_empty()).then(|| settings.taints.clone()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// The node's status at `now`; its conditions last changed at `since`.
pub fn node_status(
    settings: &Settings,
    index: u32,
    now: Timestamp,
    since: Timestamp,
) -> NodeStatus {
    let name = settings.node_name(index);
    let resources = BTreeMap::from([
        ("cpu".to_string(), settings.cpu.clone()),
        ("memory".to_string(), settings.memory.clone()),
        ("pods".to_string(), Quantity(settings.pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(EPHEMERAL_STORAGE.to_string()),
        ),
    ]);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    };
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_string(),
                address: node_ip(index).to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_string(),
                address: name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".to_string(),
            operating_system: "linux".to_string(),
            kubelet_version: KUBELET_VERSION.to_string(),
            kube_proxy_version: KUBELET_VERSION.to_string(),
            container_runtime_version: "hollow://0".to_string(),
            kernel_version: "hollow".to_string(),
            os_image: "Skiff hollow node".to_string(),
            machine_id: format!("hollow-{name}"),
            system_uuid: format!("hollow-{name}"),
            boot_id: format!("hollow-{name}"),
            swap: None,
        }),
        ..NodeStatus::default()
    }
}

/// Whether a node's `Ready` condition is `True`.
pub fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// The node's Lease, owned by the node (when its uid is known) so it goes with it.
pub fn lease_object(name: &str, node_uid: Option<&str>, duration: i32, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".to_string(),
                    kind: "Node".to_string(),
                    name: name.to_string(),
                    uid: uid.to_string(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(lease_spec(name, duration, now)),
    }
}

fn lease_spec(name: &str, duration: i32, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some(duration),
        renew_time: Some(MicroTime(now)),
        ..LeaseSpec::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Pod IPs (pure)
// ---------------------------------------------------------------------------------------------

/// An IPv4 range pod IPs come from: host addresses `base+1 ..= base+hosts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRange {
    base: u32,
    hosts: u32,
}

impl PodRange {
    /// A node's podCIDR, if it is IPv4 with room for at least two pods.
    pub fn from_cidr(cidr: &str) -> Option<PodRange> {
        let (addr, len) = cidr.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        if len > 30 {
            return None;
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let size = 1u64 << (32 - len);
        Some(PodRange {
            base: u32::from(addr) & mask,
            hosts: (size - 2).min(u64::from(MAX_RANGE_HOSTS)) as u32,
        })
    }

    fn addr(&self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base + offset)
    }

    /// The offset (1-based) of `ip` in the range.
    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        let offset = u32::from(ip).checked_sub(self.base)?;
        (1..=self.hosts).contains(&offset).then_some(offset)
    }
}

/// The fake pod range of a node without a podCIDR: `10.{200 + index / 256}.{index % 256}.0/24`,
/// the second octet skipping 250, which the node IPs use (so index at most [`MAX_NODE_INDEX`]).
pub fn fake_pod_range(index: u32) -> PodRange {
    let mut second = 200 + index / 256;
    if second >= 250 {
        second += 1;
    }
    PodRange {
        base: u32::from(Ipv4Addr::new(10, second as u8, (index % 256) as u8, 0)),
        hosts: FAKE_RANGE_HOSTS,
    }
}

/// The pod IPs of one node: which of its range's addresses are taken.
#[derive(Clone, Debug)]
pub struct PodIps {
    range: PodRange,
    used: Vec<u64>,
    /// Where the next search starts, so a freed address is not handed out again at once.
    cursor: u32,
}

impl PodIps {
    pub fn new(range: PodRange) -> PodIps {
        PodIps {
            range,
            used: vec![0; range.hosts.div_ceil(64) as usize],
            cursor: 0,
        }
    }

    pub fn range(&self) -> PodRange {
        self.range
    }

    fn bit(offset: u32) -> (usize, u64) {
        let i = offset - 1;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// A free address, or `None` when the range is full.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        for step in 0..self.range.hosts {
            let offset = (self.cursor + step) % self.range.hosts + 1;
            let (word, mask) = Self::bit(offset);
            if self.used[word] & mask == 0 {
                self.used[word] |= mask;
                self.cursor = offset % self.range.hosts;
                return Some(self.range.addr(offset));
            }
        }
        None
    }

    /// Marks an address some pod already has as taken; false if it is not in the range.
    pub fn claim(&mut self, ip: Ipv4Addr) -> bool {
        match self.range.offset(ip) {
            Some(offset) => {
                let (word, mask) = Self::bit(offset);
                self.used[word] |= mask;
                true
            }
            None => false,
        }
    }

    /// Frees an address (one outside the range is ignored).
    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Some(offset) = self.range.offset(ip) {
            let (word, mask) = Self::bit(offset);
            self.used[word] &= !mask;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pod state machine (pure)
// ---------------------------------------------------------------------------------------------

/// A pod's phase as the hollow kubelet sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl Phase {
    fn parse(s: Option<&str>) -> Phase {
        match s {
            Some("Running") => Phase::Running,
            Some("Succeeded") => Phase::Succeeded,
            Some("Failed") => Phase::Failed,
            Some("Unknown") => Phase::Unknown,
            _ => Phase::Pending,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Unknown => "Unknown",
        }
    }

    fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// When a pod's containers exit, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Milliseconds after the containers (re)start.
    pub after_ms: u64,
    pub code: i32,
}

/// What [`next_step`] needs to know about a pod; times are milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub phase: Phase,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// When we first saw the pod bound to our node.
    pub bound_at_ms: i64,
    /// When its containers last (re)started, once Running.
    pub run_started_ms: Option<i64>,
    pub restarts: u32,
    pub exit: Option<Exit>,
    pub restart_policy: RestartPolicy,
}

/// What to do with a pod now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Nothing yet; look again at this time.
    WaitUntil(i64),
    /// Make it Running: pod IP, conditions, container statuses.
    StartRunning,
    /// Its containers exited and restart (restartCount + 1); it stays Running.
    Restart {
        exit_code: i32,
    },
    /// Its containers exited for good: phase Succeeded or Failed.
    Finish {
        phase: Phase,
        exit_code: i32,
    },
    /// Delete it with grace 0 (the kubelet's part of graceful deletion).
    DeleteGracefully,
}

/// The kubelet's crash-loop backoff before the n-th restart (none before the first exit).
pub fn crash_backoff_ms(restarts: u32) -> u64 {
    if restarts == 0 {
        return 0;
    }
    let doublings = (restarts - 1).min(10);
    (CRASH_BACKOFF_FIRST_MS << doublings).min(CRASH_BACKOFF_MAX_MS)
}

/// The state machine of the hollow kubelet: what to do with a pod bound to one of our nodes.
///
/// A restarting container's next exit comes no sooner than the kubelet's crash-loop backoff
/// after its restart; the restart itself is immediate (no `CrashLoopBackOff` waiting state).
pub fn next_step(pod: &Lifecycle, start_delay_ms: u64, now_ms: i64) -> Step {
    if pod.deleting {
        return Step::DeleteGracefully;
    }
    match pod.phase {
        Phase::Succeeded | Phase::Failed => Step::Nothing,
        Phase::Pending | Phase::Unknown => {
            let start_at = pod.bound_at_ms.saturating_add(ms_i64(start_delay_ms));
            if now_ms >= start_at {
                Step::StartRunning
            } else {
                Step::WaitUntil(start_at)
            }
        }
        Phase::Running => {
            let Some(exit) = pod.exit else {
                return Step::Nothing;
            };
            let started = pod.run_started_ms.unwrap_or(pod.bound_at_ms);
            let runs_for = exit.after_ms.max(crash_backoff_ms(pod.restarts));
            let exit_at = started.saturating_add(ms_i64(runs_for));
            if now_ms < exit_at {
                return Step::WaitUntil(exit_at);
            }
            match (pod.restart_policy, exit.code) {
                (RestartPolicy::Always, code) => Step::Restart { exit_code: code },
                (RestartPolicy::OnFailure, code) if code != 0 => Step::Restart { exit_code: code },
                (_, 0) => Step::Finish {
                    phase: Phase::Succeeded,
                    exit_code: 0,
                },
                (_, code) => Step::Finish {
                    phase: Phase::Failed,
                    exit_code: code,
                },
            }
        }
    }
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A container as the hollow kubelet remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: Box<str>,
    pub image: Box<str>,
    /// An init container with `restartPolicy: Always` (a sidecar): it keeps running.
    pub sidecar: bool,
}

/// The few fields of a pod the hollow kubelet keeps (not the object).
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub uid: String,
    pub resource_version: u64,
    pub node_name: Option<String>,
    pub phase: Phase,
    pub deleting: bool,
    pub run_started_ms: Option<i64>,
    pub restarts: u32,
    pub exit: Option<Exit>,
    pub restart_policy: RestartPolicy,
    pub containers: Vec<ContainerInfo>,
    pub init_containers: Vec<ContainerInfo>,
    pub pod_ip: Option<Ipv4Addr>,
    /// Annotations that could not be read, for one warning.
    pub problems: Vec<String>,
}

/// Reads what the hollow kubelet needs from a pod.
///
/// The containers exit when the pod is owned by a Job or has the run-ms or exit-code
/// annotation: after run-ms milliseconds, else after `--job-duration`, with the exit code of the
/// annotation, else 0.
pub fn observe(pod: &Pod, job_duration_ms: u64) -> Observed {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let annotations = meta.annotations.as_ref();
    let mut problems = Vec::new();
    let annotation =
        |key: &str| -> Option<String> { annotations.and_then(|a| a.get(key)).cloned() };
    let run_ms = annotation(RUN_MS_ANNOTATION).and_then(|v| match v.trim().parse::<u64>() {
        Ok(ms) => Some(ms),
        Err(_) => {
            problems.push(format!(
                "annotation {RUN_MS_ANNOTATION}={v:?} is not a number of milliseconds; ignored"
            ));
            None
        }
    });
    let exit_code = annotation(EXIT_CODE_ANNOTATION).and_then(|v| match v.trim().parse::<i32>() {
        Ok(code) => Some(code),
        Err(_) => {
            problems.push(format!(
                "annotation {EXIT_CODE_ANNOTATION}={v:?} is not an exit code; ignored"
            ));
            None
        }
    });
    let job = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job");
    let exit = (job || run_ms.is_some() || exit_code.is_some()).then(|| Exit {
        after_ms: run_ms.unwrap_or(job_duration_ms),
        code: exit_code.unwrap_or(0),
    });
    let restart_policy = match spec.and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => RestartPolicy::Never,
        Some("OnFailure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    };
    let first_status = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let run_started_ms = first_status
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .or_else(|| status.and_then(|s| s.start_time.as_ref()))
        .map(|t| t.0.as_millisecond());
    let info = |name: &str, image: Option<&String>, sidecar: bool| ContainerInfo {
        name: name.into(),
        image: image.map_or("", String::as_str).into(),
        sidecar,
    };
    Observed {
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        phase: Phase::parse(status.and_then(|s| s.phase.as_deref())),
        deleting: meta.deletion_timestamp.is_some(),
        run_started_ms,
        restarts: first_status.map_or(0, |c| u32::try_from(c.restart_count).unwrap_or(0)),
        exit,
        restart_policy,
        containers: spec
            .map(|s| s.containers.iter())
            .into_iter()
            .flatten()
            .map(|c| info(&c.name, c.image.as_ref(), false))
            .collect(),
        init_containers: spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .map(|c| {
                info(
                    &c.name,
                    c.image.as_ref(),
                    c.restart_policy.as_deref() == Some("Always"),
                )
            })
            .collect(),
        pod_ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        problems,
    }
}

// ---------------------------------------------------------------------------------------------
// Pod statuses (pure)
// ---------------------------------------------------------------------------------------------

/// What a pod status write needs.
#[derive(Clone, Debug)]
pub struct PodWrite {
    pub uid: Box<str>,
    pub containers: Arc<[ContainerInfo]>,
    pub init_containers: Arc<[ContainerInfo]>,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Option<Ipv4Addr>,
    /// When the containers (re)started (for `startedAt` of terminated states).
    pub run_started_ms: i64,
    pub restarts: u32,
}

fn time(ms: i64) -> Time {
    Time(timestamp(ms))
}

fn timestamp(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn pod_condition(type_: &str, status: bool, reason: Option<&str>, at_ms: i64) -> PodCondition {
    PodCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(time(at_ms)),
        ..PodCondition::default()
    }
}

fn container_id(uid: &str, name: &str) -> String {
    format!("hollow://{uid}-{name}")
}

fn container_status(
    pod: &PodWrite,
    c: &ContainerInfo,
    state: ContainerState,
    last_state: Option<ContainerState>,
    running: bool,
    restarts: u32,
) -> ContainerStatus {
    ContainerStatus {
        name: c.name.to_string(),
        image: c.image.to_string(),
        image_id: format!("hollow://{}", c.image),
        container_id: Some(container_id(&pod.uid, &c.name)),
        ready: running,
        started: Some(running),
        restart_count: i32::try_from(restarts).unwrap_or(i32::MAX),
        state: Some(state),
        last_state,
        ..ContainerStatus::default()
    }
}

fn running_state(started_ms: i64) -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(time(started_ms)),
        }),
        ..ContainerState::default()
    }
}

fn terminated_state(
    pod: &PodWrite,
    name: &str,
    code: i32,
    started: i64,
    finished: i64,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(if code == 0 { "Completed" } else { "Error" }.to_string()),
            started_at: Some(time(started)),
            finished_at: Some(time(finished)),
            container_id: Some(container_id(&pod.uid, name)),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    }
}

fn init_statuses(pod: &PodWrite, now_ms: i64) -> Option<Vec<ContainerStatus>> {
    (!pod.init_containers.is_empty()).then(|| {
        pod.init_containers
            .iter()
            .map(|c| {
                if c.sidecar {
                    container_status(pod, c, running_state(now_ms), None, true, 0)
                } else {
                    let done = terminated_state(pod, &c.name, 0, now_ms, now_ms);
                    let mut s = container_status(pod, c, done, None, false, 0);
                    s.ready = true;
                    s
                }
            })
            .collect()
    })
}

/// The status (a strategic merge patch: conditions merge by type) that makes a pod Running.
pub fn running_status(pod: &PodWrite, now_ms: i64) -> PodStatus {
    let ip = pod.pod_ip.map(|ip| ip.to_string());
    let host = pod.host_ip.to_string();
    PodStatus {
        phase: Some("Running".to_string()),
        start_time: Some(time(now_ms)),
        host_ip: Some(host.clone()),
        host_ips: Some(vec![HostIP { ip: host }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        conditions: Some(
            [
                "PodReadyToStartContainers",
                "Initialized",
                "ContainersReady",
                "Ready",
                "PodScheduled",
            ]
            .into_iter()
            .map(|t| pod_condition(t, true, None, now_ms))
            .collect(),
        ),
        container_statuses: Some(
            pod.containers
                .iter()
                .map(|c| container_status(pod, c, running_state(now_ms), None, true, 0))
                .collect(),
        ),
        init_container_statuses: init_statuses(pod, now_ms),
        ..PodStatus::default()
    }
}

/// The status after the containers exited with `exit_code` and restarted at once.
pub fn restarted_status(pod: &PodWrite, exit_code: i32, now_ms: i64) -> PodStatus {
    PodStatus {
        container_statuses: Some(
            pod.containers
                .iter()
                .map(|c| {
                    let last =
                        terminated_state(pod, &c.name, exit_code, pod.run_started_ms, now_ms);
                    container_status(
                        pod,
                        c,
                        running_state(now_ms),
                        Some(last),
                        true,
                        pod.restarts + 1,
                    )
                })
                .collect(),
        ),
        ..PodStatus::default()
    }
}

/// The status after the containers exited for good: phase Succeeded or Failed.
pub fn finished_status(pod: &PodWrite, phase: Phase, exit_code: i32, now_ms: i64) -> PodStatus {
    let reason = Some("PodCompleted");
    PodStatus {
        phase: Some(phase.as_str().to_string()),
        conditions: Some(vec![
            pod_condition("PodReadyToStartContainers", false, None, now_ms),
            pod_condition("ContainersReady", false, reason, now_ms),
            pod_condition("Ready", false, reason, now_ms),
        ]),
        container_statuses: Some(
            pod.containers
                .iter()
                .map(|c| {
                    let done =
                        terminated_state(pod, &c.name, exit_code, pod.run_started_ms, now_ms);
                    container_status(pod, c, done, None, false, pod.restarts)
                })
                .collect(),
        ),
        ..PodStatus::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and API writes
// ---------------------------------------------------------------------------------------------

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the object is gone")]
    Gone,
    #[error("the API server refused it")]
    Rejected {
        #[source]
        source: kube::Error,
    },
    #[error("gave up after {attempts} attempts")]
    GaveUp {
        attempts: u32,
        #[source]
        source: RequestError,
    },
    #[error("shutting down")]
    Stopped,
}

/// Why one attempt failed in a way worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer within {after:?}")]
    TimedOut { after: Duration },
}

/// What stops `skiff-node hollow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a client from kubeconfig {path}")]
    Client {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot reach the API server at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot register node {node}")]
    Register {
        node: String,
        #[source]
        source: WriteError,
    },
}

enum Retry {
    Yes,
    Gone,
    No,
}

fn classify(e: &kube::Error) -> Retry {
    match e {
        kube::Error::Api(status) => match status.code {
            404 => Retry::Gone,
            409 | 429 | 500..=599 => Retry::Yes,
            _ => Retry::No,
        },
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => Retry::No,
        _ => Retry::Yes,
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// The gate every API write goes through: at most `--concurrency` in flight, retries with
/// backoff. Each clone holds the shutdown drain open until dropped.
#[derive(Clone)]
struct Writes {
    permits: Arc<Semaphore>,
    stop: Arc<watch::Sender<bool>>,
    stopped: watch::Receiver<bool>,
    _drain: mpsc::Sender<()>,
}

impl Writes {
    fn new(concurrency: usize) -> (Writes, mpsc::Receiver<()>) {
        let (drain, drained) = mpsc::channel(1);
        let (stop, stopped) = watch::channel(false);
        (
            Writes {
                permits: Arc::new(Semaphore::new(concurrency)),
                stop: Arc::new(stop),
                stopped,
                _drain: drain,
            },
            drained,
        )
    }

    /// Runs `op` (one request, or a read and a write) under a permit, retrying conflicts,
    /// throttling, server and transport errors up to `attempts` times; 404 is [`WriteError::Gone`].
    async fn send<T, F, Fut>(&self, attempts: u32, mut op: F) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut delay = RETRY_FIRST;
        let mut attempt = 1;
        loop {
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| WriteError::Stopped)?;
                tokio::time::timeout(REQUEST_TIMEOUT, op()).await
            };
            let e = match result {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => RequestError::Kube(e),
                Err(_) => RequestError::TimedOut {
                    after: REQUEST_TIMEOUT,
                },
            };
            let class = match &e {
                RequestError::Kube(e) => classify(e),
                RequestError::TimedOut { .. } => Retry::Yes,
            };
            match class {
                Retry::Gone => return Err(WriteError::Gone),
                Retry::No => {
                    return Err(match e {
                        RequestError::Kube(source) => WriteError::Rejected { source },
                        timeout => WriteError::GaveUp {
                            attempts: attempt,
                            source: timeout,
                        },
                    })
                }
                Retry::Yes if attempt >= attempts => {
                    return Err(WriteError::GaveUp {
                        attempts,
                        source: e,
                    })
                }
                Retry::Yes => {
                    tracing::debug!(attempt, error = %e, "write failed; retrying");
                    let mut stopped = self.stopped.clone();
                    tokio::select! {
                        () = tokio::time::sleep(jittered(delay)) => {}
                        _ = stopped.wait_for(|stopped| *stopped) => return Err(WriteError::Stopped),
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                    attempt += 1;
                }
            }
        }
    }

    /// Stops new attempts and retries (they fail with [`WriteError::Stopped`]); requests in
    /// flight go on.
    fn close(&self) {
        self.permits.close();
        self.stop.send_replace(true);
    }
}

/// `delay` plus up to half of it, so retries of many writes do not line up.
fn jittered(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let half = (delay.as_nanos() / 2).max(1);
    delay + Duration::from_nanos((u128::from(nanos) % half) as u64)
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// A client for the cluster of the kubeconfig, checked with a `/version` request.
pub async fn connect(kubeconfig: &std::path::Path) -> Result<kube::Client, Error> {
    let file =
        kube::config::Kubeconfig::read_from(kubeconfig).map_err(|source| Error::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            source,
        })?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|source| Error::Client {
            path: kubeconfig.to_path_buf(),
            source: Box::new(source),
        })?;
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|source| Error::Client {
        path: kubeconfig.to_path_buf(),
        source: Box::new(source),
    })?;
    client
        .apiserver_version()
        .await
        .map_err(|source| Error::Unreachable { url, source })?;
    Ok(client)
}

/// Creates the node, or takes an existing one over (our labels and taints added), then writes
/// its status and makes sure of its lease. Returns the node as the server has it.
async fn register_node(
    client: &kube::Client,
    settings: &Settings,
    index: u32,
    writes: &Writes,
) -> Result<Node, WriteError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let desired = node_object(settings, index);
    let name = settings.node_name(index);
    writes
        .send(REGISTER_ATTEMPTS, || async {
            match nodes.create(&PostParams::default(), &desired).await {
                Err(kube::Error::Api(s)) if s.code == 409 => take_over(&nodes, &desired).await,
                other => other,
            }
        })
        .await?;
    let now = Timestamp::now();
    let status = serde_json::json!({ "status": node_status(settings, index, now, now) });
    let node = writes
        .send(REGISTER_ATTEMPTS, || {
            patch_node_status(&nodes, &name, &status)
        })
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let uid = node.metadata.uid.clone();
    writes
        .send(REGISTER_ATTEMPTS, || {
            ensure_lease(
                &leases,
                &name,
                uid.as_deref(),
                settings.lease_duration_seconds,
            )
        })
        .await?;
    Ok(node)
}

/// Adds our labels and taints to an existing node; writes only if that changes it.
pub(crate) async fn take_over(nodes: &Api<Node>, desired: &Node) -> Result<Node, kube::Error> {
    let name = desired.metadata.name.as_deref().unwrap_or_default();
    let mut node = nodes.get(name).await?;
    let before = (node.metadata.labels.clone(), node.spec.clone());
    let labels = node.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.extend(desired.metadata.labels.clone().unwrap_or_default());
    let wanted = desired
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if !wanted.is_empty() {
        let spec = node.spec.get_or_insert_with(NodeSpec::default);
        let mut taints: Vec<Taint> = spec
            .taints
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| {
                !wanted
                    .iter()
                    .any(|w| w.key == t.key && w.effect == t.effect)
            })
            .collect();
        taints.extend(wanted);
        spec.taints = Some(taints);
    }
    if (node.metadata.labels.clone(), node.spec.clone()) == before {
        return Ok(node);
    }
    tracing::info!(node = name, "taking over an existing node");
    nodes.replace(name, &PostParams::default(), &node).await
}

/// Creates the node's lease, or renews an existing one as ours.
pub(crate) async fn ensure_lease(
    leases: &Api<Lease>,
    name: &str,
    node_uid: Option<&str>,
    duration: i32,
) -> Result<Lease, kube::Error> {
    let lease = lease_object(name, node_uid, duration, Timestamp::now());
    match leases.create(&PostParams::default(), &lease).await {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = serde_json::json!({
                "metadata": { "ownerReferences": lease.metadata.owner_references },
                "spec": lease.spec,
            });
            leases
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
        other => other,
    }
}

/// Renews the node's lease; re-creates it if it is gone.
pub(crate) async fn renew_lease(
    leases: &Api<Lease>,
    name: &str,
    node_uid: Option<&str>,
    duration: i32,
) -> Result<Lease, kube::Error> {
    let patch = serde_json::json!({ "spec": lease_spec(name, duration, Timestamp::now()) });
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(e) if api_code(&e) == Some(404) => ensure_lease(leases, name, node_uid, duration).await,
        other => other,
    }
}

/// Merge-patches a node's status (`{"status": ...}`).
pub(crate) async fn patch_node_status(
    api: &Api<Node>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<Node, kube::Error> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

/// Strategic-merge-patches a pod's status.
async fn patch_pod_status(
    api: &Api<Pod>,
    name: &str,
    status: &PodStatus,
) -> Result<Pod, kube::Error> {
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
}

/// Deletes a pod with grace 0 if it still has this uid (a 409 means it was replaced: gone).
async fn delete_pod(api: &Api<Pod>, name: &str, uid: &str) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if api_code(&e) == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared node table
// ---------------------------------------------------------------------------------------------

/// Our nodes by slot (0-based position in our index range), shared by the node and pod loops.
struct NodeTable {
    start_index: u32,
    by_name: HashMap<String, u32>,
    /// podCIDR ranges, as the node watch last saw them.
    pod_ranges: Vec<Mutex<Option<PodRange>>>,
}

impl NodeTable {
    fn new(settings: &Settings) -> NodeTable {
        NodeTable {
            start_index: settings.start_index,
            by_name: settings
                .indexes()
                .enumerate()
                .map(|(slot, index)| (settings.node_name(index), slot as u32))
                .collect(),
            pod_ranges: settings.indexes().map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    fn set_pod_cidr(&self, slot: u32, node: &Node) {
        let range = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(PodRange::from_cidr);
        if let Some(cell) = self.pod_ranges.get(slot as usize) {
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = range;
        }
    }

    /// The range pod IPs of this node come from: its podCIDR, else the fake one.
    fn pod_range(&self, slot: u32) -> PodRange {
        self.pod_ranges
            .get(slot as usize)
            .and_then(|cell| *cell.lock().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or_else(|| fake_pod_range(self.start_index + slot))
    }
}

// ---------------------------------------------------------------------------------------------
// The node loop: leases, heartbeats, Ready restoration
// ---------------------------------------------------------------------------------------------

struct NodeRuntime {
    name: String,
    index: u32,
    uid: Option<String>,
    /// Resource version of the last node we wrote or saw.
    rv: u64,
    /// Whether the server's node is Ready=True as far as we know.
    ready: bool,
    gone: bool,
    since: Timestamp,
    last_status: tokio::time::Instant,
    lease_busy: bool,
    status_busy: bool,
}

enum NodeDone {
    Lease {
        slot: u32,
        result: Result<(), WriteError>,
    },
    Status {
        slot: u32,
        /// The resource version of the node written.
        result: Result<u64, WriteError>,
    },
}

/// How often at most [`FailureLog`] warns about repeated failures.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Warns about failed writes without flooding the log while the API server is down: the first
/// failure at once, then one summary per [`FAILURE_LOG_INTERVAL`] with the count and the last.
struct FailureLog {
    what: &'static str,
    window: Option<tokio::time::Instant>,
    suppressed: u64,
    last: String,
}

impl FailureLog {
    fn new(what: &'static str) -> FailureLog {
        FailureLog {
            what,
            window: None,
            suppressed: 0,
            last: String::new(),
        }
    }

    fn failed(&mut self, object: &str, error: &WriteError) {
        if matches!(error, WriteError::Stopped) {
            return;
        }
        self.flush_if_due();
        if self.window.is_some() {
            self.suppressed += 1;
            self.last = format!("{object}: {}", error_chain(error));
        } else {
            tracing::warn!(object, error = %error_chain(error), "{}", self.what);
            self.window = Some(tokio::time::Instant::now());
        }
    }

    /// Logs the failures held back, once the interval has passed.
    fn flush_if_due(&mut self) {
        let Some(start) = self.window else { return };
        if start.elapsed() < FAILURE_LOG_INTERVAL {
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!(
                more = self.suppressed,
                last = %self.last,
                "{} (repeated failures in the last {FAILURE_LOG_INTERVAL:?})",
                self.what
            );
        }
        self.window = None;
        self.suppressed = 0;
    }
}

struct NodeLoop {
    client: kube::Client,
    settings: Arc<Settings>,
    table: Arc<NodeTable>,
    writes: Writes,
    nodes: Vec<NodeRuntime>,
    done_tx: mpsc::UnboundedSender<NodeDone>,
    lease_failures: FailureLog,
    status_failures: FailureLog,
}

impl NodeLoop {
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut done_rx: mpsc::UnboundedReceiver<NodeDone>,
    ) {
        let n = self.nodes.len() as u128;
        let interval = self.settings.renew_interval.as_nanos();
        let start = tokio::time::Instant::now();
        // Renewal k is node k % n's; renewal k is due at start + k·interval/n, so the renewals
        // of all nodes are spread evenly over the interval. The first round is one interval on.
        let due = |k: u128| start + Duration::from_nanos((interval * k / n) as u64);
        let mut k = n;
        let api: Api<Node> = Api::all(self.client.clone());
        let config = watcher::Config::default().labels(&format!("{HOLLOW_LABEL}=true"));
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep_until(due(k)) => {
                    let now = tokio::time::Instant::now();
                    while due(k) <= now {
                        self.renew((k % n) as u32);
                        k += 1;
                    }
                }
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => {
                        self.saw(&node);
                    }
                    Some(Ok(watcher::Event::Delete(node))) => self.deleted(&node),
                    Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "node watch failed; retrying"),
                    None => break,
                },
                Some(done) = done_rx.recv() => self.done(done),
            }
            self.lease_failures.flush_if_due();
            self.status_failures.flush_if_due();
        }
    }

    /// Renews one node's lease and, when due or not Ready, writes its status.
    fn renew(&mut self, slot: u32) {
        let settings = self.settings.clone();
        let node = &mut self.nodes[slot as usize];
        if node.gone {
            return;
        }
        if node.lease_busy {
            tracing::debug!(node = %node.name, "previous lease renewal still in flight; skipped");
        } else {
            node.lease_busy = true;
            let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
            let (name, uid) = (node.name.clone(), node.uid.clone());
            let (writes, done) = (self.writes.clone(), self.done_tx.clone());
            let duration = settings.lease_duration_seconds;
            tokio::spawn(
                async move {
                    let result = writes
                        .send(WRITE_ATTEMPTS, || {
                            renew_lease(&leases, &name, uid.as_deref(), duration)
                        })
                        .await
                        .map(drop);
                    let _ = done.send(NodeDone::Lease { slot, result });
                }
                .instrument(tracing::info_span!("lease", node = %node.name)),
            );
        }
        if !node.ready || node.last_status.elapsed() >= STATUS_REPORT_INTERVAL {
            self.write_status(slot);
        }
    }

    /// Writes the node's full status (Ready=True, fresh heartbeats).
    fn write_status(&mut self, slot: u32) {
        let node = &mut self.nodes[slot as usize];
        if node.status_busy || node.gone {
            return;
        }
        node.status_busy = true;
        let now = Timestamp::now();
        if !node.ready {
            node.since = now;
        }
        let status = serde_json::json!({ "status": node_status(&self.settings, node.index, now, node.since) });
        let api: Api<Node> = Api::all(self.client.clone());
        let name = node.name.clone();
        let (writes, done) = (self.writes.clone(), self.done_tx.clone());
        tokio::spawn(
            async move {
                let result = writes
                    .send(WRITE_ATTEMPTS, || patch_node_status(&api, &name, &status))
                    .await
                    .map(|node| resource_version(&node.metadata));
                let _ = done.send(NodeDone::Status { slot, result });
            }
            .instrument(tracing::info_span!("node_status", node = %node.name)),
        );
    }

    fn saw(&mut self, node: &Node) {
        let Some(slot) = node
            .metadata
            .name
            .as_deref()
            .and_then(|n| self.table.slot(n))
        else {
            return;
        };
        self.table.set_pod_cidr(slot, node);
        let rv = resource_version(&node.metadata);
        let runtime = &mut self.nodes[slot as usize];
        if runtime.gone {
            tracing::info!(node = %runtime.name, "node is back; renewing its lease again");
            runtime.gone = false;
        }
        runtime.uid = node.metadata.uid.clone();
        if rv <= runtime.rv {
            return;
        }
        runtime.rv = rv;
        if !node_is_ready(node) {
            if runtime.ready {
                tracing::info!(node = %runtime.name, "node is not Ready on the server; restoring it");
            }
            runtime.ready = false;
            self.write_status(slot);
        }
    }

    fn deleted(&mut self, node: &Node) {
        let Some(slot) = node
            .metadata
            .name
            .as_deref()
            .and_then(|n| self.table.slot(n))
        else {
            return;
        };
        let runtime = &mut self.nodes[slot as usize];
        tracing::warn!(node = %runtime.name, "node was deleted; its lease stops until it is created again");
        runtime.gone = true;
        runtime.ready = false;
    }

    fn done(&mut self, done: NodeDone) {
        match done {
            NodeDone::Lease { slot, result } => {
                let runtime = &mut self.nodes[slot as usize];
                runtime.lease_busy = false;
                if let Err(e) = result {
                    self.lease_failures.failed(&runtime.name, &e);
                }
            }
            NodeDone::Status { slot, result } => {
                let runtime = &mut self.nodes[slot as usize];
                runtime.status_busy = false;
                match result {
                    Ok(rv) => {
                        runtime.rv = runtime.rv.max(rv);
                        runtime.ready = true;
                        runtime.last_status = tokio::time::Instant::now();
                    }
                    Err(e) => self.status_failures.failed(&runtime.name, &e),
                }
            }
        }
    }
}

fn resource_version(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// An error with its causes, `a: b: c`, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The pod loop: one watch over bound pods, a timer heap, bounded writes
// ---------------------------------------------------------------------------------------------

/// What the pod loop keeps per pod on our nodes.
struct PodState {
    uid: Box<str>,
    slot: u32,
    rv: u64,
    life: Lifecycle,
    containers: Arc<[ContainerInfo]>,
    init_containers: Arc<[ContainerInfo]>,
    ip: Option<Ipv4Addr>,
    /// A write for this pod is in flight.
    busy: bool,
    /// Our grace-0 delete went through; not sent again.
    delete_sent: bool,
    /// The earliest time a timer for this pod is queued at.
    timer: Option<i64>,
    /// The watch listing that last saw it (to drop pods deleted while the watch was down).
    listing: u64,
}

enum PodJob {
    Status(Box<PodStatus>),
    Delete,
}

struct PodDone {
    key: Arc<str>,
    uid: Box<str>,
    result: Result<Option<Pod>, WriteError>,
}

struct PodLoop {
    client: kube::Client,
    settings: Arc<Settings>,
    table: Arc<NodeTable>,
    writes: Writes,
    pods: HashMap<Arc<str>, PodState>,
    ips: Vec<Option<PodIps>>,
    timers: BinaryHeap<Reverse<(i64, Arc<str>)>>,
    listing: u64,
    done_tx: mpsc::UnboundedSender<PodDone>,
    failures: FailureLog,
}

impl PodLoop {
    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut done_rx: mpsc::UnboundedReceiver<PodDone>,
    ) {
        let api: Api<Pod> = Api::all(self.client.clone());
        // The server filters by spec.nodeName (master/src/api/selectors.rs); we keep ours.
        let config = watcher::Config::default().fields("spec.nodeName!=");
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let sleep = async {
                match next_timer {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms()).max(0);
                        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                event = events.next() => match event {
                    Some(Ok(event)) => self.event(event),
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                    None => break,
                },
                Some(done) = done_rx.recv() => self.done(done),
                () = sleep => self.fire_timers(),
            }
            self.failures.flush_if_due();
        }
    }

    fn event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.listing += 1,
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.saw(&pod),
            watcher::Event::Delete(pod) => {
                if let Some(key) = pod_key(&pod) {
                    if let Some(state) = self.pods.get(key.as_ref()) {
                        if pod.metadata.uid.as_deref() == Some(&*state.uid) {
                            self.forget(&key);
                        }
                    }
                }
            }
            watcher::Event::InitDone => {
                let stale: Vec<Arc<str>> = self
                    .pods
                    .iter()
                    .filter(|(_, s)| s.listing != self.listing)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in stale {
                    self.forget(&key);
                }
                tracing::info!(pods = self.pods.len(), "pod watch synced");
            }
        }
    }

    /// Takes in a pod from the watch (or a write's answer) and acts on it.
    fn saw(&mut self, pod: &Pod) {
        let Some(key) = pod_key(pod) else { return };
        let observed = observe(pod, self.settings.timing.job_duration_ms);
        let Some(slot) = observed
            .node_name
            .as_deref()
            .and_then(|n| self.table.slot(n))
        else {
            if self.pods.contains_key(key.as_ref()) {
                self.forget(&key);
            }
            return;
        };
        let listing = self.listing;
        let key = match self.pods.get_mut(key.as_ref()) {
            Some(state) if *state.uid == *observed.uid => {
                state.listing = listing;
                if observed.resource_version != 0 && observed.resource_version <= state.rv {
                    return; // older than what we already know (our own write's answer)
                }
                key
            }
            Some(_) => {
                self.forget(&key); // same name, new pod
                key
            }
            None => {
                for problem in &observed.problems {
                    tracing::warn!(pod = %key, "{problem}");
                }
                key
            }
        };
        let now = now_ms();
        let state = self.pods.entry(key.clone()).or_insert_with(|| PodState {
            uid: observed.uid.as_str().into(),
            slot,
            rv: 0,
            life: Lifecycle {
                phase: observed.phase,
                deleting: false,
                bound_at_ms: now,
                run_started_ms: None,
                restarts: 0,
                exit: observed.exit,
                restart_policy: observed.restart_policy,
            },
            containers: observed.containers.clone().into(),
            init_containers: observed.init_containers.clone().into(),
            ip: None,
            busy: false,
            delete_sent: false,
            timer: None,
            listing,
        });
        state.rv = observed.resource_version;
        state.listing = listing;
        state.life.phase = observed.phase;
        state.life.deleting = observed.deleting;
        state.life.restarts = observed.restarts;
        state.life.exit = observed.exit;
        // The server's times are whole seconds; keep our own millisecond time of the same start.
        state.life.run_started_ms = match (state.life.run_started_ms, observed.run_started_ms) {
            (Some(ours), Some(theirs)) if ours.div_euclid(1000) == theirs.div_euclid(1000) => {
                Some(ours)
            }
            (_, theirs) => theirs,
        };
        if state.ip.is_none() && observed.phase == Phase::Running {
            if let Some(ip) = observed.pod_ip {
                if ips_of(&mut self.ips, &self.table, slot).claim(ip) {
                    state.ip = Some(ip);
                }
            }
        }
        if observed.phase.is_terminal() {
            if let Some(ip) = state.ip.take() {
                ips_of(&mut self.ips, &self.table, slot).release(ip);
            }
        }
        self.evaluate(&key);
    }

    fn forget(&mut self, key: &Arc<str>) {
        if let Some(state) = self.pods.remove(key.as_ref()) {
            if let Some(ip) = state.ip {
                if let Some(Some(ips)) = self.ips.get_mut(state.slot as usize) {
                    ips.release(ip);
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            if let Some(state) = self.pods.get_mut(key.as_ref()) {
                if state.timer == Some(at) {
                    state.timer = None;
                    self.evaluate(&key);
                }
            }
        }
    }

    fn schedule(&mut self, key: &Arc<str>, at: i64) {
        if let Some(state) = self.pods.get_mut(key.as_ref()) {
            if state.timer.is_none_or(|t| at < t) {
                state.timer = Some(at);
                self.timers.push(Reverse((at, key.clone())));
            }
        }
    }

    /// Decides what to do with a pod and starts it.
    fn evaluate(&mut self, key: &Arc<str>) {
        let now = now_ms();
        let Some(state) = self.pods.get_mut(key.as_ref()) else {
            return;
        };
        if state.busy {
            return;
        }
        let step = next_step(&state.life, self.settings.timing.pod_start_delay_ms, now);
        let job = match step {
            Step::Nothing => return,
            Step::WaitUntil(at) => return self.schedule(key, at),
            Step::DeleteGracefully if state.delete_sent => return,
            Step::DeleteGracefully => PodJob::Delete,
            Step::StartRunning => {
                if state.ip.is_none() {
                    state.ip = ips_of(&mut self.ips, &self.table, state.slot).allocate();
                    if state.ip.is_none() {
                        tracing::warn!(pod = %key, "no pod IP left on its node; retrying later");
                        return self.schedule(key, now + POD_RETRY_MS);
                    }
                }
                state.life.run_started_ms = Some(now);
                PodJob::Status(Box::new(running_status(&self.write_of(key), now)))
            }
            Step::Restart { exit_code } => PodJob::Status(Box::new(restarted_status(
                &self.write_of(key),
                exit_code,
                now,
            ))),
            Step::Finish { phase, exit_code } => PodJob::Status(Box::new(finished_status(
                &self.write_of(key),
                phase,
                exit_code,
                now,
            ))),
        };
        self.spawn(key, job);
    }

    fn write_of(&self, key: &Arc<str>) -> PodWrite {
        let state = &self.pods[key.as_ref()];
        PodWrite {
            uid: state.uid.clone(),
            containers: state.containers.clone(),
            init_containers: state.init_containers.clone(),
            host_ip: node_ip(self.table.start_index + state.slot),
            pod_ip: state.ip,
            run_started_ms: state.life.run_started_ms.unwrap_or(state.life.bound_at_ms),
            restarts: state.life.restarts,
        }
    }

    fn spawn(&mut self, key: &Arc<str>, job: PodJob) {
        let Some(state) = self.pods.get_mut(key.as_ref()) else {
            return;
        };
        state.busy = true;
        let uid = state.uid.clone();
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = name.to_string();
        let (writes, done, key) = (self.writes.clone(), self.done_tx.clone(), key.clone());
        let span = tracing::info_span!("pod", ns = namespace, name = %name);
        tokio::spawn(
            async move {
                let result = match job {
                    PodJob::Status(status) => writes
                        .send(WRITE_ATTEMPTS, || patch_pod_status(&api, &name, &status))
                        .await
                        .map(Some),
                    PodJob::Delete => writes
                        .send(WRITE_ATTEMPTS, || delete_pod(&api, &name, &uid))
                        .await
                        .map(|()| None),
                };
                let _ = done.send(PodDone { key, uid, result });
            }
            .instrument(span),
        );
    }

    fn done(&mut self, done: PodDone) {
        let Some(state) = self.pods.get_mut(done.key.as_ref()) else {
            return;
        };
        if state.uid != done.uid {
            return;
        }
        state.busy = false;
        match done.result {
            Ok(Some(pod)) => {
                self.saw(&pod);
                // The watch may have brought this or a newer version while we were busy.
                self.evaluate(&done.key);
            }
            Ok(None) => {
                state.delete_sent = true;
            }
            Err(WriteError::Gone | WriteError::Stopped) => {}
            Err(e) => {
                self.failures.failed(&done.key, &e);
                let at = now_ms() + POD_RETRY_MS;
                self.schedule(&done.key, at);
            }
        }
    }
}

/// The pod IPs of a node, (re)made when its range changed (a podCIDR was assigned).
fn ips_of<'a>(ips: &'a mut [Option<PodIps>], table: &NodeTable, slot: u32) -> &'a mut PodIps {
    let range = table.pod_range(slot);
    let cell = &mut ips[slot as usize];
    if cell.as_ref().is_none_or(|ips| ips.range() != range) {
        *cell = Some(PodIps::new(range));
    }
    cell.as_mut().expect("just set")
}

fn pod_key(pod: &Pod) -> Option<Arc<str>> {
    let name = pod.metadata.name.as_deref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{namespace}/{name}").into())
}

// ---------------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------------

/// Registers the nodes, then keeps them alive and runs their pods until `shutdown` completes.
/// The nodes stay registered afterwards (like a kubelet that stops).
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut shutdown = std::pin::pin!(shutdown);
    let client = connect(&settings.kubeconfig).await?;
    let settings = Arc::new(settings);
    let table = Arc::new(NodeTable::new(&settings));
    let (writes, mut drained) = Writes::new(settings.concurrency);

    let started = tokio::time::Instant::now();
    let registering = futures::stream::iter(settings.indexes())
        .map(|index| {
            let (client, settings, writes) = (&client, &settings, &writes);
            async move {
                register_node(client, settings, index, writes)
                    .await
                    .map_err(|source| Error::Register {
                        node: settings.node_name(index),
                        source,
                    })
            }
        })
        .buffered(settings.concurrency * 2)
        .collect::<Vec<_>>();
    let registered = tokio::select! {
        registered = registering => registered,
        () = &mut shutdown => {
            tracing::info!("stopping before all nodes were registered");
            return Ok(());
        }
    };
    let mut nodes = Vec::with_capacity(registered.len());
    let now = Timestamp::now();
    for (slot, (index, result)) in settings.indexes().zip(registered).enumerate() {
        let node = result?;
        table.set_pod_cidr(slot as u32, &node);
        nodes.push(NodeRuntime {
            name: settings.node_name(index),
            index,
            uid: node.metadata.uid.clone(),
            rv: resource_version(&node.metadata),
            ready: true,
            gone: false,
            since: now,
            last_status: tokio::time::Instant::now(),
            lease_busy: false,
            status_busy: false,
        });
    }
    tracing::info!(
        first = %settings.node_name(settings.start_index),
        last = %settings.node_name(settings.start_index + settings.count - 1),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "hollow: registered {} nodes",
        nodes.len()
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (node_done_tx, node_done_rx) = mpsc::unbounded_channel();
    let node_loop = NodeLoop {
        client: client.clone(),
        settings: settings.clone(),
        table: table.clone(),
        writes: writes.clone(),
        nodes,
        done_tx: node_done_tx,
        lease_failures: FailureLog::new("cannot renew a node lease"),
        status_failures: FailureLog::new("cannot write a node status"),
    };
    let (pod_done_tx, pod_done_rx) = mpsc::unbounded_channel();
    let pod_loop = PodLoop {
        client,
        settings: settings.clone(),
        table: table.clone(),
        writes: writes.clone(),
        pods: HashMap::new(),
        ips: vec![None; settings.count as usize],
        timers: BinaryHeap::new(),
        listing: 0,
        done_tx: pod_done_tx,
        failures: FailureLog::new("cannot update a pod"),
    };
    let mut node_task = tokio::spawn(
        node_loop
            .run(stop_rx.clone(), node_done_rx)
            .instrument(tracing::info_span!("nodes")),
    );
    let mut pod_task = tokio::spawn(
        pod_loop
            .run(stop_rx, pod_done_rx)
            .instrument(tracing::info_span!("pods")),
    );
    tokio::select! {
        () = &mut shutdown => tracing::info!("stopping: leases stop, nodes stay registered"),
        r = &mut node_task => tracing::error!(result = ?r, "the node loop ended"),
        r = &mut pod_task => tracing::error!(result = ?r, "the pod loop ended"),
    }
    let _ = stop_tx.send(true);
    writes.close();
    drop(writes);
    let finished = async {
        if !node_task.is_finished() {
            let _ = node_task.await;
        }
        if !pod_task.is_finished() {
            let _ = pod_task.await;
        }
        drained.recv().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, finished)
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "writes still in flight at shutdown; dropped");
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn settings(extra: &[&str]) -> Result<Settings, String> {
        let argv = ["skiff-node", "--kubeconfig", "/k"].iter().chain(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        Settings::from_args(&cli.args).map_err(|e| e.to_string())
    }

    /// Asserts a parse result: `Ok(want)`, or an error containing the fragment.
    fn check<T: PartialEq + std::fmt::Debug>(
        input: &str,
        got: Result<T, String>,
        want: Result<T, &str>,
    ) {
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
            (Err(e), Err(fragment)) => {
                assert!(e.contains(fragment), "{input}: {e:?} lacks {fragment:?}")
            }
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn flags_are_checked() {
        let defaults = settings(&[]).unwrap();
        assert_eq!(defaults.count, 10);
        assert_eq!(defaults.name_prefix, "hollow-");
        assert_eq!(defaults.cpu, Quantity("4".into()));
        assert_eq!(defaults.memory, Quantity("16Gi".into()));
        assert_eq!(defaults.pods, 110);
        assert_eq!(defaults.lease_duration_seconds, 40);
        assert_eq!(defaults.renew_interval, Duration::from_secs(10));
        assert_eq!(
            defaults.timing,
            Timing {
                pod_start_delay_ms: 0,
                job_duration_ms: 5000
            }
        );
        assert_eq!(defaults.concurrency, 32);

        // (flags, Ok or a fragment of the error)
        let cases: &[(&[&str], Result<(), &str>)] = &[
            (&["--count", "1000", "--start-index", "13000"], Ok(())),
            (&["--count", "0"], Err("--count: must be at least 1")),
            (
                &["--count", "2", "--start-index", "14079"],
                Err("goes past node index 14079"),
            ),
            (&["--count", "-3"], Err("unexpected argument")),
            (&["--count", "many"], Err("invalid value 'many'")),
            (
                &["--name-prefix", "Hollow-"],
                Err("--name-prefix: \"Hollow-\" makes node name \"Hollow-0\""),
            ),
            (&["--name-prefix=-x"], Err("is not a DNS subdomain")),
            (&["--name-prefix", "rack1.node-"], Ok(())),
            (&["--name-prefix", ""], Ok(())),
            (&["--cpu", "3500m", "--memory", "512M"], Ok(())),
            (&["--cpu", "four"], Err("--cpu: \"four\" is not a number")),
            (
                &["--memory", "16GB"],
                Err("--memory: \"16GB\" has an unknown unit \"GB\""),
            ),
            (&["--memory=-1Gi"], Err("--memory: \"-1Gi\" is negative")),
            (&["--pods", "0"], Err("--pods: 0 is out of range")),
            (&["--pods", "255"], Err("use 1 to 254")),
            (&["--pods", "254"], Ok(())),
            (&["--zones", "0"], Err("--zones: must be at least 1")),
            (&["--labels", "rack=r1,example.com/tier=gold"], Ok(())),
            (
                &["--labels", "rack"],
                Err("--labels: \"rack\" is not key=value"),
            ),
            (
                &[
                    "--taints",
                    "dedicated=infra:NoSchedule,spot:PreferNoSchedule",
                ],
                Ok(()),
            ),
            (
                &["--taints", "dedicated=infra"],
                Err("--taints: \"dedicated=infra\" has no effect"),
            ),
            (
                &["--renew-interval", "40"],
                Err("--renew-interval: 40s must be at least 1s and shorter"),
            ),
            (&["--renew-interval", "0"], Err("--renew-interval")),
            (
                &["--lease-duration-seconds", "0"],
                Err("--lease-duration-seconds: use 1 or more"),
            ),
            (
                &["--lease-duration-seconds", "3000000000"],
                Err("--lease-duration-seconds: use 1 or more"),
            ),
            (
                &["--concurrency", "0"],
                Err("--concurrency: must be at least 1"),
            ),
            (&["--log-format", "xml"], Err("invalid value 'xml'")),
            (&["--log-format", "json"], Ok(())),
        ];
        for (flags, want) in cases {
            check(&format!("{flags:?}"), settings(flags).map(|_| ()), *want);
        }
    }

    #[test]
    fn labels() {
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Result<Pairs, &str>)] = &[
            ("", Ok(&[])),
            (" , ", Ok(&[])),
            ("a=b", Ok(&[("a", "b")])),
            ("a=b, c = d", Ok(&[("a", "b"), ("c", "d")])),
            ("example.com/rack=r-1", Ok(&[("example.com/rack", "r-1")])),
            ("empty=", Ok(&[("empty", "")])),
            ("a", Err("\"a\" is not key=value")),
            ("a=b,a=c", Err("label \"a\" is given twice")),
            ("a b=c", Err("is not a valid key")),
            ("Bad_Prefix/x=y", Err("the prefix of key")),
            ("a=-b", Err("is not a valid label value")),
            ("a=b=c", Err("is not a valid label value")),
        ];
        for (input, want) in cases {
            let want = want.map(|pairs| {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>()
            });
            check(input, parse_labels(input), want);
        }
    }

    #[test]
    fn taints() {
        let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        };
        let cases: Vec<(&str, Result<Vec<Taint>, &str>)> = vec![
            ("", Ok(vec![])),
            (
                "dedicated=infra:NoSchedule",
                Ok(vec![taint("dedicated", Some("infra"), "NoSchedule")]),
            ),
            (
                "spot:PreferNoSchedule, example.com/gpu=:NoExecute",
                Ok(vec![
                    taint("spot", None, "PreferNoSchedule"),
                    taint("example.com/gpu", None, "NoExecute"),
                ]),
            ),
            (
                "a:NoSchedule,a:NoExecute",
                Ok(vec![
                    taint("a", None, "NoSchedule"),
                    taint("a", None, "NoExecute"),
                ]),
            ),
            (
                "a:NoSchedule,a=b:NoSchedule",
                Err("taint a:NoSchedule is given twice"),
            ),
            ("a=b", Err("has no effect")),
            (
                "a=b:Sometimes",
                Err("effect \"Sometimes\" is not NoSchedule"),
            ),
            (":NoSchedule", Err("is not a valid key")),
            ("a=b c:NoSchedule", Err("is not a valid label value")),
        ];
        for (input, want) in cases {
            check(input, parse_taints(input), want);
        }
    }

    #[test]
    fn quantities() {
        let cases = [
            ("4", Ok(())),
            ("0", Ok(())),
            ("3500m", Ok(())),
            ("0.5", Ok(())),
            (".5", Ok(())),
            ("16Gi", Ok(())),
            ("512Mi", Ok(())),
            ("1Ki", Ok(())),
            ("1Ei", Ok(())),
            ("100n", Ok(())),
            ("100u", Ok(())),
            ("1k", Ok(())),
            ("1M", Ok(())),
            ("1E", Ok(())),
            ("1e3", Ok(())),
            ("1E3", Ok(())),
            ("1e-3", Ok(())),
            ("2.5e+2", Ok(())),
            ("", Err("is not a number")),
            ("Gi", Err("is not a number")),
            ("1.2.3", Err("is not a number")),
            ("-1", Err("is negative")),
            ("16GB", Err("unknown unit")),
            ("1e", Err("unknown unit")),
            ("1 Gi", Err("unknown unit")),
            ("4cpu", Err("unknown unit")),
        ];
        for (input, want) in cases {
            check(input, check_quantity(input), want);
        }
    }

    #[test]
    fn node_from_flags() {
        let s = settings(&[
            "--zones",
            "3",
            "--labels",
            "rack=r1,topology.kubernetes.io/zone=override",
            "--taints",
            "dedicated=infra:NoSchedule",
            "--cpu",
            "8",
            "--pods",
            "50",
        ])
        .unwrap();
        let node = node_object(&s, 7);
        assert_eq!(node.metadata.name.as_deref(), Some("hollow-7"));
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/hostname"], "hollow-7");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert_eq!(labels[HOLLOW_LABEL], "true");
        assert_eq!(labels["rack"], "r1");
        // --labels are applied last.
        assert_eq!(labels["topology.kubernetes.io/zone"], "override");
        let taints = node.spec.unwrap().taints.unwrap();
        assert_eq!(taints.len(), 1);
        assert_eq!(taints[0].key, "dedicated");
        assert!(
            node.status.is_none(),
            "the status goes through nodes/status"
        );

        let three = settings(&["--zones", "3"]).unwrap();
        let zones: Vec<String> = (0..4)
            .map(|i| node_labels(&three, i)["topology.kubernetes.io/zone"].clone())
            .collect();
        assert_eq!(zones, ["zone-0", "zone-1", "zone-2", "zone-0"]);
        assert!(node_object(&three, 0).spec.unwrap().taints.is_none());

        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let since = Timestamp::from_second(1_900_000_000).unwrap();
        let status = node_status(&s, 7, now, since);
        for resources in [status.capacity.unwrap(), status.allocatable.unwrap()] {
            assert_eq!(resources["cpu"].0, "8");
            assert_eq!(resources["memory"].0, "16Gi");
            assert_eq!(resources["pods"].0, "50");
            assert_eq!(resources["ephemeral-storage"].0, "100Gi");
        }
        let conditions = status.conditions.unwrap();
        let expected = [
            ("MemoryPressure", "False"),
            ("DiskPressure", "False"),
            ("PIDPressure", "False"),
            ("Ready", "True"),
        ];
        assert_eq!(conditions.len(), expected.len());
        for (c, (type_, value)) in conditions.iter().zip(expected) {
            assert_eq!((c.type_.as_str(), c.status.as_str()), (type_, value));
            assert_eq!(c.last_heartbeat_time, Some(Time(now)));
            assert_eq!(c.last_transition_time, Some(Time(since)));
        }
        assert_eq!(conditions[3].reason.as_deref(), Some("KubeletReady"));
        let addresses: Vec<(String, String)> = status
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            addresses,
            [
                ("InternalIP".to_string(), "10.250.0.8".to_string()),
                ("Hostname".to_string(), "hollow-7".to_string())
            ]
        );
        let info = status.node_info.unwrap();
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.container_runtime_version, "hollow://0");
        assert_eq!(
            (info.operating_system.as_str(), info.architecture.as_str()),
            ("linux", "amd64")
        );

        let ready = Node {
            status: Some(node_status(&s, 7, now, since)),
            ..Node::default()
        };
        assert!(node_is_ready(&ready));
        let mut unknown = ready.clone();
        unknown
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[3]
            .status = "Unknown".into();
        assert!(!node_is_ready(&unknown));
        assert!(!node_is_ready(&Node::default()));
    }

    #[test]
    fn leases() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let lease = lease_object("hollow-3", Some("uid-3"), 40, now);
        assert_eq!(lease.metadata.namespace.as_deref(), Some(LEASE_NAMESPACE));
        let owner = &lease.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "hollow-3", "uid-3")
        );
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("hollow-3"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert!(lease_object("n", None, 40, now)
            .metadata
            .owner_references
            .is_none());
    }

    #[test]
    fn addresses() {
        // (node index, InternalIP, base of the fake pod range)
        let cases = [
            (0, "10.250.0.1", "10.200.0.0"),
            (249, "10.250.0.250", "10.200.249.0"),
            (250, "10.250.1.1", "10.200.250.0"),
            (255, "10.250.1.6", "10.200.255.0"),
            (256, "10.250.1.7", "10.201.0.0"),
            (12_799, "10.250.51.50", "10.249.255.0"),
            // The pod ranges skip 10.250, where the node IPs are.
            (12_800, "10.250.51.51", "10.251.0.0"),
            (MAX_NODE_INDEX, "10.250.56.80", "10.255.255.0"),
        ];
        for (index, node, pods) in cases {
            assert_eq!(node_ip(index).to_string(), node, "node {index}");
            let range = fake_pod_range(index);
            assert_eq!(
                Ipv4Addr::from(range.base).to_string(),
                pods,
                "pods of {index}"
            );
            assert_eq!(range.hosts, 254);
        }
    }

    #[test]
    fn pod_ranges() {
        let cases = [
            ("10.244.3.0/24", Some(("10.244.3.0", 254))),
            ("10.244.3.77/24", Some(("10.244.3.0", 254))),
            ("10.244.0.0/16", Some(("10.244.0.0", 65_534))),
            ("10.0.0.0/8", Some(("10.0.0.0", MAX_RANGE_HOSTS))),
            ("10.244.3.0/30", Some(("10.244.3.0", 2))),
            ("10.244.3.0/31", None),
            ("fd00::/64", None),
            ("10.244.3.0", None),
            ("10.244.3.0/x", None),
        ];
        for (cidr, expected) in cases {
            let got =
                PodRange::from_cidr(cidr).map(|r| (Ipv4Addr::from(r.base).to_string(), r.hosts));
            assert_eq!(got, expected.map(|(b, h)| (b.to_string(), h)), "{cidr}");
        }
    }

    #[test]
    fn pod_ips() {
        let mut ips = PodIps::new(PodRange::from_cidr("10.244.3.0/30").unwrap());
        let a = ips.allocate().unwrap();
        let b = ips.allocate().unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 244, 3, 1), Ipv4Addr::new(10, 244, 3, 2))
        );
        assert_eq!(ips.allocate(), None, "a /30 holds two pods");
        ips.release(a);
        assert_eq!(ips.allocate(), Some(a));
        ips.release(Ipv4Addr::new(10, 9, 9, 9)); // outside the range: ignored
        assert_eq!(ips.allocate(), None);

        // Claimed addresses are skipped; a freed one is not handed out again at once.
        let mut ips = PodIps::new(fake_pod_range(1));
        assert!(ips.claim(Ipv4Addr::new(10, 200, 1, 2)));
        assert!(!ips.claim(Ipv4Addr::new(10, 200, 2, 2)));
        let first = ips.allocate().unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 200, 1, 1));
        ips.release(first);
        assert_eq!(ips.allocate(), Some(Ipv4Addr::new(10, 200, 1, 3)));
        let mut seen = std::collections::HashSet::new();
        while let Some(ip) = ips.allocate() {
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(seen.len(), 252, "254 addresses but .2 and .3");
        assert!(seen.contains(&first), "the freed address comes round again");
        assert!(seen.iter().all(|ip| ip.octets()[..3] == [10, 200, 1]));
    }

    fn life(phase: Phase) -> Lifecycle {
        Lifecycle {
            phase,
            deleting: false,
            bound_at_ms: 1_000,
            run_started_ms: None,
            restarts: 0,
            exit: None,
            restart_policy: RestartPolicy::Always,
        }
    }

    #[test]
    fn pod_steps() {
        use RestartPolicy::*;
        let exit = |after_ms, code| Some(Exit { after_ms, code });
        let running = |started, exit: Option<Exit>, policy| Lifecycle {
            run_started_ms: Some(started),
            exit,
            restart_policy: policy,
            ..life(Phase::Running)
        };
        let finish = |phase, exit_code| Step::Finish { phase, exit_code };
        let restart = |exit_code| Step::Restart { exit_code };
        let deleting = |phase| Lifecycle {
            deleting: true,
            ..life(phase)
        };
        let restarted = |restarts, after_ms| Lifecycle {
            restarts,
            ..running(2_000, exit(after_ms, 1), Always)
        };
        // (pod, start delay, now, expected)
        let cases: Vec<(Lifecycle, u64, i64, Step)> = vec![
            (life(Phase::Pending), 0, 1_000, Step::StartRunning),
            (life(Phase::Pending), 500, 1_200, Step::WaitUntil(1_500)),
            (life(Phase::Pending), 500, 1_500, Step::StartRunning),
            (life(Phase::Unknown), 0, 1_000, Step::StartRunning),
            (deleting(Phase::Pending), 0, 1_000, Step::DeleteGracefully),
            (deleting(Phase::Succeeded), 0, 1_000, Step::DeleteGracefully),
            (life(Phase::Succeeded), 0, 9_000, Step::Nothing),
            (life(Phase::Failed), 0, 9_000, Step::Nothing),
            // Running without an exit: nothing to do, ever.
            (running(2_000, None, Always), 0, 1 << 40, Step::Nothing),
            // A Job's pod exits after the job duration.
            (
                running(2_000, exit(5_000, 0), Never),
                0,
                6_999,
                Step::WaitUntil(7_000),
            ),
            (
                running(2_000, exit(5_000, 0), Never),
                0,
                7_000,
                finish(Phase::Succeeded, 0),
            ),
            (
                running(2_000, exit(5_000, 3), Never),
                0,
                7_000,
                finish(Phase::Failed, 3),
            ),
            (
                running(2_000, exit(5_000, 0), OnFailure),
                0,
                7_000,
                finish(Phase::Succeeded, 0),
            ),
            (
                running(2_000, exit(5_000, 3), OnFailure),
                0,
                7_000,
                restart(3),
            ),
            (running(2_000, exit(5_000, 0), Always), 0, 7_000, restart(0)),
            (
                running(2_000, exit(0, 0), Never),
                0,
                2_000,
                finish(Phase::Succeeded, 0),
            ),
            // Without a start time, the binding counts.
            (
                Lifecycle {
                    exit: exit(100, 0),
                    restart_policy: Never,
                    ..life(Phase::Running)
                },
                0,
                1_100,
                finish(Phase::Succeeded, 0),
            ),
            // Restarted containers run at least the crash-loop backoff before they exit again.
            (restarted(1, 100), 0, 2_100, Step::WaitUntil(12_000)),
            (restarted(2, 100), 0, 22_000, restart(1)),
            (restarted(1, 60_000), 0, 2_100, Step::WaitUntil(62_000)),
        ];
        for (pod, delay, now, expected) in cases {
            assert_eq!(
                next_step(&pod, delay, now),
                expected,
                "{pod:?} delay {delay} at {now}"
            );
        }
    }

    #[test]
    fn crash_backoff() {
        let cases = [
            (0, 0),
            (1, 10_000),
            (2, 20_000),
            (3, 40_000),
            (5, 160_000),
            (6, 300_000),
            (1_000, 300_000),
        ];
        for (restarts, ms) in cases {
            assert_eq!(crash_backoff_ms(restarts), ms, "{restarts}");
        }
    }

    fn pod(annotations: &[(&str, &str)], job: bool, restart_policy: Option<&str>) -> Pod {
        let container = |name: &str, image: &str| Container {
            name: name.into(),
            image: Some(image.into()),
            ..Container::default()
        };
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                resource_version: Some("42".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                owner_references: job.then(|| {
                    vec![OwnerReference {
                        kind: "Job".into(),
                        name: "j".into(),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("hollow-1".into()),
                restart_policy: restart_policy.map(Into::into),
                containers: vec![container("main", "busybox")],
                init_containers: Some(vec![
                    container("setup", "alpine"),
                    Container {
                        restart_policy: Some("Always".into()),
                        ..container("proxy", "envoy")
                    },
                ]),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn observing_pods() {
        use RestartPolicy::*;
        let exit = |after_ms, code| Some(Exit { after_ms, code });
        let (run_ms, code) = (RUN_MS_ANNOTATION, EXIT_CODE_ANNOTATION);
        // (pod, expected exit, restart policy, problems) with --job-duration 5000
        let cases = [
            (pod(&[], false, None), None, Always, 0),
            (pod(&[], true, Some("Never")), exit(5_000, 0), Never, 0),
            (
                pod(&[(run_ms, "250")], true, Some("OnFailure")),
                exit(250, 0),
                OnFailure,
                0,
            ),
            (
                pod(&[(run_ms, "250")], false, None),
                exit(250, 0),
                Always,
                0,
            ),
            (
                pod(&[(code, "3")], false, Some("Never")),
                exit(5_000, 3),
                Never,
                0,
            ),
            (
                pod(&[(code, "-1"), (run_ms, "0")], false, Some("Never")),
                exit(0, -1),
                Never,
                0,
            ),
            (pod(&[(run_ms, "soon")], false, None), None, Always, 1),
            (
                pod(&[(run_ms, "-5"), (code, "x")], true, Some("Never")),
                exit(5_000, 0),
                Never,
                2,
            ),
        ];
        for (i, (pod, expected_exit, policy, problems)) in cases.into_iter().enumerate() {
            let seen = observe(&pod, 5_000);
            assert_eq!(seen.exit, expected_exit, "case {i}");
            assert_eq!(seen.restart_policy, policy, "case {i}");
            assert_eq!(
                seen.problems.len(),
                problems,
                "case {i}: {:?}",
                seen.problems
            );
        }

        let mut running = pod(&[], false, None);
        running.metadata.deletion_timestamp = Some(time(9_000));
        running.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.200.1.7".into()),
            start_time: Some(time(3_000)),
            container_statuses: Some(vec![ContainerStatus {
                name: "main".into(),
                restart_count: 2,
                state: Some(running_state(4_000)),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let seen = observe(&running, 5_000);
        assert_eq!(seen.uid, "u-1");
        assert_eq!(seen.resource_version, 42);
        assert_eq!(seen.node_name.as_deref(), Some("hollow-1"));
        assert_eq!(seen.phase, Phase::Running);
        assert!(seen.deleting);
        assert_eq!(
            seen.run_started_ms,
            Some(4_000),
            "the container's start, not the pod's"
        );
        assert_eq!(seen.restarts, 2);
        assert_eq!(seen.pod_ip, Some(Ipv4Addr::new(10, 200, 1, 7)));
        let info = |name: &str, image: &str, sidecar| ContainerInfo {
            name: name.into(),
            image: image.into(),
            sidecar,
        };
        assert_eq!(seen.containers, [info("main", "busybox", false)]);
        assert_eq!(
            seen.init_containers,
            [info("setup", "alpine", false), info("proxy", "envoy", true)]
        );

        let mut unbound = pod(&[], false, None);
        unbound.spec.as_mut().unwrap().node_name = Some(String::new());
        assert_eq!(observe(&unbound, 0).node_name, None);
        assert_eq!(observe(&unbound, 0).phase, Phase::Pending);
    }

    fn write() -> PodWrite {
        let seen = observe(&pod(&[], false, None), 0);
        PodWrite {
            uid: "u-1".into(),
            containers: seen.containers.into(),
            init_containers: seen.init_containers.into(),
            host_ip: Ipv4Addr::new(10, 250, 0, 2),
            pod_ip: Some(Ipv4Addr::new(10, 200, 1, 1)),
            run_started_ms: 2_000_000,
            restarts: 0,
        }
    }

    #[test]
    fn running_pod_status() {
        let status = running_status(&write(), 2_000_000);
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.start_time, Some(time(2_000_000)));
        assert_eq!(status.host_ip.as_deref(), Some("10.250.0.2"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.200.1.1"));
        assert_eq!(status.pod_ips.as_ref().unwrap()[0].ip, "10.200.1.1");
        let conditions: Vec<(String, String)> = status
            .conditions
            .clone()
            .unwrap()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        for type_ in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(
                conditions.contains(&(type_.into(), "True".into())),
                "{type_}"
            );
        }
        let main = &status.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            (
                main.name.as_str(),
                main.image.as_str(),
                main.image_id.as_str()
            ),
            ("main", "busybox", "hollow://busybox")
        );
        assert_eq!(main.container_id.as_deref(), Some("hollow://u-1-main"));
        assert!(main.ready && main.started == Some(true) && main.restart_count == 0);
        assert!(main.state.as_ref().unwrap().running.is_some());
        let init = status.init_container_statuses.as_ref().unwrap();
        let done = init[0].state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(
            (done.exit_code, done.reason.as_deref()),
            (0, Some("Completed"))
        );
        assert!(
            init[1].state.as_ref().unwrap().running.is_some(),
            "sidecars keep running"
        );

        // What goes over the wire: Kubernetes times, unset fields left out.
        let patch = serde_json::to_value(&status).unwrap();
        assert_eq!(patch["startTime"], "1970-01-01T00:33:20Z");
        assert!(patch.get("reason").is_none());
    }

    #[test]
    fn finished_and_restarted_pod_status() {
        let cases = [
            (Phase::Succeeded, 0, "Completed"),
            (Phase::Failed, 3, "Error"),
        ];
        for (phase, code, reason) in cases {
            let status = finished_status(&write(), phase, code, 2_005_000);
            assert_eq!(status.phase.as_deref(), Some(phase.as_str()));
            let conditions = status.conditions.unwrap();
            let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_deref()),
                ("False", Some("PodCompleted"))
            );
            let main = &status.container_statuses.unwrap()[0];
            assert!(!main.ready);
            let done = main.state.as_ref().unwrap().terminated.as_ref().unwrap();
            assert_eq!(
                (done.exit_code, done.reason.as_deref()),
                (code, Some(reason))
            );
            assert_eq!(done.started_at, Some(time(2_000_000)));
            assert_eq!(done.finished_at, Some(time(2_005_000)));
            assert!(status.pod_ip.is_none(), "the pod IP is left as it is");
        }

        let restarted = restarted_status(
            &PodWrite {
                restarts: 2,
                ..write()
            },
            1,
            2_005_000,
        );
        assert!(restarted.phase.is_none(), "stays Running");
        let main = &restarted.container_statuses.unwrap()[0];
        assert_eq!(main.restart_count, 3);
        assert!(main.ready);
        let running = main.state.as_ref().unwrap().running.as_ref().unwrap();
        assert_eq!(running.started_at, Some(time(2_005_000)));
        let last = main
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    }

    #[test]
    fn retry_classes() {
        let api = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::default()
            }))
        };
        let cases = [
            (404, "gone"),
            (409, "retry"),
            (429, "retry"),
            (500, "retry"),
            (503, "retry"),
            (400, "no"),
            (403, "no"),
            (422, "no"),
        ];
        for (code, expected) in cases {
            let got = match classify(&api(code)) {
                Retry::Yes => "retry",
                Retry::Gone => "gone",
                Retry::No => "no",
            };
            assert_eq!(got, expected, "{code}");
        }
    }
}
