//! The MQTT core every adapter stands on: codec, topics, subscription index, router,
//! retained store, the unified session model and the auth hooks.
//!
//! The protocol logic here is sans-io: no socket, no clock. Callers pass `now` in.

pub mod arrival;
pub mod auth;
pub mod banned;
pub mod broker;
pub mod client;
pub mod clients;
pub mod codec;
pub mod flapping;
pub mod message;
pub mod mountpoint;
pub mod presence;
pub mod protocol;
pub mod rate;
pub mod retained;
pub mod router;
pub mod session;
pub mod storage;
pub mod sys;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topic;
pub mod trie;
