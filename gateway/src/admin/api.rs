//! The admin API's handlers, each with its OpenAPI description: EMQX's paths and JSON
//! shapes where EMQX has the same thing, so that scripts written for EMQX work.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AdminState, ApiError};

/// A query string read as `T`; one that cannot be is answered as EMQX answers it, 400
/// `BAD_REQUEST` with what is wrong.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(query)) => Ok(ApiQuery(query)),
            Err(rejection) => Err(bad_query(rejection)),
        }
    }
}

/// A JSON body read as `T`; one that cannot be is answered with EMQX's error shape.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(body)) => Ok(ApiJson(body)),
            Err(rejection) => Err(bad_body(rejection)),
        }
    }
}

/// Path parameters read as `T`; ones that cannot be (a gateway that does not exist) are
/// answered with EMQX's 400.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(path)) => Ok(ApiPath(path)),
            Err(rejection) => Err(api_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                rejection.body_text(),
            )),
        }
    }
}

/// A query the handler cannot read, as EMQX answers it.
fn bad_query(rejection: QueryRejection) -> Response {
    api_error(
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
        rejection.body_text(),
    )
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
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> Response {
    node_status(&state, query.format)
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
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> Response {
    node_status(&state, query.format)
}

fn prometheus_text(state: &AdminState) -> Response {
    let figures = mqtt_core::sys::figures(&state.broker, Instant::now());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::metrics::render(&figures, state.broker.store().commit_latency().as_ref()),
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
    ApiQuery(query): ApiQuery<AggregateQuery>,
) -> Response {
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
    ApiQuery(query): ApiQuery<AggregateQuery>,
) -> Response {
    let values = mqtt_core::sys::figures(&state.broker, Instant::now())
        .into_iter()
        .filter(|figure| figure.scope == mqtt_core::sys::Scope::Broker)
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

/// A request body the handler cannot read: 400 (EMQX's answer to a bad body), or what the
/// transport level says (413 too large, 415 not JSON).
fn bad_body(rejection: JsonRejection) -> Response {
    let status = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    api_error(status, "BAD_REQUEST", rejection.body_text())
}

fn api_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            code: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    #[default]
    Plain,
    Base64,
}

/// A message to publish, as EMQX's `/publish` takes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// A topic name (no wildcards); `$SYS` topics are the broker's own.
    #[schema(
        min_length = 1,
        max_length = 65535,
        pattern = r"^(?!\$SYS)[^+#\u0000]+$"
    )]
    pub topic: String,
    #[serde(default)]
    pub payload: String,
    /// How `payload` is written.
    #[serde(default)]
    pub payload_encoding: PayloadEncoding,
    /// 0, 1 or 2.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0, maximum = 2)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
}

/// What became of one published message.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PublishResult {
    /// Delivered to at least one session: the message's id.
    Published { id: String },
    /// Nobody subscribes to the topic (MQTT 5 reason code 16); a retained message is kept
    /// all the same.
    NoSubscribers { message: String, reason_code: u8 },
}

/// A small whole number, written as JSON writes it (`1`) or as a float with nothing after
/// the point (`1.0`), as JSON Schema's `integer` allows.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if value.fract() != 0.0 || !(0.0..=255.0).contains(&value) {
        return Err(serde::de::Error::custom(format!(
            "{value} is not a whole number within 0..=255"
        )));
    }
    Ok(value as u8)
}

/// Checks `request` and makes its message; an error says what is wrong with it.
fn message_of(
    state: &AdminState,
    request: PublishRequest,
    now: Instant,
) -> Result<mqtt_core::message::Message, String> {
    use base64::Engine;
    let max_levels = state.broker.max_topic_levels();
    mqtt_core::topic::validate_topic_name(&request.topic, max_levels)
        .map_err(|error| format!("topic {:?}: {error}", request.topic))?;
    if request.topic.starts_with("$SYS") {
        return Err("$SYS topics are the broker's own".into());
    }
    let qos = mqtt_core::codec::QoS::from_u8(request.qos)
        .ok_or_else(|| format!("qos {} is not 0, 1 or 2", request.qos))?;
    let payload = match request.payload_encoding {
        PayloadEncoding::Plain => bytes::Bytes::from(request.payload.into_bytes()),
        PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(request.payload.as_bytes())
            .map(bytes::Bytes::from)
            .map_err(|error| format!("payload is not base64: {error}"))?,
    };
    Ok(mqtt_core::message::Message::new(
        bytestring::ByteString::from(request.topic),
        payload,
        qos,
        request.retain,
        now,
    ))
}

fn publish_one(state: &AdminState, message: mqtt_core::message::Message) -> PublishResult {
    if state.broker.publish_unattributed(message) > 0 {
        PublishResult::Published { id: message_id() }
    } else {
        PublishResult::NoSubscribers {
            message: "no_matching_subscribers".into(),
            reason_code: 16,
        }
    }
}

/// An id for a published message, as EMQX answers one (32 hexadecimal digits).
fn message_id() -> String {
    format!("{:032X}", rand::random::<u128>())
}

/// Publishes a message as the broker, to whoever subscribes (no ACL applies: the key is
/// trusted with every topic but `$SYS`).
#[utoipa::path(
    post,
    path = "/api/v5/publish",
    tag = "Publish",
    security(("api_key" = [])),
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Published to at least one session", body = PublishResult),
        (status = 202, description = "Nobody subscribes to the topic", body = PublishResult),
        (status = 400, description = "A message that cannot be published", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 413, description = "The body is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
    )
)]
pub async fn publish(
    State(state): State<AdminState>,
    ApiJson(request): ApiJson<PublishRequest>,
) -> Response {
    let message = match message_of(&state, request, Instant::now()) {
        Ok(message) => message,
        Err(reason) => return api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    let result = publish_one(&state, message);
    let status = match result {
        PublishResult::Published { .. } => StatusCode::OK,
        PublishResult::NoSubscribers { .. } => StatusCode::ACCEPTED,
    };
    (status, Json(result)).into_response()
}

/// Messages one bulk publish may hold.
const MAX_BULK: usize = 1000;

/// Publishes several messages, in order; none is published when one cannot be.
#[utoipa::path(
    post,
    path = "/api/v5/publish/bulk",
    tag = "Publish",
    security(("api_key" = [])),
    request_body = Vec<PublishRequest>,
    responses(
        (status = 200, description = "What became of each message, in order", body = Vec<PublishResult>),
        (status = 400, description = "A message that cannot be published, or more than 1000", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 413, description = "The body is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
    )
)]
pub async fn publish_bulk(
    State(state): State<AdminState>,
    ApiJson(requests): ApiJson<Vec<PublishRequest>>,
) -> Response {
    if requests.len() > MAX_BULK {
        return api_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            format!("at most {MAX_BULK} messages at once"),
        );
    }
    let now = Instant::now();
    let mut messages = Vec::with_capacity(requests.len());
    for (index, request) in requests.into_iter().enumerate() {
        match message_of(&state, request, now) {
            Ok(message) => messages.push(message),
            Err(reason) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    format!("message {index}: {reason}"),
                )
            }
        }
    }
    let results: Vec<PublishResult> = messages
        .into_iter()
        .map(|message| publish_one(&state, message))
        .collect();
    Json(results).into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A parameter the operation does not know is refused, not ignored: a typo gets an error.
#[serde(deny_unknown_fields)]
pub struct RetainedQuery {
    /// Page number, from 1.
    #[param(minimum = 1)]
    page: Option<u32>,
    /// Messages a page, 1 to 1000 (100 when not given).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only the messages whose topic this filter matches (`#` when not given).
    #[param(
        min_length = 1,
        max_length = 4096,
        pattern = r"^(?:(?:\+|[^/+#\u0000]*)/)*(?:\+|#|[^/+#\u0000]*)$"
    )]
    topic: Option<String>,
}

/// A retained message, as EMQX's retainer lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetainedMessage {
    pub topic: String,
    pub qos: u8,
    /// The client that published it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_clientid: Option<String>,
    /// The payload, base64 (only when one message is read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Payload bytes.
    pub payload_size: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PageMeta {
    pub page: u32,
    pub limit: u32,
    /// Items in all pages.
    pub count: usize,
    pub hasnext: bool,
}

/// The page asked for (1 when not given) and its length (100 when not given, at most
/// 1000), or why they cannot be.
fn page_params(page: Option<u32>, limit: Option<u32>) -> Result<(u32, u32), &'static str> {
    let (page, limit) = (page.unwrap_or(1), limit.unwrap_or(100));
    if page == 0 || !(1..=1000).contains(&limit) {
        return Err("page must be at least 1 and limit within 1..=1000");
    }
    Ok((page, limit))
}

/// Page `page` (from 1) of `items`, `limit` a page, each shown by `view`, and what the page
/// says of the whole.
fn page_of<T, V>(items: &[T], page: u32, limit: u32, view: impl Fn(&T) -> V) -> (Vec<V>, PageMeta) {
    let skip = (page as usize)
        .saturating_sub(1)
        .saturating_mul(limit as usize);
    let data: Vec<V> = items
        .iter()
        .skip(skip)
        .take(limit as usize)
        .map(view)
        .collect();
    let hasnext = skip.saturating_add(data.len()) < items.len();
    let meta = PageMeta {
        page,
        limit,
        count: items.len(),
        hasnext,
    };
    (data, meta)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetainedPage {
    pub data: Vec<RetainedMessage>,
    pub meta: PageMeta,
}

fn retained_view(message: &mqtt_core::message::Message, with_payload: bool) -> RetainedMessage {
    use base64::Engine;
    RetainedMessage {
        topic: message.topic.to_string(),
        qos: message.qos.as_u8(),
        from_clientid: message.publisher_client_id.as_deref().map(str::to_owned),
        payload: with_payload
            .then(|| base64::engine::general_purpose::STANDARD.encode(&message.payload)),
        payload_size: message.payload.len(),
    }
}

/// The retained messages, by topic, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v5/mqtt/retainer/messages",
    tag = "Retainer",
    security(("api_key" = [])),
    params(RetainedQuery),
    responses(
        (status = 200, description = "A page of retained messages, without payloads", body = RetainedPage),
        (status = 400, description = "A query that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn retained_messages(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<RetainedQuery>,
) -> Response {
    let (page, limit) = match page_params(query.page, query.limit) {
        Ok(params) => params,
        Err(reason) => return api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    let filter = query.topic.as_deref().unwrap_or("#");
    let max_levels = state.broker.max_topic_levels();
    if let Err(error) = mqtt_core::topic::validate_topic_filter(filter, max_levels) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            format!("topic {filter:?}: {error}"),
        );
    }
    let mut messages = state.broker.retained_messages(filter, Instant::now());
    messages.sort_by(|a, b| a.topic.cmp(&b.topic));
    let (data, meta) = page_of(&messages, page, limit, |message| {
        retained_view(message, false)
    });
    Json(RetainedPage { data, meta }).into_response()
}

/// The topic of a retained message, percent-encoded in the path as EMQX takes it
/// (`t%2Fa` for `t/a`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RetainedTopic {
    /// A topic name.
    #[param(min_length = 1, max_length = 4096)]
    topic: String,
}

/// One retained message, with its payload.
#[utoipa::path(
    get,
    path = "/api/v5/mqtt/retainer/message/{topic}",
    tag = "Retainer",
    security(("api_key" = [])),
    params(RetainedTopic),
    responses(
        (status = 200, description = "The message", body = RetainedMessage),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No retained message on that topic", body = ApiError),
    )
)]
pub async fn retained_message(
    State(state): State<AdminState>,
    Path(RetainedTopic { topic }): Path<RetainedTopic>,
) -> Response {
    if topic.contains(['+', '#']) {
        return not_retained();
    }
    match state
        .broker
        .retained_messages(&topic, Instant::now())
        .first()
    {
        Some(message) => Json(retained_view(message, true)).into_response(),
        None => not_retained(),
    }
}

fn not_retained() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no retained message on that topic",
    )
}

/// Clears one retained message; nothing is published.
#[utoipa::path(
    delete,
    path = "/api/v5/mqtt/retainer/message/{topic}",
    tag = "Retainer",
    security(("api_key" = [])),
    params(RetainedTopic),
    responses(
        (status = 204, description = "Cleared"),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No retained message on that topic", body = ApiError),
    )
)]
pub async fn clear_retained_message(
    State(state): State<AdminState>,
    Path(RetainedTopic { topic }): Path<RetainedTopic>,
) -> Response {
    if state.broker.clear_retained(&topic, Instant::now()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_retained()
    }
}

/// What a ban names, as EMQX's `as` field says it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BanKind {
    Clientid,
    Username,
    Peerhost,
    /// `who` is a network, `address/prefix`.
    PeerhostNet,
}

/// The longest `who`, `by` and `reason` of a ban, in characters.
const MAX_BAN_TEXT: usize = 1024;

/// A ban, as EMQX's `/banned` shows and takes it.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanView {
    #[serde(rename = "as")]
    pub kind: BanKind,
    /// The client id, user name, address, or `address/prefix`.
    #[schema(min_length = 1, max_length = 1024)]
    pub who: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub by: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub reason: Option<String>,
    /// RFC 3339; now when not given.
    #[serde(default)]
    pub at: Option<String>,
    /// RFC 3339; absent: until lifted.
    #[serde(default)]
    pub until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BanPage {
    pub data: Vec<BanView>,
    pub meta: PageMeta,
}

fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn parse_time(field: &str, text: &str) -> Result<std::time::SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(std::time::SystemTime::from)
        .map_err(|error| format!("{field} {text:?} is not an RFC 3339 time: {error}"))
}

fn target_of(kind: BanKind, who: &str) -> Result<mqtt_core::banned::BanTarget, String> {
    use mqtt_core::banned::BanTarget;
    let address = |text: &str| {
        text.parse::<std::net::IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP address"))
    };
    match kind {
        BanKind::Clientid => Ok(BanTarget::ClientId(who.to_owned())),
        BanKind::Username => Ok(BanTarget::Username(who.to_owned())),
        BanKind::Peerhost => Ok(BanTarget::PeerHost(address(who)?)),
        BanKind::PeerhostNet => {
            let (network, prefix) = who
                .split_once('/')
                .ok_or_else(|| format!("{who:?} is not address/prefix"))?;
            let network = address(network)?;
            let most = if network.is_ipv4() { 32 } else { 128 };
            let prefix = prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= most)
                .ok_or_else(|| format!("{prefix:?} is not a prefix length within 0..={most}"))?;
            Ok(BanTarget::PeerNet { network, prefix })
        }
    }
}

fn view_of(ban: &mqtt_core::banned::Ban) -> BanView {
    use mqtt_core::banned::BanTarget;
    let (kind, who) = match &ban.target {
        BanTarget::ClientId(id) => (BanKind::Clientid, id.clone()),
        BanTarget::Username(name) => (BanKind::Username, name.clone()),
        BanTarget::PeerHost(host) => (BanKind::Peerhost, host.to_string()),
        BanTarget::PeerNet { network, prefix } => {
            (BanKind::PeerhostNet, format!("{network}/{prefix}"))
        }
    };
    BanView {
        kind,
        who,
        by: Some(ban.by.clone()),
        reason: Some(ban.reason.clone()),
        at: Some(rfc3339(ban.at)),
        until: ban.until.map(rfc3339),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A parameter the operation does not know is refused, not ignored: a typo gets an error.
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page number, from 1.
    #[param(minimum = 1)]
    page: Option<u32>,
    /// Items a page, 1 to 1000 (100 when not given).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The bans in force, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v5/banned",
    tag = "Banned",
    security(("api_key" = [])),
    params(PageQuery),
    responses(
        (status = 200, description = "A page of bans", body = BanPage),
        (status = 400, description = "A query that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn banned(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Response {
    let (page, limit) = match page_params(query.page, query.limit) {
        Ok(params) => params,
        Err(reason) => return api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    let bans = state.broker.banned.list(std::time::SystemTime::now());
    let (data, meta) = page_of(&bans, page, limit, view_of);
    Json(BanPage { data, meta }).into_response()
}

/// Bans a client id, a user name, an address or a network: the clients it names that are
/// connected are kicked out, and sessions they open from now on are refused by every
/// adapter. A ban of the same target replaces the older one.
#[utoipa::path(
    post,
    path = "/api/v5/banned",
    tag = "Banned",
    security(("api_key" = [])),
    request_body = BanView,
    responses(
        (status = 200, description = "In force", body = BanView),
        (status = 400, description = "A ban that cannot be made: a bad target or time, one already over, or a full list", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 413, description = "The body is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
    )
)]
pub async fn ban(State(state): State<AdminState>, ApiJson(view): ApiJson<BanView>) -> Response {
    let now = std::time::SystemTime::now();
    let ban = match ban_of(&view, now) {
        Ok(ban) => ban,
        Err(reason) => return api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    let shown = view_of(&ban);
    match state.broker.banned.add(ban, now) {
        Ok(()) => {
            let kicked = state.broker.kick_banned(now, Instant::now());
            if kicked > 0 {
                tracing::info!(kicked, "clients the new ban names kicked out");
            }
            Json(shown).into_response()
        }
        Err(error) => api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", error.to_string()),
    }
}

/// The ban `view` describes, made `now` unless it says when; or why it cannot be one.
pub(crate) fn ban_of(
    view: &BanView,
    now: std::time::SystemTime,
) -> Result<mqtt_core::banned::Ban, String> {
    let texts = [
        ("who", Some(&view.who)),
        ("by", view.by.as_ref()),
        ("reason", view.reason.as_ref()),
    ];
    for (field, text) in texts {
        if text.is_some_and(|text| text.chars().count() > MAX_BAN_TEXT) {
            return Err(format!("{field} is longer than {MAX_BAN_TEXT} characters"));
        }
    }
    if view.who.is_empty() {
        return Err("who must not be empty".into());
    }
    Ok(mqtt_core::banned::Ban {
        target: target_of(view.kind, &view.who)?,
        reason: view.reason.clone().unwrap_or_default(),
        by: view.by.clone().unwrap_or_else(|| "api".into()),
        at: view
            .at
            .as_deref()
            .map(|at| parse_time("at", at))
            .transpose()?
            .unwrap_or(now),
        until: view
            .until
            .as_deref()
            .map(|until| parse_time("until", until))
            .transpose()?,
        from_file: false,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BanPath {
    /// What the ban names.
    #[serde(rename = "as")]
    #[param(rename = "as", inline)]
    kind: BanKind,
    /// The client id, user name, address or `address/prefix` (percent-encoded).
    #[param(min_length = 1, max_length = 1024)]
    who: String,
}

/// Lifts a ban.
#[utoipa::path(
    delete,
    path = "/api/v5/banned/{as}/{who}",
    tag = "Banned",
    security(("api_key" = [])),
    params(BanPath),
    responses(
        (status = 204, description = "Lifted"),
        (status = 400, description = "A target that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such ban", body = ApiError),
    )
)]
pub async fn unban(
    State(state): State<AdminState>,
    ApiPath(BanPath { kind, who }): ApiPath<BanPath>,
) -> Response {
    let target = match target_of(kind, &who) {
        Ok(target) => target,
        Err(reason) => return api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    if state.broker.banned.remove(&target) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        api_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such ban")
    }
}

/// A client, as EMQX's `/clients` shows one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientView {
    pub clientid: String,
    pub username: Option<String>,
    /// `MQTT`, `MQTT-SN`, `CoAP`, `LwM2M`, `STOMP`.
    pub proto_name: String,
    /// MQTT's protocol level (3, 4, 5) or the other protocols' version, as text.
    pub proto_ver: String,
    pub ip_address: Option<String>,
    pub port: Option<u16>,
    pub listener: String,
    /// `connected`, `asleep` (an MQTT-SN client) or `disconnected` (its session outlives it).
    pub conn_state: String,
    pub connected: bool,
    /// RFC 3339.
    pub connected_at: String,
    /// RFC 3339, once its connection has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected_at: Option<String>,
    pub keepalive: u32,
    pub clean_start: bool,
    pub expiry_interval: u32,
    pub subscriptions_cnt: usize,
    pub mqueue_len: usize,
    pub mqueue_dropped: u64,
    pub inflight_cnt: usize,
    pub awaiting_rel_cnt: usize,
    pub node: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientPage {
    pub data: Vec<ClientView>,
    pub meta: PageMeta,
}

fn client_view(state: &AdminState, client: &mqtt_core::clients::ClientSnapshot) -> ClientView {
    use mqtt_core::clients::ConnState;
    ClientView {
        clientid: client.key.client_id.to_string(),
        username: client.username.clone(),
        proto_name: client.proto.name.to_owned(),
        proto_ver: client.proto.version.to_string(),
        ip_address: client.peer.map(|peer| peer.ip().to_string()),
        port: client.peer.map(|peer| peer.port()),
        listener: client.listener.to_string(),
        conn_state: client.state.as_str().to_owned(),
        connected: client.state != ConnState::Disconnected,
        connected_at: rfc3339(client.connected_at),
        disconnected_at: client.disconnected_at.map(rfc3339),
        keepalive: client.keepalive,
        clean_start: client.clean_start,
        expiry_interval: client.expiry_interval,
        subscriptions_cnt: client.subscriptions,
        mqueue_len: client.mqueue_len,
        mqueue_dropped: client.mqueue_dropped,
        inflight_cnt: client.inflight,
        awaiting_rel_cnt: client.awaiting_rel,
        node: state.node.to_string(),
    }
}

/// The session namespace of a protocol as EMQX names it (`proto_name`), or of a gateway
/// (`/gateways/{name}`).
fn namespace_of(name: &str) -> Option<&'static str> {
    match name {
        "MQTT" | "mqtt" => Some("mqtt"),
        "MQTT-SN" | "mqttsn" => Some("mqtt-sn"),
        "CoAP" | "coap" => Some("coap"),
        "LwM2M" | "lwm2m" => Some("lwm2m"),
        "STOMP" | "stomp" => Some("stomp"),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnStateQuery {
    Connected,
    Asleep,
    Disconnected,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A parameter the operation does not know is refused, not ignored: a typo gets an error.
#[serde(deny_unknown_fields)]
pub struct ClientsQuery {
    /// Page number, from 1.
    #[param(minimum = 1)]
    page: Option<u32>,
    /// Clients a page, 1 to 1000 (100 when not given).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// This client id exactly.
    #[param(max_length = 1024)]
    clientid: Option<String>,
    /// Client ids containing this.
    #[param(max_length = 1024)]
    like_clientid: Option<String>,
    /// This user name exactly.
    #[param(max_length = 1024)]
    username: Option<String>,
    /// User names containing this.
    #[param(max_length = 1024)]
    like_username: Option<String>,
    /// `MQTT`, `MQTT-SN`, `CoAP`, `LwM2M` or `STOMP`.
    #[param(pattern = "^(MQTT|MQTT-SN|CoAP|LwM2M|STOMP)$")]
    proto_name: Option<String>,
    #[param(inline)]
    conn_state: Option<ConnStateQuery>,
}

fn list_clients(
    state: &AdminState,
    query: ClientsQuery,
    namespace: Option<&'static str>,
) -> Response {
    use mqtt_core::clients::{ClientQuery, ConnState, TextMatch};
    let (page, limit) = match page_params(query.page, query.limit) {
        Ok(params) => params,
        Err(reason) => return api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    let namespace = match (namespace, query.proto_name.as_deref()) {
        (Some(namespace), _) => Some(namespace),
        (None, Some(name)) => match namespace_of(name) {
            Some(namespace) => Some(namespace),
            None => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    format!("no protocol is named {name:?}"),
                )
            }
        },
        (None, None) => None,
    };
    let text = |exact: Option<String>, like: Option<String>| {
        exact
            .map(TextMatch::Exact)
            .or(like.map(TextMatch::Contains))
    };
    let filter = ClientQuery {
        namespace: namespace.map(str::to_owned),
        client_id: text(query.clientid, query.like_clientid),
        username: text(query.username, query.like_username),
        state: query.conn_state.map(|wanted| match wanted {
            ConnStateQuery::Connected => ConnState::Connected,
            ConnStateQuery::Asleep => ConnState::Asleep,
            ConnStateQuery::Disconnected => ConnState::Disconnected,
        }),
    };
    let clients = state.broker.clients(&filter);
    let (data, meta) = page_of(&clients, page, limit, |client| client_view(state, client));
    Json(ClientPage { data, meta }).into_response()
}

/// The clients of every protocol, a page at a time, oldest connection first.
#[utoipa::path(
    get,
    path = "/api/v5/clients",
    tag = "Clients",
    security(("api_key" = [])),
    params(ClientsQuery),
    responses(
        (status = 200, description = "A page of clients", body = ClientPage),
        (status = 400, description = "A query that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn clients(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<ClientsQuery>,
) -> Response {
    list_clients(&state, query, None)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ClientPath {
    /// An MQTT client's id (percent-encoded).
    #[param(min_length = 1, max_length = 1024)]
    clientid: String,
}

/// The snapshot of `client_id` in `namespace`, found by listing: a key is never made from
/// the request's text (it would intern a string per name asked for).
fn find_client(
    state: &AdminState,
    namespace: &str,
    client_id: String,
) -> Option<mqtt_core::clients::ClientSnapshot> {
    let query = mqtt_core::clients::ClientQuery {
        namespace: Some(namespace.to_owned()),
        client_id: Some(mqtt_core::clients::TextMatch::Exact(client_id)),
        ..Default::default()
    };
    state.broker.clients(&query).into_iter().next()
}

fn no_client() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "CLIENTID_NOT_FOUND",
        "no such client",
    )
}

/// One MQTT client.
#[utoipa::path(
    get,
    path = "/api/v5/clients/{clientid}",
    tag = "Clients",
    security(("api_key" = [])),
    params(ClientPath),
    responses(
        (status = 200, description = "The client", body = ClientView),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such client", body = ApiError),
    )
)]
pub async fn client(
    State(state): State<AdminState>,
    Path(ClientPath { clientid }): Path<ClientPath>,
) -> Response {
    match find_client(&state, "mqtt", clientid) {
        Some(client) => Json(client_view(&state, &client)).into_response(),
        None => no_client(),
    }
}

/// Kicks an MQTT client out: MQTT 5 gets DISCONNECT 0x98; its session is discarded and its
/// will published.
#[utoipa::path(
    delete,
    path = "/api/v5/clients/{clientid}",
    tag = "Clients",
    security(("api_key" = [])),
    params(ClientPath),
    responses(
        (status = 204, description = "Kicked out"),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such client", body = ApiError),
    )
)]
pub async fn kick_client(
    State(state): State<AdminState>,
    Path(ClientPath { clientid }): Path<ClientPath>,
) -> Response {
    kick(&state, "mqtt", clientid)
}

fn kick(state: &AdminState, namespace: &str, client_id: String) -> Response {
    match find_client(state, namespace, client_id) {
        Some(client) if state.broker.kick(&client.key, Instant::now()) => {
            StatusCode::NO_CONTENT.into_response()
        }
        _ => no_client(),
    }
}

/// A gateway's protocol.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GatewayName {
    Mqttsn,
    Coap,
    Lwm2m,
    Stomp,
}

impl GatewayName {
    fn namespace(self) -> &'static str {
        match self {
            GatewayName::Mqttsn => "mqtt-sn",
            GatewayName::Coap => "coap",
            GatewayName::Lwm2m => "lwm2m",
            GatewayName::Stomp => "stomp",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GatewayPath {
    #[param(inline)]
    name: GatewayName,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GatewayClientPath {
    #[param(inline)]
    name: GatewayName,
    /// The client's id in that gateway (percent-encoded).
    #[param(min_length = 1, max_length = 1024)]
    clientid: String,
}

/// A gateway's clients (EMQX's `/gateways/{name}/clients`).
#[utoipa::path(
    get,
    path = "/api/v5/gateways/{name}/clients",
    tag = "Clients",
    security(("api_key" = [])),
    params(GatewayPath, ClientsQuery),
    responses(
        (status = 200, description = "A page of the gateway's clients", body = ClientPage),
        (status = 400, description = "A query that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn gateway_clients(
    State(state): State<AdminState>,
    ApiPath(GatewayPath { name }): ApiPath<GatewayPath>,
    ApiQuery(query): ApiQuery<ClientsQuery>,
) -> Response {
    list_clients(&state, query, Some(name.namespace()))
}

/// One client of a gateway.
#[utoipa::path(
    get,
    path = "/api/v5/gateways/{name}/clients/{clientid}",
    tag = "Clients",
    security(("api_key" = [])),
    params(GatewayClientPath),
    responses(
        (status = 200, description = "The client", body = ClientView),
        (status = 400, description = "No such gateway", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such client", body = ApiError),
    )
)]
pub async fn gateway_client(
    State(state): State<AdminState>,
    ApiPath(GatewayClientPath { name, clientid }): ApiPath<GatewayClientPath>,
) -> Response {
    match find_client(&state, name.namespace(), clientid) {
        Some(client) => Json(client_view(&state, &client)).into_response(),
        None => no_client(),
    }
}

/// Kicks a gateway's client out, as its protocol says it (MQTT-SN DISCONNECT, a STOMP
/// ERROR, a CoAP or LwM2M peer forgotten); its session is discarded.
#[utoipa::path(
    delete,
    path = "/api/v5/gateways/{name}/clients/{clientid}",
    tag = "Clients",
    security(("api_key" = [])),
    params(GatewayClientPath),
    responses(
        (status = 204, description = "Kicked out"),
        (status = 400, description = "No such gateway", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such client", body = ApiError),
    )
)]
pub async fn kick_gateway_client(
    State(state): State<AdminState>,
    ApiPath(GatewayClientPath { name, clientid }): ApiPath<GatewayClientPath>,
) -> Response {
    kick(&state, name.namespace(), clientid)
}

/// One subscription, as EMQX shows it: the filter as the client wrote it (a
/// `$share/{group}/` prefix kept), its options as numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub clientid: String,
    pub topic: String,
    pub qos: u8,
    /// No local: 1 when the client's own publications are not sent back to it.
    pub nl: u8,
    /// Retain as published.
    pub rap: u8,
    /// Retain handling: 0 retained messages on subscribing, 1 only on a new subscription,
    /// 2 never.
    pub rh: u8,
    /// The MQTT 5 subscription identifier, if one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_id: Option<u32>,
    pub node: String,
}

fn subscription_view(
    state: &AdminState,
    client_id: &str,
    subscription: &mqtt_core::clients::SubscriptionSnapshot,
) -> SubscriptionView {
    let options = subscription.options;
    SubscriptionView {
        clientid: client_id.to_owned(),
        topic: subscription.filter.clone(),
        qos: options.qos.as_u8(),
        nl: u8::from(options.no_local),
        rap: u8::from(options.retain_as_published),
        rh: options.retain_handling,
        sub_id: subscription.identifier,
        node: state.node.to_string(),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionPage {
    pub data: Vec<SubscriptionView>,
    pub meta: PageMeta,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsQuery {
    /// Page number, from 1.
    #[param(minimum = 1)]
    page: Option<u32>,
    /// Subscriptions a page, 1 to 1000 (100 when not given).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// This client's subscriptions (of any protocol).
    #[param(max_length = 1024)]
    clientid: Option<String>,
    /// This filter exactly, as the client wrote it after any `$share/{group}/`.
    #[param(max_length = 4096)]
    topic: Option<String>,
    /// Subscriptions of this maximum QoS.
    #[param(minimum = 0, maximum = 2)]
    qos: Option<u8>,
    /// Shared subscriptions of this group.
    #[param(max_length = 1024)]
    share_group: Option<String>,
    /// Subscriptions whose filter matches this topic name.
    #[param(max_length = 4096)]
    match_topic: Option<String>,
}

impl SubscriptionsQuery {
    fn admits(&self, client_id: &str, filter: &str, qos: u8) -> bool {
        let parsed = mqtt_core::topic::parse_subscription(filter, usize::MAX).ok();
        let inner = parsed.map_or(filter, |parsed| parsed.filter());
        let group = parsed.and_then(|parsed| parsed.group());
        self.clientid
            .as_deref()
            .is_none_or(|wanted| wanted == client_id)
            && self.topic.as_deref().is_none_or(|wanted| wanted == inner)
            && self.qos.is_none_or(|wanted| wanted == qos)
            && self
                .share_group
                .as_deref()
                .is_none_or(|wanted| group == Some(wanted))
            && self
                .match_topic
                .as_deref()
                .is_none_or(|topic| mqtt_core::topic::matches(inner, topic))
    }
}

/// The subscriptions of every client of every protocol, a page at a time, ordered by
/// protocol, client id and filter.
#[utoipa::path(
    get,
    path = "/api/v5/subscriptions",
    tag = "Subscriptions",
    security(("api_key" = [])),
    params(SubscriptionsQuery),
    responses(
        (status = 200, description = "A page of subscriptions", body = SubscriptionPage),
        (status = 400, description = "A query that cannot be read", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
    )
)]
pub async fn subscriptions(
    State(state): State<AdminState>,
    ApiQuery(query): ApiQuery<SubscriptionsQuery>,
) -> Response {
    let (page, limit) = match page_params(query.page, query.limit) {
        Ok(params) => params,
        Err(reason) => return api_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", reason),
    };
    if query.qos.is_some_and(|qos| qos > 2) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "qos must be 0, 1 or 2",
        );
    }
    let admitted: Vec<_> = state
        .broker
        .subscriptions()
        .into_iter()
        .filter(|(key, subscription)| {
            query.admits(
                &key.client_id,
                &subscription.filter,
                subscription.options.qos.as_u8(),
            )
        })
        .collect();
    let (data, meta) = page_of(&admitted, page, limit, |(key, subscription)| {
        subscription_view(&state, &key.client_id, subscription)
    });
    Json(SubscriptionPage { data, meta }).into_response()
}

fn client_subscriptions_of(state: &AdminState, namespace: &str, client_id: String) -> Response {
    let Some(client) = find_client(state, namespace, client_id) else {
        return no_client();
    };
    match state.broker.client_subscriptions(&client.key) {
        Some(subscriptions) => Json(
            subscriptions
                .iter()
                .map(|subscription| subscription_view(state, &client.key.client_id, subscription))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        None => no_client(),
    }
}

/// An MQTT client's subscriptions.
#[utoipa::path(
    get,
    path = "/api/v5/clients/{clientid}/subscriptions",
    tag = "Clients",
    security(("api_key" = [])),
    params(ClientPath),
    responses(
        (status = 200, description = "Its subscriptions, by filter", body = Vec<SubscriptionView>),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such client", body = ApiError),
    )
)]
pub async fn client_subscriptions(
    State(state): State<AdminState>,
    Path(ClientPath { clientid }): Path<ClientPath>,
) -> Response {
    client_subscriptions_of(&state, "mqtt", clientid)
}

/// A gateway client's subscriptions.
#[utoipa::path(
    get,
    path = "/api/v5/gateways/{name}/clients/{clientid}/subscriptions",
    tag = "Clients",
    security(("api_key" = [])),
    params(GatewayClientPath),
    responses(
        (status = 200, description = "Its subscriptions, by filter", body = Vec<SubscriptionView>),
        (status = 400, description = "No such gateway", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such client", body = ApiError),
    )
)]
pub async fn gateway_client_subscriptions(
    State(state): State<AdminState>,
    ApiPath(GatewayClientPath { name, clientid }): ApiPath<GatewayClientPath>,
) -> Response {
    client_subscriptions_of(&state, name.namespace(), clientid)
}

/// What a reload did: each source read again, and each that was not, with why.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadAnswer {
    pub reloaded: Vec<crate::reload::ReloadOutcome>,
    /// The sources that kept what was in force.
    pub failed: Vec<crate::reload::ReloadOutcome>,
}

/// Reads again what SIGHUP reads again: the password and ACL files, the TLS, QUIC and DTLS
/// certificates and keys, and the configuration's `log.level`. A source that cannot be read
/// keeps what is in force; the answer says which and why.
#[utoipa::path(
    post,
    path = "/api/v5/reload",
    tag = "Operations",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Everything read again", body = ReloadAnswer),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 422, description = "Some sources kept what was in force", body = ReloadAnswer),
        (status = 503, description = "Reloads already waiting, or shutting down", body = ApiError),
    )
)]
pub async fn reload(State(state): State<AdminState>) -> Response {
    match state.reloader.reload().await {
        Ok(outcomes) => {
            let (failed, reloaded): (Vec<_>, Vec<_>) = outcomes
                .into_iter()
                .partition(|outcome| outcome.error.is_some());
            let status = if failed.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            (status, Json(ReloadAnswer { reloaded, failed })).into_response()
        }
        Err(error) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            error.to_string(),
        ),
    }
}
