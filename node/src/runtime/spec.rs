//! The OCI runtime spec of one container: what runc is told to run.
//!
//! There is no pause container. A pod's containers share its network namespace by joining the
//! persistent namespace the agent made for the pod (`/run/netns/<pod>`), so they share
//! `localhost`; each gets its own mount, PID, IPC and UTS namespaces (the UTS hostname is the
//! pod's name in all of them). The cgroup path puts every container of a pod under one pod
//! cgroup, below its QoS class, as kubelet's cgroupfs driver does
//! (`/kubepods/burstable/pod<uid>/<container id>`), so programs can attach per pod.
//!
//! The defaults (mounts, capabilities, masked paths) are containerd's own for Linux.

use std::path::PathBuf;

use serde_json::{json, Value};

/// The capabilities a container gets unless its securityContext adds or drops some
/// (containerd's and Docker's default set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The type URL containerd stores a runtime spec under (the value is the spec's JSON).
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A bind mount into the container (a volume, `/etc/hosts`, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

/// cgroup limits from the container's resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `cpu.shares` from the CPU request (kubelet's formula: millicores × 1024 / 1000, at
    /// least 2).
    pub cpu_shares: Option<u64>,
    /// `cpu.cfs_quota_us` from the CPU limit over a 100 ms period.
    pub cpu_quota: Option<i64>,
    /// Bytes, from the memory limit.
    pub memory: Option<i64>,
}

/// The CFS period kubelet uses.
pub const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// Limits from a CPU request and limit in millicores and a memory limit in bytes.
    pub fn from_resources(
        cpu_request_millis: Option<i64>,
        cpu_limit_millis: Option<i64>,
        memory_limit: Option<i64>,
    ) -> Limits {
        // Like kubelet: with a limit but no request, the request is the limit; no request at
        // all is the minimum of 2 shares.
        let request = cpu_request_millis.or(cpu_limit_millis);
        Limits {
            cpu_shares: Some(request.map_or(2, |m| ((m.max(0) as u64) * 1024 / 1000).max(2))),
            cpu_quota: cpu_limit_millis
                .filter(|m| *m > 0)
                .map(|m| (m * CPU_PERIOD_US as i64 / 1000).max(1000)),
            memory: memory_limit.filter(|m| *m > 0),
        }
    }
}

/// Everything that decides one container's runtime spec.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    /// The command line: the image's entrypoint and cmd, overridden by `command`/`args`.
    pub args: Vec<String>,
    /// `KEY=value` pairs, image environment first, then the container's.
    pub env: Vec<String>,
    /// The working directory (absolute); `/` when neither the image nor the pod sets one.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The pod's name.
    pub hostname: String,
    /// The pod's persistent network namespace.
    pub netns: PathBuf,
    /// `/kubepods/<qos>/pod<uid>/<container id>`.
    pub cgroups_path: String,
    pub mounts: Vec<BindMount>,
    pub read_only_rootfs: bool,
    pub limits: Limits,
    /// Added and dropped capabilities, `CAP_`-prefixed or not (`ALL` drops everything).
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub privileged: bool,
    pub no_new_privileges: bool,
    pub terminal: bool,
    /// Extra OCI annotations.
    pub annotations: Vec<(String, String)>,
}

/// The capability set after the securityContext's `add` and `drop`.
pub fn capabilities(add: &[String], drop: &[String], privileged: bool) -> Vec<String> {
    let norm = |c: &String| {
        let c = c.trim().to_ascii_uppercase();
        if c.starts_with("CAP_") || c == "ALL" {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    if privileged {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    let drop: Vec<String> = drop.iter().map(norm).collect();
    let add: Vec<String> = add.iter().map(norm).collect();
    let mut caps: Vec<String> = if drop.iter().any(|c| c == "ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    if add.iter().any(|c| c == "ALL") {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    for c in add {
        if !caps.contains(&c) && ALL_CAPABILITIES.contains(&c.as_str()) {
            caps.push(c);
        }
    }
    caps
}

/// Every capability the kernel knows (up to CAP_CHECKPOINT_RESTORE, Linux 5.9).
const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The OCI runtime spec (version 1.0.2) as JSON.
pub fn runtime_spec(c: &ContainerSpec) -> Value {
    let caps = capabilities(&c.add_capabilities, &c.drop_capabilities, c.privileged);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &c.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.read_only { "ro" } else { "rw" });
        mounts.push(json!({
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": options,
        }));
    }
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
    });
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = c.limits.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = c.limits.cpu_quota {
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(memory) = c.limits.memory {
        resources["memory"] = json!({"limit": memory});
    }
    let annotations: serde_json::Map<String, Value> = c
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.terminal,
            "user": {
                "uid": c.uid,
                "gid": c.gid,
                "additionalGids": c.additional_gids,
            },
            "args": c.args,
            "env": c.env,
            "cwd": if c.cwd.is_empty() { "/" } else { c.cwd.as_str() },
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": c.no_new_privileges,
        },
        "root": {"path": "rootfs", "readonly": c.read_only_rootfs},
        "hostname": c.hostname,
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "cgroupsPath": c.cgroups_path,
            "resources": resources,
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": c.netns},
            ],
            "maskedPaths": if c.privileged { json!([]) } else { json!([
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi",
            ]) },
            "readonlyPaths": if c.privileged { json!([]) } else { json!([
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ]) },
        },
    });
    if c.privileged {
        // Privileged containers see the host's devices and may write /sys.
        spec["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            for m in mounts.iter_mut() {
                if m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup" {
                    m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
                }
            }
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cpu_and_memory_become_cgroup_limits_like_kubelet() {
        // (request m, limit m, memory) -> (shares, quota, memory)
        let cases = [
            (None, None, None, Some(2), None, None),
            (Some(100), None, None, Some(102), None, None),
            (Some(250), Some(500), None, Some(256), Some(50_000), None),
            (
                None,
                Some(1000),
                Some(64 << 20),
                Some(1024),
                Some(100_000),
                Some(64 << 20),
            ),
            // Tiny limits keep runc's 1 ms minimum quota.
            (Some(1), Some(1), None, Some(2), Some(1000), None),
        ];
        for (request, limit, memory, shares, quota, mem) in cases {
            let l = Limits::from_resources(request, limit, memory);
            assert_eq!(
                (l.cpu_shares, l.cpu_quota, l.memory),
                (shares, quota, mem),
                "{request:?} {limit:?} {memory:?}"
            );
        }
    }

    #[test]
    fn capabilities_follow_add_and_drop() {
        let default = capabilities(&[], &[], false);
        assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
        let c = capabilities(
            &strings(&["NET_ADMIN"]),
            &strings(&["KILL", "CAP_CHOWN"]),
            false,
        );
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_KILL".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()));
        let c = capabilities(&strings(&["NET_BIND_SERVICE"]), &strings(&["ALL"]), false);
        assert_eq!(c, strings(&["CAP_NET_BIND_SERVICE"]));
        // Unknown names are ignored rather than handed to runc, which would refuse the spec.
        let c = capabilities(&strings(&["NOT_A_CAP"]), &[], false);
        assert_eq!(c.len(), DEFAULT_CAPABILITIES.len());
        assert_eq!(capabilities(&[], &[], true).len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn the_spec_joins_the_pod_network_and_carries_the_process() {
        let spec = runtime_spec(&ContainerSpec {
            args: strings(&["sh", "-c", "echo hi"]),
            env: strings(&["PATH=/bin", "A=b"]),
            cwd: "/work".into(),
            uid: 1000,
            gid: 1000,
            hostname: "web-0".into(),
            netns: "/run/netns/pod-x".into(),
            cgroups_path: "/kubepods/burstable/podx/c1".into(),
            mounts: vec![BindMount {
                source: "/var/lib/x/etc-hosts".into(),
                destination: "/etc/hosts".into(),
                read_only: false,
            }],
            read_only_rootfs: true,
            limits: Limits::from_resources(Some(100), Some(200), Some(1 << 30)),
            ..ContainerSpec::default()
        });
        assert_eq!(spec["process"]["args"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(spec["process"]["cwd"], "/work");
        assert_eq!(spec["process"]["user"]["uid"], 1000);
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["hostname"], "web-0");
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.contains(&json!({"type": "network", "path": "/run/netns/pod-x"})));
        assert_eq!(spec["linux"]["cgroupsPath"], "/kubepods/burstable/podx/c1");
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 1 << 30);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 20_000);
        assert_eq!(spec["linux"]["resources"]["cpu"]["shares"], 102);
        let hosts = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .unwrap();
        assert_eq!(hosts["options"], json!(["rbind", "rprivate", "rw"]));
        assert_eq!(spec["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
    }
}
