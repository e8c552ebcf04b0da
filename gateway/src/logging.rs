//! The binary's log: a compact `tracing` subscriber under the `log.level` filter.
//!
//! Every connection lives inside a span (`conn` for byte streams, `peer` for datagrams:
//! listener, peer address, client id), so a span costs what it costs for the whole life of
//! the connection. tracing-subscriber's `fmt` subscriber keeps each span in its `Registry`:
//! a slab slot, a map for extensions and the formatted fields, some 550 B per connection.
//! Here a span is one reference-counted `SpanRecord` (its metadata, its parent, its
//! fields already written in the output format) of 40 B, plus the fields' text: 110 B for
//! a connection's span in the human format, 120 B in JSON.
//!
//! What reaches the log does not change: each line is the one tracing-subscriber's `fmt`
//! subscriber writes (the default human format, or JSON with the event flattened and the
//! current span), byte for byte; the tests compare the two.

use std::cell::{RefCell, UnsafeCell};
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use anyhow::{Context as _, Result};
use gateway_config::{Config, LogFormat};
use parking_lot::lock_api::RawMutex as _;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::{Interest, Subscriber};
use tracing::{Dispatch, Event, Level, Metadata};
use tracing_core::span::Current;
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Installs the process's log: `RUST_LOG` when set, else `log.level`, as an `EnvFilter`
/// over a [`CompactSubscriber`] writing to stderr, in `log.format` unless `format_flag`
/// (`--log-format`) says otherwise, in colour when stderr is a terminal. Records of the
/// `log` crate are logged too. The filter can be changed while the gateway runs through the
/// [`LogLevel`] returned.
pub fn init_logging(config: &Config, format_flag: Option<&str>) -> Result<LogLevel> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty());
    let (filter, what) = match &from_env {
        Some(directives) => (directives.as_str(), "RUST_LOG"),
        None => (config.log.level.as_str(), "log.level"),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("{what}: invalid filter {filter:?}"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let format = match format_flag {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Human,
        None => config.log.format,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    CompactSubscriber::new(format)
        .with_ansi(ansi)
        .with(filter)
        .try_init()
        .context("installing the log")?;
    Ok(LogLevel {
        handle: Box::new(handle),
        in_force: parking_lot::Mutex::new(config.log.level.clone()),
        pinned_by_env: from_env.is_some(),
    })
}

/// The filter of the installed log, to change while the gateway runs.
pub struct LogLevel {
    handle: Box<dyn ReloadFilter>,
    /// The `log.level` last put in force (or found in force at start).
    in_force: parking_lot::Mutex<String>,
    /// `RUST_LOG` chose the filter: it stays whatever the configuration says.
    pinned_by_env: bool,
}

/// What changed when the configuration's `log.level` was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// It is the one in force already.
    Same,
    /// `RUST_LOG` is set and wins over `log.level`.
    PinnedByEnv,
    /// The new filter is in force; the previous one was this.
    Changed { from: String },
}

impl LogLevel {
    /// Puts `level` (an `EnvFilter` directive list, as `log.level`) in force unless it
    /// already is or `RUST_LOG` chose the filter. An invalid one changes nothing.
    pub fn apply(&self, level: &str) -> Result<LevelChange> {
        let mut in_force = self.in_force.lock();
        if *in_force == level {
            return Ok(LevelChange::Same);
        }
        if self.pinned_by_env {
            return Ok(LevelChange::PinnedByEnv);
        }
        let filter = tracing_subscriber::EnvFilter::try_new(level)
            .with_context(|| format!("log.level: invalid filter {level:?}"))?;
        self.handle.reload(filter)?;
        let from = std::mem::replace(&mut *in_force, level.to_owned());
        Ok(LevelChange::Changed { from })
    }
}

/// The reload handle of the one filter layer, whatever subscriber it sits on.
trait ReloadFilter: Send + Sync {
    fn reload(&self, filter: tracing_subscriber::EnvFilter) -> Result<()>;
}

impl<S: 'static> ReloadFilter
    for tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>
{
    fn reload(&self, filter: tracing_subscriber::EnvFilter) -> Result<()> {
        // The handle rebuilds tracing's callsite interest, so callsites the old filter
        // disabled are asked again.
        tracing_subscriber::reload::Handle::reload(self, filter).context("replacing the log filter")
    }
}

/// A `tracing` subscriber that formats as tracing-subscriber's `fmt` does but keeps each
/// span in one small record. `LogFormat::Human` is tracing-subscriber's default format
/// (`time LEVEL span{fields}:span: target: fields`), `LogFormat::Json` its JSON with the
/// event flattened and the current span
/// (`json().flatten_event(true).with_current_span(true).with_span_list(false)`).
///
/// It enables everything it is asked about: filter it by layering an `EnvFilter` over it
/// (`.with(filter)`), whose level hint then stands.
pub struct CompactSubscriber<W = fn() -> std::io::Stderr, T = SystemTime> {
    format: LogFormat,
    ansi: bool,
    make_writer: W,
    timer: T,
    /// Tells this subscriber's spans apart from another's in the per-thread stack of
    /// entered spans (tests run several subscribers on one thread).
    instance: u32,
}

impl CompactSubscriber {
    /// Writes `format` to stderr, without colours, timestamps from the system clock.
    pub fn new(format: LogFormat) -> Self {
        static INSTANCES: AtomicU32 = AtomicU32::new(1);
        CompactSubscriber {
            format,
            ansi: false,
            make_writer: std::io::stderr,
            timer: SystemTime,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl<W, T> CompactSubscriber<W, T> {
    /// Colours the human format with ANSI escape codes, as tracing-subscriber does.
    pub fn with_ansi(mut self, ansi: bool) -> Self {
        self.ansi = ansi;
        self
    }

    /// Writes each line to a writer of `make_writer` (one `write_all` per line).
    pub fn with_writer<W2>(self, make_writer: W2) -> CompactSubscriber<W2, T> {
        CompactSubscriber {
            format: self.format,
            ansi: self.ansi,
            make_writer,
            timer: self.timer,
            instance: self.instance,
        }
    }

    /// Takes the timestamps from `timer`.
    pub fn with_timer<T2>(self, timer: T2) -> CompactSubscriber<W, T2> {
        CompactSubscriber {
            format: self.format,
            ansi: self.ansi,
            make_writer: self.make_writer,
            timer,
            instance: self.instance,
        }
    }
}

// === Spans ===

/// More references than any span will have; past it we abort, as `Arc` does, rather than
/// let the count wrap and free a record still in use.
const MAX_REFS: u32 = u32::MAX / 2;

/// One span, all it holds while it lives. Its address is its `Id`.
struct SpanRecord {
    /// References: `tracing::Span` handles, children, and this span's non-repeated
    /// entries in the stacks of entered spans.
    refs: AtomicU32,
    /// Guards `fields`, which `record` may replace on one thread while an event on
    /// another copies it. Never held while user code (`Debug`, `Display`) runs.
    lock: parking_lot::RawMutex,
    meta: &'static Metadata<'static>,
    /// Kept alive by this record: a reference released when this record is freed.
    parent: Option<NonNull<SpanRecord>>,
    /// The fields as the output format shows them: `a=1 b="x"` (human) or the body of a
    /// JSON object, keys sorted (`"a":1,"b":"x"`). Exactly sized: no spare capacity.
    fields: UnsafeCell<Box<str>>,
}

/// Unlocks a record's lock when dropped.
struct Unlock<'a>(&'a parking_lot::RawMutex);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        // SAFETY: made only right after the lock was taken by this thread.
        unsafe { self.0.unlock() }
    }
}

#[cfg(test)]
thread_local! {
    /// Records allocated and not yet freed by this thread (tests keep spans on one thread).
    static LIVE_RECORDS: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

impl SpanRecord {
    /// A new record holding one reference, for its creator; it takes over `parent`'s
    /// reference.
    fn allocate(
        meta: &'static Metadata<'static>,
        parent: Option<&SpanRecord>,
        fields: Box<str>,
    ) -> Id {
        let record = Box::new(SpanRecord {
            refs: AtomicU32::new(1),
            lock: parking_lot::RawMutex::INIT,
            meta,
            parent: parent.map(NonNull::from),
            fields: UnsafeCell::new(fields),
        });
        #[cfg(test)]
        LIVE_RECORDS.with(|live| live.set(live.get() + 1));
        Id::from_u64(Box::into_raw(record) as usize as u64)
    }

    /// The record of `id`.
    ///
    /// # Safety
    /// `id` was returned by [`SpanRecord::allocate`] and the caller holds, or knows to be
    /// held for as long as it uses the result, a reference to it. A subscriber is only
    /// handed ids it made, by holders of references (`tracing::Span`, an entered span).
    unsafe fn of<'a>(id: &Id) -> &'a SpanRecord {
        // SAFETY: per the contract, a live record allocated by `allocate`.
        unsafe { &*(id.into_u64() as usize as *const SpanRecord) }
    }

    fn id(&self) -> Id {
        Id::from_u64(self as *const SpanRecord as usize as u64)
    }

    fn parent(&self) -> Option<&SpanRecord> {
        // SAFETY: this record holds a reference to its parent until it is freed.
        self.parent.map(|parent| unsafe { &*parent.as_ptr() })
    }

    fn acquire(&self) {
        if self.refs.fetch_add(1, Ordering::Relaxed) > MAX_REFS {
            std::process::abort();
        }
    }

    /// Drops one reference if it is not the last; false (and nothing done) when it is.
    fn release_unless_last(&self) -> bool {
        self.refs
            .fetch_update(Ordering::Release, Ordering::Relaxed, |refs| {
                (refs > 1).then(|| refs - 1)
            })
            .is_ok()
    }

    /// Drops one reference to `id`. When it was the last, frees the record and returns
    /// `Some`, with the reference to its parent the record held, for the caller to drop.
    ///
    /// # Safety
    /// As [`SpanRecord::of`], and the caller gives up the reference it held.
    unsafe fn release(id: &Id) -> Option<Option<Id>> {
        // SAFETY: the caller holds a reference, so the record is alive.
        let record = unsafe { SpanRecord::of(id) };
        if record.refs.fetch_sub(1, Ordering::Release) != 1 {
            return None;
        }
        // Every other holder's use of the record happened before its release.
        fence(Ordering::Acquire);
        let parent = record.parent().map(SpanRecord::id);
        // SAFETY: the last reference is gone: nobody else can reach the record, which
        // `allocate` made with `Box::into_raw`.
        drop(unsafe { Box::from_raw(record as *const SpanRecord as *mut SpanRecord) });
        #[cfg(test)]
        LIVE_RECORDS.with(|live| live.set(live.get() - 1));
        Some(parent)
    }

    /// Calls `read` with the fields, under the lock.
    fn with_fields<R>(&self, read: impl FnOnce(&str) -> R) -> R {
        self.lock.lock();
        let _unlock = Unlock(&self.lock);
        // SAFETY: `fields` is only reached under the lock.
        read(unsafe { &*self.fields.get() })
    }

    /// Replaces the fields with what `update` makes of them, under the lock.
    fn update_fields(&self, update: impl FnOnce(&str) -> Box<str>) {
        let old = {
            self.lock.lock();
            let _unlock = Unlock(&self.lock);
            // SAFETY: `fields` is only reached under the lock.
            let fields = unsafe { &mut *self.fields.get() };
            let new = update(fields);
            std::mem::replace(fields, new)
        };
        drop(old);
    }
}

/// A span this thread has entered, in a stack per thread, innermost last.
struct Entered {
    instance: u32,
    /// Entered again while already entered: it holds no reference of its own and is not
    /// the current span (as in tracing-subscriber's registry).
    repeated: bool,
    id: Id,
}

thread_local! {
    static ENTERED: RefCell<Vec<Entered>> = const { RefCell::new(Vec::new()) };
}

impl<W, T> CompactSubscriber<W, T>
where
    W: for<'a> MakeWriter<'a> + 'static,
    T: FormatTime + 'static,
{
    /// The span a new span or an event belongs to: none for a root, the current one for a
    /// contextual one, else its explicit parent.
    fn parent_record<'a>(
        &self,
        is_root: bool,
        is_contextual: bool,
        explicit: Option<&Id>,
    ) -> Option<&'a SpanRecord> {
        if is_root {
            None
        } else if is_contextual {
            self.current_record()
        } else {
            // SAFETY: an explicit parent is held by the code creating its child or logging
            // the event.
            explicit.map(|id| unsafe { SpanRecord::of(id) })
        }
    }

    /// The span this thread is in for this subscriber: the innermost one entered and not
    /// a repetition. Alive while its entry stays in the stack, which holds a reference.
    fn current_record<'a>(&self) -> Option<&'a SpanRecord> {
        ENTERED
            .try_with(|stack| {
                let stack = stack.try_borrow().ok()?;
                let entry = stack
                    .iter()
                    .rev()
                    .find(|entry| entry.instance == self.instance && !entry.repeated)?;
                // SAFETY: the entry's reference keeps the span alive.
                Some(unsafe { SpanRecord::of(&entry.id) })
            })
            .ok()
            .flatten()
    }

    /// Drops a reference to `id` as its holder would by dropping a `tracing::Span`: when
    /// it is the last, the close goes through the dispatcher this subscriber is in, so
    /// that the layers over it (the filter) hear of it.
    fn close(&self, id: Id) {
        // SAFETY: our caller holds this reference and gives it up here.
        if unsafe { SpanRecord::of(&id) }.release_unless_last() {
            return;
        }
        let dispatch = tracing::dispatcher::get_default(Dispatch::clone);
        let in_our_dispatch = dispatch
            .downcast_ref::<Self>()
            .is_some_and(|ours| std::ptr::eq(ours, self));
        if in_our_dispatch {
            dispatch.try_close(id);
        } else {
            // Dropped where another dispatcher is current (or inside one): close it here.
            self.try_close(id);
        }
    }

    /// Formats the fields `values` records (run by `record`) into `scratch` and merges
    /// them into `old`, the fields a span has, as tracing-subscriber's formatters do.
    fn fields_with(
        &self,
        scratch: &mut Scratch,
        old: Option<&SpanRecord>,
        record: impl FnOnce(&mut dyn Visit),
    ) -> Option<Box<str>> {
        scratch.text.clear();
        scratch.entries.clear();
        // User code (`Debug`, `Display`) runs here, before any lock is taken.
        match self.format {
            LogFormat::Human => record(&mut HumanVisitor::new(&mut scratch.text, self.ansi)),
            LogFormat::Json => record(&mut JsonSpanVisitor { scratch }),
        }
        let merge = |old: &str, scratch: &mut Scratch| -> Box<str> {
            match self.format {
                // Appended, a space between, as tracing-subscriber's `DefaultFields` does
                // (a field recorded again appears twice).
                LogFormat::Human if old.is_empty() => Box::from(scratch.text.as_str()),
                LogFormat::Human => {
                    let mut fields = String::with_capacity(old.len() + 1 + scratch.text.len());
                    fields.push_str(old);
                    fields.push(' ');
                    fields.push_str(&scratch.text);
                    fields.into_boxed_str()
                }
                LogFormat::Json => {
                    scratch.merge_json(old);
                    Box::from(scratch.merged.as_str())
                }
            }
        };
        match old {
            None => Some(merge("", scratch)),
            Some(span) => {
                span.update_fields(|old| merge(old, scratch));
                None
            }
        }
    }

    fn write_event(&self, line: &mut String, event: &Event<'_>) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        match self.format {
            LogFormat::Human => {
                // The event's span, as `Context::event_span`: none for a root event.
                let scope =
                    self.parent_record(event.is_root(), event.is_contextual(), event.parent());
                let _held = scope.map(|span| self.hold(span));
                self.write_human(line, event, meta, scope)
            }
            LogFormat::Json => {
                // tracing-subscriber's JSON takes the explicit parent, else the current
                // span, even for an event that asked for no parent.
                let span = match event.parent() {
                    // SAFETY: the event's explicit parent is held by the code logging it.
                    Some(id) => Some(unsafe { SpanRecord::of(id) }),
                    None => self.current_record(),
                };
                let _held = span.map(|span| self.hold(span));
                self.write_json(line, event, meta, span)
            }
        }
    }

    /// Keeps `span` alive while an event is formatted: the event's fields run user code,
    /// which could leave the span that makes it current.
    fn hold<'a>(&'a self, span: &SpanRecord) -> Held<'a, W, T> {
        span.acquire();
        Held {
            subscriber: self,
            id: span.id(),
        }
    }

    fn write_human(
        &self,
        line: &mut String,
        event: &Event<'_>,
        meta: &Metadata<'_>,
        scope: Option<&SpanRecord>,
    ) -> fmt::Result {
        let ansi = self.ansi;
        // The timestamp; a clock that fails leaves a mark rather than the event unlogged.
        if ansi {
            line.push_str(DIMMED);
        }
        if self.timer.format_time(&mut Writer::new(line)).is_err() {
            line.push_str("<unknown time>");
        }
        if ansi {
            line.push_str(RESET);
        }
        line.push(' ');

        let (label, colour) = level_label(meta.level());
        paint(line, ansi.then_some(colour), label);
        line.push(' ');

        if let Some(span) = scope {
            write_human_scope(line, span, ansi);
            line.push(' ');
        }

        paint(line, ansi.then_some(DIMMED), meta.target());
        paint(line, ansi.then_some(DIMMED), ":");
        line.push(' ');

        let mut visitor = HumanVisitor::new(line, ansi);
        event.record(&mut visitor);
        visitor.result?;
        line.push('\n');
        Ok(())
    }

    fn write_json(
        &self,
        line: &mut String,
        event: &Event<'_>,
        meta: &Metadata<'_>,
        span: Option<&SpanRecord>,
    ) -> fmt::Result {
        line.push_str("{\"timestamp\":\"");
        // tracing-subscriber drops the event when its timestamp cannot be formatted.
        self.timer
            .format_time(&mut Writer::new(&mut JsonEscape(line)))?;
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');

        let mut visitor = JsonEventVisitor {
            line,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;

        line.push_str(",\"target\":");
        push_json_str(line, meta.target());
        if let Some(span) = span {
            line.push_str(",\"span\":{");
            span.with_fields(|fields| {
                line.push_str(fields);
                if !fields.is_empty() {
                    line.push(',');
                }
            });
            line.push_str("\"name\":");
            push_json_str(line, span.meta.name());
            line.push('}');
        }
        line.push_str("}\n");
        Ok(())
    }
}

/// A reference held on a span for as long as an event is formatted.
struct Held<'a, W, T>
where
    W: for<'w> MakeWriter<'w> + 'static,
    T: FormatTime + 'static,
{
    subscriber: &'a CompactSubscriber<W, T>,
    id: Id,
}

impl<W, T> Drop for Held<'_, W, T>
where
    W: for<'w> MakeWriter<'w> + 'static,
    T: FormatTime + 'static,
{
    fn drop(&mut self) {
        self.subscriber.close(self.id.clone());
    }
}

/// Writes `span`'s scope, root first: `name{fields}:` each, as tracing-subscriber's
/// `Full` format does.
fn write_human_scope(line: &mut String, span: &SpanRecord, ansi: bool) {
    if let Some(parent) = span.parent() {
        write_human_scope(line, parent, ansi);
    }
    let bold = ansi.then_some(BOLD);
    paint(line, bold, span.meta.name());
    span.with_fields(|fields| {
        if !fields.is_empty() {
            paint(line, bold, "{");
            line.push_str(fields);
            paint(line, bold, "}");
        }
    });
    paint(line, ansi.then_some(DIMMED), ":");
}

impl<W, T> Subscriber for CompactSubscriber<W, T>
where
    W: for<'a> MakeWriter<'a> + 'static,
    T: FormatTime + 'static,
{
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }

    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    /// No opinion, so that a filter layered over this subscriber sets the level hint
    /// (`Layered` takes the greater of the two, and `None` is below every level).
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        None
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let parent = self.parent_record(attrs.is_root(), attrs.is_contextual(), attrs.parent());
        if let Some(parent) = parent {
            parent.acquire();
        }
        let fields = with_scratch(|scratch| {
            self.fields_with(scratch, None, |visitor| attrs.record(visitor))
        })
        .unwrap_or_default();
        SpanRecord::allocate(attrs.metadata(), parent, fields)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        // SAFETY: `span` is held by the `tracing::Span` recording into it.
        let span = unsafe { SpanRecord::of(span) };
        with_scratch(|scratch| {
            self.fields_with(scratch, Some(span), |visitor| values.record(visitor))
        });
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        with_line(|line| {
            if self.write_event(line, event).is_ok() {
                let mut writer = self.make_writer.make_writer_for(event.metadata());
                // A log line that cannot be written is lost; the connection goes on.
                let _ = writer.write_all(line.as_bytes());
            }
        });
    }

    fn enter(&self, span: &Id) {
        let held = ENTERED
            .try_with(|stack| {
                let mut stack = stack.try_borrow_mut().ok()?;
                let repeated = stack
                    .iter()
                    .any(|entry| entry.instance == self.instance && entry.id == *span);
                stack.push(Entered {
                    instance: self.instance,
                    repeated,
                    id: span.clone(),
                });
                Some(!repeated)
            })
            .ok()
            .flatten();
        if held == Some(true) {
            // SAFETY: the span being entered is held by its `tracing::Span`.
            unsafe { SpanRecord::of(span) }.acquire();
        }
    }

    fn exit(&self, span: &Id) {
        let held = ENTERED
            .try_with(|stack| {
                let mut stack = stack.try_borrow_mut().ok()?;
                let at = stack
                    .iter()
                    .rposition(|entry| entry.instance == self.instance && entry.id == *span)?;
                Some(!stack.remove(at).repeated)
            })
            .ok()
            .flatten();
        if held == Some(true) {
            self.close(span.clone());
        }
    }

    fn current_span(&self) -> Current {
        match self.current_record() {
            Some(span) => Current::new(span.id(), span.meta),
            None => Current::none(),
        }
    }

    fn clone_span(&self, span: &Id) -> Id {
        // SAFETY: the span being cloned is held by the caller.
        unsafe { SpanRecord::of(span) }.acquire();
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        // SAFETY: the caller holds this reference and gives it up.
        match unsafe { SpanRecord::release(&span) } {
            None => false,
            Some(parent) => {
                if let Some(parent) = parent {
                    self.close(parent);
                }
                true
            }
        }
    }
}

// === Per-thread buffers ===

/// Where a span's fields are formatted before they are merged into the span.
#[derive(Default)]
struct Scratch {
    /// Human: the fields. JSON: each field's entry, `"key":value`, one after the other.
    text: String,
    /// JSON: where each entry and its (escaped) key lie in `text`, in visiting order.
    entries: Vec<JsonEntry>,
    /// JSON: the span's fields merged with these.
    merged: String,
}

struct JsonEntry {
    key: Range<usize>,
    entry: Range<usize>,
}

/// Runs `f` with this thread's scratch buffers (fresh ones when they are in use, for a
/// `Debug` implementation that makes a span while one is formatted).
fn with_scratch<R: Default>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    thread_local! {
        static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    }
    let mut f = Some(f);
    let done = SCRATCH
        .try_with(|scratch| {
            let mut scratch = scratch.try_borrow_mut().ok()?;
            let result = f.take().map(|f| f(&mut scratch));
            scratch.shrink_if_large();
            result
        })
        .ok()
        .flatten();
    match (done, f) {
        (Some(result), _) => result,
        (None, Some(f)) => f(&mut Scratch::default()),
        // Not reached: `f` is only taken when it runs and gives a result.
        (None, None) => R::default(),
    }
}

/// Buffers kept per thread are cut back once something large has gone through them.
const KEEP_CAPACITY: usize = 16 * 1024;

impl Scratch {
    fn shrink_if_large(&mut self) {
        if self.text.capacity() > KEEP_CAPACITY || self.merged.capacity() > KEEP_CAPACITY {
            *self = Scratch::default();
        }
    }

    /// Merges the entries in `text` into `old` (a stored JSON body) into `merged`: keys in
    /// order, a later value replacing an earlier, as the `BTreeMap` of
    /// tracing-subscriber's `JsonFields` does.
    fn merge_json(&mut self, old: &str) {
        let text = self.text.as_str();
        let key = |entry: &JsonEntry| text.get(entry.key.clone()).unwrap_or_default();
        // Stable: among equal keys the last visited is last, and it is the one kept.
        self.entries.sort_by(|a, b| key(a).cmp(key(b)));
        let entries = &self.entries;
        let mut new = entries
            .iter()
            .enumerate()
            .filter(|&(at, entry)| {
                entries
                    .get(at + 1)
                    .is_none_or(|next| key(next) != key(entry))
            })
            .map(|(_, entry)| entry)
            .peekable();
        let mut old = StoredJsonEntries { rest: old }.peekable();
        let merged = &mut self.merged;
        merged.clear();
        let mut push = |entry: &str| {
            if !merged.is_empty() {
                merged.push(',');
            }
            merged.push_str(entry);
        };
        loop {
            let take_new = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(stored), Some(entry)) => match stored.key.cmp(key(entry)) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => {
                        old.next();
                        true
                    }
                    std::cmp::Ordering::Greater => true,
                },
            };
            if take_new {
                if let Some(entry) = new.next() {
                    push(text.get(entry.entry.clone()).unwrap_or_default());
                }
            } else if let Some(stored) = old.next() {
                push(stored.entry);
            }
        }
    }
}

/// Runs `f` with this thread's line buffer, cleared afterwards (a fresh one when it is in
/// use, for a `Debug` implementation that logs while an event is formatted).
fn with_line(f: impl FnOnce(&mut String)) {
    thread_local! {
        static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    }
    let mut f = Some(f);
    let _ = LINE.try_with(|line| {
        if let (Ok(mut line), Some(f)) = (line.try_borrow_mut(), f.take()) {
            f(&mut line);
            line.clear();
            if line.capacity() > KEEP_CAPACITY {
                *line = String::new();
            }
        }
    });
    if let Some(f) = f {
        f(&mut String::new());
    }
}

/// The entries of a span's stored JSON body, which this module wrote: `"key":value`
/// separated by commas, values strings, numbers, `true`, `false`, `null` or arrays of
/// numbers.
struct StoredJsonEntries<'a> {
    rest: &'a str,
}

struct StoredJsonEntry<'a> {
    /// Escaped, without its quotes.
    key: &'a str,
    /// The whole `"key":value`.
    entry: &'a str,
}

impl<'a> Iterator for StoredJsonEntries<'a> {
    type Item = StoredJsonEntry<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.rest.as_bytes();
        let key_end = end_of_json_string(bytes, 0)?;
        let value_start = key_end + 1; // past the ':'
        let value_end = match bytes.get(value_start)? {
            b'"' => end_of_json_string(bytes, value_start)?,
            b'[' => value_start + bytes.get(value_start..)?.iter().position(|&b| b == b']')? + 1,
            _ => bytes
                .get(value_start..)?
                .iter()
                .position(|&b| b == b',')
                .map_or(bytes.len(), |at| value_start + at),
        };
        let entry = StoredJsonEntry {
            key: self.rest.get(1..key_end - 1)?,
            entry: self.rest.get(..value_end)?,
        };
        let rest = self.rest.get(value_end..)?;
        self.rest = rest.strip_prefix(',').unwrap_or(rest);
        Some(entry)
    }
}

/// Where the JSON string that opens at `start` ends (just past its closing quote).
fn end_of_json_string(bytes: &[u8], start: usize) -> Option<usize> {
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let mut at = start + 1;
    loop {
        match bytes.get(at)? {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
}

// === Field formatting ===

const BOLD: &str = "\x1b[1m";
const DIMMED: &str = "\x1b[2m";
const ITALIC: &str = "\x1b[3m";
const RESET: &str = "\x1b[0m";

/// Appends `text`, in `style` when there is one (as nu-ansi-term paints it).
fn paint(line: &mut String, style: Option<&str>, text: &str) {
    match style {
        Some(style) => {
            line.push_str(style);
            line.push_str(text);
            line.push_str(RESET);
        }
        None => line.push_str(text),
    }
}

/// `text` in `style`, as a `Display`.
struct Painted<'a>(Option<&'static str>, &'a str);

impl fmt::Display for Painted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(style) => write!(f, "{style}{}{RESET}", self.1),
            None => f.write_str(self.1),
        }
    }
}

/// The level as the human format shows it, padded to five, and its colour.
fn level_label(level: &Level) -> (&'static str, &'static str) {
    match *level {
        Level::TRACE => ("TRACE", "\x1b[35m"),
        Level::DEBUG => ("DEBUG", "\x1b[34m"),
        Level::INFO => (" INFO", "\x1b[32m"),
        Level::WARN => (" WARN", "\x1b[33m"),
        _ => ("ERROR", "\x1b[31m"),
    }
}

/// Writes through to `0`, escaping the control characters a terminal could act on, as
/// tracing-subscriber does for messages and errors (so a peer cannot drive the
/// operator's terminal through the log).
struct EscapeControls<'a, W: fmt::Write + ?Sized>(&'a mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for EscapeControls<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, ch) in s.char_indices() {
            let escape = match ch {
                '\x1b' => "\\x1b",
                '\x07' => "\\x07",
                '\x08' => "\\x08",
                '\x0c' => "\\x0c",
                '\x7f' => "\\x7f",
                '\u{80}'..='\u{9f}' => "",
                _ => continue,
            };
            self.0.write_str(s.get(plain..at).unwrap_or_default())?;
            if escape.is_empty() {
                write!(self.0, "\\u{{{:x}}}", ch as u32)?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = at + ch.len_utf8();
        }
        self.0.write_str(s.get(plain..).unwrap_or_default())
    }
}

/// `0` with its terminal control characters escaped.
struct Sanitized<T>(T);

impl<T: fmt::Debug> fmt::Debug for Sanitized<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapeControls(f), "{:?}", self.0)
    }
}

impl<T: fmt::Display> fmt::Display for Sanitized<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapeControls(f), "{}", self.0)
    }
}

/// An error and its sources, `[outer, inner, ...]`, each sanitized.
struct SourceList<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for SourceList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut error = Some(self.0);
        while let Some(current) = error {
            list.entry(&Sanitized(format_args!("{current}")));
            error = current.source();
        }
        list.finish()
    }
}

/// The human format's fields: `message` first as it is, then `name=value` (`Debug`),
/// separated by spaces; `log.` fields (already in the metadata) left out.
struct HumanVisitor<'a> {
    line: &'a mut String,
    ansi: bool,
    first: bool,
    result: fmt::Result,
}

impl<'a> HumanVisitor<'a> {
    fn new(line: &'a mut String, ansi: bool) -> Self {
        HumanVisitor {
            line,
            ansi,
            first: true,
            result: Ok(()),
        }
    }

    fn italic<'t>(&self, text: &'t str) -> Painted<'t> {
        Painted(self.ansi.then_some(ITALIC), text)
    }

    fn dimmed<'t>(&self, text: &'t str) -> Painted<'t> {
        Painted(self.ansi.then_some(DIMMED), text)
    }
}

impl Visit for HumanVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => {
                let name = field.name();
                let italic_name = self.italic(name);
                let italic_sources = self.italic(".sources");
                let equals = self.dimmed("=");
                self.record_debug(
                    field,
                    &format_args!(
                        "{} {italic_name}{italic_sources}{equals}{}",
                        Sanitized(format_args!("{value}")),
                        SourceList(source),
                    ),
                );
            }
            None => self.record_debug(
                field,
                &format_args!("{}", Sanitized(format_args!("{value}"))),
            ),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        if self.first {
            self.first = false;
        } else {
            self.line.push(' ');
        }
        self.result = if name == "message" {
            write!(self.line, "{:?}", Sanitized(value))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            let (name, equals) = (self.italic(name), self.dimmed("="));
            write!(self.line, "{name}{equals}{value:?}")
        };
    }
}

/// A span's fields for the JSON format: each `"key":value` in `scratch`, as the
/// `serde_json::Value`s of tracing-subscriber's `JsonVisitor` serialize.
struct JsonSpanVisitor<'a> {
    scratch: &'a mut Scratch,
}

impl JsonSpanVisitor<'_> {
    /// Adds an entry for `key`, its value written by `value`.
    fn entry(&mut self, key: &str, value: impl FnOnce(&mut String)) {
        let text = &mut self.scratch.text;
        let start = text.len();
        text.push('"');
        push_json_escaped(text, key);
        let key_range = start + 1..text.len();
        text.push_str("\":");
        value(text);
        self.scratch.entries.push(JsonEntry {
            key: key_range,
            entry: start..text.len(),
        });
    }
}

impl Visit for JsonSpanVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field.name(), |text| push_json_f64(text, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field.name(), |text| {
            let _ = write!(text, "{value}");
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field.name(), |text| {
            let _ = write!(text, "{value}");
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field.name(), |text| {
            text.push_str(if value { "true" } else { "false" })
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field.name(), |text| push_json_str(text, value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.entry(field.name(), |text| {
            text.push('[');
            for (at, byte) in value.iter().enumerate() {
                if at > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{byte}");
            }
            text.push(']');
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.entry(name, |text| push_json_debug(text, value));
    }
}

/// An event's fields for the flattened JSON format: `,"key":value` each, in order, as
/// tracing-serde's `SerdeMapVisitor` writes them (every field, keys as they are).
struct JsonEventVisitor<'a> {
    line: &'a mut String,
    result: fmt::Result,
}

impl JsonEventVisitor<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        push_json_str(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonEventVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        push_json_f64(self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.line, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.key(field);
        self.line.push('"');
        self.result = write!(JsonEscape(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// Appends `value` as a JSON string.
fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    push_json_escaped(out, value);
    out.push('"');
}

/// Appends `value`'s `Debug` text as a JSON string.
fn push_json_debug(out: &mut String, value: &dyn fmt::Debug) {
    out.push('"');
    let _ = write!(JsonEscape(out), "{value:?}");
    out.push('"');
}

/// Appends `value` as serde_json writes an `f64`: `null` when it is not finite.
fn push_json_f64(out: &mut String, value: f64) {
    match serde_json::Number::from_f64(value) {
        Some(number) => {
            let _ = write!(out, "{number}");
        }
        None => out.push_str("null"),
    }
}

/// Appends `value` escaped as serde_json escapes the inside of a string.
fn push_json_escaped(out: &mut String, value: &str) {
    let mut plain = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so `plain..at` lies on character boundaries.
        out.push_str(value.get(plain..at).unwrap_or_default());
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        plain = at + 1;
    }
    out.push_str(value.get(plain..).unwrap_or_default());
}

/// Writes through to a `String`, escaped as the inside of a JSON string.
struct JsonEscape<'a>(&'a mut String);

impl fmt::Write for JsonEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_json_escaped(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::field::Empty;
    use tracing::Span;
    use tracing_subscriber::EnvFilter;

    fn live() -> isize {
        LIVE_RECORDS.with(std::cell::Cell::get)
    }

    fn quiet(format: LogFormat) -> CompactSubscriber<fn() -> std::io::Sink> {
        CompactSubscriber::new(format).with_writer(std::io::sink as fn() -> std::io::Sink)
    }

    fn with_quiet<R>(filter: &str, f: impl FnOnce() -> R) -> R {
        let dispatch = Dispatch::new(quiet(LogFormat::Human).with(EnvFilter::new(filter)));
        tracing::dispatcher::with_default(&dispatch, f)
    }

    #[test]
    fn a_span_cloned_and_dropped_in_any_order_is_freed_once_by_the_last() {
        let orders: [[usize; 3]; 6] = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        for order in orders {
            with_quiet("trace", || {
                let span = tracing::info_span!("conn", peer = 1, client_id = Empty);
                let mut handles = [Some(span.clone()), Some(span.clone()), Some(span)];
                assert_eq!(live(), 1);
                for (dropped, &at) in order.iter().enumerate() {
                    handles[at].take();
                    let expected = if dropped == 2 { 0 } else { 1 };
                    assert_eq!(live(), expected, "{order:?} after {dropped}");
                }
            });
        }
    }

    #[test]
    fn a_child_keeps_its_parent_alive_until_it_closes() {
        with_quiet("trace", || {
            let parent = tracing::info_span!("conn", peer = 1);
            let child = parent.in_scope(|| tracing::info_span!("session", id = 2));
            drop(parent);
            assert_eq!(live(), 2, "the child holds its parent");
            let in_child = child.in_scope(|| Span::current().metadata().map(|m| m.name()));
            assert_eq!(in_child, Some("session"));
            drop(child);
            assert_eq!(live(), 0, "closing the child released the parent");
        });
    }

    #[test]
    fn an_entered_span_lives_until_it_is_exited() {
        let dispatch = Dispatch::new(quiet(LogFormat::Human));
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("conn", peer = 1);
            let id = span.id().unwrap();
            dispatch.enter(&id);
            dispatch.enter(&id); // entered twice: the second holds nothing more
            drop(span);
            assert_eq!(live(), 1, "the stack of entered spans holds it");
            assert_eq!(dispatch.current_span().id(), Some(&id));
            let current = Span::current();
            assert_eq!(current.metadata().map(|m| m.name()), Some("conn"));
            drop(current);
            dispatch.exit(&id);
            assert_eq!(live(), 1, "still entered once");
            dispatch.exit(&id);
            assert_eq!(live(), 0);
            assert!(dispatch.current_span().id().is_none());
        });
    }

    #[test]
    fn span_none_and_disabled_spans_make_no_record() {
        with_quiet("info", || {
            let disabled = tracing::debug_span!("conn", peer = 1, client_id = Empty);
            assert!(disabled.is_disabled());
            disabled.in_scope(|| {
                Span::current().record("client_id", "x");
            });
            let none = Span::none();
            none.in_scope(|| tracing::info!("outside every span"));
            assert_eq!(live(), 0);
            assert!(Span::current().is_none());
        });
    }

    #[test]
    fn spans_of_another_subscriber_are_not_current_here() {
        let first = Dispatch::new(quiet(LogFormat::Human));
        let second = Dispatch::new(quiet(LogFormat::Human));
        let outer = tracing::dispatcher::with_default(&first, || tracing::info_span!("outer"));
        let _entered = outer.enter();
        tracing::dispatcher::with_default(&second, || {
            assert!(Span::current().is_none());
            let inner = tracing::info_span!("inner");
            drop(inner);
        });
        drop(_entered);
        drop(outer);
        assert_eq!(live(), 0);
    }

    #[test]
    fn a_span_recorded_and_dropped_on_other_threads_is_freed() {
        let dispatch = Dispatch::new(quiet(LogFormat::Json));
        let span = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("conn", peer = 1, client_id = Empty)
        });
        let threads: Vec<_> = (0..4)
            .map(|n| {
                let span = span.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        span.record("client_id", n);
                        span.in_scope(|| tracing::info!("from a thread"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(span);
        assert_eq!(
            live(),
            0,
            "freed on this thread, which held the last handle"
        );
    }

    #[test]
    fn json_records_merge_into_sorted_keys_the_last_value_kept() {
        let mut scratch = Scratch::default();
        for (key, value) in [("b", "1"), ("a", "\"x,]\\\"\""), ("b", "2"), ("c", "[1,2]")] {
            let start = scratch.text.len();
            scratch.text.push_str(&format!("\"{key}\":{value}"));
            scratch.entries.push(JsonEntry {
                key: start + 1..start + 2,
                entry: start..scratch.text.len(),
            });
        }
        scratch.merge_json("\"a\":true,\"bb\":\"y\"");
        assert_eq!(
            scratch.merged,
            "\"a\":\"x,]\\\"\",\"b\":2,\"bb\":\"y\",\"c\":[1,2]"
        );
    }
}
