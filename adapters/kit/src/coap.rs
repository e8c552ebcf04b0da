//! The CoAP message layer (RFC 7252 section 4) for every adapter that speaks CoAP over UDP:
//! message types, duplicate detection, piggybacked responses, retransmission of our
//! confirmable messages and the strictness rules for malformed input. Messages are parsed
//! and built with coap-lite; what coap-lite does not do (deduplication, retransmission,
//! the RFC's format-error rules) lives here.
//!
//! Sans-io like the channels that use it: one `Exchange` per peer, fed with datagrams and
//! `now`, appending datagrams to send; it reads no clock and draws its randomness from a
//! seed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

use crate::coap_block::uint_option;

/// The CoAP version this layer speaks; other versions are ignored silently (RFC 7252 3).
const VERSION: u8 = 1;
/// The largest token (RFC 7252 3).
const MAX_TOKEN: usize = 8;

/// Transmission parameters (RFC 7252 section 4.8), all configurable.
#[derive(Debug, Clone)]
pub struct TransmissionParams {
    pub ack_timeout: Duration,
    /// The first timeout is drawn from `ack_timeout ..= ack_timeout * ack_random_factor`.
    pub ack_random_factor: f64,
    pub max_retransmit: u32,
    /// How long a confirmable message id is remembered for duplicate detection.
    pub exchange_lifetime: Duration,
    /// The same for non-confirmable messages.
    pub non_lifetime: Duration,
    /// The largest datagram accepted, checked before decoding.
    pub max_message_size: usize,
    /// Message ids remembered per peer; the oldest is forgotten first beyond it.
    pub max_remembered: usize,
    /// Critical option numbers the application understands; a request carrying another
    /// critical option is answered 4.02 Bad Option (RFC 7252 5.4.1).
    pub understood_critical: &'static [u16],
    /// Shared by every exchange made with these parameters: a listener's, summed.
    pub counters: Arc<ExchangeCounters>,
}

/// What the message layers of one listener's peers did, published as its figures
/// (`$SYS/broker/listeners/{name}/coap/retransmissions`).
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    /// Confirmable messages of ours sent again for want of an acknowledgement.
    pub retransmissions: AtomicU64,
    /// Confirmable messages of ours given up after MAX_RETRANSMIT retransmissions.
    pub given_up: AtomicU64,
}

impl mqtt_core::broker::ListenerFigures for ExchangeCounters {
    fn figures(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            (
                "coap/retransmissions",
                self.retransmissions.load(Ordering::Relaxed),
            ),
            ("coap/given_up", self.given_up.load(Ordering::Relaxed)),
        ]);
    }
}

impl TransmissionParams {
    /// MAX_TRANSMIT_WAIT (RFC 7252 4.8.2): the longest a confirmable message may wait for
    /// its acknowledgement through every retransmission, and so how long a peer is given to
    /// send what it promised (a separate response, a Pong).
    pub fn max_transmit_wait(&self) -> Duration {
        let attempts = 2u32
            .saturating_pow(self.max_retransmit.saturating_add(1).min(31))
            .saturating_sub(1);
        let first = Duration::try_from_secs_f64(
            self.ack_timeout.as_secs_f64() * self.ack_random_factor.max(1.0),
        )
        .unwrap_or(Duration::MAX);
        first.saturating_mul(attempts)
    }

    /// RFC 7252's defaults, with EXCHANGE_LIFETIME 247 s and NON_LIFETIME 145 s.
    pub fn rfc7252(understood_critical: &'static [u16]) -> TransmissionParams {
        TransmissionParams {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            exchange_lifetime: Duration::from_secs(247),
            non_lifetime: Duration::from_secs(145),
            max_message_size: 1152,
            max_remembered: 256,
            understood_critical,
            counters: Arc::default(),
        }
    }
}

/// Why an incoming datagram was rejected, by the rule it breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    #[error("shorter than the 4-byte header (RFC 7252 3)")]
    TooShort,
    #[error("version {0} (RFC 7252 3: unknown versions are ignored)")]
    UnknownVersion(u8),
    #[error("{len} bytes, above the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("token length {0} (RFC 7252 3: 9 to 15 are a format error)")]
    TokenLength(u8),
    #[error("an Empty message with bytes after the message id (RFC 7252 4.1)")]
    EmptyWithContent,
    #[error("a payload marker followed by no payload (RFC 7252 3)")]
    EmptyPayload,
    #[error("option encoding: {0} (RFC 7252 3.1)")]
    Options(String),
    #[error("reserved code class {0} (RFC 7252 12.1)")]
    ReservedClass(u8),
    #[error("a request or response carried in an {0:?} (RFC 7252 4.2, 4.3)")]
    WrongType(MessageType),
}

/// A request the application must answer with [`Exchange::respond`].
#[derive(Debug, Clone)]
pub struct Request {
    pub packet: Packet,
    pub method: RequestType,
}

impl Request {
    pub fn confirmable(&self) -> bool {
        self.packet.header.get_type() == MessageType::Confirmable
    }
}

/// What an incoming datagram means to the application.
#[derive(Debug)]
pub enum Inbound<T> {
    /// A new request.
    Request(Request),
    /// Our confirmable message `tag` was acknowledged (with a piggybacked response, if any).
    Acknowledged { tag: T, response: Option<Packet> },
    /// The peer answered our message `tag` (confirmable or not) with Reset.
    Reset { tag: Option<T> },
    /// A separate response, or a response to a non-confirmable request; the application
    /// matches it by token. A confirmable one is already acknowledged.
    Response(Packet),
    /// Fully handled here (a duplicate answered again, a ping, a rejected or ignored message).
    Handled,
}

#[derive(Debug)]
struct Pending<T> {
    datagram: Bytes,
    tag: T,
    retransmits: u32,
    timeout: Duration,
    due: Instant,
}

#[derive(Debug)]
struct Remembered {
    expires: Instant,
    /// The answer sent to a confirmable message, sent again for each duplicate.
    answer: Option<Bytes>,
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{len} bytes, above the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{0}")]
    Invalid(String),
}

/// The message layer of one peer.
#[derive(Debug)]
pub struct Exchange<T> {
    params: TransmissionParams,
    rng: u64,
    next_message_id: u16,
    pending: HashMap<u16, Pending<T>>,
    /// Reset is matched to non-confirmable messages too (RFC 7252 4.3): the last few.
    recent_non: VecDeque<(u16, T)>,
    remembered: HashMap<u16, Remembered>,
    remembered_order: VecDeque<u16>,
}

/// Non-confirmable message ids kept to match a Reset to what it rejects.
const RECENT_NON: usize = 16;

impl<T: Clone> Exchange<T> {
    pub fn new(params: TransmissionParams, seed: u64) -> Exchange<T> {
        let mut exchange = Exchange {
            params,
            rng: seed | 1,
            next_message_id: 0,
            pending: HashMap::new(),
            recent_non: VecDeque::new(),
            remembered: HashMap::new(),
            remembered_order: VecDeque::new(),
        };
        // RFC 7252 4.4: the first message id should be random.
        exchange.next_message_id = exchange.random() as u16;
        exchange
    }

    pub fn params(&self) -> &TransmissionParams {
        &self.params
    }

    /// A pseudo-random number from the seed: jitter, ids, tokens.
    pub fn random(&mut self) -> u64 {
        next_random(&mut self.rng)
    }

    /// Confirmable messages of ours still waiting for an acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|pending| pending.due).min()
    }

    /// Reads one datagram. Answers that belong to the message layer (Reset, empty ACK,
    /// a repeated answer, 4.02, 4.05, 4.13) are appended to `out`.
    pub fn receive(&mut self, datagram: &[u8], now: Instant, out: &mut Vec<Bytes>) -> Inbound<T> {
        match self.classify(datagram, now, out) {
            Ok(inbound) => inbound,
            Err(rejected) => {
                tracing::warn!(%rejected, len = datagram.len(), "CoAP message rejected");
                // RFC 7252 4.2/4.3: a confirmable message with a format error is rejected
                // with Reset; anything else is ignored silently.
                if let Some(header) = RawHeader::parse(datagram) {
                    let resettable = !matches!(
                        rejected,
                        Rejected::UnknownVersion(_) | Rejected::TooLarge { .. }
                    );
                    if resettable && header.kind == MessageType::Confirmable {
                        out.push(reset(header.message_id));
                    }
                }
                Inbound::Handled
            }
        }
    }

    fn classify(
        &mut self,
        datagram: &[u8],
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<Inbound<T>, Rejected> {
        let header = RawHeader::parse(datagram).ok_or(Rejected::TooShort)?;
        if header.version != VERSION {
            return Err(Rejected::UnknownVersion(header.version));
        }
        if datagram.len() > self.params.max_message_size {
            // A request too large to read is still answered, from its header alone.
            if header.kind == MessageType::Confirmable && header.code >> 5 == 0 {
                if let Some(token) = header.token(datagram) {
                    let mut answer = Packet::new();
                    answer.header.set_type(MessageType::Acknowledgement);
                    answer.header.message_id = header.message_id;
                    answer.header.code =
                        MessageClass::Response(ResponseType::RequestEntityTooLarge);
                    answer.set_token(token.to_vec());
                    if let Ok(bytes) = answer.to_bytes_unlimited() {
                        out.push(Bytes::from(bytes));
                    }
                }
            }
            return Err(Rejected::TooLarge {
                len: datagram.len(),
                max: self.params.max_message_size,
            });
        }
        if header.code == 0 {
            return self.classify_empty(&header, datagram, out);
        }
        if usize::from(header.token_length) > MAX_TOKEN {
            return Err(Rejected::TokenLength(header.token_length));
        }
        check_payload_marker(datagram, 4 + usize::from(header.token_length))?;
        let class = header.code >> 5;
        if matches!(class, 1 | 6 | 7) {
            return Err(Rejected::ReservedClass(class));
        }
        let packet =
            Packet::from_bytes(datagram).map_err(|error| Rejected::Options(error.to_string()))?;
        if class == 0 {
            if matches!(
                header.kind,
                MessageType::Acknowledgement | MessageType::Reset
            ) {
                return Err(Rejected::WrongType(header.kind));
            }
            return Ok(self.classify_request(packet, &header, now, out));
        }
        match header.kind {
            MessageType::Acknowledgement => Ok(self.acknowledged(header.message_id, Some(packet))),
            MessageType::Reset => Err(Rejected::WrongType(MessageType::Reset)),
            MessageType::Confirmable => {
                if self.seen(header.message_id, true, now, out) {
                    return Ok(Inbound::Handled);
                }
                let ack = empty(MessageType::Acknowledgement, header.message_id);
                self.remember(header.message_id, true, Some(ack.clone()), now);
                out.push(ack);
                Ok(Inbound::Response(packet))
            }
            MessageType::NonConfirmable => {
                if self.seen(header.message_id, false, now, out) {
                    return Ok(Inbound::Handled);
                }
                self.remember(header.message_id, false, None, now);
                Ok(Inbound::Response(packet))
            }
        }
    }

    fn classify_empty(
        &mut self,
        header: &RawHeader,
        datagram: &[u8],
        out: &mut Vec<Bytes>,
    ) -> Result<Inbound<T>, Rejected> {
        if datagram.len() != 4 || header.token_length != 0 {
            return Err(Rejected::EmptyWithContent);
        }
        Ok(match header.kind {
            // A CoAP ping (RFC 7252 4.3): answered with Reset.
            MessageType::Confirmable => {
                out.push(reset(header.message_id));
                Inbound::Handled
            }
            MessageType::NonConfirmable => Inbound::Handled,
            MessageType::Acknowledgement => self.acknowledged(header.message_id, None),
            MessageType::Reset => {
                let tag = match self.pending.remove(&header.message_id) {
                    Some(pending) => Some(pending.tag),
                    None => self
                        .recent_non
                        .iter()
                        .position(|(id, _)| *id == header.message_id)
                        .and_then(|at| self.recent_non.remove(at))
                        .map(|(_, tag)| tag),
                };
                Inbound::Reset { tag }
            }
        })
    }

    fn acknowledged(&mut self, message_id: u16, response: Option<Packet>) -> Inbound<T> {
        match self.pending.remove(&message_id) {
            Some(pending) => Inbound::Acknowledged {
                tag: pending.tag,
                response,
            },
            // A late or repeated acknowledgement.
            None => Inbound::Handled,
        }
    }

    fn classify_request(
        &mut self,
        packet: Packet,
        header: &RawHeader,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Inbound<T> {
        let confirmable = header.kind == MessageType::Confirmable;
        if self.seen(header.message_id, confirmable, now, out) {
            tracing::debug!(message_id = header.message_id, "duplicate request");
            return Inbound::Handled;
        }
        match check_request(packet, self.params.understood_critical) {
            Ok(request) => Inbound::Request(request),
            Err((packet, code)) => {
                self.answer(&packet, code, now, out);
                Inbound::Handled
            }
        }
    }

    fn answer(&mut self, request: &Packet, code: ResponseType, now: Instant, out: &mut Vec<Bytes>) {
        let mut response = Packet::new();
        response.header.code = MessageClass::Response(code);
        let _ = self.respond(request, response, now, out);
    }

    /// Sends `response` to `request`: piggybacked on the acknowledgement of a confirmable
    /// request, as a non-confirmable message otherwise (RFC 7252 5.2). The answer is
    /// remembered, so a duplicate of the request gets it again.
    pub fn respond(
        &mut self,
        request: &Packet,
        mut response: Packet,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<(), EncodeError> {
        let confirmable = request.header.get_type() == MessageType::Confirmable;
        response.set_token(request.get_token().to_vec());
        if confirmable {
            response.header.set_type(MessageType::Acknowledgement);
            response.header.message_id = request.header.message_id;
        } else {
            response.header.set_type(MessageType::NonConfirmable);
            response.header.message_id = self.allocate_message_id();
        }
        let encoded = self.encode(&response);
        let remembered = encoded.as_ref().ok().filter(|_| confirmable).cloned();
        self.remember(request.header.message_id, confirmable, remembered, now);
        out.push(encoded?);
        Ok(())
    }

    /// Answers a confirmable `request` with a separate response (RFC 7252 5.2.2): an empty
    /// acknowledgement now, which a duplicate of the request gets again, then `response`
    /// as a confirmable message of its own with the request's token, retransmitted as
    /// [`Exchange::send_confirmable`] does and reported with `tag`. A non-confirmable
    /// request is answered as [`Exchange::respond`] does.
    pub fn respond_separately(
        &mut self,
        request: &Packet,
        mut response: Packet,
        tag: T,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<(), EncodeError> {
        if request.header.get_type() != MessageType::Confirmable {
            return self.respond(request, response, now, out);
        }
        self.defer(request, now, out);
        response.set_token(request.get_token().to_vec());
        self.send_confirmable(response, tag, now, out).map(|_| ())
    }

    /// Answers `request` with a confirmable message the client must acknowledge, whatever
    /// the request's type: after an empty acknowledgement for a confirmable request (a
    /// separate response, RFC 7252 5.2.2), at once for a non-confirmable one (5.2.3 lets a
    /// client get a confirmable response to it). Its acknowledgement, reported with `tag`,
    /// shows that the client receives at its address.
    pub fn respond_confirmably(
        &mut self,
        request: &Packet,
        mut response: Packet,
        tag: T,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<(), EncodeError> {
        self.defer(request, now, out);
        response.set_token(request.get_token().to_vec());
        self.send_confirmable(response, tag, now, out).map(|_| ())
    }

    /// Says that the answer to `request` comes later (RFC 7252 5.2.2): a confirmable
    /// request gets an empty acknowledgement now, which its duplicates get again, so its
    /// client stops retransmitting; a non-confirmable one is remembered, so its duplicates
    /// are ignored. Either way the request is not handed to the application again. The
    /// answer then goes with [`Exchange::respond_deferred`].
    pub fn defer(&mut self, request: &Packet, now: Instant, out: &mut Vec<Bytes>) {
        let message_id = request.header.message_id;
        if request.header.get_type() == MessageType::Confirmable {
            let ack = empty(MessageType::Acknowledgement, message_id);
            self.remember(message_id, true, Some(ack.clone()), now);
            out.push(ack);
        } else {
            self.remember(message_id, false, None, now);
        }
    }

    /// Sends the answer to a request [deferred](Exchange::defer), with its token: as a
    /// confirmable message (retransmitted and reported with `tag`) to a confirmable
    /// request, as a non-confirmable one otherwise.
    pub fn respond_deferred(
        &mut self,
        request: &Packet,
        mut response: Packet,
        tag: T,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<(), EncodeError> {
        response.set_token(request.get_token().to_vec());
        if request.header.get_type() == MessageType::Confirmable {
            self.send_confirmable(response, tag, now, out).map(|_| ())
        } else {
            self.send_non_confirmable(response, tag, out).map(|_| ())
        }
    }

    /// Sends a confirmable message and retransmits it until it is acknowledged, reset or
    /// given up. Returns its message id.
    pub fn send_confirmable(
        &mut self,
        mut packet: Packet,
        tag: T,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> Result<u16, EncodeError> {
        packet.header.set_type(MessageType::Confirmable);
        let message_id = self.allocate_message_id();
        packet.header.message_id = message_id;
        let datagram = self.encode(&packet)?;
        let jitter = 1.0 + (self.params.ack_random_factor - 1.0).max(0.0) * self.unit_random();
        let timeout = self.params.ack_timeout.mul_f64(jitter);
        self.pending.insert(
            message_id,
            Pending {
                datagram: datagram.clone(),
                tag,
                retransmits: 0,
                timeout,
                due: now + timeout,
            },
        );
        out.push(datagram);
        Ok(message_id)
    }

    /// Sends a non-confirmable message; a Reset to it is still reported with `tag`.
    pub fn send_non_confirmable(
        &mut self,
        mut packet: Packet,
        tag: T,
        out: &mut Vec<Bytes>,
    ) -> Result<u16, EncodeError> {
        packet.header.set_type(MessageType::NonConfirmable);
        let message_id = self.allocate_message_id();
        packet.header.message_id = message_id;
        out.push(self.encode(&packet)?);
        if self.recent_non.len() >= RECENT_NON {
            self.recent_non.pop_front();
        }
        self.recent_non.push_back((message_id, tag));
        Ok(message_id)
    }

    /// An empty confirmable message: the peer answers Reset if it is there (RFC 7252 4.3).
    pub fn ping(&mut self, tag: T, now: Instant, out: &mut Vec<Bytes>) -> Option<u16> {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::Empty;
        self.send_confirmable(packet, tag, now, out).ok()
    }

    /// Retransmits what is due, doubling its timeout (RFC 7252 4.2); returns the tags of
    /// messages given up after MAX_RETRANSMIT retransmissions.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Bytes>) -> Vec<T> {
        let mut given_up = Vec::new();
        let max = self.params.max_retransmit;
        let counters = &self.params.counters;
        self.pending.retain(|message_id, pending| {
            if pending.due > now {
                return true;
            }
            if pending.retransmits >= max {
                tracing::debug!(message_id, "confirmable message given up");
                counters.given_up.fetch_add(1, Ordering::Relaxed);
                given_up.push(pending.tag.clone());
                return false;
            }
            counters.retransmissions.fetch_add(1, Ordering::Relaxed);
            pending.retransmits += 1;
            pending.timeout *= 2;
            pending.due = now + pending.timeout;
            out.push(pending.datagram.clone());
            true
        });
        given_up
    }

    /// Forgets every message of ours in flight.
    pub fn cancel_all(&mut self) {
        self.pending.clear();
    }

    fn unit_random(&mut self) -> f64 {
        (self.random() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn allocate_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = id.wrapping_add(1);
        id
    }

    fn encode(&self, packet: &Packet) -> Result<Bytes, EncodeError> {
        let bytes = packet
            .to_bytes_unlimited()
            .map_err(|error| EncodeError::Invalid(error.to_string()))?;
        if bytes.len() > self.params.max_message_size {
            return Err(EncodeError::TooLarge {
                len: bytes.len(),
                max: self.params.max_message_size,
            });
        }
        Ok(Bytes::from(bytes))
    }

    /// Whether this message id was seen within its lifetime; a duplicate confirmable
    /// message gets the answer it got the first time.
    fn seen(
        &mut self,
        message_id: u16,
        confirmable: bool,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> bool {
        self.forget_expired(now);
        match self.remembered.get(&message_id) {
            Some(entry) if entry.expires > now => {
                if confirmable {
                    if let Some(answer) = &entry.answer {
                        out.push(answer.clone());
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn remember(
        &mut self,
        message_id: u16,
        confirmable: bool,
        answer: Option<Bytes>,
        now: Instant,
    ) {
        let lifetime = if confirmable {
            self.params.exchange_lifetime
        } else {
            self.params.non_lifetime
        };
        while self.remembered.len() >= self.params.max_remembered.max(1) {
            match self.remembered_order.pop_front() {
                Some(oldest) => {
                    self.remembered.remove(&oldest);
                }
                None => break,
            }
        }
        if self
            .remembered
            .insert(
                message_id,
                Remembered {
                    expires: now + lifetime,
                    answer,
                },
            )
            .is_none()
        {
            self.remembered_order.push_back(message_id);
        }
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some(oldest) = self.remembered_order.front().copied() {
            match self.remembered.get(&oldest) {
                Some(entry) if entry.expires > now => break,
                Some(_) => {
                    self.remembered.remove(&oldest);
                    self.remembered_order.pop_front();
                }
                None => {
                    self.remembered_order.pop_front();
                }
            }
        }
    }
}

/// A decoded request as the application may serve it, or the request with the answer the
/// message layer gives it: 4.05 for a method other than GET, POST, PUT and DELETE, 4.02 for
/// a critical option not in `understood_critical` or repeated where it may not be (RFC 7252
/// 5.4.1, 5.4.5). The same rules hold whatever carries the request (UDP, TCP, WebSocket).
pub fn check_request(
    packet: Packet,
    understood_critical: &[u16],
) -> Result<Request, (Packet, ResponseType)> {
    let method = match packet.header.code {
        MessageClass::Request(
            method
            @ (RequestType::Get | RequestType::Post | RequestType::Put | RequestType::Delete),
        ) => method,
        _ => return Err((packet, ResponseType::MethodNotAllowed)),
    };
    let unacceptable = packet.options().find_map(|(&number, values)| {
        let critical = number & 1 == 1;
        if !critical {
            return None;
        }
        if !understood_critical.contains(&number) {
            return Some(number);
        }
        (values.len() > 1 && !repeatable(number)).then_some(number)
    });
    if let Some(number) = unacceptable {
        tracing::info!(
            option = number,
            "request with a critical option not understood"
        );
        return Err((packet, ResponseType::BadOption));
    }
    Ok(Request { packet, method })
}

/// Tells a client refused for now when to try again (RFC 7252 5.9.3.4): Max-Age in whole
/// seconds, rounded up, so that it does not come back before the time; without it, Max-Age
/// would mean 60 s.
pub fn set_retry_after(response: &mut Packet, after: Duration) {
    let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    let seconds = u32::try_from(seconds).unwrap_or(u32::MAX);
    response.add_option(CoapOption::MaxAge, uint_option(seconds));
}

/// Decodes a message whose header its transport framed (RFC 8323: a length instead of the
/// type and message id): `code`, `token`, then `body`, the options and payload, under the
/// same format rules as a datagram's (token length, option encoding, a payload marker
/// followed by a payload). The packet's type and message id are meaningless.
pub fn decode_framed(code: u8, token: &[u8], body: &[u8]) -> Result<Packet, Rejected> {
    let token_length = u8::try_from(token.len()).unwrap_or(u8::MAX);
    if token.len() > MAX_TOKEN {
        return Err(Rejected::TokenLength(token_length));
    }
    let mut datagram = Vec::with_capacity(4 + token.len() + body.len());
    datagram.extend_from_slice(&[(VERSION << 6) | token_length, code, 0, 0]);
    datagram.extend_from_slice(token);
    datagram.extend_from_slice(body);
    check_payload_marker(&datagram, 4 + token.len())?;
    Packet::from_bytes(&datagram).map_err(|error| Rejected::Options(error.to_string()))
}

/// The parts of `packet` a framing transport sends (RFC 8323): its code, token, and its
/// options and payload encoded as in a datagram.
pub fn encode_framed(packet: &Packet) -> Result<(u8, Vec<u8>, Vec<u8>), EncodeError> {
    let datagram = packet
        .to_bytes_unlimited()
        .map_err(|error| EncodeError::Invalid(error.to_string()))?;
    let token = packet.get_token().to_vec();
    let code = datagram.get(1).copied().unwrap_or_default();
    let body = datagram.get(4 + token.len()..).unwrap_or_default().to_vec();
    Ok((code, token, body))
}

/// xorshift64* over `state`, which must not be zero: the message layer's jitter, ids and
/// tokens, from a seed, so a test on a virtual clock is exact.
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Options that may occur more than once (RFC 7252 5.10).
fn repeatable(number: u16) -> bool {
    matches!(number, 1 | 4 | 8 | 11 | 15 | 20)
}

fn empty(kind: MessageType, message_id: u16) -> Bytes {
    let type_bits: u8 = match kind {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    let [high, low] = message_id.to_be_bytes();
    Bytes::copy_from_slice(&[(VERSION << 6) | (type_bits << 4), 0, high, low])
}

fn reset(message_id: u16) -> Bytes {
    empty(MessageType::Reset, message_id)
}

/// The fixed header, read without decoding the rest.
#[derive(Debug)]
struct RawHeader {
    version: u8,
    kind: MessageType,
    token_length: u8,
    code: u8,
    message_id: u16,
}

impl RawHeader {
    fn parse(datagram: &[u8]) -> Option<RawHeader> {
        let [first, code, high, low, ..] = *datagram else {
            return None;
        };
        Some(RawHeader {
            version: first >> 6,
            kind: match (first >> 4) & 0b11 {
                0 => MessageType::Confirmable,
                1 => MessageType::NonConfirmable,
                2 => MessageType::Acknowledgement,
                _ => MessageType::Reset,
            },
            token_length: first & 0x0F,
            code,
            message_id: u16::from_be_bytes([high, low]),
        })
    }

    fn token<'a>(&self, datagram: &'a [u8]) -> Option<&'a [u8]> {
        let length = usize::from(self.token_length);
        if length > MAX_TOKEN {
            return None;
        }
        datagram.get(4..4 + length)
    }
}

/// Walks the options to find the payload marker: a marker with nothing after it is a
/// format error (RFC 7252 3), which coap-lite accepts as an empty payload.
fn check_payload_marker(datagram: &[u8], mut at: usize) -> Result<(), Rejected> {
    let malformed = |what: &str| Rejected::Options(what.to_owned());
    let extended = |nibble: u8, at: &mut usize| -> Result<usize, Rejected> {
        match nibble {
            0..=12 => Ok(usize::from(nibble)),
            13 => {
                let byte = datagram.get(*at).ok_or_else(|| malformed("truncated"))?;
                *at += 1;
                Ok(usize::from(*byte) + 13)
            }
            14 => {
                let bytes = datagram
                    .get(*at..*at + 2)
                    .ok_or_else(|| malformed("truncated"))?;
                *at += 2;
                let value = bytes
                    .iter()
                    .fold(0usize, |acc, byte| (acc << 8) | usize::from(*byte));
                Ok(value + 269)
            }
            _ => Err(malformed("reserved nibble 15")),
        }
    };
    while let Some(&byte) = datagram.get(at) {
        at += 1;
        if byte == 0xFF {
            return if at == datagram.len() {
                Err(Rejected::EmptyPayload)
            } else {
                Ok(())
            };
        }
        extended(byte >> 4, &mut at)?;
        let length = extended(byte & 0x0F, &mut at)?;
        at += length;
    }
    Ok(())
}
