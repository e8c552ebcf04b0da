//! Two LwM2M devices on a broker with authentication on (a password file, an ACL denying
//! what it does not name) and a per-device mountpoint: registrations, updates and
//! de-registrations with the endpoints and credentials the fuzzer picks, LwM2M 1.1 Send,
//! arbitrary datagrams, and commands (arbitrary bytes, or EMQX JSON commands built from
//! the input) published on a device's command topic by the rest of the world, which the
//! channel parses, sends to the device and answers on its response topic once the device
//! answers (piggybacked, separately, with a reset, or notifying an observation) in the
//! content format the fuzzer picks. Other publishers, the store and the clock move too.
//! Every datagram the channel sends must be valid CoAP.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use adapter_kit::coap::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use adapter_lwm2m::channel::AutoObserveMode;
use adapter_lwm2m::{Lwm2mChannel, ObjectRegistry, Settings};
use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqtt_core::protocol::Flow;
use mqtt_core_fuzz::coap::uint;
use mqtt_core_fuzz::{
    close_all, config, settle, ClientId, ClientSide, Credentials, Mounted, NoWakeup, StoreKind,
    Topic, User, World, WorldStep,
};
use serde_json::{Map, Value as Json};

#[derive(Debug, Arbitrary)]
struct Input {
    mount: Mount,
    auto_observe: bool,
    store: StoreKind,
    steps: Vec<Step>,
}

/// The listener's mountpoint: one per device, by endpoint name, client id or user.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Mount {
    Endpoint,
    ClientId,
    Username,
}

impl Mount {
    fn template(self) -> &'static str {
        match self {
            Mount::Endpoint => "lwm2m/${endpoint_name}/",
            Mount::ClientId => "t/${clientid}/",
            Mount::Username => "u/${username}/",
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Device {
    First,
    Second,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Datagram(Device, Vec<u8>),
    Register(Device, Register),
    Update(Device, Update),
    Deregister(Device, ClientId),
    Send(Device, Format, Vec<u8>),
    Answer(Device, Answer),
    Command(Command),
    /// The listener forgets the device's address; its next datagram makes a new channel.
    Forget(Device),
    World(WorldStep),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Version {
    V1_0,
    V1_1,
    V1_2,
    Bad,
}

#[derive(Debug, Clone, Arbitrary)]
enum Link {
    /// An object of the built-in definitions (its instance 0), or of none.
    Known(u8),
    Object(u16),
    Instance(u16, u16),
    /// `</>;ct=11543`: the client's formats, not an object.
    Root,
    Raw(String),
}

/// Objects with definitions, and some without.
const OBJECTS: [u16; 8] = [1, 3, 4, 5, 3303, 3311, 19, 9999];

impl Link {
    fn text(&self) -> String {
        match self {
            Link::Known(n) => format!("</{}/0>", OBJECTS[usize::from(*n) % OBJECTS.len()]),
            Link::Object(object) => format!("</{object}>"),
            Link::Instance(object, instance) => format!("</{object}/{instance}>"),
            Link::Root => "</>;ct=11543".to_owned(),
            Link::Raw(text) => text.clone(),
        }
    }
}

fn object_list(alternate: bool, links: &[Link]) -> Vec<u8> {
    let mut parts: Vec<String> = Vec::new();
    if alternate {
        parts.push("</lwm2m>;rt=\"oma.lwm2m\"".to_owned());
    }
    parts.extend(links.iter().map(Link::text));
    parts.join(",").into_bytes()
}

#[derive(Debug, Arbitrary)]
struct Register {
    endpoint: ClientId,
    /// The user name goes as `imei`; without it the endpoint name is the user name.
    imei: bool,
    credentials: Credentials,
    device_id: Option<ClientId>,
    lifetime: Option<u32>,
    version: Option<Version>,
    queue_mode: bool,
    alternate: bool,
    links: Vec<Link>,
    message_id: u8,
}

#[derive(Debug, Arbitrary)]
struct Update {
    location: ClientId,
    lifetime: Option<u32>,
    queue_mode: Option<bool>,
    links: Option<Vec<Link>>,
    message_id: u8,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Format {
    Text,
    Opaque,
    Tlv,
    OmaJson,
    SenmlJson,
    SenmlCbor,
    Link,
    Other(u16),
}

impl Format {
    fn number(self) -> u16 {
        match self {
            Format::Text => 0,
            Format::Opaque => 42,
            Format::Tlv => 11542,
            Format::OmaJson => 11543,
            Format::SenmlJson => 110,
            Format::SenmlCbor => 112,
            Format::Link => 40,
            Format::Other(number) => number,
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Code {
    Content,
    Changed,
    Created,
    Deleted,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    Other(u8),
}

impl Code {
    fn class(self) -> MessageClass {
        match self {
            Code::Content => MessageClass::Response(ResponseType::Content),
            Code::Changed => MessageClass::Response(ResponseType::Changed),
            Code::Created => MessageClass::Response(ResponseType::Created),
            Code::Deleted => MessageClass::Response(ResponseType::Deleted),
            Code::BadRequest => MessageClass::Response(ResponseType::BadRequest),
            Code::NotFound => MessageClass::Response(ResponseType::NotFound),
            Code::MethodNotAllowed => MessageClass::Response(ResponseType::MethodNotAllowed),
            Code::Other(code) => MessageClass::from(code),
        }
    }
}

/// How the device answers the last request the channel sent it.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum AnswerKind {
    Piggybacked,
    /// An empty ACK: the answer comes later, separately.
    EmptyAck,
    /// The answer after an empty ACK, confirmable or not.
    Separate {
        confirmable: bool,
        message_id: u8,
    },
    Reset,
    /// A notification of an observation made with that request's token.
    Notify {
        observe: u16,
        confirmable: bool,
        message_id: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Answer {
    kind: AnswerKind,
    code: Code,
    format: Option<Format>,
    payload: Vec<u8>,
}

/// A command published to a device's command topic by an MQTT application.
#[derive(Debug, Arbitrary)]
struct Command {
    endpoint: ClientId,
    user: Option<User>,
    qos: u8,
    expiry_seconds: Option<u8>,
    json: CommandJson,
}

#[derive(Debug, Arbitrary)]
enum CommandJson {
    Raw(Vec<u8>),
    Built(Box<BuiltCommand>),
}

#[derive(Debug, Clone, Arbitrary)]
enum MsgType {
    Read,
    Discover,
    Write,
    Create,
    Delete,
    Execute,
    WriteAttr,
    Observe,
    CancelObserve,
    Raw(String),
}

impl MsgType {
    fn name(&self) -> &str {
        match self {
            MsgType::Read => "read",
            MsgType::Discover => "discover",
            MsgType::Write => "write",
            MsgType::Create => "create",
            MsgType::Delete => "delete",
            MsgType::Execute => "execute",
            MsgType::WriteAttr => "write-attr",
            MsgType::Observe => "observe",
            MsgType::CancelObserve => "cancel-observe",
            MsgType::Raw(name) => name,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum LwPath {
    Object(u8),
    Instance(u8, u16),
    Resource(u8, u16, u16),
    ResourceInstance(u8, u16, u16, u16),
    WithQuery(u8, u16, String),
    Raw(String),
}

impl LwPath {
    fn text(&self) -> String {
        let object = |n: &u8| OBJECTS[usize::from(*n) % OBJECTS.len()];
        match self {
            LwPath::Object(o) => format!("/{}", object(o)),
            LwPath::Instance(o, i) => format!("/{}/{i}", object(o)),
            LwPath::Resource(o, i, r) => format!("/{}/{i}/{r}", object(o)),
            LwPath::ResourceInstance(o, i, r, ri) => format!("/{}/{i}/{r}/{ri}", object(o)),
            LwPath::WithQuery(o, r, query) => format!("/{}/0/{r}?{query}", object(o)),
            LwPath::Raw(text) => text.clone(),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum TypeName {
    String,
    Integer,
    UnsignedInteger,
    Float,
    Boolean,
    Opaque,
    Time,
    ObjLink,
    CoreLink,
    Raw(String),
}

impl TypeName {
    fn name(&self) -> &str {
        match self {
            TypeName::String => "String",
            TypeName::Integer => "Integer",
            TypeName::UnsignedInteger => "Unsigned Integer",
            TypeName::Float => "Float",
            TypeName::Boolean => "Boolean",
            TypeName::Opaque => "Opaque",
            TypeName::Time => "Time",
            TypeName::ObjLink => "Objlnk",
            TypeName::CoreLink => "Corelnk",
            TypeName::Raw(name) => name,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Hex(Vec<u8>),
    List(Vec<i16>),
}

impl Value {
    fn json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::from(*b),
            Value::Int(i) => Json::from(*i),
            Value::Float(f) => Json::from(*f),
            Value::Text(text) => Json::from(text.as_str()),
            Value::Hex(bytes) => {
                Json::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
            }
            Value::List(items) => Json::from(items.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Attribute {
    Pmin,
    Pmax,
    Gt,
    Lt,
    St,
}

#[derive(Debug, Arbitrary)]
struct BuiltCommand {
    req_id: Option<i32>,
    msg_type: MsgType,
    hex: bool,
    path: Option<LwPath>,
    base_path: Option<LwPath>,
    value_type: Option<TypeName>,
    value: Option<Value>,
    content: Option<Vec<(LwPath, TypeName, Value)>>,
    args: Option<Value>,
    attributes: Vec<(Attribute, Value)>,
}

impl BuiltCommand {
    fn json(&self) -> Vec<u8> {
        let mut data = Map::new();
        if let Some(path) = &self.path {
            data.insert("path".into(), path.text().into());
        }
        if let Some(path) = &self.base_path {
            data.insert("basePath".into(), path.text().into());
        }
        if let Some(kind) = &self.value_type {
            data.insert("type".into(), kind.name().into());
        }
        if let Some(value) = &self.value {
            data.insert("value".into(), value.json());
        }
        if let Some(content) = &self.content {
            let items = content
                .iter()
                .map(|(path, kind, value)| {
                    let mut item = Map::new();
                    item.insert("path".into(), path.text().into());
                    item.insert("type".into(), kind.name().into());
                    item.insert("value".into(), value.json());
                    Json::Object(item)
                })
                .collect();
            data.insert("content".into(), Json::Array(items));
        }
        if let Some(args) = &self.args {
            data.insert("args".into(), args.json());
        }
        for (attribute, value) in &self.attributes {
            let key = match attribute {
                Attribute::Pmin => "pmin",
                Attribute::Pmax => "pmax",
                Attribute::Gt => "gt",
                Attribute::Lt => "lt",
                Attribute::St => "st",
            };
            data.insert(key.into(), value.json());
        }
        let mut command = Map::new();
        if let Some(id) = self.req_id {
            command.insert("reqID".into(), id.into());
        }
        command.insert("msgType".into(), self.msg_type.name().into());
        if self.hex {
            command.insert("encoding".into(), "hex".into());
        }
        command.insert("data".into(), Json::Object(data));
        Json::Object(command).to_string().into_bytes()
    }
}

/// A request the channel sent the device, to be answered.
#[derive(Clone)]
struct Sent {
    message_id: u16,
    token: Vec<u8>,
}

/// One device: its channel, and the last request the channel sent it.
struct Peer {
    channel: Lwm2mChannel,
    last: Option<Sent>,
}

impl ClientSide for Peer {
    type Channel = Lwm2mChannel;

    fn channel(&mut self) -> &mut Lwm2mChannel {
        &mut self.channel
    }

    fn receive(&mut self, out: &mut Vec<Bytes>) {
        for datagram in out.drain(..) {
            let packet = Packet::from_bytes(&datagram).expect("the channel sends valid CoAP");
            if matches!(packet.header.code, MessageClass::Request(_)) {
                self.last = Some(Sent {
                    message_id: packet.header.message_id,
                    token: packet.get_token().to_vec(),
                });
            }
        }
    }
}

fn request(method: RequestType, path: &[&str], message_id: u8) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(method);
    // Device ids apart from the channel's own, so they never collide with an answer.
    packet.header.message_id = 0x8000 | u16::from(message_id);
    packet.set_token(vec![message_id]);
    for segment in path {
        packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    packet
}

fn query(packet: &mut Packet, key: &str, value: &str) {
    packet.add_option(CoapOption::UriQuery, format!("{key}={value}").into_bytes());
}

impl Register {
    fn packet(&self) -> Packet {
        let mut packet = request(RequestType::Post, &["rd"], self.message_id);
        query(&mut packet, "ep", &self.endpoint.text());
        if self.imei {
            if let Some(username) = self.credentials.username() {
                query(&mut packet, "imei", username);
            }
        }
        if let Some(password) = self.credentials.password_text() {
            query(&mut packet, "password", &password);
        }
        if let Some(device_id) = &self.device_id {
            query(&mut packet, "device_id", &device_id.text());
        }
        if let Some(lifetime) = self.lifetime {
            query(&mut packet, "lt", &lifetime.to_string());
        }
        if let Some(version) = self.version {
            let version = match version {
                Version::V1_0 => "1.0",
                Version::V1_1 => "1.1",
                Version::V1_2 => "1.2",
                Version::Bad => "2.0",
            };
            query(&mut packet, "lwm2m", version);
        }
        if self.queue_mode {
            query(&mut packet, "b", "UQ");
        }
        packet.payload = object_list(self.alternate, &self.links);
        packet
    }
}

impl Update {
    fn packet(&self) -> Packet {
        let location = self.location.text();
        let mut packet = request(RequestType::Post, &["rd", &location], self.message_id);
        if let Some(lifetime) = self.lifetime {
            query(&mut packet, "lt", &lifetime.to_string());
        }
        if let Some(queue_mode) = self.queue_mode {
            query(&mut packet, "b", if queue_mode { "UQ" } else { "U" });
        }
        if let Some(links) = &self.links {
            packet.payload = object_list(false, links);
        }
        packet
    }
}

impl Answer {
    fn packet(&self, sent: &Sent) -> Packet {
        let mut packet = Packet::new();
        packet.set_token(sent.token.clone());
        packet.header.message_id = sent.message_id;
        packet.header.code = self.code.class();
        match self.kind {
            AnswerKind::Piggybacked => packet.header.set_type(MessageType::Acknowledgement),
            AnswerKind::EmptyAck | AnswerKind::Reset => {
                packet
                    .header
                    .set_type(if matches!(self.kind, AnswerKind::Reset) {
                        MessageType::Reset
                    } else {
                        MessageType::Acknowledgement
                    });
                packet.header.code = MessageClass::Empty;
                packet.set_token(Vec::new());
                return packet;
            }
            AnswerKind::Separate {
                confirmable,
                message_id,
            }
            | AnswerKind::Notify {
                confirmable,
                message_id,
                ..
            } => {
                packet.header.set_type(if confirmable {
                    MessageType::Confirmable
                } else {
                    MessageType::NonConfirmable
                });
                packet.header.message_id = 0x8000 | u16::from(message_id);
                if let AnswerKind::Notify { observe, .. } = self.kind {
                    packet.set_observe_value(u32::from(observe));
                }
            }
        }
        if let Some(format) = self.format {
            packet.add_option(CoapOption::ContentFormat, uint(u32::from(format.number())));
        }
        packet.payload = self.payload.clone();
        packet
    }
}

/// Hands `packet` to the device's channel; true when the channel closes.
fn to_device(peer: &mut Peer, packet: Packet, out: &mut Vec<Bytes>, now: Instant) -> bool {
    match packet.to_bytes() {
        Ok(datagram) => {
            peer.channel
                .handle_datagram(Bytes::from(datagram), out, now)
                == Flow::Close
        }
        Err(_) => false,
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(input.store, input.mount.template());
    let config = config();
    let listener = gateway_config::UdpListenerConfig {
        max_packet_size: 1152,
        ..config.gateway.lwm2m.listeners.udp["default"].clone()
    };
    let objects = {
        static OBJECTS: std::sync::OnceLock<Arc<ObjectRegistry>> = std::sync::OnceLock::new();
        OBJECTS
            .get_or_init(|| Arc::new(ObjectRegistry::built_in()))
            .clone()
    };
    let settings = Arc::new(Settings {
        mountpoint: Arc::from(input.mount.template()),
        auto_observe: if input.auto_observe {
            AutoObserveMode::All
        } else {
            AutoObserveMode::Off
        },
        ..Settings::from_config(
            Arc::from("udp:fuzz"),
            &config.gateway.lwm2m,
            &listener,
            objects,
        )
    });
    let connect = |world: &World, index: usize, seed: u64| Peer {
        channel: Lwm2mChannel::new(
            world.broker.clone(),
            settings.clone(),
            Some(SocketAddr::from(([127, 0, 0, 1], 40_000 + index as u16))),
            Arc::new(NoWakeup),
            seed,
            world.now,
        ),
        last: None,
    };
    let mut peers = [connect(&world, 0, 1), connect(&world, 1, 2)];
    let mut out = Vec::new();
    for (number, step) in input.steps.iter().enumerate() {
        let mut timers = false;
        let mut closing = None;
        match step {
            Step::Datagram(device, datagram) => {
                let peer = &mut peers[*device as usize];
                let datagram = Bytes::copy_from_slice(datagram);
                if peer.channel.handle_datagram(datagram, &mut out, world.now) == Flow::Close {
                    closing = Some(*device as usize);
                }
                peer.receive(&mut out);
            }
            Step::Register(device, register) => {
                let peer = &mut peers[*device as usize];
                if to_device(peer, register.packet(), &mut out, world.now) {
                    closing = Some(*device as usize);
                }
                peer.receive(&mut out);
            }
            Step::Update(device, update) => {
                let peer = &mut peers[*device as usize];
                if to_device(peer, update.packet(), &mut out, world.now) {
                    closing = Some(*device as usize);
                }
                peer.receive(&mut out);
            }
            Step::Deregister(device, location) => {
                let peer = &mut peers[*device as usize];
                let location = location.text();
                let packet = request(RequestType::Delete, &["rd", &location], number as u8);
                if to_device(peer, packet, &mut out, world.now) {
                    closing = Some(*device as usize);
                }
                peer.receive(&mut out);
            }
            Step::Send(device, format, payload) => {
                let peer = &mut peers[*device as usize];
                let mut packet = request(RequestType::Post, &["dp"], number as u8);
                packet.add_option(CoapOption::ContentFormat, uint(u32::from(format.number())));
                packet.payload = payload.clone();
                if to_device(peer, packet, &mut out, world.now) {
                    closing = Some(*device as usize);
                }
                peer.receive(&mut out);
            }
            Step::Answer(device, answer) => {
                let peer = &mut peers[*device as usize];
                if let Some(sent) = peer.last.clone() {
                    if to_device(peer, answer.packet(&sent), &mut out, world.now) {
                        closing = Some(*device as usize);
                    }
                    peer.receive(&mut out);
                }
            }
            Step::Command(command) => {
                let to = Mounted {
                    client_id: command.endpoint.clone(),
                    user: command.user,
                    topic: Topic::Commands,
                };
                if let Some(topic) = world.mounted(&to) {
                    let payload = match &command.json {
                        CommandJson::Raw(bytes) => bytes.clone(),
                        CommandJson::Built(built) => built.json(),
                    };
                    world.publish(
                        topic,
                        Bytes::from(payload),
                        command.qos,
                        false,
                        command.expiry_seconds,
                    );
                }
            }
            Step::Forget(device) => closing = Some(*device as usize),
            Step::World(step) => timers = world.step(step),
        }
        settle(&mut peers, closing, timers, &mut out, world.now, |index| {
            connect(&world, index, number as u64 + 3)
        });
    }
    close_all(&mut peers, world.now);
});
