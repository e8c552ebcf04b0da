//! One publish fanned out to 1,000 sessions: routing plus queueing, no sockets.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqtt_core::auth::Auth;
use mqtt_core::broker::Broker;
use mqtt_core::client::ClientSession;
use mqtt_core::codec::{QoS, SubscriptionOptions};
use mqtt_core::message::Message;
use mqtt_core::session::Wakeup;

struct NoWakeup;

impl Wakeup for NoWakeup {
    fn wake(&self) {}
}

const SUBSCRIBERS: usize = 1000;

fn broker_with_subscribers(now: Instant) -> (Arc<Broker>, Vec<ClientSession>) {
    let mut config = gateway_config::Config::defaults().expect("embedded defaults");
    config.mqtt.max_queued_messages = 0;
    let broker = Arc::new(Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        Auth::allow_all(),
        now,
    ));
    let sessions = (0..SUBSCRIBERS)
        .map(|i| {
            let client_id = format!("sub-{i}");
            let client = mqtt_core::testing::open_session(
                &broker,
                "mqtt",
                &client_id,
                true,
                0,
                Arc::new(NoWakeup),
                now,
            )
            .expect("opens");
            let options = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            };
            client
                .subscribe("fleet/+/status", options, None, now)
                .expect("subscribes");
            client
        })
        .collect();
    (broker, sessions)
}

fn fan_out(c: &mut Criterion) {
    let now = Instant::now();
    let (broker, sessions) = broker_with_subscribers(now);
    let payload = Bytes::from(vec![1u8; 64]);
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("publish_to_1000_sessions", |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let message = Message::new(
                    ByteString::from_static("fleet/7/status"),
                    payload.clone(),
                    QoS::AtLeastOnce,
                    false,
                    now,
                );
                let started = Instant::now();
                let _ = mqtt_core::testing::route(&broker, message);
                spent += started.elapsed();
                // Emptying the queues is the connections' work, not the router's.
                for client in &sessions {
                    client.session().state.lock().pop_queued(now);
                }
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
