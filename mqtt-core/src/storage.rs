//! What the broker keeps across restarts, and the contract of the stores that keep it.
//!
//! A store is a durable map of bytes in a few tables. What the bytes mean (a session, a
//! queued message, a retained one) is decided here, by the broker's records, so every
//! store keeps exactly the same thing and a store never needs to know MQTT. Changes reach
//! a store as batches of operations; each batch gets a ticket, and a store says which
//! tickets are durable, so a connection can hold its acknowledgements until the message
//! they acknowledge would survive a crash.

use std::sync::Arc;

use bytes::Bytes;

use crate::session::Wakeup;

/// The tables of a store. Keys are ordered bytewise within a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Session key → the session: subscriptions, expiry, will.
    Sessions,
    /// Session key + sequence number → a queued or in-flight outgoing message.
    Queues,
    /// Session key + packet id → an incoming QoS 2 message awaiting PUBREL.
    AwaitingRel,
    /// Topic → its retained message.
    Retained,
    /// Session key → what a device adapter keeps with the session.
    Adapter,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Sessions,
        Table::Queues,
        Table::AwaitingRel,
        Table::Retained,
        Table::Adapter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Queues => "queues",
            Table::AwaitingRel => "awaiting_rel",
            Table::Retained => "retained",
            Table::Adapter => "adapter",
        }
    }
}

/// One change to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        table: Table,
        key: Vec<u8>,
        value: Bytes,
    },
    Delete {
        table: Table,
        key: Vec<u8>,
    },
    /// Deletes every key that starts with `prefix`: all of one session's queue.
    DeletePrefix {
        table: Table,
        prefix: Vec<u8>,
    },
}

/// Names a submitted batch. Tickets grow with every batch; a ticket is durable when every
/// batch up to it is.
pub type Ticket = u64;

/// Why a store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read as a store: the operator decides what to do.
    #[error("store {path} is unreadable: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("store {path}: {reason}")]
    Io { path: String, reason: String },
}

/// A place the broker's durable state lives.
pub trait Store: Send + Sync {
    /// Queues `ops` to be applied together, in order after every earlier batch.
    fn submit(&self, ops: Vec<Op>) -> Ticket;

    /// The highest ticket whose batch, and every one before it, is durable.
    fn durable(&self) -> Ticket;

    /// Calls `wakeup` once `ticket` is durable (at once if it already is).
    fn wake_when_durable(&self, ticket: Ticket, wakeup: Arc<dyn Wakeup>);

    /// Every entry of `table`, in key order, as last written.
    fn load(&self, table: Table) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError>;

    /// True once the store has reached its configured size: new QoS 1/2 messages are then
    /// refused rather than stored.
    fn is_full(&self) -> bool;
}

/// Keeps nothing: the broker's state lives and dies with the process, as with Mosquitto
/// without persistence. Every ticket is durable at once.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn submit(&self, _ops: Vec<Op>) -> Ticket {
        0
    }

    fn durable(&self) -> Ticket {
        Ticket::MAX
    }

    fn wake_when_durable(&self, _ticket: Ticket, wakeup: Arc<dyn Wakeup>) {
        wakeup.wake();
    }

    fn load(&self, _table: Table) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        Ok(Vec::new())
    }

    fn is_full(&self) -> bool {
        false
    }
}

/// The key of everything a session owns: its namespace and client id, each length-prefixed
/// so no pair of sessions shares a prefix, and one session's entries sort together.
pub fn session_key(namespace: &str, client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + namespace.len() + client_id.len());
    for part in [namespace, client_id] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        key.extend_from_slice(&len.to_be_bytes());
        key.extend_from_slice(part.as_bytes().get(..usize::from(len)).unwrap_or_default());
    }
    key
}

/// `session` followed by a big-endian number, so entries sort by that number.
pub fn session_entry_key(session: &[u8], number: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.len() + 8);
    key.extend_from_slice(session);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_never_prefix_one_another() {
        let a = session_key("mqtt", "ab");
        let b = session_key("mqtt", "abc");
        let c = session_key("mqt", "tab");
        assert!(!b.starts_with(&a));
        assert!(!a.starts_with(&c) && !c.starts_with(&a));
        let first = session_entry_key(&a, 1);
        let second = session_entry_key(&a, 256);
        assert!(first < second && first.starts_with(&a));
    }

    #[test]
    fn the_memory_store_is_always_durable_and_empty() {
        let store = MemoryStore;
        let ticket = store.submit(vec![Op::Delete {
            table: Table::Retained,
            key: b"t".to_vec(),
        }]);
        assert!(store.durable() >= ticket);
        assert!(store.load(Table::Retained).expect("load").is_empty());
    }
}
