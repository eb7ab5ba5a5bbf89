//! What happens to an object between decoding and the store, per kind: mutating admission
//! (DefaultTolerationSeconds for pods), validation (422 with field causes) and the Service
//! allocations (cluster IP, node ports).

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::allocator::{AllocError, Allocation};
use super::resources::Resource;
use super::status::ApiError;
use super::validation::{self, FieldError};
use super::AppState;

/// kube-apiserver's DefaultTolerationSeconds admission plugin: how long a pod stays on a node
/// that is not ready or unreachable (`--default-not-ready-toleration-seconds`,
/// `--default-unreachable-toleration-seconds`) unless it says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultTolerations {
    pub not_ready_seconds: i64,
    pub unreachable_seconds: i64,
}

impl Default for DefaultTolerations {
    fn default() -> Self {
        Self {
            not_ready_seconds: 300,
            unreachable_seconds: 300,
        }
    }
}

impl DefaultTolerations {
    /// Adds `node.kubernetes.io/not-ready:NoExecute` and `node.kubernetes.io/unreachable:NoExecute`
    /// tolerations (operator `Exists`, with the configured `tolerationSeconds`) to a pod that
    /// tolerates neither taint already: a toleration with that key or no key, and effect
    /// `NoExecute` or no effect, counts.
    pub fn apply(&self, pod: &mut Value) {
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        let Some(list) = tolerations.as_array_mut() else {
            return;
        };
        for (key, seconds) in [
            ("node.kubernetes.io/not-ready", self.not_ready_seconds),
            ("node.kubernetes.io/unreachable", self.unreachable_seconds),
        ] {
            let field = |t: &Value, name: &str| {
                t.get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let tolerated = list.iter().any(|t| {
                let (k, effect) = (field(t, "key"), field(t, "effect"));
                (k.is_empty() || k == key) && (effect.is_empty() || effect == "NoExecute")
            });
            if !tolerated {
                list.push(json!({
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": seconds,
                }));
            }
        }
    }
}

/// Mutating admission, run after defaulting and before validation on creates and updates of an
/// object itself (not of its subresources).
pub(super) fn mutate(state: &AppState, r: &Resource, object: &mut Value) {
    if r.kind == "Pod" && r.group.is_empty() {
        state.default_tolerations.apply(object);
    }
}

/// Decodes and validates `object` (an update when `old` is given): 400 when it is not the
/// kind's shape, 422 `Invalid` with one cause per field error.
pub(super) fn validate(r: &Resource, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match validation::validate(r.kind, object, old) {
        Err(e) => Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            r.kind, r.version, r.kind
        ))),
        Ok(errors) if errors.is_empty() => Ok(()),
        Ok(errors) => Err(invalid(r, name, &errors)),
    }
}

/// 422 Invalid for an object of `r`.
pub(super) fn invalid(r: &Resource, name: &str, errors: &[FieldError]) -> ApiError {
    ApiError::invalid(r.kind, r.group, name, errors)
}

fn alloc_error(r: &Resource, name: &str, e: AllocError) -> ApiError {
    match e {
        AllocError::Invalid { field, message } => invalid(
            r,
            name,
            &[FieldError {
                field,
                reason: "FieldValueInvalid",
                message,
            }],
        ),
        AllocError::AlreadyAllocated { field, message } => invalid(
            r,
            name,
            &[FieldError {
                field,
                reason: "FieldValueInvalid",
                message,
            }],
        ),
        AllocError::Full(message) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Internal error occurred: failed to allocate a serviceIP: {message}"),
        ),
        AllocError::Store(e) => e.into(),
    }
}

fn name_of(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Takes a new Service's cluster IP and node ports; other kinds take nothing.
pub(super) async fn allocate(
    state: &AppState,
    r: &Resource,
    object: &mut Value,
) -> Result<Allocation, ApiError> {
    if r.kind != "Service" {
        return Ok(Allocation::default());
    }
    let name = name_of(object).to_string();
    state
        .allocator
        .allocate(object)
        .await
        .map_err(|e| alloc_error(r, &name, e))
}

/// For a Service update: what the new version takes, and what to free once it is written.
pub(super) async fn reallocate(
    state: &AppState,
    r: &Resource,
    old: &Value,
    new: &mut Value,
) -> Result<(Allocation, Allocation), ApiError> {
    if r.kind != "Service" {
        return Ok(Default::default());
    }
    let name = name_of(new).to_string();
    state
        .allocator
        .reallocate(old, new)
        .await
        .map_err(|e| alloc_error(r, &name, e))
}

/// Frees allocations (after a failed write, or for a deleted Service). A failure is logged: the
/// startup repair frees what is left behind.
pub(super) async fn release(state: &AppState, allocation: &Allocation) {
    if allocation.is_empty() {
        return;
    }
    if let Err(e) = state.allocator.release(allocation).await {
        tracing::warn!(error = %e, ?allocation, "cannot release service allocations; the next start repairs them");
    }
}

/// What a stored object holds, if it is a Service.
pub(super) fn held(r: &Resource, object: &Value) -> Allocation {
    if r.kind == "Service" {
        super::allocator::allocation_of(object)
    } else {
        Allocation::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(tolerations: Value, expected: Value) {
        let config = DefaultTolerations {
            not_ready_seconds: 300,
            unreachable_seconds: 60,
        };
        let mut pod = json!({"spec": {"containers": [], "tolerations": tolerations.clone()}});
        if tolerations.is_null() {
            pod["spec"].as_object_mut().unwrap().remove("tolerations");
        }
        config.apply(&mut pod);
        assert_eq!(pod["spec"]["tolerations"], expected, "{tolerations}");
    }

    #[test]
    fn default_tolerations_are_added_unless_the_pod_tolerates_the_taint() {
        let not_ready = json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300});
        let unreachable = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 60});
        let other = json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"});
        check(Value::Null, json!([not_ready, unreachable]));
        check(json!([]), json!([not_ready, unreachable]));
        check(json!([other]), json!([other, not_ready, unreachable]));
        // A toleration for one taint, with any seconds, keeps only the other default.
        let own = json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10});
        check(json!([own]), json!([own, unreachable]));
        let forever = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"});
        check(json!([forever]), json!([forever, not_ready]));
        // No effect means every effect; no key (Exists) means every taint.
        let any_effect = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists"});
        check(json!([any_effect]), json!([any_effect, not_ready]));
        let everything = json!({"operator": "Exists"});
        check(json!([everything]), json!([everything]));
        let all_no_execute = json!({"operator": "Exists", "effect": "NoExecute"});
        check(json!([all_no_execute]), json!([all_no_execute]));
        // Another effect for the same key does not count.
        let no_schedule = json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"});
        check(
            json!([no_schedule]),
            json!([no_schedule, not_ready, unreachable]),
        );
        // Both present already: unchanged.
        check(
            json!([unreachable, not_ready]),
            json!([unreachable, not_ready]),
        );
    }

    #[test]
    fn only_pod_specs_are_touched() {
        let mut not_a_pod = json!({"spec": "nonsense"});
        DefaultTolerations::default().apply(&mut not_a_pod);
        assert_eq!(not_a_pod, json!({"spec": "nonsense"}));
        let mut no_spec = json!({"metadata": {}});
        DefaultTolerations::default().apply(&mut no_spec);
        assert_eq!(no_spec, json!({"metadata": {}}));
    }
}
