//! Will messages: published when a connection dies without DISCONNECT (killed client,
//! closed socket, keep-alive expired), not after a normal DISCONNECT; MQTT 5 will delay.

use std::time::{Duration, Instant};

use serde_json::json;

use interop_tests::raw::{ConnectOpts, RawClient};
use interop_tests::{
    mosquitto_pub, to_hex, unique_client_id, unique_topic, Broker, Lib, MosquittoSub, Msg,
    ScriptClient, Version, QUIET, TIMEOUT,
};

/// A paho subscriber to `topic`, connected and subscribed at QoS 1.
fn watcher(broker: &Broker, topic: &str) -> ScriptClient {
    let mut w = ScriptClient::connected(Lib::Paho, Version::V5, broker, &unique_client_id("watch"));
    w.subscribe(topic, 1);
    w
}

/// Asserts that no will arrives on `will_topic`: a barrier published there after the
/// client is gone must come first, and nothing may follow it for a while (closing a
/// connection and publishing the barrier race inside the broker, hence the wait).
fn assert_no_will(broker: &Broker, watcher: &mut ScriptClient, will_topic: &str, what: &str) {
    let before = watcher.until_barrier(broker, will_topic);
    assert!(before.is_empty(), "{what}: will published: {before:?}");
    if let Some(late) = watcher.try_recv(QUIET) {
        panic!("{what}: will published: {late:?}");
    }
}

fn assert_is_will(msg: &Msg, topic: &str, payload: &[u8], what: &str) {
    assert_eq!(msg.topic, topic, "{what}: topic");
    assert_eq!(msg.payload, payload, "{what}: will payload");
}

#[test]
fn will_is_published_when_a_client_process_is_killed() {
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        let payload = b"\x00gone\xff".to_vec();
        for lib in Lib::ALL {
            let topic = unique_topic("will-kill");
            let mut w = watcher(&broker, &topic);
            let mut client = ScriptClient::spawn(lib, version, &broker);
            client.connect_ok(json!({
                "client_id": unique_client_id("dying"),
                "will": { "topic": topic, "payload": to_hex(&payload), "qos": 1 },
            }));
            client.kill();
            assert_is_will(
                &w.recv(TIMEOUT),
                &topic,
                &payload,
                &format!("{lib:?} {version:?}"),
            );
        }

        let topic = unique_topic("will-kill-mosq");
        let mut w = watcher(&broker, &topic);
        let mut sub = MosquittoSub::start(
            &broker,
            version,
            &[&unique_topic("unused")],
            0,
            &[
                "--will-topic",
                &topic,
                "--will-payload",
                "mosquitto gone",
                "--will-qos",
                "1",
            ],
        );
        sub.kill();
        assert_is_will(
            &w.recv(TIMEOUT),
            &topic,
            b"mosquitto gone",
            &format!("mosquitto_sub {version:?}"),
        );
    }
}

#[test]
fn will_is_published_when_the_socket_closes_without_disconnect() {
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        let topic = unique_topic("will-close");
        let mut w = watcher(&broker, &topic);
        let mut opts = ConnectOpts::new(version, &unique_client_id("raw"));
        opts.will = Some((topic.clone(), b"socket closed".to_vec(), 1));
        let (raw, code) = RawClient::connect(&broker, &opts);
        assert_eq!(code, 0, "CONNACK");
        raw.drop_connection();
        assert_is_will(
            &w.recv(TIMEOUT),
            &topic,
            b"socket closed",
            &format!("raw {version:?}"),
        );
    }
}

#[test]
fn will_is_discarded_after_a_normal_disconnect() {
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        for lib in Lib::ALL {
            let topic = unique_topic("will-normal");
            let mut w = watcher(&broker, &topic);
            let mut client = ScriptClient::spawn(lib, version, &broker);
            client.connect_ok(json!({
                "client_id": unique_client_id("polite"),
                "will": { "topic": topic, "payload": to_hex(b"must not appear"), "qos": 1 },
            }));
            client.disconnect();
            assert_no_will(&broker, &mut w, &topic, &format!("{lib:?} {version:?}"));
        }
        // mosquitto_pub connects, publishes and sends DISCONNECT.
        let topic = unique_topic("will-normal-mosq");
        let mut w = watcher(&broker, &topic);
        let other = unique_topic("unused");
        mosquitto_pub(
            &broker,
            version,
            &other,
            b"x",
            1,
            false,
            &["--will-topic", &topic, "--will-payload", "must not appear"],
        );
        assert_no_will(
            &broker,
            &mut w,
            &topic,
            &format!("mosquitto_pub {version:?}"),
        );
    }
}

/// The will delay used below; long enough to tell "after the delay" from "at once".
const WILL_DELAY: u64 = 2;

fn connect_with_delayed_will(
    lib: Lib,
    broker: &Broker,
    client_id: &str,
    topic: &str,
    session_expiry: u64,
) -> ScriptClient {
    let mut client = ScriptClient::spawn(lib, Version::V5, broker);
    client.connect_ok(json!({
        "client_id": client_id,
        "clean": false,
        "props": { "session_expiry_interval": session_expiry },
        "will": {
            "topic": topic,
            "payload": to_hex(b"delayed will"),
            "qos": 1,
            "props": { "will_delay_interval": WILL_DELAY },
        },
    }));
    client
}

#[test]
fn v5_will_is_published_only_after_the_will_delay() {
    let broker = Broker::start();
    for lib in Lib::ALL {
        let topic = unique_topic("will-delay");
        let mut w = watcher(&broker, &topic);
        let mut client =
            connect_with_delayed_will(lib, &broker, &unique_client_id("delay"), &topic, 60);
        client.kill();
        let killed = Instant::now();
        let msg = w.recv(Duration::from_secs(WILL_DELAY) + TIMEOUT);
        let waited = killed.elapsed();
        assert_is_will(&msg, &topic, b"delayed will", &format!("{lib:?}"));
        // A little slack below the delay: brokers count it in whole seconds.
        assert!(
            waited >= Duration::from_millis(WILL_DELAY * 1000 - 500),
            "{lib:?}: will published {waited:?} after the connection died, before its {WILL_DELAY} s delay"
        );
    }
}

#[test]
fn v5_will_is_published_when_the_session_expires_before_the_will_delay() {
    let broker = Broker::start();
    for lib in Lib::ALL {
        let topic = unique_topic("will-expiry");
        let mut w = watcher(&broker, &topic);
        let mut client = ScriptClient::spawn(lib, Version::V5, &broker);
        client.connect_ok(json!({
            "client_id": unique_client_id("expiry"),
            "props": { "session_expiry_interval": 1 },
            "will": {
                "topic": topic,
                "payload": to_hex(b"session over"),
                "qos": 1,
                "props": { "will_delay_interval": 300 },
            },
        }));
        client.kill();
        // The session ends after 1 s, long before the 300 s will delay.
        assert_is_will(
            &w.recv(TIMEOUT),
            &topic,
            b"session over",
            &format!("{lib:?}"),
        );
    }
}

#[test]
fn v5_reconnecting_within_the_will_delay_cancels_the_will() {
    let broker = Broker::start();
    for lib in Lib::ALL {
        let topic = unique_topic("will-cancel");
        let client_id = unique_client_id("back");
        let mut w = watcher(&broker, &topic);
        let mut first = connect_with_delayed_will(lib, &broker, &client_id, &topic, 60);
        first.kill();
        let killed = Instant::now();
        let mut second = ScriptClient::spawn(lib, Version::V5, &broker);
        let ack = second.connect_ok(json!({
            "client_id": client_id,
            "clean": false,
            "props": { "session_expiry_interval": 60 },
        }));
        assert!(
            ack.session_present,
            "{lib:?}: the session should have been resumed"
        );
        assert!(
            killed.elapsed() < Duration::from_secs(WILL_DELAY),
            "{lib:?}: reconnect too slow for this test"
        );
        // Wait out the delay, then prove nothing came.
        if let Some(msg) = w.try_recv(Duration::from_secs(WILL_DELAY + 1)) {
            panic!(
                "{lib:?}: will published although the client came back within the delay: {msg:?}"
            );
        }
        assert_no_will(&broker, &mut w, &topic, &format!("{lib:?}"));
        second.disconnect();
    }
}

/// The latest a silent keep-alive-1 client may still be connected: 1.5 s by the spec
/// plus scheduling slack. An external broker with a coarser timer (Mosquitto 2.0
/// checks keep-alives every few seconds) can be given its own bound in seconds with
/// GATEWAY_TEST_KEEPALIVE_MAX_SECS.
fn keep_alive_deadline(broker: &Broker) -> Duration {
    let default = Duration::from_millis(2600);
    if broker.is_gateway() {
        return default;
    }
    match std::env::var("GATEWAY_TEST_KEEPALIVE_MAX_SECS") {
        Ok(text) => Duration::from_secs_f64(
            text.parse()
                .expect("GATEWAY_TEST_KEEPALIVE_MAX_SECS is a number"),
        ),
        Err(_) => default,
    }
}

#[test]
fn silent_client_is_disconnected_after_one_and_a_half_keep_alives_and_its_will_published() {
    let broker = Broker::start();
    let latest = keep_alive_deadline(&broker);
    for version in [Version::V311, Version::V5] {
        let topic = unique_topic("keepalive");
        let mut w = watcher(&broker, &topic);
        let mut opts = ConnectOpts::new(version, &unique_client_id("silent"));
        opts.keep_alive = 1;
        opts.will = Some((topic.clone(), b"timed out".to_vec(), 1));
        let (mut raw, code) = RawClient::connect(&broker, &opts);
        assert_eq!(code, 0, "CONNACK");
        let connected = Instant::now();
        // The client now says nothing at all; MQTT-3.1.2-24 gives it 1.5 x keep-alive.
        let packets = raw.read_until_closed(latest + Duration::from_secs(1));
        let closed_after = connected.elapsed();
        assert!(
            packets.is_some(),
            "{version:?}: connection still open {closed_after:?} after a 1 s keep-alive"
        );
        assert!(
            closed_after >= Duration::from_millis(1000) && closed_after <= latest,
            "{version:?}: closed {closed_after:?} after CONNACK; expected about 1.5 s (1 s to {latest:?})"
        );
        assert_is_will(
            &w.recv(TIMEOUT),
            &topic,
            b"timed out",
            &format!("keep-alive {version:?}"),
        );
    }
}
