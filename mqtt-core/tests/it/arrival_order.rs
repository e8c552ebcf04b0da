#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]
//! What arrives first takes effect first, across connections handled in parallel: a
//! subscription applied after routing a message that arrived after it still gets that
//! message, and gets nothing that arrived before it, nor a second copy.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mqtt_core::client::ClientSession;
use mqtt_core::codec::{QoS, SubscriptionOptions};
use mqtt_core::testing::{broker, open_session, subscribe, NoWakeup};

fn client(broker: &Arc<mqtt_core::broker::Broker>, id: &str, now: Instant) -> ClientSession {
    open_session(broker, "mqtt", id, true, 0, Arc::new(NoWakeup), now).unwrap()
}

/// Publishes `payload` to `topic` as input that was there by the stamp `latest`.
fn publish_arrived(
    client: &ClientSession,
    topic: &str,
    payload: &'static [u8],
    latest: u64,
    now: Instant,
) {
    let permit = client
        .permit(topic, QoS::AtLeastOnce, false)
        .unwrap()
        .arrived_by(latest);
    let _ = client.publish_permitted(permit, Bytes::from_static(payload), Default::default(), now);
}

/// Subscribes `client` to `filter` as a SUBSCRIBE that arrived after the stamp `earliest`.
fn subscribe_arrived(
    client: &ClientSession,
    filter: &str,
    options: SubscriptionOptions,
    earliest: u64,
    now: Instant,
) {
    client
        .subscribe_arrived(filter, options, None, earliest, now)
        .unwrap();
}

fn at_least_once() -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    }
}

fn payloads(client: &ClientSession, now: Instant) -> Vec<Bytes> {
    let mut state = client.session().state.lock();
    std::iter::from_fn(|| state.pop_queued(now))
        .map(|delivery| delivery.message.payload.clone())
        .collect()
}

#[test]
fn a_subscription_applied_late_gets_what_arrived_after_it_and_nothing_before() {
    let now = Instant::now();
    let broker = broker(now);
    let publisher = client(&broker, "a", now);
    let subscriber = client(&broker, "b", now);
    let base = mqtt_core::arrival::stamp();
    publish_arrived(&publisher, "t/1", b"before", base + 10, now);
    publish_arrived(&publisher, "t/1", b"after", base + 30, now);
    publish_arrived(&publisher, "other", b"elsewhere", base + 31, now);
    // The SUBSCRIBE came after stamp 20, when "before" was there already.
    subscribe_arrived(&subscriber, "t/+", at_least_once(), base + 20, now);
    assert_eq!(
        payloads(&subscriber, now),
        vec![Bytes::from_static(b"after")]
    );
    // From now on the subscription is in the router: no second copy of anything.
    publish_arrived(&publisher, "t/1", b"live", base + 50, now);
    assert_eq!(
        payloads(&subscriber, now),
        vec![Bytes::from_static(b"live")]
    );
}

#[test]
fn a_late_subscription_adds_no_copy_where_another_subscription_gave_one() {
    let now = Instant::now();
    let broker = broker(now);
    let publisher = client(&broker, "a", now);
    let subscriber = client(&broker, "b", now);
    subscribe(&subscriber, "t/#", QoS::AtLeastOnce, now);
    let base = mqtt_core::arrival::stamp();
    publish_arrived(&publisher, "t/1", b"once", base + 30, now);
    subscribe_arrived(&subscriber, "t/1", at_least_once(), base + 20, now);
    assert_eq!(
        payloads(&subscriber, now),
        vec![Bytes::from_static(b"once")]
    );
}

#[test]
fn no_local_and_shared_subscriptions_catch_nothing_up() {
    let now = Instant::now();
    let broker = broker(now);
    let both = client(&broker, "both", now);
    let base = mqtt_core::arrival::stamp();
    publish_arrived(&both, "t/1", b"own", base + 30, now);
    let no_local = SubscriptionOptions {
        no_local: true,
        ..at_least_once()
    };
    subscribe_arrived(&both, "t/1", no_local, base + 20, now);
    assert!(
        payloads(&both, now).is_empty(),
        "its own message, with no local"
    );

    let member = client(&broker, "member", now);
    subscribe_arrived(&member, "$share/g/t/1", at_least_once(), base + 20, now);
    assert!(
        payloads(&member, now).is_empty(),
        "a share may have had it elsewhere"
    );
}
