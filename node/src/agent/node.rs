//! The Node object: registration with the machine's real capacity and addresses, the Lease
//! heartbeat, and the status conditions (Ready and the pressures) the agent reports.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

/// The version the agent reports as `kubeletVersion` (the Kubernetes API it follows).
pub const KUBELET_VERSION: &str = concat!("v1.33.0-skiff-", env!("CARGO_PKG_VERSION"));

/// What the machine has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub ephemeral_bytes: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` or `MemAvailable` from /proc/meminfo, in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// (total, available) bytes of the filesystem holding `path`.
pub fn filesystem(path: &Path) -> Option<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs on a valid C string into a zeroed struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

impl Machine {
    /// Reads the machine: CPUs, memory, the root directory's filesystem, kernel and OS.
    pub fn read(root: &Path) -> Machine {
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| "Linux".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: meminfo("MemTotal").unwrap_or(0),
            ephemeral_bytes: filesystem(root).map_or(0, |(total, _)| total),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// The Node object the agent registers (labels and taints; the status comes separately).
pub fn node_object(name: &str, labels: &BTreeMap<String, String>, taints: &[Taint]) -> Node {
    let mut all = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
    ]);
    all.extend(labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(all),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then(|| taints.to_vec()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The pressures and readiness the agent observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub memory_pressure: bool,
    pub disk_pressure: bool,
    pub pid_pressure: bool,
    /// Why the node is not ready, when it is not (containerd unreachable, no pod network).
    pub not_ready: Option<String>,
    pub network_ready: bool,
}

/// A threshold: an absolute quantity or a percentage of the total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    Bytes(u64),
    Percent(u64),
}

impl Threshold {
    /// Whether `available` of `total` is below the threshold.
    fn below(self, available: u64, total: u64) -> bool {
        match self {
            Threshold::Bytes(b) => available < b,
            Threshold::Percent(p) => {
                total > 0 && available.saturating_mul(100) < p.saturating_mul(total)
            }
        }
    }
}

/// Kubelet's `--eviction-hard` signals that decide the pressure conditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub memory_available: Option<Threshold>,
    pub nodefs_available: Option<Threshold>,
    pub pid_available: Option<Threshold>,
}

impl Thresholds {
    /// Parses `memory.available<100Mi,nodefs.available<10%,pid.available<10%`.
    pub fn parse(s: &str) -> Result<Thresholds, String> {
        let mut out = Thresholds::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part.split_once('<').ok_or_else(|| {
                format!("{part:?}: want signal<quantity, like nodefs.available<10%")
            })?;
            let threshold = match value.strip_suffix('%') {
                Some(p) => Threshold::Percent(
                    p.parse::<u64>()
                        .ok()
                        .filter(|p| *p <= 100)
                        .ok_or_else(|| format!("{part:?}: the percentage must be 0-100"))?,
                ),
                None => Threshold::Bytes(
                    super::quantity::bytes(value)
                        .map(|b| b as u64)
                        .ok_or_else(|| format!("{part:?}: {value:?} is not a quantity"))?,
                ),
            };
            match signal {
                "memory.available" => out.memory_available = Some(threshold),
                "nodefs.available" => out.nodefs_available = Some(threshold),
                "pid.available" => out.pid_available = Some(threshold),
                other => {
                    return Err(format!(
                    "unknown signal {other:?} (memory.available, nodefs.available, pid.available)"
                ))
                }
            }
        }
        Ok(out)
    }
}

impl Health {
    /// Reads the pressures against `thresholds`.
    pub fn read(
        root: &Path,
        thresholds: &Thresholds,
        not_ready: Option<String>,
        network_ready: bool,
    ) -> Health {
        let memory_pressure = thresholds.memory_available.is_some_and(|t| {
            match (meminfo("MemAvailable"), meminfo("MemTotal")) {
                (Some(a), Some(total)) => t.below(a, total),
                _ => false,
            }
        });
        let disk_pressure = thresholds
            .nodefs_available
            .is_some_and(|t| filesystem(root).is_some_and(|(total, avail)| t.below(avail, total)));
        let pid_max: u64 = read_trimmed("/proc/sys/kernel/pid_max")
            .parse()
            .unwrap_or(0);
        let pids = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        let pid_pressure = thresholds
            .pid_available
            .is_some_and(|t| pid_max > 0 && t.below(pid_max.saturating_sub(pids), pid_max));
        Health {
            memory_pressure,
            disk_pressure,
            pid_pressure,
            not_ready,
            network_ready,
        }
    }
}

/// The status the agent reports. Condition transition times come from `old` when a
/// condition's status did not change.
#[allow(clippy::too_many_arguments)]
pub fn node_status(
    machine: &Machine,
    health: &Health,
    max_pods: u32,
    node_ip: IpAddr,
    hostname: &str,
    port: u16,
    runtime_version: &str,
    old: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(machine.cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", machine.memory_bytes / 1024)),
        ),
        ("pods".to_string(), Quantity(max_pods.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", machine.ephemeral_bytes / 1024)),
        ),
    ]);
    let old_conditions: BTreeMap<String, NodeCondition> = old
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.type_.clone(), c))
        .collect();
    let condition = |type_: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" };
        let since = old_conditions
            .get(type_)
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        NodeCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since),
        }
    };
    let (ready_reason, ready_message) = match &health.not_ready {
        None => (
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        ),
        Some(why) => ("KubeletNotReady", why.clone()),
    };
    let conditions = vec![
        condition(
            "MemoryPressure",
            health.memory_pressure,
            if health.memory_pressure {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            if health.memory_pressure {
                "kubelet has insufficient memory available"
            } else {
                "kubelet has sufficient memory available"
            },
        ),
        condition(
            "DiskPressure",
            health.disk_pressure,
            if health.disk_pressure {
                "KubeletHasDiskPressure"
            } else {
                "KubeletHasNoDiskPressure"
            },
            if health.disk_pressure {
                "kubelet has disk pressure"
            } else {
                "kubelet has no disk pressure"
            },
        ),
        condition(
            "PIDPressure",
            health.pid_pressure,
            if health.pid_pressure {
                "KubeletHasInsufficientPID"
            } else {
                "KubeletHasSufficientPID"
            },
            if health.pid_pressure {
                "kubelet has insufficient PID available"
            } else {
                "kubelet has sufficient PID available"
            },
        ),
        condition(
            "NetworkUnavailable",
            !health.network_ready,
            if health.network_ready {
                "RouteCreated"
            } else {
                "NoRouteCreated"
            },
            if health.network_ready {
                "skiff-node configured the pod network"
            } else {
                "the pod network is not configured yet"
            },
        ),
        condition(
            "Ready",
            health.not_ready.is_none(),
            ready_reason,
            &ready_message,
        ),
    ];
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: hostname.to_string(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: port.into() }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            operating_system: "linux".into(),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: KUBELET_VERSION.into(),
            container_runtime_version: runtime_version.to_string(),
            kernel_version: machine.kernel.clone(),
            os_image: machine.os_image.clone(),
            machine_id: machine.machine_id.clone(),
            system_uuid: machine.machine_id.clone(),
            boot_id: machine.boot_id.clone(),
            swap: None,
        }),
        ..NodeStatus::default()
    }
}

/// The node's address: the source address of the default route (a UDP "connect" sends
/// nothing), or loopback on a machine without one.
pub fn detect_node_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cpus: 2,
            memory_bytes: 4 << 30,
            ephemeral_bytes: 100 << 30,
            kernel: "6.18".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        }
    }

    #[test]
    fn thresholds_parse_like_kubelet() {
        let t = Thresholds::parse("memory.available<100Mi,nodefs.available<10%").unwrap();
        assert_eq!(t.memory_available, Some(Threshold::Bytes(100 << 20)));
        assert_eq!(t.nodefs_available, Some(Threshold::Percent(10)));
        assert_eq!(t.pid_available, None);
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        assert!(Thresholds::parse("memory.available>1").is_err());
        assert!(Thresholds::parse("nodefs.available<101%").is_err());
        assert!(Thresholds::parse("cpu.available<1")
            .unwrap_err()
            .contains("unknown signal"));
        assert!(Threshold::Percent(10).below(9, 100));
        assert!(!Threshold::Percent(10).below(10, 100));
        assert!(Threshold::Bytes(5).below(4, 0));
    }

    #[test]
    fn status_reports_capacity_and_keeps_transition_times() {
        let healthy = Health {
            memory_pressure: false,
            disk_pressure: false,
            pid_pressure: false,
            not_ready: None,
            network_ready: true,
        };
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_100).unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let first = node_status(
            &machine(),
            &healthy,
            110,
            ip,
            "n1",
            10250,
            "containerd://1.6",
            None,
            t0,
        );
        let capacity = first.capacity.as_ref().unwrap();
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(capacity["memory"].0, "4194304Ki");
        assert_eq!(capacity["pods"].0, "110");
        let ready = |s: &NodeStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&first).status, "True");
        let later = node_status(
            &machine(),
            &healthy,
            110,
            ip,
            "n1",
            10250,
            "containerd://1.6",
            Some(&first),
            t1,
        );
        assert_eq!(ready(&later).last_transition_time, Some(Time(t0)));
        assert_eq!(ready(&later).last_heartbeat_time, Some(Time(t1)));
        let sick = Health {
            not_ready: Some("container runtime is down".into()),
            ..healthy
        };
        let down = node_status(
            &machine(),
            &sick,
            110,
            ip,
            "n1",
            10250,
            "containerd://1.6",
            Some(&later),
            t1,
        );
        assert_eq!(ready(&down).status, "False");
        assert_eq!(
            ready(&down).message.as_deref(),
            Some("container runtime is down")
        );
        assert_eq!(ready(&down).last_transition_time, Some(Time(t1)));
    }
}
