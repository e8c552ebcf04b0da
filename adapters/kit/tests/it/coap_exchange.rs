//! The CoAP message layer on a virtual clock: duplicate detection, piggybacked answers,
//! retransmission and give-up, Reset matching and the RFC 7252 format rules.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use adapter_kit::coap::{
    CoapOption, Exchange, Inbound, MessageClass, MessageType, Packet, RequestType, ResponseType,
    TransmissionParams,
};
use bytes::Bytes;

const UNDERSTOOD: &[u16] = &[11, 15];

fn params() -> TransmissionParams {
    TransmissionParams {
        // No jitter, so the schedule is exact.
        ack_random_factor: 1.0,
        ..TransmissionParams::rfc7252(UNDERSTOOD)
    }
}

fn exchange() -> Exchange<&'static str> {
    Exchange::new(params(), 42)
}

fn request(kind: MessageType, method: RequestType, message_id: u16, token: &[u8]) -> Vec<u8> {
    let mut packet = Packet::new();
    packet.header.set_type(kind);
    packet.header.code = MessageClass::Request(method);
    packet.header.message_id = message_id;
    packet.set_token(token.to_vec());
    packet.add_option(CoapOption::UriPath, b"ps".to_vec());
    packet.to_bytes().unwrap()
}

fn decode(datagram: &Bytes) -> Packet {
    Packet::from_bytes(datagram).unwrap()
}

fn changed() -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Response(ResponseType::Changed);
    packet
}

#[test]
fn a_confirmable_request_is_answered_piggybacked_and_its_duplicate_gets_the_same_answer() {
    let mut ex = exchange();
    let now = Instant::now();
    let mut out = Vec::new();
    let datagram = request(MessageType::Confirmable, RequestType::Post, 0x1234, b"tk");
    let Inbound::Request(req) = ex.receive(&datagram, now, &mut out) else {
        panic!("expected a request");
    };
    assert!(req.confirmable());
    ex.respond(&req.packet, changed(), now, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    let answer = decode(&out[0]);
    assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(answer.header.message_id, 0x1234);
    assert_eq!(answer.get_token(), b"tk");
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Changed)
    );

    // The duplicate is answered again from memory and not handed to the application.
    let first = out.remove(0);
    let later = now + Duration::from_secs(100);
    assert!(matches!(
        ex.receive(&datagram, later, &mut out),
        Inbound::Handled
    ));
    assert_eq!(out, vec![first]);

    // After EXCHANGE_LIFETIME the id is new again.
    out.clear();
    let much_later = now + Duration::from_secs(248);
    assert!(matches!(
        ex.receive(&datagram, much_later, &mut out),
        Inbound::Request(_)
    ));
}

#[test]
fn a_duplicate_non_confirmable_request_is_dropped_for_non_lifetime() {
    let mut ex = exchange();
    let now = Instant::now();
    let mut out = Vec::new();
    let datagram = request(MessageType::NonConfirmable, RequestType::Post, 7, b"a");
    let Inbound::Request(req) = ex.receive(&datagram, now, &mut out) else {
        panic!("expected a request");
    };
    ex.respond(&req.packet, changed(), now, &mut out).unwrap();
    let answer = decode(&out[0]);
    assert_eq!(answer.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(answer.get_token(), b"a");
    out.clear();
    assert!(matches!(
        ex.receive(&datagram, now + Duration::from_secs(144), &mut out),
        Inbound::Handled
    ));
    assert!(out.is_empty());
    assert!(matches!(
        ex.receive(&datagram, now + Duration::from_secs(146), &mut out),
        Inbound::Request(_)
    ));
}

#[test]
fn a_confirmable_message_is_retransmitted_with_doubling_timeouts_then_given_up() {
    let params = params();
    let counters = params.counters.clone();
    let mut ex: Exchange<&'static str> = Exchange::new(params, 42);
    let start = Instant::now();
    let mut out = Vec::new();
    let id = ex
        .send_confirmable(changed(), "notification", start, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    let original = out.remove(0);
    assert_eq!(decode(&original).header.message_id, id);
    // 2 s, then 4, 8, 16: MAX_RETRANSMIT 4 retransmissions, given up 32 s after the last.
    let mut now = start;
    for (i, wait) in [2u64, 4, 8, 16].into_iter().enumerate() {
        assert_eq!(ex.next_deadline(), Some(now + Duration::from_secs(wait)));
        assert!(ex
            .handle_timeout(
                now + Duration::from_secs(wait) - Duration::from_millis(1),
                &mut out
            )
            .is_empty());
        assert!(out.is_empty(), "early retransmission {i}");
        now += Duration::from_secs(wait);
        assert!(ex.handle_timeout(now, &mut out).is_empty());
        assert_eq!(out, vec![original.clone()], "retransmission {}", i + 1);
        out.clear();
    }
    assert_eq!(ex.next_deadline(), Some(now + Duration::from_secs(32)));
    let given_up = ex.handle_timeout(now + Duration::from_secs(32), &mut out);
    assert_eq!(given_up, vec!["notification"]);
    assert!(out.is_empty());
    // Counted for the listener whose parameters these are.
    assert_eq!(counters.retransmissions.load(Ordering::Relaxed), 4);
    assert_eq!(counters.given_up.load(Ordering::Relaxed), 1);
    assert_eq!(ex.in_flight(), 0);
    assert_eq!(ex.next_deadline(), None);
}

#[test]
fn the_first_timeout_is_drawn_within_the_random_factor() {
    for seed in 0..50 {
        let mut ex: Exchange<()> = Exchange::new(TransmissionParams::rfc7252(UNDERSTOOD), seed);
        let now = Instant::now();
        ex.send_confirmable(changed(), (), now, &mut Vec::new())
            .unwrap();
        let wait = ex.next_deadline().unwrap() - now;
        assert!(
            (Duration::from_secs(2)..=Duration::from_secs(3)).contains(&wait),
            "{wait:?}"
        );
    }
}

#[test]
fn an_acknowledgement_or_reset_settles_the_message_it_names() {
    let mut ex = exchange();
    let now = Instant::now();
    let mut out = Vec::new();
    let first = ex
        .send_confirmable(changed(), "one", now, &mut out)
        .unwrap();
    let second = ex
        .send_confirmable(changed(), "two", now, &mut out)
        .unwrap();
    let ack = [0x60, 0, (first >> 8) as u8, first as u8];
    match ex.receive(&ack, now, &mut out) {
        Inbound::Acknowledged { tag, response } => {
            assert_eq!(tag, "one");
            assert!(response.is_none());
        }
        other => panic!("{other:?}"),
    }
    // A second ACK for the same message is a late duplicate.
    assert!(matches!(ex.receive(&ack, now, &mut out), Inbound::Handled));
    let rst = [0x70, 0, (second >> 8) as u8, second as u8];
    assert!(matches!(
        ex.receive(&rst, now, &mut out),
        Inbound::Reset { tag: Some("two") }
    ));
    assert_eq!(ex.in_flight(), 0);

    // A Reset also answers a non-confirmable message.
    let non = ex
        .send_non_confirmable(changed(), "three", &mut out)
        .unwrap();
    let rst = [0x70, 0, (non >> 8) as u8, non as u8];
    assert!(matches!(
        ex.receive(&rst, now, &mut out),
        Inbound::Reset { tag: Some("three") }
    ));
}

#[test]
fn malformed_confirmable_messages_are_reset_and_others_ignored() {
    let now = Instant::now();
    let cases: &[(&str, Vec<u8>, bool)] = &[
        ("unknown version", vec![0x80, 0x01, 0, 1], false),
        (
            "token length 9",
            {
                let mut d = vec![0x49, 0x01, 0, 1];
                d.extend_from_slice(&[0; 9]);
                d
            },
            true,
        ),
        (
            "payload marker without payload",
            vec![0x40, 0x02, 0, 1, 0xFF],
            true,
        ),
        (
            "empty message with a token",
            vec![0x41, 0x00, 0, 1, 0xAA],
            true,
        ),
        ("reserved class 1", vec![0x40, 0x21, 0, 1], true),
        ("reserved class 7", vec![0x40, 0xE1, 0, 1], true),
        ("option delta 15", vec![0x40, 0x01, 0, 1, 0xF1, 0x00], true),
        (
            "option longer than the message",
            vec![0x40, 0x01, 0, 1, 0xB5, b'p'],
            true,
        ),
        (
            "request in an acknowledgement",
            vec![0x60, 0x01, 0, 1],
            false,
        ),
    ];
    for (what, datagram, reset) in cases {
        let mut out = Vec::new();
        assert!(
            matches!(
                exchange().receive(datagram, now, &mut out),
                Inbound::Handled
            ),
            "{what}"
        );
        if *reset {
            assert_eq!(out, vec![Bytes::from_static(&[0x70, 0, 0, 1])], "{what}");
        } else {
            assert!(out.is_empty(), "{what}");
        }
        // The same as non-confirmable is ignored silently.
        let mut non = datagram.clone();
        if non[0] >> 6 == 1 && (non[0] >> 4) & 3 == 0 {
            non[0] |= 0x10;
            let mut out = Vec::new();
            exchange().receive(&non, now, &mut out);
            assert!(out.is_empty(), "{what} as NON");
        }
    }
    // A CoAP ping is answered with Reset.
    let mut out = Vec::new();
    assert!(matches!(
        exchange().receive(&[0x40, 0, 0x12, 0x34], now, &mut out),
        Inbound::Handled
    ));
    assert_eq!(out, vec![Bytes::from_static(&[0x70, 0, 0x12, 0x34])]);
}

#[test]
fn unknown_methods_get_4_05_and_unknown_critical_options_4_02() {
    let now = Instant::now();
    let code_of = |datagram: &[u8]| {
        let mut out = Vec::new();
        assert!(matches!(
            exchange().receive(datagram, now, &mut out),
            Inbound::Handled
        ));
        let answer = decode(&out[0]);
        assert_eq!(answer.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(answer.get_token(), b"t");
        answer.header.code
    };
    // FETCH (0.05) and an unassigned 0.31.
    for code in [0x05u8, 0x1F] {
        assert_eq!(
            code_of(&[0x41, code, 0, 9, b't']),
            MessageClass::Response(ResponseType::MethodNotAllowed)
        );
    }
    // If-Match (1) is critical and not understood here.
    assert_eq!(
        code_of(&[0x41, 0x01, 0, 9, b't', 0x10]),
        MessageClass::Response(ResponseType::BadOption)
    );
    // Uri-Path repeated is fine; an unknown elective option (2) is ignored.
    let mut out = Vec::new();
    assert!(matches!(
        exchange().receive(
            &[0x41, 0x01, 0, 9, b't', 0x20, 0x91, b'a', 0x01, b'b'],
            now,
            &mut out
        ),
        Inbound::Request(_)
    ));
}

#[test]
fn a_message_over_the_limit_is_refused_before_decoding() {
    let mut ex: Exchange<()> = Exchange::new(
        TransmissionParams {
            max_message_size: 16,
            ..params()
        },
        1,
    );
    let now = Instant::now();
    let mut datagram = vec![0x42, 0x02, 0, 5, b'a', b'b', 0xFF];
    datagram.extend_from_slice(&[0xEE; 20]);
    let mut out = Vec::new();
    assert!(matches!(
        ex.receive(&datagram, now, &mut out),
        Inbound::Handled
    ));
    let answer = decode(&out[0]);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::RequestEntityTooLarge)
    );
    assert_eq!(answer.get_token(), b"ab");
    assert_eq!(answer.header.message_id, 5);
}

#[test]
fn the_remembered_ids_are_bounded() {
    let mut ex: Exchange<()> = Exchange::new(
        TransmissionParams {
            max_remembered: 4,
            ..params()
        },
        1,
    );
    let now = Instant::now();
    let mut out = Vec::new();
    for id in 0..5u16 {
        let datagram = request(MessageType::NonConfirmable, RequestType::Post, id, b"x");
        assert!(matches!(
            ex.receive(&datagram, now, &mut out),
            Inbound::Request(_)
        ));
        ex.respond(
            &Packet::from_bytes(&datagram).unwrap(),
            changed(),
            now,
            &mut out,
        )
        .unwrap();
    }
    // Id 0 was forgotten to make room; 4 is still known.
    let again = |ex: &mut Exchange<()>, id| {
        let datagram = request(MessageType::NonConfirmable, RequestType::Post, id, b"x");
        matches!(
            ex.receive(&datagram, now, &mut Vec::new()),
            Inbound::Request(_)
        )
    };
    assert!(!again(&mut ex, 4));
    assert!(again(&mut ex, 0));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A datagram that is sometimes a well-formed request or message, sometimes not.
    fn datagram() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            (
                0u8..4,
                0u16..8,
                proptest::collection::vec(any::<u8>(), 0..3)
            )
                .prop_map(|(kind, id, token)| {
                    let kind = match kind {
                        0 => MessageType::Confirmable,
                        1 => MessageType::NonConfirmable,
                        2 => MessageType::Acknowledgement,
                        _ => MessageType::Reset,
                    };
                    request(kind, RequestType::Post, id, &token)
                }),
            (0u16..8).prop_map(|id| vec![0x60, 0, 0, id as u8]),
            (0u16..8).prop_map(|id| vec![0x70, 0, 0, id as u8]),
        ]
    }

    proptest! {
        /// Whatever arrives, in whatever order and at whatever pace: no panic, every
        /// datagram sent decodes, and a confirmable request seen again within
        /// EXCHANGE_LIFETIME gets exactly the answer it got the first time.
        #[test]
        fn arbitrary_datagrams_are_survived_and_duplicates_answered_identically(
            steps in proptest::collection::vec((datagram(), 0u64..5_000, any::<bool>()), 1..60),
        ) {
            let mut ex = exchange();
            let start = Instant::now();
            let mut now = start;
            let mut answers: std::collections::HashMap<u16, (Vec<u8>, Bytes, Instant)> =
                std::collections::HashMap::new();
            for (datagram, millis, send_ours) in steps {
                now += Duration::from_millis(millis);
                let mut out = Vec::new();
                if send_ours {
                    let _ = ex.send_confirmable(changed(), "ours", now, &mut out);
                }
                let inbound = ex.receive(&datagram, now, &mut out);
                if let Inbound::Request(req) = inbound {
                    let mut answer = Vec::new();
                    ex.respond(&req.packet, changed(), now, &mut answer).unwrap();
                    if req.confirmable() {
                        answers.insert(
                            req.packet.header.message_id,
                            (datagram.clone(), answer[0].clone(), now),
                        );
                    }
                    out.extend(answer);
                }
                ex.handle_timeout(now, &mut out);
                for sent in &out {
                    prop_assert!(Packet::from_bytes(sent).is_ok(), "{sent:?}");
                }
            }
            // Every confirmable request answered within EXCHANGE_LIFETIME, sent again, gets
            // the same bytes.
            let lifetime = params().exchange_lifetime;
            for (id, (datagram, answer, _)) in answers.into_iter().filter(|(_, (_, _, at))| now < *at + lifetime) {
                let mut out = Vec::new();
                let inbound = ex.receive(&datagram, now, &mut out);
                let duplicate = matches!(inbound, Inbound::Handled);
                prop_assert!(duplicate, "message id {id} not recognised");
                prop_assert_eq!(out.len(), 1);
                prop_assert_eq!(&out[0], &answer);
            }
        }
    }
}

#[test]
fn a_separate_response_is_an_empty_ack_then_a_retransmitted_confirmable_response() {
    let mut ex = exchange();
    let now = Instant::now();
    let mut out = Vec::new();
    let datagram = request(MessageType::Confirmable, RequestType::Post, 0x0101, b"sep");
    let Inbound::Request(req) = ex.receive(&datagram, now, &mut out) else {
        panic!("expected a request");
    };
    ex.respond_separately(&req.packet, changed(), "answer", now, &mut out)
        .unwrap();
    assert_eq!(out.len(), 2);
    let ack = decode(&out[0]);
    assert_eq!(ack.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(ack.header.code, MessageClass::Empty);
    assert_eq!(ack.header.message_id, 0x0101);
    let response = decode(&out[1]);
    assert_eq!(response.header.get_type(), MessageType::Confirmable);
    assert_eq!(
        response.header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(response.get_token(), b"sep");
    assert_ne!(response.header.message_id, 0x0101);

    // A duplicate of the request gets the empty acknowledgement again, not a new answer.
    out.clear();
    assert!(matches!(
        ex.receive(&datagram, now, &mut out),
        Inbound::Handled
    ));
    assert_eq!(out, vec![Bytes::from_static(&[0x60, 0x00, 0x01, 0x01])]);

    // Unacknowledged, the response is sent again after ACK_TIMEOUT.
    out.clear();
    assert!(ex
        .handle_timeout(now + Duration::from_secs(2), &mut out)
        .is_empty());
    assert_eq!(
        decode(&out[0]).header.message_id,
        response.header.message_id
    );
    // The client's acknowledgement settles it.
    out.clear();
    let [high, low] = response.header.message_id.to_be_bytes();
    match ex.receive(&[0x60, 0x00, high, low], now, &mut out) {
        Inbound::Acknowledged { tag, .. } => assert_eq!(tag, "answer"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ex.in_flight(), 0);

    // A non-confirmable request is answered non-confirmable, as ever.
    let non = request(MessageType::NonConfirmable, RequestType::Post, 0x0202, b"n");
    let Inbound::Request(req) = ex.receive(&non, now, &mut out) else {
        panic!("expected a request");
    };
    out.clear();
    ex.respond_separately(&req.packet, changed(), "answer", now, &mut out)
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(
        decode(&out[0]).header.get_type(),
        MessageType::NonConfirmable
    );
    assert_eq!(ex.in_flight(), 0);
}

#[test]
fn a_deferred_request_is_acknowledged_now_never_delivered_again_and_answered_later() {
    let mut ex = exchange();
    let now = Instant::now();
    let mut out = Vec::new();
    let datagram = request(MessageType::Confirmable, RequestType::Post, 0x0303, b"df");
    let Inbound::Request(req) = ex.receive(&datagram, now, &mut out) else {
        panic!("expected a request");
    };
    ex.defer(&req.packet, now, &mut out);
    assert_eq!(out, vec![Bytes::from_static(&[0x60, 0x00, 0x03, 0x03])]);
    // Its retransmission, while the answer is not ready, gets the empty ACK again.
    out.clear();
    let later = now + Duration::from_secs(2);
    assert!(matches!(
        ex.receive(&datagram, later, &mut out),
        Inbound::Handled
    ));
    assert_eq!(out, vec![Bytes::from_static(&[0x60, 0x00, 0x03, 0x03])]);
    out.clear();
    ex.respond_deferred(&req.packet, changed(), "late", later, &mut out)
        .unwrap();
    let response = decode(&out[0]);
    assert_eq!(response.header.get_type(), MessageType::Confirmable);
    assert_eq!(response.get_token(), b"df");
    assert_eq!(ex.in_flight(), 1);

    // A non-confirmable request: no acknowledgement, its duplicate ignored, the answer
    // non-confirmable.
    let non = request(
        MessageType::NonConfirmable,
        RequestType::Post,
        0x0404,
        b"nd",
    );
    out.clear();
    let Inbound::Request(req) = ex.receive(&non, now, &mut out) else {
        panic!("expected a request");
    };
    ex.defer(&req.packet, now, &mut out);
    assert!(out.is_empty());
    assert!(matches!(ex.receive(&non, now, &mut out), Inbound::Handled));
    assert!(out.is_empty());
    ex.respond_deferred(&req.packet, changed(), "late", now, &mut out)
        .unwrap();
    let response = decode(&out[0]);
    assert_eq!(response.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(response.get_token(), b"nd");
}

#[test]
fn max_transmit_wait_is_rfc_7252s_93_seconds_and_never_overflows() {
    let rfc = TransmissionParams::rfc7252(UNDERSTOOD);
    assert_eq!(rfc.max_transmit_wait(), Duration::from_secs(93));
    let absurd = TransmissionParams {
        ack_random_factor: 1e300,
        max_retransmit: u32::MAX,
        ..TransmissionParams::rfc7252(UNDERSTOOD)
    };
    assert_eq!(absurd.max_transmit_wait(), Duration::MAX);
}
