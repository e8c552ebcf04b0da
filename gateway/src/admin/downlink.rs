//! Requests to devices from the operator, on EMQX's paths: LwM2M's read, write, observe
//! and lookup (`/gateways/lwm2m/clients/{clientid}/...`), plus execute and discover.
//!
//! Every request is checked here (the object path, the type and value, their sizes) and
//! answered 400 before anything reaches the device. A valid one becomes the EMQX JSON
//! command an MQTT application would publish on the device's command topic and is handed
//! to the device's channel (`adapter_lwm2m::Device::submit`), which queues and sends it as
//! it does those; the device's answer is published on the response topic as theirs are,
//! and kept for `lookup`.

use std::sync::Arc;

use adapter_kit::Launch;
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

use super::api::{ApiPath, ApiQuery};
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
}

impl Downlinks {
    /// The registries the adapters started with `launch` fill.
    pub fn from_launch(launch: &mut Launch) -> Downlinks {
        Downlinks {
            lwm2m: launch.shared::<Devices>(),
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
