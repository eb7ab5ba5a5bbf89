//! One scheduling decision, as upstream's `schedulePod`: pre-filter (the counts affinity and
//! spreading need), filter nodes until enough feasible ones are found, score those, pick the
//! best (a random one among equals). Pure: it reads the cache and returns a [`Decision`]; the
//! caller assumes, binds and reports.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use k8s_openapi::api::core::v1::{
    Namespace, NodeSelectorTerm, Pod, PreferredSchedulingTerm, Toleration,
};

use super::affinity::{AffinityFilter, Namespaces, PodAffinityTerms};
use super::cache::{spreading_owner, Cache, NodeId, NodeInfo};
use super::filters::{self, CycleState, Rejection};
use super::resources::{self, HostPort, Requests};
use super::scores;
use super::selectors::{labels_of, node_matches_required, Labels, NO_LABELS};
use super::spread::{SpreadConstraint, SpreadFilter};

/// Below this many nodes every node is evaluated (upstream's `minFeasibleNodesToFind`).
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// The adaptive percentage never goes below this.
const MIN_FEASIBLE_NODES_PERCENTAGE: usize = 5;

/// The reason nodes left out by `matchFields` on `metadata.name` are counted under.
pub const REASON_NOT_NAMED: &str = "node(s) didn't satisfy plugin(s) [NodeAffinity]";

/// Everything about the pod the filters and scores read, computed once per cycle.
#[derive(Debug)]
pub struct PodFacts<'p> {
    pub pod: &'p Pod,
    pub namespace: &'p str,
    pub labels: &'p Labels,
    /// The labels of the pod's namespace (for placed pods' namespace selectors).
    pub namespace_labels: &'p Labels,
    pub requests: Requests,
    pub host_ports: Vec<HostPort>,
    pub tolerations: &'p [Toleration],
    pub node_name: Option<&'p str>,
    pub node_selector: Option<&'p Labels>,
    pub required_node_affinity: Option<&'p [NodeSelectorTerm]>,
    pub preferred_node_affinity: &'p [PreferredSchedulingTerm],
    /// The pod's affinity terms, namespace selectors resolved to names.
    pub pod_affinity: Option<PodAffinityTerms>,
    pub spread: Vec<SpreadConstraint>,
    /// The controller that system-default spreading groups the pod with.
    pub owner: Option<&'p str>,
}

impl<'p> PodFacts<'p> {
    pub fn new(
        pod: &'p Pod,
        namespace: Option<&'p Namespace>,
        namespaces: &dyn Namespaces,
    ) -> PodFacts<'p> {
        let spec = pod.spec.as_ref();
        let labels = labels_of(&pod.metadata);
        let node_affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref());
        let mut pod_affinity = PodAffinityTerms::of(pod);
        if let Some(terms) = &mut pod_affinity {
            terms.resolve_namespaces(namespaces);
        }
        PodFacts {
            pod,
            namespace: pod.metadata.namespace.as_deref().unwrap_or_default(),
            labels,
            namespace_labels: namespace.map_or(&NO_LABELS, |ns| labels_of(&ns.metadata)),
            requests: spec.map(resources::pod_requests).unwrap_or_default(),
            host_ports: spec.map(resources::host_ports).unwrap_or_default(),
            tolerations: spec
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default(),
            node_name: spec.and_then(|s| s.node_name.as_deref()),
            node_selector: spec.and_then(|s| s.node_selector.as_ref()),
            required_node_affinity: node_affinity
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .map(|s| s.node_selector_terms.as_slice()),
            preferred_node_affinity: node_affinity
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_deref()
                })
                .unwrap_or_default(),
            pod_affinity,
            spread: spec
                .and_then(|s| s.topology_spread_constraints.as_ref())
                .into_iter()
                .flatten()
                .map(|c| SpreadConstraint::parse(c, labels))
                .collect(),
            owner: spreading_owner(pod),
        }
    }

    /// The pod's `nodeSelector` and required node affinity hold on `node`.
    pub fn node_affinity_matches(&self, node: &NodeInfo) -> bool {
        node_matches_required(
            self.node_selector,
            self.required_node_affinity,
            &node.name,
            node.labels(),
        )
    }

    /// The node names required node affinity allows, when every term names nodes through
    /// `matchFields` on `metadata.name` (as DaemonSet pods do): only those are evaluated.
    fn named_nodes(&self) -> Option<Vec<&'p str>> {
        let mut names: Vec<&'p str> = Vec::new();
        for term in self.required_node_affinity? {
            let mut term_names: Option<Vec<&'p str>> = None;
            for r in term.match_fields.iter().flatten() {
                if r.key != "metadata.name" || r.operator != "In" {
                    continue;
                }
                let values = r.values.iter().flatten().map(String::as_str);
                term_names = Some(match term_names {
                    None => values.collect(),
                    // Requirements are ANDed: intersect.
                    Some(prev) => values.filter(|v| prev.contains(v)).collect(),
                });
            }
            // A term without names allows every node (terms are ORed).
            names.extend(term_names?);
        }
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    fn preemption_never(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never")
    }
}

/// What a scheduling cycle decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Placed(NodeId),
    /// No node fits; the message is upstream's ("0/3 nodes are available: …").
    Unschedulable(String),
    /// The cluster has no nodes at all.
    NoNodes,
}

/// The message for a cluster without nodes (upstream's `ErrNoNodesAvailable`).
pub const NO_NODES_MESSAGE: &str = "no nodes available to schedule pods";

/// The sequential scheduler's state across cycles: where the next node scan starts, the
/// random source for ties, and reused buffers.
#[derive(Debug)]
pub struct Scheduler {
    next_start: usize,
    rng: u64,
    feasible: Vec<NodeId>,
    totals: Vec<i64>,
    scratch: scores::Scratch,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new()
    }
}

impl Scheduler {
    pub fn new() -> Scheduler {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Scheduler {
            next_start: 0,
            rng: seed | 1,
            feasible: Vec::new(),
            totals: Vec::new(),
            scratch: scores::Scratch::default(),
        }
    }

    /// Decides where `pod` goes.
    pub fn schedule(&mut self, pod: &Pod, cache: &Cache, namespaces: &dyn Namespaces) -> Decision {
        let live = cache.live();
        if live.is_empty() {
            return Decision::NoNodes;
        }
        let namespace = namespaces.get(pod.metadata.namespace.as_deref().unwrap_or_default());
        let facts = PodFacts::new(pod, namespace.as_deref(), namespaces);
        let state = CycleState {
            affinity: AffinityFilter::compute(&facts, cache),
            spread: SpreadFilter::compute(&facts, cache),
        };
        let mut diagnosis = Diagnosis::default();
        self.feasible.clear();
        match facts.named_nodes() {
            Some(names) => {
                let ids: Vec<NodeId> = names.iter().filter_map(|n| cache.live_id(n)).collect();
                if names.is_empty() {
                    diagnosis.pre_filter = Some("pod affinity terms conflict");
                }
                for &id in &ids {
                    match filters::run_all(&facts, cache.node(id), &state) {
                        Ok(()) => self.feasible.push(id),
                        Err(rejection) => diagnosis.add(&rejection),
                    }
                }
                let absent = live.len() - ids.len();
                diagnosis.add_many(&Rejection::unresolvable(REASON_NOT_NAMED), absent);
            }
            None => self.filter_all(&facts, cache, &state, &mut diagnosis),
        }
        match self.feasible.len() {
            0 => Decision::Unschedulable(diagnosis.message(live.len(), facts.preemption_never())),
            1 => Decision::Placed(self.feasible[0]),
            _ => {
                scores::total(
                    &facts,
                    cache,
                    &self.feasible,
                    &mut self.totals,
                    &mut self.scratch,
                );
                Decision::Placed(self.pick())
            }
        }
    }

    /// Filters the nodes round-robin from where the last scan stopped, until enough feasible
    /// nodes are found (upstream's adaptive `percentageOfNodesToScore`).
    fn filter_all(
        &mut self,
        facts: &PodFacts<'_>,
        cache: &Cache,
        state: &CycleState<'_>,
        diagnosis: &mut Diagnosis,
    ) {
        let live = cache.live();
        let wanted = feasible_nodes_to_find(live.len());
        let mut processed = 0;
        for i in 0..live.len() {
            let id = live[(self.next_start + i) % live.len()];
            processed += 1;
            match filters::run_all(facts, cache.node(id), state) {
                Ok(()) => {
                    self.feasible.push(id);
                    if self.feasible.len() >= wanted {
                        break;
                    }
                }
                Err(rejection) => diagnosis.add(&rejection),
            }
        }
        self.next_start = (self.next_start + processed) % live.len();
    }

    /// The feasible node with the highest total; among equals, each equally likely.
    fn pick(&mut self) -> NodeId {
        let mut best = 0;
        let mut ties = 0u64;
        for i in 0..self.totals.len() {
            let total = self.totals[i];
            if total > self.totals[best] {
                best = i;
                ties = 1;
            } else if total == self.totals[best] {
                ties += 1;
                // Reservoir sampling: the i-th equal replaces the choice with chance 1/ties.
                if self.random().is_multiple_of(ties) {
                    best = i;
                }
            }
        }
        self.feasible[best]
    }

    fn random(&mut self) -> u64 {
        // xorshift64: plenty for breaking ties.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// How many feasible nodes to look for among `all` (upstream's `numFeasibleNodesToFind` with
/// the default adaptive percentage: 50% minus 1% per 125 nodes, at least 5%, at least 100).
pub fn feasible_nodes_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES_TO_FIND {
        return all;
    }
    let percentage = 50usize
        .saturating_sub(all / 125)
        .max(MIN_FEASIBLE_NODES_PERCENTAGE);
    (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Why the nodes were rejected, counted per reason, for the `FailedScheduling` message.
#[derive(Debug, Default)]
pub struct Diagnosis {
    reasons: HashMap<Cow<'static, str>, usize>,
    /// Nodes where evicting pods would not help.
    unresolvable: usize,
    /// Nodes where it might.
    resolvable: usize,
    /// A reason that rejected the pod before any node was looked at.
    pre_filter: Option<&'static str>,
}

impl Diagnosis {
    pub fn add(&mut self, rejection: &Rejection) {
        self.add_many(rejection, 1);
    }

    fn add_many(&mut self, rejection: &Rejection, nodes: usize) {
        if nodes == 0 {
            return;
        }
        for reason in rejection.reasons() {
            *self.reasons.entry(reason.clone()).or_insert(0) += nodes;
        }
        if rejection.unresolvable {
            self.unresolvable += nodes;
        } else {
            self.resolvable += nodes;
        }
    }

    /// Upstream's `FitError` message, with the preemption sentence of a scheduler that found
    /// nothing to preempt.
    pub fn message(&self, all_nodes: usize, preemption_never: bool) -> String {
        let mut message = format!("0/{all_nodes} nodes are available:");
        match self.pre_filter {
            Some(reason) => message.push_str(&format!(" {reason}.")),
            None => message.push_str(&format!(" {}.", histogram(&self.reasons))),
        }
        if preemption_never {
            message.push_str(" preemption: not eligible due to preemptionPolicy=Never.");
            return message;
        }
        let mut preemption: HashMap<Cow<'static, str>, usize> = HashMap::new();
        let (unresolvable, resolvable) = match self.pre_filter {
            Some(_) => (all_nodes, 0),
            None => (self.unresolvable, self.resolvable),
        };
        if unresolvable > 0 {
            preemption.insert(
                "Preemption is not helpful for scheduling".into(),
                unresolvable,
            );
        }
        if resolvable > 0 {
            preemption.insert(
                "No preemption victims found for incoming pod".into(),
                resolvable,
            );
        }
        message.push_str(&format!(
            " preemption: 0/{all_nodes} nodes are available: {}.",
            histogram(&preemption)
        ));
        message
    }
}

/// "count reason" entries, sorted as strings (as upstream's `sort.Strings`), comma-separated.
fn histogram(counts: &HashMap<Cow<'static, str>, usize>) -> String {
    let mut entries: Vec<String> = counts
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    entries.sort();
    entries.join(", ")
}
