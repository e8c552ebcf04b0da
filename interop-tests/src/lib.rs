//! Black-box interop test harness.
//!
//! The tests in `tests/` start the gateway binary (or use an external broker, see
//! [`broker`]) and drive it with reference clients nobody here wrote: the mosquitto
//! command line clients ([`mosquitto`]), paho-mqtt and MQTT.js through small scripts
//! speaking a JSON line protocol ([`script`]), MQTT over QUIC on aioquic ([`quic`]), CoAP
//! over DTLS with RFC 9146 connection ids on Mbed TLS ([`cid_client`]), and, for what no
//! client will send, a raw TCP socket ([`raw`]); a [`nat::Nat`] between a UDP client and
//! the gateway moves the client to a new port when told. Every wait has a deadline and
//! every child process is killed when its handle is dropped, so a broken broker fails a
//! test, never hangs it.

pub mod admin;
pub mod broker;
pub mod carried;
pub mod certs;
pub mod cid_client;
pub mod clients;
pub mod coap;
pub mod dtls;
pub mod lwm2m;
pub mod mosquitto;
pub mod mqttsn;
pub mod nat;
pub mod ports;
pub mod process;
pub mod quic;
pub mod raw;
pub mod script;
pub mod stomp;
pub mod tls;
pub mod tools;
pub mod ws;

use std::time::Duration;

pub use broker::{external_mode, skip_external, Broker, Setting, SKIP_MARKER};
pub use clients::{Family, Publisher, Subscriber};
pub use coap::{coap_client, AiocoapClient};
pub use mosquitto::{mosquitto_pub, MosquittoSub};
pub use mqttsn::{SnClient, SnMsg};
pub use raw::RawClient;
pub use script::{Carrier, Lib, ScriptClient};
pub use stomp::{StompJs, StompPy};

/// How long a test waits for anything the broker should do promptly (a CONNACK, a
/// message, an acknowledgement). Generous: two cores are shared with other work.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a test watches for something that must NOT arrive, after a barrier message
/// has proven that the broker already handled everything sent before it.
pub const QUIET: Duration = Duration::from_millis(300);

/// The MQTT protocol version a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (protocol name "MQIsdp", level 3).
    V31,
    V311,
    V5,
}

impl Version {
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }

    /// How the scripts and mosquitto clients name it on their command line.
    pub fn arg(self) -> &'static str {
        match self {
            Version::V31 => "31",
            Version::V311 => "311",
            Version::V5 => "5",
        }
    }
}

/// A message as a subscriber received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties in the scripts' JSON form (snake_case names, binary as hex);
    /// an empty object for MQTT 3.1.1 and for the mosquitto clients.
    pub props: serde_json::Value,
}

/// A topic prefix no other test or run shares, so tests can run in parallel and
/// against a shared external broker without seeing each other's messages.
pub fn unique_topic(label: &str) -> String {
    format!(
        "itest/{label}/{:012x}",
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

/// A client id no other test or run shares (short enough for strict 3.1 brokers' 23).
pub fn unique_client_id(label: &str) -> String {
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    format!("{label}-{:010x}", rand::random::<u64>() & 0xff_ffff_ffff)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map(
            |pair| match std::str::from_utf8(pair).ok().filter(|p| p.len() == 2) {
                Some(pair) => {
                    u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("bad hex {text:?}"))
                }
                None => panic!("bad hex {text:?}"),
            },
        )
        .collect()
}

/// Payloads worth checking byte for byte: every byte value, empty, UTF-8 text.
pub fn sample_payloads() -> Vec<Vec<u8>> {
    vec![
        (0u8..=255).collect(),
        Vec::new(),
        "héllo wörld ✓".as_bytes().to_vec(),
    ]
}

/// Receives until `expected` distinct messages are in or `deadline` passes, each known by
/// the last level of its topic (its publisher, in tests that give each one a topic) and
/// the index `publish_many` wrote in its payload. Fails the test on a message seen twice.
pub fn collect_distinct(
    expected: usize,
    deadline: std::time::Instant,
    mut recv: impl FnMut(std::time::Duration) -> Option<Msg>,
) -> std::collections::BTreeSet<(String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < expected {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(msg) = recv(left) else {
            break;
        };
        let publisher = msg.topic.rsplit('/').next().unwrap_or_default().to_owned();
        let index = String::from_utf8_lossy(&msg.payload)
            .trim_end_matches('.')
            .to_owned();
        assert!(
            seen.insert((publisher, index)),
            "a message arrived twice: {}",
            msg.topic
        );
    }
    seen
}

/// Publishes a QoS 2 barrier message and returns what a subscriber received before it, so a
/// test can assert that nothing (or exactly this) arrived without waiting on a fixed sleep.
pub fn collect_until_barrier(
    broker: &Broker,
    barrier_topic: &str,
    mut recv: impl FnMut(Duration) -> Msg,
) -> Vec<Msg> {
    mosquitto_pub(
        broker,
        Version::V311,
        barrier_topic,
        b"barrier",
        2,
        false,
        &[],
    );
    let mut before = Vec::new();
    loop {
        let msg = recv(TIMEOUT);
        if msg.topic == barrier_topic {
            return before;
        }
        before.push(msg);
    }
}
