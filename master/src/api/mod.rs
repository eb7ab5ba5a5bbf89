//! The Kubernetes API server: HTTPS (rustls), bearer-token authentication, discovery, and the
//! generic resource handlers over the store.
//!
//! A request's path: TLS accept → hyper (HTTP/1.1 or HTTP/2) → axum router → `authenticate`
//! (bearer token; health and version endpoints are public) → `route` parses
//! `/api/v1/...` or `/apis/<group>/<version>/...` into a [`handlers::Target`] → the handler for
//! the verb reads or writes the store → JSON (or a watch stream) back; every error is a `Status`.

pub mod admission;
pub mod allocator;
pub mod defaults;
pub mod deletion;
pub mod discovery;
pub mod handlers;
pub mod openapi;
pub mod patch_meta;
pub mod pki;
pub mod propagation;
pub mod protobuf;
pub mod proxy;
pub mod resources;
pub mod selectors;
pub mod smp;
pub mod status;
pub mod subresources;
pub mod tables;
pub mod tokens;
pub mod validation;
pub mod watch;
pub mod watchcache;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::store::Store;
use status::ApiError;

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub pki: Arc<pki::Pki>,
    /// Fans one store watch per resource out to every API watcher.
    pub watches: watchcache::WatchHub,
    /// Service cluster IPs and node ports.
    pub allocator: Arc<allocator::Allocator>,
    /// The tolerations every pod gets unless it has its own (DefaultTolerationSeconds).
    pub default_tolerations: admission::DefaultTolerations,
    /// The service-account token issuer and the API's audiences.
    pub tokens: tokens::TokenConfig,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        pki: pki::Pki,
        allocator: Arc<allocator::Allocator>,
    ) -> AppState {
        AppState {
            watches: watchcache::WatchHub::new(store.clone()),
            store,
            pki: Arc::new(pki),
            allocator,
            default_tolerations: admission::DefaultTolerations::default(),
            tokens: tokens::TokenConfig::default(),
        }
    }

    /// Sets the service-account token issuer and API audiences (`--service-account-issuer`,
    /// `--api-audiences`).
    pub fn with_token_config(mut self, tokens: tokens::TokenConfig) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets the DefaultTolerationSeconds admission's tolerations (300 seconds each by default);
    /// `Config::default_tolerations` gives them from the flags.
    pub fn with_default_tolerations(mut self, tolerations: admission::DefaultTolerations) -> Self {
        self.default_tolerations = tolerations;
        self
    }
}

/// The router: public endpoints, then everything else behind authentication.
pub fn router(state: Arc<AppState>) -> Router {
    let public = Router::new()
        .route("/healthz", get(ok))
        .route("/livez", get(ok))
        .route("/readyz", get(ready))
        .route("/version", get(discovery::version));
    let private = Router::new()
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::v3_index))
        .route("/openapi/v3/{*path}", get(openapi::v3_document))
        .fallback(route)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    public.merge(private).with_state(state)
}

async fn ok() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.store.current_revision().await {
        Ok(_) => "ok".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
        )
            .into_response(),
    }
}

/// Bearer-token authentication: the admin token, or a service-account token (JWS) that
/// [`tokens::authenticate`] accepts. Every authenticated user may do everything (there is no
/// authorization yet); a service account's identity goes into the request's extensions.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_string);
    let unauthorized =
        || ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized").into_response();
    match token {
        Some(token) if state.pki.check_token(&token) => next.run(request).await,
        Some(token) if tokens::looks_like_jwt(&token) => {
            match tokens::authenticate(&state, &token).await {
                Ok(user) => {
                    request.extensions_mut().insert(user);
                    next.run(request).await
                }
                Err(e) => {
                    tracing::info!(error = %e, "rejected a service account token");
                    unauthorized()
                }
            }
        }
        _ => unauthorized(),
    }
}

/// Parses a resource path and hands it to the handlers.
async fn route(
    State(state): State<Arc<AppState>>,
    method: Method,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let path = request.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return not_found(&path),
    };
    if let (true, Some((ns, name, sub))) = (group.is_empty(), proxy::matches(rest)) {
        let (ns, name, sub) = (ns.to_string(), name.to_string(), sub.to_string());
        return proxy::handle(state, &ns, &name, &sub, request).await;
    }
    if let (true, Some(id)) = (group.is_empty(), proxy::matches_node(rest)) {
        let id = id.to_string();
        return proxy::handle_node(state, &id, request).await;
    }
    if rest.is_empty() {
        return discovery::resource_list(group, version)
            .map(IntoResponse::into_response)
            .unwrap_or_else(|| not_found(&path));
    }
    // Namespaced paths start with namespaces/<ns>/<plural>; /api/v1/namespaces/<name>[/status]
    // is the Namespace itself.
    let (namespace, plural, name, subresource) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(group.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            (
                Some(*ns),
                *plural,
                tail.first().copied(),
                tail.get(1).copied(),
            )
        }
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return not_found(&path),
    };
    let Some(resource) = resources::find(group, version, plural) else {
        return not_found(&path);
    };
    if resource.namespaced != namespace.is_some() && (namespace.is_some() || name.is_some()) {
        return not_found(&path);
    }
    if (rest.len() > 5 && namespace.is_some()) || (rest.len() > 3 && namespace.is_none()) {
        return not_found(&path);
    }
    let target = handlers::Target {
        resource,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
    };
    let (parts, body) = request.into_parts();
    handlers::handle(state, method, target, query, parts.headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn not_found(path: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource (path {path})"),
    )
    .into_response()
}

/// Binds the API's listening socket, so a taken port is reported before anything is announced.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr}: {e} (is another skiff-master running? pick another port \
             with --secure-port)"
        )
    })
}

/// Serves HTTPS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = state.pki.rustls_server_config()?;
    let acceptor = TlsAcceptor::from(tls);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving the Kubernetes API over HTTPS");
    }
    let app = router(state);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        // Watch events are small writes: Nagle would hold them for the peer's delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request.map(Body::new))
                },
            );
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    Ok(())
}

/// Creates the namespaces every cluster has (`default`, `kube-system`, `kube-public`,
/// `kube-node-lease`) through the same create path as any client; existing ones are kept.
pub async fn ensure_default_namespaces(state: &Arc<AppState>) -> Result<(), ApiError> {
    let Some(namespaces) = resources::find("", "v1", "namespaces") else {
        return Ok(());
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let target = handlers::Target {
            resource: namespaces,
            namespace: None,
            name: None,
            subresource: None,
        };
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/json".parse().expect("static header"),
        );
        match handlers::handle(
            state.clone(),
            Method::POST,
            target,
            HashMap::new(),
            headers,
            Body::from(body.to_string()),
        )
        .await
        {
            Ok(_) => tracing::info!(namespace = name, "created namespace"),
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
