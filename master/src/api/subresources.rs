//! Subresources other than `status`: `scale` (autoscaling/v1 Scale over a workload's
//! `spec.replicas`), `binding` (the scheduler's way to set a pod's node), and the node-proxied
//! ones (`log`, `exec`, …), which answer 503 until the node agent serves them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::handlers::{
    self, dry_run, json_response, now_rfc3339, parse_object, with_version, write_error, Query,
    Target,
};
use super::status::ApiError;
use super::validation::FieldError;
use super::AppState;
use crate::store::{self, Revision};

/// Serves `scale`, `binding` and the node-proxied subresources.
pub async fn handle(
    state: Arc<AppState>,
    method: Method,
    target: Target,
    query: Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let sub = target.subresource.clone().unwrap_or_default();
    match (sub.as_str(), &method) {
        ("scale", &Method::GET) => get_scale(&state, &target).await,
        ("scale", &Method::PUT) => {
            let scale = parse_object(&body)?;
            put_scale(&state, &target, &query, Value::Object(scale), false).await
        }
        ("scale", &Method::PATCH) => patch_scale(&state, &target, &query, headers, body).await,
        ("binding", &Method::POST) => bind(&state, &target, &query, body).await,
        ("finalize", &Method::PUT) => {
            super::propagation::finalize(state, &target, &query, body).await
        }
        ("scale" | "binding" | "finalize", method) => Err(method_not_allowed(method)),
        (sub, _) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!(
                "{}/{sub} is served by the node agent, which this skiff-master cannot reach yet",
                target.resource.plural
            ),
        )),
    }
}

fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource: {method}"),
    )
}

/// The stored parent object and its revision.
async fn load(state: &AppState, target: &Target) -> Result<(Value, Revision), ApiError> {
    let r = target.resource;
    let name = target.name.as_deref().unwrap_or_default();
    let Some(kv) = state.store.get(&target.key(name)).await? else {
        return Err(ApiError::not_found(r.plural, r.group, name));
    };
    Ok((with_version(&kv.value, kv.mod_revision)?, kv.mod_revision))
}

/// A label selector object as the string form Scale's `status.selector` carries.
fn selector_string(selector: Option<&Value>) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
    {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for expr in selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expr.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = expr
            .get("values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match expr.get("operator").and_then(Value::as_str) {
            Some("In") => parts.push(format!("{key} in ({})", values.join(","))),
            Some("NotIn") => parts.push(format!("{key} notin ({})", values.join(","))),
            Some("Exists") => parts.push(key.to_string()),
            Some("DoesNotExist") => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

/// The Scale view of a workload.
fn scale_of(object: &Value) -> Value {
    let meta = object.get("metadata").cloned().unwrap_or_default();
    let mut scale_meta = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            scale_meta.insert(field.into(), v.clone());
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": object.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(object.pointer("/spec/selector")),
        },
    })
}

async fn get_scale(state: &AppState, target: &Target) -> Result<Response, ApiError> {
    let (object, _) = load(state, target).await?;
    Ok(json_response(StatusCode::OK, &scale_of(&object)))
}

/// Writes `scale.spec.replicas` into the workload. A `resourceVersion` in the Scale is a
/// precondition, as for any update; `retry` says a conflict with an unconditioned write may be
/// retried (patches).
async fn put_scale(
    state: &AppState,
    target: &Target,
    query: &Query,
    scale: Value,
    retry: bool,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let replicas = match scale.pointer("/spec/replicas") {
        None => 0,
        Some(v) => match v.as_i64() {
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "Scale",
                    "autoscaling",
                    &name,
                    &[FieldError::invalid_with(
                        "spec.replicas",
                        format!("Invalid value: {v}: must be greater than or equal to 0"),
                    )],
                ))
            }
        },
    };
    let wanted_version = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    for _ in 0..5 {
        let (mut object, revision) = load(state, target).await?;
        if wanted_version
            .as_deref()
            .is_some_and(|v| v != revision.to_string())
        {
            return Err(ApiError::conflict(r.plural, r.group, &name));
        }
        let changed = object.pointer("/spec/replicas").and_then(Value::as_i64) != Some(replicas);
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("replicas".into(), json!(replicas));
        }
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            if changed {
                let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(1);
                meta.insert("generation".into(), json!(generation + 1));
            }
        }
        if dry_run(query) || !changed {
            let mut shown = object;
            if let Some(meta) = shown.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), json!(revision.to_string()));
            }
            return Ok(json_response(StatusCode::OK, &scale_of(&shown)));
        }
        let bytes =
            serde_json::to_vec(&object).map_err(|e| ApiError::bad_request(e.to_string()))?;
        match state
            .store
            .update(&target.key(&name), bytes.into(), Some(revision))
            .await
        {
            Ok(kv) => {
                let stored = with_version(&kv.value, kv.mod_revision)?;
                return Ok(json_response(StatusCode::OK, &scale_of(&stored)));
            }
            Err(store::Error::Conflict { .. }) if retry && wanted_version.is_none() => continue,
            Err(e) => return Err(write_error(r, &name, e)),
        }
    }
    Err(ApiError::conflict(r.plural, r.group, &name))
}

async fn patch_scale(
    state: &AppState,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (object, _) = load(state, target).await?;
    let current = scale_of(&object);
    let patched =
        handlers::apply_patch(headers, &body, &current, "io.k8s.api.autoscaling.v1.Scale")?;
    put_scale(state, target, query, patched, true).await
}

/// `POST pods/<name>/binding`: sets `spec.nodeName` once, and the `PodScheduled` condition.
async fn bind(
    state: &AppState,
    target: &Target,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let binding = parse_object(&body)?;
    let node = binding
        .get("target")
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            &name,
            &[FieldError {
                field: "target.name".into(),
                reason: "FieldValueRequired",
                message: "Required value".into(),
            }],
        ));
    }
    for _ in 0..5 {
        let (mut pod, revision) = load(state, target).await?;
        if let Some(uid) = binding
            .get("metadata")
            .and_then(|m| m.get("uid"))
            .and_then(Value::as_str)
        {
            if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return Err(ApiError::conflict(r.plural, r.group, &name));
            }
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        match pod.pointer("/spec/nodeName").and_then(Value::as_str) {
            Some(existing) if !existing.is_empty() => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{existing}\""
                    ),
                ))
            }
            _ => {}
        }
        if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("nodeName".into(), json!(node));
        }
        set_scheduled(&mut pod);
        if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        if dry_run(query) {
            return Ok(success(StatusCode::CREATED));
        }
        let bytes = serde_json::to_vec(&pod).map_err(|e| ApiError::bad_request(e.to_string()))?;
        match state
            .store
            .update(&target.key(&name), bytes.into(), Some(revision))
            .await
        {
            Ok(_) => return Ok(success(StatusCode::CREATED)),
            Err(store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(write_error(r, &name, e)),
        }
    }
    Err(ApiError::conflict(r.plural, r.group, &name))
}

/// Sets `PodScheduled=True` in a pod's status conditions.
fn set_scheduled(pod: &mut Value) {
    let Some(object) = pod.as_object_mut() else {
        return;
    };
    let status = object
        .entry("status")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(status) = status else {
        return;
    };
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    let Some(list) = conditions.as_array_mut() else {
        return;
    };
    list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
    list.push(json!({
        "type": "PodScheduled",
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": now_rfc3339(),
    }));
    if !status.contains_key("phase") {
        status.insert("phase".into(), json!("Pending"));
    }
}

fn success(code: StatusCode) -> Response {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code.as_u16()}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_render_like_kube() {
        let cases = [
            (json!({"matchLabels": {"app": "web"}}), "app=web"),
            (
                json!({"matchLabels": {"a": "1", "b": "2"}, "matchExpressions": [
                    {"key": "t", "operator": "In", "values": ["x", "y"]},
                    {"key": "u", "operator": "Exists"},
                    {"key": "v", "operator": "DoesNotExist"},
                    {"key": "w", "operator": "NotIn", "values": ["z"]}]}),
                "a=1,b=2,t in (x,y),u,!v,w notin (z)",
            ),
            (json!({}), ""),
            (json!("garbage"), ""),
        ];
        for (selector, expected) in cases {
            assert_eq!(selector_string(Some(&selector)), expected);
        }
    }

    #[test]
    fn scale_view_of_a_deployment() {
        let deployment = json!({
            "metadata": {"name": "web", "namespace": "demo", "uid": "u1", "resourceVersion": "7"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}},
            "status": {"replicas": 2},
        });
        let scale = scale_of(&deployment);
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(scale["status"]["replicas"], 2);
        assert_eq!(scale["status"]["selector"], "app=web");
        assert_eq!(scale["metadata"]["resourceVersion"], "7");
        assert_eq!(scale["apiVersion"], "autoscaling/v1");
        assert_eq!(scale_of(&json!(null))["spec"]["replicas"], 1);
    }

    #[test]
    fn scheduling_sets_one_condition() {
        let mut pod =
            json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False"}]}});
        set_scheduled(&mut pod);
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(pod["status"]["phase"], "Pending");
    }
}
