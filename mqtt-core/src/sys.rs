//! `$SYS` topics, named as Mosquitto names them so existing dashboards keep working.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What a figure counts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The whole broker (a listener's counter summed over every listener included).
    Broker,
    /// One listener, by name.
    Listener(Arc<str>),
    /// One protocol's clients, by session namespace (`"coap"`).
    Protocol(&'static str),
}

/// One of the broker's figures, as `$SYS` and the metrics endpoint both show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// Its name below `$SYS/broker/` (Mosquitto's, where Mosquitto has the figure):
    /// `clients/connected`, `dtls/handshakes/completed`.
    pub name: &'static str,
    pub scope: Scope,
    pub kind: FigureKind,
    pub value: u64,
}

impl Figure {
    fn broker(name: &'static str, kind: FigureKind, value: u64) -> Figure {
        Figure {
            name,
            scope: Scope::Broker,
            kind,
            value,
        }
    }

    /// Its `$SYS` topic; `None` for a listener whose name would break the topic's levels.
    pub fn sys_topic(&self) -> Option<ByteString> {
        match &self.scope {
            Scope::Broker => Some(ByteString::from(format!("$SYS/broker/{}", self.name))),
            // A listener name is a configuration key, but a topic level it must not break.
            Scope::Listener(listener) if listener.contains(['/', '+', '#']) => None,
            Scope::Listener(listener) => Some(ByteString::from(format!(
                "$SYS/broker/listeners/{listener}/{}",
                self.name
            ))),
            Scope::Protocol(namespace) => Some(ByteString::from(format!(
                "$SYS/broker/protocols/{namespace}/{}",
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
    // What the sessions hold, summed over them when asked rather than counted as messages
    // come and go, which would put one more shared counter on every delivery.
    let held = broker.queue_totals();
    figures.extend([
        Figure::broker("messages/queued", Gauge, held.queued),
        Figure::broker("messages/queued/bytes", Gauge, held.queued_bytes),
        Figure::broker("messages/queued/deepest", Gauge, held.deepest),
        Figure::broker("messages/inflight", Gauge, held.inflight),
        Figure::broker("messages/awaiting_release", Gauge, held.awaiting_release),
    ]);
    for counts in stats.protocols() {
        for (name, kind, value) in [
            ("clients/connected", Gauge, counts.connected),
            ("clients/connections", Counter, counts.connections),
        ] {
            figures.push(Figure {
                name,
                scope: Scope::Protocol(counts.namespace),
                kind,
                value,
            });
        }
    }
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
                scope: Scope::Listener(name.clone()),
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
                scope: Scope::Listener(name.clone()),
                kind: transport_kind(figure),
                value,
            });
        }
    }
    out.extend(totals.into_iter().map(|(name, value)| Figure {
        name,
        scope: Scope::Broker,
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

/// A distribution of durations, kept as Prometheus shows one: how many fell at or under
/// each bound, their sum and their count. Recording is three relaxed atomic additions, so
/// a writer thread may record every operation while a scrape reads.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, in microseconds, ascending.
    bounds_us: &'static [u64],
    /// One count per bound, then one for what is over the last.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Each upper bound and how many fell at or under it (cumulative, as Prometheus has
    /// them); what is over the last bound is in `count` only.
    pub buckets: Vec<(Duration, u64)>,
    pub sum: Duration,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds_us: &'static [u64]) -> Histogram {
        Histogram {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let at = self.bounds_us.partition_point(|&bound| bound < us);
        if let Some(bucket) = self.buckets.get(at) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut below = 0u64;
        let buckets = self
            .bounds_us
            .iter()
            .zip(self.buckets.iter())
            .map(|(&bound, bucket)| {
                below = below.saturating_add(bucket.load(Ordering::Relaxed));
                (Duration::from_micros(bound), below)
            })
            .collect();
        // Read last, so that it is never below the buckets' sum (a record landing between
        // the reads counts here and in no bucket yet, as if over the last bound).
        let count = self.count.load(Ordering::Relaxed).max(below);
        HistogramSnapshot {
            buckets,
            sum: Duration::from_micros(self.sum_us.load(Ordering::Relaxed)),
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_counts_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let histogram = Histogram::new(&[100, 1_000]);
        for us in [0, 100, 101, 1_000, 5_000] {
            histogram.record(Duration::from_micros(us));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(
            snapshot.buckets,
            vec![
                (Duration::from_micros(100), 2),
                (Duration::from_micros(1_000), 4)
            ]
        );
        assert_eq!(snapshot.count, 5);
        assert_eq!(snapshot.sum, Duration::from_micros(6_201));
    }
}
