use bytes::BytesMut;

use super::error::DecodeError;
use super::packet::{Packet, ProtocolVersion};

/// A resumable decoder for one connection.
///
/// A server-side decoder starts without a version: the first packet must be CONNECT, whose
/// protocol name and level fix the version for the rest of the connection.
#[derive(Debug)]
pub struct Decoder {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl Decoder {
    pub fn new(max_packet_size: u32) -> Self {
        Decoder { version: None, max_packet_size }
    }

    pub fn with_version(version: ProtocolVersion, max_packet_size: u32) -> Self {
        Decoder { version: Some(version), max_packet_size }
    }

    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.max_packet_size = max_packet_size;
    }

    /// `Ok(None)` means more bytes are needed; consumed bytes are split off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let _ = buf;
        Err(DecodeError::Malformed("decoder not written yet"))
    }
}
