use super::packet::ReasonCode;

/// Why a byte stream could not be decoded. Each variant names the rule it enforces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("unsupported protocol version: name {name:?}, level {level}")]
    UnsupportedProtocolVersion { name: String, level: u8 },
    #[error("packet of {size} bytes exceeds the maximum packet size {max} [MQTT-3.2.2-15]")]
    PacketTooLarge { size: usize, max: u32 },
}

impl DecodeError {
    /// The reason code a 5.0 peer is sent when this error closes its connection.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::UnsupportedProtocolVersion { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{packet} does not exist in MQTT {version}")]
    NotInVersion { packet: &'static str, version: &'static str },
    #[error("{0} is too long to encode")]
    TooLong(&'static str),
    #[error("invalid value: {0}")]
    Invalid(&'static str),
}
