//! `/openapi/v2` and `/openapi/v3`: the schemas of the served kinds, built once at start from
//! k8s-openapi's schemars schemas (descriptions, types and `required` lists as upstream
//! publishes them), with the Kubernetes extensions clients read:
//!
//! - `x-kubernetes-group-version-kind` on each kind's definition and on each operation, which is
//!   how kubectl finds a kind's schema (`explain`) and whether the server does field validation;
//! - `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key` on list fields, from
//!   [`patch_meta`](super::patch_meta), which kubectl's apply uses to compute strategic merge
//!   patches, and which the server's own strategic merge uses too.
//!
//! The operations list the `fieldValidation` parameter, so kubectl leaves validation to the
//! server ([`OpenApi::unknown_fields`] implements `fieldValidation=Strict|Warn`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use k8s_openapi::schemars::generate::SchemaSettings;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::resources::{Resource, RESOURCES};
use super::status::ApiError;

/// Definitions keyed by their Kubernetes names (`io.k8s.api.core.v1.Pod`), in OpenAPI v2 form:
/// references are `#/definitions/<name>`.
pub type Definitions = BTreeMap<String, Value>;

/// How deep [`OpenApi::unknown_fields`] follows an object before it stops looking.
const MAX_DEPTH: usize = 64;

/// The documents, rendered once.
pub struct OpenApi {
    pub definitions: Definitions,
    /// The definition name of each served kind, by `(group, version, kind)`.
    kinds: BTreeMap<(&'static str, &'static str, &'static str), String>,
    v2: Bytes,
    v3_index: Bytes,
    /// `api/v1`, `apis/apps/v1`, … → (document, hash).
    v3: BTreeMap<String, (Bytes, String)>,
}

/// The process-wide documents (built on first use, about 100 ms).
pub fn get() -> &'static OpenApi {
    static OPENAPI: OnceLock<OpenApi> = OnceLock::new();
    OPENAPI.get_or_init(OpenApi::build)
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn ref_name(reference: &Value) -> Option<String> {
    reference
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .map(str::to_string)
}

/// Extra kinds the operations return or take, with the GVKs they are served under.
fn extra_schemas(generator: &mut SchemaGenerator) -> Vec<(String, Vec<Value>)> {
    use k8s_openapi::api::{autoscaling::v1::Scale, core::v1::Binding};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, Status};
    fn named<T: JsonSchema>(g: &mut SchemaGenerator, gvks: Vec<Value>) -> (String, Vec<Value>) {
        let name = ref_name(&g.subschema_for::<T>().to_value()).unwrap_or_default();
        (name, gvks)
    }
    let delete_options = [
        "",
        "apps",
        "batch",
        "discovery.k8s.io",
        "coordination.k8s.io",
    ]
    .iter()
    .map(|g| gvk(g, "v1", "DeleteOptions"))
    .collect();
    vec![
        named::<Status>(generator, vec![gvk("", "v1", "Status")]),
        named::<DeleteOptions>(generator, delete_options),
        named::<Scale>(generator, vec![gvk("autoscaling", "v1", "Scale")]),
        named::<Binding>(generator, vec![gvk("", "v1", "Binding")]),
    ]
}

impl OpenApi {
    fn build() -> OpenApi {
        let settings = SchemaSettings::draft07().with(|s| {
            s.meta_schema = None;
            s.transforms = Vec::new();
            s.definitions_path = "/definitions".into();
        });
        let mut generator = settings.into_generator();
        let mut kinds = BTreeMap::new();
        let mut gvks: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in RESOURCES {
            let name = ref_name(&(r.schema)(&mut generator).to_value()).unwrap_or_default();
            gvks.entry(name.clone())
                .or_default()
                .push(gvk(r.group, r.version, r.kind));
            kinds.insert((r.group, r.version, r.kind), name);
        }
        for (name, list) in extra_schemas(&mut generator) {
            gvks.entry(name).or_default().extend(list);
        }
        let mut definitions: Definitions = generator.take_definitions(true).into_iter().collect();
        for (name, list) in gvks {
            if let Some(Value::Object(def)) = definitions.get_mut(&name) {
                def.insert("x-kubernetes-group-version-kind".into(), Value::Array(list));
            }
        }
        add_patch_meta(&mut definitions);

        let v2 = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": super::discovery::git_version()},
            "paths": paths(RESOURCES.iter(), &kinds, "#/definitions/", false),
            "definitions": definitions,
        });
        let mut v3 = BTreeMap::new();
        let mut index = Map::new();
        let mut group_versions: Vec<(&str, &str)> = Vec::new();
        for r in RESOURCES {
            if !group_versions.contains(&r.group_version()) {
                group_versions.push(r.group_version());
            }
        }
        for (group, version) in group_versions {
            let served: Vec<&Resource> = RESOURCES
                .iter()
                .filter(|r| r.group == group && r.version == version)
                .collect();
            let mut roots: Vec<String> = served
                .iter()
                .filter_map(|r| kinds.get(&(r.group, r.version, r.kind)).cloned())
                .collect();
            roots.extend(
                [
                    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
                    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
                    "io.k8s.api.autoscaling.v1.Scale",
                    "io.k8s.api.core.v1.Binding",
                ]
                .map(String::from),
            );
            let schemas: Map<String, Value> = closure(&definitions, roots)
                .into_iter()
                .filter_map(|name| {
                    let schema = definitions.get(&name)?;
                    Some((name, to_v3(schema)))
                })
                .collect();
            let doc = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": super::discovery::git_version()},
                "paths": paths(served.into_iter(), &kinds, "#/components/schemas/", true),
                "components": {"schemas": schemas},
            });
            let bytes = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
            let hash = format!("{:016X}", fnv1a(&bytes));
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            index.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
            );
            v3.insert(key, (bytes, hash));
        }
        OpenApi {
            definitions,
            kinds,
            v2: Bytes::from(serde_json::to_vec(&v2).unwrap_or_default()),
            v3_index: Bytes::from(serde_json::to_vec(&json!({"paths": index})).unwrap_or_default()),
            v3,
        }
    }

    /// The definition name of a served kind.
    pub fn kind_definition(&self, r: &Resource) -> Option<&str> {
        self.kinds
            .get(&(r.group, r.version, r.kind))
            .map(String::as_str)
    }

    /// Paths of fields in `value` that the schema of `definition` does not know, in the form
    /// kube-apiserver reports them (`spec.containers[0].imagee`).
    pub fn unknown_fields(&self, definition: &str, value: &Value) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(schema) = self.definitions.get(definition) {
            self.walk(schema, value, &mut String::new(), 0, &mut found);
        }
        found
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match ref_name(schema).and_then(|name| self.definitions.get(&name)) {
            Some(target) => target,
            None => schema,
        }
    }

    fn walk(
        &self,
        schema: &Value,
        value: &Value,
        path: &mut String,
        depth: usize,
        found: &mut Vec<String>,
    ) {
        let schema = self.resolve(schema);
        if depth > MAX_DEPTH || schema.get("x-kubernetes-preserve-unknown-fields").is_some() {
            return;
        }
        match value {
            Value::Object(fields) => {
                if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                    for (key, child) in fields {
                        let len = path.len();
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                        match properties.get(key) {
                            Some(child_schema) => {
                                self.walk(child_schema, child, path, depth + 1, found)
                            }
                            None => found.push(path.clone()),
                        }
                        path.truncate(len);
                    }
                } else if let Some(values) = schema.get("additionalProperties") {
                    if values.is_object() {
                        for (key, child) in fields {
                            let len = path.len();
                            path.push_str(&format!("[{key}]"));
                            self.walk(values, child, path, depth + 1, found);
                            path.truncate(len);
                        }
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        self.walk(item_schema, item, path, depth + 1, found);
                        path.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Marks list fields with their patch strategy and merge key.
fn add_patch_meta(definitions: &mut Definitions) {
    for meta in super::patch_meta::PATCH_META {
        let property = definitions
            .get_mut(meta.definition)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(meta.field))
            .and_then(Value::as_object_mut);
        if let Some(property) = property {
            property.insert("x-kubernetes-patch-strategy".into(), meta.strategy.into());
            if let Some(key) = meta.merge_key {
                property.insert("x-kubernetes-patch-merge-key".into(), key.into());
            }
        }
    }
}

/// Every definition reachable from `roots` through `$ref`s.
fn closure(definitions: &Definitions, roots: Vec<String>) -> BTreeSet<String> {
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(name) = ref_name(value) {
                    out.push(name);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = roots;
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(schema) = definitions.get(&name) {
            refs(schema, &mut todo);
        }
    }
    seen
}

/// A v2 schema in OpenAPI 3 form: references under `#/components/schemas/`, and a `$ref` with
/// sibling keys (a description) wrapped in `allOf`, as upstream's v3 documents do.
fn to_v3(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out: Map<String, Value> =
                map.iter().map(|(k, v)| (k.clone(), to_v3(v))).collect();
            if let Some(Value::String(reference)) = out.remove("$ref") {
                let reference =
                    Value::String(reference.replace("#/definitions/", "#/components/schemas/"));
                if out.is_empty() {
                    out.insert("$ref".into(), reference);
                } else {
                    out.insert("allOf".into(), json!([{"$ref": reference}]));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

/// The operations of each resource, with the parameters kubectl looks for.
fn paths<'a>(
    resources: impl Iterator<Item = &'a Resource>,
    kinds: &BTreeMap<(&'static str, &'static str, &'static str), String>,
    prefix: &str,
    v3: bool,
) -> Value {
    let mut paths = Map::new();
    for r in resources {
        let Some(definition) = kinds.get(&(r.group, r.version, r.kind)) else {
            continue;
        };
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let collection = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        let item = format!("{collection}/{{name}}");
        let kind_gvk = gvk(r.group, r.version, r.kind);
        let object = format!("{prefix}{definition}");
        let op = |action: &str, verb: &str, schema: &str, gvk: &Value, body: bool, write: bool| {
            let mut params = vec![query_param("pretty", "string")];
            if write {
                params.push(query_param("dryRun", "string"));
                params.push(query_param("fieldManager", "string"));
                params.push(query_param("fieldValidation", "string"));
            }
            if action == "list" || action == "deletecollection" {
                for name in [
                    "labelSelector",
                    "fieldSelector",
                    "continue",
                    "resourceVersion",
                ] {
                    params.push(query_param(name, "string"));
                }
                params.push(query_param("limit", "integer"));
                params.push(query_param("watch", "boolean"));
            }
            let mut operation = json!({
                "operationId": format!("{verb}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": response(schema, v3)},
            });
            if body {
                if v3 {
                    operation["requestBody"] =
                        json!({"content": {"application/json": {"schema": {"$ref": schema}}}});
                } else {
                    if let Some(params) = operation["parameters"].as_array_mut() {
                        params.push(json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": schema}}));
                    }
                }
            }
            operation
        };
        let path_params = |with_name: bool| {
            let mut params = Vec::new();
            if with_name {
                params.push(path_param("name"));
            }
            if r.namespaced {
                params.push(path_param("namespace"));
            }
            Value::Array(params)
        };
        paths.insert(
            collection.clone(),
            json!({
                "get": op("list", "list", &object, &kind_gvk, false, false),
                "post": op("post", "create", &object, &kind_gvk, true, true),
                "delete": op("deletecollection", "deleteCollection", &object, &kind_gvk, false, true),
                "parameters": path_params(false),
            }),
        );
        paths.insert(
            item.clone(),
            json!({
                "get": op("get", "read", &object, &kind_gvk, false, false),
                "put": op("put", "replace", &object, &kind_gvk, true, true),
                "patch": op("patch", "patch", &object, &kind_gvk, true, true),
                "delete": op("delete", "delete", &object, &kind_gvk, false, true),
                "parameters": path_params(true),
            }),
        );
        if r.has_status() {
            paths.insert(
                format!("{item}/status"),
                json!({
                    "get": op("get", "readStatus", &object, &kind_gvk, false, false),
                    "put": op("put", "replaceStatus", &object, &kind_gvk, true, true),
                    "patch": op("patch", "patchStatus", &object, &kind_gvk, true, true),
                    "parameters": path_params(true),
                }),
            );
        }
        if r.subresources.contains(&"scale") {
            let scale = format!("{prefix}io.k8s.api.autoscaling.v1.Scale");
            let scale_gvk = gvk("autoscaling", "v1", "Scale");
            paths.insert(
                format!("{item}/scale"),
                json!({
                    "get": op("get", "readScale", &scale, &scale_gvk, false, false),
                    "put": op("put", "replaceScale", &scale, &scale_gvk, true, true),
                    "patch": op("patch", "patchScale", &scale, &scale_gvk, true, true),
                    "parameters": path_params(true),
                }),
            );
        }
    }
    Value::Object(paths)
}

fn query_param(name: &str, kind: &str) -> Value {
    json!({"name": name, "in": "query", "type": kind, "schema": {"type": kind}, "uniqueItems": true})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "type": "string", "schema": {"type": "string"}, "uniqueItems": true})
}

fn response(schema: &str, v3: bool) -> Value {
    if v3 {
        json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": schema}}}})
    } else {
        json!({"description": "OK", "schema": {"$ref": schema}})
    }
}

/// 64-bit FNV-1a: a stable content hash for the documents' URLs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn json_bytes(bytes: Bytes, immutable: bool) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let cache = if immutable {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// `GET /openapi/v2`.
pub async fn v2() -> Response {
    json_bytes(get().v2.clone(), false)
}

/// `GET /openapi/v3`: the index of group-version documents.
pub async fn v3_index() -> Response {
    json_bytes(get().v3_index.clone(), false)
}

/// `GET /openapi/v3/{api/v1 | apis/<group>/<version>}`.
pub async fn v3_document(
    Path(path): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    match get().v3.get(path.trim_matches('/')) {
        Some((bytes, hash)) => {
            let immutable = query.get("hash").is_some_and(|h| h == hash);
            json_bytes(bytes.clone(), immutable)
        }
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource (path /openapi/v3/{path})"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_definition_with_its_gvk() {
        let api = get();
        for r in RESOURCES {
            let name = api.kind_definition(r).expect("definition");
            let gvks = &api.definitions[name]["x-kubernetes-group-version-kind"];
            assert!(
                gvks.as_array()
                    .is_some_and(|l| l.contains(&gvk(r.group, r.version, r.kind))),
                "{name}: {gvks}"
            );
        }
    }

    #[test]
    fn patch_meta_reaches_the_schema() {
        let containers =
            &get().definitions["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    }

    #[test]
    fn v3_documents_are_self_contained_and_advertise_field_validation() {
        let api = get();
        let index: Value = serde_json::from_slice(&api.v3_index).expect("index");
        assert!(index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash=")));
        for (key, (bytes, _)) in &api.v3 {
            let doc: Value = serde_json::from_slice(bytes).expect("document");
            let schemas = doc["components"]["schemas"].as_object().expect("schemas");
            let text = String::from_utf8_lossy(bytes);
            for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
                let name = reference.split('"').next().unwrap_or_default();
                assert!(schemas.contains_key(name), "{key}: dangling {name}");
            }
            assert!(!text.contains("#/definitions/"), "{key}");
            let patch_ops = doc["paths"]
                .as_object()
                .expect("paths")
                .values()
                .filter_map(|p| p.get("patch"))
                .count();
            assert!(patch_ops > 0, "{key}");
        }
        let core: Value = serde_json::from_slice(&api.v3["api/v1"].0).expect("core");
        let patch = &core["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            gvk("", "v1", "Pod")
        );
        assert!(patch["parameters"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation")));
    }

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let api = get();
        let cases = [
            (
                json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
                vec![],
            ),
            (
                json!({"metadata": {"name": "a", "labelz": {}}, "spec": {"containers": [{"name": "c", "imagee": "i"}]}}),
                vec!["metadata.labelz", "spec.containers[0].imagee"],
            ),
            (
                json!({"spec": {"nodeSelector": {"a": "b"}, "bogus": 1}}),
                vec!["spec.bogus"],
            ),
            (
                json!({"spec": {"containers": [{"resources": {"limits": {"cpu": "1"}}}]}}),
                vec![],
            ),
            (
                json!({"status": {"conditions": [{"type": "Ready", "x": 1}]}}),
                vec!["status.conditions[0].x"],
            ),
        ];
        for (object, expected) in cases {
            assert_eq!(
                api.unknown_fields("io.k8s.api.core.v1.Pod", &object),
                expected,
                "{object}"
            );
        }
    }
}
