//! paho-mqtt (`py/client.py`) and MQTT.js (`js/client.js`) driven through the JSON
//! line protocol both scripts speak: the test writes a command, the script answers
//! with an event once the command completed, and reports messages and disconnections
//! as they happen. Events that arrive while the test awaits something else are kept
//! in order, so no message is lost between commands.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::process::{Line, Proc};
use crate::{from_hex, to_hex, Broker, Msg, Version};

/// Which client library a script uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    Paho,
    MqttJs,
}

impl Lib {
    pub const ALL: [Lib; 2] = [Lib::Paho, Lib::MqttJs];
}

/// The scripts give up on a command after 10 s; waiting a little longer here lets
/// their own timeout report arrive first, which says more.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

pub struct ScriptClient {
    proc: Proc,
    pub lib: Lib,
    pub version: Version,
    /// Events read while waiting for something else, oldest first.
    backlog: VecDeque<Value>,
}

/// CONNACK as a script reports it.
#[derive(Clone, Debug)]
pub struct Connack {
    pub reason_code: u8,
    pub session_present: bool,
    pub props: Value,
}

/// What a connection attempt produced.
#[derive(Clone, Debug)]
pub enum ConnectOutcome {
    Connack(Connack),
    /// The connection closed (or could not be opened) without a CONNACK.
    Lost(String),
}

/// How a script client reaches the broker: the broker's TCP port, or another listener.
#[derive(Clone, Debug, Default)]
pub struct Carrier {
    /// None: the broker's MQTT over TCP port.
    pub port: Option<u16>,
    /// MQTT over WebSocket on this HTTP path.
    pub ws_path: Option<String>,
    /// TLS, trusting this CA file.
    pub cafile: Option<PathBuf>,
    /// A client certificate and its key, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Carrier {
    pub fn ws(port: u16) -> Carrier {
        Carrier {
            port: Some(port),
            ws_path: Some("/mqtt".into()),
            ..Carrier::default()
        }
    }

    pub fn tls(port: u16, cafile: &std::path::Path) -> Carrier {
        Carrier {
            port: Some(port),
            cafile: Some(cafile.to_owned()),
            ..Carrier::default()
        }
    }

    pub fn wss(port: u16, cafile: &std::path::Path) -> Carrier {
        Carrier {
            ws_path: Some("/mqtt".into()),
            ..Carrier::tls(port, cafile)
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(path) = &self.ws_path {
            args.extend(["--ws".to_owned(), path.clone()]);
        }
        if let Some(ca) = &self.cafile {
            args.extend(["--cafile".to_owned(), ca.display().to_string()]);
        }
        if let Some((cert, key)) = &self.client_cert {
            args.extend(["--cert".to_owned(), cert.display().to_string()]);
            args.extend(["--key".to_owned(), key.display().to_string()]);
        }
        args
    }
}

fn script_command(lib: Lib, broker: &Broker, version: Version, carrier: &Carrier) -> Command {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = match lib {
        Lib::Paho => {
            let python = crate::tools::python();
            let mut cmd = Command::new(python);
            cmd.arg(dir.join("py/client.py"));
            cmd
        }
        Lib::MqttJs => {
            let js = dir.join("js");
            if !js.join("node_modules/mqtt").is_dir() {
                panic!(
                    "MQTT.js is not installed in {}: run scripts/install-test-tools.sh",
                    js.display()
                );
            }
            let mut cmd = Command::new("node");
            cmd.arg(js.join("client.js"));
            cmd
        }
    };
    cmd.arg(&broker.host)
        .arg(carrier.port.unwrap_or(broker.port).to_string())
        .arg(version.arg())
        .args(carrier.args());
    cmd
}

impl ScriptClient {
    /// Starts a script (not yet connected).
    pub fn spawn(lib: Lib, version: Version, broker: &Broker) -> ScriptClient {
        ScriptClient::spawn_via(lib, version, broker, &Carrier::default())
    }

    /// Starts a script (not yet connected) that reaches the broker through `carrier`.
    pub fn spawn_via(
        lib: Lib,
        version: Version,
        broker: &Broker,
        carrier: &Carrier,
    ) -> ScriptClient {
        let over = match (&carrier.ws_path, &carrier.cafile) {
            (None, None) => "",
            (Some(_), None) => " over ws",
            (None, Some(_)) => " over tls",
            (Some(_), Some(_)) => " over wss",
        };
        let name = format!("{lib:?} {version:?}{over} client");
        let mut client = ScriptClient {
            proc: Proc::spawn(&name, script_command(lib, broker, version, carrier)),
            lib,
            version,
            backlog: VecDeque::new(),
        };
        client.expect_event("started", COMMAND_TIMEOUT);
        client
    }

    /// Starts a script and connects it with a clean session; panics unless accepted.
    pub fn connected(lib: Lib, version: Version, broker: &Broker, client_id: &str) -> ScriptClient {
        ScriptClient::connected_via(lib, version, broker, &Carrier::default(), client_id)
    }

    /// `connected` through `carrier`.
    pub fn connected_via(
        lib: Lib,
        version: Version,
        broker: &Broker,
        carrier: &Carrier,
        client_id: &str,
    ) -> ScriptClient {
        let mut client = ScriptClient::spawn_via(lib, version, broker, carrier);
        client.connect_ok(json!({ "client_id": client_id }));
        client
    }

    pub fn name(&self) -> &str {
        self.proc.name()
    }

    /// Sends a CONNECT built from `opts` (the fields of the `connect` command:
    /// client_id, clean, keepalive, username, password, will, props).
    pub fn connect(&mut self, opts: Value) -> ConnectOutcome {
        // Events of an earlier connection of this client would answer for this one.
        self.backlog.retain(|e| {
            !["connack", "connection_lost", "server_disconnect"]
                .iter()
                .any(|n| e["event"] == *n)
        });
        self.command("connect", opts);
        let event = self.expect_one_of(&["connack", "connection_lost"], COMMAND_TIMEOUT);
        if event["event"] == "connack" {
            ConnectOutcome::Connack(Connack {
                reason_code: event["reason_code"].as_u64().unwrap_or(255) as u8,
                session_present: event["session_present"].as_bool().unwrap_or(false),
                props: event["props"].clone(),
            })
        } else {
            ConnectOutcome::Lost(event["reason"].as_str().unwrap_or("").to_string())
        }
    }

    /// Connects and panics unless the CONNACK accepts the connection.
    pub fn connect_ok(&mut self, opts: Value) -> Connack {
        match self.connect(opts.clone()) {
            ConnectOutcome::Connack(ack) if ack.reason_code == 0 => ack,
            other => panic!(
                "{}: connect {opts} refused: {other:?}; stderr:\n{}",
                self.name(),
                self.proc.stderr()
            ),
        }
    }

    /// Subscribes to one filter; returns the SUBACK reason code (the granted QoS).
    pub fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        self.subscribe_with(json!([{ "filter": filter, "qos": qos }]), json!({}))[0]
    }

    /// Subscribes to several filters with options (`filter`, `qos`, `nl`, `rap`, `rh`)
    /// and SUBSCRIBE properties; returns the SUBACK reason codes.
    pub fn subscribe_with(&mut self, subs: Value, props: Value) -> Vec<u8> {
        let count = subs.as_array().map_or(0, |a| a.len());
        self.command("subscribe", json!({ "subs": subs, "props": props }));
        let event = self.expect_event("suback", COMMAND_TIMEOUT);
        let codes: Vec<u8> = event["reason_codes"]
            .as_array()
            .map(|a| a.iter().map(|c| c.as_u64().unwrap_or(255) as u8).collect())
            .unwrap_or_default();
        assert_eq!(
            codes.len(),
            count,
            "{}: SUBACK {event} does not answer {count} filters",
            self.name()
        );
        codes
    }

    pub fn unsubscribe(&mut self, filters: &[&str]) {
        self.command("unsubscribe", json!({ "filters": filters }));
        self.expect_event("unsuback", COMMAND_TIMEOUT);
    }

    /// Publishes and waits until the broker acknowledged it (written, for QoS 0).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        self.publish_with(
            json!({ "topic": topic, "payload": to_hex(payload), "qos": qos, "retain": retain }),
        );
    }

    /// Publishes and waits until the broker acknowledged it: the 5.0 PUBACK's or PUBREC's
    /// reason code (0 for QoS 0 and for 3.1/3.1.1, which have none).
    pub fn publish_reason(&mut self, topic: &str, payload: &[u8], qos: u8) -> u8 {
        self.command(
            "publish",
            json!({ "topic": topic, "payload": to_hex(payload), "qos": qos, "retain": false }),
        );
        let event = self.expect_event("published", COMMAND_TIMEOUT);
        match event["reason_code"].as_u64() {
            Some(code) => code as u8,
            None => panic!("{}: published without a reason code: {event}", self.name()),
        }
    }

    /// Publishes the `publish` command's fields as given (topic, payload in hex, qos,
    /// retain, props, wait) and waits for it to complete.
    pub fn publish_with(&mut self, fields: Value) {
        self.command("publish", fields);
        self.expect_event("published", COMMAND_TIMEOUT);
    }

    /// Publishes `count` messages with payloads "0", "1", ... padded with '.' to
    /// `payload_size` bytes, and waits for all of them to complete.
    pub fn publish_many(&mut self, topic: &str, count: usize, qos: u8, payload_size: usize) {
        self.start_publish_many(topic, count, qos, payload_size);
        self.finish_publish_many();
    }

    /// `publish_many` without waiting: the test can act while the stream flows, then
    /// call `finish_publish_many`.
    pub fn start_publish_many(&mut self, topic: &str, count: usize, qos: u8, payload_size: usize) {
        self.command(
            "publish_many",
            json!({ "topic": topic, "count": count, "qos": qos, "payload_size": payload_size }),
        );
    }

    pub fn finish_publish_many(&mut self) {
        self.expect_event("published_many", Duration::from_secs(60));
    }

    /// Sends DISCONNECT (reason 0) and waits until the script closed the connection.
    pub fn disconnect(&mut self) {
        self.command("disconnect", json!({}));
        self.expect_event("disconnected", COMMAND_TIMEOUT);
    }

    /// Kills the process: the broker sees the connection drop without DISCONNECT.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// The next message, failing the test when none comes within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Msg {
        match self.try_recv(timeout) {
            Some(msg) => msg,
            None => panic!(
                "{}: no message within {timeout:?}; {}",
                self.name(),
                self.diagnostics()
            ),
        }
    }

    /// The next message, or None when none comes within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Msg> {
        let event = self.next_matching(&["message"], timeout)?;
        Some(msg_from_event(&event))
    }

    /// The next `count` messages (in arrival order).
    pub fn recv_n(&mut self, count: usize, timeout: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_recv(left) {
                Some(msg) => out.push(msg),
                None => panic!(
                    "{}: got {} of {count} messages within {timeout:?}; {}",
                    self.name(),
                    out.len(),
                    self.diagnostics()
                ),
            }
        }
        out
    }

    /// Publishes a barrier message to `barrier_topic` (which this client must have
    /// subscribed to) from another connection and returns every message received
    /// before it: the broker sends one session's messages in order, so anything it was
    /// going to send before the barrier (retained or queued messages) has arrived.
    /// The barrier is published at QoS 2; subscribe to it at QoS 2 when QoS 2
    /// messages may precede it (clients hand those over only on PUBREL, so a barrier
    /// of a lower QoS could overtake them).
    pub fn until_barrier(&mut self, broker: &Broker, barrier_topic: &str) -> Vec<Msg> {
        crate::collect_until_barrier(broker, barrier_topic, |timeout| self.recv(timeout))
    }

    /// Waits for the event named `name`, keeping any other event for later.
    pub fn expect_event(&mut self, name: &str, timeout: Duration) -> Value {
        self.expect_one_of(&[name], timeout)
    }

    /// Waits for an event named one of `names`, keeping other events for later.
    pub fn expect_one_of(&mut self, names: &[&str], timeout: Duration) -> Value {
        match self.next_matching(names, timeout) {
            Some(event) => event,
            None => panic!(
                "{}: no {names:?} event within {timeout:?}; {}",
                self.name(),
                self.diagnostics()
            ),
        }
    }

    fn next_matching(&mut self, names: &[&str], timeout: Duration) -> Option<Value> {
        if let Some(pos) = self
            .backlog
            .iter()
            .position(|e| names.iter().any(|n| e["event"] == *n))
        {
            return self.backlog.remove(pos);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.proc.next_line(left) {
                Line::Line(line) => line,
                Line::Timeout => return None,
                Line::Eof => panic!("{}: script exited; {}", self.name(), self.diagnostics()),
            };
            let event: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => panic!("{}: not a JSON event: {line:?}", self.name()),
            };
            if names.iter().any(|n| event["event"] == *n) {
                return Some(event);
            }
            if event["event"] == "error" {
                panic!(
                    "{}: command failed: {event}; {}",
                    self.name(),
                    self.diagnostics()
                );
            }
            self.backlog.push_back(event);
        }
    }

    fn command(&mut self, op: &str, mut fields: Value) {
        fields["op"] = json!(op);
        self.proc.send_line(&fields.to_string());
    }

    /// Pending events and stderr, for failure messages.
    fn diagnostics(&self) -> String {
        let pending: Vec<String> = self.backlog.iter().map(|e| e.to_string()).collect();
        format!(
            "pending events: [{}]; stderr:\n{}",
            pending.join(", "),
            self.proc.stderr()
        )
    }
}

fn msg_from_event(event: &Value) -> Msg {
    Msg {
        topic: event["topic"].as_str().unwrap_or_default().to_string(),
        payload: from_hex(event["payload"].as_str().unwrap_or_default()),
        qos: event["qos"].as_u64().unwrap_or(255) as u8,
        retain: event["retain"].as_bool().unwrap_or(false),
        props: event["props"].clone(),
    }
}
