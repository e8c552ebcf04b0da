#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_storage::{DiskOptions, DiskStore, Fsync};
use mqtt_core::session::Wakeup;
use mqtt_core::storage::{MapStore, Op, Store, StoreError, Table};
use proptest::prelude::*;

fn open(path: &Path, fsync: Fsync) -> DiskStore {
    DiskStore::open(DiskOptions {
        path: path.to_path_buf(),
        fsync,
        commit_window: Duration::from_millis(2),
        never_sync_interval: Duration::from_secs(1),
        max_size: 0,
    })
    .expect("open store")
}

fn put(table: Table, key: &[u8], value: &'static [u8]) -> Op {
    Op::Put {
        table,
        key: key.to_vec(),
        value: Bytes::from_static(value),
    }
}

#[derive(Default)]
struct Count(AtomicUsize);

impl Wakeup for Count {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn what_was_committed_is_there_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/store.redb");
    {
        let store = open(&path, Fsync::Batch);
        store.submit(vec![
            put(Table::Retained, b"a/b", b"one"),
            put(Table::Queues, b"s1\0\0\0\0\0\0\0\x01", b"q1"),
            put(Table::Queues, b"s1\0\0\0\0\0\0\0\x02", b"q2"),
            put(Table::Queues, b"s2\0\0\0\0\0\0\0\x01", b"other"),
        ]);
        let ticket = store.submit(vec![
            Op::DeletePrefix {
                table: Table::Queues,
                prefix: b"s1".to_vec(),
            },
            put(Table::Retained, b"a/b", b"two"),
        ]);
        assert!(store.flush());
        assert!(store.durable() >= ticket);
    }
    let store = open(&path, Fsync::Batch);
    assert_eq!(
        store.load(Table::Retained).expect("load"),
        vec![(b"a/b".to_vec(), Bytes::from_static(b"two"))]
    );
    assert_eq!(
        store.load(Table::Queues).expect("load"),
        vec![(
            b"s2\0\0\0\0\0\0\0\x01".to_vec(),
            Bytes::from_static(b"other")
        )]
    );
    assert!(store.load(Table::Sessions).expect("load").is_empty());
}

#[test]
fn waiters_are_woken_once_their_ticket_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("store.redb"), Fsync::Always);
    let count = Arc::new(Count::default());
    let ticket = store.submit(vec![put(Table::Sessions, b"k", b"v")]);
    store.wake_when_durable(ticket, count.clone());
    assert!(store.flush());
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    // A ticket already durable wakes at once.
    store.wake_when_durable(ticket, count.clone());
    assert_eq!(count.0.load(Ordering::SeqCst), 2);
}

#[test]
fn fsync_never_makes_tickets_durable_at_once_and_still_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    {
        let store = open(&path, Fsync::Never);
        let ticket = store.submit(vec![put(Table::Adapter, b"k", b"v")]);
        assert!(store.durable() >= ticket);
    }
    let store = open(&path, Fsync::Never);
    assert_eq!(store.load(Table::Adapter).expect("load").len(), 1);
}

/// What a crash would leave of `table` in the store at `path`: a copy of its file as it is
/// now (a SIGKILL loses nothing the file already has, and nothing more), opened as a
/// store; `None` if the copy caught a write halfway and does not open.
fn after_a_crash(path: &Path, dir: &Path, table: Table) -> Option<Vec<(Vec<u8>, Bytes)>> {
    let copy = dir.join("crashed.redb");
    std::fs::copy(path, &copy).expect("copy the store file");
    let store = DiskStore::open(DiskOptions {
        path: copy,
        fsync: Fsync::Batch,
        commit_window: Duration::ZERO,
        never_sync_interval: Duration::from_secs(1),
        max_size: 0,
    })
    .ok()?;
    store.load(table).ok()
}

#[test]
fn fsync_never_syncs_a_write_within_its_interval_without_another_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let interval = Duration::from_millis(250);
    let store = DiskStore::open(DiskOptions {
        path: path.clone(),
        fsync: Fsync::Never,
        commit_window: Duration::ZERO,
        never_sync_interval: interval,
        max_size: 0,
    })
    .expect("open store");
    let written = Instant::now();
    store.submit(vec![put(Table::Retained, b"a/b", b"kept")]);
    // No further write comes to trigger a sync: the writer must wake by itself. Time is
    // what is awaited; the limit leaves a loaded machine its scheduling delays.
    let kept = vec![(b"a/b".to_vec(), Bytes::from_static(b"kept"))];
    loop {
        std::thread::sleep(interval / 5);
        if after_a_crash(&path, dir.path(), Table::Retained).as_ref() == Some(&kept) {
            break;
        }
        assert!(
            written.elapsed() < interval * 20,
            "a write under fsync = never is still not on disk after {:?}",
            written.elapsed()
        );
    }
    println!("on disk {:?} after the write", written.elapsed());
}

#[test]
fn a_file_that_is_not_a_store_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write");
    match DiskStore::open(DiskOptions {
        path: path.clone(),
        fsync: Fsync::Batch,
        commit_window: Duration::ZERO,
        never_sync_interval: Duration::from_secs(1),
        max_size: 0,
    }) {
        Err(StoreError::Unreadable { path: named, .. }) => {
            assert_eq!(named, path.display().to_string())
        }
        Err(other) => panic!("expected Unreadable, got {other}"),
        Ok(_) => panic!("garbage opened as a store"),
    }
}

#[test]
fn a_store_over_its_size_says_it_is_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let store = DiskStore::open(DiskOptions {
        path,
        fsync: Fsync::Always,
        commit_window: Duration::ZERO,
        never_sync_interval: Duration::from_secs(1),
        max_size: 4 * 1024 * 1024,
    })
    .expect("open");
    assert!(!store.is_full());
    let big = Bytes::from(vec![7u8; 64 * 1024]);
    for i in 0..128u32 {
        store.submit(vec![Op::Put {
            table: Table::Queues,
            key: i.to_be_bytes().to_vec(),
            value: big.clone(),
        }]);
    }
    assert!(store.flush());
    assert!(store.is_full());
}

fn bounded(path: &Path, max_size: u64) -> DiskStore {
    DiskStore::open(DiskOptions {
        path: path.to_path_buf(),
        fsync: Fsync::Batch,
        commit_window: Duration::ZERO,
        never_sync_interval: Duration::from_secs(1),
        max_size,
    })
    .expect("open")
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("store file").len()
}

#[test]
fn a_full_store_that_is_emptied_is_no_longer_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = bounded(&dir.path().join("store.redb"), 4 * 1024 * 1024);
    let big = Bytes::from(vec![7u8; 64 * 1024]);
    for i in 0..128u32 {
        store.submit(vec![Op::Put {
            table: Table::Retained,
            key: i.to_be_bytes().to_vec(),
            value: big.clone(),
        }]);
    }
    assert!(store.flush());
    assert!(store.is_full());
    store.submit(
        (0..128u32)
            .map(|i| Op::Delete {
                table: Table::Retained,
                key: i.to_be_bytes().to_vec(),
            })
            .collect(),
    );
    assert!(store.flush());
    assert!(store.load(Table::Retained).expect("load").is_empty());
    assert!(!store.is_full(), "emptied, the store has room again");
    let ticket = store.submit(vec![put(Table::Retained, b"after", b"room")]);
    assert!(store.flush() && store.durable() >= ticket);
    assert_eq!(store.load(Table::Retained).expect("load").len(), 1);
}

#[test]
fn puts_into_a_full_store_do_not_grow_its_file() {
    const MAX: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let store = bounded(&path, MAX);
    let value = Bytes::from(vec![3u8; 4096]);
    let mut next = 0u32;
    let mut put_next = |store: &DiskStore| {
        store.submit(vec![Op::Put {
            table: Table::Retained,
            key: next.to_be_bytes().to_vec(),
            value: value.clone(),
        }]);
        next += 1;
    };
    for _ in 0..4096 {
        if store.is_full() {
            break;
        }
        put_next(&store);
        assert!(store.flush());
    }
    assert!(store.is_full(), "16 MiB of puts never filled a 1 MiB store");
    let kept = store.load(Table::Retained).expect("load");

    // A full store still replaces an entry with one no larger (say, a session's record
    // marked disconnected), but not with a larger one.
    let (first, _) = kept[0].clone();
    let (second, _) = kept[1].clone();
    store.submit(vec![
        Op::Put {
            table: Table::Retained,
            key: first.clone(),
            value: Bytes::from_static(b"smaller"),
        },
        Op::Put {
            table: Table::Retained,
            key: second.clone(),
            value: Bytes::from(vec![4u8; 8192]),
        },
    ]);
    assert!(store.flush());
    let now: BTreeMap<Vec<u8>, Bytes> = store
        .load(Table::Retained)
        .expect("load")
        .into_iter()
        .collect();
    assert_eq!(now[&first], Bytes::from_static(b"smaller"));
    assert_eq!(now[&second], value, "a larger value is left out while full");
    assert_eq!(store.left_out_puts(), 1);

    // 16 MiB of new entries more, sixteen times the bound: all left out, and counted.
    for _ in 0..4096 {
        put_next(&store);
    }
    assert!(store.flush());
    assert!(store.is_full());
    let len = file_len(&path);
    println!(
        "full after {} puts of 4 KiB; file {len} bytes after 4096 more, max_size {MAX}",
        kept.len()
    );
    assert!(
        len <= 4 * MAX,
        "the file grew to {len} bytes, max_size {MAX}"
    );
    assert_eq!(store.load(Table::Retained).expect("load").len(), kept.len());
    assert_eq!(store.left_out_puts(), 1 + 4096);

    store.submit(vec![Op::DeletePrefix {
        table: Table::Retained,
        prefix: Vec::new(),
    }]);
    assert!(store.flush());
    assert!(store.load(Table::Retained).expect("load").is_empty());
    assert!(!store.is_full());
    put_next(&store);
    assert!(store.flush());
    assert_eq!(store.load(Table::Retained).expect("load").len(), 1);
    assert!(file_len(&path) <= 4 * MAX);
}

#[derive(Debug, Clone)]
enum ModelOp {
    Put(usize, u8, u8),
    Delete(usize, u8),
    DeletePrefix(usize, u8),
}

fn table(index: usize) -> Table {
    Table::ALL[index % Table::ALL.len()]
}

/// Two-byte keys: a prefix byte (few values, so prefixes collide) and a suffix.
fn key(prefix: u8, suffix: u8) -> Vec<u8> {
    vec![prefix % 4, suffix]
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    prop_oneof![
        4 => (0..Table::ALL.len(), any::<u8>(), any::<u8>()).prop_map(|(t, k, v)| ModelOp::Put(t, k, v)),
        2 => (0..Table::ALL.len(), any::<u8>()).prop_map(|(t, k)| ModelOp::Delete(t, k)),
        1 => (0..Table::ALL.len(), any::<u8>()).prop_map(|(t, p)| ModelOp::DeletePrefix(t, p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random batches of changes leave the same state on disk, after reopening, as in a
    /// plain ordered map and in the in-memory `MapStore`.
    #[test]
    fn random_changes_survive_reopening_as_in_a_map(
        batches in proptest::collection::vec(proptest::collection::vec(model_op(), 0..12), 1..8)
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let mut model: BTreeMap<(Table, Vec<u8>), Bytes> = BTreeMap::new();
        let memory = MapStore::default();
        {
            let store = open(&path, Fsync::Batch);
            for batch in &batches {
                let mut ops = Vec::new();
                for op in batch {
                    match *op {
                        ModelOp::Put(t, k, v) => {
                            let (table, key) = (table(t), key(k, k.wrapping_mul(31)));
                            // The contract of the numbered tables: a queue entry is put only
                            // while absent, an in-flight mark only beside its queue entry.
                            let allowed = match table {
                                Table::Queues => !model.contains_key(&(table, key.clone())),
                                Table::Inflight => model.contains_key(&(Table::Queues, key.clone())),
                                _ => true,
                            };
                            if allowed {
                                model.insert((table, key.clone()), Bytes::from(vec![v]));
                                ops.push(Op::Put { table, key, value: Bytes::from(vec![v]) });
                            }
                        }
                        ModelOp::Delete(t, k) => {
                            let (table, key) = (table(t), key(k, k.wrapping_mul(31)));
                            model.remove(&(table, key.clone()));
                            if table == Table::Queues {
                                model.remove(&(Table::Inflight, key.clone()));
                                ops.push(Op::Delete { table: Table::Inflight, key: key.clone() });
                            }
                            ops.push(Op::Delete { table, key });
                        }
                        ModelOp::DeletePrefix(t, p) => {
                            let (table, prefix) = (table(t), vec![p % 4]);
                            let tables = if table == Table::Queues {
                                vec![Table::Inflight, Table::Queues]
                            } else {
                                vec![table]
                            };
                            for table in tables {
                                model.retain(|(t, k), _| !(*t == table && k.starts_with(&prefix)));
                                ops.push(Op::DeletePrefix { table, prefix: prefix.clone() });
                            }
                        }
                    }
                }
                memory.submit(ops.clone());
                store.submit(ops);
            }
        }
        let store = open(&path, Fsync::Batch);
        for table in Table::ALL {
            let expected: Vec<(Vec<u8>, Bytes)> = model
                .iter()
                .filter(|((t, _), _)| *t == table)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(&store.load(table).expect("load"), &expected);
            prop_assert_eq!(memory.load(table).expect("load"), expected);
        }
    }
}
