//! `gateway-bench`: an MQTT load generator built on the gateway's own sans-io codec.
//!
//! Every client lives in one process, so publishers stamp each payload with nanoseconds
//! since a shared start `Instant` and subscribers measure publish-to-delivery latency on the
//! same clock. Payloads also carry the publisher id and a per-publisher sequence number,
//! which is how loss, duplication and reordering are counted exactly.

pub mod client;
pub mod coap;
pub mod conn;
pub mod error;
pub mod payload;
pub mod publisher;
pub mod report;
pub mod scenario;
pub mod subscriber;
pub mod sys;
pub mod tracker;

pub use error::BenchError;
