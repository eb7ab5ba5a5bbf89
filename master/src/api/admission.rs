//! What happens to an object between decoding and the store, per kind: mutating admission
//! (DefaultTolerationSeconds for pods; ServiceAccount for new pods), validation (422 with field
//! causes) and the Service allocations (cluster IP, node ports).

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

/// Where the ServiceAccount admission mounts the API access volume in every container.
pub const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The API access volume's name prefix; a random 5-character suffix follows.
const SERVICE_ACCOUNT_VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap every namespace gets with the cluster CA (`ca.crt`).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// What the pod's token projection asks for: kube's `WarnOnlyBoundTokenExpirationSeconds`.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 3607;
/// apimachinery's `utilrand.String` alphabet (no vowels, no confusable digits).
const RANDOM_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A random 5-character name suffix, as `utilrand.String(5)`.
fn random_suffix() -> String {
    let mut bytes = [0u8; 5];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy: a fixed suffix is still a valid, unique-per-pod volume name.
        return "xxxxx".into();
    }
    bytes
        .iter()
        .map(|b| RANDOM_ALPHABET[*b as usize % RANDOM_ALPHABET.len()] as char)
        .collect()
}

/// kube-apiserver's ServiceAccount admission plugin, on pod creates (mirror pods excepted):
/// `spec.serviceAccountName` defaults to `default`, a named account must exist (403
/// otherwise; a missing `default` is let through, since its controller may not have made it
/// yet), its `imagePullSecrets` are copied to a pod without any, and unless the pod or the
/// account sets `automountServiceAccountToken: false` every container mounts the projected
/// `kube-api-access-<random>` volume at [`SERVICE_ACCOUNT_MOUNT_PATH`].
pub(super) async fn service_account(
    state: &AppState,
    r: &Resource,
    pod: &mut Value,
) -> Result<(), ApiError> {
    if r.kind != "Pod" || !r.group.is_empty() {
        return Ok(());
    }
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return Ok(());
    }
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let account = match spec.get("serviceAccountName").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => "default".to_string(),
    };
    spec.insert("serviceAccountName".into(), json!(account));
    spec.insert("serviceAccount".into(), json!(account));
    let key = crate::store::object_key("serviceaccounts", Some(&namespace), &account);
    let stored = state
        .store
        .get(&key)
        .await?
        .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok());
    if stored.is_none() && account != "default" {
        let name = name_of(pod).to_string();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "pods \"{name}\" is forbidden: error looking up service account {namespace}/{account}: serviceaccount \"{account}\" not found"
            ),
        )
        .with_details(json!({"name": name, "kind": "pods"})));
    }
    apply_service_account(pod, stored.as_ref(), &random_suffix());
    Ok(())
}

/// The pure part of [`service_account`]: automount decision, the volume, the mounts and the
/// image pull secrets, given the account (if it exists) and the volume's random suffix.
fn apply_service_account(pod: &mut Value, account: Option<&Value>, suffix: &str) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            account
                .and_then(|a| a.get("automountServiceAccountToken"))
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if automount {
        mount_service_account_token(spec, suffix);
    }
    let has_pull_secrets = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let account_secrets = account
        .and_then(|a| a.get("imagePullSecrets"))
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty());
    if let (false, Some(secrets)) = (has_pull_secrets, account_secrets) {
        spec.insert("imagePullSecrets".into(), Value::Array(secrets.clone()));
    }
}

/// kube's `mountServiceAccountToken`: reuses a `kube-api-access-*` volume if the pod has one,
/// mounts it read-only at the token path in every (init) container that has nothing mounted
/// there, and adds the projected volume if some container mounts it.
fn mount_service_account_token(spec: &mut serde_json::Map<String, Value>, suffix: &str) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(SERVICE_ACCOUNT_VOLUME_PREFIX))
        .map(str::to_string);
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{SERVICE_ACCOUNT_VOLUME_PREFIX}{suffix}"));
    let mount =
        json!({"name": volume_name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH});
    let mut needs_volume = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            let Some(mounts) = mounts.as_array_mut() else {
                continue;
            };
            let taken = mounts.iter().any(|m| {
                m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT_PATH)
            });
            if !taken {
                mounts.push(mount.clone());
                needs_volume = true;
            }
        }
    }
    if existing.is_none() && needs_volume {
        let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(volumes) = volumes.as_array_mut() {
            volumes.push(json!({
                "name": volume_name,
                "projected": {
                    "defaultMode": 420,
                    "sources": [
                        {"serviceAccountToken": {
                            "path": "token",
                            "expirationSeconds": SERVICE_ACCOUNT_TOKEN_SECONDS,
                        }},
                        {"configMap": {
                            "name": ROOT_CA_CONFIG_MAP,
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }},
                        {"downwardAPI": {
                            "items": [{
                                "path": "namespace",
                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                            }],
                        }},
                    ],
                },
            }));
        }
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

    #[test]
    fn service_account_admission_table() {
        let volume = json!({
            "name": "kube-api-access-abcde",
            "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]},
        });
        let mount = |name: &str| {
            json!({"name": name, "readOnly": true,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
        };
        let check = |name: &str, spec: Value, account: Option<Value>, expected: Value| {
            let mut pod = json!({"spec": spec});
            apply_service_account(&mut pod, account.as_ref(), "abcde");
            assert_eq!(pod["spec"], expected, "{name}");
        };
        check(
            "one container gets the volume",
            json!({"containers": [{"name": "c"}]}),
            None,
            json!({"containers": [{"name": "c", "volumeMounts": [mount("kube-api-access-abcde")]}],
                "volumes": [volume]}),
        );
        check(
            "init containers too, after the pod's own volumes",
            json!({"initContainers": [{"name": "i"}], "containers": [{"name": "c"}],
                "volumes": [{"name": "data", "emptyDir": {}}]}),
            Some(json!({"metadata": {"name": "default"}})),
            json!({"initContainers": [{"name": "i", "volumeMounts": [mount("kube-api-access-abcde")]}],
                "containers": [{"name": "c", "volumeMounts": [mount("kube-api-access-abcde")]}],
                "volumes": [{"name": "data", "emptyDir": {}}, volume]}),
        );
        check(
            "the pod opts out",
            json!({"automountServiceAccountToken": false, "containers": [{"name": "c"}]}),
            None,
            json!({"automountServiceAccountToken": false, "containers": [{"name": "c"}]}),
        );
        check(
            "the account opts out",
            json!({"containers": [{"name": "c"}]}),
            Some(json!({"automountServiceAccountToken": false})),
            json!({"containers": [{"name": "c"}]}),
        );
        check(
            "the pod opts in over the account",
            json!({"automountServiceAccountToken": true, "containers": [{"name": "c"}]}),
            Some(json!({"automountServiceAccountToken": false})),
            json!({"automountServiceAccountToken": true,
                "containers": [{"name": "c", "volumeMounts": [mount("kube-api-access-abcde")]}],
                "volumes": [volume]}),
        );
        let own =
            json!({"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
        check(
            "a container with its own mount at the path keeps it; no volume when none needs it",
            json!({"containers": [{"name": "c", "volumeMounts": [own]}]}),
            None,
            json!({"containers": [{"name": "c", "volumeMounts": [own]}]}),
        );
        check(
            "an existing kube-api-access volume is reused, not added again",
            json!({"containers": [{"name": "c"}], "volumes": [{"name": "kube-api-access-xyz12", "emptyDir": {}}]}),
            None,
            json!({"containers": [{"name": "c", "volumeMounts": [mount("kube-api-access-xyz12")]}],
                "volumes": [{"name": "kube-api-access-xyz12", "emptyDir": {}}]}),
        );
        check(
            "the account's image pull secrets go to a pod without any",
            json!({"automountServiceAccountToken": false, "containers": []}),
            Some(json!({"imagePullSecrets": [{"name": "registry"}]})),
            json!({"automountServiceAccountToken": false, "containers": [],
                "imagePullSecrets": [{"name": "registry"}]}),
        );
        check(
            "but not to a pod with its own",
            json!({"automountServiceAccountToken": false, "containers": [],
                "imagePullSecrets": [{"name": "mine"}]}),
            Some(json!({"imagePullSecrets": [{"name": "registry"}]})),
            json!({"automountServiceAccountToken": false, "containers": [],
                "imagePullSecrets": [{"name": "mine"}]}),
        );
    }

    #[test]
    fn random_suffixes_are_kube_style() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| RANDOM_ALPHABET.contains(&b)), "{s}");
    }
}
