//! Matching: label selectors (pod affinity, topology spread), node selectors (node affinity)
//! and tolerations against taints. Malformed input never panics: it just does not match.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

pub type Labels = BTreeMap<String, String>;

/// An empty label set to borrow.
pub static NO_LABELS: Labels = BTreeMap::new();

/// An object's labels, or an empty set.
pub fn labels_of(meta: &meta::ObjectMeta) -> &Labels {
    meta.labels.as_ref().unwrap_or(&NO_LABELS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed `metav1.LabelSelector`. An absent selector selects nothing, an empty one everything
/// (as `LabelSelectorAsSelector`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Nothing,
    All(Vec<Requirement>),
}

impl Selector {
    pub fn parse(selector: Option<&meta::LabelSelector>) -> Selector {
        let Some(selector) = selector else {
            return Selector::Nothing;
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement {
                key: key.clone(),
                op: Op::In,
                values: vec![value.clone()],
            });
        }
        for expression in selector.match_expressions.iter().flatten() {
            let op = match expression.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                // Validation rejects other operators; select nothing rather than guess.
                _ => return Selector::Nothing,
            };
            requirements.push(Requirement {
                key: expression.key.clone(),
                op,
                values: expression.values.clone().unwrap_or_default(),
            });
        }
        Selector::All(requirements)
    }

    /// Adds `key in (value)` (topology spread's `matchLabelKeys`).
    pub fn require(&mut self, key: &str, value: &str) {
        if let Selector::All(requirements) = self {
            requirements.push(Requirement {
                key: key.to_string(),
                op: Op::In,
                values: vec![value.to_string()],
            });
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let Selector::All(requirements) = self else {
            return false;
        };
        requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.op {
                Op::In => value.is_some_and(|v| r.values.contains(v)),
                Op::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// Whether a node (its name and labels) matches a pod's `nodeSelector` and required node
/// affinity, both of which must hold.
pub fn node_matches_required(
    node_selector: Option<&Labels>,
    required: Option<&[NodeSelectorTerm]>,
    node_name: &str,
    labels: &Labels,
) -> bool {
    let selector_ok = node_selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    selector_ok && required.is_none_or(|terms| terms_match(terms, node_name, labels))
}

/// Node selector terms are ORed; a term with no requirements matches nothing.
pub fn terms_match(terms: &[NodeSelectorTerm], node_name: &str, labels: &Labels) -> bool {
    terms.iter().any(|t| term_matches(t, node_name, labels))
}

/// Every requirement of the term holds (`matchExpressions` on labels, `matchFields` on
/// `metadata.name`), and there is at least one.
pub fn term_matches(term: &NodeSelectorTerm, node_name: &str, labels: &Labels) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_matches(r, Some(node_name))
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let contains = |v: &str| values.iter().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(contains),
        "NotIn" => value.is_none_or(|v| !contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(value), [bound]) = (value, values) else {
                return false;
            };
            match (value.parse::<i64>(), bound.parse::<i64>()) {
                (Ok(v), Ok(b)) if op == "Gt" => v > b,
                (Ok(v), Ok(b)) => v < b,
                _ => false,
            }
        }
        _ => false,
    }
}

/// Whether `toleration` tolerates `taint` (upstream's `ToleratesTaint`): an empty effect or key
/// in the toleration matches any; `Exists` ignores the value, `Equal` (the default) compares it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    tolerates_parts(
        toleration,
        &taint.key,
        taint.value.as_deref().unwrap_or_default(),
        &taint.effect,
    )
}

/// [`tolerates`] for a taint given by its key, value and effect.
pub fn tolerates_parts(toleration: &Toleration, key: &str, value: &str, effect: &str) -> bool {
    let wanted_effect = toleration.effect.as_deref().unwrap_or_default();
    if !wanted_effect.is_empty() && wanted_effect != effect {
        return false;
    }
    let wanted_key = toleration.key.as_deref().unwrap_or_default();
    if !wanted_key.is_empty() && wanted_key != key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => toleration.value.as_deref().unwrap_or_default() == value,
        "Exists" => true,
        _ => false,
    }
}

/// The first taint with an effect `wanted` accepts that no toleration tolerates.
pub fn untolerated<'t>(
    taints: &'t [Taint],
    tolerations: &[Toleration],
    wanted: impl Fn(&str) -> bool,
) -> Option<&'t Taint> {
    taints
        .iter()
        .filter(|t| wanted(&t.effect))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}
