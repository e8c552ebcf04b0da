//! The broker's figures in the Prometheus text format (version 0.0.4), from the same source
//! as `$SYS` (`mqtt_core::sys::figures`): `clients/connected` is
//! `gateway_clients_connected`, a counter gets `_total`, and a listener's figure is a
//! `gateway_listener_...` series labelled with the listener, so that summing a metric
//! over its labels never counts a message twice.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use mqtt_core::sys::{Figure, FigureKind, VERSION};

/// One metric: its kind, the figure it shows, and its samples by listener.
type Metric<'a> = (FigureKind, &'static str, Vec<(Option<&'a Arc<str>>, u64)>);

/// What the figures say, as one Prometheus exposition.
pub fn render(figures: &[Figure]) -> String {
    let mut metrics: BTreeMap<String, Metric<'_>> = BTreeMap::new();
    for figure in figures {
        let (name, kind) = metric_name(figure);
        metrics
            .entry(name)
            .or_insert_with(|| (kind, figure.name, Vec::new()))
            .2
            .push((figure.listener.as_ref(), figure.value));
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
        for (listener, value) in samples {
            match listener {
                Some(listener) => {
                    let _ = writeln!(out, "{name}{{listener=\"{}\"}} {value}", escape(listener));
                }
                None => {
                    let _ = writeln!(out, "{name} {value}");
                }
            }
        }
    }
    out
}

/// `gateway_` (or `gateway_listener_`) and the figure's name, every character Prometheus
/// does not take in a name made `_`; `_total` after a counter's.
fn metric_name(figure: &Figure) -> (String, FigureKind) {
    // Uptime counts seconds but is a level as Prometheus sees it: it restarts from 0.
    if figure.name == "uptime" {
        return ("gateway_uptime_seconds".to_owned(), FigureKind::Gauge);
    }
    let mut name = String::from(match figure.listener {
        Some(_) => "gateway_listener_",
        None => "gateway_",
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
    use super::*;

    fn figure(name: &'static str, listener: Option<&str>, kind: FigureKind, value: u64) -> Figure {
        Figure {
            name,
            listener: listener.map(Arc::from),
            kind,
            value,
        }
    }

    #[test]
    fn figures_become_metrics_with_one_help_and_type_each() {
        let text = render(&[
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
        ]);
        for line in [
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
