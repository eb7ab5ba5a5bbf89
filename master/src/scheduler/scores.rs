//! The scores: each plugin gives every feasible node 0–100 and the node's total is the
//! weighted sum, with kube-scheduler's default weights. Plugins whose scores would be equal on
//! every node are skipped: they cannot change the choice.

use super::affinity::AffinityScore;
use super::cache::{Cache, NodeId, NodeInfo};
use super::framework::PodFacts;
use super::selectors::{term_matches, tolerates};
use super::spread::{self, SpreadScore};

pub const MAX_NODE_SCORE: i64 = 100;

const WEIGHT_TAINT_TOLERATION: i64 = 3;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_RESOURCES_FIT: i64 = 1;
const WEIGHT_BALANCED_ALLOCATION: i64 = 1;
const WEIGHT_TOPOLOGY_SPREAD: i64 = 2;
const WEIGHT_INTER_POD_AFFINITY: i64 = 2;

/// Buffers reused from cycle to cycle.
#[derive(Debug, Default)]
pub struct Scratch {
    raw: Vec<i64>,
    optional: Vec<Option<i64>>,
}

/// The weighted total of every feasible node, into `totals` (same order as `feasible`).
pub fn total(
    facts: &PodFacts<'_>,
    cache: &Cache,
    feasible: &[NodeId],
    totals: &mut Vec<i64>,
    scratch: &mut Scratch,
) {
    totals.clear();
    totals.resize(feasible.len(), 0);
    let raw = &mut scratch.raw;
    let add = |totals: &mut [i64], weight: i64, scores: &[i64]| {
        for (t, s) in totals.iter_mut().zip(scores) {
            *t = t.saturating_add(weight.saturating_mul(*s));
        }
    };
    let nodes = || feasible.iter().map(|&id| cache.node(id));

    fill(raw, nodes().map(|n| least_allocated(facts, n)));
    add(totals, WEIGHT_RESOURCES_FIT, raw);

    if !facts.requests.resources.is_zero() {
        fill(raw, nodes().map(|n| balanced_allocation(facts, n)));
        add(totals, WEIGHT_BALANCED_ALLOCATION, raw);
    }

    if !facts.preferred_node_affinity.is_empty() {
        fill(raw, nodes().map(|n| preferred_node_affinity(facts, n)));
        normalize_by_max(raw, false);
        add(totals, WEIGHT_NODE_AFFINITY, raw);
    }

    fill(
        raw,
        nodes().map(|n| intolerable_prefer_no_schedule(facts, n)),
    );
    if raw.iter().any(|&n| n > 0) {
        normalize_by_max(raw, true);
        add(totals, WEIGHT_TAINT_TOLERATION, raw);
    }

    if let Some(state) = SpreadScore::compute(facts, cache, feasible) {
        let optional = &mut scratch.optional;
        optional.clear();
        optional.extend(feasible.iter().map(|&id| state.score(facts, cache, id)));
        raw.resize(feasible.len(), 0);
        spread::normalize(optional, raw);
        add(totals, WEIGHT_TOPOLOGY_SPREAD, raw);
    }

    if let Some(state) = AffinityScore::compute(facts, cache) {
        fill(raw, nodes().map(|n| state.score(n)));
        normalize_min_max(raw);
        add(totals, WEIGHT_INTER_POD_AFFINITY, raw);
    }
}

fn fill(raw: &mut Vec<i64>, scores: impl Iterator<Item = i64>) {
    raw.clear();
    raw.extend(scores);
}

/// NodeResourcesFit's `LeastAllocated`: the share of CPU and memory left free after placing the
/// pod, counting pods without requests at the non-zero defaults.
pub fn least_allocated(facts: &PodFacts<'_>, node: &NodeInfo) -> i64 {
    // In i128: allocatable may be as large as a quantity gets.
    let resources = [
        (
            i128::from(node.non_zero_cpu) + i128::from(facts.requests.non_zero_cpu),
            i128::from(node.allocatable.milli_cpu),
        ),
        (
            i128::from(node.non_zero_memory) + i128::from(facts.requests.non_zero_memory),
            i128::from(node.allocatable.memory),
        ),
    ];
    let (mut sum, mut weights) = (0i128, 0i128);
    for (requested, capacity) in resources {
        if capacity <= 0 {
            continue;
        }
        sum += if requested > capacity {
            0
        } else {
            (capacity - requested) * i128::from(MAX_NODE_SCORE) / capacity
        };
        weights += 1;
    }
    if weights == 0 {
        0
    } else {
        i64::try_from(sum / weights).unwrap_or(0)
    }
}

/// `NodeResourcesBalancedAllocation`: how close the node's CPU and memory fractions stay to each
/// other with the pod placed (real requests, no defaults).
pub fn balanced_allocation(facts: &PodFacts<'_>, node: &NodeInfo) -> i64 {
    let want = &facts.requests.resources;
    let fraction = |requested: i64, capacity: i64| {
        (capacity != 0).then(|| (requested as f64 / capacity as f64).min(1.0))
    };
    let cpu = fraction(
        node.requested.milli_cpu.saturating_add(want.milli_cpu),
        node.allocatable.milli_cpu,
    );
    let memory = fraction(
        node.requested.memory.saturating_add(want.memory),
        node.allocatable.memory,
    );
    let std = match (cpu, memory) {
        (Some(c), Some(m)) => ((c - m) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// `NodeAffinity`'s score: the weights of the preferred terms the node matches.
pub fn preferred_node_affinity(facts: &PodFacts<'_>, node: &NodeInfo) -> i64 {
    facts
        .preferred_node_affinity
        .iter()
        .filter(|t| t.weight != 0 && term_matches(&t.preference, &node.name, node.labels()))
        .map(|t| i64::from(t.weight))
        .sum()
}

/// `TaintToleration`'s score before normalization: the `PreferNoSchedule` taints the pod does
/// not tolerate (fewer is better).
pub fn intolerable_prefer_no_schedule(facts: &PodFacts<'_>, node: &NodeInfo) -> i64 {
    let n = node
        .taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !facts.tolerations.iter().any(|tol| tolerates(tol, t)))
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Upstream's `DefaultNormalizeScore`: scales so the highest is 100 (reversed: the highest
/// becomes 0); all zero stays zero (reversed: all 100).
pub fn normalize_by_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        let scaled = if max == 0 {
            0
        } else {
            MAX_NODE_SCORE * *s / max
        };
        *s = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

/// `InterPodAffinity`'s normalization: the lowest becomes 0, the highest 100.
pub fn normalize_min_max(scores: &mut [i64]) {
    let min = scores.iter().copied().min().unwrap_or(0);
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max > min {
            (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / (max - min) as f64)) as i64
        } else {
            0
        };
    }
}
