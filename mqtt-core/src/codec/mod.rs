//! Sans-io MQTT codec: bytes in, packets out, with every rule of the specs checked.
//!
//! The decoder keeps the fixed header it has already parsed, so a packet that arrives in
//! pieces is not re-parsed from the start on every read.

mod decode;
mod encode;
mod error;
mod packet;
mod wire;

pub use decode::Decoder;
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;
