//! DELETE and deletecollection, as kube-apiserver's generic store and `rest.BeforeDelete` do
//! them: preconditions, finalizers, and graceful deletion for pods.
//!
//! A DELETE first decides what happens to the stored object ([`plan`]), then either removes it
//! or writes it back with its deletion marks (`metadata.deletionTimestamp`,
//! `metadata.deletionGracePeriodSeconds`), conditional on the version it read; a concurrent
//! writer makes it read and decide again, unless a `resourceVersion` precondition pins the
//! version.
//!
//! Pods are deleted gracefully (the pod strategy's `CheckGracefulDelete`): a pod bound to a node
//! and not yet `Succeeded` or `Failed` is only marked, `deletionTimestamp` = now + grace, where
//! the grace is the request's `gracePeriodSeconds` or else the pod's
//! `spec.terminationGracePeriodSeconds`. A later DELETE may only shorten the grace (the
//! timestamp moves earlier, never later); the node agent's grace-0 DELETE removes the pod. An
//! unbound or finished pod, or grace 0, is removed at once. Finalizers always keep the object
//! until an update empties them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
use serde::Deserialize as _;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::handlers::{
    dry_run, json_response, rfc3339, with_version, write_error, Filter, Query, Target,
};
use super::resources::Resource;
use super::status::ApiError;
use super::validation::FieldError;
use super::{admission, AppState};
use crate::store::{self, KeyValue, RangeRequest};

/// How many times a DELETE reads and decides again after a concurrent write.
const ATTEMPTS: usize = 5;

/// What one DELETE asks for, from its DeleteOptions (body) or, without a body, its query.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct DeleteRequest {
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    pub dry_run: bool,
    /// The DeleteOptions as sent, for the propagation policy (`propagation::before_delete`).
    pub options: Value,
}

impl DeleteRequest {
    /// Reads DeleteOptions from `body`, or from the query parameters when the body is empty, as
    /// kube-apiserver does; `dryRun=All` in either makes it a dry run.
    pub(super) fn parse(
        r: &Resource,
        name: &str,
        body: &[u8],
        query: &Query,
    ) -> Result<Self, ApiError> {
        let options: Value = if body.is_empty() {
            options_from_query(query)?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        Self::from_options(r, name, &options, dry_run(query))
    }

    /// Checks DeleteOptions as kube-apiserver does (a known propagation policy, not both it and
    /// `orphanDependents`, `dryRun` only `All`, a grace of at least zero): 422 naming the
    /// object otherwise. (The policies' effects on dependents need the garbage collector.)
    pub(super) fn from_options(
        r: &Resource,
        name: &str,
        options: &Value,
        query_dry_run: bool,
    ) -> Result<Self, ApiError> {
        let typed = DeleteOptions::deserialize(options)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        let mut errors = Vec::new();
        if let Some(policy) = typed.propagation_policy.as_deref() {
            if !matches!(policy, "Orphan" | "Background" | "Foreground") {
                errors.push(FieldError {
                    field: "propagationPolicy".into(),
                    reason: "FieldValueNotSupported",
                    message: format!(
                        "Unsupported value: {policy:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
                    ),
                });
            }
        }
        if typed.orphan_dependents.is_some() && typed.propagation_policy.is_some() {
            errors.push(FieldError {
                field: "propagationPolicy".into(),
                reason: "FieldValueInvalid",
                message:
                    "Invalid value: \"\": orphanDependents and deletionPropagation cannot be both set"
                        .into(),
            });
        }
        if typed.grace_period_seconds.is_some_and(|g| g < 0) {
            errors.push(FieldError {
                field: "gracePeriodSeconds".into(),
                reason: "FieldValueInvalid",
                message: "Invalid value: must be greater than or equal to 0".into(),
            });
        }
        for value in typed.dry_run.iter().flatten() {
            if value != "All" {
                errors.push(FieldError {
                    field: "dryRun".into(),
                    reason: "FieldValueNotSupported",
                    message: format!("Unsupported value: {value:?}: supported values: \"All\""),
                });
            }
        }
        if !errors.is_empty() {
            return Err(admission::invalid(r, name, &errors));
        }
        let preconditions = typed.preconditions.unwrap_or_default();
        Ok(Self {
            grace: typed.grace_period_seconds,
            uid: preconditions.uid.filter(|u| !u.is_empty()),
            resource_version: preconditions.resource_version.filter(|v| !v.is_empty()),
            dry_run: query_dry_run || typed.dry_run.is_some_and(|d| !d.is_empty()),
            options: options.clone(),
        })
    }
}

/// DeleteOptions given as query parameters (`?gracePeriodSeconds=0&propagationPolicy=...`).
fn options_from_query(query: &Query) -> Result<Value, ApiError> {
    let mut options = Map::new();
    if let Some(grace) = query.get("gracePeriodSeconds") {
        let grace: i64 = grace.parse().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds {grace:?} is not a number"))
        })?;
        options.insert("gracePeriodSeconds".into(), json!(grace));
    }
    if let Some(policy) = query.get("propagationPolicy") {
        options.insert("propagationPolicy".into(), json!(policy));
    }
    if let Some(orphan) = query.get("orphanDependents") {
        let orphan: bool = orphan.parse().map_err(|_| {
            ApiError::bad_request(format!("orphanDependents {orphan:?} is not true or false"))
        })?;
        options.insert("orphanDependents".into(), json!(orphan));
    }
    Ok(Value::Object(options))
}

/// What a DELETE does with the stored object, once [`plan`] has (maybe) marked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deletion {
    /// Remove it from the store now.
    Now,
    /// Keep it: write it back if the plan changed it, else leave it as it is.
    Keep,
}

/// Decides a DELETE with grace `requested` of `object` (of `kind`) at `now`, marking the object
/// for deletion where kube-apiserver would: `rest.BeforeDelete` with the pod strategy's
/// `CheckGracefulDelete` for pods, then the generic store's finalizer rule (`markAsDeleting`).
pub(super) fn plan(
    kind: &str,
    object: &mut Value,
    requested: Option<i64>,
    now: OffsetDateTime,
) -> Deletion {
    let has_finalizers = super::propagation::held(kind, object);
    let graceful = if kind == "Pod" {
        graceful_pod(object, requested, now)
    } else {
        None
    };
    match graceful {
        Some(Graceful::Pending) => Deletion::Keep,
        Some(Graceful::Marked(grace)) if grace > 0 || has_finalizers => Deletion::Keep,
        // Grace 0: kube-apiserver writes the marks and deletes right after; Skiff deletes.
        Some(Graceful::Marked(_)) => Deletion::Now,
        None if has_finalizers => {
            mark_deleting(object, now);
            Deletion::Keep
        }
        None => Deletion::Now,
    }
}

/// The outcome of `rest.BeforeDelete` for a graceful kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Graceful {
    /// Already being deleted at least as soon as asked: nothing changes.
    Pending,
    /// Marked (or re-marked earlier) for deletion after this grace, in seconds.
    Marked(i64),
}

/// `rest.BeforeDelete` for a pod; `None` when the deletion is not graceful (the pod is already
/// marked with grace 0, so it goes now).
fn graceful_pod(pod: &mut Value, requested: Option<i64>, now: OffsetDateTime) -> Option<Graceful> {
    // Negative values count as one second on the delete path.
    let requested = requested.map(|g| if g < 0 { 1 } else { g });
    let meta = pod.pointer("/metadata").cloned().unwrap_or_default();
    if let Some(timestamp) = meta.get("deletionTimestamp").and_then(Value::as_str) {
        let current = match meta
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
        {
            None | Some(0) => return None,
            Some(c) if c < 0 => 1,
            Some(c) => c,
        };
        // Only a shorter grace may be given once deletion has started.
        let Some(grace) = requested.filter(|g| *g < current) else {
            return Some(Graceful::Pending);
        };
        let requested_at = OffsetDateTime::parse(timestamp, &Rfc3339)
            .map(|t| t - time::Duration::seconds(current))
            .unwrap_or(now);
        set_marks(pod, requested_at + time::Duration::seconds(grace), grace);
        return Some(Graceful::Marked(grace));
    }
    let spec_grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(30);
    let mut grace = requested.unwrap_or(spec_grace).max(0);
    let unbound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if unbound || finished {
        grace = 0;
    }
    set_marks(pod, now + time::Duration::seconds(grace), grace);
    bump_generation(pod);
    Some(Graceful::Marked(grace))
}

fn set_marks(object: &mut Value, at: OffsetDateTime, grace: i64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("deletionTimestamp".into(), json!(rfc3339(at)));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
}

/// The first deletion mark changes what the object's controllers should do: a new generation.
fn bump_generation(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(generation) = meta.get("generation").and_then(Value::as_i64) {
            if generation > 0 {
                meta.insert("generation".into(), json!(generation + 1));
            }
        }
    }
}

/// `markAsDeleting`: an object held by finalizers is marked now (or kept at an earlier mark)
/// with grace 0.
fn mark_deleting(object: &mut Value, now: OffsetDateTime) {
    let existing = object
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .map(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    if existing.is_none() {
        bump_generation(object);
    }
    let at = match existing {
        Some(Some(t)) if t <= now => t,
        _ => now,
    };
    set_marks(object, at, 0);
}

/// Deletes (or marks for deletion) `name` as one DELETE request does, and returns the object as
/// the response shows it. `prepare` changes the object first (the eviction's condition);
/// `stored` is the version the caller already read, if any.
pub(super) async fn delete_object(
    state: &AppState,
    target: &Target,
    name: &str,
    request: &DeleteRequest,
    prepare: Option<fn(&mut Value)>,
    mut stored: Option<KeyValue>,
) -> Result<Value, ApiError> {
    let r = target.resource;
    let key = target.key(name);
    let retry = request.resource_version.is_none();
    for _ in 0..ATTEMPTS {
        let kv = match stored.take() {
            Some(kv) => kv,
            None => match state.store.get(&key).await? {
                Some(kv) => kv,
                None => return Err(ApiError::not_found(r.plural, r.group, name)),
            },
        };
        let current = with_version(&kv.value, kv.mod_revision)?;
        check_preconditions(r, name, request, &current)?;
        let mut object = current.clone();
        if let Some(prepare) = prepare {
            prepare(&mut object);
        }
        super::propagation::before_delete(r, name, &mut object, &request.options)?;
        let action = plan(
            r.kind,
            &mut object,
            request.grace,
            OffsetDateTime::now_utc(),
        );
        if request.dry_run {
            return Ok(object);
        }
        let written = match action {
            Deletion::Keep if object == current => return Ok(current),
            Deletion::Keep => {
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                let bytes = serde_json::to_vec(&object)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                state
                    .store
                    .update(&key, bytes.into(), Some(kv.mod_revision))
                    .await
                    .map(|kv| with_version(&kv.value, kv.mod_revision))
            }
            Deletion::Now => state
                .store
                .delete(&key, Some(kv.mod_revision))
                .await
                .map(|deleted| {
                    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.insert(
                            "resourceVersion".into(),
                            json!(deleted.mod_revision.to_string()),
                        );
                    }
                    Ok(object)
                }),
        };
        match written {
            Ok(shown) => {
                if action == Deletion::Now {
                    admission::release(state, &admission::held(r, &current)).await;
                }
                return shown;
            }
            Err(store::Error::Conflict { .. }) if retry => continue,
            Err(e) => return Err(write_error(r, name, e)),
        }
    }
    Err(ApiError::conflict(r.plural, r.group, name))
}

/// `preconditions.uid` and `preconditions.resourceVersion` against the stored object: 409,
/// worded as `rest.BeforeDelete` words it.
fn check_preconditions(
    r: &Resource,
    name: &str,
    request: &DeleteRequest,
    current: &Value,
) -> Result<(), ApiError> {
    let checks = [
        (
            "UID",
            "/metadata/uid",
            request.uid.as_deref(),
            "deleted and then recreated",
        ),
        (
            "ResourceVersion",
            "/metadata/resourceVersion",
            request.resource_version.as_deref(),
            "modified",
        ),
    ];
    for (what, pointer, wanted, happened) in checks {
        let Some(wanted) = wanted else { continue };
        let found = current
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default();
        if found != wanted {
            return Err(ApiError::conflict_because(
                r.kind,
                r.group,
                name,
                &format!(
                    "the {what} in the precondition ({wanted}) does not match the {what} in \
                     record ({found}). The object might have been {happened}"
                ),
            ));
        }
    }
    Ok(())
}

/// `DELETE <collection>/<name>`: 200 with the object, gone or marked for deletion.
pub(super) async fn delete(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let request = DeleteRequest::parse(target.resource, &name, &body, &query)?;
    let shown = delete_object(&state, &target, &name, &request, None, None).await?;
    Ok(json_response(StatusCode::OK, &shown))
}

/// `DELETE <collection>`: every object the selectors match is deleted as one DELETE with the
/// request's options would delete it (so pods are deleted gracefully); the answer lists them.
pub(super) async fn delete_collection(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let filter = Filter::from_query(r, &query)?;
    let request = DeleteRequest::parse(r, "", &body, &query)?;
    let page = state
        .store
        .range(RangeRequest {
            prefix: target.prefix(),
            ..Default::default()
        })
        .await?;
    let mut deleted = Vec::new();
    for kv in page.kvs {
        let object = with_version(&kv.value, kv.mod_revision)?;
        if !filter.matches(&object) {
            continue;
        }
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match delete_object(&state, &target, &name, &request, None, Some(kv)).await {
            Ok(shown) => deleted.push(shown),
            Err(e) if e.code == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": deleted,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2025-05-01T10:00:00Z";

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse(NOW, &Rfc3339).unwrap()
    }

    fn pod(spec: Value, status: Value, meta: Value) -> Value {
        let mut metadata = json!({"name": "p", "namespace": "default", "generation": 1});
        for (k, v) in meta.as_object().cloned().unwrap_or_default() {
            metadata[k] = v;
        }
        json!({"kind": "Pod", "metadata": metadata, "spec": spec, "status": status})
    }

    fn bound() -> Value {
        json!({"nodeName": "n1", "terminationGracePeriodSeconds": 30})
    }

    /// (deletionTimestamp, deletionGracePeriodSeconds, generation) after the plan.
    type Marks = (Option<&'static str>, Option<i64>, i64);

    fn check(kind: &str, mut object: Value, grace: Option<i64>, expected: (Deletion, Marks)) {
        let before = object.clone();
        let action = plan(kind, &mut object, grace, now());
        let marks = (
            object
                .pointer("/metadata/deletionTimestamp")
                .and_then(Value::as_str)
                .map(str::to_string),
            object
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64),
            object
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        );
        let (want_action, (want_at, want_grace, want_generation)) = expected;
        assert_eq!(
            (action, marks),
            (
                want_action,
                (want_at.map(str::to_string), want_grace, want_generation)
            ),
            "{kind} {before} with grace {grace:?}"
        );
    }

    #[test]
    fn deletion_plans_follow_kube_apiserver() {
        use Deletion::{Keep, Now};
        let running = json!({"phase": "Running"});
        let none = json!({});
        // A bound, running pod: marked with the requested grace, else the pod's own.
        check(
            "Pod",
            pod(bound(), running.clone(), none.clone()),
            None,
            (Keep, (Some("2025-05-01T10:00:30Z"), Some(30), 2)),
        );
        check(
            "Pod",
            pod(bound(), running.clone(), none.clone()),
            Some(5),
            (Keep, (Some("2025-05-01T10:00:05Z"), Some(5), 2)),
        );
        check(
            "Pod",
            pod(
                json!({"nodeName": "n1", "terminationGracePeriodSeconds": 7}),
                running.clone(),
                none.clone(),
            ),
            None,
            (Keep, (Some("2025-05-01T10:00:07Z"), Some(7), 2)),
        );
        check(
            "Pod",
            pod(json!({"nodeName": "n1"}), running.clone(), none.clone()),
            None,
            (Keep, (Some("2025-05-01T10:00:30Z"), Some(30), 2)),
        );
        // Grace 0, unbound or finished: now.
        check(
            "Pod",
            pod(bound(), running.clone(), none.clone()),
            Some(0),
            (Now, (Some(NOW), Some(0), 2)),
        );
        check(
            "Pod",
            pod(
                json!({"terminationGracePeriodSeconds": 30}),
                none.clone(),
                none.clone(),
            ),
            None,
            (Now, (Some(NOW), Some(0), 2)),
        );
        check(
            "Pod",
            pod(json!({"nodeName": ""}), none.clone(), none.clone()),
            Some(10),
            (Now, (Some(NOW), Some(0), 2)),
        );
        check(
            "Pod",
            pod(bound(), json!({"phase": "Succeeded"}), none.clone()),
            None,
            (Now, (Some(NOW), Some(0), 2)),
        );
        check(
            "Pod",
            pod(bound(), json!({"phase": "Failed"}), none.clone()),
            Some(20),
            (Now, (Some(NOW), Some(0), 2)),
        );
        // Finalizers hold even a grace-0 pod.
        check(
            "Pod",
            pod(bound(), running.clone(), json!({"finalizers": ["x/y"]})),
            Some(0),
            (Keep, (Some(NOW), Some(0), 2)),
        );
        // Already being deleted: only a shorter grace moves the mark, earlier.
        let deleting = json!({"deletionTimestamp": "2025-05-01T10:00:20Z", "deletionGracePeriodSeconds": 30, "generation": 2});
        check(
            "Pod",
            pod(bound(), running.clone(), deleting.clone()),
            None,
            (Keep, (Some("2025-05-01T10:00:20Z"), Some(30), 2)),
        );
        check(
            "Pod",
            pod(bound(), running.clone(), deleting.clone()),
            Some(30),
            (Keep, (Some("2025-05-01T10:00:20Z"), Some(30), 2)),
        );
        check(
            "Pod",
            pod(bound(), running.clone(), deleting.clone()),
            Some(60),
            (Keep, (Some("2025-05-01T10:00:20Z"), Some(30), 2)),
        );
        check(
            "Pod",
            pod(bound(), running.clone(), deleting.clone()),
            Some(10),
            (Keep, (Some("2025-05-01T10:00:00Z"), Some(10), 2)),
        );
        check(
            "Pod",
            pod(bound(), running.clone(), deleting.clone()),
            Some(0),
            (Now, (Some("2025-05-01T09:59:50Z"), Some(0), 2)),
        );
        // A pod already marked with grace 0 (its delete failed half way) goes now.
        let zero = json!({"deletionTimestamp": "2025-05-01T09:00:00Z", "deletionGracePeriodSeconds": 0, "generation": 2});
        check(
            "Pod",
            pod(bound(), running.clone(), zero.clone()),
            None,
            (Now, (Some("2025-05-01T09:00:00Z"), Some(0), 2)),
        );
        // Other kinds: now, or marked now with grace 0 while finalizers hold them.
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c", "generation": 1}});
        check("ConfigMap", cm.clone(), Some(30), (Now, (None, None, 1)));
        let held = json!({"kind": "ConfigMap", "metadata": {"name": "c", "generation": 1, "finalizers": ["f"]}});
        check("ConfigMap", held, None, (Keep, (Some(NOW), Some(0), 2)));
        let marked = json!({"kind": "ConfigMap", "metadata": {"name": "c", "generation": 2, "finalizers": ["f"],
            "deletionTimestamp": "2025-05-01T09:00:00Z", "deletionGracePeriodSeconds": 0}});
        check(
            "ConfigMap",
            marked,
            None,
            (Keep, (Some("2025-05-01T09:00:00Z"), Some(0), 2)),
        );
    }

    #[test]
    fn delete_options_come_from_the_body_or_the_query() {
        let pods = super::super::resources::find("", "v1", "pods").unwrap();
        let query = |pairs: &[(&str, &str)]| -> Query {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let parse = |body: &str, q: Query| DeleteRequest::parse(pods, "p", body.as_bytes(), &q);
        assert_eq!(
            parse("", query(&[])).unwrap(),
            DeleteRequest {
                options: json!({}),
                ..Default::default()
            }
        );
        assert_eq!(
            parse("", query(&[("gracePeriodSeconds", "0")]))
                .unwrap()
                .grace,
            Some(0)
        );
        let full = parse(
            r#"{"gracePeriodSeconds": 5, "preconditions": {"uid": "u1", "resourceVersion": "7"}, "dryRun": ["All"]}"#,
            query(&[]),
        )
        .unwrap();
        assert_eq!(
            full,
            DeleteRequest {
                grace: Some(5),
                uid: Some("u1".into()),
                resource_version: Some("7".into()),
                dry_run: true,
                options: full.options.clone(),
            }
        );
        assert_eq!(full.options["gracePeriodSeconds"], 5);
        assert!(parse("", query(&[("dryRun", "All")])).unwrap().dry_run);
        let code = |body: &str, q: Query| parse(body, q).unwrap_err().code.as_u16();
        assert_eq!(code("", query(&[("gracePeriodSeconds", "soon")])), 400);
        assert_eq!(code(r#"{"gracePeriodSeconds": -1}"#, query(&[])), 422);
        assert_eq!(code(r#"{"dryRun": ["Some"]}"#, query(&[])), 422);
        assert_eq!(code(r#"{"propagationPolicy": "Never"}"#, query(&[])), 422);
        assert_eq!(code(r#"{"gracePeriodSeconds": "x"}"#, query(&[])), 400);
    }
}
