#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! MQTT over QUIC (`quic` listeners, 14567/udp by default) with aioquic as the client, its
//! certificate made by openssl at test time: MQTT 3.1.1 and 5 on one bidirectional stream
//! with ALPN `mqtt`, QoS 0 and 1 both ways with mosquitto clients on TCP, a wrong ALPN
//! refused, a client that never sends CONNECT dropped after the handshake timeout, SIGTERM
//! answered with DISCONNECT 0x8B, 0-RTT CONNECT taken only when enabled, the connection
//! limit, client certificates, connection migration, certificate reload, and the listener
//! off without a certificate.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use interop_tests::certs::TestPki;
use interop_tests::quic::{QuicClient, QuicEnd};
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, MosquittoSub, Setting, Version, TIMEOUT,
};

struct QuicGateway {
    broker: Broker,
    port: u16,
    pki: TestPki,
}

/// A gateway with its quic listener on a UDP port of the system's choosing and a certificate for
/// localhost, plus `settings`.
fn quic_gateway(settings: Vec<Setting>) -> Option<QuicGateway> {
    quic_gateway_with(TestPki::new(), settings)
}

/// `quic_gateway` with certificates from `pki`.
fn quic_gateway_with(pki: TestPki, mut settings: Vec<Setting>) -> Option<QuicGateway> {
    let server = pki.server();
    settings.extend([
        Setting::new("GATEWAY_LISTENERS__QUIC__DEFAULT__BIND", "127.0.0.1:0"),
        Setting::new(
            "GATEWAY_LISTENERS__QUIC__DEFAULT__TLS__CERTFILE",
            server.cert.display().to_string(),
        ),
        Setting::new(
            "GATEWAY_LISTENERS__QUIC__DEFAULT__TLS__KEYFILE",
            server.key.display().to_string(),
        ),
    ]);
    let broker = Broker::start_gateway_only("a QUIC listener with test certificates", &settings)?;
    let port = broker.listener_port("quic:default");
    Some(QuicGateway { broker, port, pki })
}

/// Waits until the gateway's log shows `text`.
fn wait_for_log(broker: &Broker, text: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !broker.log_tail().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the gateway never logged {text:?}; log:\n{}",
            broker.log_tail()
        );
        thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn quic_clients_exchange_qos0_and_qos1_with_tcp_clients() {
    let Some(gw) = quic_gateway(Vec::new()) else {
        return;
    };
    for version in [Version::V311, Version::V5] {
        let to_quic = unique_topic("to-quic");
        let from_quic = unique_topic("from-quic");
        let mut quic =
            QuicClient::connected(gw.port, &gw.pki.ca(), version, &unique_client_id("quic"));
        assert_eq!(quic.subscribe(&format!("{to_quic}/#"), 1), 1);
        let mut tcp_sub = MosquittoSub::start(&gw.broker, Version::V311, &[&from_quic], 1, &[]);

        // TCP to QUIC, at each QoS: the delivered QoS is the lower of publish and subscription.
        for qos in [0u8, 1] {
            let topic = format!("{to_quic}/q{qos}");
            let payload: Vec<u8> = (0u8..=255).chain([qos]).collect();
            mosquitto_pub(&gw.broker, Version::V311, &topic, &payload, qos, false, &[]);
            let msg = quic.recv();
            assert_eq!(
                (msg.topic.as_str(), msg.payload.as_slice(), msg.qos),
                (topic.as_str(), payload.as_slice(), qos),
                "{version:?}"
            );
        }

        // QUIC to TCP, at each QoS; QoS 1 is acknowledged with success.
        for qos in [0u8, 1] {
            let payload = format!("from quic {version:?} at qos {qos}").into_bytes();
            let ack = quic.publish(&from_quic, &payload, qos);
            assert_eq!(ack, (qos == 1).then_some(0), "{version:?} PUBACK");
            let msg = tcp_sub.recv(TIMEOUT);
            assert_eq!((msg.payload, msg.qos), (payload, qos), "{version:?}");
        }

        quic.ping();
        quic.disconnect();
    }
}

#[test]
fn a_client_moving_to_another_port_keeps_its_session() {
    let Some(gw) = quic_gateway(Vec::new()) else {
        return;
    };
    let topic = unique_topic("migrate");
    let mut quic = QuicClient::connected(
        gw.port,
        &gw.pki.ca(),
        Version::V5,
        &unique_client_id("mover"),
    );
    assert_eq!(quic.subscribe(&topic, 1), 1);
    let new_port = quic.migrate();
    quic.ping();
    mosquitto_pub(
        &gw.broker,
        Version::V311,
        &topic,
        b"after the move",
        1,
        false,
        &[],
    );
    assert_eq!(quic.recv().payload, b"after the move");
    assert_eq!(quic.publish(&topic, b"from the new port", 1), Some(0));
    assert_eq!(quic.recv().payload, b"from the new port");
    wait_for_log(&gw.broker, &format!("to=127.0.0.1:{new_port}"));
    assert!(gw.broker.log_tail().contains("QUIC connection migrated"));
}

#[test]
fn a_client_offering_another_alpn_is_refused() {
    let Some(gw) = quic_gateway(Vec::new()) else {
        return;
    };
    let mut wrong = QuicClient::spawn(gw.port, &gw.pki.ca());
    let refused = wrong.handshake(&["h3"]);
    assert!(
        refused.is_err(),
        "a handshake with ALPN h3 succeeded: {refused:?}"
    );
    wait_for_log(&gw.broker, "QUIC connection closed before its stream");
    // The same listener serves a client offering mqtt among others.
    let mut right = QuicClient::spawn(gw.port, &gw.pki.ca());
    assert_eq!(right.handshake(&["h3", "mqtt"]).as_deref(), Ok("mqtt"));
}

#[test]
fn a_client_that_never_sends_connect_is_dropped_after_the_handshake_timeout() {
    let Some(gw) = quic_gateway(vec![Setting::new(
        "GATEWAY_LISTENERS__QUIC__DEFAULT__HANDSHAKE_TIMEOUT",
        "1s",
    )]) else {
        return;
    };
    // One opens no stream at all; the other opens it with half a CONNECT.
    for partial in [None, Some(&[0x10u8][..])] {
        let mut idle = QuicClient::spawn(gw.port, &gw.pki.ca());
        idle.handshake(&["mqtt"]).expect("QUIC handshake");
        if let Some(bytes) = partial {
            idle.send_raw(bytes);
        }
        match idle.end(Duration::from_secs(8)) {
            Some(QuicEnd::Closed { after, .. }) => assert!(
                after >= Duration::from_millis(900) && after < Duration::from_secs(6),
                "closed {after:?} after the handshake with a 1 s handshake timeout ({partial:?})"
            ),
            other => panic!("expected the gateway to close the connection, got {other:?}"),
        }
    }
    // A client that does connect in time stays.
    let mut prompt = QuicClient::connected(
        gw.port,
        &gw.pki.ca(),
        Version::V5,
        &unique_client_id("prompt"),
    );
    thread::sleep(Duration::from_millis(1500));
    prompt.ping();
}

#[test]
fn sigterm_sends_disconnect_0x8b_to_mqtt5_clients_over_quic() {
    let Some(mut gw) = quic_gateway(Vec::new()) else {
        return;
    };
    let mut v5 = QuicClient::connected(
        gw.port,
        &gw.pki.ca(),
        Version::V5,
        &unique_client_id("term5"),
    );
    let mut v311 = QuicClient::connected(
        gw.port,
        &gw.pki.ca(),
        Version::V311,
        &unique_client_id("term3"),
    );
    let took = gw
        .broker
        .terminate()
        .expect("the gateway exits after SIGTERM");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(
        v5.end(TIMEOUT),
        Some(QuicEnd::Disconnect(0x8B)),
        "MQTT 5: DISCONNECT with Server shutting down"
    );
    // MQTT 3.1.1 has no server DISCONNECT: the connection just closes.
    assert!(
        matches!(v311.end(TIMEOUT), Some(QuicEnd::Closed { .. })),
        "MQTT 3.1.1 client's connection not closed"
    );
}

#[test]
fn zero_rtt_carries_connect_only_when_enabled() {
    for enabled in [false, true] {
        let Some(gw) = quic_gateway(vec![Setting::new(
            "GATEWAY_LISTENERS__QUIC__DEFAULT__ENABLE_0RTT",
            enabled.to_string(),
        )]) else {
            return;
        };
        let id = unique_client_id("zerortt");
        // The first connection brings the session ticket.
        let mut client = QuicClient::connected(gw.port, &gw.pki.ca(), Version::V5, &id);
        client.ping();
        let resumed = client.resume_with_early_connect(Version::V5, &id);
        assert_eq!(
            resumed["session_resumed"], true,
            "enable_0rtt = {enabled}: {resumed}"
        );
        assert_eq!(
            resumed["early_data_accepted"], enabled,
            "enable_0rtt = {enabled}: {resumed}"
        );
        assert_eq!(
            resumed["reason_code"], 0,
            "enable_0rtt = {enabled}: {resumed}"
        );
        client.ping();
    }
}

#[test]
fn client_certificates_are_required_and_their_common_name_names_the_client() {
    let pki = TestPki::new();
    let ca = pki.ca();
    let acl = pki.dir().join("acl");
    std::fs::write(&acl, "allow all all devices/%u/#\ndeny all all #\n").unwrap();
    let key = |k: &str| -> &'static str {
        Box::leak(format!("GATEWAY_LISTENERS__QUIC__DEFAULT__TLS__{k}").into_boxed_str())
    };
    let Some(gw) = quic_gateway_with(
        pki,
        vec![
            Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string()),
            Setting::new(key("VERIFY"), "required"),
            Setting::new(key("CACERTFILE"), ca.display().to_string()),
            Setting::new(key("PEER_CERT_AS_USERNAME"), "cn"),
            Setting::new(key("PEER_CERT_AS_CLIENTID"), "cn"),
        ],
    ) else {
        return;
    };
    // The certificate's CN, not CONNECT's user name, is what the %u rule sees.
    for (device, granted) in [("quic-dev-1", 1u8), ("quic-dev-2", 0x87)] {
        let pair = gw.pki.client(device, "ca");
        let mut client = QuicClient::spawn(gw.port, &ca);
        client
            .handshake_with_certificate(&pair.cert, &pair.key)
            .unwrap_or_else(|e| panic!("{device}: handshake with a certificate failed: {e}"));
        assert_eq!(
            client.try_connect(Version::V5, "chosen-id", Some("impostor")),
            Some(0),
            "{device}"
        );
        assert_eq!(
            client.subscribe("devices/quic-dev-1/#", 1),
            granted,
            "{device}"
        );
    }
    let log = gw.broker.log_tail();
    assert!(
        log.contains("client_id=\"quic-dev-1\""),
        "the client id is the certificate's:\n{log}"
    );
    assert!(!log.contains("chosen-id"), "{log}");

    // Without a certificate, or with one from another CA, no MQTT session.
    let rogue = gw.pki.client("quic-rogue", "rogue-ca");
    for cert in [None, Some(&rogue)] {
        let mut client = QuicClient::spawn(gw.port, &ca);
        let handshake = match cert {
            Some(pair) => client.handshake_with_certificate(&pair.cert, &pair.key),
            None => client.handshake(&["mqtt"]).map(|_| ()),
        };
        // TLS 1.3 clients finish their side before the server judges their certificate,
        // so the refusal may come as the connection's close instead of a failed handshake.
        if handshake.is_ok() {
            assert_eq!(
                client.try_connect(Version::V311, "no-cert", None),
                None,
                "a client with {cert:?} got a CONNACK"
            );
        }
    }
}

#[test]
fn connections_beyond_max_connections_are_refused() {
    let Some(gw) = quic_gateway(vec![Setting::new(
        "GATEWAY_LISTENERS__QUIC__DEFAULT__MAX_CONNECTIONS",
        "1",
    )]) else {
        return;
    };
    let mut first = QuicClient::connected(
        gw.port,
        &gw.pki.ca(),
        Version::V311,
        &unique_client_id("first"),
    );
    let mut second = QuicClient::spawn(gw.port, &gw.pki.ca());
    assert!(
        second.handshake(&["mqtt"]).is_err(),
        "a second connection was accepted with max_connections = 1"
    );
    first.ping();
    // The slot is free again once the first leaves.
    first.disconnect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut third = QuicClient::spawn(gw.port, &gw.pki.ca());
        if third.handshake(&["mqtt"]).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came free");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Retries a QUIC handshake trusting `ca` until it succeeds or `TIMEOUT` passes.
fn handshakes_within(port: u16, ca: &Path) -> bool {
    let until = Instant::now() + TIMEOUT;
    while Instant::now() < until {
        if QuicClient::spawn(port, ca).handshake(&["mqtt"]).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn certificates_are_reloaded_on_sighup_and_when_their_files_change() {
    let Some(gw) = quic_gateway(Vec::new()) else {
        return;
    };
    let replace_with = |with: &TestPki| {
        let (old, new) = (gw.pki.server(), with.server());
        std::fs::copy(&new.cert, &old.cert).unwrap();
        std::fs::copy(&new.key, &old.key).unwrap();
    };
    let mut before = QuicClient::connected(
        gw.port,
        &gw.pki.ca(),
        Version::V5,
        &unique_client_id("before"),
    );

    // SIGHUP: new connections get the new certificate, open ones keep going.
    let second = TestPki::new();
    replace_with(&second);
    gw.broker.signal(libc::SIGHUP);
    assert!(
        handshakes_within(gw.port, &second.ca()),
        "after SIGHUP the certificate of the second CA is served:\n{}",
        gw.broker.log_tail()
    );
    assert!(QuicClient::spawn(gw.port, &gw.pki.ca())
        .handshake(&["mqtt"])
        .is_err());
    before.ping();

    // A change of the files alone is noticed too.
    let third = TestPki::new();
    replace_with(&third);
    assert!(
        handshakes_within(gw.port, &third.ca()),
        "a changed certificate file is picked up without a signal:\n{}",
        gw.broker.log_tail()
    );
}

#[test]
fn the_quic_listener_stays_off_without_a_certificate() {
    let Some(broker) = Broker::start_gateway_only("the gateway's log", &[]) else {
        return;
    };
    wait_for_log(
        &broker,
        "listeners.quic.default: not started: it has no certificate",
    );
    assert!(!broker.log_tail().contains("listener=quic:default"));
}
