//! The crate's integration tests, one module per area, linked into one test binary.

// A test fails by panicking: what the modules share may unwrap and panic as they do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod config_check;
mod log_format;
