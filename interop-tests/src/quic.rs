//! An MQTT over QUIC client: aioquic (PyPI) runs QUIC, `py/quic_client.py` speaks MQTT
//! 3.1.1 or 5 on the one bidirectional stream, driven by one JSON command per line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{Line, Proc};
use crate::{from_hex, to_hex, Msg, Version};

/// The script gives up on a command after 10 s; a little longer here lets its own report
/// arrive first.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

pub struct QuicClient {
    proc: Proc,
}

/// What the connection's end looked like to the client.
#[derive(Clone, Debug, PartialEq)]
pub enum QuicEnd {
    /// A DISCONNECT packet with this reason code.
    Disconnect(u8),
    /// The QUIC connection closed, this long after it was opened.
    Closed { error_code: u64, after: Duration },
}

impl QuicClient {
    /// A client for the QUIC listener on `port` of 127.0.0.1 that trusts `cafile` for
    /// "localhost"; no packet is sent yet.
    pub fn spawn(port: u16, cafile: &Path) -> QuicClient {
        let python = crate::tools::python();
        let mut cmd = Command::new(python);
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/quic_client.py"))
            .arg("127.0.0.1")
            .arg(port.to_string())
            .arg(cafile);
        let mut client = QuicClient {
            proc: Proc::spawn("aioquic MQTT client", cmd),
        };
        client.next_event("started");
        client
    }

    /// A client that completed the QUIC handshake with ALPN `mqtt` and MQTT's CONNECT.
    pub fn connected(port: u16, cafile: &Path, version: Version, client_id: &str) -> QuicClient {
        let mut client = QuicClient::spawn(port, cafile);
        client.handshake(&["mqtt"]).expect("QUIC handshake");
        let connack = client.run(
            "connect",
            json!({ "version": version.arg(), "client_id": client_id }),
            "connack",
        );
        assert_eq!(connack["reason_code"], 0, "CONNACK: {connack}");
        client
    }

    /// The QUIC handshake offering these ALPN protocols: the one agreed on, or why it failed.
    pub fn handshake(&mut self, alpn: &[&str]) -> Result<String, String> {
        self.handshake_with(json!({ "alpn": alpn }))
            .map(|event| event["alpn"].as_str().unwrap_or_default().to_owned())
    }

    /// The QUIC handshake with ALPN `mqtt`, presenting this client certificate.
    pub fn handshake_with_certificate(&mut self, cert: &Path, key: &Path) -> Result<(), String> {
        self.handshake_with(json!({ "cert": cert, "key": key }))
            .map(|_| ())
    }

    /// MQTT's CONNECT on a connection whose handshake is done: the CONNACK's reason code,
    /// or None when the connection closed instead.
    pub fn try_connect(
        &mut self,
        version: Version,
        client_id: &str,
        username: Option<&str>,
    ) -> Option<u8> {
        let fields = json!({ "cmd": "connect", "version": version.arg(), "client_id": client_id, "username": username });
        self.send(&fields);
        let event = self.event();
        match event["event"].as_str() {
            Some("connack") => event["reason_code"].as_u64().map(|code| code as u8),
            Some("error") => None,
            _ => panic!("aioquic client: expected connack, got {event}"),
        }
    }

    /// MQTT's CONNECT with credentials (a clean session) on a connection whose handshake is
    /// done: the CONNACK's reason code, or None when the connection closed instead.
    pub fn try_login(
        &mut self,
        version: Version,
        client_id: &str,
        credentials: Option<(&str, &str)>,
    ) -> Option<u8> {
        let mut fields =
            json!({ "cmd": "connect", "version": version.arg(), "client_id": client_id });
        if let Some((username, password)) = credentials {
            fields["username"] = json!(username);
            fields["password"] = json!(password);
        }
        self.send(&fields);
        let event = self.event();
        match event["event"].as_str() {
            Some("connack") => event["reason_code"].as_u64().map(|code| code as u8),
            Some("error") => None,
            _ => panic!("aioquic client: expected connack, got {event}"),
        }
    }

    /// A new connection (the current one closed first) resuming the TLS session of the
    /// last, with CONNECT sent before the handshake completes: as 0-RTT data when the
    /// gateway's ticket allows it. The `handshake` event: `session_resumed`,
    /// `early_data_accepted` and the CONNACK's `reason_code`.
    pub fn resume_with_early_connect(&mut self, version: Version, client_id: &str) -> Value {
        let early = json!({ "version": version.arg(), "client_id": client_id });
        self.handshake_with(json!({ "resume": true, "early": early }))
            .unwrap_or_else(|error| panic!("resumed handshake failed: {error}"))
    }

    fn handshake_with(&mut self, mut fields: Value) -> Result<Value, String> {
        fields["cmd"] = json!("handshake");
        self.send(&fields);
        let event = self.event();
        match event["event"].as_str() {
            Some("handshake") => Ok(event),
            Some("error") => Err(event["error"].to_string()),
            _ => panic!("aioquic client: unexpected {event}"),
        }
    }

    /// Sends bytes on the stream (opening it), whatever they are.
    pub fn send_raw(&mut self, data: &[u8]) {
        self.run("send_raw", json!({ "data": to_hex(data) }), "sent");
    }

    /// Subscribes; the granted QoS.
    pub fn subscribe(&mut self, topic: &str, qos: u8) -> u8 {
        let event = self.run("subscribe", json!({ "topic": topic, "qos": qos }), "suback");
        event["granted"][0].as_u64().unwrap_or(255) as u8
    }

    /// Publishes and, at QoS 1, waits for the PUBACK and returns its reason code.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8) -> Option<u8> {
        let fields = json!({ "topic": topic, "payload": to_hex(payload), "qos": qos });
        if qos == 0 {
            self.run("publish", fields, "published");
            None
        } else {
            let event = self.run("publish", fields, "puback");
            event["reason_code"].as_u64().map(|code| code as u8)
        }
    }

    /// Moves the connection to a new UDP socket (another local port); the new port.
    pub fn migrate(&mut self) -> u16 {
        let event = self.run("migrate", json!({}), "migrated");
        event["local_port"].as_u64().unwrap_or_default() as u16
    }

    pub fn ping(&mut self) {
        self.run("ping", json!({}), "pingresp");
    }

    /// The next message delivered, failing the test when something else comes.
    pub fn recv(&mut self) -> Msg {
        let event = self.run("recv", json!({ "timeout": 10 }), "message");
        Msg {
            topic: event["topic"].as_str().unwrap_or_default().to_owned(),
            payload: from_hex(event["payload"].as_str().unwrap_or_default()),
            qos: event["qos"].as_u64().unwrap_or(255) as u8,
            retain: event["retain"].as_bool().unwrap_or_default(),
            props: json!({}),
        }
    }

    /// How the connection ended (a DISCONNECT first, if one came), waiting up to `timeout`.
    pub fn end(&mut self, timeout: Duration) -> Option<QuicEnd> {
        self.send(&json!({ "cmd": "recv", "timeout": timeout.as_secs_f64() }));
        let event = self.event();
        match event["event"].as_str() {
            Some("disconnect") => Some(QuicEnd::Disconnect(
                event["reason_code"].as_u64().unwrap_or(255) as u8,
            )),
            Some("closed") => Some(QuicEnd::Closed {
                error_code: event["error_code"].as_u64().unwrap_or(u64::MAX),
                after: Duration::from_secs_f64(event["seconds"].as_f64().unwrap_or(-1.0).max(0.0)),
            }),
            Some("timeout") => None,
            _ => panic!("aioquic client: expected the end of the connection, got {event}"),
        }
    }

    pub fn disconnect(&mut self) {
        self.run("disconnect", json!({}), "disconnected");
    }

    fn run(&mut self, op: &str, mut fields: Value, answer: &str) -> Value {
        fields["cmd"] = json!(op);
        self.send(&fields);
        self.next_event(answer)
    }

    fn send(&mut self, command: &Value) {
        self.proc.send_line(&command.to_string());
    }

    fn next_event(&mut self, name: &str) -> Value {
        let event = self.event();
        if event["event"] != name {
            panic!(
                "aioquic client: expected {name}, got {event}; stderr:\n{}",
                self.proc.stderr()
            );
        }
        event
    }

    fn event(&mut self) -> Value {
        match self.proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("aioquic client printed {line:?}: {e}")),
            other => panic!(
                "aioquic client: no event ({other:?}); stderr:\n{}",
                self.proc.stderr()
            ),
        }
    }
}
