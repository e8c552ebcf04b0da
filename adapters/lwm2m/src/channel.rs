//! One LwM2M device as a sans-io state machine: datagrams, broker wake-ups and timer ticks
//! in, with `now`; datagrams out. The CoAP message layer is the kit's `Exchange`. On top of
//! it: the registration interface (register, update, de-register, lifetime, queue mode),
//! the device's session in namespace `lwm2m` subscribed to its command topic, commands
//! sent one at a time with the rest queued, observations, and LwM2M 1.1 Send.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::coap::{
    set_retry_after, CoapOption, Exchange, Inbound, MessageClass, MessageType, Packet, Request,
    RequestType, ResponseType, TransmissionParams,
};
use bytes::Bytes;
use gateway_config::{AutoObserve, Lwm2mConfig, UpdatePublishCondition};
use mqtt_core::broker::{Broker, WillDisposition};
use mqtt_core::client::{
    ClientSession, ConnectRefused, OpenSession, Presented, PublishPermit, PublishRefused,
};
use mqtt_core::clients::{DisconnectReason, ProtoInfo, ProtoVer};
use mqtt_core::codec::{QoS, SubscriptionOptions};
use mqtt_core::protocol::Flow;
use mqtt_core::rate::PublishRates;
use mqtt_core::session::{ConnControl, Wakeup};
use mqtt_core::storage::{HeldReplies, Ticket};
use serde_json::{json, Map, Value as Json};
use translations::link_format;
use translations::lwm2m::objects::ObjectRegistry;
use translations::lwm2m::{self, Path};

use crate::command::{self, Command, CommandError, Operation};
use crate::downlink::{Device, Devices};

/// The namespace of LwM2M sessions.
pub const LWM2M_NAMESPACE: &str = "lwm2m";

/// The device a registration opens a session for.
struct Opening<'a> {
    client_id: &'a str,
    endpoint: &'a str,
    proto: ProtoInfo,
    /// Clamped: what the operator's view gives as its keep-alive.
    lifetime: Duration,
}

/// Critical options understood: Uri-Host, Uri-Port, Uri-Path, Uri-Query, Accept.
pub const UNDERSTOOD_CRITICAL: &[u16] = &[3, 7, 11, 15, 17];

/// Objects `auto_observe = true` leaves alone: management objects (EMQX's list).
const NOT_AUTO_OBSERVED: &[u16] = &[0, 1, 2, 4, 5, 6, 7, 9, 15];

/// LwM2M 1.0's default lifetime when `lt` is absent (Core TS 1.0.2 5.3.1).
const DEFAULT_LIFETIME: u64 = 86_400;

/// One MQTT topic of the gateway: relative to the mountpoint, with its QoS.
#[derive(Debug, Clone)]
pub struct Topic {
    pub topic: String,
    pub qos: QoS,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoObserveMode {
    Off,
    All,
    Paths(Vec<String>),
}

/// What every channel of one listener shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listener: Arc<str>,
    pub lifetime_min: Duration,
    pub lifetime_max: Duration,
    pub lifetime_grace: Duration,
    pub qmode_time_window: Duration,
    pub auto_observe: AutoObserveMode,
    pub publish_update_always: bool,
    pub mountpoint: Arc<str>,
    pub command: Topic,
    pub response: Topic,
    pub notify: Topic,
    pub register: Topic,
    pub update: Topic,
    pub max_queued_commands: usize,
    pub transmission: TransmissionParams,
    pub objects: Arc<ObjectRegistry>,
    /// What one device may publish: the listener's `messages_rate` and `bytes_rate`.
    pub rates: PublishRates,
    /// The registrations the admin API reaches, shared by every listener of the gateway.
    pub devices: Arc<Devices>,
}

fn qos(level: u8) -> QoS {
    match level {
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtMostOnce,
    }
}

impl Settings {
    pub fn from_config(
        listener: Arc<str>,
        config: &Lwm2mConfig,
        listener_config: &gateway_config::UdpListenerConfig,
        objects: Arc<ObjectRegistry>,
    ) -> Settings {
        let topic = |t: &gateway_config::Translator| Topic {
            topic: t.topic.clone(),
            qos: qos(t.qos),
        };
        let paths = |items: Vec<String>| {
            AutoObserveMode::Paths(
                items
                    .into_iter()
                    .map(|item| item.trim().to_owned())
                    .filter(|item| !item.is_empty())
                    .collect(),
            )
        };
        let auto_observe = match &config.auto_observe {
            AutoObserve::Enabled(true) => AutoObserveMode::All,
            AutoObserve::Enabled(false) => AutoObserveMode::Off,
            AutoObserve::Text(text) if text == "on" || text == "true" => AutoObserveMode::All,
            AutoObserve::Text(text) if text == "off" || text == "false" || text.is_empty() => {
                AutoObserveMode::Off
            }
            AutoObserve::Text(text) => paths(text.split(',').map(str::to_owned).collect()),
            AutoObserve::Paths(list) => paths(list.clone()),
        };
        let t = &config.translators;
        Settings {
            listener,
            lifetime_min: config.lifetime_min.get(),
            lifetime_max: config.lifetime_max.get(),
            lifetime_grace: config.lifetime_grace.get(),
            qmode_time_window: config.qmode_time_window.get(),
            auto_observe,
            publish_update_always: config.update_msg_publish_condition
                == UpdatePublishCondition::Always,
            mountpoint: Arc::from(listener_config.mountpoint_or(&config.mountpoint)),
            command: topic(&t.command),
            response: topic(&t.response),
            notify: topic(&t.notify),
            register: topic(&t.register),
            update: topic(&t.update),
            max_queued_commands: config.max_queued_commands as usize,
            transmission: TransmissionParams {
                ack_timeout: config.ack_timeout.get(),
                max_retransmit: config.max_retransmit,
                max_message_size: listener_config.max_packet_size as usize,
                ..TransmissionParams::rfc7252(UNDERSTOOD_CRITICAL)
            },
            objects,
            rates: PublishRates::new(listener_config.messages_rate, listener_config.bytes_rate),
            devices: Arc::default(),
        }
    }
}

/// The answer to a device's request, and the store ticket it waits for.
type Answer = (Packet, Option<Ticket>);

/// What a confirmable message of ours was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// The command with this sequence number.
    Command(u64),
}

/// The registration of the device this channel serves.
#[derive(Debug, Clone)]
pub struct Registration {
    pub endpoint: String,
    pub lifetime: Duration,
    pub version: String,
    pub queue_mode: bool,
    /// Path segments before every object path (`</lwm2m>;rt="oma.lwm2m"`).
    pub alternate_path: Vec<String>,
    pub object_list: Vec<String>,
    /// The query parameters and object list as published in register / update events.
    info: Map<String, Json>,
}

/// A command waiting for its turn.
#[derive(Debug)]
struct Queued {
    command: Command,
    expires_at: Option<Instant>,
}

/// The one request on its way to the device.
#[derive(Debug)]
struct InFlight {
    sequence: u64,
    token: Vec<u8>,
    command: Command,
    /// After an empty ACK, the separate response is awaited until then.
    separate_deadline: Option<Instant>,
}

/// Why a registration interface request is refused.
#[derive(Debug, Clone, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("authentication failed")]
    Unauthorized,
    /// Right credentials, but not for this: another user's session, or a topic the device
    /// may not publish or subscribe to.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such registration")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The store is full: an event the operator asked to keep (QoS 1/2) cannot be.
    #[error("store full")]
    StoreFull,
    /// A receiver of the device's events is behind, or the device went over its publish
    /// rates: retry after the time (Max-Age). Counted by the session layer, not logged: a
    /// device may meet it many times a second.
    #[error("a receiver is behind or the publish rate is exceeded; retry later")]
    Congested(Duration),
    /// Flapping detection: the endpoint registered too often (RFC 8516 4.29).
    #[error("endpoint banned for registering too often")]
    Banned,
    /// The credentials were not checked: too many costly password checks running; retry
    /// after `mqtt_core::client::BUSY_RETRY` (Max-Age).
    #[error("too many password checks running; retry later")]
    Busy,
}

impl Refusal {
    fn code(&self) -> ResponseType {
        match self {
            Refusal::BadRequest(_) => ResponseType::BadRequest,
            Refusal::Unauthorized => ResponseType::Unauthorized,
            Refusal::Forbidden(_) => ResponseType::Forbidden,
            Refusal::NotFound => ResponseType::NotFound,
            Refusal::MethodNotAllowed => ResponseType::MethodNotAllowed,
            Refusal::StoreFull | Refusal::Congested(_) | Refusal::Busy => {
                ResponseType::ServiceUnavailable
            }
            Refusal::Banned => ResponseType::TooManyRequests,
        }
    }
}

impl From<ConnectRefused> for Refusal {
    fn from(refused: ConnectRefused) -> Refusal {
        match refused {
            ConnectRefused::BadCredentials | ConnectRefused::NotAuthorized => Refusal::Unauthorized,
            ConnectRefused::SessionOwnedByAnother => {
                Refusal::Forbidden("registration belongs to another user")
            }
            ConnectRefused::UnsafeMountpoint(_) => Refusal::BadRequest("unsafe endpoint name"),
            ConnectRefused::ClientIdInvalid | ConnectRefused::WillInvalid(..) => {
                Refusal::BadRequest("invalid queries")
            }
            ConnectRefused::Banned(_) => Refusal::Banned,
            ConnectRefused::Busy => Refusal::Busy,
        }
    }
}

impl From<PublishRefused> for Refusal {
    fn from(refused: PublishRefused) -> Refusal {
        match refused {
            PublishRefused::Invalid(_, why) => Refusal::BadRequest(why),
            PublishRefused::SysTopic | PublishRefused::NotAuthorized => {
                Refusal::Forbidden("publish not authorized")
            }
            PublishRefused::StoreFull => Refusal::StoreFull,
        }
    }
}

/// An answer to the device that confirms an event it caused, sent once the event is
/// durable.
#[derive(Debug)]
struct HeldAnswer {
    request: Packet,
    response: Packet,
}

pub struct Lwm2mChannel {
    broker: Arc<Broker>,
    /// The identity the transport (DTLS) authenticated: the device's endpoint name,
    /// client id and user name, and no other.
    transport_identity: Option<Arc<str>>,
    settings: Arc<Settings>,
    peer: Option<SocketAddr>,
    wakeup: Arc<dyn Wakeup>,
    /// The connection of the current registration's session; each registration gets its
    /// own, so one that replaces another is not closed by taking the old session over.
    control: Arc<ConnControl>,
    exchange: Exchange<Sent>,
    last_received: Instant,
    registration: Option<Registration>,
    session: Option<ClientSession>,
    /// Answers to register, update and Send that wait until their event is durable, in
    /// order; a retransmission of a request held here is not served again.
    held_answers: HeldReplies<HeldAnswer>,
    held_message_ids: HashSet<u16>,
    /// Events of this registration the broker refused; the first is logged.
    refused_events: u64,
    queue: VecDeque<Queued>,
    in_flight: Option<InFlight>,
    next_sequence: u64,
    /// Observation token → the observe command, echoed in every notification.
    observations: HashMap<Vec<u8>, Command>,
    /// The registration as the admin API reaches it, entered in `settings.devices` under
    /// its client id.
    device: Option<(Arc<str>, Arc<Device>)>,
    /// The device answered a message of ours at its current address; until then the
    /// datagram driver bounds what it is sent.
    validated: bool,
    /// Why the registration ends, once known: its lifetime ran out.
    ending: Option<DisconnectReason>,
}

impl Lwm2mChannel {
    pub fn new(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
        wakeup: Arc<dyn Wakeup>,
        seed: u64,
        now: Instant,
    ) -> Lwm2mChannel {
        let control = ConnControl::new(broker.next_connection_id(), wakeup.clone());
        let exchange = Exchange::new(settings.transmission.clone(), seed);
        Lwm2mChannel {
            broker,
            transport_identity: None,
            settings,
            peer,
            wakeup,
            control,
            exchange,
            last_received: now,
            registration: None,
            session: None,
            held_answers: HeldReplies::default(),
            held_message_ids: HashSet::new(),
            refused_events: 0,
            queue: VecDeque::new(),
            in_flight: None,
            next_sequence: 0,
            observations: HashMap::new(),
            device: None,
            validated: false,
            ending: None,
        }
    }

    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    pub fn queued_commands(&self) -> usize {
        self.queue.len()
    }

    pub fn observation_count(&self) -> usize {
        self.observations.len()
    }

    /// The endpoint name, by which a device that moved to another address is recognised.
    pub fn endpoint(&self) -> Option<Arc<str>> {
        self.registration
            .as_ref()
            .map(|registration| Arc::from(registration.endpoint.as_str()))
    }

    /// Whether an update or de-register of this registration from another address is the
    /// device's: the core's session layer accepts what it presents (the registration's
    /// client id and user name, the request's `password`, the new address as the peer) as
    /// this session's client and owner. Only then does the registration move there. A
    /// register from elsewhere is never vouched for: a channel of its own serves it, and
    /// accepted, it takes the session over through the core. Changes nothing here.
    pub fn vouch(&self, datagram: &[u8], from: SocketAddr) -> bool {
        let (Some(registration), Some(session)) = (&self.registration, &self.session) else {
            return false;
        };
        let Ok(packet) = Packet::from_bytes(datagram) else {
            return false;
        };
        let MessageClass::Request(method @ (RequestType::Post | RequestType::Delete)) =
            packet.header.code
        else {
            return false;
        };
        let path: Vec<&[u8]> = packet
            .get_option(CoapOption::UriPath)
            .into_iter()
            .flatten()
            .map(Vec::as_slice)
            .collect();
        let names_this_registration = matches!(
            path.as_slice(),
            [rd, location] if *rd == b"rd" && *location == registration.endpoint.as_bytes()
        );
        if !names_this_registration {
            return false;
        }
        let client = session.client();
        let presented = Presented {
            protocol: LWM2M_NAMESPACE,
            listener: self.settings.listener.clone(),
            client_id: client.client_id.clone(),
            username: client.username.clone(),
            password: queries(&packet).remove("password").map(Bytes::from),
            peer: Some(from),
            mountpoint: self.settings.mountpoint.clone(),
            mountpoint_values: vec![("endpoint_name", registration.endpoint.clone())],
        };
        match self.broker.authenticate(presented) {
            Ok(who) => {
                who.client().client_id == client.client_id
                    && who.client().username == client.username
            }
            Err(refused) => {
                tracing::debug!(%refused, ?method, claimant = %from, "request for this registration from another address not authenticated");
                false
            }
        }
    }

    /// The device moved to `address`; what it receives there is bounded until it answers.
    pub fn rebound(&mut self, address: SocketAddr) {
        self.peer = Some(address);
        self.validated = false;
    }

    pub fn address_validated(&self) -> bool {
        self.validated
    }

    pub fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        let inbound = self.exchange.receive(&datagram, now, out);
        // An acknowledgement, Reset or response matched to a message of ours: the device
        // saw what we sent to this address.
        if matches!(
            inbound,
            Inbound::Acknowledged { .. } | Inbound::Reset { tag: Some(_) } | Inbound::Response(_)
        ) {
            self.validated = true;
        }
        // Every message from the device keeps its registration alive (as EMQX does) and
        // opens the queue-mode window; a request only once honoured, since a refused one
        // (a register with a wrong password, an update of another location) may come from
        // anyone who names the endpoint.
        if !matches!(inbound, Inbound::Request(_)) {
            self.last_received = now;
        }
        let flow = match inbound {
            Inbound::Request(request) => self.handle_request(request, out, now),
            Inbound::Acknowledged { tag, response } => {
                let Sent::Command(sequence) = tag;
                match response {
                    Some(packet) => self.handle_response(packet, now),
                    None => self.separate_response_follows(sequence, now),
                }
                Flow::Continue
            }
            Inbound::Reset { tag } => {
                if let Some(Sent::Command(sequence)) = tag {
                    self.command_failed(sequence, "coap_reset", now);
                }
                Flow::Continue
            }
            Inbound::Response(packet) => {
                self.handle_response(packet, now);
                Flow::Continue
            }
            Inbound::Handled => Flow::Continue,
        };
        if flow == Flow::Close {
            return Flow::Close;
        }
        self.release_held_answers(out, now);
        if self.holds_nothing() {
            return Flow::Close;
        }
        self.send_next(out, now);
        Flow::Continue
    }

    /// No registration, nothing of ours in flight and no answer owed: a peer that never
    /// registered, or one that de-registered, has nothing worth keeping.
    fn holds_nothing(&self) -> bool {
        self.registration.is_none()
            && self.exchange.in_flight() == 0
            && self.held_answers.is_empty()
    }

    pub fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Some(reason) = self.control.close_requested() {
            tracing::info!(
                reason = reason.0,
                "registration taken over or closed by the broker"
            );
            return Flow::Close;
        }
        self.release_held_answers(out, now);
        if self.holds_nothing() {
            return Flow::Close;
        }
        self.take_commands(now);
        self.send_next(out, now);
        Flow::Continue
    }

    pub fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Some(session) = &self.session {
            // A rate pause that is over ends: the device's next event is taken.
            session.handle_timeout(now);
        }
        for Sent::Command(sequence) in self.exchange.handle_timeout(now, out) {
            tracing::info!("device did not acknowledge a request");
            self.command_failed(sequence, "coap_timeout", now);
        }
        if let Some(in_flight) = &self.in_flight {
            if in_flight
                .separate_deadline
                .is_some_and(|deadline| now >= deadline)
            {
                let sequence = in_flight.sequence;
                tracing::info!("separate response never came");
                self.command_failed(sequence, "coap_timeout", now);
            }
        }
        if let Some(expiry) = self.expiry() {
            if now >= expiry {
                tracing::info!("registration lifetime expired");
                self.ending = Some(DisconnectReason::KeepaliveTimeout);
                return Flow::Close;
            }
        }
        self.send_next(out, now);
        Flow::Continue
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let separate = self
            .in_flight
            .as_ref()
            .and_then(|in_flight| in_flight.separate_deadline);
        let paused = self.session.as_ref().and_then(ClientSession::paused_until);
        [
            self.exchange.next_deadline(),
            self.expiry(),
            separate,
            paused,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the registration ends unless the device speaks: its lifetime plus the grace
    /// period after its last message; a peer that never registered goes at once.
    fn expiry(&self) -> Option<Instant> {
        self.registration.as_ref().map(|registration| {
            self.last_received + registration.lifetime + self.settings.lifetime_grace
        })
    }

    pub fn shutdown(&mut self, _out: &mut Vec<Bytes>) -> Flow {
        Flow::Close
    }

    pub fn handle_closed(&mut self, now: Instant) {
        let reason = self.ending.unwrap_or(DisconnectReason::SockClosed);
        self.end_registration(reason, now);
    }

    fn end_registration(&mut self, reason: DisconnectReason, now: Instant) {
        self.exchange.cancel_all();
        // Observations die with their registration.
        self.observations.clear();
        self.queue.clear();
        self.in_flight = None;
        self.registration = None;
        if let Some((client_id, device)) = self.device.take() {
            self.settings.devices.remove(&client_id, &device);
        }
        if let Some(session) = self.session.take() {
            session.close_because(WillDisposition::Discard, reason, now);
        }
    }

    /// Sends `response` to `request` once `ticket` (the store batch of the event the
    /// request caused) is durable, and never before an answer held for an earlier request.
    /// The answer stays piggybacked: the store commits well within the device's
    /// ACK_TIMEOUT, and a retransmission meanwhile is dropped, not served twice.
    fn answer_durably(
        &mut self,
        request: Packet,
        response: Packet,
        ticket: Option<Ticket>,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) {
        let message_id = request.header.message_id;
        let wakeup = &self.wakeup;
        let held = HeldAnswer { request, response };
        match self
            .held_answers
            .hold(held, ticket, self.broker.store().as_ref(), || {
                wakeup.clone()
            }) {
            Some(held) => self.respond(&held.request, held.response, out, now),
            None => {
                self.held_message_ids.insert(message_id);
            }
        }
    }

    fn release_held_answers(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        let store = self.broker.store().clone();
        while let Some(held) = self.held_answers.pop_due(store.as_ref()) {
            self.held_message_ids
                .remove(&held.request.header.message_id);
            self.respond(&held.request, held.response, out, now);
        }
    }

    fn respond(&mut self, request: &Packet, response: Packet, out: &mut Vec<Bytes>, now: Instant) {
        if let Err(error) = self.exchange.respond(request, response, now, out) {
            tracing::warn!(%error, "response not sent");
        }
    }

    // ---- the registration interface ------------------------------------------------------

    fn handle_request(&mut self, request: Request, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if self
            .held_message_ids
            .contains(&request.packet.header.message_id)
        {
            tracing::debug!("retransmission of a request whose answer waits for the store");
            return Flow::Continue;
        }
        let segments: Vec<String> = request
            .packet
            .get_option(CoapOption::UriPath)
            .into_iter()
            .flatten()
            .map(|segment| String::from_utf8_lossy(segment).into_owned())
            .collect();
        let outcome = match (request.method, segments.as_slice()) {
            (RequestType::Post, [rd]) if rd == "rd" => self.register(&request.packet, now),
            (RequestType::Post, [rd, location]) if rd == "rd" => {
                self.update(&request.packet, location, now)
            }
            (RequestType::Delete, [rd, location]) if rd == "rd" => self.deregister(location, now),
            (RequestType::Post, [dp]) if dp == "dp" => self.send_operation(&request.packet, now),
            (_, [rd, ..]) if rd == "rd" || rd == "dp" => Err(Refusal::MethodNotAllowed),
            _ => Err(Refusal::NotFound),
        };
        let (response, ticket) = match outcome {
            Ok(answer) => {
                self.last_received = now;
                answer
            }
            Err(refusal) => {
                let mut response = reply(refusal.code(), refusal.to_string().into_bytes());
                if let Refusal::Congested(after) = refusal {
                    set_retry_after(&mut response, after);
                } else if let Refusal::Busy = refusal {
                    set_retry_after(&mut response, mqtt_core::client::BUSY_RETRY);
                    tracing::info!(reason = %refusal, "request refused");
                } else {
                    tracing::info!(code = %MessageClass::Response(refusal.code()), reason = %refusal, "request refused");
                }
                (response, None)
            }
        };
        self.answer_durably(request.packet, response, ticket, out, now);
        Flow::Continue
    }

    /// Whether `location` (`/rd/{location}`) names the registration this channel holds:
    /// only its holder updates or ends a registration.
    fn holds_location(&self, location: &str) -> bool {
        self.registration
            .as_ref()
            .is_some_and(|registration| registration.endpoint == location)
    }

    fn register(&mut self, packet: &Packet, now: Instant) -> Result<Answer, Refusal> {
        let query = queries(packet);
        let endpoint = query
            .get("ep")
            .filter(|ep| !ep.is_empty() && !ep.contains(['/', '+', '#']))
            .cloned()
            .ok_or(Refusal::BadRequest("invalid queries"))?;
        let version = query.get("lwm2m").cloned().unwrap_or_else(|| "1.0".into());
        if !matches!(version.as_str(), "1.0" | "1" | "1.1" | "1.2") {
            return Err(Refusal::BadRequest("invalid lwm2m version"));
        }
        let lifetime = match query.get("lt") {
            None => DEFAULT_LIFETIME,
            Some(lt) => lt
                .parse::<u64>()
                .map_err(|_| Refusal::BadRequest("invalid queries"))?,
        };
        let (alternate_path, object_list) = parse_object_list(&packet.payload)?;
        let client_id = query
            .get("device_id")
            .cloned()
            .unwrap_or_else(|| endpoint.clone());
        // A mountpoint made of the endpoint name must be this session's own: under another
        // session's client id, `ep=victim` would read the victim's commands and answer for it.
        if client_id != endpoint && self.settings.mountpoint.contains("${endpoint_name}") {
            return Err(Refusal::BadRequest(
                "device_id differs from ep, whose name the mountpoint carries",
            ));
        }
        let username = query
            .get("imei")
            .cloned()
            .unwrap_or_else(|| endpoint.clone());
        let password = query.get("password").cloned();

        let mut info = Map::new();
        for (key, value) in &query {
            if key != "password" {
                info.insert(key.clone(), value.clone().into());
            }
        }
        info.insert("ep".into(), endpoint.clone().into());
        info.insert("lt".into(), lifetime.into());
        info.insert("lwm2m".into(), version.clone().into());
        info.entry("b").or_insert_with(|| "U".into());
        info.insert(
            "alternatePath".into(),
            alternate_path_text(&alternate_path).into(),
        );
        info.insert("objectList".into(), object_list.clone().into());

        // Checked and opened before anything this channel holds is touched: a refused
        // register (wrong password, unsafe endpoint name, another user's session) leaves
        // the registration of whoever holds it as it was.
        let proto = ProtoInfo {
            name: "LwM2M",
            version: ProtoVer::Text(match version.as_str() {
                "1.1" => "1.1",
                "1.2" => "1.2",
                _ => "1.0",
            }),
        };
        let opening = Opening {
            client_id: &client_id,
            endpoint: &endpoint,
            proto,
            lifetime: self.clamp_lifetime(lifetime),
        };
        let (session, control) = self.open_session(opening, username, password, now)?;
        // A second registration on a live channel starts over.
        self.end_registration(DisconnectReason::Normal, now);
        self.control = control;
        self.session = Some(session);
        self.refused_events = 0;
        let permit = match self
            .subscribe_commands(now)
            .and_then(|()| self.permit_event(&self.settings.register, now))
        {
            Ok(permit) => permit,
            Err(refusal) => {
                self.end_registration(DisconnectReason::SockClosed, now);
                return Err(refusal);
            }
        };
        let binding = query.get("b").map(String::as_str).unwrap_or("U");
        let registration = Registration {
            lifetime: self.clamp_lifetime(lifetime),
            queue_mode: binding.contains('Q') || query.contains_key("Q"),
            endpoint: endpoint.clone(),
            version,
            alternate_path,
            object_list,
            info,
        };
        tracing::Span::current().record("client_id", endpoint.as_str());
        tracing::info!(
            lifetime = registration.lifetime.as_secs(),
            queue_mode = registration.queue_mode,
            version = %registration.version,
            "device registered"
        );
        let event =
            json!({ "msgType": "register", "data": Json::Object(registration.info.clone()) });
        self.registration = Some(registration);
        let device = Arc::new(Device::new(
            self.wakeup.clone(),
            self.settings.objects.clone(),
        ));
        let client_id: Arc<str> = Arc::from(client_id);
        self.settings
            .devices
            .insert(client_id.clone(), device.clone());
        self.device = Some((client_id, device));
        let ticket = self.publish_permitted(permit, &event, now);
        self.auto_observe(now);

        let mut response = reply(ResponseType::Created, Vec::new());
        response.add_option(CoapOption::LocationPath, b"rd".to_vec());
        response.add_option(CoapOption::LocationPath, endpoint.into_bytes());
        Ok((response, ticket))
    }

    fn clamp_lifetime(&self, seconds: u64) -> Duration {
        if seconds == 0 {
            return self.settings.lifetime_max;
        }
        Duration::from_secs(seconds).clamp(self.settings.lifetime_min, self.settings.lifetime_max)
    }

    fn update(&mut self, packet: &Packet, location: &str, now: Instant) -> Result<Answer, Refusal> {
        let clamp = |this: &Self, lt| this.clamp_lifetime(lt);
        let lifetime = match queries(packet).get("lt") {
            None => None,
            Some(lt) => Some(
                lt.parse::<u64>()
                    .map_err(|_| Refusal::BadRequest("invalid queries"))?,
            ),
        };
        let new_lifetime = lifetime.map(|lt| clamp(self, lt));
        let object_list = if packet.payload.is_empty() {
            None
        } else {
            Some(parse_object_list(&packet.payload)?)
        };
        let query = queries(packet);
        if !self.holds_location(location) {
            return Err(Refusal::NotFound);
        }
        // Refused, the update changes nothing.
        let permit = if self.settings.publish_update_always || object_list.is_some() {
            Some(self.permit_event(&self.settings.update, now)?)
        } else {
            None
        };
        let Some(registration) = self.registration.as_mut() else {
            return Err(Refusal::NotFound);
        };
        let mut changed = Map::new();
        for (key, value) in &query {
            if key != "password" {
                changed.insert(key.clone(), value.clone().into());
            }
        }
        if let (Some(lt), Some(lifetime)) = (lifetime, new_lifetime) {
            changed.insert("lt".into(), lt.into());
            registration.lifetime = lifetime;
        }
        if let Some(binding) = query.get("b") {
            registration.queue_mode = binding.contains('Q') || query.contains_key("Q");
        }
        if let Some((alternate_path, objects)) = object_list {
            changed.insert(
                "alternatePath".into(),
                alternate_path_text(&alternate_path).into(),
            );
            changed.insert("objectList".into(), objects.clone().into());
            registration.alternate_path = alternate_path;
            registration.object_list = objects;
        }
        for (key, value) in changed {
            registration.info.insert(key, value);
        }
        let event = json!({ "msgType": "update", "data": Json::Object(registration.info.clone()) });
        tracing::info!(
            lifetime = registration.lifetime.as_secs(),
            "registration updated"
        );
        let ticket = permit.and_then(|permit| self.publish_permitted(permit, &event, now));
        Ok((reply(ResponseType::Changed, Vec::new()), ticket))
    }

    /// Ends the registration; the channel closes once its answer is sent.
    fn deregister(&mut self, location: &str, now: Instant) -> Result<Answer, Refusal> {
        if !self.holds_location(location) {
            return Err(Refusal::NotFound);
        }
        tracing::info!("device de-registered");
        self.end_registration(DisconnectReason::Normal, now);
        Ok((reply(ResponseType::Deleted, Vec::new()), None))
    }

    /// LwM2M 1.1 Send: the values go to the notify topic as msgType `send`.
    fn send_operation(&mut self, packet: &Packet, now: Instant) -> Result<Answer, Refusal> {
        if self.registration.is_none() {
            return Err(Refusal::NotFound);
        }
        let permit = self.permit_event(&self.settings.notify, now)?;
        let root = Path::default();
        let content = match command::content_format(packet).and_then(|format| {
            lwm2m::decode(format, &root, &packet.payload, &*self.settings.objects)
        }) {
            Ok(entries) => entries
                .iter()
                .map(lwm2m::Entry::to_json)
                .collect::<Vec<_>>(),
            Err(error) => {
                tracing::info!(%error, "Send payload refused");
                return Err(Refusal::BadRequest("undecodable payload"));
            }
        };
        let event = json!({
            "msgType": "send",
            "data": { "reqPath": "/dp", "code": "2.04", "codeMsg": "changed", "content": content },
        });
        let ticket = self.publish_permitted(permit, &event, now);
        Ok((reply(ResponseType::Changed, Vec::new()), ticket))
    }

    /// The channel of a device whose transport authenticated it as `identity` (a DTLS key
    /// identity): its endpoint name, client id and user name must be that.
    /// `None` leaves it as a plain transport's.
    pub fn with_transport_identity(mut self, identity: Option<Arc<str>>) -> Lwm2mChannel {
        self.transport_identity = identity;
        self
    }

    /// Authenticates the device and opens its session on a connection of its own.
    fn open_session(
        &self,
        opening: Opening<'_>,
        username: String,
        password: Option<String>,
        now: Instant,
    ) -> Result<(ClientSession, Arc<ConnControl>), Refusal> {
        let Opening {
            client_id,
            endpoint,
            proto,
            lifetime,
        } = opening;
        let username = match &self.transport_identity {
            Some(identity) if **identity != *endpoint || **identity != *client_id => {
                tracing::info!(endpoint, client_id, identity = %identity, "endpoint other than the transport identity refused");
                return Err(Refusal::Forbidden("the endpoint must be the DTLS identity"));
            }
            Some(identity) => identity.to_string(),
            None => username,
        };
        let refused = |refused: ConnectRefused| {
            tracing::info!(%refused, client_id, "registration refused");
            Refusal::from(refused)
        };
        // The endpoint name is a value of the mountpoint, never part of its template: one
        // holding a wildcard, a separator or a placeholder is refused, not substituted.
        let who = self
            .broker
            .authenticate(Presented {
                protocol: LWM2M_NAMESPACE,
                listener: self.settings.listener.clone(),
                client_id: Arc::from(client_id),
                username: Some(username),
                password: password.map(Bytes::from),
                peer: self.peer,
                mountpoint: self.settings.mountpoint.clone(),
                mountpoint_values: vec![("endpoint_name", endpoint.to_owned())],
            })
            .map_err(refused)?;
        let control = ConnControl::new(self.broker.next_connection_id(), self.wakeup.clone());
        let session = self
            .broker
            .open_session(
                who,
                OpenSession {
                    clean_start: true,
                    expiry_interval: 0,
                    will: None,
                    control: control.clone(),
                    rates: self.settings.rates,
                    proto,
                    keepalive: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
                    announce: true,
                },
                now,
            )
            .map_err(refused)?;
        Ok((session, control))
    }

    /// A device that cannot receive commands cannot be managed: its registration is
    /// refused rather than accepted deaf.
    fn subscribe_commands(&mut self, now: Instant) -> Result<(), Refusal> {
        let Some(session) = &self.session else {
            return Err(Refusal::NotFound);
        };
        let options = SubscriptionOptions {
            qos: self.settings.command.qos,
            ..SubscriptionOptions::default()
        };
        session
            .subscribe(&self.settings.command.topic, options, None, now)
            .map(|_| ())
            .map_err(|reason| {
                tracing::info!(reason = reason.0, topic = %self.settings.command.topic, "command topic not subscribed");
                Refusal::Forbidden("command topic not authorized")
            })
    }

    fn auto_observe(&mut self, now: Instant) {
        let Some(registration) = &self.registration else {
            return;
        };
        let wanted: Vec<String> = match &self.settings.auto_observe {
            AutoObserveMode::Off => return,
            AutoObserveMode::All => registration
                .object_list
                .iter()
                .filter(|path| {
                    path.parse::<Path>()
                        .ok()
                        .and_then(|p| p.object())
                        .is_some_and(|object| !NOT_AUTO_OBSERVED.contains(&object))
                })
                .cloned()
                .collect(),
            AutoObserveMode::Paths(paths) => paths
                .iter()
                .filter(|path| registration.object_list.contains(path))
                .cloned()
                .collect(),
        };
        for path in wanted {
            let object = path.parse::<Path>().ok().and_then(|p| p.object());
            if object
                .and_then(|id| self.settings.objects.object(id))
                .is_none()
            {
                tracing::warn!(path, "not auto-observed: no object definition");
                continue;
            }
            let command = Command {
                json:
                    json!({"msgType": "observe", "data": {"path": path}, "is_auto_observe": true})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                operation: Some(Operation::Observe),
            };
            self.enqueue(command, None, now);
        }
    }

    // ---- commands ------------------------------------------------------------------------

    /// Moves commands delivered to the session into the device's queue.
    fn take_commands(&mut self, now: Instant) {
        // The operator's commands, from the admin API, take the same way from here on.
        let handed = self
            .device
            .as_ref()
            .map(|(_, device)| device.take_pending())
            .unwrap_or_default();
        for command in handed {
            self.enqueue(command, None, now);
        }
        let Some(session) = self.session.as_ref().map(|s| s.session().clone()) else {
            return;
        };
        loop {
            let Some(delivery) = session.state.lock().pop_queued(now) else {
                break;
            };
            match Command::parse(&delivery.message.payload) {
                Ok(command) => self.enqueue(command, delivery.message.expires_at, now),
                Err((echo, error)) => {
                    tracing::info!(%error, "invalid command");
                    self.answer_invalid(echo.as_ref(), &error, now);
                }
            }
        }
    }

    fn enqueue(&mut self, command: Command, expires_at: Option<Instant>, now: Instant) {
        if self.queue.len() >= self.settings.max_queued_commands {
            if let Some(oldest) = self.queue.pop_front() {
                tracing::warn!(
                    max = self.settings.max_queued_commands,
                    "command queue full: oldest command dropped"
                );
                let event = command::event(&oldest.command.json, "coap_timeout");
                self.publish(&self.settings.response.clone(), &event, now);
            }
        }
        self.queue.push_back(Queued {
            command,
            expires_at,
        });
    }

    fn answer_invalid(
        &mut self,
        echo: Option<&Map<String, Json>>,
        error: &CommandError,
        now: Instant,
    ) {
        let msg_type = echo
            .and_then(|e| e.get("msgType"))
            .and_then(Json::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let path = echo
            .map(|json| {
                Command {
                    json: json.clone(),
                    operation: None,
                }
                .request_path()
            })
            .unwrap_or_else(|| "/".into());
        let body = command::response(
            echo,
            &msg_type,
            &path,
            ResponseType::BadRequest,
            None,
            Some(error.to_string()),
        );
        self.publish(&self.settings.response.clone(), &body, now);
    }

    /// A device in queue mode listens only shortly after it spoke.
    fn reachable(&self, now: Instant) -> bool {
        match &self.registration {
            Some(registration) => {
                !registration.queue_mode
                    || now < self.last_received + self.settings.qmode_time_window
            }
            None => false,
        }
    }

    /// Sends the next queued command when none is outstanding and the device listens.
    /// Nothing goes while an answer to the device is held: a device is not managed before
    /// it has heard that it is registered.
    fn send_next(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        while self.in_flight.is_none() && self.held_answers.is_empty() && self.reachable(now) {
            let Some(queued) = self.queue.pop_front() else {
                return;
            };
            if queued.expires_at.is_some_and(|at| now >= at) {
                tracing::debug!("queued command expired");
                continue;
            }
            let alternate = self
                .registration
                .as_ref()
                .map(|r| r.alternate_path.clone())
                .unwrap_or_default();
            let mut packet = match command::to_request(&queued.command, &alternate) {
                Ok(packet) => packet,
                Err(error) => {
                    tracing::info!(%error, "invalid command");
                    self.answer_invalid(Some(&queued.command.json), &error, now);
                    continue;
                }
            };
            let token = match queued.command.operation {
                // A cancellation names the observation by its token (RFC 7641 3.6).
                Some(Operation::CancelObserve) => self
                    .observation_token(&queued.command.request_path())
                    .unwrap_or_else(|| self.new_token()),
                _ => self.new_token(),
            };
            packet.set_token(token.clone());
            self.next_sequence += 1;
            let sequence = self.next_sequence;
            match self
                .exchange
                .send_confirmable(packet, Sent::Command(sequence), now, out)
            {
                Ok(_) => {
                    self.in_flight = Some(InFlight {
                        sequence,
                        token,
                        command: queued.command,
                        separate_deadline: None,
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "command not sent");
                    let body = command::response(
                        Some(&queued.command.json),
                        queued
                            .command
                            .json
                            .get("msgType")
                            .and_then(Json::as_str)
                            .unwrap_or(""),
                        &queued.command.request_path(),
                        ResponseType::RequestEntityTooLarge,
                        None,
                        Some(error.to_string()),
                    );
                    self.publish(&self.settings.response.clone(), &body, now);
                }
            }
        }
    }

    fn new_token(&mut self) -> Vec<u8> {
        (self.exchange.random() as u32).to_be_bytes().to_vec()
    }

    fn observation_token(&self, path: &str) -> Option<Vec<u8>> {
        self.observations
            .iter()
            .find(|(_, command)| command.request_path() == path)
            .map(|(token, _)| token.clone())
    }

    fn separate_response_follows(&mut self, sequence: u64, now: Instant) {
        // For the device to send what it promised.
        let wait = self.settings.transmission.max_transmit_wait();
        let Some(in_flight) = self.in_flight.as_mut().filter(|f| f.sequence == sequence) else {
            return;
        };
        in_flight.separate_deadline = Some(now + wait);
        let event = command::event(&in_flight.command.json, "ack");
        self.publish(&self.settings.response.clone(), &event, now);
    }

    fn command_failed(&mut self, sequence: u64, msg_type: &str, now: Instant) {
        let Some(in_flight) = self.in_flight.take_if(|f| f.sequence == sequence) else {
            return;
        };
        let event = command::event(&in_flight.command.json, msg_type);
        self.publish(&self.settings.response.clone(), &event, now);
    }

    /// A response to the command in flight, or a notification of an observation.
    fn handle_response(&mut self, packet: Packet, now: Instant) {
        let token = packet.get_token().to_vec();
        let MessageClass::Response(code) = packet.header.code else {
            return;
        };
        if let Some(in_flight) = self.in_flight.take_if(|f| f.token == token) {
            self.answer(in_flight.command, token, &packet, code, now);
            return;
        }
        if let Some(observe) = self.observations.get(&token).cloned() {
            let mut body = self.read_like(&observe, "notify", &packet, code);
            if let (Json::Object(map), Some(Ok(sequence))) = (&mut body, packet.get_observe_value())
            {
                map.insert("seqNum".into(), sequence.into());
            }
            if !code.is_success() {
                self.observations.remove(&token);
            }
            self.record("observe", &body);
            self.publish(&self.settings.notify.clone(), &body, now);
            return;
        }
        tracing::debug!("response matching no request or observation");
    }

    fn answer(
        &mut self,
        command: Command,
        token: Vec<u8>,
        packet: &Packet,
        code: ResponseType,
        now: Instant,
    ) {
        let msg_type = command
            .json
            .get("msgType")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let path = command.request_path();
        let body = match command.operation {
            Some(Operation::Read) => self.read_like(&command, &msg_type, packet, code),
            Some(Operation::Observe) => {
                if code.is_success() {
                    self.observations.insert(token, command.clone());
                }
                let mut body = self.read_like(&command, &msg_type, packet, code);
                if let (Json::Object(map), Some(Ok(sequence))) =
                    (&mut body, packet.get_observe_value())
                {
                    if sequence > 0 {
                        map.insert("seqNum".into(), sequence.into());
                    }
                }
                body
            }
            Some(Operation::CancelObserve) => {
                self.observations
                    .retain(|_, observed| observed.request_path() != path);
                self.read_like(&command, &msg_type, packet, code)
            }
            Some(Operation::Discover) if code.is_success() => {
                match command::discover_content(packet) {
                    Ok(links) => command::response(
                        Some(&command.json),
                        &msg_type,
                        &path,
                        code,
                        Some(links),
                        None,
                    ),
                    Err(error) => {
                        tracing::info!(%error, "device answer not decoded");
                        command::response(
                            Some(&command.json),
                            &msg_type,
                            &path,
                            ResponseType::BadRequest,
                            None,
                            Some(error),
                        )
                    }
                }
            }
            _ => command::response(Some(&command.json), &msg_type, &path, code, None, None),
        };
        self.record(&msg_type, &body);
        self.publish(&self.settings.response.clone(), &body, now);
    }

    /// Keeps the device's answer for the admin API's lookup.
    fn record(&self, action: &str, body: &Json) {
        if let Some((_, device)) = &self.device {
            device.record(action, body);
        }
    }

    /// A read, observe or notification answer: the content typed by the definitions, or
    /// 4.00 naming why it could not be.
    fn read_like(
        &self,
        command: &Command,
        msg_type: &str,
        packet: &Packet,
        code: ResponseType,
    ) -> Json {
        let request_path = command.request_path();
        if !code.is_success() {
            return command::response(
                Some(&command.json),
                msg_type,
                &request_path,
                code,
                None,
                None,
            );
        }
        if packet.payload.is_empty() {
            return command::response(
                Some(&command.json),
                msg_type,
                &request_path,
                code,
                None,
                None,
            );
        }
        let decoded = request_path
            .parse::<Path>()
            .map_err(|e| e.to_string())
            .and_then(|path| {
                command::read_content(packet, &path, &self.settings.objects)
                    .map_err(|e| e.to_string())
            });
        match decoded {
            Ok(content) => command::response(
                Some(&command.json),
                msg_type,
                &request_path,
                code,
                Some(content),
                None,
            ),
            Err(error) => {
                tracing::info!(%error, "device answer not decoded");
                command::response(
                    Some(&command.json),
                    msg_type,
                    &request_path,
                    ResponseType::BadRequest,
                    None,
                    Some(error),
                )
            }
        }
    }

    /// Checks an event a request of the device causes (register, update, Send): refused,
    /// so is the request.
    fn permit_event(&self, topic: &Topic, now: Instant) -> Result<PublishPermit, Refusal> {
        let Some(session) = &self.session else {
            return Err(Refusal::NotFound);
        };
        if session.is_held_back(now) {
            return Err(Refusal::Congested(session.refuse_for_congestion(now)));
        }
        session
            .permit(&topic.topic, topic.qos, false)
            .map_err(|refused| {
                tracing::info!(topic = %topic.topic, %refused, "event refused");
                Refusal::from(refused)
            })
    }

    /// Publishes a permitted event; returns the store ticket the device's answer waits for.
    fn publish_permitted(
        &self,
        permit: PublishPermit,
        body: &Json,
        now: Instant,
    ) -> Option<Ticket> {
        let session = self.session.as_ref()?;
        let dispatched = session.publish_permitted(
            permit,
            Bytes::from(body.to_string()),
            Default::default(),
            now,
        );
        dispatched.ticket
    }

    /// Publishes an event of the gateway's own (a command's answer, a notification, `ack`,
    /// `coap_timeout`): no request of the device waits on it, as the message layer
    /// acknowledged the device's answer already, so its ticket has nothing to hold, and a
    /// refusal (not authorized, store full) drops the event, logged once per registration.
    fn publish(&mut self, topic: &Topic, body: &Json, now: Instant) {
        let Some(session) = &self.session else {
            return;
        };
        let result = session.publish(
            &topic.topic,
            topic.qos,
            false,
            Bytes::from(body.to_string()),
            Default::default(),
            now,
        );
        if let Err(refused) = result {
            self.refused_events += 1;
            if self.refused_events == 1 {
                tracing::warn!(topic = %topic.topic, %refused, "event not published (further refusals of this registration are not logged)");
            }
        }
    }
}

trait Success {
    fn is_success(&self) -> bool;
}

impl Success for ResponseType {
    fn is_success(&self) -> bool {
        (u8::from(MessageClass::Response(*self)) >> 5) == 2
    }
}

fn reply(code: ResponseType, payload: Vec<u8>) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Response(code);
    packet.header.set_type(MessageType::Acknowledgement);
    packet.payload = payload;
    packet
}

/// `key=value` query options; a key without `=` (such as `Q`) maps to "".
fn queries(packet: &Packet) -> HashMap<String, String> {
    packet
        .get_option(CoapOption::UriQuery)
        .into_iter()
        .flatten()
        .map(|raw| {
            let text = String::from_utf8_lossy(raw);
            match text.split_once('=') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (text.into_owned(), String::new()),
            }
        })
        .collect()
}

fn alternate_path_text(segments: &[String]) -> String {
    if segments.is_empty() {
        "/".into()
    } else {
        format!("/{}", segments.join("/"))
    }
}

/// The CoRE link-format object list of a registration: the alternate path (a link with
/// `rt="oma.lwm2m"`) and the object and instance links under it. A payload that is not
/// link format is refused whole.
fn parse_object_list(payload: &[u8]) -> Result<(Vec<String>, Vec<String>), Refusal> {
    let text =
        std::str::from_utf8(payload).map_err(|_| Refusal::BadRequest("invalid object list"))?;
    let parsed = link_format::parse(text).map_err(|error| {
        tracing::info!(%error, "object list refused");
        Refusal::BadRequest("invalid object list")
    })?;
    let mut alternate: Vec<String> = Vec::new();
    let mut links = Vec::new();
    for link in parsed {
        let target = link.target;
        if link.has_resource_type("oma.lwm2m") {
            alternate = target
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        } else if target.trim_matches('/').is_empty() {
            // `</>;ct=11543` describes the client (its content formats), not an object.
            continue;
        } else {
            links.push(target.to_owned());
        }
    }
    let prefix = alternate_path_text(&alternate);
    let objects = links
        .into_iter()
        .map(|link| {
            if prefix != "/" {
                link.strip_prefix(&prefix)
                    .map(str::to_owned)
                    .unwrap_or(link)
            } else {
                link
            }
        })
        .collect();
    Ok((alternate, objects))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_lists_with_and_without_alternate_path() {
        let (alternate, objects) = parse_object_list(b"</1/0>,</3/0>,</5>").unwrap();
        assert!(alternate.is_empty());
        assert_eq!(objects, ["/1/0", "/3/0", "/5"]);
        let (alternate, objects) =
            parse_object_list(br#"</lwm2m>;rt="oma.lwm2m";ct=11543,</lwm2m/1/0>,</lwm2m/3/0>"#)
                .unwrap();
        assert_eq!(alternate, ["lwm2m"]);
        assert_eq!(objects, ["/1/0", "/3/0"]);
        let (alternate, objects) =
            parse_object_list(br#"</>;ct=11543;hb,</1/0>,</3303/0>"#).unwrap();
        assert!(alternate.is_empty());
        assert_eq!(objects, ["/1/0", "/3303/0"]);
        assert!(parse_object_list(b"/1/0").is_err());
        // LwM2M 1.1's root, quoted separators in a parameter, whitespace.
        let (alternate, objects) = parse_object_list(
            br#"</>;rt="oma.lwm2m";ct="60 110 112 11542 11543", </1/0>;title="a,b;c",</3/0>"#,
        )
        .unwrap();
        assert!(alternate.is_empty());
        assert_eq!(objects, ["/1/0", "/3/0"]);
        for broken in [
            &br#"</3/0>;title="a,b"#[..],
            b"</1/0>,",
            b"</1/0>junk,</3/0>",
            b"</1/0",
            b"\xff</1/0>",
        ] {
            assert!(
                matches!(parse_object_list(broken), Err(Refusal::BadRequest(_))),
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }
}
