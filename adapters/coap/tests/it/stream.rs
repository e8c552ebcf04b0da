//! CoAP over TCP and WebSocket (RFC 8323) without a socket: the framing as a property round
//! trip, and the channel behind the kit's stream contract on a virtual clock.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_coap::framing::{self, Frame, FrameError, Framing};
use adapter_coap::{CoapChannel, CoapStream, Settings};
use adapter_kit::coap::{
    decode_framed, encode_framed, CoapOption, MessageClass, Packet, RequestType, ResponseType,
    TransmissionParams,
};
use adapter_kit::StreamChannel;
use bytes::{Bytes, BytesMut};
use common::request;
use mqtt_core::broker::Broker;
use mqtt_core::codec::QoS;
use mqtt_core::message::Message as Routed;
use mqtt_core::protocol::Flow;
use mqtt_core::testing::{broker, route, NoWakeup};
use proptest::prelude::*;

fn frame_strategy() -> impl Strategy<Value = Frame> {
    (
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..=8),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            // Across the 2-byte extended length and into the 4-byte one.
            (65_700usize..65_900).prop_map(|n| vec![0x5A; n]),
        ],
    )
        .prop_map(|(code, token, body)| Frame {
            code,
            token: Bytes::from(token),
            body: Bytes::from(body),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn frames_round_trip_whole_and_in_pieces(
        frames in proptest::collection::vec(frame_strategy(), 1..4),
        websocket in any::<bool>(),
        cut in 1usize..97,
    ) {
        let framing = if websocket { Framing::WebSocket } else { Framing::Tcp };
        let mut wire = BytesMut::new();
        for frame in &frames {
            framing::encode(framing, frame, &mut wire);
        }
        // Fed in pieces of `cut` bytes, each frame comes out once it is whole.
        let mut input = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(cut) {
            input.extend_from_slice(piece);
            while let Some(frame) = framing::decode(framing, &mut input, 1 << 20).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert!(input.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        websocket in any::<bool>(),
    ) {
        let framing = if websocket { Framing::WebSocket } else { Framing::Tcp };
        let mut input = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = framing::decode(framing, &mut input, 1152) {
            let _ = decode_framed(frame.code, &frame.token, &frame.body);
        }
    }
}

#[test]
fn a_packet_survives_encode_framed_and_decode_framed() {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Request(RequestType::Post);
    packet.set_token(vec![1, 2, 3]);
    packet.add_option(CoapOption::UriPath, b"ps".to_vec());
    packet.add_option(CoapOption::UriPath, b"a".to_vec());
    packet.payload = b"body".to_vec();
    let (code, token, body) = encode_framed(&packet).unwrap();
    let back = decode_framed(code, &token, &body).unwrap();
    assert_eq!(back.header.code, packet.header.code);
    assert_eq!(back.get_token(), packet.get_token());
    assert_eq!(back.payload, packet.payload);
    assert_eq!(
        back.get_option(CoapOption::UriPath),
        packet.get_option(CoapOption::UriPath)
    );
    // A payload marker with nothing after it is a format error, as in a datagram.
    assert!(decode_framed(0x02, b"", &[0xFF]).is_err());
}

/// The datagram listener's settings on a TCP listener, whose messages may be larger.
fn settings() -> Settings {
    let datagram = common::settings();
    Settings {
        listener: Arc::from("tcp:test"),
        transmission: TransmissionParams {
            max_message_size: 4096,
            ..datagram.transmission
        },
        ..datagram
    }
}

struct Client {
    stream: CoapStream,
    input: BytesMut,
    closed: bool,
}

impl Client {
    fn connect(broker: &Arc<Broker>, now: Instant) -> (Client, Vec<Frame>) {
        let channel = CoapChannel::new_stream(
            broker.clone(),
            Arc::new(settings()),
            None,
            Arc::new(NoWakeup),
            Framing::Tcp,
            3,
            now,
        );
        let mut client = Client {
            stream: CoapStream::new(channel),
            input: BytesMut::new(),
            closed: false,
        };
        let mut out = BytesMut::new();
        client.stream.handle_wakeup(&mut out, now);
        (client, frames(out))
    }

    fn send(&mut self, packet: &Packet, now: Instant) -> Vec<Frame> {
        let (code, token, body) = encode_framed(packet).unwrap();
        let frame = Frame {
            code,
            token: Bytes::from(token),
            body: Bytes::from(body),
        };
        framing::encode(Framing::Tcp, &frame, &mut self.input);
        self.feed(now)
    }

    fn send_raw(&mut self, bytes: &[u8], now: Instant) -> Vec<Frame> {
        self.input.extend_from_slice(bytes);
        self.feed(now)
    }

    fn feed(&mut self, now: Instant) -> Vec<Frame> {
        let mut out = BytesMut::new();
        let flow = self.stream.handle_input(&mut self.input, &mut out, now);
        self.closed |= flow == Flow::Close;
        frames(out)
    }

    fn wake(&mut self, now: Instant) -> Vec<Frame> {
        let mut out = BytesMut::new();
        let flow = self.stream.handle_wakeup(&mut out, now);
        self.closed |= flow == Flow::Close;
        frames(out)
    }

    fn tick(&mut self, now: Instant) -> Vec<Frame> {
        let mut out = BytesMut::new();
        let flow = self.stream.handle_timeout(&mut out, now);
        self.closed |= flow == Flow::Close;
        frames(out)
    }
}

fn frames(mut out: BytesMut) -> Vec<Frame> {
    std::iter::from_fn(|| framing::decode(Framing::Tcp, &mut out, usize::MAX).unwrap()).collect()
}

fn packet(frame: &Frame) -> Packet {
    decode_framed(frame.code, &frame.token, &frame.body).unwrap()
}

#[test]
fn csm_first_then_requests_and_notifications_without_acknowledgements() {
    let now = Instant::now();
    let broker = broker(now);
    let (mut client, opening) = Client::connect(&broker, now);
    assert_eq!(opening.len(), 1);
    assert_eq!(opening[0].code, 0xE1, "our CSM first");
    // Max-Message-Size 4096 (option 2, two bytes).
    assert_eq!(&opening[0].body[..], &[0x22, 0x10, 0x00]);

    // The client's CSM, announcing it takes 2000 bytes.
    assert!(client
        .send_raw(&[0x30, 0xE1, 0x22, 0x07, 0xD0], now)
        .is_empty());
    let answers = client.send(
        &request(RequestType::Get, "/ps/s/+?clientid=tcp1", b"ob", Some(0)),
        now,
    );
    assert_eq!(answers.len(), 1);
    let answer = packet(&answers[0]);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Content)
    );
    assert_eq!(answer.get_token(), b"ob");

    // Confirmable-worthy QoS 1 deliveries go out back to back: nothing waits for an ACK.
    for n in 0..3u8 {
        let _ = route(
            &broker,
            Routed::new(
                format!("s/{n}").into(),
                Bytes::from(vec![n]),
                QoS::AtLeastOnce,
                false,
                now,
            ),
        );
    }
    let notes = client.wake(now);
    assert_eq!(notes.len(), 3);
    let sequences: Vec<u32> = notes
        .iter()
        .map(|note| {
            let note = packet(note);
            assert_eq!(note.get_token(), b"ob");
            note.get_observe_value().unwrap().unwrap()
        })
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");

    // A notification larger than the client's Max-Message-Size is not sent whole.
    let _ = route(
        &broker,
        Routed::new(
            "s/big".into(),
            Bytes::from(vec![0u8; 3000]),
            QoS::AtMostOnce,
            false,
            now,
        ),
    );
    assert!(client.wake(now).is_empty());

    // Unknown methods are 4.05 as over UDP.
    let mut fetch = request(RequestType::Get, "/ps/s?clientid=tcp1", b"f", None);
    fetch.header.code = MessageClass::Request(RequestType::Fetch);
    let answer = packet(&client.send(&fetch, now)[0]);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::MethodNotAllowed)
    );
    assert!(!client.closed);
}

#[test]
fn silence_is_probed_with_a_ping_and_an_unanswered_one_closes() {
    let now = Instant::now();
    let broker = broker(now);
    let (mut client, _) = Client::connect(&broker, now);
    client.send_raw(&[0x00, 0xE1], now);
    let later = now + Duration::from_secs(30);
    assert!(client.stream.next_deadline().unwrap() <= later);
    let ping = client.tick(later);
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].code, 0xE2);
    // The Pong settles it; the next heartbeat probes again.
    assert!(client.send_raw(&[0x00, 0xE3], later).is_empty());
    let again = later + Duration::from_secs(30);
    assert_eq!(client.tick(again)[0].code, 0xE2);
    // Unanswered for MAX_TRANSMIT_WAIT (2 s x 31 here): closed.
    let deadline = client.stream.next_deadline().unwrap();
    assert_eq!(deadline, again + Duration::from_secs(62));
    client.tick(deadline);
    assert!(client.closed);
}

#[test]
fn malformed_input_and_a_missing_csm_are_aborted() {
    let now = Instant::now();
    let broker = broker(now);
    let (mut client, _) = Client::connect(&broker, now);
    let abort = client.send(&request(RequestType::Post, "/ps/a", b"", None), now);
    assert_eq!(abort[0].code, 0xE5);
    assert!(client.closed);

    let (mut client, _) = Client::connect(&broker, now);
    client.send_raw(&[0x00, 0xE1], now);
    // A critical option (1) in a Ping.
    let abort = client.send_raw(&[0x10, 0xE2, 0x10], now);
    assert_eq!(abort[0].code, 0xE5);
    assert!(client.closed);

    let (mut client, _) = Client::connect(&broker, now);
    // An unknown critical option (9) in a CSM: Abort with Bad-CSM-Option 9.
    let abort = client.send_raw(&[0x10, 0xE1, 0x90], now);
    assert_eq!(abort[0].code, 0xE5);
    assert_eq!(&abort[0].body[..2], &[0x21, 0x09]);
    assert!(client.closed);

    for framing in [Framing::Tcp, Framing::WebSocket] {
        let mut input = BytesMut::from(&[0x0A, 0x01][..]);
        let error = framing::decode(framing, &mut input, 1152);
        assert!(
            matches!(
                error,
                Err(FrameError::TokenLength(10)) | Ok(None) | Err(FrameError::TooLarge { .. })
            ),
            "{error:?}"
        );
    }
}

#[test]
fn a_qos_1_publish_is_answered_over_a_stream_once_durable() {
    use mqtt_core::storage::MapStore;

    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = common::broker_with_keeper(&store, "kept/#", now);
    let (mut client, _) = Client::connect(&broker, now);
    client.send_raw(&[0x00, 0xE1], now);
    store.hold_back();
    let mut publish = request(
        RequestType::Post,
        "/ps/kept/a?clientid=tcpd&qos=1",
        b"pb",
        None,
    );
    publish.payload = b"v".to_vec();
    assert!(client.send(&publish, now).is_empty(), "not durable yet");
    store.release();
    let answers = client.wake(now);
    assert_eq!(answers.len(), 1);
    let answer = packet(&answers[0]);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(answer.get_token(), b"pb");
}

#[test]
fn a_kicked_client_over_a_stream_is_sent_a_release_and_closed() {
    let now = Instant::now();
    let broker = broker(now);
    let (mut client, _) = Client::connect(&broker, now);
    client.send_raw(&[0x00, 0xE1], now);
    client.send(
        &request(RequestType::Get, "/ps/s?clientid=tcpk", b"ob", Some(0)),
        now,
    );
    let key = mqtt_core::session::SessionKey {
        namespace: "coap",
        client_id: Arc::from("tcpk"),
    };
    assert!(broker.kick(&key, now));
    let release = client.wake(now);
    assert_eq!(release.len(), 1);
    assert_eq!(release[0].code, 0xE4, "Release (RFC 8323 5.5)");
    assert!(client.closed);
    assert!(broker.session(&key).is_none());
}
