//! One STOMP connection as a sans-io state machine: bytes, broker wake-ups and timer ticks
//! in, with `now`; bytes out. A connection is a session of the unified model in namespace
//! `stomp`; destinations are MQTT topics under the listener's mountpoint.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use bytestring::ByteString;
use gateway_config::{StompNack, StompSharedRedelivery};
use mqtt_core::auth::ClientInfo;
use mqtt_core::broker::{Broker, Stats, WillDisposition};
use mqtt_core::client::{
    ClientSession, ConnectRefused, OpenSession, Presented, PublishPermit, PublishRefused,
};
use mqtt_core::clients::{DisconnectReason, ProtoInfo, ProtoVer};
use mqtt_core::codec::{PublishProperties, QoS, ReasonCode, SubscriptionOptions};
use mqtt_core::message::{Delivery, Message as RoutedMessage};
use mqtt_core::mountpoint::mounted_filter;
use mqtt_core::protocol::{CertificateIdentity, Flow};
use mqtt_core::rate::PublishRates;
use mqtt_core::session::{ConnControl, Outgoing, OutgoingState, SessionState, Wakeup};
use mqtt_core::storage::{HeldReplies, Ticket};
use mqtt_core::topic::{parse_subscription, SubscriptionFilter};

use crate::frame::{encode, Command, Decoder, Frame, FrameLimits, Version};
use crate::subscriptions::{AckMode, SessionSubscriptions, StompSubscription};

/// The namespace of STOMP sessions: a STOMP "dev1" is not the MQTT "dev1".
pub const STOMP_NAMESPACE: &str = "stomp";

/// The channel stops pulling deliveries once this much output waits.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// The shortest heart-beat interval the server sends or asks for: a client asking for
/// every millisecond would only burn its own connection's time.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// Inbound heart-beats may be this late (network delay, timer slack) before the
/// connection counts as dead.
const HEARTBEAT_GRACE: u32 = 2;

/// Headers of SEND that are the frame's own, not the message's: they do not become
/// user properties.
const FRAME_HEADERS: &[&str] = &[
    "destination",
    "content-length",
    "content-type",
    "transaction",
    "receipt",
];

/// Headers of MESSAGE set by the server; a user property of the same name is not copied.
const MESSAGE_HEADERS: &[&str] = &[
    "destination",
    "message-id",
    "subscription",
    "ack",
    "content-type",
    "content-length",
];

/// What every channel of one listener shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `stomp:tcp:NAME`, `stomp:ssl:NAME` …, as logs and auth rules name the listener.
    pub listener: Arc<str>,
    pub limits: FrameLimits,
    /// May contain `${clientid}` and `${username}`.
    pub mountpoint: Arc<str>,
    pub idle_timeout: Duration,
    /// Seconds; for clients that name their session with `client-id`.
    pub session_expiry_interval: u32,
    pub max_unacked: usize,
    pub nack: StompNack,
    pub shared_redelivery: StompSharedRedelivery,
    pub transaction_timeout: Duration,
    pub max_transactions: usize,
    pub max_transaction_frames: usize,
    pub max_transaction_bytes: usize,
    /// What one client may publish: the listener's `messages_rate` and `bytes_rate`.
    pub rates: PublishRates,
}

impl Settings {
    /// `listener_mountpoint` replaces the gateway's when it is not empty; `rates` are the
    /// listener's.
    pub fn from_config(
        listener: Arc<str>,
        config: &gateway_config::StompConfig,
        listener_mountpoint: &str,
        rates: PublishRates,
    ) -> Settings {
        let mountpoint = Arc::from(if listener_mountpoint.is_empty() {
            config.mountpoint.as_str()
        } else {
            listener_mountpoint
        });
        Settings {
            listener,
            limits: FrameLimits {
                max_headers: config.frame.max_headers as usize,
                max_headers_length: config.frame.max_headers_length as usize,
                max_body_length: config.frame.max_body_length as usize,
            },
            mountpoint,
            idle_timeout: config.idle_timeout.get(),
            session_expiry_interval: u32::try_from(config.session_expiry_interval.get().as_secs())
                .unwrap_or(u32::MAX),
            max_unacked: config.max_unacked as usize,
            nack: config.nack,
            shared_redelivery: config.shared_redelivery,
            transaction_timeout: config.transaction_timeout.get(),
            max_transactions: config.max_transactions as usize,
            max_transaction_frames: config.max_transaction_frames as usize,
            max_transaction_bytes: config.max_transaction_bytes as usize,
            rates,
        }
    }
}

/// A MESSAGE sent on a subscription that wants acknowledgements, not acknowledged yet.
/// The delivery itself waits in the session's outgoing window under `packet_id` (stored
/// there for a persistent session), once for all the subscriptions it was sent to.
#[derive(Debug)]
struct Unacked {
    ack_id: String,
    identifier: u32,
    packet_id: u16,
    message: Arc<RoutedMessage>,
}

/// Why a frame is refused: the text of the ERROR frame's `message` header. The
/// connection is closed after it (STOMP 1.2: "the server MUST then close the connection").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StompError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] crate::frame::FrameError),
    #[error("Not connected")]
    NotConnected,
    #[error("already connected")]
    AlreadyConnected,
    #[error("Supported protocol versions are 1.0,1.1,1.2")]
    UnsupportedVersion,
    #[error("Login Failed: {0}")]
    LoginFailed(&'static str),
    /// Another user's session, or a mountpoint the client's values would widen.
    #[error("{0}")]
    ConnectRefused(ConnectRefused),
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
    #[error("invalid destination {0}")]
    InvalidDestination(String),
    #[error("not authorized for {0}")]
    NotAuthorized(String),
    #[error("subscription id {0} is in use for another destination")]
    SubscriptionIdInUse(String),
    #[error("destination {0} is already subscribed under another id")]
    DestinationSubscribed(String),
    #[error("subscription refused: {0}")]
    SubscriptionRefused(String),
    #[error("no subscription {0}")]
    UnknownSubscription(String),
    #[error("no unacknowledged message {0}")]
    UnknownAck(String),
    #[error("transaction {0} is already open")]
    TransactionOpen(String),
    #[error("no open transaction {0}")]
    UnknownTransaction(String),
    #[error("more than {0} transactions open")]
    TooManyTransactions(usize),
    #[error("more than {0} frames in a transaction")]
    TransactionFull(usize),
    #[error("more than {0} bytes in a transaction (max_transaction_bytes)")]
    TransactionTooLarge(usize),
    #[error("{0} frames come from the server only")]
    ServerFrame(Command),
    /// The broker's store has reached its size: a message sent for a receipt could not
    /// be kept, so the receipt cannot be given.
    #[error("message refused: the store is full")]
    StoreFull,
    /// The broker ends the connection: the MQTT reason code it gives says why.
    #[error("{}", closed_by_broker(*.0))]
    ClosedByBroker(ReasonCode),
}

/// The ERROR text for a connection the broker ends with `reason`.
fn closed_by_broker(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::SESSION_TAKEN_OVER => "session taken over by another connection",
        ReasonCode::ADMINISTRATIVE_ACTION => "kicked out by the administrator",
        ReasonCode::QUOTA_EXCEEDED => "closed for taking no messages while they piled up",
        _ => "closed by the server",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connected,
    /// DISCONNECT or an ERROR was answered; input is ignored until the close.
    Closing,
}

struct Transaction {
    begun: Instant,
    frames: Vec<Frame>,
    /// Bodies and headers of `frames`: what the transaction keeps in memory until COMMIT.
    bytes: usize,
}

pub struct StompChannel {
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    peer: Option<SocketAddr>,
    control: Arc<ConnControl>,
    decoder: Decoder,
    phase: Phase,
    version: Version,
    accepted: Instant,
    seed: u64,
    client: Option<ClientSession>,
    /// The session outlives the connection (the client named it with `client-id`).
    persistent: bool,
    subscriptions: SessionSubscriptions,
    next_message_id: u64,
    unacked: VecDeque<Unacked>,
    held_receipts: HeldReplies<String>,
    transactions: HashMap<String, Transaction>,
    /// Inbound silence allowed, grace included; None = no heart-beats expected.
    heartbeat_in: Option<Duration>,
    heartbeat_out: Option<Duration>,
    last_received: Instant,
    last_sent: Instant,
    draining: bool,
    /// What a verified client certificate says, boxed since most connections have none;
    /// it replaces CONNECT's `login` and `client-id` where it names them.
    certificate: Option<Box<CertificateIdentity>>,
    /// Why the connection ends, once known: the client's DISCONNECT, its silence.
    ending: Option<DisconnectReason>,
}

impl StompChannel {
    pub fn new(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
        wakeup: Arc<dyn Wakeup>,
        seed: u64,
        now: Instant,
    ) -> StompChannel {
        let control = ConnControl::new(broker.next_connection_id(), wakeup);
        StompChannel {
            decoder: Decoder::new(settings.limits),
            broker,
            settings,
            peer,
            control,
            phase: Phase::AwaitingConnect,
            version: Version::V1_0,
            accepted: now,
            seed,
            client: None,
            persistent: false,
            subscriptions: SessionSubscriptions::default(),
            next_message_id: 1,
            unacked: VecDeque::new(),
            held_receipts: HeldReplies::default(),
            transactions: HashMap::new(),
            heartbeat_in: None,
            heartbeat_out: None,
            last_received: now,
            last_sent: now,
            draining: false,
            certificate: None,
            ending: None,
        }
    }

    /// The channel of a client whose TLS layer verified a certificate naming it: its user
    /// name and client id, as the listener's `peer_cert_as_username` and
    /// `peer_cert_as_clientid` took them, replace what CONNECT says.
    pub fn with_certificate_identity(mut self, identity: CertificateIdentity) -> StompChannel {
        let names_someone = identity.username.is_some() || identity.client_id.is_some();
        self.certificate = names_someone.then(|| Box::new(identity));
        self
    }

    pub fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, now: Instant) -> Flow {
        self.last_received = now;
        while self.accepts_input(now) {
            if self.phase == Phase::Closing {
                input.clear();
                return self.finish_closing(out, now);
            }
            let frame = match self.decoder.decode(input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    input.clear();
                    return self.refuse(StompError::Malformed(error), None, out, now);
                }
            };
            let receipt = frame.header("receipt").map(str::to_owned);
            match self.handle_frame(frame, out, now) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => return Flow::Close,
                Err(error) => return self.refuse(error, receipt.as_deref(), out, now),
            }
        }
        self.release_held_receipts(out, now);
        self.fill(out, now);
        Flow::Continue
    }

    pub fn handle_wakeup(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        if let Some(reason) = self.control.close_requested() {
            tracing::info!(
                reason = reason.0,
                "client taken over or closed by the broker"
            );
            if self.phase == Phase::Connected {
                return self.refuse(StompError::ClosedByBroker(reason), None, out, now);
            }
            return Flow::Close;
        }
        if self.phase == Phase::Closing {
            return self.finish_closing(out, now);
        }
        self.release_held_receipts(out, now);
        self.fill(out, now);
        Flow::Continue
    }

    pub fn handle_timeout(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        match self.phase {
            Phase::AwaitingConnect => {
                if now >= self.accepted + self.settings.idle_timeout {
                    tracing::info!("connection closed: no CONNECT within idle_timeout");
                    return Flow::Close;
                }
            }
            Phase::Connected => {
                // Asked before the pause is ended below: a pause that ends now still kept
                // the client unread until now.
                let paused = self.client.as_ref().and_then(ClientSession::paused_until);
                if paused.is_some() || !self.accepts_input(now) {
                    // Silence is ours while nothing is read: heart-beats may be waiting.
                    self.last_received = now;
                }
                if let Some(client) = &self.client {
                    // A rate pause ends by time: the driver feeds what waits once this
                    // says it accepts input again.
                    client.handle_timeout(now);
                }
                if let Some(allowed) = self.heartbeat_in {
                    if now >= self.last_received + allowed {
                        tracing::info!(
                            silent_ms = allowed.as_millis() as u64,
                            "connection closed: no heart-beat from the client"
                        );
                        self.ending = Some(DisconnectReason::KeepaliveTimeout);
                        return Flow::Close;
                    }
                }
                if let Some(every) = self.heartbeat_out {
                    if now >= self.last_sent + every {
                        out.extend_from_slice(b"\n");
                        self.last_sent = now;
                    }
                }
                let timeout = self.settings.transaction_timeout;
                self.transactions.retain(|name, transaction| {
                    let alive = now < transaction.begun + timeout;
                    if !alive {
                        tracing::info!(transaction = %name, "transaction timed out and aborted");
                    }
                    alive
                });
            }
            Phase::Closing => return self.finish_closing(out, now),
        }
        self.fill(out, now);
        Flow::Continue
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingConnect => Some(self.accepted + self.settings.idle_timeout),
            Phase::Connected => [
                self.heartbeat_in
                    .map(|allowed| self.last_received + allowed),
                self.heartbeat_out.map(|every| self.last_sent + every),
                self.transactions
                    .values()
                    .map(|t| t.begun + self.settings.transaction_timeout)
                    .min(),
                self.client.as_ref().and_then(ClientSession::paused_until),
            ]
            .into_iter()
            .flatten()
            .min(),
            Phase::Closing => None,
        }
    }

    pub fn wants_drain(&self) -> bool {
        self.draining
    }

    /// False while a receiver of this client's messages is behind, or the client went
    /// over its publish rates: frames wait unread (in the input and the socket) until the
    /// client is let go, a wake-up, or its pause ends, a deadline.
    pub fn accepts_input(&self, now: Instant) -> bool {
        match &self.client {
            Some(client) => !client.is_held_back(now),
            None => !self.control.is_held_back(),
        }
    }

    /// The listener is shutting down: the client is told why before the close.
    pub fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        if self.phase == Phase::Connected {
            let frame = Frame::new(Command::Error).with_header("message", "server shutting down");
            self.send(&frame, out, self.last_sent);
        }
        self.phase = Phase::Closing;
        Flow::Close
    }

    /// Hands the session back: messages sent and not acknowledged go back to the front of
    /// its queue, in order, for the session's next connection. Those of a shared
    /// subscription go to another member of its group instead when `shared_redelivery`
    /// says so or the session ends now, together with the ones still queued.
    pub fn handle_closed(&mut self, now: Instant) {
        let Some(client) = self.client.take() else {
            return;
        };
        let session = client.session().clone();
        self.unacked.clear();
        let mut leaving = Vec::new();
        {
            let mut state = session.state.lock();
            // A connection that took the session over keeps everything, the outgoing
            // window included: it is the new connection's now.
            let attached = state
                .connection
                .as_ref()
                .is_some_and(|connection| connection.conn_id == self.control.conn_id);
            if attached {
                recall_sent(&mut state);
            }
            let to_group = attached
                && (self.settings.shared_redelivery == StompSharedRedelivery::Group
                    || !self.persistent);
            if to_group {
                let queued: Vec<Delivery> = std::iter::from_fn(|| state.pop_queued(now)).collect();
                let (shared, others): (Vec<Delivery>, Vec<Delivery>) =
                    queued.into_iter().partition(|delivery| {
                        shared_filter(&self.subscriptions, client.client(), delivery).is_some()
                    });
                leaving = shared;
                for delivery in others.into_iter().rev() {
                    state.unpop_queued(delivery);
                }
            }
        }
        let mut unplaced = Vec::new();
        let mut handed = Vec::new();
        for delivery in leaving {
            let Some(filter) = shared_filter(&self.subscriptions, client.client(), &delivery)
            else {
                continue;
            };
            let kept = delivery.clone();
            match client.redispatch_shared(&filter, delivery) {
                Ok(()) => handed.push(kept),
                Err(delivery) => unplaced.push(delivery),
            }
        }
        if !unplaced.is_empty() || !handed.is_empty() {
            let mut state = session.state.lock();
            // The member that took a message keeps it now, in its own session.
            for delivery in &handed {
                state.forget_stored(delivery);
            }
            for delivery in unplaced.into_iter().rev() {
                state.unpop_queued(delivery);
            }
        }
        let reason = self.ending.unwrap_or(DisconnectReason::SockClosed);
        client.close_because(WillDisposition::Discard, reason, now);
        tracing::debug!("session released");
    }

    pub fn client_id(&self) -> Option<&str> {
        self.client.as_ref().map(|client| &**client.client_id())
    }

    /// Sends an ERROR frame for `error` and closes.
    fn refuse(
        &mut self,
        error: StompError,
        receipt: Option<&str>,
        out: &mut BytesMut,
        now: Instant,
    ) -> Flow {
        // What was kept before the error still gets its receipt.
        self.release_held_receipts(out, now);
        tracing::info!(%error, "ERROR sent, connection closed");
        // Nothing of them will be committed: their memory need not wait for the close.
        self.transactions.clear();
        let mut frame = Frame::new(Command::Error)
            .with_header("message", error.to_string())
            .with_header("content-type", "text/plain");
        if error == StompError::UnsupportedVersion {
            frame = frame.with_header("version", "1.0,1.1,1.2");
        }
        if let Some(receipt) = receipt {
            frame = frame.with_header("receipt-id", receipt);
        }
        self.send(&frame, out, now);
        self.phase = Phase::Closing;
        Flow::Close
    }

    fn send(&mut self, frame: &Frame, out: &mut BytesMut, now: Instant) {
        encode(frame, self.version, out);
        self.last_sent = now;
    }

    /// Answers a frame's `receipt` header once what the frame changed is durable
    /// (`ticket`) and every earlier RECEIPT has gone.
    fn receipt(&mut self, frame: &Frame, ticket: Option<Ticket>, out: &mut BytesMut, now: Instant) {
        let Some(receipt_id) = frame.header("receipt") else {
            return;
        };
        let control = &self.control;
        if let Some(receipt_id) = self.held_receipts.hold(
            receipt_id.to_owned(),
            ticket,
            self.broker.store().as_ref(),
            || control.wakeup(),
        ) {
            let reply = Frame::new(Command::Receipt).with_header("receipt-id", receipt_id);
            self.send(&reply, out, now);
        }
    }

    fn release_held_receipts(&mut self, out: &mut BytesMut, now: Instant) {
        while let Some(receipt_id) = self.held_receipts.pop_due(self.broker.store().as_ref()) {
            let reply = Frame::new(Command::Receipt).with_header("receipt-id", receipt_id);
            self.send(&reply, out, now);
        }
    }

    /// After DISCONNECT: the connection closes once its last RECEIPT has gone.
    fn finish_closing(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        self.release_held_receipts(out, now);
        if self.held_receipts.is_empty() {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    fn handle_frame(
        &mut self,
        frame: Frame,
        out: &mut BytesMut,
        now: Instant,
    ) -> Result<Flow, StompError> {
        match (self.phase, frame.command) {
            (Phase::AwaitingConnect, Command::Connect | Command::Stomp) => {
                self.connect(&frame, out, now)?;
                return Ok(Flow::Continue);
            }
            (Phase::AwaitingConnect, _) => return Err(StompError::NotConnected),
            (_, Command::Connect | Command::Stomp) => return Err(StompError::AlreadyConnected),
            _ => {}
        }
        let mut ticket = None;
        match frame.command {
            Command::Send | Command::Ack | Command::Nack => {
                if let Some(name) = frame.header("transaction") {
                    let limit = self.settings.max_transaction_frames;
                    let transaction = self
                        .transactions
                        .get_mut(name)
                        .ok_or_else(|| StompError::UnknownTransaction(name.to_owned()))?;
                    if transaction.frames.len() >= limit {
                        return Err(StompError::TransactionFull(limit));
                    }
                    let max_bytes = self.settings.max_transaction_bytes;
                    let bytes = transaction.bytes.saturating_add(held_bytes(&frame));
                    if bytes > max_bytes {
                        return Err(StompError::TransactionTooLarge(max_bytes));
                    }
                    transaction.bytes = bytes;
                    // Its RECEIPT says it is in the transaction; COMMIT's says it happened.
                    let receipt = frame.clone();
                    transaction.frames.push(frame);
                    self.receipt(&receipt, None, out, now);
                    return Ok(Flow::Continue);
                }
                let permit = match frame.command {
                    Command::Send => {
                        Some(self.permit_send(&frame, frame.header("receipt").is_some())?)
                    }
                    _ => None,
                };
                ticket = self.apply(&frame, permit, now)?;
            }
            Command::Subscribe => ticket = self.subscribe(&frame, now)?,
            Command::Unsubscribe => ticket = self.unsubscribe(&frame)?,
            Command::Begin => {
                let name = required(&frame, "transaction")?;
                if self.transactions.contains_key(name) {
                    return Err(StompError::TransactionOpen(name.to_owned()));
                }
                if self.transactions.len() >= self.settings.max_transactions {
                    return Err(StompError::TooManyTransactions(
                        self.settings.max_transactions,
                    ));
                }
                self.transactions.insert(
                    name.to_owned(),
                    Transaction {
                        begun: now,
                        frames: Vec::new(),
                        bytes: 0,
                    },
                );
            }
            Command::Commit => {
                let name = required(&frame, "transaction")?;
                let transaction = self
                    .transactions
                    .remove(name)
                    .ok_or_else(|| StompError::UnknownTransaction(name.to_owned()))?;
                let durable_receipt = frame.header("receipt").is_some();
                // Every SEND is checked before any is published: a refused one leaves the
                // whole transaction unpublished.
                let permits = transaction
                    .frames
                    .iter()
                    .map(|held| {
                        (held.command == Command::Send)
                            .then(|| self.permit_send(held, durable_receipt))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for (held, permit) in transaction.frames.iter().zip(permits) {
                    let applied = self.apply(held, permit, now)?;
                    ticket = ticket.max(applied);
                }
            }
            Command::Abort => {
                let name = required(&frame, "transaction")?;
                self.transactions
                    .remove(name)
                    .ok_or_else(|| StompError::UnknownTransaction(name.to_owned()))?;
            }
            Command::Disconnect => {
                // Everything before it has been handled and kept: the receipt says so.
                self.receipt(&frame, None, out, now);
                tracing::info!("client disconnected");
                self.ending = Some(DisconnectReason::Normal);
                self.phase = Phase::Closing;
                return Ok(self.finish_closing(out, now));
            }
            command @ (Command::Connected
            | Command::Message
            | Command::Receipt
            | Command::Error
            | Command::Connect
            | Command::Stomp) => return Err(StompError::ServerFrame(command)),
        }
        self.receipt(&frame, ticket, out, now);
        Ok(Flow::Continue)
    }

    /// SEND (with its permit), ACK and NACK, at once or at their transaction's COMMIT.
    /// Returns the store ticket a receipt waits for.
    fn apply(
        &mut self,
        frame: &Frame,
        permit: Option<PublishPermit>,
        now: Instant,
    ) -> Result<Option<Ticket>, StompError> {
        match (frame.command, permit) {
            (Command::Send, Some(permit)) => self.publish(frame, permit, now),
            (Command::Ack, _) => self.acknowledge(frame, false).map(|()| None),
            (Command::Nack, _) => self.acknowledge(frame, true).map(|()| None),
            _ => Ok(None),
        }
    }

    // ---- connect -------------------------------------------------------------------------

    fn connect(
        &mut self,
        frame: &Frame,
        out: &mut BytesMut,
        now: Instant,
    ) -> Result<(), StompError> {
        let version = match frame.header("accept-version") {
            None => Version::V1_0,
            Some(list) => list
                .split(',')
                .filter_map(Version::parse)
                .max()
                .ok_or(StompError::UnsupportedVersion)?,
        };
        self.version = version;
        self.decoder.set_version(version);
        let named = frame
            .header("client-id")
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        // Naming a session is what asks for it to outlive the connection, whichever name
        // it then gets.
        let persistent = named.is_some() && self.settings.session_expiry_interval > 0;
        let certificate = self.certificate.take().map(|identity| *identity);
        let (certified_username, certified_client_id) = certificate
            .map(|identity| (identity.username, identity.client_id))
            .unwrap_or_default();
        let client_id = certified_client_id
            .or(named)
            .unwrap_or_else(|| format!("stomp-{:016x}", self.seed));
        let presented = Presented {
            protocol: STOMP_NAMESPACE,
            listener: self.settings.listener.clone(),
            client_id: Arc::from(client_id.as_str()),
            username: certified_username.or_else(|| frame.header("login").map(str::to_owned)),
            password: frame
                .header("passcode")
                .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
            peer: self.peer,
            mountpoint: self.settings.mountpoint.clone(),
            mountpoint_values: Vec::new(),
        };
        let who = self
            .broker
            .authenticate(presented)
            .map_err(|refused| connect_error(refused, &client_id))?;
        let (heartbeat_out, heartbeat_in) = negotiate_heartbeat(frame.header("heart-beat"))?;
        let client = self
            .broker
            .open_session(
                who,
                OpenSession {
                    clean_start: !persistent,
                    expiry_interval: if persistent {
                        self.settings.session_expiry_interval
                    } else {
                        0
                    },
                    will: None,
                    control: self.control.clone(),
                    rates: self.settings.rates,
                    proto: ProtoInfo {
                        name: "STOMP",
                        version: ProtoVer::Text(version.as_str()),
                    },
                    // What the client sends, in whole seconds, rounded up.
                    keepalive: heartbeat_in.map_or(0, |every| {
                        u32::try_from(every.as_millis().div_ceil(1000)).unwrap_or(u32::MAX)
                    }),
                    announce: true,
                },
                now,
            )
            .map_err(|refused| connect_error(refused, &client_id))?;
        if client.session_present() {
            let mut state = client.session().state.lock();
            self.subscriptions = resumed_subscriptions(&mut state);
            recall_sent(&mut state);
        }
        tracing::Span::current().record("client_id", client_id.as_str());
        tracing::info!(
            version = version.as_str(),
            session_present = client.session_present(),
            "client connected"
        );
        self.client = Some(client);
        self.persistent = persistent;
        self.phase = Phase::Connected;
        self.heartbeat_out = heartbeat_out;
        self.heartbeat_in = heartbeat_in.map(|every| every * HEARTBEAT_GRACE);
        let millis = |d: Option<Duration>| d.map_or(0, |d| d.as_millis());
        let connected = Frame::new(Command::Connected)
            .with_header("version", version.as_str())
            .with_header("server", concat!("gateway/", env!("CARGO_PKG_VERSION")))
            .with_header("session", client_id)
            .with_header(
                "heart-beat",
                format!("{},{}", millis(heartbeat_out), millis(heartbeat_in)),
            );
        self.send(&connected, out, now);
        Ok(())
    }

    fn connected(&self) -> Result<&ClientSession, StompError> {
        self.client.as_ref().ok_or(StompError::NotConnected)
    }

    // ---- send ----------------------------------------------------------------------------

    /// Checks a SEND for publishing at QoS 1 (as far as the broker allows), so persistent
    /// sessions keep it. With the store full, a SEND whose receipt would promise that is
    /// refused, and one without a receipt, promised nothing, goes at QoS 0 and is stored
    /// nowhere.
    fn permit_send(
        &self,
        frame: &Frame,
        durable_receipt: bool,
    ) -> Result<PublishPermit, StompError> {
        let destination = required(frame, "destination")?;
        let client = self.connected()?;
        let qos = QoS::from_u8(self.broker.config.max_qos_allowed.min(1)).unwrap_or_default();
        let permitted = match client.permit(destination, qos, false) {
            Err(PublishRefused::StoreFull) if !durable_receipt => {
                client.permit(destination, QoS::AtMostOnce, false)
            }
            permitted => permitted,
        };
        permitted.map_err(|refused| match refused {
            PublishRefused::Invalid(..) => StompError::InvalidDestination(destination.to_owned()),
            PublishRefused::SysTopic | PublishRefused::NotAuthorized => {
                StompError::NotAuthorized(destination.to_owned())
            }
            PublishRefused::StoreFull => StompError::StoreFull,
        })
    }

    /// Publishes a permitted SEND; returns the store ticket its receipt waits for.
    fn publish(
        &mut self,
        frame: &Frame,
        permit: PublishPermit,
        now: Instant,
    ) -> Result<Option<Ticket>, StompError> {
        let client = self.connected()?;
        let mut properties = PublishProperties {
            content_type: frame.header("content-type").map(str::to_owned),
            ..PublishProperties::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in &frame.headers {
            if FRAME_HEADERS.contains(&name.as_str()) || seen.contains(&name.as_str()) {
                continue;
            }
            seen.push(name);
            properties
                .user_properties
                .push((name.clone(), value.clone()));
        }
        Ok(client
            .publish_permitted(permit, frame.body.clone(), properties.into(), now)
            .ticket)
    }

    // ---- subscriptions -------------------------------------------------------------------

    /// Returns the store ticket a RECEIPT waits for.
    fn subscribe(&mut self, frame: &Frame, now: Instant) -> Result<Option<Ticket>, StompError> {
        let destination = required(frame, "destination")?;
        // 1.0 made the id optional; the destination then names the subscription.
        let id = match (frame.header("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => destination,
            (None, _) => return Err(StompError::MissingHeader("id")),
        };
        let ack = match frame.header("ack") {
            None => AckMode::Auto,
            Some(text) => AckMode::parse(text).ok_or(StompError::InvalidHeader("ack"))?,
        };
        self.connected()?;
        if let Some(existing) = self.subscriptions.subscriptions.iter().find(|s| s.id == id) {
            if existing.destination != destination {
                return Err(StompError::SubscriptionIdInUse(id.to_owned()));
            }
        } else if self
            .subscriptions
            .subscriptions
            .iter()
            .any(|s| s.destination == destination)
        {
            return Err(StompError::DestinationSubscribed(destination.to_owned()));
        }
        let identifier = match self.subscriptions.subscriptions.iter().find(|s| s.id == id) {
            Some(existing) => existing.identifier,
            None => {
                self.subscriptions.next_identifier =
                    self.subscriptions.next_identifier.wrapping_add(1).max(1);
                self.subscriptions.next_identifier
            }
        };
        // Acknowledged subscriptions take QoS 1, so the session queue never drops their
        // messages to make room.
        let qos = match ack {
            AckMode::Auto => QoS::AtMostOnce,
            AckMode::Client | AckMode::ClientIndividual => QoS::AtLeastOnce,
        };
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        match self
            .connected()?
            .subscribe(destination, options, Some(identifier), now)
        {
            Ok(_) => {}
            Err(reason) if reason == ReasonCode::NOT_AUTHORIZED => {
                return Err(StompError::NotAuthorized(destination.to_owned()))
            }
            Err(reason) if reason == ReasonCode::TOPIC_FILTER_INVALID => {
                return Err(StompError::InvalidDestination(destination.to_owned()))
            }
            Err(reason) => {
                return Err(StompError::SubscriptionRefused(format!(
                    "reason code 0x{:02x}",
                    reason.0
                )))
            }
        }
        let subscription = StompSubscription {
            id: id.to_owned(),
            destination: destination.to_owned(),
            ack,
            identifier,
        };
        match self
            .subscriptions
            .subscriptions
            .iter_mut()
            .find(|s| s.id == id)
        {
            Some(existing) => *existing = subscription,
            None => self.subscriptions.subscriptions.push(subscription),
        }
        tracing::debug!(id, destination, ack = ack.as_str(), "subscribed");
        Ok(self.remember_subscriptions())
    }

    fn unsubscribe(&mut self, frame: &Frame) -> Result<Option<Ticket>, StompError> {
        let id = match (frame.header("id"), self.version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => required(frame, "destination")?,
            (None, _) => return Err(StompError::MissingHeader("id")),
        };
        self.connected()?;
        let Some(at) = self
            .subscriptions
            .subscriptions
            .iter()
            .position(|s| s.id == id)
        else {
            // As EMQX: an unknown id is not an error, its RECEIPT still comes.
            return Ok(None);
        };
        let removed = self.subscriptions.subscriptions.remove(at);
        self.connected()?.unsubscribe(&removed.destination);
        // Nobody can acknowledge them any more.
        let (gone, kept): (Vec<Unacked>, Vec<Unacked>) = std::mem::take(&mut self.unacked)
            .into_iter()
            .partition(|unacked| unacked.identifier == removed.identifier);
        self.unacked = kept.into();
        self.settle(gone, false);
        Ok(self.remember_subscriptions())
    }

    /// Returns the store's ticket for them (which covers the core's record of the
    /// subscription too, written before), when the session is persistent.
    fn remember_subscriptions(&self) -> Option<Ticket> {
        let client = self.client.as_ref()?;
        let mut state = client.session().state.lock();
        state.extension.set(self.subscriptions.clone());
        state.keep_adapter_state(self.subscriptions.encode())
    }

    // ---- acknowledgements ----------------------------------------------------------------

    fn acknowledge(&mut self, frame: &Frame, negative: bool) -> Result<(), StompError> {
        // 1.2 names the MESSAGE's `ack` header in `id`; 1.0 and 1.1 name its message-id.
        let ack_id = match self.version {
            Version::V1_2 => frame.header("id").or_else(|| frame.header("message-id")),
            _ => frame.header("message-id").or_else(|| frame.header("id")),
        }
        .ok_or(StompError::MissingHeader("id"))?;
        let at = self
            .unacked
            .iter()
            .position(|u| u.ack_id == ack_id)
            .ok_or_else(|| StompError::UnknownAck(ack_id.to_owned()))?;
        let identifier = self.unacked.get(at).map_or(0, |u| u.identifier);
        let cumulative = self
            .subscriptions
            .subscriptions
            .iter()
            .any(|s| s.identifier == identifier && s.ack == AckMode::Client);
        // In client mode an (N)ACK covers every earlier message of the same subscription.
        let mut settled = Vec::new();
        let mut kept = VecDeque::with_capacity(self.unacked.len());
        for (index, unacked) in std::mem::take(&mut self.unacked).into_iter().enumerate() {
            let covered = if cumulative {
                index <= at && unacked.identifier == identifier
            } else {
                index == at
            };
            if covered {
                settled.push(unacked);
            } else {
                kept.push_back(unacked);
            }
        }
        self.unacked = kept;
        let redeliver = negative && self.settings.nack == StompNack::Redeliver;
        self.settle(settled, redeliver);
        Ok(())
    }

    // ---- deliveries ----------------------------------------------------------------------

    /// Sends queued deliveries while output has room and the unacknowledged window is not full.
    fn fill(&mut self, out: &mut BytesMut, now: Instant) {
        self.draining = false;
        let Some(session) = self.client.as_ref().map(|c| c.session().clone()) else {
            return;
        };
        if self.phase != Phase::Connected {
            return;
        }
        loop {
            if out.len() >= OUTPUT_HIGH_WATER {
                self.draining = session.state.lock().has_queued();
                return;
            }
            if self.unacked.len() >= self.settings.max_unacked {
                return;
            }
            let Some(delivery) = session.state.lock().pop_queued(now) else {
                return;
            };
            self.deliver(delivery, out, now);
        }
    }

    /// Sends one delivery to each of its subscriptions. Those that want acknowledgements
    /// leave it in the session's outgoing window until the last of them is settled, so a
    /// persistent session keeps it in the store meanwhile; otherwise it is done with.
    fn deliver(&mut self, delivery: Delivery, out: &mut BytesMut, now: Instant) {
        let Some(client) = self.client.as_ref() else {
            return;
        };
        let destination = client.client().unmount(&delivery.message.topic);
        let session = client.session().clone();
        let mut awaiting = Vec::new();
        for &identifier in &delivery.subscription_ids {
            let Some(subscription) = self
                .subscriptions
                .subscriptions
                .iter()
                .find(|s| s.identifier == identifier)
                .cloned()
            else {
                // Unsubscribed after the message was queued.
                continue;
            };
            let message_id = self.next_message_id.to_string();
            self.next_message_id += 1;
            let frame = message_frame(&delivery, &destination, &subscription, &message_id);
            self.send(&frame, out, now);
            Stats::add(&self.broker.stats.messages_sent, 1);
            if subscription.ack != AckMode::Auto {
                awaiting.push((message_id, identifier));
            }
        }
        let mut state = session.state.lock();
        if awaiting.is_empty() {
            state.forget_stored(&delivery);
            return;
        }
        let packet_id = state.allocate_packet_id();
        for (ack_id, identifier) in &awaiting {
            self.unacked.push_back(Unacked {
                ack_id: ack_id.clone(),
                identifier: *identifier,
                packet_id,
                message: delivery.message.clone(),
            });
        }
        state.push_outgoing(Outgoing {
            packet_id,
            delivery: Delivery {
                subscription_ids: awaiting.iter().map(|(_, identifier)| *identifier).collect(),
                ..delivery
            },
            state: OutgoingState::AwaitPubAck,
        });
    }

    /// Ends what `settled` (taken out of `unacked`) held in the outgoing window: a message
    /// none of whose copies still awaits an acknowledgement is deleted, or, when
    /// `redeliver`, queued again at the front for the subscriptions that settled it.
    fn settle(&mut self, settled: Vec<Unacked>, redeliver: bool) {
        let Some(session) = self.client.as_ref().map(|c| c.session().clone()) else {
            return;
        };
        let mut state = session.state.lock();
        let mut requeue = Vec::new();
        let mut done: Vec<u16> = Vec::new();
        for unacked in &settled {
            if done.contains(&unacked.packet_id) {
                continue;
            }
            // After a take-over the window is the new connection's: touch only our own.
            let Some(sent) = state
                .outgoing()
                .find(|out| {
                    out.packet_id == unacked.packet_id
                        && Arc::ptr_eq(&out.delivery.message, &unacked.message)
                })
                .map(|out| out.delivery.clone())
            else {
                continue;
            };
            if self
                .unacked
                .iter()
                .any(|other| other.packet_id == unacked.packet_id)
            {
                // Another subscription still holds the stored message; this one gets a
                // copy that lives in memory only.
                if redeliver {
                    requeue.push(Delivery {
                        subscription_ids: std::iter::once(unacked.identifier).collect(),
                        store_seq: None,
                        ..sent
                    });
                }
                continue;
            }
            done.push(unacked.packet_id);
            if redeliver {
                if let Some(mut delivery) = state.recall_outgoing(unacked.packet_id) {
                    delivery.subscription_ids = settled
                        .iter()
                        .filter(|u| u.packet_id == unacked.packet_id)
                        .map(|u| u.identifier)
                        .collect();
                    requeue.push(delivery);
                }
            } else {
                state.puback(unacked.packet_id);
            }
        }
        for delivery in requeue.into_iter().rev() {
            state.unpop_queued(delivery);
        }
    }
}

/// The subscriptions of a resumed session: as the session holds them, or, after a
/// restart, as its stored record says.
fn resumed_subscriptions(state: &mut SessionState) -> SessionSubscriptions {
    if let Some(kept) = state.extension.get_mut::<SessionSubscriptions>() {
        return kept.clone();
    }
    let Some(record) = state.adapter_state() else {
        return SessionSubscriptions::default();
    };
    match SessionSubscriptions::decode(record) {
        Ok(restored) => {
            state.extension.set(restored.clone());
            restored
        }
        Err(error) => {
            // The core's subscriptions still route; their messages wait unsent until the
            // client subscribes again under some id.
            tracing::warn!(%error, "stored STOMP subscriptions unreadable; starting without them");
            SessionSubscriptions::default()
        }
    }
}

/// The shared subscription a delivery came through, as the router knows it (mounted),
/// or None when it came through a plain one. Shared copies are never merged with
/// others, so such a delivery names exactly one subscription.
fn shared_filter(
    subscriptions: &SessionSubscriptions,
    client: &ClientInfo,
    delivery: &Delivery,
) -> Option<String> {
    let [identifier] = delivery.subscription_ids.as_slice() else {
        return None;
    };
    let subscription = subscriptions
        .subscriptions
        .iter()
        .find(|s| s.identifier == *identifier)?;
    match parse_subscription(&subscription.destination, 0) {
        Ok(SubscriptionFilter::Shared { .. }) => {}
        _ => return None,
    }
    Some(mounted_filter(client.mountpoint.as_ref(), &subscription.destination).into_owned())
}

/// Puts every message a previous connection sent and nobody acknowledged back at the
/// front of the queue, in order: STOMP acknowledges by message ids that die with their
/// connection, so they are sent anew.
fn recall_sent(state: &mut SessionState) {
    let packet_ids: Vec<u16> = state.outgoing().map(|out| out.packet_id).collect();
    let recalled: Vec<_> = packet_ids
        .into_iter()
        .filter_map(|packet_id| state.recall_outgoing(packet_id))
        .collect();
    for delivery in recalled.into_iter().rev() {
        state.unpop_queued(delivery);
    }
}

fn message_frame(
    delivery: &Delivery,
    destination: &ByteString,
    subscription: &StompSubscription,
    message_id: &str,
) -> Frame {
    let message = &delivery.message;
    let mut frame = Frame::new(Command::Message)
        .with_header("subscription", subscription.id.clone())
        .with_header("message-id", message_id)
        .with_header("destination", &**destination);
    if subscription.ack != AckMode::Auto {
        frame = frame.with_header("ack", message_id);
    }
    if let Some(content_type) = &message.properties.content_type {
        frame = frame.with_header("content-type", content_type.clone());
    }
    frame = frame.with_header("content-length", message.payload.len().to_string());
    for (name, value) in &message.properties.user_properties {
        if !MESSAGE_HEADERS.contains(&name.as_str()) {
            frame = frame.with_header(name, value.clone());
        }
    }
    frame.body = message.payload.clone();
    frame
}

/// A refused CONNECT in STOMP's terms: credentials are a failed login, as STOMP brokers
/// say; the rest keeps the session layer's words.
fn connect_error(refused: ConnectRefused, client_id: &str) -> StompError {
    tracing::info!(%refused, client_id, "CONNECT refused");
    match refused {
        ConnectRefused::BadCredentials | ConnectRefused::NotAuthorized => {
            StompError::LoginFailed("authentication failed")
        }
        ConnectRefused::ClientIdInvalid => StompError::InvalidHeader("client-id"),
        refused => StompError::ConnectRefused(refused),
    }
}

/// What a frame held in a transaction keeps in memory, its body and headers.
fn held_bytes(frame: &Frame) -> usize {
    frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .fold(frame.body.len(), usize::saturating_add)
}

fn required<'a>(frame: &'a Frame, name: &'static str) -> Result<&'a str, StompError> {
    frame.header(name).ok_or(StompError::MissingHeader(name))
}

/// The client's `heart-beat: cx,cy` against what the server does: it sends every cy (not
/// more often than [`MIN_HEARTBEAT`]) and expects the client's heart-beats every cx
/// (likewise). Returns (server sends every, server expects every).
fn negotiate_heartbeat(
    header: Option<&str>,
) -> Result<(Option<Duration>, Option<Duration>), StompError> {
    let Some(header) = header else {
        return Ok((None, None));
    };
    let (cx, cy) = header
        .split_once(',')
        .ok_or(StompError::InvalidHeader("heart-beat"))?;
    let parse = |text: &str| -> Result<Option<Duration>, StompError> {
        let millis: u64 = text
            .trim()
            .parse()
            .map_err(|_| StompError::InvalidHeader("heart-beat"))?;
        Ok((millis > 0).then(|| Duration::from_millis(millis).max(MIN_HEARTBEAT)))
    };
    let client_sends = parse(cx)?;
    let client_wants = parse(cy)?;
    Ok((client_wants, client_sends))
}
