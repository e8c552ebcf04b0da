//! Requests to devices from the operator, on EMQX's paths: LwM2M's read, write, observe
//! and lookup (`/gateways/lwm2m/clients/{clientid}/...`), plus execute and discover; and
//! a CoAP request to a client in connection mode (`/gateways/coap/clients/{clientid}/request`),
//! answered with the client's response.
//!
//! Every request is checked here (the object path, the type and value, their sizes) and
//! answered 400 before anything reaches the device. A valid one becomes the EMQX JSON
//! command an MQTT application would publish on the device's command topic and is handed
//! to the device's channel (`adapter_lwm2m::Device::submit`), which queues and sends it as
//! it does those; the device's answer is published on the response topic as theirs are,
//! and kept for `lookup`.

use std::sync::Arc;
use std::time::Duration;

use adapter_coap::downlink::{Clients, Failure, Outgoing, MAX_TOKEN_LEN};
use adapter_kit::coap::{MessageClass, RequestType};
use adapter_kit::Launch;
use adapter_lwm2m::command::code_message;
use adapter_lwm2m::downlink::{command_json, discovered_resources, SubmitError};
use adapter_lwm2m::Devices;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as JsonValue};
use translations::lwm2m::Path as ObjectPath;
use utoipa::{IntoParams, ToSchema};

use super::api::{ApiJson, ApiPath, ApiQuery};
use super::{AdminState, ApiError};

/// The longest object path text taken (`/65535/65535/65535/65535` is 24 bytes).
const MAX_PATH_LEN: usize = 64;

/// The longest value of a write, or arguments of an execute, in bytes: a request larger
/// than a device's datagram would be refused on its way anyway, and is refused here first.
pub const MAX_VALUE_LEN: usize = 4096;

/// What the admin API reaches besides the broker: the registries of the adapters whose
/// clients take requests.
#[derive(Clone)]
pub struct Downlinks {
    pub lwm2m: Arc<Devices>,
    pub coap: Arc<Clients>,
}

impl Downlinks {
    /// The registries the adapters started with `launch` fill.
    pub fn from_launch(launch: &mut Launch) -> Downlinks {
        Downlinks {
            lwm2m: launch.shared::<Devices>(),
            coap: launch.shared::<Clients>(),
        }
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            code: code.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

fn client_not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "CLIENT_NOT_FOUND",
        "no LwM2M device registered with that client id",
    )
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DevicePath {
    /// The device's client id (`device_id`, by default its endpoint name; percent-encoded).
    #[param(min_length = 1, max_length = 1024)]
    clientid: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PathQuery {
    /// An object path, `/O[/I[/R[/RI]]]`, each id 0-65535.
    #[param(example = "/3/0/0", min_length = 2, max_length = 64)]
    path: String,
}

/// The data types a write may name, as EMQX names them.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
pub enum DataType {
    Integer,
    Float,
    Time,
    String,
    Boolean,
    Opaque,
    Objlnk,
}

impl DataType {
    fn name(self) -> &'static str {
        match self {
            DataType::Integer => "Integer",
            DataType::Float => "Float",
            DataType::Time => "Time",
            DataType::String => "String",
            DataType::Boolean => "Boolean",
            DataType::Opaque => "Opaque",
            DataType::Objlnk => "Objlnk",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    /// The resource written, `/O/I/R` or `/O/I/R/RI`.
    #[param(example = "/3/0/14", min_length = 2, max_length = 64)]
    path: String,
    /// The value's type; an Opaque value is base64, a Boolean `true`/`false`/`1`/`0`, an
    /// Objlnk `O:I`.
    #[serde(rename = "type")]
    #[param(inline)]
    kind: DataType,
    #[param(example = "+02:00", max_length = 4096)]
    value: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ObserveQuery {
    #[param(example = "/3303/0/5700", min_length = 2, max_length = 64)]
    path: String,
    /// `true` observes, `false` cancels the observation.
    enable: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExecuteQuery {
    /// The executable resource, `/O/I/R`.
    #[param(example = "/3/0/4", min_length = 2, max_length = 64)]
    path: String,
    /// The execute arguments (Core TS 5.4.5), sent as text.
    #[param(max_length = 4096)]
    args: Option<String>,
}

/// The operations whose results `lookup` gives.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Read,
    Write,
    Observe,
    CancelObserve,
    Discover,
    Execute,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Observe => "observe",
            Action::CancelObserve => "cancel-observe",
            Action::Discover => "discover",
            Action::Execute => "execute",
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    #[param(example = "/3/0/0", min_length = 2, max_length = 64)]
    path: String,
    #[param(inline)]
    action: Action,
}

/// The last result a device gave for a path and action (EMQX's lookup).
#[derive(Debug, Serialize, ToSchema)]
pub struct LookupView {
    clientid: String,
    path: String,
    action: String,
    /// The CoAP response code, `"2.05"`; `"6.01"` while no answer has come.
    code: String,
    /// `"content"`, `"changed"`, ...; `"reply_not_received"` while no answer has come.
    #[serde(rename = "codeMsg")]
    code_msg: String,
    /// A read's or observation's values (`[{path, value}]`); for a discover, each
    /// resource with its definition's `name`, `operations` and `dataType`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    content: Option<JsonValue>,
}

/// An object path with between `min` and 4 ids, in its one written form (`/3/0/0`); or
/// why it is not one.
fn object_path(text: &str, min: usize) -> Result<String, String> {
    if text.len() > MAX_PATH_LEN || !text.starts_with('/') {
        return Err("path must be an object path such as /3/0/0, at most 64 bytes".into());
    }
    let path: ObjectPath = text
        .parse()
        .map_err(|_| "path must be /O[/I[/R[/RI]]], each id 0-65535".to_owned())?;
    if path.len() < min {
        return Err(format!(
            "path must name at least {min} levels (object, instance, resource)"
        ));
    }
    Ok(path.to_string())
}

/// Hands a command to the device with `client_id`.
fn send(state: &AdminState, client_id: &str, command: JsonValue) -> Response {
    let Some(device) = state.downlinks.lwm2m.get(client_id) else {
        return client_not_found();
    };
    match device.submit(command) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(SubmitError::Invalid(why)) => bad_request(why.to_string()),
        Err(busy @ SubmitError::Busy) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            busy.to_string(),
        ),
    }
}

/// Reads a path of the device; its answer is published on the response topic and given
/// by `lookup` (action `read`).
#[utoipa::path(
    post,
    path = "/api/v5/gateways/lwm2m/clients/{clientid}/read",
    tag = "LwM2M Gateways",
    security(("api_key" = [])),
    params(DevicePath, PathQuery),
    responses(
        (status = 204, description = "Sent to the device (or queued for it)"),
        (status = 400, description = "An invalid path", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such device registered", body = ApiError),
        (status = 429, description = "Too many requests wait for this device", body = ApiError),
    )
)]
pub async fn read(
    State(state): State<AdminState>,
    ApiPath(DevicePath { clientid }): ApiPath<DevicePath>,
    ApiQuery(PathQuery { path }): ApiQuery<PathQuery>,
) -> Response {
    match object_path(&path, 1) {
        Ok(path) => send(
            &state,
            &clientid,
            command_json("read", json!({ "path": path })),
        ),
        Err(why) => bad_request(why),
    }
}

/// Discovers a path's resources and attributes (beyond EMQX's API, as its MQTT command);
/// `lookup` (action `discover`) names them by the object definitions.
#[utoipa::path(
    post,
    path = "/api/v5/gateways/lwm2m/clients/{clientid}/discover",
    tag = "LwM2M Gateways",
    security(("api_key" = [])),
    params(DevicePath, PathQuery),
    responses(
        (status = 204, description = "Sent to the device (or queued for it)"),
        (status = 400, description = "An invalid path", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such device registered", body = ApiError),
        (status = 429, description = "Too many requests wait for this device", body = ApiError),
    )
)]
pub async fn discover(
    State(state): State<AdminState>,
    ApiPath(DevicePath { clientid }): ApiPath<DevicePath>,
    ApiQuery(PathQuery { path }): ApiQuery<PathQuery>,
) -> Response {
    match object_path(&path, 1) {
        Ok(path) => send(
            &state,
            &clientid,
            command_json("discover", json!({ "path": path })),
        ),
        Err(why) => bad_request(why),
    }
}

/// Writes one resource's value, typed as `type` says; a value that is not of that type is
/// refused before anything is sent.
#[utoipa::path(
    post,
    path = "/api/v5/gateways/lwm2m/clients/{clientid}/write",
    tag = "LwM2M Gateways",
    security(("api_key" = [])),
    params(DevicePath, WriteQuery),
    responses(
        (status = 204, description = "Sent to the device (or queued for it)"),
        (status = 400, description = "An invalid path, type or value", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such device registered", body = ApiError),
        (status = 429, description = "Too many requests wait for this device", body = ApiError),
    )
)]
pub async fn write(
    State(state): State<AdminState>,
    ApiPath(DevicePath { clientid }): ApiPath<DevicePath>,
    ApiQuery(query): ApiQuery<WriteQuery>,
) -> Response {
    let path = match object_path(&query.path, 3) {
        Ok(path) => path,
        Err(why) => return bad_request(why),
    };
    if query.value.len() > MAX_VALUE_LEN {
        return bad_request(format!("value longer than {MAX_VALUE_LEN} bytes"));
    }
    let data = json!({ "path": path, "type": query.kind.name(), "value": query.value });
    send(&state, &clientid, command_json("write", data))
}

/// Observes a path (`enable=true`) or cancels its observation; the notifications are
/// published on the notify topic, and the last one is given by `lookup` (action
/// `observe`).
#[utoipa::path(
    post,
    path = "/api/v5/gateways/lwm2m/clients/{clientid}/observe",
    tag = "LwM2M Gateways",
    security(("api_key" = [])),
    params(DevicePath, ObserveQuery),
    responses(
        (status = 204, description = "Sent to the device (or queued for it)"),
        (status = 400, description = "An invalid path", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such device registered", body = ApiError),
        (status = 429, description = "Too many requests wait for this device", body = ApiError),
    )
)]
pub async fn observe(
    State(state): State<AdminState>,
    ApiPath(DevicePath { clientid }): ApiPath<DevicePath>,
    ApiQuery(ObserveQuery { path, enable }): ApiQuery<ObserveQuery>,
) -> Response {
    let msg_type = if enable { "observe" } else { "cancel-observe" };
    match object_path(&path, 1) {
        Ok(path) => send(
            &state,
            &clientid,
            command_json(msg_type, json!({ "path": path })),
        ),
        Err(why) => bad_request(why),
    }
}

/// Executes a resource (beyond EMQX's API, as its MQTT command); `lookup` (action
/// `execute`) gives the device's code.
#[utoipa::path(
    post,
    path = "/api/v5/gateways/lwm2m/clients/{clientid}/execute",
    tag = "LwM2M Gateways",
    security(("api_key" = [])),
    params(DevicePath, ExecuteQuery),
    responses(
        (status = 204, description = "Sent to the device (or queued for it)"),
        (status = 400, description = "An invalid path or arguments", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such device registered", body = ApiError),
        (status = 429, description = "Too many requests wait for this device", body = ApiError),
    )
)]
pub async fn execute(
    State(state): State<AdminState>,
    ApiPath(DevicePath { clientid }): ApiPath<DevicePath>,
    ApiQuery(ExecuteQuery { path, args }): ApiQuery<ExecuteQuery>,
) -> Response {
    let path = match object_path(&path, 3) {
        Ok(path) if path.matches('/').count() == 3 => path,
        Ok(_) => return bad_request("only a resource, /O/I/R, is executed"),
        Err(why) => return bad_request(why),
    };
    let mut data = Map::new();
    data.insert("path".into(), path.into());
    if let Some(args) = args {
        if args.len() > MAX_VALUE_LEN {
            return bad_request(format!("args longer than {MAX_VALUE_LEN} bytes"));
        }
        data.insert("args".into(), args.into());
    }
    send(
        &state,
        &clientid,
        command_json("execute", JsonValue::Object(data)),
    )
}

/// The last result the device gave for a path and action; `6.01 reply_not_received`
/// before any.
#[utoipa::path(
    get,
    path = "/api/v5/gateways/lwm2m/clients/{clientid}/lookup",
    tag = "LwM2M Gateways",
    security(("api_key" = [])),
    params(DevicePath, LookupQuery),
    responses(
        (status = 200, description = "The last result", body = LookupView),
        (status = 400, description = "An invalid path or action", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such device registered", body = ApiError),
    )
)]
pub async fn lookup(
    State(state): State<AdminState>,
    ApiPath(DevicePath { clientid }): ApiPath<DevicePath>,
    ApiQuery(LookupQuery { path, action }): ApiQuery<LookupQuery>,
) -> Response {
    let path = match object_path(&path, 1) {
        Ok(path) => path,
        Err(why) => return bad_request(why),
    };
    let Some(device) = state.downlinks.lwm2m.get(&clientid) else {
        return client_not_found();
    };
    let view = match device.lookup(&path, action.name()) {
        None => LookupView {
            clientid,
            path,
            action: action.name().to_owned(),
            code: "6.01".into(),
            code_msg: "reply_not_received".into(),
            content: None,
        },
        Some(result) => {
            let content = match (action, result.content) {
                (Action::Discover, Some(links)) => {
                    Some(discovered_resources(&links, device.objects()))
                }
                (_, content) => content,
            };
            LookupView {
                clientid,
                path,
                action: action.name().to_owned(),
                code: result.code,
                code_msg: result.code_msg,
                content,
            }
        }
    };
    Json(view).into_response()
}

// ---- CoAP: a request to a client in connection mode --------------------------------------

/// The longest a request waits for the client's response, whatever `timeout` asks.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest request payload, in bytes (after base64 for octet-stream).
pub const MAX_REQUEST_PAYLOAD: usize = 1024;

/// The longest `path` of a request.
const MAX_REQUEST_PATH: usize = 255;

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CoapMethod {
    #[default]
    Get,
    Put,
    Post,
    Delete,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
pub enum CoapContentType {
    #[serde(rename = "text/plain")]
    Text,
    #[serde(rename = "application/json")]
    Json,
    #[serde(rename = "application/octet-stream")]
    OctetStream,
}

impl CoapContentType {
    /// Its CoAP Content-Format number (RFC 7252 12.3).
    fn format(self) -> u16 {
        match self {
            CoapContentType::Text => 0,
            CoapContentType::Json => 50,
            CoapContentType::OctetStream => 42,
        }
    }
}

/// EMQX's request to a CoAP client, plus the resource's `path`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoapRequest {
    /// The request's token, up to 8 bytes; by default one of the gateway's.
    #[serde(default)]
    #[schema(max_length = 8)]
    token: String,
    #[serde(default)]
    method: CoapMethod,
    /// How long to wait for the response: `10s`, `500ms`, `1m`, or milliseconds;
    /// at most 60 s.
    #[schema(example = "10s")]
    timeout: Option<String>,
    /// The payload's type; an `application/octet-stream` payload, and the response's, are
    /// base64.
    content_type: Option<CoapContentType>,
    #[serde(default)]
    #[schema(max_length = 2048)]
    payload: String,
    /// The resource on the client, such as `sensor/temp` (beyond EMQX, which asks the
    /// client's root).
    #[serde(default)]
    #[schema(max_length = 255)]
    path: String,
}

/// The client's response, as EMQX gives it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CoapResponseView {
    /// The response's message id.
    id: u16,
    /// The token: the request's as given, or the gateway's in hex.
    token: String,
    /// EMQX's name of the response code: `{ok,content}`, `{error,not_found}`.
    method: String,
    /// The response code, `2.05`.
    code: String,
    /// Text, or base64 for an `application/octet-stream` request.
    payload: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CoapClientPath {
    /// The client's id (percent-encoded).
    #[param(min_length = 1, max_length = 1024)]
    clientid: String,
}

/// `10s`, `500ms`, `2m`, or a number of milliseconds; capped at [`MAX_REQUEST_TIMEOUT`].
fn request_timeout(text: Option<&str>) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(Duration::from_secs(10));
    };
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("timeout {text:?}: a number with ms, s or m"))?;
    let millis = match unit {
        "" | "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        _ => None,
    }
    .ok_or_else(|| format!("timeout {text:?}: a number with ms, s or m"))?;
    if millis == 0 {
        return Err("timeout must be more than 0".into());
    }
    Ok(Duration::from_millis(millis).min(MAX_REQUEST_TIMEOUT))
}

fn coap_request(body: &CoapRequest) -> Result<(Outgoing, Duration), String> {
    use base64::Engine;
    let timeout = request_timeout(body.timeout.as_deref())?;
    if body.token.len() > MAX_TOKEN_LEN {
        return Err(format!("token longer than {MAX_TOKEN_LEN} bytes"));
    }
    if body.path.len() > MAX_REQUEST_PATH {
        return Err(format!("path longer than {MAX_REQUEST_PATH} bytes"));
    }
    let path: Vec<String> = body
        .path
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(str::to_owned)
        .collect();
    if path.iter().any(|segment| segment == "." || segment == "..") {
        return Err("path segments . and .. are not resources".into());
    }
    let payload = match body.content_type {
        Some(CoapContentType::OctetStream) => base64::engine::general_purpose::STANDARD
            .decode(body.payload.as_bytes())
            .map_err(|_| "payload: not base64".to_owned())?,
        _ => body.payload.clone().into_bytes(),
    };
    if payload.len() > MAX_REQUEST_PAYLOAD {
        return Err(format!("payload larger than {MAX_REQUEST_PAYLOAD} bytes"));
    }
    let method = match body.method {
        CoapMethod::Get => RequestType::Get,
        CoapMethod::Put => RequestType::Put,
        CoapMethod::Post => RequestType::Post,
        CoapMethod::Delete => RequestType::Delete,
    };
    Ok((
        Outgoing {
            method,
            path,
            queries: Vec::new(),
            content_format: body.content_type.map(CoapContentType::format),
            payload,
            token: body.token.clone().into_bytes(),
        },
        timeout,
    ))
}

fn not_responding(message: impl Into<String>) -> Response {
    error(StatusCode::GATEWAY_TIMEOUT, "CLIENT_NOT_RESPONSE", message)
}

/// Sends a confirmable request to a CoAP client in connection mode (over UDP or DTLS) at
/// its current address, and gives its response back (EMQX's CoAP gateway API).
#[utoipa::path(
    post,
    path = "/api/v5/gateways/coap/clients/{clientid}/request",
    tag = "CoAP Gateways",
    security(("api_key" = [])),
    params(CoapClientPath),
    request_body = CoapRequest,
    responses(
        (status = 200, description = "The client's response", body = CoapResponseView),
        (status = 400, description = "A request that cannot be sent", body = ApiError),
        (status = 401, description = "No valid API key", body = ApiError),
        (status = 404, description = "No such client in connection mode", body = ApiError),
        (status = 409, description = "A request with that token is in flight", body = ApiError),
        (status = 413, description = "The body is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 429, description = "Too many requests wait for this client", body = ApiError),
        (status = 504, description = "The client did not answer in time", body = ApiError),
    )
)]
pub async fn coap_client_request(
    State(state): State<AdminState>,
    ApiPath(CoapClientPath { clientid }): ApiPath<CoapClientPath>,
    ApiJson(body): ApiJson<CoapRequest>,
) -> Response {
    let (outgoing, timeout) = match coap_request(&body) {
        Ok(request) => request,
        Err(why) => return bad_request(why),
    };
    let Some(client) = state.downlinks.coap.get(&clientid) else {
        return error(
            StatusCode::NOT_FOUND,
            "CLIENT_NOT_FOUND",
            "no CoAP client in connection mode with that client id",
        );
    };
    let answer = match client.request(outgoing) {
        Ok(answer) => answer,
        Err(busy) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                busy.to_string(),
            )
        }
    };
    let answer = match tokio::time::timeout(timeout, answer).await {
        Err(_) => return not_responding("no response within the timeout"),
        Ok(Err(_)) => return not_responding("the client's connection ended"),
        Ok(Ok(Err(failure))) => {
            return match failure {
                Failure::TooLarge => bad_request(failure.to_string()),
                Failure::TokenInUse => error(StatusCode::CONFLICT, "CONFLICT", failure.to_string()),
                Failure::Reset | Failure::Timeout | Failure::Gone => {
                    not_responding(failure.to_string())
                }
            }
        }
        Ok(Ok(Ok(answer))) => answer,
    };
    let class = MessageClass::Response(answer.code);
    let raw = u8::from(class);
    let outcome = if raw >> 5 == 2 { "ok" } else { "error" };
    let payload = match body.content_type {
        Some(CoapContentType::OctetStream) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&answer.payload)
        }
        _ => String::from_utf8_lossy(&answer.payload).into_owned(),
    };
    let token = if body.token.is_empty() {
        answer.token.iter().map(|b| format!("{b:02x}")).collect()
    } else {
        body.token
    };
    Json(CoapResponseView {
        id: answer.message_id,
        token,
        method: format!("{{{outcome},{}}}", code_message(answer.code)),
        code: format!("{}.{:02}", raw >> 5, raw & 0x1F),
        payload,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_read_and_capped() {
        assert_eq!(request_timeout(None), Ok(Duration::from_secs(10)));
        assert_eq!(request_timeout(Some("10s")), Ok(Duration::from_secs(10)));
        assert_eq!(
            request_timeout(Some("250ms")),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            request_timeout(Some("1500")),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(request_timeout(Some("10m")), Ok(MAX_REQUEST_TIMEOUT));
        assert_eq!(
            request_timeout(Some("99999999999999999999s")).map_err(|_| ()),
            Err(())
        );
        for bad in ["", "0", "0s", "s", "5h", "-1s", "1.5s"] {
            assert!(request_timeout(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_paths_have_one_written_form() {
        assert_eq!(object_path("/3/0/0/", 1), Ok("/3/0/0".to_owned()));
        assert_eq!(object_path("/65535", 1), Ok("/65535".to_owned()));
        for bad in ["/", "3/0", "/3//0", "/65536", "/3/0/0/0/0", "/+", "/3/0?x"] {
            assert!(object_path(bad, 1).is_err(), "{bad}");
        }
        assert!(object_path("/3/0", 3).is_err());
    }
}
