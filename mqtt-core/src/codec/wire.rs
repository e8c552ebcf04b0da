//! Numbers of the wire format shared by the decoder and the encoder, so the two cannot
//! disagree about an identifier or about which reason codes a packet may carry.

use super::packet::ReasonCode;

pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;
pub(crate) const AUTH: u8 = 15;

/// The largest value a four-byte Variable Byte Integer can hold (§1.5.5).
pub(crate) const VBI_MAX: u32 = 268_435_455;

/// Bytes a Variable Byte Integer of `value` takes; `None` past [`VBI_MAX`].
pub(crate) fn vbi_len(value: usize) -> Option<usize> {
    match value {
        0..=127 => Some(1),
        128..=16_383 => Some(2),
        16_384..=2_097_151 => Some(3),
        2_097_152..=268_435_455 => Some(4),
        _ => None,
    }
}

// Property identifiers (5.0 §2.2.2.2, Table 2-4).
pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Reason codes each 5.0 packet type may carry (Tables 3-1, 3-4 .. 3-11).
pub(crate) fn connack_code_valid(code: ReasonCode) -> bool {
    matches!(
        code.0,
        0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
    )
}

/// PUBACK and PUBREC share one table.
pub(crate) fn puback_code_valid(code: ReasonCode) -> bool {
    matches!(
        code.0,
        0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
    )
}

/// PUBREL and PUBCOMP share one table.
pub(crate) fn pubrel_code_valid(code: ReasonCode) -> bool {
    matches!(code.0, 0x00 | 0x92)
}

pub(crate) fn suback_code_valid(code: ReasonCode) -> bool {
    matches!(
        code.0,
        0x00 | 0x01 | 0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
    )
}

pub(crate) fn unsuback_code_valid(code: ReasonCode) -> bool {
    matches!(code.0, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

pub(crate) fn disconnect_code_valid(code: ReasonCode) -> bool {
    matches!(
        code.0,
        0x00 | 0x04
            | 0x80..=0x83
            | 0x87
            | 0x89
            | 0x8B
            | 0x8D..=0x90
            | 0x93..=0xA2
    )
}

pub(crate) fn auth_code_valid(code: ReasonCode) -> bool {
    matches!(code.0, 0x00 | 0x18 | 0x19)
}

/// 3.x CONNACK return codes (3.1.1 Table 3.1) in their 5.0 spelling, indexed by return code.
pub(crate) const V3_CONNACK_CODES: [ReasonCode; 6] = [
    ReasonCode::SUCCESS,
    ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
    ReasonCode::SERVER_UNAVAILABLE,
    ReasonCode::BAD_USER_NAME_OR_PASSWORD,
    ReasonCode::NOT_AUTHORIZED,
];

/// A shared subscription filter (5.0 §4.8.2): No Local is forbidden on these.
pub(crate) fn is_shared_filter(filter: &str) -> bool {
    filter.starts_with("$share/")
}
