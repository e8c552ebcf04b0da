//! One publish fanned out to 1,000 sessions: routing plus queueing, no sockets.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqtt_core::auth::{Auth, ClientInfo};
use mqtt_core::broker::{Broker, ConnectRequest};
use mqtt_core::codec::{QoS, SubscriptionOptions};
use mqtt_core::message::Message;
use mqtt_core::session::{ConnControl, SessionCell, SessionKey, Wakeup};

struct NoWakeup;

impl Wakeup for NoWakeup {
    fn wake(&self) {}
}

const SUBSCRIBERS: usize = 1000;

fn broker_with_subscribers(now: Instant) -> (Arc<Broker>, Vec<Arc<SessionCell>>) {
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
            let request = ConnectRequest {
                key: SessionKey {
                    namespace: "mqtt",
                    client_id: Arc::from(client_id.as_str()),
                },
                clean_start: true,
                expiry_interval: 0,
                will: None,
                control: ConnControl::new(i as u64, Arc::new(NoWakeup)),
            };
            let session = broker.connect(request, now).session;
            let client = ClientInfo {
                protocol: "mqtt",
                listener: "bench".into(),
                client_id: client_id.into(),
                username: None,
                password: None,
                peer: None,
                mountpoint: None,
            };
            let options = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            };
            broker
                .subscribe(&session, &client, "fleet/+/status", options, None, now)
                .expect("subscribes");
            session
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
                broker.publish(Arc::new(message));
                spent += started.elapsed();
                // Emptying the queues is the connections' work, not the router's.
                for session in &sessions {
                    session.state.lock().pop_queued(now);
                }
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
