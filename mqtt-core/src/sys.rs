//! `$SYS` topics, named as Mosquitto names them so existing dashboards keep working.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use crate::broker::Broker;
use crate::codec::QoS;
use crate::message::Message;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Publishes the broker's current figures as retained `$SYS` messages.
pub fn publish_sys(broker: &Broker, now: Instant) {
    let stats = &broker.stats;
    let uptime = now.saturating_duration_since(broker.started_at).as_secs();
    let dropped_qos0 = stats.dropped_qos0.load(Ordering::Relaxed);
    let dropped_full = stats.dropped_queue_full.load(Ordering::Relaxed);
    let figures: [(&'static str, String); 17] = [
        ("$SYS/broker/version", format!("gateway version {VERSION}")),
        ("$SYS/broker/uptime", format!("{uptime} seconds")),
        (
            "$SYS/broker/clients/connected",
            stats.connections.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/clients/total",
            broker.session_count().to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            stats.messages_received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            stats.messages_sent.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            stats.bytes_received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/bytes/sent",
            stats.bytes_sent.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            broker.subscription_count().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            broker.retained_count().to_string(),
        ),
        // Mosquitto's total, and the two reasons apart: QoS 0 by policy, QoS 1/2 only
        // when a session's queue is full of them.
        (
            "$SYS/broker/publish/messages/dropped",
            (dropped_qos0 + dropped_full).to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped/qos0",
            dropped_qos0.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped/queue_full",
            dropped_full.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/refused/store_full",
            stats.refused_store_full.load(Ordering::Relaxed).to_string(),
        ),
        // Flow control: publishes a datagram client was told to send again later, and
        // receivers cut off for taking nothing while they held publishers back.
        (
            "$SYS/broker/publish/messages/refused/congestion",
            stats.refused_congestion.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/clients/disconnected/slow_receiver",
            stats
                .slow_receivers_disconnected
                .load(Ordering::Relaxed)
                .to_string(),
        ),
        // Times clients went over their listener's messages_rate or bytes_rate and were
        // paused (EMQX's limiter), not the messages that waited.
        (
            "$SYS/broker/clients/rate_limited",
            stats.rate_limited.load(Ordering::Relaxed).to_string(),
        ),
    ];
    let per_listener = broker
        .all_listener_stats()
        .into_iter()
        // A listener name is a configuration key, but a topic level it must not break.
        .filter(|(name, _)| !name.contains(['/', '+', '#']))
        .flat_map(|(name, stats)| {
            let qos0 = stats.dropped_qos0.load(Ordering::Relaxed);
            let full = stats.dropped_queue_full.load(Ordering::Relaxed);
            let prefix = format!("$SYS/broker/listeners/{name}/publish/messages/dropped");
            [
                (ByteString::from(format!("{prefix}/qos0")), qos0.to_string()),
                (
                    ByteString::from(format!("{prefix}/queue_full")),
                    full.to_string(),
                ),
            ]
        });
    let figures = figures
        .into_iter()
        .map(|(topic, value)| (ByteString::from_static(topic), value))
        .chain(per_listener)
        .chain(transport_figures(broker));
    for (topic, value) in figures {
        let message = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true, now);
        // The broker's own figures: nobody to acknowledge or slow down.
        let _ = broker.dispatch(Arc::new(message), None);
    }
}

/// The listeners' transport counters, each under its listener and summed over all of
/// them at the broker's level (`$SYS/broker/dtls/handshakes/completed`).
fn transport_figures(broker: &Broker) -> Vec<(ByteString, String)> {
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut out = Vec::new();
    let mut figures = Vec::new();
    for (name, source) in broker.all_listener_figures() {
        figures.clear();
        source.figures(&mut figures);
        // A listener name is a configuration key, but a topic level it must not break.
        let publish_listener = !name.contains(['/', '+', '#']);
        for &(topic, value) in &figures {
            let total = totals.entry(topic).or_default();
            *total = total.saturating_add(value);
            if publish_listener {
                out.push((
                    ByteString::from(format!("$SYS/broker/listeners/{name}/{topic}")),
                    value.to_string(),
                ));
            }
        }
    }
    out.extend(totals.into_iter().map(|(topic, value)| {
        (
            ByteString::from(format!("$SYS/broker/{topic}")),
            value.to_string(),
        )
    }));
    out
}
