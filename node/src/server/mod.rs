//! The node's HTTPS API (kubelet's port 10250 and paths), reached by the master's `pods/log`,
//! `pods/exec` and `nodes/proxy` proxy:
//!
//! - `GET /healthz`
//! - `GET /containerLogs/{namespace}/{pod}/{container}?follow=&tailLines=&timestamps=&previous=&sinceSeconds=&sinceTime=&limitBytes=`
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=…&stdin=&stdout=&stderr=&tty=`, a
//!   WebSocket upgrade speaking the `v5.channel.k8s.io` / `v4.channel.k8s.io` protocol ([`exec`])
//! - `POST /images/import` with an OCI image archive as the body; answers
//!   `{"images": [names]}` ([`images`]; `skiff image import` sends it through `nodes/proxy`)
//!
//! Every connection must present a client certificate issued by the cluster CA ([`tls`]); the
//! handshake fails otherwise. What the server needs from the agent is containerd and the pod
//! logs directory ([`Node`]), so it runs and is tested on its own.

pub mod containers;
pub mod exec;
pub mod images;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::logs::reader::{self, LogOptions};
use crate::runtime::Containerd;

/// kubelet's port.
pub const DEFAULT_PORT: u16 = 10250;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the node API serves from.
pub struct Node {
    /// containerd, in the agent's namespace.
    pub containerd: Containerd,
    /// Where container logs live (`--pod-logs-dir`, default `/var/log/pods`).
    pub pod_logs_dir: PathBuf,
    /// Where exec creates its stdio FIFOs (a directory only root can enter).
    pub fifo_dir: PathBuf,
    /// Where uploaded image archives are spooled, and how large they may be.
    pub image_import: images::ImageImport,
}

/// A response body: a whole message or a stream.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Serves the node API on `listener` until `shutdown` completes; connections then in flight
/// (log followers, exec sessions) are left to finish on their own tasks.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "node api: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "node api: tls handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(route(&node, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "node api: connection ended");
            }
        });
    }
}

/// Dispatches one request.
async fn route(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["containerLogs", ns, pod, container]) => {
            container_logs(node, ns, pod, container, &query).await
        }
        (&Method::GET | &Method::POST, ["exec", ns, pod, container]) => {
            exec::handle(node.clone(), ns, pod, container, &query, req).await
        }
        (&Method::POST, ["images", "import"]) => images::handle(node, req).await,
        (_, ["healthz" | "containerLogs" | "exec", ..] | ["images", "import"]) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not allowed on {path}", req.method()),
        ),
        _ => text(StatusCode::NOT_FOUND, &format!("no such path: {path}")),
    }
}

/// The query's parameters, each with all its values in order.
pub type Query = HashMap<String, Vec<String>>;

fn first<'a>(query: &'a Query, key: &str) -> Option<&'a str> {
    query.get(key).and_then(|v| v.first()).map(String::as_str)
}

/// A boolean parameter the way Go's `strconv.ParseBool` reads it (absent or empty: false).
fn flag(query: &Query, key: &str) -> Result<bool, String> {
    match first(query, key) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(v) => Err(format!("{key}={v:?} is not a boolean")),
    }
}

fn number(query: &Query, key: &str) -> Result<Option<i64>, String> {
    match first(query, key) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{key}={v:?} is not an integer")),
    }
}

/// Reads the log options of a `containerLogs` query.
pub fn log_options(query: &Query) -> Result<(LogOptions, bool), String> {
    let mut opts = LogOptions {
        follow: flag(query, "follow")?,
        timestamps: flag(query, "timestamps")?,
        ..Default::default()
    };
    let previous = flag(query, "previous")?;
    // kubectl --tail=-1 means everything.
    opts.tail_lines = number(query, "tailLines")?.and_then(|n| u64::try_from(n).ok());
    if let Some(n) = number(query, "limitBytes")? {
        if n < 1 {
            return Err("limitBytes must be greater than zero".into());
        }
        opts.limit_bytes = Some(n as u64);
    }
    if let Some(s) = number(query, "sinceSeconds")? {
        if s < 1 {
            return Err("sinceSeconds must be greater than zero".into());
        }
        opts.since = Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(s));
    }
    if let Some(t) = first(query, "sinceTime").filter(|t| !t.is_empty()) {
        let parsed = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map_err(|_| format!("sinceTime={t:?} is not an RFC 3339 time"))?;
        opts.since = Some(parsed);
    }
    Ok((opts, previous))
}

async fn container_logs(
    node: &Arc<Node>,
    ns: &str,
    pod: &str,
    container: &str,
    query: &Query,
) -> Response<Body> {
    let (opts, previous) = match log_options(query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    let found = match containers::find(&node.containerd, ns, pod, container).await {
        Ok(f) => f,
        Err(e @ containers::LookupError::NotFound { .. }) => {
            return text(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let (path, live) = if previous {
        match found.previous_log_path(&node.pod_logs_dir) {
            Some(p) => (p, false),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                    ),
                )
            }
        }
    } else {
        (found.log_path(&node.pod_logs_dir), found.running)
    };
    if let Err(e) = reader::check(&path) {
        let status = if previous {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::NOT_FOUND
        };
        return text(status, &e.to_string());
    }
    // A background task tells the (blocking) reader whether the container still runs.
    let (alive_tx, alive_rx) = tokio::sync::watch::channel(live);
    if live && opts.follow {
        let containerd = node.containerd.clone();
        let id = found.id.clone();
        tokio::spawn(async move {
            while !alive_tx.is_closed() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !containers::is_running(&containerd, &id).await {
                    let _ = alive_tx.send(false);
                    return;
                }
            }
        });
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::task::spawn_blocking(move || {
        let running = move || *alive_rx.borrow();
        if let Err(e) = reader::read(&path, &opts, &tx, &running) {
            tracing::warn!(error = %e, "node api: reading logs failed");
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok(Frame::data(Bytes::from(chunk))), rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// A plain-text response (kubelet answers errors as text).
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut body = message.to_string();
    body.push('\n');
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Splits a query string into its (decoded) parameters.
pub fn parse_query(query: &str) -> Query {
    let mut out: Query = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(&k.replace('+', " ")))
            .or_default()
            .push(percent_decode(&v.replace('+', " ")));
    }
    out
}

/// Decodes `%XX` escapes; malformed ones stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query("command=sh&command=-c&command=echo+hi%20there&tty=true&x");
        assert_eq!(q["command"], ["sh", "-c", "echo hi there"]);
        assert_eq!(first(&q, "tty"), Some("true"));
        assert_eq!(first(&q, "x"), Some(""));
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }

    #[test]
    fn log_option_parsing() {
        let check = |q: &str, want: Result<(bool, Option<u64>, bool, bool), ()>| {
            let got = log_options(&parse_query(q))
                .map(|(o, prev)| (o.follow, o.tail_lines, o.timestamps, prev))
                .map_err(|_| ());
            assert_eq!(got, want, "{q}");
        };
        check("", Ok((false, None, false, false)));
        check(
            "follow=true&tailLines=10&timestamps=1&previous=false",
            Ok((true, Some(10), true, false)),
        );
        check("tailLines=-1&previous=true", Ok((false, None, false, true)));
        check("follow=maybe", Err(()));
        check("tailLines=ten", Err(()));
        check("limitBytes=0", Err(()));
        check("sinceSeconds=-5", Err(()));
        let (o, _) =
            log_options(&parse_query("sinceTime=2026-01-01T00:00:00Z&limitBytes=5")).unwrap();
        assert_eq!(o.limit_bytes, Some(5));
        assert_eq!(o.since.unwrap().year(), 2026);
    }
}
