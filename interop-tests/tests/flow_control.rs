//! Intake follows delivery, on the shipped defaults: publishers at full speed into one
//! subscriber slower than all of them together are slowed to its pace, and it gets every
//! message. A broker that takes in what it cannot deliver drops the difference instead.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use interop_tests::mosquitto::MosquittoSub;
use interop_tests::{unique_client_id, unique_topic, Broker, Lib, ScriptClient, Version};

const PUBLISHERS: usize = 6;

/// `PUBLISHERS` paho-mqtt clients publish `per_publisher` messages each at `qos`, as fast
/// as they can, to topics under one filter that one mosquitto_sub holds at `qos`; every
/// message must arrive, once.
fn fan_in_loses_nothing(qos: u8, per_publisher: usize) {
    let Some(broker) = Broker::start_gateway_only("flow control from receivers back", &[]) else {
        return;
    };
    let prefix = unique_topic("fan-in");
    let filter = format!("{prefix}/#");
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&filter], qos, &[]);
    let mut publishers: Vec<ScriptClient> = (0..PUBLISHERS)
        .map(|n| {
            ScriptClient::connected(
                Lib::Paho,
                Version::V311,
                &broker,
                &unique_client_id(&format!("pub{n}")),
            )
        })
        .collect();
    let started = Instant::now();
    for (n, publisher) in publishers.iter_mut().enumerate() {
        publisher.start_publish_many(&format!("{prefix}/{n}"), per_publisher, qos, 64);
    }

    let expected = PUBLISHERS * per_publisher;
    let mut seen = BTreeSet::new();
    let deadline = started + Duration::from_secs(120);
    while seen.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = sub.try_recv(left) else {
            break;
        };
        let publisher = msg.topic.rsplit('/').next().unwrap_or_default().to_owned();
        let index = String::from_utf8_lossy(&msg.payload)
            .trim_end_matches('.')
            .to_owned();
        assert!(
            seen.insert((publisher, index)),
            "QoS {qos}: a message arrived twice: {}",
            msg.topic
        );
    }
    let elapsed = started.elapsed();
    for publisher in &mut publishers {
        publisher.finish_publish_many();
    }
    assert_eq!(
        seen.len(),
        expected,
        "QoS {qos}: {} of {expected} messages arrived in {elapsed:?}; broker log:\n{}",
        seen.len(),
        broker.log_tail()
    );
    println!(
        "QoS {qos}: {expected} messages from {PUBLISHERS} publishers in {elapsed:?}, none lost"
    );
}

#[test]
fn full_speed_publishers_into_one_mosquitto_sub_lose_no_qos0_message_on_the_defaults() {
    fan_in_loses_nothing(0, 20_000);
}

#[test]
fn full_speed_publishers_into_one_mosquitto_sub_lose_no_qos1_message_on_the_defaults() {
    fan_in_loses_nothing(1, 5_000);
}
