//! STOMP clients nobody here wrote: stomp.py (PyPI) over TCP through `py/stomp_client.py`,
//! and @stomp/stompjs (npm) over WebSocket through `js/stomp_client.js`. Both speak the
//! same JSON line protocol: a command is answered "ok", and every frame the server sends
//! is reported as an event when it arrives. Events that arrive while the test awaits
//! another kind are kept in order.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::process::{Line, Proc};
use crate::{from_hex, to_hex, Broker, TIMEOUT};

/// A frame the server sent, as the client library read it.
#[derive(Debug, Clone)]
pub struct StompEvent {
    /// "connected", "message", "receipt", "error" or "disconnected".
    pub kind: String,
    pub headers: Value,
    pub body: Vec<u8>,
}

impl StompEvent {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(Value::as_str)
    }
}

/// One STOMP client process.
pub struct StompClient {
    proc: Proc,
    backlog: VecDeque<Value>,
}

/// stomp.py over TCP.
pub struct StompPy;
/// @stomp/stompjs over WebSocket.
pub struct StompJs;

impl StompPy {
    pub fn spawn() -> StompClient {
        let python = crate::tools::python();
        let mut cmd = Command::new(python);
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/stomp_client.py"));
        StompClient::start("stomp.py client", cmd)
    }
}

impl StompJs {
    /// A client for `ws://HOST:PORT/ws`, the STOMP WebSocket listener's default path.
    pub fn spawn(broker: &Broker) -> StompClient {
        StompJs::spawn_url(
            &format!("ws://{}:{}/ws", broker.host, broker.stomp_ws_port),
            None,
        )
    }

    /// A client for `url` (`ws://…` or `wss://…`), trusting the CA `ca` besides Node's own
    /// (`NODE_EXTRA_CA_CERTS`).
    pub fn spawn_url(url: &str, ca: Option<&Path>) -> StompClient {
        let mut cmd = Command::new("node");
        cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js/stomp_client.js"))
            .arg(url);
        if let Some(ca) = ca {
            cmd.env("NODE_EXTRA_CA_CERTS", ca);
        }
        StompClient::start("stompjs client", cmd)
    }
}

impl StompClient {
    fn start(name: &str, cmd: Command) -> StompClient {
        let mut client = StompClient {
            proc: Proc::spawn(name, cmd),
            backlog: VecDeque::new(),
        };
        client.expect_kind("started", TIMEOUT);
        client
    }

    /// Runs a command and waits for its "ok", which it returns.
    pub fn run(&mut self, command: Value) -> Value {
        self.proc.send_line(&command.to_string());
        let answer = self.expect_kind_any(&["ok", "failed"], TIMEOUT);
        if answer["event"] == "failed" {
            panic!(
                "{}: {command} failed: {}; stderr:\n{}",
                self.proc.name(),
                answer["reason"],
                self.proc.stderr()
            );
        }
        answer
    }

    /// Freezes the client process: its library sends nothing, heart-beats included,
    /// until `resume`.
    pub fn suspend(&self) {
        self.proc.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.proc.signal(libc::SIGCONT);
    }

    /// stomp.py: connects over TCP to the broker's STOMP port; the CONNECTED or ERROR
    /// arrives as an event. `extra` adds fields (login, passcode, client_id, heartbeats).
    pub fn connect_tcp(&mut self, broker: &Broker, version: &str, extra: Value) {
        let mut command = json!({
            "cmd": "connect",
            "host": broker.host,
            "port": broker.stomp_port,
            "version": version,
        });
        merge(&mut command, extra);
        self.run(command);
    }

    /// stomp.py: connects over TLS to `port`, checking the server's certificate against
    /// `ca` and the broker's host name; presents `client` (certificate, key) when given.
    pub fn connect_tls(
        &mut self,
        broker: &Broker,
        port: u16,
        ca: &Path,
        client: Option<(&Path, &Path)>,
        extra: Value,
    ) {
        let mut tls = json!({ "ca": ca });
        if let Some((cert, key)) = client {
            tls["cert"] = json!(cert);
            tls["key"] = json!(key);
        }
        let mut command = json!({
            "cmd": "connect",
            "host": broker.host,
            "port": port,
            "version": "1.2",
            "tls": tls,
        });
        merge(&mut command, extra);
        self.run(command);
    }

    /// stompjs: connects to the URL it was started with.
    pub fn connect_ws(&mut self, extra: Value) {
        let mut command = json!({"cmd": "connect"});
        merge(&mut command, extra);
        self.run(command);
    }

    pub fn subscribe(&mut self, destination: &str, id: &str, ack: &str) {
        self.run(json!({"cmd": "subscribe", "destination": destination, "id": id, "ack": ack}));
    }

    pub fn send(&mut self, destination: &str, body: &[u8], headers: Value) {
        self.run(json!({
            "cmd": "send",
            "destination": destination,
            "body": to_hex(body),
            "headers": headers,
        }));
    }

    /// The next event of `kind`; events of other kinds stay for later.
    pub fn expect(&mut self, kind: &str) -> StompEvent {
        self.expect_within(kind, TIMEOUT)
    }

    pub fn expect_within(&mut self, kind: &str, timeout: Duration) -> StompEvent {
        let event = self.expect_kind(kind, timeout);
        StompEvent {
            kind: kind.to_owned(),
            headers: event["headers"].clone(),
            body: from_hex(event["body"].as_str().unwrap_or("")),
        }
    }

    /// The next event of any of `kinds` (its `kind` says which); others stay for later.
    pub fn expect_any(&mut self, kinds: &[&str]) -> StompEvent {
        let event = self.expect_kind_any(kinds, TIMEOUT);
        StompEvent {
            kind: event["event"].as_str().unwrap_or_default().to_owned(),
            headers: event["headers"].clone(),
            body: from_hex(event["body"].as_str().unwrap_or("")),
        }
    }

    /// True when no event of `kind` arrives within `quiet`.
    pub fn none_within(&mut self, kind: &str, quiet: Duration) -> bool {
        self.try_kind(&[kind], quiet).is_none()
    }

    fn expect_kind(&mut self, kind: &str, timeout: Duration) -> Value {
        self.expect_kind_any(&[kind], timeout)
    }

    fn expect_kind_any(&mut self, kinds: &[&str], timeout: Duration) -> Value {
        match self.try_kind(kinds, timeout) {
            Some(event) => event,
            None => panic!(
                "{}: no {kinds:?} within {timeout:?}; other events: {:?}; stderr:\n{}",
                self.proc.name(),
                self.backlog,
                self.proc.stderr()
            ),
        }
    }

    fn try_kind(&mut self, kinds: &[&str], timeout: Duration) -> Option<Value> {
        let matches = |event: &Value| kinds.iter().any(|k| event["event"] == *k);
        if let Some(at) = self.backlog.iter().position(matches) {
            return self.backlog.remove(at);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.proc.next_line(left) {
                Line::Line(line) => {
                    let event: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{} printed {line:?}: {e}", self.proc.name()));
                    if matches(&event) {
                        return Some(event);
                    }
                    self.backlog.push_back(event);
                }
                Line::Timeout => return None,
                Line::Eof => panic!(
                    "{} exited; stderr:\n{}",
                    self.proc.name(),
                    self.proc.stderr()
                ),
            }
        }
    }
}

fn merge(command: &mut Value, extra: Value) {
    if let (Some(command), Value::Object(extra)) = (command.as_object_mut(), extra) {
        command.extend(extra);
    }
}
