//! The generator's accounting, checked against real brokers: the gateway must show every
//! QoS 1/2 message delivered exactly once, and a Mosquitto configured to drop must show
//! its drops as losses that add up.
//!
//! Needs `target/release/gateway` (`cargo build --release -p gateway -p gateway-bench`) and
//! `/usr/sbin/mosquitto` (Debian `mosquitto`, which `scripts/install-test-tools.sh` installs
//! without starting its service).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use interop_tests::broker::wait_mqtt_ready;
use interop_tests::ports::{bound_listeners, server_port};
use serde_json::Value;

/// Every generator run must finish within this, or the test fails instead of hanging.
const RUN_LIMIT: Duration = Duration::from_secs(45);

/// How long a broker may take to start and answer a CONNECT.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Kills the broker when the test ends, whether it passed or not.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn release_binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release -p gateway -p gateway-bench` first",
        path.display()
    );
    path
}

/// The gateway with MQTT over TCP only, on a port of the system's choosing that it reports
/// in its log; ready once it answers a CONNECT.
fn start_gateway() -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(release_binary("gateway"))
        .env("GATEWAY_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0")
        // Only the TCP listener: the others would take fixed ports that clash between runs.
        .env("GATEWAY_LISTENERS__WS__DEFAULT__ENABLE", "false")
        .env("GATEWAY_GATEWAY__MQTTSN__ENABLE", "false")
        .env("GATEWAY_GATEWAY__COAP__ENABLE", "false")
        .env("GATEWAY_GATEWAY__LWM2M__ENABLE", "false")
        .env("GATEWAY_GATEWAY__STOMP__ENABLE", "false")
        .env("GATEWAY_DASHBOARD__LISTENERS__HTTP__ENABLE", "false")
        .env("GATEWAY_MQTT__MAX_QUEUED_MESSAGES", "100000")
        .env("GATEWAY_SYS__ENABLE", "false")
        // Quiet, but for the line saying where the listener is bound.
        .env("GATEWAY_LOG__LEVEL", "warn,adapter_kit::launch=info")
        // As Mosquitto runs here: nothing kept on disk, and no data directory to share.
        .env("GATEWAY_STORAGE__BACKEND", "memory")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting the gateway");
    let deadline = Instant::now() + START_LIMIT;
    let addr: SocketAddr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(tcp) = bound_listeners(&text)
            .into_iter()
            .find(|l| l.name == "tcp:default")
        {
            break tcp.addr;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the gateway exited at start-up: {status}\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway reported no tcp:default listener within {START_LIMIT:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let broker = Broker {
        child,
        port: addr.port(),
        _dir: dir,
    };
    wait_mqtt_ready(addr, START_LIMIT);
    broker
}

/// Mosquitto that keeps at most 10 messages for a client it cannot write to, and drops
/// the rest, QoS 0 included; ready once it answers a CONNECT.
fn start_dropping_mosquitto() -> Broker {
    let mosquitto = PathBuf::from("/usr/sbin/mosquitto");
    assert!(
        mosquitto.exists(),
        "/usr/sbin/mosquitto is missing: run scripts/install-test-tools.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    // Mosquitto cannot report a port-0 bind: a port below the ephemeral range, which no
    // client socket is given.
    let port = server_port();
    let config = dir.path().join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 10\nlog_dest none\n"
        ),
    )
    .unwrap();
    let child = Command::new(mosquitto)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mosquitto");
    let broker = Broker {
        child,
        port,
        _dir: dir,
    };
    wait_mqtt_ready(([127, 0, 0, 1], port).into(), START_LIMIT);
    broker
}

/// Runs the generator to completion and returns its JSON report.
fn bench(port: u16, args: &[&str]) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway-bench"))
        .args(args)
        .args(["--port", &port.to_string(), "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting gateway-bench");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway-bench {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "gateway-bench {args:?} failed: {stderr}\n{stdout}"
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("{\"scenario\":"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one JSON line in:\n{stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

fn count(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

#[test]
fn every_qos1_and_qos2_message_through_the_gateway_is_counted_once() {
    let gateway = start_gateway();
    let cases: [(&[&str], u64); 2] = [
        (
            &["p2p", "--qos", "1", "--pairs", "4", "--count", "5000"],
            20_000,
        ),
        (
            &[
                "fanin",
                "--qos",
                "2",
                "--publishers",
                "3",
                "--count",
                "2000",
            ],
            6_000,
        ),
    ];
    for (args, messages) in cases {
        let mut args = args.to_vec();
        args.extend(["--duration", "30", "--grace", "5"]);
        let report = bench(gateway.port, &args);
        let context = format!("{args:?}: {report}");
        assert_eq!(count(&report, "errors"), 0, "{context}");
        assert_eq!(count(&report, "sent"), messages, "{context}");
        assert_eq!(count(&report, "acked"), messages, "{context}");
        assert_eq!(count(&report, "expected"), messages, "{context}");
        assert_eq!(count(&report, "received"), messages, "{context}");
        assert_eq!(count(&report, "unique"), messages, "{context}");
        assert_eq!(count(&report, "lost"), 0, "{context}");
        assert_eq!(count(&report, "duplicated"), 0, "{context}");
        assert_eq!(count(&report, "foreign"), 0, "{context}");
        assert!(
            report["latency_us"]["count"].as_u64() == Some(messages),
            "{context}"
        );
    }
}

#[test]
fn messages_a_broker_drops_are_reported_lost() {
    let mosquitto = start_dropping_mosquitto();
    // 60 MB of QoS 0 at a subscriber that reads nothing for 8 s, long enough for the
    // publishers to finish even on a loaded machine: more than the socket buffers on both
    // sides can hold (32 MiB receive, 4 MiB send at most), so Mosquitto has to queue, and
    // it keeps only 10.
    let report = bench(
        mosquitto.port,
        &[
            "fanin",
            "--qos",
            "0",
            "--publishers",
            "2",
            "--count",
            "30000",
            "--size",
            "1024",
            "--sub-stall",
            "8",
            "--duration",
            "30",
            "--grace",
            "1",
        ],
    );
    let expected = count(&report, "expected");
    let unique = count(&report, "unique");
    let lost = count(&report, "lost");
    assert_eq!(count(&report, "sent"), 60_000, "{report}");
    assert_eq!(expected, 60_000, "{report}");
    assert!(lost > 0, "Mosquitto dropped nothing? {report}");
    assert_eq!(unique + lost, expected, "{report}");
    assert_eq!(count(&report, "received"), unique, "{report}");
    assert_eq!(count(&report, "duplicated"), 0, "{report}");
}
