//! Inter-pod affinity and anti-affinity (upstream's `InterPodAffinity` plugin).
//!
//! Terms are parsed once per pod ([`PodAffinityTerms`]). A scheduling cycle counts, per topology
//! pair (`topologyKey`, the value of that label on a node), the placed pods that match the
//! incoming pod's terms and the placed pods whose terms match the incoming pod — once, before
//! the per-node checks, and only when some pod has such terms.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, PodAffinityTerm};

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filters::{Rejection, Verdict};
use super::framework::PodFacts;
use super::selectors::{labels_of, Labels, Selector, NO_LABELS};
use crate::controllers::Informer;

pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// What an existing pod's required affinity term adds to a node's score when it matches the
/// incoming pod (upstream's `hardPodAffinityWeight`).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Namespaces by name, for `namespaceSelector`.
pub trait Namespaces {
    fn get(&self, name: &str) -> Option<Arc<Namespace>>;
    fn list(&self) -> Vec<Arc<Namespace>>;
}

impl Namespaces for Informer<Namespace> {
    fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        Informer::get(self, name)
    }
    fn list(&self) -> Vec<Arc<Namespace>> {
        Informer::list(self)
    }
}

/// One pod (anti-)affinity term.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    pub topology_key: String,
    /// For preferred terms; 0 for required ones.
    pub weight: i64,
    selector: Selector,
    namespaces: Vec<String>,
    namespace_selector: Selector,
}

impl AffinityTerm {
    fn parse(term: &PodAffinityTerm, own_namespace: &str, weight: i64) -> AffinityTerm {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        // Neither namespaces nor a namespace selector: the pod's own namespace.
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(own_namespace.to_string());
        }
        AffinityTerm {
            topology_key: term.topology_key.clone(),
            weight,
            selector: Selector::parse(term.label_selector.as_ref()),
            namespaces,
            namespace_selector: Selector::parse(term.namespace_selector.as_ref()),
        }
    }

    /// Whether a pod in `namespace` with `labels` matches; `namespace_labels` are that
    /// namespace's labels, needed only while the namespace selector is unresolved.
    pub fn matches(&self, namespace: &str, labels: &Labels, namespace_labels: &Labels) -> bool {
        (self.namespaces.iter().any(|n| n == namespace)
            || self.namespace_selector.matches(namespace_labels))
            && self.selector.matches(labels)
    }

    /// Turns the namespace selector into the names it selects now, so matching needs no
    /// namespace lookups (done for the incoming pod's terms, once per cycle).
    fn resolve(&mut self, namespaces: &dyn Namespaces) {
        if self.namespace_selector == Selector::Nothing {
            return;
        }
        for ns in namespaces.list() {
            let name = ns.metadata.name.as_deref().unwrap_or_default();
            if self.namespace_selector.matches(labels_of(&ns.metadata))
                && !self.namespaces.iter().any(|n| n == name)
            {
                self.namespaces.push(name.to_string());
            }
        }
        self.namespace_selector = Selector::Nothing;
    }
}

/// A pod's pod affinity and anti-affinity terms.
#[derive(Debug, Clone, Default)]
pub struct PodAffinityTerms {
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<AffinityTerm>,
    pub preferred_anti_affinity: Vec<AffinityTerm>,
}

impl PodAffinityTerms {
    /// The pod's terms, or `None` when it has none.
    pub fn of(pod: &Pod) -> Option<PodAffinityTerms> {
        let affinity = pod.spec.as_ref()?.affinity.as_ref()?;
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::parse(t, ns, 0))
                .collect()
        };
        let mut out = PodAffinityTerms::default();
        if let Some(a) = &affinity.pod_affinity {
            out.required_affinity = required(
                a.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
            out.preferred_affinity = a
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|w| AffinityTerm::parse(&w.pod_affinity_term, ns, i64::from(w.weight)))
                .collect();
        }
        if let Some(a) = &affinity.pod_anti_affinity {
            out.required_anti_affinity = required(
                a.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
            out.preferred_anti_affinity = a
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
                .map(|w| AffinityTerm::parse(&w.pod_affinity_term, ns, i64::from(w.weight)))
                .collect();
        }
        let empty = out.required_affinity.is_empty()
            && out.required_anti_affinity.is_empty()
            && out.preferred_affinity.is_empty()
            && out.preferred_anti_affinity.is_empty();
        (!empty).then_some(out)
    }

    /// Resolves every term's namespace selector (see [`AffinityTerm::resolve`]).
    pub fn resolve_namespaces(&mut self, namespaces: &dyn Namespaces) {
        for term in self
            .required_affinity
            .iter_mut()
            .chain(&mut self.required_anti_affinity)
            .chain(&mut self.preferred_affinity)
            .chain(&mut self.preferred_anti_affinity)
        {
            term.resolve(namespaces);
        }
    }
}

/// Placed-pod counts per topology pair; keys borrow the node labels in the cache.
type PairCounts<'a> = HashMap<(&'a str, &'a str), i64>;

fn bump<'a>(counts: &mut PairCounts<'a>, node_labels: &'a Labels, key: &str, by: i64) {
    if let Some((k, v)) = node_labels.get_key_value(key) {
        *counts.entry((k.as_str(), v.as_str())).or_insert(0) += by;
    }
}

fn count<'a>(counts: &PairCounts<'a>, k: &'a str, v: &'a str) -> i64 {
    counts.get(&(k, v)).copied().unwrap_or(0)
}

const NO_TERMS: &[AffinityTerm] = &[];

fn terms<'f>(
    facts: &'f PodFacts<'_>,
    pick: fn(&PodAffinityTerms) -> &Vec<AffinityTerm>,
) -> &'f [AffinityTerm] {
    facts
        .pod_affinity
        .as_ref()
        .map_or(NO_TERMS, |t| pick(t).as_slice())
}

/// The counts the required terms are checked against (upstream's PreFilter state).
#[derive(Debug, Default)]
pub struct AffinityFilter<'a> {
    /// Pods matching all of the incoming pod's required affinity terms.
    affinity: PairCounts<'a>,
    /// Pods matching one of its required anti-affinity terms.
    anti_affinity: PairCounts<'a>,
    /// Pods whose required anti-affinity terms match the incoming pod.
    existing_anti_affinity: PairCounts<'a>,
    /// The incoming pod matches its own affinity terms (so the first of a group may go anywhere).
    matches_own_terms: bool,
}

impl<'a> AffinityFilter<'a> {
    /// `None` when neither the pod nor any placed pod has required terms.
    pub fn compute(facts: &PodFacts<'_>, cache: &'a Cache) -> Option<AffinityFilter<'a>> {
        let affinity = terms(facts, |t| &t.required_affinity);
        let anti = terms(facts, |t| &t.required_anti_affinity);
        if affinity.is_empty() && anti.is_empty() && !cache.has_required_anti_affinity() {
            return None;
        }
        let mut state = AffinityFilter::default();
        // Placed pods' anti-affinity against the incoming pod.
        for placed in cache.pods_with_affinity() {
            let node = cache.node(placed.node);
            if node.node.is_none() {
                continue;
            }
            let Some(terms) = &placed.affinity else {
                continue;
            };
            for term in &terms.required_anti_affinity {
                if term.matches(facts.namespace, facts.labels, facts.namespace_labels) {
                    bump(
                        &mut state.existing_anti_affinity,
                        node.labels(),
                        &term.topology_key,
                        1,
                    );
                }
            }
        }
        // The incoming pod's terms against every placed pod.
        if !affinity.is_empty() || !anti.is_empty() {
            for &id in cache.live() {
                let node = cache.node(id);
                let labels = node.labels();
                for placed in &node.pods {
                    let (ns, pod_labels) = (placed.namespace(), placed.labels());
                    if !affinity.is_empty()
                        && affinity
                            .iter()
                            .all(|t| t.matches(ns, pod_labels, &NO_LABELS))
                    {
                        for term in affinity {
                            bump(&mut state.affinity, labels, &term.topology_key, 1);
                        }
                    }
                    for term in anti {
                        if term.matches(ns, pod_labels, &NO_LABELS) {
                            bump(&mut state.anti_affinity, labels, &term.topology_key, 1);
                        }
                    }
                }
            }
            state.matches_own_terms = affinity
                .iter()
                .all(|t| t.matches(facts.namespace, facts.labels, facts.namespace_labels));
        }
        Some(state)
    }

    /// The filter for one node.
    pub fn check(&self, facts: &PodFacts<'_>, node: &NodeInfo) -> Verdict {
        let labels = node.labels();
        let affinity = terms(facts, |t| &t.required_affinity);
        if !affinity.is_empty() {
            let mut pods_exist = true;
            for term in affinity {
                let Some((k, v)) = labels.get_key_value(&term.topology_key) else {
                    return Err(Rejection::unresolvable(REASON_AFFINITY));
                };
                if count(&self.affinity, k, v) <= 0 {
                    pods_exist = false;
                }
            }
            // The first pod of a group with affinity to itself may go anywhere.
            let first_of_group = self.affinity.is_empty() && self.matches_own_terms;
            if !pods_exist && !first_of_group {
                return Err(Rejection::unresolvable(REASON_AFFINITY));
            }
        }
        if !self.anti_affinity.is_empty() {
            for term in terms(facts, |t| &t.required_anti_affinity) {
                if let Some((k, v)) = labels.get_key_value(&term.topology_key) {
                    if count(&self.anti_affinity, k, v) > 0 {
                        return Err(Rejection::resolvable(REASON_ANTI_AFFINITY));
                    }
                }
            }
        }
        if !self.existing_anti_affinity.is_empty() {
            for (k, v) in labels {
                if count(&self.existing_anti_affinity, k, v) > 0 {
                    return Err(Rejection::resolvable(REASON_EXISTING_ANTI_AFFINITY));
                }
            }
        }
        Ok(())
    }
}

/// The preferred terms' weights per topology pair (upstream's PreScore state).
#[derive(Debug, Default)]
pub struct AffinityScore<'a> {
    by_pair: PairCounts<'a>,
}

impl<'a> AffinityScore<'a> {
    /// `None` when no term of the pod or of a placed pod weighs on any node.
    pub fn compute(facts: &PodFacts<'_>, cache: &'a Cache) -> Option<AffinityScore<'a>> {
        let preferred = terms(facts, |t| &t.preferred_affinity);
        let preferred_anti = terms(facts, |t| &t.preferred_anti_affinity);
        let mut state = AffinityScore::default();
        let mut visit = |placed: &PodInfo, labels: &'a Labels| {
            if labels.is_empty() {
                return;
            }
            let (ns, pod_labels) = (placed.namespace(), placed.labels());
            for t in preferred {
                if t.matches(ns, pod_labels, &NO_LABELS) {
                    bump(&mut state.by_pair, labels, &t.topology_key, t.weight);
                }
            }
            for t in preferred_anti {
                if t.matches(ns, pod_labels, &NO_LABELS) {
                    bump(&mut state.by_pair, labels, &t.topology_key, -t.weight);
                }
            }
            let Some(theirs) = &placed.affinity else {
                return;
            };
            let incoming =
                |t: &AffinityTerm| t.matches(facts.namespace, facts.labels, facts.namespace_labels);
            for t in theirs.required_affinity.iter().filter(|t| incoming(t)) {
                bump(
                    &mut state.by_pair,
                    labels,
                    &t.topology_key,
                    HARD_POD_AFFINITY_WEIGHT,
                );
            }
            for t in theirs.preferred_affinity.iter().filter(|t| incoming(t)) {
                bump(&mut state.by_pair, labels, &t.topology_key, t.weight);
            }
            for t in theirs
                .preferred_anti_affinity
                .iter()
                .filter(|t| incoming(t))
            {
                bump(&mut state.by_pair, labels, &t.topology_key, -t.weight);
            }
        };
        if preferred.is_empty() && preferred_anti.is_empty() {
            // Only placed pods with terms of their own can weigh in.
            for placed in cache.pods_with_affinity() {
                let node = cache.node(placed.node);
                if node.node.is_some() {
                    visit(placed, node.labels());
                }
            }
        } else {
            for &id in cache.live() {
                let node = cache.node(id);
                for placed in &node.pods {
                    visit(placed, node.labels());
                }
            }
        }
        (!state.by_pair.is_empty()).then_some(state)
    }

    /// The raw score of a node: the weights of the pairs its labels are in.
    pub fn score(&self, node: &NodeInfo) -> i64 {
        node.labels()
            .iter()
            .map(|(k, v)| count(&self.by_pair, k, v))
            .sum()
    }
}
