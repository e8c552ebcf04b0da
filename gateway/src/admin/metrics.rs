//! The broker's figures in the Prometheus text format (version 0.0.4), from the same source
//! as `$SYS` (`mqtt_core::sys::figures`): `clients/connected` is
//! `gateway_clients_connected`, a counter gets `_total`, a listener's figure is a
//! `gateway_listener_...` series labelled with the listener and a protocol's a
//! `gateway_protocol_...` series labelled with the protocol, so that summing a metric over
//! its labels never counts a message twice.

use std::collections::BTreeMap;
use std::fmt::Write;

use mqtt_core::sys::{Figure, FigureKind, HistogramSnapshot, Scope, VERSION};

/// One metric: its kind, the figure it shows, and its samples by label.
type Metric<'a> = (
    FigureKind,
    &'static str,
    Vec<(Option<(&'static str, &'a str)>, u64)>,
);

/// What the figures say, and the store's commit latency where the store commits, as one
/// Prometheus exposition.
pub fn render(figures: &[Figure], commit_latency: Option<&HistogramSnapshot>) -> String {
    let mut metrics: BTreeMap<String, Metric<'_>> = BTreeMap::new();
    for figure in figures {
        let (name, kind) = metric_name(figure);
        metrics
            .entry(name)
            .or_insert_with(|| (kind, figure.name, Vec::new()))
            .2
            .push((label(&figure.scope), figure.value));
    }
    let mut out = String::new();
    let _ = writeln!(out, "# HELP gateway_build_info The gateway's version.");
    let _ = writeln!(out, "# TYPE gateway_build_info gauge");
    let _ = writeln!(
        out,
        "gateway_build_info{{version=\"{}\"}} 1",
        escape(VERSION)
    );
    for (name, (kind, figure, samples)) in &metrics {
        let kind = match kind {
            FigureKind::Counter => "counter",
            FigureKind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {name} $SYS/broker/{figure}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (label, value) in samples {
            match label {
                Some((label, value_of_label)) => {
                    let _ = writeln!(
                        out,
                        "{name}{{{label}=\"{}\"}} {value}",
                        escape(value_of_label)
                    );
                }
                None => {
                    let _ = writeln!(out, "{name} {value}");
                }
            }
        }
    }
    if let Some(histogram) = commit_latency {
        render_histogram(
            &mut out,
            "gateway_store_commit_seconds",
            "Time from a store commit's start to its data being as durable as storage.fsync says.",
            histogram,
        );
    }
    out
}

fn render_histogram(out: &mut String, name: &str, help: &str, histogram: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (bound, below) in &histogram.buckets {
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {below}",
            bound.as_secs_f64()
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
    let _ = writeln!(out, "{name}_sum {}", histogram.sum.as_secs_f64());
    let _ = writeln!(out, "{name}_count {}", histogram.count);
}

/// `gateway_` (or `gateway_listener_`) and the figure's name, every character Prometheus
/// does not take in a name made `_`; `_total` after a counter's.
fn metric_name(figure: &Figure) -> (String, FigureKind) {
    // Uptime counts seconds but is a level as Prometheus sees it: it restarts from 0.
    if figure.name == "uptime" {
        return ("gateway_uptime_seconds".to_owned(), FigureKind::Gauge);
    }
    let mut name = String::from(match figure.scope {
        Scope::Broker => "gateway_",
        Scope::Listener(_) => "gateway_listener_",
        Scope::Protocol(_) => "gateway_protocol_",
    });
    name.extend(figure.name.chars().map(|c| match c {
        'a'..='z' | 'A'..='Z' | '0'..='9' | '_' => c,
        _ => '_',
    }));
    if figure.kind == FigureKind::Counter {
        name.push_str("_total");
    }
    (name, figure.kind)
}

/// The label a figure's samples are told apart by, and its value.
fn label(scope: &Scope) -> Option<(&'static str, &str)> {
    match scope {
        Scope::Broker => None,
        Scope::Listener(listener) => Some(("listener", listener)),
        Scope::Protocol(namespace) => Some(("protocol", namespace)),
    }
}

/// A label value: backslash, double quote and line feed escaped, as the format asks.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn figure(name: &'static str, listener: Option<&str>, kind: FigureKind, value: u64) -> Figure {
        Figure {
            name,
            scope: listener.map_or(Scope::Broker, |name| Scope::Listener(Arc::from(name))),
            kind,
            value,
        }
    }

    #[test]
    fn figures_become_metrics_with_one_help_and_type_each() {
        let text = render(
            &[
                figure("uptime", None, FigureKind::Counter, 12),
                figure("clients/connected", None, FigureKind::Gauge, 3),
                figure("retained messages/count", None, FigureKind::Gauge, 1),
                figure("dtls/handshakes/completed", None, FigureKind::Counter, 9),
                figure(
                    "dtls/handshakes/completed",
                    Some("coap:dtls:default"),
                    FigureKind::Counter,
                    5,
                ),
                figure(
                    "dtls/handshakes/completed",
                    Some("lwm2m:dtls:a\"b\\c"),
                    FigureKind::Counter,
                    4,
                ),
                Figure {
                    name: "clients/connections",
                    scope: Scope::Protocol("lwm2m"),
                    kind: FigureKind::Counter,
                    value: 2,
                },
            ],
            Some(&HistogramSnapshot {
                buckets: vec![
                    (Duration::from_micros(250), 3),
                    (Duration::from_millis(1), 5),
                ],
                sum: Duration::from_micros(2_500),
                count: 6,
            }),
        );
        for line in [
            "gateway_protocol_clients_connections_total{protocol=\"lwm2m\"} 2",
            "# TYPE gateway_store_commit_seconds histogram",
            "gateway_store_commit_seconds_bucket{le=\"0.00025\"} 3",
            "gateway_store_commit_seconds_bucket{le=\"0.001\"} 5",
            "gateway_store_commit_seconds_bucket{le=\"+Inf\"} 6",
            "gateway_store_commit_seconds_sum 0.0025",
            "gateway_store_commit_seconds_count 6",
            "gateway_uptime_seconds 12",
            "# TYPE gateway_uptime_seconds gauge",
            "gateway_clients_connected 3",
            "gateway_retained_messages_count 1",
            "# TYPE gateway_dtls_handshakes_completed_total counter",
            "gateway_dtls_handshakes_completed_total 9",
            "gateway_listener_dtls_handshakes_completed_total{listener=\"coap:dtls:default\"} 5",
            "gateway_listener_dtls_handshakes_completed_total{listener=\"lwm2m:dtls:a\\\"b\\\\c\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        let types = text
            .lines()
            .filter(|l| l.starts_with("# TYPE gateway_listener_dtls_handshakes_completed_total "))
            .count();
        assert_eq!(types, 1);
    }
}
