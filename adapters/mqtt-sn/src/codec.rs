//! MQTT-SN 1.2 frames: one message per datagram, decoded strictly and encoded exactly.
//!
//! The header is a Length (one octet counting itself, or `0x01` and two octets counting all
//! three) and a MsgType; the declared length must be the datagram's length, so a truncated or
//! padded datagram is an error rather than a guess. Nothing here panics on any input.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

/// The only Protocol Id of CONNECT in version 1.2.
pub const PROTOCOL_ID: u8 = 0x01;

/// Returns codes of CONNACK, REGACK, PUBACK, SUBACK, WILLTOPICRESP and WILLMSGRESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReturnCode(pub u8);

impl ReturnCode {
    pub const ACCEPTED: ReturnCode = ReturnCode(0x00);
    pub const CONGESTION: ReturnCode = ReturnCode(0x01);
    pub const INVALID_TOPIC_ID: ReturnCode = ReturnCode(0x02);
    pub const NOT_SUPPORTED: ReturnCode = ReturnCode(0x03);
}

/// The QoS field of the flags; `MinusOne` is the connectionless publish of spec 6.8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    #[default]
    Zero,
    One,
    Two,
    MinusOne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopicIdType {
    /// A topic id from REGISTER, or a topic name in SUBSCRIBE and UNSUBSCRIBE.
    #[default]
    Normal,
    Predefined,
    /// Two characters carried in the topic id field.
    Short,
    /// Bit pattern 11: decoded so the gateway can answer it with "not supported".
    Reserved,
}

/// The flags octet (spec 5.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub dup: bool,
    pub qos: Qos,
    pub retain: bool,
    pub will: bool,
    pub clean_session: bool,
    pub topic_id_type: TopicIdType,
}

impl Flags {
    pub fn from_byte(byte: u8) -> Flags {
        Flags {
            dup: byte & 0x80 != 0,
            qos: match (byte >> 5) & 0x03 {
                0 => Qos::Zero,
                1 => Qos::One,
                2 => Qos::Two,
                _ => Qos::MinusOne,
            },
            retain: byte & 0x10 != 0,
            will: byte & 0x08 != 0,
            clean_session: byte & 0x04 != 0,
            topic_id_type: match byte & 0x03 {
                0 => TopicIdType::Normal,
                1 => TopicIdType::Predefined,
                2 => TopicIdType::Short,
                _ => TopicIdType::Reserved,
            },
        }
    }

    pub fn to_byte(self) -> u8 {
        let qos = match self.qos {
            Qos::Zero => 0,
            Qos::One => 1,
            Qos::Two => 2,
            Qos::MinusOne => 3,
        };
        let kind = match self.topic_id_type {
            TopicIdType::Normal => 0,
            TopicIdType::Predefined => 1,
            TopicIdType::Short => 2,
            TopicIdType::Reserved => 3,
        };
        (u8::from(self.dup) << 7)
            | (qos << 5)
            | (u8::from(self.retain) << 4)
            | (u8::from(self.will) << 3)
            | (u8::from(self.clean_session) << 2)
            | kind
    }
}

/// The topic of SUBSCRIBE and UNSUBSCRIBE: a name for the normal type, otherwise the two
/// octets of a predefined id or a short name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRef {
    Name(ByteString),
    Id(u16),
}

/// Will flags and topic of WILLTOPIC and WILLTOPICUPD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillTopic {
    pub flags: Flags,
    pub topic: ByteString,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Advertise {
        gw_id: u8,
        duration: u16,
    },
    SearchGw {
        radius: u8,
    },
    GwInfo {
        gw_id: u8,
        /// Empty when sent by a gateway.
        gw_add: Bytes,
    },
    Connect {
        flags: Flags,
        protocol_id: u8,
        duration: u16,
        client_id: ByteString,
    },
    ConnAck {
        return_code: ReturnCode,
    },
    WillTopicReq,
    /// `None` is the empty WILLTOPIC that deletes the will.
    WillTopic(Option<WillTopic>),
    WillMsgReq,
    WillMsg {
        payload: Bytes,
    },
    Register {
        topic_id: u16,
        msg_id: u16,
        topic_name: ByteString,
    },
    RegAck {
        topic_id: u16,
        msg_id: u16,
        return_code: ReturnCode,
    },
    Publish {
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        data: Bytes,
    },
    PubAck {
        topic_id: u16,
        msg_id: u16,
        return_code: ReturnCode,
    },
    PubComp {
        msg_id: u16,
    },
    PubRec {
        msg_id: u16,
    },
    PubRel {
        msg_id: u16,
    },
    Subscribe {
        flags: Flags,
        msg_id: u16,
        topic: TopicRef,
    },
    SubAck {
        flags: Flags,
        topic_id: u16,
        msg_id: u16,
        return_code: ReturnCode,
    },
    Unsubscribe {
        flags: Flags,
        msg_id: u16,
        topic: TopicRef,
    },
    UnsubAck {
        msg_id: u16,
    },
    PingReq {
        client_id: Option<ByteString>,
    },
    PingResp,
    Disconnect {
        duration: Option<u16>,
    },
    WillTopicUpd(Option<WillTopic>),
    WillTopicResp {
        return_code: ReturnCode,
    },
    WillMsgUpd {
        payload: Bytes,
    },
    WillMsgResp {
        return_code: ReturnCode,
    },
    /// Forwarder Encapsulation (spec 5.5): a message relayed for a wireless node.
    Encapsulated {
        /// Bits 0-1 carry the broadcast radius; the rest are reserved.
        ctrl: u8,
        wireless_node_id: Bytes,
        message: Box<Message>,
    },
}

impl Message {
    pub fn type_code(&self) -> u8 {
        match self {
            Message::Advertise { .. } => 0x00,
            Message::SearchGw { .. } => 0x01,
            Message::GwInfo { .. } => 0x02,
            Message::Connect { .. } => 0x04,
            Message::ConnAck { .. } => 0x05,
            Message::WillTopicReq => 0x06,
            Message::WillTopic(_) => 0x07,
            Message::WillMsgReq => 0x08,
            Message::WillMsg { .. } => 0x09,
            Message::Register { .. } => 0x0A,
            Message::RegAck { .. } => 0x0B,
            Message::Publish { .. } => 0x0C,
            Message::PubAck { .. } => 0x0D,
            Message::PubComp { .. } => 0x0E,
            Message::PubRec { .. } => 0x0F,
            Message::PubRel { .. } => 0x10,
            Message::Subscribe { .. } => 0x12,
            Message::SubAck { .. } => 0x13,
            Message::Unsubscribe { .. } => 0x14,
            Message::UnsubAck { .. } => 0x15,
            Message::PingReq { .. } => 0x16,
            Message::PingResp => 0x17,
            Message::Disconnect { .. } => 0x18,
            Message::WillTopicUpd(_) => 0x1A,
            Message::WillTopicResp { .. } => 0x1B,
            Message::WillMsgUpd { .. } => 0x1C,
            Message::WillMsgResp { .. } => 0x1D,
            Message::Encapsulated { .. } => 0xFE,
        }
    }
}

/// Why a datagram is not an MQTT-SN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {0} bytes is shorter than a header")]
    TooShort(usize),
    #[error("declared length {declared} differs from the datagram's {actual} bytes (spec 5.2.1)")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("reserved message type 0x{0:02x} (spec 5.2.2)")]
    ReservedType(u8),
    #[error("{message} body of {len} bytes is malformed: {rule}")]
    MalformedBody {
        message: &'static str,
        len: usize,
        rule: &'static str,
    },
    #[error("{0} carries a string that is not UTF-8")]
    InvalidUtf8(&'static str),
    #[error("Forwarder Encapsulation may not nest (spec 5.5)")]
    NestedEncapsulation,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {0} bytes exceeds the 65535 bytes a length field can carry")]
    TooLong(usize),
}

/// Decodes one datagram.
pub fn decode(datagram: &Bytes) -> Result<Message, DecodeError> {
    decode_frame(datagram, true)
}

fn decode_frame(datagram: &Bytes, outer: bool) -> Result<Message, DecodeError> {
    let (declared, header) = match datagram.first() {
        None => return Err(DecodeError::TooShort(0)),
        Some(0x01) => match (datagram.get(1), datagram.get(2)) {
            (Some(&high), Some(&low)) => (usize::from(u16::from_be_bytes([high, low])), 3),
            _ => return Err(DecodeError::TooShort(datagram.len())),
        },
        Some(&len) => (usize::from(len), 1),
    };
    let Some(&kind) = datagram.get(header) else {
        return Err(DecodeError::TooShort(datagram.len()));
    };
    if kind == 0xFE {
        if !outer {
            return Err(DecodeError::NestedEncapsulation);
        }
        // The encapsulation's length covers only its own header; the relayed message follows.
        if declared < header + 2 || declared > datagram.len() {
            return Err(DecodeError::LengthMismatch {
                declared,
                actual: datagram.len(),
            });
        }
        let ctrl = *datagram
            .get(header + 1)
            .ok_or(DecodeError::TooShort(datagram.len()))?;
        let wireless_node_id = datagram.slice(header + 2..declared);
        let inner = datagram.slice(declared..);
        let message = decode_frame(&inner, false)?;
        return Ok(Message::Encapsulated {
            ctrl,
            wireless_node_id,
            message: Box::new(message),
        });
    }
    if declared != datagram.len() || declared < header + 1 {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: datagram.len(),
        });
    }
    let body = Body {
        bytes: datagram.slice(header + 1..),
        position: 0,
        message: name_of(kind),
    };
    decode_body(kind, body)
}

fn name_of(kind: u8) -> &'static str {
    match kind {
        0x00 => "ADVERTISE",
        0x01 => "SEARCHGW",
        0x02 => "GWINFO",
        0x04 => "CONNECT",
        0x05 => "CONNACK",
        0x06 => "WILLTOPICREQ",
        0x07 => "WILLTOPIC",
        0x08 => "WILLMSGREQ",
        0x09 => "WILLMSG",
        0x0A => "REGISTER",
        0x0B => "REGACK",
        0x0C => "PUBLISH",
        0x0D => "PUBACK",
        0x0E => "PUBCOMP",
        0x0F => "PUBREC",
        0x10 => "PUBREL",
        0x12 => "SUBSCRIBE",
        0x13 => "SUBACK",
        0x14 => "UNSUBSCRIBE",
        0x15 => "UNSUBACK",
        0x16 => "PINGREQ",
        0x17 => "PINGRESP",
        0x18 => "DISCONNECT",
        0x1A => "WILLTOPICUPD",
        0x1B => "WILLTOPICRESP",
        0x1C => "WILLMSGUPD",
        0x1D => "WILLMSGRESP",
        _ => "reserved",
    }
}

/// A cursor over a message body that fails, never panics, when the body runs out.
struct Body {
    bytes: Bytes,
    position: usize,
    message: &'static str,
}

impl Body {
    fn malformed(&self, rule: &'static str) -> DecodeError {
        DecodeError::MalformedBody {
            message: self.message,
            len: self.bytes.len(),
            rule,
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self
            .bytes
            .get(self.position)
            .ok_or_else(|| self.malformed("too short"))?;
        self.position += 1;
        Ok(byte)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn rest(&mut self) -> Bytes {
        let rest = self.bytes.slice(self.position.min(self.bytes.len())..);
        self.position = self.bytes.len();
        rest
    }

    fn rest_str(&mut self) -> Result<ByteString, DecodeError> {
        let message = self.message;
        ByteString::try_from(self.rest()).map_err(|_| DecodeError::InvalidUtf8(message))
    }

    fn end(self) -> Result<(), DecodeError> {
        if self.position == self.bytes.len() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }

    fn is_empty(&self) -> bool {
        self.position >= self.bytes.len()
    }
}

fn decode_body(kind: u8, mut body: Body) -> Result<Message, DecodeError> {
    let message = match kind {
        0x00 => Message::Advertise {
            gw_id: body.u8()?,
            duration: body.u16()?,
        },
        0x01 => Message::SearchGw { radius: body.u8()? },
        0x02 => Message::GwInfo {
            gw_id: body.u8()?,
            gw_add: body.rest(),
        },
        0x04 => {
            let flags = Flags::from_byte(body.u8()?);
            let protocol_id = body.u8()?;
            let duration = body.u16()?;
            let client_id = body.rest_str()?;
            Message::Connect {
                flags,
                protocol_id,
                duration,
                client_id,
            }
        }
        0x05 => Message::ConnAck {
            return_code: ReturnCode(body.u8()?),
        },
        0x06 => Message::WillTopicReq,
        0x07 => Message::WillTopic(decode_will_topic(&mut body)?),
        0x08 => Message::WillMsgReq,
        0x09 => Message::WillMsg {
            payload: body.rest(),
        },
        0x0A => {
            let topic_id = body.u16()?;
            let msg_id = body.u16()?;
            let topic_name = body.rest_str()?;
            Message::Register {
                topic_id,
                msg_id,
                topic_name,
            }
        }
        0x0B => Message::RegAck {
            topic_id: body.u16()?,
            msg_id: body.u16()?,
            return_code: ReturnCode(body.u8()?),
        },
        0x0C => Message::Publish {
            flags: Flags::from_byte(body.u8()?),
            topic_id: body.u16()?,
            msg_id: body.u16()?,
            data: body.rest(),
        },
        0x0D => Message::PubAck {
            topic_id: body.u16()?,
            msg_id: body.u16()?,
            return_code: ReturnCode(body.u8()?),
        },
        0x0E => Message::PubComp {
            msg_id: body.u16()?,
        },
        0x0F => Message::PubRec {
            msg_id: body.u16()?,
        },
        0x10 => Message::PubRel {
            msg_id: body.u16()?,
        },
        0x12 | 0x14 => {
            let flags = Flags::from_byte(body.u8()?);
            let msg_id = body.u16()?;
            let topic = match flags.topic_id_type {
                TopicIdType::Normal => TopicRef::Name(body.rest_str()?),
                _ => TopicRef::Id(body.u16()?),
            };
            if kind == 0x12 {
                Message::Subscribe {
                    flags,
                    msg_id,
                    topic,
                }
            } else {
                Message::Unsubscribe {
                    flags,
                    msg_id,
                    topic,
                }
            }
        }
        0x13 => Message::SubAck {
            flags: Flags::from_byte(body.u8()?),
            topic_id: body.u16()?,
            msg_id: body.u16()?,
            return_code: ReturnCode(body.u8()?),
        },
        0x15 => Message::UnsubAck {
            msg_id: body.u16()?,
        },
        0x16 => Message::PingReq {
            client_id: if body.is_empty() {
                None
            } else {
                Some(body.rest_str()?)
            },
        },
        0x17 => Message::PingResp,
        0x18 => Message::Disconnect {
            duration: if body.is_empty() {
                None
            } else {
                Some(body.u16()?)
            },
        },
        0x1A => Message::WillTopicUpd(decode_will_topic(&mut body)?),
        0x1B => Message::WillTopicResp {
            return_code: ReturnCode(body.u8()?),
        },
        0x1C => Message::WillMsgUpd {
            payload: body.rest(),
        },
        0x1D => Message::WillMsgResp {
            return_code: ReturnCode(body.u8()?),
        },
        other => return Err(DecodeError::ReservedType(other)),
    };
    body.end()?;
    Ok(message)
}

fn decode_will_topic(body: &mut Body) -> Result<Option<WillTopic>, DecodeError> {
    if body.is_empty() {
        return Ok(None);
    }
    let flags = Flags::from_byte(body.u8()?);
    let topic = body.rest_str()?;
    Ok(Some(WillTopic { flags, topic }))
}

/// Appends the encoded message to `out`, choosing the 3-octet length only when needed.
pub fn encode(message: &Message, out: &mut BytesMut) -> Result<(), EncodeError> {
    let mut body = BytesMut::new();
    if let Message::Encapsulated {
        ctrl,
        wireless_node_id,
        message,
    } = message
    {
        body.put_u8(*ctrl);
        body.put_slice(wireless_node_id);
        put_header(0xFE, body.len(), out)?;
        out.put_slice(&body);
        return encode(message, out);
    }
    encode_body(message, &mut body);
    put_header(message.type_code(), body.len(), out)?;
    out.put_slice(&body);
    Ok(())
}

/// Encodes into a fresh buffer, as a datagram to send.
pub fn to_datagram(message: &Message) -> Result<Bytes, EncodeError> {
    let mut out = BytesMut::new();
    encode(message, &mut out)?;
    Ok(out.freeze())
}

fn put_header(kind: u8, body_len: usize, out: &mut BytesMut) -> Result<(), EncodeError> {
    let short = body_len + 2;
    if short <= 0xFF {
        out.put_u8(short as u8);
    } else {
        let long = u16::try_from(body_len + 4).map_err(|_| EncodeError::TooLong(body_len + 4))?;
        out.put_u8(0x01);
        out.put_u16(long);
    }
    out.put_u8(kind);
    Ok(())
}

fn encode_body(message: &Message, out: &mut BytesMut) {
    match message {
        Message::Advertise { gw_id, duration } => {
            out.put_u8(*gw_id);
            out.put_u16(*duration);
        }
        Message::SearchGw { radius } => out.put_u8(*radius),
        Message::GwInfo { gw_id, gw_add } => {
            out.put_u8(*gw_id);
            out.put_slice(gw_add);
        }
        Message::Connect {
            flags,
            protocol_id,
            duration,
            client_id,
        } => {
            out.put_u8(flags.to_byte());
            out.put_u8(*protocol_id);
            out.put_u16(*duration);
            out.put_slice(client_id.as_bytes());
        }
        Message::ConnAck { return_code }
        | Message::WillTopicResp { return_code }
        | Message::WillMsgResp { return_code } => out.put_u8(return_code.0),
        Message::WillTopicReq | Message::WillMsgReq | Message::PingResp => {}
        Message::WillTopic(will) | Message::WillTopicUpd(will) => {
            if let Some(will) = will {
                out.put_u8(will.flags.to_byte());
                out.put_slice(will.topic.as_bytes());
            }
        }
        Message::WillMsg { payload } | Message::WillMsgUpd { payload } => out.put_slice(payload),
        Message::Register {
            topic_id,
            msg_id,
            topic_name,
        } => {
            out.put_u16(*topic_id);
            out.put_u16(*msg_id);
            out.put_slice(topic_name.as_bytes());
        }
        Message::RegAck {
            topic_id,
            msg_id,
            return_code,
        }
        | Message::PubAck {
            topic_id,
            msg_id,
            return_code,
        } => {
            out.put_u16(*topic_id);
            out.put_u16(*msg_id);
            out.put_u8(return_code.0);
        }
        Message::Publish {
            flags,
            topic_id,
            msg_id,
            data,
        } => {
            out.put_u8(flags.to_byte());
            out.put_u16(*topic_id);
            out.put_u16(*msg_id);
            out.put_slice(data);
        }
        Message::PubComp { msg_id }
        | Message::PubRec { msg_id }
        | Message::PubRel { msg_id }
        | Message::UnsubAck { msg_id } => out.put_u16(*msg_id),
        Message::Subscribe {
            flags,
            msg_id,
            topic,
        }
        | Message::Unsubscribe {
            flags,
            msg_id,
            topic,
        } => {
            out.put_u8(flags.to_byte());
            out.put_u16(*msg_id);
            match topic {
                TopicRef::Name(name) => out.put_slice(name.as_bytes()),
                TopicRef::Id(id) => out.put_u16(*id),
            }
        }
        Message::SubAck {
            flags,
            topic_id,
            msg_id,
            return_code,
        } => {
            out.put_u8(flags.to_byte());
            out.put_u16(*topic_id);
            out.put_u16(*msg_id);
            out.put_u8(return_code.0);
        }
        Message::PingReq { client_id } => {
            if let Some(client_id) = client_id {
                out.put_slice(client_id.as_bytes());
            }
        }
        Message::Disconnect { duration } => {
            if let Some(duration) = duration {
                out.put_u16(*duration);
            }
        }
        // Handled by `encode`, which writes the relayed message after this header.
        Message::Encapsulated { .. } => {}
    }
}

/// The two characters of a short topic name as the 16-bit topic id field carries them.
pub fn short_topic_id(name: &str) -> Option<u16> {
    match name.as_bytes() {
        &[a, b] => Some(u16::from_be_bytes([a, b])),
        _ => None,
    }
}

/// A short topic id back to its two characters, if they are UTF-8.
pub fn short_topic_name(id: u16) -> Option<ByteString> {
    let bytes = id.to_be_bytes();
    std::str::from_utf8(&bytes).ok().map(ByteString::from)
}

/// The client id a datagram names without any state: CONNECT's, or PINGREQ's of a sleeping
/// client waking up. Lets the transport find a client that comes back from a new address.
pub fn client_id_hint(datagram: &Bytes) -> Option<ByteString> {
    match decode(datagram).ok()? {
        Message::PingReq { client_id } => client_id,
        _ => None,
    }
}

/// The wireless node a forwarder relays for, so each node behind one forwarder is its own peer.
pub fn wireless_node(datagram: &Bytes) -> Option<Bytes> {
    match decode(datagram).ok()? {
        Message::Encapsulated {
            wireless_node_id, ..
        } => Some(wireless_node_id),
        _ => None,
    }
}

/// Wraps an encoded message for a forwarder to relay to `wireless_node_id` (spec 5.5).
pub fn encapsulate(ctrl: u8, wireless_node_id: &Bytes, inner: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    let header = 3 + wireless_node_id.len();
    // A node id too long for one length octet is the forwarder's problem; use the long form.
    if header <= 0xFF {
        out.put_u8(header as u8);
    } else {
        out.put_u8(0x01);
        out.put_u16(u16::try_from(header + 2).unwrap_or(u16::MAX));
    }
    out.put_u8(0xFE);
    out.put_u8(ctrl);
    out.put_slice(wireless_node_id);
    out.put_slice(inner);
    out.freeze()
}
