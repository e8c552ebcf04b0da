//! The compact subscriber writes the lines tracing-subscriber's `fmt` subscriber writes,
//! byte for byte, in both formats (the same spans and events go through each, with one
//! clock), and the `log.level` filter over it works as it did.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::error::Error;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, Once};

use gateway::logging::CompactSubscriber;
use gateway_config::LogFormat;
use tracing::field::{display, Empty};
use tracing::level_filters::LevelFilter;
use tracing::{Dispatch, Span};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

/// Collects what a subscriber writes.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn make_writer(&self) -> impl Fn() -> Sink + Send + Sync + 'static {
        let sink = self.clone();
        move || sink.clone()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// One instant for both subscribers, so that whole lines compare.
struct FixedTime;

impl FormatTime for FixedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        w.write_str("2026-12-07T06:00:13.902015Z")
    }
}

#[derive(Debug)]
struct Outer(Inner);

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("handshake failed")
    }
}

impl Error for Outer {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[derive(Debug)]
struct Inner;

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("peer \"sent\" \x1b[31mred\x1b[0m")
    }
}

impl Error for Inner {}

fn log_crate_to_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| tracing_log::LogTracer::init().unwrap());
}

/// The span the stream driver opens for each connection, its later fields still empty.
fn connection_span() -> Span {
    tracing::info_span!(
        "conn",
        listener = %"tcp:default",
        peer = %"127.0.0.1:59524",
        client_addr = Empty,
        client_id = Empty
    )
}

/// Spans and events of every kind the gateway emits, and then some.
fn scenario() {
    tracing::trace!("trace message");
    tracing::debug!("debug message");
    tracing::info!("info message");
    tracing::warn!("warn message");
    tracing::error!("error message");
    tracing::info!("");
    tracing::info!(answer = 42, "message with a field");
    tracing::info!(answer = 42, flag = false);
    tracing::info!(
        text = "quoted \"text\"\n\ttabbed \u{1} \\ é ✓",
        shown = %"display \"value\"",
        debugged = ?Some("debug"),
        yes = true,
        small = -7i64,
        big = u64::MAX,
        huge = 1u128 << 100,
        negative_huge = -(1i128 << 100),
        ratio = 0.1f64,
        whole = 2.0f64,
        tiny = 1e-10f64,
        large = 1e300f64,
        nan = f64::NAN,
        infinite = f64::NEG_INFINITY,
        bytes = &b"ab\x01"[..],
        r#type = "raw",
        r#loop = ?1,
        log.origin = "dotted",
        "all kinds"
    );
    tracing::info!("escapes \x1b[31m red \u{85} next\x07 \x7f end");
    tracing::info!(message = "explicit message field", extra = 1);
    tracing::info!(message = ?"debug message field");
    let error = Outer(Inner);
    tracing::warn!(error = &error as &dyn Error, "with sources");
    tracing::warn!(error = &Inner as &dyn Error, "without sources");
    tracing::warn!(%error, "as display");
    tracing::warn!(message = &error as &dyn Error);

    let conn = connection_span();
    conn.in_scope(|| {
        tracing::debug!("connection accepted");
        Span::current().record("client_id", "gwb7a00e1a5-c2477");
        tracing::info!(reason = 0, "client disconnected");
        Span::current().record("client_addr", display("10.0.0.1:4000"));
        // Recorded again: the human format shows it twice, JSON keeps the last.
        Span::current().record("peer", display("127.0.0.1:1"));
        tracing::info!("after records");

        let session = tracing::debug_span!(
            "session",
            zeta = 1,
            alpha = "a \"quoted\" \x1b",
            r#type = ?"t",
            ratio = 0.5,
            nan = f64::NAN,
            bytes = &b"\x00\xff"[..],
            flag = true,
            log.skipped = "x",
            huge = 1u128 << 70
        );
        session.in_scope(|| {
            tracing::warn!("nested");
            tracing::info!(parent: None, "root event inside spans");
        });
        session.record("zeta", 2);
        session.record("beta", 3); // not a field of the span: ignored
        session.in_scope(|| tracing::warn!("after a record in the nested span"));

        let empty = tracing::info_span!("empty");
        empty.in_scope(|| tracing::info!("in a span without fields"));

        let later = tracing::info_span!("later", value = Empty, other = Empty);
        later.in_scope(|| tracing::info!("before the record"));
        later.record("value", 5);
        later.in_scope(|| tracing::info!("after the record"));
        later.record("other", "second, \"x\":1 ] [ \\");
        later.record("value", "replaced");
        later.in_scope(|| tracing::info!("after two more"));
        tracing::info!(parent: &later, "explicit parent, not entered");

        let with_message = tracing::info_span!("msg", message = "span message", n = 1);
        with_message.in_scope(|| tracing::info!("in a span with a message"));

        let child = tracing::info_span!(parent: &session, "child", depth = 3);
        child.in_scope(|| tracing::info!("explicit parent span"));

        // Entered again while entered: the current span stays the innermost other one.
        let _session = session.enter();
        let _conn = conn.enter();
        tracing::info!("re-entered");
    });
    let detached = tracing::info_span!(parent: None, "detached", n = 1);
    detached.in_scope(|| tracing::info!("in a root span"));
    log::warn!(target: "rustls::conn", "from the log crate {}", 1);
    log::info!("log crate, default target");
    tracing::info!(target: "custom::target", "custom target");
}

fn theirs(format: LogFormat, ansi: bool) -> (Sink, Dispatch) {
    let sink = Sink::default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("trace"))
        .with_ansi(ansi)
        .with_timer(FixedTime)
        .with_writer(sink.make_writer());
    let dispatch = match format {
        LogFormat::Human => Dispatch::new(builder.finish()),
        LogFormat::Json => Dispatch::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    };
    (sink, dispatch)
}

fn ours(format: LogFormat, ansi: bool, filter: &str) -> (Sink, Dispatch) {
    let sink = Sink::default();
    let subscriber = CompactSubscriber::new(format)
        .with_ansi(ansi)
        .with_timer(FixedTime)
        .with_writer(sink.make_writer())
        .with(EnvFilter::new(filter));
    (sink, Dispatch::new(subscriber))
}

fn run(dispatch: &Dispatch, sink: &Sink, what: impl Fn()) -> String {
    tracing::dispatcher::with_default(dispatch, what);
    sink.text()
}

fn assert_same_lines(format: LogFormat, ansi: bool) {
    log_crate_to_tracing();
    let (sink, dispatch) = theirs(format, ansi);
    let expected = run(&dispatch, &sink, scenario);
    let (sink, dispatch) = ours(format, ansi, "trace");
    let actual = run(&dispatch, &sink, scenario);
    assert!(expected.lines().count() > 30, "{expected}");
    for (expected, actual) in expected.lines().zip(actual.lines()) {
        assert_eq!(actual, expected);
    }
    assert_eq!(actual, expected);
}

#[test]
fn the_human_format_is_tracing_subscribers_byte_for_byte() {
    assert_same_lines(LogFormat::Human, false);
}

#[test]
fn the_human_format_in_colour_is_tracing_subscribers_byte_for_byte() {
    assert_same_lines(LogFormat::Human, true);
}

#[test]
fn the_json_format_is_tracing_subscribers_byte_for_byte() {
    assert_same_lines(LogFormat::Json, false);
}

#[test]
fn every_json_line_parses() {
    log_crate_to_tracing();
    let (sink, dispatch) = ours(LogFormat::Json, false, "trace");
    let text = run(&dispatch, &sink, scenario);
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|error| {
            panic!("{error}: {line}");
        });
        assert!(value.get("timestamp").is_some(), "{line}");
    }
}

#[test]
fn a_connection_line_reads_as_the_interop_tests_expect() {
    let (sink, dispatch) = ours(LogFormat::Human, false, "info");
    let text = run(&dispatch, &sink, || {
        let span = connection_span();
        let _entered = span.enter();
        Span::current().record("client_addr", display("192.0.2.7:1883"));
        Span::current().record("client_id", "device-1");
        tracing::info!(reason = 0, "client disconnected");
    });
    assert_eq!(
        text,
        "2026-12-07T06:00:13.902015Z  INFO conn{listener=tcp:default peer=127.0.0.1:59524 \
         client_addr=192.0.2.7:1883 client_id=\"device-1\"}: it::log_format: client disconnected \
         reason=0\n"
    );
}

#[test]
fn a_client_id_cannot_forge_a_log_line_or_colour_the_terminal() {
    // A client picks its own id: a newline and an escape sequence in it stay inside the
    // one line its connection logs, escaped, in either format.
    let forged = "dev\n2026-12-07T06:00:13.902015Z  INFO forged: admin logged in\x1b[2J";
    for format in [LogFormat::Human, LogFormat::Json] {
        let (sink, dispatch) = ours(format, false, "info");
        let text = run(&dispatch, &sink, || {
            let span = connection_span();
            let _entered = span.enter();
            Span::current().record("client_id", forged);
            tracing::info!("client connected");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains(r"dev\n2026"), "{text}");
    }
}

fn messages(text: &str) -> Vec<&str> {
    text.lines()
        .map(|line| line.rsplit(": ").next().unwrap())
        .collect()
}

#[test]
fn a_directive_per_target_raises_that_target_only() {
    let (sink, dispatch) = ours(LogFormat::Human, false, "info,special=debug");
    let text = run(&dispatch, &sink, || {
        tracing::debug!(target: "special", "special debug");
        tracing::trace!(target: "special", "special trace");
        tracing::debug!(target: "other", "other debug");
        tracing::info!(target: "other", "other info");
    });
    assert_eq!(messages(&text), ["special debug", "other info"]);
}

#[test]
fn a_disabled_level_writes_nothing() {
    let (sink, dispatch) = ours(LogFormat::Json, false, "warn");
    let text = run(&dispatch, &sink, || {
        let span = tracing::info_span!("conn", peer = 1);
        let _entered = span.enter();
        tracing::info!("info");
        tracing::debug!("debug");
    });
    assert_eq!(text, "");
}

#[test]
fn a_span_directive_raises_events_inside_that_span() {
    let (sink, dispatch) = ours(LogFormat::Human, false, "info,[conn]=debug");
    let text = run(&dispatch, &sink, || {
        tracing::debug!("outside");
        let span = tracing::info_span!("conn", peer = 1);
        span.in_scope(|| tracing::debug!("inside"));
        tracing::debug!("outside again");
    });
    assert_eq!(messages(&text), ["inside"]);
}

#[test]
fn the_filter_sets_the_level_hint_so_disabled_callsites_cost_nothing() {
    for (filter, hint) in [
        ("info", LevelFilter::INFO),
        ("warn", LevelFilter::WARN),
        ("info,mqtt_core=debug", LevelFilter::DEBUG),
        ("off", LevelFilter::OFF),
    ] {
        let subscriber = CompactSubscriber::new(LogFormat::Human).with(EnvFilter::new(filter));
        assert_eq!(
            tracing::Subscriber::max_level_hint(&subscriber),
            Some(hint),
            "{filter}"
        );
    }
}
