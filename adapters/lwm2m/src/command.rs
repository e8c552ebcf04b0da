//! EMQX's JSON commands and responses: a command published to the device's command topic
//! becomes a CoAP request; the device's answer becomes the command echoed back (so
//! `reqID` and any other field of the application survives) with a `data` object holding
//! `reqPath`, `code`, `codeMsg` and, for reads, `content`.

use adapter_kit::coap::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use serde_json::{json, Map, Value as Json};
use translations::link_format;
use translations::lwm2m::objects::ObjectRegistry;
use translations::lwm2m::{self, ContentFormat, Entry, FormatError, Path, ResourceType, Value};

/// The operations a command may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Discover,
    Write,
    Create,
    Delete,
    Execute,
    WriteAttr,
    Observe,
    CancelObserve,
}

impl Operation {
    fn from_name(name: &str) -> Option<Operation> {
        Some(match name {
            "read" => Operation::Read,
            "discover" => Operation::Discover,
            "write" => Operation::Write,
            "create" => Operation::Create,
            "delete" => Operation::Delete,
            "execute" => Operation::Execute,
            "write-attr" => Operation::WriteAttr,
            "observe" => Operation::Observe,
            "cancel-observe" => Operation::CancelObserve,
            _ => return None,
        })
    }
}

/// Why a command cannot be sent; it is answered with 4.00.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("the command is not a JSON object")]
    NotAnObject,
    #[error("unknown msgType {0:?}")]
    UnknownType(String),
    #[error("missing or invalid field {0:?}")]
    Field(&'static str),
    #[error("invalid hex value")]
    Hex,
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A parsed command: the JSON as received, kept to be echoed back, and what it asks.
#[derive(Debug, Clone)]
pub struct Command {
    pub json: Map<String, Json>,
    pub operation: Option<Operation>,
}

impl Command {
    /// Reads a command; anything that is a JSON object is kept so that even an invalid
    /// command gets its fields echoed in the 4.00 answer.
    pub fn parse(payload: &[u8]) -> Result<Command, (Option<Map<String, Json>>, CommandError)> {
        let json = match serde_json::from_slice::<Json>(payload) {
            Ok(Json::Object(map)) => map,
            _ => return Err((None, CommandError::NotAnObject)),
        };
        let name = json
            .get("msgType")
            .and_then(Json::as_str)
            .unwrap_or_default();
        match Operation::from_name(name) {
            Some(operation) => Ok(Command {
                operation: Some(operation),
                json,
            }),
            None => {
                let error = CommandError::UnknownType(name.to_owned());
                Err((Some(json), error))
            }
        }
    }

    fn data(&self) -> Option<&Map<String, Json>> {
        self.json.get("data").and_then(Json::as_object)
    }

    fn field(&self, name: &'static str) -> Result<&str, CommandError> {
        self.data()
            .and_then(|data| data.get(name))
            .and_then(Json::as_str)
            .ok_or(CommandError::Field(name))
    }

    /// `data.path`, else `data.basePath`, without its query: what responses call `reqPath`.
    pub fn request_path(&self) -> String {
        let data = self.data();
        let path = data
            .and_then(|d| d.get("path").or_else(|| d.get("basePath")))
            .and_then(Json::as_str)
            .unwrap_or("/");
        path.split_once('?')
            .map_or(path, |(path, _)| path)
            .to_owned()
    }
}

/// A path with an optional `?query` as a command writes it.
fn split_path(text: &str) -> Result<(Path, Vec<String>), CommandError> {
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let queries = query
        .split('&')
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((path.parse()?, queries))
}

fn request(method: RequestType, alternate: &[String], path: &Path, queries: &[String]) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Request(method);
    for segment in alternate {
        packet.add_option(CoapOption::UriPath, segment.clone().into_bytes());
    }
    for id in path.ids() {
        packet.add_option(CoapOption::UriPath, id.to_string().into_bytes());
    }
    for query in queries {
        packet.add_option(CoapOption::UriQuery, query.clone().into_bytes());
    }
    packet
}

/// An option's unsigned integer in the fewest bytes (RFC 7252 3.2).
pub fn uint_option(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(skip..).unwrap_or_default().to_vec()
}

fn with_format(mut packet: Packet, format: ContentFormat, payload: Vec<u8>) -> Packet {
    packet.add_option(
        CoapOption::ContentFormat,
        uint_option(u32::from(format.number())),
    );
    packet.payload = payload;
    packet
}

/// A write or create value: `{"path", "type", "value"}`, hex-decoded when the command
/// says `"encoding": "hex"`.
fn typed_value(item: &Map<String, Json>, hex: bool) -> Result<Value, CommandError> {
    let kind_name = item
        .get("type")
        .and_then(Json::as_str)
        .ok_or(CommandError::Field("type"))?;
    let kind = ResourceType::from_name(kind_name).ok_or(CommandError::Field("type"))?;
    let value = item.get("value").ok_or(CommandError::Field("value"))?;
    if hex {
        let text = value.as_str().ok_or(CommandError::Hex)?;
        let bytes = decode_hex(text).ok_or(CommandError::Hex)?;
        return Ok(lwm2m::tlv::decode_value(kind, &bytes)?);
    }
    Ok(Value::from_command(kind, value)?)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// Batch content: paths absolute (`base` itself or under it) or relative to it.
fn batch_entries(base: &Path, content: &[Json], hex: bool) -> Result<Vec<Entry>, CommandError> {
    content
        .iter()
        .map(|item| {
            let item = item.as_object().ok_or(CommandError::Field("content"))?;
            let text = item
                .get("path")
                .and_then(Json::as_str)
                .ok_or(CommandError::Field("path"))?;
            let given: Path = text.parse()?;
            let path = if given.starts_with(base) {
                given
            } else {
                let mut ids = base.ids().to_vec();
                ids.extend_from_slice(given.ids());
                Path::new(ids)?
            };
            Ok(Entry {
                path,
                value: typed_value(item, hex)?,
            })
        })
        .collect()
}

/// The CoAP request for a command. `observation_token` is the token of an observation of
/// the same path, reused by cancel-observe (RFC 7641 3.6).
pub fn to_request(command: &Command, alternate: &[String]) -> Result<Packet, CommandError> {
    let operation = command
        .operation
        .ok_or_else(|| CommandError::UnknownType(String::new()))?;
    let hex = command.json.get("encoding").and_then(Json::as_str) == Some("hex");
    let path_field =
        |name| -> Result<(Path, Vec<String>), CommandError> { split_path(command.field(name)?) };
    Ok(match operation {
        Operation::Read => {
            let (path, queries) = path_field("path")?;
            request(RequestType::Get, alternate, &path, &queries)
        }
        Operation::Discover => {
            let (path, queries) = path_field("path")?;
            let mut packet = request(RequestType::Get, alternate, &path, &queries);
            packet.add_option(
                CoapOption::Accept,
                uint_option(u32::from(ContentFormat::LinkFormat.number())),
            );
            packet
        }
        Operation::Observe | Operation::CancelObserve => {
            let (path, queries) = path_field("path")?;
            let mut packet = request(RequestType::Get, alternate, &path, &queries);
            packet.set_observe_value(u32::from(operation == Operation::CancelObserve));
            packet
        }
        Operation::Delete => {
            let (path, queries) = path_field("path")?;
            request(RequestType::Delete, alternate, &path, &queries)
        }
        Operation::Execute => {
            let (path, queries) = path_field("path")?;
            let args = match command.data().and_then(|d| d.get("args")) {
                None | Some(Json::Null) => String::new(),
                Some(Json::String(s)) if s == "undefined" => String::new(),
                Some(Json::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            let packet = request(RequestType::Post, alternate, &path, &queries);
            if args.is_empty() {
                packet
            } else {
                with_format(packet, ContentFormat::Text, args.into_bytes())
            }
        }
        Operation::WriteAttr => {
            let (path, mut queries) = path_field("path")?;
            let data = command.data().ok_or(CommandError::Field("data"))?;
            for key in ["pmin", "pmax", "gt", "lt", "st"] {
                match data.get(key) {
                    None | Some(Json::Null) => {}
                    Some(Json::String(s)) => queries.push(format!("{key}={s}")),
                    Some(Json::Number(n)) => queries.push(format!("{key}={n}")),
                    Some(_) => return Err(CommandError::Field("attribute")),
                }
            }
            request(RequestType::Put, alternate, &path, &queries)
        }
        Operation::Write => {
            let base = command
                .data()
                .and_then(|d| d.get("basePath"))
                .and_then(Json::as_str);
            match base {
                None | Some("/") | Some("") => {
                    let (path, queries) = path_field("path")?;
                    let data = command.data().ok_or(CommandError::Field("data"))?;
                    let value = typed_value(data, hex)?;
                    let packet = request(RequestType::Put, alternate, &path, &queries);
                    // One resource goes as text/plain (opaque as 42), which every client
                    // must accept for a single value (Core TS 1.0.2 6.4.1).
                    match value {
                        Value::Opaque(bytes) => with_format(packet, ContentFormat::Opaque, bytes),
                        other => {
                            with_format(packet, ContentFormat::Text, lwm2m::text::encode(&other))
                        }
                    }
                }
                Some(base) => {
                    let (path, queries) = split_path(base)?;
                    let content = command
                        .data()
                        .and_then(|d| d.get("content"))
                        .and_then(Json::as_array)
                        .ok_or(CommandError::Field("content"))?;
                    let entries = batch_entries(&path, content, hex)?;
                    // A partial update of an instance is POST; a resource is replaced by PUT.
                    let method = match path.len() {
                        2 => RequestType::Post,
                        3 => RequestType::Put,
                        _ => return Err(CommandError::Field("basePath")),
                    };
                    let payload = lwm2m::tlv::encode(&path, &entries)?;
                    with_format(
                        request(method, alternate, &path, &queries),
                        ContentFormat::Tlv,
                        payload,
                    )
                }
            }
        }
        Operation::Create => {
            let base = command.field("basePath")?;
            let (path, queries) = split_path(base)?;
            if path.len() != 1 {
                return Err(CommandError::Field("basePath"));
            }
            let content = command
                .data()
                .and_then(|d| d.get("content"))
                .and_then(Json::as_array)
                .ok_or(CommandError::Field("content"))?;
            let entries = batch_entries(&path, content, hex)?;
            let payload = lwm2m::tlv::encode(&path, &entries)?;
            with_format(
                request(RequestType::Post, alternate, &path, &queries),
                ContentFormat::Tlv,
                payload,
            )
        }
    })
}

/// EMQX's name of a response code (`codeMsg`).
pub fn code_message(code: ResponseType) -> &'static str {
    match code {
        ResponseType::Created => "created",
        ResponseType::Deleted => "deleted",
        ResponseType::Valid => "valid",
        ResponseType::Changed => "changed",
        ResponseType::Content => "content",
        ResponseType::Continue => "continue",
        ResponseType::BadRequest => "bad_request",
        ResponseType::Unauthorized => "unauthorized",
        ResponseType::BadOption => "bad_option",
        ResponseType::Forbidden => "forbidden",
        ResponseType::NotFound => "not_found",
        ResponseType::MethodNotAllowed => "method_not_allowed",
        ResponseType::NotAcceptable => "not_acceptable",
        ResponseType::RequestEntityIncomplete => "request_entity_incomplete",
        ResponseType::PreconditionFailed => "precondition_failed",
        ResponseType::RequestEntityTooLarge => "request_entity_too_large",
        ResponseType::UnsupportedContentFormat => "unsupported_content_format",
        ResponseType::InternalServerError => "internal_server_error",
        ResponseType::NotImplemented => "not_implemented",
        ResponseType::BadGateway => "bad_gateway",
        ResponseType::ServiceUnavailable => "service_unavailable",
        ResponseType::GatewayTimeout => "gateway_timeout",
        ResponseType::ProxyingNotSupported => "proxying_not_supported",
        _ => "unknown",
    }
}

/// `"2.05"` for 2.05 Content.
pub fn code_text(code: MessageClass) -> String {
    let raw = u8::from(code);
    format!("{}.{:02}", raw >> 5, raw & 0x1F)
}

/// The command echoed back with `msgType` and a `data` object.
pub fn response(
    echo: Option<&Map<String, Json>>,
    msg_type: &str,
    request_path: &str,
    code: ResponseType,
    content: Option<Json>,
    error: Option<String>,
) -> Json {
    let mut body = echo.cloned().unwrap_or_default();
    let mut data = Map::new();
    data.insert("reqPath".into(), request_path.into());
    data.insert(
        "code".into(),
        code_text(MessageClass::Response(code)).into(),
    );
    data.insert("codeMsg".into(), code_message(code).into());
    if let Some(content) = content {
        data.insert("content".into(), content);
    }
    if let Some(error) = error {
        data.insert("error".into(), error.into());
    }
    body.insert("msgType".into(), msg_type.into());
    body.insert("data".into(), Json::Object(data));
    Json::Object(body)
}

/// The command echoed back with only `msgType` changed: `ack`, `coap_timeout`, `coap_reset`.
pub fn event(echo: &Map<String, Json>, msg_type: &str) -> Json {
    let mut body = echo.clone();
    body.insert("msgType".into(), msg_type.into());
    Json::Object(body)
}

/// The Content-Format of a message; CoAP says an absent one is text/plain.
pub fn content_format(packet: &Packet) -> Result<ContentFormat, FormatError> {
    let number = match packet.get_first_option(CoapOption::ContentFormat) {
        None => return Ok(ContentFormat::Text),
        Some(raw) => raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)),
    };
    let number = u16::try_from(number).unwrap_or(u16::MAX);
    ContentFormat::from_number(number).ok_or(FormatError::Unsupported(number))
}

/// The `content` of a read-like response, typed by the object definitions.
pub fn read_content(
    packet: &Packet,
    path: &Path,
    objects: &ObjectRegistry,
) -> Result<Json, FormatError> {
    let format = content_format(packet)?;
    let entries = lwm2m::decode(format, path, &packet.payload, objects)?;
    Ok(Json::Array(entries.iter().map(Entry::to_json).collect()))
}

/// The `content` of a discover response: each link as the device wrote it, or why the
/// answer is not link format.
pub fn discover_content(packet: &Packet) -> Result<Json, String> {
    let text = std::str::from_utf8(&packet.payload)
        .map_err(|_| "discover answer is not UTF-8".to_owned())?;
    let links = link_format::parse(text).map_err(|error| error.to_string())?;
    Ok(json!(links
        .iter()
        .map(|link| link.text)
        .collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(json: &str) -> Command {
        Command::parse(json.as_bytes()).unwrap()
    }

    fn uri(packet: &Packet) -> Vec<String> {
        packet
            .get_option(CoapOption::UriPath)
            .into_iter()
            .flatten()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    #[test]
    fn read_write_execute_and_attributes() {
        let read = to_request(
            &command(r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#),
            &["lwm2m".into()],
        )
        .unwrap();
        assert_eq!(read.header.code, MessageClass::Request(RequestType::Get));
        assert_eq!(uri(&read), ["lwm2m", "3", "0", "0"]);

        let write = to_request(
            &command(
                r#"{"msgType":"write","data":{"path":"/3/0/13","type":"Time","value":1700000000}}"#,
            ),
            &[],
        )
        .unwrap();
        assert_eq!(write.header.code, MessageClass::Request(RequestType::Put));
        assert_eq!(write.payload, b"1700000000");

        let hex = to_request(
            &command(r#"{"msgType":"write","encoding":"hex","data":{"path":"/5/0/0","type":"Opaque","value":"0aff"}}"#),
            &[],
        )
        .unwrap();
        assert_eq!(hex.payload, [0x0A, 0xFF]);

        let batch = to_request(
            &command(
                r#"{"msgType":"write","data":{"basePath":"/3/0","content":[
                {"path":"14","type":"String","value":"+02:00"},
                {"path":"/3/0/13","type":"Integer","value":"5"}]}}"#,
            ),
            &[],
        )
        .unwrap();
        assert_eq!(batch.header.code, MessageClass::Request(RequestType::Post));
        assert_eq!(
            batch.payload,
            [0xC6, 14, b'+', b'0', b'2', b':', b'0', b'0', 0xC1, 13, 5]
        );

        // A resource base with its own absolute path in the content: that one resource.
        let resource = to_request(
            &command(
                r#"{"msgType":"write","data":{"basePath":"/3311/0/5851","content":[
                {"path":"/3311/0/5851","type":"Integer","value":"60"}]}}"#,
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            resource.header.code,
            MessageClass::Request(RequestType::Put)
        );
        assert_eq!(resource.payload, [0xE1, 0x16, 0xDB, 60]);

        let attrs = to_request(
            &command(r#"{"msgType":"write-attr","data":{"path":"/3/0/9","pmin":"1","pmax":5,"gt":null,"x":"y"}}"#),
            &[],
        )
        .unwrap();
        let queries: Vec<_> = attrs
            .get_option(CoapOption::UriQuery)
            .into_iter()
            .flatten()
            .map(|q| String::from_utf8_lossy(q).into_owned())
            .collect();
        assert_eq!(queries, ["pmin=1", "pmax=5"]);

        let execute = to_request(
            &command(r#"{"msgType":"execute","data":{"path":"/3/0/4","args":"undefined"}}"#),
            &[],
        )
        .unwrap();
        assert!(execute.payload.is_empty());
    }

    #[test]
    fn invalid_commands_are_errors() {
        assert!(Command::parse(b"nope").is_err());
        let (echo, _) = Command::parse(br#"{"reqID":3,"msgType":"fly"}"#).unwrap_err();
        assert_eq!(echo.unwrap()["reqID"], 3);
        for bad in [
            r#"{"msgType":"read","data":{}}"#,
            r#"{"msgType":"read","data":{"path":"/a/b"}}"#,
            r#"{"msgType":"write","data":{"path":"/3/0/1","type":"Integer","value":"x"}}"#,
            r#"{"msgType":"write","encoding":"hex","data":{"path":"/5/0/0","type":"Opaque","value":"zz"}}"#,
            r#"{"msgType":"write","data":{"path":"/3/0/1","type":"Blob","value":"x"}}"#,
        ] {
            assert!(to_request(&command(bad), &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_echo_the_command() {
        let cmd =
            command(r#"{"reqID":7,"cacheID":"c","msgType":"read","data":{"path":"/3/0/0?x=1"}}"#);
        let json = response(
            Some(&cmd.json),
            "read",
            &cmd.request_path(),
            ResponseType::Content,
            Some(json!([{"path": "/3/0/0", "value": "acme"}])),
            None,
        );
        assert_eq!(
            json,
            json!({"reqID":7,"cacheID":"c","msgType":"read","data":{
                "reqPath":"/3/0/0","code":"2.05","codeMsg":"content",
                "content":[{"path":"/3/0/0","value":"acme"}]}})
        );
        assert_eq!(
            code_text(MessageClass::Response(ResponseType::NotFound)),
            "4.04"
        );
    }
}
