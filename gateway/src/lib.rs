//! What the gateway binary shares with its tests: the log it installs, and its notices to
//! a service manager.

pub mod admin;
pub mod logging;
pub mod systemd;
