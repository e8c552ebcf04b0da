//! The decoder as a stream consumer: resuming across reads, refusing early, and never
//! panicking on any input.

// Test code: a panic is how a test fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use crate::common;

use bytes::BytesMut;
use common::*;
use mqtt_core::codec::*;
use proptest::collection::vec;
use proptest::prelude::*;

use ProtocolVersion::{V3_1_1, V5};

/// Feeds `bytes` to `dec` in the given chunk sizes (cycled), collecting packets until an
/// error or the end of input.
fn feed(dec: &mut Decoder, bytes: &[u8], chunks: &[usize]) -> (Vec<Packet>, Option<DecodeError>) {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = chunks[i % chunks.len()].max(1).min(bytes.len() - at);
        i += 1;
        buf.extend_from_slice(&bytes[at..at + n]);
        at += n;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => break,
                Err(e) => return (packets, Some(e)),
            }
        }
    }
    (packets, None)
}

fn stream_of(packets: &[Packet], v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        encode(p, v, &mut out).unwrap();
    }
    out.to_vec()
}

fn session(v: ProtocolVersion) -> Vec<Packet> {
    vec![
        Packet::Connect(Box::new(Connect {
            protocol: v,
            clean_start: true,
            keep_alive: 30,
            client_id: "c".into(),
            will: None,
            username: Some("u".into()),
            password: Some(bytes::Bytes::from_static(b"p")),
            properties: ConnectProperties::default(),
        })),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("a/#".into(), SubscriptionOptions::default())],
            ..Subscribe::default()
        }),
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: bytestring::ByteString::from_static("a/b"),
            packet_id: 2,
            payload: bytes::Bytes::from(vec![7u8; 300]),
            ..Publish::default()
        }),
        Packet::PubAck(PubResponse {
            packet_id: 2,
            ..PubResponse::default()
        }),
        Packet::PingReq,
        Packet::Disconnect(Box::default()),
    ]
}

#[test]
fn byte_at_a_time_yields_the_same_packets() {
    for v in VERSIONS {
        let packets = session(v);
        let bytes = stream_of(&packets, v);
        let mut dec = Decoder::new(1024);
        let (got, err) = feed(&mut dec, &bytes, &[1]);
        assert_eq!(err, None);
        assert_eq!(got, packets, "{v:?}");
        assert_eq!(dec.version(), Some(v));
        assert!(!dec.has_partial_packet());
    }
}

#[test]
fn partial_packet_keeps_its_fixed_header() {
    let p = Packet::Publish(Publish {
        topic: bytestring::ByteString::from_static("t"),
        payload: bytes::Bytes::from(vec![1u8; 200]),
        ..Publish::default()
    });
    let bytes = stream_of(std::slice::from_ref(&p), V3_1_1);
    let mut dec = Decoder::with_version(V3_1_1, 1024);
    let mut buf = BytesMut::from(&bytes[..10]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    // The three header bytes are consumed and remembered; the body is left in place.
    assert!(dec.has_partial_packet());
    assert_eq!(buf.len(), 7);
    buf.extend_from_slice(&bytes[10..]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(p)));
    assert!(!dec.has_partial_packet());
    assert!(buf.is_empty());
}

#[test]
fn too_large_is_refused_before_the_body_arrives() {
    let mut dec = Decoder::with_version(V5, 100);
    // PUBLISH claiming 1 MiB: refused from the four header bytes alone.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x40][..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(DecodeError::PacketTooLarge {
            size: 5 + (1 << 20) - 1,
            max: 100
        })
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 1, max: 0 }.reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
}

#[test]
fn max_packet_size_can_change_between_packets() {
    let small = stream_of(&[Packet::PingReq], V5);
    let mut dec = Decoder::with_version(V5, 2);
    let mut buf = BytesMut::from(&small[..]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(Packet::PingReq)));
    dec.set_max_packet_size(1);
    let mut buf = BytesMut::from(&small[..]);
    assert!(matches!(
        dec.decode(&mut buf),
        Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
    ));
}

#[test]
fn version_is_known_when_the_rest_of_connect_is_rejected() {
    // 5.0 CONNECT with the reserved flag set: the caller must still answer in 5.0 form.
    let mut buf = BytesMut::from(
        &[
            0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x03, 0x00, 0x3C, 0x00, 0x00,
            0x01, b'a',
        ][..],
    );
    let mut dec = Decoder::new(1024);
    let err = dec.decode(&mut buf).unwrap_err();
    assert_eq!(err.reason_code(), ReasonCode::MALFORMED_PACKET);
    assert_eq!(dec.version(), Some(V5));
}

#[test]
fn unsupported_version_reports_name_and_level() {
    let mut buf = BytesMut::from(
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x3C, 0x00, 0x01,
            b'a',
        ][..],
    );
    let mut dec = Decoder::new(1024);
    let err = dec.decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedProtocolVersion {
            name: "MQTT".into(),
            level: 7
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    assert_eq!(dec.version(), None);
}

#[test]
fn publish_payload_and_topic_share_the_receive_buffer() {
    let p = Packet::Publish(Publish {
        topic: bytestring::ByteString::from_static("zero/copy"),
        payload: bytes::Bytes::from(vec![9u8; 64]),
        ..Publish::default()
    });
    let mut buf = BytesMut::with_capacity(4096);
    encode(&p, V3_1_1, &mut buf).unwrap();
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let mut dec = Decoder::with_version(V3_1_1, 4096);
    let Some(Packet::Publish(got)) = dec.decode(&mut buf).unwrap() else {
        panic!("not a PUBLISH")
    };
    let inside = |ptr: *const u8| (start..end).contains(&(ptr as usize));
    assert!(inside(got.payload.as_ptr()), "payload was copied");
    assert!(inside(got.topic.as_bytes().as_ptr()), "topic was copied");
}

#[test]
fn reason_codes_of_errors() {
    assert_eq!(
        DecodeError::Malformed("x").reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        DecodeError::Protocol("x").reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
    assert_eq!(
        DecodeError::TopicNameInvalid("x").reason_code(),
        ReasonCode::TOPIC_NAME_INVALID
    );
    assert_eq!(
        DecodeError::TopicAliasInvalid("x").reason_code(),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
}

/// Decoding anything must not panic; whatever does decode must survive a round trip.
fn check_any_input(dec: &mut Decoder, bytes: &[u8], chunks: &[usize]) {
    let (packets, _) = feed(dec, bytes, chunks);
    let Some(v) = dec.version() else {
        assert!(packets.is_empty());
        return;
    };
    for p in packets {
        let mut out = BytesMut::new();
        // A CONNECT decoded on a connection of another version keeps its own version.
        let pv = match &p {
            Packet::Connect(c) => c.protocol,
            _ => v,
        };
        encode(&p, pv, &mut out).unwrap_or_else(|e| panic!("re-encoding {p:?}: {e}"));
        assert_eq!(encoded_len(&p, pv).unwrap(), out.len());
        let mut again = Decoder::with_version(pv, u32::MAX);
        assert_eq!(again.decode(&mut out), Ok(Some(p)));
        assert!(out.is_empty());
    }
}

fn decoders() -> Vec<Decoder> {
    vec![
        Decoder::new(4096),
        Decoder::with_version(ProtocolVersion::V3_1, 4096),
        Decoder::with_version(V3_1_1, 4096),
        Decoder::with_version(V5, 4096),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..600),
        chunks in vec(1..64usize, 1..8),
    ) {
        for mut dec in decoders() {
            check_any_input(&mut dec, &bytes, &chunks);
        }
    }

    /// Random bytes rarely get past the fixed header; mutated valid packets reach deep.
    #[test]
    fn mutated_packets_never_panic(
        (v, packets) in version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..4))),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = stream_of(&packets, v);
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let mut dec = Decoder::with_version(v, 1 << 16);
        check_any_input(&mut dec, &bytes, &[7]);
        // The same bytes read by a decoder of another version.
        let other = if v.is_v5() { V3_1_1 } else { V5 };
        let mut dec = Decoder::with_version(other, 1 << 16);
        check_any_input(&mut dec, &bytes, &[bytes.len().max(1)]);
    }

    #[test]
    fn generated_streams_split_anywhere_decode_the_same(
        (v, packets) in version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..6))),
        chunks in vec(1..40usize, 1..6),
    ) {
        let bytes = stream_of(&packets, v);
        let mut dec = Decoder::with_version(v, u32::MAX);
        let (got, err) = feed(&mut dec, &bytes, &chunks);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, packets);
        prop_assert!(!dec.has_partial_packet());
    }
}
