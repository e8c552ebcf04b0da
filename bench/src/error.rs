use std::time::Duration;

use mqtt_core::codec::{DecodeError, EncodeError};

/// Why a benchmark client failed. Each one ends that client's connection; the run goes on
/// and reports the failure beside its figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker sent bytes that do not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    #[error("the broker refused the connection: CONNACK reason code 0x{0:02X}")]
    Refused(u8),
    #[error("the broker refused the subscription to {filter:?}: SUBACK reason code 0x{code:02X}")]
    SubscribeRefused { filter: String, code: u8 },
    #[error("expected {expected}, the broker sent {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker sent DISCONNECT with reason code 0x{0:02X}")]
    Disconnected(u8),
    #[error("a client task failed: {0}")]
    Task(String),
    #[error("latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("DTLS: {0}")]
    Dtls(String),
    #[error("CoAP: {0}")]
    Coap(String),
    #[error("no {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
}

impl BenchError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> BenchError {
        move |source| BenchError::Io { context, source }
    }
}
