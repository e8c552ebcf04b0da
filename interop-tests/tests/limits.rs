//! Configured limits: maximum packet size and maximum connections per listener.
//!
//! These need a configured broker. Against an external one they run only when told
//! its configuration (GATEWAY_TEST_MAX_PACKET_SIZE, GATEWAY_TEST_MAX_CONNECTIONS); the
//! connection limit test then also needs the broker to itself.

use std::time::{Duration, Instant};

use serde_json::json;

use interop_tests::raw::{ConnectOpts, RawClient, Received};
use interop_tests::script::ConnectOutcome;
use interop_tests::{to_hex, unique_client_id, unique_topic, Broker, Lib, ScriptClient, Setting, Version, TIMEOUT};

const MAX_PACKET_SIZE: &str = "GATEWAY_MQTT__MAX_PACKET_SIZE";
const MAX_CONNECTIONS: &str = "GATEWAY_LISTENERS__TCP__DEFAULT__MAX_CONNECTIONS";

#[test]
fn oversized_publish_disconnects_only_its_sender_and_v5_clients_see_the_limit_in_connack() {
    let Some(broker) =
        Broker::start_with(&[Setting::new(MAX_PACKET_SIZE, "1024").or_external("GATEWAY_TEST_MAX_PACKET_SIZE")])
    else {
        return;
    };
    let limit: usize = broker.value(MAX_PACKET_SIZE).parse().expect("a packet size");
    let prefix = unique_topic("oversize");
    let topic = format!("{prefix}/data");
    let mut bystander = ScriptClient::spawn(Lib::Paho, Version::V5, &broker);
    let ack = bystander.connect_ok(json!({ "client_id": unique_client_id("bystander") }));
    assert_eq!(ack.props["maximum_packet_size"], limit, "CONNACK Maximum Packet Size");
    bystander.subscribe(&topic, 1);

    for version in [Version::V311, Version::V5] {
        for lib in Lib::ALL {
            let what = format!("{lib:?} {version:?}");
            let mut big = ScriptClient::spawn(lib, version, &broker);
            let ack = big.connect_ok(json!({ "client_id": unique_client_id("big") }));
            if version.is_v5() {
                assert_eq!(ack.props["maximum_packet_size"], limit, "{what}: CONNACK Maximum Packet Size");
            }
            // The payload alone is about twice the limit. Not awaited: the broker is
            // expected to drop the connection instead of acknowledging.
            let payload = vec![0x5a; 2 * limit - 48];
            big.publish_with(json!({ "topic": topic, "payload": to_hex(&payload), "qos": 1, "wait": false }));
            let end = big.expect_one_of(&["server_disconnect", "connection_lost"], TIMEOUT);
            if end["event"] == "server_disconnect" {
                assert_eq!(end["reason_code"], 0x95, "{what}: DISCONNECT reason (0x95 packet too large)");
            }

            // The bystander is unaffected, and never saw the oversized message.
            let probe = format!("still fine after {what}");
            ScriptClient::connected(Lib::MqttJs, version, &broker, &unique_client_id("probe"))
                .publish(&topic, probe.as_bytes(), 1, false);
            let msg = bystander.recv(TIMEOUT);
            assert_eq!(msg.payload, probe.as_bytes(), "{what}: the bystander got something else first (size {})", msg.payload.len());
        }
    }
}

#[test]
fn connection_beyond_the_listener_limit_is_refused_and_the_others_keep_working() {
    let Some(broker) =
        Broker::start_with(&[Setting::new(MAX_CONNECTIONS, "3").or_external("GATEWAY_TEST_MAX_CONNECTIONS")])
    else {
        return;
    };
    let max: usize = broker.value(MAX_CONNECTIONS).parse().expect("a connection count");
    assert!((1..=50).contains(&max), "this test opens {max} connections; give it a small limit");

    let prefix = unique_topic("maxconn");
    let mut clients: Vec<ScriptClient> = (0..max)
        .map(|i| {
            let mut c = ScriptClient::connected(Lib::Paho, Version::V311, &broker, &unique_client_id("slot"));
            c.subscribe(&format!("{prefix}/{i}"), 1);
            c
        })
        .collect();

    for version in [Version::V311, Version::V5] {
        // Refused either at TCP level (closed at once) or with a CONNACK error.
        let mut extra = RawClient::open(&broker, version);
        extra.send(&interop_tests::raw::connect_packet(&ConnectOpts::new(version, &unique_client_id("extra"))));
        match extra.read_packet(TIMEOUT) {
            Received::Closed => {}
            Received::Packet(p) if p.connack_code().is_some_and(|c| c != 0) => {}
            other => panic!("{version:?}: connection {} of {max} allowed was not refused: {other:?}", max + 1),
        }
        // A reference client sees a refusal too.
        let mut late = ScriptClient::spawn(Lib::MqttJs, version, &broker);
        match late.connect(json!({ "client_id": unique_client_id("late") })) {
            ConnectOutcome::Connack(ack) if ack.reason_code == 0 => panic!("{version:?}: MQTT.js connected beyond the limit"),
            _ => {}
        }
    }

    // Everyone admitted still works.
    for (i, c) in clients.iter_mut().enumerate() {
        let topic = format!("{prefix}/{i}");
        c.publish(&topic, b"alive", 1, false);
        assert_eq!(c.recv(TIMEOUT).payload, b"alive", "client {i}");
    }

    // A freed slot can be taken again: the count follows the real connections.
    clients.pop().expect("at least one client").disconnect();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = ScriptClient::spawn(Lib::Paho, Version::V311, &broker);
        match again.connect(json!({ "client_id": unique_client_id("again") })) {
            ConnectOutcome::Connack(ack) if ack.reason_code == 0 => break,
            other if Instant::now() > deadline => panic!("a slot freed by a disconnect was not reusable: {other:?}"),
            // The broker may notice the disconnect a moment after the client left.
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
