//! Sans-io MQTT codec: bytes in, packets out, with every rule of the specs checked.
//!
//! One [`Decoder`] per connection. A server-side decoder learns the version (3.1, 3.1.1 or
//! 5.0) from the first CONNECT; it keeps the fixed header it has already parsed, so a
//! packet that arrives in pieces is not re-parsed from the start on every read, and it
//! refuses an oversized packet from its fixed header, before the body is buffered. Each
//! [`DecodeError`] names the clause it enforces and maps to the 5.0 reason code to close
//! the connection with.
//!
//! [`encode`] writes one packet for a given version, dropping what the version cannot carry
//! (properties and reason codes before 5.0) and mapping reason codes to 3.x return codes;
//! [`encoded_len`] gives its exact size without encoding it.

mod decode;
mod encode;
mod error;
mod packet;
mod wire;

pub use decode::Decoder;
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::*;

/// The largest packet MQTT can encode: a fixed header byte, a four-byte Remaining Length and
/// its largest value.
pub const LARGEST_PACKET: u32 = 1 + 4 + wire::VBI_MAX;
