//! What the gateway binary shares with its tests: the log it installs, its notices to a
//! service manager, the admin API and the reloads it asks for.

pub mod admin;
pub mod logging;
pub mod reload;
pub mod systemd;
