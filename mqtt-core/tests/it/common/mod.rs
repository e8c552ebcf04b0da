//! Helpers and proptest strategies shared by the codec tests.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use mqtt_core::codec::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

pub fn encode_to_vec(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).unwrap_or_else(|e| panic!("encoding {p:?} for {v:?}: {e}"));
    out
}

/// A decoder for the side that would receive `p`: server-side (version sniffed) for
/// CONNECT, version known otherwise.
pub fn decoder_for(p: &Packet, v: ProtocolVersion) -> Decoder {
    match p {
        Packet::Connect(_) => Decoder::new(u32::MAX),
        _ => Decoder::with_version(v, u32::MAX),
    }
}

/// Encodes, checks `encoded_len`, decodes, and returns what came back.
pub fn round_trip(p: &Packet, v: ProtocolVersion) -> Packet {
    let mut buf = encode_to_vec(p, v);
    assert_eq!(
        encoded_len(p, v).unwrap(),
        buf.len(),
        "encoded_len of {p:?} for {v:?}"
    );
    let mut dec = decoder_for(p, v);
    let got = dec
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("decoding {p:?} for {v:?}: {e}"))
        .unwrap_or_else(|| panic!("decoding {p:?} for {v:?}: needs more bytes"));
    assert!(buf.is_empty(), "bytes left after {p:?}");
    assert_eq!(dec.version(), Some(v));
    got
}

pub fn assert_round_trip(p: Packet, v: ProtocolVersion) {
    let got = round_trip(&p, v);
    assert_eq!(got, p, "round trip for {v:?}");
}

// ---- strategies ---------------------------------------------------------------------

/// Any UTF-8 string the spec allows (no U+0000; surrogates cannot occur in `String`).
pub fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

pub fn topic_name() -> impl Strategy<Value = ByteString> {
    "[^\u{0}+#]{1,16}".prop_map(ByteString::from)
}

pub fn response_topic() -> impl Strategy<Value = String> {
    "[^\u{0}+#]{0,12}"
}

pub fn filter() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\u{0}]{0,16}",
        "[a-z+#/]{1,12}",
        "\\$share/[a-z]{1,4}/[a-z/+#]{1,8}",
    ]
}

pub fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

pub fn user_properties() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pick(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(ReasonCode)
}

pub const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// The 5.0 codes a 3.x CONNACK return code decodes to.
pub const V3_CONNACK_CODES: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
pub const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
pub const PUBREL_CODES: &[u8] = &[0x00, 0x92];
pub const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
pub const V3_SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
pub const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
pub const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
pub const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn sub_id() -> impl Strategy<Value = u32> {
    prop_oneof![1..=200u32, 1..=268_435_455u32]
}

fn ack_properties(v5: bool) -> BoxedStrategy<AckProperties> {
    if !v5 {
        return Just(AckProperties::default()).boxed();
    }
    (option::of(text()), user_properties())
        .prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        })
        .boxed()
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(1..=u32::MAX),
            option::of(any::<u16>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        user_properties(),
        option::of((text(), option::of(bytes()))),
    )
        .prop_map(|((sei, rm, mps, tam, rri, rpi), user_properties, auth)| {
            let (authentication_method, authentication_data) = match auth {
                Some((m, d)) => (Some(m), d),
                None => (None, None),
            };
            ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties,
                authentication_method,
                authentication_data,
            }
        })
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(response_topic()),
        option::of(bytes()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn connect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let will = (
        topic_name(),
        bytes(),
        qos(),
        any::<bool>(),
        will_properties(),
    )
        .prop_map(move |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: if v5 {
                properties
            } else {
                WillProperties::default()
            },
        });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(will),
        option::of(text()),
        option::of(bytes()),
        connect_properties(),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.x forbids a password without a user name [MQTT-3.1.2-22].
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: if v5 {
                        properties
                    } else {
                        ConnectProperties::default()
                    },
                }))
            },
        )
        .boxed()
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
            option::of(any::<bool>()),
            option::of(1..=u32::MAX),
            option::of(text()),
            option::of(any::<u16>()),
            option::of(text()),
        ),
        user_properties(),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(bytes()),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs), up, (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v.is_v5() {
        CONNACK_CODES
    } else {
        V3_CONNACK_CODES
    };
    (any::<bool>(), pick(codes), connack_properties())
        .prop_map(move |(session_present, reason_code, properties)| {
            Packet::ConnAck(Box::new(ConnAck {
                // Only an accepting 3.1.1/5.0 CONNACK can say a session is present.
                session_present: session_present
                    && reason_code == ReasonCode::SUCCESS
                    && v != ProtocolVersion::V3_1,
                reason_code,
                properties: if v.is_v5() {
                    properties
                } else {
                    ConnAckProperties::default()
                },
            }))
        })
        .boxed()
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(0..=1u8),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(response_topic()),
        option::of(bytes()),
        user_properties(),
        vec(sub_id(), 0..3),
        option::of(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, sids, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: sids,
            content_type: ct,
        })
}

fn publish(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        packet_id(),
        vec(any::<u8>(), 0..200).prop_map(Bytes::from),
        publish_properties(),
    )
        .prop_map(
            move |(qos, dup, retain, topic, empty_topic, packet_id, payload, properties)| {
                let properties = if v5 {
                    properties
                } else {
                    PublishProperties::default()
                };
                // An empty topic is only valid in 5.0 with a topic alias standing for it.
                let topic = if empty_topic && properties.topic_alias.is_some() {
                    ByteString::new()
                } else {
                    topic
                };
                let at_most_once = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { 0 } else { packet_id },
                    payload,
                    properties: properties.into(),
                })
            },
        )
        .boxed()
}

fn pub_response(v: ProtocolVersion, codes: &'static [u8]) -> BoxedStrategy<PubResponse> {
    let v5 = v.is_v5();
    (packet_id(), pick(codes), ack_properties(v5))
        .prop_map(move |(packet_id, reason_code, properties)| PubResponse {
            packet_id,
            reason_code: if v5 { reason_code } else { ReasonCode::SUCCESS },
            properties,
        })
        .boxed()
}

fn subscription_options(v5: bool) -> BoxedStrategy<SubscriptionOptions> {
    if !v5 {
        return qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            })
            .boxed();
    }
    (qos(), any::<bool>(), any::<bool>(), 0..=2u8)
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
        .boxed()
}

fn subscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    (
        packet_id(),
        option::of(sub_id()),
        user_properties(),
        vec((filter(), subscription_options(v5)), 1..4),
    )
        .prop_map(move |(packet_id, sid, up, filters)| {
            let filters = filters
                .into_iter()
                .map(|(f, mut o)| {
                    // No Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4].
                    if f.starts_with("$share/") {
                        o.no_local = false;
                    }
                    (f, o)
                })
                .collect();
            Packet::Subscribe(Subscribe {
                packet_id,
                subscription_identifier: if v5 { sid } else { None },
                user_properties: if v5 { up } else { Vec::new() },
                filters,
            })
        })
        .boxed()
}

fn suback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v.is_v5() {
        SUBACK_CODES
    } else {
        V3_SUBACK_CODES
    };
    (
        packet_id(),
        ack_properties(v.is_v5()),
        vec(pick(codes), 1..5),
    )
        .prop_map(|(packet_id, properties, reason_codes)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reason_codes,
            })
        })
        .boxed()
}

fn unsubscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    (packet_id(), user_properties(), vec(filter(), 1..4))
        .prop_map(move |(packet_id, up, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                user_properties: if v5 { up } else { Vec::new() },
                filters,
            })
        })
        .boxed()
}

fn unsuback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    (
        packet_id(),
        ack_properties(v5),
        vec(pick(UNSUBACK_CODES), 1..5),
    )
        .prop_map(move |(packet_id, properties, codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reason_codes: if v5 { codes } else { Vec::new() },
            })
        })
        .boxed()
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !v.is_v5() {
        return Just(Packet::Disconnect(Box::default())).boxed();
    }
    (
        pick(DISCONNECT_CODES),
        option::of(any::<u32>()),
        option::of(text()),
        user_properties(),
        option::of(text()),
    )
        .prop_map(|(reason_code, sei, rs, up, sr)| {
            Packet::Disconnect(Box::new(Disconnect {
                reason_code,
                properties: DisconnectProperties {
                    session_expiry_interval: sei,
                    reason_string: rs,
                    user_properties: up,
                    server_reference: sr,
                },
            }))
        })
        .boxed()
}

fn auth() -> BoxedStrategy<Packet> {
    prop_oneof![
        Just(Packet::Auth(Box::default())),
        (
            pick(AUTH_CODES),
            text(),
            option::of(bytes()),
            option::of(text()),
            user_properties()
        )
            .prop_map(|(reason_code, method, data, rs, up)| {
                Packet::Auth(Box::new(Auth {
                    reason_code,
                    properties: AuthProperties {
                        authentication_method: Some(method),
                        authentication_data: data,
                        reason_string: rs,
                        user_properties: up,
                    },
                }))
            })
    ]
    .boxed()
}

/// Any packet valid for `v`, in either direction.
pub fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        connect(v),
        connack(v),
        publish(v),
        pub_response(v, PUBACK_CODES)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_response(v, PUBACK_CODES)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_response(v, PUBREL_CODES)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_response(v, PUBREL_CODES)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe(v),
        suback(v),
        unsubscribe(v),
        unsuback(v),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(v),
    ];
    if v.is_v5() {
        choices.push(auth());
    }
    proptest::strategy::Union::new(choices).boxed()
}

pub fn version() -> impl Strategy<Value = ProtocolVersion> {
    proptest::sample::select(&VERSIONS[..])
}
