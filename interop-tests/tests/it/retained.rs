//! Retained messages: kept per topic, delivered to later subscribers with the retain
//! flag, matched by wildcards, cleared by an empty payload; MQTT 5 retain handling and
//! retain-as-published.
//!
//! "Nothing else arrived" is proven with a barrier: a message published after the
//! subscription on a topic the subscriber also holds. Retained messages are sent when
//! the subscription is made, so they all precede the barrier.

use serde_json::json;

use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, Family, Lib, Msg, Publisher,
    ScriptClient, Subscriber, Version, TIMEOUT,
};

/// Removes retained messages a test set, so a shared external broker is left as found.
fn clear_retained(broker: &Broker, topics: &[String]) {
    for topic in topics {
        mosquitto_pub(broker, Version::V311, topic, b"", 1, true, &[]);
    }
}

fn topics_of(msgs: &[Msg]) -> Vec<&str> {
    let mut topics: Vec<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
    topics.sort_unstable();
    topics
}

#[test]
fn retained_message_from_each_client_reaches_a_later_subscriber_with_retain_flag() {
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        for (i, setter) in Family::ALL.into_iter().enumerate() {
            // The subscriber is of another family than the setter.
            let reader = Family::ALL[(i + 1) % Family::ALL.len()];
            let prefix = unique_topic("retained");
            let topic = format!("{prefix}/state");
            let payload: Vec<u8> = (0u8..=255).rev().collect();
            Publisher::start(setter, version, &broker).publish(&topic, &payload, 1, true);

            let barrier = format!("{prefix}/barrier");
            let (mut sub, _) =
                Subscriber::start(reader, version, &broker, &[(&topic, 1), (&barrier, 1)]);
            let got = sub.until_barrier(&broker, &barrier);
            assert_eq!(
                got.len(),
                1,
                "{setter:?} -> {reader:?} {version:?}: expected one retained message, got {got:?}"
            );
            assert_eq!(got[0].topic, topic);
            assert_eq!(
                got[0].payload, payload,
                "{setter:?} -> {reader:?} {version:?}: payload"
            );
            assert!(
                got[0].retain,
                "{setter:?} -> {reader:?} {version:?}: retain flag not set on a retained message"
            );
            assert_eq!(got[0].qos, 1);
            clear_retained(&broker, &[topic]);
        }
    }
}

#[test]
fn wildcard_subscription_gets_every_matching_retained_message_and_no_other() {
    let broker = Broker::start();
    let prefix = unique_topic("retained-wild");
    let mut setter =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("setter"));
    for leaf in ["a/1", "a/2", "a/x/3", "b/1"] {
        setter.publish(&format!("{prefix}/{leaf}"), leaf.as_bytes(), 1, true);
    }
    let barrier = format!("{prefix}/barrier");

    for (filter, expected) in [
        ("a/+", vec!["a/1", "a/2"]),
        ("a/#", vec!["a/1", "a/2", "a/x/3"]),
        ("+/1", vec!["a/1", "b/1"]),
        ("#", vec!["a/1", "a/2", "a/x/3", "b/1"]),
    ] {
        for family in Family::ALL {
            let full = format!("{prefix}/{filter}");
            let (mut sub, _) =
                Subscriber::start(family, Version::V311, &broker, &[(&full, 1), (&barrier, 1)]);
            let mut got = sub.until_barrier(&broker, &barrier);
            // '#' also matches the barrier topic; only the retained messages count.
            got.retain(|m| m.topic != barrier);
            let expected: Vec<String> = expected
                .iter()
                .map(|leaf| format!("{prefix}/{leaf}"))
                .collect();
            assert_eq!(
                topics_of(&got),
                expected,
                "{family:?}: retained messages matching {filter}"
            );
            assert!(got
                .iter()
                .all(|m| m.retain && m.payload == m.topic.as_bytes()[prefix.len() + 1..]));
        }
    }
    let leaves = ["a/1", "a/2", "a/x/3", "b/1"].map(|leaf| format!("{prefix}/{leaf}"));
    clear_retained(&broker, &leaves);
}

#[test]
fn empty_retained_publish_from_each_client_clears_the_retained_message() {
    let broker = Broker::start();
    for version in [Version::V311, Version::V5] {
        for clearer in Family::ALL {
            let prefix = unique_topic("retained-clear");
            let topic = format!("{prefix}/state");
            let barrier = format!("{prefix}/barrier");
            Publisher::start(Family::Paho, version, &broker).publish(
                &topic,
                b"to be cleared",
                1,
                true,
            );
            Publisher::start(clearer, version, &broker).publish(&topic, b"", 1, true);

            let (mut sub, _) = Subscriber::start(
                Family::Paho,
                version,
                &broker,
                &[(&topic, 1), (&barrier, 1)],
            );
            let got = sub.until_barrier(&broker, &barrier);
            assert!(
                got.is_empty(),
                "{clearer:?} {version:?}: retained message still delivered after clearing: {got:?}"
            );
        }
    }
}

#[test]
fn v5_retain_handling_0_sends_always_1_only_on_new_subscription_2_never() {
    let broker = Broker::start();
    for lib in Lib::ALL {
        let prefix = unique_topic("retain-handling");
        let topic = format!("{prefix}/state");
        let barrier = format!("{prefix}/barrier");
        ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("setter"))
            .publish(&topic, b"kept", 1, true);

        let mut sub = ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("rh"));
        sub.subscribe(&barrier, 1);
        // (retain handling, retained messages expected on first and on repeated subscribe)
        for (rh, first, again) in [(0, 1, 1), (1, 1, 0), (2, 0, 0)] {
            for (attempt, expected) in [("first", first), ("repeated", again)] {
                sub.subscribe_with(json!([{ "filter": topic, "qos": 1, "rh": rh }]), json!({}));
                let got = sub.until_barrier(&broker, &barrier);
                assert_eq!(
                    got.len(),
                    expected,
                    "{lib:?}: retain handling {rh}, {attempt} subscribe: got {got:?}"
                );
                assert!(got.iter().all(|m| m.retain && m.payload == b"kept"));
            }
            sub.unsubscribe(&[&topic]);
        }
        clear_retained(&broker, &[topic]);
    }
}

#[test]
fn live_delivery_keeps_retain_flag_only_with_retain_as_published() {
    let broker = Broker::start();
    for lib in Lib::ALL {
        let prefix = unique_topic("rap");
        let topic = format!("{prefix}/live");
        let mut keeps =
            ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("rap1"));
        keeps.subscribe_with(
            json!([{ "filter": topic, "qos": 1, "rap": true }]),
            json!({}),
        );
        let mut clears =
            ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("rap0"));
        clears.subscribe_with(
            json!([{ "filter": topic, "qos": 1, "rap": false }]),
            json!({}),
        );
        // MQTT 3.1.1 (3.3.1.3): a message sent because of an existing subscription
        // has retain 0.
        let mut old =
            ScriptClient::connected(lib, Version::V311, &broker, &unique_client_id("v311"));
        old.subscribe(&topic, 1);

        ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("pub"))
            .publish(&topic, b"live", 1, true);
        assert!(
            keeps.recv(TIMEOUT).retain,
            "{lib:?}: retain-as-published subscriber lost the retain flag"
        );
        assert!(
            !clears.recv(TIMEOUT).retain,
            "{lib:?}: retain flag kept without retain-as-published"
        );
        assert!(
            !old.recv(TIMEOUT).retain,
            "{lib:?}: MQTT 3.1.1 subscriber got retain 1 on a live message"
        );

        // Clean up the retained message so a shared external broker is left as found.
        ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("clr"))
            .publish(&topic, b"", 1, true);
    }
}
