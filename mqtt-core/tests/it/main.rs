//! The crate's integration tests, one module per area, linked into one test binary.

// A test fails by panicking: what the modules share may unwrap and panic as they do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod arrival_order;
mod auth;
mod channel;
mod codec_roundtrip;
mod codec_stream;
mod codec_vectors;
mod common;
mod drop_reports;
mod flapping;
mod mosquitto_auth;
mod shared_redispatch;
