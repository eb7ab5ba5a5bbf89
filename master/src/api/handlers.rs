//! The resource handlers: one generic implementation of create, get, list, watch, update, patch,
//! delete and deletecollection over the store, driven by the resource table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{json, Map, Value};

use super::admission;
use super::resources::Resource;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::tables::{self, IncludeObject};
use super::AppState;
use crate::store::{self, RangeRequest, Revision};

/// kube-apiserver's `MaxRequestBodyBytes`.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What a request addresses, parsed from its path.
#[derive(Debug)]
pub struct Target {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    pub(super) fn key(&self, name: &str) -> String {
        store::object_key(self.resource.plural, self.namespace.as_deref(), name)
    }

    pub(super) fn prefix(&self) -> String {
        store::resource_prefix(self.resource.plural, self.namespace.as_deref())
    }
}

pub(super) type Query = HashMap<String, String>;

pub async fn handle(
    state: Arc<AppState>,
    method: Method,
    target: Target,
    query: Query,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let r = target.resource;
    check_dry_run(&query)?;
    if let Some(sub) = &target.subresource {
        if !r.subresources.contains(&sub.as_str()) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({}/{sub})",
                    r.plural
                ),
            ));
        }
        if sub != "status" {
            let body = match method {
                Method::GET | Method::DELETE => Bytes::new(),
                // kubectl's typed client sends TokenRequests as protobuf.
                _ if sub == "token" && is_protobuf(&headers) => {
                    let raw = read_limited(&headers, body).await?;
                    super::protobuf::token_request_json(&raw)
                        .map(|v| Bytes::from(v.to_string()))
                        .map_err(|e| {
                            ApiError::bad_request(format!(
                                "TokenRequest in version \"v1\" cannot be handled as a \
                                 TokenRequest: {e}"
                            ))
                        })?
                }
                _ => read_body(&headers, body).await?,
            };
            return super::subresources::handle(state, method, target, query, &headers, body).await;
        }
    }
    let watching = query.get("watch").is_some_and(|w| w == "1" || w == "true");
    match (method, target.name.is_some()) {
        (Method::GET, false) if watching => {
            super::watch::watch(state, target, query, &headers).await
        }
        (Method::GET, false) => list(state, target, query, &headers).await,
        (Method::GET, true) => get(state, target, query, &headers).await,
        (Method::POST, false) => {
            create(state, target, query, read_body(&headers, body).await?).await
        }
        (Method::PUT, true) => update(state, target, query, read_body(&headers, body).await?).await,
        (Method::PATCH, true) => {
            patch(
                state,
                target,
                query,
                &headers,
                read_body(&headers, body).await?,
            )
            .await
        }
        (Method::DELETE, true) => {
            super::deletion::delete(state, target, query, read_body(&headers, body).await?).await
        }
        (Method::DELETE, false) => {
            let body = read_body(&headers, body).await?;
            super::deletion::delete_collection(state, target, query, body).await
        }
        (method, _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )),
    }
}

/// Reads a body up to [`MAX_BODY`]; a longer one is refused with 413 as soon as that is known.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json, application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json (got {content_type})"
            ),
        ));
    }
    read_limited(headers, body).await
}

/// Whether the request body is protobuf.
fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("protobuf"))
}

/// Reads a body of any type up to [`MAX_BODY`].
async fn read_limited(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body exceeds the limit of {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| too_large())
}

pub(super) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// Checks `dryRun`: only `All` is a dry run; anything else but absence is refused.
fn check_dry_run(query: &Query) -> Result<(), ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") | Some("All") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported dryRun value {other:?}: the only supported value is \"All\""
        ))),
    }
}

pub(super) fn dry_run(query: &Query) -> bool {
    query.get("dryRun").is_some_and(|v| v == "All")
}

/// Adds `resourceVersion` (the store's mod revision) to a stored object.
pub(super) fn with_version(bytes: &[u8], revision: Revision) -> Result<Value, ApiError> {
    let mut value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("stored object is not JSON: {e}"),
        )
    })?;
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
    Ok(value)
}

/// A failed conditional write, as the API reports it: 409 Conflict or 404 NotFound naming the
/// object, anything else as the store error maps.
pub(super) fn write_error(r: &Resource, name: &str, e: store::Error) -> ApiError {
    match e {
        store::Error::Conflict { .. } => ApiError::conflict(r.plural, r.group, name),
        store::Error::NotFound { .. } => ApiError::not_found(r.plural, r.group, name),
        e => e.into(),
    }
}

pub(super) fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value)).into_response()
}

pub(super) fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// A timestamp as the API writes them: RFC 3339 in whole seconds.
pub(super) fn rfc3339(at: time::OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn random_suffix() -> String {
    // kube-apiserver's alphabet: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    getrandom::fill(&mut bytes).unwrap_or_default();
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// What a request's `fieldValidation` asks the server to do about unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    fn from_query(query: &Query) -> Result<Self, ApiError> {
        match query.get("fieldValidation").map(String::as_str) {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation {other:?} is not one of Ignore, Warn, Strict"
            ))),
        }
    }
}

/// An admitted object's name, and the warnings to send back with the response.
struct Admitted {
    name: String,
    warnings: Vec<String>,
}

/// Unknown fields of `object`: an error under `Strict`, warnings under `Warn`.
fn check_fields(
    r: &Resource,
    object: &mut Map<String, Value>,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    if validation == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let openapi = super::openapi::get();
    let Some(definition) = openapi.kind_definition(r) else {
        return Ok(Vec::new());
    };
    let value = Value::Object(std::mem::take(object));
    let unknown = openapi.unknown_fields(definition, &value);
    if let Value::Object(map) = value {
        *object = map;
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    if validation == FieldValidation::Strict && !messages.is_empty() {
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            messages.join(", ")
        )));
    }
    Ok(messages)
}

/// Adds `Warning` headers (RFC 7234 code 299, as kube-apiserver sends them).
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - {}", serde_json::Value::String(warning.clone()));
        if let Ok(value) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// Checks the shape of an incoming object and its name; fills apiVersion and kind.
fn admit(
    target: &Target,
    object: &mut Map<String, Value>,
    name_from_path: Option<&str>,
    query: &Query,
) -> Result<Admitted, ApiError> {
    let validation = FieldValidation::from_query(query)?;
    let r = target.resource;
    let api_version = r.api_version();
    for (field, expected) in [("apiVersion", api_version.as_str()), ("kind", r.kind)] {
        match object.get(field) {
            None => {
                object.insert(field.into(), Value::String(expected.into()));
            }
            Some(Value::String(s)) if s == expected => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{field} {other} does not match the request path, which expects {expected:?}"
                )))
            }
        }
    }
    let meta = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    // Namespace: the path decides; a different one in the body is an error.
    match (&target.namespace, meta.get("namespace")) {
        (Some(ns), Some(Value::String(body_ns))) if body_ns != ns => {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
            )))
        }
        (Some(ns), _) => {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        (None, _) => {
            meta.remove("namespace");
        }
    }
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(path_name) = name_from_path {
        if name.is_empty() {
            name = path_name.to_string();
        } else if name != path_name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({path_name})"
            )));
        }
    }
    if name.is_empty() {
        if let Some(prefix) = meta.get("generateName").and_then(Value::as_str) {
            name = format!("{prefix}{}", random_suffix());
        }
    }
    meta.insert("name".into(), Value::String(name.clone()));

    let warnings = check_fields(r, object, validation)?;
    Ok(Admitted { name, warnings })
}

/// Namespaced writes need an existing namespace that is not terminating.
async fn check_namespace(state: &AppState, target: &Target) -> Result<(), ApiError> {
    let Some(ns) = &target.namespace else {
        return Ok(());
    };
    let found = state
        .store
        .get(&store::object_key("namespaces", None, ns))
        .await?;
    let Some(kv) = found else {
        return Err(ApiError::not_found("namespaces", "", ns));
    };
    let object: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                target.resource.plural
            ),
        ));
    }
    Ok(())
}

async fn create(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let mut object = parse_object(&body)?;
    let Admitted { name, warnings } = admit(&target, &mut object, None, &query)?;
    check_namespace(&state, &target).await?;
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("admit made metadata an object");
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        meta.remove(field);
    }
    meta.insert(
        "uid".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    meta.insert("generation".into(), json!(1));
    let mut object = Value::Object(object);
    super::defaults::apply(r.kind, &mut object);
    admission::mutate(&state, r, &mut object);
    admission::service_account(&state, r, &mut object).await?;
    admission::validate(r, &object, None)?;
    if dry_run(&query) {
        let response = json_response(StatusCode::CREATED, &object);
        return Ok(with_warnings(response, &warnings));
    }
    let taken = admission::allocate(&state, r, &mut object).await?;
    let bytes = serde_json::to_vec(&object).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let result = state.store.create(&target.key(&name), bytes.into()).await;
    if result.is_err() {
        admission::release(&state, &taken).await;
    }
    match result {
        Ok(kv) => Ok(with_warnings(
            json_response(
                StatusCode::CREATED,
                &with_version(&kv.value, kv.mod_revision)?,
            ),
            &warnings,
        )),
        Err(store::Error::AlreadyExists { .. }) => {
            Err(ApiError::already_exists(r.plural, r.group, &name))
        }
        Err(e) => Err(e.into()),
    }
}

/// The Table rendering a request asks for with its Accept header, if any.
fn table_format(query: &Query, headers: &HeaderMap) -> Result<Option<IncludeObject>, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if !tables::wants_table(accept) {
        return Ok(None);
    }
    IncludeObject::parse(query.get("includeObject").map(String::as_str))
        .map(Some)
        .map_err(ApiError::bad_request)
}

async fn get(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let name = target.name.as_deref().unwrap_or_default();
    let table = table_format(&query, headers)?;
    let Some(kv) = state.store.get(&target.key(name)).await? else {
        return Err(ApiError::not_found(r.plural, r.group, name));
    };
    let object = with_version(&kv.value, kv.mod_revision)?;
    match table {
        Some(include) => {
            let meta = json!({"resourceVersion": kv.mod_revision.to_string()});
            let rendered = tables::table(r.kind, &[object], include, meta, SystemTime::now());
            Ok(json_response(StatusCode::OK, &rendered))
        }
        None => Ok(json_response(StatusCode::OK, &object)),
    }
}

/// A request's label and field selectors.
pub(super) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    /// The selectors of a request on `r`; a field `r` cannot be selected by is a 400.
    pub(super) fn from_query(r: &Resource, query: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
                .map_err(ApiError::bad_request)?,
            fields: FieldSelector::parse(
                r.kind,
                query.get("fieldSelector").map_or("", String::as_str),
            )
            .map_err(ApiError::bad_request)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub(super) fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object.pointer("/metadata/labels")) && self.fields.matches(object)
    }
}

/// The revision a list reads at, from `resourceVersion` and `resourceVersionMatch` checked as
/// kube-apiserver's `ValidateListOptions` does (422 `ListOptions` invalid, 400 for a version that
/// is not a number). `None` is the latest state: what no version, `0` (any version) and
/// `NotOlderThan` (the store's latest state is never older) are served from; `Exact` reads at
/// that revision.
fn list_revision(query: &Query) -> Result<Option<Revision>, ApiError> {
    let version = query.get("resourceVersion").map_or("", String::as_str);
    let matching = query.get("resourceVersionMatch").map_or("", String::as_str);
    let mut errors = Vec::new();
    let forbidden = |field: &str, message: &str| super::validation::FieldError {
        field: field.into(),
        reason: "FieldValueForbidden",
        message: format!("Forbidden: {message}"),
    };
    if !matching.is_empty() {
        if version.is_empty() {
            errors.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if query.get("continue").is_some_and(|c| !c.is_empty()) {
            errors.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if !matches!(matching, "Exact" | "NotOlderThan") {
            errors.push(super::validation::FieldError {
                field: "resourceVersionMatch".into(),
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {matching:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""
                ),
            });
        }
        if matching == "Exact" && version == "0" {
            errors.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if query.contains_key("sendInitialEvents") {
        errors.push(forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid("ListOptions", "meta.k8s.io", "", &errors));
    }
    if version.is_empty() {
        return Ok(None);
    }
    let revision: Revision = version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {version:?}")))?;
    Ok((matching == "Exact").then_some(revision))
}

async fn list(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let filter = Filter::from_query(r, &query)?;
    let table = table_format(&query, headers)?;
    let limit = match query.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit {l:?} is not a number")))?,
        ),
        None => None,
    };
    let revision = list_revision(&query)?;
    // A plain full list (no selectors, no page size, no Table) is streamed page by page from one
    // snapshot, so its memory is one page, not the whole collection.
    let whole = limit.is_none() && revision.is_none() && !query.contains_key("continue");
    if whole && table.is_none() && filter.is_empty() {
        return stream_list(state, target).await;
    }
    let page = state
        .store
        .range(RangeRequest {
            prefix: target.prefix(),
            limit,
            continue_token: query.get("continue").filter(|c| !c.is_empty()).cloned(),
            revision,
            // A client's page carries `remainingItemCount`.
            skip_count: false,
        })
        .await
        .map_err(|e| match e {
            store::Error::Expired { .. } if query.contains_key("continue") => ApiError::new(
                StatusCode::GONE,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ),
            e => e.into(),
        })?;
    let mut metadata = json!({"resourceVersion": page.revision.to_string()});
    if let Some(token) = &page.continue_token {
        metadata["continue"] = Value::String(token.clone());
        if let Some(remaining) = page.remaining {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    // The common case, a plain list without selectors, is spliced from the stored bytes
    // without parsing them: a 30k-pod list is one buffer, not 30k trees.
    if table.is_none() && filter.is_empty() {
        let mut body = list_head(r, &metadata)?;
        body.extend(page_items(&page.kvs, true)?);
        body.extend_from_slice(b"]}");
        return Ok(json_bytes(StatusCode::OK, body));
    }
    let mut items = Vec::with_capacity(page.kvs.len());
    for kv in &page.kvs {
        let object = with_version(&kv.value, kv.mod_revision)?;
        if filter.matches(&object) {
            items.push(object);
        }
    }
    if let Some(include) = table {
        let rendered = tables::table(r.kind, &items, include, metadata, SystemTime::now());
        return Ok(json_response(StatusCode::OK, &rendered));
    }
    let list = json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version(),
        "metadata": metadata,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}

/// How many objects a streamed list reads from the store at a time.
const LIST_CHUNK: usize = 1000;

/// The start of a `<Kind>List` body, up to and including the `[` of its items.
fn list_head(r: &Resource, metadata: &Value) -> Result<Vec<u8>, ApiError> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut head, &format!("{}List", r.kind)).map_err(internal)?;
    head.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut head, &r.api_version()).map_err(internal)?;
    head.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut head, metadata).map_err(internal)?;
    head.extend_from_slice(b",\"items\":[");
    Ok(head)
}

/// Items of one page, each spliced with its resourceVersion, comma-separated; `first` says no
/// comma goes before the first one.
fn page_items(kvs: &[store::KeyValue], first: bool) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity(kvs.iter().map(|kv| kv.value.len() + 32).sum::<usize>());
    for (i, kv) in kvs.iter().enumerate() {
        if i > 0 || !first {
            out.push(b',');
        }
        splice_version(&mut out, &kv.value, kv.mod_revision)?;
    }
    Ok(out)
}

/// A whole collection as one `<Kind>List`, read in [`LIST_CHUNK`] pages pinned to the first
/// page's revision and written as they come. A failure after the first page ends the body
/// early, which clients see as a broken response and retry.
async fn stream_list(state: Arc<AppState>, target: Target) -> Result<Response, ApiError> {
    let r = target.resource;
    let prefix = target.prefix();
    let first = state
        .store
        .range(RangeRequest {
            prefix: prefix.clone(),
            limit: Some(LIST_CHUNK),
            skip_count: true,
            ..Default::default()
        })
        .await?;
    let metadata = json!({"resourceVersion": first.revision.to_string()});
    let mut head = list_head(r, &metadata)?;
    head.extend(page_items(&first.kvs, true)?);
    let empty = first.kvs.is_empty();
    let rest = futures::stream::unfold(
        (first.continue_token, empty, false),
        move |(token, mut empty, done)| {
            let store = state.store.clone();
            let prefix = prefix.clone();
            async move {
                if done {
                    return None;
                }
                let Some(token) = token else {
                    return Some((Ok(Bytes::from_static(b"]}")), (None, empty, true)));
                };
                let request = RangeRequest {
                    prefix,
                    limit: Some(LIST_CHUNK),
                    continue_token: Some(token),
                    revision: None,
                    skip_count: true,
                };
                match store.range(request).await {
                    Ok(page) => {
                        let chunk = page_items(&page.kvs, empty).unwrap_or_default();
                        empty &= page.kvs.is_empty();
                        Some((Ok(Bytes::from(chunk)), (page.continue_token, empty, false)))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a streamed list failed after its first page");
                        Some((
                            Err(std::io::Error::other(e.to_string())),
                            (None, empty, true),
                        ))
                    }
                }
            }
        },
    );
    let body = futures::stream::once(futures::future::ready(Ok::<_, std::io::Error>(
        Bytes::from(head),
    )))
    .chain(rest);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        format!("Internal error occurred: {e}"),
    )
}

/// Appends a stored object with `metadata.resourceVersion` set, without parsing it. Stored
/// objects are written with sorted keys and a validated `apiVersion` and `kind`, so their first
/// `"metadata":{` is the object's own; anything else falls back to parsing.
fn splice_version(body: &mut Vec<u8>, stored: &[u8], revision: Revision) -> Result<(), ApiError> {
    const META: &[u8] = b"\"metadata\":{";
    let at = stored.windows(META.len()).position(|w| w == META);
    let prefix_ok = at.is_some_and(|at| {
        let head = &stored[..at];
        !head.contains(&b'\\') && head.iter().filter(|b| **b == b'{').count() == 1
    });
    match at {
        Some(at) if prefix_ok => {
            let at = at + META.len();
            body.extend_from_slice(&stored[..at]);
            body.extend_from_slice(format!("\"resourceVersion\":\"{revision}\"").as_bytes());
            // The stored metadata never holds a resourceVersion; it is not empty (it has a name).
            if stored.get(at) != Some(&b'}') {
                body.push(b',');
            }
            body.extend_from_slice(&stored[at..]);
            Ok(())
        }
        _ => {
            let object = with_version(stored, revision)?;
            serde_json::to_writer(body, &object).map_err(internal)
        }
    }
}

fn json_bytes(code: StatusCode, body: Vec<u8>) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Applies an updated object over the stored one: identity and server-set fields are kept,
/// `generation` is bumped when the spec changes.
fn merge_update(
    resource: &Resource,
    current: &Value,
    mut incoming: Map<String, Value>,
    status_only: bool,
) -> Map<String, Value> {
    let mut result = current.as_object().cloned().unwrap_or_default();
    if status_only {
        if let Some(status) = incoming.remove("status") {
            result.insert("status".into(), status);
        }
        return result;
    }
    let keep_status = resource.has_status();
    let old_meta = current.get("metadata").cloned().unwrap_or_default();
    if keep_status {
        match current.get("status") {
            Some(status) => incoming.insert("status".into(), status.clone()),
            None => incoming.remove("status"),
        };
    }
    let spec_changed = incoming.get("spec") != current.get("spec");
    if let Some(meta) = incoming.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.remove("resourceVersion");
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta.insert(
            "generation".into(),
            json!(if spec_changed {
                generation + 1
            } else {
                generation
            }),
        );
    }
    incoming
}

/// Writes `object` over the stored version `expected` of `name`.
async fn write_update(
    state: &AppState,
    target: &Target,
    name: &str,
    object: Map<String, Value>,
    (old, expected): (&Value, Revision),
    query: &Query,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let mut object = Value::Object(object);
    super::defaults::apply(r.kind, &mut object);
    if target.subresource.is_none() {
        admission::mutate(state, r, &mut object);
    }
    admission::validate(r, &object, Some(old))?;
    if dry_run(query) {
        return Ok(json_response(StatusCode::OK, &object));
    }
    let (taken, freed) = admission::reallocate(state, r, old, &mut object).await?;
    let result = store_update(state, target, name, object, expected).await;
    match &result {
        Ok(_) => admission::release(state, &freed).await,
        Err(_) => admission::release(state, &taken).await,
    }
    result
}

/// Writes an admitted update; an object whose finalizers are gone after deletion was requested
/// is deleted instead.
async fn store_update(
    state: &AppState,
    target: &Target,
    name: &str,
    object: Value,
    expected: Revision,
) -> Result<Response, ApiError> {
    let r = target.resource;
    // An object whose finalizers are gone after deletion was requested goes away now, unless a
    // graceful deletion (a pod's, grace above 0) is still running: its final DELETE removes it.
    let deleting = object
        .get("metadata")
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        == Some(0);
    let finalizers_empty = !super::propagation::held(r.kind, &object);
    let bytes = serde_json::to_vec(&object).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if deleting && finalizers_empty {
        return match state.store.delete(&target.key(name), Some(expected)).await {
            Ok(kv) => {
                admission::release(state, &admission::held(r, &object)).await;
                Ok(json_response(
                    StatusCode::OK,
                    &with_version(&bytes, kv.mod_revision)?,
                ))
            }
            Err(e) => Err(write_error(r, name, e)),
        };
    }
    match state
        .store
        .update(&target.key(name), bytes.into(), Some(expected))
        .await
    {
        Ok(kv) => Ok(json_response(
            StatusCode::OK,
            &with_version(&kv.value, kv.mod_revision)?,
        )),
        Err(e) => Err(write_error(r, name, e)),
    }
}

async fn update(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let mut incoming = parse_object(&body)?;
    let admitted = admit(&target, &mut incoming, Some(&name), &query)?;
    let sent_version = incoming
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
        .map(|rv| {
            rv.parse::<Revision>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))
        })
        .transpose()?;
    let Some(kv) = state.store.get(&target.key(&name)).await? else {
        return Err(ApiError::not_found(r.plural, r.group, &name));
    };
    if sent_version.is_some_and(|v| v != kv.mod_revision) {
        return Err(ApiError::conflict(r.plural, r.group, &name));
    }
    let current: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
    let status_only = target.subresource.as_deref() == Some("status");
    let merged = merge_update(r, &current, incoming, status_only);
    write_update(
        &state,
        &target,
        &name,
        merged,
        (&current, kv.mod_revision),
        &query,
    )
    .await
    .map(|response| with_warnings(response, &admitted.warnings))
}

/// Applies a patch body of the request's content type to `current`; `definition` names the
/// OpenAPI definition whose patch strategies a strategic merge follows.
pub(super) fn apply_patch(
    headers: &HeaderMap,
    body: &[u8],
    current: &Value,
    definition: &str,
) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let mut patched = current.clone();
    match content_type {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut patched, &ops).map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the JSON patch cannot be applied: {e}"),
                )
            })?;
        }
        "application/merge-patch+json" => json_patch::merge(&mut patched, &patch),
        "application/strategic-merge-patch+json" => {
            patched = super::smp::apply(
                current,
                &patch,
                definition,
                &super::openapi::get().definitions,
            )
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("the strategic merge patch cannot be applied: {e}"),
                )
            })?;
        }
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types \
                     include: application/json-patch+json, application/merge-patch+json, \
                     application/strategic-merge-patch+json (got {other:?})"
                ),
            ))
        }
    }
    Ok(patched)
}

async fn patch(
    state: Arc<AppState>,
    target: Target,
    query: Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r = target.resource;
    let name = target.name.clone().unwrap_or_default();
    let patch: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    // Retry on conflicts with writers in between: a patch applies to the latest version.
    for _ in 0..5 {
        let Some(kv) = state.store.get(&target.key(&name)).await? else {
            return Err(ApiError::not_found(r.plural, r.group, &name));
        };
        let current: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
        let definition = super::openapi::get().kind_definition(r).unwrap_or_default();
        let patched = apply_patch(headers, &body, &current, definition)?;
        let Value::Object(mut incoming) = patched else {
            return Err(ApiError::bad_request("the patch did not produce an object"));
        };
        let admitted = admit(&target, &mut incoming, Some(&name), &query)?;
        if let Some(rv) = incoming
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
        {
            if rv != kv.mod_revision.to_string() {
                return Err(ApiError::conflict(r.plural, r.group, &name));
            }
        }
        let status_only = target.subresource.as_deref() == Some("status");
        let merged = merge_update(r, &current, incoming, status_only);
        match write_update(
            &state,
            &target,
            &name,
            merged,
            (&current, kv.mod_revision),
            &query,
        )
        .await
        {
            Err(e)
                if e.reason == "Conflict"
                    && patch.pointer("/metadata/resourceVersion").is_none() =>
            {
                continue
            }
            other => return other.map(|response| with_warnings(response, &admitted.warnings)),
        }
    }
    Err(ApiError::conflict(r.plural, r.group, &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_list_version(pairs: &[(&str, &str)], expected: Result<Option<Revision>, u16>) {
        let query: Query = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let got = list_revision(&query).map_err(|e| e.code.as_u16());
        assert_eq!(got, expected, "{pairs:?}");
    }

    #[test]
    fn list_versions_are_checked_and_zero_is_the_latest_state() {
        let check = check_list_version;
        let (rv, matching) = ("resourceVersion", "resourceVersionMatch");
        check(&[], Ok(None));
        check(&[(rv, "")], Ok(None));
        check(&[(rv, "0")], Ok(None));
        check(&[(rv, "0"), (matching, "NotOlderThan")], Ok(None));
        check(&[(rv, "12")], Ok(None));
        check(&[(rv, "12"), (matching, "NotOlderThan")], Ok(None));
        check(&[(rv, "12"), (matching, "Exact")], Ok(Some(12)));
        check(&[(rv, "0"), (matching, "Exact")], Err(422));
        check(&[(matching, "NotOlderThan")], Err(422));
        check(&[(rv, "12"), (matching, "Newest")], Err(422));
        check(
            &[(rv, "12"), (matching, "Exact"), ("continue", "t")],
            Err(422),
        );
        check(&[("sendInitialEvents", "true")], Err(422));
        check(&[(rv, "abc")], Err(400));
        check(&[(rv, "abc"), (matching, "Exact")], Err(400));
    }

    #[test]
    fn spliced_versions_equal_parsed_ones() {
        let cases = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {"x": "\"metadata\":{"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}, "data": {}}),
            json!({"kind": "Pod", "metadata": {"name": "b", "labels": {"metadata": "x"}}}),
            json!({"apiVersion": "v1", "kind": "Pod", "spec": {"metadata": {"name": "inner"}}}),
            json!({"apiVersion": "v1", "kind": "Pod"}),
        ];
        for case in cases {
            let stored = serde_json::to_vec(&case).unwrap();
            let mut body = Vec::new();
            splice_version(&mut body, &stored, 42).unwrap();
            let spliced: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(spliced, with_version(&stored, 42).unwrap(), "{case}");
        }
    }
}
