//! CoAP over real UDP: libcoap's coap-client and aiocoap on one side, mosquitto clients on
//! the MQTT side, the built gateway in between.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::net::UdpSocket;
use std::time::Duration;

use interop_tests::coap::COAP_CLIENT;
use interop_tests::{
    coap_client, mosquitto_pub, unique_client_id, unique_topic, AiocoapClient, Broker,
    MosquittoSub, Setting, Version, TIMEOUT,
};

fn gateway(needs: &str, settings: &[Setting]) -> Option<Broker> {
    Broker::start_gateway_only(needs, settings)
}

#[test]
fn coap_client_publishes_by_post_and_put_at_qos_0_and_1_with_retain() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let prefix = unique_topic("coap-pub");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&format!("{prefix}/#")], 2, &[]);
    let id = unique_client_id("cc");
    let cases: &[(&[&str], &str, u8)] = &[
        // Confirmable POST: QoS 1 by default (publish_qos = "coap").
        (&["-m", "post"], "post-con", 1),
        // Non-confirmable PUT: QoS 0 by default.
        (&["-m", "put", "-N"], "put-non", 0),
        (&["-m", "post", "-N"], "post-q1", 1),
        (&["-m", "put"], "put-retained", 0),
    ];
    for (args, name, qos) in cases {
        let mut query = format!("?clientid={id}");
        if *name == "post-q1" {
            query.push_str("&qos=1");
        }
        if *name == "put-retained" {
            query.push_str("&qos=0&retain=true");
        }
        let payload = format!("payload of {name}");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-e", &payload]);
        let (ok, _, stderr) = coap_client(&broker, &all, &format!("/ps/{prefix}/{name}{query}"));
        assert!(ok, "{COAP_CLIENT} {all:?}: {stderr}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic.as_str(), msg.payload.as_slice(), msg.qos),
            (
                format!("{prefix}/{name}").as_str(),
                payload.as_bytes(),
                *qos
            ),
            "{name}"
        );
    }
    // The retained one is replayed to a later MQTT subscriber.
    let mut late = MosquittoSub::start(
        &broker,
        Version::V311,
        &[&format!("{prefix}/put-retained")],
        1,
        &[],
    );
    let msg = late.recv(TIMEOUT);
    assert!(msg.retain);
    assert_eq!(msg.payload, b"payload of put-retained");
}

#[test]
fn aiocoap_observes_a_wildcard_with_non_and_con_notifications() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let prefix = unique_topic("coap-obs");
    let mut client = AiocoapClient::spawn(&broker);
    let id = unique_client_id("obs");
    // `#` travels percent-encoded in the URI and decoded in the Uri-Path option.
    assert_eq!(
        client.observe(&format!("/ps/{prefix}/%23?clientid={id}")),
        "2.05"
    );
    mosquitto_pub(
        &broker,
        Version::V311,
        &format!("{prefix}/a"),
        b"zero",
        0,
        false,
        &[],
    );
    let first = client.notification();
    assert_eq!(
        (first.payload.as_slice(), first.mtype.as_str()),
        (&b"zero"[..], "NON")
    );
    mosquitto_pub(
        &broker,
        Version::V5,
        &format!("{prefix}/b/c"),
        b"one",
        1,
        false,
        &[],
    );
    let second = client.notification();
    assert_eq!(
        (second.payload.as_slice(), second.mtype.as_str()),
        (&b"one"[..], "CON")
    );
    assert!(second.observe > first.observe);

    // A publish from the same CoAP client reaches its own observation and MQTT.
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&format!("{prefix}/#")], 1, &[]);
    let answer = client.request(
        "POST",
        &format!("/ps/{prefix}/self?clientid={id}"),
        b"me",
        false,
    );
    assert_eq!(answer.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"me");
    assert_eq!(client.notification().payload, b"me");
}

#[test]
fn an_observer_answering_reset_is_removed() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let topic = unique_topic("coap-rst");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let target = format!("{}:{}", broker.host, broker.coap_port);
    let mut buf = [0u8; 2048];
    // GET /ps/{topic} with Observe 0 and token 0xAB, built by hand: an observer that
    // answers notifications with Reset, as RFC 7641 3.6 lets a client do.
    let mut get = vec![0x41, 0x01, 0x00, 0x01, 0xAB, 0x60];
    let mut previous = 6u8;
    for segment in std::iter::once("ps").chain(topic.split('/')) {
        let delta = 11 - previous;
        previous = 11;
        assert!(segment.len() < 13);
        get.push((delta << 4) | segment.len() as u8);
        get.extend_from_slice(segment.as_bytes());
    }
    socket.send_to(&get, &target).unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..2],
        &[0x61, 0x45],
        "2.05 piggybacked: {:?}",
        &buf[..n]
    );
    mosquitto_pub(&broker, Version::V311, &topic, b"first", 1, false, &[]);
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        buf[0] & 0x30,
        0x00,
        "a confirmable notification: {:?}",
        &buf[..n]
    );
    assert!(buf[..n].ends_with(b"first"));
    socket
        .send_to(&[0x70, 0x00, buf[2], buf[3]], &target)
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !broker.log_tail().contains("observer removed") {
        assert!(
            std::time::Instant::now() < deadline,
            "the observer was not removed; log:\n{}",
            broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    mosquitto_pub(&broker, Version::V311, &topic, b"second", 1, false, &[]);
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        socket.recv_from(&mut buf).is_err(),
        "no notification after Reset"
    );
}

#[test]
fn coap_client_observe_gets_the_retained_message_then_live_ones() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let topic = unique_topic("coap-ret");
    mosquitto_pub(&broker, Version::V311, &topic, b"retained!", 1, true, &[]);
    let observer = {
        let host = broker.host.clone();
        let port = broker.coap_port;
        let topic = topic.clone();
        std::thread::spawn(move || {
            let output = std::process::Command::new(COAP_CLIENT)
                .args(["-m", "get", "-s", "4"])
                .arg(format!(
                    "coap://{host}:{port}/ps/{topic}?clientid=libcoap-obs"
                ))
                .output()
                .expect("coap-client runs");
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    mosquitto_pub(&broker, Version::V311, &topic, b"live!", 1, false, &[]);
    let printed = observer.join().unwrap();
    let retained = printed.find("retained!").expect("the retained message");
    let live = printed.find("live!").expect("the live message");
    assert!(retained < live, "{printed}");
}

#[test]
fn notify_type_con_makes_qos_0_notifications_confirmable() {
    let Some(broker) = gateway(
        "notify_type = con",
        &[Setting::new("GATEWAY_GATEWAY__COAP__NOTIFY_TYPE", "con")],
    ) else {
        return;
    };
    let topic = unique_topic("coap-con");
    let mut client = AiocoapClient::spawn(&broker);
    assert_eq!(
        client.observe(&format!("/ps/{topic}?clientid=con1")),
        "2.05"
    );
    for payload in [&b"a"[..], b"b", b"c"] {
        mosquitto_pub(&broker, Version::V311, &topic, payload, 0, false, &[]);
    }
    for payload in [&b"a"[..], b"b", b"c"] {
        let note = client.notification();
        assert_eq!(
            (note.payload.as_slice(), note.mtype.as_str()),
            (payload, "CON")
        );
    }
}

#[test]
fn connection_mode_hands_out_tokens_and_refuses_bad_ones() {
    let Some(broker) = gateway(
        "connection_required = true",
        &[Setting::new(
            "GATEWAY_GATEWAY__COAP__CONNECTION_REQUIRED",
            "true",
        )],
    ) else {
        return;
    };
    let topic = unique_topic("coap-conn");
    let id = unique_client_id("conn");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&topic], 1, &[]);
    let mut client = AiocoapClient::spawn(&broker);

    let missing = client.request("POST", "/mqtt/connection", b"", false);
    assert_eq!(missing.code, "4.00");
    let created = client.request(
        "POST",
        &format!("/mqtt/connection?clientid={id}&username=dev&password=pw"),
        b"",
        false,
    );
    assert_eq!(created.code, "2.01");
    let token = String::from_utf8(created.payload).unwrap();
    assert!(token.parse::<u32>().is_ok(), "token {token:?}");

    let no_token = client.request("POST", &format!("/ps/{topic}?clientid={id}"), b"x", false);
    assert_eq!(no_token.code, "4.00");
    let bad = client.request(
        "POST",
        &format!("/ps/{topic}?clientid={id}&token=1{token}"),
        b"x",
        false,
    );
    assert_eq!(bad.code, "4.01");
    let good = client.request(
        "POST",
        &format!("/ps/{topic}?clientid={id}&token={token}"),
        b"with token",
        false,
    );
    assert_eq!(good.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"with token");

    // libcoap from another port, with the token, is the same client.
    let (ok, _, stderr) = coap_client(
        &broker,
        &["-m", "post", "-e", "from libcoap"],
        &format!("/ps/{topic}?clientid={id}&token={token}"),
    );
    assert!(ok, "{stderr}");
    assert_eq!(sub.recv(TIMEOUT).payload, b"from libcoap");
    // With a wrong token it is refused and nothing is published.
    let (_, out, err) = coap_client(
        &broker,
        &["-m", "post", "-e", "refused"],
        &format!("/ps/{topic}?clientid={id}&token=0"),
    );
    assert!(
        format!("{out}{err}").contains("4.01"),
        "coap-client printed {out:?} {err:?}"
    );
    assert!(sub.try_recv(Duration::from_millis(500)).is_none());

    let mut again = AiocoapClient::spawn(&broker);
    let heartbeat = again.request(
        "PUT",
        &format!("/mqtt/connection?clientid={id}&token={token}"),
        b"",
        false,
    );
    assert_eq!(heartbeat.code, "2.04");
    let deleted = again.request(
        "DELETE",
        &format!("/mqtt/connection?clientid={id}&token={token}"),
        b"",
        false,
    );
    assert_eq!(deleted.code, "2.02");
}

#[test]
fn bad_credentials_get_4_01() {
    let Some(broker) = gateway(
        "anonymous access off",
        &[Setting::new("GATEWAY_AUTH__ALLOW_ANONYMOUS", "false")],
    ) else {
        return;
    };
    let mut client = AiocoapClient::spawn(&broker);
    let refused = client.request("POST", "/ps/anything?clientid=anon", b"x", false);
    assert_eq!(refused.code, "4.01");
}

#[test]
fn malformed_datagrams_are_reset_or_ignored_and_others_are_served() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let target = format!("{}:{}", broker.host, broker.coap_port);
    let mut buf = [0u8; 2048];
    // Confirmable with a payload marker and no payload: Reset.
    socket
        .send_to(&[0x40, 0x02, 0x12, 0x34, 0xFF], &target)
        .unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x70, 0x00, 0x12, 0x34]);
    // A CoAP ping: Reset.
    socket.send_to(&[0x40, 0x00, 0x00, 0x07], &target).unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x70, 0x00, 0x00, 0x07]);
    // FETCH: 4.05, piggybacked with the token.
    socket
        .send_to(&[0x41, 0x05, 0x00, 0x08, 0xAB], &target)
        .unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..5],
        &[0x61, 0x85, 0x00, 0x08, 0xAB],
        "{:?}",
        &buf[..n]
    );
    // Version 2 is ignored; garbage too.
    socket.send_to(&[0x80, 0x01, 0x00, 0x09], &target).unwrap();
    socket.send_to(&[0xFF; 3], &target).unwrap();
    // Other clients are served all along.
    let (ok, _, stderr) = coap_client(&broker, &["-m", "post", "-e", "fine"], "/ps/fine");
    assert!(ok, "{stderr}");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        socket.recv_from(&mut buf).is_err(),
        "nothing answers the ignored ones"
    );
}

/// 10 KB that are not one repeated byte, so a block out of place would show.
fn ten_kb() -> Vec<u8> {
    (0..10 * 1024)
        .map(|i: usize| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect()
}

#[test]
fn a_10_kb_publish_arrives_in_block1_blocks_from_coap_client_and_aiocoap() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let topic = unique_topic("coap-block1");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    let payload = ten_kb();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &payload).unwrap();
    // libcoap at 1024 and at 64 bytes a block.
    for size in ["1024", "64"] {
        let (ok, _, stderr) = coap_client(
            &broker,
            &[
                "-m",
                "post",
                "-b",
                size,
                "-f",
                file.path().to_str().unwrap(),
            ],
            &format!("/ps/{topic}/libcoap-{size}?clientid=blk-{size}"),
        );
        assert!(ok, "{COAP_CLIENT} -b {size}: {stderr}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(msg.topic, format!("{topic}/libcoap-{size}"));
        assert_eq!(msg.payload.len(), payload.len(), "-b {size}");
        assert!(msg.payload == payload, "-b {size}: the body reassembled");
    }
    // aiocoap splits a large request by itself.
    let mut client = AiocoapClient::spawn(&broker);
    let answer = client.request(
        "PUT",
        &format!("/ps/{topic}/aiocoap?clientid=blk-aio"),
        &payload,
        false,
    );
    assert_eq!(answer.code, "2.04");
    let msg = sub.recv(TIMEOUT);
    assert_eq!(msg.topic, format!("{topic}/aiocoap"));
    assert!(msg.payload == payload, "the body reassembled");
}

#[test]
fn a_body_over_max_body_size_is_refused_with_4_13() {
    let Some(broker) = gateway(
        "blockwise.max_body_size = 4096",
        &[Setting::new(
            "GATEWAY_GATEWAY__COAP__BLOCKWISE__MAX_BODY_SIZE",
            "4096",
        )],
    ) else {
        return;
    };
    let topic = unique_topic("coap-413");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&topic], 1, &[]);
    let mut client = AiocoapClient::spawn(&broker);
    let answer = client.request(
        "POST",
        &format!("/ps/{topic}?clientid=big413"),
        &ten_kb(),
        false,
    );
    assert_eq!(answer.code, "4.13");
    let fits = client.request(
        "POST",
        &format!("/ps/{topic}?clientid=big413"),
        &ten_kb()[..4000],
        false,
    );
    assert_eq!(fits.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload.len(), 4000);
}

#[test]
fn a_10_kb_notification_is_read_in_block2_blocks_by_aiocoap_and_coap_client() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let topic = unique_topic("coap-block2");
    let payload = ten_kb();
    let mut client = AiocoapClient::spawn(&broker);
    assert_eq!(
        client.observe(&format!("/ps/{topic}?clientid=blk2-aio")),
        "2.05"
    );
    mosquitto_pub(&broker, Version::V311, &topic, &payload, 1, true, &[]);
    mosquitto_pub(&broker, Version::V311, &topic, b"small", 0, false, &[]);
    let note = client.notification();
    assert_eq!(note.payload.len(), payload.len());
    assert!(note.payload == payload, "the notification reassembled");
    assert_eq!(client.notification().payload, b"small");

    // libcoap observing the retained 10 KB message reads it block by block too.
    let other = unique_topic("coap-block2");
    mosquitto_pub(&broker, Version::V311, &other, &payload, 1, true, &[]);
    let (_, stdout, stderr) = coap_client(
        &broker,
        &["-m", "get", "-s", "2", "-B", "3"],
        &format!("/ps/{other}?clientid=blk2-libcoap"),
    );
    let text = String::from_utf8(payload).unwrap();
    assert!(
        stdout.contains(&text),
        "{COAP_CLIENT} printed {} bytes: {stdout:.200} {stderr}",
        stdout.len()
    );
}
