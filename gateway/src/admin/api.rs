//! The admin API's handlers, each with its OpenAPI description: EMQX's paths and JSON
//! shapes where EMQX has the same thing, so that scripts written for EMQX work.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AdminState, ApiError};

/// A query the handler cannot read, as EMQX answers it.
fn bad_query(rejection: QueryRejection) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(ApiError {
            code: "BAD_REQUEST".into(),
            message: rejection.body_text(),
        }),
    )
        .into_response()
}

/// What `/status` answers in JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    /// The node's name.
    pub node_name: String,
    /// The gateway's version.
    pub rel_vsn: String,
    /// `running`, or `stopping` once shutdown has begun.
    pub status: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A parameter the operation does not know is refused, not ignored: a typo gets an error.
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// `text` (the default, EMQX's two lines) or `json`.
    #[param(inline)]
    format: Option<StatusFormat>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StatusFormat {
    Text,
    Json,
}

fn node_status(state: &AdminState, format: Option<StatusFormat>) -> Response {
    let running = !*state.shutdown.borrow();
    let code = if running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let status = if running { "running" } else { "stopping" };
    match format {
        Some(StatusFormat::Json) => (
            code,
            Json(NodeStatus {
                node_name: state.node.to_string(),
                rel_vsn: mqtt_core::sys::VERSION.to_owned(),
                status: status.to_owned(),
            }),
        )
            .into_response(),
        _ => (
            code,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "Node {} is {}\ngateway is {status}",
                state.node,
                if running { "started" } else { "stopping" }
            ),
        )
            .into_response(),
    }
}

/// Whether the gateway runs: 200 while it serves, 503 once it shuts down (for load
/// balancers and Kubernetes probes). No credentials needed.
#[utoipa::path(
    get,
    path = "/status",
    tag = "Status",
    params(StatusQuery),
    responses(
        (status = 200, description = "Running", content(
            (String = "text/plain"),
            (NodeStatus = "application/json"),
        )),
        (status = 503, description = "Shutting down", content(
            (String = "text/plain"),
            (NodeStatus = "application/json"),
        )),
        (status = 400, description = "A query that cannot be read", body = ApiError),
    )
)]
pub async fn status(
    State(state): State<AdminState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(query)) => node_status(&state, query.format),
        Err(rejection) => bad_query(rejection),
    }
}

/// The same as `/status`, under the API's prefix.
#[utoipa::path(
    get,
    path = "/api/v5/status",
    tag = "Status",
    params(StatusQuery),
    responses(
        (status = 200, description = "Running", content(
            (String = "text/plain"),
            (NodeStatus = "application/json"),
        )),
        (status = 503, description = "Shutting down", content(
            (String = "text/plain"),
            (NodeStatus = "application/json"),
        )),
        (status = 400, description = "A query that cannot be read", body = ApiError),
    )
)]
pub async fn status_v5(
    State(state): State<AdminState>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(query)) => node_status(&state, query.format),
        Err(rejection) => bad_query(rejection),
    }
}

fn prometheus_text(state: &AdminState) -> Response {
    let figures = mqtt_core::sys::figures(&state.broker, Instant::now());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&figures),
    )
        .into_response()
}

/// The broker's figures in the Prometheus text format: what `$SYS` publishes, per
/// listener and in all. No credentials needed, as in EMQX.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AdminState>) -> Response {
    prometheus_text(&state)
}

/// EMQX's path for the Prometheus figures.
#[utoipa::path(
    get,
    path = "/api/v5/prometheus/stats",
    tag = "Metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String))
)]
pub async fn prometheus_stats(State(state): State<AdminState>) -> Response {
    prometheus_text(&state)
}

/// One listener, configured and whether it runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Listener {
    /// `tcp:default`, `coap:dtls:default`.
    pub id: String,
    /// Its transport: `tcp`, `ssl`, `ws`, `wss`, `quic`, `udp`, `dtls`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its name in its table.
    pub name: String,
    /// The protocol it serves: `mqtt`, `mqttsn`, `coap`, `lwm2m`, `stomp`.
    pub protocol: String,
    /// The address it is bound to when it runs, else the configured one.
    pub bind: String,
    /// Enabled in the configuration, its gateway enabled, and given a certificate when it
    /// needs one.
    pub enable: bool,
    /// Started and serving.
    pub running: bool,
}

/// Every configured listener of every protocol.
#[utoipa::path(
    get,
    path = "/api/v5/listeners",
    tag = "Listeners",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The listeners", body = Vec<Listener>),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn listeners(State(state): State<AdminState>) -> Json<Vec<Listener>> {
    Json(state.listeners.as_ref().clone())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A parameter the operation does not know is refused, not ignored: a typo gets an error.
#[serde(deny_unknown_fields)]
pub struct AggregateQuery {
    /// Whether to answer one object for the whole cluster rather than one per node (one
    /// node here, so both hold the same figures).
    aggregate: Option<bool>,
}

/// Figures per node, or aggregated.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum FiguresAnswer {
    PerNode(Vec<Figures>),
    Aggregated(Figures),
}

/// One node's figures, or the cluster's.
#[derive(Debug, Serialize, ToSchema)]
pub struct Figures {
    /// The node (absent when aggregated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// EMQX's names (`connections.count`, `messages.received`) to values.
    #[serde(flatten)]
    pub values: BTreeMap<String, u64>,
}

fn figures_answer(state: &AdminState, aggregate: bool, values: BTreeMap<String, u64>) -> Response {
    let answer = if aggregate {
        FiguresAnswer::Aggregated(Figures { node: None, values })
    } else {
        FiguresAnswer::PerNode(vec![Figures {
            node: Some(state.node.to_string()),
            values,
        }])
    };
    Json(answer).into_response()
}

/// Counts of what the broker holds now (EMQX's `/stats`): connections, sessions,
/// subscriptions, retained messages.
#[utoipa::path(
    get,
    path = "/api/v5/stats",
    tag = "Metrics",
    security(("api_key" = [])),
    params(AggregateQuery),
    responses(
        (status = 200, description = "One object per node, or one in all with aggregate=true", body = FiguresAnswer),
        (status = 400, description = "A query that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn stats(
    State(state): State<AdminState>,
    query: Result<Query<AggregateQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(rejection),
    };
    let broker = &state.broker;
    let connected = broker
        .stats
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    let values = BTreeMap::from([
        ("connections.count".to_owned(), connected),
        ("live_connections.count".to_owned(), connected),
        ("sessions.count".to_owned(), broker.session_count() as u64),
        (
            "subscriptions.count".to_owned(),
            broker.subscription_count() as u64,
        ),
        ("retained.count".to_owned(), broker.retained_count() as u64),
    ]);
    figures_answer(&state, query.aggregate.unwrap_or(false), values)
}

/// The broker's counters since start (EMQX's `/metrics`), named as EMQX names them where
/// it has the figure, else as `$SYS` does with `.` for `/`.
#[utoipa::path(
    get,
    path = "/api/v5/metrics",
    tag = "Metrics",
    security(("api_key" = [])),
    params(AggregateQuery),
    responses(
        (status = 200, description = "One object per node, or one in all with aggregate=true", body = FiguresAnswer),
        (status = 400, description = "A query that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn broker_metrics(
    State(state): State<AdminState>,
    query: Result<Query<AggregateQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => return bad_query(rejection),
    };
    let values = mqtt_core::sys::figures(&state.broker, Instant::now())
        .into_iter()
        .filter(|figure| figure.listener.is_none())
        .map(|figure| (emqx_metric_name(figure.name), figure.value))
        .collect();
    figures_answer(&state, query.aggregate.unwrap_or(false), values)
}

/// EMQX's name for a `$SYS` figure where EMQX has one.
fn emqx_metric_name(figure: &str) -> String {
    match figure {
        "messages/received" => "messages.received".to_owned(),
        "messages/sent" => "messages.sent".to_owned(),
        "bytes/received" => "bytes.received".to_owned(),
        "bytes/sent" => "bytes.sent".to_owned(),
        "publish/messages/dropped" => "messages.dropped".to_owned(),
        "publish/messages/dropped/queue_full" => "delivery.dropped.queue_full".to_owned(),
        "publish/messages/dropped/qos0" => "delivery.dropped.qos0_msg".to_owned(),
        other => other.replace(['/', ' '], "."),
    }
}
