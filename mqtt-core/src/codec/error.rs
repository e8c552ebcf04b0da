use super::packet::ReasonCode;

/// Why a byte stream could not be decoded. The message of each error names the normative
/// statement (or, where the spec has none, the section) that the bytes break.
///
/// After any error the connection must be closed: the decoder does not try to resynchronise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes cannot be parsed as the packet they claim to be (5.0: 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The packet parses but carries data the protocol does not allow (5.0: 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// CONNECT named a protocol name and level this server does not speak (5.0: CONNACK 0x84,
    /// 3.x: CONNACK return code 1).
    #[error("[MQTT-3.1.2-1] [MQTT-3.1.2-2] unsupported protocol: name {name:?}, level {level}")]
    UnsupportedProtocolVersion { name: String, level: u8 },
    /// The whole packet, fixed header included, is larger than the limit (5.0: 0x95).
    #[error("packet of {size} bytes exceeds the maximum packet size {max} [MQTT-3.2.2-15]")]
    PacketTooLarge { size: usize, max: u32 },
    /// A topic name that parses but can never be published to: wildcards, or empty where no
    /// topic alias can stand for it (5.0: 0x90, also in CONNACK for a bad will topic).
    #[error("topic name invalid: {0}")]
    TopicNameInvalid(&'static str),
    /// A Topic Alias property of 0 (5.0: 0x94).
    #[error("topic alias invalid: {0}")]
    TopicAliasInvalid(&'static str),
}

impl DecodeError {
    /// The reason code a 5.0 peer is sent when this error closes its connection.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::UnsupportedProtocolVersion { .. } => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::TopicNameInvalid(_) => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::TopicAliasInvalid(_) => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }
}

/// Why a packet could not be encoded. These are bugs in the caller (a value the wire format
/// cannot carry, or one the peer would reject), never network input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{packet} does not exist in MQTT {version}")]
    NotInVersion {
        packet: &'static str,
        version: &'static str,
    },
    #[error("{0} is too long to encode")]
    TooLong(&'static str),
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}
