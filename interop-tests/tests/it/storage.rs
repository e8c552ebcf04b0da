#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! The disk store: what the gateway acknowledged survives SIGKILL, and a store it cannot
//! read stops start-up by name unless the operator asks to move it aside.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interop_tests::broker::{gateway_command, with_data_dir};
use interop_tests::process::{Line, Proc};
use interop_tests::raw::{packet, publish_packet, ConnectOpts, RawClient, Received};
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, MosquittoSub, Setting, Version,
};

/// One role of `py/crash_flow.py` (paho-mqtt) against `broker`.
fn crash_flow(broker: &Broker, args: &[&str]) -> Proc {
    let python = interop_tests::tools::python();
    let mut cmd = Command::new(python);
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/crash_flow.py"))
        .arg(&broker.host)
        .arg(broker.port.to_string())
        .args(args);
    Proc::spawn(&format!("crash_flow.py {}", args[0]), cmd)
}

/// The next line of `proc`, failing the test on silence or exit.
fn expect_line(proc: &mut Proc, timeout: Duration) -> String {
    match proc.next_line(timeout) {
        Line::Line(line) => line,
        other => panic!("{}: {other:?}\n{}", proc.name(), proc.stderr()),
    }
}

/// Every "acked N" a publisher printed until it reported `until` (or exited).
fn acked_numbers(proc: &mut Proc, until: &str, timeout: Duration) -> BTreeSet<u64> {
    let mut acked = BTreeSet::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match proc.next_line(Duration::from_millis(200)) {
            Line::Line(line) if line == until => return acked,
            Line::Line(line) => {
                if let Some(number) = line.strip_prefix("acked ") {
                    acked.insert(number.parse().expect("a number"));
                }
            }
            Line::Eof => return acked,
            Line::Timeout => {}
        }
    }
    panic!("{} never said {until:?}\n{}", proc.name(), proc.stderr());
}

/// A message as the receiving role printed it: its number, DUP flag and QoS.
fn received(broker: &Broker, client_id: &str) -> Vec<(u64, bool, u8)> {
    let mut receiver = crash_flow(broker, &["receive", client_id, "3"]);
    assert_eq!(
        expect_line(&mut receiver, Duration::from_secs(10)),
        "session_present 1",
        "the subscriber's session survived the crash"
    );
    let mut got = Vec::new();
    loop {
        match receiver.next_line(Duration::from_secs(30)) {
            Line::Line(line) => {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(fields.len(), 4, "{line}");
                got.push((
                    fields[1].parse().expect("a number"),
                    fields[2] == "1",
                    fields[3].parse().expect("a QoS"),
                ));
            }
            Line::Eof => return got,
            Line::Timeout => panic!("receiver stalled\n{}", receiver.stderr()),
        }
    }
}

/// A topic, and the client id of a paho subscriber whose persistent session subscribed to
/// it at `qos` and left.
fn offline_subscriber(broker: &Broker, label: &str, qos: &str) -> (String, String) {
    let topic = unique_topic(label);
    let subscriber = unique_client_id(&format!("{label}-sub"));
    let mut setup = crash_flow(broker, &["subscribe", &subscriber, &topic, qos]);
    assert_eq!(expect_line(&mut setup, Duration::from_secs(10)), "ready");
    (topic, subscriber)
}

/// A gateway on disk storage whose queues can hold every message of a crash test.
fn crashable_gateway() -> Option<Broker> {
    Broker::start_gateway_only(
        "a gateway it can kill and restart",
        &[
            Setting::new("GATEWAY_STORAGE__FSYNC", "batch"),
            Setting::new("GATEWAY_MQTT__MAX_QUEUED_MESSAGES", "100000"),
        ],
    )
}

#[test]
fn qos1_messages_acknowledged_before_a_crash_reach_a_persistent_subscriber_after_it() {
    const PER_PUBLISHER: u64 = 25_000;
    let Some(mut broker) = crashable_gateway() else {
        return;
    };
    let (topic, subscriber) = offline_subscriber(&broker, "crash1", "1");

    let per = PER_PUBLISHER.to_string();
    let mut publishers: Vec<Proc> = (0..2u64)
        .map(|n| {
            let first = (n * PER_PUBLISHER).to_string();
            let id = unique_client_id("crash-pub");
            crash_flow(&broker, &["publish", &id, &topic, "1", &first, &per])
        })
        .collect();
    // Kill once the publishers have about 20,000 acknowledgements between them.
    let mut acked = BTreeSet::new();
    while acked.len() < 20_000 {
        for publisher in &mut publishers {
            if let Line::Line(line) = publisher.next_line(Duration::from_millis(50)) {
                if let Some(number) = line.strip_prefix("acked ") {
                    acked.insert(number.parse::<u64>().expect("a number"));
                } else {
                    panic!("{} said {line:?} before the crash", publisher.name());
                }
            }
        }
    }
    broker.crash();
    for publisher in &mut publishers {
        acked.extend(acked_numbers(publisher, "lost", Duration::from_secs(20)));
        publisher.kill();
    }
    assert!(
        (acked.len() as u64) < 2 * PER_PUBLISHER,
        "the crash came after every message was acknowledged; it proves nothing"
    );
    broker.restart();

    let got = received(&broker, &subscriber);
    let mut seen = BTreeSet::new();
    for (number, dup, qos) in &got {
        assert_eq!(*qos, 1);
        assert!(
            seen.insert(*number) || *dup,
            "{number} came twice, the second time without DUP"
        );
    }
    let lost: Vec<_> = acked.difference(&seen).take(10).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost after the crash, e.g. {lost:?}",
        acked.difference(&seen).count(),
        acked.len()
    );
}

#[test]
fn a_qos2_flow_interrupted_by_a_crash_completes_exactly_once_after_it() {
    const COUNT: u64 = 3_000;
    const HELD: u16 = 3;
    let Some(mut broker) = crashable_gateway() else {
        return;
    };
    let (topic, subscriber) = offline_subscriber(&broker, "crash2", "2");

    // The publisher keeps its session and resumes it after the restart: flows that had
    // their PUBREC go on with PUBREL, the others with the PUBLISH again (DUP).
    let publisher_id = unique_client_id("crash-pub2");
    let count = COUNT.to_string();
    let mut publisher = crash_flow(
        &broker,
        &[
            "publish",
            &publisher_id,
            &topic,
            "2",
            "0",
            &count,
            "--resume",
        ],
    );
    let mut before = 0;
    while before < COUNT / 3 {
        let line = expect_line(&mut publisher, Duration::from_secs(20));
        assert!(line.starts_with("acked "), "{line}");
        before += 1;
    }
    // Flows certainly cut between PUBREC and PUBREL, whatever paho's timing: a raw client
    // reads its PUBRECs and sends the PUBRELs only after the restart.
    let holder_opts = ConnectOpts {
        clean: false,
        ..ConnectOpts::new(Version::V311, &unique_client_id("crash-held"))
    };
    let (mut holder, code) = RawClient::connect(&broker, &holder_opts);
    assert_eq!(code, 0);
    for id in 1..=HELD {
        let number = (COUNT + u64::from(id) - 1).to_string();
        holder.send(&publish_packet(
            Version::V311,
            &topic,
            2,
            id,
            number.as_bytes(),
        ));
    }
    for _ in 1..=HELD {
        match holder.read_packet(Duration::from_secs(10)) {
            Received::Packet(p) if p.kind == 5 => {}
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    broker.crash();
    drop(holder);
    broker.restart();
    // What the test is about: flows cut between PUBREC and PUBREL, whose packet ids the
    // gateway must remember across the crash (it logs how many came back).
    let log = broker.log_tail();
    let restored = log
        .rsplit("awaiting_release=")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse::<u32>().ok());
    println!("QoS 2 packet ids awaiting release after the restart: {restored:?}");
    assert!(
        restored.is_some_and(|count| count >= u32::from(HELD)),
        "the flows held between PUBREC and PUBREL did not come back\n{log}"
    );
    let (mut holder, code) = RawClient::connect(&broker, &holder_opts);
    assert_eq!(code, 0);
    for id in 1..=HELD {
        holder.send(&packet(0x62, &id.to_be_bytes()));
    }
    for id in 1..=HELD {
        match holder.read_packet(Duration::from_secs(10)) {
            Received::Packet(p) if p.kind == 7 => assert_eq!(p.body, id.to_be_bytes()),
            other => panic!("expected PUBCOMP for {id}, got {other:?}"),
        }
    }
    let acked = acked_numbers(&mut publisher, "done", Duration::from_secs(60));
    assert_eq!(
        acked.len() as u64 + before,
        COUNT,
        "every flow completes after the restart"
    );

    let got = received(&broker, &subscriber);
    let mut counts = BTreeMap::new();
    for (number, _, qos) in &got {
        assert_eq!(*qos, 2);
        *counts.entry(*number).or_insert(0) += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let missing: Vec<_> = (0..COUNT + u64::from(HELD))
        .filter(|n| !counts.contains_key(n))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} messages never delivered, e.g. {missing:?}",
        missing.len(),
        COUNT + u64::from(HELD)
    );
}

#[test]
fn retained_messages_acknowledged_before_a_crash_come_back_after_it() {
    let Some(mut broker) = Broker::start_gateway_only(
        "a gateway it can kill and restart",
        &[Setting::new("GATEWAY_STORAGE__FSYNC", "batch")],
    ) else {
        return;
    };
    let base = unique_topic("crash");
    let mut expected = BTreeMap::new();
    for i in 0..12 {
        let topic = format!("{base}/kept/{i}");
        let payload = format!("value {i}");
        // mosquitto_pub returns once its PUBACK (or PUBCOMP) arrived.
        mosquitto_pub(
            &broker,
            Version::V5,
            &topic,
            payload.as_bytes(),
            1 + i % 2,
            true,
            &[],
        );
        expected.insert(topic, payload.into_bytes());
    }
    let cleared = format!("{base}/cleared");
    mosquitto_pub(&broker, Version::V311, &cleared, b"soon gone", 1, true, &[]);
    mosquitto_pub(&broker, Version::V311, &cleared, b"", 1, true, &[]);
    let expiring = format!("{base}/expiring");
    mosquitto_pub(
        &broker,
        Version::V5,
        &expiring,
        b"short-lived",
        1,
        true,
        &["-D", "publish", "message-expiry-interval", "1"],
    );
    let lasting = format!("{base}/lasting");
    mosquitto_pub(
        &broker,
        Version::V5,
        &lasting,
        b"long-lived",
        2,
        true,
        &["-D", "publish", "message-expiry-interval", "3600"],
    );

    broker.crash_and_restart();
    // The expiring message's second passes while the gateway is down or starting.
    std::thread::sleep(Duration::from_millis(1100));

    let filter = format!("{base}/#");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&filter], 1, &[]);
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < expected.len() + 1 && Instant::now() < deadline {
        if let Some(msg) = sub.try_recv(Duration::from_millis(500)) {
            assert!(msg.retain, "{} came without the retain flag", msg.topic);
            got.insert(msg.topic, msg.payload);
        }
    }
    // Anything else (the cleared or the expired topic) would arrive right behind.
    if let Some(msg) = sub.try_recv(Duration::from_millis(500)) {
        panic!(
            "unexpected retained message on {}: {:?}",
            msg.topic, msg.payload
        );
    }
    assert_eq!(got.remove(&lasting), Some(b"long-lived".to_vec()));
    assert_eq!(got, expected, "retained messages after the crash");
}

#[test]
fn retained_messages_under_fsync_never_survive_a_crash_one_sync_interval_later() {
    let Some(mut broker) = Broker::start_gateway_only(
        "a gateway it can kill and restart",
        &[Setting::new("GATEWAY_STORAGE__FSYNC", "never")],
    ) else {
        return;
    };
    let base = unique_topic("never");
    // Two in a row: should a sync cover the first, the second comes well within the same
    // interval, and then no write follows that could carry it to the disk.
    let topics = [format!("{base}/first"), format!("{base}/second")];
    for topic in &topics {
        mosquitto_pub(&broker, Version::V5, topic, b"kept", 1, true, &[]);
    }
    // Twice the default never_sync_interval (1s) and a margin; time is what is awaited.
    std::thread::sleep(Duration::from_millis(2500));
    broker.crash_and_restart();

    let filter = format!("{base}/#");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&filter], 1, &[]);
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < topics.len() && Instant::now() < deadline {
        if let Some(msg) = sub.try_recv(Duration::from_millis(500)) {
            assert!(msg.retain, "{} came without the retain flag", msg.topic);
            assert_eq!(msg.payload, b"kept");
            got.insert(msg.topic);
        }
    }
    let expected: BTreeSet<String> = topics.into_iter().collect();
    assert_eq!(got, expected, "retained messages synced before the crash");
}

#[test]
fn an_unreadable_store_stops_start_up_by_name_unless_moved_aside() {
    if interop_tests::external_mode() {
        interop_tests::skip_external("[a gateway the test starts: start-up checks]");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store.redb");
    std::fs::write(&store, vec![0x42; 4096]).expect("write garbage");
    let start = |extra: &[&str]| {
        let mut cmd = gateway_command();
        with_data_dir(&mut cmd, dir.path());
        // Every listener on a port of the system's choosing: only start-up matters here.
        for listener in [
            "LISTENERS__TCP__DEFAULT",
            "LISTENERS__WS__DEFAULT",
            "GATEWAY__MQTTSN__LISTENERS__UDP__DEFAULT",
            "GATEWAY__COAP__LISTENERS__UDP__DEFAULT",
            "GATEWAY__COAP__LISTENERS__TCP__DEFAULT",
            "GATEWAY__LWM2M__LISTENERS__UDP__DEFAULT",
            "GATEWAY__STOMP__LISTENERS__TCP__DEFAULT",
        ] {
            cmd.env(format!("GATEWAY_{listener}__BIND"), "127.0.0.1:0");
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("start the gateway")
    };

    let refused = start(&[]).wait_with_output().expect("gateway output");
    assert!(!refused.status.success(), "started on an unreadable store");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&store.display().to_string())
            && stderr.contains("--reset-unreadable-store"),
        "the error should name the file and the way out:\n{stderr}"
    );

    let mut reset = start(&["--reset-unreadable-store"]);
    std::thread::sleep(Duration::from_millis(1500));
    let still_running = reset.try_wait().expect("poll the gateway").is_none();
    let _ = reset.kill();
    let output = reset.wait_with_output().expect("gateway output");
    assert!(
        still_running,
        "the gateway stopped:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let moved: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read the data directory")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("store.redb.unreadable-"))
        .collect();
    assert_eq!(moved.len(), 1, "the unreadable store is kept aside");
    assert!(store.exists(), "a new, empty store took its place");
}
