//! The crate's integration tests, one module per area, linked into one test binary.

// A test fails by panicking: what the modules share may unwrap and panic as they do.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod admin;
mod auth;
mod auth_matrix;
mod coap;
mod coap_stream;
mod coap_tls;
mod conformance;
mod dashboard;
mod downlink;
mod dtls;
mod dtls_aiocoap;
mod dtls_mbedtls;
mod flapping;
mod flow_control;
mod listeners;
mod lwm2m;
mod max_connections;
mod mosquitto_acl;
mod mqttsn;
mod packet_size;
mod presence;
mod properties;
mod proxy_protocol;
mod pubsub;
mod quic;
mod rate_limits;
mod reload;
mod retained;
mod robustness;
mod session;
mod shared;
mod shutdown;
mod stomp;
mod stomp_tls;
mod storage;
mod sys;
mod systemd_notify;
mod tls;
mod websocket;
mod will;
