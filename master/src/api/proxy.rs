//! `pods/log`, `pods/exec` and `nodes/proxy`: the API server proxies the request to a node
//! agent's HTTPS API (kubelet's port 10250), presenting the kubelet client certificate of
//! [`super::pki`]; the node requires it (mutual TLS).
//!
//! `pods/log` and `pods/exec` find the pod's node and map to the node's `containerLogs` and
//! `exec` paths; the node's errors come back as a `Status`. `nodes/proxy`
//! (`/api/v1/nodes/<name>[:<port>]/proxy/<path>`, every method, as kube-apiserver's
//! `NodeProxyOptions`) forwards the rest of the path, the query, the headers (not the
//! `Authorization` the master checked) and the body to the node as they are, and passes the
//! node's answer back unchanged: that is what `kubectl get --raw /api/v1/nodes/N/proxy/...`
//! and `skiff image import` use. Only failures to reach the node are the master's own
//! (`Status` 404 for an unknown node, 503 for an unreachable one).
//!
//! Bodies stream both ways as they come. Upgrades (exec's WebSocket, the
//! `v5.channel.k8s.io` / `v4.channel.k8s.io` protocol) go to the node, and once both sides
//! have switched protocols the bytes are spliced both ways, like kube-apiserver's
//! upgrade-aware proxy. The node's serving certificate is self-signed and not checked (as
//! kube-apiserver without `--kubelet-certificate-authority`); the node checks ours.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::Value;

use super::status::ApiError;
use super::AppState;
use crate::store;

/// kubelet's port, when the Node does not say (`status.daemonEndpoints.kubeletEndpoint.Port`).
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `path` segments (after `/api/v1`) name a proxied pod subresource:
/// `namespaces/<ns>/pods/<name>/<log|exec>`.
pub fn matches<'a>(rest: &[&'a str]) -> Option<(&'a str, &'a str, &'a str)> {
    match rest {
        ["namespaces", ns, "pods", name, sub @ ("log" | "exec")] => Some((ns, name, sub)),
        _ => None,
    }
}

/// Whether `path` segments (after `/api/v1`) are `nodes/<name>/proxy[/…]`; the node's name
/// (with its optional scheme and port).
pub fn matches_node<'a>(rest: &[&'a str]) -> Option<&'a str> {
    match rest {
        ["nodes", name, "proxy", ..] => Some(name),
        _ => None,
    }
}

/// Answers `pods/log` or `pods/exec` for pod `namespace/name`.
pub async fn handle(
    state: Arc<AppState>,
    namespace: &str,
    name: &str,
    sub: &str,
    request: Request,
) -> Response {
    match proxy(state, namespace, name, sub, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Answers `nodes/<id>/proxy/<path>`; `id` is `[scheme:]name[:port]`.
pub async fn handle_node(state: Arc<AppState>, id: &str, request: Request) -> Response {
    match proxy_node(state, id, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A node's agent, as the proxy reaches it.
struct Upstream {
    node_name: String,
    host: String,
    port: u16,
}

impl Upstream {
    /// The agent of the stored Node `node_name` (404 if there is none), on `port` if given.
    async fn of(state: &AppState, node_name: &str, port: Option<u16>) -> Result<Self, ApiError> {
        let node = get_object(state, &store::object_key("nodes", None, node_name))
            .await?
            .ok_or_else(|| ApiError::not_found("nodes", "", node_name))?;
        let (host, default_port) = node_endpoint(&node).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("node {node_name} reports no address to reach its agent at"),
            )
        })?;
        Ok(Upstream {
            node_name: node_name.to_string(),
            host,
            port: port.unwrap_or(default_port),
        })
    }
}

/// `[scheme:]name[:port]`, as kube-apiserver's `SplitSchemeNamePort`; only `https` (or no
/// scheme) is served, since node agents speak nothing else.
pub fn split_node_id(id: &str) -> Result<(&str, Option<u16>), ApiError> {
    let invalid = || ApiError::bad_request(format!("invalid node request {id:?}"));
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return Err(invalid()),
    };
    if name.is_empty() {
        return Err(invalid());
    }
    match scheme {
        "" | "https" => {}
        "http" => {
            return Err(ApiError::bad_request(format!(
                "node agents serve only https, not {id:?}"
            )))
        }
        _ => return Err(invalid()),
    }
    let port = match port {
        "" => None,
        p => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(invalid)?,
        ),
    };
    Ok((name, port))
}

/// The part of `path` after `nodes/<id>/proxy`, always starting with `/`.
pub fn node_path<'a>(path: &'a str, id: &str) -> &'a str {
    let marker = format!("nodes/{id}/proxy");
    let rest = path
        .find(&marker)
        .map(|at| &path[at + marker.len()..])
        .unwrap_or("");
    if rest.starts_with('/') {
        rest
    } else {
        "/"
    }
}

async fn proxy_node(
    state: Arc<AppState>,
    id: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let (node_name, port) = split_node_id(id)?;
    let upstream = Upstream::of(&state, node_name, port).await?;
    let mut uri = node_path(request.uri().path(), id).to_string();
    if let Some(query) = request.uri().query() {
        uri.push('?');
        uri.push_str(query);
    }
    let response = exchange(&state, &upstream, &uri, request, forward_to_node, true).await?;
    Ok(response)
}

/// The request headers `nodes/proxy` forwards: all but hop-by-hop ones (except those of an
/// upgrade), `Host` and the master's own credentials.
fn forward_to_node(name: &HeaderName) -> bool {
    name == header::UPGRADE
        || name == header::CONNECTION
        || !(is_hop_by_hop(name) || name == header::HOST || name == header::AUTHORIZATION)
}

/// The request headers `pods/log` and `pods/exec` forward.
fn forward_to_pod(name: &HeaderName) -> bool {
    name == header::UPGRADE
        || name == header::CONNECTION
        || name.as_str().starts_with("sec-websocket-")
        || name == header::ACCEPT
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), not to the message.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

async fn proxy(
    state: Arc<AppState>,
    namespace: &str,
    name: &str,
    sub: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let allowed = match sub {
        "log" => request.method() == Method::GET,
        _ => request.method() == Method::GET || request.method() == Method::POST,
    };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the server does not allow this method on the requested resource: {}",
                request.method()
            ),
        ));
    }
    let pairs = parse_query(request.uri().query().unwrap_or(""));
    let pod = get_object(&state, &store::object_key("pods", Some(namespace), name))
        .await?
        .ok_or_else(|| ApiError::not_found("pods", "", name))?;
    let container = choose_container(
        &pod,
        name,
        pairs
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.as_str()),
    )?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let upstream = Upstream::of(&state, node_name, None).await?;

    let forwarded: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "container")
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect();
    let node_path = match sub {
        "log" => "containerLogs",
        _ => "exec",
    };
    let mut uri = format!(
        "/{node_path}/{}/{}/{}",
        escape(namespace),
        escape(name),
        escape(&container)
    );
    if !forwarded.is_empty() {
        uri.push('?');
        uri.push_str(&forwarded.join("&"));
    }

    let response = exchange(&state, &upstream, &uri, request, forward_to_pod, false).await?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response);
    }
    if !response.status().is_success() {
        // The node answers errors as text; clients expect a Status.
        let code = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&body).trim().to_string();
        let reason = match code {
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "Forbidden",
            _ => "InternalError",
        };
        return Err(ApiError::new(code, reason, message));
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("text/plain"));
    let mut out = Response::new(response.into_body());
    out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    Ok(out)
}

/// Sends `request` to `upstream` as `uri`: its method, the headers `forward` keeps, and its
/// body when `with_body` (streamed). An upgrade the node accepts is spliced to the client on
/// a task of its own; otherwise the node's status, headers (but hop-by-hop ones) and
/// streaming body come back.
async fn exchange(
    state: &AppState,
    upstream: &Upstream,
    uri: &str,
    mut request: Request,
    forward: fn(&HeaderName) -> bool,
    with_body: bool,
) -> Result<Response, ApiError> {
    let Upstream {
        node_name,
        host,
        port,
    } = upstream;
    let stream = connect(state, host, *port).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("cannot reach the agent of node {node_name} at {host}:{port}: {e}"),
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| internal(format!("http handshake with node {node_name}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });

    let upgrading = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| !v.is_empty());
    let client_upgrade = if upgrading {
        request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let (parts, body) = request.into_parts();
    let mut outgoing = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .header(header::HOST, format!("{host}:{port}"));
    for (k, v) in &parts.headers {
        if forward(k) && (upgrading || (k != header::UPGRADE && k != header::CONNECTION)) {
            outgoing = outgoing.header(k, v);
        }
    }
    let body = if with_body { body } else { Body::empty() };
    let outgoing = outgoing
        .body(body)
        .map_err(|e| internal(format!("building the node request: {e}")))?;
    let mut response = sender.send_request(outgoing).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("request to the agent of node {node_name} failed: {e}"),
        )
    })?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(internal("the node switched protocols unasked".into()));
        };
        let node_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(node)) = (client_upgrade.await, node_upgrade.await) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut node = TokioIo::new(node);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
        });
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in response.headers() {
            out = out.header(k, v);
        }
        return out.body(Body::empty()).map_err(|e| internal(e.to_string()));
    }
    let (parts, body) = response.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        if !is_hop_by_hop(k) {
            out.headers_mut().append(k, v.clone());
        }
    }
    Ok(out)
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
}

async fn get_object(state: &AppState, key: &str) -> Result<Option<Value>, ApiError> {
    let Some(kv) = state.store.get(key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&kv.value)
        .map(Some)
        .map_err(|e| internal(format!("stored object {key} is not json: {e}")))
}

/// The container to address: the one named, which must be in the pod, or the only one.
pub fn choose_container(
    pod: &Value,
    pod_name: &str,
    named: Option<&str>,
) -> Result<String, ApiError> {
    let names: Vec<&str> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    let regular: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match named.filter(|n| !n.is_empty()) {
        Some(n) if names.contains(&n) => Ok(n.to_string()),
        Some(n) => Err(ApiError::bad_request(format!(
            "container {n} is not valid for pod {pod_name}"
        ))),
        None if regular.len() == 1 => Ok(regular[0].to_string()),
        None if regular.is_empty() => Err(ApiError::bad_request(format!(
            "pod {pod_name} has no containers"
        ))),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            regular.join(" ")
        ))),
    }
}

/// The agent's address: the InternalIP (else the first address) and the kubelet port.
pub fn node_endpoint(node: &Value) -> Option<(String, u16)> {
    let addresses = node["status"]["addresses"].as_array()?;
    let pick = |t: &str| {
        addresses
            .iter()
            .find(|a| a["type"] == t)
            .and_then(|a| a["address"].as_str())
    };
    let host = pick("InternalIP")
        .or_else(|| pick("Hostname"))
        .or_else(|| addresses.first().and_then(|a| a["address"].as_str()))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host.to_string(), port))
}

/// Connects to the node with the kubelet client certificate.
async fn connect(
    state: &AppState,
    host: &str,
    port: u16,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let pki = &state.pki;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from_pem_slice(pki.kubelet_client_cert_pem.as_bytes())?;
    let key = PrivateKeyDer::from_pem_slice(pki.kubelet_client_key_pem.as_bytes())?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let tcp =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await??;
    let name = ServerName::try_from(host.to_string())?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await??;
    Ok(tls)
}

/// Accepts the node's self-signed serving certificate (signatures are still checked, so the
/// peer holds the key of the certificate it shows).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The query's pairs in order, decoded (repeated keys such as `command` kept).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_choice() {
        let one = json!({"spec": {"containers": [{"name": "web"}]}});
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(choose_container(&one, "p", None).unwrap(), "web");
        assert_eq!(choose_container(&two, "p", Some("init")).unwrap(), "init");
        let e = choose_container(&two, "p", None).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("choose one of: [a b]"), "{}", e.message);
        let e = choose_container(&one, "p", Some("nope")).unwrap_err();
        assert_eq!(e.message, "container nope is not valid for pod p");
    }

    #[test]
    fn endpoint_of_a_node() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
                                     "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}}});
        assert_eq!(node_endpoint(&node), Some(("10.0.0.5".into(), 11250)));
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(node_endpoint(&bare), Some(("n1".into(), 10250)));
        assert_eq!(node_endpoint(&json!({})), None);
    }

    #[test]
    fn query_round_trip() {
        let q = parse_query("command=sh&command=-c&command=echo+a%26b&container=c");
        assert_eq!(q[2], ("command".into(), "echo a&b".into()));
        assert_eq!(escape("echo a&b"), "echo%20a%26b");
        assert!(matches(&["namespaces", "d", "pods", "p", "exec"]).is_some());
        assert!(matches(&["namespaces", "d", "pods", "p", "status"]).is_none());
    }

    #[test]
    fn node_proxy_paths() {
        assert_eq!(matches_node(&["nodes", "n1", "proxy"]), Some("n1"));
        assert_eq!(
            matches_node(&["nodes", "n1", "proxy", "images", "import"]),
            Some("n1")
        );
        assert_eq!(matches_node(&["nodes", "n1", "status"]), None);
        assert_eq!(matches_node(&["nodes", "n1"]), None);

        let check =
            |path: &str, id: &str, want: &str| assert_eq!(node_path(path, id), want, "{path}");
        check("/api/v1/nodes/n1/proxy", "n1", "/");
        check("/api/v1/nodes/n1/proxy/", "n1", "/");
        check("/api/v1/nodes/n1/proxy/healthz", "n1", "/healthz");
        check("/api/v1/nodes/n1/proxy/logs/", "n1", "/logs/");
        check(
            "/api/v1/nodes/n1:10250/proxy/a%2Fb/c",
            "n1:10250",
            "/a%2Fb/c",
        );
        // A name that is also a later segment is found where it is the node's.
        check("/api/v1/nodes/proxy/proxy/proxy", "proxy", "/proxy");
    }

    #[test]
    fn node_ids() {
        let check = |id: &str, want: Result<(&str, Option<u16>), StatusCode>| {
            assert_eq!(split_node_id(id).map_err(|e| e.code), want, "{id}");
        };
        check("n1", Ok(("n1", None)));
        check("n1:11250", Ok(("n1", Some(11250))));
        check("https:n1:11250", Ok(("n1", Some(11250))));
        check("https:n1:", Ok(("n1", None)));
        check("http:n1:10250", Err(StatusCode::BAD_REQUEST));
        check("ftp:n1:1", Err(StatusCode::BAD_REQUEST));
        check("n1:port", Err(StatusCode::BAD_REQUEST));
        check(":10250", Err(StatusCode::BAD_REQUEST));
        check("a:b:c:d", Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn forwarded_headers() {
        let name = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        for kept in [
            "content-type",
            "content-length",
            "accept",
            "x-stream-protocol-version",
            "upgrade",
            "connection",
        ] {
            assert!(forward_to_node(&name(kept)), "{kept}");
        }
        for dropped in [
            "authorization",
            "host",
            "transfer-encoding",
            "keep-alive",
            "te",
        ] {
            assert!(!forward_to_node(&name(dropped)), "{dropped}");
        }
        assert!(!forward_to_pod(&name("content-type")));
    }
}
