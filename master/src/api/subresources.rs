//! Subresources other than `status`: `scale` (autoscaling/v1 Scale over a workload's
//! `spec.replicas`), `binding` (the scheduler's way to set a pod's node), `eviction` (a graceful
//! delete through the Eviction API), `token` (handed to [`super::tokens`]). The node-proxied
//! ones (`pods/log`, `pods/exec`, `nodes/proxy`) never reach this module: `api::route` hands
//! them to [`super::proxy`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::deletion::{delete_object, DeleteRequest};
use super::handlers::{
    self, dry_run, json_response, now_rfc3339, parse_object, with_version, write_error, Query,
    Target,
};
use super::status::ApiError;
use super::validation::FieldError;
use super::AppState;
use crate::store::{self, Revision};

/// Serves `scale`, `binding`, `eviction` and the node-proxied subresources.
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
        ("eviction", &Method::POST) => evict(&state, &target, &query, body).await,
        ("token", &Method::POST) => super::tokens::create_token(&state, &target, body).await,
        ("finalize", &Method::PUT) => {
            super::propagation::finalize(state, &target, &query, body).await
        }
        ("scale" | "binding" | "eviction" | "finalize" | "token", method) => {
            Err(method_not_allowed(method))
        }
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

/// Checks a subresource body's `kind` and that its `metadata.name` is the pod's, as
/// kube-apiserver's binding and eviction storage do: 400 otherwise.
fn check_body(body: &Map<String, Value>, kind: &str, name: &str) -> Result<(), ApiError> {
    match body.get("kind") {
        None => {}
        Some(Value::String(k)) if k == kind => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "not a {kind} object: kind {other}"
            )))
        }
    }
    let body_name = body
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in {kind} object"
        )));
    }
    Ok(())
}

/// `POST pods/<name>/binding`, as kube-apiserver's `BindingREST`: sets `spec.nodeName` once,
/// adds the Binding's annotations and the `PodScheduled` condition. A pod already assigned (to
/// any node), being deleted or still gated is a 409 Conflict; the Binding's `metadata.uid` and
/// `metadata.resourceVersion` are preconditions.
async fn bind(
    state: &AppState,
    target: &Target,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let binding = parse_object(&body)?;
    check_body(&binding, "Binding", &name)?;
    let binding = Value::Object(binding);
    let field = |pointer: &str| {
        binding
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let node = field("/target/name").unwrap_or_default();
    let mut errors = Vec::new();
    if let Some(kind) = field("/target/kind").filter(|k| k != "Node") {
        errors.push(FieldError {
            field: "target.kind".into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {kind:?}: supported values: \"Node\", \"<empty>\""
            ),
        });
    }
    if node.is_empty() {
        errors.push(FieldError {
            field: "target.name".into(),
            reason: "FieldValueRequired",
            message: "Required value".into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("Binding", "", &name, &errors));
    }
    let wanted_uid = field("/metadata/uid");
    let wanted_version = field("/metadata/resourceVersion");
    let annotations = binding
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let refuse = |reason: String| {
        Err(ApiError::conflict_because(
            "pods/binding",
            "",
            &name,
            &reason,
        ))
    };
    for _ in 0..5 {
        let (mut pod, revision) = load(state, target).await?;
        let preconditions = [
            ("UID", "/metadata/uid", wanted_uid.as_deref()),
            (
                "ResourceVersion",
                "/metadata/resourceVersion",
                wanted_version.as_deref(),
            ),
        ];
        for (what, pointer, wanted) in preconditions {
            let found = pod
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default();
            if wanted.is_some_and(|w| w != found) {
                return Err(ApiError::conflict_because(
                    r.plural,
                    r.group,
                    &name,
                    &format!(
                        "Precondition failed: {what} in precondition: {}, {what} in object meta: {found}",
                        wanted.unwrap_or_default()
                    ),
                ));
            }
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return refuse(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            ));
        }
        if let Some(existing) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return refuse(format!(
                "pod {name} is already assigned to node {existing:?}"
            ));
        }
        if pod
            .pointer("/spec/schedulingGates")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty())
        {
            return refuse(format!("pod {name} has non-empty .spec.schedulingGates"));
        }
        if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("nodeName".into(), json!(node));
        }
        set_scheduled(&mut pod);
        if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            if !annotations.is_empty() {
                let merged = meta.entry("annotations").or_insert_with(|| json!({}));
                if let Some(merged) = merged.as_object_mut() {
                    merged.extend(annotations.clone());
                }
            }
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
            Err(store::Error::Conflict { .. }) if wanted_version.is_none() => continue,
            Err(e) => return Err(write_error(r, &name, e)),
        }
    }
    Err(ApiError::conflict(r.plural, r.group, &name))
}

/// `POST pods/<name>/eviction` (a policy/v1 Eviction): deletes the pod as a DELETE with the
/// Eviction's `deleteOptions` would (gracefully), after adding the `DisruptionTarget`
/// condition, and answers 201 with a Success Status. Skiff has no PodDisruptionBudgets yet, so
/// every eviction is allowed.
async fn evict(
    state: &AppState,
    target: &Target,
    query: &Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let eviction = parse_object(&body)?;
    check_body(&eviction, "Eviction", &name)?;
    let options = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
    let request = DeleteRequest::from_options(target.resource, &name, &options, dry_run(query))?;
    delete_object(
        state,
        target,
        &name,
        &request,
        Some(add_disruption_target),
        None,
    )
    .await?;
    Ok(success(StatusCode::CREATED))
}

/// The condition an eviction leaves on the pod it deletes.
fn add_disruption_target(pod: &mut Value) {
    set_condition(
        pod,
        json!({
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting",
        }),
    );
}

/// Sets `PodScheduled=True` in a pod's status conditions.
fn set_scheduled(pod: &mut Value) {
    set_condition(pod, json!({"type": "PodScheduled", "status": "True"}));
    if let Some(status) = pod.get_mut("status").and_then(Value::as_object_mut) {
        status.entry("phase").or_insert_with(|| json!("Pending"));
    }
}

/// Puts `condition` into a pod's `status.conditions` in place of one of its type, as
/// `podutil.UpdatePodCondition` does: `lastTransitionTime` changes only with the status.
fn set_condition(pod: &mut Value, mut condition: Value) {
    let Some(object) = pod.as_object_mut() else {
        return;
    };
    let Some(status) = object
        .entry("status")
        .or_insert_with(|| json!({}))
        .as_object_mut()
    else {
        return;
    };
    let Some(list) = status
        .entry("conditions")
        .or_insert_with(|| json!([]))
        .as_array_mut()
    else {
        return;
    };
    let kind = condition.get("type").cloned();
    let existing = list.iter().position(|c| c.get("type") == kind.as_ref());
    let transition = match existing.map(|i| &list[i]) {
        Some(old) if old.get("status") == condition.get("status") => old
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(now_rfc3339())),
        _ => json!(now_rfc3339()),
    };
    condition["lastProbeTime"] = Value::Null;
    condition["lastTransitionTime"] = transition;
    match existing {
        Some(i) => list[i] = condition,
        None => list.push(condition),
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
    fn binding_and_eviction_bodies_name_the_pod() {
        let check = |body: Value, kind: &str, expected: Result<(), &str>| {
            let map = body.as_object().cloned().unwrap_or_default();
            match (check_body(&map, kind, "p"), expected) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(fragment)) => {
                    assert_eq!(e.code, StatusCode::BAD_REQUEST, "{body}");
                    assert!(e.message.contains(fragment), "{body}: {}", e.message);
                }
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        };
        check(
            json!({"kind": "Binding", "metadata": {"name": "p"}}),
            "Binding",
            Ok(()),
        );
        check(json!({"metadata": {"name": "p"}}), "Eviction", Ok(()));
        check(
            json!({"kind": "Eviction", "metadata": {"name": "q"}}),
            "Eviction",
            Err("name in URL does not match name in Eviction object"),
        );
        check(
            json!({"kind": "Binding"}),
            "Binding",
            Err("name in URL does not match name in Binding object"),
        );
        check(
            json!({"kind": "Pod", "metadata": {"name": "p"}}),
            "Eviction",
            Err("not a Eviction object"),
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let old = "2020-01-01T00:00:00Z";
        let cases = [
            // (existing conditions, condition set, expected count, transition kept)
            (
                json!([]),
                json!({"type": "DisruptionTarget", "status": "True"}),
                1,
                false,
            ),
            (
                json!([{"type": "DisruptionTarget", "status": "True", "lastTransitionTime": old}]),
                json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}),
                1,
                true,
            ),
            (
                json!([{"type": "DisruptionTarget", "status": "False", "lastTransitionTime": old}]),
                json!({"type": "DisruptionTarget", "status": "True"}),
                1,
                false,
            ),
            (
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": old}]),
                json!({"type": "DisruptionTarget", "status": "True"}),
                2,
                false,
            ),
        ];
        for (existing, condition, count, kept) in cases {
            let mut pod = json!({"status": {"conditions": existing.clone()}});
            set_condition(&mut pod, condition.clone());
            let list = pod["status"]["conditions"].as_array().cloned().unwrap();
            assert_eq!(list.len(), count, "{existing} + {condition}");
            let set = list
                .iter()
                .find(|c| c["type"] == condition["type"])
                .unwrap();
            assert_eq!(set["status"], condition["status"]);
            assert_eq!(set["reason"], condition["reason"]);
            assert_eq!(
                set["lastTransitionTime"] == old,
                kept,
                "{existing} + {condition}"
            );
        }
        let mut pod = json!({"metadata": {"name": "p"}});
        add_disruption_target(&mut pod);
        assert_eq!(
            pod["status"]["conditions"][0]["reason"],
            "EvictionByEvictionAPI"
        );
        assert_eq!(
            pod["status"]["conditions"][0]["message"],
            "Eviction API: evicting"
        );
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
