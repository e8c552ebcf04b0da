//! One bad or slow connection must not hurt the others: malformed packets close only
//! their own connection, and a subscriber that stops reading does not slow or starve
//! the other subscribers of the same topic. A connection closed for what it did is told
//! why, and the telling survives the close.

use std::collections::BTreeSet;
use std::time::Duration;

use interop_tests::raw::{self, ConnectOpts, End, RawClient};
use interop_tests::{
    unique_client_id, unique_topic, Broker, Lib, Msg, ScriptClient, Version, TIMEOUT,
};

/// Checks that `msgs` are the payloads "0".."count-1" of publish_many, each once.
fn assert_complete_stream(msgs: &[Msg], count: usize, what: &str) {
    let indexes: BTreeSet<usize> = msgs
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.payload);
            text.trim_end_matches('.')
                .parse()
                .unwrap_or_else(|_| panic!("{what}: unexpected payload {text:?}"))
        })
        .collect();
    assert_eq!(msgs.len(), count, "{what}: message count");
    assert_eq!(
        indexes,
        (0..count).collect(),
        "{what}: every message exactly once"
    );
}

/// (what, the bytes sent after a valid CONNECT, reason codes acceptable in an MQTT 5
/// DISCONNECT)
fn garbage() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    vec![
        // Packet type 0 is reserved (forbidden). Malformed Packet or Protocol Error
        // both describe it; Mosquitto says 0x82.
        ("reserved packet type 0", vec![0x00, 0x00], vec![0x81, 0x82]),
        // MQTT-3.3.1-4: both QoS bits set is a Malformed Packet.
        (
            "PUBLISH with QoS 3",
            raw::packet(0x36, &[0x00, 0x01, b'a', 0x00, 0x01, 0x00, b'x']),
            vec![0x81],
        ),
        // A remaining length whose fifth byte still has the continuation bit.
        (
            "remaining length over 4 bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            vec![0x81],
        ),
    ]
}

#[test]
fn malformed_packet_closes_only_its_connection_while_a_qos1_stream_flows_without_loss() {
    let broker = Broker::start();
    let topic = unique_topic("malformed");
    let count = 1000;
    let mut sub =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("steady"));
    assert_eq!(sub.subscribe(&topic, 1), 1);
    let mut publisher =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("stream"));
    publisher.start_publish_many(&topic, count, 1, 16);

    // While the stream flows, connections misbehave.
    for version in [Version::V311, Version::V5] {
        for (what, bytes, reasons) in garbage() {
            let what = format!("{version:?}, {what}");
            let (mut bad, code) = RawClient::connect(
                &broker,
                &ConnectOpts::new(version, &unique_client_id("bad")),
            );
            assert_eq!(code, 0, "{what}: CONNACK");
            bad.send(&bytes);
            let Some(packets) = bad.read_until_closed(TIMEOUT) else {
                panic!("{what}: connection still open {TIMEOUT:?} after a malformed packet");
            };
            if version.is_v5() {
                // MQTT 5 4.13: the server SHOULD send a DISCONNECT with the reason, then
                // MUST close; the gateway promises the DISCONNECT.
                let codes: Vec<_> = packets.iter().filter_map(|p| p.disconnect_code()).collect();
                assert!(
                    packets.len() == codes.len() && codes.iter().all(|c| reasons.contains(c)),
                    "{what}: only a DISCONNECT with one of {reasons:02x?} may come before the close, got {packets:?}"
                );
                broker.gateway_promise(
                    codes.len() == 1,
                    &format!("{what}: DISCONNECT with one of {reasons:02x?} before the close"),
                );
            } else {
                assert!(
                    packets.is_empty(),
                    "{what}: MQTT 3.1.1 has no DISCONNECT from the server, got {packets:?}"
                );
            }
        }
    }

    publisher.finish_publish_many();
    let msgs = sub.recv_n(count, Duration::from_secs(30));
    assert_complete_stream(&msgs, count, "QoS 1 stream beside malformed connections");
}

#[test]
fn subscriber_that_never_reads_does_not_starve_another_subscriber_of_the_same_topic() {
    let broker = Broker::start();
    let topic = unique_topic("slow");
    // Stalled subscribers: they read their SUBACK, then nothing ever again. A small
    // receive buffer makes the broker meet the stall early instead of parking
    // megabytes in kernel buffers.
    let mut stalled = Vec::new();
    for (version, qos) in [(Version::V311, 0), (Version::V5, 1)] {
        let mut raw = RawClient::open_with_small_receive_buffer(&broker, version, 4096);
        assert_eq!(
            raw.handshake(&ConnectOpts::new(version, &unique_client_id("stalled"))),
            0
        );
        assert_eq!(raw.subscribe(1, &topic, qos), qos);
        stalled.push(raw);
    }
    let mut reader =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("reader"));
    assert_eq!(reader.subscribe(&topic, 1), 1);
    let mut publisher =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("busy"));

    // 1 KiB payloads: 2000 of them are far more than the stalled sockets can absorb.
    for (qos, count) in [(0u8, 2000usize), (1, 500)] {
        publisher.start_publish_many(&topic, count, qos, 1024);
        let msgs = reader.recv_n(count, Duration::from_secs(60));
        publisher.finish_publish_many();
        assert_complete_stream(
            &msgs,
            count,
            &format!("QoS {qos} stream beside stalled subscribers"),
        );
        assert!(
            msgs.iter().all(|m| m.qos == qos),
            "QoS {qos}: delivered at another QoS"
        );
    }
    drop(stalled);
}

/// Bytes the kernel may hold for one socket's sending side at most (`tcp_wmem`'s maximum).
fn max_socket_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[test]
fn exceeding_receive_maximum_is_told_with_0x93_and_a_clean_end_while_the_client_still_sends() {
    let broker = Broker::start();
    let own_topic = unique_topic("flood");
    let qos2_topic = unique_topic("receive-max");

    // A client that reads nothing until it has sent everything, behind a small receive
    // buffer, so that what the broker sends it piles up in the broker's socket.
    let mut client = RawClient::open_with_small_receive_buffer(&broker, Version::V5, 4096);
    let connack =
        client.handshake_connack(&ConnectOpts::new(Version::V5, &unique_client_id("rcvmax")));
    assert_eq!(connack.connack_code(), Some(0), "CONNACK {connack:?}");
    // Absent, Receive Maximum is 65,535 (MQTT 5 3.2.2.3.3).
    let receive_maximum = connack.connack_u16_property(0x21).unwrap_or(u16::MAX);
    if receive_maximum > 1000 {
        println!("not applicable: Receive Maximum {receive_maximum} is too large to exceed here");
        return;
    }
    assert_eq!(client.subscribe(1, &own_topic, 0), 0);

    // 1. Messages to itself, more than the broker's socket can hold towards a client that
    //    does not read: the broker's writes block, so its DISCONNECT waits behind them.
    let payload = vec![b'f'; 64 * 1024];
    let flood = 2 * max_socket_send_buffer() / payload.len() + 16;
    let mut sent = Vec::new();
    for _ in 0..flood {
        sent.extend(raw::publish_packet(Version::V5, &own_topic, 0, 0, &payload));
    }
    // 2. One QoS 2 PUBLISH more than Receive Maximum, back to back, no PUBREL.
    for id in 1..=receive_maximum + 1 {
        sent.extend(raw::publish_packet(Version::V5, &qos2_topic, 2, id, b"q2"));
    }
    // 3. Publishing on regardless, as a client that ignores Receive Maximum does: more than
    //    one read of the broker's takes (64 KiB), so some of it is surely left unread in
    //    the broker's socket when the connection closes.
    let late = vec![b'l'; 4 * 1024];
    for id in receive_maximum + 2..receive_maximum + 2 + 24 {
        sent.extend(raw::publish_packet(Version::V5, &qos2_topic, 2, id, &late));
    }
    client.send(&sent);

    let (packets, end) = client.read_until_end(TIMEOUT);
    let pubrecs = packets.iter().filter(|p| p.kind == raw::PUBREC).count();
    let disconnect = packets.iter().find_map(|p| p.disconnect_code());
    let summary = format!(
        "{} packets, {pubrecs} PUBRECs, DISCONNECT {disconnect:02x?}, last {:?}, then {end:?}",
        packets.len(),
        packets.last().map(|p| p.kind),
    );
    assert!(
        !matches!(end, End::Timeout),
        "connection still open {TIMEOUT:?} after exceeding Receive Maximum: {summary}"
    );
    broker.gateway_promise(
        disconnect == Some(0x93) && packets.last().and_then(|p| p.disconnect_code()) == Some(0x93),
        &format!("DISCONNECT 0x93 (Receive Maximum exceeded), the last packet: {summary}"),
    );
    broker.gateway_promise(
        pubrecs == usize::from(receive_maximum),
        &format!("a PUBREC for each of the first {receive_maximum} QoS 2 messages: {summary}"),
    );
    broker.gateway_promise(
        matches!(end, End::Eof),
        &format!("the end of the stream after the DISCONNECT, not a reset: {summary}"),
    );
}
