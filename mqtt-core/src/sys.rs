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

/// Whether a figure only grows (messages received) or goes up and down (clients connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureKind {
    Counter,
    Gauge,
}

/// One of the broker's figures, as `$SYS` and the metrics endpoint both show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// Its name below `$SYS/broker/` (Mosquitto's, where Mosquitto has the figure):
    /// `clients/connected`, `dtls/handshakes/completed`.
    pub name: &'static str,
    /// The listener it counts for; `None` for the whole broker (a listener's counter
    /// summed over every listener included).
    pub listener: Option<Arc<str>>,
    pub kind: FigureKind,
    pub value: u64,
}

impl Figure {
    fn broker(name: &'static str, kind: FigureKind, value: u64) -> Figure {
        Figure {
            name,
            listener: None,
            kind,
            value,
        }
    }

    /// Its `$SYS` topic; `None` for a listener whose name would break the topic's levels.
    pub fn sys_topic(&self) -> Option<ByteString> {
        match &self.listener {
            None => Some(ByteString::from(format!("$SYS/broker/{}", self.name))),
            // A listener name is a configuration key, but a topic level it must not break.
            Some(listener) if listener.contains(['/', '+', '#']) => None,
            Some(listener) => Some(ByteString::from(format!(
                "$SYS/broker/listeners/{listener}/{}",
                self.name
            ))),
        }
    }
}

/// The broker's figures now: its own, each listener's, and the listeners' transport
/// counters, each under its listener and summed over all of them at the broker's level.
pub fn figures(broker: &Broker, now: Instant) -> Vec<Figure> {
    use FigureKind::{Counter, Gauge};
    let stats = &broker.stats;
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let uptime = now.saturating_duration_since(broker.started_at).as_secs();
    let dropped_qos0 = read(&stats.dropped_qos0);
    let dropped_full = read(&stats.dropped_queue_full);
    let mut figures = vec![
        Figure::broker("uptime", Counter, uptime),
        Figure::broker("clients/connected", Gauge, read(&stats.connections)),
        Figure::broker("clients/total", Gauge, broker.session_count() as u64),
        Figure::broker("messages/received", Counter, read(&stats.messages_received)),
        Figure::broker("messages/sent", Counter, read(&stats.messages_sent)),
        Figure::broker("bytes/received", Counter, read(&stats.bytes_received)),
        Figure::broker("bytes/sent", Counter, read(&stats.bytes_sent)),
        Figure::broker(
            "subscriptions/count",
            Gauge,
            broker.subscription_count() as u64,
        ),
        Figure::broker(
            "retained messages/count",
            Gauge,
            broker.retained_count() as u64,
        ),
        // Mosquitto's total, and the two reasons apart: QoS 0 by policy, QoS 1/2 only
        // when a session's queue is full of them.
        Figure::broker(
            "publish/messages/dropped",
            Counter,
            dropped_qos0 + dropped_full,
        ),
        Figure::broker("publish/messages/dropped/qos0", Counter, dropped_qos0),
        Figure::broker("publish/messages/dropped/queue_full", Counter, dropped_full),
        Figure::broker(
            "publish/messages/refused/store_full",
            Counter,
            read(&stats.refused_store_full),
        ),
        // Flow control: publishes a datagram client was told to send again later, and
        // receivers cut off for taking nothing while they held publishers back.
        Figure::broker(
            "publish/messages/refused/congestion",
            Counter,
            read(&stats.refused_congestion),
        ),
        Figure::broker(
            "clients/disconnected/slow_receiver",
            Counter,
            read(&stats.slow_receivers_disconnected),
        ),
        // Times clients went over their listener's messages_rate or bytes_rate and were
        // paused (EMQX's limiter), not the messages that waited.
        Figure::broker("clients/rate_limited", Counter, read(&stats.rate_limited)),
        Figure::broker(
            "clients/refused/authentication",
            Counter,
            read(&stats.authentication_failures),
        ),
        Figure::broker(
            "clients/refused/banned",
            Counter,
            read(&stats.banned_refused),
        ),
    ];
    for (name, stats) in broker.all_listener_stats() {
        for (figure, value) in [
            ("publish/messages/dropped/qos0", read(&stats.dropped_qos0)),
            (
                "publish/messages/dropped/queue_full",
                read(&stats.dropped_queue_full),
            ),
        ] {
            figures.push(Figure {
                name: figure,
                listener: Some(name.clone()),
                kind: Counter,
                value,
            });
        }
    }
    transport_figures(broker, &mut figures);
    figures
}

/// Publishes the broker's current figures as retained `$SYS` messages.
pub fn publish_sys(broker: &Broker, now: Instant) {
    let version = (
        ByteString::from_static("$SYS/broker/version"),
        format!("gateway version {VERSION}"),
    );
    let figures = figures(broker, now).into_iter().filter_map(|figure| {
        let value = match figure.name {
            "uptime" => format!("{} seconds", figure.value),
            _ => figure.value.to_string(),
        };
        figure.sys_topic().map(|topic| (topic, value))
    });
    for (topic, value) in std::iter::once(version).chain(figures) {
        let message = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true, now);
        // The broker's own figures: nobody to acknowledge or slow down.
        let _ = broker.dispatch(Arc::new(message), None);
    }
}

/// The listeners' transport counters, each under its listener and summed over all of
/// them at the broker's level (`$SYS/broker/dtls/handshakes/completed`).
fn transport_figures(broker: &Broker, out: &mut Vec<Figure>) {
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut figures = Vec::new();
    for (name, source) in broker.all_listener_figures() {
        figures.clear();
        source.figures(&mut figures);
        for &(figure, value) in &figures {
            let total = totals.entry(figure).or_default();
            *total = total.saturating_add(value);
            out.push(Figure {
                name: figure,
                listener: Some(name.clone()),
                kind: transport_kind(figure),
                value,
            });
        }
    }
    out.extend(totals.into_iter().map(|(name, value)| Figure {
        name,
        listener: None,
        kind: transport_kind(name),
        value,
    }));
}

/// A transport figure named `.../current` is a level (peers now); the others count.
fn transport_kind(name: &str) -> FigureKind {
    if name.ends_with("/current") {
        FigureKind::Gauge
    } else {
        FigureKind::Counter
    }
}
