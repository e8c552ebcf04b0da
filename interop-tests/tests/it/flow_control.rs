//! Intake follows delivery, on the shipped defaults: publishers at full speed into one
//! subscriber slower than all of them together are slowed to its pace, and it gets every
//! message. A broker that takes in what it cannot deliver drops the difference instead.

use std::time::{Duration, Instant};

use interop_tests::mosquitto::MosquittoSub;
use interop_tests::raw::{self, ConnectOpts, RawClient, Received};
use interop_tests::{
    collect_distinct, unique_client_id, unique_topic, Broker, Lib, ScriptClient, Version,
};

const PUBLISHERS: usize = 6;

/// `PUBLISHERS` paho-mqtt clients publish `per_publisher` messages each at `qos`, as fast
/// as they can, to topics under one filter that one mosquitto_sub holds at `qos`; every
/// message must arrive, once.
fn fan_in_loses_nothing(qos: u8, per_publisher: usize) {
    let broker = Broker::start();
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
    let seen = collect_distinct(expected, started + Duration::from_secs(120), |left| {
        sub.try_recv(left)
    });
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
/// Client B sends SUBSCRIBE; client A then publishes a matching message at once, without
/// waiting for B's SUBACK. B's SUBSCRIBE reached the broker first, so it must take effect
/// first, and B gets the message, every time (Mosquitto, which handles its sockets in the
/// order they became ready, does).
#[test]
fn a_subscribe_that_arrives_first_takes_effect_before_a_publish_that_arrives_after() {
    let broker = Broker::start();
    let rounds = 100;
    let mut missed = Vec::new();
    for version in [Version::V311, Version::V5] {
        for round in 0..rounds / 2 {
            let topic = unique_topic("order");
            let (mut subscriber, code) =
                RawClient::connect(&broker, &ConnectOpts::new(version, &unique_client_id("b")));
            assert_eq!(code, 0);
            let (mut publisher, code) =
                RawClient::connect(&broker, &ConnectOpts::new(version, &unique_client_id("a")));
            assert_eq!(code, 0);
            subscriber.send(&raw::subscribe_packet(version, 1, &topic, 0));
            publisher.send(&raw::publish_packet(version, &topic, 0, 0, b"after"));
            let mut got_suback = false;
            let mut got_message = false;
            while !(got_suback && got_message) {
                match subscriber.read_packet(Duration::from_millis(500)) {
                    Received::Packet(packet) if packet.kind == raw::SUBACK => got_suback = true,
                    Received::Packet(packet) if packet.kind == raw::PUBLISH => got_message = true,
                    Received::Packet(_) => {}
                    _ => break,
                }
            }
            assert!(got_suback, "{version:?} round {round}: no SUBACK");
            if !got_message {
                missed.push(format!("{version:?} round {round}"));
            }
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {rounds} publishes that arrived after a matching SUBSCRIBE missed it: {missed:?}",
        missed.len()
    );
}
