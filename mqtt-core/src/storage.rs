//! What the broker keeps across restarts, and the contract of the stores that keep it.
//!
//! A store is a durable map of bytes in a few tables. What the bytes mean (a session, a
//! queued message, a retained one) is decided here, by the broker's records, so every
//! store keeps exactly the same thing and a store never needs to know MQTT. Changes reach
//! a store as batches of operations; each batch gets a ticket, and a store says which
//! tickets are durable, so a connection can hold its acknowledgements until the message
//! they acknowledge would survive a crash.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::{encode, Decoder, Packet, ProtocolVersion, Publish, QoS, SubscriptionOptions};
use crate::message::{Delivery, Message};
use crate::session::{OutgoingState, Subscription, Wakeup, Will};

/// The tables of a store. Keys are ordered bytewise within a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Session key → the session: subscriptions, expiry, will.
    Sessions,
    /// Session key + sequence number → a queued or in-flight outgoing message. A key is
    /// put only while absent (numbers are not reused while their entry exists), so a store
    /// may leave out a put and a delete of the same key that meet in one commit.
    Queues,
    /// Session key + sequence number → the packet id and state of a queued message that
    /// was sent, so it is resent as it was (same packet id, or PUBREL) after a restart.
    /// Exists only while the `Queues` entry of the same key does, and is deleted with it.
    Inflight,
    /// Session key + packet id → an incoming QoS 2 message awaiting PUBREL.
    AwaitingRel,
    /// Topic → its retained message.
    Retained,
    /// Session key → what a device adapter keeps with the session.
    Adapter,
    /// Session key + filter (mounted, `$share/` included) → its options and identifier:
    /// one entry each, so a subscription costs one write however many the session has.
    Subscriptions,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Sessions,
        Table::Queues,
        Table::Inflight,
        Table::AwaitingRel,
        Table::Retained,
        Table::Adapter,
        Table::Subscriptions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Queues => "queues",
            Table::Inflight => "inflight",
            Table::AwaitingRel => "awaiting_rel",
            Table::Retained => "retained",
            Table::Adapter => "adapter",
            Table::Subscriptions => "subscriptions",
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

    /// True while the store is at its configured size: new QoS 1/2 messages are then
    /// refused rather than stored. A store may leave out the puts that would make it grow
    /// from batches submitted while it says so (deletes always apply); such a change is
    /// missing after a restart, and its ticket becomes durable all the same.
    fn is_full(&self) -> bool;

    /// How long its commits took, each from the start of its transaction to its data
    /// being as durable as configured (its sync included); `None` for a store that does
    /// not commit.
    fn commit_latency(&self) -> Option<crate::sys::HistogramSnapshot> {
        None
    }

    /// False for a store that keeps nothing, so the broker does not even build its changes.
    fn persistent(&self) -> bool {
        true
    }
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

    fn persistent(&self) -> bool {
        false
    }
}

/// Replies a connection owes its client that confirm something stored (PUBACK, a
/// RECEIPT): each waits until its ticket is durable, and none overtakes an earlier one, so a
/// client never learns its message is safe before a crash could no longer lose it, and
/// acknowledgements keep their order.
#[derive(Debug)]
pub struct HeldReplies<T> {
    /// Allocated while something waits: most connections never wait, and every connection
    /// has one.
    #[expect(
        clippy::box_collection,
        reason = "one pointer inline instead of a whole collection"
    )]
    held: Option<Box<std::collections::VecDeque<(Ticket, T)>>>,
}

impl<T> Default for HeldReplies<T> {
    fn default() -> Self {
        HeldReplies { held: None }
    }
}

impl<T> HeldReplies<T> {
    /// Gives `reply` back to be sent now when it need not wait; otherwise keeps it, and has
    /// the store call `wakeup` once `ticket` is durable.
    pub fn hold(
        &mut self,
        reply: T,
        ticket: Option<Ticket>,
        store: &dyn Store,
        wakeup: impl FnOnce() -> Arc<dyn Wakeup>,
    ) -> Option<T> {
        let ticket = ticket.filter(|ticket| store.durable() < *ticket);
        if ticket.is_none() && self.is_empty() {
            return Some(reply);
        }
        if let Some(ticket) = ticket {
            store.wake_when_durable(ticket, wakeup());
        }
        self.held
            .get_or_insert_default()
            .push_back((ticket.unwrap_or(0), reply));
        None
    }

    /// The oldest held reply, once it may go.
    pub fn pop_due(&mut self, store: &dyn Store) -> Option<T> {
        let held = self.held.as_mut()?;
        let (ticket, _) = held.front()?;
        if *ticket > store.durable() {
            return None;
        }
        let reply = held.pop_front().map(|(_, reply)| reply);
        if held.is_empty() {
            self.held = None;
        }
        reply
    }

    pub fn is_empty(&self) -> bool {
        self.held.as_ref().is_none_or(|held| held.is_empty())
    }

    pub fn clear(&mut self) {
        self.held = None;
    }
}

/// Keeps the tables in a map in memory: a store that outlives a broker but not the
/// process, so a restart is a new `Broker` on the same `MapStore` and a crash is the old one
/// dropped unheard. Its tickets are durable at once, or, after `hold_back`, only up to what
/// `make_durable` says, so whatever waits for durability can be driven step by step.
#[derive(Default)]
pub struct MapStore {
    tables: parking_lot::Mutex<std::collections::BTreeMap<(Table, Vec<u8>), Bytes>>,
    submitted: AtomicU64,
    written_bytes: AtomicU64,
    durable: AtomicU64,
    held_back: AtomicBool,
    full: AtomicBool,
    waiters: parking_lot::Mutex<Vec<(Ticket, Arc<dyn Wakeup>)>>,
}

impl MapStore {
    /// Tickets from now on become durable only through `make_durable` or `release`.
    pub fn hold_back(&self) {
        self.held_back.store(true, Ordering::SeqCst);
    }

    /// Every ticket up to `ticket` is durable; whoever waits for one is woken.
    pub fn make_durable(&self, ticket: Ticket) {
        self.durable.fetch_max(ticket, Ordering::SeqCst);
        let durable = self.durable.load(Ordering::SeqCst);
        let due: Vec<Arc<dyn Wakeup>> = {
            let mut waiters = self.waiters.lock();
            let (due, waiting) = std::mem::take(&mut *waiters)
                .into_iter()
                .partition(|(wanted, _)| *wanted <= durable);
            *waiters = waiting;
            due.into_iter().map(|(_, wakeup)| wakeup).collect()
        };
        for wakeup in due {
            wakeup.wake();
        }
    }

    /// Everything submitted is durable, and so is everything submitted from now on.
    pub fn release(&self) {
        self.held_back.store(false, Ordering::SeqCst);
        self.make_durable(self.submitted());
    }

    /// The last ticket handed out.
    pub fn submitted(&self) -> Ticket {
        self.submitted.load(Ordering::SeqCst)
    }

    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    /// Keys and values put so far, in bytes: what a change costs the store.
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::SeqCst)
    }

    /// How many entries `table` holds.
    pub fn count(&self, table: Table) -> usize {
        self.tables
            .lock()
            .keys()
            .filter(|(t, _)| *t == table)
            .count()
    }
}

impl Store for MapStore {
    fn submit(&self, ops: Vec<Op>) -> Ticket {
        let ticket = {
            let mut tables = self.tables.lock();
            for op in ops {
                match op {
                    Op::Put { table, key, value } => {
                        self.written_bytes
                            .fetch_add((key.len() + value.len()) as u64, Ordering::SeqCst);
                        tables.insert((table, key), value);
                    }
                    Op::Delete { table, key } => {
                        tables.remove(&(table, key));
                    }
                    Op::DeletePrefix { table, prefix } => {
                        tables.retain(|(t, key), _| !(*t == table && key.starts_with(&prefix)));
                    }
                }
            }
            self.submitted.fetch_add(1, Ordering::SeqCst) + 1
        };
        if !self.held_back.load(Ordering::SeqCst) {
            self.make_durable(ticket);
        }
        ticket
    }

    fn durable(&self) -> Ticket {
        self.durable.load(Ordering::SeqCst)
    }

    fn wake_when_durable(&self, ticket: Ticket, wakeup: Arc<dyn Wakeup>) {
        {
            let mut waiters = self.waiters.lock();
            if self.durable.load(Ordering::SeqCst) < ticket {
                waiters.push((ticket, wakeup));
                return;
            }
        }
        wakeup.wake();
    }

    fn load(&self, table: Table) -> Result<Vec<(Vec<u8>, Bytes)>, StoreError> {
        Ok(self
            .tables
            .lock()
            .iter()
            .filter(|((t, _), _)| *t == table)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }
}

/// The first byte of every stored message record; a store written by a later format is
/// refused rather than misread.
const MESSAGE_FORMAT: u8 = 1;
const NO_EXPIRY: u64 = u64::MAX;

/// A message as stored: when it expires on the wall clock (milliseconds since the Unix
/// epoch), then the message as an MQTT 5 PUBLISH, which carries every property exactly.
pub fn encode_message(message: &Message, expires_unix_ms: Option<u64>) -> Bytes {
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        packet_id: u16::from(message.qos != QoS::AtMostOnce),
        payload: message.payload.clone(),
        properties: message.properties.clone(),
    };
    let mut out = BytesMut::with_capacity(16 + message.topic.len() + message.payload.len());
    out.put_u8(MESSAGE_FORMAT);
    out.put_u64(expires_unix_ms.unwrap_or(NO_EXPIRY));
    // Only a message over the protocol's maximum size fails to encode, and no such message
    // was ever accepted; storing nothing then is the same as losing it at a crash.
    if encode(&Packet::Publish(publish), ProtocolVersion::V5, &mut out).is_err() {
        tracing::error!(topic = %message.topic, "message too large to store");
    }
    out.freeze()
}

/// Reads a record written by `encode_message`: the message (without its `expires_at`,
/// which only the caller's clock can give) and its wall-clock expiry.
pub fn decode_message(record: &[u8]) -> Option<(Message, Option<u64>)> {
    let (&format, rest) = record.split_first()?;
    if format != MESSAGE_FORMAT {
        return None;
    }
    let expiry = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let mut packet = BytesMut::from(rest.get(8..)?);
    let Ok(Some(Packet::Publish(publish))) =
        Decoder::with_version(ProtocolVersion::V5, u32::MAX).decode(&mut packet)
    else {
        return None;
    };
    let message = Message {
        topic: publish.topic,
        payload: publish.payload,
        qos: publish.qos,
        retain: publish.retain,
        properties: publish.properties,
        publisher: None,
        publisher_client_id: None,
        expires_at: None,
        arrival: 0,
    };
    Some((message, (expiry != NO_EXPIRY).then_some(expiry)))
}

/// Maps the monotonic clock the broker runs on to the wall clock that stored times use, so
/// an expiry means the same moment after a restart.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl WallClock {
    pub fn new(instant: Instant, wall: SystemTime) -> WallClock {
        WallClock { instant, wall }
    }

    /// Milliseconds since the Unix epoch at `at`.
    pub fn unix_ms(&self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.instant) {
            Some(after) => self.wall + after,
            None => self.wall - self.instant.duration_since(at),
        };
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    }

    /// The instant of a stored wall-clock time, no earlier than `now` minus nothing: a time
    /// already past comes back as `now`, which is what every caller needs (it is due).
    pub fn instant_at(&self, unix_ms: u64, now: Instant) -> Instant {
        let now_ms = self.unix_ms(now);
        now + Duration::from_millis(unix_ms.saturating_sub(now_ms))
    }
}

const DELIVERY_FORMAT: u8 = 1;

/// A queued delivery as stored: its QoS, retain flag and subscription identifiers, then
/// the message record.
pub fn encode_delivery(delivery: &Delivery, clock: &WallClock) -> Bytes {
    let expires = delivery.message.expires_at.map(|at| clock.unix_ms(at));
    let message = encode_message(&delivery.message, expires);
    let ids = &delivery.subscription_ids;
    let mut out = BytesMut::with_capacity(4 + ids.len() * 4 + message.len());
    out.put_u8(DELIVERY_FORMAT);
    out.put_u8(delivery.qos.as_u8());
    out.put_u8(u8::from(delivery.retain));
    let count = ids.len().min(usize::from(u8::MAX));
    out.put_u8(count as u8);
    for id in ids.iter().take(count) {
        out.put_u32(*id);
    }
    out.put_slice(&message);
    out.freeze()
}

/// Reads a record written by `encode_delivery`, numbered `seq`.
pub fn decode_delivery(
    record: &[u8],
    seq: u64,
    clock: &WallClock,
    now: Instant,
) -> Option<Delivery> {
    let mut buf = record;
    if buf.remaining() < 4 || buf.get_u8() != DELIVERY_FORMAT {
        return None;
    }
    let qos = QoS::from_u8(buf.get_u8())?;
    let retain = buf.get_u8() != 0;
    let count = usize::from(buf.get_u8());
    if buf.remaining() < count * 4 {
        return None;
    }
    let subscription_ids = (0..count).map(|_| buf.get_u32()).collect();
    let (mut message, expires) = decode_message(buf)?;
    message.expires_at = expires.map(|ms| clock.instant_at(ms, now));
    Some(Delivery {
        message: Arc::new(message),
        qos,
        retain,
        subscription_ids,
        store_seq: Some(seq),
    })
}

pub fn encode_in_flight(state: OutgoingState, packet_id: u16) -> Bytes {
    let mut out = BytesMut::with_capacity(3);
    out.put_u8(match state {
        OutgoingState::AwaitPubAck => 1,
        OutgoingState::AwaitPubRec => 2,
        OutgoingState::AwaitPubComp => 3,
    });
    out.put_u16(packet_id);
    out.freeze()
}

pub fn decode_in_flight(record: &[u8]) -> Option<(OutgoingState, u16)> {
    let [state, high, low] = *record else {
        return None;
    };
    let state = match state {
        1 => OutgoingState::AwaitPubAck,
        2 => OutgoingState::AwaitPubRec,
        3 => OutgoingState::AwaitPubComp,
        _ => return None,
    };
    Some((state, u16::from_be_bytes([high, low])))
}

/// A session as stored, apart from its messages.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Seconds; `u32::MAX` = never expires.
    pub expiry_interval: u32,
    /// When its last connection closed, or None if it was connected when written (a
    /// session connected at a crash counts as closed when the broker restarts).
    pub disconnected_unix_ms: Option<u64>,
    pub will: Option<Box<Will>>,
    /// The user name that made the session, so that after a restart too only it resumes it.
    pub owner: Option<Arc<str>>,
    /// Filters as the session holds them (mounted, `$share/` included). Written in the
    /// `subscriptions` table, not in the record; a format 1 record still carries them.
    pub subscriptions: Vec<(String, Subscription)>,
}

/// Format 2 adds the owner after the subscriptions; format 1 records (no owner) are still
/// read, as sessions of anonymous clients.
const SESSION_FORMAT: u8 = 2;
const SESSION_FORMAT_WITHOUT_OWNER: u8 = 1;

fn options_byte(options: &SubscriptionOptions) -> u8 {
    options.qos.as_u8()
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling & 3) << 4
}

fn options_from_byte(byte: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(byte & 3)?,
        no_local: byte & 4 != 0,
        retain_as_published: byte & 8 != 0,
        retain_handling: (byte >> 4) & 3,
    })
}

/// A subscription's entry in `Table::Subscriptions`: options byte, then identifier (0: none).
pub fn encode_subscription(subscription: &Subscription) -> Bytes {
    let mut out = BytesMut::with_capacity(5);
    out.put_u8(options_byte(&subscription.options));
    out.put_u32(subscription.identifier.unwrap_or(0));
    out.freeze()
}

pub fn decode_subscription(mut record: &[u8]) -> Option<Subscription> {
    let options = options_from_byte(record.try_get_u8().ok()?)?;
    let identifier = Some(record.try_get_u32().ok()?).filter(|id| *id != 0);
    (!record.has_remaining()).then_some(Subscription {
        options,
        identifier,
    })
}

/// The key of one subscription of the session whose key is `session`.
pub fn subscription_key(session: &[u8], filter: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(session.len() + filter.len());
    key.extend_from_slice(session);
    key.extend_from_slice(filter.as_bytes());
    key
}

/// The session record; its subscriptions are written apart (`encode_subscription`).
pub fn encode_session(record: &SessionRecord) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(SESSION_FORMAT);
    out.put_u32(record.expiry_interval);
    out.put_u64(record.disconnected_unix_ms.unwrap_or(NO_EXPIRY));
    match &record.will {
        Some(will) => {
            let mut message = Message {
                topic: will.topic.clone(),
                payload: will.payload.clone(),
                qos: will.qos,
                retain: will.retain,
                properties: will.properties.clone().into(),
                publisher: None,
                publisher_client_id: None,
                expires_at: None,
                arrival: 0,
            };
            message.properties.message_expiry_interval = will.properties.message_expiry_interval;
            let encoded = encode_message(&message, None);
            out.put_u8(1);
            out.put_u32(will.delay_interval);
            out.put_u32(encoded.len() as u32);
            out.put_slice(&encoded);
        }
        None => out.put_u8(0),
    }
    // Format 1 listed the subscriptions here; they now have a table of their own.
    out.put_u32(0);
    match &record.owner {
        Some(owner) => {
            let owner = owner.as_bytes();
            let len = owner.len().min(usize::from(u16::MAX));
            out.put_u8(1);
            out.put_u16(len as u16);
            out.put_slice(owner.get(..len).unwrap_or_default());
        }
        None => out.put_u8(0),
    }
    out.freeze()
}

pub fn decode_session(record: &[u8]) -> Option<SessionRecord> {
    let mut buf = record;
    if buf.remaining() < 14 {
        return None;
    }
    let format = buf.get_u8();
    if format != SESSION_FORMAT && format != SESSION_FORMAT_WITHOUT_OWNER {
        return None;
    }
    let expiry_interval = buf.get_u32();
    let disconnected = buf.get_u64();
    let will = match buf.get_u8() {
        0 => None,
        1 => {
            if buf.remaining() < 8 {
                return None;
            }
            let delay_interval = buf.get_u32();
            let len = buf.get_u32() as usize;
            let (message, _) = decode_message(buf.get(..len)?)?;
            buf.advance(len);
            Some(Box::new(Will {
                topic: message.topic,
                payload: message.payload,
                qos: message.qos,
                retain: message.retain,
                properties: message.properties.into_inner(),
                delay_interval,
            }))
        }
        _ => return None,
    };
    if buf.remaining() < 4 {
        return None;
    }
    let count = buf.get_u32() as usize;
    let mut subscriptions = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        if buf.remaining() < 2 {
            return None;
        }
        let len = usize::from(buf.get_u16());
        let filter = std::str::from_utf8(buf.get(..len)?).ok()?.to_owned();
        buf.advance(len);
        subscriptions.push((filter, decode_subscription(buf.get(..5)?)?));
        buf.advance(5);
    }
    let owner = if format == SESSION_FORMAT_WITHOUT_OWNER {
        None
    } else {
        match buf.try_get_u8().ok()? {
            0 => None,
            1 => {
                let len = usize::from(buf.try_get_u16().ok()?);
                let owner = std::str::from_utf8(buf.get(..len)?).ok()?;
                buf.advance(len);
                Some(Arc::from(owner))
            }
            _ => return None,
        }
    };
    if buf.has_remaining() {
        return None;
    }
    Some(SessionRecord {
        expiry_interval,
        disconnected_unix_ms: (disconnected != NO_EXPIRY).then_some(disconnected),
        will,
        owner,
        subscriptions,
    })
}

/// Splits a key made by `session_key` (possibly followed by more) into its namespace,
/// client id and the rest.
pub fn split_session_key(key: &[u8]) -> Option<(&str, &str, &[u8])> {
    let mut rest = key;
    let mut parts = [""; 2];
    for part in &mut parts {
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        *part = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        rest = rest.get(2 + len..)?;
    }
    let [namespace, client_id] = parts;
    Some((namespace, client_id, rest))
}

/// Deletes everything stored under a session's key.
pub fn forget_session(key: &[u8]) -> Vec<Op> {
    let mut ops: Vec<Op> = [
        Table::Queues,
        Table::Inflight,
        Table::AwaitingRel,
        Table::Subscriptions,
    ]
    .into_iter()
    .map(|table| Op::DeletePrefix {
        table,
        prefix: key.to_vec(),
    })
    .collect();
    for table in [Table::Sessions, Table::Adapter] {
        ops.push(Op::Delete {
            table,
            key: key.to_vec(),
        });
    }
    ops
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
    fn a_message_record_keeps_every_field_and_its_expiry() {
        let mut message = Message::new(
            bytestring::ByteString::from_static("a/b"),
            Bytes::from_static(b"payload"),
            QoS::ExactlyOnce,
            true,
            std::time::Instant::now(),
        );
        message.properties.content_type = Some("text/plain".into());
        message.properties.user_properties = vec![("k".into(), "v".into())];
        message.properties.message_expiry_interval = Some(60);
        let record = encode_message(&message, Some(1_700_000_000_000));
        let (back, expiry) = decode_message(&record).expect("decodes");
        assert_eq!(expiry, Some(1_700_000_000_000));
        assert_eq!(back.topic, message.topic);
        assert_eq!(back.payload, message.payload);
        assert_eq!((back.qos, back.retain), (QoS::ExactlyOnce, true));
        assert_eq!(back.properties, message.properties);
        let plain = Message::new(
            bytestring::ByteString::from_static("t"),
            Bytes::new(),
            QoS::AtMostOnce,
            false,
            std::time::Instant::now(),
        );
        let (_, expiry) = decode_message(&encode_message(&plain, None)).expect("decodes");
        assert_eq!(expiry, None);
        assert!(decode_message(b"").is_none());
        assert!(decode_message(&[2, 0, 0]).is_none());
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
