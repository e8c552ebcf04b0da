//! An MQTT-SN client from the PyPI package mqtt-sn-12, driven through
//! `py/mqttsn_client.py` (one JSON command per line, one JSON event per answer).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{Line, Proc};
use crate::{from_hex, to_hex, Broker};

/// The script gives up on a command after 10 s; a little longer here lets its own report
/// arrive first.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// A message as the MQTT-SN client received it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnMsg {
    /// The name the client resolved from REGISTER, a short name or a predefined id.
    pub topic: Option<String>,
    pub topic_id: u16,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

pub struct SnClient {
    proc: Proc,
}

impl SnClient {
    pub fn spawn(broker: &Broker) -> SnClient {
        let python = crate::tools::python();
        let mut cmd = Command::new(python);
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/mqttsn_client.py"))
            .arg(&broker.host)
            .arg(broker.mqttsn_port.to_string());
        let mut client = SnClient {
            proc: Proc::spawn("mqtt-sn-12 client", cmd),
        };
        client.expect("started");
        client
    }

    /// Connects (clean session, keep-alive 30 s unless `opts` says otherwise).
    pub fn connected(broker: &Broker, client_id: &str, opts: Value) -> SnClient {
        let mut client = SnClient::spawn(broker);
        let mut command = json!({ "client_id": client_id });
        if let (Some(command), Some(opts)) = (command.as_object_mut(), opts.as_object()) {
            command.extend(opts.clone());
        }
        client.run("connect", command, "connack");
        client
    }

    /// Sends a command and returns the event that answers it; an error event fails the test.
    pub fn run(&mut self, op: &str, mut fields: Value, answer: &str) -> Value {
        fields["cmd"] = json!(op);
        self.proc.send_line(&fields.to_string());
        self.expect(answer)
    }

    /// Sends a command and returns the event that answers it, or the message of the error
    /// the library raised (a refusal: "CONNECT error: Rejected: not supported (3)").
    pub fn try_run(&mut self, op: &str, mut fields: Value, answer: &str) -> Result<Value, String> {
        fields["cmd"] = json!(op);
        self.proc.send_line(&fields.to_string());
        let event = match self.proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => serde_json::from_str::<Value>(&line)
                .unwrap_or_else(|e| panic!("mqtt-sn client printed {line:?}: {e}")),
            other => panic!(
                "mqtt-sn client: no {answer} ({other:?}); stderr:\n{}",
                self.proc.stderr()
            ),
        };
        if event["event"] == answer {
            Ok(event)
        } else if event["event"] == "error" {
            Err(event["message"].as_str().unwrap_or_default().to_owned())
        } else {
            panic!(
                "mqtt-sn client: expected {answer}, got {event}; stderr:\n{}",
                self.proc.stderr()
            )
        }
    }

    fn expect(&mut self, name: &str) -> Value {
        match self.proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("mqtt-sn client printed {line:?}: {e}"));
                if event["event"] != name {
                    panic!(
                        "mqtt-sn client: expected {name}, got {event}; stderr:\n{}",
                        self.proc.stderr()
                    );
                }
                event
            }
            other => panic!(
                "mqtt-sn client: no {name} ({other:?}); stderr:\n{}",
                self.proc.stderr()
            ),
        }
    }

    /// Subscribes; returns the topic id the client learnt (None for wildcards and short names).
    pub fn subscribe(&mut self, topic: &str, qos: u8) -> Option<u16> {
        let event = self.run("subscribe", json!({ "topic": topic, "qos": qos }), "suback");
        event["topic_id"].as_u64().map(|id| id as u16)
    }

    pub fn subscribe_predefined(&mut self, topic_id: u16, topic: &str, qos: u8) {
        self.run(
            "subscribe_predefined",
            json!({ "topic_id": topic_id, "topic": topic, "qos": qos }),
            "suback",
        );
    }

    /// Publishes by name: REGISTER first for a long name, a short topic id for two characters.
    /// Returns after the acknowledgement the QoS asks for.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        self.run(
            "publish",
            json!({ "topic": topic, "payload": to_hex(payload), "qos": qos, "retain": retain }),
            "published",
        );
    }

    /// REGISTERs `topic` and returns the id the gateway gave it.
    pub fn register(&mut self, topic: &str) -> u16 {
        let event = self.run("register", json!({ "topic": topic }), "registered");
        event["topic_id"].as_u64().expect("a topic id") as u16
    }

    /// Publishes under a normal topic id the client learnt earlier, without REGISTER.
    pub fn publish_id(&mut self, topic_id: u16, payload: &[u8], qos: u8) {
        self.run(
            "publish_id",
            json!({ "topic_id": topic_id, "payload": to_hex(payload), "qos": qos }),
            "published",
        );
    }

    /// Connects again from a new socket as a device resuming its session: clean session
    /// off, keeping the topic ids it learnt.
    pub fn resume(&mut self, client_id: &str) {
        self.run(
            "connect",
            json!({ "client_id": client_id, "clean": false, "keep_topics": true }),
            "connack",
        );
    }

    pub fn publish_predefined(&mut self, topic_id: u16, payload: &[u8], qos: u8) {
        self.run(
            "publish_predefined",
            json!({ "topic_id": topic_id, "payload": to_hex(payload), "qos": qos }),
            "published",
        );
    }

    /// QoS -1 from a socket that never connected; `kind` is "predefined" or "short".
    pub fn publish_minus_one(&mut self, kind: &str, topic_id: u16, payload: &[u8]) {
        self.run(
            "publish_minus_one",
            json!({ "type": kind, "topic_id": topic_id, "payload": to_hex(payload) }),
            "published",
        );
    }

    /// The next delivery (REGISTERs are answered on the way), acknowledged as its QoS asks.
    pub fn recv(&mut self) -> SnMsg {
        let event = self.run("recv", json!({ "timeout": 10 }), "message");
        parse(&event)
    }

    /// True when nothing arrives within `timeout`.
    pub fn quiet_for(&mut self, timeout: Duration) -> bool {
        self.proc
            .send_line(&json!({ "cmd": "recv", "timeout": timeout.as_secs_f64() }).to_string());
        match self.proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => line.contains("\"timeout\""),
            other => panic!("mqtt-sn client: {other:?}"),
        }
    }

    pub fn sleep(&mut self, duration: u16) {
        self.run("sleep", json!({ "duration": duration }), "asleep");
    }

    /// Wakes from a new UDP port with PINGREQ(client id): the buffered messages, received
    /// before PINGRESP.
    pub fn wake(&mut self) -> Vec<SnMsg> {
        self.proc
            .send_line(&json!({ "cmd": "wake", "timeout": 10 }).to_string());
        let mut messages = Vec::new();
        loop {
            match self.proc.next_line(COMMAND_TIMEOUT) {
                Line::Line(line) => {
                    let event: Value = serde_json::from_str(&line).unwrap_or_default();
                    match event["event"].as_str() {
                        Some("message") => messages.push(parse(&event)),
                        Some("pingresp") => return messages,
                        _ => panic!(
                            "mqtt-sn client: waking got {line}; stderr:\n{}",
                            self.proc.stderr()
                        ),
                    }
                }
                other => panic!("mqtt-sn client: no PINGRESP ({other:?})"),
            }
        }
    }

    /// SEARCHGW from a fresh socket; returns once GWINFO answered.
    pub fn search_gateway(&mut self) {
        self.run("searchgw", json!({}), "gwinfo");
    }

    pub fn disconnect(&mut self) {
        self.run("disconnect", json!({}), "disconnected");
    }

    /// Closes the socket without a word, as a device that lost power.
    pub fn vanish(&mut self) {
        self.run("vanish", json!({}), "vanished");
    }
}

fn parse(event: &Value) -> SnMsg {
    SnMsg {
        topic: event["topic"].as_str().map(str::to_owned),
        topic_id: event["topic_id"].as_u64().unwrap_or_default() as u16,
        payload: from_hex(event["payload"].as_str().unwrap_or_default()),
        qos: event["qos"].as_u64().unwrap_or(255) as u8,
        retain: event["retain"].as_bool().unwrap_or_default(),
    }
}
