//! Every MQTT-SN 1.2 message survives encode then decode, and every malformed-frame rule is
//! an error, never a panic.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use adapter_mqtt_sn::codec::*;
use bytes::Bytes;
use bytestring::ByteString;
use proptest::prelude::*;

fn flags() -> impl Strategy<Value = Flags> {
    any::<u8>().prop_map(Flags::from_byte)
}

fn flags_of(kind: TopicIdType) -> impl Strategy<Value = Flags> {
    flags().prop_map(move |flags| Flags {
        topic_id_type: kind,
        ..flags
    })
}

fn text(max: usize) -> impl Strategy<Value = ByteString> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9/+#é✓ ]{{0,{max}}}"))
        .unwrap()
        .prop_map(ByteString::from)
}

fn nonempty_text(max: usize) -> impl Strategy<Value = ByteString> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9/]{{1,{max}}}"))
        .unwrap()
        .prop_map(ByteString::from)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn return_code() -> impl Strategy<Value = ReturnCode> {
    any::<u8>().prop_map(ReturnCode)
}

fn subscription() -> impl Strategy<Value = (Flags, TopicRef)> {
    prop_oneof![
        (flags_of(TopicIdType::Normal), text(40)).prop_map(|(f, n)| (f, TopicRef::Name(n))),
        (
            prop_oneof![
                Just(TopicIdType::Predefined),
                Just(TopicIdType::Short),
                Just(TopicIdType::Reserved)
            ],
            any::<u16>()
        )
            .prop_flat_map(|(kind, id)| flags_of(kind).prop_map(move |f| (f, TopicRef::Id(id)))),
    ]
}

fn will_topic() -> impl Strategy<Value = Option<WillTopic>> {
    proptest::option::of((flags(), text(40)).prop_map(|(flags, topic)| WillTopic { flags, topic }))
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u8>(), any::<u16>())
            .prop_map(|(gw_id, duration)| Message::Advertise { gw_id, duration }),
        any::<u8>().prop_map(|radius| Message::SearchGw { radius }),
        (any::<u8>(), bytes(16)).prop_map(|(gw_id, gw_add)| Message::GwInfo { gw_id, gw_add }),
        (flags(), any::<u8>(), any::<u16>(), text(23)).prop_map(
            |(flags, protocol_id, duration, client_id)| Message::Connect {
                flags,
                protocol_id,
                duration,
                client_id
            }
        ),
        return_code().prop_map(|return_code| Message::ConnAck { return_code }),
        Just(Message::WillTopicReq),
        will_topic().prop_map(Message::WillTopic),
        Just(Message::WillMsgReq),
        bytes(300).prop_map(|payload| Message::WillMsg { payload }),
        (any::<u16>(), any::<u16>(), text(300)).prop_map(|(topic_id, msg_id, topic_name)| {
            Message::Register {
                topic_id,
                msg_id,
                topic_name,
            }
        }),
        (any::<u16>(), any::<u16>(), return_code()).prop_map(|(topic_id, msg_id, return_code)| {
            Message::RegAck {
                topic_id,
                msg_id,
                return_code,
            }
        }),
        (flags(), any::<u16>(), any::<u16>(), bytes(600)).prop_map(
            |(flags, topic_id, msg_id, data)| Message::Publish {
                flags,
                topic_id,
                msg_id,
                data
            }
        ),
        (any::<u16>(), any::<u16>(), return_code()).prop_map(|(topic_id, msg_id, return_code)| {
            Message::PubAck {
                topic_id,
                msg_id,
                return_code,
            }
        }),
        any::<u16>().prop_map(|msg_id| Message::PubComp { msg_id }),
        any::<u16>().prop_map(|msg_id| Message::PubRec { msg_id }),
        any::<u16>().prop_map(|msg_id| Message::PubRel { msg_id }),
        (subscription(), any::<u16>()).prop_map(|((flags, topic), msg_id)| Message::Subscribe {
            flags,
            msg_id,
            topic
        }),
        (flags(), any::<u16>(), any::<u16>(), return_code()).prop_map(
            |(flags, topic_id, msg_id, return_code)| Message::SubAck {
                flags,
                topic_id,
                msg_id,
                return_code
            }
        ),
        (subscription(), any::<u16>()).prop_map(|((flags, topic), msg_id)| Message::Unsubscribe {
            flags,
            msg_id,
            topic
        }),
        any::<u16>().prop_map(|msg_id| Message::UnsubAck { msg_id }),
        proptest::option::of(nonempty_text(23))
            .prop_map(|client_id| Message::PingReq { client_id }),
        Just(Message::PingResp),
        proptest::option::of(any::<u16>()).prop_map(|duration| Message::Disconnect { duration }),
        will_topic().prop_map(Message::WillTopicUpd),
        return_code().prop_map(|return_code| Message::WillTopicResp { return_code }),
        bytes(300).prop_map(|payload| Message::WillMsgUpd { payload }),
        return_code().prop_map(|return_code| Message::WillMsgResp { return_code }),
    ]
}

fn encapsulated() -> impl Strategy<Value = Message> {
    (any::<u8>(), bytes(8), message()).prop_map(|(ctrl, wireless_node_id, message)| {
        Message::Encapsulated {
            ctrl,
            wireless_node_id,
            message: Box::new(message),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(message in prop_oneof![message(), encapsulated()]) {
        let datagram = to_datagram(&message).unwrap();
        prop_assert_eq!(decode(&datagram).unwrap(), message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(datagram in bytes(300)) {
        let _ = decode(&datagram);
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_an_error(message in message()) {
        let datagram = to_datagram(&message).unwrap();
        for len in 0..datagram.len() {
            prop_assert!(decode(&datagram.slice(..len)).is_err(), "{} of {} bytes decoded", len, datagram.len());
        }
    }
}

#[test]
fn length_forms() {
    // One octet up to 255 bytes in all.
    let short = to_datagram(&Message::WillMsg {
        payload: Bytes::from(vec![7u8; 253]),
    })
    .unwrap();
    assert_eq!(short.len(), 255);
    assert_eq!(short[0], 255);
    // Three octets beyond: 0x01 then the total length including those three (spec 5.2.1).
    let long = to_datagram(&Message::WillMsg {
        payload: Bytes::from(vec![7u8; 254]),
    })
    .unwrap();
    assert_eq!(&long[..4], &[0x01, 0x01, 0x02, 0x09]);
    assert_eq!(long.len(), 258);
    // The three-octet form is accepted even for short messages.
    assert_eq!(
        decode(&Bytes::from_static(&[0x01, 0x00, 0x04, 0x17])).unwrap(),
        Message::PingResp
    );
    assert_eq!(
        to_datagram(&Message::WillMsg {
            payload: Bytes::from(vec![0u8; 65_532]),
        }),
        Err(EncodeError::TooLong(65_536))
    );
}

#[test]
fn malformed_frames_are_errors() {
    let cases: &[(&str, &[u8])] = &[
        ("empty datagram", &[]),
        ("length only", &[0x02]),
        ("length 0", &[0x00, 0x17]),
        ("length 1", &[0x01]),
        ("3-octet length cut short", &[0x01, 0x00]),
        (
            "3-octet length shorter than its header",
            &[0x01, 0x00, 0x03, 0x17],
        ),
        ("declared longer than the datagram", &[0x05, 0x17, 0x00]),
        ("declared shorter than the datagram", &[0x02, 0x17, 0x00]),
        ("reserved type 0x03", &[0x02, 0x03]),
        ("reserved type 0x11", &[0x02, 0x11]),
        ("reserved type 0x19", &[0x02, 0x19]),
        ("reserved type 0x1e", &[0x02, 0x1E]),
        ("reserved type 0xff", &[0x02, 0xFF]),
        (
            "CONNECT without client id fields",
            &[0x04, 0x04, 0x04, 0x01],
        ),
        ("CONNACK without return code", &[0x02, 0x05]),
        ("PINGRESP with a body", &[0x03, 0x17, 0x00]),
        ("PUBACK short a byte", &[0x06, 0x0D, 0x00, 0x01, 0x00, 0x01]),
        ("DISCONNECT with a 1-octet duration", &[0x03, 0x18, 0x05]),
        (
            "SUBSCRIBE predefined with a 3-octet id",
            &[0x08, 0x12, 0x01, 0x00, 0x01, 0x00, 0x01, 0x02],
        ),
        (
            "CONNECT client id not UTF-8",
            &[0x07, 0x04, 0x04, 0x01, 0x00, 0x3C, 0xFF],
        ),
        (
            "REGISTER name not UTF-8",
            &[0x07, 0x0A, 0x00, 0x00, 0x00, 0x01, 0xC3],
        ),
        ("encapsulation without a message", &[0x03, 0xFE, 0x00]),
        (
            "encapsulation header longer than the datagram",
            &[0x09, 0xFE, 0x00, 0x01],
        ),
        (
            "nested encapsulation",
            &[0x03, 0xFE, 0x00, 0x03, 0xFE, 0x00, 0x02, 0x17],
        ),
    ];
    for (rule, bytes) in cases {
        let result = decode(&Bytes::copy_from_slice(bytes));
        assert!(result.is_err(), "{rule}: decoded as {result:?}");
    }
}

#[test]
fn conformance_vectors() {
    // Spec 5.4.4: CONNECT, clean session, protocol id 1, keep-alive 60 s, client id "dev1".
    let connect = decode(&Bytes::from_static(&[
        0x0A, 0x04, 0x04, 0x01, 0x00, 0x3C, b'd', b'e', b'v', b'1',
    ]))
    .unwrap();
    assert_eq!(
        connect,
        Message::Connect {
            flags: Flags {
                clean_session: true,
                ..Flags::default()
            },
            protocol_id: PROTOCOL_ID,
            duration: 60,
            client_id: ByteString::from("dev1"),
        }
    );
    // Spec 5.3.4: QoS -1 is 0b11 in bits 6-5; short topic type is 0b10.
    let flags = Flags::from_byte(0x62);
    assert_eq!(flags.qos, Qos::MinusOne);
    assert_eq!(flags.topic_id_type, TopicIdType::Short);
    // Spec 5.5: encapsulation length counts only its own header.
    let wrapped = encapsulate(0, &Bytes::from_static(&[0xAB, 0xCD]), &[0x02, 0x17]);
    assert_eq!(&wrapped[..], &[0x05, 0xFE, 0x00, 0xAB, 0xCD, 0x02, 0x17]);
    assert_eq!(
        decode(&wrapped).unwrap(),
        Message::Encapsulated {
            ctrl: 0,
            wireless_node_id: Bytes::from_static(&[0xAB, 0xCD]),
            message: Box::new(Message::PingResp),
        }
    );
    assert_eq!(short_topic_id("ab"), Some(0x6162));
    assert_eq!(short_topic_name(0x6162).as_deref(), Some("ab"));
}
