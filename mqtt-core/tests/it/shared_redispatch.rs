//! `Broker::redispatch_shared`: a message one member of a shared subscription took and will
//! not acknowledge goes to another member of the same group, never back to the one leaving.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Instant;

use mqtt_core::broker::{Broker, WillDisposition};
use mqtt_core::client::{ClientSession, OpenSession, Presented};
use mqtt_core::codec::{QoS, SubscriptionOptions};
use mqtt_core::message::Delivery;
use mqtt_core::session::{ConnControl, SessionCell};
use mqtt_core::testing;

struct Member {
    client: Option<ClientSession>,
    session: Arc<SessionCell>,
}

fn member(broker: &Arc<Broker>, id: &str, mountpoint: Option<&str>, now: Instant) -> Member {
    let who = broker
        .authenticate(Presented {
            protocol: "mqtt",
            listener: Arc::from("tcp:test"),
            client_id: Arc::from(id),
            username: None,
            password: None,
            peer: None,
            mountpoint: Arc::from(mountpoint.unwrap_or("")),
            mountpoint_values: Vec::new(),
        })
        .expect("authenticated");
    let control = ConnControl::new(broker.next_connection_id(), Arc::new(testing::NoWakeup));
    let client = broker
        .open_session(
            who,
            OpenSession {
                clean_start: true,
                expiry_interval: 3600,
                will: None,
                control,
                rates: mqtt_core::rate::PublishRates::UNLIMITED,
                proto: mqtt_core::clients::ProtoInfo {
                    name: "MQTT",
                    version: mqtt_core::clients::ProtoVer::Level(5),
                },
                keepalive: 0,
                announce: true,
            },
            now,
        )
        .expect("opened");
    Member {
        session: client.session().clone(),
        client: Some(client),
    }
}

impl Member {
    fn subscribe(&self, filter: &str, identifier: u32, now: Instant) {
        self.client
            .as_ref()
            .expect("connected")
            .subscribe(
                filter,
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
                Some(identifier),
                now,
            )
            .expect("subscribed");
    }

    fn leave(&mut self, now: Instant) {
        if let Some(client) = self.client.take() {
            client.close(WillDisposition::Discard, now);
        }
    }

    fn redispatch(&self, filter: &str, delivery: Delivery) -> Result<(), Delivery> {
        self.client
            .as_ref()
            .expect("connected")
            .redispatch_shared(filter, delivery)
    }

    fn take(&self, now: Instant) -> Vec<Delivery> {
        let mut state = self.session.state.lock();
        std::iter::from_fn(|| state.pop_queued(now)).collect()
    }
}

#[test]
fn a_shared_message_goes_to_another_member_with_that_members_subscription() {
    let now = Instant::now();
    let broker = testing::broker(now);
    let leaving = member(&broker, "leaving", None, now);
    leaving.subscribe("$share/g/jobs/+", 1, now);
    testing::publish(&broker, "jobs/a", b"one", QoS::AtLeastOnce, now);
    let held = leaving.take(now);
    assert_eq!(held.len(), 1);

    let other = member(&broker, "other", None, now);
    other.subscribe("$share/g/jobs/+", 7, now);
    // Members of another group, and plain subscribers, are not candidates.
    let stranger = member(&broker, "stranger", None, now);
    stranger.subscribe("$share/h/jobs/+", 3, now);
    let plain = member(&broker, "plain", None, now);
    plain.subscribe("jobs/+", 4, now);
    for _ in 0..4 {
        leaving
            .redispatch("$share/g/jobs/+", held[0].clone())
            .expect("another member took it");
    }
    let handed = other.take(now);
    assert_eq!(handed.len(), 4, "every hand-over reaches the other member");
    assert_eq!(&handed[0].message.payload[..], b"one");
    assert_eq!(handed[0].subscription_ids.as_slice(), &[7]);
    assert_eq!(handed[0].qos, QoS::AtLeastOnce);
    assert!(
        leaving.take(now).is_empty(),
        "never back to the one leaving"
    );
    assert!(stranger.take(now).is_empty() && plain.take(now).is_empty());
}

#[test]
fn connected_members_are_preferred_and_a_lone_member_gets_its_message_back() {
    let now = Instant::now();
    let broker = testing::broker(now);
    let leaving = member(&broker, "leaving", None, now);
    leaving.subscribe("$queue/work", 1, now);
    testing::publish(&broker, "work", b"w", QoS::AtLeastOnce, now);
    let held = leaving.take(now).remove(0);

    // Alone in the group: the delivery comes back to the caller.
    let back = leaving
        .redispatch("$queue/work", held)
        .expect_err("nobody else in the group");
    // A plain filter is not a group either.
    let back = leaving.redispatch("work", back).expect_err("not shared");

    let mut away = member(&broker, "away", None, now);
    away.subscribe("$queue/work", 2, now);
    away.leave(now);
    let mut here = member(&broker, "here", None, now);
    here.subscribe("$share/$queue/work", 3, now);
    for _ in 0..3 {
        leaving
            .redispatch("$queue/work", back.clone())
            .expect("handed over");
    }
    assert_eq!(
        here.take(now).len(),
        3,
        "the connected member takes them all"
    );
    assert!(away.take(now).is_empty());

    // When only a disconnected member is left, its session keeps the message.
    here.leave(now);
    leaving
        .redispatch("$queue/work", back)
        .expect("handed to a disconnected member");
    assert_eq!(away.take(now).len() + here.take(now).len(), 1);
}

#[test]
fn mounted_shared_filters_are_found_as_the_session_holds_them() {
    let now = Instant::now();
    let broker = testing::broker(now);
    let leaving = member(&broker, "leaving", Some("site/"), now);
    leaving.subscribe("$share/g/t", 1, now);
    let other = member(&broker, "other", Some("site/"), now);
    other.subscribe("$share/g/t", 2, now);
    testing::publish(&broker, "site/t", b"m", QoS::AtLeastOnce, now);
    let held: Vec<Delivery> = leaving
        .take(now)
        .into_iter()
        .chain(other.take(now))
        .collect();
    assert_eq!(held.len(), 1, "one member got it");
    let mountpoint = leaving
        .client
        .as_ref()
        .expect("connected")
        .client()
        .mountpoint
        .clone();
    let filter = &*mqtt_core::mountpoint::mounted_filter(mountpoint.as_ref(), "$share/g/t");
    assert_eq!(filter, "$share/g/site/t");
    leaving
        .redispatch(filter, held[0].clone())
        .expect("handed over");
    assert_eq!(other.take(now).len(), 1);
}
