//! CoAP clients nobody here wrote: aiocoap from PyPI, driven through `py/coap_client.py`
//! (one JSON command per line, one JSON event per answer; over UDP, TCP, WebSocket, TLS
//! under either, and DTLS on its tinydtls transport), and libcoap's `coap-client`
//! (Debian libcoap3-bin, the build without DTLS) run once per request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{Line, Proc};
use crate::{
    from_hex, mosquitto_pub, to_hex, unique_client_id, unique_topic, Broker, MosquittoSub, Version,
    TIMEOUT,
};

/// aiocoap gives up on a confirmable request after about 93 s by itself; the script stops
/// waiting after 20 s, and this a little later so that its own report arrives first.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(25);

/// libcoap's client without DTLS support, as Debian names it.
pub const COAP_CLIENT: &str = "coap-client-notls";

/// A response as aiocoap read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapResponse {
    /// Dotted, e.g. "2.04".
    pub code: String,
    pub payload: Vec<u8>,
}

/// A notification as aiocoap read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub payload: Vec<u8>,
    pub observe: u64,
    /// "CON" or "NON".
    pub mtype: String,
}

pub struct AiocoapClient {
    proc: Proc,
    base: String,
}

impl AiocoapClient {
    pub fn spawn(broker: &Broker) -> AiocoapClient {
        AiocoapClient::spawn_to(format!("coap://{}:{}", broker.host, broker.coap_port))
    }

    /// A client whose requests go to `base` (`coap://host:port`, `coap+tcp://host:port`,
    /// `coap+ws://host:port`) rather than to the broker's UDP port.
    pub fn spawn_to(base: String) -> AiocoapClient {
        AiocoapClient::spawn_with(base, &[])
    }

    /// A client whose requests go to `base` (`coaps://host:port`) over DTLS 1.2 with the
    /// pre-shared key `key` of `identity`, on aiocoap's tinydtls transport.
    pub fn spawn_dtls(base: String, identity: &str, key: &str) -> AiocoapClient {
        AiocoapClient::spawn_with(base, &["--psk", identity, key])
    }

    /// A client whose requests go to `base` over TLS (`coaps+tcp://host:port`,
    /// `coaps+ws://host:port`), trusting the server whose certificate `ca` signed for the
    /// host of `base` (aiocoap checks the name).
    pub fn spawn_trusting(base: String, ca: &Path) -> AiocoapClient {
        let ca = ca.to_string_lossy();
        let trust = base.clone();
        AiocoapClient::spawn_with(base, &["--ca", &trust, &ca])
    }

    fn spawn_with(base: String, args: &[&str]) -> AiocoapClient {
        let python = crate::tools::python();
        let mut cmd = Command::new(python);
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/coap_client.py"));
        cmd.args(args);
        // The transport the URI names, explicitly: a missing one (websockets not installed)
        // fails the test instead of going unnoticed.
        if base.starts_with("coap+tcp:") {
            cmd.env("AIOCOAP_CLIENT_TRANSPORT", "tcpclient");
        } else if base.starts_with("coaps+tcp:") {
            cmd.env("AIOCOAP_CLIENT_TRANSPORT", "tlsclient");
        } else if base.starts_with("coap+ws:") || base.starts_with("coaps+ws:") {
            cmd.env("AIOCOAP_CLIENT_TRANSPORT", "ws");
        } else if base.starts_with("coaps:") {
            cmd.env("AIOCOAP_CLIENT_TRANSPORT", "tinydtls");
        }
        let mut client = AiocoapClient {
            proc: Proc::spawn("aiocoap client", cmd),
            base,
        };
        client.expect("started");
        client
    }

    fn run(&mut self, mut fields: Value, answer: &str) -> Value {
        self.proc.send_line(&fields.take().to_string());
        self.expect(answer)
    }

    fn expect(&mut self, name: &str) -> Value {
        match self.proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("aiocoap client printed {line:?}: {e}"));
                if event["event"] != name {
                    panic!(
                        "aiocoap client: expected {name}, got {event}; stderr:\n{}",
                        self.proc.stderr()
                    );
                }
                event
            }
            other => panic!(
                "aiocoap client: no {name} ({other:?}); stderr:\n{}",
                self.proc.stderr()
            ),
        }
    }

    /// Sends `method` to `path_and_query` (e.g. "/ps/a?qos=1"), confirmable unless `non`.
    pub fn request(
        &mut self,
        method: &str,
        path_and_query: &str,
        payload: &[u8],
        non: bool,
    ) -> CoapResponse {
        let event = self.run(
            json!({
                "cmd": "request",
                "method": method,
                "uri": format!("{}{path_and_query}", self.base),
                "payload": to_hex(payload),
                "non": non,
            }),
            "response",
        );
        CoapResponse {
            code: event["code"].as_str().unwrap_or_default().to_owned(),
            payload: from_hex(event["payload"].as_str().unwrap_or_default()),
        }
    }

    /// Sends a confirmable `method` that the client cannot complete (no response comes);
    /// returns the client's reason and what caused it.
    pub fn request_error(&mut self, method: &str, path_and_query: &str, payload: &[u8]) -> String {
        let event = self.run(
            json!({
                "cmd": "request",
                "method": method,
                "uri": format!("{}{path_and_query}", self.base),
                "payload": to_hex(payload),
            }),
            "error",
        );
        format!(
            "{} caused by {}",
            event["error"].as_str().unwrap_or_default(),
            event["cause"].as_str().unwrap_or_default()
        )
    }

    /// A confirmable `request` whose client gives up after `timeout`: for a request that
    /// may go unanswered. The response, or None when the client gave up or failed.
    pub fn request_within(
        &mut self,
        method: &str,
        path_and_query: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Option<CoapResponse> {
        self.proc.send_line(
            &json!({
                "cmd": "request",
                "method": method,
                "uri": format!("{}{path_and_query}", self.base),
                "payload": to_hex(payload),
                "timeout": timeout.as_secs_f64(),
            })
            .to_string(),
        );
        match self.proc.next_line(timeout + COMMAND_TIMEOUT) {
            Line::Line(line) => {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("aiocoap client printed {line:?}: {e}"));
                (event["event"] == "response").then(|| CoapResponse {
                    code: event["code"].as_str().unwrap_or_default().to_owned(),
                    payload: from_hex(event["payload"].as_str().unwrap_or_default()),
                })
            }
            other => panic!(
                "aiocoap client: no answer ({other:?}); stderr:\n{}",
                self.proc.stderr()
            ),
        }
    }

    /// Registers an observation; returns the response code.
    pub fn observe(&mut self, path_and_query: &str) -> String {
        let event = self.run(
            json!({ "cmd": "observe", "uri": format!("{}{path_and_query}", self.base) }),
            "observing",
        );
        event["code"].as_str().unwrap_or_default().to_owned()
    }

    pub fn notification(&mut self) -> Notification {
        let event = self.run(
            json!({ "cmd": "notification", "timeout": 10 }),
            "notification",
        );
        Notification {
            payload: from_hex(event["payload"].as_str().unwrap_or_default()),
            observe: event["observe"].as_u64().unwrap_or_default(),
            mtype: event["mtype"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// True when no notification arrives within `timeout`.
    pub fn no_notification_for(&mut self, timeout: Duration) -> bool {
        self.proc.send_line(
            &json!({ "cmd": "notification", "timeout": timeout.as_secs_f64() }).to_string(),
        );
        match self.proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => line.contains("\"timeout\""),
            other => panic!("aiocoap client: {other:?}"),
        }
    }

    /// Stops observing: aiocoap answers the next notification with Reset.
    pub fn cancel(&mut self) {
        self.run(json!({ "cmd": "cancel" }), "cancelled");
    }

    /// Checks that the connection of client `id` publishes to `topic` only under its
    /// `token`: another token is refused (4.01) and nothing reaches `sub`, subscribed to
    /// `topic`, until the message sent under `token` does.
    pub fn publishes_only_with_token(
        &mut self,
        topic: &str,
        id: &str,
        token: &str,
        sub: &mut MosquittoSub,
    ) {
        let bad = self.request(
            "POST",
            &format!("/ps/{topic}?clientid={id}&token=1{token}"),
            b"x",
            false,
        );
        assert_eq!(bad.code, "4.01");
        let good = self.request(
            "POST",
            &format!("/ps/{topic}?clientid={id}&token={token}"),
            b"with token",
            false,
        );
        assert_eq!(good.code, "2.04");
        assert_eq!(sub.recv(TIMEOUT).payload, b"with token");
    }
}

/// Runs `coap-client` with `args` and the URI `path_and_query` on the broker; returns
/// (exit success, stdout, stderr).
pub fn coap_client(broker: &Broker, args: &[&str], path_and_query: &str) -> (bool, String, String) {
    let mut cmd = Command::new(COAP_CLIENT);
    cmd.args(args).arg(format!(
        "coap://{}:{}{path_and_query}",
        broker.host, broker.coap_port
    ));
    let mut proc = Proc::spawn(COAP_CLIENT, cmd);
    let mut stdout = String::new();
    loop {
        match proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => {
                stdout.push_str(&line);
                stdout.push('\n');
            }
            Line::Eof => break,
            Line::Timeout => panic!("{COAP_CLIENT} {args:?} hung; stderr:\n{}", proc.stderr()),
        }
    }
    let status = proc.wait(COMMAND_TIMEOUT);
    (status.is_some_and(|s| s.success()), stdout, proc.stderr())
}

/// Publishes through `client` (over any transport) and observes a wildcard, both
/// cross-checked with mosquitto clients: QoS 1, a retained message a later subscriber gets,
/// notifications at each QoS, and the codes of an unknown resource and method.
pub fn publish_and_observe(broker: &Broker, client: &mut AiocoapClient, label: &str) {
    let prefix = unique_topic(label);
    let id = unique_client_id(label);
    let mut sub = MosquittoSub::start(broker, Version::V5, &[&format!("{prefix}/#")], 2, &[]);
    let answer = client.request(
        "POST",
        &format!("/ps/{prefix}/up?clientid={id}&qos=1"),
        b"from coap",
        false,
    );
    assert_eq!(answer.code, "2.04");
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic.as_str(), msg.payload.as_slice(), msg.qos),
        (format!("{prefix}/up").as_str(), &b"from coap"[..], 1)
    );
    let answer = client.request(
        "PUT",
        &format!("/ps/{prefix}/retained?clientid={id}&retain=true"),
        b"kept",
        false,
    );
    assert_eq!(answer.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"kept");
    let mut late = MosquittoSub::start(
        broker,
        Version::V311,
        &[&format!("{prefix}/retained")],
        1,
        &[],
    );
    assert!(late.recv(TIMEOUT).retain, "retained for later subscribers");

    assert_eq!(
        client.observe(&format!("/ps/{prefix}/down/%23?clientid={id}")),
        "2.05"
    );
    for (n, qos) in [(0u8, 0u8), (1, 1), (2, 2)] {
        let payload = format!("note {n}");
        mosquitto_pub(
            broker,
            Version::V311,
            &format!("{prefix}/down/{n}"),
            payload.as_bytes(),
            qos,
            false,
            &[],
        );
        assert_eq!(client.notification().payload, payload.as_bytes());
    }
    // Unknown resources and methods get their codes, as over UDP.
    let missing = client.request("GET", &format!("/nothing?clientid={id}"), b"", false);
    assert_eq!(missing.code, "4.04");
    let delete = client.request("DELETE", &format!("/ps/{prefix}?clientid={id}"), b"", false);
    assert_eq!(delete.code, "4.05");
}
