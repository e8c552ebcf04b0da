//! The broker's durable store: `mqtt_core::storage::Store` on one redb file.
//!
//! One writer thread owns every write. Batches submitted within `commit_window` of each
//! other go into one write transaction, so one fsync covers them all (group commit); a
//! ticket becomes durable when the transaction holding its batch has committed, and the
//! connections waiting for it are woken then. Readers (start-up recovery) use their own
//! read transactions beside the writer.

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
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};

/// When a committed write is forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Every transaction, as soon as its batches arrive.
    Always,
    /// Every transaction, after waiting `commit_window` for more batches to join it.
    Batch,
    /// Never waited for: tickets are durable as soon as they are submitted, and the file is
    /// synced about once a second, so a crash loses up to the last second.
    Never,
}

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub path: PathBuf,
    pub fsync: Fsync,
    pub commit_window: Duration,
    /// Bytes; 0 = unlimited.
    pub max_size: u64,
}

/// How often `Fsync::Never` still makes a durable commit.
const NEVER_SYNC_INTERVAL: Duration = Duration::from_secs(1);

struct Batch {
    ticket: Ticket,
    ops: Vec<Op>,
}

struct Shared {
    durable: AtomicU64,
    waiters: Mutex<BTreeMap<Ticket, Vec<Arc<dyn Wakeup>>>>,
    full: AtomicBool,
}

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
        });
        let (sender, receiver) = mpsc::channel();
        let fsync = options.fsync;
        let writer = Writer {
            db: db.clone(),
            shared: shared.clone(),
            options,
        };
        writer.check_size();
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

    /// Waits until every batch submitted so far is committed (for an orderly shutdown and
    /// for tests); returns false if the writer has stopped.
    pub fn flush(&self) -> bool {
        let last = self.submit.lock().0;
        let (sender, receiver) = mpsc::channel();
        self.wake_when_durable(last, Arc::new(Signal(Mutex::new(Some(sender)))));
        receiver.recv().is_ok()
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
    ) -> Result<(), redb::Error> {
        for ((table, key), change) in changes {
            match change.value {
                Some(value) => {
                    self.get(table)?.insert(key, value)?;
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

/// The last state of one key within a commit.
struct Change<'a> {
    value: Option<&'a [u8]>,
    /// The key's first change in the group was a put of a numbered entry, which never
    /// existed before it.
    created: bool,
}

/// Wakes a thread waiting on a channel, once.
struct Signal(Mutex<Option<Sender<()>>>);

impl Wakeup for Signal {
    fn wake(&self) {
        if let Some(sender) = self.0.lock().take() {
            let _ = sender.send(());
        }
    }
}

impl Store for DiskStore {
    fn submit(&self, ops: Vec<Op>) -> Ticket {
        let mut submit = self.submit.lock();
        submit.0 += 1;
        let ticket = submit.0;
        if let Some(sender) = &submit.1 {
            if sender.send(Batch { ticket, ops }).is_err() {
                tracing::error!(path = %self.path.display(), "store writer has stopped; change not stored");
            }
        }
        drop(submit);
        if self.fsync == Fsync::Never {
            self.shared.advance(ticket);
        }
        ticket
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
}

impl Writer {
    fn run(self, receiver: Receiver<Batch>) {
        let mut last_sync = Instant::now();
        loop {
            // Under load, what arrived during the last commit is the next group: it already
            // shares one sync, and waiting longer would only add latency. A writer that was
            // idle waits for the writes arriving together with the first, up to
            // `commit_window`, but no longer than they keep coming: clients waiting for
            // their acknowledgements send nothing more, so a pause means the burst is in.
            let mut batches: Vec<Batch> = receiver.try_iter().collect();
            if batches.is_empty() {
                let Ok(first) = receiver.recv() else {
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
            let sync =
                self.options.fsync != Fsync::Never || last_sync.elapsed() >= NEVER_SYNC_INTERVAL;
            let durability = if sync {
                Durability::Immediate
            } else {
                Durability::None
            };
            let last = batches.last().map_or(0, |batch| batch.ticket);
            match self.commit(&batches, durability) {
                Ok(()) => {
                    if sync {
                        last_sync = Instant::now();
                    }
                    self.shared.advance(last);
                    self.check_size();
                }
                Err(error) => {
                    // Tickets of a failed commit never become durable: what waits for them
                    // is never acknowledged, and new messages are refused as if full.
                    self.shared.full.store(true, Ordering::Relaxed);
                    tracing::error!(path = %self.options.path.display(), %error, "store commit failed");
                }
            }
        }
        if self.options.fsync == Fsync::Never {
            // What the last second left unsynced is synced on an orderly stop.
            if let Err(error) = self.commit(&[], Durability::Immediate) {
                tracing::error!(path = %self.options.path.display(), %error, "store sync failed");
            }
        }
    }

    fn commit(&self, batches: &[Batch], durability: Durability) -> Result<(), redb::Error> {
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
            for op in batches.iter().flat_map(|batch| &batch.ops) {
                match op {
                    Op::Put { table, key, value } => {
                        let created = *table == Table::Queues;
                        last.entry((*table, key.as_slice()))
                            .and_modify(|change| change.value = Some(value.as_ref()))
                            .or_insert(Change {
                                value: Some(value.as_ref()),
                                created,
                            });
                    }
                    Op::Delete { table, key } => {
                        last.entry((*table, key.as_slice()))
                            .and_modify(|change| change.value = None)
                            .or_insert(Change {
                                value: None,
                                created: false,
                            });
                    }
                    Op::DeletePrefix { table, prefix } => {
                        tables.apply(last.drain())?;
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
            tables.apply(last.drain())?;
        }
        transaction.commit()?;
        Ok(())
    }

    fn check_size(&self) {
        if self.options.max_size == 0 {
            return;
        }
        let size = std::fs::metadata(&self.options.path).map_or(0, |meta| meta.len());
        self.shared
            .full
            .store(size >= self.options.max_size, Ordering::Relaxed);
    }
}
