//! CoAP over DTLS 1.2 from Mbed TLS 3.6 (`dtls_cid_coap`, the client that can offer RFC 9146
//! connection ids): it publishes and observes through the CoAP DTLS listener whether it
//! offers a connection id or not, against mosquitto clients on the MQTT side; a wrong
//! secret or an unknown identity fails its handshake; and a client that negotiated no
//! connection id is not served once a NAT moves it to another port (RFC 6347 ties such a
//! session to its address), while a `Nat` counts what went where.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::time::Duration;

use interop_tests::cid_client::{Cid, CidClient, CidOptions};
use interop_tests::dtls::{DtlsGateway, DtlsListener};
use interop_tests::nat::Nat;
use interop_tests::{mosquitto_pub, unique_topic, MosquittoSub, Version, TIMEOUT};

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
