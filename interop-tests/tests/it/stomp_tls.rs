//! STOMP over TLS (`gateway.stomp.listeners.ssl`, 61614 by default) and over WebSocket over
//! TLS (`gateway.stomp.listeners.wss`, 15673), with certificates made by openssl at test
//! time: stomp.py over TLS and @stomp/stompjs over WSS exchanging messages with mosquitto
//! clients, a client certificate as the STOMP login that the ACL follows, plaintext on the
//! TLS port, a handshake left unfinished, certificates reloaded, and start-up refusing a
//! bad certificate file by its key. The TLS layer is the kit's, which MQTT's ssl and wss
//! listeners use too.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::time::Duration;

use interop_tests::certs::TestPki;
use interop_tests::stomp::StompClient;
use interop_tests::tls::{
    failed_start, is_tls_alert_or_nothing, logs_within, plaintext_to_tls_port, stalled_handshake,
    tls_gateway, verified_by, verified_within, TlsGateway,
};
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, MosquittoSub, Setting, StompJs, StompPy,
    Version, TIMEOUT,
};
use serde_json::json;

const SSL: &str = "GATEWAY_GATEWAY__STOMP__LISTENERS__SSL__DEFAULT";
const WSS: &str = "GATEWAY_GATEWAY__STOMP__LISTENERS__WSS__DEFAULT";

fn stomp_tls_gateway(extra: &[(&str, String)], settings: Vec<Setting>) -> Option<TlsGateway> {
    tls_gateway(SSL, "SSL_OPTIONS", TestPki::new(), extra, settings)
}

/// stomp.py connected over TLS to the gateway's STOMP TLS port, checking its certificate.
fn stomp_py_tls(gw: &TlsGateway, extra: serde_json::Value) -> StompClient {
    let mut client = StompPy::spawn();
    client.connect_tls(&gw.broker, gw.tls_port, &gw.pki.ca(), None, extra);
    let connected = client.expect("connected");
    assert_eq!(connected.header("version"), Some("1.2"));
    client
}

/// Subscribes `client` to `filter` and waits for the receipt saying it is in place.
fn subscribe(client: &mut StompClient, filter: &str) {
    client.run(json!({
        "cmd": "subscribe", "destination": filter, "id": "s", "ack": "auto",
        "headers": {"receipt": "subscribed"},
    }));
    assert_eq!(
        client.expect("receipt").header("receipt-id"),
        Some("subscribed")
    );
}

/// Messages both ways between `client` and mosquitto clients.
fn exchange_with_mosquitto(broker: &Broker, client: &mut StompClient, label: &str) {
    let prefix = unique_topic(label);
    subscribe(client, &format!("{prefix}/down/+"));
    mosquitto_pub(
        broker,
        Version::V5,
        &format!("{prefix}/down/a"),
        b"to stomp\0over tls",
        1,
        false,
        &[],
    );
    let message = client.expect("message");
    assert_eq!(message.body, b"to stomp\0over tls");
    assert_eq!(
        message.header("destination"),
        Some(format!("{prefix}/down/a").as_str())
    );

    let mut sub = MosquittoSub::start(broker, Version::V311, &[&format!("{prefix}/up/#")], 1, &[]);
    client.send(
        &format!("{prefix}/up/x"),
        b"from stomp over tls",
        json!({"receipt": "sent"}),
    );
    assert_eq!(client.expect("receipt").header("receipt-id"), Some("sent"));
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice()),
        (
            format!("{prefix}/up/x").as_str(),
            &b"from stomp over tls"[..]
        )
    );
}

#[test]
fn stomp_py_over_tls_exchanges_messages_with_mosquitto_clients() {
    let Some(gw) = stomp_tls_gateway(&[], Vec::new()) else {
        return;
    };
    let host = gw.broker.host.clone();
    assert!(verified_by(&host, gw.tls_port, &gw.pki.ca()));
    assert!(
        !verified_by(&host, gw.tls_port, &gw.pki.rogue_ca()),
        "a client trusting another CA does not accept the certificate"
    );
    let mut client = stomp_py_tls(&gw, json!({}));
    exchange_with_mosquitto(&gw.broker, &mut client, "stomp-tls");
    client.run(json!({"cmd": "disconnect", "receipt": "bye"}));
    assert_eq!(client.expect("receipt").header("receipt-id"), Some("bye"));
}

#[test]
fn stompjs_over_wss_exchanges_messages_with_mosquitto_clients() {
    let Some(gw) = tls_gateway(
        WSS,
        "SSL_OPTIONS",
        TestPki::new(),
        &[("ENABLE", "true".into())],
        Vec::new(),
    ) else {
        return;
    };
    let url = format!("wss://{}:{}/ws", gw.broker.host, gw.tls_port);
    let mut js = StompJs::spawn_url(&url, Some(&gw.pki.ca()));
    js.connect_ws(json!({}));
    assert_eq!(js.expect("connected").header("version"), Some("1.2"));
    let prefix = unique_topic("stomp-wss");
    js.run(json!({"cmd": "receipt", "id": "sub-r"}));
    js.run(json!({"cmd": "subscribe", "destination": format!("{prefix}/down/#"), "id": "s", "ack": "auto"}));
    js.send(
        &format!("{prefix}/barrier"),
        b"",
        json!({"receipt": "sub-r"}),
    );
    js.expect("receipt");
    mosquitto_pub(
        &gw.broker,
        Version::V5,
        &format!("{prefix}/down/x"),
        b"to the browser over wss",
        1,
        false,
        &[],
    );
    assert_eq!(js.expect("message").body, b"to the browser over wss");
    let mut sub = MosquittoSub::start(
        &gw.broker,
        Version::V5,
        &[&format!("{prefix}/up/#")],
        1,
        &[],
    );
    js.run(json!({"cmd": "send", "destination": format!("{prefix}/up/b"), "body": "00ff00", "binary": true}));
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice()),
        (format!("{prefix}/up/b").as_str(), &[0u8, 0xff, 0][..])
    );
}

/// `peer_cert_as_username = "cn"` and `peer_cert_as_clientid = "cn"`: the certificate, not
/// CONNECT's `login` and `client-id`, names the client, and the ACL's `%u` follows it.
#[test]
fn a_client_certificate_is_the_stomp_login_and_the_acl_follows_it() {
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
    let device = gw.pki.client("device-1", "ca");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V311, &["devices/#"], 1, &[]);
    let mut client = StompPy::spawn();
    // CONNECT claims device-2 and a client id of its choosing; the certificate says device-1.
    client.connect_tls(
        &gw.broker,
        gw.tls_port,
        &ca,
        Some((&device.cert, &device.key)),
        json!({"login": "device-2", "client_id": unique_client_id("chosen")}),
    );
    let connected = client.expect("connected");
    assert_eq!(connected.header("session"), Some("device-1"));
    client.send("devices/device-1/state", b"mine", json!({"receipt": "own"}));
    assert_eq!(client.expect("receipt").header("receipt-id"), Some("own"));
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice()),
        ("devices/device-1/state", &b"mine"[..])
    );
    // What CONNECT claimed gives no right: device-2's topics are refused.
    client.send(
        "devices/device-2/state",
        b"not mine",
        json!({"receipt": "other"}),
    );
    let error = client.expect("error");
    assert!(
        error
            .header("message")
            .is_some_and(|m| m.contains("not authorized")),
        "{error:?}"
    );
    assert!(
        sub.try_recv(Duration::from_millis(300)).is_none(),
        "nothing of device-2's was routed"
    );
}

/// A STOMP client that forgets TLS is closed with a TLS alert at most, never a STOMP
/// answer, and the TLS clients beside it go on.
#[test]
fn plaintext_stomp_on_the_tls_port_is_closed_without_an_answer_and_others_go_on() {
    let Some(gw) = stomp_tls_gateway(&[], Vec::new()) else {
        return;
    };
    let prefix = unique_topic("stomp-tls-plain");
    let mut client = stomp_py_tls(&gw, json!({}));
    subscribe(&mut client, &format!("{prefix}/#"));
    let answer = plaintext_to_tls_port(
        &gw.broker.host,
        gw.tls_port,
        b"CONNECT\naccept-version:1.2\nhost:gw\n\n\0",
    );
    assert!(
        is_tls_alert_or_nothing(&answer),
        "plaintext STOMP on the TLS port got {:?}",
        String::from_utf8_lossy(&answer)
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
        &format!("{prefix}/after"),
        b"still here",
        1,
        false,
        &[],
    );
    assert_eq!(client.expect("message").body, b"still here");
}

/// The handshake spends from `gateway.stomp.idle_timeout`, the time allowed from accept to
/// a complete CONNECT: a client that starts a handshake and never finishes it is closed
/// then, and a client connected meanwhile is served.
#[test]
fn a_tls_handshake_left_unfinished_is_closed_at_the_idle_timeout() {
    let Some(gw) = stomp_tls_gateway(
        &[],
        vec![Setting::new("GATEWAY_GATEWAY__STOMP__IDLE_TIMEOUT", "2s")],
    ) else {
        return;
    };
    let host = gw.broker.host.clone();
    let port = gw.tls_port;
    let stalled = std::thread::spawn(move || stalled_handshake(&host, port, 3 * TIMEOUT));
    let mut client = stomp_py_tls(&gw, json!({}));
    exchange_with_mosquitto(&gw.broker, &mut client, "stomp-tls-stalled");
    let closed_after = stalled.join().unwrap();
    println!("an unfinished handshake was closed after {closed_after:?} (idle_timeout 2 s)");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(8),
        "closed {closed_after:?} after the start of the handshake, idle_timeout 2 s"
    );
    assert!(
        logs_within(&gw.broker, "TLS handshake timed out"),
        "{}",
        gw.broker.log_tail()
    );
}

#[test]
fn certificates_are_reloaded_on_sighup_and_when_their_files_change() {
    let Some(gw) = stomp_tls_gateway(&[], Vec::new()) else {
        return;
    };
    let host = gw.broker.host.clone();
    assert!(verified_by(&host, gw.tls_port, &gw.pki.ca()));
    let replace_with = |other: &TestPki| {
        let (old, new) = (gw.pki.server(), other.server());
        std::fs::copy(&new.cert, &old.cert).unwrap();
        std::fs::copy(&new.key, &old.key).unwrap();
    };
    let second = TestPki::new();
    replace_with(&second);
    gw.broker.signal(libc::SIGHUP);
    assert!(
        verified_within(&host, gw.tls_port, &second.ca(), TIMEOUT),
        "after SIGHUP the second CA's certificate is served:\n{}",
        gw.broker.log_tail()
    );
    assert!(!verified_by(&host, gw.tls_port, &gw.pki.ca()));
    let third = TestPki::new();
    replace_with(&third);
    assert!(
        verified_within(&host, gw.tls_port, &third.ca(), TIMEOUT),
        "a changed file is picked up without a signal:\n{}",
        gw.broker.log_tail()
    );
    let log = gw.broker.log_tail();
    assert!(
        log.contains("gateway.stomp.listeners.ssl.default") && log.contains("reloaded"),
        "{log}"
    );
}

/// A certificate file that cannot be used stops start-up with the key to fix and the file,
/// for every STOMP and CoAP TLS listener.
#[test]
fn a_bad_certificate_file_stops_start_up_naming_the_key() {
    if interop_tests::external_mode() {
        interop_tests::skip_external("[a gateway the test starts: start-up checks]");
        return;
    }
    let pki = TestPki::new();
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = pki.dir().join("missing.pem");
    let server = pki.server();
    for (table, env) in [
        (
            "gateway.stomp.listeners.ssl.default",
            "GATEWAY_GATEWAY__STOMP__LISTENERS__SSL__DEFAULT",
        ),
        (
            "gateway.stomp.listeners.wss.default",
            "GATEWAY_GATEWAY__STOMP__LISTENERS__WSS__DEFAULT",
        ),
        (
            "gateway.coap.listeners.ssl.default",
            "GATEWAY_GATEWAY__COAP__LISTENERS__SSL__DEFAULT",
        ),
        (
            "gateway.coap.listeners.wss.default",
            "GATEWAY_GATEWAY__COAP__LISTENERS__WSS__DEFAULT",
        ),
    ] {
        for (cert, key, named, setting) in [
            (&missing, &server.key, &missing, "certfile"),
            (&garbage, &server.key, &garbage, "certfile"),
            (&server.cert, &garbage, &garbage, "keyfile"),
        ] {
            let stderr = failed_start(&[
                (format!("{env}__ENABLE"), "true".into()),
                (format!("{env}__BIND"), "127.0.0.1:0".into()),
                (
                    format!("{env}__SSL_OPTIONS__CERTFILE"),
                    cert.display().to_string(),
                ),
                (
                    format!("{env}__SSL_OPTIONS__KEYFILE"),
                    key.display().to_string(),
                ),
            ]);
            let key_at_fault = format!("{table}.ssl_options.{setting}");
            assert!(
                stderr.contains(&key_at_fault) && stderr.contains(&named.display().to_string()),
                "the error names {key_at_fault} and {}:\n{stderr}",
                named.display()
            );
        }
    }
}

/// On the defaults, which give no certificate, the TLS listeners stay down and say once
/// which keys would start them.
#[test]
fn without_a_certificate_the_tls_listeners_say_which_keys_to_set() {
    let Some(broker) = Broker::start_gateway_only("the gateway's log", &[]) else {
        return;
    };
    let log = broker.log_tail();
    for table in [
        "gateway.stomp.listeners.ssl.default",
        "gateway.coap.listeners.ssl.default",
    ] {
        let line = format!(
            "{table}: not started: it has no certificate (set {table}.ssl_options.certfile and \
             {table}.ssl_options.keyfile, or {table}.ssl_options.self_signed = true)"
        );
        assert_eq!(log.matches(&line).count(), 1, "{line}\nin:\n{log}");
    }
}
