//! What happens to an object between decoding and the store, per kind: validation (422 with
//! field causes) and the Service allocations (cluster IP, node ports).

use axum::http::StatusCode;
use serde_json::Value;

use super::allocator::{AllocError, Allocation};
use super::resources::Resource;
use super::status::ApiError;
use super::validation::{self, FieldError};
use super::AppState;

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
