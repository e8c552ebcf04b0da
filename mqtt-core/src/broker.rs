//! The broker handle every adapter uses: sessions by client id, subscribe, publish,
//! wills and expiries. Thread-safe and clock-free: callers pass `now`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gateway_config::{MqttConfig, RetainerConfig};
use parking_lot::{Mutex, RwLock};

use crate::auth::{Action, Auth, ClientInfo};
use crate::client::ConnectRefused;
use crate::clients::{Attachment, DisconnectReason};
use crate::codec::{QoS, ReasonCode, SubscriptionOptions};
use crate::flapping::FlappingDetector;
use crate::message::{Delivery, Message, SessionId};
use crate::mountpoint::mounted_filter;
use crate::presence::{Event, Presence};
use crate::retained::{RetainOutcome, RetainedStore};
use crate::router::{Router, Subscriber};
use crate::session::{
    intern_namespace, ConnControl, Enqueued, FlowLimits, Offered, RestoredSession, SessionCell,
    SessionKey, SessionLimits, SessionState, Subscription, Will,
};
use crate::storage::{self, MemoryStore, Op, SessionRecord, Store, Table, Ticket, WallClock};
use crate::topic::{parse_subscription, validate_topic_name, SubscriptionFilter};

/// Counters behind `$SYS` and the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub dropped_qos0: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub retained_refused: AtomicU64,
    /// QoS 1/2 publishes refused because the store is full.
    pub refused_store_full: AtomicU64,
    /// Publishes a datagram adapter answered with its protocol's congestion signal while
    /// their client was held back by a receiver that is behind.
    pub refused_congestion: AtomicU64,
    /// Receivers disconnected for holding publishers back while taking nothing.
    pub slow_receivers_disconnected: AtomicU64,
    /// Pauses of clients that went over their listener's `messages_rate` or `bytes_rate`.
    pub rate_limited: AtomicU64,
    /// Connections refused for credentials the authenticator denied, every protocol's.
    pub authentication_failures: AtomicU64,
    /// Sessions refused because their client is on the banned list.
    pub banned_refused: AtomicU64,
    /// Connections and sessions of each protocol, in the order protocols first attached.
    /// Behind a lock, as the registry is, since both change only when a connection attaches
    /// or leaves.
    protocols: Mutex<Vec<ProtocolCounts>>,
}

/// One protocol's clients, by its session namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolCounts {
    /// `"mqtt"`, `"mqtt-sn"`, `"coap"`, `"lwm2m"`, `"stomp"`.
    pub namespace: &'static str,
    /// Connections attached to a session now.
    pub connected: u64,
    /// Connections ever attached to a session: MQTT and MQTT-SN CONNECTs, STOMP CONNECTs,
    /// CoAP connections, LwM2M registrations accepted.
    pub connections: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    /// A connection of protocol `namespace` attached to a session.
    fn attached(&self, namespace: &'static str) {
        Stats::add(&self.connections, 1);
        let mut protocols = self.protocols.lock();
        match protocols.iter_mut().find(|p| p.namespace == namespace) {
            Some(counts) => {
                counts.connected += 1;
                counts.connections += 1;
            }
            None => protocols.push(ProtocolCounts {
                namespace,
                connected: 1,
                connections: 1,
            }),
        }
    }

    /// A connection of protocol `namespace` left its session.
    fn detached(&self, namespace: &'static str) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(counts) = self
            .protocols
            .lock()
            .iter_mut()
            .find(|p| p.namespace == namespace)
        {
            counts.connected = counts.connected.saturating_sub(1);
        }
    }

    /// Each protocol's clients, for every protocol a connection ever attached with.
    pub fn protocols(&self) -> Vec<ProtocolCounts> {
        self.protocols.lock().clone()
    }
}

/// How a closing connection's will is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillDisposition {
    /// Normal DISCONNECT: the will is deleted [MQTT-3.14.4-3].
    Discard,
    /// Abnormal close, or DISCONNECT 0x04: the will is published, after its delay.
    Publish,
}

pub(crate) struct ConnectRequest {
    pub key: SessionKey,
    pub clean_start: bool,
    /// Seconds; `u32::MAX` = never expires.
    pub expiry_interval: u32,
    /// Boxed: most sessions have no will, and an idle session should stay small.
    pub will: Option<Box<Will>>,
    pub control: Arc<ConnControl>,
    /// The user name that made the session; only the same may resume or take it over.
    pub owner: Option<Arc<str>>,
    /// The listener the connection came through, whose counters its drops go to.
    pub listener: Arc<str>,
    /// Who connects and how, kept in the session for the operator's view.
    pub attachment: Box<Attachment>,
}

/// What one listener's clients lost: the drops of every session last connected through it.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub dropped_qos0: AtomicU64,
    pub dropped_queue_full: AtomicU64,
}

/// Counters a listener's transport keeps (datagrams, DTLS handshakes), which the broker
/// knows nothing of but publishes under `$SYS` beside its own.
pub trait ListenerFigures: Send + Sync {
    /// Each counter as its topic below the listener's (`dtls/handshakes/completed`) and
    /// its value. The same topic names the sum over every listener at the broker's level,
    /// so a name says what it counts whatever listener it is read from. A name ending in
    /// `/current` is a level (`peers/current`); the others only grow.
    fn figures(&self, out: &mut Vec<(&'static str, u64)>);
}

/// A listener's name and its transport counters.
pub type NamedFigures = (Arc<str>, Arc<dyn ListenerFigures>);

/// One filter of a SUBSCRIBE, as the client wrote it.
pub(crate) struct SubscribeRequest<'a> {
    pub filter: &'a str,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
    /// The earliest the SUBSCRIBE can have arrived (`crate::arrival`); 0 = unknown.
    pub arrival: u64,
}

/// What routing one message did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "the acknowledgement must wait for the ticket"]
pub struct Dispatched {
    /// Sessions the message reached.
    pub reached: usize,
    /// The store batch that keeps what this message changed; its acknowledgement waits
    /// until the ticket is durable.
    pub ticket: Option<Ticket>,
}

/// Why the stored state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Store(#[from] storage::StoreError),
    #[error("unreadable record in table {table}, key {key:?}")]
    BadRecord { table: &'static str, key: String },
}

impl RecoverError {
    fn bad(table: Table, key: &[u8]) -> RecoverError {
        RecoverError::BadRecord {
            table: table.name(),
            key: String::from_utf8_lossy(key).into_owned(),
        }
    }
}

/// What came back from the store at start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub retained: usize,
    pub sessions: usize,
    /// Queued and in-flight messages of those sessions.
    pub messages: usize,
    /// Incoming QoS 2 packet ids of those sessions still awaiting PUBREL.
    pub awaiting_release: usize,
}

pub struct Attached {
    pub session: Arc<SessionCell>,
    pub session_present: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub qos: QoS,
    pub existed: bool,
}

pub struct Broker {
    pub config: MqttConfig,
    limits: SessionLimits,
    retain_enabled: bool,
    max_retained_payload: usize,
    router: Router,
    retained: RwLock<RetainedStore>,
    pub(crate) registry: Mutex<HashMap<SessionKey, Arc<SessionCell>>>,
    /// Due times of session expiries and delayed wills.
    timers: Mutex<BTreeMap<(Instant, SessionId), SessionKey>>,
    pub(crate) auth: Auth,
    pub stats: Stats,
    store: Arc<dyn Store>,
    /// Stored expiries are wall-clock times, so they mean the same after a restart; the
    /// times the operator is shown are too.
    pub(crate) clock: WallClock,
    next_session_id: AtomicU64,
    next_connection_id: AtomicU64,
    pub started_at: Instant,
    /// Sessions that dropped messages since the last drop report, each listed once.
    drop_reports: Mutex<DropReports>,
    /// Receivers that began holding publishers back, watched until they let them go, so
    /// one that never takes from its queue again is disconnected.
    holding: Mutex<Vec<Arc<SessionCell>>>,
    /// Per listener, by name, in the order first seen.
    listener_stats: Mutex<Vec<(Arc<str>, Arc<ListenerStats>)>>,
    /// Transport counters by listener name, in the order added.
    listener_figures: Mutex<Vec<NamedFigures>>,
    /// `None` when flapping detection is off.
    pub(crate) flapping: Option<FlappingDetector>,
    /// Clients an operator banned.
    pub banned: crate::banned::BannedList,
    /// `None` when no presence events are published (`with_presence`).
    pub(crate) presence: Option<Presence>,
}

/// How often the log sums up each session's dropped messages: one line per session and
/// interval, however many it dropped, since a line per drop would cost more than delivery.
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);

struct DropReports {
    sessions: Vec<Arc<SessionCell>>,
    next_report: Instant,
}

impl Broker {
    pub fn new(config: MqttConfig, retainer: &RetainerConfig, auth: Auth, now: Instant) -> Broker {
        let limits = SessionLimits {
            max_queued_messages: config.max_queued_messages as usize,
            max_queued_bytes: config.max_queued_bytes as usize,
            queue_qos0_offline: config.queue_qos0,
            max_awaiting_rel: config.max_awaiting_rel as usize,
            max_subscriptions: config.max_subscriptions as usize,
            flow: FlowLimits::new(
                config.receiver_high_water as usize,
                config.receiver_low_water as usize,
                config.max_queued_bytes as usize,
                config.slow_receiver_timeout.get(),
            ),
        };
        Broker {
            router: Router::new(config.shared_subscription_strategy),
            retain_enabled: retainer.enable && config.retain_available,
            max_retained_payload: retainer.max_payload_size as usize,
            retained: RwLock::new(RetainedStore::new(
                retainer.max_retained_messages as usize,
                usize::try_from(retainer.max_retained_bytes).unwrap_or(usize::MAX),
            )),
            limits,
            config,
            registry: Mutex::new(HashMap::new()),
            timers: Mutex::new(BTreeMap::new()),
            auth,
            stats: Stats::default(),
            store: Arc::new(MemoryStore),
            clock: WallClock::new(now, SystemTime::UNIX_EPOCH),
            next_session_id: AtomicU64::new(1),
            next_connection_id: AtomicU64::new(1),
            started_at: now,
            drop_reports: Mutex::new(DropReports {
                sessions: Vec::new(),
                next_report: now,
            }),
            holding: Mutex::new(Vec::new()),
            listener_stats: Mutex::new(Vec::new()),
            listener_figures: Mutex::new(Vec::new()),
            flapping: None,
            // No room until `with_banned_limit` gives the configured size.
            banned: crate::banned::BannedList::new(0),
            presence: None,
        }
    }

    /// Reads wall-clock times (when clients connected, presence events) from the clock at
    /// `wall_now`, the wall-clock time of the `now` given to `new`. Without it, or
    /// `with_store`, they count from the Unix epoch at `now`, which tests rely on.
    pub fn with_wall_clock(mut self, wall_now: SystemTime) -> Broker {
        self.clock = WallClock::new(self.started_at, wall_now);
        self
    }

    /// Refuses client ids that connect too often, as `config` says (nothing when it is off).
    /// A banned list holding at most `max_entries` bans (`banned.max_entries`); a broker
    /// made without one holds none.
    pub fn with_banned_limit(mut self, max_entries: usize) -> Broker {
        self.banned = crate::banned::BannedList::new(max_entries);
        self
    }

    pub fn with_flapping_detect(mut self, config: &gateway_config::FlappingDetectConfig) -> Broker {
        self.flapping = FlappingDetector::new(config);
        self
    }

    /// Keeps what must survive a restart in `store`. `wall_now` is the wall-clock time of
    /// the `now` given to `new`.
    pub fn with_store(mut self, store: Arc<dyn Store>, wall_now: SystemTime) -> Broker {
        self.store = store;
        self.clock = WallClock::new(self.started_at, wall_now);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether new QoS 1/2 messages are refused because the store is full: any of them
    /// may have to be kept, and the store must not grow without bound.
    pub fn refuses_storing(&self) -> bool {
        self.store.persistent() && self.store.is_full()
    }

    fn unix_ms(&self, at: Instant) -> u64 {
        self.clock.unix_ms(at)
    }

    /// Restores what the store kept: retained messages and persistent sessions with their
    /// queues, in-flight windows and QoS 2 packet ids awaiting release. What expired while
    /// the broker was down is deleted; the wills of sessions that ended meanwhile, or whose
    /// delay passed, are published once everything is back.
    pub fn recover(&self, now: Instant) -> Result<Recovered, RecoverError> {
        let now_ms = self.unix_ms(now);
        let mut forget = Vec::new();
        let mut recovered = Recovered::default();
        for (key, record) in self.store.load(Table::Retained)? {
            let Some((mut message, expires_ms)) = storage::decode_message(&record) else {
                return Err(RecoverError::bad(Table::Retained, &key));
            };
            if let Some(expires_ms) = expires_ms {
                if expires_ms <= now_ms {
                    forget.push(Op::Delete {
                        table: Table::Retained,
                        key,
                    });
                    continue;
                }
                message.expires_at = Some(self.clock.instant_at(expires_ms, now));
            }
            if self.retained.write().set(Arc::new(message)) == RetainOutcome::Stored {
                recovered.retained += 1;
            }
        }

        let mut subscriptions: BTreeMap<Vec<u8>, Vec<(String, Subscription)>> = BTreeMap::new();
        for (key, record) in self.store.load(Table::Subscriptions)? {
            let parsed = storage::split_session_key(&key).and_then(|(_, _, filter)| {
                let split = key.len() - filter.len();
                Some((
                    key.get(..split)?.to_vec(),
                    std::str::from_utf8(filter).ok()?.to_owned(),
                    storage::decode_subscription(&record)?,
                ))
            });
            let Some((session, filter, subscription)) = parsed else {
                return Err(RecoverError::bad(Table::Subscriptions, &key));
            };
            subscriptions
                .entry(session)
                .or_default()
                .push((filter, subscription));
        }

        let mut legacy = Vec::new();
        let mut wills = Vec::new();
        let mut restored: BTreeMap<Vec<u8>, (Arc<SessionCell>, RestoredSession)> = BTreeMap::new();
        for (key, record) in self.store.load(Table::Sessions)? {
            let (Some((namespace, client_id, [])), Some(mut record)) = (
                storage::split_session_key(&key),
                storage::decode_session(&record),
            ) else {
                return Err(RecoverError::bad(Table::Sessions, &key));
            };
            if !record.subscriptions.is_empty() {
                // A format 1 record: its subscriptions move to their own table below.
                legacy.push(key.clone());
            }
            record
                .subscriptions
                .extend(subscriptions.remove(&key).unwrap_or_default());
            let session_key = SessionKey {
                namespace: intern_namespace(namespace),
                client_id: Arc::from(client_id),
            };
            let closed_ms = record.disconnected_unix_ms.unwrap_or(now_ms);
            let ends_ms = (record.expiry_interval != u32::MAX)
                .then(|| closed_ms + u64::from(record.expiry_interval) * 1000);
            if ends_ms.is_some_and(|ends_ms| ends_ms <= now_ms) {
                forget.extend(storage::forget_session(&key));
                wills.extend(record.will.map(|will| (will, session_key)));
                continue;
            }
            let times = RestoredTimes {
                closed_ms,
                ends_ms,
                now_ms,
            };
            let cell = self.restore_session(&session_key, record, times, now, &mut wills);
            let parts = RestoredSession {
                key: key.clone(),
                store: self.store.clone(),
                clock: self.clock,
                deliveries: Vec::new(),
                awaiting_release: Vec::new(),
                adapter_state: None,
            };
            restored.insert(key, (cell, parts));
        }

        let mut sent = BTreeMap::new();
        for (key, record) in self.store.load(Table::Inflight)? {
            let (Some(entry), Some(state)) =
                (session_entry(&key), storage::decode_in_flight(&record))
            else {
                return Err(RecoverError::bad(Table::Inflight, &key));
            };
            if restored.contains_key(entry.0) {
                sent.insert((entry.0.to_vec(), entry.1), state);
            }
        }
        for (key, record) in self.store.load(Table::Queues)? {
            let Some((session, seq)) = session_entry(&key) else {
                return Err(RecoverError::bad(Table::Queues, &key));
            };
            let Some((_, parts)) = restored.get_mut(session) else {
                forget.push(Op::Delete {
                    table: Table::Queues,
                    key,
                });
                continue;
            };
            let Some(delivery) = storage::decode_delivery(&record, seq, &self.clock, now) else {
                return Err(RecoverError::bad(Table::Queues, &key));
            };
            let state = sent.remove(&(session.to_vec(), seq));
            parts.deliveries.push((delivery, state));
            recovered.messages += 1;
        }
        for (key, _) in self.store.load(Table::AwaitingRel)? {
            let Some((session, packet_id)) = session_entry(&key) else {
                return Err(RecoverError::bad(Table::AwaitingRel, &key));
            };
            match (restored.get_mut(session), u16::try_from(packet_id)) {
                (Some((_, parts)), Ok(packet_id)) => {
                    parts.awaiting_release.push(packet_id);
                    recovered.awaiting_release += 1;
                }
                _ => forget.push(Op::Delete {
                    table: Table::AwaitingRel,
                    key,
                }),
            }
        }
        for (key, record) in self.store.load(Table::Adapter)? {
            match restored.get_mut(key.as_slice()) {
                Some((_, parts)) => parts.adapter_state = Some(record),
                None => forget.push(Op::Delete {
                    table: Table::Adapter,
                    key,
                }),
            }
        }
        // Subscriptions of a session that is gone were left by a forget that was half
        // written, as are in-flight marks whose message is gone; they mean nothing.
        for (session, filters) in subscriptions {
            forget.extend(filters.into_iter().map(|(filter, _)| Op::Delete {
                table: Table::Subscriptions,
                key: storage::subscription_key(&session, &filter),
            }));
        }
        for ((session, seq), _) in sent {
            forget.push(Op::Delete {
                table: Table::Inflight,
                key: storage::session_entry_key(&session, seq),
            });
        }

        recovered.sessions = restored.len();
        for (key, (cell, parts)) in restored {
            let mut state = cell.state.lock();
            state.restore_persisted(parts, now);
            if legacy.contains(&key) {
                let filters: Vec<String> = state.subscriptions.keys().cloned().collect();
                for filter in filters {
                    let _ = state.store_subscription(&filter);
                }
            }
        }
        if !forget.is_empty() {
            self.store.submit(forget);
        }
        for (will, publisher) in wills {
            self.publish_will(will, &publisher, now);
        }
        Ok(recovered)
    }

    /// Puts a stored session back in the registry and the router, disconnected, with its
    /// expiry and will timers counted from when its connection closed.
    fn restore_session(
        &self,
        key: &SessionKey,
        record: SessionRecord,
        times: RestoredTimes,
        now: Instant,
        wills: &mut Vec<(Box<Will>, SessionKey)>,
    ) -> Arc<SessionCell> {
        let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        let cell = SessionCell::new(id, key.clone());
        {
            let mut state = cell.state.lock();
            state.expiry_interval = record.expiry_interval;
            state.owner = record.owner;
            state.disconnected_at = Some(self.clock.instant_at(times.closed_ms, now));
            if let Some(ends_ms) = times.ends_ms {
                let at = self.clock.instant_at(ends_ms, now);
                state.expires_at = Some(at);
                self.timers.lock().insert((at, id), key.clone());
            }
            if let Some(will) = record.will {
                let delay = will.delay_interval.min(record.expiry_interval);
                let due_ms = times.closed_ms + u64::from(delay) * 1000;
                if due_ms <= times.now_ms {
                    wills.push((will, key.clone()));
                } else {
                    let at = self.clock.instant_at(due_ms, now);
                    state.will_at = Some(at);
                    state.will = Some(will);
                    self.timers.lock().insert((at, id), key.clone());
                }
            }
            for (filter, subscription) in record.subscriptions {
                let Ok(parsed) = parse_subscription(&filter, 0) else {
                    continue;
                };
                // Restored: nothing arrived after it.
                let _ = self.router.subscribe(
                    parsed.filter(),
                    parsed.group(),
                    Subscriber {
                        session: cell.clone(),
                        options: subscription.options,
                        identifier: subscription.identifier,
                    },
                    0,
                );
                state.subscriptions.insert(filter, subscription);
            }
        }
        self.registry.lock().insert(key.clone(), cell.clone());
        cell
    }

    /// Keeps a session in the store while it outlives its connection (expiry above 0),
    /// and forgets it there once it no longer does. Called, with the session locked, after
    /// every change to its record.
    fn store_session(&self, cell: &SessionCell, state: &mut SessionState) {
        if !self.store.persistent() {
            return;
        }
        if state.expiry_interval == 0 {
            state.stop_persisting();
            return;
        }
        state.start_persisting(
            storage::session_key(cell.key.namespace, &cell.key.client_id),
            self.store.clone(),
            self.clock,
        );
        let record = SessionRecord {
            expiry_interval: state.expiry_interval,
            disconnected_unix_ms: match (&state.connection, state.disconnected_at) {
                (None, Some(at)) => Some(self.unix_ms(at)),
                _ => None,
            },
            will: state.will.clone(),
            owner: state.owner.clone(),
            subscriptions: Vec::new(),
        };
        state.store_record(storage::encode_session(&record));
    }

    /// The longest session expiry a client gets; longer requests are cut to it.
    pub fn max_session_expiry(&self) -> u32 {
        u32::try_from(self.config.max_session_expiry_interval.get().as_secs()).unwrap_or(u32::MAX)
    }

    /// The counters of listener `name`, made on first use.
    pub fn listener_stats(&self, name: &Arc<str>) -> Arc<ListenerStats> {
        let mut all = self.listener_stats.lock();
        if let Some((_, stats)) = all.iter().find(|(known, _)| known == name) {
            return stats.clone();
        }
        let stats = Arc::new(ListenerStats::default());
        all.push((name.clone(), stats.clone()));
        stats
    }

    /// Every listener's counters, in the order the listeners were first seen.
    pub fn all_listener_stats(&self) -> Vec<(Arc<str>, Arc<ListenerStats>)> {
        self.listener_stats.lock().clone()
    }

    /// Has `$SYS` publish `figures` under listener `name` (a listener may add several).
    pub fn add_listener_figures(&self, name: Arc<str>, figures: Arc<dyn ListenerFigures>) {
        self.listener_figures.lock().push((name, figures));
    }

    /// Every listener's transport counters, in the order they were added.
    pub fn all_listener_figures(&self) -> Vec<NamedFigures> {
        self.listener_figures.lock().clone()
    }

    /// The most levels a topic name or filter may have (`mqtt.max_topic_levels`).
    pub fn max_topic_levels(&self) -> usize {
        self.config.max_topic_levels as usize
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session_count(&self) -> usize {
        self.registry.lock().len()
    }

    pub fn subscription_count(&self) -> usize {
        self.router.subscription_count()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    pub fn session(&self, key: &SessionKey) -> Option<Arc<SessionCell>> {
        self.registry.lock().get(key).cloned()
    }

    /// Opens or resumes the session named by `request.key` and attaches the connection.
    /// A connection already attached is asked to close with 0x8E [MQTT-3.1.4-3]. A session
    /// made by another owner is left as it is and the request refused.
    pub(crate) fn connect(
        &self,
        request: ConnectRequest,
        now: Instant,
    ) -> Result<Attached, ConnectRefused> {
        let mut wills = Vec::new();
        let mut ended = None;
        // The connection this one replaces, announced as gone before this one comes.
        let mut departed = None;
        let expiry_interval = request.expiry_interval;
        let attached = {
            let mut registry = self.registry.lock();
            let existing = registry.get(&request.key).cloned();
            if let Some(cell) = &existing {
                let owner = cell.state.lock().owner.clone();
                if owner != request.owner {
                    tracing::warn!(
                        client_id = %request.key.client_id,
                        owner = owner.as_deref().unwrap_or(""),
                        user = request.owner.as_deref().unwrap_or(""),
                        "session belongs to another user: refused"
                    );
                    return Err(ConnectRefused::SessionOwnedByAnother);
                }
            }
            match existing {
                Some(cell) if !request.clean_start => {
                    let mut state = cell.state.lock();
                    if let Some(previous) =
                        cell.set_connection(&mut state, Some(request.control.clone()))
                    {
                        previous.close(ReasonCode::SESSION_TAKEN_OVER);
                        self.stats.detached(cell.key.namespace);
                        departed = state
                            .attachment
                            .take()
                            .map(|gone| (*gone, DisconnectReason::TakenOver));
                        // The old connection closed without DISCONNECT, so its will goes out
                        // unless a delay lets this resumption cancel it [MQTT-3.1.3-9].
                        if let Some(will) = state.will.take() {
                            if will.delay_interval == 0 {
                                wills.push(will);
                            }
                        }
                    }
                    state.will = request.will;
                    state.will_at = None;
                    state.expires_at = None;
                    state.disconnected_at = None;
                    state.expiry_interval = request.expiry_interval;
                    state.listener = Some(self.listener_stats(&request.listener));
                    state.attachment = Some(request.attachment);
                    self.store_session(&cell, &mut state);
                    drop(state);
                    Attached {
                        session: cell,
                        session_present: true,
                    }
                }
                previous => {
                    if let Some(previous) = previous {
                        registry.remove(&request.key);
                        ended = Some(previous);
                    }
                    let id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
                    let cell = SessionCell::new(id, request.key.clone());
                    {
                        let mut state = cell.state.lock();
                        cell.set_connection(&mut state, Some(request.control.clone()));
                        state.will = request.will;
                        state.expiry_interval = request.expiry_interval;
                        state.owner = request.owner;
                        state.listener = Some(self.listener_stats(&request.listener));
                        state.attachment = Some(request.attachment);
                        self.store_session(&cell, &mut state);
                    }
                    registry.insert(request.key, cell.clone());
                    Attached {
                        session: cell,
                        session_present: false,
                    }
                }
            }
        };
        if let Some(previous) = ended {
            let (will, closed) = self.finish_session(&previous, ReasonCode::SESSION_TAKEN_OVER);
            wills.extend(will);
            departed = closed.map(|gone| (gone, DisconnectReason::Discarded));
        }
        let key = &attached.session.key;
        if let Some((gone, reason)) = departed {
            if gone.asleep {
                // A sleeping client connecting again, from wherever: it woke up.
                self.announce(key, &gone, Event::Awake, now);
            }
            self.announce_departure(key, &gone, reason, now);
        }
        for will in wills {
            self.publish_will(will, key, now);
        }
        self.stats.attached(key.namespace);
        if self.presence.is_some() {
            let arrived = attached.session.state.lock().attachment.clone();
            if let Some(arrived) = arrived {
                self.announce(key, &arrived, Event::Connected { expiry_interval }, now);
            }
        }
        Ok(attached)
    }

    /// Detaches connection `conn_id` from its session, which ended for `reason`. Does
    /// nothing if another connection has taken the session over meanwhile.
    pub(crate) fn disconnect(
        &self,
        session: &Arc<SessionCell>,
        conn_id: u64,
        will: WillDisposition,
        reason: DisconnectReason,
        now: Instant,
    ) {
        let mut departed = None;
        let (end_now, publish_now) = {
            let mut state = session.state.lock();
            match &state.connection {
                Some(connection) if connection.conn_id == conn_id => {}
                _ => return,
            }
            session.set_connection(&mut state, None);
            if let Some(attachment) = &mut state.attachment {
                attachment.asleep = false;
                if self.presence.is_some() {
                    departed = Some((**attachment).clone());
                }
            }
            self.stats.detached(session.key.namespace);
            if will == WillDisposition::Discard {
                state.will = None;
            }
            state.disconnected_at = Some(now);
            if state.expiry_interval == 0 {
                (true, None)
            } else {
                if state.expiry_interval != u32::MAX {
                    let at = now + Duration::from_secs(u64::from(state.expiry_interval));
                    state.expires_at = Some(at);
                    self.timers
                        .lock()
                        .insert((at, session.id), session.key.clone());
                }
                let mut publish_now = None;
                if let Some(delay) = state
                    .will
                    .as_ref()
                    .map(|will| will.delay_interval.min(state.expiry_interval))
                {
                    if delay == 0 {
                        publish_now = state.will.take();
                    } else {
                        let at = now + Duration::from_secs(u64::from(delay));
                        state.will_at = Some(at);
                        self.timers
                            .lock()
                            .insert((at, session.id), session.key.clone());
                    }
                }
                self.store_session(session, &mut state);
                (false, publish_now)
            }
        };
        if let Some(gone) = departed {
            self.announce_departure(&session.key, &gone, reason, now);
        }
        if let Some(will) = publish_now {
            self.publish_will(will, &session.key, now);
        }
        if end_now {
            if let Some(will) = self.end_session(session) {
                self.publish_will(will, &session.key, now);
            }
        }
    }

    /// Changes a connected session's expiry, as DISCONNECT's property may.
    pub(crate) fn set_expiry_interval(&self, session: &SessionCell, seconds: u32) {
        let mut state = session.state.lock();
        state.expiry_interval = seconds;
        // A session that now ends with its connection is forgotten when it does.
        if seconds > 0 {
            self.store_session(session, &mut state);
        }
    }

    /// Ends a session that is not connected: removes it from the registry and the router.
    /// Returns its pending will, which is due now that the session has ended.
    fn end_session(&self, session: &Arc<SessionCell>) -> Option<Box<Will>> {
        let mut registry = self.registry.lock();
        if session.state.lock().connection.is_some() {
            return None;
        }
        if registry
            .get(&session.key)
            .is_some_and(|cell| Arc::ptr_eq(cell, session))
        {
            registry.remove(&session.key);
        }
        drop(registry);
        self.finish_session(session, ReasonCode::UNSPECIFIED_ERROR)
            .0
    }

    /// Marks a session removed from the registry as ended and drops its subscriptions. A
    /// connection still attached is told to close with `reason`. Returns the pending will,
    /// due now that the session has ended, and who held the session if a connection did.
    pub(crate) fn finish_session(
        &self,
        session: &Arc<SessionCell>,
        reason: ReasonCode,
    ) -> (Option<Box<Will>>, Option<Attachment>) {
        let (subscriptions, will, closed) = {
            let mut state = session.state.lock();
            state.ended = true;
            state.stop_persisting();
            let closed = match session.set_connection(&mut state, None) {
                Some(previous) => {
                    previous.close(reason);
                    self.stats.detached(session.key.namespace);
                    state.attachment.as_deref().cloned()
                }
                None => None,
            };
            (
                std::mem::take(&mut state.subscriptions),
                state.will.take(),
                closed,
            )
        };
        for filter in subscriptions.keys() {
            self.remove_from_router(filter, session.id);
        }
        (will, closed)
    }

    fn remove_from_router(&self, filter: &str, session: SessionId) -> bool {
        parse_subscription(filter, 0).is_ok_and(|parsed| {
            self.router
                .unsubscribe(parsed.filter(), parsed.group(), session)
        })
    }

    /// Fires due wills and session expiries.
    pub fn handle_timeouts(&self, now: Instant) {
        self.report_drops(now);
        self.disconnect_stuck_receivers(now);
        loop {
            let due = {
                let mut timers = self.timers.lock();
                match timers.first_key_value() {
                    Some((&(at, id), _)) if at <= now => {
                        timers.remove(&(at, id)).map(|key| (id, key))
                    }
                    _ => None,
                }
            };
            let Some((id, key)) = due else {
                break;
            };
            let Some(session) = self.session(&key).filter(|cell| cell.id == id) else {
                continue;
            };
            let (will, expired) = {
                let mut state = session.state.lock();
                if state.connection.is_some() {
                    continue;
                }
                let will = match state.will_at {
                    Some(at) if at <= now => {
                        state.will_at = None;
                        let will = state.will.take();
                        self.store_session(&session, &mut state);
                        will
                    }
                    _ => None,
                };
                (will, state.expires_at.is_some_and(|at| at <= now))
            };
            if let Some(will) = will {
                self.publish_will(will, &key, now);
            }
            if expired {
                if let Some(will) = self.end_session(&session) {
                    self.publish_will(will, &key, now);
                }
            }
        }
    }

    /// When `handle_timeouts` next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.lock().first_key_value().map(|((at, _), _)| *at)
    }

    pub(crate) fn publish_will(&self, will: Box<Will>, publisher: &SessionKey, now: Instant) {
        let will = *will;
        let mut message = Message::new(will.topic, will.payload, will.qos, will.retain, now);
        message.properties = will.properties.into();
        message.publisher_client_id = Some(publisher.client_id.clone());
        let message = message.with_expiry_from_properties(now);
        tracing::debug!(client_id = %publisher.client_id, topic = %message.topic, "publishing will");
        // Nobody waits to acknowledge a will, and nobody can hold the broker back.
        let _ = self.publish(Arc::new(message), None);
    }

    /// Whether a message with this topic, QoS and retain flag may be published at all under
    /// the configured limits; the error names the reason code and the rule.
    pub(crate) fn check_publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Result<(), (ReasonCode, &'static str)> {
        if validate_topic_name(topic, self.config.max_topic_levels as usize).is_err() {
            return Err((ReasonCode::TOPIC_NAME_INVALID, "invalid topic name"));
        }
        if qos.as_u8() > self.config.max_qos_allowed {
            return Err((
                ReasonCode::QOS_NOT_SUPPORTED,
                "[MQTT-3.2.2-11] QoS above the maximum",
            ));
        }
        if retain && !self.config.retain_available {
            return Err((
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "[MQTT-3.2.2-14] retain not available",
            ));
        }
        Ok(())
    }

    pub(crate) fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        self.auth.authorizer.authorize(client, action, topic)
    }

    /// Routes a message to every matching session and updates the retained store. A
    /// connected receiver that is behind holds `publisher` back (see `SessionCell::deliver`).
    pub(crate) fn publish(
        &self,
        message: Arc<Message>,
        publisher: Option<&Arc<ConnControl>>,
    ) -> Dispatched {
        Stats::add(&self.stats.messages_received, 1);
        self.dispatch(message, publisher)
    }

    /// `publish` for the broker's own messages, which are not counted as received.
    pub(crate) fn dispatch(
        &self,
        message: Arc<Message>,
        publisher: Option<&Arc<ConnControl>>,
    ) -> Dispatched {
        let ticket = if message.retain && self.retain_enabled {
            self.retain(&message)
        } else {
            None
        };
        let targets = self.router.route(&message);
        let mut dispatched = Dispatched {
            reached: targets.len(),
            ticket,
        };
        for target in targets {
            let (session, delivery) = target.into_delivery(message.clone());
            let offered = session.deliver(delivery, &self.limits, publisher);
            dispatched.ticket = dispatched.ticket.max(offered.ticket);
            self.count(&offered, &session);
        }
        dispatched
    }

    /// Hands `delivery` to another member of a shared subscription: `from` held it under
    /// `filter` (`$share/{group}/...` or `$queue/...`, mounted, as the session holds it) and
    /// will not acknowledge it, because its connection or session is going away. Gives the
    /// delivery back when `filter` is not shared or nobody else is in the group.
    pub(crate) fn redispatch_shared(
        &self,
        filter: &str,
        from: SessionId,
        delivery: Delivery,
    ) -> Result<(), Delivery> {
        let Ok(SubscriptionFilter::Shared { group, filter }) = parse_subscription(filter, 0) else {
            return Err(delivery);
        };
        let Some(target) = self
            .router
            .pick_other(filter, group, from, &delivery.message)
        else {
            return Err(delivery);
        };
        tracing::debug!(
            group,
            to = %target.session.key.client_id,
            topic = %delivery.message.topic,
            "shared message handed to another member"
        );
        let (session, handed) = target.into_delivery(delivery.message);
        self.count(&session.deliver(handed, &self.limits, None), &session);
        Ok(())
    }

    /// Returns the store's ticket for the change, if it made one.
    fn retain(&self, message: &Message) -> Option<Ticket> {
        if message.payload.len() > self.max_retained_payload {
            Stats::add(&self.stats.retained_refused, 1);
            return None;
        }
        // A full store takes no new retained message, whatever its QoS: every write must
        // be bounded. Clearing one still passes, as it frees room.
        if !message.payload.is_empty() && self.refuses_storing() && !message.topic.starts_with('$')
        {
            Stats::add(&self.stats.retained_refused, 1);
            return None;
        }
        let outcome = self.retained.write().set(Arc::new(message.detached()));
        if outcome == RetainOutcome::Full {
            // Counted, not logged: a flood of refusals must not become a flood of lines.
            Stats::add(&self.stats.retained_refused, 1);
        }
        // `$` topics are the broker's own, made anew at every start.
        if !self.store.persistent() || message.topic.starts_with('$') {
            return None;
        }
        let key = message.topic.as_bytes().to_vec();
        // A refused replacement took the topic's older message with it.
        let op = if outcome != RetainOutcome::Stored {
            Op::Delete {
                table: Table::Retained,
                key,
            }
        } else {
            let expires_ms = message.expires_at.map(|at| self.unix_ms(at));
            Op::Put {
                table: Table::Retained,
                key,
                value: storage::encode_message(message, expires_ms),
            }
        };
        Some(self.store.submit(vec![op]))
    }

    fn count(&self, offered: &Offered, session: &Arc<SessionCell>) {
        match offered.enqueued {
            Enqueued::Queued => {}
            Enqueued::DroppedQos0 | Enqueued::QueuedEvictingQos0 => {
                Stats::add(&self.stats.dropped_qos0, 1)
            }
            Enqueued::DroppedQueueFull => Stats::add(&self.stats.dropped_queue_full, 1),
        }
        if offered.first_unreported_drop {
            self.drop_reports.lock().sessions.push(session.clone());
        }
        if offered.began_holding {
            self.holding.lock().push(session.clone());
        }
    }

    /// Disconnects each receiver that has held publishers back without taking anything
    /// from its queue for the configured time: it stopped reading, and must not stall
    /// them for good. Its publishers go on once it is detached.
    fn disconnect_stuck_receivers(&self, now: Instant) {
        let timeout = self.limits.flow.stuck_timeout;
        let watched = std::mem::take(&mut *self.holding.lock());
        let mut still_holding = Vec::with_capacity(watched.len());
        for session in watched {
            let stuck = {
                let mut state = session.state.lock();
                if state.publishers_held_back() == 0 {
                    continue;
                }
                if !state.is_stuck(now, timeout) {
                    None
                } else {
                    let held = state.publishers_held_back();
                    // Its publishers go on now, not when its close is done (which waits
                    // for a flush it will not read), and it is reported and counted once.
                    state.let_publishers_go();
                    Some((state.connection.clone(), state.queue_len(), held))
                }
            };
            if let Some((connection, queued, held)) = stuck {
                tracing::warn!(
                    client_id = %session.key.client_id,
                    queued,
                    publishers_held = held,
                    "receiver took nothing from its queue for {} s while holding publishers back: disconnected",
                    timeout.as_secs()
                );
                Stats::add(&self.stats.slow_receivers_disconnected, 1);
                if let Some(connection) = connection {
                    connection.close(ReasonCode::QUOTA_EXCEEDED);
                }
                continue;
            }
            still_holding.push(session);
        }
        self.holding.lock().append(&mut still_holding);
    }

    /// Sums up in the log, one line per session, the messages each session dropped since
    /// the last report, when `DROP_REPORT_INTERVAL` has passed since then.
    fn report_drops(&self, now: Instant) {
        let sessions = {
            let mut reports = self.drop_reports.lock();
            if now < reports.next_report {
                return;
            }
            reports.next_report = now + DROP_REPORT_INTERVAL;
            std::mem::take(&mut reports.sessions)
        };
        self.banned.purge(std::time::SystemTime::now());
        // On the same cadence: clients whose flapping window and ban are over are forgotten.
        if let Some(flapping) = &self.flapping {
            flapping.purge(now);
        }
        for session in sessions {
            let (qos0, qos1_2, queued) = {
                let mut state = session.state.lock();
                let (qos0, qos1_2) = state.take_unreported_drops();
                (qos0, qos1_2, state.queue_len())
            };
            let client_id = &session.key.client_id;
            let interval = DROP_REPORT_INTERVAL.as_secs();
            if qos1_2 > 0 {
                tracing::warn!(%client_id, qos1_2, qos0, queued, "session queue full: messages dropped in the last {interval} s");
            } else if qos0 > 0 {
                tracing::info!(%client_id, qos0, queued, "session queue full: QoS 0 messages dropped in the last {interval} s");
            }
        }
    }

    /// Subscribes `session` to `filter` (which may be `$share/...`), replays retained
    /// messages as the retain handling option says, gives it what arrived after the
    /// SUBSCRIBE but was routed before (`crate::arrival`), and records the subscription in
    /// the session. Errors carry the reason code for SUBACK.
    pub(crate) fn subscribe(
        &self,
        session: &Arc<SessionCell>,
        client: &ClientInfo,
        request: SubscribeRequest<'_>,
        now: Instant,
    ) -> Result<Granted, ReasonCode> {
        let SubscribeRequest {
            filter,
            options,
            identifier,
            arrival,
        } = request;
        let parsed = parse_subscription(filter, self.config.max_topic_levels as usize)
            .map_err(|_| ReasonCode::TOPIC_FILTER_INVALID)?;
        let (plain, group) = (parsed.filter(), parsed.group());
        if group.is_some() && !self.config.shared_subscription {
            return Err(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if !self.config.wildcard_subscription && (plain.contains('+') || plain.contains('#')) {
            return Err(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        let qos = options
            .qos
            .min(QoS::from_u8(self.config.max_qos_allowed).unwrap_or(QoS::ExactlyOnce));
        if !self.authorize(client, Action::Subscribe { qos: qos.as_u8() }, plain) {
            return Err(ReasonCode::NOT_AUTHORIZED);
        }
        // Authorized as the client wrote it; indexed and remembered as the router sees it.
        let mounted = client.mountpoint.as_ref().map(|mountpoint| {
            (
                mountpoint.mount_filter(filter),
                mountpoint.mount(plain).to_string(),
            )
        });
        let (filter, plain) = match &mounted {
            Some((filter, plain)) => (filter.as_str(), plain.as_str()),
            None => (filter, plain),
        };
        {
            let state = session.state.lock();
            if self.limits.max_subscriptions > 0
                && state.subscriptions.len() >= self.limits.max_subscriptions
                && !state.subscriptions.contains_key(filter)
            {
                return Err(ReasonCode::QUOTA_EXCEEDED);
            }
        }
        let options = SubscriptionOptions { qos, ..options };
        let (existed, missed) = self.router.subscribe(
            plain,
            group,
            Subscriber {
                session: session.clone(),
                options,
                identifier,
            },
            arrival,
        );
        let ended = {
            let mut state = session.state.lock();
            if !state.ended {
                state.subscriptions.insert(
                    filter.to_owned(),
                    Subscription {
                        options,
                        identifier,
                    },
                );
                // Only this subscription's entry: a session with thousands pays for one.
                let _ = state.store_subscription(filter);
            }
            state.ended
        };
        if ended {
            // Kicked out or replaced while this was on its way: the session's subscriptions
            // left the router when it ended, and this one must not stay there without it.
            self.remove_from_router(filter, session.id);
            return Err(ReasonCode::UNSPECIFIED_ERROR);
        }

        // Retained messages are never sent for a shared subscription (MQTT 5.0 section
        // 4.8.2); for others, retain handling 0 always sends them and 1 only for a new subscription.
        let send_retained = group.is_none()
            && (options.retain_handling == 0 || (options.retain_handling == 1 && !existed));
        if send_retained && self.retain_enabled {
            let retained = self.retained.read().matching(plain, now);
            for message in retained {
                let delivery = Delivery {
                    qos: message.qos.min(qos),
                    message,
                    retain: true,
                    subscription_ids: identifier.into_iter().collect(),
                    store_seq: None,
                };
                self.count(&session.deliver(delivery, &self.limits, None), session);
            }
        }
        // After the retained ones, as if the subscription had been there when they came.
        for (message, target) in missed {
            let (_, delivery) = target.into_delivery(message);
            self.count(&session.deliver(delivery, &self.limits, None), session);
        }
        Ok(Granted { qos, existed })
    }

    /// Returns whether the subscription existed.
    pub(crate) fn unsubscribe(
        &self,
        session: &Arc<SessionCell>,
        client: &ClientInfo,
        filter: &str,
    ) -> bool {
        let filter = &*mounted_filter(client.mountpoint.as_ref(), filter);
        let existed = {
            let mut state = session.state.lock();
            let existed = state.subscriptions.remove(filter).is_some();
            if existed {
                let _ = state.store_subscription(filter);
            }
            existed
        };
        self.remove_from_router(filter, session.id) || existed
    }

    /// A message from outside any client (an operator's, through the admin API): routed as
    /// a client's publish is, retained when it says so, counted as received. No ACL applies:
    /// whoever may call this is trusted with every topic. Returns the sessions it reached.
    pub fn publish_unattributed(&self, message: Message) -> usize {
        self.publish(Arc::new(message), None).reached
    }

    /// The live retained messages whose topic `filter` matches (`#`: all but the broker's
    /// own `$` topics).
    pub fn retained_messages(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.retained.read().matching(filter, now)
    }

    /// Clears the retained message of topic name `topic` as an empty retained publish
    /// would, without publishing anything; whether there was one (a filter clears nothing).
    pub fn clear_retained(&self, topic: &str, now: Instant) -> bool {
        if topic.contains(['+', '#']) || self.retained_messages(topic, now).is_empty() {
            return false;
        }
        let clear = Message::new(
            bytestring::ByteString::from(topic),
            bytes::Bytes::new(),
            QoS::AtMostOnce,
            true,
            now,
        );
        // Nobody waits for an operator's clearing to be durable: the store writes it with
        // its batch.
        let _ = self.retain(&clear);
        true
    }

    /// Drops expired retained messages; called now and then by the runtime.
    pub fn purge_expired_retained(&self, now: Instant) -> usize {
        let expired = self.retained.write().purge_expired(now);
        if self.store.persistent() && !expired.is_empty() {
            self.store.submit(
                expired
                    .iter()
                    .map(|topic| Op::Delete {
                        table: Table::Retained,
                        key: topic.as_bytes().to_vec(),
                    })
                    .collect(),
            );
        }
        expired.len()
    }
}

/// When a stored session's connection closed and when it ends (None: never), as Unix
/// milliseconds, and the time of the restart.
#[derive(Debug, Clone, Copy)]
struct RestoredTimes {
    closed_ms: u64,
    ends_ms: Option<u64>,
    now_ms: u64,
}

/// Splits a key made by `session_entry_key` into the session's key and the number.
fn session_entry(key: &[u8]) -> Option<(&[u8], u64)> {
    let split = key.len().checked_sub(8)?;
    let (session, number) = key.split_at(split);
    storage::split_session_key(session).filter(|(_, _, rest)| rest.is_empty())?;
    Some((session, u64::from_be_bytes(number.try_into().ok()?)))
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}
