//! Decode and encode cost per packet type, for 3.1.1 and 5.0.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mqtt_core::codec::*;

fn packets() -> Vec<(&'static str, Packet)> {
    let publish = Publish {
        qos: QoS::AtLeastOnce,
        topic: ByteString::from_static("devices/0042/telemetry"),
        packet_id: 7,
        payload: Bytes::from(vec![0x5a; 64]),
        ..Default::default()
    };
    let with_properties = Publish {
        properties: PublishProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![("site".into(), "north".into())],
            message_expiry_interval: Some(60),
            ..Default::default()
        }
        .into(),
        ..publish.clone()
    };
    vec![
        (
            "publish_qos0_64b",
            Packet::Publish(Publish {
                qos: QoS::AtMostOnce,
                packet_id: 0,
                ..publish.clone()
            }),
        ),
        ("publish_qos1_64b", Packet::Publish(publish)),
        (
            "publish_qos1_64b_properties",
            Packet::Publish(with_properties),
        ),
        (
            "puback",
            Packet::PubAck(PubResponse {
                packet_id: 7,
                ..Default::default()
            }),
        ),
        (
            "subscribe",
            Packet::Subscribe(Subscribe {
                packet_id: 3,
                filters: vec![(
                    "devices/+/telemetry".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                )],
                ..Default::default()
            }),
        ),
        ("pingreq", Packet::PingReq),
    ]
}

fn codec(c: &mut Criterion) {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut group = c.benchmark_group(format!("codec_{}", version.as_str()));
        group.throughput(Throughput::Elements(1));
        for (name, packet) in packets() {
            let mut encoded = BytesMut::new();
            encode(&packet, version, &mut encoded).expect("encodes");
            let encoded = encoded.freeze();
            group.bench_function(format!("decode/{name}"), |b| {
                let mut decoder = Decoder::with_version(version, u32::MAX);
                b.iter_batched_ref(
                    || BytesMut::from(&encoded[..]),
                    |input| decoder.decode(input).expect("decodes"),
                    BatchSize::SmallInput,
                )
            });
            group.bench_function(format!("encode/{name}"), |b| {
                let mut out = BytesMut::with_capacity(4096);
                b.iter(|| {
                    out.clear();
                    encode(&packet, version, &mut out).expect("encodes");
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
