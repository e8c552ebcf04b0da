//! The mosquitto command line clients (Debian `mosquitto-clients`).
//!
//! `mosquitto_sub -d` prints its protocol exchange, which gives the readiness signal
//! ("Subscribed (mid: 1): " and the granted QoS list once the SUBACK arrived); each message
//! is printed on one line in a tab-separated format with the payload in hex.

use std::collections::{BTreeMap, VecDeque};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::{Line, Proc};
use crate::{from_hex, Broker, Msg, Version, TIMEOUT};

/// Marks message lines among mosquitto_sub's debug output.
const MSG_MARK: &str = "MSG";

fn version_arg(version: Version) -> String {
    format!("mqttv{}", version.arg())
}

fn base_command(program: &str, broker: &Broker, version: Version) -> Command {
    // The clients write through stdio, which a pipe makes block-buffered: the
    // readiness line would only show up with later output. stdbuf (coreutils) makes
    // stdout line-buffered.
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", program]);
    cmd.args([
        "-h",
        &broker.host,
        "-p",
        &broker.port.to_string(),
        "-V",
        &version_arg(version),
    ]);
    cmd
}

/// A running `mosquitto_sub`.
pub struct MosquittoSub {
    proc: Proc,
    /// The SUBACK's granted QoS, one per filter.
    pub granted: Vec<u8>,
    /// Messages that arrived before the SUBACK (a resumed session's queue).
    early: VecDeque<Msg>,
}

impl MosquittoSub {
    /// Subscribes to `filters` at `qos` (plus `extra` arguments, e.g. `-c -i ID`) and
    /// returns once the SUBACK arrived.
    pub fn start(
        broker: &Broker,
        version: Version,
        filters: &[&str],
        qos: u8,
        extra: &[&str],
    ) -> MosquittoSub {
        let mut cmd = base_command("mosquitto_sub", broker, version);
        cmd.args([
            "-d",
            "-q",
            &qos.to_string(),
            "-F",
            &format!("{MSG_MARK}\\t%t\\t%q\\t%r\\t%x"),
        ]);
        for filter in filters {
            cmd.args(["-t", filter]);
        }
        cmd.args(extra);
        let mut proc = Proc::spawn(&format!("mosquitto_sub {version:?}"), cmd);
        let deadline = Instant::now() + TIMEOUT;
        let mut early = VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match proc.next_line(left) {
                Line::Line(line) => {
                    if let Some(list) = line
                        .strip_prefix("Subscribed (mid: ")
                        .and_then(|rest| rest.split_once("): "))
                    {
                        let granted = list
                            .1
                            .split(", ")
                            .map(|q| q.trim().parse().unwrap_or(255))
                            .collect();
                        return MosquittoSub {
                            proc,
                            granted,
                            early,
                        };
                    }
                    if let Some(msg) = parse_message(&line) {
                        early.push_back(msg);
                    }
                }
                Line::Eof => panic!(
                    "mosquitto_sub exited before its SUBACK; stderr:\n{}",
                    proc.stderr()
                ),
                Line::Timeout => panic!(
                    "mosquitto_sub got no SUBACK within {TIMEOUT:?}; stderr:\n{}",
                    proc.stderr()
                ),
            }
        }
    }

    /// The next message, failing the test when none comes within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Msg {
        match self.try_recv(timeout) {
            Some(msg) => msg,
            None => panic!(
                "mosquitto_sub: no message within {timeout:?}; stderr:\n{}",
                self.proc.stderr()
            ),
        }
    }

    /// The next message, or None when none comes within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Msg> {
        if let Some(msg) = self.early.pop_front() {
            return Some(msg);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.proc.next_line(left) {
                Line::Line(line) => {
                    if let Some(msg) = parse_message(&line) {
                        return Some(msg);
                    }
                }
                Line::Timeout => return None,
                Line::Eof => panic!("mosquitto_sub exited; stderr:\n{}", self.proc.stderr()),
            }
        }
    }

    /// SIGKILL: the broker sees the connection drop without DISCONNECT.
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// A message line of the `-F` format above; None for debug lines.
fn parse_message(line: &str) -> Option<Msg> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 5 || fields[0] != MSG_MARK {
        return None;
    }
    Some(Msg {
        topic: fields[1].to_string(),
        qos: fields[2].parse().unwrap_or(255),
        retain: fields[3] == "1",
        payload: from_hex(fields[4]),
        props: json!({}),
    })
}

/// Publishes one message with `mosquitto_pub` (plus `extra` arguments, e.g. `-D
/// publish user-property k v`) and waits for it to finish: for QoS 1/2 it exits only
/// after the broker acknowledged the message.
pub fn mosquitto_pub(
    broker: &Broker,
    version: Version,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    extra: &[&str],
) {
    let mut cmd = base_command("mosquitto_pub", broker, version);
    cmd.args(["-t", topic, "-q", &qos.to_string()]);
    if retain {
        cmd.arg("-r");
    }
    // The payload travels through a file so that any byte, NUL included, survives.
    let file = tempfile::NamedTempFile::new().expect("temp file for a payload");
    if payload.is_empty() {
        cmd.arg("-n");
    } else {
        std::fs::write(file.path(), payload).expect("write the payload file");
        cmd.arg("-f").arg(file.path());
    }
    cmd.args(extra);
    let mut proc = Proc::spawn("mosquitto_pub", cmd);
    match proc.wait(TIMEOUT) {
        Some(status) if status.success() => {}
        Some(status) => panic!(
            "mosquitto_pub -t {topic} failed ({status}); stderr:\n{}",
            proc.stderr()
        ),
        None => panic!(
            "mosquitto_pub -t {topic} did not finish within {TIMEOUT:?}; stderr:\n{}",
            proc.stderr()
        ),
    }
}

/// Reads the retained `$SYS` values of `topics` as the broker publishes them, until
/// `done` holds for the latest of each or `TIMEOUT` passes; returns the latest.
pub fn sys_values_until(
    broker: &Broker,
    topics: &[&str],
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let mut sub = MosquittoSub::start(broker, Version::V311, topics, 0, &[]);
    let mut values = BTreeMap::new();
    let deadline = Instant::now() + TIMEOUT + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(msg) = sub.try_recv(Duration::from_millis(500)) {
            let text = String::from_utf8_lossy(&msg.payload).into_owned();
            let value = text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{}: {text:?} is not a number", msg.topic));
            values.insert(msg.topic, value);
            if values.len() == topics.len() && done(&values) {
                break;
            }
        }
    }
    sub.kill();
    values
}
