//! Pod topology spread (upstream's `PodTopologySpread` plugin): `DoNotSchedule` constraints
//! filter, `ScheduleAnyway` ones score, and pods with no constraints of their own are spread by
//! the system defaults (per hostname with maxSkew 3, per zone with maxSkew 5) among the pods of
//! their ReplicaSet, StatefulSet or ReplicationController.
//!
//! Counts per topology domain are made once per cycle, before the per-node checks.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;

use super::cache::{Cache, NodeId, NodeInfo};
use super::filters::{Rejection, Verdict};
use super::framework::PodFacts;
use super::selectors::{self, Labels, Selector};

pub const REASON_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// One parsed topology spread constraint.
#[derive(Debug, Clone)]
pub struct SpreadConstraint {
    pub topology_key: String,
    pub max_skew: i64,
    pub min_domains: i64,
    /// `whenUnsatisfiable: DoNotSchedule` (else `ScheduleAnyway`).
    pub hard: bool,
    pub selector: Selector,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes matching the pod's node
    /// affinity/selector count as domains.
    pub honor_node_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default `Ignore`): only nodes whose taints the pod tolerates.
    pub honor_taints: bool,
}

impl SpreadConstraint {
    /// Parses a constraint of a pod with `labels`; `matchLabelKeys` add the pod's own values.
    pub fn parse(c: &TopologySpreadConstraint, labels: &Labels) -> SpreadConstraint {
        let mut selector = Selector::parse(c.label_selector.as_ref());
        for key in c.match_label_keys.iter().flatten() {
            if let Some(value) = labels.get(key) {
                selector.require(key, value);
            }
        }
        SpreadConstraint {
            topology_key: c.topology_key.clone(),
            max_skew: i64::from(c.max_skew),
            min_domains: i64::from(c.min_domains.unwrap_or(1)),
            hard: c.when_unsatisfiable == "DoNotSchedule",
            selector,
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        }
    }
}

/// Whether a node counts as a domain for a constraint under its inclusion policies.
fn included(
    honor_affinity: bool,
    honor_taints: bool,
    facts: &PodFacts<'_>,
    node: &NodeInfo,
) -> bool {
    (!honor_affinity || facts.node_affinity_matches(node))
        && (!honor_taints
            || selectors::untolerated(&node.taints, facts.tolerations, |e| {
                e == "NoSchedule" || e == "NoExecute"
            })
            .is_none())
}

/// The non-terminating pods on `node` in `namespace` that `selector` selects.
fn count_matching(node: &NodeInfo, selector: &Selector, namespace: &str) -> i64 {
    let n = node
        .pods
        .iter()
        .filter(|p| !p.terminating && p.namespace() == namespace && selector.matches(p.labels()))
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn has_all_keys<'c>(labels: &Labels, mut keys: impl Iterator<Item = &'c str>) -> bool {
    keys.all(|k| labels.contains_key(k))
}

/// The per-domain counts of the hard constraints (upstream's PreFilter state).
#[derive(Debug)]
pub struct SpreadFilter<'a> {
    constraints: Vec<HardCounts<'a>>,
}

#[derive(Debug)]
struct HardCounts<'a> {
    constraint: &'a SpreadConstraint,
    /// Domain (topology value) → matching pods.
    counts: HashMap<&'a str, i64>,
    /// The fewest matching pods in a domain.
    min: i64,
}

impl<'a> SpreadFilter<'a> {
    /// `None` when the pod has no `DoNotSchedule` constraints.
    pub fn compute(facts: &'a PodFacts<'a>, cache: &'a Cache) -> Option<SpreadFilter<'a>> {
        let mut constraints: Vec<HardCounts<'a>> = facts
            .spread
            .iter()
            .filter(|c| c.hard)
            .map(|constraint| HardCounts {
                constraint,
                counts: HashMap::new(),
                min: i64::MAX,
            })
            .collect();
        if constraints.is_empty() {
            return None;
        }
        for &id in cache.live() {
            let node = cache.node(id);
            let labels = node.labels();
            if !has_all_keys(
                labels,
                constraints
                    .iter()
                    .map(|c| c.constraint.topology_key.as_str()),
            ) {
                continue;
            }
            for hard in &mut constraints {
                let c = hard.constraint;
                if !included(c.honor_node_affinity, c.honor_taints, facts, node) {
                    continue;
                }
                if let Some(value) = labels.get(&c.topology_key) {
                    *hard.counts.entry(value.as_str()).or_insert(0) +=
                        count_matching(node, &c.selector, facts.namespace);
                }
            }
        }
        for hard in &mut constraints {
            let domains = i64::try_from(hard.counts.len()).unwrap_or(i64::MAX);
            hard.min = if domains < hard.constraint.min_domains {
                // Fewer domains than asked for: the missing ones count as empty.
                0
            } else {
                hard.counts.values().copied().min().unwrap_or(i64::MAX)
            };
        }
        Some(SpreadFilter { constraints })
    }

    /// The filter for one node: placing the pod there must keep every skew within its bound.
    pub fn check(&self, facts: &PodFacts<'_>, node: &NodeInfo) -> Verdict {
        for hard in &self.constraints {
            let c = hard.constraint;
            let Some(value) = node.labels().get(&c.topology_key) else {
                return Err(Rejection::unresolvable(REASON_MISSING_LABEL));
            };
            let here = hard.counts.get(value.as_str()).copied().unwrap_or(0);
            let itself = i64::from(c.selector.matches(facts.labels));
            if here.saturating_add(itself).saturating_sub(hard.min) > c.max_skew {
                return Err(Rejection::resolvable(REASON_CONSTRAINTS));
            }
        }
        Ok(())
    }
}

/// Which pods a scoring constraint counts.
#[derive(Debug, Clone, Copy)]
enum Counted<'a> {
    Selected(&'a Selector),
    /// System default spreading: the pods of this owner (by UID).
    Owner(&'a str),
}

#[derive(Debug)]
struct SoftCounts<'a> {
    topology_key: &'a str,
    max_skew: i64,
    counted: Counted<'a>,
    honor_node_affinity: bool,
    honor_taints: bool,
    /// `ln(domains + 2)`: more domains, more weight per pod.
    weight: f64,
    /// Domain → matching pods (not used for hostname, counted per node).
    counts: HashMap<&'a str, i64>,
}

/// The soft constraints' counts (upstream's PreScore state).
#[derive(Debug)]
pub struct SpreadScore<'a> {
    constraints: Vec<SoftCounts<'a>>,
    /// Nodes lacking a constraint's key score 0 (not with system defaults).
    require_all_keys: bool,
}

impl<'a> SpreadScore<'a> {
    /// `None` when nothing spreads the pod.
    pub fn compute(
        facts: &'a PodFacts<'a>,
        cache: &'a Cache,
        feasible: &[NodeId],
    ) -> Option<SpreadScore<'a>> {
        let soft = |topology_key, max_skew, counted, affinity, taints| SoftCounts {
            topology_key,
            max_skew,
            counted,
            honor_node_affinity: affinity,
            honor_taints: taints,
            weight: 0.0,
            counts: HashMap::new(),
        };
        let mut constraints: Vec<SoftCounts<'a>> = if facts.spread.is_empty() {
            let owner = Counted::Owner(facts.owner?);
            vec![
                soft(LABEL_HOSTNAME, 3, owner, true, false),
                soft(LABEL_ZONE, 5, owner, true, false),
            ]
        } else {
            facts
                .spread
                .iter()
                .filter(|c| !c.hard)
                .map(|c| {
                    let counted = Counted::Selected(&c.selector);
                    soft(
                        &c.topology_key,
                        c.max_skew,
                        counted,
                        c.honor_node_affinity,
                        c.honor_taints,
                    )
                })
                .collect()
        };
        if constraints.is_empty() {
            return None;
        }
        let require_all_keys = !facts.spread.is_empty();
        let keys: Vec<&'a str> = constraints.iter().map(|c| c.topology_key).collect();
        // The domains are those of the feasible nodes.
        let mut scored = 0usize;
        for &id in feasible {
            let labels = cache.node(id).labels();
            if require_all_keys && !has_all_keys(labels, keys.iter().copied()) {
                continue;
            }
            scored += 1;
            for c in constraints
                .iter_mut()
                .filter(|c| c.topology_key != LABEL_HOSTNAME)
            {
                let value = labels.get(c.topology_key).map_or("", String::as_str);
                c.counts.entry(value).or_insert(0);
            }
        }
        for c in &mut constraints {
            let domains = if c.topology_key == LABEL_HOSTNAME {
                scored
            } else {
                c.counts.len()
            };
            c.weight = (domains as f64 + 2.0).ln();
        }
        // Count the matching pods of every node, into the domains seen above.
        for c in constraints
            .iter_mut()
            .filter(|c| c.topology_key != LABEL_HOSTNAME)
        {
            let mut add = |node: &'a NodeInfo, n: i64| {
                let labels = node.labels();
                if node.node.is_none()
                    || (require_all_keys && !has_all_keys(labels, keys.iter().copied()))
                    || !included(c.honor_node_affinity, c.honor_taints, facts, node)
                {
                    return;
                }
                let value = labels.get(c.topology_key).map_or("", String::as_str);
                if let Some(count) = c.counts.get_mut(value) {
                    *count += n;
                }
            };
            match c.counted {
                Counted::Owner(uid) => {
                    for (&id, &n) in cache.owner_counts(uid).into_iter().flatten() {
                        add(cache.node(id), i64::from(n));
                    }
                }
                Counted::Selected(selector) => {
                    for &id in cache.live() {
                        let node = cache.node(id);
                        add(node, count_matching(node, selector, facts.namespace));
                    }
                }
            }
        }
        Some(SpreadScore {
            constraints,
            require_all_keys,
        })
    }

    /// The raw score of a feasible node (more matching pods, higher: normalization inverts it);
    /// `None` for a node left out of scoring.
    pub fn score(&self, facts: &PodFacts<'_>, cache: &Cache, id: NodeId) -> Option<i64> {
        let node = cache.node(id);
        let labels = node.labels();
        if self.require_all_keys
            && !has_all_keys(labels, self.constraints.iter().map(|c| c.topology_key))
        {
            return None;
        }
        let mut score = 0.0;
        for c in &self.constraints {
            let Some(value) = labels.get(c.topology_key) else {
                continue;
            };
            let count = if c.topology_key == LABEL_HOSTNAME {
                match c.counted {
                    Counted::Owner(uid) => cache
                        .owner_counts(uid)
                        .and_then(|per_node| per_node.get(&id))
                        .map_or(0, |&n| i64::from(n)),
                    Counted::Selected(selector) => count_matching(node, selector, facts.namespace),
                }
            } else {
                c.counts.get(value.as_str()).copied().unwrap_or(0)
            };
            score += count as f64 * c.weight + (c.max_skew - 1) as f64;
        }
        Some(score.round() as i64)
    }
}

/// Upstream's NormalizeScore: fewer matching pods → closer to 100; left-out nodes get 0.
pub fn normalize(raw: &[Option<i64>], out: &mut [i64]) {
    let present = raw.iter().flatten();
    let min = present.clone().copied().min().unwrap_or(0);
    let max = present.copied().max().unwrap_or(0);
    for (score, r) in out.iter_mut().zip(raw) {
        *score = match r {
            None => 0,
            Some(_) if max == 0 => 100,
            Some(s) => 100 * (max + min - s) / max,
        };
    }
}
