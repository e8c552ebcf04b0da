//! Device management driven from MQTT, on a virtual clock: the channel plays the gateway,
//! the test plays both the device (answering the CoAP requests the channel sends) and the
//! MQTT application (publishing EMQX commands and reading what lands on `up/`). Covers
//! every command's request and answer, device answers in TLV, OMA JSON, SenML JSON and
//! SenML CBOR, one request in flight with the rest queued FIFO, message expiry, the
//! queue limit, `ack` / `coap_timeout` / `coap_reset`, observations (and their end with
//! the registration), `auto_observe` and LwM2M 1.1 Send.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::coap::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use adapter_lwm2m::channel::AutoObserveMode;
use adapter_lwm2m::command::uint_option;
use adapter_lwm2m::{Lwm2mChannel, Settings};
use bytes::Bytes;
use bytestring::ByteString;
use common::{decode, settings};
use mqtt_core::broker::Broker;
use mqtt_core::client::ClientSession;
use mqtt_core::codec::QoS;
use mqtt_core::message::Message as Routed;
use mqtt_core::protocol::Flow;
use mqtt_core::testing::{self, NoWakeup};
use serde_json::{json, Value};

const TEXT: u16 = 0;
const TLV: u16 = 11542;
const OMA_JSON: u16 = 11543;
const SENML_JSON: u16 = 110;
const SENML_CBOR: u16 = 112;
const LINK_FORMAT: u16 = 40;

/// The gateway's side (channel and broker) and an MQTT application watching `up/`.
struct Harness {
    broker: Arc<Broker>,
    channel: Lwm2mChannel,
    watcher: ClientSession,
    next_id: u16,
}

impl Harness {
    fn new(settings: Settings, now: Instant) -> Harness {
        let broker = testing::broker(now);
        let channel = Lwm2mChannel::new(
            broker.clone(),
            Arc::new(settings),
            None,
            Arc::new(NoWakeup),
            11,
            now,
        );
        let watcher = testing::subscriber(
            &broker,
            "application",
            "lwm2m/+/up/#",
            QoS::AtLeastOnce,
            0,
            now,
        );
        Harness {
            broker,
            channel,
            watcher,
            next_id: 100,
        }
    }

    /// A confirmable request from the device; returns what the channel sent back.
    fn device_request(
        &mut self,
        method: RequestType,
        path: &[&str],
        queries: &[&str],
        format: Option<u16>,
        payload: &[u8],
        now: Instant,
    ) -> Vec<Packet> {
        self.next_id += 1;
        let mut packet = common::confirmable(method, self.next_id, path, queries);
        if let Some(format) = format {
            packet.add_option(CoapOption::ContentFormat, uint_option(u32::from(format)));
        }
        packet.payload = payload.to_vec();
        self.datagram(packet, now)
    }

    fn register(&mut self, queries: &[&str], objects: &[u8], now: Instant) -> Vec<Packet> {
        let out = self.device_request(RequestType::Post, &["rd"], queries, None, objects, now);
        assert_eq!(code(&out[0]), response(ResponseType::Created));
        out
    }

    fn datagram(&mut self, packet: Packet, now: Instant) -> Vec<Packet> {
        let mut out = Vec::new();
        let flow =
            self.channel
                .handle_datagram(Bytes::from(packet.to_bytes().unwrap()), &mut out, now);
        assert_eq!(flow, Flow::Continue);
        decode(out)
    }

    /// The device answers `request` in a piggybacked ACK.
    fn answer(
        &mut self,
        request: &Packet,
        code: ResponseType,
        format: Option<u16>,
        payload: &[u8],
        now: Instant,
    ) -> Vec<Packet> {
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::Acknowledgement);
        packet.header.code = MessageClass::Response(code);
        packet.header.message_id = request.header.message_id;
        packet.set_token(request.get_token().to_vec());
        if let Some(format) = format {
            packet.add_option(CoapOption::ContentFormat, uint_option(u32::from(format)));
        }
        packet.payload = payload.to_vec();
        self.datagram(packet, now)
    }

    /// An MQTT application publishes `command` to the device's command topic.
    fn command(&mut self, endpoint: &str, command: Value, now: Instant) -> Vec<Packet> {
        self.command_expiring(endpoint, command, None, now)
    }

    fn command_expiring(
        &mut self,
        endpoint: &str,
        command: Value,
        expires_at: Option<Instant>,
        now: Instant,
    ) -> Vec<Packet> {
        let _ = testing::route(
            &self.broker,
            Routed {
                expires_at,
                ..Routed::new(
                    ByteString::from(format!("lwm2m/{endpoint}/dn/cmd")),
                    Bytes::from(command.to_string()),
                    QoS::AtMostOnce,
                    false,
                    now,
                )
            },
        );
        let mut out = Vec::new();
        assert_eq!(self.channel.handle_wakeup(&mut out, now), Flow::Continue);
        decode(out)
    }

    fn tick(&mut self, now: Instant) -> (Flow, Vec<Packet>) {
        let mut out = Vec::new();
        let flow = self.channel.handle_timeout(&mut out, now);
        (flow, decode(out))
    }

    /// What the gateway published on `up/` since the last look, as (topic, JSON).
    fn published(&self, now: Instant) -> Vec<(String, Value)> {
        let mut state = self.watcher.session().state.lock();
        std::iter::from_fn(|| state.pop_queued(now).map(|d| d.message))
            .map(|message| {
                (
                    message.topic.to_string(),
                    serde_json::from_slice(&message.payload).unwrap(),
                )
            })
            .collect()
    }

    /// The one message published since the last look, on `topic`.
    fn one(&self, topic: &str, now: Instant) -> Value {
        let mut published = self.published(now);
        assert_eq!(published.len(), 1, "{published:?}");
        let (got, json) = published.remove(0);
        assert_eq!(got, topic, "{json}");
        json
    }
}

fn code(packet: &Packet) -> MessageClass {
    packet.header.code
}

fn response(code: ResponseType) -> MessageClass {
    MessageClass::Response(code)
}

fn request(method: RequestType) -> MessageClass {
    MessageClass::Request(method)
}

fn strings(packet: &Packet, option: CoapOption) -> Vec<String> {
    packet
        .get_option(option)
        .into_iter()
        .flatten()
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect()
}

fn uri(packet: &Packet) -> String {
    format!("/{}", strings(packet, CoapOption::UriPath).join("/"))
}

fn uint(packet: &Packet, option: CoapOption) -> Option<u32> {
    packet
        .get_first_option(option)
        .map(|raw| raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// The one request the channel sent, checked for method and path.
fn the_request(out: &[Packet], method: RequestType, path: &str) -> Packet {
    let requests: Vec<&Packet> = out
        .iter()
        .filter(|p| matches!(p.header.code, MessageClass::Request(_)))
        .collect();
    assert_eq!(requests.len(), 1, "{out:?}");
    let packet = requests[0].clone();
    assert_eq!(code(&packet), request(method));
    assert_eq!(uri(&packet), path);
    assert_eq!(packet.header.get_type(), MessageType::Confirmable);
    packet
}

fn no_request(out: &[Packet]) {
    assert!(
        out.iter()
            .all(|p| !matches!(p.header.code, MessageClass::Request(_))),
        "{out:?}"
    );
}

#[test]
fn commands_go_one_at_a_time_in_fifo_order_and_answers_echo_them() {
    let now = Instant::now();
    let mut h = Harness::new(settings(), now);
    h.register(&["ep=fifo", "lt=300"], b"</1/0>,</3/0>", now);
    let register = h.one("lwm2m/fifo/up/resp", now);
    assert_eq!(register["msgType"], "register");

    let read = json!({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/0"}});
    let out = h.command("fifo", read, now);
    let get = the_request(&out, RequestType::Get, "/3/0/0");
    // Two more wait behind the read.
    let write = json!({"reqID": 2, "cacheID": "x", "msgType": "write",
                       "data": {"path": "/3/0/14", "type": "String", "value": "+02:00"}});
    no_request(&h.command("fifo", write, now));
    let execute =
        json!({"reqID": 3, "msgType": "execute", "data": {"path": "/3/0/4", "args": "5"}});
    no_request(&h.command("fifo", execute, now));
    assert_eq!(h.channel.queued_commands(), 2);

    // The answer to the first lets the second go.
    let out = h.answer(&get, ResponseType::Content, Some(TEXT), b"Acme", now);
    assert_eq!(
        h.one("lwm2m/fifo/up/resp", now),
        json!({"reqID": 1, "msgType": "read", "data": {
            "reqPath": "/3/0/0", "code": "2.05", "codeMsg": "content",
            "content": [{"path": "/3/0/0", "value": "Acme"}]}})
    );
    let put = the_request(&out, RequestType::Put, "/3/0/14");
    assert_eq!(uint(&put, CoapOption::ContentFormat), Some(u32::from(TEXT)));
    assert_eq!(put.payload, b"+02:00");
    let out = h.answer(&put, ResponseType::Changed, None, b"", now);
    assert_eq!(
        h.one("lwm2m/fifo/up/resp", now),
        json!({"reqID": 2, "cacheID": "x", "msgType": "write", "data": {
            "reqPath": "/3/0/14", "code": "2.04", "codeMsg": "changed"}})
    );
    let post = the_request(&out, RequestType::Post, "/3/0/4");
    assert_eq!(post.payload, b"5");
    let out = h.answer(&post, ResponseType::Changed, None, b"", now);
    no_request(&out);
    assert_eq!(
        h.one("lwm2m/fifo/up/resp", now),
        json!({"reqID": 3, "msgType": "execute", "data": {
            "reqPath": "/3/0/4", "code": "2.04", "codeMsg": "changed"}})
    );
    assert_eq!(h.channel.queued_commands(), 0);
}

#[test]
fn device_answers_in_tlv_oma_json_senml_json_and_senml_cbor_are_typed_by_the_definitions() {
    let now = Instant::now();
    let mut h = Harness::new(settings(), now);
    h.register(&["ep=formats"], b"</3/0>,</3303/0>", now);
    h.published(now);

    // TLV for a whole instance: 5700 a 4-byte float, 5701 a string (16-bit ids).
    let tlv: &[u8] = &[
        0xE4, 0x16, 0x44, 0x41, 0xAC, 0x00, 0x00, // 5700 = 21.5f32
        0xE3, 0x16, 0x45, b'C', b'e', b'l', // 5701 = "Cel"
    ];
    let out = h.command(
        "formats",
        json!({"reqID": 1, "msgType": "read", "data": {"path": "/3303/0"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/3303/0");
    h.answer(&get, ResponseType::Content, Some(TLV), tlv, now);
    assert_eq!(
        h.one("lwm2m/formats/up/resp", now)["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}, {"path": "/3303/0/5701", "value": "Cel"}])
    );

    // OMA JSON, with the current time typed as Time and a multiple resource.
    let oma = br#"{"bn":"/3/0/","e":[{"n":"0","sv":"Acme"},{"n":"7/0","v":3800},{"n":"13","v":1700000000}]}"#;
    let out = h.command(
        "formats",
        json!({"reqID": 2, "msgType": "read", "data": {"path": "/3/0"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/3/0");
    h.answer(&get, ResponseType::Content, Some(OMA_JSON), oma, now);
    assert_eq!(
        h.one("lwm2m/formats/up/resp", now)["data"]["content"],
        json!([{"path": "/3/0/0", "value": "Acme"}, {"path": "/3/0/7/0", "value": 3800},
               {"path": "/3/0/13", "value": 1700000000}])
    );

    // SenML JSON: an integer where the definition says Float comes out as a float.
    let senml = br#"[{"bn":"/3303/0/","n":"5700","v":22},{"n":"5701","vs":"Cel"}]"#;
    let out = h.command(
        "formats",
        json!({"reqID": 3, "msgType": "read", "data": {"path": "/3303/0"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/3303/0");
    h.answer(&get, ResponseType::Content, Some(SENML_JSON), senml, now);
    assert_eq!(
        h.one("lwm2m/formats/up/resp", now)["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 22.0}, {"path": "/3303/0/5701", "value": "Cel"}])
    );

    // SenML CBOR with a half-precision float, as a shortest-form encoder writes it.
    let mut cbor = vec![0x81, 0xA2, 0x21, 0x6C];
    cbor.extend_from_slice(b"/3303/0/5700");
    cbor.extend_from_slice(&[0x02, 0xF9, 0x4D, 0x60]); // v: 21.5 as a half float
    let out = h.command(
        "formats",
        json!({"reqID": 4, "msgType": "read", "data": {"path": "/3303/0/5700"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/3303/0/5700");
    h.answer(&get, ResponseType::Content, Some(SENML_CBOR), &cbor, now);
    assert_eq!(
        h.one("lwm2m/formats/up/resp", now)["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}])
    );

    // A resource no definition knows is a 4.00 answer naming it, not base64.
    let out = h.command(
        "formats",
        json!({"reqID": 5, "msgType": "read", "data": {"path": "/9999/0/1"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/9999/0/1");
    h.answer(
        &get,
        ResponseType::Content,
        Some(TLV),
        &[0xC1, 0x01, 0x05],
        now,
    );
    let answer = h.one("lwm2m/formats/up/resp", now);
    assert_eq!(answer["data"]["code"], "4.00", "{answer}");
    assert!(
        answer["data"]["error"]
            .as_str()
            .unwrap()
            .contains("/9999/0/1"),
        "{answer}"
    );
    assert!(answer["data"].get("content").is_none(), "{answer}");
}

#[test]
fn create_delete_write_attr_discover_and_batch_writes_reach_the_device_as_the_spec_says() {
    let now = Instant::now();
    let mut h = Harness::new(settings(), now);
    h.register(&["ep=dm"], b"</3/0>,</3303/0>", now);
    h.published(now);

    // Create: POST on the object, the new instance's resources as TLV.
    let out = h.command(
        "dm",
        json!({"reqID": 1, "msgType": "create", "data": {"basePath": "/3303",
               "content": [{"path": "/3303/1/5700", "type": "Float", "value": 20.5},
                           {"path": "/3303/1/5701", "type": "String", "value": "Cel"}]}}),
        now,
    );
    let post = the_request(&out, RequestType::Post, "/3303");
    assert_eq!(uint(&post, CoapOption::ContentFormat), Some(u32::from(TLV)));
    assert_eq!(
        post.payload,
        [
            0x08, 0x01, 0x0D, // object instance 1, 13 bytes
            0xE4, 0x16, 0x44, 0x41, 0xA4, 0x00, 0x00, // 5700 = 20.5f32
            0xE3, 0x16, 0x45, b'C', b'e', b'l', // 5701 = "Cel"
        ]
    );
    let mut created = Packet::new();
    created.header.set_type(MessageType::Acknowledgement);
    created.header.code = response(ResponseType::Created);
    created.header.message_id = post.header.message_id;
    created.set_token(post.get_token().to_vec());
    created.add_option(CoapOption::LocationPath, b"3303".to_vec());
    created.add_option(CoapOption::LocationPath, b"1".to_vec());
    h.datagram(created, now);
    // The answer echoes the command, its `data` replaced by the outcome.
    assert_eq!(
        h.one("lwm2m/dm/up/resp", now),
        json!({"reqID": 1, "msgType": "create", "data": {
            "reqPath": "/3303", "code": "2.01", "codeMsg": "created"}})
    );

    // Batch write on an instance: POST (partial update), TLV, paths relative or absolute.
    let out = h.command(
        "dm",
        json!({"reqID": 2, "msgType": "write", "data": {"basePath": "/3/0", "content": [
            {"path": "14", "type": "String", "value": "+02:00"},
            {"path": "/3/0/13", "type": "Time", "value": 1700000000}]}}),
        now,
    );
    let post = the_request(&out, RequestType::Post, "/3/0");
    assert_eq!(uint(&post, CoapOption::ContentFormat), Some(u32::from(TLV)));
    assert_eq!(
        post.payload,
        [
            0xC6, 14, b'+', b'0', b'2', b':', b'0', b'0', // 14 = "+02:00"
            0xC4, 13, 0x65, 0x53, 0xF1, 0x00, // 13 = 1700000000
        ]
    );
    h.answer(&post, ResponseType::Changed, None, b"", now);
    assert_eq!(
        h.one("lwm2m/dm/up/resp", now)["data"],
        json!({"reqPath": "/3/0", "code": "2.04", "codeMsg": "changed"})
    );

    // Batch write on a multiple resource: PUT (replace), resource instances, hex values.
    let out = h.command(
        "dm",
        json!({"reqID": 3, "msgType": "write", "encoding": "hex", "data": {"basePath": "/3/0/7",
               "content": [{"path": "0", "type": "Integer", "value": "0ed8"},
                           {"path": "1", "type": "Integer", "value": "1388"}]}}),
        now,
    );
    let put = the_request(&out, RequestType::Put, "/3/0/7");
    assert_eq!(put.payload, [0x42, 0, 0x0E, 0xD8, 0x42, 1, 0x13, 0x88]);
    h.answer(&put, ResponseType::Changed, None, b"", now);
    assert_eq!(h.one("lwm2m/dm/up/resp", now)["data"]["code"], "2.04");

    // Write-attr: PUT with the attributes as queries, nulls left out.
    let out = h.command(
        "dm",
        json!({"reqID": 4, "msgType": "write-attr", "data": {"path": "/3303/0/5700",
               "pmin": "5", "pmax": 60, "gt": null, "lt": "10.5", "st": "0.5"}}),
        now,
    );
    let put = the_request(&out, RequestType::Put, "/3303/0/5700");
    assert_eq!(
        strings(&put, CoapOption::UriQuery),
        ["pmin=5", "pmax=60", "lt=10.5", "st=0.5"]
    );
    assert!(put.payload.is_empty());
    h.answer(&put, ResponseType::Changed, None, b"", now);
    assert_eq!(
        h.one("lwm2m/dm/up/resp", now),
        json!({"reqID": 4, "msgType": "write-attr", "data": {
            "reqPath": "/3303/0/5700", "code": "2.04", "codeMsg": "changed"}})
    );

    // Discover: GET with Accept link-format, the links as a list.
    let out = h.command(
        "dm",
        json!({"reqID": 5, "msgType": "discover", "data": {"path": "/3303/0"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/3303/0");
    assert_eq!(uint(&get, CoapOption::Accept), Some(u32::from(LINK_FORMAT)));
    h.answer(
        &get,
        ResponseType::Content,
        Some(LINK_FORMAT),
        b"</3303/0>,</3303/0/5700>;pmin=5,</3303/0/5701>",
        now,
    );
    assert_eq!(
        h.one("lwm2m/dm/up/resp", now)["data"]["content"],
        json!(["</3303/0>", "</3303/0/5700>;pmin=5", "</3303/0/5701>"])
    );
    // A quoted separator stays inside its link; an answer that is not link format is a
    // 4.00 naming where, and the next command still goes.
    for (id, payload, content, msg) in [
        (
            51,
            &br#"</3303/0>;title="a,b;c", </3303/0/5700>"#[..],
            json!([r#"</3303/0>;title="a,b;c""#, "</3303/0/5700>"]),
            None,
        ),
        (
            52,
            br#"</3303/0>;title="a,b"#,
            Value::Null,
            Some(r#"not CoRE link format (RFC 6690) at byte 16: "\"a,b""#),
        ),
    ] {
        let out = h.command(
            "dm",
            json!({"reqID": id, "msgType": "discover", "data": {"path": "/3303/0"}}),
            now,
        );
        let get = the_request(&out, RequestType::Get, "/3303/0");
        h.answer(&get, ResponseType::Content, Some(LINK_FORMAT), payload, now);
        let answer = h.one("lwm2m/dm/up/resp", now);
        assert_eq!(answer["data"]["content"], content, "{answer}");
        if let Some(msg) = msg {
            assert_eq!(answer["data"]["code"], "4.00", "{answer}");
            assert_eq!(answer["data"]["error"], msg, "{answer}");
        }
    }

    // Delete: DELETE on the instance.
    let out = h.command(
        "dm",
        json!({"reqID": 6, "msgType": "delete", "data": {"path": "/3303/1"}}),
        now,
    );
    let delete = the_request(&out, RequestType::Delete, "/3303/1");
    h.answer(&delete, ResponseType::Deleted, None, b"", now);
    assert_eq!(
        h.one("lwm2m/dm/up/resp", now),
        json!({"reqID": 6, "msgType": "delete", "data": {
            "reqPath": "/3303/1", "code": "2.02", "codeMsg": "deleted"}})
    );
}

#[test]
fn invalid_commands_are_answered_4_00_and_the_next_command_still_goes() {
    let now = Instant::now();
    let mut h = Harness::new(settings(), now);
    h.register(&["ep=bad"], b"</3/0>", now);
    h.published(now);
    for (command, why) in [
        (
            json!({"reqID": 1, "msgType": "fly", "data": {"path": "/3/0/0"}}),
            "msgType",
        ),
        (json!({"reqID": 2, "msgType": "read", "data": {}}), "path"),
        (
            json!({"reqID": 3, "msgType": "write", "encoding": "hex",
                   "data": {"path": "/3/0/14", "type": "String", "value": "zz"}}),
            "hex",
        ),
        (
            json!({"reqID": 4, "msgType": "create", "data": {"basePath": "/3303/0", "content": []}}),
            "basePath",
        ),
    ] {
        no_request(&h.command("bad", command.clone(), now));
        let answer = h.one("lwm2m/bad/up/resp", now);
        assert_eq!(answer["reqID"], command["reqID"]);
        assert_eq!(answer["data"]["code"], "4.00", "{answer}");
        assert_eq!(answer["data"]["codeMsg"], "bad_request");
        assert!(
            answer["data"]["error"].as_str().unwrap().contains(why),
            "{answer}"
        );
    }
    let broken = Routed::new(
        ByteString::from("lwm2m/bad/dn/cmd"),
        Bytes::from_static(b"not json"),
        QoS::AtMostOnce,
        false,
        now,
    );
    let _ = testing::route(&h.broker, broken);
    let mut out = Vec::new();
    h.channel.handle_wakeup(&mut out, now);
    assert!(out.is_empty());
    assert_eq!(h.one("lwm2m/bad/up/resp", now)["data"]["code"], "4.00");
    let out = h.command(
        "bad",
        json!({"reqID": 5, "msgType": "read", "data": {"path": "/3/0/0"}}),
        now,
    );
    the_request(&out, RequestType::Get, "/3/0/0");
}

#[test]
fn observe_notify_cancel_and_observations_end_with_the_registration() {
    let now = Instant::now();
    let mut h = Harness::new(settings(), now);
    h.register(&["ep=obs"], b"</3303/0>", now);
    h.published(now);

    let out = h.command(
        "obs",
        json!({"reqID": 7, "msgType": "observe", "data": {"path": "/3303/0/5700"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/3303/0/5700");
    assert_eq!(uint(&get, CoapOption::Observe), Some(0));
    let mut first = Packet::new();
    first.header.set_type(MessageType::Acknowledgement);
    first.header.code = response(ResponseType::Content);
    first.header.message_id = get.header.message_id;
    first.set_token(get.get_token().to_vec());
    first.set_observe_value(3);
    first.add_option(CoapOption::ContentFormat, uint_option(u32::from(TEXT)));
    first.payload = b"21.5".to_vec();
    h.datagram(first, now);
    assert_eq!(
        h.one("lwm2m/obs/up/resp", now),
        json!({"reqID": 7, "msgType": "observe", "seqNum": 3, "data": {
            "reqPath": "/3303/0/5700", "code": "2.05", "codeMsg": "content",
            "content": [{"path": "/3303/0/5700", "value": 21.5}]}})
    );
    assert_eq!(h.channel.observation_count(), 1);

    // A confirmable notification is acknowledged and published with its sequence number.
    let notification = |id: u16, seq: u32, value: &[u8]| {
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::Confirmable);
        packet.header.code = response(ResponseType::Content);
        packet.header.message_id = id;
        packet.set_token(get.get_token().to_vec());
        packet.set_observe_value(seq);
        packet.add_option(CoapOption::ContentFormat, uint_option(u32::from(TLV)));
        packet.payload = [&[0xE4u8, 0x16, 0x44][..], value].concat();
        packet
    };
    let out = h.datagram(notification(900, 4, &30.25f32.to_be_bytes()), now);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].header.get_type(), MessageType::Acknowledgement);
    assert_eq!(out[0].header.message_id, 900);
    assert_eq!(
        h.one("lwm2m/obs/up/notify", now),
        json!({"reqID": 7, "msgType": "notify", "seqNum": 4, "data": {
            "reqPath": "/3303/0/5700", "code": "2.05", "codeMsg": "content",
            "content": [{"path": "/3303/0/5700", "value": 30.25}]}})
    );

    // Cancel-observe names the observation by its token and ends it.
    let out = h.command(
        "obs",
        json!({"reqID": 8, "msgType": "cancel-observe", "data": {"path": "/3303/0/5700"}}),
        now,
    );
    let cancel = the_request(&out, RequestType::Get, "/3303/0/5700");
    assert_eq!(uint(&cancel, CoapOption::Observe), Some(1));
    assert_eq!(cancel.get_token(), get.get_token());
    h.answer(&cancel, ResponseType::Content, Some(TEXT), b"30.25", now);
    let answer = h.one("lwm2m/obs/up/resp", now);
    assert_eq!(answer["msgType"], "cancel-observe");
    assert_eq!(answer["data"]["code"], "2.05");
    assert_eq!(h.channel.observation_count(), 0);
    h.datagram(notification(901, 5, &31.0f32.to_be_bytes()), now);
    assert!(h.published(now).is_empty(), "no notification after cancel");

    // A new observation dies with the registration when the device registers again.
    let out = h.command(
        "obs",
        json!({"reqID": 9, "msgType": "observe", "data": {"path": "/3303/0/5700"}}),
        now,
    );
    let get = the_request(&out, RequestType::Get, "/3303/0/5700");
    h.answer(&get, ResponseType::Content, Some(TEXT), b"31", now);
    h.published(now);
    assert_eq!(h.channel.observation_count(), 1);
    h.register(&["ep=obs"], b"</3303/0>", now);
    assert_eq!(h.channel.observation_count(), 0);
    let mut stale = Packet::new();
    stale.header.set_type(MessageType::NonConfirmable);
    stale.header.code = response(ResponseType::Content);
    stale.header.message_id = 902;
    stale.set_token(get.get_token().to_vec());
    stale.set_observe_value(9);
    stale.payload = b"40".to_vec();
    h.datagram(stale, now);
    let published = h.published(now);
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].1["msgType"], "register");
}

#[test]
fn empty_ack_reset_and_silence_become_ack_coap_reset_and_coap_timeout_events() {
    let start = Instant::now();
    let mut h = Harness::new(settings(), start);
    h.register(&["ep=ev", "lt=3600"], b"</3/0>", start);
    h.published(start);

    // An empty ACK promises a separate response: `ack`, then the response itself.
    let out = h.command(
        "ev",
        json!({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/9"}}),
        start,
    );
    let get = the_request(&out, RequestType::Get, "/3/0/9");
    let mut empty = Packet::new();
    empty.header.set_type(MessageType::Acknowledgement);
    empty.header.code = MessageClass::Empty;
    empty.header.message_id = get.header.message_id;
    h.datagram(empty, start);
    assert_eq!(
        h.one("lwm2m/ev/up/resp", start),
        json!({"reqID": 1, "msgType": "ack", "data": {"path": "/3/0/9"}})
    );
    let mut separate = Packet::new();
    separate.header.set_type(MessageType::Confirmable);
    separate.header.code = response(ResponseType::Content);
    separate.header.message_id = 4000;
    separate.set_token(get.get_token().to_vec());
    separate.payload = b"87".to_vec();
    let out = h.datagram(separate, start);
    assert_eq!(out[0].header.get_type(), MessageType::Acknowledgement);
    assert_eq!(
        h.one("lwm2m/ev/up/resp", start)["data"]["content"],
        json!([{"path": "/3/0/9", "value": 87}])
    );

    // A Reset: `coap_reset`, and the next command goes.
    let out = h.command(
        "ev",
        json!({"reqID": 2, "msgType": "read", "data": {"path": "/3/0/0"}}),
        start,
    );
    let first = the_request(&out, RequestType::Get, "/3/0/0");
    no_request(&h.command(
        "ev",
        json!({"reqID": 3, "msgType": "read", "data": {"path": "/3/0/1"}}),
        start,
    ));
    let mut reset = Packet::new();
    reset.header.set_type(MessageType::Reset);
    reset.header.code = MessageClass::Empty;
    reset.header.message_id = first.header.message_id;
    let out = h.datagram(reset, start);
    assert_eq!(
        h.one("lwm2m/ev/up/resp", start),
        json!({"reqID": 2, "msgType": "coap_reset", "data": {"path": "/3/0/0"}})
    );
    let second = the_request(&out, RequestType::Get, "/3/0/1");

    // Silence: retransmitted until MAX_RETRANSMIT, then `coap_timeout`.
    let mut sends = 1;
    let mut now = start;
    let mut timed_out = None;
    for _ in 0..100 {
        now = h
            .channel
            .next_deadline()
            .unwrap()
            .min(now + Duration::from_secs(300));
        let (flow, out) = h.tick(now);
        assert_eq!(flow, Flow::Continue);
        for packet in &out {
            assert_eq!(packet.header.message_id, second.header.message_id);
            sends += 1;
        }
        let published = h.published(now);
        if !published.is_empty() {
            timed_out = Some(published);
            break;
        }
    }
    assert_eq!(
        sends, 5,
        "the first send and MAX_RETRANSMIT (4) retransmissions"
    );
    let timed_out = timed_out.expect("coap_timeout");
    assert_eq!(timed_out.len(), 1);
    assert_eq!(
        timed_out[0].1,
        json!({"reqID": 3, "msgType": "coap_timeout", "data": {"path": "/3/0/1"}})
    );
}

#[test]
fn queue_mode_sends_at_once_within_the_window_drops_expired_commands_and_bounds_the_queue() {
    let start = Instant::now();
    let mut small = settings();
    small.max_queued_commands = 2;
    let mut h = Harness::new(small, start);
    h.register(
        &["ep=q", "lt=600", "lwm2m=1.1", "b=U", "Q"],
        b"</3/0>",
        start,
    );
    h.published(start);

    // Within qmode_time_window (22 s) of the registration the device listens.
    let soon = start + Duration::from_secs(5);
    let out = h.command(
        "q",
        json!({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/0"}}),
        soon,
    );
    let get = the_request(&out, RequestType::Get, "/3/0/0");
    h.answer(&get, ResponseType::Content, Some(TEXT), b"Acme", soon);
    assert_eq!(h.one("lwm2m/q/up/resp", soon)["data"]["code"], "2.05");

    // Past the window: held. One command expires while held; a third overflows the
    // queue of two, pushing out the oldest with `coap_timeout`.
    let asleep = soon + Duration::from_secs(30);
    no_request(&h.command_expiring(
        "q",
        json!({"reqID": 2, "msgType": "read", "data": {"path": "/3/0/1"}}),
        Some(asleep + Duration::from_secs(10)),
        asleep,
    ));
    no_request(&h.command(
        "q",
        json!({"reqID": 3, "msgType": "read", "data": {"path": "/3/0/2"}}),
        asleep,
    ));
    assert_eq!(h.channel.queued_commands(), 2);
    no_request(&h.command(
        "q",
        json!({"reqID": 4, "msgType": "read", "data": {"path": "/3/0/3"}}),
        asleep,
    ));
    assert_eq!(h.channel.queued_commands(), 2);
    assert_eq!(
        h.one("lwm2m/q/up/resp", asleep),
        json!({"reqID": 2, "msgType": "coap_timeout", "data": {"path": "/3/0/1"}})
    );
    let (_, out) = h.tick(asleep + Duration::from_secs(60));
    no_request(&out);

    // The device's update wakes it: the held commands go in order, one at a time.
    let awake = asleep + Duration::from_secs(60);
    let out = h.device_request(RequestType::Post, &["rd", "q"], &[], None, b"", awake);
    assert_eq!(code(&out[0]), response(ResponseType::Changed));
    let get = the_request(&out[1..], RequestType::Get, "/3/0/2");
    assert_eq!(h.one("lwm2m/q/up/update", awake)["msgType"], "update");
    let out = h.answer(&get, ResponseType::Content, Some(TEXT), b"M1", awake);
    assert_eq!(h.one("lwm2m/q/up/resp", awake)["reqID"], 3);
    let get = the_request(&out, RequestType::Get, "/3/0/3");
    h.answer(&get, ResponseType::Content, Some(TEXT), b"S1", awake);
    assert_eq!(h.one("lwm2m/q/up/resp", awake)["reqID"], 4);
    assert_eq!(h.channel.queued_commands(), 0);

    // A command whose MQTT message expired while held is dropped, not sent.
    let later = awake + Duration::from_secs(100);
    no_request(&h.command_expiring(
        "q",
        json!({"reqID": 5, "msgType": "read", "data": {"path": "/3/0/0"}}),
        Some(later + Duration::from_secs(5)),
        later,
    ));
    let out = h.device_request(
        RequestType::Post,
        &["rd", "q"],
        &[],
        None,
        b"",
        later + Duration::from_secs(6),
    );
    assert_eq!(out.len(), 1, "only the update's answer: {out:?}");
    assert_eq!(h.channel.queued_commands(), 0);
}

#[test]
fn auto_observe_observes_registered_objects_that_have_definitions() {
    let now = Instant::now();
    let mut all = settings();
    all.auto_observe = AutoObserveMode::All;
    let mut h = Harness::new(all, now);
    // 1 is a management object (left alone), 9999 has no definition (skipped).
    let out = h.register(&["ep=auto"], b"</1/0>,</3/0>,</3303/0>,</9999/0>", now);
    let first = the_request(&out[1..], RequestType::Get, "/3/0");
    assert_eq!(uint(&first, CoapOption::Observe), Some(0));
    h.published(now);
    let out = h.answer(&first, ResponseType::Content, Some(TEXT), b"", now);
    let second = the_request(&out, RequestType::Get, "/3303/0");
    assert_eq!(uint(&second, CoapOption::Observe), Some(0));
    let answer = h.one("lwm2m/auto/up/resp", now);
    assert_eq!(answer["msgType"], "observe");
    assert_eq!(answer["is_auto_observe"], true);
    let out = h.answer(&second, ResponseType::Content, None, b"", now);
    no_request(&out);
    assert_eq!(h.channel.observation_count(), 2);

    // A list keeps only what the device registered.
    let mut listed = settings();
    listed.auto_observe = AutoObserveMode::Paths(vec!["/3303/0".into(), "/3304/0".into()]);
    let mut h = Harness::new(listed, now);
    let out = h.register(&["ep=auto2"], b"</3/0>,</3303/0>", now);
    let only = the_request(&out[1..], RequestType::Get, "/3303/0");
    let out = h.answer(&only, ResponseType::Content, None, b"", now);
    no_request(&out);
}

#[test]
fn lwm2m_1_1_send_is_published_on_the_notify_topic() {
    let now = Instant::now();
    let mut h = Harness::new(settings(), now);
    // Before registering, Send has nowhere to go.
    let mut h2 = Harness::new(settings(), now);
    let mut out = Vec::new();
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = request(RequestType::Post);
    packet.header.message_id = 1;
    packet.add_option(CoapOption::UriPath, b"dp".to_vec());
    h2.channel
        .handle_datagram(Bytes::from(packet.to_bytes().unwrap()), &mut out, now);
    assert_eq!(code(&decode(out)[0]), response(ResponseType::NotFound));

    h.register(&["ep=sender", "lwm2m=1.1"], b"</3/0>,</3303/0>", now);
    h.published(now);
    let mut cbor = vec![0x82, 0xA3, 0x21, 0x68];
    cbor.extend_from_slice(b"/3303/0/");
    cbor.extend_from_slice(&[0x00, 0x64]);
    cbor.extend_from_slice(b"5700");
    cbor.extend_from_slice(&[0x02, 0xF9, 0x4D, 0x60]); // 21.5
    cbor.extend_from_slice(&[0xA2, 0x00, 0x64]);
    cbor.extend_from_slice(b"5701");
    cbor.extend_from_slice(&[0x03, 0x63]);
    cbor.extend_from_slice(b"Cel");
    let out = h.device_request(
        RequestType::Post,
        &["dp"],
        &[],
        Some(SENML_CBOR),
        &cbor,
        now,
    );
    assert_eq!(code(&out[0]), response(ResponseType::Changed));
    assert_eq!(
        h.one("lwm2m/sender/up/notify", now),
        json!({"msgType": "send", "data": {"reqPath": "/dp", "code": "2.04", "codeMsg": "changed",
               "content": [{"path": "/3303/0/5700", "value": 21.5},
                           {"path": "/3303/0/5701", "value": "Cel"}]}})
    );
    let senml = br#"[{"bn":"/3/0/","n":"9","v":80}]"#;
    let out = h.device_request(
        RequestType::Post,
        &["dp"],
        &[],
        Some(SENML_JSON),
        senml,
        now,
    );
    assert_eq!(code(&out[0]), response(ResponseType::Changed));
    assert_eq!(
        h.one("lwm2m/sender/up/notify", now)["data"]["content"],
        json!([{"path": "/3/0/9", "value": 80}])
    );
    let out = h.device_request(
        RequestType::Post,
        &["dp"],
        &[],
        Some(SENML_JSON),
        b"[{",
        now,
    );
    assert_eq!(code(&out[0]), response(ResponseType::BadRequest));
    assert!(h.published(now).is_empty());
}
