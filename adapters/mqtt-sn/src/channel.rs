//! One MQTT-SN peer as a sans-io state machine: datagrams, broker wake-ups and timer ticks
//! in, with `now`; datagrams out. The client is a session of the unified model in its own
//! namespace; this channel only translates frames and topic ids.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use mqtt_core::broker::{Broker, Stats, WillDisposition};
use mqtt_core::client::{
    Authenticated, ClientSession, ConnectRefused, OpenSession, Presented, PublishRefused,
};
use mqtt_core::clients::{DisconnectReason, ProtoInfo, ProtoVer};
use mqtt_core::codec::{QoS, ReasonCode, SubscriptionOptions};
use mqtt_core::message::Delivery;
use mqtt_core::protocol::Flow;
use mqtt_core::rate::PublishRates;
use mqtt_core::session::{ConnControl, Outgoing, OutgoingState, Wakeup, Will};
use mqtt_core::storage::{HeldReplies, Ticket};

use crate::codec::{
    self, short_topic_id, short_topic_name, Flags, Message, Qos, ReturnCode, TopicIdType, TopicRef,
    WillTopic, PROTOCOL_ID,
};
use crate::topics::{Predefined, TopicRegistry};

/// The namespace of MQTT-SN sessions: an MQTT-SN "dev1" is not the MQTT "dev1".
pub const MQTTSN_NAMESPACE: &str = "mqtt-sn";

/// How the operator's view and presence events name the protocol (EMQX's words).
const MQTTSN_PROTO: ProtoInfo = ProtoInfo {
    name: "MQTT-SN",
    version: ProtoVer::Text("1.2"),
};

/// The client id QoS -1 publishes are authorized as (EMQX's name for it).
pub const QOS_MINUS_ONE_CLIENT_ID: &str = "NegQoS-Client";

/// The most data a PUBLISH can carry: 65535 bytes less the 3-octet length, MsgType, Flags,
/// TopicId and MsgId.
const MAX_PUBLISH_DATA: usize = 65_535 - 9;

/// What every channel of one listener shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `udp:NAME`, as logs and auth rules name the listener.
    pub listener: Arc<str>,
    pub gateway_id: u8,
    pub enable_qos3: bool,
    /// The listener's or else the gateway's; may contain `${clientid}` and `${username}`.
    pub mountpoint: String,
    pub clientinfo_override: gateway_config::ClientInfoOverride,
    pub idle_timeout: Duration,
    /// Silence allowed to a connected client that asked for no keep-alive (Duration 0).
    pub max_idle_without_keepalive: Duration,
    pub retry_interval: Duration,
    pub max_retries: u32,
    pub max_registered_topics: usize,
    pub predefined: Predefined,
    pub subs_resume: bool,
    /// What one client may publish: the listener's `messages_rate` and `bytes_rate`.
    pub rates: PublishRates,
}

impl Settings {
    pub fn from_config(
        listener: Arc<str>,
        config: &gateway_config::MqttSnConfig,
        listener_config: &gateway_config::UdpListenerConfig,
    ) -> Settings {
        Settings {
            listener,
            gateway_id: config.gateway_id,
            enable_qos3: config.enable_qos3,
            mountpoint: listener_config.mountpoint_or(&config.mountpoint).to_owned(),
            clientinfo_override: config.clientinfo_override.clone(),
            idle_timeout: config.idle_timeout.get(),
            max_idle_without_keepalive: config.max_idle_without_keepalive.get(),
            retry_interval: config.retry_interval.get(),
            max_retries: config.max_retries,
            max_registered_topics: config.max_registered_topics as usize,
            predefined: Predefined::new(
                config
                    .predefined
                    .iter()
                    .map(|topic| (topic.id, topic.topic.clone())),
            ),
            subs_resume: config.subs_resume,
            rates: PublishRates::new(listener_config.messages_rate, listener_config.bytes_rate),
        }
    }
}

/// CONNECT, authenticated, kept while the will handshake runs.
#[derive(Debug, Clone)]
struct PendingConnect {
    /// As the client sent it: a CONNECT sent again is recognised by it.
    client_id: ByteString,
    who: Authenticated,
    clean_session: bool,
    duration: u16,
}

#[derive(Debug)]
enum Phase {
    Idle,
    AwaitWillTopic(PendingConnect),
    AwaitWillMsg(PendingConnect, WillTopic),
    Connected,
    /// Spec 6.14: the client sleeps for `duration`; messages wait in its session.
    Asleep {
        duration: Duration,
    },
    /// Woken by PINGREQ: buffered messages go out, then PINGRESP and back to sleep.
    Awake {
        duration: Duration,
    },
    Closed,
}

/// A gateway-to-client exchange waiting for the client's answer.
#[derive(Debug)]
enum Pending {
    /// The session's outgoing QoS 1/2 message with this id (PUBLISH or PUBREL, by its state).
    Outgoing { msg_id: u16 },
    /// REGISTER of a topic, holding the message that needs it until REGACK (spec 6.10), or
    /// none when a resumed session's subscriptions are registered again.
    Register {
        msg_id: u16,
        topic_id: u16,
        topic: ByteString,
        held: Option<Delivery>,
    },
}

#[derive(Debug)]
struct InFlight {
    pending: Pending,
    retry_at: Instant,
    retries: u32,
}

/// Why a client counts as lost: its will goes out.
#[derive(Debug, Clone, Copy)]
enum Lost {
    KeepAlive,
    SleepTimeout,
    NoAnswer,
    BadInput,
}

pub struct MqttSnChannel {
    broker: Arc<Broker>,
    /// The identity the transport (DTLS) authenticated: the client's user name, and the
    /// one client id its CONNECT may name.
    transport_identity: Option<Arc<str>>,
    settings: Arc<Settings>,
    peer: Option<SocketAddr>,
    control: Arc<ConnControl>,
    phase: Phase,
    created: Instant,
    last_received: Instant,
    keep_alive: Option<Duration>,
    /// The open session; every publish, subscription and the will go through it.
    client: Option<ClientSession>,
    /// The client id of CONNECT, which PINGREQ repeats; the session's may be overridden.
    presented_client_id: Option<Arc<str>>,
    in_flight: Option<InFlight>,
    /// Subscribed topic names still to REGISTER after a resume (`subs_resume`).
    resume_registers: Vec<ByteString>,
    will_disposition: WillDisposition,
    /// Why the client went, once known otherwise than by `will_disposition`.
    ending: Option<DisconnectReason>,
    /// PUBACKs and PUBRECs waiting for what their PUBLISH changed to be durable, in the
    /// order the PUBLISHes came: once one waits, those behind it wait too.
    held_acks: HeldReplies<Message>,
}

impl MqttSnChannel {
    pub fn new(
        broker: Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
        wakeup: Arc<dyn Wakeup>,
        now: Instant,
    ) -> MqttSnChannel {
        let control = ConnControl::new(broker.next_connection_id(), wakeup);
        MqttSnChannel {
            broker,
            transport_identity: None,
            settings,
            peer,
            control,
            phase: Phase::Idle,
            created: now,
            last_received: now,
            keep_alive: None,
            client: None,
            presented_client_id: None,
            in_flight: None,
            resume_registers: Vec::new(),
            will_disposition: WillDisposition::Publish,
            ending: None,
            held_acks: HeldReplies::default(),
        }
    }

    /// The client id the client connected with.
    pub fn client_id(&self) -> Option<&str> {
        self.presented_client_id.as_deref()
    }

    pub fn is_asleep(&self) -> bool {
        matches!(self.phase, Phase::Asleep { .. })
    }

    /// The client id under which a datagram from another address may reach this client:
    /// only a sleeping client may wake up from a new source port (spec 6.14).
    pub fn rebindable_identity(&self) -> Option<Arc<str>> {
        match self.phase {
            Phase::Asleep { .. } | Phase::Awake { .. } => self.client_id().map(Arc::from),
            _ => None,
        }
    }

    /// Whether a PINGREQ from another address, naming this sleeping client's id, is that
    /// client's: the core's session layer accepts the identity it presents there (the
    /// clientinfo override applied, with the new address as `${peerhost}`) as this
    /// session's client and owner. Only then does the peer move there and wake (spec 6.14).
    /// Changes nothing here.
    pub fn vouch(&self, datagram: &Bytes, from: SocketAddr) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        let Ok(Message::PingReq {
            client_id: Some(client_id),
        }) = codec::decode(datagram)
        else {
            return false;
        };
        if self.presented_client_id.as_deref() != Some(&*client_id) {
            return false;
        }
        let mut presented = self.presented(Arc::from(&*client_id));
        presented.peer = Some(from);
        match self.broker.authenticate(presented) {
            Ok(who) => {
                who.client().client_id == *client.client_id()
                    && who.client().username == client.client().username
            }
            Err(refused) => {
                tracing::debug!(%refused, claimant = %from, "wake-up from another address not authenticated");
                false
            }
        }
    }

    /// The client moved to `address` (a wake-up from a new port that it vouched for).
    pub fn rebound(&mut self, address: SocketAddr) {
        self.peer = Some(address);
    }

    /// Whether the client counts as receiving at its address: once the core's session layer
    /// accepted its CONNECT (or a wake-up it vouched for). MQTT-SN 1.2 gives a client
    /// nothing of ours to echo before the first deliveries, so with anonymous access this
    /// proves no more than the source address does.
    pub fn address_validated(&self) -> bool {
        self.client.is_some()
    }

    pub fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        let message = match codec::decode(&datagram) {
            Ok(Message::Encapsulated { message, .. }) => *message,
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(peer = ?self.peer, %error, "malformed datagram");
                return match self.phase {
                    Phase::Connected | Phase::Asleep { .. } | Phase::Awake { .. } => {
                        self.lose(Lost::BadInput, out, now)
                    }
                    _ => self.close(),
                };
            }
        };
        self.last_received = now;
        let flow = self.handle_message(message, out, now);
        if flow == Flow::Close {
            return self.close();
        }
        self.after_step(out, now);
        Flow::Continue
    }

    pub fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Some(reason) = self.control.close_requested() {
            tracing::info!(reason = reason.0, "client closed by the broker");
            self.send(&Message::Disconnect { duration: None }, out);
            return self.close();
        }
        self.after_step(out, now);
        Flow::Continue
    }

    pub fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Some(client) = &self.client {
            // A rate pause that is over ends: the next PUBLISH is taken.
            client.handle_timeout(now);
        }
        match &self.phase {
            Phase::Idle | Phase::AwaitWillTopic(_) | Phase::AwaitWillMsg(..)
                if now >= self.last_received + self.settings.idle_timeout =>
            {
                tracing::debug!("peer idle before completing CONNECT");
                return self.close();
            }
            Phase::Connected => {
                if let Some(window) = self.keep_alive {
                    if now >= self.last_received + window {
                        return self.lose(Lost::KeepAlive, out, now);
                    }
                }
            }
            Phase::Asleep { duration } => {
                if now >= self.last_received + self.grace(*duration) {
                    return self.lose(Lost::SleepTimeout, out, now);
                }
                return Flow::Continue;
            }
            _ => {}
        }
        let due = self
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| now >= in_flight.retry_at);
        if due {
            let retries = self.in_flight.as_ref().map_or(0, |f| f.retries);
            if retries >= self.settings.max_retries {
                return self.lose(Lost::NoAnswer, out, now);
            }
            self.resend_in_flight(out, now);
        }
        Flow::Continue
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Idle | Phase::AwaitWillTopic(_) | Phase::AwaitWillMsg(..) => {
                Some(self.last_received.max(self.created) + self.settings.idle_timeout)
            }
            Phase::Connected => self.keep_alive.map(|window| self.last_received + window),
            // A sleeping client answers nothing: retries wait for it to wake.
            Phase::Asleep { duration } => return Some(self.last_received + self.grace(*duration)),
            Phase::Awake { .. } => None,
            Phase::Closed => return None,
        };
        let retry = self.in_flight.as_ref().map(|in_flight| in_flight.retry_at);
        let paused = self.client.as_ref().and_then(ClientSession::paused_until);
        [phase, retry, paused].into_iter().flatten().min()
    }

    pub fn shutdown(&mut self, out: &mut Vec<Bytes>) -> Flow {
        if self.client.is_some() {
            self.send(&Message::Disconnect { duration: None }, out);
        }
        self.close()
    }

    /// The peer is forgotten; hands the session back to the broker.
    pub fn handle_closed(&mut self, now: Instant) {
        self.phase = Phase::Closed;
        if let Some(client) = self.client.take() {
            match self.ending {
                Some(reason) => client.close_because(self.will_disposition, reason, now),
                None => client.close(self.will_disposition, now),
            }
        }
    }

    fn grace(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.broker.config.keepalive_multiplier.max(1.0))
    }

    fn close(&mut self) -> Flow {
        self.phase = Phase::Closed;
        Flow::Close
    }

    /// The client is gone without DISCONNECT: tell it, in case it still listens, and let the
    /// broker publish its will.
    fn lose(&mut self, why: Lost, out: &mut Vec<Bytes>, _now: Instant) -> Flow {
        tracing::info!(reason = ?why, "client lost");
        if let (Lost::SleepTimeout, Some(client)) = (why, self.client.as_mut()) {
            // A sleep timeout ends the session (spec 6.14), whatever its clean flag said.
            client.set_expiry_interval(0);
        }
        if matches!(why, Lost::KeepAlive | Lost::SleepTimeout) {
            self.ending = Some(DisconnectReason::KeepaliveTimeout);
        }
        self.will_disposition = WillDisposition::Publish;
        self.send(&Message::Disconnect { duration: None }, out);
        self.close()
    }

    fn send(&self, message: &Message, out: &mut Vec<Bytes>) {
        match codec::to_datagram(message) {
            Ok(datagram) => out.push(datagram),
            Err(error) => tracing::warn!(%error, "message not sent"),
        }
    }

    fn handle_message(&mut self, message: Message, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        match message {
            Message::SearchGw { .. } => {
                self.send(
                    &Message::GwInfo {
                        gw_id: self.settings.gateway_id,
                        gw_add: Bytes::new(),
                    },
                    out,
                );
                self.continue_if_attached()
            }
            // Another gateway announcing itself: nothing for us to do.
            Message::Advertise { .. } | Message::GwInfo { .. } => self.continue_if_attached(),
            Message::Connect {
                flags,
                protocol_id,
                duration,
                client_id,
            } => self.handle_connect(flags, protocol_id, duration, client_id, out, now),
            Message::WillTopic(will) => self.handle_will_topic(will, out, now),
            Message::WillMsg { payload } => self.handle_will_msg(payload, out, now),
            Message::Publish {
                flags,
                topic_id,
                msg_id: _,
                data,
            } if flags.qos == Qos::MinusOne && self.client.is_none() => {
                self.handle_qos_minus_one(flags, topic_id, data, now);
                Flow::Close
            }
            Message::PingReq { client_id } => self.handle_pingreq(client_id, out, now),
            Message::Disconnect { duration } => self.handle_disconnect(duration, out, now),
            other => {
                if !matches!(
                    self.phase,
                    Phase::Connected | Phase::Awake { .. } | Phase::Asleep { .. }
                ) {
                    return self.refuse_unconnected(&other, out);
                }
                self.handle_connected(other, out, now)
            }
        }
    }

    fn continue_if_attached(&self) -> Flow {
        if self.client.is_some() {
            Flow::Continue
        } else {
            Flow::Close
        }
    }

    /// Anything but the handshake from a peer that has not connected: it is told to connect
    /// again (a client whose gateway restarted learns it this way) and forgotten.
    fn refuse_unconnected(&mut self, message: &Message, out: &mut Vec<Bytes>) -> Flow {
        tracing::info!(
            message_type = message.type_code(),
            "message from a peer that is not connected"
        );
        self.send(&Message::Disconnect { duration: None }, out);
        Flow::Close
    }

    fn handle_connected(&mut self, message: Message, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        match message {
            Message::Register {
                msg_id, topic_name, ..
            } => self.handle_register(msg_id, topic_name, out),
            Message::RegAck {
                topic_id,
                msg_id,
                return_code,
            } => self.handle_regack(topic_id, msg_id, return_code, out, now),
            Message::Publish {
                flags,
                topic_id,
                msg_id,
                data,
            } => self.handle_publish(flags, topic_id, msg_id, data, out, now),
            Message::PubAck {
                topic_id,
                msg_id,
                return_code,
            } => self.handle_puback(topic_id, msg_id, return_code),
            Message::PubRec { msg_id } => self.handle_pubrec(msg_id, out, now),
            Message::PubRel { msg_id } => {
                if let Some(client) = &self.client {
                    client.session().state.lock().release(msg_id);
                }
                self.send(&Message::PubComp { msg_id }, out);
                Flow::Continue
            }
            Message::PubComp { msg_id } => {
                if self.pending_outgoing(msg_id) {
                    if let Some(client) = &self.client {
                        client.session().state.lock().pubcomp(msg_id);
                    }
                    self.in_flight = None;
                }
                Flow::Continue
            }
            Message::Subscribe {
                flags,
                msg_id,
                topic,
            } => self.handle_subscribe(flags, msg_id, topic, out, now),
            Message::Unsubscribe {
                flags,
                msg_id,
                topic,
            } => self.handle_unsubscribe(flags, msg_id, topic, out),
            Message::WillTopicUpd(will) => self.handle_will_topic_update(will, out),
            Message::WillMsgUpd { payload } => self.handle_will_msg_update(payload, out),
            other => {
                tracing::warn!(
                    message_type = other.type_code(),
                    "message only a gateway sends; closing"
                );
                self.will_disposition = WillDisposition::Publish;
                self.send(&Message::Disconnect { duration: None }, out);
                Flow::Close
            }
        }
    }

    // ---- connect and will handshake -------------------------------------------------

    fn handle_connect(
        &mut self,
        flags: Flags,
        protocol_id: u8,
        duration: u16,
        client_id: ByteString,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        if let Phase::AwaitWillTopic(pending) | Phase::AwaitWillMsg(pending, _) = &self.phase {
            // A CONNECT sent again because our request was lost: ask again.
            if pending.client_id == client_id {
                let again = match self.phase {
                    Phase::AwaitWillTopic(_) => Message::WillTopicReq,
                    _ => Message::WillMsgReq,
                };
                self.send(&again, out);
                return Flow::Continue;
            }
        }
        if protocol_id != PROTOCOL_ID {
            tracing::info!(protocol_id, "CONNECT with an unknown protocol id");
            self.send_connack(ReturnCode::NOT_SUPPORTED, out);
            return Flow::Close;
        }
        // A client that connects again (its CONNACK lost, or back from sleep) starts over on
        // the same peer: hand the session back first, keeping it if it is persistent.
        let asleep = matches!(self.phase, Phase::Asleep { .. } | Phase::Awake { .. });
        if let Some(client) = self.client.take() {
            if asleep && self.presented_client_id.as_deref() == Some(&*client_id) {
                client.wake_up(now);
            }
            client.close(WillDisposition::Discard, now);
            self.in_flight = None;
        }
        // Answers to the previous connection's PUBLISHes: the client sends again what it
        // still waits for.
        self.held_acks.clear();
        tracing::Span::current().record("client_id", &*client_id);
        // Checked before the will handshake, so a client that may not connect is told at
        // once rather than after sending its will.
        if let Some(identity) = &self.transport_identity {
            if **identity != *client_id {
                tracing::info!(identity = %identity, "client id other than the transport identity refused");
                return self.refuse_connect(&ConnectRefused::NotAuthorized, out);
            }
        }
        let who = match self
            .broker
            .authenticate(self.presented(Arc::from(&*client_id)))
        {
            Ok(who) => who,
            Err(refused) => return self.refuse_connect(&refused, out),
        };
        let pending = PendingConnect {
            client_id,
            who,
            clean_session: flags.clean_session,
            duration,
        };
        if flags.will {
            self.phase = Phase::AwaitWillTopic(pending);
            self.send(&Message::WillTopicReq, out);
            Flow::Continue
        } else {
            self.finish_connect(pending, None, out, now)
        }
    }

    fn handle_will_topic(
        &mut self,
        will: Option<WillTopic>,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::AwaitWillTopic(pending) => match will {
                // An empty WILLTOPIC means no will (spec 6.3).
                None => self.finish_connect(pending, None, out, now),
                Some(topic) => {
                    self.phase = Phase::AwaitWillMsg(pending, topic);
                    self.send(&Message::WillMsgReq, out);
                    Flow::Continue
                }
            },
            // Sent again because WILLMSGREQ was lost.
            Phase::AwaitWillMsg(pending, topic) => {
                self.phase = Phase::AwaitWillMsg(pending, topic);
                self.send(&Message::WillMsgReq, out);
                Flow::Continue
            }
            phase => {
                self.phase = phase;
                self.protocol_error("WILLTOPIC outside the will handshake", out)
            }
        }
    }

    fn handle_will_msg(&mut self, payload: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::AwaitWillMsg(pending, topic) => {
                self.finish_connect(pending, Some((topic, payload)), out, now)
            }
            phase => {
                self.phase = phase;
                self.protocol_error("WILLMSG outside the will handshake", out)
            }
        }
    }

    fn protocol_error(&mut self, rule: &'static str, out: &mut Vec<Bytes>) -> Flow {
        tracing::warn!(rule, "protocol violation; closing");
        self.send(&Message::Disconnect { duration: None }, out);
        Flow::Close
    }

    fn send_connack(&self, return_code: ReturnCode, out: &mut Vec<Bytes>) {
        self.send(&Message::ConnAck { return_code }, out);
    }

    /// Answers CONNECT with the refusal of the session layer and forgets the peer. MQTT-SN
    /// has no return code for credentials or ownership: all are 0x03 "not supported", but
    /// for credentials not checked for want of room, 0x01 "congestion": try again later.
    fn refuse_connect(&mut self, refused: &ConnectRefused, out: &mut Vec<Bytes>) -> Flow {
        tracing::info!(%refused, "connection refused");
        let code = match refused {
            ConnectRefused::Busy => ReturnCode::CONGESTION,
            _ => ReturnCode::NOT_SUPPORTED,
        };
        self.send_connack(code, out);
        Flow::Close
    }

    fn finish_connect(
        &mut self,
        pending: PendingConnect,
        will: Option<(WillTopic, Bytes)>,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        let will = will.map(|(topic, payload)| {
            Box::new(Will {
                topic: topic.topic,
                payload,
                qos: to_core_qos(topic.flags.qos),
                retain: topic.flags.retain,
                properties: Default::default(),
                delay_interval: 0,
            })
        });
        let config = &self.broker.config;
        let expiry_interval = if pending.clean_session {
            0
        } else {
            u32::try_from(config.session_expiry_interval.get().as_secs()).unwrap_or(u32::MAX)
        };
        // Duration 0 asks for no keep-alive; a silent peer is still not kept for ever.
        let keep_alive = Some(if pending.duration > 0 {
            Duration::from_secs_f64(f64::from(pending.duration) * config.keepalive_multiplier)
        } else {
            self.settings.max_idle_without_keepalive
        });
        let opened = self.broker.open_session(
            pending.who,
            OpenSession {
                clean_start: pending.clean_session,
                expiry_interval,
                will,
                control: self.control.clone(),
                rates: self.settings.rates,
                proto: MQTTSN_PROTO,
                keepalive: u32::from(pending.duration),
                announce: true,
            },
            now,
        );
        let client = match opened {
            Ok(client) => client,
            Err(refused) => return self.refuse_connect(&refused, out),
        };
        tracing::info!(
            clean_session = pending.clean_session,
            session_present = client.session_present(),
            keep_alive = pending.duration,
            "client connected"
        );
        self.send_connack(ReturnCode::ACCEPTED, out);
        if client.session_present() && self.settings.subs_resume {
            let state = client.session().state.lock();
            // Reversed, so popping from the end registers them in filter order.
            let mut names: Vec<ByteString> = state
                .subscriptions
                .keys()
                .map(|filter| client.client().unmount(&ByteString::from(filter.as_str())))
                .filter(|name| {
                    !name.contains(['+', '#'])
                        && !name.starts_with("$share/")
                        && self.settings.predefined.id(name).is_none()
                        && short_topic_id(name).is_none()
                })
                .collect();
            names.sort_unstable_by(|a, b| b.cmp(a));
            self.resume_registers = names;
        }
        self.keep_alive = keep_alive;
        self.presented_client_id = Some(Arc::from(&*pending.client_id));
        self.client = Some(client);
        self.phase = Phase::Connected;
        self.will_disposition = WillDisposition::Publish;
        Flow::Continue
    }

    /// A new will topic, checked and mounted as a publish to it would be; the payload of the
    /// will it replaces is kept (spec 6.3).
    fn handle_will_topic_update(&mut self, will: Option<WillTopic>, out: &mut Vec<Bytes>) -> Flow {
        let Some(client) = &self.client else {
            return Flow::Close;
        };
        let return_code = match will {
            None => {
                client.session().state.lock().will = None;
                ReturnCode::ACCEPTED
            }
            Some(topic) => {
                let qos = to_core_qos(topic.flags.qos);
                match client.permit(&topic.topic, qos, topic.flags.retain) {
                    Ok(permit) => {
                        let mut state = client.session().state.lock();
                        let payload = state
                            .will
                            .as_ref()
                            .map(|will| will.payload.clone())
                            .unwrap_or_default();
                        state.will = Some(Box::new(Will {
                            topic: permit.routed_topic().clone(),
                            payload,
                            qos,
                            retain: topic.flags.retain,
                            properties: Default::default(),
                            delay_interval: 0,
                        }));
                        ReturnCode::ACCEPTED
                    }
                    Err(refused) => {
                        tracing::info!(topic = %topic.topic, %refused, "will topic update refused");
                        refusal_code(refused)
                    }
                }
            }
        };
        self.send(&Message::WillTopicResp { return_code }, out);
        Flow::Continue
    }

    fn handle_will_msg_update(&mut self, payload: Bytes, out: &mut Vec<Bytes>) -> Flow {
        let Some(client) = &self.client else {
            return Flow::Close;
        };
        let return_code = match client.session().state.lock().will.as_mut() {
            Some(will) => {
                will.payload = payload;
                ReturnCode::ACCEPTED
            }
            None => ReturnCode::NOT_SUPPORTED,
        };
        self.send(&Message::WillMsgResp { return_code }, out);
        Flow::Continue
    }

    // ---- sleep, ping, disconnect ------------------------------------------------------

    fn handle_pingreq(
        &mut self,
        client_id: Option<ByteString>,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        match self.phase {
            Phase::Asleep { duration } | Phase::Awake { duration } => {
                match client_id {
                    Some(id) if Some(&*id) == self.client_id() => {
                        // Whatever was in flight when it fell asleep goes out again now.
                        if let Some(in_flight) = &mut self.in_flight {
                            in_flight.retries = 0;
                            in_flight.retry_at = now;
                        }
                        self.phase = Phase::Awake { duration };
                        self.resend_due(out, now);
                    }
                    Some(id) => {
                        tracing::debug!(client_id = %id, "PINGREQ naming another client; ignored");
                    }
                    None => self.send(&Message::PingResp, out),
                }
                Flow::Continue
            }
            Phase::Connected => {
                self.send(&Message::PingResp, out);
                Flow::Continue
            }
            _ => {
                tracing::debug!("PINGREQ from a peer that is not connected");
                Flow::Close
            }
        }
    }

    fn handle_disconnect(
        &mut self,
        duration: Option<u16>,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        match (duration, &self.phase) {
            (Some(seconds), Phase::Connected | Phase::Asleep { .. } | Phase::Awake { .. })
                if seconds > 0 =>
            {
                let duration = Duration::from_secs(u64::from(seconds));
                tracing::info!(seconds, "client asleep");
                if let Some(client) = &self.client {
                    // Announced once per sleep: a sleeping client's DISCONNECT only
                    // changes its duration, and its PINGREQ wake-ups do not count.
                    client.fall_asleep(u32::from(seconds), now);
                }
                self.phase = Phase::Asleep { duration };
                self.send(&Message::Disconnect { duration: None }, out);
                Flow::Continue
            }
            _ => {
                tracing::info!("client disconnected");
                self.will_disposition = WillDisposition::Discard;
                self.send(&Message::Disconnect { duration: None }, out);
                Flow::Close
            }
        }
    }

    // ---- topics -------------------------------------------------------------------------

    /// What the client presented as the core's session layer takes it: MQTT-SN carries no
    /// credentials, so the identity is its client id, overridden as configured.
    fn presented(&self, client_id: Arc<str>) -> Presented {
        let mut presented = Presented {
            protocol: MQTTSN_NAMESPACE,
            listener: self.settings.listener.clone(),
            client_id,
            username: None,
            password: None,
            peer: self.peer,
            mountpoint: Arc::from(&*self.settings.mountpoint),
            mountpoint_values: Vec::new(),
        };
        presented.apply_override(&self.settings.clientinfo_override);
        if let Some(identity) = &self.transport_identity {
            // What the transport proved, whatever an override would make of the client.
            presented.username = Some(identity.to_string());
        }
        presented
    }

    /// The channel of a client whose transport authenticated it as `identity` (a DTLS key
    /// identity): its user name, and the one client id it may connect under.
    /// `None` leaves it as a plain transport's.
    pub fn with_transport_identity(mut self, identity: Option<Arc<str>>) -> MqttSnChannel {
        self.transport_identity = identity;
        self
    }

    /// Runs `f` on the session's topic registry: the one in memory, else the one kept with
    /// the session (a restart brought it back from the store), else a new one. Every change
    /// is kept with the session, so a persistent session's ids survive a restart.
    fn with_registry<R>(&self, f: impl FnOnce(&mut TopicRegistry) -> R) -> Option<R> {
        let mut state = self.client.as_ref()?.session().state.lock();
        if state.extension.get_mut::<TopicRegistry>().is_none() {
            let registry = self.restore_registry(state.adapter_state());
            state.extension.set(registry);
        }
        let registry = state.extension.get_mut::<TopicRegistry>()?;
        let result = f(registry);
        let record = registry.take_changed().then(|| registry.encode());
        if let Some(record) = record {
            state.keep_adapter_state(record);
        }
        Some(result)
    }

    fn restore_registry(&self, kept: Option<&Bytes>) -> TopicRegistry {
        let limit = self.settings.max_registered_topics;
        let Some(record) = kept else {
            return TopicRegistry::new(limit);
        };
        match TopicRegistry::decode(record, limit) {
            Ok(registry) => {
                tracing::debug!(topics = registry.len(), "topic ids restored");
                registry
            }
            Err(error) => {
                // The client learns of each lost id from PUBACK 0x02 and registers again.
                tracing::warn!(%error, "stored topic ids unreadable; starting without them");
                TopicRegistry::new(limit)
            }
        }
    }

    /// The topic name a client's PUBLISH names. Normal ids are looked up in the predefined
    /// table first, as clients that send predefined ids with type 0 expect.
    fn uplink_topic(&self, kind: TopicIdType, topic_id: u16) -> Result<ByteString, ReturnCode> {
        match kind {
            TopicIdType::Predefined => self
                .settings
                .predefined
                .name(topic_id)
                .cloned()
                .ok_or(ReturnCode::INVALID_TOPIC_ID),
            TopicIdType::Short => match short_topic_name(topic_id) {
                Some(name) if !name.contains(['+', '#']) => Ok(name),
                _ => Err(ReturnCode::NOT_SUPPORTED),
            },
            TopicIdType::Normal => self
                .with_registry(|registry| registry.name(topic_id).cloned())
                .flatten()
                .or_else(|| self.settings.predefined.name(topic_id).cloned())
                .ok_or(ReturnCode::INVALID_TOPIC_ID),
            TopicIdType::Reserved => Err(ReturnCode::NOT_SUPPORTED),
        }
    }

    fn handle_register(
        &mut self,
        msg_id: u16,
        topic_name: ByteString,
        out: &mut Vec<Bytes>,
    ) -> Flow {
        let (topic_id, return_code) = if topic_name.is_empty() || topic_name.contains(['+', '#']) {
            (0, ReturnCode::NOT_SUPPORTED)
        } else if let Some(id) = self.settings.predefined.id(&topic_name) {
            (id, ReturnCode::ACCEPTED)
        } else {
            match self
                .with_registry(|registry| registry.register(&topic_name))
                .flatten()
            {
                Some(id) => (id, ReturnCode::ACCEPTED),
                None => {
                    tracing::info!(topic = %topic_name, "topic registry full");
                    (0, ReturnCode::NOT_SUPPORTED)
                }
            }
        };
        self.send(
            &Message::RegAck {
                topic_id,
                msg_id,
                return_code,
            },
            out,
        );
        Flow::Continue
    }

    fn handle_regack(
        &mut self,
        topic_id: u16,
        msg_id: u16,
        return_code: ReturnCode,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        let matches = matches!(
            &self.in_flight,
            Some(InFlight { pending: Pending::Register { msg_id: id, .. }, .. }) if *id == msg_id
        );
        if !matches {
            tracing::debug!(msg_id, "REGACK for no pending REGISTER");
            return Flow::Continue;
        }
        if return_code == ReturnCode::CONGESTION {
            // Spec 6.13: wait, then try again; the retry timer does it.
            return Flow::Continue;
        }
        let Some(InFlight {
            pending:
                Pending::Register {
                    topic_id: offered,
                    topic,
                    held,
                    ..
                },
            ..
        }) = self.in_flight.take()
        else {
            return Flow::Continue;
        };
        if return_code != ReturnCode::ACCEPTED {
            tracing::info!(topic = %topic, code = return_code.0, "client refused a topic id; message dropped");
            return Flow::Continue;
        }
        let id = if topic_id != 0 { topic_id } else { offered };
        self.with_registry(|registry| registry.insert(id, topic));
        if let Some(held) = held {
            self.send_delivery(held, out, now);
        }
        Flow::Continue
    }

    // ---- client to gateway publish ---------------------------------------------------------

    fn handle_publish(
        &mut self,
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        data: Bytes,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        let puback = |return_code| Message::PubAck {
            topic_id,
            msg_id,
            return_code,
        };
        let topic = match self.uplink_topic(flags.topic_id_type, topic_id) {
            Ok(topic) => topic,
            Err(return_code) => {
                tracing::info!(
                    topic_id,
                    code = return_code.0,
                    "PUBLISH to an unknown topic id"
                );
                self.acknowledge(puback(return_code), None, out);
                return Flow::Continue;
            }
        };
        let Some(client) = &self.client else {
            return Flow::Close;
        };
        // QoS -1 from a connected client counts as QoS 0.
        let qos = to_core_qos(flags.qos);
        // A receiver this client publishes to is behind, or the client went over its
        // publish rates: it is told to try again later (spec 5.3.10), except for a QoS 2
        // message it already gave us, which is acknowledged again below.
        if client.is_held_back(now)
            && !(qos == QoS::ExactlyOnce
                && client.session().state.lock().is_awaiting_release(msg_id))
        {
            // CONGESTION carries no time: the client retries after its T_RETRY.
            let _ = client.refuse_for_congestion(now);
            self.acknowledge(puback(ReturnCode::CONGESTION), None, out);
            return Flow::Continue;
        }
        let permit = match client.permit(&topic, qos, flags.retain) {
            Ok(permit) => permit,
            Err(refused) => {
                // A full store is logged by the session layer, once per connection.
                if refused != PublishRefused::StoreFull {
                    tracing::info!(%topic, %refused, "PUBLISH refused");
                }
                self.acknowledge(puback(refusal_code(refused)), None, out);
                return Flow::Continue;
            }
        };
        let session = client.session().clone();
        match qos {
            QoS::AtMostOnce => {
                let _ = client.publish_permitted(permit, data, Default::default(), now);
            }
            QoS::AtLeastOnce => {
                let dispatched = client.publish_permitted(permit, data, Default::default(), now);
                self.acknowledge(puback(ReturnCode::ACCEPTED), dispatched.ticket, out);
            }
            QoS::ExactlyOnce => {
                let first = {
                    let mut state = session.state.lock();
                    if state.is_awaiting_release(msg_id) {
                        Some((false, None))
                    } else {
                        state.expire_awaiting_release(
                            now,
                            self.broker.config.await_rel_timeout.get(),
                        );
                        if state.awaiting_release_count() >= self.broker.limits().max_awaiting_rel {
                            None
                        } else {
                            Some((true, state.await_release(msg_id, now)))
                        }
                    }
                };
                match first {
                    None => {
                        tracing::info!("too many QoS 2 messages awaiting PUBREL");
                        self.acknowledge(puback(ReturnCode::CONGESTION), None, out);
                        return Flow::Continue;
                    }
                    // A PUBLISH sent again is acknowledged again but routed once.
                    Some((first, awaiting_ticket)) => {
                        let routed_ticket = if first {
                            client
                                .publish_permitted(permit, data, Default::default(), now)
                                .ticket
                        } else {
                            None
                        };
                        let ticket = routed_ticket.max(awaiting_ticket);
                        self.acknowledge(Message::PubRec { msg_id }, ticket, out);
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Answers a PUBLISH once what it changed is durable (`ticket`), and never before an
    /// earlier answer that still waits: a client must not learn its message is safe before
    /// a crash could no longer lose it.
    fn acknowledge(&mut self, reply: Message, ticket: Option<Ticket>, out: &mut Vec<Bytes>) {
        let control = &self.control;
        if let Some(reply) =
            self.held_acks
                .hold(reply, ticket, self.broker.store().as_ref(), || {
                    control.wakeup()
                })
        {
            self.send(&reply, out);
        }
    }

    fn release_held_acks(&mut self, out: &mut Vec<Bytes>) {
        while let Some(reply) = self.held_acks.pop_due(self.broker.store().as_ref()) {
            self.send(&reply, out);
        }
    }

    /// Spec 6.8: a client that never connected publishes to a predefined or short topic. It
    /// takes the one client-session path like any other: authenticated as
    /// [`QOS_MINUS_ONE_CLIENT_ID`], through a session that ends with this datagram.
    fn handle_qos_minus_one(&mut self, flags: Flags, topic_id: u16, data: Bytes, now: Instant) {
        if !self.settings.enable_qos3 {
            tracing::info!("QoS -1 PUBLISH refused: enable_qos3 is false");
            return;
        }
        let topic = match flags.topic_id_type {
            TopicIdType::Predefined => self.settings.predefined.name(topic_id).cloned(),
            TopicIdType::Short => short_topic_name(topic_id).filter(|n| !n.contains(['+', '#'])),
            _ => None,
        };
        let Some(topic) = topic else {
            tracing::info!(
                topic_id,
                "QoS -1 PUBLISH to a topic that is neither predefined nor short; dropped"
            );
            return;
        };
        let opened = self
            .broker
            .authenticate(self.presented(Arc::from(QOS_MINUS_ONE_CLIENT_ID)))
            .and_then(|who| {
                self.broker.open_session(
                    who,
                    OpenSession {
                        clean_start: true,
                        expiry_interval: 0,
                        will: None,
                        control: self.control.clone(),
                        // A session that ends with its datagram has no rate to keep:
                        // nothing would count across QoS -1 messages.
                        rates: PublishRates::UNLIMITED,
                        proto: MQTTSN_PROTO,
                        keepalive: 0,
                        // One message, not a client coming and going.
                        announce: false,
                    },
                    now,
                )
            });
        let client = match opened {
            Ok(client) => client,
            Err(refused) => {
                tracing::info!(%refused, "QoS -1 PUBLISH refused");
                return;
            }
        };
        if client.is_held_back(now) {
            // Nobody can be told to try again: dropped, and counted.
            let _ = client.refuse_for_congestion(now);
        } else if let Err(refused) = client.publish(
            &topic,
            QoS::AtMostOnce,
            flags.retain,
            data,
            Default::default(),
            now,
        ) {
            tracing::info!(%topic, %refused, "QoS -1 PUBLISH refused");
        }
        client.close(WillDisposition::Discard, now);
    }

    // ---- subscriptions --------------------------------------------------------------------

    /// The filter a SUBSCRIBE or UNSUBSCRIBE names and the topic id SUBACK reports.
    fn subscription_topic(
        &self,
        flags: Flags,
        topic: TopicRef,
        register: bool,
    ) -> Result<(ByteString, u16), (u16, ReturnCode)> {
        match (flags.topic_id_type, topic) {
            (TopicIdType::Normal, TopicRef::Name(name)) => {
                if name.is_empty() {
                    return Err((0, ReturnCode::NOT_SUPPORTED));
                }
                if name.contains(['+', '#']) {
                    // A wildcard has no id; each matching topic is registered before its
                    // first PUBLISH (spec 6.10).
                    return Ok((name, 0));
                }
                if let Some(id) = self.settings.predefined.id(&name) {
                    return Ok((name, id));
                }
                if !register {
                    return Ok((name, 0));
                }
                match self
                    .with_registry(|registry| registry.register(&name))
                    .flatten()
                {
                    Some(id) => Ok((name, id)),
                    None => Err((0, ReturnCode::NOT_SUPPORTED)),
                }
            }
            (TopicIdType::Predefined, TopicRef::Id(id)) => {
                match self.settings.predefined.name(id) {
                    Some(name) => Ok((name.clone(), id)),
                    None => Err((id, ReturnCode::INVALID_TOPIC_ID)),
                }
            }
            // SUBACK's topic id is not relevant for a short name (spec 5.4.16): 0, as
            // clients written against other gateways expect.
            (TopicIdType::Short, TopicRef::Id(id)) => match short_topic_name(id) {
                Some(name) => Ok((name, 0)),
                None => Err((id, ReturnCode::NOT_SUPPORTED)),
            },
            _ => Err((0, ReturnCode::NOT_SUPPORTED)),
        }
    }

    fn handle_subscribe(
        &mut self,
        flags: Flags,
        msg_id: u16,
        topic: TopicRef,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        if self.client.is_none() {
            return Flow::Close;
        }
        let suback = |qos: QoS, topic_id, return_code| Message::SubAck {
            flags: Flags {
                qos: from_core_qos(qos),
                ..Flags::default()
            },
            topic_id,
            msg_id,
            return_code,
        };
        let requested = to_core_qos(flags.qos);
        let (name, topic_id) = match self.subscription_topic(flags, topic, true) {
            Ok(found) => found,
            Err((topic_id, return_code)) => {
                self.send(&suback(QoS::AtMostOnce, topic_id, return_code), out);
                return Flow::Continue;
            }
        };
        let filter = name;
        let options = SubscriptionOptions {
            qos: requested,
            ..SubscriptionOptions::default()
        };
        let Some(client) = &self.client else {
            return Flow::Close;
        };
        let reply = match client.subscribe(&filter, options, None, now) {
            Ok(granted) => suback(granted.qos, topic_id, ReturnCode::ACCEPTED),
            Err(reason) => {
                tracing::info!(%filter, reason = reason.0, "subscription refused");
                let code = if reason == ReasonCode::QUOTA_EXCEEDED {
                    ReturnCode::CONGESTION
                } else {
                    ReturnCode::NOT_SUPPORTED
                };
                suback(QoS::AtMostOnce, topic_id, code)
            }
        };
        self.send(&reply, out);
        Flow::Continue
    }

    fn handle_unsubscribe(
        &mut self,
        flags: Flags,
        msg_id: u16,
        topic: TopicRef,
        out: &mut Vec<Bytes>,
    ) -> Flow {
        if let (Ok((name, _)), Some(client)) = (
            self.subscription_topic(flags, topic, false),
            self.client.as_ref(),
        ) {
            client.unsubscribe(&name);
        }
        // Always answered, even when nothing matched.
        self.send(&Message::UnsubAck { msg_id }, out);
        Flow::Continue
    }

    // ---- gateway to client ---------------------------------------------------------------

    fn pending_outgoing(&self, msg_id: u16) -> bool {
        matches!(
            &self.in_flight,
            Some(InFlight { pending: Pending::Outgoing { msg_id: id, .. }, .. }) if *id == msg_id
        )
    }

    fn handle_puback(&mut self, topic_id: u16, msg_id: u16, return_code: ReturnCode) -> Flow {
        if !self.pending_outgoing(msg_id) {
            return Flow::Continue;
        }
        if return_code == ReturnCode::CONGESTION {
            // The client asks us to wait: the retry timer sends it again.
            return Flow::Continue;
        }
        self.in_flight = None;
        let Some(session) = self.client.as_ref().map(|client| client.session().clone()) else {
            return Flow::Continue;
        };
        if return_code == ReturnCode::ACCEPTED {
            session.state.lock().puback(msg_id);
            return Flow::Continue;
        }
        let refused = session.state.lock().withdraw_outgoing(msg_id);
        if return_code == ReturnCode::INVALID_TOPIC_ID {
            // The client no longer knows the id (it restarted, say): the message goes first
            // again, and sending it registers its topic anew, so nothing is lost.
            self.with_registry(|registry| registry.forget(topic_id));
            if let Some(refused) = refused {
                session.state.lock().unpop_queued(refused.delivery);
            }
        } else if refused.is_some() {
            tracing::info!(
                msg_id,
                ?return_code,
                "delivery refused by the client; dropped"
            );
        }
        Flow::Continue
    }

    fn handle_pubrec(&mut self, msg_id: u16, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if !self.pending_outgoing(msg_id) {
            return Flow::Continue;
        }
        if let Some(client) = &self.client {
            client
                .session()
                .state
                .lock()
                .pubrec(msg_id, ReasonCode::SUCCESS);
        }
        self.send(&Message::PubRel { msg_id }, out);
        if let Some(in_flight) = &mut self.in_flight {
            in_flight.retries = 0;
            in_flight.retry_at = now + self.settings.retry_interval;
        }
        Flow::Continue
    }

    /// After every input: send what may go out now, and finish a wake-up cycle.
    fn after_step(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        self.release_held_acks(out);
        match self.phase {
            Phase::Connected => self.fill(out, now),
            Phase::Awake { duration } => {
                self.fill(out, now);
                let queued = self
                    .client
                    .as_ref()
                    .is_some_and(|client| client.session().state.lock().has_queued());
                // Spec 6.14 (and EMQX #4434): PINGRESP only once everything buffered is
                // delivered and acknowledged, then back to sleep.
                if self.in_flight.is_none() && !queued {
                    self.send(&Message::PingResp, out);
                    self.phase = Phase::Asleep { duration };
                    self.last_received = now;
                }
            }
            _ => {}
        }
    }

    /// Sends queued deliveries while nothing is in flight: one QoS 1/2 message or REGISTER
    /// at a time (spec 6.13), QoS 0 as long as their topics are known.
    fn fill(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        let Some(session) = self.client.as_ref().map(|client| client.session().clone()) else {
            return;
        };
        while self.in_flight.is_none() {
            let Some(topic) = self.resume_registers.pop() else {
                break;
            };
            self.register(topic, None, out, now);
        }
        if self.in_flight.is_none() {
            // An unacknowledged message of a resumed session goes first, again.
            let left = session.state.lock().outgoing().next().cloned();
            if let Some(outgoing) = left {
                self.write_outgoing(&outgoing, true, out);
                self.in_flight = Some(InFlight {
                    pending: Pending::Outgoing {
                        msg_id: outgoing.packet_id,
                    },
                    retry_at: now + self.settings.retry_interval,
                    retries: 0,
                });
            }
        }
        while self.in_flight.is_none() {
            let Some(delivery) = session.state.lock().pop_queued(now) else {
                break;
            };
            self.send_delivery(delivery, out, now);
        }
    }

    /// The topic id type and id a delivery goes out with, or `None` if it needs REGISTER.
    fn downlink_topic(&self, topic: &str) -> Option<(TopicIdType, u16)> {
        if let Some(id) = self.settings.predefined.id(topic) {
            return Some((TopicIdType::Predefined, id));
        }
        if let Some(id) = self.with_registry(|registry| registry.id(topic)).flatten() {
            return Some((TopicIdType::Normal, id));
        }
        short_topic_id(topic).map(|id| (TopicIdType::Short, id))
    }

    fn unmount(&self, topic: &ByteString) -> ByteString {
        match &self.client {
            Some(client) => client.client().unmount(topic),
            None => topic.clone(),
        }
    }

    /// Sends REGISTER for `topic`, under the id it already has or a free one, holding the
    /// delivery that needs it, if any, until REGACK.
    fn register(
        &mut self,
        topic: ByteString,
        held: Option<Delivery>,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) {
        let Some(session) = self.client.as_ref().map(|client| client.session().clone()) else {
            return;
        };
        let known = self.with_registry(|registry| registry.id(&topic)).flatten();
        let Some(topic_id) = known.or_else(|| self.with_registry(TopicRegistry::free_id).flatten())
        else {
            tracing::warn!(%topic, "topic registry full; delivery dropped");
            return;
        };
        let msg_id = session.state.lock().allocate_packet_id();
        self.send(
            &Message::Register {
                topic_id,
                msg_id,
                topic_name: topic.clone(),
            },
            out,
        );
        self.in_flight = Some(InFlight {
            pending: Pending::Register {
                msg_id,
                topic_id,
                topic,
                held,
            },
            retry_at: now + self.settings.retry_interval,
            retries: 0,
        });
    }

    /// Sends one delivery, or a REGISTER that holds it until REGACK.
    fn send_delivery(&mut self, delivery: Delivery, out: &mut Vec<Bytes>, now: Instant) {
        let Some(session) = self.client.as_ref().map(|client| client.session().clone()) else {
            return;
        };
        if delivery.message.payload.len() > MAX_PUBLISH_DATA {
            // No MQTT-SN frame can carry it; resending would only lose the client.
            tracing::warn!(
                len = delivery.message.payload.len(),
                topic = %delivery.message.topic,
                "delivery too large for an MQTT-SN PUBLISH; dropped"
            );
            return;
        }
        let topic = self.unmount(&delivery.message.topic);
        if self.downlink_topic(&topic).is_none() {
            self.register(topic, Some(delivery), out, now);
            return;
        }
        if delivery.qos == QoS::AtMostOnce {
            self.write_publish(&delivery, 0, false, out);
            return;
        }
        let outgoing = {
            let mut state = session.state.lock();
            let packet_id = state.allocate_packet_id();
            let outgoing = Outgoing {
                packet_id,
                state: if delivery.qos == QoS::AtLeastOnce {
                    OutgoingState::AwaitPubAck
                } else {
                    OutgoingState::AwaitPubRec
                },
                delivery,
            };
            state.push_outgoing(outgoing.clone());
            outgoing
        };
        self.write_outgoing(&outgoing, false, out);
        self.in_flight = Some(InFlight {
            pending: Pending::Outgoing {
                msg_id: outgoing.packet_id,
            },
            retry_at: now + self.settings.retry_interval,
            retries: 0,
        });
    }

    /// PUBLISH or PUBREL for an outgoing QoS 1/2 message.
    fn write_outgoing(&mut self, outgoing: &Outgoing, dup: bool, out: &mut Vec<Bytes>) {
        match outgoing.state {
            OutgoingState::AwaitPubComp => self.send(
                &Message::PubRel {
                    msg_id: outgoing.packet_id,
                },
                out,
            ),
            _ => self.write_publish(&outgoing.delivery, outgoing.packet_id, dup, out),
        }
    }

    fn write_publish(&mut self, delivery: &Delivery, msg_id: u16, dup: bool, out: &mut Vec<Bytes>) {
        let topic = self.unmount(&delivery.message.topic);
        // A topic the client has not learnt (a resumed message whose id was forgotten) goes
        // out under the type it would get now; an unknown normal id reads as 0.
        let (topic_id_type, topic_id) = self
            .downlink_topic(&topic)
            .unwrap_or((TopicIdType::Normal, 0));
        self.send(
            &Message::Publish {
                flags: Flags {
                    dup,
                    qos: from_core_qos(delivery.qos),
                    retain: delivery.retain,
                    topic_id_type,
                    ..Flags::default()
                },
                topic_id,
                msg_id,
                data: delivery.message.payload.clone(),
            },
            out,
        );
        Stats::add(&self.broker.stats.messages_sent, 1);
    }

    /// Sends again what is in flight, with DUP set (spec 6.13).
    fn resend_in_flight(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        match &in_flight.pending {
            Pending::Register {
                msg_id,
                topic_id,
                topic,
                ..
            } => self.send(
                &Message::Register {
                    topic_id: *topic_id,
                    msg_id: *msg_id,
                    topic_name: topic.clone(),
                },
                out,
            ),
            Pending::Outgoing { msg_id, .. } => {
                let outgoing = self.client.as_ref().and_then(|client| {
                    client
                        .session()
                        .state
                        .lock()
                        .outgoing()
                        .find(|o| o.packet_id == *msg_id)
                        .cloned()
                });
                match outgoing {
                    Some(outgoing) => self.write_outgoing(&outgoing, true, out),
                    // Acknowledged meanwhile on another path: nothing left to resend.
                    None => return,
                }
            }
        }
        tracing::debug!(
            retries = in_flight.retries + 1,
            "resent unacknowledged message"
        );
        self.in_flight = Some(InFlight {
            retries: in_flight.retries + 1,
            retry_at: now + self.settings.retry_interval,
            pending: in_flight.pending,
        });
    }

    /// On waking: what was in flight goes out again at once.
    fn resend_due(&mut self, out: &mut Vec<Bytes>, now: Instant) {
        if self.in_flight.is_some() {
            self.resend_in_flight(out, now);
            if let Some(in_flight) = &mut self.in_flight {
                in_flight.retries = 0;
            }
        }
    }
}

/// How a PUBACK or WILLTOPICRESP refuses: MQTT-SN has no "not authorized", so that is 0x03
/// "not supported"; a full store is congestion, which the client retries later (spec 5.3.10).
fn refusal_code(refused: PublishRefused) -> ReturnCode {
    match refused {
        PublishRefused::StoreFull => ReturnCode::CONGESTION,
        PublishRefused::Invalid(..) | PublishRefused::SysTopic | PublishRefused::NotAuthorized => {
            ReturnCode::NOT_SUPPORTED
        }
    }
}

fn to_core_qos(qos: Qos) -> QoS {
    match qos {
        Qos::One => QoS::AtLeastOnce,
        Qos::Two => QoS::ExactlyOnce,
        Qos::Zero | Qos::MinusOne => QoS::AtMostOnce,
    }
}

fn from_core_qos(qos: QoS) -> Qos {
    match qos {
        QoS::AtMostOnce => Qos::Zero,
        QoS::AtLeastOnce => Qos::One,
        QoS::ExactlyOnce => Qos::Two,
    }
}
