//! The LwM2M channel and the broker driven datagram by datagram on a virtual clock:
//! lifetime clamping and expiry, update, queue mode holding commands until the device
//! speaks, and the registration interface's error codes.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::coap::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use adapter_lwm2m::Lwm2mChannel;
use bytes::Bytes;
use common::{decode, request, settings};
use mqtt_core::broker::Broker;
use mqtt_core::codec::QoS;
use mqtt_core::message::Message as Routed;
use mqtt_core::protocol::Flow;
use mqtt_core::testing::{self, NoWakeup};

fn setup(now: Instant) -> (Arc<Broker>, Lwm2mChannel) {
    let broker = testing::broker(now);
    let channel = Lwm2mChannel::new(
        broker.clone(),
        Arc::new(settings()),
        None,
        Arc::new(NoWakeup),
        7,
        now,
    );
    (broker, channel)
}

fn send(channel: &mut Lwm2mChannel, datagram: Bytes, now: Instant) -> (Flow, Vec<Packet>) {
    let mut out = Vec::new();
    let flow = channel.handle_datagram(datagram, &mut out, now);
    (flow, decode(out))
}

fn register(channel: &mut Lwm2mChannel, queries: &[&str], now: Instant) -> Packet {
    // Each registration is a new message: a repeated id would be answered as a duplicate.
    static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1000);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (_, out) = send(
        channel,
        request(RequestType::Post, id, &["rd"], queries, b"</1/0>,</3/0>"),
        now,
    );
    out.into_iter().next().unwrap()
}

#[test]
fn lifetime_is_clamped_and_expiry_ends_the_registration() {
    let start = Instant::now();
    let (_broker, mut channel) = setup(start);
    let answer = register(&mut channel, &["ep=dev1", "lt=5"], start);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Created)
    );
    let location: Vec<_> = answer
        .get_option(CoapOption::LocationPath)
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(location, [b"rd".to_vec(), b"dev1".to_vec()]);
    // lt=5 is raised to lifetime_min (15 s); the grace period (30 s) follows it.
    assert_eq!(
        channel.registration().unwrap().lifetime,
        Duration::from_secs(15)
    );
    let mut out = Vec::new();
    assert_eq!(
        channel.handle_timeout(&mut out, start + Duration::from_secs(44)),
        Flow::Continue
    );
    // An update renews it.
    let (_, out) = send(
        &mut channel,
        request(RequestType::Post, 2, &["rd", "dev1"], &["lt=20"], b""),
        start + Duration::from_secs(40),
    );
    assert_eq!(
        out[0].header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(
        channel.registration().unwrap().lifetime,
        Duration::from_secs(20)
    );
    let renewed = start + Duration::from_secs(40);
    assert_eq!(
        channel.next_deadline(),
        Some(renewed + Duration::from_secs(50))
    );
    let mut out = Vec::new();
    assert_eq!(
        channel.handle_timeout(&mut out, renewed + Duration::from_secs(49)),
        Flow::Continue
    );
    assert_eq!(
        channel.handle_timeout(&mut out, renewed + Duration::from_secs(50)),
        Flow::Close
    );
}

#[test]
fn lwm2m_1_0_defaults_and_the_longest_lifetime() {
    let now = Instant::now();
    let (_broker, mut channel) = setup(now);
    register(&mut channel, &["ep=dev2"], now);
    let registration = channel.registration().unwrap();
    assert_eq!(registration.lifetime, Duration::from_secs(86_400));
    assert_eq!(registration.version, "1.0");
    assert!(!registration.queue_mode);
    register(&mut channel, &["ep=dev2", "lt=0", "lwm2m=1.1", "Q"], now);
    let registration = channel.registration().unwrap();
    assert_eq!(registration.lifetime, Duration::from_secs(86_400));
    assert!(registration.queue_mode, "1.1 queue mode is the Q parameter");
}

#[test]
fn registration_interface_errors() {
    let now = Instant::now();
    let (_broker, mut channel) = setup(now);
    let answer = register(&mut channel, &["lt=60"], now);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::BadRequest)
    );
    let answer = register(&mut channel, &["ep=d", "lwm2m=9.9"], now);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::BadRequest)
    );
    let answer = register(&mut channel, &["ep=d3"], now);
    assert_eq!(
        answer.header.code,
        MessageClass::Response(ResponseType::Created)
    );
    let (_, out) = send(
        &mut channel,
        request(RequestType::Post, 5, &["rd", "other"], &[], b""),
        now,
    );
    assert_eq!(
        out[0].header.code,
        MessageClass::Response(ResponseType::NotFound)
    );
    let (flow, out) = send(
        &mut channel,
        request(RequestType::Delete, 6, &["rd", "d3"], &[], b""),
        now,
    );
    assert_eq!(
        out[0].header.code,
        MessageClass::Response(ResponseType::Deleted)
    );
    assert_eq!(flow, Flow::Close);
}

#[test]
fn an_object_list_that_is_not_link_format_is_refused_4_00_and_changes_nothing() {
    let now = Instant::now();
    let (_broker, mut channel) = setup(now);
    // Separators quoted in a parameter, LwM2M 1.1's root, whitespace: one link each.
    let (_, out) = send(
        &mut channel,
        request(
            RequestType::Post,
            1,
            &["rd"],
            &["ep=lf", "lwm2m=1.1"],
            br#"</>;rt="oma.lwm2m";ct="60 11543", </1/0>;title="a,</9/9>;b",</3/0>"#,
        ),
        now,
    );
    assert_eq!(
        out[0].header.code,
        MessageClass::Response(ResponseType::Created)
    );
    assert_eq!(
        channel.registration().unwrap().object_list,
        ["/1/0", "/3/0"]
    );
    let malformed: [&[u8]; 5] = [
        br#"</3/0>;title="a,b"#,
        b"</1/0>,</3/0",
        b"</1/0>,,</3/0>",
        b"/1/0,/3/0",
        b"</1/0> </3/0>",
    ];
    for (id, payload) in (10..).zip(malformed) {
        // An update carrying it changes neither the list nor the lifetime.
        let (_, out) = send(
            &mut channel,
            request(RequestType::Post, id, &["rd", "lf"], &["lt=600"], payload),
            now,
        );
        assert_eq!(
            out[0].header.code,
            MessageClass::Response(ResponseType::BadRequest),
            "{}",
            String::from_utf8_lossy(payload)
        );
        // A new registration carrying it leaves the live one as it was.
        let (_, out) = send(
            &mut channel,
            request(RequestType::Post, id + 100, &["rd"], &["ep=lf"], payload),
            now,
        );
        assert_eq!(
            out[0].header.code,
            MessageClass::Response(ResponseType::BadRequest)
        );
        let registration = channel.registration().unwrap();
        assert_eq!(registration.object_list, ["/1/0", "/3/0"]);
        assert_eq!(registration.version, "1.1");
        assert_ne!(registration.lifetime, Duration::from_secs(600));
    }
    // The registration still serves its device.
    let (_, out) = send(
        &mut channel,
        request(RequestType::Post, 300, &["rd", "lf"], &[], b"</3/0>,</5/0>"),
        now,
    );
    assert_eq!(
        out[0].header.code,
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(
        channel.registration().unwrap().object_list,
        ["/3/0", "/5/0"]
    );
}

#[test]
fn queue_mode_holds_commands_until_the_device_speaks() {
    let start = Instant::now();
    let (broker, mut channel) = setup(start);
    register(&mut channel, &["ep=sleepy", "lt=300", "b=UQ"], start);
    assert!(channel.registration().unwrap().queue_mode);
    // Past qmode_time_window (22 s) the device sleeps: the command waits.
    let later = start + Duration::from_secs(30);
    let command = br#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#;
    let _ = testing::route(
        &broker,
        Routed::new(
            "lwm2m/sleepy/dn/read".into(),
            Bytes::from_static(command),
            QoS::AtMostOnce,
            false,
            later,
        ),
    );
    let mut out = Vec::new();
    channel.handle_wakeup(&mut out, later);
    assert!(out.is_empty());
    assert_eq!(channel.queued_commands(), 1);
    // Its next update flushes it: the answer to the update, then the read.
    let (_, out) = send(
        &mut channel,
        request(RequestType::Post, 9, &["rd", "sleepy"], &[], b""),
        later + Duration::from_secs(1),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].header.code, MessageClass::Request(RequestType::Get));
    let path: Vec<_> = out[1]
        .get_option(CoapOption::UriPath)
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(path, [b"3".to_vec(), b"0".to_vec(), b"0".to_vec()]);
    assert_eq!(channel.queued_commands(), 0);
}
