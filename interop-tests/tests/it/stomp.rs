//! STOMP over real TCP and WebSocket: stomp.py and @stomp/stompjs on one side, mosquitto
//! clients and paho-mqtt on the MQTT side, the built gateway in between.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use interop_tests::broker::{gateway_passwd, password_file_only};
use interop_tests::stomp::StompClient;
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, Lib, MosquittoSub, ScriptClient,
    Setting, StompJs, StompPy, Version, QUIET, TIMEOUT,
};
use serde_json::json;

fn gateway(settings: &[Setting]) -> Option<Broker> {
    if settings.is_empty() {
        Some(Broker::start())
    } else {
        Broker::start_gateway_only("a STOMP listener", settings)
    }
}

/// A stomp.py client connected with `version` and `extra` connect fields.
fn stomp_py(broker: &Broker, version: &str, extra: serde_json::Value) -> StompClient {
    let mut client = StompPy::spawn();
    client.connect_tcp(broker, version, extra);
    let connected = client.expect("connected");
    assert_eq!(connected.header("version"), Some(version));
    client
}

#[test]
fn stomp_py_and_mqtt_clients_exchange_messages_in_every_version() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    for version in ["1.0", "1.1", "1.2"] {
        let prefix = unique_topic("stomp-x");
        let mut stomp = stomp_py(&broker, version, json!({}));
        // STOMP subscribes with an MQTT wildcard; the receipt says it is in place.
        stomp.run(json!({
            "cmd": "subscribe", "destination": format!("{prefix}/down/+"), "id": "s1",
            "ack": "auto", "headers": {"receipt": "sub-1"},
        }));
        assert_eq!(stomp.expect("receipt").header("receipt-id"), Some("sub-1"));

        // MQTT to STOMP, a body with NUL bytes and a content type.
        let body = b"bin\0ary\0";
        mosquitto_pub(
            &broker,
            Version::V5,
            &format!("{prefix}/down/a"),
            body,
            1,
            false,
            &["-D", "publish", "content-type", "application/octet-stream"],
        );
        let message = stomp.expect("message");
        assert_eq!(message.body, body, "{version}");
        assert_eq!(
            message.header("destination"),
            Some(format!("{prefix}/down/a").as_str())
        );
        assert_eq!(message.header("subscription"), Some("s1"));
        assert_eq!(
            message.header("content-type"),
            Some("application/octet-stream")
        );
        assert!(message.header("message-id").is_some());

        // STOMP to MQTT 5: other headers become user properties, content-type the
        // content type; a header with a colon and a line break survives 1.1+ escaping.
        let mut sub = ScriptClient::connected(
            Lib::Paho,
            Version::V5,
            &broker,
            &unique_client_id("stomp-paho"),
        );
        sub.subscribe(&format!("{prefix}/up/#"), 1);
        // 1.0 has no escapes: its backslash arrives as it was sent (1.1 and 1.2 would
        // refuse `\d`), while 1.1+ escape a colon and a line break.
        let value = if version == "1.0" {
            r"C:\dir"
        } else {
            "a:b\nc"
        };
        stomp.send(
            &format!("{prefix}/up/x"),
            b"hello from stomp",
            json!({"content-type": "text/plain", "x-custom": value, "receipt": "send-1"}),
        );
        assert_eq!(stomp.expect("receipt").header("receipt-id"), Some("send-1"));
        let msg = sub.recv(TIMEOUT);
        assert_eq!(msg.topic, format!("{prefix}/up/x"));
        assert_eq!(msg.payload, b"hello from stomp");
        assert_eq!(msg.props["content_type"], "text/plain", "{version}");
        assert_eq!(
            msg.props["user_property"],
            json!([["x-custom", value]]),
            "{version}"
        );

        // After UNSUBSCRIBE nothing more arrives.
        stomp.run(json!({"cmd": "unsubscribe", "id": "s1", "destination": format!("{prefix}/down/+"), "headers": {"receipt": "unsub-1"}}));
        assert_eq!(
            stomp.expect("receipt").header("receipt-id"),
            Some("unsub-1")
        );
        mosquitto_pub(
            &broker,
            Version::V311,
            &format!("{prefix}/down/b"),
            b"late",
            0,
            false,
            &[],
        );
        assert!(stomp.none_within("message", QUIET));

        stomp.run(json!({"cmd": "disconnect", "receipt": "bye"}));
        assert_eq!(stomp.expect("receipt").header("receipt-id"), Some("bye"));
    }
}

/// Messages on client-individual and client subscriptions that were not acknowledged
/// are sent again when the session named by client-id comes back.
#[test]
fn unacknowledged_messages_are_redelivered_after_reconnect() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    for (ack, expected_again) in [
        ("client-individual", vec!["m1", "m3"]),
        // client is cumulative: acknowledging m2 acknowledges m1 too.
        ("client", vec!["m3"]),
    ] {
        let topic = unique_topic("stomp-ack");
        let client_id = unique_client_id("stomp-ack");
        let mut stomp = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
        stomp.run(json!({"cmd": "subscribe", "destination": topic, "id": "s", "ack": ack, "headers": {"receipt": "r"}}));
        stomp.expect("receipt");
        for body in ["m1", "m2", "m3"] {
            mosquitto_pub(
                &broker,
                Version::V311,
                &topic,
                body.as_bytes(),
                1,
                false,
                &[],
            );
        }
        let mut ack_of_m2 = String::new();
        for body in ["m1", "m2", "m3"] {
            let message = stomp.expect("message");
            assert_eq!(message.body, body.as_bytes(), "{ack}");
            assert!(
                message.header("ack").is_some(),
                "{ack}: MESSAGE has an ack header"
            );
            if body == "m2" {
                ack_of_m2 = message.header("ack").unwrap().to_owned();
            }
        }
        stomp.run(json!({"cmd": "ack", "id": ack_of_m2, "receipt": "acked"}));
        stomp.expect("receipt");
        stomp.run(json!({"cmd": "disconnect", "receipt": "bye"}));
        stomp.expect("receipt");
        drop(stomp);

        let mut again = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
        again.run(json!({"cmd": "subscribe", "destination": topic, "id": "s", "ack": ack}));
        for body in &expected_again {
            let message = again.expect("message");
            assert_eq!(message.body, body.as_bytes(), "{ack}: redelivered in order");
            let ack_id = message.header("ack").unwrap().to_owned();
            again.run(json!({"cmd": "ack", "id": ack_id}));
        }
        assert!(again.none_within("message", QUIET), "{ack}: nothing else");
        again.run(json!({"cmd": "disconnect", "receipt": "bye"}));
        again.expect("receipt");
    }
}

#[test]
fn nack_redelivers_and_stomp_1_1_acks_by_message_id() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    let topic = unique_topic("stomp-nack");
    let mut stomp = stomp_py(&broker, "1.1", json!({}));
    stomp.run(json!({"cmd": "subscribe", "destination": topic, "id": "s", "ack": "client-individual", "headers": {"receipt": "r"}}));
    stomp.expect("receipt");
    mosquitto_pub(&broker, Version::V311, &topic, b"again", 1, false, &[]);
    let first = stomp.expect("message");
    let message_id = first.header("message-id").unwrap().to_owned();
    stomp.run(json!({"cmd": "nack", "id": message_id, "subscription": "s"}));
    let second = stomp.expect("message");
    assert_eq!(second.body, b"again");
    assert_ne!(second.header("message-id"), Some(message_id.as_str()));
    let message_id = second.header("message-id").unwrap().to_owned();
    stomp.run(json!({"cmd": "ack", "id": message_id, "subscription": "s", "receipt": "done"}));
    stomp.expect("receipt");
    assert!(stomp.none_within("message", QUIET));
}

#[test]
fn transactions_publish_on_commit_and_leave_nothing_on_abort() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    let prefix = unique_topic("stomp-tx");
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&format!("{prefix}/#")], 1, &[]);
    let mut stomp = stomp_py(&broker, "1.2", json!({}));

    stomp.run(json!({"cmd": "begin", "transaction": "t1"}));
    stomp.send(&format!("{prefix}/a"), b"one", json!({"transaction": "t1"}));
    stomp.send(&format!("{prefix}/a"), b"two", json!({"transaction": "t1"}));
    assert!(sub.try_recv(QUIET).is_none(), "nothing before COMMIT");
    stomp.run(json!({"cmd": "commit", "transaction": "t1"}));
    assert_eq!(sub.recv(TIMEOUT).payload, b"one");
    assert_eq!(sub.recv(TIMEOUT).payload, b"two");

    stomp.run(json!({"cmd": "begin", "transaction": "t2"}));
    stomp.send(
        &format!("{prefix}/b"),
        b"never",
        json!({"transaction": "t2"}),
    );
    stomp.run(json!({"cmd": "abort", "transaction": "t2"}));
    stomp.send(
        &format!("{prefix}/b"),
        b"after abort",
        json!({"receipt": "r"}),
    );
    stomp.expect("receipt");
    assert_eq!(sub.recv(TIMEOUT).payload, b"after abort");

    // An ACK inside a transaction takes effect at COMMIT only: an aborted one leaves the
    // message unacknowledged, so it comes back after a reconnect.
    let client_id = unique_client_id("stomp-txack");
    let topic = format!("{prefix}/acked");
    let mut acker = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
    acker.run(json!({"cmd": "subscribe", "destination": topic, "id": "s", "ack": "client", "headers": {"receipt": "r"}}));
    acker.expect("receipt");
    mosquitto_pub(&broker, Version::V311, &topic, b"held", 1, false, &[]);
    let ack_id = acker.expect("message").header("ack").unwrap().to_owned();
    acker.run(json!({"cmd": "begin", "transaction": "t3"}));
    acker.run(json!({"cmd": "ack", "id": ack_id, "transaction": "t3"}));
    acker.run(json!({"cmd": "abort", "transaction": "t3"}));
    acker.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    acker.expect("receipt");
    drop(acker);
    let mut back = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
    back.run(json!({"cmd": "subscribe", "destination": topic, "id": "s", "ack": "client"}));
    assert_eq!(back.expect("message").body, b"held");
}

#[test]
fn heart_beats_are_sent_and_a_silent_client_is_closed() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    // stomp.py asks for heart-beats every 200 ms and sends its own.
    let mut stomp = StompPy::spawn();
    stomp.connect_tcp(&broker, "1.2", json!({"heartbeats": [200, 200]}));
    let connected = stomp.expect("connected");
    assert_eq!(connected.header("heart-beat"), Some("200,200"));
    std::thread::sleep(Duration::from_millis(1200));
    let count = stomp.run(json!({"cmd": "heartbeats"}))["count"]
        .as_u64()
        .unwrap();
    assert!(count >= 3, "stomp.py counted {count} heart-beats in 1.2 s");
    assert!(
        stomp.none_within("heartbeat_timeout", Duration::from_millis(10)),
        "stomp.py saw our heart-beats in time"
    );
    assert!(stomp.none_within("disconnected", Duration::from_millis(10)));

    stomp.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    stomp.expect("receipt");

    // stomp.py promising heart-beats every 200 ms (and wanting none, so that it never
    // gives up on us by itself) falls silent: frozen for a second, it finds its
    // connection closed when it wakes.
    let mut silent = StompPy::spawn();
    silent.connect_tcp(&broker, "1.2", json!({"heartbeats": [200, 0]}));
    assert_eq!(
        silent.expect("connected").header("heart-beat"),
        Some("0,200")
    );
    assert!(
        silent.none_within("disconnected", Duration::from_millis(600)),
        "kept while its heart-beats come"
    );
    silent.suspend();
    std::thread::sleep(Duration::from_millis(1000));
    silent.resume();
    silent.expect_within("disconnected", Duration::from_secs(2));
    assert!(silent.none_within("heartbeat_timeout", Duration::from_millis(10)));
}

#[test]
fn malformed_frames_and_refused_logins_get_an_error_frame_then_close() {
    let Some(broker) = gateway(&[Setting::new(
        "GATEWAY_GATEWAY__STOMP__FRAME__MAX_BODY_LENGTH",
        "16",
    )]) else {
        return;
    };
    let cases: &[(&[u8], &str)] = &[
        (b"SEND\ndestination:a\n\nx\0", "Not connected"),
        (b"HELLO\n\n\0", "malformed frame: unknown command"),
        (
            b"CONNECT\naccept-version:1.2\nhost:x\n\n\0SEND\ndestination:a\n\n01234567890123456789\0",
            "malformed frame: a body longer than 16 bytes",
        ),
        (
            b"CONNECT\naccept-version:1.2\nhost:x\n\n\0SEND\ndestination:a/+\n\nx\0",
            "invalid destination a/+",
        ),
        (b"CONNECT\naccept-version:2.0\n\n\0", "Supported protocol versions are 1.0,1.1,1.2"),
    ];
    for (wire, message) in cases {
        let mut socket = TcpStream::connect((broker.host.as_str(), broker.stomp_port)).unwrap();
        socket.write_all(wire).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut received = Vec::new();
        socket
            .read_to_end(&mut received)
            .unwrap_or_else(|e| panic!("no close after {message:?}: {e}"));
        // Past CONNECT, 1.2 escapes the colon of a header value as \c.
        let text = String::from_utf8_lossy(&received).replace("\\c", ":");
        assert!(
            text.contains(&format!("ERROR\nmessage:{message}\n")),
            "{message}: got {text:?}"
        );
    }
    // Other clients are not disturbed.
    let mut stomp = stomp_py(&broker, "1.2", json!({}));
    stomp.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    stomp.expect("receipt");
}

#[test]
fn stomp_py_login_is_checked_against_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    gateway_passwd(&passwords, "alice", "secret");
    let Some(broker) = gateway(&password_file_only(&passwords)) else {
        return;
    };
    let mut good = stomp_py(
        &broker,
        "1.2",
        json!({"login": "alice", "passcode": "secret"}),
    );
    good.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    good.expect("receipt");
    let mut bad = StompPy::spawn();
    bad.connect_tcp(
        &broker,
        "1.2",
        json!({"login": "alice", "passcode": "wrong"}),
    );
    let error = bad.expect("error");
    assert!(error.header("message").unwrap().starts_with("Login Failed"));
    bad.expect("disconnected");
}

#[test]
fn stompjs_over_websocket_exchanges_messages_with_mqtt_clients() {
    let Some(broker) = gateway(&[Setting::new(
        "GATEWAY_GATEWAY__STOMP__LISTENERS__WS__DEFAULT__ENABLE",
        "true",
    )]) else {
        return;
    };
    let prefix = unique_topic("stompjs");
    let mut js = StompJs::spawn(&broker);
    js.connect_ws(json!({}));
    let connected = js.expect("connected");
    assert_eq!(connected.header("version"), Some("1.2"));

    js.run(json!({"cmd": "receipt", "id": "sub-r"}));
    js.run(json!({"cmd": "subscribe", "destination": format!("{prefix}/down/#"), "id": "sub-0", "ack": "client-individual"}));
    js.send(
        &format!("{prefix}/barrier"),
        b"",
        json!({"receipt": "sub-r"}),
    );
    js.expect("receipt");

    mosquitto_pub(
        &broker,
        Version::V5,
        &format!("{prefix}/down/x/y"),
        b"to the browser",
        1,
        false,
        &[],
    );
    let message = js.expect("message");
    assert_eq!(message.body, b"to the browser");
    assert_eq!(
        message.header("destination"),
        Some(format!("{prefix}/down/x/y").as_str())
    );
    let message_id = message.header("message-id").unwrap().to_owned();
    js.run(json!({"cmd": "nack", "message_id": message_id}));
    let again = js.expect("message");
    assert_eq!(again.body, b"to the browser", "NACK redelivers");
    let message_id = again.header("message-id").unwrap().to_owned();
    js.run(json!({"cmd": "ack", "message_id": message_id}));

    // stompjs sends text frames for string bodies and binary frames for binary ones.
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&format!("{prefix}/up/#")], 1, &[]);
    js.run(json!({"cmd": "send", "destination": format!("{prefix}/up/text"), "body": "74657874"}));
    js.run(json!({"cmd": "send", "destination": format!("{prefix}/up/bin"), "body": "00ff00", "binary": true}));
    let first = sub.recv(TIMEOUT);
    assert_eq!(
        (first.topic.as_str(), first.payload.as_slice()),
        (format!("{prefix}/up/text").as_str(), &b"text"[..])
    );
    let second = sub.recv(TIMEOUT);
    assert_eq!(second.payload, [0, 0xff, 0]);

    js.run(json!({"cmd": "begin", "transaction": "tx"}));
    js.send(
        &format!("{prefix}/up/tx"),
        b"committed",
        json!({"transaction": "tx"}),
    );
    assert!(sub.try_recv(QUIET).is_none());
    js.run(json!({"cmd": "commit", "transaction": "tx"}));
    assert_eq!(sub.recv(TIMEOUT).payload, b"committed");
    js.run(json!({"cmd": "disconnect"}));
    js.expect("disconnected");
}

/// A stomp.py member of `$share/{group}/{topic}` acknowledging per message holds `m1` and
/// `m2` without acknowledging them.
fn shared_member_holding_two(
    broker: &Broker,
    filter: &str,
    topic: &str,
    client_id: &str,
) -> StompClient {
    let mut holder = stomp_py(broker, "1.2", json!({"client_id": client_id}));
    holder.run(json!({"cmd": "subscribe", "destination": filter, "id": "s", "ack": "client-individual", "headers": {"receipt": "r"}}));
    holder.expect("receipt");
    for body in ["m1", "m2"] {
        mosquitto_pub(broker, Version::V311, topic, body.as_bytes(), 1, false, &[]);
    }
    for body in ["m1", "m2"] {
        assert_eq!(holder.expect("message").body, body.as_bytes());
    }
    holder
}

/// By default (`shared_redelivery = "group"`) the messages a client leaves unacknowledged
/// on a shared subscription go to another member of the group, STOMP or MQTT, even when
/// its session lives on.
#[test]
fn unacknowledged_shared_messages_go_to_another_member_when_a_client_leaves() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    for other_is_mqtt in [false, true] {
        let topic = unique_topic("stomp-share");
        let filter = format!("$share/g/{topic}");
        let client_id = unique_client_id("stomp-share");
        let mut holder = shared_member_holding_two(&broker, &filter, &topic, &client_id);
        let received: Vec<Vec<u8>> = if other_is_mqtt {
            let mut other = ScriptClient::connected(
                Lib::Paho,
                Version::V5,
                &broker,
                &unique_client_id("stomp-share-paho"),
            );
            other.subscribe(&filter, 1);
            // Gone without DISCONNECT: the process ends, the system closes its socket.
            drop(holder);
            (0..2).map(|_| other.recv(TIMEOUT).payload).collect()
        } else {
            let mut other = stomp_py(&broker, "1.1", json!({}));
            other.run(json!({"cmd": "subscribe", "destination": filter, "id": "o", "ack": "auto", "headers": {"receipt": "r"}}));
            other.expect("receipt");
            holder.run(json!({"cmd": "disconnect", "receipt": "bye"}));
            holder.expect("receipt");
            drop(holder);
            (0..2)
                .map(|_| {
                    let message = other.expect("message");
                    assert_eq!(message.header("subscription"), Some("o"));
                    message.body
                })
                .collect()
        };
        assert_eq!(received, [b"m1", b"m2"], "MQTT member: {other_is_mqtt}");
        // Handed over, not kept: the returning session gets nothing again.
        let mut back = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
        back.run(json!({"cmd": "subscribe", "destination": filter, "id": "s", "ack": "client-individual"}));
        assert!(back.none_within("message", QUIET));
    }
}

/// `shared_redelivery = "session"`: a session that lives on keeps them for its return.
#[test]
fn shared_redelivery_session_keeps_unacknowledged_messages_for_the_returning_client() {
    let Some(broker) = gateway(&[Setting::new(
        "GATEWAY_GATEWAY__STOMP__SHARED_REDELIVERY",
        "session",
    )]) else {
        return;
    };
    let topic = unique_topic("stomp-share-session");
    let filter = format!("$share/g/{topic}");
    let client_id = unique_client_id("stomp-share-session");
    let mut holder = shared_member_holding_two(&broker, &filter, &topic, &client_id);
    let mut other = stomp_py(&broker, "1.2", json!({}));
    other.run(json!({"cmd": "subscribe", "destination": filter, "id": "o", "ack": "auto", "headers": {"receipt": "r"}}));
    other.expect("receipt");
    holder.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    holder.expect("receipt");
    drop(holder);
    assert!(other.none_within("message", QUIET), "kept by the session");
    let mut back = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
    back.run(
        json!({"cmd": "subscribe", "destination": filter, "id": "s", "ack": "client-individual"}),
    );
    for body in ["m1", "m2"] {
        assert_eq!(back.expect("message").body, body.as_bytes());
    }
}

/// A listener's mountpoint replaces the gateway's for its clients only: stomp.py on the
/// TCP listener lives under `stomp/{clientid}/`, stompjs on the WebSocket listener under
/// the gateway's `web/`, and MQTT clients see the prefixed topics.
#[test]
fn mountpoints_are_per_listener_and_mqtt_clients_see_the_prefixed_topics() {
    let Some(broker) = gateway(&[
        Setting::new("GATEWAY_GATEWAY__STOMP__MOUNTPOINT", "web/"),
        Setting::new(
            "GATEWAY_GATEWAY__STOMP__LISTENERS__TCP__DEFAULT__MOUNTPOINT",
            "stomp/${clientid}/",
        ),
        Setting::new(
            "GATEWAY_GATEWAY__STOMP__LISTENERS__WS__DEFAULT__ENABLE",
            "true",
        ),
    ]) else {
        return;
    };
    let client_id = unique_client_id("stomp-mp");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &["stomp/+/up/#", "web/up/#"], 1, &[]);
    let mut stomp = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
    stomp.run(json!({"cmd": "subscribe", "destination": "down/#", "id": "s", "ack": "auto", "headers": {"receipt": "r"}}));
    stomp.expect("receipt");

    stomp.send("up/x", b"from tcp", json!({"receipt": "sent"}));
    stomp.expect("receipt");
    let seen = sub.recv(TIMEOUT);
    assert_eq!(
        (seen.topic.as_str(), seen.payload.as_slice()),
        (format!("stomp/{client_id}/up/x").as_str(), &b"from tcp"[..])
    );

    mosquitto_pub(
        &broker,
        Version::V311,
        &format!("stomp/{client_id}/down/y"),
        b"to tcp",
        1,
        false,
        &[],
    );
    let message = stomp.expect("message");
    assert_eq!(message.header("destination"), Some("down/y"), "unmounted");
    assert_eq!(message.body, b"to tcp");
    // The same topic outside its mountpoint does not reach it.
    mosquitto_pub(
        &broker,
        Version::V311,
        "down/y",
        b"unmounted",
        1,
        false,
        &[],
    );
    assert!(stomp.none_within("message", QUIET));

    let mut js = StompJs::spawn(&broker);
    js.connect_ws(json!({}));
    js.expect("connected");
    js.send("up/js", b"from ws", json!({}));
    let seen = sub.recv(TIMEOUT);
    assert_eq!(
        (seen.topic.as_str(), seen.payload.as_slice()),
        ("web/up/js", &b"from ws"[..])
    );
}

/// A session named by client-id on the gateway's disk store survives SIGKILL: its
/// subscription comes back with the client's id and ack mode, and with it every message
/// it was sent and never acknowledged and every one queued meanwhile. A SEND whose
/// RECEIPT came before the crash reaches a persistent MQTT subscriber after it.
#[test]
fn a_persistent_stomp_session_and_its_receipted_sends_survive_a_gateway_crash() {
    let Some(mut broker) = Broker::start_gateway_only("a gateway to kill and restart", &[]) else {
        return;
    };
    let topic = unique_topic("stomp-crash");
    let client_id = unique_client_id("stomp-crash");
    let mut stomp = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
    stomp.run(json!({
        "cmd": "subscribe", "destination": topic, "id": "jobs-7", "ack": "client",
        "headers": {"receipt": "subscribed"},
    }));
    assert_eq!(
        stomp.expect("receipt").header("receipt-id"),
        Some("subscribed")
    );
    // Two are sent to the client, which holds them unacknowledged through the crash.
    for body in ["m1", "m2"] {
        mosquitto_pub(&broker, Version::V5, &topic, body.as_bytes(), 1, false, &[]);
        assert_eq!(stomp.expect("message").body, body.as_bytes());
    }

    // An MQTT subscriber that outlives its connection, away at the crash.
    let mqtt_id = unique_client_id("stomp-crash-mqtt");
    let up = unique_topic("stomp-crash-up");
    let persistent = ["-c", "-i", mqtt_id.as_str(), "-x", "300"];
    let mut away = MosquittoSub::start(&broker, Version::V5, &[&up], 1, &persistent);
    away.kill();
    let mut sender = stomp_py(&broker, "1.2", json!({}));
    sender.send(&up, b"receipted", json!({"receipt": "kept"}));
    assert_eq!(sender.expect("receipt").header("receipt-id"), Some("kept"));
    // Three more are queued for the session while its connection is still open but
    // the client reads nothing more: the PUBACKs say they are kept.
    stomp.suspend();
    for body in ["m3", "m4", "m5"] {
        mosquitto_pub(&broker, Version::V5, &topic, body.as_bytes(), 1, false, &[]);
    }

    broker.crash_and_restart();
    stomp.resume();
    drop(stomp);
    drop(sender);

    // No SUBSCRIBE: the session brings its subscription back.
    let mut back = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
    let mut last_ack = String::new();
    for body in ["m1", "m2", "m3", "m4", "m5"] {
        let message = back.expect("message");
        assert_eq!(message.body, body.as_bytes(), "every message, in order");
        assert_eq!(message.header("subscription"), Some("jobs-7"));
        last_ack = message.header("ack").expect("an ack header").to_owned();
    }
    assert!(back.none_within("message", QUIET), "nothing else");
    // The ack mode came back too: in client mode one ACK covers all five.
    back.run(json!({"cmd": "ack", "id": last_ack, "receipt": "acked"}));
    assert_eq!(back.expect("receipt").header("receipt-id"), Some("acked"));
    back.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    back.expect("receipt");
    drop(back);
    let mut again = stomp_py(&broker, "1.2", json!({"client_id": client_id}));
    assert!(
        again.none_within("message", QUIET),
        "acknowledged messages are not sent again"
    );

    let mut returned = MosquittoSub::start(&broker, Version::V5, &[&up], 1, &persistent);
    let message = returned.recv(TIMEOUT);
    assert_eq!(message.payload, b"receipted");
}
