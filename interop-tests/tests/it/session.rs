//! Sessions that outlive their connection, and session takeover by client id.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, Lib, MosquittoSub, ScriptClient,
    Version, TIMEOUT,
};

/// CONNECT fields for a session that survives disconnection: clean_session=0 in 3.1.1,
/// clean start=0 plus a session expiry in 5.
fn persistent(client_id: &str, version: Version) -> Value {
    let mut opts = json!({ "client_id": client_id, "clean": false });
    if version.is_v5() {
        opts["props"] = json!({ "session_expiry_interval": 300 });
    }
    opts
}

/// The messages published while the subscriber is away: (topic leaf, payload, QoS).
const OFFLINE: [(&str, &[u8], u8); 2] = [
    ("q1", b"\x01 while away at QoS 1", 1),
    ("q2", b"\x02 while away at QoS 2", 2),
];

fn publish_offline(broker: &Broker, prefix: &str) {
    for (leaf, payload, qos) in OFFLINE {
        mosquitto_pub(
            broker,
            Version::V311,
            &format!("{prefix}/{leaf}"),
            payload,
            qos,
            false,
            &[],
        );
    }
}

fn expected_offline(prefix: &str) -> BTreeMap<String, (Vec<u8>, u8)> {
    OFFLINE
        .iter()
        .map(|(leaf, payload, qos)| (format!("{prefix}/{leaf}"), (payload.to_vec(), *qos)))
        .collect()
}

#[test]
fn persistent_session_gets_qos1_and_qos2_messages_sent_while_offline_and_a_clean_session_gets_none()
{
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        for lib in Lib::ALL {
            let what = format!("{lib:?} {version:?}");
            let prefix = unique_topic("session");
            let client_id = unique_client_id("persist");

            let mut sub = ScriptClient::spawn(lib, version, &broker);
            sub.connect_ok(persistent(&client_id, version));
            assert_eq!(sub.subscribe(&format!("{prefix}/#"), 2), 2);
            sub.disconnect();
            drop(sub);

            publish_offline(&broker, &prefix);

            let mut back = ScriptClient::spawn(lib, version, &broker);
            let ack = back.connect_ok(persistent(&client_id, version));
            assert!(
                ack.session_present,
                "{what}: CONNACK session present = 0 on resume"
            );
            let got: BTreeMap<_, _> = back
                .recv_n(OFFLINE.len(), TIMEOUT)
                .into_iter()
                .map(|m| (m.topic, (m.payload, m.qos)))
                .collect();
            assert_eq!(
                got,
                expected_offline(&prefix),
                "{what}: messages queued while offline"
            );
            back.disconnect();
            drop(back);

            // Something is queued again; a clean session must neither resume nor get it.
            publish_offline(&broker, &prefix);
            let mut fresh = ScriptClient::spawn(lib, version, &broker);
            let ack = fresh.connect_ok(json!({ "client_id": client_id, "clean": true }));
            assert!(
                !ack.session_present,
                "{what}: clean session reported session present"
            );
            let barrier = format!("{prefix}/barrier");
            fresh.subscribe(&barrier, 2);
            let leaked = fresh.until_barrier(&broker, &barrier);
            assert!(
                leaked.is_empty(),
                "{what}: clean session received the old session's messages: {leaked:?}"
            );
            fresh.disconnect();
        }
    }
}

#[test]
fn mosquitto_sub_persistent_session_gets_messages_sent_while_offline() {
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        let prefix = unique_topic("session-mosq");
        let client_id = unique_client_id("mosqsub");
        let filter = format!("{prefix}/#");
        // -c: clean session off; in MQTT 5 mosquitto_sub then also sends a session
        // expiry (-x) so the session outlives the connection.
        let args: Vec<&str> = if version.is_v5() {
            vec!["-c", "-i", &client_id, "-x", "300"]
        } else {
            vec!["-c", "-i", &client_id]
        };
        let mut sub = MosquittoSub::start(&broker, version, &[&filter], 2, &args);
        sub.kill();
        drop(sub);

        publish_offline(&broker, &prefix);

        let mut back = MosquittoSub::start(&broker, version, &[&filter], 2, &args);
        let mut got = BTreeMap::new();
        for _ in 0..OFFLINE.len() {
            let m = back.recv(TIMEOUT);
            got.insert(m.topic, (m.payload, m.qos));
        }
        assert_eq!(
            got,
            expected_offline(&prefix),
            "mosquitto_sub {version:?}: messages queued while offline"
        );
        // Leave no session behind on a shared broker.
        back.kill();
        let mut cleaner = ScriptClient::spawn(Lib::Paho, version, &broker);
        cleaner.connect_ok(json!({ "client_id": client_id, "clean": true }));
        cleaner.disconnect();
    }
}

/// Connects `first` and then `second` with the same client id, and returns what the
/// first connection saw end it; checks that the second connection works.
fn take_over(
    broker: &Broker,
    version: Version,
    first_lib: Lib,
    second_lib: Lib,
) -> serde_json::Value {
    let what = format!("{first_lib:?} then {second_lib:?}, {version:?}");
    let client_id = unique_client_id("twin");
    let topic = unique_topic("takeover");
    let mut first = ScriptClient::spawn(first_lib, version, broker);
    first.connect_ok(json!({ "client_id": client_id }));
    let mut second = ScriptClient::spawn(second_lib, version, broker);
    second.connect_ok(json!({ "client_id": client_id }));

    let end = first.expect_one_of(&["server_disconnect", "connection_lost"], TIMEOUT);
    // After a DISCONNECT the connection must be closed too.
    if end["event"] == "server_disconnect" {
        first.expect_event("connection_lost", TIMEOUT);
    }

    // The second connection is fully usable.
    assert_eq!(second.subscribe(&topic, 1), 1, "{what}");
    second.publish(&topic, b"still here", 1, false);
    let msg = second.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice()),
        (topic.as_str(), &b"still here"[..]),
        "{what}"
    );
    second.disconnect();
    end
}

#[test]
fn second_connection_with_the_same_client_id_closes_the_first_and_works() {
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        for (first_lib, second_lib) in [(Lib::Paho, Lib::MqttJs), (Lib::MqttJs, Lib::Paho)] {
            take_over(&broker, version, first_lib, second_lib);
        }
    }
}

/// MQTT-3.1.4-3 and 4.13: the server tells the old connection why it is closed.
#[test]
fn v5_taken_over_connection_gets_disconnect_0x8e_session_taken_over() {
    let broker = Broker::start();
    for (first_lib, second_lib) in [(Lib::Paho, Lib::MqttJs), (Lib::MqttJs, Lib::Paho)] {
        let end = take_over(&broker, Version::V5, first_lib, second_lib);
        if end["event"] == "server_disconnect" {
            assert_eq!(
                end["reason_code"], 0x8E,
                "{first_lib:?}: DISCONNECT reason (0x8E session taken over)"
            );
        }
        // The spec's MUST is the close (checked in take_over); the DISCONNECT that
        // says why is a SHOULD (4.13) that the gateway promises.
        broker.gateway_promise(
            end["event"] == "server_disconnect",
            &format!(
                "{first_lib:?}: the taken-over connection gets DISCONNECT 0x8E before the close"
            ),
        );
    }
}
