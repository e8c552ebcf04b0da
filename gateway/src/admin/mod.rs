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
