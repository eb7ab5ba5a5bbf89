//! Quantities, and what a pod asks of a node: resource requests and host ports, computed as
//! kube-scheduler does (`resourcehelper.PodRequests`, `schedutil.GetHostPorts`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The CPU a container without a CPU request counts as, for scoring only (upstream's
/// `DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// The memory a container without a memory request counts as, for scoring only (200 MiB).
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of the resources a node offers and pods request. CPU is in millicores, the rest in
/// units (bytes for memory and storage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended resources and hugepages by name. Few, so a vector.
    pub scalar: Vec<(String, i64)>,
}

impl Resources {
    /// Reads a `requests`/`allocatable` list; `pods` and unknown names are left out.
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Resources {
        let mut out = Resources::default();
        for (name, quantity) in list.into_iter().flatten() {
            match name.as_str() {
                "cpu" => out.milli_cpu = milli_value(quantity),
                "memory" => out.memory = value(quantity),
                "ephemeral-storage" => out.ephemeral_storage = value(quantity),
                other if is_scalar(other) => out.scalar.push((other.to_string(), value(quantity))),
                _ => {}
            }
        }
        out
    }

    /// The amount of the scalar resource `name` (0 when absent).
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }

    fn scalar_mut(&mut self, name: &str) -> &mut i64 {
        let i = match self.scalar.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.scalar.push((name.to_string(), 0));
                self.scalar.len() - 1
            }
        };
        &mut self.scalar[i].1
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let mine = self.scalar_mut(name);
            *mine = mine.saturating_add(*v);
        }
    }

    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let mine = self.scalar_mut(name);
            *mine = mine.saturating_sub(*v);
        }
        self.scalar.retain(|(_, v)| *v != 0);
    }

    /// Each resource becomes the larger of the two.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (name, v) in &other.scalar {
            let mine = self.scalar_mut(name);
            *mine = (*mine).max(*v);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.iter().all(|(_, v)| *v == 0)
    }
}

/// Whether a resource name is counted as a scalar (extended resources, hugepages, and
/// `kubernetes.io/`-prefixed native ones); `pods` and `storage` are not.
fn is_scalar(name: &str) -> bool {
    name.starts_with("hugepages-") || name.starts_with("attachable-volumes-") || name.contains('/')
}

/// What a pod requests: the real requests (for fitting), and CPU and memory with the
/// non-zero defaults for containers that request none (for scoring).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    pub resources: Resources,
    pub non_zero_cpu: i64,
    pub non_zero_memory: i64,
}

impl Requests {
    fn of_container(container: &Container) -> Requests {
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        let resources = Resources::from_list(requests);
        let has = |name: &str| requests.is_some_and(|r| r.contains_key(name));
        Requests {
            non_zero_cpu: if has("cpu") {
                resources.milli_cpu
            } else {
                DEFAULT_MILLI_CPU
            },
            non_zero_memory: if has("memory") {
                resources.memory
            } else {
                DEFAULT_MEMORY
            },
            resources,
        }
    }

    fn add(&mut self, other: &Requests) {
        self.resources.add(&other.resources);
        self.non_zero_cpu = self.non_zero_cpu.saturating_add(other.non_zero_cpu);
        self.non_zero_memory = self.non_zero_memory.saturating_add(other.non_zero_memory);
    }

    fn max_with(&mut self, other: &Requests) {
        self.resources.max_with(&other.resources);
        self.non_zero_cpu = self.non_zero_cpu.max(other.non_zero_cpu);
        self.non_zero_memory = self.non_zero_memory.max(other.non_zero_memory);
    }
}

/// A pod's effective requests: the larger of its containers' sum and what its init containers
/// need at their peak (sidecars — init containers with `restartPolicy: Always` — keep running
/// and add to both), plus the pod overhead.
pub fn pod_requests(spec: &PodSpec) -> Requests {
    let mut total = Requests::default();
    for container in &spec.containers {
        total.add(&Requests::of_container(container));
    }
    let mut sidecars = Requests::default();
    let mut init_peak = Requests::default();
    for container in spec.init_containers.iter().flatten() {
        let mut need = Requests::of_container(container);
        if container.restart_policy.as_deref() == Some("Always") {
            total.add(&need);
            sidecars.add(&need);
            need = sidecars.clone();
        } else {
            need.add(&sidecars);
        }
        init_peak.max_with(&need);
    }
    total.max_with(&init_peak);
    if let Some(overhead) = &spec.overhead {
        let overhead = Resources::from_list(Some(overhead));
        total.non_zero_cpu = total.non_zero_cpu.saturating_add(overhead.milli_cpu);
        total.non_zero_memory = total.non_zero_memory.saturating_add(overhead.memory);
        total.resources.add(&overhead);
    }
    total
}

/// A host port a pod takes on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// `0.0.0.0` when unset.
    pub ip: String,
    /// `TCP` when unset.
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Whether this port, wanted by a pod, collides with `taken` (upstream's
    /// `HostPortInfo.CheckConflict`): the same protocol and port, and either address is the
    /// wildcard or both are the same.
    pub fn conflicts_with(&self, taken: &HostPort) -> bool {
        self.port == taken.port
            && self.protocol == taken.protocol
            && (self.ip == taken.ip || self.ip == WILDCARD || taken.ip == WILDCARD)
    }
}

const WILDCARD: &str = "0.0.0.0";

/// The host ports of a pod's containers (and sidecars), those with `hostPort` > 0.
pub fn host_ports(spec: &PodSpec) -> Vec<HostPort> {
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|port| *port > 0)?;
            Some(HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| WILDCARD.into()),
                protocol: p
                    .protocol
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

/// A quantity in millis, rounded up (kube's `MilliValue`); 0 when it does not parse.
pub fn milli_value(q: &Quantity) -> i64 {
    nanos(&q.0).map_or(0, |n| ceil_div(n, 1_000_000))
}

/// A quantity in units, rounded up (kube's `Value`); 0 when it does not parse.
pub fn value(q: &Quantity) -> i64 {
    nanos(&q.0).map_or(0, |n| ceil_div(n, 1_000_000_000))
}

fn ceil_div(n: i128, d: i128) -> i64 {
    let q = n.div_euclid(d) + i128::from(n.rem_euclid(d) != 0);
    i64::try_from(q).unwrap_or(if q < 0 { i64::MIN } else { i64::MAX })
}

/// Parses kube's quantity grammar (`<number><suffix>`: binary `Ki`…`Ei`, decimal `n`…`E`, or an
/// exponent `e3`) into nano-units, rounding up and saturating; `None` when it is not a quantity.
fn nanos(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let split = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(split);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let (exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        other => {
            let exponent = other.strip_prefix(['e', 'E'])?;
            (exponent.parse::<i64>().ok()?, 0)
        }
    };
    let mut v: i128 = 0;
    for digit in whole.bytes().chain(frac.bytes()) {
        v = v
            .saturating_mul(10)
            .saturating_add(i128::from(digit - b'0'));
    }
    v = v.saturating_mul(1i128 << exp2);
    // value = digits · 10^(exp10 − decimals) · 2^exp2, in units of 10^-9.
    let decimals = i64::try_from(frac.len()).ok()?;
    let mut scale = exp10.saturating_sub(decimals).saturating_add(9);
    while scale > 0 && v != 0 && v != i128::MAX {
        v = v.saturating_mul(10);
        scale -= 1;
    }
    if scale < -40 {
        // Anything this small rounds up to one nano-unit.
        v = i128::from(v != 0);
        scale = 0;
    }
    while scale < 0 && v != 0 {
        v = v / 10 + i128::from(v % 10 != 0);
        scale += 1;
    }
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kube() {
        let q = |s: &str| Quantity(s.into());
        assert_eq!(milli_value(&q("1")), 1000);
        assert_eq!(milli_value(&q("250m")), 250);
        assert_eq!(milli_value(&q("0.5")), 500);
        assert_eq!(milli_value(&q("0.1m")), 1, "rounded up");
        assert_eq!(value(&q("1Gi")), 1 << 30);
        assert_eq!(value(&q("1.5Ki")), 1536);
        assert_eq!(value(&q("2M")), 2_000_000);
        assert_eq!(value(&q("1e3")), 1000);
        assert_eq!(value(&q("110")), 110);
        assert_eq!(value(&q("junk")), 0);
        assert_eq!(value(&q("9Ei")), i64::MAX, "saturates");
    }
}
