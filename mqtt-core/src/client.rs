//! The one client-session path: every adapter authenticates, opens its session, publishes,
//! subscribes and closes through this module, and nothing else reaches the router.
//!
//! The steps are types, so none can be skipped: [`Broker::authenticate`] turns what a client
//! presented into an [`Authenticated`] identity (credentials checked, client id bounded,
//! mountpoint resolved from values that cannot widen it); only that opens a
//! [`ClientSession`] ([`Broker::open_session`], which refuses another owner's session); and
//! only a `ClientSession` publishes, through a [`PublishPermit`] that carries the checks
//! (topic, QoS, retain, `$SYS`, authorization, a full store) into the routing call.
//! `Broker`'s own routing calls are crate-private.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use parking_lot::Mutex;

use crate::auth::{Action, AuthOutcome, ClientInfo, DenyReason};
use crate::broker::{
    Broker, ConnectRequest, Dispatched, Granted, Stats, SubscribeRequest, WillDisposition,
};
use crate::clients::{Attachment, DisconnectReason, ProtoInfo};
use crate::codec::{QoS, ReasonCode, SparseProperties, SubscriptionOptions};
use crate::message::{Delivery, Message};
use crate::mountpoint::{Mountpoint, UnsafeMountpointValue};
use crate::presence::Event;
use crate::rate::{PublishLimiter, PublishRates};
use crate::session::{ConnControl, SessionCell, SessionKey, Will};

/// Why a client may not connect or open its session. Each adapter answers in its own
/// protocol's terms; MQTT's codes are here because the core speaks MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    #[error("client id empty or longer than the configured maximum")]
    ClientIdInvalid,
    #[error("bad user name or password")]
    BadCredentials,
    #[error("not authorized to connect")]
    NotAuthorized,
    #[error(transparent)]
    UnsafeMountpoint(#[from] UnsafeMountpointValue),
    /// Another identity made this session: resuming or taking it over would hand it its
    /// queued and future messages.
    #[error("the session belongs to another user")]
    SessionOwnedByAnother,
    #[error("will refused: {1}")]
    WillInvalid(ReasonCode, &'static str),
    /// The client is banned (by an operator, or for connecting too often); refused for
    /// this long.
    #[error("banned; retry in {} s", .0.as_secs().max(1))]
    Banned(std::time::Duration),
    /// The credentials could not be checked now (too many costly password checks running);
    /// the client may retry.
    #[error("too many password checks running; retry")]
    Busy,
}

/// When a client refused as [`ConnectRefused::Busy`] is told to retry, where its protocol
/// can say (CoAP's Max-Age): a password check lasts milliseconds, so a second is plenty.
pub const BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl ConnectRefused {
    /// CONNACK reason code of MQTT 5.
    pub fn mqtt5_reason_code(&self) -> ReasonCode {
        match self {
            ConnectRefused::ClientIdInvalid | ConnectRefused::UnsafeMountpoint(_) => {
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
            }
            ConnectRefused::BadCredentials => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ConnectRefused::NotAuthorized | ConnectRefused::SessionOwnedByAnother => {
                ReasonCode::NOT_AUTHORIZED
            }
            ConnectRefused::WillInvalid(reason, _) => *reason,
            ConnectRefused::Banned(_) => ReasonCode::BANNED,
            ConnectRefused::Busy => ReasonCode::SERVER_BUSY,
        }
    }

    /// Whether the client's credentials were wrong, as opposed to right but not enough.
    pub fn is_bad_credentials(&self) -> bool {
        matches!(self, ConnectRefused::BadCredentials)
    }
}

impl From<DenyReason> for ConnectRefused {
    fn from(reason: DenyReason) -> ConnectRefused {
        match reason {
            DenyReason::BadCredentials => ConnectRefused::BadCredentials,
            DenyReason::NotAuthorized => ConnectRefused::NotAuthorized,
            DenyReason::Busy => ConnectRefused::Busy,
        }
    }
}

/// Why one message is not published. The first three close an MQTT connection; the others
/// are answered per message where the protocol can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefused {
    #[error("{1}")]
    Invalid(ReasonCode, &'static str),
    /// `$SYS` topics are the broker's own; no client writes them.
    #[error("publishing to $SYS is reserved to the broker")]
    SysTopic,
    #[error("publish not authorized")]
    NotAuthorized,
    /// The store is full and a QoS 1/2 message may have to be kept.
    #[error("store full: message refused")]
    StoreFull,
}

impl PublishRefused {
    /// The reason code an MQTT 5 acknowledgement or DISCONNECT carries.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            PublishRefused::Invalid(reason, _) => reason,
            PublishRefused::SysTopic | PublishRefused::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
            PublishRefused::StoreFull => ReasonCode::QUOTA_EXCEEDED,
        }
    }
}

/// What a client presented before it is authenticated.
pub struct Presented {
    /// The session namespace and auth protocol name: `"mqtt"`, `"mqtt-sn"`, `"coap"`, ...
    pub protocol: &'static str,
    pub listener: Arc<str>,
    pub client_id: Arc<str>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub peer: Option<std::net::SocketAddr>,
    /// The listener's mountpoint template (`""` for none).
    pub mountpoint: Arc<str>,
    /// Placeholders of the adapter's own for the mountpoint, such as LwM2M's
    /// `${endpoint_name}`; `${clientid}` and `${username}` are always known.
    pub mountpoint_values: Vec<(&'static str, String)>,
}

impl Presented {
    /// Applies a gateway's `clientinfo_override`: each template that is not empty replaces
    /// its field, every template seeing what the client presented. Done before
    /// authentication, so the authenticator, the mountpoint and the session key all see the
    /// identity that results.
    pub fn apply_override(&mut self, templates: &gateway_config::ClientInfoOverride) {
        let password = self
            .password
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let peerhost = self
            .peer
            .map(|peer| peer.ip().to_string())
            .unwrap_or_default();
        let expand = |template: &str| {
            (!template.is_empty()).then(|| {
                crate::template::expand(template, |name| match name {
                    "clientid" => Some(&*self.client_id),
                    "username" => Some(self.username.as_deref().unwrap_or("")),
                    "password" => Some(&*password),
                    "peerhost" => Some(&*peerhost),
                    _ => None,
                })
            })
        };
        let client_id = expand(&templates.clientid);
        let username = expand(&templates.username);
        let new_password = expand(&templates.password);
        if let Some(client_id) = client_id {
            self.client_id = Arc::from(client_id);
        }
        if username.is_some() {
            self.username = username;
        }
        if let Some(new_password) = new_password {
            self.password = Some(Bytes::from(new_password));
        }
    }
}

/// A client whose credentials the configured authenticator accepted, with its mountpoint
/// resolved. Only [`Broker::authenticate`] makes one.
#[derive(Debug, Clone)]
pub struct Authenticated {
    client: ClientInfo,
}

impl Authenticated {
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }
}

/// How long a client held back by a receiver that is behind is told to wait before it
/// sends again: a receiver that keeps reading catches up in well under a second.
pub const CONGESTION_RETRY: Duration = Duration::from_secs(1);

/// How to open the session of an authenticated client.
pub struct OpenSession {
    pub clean_start: bool,
    /// Seconds; `u32::MAX` = never expires. Capped by `mqtt.max_session_expiry_interval`.
    pub expiry_interval: u32,
    /// The will as the client wrote it: checked, authorized and mounted here.
    pub will: Option<Box<Will>>,
    pub control: Arc<ConnControl>,
    /// What the client may publish: its listener's `messages_rate` and `bytes_rate`.
    pub rates: PublishRates,
    /// The client's protocol and version, for the operator's view and presence events.
    pub proto: ProtoInfo,
    /// Seconds of silence the client is allowed (0: none), as its protocol counts them.
    pub keepalive: u32,
    /// Whether presence events announce the session: false for one that lives for a
    /// single message (an MQTT-SN QoS -1 publish), which is not a client coming and going.
    pub announce: bool,
}

/// A message a client may publish: what checking it found, carried to the routing call.
#[derive(Debug)]
#[must_use = "a permit does nothing until the message is published with it"]
pub struct PublishPermit {
    topic: ByteString,
    qos: QoS,
    retain: bool,
    /// When the message arrived (`crate::arrival`): the latest it can have; 0 = unknown.
    arrival: u64,
}

impl PublishPermit {
    /// Says the message arrived by the stamp `latest` (`crate::arrival`), so that a
    /// subscription that arrived before it gets it, even if applied after it is routed.
    pub fn arrived_by(mut self, latest: u64) -> PublishPermit {
        self.arrival = latest;
        self
    }

    /// The topic as the router sees it (mounted).
    pub fn routed_topic(&self) -> &ByteString {
        &self.topic
    }
}

impl Broker {
    /// Checks what a client presented: its client id's length, its credentials through the
    /// configured authenticator, and the values its mountpoint is made of.
    pub fn authenticate(&self, presented: Presented) -> Result<Authenticated, ConnectRefused> {
        if presented.client_id.is_empty()
            || presented.client_id.len() > self.config.max_client_id_length as usize
        {
            return Err(ConnectRefused::ClientIdInvalid);
        }
        let mut client = ClientInfo {
            protocol: presented.protocol,
            listener: presented.listener,
            client_id: presented.client_id,
            username: presented.username,
            peer: presented.peer,
            mountpoint: None,
        };
        if let AuthOutcome::Deny(reason) = self
            .auth
            .authenticator
            .authenticate(&client, presented.password.as_deref())
        {
            Stats::add(&self.stats.authentication_failures, 1);
            return Err(reason.into());
        }
        let mut values: Vec<(&'static str, &str)> = presented
            .mountpoint_values
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        values.push(("clientid", &client.client_id));
        values.push(("username", client.username.as_deref().unwrap_or("")));
        client.mountpoint = Mountpoint::resolve(&presented.mountpoint, &values)?;
        Ok(Authenticated { client })
    }

    /// Opens or resumes the session of `who` and attaches the connection. A session another
    /// identity made is refused, whether resumed or started clean: either would take it from
    /// its owner.
    pub fn open_session(
        self: &Arc<Self>,
        who: Authenticated,
        request: OpenSession,
        now: Instant,
    ) -> Result<ClientSession, ConnectRefused> {
        let client = Arc::new(who.client);
        let key = SessionKey {
            namespace: client.protocol,
            client_id: client.client_id.clone(),
        };
        if let Some(remaining) = self.banned.check(&client, std::time::SystemTime::now()) {
            Stats::add(&self.stats.banned_refused, 1);
            return Err(ConnectRefused::Banned(remaining));
        }
        if let Some(flapping) = &self.flapping {
            if request.control.first_session() {
                flapping
                    .admit(&key, now)
                    .map_err(|banned| ConnectRefused::Banned(banned.remaining))?;
            }
        }
        let will = match request.will {
            Some(will) => self.admit_will(&client, will)?,
            None => None,
        };
        let expiry_interval = request.expiry_interval.min(self.max_session_expiry());
        let attached = self.connect(
            ConnectRequest {
                key,
                clean_start: request.clean_start,
                expiry_interval,
                will,
                control: request.control.clone(),
                owner: client.username.as_deref().map(Arc::from),
                listener: client.listener.clone(),
                attachment: Box::new(Attachment {
                    client: client.clone(),
                    proto: request.proto,
                    keepalive: request.keepalive,
                    clean_start: request.clean_start,
                    connected_at_ms: self.clock.unix_ms(now),
                    announced: request.announce,
                    asleep: false,
                }),
            },
            now,
        )?;
        Ok(ClientSession {
            broker: self.clone(),
            client,
            session: attached.session,
            control: request.control,
            session_present: attached.session_present,
            expiry_interval,
            store_full_refusals: AtomicU32::new(0),
            congestion_refusals: AtomicU32::new(0),
            limiter: PublishLimiter::new(request.rates, now)
                .map(|limiter| Box::new(Mutex::new(limiter))),
            rate_pauses: AtomicU32::new(0),
        })
    }

    /// A will that is not authorized is dropped, not refused (as MQTT brokers do); one that
    /// could never be published refuses the connection.
    fn admit_will(
        &self,
        client: &ClientInfo,
        mut will: Box<Will>,
    ) -> Result<Option<Box<Will>>, ConnectRefused> {
        match self.permit(client, &will.topic, will.qos, will.retain) {
            Ok(permit) => {
                will.topic = permit.topic;
                Ok(Some(will))
            }
            Err(PublishRefused::Invalid(reason, why)) => {
                Err(ConnectRefused::WillInvalid(reason, why))
            }
            Err(refused) => {
                tracing::info!(topic = %will.topic, %refused, "will dropped");
                Ok(None)
            }
        }
    }

    /// Every check a client's message passes before it is routed, in the order MQTT reports
    /// them: a malformed topic or options first, then the right to publish, then room.
    fn permit(
        &self,
        client: &ClientInfo,
        topic: &ByteString,
        qos: QoS,
        retain: bool,
    ) -> Result<PublishPermit, PublishRefused> {
        self.check_publish(topic, qos, retain)
            .map_err(|(reason, why)| PublishRefused::Invalid(reason, why))?;
        let routed = client.mount_shared(topic);
        if is_sys_topic(&routed) {
            return Err(PublishRefused::SysTopic);
        }
        let action = Action::Publish {
            qos: qos.as_u8(),
            retain,
        };
        if !self.authorize(client, action, topic) {
            return Err(PublishRefused::NotAuthorized);
        }
        if qos != QoS::AtMostOnce && self.refuses_storing() {
            return Err(PublishRefused::StoreFull);
        }
        Ok(PublishPermit {
            topic: routed,
            qos,
            retain,
            arrival: 0,
        })
    }
}

fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// One client's open session: the only handle through which it publishes, subscribes and
/// leaves. Dropping it without [`ClientSession::close`] leaves the session attached until
/// another connection takes it over, so channels close it on every way out.
pub struct ClientSession {
    broker: Arc<Broker>,
    /// Shared with the session's record of who holds it.
    client: Arc<ClientInfo>,
    session: Arc<SessionCell>,
    control: Arc<ConnControl>,
    session_present: bool,
    expiry_interval: u32,
    /// Publishes refused for a full store: the first is logged, the rest counted and
    /// summed up at close, since a client may keep sending at full speed.
    store_full_refusals: AtomicU32,
    /// Publishes answered with the protocol's congestion signal while held back: counted,
    /// and summed up at close.
    congestion_refusals: AtomicU32,
    /// The client's publish rates; `None` when unlimited, which costs nothing per message
    /// and one pointer per session. A lock only the client's own connection takes:
    /// `ClientSession` methods take `&self`.
    limiter: Option<Box<Mutex<PublishLimiter>>>,
    /// Times the client went over its rates and was paused: counted, summed up at close.
    rate_pauses: AtomicU32,
}

impl ClientSession {
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    pub fn client_id(&self) -> &Arc<str> {
        &self.client.client_id
    }

    /// The session's state (queue, windows, subscriptions), locked by its own mutex.
    pub fn session(&self) -> &Arc<SessionCell> {
        &self.session
    }

    /// Whether the client's next message must wait (not read, or answered with its
    /// protocol's congestion signal): a receiver it publishes to is behind, until that
    /// receiver wakes the connection, or the client went over its publish rates, until
    /// [`paused_until`](Self::paused_until). The one question every adapter asks before
    /// it takes a message.
    pub fn is_held_back(&self, now: Instant) -> bool {
        self.control.is_held_back()
            || self
                .limiter
                .as_ref()
                .is_some_and(|limiter| limiter.lock().is_paused(now))
    }

    /// When the pause for going over the publish rates ends. Unlike a receiver's hold,
    /// which ends with a wake-up, a pause ends by time: channels count it among their
    /// deadlines, and call [`handle_timeout`](Self::handle_timeout) when it comes.
    pub fn paused_until(&self) -> Option<Instant> {
        self.limiter
            .as_ref()
            .and_then(|limiter| limiter.lock().paused_until())
    }

    /// Ends a pause whose time has come, so that [`paused_until`](Self::paused_until) no
    /// longer names it (a deadline in the past would fire again at once).
    pub fn handle_timeout(&self, now: Instant) {
        if let Some(limiter) = &self.limiter {
            limiter.lock().end_pause_if_over(now);
        }
    }

    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// The expiry the session got, after the broker's cap.
    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Checks that this client may publish to `topic` (as it wrote it) now.
    pub fn permit(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Result<PublishPermit, PublishRefused> {
        self.permit_shared(&ByteString::from(topic), qos, retain)
    }

    /// [`permit`](Self::permit) for a topic already held as shared bytes (a decoded
    /// packet's): routed without a copy when the client has no mountpoint.
    pub fn permit_shared(
        &self,
        topic: &ByteString,
        qos: QoS,
        retain: bool,
    ) -> Result<PublishPermit, PublishRefused> {
        let permit = self.broker.permit(&self.client, topic, qos, retain);
        if matches!(permit, Err(PublishRefused::StoreFull)) {
            Stats::add(&self.broker.stats.refused_store_full, 1);
            if self.store_full_refusals.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::warn!(topic = &**topic, "store full: QoS 1/2 publish refused (further refusals on this connection are counted and summed up when it closes)");
            }
        }
        permit
    }

    /// Counts a publish a datagram adapter refused with its protocol's congestion signal
    /// because the client is held back; the client sends it again later. Returns how long
    /// it should wait, for a protocol that can say so: what its rate pause has left, or,
    /// held back by a receiver, [`CONGESTION_RETRY`].
    pub fn refuse_for_congestion(&self, now: Instant) -> Duration {
        Stats::add(&self.broker.stats.refused_congestion, 1);
        self.congestion_refusals.fetch_add(1, Ordering::Relaxed);
        self.paused_until()
            .map(|until| until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
            .unwrap_or(CONGESTION_RETRY)
    }

    /// Routes a permitted message and spends it from the client's publish rates: one
    /// message, and its topic (as routed) and payload bytes. What it returns must be acted
    /// on: the store ticket the acknowledgement waits for. A receiver that is behind, or
    /// the rates, may hold the client back meanwhile ([`is_held_back`](Self::is_held_back)).
    #[must_use = "the acknowledgement must wait for the ticket"]
    pub fn publish_permitted(
        &self,
        permit: PublishPermit,
        payload: Bytes,
        mut properties: SparseProperties,
        now: Instant,
    ) -> Dispatched {
        if !properties.subscription_identifiers.is_empty() {
            properties.subscription_identifiers.clear();
        }
        if let Some(limiter) = &self.limiter {
            let bytes = permit.topic.len() + payload.len();
            if limiter.lock().spend(bytes, now) {
                Stats::add(&self.broker.stats.rate_limited, 1);
                self.rate_pauses.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Built in place: a builder taking the message by value would copy it once more.
        let message = Arc::new(Message {
            topic: permit.topic,
            payload,
            qos: permit.qos,
            retain: permit.retain,
            expires_at: Message::expiry_from(&properties, now),
            properties,
            publisher: Some(self.session.id),
            publisher_client_id: Some(self.client.client_id.clone()),
            arrival: permit.arrival,
        });
        self.broker.publish(message, Some(&self.control))
    }

    /// [`permit`](Self::permit) and [`publish_permitted`](Self::publish_permitted) in one.
    #[must_use = "the acknowledgement must wait for the ticket"]
    pub fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        properties: SparseProperties,
        now: Instant,
    ) -> Result<Dispatched, PublishRefused> {
        let permit = self.permit(topic, qos, retain)?;
        Ok(self.publish_permitted(permit, payload, properties, now))
    }

    /// Subscribes to `filter` as the client wrote it (`$share/...` allowed): authorized,
    /// bounded by the session's subscription quota, mounted, retained messages replayed.
    pub fn subscribe(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        now: Instant,
    ) -> Result<Granted, ReasonCode> {
        self.subscribe_arrived(filter, options, identifier, 0, now)
    }

    /// [`subscribe`](Self::subscribe) for a SUBSCRIBE that arrived after the stamp
    /// `earliest` (`crate::arrival`): it also gets the messages that arrived after it but
    /// were routed before it took effect.
    pub fn subscribe_arrived(
        &self,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        earliest: u64,
        now: Instant,
    ) -> Result<Granted, ReasonCode> {
        self.broker.subscribe(
            &self.session,
            &self.client,
            SubscribeRequest {
                filter,
                options,
                identifier,
                arrival: earliest,
            },
            now,
        )
    }

    /// Returns whether the subscription existed.
    pub fn unsubscribe(&self, filter: &str) -> bool {
        self.broker.unsubscribe(&self.session, &self.client, filter)
    }

    /// Changes the session's expiry while connected (MQTT 5 DISCONNECT may), capped.
    pub fn set_expiry_interval(&mut self, seconds: u32) {
        let seconds = seconds.min(self.broker.max_session_expiry());
        self.expiry_interval = seconds;
        self.broker.set_expiry_interval(&self.session, seconds);
    }

    /// Hands a delivery of a shared subscription to another member of its group; see
    /// [`Broker::redispatch_shared`].
    pub fn redispatch_shared(&self, filter: &str, delivery: Delivery) -> Result<(), Delivery> {
        self.broker
            .redispatch_shared(filter, self.session.id, delivery)
    }

    /// The client went to sleep for `duration` seconds (MQTT-SN): its connection stays,
    /// and the operator's view and the `asleep` presence event say so.
    pub fn fall_asleep(&self, duration: u32, now: Instant) {
        self.set_asleep(true, Event::Asleep { duration }, now);
    }

    /// The sleeping client became active again (MQTT-SN CONNECT on the peer it sleeps
    /// on): the `awake` event. A CONNECT from elsewhere takes the session over, and the
    /// broker says `awake` then, before the takeover's events.
    pub fn wake_up(&self, now: Instant) {
        self.set_asleep(false, Event::Awake, now);
    }

    fn set_asleep(&self, asleep: bool, event: Event, now: Instant) {
        let attachment = {
            let mut state = self.session.state.lock();
            let ours = state
                .connection
                .as_ref()
                .is_some_and(|connection| connection.conn_id == self.control.conn_id);
            match &mut state.attachment {
                Some(attachment) if ours && attachment.asleep != asleep => {
                    attachment.asleep = asleep;
                    (**attachment).clone()
                }
                _ => return,
            }
        };
        self.broker
            .announce(&self.session.key, &attachment, event, now);
    }

    /// Detaches this connection; the session ends or waits for its expiry, and the will is
    /// published or discarded as `will` says. Does nothing if another connection has taken
    /// the session over meanwhile. The `disconnected` presence event gives the reason as
    /// `will` implies it: a goodbye (`Discard`) is `normal`, anything else `sock_closed`;
    /// [`close_because`](Self::close_because) names another.
    pub fn close(self, will: WillDisposition, now: Instant) {
        let reason = match will {
            WillDisposition::Discard => DisconnectReason::Normal,
            WillDisposition::Publish => DisconnectReason::SockClosed,
        };
        self.close_because(will, reason, now);
    }

    /// [`close`](Self::close) for a connection that ended for `reason`.
    pub fn close_because(self, will: WillDisposition, reason: DisconnectReason, now: Instant) {
        let refused = self.store_full_refusals.load(Ordering::Relaxed);
        if refused > 1 {
            tracing::warn!(
                refused,
                "store full: QoS 1/2 publishes refused on this connection"
            );
        }
        let congested = self.congestion_refusals.load(Ordering::Relaxed);
        if congested > 0 {
            tracing::info!(
                refused = congested,
                "publishes answered with congestion on this connection while it was held back"
            );
        }
        let pauses = self.rate_pauses.load(Ordering::Relaxed);
        if pauses > 0 {
            tracing::info!(
                pauses,
                "publishing paused on this connection for going over the listener's messages_rate or bytes_rate"
            );
        }
        self.broker
            .disconnect(&self.session, self.control.conn_id, will, reason, now);
    }
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("client", &self.client)
            .field("session", &self.session.key)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn clientinfo_override_templates_see_what_the_client_presented() {
        let mut presented = Presented {
            protocol: "mqtt-sn",
            listener: Arc::from("udp:default"),
            client_id: Arc::from("dev1"),
            username: None,
            password: None,
            peer: Some(SocketAddr::from(([10, 0, 0, 7], 5000))),
            mountpoint: Arc::from(""),
            mountpoint_values: Vec::new(),
        };
        presented.apply_override(&gateway_config::ClientInfoOverride {
            clientid: "sn-${clientid}".into(),
            username: "${clientid}@${peerhost}".into(),
            password: String::new(),
        });
        assert_eq!(&*presented.client_id, "sn-dev1");
        assert_eq!(presented.username.as_deref(), Some("dev1@10.0.0.7"));
        assert_eq!(
            presented.password, None,
            "an empty template keeps the field"
        );
    }

    #[test]
    fn only_sys_and_its_subtopics_are_the_brokers() {
        assert!(is_sys_topic("$SYS"));
        assert!(is_sys_topic("$SYS/broker/uptime"));
        assert!(!is_sys_topic("$SYSTEM/x"));
        assert!(!is_sys_topic("m/$SYS/x"));
    }
}
