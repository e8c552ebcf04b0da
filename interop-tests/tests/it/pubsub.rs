//! Publish -> subscribe at every QoS, across client families and protocol versions.
//!
//! Each scenario: a subscriber of one family subscribes at QoS 0, 1 and 2 (one filter
//! per QoS); a publisher of each family (itself included) publishes at QoS 0, 1 and 2
//! to each filter. Every message must arrive once, byte for byte (every byte value,
//! empty, UTF-8), at QoS min(published, subscribed).

use std::collections::BTreeMap;

use interop_tests::{
    sample_payloads, unique_topic, Broker, Family, Publisher, Subscriber, Version, TIMEOUT,
};

/// Runs the full QoS grid from every publisher family into a `sub_family` subscriber.
fn qos_grid_into(sub_family: Family, version: Version) {
    let broker = Broker::start();
    for pub_family in Family::ALL {
        let prefix = unique_topic(&format!("qos-{sub_family:?}-{pub_family:?}"));
        let filters: Vec<String> = (0..3).map(|sq| format!("{prefix}/s{sq}/+")).collect();
        let subs: Vec<(&str, u8)> = filters
            .iter()
            .enumerate()
            .map(|(q, f)| (f.as_str(), q as u8))
            .collect();
        let (mut subscriber, granted) = Subscriber::start(sub_family, version, &broker, &subs);
        assert_eq!(
            granted,
            vec![0, 1, 2],
            "{sub_family:?} {version:?}: granted QoS"
        );

        let payloads = sample_payloads();
        let mut expected = BTreeMap::new();
        let mut publisher = Publisher::start(pub_family, version, &broker);
        for sub_qos in 0u8..3 {
            for pub_qos in 0u8..3 {
                let topic = format!("{prefix}/s{sub_qos}/p{pub_qos}");
                let payload = payloads[usize::from(sub_qos * 3 + pub_qos) % payloads.len()].clone();
                publisher.publish(&topic, &payload, pub_qos, false);
                expected.insert(topic, (payload, pub_qos.min(sub_qos)));
            }
        }

        let mut received = BTreeMap::new();
        while received.len() < expected.len() {
            let Some(msg) = subscriber.try_recv(TIMEOUT) else {
                panic!(
                    "{pub_family:?} -> {sub_family:?} {version:?}: received only {:?} of {:?}",
                    received.keys().collect::<Vec<_>>(),
                    expected.keys().collect::<Vec<_>>()
                );
            };
            assert!(
                !msg.retain,
                "{pub_family:?} -> {sub_family:?} {version:?}: retain set on {}",
                msg.topic
            );
            let previous = received.insert(msg.topic.clone(), (msg.payload, msg.qos));
            assert!(
                previous.is_none(),
                "{pub_family:?} -> {sub_family:?} {version:?}: {} delivered twice",
                msg.topic
            );
        }
        assert_eq!(
            received, expected,
            "{pub_family:?} -> {sub_family:?} {version:?}: (payload, QoS) per topic"
        );
    }
}

#[test]
fn v311_mosquitto_sub_gets_exact_payloads_at_min_qos_from_every_client() {
    qos_grid_into(Family::Mosquitto, Version::V311);
}

#[test]
fn v5_mosquitto_sub_gets_exact_payloads_at_min_qos_from_every_client() {
    qos_grid_into(Family::Mosquitto, Version::V5);
}

#[test]
fn v311_paho_subscriber_gets_exact_payloads_at_min_qos_from_every_client() {
    qos_grid_into(Family::Paho, Version::V311);
}

#[test]
fn v5_paho_subscriber_gets_exact_payloads_at_min_qos_from_every_client() {
    qos_grid_into(Family::Paho, Version::V5);
}

#[test]
fn v311_mqttjs_subscriber_gets_exact_payloads_at_min_qos_from_every_client() {
    qos_grid_into(Family::MqttJs, Version::V311);
}

#[test]
fn v5_mqttjs_subscriber_gets_exact_payloads_at_min_qos_from_every_client() {
    qos_grid_into(Family::MqttJs, Version::V5);
}

/// MQTT 3.1 ("MQIsdp", level 3) is still spoken by old devices.
#[test]
fn v31_clients_of_every_family_exchange_messages() {
    let broker = Broker::start();
    for sub_family in Family::ALL {
        let prefix = unique_topic(&format!("v31-{sub_family:?}"));
        let filter = format!("{prefix}/#");
        let (mut subscriber, granted) =
            Subscriber::start(sub_family, Version::V31, &broker, &[(&filter, 2)]);
        assert_eq!(granted, vec![2]);
        for pub_family in Family::ALL {
            let topic = format!("{prefix}/{pub_family:?}");
            Publisher::start(pub_family, Version::V31, &broker).publish(
                &topic,
                b"\x00v31\xff",
                2,
                false,
            );
            let msg = subscriber.recv(TIMEOUT);
            assert_eq!(
                (msg.topic.as_str(), msg.payload.as_slice(), msg.qos),
                (topic.as_str(), &b"\x00v31\xff"[..], 2)
            );
        }
    }
}
