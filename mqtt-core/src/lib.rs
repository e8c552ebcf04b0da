//! The MQTT core every adapter stands on: codec, topics, subscription index, router,
//! retained store, the unified session model and the auth hooks.
//!
//! Everything here is sans-io: no socket, no clock. Callers pass `now` in.

pub mod auth;
pub mod codec;
pub mod topic;
pub mod trie;
