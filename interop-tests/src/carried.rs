//! One scenario for every listener kind: a client library reaching the gateway through a
//! carrier (WebSocket, TLS, WebSocket over TLS) exchanges messages with mosquitto clients
//! on plain TCP, both ways, at every QoS, with large payloads and retained messages.

use crate::mosquitto::{mosquitto_pub, MosquittoSub};
use crate::script::{Carrier, Lib, ScriptClient};
use crate::{sample_payloads, unique_client_id, unique_topic, Broker, Version, TIMEOUT};

/// Large enough to span many frames, TLS records and socket reads.
pub const LARGE_PAYLOAD: usize = 200 * 1024;

fn large_payload(seed: u8) -> Vec<u8> {
    (0..LARGE_PAYLOAD)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `lib` over `carrier` <-> mosquitto over TCP: QoS 0, 1 and 2 each way with the sample
/// payloads and a 200 KB one, then a retained message delivered on subscribe.
pub fn exchange_with_tcp_clients(broker: &Broker, lib: Lib, version: Version, carrier: &Carrier) {
    let what = format!("{lib:?} {version:?} via {carrier:?}");
    let prefix = unique_topic(&format!("carried-{lib:?}"));
    let mut client =
        ScriptClient::connected_via(lib, version, broker, carrier, &unique_client_id("carried"));
    assert_eq!(
        client.subscribe(&format!("{prefix}/to-client/#"), 2),
        2,
        "{what}: SUBACK"
    );
    let mut tcp_sub = MosquittoSub::start(
        broker,
        Version::V311,
        &[&format!("{prefix}/from-client/#")],
        2,
        &[],
    );

    // Carried client -> TCP subscriber.
    let mut sent = Vec::new();
    for qos in 0..3u8 {
        for (i, payload) in sample_payloads().into_iter().enumerate() {
            sent.push((format!("{prefix}/from-client/q{qos}/{i}"), payload, qos));
        }
        sent.push((
            format!("{prefix}/from-client/q{qos}/large"),
            large_payload(qos),
            qos,
        ));
    }
    for (topic, payload, qos) in &sent {
        client.publish(topic, payload, *qos, false);
    }
    let mut got: Vec<(String, Vec<u8>, u8)> = (0..sent.len())
        .map(|_| {
            let msg = tcp_sub.recv(TIMEOUT);
            (msg.topic, msg.payload, msg.qos)
        })
        .collect();
    got.sort();
    sent.sort();
    assert!(
        got == sent,
        "{what}: the TCP subscriber got other messages than were published"
    );

    // TCP publisher -> carried client.
    let mut sent = Vec::new();
    for qos in 0..3u8 {
        for (i, payload) in sample_payloads().into_iter().enumerate() {
            sent.push((format!("{prefix}/to-client/q{qos}/{i}"), payload, qos));
        }
        sent.push((
            format!("{prefix}/to-client/q{qos}/large"),
            large_payload(100 + qos),
            qos,
        ));
    }
    for (topic, payload, qos) in &sent {
        mosquitto_pub(broker, Version::V311, topic, payload, *qos, false, &[]);
    }
    let mut got: Vec<(String, Vec<u8>, u8)> = client
        .recv_n(sent.len(), TIMEOUT * 2)
        .into_iter()
        .map(|msg| (msg.topic, msg.payload, msg.qos))
        .collect();
    got.sort();
    sent.sort();
    assert!(
        got == sent,
        "{what}: the carried client got other messages than were published"
    );

    // A retained message reaches a carried client that subscribes later.
    let retained_topic = format!("{prefix}/retained");
    mosquitto_pub(
        broker,
        Version::V311,
        &retained_topic,
        b"kept",
        1,
        true,
        &[],
    );
    let mut late =
        ScriptClient::connected_via(lib, version, broker, carrier, &unique_client_id("late"));
    late.subscribe(&retained_topic, 1);
    let msg = late.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice(), msg.retain),
        (retained_topic.as_str(), &b"kept"[..], true),
        "{what}: retained message on subscribe"
    );
    mosquitto_pub(broker, Version::V311, &retained_topic, b"", 1, true, &[]);
    late.disconnect();
    client.disconnect();
}
