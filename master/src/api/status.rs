//! Every error the API returns is a Kubernetes `Status` object with the right code and reason.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::validation::FieldError;
use crate::store;

/// `kind` or `kind.group`, as kube-apiserver names a resource in messages.
fn qualified(kind: &str, group: &str) -> String {
    if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    }
}

/// An API error: becomes a `Status` body with `code`, `reason` and `details`.
#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn not_found(kind: &str, group: &str, name: &str) -> Self {
        let what = qualified(kind, group);
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} \"{name}\" not found"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }

    pub fn already_exists(kind: &str, group: &str, name: &str) -> Self {
        let what = qualified(kind, group);
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }

    pub fn conflict(kind: &str, group: &str, name: &str) -> Self {
        Self::conflict_because(
            kind,
            group,
            name,
            "the object has been modified; please apply your changes to the latest version and \
             try again",
        )
    }

    /// 409 Conflict on `kind` `name`, for the reason given.
    pub fn conflict_because(kind: &str, group: &str, name: &str, reason: &str) -> Self {
        let what = qualified(kind, group);
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on {what} \"{name}\": {reason}"),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind}))
    }

    /// 422 Invalid with one cause per field error, worded as kube-apiserver words it.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let summary: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect();
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field}))
            .collect();
        let what = qualified(kind, group);
        let message = match summary.as_slice() {
            [one] => format!("{what} \"{name}\" is invalid: {one}"),
            many => format!("{what} \"{name}\" is invalid: [{}]", many.join(", ")),
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message).with_details(json!({
            "name": name, "group": group, "kind": kind, "causes": causes,
        }))
    }

    pub fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, axum::Json(self.body())).into_response()
    }
}

/// Maps store errors that a handler did not turn into something more specific.
impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        use store::Error as E;
        match &e {
            E::Expired { .. } => ApiError::new(StatusCode::GONE, "Expired", e.to_string()),
            E::InvalidContinue { .. } => ApiError::bad_request(e.to_string()),
            E::FutureRevision { .. } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                format!("Too large resource version: {e}"),
            ),
            E::Unavailable { .. } | E::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            ),
            E::Timeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", e.to_string())
            }
            E::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "AlreadyExists", e.to_string())
            }
            E::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
            E::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string()),
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("Internal error occurred: {e}"),
            ),
        }
    }
}
