//! Round trips of every packet type for every version, hand-written and generated, and the
//! exact bytes of the encodings whose form the specs pin down.

// Test code: a panic is how a test fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use crate::common;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use common::*;
use mqtt_core::codec::*;
use proptest::prelude::*;

use ProtocolVersion::{V3_1, V3_1_1, V5};

fn users() -> UserProperties {
    vec![
        ("k".into(), "v1".into()),
        ("k".into(), "v2".into()),
        ("ключ".into(), "значение".into()),
    ]
}

fn connect(v: ProtocolVersion) -> Connect {
    Connect {
        protocol: v,
        clean_start: true,
        keep_alive: 60,
        client_id: "client-1".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn full_connect(v: ProtocolVersion) -> Connect {
    let v5 = v.is_v5();
    Connect {
        protocol: v,
        clean_start: false,
        keep_alive: u16::MAX,
        client_id: "dévice/42".into(),
        will: Some(LastWill {
            topic: ByteString::from_static("devices/42/status"),
            payload: Bytes::from_static(b"offline\x00\xff"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(30),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("devices/42/reply".into()),
                    correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                    user_properties: users(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"\x00secret\xff")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(10),
                maximum_packet_size: Some(65_536),
                topic_alias_maximum: Some(16),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: users(),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
            }
        } else {
            ConnectProperties::default()
        },
    }
}

fn hand_written(v: ProtocolVersion) -> Vec<Packet> {
    let v5 = v.is_v5();
    let ack_props = if v5 {
        AckProperties {
            reason_string: Some("why".into()),
            user_properties: users(),
        }
    } else {
        AckProperties::default()
    };
    let mut packets = vec![
        Packet::Connect(Box::new(connect(v))),
        Packet::Connect(Box::new(full_connect(v))),
        Packet::Connect(Box::new(Connect {
            client_id: String::new(),
            username: Some(String::new()),
            password: Some(Bytes::new()),
            ..connect(v)
        })),
        Packet::ConnAck(Box::default()),
        Packet::ConnAck(Box::new(ConnAck {
            session_present: v != V3_1,
            ..ConnAck::default()
        })),
        Packet::ConnAck(Box::new(ConnAck {
            reason_code: ReasonCode::NOT_AUTHORIZED,
            ..ConnAck::default()
        })),
        Packet::ConnAck(Box::new(ConnAck {
            reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ..ConnAck::default()
        })),
        Packet::Publish(Publish {
            topic: ByteString::from_static("a/b"),
            payload: Bytes::from_static(b"hello"),
            ..Publish::default()
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: ByteString::from_static("温度/室内"),
            packet_id: 1,
            payload: Bytes::new(),
            properties: Default::default(),
        }),
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            topic: ByteString::from_static("/"),
            packet_id: u16::MAX,
            payload: Bytes::from(vec![0xAB; 70_000]),
            ..Publish::default()
        }),
        Packet::PubAck(PubResponse {
            packet_id: 7,
            ..PubResponse::default()
        }),
        Packet::PubRec(PubResponse {
            packet_id: 8,
            ..PubResponse::default()
        }),
        Packet::PubRel(PubResponse {
            packet_id: 9,
            ..PubResponse::default()
        }),
        Packet::PubComp(PubResponse {
            packet_id: 10,
            ..PubResponse::default()
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 11,
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: vec![
                ("a/+/c".into(), SubscriptionOptions::default()),
                (
                    "#".into(),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        ..SubscriptionOptions::default()
                    },
                ),
            ],
        }),
        Packet::SubAck(SubAck {
            packet_id: 11,
            properties: ack_props.clone(),
            reason_codes: vec![ReasonCode::GRANTED_QOS_0, ReasonCode::UNSPECIFIED_ERROR],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 12,
            user_properties: Vec::new(),
            filters: vec!["a/+/c".into(), "#".into()],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 12,
            properties: ack_props.clone(),
            reason_codes: if v5 {
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            } else {
                Vec::new()
            },
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Box::default()),
    ];
    if v5 {
        packets.extend([
            Packet::ConnAck(Box::new(ConnAck {
                session_present: true,
                reason_code: ReasonCode::SUCCESS,
                properties: ConnAckProperties {
                    session_expiry_interval: Some(0),
                    receive_maximum: Some(100),
                    maximum_qos: Some(QoS::AtLeastOnce),
                    retain_available: Some(false),
                    maximum_packet_size: Some(1 << 20),
                    assigned_client_identifier: Some("auto-7".into()),
                    topic_alias_maximum: Some(10),
                    reason_string: Some("welcome".into()),
                    user_properties: users(),
                    wildcard_subscription_available: Some(true),
                    subscription_identifiers_available: Some(true),
                    shared_subscription_available: Some(false),
                    server_keep_alive: Some(30),
                    response_information: Some("reply/".into()),
                    server_reference: Some("other:1883".into()),
                    authentication_method: Some("SCRAM-SHA-256".into()),
                    authentication_data: Some(Bytes::from_static(b"server-final")),
                },
            })),
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: ByteString::new(),
                packet_id: 3,
                payload: Bytes::from_static(b"{}"),
                properties: PublishProperties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(60),
                    topic_alias: Some(1),
                    response_topic: Some("reply/7".into()),
                    correlation_data: Some(Bytes::from_static(b"req-1")),
                    user_properties: users(),
                    subscription_identifiers: vec![1, 127, 128, 16_384, 268_435_455],
                    content_type: Some("application/json".into()),
                }
                .into(),
                ..Publish::default()
            }),
            Packet::PubAck(PubResponse {
                packet_id: 7,
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                properties: AckProperties::default(),
            }),
            Packet::PubRec(PubResponse {
                packet_id: 8,
                reason_code: ReasonCode::QUOTA_EXCEEDED,
                properties: ack_props.clone(),
            }),
            Packet::PubRel(PubResponse {
                packet_id: 9,
                reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                properties: AckProperties::default(),
            }),
            Packet::PubComp(PubResponse {
                packet_id: 10,
                reason_code: ReasonCode::SUCCESS,
                properties: ack_props.clone(),
            }),
            Packet::Subscribe(Subscribe {
                packet_id: 13,
                subscription_identifier: Some(268_435_455),
                user_properties: users(),
                filters: vec![
                    (
                        "a/#".into(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: 2,
                        },
                    ),
                    (
                        "$share/group/a".into(),
                        SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: 1,
                        },
                    ),
                ],
            }),
            Packet::SubAck(SubAck {
                packet_id: 13,
                properties: AckProperties::default(),
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_1,
                    ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
                    ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
                ],
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 14,
                user_properties: users(),
                filters: vec!["a/#".into()],
            }),
            Packet::Disconnect(Box::new(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL,
                properties: DisconnectProperties::default(),
            })),
            Packet::Disconnect(Box::new(Disconnect {
                reason_code: ReasonCode::SERVER_MOVED,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some("moved".into()),
                    user_properties: users(),
                    server_reference: Some("new-host:1883".into()),
                },
            })),
            Packet::Disconnect(Box::new(Disconnect {
                reason_code: ReasonCode::NORMAL_DISCONNECTION,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(10),
                    ..DisconnectProperties::default()
                },
            })),
            Packet::Auth(Box::default()),
            Packet::Auth(Box::new(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some("SCRAM-SHA-256".into()),
                    authentication_data: Some(Bytes::from_static(b"client-final")),
                    reason_string: Some("step 2".into()),
                    user_properties: users(),
                },
            })),
            Packet::Auth(Box::new(Auth {
                reason_code: ReasonCode::SUCCESS,
                properties: AuthProperties {
                    authentication_method: Some("M".into()),
                    ..AuthProperties::default()
                },
            })),
        ]);
    }
    packets
}

#[test]
fn hand_written_round_trips() {
    for v in VERSIONS {
        for p in hand_written(v) {
            assert_round_trip(p, v);
        }
    }
}

#[test]
fn every_packet_type_is_covered_for_every_version() {
    for v in VERSIONS {
        let names: std::collections::BTreeSet<_> =
            hand_written(v).iter().map(Packet::name).collect();
        let expected = if v.is_v5() { 15 } else { 14 };
        assert_eq!(names.len(), expected, "{v:?}: {names:?}");
    }
}

fn bytes_of(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    encode_to_vec(p, v).to_vec()
}

#[test]
fn exact_bytes_of_fixed_forms() {
    assert_eq!(bytes_of(&Packet::PingReq, V3_1_1), [0xC0, 0x00]);
    assert_eq!(bytes_of(&Packet::PingResp, V5), [0xD0, 0x00]);
    assert_eq!(
        bytes_of(&Packet::Disconnect(Box::default()), V5),
        [0xE0, 0x00]
    );
    assert_eq!(bytes_of(&Packet::Auth(Box::default()), V5), [0xF0, 0x00]);
    let ack = |reason_code| PubResponse {
        packet_id: 0x1234,
        reason_code,
        properties: AckProperties::default(),
    };
    // 5.0 short forms: success without properties ends after the packet identifier.
    assert_eq!(
        bytes_of(&Packet::PubAck(ack(ReasonCode::SUCCESS)), V5),
        [0x40, 0x02, 0x12, 0x34]
    );
    assert_eq!(
        bytes_of(&Packet::PubRel(ack(ReasonCode::SUCCESS)), V5),
        [0x62, 0x02, 0x12, 0x34]
    );
    assert_eq!(
        bytes_of(&Packet::PubRec(ack(ReasonCode(0x10))), V5),
        [0x50, 0x03, 0x12, 0x34, 0x10]
    );
    assert_eq!(
        bytes_of(
            &Packet::Disconnect(Box::new(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL,
                ..Disconnect::default()
            })),
            V5
        ),
        [0xE0, 0x01, 0x04]
    );
    // 3.x drops the reason code entirely.
    assert_eq!(
        bytes_of(&Packet::PubAck(ack(ReasonCode(0x80))), V3_1_1),
        [0x40, 0x02, 0x12, 0x34]
    );
    // The 3.1.1 spec's own CONNECT example: "MQTT", level 4, clean session, keep alive 10.
    let mut c = connect(V3_1_1);
    c.keep_alive = 10;
    c.client_id = "a".into();
    assert_eq!(
        bytes_of(&Packet::Connect(Box::new(c)), V3_1_1),
        [
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A, 0x00, 0x01,
            b'a'
        ]
    );
    let mut c = connect(V3_1);
    c.keep_alive = 10;
    c.client_id = "a".into();
    let b = bytes_of(&Packet::Connect(Box::new(c)), V3_1);
    assert_eq!(&b[2..11], b"\x00\x06MQIsdp\x03");
}

#[test]
fn v3_connack_return_codes_map_both_ways() {
    let cases = [
        (0x00, 0, 0x00),
        (0x84, 1, 0x84),
        (0x85, 2, 0x85),
        (0x88, 3, 0x88),
        (0x89, 3, 0x88),
        (0x86, 4, 0x86),
        (0x87, 5, 0x87),
        (0x80, 5, 0x87),
        (0x8A, 5, 0x87),
        (0x9F, 5, 0x87),
    ];
    for v in [V3_1, V3_1_1] {
        for (code, wire, back) in cases {
            let p = Packet::ConnAck(Box::new(ConnAck {
                reason_code: ReasonCode(code),
                ..ConnAck::default()
            }));
            let b = bytes_of(&p, v);
            assert_eq!(b, [0x20, 0x02, 0x00, wire], "{code:#x} for {v:?}");
            let Packet::ConnAck(got) = round_trip(&p, v) else {
                panic!("not a CONNACK")
            };
            assert_eq!(got.reason_code, ReasonCode(back));
        }
    }
    // 3.1 has no Session Present flag.
    let p = Packet::ConnAck(Box::new(ConnAck {
        session_present: true,
        ..ConnAck::default()
    }));
    assert_eq!(bytes_of(&p, V3_1), [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(bytes_of(&p, V3_1_1), [0x20, 0x02, 0x01, 0x00]);
}

#[test]
fn v3_suback_failures_collapse_to_0x80() {
    let p = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: AckProperties::default(),
        reason_codes: vec![
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::TOPIC_FILTER_INVALID,
        ],
    });
    assert_eq!(
        bytes_of(&p, V3_1_1),
        [0x90, 0x05, 0x00, 0x01, 0x02, 0x80, 0x80]
    );
}

#[test]
fn v3_drops_what_it_cannot_carry() {
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 5,
        properties: AckProperties {
            reason_string: Some("x".into()),
            user_properties: Vec::new(),
        },
        reason_codes: vec![ReasonCode::SUCCESS],
    });
    assert_eq!(bytes_of(&unsuback, V3_1_1), [0xB0, 0x02, 0x00, 0x05]);
    let disconnect = Packet::Disconnect(Box::new(Disconnect {
        reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: DisconnectProperties::default(),
    }));
    assert_eq!(bytes_of(&disconnect, V3_1), [0xE0, 0x00]);
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 2,
        subscription_identifier: Some(9),
        user_properties: users(),
        filters: vec![(
            "a".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
    });
    assert_eq!(
        bytes_of(&subscribe, V3_1_1),
        [0x82, 0x06, 0x00, 0x02, 0x00, 0x01, b'a', 0x01]
    );
}

#[test]
fn encode_refuses_what_cannot_be_sent() {
    let mut out = BytesMut::new();
    let auth = Packet::Auth(Box::default());
    for v in [V3_1, V3_1_1] {
        assert!(matches!(
            encode(&auth, v, &mut out),
            Err(EncodeError::NotInVersion { packet: "AUTH", .. })
        ));
        assert!(matches!(
            encoded_len(&auth, v),
            Err(EncodeError::NotInVersion { .. })
        ));
    }
    let bad = [
        (
            Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: ByteString::from_static("a"),
                packet_id: 0,
                ..Publish::default()
            }),
            V5,
        ),
        (
            Packet::Publish(Publish {
                topic: ByteString::new(),
                ..Publish::default()
            }),
            V3_1_1,
        ),
        (
            Packet::Publish(Publish {
                dup: true,
                topic: ByteString::from_static("a"),
                ..Publish::default()
            }),
            V5,
        ),
        (Packet::Connect(Box::new(connect(V5))), V3_1_1),
        (
            Packet::Connect(Box::new(Connect {
                password: Some(Bytes::new()),
                ..connect(V3_1_1)
            })),
            V3_1_1,
        ),
        (Packet::Subscribe(Subscribe::default()), V5),
        (
            Packet::PubAck(PubResponse {
                packet_id: 1,
                reason_code: ReasonCode(0x92),
                ..PubResponse::default()
            }),
            V5,
        ),
        (
            Packet::Auth(Box::new(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                ..Auth::default()
            })),
            V5,
        ),
        (
            Packet::ConnAck(Box::new(ConnAck {
                session_present: true,
                reason_code: ReasonCode::BANNED,
                ..ConnAck::default()
            })),
            V5,
        ),
    ];
    for (p, v) in bad {
        assert!(encode(&p, v, &mut out).is_err(), "{p:?} for {v:?}");
        assert!(encoded_len(&p, v).is_err(), "{p:?} for {v:?}");
        assert!(out.is_empty(), "a failed encode appended bytes");
    }
    let long = "x".repeat(65_536);
    let p = Packet::Publish(Publish {
        topic: ByteString::from(long),
        ..Publish::default()
    });
    assert_eq!(
        encode(&p, V5, &mut out),
        Err(EncodeError::TooLong("topic name"))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_v3_1_round_trips(p in packet(V3_1)) {
        prop_assert_eq!(round_trip(&p, V3_1), p);
    }

    #[test]
    fn generated_v3_1_1_round_trips(p in packet(V3_1_1)) {
        prop_assert_eq!(round_trip(&p, V3_1_1), p);
    }

    #[test]
    fn generated_v5_round_trips(p in packet(V5)) {
        prop_assert_eq!(round_trip(&p, V5), p);
    }
}
