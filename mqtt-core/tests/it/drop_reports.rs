#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]
//! Dropped messages are counted exactly and summed up in the log once per session and
//! interval, never line by line: a flood of drops must not cost more than delivery.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mqtt_core::auth::Auth;
use mqtt_core::broker::{Broker, DROP_REPORT_INTERVAL};
use mqtt_core::codec::QoS;
use mqtt_core::testing::{broker_on_config, default_config, publish, subscriber};

/// What the log says while `run` runs.
fn log_of(run: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let bytes = captured.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

fn broker_queueing(max_queued_messages: u64, now: Instant) -> Arc<Broker> {
    let mut config = default_config();
    config.mqtt.max_queued_messages = max_queued_messages;
    Arc::new(broker_on_config(&config, Auth::allow_all(), now))
}

#[test]
fn a_flood_of_drops_is_counted_exactly_and_summed_up_once_per_interval() {
    let start = Instant::now();
    let broker = broker_queueing(10, start);
    // Connected and never reading: its queue fills at 10 and stays full.
    let _slow = subscriber(&broker, "slow", "flood", QoS::AtLeastOnce, 0, start);

    let log = log_of(|| {
        for _ in 0..10_000 {
            publish(&broker, "flood", b"x", QoS::AtLeastOnce, start);
        }
        broker.handle_timeouts(start);
        for _ in 0..5_000 {
            publish(&broker, "flood", b"x", QoS::AtLeastOnce, start);
        }
        // Not yet an interval since the first report: nothing said.
        broker.handle_timeouts(start + DROP_REPORT_INTERVAL / 2);
        broker.handle_timeouts(start + DROP_REPORT_INTERVAL);
        // Nothing dropped since: nothing said.
        broker.handle_timeouts(start + DROP_REPORT_INTERVAL * 2);
    });

    assert_eq!(
        broker.stats.dropped_queue_full.load(Ordering::Relaxed),
        14_990,
        "every QoS 1 message beyond the 10 queued is counted"
    );
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("dropped"))
        .collect();
    assert_eq!(lines.len(), 2, "one summary per interval:\n{log}");
    assert!(
        lines[0].contains("client_id=slow") && lines[0].contains("qos1_2=9990"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("qos1_2=5000"), "{}", lines[1]);
}

#[test]
fn the_drop_counters_are_published_under_sys() {
    let start = Instant::now();
    // Room for 5: the slow subscriber drops 5 of 10, and the watcher takes the 5 figures.
    let broker = broker_queueing(5, start);
    let _slow = subscriber(&broker, "slow", "flood", QoS::AtMostOnce, 0, start);
    for _ in 0..10 {
        publish(&broker, "flood", b"x", QoS::AtMostOnce, start);
    }
    mqtt_core::sys::publish_sys(&broker, start);

    let watcher = subscriber(
        &broker,
        "watcher",
        "$SYS/broker/publish/messages/#",
        QoS::AtMostOnce,
        0,
        start,
    );
    let mut figures = Vec::new();
    let mut state = watcher.session().state.lock();
    while let Some(delivery) = state.pop_queued(start) {
        let value = String::from_utf8_lossy(&delivery.message.payload).into_owned();
        figures.push((delivery.message.topic.to_string(), value));
    }
    figures.sort();
    let expected = [
        ("$SYS/broker/publish/messages/dropped", "5"),
        ("$SYS/broker/publish/messages/dropped/qos0", "5"),
        ("$SYS/broker/publish/messages/dropped/queue_full", "0"),
        ("$SYS/broker/publish/messages/refused/congestion", "0"),
        ("$SYS/broker/publish/messages/refused/store_full", "0"),
    ]
    .map(|(topic, value)| (topic.to_owned(), value.to_owned()));
    assert_eq!(figures, expected);
    drop(state);

    // The same drops, by the listener the dropping session came through.
    let per_listener = subscriber(
        &broker,
        "listener-watcher",
        "$SYS/broker/listeners/#",
        QoS::AtMostOnce,
        0,
        start,
    );
    let mut figures = Vec::new();
    let mut state = per_listener.session().state.lock();
    while let Some(delivery) = state.pop_queued(start) {
        let value = String::from_utf8_lossy(&delivery.message.payload).into_owned();
        figures.push((delivery.message.topic.to_string(), value));
    }
    figures.sort();
    let expected = [
        (
            "$SYS/broker/listeners/test/publish/messages/dropped/qos0",
            "5",
        ),
        (
            "$SYS/broker/listeners/test/publish/messages/dropped/queue_full",
            "0",
        ),
    ]
    .map(|(topic, value)| (topic.to_owned(), value.to_owned()));
    assert_eq!(figures, expected);
}

/// Fixed figures, as a listener's transport would keep them.
struct Figures(Vec<(&'static str, u64)>);

impl mqtt_core::broker::ListenerFigures for Figures {
    fn figures(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend_from_slice(&self.0);
    }
}

#[test]
fn transport_counters_are_published_per_listener_and_summed_at_the_brokers_level() {
    let start = Instant::now();
    let broker = broker_queueing(100, start);
    broker.add_listener_figures(
        Arc::from("coap:dtls:default"),
        Arc::new(Figures(vec![
            ("dtls/handshakes/completed", 3),
            ("dtls/cookies/sent", 7),
        ])),
    );
    broker.add_listener_figures(
        Arc::from("lwm2m:dtls:default"),
        Arc::new(Figures(vec![("dtls/handshakes/completed", 2)])),
    );
    // A name that would break a topic level is summed but not published on its own.
    broker.add_listener_figures(
        Arc::from("odd/+"),
        Arc::new(Figures(vec![("dtls/handshakes/completed", 1)])),
    );
    let watcher = subscriber(
        &broker,
        "watcher",
        "$SYS/broker/#",
        QoS::AtMostOnce,
        0,
        start,
    );
    mqtt_core::sys::publish_sys(&broker, start);
    let mut figures = Vec::new();
    let mut state = watcher.session().state.lock();
    while let Some(delivery) = state.pop_queued(start) {
        let topic = delivery.message.topic.to_string();
        if topic.contains("dtls") {
            let value = String::from_utf8_lossy(&delivery.message.payload).into_owned();
            figures.push((topic, value));
        }
    }
    figures.sort();
    let expected = [
        ("$SYS/broker/dtls/cookies/sent", "7"),
        ("$SYS/broker/dtls/handshakes/completed", "6"),
        (
            "$SYS/broker/listeners/coap:dtls:default/dtls/cookies/sent",
            "7",
        ),
        (
            "$SYS/broker/listeners/coap:dtls:default/dtls/handshakes/completed",
            "3",
        ),
        (
            "$SYS/broker/listeners/lwm2m:dtls:default/dtls/handshakes/completed",
            "2",
        ),
    ]
    .map(|(topic, value)| (topic.to_owned(), value.to_owned()));
    assert_eq!(figures, expected);
}
