//! What the gateway binary shares with its tests: the log it installs.

pub mod admin;
pub mod logging;
