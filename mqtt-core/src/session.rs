//! The unified session model: what a client's session holds between and across its
//! connections, whatever protocol the client speaks.
//!
//! Everything here is plain data behind one per-session mutex (`SessionCell`), so the router
//! can push into many sessions without any global write lock, and a connection drains its
//! own session at its own pace.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use parking_lot::Mutex;

use crate::codec::{PublishProperties, QoS, ReasonCode, SubscriptionOptions};
use crate::message::{Delivery, SessionId};
use crate::storage::{self, Op, Store, Table, Ticket, WallClock};

/// Wakes the connection task that drains a session; implemented by the runtime.
pub trait Wakeup: Send + Sync {
    fn wake(&self);
}

/// The broker's handle on one live connection: how it is woken and how it is told to go.
pub struct ConnControl {
    pub conn_id: u64,
    closing: AtomicU8,
    /// Whether a session opened through this connection was counted by flapping detection:
    /// only the first is, since a device adapter may open several for one device (MQTT-SN's
    /// QoS -1 publishes each open one).
    counted_as_connect: AtomicBool,
    /// How many receivers that are behind hold this connection back as their publisher:
    /// while any does, its input is not read (see `SessionState::hold`).
    held_by: AtomicU32,
    wakeup: Arc<dyn Wakeup>,
}

impl ConnControl {
    pub fn new(conn_id: u64, wakeup: Arc<dyn Wakeup>) -> Arc<ConnControl> {
        Arc::new(ConnControl {
            conn_id,
            closing: AtomicU8::new(0),
            counted_as_connect: AtomicBool::new(false),
            held_by: AtomicU32::new(0),
            wakeup,
        })
    }

    /// Whether a receiver this connection publishes to is behind: its next message waits
    /// until every such receiver has caught up (or gone), which wakes it.
    pub fn is_held_back(&self) -> bool {
        self.held_by.load(Ordering::Acquire) > 0
    }

    fn hold_back(&self) {
        self.held_by.fetch_add(1, Ordering::AcqRel);
    }

    fn let_go(&self) {
        if self.held_by.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wakeup.wake();
        }
    }

    pub fn wake(&self) {
        self.wakeup.wake();
    }

    /// True the first time only: whether this is the connection's first session.
    pub(crate) fn first_session(&self) -> bool {
        !self.counted_as_connect.swap(true, Ordering::Relaxed)
    }

    /// The connection's wake-up, for whoever else must wake it (the store, when what the
    /// connection waits to acknowledge is durable).
    pub fn wakeup(&self) -> Arc<dyn Wakeup> {
        self.wakeup.clone()
    }

    /// Asks the connection to close with `reason` (e.g. 0x8E when taken over).
    pub fn close(&self, reason: ReasonCode) {
        // 0 means "not asked"; a success code is never a reason to be closed by the broker.
        let code = if reason.0 == 0 {
            ReasonCode::UNSPECIFIED_ERROR.0
        } else {
            reason.0
        };
        self.closing.store(code, Ordering::Release);
        self.wakeup.wake();
    }

    pub fn close_requested(&self) -> Option<ReasonCode> {
        match self.closing.load(Ordering::Acquire) {
            0 => None,
            code => Some(ReasonCode(code)),
        }
    }
}

impl std::fmt::Debug for ConnControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnControl")
            .field("conn_id", &self.conn_id)
            .finish()
    }
}

/// The `&'static` name of a namespace read back from the store. Adapters name their
/// namespaces with constants; one read from a file is kept for the life of the process,
/// once per distinct name.
pub fn intern_namespace(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock();
    if let Some(known) = names.iter().find(|known| **known == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    leaked
}

/// Sessions are named per protocol namespace, so an MQTT-SN "dev1" and an MQTT "dev1" are
/// different sessions unless a listener chooses to share the MQTT namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub namespace: &'static str,
    pub client_id: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// A will message as given at connect time; turned into a `Message` when it is published,
/// so its expiry counts from then.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
    pub delay_interval: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutgoingState {
    AwaitPubAck,
    AwaitPubRec,
    AwaitPubComp,
}

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub state: OutgoingState,
}

/// Limits applied to one session's queue and windows.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// 0 = unlimited.
    pub max_queued_messages: usize,
    /// 0 = unlimited.
    pub max_queued_bytes: usize,
    pub queue_qos0_offline: bool,
    pub max_awaiting_rel: usize,
    /// 0 = unlimited.
    pub max_subscriptions: usize,
    pub flow: FlowLimits,
}

/// Flow control from a connected receiver back to its publishers: when it falls behind it
/// holds back the connections that feed it, and lets them go once it has caught up.
#[derive(Debug, Clone, Copy)]
pub struct FlowLimits {
    /// Queued messages at which a connected receiver is behind; 0 = no flow control.
    pub high_water: usize,
    /// Queued messages at or below which it has caught up again.
    pub low_water: usize,
    /// Queued bytes at which it is behind (half the byte limit), and has caught up (an
    /// eighth), so large messages hold publishers back before the byte limit is reached.
    pub high_water_bytes: usize,
    pub low_water_bytes: usize,
    /// How long a receiver that holds publishers back may take nothing from its queue
    /// before the broker disconnects it.
    pub stuck_timeout: std::time::Duration,
}

impl FlowLimits {
    pub const OFF: FlowLimits = FlowLimits {
        high_water: 0,
        low_water: 0,
        high_water_bytes: 0,
        low_water_bytes: 0,
        stuck_timeout: std::time::Duration::MAX,
    };

    /// The water marks for queue limits of `max_queued_bytes` (0 = unlimited).
    pub fn new(
        high_water: usize,
        low_water: usize,
        max_queued_bytes: usize,
        stuck_timeout: std::time::Duration,
    ) -> FlowLimits {
        FlowLimits {
            high_water,
            low_water,
            high_water_bytes: if max_queued_bytes == 0 {
                usize::MAX
            } else {
                max_queued_bytes / 2
            },
            low_water_bytes: if max_queued_bytes == 0 {
                usize::MAX
            } else {
                max_queued_bytes / 8
            },
            stuck_timeout,
        }
    }

    fn enabled(&self) -> bool {
        self.high_water > 0
    }
}

/// The publishers a receiver that fell behind holds back, and how it is doing since.
#[derive(Debug)]
struct Holding {
    publishers: Vec<Arc<ConnControl>>,
    low_water: usize,
    low_water_bytes: usize,
    /// When the broker first saw the receiver holding publishers back.
    seen_at: Option<Instant>,
    /// When the receiver last took a message from its queue while holding them.
    last_taken: Option<Instant>,
    /// `last_taken` before the latest pop: a message put back (`unpop_queued`, a window
    /// that was full) was not taken, so a receiver that never acknowledges cannot pass
    /// for one that reads by being drained and refilled.
    taken_before_last_pop: Option<Instant>,
}

/// What offering a delivery to a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    pub enqueued: Enqueued,
    /// The offer dropped a message and the session had no drop awaiting a report: the
    /// broker lists it for the next summary.
    pub first_unreported_drop: bool,
    /// The receiver fell behind with this offer and began holding publishers back: the
    /// broker watches it from now on, in case it never catches up.
    pub began_holding: bool,
    /// The store batch that keeps the delivery, for a persistent session.
    pub ticket: Option<Ticket>,
}

/// What happened to a delivery offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued after evicting an older QoS 0 message to make room.
    QueuedEvictingQos0,
    /// Dropped by policy (QoS 0 over the limit, or QoS 0 for an offline session).
    DroppedQos0,
    /// Dropped because the queue is full of QoS 1/2 messages; counted, and summed up in
    /// the log once per report interval.
    DroppedQueueFull,
}

impl Enqueued {
    /// Whether a message was lost: this one, or an older one evicted for it.
    pub fn dropped_one(self) -> bool {
        !matches!(self, Enqueued::Queued)
    }
}

#[derive(Debug)]
pub struct SessionState {
    pub subscriptions: HashMap<String, Subscription>,
    queue: VecDeque<Delivery>,
    queued_bytes: usize,
    /// In the order the messages were first sent, which is the order they are resent in.
    outgoing: VecDeque<Outgoing>,
    next_packet_id: u16,
    /// Inbound QoS 2 packet ids received but not yet released, with when they arrived.
    /// Allocated while a QoS 2 exchange is open: most sessions never have one.
    #[expect(
        clippy::box_collection,
        reason = "one pointer inline instead of a whole collection"
    )]
    awaiting_rel: Option<Box<HashMap<u16, Instant>>>,
    pub connection: Option<Arc<ConnControl>>,
    /// Seconds the session lives after its connection closes; `u32::MAX` = forever.
    pub expiry_interval: u32,
    pub will: Option<Box<Will>>,
    /// The user name of the identity that made the session (None: anonymous).
    pub owner: Option<Arc<str>>,
    /// When a disconnected session ends, if it does.
    pub expires_at: Option<Instant>,
    /// When its last connection closed, while it has none.
    pub disconnected_at: Option<Instant>,
    /// When a delayed will is due.
    pub will_at: Option<Instant>,
    /// Allocated at the first drop: a session that keeps up never pays for the counters.
    drops: Option<Box<DropCounts>>,
    /// The broker lists the session for its next drop report.
    awaiting_drop_report: bool,
    /// Set once the session has ended, so late pushes from the router are refused.
    pub ended: bool,
    /// What a device adapter keeps with the session so it survives reconnects, such as an
    /// MQTT-SN client's topic ids.
    pub extension: Extension,
    /// The adapter's state as it last stored it, or as it came back from the store after a
    /// restart, for the adapter to read when the client resumes.
    adapter_record: Option<Bytes>,
    /// Set while the session outlives its connection and the broker has a store: every
    /// change to what must survive a restart is then written there.
    persistence: Option<Box<Persistence>>,
    /// Set while the connected receiver is behind and holds its publishers back.
    holding: Option<Box<Holding>>,
    /// The counters of the listener its last connection came through.
    pub listener: Option<Arc<crate::broker::ListenerStats>>,
    /// Who holds the session, or last held it, and how: what the operator's list of
    /// clients shows. `None` for a session restored from the store and not resumed since.
    pub(crate) attachment: Option<Box<crate::clients::Attachment>>,
}

/// A session's drops, and how many of them the log has been told of.
#[derive(Debug, Default)]
struct DropCounts {
    qos0: u64,
    full: u64,
    reported_qos0: u64,
    reported_full: u64,
}

/// What came back from the store for one session, in the order it was stored.
pub struct RestoredSession {
    pub key: Vec<u8>,
    pub store: Arc<dyn Store>,
    pub clock: WallClock,
    /// Each delivery numbered as stored, with its packet id and state if it had been sent.
    pub deliveries: Vec<(Delivery, Option<(OutgoingState, u16)>)>,
    pub awaiting_release: Vec<u16>,
    pub adapter_state: Option<Bytes>,
}

/// Where a persistent session keeps itself.
struct Persistence {
    key: Vec<u8>,
    store: Arc<dyn Store>,
    clock: WallClock,
    /// The number of the next stored QoS 1/2 delivery; numbers order the session's queue.
    next_seq: u64,
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persistence")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Persistence {
    fn forget(&self, seq: u64) -> Vec<Op> {
        [Table::Queues, Table::Inflight]
            .into_iter()
            .map(|table| Op::Delete {
                table,
                key: storage::session_entry_key(&self.key, seq),
            })
            .collect()
    }

    fn in_flight(&self, seq: u64, state: OutgoingState, packet_id: u16) -> Op {
        Op::Put {
            table: Table::Inflight,
            key: storage::session_entry_key(&self.key, seq),
            value: storage::encode_in_flight(state, packet_id),
        }
    }

    /// Numbers `delivery` as the newest of the session's stored queue and stores it.
    fn queued(&mut self, delivery: &mut Delivery) -> Op {
        let seq = self.next_seq;
        self.next_seq += 1;
        delivery.store_seq = Some(seq);
        Op::Put {
            table: Table::Queues,
            key: storage::session_entry_key(&self.key, seq),
            value: storage::encode_delivery(delivery, &self.clock),
        }
    }

    fn awaiting_release(&self, packet_id: u16) -> Op {
        Op::Put {
            table: Table::AwaitingRel,
            key: storage::session_entry_key(&self.key, u64::from(packet_id)),
            value: Bytes::new(),
        }
    }

    fn subscription(&self, filter: &str, subscription: Option<&Subscription>) -> Op {
        let key = storage::subscription_key(&self.key, filter);
        match subscription {
            Some(subscription) => Op::Put {
                table: Table::Subscriptions,
                key,
                value: storage::encode_subscription(subscription),
            },
            None => Op::Delete {
                table: Table::Subscriptions,
                key,
            },
        }
    }

    fn adapter_state(&self, record: Bytes) -> Op {
        Op::Put {
            table: Table::Adapter,
            key: self.key.clone(),
            value: record,
        }
    }
}

/// One value of an adapter's own type, stored in a session the core knows nothing about.
#[derive(Default)]
pub struct Extension(Option<Box<dyn std::any::Any + Send>>);

impl Extension {
    pub fn get_mut<T: Send + 'static>(&mut self) -> Option<&mut T> {
        self.0.as_mut().and_then(|value| value.downcast_mut::<T>())
    }

    pub fn set<T: Send + 'static>(&mut self, value: T) {
        self.0 = Some(Box::new(value));
    }
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Extension(..)"
        } else {
            "Extension(None)"
        })
    }
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            outgoing: VecDeque::new(),
            next_packet_id: 1,
            awaiting_rel: None,
            connection: None,
            expiry_interval: 0,
            will: None,
            owner: None,
            expires_at: None,
            disconnected_at: None,
            will_at: None,
            drops: None,
            awaiting_drop_report: false,
            ended: false,
            extension: Extension::default(),
            adapter_record: None,
            persistence: None,
            holding: None,
            listener: None,
            attachment: None,
        }
    }
}

impl SessionState {
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// The drops since the last report, QoS 0 and QoS 1/2, marked reported.
    pub(crate) fn take_unreported_drops(&mut self) -> (u64, u64) {
        self.awaiting_drop_report = false;
        let Some(drops) = self.drops.as_mut() else {
            return (0, 0);
        };
        let unreported = (
            drops.qos0 - drops.reported_qos0,
            drops.full - drops.reported_full,
        );
        drops.reported_qos0 = drops.qos0;
        drops.reported_full = drops.full;
        unreported
    }

    /// Messages of QoS 0 and of QoS 1/2 this session dropped, ever.
    pub fn dropped(&self) -> (u64, u64) {
        self.drops
            .as_ref()
            .map_or((0, 0), |drops| (drops.qos0, drops.full))
    }

    fn count_dropped_qos0(&mut self) {
        self.drops.get_or_insert_default().qos0 += 1;
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Incoming QoS 2 packet ids received and not yet released.
    pub fn awaiting_release_len(&self) -> usize {
        self.awaiting_rel.as_ref().map_or(0, |ids| ids.len())
    }

    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// Queues a delivery under the session's limits. QoS 0 is the first to go when full;
    /// a QoS 1/2 message is only refused when nothing of QoS 0 is left to make room.
    pub fn enqueue(&mut self, delivery: Delivery, limits: &SessionLimits) -> Enqueued {
        if delivery.qos == QoS::AtMostOnce
            && self.connection.is_none()
            && !limits.queue_qos0_offline
        {
            self.count_dropped_qos0();
            return Enqueued::DroppedQos0;
        }
        let weight = delivery.message.weight();
        let mut evicted = false;
        while self.is_full(weight, limits) {
            if delivery.qos == QoS::AtMostOnce {
                self.count_dropped_qos0();
                return Enqueued::DroppedQos0;
            }
            match self
                .queue
                .iter()
                .position(|queued| queued.qos == QoS::AtMostOnce)
            {
                Some(index) => {
                    if let Some(evicted) = self.queue.remove(index) {
                        self.queued_bytes -= evicted.message.weight();
                        self.count_dropped_qos0();
                    }
                    evicted = true;
                }
                None => {
                    self.drops.get_or_insert_default().full += 1;
                    return Enqueued::DroppedQueueFull;
                }
            }
        }
        self.queued_bytes += weight;
        self.queue.push_back(delivery);
        if evicted {
            Enqueued::QueuedEvictingQos0
        } else {
            Enqueued::Queued
        }
    }

    /// Queues a delivery whatever the limits: its publisher is held back instead.
    fn enqueue_unbounded(&mut self, delivery: Delivery) -> Enqueued {
        self.queued_bytes += delivery.message.weight();
        self.queue.push_back(delivery);
        Enqueued::Queued
    }

    fn is_full(&self, weight: usize, limits: &SessionLimits) -> bool {
        (limits.max_queued_messages > 0 && self.queue.len() >= limits.max_queued_messages)
            || (limits.max_queued_bytes > 0
                && !self.queue.is_empty()
                && self.queued_bytes + weight > limits.max_queued_bytes)
    }

    /// The next queued delivery that has not expired.
    pub fn pop_queued(&mut self, now: Instant) -> Option<Delivery> {
        let mut popped = None;
        while let Some(delivery) = self.queue.pop_front() {
            self.queued_bytes -= delivery.message.weight();
            if !delivery.message.is_expired(now) {
                popped = Some(delivery);
                break;
            }
            self.forget_stored(&delivery);
        }
        if let Some(holding) = &mut self.holding {
            if popped.is_some() {
                holding.taken_before_last_pop = holding.last_taken;
                holding.last_taken = Some(now);
            }
            if self.queue.len() <= holding.low_water && self.queued_bytes <= holding.low_water_bytes
            {
                self.let_publishers_go();
            }
        }
        popped
    }

    /// Whether the queue is at a high-water mark of `flow`.
    fn is_behind(&self, flow: &FlowLimits) -> bool {
        self.queue.len() >= flow.high_water || self.queued_bytes >= flow.high_water_bytes
    }

    /// Holds `publisher` back until this receiver catches up, once however often it
    /// publishes meanwhile. Returns whether the receiver began holding with it.
    fn hold(&mut self, publisher: &Arc<ConnControl>, flow: &FlowLimits) -> bool {
        let began = self.holding.is_none();
        let holding = self.holding.get_or_insert_with(|| {
            Box::new(Holding {
                publishers: Vec::new(),
                low_water: flow.low_water,
                low_water_bytes: flow.low_water_bytes,
                seen_at: None,
                last_taken: None,
                taken_before_last_pop: None,
            })
        });
        if !holding
            .publishers
            .iter()
            .any(|held| held.conn_id == publisher.conn_id)
        {
            publisher.hold_back();
            holding.publishers.push(publisher.clone());
        }
        began
    }

    pub(crate) fn let_publishers_go(&mut self) {
        if let Some(holding) = self.holding.take() {
            for publisher in holding.publishers {
                publisher.let_go();
            }
        }
    }

    /// How many publishers the receiver holds back now.
    pub fn publishers_held_back(&self) -> usize {
        self.holding
            .as_ref()
            .map_or(0, |holding| holding.publishers.len())
    }

    /// Whether a receiver holding publishers back has taken nothing from its queue for
    /// `timeout`, counting from `now` the first time the broker asks.
    pub(crate) fn is_stuck(&mut self, now: Instant, timeout: std::time::Duration) -> bool {
        let Some(holding) = &mut self.holding else {
            return false;
        };
        let since = *holding.seen_at.get_or_insert(now);
        let since = holding.last_taken.map_or(since, |taken| taken.max(since));
        now.saturating_duration_since(since) >= timeout
    }

    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Puts back a delivery taken with `pop_queued` that could not be sent yet.
    pub fn unpop_queued(&mut self, delivery: Delivery) {
        self.queued_bytes += delivery.message.weight();
        self.queue.push_front(delivery);
        if let Some(holding) = &mut self.holding {
            holding.last_taken = holding.taken_before_last_pop;
        }
    }

    /// A packet identifier not used by any unacknowledged outgoing message [MQTT-2.2.1-3].
    /// The caller keeps the window below 65535, so one is always free.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.packet_id_in_use(id) {
                return id;
            }
        }
    }

    /// Identifiers are handed out in increasing order (wrapping from 65535 to 1) and the
    /// outgoing window is kept in send order, so every identifier in use lies on the arc
    /// from the oldest to the newest; one outside it is free without a search.
    fn packet_id_in_use(&self, id: u16) -> bool {
        let (Some(oldest), Some(newest)) = (self.outgoing.front(), self.outgoing.back()) else {
            return false;
        };
        let distance = |from: u16, to: u16| (i32::from(to) - i32::from(from)).rem_euclid(65535);
        distance(oldest.packet_id, id) <= distance(oldest.packet_id, newest.packet_id)
            && self.outgoing.iter().any(|out| out.packet_id == id)
    }

    /// `outgoing.packet_id` comes from the latest `allocate_packet_id`, which keeps the
    /// window in identifier order.
    pub fn push_outgoing(&mut self, outgoing: Outgoing) {
        if let (Some(persistence), Some(seq)) = (&self.persistence, outgoing.delivery.store_seq) {
            persistence.store.submit(vec![persistence.in_flight(
                seq,
                outgoing.state,
                outgoing.packet_id,
            )]);
        }
        self.outgoing.push_back(outgoing);
    }

    /// Deletes a delivery that is done with from the store: one taken with `pop_queued`
    /// and handled without the outgoing window (sent where no acknowledgement comes, or
    /// handed to another session).
    pub fn forget_stored(&self, delivery: &Delivery) {
        if let (Some(persistence), Some(seq)) = (&self.persistence, delivery.store_seq) {
            persistence.store.submit(persistence.forget(seq));
        }
    }

    /// Acknowledges an outgoing message in `expected` state; returns whether one was found.
    fn take_outgoing(&mut self, packet_id: u16, expected: OutgoingState) -> Option<Outgoing> {
        let index = self
            .outgoing
            .iter()
            .position(|out| out.packet_id == packet_id && out.state == expected)?;
        let outgoing = self.outgoing.remove(index)?;
        self.forget_stored(&outgoing.delivery);
        Some(outgoing)
    }

    /// Takes back an outgoing message its receiver refused instead of acknowledging (an
    /// MQTT-SN PUBACK with a return code, which answers QoS 1 and QoS 2 alike).
    pub fn withdraw_outgoing(&mut self, packet_id: u16) -> Option<Outgoing> {
        let index = self.outgoing.iter().position(|out| {
            out.packet_id == packet_id && out.state != OutgoingState::AwaitPubComp
        })?;
        let outgoing = self.outgoing.remove(index)?;
        self.forget_stored(&outgoing.delivery);
        Some(outgoing)
    }

    /// Takes an outgoing message back as if it had not been sent: it leaves the window
    /// but stays stored, for the caller to queue again with `unpop_queued` (a STOMP NACK,
    /// or a STOMP client resuming its session, whose message ids do not outlive a
    /// connection).
    pub fn recall_outgoing(&mut self, packet_id: u16) -> Option<Delivery> {
        let index = self
            .outgoing
            .iter()
            .position(|out| out.packet_id == packet_id)?;
        let outgoing = self.outgoing.remove(index)?;
        if let (Some(persistence), Some(seq)) = (&self.persistence, outgoing.delivery.store_seq) {
            persistence.store.submit(vec![Op::Delete {
                table: Table::Inflight,
                key: storage::session_entry_key(&persistence.key, seq),
            }]);
        }
        Some(outgoing.delivery)
    }

    pub fn puback(&mut self, packet_id: u16) -> bool {
        self.take_outgoing(packet_id, OutgoingState::AwaitPubAck)
            .is_some()
    }

    /// PUBREC moves the message to awaiting PUBCOMP; a PUBREC with an error code ends it.
    pub fn pubrec(&mut self, packet_id: u16, reason: ReasonCode) -> bool {
        let Some(out) = self
            .outgoing
            .iter_mut()
            .find(|out| out.packet_id == packet_id && out.state != OutgoingState::AwaitPubAck)
        else {
            return false;
        };
        if reason.is_error() {
            self.take_outgoing(packet_id, OutgoingState::AwaitPubRec);
        } else {
            out.state = OutgoingState::AwaitPubComp;
            if let (Some(persistence), Some(seq)) = (&self.persistence, out.delivery.store_seq) {
                persistence.store.submit(vec![persistence.in_flight(
                    seq,
                    OutgoingState::AwaitPubComp,
                    packet_id,
                )]);
            }
        }
        true
    }

    pub fn pubcomp(&mut self, packet_id: u16) -> bool {
        self.take_outgoing(packet_id, OutgoingState::AwaitPubComp)
            .is_some()
    }

    /// Unacknowledged outgoing messages in first-sent order, for resending on resume.
    pub fn outgoing(&self) -> impl Iterator<Item = &Outgoing> {
        self.outgoing.iter()
    }

    pub fn is_awaiting_release(&self, packet_id: u16) -> bool {
        self.awaiting_rel
            .as_ref()
            .is_some_and(|awaiting| awaiting.contains_key(&packet_id))
    }

    pub fn awaiting_release_count(&self) -> usize {
        self.awaiting_rel
            .as_ref()
            .map_or(0, |awaiting| awaiting.len())
    }

    /// Remembers an inbound QoS 2 packet id until its PUBREL, so a resent PUBLISH is not
    /// routed twice [MQTT-4.3.3-10]; returns the store's ticket when the session keeps it.
    pub fn await_release(&mut self, packet_id: u16, now: Instant) -> Option<Ticket> {
        self.awaiting_rel
            .get_or_insert_default()
            .insert(packet_id, now);
        let persistence = self.persistence.as_ref()?;
        Some(
            persistence
                .store
                .submit(vec![persistence.awaiting_release(packet_id)]),
        )
    }

    /// PUBREL: None if the packet id was not awaiting it; else the store's ticket for
    /// forgetting it, when the session is kept in a store.
    pub fn release(&mut self, packet_id: u16) -> Option<Option<Ticket>> {
        let awaiting = self.awaiting_rel.as_mut()?;
        awaiting.remove(&packet_id)?;
        if awaiting.is_empty() {
            self.awaiting_rel = None;
        }
        Some(self.persistence.as_ref().map(|persistence| {
            persistence.store.submit(vec![Op::Delete {
                table: Table::AwaitingRel,
                key: storage::session_entry_key(&persistence.key, u64::from(packet_id)),
            }])
        }))
    }

    /// Forgets packet ids whose PUBREL has not come within `timeout`.
    pub fn expire_awaiting_release(&mut self, now: Instant, timeout: std::time::Duration) {
        let expired: Vec<u16> = self
            .awaiting_rel
            .iter()
            .flat_map(|awaiting| awaiting.iter())
            .filter(|(_, since)| now.saturating_duration_since(**since) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for packet_id in expired {
            self.release(packet_id);
        }
    }

    /// What the adapter last kept with the session (see `keep_adapter_state`).
    pub fn adapter_state(&self) -> Option<&Bytes> {
        self.adapter_record.as_ref()
    }

    /// Keeps an adapter's own state (an MQTT-SN client's topic ids, say) with the session,
    /// in the store too when the session is persistent, so it comes back after a restart.
    /// Returns the store's ticket for it then, for a reply that must wait until it is kept.
    pub fn keep_adapter_state(&mut self, record: Bytes) -> Option<Ticket> {
        let ticket = self.persistence.as_ref().map(|persistence| {
            persistence
                .store
                .submit(vec![persistence.adapter_state(record.clone())])
        });
        self.adapter_record = Some(record);
        ticket
    }

    pub fn is_persistent(&self) -> bool {
        self.persistence.is_some()
    }

    /// Stores the QoS 1/2 delivery just queued at the back, if the session is persistent.
    fn store_newest(&mut self) -> Option<Ticket> {
        let persistence = self.persistence.as_mut()?;
        let delivery = self.queue.back_mut()?;
        if delivery.qos == QoS::AtMostOnce || delivery.store_seq.is_some() {
            return None;
        }
        let op = persistence.queued(delivery);
        Some(persistence.store.submit(vec![op]))
    }

    /// Starts keeping the session in `store` under `key`: everything it holds now (queued,
    /// in flight, awaiting release, the adapter's state) is written, then every change.
    /// The caller writes the session's own record.
    pub fn start_persisting(
        &mut self,
        key: Vec<u8>,
        store: Arc<dyn Store>,
        clock: WallClock,
    ) -> Option<Ticket> {
        if self.persistence.is_some() {
            return None;
        }
        let mut persistence = Persistence {
            key,
            store,
            clock,
            next_seq: 1,
        };
        let mut ops = Vec::new();
        let outgoing = self
            .outgoing
            .iter_mut()
            .map(|out| (&mut out.delivery, Some((out.state, out.packet_id))));
        let queued = self.queue.iter_mut().map(|delivery| (delivery, None));
        for (delivery, sent) in outgoing.chain(queued) {
            if delivery.qos == QoS::AtMostOnce {
                continue;
            }
            ops.push(persistence.queued(delivery));
            if let (Some((state, packet_id)), Some(seq)) = (sent, delivery.store_seq) {
                ops.push(persistence.in_flight(seq, state, packet_id));
            }
        }
        for packet_id in self
            .awaiting_rel
            .iter()
            .flat_map(|awaiting| awaiting.keys())
        {
            ops.push(persistence.awaiting_release(*packet_id));
        }
        if let Some(record) = &self.adapter_record {
            ops.push(persistence.adapter_state(record.clone()));
        }
        for (filter, subscription) in &self.subscriptions {
            ops.push(persistence.subscription(filter, Some(subscription)));
        }
        let ticket = (!ops.is_empty()).then(|| persistence.store.submit(ops));
        self.persistence = Some(Box::new(persistence));
        ticket
    }

    /// Puts back what the store kept of a session after a restart: its queue and in-flight
    /// window (each delivery numbered as stored), the QoS 2 packet ids awaiting release
    /// and the adapter's state; the session goes on being kept under `key`.
    pub fn restore_persisted(&mut self, restored: RestoredSession, now: Instant) {
        let mut next_seq = 1;
        for (delivery, sent) in restored.deliveries {
            next_seq = next_seq.max(delivery.store_seq.map_or(0, |seq| seq + 1));
            match sent {
                Some((state, packet_id)) => self.outgoing.push_back(Outgoing {
                    packet_id,
                    delivery,
                    state,
                }),
                None => {
                    self.queued_bytes += delivery.message.weight();
                    self.queue.push_back(delivery);
                }
            }
        }
        if let Some(newest) = self.outgoing.back() {
            self.next_packet_id = newest.packet_id.checked_add(1).unwrap_or(1);
        }
        for packet_id in restored.awaiting_release {
            self.awaiting_rel
                .get_or_insert_default()
                .insert(packet_id, now);
        }
        self.adapter_record = restored.adapter_state;
        self.persistence = Some(Box::new(Persistence {
            key: restored.key,
            store: restored.store,
            clock: restored.clock,
            next_seq,
        }));
    }

    /// Stops keeping the session and deletes everything it had in the store.
    pub fn stop_persisting(&mut self) {
        let Some(persistence) = self.persistence.take() else {
            return;
        };
        persistence
            .store
            .submit(storage::forget_session(&persistence.key));
        for delivery in self.queue.iter_mut() {
            delivery.store_seq = None;
        }
        for out in self.outgoing.iter_mut() {
            out.delivery.store_seq = None;
        }
    }

    /// Records `filter`'s subscription as the session now holds it (None: gone), if the
    /// session is kept.
    pub fn store_subscription(&self, filter: &str) -> Option<Ticket> {
        let persistence = self.persistence.as_ref()?;
        let op = persistence.subscription(filter, self.subscriptions.get(filter));
        Some(persistence.store.submit(vec![op]))
    }

    /// Writes the session's own record (expiry, will, owner).
    pub fn store_record(&self, record: Bytes) -> Option<Ticket> {
        let persistence = self.persistence.as_ref()?;
        Some(persistence.store.submit(vec![Op::Put {
            table: Table::Sessions,
            key: persistence.key.clone(),
            value: record,
        }]))
    }
}

/// A session and its lock. Cells are shared by the registry, the router and the connection.
#[derive(Debug)]
pub struct SessionCell {
    pub id: SessionId,
    pub key: SessionKey,
    pub state: Mutex<SessionState>,
    /// Mirrors `state.connection.is_some()` so shared-subscription choice needs no lock.
    connected: AtomicBool,
}

impl SessionCell {
    pub fn new(id: SessionId, key: SessionKey) -> Arc<SessionCell> {
        Arc::new(SessionCell {
            id,
            key,
            state: Mutex::new(SessionState::default()),
            connected: AtomicBool::new(false),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Attaches or detaches the connection; the caller holds `state`'s lock.
    pub fn set_connection(
        &self,
        state: &mut SessionState,
        connection: Option<Arc<ConnControl>>,
    ) -> Option<Arc<ConnControl>> {
        self.connected
            .store(connection.is_some(), Ordering::Relaxed);
        if connection.is_none() {
            // An offline session keeps its queue limits instead.
            state.let_publishers_go();
        }
        std::mem::replace(&mut state.connection, connection)
    }

    /// Offers a delivery and wakes the connection if one is attached. A connected receiver
    /// takes every message a publisher it can hold back sends (`publisher`: the
    /// publisher's connection), and once behind holds that publisher back; the queue limits
    /// decide for the rest (an offline session, the broker's own messages).
    pub fn deliver(
        &self,
        delivery: Delivery,
        limits: &SessionLimits,
        publisher: Option<&Arc<ConnControl>>,
    ) -> Offered {
        let mut state = self.state.lock();
        if state.ended {
            return Offered {
                enqueued: Enqueued::DroppedQos0,
                first_unreported_drop: false,
                began_holding: false,
                ticket: None,
            };
        }
        let flow = &limits.flow;
        let held_publisher = publisher.filter(|_| state.connection.is_some() && flow.enabled());
        let enqueued = match held_publisher {
            Some(_) => state.enqueue_unbounded(delivery),
            None => state.enqueue(delivery, limits),
        };
        let began_holding = match held_publisher {
            Some(publisher) if state.is_behind(flow) => state.hold(publisher, flow),
            _ => false,
        };
        let ticket = match enqueued {
            Enqueued::Queued | Enqueued::QueuedEvictingQos0 => state.store_newest(),
            _ => None,
        };
        let first_unreported_drop = enqueued.dropped_one() && !state.awaiting_drop_report;
        state.awaiting_drop_report |= first_unreported_drop;
        if let Some(listener) = &state.listener {
            match enqueued {
                Enqueued::Queued => {}
                Enqueued::DroppedQos0 | Enqueued::QueuedEvictingQos0 => {
                    listener.dropped_qos0.fetch_add(1, Ordering::Relaxed);
                }
                Enqueued::DroppedQueueFull => {
                    listener.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let connection = match enqueued {
            Enqueued::Queued | Enqueued::QueuedEvictingQos0 => state.connection.clone(),
            _ => None,
        };
        drop(state);
        if let Some(connection) = connection {
            connection.wake();
        }
        Offered {
            enqueued,
            first_unreported_drop,
            began_holding,
            ticket,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn delivery(qos: QoS, payload: &'static [u8], now: Instant) -> Delivery {
        Delivery {
            message: Arc::new(Message::new(
                ByteString::from_static("t"),
                Bytes::from_static(payload),
                qos,
                false,
                now,
            )),
            qos,
            retain: false,
            subscription_ids: Default::default(),
            store_seq: None,
        }
    }

    fn limits(messages: usize, bytes: usize) -> SessionLimits {
        SessionLimits {
            max_queued_messages: messages,
            max_queued_bytes: bytes,
            queue_qos0_offline: true,
            max_awaiting_rel: 10,
            max_subscriptions: 0,
            flow: FlowLimits::OFF,
        }
    }

    #[test]
    fn full_queue_evicts_qos0_before_refusing_qos1() {
        let now = Instant::now();
        let mut state = SessionState::default();
        let limits = limits(2, 0);
        assert_eq!(
            state.enqueue(delivery(QoS::AtMostOnce, b"a", now), &limits),
            Enqueued::Queued
        );
        assert_eq!(
            state.enqueue(delivery(QoS::AtLeastOnce, b"b", now), &limits),
            Enqueued::Queued
        );
        assert_eq!(
            state.enqueue(delivery(QoS::AtMostOnce, b"c", now), &limits),
            Enqueued::DroppedQos0
        );
        assert_eq!(
            state.enqueue(delivery(QoS::ExactlyOnce, b"d", now), &limits),
            Enqueued::QueuedEvictingQos0
        );
        assert_eq!(
            state.enqueue(delivery(QoS::AtLeastOnce, b"e", now), &limits),
            Enqueued::DroppedQueueFull
        );
        let payloads: Vec<_> = std::iter::from_fn(|| state.pop_queued(now))
            .map(|d| d.message.payload.clone())
            .collect();
        assert_eq!(
            payloads,
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"d")]
        );
        assert_eq!(state.dropped(), (2, 1));
        assert_eq!(state.queued_bytes(), 0);
    }

    #[test]
    fn byte_limit_counts_payload_and_topic() {
        let now = Instant::now();
        let mut state = SessionState::default();
        let limits = limits(0, 10);
        assert_eq!(
            state.enqueue(delivery(QoS::AtLeastOnce, b"12345678", now), &limits),
            Enqueued::Queued
        );
        assert_eq!(
            state.enqueue(delivery(QoS::AtLeastOnce, b"12", now), &limits),
            Enqueued::DroppedQueueFull
        );
        assert_eq!(state.queued_bytes(), 9);
    }

    #[test]
    fn byte_limit_counts_user_properties_at_their_cost_in_memory() {
        let now = Instant::now();
        let mut state = SessionState::default();
        let limits = limits(0, 4096);
        let mut heavy = delivery(QoS::AtLeastOnce, b"p", now);
        let mut message = (*heavy.message).clone();
        // 100 one-byte pairs: 600 bytes on the wire, a few KiB in memory.
        message.properties.user_properties = vec![("k".to_owned(), "v".to_owned()); 100];
        heavy.message = Arc::new(message);
        assert!(heavy.message.weight() > 100 * (2 * std::mem::size_of::<String>()));
        assert_eq!(
            state.enqueue(heavy.clone(), &limits),
            Enqueued::Queued,
            "one fits"
        );
        assert_eq!(
            state.enqueue(heavy, &limits),
            Enqueued::DroppedQueueFull,
            "the second would pass the byte limit"
        );
    }

    #[test]
    fn offline_session_drops_qos0_when_configured() {
        let now = Instant::now();
        let mut state = SessionState::default();
        let mut limits = limits(0, 0);
        limits.queue_qos0_offline = false;
        assert_eq!(
            state.enqueue(delivery(QoS::AtMostOnce, b"a", now), &limits),
            Enqueued::DroppedQos0
        );
        assert_eq!(
            state.enqueue(delivery(QoS::AtLeastOnce, b"a", now), &limits),
            Enqueued::Queued
        );
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap_past_zero() {
        let now = Instant::now();
        let mut state = SessionState {
            next_packet_id: 65535,
            ..Default::default()
        };
        let first = state.allocate_packet_id();
        assert_eq!(first, 65535);
        state.push_outgoing(Outgoing {
            packet_id: 1,
            delivery: delivery(QoS::AtLeastOnce, b"", now),
            state: OutgoingState::AwaitPubAck,
        });
        assert_eq!(state.allocate_packet_id(), 2);
    }

    #[test]
    fn packet_ids_in_flight_are_never_reused_across_wraps() {
        let now = Instant::now();
        let mut state = SessionState::default();
        let mut in_flight = std::collections::BTreeSet::new();
        // A deterministic pseudo-random walk: windows up to 300 wide, acknowledged out of
        // order, over several wraps of the 16-bit identifier space.
        let mut seed: u32 = 12345;
        let mut next_random = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            seed >> 8
        };
        for _ in 0..300_000 {
            if in_flight.len() < 300 && next_random() % 3 != 0 {
                let id = state.allocate_packet_id();
                assert!(in_flight.insert(id), "packet id {id} handed out twice");
                state.push_outgoing(Outgoing {
                    packet_id: id,
                    delivery: delivery(QoS::AtLeastOnce, b"", now),
                    state: OutgoingState::AwaitPubAck,
                });
            } else if !in_flight.is_empty() {
                let pick = next_random() as usize % in_flight.len().min(8);
                let id = *in_flight.iter().nth(pick).unwrap_or(&0);
                assert!(state.puback(id));
                in_flight.remove(&id);
            }
        }
    }

    #[test]
    fn qos2_outgoing_walks_rec_then_comp() {
        let now = Instant::now();
        let mut state = SessionState::default();
        let id = state.allocate_packet_id();
        state.push_outgoing(Outgoing {
            packet_id: id,
            delivery: delivery(QoS::ExactlyOnce, b"", now),
            state: OutgoingState::AwaitPubRec,
        });
        assert!(!state.puback(id));
        assert!(!state.pubcomp(id));
        assert!(state.pubrec(id, ReasonCode::SUCCESS));
        assert!(state.pubcomp(id));
        assert_eq!(state.outgoing_len(), 0);
    }

    #[test]
    fn expired_messages_are_skipped_when_popped() {
        let now = Instant::now();
        let mut state = SessionState::default();
        let mut message = Message::new(
            ByteString::from_static("t"),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            now,
        );
        message.properties.message_expiry_interval = Some(1);
        let message = message.with_expiry_from_properties(now);
        let limits = limits(0, 0);
        state.enqueue(
            Delivery {
                message: Arc::new(message),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Default::default(),
                store_seq: None,
            },
            &limits,
        );
        state.enqueue(delivery(QoS::AtLeastOnce, b"kept", now), &limits);
        let later = now + std::time::Duration::from_secs(2);
        assert_eq!(
            state.pop_queued(later).map(|d| d.message.payload.clone()),
            Some(Bytes::from_static(b"kept"))
        );
    }
}
