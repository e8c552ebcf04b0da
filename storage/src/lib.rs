//! The broker's durable store: `mqtt_core::storage::Store` on one redb file.
//!
//! One writer thread owns every write. Batches submitted within `commit_window` of each
//! other go into one write transaction, so one fsync covers them all (group commit); a
//! ticket becomes durable when the transaction holding its batch has committed, and the
//! connections waiting for it are woken then. Readers (start-up recovery) use their own
//! read transactions beside the writer.
//!
//! `max_size` bounds the bytes redb has allocated, not the file: the file grows in steps and
//! keeps free pages inside it, so its length says little of the room left. Once the store is
//! full it leaves out the puts that would make it grow, and deletes free room again.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtt_core::session::Wakeup;
use mqtt_core::storage::{Op, Store, StoreError, Table, Ticket};
use mqtt_core::sys::{Histogram, HistogramSnapshot};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};

/// When a committed write is forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every transaction, as soon as its batches arrive.
    Always,
    /// Every transaction, after waiting `commit_window` for more batches to join it.
    Batch,
    /// Never waited for: tickets are durable as soon as they are submitted, and a commit is
    /// synced within `never_sync_interval`, so a crash loses up to that interval of writes.
    Never,
}

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub path: PathBuf,
    pub fsync: Fsync,
    pub commit_window: Duration,
    /// With `Fsync::Never`, the longest a commit waits for its sync (zero: none waits, each
    /// is synced as it is made).
    pub never_sync_interval: Duration,
    /// Bytes allocated in the store; 0 = unlimited.
    pub max_size: u64,
}

struct Batch {
    ticket: Ticket,
    ops: Vec<Op>,
    /// Submitted while the store said it was full. Only such a batch has puts left out:
    /// one submitted before was let in by a broker that saw room, and may be a message it
    /// acknowledges once the ticket is durable.
    bounded: bool,
    /// Told, once the batch is committed and the store's size checked, whether the commit
    /// succeeded.
    flushed: Option<Sender<bool>>,
}

struct Shared {
    durable: AtomicU64,
    waiters: Mutex<BTreeMap<Ticket, Vec<Arc<dyn Wakeup>>>>,
    full: AtomicBool,
    left_out: AtomicU64,
    /// Every commit the writer made, a sync alone included, failed ones too.
    commit_latency: Histogram,
}

/// Upper bounds of the commit latency histogram, in microseconds: from a commit that did
/// not sync (tens of microseconds) to a disk stalling for seconds.
const COMMIT_LATENCY_BOUNDS_US: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

impl Shared {
    /// Marks every ticket up to `ticket` durable and wakes whoever waited for one.
    fn advance(&self, ticket: Ticket) {
        // Stored before the waiters are taken: `wake_when_durable` reads it under the same
        // lock, so a waiter is either woken here or never queued.
        self.durable.fetch_max(ticket, Ordering::AcqRel);
        let woken = {
            let mut waiters = self.waiters.lock();
            let later = waiters.split_off(&ticket.saturating_add(1));
            std::mem::replace(&mut *waiters, later)
        };
        for wakeup in woken.into_values().flatten() {
            wakeup.wake();
        }
    }
}

pub struct DiskStore {
    path: PathBuf,
    db: Arc<Database>,
    shared: Arc<Shared>,
    fsync: Fsync,
    /// The last ticket handed out, and the queue to the writer, under one lock so batches
    /// reach the writer in ticket order.
    submit: Mutex<(Ticket, Option<Sender<Batch>>)>,
    writer: Option<JoinHandle<()>>,
}

fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

impl DiskStore {
    /// Opens the store at `options.path`, creating it (and its directory) if missing. A file
    /// that is there but is no store fails with `StoreError::Unreadable`.
    pub fn open(options: DiskOptions) -> Result<DiskStore, StoreError> {
        let path = options.path.clone();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| io_error(dir, error))?;
        }
        let db = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() != std::io::ErrorKind::InvalidData =>
            {
                io_error(&path, io)
            }
            redb::DatabaseError::DatabaseAlreadyOpen => {
                io_error(&path, "already open by another process")
            }
            other => StoreError::Unreadable {
                path: path.display().to_string(),
                reason: other.to_string(),
            },
        })?;
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            durable: AtomicU64::new(0),
            waiters: Mutex::new(BTreeMap::new()),
            full: AtomicBool::new(false),
            left_out: AtomicU64::new(0),
            commit_latency: Histogram::new(COMMIT_LATENCY_BOUNDS_US),
        });
        let (sender, receiver) = mpsc::channel();
        let fsync = options.fsync;
        let mut writer = Writer {
            db: db.clone(),
            shared: shared.clone(),
            size: Size::new(options.max_size),
            options,
            unsynced_since: None,
            failed: false,
        };
        writer.check_size(true);
        let handle = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|error| io_error(&path, format!("cannot start the writer: {error}")))?;
        Ok(DiskStore {
            path,
            db,
            shared,
            fsync,
            submit: Mutex::new((0, Some(sender))),
            writer: Some(handle),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until every batch submitted so far is committed and `is_full` tells the room
    /// left after them (for an orderly shutdown and for tests); false if a commit failed or
    /// the writer has stopped.
    pub fn flush(&self) -> bool {
        let (sender, receiver) = mpsc::channel();
        self.send(Vec::new(), Some(sender));
        receiver.recv().unwrap_or(false)
    }

    fn send(&self, ops: Vec<Op>, flushed: Option<Sender<bool>>) -> Ticket {
        let mut submit = self.submit.lock();
        submit.0 += 1;
        let ticket = submit.0;
        let batch = Batch {
            ticket,
            ops,
            bounded: self.shared.full.load(Ordering::Relaxed),
            flushed,
        };
        if let Some(sender) = &submit.1 {
            if sender.send(batch).is_err() {
                tracing::error!(path = %self.path.display(), "store writer has stopped; change not stored");
            }
        }
        drop(submit);
        if self.fsync == Fsync::Never {
            self.shared.advance(ticket);
        }
        ticket
    }

    /// How many puts the store left out because it was full, since it was opened.
    pub fn left_out_puts(&self) -> u64 {
        self.shared.left_out.load(Ordering::Relaxed)
    }
}

/// The shortest pause in arriving writes that closes a group before `commit_window`.
const MIN_PAUSE: Duration = Duration::from_micros(50);

/// The tables of one write transaction, each opened once however many changes it gets.
struct OpenTables<'txn> {
    transaction: &'txn redb::WriteTransaction,
    open: FxHashMap<Table, redb::Table<'txn, &'static [u8], &'static [u8]>>,
}

impl<'txn> OpenTables<'txn> {
    fn new(transaction: &'txn redb::WriteTransaction) -> OpenTables<'txn> {
        OpenTables {
            transaction,
            open: FxHashMap::default(),
        }
    }

    fn get(
        &mut self,
        table: Table,
    ) -> Result<&mut redb::Table<'txn, &'static [u8], &'static [u8]>, redb::Error> {
        Ok(match self.open.entry(table) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(self.transaction.open_table(definition(table))?)
            }
        })
    }

    fn apply<'a>(
        &mut self,
        changes: impl Iterator<Item = ((Table, &'a [u8]), Change<'a>)>,
        room: &mut Room,
    ) -> Result<(), redb::Error> {
        for ((table, key), change) in changes {
            match change.value {
                Some(value) => {
                    let opened = self.get(table)?;
                    if room.admits(opened, table, key, value, &change)? {
                        opened.insert(key, value)?;
                    }
                }
                None if change.created => {}
                None => {
                    self.get(table)?.remove(key)?;
                }
            }
        }
        Ok(())
    }
}

/// What a commit may still add to a bounded store.
struct Room {
    /// Bytes of keys and values; `None` when the store is unbounded.
    left: Option<u64>,
    /// Bytes of keys and values written, to estimate the store's size until it is measured.
    added: u64,
    left_out: u64,
}

impl Room {
    fn new(left: Option<u64>) -> Room {
        Room {
            left,
            added: 0,
            left_out: 0,
        }
    }

    /// Whether a put goes in. A put of a batch submitted while the store was full goes in
    /// only while room is left, or if it cannot grow the store: a value replacing a larger
    /// or equal one (a session record marked disconnected, say), or an in-flight mark, a few
    /// bytes that exist only beside a queued message already stored and without which a
    /// restart would resend that message under a new packet id.
    fn admits(
        &mut self,
        opened: &redb::Table<'_, &'static [u8], &'static [u8]>,
        table: Table,
        key: &[u8],
        value: &[u8],
        change: &Change<'_>,
    ) -> Result<bool, redb::Error> {
        let Some(left) = self.left else {
            return Ok(true);
        };
        let size = (key.len() + value.len()) as u64;
        if size <= left || !change.bounded || table == Table::Inflight {
            self.left = Some(left.saturating_sub(size));
            self.added += size;
            return Ok(true);
        }
        if !change.created {
            if let Some(old) = opened.get(key)? {
                if old.value().len() >= value.len() {
                    return Ok(true);
                }
            }
        }
        self.left_out += 1;
        Ok(false)
    }
}

/// The last state of one key within a commit.
struct Change<'a> {
    value: Option<&'a [u8]>,
    /// The key's first change in the group was a put of a numbered entry, which never
    /// existed before it.
    created: bool,
    /// The last put comes from a batch submitted while the store was full.
    bounded: bool,
}

impl Store for DiskStore {
    fn commit_latency(&self) -> Option<HistogramSnapshot> {
        Some(self.shared.commit_latency.snapshot())
    }

    fn submit(&self, ops: Vec<Op>) -> Ticket {
        self.send(ops, None)
    }

    fn durable(&self) -> Ticket {
        self.shared.durable.load(Ordering::Acquire)
    }

    fn wake_when_durable(&self, ticket: Ticket, wakeup: Arc<dyn Wakeup>) {
        {
            let mut waiters = self.shared.waiters.lock();
            if self.shared.durable.load(Ordering::Acquire) < ticket {
                waiters.entry(ticket).or_default().push(wakeup);
                return;
            }
        }
        wakeup.wake();
    }

    fn load(&self, table: Table) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        let read = self
            .db
            .begin_read()
            .map_err(|error| io_error(&self.path, error))?;
        let opened = match read.open_table(definition(table)) {
            Ok(opened) => opened,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(io_error(&self.path, error)),
        };
        let mut entries = Vec::new();
        for entry in opened.iter().map_err(|error| io_error(&self.path, error))? {
            let (key, value) = entry.map_err(|error| io_error(&self.path, error))?;
            entries.push((key.value().to_vec(), Bytes::copy_from_slice(value.value())));
        }
        Ok(entries)
    }

    fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is left and stop.
        self.submit.lock().1 = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Writer {
    db: Arc<Database>,
    shared: Arc<Shared>,
    options: DiskOptions,
    size: Size,
    /// When the oldest commit not yet synced was made (`Fsync::Never`).
    unsynced_since: Option<Instant>,
    /// The last commit failed: new messages are refused as if the store were full until
    /// one succeeds.
    failed: bool,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Batch>) {
        loop {
            // Under load, what arrived during the last commit is the next group: it already
            // shares one sync, and waiting longer would only add latency. A writer that was
            // idle waits for the writes arriving together with the first, up to
            // `commit_window`, but no longer than they keep coming: clients waiting for
            // their acknowledgements send nothing more, so a pause means the burst is in.
            let mut batches: Vec<Batch> = receiver.try_iter().collect();
            if batches.is_empty() {
                // An idle writer still wakes for what is due without a write: the sync of
                // what `Fsync::Never` committed, and a measure of the room deletes freed.
                let first = match self.due_at() {
                    None => receiver.recv().ok(),
                    Some(at) => {
                        match receiver.recv_timeout(at.saturating_duration_since(Instant::now())) {
                            Ok(batch) => Some(batch),
                            Err(RecvTimeoutError::Timeout) => {
                                self.on_idle();
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => None,
                        }
                    }
                };
                let Some(first) = first else {
                    break;
                };
                batches.push(first);
                if self.options.fsync == Fsync::Batch && !self.options.commit_window.is_zero() {
                    let until = Instant::now() + self.options.commit_window;
                    let pause = (self.options.commit_window / 8).max(MIN_PAUSE);
                    loop {
                        let left = until.saturating_duration_since(Instant::now()).min(pause);
                        match receiver.recv_timeout(left) {
                            Ok(batch) => batches.push(batch),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                                break
                            }
                        }
                    }
                }
            }
            batches.extend(receiver.try_iter());
            self.write(&batches);
        }
        // What the last interval left unsynced is synced on an orderly stop.
        if self.unsynced_since.is_some() {
            self.sync();
        }
    }

    fn write(&mut self, batches: &[Batch]) {
        let sync = match self.options.fsync {
            Fsync::Never => {
                self.options.never_sync_interval.is_zero()
                    || self
                        .unsynced_since
                        .is_some_and(|since| since.elapsed() >= self.options.never_sync_interval)
            }
            Fsync::Always | Fsync::Batch => true,
        };
        let durability = if sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        let last = batches.last().map_or(0, |batch| batch.ticket);
        let mut room = Room::new(self.size.room());
        let committed = self.commit(batches, durability, &mut room);
        match &committed {
            Ok(()) => {
                if sync {
                    self.unsynced_since = None;
                } else if self.unsynced_since.is_none() {
                    self.unsynced_since = Some(Instant::now());
                }
                self.failed = false;
                self.shared.advance(last);
                if room.left_out > 0 {
                    self.size.left_out += room.left_out;
                    self.shared
                        .left_out
                        .fetch_add(room.left_out, Ordering::Relaxed);
                }
                self.size.used = self.size.used.saturating_add(room.added);
                let flushing = batches.iter().any(|batch| batch.flushed.is_some());
                self.check_size(flushing);
            }
            Err(error) => {
                // Tickets of a failed commit never become durable: what waits for them
                // is never acknowledged, and new messages are refused as if full.
                self.failed = true;
                self.publish_full();
                tracing::error!(path = %self.options.path.display(), %error, "store commit failed");
            }
        }
        for flushed in batches.iter().filter_map(|batch| batch.flushed.as_ref()) {
            let _ = flushed.send(committed.is_ok());
        }
    }

    /// The next moment the writer has something to do without a write.
    fn due_at(&self) -> Option<Instant> {
        let sync = self
            .unsynced_since
            .map(|since| since + self.options.never_sync_interval);
        let measure = self.size.pending.then_some(self.size.next_measure);
        match (sync, measure) {
            (Some(sync), Some(measure)) => Some(sync.min(measure)),
            (sync, measure) => sync.or(measure),
        }
    }

    fn on_idle(&mut self) {
        let now = Instant::now();
        let sync_due = self
            .unsynced_since
            .is_some_and(|since| now >= since + self.options.never_sync_interval);
        if sync_due {
            // Pages freed by unsynced commits are reused only after a sync: the room they
            // give is measured then.
            self.sync();
        }
        if sync_due || (self.size.pending && now >= self.size.next_measure) {
            self.check_size(false);
        }
    }

    /// Makes every commit so far durable: an empty durable commit carries the ones before.
    fn sync(&mut self) {
        match self.commit(&[], Durability::Immediate, &mut Room::new(None)) {
            Ok(()) => {
                self.unsynced_since = None;
                self.failed = false;
            }
            Err(error) => {
                // Tried again one interval later, not at once: a failing disk is not
                // helped by a writer spinning on it.
                self.unsynced_since = Some(Instant::now());
                self.failed = true;
                tracing::error!(path = %self.options.path.display(), %error, "store sync failed");
            }
        }
        self.publish_full();
    }

    fn commit(
        &self,
        batches: &[Batch],
        durability: Durability,
        room: &mut Room,
    ) -> Result<(), redb::Error> {
        let started = Instant::now();
        let committed = self.commit_transaction(batches, durability, room);
        self.shared.commit_latency.record(started.elapsed());
        committed
    }

    fn commit_transaction(
        &self,
        batches: &[Batch],
        durability: Durability,
        room: &mut Room,
    ) -> Result<(), redb::Error> {
        let mut transaction = self.db.begin_write()?;
        transaction
            .set_durability(durability)
            .map_err(|error| redb::Error::Corrupted(error.to_string()))?;
        {
            // Only each key's last state in the group is written, and a queued message
            // acknowledged within the group not at all: its key was new (see
            // `Table::Queues`), and so was its in-flight mark, so nothing is on disk to
            // delete.
            let mut last: FxHashMap<(Table, &[u8]), Change<'_>> = FxHashMap::default();
            let mut tables = OpenTables::new(&transaction);
            let ops = batches
                .iter()
                .flat_map(|batch| batch.ops.iter().map(move |op| (op, batch.bounded)));
            for (op, bounded) in ops {
                match op {
                    Op::Put { table, key, value } => {
                        let created = *table == Table::Queues;
                        last.entry((*table, key.as_slice()))
                            .and_modify(|change| {
                                change.value = Some(value.as_ref());
                                change.bounded = bounded;
                            })
                            .or_insert(Change {
                                value: Some(value.as_ref()),
                                created,
                                bounded,
                            });
                    }
                    Op::Delete { table, key } => {
                        last.entry((*table, key.as_slice()))
                            .and_modify(|change| change.value = None)
                            .or_insert(Change {
                                value: None,
                                created: false,
                                bounded,
                            });
                    }
                    Op::DeletePrefix { table, prefix } => {
                        tables.apply(last.drain(), room)?;
                        let opened = tables.get(*table)?;
                        let mut doomed = Vec::new();
                        for entry in opened.range(prefix.as_slice()..)? {
                            let key = entry?.0.value().to_vec();
                            if !key.starts_with(prefix) {
                                break;
                            }
                            doomed.push(key);
                        }
                        for key in doomed {
                            opened.remove(key.as_slice())?;
                        }
                    }
                }
            }
            let unwritten: Vec<&[u8]> = last
                .iter()
                .filter(|((table, _), change)| {
                    *table == Table::Queues && change.created && change.value.is_none()
                })
                .map(|((_, key), _)| *key)
                .collect();
            for key in unwritten {
                if let Some(mark) = last.get_mut(&(Table::Inflight, key)) {
                    if mark.value.is_none() {
                        mark.created = true;
                    }
                }
            }
            tables.apply(last.drain(), room)?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Brings `full` up to date after a commit: from the file's length while that is below
    /// the bound, which the pages in use cannot exceed, and otherwise from redb's count of
    /// them, when a measure is due or `now` (at open, and for a flush).
    fn check_size(&mut self, now: bool) {
        if self.size.max == 0 {
            self.publish_full();
            return;
        }
        let file = std::fs::metadata(&self.options.path).map_or(u64::MAX, |meta| meta.len());
        // A full store is measured however small its file: only a measure tells it has
        // room again.
        if file < self.size.max && !self.size.full {
            self.size.used = self.size.used.min(file);
            self.size.pending = false;
        } else if now || Instant::now() >= self.size.next_measure {
            let started = Instant::now();
            match self.allocated() {
                Ok(used) => self.size.used = used,
                Err(error) => {
                    tracing::warn!(path = %self.options.path.display(), %error, "cannot measure the store")
                }
            }
            let finished = Instant::now();
            self.size.next_measure = finished + (finished - started) * MEASURE_SPACING;
            self.size.pending = false;
        } else {
            self.size.pending = true;
        }
        self.size.update(&self.options.path);
        self.publish_full();
    }

    /// Bytes of the pages redb has allocated: what the data needs, however large the file.
    fn allocated(&self) -> Result<u64, redb::Error> {
        let transaction = self.db.begin_write()?;
        let stats = transaction.stats()?;
        transaction.abort()?;
        Ok(stats
            .allocated_pages()
            .saturating_mul(stats.page_size() as u64))
    }

    fn publish_full(&self) {
        self.shared
            .full
            .store(self.size.full || self.failed, Ordering::Relaxed);
    }
}

/// Measuring walks every page in use, so a measure waits this many times its own duration
/// after it: at most a twentieth of the writer's time goes to it.
const MEASURE_SPACING: u32 = 19;

/// A full store has room again once this share of `max_size` is free, not as soon as
/// anything is: each commit frees the pages the one before it replaced, and a store that
/// left the full state for those would let the next burst of writes through whole.
const FREED_TO_LEAVE_FULL: u64 = 10;

/// How much of `max_size` the store uses.
struct Size {
    /// 0 = unlimited.
    max: u64,
    /// Bytes allocated at the last measure, plus what was put since.
    used: u64,
    full: bool,
    /// A measure was due after a commit but spaced out: the idle writer still makes it,
    /// so a store emptied by deletes does not stay full for want of another write.
    pending: bool,
    next_measure: Instant,
    /// Puts left out since the store last became full.
    left_out: u64,
}

impl Size {
    fn new(max: u64) -> Size {
        Size {
            max,
            used: 0,
            full: false,
            pending: false,
            next_measure: Instant::now(),
            left_out: 0,
        }
    }

    /// What the next commit may add from batches submitted while the store was full;
    /// `None` when unbounded.
    fn room(&self) -> Option<u64> {
        (self.max != 0).then(|| {
            if self.full {
                0
            } else {
                self.max.saturating_sub(self.used)
            }
        })
    }

    fn update(&mut self, path: &Path) {
        let full = if self.full {
            self.used > self.max - self.max / FREED_TO_LEAVE_FULL
        } else {
            self.used >= self.max
        };
        if full && !self.full {
            tracing::warn!(path = %path.display(), used = self.used, max_size = self.max,
                "store full: new QoS 1/2 messages are refused and puts that would grow it are left out");
        } else if !full && self.full {
            tracing::info!(path = %path.display(), used = self.used, max_size = self.max,
                left_out = self.left_out, "store has room again");
            self.left_out = 0;
        }
        self.full = full;
    }
}
