#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! MQTT over WebSocket (`ws://`, path `/mqtt`): paho-mqtt and MQTT.js exchange messages
//! with mosquitto clients on plain TCP; a raw WebSocket client (tungstenite) checks what
//! the libraries never do: packets split across frames and several in one frame,
//! subprotocol negotiation, text frames, the frame size limit, Origin checks and a
//! trusted proxy's X-Forwarded-For.

use interop_tests::carried::exchange_with_tcp_clients;
use interop_tests::raw::{
    connect_packet, publish_packet, subscribe_packet, ConnectOpts, Received, CONNACK, PUBLISH,
    SUBACK,
};
use interop_tests::ws::{RawWs, Refused};
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, Carrier, Lib, MosquittoSub,
    ScriptClient, Setting, Version, TIMEOUT,
};

fn ws_broker(settings: &[Setting]) -> Option<Broker> {
    Broker::start_with(settings)
}

fn open(broker: &Broker, protocols: &[&str]) -> RawWs {
    RawWs::open(&broker.host, broker.ws_port, "/mqtt", protocols, &[])
        .unwrap_or_else(|e| panic!("upgrade refused: {e:?}\n{}", broker.log_tail()))
}

fn expect_packet(ws: &mut RawWs, kind: u8, what: &str) -> Vec<u8> {
    match ws.read_packet(TIMEOUT) {
        Received::Packet(p) if p.kind == kind => p.body,
        other => panic!("{what}: expected packet type {kind}, got {other:?}"),
    }
}

#[test]
fn paho_over_websocket_exchanges_messages_with_tcp_clients() {
    let broker = ws_broker(&[]).expect("a broker");
    for version in [Version::V311, Version::V5] {
        exchange_with_tcp_clients(&broker, Lib::Paho, version, &Carrier::ws(broker.ws_port));
    }
}

#[test]
fn mqttjs_over_websocket_exchanges_messages_with_tcp_clients() {
    let broker = ws_broker(&[]).expect("a broker");
    for version in [Version::V311, Version::V5] {
        exchange_with_tcp_clients(&broker, Lib::MqttJs, version, &Carrier::ws(broker.ws_port));
    }
}

/// MQTT 3.1 clients offer the subprotocol "mqttv3.1".
#[test]
fn v31_clients_over_websocket_are_served() {
    let broker = ws_broker(&[]).expect("a broker");
    let topic = unique_topic("ws-v31");
    for lib in Lib::ALL {
        let mut client = ScriptClient::connected_via(
            lib,
            Version::V31,
            &broker,
            &Carrier::ws(broker.ws_port),
            &unique_client_id("v31"),
        );
        assert_eq!(client.subscribe(&topic, 1), 1);
        mosquitto_pub(&broker, Version::V311, &topic, b"to 3.1", 1, false, &[]);
        assert_eq!(client.recv(TIMEOUT).payload, b"to 3.1");
        client.disconnect();
    }
    let mut ws = open(&broker, &["mqttv3.1"]);
    assert_eq!(ws.subprotocol().as_deref(), Some("mqttv3.1"));
    ws.send_frame(&connect_packet(&ConnectOpts::new(Version::V31, "v31-raw")));
    assert_eq!(expect_packet(&mut ws, CONNACK, "3.1 CONNACK"), vec![0, 0]);
}

#[test]
fn packets_split_across_frames_and_packed_into_one_frame_are_decoded() {
    let broker = ws_broker(&[]).expect("a broker");
    let topic = unique_topic("ws-frames");
    let mut ws = open(&broker, &["mqtt"]);
    assert_eq!(ws.subprotocol().as_deref(), Some("mqtt"));

    // CONNECT, SUBSCRIBE and a PUBLISH to ourselves in one frame.
    let mut frame = connect_packet(&ConnectOpts::new(
        Version::V311,
        &unique_client_id("frames"),
    ));
    frame.extend(subscribe_packet(Version::V311, 1, &topic, 0));
    frame.extend(publish_packet(Version::V311, &topic, 0, 0, b"packed"));
    ws.send_frame(&frame);
    expect_packet(&mut ws, CONNACK, "CONNACK");
    assert_eq!(expect_packet(&mut ws, SUBACK, "SUBACK"), vec![0, 1, 0]);
    let body = expect_packet(&mut ws, PUBLISH, "packed PUBLISH");
    assert!(body.ends_with(b"packed"));

    // One PUBLISH of 100 KB in frames of 1, 2, 3... bytes up to 4 KB, then the rest.
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let packet = publish_packet(Version::V311, &topic, 0, 0, &payload);
    let mut offset = 0;
    let mut size = 1;
    while offset < packet.len() {
        let end = (offset + size).min(packet.len());
        ws.send_frame(&packet[offset..end]);
        offset = end;
        size = if size < 4096 { size + 1 } else { packet.len() };
    }
    let body = expect_packet(&mut ws, PUBLISH, "split PUBLISH");
    assert!(
        body.ends_with(&payload),
        "the split PUBLISH came back altered"
    );

    // And a TCP client sees the same.
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&topic], 0, &[]);
    ws.send_frame(&publish_packet(Version::V311, &topic, 0, 0, b"to tcp"));
    assert_eq!(sub.recv(TIMEOUT).payload, b"to tcp");
}

#[test]
fn subprotocols_are_negotiated_and_strictness_is_configurable() {
    let broker = ws_broker(&[]).expect("a broker");
    // The first of the client's list that the gateway supports is chosen.
    let ws = open(&broker, &["chat", "mqtt-v5", "mqtt"]);
    assert_eq!(ws.subprotocol().as_deref(), Some("mqtt-v5"));
    for offered in [&["chat"][..], &[][..]] {
        let refused = RawWs::open(&broker.host, broker.ws_port, "/mqtt", offered, &[])
            .err()
            .unwrap_or_else(|| panic!("offering {offered:?} must be refused"));
        assert_eq!(refused.status, Some(400), "{refused:?}");
        assert!(refused.body.contains("subprotocol"), "{refused:?}");
    }
    let refused = RawWs::open(&broker.host, broker.ws_port, "/other", &["mqtt"], &[])
        .err()
        .expect("another path must be refused");
    assert_eq!(refused.status, Some(404), "{refused:?}");

    let lenient = ws_broker(&[
        Setting::new(
            "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__FAIL_IF_NO_SUBPROTOCOL",
            "false",
        ),
        Setting::new(
            "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__MQTT_PATH",
            "/custom",
        ),
    ]);
    let Some(lenient) = lenient else { return };
    let mut ws = RawWs::open(&lenient.host, lenient.ws_port, "/custom", &[], &[])
        .expect("no subprotocol accepted when not strict");
    assert_eq!(ws.subprotocol(), None);
    ws.send_frame(&connect_packet(&ConnectOpts::new(Version::V5, "lenient")));
    expect_packet(&mut ws, CONNACK, "CONNACK without subprotocol");
}

#[test]
fn text_frames_and_oversized_frames_close_only_their_connection() {
    let Some(broker) = ws_broker(&[Setting::new(
        "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__MAX_FRAME_SIZE",
        "1024",
    )]) else {
        return;
    };
    let topic = unique_topic("ws-bad-frames");
    let mut bystander = ScriptClient::connected_via(
        Lib::MqttJs,
        Version::V5,
        &broker,
        &Carrier::ws(broker.ws_port),
        &unique_client_id("bystander"),
    );
    bystander.subscribe(&topic, 1);

    let mut text = open(&broker, &["mqtt"]);
    text.send_frame(&connect_packet(&ConnectOpts::new(
        Version::V311,
        "text-sender",
    )));
    expect_packet(&mut text, CONNACK, "CONNACK");
    text.send_text("PUBLISH please");
    assert!(
        text.read_until_closed(TIMEOUT).is_some(),
        "a text frame must close the connection"
    );

    let mut big = open(&broker, &["mqtt"]);
    big.send_frame(&connect_packet(&ConnectOpts::new(
        Version::V311,
        "big-sender",
    )));
    expect_packet(&mut big, CONNACK, "CONNACK");
    big.send_frame(&publish_packet(Version::V311, &topic, 0, 0, &[7u8; 2000]));
    assert!(
        big.read_until_closed(TIMEOUT).is_some(),
        "a 2000-byte frame over a 1024-byte limit must close the connection"
    );

    mosquitto_pub(&broker, Version::V311, &topic, b"still here", 1, false, &[]);
    assert_eq!(bystander.recv(TIMEOUT).payload, b"still here");
    let log = broker.log_tail();
    assert!(
        log.contains("text frame"),
        "the log names the text frame:\n{log}"
    );
}

#[test]
fn origin_is_checked_when_configured() {
    let Some(broker) = ws_broker(&[
        Setting::new(
            "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__CHECK_ORIGIN_ENABLE",
            "true",
        ),
        Setting::new(
            "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__ALLOW_ORIGIN_ABSENCE",
            "false",
        ),
        Setting::new(
            "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__CHECK_ORIGINS",
            "[\"https://good.example\"]",
        ),
    ]) else {
        return;
    };
    let open_from = |origin: Option<&str>| {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        RawWs::open(&broker.host, broker.ws_port, "/mqtt", &["mqtt"], &headers)
    };
    assert!(open_from(Some("https://good.example")).is_ok());
    let refused = open_from(Some("https://evil.example"))
        .err()
        .expect("a foreign origin");
    assert_eq!(refused.status, Some(403), "{refused:?}");
    let refused = open_from(None).err().expect("no origin");
    assert_eq!(refused.status, Some(403), "{refused:?}");
}

/// An ACL granting everything to 10.9.9.9 and nothing to anyone else, the test's own
/// address (127.0.0.1) included.
fn acl_for_10_9_9_9(dir: &tempfile::TempDir) -> Setting {
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "allow ip:10.9.9.9 all #\ndeny all all #\n").unwrap();
    Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string())
}

const XFF_HEADER_KEY: &str = "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__PROXY_ADDRESS_HEADER";
const TRUSTED_PROXIES_KEY: &str = "GATEWAY_LISTENERS__WS__DEFAULT__WEBSOCKET__TRUSTED_PROXIES";

/// The SUBACK code of `itest/xff` for a client upgrading with these headers, as the ACL
/// judges the address the gateway believes; the upgrade's refusal when it is refused.
fn subscribe_code_with(broker: &Broker, headers: &[(&str, &str)]) -> Result<u8, Refused> {
    let mut ws = RawWs::open(&broker.host, broker.ws_port, "/mqtt", &["mqtt"], headers)?;
    ws.send_frame(&connect_packet(&ConnectOpts::new(
        Version::V311,
        &unique_client_id("xff"),
    )));
    expect_packet(&mut ws, CONNACK, "CONNACK");
    ws.send_frame(&subscribe_packet(Version::V311, 1, "itest/xff", 1));
    Ok(expect_packet(&mut ws, SUBACK, "SUBACK")[2])
}

fn forwarded_for(broker: &Broker, value: &str) -> Result<u8, Refused> {
    subscribe_code_with(broker, &[("x-forwarded-for", value)])
}

/// Behind a trusted proxy the client address comes from X-Forwarded-For: the ACL and the
/// log see it. Without the setting the header is ignored.
#[test]
fn x_forwarded_for_names_the_client_only_when_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(trusting) = ws_broker(&[
        acl_for_10_9_9_9(&dir),
        Setting::new(XFF_HEADER_KEY, "x-forwarded-for"),
        Setting::new("GATEWAY_LOG__LEVEL", "debug"),
    ]) else {
        return;
    };
    assert_eq!(
        forwarded_for(&trusting, "10.9.9.9").unwrap(),
        1,
        "allowed by the forwarded address"
    );
    let log = trusting.log_tail();
    assert!(
        log.contains("client_addr=10.9.9.9"),
        "the log names the forwarded address:\n{log}"
    );

    let distrusting = ws_broker(&[acl_for_10_9_9_9(&dir)]).unwrap();
    assert_eq!(
        forwarded_for(&distrusting, "10.9.9.9").unwrap(),
        0x80,
        "the header is not trusted by default"
    );
}

/// A client writes X-Forwarded-For itself and the proxy appends the address it saw, so
/// only the rightmost entry, the proxy's, is believed: a forged leftmost entry grants
/// nothing, whether the proxy appends to the client's line (nginx) or adds a line of its
/// own (HAProxy). Entries left of the client are not read; a malformed entry where the
/// client should be refuses the upgrade (the socket's peer is the proxy, whose address
/// must not stand in for a client).
#[test]
fn a_forged_leftmost_x_forwarded_for_entry_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(broker) = ws_broker(&[
        acl_for_10_9_9_9(&dir),
        Setting::new(XFF_HEADER_KEY, "x-forwarded-for"),
    ]) else {
        return;
    };
    assert_eq!(
        forwarded_for(&broker, "10.9.9.9, 127.0.0.1").unwrap(),
        0x80,
        "the forged leftmost entry is not the client"
    );
    assert_eq!(
        subscribe_code_with(
            &broker,
            &[
                ("x-forwarded-for", "10.9.9.9"),
                ("x-forwarded-for", "127.0.0.1")
            ]
        )
        .unwrap(),
        0x80,
        "nor is a forged line before the proxy's"
    );
    assert_eq!(
        forwarded_for(&broker, "not an address, 10.9.9.9").unwrap(),
        1,
        "what the client wrote before the proxy's entry is not read"
    );
    for malformed in ["10.9.9.9, not-an-address", "10.9.9.9, ", "unknown"] {
        let refused = forwarded_for(&broker, malformed)
            .err()
            .unwrap_or_else(|| panic!("{malformed:?} upgraded"));
        assert_eq!(refused.status, Some(400), "{malformed:?}: {refused:?}");
    }
}

/// With `trusted_proxies`, only those peers may name a client, and entries they appended
/// are skipped from the right: the client is the first address that is not a trusted
/// proxy.
#[test]
fn trusted_proxies_are_skipped_and_only_they_may_name_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let Some(behind_two) = ws_broker(&[
        acl_for_10_9_9_9(&dir),
        Setting::new(XFF_HEADER_KEY, "x-forwarded-for"),
        Setting::new(TRUSTED_PROXIES_KEY, "[\"127.0.0.1\", \"198.51.100.0/24\"]"),
        Setting::new("GATEWAY_LOG__LEVEL", "debug"),
    ]) else {
        return;
    };
    assert_eq!(
        forwarded_for(&behind_two, "203.0.113.7, 10.9.9.9, 198.51.100.4").unwrap(),
        1,
        "the client behind the two proxies is 10.9.9.9"
    );
    assert!(behind_two.log_tail().contains("client_addr=10.9.9.9"));
    assert_eq!(
        forwarded_for(&behind_two, "10.9.9.9, 203.0.113.7, 198.51.100.4").unwrap(),
        0x80,
        "203.0.113.7 is no proxy of ours: the entry it wrote is not believed"
    );

    let elsewhere = ws_broker(&[
        acl_for_10_9_9_9(&dir),
        Setting::new(XFF_HEADER_KEY, "x-forwarded-for"),
        Setting::new(TRUSTED_PROXIES_KEY, "[\"192.0.2.1\"]"),
    ])
    .unwrap();
    assert_eq!(
        forwarded_for(&elsewhere, "10.9.9.9").unwrap(),
        0x80,
        "a peer that is not a trusted proxy names no one"
    );
}
