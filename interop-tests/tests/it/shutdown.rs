//! Graceful shutdown: on SIGTERM the gateway tells every MQTT 5 client why it is going
//! (DISCONNECT 0x8B, server shutting down), closes 3.x clients and connections that never
//! sent CONNECT, and exits without waiting for any of them.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::net::TcpStream;
use std::time::Duration;

use interop_tests::script::{Lib, ScriptClient};
use interop_tests::{unique_client_id, Broker, Version};

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn sigterm_disconnects_every_client_with_0x8b_and_exits() {
    let Some(mut broker) = Broker::start_gateway_only("a gateway this test stops", &[]) else {
        return;
    };
    let mut v5_clients: Vec<ScriptClient> = Lib::ALL
        .iter()
        .map(|&lib| ScriptClient::connected(lib, Version::V5, &broker, &unique_client_id("stop5")))
        .collect();
    let mut v311 = ScriptClient::connected(
        Lib::Paho,
        Version::V311,
        &broker,
        &unique_client_id("stop3"),
    );
    // Holds a connection in the handshake phase: it must not delay the exit.
    let _silent = TcpStream::connect(broker.addr()).expect("open a connection");

    let took = broker.terminate();
    assert!(
        took.is_some(),
        "the gateway did not exit after SIGTERM\n{}",
        broker.log_tail()
    );

    for client in &mut v5_clients {
        let end = client.expect_one_of(&["server_disconnect", "connection_lost"], TIMEOUT);
        assert_eq!(
            end["event"],
            "server_disconnect",
            "{}: an MQTT 5 client is told why the server closes",
            client.name()
        );
        assert_eq!(
            end["reason_code"],
            0x8B,
            "{}: DISCONNECT reason 0x8B (server shutting down)",
            client.name()
        );
    }
    v311.expect_event("connection_lost", TIMEOUT);
}
