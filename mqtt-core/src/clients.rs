//! The operator's view of the clients: every session a client of any protocol opened in
//! this run, listed and looked up from the broker's own session registry, and kicked out.
//!
//! Nothing here is kept apart from the sessions: a session holds its [`Attachment`] (who
//! holds it and how, set when a connection attaches, kept after it leaves), and a snapshot
//! reads that and the session's figures under the session's own lock, briefly. Publishing
//! and delivering never touch it. [`Broker::clients`] takes the registry's lock only to
//! clone the handles of the sessions it will read.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::auth::ClientInfo;
use crate::broker::Broker;
use crate::codec::{ReasonCode, SubscriptionOptions};
use crate::session::{SessionCell, SessionKey, SessionState, Subscription};

/// How a client's protocol names itself and its version, as EMQX reports them
/// (`proto_name`, `proto_ver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtoInfo {
    /// `"MQTT"`, `"MQTT-SN"`, `"CoAP"`, `"LwM2M"`, `"STOMP"`.
    pub name: &'static str,
    pub version: ProtoVer,
}

/// MQTT's version is its protocol level (3, 4, 5); the other protocols' are text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoVer {
    Level(u8),
    Text(&'static str),
}

impl std::fmt::Display for ProtoVer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoVer::Level(level) => write!(f, "{level}"),
            ProtoVer::Text(text) => f.write_str(text),
        }
    }
}

/// Whether a client is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    Connected,
    /// An MQTT-SN client asleep: connected, its messages kept until it wakes.
    Asleep,
    /// The session outlives its connection (until its expiry).
    Disconnected,
}

impl ConnState {
    /// EMQX's `conn_state` words.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connected => "connected",
            ConnState::Asleep => "asleep",
            ConnState::Disconnected => "disconnected",
        }
    }
}

/// Why a client's connection ended, as the `disconnected` presence event says it (EMQX's
/// reason words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client said it goes: MQTT or MQTT-SN DISCONNECT, STOMP DISCONNECT, an LwM2M
    /// de-registration, a CoAP connection deleted.
    Normal,
    /// The connection ended without a goodbye: the socket closed, a datagram peer was
    /// forgotten, a protocol error.
    SockClosed,
    /// Nothing heard from the client within its keep-alive (or lifetime, or heartbeat).
    KeepaliveTimeout,
    /// Another connection resumed the session.
    TakenOver,
    /// Another connection started the session anew (clean start).
    Discarded,
    /// The operator kicked the client out ([`Broker::kick`]).
    Kicked,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::SockClosed => "sock_closed",
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::TakenOver => "takenover",
            DisconnectReason::Discarded => "discarded",
            DisconnectReason::Kicked => "kicked",
        }
    }
}

/// Who holds a session, or last held it, and how; kept in the session.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    /// Shared with the connection's `ClientSession`.
    pub client: Arc<ClientInfo>,
    pub proto: ProtoInfo,
    pub keepalive: u32,
    pub clean_start: bool,
    /// Unix milliseconds.
    pub connected_at_ms: u64,
    /// False for a session that lives for one message (an MQTT-SN QoS -1 publish):
    /// presence events leave it out.
    pub announced: bool,
    pub asleep: bool,
}

/// One subscription of a session, its filter as the router matches it (a mountpoint
/// included, a `$share/{group}/` prefix kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSnapshot {
    pub filter: String,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// What the sessions hold for their clients, over all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTotals {
    /// Messages queued for clients, and their bytes (topic and payload).
    pub queued: u64,
    pub queued_bytes: u64,
    /// The longest queue of one session.
    pub deepest: u64,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: u64,
    /// Incoming QoS 2 messages received and not yet released.
    pub awaiting_release: u64,
}

impl SubscriptionSnapshot {
    fn of((filter, subscription): (&String, &Subscription)) -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            filter: filter.clone(),
            options: subscription.options,
            identifier: subscription.identifier,
        }
    }
}

/// A client as the broker saw it when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// The session namespace (`"mqtt"`, `"mqtt-sn"`, `"coap"`, `"lwm2m"`, `"stomp"`) and
    /// client id: what [`Broker::client`] and [`Broker::kick`] take.
    pub key: SessionKey,
    pub proto: ProtoInfo,
    pub username: Option<String>,
    pub peer: Option<SocketAddr>,
    /// The listener's name (`tcp:default`, `mqttsn:udp:default`, ...).
    pub listener: Arc<str>,
    pub state: ConnState,
    /// When the connection that holds (or last held) the session was accepted.
    pub connected_at: SystemTime,
    /// When the last connection ended, while there is none.
    pub disconnected_at: Option<SystemTime>,
    /// Seconds; 0 where there is none. MQTT: as granted; MQTT-SN: the CONNECT duration;
    /// LwM2M: the registration's lifetime; CoAP: the heartbeat; STOMP: the heart-beat the
    /// client sends, rounded up.
    pub keepalive: u32,
    pub clean_start: bool,
    /// Seconds the session outlives its connection; `u32::MAX` = never expires.
    pub expiry_interval: u32,
    pub subscriptions: usize,
    /// Messages queued for the client and their bytes (topic and payload).
    pub mqueue_len: usize,
    pub mqueue_bytes: usize,
    /// Messages the session dropped, ever: QoS 0 by policy plus QoS 1/2 for a full queue.
    pub mqueue_dropped: u64,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// Incoming QoS 2 messages received and not yet released.
    pub awaiting_rel: usize,
}

/// How text must compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextMatch {
    Exact(String),
    /// Contains it, as EMQX's `like_clientid` / `like_username`.
    Contains(String),
}

impl TextMatch {
    fn matches(&self, text: &str) -> bool {
        match self {
            TextMatch::Exact(wanted) => text == wanted,
            TextMatch::Contains(part) => text.contains(part.as_str()),
        }
    }
}

/// Which clients [`Broker::clients`] lists; every field left `None` lets all through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientQuery {
    /// The session namespace: `"mqtt"`, `"mqtt-sn"`, `"coap"`, `"lwm2m"`, `"stomp"`.
    pub namespace: Option<String>,
    pub client_id: Option<TextMatch>,
    /// A client without a user name matches no user name query.
    pub username: Option<TextMatch>,
    pub state: Option<ConnState>,
}

impl ClientQuery {
    fn admits_key(&self, key: &SessionKey) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|namespace| namespace == key.namespace)
            && self
                .client_id
                .as_ref()
                .is_none_or(|wanted| wanted.matches(&key.client_id))
    }
}

impl Broker {
    /// The clients that `query` admits: every session a client opened in this run (a
    /// session restored from the store is listed once a client resumes it), connected or
    /// outliving its connection, ordered by when they connected, then by namespace and
    /// client id, so that a page of it stays where it was while clients come and go.
    pub fn clients(&self, query: &ClientQuery) -> Vec<ClientSnapshot> {
        let cells: Vec<Arc<SessionCell>> = self
            .registry
            .lock()
            .iter()
            .filter(|(key, _)| query.admits_key(key))
            .map(|(_, cell)| cell.clone())
            .collect();
        let mut found: Vec<ClientSnapshot> = cells
            .iter()
            .filter_map(|cell| self.snapshot(cell))
            .filter(|client| {
                query.state.is_none_or(|state| state == client.state)
                    && query.username.as_ref().is_none_or(|wanted| {
                        client
                            .username
                            .as_deref()
                            .is_some_and(|name| wanted.matches(name))
                    })
            })
            .collect();
        found.sort_by(|a, b| {
            (a.connected_at, a.key.namespace, &a.key.client_id).cmp(&(
                b.connected_at,
                b.key.namespace,
                &b.key.client_id,
            ))
        });
        found
    }

    /// The client of session `key`, if a client opened it in this run.
    pub fn client(&self, key: &SessionKey) -> Option<ClientSnapshot> {
        let cell = self.session(key)?;
        self.snapshot(&cell)
    }

    /// The subscriptions of session `key`, ordered by filter; `None` when there is no such
    /// session.
    pub fn client_subscriptions(&self, key: &SessionKey) -> Option<Vec<SubscriptionSnapshot>> {
        let cell = self.session(key)?;
        let mut subscriptions: Vec<SubscriptionSnapshot> = cell
            .state
            .lock()
            .subscriptions
            .iter()
            .map(SubscriptionSnapshot::of)
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        Some(subscriptions)
    }

    /// Every subscription of every session a client opened in this run, with its session's
    /// key, ordered by namespace, client id and filter, so that a page of it stays put
    /// while others subscribe. Each session is read under its own lock, one at a time.
    pub fn subscriptions(&self) -> Vec<(SessionKey, SubscriptionSnapshot)> {
        let cells = self.all_sessions();
        let mut found: Vec<(SessionKey, SubscriptionSnapshot)> = Vec::new();
        for cell in &cells {
            let state = cell.state.lock();
            if state.attachment.is_none() {
                continue;
            }
            found.extend(
                state
                    .subscriptions
                    .iter()
                    .map(|entry| (cell.key.clone(), SubscriptionSnapshot::of(entry))),
            );
        }
        found.sort_by(|(a_key, a), (b_key, b)| {
            (a_key.namespace, &a_key.client_id, &a.filter).cmp(&(
                b_key.namespace,
                &b_key.client_id,
                &b.filter,
            ))
        });
        found
    }

    /// What every session holds for its client now, summed, each session read under its
    /// own lock, one at a time.
    pub fn queue_totals(&self) -> QueueTotals {
        let cells = self.all_sessions();
        let mut totals = QueueTotals::default();
        for cell in &cells {
            let state = cell.state.lock();
            let queued = state.queue_len() as u64;
            totals.queued += queued;
            totals.queued_bytes += state.queued_bytes() as u64;
            totals.deepest = totals.deepest.max(queued);
            totals.inflight += state.outgoing_len() as u64;
            totals.awaiting_release += state.awaiting_release_len() as u64;
        }
        totals
    }

    /// Connections attached to a session now, of every protocol.
    pub fn connected_count(&self) -> usize {
        usize::try_from(self.stats.connections.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    /// Kicks the client of session `key` out and ends the session, as EMQX's
    /// `DELETE /clients/{clientid}` does: a connection attached is told to close with
    /// 0x98 (administrative action), which each adapter says in its protocol's terms
    /// (MQTT 5 DISCONNECT 0x98, MQTT 3.1.1 the close alone, an MQTT-SN DISCONNECT, a STOMP
    /// ERROR, a CoAP peer or LwM2M registration forgotten), and the session is discarded
    /// whatever its expiry, with its queue and stored state: the client starts anew when it
    /// comes back. Its will is published now, since the session ends (EMQX publishes it on
    /// a kick too). A session outliving its connection is discarded the same way. Returns
    /// whether there was a session.
    pub fn kick(&self, key: &SessionKey, now: Instant) -> bool {
        let Some(session) = self.registry.lock().remove(key) else {
            return false;
        };
        let (will, closed) = self.finish_session(&session, ReasonCode::ADMINISTRATIVE_ACTION);
        tracing::info!(
            namespace = key.namespace,
            client_id = %key.client_id,
            connected = closed.is_some(),
            "client kicked out and its session discarded"
        );
        if let Some(attachment) = closed {
            self.announce_departure(key, &attachment, DisconnectReason::Kicked, now);
        }
        if let Some(will) = will {
            self.publish_will(will, key, now);
        }
        true
    }

    /// Kicks out, as [`Broker::kick`] does, every client connected now that the banned
    /// list names (a ban made or a banned list read again): a ban refuses new sessions in
    /// the session layer, and this ends the ones open before it. Returns how many.
    pub fn kick_banned(&self, wall_now: SystemTime, now: Instant) -> usize {
        let cells = self.all_sessions();
        let named: Vec<SessionKey> = cells
            .iter()
            .filter(|cell| {
                let state = cell.state.lock();
                state.is_connected()
                    && state
                        .attachment
                        .as_deref()
                        .is_some_and(|held| self.banned.check(&held.client, wall_now).is_some())
            })
            .map(|cell| cell.key.clone())
            .collect();
        named.iter().filter(|key| self.kick(key, now)).count()
    }

    /// Every session's handle, taken under the registry's lock, so that each session can
    /// then be read under its own lock with the registry's released.
    fn all_sessions(&self) -> Vec<Arc<SessionCell>> {
        self.registry.lock().values().cloned().collect()
    }

    fn snapshot(&self, cell: &SessionCell) -> Option<ClientSnapshot> {
        let state = cell.state.lock();
        let attachment = state.attachment.as_deref()?;
        Some(self.snapshot_of(&cell.key, &state, attachment))
    }

    fn snapshot_of(
        &self,
        key: &SessionKey,
        state: &SessionState,
        attachment: &Attachment,
    ) -> ClientSnapshot {
        let at_ms = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let client = &attachment.client;
        let (qos0, full) = state.dropped();
        ClientSnapshot {
            key: key.clone(),
            proto: attachment.proto,
            username: client.username.clone(),
            peer: client.peer,
            listener: client.listener.clone(),
            state: match (state.is_connected(), attachment.asleep) {
                (false, _) => ConnState::Disconnected,
                (true, true) => ConnState::Asleep,
                (true, false) => ConnState::Connected,
            },
            connected_at: at_ms(attachment.connected_at_ms),
            disconnected_at: state
                .disconnected_at
                .filter(|_| !state.is_connected())
                .map(|at| at_ms(self.clock.unix_ms(at))),
            keepalive: attachment.keepalive,
            clean_start: attachment.clean_start,
            expiry_interval: state.expiry_interval,
            subscriptions: state.subscriptions.len(),
            mqueue_len: state.queue_len(),
            mqueue_bytes: state.queued_bytes(),
            mqueue_dropped: qos0 + full,
            inflight: state.outgoing_len(),
            awaiting_rel: state.awaiting_release_len(),
        }
    }
}
