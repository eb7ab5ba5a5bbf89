//! What a DELETE leaves for the garbage collector and the namespace controller, as
//! kube-apiserver's generic store (`deletionFinalizersForGarbageCollection`) and namespace
//! storage do it:
//!
//! - `propagationPolicy` (or `orphanDependents`, or the kind's default) becomes a finalizer:
//!   `Foreground` adds `foregroundDeletion`, `Orphan` adds `orphan`, `Background` removes both.
//!   An object left with finalizers is only marked for deletion; the garbage collector removes
//!   its finalizer once the dependents are deleted (foreground) or released (orphan).
//! - A Namespace is held by `spec.finalizers` (`kubernetes`) as well: its DELETE marks it
//!   `Terminating`; the namespace controller empties it and then `PUT .../finalize` drops the
//!   `kubernetes` finalizer, which removes it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::handlers::{self, json_response, parse_object, with_version, Query, Target};
use super::resources::Resource;
use super::status::ApiError;
use super::{admission, AppState};

/// The finalizer that keeps an owner until its dependents are gone.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer that keeps an owner until its dependents no longer refer to it.
pub const ORPHAN: &str = "orphan";

/// What a DELETE does to the dependents of the object it deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

/// The policy of a DELETE of `kind` with these DeleteOptions on an object with these finalizers:
/// the request's choice, else a GC finalizer already there, else the kind's default (batch/v1
/// Jobs orphan for backward compatibility; everything else deletes dependents in background).
pub fn policy(kind: &str, options: &Value, finalizers: &[&str]) -> Propagation {
    if let Some(orphan) = options.get("orphanDependents").and_then(Value::as_bool) {
        return if orphan {
            Propagation::Orphan
        } else {
            Propagation::Background
        };
    }
    match options.get("propagationPolicy").and_then(Value::as_str) {
        Some("Orphan") => return Propagation::Orphan,
        Some("Background") => return Propagation::Background,
        Some("Foreground") => return Propagation::Foreground,
        _ => {}
    }
    for f in finalizers {
        match *f {
            ORPHAN => return Propagation::Orphan,
            FOREGROUND => return Propagation::Foreground,
            _ => {}
        }
    }
    if kind == "Job" {
        Propagation::Orphan
    } else {
        Propagation::Background
    }
}

/// Prepares `object` for a DELETE: sets its GC finalizer per the policy; a Namespace turns
/// `Terminating`, and a second DELETE of one still held by `spec.finalizers` is a 409, as
/// kube-apiserver answers it.
pub fn before_delete(
    r: &Resource,
    name: &str,
    object: &mut Value,
    options: &Value,
) -> Result<(), ApiError> {
    if r.kind == "Namespace" {
        let terminating = object.pointer("/metadata/deletionTimestamp").is_some();
        if terminating && spec_finalizers(object) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on namespaces \"{name}\": The system is ensuring \
                     all content is removed from this namespace.  Upon completion, this namespace \
                     will automatically be purged by the system."
                ),
            )
            .with_details(json!({"name": name, "kind": "namespaces"})));
        }
        if spec_finalizers(object) {
            if let Some(o) = object.as_object_mut() {
                let status = o.entry("status").or_insert_with(|| json!({}));
                if let Some(status) = status.as_object_mut() {
                    status.insert("phase".into(), json!("Terminating"));
                }
            }
        }
    }
    set_gc_finalizer(r.kind, object, options);
    Ok(())
}

/// Rewrites `metadata.finalizers` so that exactly the policy's GC finalizer (if any) is there.
fn set_gc_finalizer(kind: &str, object: &mut Value, options: &Value) {
    let current: Vec<String> = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let refs: Vec<&str> = current.iter().map(String::as_str).collect();
    let mut wanted: Vec<&str> = refs
        .iter()
        .copied()
        .filter(|f| *f != ORPHAN && *f != FOREGROUND)
        .collect();
    match policy(kind, options, &refs) {
        Propagation::Orphan => wanted.push(ORPHAN),
        Propagation::Foreground => wanted.push(FOREGROUND),
        Propagation::Background => {}
    }
    let same = wanted.len() == refs.len() && wanted.iter().all(|f| refs.contains(f));
    if same {
        return;
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if wanted.is_empty() {
            meta.remove("finalizers");
        } else {
            meta.insert("finalizers".into(), json!(wanted));
        }
    }
}

fn spec_finalizers(object: &Value) -> bool {
    object
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Whether something still holds `object` from removal: `metadata.finalizers`, or for a
/// Namespace also `spec.finalizers`.
pub fn held(kind: &str, object: &Value) -> bool {
    let finalizers = object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    finalizers || (kind == "Namespace" && spec_finalizers(object))
}

/// `PUT /api/v1/namespaces/<name>/finalize`: replaces only `spec.finalizers`; a terminating
/// namespace left with no finalizers is removed.
pub async fn finalize(
    state: Arc<AppState>,
    target: &Target,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let incoming = parse_object(&body)?;
    let Some(kv) = state.store.get(&target.key(&name)).await? else {
        return Err(ApiError::not_found(r.plural, r.group, &name));
    };
    let sent_version = incoming
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty());
    if sent_version.is_some_and(|v| v != kv.mod_revision.to_string()) {
        return Err(ApiError::conflict(r.plural, r.group, &name));
    }
    let current: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    let mut object = current.clone();
    let finalizers = incoming
        .get("spec")
        .and_then(|s| s.get("finalizers"))
        .cloned()
        .unwrap_or_else(|| json!([]));
    if let Some(o) = object.as_object_mut() {
        let spec = o.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("finalizers".into(), finalizers);
        }
    }
    admission::validate(r, &object, Some(&current))?;
    if handlers::dry_run(query) {
        return Ok(json_response(StatusCode::OK, &object));
    }
    let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
    let bytes = serde_json::to_vec(&object).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key = target.key(&name);
    let written = if deleting && !held(r.kind, &object) {
        state.store.delete(&key, Some(kv.mod_revision)).await
    } else {
        state
            .store
            .update(&key, bytes.clone().into(), Some(kv.mod_revision))
            .await
    };
    match written {
        Ok(kv) if deleting && !held(r.kind, &object) => Ok(json_response(
            StatusCode::OK,
            &with_version(&bytes, kv.mod_revision)?,
        )),
        Ok(kv) => Ok(json_response(
            StatusCode::OK,
            &with_version(&kv.value, kv.mod_revision)?,
        )),
        Err(e) => Err(handlers::write_error(r, &name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: &str, options: Value, finalizers: Value, expected: Option<Value>) {
        let mut object = json!({"metadata": {"name": "x"}});
        if !finalizers.is_null() {
            object["metadata"]["finalizers"] = finalizers.clone();
        }
        set_gc_finalizer(kind, &mut object, &options);
        assert_eq!(
            object.pointer("/metadata/finalizers").cloned(),
            expected,
            "{kind} {options} {finalizers}"
        );
    }

    #[test]
    fn delete_policies_become_finalizers() {
        let none = Value::Null;
        check("ReplicaSet", json!({}), none.clone(), None);
        check(
            "ReplicaSet",
            json!({"propagationPolicy": "Foreground"}),
            none.clone(),
            Some(json!(["foregroundDeletion"])),
        );
        check(
            "ReplicaSet",
            json!({"propagationPolicy": "Orphan"}),
            json!(["example.com/keep"]),
            Some(json!(["example.com/keep", "orphan"])),
        );
        check(
            "ReplicaSet",
            json!({"orphanDependents": true}),
            none.clone(),
            Some(json!(["orphan"])),
        );
        // A later Background DELETE drops an earlier GC finalizer; the others stay.
        check(
            "Deployment",
            json!({"propagationPolicy": "Background"}),
            json!(["orphan", "example.com/keep"]),
            Some(json!(["example.com/keep"])),
        );
        check(
            "Deployment",
            json!({"propagationPolicy": "Foreground"}),
            json!(["orphan"]),
            Some(json!(["foregroundDeletion"])),
        );
        // Without a policy an existing GC finalizer stands; batch/v1 Jobs orphan by default.
        check(
            "Pod",
            json!({}),
            json!(["foregroundDeletion"]),
            Some(json!(["foregroundDeletion"])),
        );
        check("Job", json!({}), none.clone(), Some(json!(["orphan"])));
        check(
            "Job",
            json!({"propagationPolicy": "Background"}),
            none,
            None,
        );
    }

    #[test]
    fn namespaces_terminate_and_refuse_a_second_delete() {
        let r = super::super::resources::find("", "v1", "namespaces").unwrap();
        let mut ns = json!({"metadata": {"name": "a"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        before_delete(r, "a", &mut ns, &json!({})).unwrap();
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert!(held("Namespace", &ns));
        ns["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        let err = before_delete(r, "a", &mut ns, &json!({})).unwrap_err();
        assert_eq!(err.code, StatusCode::CONFLICT);
        ns["spec"]["finalizers"] = json!([]);
        assert!(!held("Namespace", &ns));
        before_delete(r, "a", &mut ns, &json!({})).unwrap();
        assert!(!held(
            "ConfigMap",
            &json!({"spec": {"finalizers": ["kubernetes"]}})
        ));
    }
}
