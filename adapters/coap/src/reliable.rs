//! The message layer of CoAP over TCP and WebSocket (RFC 8323): the transport is reliable
//! and ordered, so there are no message types, acknowledgements, duplicates or
//! retransmissions; what remains are the signalling messages (section 5): Capabilities and
//! Settings (CSM) first from each side, Ping and Pong, Release and Abort.
//!
//! Sans-io: frames and `now` in, encoded frames out.

use std::time::{Duration, Instant};

use adapter_kit::coap::{
    check_request, decode_framed, encode_framed, next_random, EncodeError, MessageClass, Packet,
    Request,
};
use bytes::{Bytes, BytesMut};

use crate::framing::{encode, encoded_len, Frame, Framing};

/// Signalling codes (RFC 8323 11.1): class 7.
const CSM: u8 = 0xE1;
const PING: u8 = 0xE2;
const PONG: u8 = 0xE3;
const RELEASE: u8 = 0xE4;
const ABORT: u8 = 0xE5;

/// CSM options (RFC 8323 5.3): Max-Message-Size and Block-Wise-Transfer.
const MAX_MESSAGE_SIZE: u16 = 2;
const BLOCK_WISE_TRANSFER: u16 = 4;
/// Ping / Pong option: Custody (RFC 8323 5.4.1).
const CUSTODY: u16 = 2;
/// Abort option: Bad-CSM-Option (RFC 8323 5.6.1).
const BAD_CSM_OPTION: u16 = 2;

/// What a peer can receive until its CSM says otherwise (RFC 8323 5.3.1).
const DEFAULT_MAX_MESSAGE_SIZE: usize = 1152;

/// What one incoming message means to the channel.
#[derive(Debug)]
pub enum Inbound {
    /// A request to serve; its answer goes through [`ReliableLink::respond`].
    Request(Request),
    /// The answer to our Ping.
    Pong,
    /// The connection ends: the peer released or aborted it, or we aborted it (the Abort
    /// is already in the output).
    Close,
    /// Fully handled here (a CSM, a Ping answered, an empty message, a response).
    Handled,
}

/// The state of one connection.
#[derive(Debug)]
pub struct ReliableLink {
    framing: Framing,
    /// Ours, announced in our CSM and enforced by the decoder.
    max_message_size: usize,
    peer_max_message_size: usize,
    peer_block_wise: bool,
    csm_received: bool,
    /// When our Ping is overdue, if one is out.
    pong_due: Option<Instant>,
    pong_timeout: Duration,
    understood_critical: &'static [u16],
    rng: u64,
}

impl ReliableLink {
    pub fn new(
        framing: Framing,
        max_message_size: usize,
        pong_timeout: Duration,
        understood_critical: &'static [u16],
        seed: u64,
    ) -> ReliableLink {
        ReliableLink {
            framing,
            max_message_size,
            peer_max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            peer_block_wise: false,
            csm_received: false,
            pong_due: None,
            pong_timeout,
            understood_critical,
            rng: seed | 1,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The largest message the peer takes: its CSM's Max-Message-Size, else 1152.
    pub fn peer_max_message_size(&self) -> usize {
        self.peer_max_message_size
    }

    /// Whether the peer's CSM offered block-wise transfers.
    pub fn peer_block_wise(&self) -> bool {
        self.peer_block_wise
    }

    pub fn random(&mut self) -> u64 {
        next_random(&mut self.rng)
    }

    /// Our CSM, the first message on the connection (RFC 8323 5.3). It offers no
    /// Block-Wise-Transfer: with a Max-Message-Size above 1152 that would promise BERT
    /// (RFC 8323 6), which we do not speak; bodies up to our Max-Message-Size travel whole,
    /// and ordinary Block1 / Block2 still work for a client that uses them.
    pub fn start(&mut self, out: &mut Vec<Bytes>) {
        let mut csm = signal(CSM);
        csm.add_option(
            MAX_MESSAGE_SIZE.into(),
            uint(u32::try_from(self.max_message_size).unwrap_or(u32::MAX)),
        );
        self.push(&csm, out);
    }

    pub fn receive(&mut self, frame: Frame, out: &mut Vec<Bytes>) -> Inbound {
        let packet = match decode_framed(frame.code, &frame.token, &frame.body) {
            Ok(packet) => packet,
            Err(rejected) => return self.abort(&rejected.to_string(), None, out),
        };
        if frame.code == CSM {
            return self.csm(&packet, out);
        }
        if !self.csm_received {
            // RFC 8323 5.3: a missing CSM is a connection error.
            return self.abort("the first message must be a CSM (RFC 8323 5.3)", None, out);
        }
        if frame.code >> 5 == 7 {
            return self.signal(frame.code, packet, out);
        }
        match frame.code >> 5 {
            // An empty message is ignored (RFC 8323 3.4); so is a response, since we send
            // no requests, and a reserved class.
            _ if frame.code == 0 => Inbound::Handled,
            0 => match check_request(packet, self.understood_critical) {
                Ok(request) => Inbound::Request(request),
                Err((request, code)) => {
                    let mut answer = Packet::new();
                    answer.header.code = MessageClass::Response(code);
                    if let Err(error) = self.respond(&request, answer, out) {
                        tracing::warn!(%error, "response not sent");
                    }
                    Inbound::Handled
                }
            },
            _ => {
                tracing::debug!(code = frame.code, "message ignored");
                Inbound::Handled
            }
        }
    }

    fn csm(&mut self, packet: &Packet, out: &mut Vec<Bytes>) -> Inbound {
        for (&number, values) in packet.options() {
            match number {
                MAX_MESSAGE_SIZE => {
                    let value = values.back().map_or(0, |raw| {
                        raw.iter()
                            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte))
                    });
                    self.peer_max_message_size =
                        usize::try_from(value).unwrap_or(usize::MAX).max(1);
                }
                BLOCK_WISE_TRANSFER => self.peer_block_wise = true,
                // RFC 8323 5.3: an unknown critical option in a CSM aborts, naming it.
                critical if critical & 1 == 1 => {
                    return self.abort("critical CSM option not understood", Some(critical), out);
                }
                _ => {}
            }
        }
        self.csm_received = true;
        tracing::debug!(
            peer_max_message_size = self.peer_max_message_size,
            block_wise = self.peer_block_wise,
            "CSM received"
        );
        Inbound::Handled
    }

    fn signal(&mut self, code: u8, packet: Packet, out: &mut Vec<Bytes>) -> Inbound {
        // Every option RFC 8323 defines for Ping, Pong, Release and Abort is elective.
        if packet.options().any(|(number, _)| number & 1 == 1) {
            return self.abort("critical signalling option not understood", None, out);
        }
        match code {
            PING => {
                // Everything received before the Ping is already answered, so the Pong
                // may carry Custody (RFC 8323 5.4.1).
                let mut pong = signal(PONG);
                pong.set_token(packet.get_token().to_vec());
                if packet.get_option(CUSTODY.into()).is_some() {
                    pong.add_option(CUSTODY.into(), Vec::new());
                }
                self.push(&pong, out);
                Inbound::Handled
            }
            PONG => {
                self.pong_due = None;
                Inbound::Pong
            }
            RELEASE => {
                tracing::info!("connection released by the client");
                Inbound::Close
            }
            ABORT => {
                tracing::info!(
                    diagnostic = %String::from_utf8_lossy(&packet.payload),
                    "connection aborted by the client"
                );
                Inbound::Close
            }
            _ => {
                tracing::debug!(code, "unknown signalling message ignored");
                Inbound::Handled
            }
        }
    }

    /// Sends a Release: we are closing, the client may reconnect (RFC 8323 5.5).
    pub fn release(&mut self, out: &mut Vec<Bytes>) {
        let release = signal(RELEASE);
        self.push(&release, out);
    }

    /// Sends an Abort with `diagnostic` as its payload (RFC 8323 5.6); the connection
    /// closes after it.
    pub fn abort(
        &mut self,
        diagnostic: &str,
        bad_csm_option: Option<u16>,
        out: &mut Vec<Bytes>,
    ) -> Inbound {
        tracing::info!(diagnostic, "connection aborted");
        let mut abort = signal(ABORT);
        if let Some(option) = bad_csm_option {
            abort.add_option(BAD_CSM_OPTION.into(), uint(u32::from(option)));
        }
        abort.payload = diagnostic.as_bytes().to_vec();
        self.push(&abort, out);
        Inbound::Close
    }

    /// Sends `response` to `request`, with its token.
    pub fn respond(
        &mut self,
        request: &Packet,
        mut response: Packet,
        out: &mut Vec<Bytes>,
    ) -> Result<(), EncodeError> {
        response.set_token(request.get_token().to_vec());
        self.send(&response, out)
    }

    /// Sends a message, which must fit the peer's Max-Message-Size.
    pub fn send(&mut self, packet: &Packet, out: &mut Vec<Bytes>) -> Result<(), EncodeError> {
        self.send_within(packet, self.peer_max_message_size, out)
    }

    fn send_within(
        &self,
        packet: &Packet,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<(), EncodeError> {
        let (code, token, body) = encode_framed(packet)?;
        let frame = Frame {
            code,
            token: Bytes::from(token),
            body: Bytes::from(body),
        };
        let len = encoded_len(self.framing, &frame);
        if len > max {
            return Err(EncodeError::TooLarge { len, max });
        }
        let mut bytes = BytesMut::with_capacity(len + 4);
        encode(self.framing, &frame, &mut bytes);
        out.push(bytes.freeze());
        Ok(())
    }

    /// Sends a Ping; the Pong is due within the timeout. False when one is already out.
    pub fn ping(&mut self, now: Instant, out: &mut Vec<Bytes>) -> bool {
        if self.pong_due.is_some() {
            return false;
        }
        let ping = signal(PING);
        self.push(&ping, out);
        self.pong_due = Some(now + self.pong_timeout);
        true
    }

    /// True when our Ping went unanswered for the timeout.
    pub fn pong_overdue(&self, now: Instant) -> bool {
        self.pong_due.is_some_and(|due| due <= now)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pong_due
    }

    /// Sends a signalling message: ours are small, within the 1152 bytes every peer
    /// takes, whatever its CSM says.
    fn push(&mut self, packet: &Packet, out: &mut Vec<Bytes>) {
        if let Err(error) = self.send_within(packet, DEFAULT_MAX_MESSAGE_SIZE, out) {
            tracing::warn!(%error, "signalling message not sent");
        }
    }
}

fn signal(code: u8) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::from(code);
    packet
}

/// An unsigned option value in the fewest bytes (RFC 7252 3.2).
fn uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(skip..).unwrap_or_default().to_vec()
}
