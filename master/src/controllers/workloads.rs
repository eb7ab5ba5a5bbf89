//! Small pieces the DaemonSet and StatefulSet controllers share: label selectors, controller
//! references, pods built from templates, pod readiness and availability, scaled
//! `intOrString` values (upstream `pkg/controller` and `pkg/api/v1/pod`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;

use super::runtime::{key, Change, Informer, Key};
use super::WorkQueue;

/// One requirement of a [`Selector`].
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A checked `metav1.LabelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Checks `selector` as `metav1.LabelSelectorAsSelector` does.
    pub fn new(selector: &LabelSelector) -> Result<Selector, String> {
        let mut out = Vec::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            out.push(Requirement::In(k.clone(), vec![v.clone()]));
        }
        for expr in selector.match_expressions.iter().flatten() {
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            out.push(match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "selector requirement on {key:?}: operator {} needs values",
                        expr.operator
                    ))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "selector requirement on {key:?}: operator {} takes no values",
                        expr.operator
                    ))
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "selector requirement on {key:?}: unknown operator {other:?}"
                    ))
                }
            });
        }
        Ok(Selector(out))
    }

    /// Whether the selector has no requirement (and so selects everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k));
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// A controller reference to `owner` (`controller` and `blockOwnerDeletion` set).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller reference of `meta`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether the object's controller is the object with this UID.
pub fn is_controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == owner_uid)
}

/// The key of the object's controller if it is of kind `kind` (`apps/v1`).
pub fn controller_key(meta: &ObjectMeta, kind: &str) -> Option<Key> {
    let owner = controller_of(meta)?;
    (owner.kind == kind && owner.api_version.starts_with("apps/"))
        .then(|| key(meta.namespace.as_deref(), &owner.name))
}

/// Queues the controller of kind `kind` of the old and new object of a change.
pub fn queue_controllers(
    queue: &WorkQueue,
    kind: &str,
    old: Option<&ObjectMeta>,
    new: &ObjectMeta,
) {
    let new_key = controller_key(new, kind);
    if let Some(old_key) = old.and_then(|o| controller_key(o, kind)) {
        if Some(&old_key) != new_key.as_ref() {
            queue.add(old_key);
        }
    }
    if let Some(k) = new_key {
        queue.add(k);
    }
}

/// Queues, on every change in `informer`, the controller of kind `kind` of the old and new
/// object (pods and ControllerRevisions wake the set that owns them).
pub fn queue_controllers_on_change<K>(informer: &Informer<K>, queue: &WorkQueue, kind: &'static str)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let queue = queue.clone();
    informer.on_change(move |change| match change {
        Change::Applied { old, new } => {
            queue_controllers(&queue, kind, old.map(|o| o.meta()), new.meta())
        }
        Change::Deleted(old) => queue_controllers(&queue, kind, None, old.meta()),
    });
}

/// A pod from `template` in `namespace`, controlled by `owner` (`GetPodFromTemplate`); the
/// caller names it.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: Option<&str>,
    owner: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            namespace: namespace.map(str::to_string),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The pod's phase (`""` when unknown).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod has the `Ready` condition `True`, and since when.
fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// `podutil.IsPodReady`.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// `podutil.IsPodAvailable`: ready for at least `min_ready_seconds` at `now`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since
            .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
            .is_ok_and(|t| t < now),
    }
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int as is, or a percentage of `total`.
pub fn scaled_value(value: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match value {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: {s:?}"))?;
            let product = percent * i64::from(total);
            let scaled = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(scaled).map_err(|_| format!("{s:?} of {total} is out of range"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    #[test]
    fn selectors_match_like_metav1() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        let cases: &[(LabelSelector, Result<bool, ()>)] = &[
            (LabelSelector::default(), Ok(true)),
            (
                LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                Ok(true),
            ),
            (expr("In", &["web", "db"]), Ok(true)),
            (expr("NotIn", &["web"]), Ok(false)),
            (expr("Exists", &[]), Ok(true)),
            (expr("DoesNotExist", &[]), Ok(false)),
            (expr("In", &[]), Err(())),
            (expr("Near", &["x"]), Err(())),
        ];
        for (selector, expected) in cases {
            let got = Selector::new(selector).map(|s| s.matches(Some(&labels)));
            assert_eq!(got.map_err(|_| ()), *expected, "{selector:?}");
        }
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let now: Timestamp = "2025-01-01T00:01:00Z".parse().unwrap();
        let pod = |ready: bool, since: &str| Pod {
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(since.parse().unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_available(&pod(true, "2025-01-01T00:00:59Z"), 0, now));
        assert!(is_available(&pod(true, "2025-01-01T00:00:00Z"), 30, now));
        assert!(!is_available(&pod(true, "2025-01-01T00:00:50Z"), 30, now));
        assert!(!is_available(&pod(false, "2025-01-01T00:00:00Z"), 0, now));
    }

    #[test]
    fn percentages_scale_and_round() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled_value(&IntOrString::Int(3), 10, true), Ok(3));
        assert_eq!(scaled_value(&pct("25%"), 10, true), Ok(3));
        assert_eq!(scaled_value(&pct("25%"), 10, false), Ok(2));
        assert_eq!(scaled_value(&pct("100%"), 7, true), Ok(7));
        assert!(scaled_value(&pct("25"), 10, true).is_err());
    }
}
