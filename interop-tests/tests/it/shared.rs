//! Shared subscriptions: `$share/<group>/<filter>` (MQTT 5, accepted from 3.1.1
//! clients too, as EMQX and Mosquitto do) and EMQX's `$queue/<filter>`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use interop_tests::{
    unique_client_id, unique_topic, Broker, Family, Lib, Msg, ScriptClient, Setting, Subscriber,
    Version, QUIET, TIMEOUT,
};

const MESSAGES: usize = 30;

/// Counts, per payload, how often it was delivered across `members`.
fn tally(members: &[Vec<Msg>]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for msgs in members {
        for m in msgs {
            *seen
                .entry(String::from_utf8_lossy(&m.payload).into_owned())
                .or_insert(0) += 1;
        }
    }
    seen
}

/// Runs one group of members (one per family) on `shared_filter` beside a plain
/// subscriber of `topic`, publishes MESSAGES QoS 1 messages to `topic`, and checks
/// that the group got each exactly once, spread over members, and the plain one all.
fn check_group(broker: &Broker, version: Version, shared_filter: &str, topic: &str, prefix: &str) {
    let barrier = format!("{prefix}/barrier");
    let mut members: Vec<(Family, Subscriber)> = Family::ALL
        .into_iter()
        .map(|family| {
            let (sub, granted) = Subscriber::start(
                family,
                version,
                broker,
                &[(shared_filter, 1), (&barrier, 1)],
            );
            assert_eq!(
                granted,
                vec![1, 1],
                "{family:?} {version:?}: SUBACK for {shared_filter}"
            );
            (family, sub)
        })
        .collect();
    let mut plain = ScriptClient::connected(Lib::Paho, version, broker, &unique_client_id("plain"));
    plain.subscribe(topic, 1);

    let mut publisher =
        ScriptClient::connected(Lib::Paho, version, broker, &unique_client_id("pub"));
    publisher.publish_many(topic, MESSAGES, 1, 0);

    // Each member's messages before the barrier are all it will get of the stream:
    // the stream was fully acknowledged before the barrier was published.
    interop_tests::mosquitto_pub(broker, Version::V311, &barrier, b"barrier", 2, false, &[]);
    let mut received = Vec::new();
    for (family, sub) in members.iter_mut() {
        let mut got = Vec::new();
        loop {
            let m = sub.recv(TIMEOUT);
            if m.topic == barrier {
                break;
            }
            assert_eq!(m.topic, topic, "{family:?}: unexpected topic");
            got.push(m);
        }
        received.push(got);
    }

    let counts = tally(&received);
    let expected: BTreeMap<String, usize> = (0..MESSAGES).map(|i| (i.to_string(), 1)).collect();
    assert_eq!(
        counts, expected,
        "{version:?} {shared_filter}: deliveries per message across the group"
    );
    for ((family, _), got) in members.iter().zip(&received) {
        assert!(!got.is_empty(), "{version:?} {shared_filter}: member {family:?} got none of {MESSAGES}; per member: {:?}",
            received.iter().map(Vec::len).collect::<Vec<_>>());
    }
    let all = plain.recv_n(MESSAGES, TIMEOUT);
    let counts = tally(&[all]);
    assert_eq!(
        counts, expected,
        "{version:?}: the plain subscriber beside the group"
    );
}

fn strategy() -> [Setting; 1] {
    [Setting::new(
        "GATEWAY_MQTT__SHARED_SUBSCRIPTION_STRATEGY",
        "round_robin",
    )]
}

#[test]
fn v5_shared_subscription_delivers_each_message_once_to_the_group_and_all_to_a_plain_subscriber() {
    let broker = Broker::start_preferring(&strategy());
    let prefix = unique_topic("share5");
    let topic = format!("{prefix}/work");
    let group = format!("g{}", rand::random::<u32>());
    check_group(
        &broker,
        Version::V5,
        &format!("$share/{group}/{topic}"),
        &topic,
        &prefix,
    );
}

#[test]
fn v311_shared_subscription_delivers_each_message_once_to_the_group_and_all_to_a_plain_subscriber()
{
    let broker = Broker::start_preferring(&strategy());
    let prefix = unique_topic("share311");
    let topic = format!("{prefix}/work");
    let group = format!("g{}", rand::random::<u32>());
    check_group(
        &broker,
        Version::V311,
        &format!("$share/{group}/{topic}"),
        &topic,
        &prefix,
    );
}

#[test]
fn shared_subscription_filter_with_wildcard_shares_every_matching_topic() {
    let broker = Broker::start_preferring(&strategy());
    let prefix = unique_topic("sharewild");
    let group = format!("g{}", rand::random::<u32>());
    let filter = format!("$share/{group}/{prefix}/+/data");
    let mut members: Vec<ScriptClient> = Lib::ALL
        .into_iter()
        .map(|lib| {
            let mut c =
                ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("wild"));
            assert_eq!(c.subscribe(&filter, 1), 1);
            c
        })
        .collect();
    let mut publisher =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("pub"));
    let topics: Vec<String> = (0..6).map(|i| format!("{prefix}/dev{i}/data")).collect();
    for t in &topics {
        publisher.publish(t, t.as_bytes(), 1, false);
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    while got.len() < topics.len() {
        assert!(
            Instant::now() < deadline,
            "the group got only {got:?} of {topics:?}"
        );
        for m in members.iter_mut() {
            if let Some(msg) = m.try_recv(Duration::from_millis(20)) {
                got.push(msg.topic);
            }
        }
    }
    // Anything more would be a second delivery.
    let extra: Vec<_> = members
        .iter_mut()
        .filter_map(|m| m.try_recv(QUIET))
        .collect();
    assert!(
        extra.is_empty(),
        "delivered more than once to the group: {extra:?}"
    );
    got.sort();
    assert_eq!(
        got, topics,
        "each matching topic delivered once to the group"
    );
}

#[test]
fn queue_prefix_shares_like_a_group_emqx_compatibility() {
    // Mosquitto has no $queue/; only the gateway promises it.
    let Some(broker) = Broker::start_gateway_only(
        "the gateway's $queue/ shared subscriptions (EMQX compatible)",
        &strategy(),
    ) else {
        return;
    };
    let prefix = unique_topic("queue");
    let topic = format!("{prefix}/jobs");
    check_group(
        &broker,
        Version::V5,
        &format!("$queue/{topic}"),
        &topic,
        &prefix,
    );
}
