//! What a connection's span costs on the heap under the compact subscriber: counted by a
//! global allocator of this test binary alone, on this thread alone, so it is exact.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;

use gateway::logging::CompactSubscriber;
use gateway_config::LogFormat;
use tracing::field::Empty;
use tracing::{Dispatch, Span};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

/// Heap use by this thread since the counters were last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    /// Allocations and reallocations made.
    calls: usize,
    /// Blocks allocated less blocks freed.
    blocks: isize,
    /// Bytes allocated less bytes freed.
    bytes: isize,
}

thread_local! {
    static USAGE: Cell<Usage> = const {
        Cell::new(Usage { calls: 0, blocks: 0, bytes: 0 })
    };
}

fn count(change: impl FnOnce(&mut Usage)) {
    // `try_with`: allocations after this thread's locals are gone are not counted.
    let _ = USAGE.try_with(|usage| {
        let mut now = usage.get();
        change(&mut now);
        usage.set(now);
    });
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(|usage| {
            usage.calls += 1;
            usage.blocks += 1;
            usage.bytes += layout.size() as isize;
        });
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(|usage| {
            usage.blocks -= 1;
            usage.bytes -= layout.size() as isize;
        });
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(|usage| {
            usage.calls += 1;
            usage.bytes += new_size as isize - layout.size() as isize;
        });
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `f` leaves allocated on this thread, and what it returns.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Usage) {
    USAGE.with(|usage| usage.set(Usage::default()));
    let result = f();
    (result, USAGE.with(Cell::get))
}

/// A connection's span as `adapters/kit/src/stream.rs` makes it, with the client id
/// recorded from inside it as the channels do.
fn connection_span(listener: &str, peer: SocketAddr, client_id: &str) -> Span {
    let span = tracing::info_span!(
        "conn",
        listener = %listener,
        %peer,
        client_addr = Empty,
        client_id = Empty
    );
    span.in_scope(|| {
        Span::current().record("client_id", client_id);
    });
    span
}

fn sink() -> std::io::Sink {
    std::io::sink()
}

fn compact(format: LogFormat, filter: &str) -> Dispatch {
    Dispatch::new(
        CompactSubscriber::new(format)
            .with_writer(sink)
            .with(EnvFilter::new(filter)),
    )
}

#[test]
fn a_connection_span_is_two_blocks_of_at_most_160_bytes_and_freed_whole() {
    let peer: SocketAddr = "127.0.0.1:59524".parse().unwrap();
    for format in [LogFormat::Human, LogFormat::Json] {
        tracing::dispatcher::with_default(&compact(format, "info"), || {
            // Registers the callsites and sizes this thread's buffers once.
            drop(connection_span("tcp:default", peer, "warm-up-client-0"));

            let (span, made) =
                measure(|| connection_span("tcp:default", peer, "gwb7a00e1a5-c2477"));
            assert!(made.blocks <= 2, "{format:?}: {made:?}");
            assert!(made.bytes <= 160, "{format:?}: {made:?}");
            // The record, its fields when made and once more when the client id came.
            assert!(made.calls <= 3, "{format:?}: {made:?}");
            eprintln!("{format:?}: a connection's span holds {made:?}");

            let ((), freed) = measure(|| drop(span));
            assert_eq!(freed.blocks, -made.blocks, "{format:?}: {freed:?}");
            assert_eq!(freed.bytes, -made.bytes, "{format:?}: {freed:?}");
        });
    }
}

#[test]
fn a_disabled_span_and_span_none_allocate_nothing() {
    tracing::dispatcher::with_default(&compact(LogFormat::Human, "warn"), || {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        drop(connection_span("tcp:default", peer, "warm-up-client-0"));
        let ((), usage) = measure(|| {
            let span = connection_span("tcp:default", peer, "gwb7a00e1a5-c2477");
            let _entered = span.enter();
            tracing::info!("not logged");
            let none = Span::none();
            none.record("client_id", "x");
            none.in_scope(|| tracing::debug!("not logged either"));
        });
        assert_eq!(usage, Usage::default());
    });
}

#[test]
fn an_event_in_a_span_allocates_nothing_once_the_buffers_are_warm() {
    tracing::dispatcher::with_default(&compact(LogFormat::Json, "info"), || {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let span = connection_span("tcp:default", peer, "gwb7a00e1a5-c2477");
        let event = || span.in_scope(|| tracing::info!(reason = 0, "client disconnected"));
        event();
        let ((), usage) = measure(event);
        assert_eq!(usage, Usage::default());
    });
}

/// Not an assertion about our code: the figure it replaces, for comparison, amortised
/// over many spans as tracing-subscriber's registry pools its slots.
#[test]
fn the_fmt_registry_spent_more_per_connection_span() {
    let peer: SocketAddr = "127.0.0.1:59524".parse().unwrap();
    let count = 1000;
    let per_span = |dispatch: Dispatch| {
        tracing::dispatcher::with_default(&dispatch, || {
            drop(connection_span("tcp:default", peer, "warm-up-client-0"));
            let (spans, usage) = measure(|| {
                (0..count)
                    .map(|_| connection_span("tcp:default", peer, "gwb7a00e1a5-c2477"))
                    .collect::<Vec<_>>()
            });
            let held = usage.bytes - (count * std::mem::size_of::<Span>()) as isize;
            drop(spans);
            held / count as isize
        })
    };
    let theirs = per_span(Dispatch::new(
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(sink)
            .finish(),
    ));
    let ours = per_span(compact(LogFormat::Human, "info"));
    eprintln!("bytes requested per connection span: fmt registry {theirs}, compact {ours}");
    assert!(
        ours * 2 < theirs,
        "compact {ours} B, fmt registry {theirs} B"
    );
}
