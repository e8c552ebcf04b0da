#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! MQTT over TLS (`ssl` listeners, 8883 by default) and over WebSocket over TLS (`wss`,
//! 8084), with certificates made by openssl at test time: mosquitto clients with
//! TLS 1.2 and 1.3, mutual TLS, a wrong CA, plain MQTT on the TLS port; paho-mqtt and
//! MQTT.js over TLS and WSS exchanging messages with TCP clients; a bad certificate file
//! stopping start-up with its name.

use std::process::Command;
use std::time::Duration;

use interop_tests::broker::gateway_command;
use interop_tests::carried::exchange_with_tcp_clients;
use interop_tests::certs::{Pair, TestPki};
use interop_tests::process::Proc;
use interop_tests::raw::{ConnectOpts, RawClient};
use interop_tests::{unique_topic, Broker, Carrier, Lib, MosquittoSub, Setting, Version, TIMEOUT};

struct TlsGateway {
    broker: Broker,
    tls_port: u16,
    pki: TestPki,
}

/// A gateway with an ssl listener (or a wss one, `kind` = "WSS") on a port of its own.
fn tls_gateway(kind: &str, pki: TestPki, extra: &[(&'static str, String)]) -> Option<TlsGateway> {
    tls_gateway_with(kind, pki, extra, Vec::new())
}

/// `tls_gateway` with `settings` besides the listener's.
fn tls_gateway_with(
    kind: &str,
    pki: TestPki,
    extra: &[(&'static str, String)],
    mut settings: Vec<Setting>,
) -> Option<TlsGateway> {
    let server = pki.server();
    let key = |k: &str| -> &'static str {
        Box::leak(format!("GATEWAY_LISTENERS__{kind}__DEFAULT__{k}").into_boxed_str())
    };
    settings.extend([
        Setting::new(key("BIND"), "127.0.0.1:0"),
        Setting::new(key("TLS__CERTFILE"), server.cert.display().to_string()),
        Setting::new(key("TLS__KEYFILE"), server.key.display().to_string()),
    ]);
    for (k, v) in extra {
        settings.push(Setting::new(key(k), v.clone()));
    }
    let broker = Broker::start_gateway_only("a TLS listener with test certificates", &settings)?;
    let port = broker.listener_port(&format!("{}:default", kind.to_lowercase()));
    Some(TlsGateway {
        broker,
        tls_port: port,
        pki,
    })
}

/// mosquitto_pub over TLS with these arguments; Ok(()) or its stderr.
fn mosquitto_pub_tls(gw: &TlsGateway, topic: &str, tls_args: &[&str]) -> Result<(), String> {
    let output = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &gw.tls_port.to_string(),
            "-t",
            topic,
            "-m",
            "over tls",
            "-q",
            "1",
        ])
        .args(tls_args)
        .output()
        .expect("run mosquitto_pub");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn mosquitto_clients_over_tls_reach_tcp_clients() {
    let Some(gw) = tls_gateway("SSL", TestPki::new(), &[]) else {
        return;
    };
    let ca = gw.pki.ca();
    for (sub_version, pub_version) in [("tlsv1.3", "tlsv1.2"), ("tlsv1.2", "tlsv1.3")] {
        let topic = unique_topic("tls-versions");
        let port = gw.tls_port.to_string();
        let mut sub = MosquittoSub::start(
            &gw.broker,
            Version::V5,
            &[&topic],
            1,
            &[
                "-p",
                &port,
                "--cafile",
                path(&ca),
                "--tls-version",
                sub_version,
            ],
        );
        mosquitto_pub_tls(
            &gw,
            &topic,
            &["--cafile", path(&ca), "--tls-version", pub_version],
        )
        .unwrap_or_else(|e| panic!("TLS publish with {pub_version} failed: {e}"));
        let msg = sub.recv(TIMEOUT);
        assert_eq!((msg.payload.as_slice(), msg.qos), (&b"over tls"[..], 1));
        // TLS to plain TCP and back: one router.
        let mut tcp_sub = MosquittoSub::start(&gw.broker, Version::V311, &[&topic], 1, &[]);
        mosquitto_pub_tls(&gw, &topic, &["--cafile", path(&ca)]).unwrap();
        assert_eq!(tcp_sub.recv(TIMEOUT).payload, b"over tls");
        assert_eq!(sub.recv(TIMEOUT).payload, b"over tls");
    }
}

/// mosquitto's `--tls-version` names the lowest version it accepts, so each version is
/// proved alone: a listener offering only it serves mosquitto at that version and refuses
/// a client that insists on the other.
#[test]
fn each_tls_version_alone_serves_mosquitto_clients() {
    let Some(gw12) = tls_gateway(
        "SSL",
        TestPki::new(),
        &[("TLS__VERSIONS", "[\"tlsv1.2\"]".into())],
    ) else {
        return;
    };
    let ca = gw12.pki.ca();
    let topic = unique_topic("tls12-only");
    mosquitto_pub_tls(
        &gw12,
        &topic,
        &["--cafile", path(&ca), "--tls-version", "tlsv1.2"],
    )
    .unwrap_or_else(|e| panic!("MQTT over TLS 1.2: {e}"));
    assert!(
        mosquitto_pub_tls(
            &gw12,
            &topic,
            &["--cafile", path(&ca), "--tls-version", "tlsv1.3"]
        )
        .is_err(),
        "a TLS 1.3-only client must be refused when only tlsv1.2 is configured"
    );

    let gw13 = tls_gateway(
        "SSL",
        TestPki::new(),
        &[("TLS__VERSIONS", "[\"tlsv1.3\"]".into())],
    )
    .unwrap();
    let ca = gw13.pki.ca();
    mosquitto_pub_tls(
        &gw13,
        &topic,
        &["--cafile", path(&ca), "--tls-version", "tlsv1.3"],
    )
    .unwrap_or_else(|e| panic!("MQTT over TLS 1.3: {e}"));
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", gw13.tls_port),
            "-tls1_2",
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a TLS 1.2-only client must be refused when only tlsv1.3 is configured: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_client_trusting_another_ca_and_plain_mqtt_are_refused() {
    let Some(gw) = tls_gateway("SSL", TestPki::new(), &[]) else {
        return;
    };
    let topic = unique_topic("tls-refused");
    let rogue = gw.pki.rogue_ca();
    assert!(
        mosquitto_pub_tls(&gw, &topic, &["--cafile", path(&rogue)]).is_err(),
        "a client that trusts another CA must not accept the gateway's certificate"
    );
    // A plain MQTT CONNECT on the TLS port gets no CONNACK; the connection is closed.
    let mut raw = RawClient::open_at(
        &format!("{}:{}", gw.broker.host, gw.tls_port),
        Version::V311,
    );
    raw.send(&interop_tests::raw::connect_packet(&ConnectOpts::new(
        Version::V311,
        "plain-on-tls",
    )));
    // What comes back is a TLS alert record, never a CONNACK.
    let packets = raw
        .read_until_closed(TIMEOUT)
        .expect("the connection is closed");
    assert!(
        packets
            .iter()
            .all(|p| p.kind != interop_tests::raw::CONNACK),
        "plain MQTT on the TLS port got {packets:?}"
    );
    let log = gw.broker.log_tail();
    assert!(
        log.contains("TLS handshake failed"),
        "the log says why:\n{log}"
    );
}

#[test]
fn mutual_tls_required_checks_client_certificates_against_the_ca() {
    let pki = TestPki::new();
    let ca = pki.ca();
    let Some(gw) = tls_gateway(
        "SSL",
        pki,
        &[
            ("TLS__VERIFY", "required".into()),
            ("TLS__CACERTFILE", ca.display().to_string()),
        ],
    ) else {
        return;
    };
    let topic = unique_topic("mtls");
    let Pair { cert, key } = gw.pki.client("device-1", "ca");
    mosquitto_pub_tls(
        &gw,
        &topic,
        &[
            "--cafile",
            path(&ca),
            "--cert",
            path(&cert),
            "--key",
            path(&key),
        ],
    )
    .unwrap_or_else(|e| panic!("a client with a certificate of the CA is accepted: {e}"));
    assert!(
        mosquitto_pub_tls(&gw, &topic, &["--cafile", path(&ca)]).is_err(),
        "a client without a certificate must be refused"
    );
    let rogue = gw.pki.client("intruder", "rogue-ca");
    assert!(
        mosquitto_pub_tls(
            &gw,
            &topic,
            &[
                "--cafile",
                path(&ca),
                "--cert",
                path(&rogue.cert),
                "--key",
                path(&rogue.key)
            ]
        )
        .is_err(),
        "a client certificate of another CA must be refused"
    );
    let mut carrier = Carrier::tls(gw.tls_port, &ca);
    carrier.client_cert = Some((cert, key));
    for lib in Lib::ALL {
        let mut client = interop_tests::ScriptClient::connected_via(
            lib,
            Version::V5,
            &gw.broker,
            &carrier,
            &interop_tests::unique_client_id("mtls"),
        );
        client.disconnect();
    }
}

#[test]
fn optional_verification_accepts_clients_without_a_certificate() {
    let pki = TestPki::new();
    let ca = pki.ca();
    let Some(gw) = tls_gateway(
        "SSL",
        pki,
        &[
            ("TLS__VERIFY", "optional".into()),
            ("TLS__CACERTFILE", ca.display().to_string()),
        ],
    ) else {
        return;
    };
    let topic = unique_topic("tls-optional");
    mosquitto_pub_tls(&gw, &topic, &["--cafile", path(&ca)]).unwrap();
    let Pair { cert, key } = gw.pki.client("device-2", "ca");
    mosquitto_pub_tls(
        &gw,
        &topic,
        &[
            "--cafile",
            path(&ca),
            "--cert",
            path(&cert),
            "--key",
            path(&key),
        ],
    )
    .unwrap();
    let rogue = gw.pki.client("intruder", "rogue-ca");
    assert!(mosquitto_pub_tls(
        &gw,
        &topic,
        &[
            "--cafile",
            path(&ca),
            "--cert",
            path(&rogue.cert),
            "--key",
            path(&rogue.key)
        ]
    )
    .is_err());
}

#[test]
fn paho_and_mqttjs_over_tls_exchange_messages_with_tcp_clients() {
    let Some(gw) = tls_gateway("SSL", TestPki::new(), &[]) else {
        return;
    };
    let carrier = Carrier::tls(gw.tls_port, &gw.pki.ca());
    for lib in Lib::ALL {
        exchange_with_tcp_clients(&gw.broker, lib, Version::V5, &carrier);
    }
    exchange_with_tcp_clients(&gw.broker, Lib::Paho, Version::V311, &carrier);
}

#[test]
fn paho_and_mqttjs_over_wss_exchange_messages_with_tcp_clients() {
    let Some(gw) = tls_gateway("WSS", TestPki::new(), &[]) else {
        return;
    };
    let carrier = Carrier::wss(gw.tls_port, &gw.pki.ca());
    for lib in Lib::ALL {
        exchange_with_tcp_clients(&gw.broker, lib, Version::V311, &carrier);
    }
    exchange_with_tcp_clients(&gw.broker, Lib::MqttJs, Version::V5, &carrier);
}

/// Starts the gateway with `env` and expects it to exit with an error; returns its stderr.
fn failed_start(env: &[(String, String)]) -> String {
    let mut cmd = gateway_command();
    cmd.env("GATEWAY_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0")
        .env("GATEWAY_LISTENERS__WS__DEFAULT__ENABLE", "false");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn("gateway with a bad certificate", cmd);
    match proc.wait(TIMEOUT) {
        Some(status) => assert!(!status.success(), "the gateway must not start"),
        None => panic!("the gateway started despite a bad certificate file"),
    }
    proc.stderr()
}

#[test]
fn a_bad_certificate_file_stops_start_up_naming_the_key_and_the_file() {
    if interop_tests::external_mode() {
        interop_tests::skip_external("[a gateway the test starts: start-up checks]");
        return;
    }
    let pki = TestPki::new();
    let garbage = pki.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = pki.dir().join("missing.pem");
    let server = pki.server();
    for (cert, key, named, setting) in [
        (&garbage, &server.key, &garbage, "certfile"),
        (&missing, &server.key, &missing, "certfile"),
        (&server.cert, &garbage, &garbage, "keyfile"),
    ] {
        let stderr = failed_start(&[
            (
                "GATEWAY_LISTENERS__SSL__DEFAULT__BIND".into(),
                "127.0.0.1:0".into(),
            ),
            (
                "GATEWAY_LISTENERS__SSL__DEFAULT__TLS__CERTFILE".into(),
                cert.display().to_string(),
            ),
            (
                "GATEWAY_LISTENERS__SSL__DEFAULT__TLS__KEYFILE".into(),
                key.display().to_string(),
            ),
        ]);
        assert!(
            stderr.contains(&named.display().to_string()),
            "the error names {}:\n{stderr}",
            named.display()
        );
        let key_at_fault = format!("listeners.ssl.default.tls.{setting}");
        assert!(
            stderr.contains(&key_at_fault),
            "the error names {key_at_fault}:\n{stderr}"
        );
    }
}

#[test]
fn a_self_signed_certificate_is_made_up_with_a_warning() {
    let Some(broker) = Broker::start_gateway_only(
        "a self-signed TLS listener",
        &[
            Setting::new("GATEWAY_LISTENERS__SSL__DEFAULT__BIND", "127.0.0.1:0"),
            Setting::new("GATEWAY_LISTENERS__SSL__DEFAULT__TLS__SELF_SIGNED", "true"),
        ],
    ) else {
        return;
    };
    let port = broker.listener_port("ssl:default");
    assert!(
        broker.log_tail().contains("self-signed"),
        "{}",
        broker.log_tail()
    );
    // mosquitto_pub with --insecure still checks the chain; openssl s_client only reports.
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("CONNECTION ESTABLISHED"), "{text}");
    std::thread::sleep(Duration::from_millis(10));
}

/// Overwrites the server certificate and key with ones issued by another CA.
fn replace_server_certificate(gw: &TlsGateway, with: &TestPki) {
    let (old, new) = (gw.pki.server(), with.server());
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
}

/// Retries a TLS publish trusting `ca` until it succeeds or `deadline` passes.
fn publishes_within(gw: &TlsGateway, ca: &std::path::Path, deadline: Duration) -> bool {
    let until = std::time::Instant::now() + deadline;
    let topic = unique_topic("tls-reload");
    while std::time::Instant::now() < until {
        if mosquitto_pub_tls(gw, &topic, &["--cafile", path(ca)]).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn certificates_are_reloaded_on_sighup_and_when_their_files_change() {
    let Some(gw) = tls_gateway("SSL", TestPki::new(), &[]) else {
        return;
    };
    let first_ca = gw.pki.ca();
    let topic = unique_topic("tls-reload");
    mosquitto_pub_tls(&gw, &topic, &["--cafile", path(&first_ca)]).unwrap();

    // SIGHUP: new connections get the new certificate.
    let second = TestPki::new();
    replace_server_certificate(&gw, &second);
    gw.broker.signal(libc::SIGHUP);
    assert!(
        publishes_within(&gw, &second.ca(), TIMEOUT),
        "after SIGHUP the certificate of the second CA is served:\n{}",
        gw.broker.log_tail()
    );
    assert!(mosquitto_pub_tls(&gw, &topic, &["--cafile", path(&first_ca)]).is_err());

    // A change of the files alone is noticed too.
    let third = TestPki::new();
    replace_server_certificate(&gw, &third);
    assert!(
        publishes_within(&gw, &third.ca(), TIMEOUT),
        "a changed certificate file is picked up without a signal:\n{}",
        gw.broker.log_tail()
    );

    // A broken file keeps the certificate in use.
    std::fs::write(gw.pki.server().cert, "broken").unwrap();
    gw.broker.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    mosquitto_pub_tls(&gw, &topic, &["--cafile", path(&third.ca())])
        .expect("a failed reload keeps the previous certificate");
    assert!(gw.broker.log_tail().contains("reload failed"));
}

/// `peer_cert_as_username = "cn"` and `peer_cert_as_clientid = "cn"`: the certificate, not
/// CONNECT, names the client, and the ACL's `%u` rule follows it.
#[test]
fn the_certificate_common_name_is_the_username_and_client_id() {
    let pki = TestPki::new();
    let ca = pki.ca();
    let acl = pki.dir().join("acl");
    std::fs::write(&acl, "allow all all devices/%u/#\ndeny all all #\n").unwrap();
    let acl_setting = Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string());
    let Some(gw) = tls_gateway_with(
        "SSL",
        pki,
        &[
            ("TLS__VERIFY", "required".into()),
            ("TLS__CACERTFILE", ca.display().to_string()),
            ("TLS__PEER_CERT_AS_USERNAME", "cn".into()),
            ("TLS__PEER_CERT_AS_CLIENTID", "cn".into()),
        ],
        vec![acl_setting],
    ) else {
        return;
    };
    let port = gw.tls_port;
    let subscribe_as = |device: &str| {
        let pair = gw.pki.client(device, "ca");
        let port = port.to_string();
        MosquittoSub::start(
            &gw.broker,
            Version::V311,
            &["devices/device-1/#"],
            1,
            &[
                "-p",
                &port,
                "--cafile",
                path(&ca),
                "--cert",
                path(&pair.cert),
                "--key",
                path(&pair.key),
                "-u",
                "impostor",
                "-i",
                "chosen-id",
            ],
        )
    };
    assert_eq!(
        subscribe_as("device-1").granted,
        vec![1],
        "device-1 may use devices/device-1/#"
    );
    assert_eq!(
        subscribe_as("device-2").granted,
        vec![0x80],
        "device-2 may not, whatever CONNECT says"
    );
    let log = gw.broker.log_tail();
    assert!(
        log.contains("client_id=\"device-1\""),
        "the client id is the certificate's:\n{log}"
    );
    assert!(!log.contains("chosen-id"), "{log}");
}

/// The same certificate identity over WSS as over ssl: a client whose certificate says
/// CN=dev1 is dev1 whatever user name and client id its CONNECT claims, so it cannot claim
/// `admin`'s rights by naming itself admin; a certificate that says admin can.
#[test]
fn the_certificate_common_name_names_the_client_over_wss_too() {
    let pki = TestPki::new();
    let ca = pki.ca();
    let acl = pki.dir().join("acl");
    std::fs::write(&acl, "allow user:admin subscribe admin/#\ndeny all all #\n").unwrap();
    let acl_setting = Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string());
    let Some(gw) = tls_gateway_with(
        "WSS",
        pki,
        &[
            ("TLS__VERIFY", "required".into()),
            ("TLS__CACERTFILE", ca.display().to_string()),
            ("TLS__PEER_CERT_AS_USERNAME", "cn".into()),
            ("TLS__PEER_CERT_AS_CLIENTID", "cn".into()),
        ],
        vec![acl_setting],
    ) else {
        return;
    };
    for lib in Lib::ALL {
        for (device, granted) in [("dev1", 0x80u8), ("admin", 1)] {
            let pair = gw.pki.client(device, "ca");
            let mut carrier = Carrier::wss(gw.tls_port, &ca);
            carrier.client_cert = Some((pair.cert, pair.key));
            let mut client =
                interop_tests::ScriptClient::spawn_via(lib, Version::V311, &gw.broker, &carrier);
            client.connect_ok(serde_json::json!({
                "client_id": "chosen-id",
                "username": "admin",
            }));
            assert_eq!(
                client.subscribe("admin/#", 1),
                granted,
                "{lib:?} with the certificate of {device}, claiming admin in CONNECT"
            );
            client.disconnect();
        }
    }
    let log = gw.broker.log_tail();
    assert!(
        log.contains("client_id=\"dev1\""),
        "the client id is the certificate's:\n{log}"
    );
    assert!(!log.contains("chosen-id"), "{log}");
}
