//! CoAP over TLS (RFC 8323): `coaps+tcp` (`gateway.coap.listeners.ssl`, TCP 5684 by
//! default) and `coaps+ws` (`gateway.coap.listeners.wss`, 8684), with certificates made by
//! openssl at test time. aiocoap's `tlsclient` and `ws` transports, trusting the test CA
//! through aiocoap's client credentials and checking the server's name, publish and
//! observe against mosquitto clients; libcoap's OpenSSL and GnuTLS clients present client
//! certificates that name them; plaintext CoAP on the TLS port and a handshake left
//! unfinished are closed without harming the clients beside them.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::Duration;

use interop_tests::certs::{Pair, TestPki};
use interop_tests::coap::publish_and_observe;
use interop_tests::process::{Line, Proc};
use interop_tests::tls::{
    is_tls_alert_or_nothing, logs_within, plaintext_to_tls_port, s_client, stalled_handshake,
    tls_gateway, TlsGateway,
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

/// aiocoap checks the server: trusting another CA, it refuses the certificate and nothing
/// it meant to publish is routed.
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
    assert!(error.contains("CERTIFICATE_VERIFY_FAILED"), "{error}");
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
    assert!(
        logs_within(
            &gw.broker,
            "TLS handshake failed error=received corrupt message"
        ),
        "{}",
        gw.broker.log_tail()
    );
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
    assert!(
        logs_within(&gw.broker, "TLS handshake timed out"),
        "{}",
        gw.broker.log_tail()
    );
}

/// Runs a libcoap client to its end: (exit success, stdout and stderr).
fn run(mut cmd: Command) -> (bool, String) {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(std::process::Stdio::null());
    let mut proc = Proc::spawn(&name, cmd);
    let mut out = String::new();
    loop {
        match proc.next_line(TIMEOUT) {
            Line::Line(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Line::Eof => break,
            Line::Timeout => panic!("{name} hung; stderr:\n{}", proc.stderr()),
        }
    }
    let status = proc.wait(TIMEOUT);
    out.push_str(&proc.stderr());
    (status.is_some_and(|s| s.success()), out)
}

/// libcoap's OpenSSL and GnuTLS clients over `coaps+tcp` with client certificates
/// (`verify = "required"`, `peer_cert_as_username` and `peer_cert_as_clientid` = "cn"): the
/// certificate's name is the user the ACL's `%u` sees and the one client id a request may
/// name; a client without a certificate, or with another CA's, gets no session.
#[test]
fn libcoap_clients_with_certificates_are_named_by_them() {
    let pki = TestPki::new();
    let ca = pki.ca();
    let acl = pki.dir().join("acl");
    std::fs::write(
        &acl,
        "allow all publish devices/%u/#\nallow all subscribe #\ndeny all all #\n",
    )
    .unwrap();
    let Some(gw) = tls_gateway(
        SSL,
        "SSL_OPTIONS",
        pki,
        &[
            ("SSL_OPTIONS__VERIFY", "required".into()),
            ("SSL_OPTIONS__CACERTFILE", ca.display().to_string()),
            ("SSL_OPTIONS__PEER_CERT_AS_USERNAME", "cn".into()),
            ("SSL_OPTIONS__PEER_CERT_AS_CLIENTID", "cn".into()),
        ],
        vec![Setting::new(
            "GATEWAY_AUTH__ACL_FILE",
            acl.display().to_string(),
        )],
    ) else {
        return;
    };
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &["devices/#"], 1, &[]);
    let device = gw.pki.client("device-1", "ca");
    let rogue = gw.pki.client("device-1", "rogue-ca");
    let post = |client: &str, pair: Option<&Pair>, path: &str, payload: &str| {
        let mut cmd = Command::new(client);
        cmd.args(["-m", "post", "-e", payload]);
        if let Some(pair) = pair {
            cmd.arg("-c").arg(&pair.cert).arg("-j").arg(&pair.key);
        }
        // The gateway's certificate is checked against the CA too.
        cmd.arg("-C").arg(&ca);
        cmd.arg(format!(
            "coaps+tcp://{}:{}{path}",
            gw.broker.host, gw.tls_port
        ));
        run(cmd)
    };
    for client in ["coap-client-openssl", "coap-client-gnutls"] {
        let payload = format!("{client} as device-1");
        // The query's user name is not the one that counts.
        let (ok, out) = post(
            client,
            Some(&device),
            "/ps/devices/device-1/state?username=device-2",
            &payload,
        );
        assert!(ok, "{client}: {out}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic.as_str(), msg.payload.as_slice()),
            ("devices/device-1/state", payload.as_bytes()),
            "{client}"
        );
        let (_, out) = post(
            client,
            Some(&device),
            "/ps/devices/device-2/state?username=device-2",
            "not mine",
        );
        assert!(out.contains("4.01"), "{client}: {out}");
        let (_, out) = post(
            client,
            Some(&device),
            "/ps/devices/device-1/state?clientid=device-2",
            "another client id",
        );
        assert!(out.contains("4.03"), "{client}: {out}");
        for (pair, what) in [(None, "no certificate"), (Some(&rogue), "another CA's")] {
            let (_, out) = post(client, pair, "/ps/devices/device-1/state", what);
            assert!(!out.contains("2.04"), "{client} with {what}: {out}");
        }
        assert!(
            sub.try_recv(Duration::from_millis(300)).is_none(),
            "{client}: nothing else was routed"
        );
    }
}
