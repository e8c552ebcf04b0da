//! CoAP over DTLS 1.2 from Mbed TLS 3.6 (`dtls_cid_coap`, the client that can offer RFC 9146
//! connection ids): it publishes and observes through the CoAP DTLS listener whether it
//! offers a connection id or not, against mosquitto clients on the MQTT side; a wrong
//! secret or an unknown identity fails its handshake; a client that negotiated no
//! connection id is not served once a NAT moves it to another port (RFC 6347 ties such a
//! session to its address), while one that did keeps its session, observation included,
//! across two moves without a new handshake (RFC 9146), and a replayed or forged record
//! naming its id from an attacker's socket moves nothing.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use interop_tests::cid_client::{Cid, CidClient, CidOptions};
use interop_tests::dtls::{DtlsGateway, DtlsListener};
use interop_tests::mosquitto::sys_values_until;
use interop_tests::nat::Nat;
use interop_tests::{mosquitto_pub, unique_topic, MosquittoSub, Setting, Version, TIMEOUT};

const KEYS: &str = "sensor-1:secret-one\nsensor-2:another:secret\n";

fn listener(gw: &DtlsGateway) -> SocketAddr {
    ([127, 0, 0, 1], gw.port).into()
}

#[test]
fn mbedtls_publishes_and_observes_over_dtls_offering_a_connection_id_or_not() {
    let Some(gw) = DtlsGateway::start(DtlsListener::Coap, KEYS, &[]) else {
        return;
    };
    let topic = unique_topic("dtls-mbedtls");
    let posted = format!("{topic}/posted");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&format!("{posted}/#")], 1, &[]);
    for (label, cid) in [
        ("off", Cid::Off),
        ("empty", Cid::Offer(Vec::new())),
        ("own", Cid::Offer(vec![0xc1, 0xd0, 0x42])),
    ] {
        let options = CidOptions {
            cid: cid.clone(),
            ..CidOptions::default()
        };
        let mut client =
            CidClient::connect_with(listener(&gw), "sensor-2", "another:secret", &options);
        if cid == Cid::Off {
            assert_eq!(client.negotiated(), (None, None));
        }
        let payload = format!("from Mbed TLS, connection id {label}");
        assert_eq!(
            client.post(&format!("ps/{posted}/{label}?qos=1"), &payload),
            "2.04",
            "{label}"
        );
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic, msg.payload),
            (format!("{posted}/{label}"), payload.into_bytes()),
        );

        let watched = format!("{topic}/watched/{label}");
        assert_eq!(
            client.observe(&format!("ps/{watched}?qos=1")).code,
            "2.05",
            "{label}"
        );
        mosquitto_pub(&gw.broker, Version::V311, &watched, b"news", 1, false, &[]);
        let note = client
            .notification(TIMEOUT)
            .unwrap_or_else(|| panic!("{label}: no notification"));
        assert_eq!(
            (note.code.as_str(), note.payload.as_slice()),
            ("2.05", &b"news"[..])
        );
        client.quit();
    }
}

#[test]
fn mbedtls_with_a_wrong_secret_or_an_unknown_identity_fails_its_handshake() {
    let Some(gw) = DtlsGateway::start(DtlsListener::Coap, KEYS, &[]) else {
        return;
    };
    for (identity, secret) in [("sensor-1", "secret-two"), ("nobody", "secret-one")] {
        let failed =
            CidClient::try_connect(listener(&gw), identity, secret, &CidOptions::default())
                .err()
                .unwrap_or_else(|| panic!("{identity}:{secret} got a session"));
        assert_eq!(failed.status.and_then(|s| s.code()), Some(2), "{failed:?}");
        assert!(failed.stderr.contains("handshake failed"), "{failed:?}");
    }
}

#[test]
fn without_a_connection_id_a_client_moved_by_a_nat_is_no_longer_served() {
    let Some(gw) = DtlsGateway::start(DtlsListener::Coap, KEYS, &[]) else {
        return;
    };
    let topic = unique_topic("dtls-moved");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    let nat = Nat::start(listener(&gw));
    let options = CidOptions {
        cid: Cid::Off,
        ack_timeout: Duration::from_millis(500),
        ..CidOptions::default()
    };
    let mut client = CidClient::connect_with(nat.addr(), "sensor-1", "secret-one", &options);
    assert_eq!(
        client.post(&format!("ps/{topic}/before?qos=1"), "before"),
        "2.04"
    );
    assert_eq!(sub.recv(TIMEOUT).payload, b"before");
    let (to_server, to_client) = (nat.to_server(), nat.to_client());

    nat.rebind();
    assert_eq!(
        client.post(&format!("ps/{topic}/after?qos=1"), "after"),
        "timeout"
    );
    // The request and its two retransmissions reached the gateway from the new port, and
    // nothing came back.
    assert_eq!(nat.to_server() - to_server, 3);
    assert_eq!(nat.to_client(), to_client);
    mosquitto_pub(
        &gw.broker,
        Version::V311,
        &format!("{topic}/barrier"),
        b"",
        1,
        false,
        &[],
    );
    assert_eq!(
        sub.recv(TIMEOUT).topic,
        format!("{topic}/barrier"),
        "nothing routed"
    );
}

const LISTENER_SYS: &str = "$SYS/broker/listeners/coap:dtls:default";

/// A CoAP DTLS listener publishing its `$SYS` counters every second.
fn counted_gateway() -> Option<DtlsGateway> {
    DtlsGateway::start(
        DtlsListener::Coap,
        KEYS,
        &[Setting::new("GATEWAY_SYS__INTERVAL", "1s")],
    )
}

#[test]
fn with_a_connection_id_a_client_moved_by_a_nat_keeps_its_session_without_a_handshake() {
    let Some(gw) = counted_gateway() else {
        return;
    };
    let topic = unique_topic("dtls-cid-moved");
    let mut sub = MosquittoSub::start(
        &gw.broker,
        Version::V5,
        &[&format!("{topic}/posted/#")],
        1,
        &[],
    );
    let nat = Nat::start(listener(&gw));
    let mut client = CidClient::connect(nat.addr(), "sensor-1", "secret-one");
    let (gateways_id, own) = client.negotiated();
    assert_eq!(
        gateways_id.map(|id| id.len()),
        Some(16),
        "the gateway gives an 8-byte id"
    );
    assert_eq!(
        own.as_deref(),
        Some(""),
        "the client asked for none in its own records"
    );
    // Neither a ping nor a refusal before its first publish ends the DTLS session.
    assert!(client.ping(), "a CoAP ping is answered");
    assert_eq!(
        client.post(
            &format!("ps/{topic}/posted/x?clientid=sensor-2"),
            "not mine"
        ),
        "4.03"
    );

    let watched = format!("{topic}/watched");
    assert_eq!(client.observe(&format!("ps/{watched}?qos=1")).code, "2.05");
    assert_eq!(
        client.post(&format!("ps/{topic}/posted/before?qos=1"), "before"),
        "2.04"
    );
    assert_eq!(sub.recv(TIMEOUT).payload, b"before");

    // Twice, so that the second move starts from an address the first one made.
    for round in ["first", "second"] {
        nat.rebind();
        assert_eq!(
            client.post(&format!("ps/{topic}/posted/{round}?qos=1"), round),
            "2.04",
            "{round} move"
        );
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic, msg.payload),
            (format!("{topic}/posted/{round}"), round.as_bytes().to_vec())
        );
        // The observation followed the session to the new address.
        mosquitto_pub(
            &gw.broker,
            Version::V311,
            &watched,
            round.as_bytes(),
            1,
            false,
            &[],
        );
        let note = client
            .notification(TIMEOUT)
            .unwrap_or_else(|| panic!("{round}: no notification after the move"));
        assert_eq!(note.payload, round.as_bytes());
    }
    assert_eq!(
        nat.to_old_ports(),
        0,
        "nothing went to a port the NAT gave up"
    );

    let completed = format!("{LISTENER_SYS}/dtls/handshakes/completed");
    let values = sys_values_until(&gw.broker, &[&completed], |v| v[&completed] >= 1);
    assert_eq!(
        values.get(&completed),
        Some(&1),
        "one handshake for all three addresses"
    );
    client.quit();
}

/// RFC 9146 6: only a record that authenticates and is newer than any the session has
/// received moves it. A replay of the client's own record, the same record with a byte
/// changed, and a record that merely names the id, all from an attacker's socket, move
/// nothing and get no answer; the client is served where it is.
#[test]
fn a_replayed_or_forged_record_naming_a_connection_id_moves_no_session() {
    let Some(gw) = counted_gateway() else {
        return;
    };
    let topic = unique_topic("dtls-cid-spoof");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    let nat = Nat::start(listener(&gw));
    let mut client = CidClient::connect(nat.addr(), "sensor-2", "another:secret");
    let watched = format!("{topic}/watched");
    assert_eq!(client.observe(&format!("ps/{watched}?qos=1")).code, "2.05");
    assert_eq!(client.post(&format!("ps/{topic}/one?qos=1"), "one"), "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"one");

    let sent = nat.sent_to_server();
    let record = sent.last().expect("the client's last record").clone();
    assert_eq!(record[0], 25, "the client's records carry the gateway's id");
    let mut changed = record.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x5a;
    let mut named = record[..13 + 8].to_vec();
    named.extend_from_slice(&[0, 40]);
    named.extend_from_slice(&[0xab; 40]);
    let attacker = UdpSocket::bind("127.0.0.1:0").expect("bind the attacker's socket");
    attacker
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("set a read timeout");
    for datagram in [&record, &changed, &named] {
        attacker
            .send_to(datagram, listener(&gw))
            .expect("send from the attacker");
    }
    let mut buf = [0u8; 2048];
    assert!(
        attacker.recv_from(&mut buf).is_err(),
        "the attacker got an answer"
    );

    // The session stayed with the client: it is served, its observation notified there.
    let to_client = nat.to_client();
    assert_eq!(client.post(&format!("ps/{topic}/two?qos=1"), "two"), "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"two");
    mosquitto_pub(
        &gw.broker,
        Version::V311,
        &watched,
        b"still here",
        1,
        false,
        &[],
    );
    assert_eq!(
        client
            .notification(TIMEOUT)
            .expect("a notification at the client's address")
            .payload,
        b"still here"
    );
    assert!(nat.to_client() >= to_client + 2);
    assert!(
        attacker.recv_from(&mut buf).is_err(),
        "the attacker got the notification"
    );

    let refused = format!("{LISTENER_SYS}/datagrams/claims_refused");
    let values = sys_values_until(&gw.broker, &[&refused], |v| v[&refused] >= 3);
    assert_eq!(
        values.get(&refused),
        Some(&3),
        "each claim refused: {values:?}"
    );
    client.quit();
}
