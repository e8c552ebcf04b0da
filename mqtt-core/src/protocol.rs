//! The MQTT protocol channel: one connection's packets turned into session calls, and the
//! session's deliveries turned into packets. Sans-io: the transport driver feeds it bytes,
//! wake-ups and timer ticks with `now`, and writes out what it appends to `out`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::broker::{Broker, Dispatched, Stats, WillDisposition};
use crate::client::{
    ClientSession, ConnectRefused, OpenSession, Presented, PublishPermit, PublishRefused,
};
use crate::clients::{DisconnectReason, ProtoInfo, ProtoVer};
use crate::codec::{
    encode, encoded_len, AckProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder,
    Disconnect, DisconnectProperties, Packet, ProtocolVersion, PubResponse, Publish, QoS,
    ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::message::Delivery;
use crate::rate::PublishRates;
use crate::session::{ConnControl, Outgoing, OutgoingState, Wakeup, Will};
use crate::storage::{HeldReplies, Ticket};
use crate::topic::{parse_subscription, SubscriptionFilter};

/// The namespace of sessions opened by native MQTT clients.
pub const MQTT_NAMESPACE: &str = "mqtt";

/// Output beyond this stays queued in the session instead, so a slow reader's backlog is
/// bounded by its session limits rather than by its socket buffer.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Payload and topic bytes of PUBLISHes read while the client is held back beyond which
/// nothing more is read: what keeps its acknowledgements flowing costs at most this.
const PARKED_HIGH_WATER: usize = 64 * 1024;

/// What the driver should do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Write what is in `out`, then close the connection.
    Close,
}

/// Facts about the transport the channel runs on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub listener: Arc<str>,
    pub peer: Option<SocketAddr>,
    pub handshake_timeout: Duration,
    /// The identity a verified client certificate gives; it replaces what CONNECT says.
    pub certificate_identity: CertificateIdentity,
    /// The listener's mountpoint template; `""` for none.
    pub mountpoint: Arc<str>,
    /// What the client may publish: the listener's `messages_rate` and `bytes_rate`.
    pub rates: PublishRates,
}

/// User name and client id taken from a client certificate, as the listener is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateIdentity {
    pub username: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Default)]
struct TopicAliases {
    inbound: HashMap<u16, ByteString>,
    outbound: HashMap<ByteString, u16>,
}

enum Phase {
    AwaitConnect { deadline: Instant },
    Connected,
    Closed,
}

/// Per-connection protocol state; what outlives the connection lives in the session.
pub struct MqttChannel {
    broker: Arc<Broker>,
    /// How the connection arrived: read by its CONNECT only, then let go, since a
    /// connection lives far longer than its handshake.
    arrived: Option<Box<ConnectionInfo>>,
    phase: Phase,
    decoder: Decoder,
    version: ProtocolVersion,
    control: Arc<ConnControl>,
    /// The session this connection opened, once CONNECT was accepted.
    client: Option<ClientSession>,
    /// Keep-alive times the multiplier: silence longer than this closes the connection.
    keep_alive_window: Option<Duration>,
    last_received: Instant,
    /// Outbound QoS 1/2 window: the client's Receive Maximum capped by our max inflight.
    send_window: usize,
    client_max_packet_size: u32,
    client_topic_alias_max: u16,
    /// Only MQTT 5 clients that use topic aliases pay for the maps.
    aliases: Option<Box<TopicAliases>>,
    will_disposition: WillDisposition,
    /// Why the connection ends, once known otherwise than by `will_disposition`.
    ending: Option<DisconnectReason>,
    /// A drain stopped at the output high-water mark with messages still queued.
    drain_blocked: bool,
    /// What was read while a receiver this client publishes to holds it back.
    parked: Option<Box<Parked>>,
    /// When the input being handled arrived (`crate::arrival`): after the first stamp,
    /// before the second.
    arrival: (u64, u64),
    /// PUBACKs and PUBRECs waiting for their message to be durable, in the order the
    /// PUBLISHes came [MQTT-4.6.0-2]: once one waits, those behind it wait too.
    held_acks: HeldReplies<HeldAck>,
}

/// PUBLISHes read while the client is held back, in order, routed once it is let go.
/// Acknowledgements of our own messages and PINGREQ pass them: a client that both
/// publishes and receives must keep acknowledging, or a receiver behind on its
/// acknowledgements (itself, or one it holds back in turn) could never catch up. Any other
/// packet waits behind them (`barrier`), and reading stops until they are through.
#[derive(Default)]
struct Parked {
    publishes: VecDeque<Publish>,
    bytes: usize,
    barrier: Option<Packet>,
}

impl Parked {
    fn is_full(&self) -> bool {
        self.barrier.is_some() || self.bytes >= PARKED_HIGH_WATER
    }

    fn push(&mut self, publish: Publish) {
        self.bytes += Parked::weight(&publish);
        self.publishes.push_back(publish);
    }

    fn pop(&mut self) -> Option<Publish> {
        let publish = self.publishes.pop_front()?;
        self.bytes -= Parked::weight(&publish);
        Some(publish)
    }

    fn weight(publish: &Publish) -> usize {
        publish.topic.len() + publish.payload.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct HeldAck {
    packet: fn(PubResponse) -> Packet,
    packet_id: u16,
    reason: ReasonCode,
}

impl MqttChannel {
    pub fn new(
        broker: Arc<Broker>,
        info: ConnectionInfo,
        wakeup: Arc<dyn Wakeup>,
        now: Instant,
    ) -> MqttChannel {
        let control = ConnControl::new(broker.next_connection_id(), wakeup);
        let max_packet_size = broker.config.max_packet_size;
        let deadline = now + info.handshake_timeout;
        MqttChannel {
            decoder: Decoder::new(max_packet_size),
            broker,
            arrived: Some(Box::new(info)),
            phase: Phase::AwaitConnect { deadline },
            version: ProtocolVersion::V3_1_1,
            control,
            client: None,
            keep_alive_window: None,
            last_received: now,
            send_window: 1,
            client_max_packet_size: u32::MAX,
            client_topic_alias_max: 0,
            aliases: None,
            will_disposition: WillDisposition::Publish,
            ending: None,
            drain_blocked: false,
            parked: None,
            arrival: (0, 0),
            held_acks: HeldReplies::default(),
        }
    }

    pub fn client_id(&self) -> Option<&str> {
        self.client.as_ref().map(|client| &**client.client_id())
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Decodes and handles the complete packets in `input`: all of them, unless the client
    /// is held back (or paused by its publish rates) and what it sent meanwhile fills its
    /// parking (`accepts_input`).
    pub fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, now: Instant) -> Flow {
        if self.route_parked(out, now) == Flow::Close {
            return self.close();
        }
        while self.accepts_input() {
            match self.decoder.decode(input) {
                Ok(Some(packet)) => {
                    self.last_received = now;
                    if let Some(packet) = self.park(packet, now) {
                        if self.handle_packet(packet, out, now) == Flow::Close {
                            return self.close();
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => return self.reject_input(&error, out),
            }
        }
        if matches!(self.phase, Phase::Connected) {
            self.release_held_acks(out);
            self.drain(out, now);
        }
        Flow::Continue
    }

    /// Called when the session has new deliveries or the broker asks the connection to go.
    pub fn handle_wakeup(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        if let Some(reason) = self.control.close_requested() {
            tracing::info!(reason = reason.0, "connection closed by the broker");
            self.send_disconnect(reason, out);
            return self.close();
        }
        if self.route_parked(out, now) == Flow::Close {
            return self.close();
        }
        if matches!(self.phase, Phase::Connected) {
            self.release_held_acks(out);
            self.drain(out, now);
        }
        Flow::Continue
    }

    /// When the input about to be handled arrived (`crate::arrival`): after `earliest`,
    /// before `latest`. What it subscribes to and publishes then takes effect in the order
    /// it arrived among all clients.
    pub fn note_arrival(&mut self, earliest: u64, latest: u64) {
        self.arrival = (earliest, latest);
    }

    /// False while the client is held back and what it sent meanwhile fills its parking:
    /// the driver reads nothing more until a wake-up lets the client go on (or, when its
    /// publish rates paused it, the pause's end in `handle_timeout`), and then feeds what
    /// it holds again.
    pub fn accepts_input(&self) -> bool {
        !self.parked.as_ref().is_some_and(|parked| parked.is_full())
    }

    /// Whether the client's next PUBLISH must wait: a receiver is behind, or the client
    /// went over its publish rates.
    fn is_held_back(&self, now: Instant) -> bool {
        match &self.client {
            Some(client) => client.is_held_back(now),
            None => self.control.is_held_back(),
        }
    }

    /// Keeps `packet` back when it must wait for the client to be let go, or returns it.
    fn park(&mut self, packet: Packet, now: Instant) -> Option<Packet> {
        if !matches!(self.phase, Phase::Connected) {
            return Some(packet);
        }
        let passes = matches!(
            packet,
            Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_)
                | Packet::PingReq
        );
        let waits = match &packet {
            _ if passes => false,
            Packet::Publish(_) => self.parked.is_some() || self.is_held_back(now),
            _ => self.parked.is_some(),
        };
        if !waits {
            return Some(packet);
        }
        let parked = self.parked.get_or_insert_with(Box::default);
        match packet {
            Packet::Publish(publish) => parked.push(publish),
            other => parked.barrier = Some(other),
        }
        None
    }

    /// Handles what was parked, in order, while the client is not held back.
    fn route_parked(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        if !self.accepts_input() {
            // Nothing was read until now: the silence was ours, not the client's.
            self.last_received = now;
        }
        while self.parked.is_some() && !self.is_held_back(now) {
            let Some(parked) = self.parked.as_mut() else {
                break;
            };
            let packet = match parked.pop() {
                Some(publish) => Packet::Publish(publish),
                None => match self.parked.take().and_then(|parked| parked.barrier) {
                    Some(barrier) => barrier,
                    None => break,
                },
            };
            if self.handle_packet(packet, out, now) == Flow::Close {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    pub fn handle_timeout(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        if let Some(client) = &self.client {
            // A rate pause ends by time, not by a wake-up: what it parked goes on now.
            client.handle_timeout(now);
            if self.route_parked(out, now) == Flow::Close {
                return self.close();
            }
            if matches!(self.phase, Phase::Connected) {
                self.release_held_acks(out);
            }
        }
        match self.phase {
            Phase::AwaitConnect { deadline } if now >= deadline => {
                tracing::info!("no CONNECT within the handshake timeout");
                self.close()
            }
            // Silence is ours while nothing is read: the client may well have sent a PINGREQ.
            Phase::Connected if !self.accepts_input() => {
                self.last_received = now;
                Flow::Continue
            }
            Phase::Connected => match self.keep_alive_window {
                Some(window) if now >= self.last_received + window => {
                    tracing::info!("keep-alive timeout");
                    self.ending = Some(DisconnectReason::KeepaliveTimeout);
                    self.send_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT, out);
                    self.close()
                }
                _ => Flow::Continue,
            },
            _ => Flow::Continue,
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitConnect { deadline } => Some(deadline),
            Phase::Connected => {
                let keep_alive = self
                    .keep_alive_window
                    .map(|window| self.last_received + window);
                let paused = self.client.as_ref().and_then(ClientSession::paused_until);
                keep_alive.into_iter().chain(paused).min()
            }
            Phase::Closed => None,
        }
    }

    /// Whether a drain stopped at the output high-water mark and should resume once the
    /// driver has written some of `out`.
    pub fn wants_drain(&self) -> bool {
        self.drain_blocked
    }

    /// The server is shutting down.
    pub fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        self.send_disconnect(ReasonCode::SERVER_SHUTTING_DOWN, out);
        self.close()
    }

    /// The transport is gone; hands the session back to the broker.
    pub fn handle_closed(&mut self, now: Instant) {
        // What the client sent before it went is routed, whoever is behind: it is bounded
        // by the parking, and would otherwise be lost.
        if let Some(parked) = self.parked.take() {
            let mut unsent = BytesMut::new();
            for publish in parked.publishes {
                if self.handle_publish(publish, &mut unsent, now) == Flow::Close {
                    break;
                }
            }
        }
        self.phase = Phase::Closed;
        if let Some(client) = self.client.take() {
            match self.ending {
                Some(reason) => client.close_because(self.will_disposition, reason, now),
                None => client.close(self.will_disposition, now),
            }
        }
    }

    fn close(&mut self) -> Flow {
        self.phase = Phase::Closed;
        Flow::Close
    }

    fn reject_input(&mut self, error: &DecodeError, out: &mut BytesMut) -> Flow {
        tracing::warn!(%error, "closing connection on bad input");
        match self.phase {
            Phase::AwaitConnect { .. } => match (error, self.decoder.version()) {
                (DecodeError::UnsupportedProtocolVersion { .. }, _) => {
                    // The client's level is unknown to us, so answer in the 3.1.1 form that
                    // every level can read as "unacceptable protocol version".
                    self.version = ProtocolVersion::V3_1_1;
                    self.send_connack(
                        false,
                        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                        ConnAckProperties::default(),
                        out,
                    );
                }
                // A 5.0 CONNECT that fails later in its body still told us its level, so the
                // client can be told why (MQTT 5.0 section 4.13); 3.x has no return code for it.
                (_, Some(ProtocolVersion::V5)) => {
                    self.version = ProtocolVersion::V5;
                    let properties = ConnAckProperties {
                        reason_string: Some(error.to_string()),
                        ..Default::default()
                    };
                    self.send_connack(false, error.reason_code(), properties, out);
                }
                _ => {}
            },
            _ => self.send_disconnect(error.reason_code(), out),
        }
        self.close()
    }

    fn handle_packet(&mut self, packet: Packet, out: &mut BytesMut, now: Instant) -> Flow {
        if let Phase::AwaitConnect { .. } = self.phase {
            return match packet {
                Packet::Connect(connect) => self.handle_connect(*connect, out, now),
                _ => self.disconnect_with(
                    ReasonCode::PROTOCOL_ERROR,
                    "[MQTT-3.1.0-1] the first packet must be CONNECT",
                    out,
                ),
            };
        }
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish, out, now),
            Packet::PubAck(ack) => {
                self.with_session(|state| state.puback(ack.packet_id));
                Flow::Continue
            }
            Packet::PubRec(ack) => self.handle_pubrec(ack, out),
            Packet::PubRel(ack) => self.handle_pubrel(ack, out),
            Packet::PubComp(ack) => {
                self.with_session(|state| state.pubcomp(ack.packet_id));
                Flow::Continue
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(subscribe, out, now),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(unsubscribe, out),
            Packet::PingReq => {
                self.send(&Packet::PingResp, out);
                Flow::Continue
            }
            Packet::Disconnect(disconnect) => self.handle_disconnect(*disconnect, out),
            Packet::Connect(_) => self.disconnect_with(
                ReasonCode::PROTOCOL_ERROR,
                "[MQTT-3.1.0-2] a second CONNECT",
                out,
            ),
            Packet::Auth(_) => self.disconnect_with(
                ReasonCode::PROTOCOL_ERROR,
                "[MQTT-4.12.0-1] AUTH without an authentication method in CONNECT",
                out,
            ),
            _ => self.disconnect_with(
                ReasonCode::PROTOCOL_ERROR,
                "CONNACK, SUBACK, UNSUBACK and PINGRESP are sent only by a server",
                out,
            ),
        }
    }

    fn with_session<R>(&self, f: impl FnOnce(&mut crate::session::SessionState) -> R) -> Option<R> {
        self.client
            .as_ref()
            .map(|client| f(&mut client.session().state.lock()))
    }

    fn handle_connect(&mut self, connect: Connect, out: &mut BytesMut, now: Instant) -> Flow {
        self.version = connect.protocol;
        let Some(info) = self.arrived.take() else {
            return self.disconnect_with(
                ReasonCode::PROTOCOL_ERROR,
                "[MQTT-3.1.0-2] a second CONNECT",
                out,
            );
        };
        let broker = self.broker.clone();
        let config = &broker.config;
        let v5 = connect.protocol.is_v5();

        let mut assigned_client_id = None;
        let client_id = if let Some(id) = info.certificate_identity.client_id.clone() {
            id
        } else if connect.client_id.is_empty() {
            // 3.1.1 only lets the server assign an id to a clean session [MQTT-3.1.3-8];
            // 3.1 never does.
            if v5 || (connect.protocol == ProtocolVersion::V3_1_1 && connect.clean_start) {
                let id = generate_client_id();
                assigned_client_id = Some(id.clone());
                id
            } else {
                return self.refuse(
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client id with a persistent session",
                    out,
                );
            }
        } else {
            connect.client_id
        };
        if client_id.len() > config.max_client_id_length as usize {
            return self.refuse(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "client id too long",
                out,
            );
        }
        tracing::Span::current().record("client_id", client_id.as_str());

        if connect.properties.authentication_method.is_some() {
            return self.refuse(
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                "enhanced authentication is not supported",
                out,
            );
        }
        let presented = Presented {
            protocol: MQTT_NAMESPACE,
            listener: info.listener.clone(),
            client_id: Arc::from(client_id),
            username: info
                .certificate_identity
                .username
                .clone()
                .or(connect.username),
            password: connect.password,
            peer: info.peer,
            mountpoint: info.mountpoint.clone(),
            mountpoint_values: Vec::new(),
        };
        let who = match self.broker.authenticate(presented) {
            Ok(who) => who,
            Err(refused) => return self.refuse_connect(&refused, out),
        };

        let max_qos = QoS::from_u8(config.max_qos_allowed).unwrap_or(QoS::ExactlyOnce);
        // Copied: the decoded fields share the read buffer they came from, which a will kept
        // for the whole connection would otherwise keep alive.
        let will = connect.will.map(|will| {
            Box::new(Will {
                delay_interval: will.properties.will_delay_interval.unwrap_or(0),
                topic: ByteString::from(&*will.topic),
                payload: Bytes::copy_from_slice(&will.payload),
                qos: will.qos,
                retain: will.retain,
                properties: crate::codec::PublishProperties {
                    payload_format_indicator: will.properties.payload_format_indicator,
                    message_expiry_interval: will.properties.message_expiry_interval,
                    content_type: will.properties.content_type,
                    response_topic: will.properties.response_topic,
                    correlation_data: will
                        .properties
                        .correlation_data
                        .as_deref()
                        .map(Bytes::copy_from_slice),
                    user_properties: will.properties.user_properties,
                    ..Default::default()
                },
            })
        });

        let (keep_alive, server_keep_alive) = if config.server_keepalive > 0 {
            (config.server_keepalive, Some(config.server_keepalive))
        } else if connect.keep_alive > config.max_keepalive
            || (connect.keep_alive == 0 && v5 && config.max_keepalive < 65535)
        {
            (config.max_keepalive, Some(config.max_keepalive))
        } else {
            (connect.keep_alive, None)
        };
        self.keep_alive_window = (keep_alive > 0)
            .then(|| Duration::from_secs_f64(f64::from(keep_alive) * config.keepalive_multiplier));

        let expiry_interval = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::try_from(config.session_expiry_interval.get().as_secs()).unwrap_or(u32::MAX)
        };
        let client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        self.send_window = usize::from(
            client_receive_maximum
                .min(config.max_inflight as u16)
                .max(1),
        );
        self.client_max_packet_size = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        self.client_topic_alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);

        let opened = self.broker.open_session(
            who,
            OpenSession {
                clean_start: connect.clean_start,
                expiry_interval,
                will,
                control: self.control.clone(),
                rates: info.rates,
                proto: ProtoInfo {
                    name: "MQTT",
                    version: ProtoVer::Level(self.version.level()),
                },
                keepalive: u32::from(keep_alive),
                announce: true,
            },
            now,
        );
        let client = match opened {
            Ok(client) => client,
            Err(refused) => return self.refuse_connect(&refused, out),
        };
        let properties = ConnAckProperties {
            receive_maximum: (config.receive_maximum < 65535)
                .then_some(config.receive_maximum as u16),
            maximum_qos: (max_qos < QoS::ExactlyOnce).then_some(max_qos),
            retain_available: (!config.retain_available).then_some(false),
            maximum_packet_size: (config.max_packet_size < u32::MAX)
                .then_some(config.max_packet_size),
            assigned_client_identifier: assigned_client_id,
            topic_alias_maximum: (config.max_topic_alias > 0).then_some(config.max_topic_alias),
            wildcard_subscription_available: (!config.wildcard_subscription).then_some(false),
            subscription_identifiers_available: (!config.subscription_identifiers).then_some(false),
            shared_subscription_available: (!config.shared_subscription).then_some(false),
            server_keep_alive,
            // A request past the broker's cap is told what it got [MQTT-3.2.2.3.2].
            session_expiry_interval: (v5 && client.expiry_interval() != expiry_interval)
                .then_some(client.expiry_interval()),
            ..Default::default()
        };
        tracing::info!(
            version = self.version.as_str(),
            clean_start = connect.clean_start,
            session_present = client.session_present(),
            keep_alive,
            "client connected"
        );
        let session_present = client.session_present();
        self.send_connack(session_present, ReasonCode::SUCCESS, properties, out);
        self.client = Some(client);
        self.phase = Phase::Connected;
        if session_present {
            self.resend_unacknowledged(out, now);
        }
        Flow::Continue
    }

    /// Answers CONNECT with the reason the session layer gave and closes.
    fn refuse_connect(&mut self, refused: &ConnectRefused, out: &mut BytesMut) -> Flow {
        tracing::info!(%refused, "connection refused");
        let properties = ConnAckProperties {
            reason_string: Some(refused.to_string()),
            ..Default::default()
        };
        self.send_connack(false, refused.mqtt5_reason_code(), properties, out);
        Flow::Close
    }

    /// Answers CONNECT with an error and closes [MQTT-3.2.2-6].
    fn refuse(&mut self, reason: ReasonCode, why: &'static str, out: &mut BytesMut) -> Flow {
        tracing::info!(reason = reason.0, why, "connection refused");
        let properties = ConnAckProperties {
            reason_string: Some(why.to_owned()),
            ..Default::default()
        };
        self.send_connack(false, reason, properties, out);
        Flow::Close
    }

    fn send_connack(
        &mut self,
        session_present: bool,
        reason_code: ReasonCode,
        properties: ConnAckProperties,
        out: &mut BytesMut,
    ) {
        self.send(
            &Packet::ConnAck(Box::new(ConnAck {
                session_present,
                reason_code,
                properties,
            })),
            out,
        );
    }

    /// 3.x has no server DISCONNECT: closing the connection is all it gets.
    fn send_disconnect(&mut self, reason_code: ReasonCode, out: &mut BytesMut) {
        self.send_disconnect_saying(reason_code, None, out);
    }

    fn send_disconnect_saying(
        &mut self,
        reason_code: ReasonCode,
        reason_string: Option<&str>,
        out: &mut BytesMut,
    ) {
        if self.version.is_v5() && matches!(self.phase, Phase::Connected) {
            let properties = DisconnectProperties {
                reason_string: reason_string.map(str::to_owned),
                ..Default::default()
            };
            let disconnect = Disconnect {
                reason_code,
                properties,
            };
            self.send(&Packet::Disconnect(Box::new(disconnect)), out);
        }
    }

    fn send(&self, packet: &Packet, out: &mut BytesMut) {
        if let Err(error) = encode(packet, self.version, out) {
            tracing::error!(packet = packet.name(), %error, "could not encode packet");
        }
    }

    fn ack(
        &self,
        packet: fn(PubResponse) -> Packet,
        packet_id: u16,
        reason_code: ReasonCode,
        out: &mut BytesMut,
    ) {
        self.send(
            &packet(PubResponse {
                packet_id,
                reason_code,
                properties: AckProperties::default(),
            }),
            out,
        );
    }

    /// Sends PUBACK, PUBREC or PUBCOMP once what it acknowledges is durable (`ticket`),
    /// and never before an earlier acknowledgement that still waits [MQTT-4.6.0-2]. PUBCOMP
    /// waits too: a client told its flow is complete must not meet the packet id still
    /// awaiting release after a restart.
    fn acknowledge_durably(
        &mut self,
        packet: fn(PubResponse) -> Packet,
        packet_id: u16,
        reason: ReasonCode,
        ticket: Option<Ticket>,
        out: &mut BytesMut,
    ) {
        let held = HeldAck {
            packet,
            packet_id,
            reason,
        };
        let control = &self.control;
        if let Some(now) = self
            .held_acks
            .hold(held, ticket, self.broker.store().as_ref(), || {
                control.wakeup()
            })
        {
            self.ack(now.packet, now.packet_id, now.reason, out);
        }
    }

    fn release_held_acks(&mut self, out: &mut BytesMut) {
        while let Some(held) = self.held_acks.pop_due(self.broker.store().as_ref()) {
            self.ack(held.packet, held.packet_id, held.reason, out);
        }
    }

    fn handle_publish(&mut self, mut publish: Publish, out: &mut BytesMut, now: Instant) -> Flow {
        let broker = self.broker.clone();
        let config = &broker.config;
        if let Some(alias) = publish.properties.take_topic_alias() {
            if alias == 0 || alias > config.max_topic_alias {
                return self.disconnect_with(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    "[MQTT-3.3.2-9] topic alias out of range",
                    out,
                );
            }
            if publish.topic.is_empty() {
                match self
                    .aliases
                    .as_ref()
                    .and_then(|aliases| aliases.inbound.get(&alias))
                {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        return self.disconnect_with(
                            ReasonCode::PROTOCOL_ERROR,
                            "unknown topic alias",
                            out,
                        )
                    }
                }
            } else {
                // Copied: the decoded topic shares the packet's read buffer, payload and all,
                // which the alias would keep alive for the whole connection.
                self.aliases
                    .get_or_insert_with(Box::default)
                    .inbound
                    .insert(alias, ByteString::from(&*publish.topic));
            }
        }
        let Some(client) = self.client.as_ref() else {
            return Flow::Close;
        };
        let session = client.session().clone();
        let permit = match client.permit_shared(&publish.topic, publish.qos, publish.retain) {
            Ok(permit) => Ok(permit.arrived_by(self.arrival.1)),
            Err(PublishRefused::Invalid(reason, why)) => {
                return self.disconnect_with(reason, why, out);
            }
            Err(PublishRefused::StoreFull) => {
                if !self.version.is_v5() {
                    // 3.1.1 has no way to refuse one message but closing.
                    return self.close();
                }
                let ack = if publish.qos == QoS::ExactlyOnce {
                    Packet::PubRec
                } else {
                    Packet::PubAck
                };
                self.ack(ack, publish.packet_id, ReasonCode::QUOTA_EXCEEDED, out);
                return Flow::Continue;
            }
            Err(refused) => {
                tracing::info!(topic = %publish.topic, %refused, "publish refused");
                Err(refused.reason_code())
            }
        };
        let packet_id = publish.packet_id;
        let qos = publish.qos;
        match qos {
            QoS::AtMostOnce => {
                if let Ok(permit) = permit {
                    // QoS 0 is acknowledged to nobody.
                    let _ = self.route(permit, publish, now);
                }
            }
            QoS::AtLeastOnce => {
                let (reason, ticket) = match permit {
                    Ok(permit) => self.route_with_reason(permit, publish, now),
                    Err(reason) => (reason, None),
                };
                self.acknowledge_durably(Packet::PubAck, packet_id, reason, ticket, out);
            }
            QoS::ExactlyOnce => {
                let (duplicate, awaiting_ticket) = {
                    let mut state = session.state.lock();
                    if state.is_awaiting_release(packet_id) {
                        (true, None)
                    } else {
                        state.expire_awaiting_release(now, config.await_rel_timeout.get());
                        let limit = if self.version.is_v5() {
                            config.receive_maximum as usize
                        } else {
                            config.max_awaiting_rel as usize
                        };
                        if state.awaiting_release_count() >= limit {
                            drop(state);
                            return self.disconnect_with(
                                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                                "[MQTT-3.3.4-9] more QoS 2 messages in flight than Receive Maximum",
                                out,
                            );
                        }
                        let ticket = if permit.is_ok() {
                            state.await_release(packet_id, now)
                        } else {
                            None
                        };
                        (false, ticket)
                    }
                };
                // A resent PUBLISH of a message already accepted is acknowledged again but
                // never routed twice [MQTT-4.3.3-10].
                let (reason, ticket) = match permit {
                    _ if duplicate => (ReasonCode::SUCCESS, None),
                    Ok(permit) => self.route_with_reason(permit, publish, now),
                    Err(reason) => (reason, None),
                };
                let ticket = ticket.max(awaiting_ticket);
                self.acknowledge_durably(Packet::PubRec, packet_id, reason, ticket, out);
            }
        }
        Flow::Continue
    }

    /// Routes, and says what the acknowledgement carries and which store ticket it waits for.
    fn route_with_reason(
        &mut self,
        permit: PublishPermit,
        publish: Publish,
        now: Instant,
    ) -> (ReasonCode, Option<Ticket>) {
        let dispatched = self.route(permit, publish, now);
        let reason = if dispatched.reached == 0 && self.version.is_v5() {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::SUCCESS
        };
        (reason, dispatched.ticket)
    }

    fn route(&mut self, permit: PublishPermit, publish: Publish, now: Instant) -> Dispatched {
        let Some(client) = self.client.as_ref() else {
            return Dispatched::default();
        };
        client.publish_permitted(permit, publish.payload, publish.properties, now)
    }

    fn disconnect_with(
        &mut self,
        reason: ReasonCode,
        rule: &'static str,
        out: &mut BytesMut,
    ) -> Flow {
        tracing::warn!(reason = reason.0, rule, "closing connection");
        self.send_disconnect_saying(reason, Some(rule), out);
        Flow::Close
    }

    fn handle_pubrec(&mut self, ack: PubResponse, out: &mut BytesMut) -> Flow {
        let found = self
            .with_session(|state| state.pubrec(ack.packet_id, ack.reason_code))
            .unwrap_or(false);
        if !ack.reason_code.is_error() {
            let reason = if found {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
            };
            self.ack(Packet::PubRel, ack.packet_id, reason, out);
        }
        Flow::Continue
    }

    fn handle_pubrel(&mut self, ack: PubResponse, out: &mut BytesMut) -> Flow {
        let released = self.with_session(|state| state.release(ack.packet_id));
        let (reason, ticket) = match released {
            Some(Some(ticket)) => (ReasonCode::SUCCESS, ticket),
            _ => (ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, None),
        };
        self.acknowledge_durably(Packet::PubComp, ack.packet_id, reason, ticket, out);
        Flow::Continue
    }

    fn handle_subscribe(&mut self, subscribe: Subscribe, out: &mut BytesMut, now: Instant) -> Flow {
        if subscribe.subscription_identifier.is_some()
            && !self.broker.config.subscription_identifiers
        {
            return self.disconnect_with(
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not available",
                out,
            );
        }
        let Some(client) = self.client.as_ref() else {
            return Flow::Close;
        };
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        for (filter, options) in &subscribe.filters {
            let shared = matches!(
                parse_subscription(filter, 0),
                Ok(SubscriptionFilter::Shared { .. })
            );
            if shared && options.no_local {
                return self.disconnect_with(
                    ReasonCode::PROTOCOL_ERROR,
                    "[MQTT-3.8.3-4] No Local on a shared subscription",
                    out,
                );
            }
            let code = match client.subscribe_arrived(
                filter,
                *options,
                subscribe.subscription_identifier,
                self.arrival.0,
                now,
            ) {
                Ok(granted) => ReasonCode(granted.qos.as_u8()),
                Err(reason) => {
                    tracing::info!(filter, reason = reason.0, "subscription refused");
                    reason
                }
            };
            reason_codes.push(code);
        }
        self.send(
            &Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                properties: AckProperties::default(),
                reason_codes,
            }),
            out,
        );
        Flow::Continue
    }

    fn handle_unsubscribe(&mut self, unsubscribe: Unsubscribe, out: &mut BytesMut) -> Flow {
        let Some(client) = self.client.as_ref() else {
            return Flow::Close;
        };
        let reason_codes = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if parse_subscription(filter, self.broker.config.max_topic_levels as usize).is_err()
                {
                    ReasonCode::TOPIC_FILTER_INVALID
                } else if client.unsubscribe(filter) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(
            &Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: AckProperties::default(),
                reason_codes,
            }),
            out,
        );
        Flow::Continue
    }

    fn handle_disconnect(&mut self, disconnect: Disconnect, out: &mut BytesMut) -> Flow {
        if let (Some(expiry), Some(client)) = (
            disconnect.properties.session_expiry_interval,
            self.client.as_mut(),
        ) {
            if client.expiry_interval() == 0 && expiry != 0 {
                return self.disconnect_with(
                    ReasonCode::PROTOCOL_ERROR,
                    "[MQTT-3.14.2-2] session expiry set on DISCONNECT after 0 in CONNECT",
                    out,
                );
            }
            client.set_expiry_interval(expiry);
        }
        self.will_disposition = if disconnect.reason_code == ReasonCode::DISCONNECT_WITH_WILL {
            WillDisposition::Publish
        } else {
            WillDisposition::Discard
        };
        self.ending = Some(DisconnectReason::Normal);
        tracing::info!(reason = disconnect.reason_code.0, "client disconnected");
        self.close()
    }

    /// On resume, unacknowledged messages go out again first, in their original order,
    /// PUBLISH with DUP set or PUBREL [MQTT-4.4.0-1].
    fn resend_unacknowledged(&mut self, out: &mut BytesMut, now: Instant) {
        let Some(session) = self.client.as_ref().map(|client| client.session().clone()) else {
            return;
        };
        let pending: Vec<Outgoing> = session.state.lock().outgoing().cloned().collect();
        for outgoing in pending {
            match outgoing.state {
                OutgoingState::AwaitPubAck | OutgoingState::AwaitPubRec => {
                    self.write_publish(&outgoing.delivery, outgoing.packet_id, true, out, now);
                }
                OutgoingState::AwaitPubComp => {
                    self.ack(Packet::PubRel, outgoing.packet_id, ReasonCode::SUCCESS, out);
                }
            }
        }
    }

    /// Moves queued deliveries into `out` while the send window and the output allow.
    fn drain(&mut self, out: &mut BytesMut, now: Instant) {
        let Some(session) = self.client.as_ref().map(|client| client.session().clone()) else {
            return;
        };
        self.drain_blocked = false;
        let mut state = session.state.lock();
        loop {
            if out.len() >= OUTPUT_HIGH_WATER {
                self.drain_blocked = state.has_queued();
                break;
            }
            let Some(delivery) = state.pop_queued(now) else {
                break;
            };
            if delivery.qos == QoS::AtMostOnce {
                self.write_publish(&delivery, 0, false, out, now);
                continue;
            }
            if state.outgoing_len() >= self.send_window {
                state.unpop_queued(delivery);
                break;
            }
            let packet_id = state.allocate_packet_id();
            if self.write_publish(&delivery, packet_id, false, out, now) {
                let awaiting = if delivery.qos == QoS::AtLeastOnce {
                    OutgoingState::AwaitPubAck
                } else {
                    OutgoingState::AwaitPubRec
                };
                state.push_outgoing(Outgoing {
                    packet_id,
                    delivery,
                    state: awaiting,
                });
            }
        }
    }

    /// Encodes one delivery; returns false if it was dropped for exceeding the client's
    /// Maximum Packet Size, which counts as delivered [MQTT-3.1.2-25].
    fn write_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: u16,
        dup: bool,
        out: &mut BytesMut,
        now: Instant,
    ) -> bool {
        let message = &delivery.message;
        let topic = match self.client.as_ref() {
            Some(client) => client.client().unmount(&message.topic),
            None => message.topic.clone(),
        };
        let mut publish = Publish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id,
            payload: message.payload.clone(),
            properties: Default::default(),
        };
        let mut new_alias = None;
        if self.version.is_v5() {
            publish.properties = message.properties.clone();
            // Written only when there is something to write: a write allocates the set.
            let expiry = message.remaining_expiry(now);
            if expiry != publish.properties.message_expiry_interval {
                publish.properties.message_expiry_interval = expiry;
            }
            if !delivery.subscription_ids.is_empty() {
                publish.properties.subscription_identifiers = delivery.subscription_ids.to_vec();
            }
            if self.client_topic_alias_max > 0 {
                let outbound = &self.aliases.get_or_insert_with(Box::default).outbound;
                match outbound.get(&message.topic) {
                    Some(&alias) => {
                        publish.properties.topic_alias = Some(alias);
                        publish.topic = ByteString::new();
                    }
                    None if outbound.len() < usize::from(self.client_topic_alias_max) => {
                        let alias = (outbound.len() + 1) as u16;
                        publish.properties.topic_alias = Some(alias);
                        new_alias = Some(alias);
                    }
                    None => {}
                }
            }
        }
        let packet = Packet::Publish(publish);
        // Sized first only for a client that set a Maximum Packet Size below what MQTT can
        // carry at all: sizing costs nearly as much as encoding.
        let sized = if self.client_max_packet_size < crate::codec::LARGEST_PACKET {
            encoded_len(&packet, self.version).map(Some)
        } else {
            Ok(None)
        };
        match sized {
            Ok(Some(len)) if len as u64 > u64::from(self.client_max_packet_size) => {
                tracing::debug!(
                    len,
                    max = self.client_max_packet_size,
                    "delivery exceeds the client's maximum packet size; dropped"
                );
                return false;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "could not size a delivery");
                return false;
            }
        }
        let before = out.len();
        self.send(&packet, out);
        if out.len() == before {
            // It could not be encoded (`send` logged why): dropped, as one too large is.
            return false;
        }
        Stats::add(&self.broker.stats.messages_sent, 1);
        if let Some(alias) = new_alias {
            self.aliases
                .get_or_insert_with(Box::default)
                .outbound
                // Copied: a routed topic shares its publisher's read buffer, payload and all.
                .insert(ByteString::from(&*message.topic), alias);
        }
        true
    }
}

fn generate_client_id() -> String {
    let suffix: u64 = rand::random();
    format!("auto-{suffix:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;
    use crate::codec::{ConnectProperties, PublishProperties, SubscriptionOptions};

    struct NoWakeup;

    impl Wakeup for NoWakeup {
        fn wake(&self) {}
    }

    fn channel(broker: &Arc<Broker>, now: Instant) -> MqttChannel {
        let info = ConnectionInfo {
            listener: Arc::from("tcp:test"),
            peer: None,
            handshake_timeout: Duration::from_secs(10),
            certificate_identity: CertificateIdentity::default(),
            mountpoint: Arc::from(""),
            rates: PublishRates::UNLIMITED,
        };
        MqttChannel::new(broker.clone(), info, Arc::new(NoWakeup), now)
    }

    fn feed(channel: &mut MqttChannel, packet: Packet, now: Instant) -> std::ops::Range<usize> {
        let mut input = BytesMut::new();
        encode(&packet, ProtocolVersion::V5, &mut input).unwrap_or_default();
        let start = input.as_ptr() as usize;
        let read = start..start + input.len();
        let mut out = BytesMut::new();
        channel.handle_input(&mut input, &mut out, now);
        read
    }

    fn connect(client_id: &str) -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                topic_alias_maximum: Some(10),
                ..Default::default()
            },
        }))
    }

    fn points_into(topic: &ByteString, buffer: &std::ops::Range<usize>) -> bool {
        buffer.contains(&(topic.as_bytes().as_ptr() as usize))
    }

    #[test]
    fn topic_aliases_keep_their_topic_not_the_packet_it_came_in() {
        let now = Instant::now();
        let mut config = gateway_config::Config::from_toml_str("").expect("defaults");
        config.mqtt.max_topic_alias = 10;
        let broker = Arc::new(Broker::new(
            config.mqtt.clone(),
            &config.retainer,
            Auth::allow_all(),
            now,
        ));
        let mut subscriber = channel(&broker, now);
        feed(&mut subscriber, connect("sub"), now);
        let subscribe = Subscribe {
            packet_id: 1,
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: vec![(
                "big/+".to_owned(),
                SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..Default::default()
                },
            )],
        };
        feed(&mut subscriber, Packet::Subscribe(subscribe), now);

        let mut publisher = channel(&broker, now);
        feed(&mut publisher, connect("pub"), now);
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: ByteString::from_static("big/one"),
            packet_id: 0,
            payload: Bytes::from(vec![0u8; 256 * 1024]),
            properties: PublishProperties {
                topic_alias: Some(1),
                ..Default::default()
            }
            .into(),
        };
        let read = feed(&mut publisher, Packet::Publish(publish), now);
        let mut out = BytesMut::new();
        subscriber.handle_wakeup(&mut out, now);

        let inbound = &publisher
            .aliases
            .as_ref()
            .map(|a| a.inbound.clone())
            .unwrap_or_default();
        let outbound = &subscriber
            .aliases
            .as_ref()
            .map(|a| a.outbound.clone())
            .unwrap_or_default();
        assert_eq!(inbound.len(), 1);
        assert_eq!(outbound.len(), 1, "the delivery was given an alias");
        assert!(inbound.values().all(|topic| !points_into(topic, &read)));
        assert!(outbound.keys().all(|topic| !points_into(topic, &read)));
    }
}
