//! What TLS listeners of every protocol are checked with: a gateway started with one TLS
//! listener on a port of its own and the test certificates, `openssl s_client` asking what
//! the server presents, and raw sockets for what no TLS client sends (plaintext, a
//! handshake left unfinished).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::listener_name;
use crate::certs::TestPki;
use crate::{Broker, Setting, TIMEOUT};

/// A gateway with one TLS listener on a port of its own.
pub struct TlsGateway {
    pub broker: Broker,
    pub tls_port: u16,
    pub pki: TestPki,
}

/// Starts a gateway whose listener `listener` (its environment prefix, e.g.
/// `GATEWAY_GATEWAY__STOMP__LISTENERS__SSL__DEFAULT`) listens on a port of the system's choosing with the
/// server certificate of `pki` in its table `tls_table` (`TLS` or `SSL_OPTIONS`), with
/// `extra` listener keys (relative to it, e.g. `SSL_OPTIONS__VERIFY`) and `settings`.
/// None in external mode.
pub fn tls_gateway(
    listener: &str,
    tls_table: &str,
    pki: TestPki,
    extra: &[(&str, String)],
    mut settings: Vec<Setting>,
) -> Option<TlsGateway> {
    let server = pki.server();
    let key = |k: &str| -> &'static str { Box::leak(format!("{listener}__{k}").into_boxed_str()) };
    settings.extend([
        Setting::new(key("BIND"), "127.0.0.1:0"),
        Setting::new(
            key(&format!("{tls_table}__CERTFILE")),
            server.cert.display().to_string(),
        ),
        Setting::new(
            key(&format!("{tls_table}__KEYFILE")),
            server.key.display().to_string(),
        ),
    ]);
    for (k, v) in extra {
        settings.push(Setting::new(key(k), v.clone()));
    }
    let broker = Broker::start_gateway_only("a TLS listener with test certificates", &settings)?;
    let port = broker.listener_port(&listener_name(listener));
    Some(TlsGateway {
        broker,
        tls_port: port,
        pki,
    })
}

/// What `openssl s_client` reports of a handshake with `host:port`, checking the server
/// against `ca` and offering `alpn` when given: its whole output.
pub fn s_client(host: &str, port: u16, ca: &Path, alpn: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("{host}:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-verify_ip", host]);
    if let Some(alpn) = alpn {
        cmd.args(["-alpn", alpn]);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client (Debian package openssl)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// True when `host:port` presents a certificate that `ca` signed for `host`.
pub fn verified_by(host: &str, port: u16, ca: &Path) -> bool {
    s_client(host, port, ca, None).contains("Verify return code: 0 (ok)")
}

/// Retries [`verified_by`] until it holds or `within` has passed.
pub fn verified_within(host: &str, port: u16, ca: &Path, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if verified_by(host, port, ca) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// True once the gateway's log holds `line`, waiting for it up to [`TIMEOUT`]: a connection
/// is closed as its handshake is given up, a moment before the log line says why.
pub fn logs_within(broker: &Broker, line: &str) -> bool {
    let until = Instant::now() + TIMEOUT;
    loop {
        if broker.log_tail().contains(line) {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `plaintext` to a TLS port as a client of the protocol would without TLS, and
/// returns everything the server sent back until it closed the connection (a TLS alert
/// at most). Panics when the connection is still open after [`TIMEOUT`].
pub fn plaintext_to_tls_port(host: &str, port: u16, plaintext: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect((host, port)).expect("connect to the TLS port");
    socket.write_all(plaintext).expect("send the plaintext");
    read_until_closed(&mut socket, TIMEOUT).expect("the server closes the connection")
}

/// True when `answer` is nothing or TLS alert records only: no byte of the protocol.
pub fn is_tls_alert_or_nothing(answer: &[u8]) -> bool {
    let mut rest = answer;
    while !rest.is_empty() {
        // A record: type 21 (alert), version 3.x, a two-byte length.
        let [21, 3, _, high, low, ..] = *rest else {
            return false;
        };
        let end = 5 + usize::from(u16::from_be_bytes([high, low]));
        let Some(after) = rest.get(end..) else {
            return false;
        };
        rest = after;
    }
    true
}

/// The first bytes of a TLS 1.2 ClientHello record that announces 512 bytes and never
/// sends the rest: a handshake that starts and does not finish.
pub const PARTIAL_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes to come
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // client version TLS 1.2
];

/// Starts a TLS handshake on `host:port` and never finishes it; returns how long the
/// server took to close the connection. Panics when it is still open after `at_most`.
pub fn stalled_handshake(host: &str, port: u16, at_most: Duration) -> Duration {
    let mut socket = TcpStream::connect((host, port)).expect("connect to the TLS port");
    let start = Instant::now();
    socket
        .write_all(PARTIAL_CLIENT_HELLO)
        .expect("send the start of a ClientHello");
    match read_until_closed(&mut socket, at_most) {
        Some(_) => start.elapsed(),
        None => panic!("a handshake left unfinished is still open after {at_most:?}"),
    }
}

/// Reads until the peer closes (or resets) the connection, or `timeout` passes (None).
fn read_until_closed(socket: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = socket.shutdown(Shutdown::Both);
            return None;
        }
        socket
            .set_read_timeout(Some(left))
            .expect("set a read timeout");
        match socket.read(&mut buf) {
            Ok(0) => return Some(received),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset is a close too: the server dropped the connection with input unread.
            Err(_) => return Some(received),
        }
    }
}

/// Starts the gateway with `env` (plus MQTT over TCP on port 0) and expects it to exit
/// with an error; returns its stderr.
pub fn failed_start(env: &[(String, String)]) -> String {
    let mut cmd = crate::broker::gateway_command();
    cmd.env("GATEWAY_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0")
        .env("GATEWAY_LISTENERS__WS__DEFAULT__ENABLE", "false")
        .env("GATEWAY_GATEWAY__MQTTSN__ENABLE", "false")
        .env("GATEWAY_GATEWAY__LWM2M__ENABLE", "false")
        .env(
            "GATEWAY_GATEWAY__COAP__LISTENERS__UDP__DEFAULT__ENABLE",
            "false",
        )
        .env(
            "GATEWAY_GATEWAY__COAP__LISTENERS__TCP__DEFAULT__ENABLE",
            "false",
        )
        .env(
            "GATEWAY_GATEWAY__STOMP__LISTENERS__TCP__DEFAULT__ENABLE",
            "false",
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = crate::process::Proc::spawn("gateway expected not to start", cmd);
    match proc.wait(TIMEOUT) {
        Some(status) => assert!(!status.success(), "the gateway must not start"),
        None => panic!("the gateway started despite a bad setting"),
    }
    proc.stderr()
}
