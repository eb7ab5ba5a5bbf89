//! The filters, in upstream's order: each a small pure function of the pod, one node, and the
//! cycle's precomputed state, answering `Ok` or why the node cannot take the pod. The reason
//! strings are upstream's, since users (and tests) read them in `kubectl describe pod`.

use std::borrow::Cow;

use super::affinity::AffinityFilter;
use super::cache::NodeInfo;
use super::framework::PodFacts;
use super::selectors::{self, tolerates_parts};
use super::spread::SpreadFilter;

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// Why a node cannot take the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Cow<'static, str>,
    /// Further reasons from the same filter (several insufficient resources).
    pub more: Vec<Cow<'static, str>>,
    /// Evicting lower-priority pods would not help (upstream's `UnschedulableAndUnresolvable`).
    pub unresolvable: bool,
}

impl Rejection {
    pub fn unresolvable(reason: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection {
            reason: reason.into(),
            more: Vec::new(),
            unresolvable: true,
        }
    }

    pub fn resolvable(reason: impl Into<Cow<'static, str>>) -> Rejection {
        Rejection {
            unresolvable: false,
            ..Rejection::unresolvable(reason)
        }
    }

    /// Every reason, first to last.
    pub fn reasons(&self) -> impl Iterator<Item = &Cow<'static, str>> {
        std::iter::once(&self.reason).chain(&self.more)
    }
}

pub type Verdict = Result<(), Rejection>;

/// What the filters share within one scheduling cycle (computed by the pre-filters).
#[derive(Debug, Default)]
pub struct CycleState<'a> {
    pub affinity: Option<AffinityFilter<'a>>,
    pub spread: Option<SpreadFilter<'a>>,
}

pub type Filter = fn(&PodFacts<'_>, &NodeInfo, &CycleState<'_>) -> Verdict;

/// The filters in the order they run; a node's reasons are those of the first that rejects it.
pub const FILTERS: [(&str, Filter); 8] = [
    ("NodeUnschedulable", node_unschedulable),
    ("NodeName", node_name),
    ("TaintToleration", taint_toleration),
    ("NodeAffinity", node_affinity),
    ("NodePorts", node_ports),
    ("NodeResourcesFit", resources_fit),
    ("PodTopologySpread", topology_spread),
    ("InterPodAffinity", inter_pod_affinity),
];

/// Runs every filter on one node.
pub fn run_all(facts: &PodFacts<'_>, node: &NodeInfo, state: &CycleState<'_>) -> Verdict {
    FILTERS
        .iter()
        .try_for_each(|(_, filter)| filter(facts, node, state))
}

/// A cordoned node takes only pods tolerating `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn node_unschedulable(facts: &PodFacts<'_>, node: &NodeInfo, _: &CycleState<'_>) -> Verdict {
    let tolerated = || {
        facts
            .tolerations
            .iter()
            .any(|t| tolerates_parts(t, "node.kubernetes.io/unschedulable", "", "NoSchedule"))
    };
    if node.unschedulable() && !tolerated() {
        return Err(Rejection::unresolvable(REASON_UNSCHEDULABLE));
    }
    Ok(())
}

/// A pod naming a node fits only there.
pub fn node_name(facts: &PodFacts<'_>, node: &NodeInfo, _: &CycleState<'_>) -> Verdict {
    match facts.node_name {
        Some(name) if !name.is_empty() && name != node.name => {
            Err(Rejection::unresolvable(REASON_NODE_NAME))
        }
        _ => Ok(()),
    }
}

/// Every `NoSchedule` and `NoExecute` taint must be tolerated (the not-ready and unreachable
/// taints implied by the node's `Ready` condition included).
pub fn taint_toleration(facts: &PodFacts<'_>, node: &NodeInfo, _: &CycleState<'_>) -> Verdict {
    let untolerated = selectors::untolerated(&node.taints, facts.tolerations, |effect| {
        effect == "NoSchedule" || effect == "NoExecute"
    });
    match untolerated {
        Some(taint) => Err(Rejection::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

/// `nodeSelector` and required node affinity.
pub fn node_affinity(facts: &PodFacts<'_>, node: &NodeInfo, _: &CycleState<'_>) -> Verdict {
    if facts.node_affinity_matches(node) {
        Ok(())
    } else {
        Err(Rejection::unresolvable(REASON_NODE_AFFINITY))
    }
}

/// The pod's host ports must be free on the node.
pub fn node_ports(facts: &PodFacts<'_>, node: &NodeInfo, _: &CycleState<'_>) -> Verdict {
    let taken = facts
        .host_ports
        .iter()
        .any(|want| node.host_ports.iter().any(|t| want.conflicts_with(t)));
    if taken {
        Err(Rejection::resolvable(REASON_NODE_PORTS))
    } else {
        Ok(())
    }
}

/// The pod's requests must fit in what the node's pods leave of its allocatable. Asking for
/// more than the node has at all is unresolvable.
pub fn resources_fit(facts: &PodFacts<'_>, node: &NodeInfo, _: &CycleState<'_>) -> Verdict {
    let mut rejection: Option<Rejection> = None;
    let mut reject = |reason: Cow<'static, str>, beyond_capacity: bool| match &mut rejection {
        None => {
            rejection = Some(Rejection {
                reason,
                more: Vec::new(),
                unresolvable: beyond_capacity,
            })
        }
        Some(r) => {
            r.more.push(reason);
            r.unresolvable |= beyond_capacity;
        }
    };
    let pods = i64::try_from(node.pods.len()).unwrap_or(i64::MAX);
    if pods + 1 > node.allowed_pods {
        reject(REASON_TOO_MANY_PODS.into(), false);
    }
    let want = &facts.requests.resources;
    if !want.is_zero() {
        let (have, used) = (&node.allocatable, &node.requested);
        let short = |want: i64, have: i64, used: i64| want > 0 && want > have.saturating_sub(used);
        if short(want.milli_cpu, have.milli_cpu, used.milli_cpu) {
            reject("Insufficient cpu".into(), want.milli_cpu > have.milli_cpu);
        }
        if short(want.memory, have.memory, used.memory) {
            reject("Insufficient memory".into(), want.memory > have.memory);
        }
        let storage = (want.ephemeral_storage, have.ephemeral_storage);
        if short(storage.0, storage.1, used.ephemeral_storage) {
            reject(
                "Insufficient ephemeral-storage".into(),
                storage.0 > storage.1,
            );
        }
        for (name, amount) in &want.scalar {
            let (have, used) = (have.scalar(name), used.scalar(name));
            if short(*amount, have, used) {
                reject(format!("Insufficient {name}").into(), *amount > have);
            }
        }
    }
    rejection.map_or(Ok(()), Err)
}

/// `DoNotSchedule` topology spread constraints.
pub fn topology_spread(facts: &PodFacts<'_>, node: &NodeInfo, state: &CycleState<'_>) -> Verdict {
    state
        .spread
        .as_ref()
        .map_or(Ok(()), |s| s.check(facts, node))
}

/// Required pod affinity and anti-affinity, the pod's and the placed pods'.
pub fn inter_pod_affinity(
    facts: &PodFacts<'_>,
    node: &NodeInfo,
    state: &CycleState<'_>,
) -> Verdict {
    state
        .affinity
        .as_ref()
        .map_or(Ok(()), |a| a.check(facts, node))
}
