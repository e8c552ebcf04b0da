//! What the LwM2M channel's tests share: the gateway's settings, the requests a device
//! sends and the reading of what the channel sends back.

// Each test file uses its own part of these.
#![allow(dead_code)]

use std::sync::Arc;

use adapter_kit::coap::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use adapter_lwm2m::{ObjectRegistry, Settings};
use bytes::Bytes;
use mqtt_core::testing;

/// The default UDP listener's settings with the built-in objects, its datagrams capped at
/// 1152 bytes.
pub fn settings() -> Settings {
    let config = testing::default_config();
    let listener = gateway_config::UdpListenerConfig {
        max_packet_size: 1152,
        ..config.gateway.lwm2m.listeners.udp["default"].clone()
    };
    Settings::from_config(
        Arc::from("udp:test"),
        &config.gateway.lwm2m,
        &listener,
        Arc::new(ObjectRegistry::built_in()),
    )
}

/// A confirmable request from the device with no payload yet, its token made of its
/// message id.
pub fn confirmable(method: RequestType, id: u16, path: &[&str], queries: &[&str]) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(method);
    packet.header.message_id = id;
    packet.set_token(id.to_be_bytes().to_vec());
    for segment in path {
        packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    for query in queries {
        packet.add_option(CoapOption::UriQuery, query.as_bytes().to_vec());
    }
    packet
}

/// A confirmable request from the device carrying `payload`, as a datagram.
pub fn request(
    method: RequestType,
    id: u16,
    path: &[&str],
    queries: &[&str],
    payload: &[u8],
) -> Bytes {
    let mut packet = confirmable(method, id, path, queries);
    packet.payload = payload.to_vec();
    Bytes::from(packet.to_bytes().unwrap())
}

/// The datagrams the channel sent, each of which must be valid CoAP.
pub fn decode(out: Vec<Bytes>) -> Vec<Packet> {
    out.iter().map(|d| Packet::from_bytes(d).unwrap()).collect()
}
