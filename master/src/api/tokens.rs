//! Service-account tokens, as kube-apiserver issues and checks them.
//!
//! `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token` takes an
//! `authentication.k8s.io/v1` TokenRequest (`audiences`, `expirationSeconds` ≥ 600, default
//! 3600, an optional `boundObjectRef` to a Pod or Secret) and answers it with `status.token`, a
//! JWS (`ES256`, signed with the PKI's `sa.key`) carrying Kubernetes' claims: `iss`, `sub`
//! (`system:serviceaccount:<ns>:<name>`), `aud`, `exp`, `iat`, `nbf`, `jti` and `kubernetes.io`
//! (namespace, the service account's and the bound objects' names and UIDs).
//!
//! [`authenticate`] accepts such a token when its signature, `exp`/`nbf` (one minute of leeway,
//! as go-jose), issuer and audience check out and the service account and the bound object
//! still exist with the UIDs the token names; anything else is one 401 `Unauthorized` for the
//! client, the reason logged. Tokens are not extended (kube-apiserver's
//! `--service-account-extend-token-expiration` turns 3607-second kubelet tokens into year-long
//! ones; here they live as requested, and the node agent refreshes them).

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::handlers::{json_response, parse_object, rfc3339, Target};
use super::pki::ServiceAccountKey;
use super::status::ApiError;
use super::validation::FieldError;
use super::AppState;
use crate::store;

/// kube-apiserver's usual `--service-account-issuer`; also the default API audience.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// TokenRequest's default `expirationSeconds`.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest token a TokenRequest may ask for.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest (`1 << 32` seconds, as ValidateTokenRequest).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// go-jose's default leeway for `exp` and `nbf`.
const LEEWAY_SECONDS: i64 = 60;
/// A deleted object's tokens stay valid this long past its deletion timestamp (kube's
/// `invalidIfDeletedBefore`).
const DELETION_GRACE_SECONDS: i64 = 60;

/// Who issues tokens and who they are for (kube-apiserver's `--service-account-issuer` and
/// `--api-audiences`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub issuer: String,
    /// The audiences the API itself accepts; a TokenRequest without audiences gets these.
    pub api_audiences: Vec<String>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_string(),
            api_audiences: vec![DEFAULT_ISSUER.to_string()],
        }
    }
}

/// A name and UID in the `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The `kubernetes.io` private claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubernetesClaims {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
}

/// A token's claims, as kube-apiserver writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    pub nbf: i64,
    pub sub: String,
}

/// JWT `aud` is a string or an array of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// The user a service-account token authenticates as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountUser {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ServiceAccountUser {
    /// `system:serviceaccount:<ns>:<name>`.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// `system:serviceaccounts`, `system:serviceaccounts:<ns>`, `system:authenticated`.
    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".into(),
        ]
    }
}

/// Why a token was refused. The client sees only 401 `Unauthorized`; this is logged.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a jws of three base64url parts")]
    Malformed,
    #[error("token header is not es256 with this issuer's key id")]
    WrongKey,
    #[error("token signature is invalid")]
    Signature,
    #[error("token claims are not kubernetes service account claims: {0}")]
    Claims(String),
    #[error("token issuer {0:?} is not this issuer")]
    Issuer(String),
    #[error("service account token has expired")]
    Expired,
    #[error("service account token is not valid yet")]
    NotYetValid,
    #[error("token audiences {token:?} is invalid for the target audiences {api:?}")]
    Audience {
        token: Vec<String>,
        api: Vec<String>,
    },
    #[error("{kind} {namespace}/{name} has been deleted")]
    Deleted {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error("{kind} uid ({stored}) does not match claim ({claimed})")]
    UidMismatch {
        kind: &'static str,
        stored: String,
        claimed: String,
    },
    #[error("cannot look up {what}: {source}")]
    Store {
        what: String,
        #[source]
        source: store::Error,
    },
    #[error("cannot sign the token")]
    Sign,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` as a compact JWS: `{"alg":"ES256","kid":…}`.
pub fn sign(key: &ServiceAccountKey, claims: &Claims) -> Result<String, TokenError> {
    let header = json!({"alg": "ES256", "kid": key.key_id});
    let payload = serde_json::to_vec(claims).map_err(|_| TokenError::Sign)?;
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&payload));
    let signature = key.sign(signing_input.as_bytes()).ok_or(TokenError::Sign)?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

/// Whether `token` looks like a JWS at all (three dot-separated parts), so other
/// authenticators can have the rest.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// Checks what the token itself says: signature, issuer, `exp`/`nbf` at `now` and that one of
/// its audiences is one of `config.api_audiences`. Does not look at the cluster.
pub fn verify(
    key: &ServiceAccountKey,
    config: &TokenConfig,
    token: &str,
    now: i64,
) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed)
    };
    let header: Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("ES256")
        || header
            .get("kid")
            .and_then(Value::as_str)
            .is_some_and(|kid| kid != key.key_id)
    {
        return Err(TokenError::WrongKey);
    }
    let signing_input = &token[..token.len() - signature.len() - 1];
    if !key.verify(signing_input.as_bytes(), &decode(signature)?) {
        return Err(TokenError::Signature);
    }
    let claims: Claims =
        serde_json::from_slice(&decode(payload)?).map_err(|e| TokenError::Claims(e.to_string()))?;
    if claims.iss != config.issuer {
        return Err(TokenError::Issuer(claims.iss));
    }
    if now > claims.exp + LEEWAY_SECONDS {
        return Err(TokenError::Expired);
    }
    if now + LEEWAY_SECONDS < claims.nbf {
        return Err(TokenError::NotYetValid);
    }
    if !claims.aud.iter().any(|a| config.api_audiences.contains(a)) {
        return Err(TokenError::Audience {
            token: claims.aud,
            api: config.api_audiences.clone(),
        });
    }
    let expected_sub = format!(
        "system:serviceaccount:{}:{}",
        claims.kubernetes.namespace, claims.kubernetes.serviceaccount.name
    );
    if claims.sub != expected_sub || claims.kubernetes.serviceaccount.name.is_empty() {
        return Err(TokenError::Claims(format!(
            "sub {:?} does not name the service account in kubernetes.io",
            claims.sub
        )));
    }
    Ok(claims)
}

/// A stored object's UID and deletion timestamp (seconds), if it exists.
async fn lookup(
    state: &AppState,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, TokenError> {
    let key = store::object_key(plural, Some(namespace), name);
    match state.store.get(&key).await {
        Ok(Some(kv)) => Ok(serde_json::from_slice(&kv.value).ok()),
        Ok(None) => Ok(None),
        Err(source) => Err(TokenError::Store {
            what: format!("{plural} {namespace}/{name}"),
            source,
        }),
    }
}

fn uid_of(object: &Value) -> &str {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Whether `object` was deleted more than a minute before `now` (it still exists while
/// finalizers or a grace period hold it).
fn deleted_before_grace(object: &Value, now: i64) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_some_and(|t| t.unix_timestamp() + DELETION_GRACE_SECONDS < now)
}

/// Checks that the objects a token names still exist with the UIDs it names.
async fn check_live(state: &AppState, claims: &Claims, now: i64) -> Result<(), TokenError> {
    let k = &claims.kubernetes;
    let bound: [(&'static str, &'static str, Option<&ObjectRef>); 3] = [
        ("serviceaccount", "serviceaccounts", Some(&k.serviceaccount)),
        ("pod", "pods", k.pod.as_ref()),
        ("secret", "secrets", k.secret.as_ref()),
    ];
    for (kind, plural, reference) in bound {
        let Some(reference) = reference else {
            continue;
        };
        let deleted = || TokenError::Deleted {
            kind,
            namespace: k.namespace.clone(),
            name: reference.name.clone(),
        };
        let object = lookup(state, plural, &k.namespace, &reference.name)
            .await?
            .ok_or_else(deleted)?;
        if deleted_before_grace(&object, now) {
            return Err(deleted());
        }
        if uid_of(&object) != reference.uid {
            return Err(TokenError::UidMismatch {
                kind,
                stored: uid_of(&object).to_string(),
                claimed: reference.uid.clone(),
            });
        }
    }
    Ok(())
}

/// Authenticates a service-account token: [`verify`], then the service account and the bound
/// objects must still exist with the same UIDs.
pub async fn authenticate(state: &AppState, token: &str) -> Result<ServiceAccountUser, TokenError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = verify(&state.pki.service_account_key, &state.tokens, token, now)?;
    check_live(state, &claims, now).await?;
    Ok(ServiceAccountUser {
        namespace: claims.kubernetes.namespace,
        name: claims.kubernetes.serviceaccount.name,
        uid: claims.kubernetes.serviceaccount.uid,
    })
}

const TOKEN_REQUEST: &str = "TokenRequest";
const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// A TokenRequest's spec after defaulting.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenRequestSpec {
    audiences: Vec<String>,
    expiration_seconds: i64,
    bound: Option<BoundRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BoundRef {
    api_version: String,
    kind: String,
    name: String,
    uid: String,
}

/// Reads, defaults and validates a TokenRequest body (ValidateTokenRequest).
fn parse_request(name: &str, body: &Bytes) -> Result<(Value, TokenRequestSpec), ApiError> {
    let object = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        parse_object(body)?
    };
    match object.get("kind") {
        None => {}
        Some(Value::String(k)) if k == TOKEN_REQUEST => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "not a {TOKEN_REQUEST} object: kind {other}"
            )))
        }
    }
    let object = Value::Object(object);
    let cannot_handle = |what: &str| {
        ApiError::bad_request(format!(
            "{TOKEN_REQUEST} in version \"v1\" cannot be handled as a {TOKEN_REQUEST}: {what}"
        ))
    };
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    if !(spec.is_null() || spec.is_object()) {
        return Err(cannot_handle("spec must be an object"));
    }
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| cannot_handle("spec.audiences must be strings"))?,
        Some(_) => return Err(cannot_handle("spec.audiences must be a list")),
    };
    let expiration_seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| cannot_handle("spec.expirationSeconds must be an integer"))?,
    };
    let bound = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => {
            let field = |f: &str| {
                r.get(f)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            Some(BoundRef {
                api_version: field("apiVersion"),
                kind: field("kind"),
                name: field("name"),
                uid: field("uid"),
            })
        }
        Some(_) => return Err(cannot_handle("spec.boundObjectRef must be an object")),
    };
    let mut errors = Vec::new();
    if expiration_seconds < MIN_EXPIRATION_SECONDS {
        errors.push(FieldError {
            field: "spec.expirationSeconds".into(),
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {expiration_seconds}: may not specify a duration less than 10 minutes"
            ),
        });
    }
    if expiration_seconds > MAX_EXPIRATION_SECONDS {
        errors.push(FieldError {
            field: "spec.expirationSeconds".into(),
            reason: "FieldValueInvalid",
            message: format!(
                "Invalid value: {expiration_seconds}: may not specify a duration larger than 2^32 seconds"
            ),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            TOKEN_REQUEST,
            AUTHENTICATION_GROUP,
            name,
            &errors,
        ));
    }
    Ok((
        object,
        TokenRequestSpec {
            audiences,
            expiration_seconds,
            bound,
        },
    ))
}

/// `POST serviceaccounts/<name>/token`, as kube-apiserver's TokenREST.
pub async fn create_token(
    state: &AppState,
    target: &Target,
    body: Bytes,
) -> Result<Response, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    let (request, mut spec) = parse_request(&name, &body)?;
    let stored = |e: TokenError| match e {
        TokenError::Store { source, .. } => ApiError::from(source),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Internal error occurred: {other}"),
        ),
    };
    let account = lookup(state, "serviceaccounts", &namespace, &name)
        .await
        .map_err(stored)?
        .ok_or_else(|| ApiError::not_found("serviceaccounts", "", &name))?;
    let mut kubernetes = KubernetesClaims {
        namespace: namespace.clone(),
        serviceaccount: ObjectRef {
            name: name.clone(),
            uid: uid_of(&account).to_string(),
        },
        ..Default::default()
    };
    if let Some(bound) = &spec.bound {
        let (group, _) = bound
            .api_version
            .split_once('/')
            .unwrap_or(("", &bound.api_version));
        let (plural, object) = match (group, bound.kind.as_str()) {
            ("", "Pod") => ("pods", "pod"),
            ("", "Secret") => ("secrets", "secret"),
            _ => {
                let gvk = match bound.api_version.contains('/') {
                    true => format!("{}, Kind={}", bound.api_version, bound.kind),
                    false => format!("/{}, Kind={}", bound.api_version, bound.kind),
                };
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {gvk}"
                )));
            }
        };
        let found = lookup(state, plural, &namespace, &bound.name)
            .await
            .map_err(stored)?
            .ok_or_else(|| ApiError::not_found(plural, "", &bound.name))?;
        let uid = uid_of(&found).to_string();
        if !bound.uid.is_empty() && bound.uid != uid {
            return Err(ApiError::conflict_because(
                &bound.kind,
                "",
                &bound.name,
                &format!(
                    "the UID in the bound object reference ({}) does not match the UID in \
                     record. The object might have been deleted and then recreated",
                    bound.uid
                ),
            ));
        }
        let reference = ObjectRef {
            name: bound.name.clone(),
            uid,
        };
        if object == "pod" {
            let pod_account = found
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if pod_account != name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount \"{name}\" to pod running with \
                     different serviceaccount name."
                )));
            }
            if let Some(node) = found
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                let key = store::object_key("nodes", None, node);
                let node_uid = match state.store.get(&key).await? {
                    Some(kv) => serde_json::from_slice::<Value>(&kv.value)
                        .ok()
                        .map(|n| uid_of(&n).to_string()),
                    None => None,
                };
                kubernetes.node = node_uid.map(|uid| ObjectRef {
                    name: node.to_string(),
                    uid,
                });
            }
            kubernetes.pod = Some(reference);
        } else {
            kubernetes.secret = Some(reference);
        }
    }
    if spec.audiences.is_empty() {
        spec.audiences = state.tokens.api_audiences.clone();
    }
    let now = time::OffsetDateTime::now_utc();
    let iat = now.unix_timestamp();
    let claims = Claims {
        aud: spec.audiences.clone(),
        exp: iat + spec.expiration_seconds,
        iat,
        iss: state.tokens.issuer.clone(),
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes,
        nbf: iat,
        sub: format!("system:serviceaccount:{namespace}:{name}"),
    };
    let token = sign(&state.pki.service_account_key, &claims).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Internal error occurred: {e}"),
        )
    })?;
    let expires = now + time::Duration::seconds(spec.expiration_seconds);
    let mut metadata = request
        .get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    metadata["name"] = json!(name);
    metadata["namespace"] = json!(namespace);
    metadata["creationTimestamp"] = Value::Null;
    let bound = spec.bound.as_ref().map(|b| {
        let mut r = json!({"kind": b.kind, "apiVersion": b.api_version, "name": b.name});
        if !b.uid.is_empty() {
            r["uid"] = json!(b.uid);
        }
        r
    });
    let mut response_spec = json!({
        "audiences": spec.audiences,
        "expirationSeconds": spec.expiration_seconds,
        "boundObjectRef": bound,
    });
    if bound.is_none() {
        response_spec["boundObjectRef"] = Value::Null;
    }
    tracing::debug!(
        user = %format!("system:serviceaccount:{namespace}:{name}"),
        expires = %rfc3339(expires),
        "issued a service account token"
    );
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": TOKEN_REQUEST,
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": metadata,
            "spec": response_spec,
            "status": {"token": token, "expirationTimestamp": rfc3339(expires)},
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            aud: vec![DEFAULT_ISSUER.into()],
            exp: now + 3600,
            iat: now,
            iss: DEFAULT_ISSUER.into(),
            jti: "j".into(),
            kubernetes: KubernetesClaims {
                namespace: "ns".into(),
                serviceaccount: ObjectRef {
                    name: "robot".into(),
                    uid: "sa-uid".into(),
                },
                pod: Some(ObjectRef {
                    name: "web".into(),
                    uid: "pod-uid".into(),
                }),
                ..Default::default()
            },
            nbf: now,
            sub: "system:serviceaccount:ns:robot".into(),
        }
    }

    #[test]
    fn claims_are_kubernetes_claims() {
        let key = ServiceAccountKey::generate().unwrap();
        let token = sign(&key, &claims(1_000)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |p: &str| -> Value {
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(decode(parts[0]), json!({"alg": "ES256", "kid": key.key_id}));
        assert_eq!(
            decode(parts[1]),
            json!({
                "aud": [DEFAULT_ISSUER], "exp": 4_600, "iat": 1_000, "nbf": 1_000,
                "iss": DEFAULT_ISSUER, "jti": "j", "sub": "system:serviceaccount:ns:robot",
                "kubernetes.io": {
                    "namespace": "ns",
                    "serviceaccount": {"name": "robot", "uid": "sa-uid"},
                    "pod": {"name": "web", "uid": "pod-uid"},
                },
            })
        );
        let user = ServiceAccountUser {
            namespace: "ns".into(),
            name: "robot".into(),
            uid: "sa-uid".into(),
        };
        assert_eq!(user.username(), "system:serviceaccount:ns:robot");
        assert_eq!(
            user.groups(),
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
    }

    #[test]
    fn verify_checks_signature_time_issuer_and_audience() {
        let key = ServiceAccountKey::generate().unwrap();
        let other_key = ServiceAccountKey::generate().unwrap();
        let config = TokenConfig::default();
        let now = 1_000_000;
        let check = |token: &str, at: i64, expected: Result<(), TokenError>| {
            let got = verify(&key, &config, token, at).map(|_| ());
            assert_eq!(
                got.map_err(|e| e.to_string()),
                expected.map_err(|e| e.to_string()),
                "{token} at {at}"
            );
        };
        let good = sign(&key, &claims(now)).unwrap();
        check(&good, now, Ok(()));
        check(&good, now + 3600 + LEEWAY_SECONDS, Ok(()));
        check(
            &good,
            now + 3600 + LEEWAY_SECONDS + 1,
            Err(TokenError::Expired),
        );
        check(
            &good,
            now - LEEWAY_SECONDS - 1,
            Err(TokenError::NotYetValid),
        );
        // Another key: the kid differs; without a kid, the signature fails.
        check(
            &sign(&other_key, &claims(now)).unwrap(),
            now,
            Err(TokenError::WrongKey),
        );
        let forged = sign(&other_key, &claims(now)).unwrap();
        let payload_and_sig = forged.split_once('.').unwrap().1;
        let no_kid = format!("{}.{payload_and_sig}", b64(br#"{"alg":"ES256"}"#));
        check(&no_kid, now, Err(TokenError::Signature));
        // A payload swapped under a good signature.
        let mut tampered = claims(now);
        tampered.kubernetes.serviceaccount.name = "admin".into();
        tampered.sub = "system:serviceaccount:ns:admin".into();
        let parts: Vec<&str> = good.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&tampered).unwrap()),
            parts[2]
        );
        check(&swapped, now, Err(TokenError::Signature));
        check(
            &format!("{}.{}.{}", parts[0], parts[1], "AAAA"),
            now,
            Err(TokenError::Signature),
        );
        check("not-a-token", now, Err(TokenError::Malformed));
        check("a.b.c", now, Err(TokenError::Malformed));
        check(
            &format!("{}.x.y", b64(br#"{"alg":"none"}"#)),
            now,
            Err(TokenError::WrongKey),
        );
        let mut foreign = claims(now);
        foreign.aud = vec!["vault".into()];
        check(
            &sign(&key, &foreign).unwrap(),
            now,
            Err(TokenError::Audience {
                token: vec!["vault".into()],
                api: vec![DEFAULT_ISSUER.into()],
            }),
        );
        let mut other_issuer = claims(now);
        other_issuer.iss = "https://elsewhere".into();
        check(
            &sign(&key, &other_issuer).unwrap(),
            now,
            Err(TokenError::Issuer("https://elsewhere".into())),
        );
        let mut wrong_sub = claims(now);
        wrong_sub.sub = "system:serviceaccount:kube-system:admin".into();
        assert!(matches!(
            verify(&key, &config, &sign(&key, &wrong_sub).unwrap(), now),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn token_requests_are_defaulted_and_validated() {
        let check = |body: &str, expected: Result<TokenRequestSpec, (u16, &str)>| {
            let got = parse_request("robot", &Bytes::from(body.to_string()))
                .map(|(_, spec)| spec)
                .map_err(|e| e.code.as_u16());
            match expected {
                Ok(spec) => assert_eq!(got, Ok(spec), "{body}"),
                Err((code, message)) => {
                    let e = parse_request("robot", &Bytes::from(body.to_string())).unwrap_err();
                    assert_eq!(e.code.as_u16(), code, "{body}");
                    assert!(e.message.contains(message), "{body}: {}", e.message);
                }
            }
        };
        let spec = |aud: &[&str], seconds, bound| TokenRequestSpec {
            audiences: aud.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: seconds,
            bound,
        };
        check("", Ok(spec(&[], 3600, None)));
        check(
            r#"{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","spec":{"audiences":null}}"#,
            Ok(spec(&[], 3600, None)),
        );
        check(
            r#"{"spec":{"audiences":["a","b"],"expirationSeconds":600,
                "boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"web","uid":"u"}}}"#,
            Ok(spec(
                &["a", "b"],
                600,
                Some(BoundRef {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: "web".into(),
                    uid: "u".into(),
                }),
            )),
        );
        check(
            r#"{"spec":{"expirationSeconds":599}}"#,
            Err((
                422,
                "TokenRequest.authentication.k8s.io \"robot\" is invalid: spec.expirationSeconds: \
                 Invalid value: 599: may not specify a duration less than 10 minutes",
            )),
        );
        check(
            r#"{"spec":{"expirationSeconds":4294967297}}"#,
            Err((422, "may not specify a duration larger than 2^32 seconds")),
        );
        check(r#"{"kind":"Pod"}"#, Err((400, "not a TokenRequest object")));
        check(
            r#"{"spec":{"audiences":"a"}}"#,
            Err((400, "cannot be handled")),
        );
        check(
            r#"{"spec":{"expirationSeconds":"1h"}}"#,
            Err((400, "cannot be handled")),
        );
        check("[1]", Err((400, "")));
    }
}
