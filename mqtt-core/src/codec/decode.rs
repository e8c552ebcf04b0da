use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use super::error::DecodeError;
use super::packet::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, LastWill, Packet, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, ReasonCode, SparseProperties, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe, UserProperties, WillProperties,
};
use super::wire;

type Result<T> = std::result::Result<T, DecodeError>;

const TRUNCATED: DecodeError =
    DecodeError::Malformed("[§2.1.4] a field runs past the end set by the Remaining Length");
const TRAILING: DecodeError =
    DecodeError::Malformed("[§2.1.4] bytes left over after the last field of the packet");
const BAD_UTF8: DecodeError = DecodeError::Malformed(
    "[MQTT-1.5.4-1] (3.1.1: [MQTT-1.5.3-1]) string is not well-formed UTF-8",
);
const NUL_CHAR: DecodeError =
    DecodeError::Malformed("[MQTT-1.5.4-2] (3.1.1: [MQTT-1.5.3-2]) string contains U+0000");
const VBI_TOO_LONG: DecodeError =
    DecodeError::Malformed("[§1.5.5] variable byte integer longer than four bytes");
const VBI_NOT_MINIMAL: DecodeError = DecodeError::Malformed(
    "[MQTT-1.5.5-1] variable byte integer not encoded in the minimum number of bytes",
);
const ZERO_PACKET_ID: DecodeError =
    DecodeError::Protocol("[MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]) packet identifier is 0");
const DUPLICATE_PROPERTY: DecodeError = DecodeError::Protocol(
    "[§2.2.2.2] a property other than User Property or PUBLISH's Subscription Identifier \
     appears more than once",
);
const NOT_CONNECT_FIRST: DecodeError =
    DecodeError::Protocol("[MQTT-3.1.0-1] the first packet on a connection must be CONNECT");

/// The parsed fixed header of the packet whose body is being waited for.
#[derive(Debug, Clone, Copy)]
struct FixedHeader {
    packet_type: u8,
    flags: u8,
    remaining: usize,
    /// Whether the Remaining Length used the fewest bytes; only 5.0 requires it, and for a
    /// first CONNECT the version is not known until its body is read.
    minimal_length: bool,
}

/// A resumable decoder for one connection.
///
/// A server-side decoder starts without a version: the first packet must be CONNECT, whose
/// protocol name and level fix the version for the rest of the connection. After the
/// fixed header of a packet is read it is kept, so a packet arriving in many reads is parsed
/// once, when its last byte is there. After any error the connection must be closed.
#[derive(Debug)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
    pending: Option<FixedHeader>,
}

impl Decoder {
    /// A decoder for the server side of a connection: only CONNECT is accepted until one has
    /// been read. `max_packet_size` bounds the whole packet, fixed header included.
    pub fn new(max_packet_size: u32) -> Self {
        Decoder {
            version: None,
            max_packet_size,
            pending: None,
        }
    }

    /// A decoder for a connection whose version is already known (e.g. the client side).
    pub fn with_version(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Decoder {
            version: Some(version),
            max_packet_size,
            pending: None,
        }
    }

    /// The connection's version. A first CONNECT sets it as soon as its protocol name and
    /// level are read, so it is also known when the rest of that CONNECT is rejected and the
    /// caller has to choose the CONNACK format.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Whether a fixed header has been consumed and its body is still awaited. With the
    /// bytes left in the caller's buffer, this tells a driver whether end-of-stream cut a
    /// packet in two.
    pub fn has_partial_packet(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes effect from the next fixed header read.
    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.max_packet_size = max_packet_size;
    }

    /// `Ok(None)` means more bytes are needed; consumed bytes are split off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>> {
        let header = match self.pending {
            Some(header) => header,
            None => match self.read_fixed_header(buf)? {
                Some(header) => {
                    self.pending = Some(header);
                    header
                }
                None => return Ok(None),
            },
        };
        if buf.len() < header.remaining {
            return Ok(None);
        }
        self.pending = None;
        let body = buf.split_to(header.remaining).freeze();
        self.decode_body(header, body).map(Some)
    }

    /// Reads and checks a fixed header, consuming it from `buf` only once it is complete.
    /// Everything that can be judged from the header is judged here, before the body is
    /// buffered: the type, its flags, the first-packet rule and the size limit.
    fn read_fixed_header(&self, buf: &mut BytesMut) -> Result<Option<FixedHeader>> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = first >> 4;
        let flags = first & 0x0F;
        self.check_type_and_flags(packet_type, flags)?;

        let Some((remaining, length_bytes, minimal_length)) =
            parse_vbi(buf.get(1..).unwrap_or_default())?
        else {
            return Ok(None);
        };
        if self.version == Some(ProtocolVersion::V5) && !minimal_length {
            return Err(VBI_NOT_MINIMAL);
        }
        let remaining = remaining as usize;
        let size = 1 + length_bytes + remaining;
        if size > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        buf.advance(1 + length_bytes);
        Ok(Some(FixedHeader {
            packet_type,
            flags,
            remaining,
            minimal_length,
        }))
    }

    fn check_type_and_flags(&self, packet_type: u8, flags: u8) -> Result<()> {
        if packet_type == 0 {
            return Err(DecodeError::Malformed(
                "[§2.1.2] packet type 0 is reserved and forbidden",
            ));
        }
        match self.version {
            None if packet_type != wire::CONNECT => return Err(NOT_CONNECT_FIRST),
            Some(version) if packet_type == wire::AUTH && !version.is_v5() => {
                return Err(DecodeError::Malformed(
                    "[3.1.1 §2.2.1] packet type 15 is reserved before MQTT 5.0",
                ))
            }
            _ => {}
        }
        match packet_type {
            wire::PUBLISH => {
                let qos = (flags >> 1) & 0x03;
                if qos == 3 {
                    return Err(DecodeError::Malformed(
                        "[MQTT-3.3.1-4] PUBLISH has both QoS bits set",
                    ));
                }
                if qos == 0 && flags & 0x08 != 0 {
                    return Err(DecodeError::Malformed(
                        "[MQTT-3.3.1-2] PUBLISH at QoS 0 has the DUP flag set",
                    ));
                }
            }
            wire::PUBREL | wire::SUBSCRIBE | wire::UNSUBSCRIBE => {
                // 3.1 let a sender set DUP when it retransmitted these three packets.
                let allowed_dup = self.version == Some(ProtocolVersion::V3_1) && flags == 0b1010;
                if flags != 0b0010 && !allowed_dup {
                    return Err(DecodeError::Malformed(
                        "[MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] PUBREL, SUBSCRIBE and \
                         UNSUBSCRIBE fixed header flags must be 0010",
                    ));
                }
            }
            _ => {
                if flags != 0 {
                    return Err(DecodeError::Malformed(
                        "[MQTT-2.1.3-1] (3.1.1: [MQTT-2.2.2-2]) reserved fixed header flags \
                         are not 0",
                    ));
                }
            }
        }
        Ok(())
    }

    fn decode_body(&mut self, header: FixedHeader, body: Bytes) -> Result<Packet> {
        let mut r = Reader { buf: body };
        if header.packet_type == wire::CONNECT {
            return self.decode_connect(header, r);
        }
        // Unreachable through `decode`, which rejects anything but CONNECT first; kept as an
        // error rather than a panic.
        let Some(version) = self.version else {
            return Err(NOT_CONNECT_FIRST);
        };
        let v5 = version.is_v5();
        let packet = match header.packet_type {
            wire::CONNACK => Packet::ConnAck(Box::new(decode_connack(&mut r, version)?)),
            wire::PUBLISH => Packet::Publish(decode_publish(&mut r, v5, header.flags)?),
            wire::PUBACK => Packet::PubAck(decode_pub_response(&mut r, v5, wire::PUBACK)?),
            wire::PUBREC => Packet::PubRec(decode_pub_response(&mut r, v5, wire::PUBREC)?),
            wire::PUBREL => Packet::PubRel(decode_pub_response(&mut r, v5, wire::PUBREL)?),
            wire::PUBCOMP => Packet::PubComp(decode_pub_response(&mut r, v5, wire::PUBCOMP)?),
            wire::SUBSCRIBE => Packet::Subscribe(decode_subscribe(&mut r, v5)?),
            wire::SUBACK => Packet::SubAck(decode_suback(&mut r, v5)?),
            wire::UNSUBSCRIBE => Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?),
            wire::UNSUBACK => Packet::UnsubAck(decode_unsuback(&mut r, v5)?),
            wire::PINGREQ => Packet::PingReq,
            wire::PINGRESP => Packet::PingResp,
            wire::DISCONNECT => Packet::Disconnect(Box::new(decode_disconnect(&mut r, v5)?)),
            wire::AUTH => Packet::Auth(Box::new(decode_auth(&mut r)?)),
            _ => return Err(DecodeError::Malformed("[§2.1.2] unknown packet type")),
        };
        r.finish()?;
        Ok(packet)
    }

    fn decode_connect(&mut self, header: FixedHeader, mut r: Reader) -> Result<Packet> {
        let name = r.binary()?;
        let level = r.u8()?;
        let protocol = match (name.as_ref(), level) {
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) => ProtocolVersion::V5,
            _ => {
                return Err(DecodeError::UnsupportedProtocolVersion {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    level,
                })
            }
        };
        if self.version.is_none() {
            self.version = Some(protocol);
        }
        let v5 = protocol.is_v5();
        if v5 && !header.minimal_length {
            return Err(VBI_NOT_MINIMAL);
        }

        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::Malformed(
                "[MQTT-3.1.2-3] reserved flag in CONNECT is not 0",
            ));
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        if !will_flag && will_qos != 0 {
            return Err(DecodeError::Malformed(if v5 {
                "[MQTT-3.1.2-11] Will QoS is not 0 while the Will Flag is 0"
            } else {
                "[MQTT-3.1.2-11] [MQTT-3.1.2-13] Will QoS is not 0 while the Will Flag is 0"
            }));
        }
        if !will_flag && will_retain {
            return Err(DecodeError::Malformed(if v5 {
                "[MQTT-3.1.2-13] Will Retain is 1 while the Will Flag is 0"
            } else {
                "[MQTT-3.1.2-11] [MQTT-3.1.2-15] Will Retain is 1 while the Will Flag is 0"
            }));
        }
        let Some(will_qos) = QoS::from_u8(will_qos) else {
            return Err(DecodeError::Malformed(if v5 {
                "[MQTT-3.1.2-12] Will QoS is 3"
            } else {
                "[MQTT-3.1.2-14] Will QoS is 3"
            }));
        };
        if !v5 && password_flag && !username_flag {
            return Err(DecodeError::Malformed(
                "[MQTT-3.1.2-22] Password Flag is 1 while the User Name Flag is 0",
            ));
        }
        let keep_alive = r.u16()?;
        let properties = if v5 {
            connect_properties(&mut r)?
        } else {
            ConnectProperties::default()
        };

        let client_id = r.string()?;
        let will = if will_flag {
            let properties = if v5 {
                will_properties(&mut r)?
            } else {
                WillProperties::default()
            };
            let topic = r.utf8()?;
            if topic.is_empty() {
                return Err(DecodeError::TopicNameInvalid(
                    "[MQTT-4.7.3-1] Will Topic is empty",
                ));
            }
            if has_wildcard(&topic) {
                return Err(DecodeError::TopicNameInvalid(
                    "[MQTT-4.7.0-1] (3.1.1: [MQTT-4.7.1-1]) Will Topic contains a wildcard",
                ));
            }
            let payload = r.binary()?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if username_flag {
            Some(r.string()?)
        } else {
            None
        };
        let password = if password_flag {
            Some(r.binary()?)
        } else {
            None
        };
        r.finish()?;
        Ok(Packet::Connect(Box::new(Connect {
            protocol,
            clean_start,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
        })))
    }
}

fn decode_connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck> {
    let flags = r.u8()?;
    let code = r.u8()?;
    let session_present = match version {
        // 3.1 has no Session Present flag: the byte is unused.
        ProtocolVersion::V3_1 => false,
        _ => {
            if flags & 0xFE != 0 {
                return Err(DecodeError::Malformed(
                    "[MQTT-3.2.2-1] CONNACK acknowledge flags bits 7-1 are not 0",
                ));
            }
            flags & 0x01 != 0
        }
    };
    let reason_code = if version.is_v5() {
        let code = ReasonCode(code);
        if !wire::connack_code_valid(code) {
            return Err(DecodeError::Protocol(
                "[MQTT-3.2.2-8] not a CONNACK reason code",
            ));
        }
        code
    } else {
        match wire::V3_CONNACK_CODES.get(usize::from(code)) {
            Some(code) => *code,
            None => {
                return Err(DecodeError::Protocol(
                    "[3.1.1 §3.2.2.3] CONNACK return codes above 5 are reserved",
                ))
            }
        }
    };
    if session_present && reason_code != ReasonCode::SUCCESS {
        return Err(DecodeError::Protocol(
            "[MQTT-3.2.2-6] (3.1.1: [MQTT-3.2.2-4]) Session Present is 1 in a refusing CONNACK",
        ));
    }
    let properties = if version.is_v5() {
        connack_properties(r)?
    } else {
        ConnAckProperties::default()
    };
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn decode_publish(r: &mut Reader, v5: bool, flags: u8) -> Result<Publish> {
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    let Some(qos) = QoS::from_u8((flags >> 1) & 0x03) else {
        return Err(DecodeError::Malformed(
            "[MQTT-3.3.1-4] PUBLISH has both QoS bits set",
        ));
    };
    let topic = r.utf8()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if v5 {
        SparseProperties::from(publish_properties(r)?)
    } else {
        SparseProperties::default()
    };
    if topic.is_empty() {
        if !v5 {
            return Err(DecodeError::TopicNameInvalid(
                "[MQTT-4.7.3-1] PUBLISH Topic Name is empty",
            ));
        }
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol(
                "[§3.3.2.1] PUBLISH Topic Name is empty and there is no Topic Alias",
            ));
        }
    }
    if has_wildcard(&topic) {
        return Err(DecodeError::TopicNameInvalid(
            "[MQTT-3.3.2-2] PUBLISH Topic Name contains a wildcard",
        ));
    }
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
        properties,
    })
}

fn decode_pub_response(r: &mut Reader, v5: bool, packet_type: u8) -> Result<PubResponse> {
    let packet_id = r.packet_id()?;
    if !v5 {
        return Ok(PubResponse {
            packet_id,
            ..PubResponse::default()
        });
    }
    // Remaining Length 2 means Success without properties, 3 a reason code without
    // properties (§3.4.2.1, §3.4.2.2.1 and their PUBREC/PUBREL/PUBCOMP twins).
    let reason_code = if r.is_empty() {
        ReasonCode::SUCCESS
    } else {
        ReasonCode(r.u8()?)
    };
    let properties = if r.is_empty() {
        AckProperties::default()
    } else {
        ack_properties(r)?
    };
    let valid = match packet_type {
        wire::PUBACK | wire::PUBREC => wire::puback_code_valid(reason_code),
        _ => wire::pubrel_code_valid(reason_code),
    };
    if !valid {
        return Err(DecodeError::Protocol(match packet_type {
            wire::PUBACK => "[MQTT-3.4.2-1] not a PUBACK reason code",
            wire::PUBREC => "[MQTT-3.5.2-1] not a PUBREC reason code",
            wire::PUBREL => "[MQTT-3.6.2-1] not a PUBREL reason code",
            _ => "[MQTT-3.7.2-1] not a PUBCOMP reason code",
        }));
    }
    Ok(PubResponse {
        packet_id,
        reason_code,
        properties,
    })
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe> {
    let packet_id = r.packet_id()?;
    let mut subscription_identifier = None;
    let mut user_properties = UserProperties::new();
    if v5 {
        let mut props = r.properties()?;
        while !props.is_empty() {
            match props.property()? {
                Property::SubscriptionIdentifier(id) => once(&mut subscription_identifier, id)?,
                Property::User(k, v) => user_properties.push((k, v)),
                _ => {
                    return Err(DecodeError::Malformed(
                        "[§2.2.2.2] property identifier not valid in SUBSCRIBE",
                    ))
                }
            }
        }
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let byte = r.u8()?;
        let options = if v5 {
            subscription_options_v5(byte, &filter)?
        } else {
            if byte & 0xFC != 0 || byte & 0x03 == 3 {
                return Err(DecodeError::Malformed(
                    "[MQTT-3-8.3-4] requested QoS byte has reserved bits set or QoS 3",
                ));
            }
            SubscriptionOptions {
                qos: QoS::from_u8(byte).unwrap_or_default(),
                ..SubscriptionOptions::default()
            }
        };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "[MQTT-3.8.3-2] (3.1.1: [MQTT-3.8.3-3]) SUBSCRIBE has no topic filter",
        ));
    }
    Ok(Subscribe {
        packet_id,
        subscription_identifier,
        user_properties,
        filters,
    })
}

fn subscription_options_v5(byte: u8, filter: &str) -> Result<SubscriptionOptions> {
    if byte & 0xC0 != 0 {
        return Err(DecodeError::Malformed(
            "[MQTT-3.8.3-5] reserved bits of the subscription options are not 0",
        ));
    }
    let Some(qos) = QoS::from_u8(byte & 0x03) else {
        return Err(DecodeError::Protocol(
            "[§3.8.3.1] subscription Maximum QoS is 3",
        ));
    };
    let no_local = byte & 0x04 != 0;
    let retain_as_published = byte & 0x08 != 0;
    let retain_handling = (byte >> 4) & 0x03;
    if retain_handling == 3 {
        return Err(DecodeError::Protocol("[§3.8.3.1] Retain Handling is 3"));
    }
    if no_local && wire::is_shared_filter(filter) {
        return Err(DecodeError::Protocol(
            "[MQTT-3.8.3-4] No Local is set on a shared subscription",
        ));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        ack_properties(r)?
    } else {
        AckProperties::default()
    };
    let mut reason_codes = Vec::with_capacity(r.len());
    while !r.is_empty() {
        let code = ReasonCode(r.u8()?);
        let valid = if v5 {
            wire::suback_code_valid(code)
        } else {
            matches!(code.0, 0x00 | 0x01 | 0x02 | 0x80)
        };
        if !valid {
            return Err(DecodeError::Protocol(
                "[MQTT-3.9.3-2] not a SUBACK reason code",
            ));
        }
        reason_codes.push(code);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::Protocol(
            "[MQTT-3.8.4-6] (3.1.1: [MQTT-3.8.4-5]) SUBACK carries no reason code",
        ));
    }
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe> {
    let packet_id = r.packet_id()?;
    let mut user_properties = UserProperties::new();
    if v5 {
        let mut props = r.properties()?;
        while !props.is_empty() {
            match props.property()? {
                Property::User(k, v) => user_properties.push((k, v)),
                _ => {
                    return Err(DecodeError::Malformed(
                        "[§2.2.2.2] property identifier not valid in UNSUBSCRIBE",
                    ))
                }
            }
        }
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "[MQTT-3.10.3-2] UNSUBSCRIBE has no topic filter",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        user_properties,
        filters,
    })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck> {
    let packet_id = r.packet_id()?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            ..UnsubAck::default()
        });
    }
    let properties = ack_properties(r)?;
    let mut reason_codes = Vec::with_capacity(r.len());
    while !r.is_empty() {
        let code = ReasonCode(r.u8()?);
        if !wire::unsuback_code_valid(code) {
            return Err(DecodeError::Protocol(
                "[MQTT-3.11.3-2] not an UNSUBACK reason code",
            ));
        }
        reason_codes.push(code);
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::Protocol(
            "[MQTT-3.11.3-1] UNSUBACK carries no reason code",
        ));
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect> {
    if !v5 || r.is_empty() {
        return Ok(Disconnect::default());
    }
    let reason_code = ReasonCode(r.u8()?);
    if !wire::disconnect_code_valid(reason_code) {
        return Err(DecodeError::Protocol(
            "[MQTT-3.14.2-1] not a DISCONNECT reason code",
        ));
    }
    // A Remaining Length of 1 carries the reason code alone (§3.14.2.2.1).
    let mut properties = DisconnectProperties::default();
    if !r.is_empty() {
        let mut props = r.properties()?;
        while !props.is_empty() {
            match props.property()? {
                Property::SessionExpiryInterval(v) => {
                    once(&mut properties.session_expiry_interval, v)?
                }
                Property::ReasonString(v) => once(&mut properties.reason_string, v)?,
                Property::ServerReference(v) => once(&mut properties.server_reference, v)?,
                Property::User(k, v) => properties.user_properties.push((k, v)),
                _ => {
                    return Err(DecodeError::Malformed(
                        "[§2.2.2.2] property identifier not valid in DISCONNECT",
                    ))
                }
            }
        }
    }
    Ok(Disconnect {
        reason_code,
        properties,
    })
}

fn decode_auth(r: &mut Reader) -> Result<Auth> {
    if r.is_empty() {
        return Ok(Auth::default());
    }
    let reason_code = ReasonCode(r.u8()?);
    if !wire::auth_code_valid(reason_code) {
        return Err(DecodeError::Protocol(
            "[MQTT-3.15.2-1] not an AUTH reason code",
        ));
    }
    // Unlike DISCONNECT, AUTH defines no form with a reason code but no Property Length, so
    // a Remaining Length of 1 fails here as truncated.
    let mut properties = AuthProperties::default();
    let mut props = r.properties()?;
    while !props.is_empty() {
        match props.property()? {
            Property::AuthenticationMethod(v) => once(&mut properties.authentication_method, v)?,
            Property::AuthenticationData(v) => once(&mut properties.authentication_data, v)?,
            Property::ReasonString(v) => once(&mut properties.reason_string, v)?,
            Property::User(k, v) => properties.user_properties.push((k, v)),
            _ => {
                return Err(DecodeError::Malformed(
                    "[§2.2.2.2] property identifier not valid in AUTH",
                ))
            }
        }
    }
    if properties.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "[§3.15.2.2.2] AUTH omits the Authentication Method",
        ));
    }
    Ok(Auth {
        reason_code,
        properties,
    })
}

fn connect_properties(r: &mut Reader) -> Result<ConnectProperties> {
    let mut p = ConnectProperties::default();
    let mut props = r.properties()?;
    while !props.is_empty() {
        match props.property()? {
            Property::SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v)?,
            Property::ReceiveMaximum(v) => once(&mut p.receive_maximum, v)?,
            Property::MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v)?,
            Property::TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v)?,
            Property::RequestResponseInformation(v) => {
                once(&mut p.request_response_information, v)?
            }
            Property::RequestProblemInformation(v) => once(&mut p.request_problem_information, v)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v)?,
            Property::AuthenticationData(v) => once(&mut p.authentication_data, v)?,
            _ => {
                return Err(DecodeError::Malformed(
                    "[§2.2.2.2] property identifier not valid in CONNECT",
                ))
            }
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "[§3.1.2.11.10] Authentication Data without an Authentication Method",
        ));
    }
    Ok(p)
}

fn will_properties(r: &mut Reader) -> Result<WillProperties> {
    let mut p = WillProperties::default();
    let mut props = r.properties()?;
    while !props.is_empty() {
        match props.property()? {
            Property::WillDelayInterval(v) => once(&mut p.will_delay_interval, v)?,
            Property::PayloadFormatIndicator(v) => once(&mut p.payload_format_indicator, v)?,
            Property::MessageExpiryInterval(v) => once(&mut p.message_expiry_interval, v)?,
            Property::ContentType(v) => once(&mut p.content_type, v)?,
            Property::ResponseTopic(v) => once(&mut p.response_topic, v)?,
            Property::CorrelationData(v) => once(&mut p.correlation_data, v)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            _ => {
                return Err(DecodeError::Malformed(
                    "[§2.2.2.2] property identifier not valid in Will Properties",
                ))
            }
        }
    }
    Ok(p)
}

fn connack_properties(r: &mut Reader) -> Result<ConnAckProperties> {
    let mut p = ConnAckProperties::default();
    let mut props = r.properties()?;
    while !props.is_empty() {
        match props.property()? {
            Property::SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v)?,
            Property::ReceiveMaximum(v) => once(&mut p.receive_maximum, v)?,
            Property::MaximumQos(v) => once(&mut p.maximum_qos, v)?,
            Property::RetainAvailable(v) => once(&mut p.retain_available, v)?,
            Property::MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v)?,
            Property::AssignedClientIdentifier(v) => once(&mut p.assigned_client_identifier, v)?,
            Property::TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v)?,
            Property::ReasonString(v) => once(&mut p.reason_string, v)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            Property::WildcardSubscriptionAvailable(v) => {
                once(&mut p.wildcard_subscription_available, v)?
            }
            Property::SubscriptionIdentifierAvailable(v) => {
                once(&mut p.subscription_identifiers_available, v)?
            }
            Property::SharedSubscriptionAvailable(v) => {
                once(&mut p.shared_subscription_available, v)?
            }
            Property::ServerKeepAlive(v) => once(&mut p.server_keep_alive, v)?,
            Property::ResponseInformation(v) => once(&mut p.response_information, v)?,
            Property::ServerReference(v) => once(&mut p.server_reference, v)?,
            Property::AuthenticationMethod(v) => once(&mut p.authentication_method, v)?,
            Property::AuthenticationData(v) => once(&mut p.authentication_data, v)?,
            _ => {
                return Err(DecodeError::Malformed(
                    "[§2.2.2.2] property identifier not valid in CONNACK",
                ))
            }
        }
    }
    Ok(p)
}

fn publish_properties(r: &mut Reader) -> Result<PublishProperties> {
    let mut p = PublishProperties::default();
    let mut props = r.properties()?;
    while !props.is_empty() {
        match props.property()? {
            Property::PayloadFormatIndicator(v) => once(&mut p.payload_format_indicator, v)?,
            Property::MessageExpiryInterval(v) => once(&mut p.message_expiry_interval, v)?,
            Property::TopicAlias(v) => once(&mut p.topic_alias, v)?,
            Property::ResponseTopic(v) => once(&mut p.response_topic, v)?,
            Property::CorrelationData(v) => once(&mut p.correlation_data, v)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            // One per matching subscription (§3.3.4), so it may repeat here.
            Property::SubscriptionIdentifier(v) => p.subscription_identifiers.push(v),
            Property::ContentType(v) => once(&mut p.content_type, v)?,
            _ => {
                return Err(DecodeError::Malformed(
                    "[§2.2.2.2] property identifier not valid in PUBLISH",
                ))
            }
        }
    }
    Ok(p)
}

/// The properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
fn ack_properties(r: &mut Reader) -> Result<AckProperties> {
    let mut p = AckProperties::default();
    let mut props = r.properties()?;
    while !props.is_empty() {
        match props.property()? {
            Property::ReasonString(v) => once(&mut p.reason_string, v)?,
            Property::User(k, v) => p.user_properties.push((k, v)),
            _ => {
                return Err(DecodeError::Malformed(
                    "[§2.2.2.2] property identifier not valid in this acknowledgement",
                ))
            }
        }
    }
    Ok(p)
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(DUPLICATE_PROPERTY);
    }
    *slot = Some(value);
    Ok(())
}

fn has_wildcard(topic: &str) -> bool {
    topic.bytes().any(|b| b == b'+' || b == b'#')
}

/// Parses a Variable Byte Integer from the front of `bytes`: `Ok(None)` if it is not
/// complete yet, else the value, the bytes it took, and whether it took the fewest possible.
pub(super) fn parse_vbi(bytes: &[u8]) -> Result<Option<(u32, usize, bool)>> {
    let mut value = 0u32;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // Only a trailing zero byte after a continuation makes an encoding longer than
            // needed.
            let minimal = i == 0 || byte != 0;
            return Ok(Some((value, i + 1, minimal)));
        }
    }
    if bytes.len() >= 4 {
        Err(VBI_TOO_LONG)
    } else {
        Ok(None)
    }
}

/// One 5.0 property with its value checked against the rules that hold wherever it
/// appears; which packet may carry it is checked by the caller.
enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(String),
    ResponseTopic(String),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(String),
    ServerKeepAlive(u16),
    AuthenticationMethod(String),
    AuthenticationData(Bytes),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(String),
    ServerReference(String),
    ReasonString(String),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQos(QoS),
    RetainAvailable(bool),
    User(String, String),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

/// A cursor over the body of one packet. Every read checks the length first, so a field
/// that runs past the Remaining Length is an error, never a panic.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn len(&self) -> usize {
        self.buf.len()
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(TRAILING)
        }
    }

    fn u8(&mut self) -> Result<u8> {
        if self.buf.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16> {
        if self.buf.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32> {
        if self.buf.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.buf.get_u32())
    }

    fn packet_id(&mut self) -> Result<u16> {
        match self.u16()? {
            0 => Err(ZERO_PACKET_ID),
            id => Ok(id),
        }
    }

    /// Variable Byte Integers inside a body only occur in 5.0, which requires the shortest
    /// encoding.
    fn vbi(&mut self) -> Result<u32> {
        match parse_vbi(&self.buf)? {
            Some((value, len, minimal)) => {
                if !minimal {
                    return Err(VBI_NOT_MINIMAL);
                }
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(TRUNCATED),
        }
    }

    fn take(&mut self, len: usize) -> Result<Bytes> {
        if self.buf.len() < len {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left: the PUBLISH payload, shared with the receive buffer, not copied.
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    fn binary(&mut self) -> Result<Bytes> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String kept in the receive buffer (topics are stored and fanned out,
    /// so sharing the bytes saves a copy per message).
    fn utf8(&mut self) -> Result<ByteString> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(NUL_CHAR);
        }
        ByteString::try_from(bytes).map_err(|_| BAD_UTF8)
    }

    fn string(&mut self) -> Result<String> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(NUL_CHAR);
        }
        match std::str::from_utf8(&bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(BAD_UTF8),
        }
    }

    /// Reads a Property Length and returns a reader over exactly those properties.
    fn properties(&mut self) -> Result<Reader> {
        let len = self.vbi()? as usize;
        if len > self.buf.len() {
            return Err(DecodeError::Malformed(
                "[§2.2.2.1] Property Length runs past the end of the packet",
            ));
        }
        Ok(Reader {
            buf: self.buf.split_to(len),
        })
    }

    fn flag(&mut self, message: &'static str) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Protocol(message)),
        }
    }

    fn property(&mut self) -> Result<Property> {
        let id = self.vbi()?;
        let id = u8::try_from(id).unwrap_or(0);
        let property = match id {
            wire::PAYLOAD_FORMAT_INDICATOR => match self.u8()? {
                v @ (0 | 1) => Property::PayloadFormatIndicator(v),
                _ => {
                    return Err(DecodeError::Protocol(
                        "[§3.3.2.3.2] Payload Format Indicator is neither 0 nor 1",
                    ))
                }
            },
            wire::MESSAGE_EXPIRY_INTERVAL => Property::MessageExpiryInterval(self.u32()?),
            wire::CONTENT_TYPE => Property::ContentType(self.string()?),
            wire::RESPONSE_TOPIC => {
                let topic = self.string()?;
                if has_wildcard(&topic) {
                    return Err(DecodeError::TopicNameInvalid(
                        "[MQTT-3.3.2-14] Response Topic contains a wildcard",
                    ));
                }
                Property::ResponseTopic(topic)
            }
            wire::CORRELATION_DATA => Property::CorrelationData(self.binary()?),
            wire::SUBSCRIPTION_IDENTIFIER => match self.vbi()? {
                0 => {
                    return Err(DecodeError::Protocol(
                        "[§3.3.2.3.8] [§3.8.2.1.2] Subscription Identifier is 0",
                    ))
                }
                v => Property::SubscriptionIdentifier(v),
            },
            wire::SESSION_EXPIRY_INTERVAL => Property::SessionExpiryInterval(self.u32()?),
            wire::ASSIGNED_CLIENT_IDENTIFIER => Property::AssignedClientIdentifier(self.string()?),
            wire::SERVER_KEEP_ALIVE => Property::ServerKeepAlive(self.u16()?),
            wire::AUTHENTICATION_METHOD => Property::AuthenticationMethod(self.string()?),
            wire::AUTHENTICATION_DATA => Property::AuthenticationData(self.binary()?),
            wire::REQUEST_PROBLEM_INFORMATION => Property::RequestProblemInformation(
                self.flag("[§3.1.2.11.7] Request Problem Information is neither 0 nor 1")?,
            ),
            wire::WILL_DELAY_INTERVAL => Property::WillDelayInterval(self.u32()?),
            wire::REQUEST_RESPONSE_INFORMATION => Property::RequestResponseInformation(
                self.flag("[§3.1.2.11.6] Request Response Information is neither 0 nor 1")?,
            ),
            wire::RESPONSE_INFORMATION => Property::ResponseInformation(self.string()?),
            wire::SERVER_REFERENCE => Property::ServerReference(self.string()?),
            wire::REASON_STRING => Property::ReasonString(self.string()?),
            wire::RECEIVE_MAXIMUM => match self.u16()? {
                0 => {
                    return Err(DecodeError::Protocol(
                        "[§3.1.2.11.3] [§3.2.2.3.3] Receive Maximum is 0",
                    ))
                }
                v => Property::ReceiveMaximum(v),
            },
            wire::TOPIC_ALIAS_MAXIMUM => Property::TopicAliasMaximum(self.u16()?),
            wire::TOPIC_ALIAS => match self.u16()? {
                0 => {
                    return Err(DecodeError::TopicAliasInvalid(
                        "[MQTT-3.3.2-8] Topic Alias is 0",
                    ))
                }
                v => Property::TopicAlias(v),
            },
            wire::MAXIMUM_QOS => match self.u8()? {
                0 => Property::MaximumQos(QoS::AtMostOnce),
                1 => Property::MaximumQos(QoS::AtLeastOnce),
                _ => {
                    return Err(DecodeError::Protocol(
                        "[§3.2.2.3.4] Maximum QoS is neither 0 nor 1",
                    ))
                }
            },
            wire::RETAIN_AVAILABLE => Property::RetainAvailable(
                self.flag("[§3.2.2.3.5] Retain Available is neither 0 nor 1")?,
            ),
            wire::USER_PROPERTY => {
                let key = self.string()?;
                let value = self.string()?;
                Property::User(key, value)
            }
            wire::MAXIMUM_PACKET_SIZE => match self.u32()? {
                0 => {
                    return Err(DecodeError::Protocol(
                        "[§3.1.2.11.4] [§3.2.2.3.6] Maximum Packet Size is 0",
                    ))
                }
                v => Property::MaximumPacketSize(v),
            },
            wire::WILDCARD_SUBSCRIPTION_AVAILABLE => Property::WildcardSubscriptionAvailable(
                self.flag("[§3.2.2.3.11] Wildcard Subscription Available is neither 0 nor 1")?,
            ),
            wire::SUBSCRIPTION_IDENTIFIER_AVAILABLE => Property::SubscriptionIdentifierAvailable(
                self.flag("[§3.2.2.3.12] Subscription Identifiers Available is neither 0 nor 1")?,
            ),
            wire::SHARED_SUBSCRIPTION_AVAILABLE => Property::SharedSubscriptionAvailable(
                self.flag("[§3.2.2.3.13] Shared Subscription Available is neither 0 nor 1")?,
            ),
            _ => {
                return Err(DecodeError::Malformed(
                    "[§2.2.2.2] unknown property identifier",
                ))
            }
        };
        Ok(property)
    }
}
