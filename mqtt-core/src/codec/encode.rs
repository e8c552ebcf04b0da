use bytes::BytesMut;

use super::error::EncodeError;
use super::packet::{Packet, ProtocolVersion};

/// Appends `packet`, encoded for `version`, to `out`.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
    let _ = (packet, version, out);
    Err(EncodeError::Invalid("encoder not written yet"))
}

/// The full encoded size of `packet` (fixed header included), without encoding it.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let _ = (packet, version);
    Err(EncodeError::Invalid("encoder not written yet"))
}
