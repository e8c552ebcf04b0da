//! CoAP and LwM2M over DTLS 1.2 with pre-shared keys from aiocoap (PyPI) on its tinydtls
//! transport (DTLSSocket, PyPI): aiocoap publishes and observes over `coaps://`, with and
//! without connection mode, against mosquitto clients; an LwM2M device written on aiocoap
//! (`py/lwm2m_dtls_client.py`) registers over DTLS and is read, written and observed with
//! EMQX-style commands over MQTT, the gateway's requests travelling to it on the session the
//! device opened. A wrong key gets no session; another device's client id or endpoint 4.03.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use interop_tests::broker::workspace_root;
use interop_tests::dtls::{DtlsGateway, DtlsListener};
use interop_tests::lwm2m::next_event;
use interop_tests::ports::server_port;
use interop_tests::process::{Line, Proc};
use interop_tests::{
    mosquitto_pub, sample_payloads, unique_topic, AiocoapClient, MosquittoSub, Setting, Version,
    TIMEOUT,
};
use serde_json::{json, Value};

/// How long a client waits on a handshake that must not complete: a right key completes
/// one in milliseconds, and a wrong one never does, however long it waits.
const REFUSED_WAIT: Duration = Duration::from_secs(3);

fn ten_kb() -> Vec<u8> {
    (0..10 * 1024)
        .map(|i: usize| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect()
}

#[test]
fn aiocoap_publishes_over_dtls_under_its_keys_identity() {
    let Some(gw) = DtlsGateway::start(
        DtlsListener::Coap,
        "sensor-1:secret-one\nsensor-2:another:secret\n",
        &[],
    ) else {
        return;
    };
    let topic = unique_topic("aiodtls-pub");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    // A secret holding ":" is split from its identity at the first one only.
    let mut client = AiocoapClient::spawn_dtls(gw.coaps_base(), "sensor-2", "another:secret");
    // Every byte value, empty and UTF-8, each on the one session.
    for (n, payload) in sample_payloads().iter().enumerate() {
        let answer = client.request("POST", &format!("/ps/{topic}/{n}?qos=1"), payload, false);
        assert_eq!(answer.code, "2.04", "payload {n}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(msg.topic, format!("{topic}/{n}"));
        assert_eq!(msg.payload, *payload, "payload {n}");
    }
    // Its own client id named, and non-confirmable.
    let answer = client.request(
        "POST",
        &format!("/ps/{topic}/own?clientid=sensor-2"),
        b"as itself",
        true,
    );
    assert_eq!(answer.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"as itself");
    // 10 KB: Block1 blocks, each a record of its own, reassembled.
    let payload = ten_kb();
    let answer = client.request("PUT", &format!("/ps/{topic}/large"), &payload, false);
    assert_eq!(answer.code, "2.04");
    let msg = sub.recv(TIMEOUT);
    assert_eq!(msg.topic, format!("{topic}/large"));
    assert!(msg.payload == payload, "the body reassembled");
    // Another device's client id: 4.03, and nothing published before the next message.
    let refused = client.request(
        "POST",
        &format!("/ps/{topic}/other?clientid=sensor-1"),
        b"as another device",
        false,
    );
    assert_eq!(refused.code, "4.03");
    let answer = client.request("POST", &format!("/ps/{topic}/after"), b"after", false);
    assert_eq!(answer.code, "2.04");
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice()),
        (format!("{topic}/after").as_str(), &b"after"[..])
    );
}

#[test]
fn aiocoap_observes_over_dtls_what_mosquitto_publishes() {
    let Some(gw) = DtlsGateway::start(DtlsListener::Coap, "watcher:watch-key\n", &[]) else {
        return;
    };
    let topic = unique_topic("aiodtls-obs");
    let mut client = AiocoapClient::spawn_dtls(gw.coaps_base(), "watcher", "watch-key");
    // The 2.05 comes once the subscription is in place: what is published next arrives.
    assert_eq!(client.observe(&format!("/ps/{topic}?qos=1")), "2.05");
    mosquitto_pub(&gw.broker, Version::V5, &topic, b"first", 1, false, &[]);
    let first = client.notification();
    assert_eq!(first.payload, b"first");
    mosquitto_pub(&gw.broker, Version::V5, &topic, b"second", 0, false, &[]);
    let second = client.notification();
    assert_eq!(second.payload, b"second");
    assert!(second.observe > first.observe, "{first:?} then {second:?}");
    // 10 KB: its first Block2 block notified, the others read by aiocoap over the session.
    let payload = ten_kb();
    mosquitto_pub(&gw.broker, Version::V5, &topic, &payload, 1, false, &[]);
    let large = client.notification();
    assert_eq!(large.payload.len(), payload.len());
    assert!(large.payload == payload, "the notification reassembled");
    mosquitto_pub(
        &gw.broker,
        Version::V5,
        &topic,
        b"small again",
        1,
        false,
        &[],
    );
    assert_eq!(client.notification().payload, b"small again");
}

#[test]
fn aiocoap_in_connection_mode_over_dtls_gets_a_token_for_its_own_client_id_only() {
    let Some(gw) = DtlsGateway::start(
        DtlsListener::Coap,
        "sensor-1:key-one\nsensor-2:key-two\n",
        &[Setting::new(
            "GATEWAY_GATEWAY__COAP__CONNECTION_REQUIRED",
            "true",
        )],
    ) else {
        return;
    };
    let topic = unique_topic("aiodtls-conn");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&topic], 1, &[]);
    let mut client = AiocoapClient::spawn_dtls(gw.coaps_base(), "sensor-1", "key-one");
    let other = client.request("POST", "/mqtt/connection?clientid=sensor-2", b"", false);
    assert_eq!(other.code, "4.03");
    let created = client.request("POST", "/mqtt/connection?clientid=sensor-1", b"", false);
    assert_eq!(created.code, "2.01");
    let token = String::from_utf8(created.payload).unwrap();
    assert!(token.parse::<u32>().is_ok(), "token {token:?}");
    let no_token = client.request(
        "POST",
        &format!("/ps/{topic}?clientid=sensor-1"),
        b"x",
        false,
    );
    assert_eq!(no_token.code, "4.00");
    client.publishes_only_with_token(&topic, "sensor-1", &token, &mut sub);
    let heartbeat = client.request(
        "PUT",
        &format!("/mqtt/connection?clientid=sensor-1&token={token}"),
        b"",
        false,
    );
    assert_eq!(heartbeat.code, "2.04");
    let deleted = client.request(
        "DELETE",
        &format!("/mqtt/connection?clientid=sensor-1&token={token}"),
        b"",
        false,
    );
    assert_eq!(deleted.code, "2.02");
}

#[test]
fn aiocoap_with_a_wrong_key_or_an_unknown_identity_gets_no_session() {
    let Some(gw) = DtlsGateway::start(DtlsListener::Coap, "sensor-1:right-key\n", &[]) else {
        return;
    };
    let topic = unique_topic("aiodtls-refused");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&topic], 1, &[]);
    for (identity, key) in [("sensor-1", "wrong-key"), ("nobody", "right-key")] {
        let mut client = AiocoapClient::spawn_dtls(gw.coaps_base(), identity, key);
        let answer =
            client.request_within("POST", &format!("/ps/{topic}"), b"refused", REFUSED_WAIT);
        assert_eq!(answer, None, "{identity} with {key}");
    }
    // The right key is served, and its message is the first the subscriber sees.
    let mut client = AiocoapClient::spawn_dtls(gw.coaps_base(), "sensor-1", "right-key");
    let answer = client.request("POST", &format!("/ps/{topic}"), b"right", false);
    assert_eq!(answer.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"right");
}

/// The LwM2M device on aiocoap, registering as `endpoint` with the key of `identity`,
/// each request given `timeout` seconds.
fn device(gw: &DtlsGateway, endpoint: &str, identity: &str, key: &str, timeout: &str) -> Proc {
    device_on(gw, endpoint, identity, key, timeout, None)
}

/// `device`, sending from `local_port` when given.
fn device_on(
    gw: &DtlsGateway,
    endpoint: &str,
    identity: &str,
    key: &str,
    timeout: &str,
    local_port: Option<u16>,
) -> Proc {
    let python = interop_tests::tools::python();
    let mut cmd = Command::new(python);
    cmd.arg(workspace_root().join("interop-tests/py/lwm2m_dtls_client.py"))
        .args(["127.0.0.1", &gw.port.to_string(), endpoint, identity, key])
        .args(["60", timeout]);
    if let Some(port) = local_port {
        cmd.arg(port.to_string());
    }
    Proc::spawn("aiocoap LwM2M device", cmd)
}

/// The device's next line; it prints one per event, so another line is a failure.
fn line(device: &mut Proc, timeout: Duration) -> String {
    match device.next_line(timeout) {
        Line::Line(line) => line,
        other => panic!("device: {other:?}; stderr:\n{}", device.stderr()),
    }
}

/// Publishes the command `body` to the device and returns the response published for it.
fn ask(gw: &DtlsGateway, sub: &mut MosquittoSub, endpoint: &str, body: Value) -> Value {
    mosquitto_pub(
        &gw.broker,
        Version::V311,
        &format!("lwm2m/{endpoint}/dn/cmd"),
        body.to_string().as_bytes(),
        0,
        false,
        &[],
    );
    let (topic, json) = next_event(sub, endpoint);
    assert_eq!(topic, "up/resp", "{json}");
    json
}

#[test]
fn an_aiocoap_lwm2m_device_registers_over_dtls_and_is_read_written_and_observed() {
    let Some(gw) = DtlsGateway::start(DtlsListener::Lwm2m, "meter-1:key-one\n", &[]) else {
        return;
    };
    let endpoint = "meter-1";
    let mut sub = MosquittoSub::start(
        &gw.broker,
        Version::V311,
        &[&format!("lwm2m/{endpoint}/up/#")],
        0,
        &[],
    );
    let mut device = device(&gw, endpoint, "meter-1", "key-one", "20");
    assert_eq!(line(&mut device, TIMEOUT), "registered rd/meter-1");
    let (topic, event) = next_event(&mut sub, endpoint);
    assert_eq!(topic, "up/resp");
    assert_eq!(event["msgType"], "register");
    assert_eq!(event["data"]["ep"], endpoint);
    assert_eq!(event["data"]["lt"], 60);
    assert_eq!(event["data"]["lwm2m"], "1.0");
    assert_eq!(
        event["data"]["objectList"],
        json!(["/1/0", "/3/0", "/3303/0"])
    );

    // Reads: a String, and a Time the device takes from its clock.
    let read = ask(
        &gw,
        &mut sub,
        endpoint,
        json!({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/0"}}),
    );
    assert_eq!(
        read,
        json!({"reqID": 1, "msgType": "read", "data": {
            "reqPath": "/3/0/0", "code": "2.05", "codeMsg": "content",
            "content": [{"path": "/3/0/0", "value": "Open Mobile Alliance"}]}})
    );
    let read = ask(
        &gw,
        &mut sub,
        endpoint,
        json!({"reqID": 2, "msgType": "read", "data": {"path": "/3/0/13"}}),
    );
    assert_eq!(read["data"]["code"], "2.05", "{read}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time = read["data"]["content"][0]["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("a Time: {read}"));
    assert!(time.abs_diff(now) < 60, "{time} is not about {now}");

    // Write, seen by the device, then read back.
    let write = ask(
        &gw,
        &mut sub,
        endpoint,
        json!({"reqID": 3, "msgType": "write",
               "data": {"path": "/3/0/14", "type": "String", "value": "+05:00"}}),
    );
    assert_eq!(
        write,
        json!({"reqID": 3, "msgType": "write", "data": {
            "reqPath": "/3/0/14", "code": "2.04", "codeMsg": "changed"}})
    );
    assert_eq!(line(&mut device, TIMEOUT), "write /3/0/14 +05:00");
    let read = ask(
        &gw,
        &mut sub,
        endpoint,
        json!({"reqID": 4, "msgType": "read", "data": {"path": "/3/0/14"}}),
    );
    assert_eq!(
        read["data"]["content"],
        json!([{"path": "/3/0/14", "value": "+05:00"}])
    );
    // A resource the device does not let be written: its refusal comes back.
    let refused = ask(
        &gw,
        &mut sub,
        endpoint,
        json!({"reqID": 5, "msgType": "write",
               "data": {"path": "/3/0/0", "type": "String", "value": "x"}}),
    );
    assert_eq!(refused["data"]["code"], "4.05", "{refused}");

    // Observe, then a changed value arrives as a notification, twice.
    let observe = ask(
        &gw,
        &mut sub,
        endpoint,
        json!({"reqID": 6, "msgType": "observe", "data": {"path": "/3303/0/5700"}}),
    );
    assert_eq!(observe["data"]["code"], "2.05", "{observe}");
    assert_eq!(
        observe["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}])
    );
    assert_eq!(line(&mut device, TIMEOUT), "observed /3303/0/5700");
    for value in [30.25, -4.5] {
        device.send_line(&format!("set /3303/0/5700 {value}"));
        let (topic, notify) = next_event(&mut sub, endpoint);
        assert_eq!(topic, "up/notify", "{notify}");
        assert_eq!(notify["reqID"], 6);
        assert_eq!(
            notify["data"]["content"],
            json!([{"path": "/3303/0/5700", "value": value}])
        );
    }

    // An update and a de-registration on the same session.
    device.send_line("update");
    assert_eq!(line(&mut device, TIMEOUT), "updated 2.04");
    let (topic, update) = next_event(&mut sub, endpoint);
    assert_eq!(topic, "up/update", "{update}");
    assert_eq!(update["data"]["ep"], endpoint);
    device.send_line("deregister");
    assert_eq!(line(&mut device, TIMEOUT), "deregistered 2.02");
    assert!(
        device.wait(TIMEOUT).is_some_and(|s| s.success()),
        "{}",
        device.stderr()
    );
}

#[test]
fn lwm2m_over_dtls_a_wrong_key_gets_no_session_and_another_endpoint_is_refused() {
    let Some(gw) = DtlsGateway::start(
        DtlsListener::Lwm2m,
        "meter-1:key-one\nmeter-2:key-two\n",
        &[],
    ) else {
        return;
    };
    let mut sub = MosquittoSub::start(&gw.broker, Version::V311, &["lwm2m/#"], 0, &[]);
    let wait = REFUSED_WAIT.as_secs().to_string();
    // A wrong key: the handshake never completes, the device gives up.
    let mut refused = device(&gw, "meter-1", "meter-1", "key-two", &wait);
    assert_eq!(
        line(&mut refused, REFUSED_WAIT + TIMEOUT),
        "error register TimeoutError"
    );
    // The right key, under another device's endpoint name: 4.03.
    let mut refused = device(&gw, "meter-2", "meter-1", "key-one", "20");
    assert_eq!(line(&mut refused, TIMEOUT), "error register 4.03");
    // The right key under its own name registers, and its event is the first of all.
    let mut device = device(&gw, "meter-2", "meter-2", "key-two", "20");
    assert_eq!(line(&mut device, TIMEOUT), "registered rd/meter-2");
    let (topic, event) = next_event(&mut sub, "meter-2");
    assert_eq!(topic, "up/resp");
    assert_eq!(event["msgType"], "register", "{event}");
}

/// A device that restarts keeps its port (as devices binding a fixed one do) and finds its
/// old session still open at the gateway: its new handshake from there is taken (RFC 6347
/// 4.2.8) once it returned a cookie, and the gateway's requests reach the new session.
#[test]
fn an_lwm2m_device_restarted_on_its_port_registers_again_over_dtls() {
    for stateless_cookies in ["true", "false"] {
        let Some(gw) = DtlsGateway::start(
            DtlsListener::Lwm2m,
            "meter-1:key-one\n",
            &[Setting::new(
                "GATEWAY_GATEWAY__LWM2M__LISTENERS__DTLS__DEFAULT__STATELESS_COOKIES",
                stateless_cookies,
            )],
        ) else {
            return;
        };
        let endpoint = "meter-1";
        let mut sub = MosquittoSub::start(
            &gw.broker,
            Version::V311,
            &[&format!("lwm2m/{endpoint}/up/#")],
            0,
            &[],
        );
        // Both devices bind it in turn: a port no client socket is given meanwhile.
        let port = server_port();
        let mut before = device_on(&gw, endpoint, "meter-1", "key-one", "20", Some(port));
        assert_eq!(line(&mut before, TIMEOUT), "registered rd/meter-1");
        assert_eq!(next_event(&mut sub, endpoint).1["msgType"], "register");
        // Gone without a word: no close_notify, no de-registration.
        before.kill();
        let mut after = device_on(&gw, endpoint, "meter-1", "key-one", "20", Some(port));
        assert_eq!(
            line(&mut after, TIMEOUT),
            "registered rd/meter-1",
            "stateless_cookies = {stateless_cookies}"
        );
        assert_eq!(next_event(&mut sub, endpoint).1["msgType"], "register");
        let read = ask(
            &gw,
            &mut sub,
            endpoint,
            json!({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/0"}}),
        );
        assert_eq!(
            read["data"]["content"],
            json!([{"path": "/3/0/0", "value": "Open Mobile Alliance"}]),
            "{read}"
        );
    }
}
