#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! PROXY protocol behind HAProxy (Debian's): `send-proxy-v2` and `send-proxy` in front of
//! a TCP listener and `send-proxy-v2` in front of a TLS one. mosquitto clients bind to
//! distinct loopback addresses, so the address HAProxy names differs from HAProxy's own:
//! the ACL admits one client address and refuses another, and the log names the client.

use std::io::Write;
use std::process::Command;

use interop_tests::broker::wait_mqtt_ready;
use interop_tests::certs::TestPki;
use interop_tests::ports::server_port;
use interop_tests::process::Proc;
use interop_tests::{unique_topic, Broker, MosquittoSub, Setting, Version, TIMEOUT};

const ADMITTED: &str = "127.0.0.9";
const REFUSED: &str = "127.0.0.10";

struct Setup {
    broker: Broker,
    v2_port: u16,
    v1_port: u16,
    tls_port: u16,
    pki: TestPki,
    _haproxy: Proc,
    _dir: tempfile::TempDir,
}

fn setup() -> Option<Setup> {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    let mut file = std::fs::File::create(&acl).unwrap();
    writeln!(file, "allow ip:{ADMITTED} all #").unwrap();
    writeln!(file, "deny all all #").unwrap();
    drop(file);
    let pki = TestPki::new();
    let server = pki.server();
    let broker = Broker::start_gateway_only(
        "listeners behind HAProxy",
        &[
            Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string()),
            Setting::new("GATEWAY_LISTENERS__TCP__DEFAULT__PROXY_PROTOCOL", "true"),
            Setting::new("GATEWAY_LISTENERS__SSL__DEFAULT__PROXY_PROTOCOL", "true"),
            Setting::new("GATEWAY_LISTENERS__SSL__DEFAULT__BIND", "127.0.0.1:0"),
            Setting::new(
                "GATEWAY_LISTENERS__SSL__DEFAULT__TLS__CERTFILE",
                server.cert.display().to_string(),
            ),
            Setting::new(
                "GATEWAY_LISTENERS__SSL__DEFAULT__TLS__KEYFILE",
                server.key.display().to_string(),
            ),
        ],
    )?;
    let gateway_tls = broker.listener_port("ssl:default");
    // haproxy cannot report a port-0 bind.
    let (v2_port, v1_port, tls_port) = (server_port(), server_port(), server_port());
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend v2
    bind 127.0.0.1:{v2_port}
    default_backend gateway_v2
backend gateway_v2
    server gateway 127.0.0.1:{gw} send-proxy-v2
frontend v1
    bind 127.0.0.1:{v1_port}
    default_backend gateway_v1
backend gateway_v1
    server gateway 127.0.0.1:{gw} send-proxy
frontend tls
    bind 127.0.0.1:{tls_port}
    default_backend gateway_tls
backend gateway_tls
    server gateway 127.0.0.1:{gateway_tls} send-proxy-v2
",
            gw = broker.port
        ),
    )
    .unwrap();
    let mut cmd = Command::new(interop_tests::tools::sbin("haproxy"));
    cmd.arg("-db").arg("-f").arg(&config);
    let haproxy = Proc::spawn("haproxy", cmd);
    // haproxy binds every frontend before it serves any: once both plain ones carry an
    // MQTT exchange through to the gateway, the TLS one listens too.
    for port in [v2_port, v1_port] {
        wait_mqtt_ready(([127, 0, 0, 1], port).into(), TIMEOUT);
    }
    Some(Setup {
        broker,
        v2_port,
        v1_port,
        tls_port,
        pki,
        _haproxy: haproxy,
        _dir: dir,
    })
}

/// mosquitto_pub from `source` to `port`; Ok(()) or its stderr.
fn publish(port: u16, source: &str, topic: &str, extra: &[&str]) -> Result<(), String> {
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-A", source])
        .args(["-t", topic, "-m", "via haproxy", "-q", "1", "-V", "mqttv5"])
        .args(extra)
        .output()
        .expect("run mosquitto_pub");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn the_client_address_from_haproxy_reaches_the_acl_and_the_log() {
    let Some(s) = setup() else { return };
    let topic = unique_topic("proxied");

    // Admitted through send-proxy-v2: the subscription is granted.
    let v2 = s.v2_port.to_string();
    let mut sub = MosquittoSub::start(
        &s.broker,
        Version::V5,
        &[&topic],
        1,
        &["-p", &v2, "-A", ADMITTED],
    );
    assert_eq!(
        sub.granted,
        vec![1],
        "the address HAProxy names is admitted"
    );

    // Through send-proxy (version 1) and through TLS with send-proxy-v2.
    publish(s.v1_port, ADMITTED, &topic, &[]).unwrap();
    assert_eq!(sub.recv(TIMEOUT).payload, b"via haproxy");
    let ca = s.pki.ca();
    publish(
        s.tls_port,
        ADMITTED,
        &topic,
        &["--cafile", ca.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(sub.recv(TIMEOUT).payload, b"via haproxy");

    // Another client address through the same proxy is refused by the ACL.
    let refused = MosquittoSub::start(
        &s.broker,
        Version::V5,
        &[&topic],
        1,
        &["-p", &v2, "-A", REFUSED],
    );
    assert_eq!(
        refused.granted,
        vec![0x87],
        "the ACL sees {REFUSED}, not HAProxy's address"
    );

    let log = s.broker.log_tail();
    assert!(
        log.contains(&format!("client_addr={ADMITTED}:")),
        "the log names the client:\n{log}"
    );
    assert!(log.contains(&format!("client_addr={REFUSED}:")), "{log}");
}

#[test]
fn a_connection_without_the_header_is_closed() {
    let Some(s) = setup() else { return };
    let topic = unique_topic("unproxied");
    assert!(
        publish(s.broker.port, ADMITTED, &topic, &[]).is_err(),
        "a direct connection to a PROXY protocol listener must be refused"
    );
    let log = s.broker.log_tail();
    assert!(
        log.contains("PROXY protocol header"),
        "the log says why:\n{log}"
    );
}
