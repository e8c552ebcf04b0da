//! MQTT-SN 1.2 over real UDP: the mqtt-sn-12 client from PyPI on one side, mosquitto
//! clients on the MQTT side, the built gateway in between.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use interop_tests::{
    collect_until_barrier, mosquitto_pub, unique_client_id, unique_topic, Broker, MosquittoSub,
    Setting, SnClient, Version, QUIET, TIMEOUT,
};
use serde_json::json;

const PREDEFINED_ID: u16 = 7;

/// A gateway with one predefined topic id, `PREDEFINED_ID` -> `topic`.
fn broker_with_predefined(topic: &str) -> Option<Broker> {
    Broker::start_gateway_only(
        "a predefined topic id for a topic this test names",
        &[Setting::new(
            "GATEWAY_GATEWAY__MQTTSN__PREDEFINED",
            format!("[{{id={PREDEFINED_ID},topic=\"{topic}\"}}]"),
        )],
    )
}

#[test]
fn mqttsn_publishes_reach_mqtt_subscribers_at_every_qos() {
    let prefix = unique_topic("sn-up");
    let predefined = format!("{prefix}/predefined");
    let Some(broker) = broker_with_predefined(&predefined) else {
        return;
    };
    let mut sub = MosquittoSub::start(
        &broker,
        Version::V311,
        &[&format!("{prefix}/#"), "zz"],
        2,
        &[],
    );
    let mut sn = SnClient::connected(&broker, &unique_client_id("snpub"), json!({}));
    for qos in 0u8..3 {
        // A long name: the client REGISTERs it, then publishes with the topic id.
        let topic = format!("{prefix}/qos{qos}");
        let payload: Vec<u8> = (0u8..=255).rev().chain([qos]).collect();
        sn.publish(&topic, &payload, qos, false);
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic.as_str(), &msg.payload, msg.qos),
            (topic.as_str(), &payload, qos)
        );
    }
    // Predefined and short topic ids need no REGISTER.
    sn.publish_predefined(PREDEFINED_ID, b"by predefined id", 1);
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..]),
        (predefined.as_str(), &b"by predefined id"[..])
    );
    sn.publish("zz", b"by short name", 1, false);
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..]),
        ("zz", &b"by short name"[..])
    );
    // Retained from MQTT-SN, replayed to a later MQTT subscriber.
    let retained = format!("{prefix}/retained");
    sn.publish(&retained, b"kept", 1, true);
    let _ = sub.recv(TIMEOUT);
    let mut late = MosquittoSub::start(&broker, Version::V5, &[&retained], 1, &[]);
    let msg = late.recv(TIMEOUT);
    assert!(msg.retain);
    assert_eq!(msg.payload, b"kept");
    sn.disconnect();
}

#[test]
fn mqtt_publishes_reach_an_mqttsn_subscriber_through_register_at_every_qos() {
    let prefix = unique_topic("sn-down");
    let predefined = format!("{prefix}/predefined");
    let Some(broker) = broker_with_predefined(&predefined) else {
        return;
    };
    let mut sn = SnClient::connected(&broker, &unique_client_id("snsub"), json!({}));
    // A wildcard: no topic id in SUBACK; the gateway REGISTERs each topic before its first
    // PUBLISH, and the client names each message by what it registered.
    assert_eq!(sn.subscribe(&format!("{prefix}/w/#"), 2), None);
    // A plain name: its topic id comes in SUBACK.
    let plain = format!("{prefix}/plain");
    assert!(sn.subscribe(&plain, 1).is_some());
    sn.subscribe_predefined(PREDEFINED_ID, &predefined, 2);
    for qos in 0u8..3 {
        let topic = format!("{prefix}/w/q{qos}/long/topic/name");
        let payload = format!("to sn at qos {qos}");
        mosquitto_pub(
            &broker,
            Version::V311,
            &topic,
            payload.as_bytes(),
            qos,
            false,
            &[],
        );
        let msg = sn.recv();
        assert_eq!(msg.topic.as_deref(), Some(topic.as_str()));
        assert_eq!((msg.payload, msg.qos), (payload.into_bytes(), qos));
    }
    // The same topic again reuses its id: no second REGISTER, still named right.
    let again = format!("{prefix}/w/q1/long/topic/name");
    mosquitto_pub(&broker, Version::V5, &again, b"again", 1, false, &[]);
    let msg = sn.recv();
    assert_eq!(msg.topic.as_deref(), Some(again.as_str()));
    // Granted QoS caps the delivery.
    mosquitto_pub(&broker, Version::V311, &plain, b"plain", 2, false, &[]);
    let msg = sn.recv();
    assert_eq!((msg.topic.as_deref(), msg.qos), (Some(plain.as_str()), 1));
    mosquitto_pub(&broker, Version::V311, &predefined, b"pre", 2, false, &[]);
    let msg = sn.recv();
    assert_eq!(
        (msg.topic_id, msg.qos, &msg.payload[..]),
        (PREDEFINED_ID, 2, &b"pre"[..])
    );
    sn.disconnect();
}

#[test]
fn qos_minus_one_from_a_client_that_never_connected() {
    let prefix = unique_topic("sn-neg");
    let predefined = format!("{prefix}/predefined");
    let Some(broker) = broker_with_predefined(&predefined) else {
        return;
    };
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&predefined, "n1"], 1, &[]);
    let mut sn = SnClient::spawn(&broker);
    sn.publish_minus_one("predefined", PREDEFINED_ID, b"fire and forget");
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..], msg.qos),
        (predefined.as_str(), &b"fire and forget"[..], 0)
    );
    sn.publish_minus_one("short", u16::from_be_bytes(*b"n1"), b"short too");
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..]),
        ("n1", &b"short too"[..])
    );
}

#[test]
fn sleeping_client_gets_its_buffered_messages_when_it_wakes_on_a_new_port() {
    let broker = Broker::start();
    let prefix = unique_topic("sn-sleep");
    let mut sn = SnClient::connected(
        &broker,
        &unique_client_id("sleeper"),
        json!({ "clean": false }),
    );
    sn.subscribe(&format!("{prefix}/#"), 1);
    sn.sleep(60);
    for (i, qos) in [1u8, 0, 1].into_iter().enumerate() {
        mosquitto_pub(
            &broker,
            Version::V311,
            &format!("{prefix}/m{i}"),
            format!("while asleep {i}").as_bytes(),
            qos,
            false,
            &[],
        );
    }
    // Awake from another UDP port: every buffered message, then PINGRESP.
    let messages = sn.wake();
    let got: Vec<(Option<String>, Vec<u8>)> =
        messages.into_iter().map(|m| (m.topic, m.payload)).collect();
    let want: Vec<(Option<String>, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                Some(format!("{prefix}/m{i}")),
                format!("while asleep {i}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Back asleep: the next wake has nothing to replay.
    assert!(sn.wake().is_empty());
    sn.disconnect();
}

#[test]
fn will_is_published_when_the_client_is_lost_not_after_disconnect() {
    let prefix = unique_topic("sn-will");
    let broker = Broker::start();
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&format!("{prefix}/#")], 1, &[]);

    // A clean DISCONNECT deletes the will.
    let polite = format!("{prefix}/polite");
    let mut sn = SnClient::connected(
        &broker,
        &unique_client_id("polite"),
        json!({ "keepalive": 1, "will": { "topic": polite, "payload": "706f6c697465", "qos": 1 } }),
    );
    sn.disconnect();

    // A client that stops talking is lost after 1.5 times its keep-alive: its will goes out.
    let lost = format!("{prefix}/lost");
    let mut gone = SnClient::connected(
        &broker,
        &unique_client_id("lost"),
        json!({ "keepalive": 1, "will": { "topic": lost, "payload": "676f6e65", "qos": 1 } }),
    );
    gone.vanish();
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..]),
        (lost.as_str(), &b"gone"[..])
    );
    let before = collect_until_barrier(&broker, &format!("{prefix}/barrier"), |t| sub.recv(t));
    assert!(before.is_empty(), "unexpected: {before:?}");
    assert!(sub.try_recv(QUIET).is_none());
}

#[test]
fn searchgw_is_answered_and_advertise_is_sent_on_its_interval() {
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let Some(broker) = Broker::start_gateway_only(
        "a gateway configured to advertise to this test's socket",
        &[
            Setting::new("GATEWAY_GATEWAY__MQTTSN__BROADCAST", "true"),
            Setting::new(
                "GATEWAY_GATEWAY__MQTTSN__BROADCAST_ADDRESS",
                target.to_string(),
            ),
            Setting::new("GATEWAY_GATEWAY__MQTTSN__ADVERTISE_INTERVAL", "1s"),
            Setting::new("GATEWAY_GATEWAY__MQTTSN__GATEWAY_ID", "42"),
        ],
    ) else {
        return;
    };
    SnClient::spawn(&broker).search_gateway();
    listener.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..2 {
        let (len, _) = listener.recv_from(&mut buf).expect("an ADVERTISE");
        // Length 5, ADVERTISE, GwId 42, Duration 1 s (spec 5.4.1).
        assert_eq!(&buf[..len], &[0x05, 0x00, 42, 0x00, 0x01]);
    }
}

#[test]
fn a_forwarder_relays_clients_in_encapsulation_frames() {
    let broker = Broker::start();
    let prefix = unique_topic("sn-fwd");
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&format!("{prefix}/#")], 1, &[]);
    let forwarder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    forwarder.set_read_timeout(Some(TIMEOUT)).unwrap();
    let gateway = format!("{}:{}", broker.host, broker.mqttsn_port);
    let wrap = |node: u8, inner: &[u8]| -> Vec<u8> {
        let mut frame = vec![0x04, 0xFE, 0x00, node];
        frame.extend_from_slice(inner);
        frame
    };
    let recv = || {
        let mut buf = [0u8; 512];
        let (len, _) = forwarder
            .recv_from(&mut buf)
            .expect("an answer for the forwarder");
        buf[..len].to_vec()
    };
    // Two wireless nodes behind one forwarder address are two clients.
    for node in [1u8, 2] {
        let client_id = format!("node{node}-{}", &prefix[prefix.len() - 6..]);
        let mut connect = vec![6 + client_id.len() as u8, 0x04, 0x04, 0x01, 0x00, 0x3C];
        connect.extend_from_slice(client_id.as_bytes());
        forwarder.send_to(&wrap(node, &connect), &gateway).unwrap();
        assert_eq!(
            recv(),
            wrap(node, &[0x03, 0x05, 0x00]),
            "CONNACK to node {node}"
        );
        let topic = format!("{prefix}/node{node}");
        let mut register = vec![6 + topic.len() as u8, 0x0A, 0x00, 0x00, 0x00, 0x01];
        register.extend_from_slice(topic.as_bytes());
        forwarder.send_to(&wrap(node, &register), &gateway).unwrap();
        let regack = recv();
        assert_eq!(
            &regack[..6],
            &wrap(node, &[0x07, 0x0B])[..],
            "REGACK to node {node}"
        );
        let (id_hi, id_lo) = (regack[6], regack[7]);
        assert_eq!(&regack[8..], &[0x00, 0x01, 0x00]);
        let publish = [0x09, 0x0C, 0x20, id_hi, id_lo, 0x00, 0x02, b'h', b'i'];
        forwarder.send_to(&wrap(node, &publish), &gateway).unwrap();
        assert_eq!(
            recv(),
            wrap(node, &[0x07, 0x0D, id_hi, id_lo, 0x00, 0x02, 0x00])
        );
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic.as_str(), &msg.payload[..]),
            (topic.as_str(), &b"hi"[..])
        );
    }
}

#[test]
fn peers_beyond_the_listener_limit_are_not_served_and_the_others_are() {
    let Some(broker) = Broker::start_gateway_only(
        "max_connections = 1 on the MQTT-SN listener",
        &[Setting::new(
            "GATEWAY_GATEWAY__MQTTSN__LISTENERS__UDP__DEFAULT__MAX_CONNECTIONS",
            "1",
        )],
    ) else {
        return;
    };
    let mut first = SnClient::connected(&broker, &unique_client_id("first"), json!({}));
    // A second peer's CONNECT is dropped: no CONNACK ever comes.
    let second = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    second.set_read_timeout(Some(QUIET * 3)).unwrap();
    let connect = [0x0A, 0x04, 0x04, 0x01, 0x00, 0x3C, b'p', b'e', b'e', b'r'];
    second
        .send_to(&connect, format!("{}:{}", broker.host, broker.mqttsn_port))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        second.recv_from(&mut buf).is_err(),
        "a peer beyond the limit was answered"
    );
    // The first keeps working.
    let topic = unique_topic("sn-limit");
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&topic], 1, &[]);
    first.publish(&topic, b"still served", 1, false);
    assert_eq!(sub.recv(TIMEOUT).payload, b"still served");
}

#[test]
fn clientinfo_override_names_the_user_and_the_listener_mountpoint_uses_it() {
    let Some(broker) = Broker::start_gateway_only(
        "clientinfo_override and a listener mountpoint",
        &[
            Setting::new(
                "GATEWAY_GATEWAY__MQTTSN__CLIENTINFO_OVERRIDE__USERNAME",
                "u-${clientid}",
            ),
            // The gateway-wide mountpoint is replaced by the listener's.
            Setting::new("GATEWAY_GATEWAY__MQTTSN__MOUNTPOINT", "gateway-wide/"),
            Setting::new(
                "GATEWAY_GATEWAY__MQTTSN__LISTENERS__UDP__DEFAULT__MOUNTPOINT",
                "sn/${username}/",
            ),
        ],
    ) else {
        return;
    };
    let client_id = unique_client_id("snover");
    let mounted = format!("sn/u-{client_id}");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&format!("{mounted}/#")], 1, &[]);
    let mut sn = SnClient::connected(&broker, &client_id, json!({}));
    sn.publish("up/long/name", b"mounted", 1, false);
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..]),
        (format!("{mounted}/up/long/name").as_str(), &b"mounted"[..])
    );
    // Downstream the client sees its own topic, without the mountpoint.
    assert!(sn.subscribe("down/here", 1).is_some());
    let down = format!("{mounted}/down/here");
    mosquitto_pub(&broker, Version::V311, &down, b"unmounted", 1, false, &[]);
    let msg = sn.recv();
    assert_eq!(
        (msg.topic.as_deref(), &msg.payload[..]),
        (Some("down/here"), &b"unmounted"[..])
    );
    sn.disconnect();
}

#[test]
fn a_persistent_mqttsn_session_keeps_its_topic_ids_and_queue_across_a_gateway_crash() {
    let Some(mut broker) = Broker::start_gateway_only("a gateway to kill and restart", &[]) else {
        return;
    };
    let prefix = unique_topic("sn-crash");
    let uplink = format!("{prefix}/up");
    let downlink = format!("{prefix}/down");
    let client_id = unique_client_id("sncrash");
    let mut sn = SnClient::connected(&broker, &client_id, json!({ "clean": false }));
    let up_id = sn.register(&uplink);
    let down_id = sn
        .subscribe(&downlink, 1)
        .expect("a plain name's id in SUBACK");
    assert_ne!(up_id, down_id);
    sn.disconnect();
    // Each PUBACK mosquitto_pub waits for comes once the queued copy is on disk.
    let payloads: Vec<String> = (0..3).map(|i| format!("queued {i}")).collect();
    for payload in &payloads {
        mosquitto_pub(
            &broker,
            Version::V311,
            &downlink,
            payload.as_bytes(),
            1,
            false,
            &[],
        );
    }
    broker.crash_and_restart();

    sn.resume(&client_id);
    for payload in &payloads {
        let msg = sn.recv();
        // The id the client learnt before the crash: no REGISTER needed, none sent.
        assert_eq!(
            (msg.topic_id, msg.topic.as_deref(), msg.qos),
            (down_id, Some(downlink.as_str()), 1),
            "{}",
            broker.log_tail()
        );
        assert_eq!(msg.payload, payload.as_bytes());
    }
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&uplink], 1, &[]);
    // The library raises on any PUBACK return code but accepted (0x02: unknown id).
    sn.publish_id(up_id, b"by the old id", 1);
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), &msg.payload[..]),
        (uplink.as_str(), &b"by the old id"[..])
    );
    sn.disconnect();
}
