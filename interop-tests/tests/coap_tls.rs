//! CoAP over TLS (RFC 8323): `coaps+tcp` (`gateway.coap.listeners.ssl`, TCP 5684 by
//! default) and `coaps+ws` (`gateway.coap.listeners.wss`, 8684), with certificates made by
//! openssl at test time. aiocoap's `tlsclient` and `ws` transports, trusting the test CA
//! through aiocoap's client credentials and checking the server's name, publish and
//! observe against mosquitto clients; plaintext CoAP on the TLS port and a handshake left
//! unfinished are closed without harming the clients beside them.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::time::Duration;

use interop_tests::certs::TestPki;
use interop_tests::coap::publish_and_observe;
use interop_tests::tls::{
    is_tls_alert_or_nothing, plaintext_to_tls_port, s_client, stalled_handshake, tls_gateway,
    TlsGateway,
};
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, AiocoapClient, MosquittoSub, Setting, Version,
    QUIET, TIMEOUT,
};

const SSL: &str = "GATEWAY_GATEWAY__COAP__LISTENERS__SSL__DEFAULT";
const WSS: &str = "GATEWAY_GATEWAY__COAP__LISTENERS__WSS__DEFAULT";

fn coaps_tcp_gateway(settings: Vec<Setting>) -> Option<TlsGateway> {
    tls_gateway(SSL, "SSL_OPTIONS", TestPki::new(), &[], settings)
}

fn coaps_tcp_client(gw: &TlsGateway) -> AiocoapClient {
    AiocoapClient::spawn_trusting(
        format!("coaps+tcp://{}:{}", gw.broker.host, gw.tls_port),
        &gw.pki.ca(),
    )
}

#[test]
fn aiocoap_publishes_and_observes_over_coaps_tcp() {
    let Some(gw) = coaps_tcp_gateway(Vec::new()) else {
        return;
    };
    // RFC 8323's ALPN protocol is chosen when offered; a client that offers only another
    // protocol is refused (RFC 7301 3.2).
    let report = s_client(&gw.broker.host, gw.tls_port, &gw.pki.ca(), Some("coap"));
    assert!(
        report.contains("Verify return code: 0 (ok)") && report.contains("ALPN protocol: coap"),
        "{report}"
    );
    let report = s_client(&gw.broker.host, gw.tls_port, &gw.pki.ca(), Some("h2"));
    assert!(report.contains("no application protocol"), "{report}");
    let mut client = coaps_tcp_client(&gw);
    publish_and_observe(&gw.broker, &mut client, "coaps-tcp");
}

#[test]
fn aiocoap_publishes_and_observes_over_coaps_ws() {
    let Some(gw) = tls_gateway(
        WSS,
        "SSL_OPTIONS",
        TestPki::new(),
        &[("ENABLE", "true".into())],
        Vec::new(),
    ) else {
        return;
    };
    let mut client = AiocoapClient::spawn_trusting(
        format!("coaps+ws://{}:{}", gw.broker.host, gw.tls_port),
        &gw.pki.ca(),
    );
    publish_and_observe(&gw.broker, &mut client, "coaps-ws");
}

/// aiocoap checks the server: trusting another CA, it refuses the certificate (the
/// gateway hears its alert) and nothing it meant to publish is routed.
#[test]
fn aiocoap_trusting_another_ca_refuses_the_server() {
    let Some(gw) = coaps_tcp_gateway(Vec::new()) else {
        return;
    };
    let topic = unique_topic("coaps-rogue");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V311, &[&topic], 1, &[]);
    let mut client = AiocoapClient::spawn_trusting(
        format!("coaps+tcp://{}:{}", gw.broker.host, gw.tls_port),
        &gw.pki.rogue_ca(),
    );
    let id = unique_client_id("coapsrogue");
    let error = client.request_error("POST", &format!("/ps/{topic}?clientid={id}"), b"x");
    assert!(!error.is_empty());
    let log = gw.broker.log_tail();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(sub.try_recv(QUIET).is_none(), "nothing was routed");
}

/// A CoAP client that forgets TLS (its CSM in plaintext) is closed with a TLS alert at most,
/// never a CoAP answer, and a TLS client beside it goes on.
#[test]
fn plaintext_coap_on_the_tls_port_is_closed_without_an_answer_and_others_go_on() {
    let Some(gw) = coaps_tcp_gateway(Vec::new()) else {
        return;
    };
    let topic = unique_topic("coaps-plain");
    let id = unique_client_id("coapsplain");
    let mut client = coaps_tcp_client(&gw);
    assert_eq!(
        client.observe(&format!("/ps/{topic}?clientid={id}")),
        "2.05"
    );
    // RFC 8323 over TCP: Len 0, TKL 0, code 7.01 (CSM), no options.
    let answer = plaintext_to_tls_port(&gw.broker.host, gw.tls_port, &[0x00, 0xe1]);
    assert!(
        is_tls_alert_or_nothing(&answer),
        "plaintext CoAP on the TLS port got {answer:02x?}"
    );
    let log = gw.broker.log_tail();
    assert!(log.contains("TLS handshake failed"), "{log}");
    mosquitto_pub(
        &gw.broker,
        Version::V311,
        &topic,
        b"still here",
        1,
        false,
        &[],
    );
    assert_eq!(client.notification().payload, b"still here");
}

/// The layers of a CoAP stream listener spend from `gateway.coap.heartbeat`: a client that
/// starts a handshake and never finishes it is closed then, and a client connected
/// meanwhile is served.
#[test]
fn a_tls_handshake_left_unfinished_is_closed_at_the_heartbeat() {
    let Some(gw) = coaps_tcp_gateway(vec![Setting::new("GATEWAY_GATEWAY__COAP__HEARTBEAT", "2s")])
    else {
        return;
    };
    let host = gw.broker.host.clone();
    let port = gw.tls_port;
    let stalled = std::thread::spawn(move || stalled_handshake(&host, port, 3 * TIMEOUT));
    let topic = unique_topic("coaps-stalled");
    let id = unique_client_id("coapsstall");
    let mut client = coaps_tcp_client(&gw);
    let answer = client.request("POST", &format!("/ps/{topic}?clientid={id}"), b"x", false);
    assert_eq!(answer.code, "2.04");
    let closed_after = stalled.join().unwrap();
    println!("an unfinished handshake was closed after {closed_after:?} (heartbeat 2 s)");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(8),
        "closed {closed_after:?} after the start of the handshake, heartbeat 2 s"
    );
    let log = gw.broker.log_tail();
    assert!(log.contains("TLS handshake timed out"), "{log}");
}
