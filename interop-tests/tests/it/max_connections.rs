//! The per-listener connection limit.
//!
//! Against an external broker these run only when told its limit in
//! GATEWAY_TEST_MAX_CONNECTIONS, and they need that broker to themselves: run this
//! file alone (`--test max_connections`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use interop_tests::raw::{connect_packet, ConnectOpts, RawClient, Received};
use interop_tests::script::ConnectOutcome;
use interop_tests::{
    unique_client_id, unique_topic, Broker, Lib, ScriptClient, Setting, Version, TIMEOUT,
};

const MAX_CONNECTIONS: &str = "GATEWAY_LISTENERS__TCP__DEFAULT__MAX_CONNECTIONS";

/// Each test here fills the listener; against one shared external broker they must
/// take turns. (Each started gateway is a listener of its own.)
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn limited_broker() -> Option<(Broker, usize)> {
    let broker = Broker::start_with(&[
        Setting::new(MAX_CONNECTIONS, "3").or_external("GATEWAY_TEST_MAX_CONNECTIONS")
    ])?;
    let max: usize = broker
        .value(MAX_CONNECTIONS)
        .parse()
        .expect("a connection count");
    assert!(
        (1..=50).contains(&max),
        "these tests open {max} connections; give them a small limit"
    );
    Some((broker, max))
}

/// Fills every slot with a subscribed paho client.
fn fill(broker: &Broker, max: usize, prefix: &str) -> Vec<ScriptClient> {
    (0..max)
        .map(|i| {
            let mut c = ScriptClient::spawn(Lib::Paho, Version::V311, broker);
            match c.connect(json!({ "client_id": unique_client_id("slot") })) {
                ConnectOutcome::Connack(ack) if ack.reason_code == 0 => {}
                other => panic!(
                    "connection {} of the {max} allowed was refused: {other:?}",
                    i + 1
                ),
            }
            c.subscribe(&format!("{prefix}/{i}"), 1);
            c
        })
        .collect()
}

/// Asserts that one more connection is refused, at TCP level (closed at once) or by
/// a CONNACK error, for a raw socket and for MQTT.js.
fn assert_full(broker: &Broker, max: usize, version: Version, when: &str) {
    let mut extra = RawClient::open(broker, version);
    extra.send(&connect_packet(&ConnectOpts::new(
        version,
        &unique_client_id("extra"),
    )));
    match extra.read_packet(TIMEOUT) {
        Received::Closed => {}
        Received::Packet(p) if p.connack_code().is_some_and(|c| c != 0) => {}
        other => panic!(
            "{when}, {version:?}: connection {} with {max} allowed was not refused: {other:?}",
            max + 1
        ),
    }
    let mut late = ScriptClient::spawn(Lib::MqttJs, version, broker);
    if let ConnectOutcome::Connack(ack) =
        late.connect(json!({ "client_id": unique_client_id("late") }))
    {
        assert_ne!(
            ack.reason_code, 0,
            "{when}, {version:?}: MQTT.js connected beyond the limit of {max}"
        );
    }
}

fn assert_all_work(clients: &mut [ScriptClient], prefix: &str) {
    for (i, c) in clients.iter_mut().enumerate() {
        let topic = format!("{prefix}/{i}");
        c.publish(&topic, b"alive", 1, false);
        assert_eq!(c.recv(TIMEOUT).payload, b"alive", "admitted client {i}");
    }
}

#[test]
fn connection_beyond_the_listener_limit_is_refused_and_the_others_keep_working() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((broker, max)) = limited_broker() else {
        return;
    };
    let prefix = unique_topic("maxconn");
    let mut clients = fill(&broker, max, &prefix);
    for version in [Version::V311, Version::V5] {
        assert_full(&broker, max, version, "listener full");
    }
    assert_all_work(&mut clients, &prefix);
}

/// The count must follow the real sockets: refused connections and connections
/// closed before their CONNECT (as a health check or port scan does) must neither
/// leak a slot nor give one away, and a client leaving frees its slot.
#[test]
fn connection_count_follows_real_connections_after_refusals_aborted_handshakes_and_departures() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((broker, max)) = limited_broker() else {
        return;
    };
    let prefix = unique_topic("maxconn-count");

    // Connections that end before CONNECT, while there is room.
    for _ in 0..max + 2 {
        RawClient::open(&broker, Version::V311).drop_connection();
    }
    let mut clients = fill(&broker, max, &prefix);
    // Refusals, and more aborted handshakes while full.
    for round in 0..2 {
        assert_full(&broker, max, Version::V5, &format!("full, round {round}"));
        for _ in 0..max + 2 {
            RawClient::open(&broker, Version::V311).drop_connection();
        }
    }
    assert_full(
        &broker,
        max,
        Version::V311,
        "full after refusals and aborted handshakes",
    );

    // A client leaving frees exactly one slot.
    clients.pop().expect("at least one client").disconnect();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = ScriptClient::spawn(Lib::Paho, Version::V311, &broker);
        match again.connect(json!({ "client_id": unique_client_id("again") })) {
            ConnectOutcome::Connack(ack) if ack.reason_code == 0 => {
                again.subscribe(&format!("{prefix}/{}", max - 1), 1);
                clients.push(again);
                break;
            }
            other if Instant::now() > deadline => {
                panic!("a slot freed by a disconnect was not reusable: {other:?}")
            }
            // The broker may notice the departure a moment after the client left.
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    assert_full(
        &broker,
        max,
        Version::V311,
        "full again after the freed slot was taken",
    );
    assert_all_work(&mut clients, &prefix);
}
