//! The admin HTTP API on EMQX's dashboard port: `/status` for health checks, Prometheus
//! metrics, and EMQX's `/api/v5/...` paths, described by an OpenAPI document generated
//! from the handlers (`/api-docs/openapi.json`). Requests to `/api/v5` present an API key
//! (HTTP Basic, `api_key.bootstrap_file`) when the gateway has keys; without keys the
//! server may only listen on loopback (the configuration check refuses the rest). The
//! dashboard's pages (`dashboard`) are served at `/` and call that same API.
//!
//! Served by a loop of our own over hyper, rather than `axum::serve`, for the two limits a
//! public port needs: connections open at once, and the time a request's head may take to
//! arrive (a client that trickles bytes holds nothing for long).

mod api;
pub mod banned_file;
mod dashboard;
mod downlink;
pub mod keys;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use adapter_kit::StartedListener;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gateway_config::Config;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mqtt_core::broker::Broker;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::reload::Reloader;
pub use downlink::Downlinks;
use keys::{ApiKeys, KeysError};

/// The node's name, as `/status` and EMQX's node fields give it.
pub const NODE: &str = "gateway@127.0.0.1";

/// An error as EMQX's API returns one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// `BAD_API_KEY_OR_SECRET`, `NOT_FOUND`, `BAD_REQUEST`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("dashboard.listeners.http.bind: {0}")]
    Bind(#[from] gateway_config::BindAddrError),
    #[error("dashboard.listeners.http: cannot listen on {bind}")]
    Listen {
        bind: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("api_key.bootstrap_file")]
    Keys(#[from] KeysError),
}

/// What every handler sees.
#[derive(Clone)]
pub struct AdminState {
    broker: Arc<Broker>,
    /// `None`: requests are taken without credentials (loopback only).
    keys: Option<Arc<ApiKeys>>,
    listeners: Arc<Vec<api::Listener>>,
    shutdown: watch::Receiver<bool>,
    node: Arc<str>,
    reloader: Reloader,
    /// How requests reach the clients of the adapters that take them.
    downlinks: Downlinks,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gateway admin API",
        description = "Status, metrics and management of the gateway, on EMQX's paths."
    ),
    modifiers(&ApiKeyScheme),
    components(schemas(ApiError))
)]
struct ApiDoc;

/// Declares the HTTP Basic scheme the `/api/v5` operations name.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "An API key and its secret from api_key.bootstrap_file",
                    ))
                    .build(),
            ),
        );
    }
}

/// The router, its OpenAPI document served beside it.
fn router(state: AdminState) -> axum::Router {
    let authenticated = OpenApiRouter::new()
        .routes(routes!(api::listeners))
        .routes(routes!(api::stats))
        .routes(routes!(api::broker_metrics))
        .routes(routes!(api::publish))
        .routes(routes!(api::publish_bulk))
        .routes(routes!(api::retained_messages))
        .routes(routes!(api::retained_message, api::clear_retained_message))
        .routes(routes!(api::banned, api::ban))
        .routes(routes!(api::unban))
        .routes(routes!(api::clients))
        .routes(routes!(api::client, api::kick_client))
        .routes(routes!(api::gateway_clients))
        .routes(routes!(api::gateway_client, api::kick_gateway_client))
        .routes(routes!(api::subscriptions))
        .routes(routes!(api::client_subscriptions))
        .routes(routes!(api::gateway_client_subscriptions))
        .routes(routes!(api::reload))
        .routes(routes!(downlink::read))
        .routes(routes!(downlink::write))
        .routes(routes!(downlink::observe))
        .routes(routes!(downlink::execute))
        .routes(routes!(downlink::discover))
        .routes(routes!(downlink::lookup))
        .routes(routes!(downlink::coap_client_request))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::status))
        .routes(routes!(api::status_v5))
        .routes(routes!(api::metrics))
        .routes(routes!(api::prometheus_stats))
        .merge(authenticated)
        .split_for_parts();
    let document = Arc::new(document);
    let serve_document = move || {
        let document = document.clone();
        async move { Json(document.as_ref().clone()) }
    };
    router
        .route(
            "/api-docs/openapi.json",
            axum::routing::get(serve_document.clone()),
        )
        // EMQX's path for the same document.
        .route("/api-docs/swagger.json", axum::routing::get(serve_document))
        // The dashboard, outside the document: pages, not API.
        .route("/", axum::routing::get(dashboard::index))
        .route("/assets/{name}", axum::routing::get(dashboard::asset))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ApiError {
            code: "NOT_FOUND".into(),
            message: "no such path".into(),
        }),
    )
        .into_response()
}

/// Lets a request through when it presents a key of the gateway's, or when the gateway
/// has none.
async fn require_key(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Some(refusal) = browser_refusal(&request, state.keys.is_some()) {
        return refusal;
    }
    let Some(keys) = &state.keys else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    if presented.and_then(|value| keys.authorize(value)).is_some() {
        return next.run(request).await;
    }
    // Not logged one by one: a client guessing keys would fill the log.
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"gateway\"")],
        Json(ApiError {
            code: "BAD_API_KEY_OR_SECRET".into(),
            message: "Check the API key and secret".into(),
        }),
    )
        .into_response()
}

/// Refuses what a web page the operator's browser visits could make it send: a request
/// another site started (`Sec-Fetch-Site: cross-site` or `same-site`, or an `Origin` not
/// the one asked), since a page may fire requests at a loopback port it cannot read; and,
/// without keys, a request for a host that is not loopback, the mark of DNS rebinding (a
/// hostile name made to resolve to 127.0.0.1, so that its page may read the answers). A
/// client that is not a browser sends neither header, and names the address it reached.
fn browser_refusal(request: &Request, with_keys: bool) -> Option<Response> {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST);
    // A browser's own word first: a proxy in front may have rewritten `Host`, so that
    // even the dashboard's requests would seem to come from another origin.
    let from_elsewhere = match text(header::HeaderName::from_static("sec-fetch-site")) {
        Some(site) => matches!(site, "cross-site" | "same-site"),
        None => text(header::ORIGIN).is_some_and(|origin| {
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            origin_host != host
        }),
    };
    let refuse = |message: &str| {
        Some(
            (
                StatusCode::FORBIDDEN,
                Json(ApiError {
                    code: "FORBIDDEN".into(),
                    message: message.into(),
                }),
            )
                .into_response(),
        )
    };
    if from_elsewhere {
        return refuse("a request another site's page started is refused");
    }
    if !with_keys && !host.is_none_or(is_loopback_host) {
        return refuse("without API keys, only a loopback host name is served");
    }
    None
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or(bracketed, |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The listeners of the configuration, each marked running when it started.
fn listener_views(config: &Config, started: &[StartedListener]) -> Vec<api::Listener> {
    config
        .all_listeners()
        .iter()
        .map(|entry| {
            let id = entry.listener_name();
            let running = started.iter().find(|s| *s.name == *id);
            api::Listener {
                kind: entry.kind.transport().to_owned(),
                name: entry.name.to_owned(),
                protocol: entry.kind.protocol().to_owned(),
                bind: running.map_or_else(|| entry.bind.to_owned(), |s| s.bound.to_string()),
                enable: entry.starts,
                running: running.is_some(),
                id,
            }
        })
        .collect()
}

/// Binds the admin server as the configuration says (`None` when it is disabled) and
/// gives the future that serves it until `shutdown`.
pub fn start(
    config: &Config,
    broker: Arc<Broker>,
    started: &[StartedListener],
    reloader: Reloader,
    downlinks: Downlinks,
    shutdown: watch::Receiver<bool>,
) -> Result<
    Option<(
        SocketAddr,
        impl std::future::Future<Output = ()> + Send + 'static,
    )>,
    AdminError,
> {
    let http = &config.dashboard.listeners.http;
    if !http.enable {
        return Ok(None);
    }
    let keys = config
        .api_key
        .bootstrap_file
        .as_deref()
        .map(ApiKeys::load)
        .transpose()?
        .map(Arc::new);
    let bind = http.bind_addr()?;
    let listen = || -> std::io::Result<TcpListener> {
        let socket = std::net::TcpListener::bind(bind)?;
        socket.set_nonblocking(true)?;
        TcpListener::from_std(socket)
    };
    let listener = listen().map_err(|source| AdminError::Listen { bind, source })?;
    let bound = listener.local_addr().unwrap_or(bind);
    let state = AdminState {
        broker,
        keys,
        listeners: Arc::new(listener_views(config, started)),
        shutdown: shutdown.clone(),
        node: Arc::from(NODE),
        reloader,
        downlinks,
    };
    let limits = Limits {
        max_connections: http.max_connections as usize,
        request_timeout: http.request_timeout.get(),
    };
    Ok(Some((
        bound,
        serve(listener, router(state), limits, shutdown),
    )))
}

struct Limits {
    max_connections: usize,
    request_timeout: Duration,
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // A connection beyond the limit waits in the kernel's backlog, unread.
        let slot = tokio::select! {
            _ = shutdown.changed() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_timeout);
        let mut closing = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                _ = closing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = outcome {
                tracing::debug!(%peer, %error, "admin API connection ended");
            }
        });
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::builder().uri("/api/v5/clients");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).expect("a request")
    }

    fn refused(headers: &[(&str, &str)], with_keys: bool) -> bool {
        browser_refusal(&request(headers), with_keys).is_some()
    }

    #[test]
    fn a_request_another_site_started_is_refused() {
        let host = ("host", "127.0.0.1:18083");
        for with_keys in [false, true] {
            assert!(!refused(&[host], with_keys), "curl");
            assert!(!refused(
                &[host, ("sec-fetch-site", "same-origin")],
                with_keys
            ));
            assert!(!refused(
                &[host, ("origin", "http://127.0.0.1:18083")],
                with_keys
            ));
            assert!(refused(
                &[host, ("sec-fetch-site", "cross-site")],
                with_keys
            ));
            assert!(refused(&[host, ("sec-fetch-site", "same-site")], with_keys));
            assert!(refused(
                &[host, ("origin", "http://evil.example")],
                with_keys
            ));
            assert!(refused(&[host, ("origin", "null")], with_keys));
        }
        // Behind a proxy that rewrote Host, the browser's word decides.
        assert!(!refused(
            &[
                ("host", "127.0.0.1:18083"),
                ("origin", "https://gateway.example"),
                ("sec-fetch-site", "same-origin")
            ],
            true
        ));
    }

    #[test]
    fn without_keys_only_a_loopback_host_is_served() {
        for host in [
            "127.0.0.1:18083",
            "localhost",
            "LOCALHOST:1",
            "[::1]:18083",
            "127.1.2.3",
        ] {
            assert!(!refused(&[("host", host)], false), "{host}");
        }
        for host in [
            "evil.example:18083",
            "192.0.2.1",
            "[2001:db8::1]:18083",
            "localhost.evil",
        ] {
            assert!(refused(&[("host", host)], false), "{host}");
            assert!(!refused(&[("host", host)], true), "{host}, with keys");
        }
    }
}
