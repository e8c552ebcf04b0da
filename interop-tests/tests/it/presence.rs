//! Presence events as EMQX publishes them, read by mosquitto_sub: clients of every
//! protocol, each on its reference client, seen coming and going on
//! `$SYS/brokers/{node}/clients/{clientid}/...` (MQTT) and
//! `$SYS/brokers/{node}/gateway/{gateway}/clients/{clientid}/...` (the others), with
//! EMQX's JSON fields; and a client id that would break its topic kept to its own level.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::time::Instant;

use interop_tests::lwm2m::{device, expect_line};
use interop_tests::{
    coap_client, mosquitto_pub, unique_client_id, Broker, MosquittoSub, Setting, SnClient, StompPy,
    Version, QUIET, TIMEOUT,
};
use serde_json::{json, Value};

const NODE: &str = "interop@127.0.0.1";

/// Every presence event of every client, MQTT and gateways alike.
fn watch(broker: &Broker) -> MosquittoSub {
    MosquittoSub::start(
        broker,
        Version::V5,
        &[
            "$SYS/brokers/+/clients/+/+",
            "$SYS/brokers/+/gateway/+/clients/+/+",
        ],
        0,
        &[],
    )
}

/// An MQTT client that connects as `id`, publishes once and says goodbye: mosquitto_pub.
fn mqtt_visit(broker: &Broker, id: &str) {
    mosquitto_pub(
        broker,
        Version::V5,
        "presence/t",
        b"x",
        0,
        false,
        &["-i", id],
    );
}

/// An event as seen: the topic below `$SYS/brokers/{NODE}/`, and its JSON payload.
#[derive(Debug)]
struct Event {
    topic: String,
    payload: Value,
}

impl Event {
    fn name(&self) -> &str {
        self.topic.rsplit('/').next().unwrap_or_default()
    }

    fn reason(&self) -> &str {
        self.payload["reason"].as_str().unwrap_or("")
    }
}

/// The next `count` events, each about `client_id` under `scope` (`clients` or
/// `gateway/{name}/clients`).
fn events(sub: &mut MosquittoSub, scope: &str, client_id: &str, count: usize) -> Vec<Event> {
    events_at(sub, scope, client_id, client_id, count)
}

/// [`events`] of a client whose id is written `level` in its topics.
fn events_at(
    sub: &mut MosquittoSub,
    scope: &str,
    level: &str,
    client_id: &str,
    count: usize,
) -> Vec<Event> {
    let prefix = format!("$SYS/brokers/{NODE}/{scope}/{level}/");
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = sub.try_recv(left) else {
            panic!("{count} events of {client_id} within {TIMEOUT:?}, got {seen:?}");
        };
        let payload: Value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                msg.topic,
                String::from_utf8_lossy(&msg.payload)
            )
        });
        assert!(
            !msg.retain,
            "{}: presence events are not retained",
            msg.topic
        );
        assert!(
            msg.topic.starts_with(&prefix),
            "{}: an event of another client or scope than {prefix}",
            msg.topic
        );
        assert_eq!(payload["clientid"], client_id, "{}", msg.topic);
        seen.push(Event {
            topic: msg.topic[format!("$SYS/brokers/{NODE}/").len()..].to_owned(),
            payload,
        });
    }
    seen
}

fn names(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            format!("{} {}", event.name(), event.reason())
                .trim()
                .to_owned()
        })
        .collect()
}

/// What every connected event carries, checked for one protocol.
fn assert_connected(event: &Event, protocol: &str, proto_name: &str, proto_ver: Value) {
    assert_eq!(event.name(), "connected", "{event:?}");
    let payload = &event.payload;
    assert_eq!(payload["protocol"], protocol, "{event:?}");
    assert_eq!(payload["proto_name"], proto_name, "{event:?}");
    assert_eq!(payload["proto_ver"], proto_ver, "{event:?}");
    assert_eq!(payload["ipaddress"], "127.0.0.1", "{event:?}");
    for field in ["keepalive", "expiry_interval", "connected_at", "ts"] {
        assert!(payload[field].is_u64(), "{field} in {event:?}");
    }
    assert!(payload["clean_start"].is_boolean(), "{event:?}");
}

fn assert_disconnected(event: &Event, reason: &str) {
    assert_eq!(event.name(), "disconnected", "{event:?}");
    assert_eq!(event.reason(), reason, "{event:?}");
    let payload = &event.payload;
    assert!(
        payload["disconnected_at"].as_u64() >= payload["connected_at"].as_u64(),
        "{event:?}"
    );
}

#[test]
fn clients_of_every_protocol_are_seen_coming_and_going() {
    let Some(broker) = Broker::start_gateway_only(
        "the gateway's presence events",
        &[
            Setting::new("GATEWAY_NODE__NAME", NODE),
            // A CoAP client is forgotten after this much silence: the test waits for it.
            Setting::new("GATEWAY_GATEWAY__COAP__HEARTBEAT", "1s"),
        ],
    ) else {
        return;
    };
    let mut sub = watch(&broker);

    // MQTT: mosquitto_pub connects, publishes and says goodbye.
    let id = unique_client_id("presence-mqtt");
    mqtt_visit(&broker, &id);
    let seen = events(&mut sub, "clients", &id, 2);
    assert_connected(&seen[0], "mqtt", "MQTT", json!(5));
    assert_disconnected(&seen[1], "normal");

    // CoAP: libcoap's coap-client publishes once, and is forgotten after the heartbeat.
    let id = unique_client_id("presence-coap");
    let (ok, _, stderr) = coap_client(
        &broker,
        &["-m", "post", "-e", "v"],
        &format!("/ps/presence/c?clientid={id}"),
    );
    assert!(ok, "coap-client: {stderr}");
    let seen = events(&mut sub, "gateway/coap/clients", &id, 2);
    assert_connected(&seen[0], "coap", "CoAP", json!("1"));
    assert_eq!(seen[0].payload["keepalive"], 1, "the heartbeat");
    assert_disconnected(&seen[1], "keepalive_timeout");

    // MQTT-SN: mqtt-sn-12 connects, sleeps, connects again from a new socket, leaves.
    let id = unique_client_id("presence-sn");
    let mut sn = SnClient::connected(&broker, &id, json!({ "keepalive": 20 }));
    let seen = events(&mut sub, "gateway/mqttsn/clients", &id, 1);
    assert_connected(&seen[0], "mqttsn", "MQTT-SN", json!("1.2"));
    assert_eq!(seen[0].payload["keepalive"], 20);
    sn.sleep(60);
    let seen = events(&mut sub, "gateway/mqttsn/clients", &id, 1);
    assert_eq!(names(&seen), ["asleep"]);
    assert_eq!(seen[0].payload["duration"], 60);
    sn.resume(&id);
    let seen = events(&mut sub, "gateway/mqttsn/clients", &id, 3);
    assert_eq!(
        names(&seen),
        ["awake", "disconnected takenover", "connected"]
    );
    sn.disconnect();
    let seen = events(&mut sub, "gateway/mqttsn/clients", &id, 1);
    assert_disconnected(&seen[0], "normal");

    // LwM2M: lwm2m-node-lib registers (connected) and de-registers (disconnected).
    let endpoint = unique_client_id("presence-ep");
    let mut lwm2m = device(&broker, &endpoint);
    expect_line(&mut lwm2m, "registered");
    let seen = events(&mut sub, "gateway/lwm2m/clients", &endpoint, 1);
    assert_connected(&seen[0], "lwm2m", "LwM2M", json!("1.0"));
    assert_eq!(
        seen[0].payload["keepalive"], 60,
        "the registration's lifetime"
    );
    lwm2m.send_line("deregister");
    expect_line(&mut lwm2m, "deregistered");
    let seen = events(&mut sub, "gateway/lwm2m/clients", &endpoint, 1);
    assert_disconnected(&seen[0], "normal");

    // STOMP: stomp.py connects with a client-id and disconnects.
    let id = unique_client_id("presence-stomp");
    let mut stomp = StompPy::spawn();
    stomp.connect_tcp(&broker, "1.2", json!({ "client_id": id }));
    stomp.expect("connected");
    let seen = events(&mut sub, "gateway/stomp/clients", &id, 1);
    assert_connected(&seen[0], "stomp", "STOMP", json!("1.2"));
    stomp.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    let seen = events(&mut sub, "gateway/stomp/clients", &id, 1);
    assert_disconnected(&seen[0], "normal");
}

#[test]
fn a_client_id_that_would_break_its_topic_keeps_to_a_level_of_its_own() {
    let Some(broker) = Broker::start_gateway_only(
        "the gateway's presence events",
        &[Setting::new("GATEWAY_NODE__NAME", NODE)],
    ) else {
        return;
    };
    let victim = unique_client_id("victim");
    let mut victims = MosquittoSub::start(
        &broker,
        Version::V5,
        &[&format!("$SYS/brokers/+/clients/{victim}/#")],
        0,
        &[],
    );
    let mut sub = watch(&broker);
    // Named to pass for the victim's events, or to publish a wildcard topic.
    for id in [
        format!("{victim}/connected"),
        "+".to_owned(),
        "#".to_owned(),
    ] {
        mqtt_visit(&broker, &id);
        let level = id
            .replace('%', "%25")
            .replace('/', "%2F")
            .replace('+', "%2B")
            .replace('#', "%23");
        // The payload names the client as it is.
        let seen = events_at(&mut sub, "clients", &level, &id, 2);
        assert_eq!(names(&seen), ["connected", "disconnected normal"]);
    }
    assert!(
        victims.try_recv(QUIET).is_none(),
        "nothing reached the victim's presence topics"
    );
}
