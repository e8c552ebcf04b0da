#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! The disk store: what the gateway acknowledged survives SIGKILL, and a store it cannot
//! read stops start-up by name unless the operator asks to move it aside.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use interop_tests::broker::{gateway_command, with_data_dir};
use interop_tests::{mosquitto_pub, unique_topic, Broker, MosquittoSub, Setting, Version};

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
fn an_unreadable_store_stops_start_up_by_name_unless_moved_aside() {
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
