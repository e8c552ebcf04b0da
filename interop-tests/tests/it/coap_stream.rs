//! CoAP over TCP and WebSocket (RFC 8323): aiocoap's `coap+tcp` and `coap+ws` transports
//! on one side, mosquitto clients on the MQTT side; a raw TCP socket for the signalling
//! messages (CSM, Ping/Pong, Abort) no client sends on demand.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use interop_tests::coap::publish_and_observe;
use interop_tests::{
    unique_client_id, unique_topic, AiocoapClient, Broker, MosquittoSub, Setting, Version, TIMEOUT,
};

fn gateway(settings: &[Setting]) -> Option<Broker> {
    if settings.is_empty() {
        Some(Broker::start())
    } else {
        Broker::start_gateway_only("CoAP over TCP and WebSocket listeners", settings)
    }
}

#[test]
fn aiocoap_publishes_and_observes_over_tcp() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    let mut client = AiocoapClient::spawn_to(format!(
        "coap+tcp://{}:{}",
        broker.host, broker.coap_tcp_port
    ));
    publish_and_observe(&broker, &mut client, "coap-tcp");
}

#[test]
fn aiocoap_publishes_and_observes_over_websocket() {
    let Some(broker) = gateway(&[Setting::new(
        "GATEWAY_GATEWAY__COAP__LISTENERS__WS__DEFAULT__ENABLE",
        "true",
    )]) else {
        return;
    };
    let port = broker.coap_ws_port;
    let mut client = AiocoapClient::spawn_to(format!("coap+ws://{}:{port}", broker.host));
    publish_and_observe(&broker, &mut client, "coap-ws");
}

#[test]
fn connection_mode_works_over_tcp() {
    let Some(broker) = gateway(&[Setting::new(
        "GATEWAY_GATEWAY__COAP__CONNECTION_REQUIRED",
        "true",
    )]) else {
        return;
    };
    let topic = unique_topic("coap-tcp-conn");
    let id = unique_client_id("tcpconn");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&topic], 1, &[]);
    let mut client = AiocoapClient::spawn_to(format!(
        "coap+tcp://{}:{}",
        broker.host, broker.coap_tcp_port
    ));
    let created = client.request(
        "POST",
        &format!("/mqtt/connection?clientid={id}"),
        b"",
        false,
    );
    assert_eq!(created.code, "2.01");
    let token = String::from_utf8(created.payload).unwrap();
    client.publishes_only_with_token(&topic, &id, &token, &mut sub);
}

/// Reads one RFC 8323 TCP message: (code, token, options and payload).
fn read_message(socket: &mut TcpStream) -> (u8, Vec<u8>, Vec<u8>) {
    let mut first = [0u8; 1];
    socket.read_exact(&mut first).unwrap();
    let extended = match first[0] >> 4 {
        13 => 1,
        14 => 2,
        15 => 4,
        _ => 0,
    };
    let mut length_bytes = vec![0u8; extended];
    socket.read_exact(&mut length_bytes).unwrap();
    let offset = match extended {
        1 => 13,
        2 => 269,
        4 => 65_805,
        _ => usize::from(first[0] >> 4),
    };
    let length = offset
        + length_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let mut code = [0u8; 1];
    socket.read_exact(&mut code).unwrap();
    let mut token = vec![0u8; usize::from(first[0] & 0x0F)];
    socket.read_exact(&mut token).unwrap();
    let mut rest = vec![0u8; length];
    socket.read_exact(&mut rest).unwrap();
    (code[0], token, rest)
}

fn connect(broker: &Broker) -> TcpStream {
    let socket = TcpStream::connect((broker.host.as_str(), broker.coap_tcp_port)).unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket
}

#[test]
fn csm_ping_pong_and_abort_on_a_raw_connection() {
    let Some(broker) = gateway(&[]) else {
        return;
    };
    let mut socket = connect(&broker);
    // Our CSM comes first, unasked, with Max-Message-Size (option 2) = the configured 1 MiB.
    let (code, token, rest) = read_message(&mut socket);
    assert_eq!((code, token.len()), (0xE1, 0), "a CSM first");
    assert_eq!(rest, [0x23, 0x10, 0x00, 0x00], "Max-Message-Size 1048576");

    socket.write_all(&[0x00, 0xE1]).unwrap();
    // Ping with a token and Custody (option 2, empty): Pong with the token and Custody.
    socket.write_all(&[0x12, 0xE2, 0xAB, 0xCD, 0x20]).unwrap();
    assert_eq!(
        read_message(&mut socket),
        (0xE3, vec![0xAB, 0xCD], vec![0x20])
    );
    // A plain Ping, a plain Pong.
    socket.write_all(&[0x00, 0xE2]).unwrap();
    assert_eq!(read_message(&mut socket), (0xE3, vec![], vec![]));

    // A token length of 9 is malformed: Abort with a diagnostic, then the close.
    socket.write_all(&[0x09, 0x02]).unwrap();
    let (code, _, rest) = read_message(&mut socket);
    assert_eq!(code, 0xE5, "Abort");
    let diagnostic = String::from_utf8_lossy(&rest[1..]).into_owned();
    assert_eq!(rest[0], 0xFF, "a payload only: {rest:?}");
    assert!(diagnostic.contains("token length 9"), "{diagnostic}");
    let mut byte = [0u8; 1];
    assert_eq!(socket.read(&mut byte).unwrap(), 0, "closed after the Abort");
    // What the gateway says of it; another broker's log is not at hand.
    assert!(
        !broker.is_gateway() || broker.log_tail().contains("malformed CoAP message"),
        "log:\n{}",
        broker.log_tail()
    );

    // A request before the client's CSM is aborted too (RFC 8323 5.3).
    let mut early = connect(&broker);
    assert_eq!(read_message(&mut early).0, 0xE1);
    early.write_all(&[0x01, 0x01, 0x7E]).unwrap();
    let (code, _, rest) = read_message(&mut early);
    assert_eq!(code, 0xE5);
    assert!(String::from_utf8_lossy(&rest).contains("CSM"), "{rest:?}");

    // A message announcing more than our Max-Message-Size is refused from its header.
    let mut large = connect(&broker);
    assert_eq!(read_message(&mut large).0, 0xE1);
    large.write_all(&[0x00, 0xE1]).unwrap();
    large.write_all(&[0xF0, 0x00, 0x20, 0x00, 0x00]).unwrap();
    let (code, _, rest) = read_message(&mut large);
    assert_eq!(code, 0xE5);
    assert!(
        String::from_utf8_lossy(&rest).contains("Max-Message-Size"),
        "{rest:?}"
    );

    // Other clients are unaffected.
    let mut fine = connect(&broker);
    assert_eq!(read_message(&mut fine).0, 0xE1);
    fine.write_all(&[0x00, 0xE1, 0x01, 0xE2, 0x07]).unwrap();
    assert_eq!(read_message(&mut fine), (0xE3, vec![0x07], vec![]));
    // Release closes it cleanly.
    fine.write_all(&[0x00, 0xE4]).unwrap();
    fine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(fine.read(&mut byte).unwrap(), 0);
}
