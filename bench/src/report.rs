//! The figures of one run: one JSON line for scripts, a table for people.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Every run prints exactly one line starting with this, so `grep '^{"scenario":'` finds it.
pub const JSON_PREFIX: &str = "{\"scenario\":";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub host: String,
    pub port: u16,
    pub version: String,
    pub qos: u8,
    pub size: usize,
    pub publishers: usize,
    pub subscribers: usize,
    /// Messages per second per publisher; 0 = as fast as possible.
    pub rate: f64,
    pub duration_s: f64,
    pub inflight: u16,
    pub threads: usize,
    pub topic_prefix: String,
    #[serde(flatten)]
    pub traffic: Option<TrafficFigures>,
    #[serde(flatten)]
    pub conn: Option<ConnFigures>,
    /// The generator's own CPU (user + system) over the measured window, % of one core.
    pub cpu_pct: Option<f64>,
    /// The broker's CPU over the same window, given `--broker-pid`.
    pub broker_cpu_pct: Option<f64>,
    /// Everything else this machine ran meanwhile (other processes, steal), % of one core:
    /// when it is high, the figures are not the broker's alone.
    pub others_cpu_pct: Option<f64>,
    pub broker_rss_kib: Option<u64>,
    pub errors: usize,
    pub error_samples: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficFigures {
    /// Messages the publishers handed to the broker.
    pub sent: u64,
    /// QoS 1/2 messages acknowledged with success (PUBACK / PUBCOMP).
    pub acked: u64,
    /// QoS 1/2 acknowledgements with an error reason code.
    pub refused: u64,
    /// QoS 1/2 messages still unacknowledged when the drain ended.
    pub unacked: u64,
    /// Deliveries owed to the subscribers: each message once per subscriber whose filter
    /// matches it, once per shared group.
    pub expected: u64,
    /// PUBLISH packets delivered, duplicates and foreign ones included.
    pub received: u64,
    /// Distinct messages delivered, counted per subscriber (per group when shared).
    pub unique: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// `expected - unique`: owed deliveries that never came.
    pub lost: u64,
    /// Deliveries that no publisher of this run sent.
    pub foreign: u64,
    /// "sent": loss from the publishers' counts; "gaps": holes in the sequence numbers a
    /// subscriber saw, when the publishers run in another process.
    pub lost_basis: &'static str,
    /// Publishes per second into the broker: sent (QoS 0) or acknowledged (QoS 1/2).
    pub in_rate: f64,
    /// Deliveries per second out of the broker.
    pub out_rate: f64,
    /// Seconds from the start to the last write or acknowledgement.
    pub in_window_s: f64,
    /// Seconds from the start to the last delivery.
    pub out_window_s: f64,
    pub sub_received_min: u64,
    pub sub_received_max: u64,
    pub sub_received_mean: f64,
    /// Slowest subscriber's deliveries over the fastest's (1.0 = perfectly fair).
    pub fairness: f64,
    pub latency_us: Option<LatencyFigures>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnFigures {
    pub connections: usize,
    pub connected: u64,
    pub failed: u64,
    /// Connections the broker closed while they were held open.
    pub closed_during_hold: u64,
    /// Connections completed per second, first attempt to last CONNACK.
    pub conn_rate: f64,
    pub connect_window_s: f64,
    pub connect_latency_us: Option<LatencyFigures>,
    pub broker_rss_kib_before: Option<u64>,
    pub broker_rss_kib_after: Option<u64>,
    /// Broker RSS growth divided by the connections open.
    pub rss_per_conn_bytes: Option<f64>,
    pub hold_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyFigures {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl LatencyFigures {
    /// From a histogram in nanoseconds to microseconds; `None` when it is empty.
    pub fn from_ns(histogram: &Histogram<u64>) -> Option<LatencyFigures> {
        if histogram.is_empty() {
            return None;
        }
        let us = |ns: u64| round2(ns as f64 / 1_000.0);
        Some(LatencyFigures {
            count: histogram.len(),
            min: us(histogram.min()),
            mean: round2(histogram.mean() / 1_000.0),
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            max: us(histogram.max()),
        })
    }
}

pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

impl Report {
    pub fn json_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "== {} against {}:{}  MQTT {}  QoS {}  {} B payload  {} threads",
            self.scenario, self.host, self.port, self.version, self.qos, self.size, self.threads
        );
        if let Some(traffic) = &self.traffic {
            let rate = if self.rate > 0.0 {
                format!("{} msg/s each", self.rate)
            } else {
                "unpaced".to_owned()
            };
            let _ = writeln!(
                t,
                "   publishers {}  subscribers {}  {rate}  {} s  inflight {}",
                self.publishers, self.subscribers, self.duration_s, self.inflight
            );
            row(
                &mut t,
                "throughput in",
                format!("{} msg/s ({} s)", si(traffic.in_rate), traffic.in_window_s),
            );
            row(
                &mut t,
                "throughput out",
                format!(
                    "{} msg/s ({} s)",
                    si(traffic.out_rate),
                    traffic.out_window_s
                ),
            );
            row(
                &mut t,
                "sent / acked",
                format!(
                    "{} / {}  (refused {}, unacked {})",
                    traffic.sent, traffic.acked, traffic.refused, traffic.unacked
                ),
            );
            row(
                &mut t,
                "expected / received",
                format!(
                    "{} / {}  (unique {}, foreign {})",
                    traffic.expected, traffic.received, traffic.unique, traffic.foreign
                ),
            );
            row(
                &mut t,
                "lost / dup / reordered",
                format!(
                    "{} / {} / {}  (loss from {})",
                    traffic.lost, traffic.duplicated, traffic.reordered, traffic.lost_basis
                ),
            );
            row(
                &mut t,
                "per subscriber",
                format!(
                    "min {}  max {}  mean {:.1}  slowest/fastest {:.3}",
                    traffic.sub_received_min,
                    traffic.sub_received_max,
                    traffic.sub_received_mean,
                    traffic.fairness
                ),
            );
            if let Some(latency) = &traffic.latency_us {
                latency_row(&mut t, "latency (us)", latency);
            }
        }
        if let Some(conn) = &self.conn {
            row(
                &mut t,
                "connections",
                format!(
                    "{} of {} (failed {}, closed while held {})",
                    conn.connected, conn.connections, conn.failed, conn.closed_during_hold
                ),
            );
            row(
                &mut t,
                "connect rate",
                format!(
                    "{} conn/s ({} s)",
                    si(conn.conn_rate),
                    conn.connect_window_s
                ),
            );
            if let Some(latency) = &conn.connect_latency_us {
                latency_row(&mut t, "connect latency (us)", latency);
            }
            if let (Some(before), Some(after)) =
                (conn.broker_rss_kib_before, conn.broker_rss_kib_after)
            {
                let per = conn
                    .rss_per_conn_bytes
                    .map_or("-".to_owned(), |b| format!("{b:.0}"));
                row(
                    &mut t,
                    "broker RSS",
                    format!("{before} KiB -> {after} KiB, {per} B per connection"),
                );
            }
        }
        let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}%"));
        row(
            &mut t,
            "CPU (one core = 100%)",
            format!(
                "generator {}  broker {}  everything else {}",
                pct(self.cpu_pct),
                pct(self.broker_cpu_pct),
                pct(self.others_cpu_pct)
            ),
        );
        if self.errors > 0 {
            row(
                &mut t,
                "errors",
                format!("{} (first: {})", self.errors, self.error_samples.join("; ")),
            );
        }
        t
    }
}

fn row(t: &mut String, name: &str, value: String) {
    let _ = writeln!(t, "   {name:<24} {value}");
}

fn latency_row(t: &mut String, name: &str, l: &LatencyFigures) {
    row(
        t,
        name,
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        ),
    );
}

/// 1234567.0 -> "1.23M".
pub fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}
