//! One CoAP peer as a sans-io state machine: datagrams, broker wake-ups and timer ticks in,
//! with `now`; datagrams out. The message layer (deduplication, retransmission, format
//! rules) is the kit's `Exchange`; this channel maps the resources `/ps/{topic}` and
//! `/mqtt/connection` onto a session of the unified model named by the client id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::coap::{
    set_retry_after, CoapOption, EncodeError, Exchange, Inbound, MessageClass, MessageType, Packet,
    Request, RequestType, ResponseType, TransmissionParams,
};
use adapter_kit::coap_block::{
    szx_of, uint_option, BlockOption, BlockwiseParams, Representation, Upload, Uploads, BLOCK1,
    BLOCK2, MAX_SZX,
};
use bytes::Bytes;
use gateway_config::{CoapNotifyType, CoapQos};
use mqtt_core::broker::{Broker, Stats, WillDisposition};
use mqtt_core::client::{
    Authenticated, ClientSession, ConnectRefused, OpenSession, Presented, PublishRefused,
};
use mqtt_core::clients::{DisconnectReason, ProtoInfo, ProtoVer};
use mqtt_core::codec::{PublishProperties, QoS, ReasonCode, SubscriptionOptions};
use mqtt_core::message::Delivery;
use mqtt_core::protocol::{CertificateIdentity, Flow};
use mqtt_core::rate::PublishRates;
use mqtt_core::session::{ConnControl, SessionKey, Wakeup};
use mqtt_core::storage::{HeldReplies, Ticket};

use crate::admission::{AuthFailureLimit, AuthFailures, Credentials};
use crate::downlink::{Answer, Client, Clients, Failure, Outgoing, Reply};
use crate::framing::{Frame, Framing};
use crate::reliable::{self, ReliableLink};

/// The namespace of CoAP sessions: a CoAP "dev1" is not the MQTT "dev1".
pub const COAP_NAMESPACE: &str = "coap";

/// How the operator's view and presence events name the protocol (EMQX's words).
const COAP_PROTO: ProtoInfo = ProtoInfo {
    name: "CoAP",
    version: ProtoVer::Text("1"),
};

/// Critical options the resources understand: Uri-Host, Uri-Port, Uri-Path, Uri-Query,
/// Accept. Others (If-Match, Proxy-Uri, ...) get 4.02 Bad Option.
pub const UNDERSTOOD_CRITICAL: &[u16] = &[3, 7, 11, 15, 17];

/// The same with block-wise transfers on: Block2 and Block1 too.
pub const UNDERSTOOD_CRITICAL_BLOCKWISE: &[u16] = &[3, 7, 11, 15, 17, 23, 27];

/// Observe sequence numbers are 24 bits (RFC 7641 4.4).
const OBSERVE_MASK: u32 = 0x00FF_FFFF;

/// 2.07, EMQX's answer to a cancelled observation, is not a registered code; a
/// cancellation is an ordinary GET answered 2.05 without Observe (RFC 7641 3.6).
const CONTENT: ResponseType = ResponseType::Content;

/// What every channel of one listener shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `udp:NAME`, as logs and auth rules name the listener.
    pub listener: Arc<str>,
    pub heartbeat: Duration,
    pub connection_required: bool,
    pub notify_type: CoapNotifyType,
    pub subscribe_qos: CoapQos,
    pub publish_qos: CoapQos,
    /// May contain `${clientid}` and `${username}`.
    pub mountpoint: String,
    pub transmission: TransmissionParams,
    /// `None` when block-wise transfers are off.
    pub blockwise: Option<BlockwiseParams>,
    /// Confirmable requests get an empty acknowledgement at once and their response as a
    /// confirmable message of its own (RFC 7252 5.2.2), instead of piggybacked.
    pub separate_response: bool,
    /// Failed authentications one source may make before it is refused for a while.
    pub auth_failures: AuthFailureLimit,
    /// What one client may publish: the listener's `messages_rate` and `bytes_rate`.
    pub rates: PublishRates,
    /// The clients in connection mode the admin API sends requests to, shared by every
    /// listener of the gateway.
    pub clients: Arc<Clients>,
}

impl Settings {
    pub fn from_config(
        listener: Arc<str>,
        config: &gateway_config::CoapConfig,
        listener_config: &gateway_config::UdpListenerConfig,
    ) -> Settings {
        Settings::for_listener(
            listener,
            config,
            listener_config.mountpoint_or(&config.mountpoint),
            listener_config.max_packet_size as usize,
            PublishRates::new(listener_config.messages_rate, listener_config.bytes_rate),
        )
    }

    /// The settings of any listener: `mountpoint` is the listener's (or the gateway's),
    /// `max_message_size` the largest message it accepts, `rates` what each client may
    /// publish.
    pub fn for_listener(
        listener: Arc<str>,
        config: &gateway_config::CoapConfig,
        mountpoint: &str,
        max_message_size: usize,
        rates: PublishRates,
    ) -> Settings {
        Settings {
            listener,
            heartbeat: config.heartbeat.get(),
            connection_required: config.connection_required,
            notify_type: config.notify_type,
            subscribe_qos: config.subscribe_qos,
            publish_qos: config.publish_qos,
            mountpoint: mountpoint.to_owned(),
            transmission: TransmissionParams {
                ack_timeout: config.ack_timeout.get(),
                ack_random_factor: config.ack_random_factor,
                max_retransmit: config.max_retransmit,
                exchange_lifetime: config.exchange_lifetime.get(),
                non_lifetime: config.non_lifetime.get(),
                max_message_size,
                ..TransmissionParams::rfc7252(if config.blockwise.enable {
                    UNDERSTOOD_CRITICAL_BLOCKWISE
                } else {
                    UNDERSTOOD_CRITICAL
                })
            },
            blockwise: config.blockwise.enable.then(|| BlockwiseParams {
                max_szx: szx_of(config.blockwise.max_block_size as usize).unwrap_or(MAX_SZX),
                max_body_size: config.blockwise.max_body_size as usize,
                lifetime: config.blockwise.exchange_lifetime.get(),
                max_transfers: config.blockwise.max_transfers as usize,
            }),
            separate_response: config.separate_response,
            auth_failures: AuthFailureLimit::from_config(config),
            rates,
            clients: Arc::default(),
        }
    }
}

/// What a confirmable or non-confirmable message of ours was, for its ACK or Reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Notification {
        subscription_id: u32,
        confirmable: bool,
    },
    /// An empty confirmable message probing a silent observer (RFC 7641 4.5).
    Ping,
    /// A separate response to a confirmable request (RFC 7252 5.2.2).
    Response,
    /// A request of the admin API's, by its sequence number.
    Request(u64),
}

/// A request of the admin API's sent to the client, waiting for its response.
struct RequestInFlight {
    sequence: u64,
    token: Vec<u8>,
    reply: Reply,
    client: Arc<Client>,
    /// After an empty acknowledgement, the separate response is awaited until then.
    separate_until: Option<Instant>,
}

/// One observe relation: a subscription of the session, notified with the request's token.
#[derive(Debug, Clone)]
struct Observation {
    subscription_id: u32,
    /// The filter as the client wrote it (the session holds it mounted).
    filter: String,
    token: Vec<u8>,
    sequence: u32,
    /// Block size exponent of notifications too large for one message: ours, or smaller
    /// when the observe request asked for it with Block2 (RFC 7959 2.4).
    szx: u8,
    /// The last notification sent in blocks and its Content-Format, for the client's GETs
    /// of the other blocks.
    representation: Option<(Representation, Option<u16>)>,
}

/// The connection-mode token of a session and the identity that obtained it, kept in the
/// session so that the client may come back from another address with the token alone.
#[derive(Debug, Clone)]
struct ConnectionToken {
    token: String,
    who: Authenticated,
}

/// How long a client told to wait by 5.03 waits (Max-Age, RFC 7252 5.9.3.4): the store
/// frees room as subscribers take their messages, in seconds rather than milliseconds.
const STORE_FULL_RETRY: Duration = Duration::from_secs(5);

/// Why a request is refused, with the response code it gets.
#[derive(Debug, Clone, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    #[error("{0}")]
    BadOption(&'static str),
    #[error("no such resource")]
    NotFound,
    /// RFC 8516: too many failed authentications from this source; retry after the time.
    #[error("too many failed authentications")]
    TooManyRequests(Duration),
    /// The store is full: a QoS 1/2 message cannot be taken now; retry after the time.
    #[error("store full")]
    Unavailable(Duration),
    /// A receiver of the client's messages is behind, or the client went over its publish
    /// rates; retry after the time. Counted by the session layer, not logged: a fast
    /// publisher meets it many times a second.
    #[error("a receiver is behind or the publish rate is exceeded; retry later")]
    Congested(Duration),
    /// Flapping detection: the client id connected too often; retry after the time.
    #[error("banned")]
    Banned(Duration),
    /// The credentials were not checked: too many costly password checks running.
    #[error("too many password checks running; retry later")]
    Busy(Duration),
}

impl Refusal {
    fn code(&self) -> ResponseType {
        match self {
            Refusal::BadRequest(_) => ResponseType::BadRequest,
            Refusal::Unauthorized(_) => ResponseType::Unauthorized,
            Refusal::Forbidden(_) => ResponseType::Forbidden,
            Refusal::MethodNotAllowed => ResponseType::MethodNotAllowed,
            Refusal::BadOption(_) => ResponseType::BadOption,
            Refusal::NotFound => ResponseType::NotFound,
            Refusal::TooManyRequests(_) | Refusal::Banned(_) => ResponseType::TooManyRequests,
            Refusal::Unavailable(_) | Refusal::Congested(_) | Refusal::Busy(_) => {
                ResponseType::ServiceUnavailable
            }
        }
    }

    /// The response: its code, the reason as diagnostic payload, and for a refusal that
    /// passes, when to retry (Max-Age, whole seconds rounded up).
    fn response(&self) -> Packet {
        let mut response = Packet::new();
        response.header.code = MessageClass::Response(self.code());
        response.payload = self.to_string().into_bytes();
        if let Refusal::TooManyRequests(after)
        | Refusal::Unavailable(after)
        | Refusal::Congested(after)
        | Refusal::Busy(after)
        | Refusal::Banned(after) = self
        {
            set_retry_after(&mut response, *after);
        }
        response
    }

    /// How a refused identity or session is answered.
    fn of_connect(refused: &ConnectRefused) -> Refusal {
        match refused {
            ConnectRefused::BadCredentials | ConnectRefused::NotAuthorized => {
                Refusal::Unauthorized("authentication failed")
            }
            ConnectRefused::SessionOwnedByAnother => {
                Refusal::Forbidden("the session belongs to another user")
            }
            ConnectRefused::ClientIdInvalid => Refusal::BadRequest("unacceptable clientid"),
            ConnectRefused::UnsafeMountpoint(_) => {
                Refusal::BadRequest("clientid or username unusable in the mountpoint")
            }
            ConnectRefused::WillInvalid(..) => Refusal::BadRequest("invalid will"),
            ConnectRefused::Banned(remaining) => Refusal::Banned(*remaining),
            ConnectRefused::Busy => Refusal::Busy(mqtt_core::client::BUSY_RETRY),
        }
    }
}

/// The query parameters of a request, under EMQX's names and short aliases.
#[derive(Debug, Default)]
struct Query {
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    qos: Option<String>,
    retain: Option<String>,
    expiry: Option<String>,
}

impl Query {
    fn parse(packet: &Packet) -> Query {
        let mut query = Query::default();
        for raw in packet
            .get_option(CoapOption::UriQuery)
            .into_iter()
            .flatten()
        {
            let text = String::from_utf8_lossy(raw);
            let (key, value) = text.split_once('=').unwrap_or((&text, ""));
            let slot = match key {
                "clientid" | "c" => &mut query.client_id,
                "username" | "u" => &mut query.username,
                "password" | "p" => &mut query.password,
                "token" | "t" => &mut query.token,
                "qos" | "q" => &mut query.qos,
                "retain" | "r" => &mut query.retain,
                "expiry" => &mut query.expiry,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        query
    }
}

/// The client id a request's query names (`clientid` or `c`), read from an undecoded
/// datagram: how the listener finds the peer of a client that comes from a new address.
pub fn requested_client_id(datagram: &[u8]) -> Option<String> {
    let [first, code, ..] = *datagram else {
        return None;
    };
    // Requests only (class 0, not Empty), of CoAP version 1.
    if first >> 6 != 1 || code == 0 || code >> 5 != 0 {
        return None;
    }
    let packet = Packet::from_bytes(datagram).ok()?;
    Query::parse(&packet).client_id.filter(|id| !id.is_empty())
}

/// The resource a request names.
enum Resource {
    /// `/ps/{topic...}`: the segments after `ps` joined by `/`.
    PubSub(String),
    Connection,
}

fn resource(packet: &Packet) -> Result<Resource, Refusal> {
    let segments: Vec<String> = packet
        .get_option(CoapOption::UriPath)
        .into_iter()
        .flatten()
        .map(|segment| String::from_utf8_lossy(segment).into_owned())
        .collect();
    match segments.split_first() {
        Some((first, rest)) if first == "ps" => {
            let topic = rest.join("/");
            if topic.is_empty() {
                return Err(Refusal::BadRequest("invalid topic"));
            }
            Ok(Resource::PubSub(topic))
        }
        Some((first, rest)) if first == "mqtt" && rest == ["connection"] => {
            Ok(Resource::Connection)
        }
        _ => Err(Refusal::NotFound),
    }
}

/// The message layer under the resources: RFC 7252's over UDP (types, acknowledgements,
/// deduplication, retransmission), RFC 8323's over TCP and WebSocket (signalling only).
enum Link {
    Datagram(Exchange<Sent>),
    Stream(ReliableLink),
}

impl Link {
    fn random(&mut self) -> u64 {
        match self {
            Link::Datagram(exchange) => exchange.random(),
            Link::Stream(link) => link.random(),
        }
    }

    /// Our messages waiting for an acknowledgement; none on a reliable transport.
    fn in_flight(&self) -> usize {
        match self {
            Link::Datagram(exchange) => exchange.in_flight(),
            Link::Stream(_) => 0,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Link::Datagram(exchange) => exchange.next_deadline(),
            Link::Stream(link) => link.next_deadline(),
        }
    }

    fn cancel_all(&mut self) {
        if let Link::Datagram(exchange) = self {
            exchange.cancel_all();
        }
    }

    fn respond(
        &mut self,
        request: &Packet,
        response: Packet,
        separate: bool,
        confirmable: bool,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<(), EncodeError> {
        match self {
            Link::Datagram(exchange) if confirmable => {
                exchange.respond_confirmably(request, response, Sent::Response, now, out)
            }
            Link::Datagram(exchange) if separate => {
                exchange.respond_separately(request, response, Sent::Response, now, out)
            }
            Link::Datagram(exchange) => exchange.respond(request, response, now, out),
            Link::Stream(link) => link.respond(request, response, out),
        }
    }

    /// Sends a notification; true when it waits for an acknowledgement.
    fn notify(
        &mut self,
        packet: Packet,
        confirmable: bool,
        tag: Sent,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<bool, EncodeError> {
        match self {
            Link::Datagram(exchange) if confirmable => exchange
                .send_confirmable(packet, tag, now, out)
                .map(|_| true),
            Link::Datagram(exchange) => exchange
                .send_non_confirmable(packet, tag, out)
                .map(|_| false),
            Link::Stream(link) => link.send(&packet, out).map(|()| false),
        }
    }

    /// Asks a silent client whether it is there: an empty confirmable message over UDP
    /// (answered with Reset), a Ping over a stream (answered with Pong).
    fn ping(&mut self, now: Instant, out: &mut Vec<Bytes>) -> bool {
        match self {
            Link::Datagram(exchange) => exchange.ping(Sent::Ping, now, out).is_some(),
            Link::Stream(link) => link.ping(now, out),
        }
    }

    /// Retransmits what is due; returns what was given up.
    fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Vec<Sent> {
        match self {
            Link::Datagram(exchange) => exchange.handle_timeout(now, out),
            Link::Stream(link) if link.pong_overdue(now) => vec![Sent::Ping],
            Link::Stream(_) => Vec::new(),
        }
    }

    /// Whether a payload of `len` bytes goes out in Block2 blocks of `szx`: over UDP when
    /// it is larger than a block, over a stream when it does not fit the peer's
    /// Max-Message-Size whole.
    fn needs_blocks(&self, len: usize, szx: u8) -> bool {
        match self {
            Link::Datagram(_) => Representation::needs_blocks(len, szx),
            // Room for the header, token and options of a notification.
            Link::Stream(link) => len.saturating_add(64) > link.peer_max_message_size(),
        }
    }
}

pub struct CoapChannel {
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    peer: Option<SocketAddr>,
    control: Arc<ConnControl>,
    link: Link,
    last_received: Instant,
    /// The client this peer acts for, and its session.
    client: Option<ClientSession>,
    /// What the client was admitted with: a request presenting the same client id and
    /// credentials is its own, without the authenticator.
    credentials: Option<Credentials>,
    /// This source's failed authentications.
    failures: AuthFailures,
    /// Set in connection mode once `POST /mqtt/connection` succeeded.
    token: Option<String>,
    /// Answers to publishes that wait until a subscriber's stored copy is durable.
    held: HeldReplies<HeldResponse>,
    observations: Vec<Observation>,
    next_subscription_id: u32,
    /// A confirmable notification waits for its acknowledgement: nothing else goes out
    /// until then, and deliveries wait in the session's bounded queue.
    notification_in_flight: bool,
    ping_in_flight: bool,
    /// Block1 uploads under way; `None` when block-wise transfers are off.
    uploads: Option<Uploads>,
    /// While the client fetches the blocks of a notification, later notifications wait
    /// (so that the representation it is reading stays the same), until the last block is
    /// served or the client stops asking by this time.
    block_transfer_until: Option<Instant>,
    /// On a stream, notifications stopped at the output high-water mark with more queued.
    output_full: bool,
    /// The client answered something of ours at its current address (an acknowledgement
    /// or Reset of our message, our connection token): until then no notification goes
    /// out, since a forged source address would receive it; a ping asks first.
    validated: bool,
    /// The user name the transport authenticated (a DTLS key identity, what a verified
    /// TLS client certificate says): it replaces the query's.
    transport_username: Option<Arc<str>>,
    /// The client id the transport authenticated: the only one a request may name.
    transport_client_id: Option<Arc<str>>,
    /// A DTLS session carries the datagrams: forgetting the peer ends it, and the client
    /// pays a handshake for the next, so a peer that acts for no client yet (it pinged,
    /// or was refused) is kept as one that does is, until it is silent for the heartbeat
    /// interval.
    over_session: bool,
    /// Why the client is forgotten, once known: it went silent, or asked to go.
    ending: Option<DisconnectReason>,
    /// In connection mode over datagrams: how the admin API's requests reach the client,
    /// entered in `settings.clients` under its client id.
    downlink: Option<(Arc<str>, Arc<Client>)>,
    requests: Vec<RequestInFlight>,
    next_request: u64,
}

/// The answer to a publish, sent once the store ticket it waits for is durable.
struct HeldResponse {
    /// The request's header and token, all an answer needs of it.
    request: Packet,
    response: Packet,
}

/// What serving a request leaves to do after its answer.
#[derive(Debug, Default)]
struct Aftermath {
    /// The client is gone: close once answered.
    close: bool,
    /// The store ticket the answer waits for.
    ticket: Option<Ticket>,
}

/// Notification bytes one call writes to a stream before it waits for the driver to drain.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;

impl CoapChannel {
    pub fn new(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
        wakeup: Arc<dyn Wakeup>,
        seed: u64,
        now: Instant,
    ) -> CoapChannel {
        let exchange = Exchange::new(settings.transmission.clone(), seed);
        CoapChannel::with_link(
            broker,
            settings,
            peer,
            wakeup,
            Link::Datagram(exchange),
            now,
        )
    }

    /// A channel for one TCP or WebSocket connection (RFC 8323); [`CoapChannel::start`]
    /// sends its CSM, which announces the settings' `max_message_size` as ours.
    pub fn new_stream(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
        wakeup: Arc<dyn Wakeup>,
        framing: Framing,
        seed: u64,
        now: Instant,
    ) -> CoapChannel {
        let link = ReliableLink::new(
            framing,
            settings.transmission.max_message_size,
            // A Ping over a stream waits for its Pong as long as a confirmable message
            // over UDP waits for its acknowledgement.
            settings.transmission.max_transmit_wait(),
            settings.transmission.understood_critical,
            seed,
        );
        CoapChannel::with_link(broker, settings, peer, wakeup, Link::Stream(link), now)
    }

    fn with_link(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
        wakeup: Arc<dyn Wakeup>,
        link: Link,
        now: Instant,
    ) -> CoapChannel {
        let control = ConnControl::new(broker.next_connection_id(), wakeup);
        CoapChannel {
            broker,
            peer,
            control,
            link,
            last_received: now,
            client: None,
            credentials: None,
            failures: AuthFailures::default(),
            token: None,
            held: HeldReplies::default(),
            observations: Vec::new(),
            next_subscription_id: 1,
            notification_in_flight: false,
            ping_in_flight: false,
            uploads: settings.blockwise.clone().map(Uploads::new),
            block_transfer_until: None,
            output_full: false,
            validated: false,
            transport_username: None,
            transport_client_id: None,
            over_session: false,
            ending: None,
            downlink: None,
            requests: Vec::new(),
            next_request: 0,
            settings,
        }
    }

    /// The channel of a client on a DTLS session that authenticated it as `identity` (a
    /// key identity, a certificate's name): that is its user name, and the one client id
    /// it may use; `None` names nothing.
    pub fn with_transport_identity(mut self, identity: Option<Arc<str>>) -> CoapChannel {
        self.transport_username = identity.clone();
        self.transport_client_id = identity;
        self.over_session = true;
        self
    }

    /// The channel of a client whose TLS layer verified a certificate naming it, as the
    /// listener's `peer_cert_as_username` and `peer_cert_as_clientid` took it: the user
    /// name replaces the query's, and the client id is the one it may use.
    pub fn with_certificate_identity(mut self, identity: CertificateIdentity) -> CoapChannel {
        self.transport_username = identity.username.map(Arc::from);
        self.transport_client_id = identity.client_id.map(Arc::from);
        self
    }

    /// A client the transport authenticated may act under its own identity only.
    fn check_claimed_client_id(&self, client_id: Option<&str>) -> Result<(), Refusal> {
        match (&self.transport_client_id, client_id) {
            (Some(identity), Some(claimed)) if **identity != *claimed => {
                tracing::info!(claimed, identity = %identity, "client id other than the transport identity refused");
                Err(Refusal::Forbidden(
                    "the clientid must be the one the transport authenticated",
                ))
            }
            _ => Ok(()),
        }
    }

    /// True when notifications stopped at the output high-water mark with more waiting.
    pub fn wants_drain(&self) -> bool {
        self.output_full
    }

    pub fn client_id(&self) -> Option<&str> {
        self.client.as_ref().map(|client| &**client.client_id())
    }

    /// In connectionless mode, the client id under which a request from another address
    /// reaches this peer: the client id is what names a CoAP client, not its address.
    pub fn rebindable_identity(&self) -> Option<Arc<str>> {
        if self.settings.connection_required {
            return None;
        }
        self.client
            .as_ref()
            .map(|client| client.client_id().clone())
    }

    /// Whether a request from another address that names this peer's client is that
    /// client's: it presents the client id and the very credentials the client was
    /// admitted with (compared as their keyed hash, without the authenticator). Only then
    /// does the peer move there, its session and observations with it. Any other request
    /// goes to a channel of its own, which authenticates it (and takes the session over
    /// through the core if it proves the same owner). Changes nothing here.
    pub fn vouch(&self, datagram: &[u8]) -> bool {
        if self.settings.connection_required || !matches!(self.link, Link::Datagram(_)) {
            return false;
        }
        let (Some(client_id), Some(admitted)) = (self.client_id(), &self.credentials) else {
            return false;
        };
        let Ok(packet) = Packet::from_bytes(datagram) else {
            return false;
        };
        if !matches!(packet.header.code, MessageClass::Request(_)) {
            return false;
        }
        let query = Query::parse(&packet);
        let presented = Credentials::of(
            query.username.as_deref(),
            query.password.as_deref().map(str::as_bytes),
        );
        query.client_id.as_deref() == Some(client_id) && admitted.matches(&presented)
    }

    /// The peer moved to `address`: notifications wait until the client shows it receives
    /// there.
    pub fn rebound(&mut self, address: SocketAddr) {
        self.peer = Some(address);
        if matches!(self.link, Link::Datagram(_)) {
            self.validated = false;
        }
    }

    /// An observer over UDP that has not shown it receives at its address.
    fn needs_address_check(&self) -> bool {
        !self.address_validated() && !self.observations.is_empty()
    }

    /// Whether the client showed that it receives at its address; a stream's handshake did.
    pub fn address_validated(&self) -> bool {
        self.validated || matches!(self.link, Link::Stream(_))
    }

    pub fn observation_count(&self) -> usize {
        self.observations.len()
    }

    /// Block1 uploads being reassembled.
    pub fn upload_count(&self) -> usize {
        self.uploads.as_ref().map_or(0, Uploads::len)
    }

    /// Nothing here is worth keeping the peer for: no session, nothing of ours in flight
    /// or held, no upload, no failed authentication to remember. A repeated request is
    /// then answered the same way by a fresh channel.
    fn holds_nothing(&self, now: Instant) -> bool {
        self.client.is_none()
            && self.link.in_flight() == 0
            && self.held.is_empty()
            && self.upload_count() == 0
            && !self.failures.remembers(&self.settings.auth_failures, now)
    }

    pub fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        // Any datagram, an acknowledgement included, shows the client is there.
        self.last_received = now;
        let Link::Datagram(exchange) = &mut self.link else {
            return Flow::Continue;
        };
        let flow = match exchange.receive(&datagram, now, out) {
            Inbound::Request(request) => self.handle_request(request, out, now),
            Inbound::Acknowledged {
                tag: Sent::Request(sequence),
                response,
            } => {
                self.validated = true;
                self.request_acknowledged(sequence, response, now);
                Flow::Continue
            }
            Inbound::Acknowledged { tag, .. } => {
                // It answered a message id only the receiver of ours knew.
                self.validated = true;
                self.settled(tag, false);
                Flow::Continue
            }
            Inbound::Reset {
                tag: Some(Sent::Request(sequence)),
            } => {
                self.validated = true;
                self.request_done(|r| r.sequence == sequence, Err(Failure::Reset));
                Flow::Continue
            }
            Inbound::Reset { tag } => {
                if let Some(tag) = tag {
                    self.validated = true;
                    self.settled(tag, true);
                }
                Flow::Continue
            }
            Inbound::Response(packet) => {
                self.separate_response(packet);
                Flow::Continue
            }
            Inbound::Handled => Flow::Continue,
        };
        if flow == Flow::Close {
            return Flow::Close;
        }
        self.release_held(out, now);
        self.fill(out, now);
        if self.holds_nothing(now) && !self.over_session {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Sends what opens a connection: our CSM (RFC 8323 5.3). Nothing over UDP.
    pub fn start(&mut self, out: &mut Vec<Bytes>) {
        if let Link::Stream(link) = &mut self.link {
            link.start(out);
        }
    }

    /// One message from a TCP or WebSocket connection.
    pub fn handle_frame(&mut self, frame: Frame, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        self.last_received = now;
        let Link::Stream(link) = &mut self.link else {
            return Flow::Continue;
        };
        let flow = match link.receive(frame, out) {
            reliable::Inbound::Request(request) => self.handle_request(request, out, now),
            reliable::Inbound::Pong => {
                self.settled(Sent::Ping, false);
                Flow::Continue
            }
            reliable::Inbound::Close => Flow::Close,
            reliable::Inbound::Handled => Flow::Continue,
        };
        if flow == Flow::Continue {
            self.release_held(out, now);
            self.fill(out, now);
        }
        flow
    }

    /// Aborts a TCP or WebSocket connection whose input cannot be read as messages, with
    /// `diagnostic` as the Abort's payload (RFC 8323 5.6).
    pub fn abort(&mut self, diagnostic: &str, out: &mut Vec<Bytes>) -> Flow {
        if let Link::Stream(link) = &mut self.link {
            link.abort(diagnostic, None, out);
        }
        Flow::Close
    }

    /// Our Max-Message-Size on a stream, which its decoder enforces.
    pub fn max_message_size(&self) -> Option<usize> {
        match &self.link {
            Link::Stream(link) => Some(link.max_message_size()),
            Link::Datagram(_) => None,
        }
    }

    pub fn framing(&self) -> Option<Framing> {
        match &self.link {
            Link::Stream(link) => Some(link.framing()),
            Link::Datagram(_) => None,
        }
    }

    pub fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Some(reason) = self.control.close_requested() {
            tracing::info!(
                reason = reason.0,
                "client taken over or closed by the broker"
            );
            // Over TCP or WebSocket the client is told the connection ends (RFC 8323 5.5);
            // a UDP peer is only forgotten: CoAP has no message for it.
            return self.shutdown(out);
        }
        self.send_requests(out, now);
        self.release_held(out, now);
        self.fill(out, now);
        Flow::Continue
    }

    pub fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Some(client) = &self.client {
            // A rate pause that is over ends: the next publish is taken.
            client.handle_timeout(now);
        }
        for tag in self.link.handle_timeout(now, out) {
            match tag {
                Sent::Ping => {
                    tracing::info!("observer did not answer a ping; forgotten");
                    self.ending = Some(DisconnectReason::KeepaliveTimeout);
                    return Flow::Close;
                }
                Sent::Notification { .. } => {
                    tracing::info!("notification not acknowledged after retransmissions");
                    self.settled(tag, true);
                }
                Sent::Response if self.needs_address_check() => {
                    // It never showed it receives here: its source may have been forged.
                    tracing::info!("observer did not acknowledge its answer; forgotten");
                    return Flow::Close;
                }
                Sent::Response => {
                    tracing::info!("separate response not acknowledged after retransmissions");
                }
                Sent::Request(sequence) => {
                    tracing::info!("request not acknowledged after retransmissions");
                    self.request_done(|r| r.sequence == sequence, Err(Failure::Timeout));
                }
            }
        }
        while self
            .requests
            .iter()
            .any(|r| r.separate_until.is_some_and(|until| now >= until))
        {
            tracing::info!("separate response to a request never came");
            self.request_done(
                |r| r.separate_until.is_some_and(|until| now >= until),
                Err(Failure::Timeout),
            );
        }
        if self.without_client_over_udp() {
            // Kept only for what it still holds: a failed authentication to remember, an
            // answer still going out.
            self.failures
                .forget_expired(&self.settings.auth_failures, now);
            if let Some(uploads) = &mut self.uploads {
                uploads.forget_expired(now);
            }
            return if self.holds_nothing(now) {
                Flow::Close
            } else {
                Flow::Continue
            };
        }
        // A confirmable message in flight already asks the client whether it is there.
        let probing = self.ping_in_flight || self.link.in_flight() > 0;
        if !probing && now >= self.last_received + self.settings.heartbeat {
            // A UDP client without observations has nothing to keep; a connection is
            // kept while it answers.
            if self.observations.is_empty() && matches!(self.link, Link::Datagram(_)) {
                tracing::debug!("client silent for the heartbeat interval; forgotten");
                self.ending = Some(DisconnectReason::KeepaliveTimeout);
                return Flow::Close;
            }
            self.ping_in_flight = self.link.ping(now, out);
        }
        self.fill(out, now);
        Flow::Continue
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let probing = self.ping_in_flight || self.link.in_flight() > 0;
        let (heartbeat, forgotten) = if self.without_client_over_udp() {
            let failures = self.failures.forgotten_at(&self.settings.auth_failures);
            let uploads = self.uploads.as_ref().and_then(Uploads::next_expiry);
            (None, failures.into_iter().chain(uploads).min())
        } else {
            let heartbeat = (!probing).then(|| self.last_received + self.settings.heartbeat);
            (heartbeat, None)
        };
        [
            heartbeat,
            forgotten,
            self.link.next_deadline(),
            self.block_transfer_until,
            self.client.as_ref().and_then(ClientSession::paused_until),
            self.requests.iter().filter_map(|r| r.separate_until).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A UDP peer that acts for no client is not pinged: it is kept only while it holds
    /// something (see `holds_nothing`), unless a DTLS session carries it.
    fn without_client_over_udp(&self) -> bool {
        self.client.is_none() && matches!(self.link, Link::Datagram(_)) && !self.over_session
    }

    /// UDP has nothing to say at shutdown: the session is handed back. A connection is
    /// released (RFC 8323 5.5), so the client knows to reconnect rather than to abort.
    pub fn shutdown(&mut self, out: &mut Vec<Bytes>) -> Flow {
        if let Link::Stream(link) = &mut self.link {
            link.release(out);
        }
        Flow::Close
    }

    /// The peer is forgotten; hands the session back to the broker.
    pub fn handle_closed(&mut self, now: Instant) {
        let reason = self.ending.unwrap_or(DisconnectReason::SockClosed);
        self.release_session(reason, now);
    }

    fn release_session(&mut self, reason: DisconnectReason, now: Instant) {
        self.link.cancel_all();
        self.observations.clear();
        self.notification_in_flight = false;
        self.ping_in_flight = false;
        self.block_transfer_until = None;
        self.token = None;
        self.credentials = None;
        self.end_downlink();
        if let Some(client) = self.client.take() {
            client.close_because(WillDisposition::Discard, reason, now);
        }
    }

    /// Our message `tag` was acknowledged, or rejected with Reset or given up (`failed`).
    fn settled(&mut self, tag: Sent, failed: bool) {
        match tag {
            Sent::Ping => self.ping_in_flight = false,
            Sent::Response | Sent::Request(_) => {}
            Sent::Notification {
                subscription_id,
                confirmable,
            } => {
                if confirmable {
                    self.notification_in_flight = false;
                }
                if failed {
                    // RFC 7641 3.6 and 4.5: the client no longer wants it, or is gone.
                    self.remove_observation(subscription_id);
                }
            }
        }
    }

    fn remove_observation(&mut self, subscription_id: u32) {
        let Some(at) = self
            .observations
            .iter()
            .position(|o| o.subscription_id == subscription_id)
        else {
            return;
        };
        let observation = self.observations.swap_remove(at);
        tracing::info!(filter = %observation.filter, "observer removed");
        if let Some(client) = &self.client {
            client.unsubscribe(&observation.filter);
        }
    }

    fn handle_request(&mut self, request: Request, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Err(refusal) = self.admit_upload(&request, now) {
            // Refused at its first block: nothing of the body is kept.
            self.refuse(&request.packet, &refusal, now, out);
            return Flow::Continue;
        }
        let (request, block1_echo) = match self.uploads.as_mut() {
            None => (request, None),
            Some(uploads) => match uploads.receive(request, now) {
                Upload::Whole(request) => (request, None),
                Upload::Complete { request, echo } => (request, Some(echo)),
                Upload::Answer { request, response } => {
                    self.answer(&request.packet, response, false, now, out);
                    return Flow::Continue;
                }
            },
        };
        let mut after = Aftermath::default();
        let mut response = match self.serve(&request, &mut after, now) {
            Ok(response) => response,
            Err(refusal) => {
                if !matches!(refusal, Refusal::Congested(_)) {
                    tracing::info!(code = %MessageClass::Response(refusal.code()), reason = %refusal, "request refused");
                }
                refusal.response()
            }
        };
        if let Some(echo) = block1_echo {
            // RFC 7959 2.3: the response to the last block names it.
            response.add_option(CoapOption::Block1, echo.encode());
        }
        if after.close {
            self.answer(&request.packet, response, true, now, out);
            return Flow::Close;
        }
        self.answer_when_durable(&request.packet, response, after.ticket, now, out);
        Flow::Continue
    }

    fn refuse(&mut self, request: &Packet, refusal: &Refusal, now: Instant, out: &mut Vec<Bytes>) {
        tracing::info!(code = %MessageClass::Response(refusal.code()), reason = %refusal, "request refused");
        self.answer(request, refusal.response(), false, now, out);
    }

    /// The first block of a Block1 upload is admitted before anything of the body is kept:
    /// a body is buffered only for a client that may publish it (RFC 7959 2.5 lets the
    /// server act on the first block). Later blocks carry the same query (an upload is
    /// keyed by it), hence the same client.
    fn admit_upload(&mut self, request: &Request, now: Instant) -> Result<(), Refusal> {
        if self.uploads.is_none() {
            return Ok(());
        }
        match BlockOption::of(&request.packet, BLOCK1) {
            Some(Ok(block)) if block.num == 0 && block.more => {}
            // A whole body, a later block, or a bad option: no new upload starts here.
            _ => return Ok(()),
        }
        match resource(&request.packet)? {
            Resource::PubSub(_) => self.admit(&Query::parse(&request.packet), now),
            // It takes no body.
            Resource::Connection => Err(Refusal::BadOption("Block1 on a resource without a body")),
        }
    }

    /// Sends `response` to `request`, piggybacked or, when configured, separately. A
    /// request that ends the client (`closing`) is answered piggybacked: nothing would be
    /// left to retransmit a separate response.
    fn answer(
        &mut self,
        request: &Packet,
        response: Packet,
        closing: bool,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) {
        let separate = self.settings.separate_response && !closing;
        // An observer whose address is not shown gets its answer as a confirmable message:
        // its acknowledgement shows it, and the notifications follow.
        let confirmable = !closing && self.needs_address_check();
        if let Err(error) = self
            .link
            .respond(request, response, separate, confirmable, now, out)
        {
            tracing::warn!(%error, "response not sent");
        }
    }

    /// Answers a publish once what it routed is durable (`ticket`), so a client told 2.04
    /// never loses its message to a crash. Until then a confirmable request has its empty
    /// acknowledgement, so it is not retransmitted, and the answer follows as a separate
    /// response (RFC 7252 5.2.2); over a stream it simply follows. Answers that wait for
    /// nothing go at once: CoAP answers each request on its own, in no order.
    fn answer_when_durable(
        &mut self,
        request: &Packet,
        response: Packet,
        ticket: Option<Ticket>,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) {
        let store = self.broker.store().clone();
        if ticket.is_none_or(|ticket| ticket <= store.durable()) {
            self.answer(request, response, false, now, out);
            return;
        }
        let mut stub = Packet::new();
        stub.header = request.header.clone();
        stub.set_token(request.get_token().to_vec());
        let held = HeldResponse {
            request: stub,
            response,
        };
        let control = &self.control;
        let Some(ready) = self
            .held
            .hold(held, ticket, store.as_ref(), || control.wakeup())
        else {
            tracing::debug!("answer held until the message is durable");
            if let Link::Datagram(exchange) = &mut self.link {
                exchange.defer(request, now, out);
            }
            return;
        };
        self.answer(&ready.request, ready.response, false, now, out);
    }

    /// Sends the held answers whose messages are now durable.
    fn release_held(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        let store = self.broker.store().clone();
        while let Some(held) = self.held.pop_due(store.as_ref()) {
            let sent = match &mut self.link {
                Link::Datagram(exchange) => exchange.respond_deferred(
                    &held.request,
                    held.response,
                    Sent::Response,
                    now,
                    out,
                ),
                Link::Stream(link) => link.respond(&held.request, held.response, out),
            };
            if let Err(error) = sent {
                tracing::warn!(%error, "response not sent");
            }
        }
    }

    fn serve(
        &mut self,
        request: &Request,
        after: &mut Aftermath,
        now: Instant,
    ) -> Result<Packet, Refusal> {
        let query = Query::parse(&request.packet);
        match resource(&request.packet)? {
            Resource::Connection => self.serve_connection(request, &query, &mut after.close, now),
            Resource::PubSub(topic) => {
                self.admit(&query, now)?;
                match request.method {
                    RequestType::Post | RequestType::Put => {
                        self.publish(request, &query, &topic, &mut after.ticket, now)
                    }
                    RequestType::Get => self.observe(request, &query, &topic, now),
                    _ => Err(Refusal::MethodNotAllowed),
                }
            }
        }
    }

    // ---- clients and sessions ------------------------------------------------------------

    /// Runs the authenticator on what a request presents, unless this source is locked
    /// out for failing too often; failures are counted.
    fn authenticate(
        &mut self,
        client_id: &str,
        query: &Query,
        now: Instant,
    ) -> Result<Authenticated, Refusal> {
        let limit = self.settings.auth_failures;
        if let Some(remaining) = self.failures.locked(now) {
            return Err(Refusal::TooManyRequests(remaining));
        }
        self.check_claimed_client_id(Some(client_id))?;
        let presented = Presented {
            protocol: COAP_NAMESPACE,
            listener: self.settings.listener.clone(),
            client_id: Arc::from(client_id),
            username: match &self.transport_username {
                Some(identity) => Some(identity.to_string()),
                None => query.username.clone(),
            },
            password: query.password.clone().map(Bytes::from),
            peer: self.peer,
            mountpoint: Arc::from(self.settings.mountpoint.as_str()),
            mountpoint_values: Vec::new(),
        };
        self.broker.authenticate(presented).map_err(|refused| {
            if matches!(
                refused,
                ConnectRefused::BadCredentials | ConnectRefused::NotAuthorized
            ) {
                self.failed_authentication(&limit, now);
            }
            tracing::info!(%refused, client_id, "client not authenticated");
            Refusal::of_connect(&refused)
        })
    }

    fn failed_authentication(&mut self, limit: &AuthFailureLimit, now: Instant) {
        if self.failures.record(limit, now) {
            tracing::warn!(
                failures = limit.max,
                lockout_secs = limit.lockout.as_secs(),
                "too many failed authentications from this source: refused for a while"
            );
        }
    }

    /// Opens the session of `who` and makes it this peer's client, in place of the one it
    /// acted for (whose relations end). On a refusal the previous client stays.
    fn open_session(
        &mut self,
        who: Authenticated,
        clean_start: bool,
        now: Instant,
    ) -> Result<(), Refusal> {
        let opened = self
            .broker
            .open_session(
                who,
                OpenSession {
                    clean_start,
                    expiry_interval: 0,
                    will: None,
                    control: self.control.clone(),
                    rates: self.settings.rates,
                    proto: COAP_PROTO,
                    keepalive: u32::try_from(self.settings.heartbeat.as_secs()).unwrap_or(u32::MAX),
                    announce: true,
                },
                now,
            )
            .map_err(|refused| {
                tracing::info!(%refused, "session refused");
                Refusal::of_connect(&refused)
            })?;
        // Another client behind the same address, or this one opening its connection anew.
        self.release_session(DisconnectReason::Normal, now);
        tracing::Span::current().record("client_id", &**opened.client_id());
        tracing::info!(
            session_present = opened.session_present(),
            "client connected"
        );
        self.client = Some(opened);
        Ok(())
    }

    /// The client a `/ps` request acts for: in connection mode the one its token names, in
    /// connectionless mode the one its query names. A request presenting the client id
    /// and credentials this peer's client was admitted with is that client's, without the
    /// authenticator; any other is authenticated.
    fn admit(&mut self, query: &Query, now: Instant) -> Result<(), Refusal> {
        if self.settings.connection_required {
            return self.admit_connected(query, now);
        }
        self.check_claimed_client_id(query.client_id.as_deref())?;
        let client_id = match (
            &query.client_id,
            self.client_id(),
            &self.transport_client_id,
        ) {
            (Some(id), _, _) => id.clone(),
            (None, Some(bound), _) => bound.to_owned(),
            (None, None, Some(identity)) => identity.to_string(),
            (None, None, None) => format!("coap-{:016x}", self.link.random()),
        };
        let presented = Credentials::of(
            query.username.as_deref(),
            query.password.as_deref().map(str::as_bytes),
        );
        let same_client = self.client_id() == Some(client_id.as_str());
        if same_client
            && self
                .credentials
                .as_ref()
                .is_some_and(|admitted| admitted.matches(&presented))
        {
            return Ok(());
        }
        let who = self.authenticate(&client_id, query, now)?;
        if same_client {
            // New credentials for the client this peer acts for: its session stays its
            // owner's, whoever else they prove to be.
            let owner = self
                .client
                .as_ref()
                .and_then(|c| c.client().username.as_deref());
            if who.client().username.as_deref() != owner {
                tracing::info!(client_id, "session belongs to another user: refused");
                return Err(Refusal::of_connect(&ConnectRefused::SessionOwnedByAnother));
            }
        } else {
            // Another client behind the same address: the previous one's relations end.
            self.open_session(who, true, now)?;
        }
        self.credentials = Some(presented);
        Ok(())
    }

    fn admit_connected(&mut self, query: &Query, now: Instant) -> Result<(), Refusal> {
        let (Some(client_id), Some(token)) = (&query.client_id, &query.token) else {
            return Err(Refusal::BadRequest(
                "Missing token or clientid in connection mode",
            ));
        };
        self.check_claimed_client_id(Some(client_id))?;
        if self.client_id() == Some(client_id.as_str())
            && self
                .token
                .as_ref()
                .is_some_and(|ours| same_token(ours, token))
        {
            // Our token came back: the client receives at this address.
            self.validated = true;
            return Ok(());
        }
        // The client may come back from another address with its token: it takes its
        // session over, as the identity that obtained the token.
        if let Some(remaining) = self.failures.locked(now) {
            return Err(Refusal::TooManyRequests(remaining));
        }
        let key = SessionKey {
            namespace: COAP_NAMESPACE,
            client_id: Arc::from(client_id.as_str()),
        };
        let known = self.broker.session(&key).and_then(|session| {
            session
                .state
                .lock()
                .extension
                .get_mut::<ConnectionToken>()
                .cloned()
        });
        let Some(known) = known.filter(|known| same_token(&known.token, token)) else {
            let limit = self.settings.auth_failures;
            self.failed_authentication(&limit, now);
            return Err(Refusal::Unauthorized(
                "Invalid token or clientid in connection mode",
            ));
        };
        self.open_session(known.who.clone(), false, now)?;
        self.set_token(known.token, known.who);
        self.validated = true;
        Ok(())
    }

    fn set_token(&mut self, token: String, who: Authenticated) {
        if let Some(client) = &self.client {
            client
                .session()
                .state
                .lock()
                .extension
                .set(ConnectionToken {
                    token: token.clone(),
                    who,
                });
        }
        self.token = Some(token);
        self.start_downlink();
    }

    // ---- requests of the admin API -------------------------------------------------------

    /// Enters the client in connection mode in the registry the admin API reaches; over a
    /// datagram transport only, where a response comes back as a message of its own.
    fn start_downlink(&mut self) {
        if !matches!(self.link, Link::Datagram(_)) {
            return;
        }
        let Some(client_id) = self.client.as_ref().map(|c| c.client_id().clone()) else {
            return;
        };
        self.end_downlink();
        let client = Arc::new(Client::new(self.control.wakeup()));
        self.settings
            .clients
            .insert(client_id.clone(), client.clone());
        self.downlink = Some((client_id, client));
    }

    /// The connection ended: its requests fail, waiting or in flight.
    fn end_downlink(&mut self) {
        if let Some((client_id, client)) = self.downlink.take() {
            client.close();
            self.settings.clients.remove(&client_id, &client);
        }
        for request in self.requests.drain(..) {
            let _ = request.reply.send(Err(Failure::Gone));
        }
    }

    /// Sends the requests the admin API handed over, each as a confirmable message.
    fn send_requests(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        let Some((_, client)) = &self.downlink else {
            return;
        };
        let client = client.clone();
        for waiting in client.take_pending() {
            let request = waiting.request;
            let token = if request.token.is_empty() {
                let mut token = (self.link.random() as u32).to_be_bytes().to_vec();
                while self.requests.iter().any(|r| r.token == token) {
                    token = (self.link.random() as u32).to_be_bytes().to_vec();
                }
                token
            } else {
                request.token.clone()
            };
            if self.requests.iter().any(|r| r.token == token) {
                let _ = waiting.reply.send(Err(Failure::TokenInUse));
                client.finished();
                continue;
            }
            let packet = outgoing_packet(&request, token.clone());
            self.next_request += 1;
            let sequence = self.next_request;
            let Link::Datagram(exchange) = &mut self.link else {
                let _ = waiting.reply.send(Err(Failure::Gone));
                client.finished();
                continue;
            };
            match exchange.send_confirmable(packet, Sent::Request(sequence), now, out) {
                Ok(_) => self.requests.push(RequestInFlight {
                    sequence,
                    token,
                    reply: waiting.reply,
                    client: client.clone(),
                    separate_until: None,
                }),
                Err(error) => {
                    tracing::info!(%error, "request to the client not sent");
                    let _ = waiting.reply.send(Err(Failure::TooLarge));
                    client.finished();
                }
            }
        }
    }

    /// Ends the first request `which` picks with `result`.
    fn request_done(
        &mut self,
        which: impl Fn(&RequestInFlight) -> bool,
        result: Result<Answer, Failure>,
    ) {
        if let Some(at) = self.requests.iter().position(which) {
            let request = self.requests.swap_remove(at);
            let _ = request.reply.send(result);
            request.client.finished();
        }
    }

    /// Our request was acknowledged: with its response piggybacked, or empty, the response
    /// to follow within MAX_TRANSMIT_WAIT (RFC 7252 4.8.2).
    fn request_acknowledged(&mut self, sequence: u64, response: Option<Packet>, now: Instant) {
        match response.and_then(answer_of) {
            Some(answer) => self.request_done(|r| r.sequence == sequence, Ok(answer)),
            None => {
                let wait = self.settings.transmission.max_transmit_wait();
                if let Some(request) = self.requests.iter_mut().find(|r| r.sequence == sequence) {
                    request.separate_until = Some(now + wait);
                }
            }
        }
    }

    /// A separate response, matched to our request by its token; the message layer has
    /// acknowledged it already.
    fn separate_response(&mut self, packet: Packet) {
        let token = packet.get_token().to_vec();
        if let Some(answer) = answer_of(packet) {
            self.request_done(|r| r.token == token, Ok(answer));
        }
    }

    fn serve_connection(
        &mut self,
        request: &Request,
        query: &Query,
        close: &mut bool,
        now: Instant,
    ) -> Result<Packet, Refusal> {
        match request.method {
            RequestType::Post => {
                let Some(client_id) = query.client_id.clone() else {
                    return Err(Refusal::BadRequest("Login Failed: clientid is required"));
                };
                if self.token.is_some() {
                    return Err(Refusal::BadRequest("client has connected"));
                }
                let who = self.authenticate(&client_id, query, now)?;
                self.open_session(who.clone(), true, now)?;
                let token = (self.link.random() as u32).to_string();
                self.set_token(token.clone(), who);
                tracing::info!("connection opened");
                Ok(response(ResponseType::Created, token.into_bytes()))
            }
            RequestType::Put | RequestType::Delete => {
                let (Some(client_id), Some(token)) = (&query.client_id, &query.token) else {
                    return Err(Refusal::BadRequest(
                        "Missing token or clientid in connection mode",
                    ));
                };
                if self.client_id() != Some(client_id.as_str())
                    || !self
                        .token
                        .as_ref()
                        .is_some_and(|ours| same_token(ours, token))
                {
                    self.admit_connected(query, now)?;
                }
                if request.method == RequestType::Put {
                    return Ok(response(ResponseType::Changed, Vec::new()));
                }
                tracing::info!("connection closed by the client");
                self.release_session(DisconnectReason::Normal, now);
                *close = true;
                Ok(response(ResponseType::Deleted, Vec::new()))
            }
            _ => Err(Refusal::MethodNotAllowed),
        }
    }

    // ---- publish and observe -------------------------------------------------------------

    fn qos(
        &self,
        query: Option<&str>,
        default: CoapQos,
        request: &Request,
    ) -> Result<QoS, Refusal> {
        match query {
            Some("0") => Ok(QoS::AtMostOnce),
            Some("1") => Ok(QoS::AtLeastOnce),
            Some("2") => Ok(QoS::ExactlyOnce),
            Some(_) => Err(Refusal::BadRequest("invalid qos")),
            None => Ok(match default {
                CoapQos::Coap if request.confirmable() => QoS::AtLeastOnce,
                CoapQos::Coap | CoapQos::Qos0 => QoS::AtMostOnce,
                CoapQos::Qos1 => QoS::AtLeastOnce,
                CoapQos::Qos2 => QoS::ExactlyOnce,
            }),
        }
    }

    fn publish(
        &mut self,
        request: &Request,
        query: &Query,
        topic: &str,
        ticket: &mut Option<Ticket>,
        now: Instant,
    ) -> Result<Packet, Refusal> {
        let qos = self.qos(query.qos.as_deref(), self.settings.publish_qos, request)?;
        let retain = query.retain.as_deref() == Some("true");
        let expiry = match query.expiry.as_deref() {
            None => None,
            Some(text) => Some(
                text.parse::<u32>()
                    .map_err(|_| Refusal::BadRequest("invalid expiry"))?,
            ),
        };
        let Some(client) = &self.client else {
            return Err(Refusal::Unauthorized("not connected"));
        };
        if client.is_held_back(now) {
            return Err(Refusal::Congested(client.refuse_for_congestion(now)));
        }
        let properties = PublishProperties {
            message_expiry_interval: expiry,
            content_type: request
                .packet
                .get_first_option(CoapOption::ContentFormat)
                .map(|raw| {
                    let number = raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
                    translations::coap::content_type(u16::try_from(number).unwrap_or(u16::MAX))
                        .to_owned()
                }),
            ..PublishProperties::default()
        };
        let payload = Bytes::from(request.packet.payload.clone());
        let dispatched = match client.publish(topic, qos, retain, payload, properties.into(), now) {
            Ok(dispatched) => dispatched,
            Err(refused @ PublishRefused::Invalid(_, why)) => {
                tracing::info!(topic, why, %refused, "publish refused");
                return Err(Refusal::BadRequest("invalid topic or options"));
            }
            Err(refused @ (PublishRefused::SysTopic | PublishRefused::NotAuthorized)) => {
                tracing::info!(topic, %refused, "publish not authorized");
                return Err(Refusal::Unauthorized("not authorized"));
            }
            Err(PublishRefused::StoreFull) => {
                // RFC 7252 5.9.3.4: overloaded for now, retry after Max-Age. Not 4.13,
                // which would say this request is too large whenever it comes.
                return Err(Refusal::Unavailable(STORE_FULL_RETRY));
            }
        };
        // A QoS 0 message is promised nothing beyond routing.
        if qos != QoS::AtMostOnce {
            *ticket = dispatched.ticket;
        }
        Ok(response(ResponseType::Changed, Vec::new()))
    }

    fn observe(
        &mut self,
        request: &Request,
        query: &Query,
        topic: &str,
        now: Instant,
    ) -> Result<Packet, Refusal> {
        let block2 = match BlockOption::of(&request.packet, BLOCK2) {
            Some(Ok(block)) => Some(block),
            Some(Err(error)) => {
                tracing::info!(%error, "Block2 refused");
                return Err(Refusal::BadRequest("invalid Block2 option"));
            }
            None => None,
        };
        let observe = request.packet.get_observe_value();
        if let Some(block) = block2 {
            // RFC 7959 3.4: the client reads the rest of a notification with GETs of the
            // following blocks, without Observe.
            if block.num > 0 || observe.is_none() {
                return self.serve_block(topic, block, now);
            }
        }
        let observe = match observe {
            Some(Ok(value)) => value,
            Some(Err(_)) | None => return Err(Refusal::BadRequest("invalid observe value")),
        };
        let token = request.packet.get_token().to_vec();
        let filter = topic.to_owned();
        match observe {
            0 => {
                if token.is_empty() {
                    return Err(Refusal::BadRequest("observe without token"));
                }
                let qos = self.qos(query.qos.as_deref(), self.settings.subscribe_qos, request)?;
                // An observe request may ask for smaller blocks (RFC 7959 2.4).
                let szx = block2.map_or(self.max_szx(), |block| block.szx.min(self.max_szx()));
                self.subscribe(filter, token, qos, szx, now)
            }
            1 => {
                if let Some(at) = self.observations.iter().position(|o| o.filter == filter) {
                    let id = self.observations.get(at).map_or(0, |o| o.subscription_id);
                    self.remove_observation(id);
                }
                Ok(response(CONTENT, Vec::new()))
            }
            _ => Err(Refusal::BadRequest("invalid observe value")),
        }
    }

    fn subscribe(
        &mut self,
        filter: String,
        token: Vec<u8>,
        qos: QoS,
        szx: u8,
        now: Instant,
    ) -> Result<Packet, Refusal> {
        let Some(client) = &self.client else {
            return Err(Refusal::Unauthorized("not connected"));
        };
        let existing = self.observations.iter().position(|o| o.filter == filter);
        let subscription_id = match existing.and_then(|at| self.observations.get(at)) {
            Some(observation) => observation.subscription_id,
            None => {
                let id = self.next_subscription_id;
                self.next_subscription_id = id.wrapping_add(1).max(1);
                id
            }
        };
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        match client.subscribe(&filter, options, Some(subscription_id), now) {
            Ok(_) => {}
            Err(reason) if reason == ReasonCode::NOT_AUTHORIZED => {
                tracing::info!(filter, "observe not authorized");
                return Err(Refusal::Unauthorized("not authorized"));
            }
            Err(reason) => {
                tracing::info!(filter, reason = reason.0, "observe refused");
                return Err(Refusal::BadRequest("invalid topic filter"));
            }
        }
        let sequence = match existing.and_then(|at| self.observations.get_mut(at)) {
            Some(observation) => {
                observation.token = token;
                observation.szx = szx;
                observation.sequence
            }
            None => {
                self.observations.push(Observation {
                    subscription_id,
                    filter: filter.clone(),
                    token,
                    sequence: 0,
                    szx,
                    representation: None,
                });
                0
            }
        };
        tracing::info!(filter, qos = qos.as_u8(), "observer added");
        let mut packet = response(CONTENT, Vec::new());
        packet.set_observe_value(sequence);
        Ok(packet)
    }

    /// A block of the last notification of the observation of `topic` sent in blocks.
    fn serve_block(
        &mut self,
        topic: &str,
        requested: BlockOption,
        now: Instant,
    ) -> Result<Packet, Refusal> {
        let max_szx = self.max_szx();
        let Some((representation, content_format)) = self
            .observations
            .iter()
            .find(|o| o.filter == topic)
            .and_then(|o| o.representation.as_ref())
        else {
            return Err(Refusal::BadRequest("no notification to read in blocks"));
        };
        let mut packet = response(CONTENT, Vec::new());
        if let Some(format) = content_format {
            packet.add_option(CoapOption::ContentFormat, uint_option(u32::from(*format)));
        }
        let sent = representation
            .fill(&mut packet, requested, max_szx)
            .map_err(|error| {
                tracing::info!(%error, "Block2 refused");
                Refusal::BadOption("no such block")
            })?;
        self.block_transfer_until = sent.more.then(|| now + self.block_transfer_window());
        Ok(packet)
    }

    fn max_szx(&self) -> u8 {
        self.settings
            .blockwise
            .as_ref()
            .map_or(MAX_SZX, |blockwise| blockwise.max_szx)
    }

    /// How long a client reading a notification in blocks may take for its next GET before
    /// later notifications stop waiting for it: two acknowledgement timeouts, so one lost
    /// request and its retransmission fit.
    fn block_transfer_window(&self) -> Duration {
        let transmission = &self.settings.transmission;
        transmission
            .ack_timeout
            .mul_f64(2.0 * transmission.ack_random_factor.max(1.0))
    }

    // ---- notifications -------------------------------------------------------------------

    /// Sends queued deliveries as notifications while no confirmable one is in flight and
    /// the client is not reading one in blocks.
    fn fill(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        let Some(session) = self.client.as_ref().map(|client| client.session().clone()) else {
            return;
        };
        if self.block_transfer_until.is_some_and(|until| until <= now) {
            tracing::debug!("client stopped reading a notification in blocks");
            self.block_transfer_until = None;
        }
        self.output_full = false;
        if !self.address_validated() {
            // No notification leaves for an address not shown to receive (a forged source
            // would get it, retained replay and all): the deliveries wait in the session's
            // queue until the client acknowledges a message of ours (the answer to its
            // observe goes confirmable for that), or else the Reset of a ping.
            let waiting = !self.observations.is_empty() || session.state.lock().has_queued();
            if waiting && !self.ping_in_flight && self.link.in_flight() == 0 {
                self.ping_in_flight = self.link.ping(now, out);
            }
            return;
        }
        while !self.notification_in_flight && self.block_transfer_until.is_none() {
            // On a stream nothing waits for an acknowledgement: stop at the high-water
            // mark instead, so a slow reader's backlog stays in its session queue.
            if matches!(self.link, Link::Stream(_))
                && out.iter().map(Bytes::len).sum::<usize>() >= OUTPUT_HIGH_WATER
            {
                self.output_full = true;
                break;
            }
            let Some(delivery) = session.state.lock().pop_queued(now) else {
                break;
            };
            self.notify(&delivery, out, now);
        }
    }

    /// Sends `delivery` to its observations. A retained message replayed to a new
    /// observation goes confirmable whatever its QoS, so a replay of many leaves one per
    /// acknowledgement, paced by the one-in-flight window, instead of all at once.
    fn notify(&mut self, delivery: &Delivery, out: &mut Vec<Bytes>, now: Instant) {
        let confirmable = match self.settings.notify_type {
            CoapNotifyType::Con => true,
            CoapNotifyType::Non => false,
            CoapNotifyType::Qos => delivery.qos != QoS::AtMostOnce || delivery.retain,
        };
        let content_format = delivery
            .message
            .properties
            .content_type
            .as_deref()
            .and_then(translations::coap::content_format);
        let block_transfer_window = self.block_transfer_window();
        for &subscription_id in &delivery.subscription_ids {
            let Some(observation) = self
                .observations
                .iter_mut()
                .find(|o| o.subscription_id == subscription_id)
            else {
                // Cancelled after the message was queued.
                continue;
            };
            observation.sequence = (observation.sequence + 1) & OBSERVE_MASK;
            let mut packet = response(CONTENT, Vec::new());
            packet.set_token(observation.token.clone());
            packet.set_observe_value(observation.sequence);
            if let Some(format) = content_format {
                packet.add_option(CoapOption::ContentFormat, uint_option(u32::from(format)));
            }
            let payload = &delivery.message.payload;
            match &self.settings.blockwise {
                Some(blockwise) if self.link.needs_blocks(payload.len(), observation.szx) => {
                    // RFC 7959 3.4: the first block goes out as the notification, the
                    // client GETs the others.
                    let etag = (self.link.random() as u32).to_be_bytes().to_vec();
                    let representation = Representation::new(payload.clone(), etag);
                    let first = BlockOption {
                        num: 0,
                        more: true,
                        szx: observation.szx,
                    };
                    if let Err(error) = representation.fill(&mut packet, first, blockwise.max_szx) {
                        tracing::warn!(%error, "notification not sent");
                        continue;
                    }
                    observation.representation = Some((representation, content_format));
                    self.block_transfer_until = Some(now + block_transfer_window);
                }
                _ => packet.payload = payload.to_vec(),
            }
            let tag = Sent::Notification {
                subscription_id,
                confirmable,
            };
            match self.link.notify(packet, confirmable, tag, now, out) {
                Ok(awaits_ack) => {
                    Stats::add(&self.broker.stats.messages_sent, 1);
                    if awaits_ack {
                        self.notification_in_flight = true;
                    }
                }
                Err(error) => tracing::warn!(
                    %error,
                    topic = %delivery.message.topic,
                    "notification not sent"
                ),
            }
        }
    }
}

/// The confirmable request a request of the admin API's becomes.
fn outgoing_packet(request: &Outgoing, token: Vec<u8>) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Request(request.method);
    packet.set_token(token);
    for segment in &request.path {
        packet.add_option(CoapOption::UriPath, segment.clone().into_bytes());
    }
    for query in &request.queries {
        packet.add_option(CoapOption::UriQuery, query.clone().into_bytes());
    }
    if let Some(format) = request.content_format {
        packet.add_option(CoapOption::ContentFormat, uint_option(u32::from(format)));
    }
    packet.payload = request.payload.clone();
    packet
}

/// A response as the admin API gives it back; `None` for anything but a response.
fn answer_of(packet: Packet) -> Option<Answer> {
    let MessageClass::Response(code) = packet.header.code else {
        return None;
    };
    let content_format = packet
        .get_first_option(CoapOption::ContentFormat)
        .map(|raw| raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
        .and_then(|n| u16::try_from(n).ok());
    Some(Answer {
        message_id: packet.header.message_id,
        token: packet.get_token().to_vec(),
        code,
        content_format,
        payload: packet.payload,
    })
}

fn response(code: ResponseType, payload: Vec<u8>) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Response(code);
    packet.header.set_type(MessageType::Acknowledgement);
    packet.payload = payload;
    packet
}

/// Compares connection tokens in constant time, so a guess learns nothing from the time
/// its refusal takes.
fn same_token(ours: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    ours.as_bytes().ct_eq(presented.as_bytes()).into()
}
