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

use interop_tests::broker::{gateway_passwd, password_file_only};
use interop_tests::coap::COAP_CLIENT;
use interop_tests::nat::Nat;
use interop_tests::{
    coap_client, mosquitto_pub, unique_client_id, unique_topic, AiocoapClient, Broker,
    MosquittoSub, Setting, Version, TIMEOUT,
};

/// The broker, external or started; with `settings`, a gateway started with them.
fn gateway(needs: &str, settings: &[Setting]) -> Option<Broker> {
    if settings.is_empty() {
        return Some(Broker::start());
    }
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
    // The gateway's log is what tells the observer was removed.
    let Some(broker) = Broker::start_gateway_only("the gateway's log", &[]) else {
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
    // Before it notifies an address, the gateway has the client acknowledge something
    // there: the 2.05 comes as a separate, confirmable response.
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        &[0x60, 0x00, 0x00, 0x01],
        "an empty acknowledgement"
    );
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..2],
        &[0x41, 0x45],
        "2.05, confirmable: {:?}",
        &buf[..n]
    );
    socket
        .send_to(&[0x60, 0x00, buf[2], buf[3]], &target)
        .unwrap();
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
    client.publishes_only_with_token(&topic, &id, &token, &mut sub);

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
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    gateway_passwd(&passwords, "alice", "secret");
    let Some(broker) = gateway("anonymous access off", &password_file_only(&passwords)) else {
        return;
    };
    let mut client = AiocoapClient::spawn(&broker);
    let refused = client.request("POST", "/ps/anything?clientid=anon", b"x", false);
    assert_eq!(refused.code, "4.01", "no user name");
    let refused = client.request(
        "POST",
        "/ps/anything?clientid=alice&username=alice&password=wrong",
        b"x",
        false,
    );
    assert_eq!(refused.code, "4.01", "a wrong password");
    let accepted = client.request(
        "POST",
        "/ps/anything?clientid=alice&username=alice&password=secret",
        b"x",
        false,
    );
    assert_eq!(accepted.code, "2.04", "the right password");
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
    let Some(broker) = gateway(
        "a CoAP listener",
        &[Setting::new("GATEWAY_LOG__LEVEL", "debug")],
    ) else {
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

#[test]
fn a_client_behind_a_rebinding_nat_keeps_its_session_and_observations() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let topic = unique_topic("coap-nat");
    let id = unique_client_id("nat");
    let nat = Nat::start((broker.host.as_str(), broker.coap_port));
    let mut client = AiocoapClient::spawn_to(format!("coap://{}", nat.addr()));
    assert_eq!(
        client.observe(&format!("/ps/{topic}/%23?clientid={id}")),
        "2.05"
    );
    mosquitto_pub(
        &broker,
        Version::V311,
        &format!("{topic}/a"),
        b"before",
        0,
        false,
        &[],
    );
    let before = client.notification();
    assert_eq!(before.payload, b"before");

    // The NAT gives the client a new outside port; its next request, connectionless,
    // names its client id and continues its session from there.
    nat.rebind();
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&format!("{topic}/up")], 1, &[]);
    let answer = client.request(
        "POST",
        &format!("/ps/{topic}/up?clientid={id}"),
        b"moved",
        false,
    );
    assert_eq!(answer.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"moved");
    // Its own publish matched its own wildcard observation: a notification, at the new port.
    assert_eq!(client.notification().payload, b"moved");

    // The observation made from the old port notifies the new one, confirmable included.
    mosquitto_pub(
        &broker,
        Version::V5,
        &format!("{topic}/b"),
        b"after",
        1,
        false,
        &[],
    );
    let after = client.notification();
    assert_eq!(
        (after.payload.as_slice(), after.mtype.as_str()),
        (&b"after"[..], "CON")
    );
    assert!(after.observe > before.observe);
    // What the gateway says of it; another broker's log is not at hand.
    assert!(
        !broker.is_gateway() || broker.log_tail().contains("peer moved to a new address"),
        "log:\n{}",
        broker.log_tail()
    );
}

/// A CoAP request built by hand: `path` segments as Uri-Path, then `query` as Uri-Query.
fn raw_request(
    kind: u8,
    code: u8,
    message_id: u16,
    token: &[u8],
    path: &str,
    query: &[&str],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0x40 | (kind << 4) | token.len() as u8, code];
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(token);
    let mut previous = 0u16;
    let options = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| (11u16, s))
        .chain(query.iter().map(|q| (15u16, *q)));
    for (number, value) in options {
        let delta = number - previous;
        previous = number;
        assert!(delta < 13 && value.len() < 269);
        if value.len() < 13 {
            out.push(((delta as u8) << 4) | value.len() as u8);
        } else {
            out.push(((delta as u8) << 4) | 13);
            out.push((value.len() - 13) as u8);
        }
        out.extend_from_slice(value.as_bytes());
    }
    if !payload.is_empty() {
        out.push(0xFF);
        out.extend_from_slice(payload);
    }
    out
}

#[test]
fn separate_responses_are_acknowledged_and_understood_by_coap_client_and_aiocoap() {
    let Some(broker) = gateway(
        "separate_response = true",
        &[Setting::new(
            "GATEWAY_GATEWAY__COAP__SEPARATE_RESPONSE",
            "true",
        )],
    ) else {
        return;
    };
    let topic = unique_topic("coap-sep");
    let id = unique_client_id("sep");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);

    // On the wire: an empty ACK for the request, then the 2.04 as a confirmable message
    // with the request's token, sent again until we acknowledge it.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let target = format!("{}:{}", broker.host, broker.coap_port);
    let query = format!("clientid={id}");
    let post = raw_request(
        0,
        0x02,
        0x7001,
        b"\x5e",
        &format!("ps/{topic}/raw"),
        &[&query],
        b"raw",
    );
    socket.send_to(&post, &target).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x60, 0x00, 0x70, 0x01], "an empty ACK first");
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..2],
        &[0x41, 0x44],
        "a confirmable 2.04: {:?}",
        &buf[..n]
    );
    assert_eq!(buf[4], 0x5e, "with the request's token");
    let (first_high, first_low) = (buf[2], buf[3]);
    assert_eq!(sub.recv(TIMEOUT).payload, b"raw");
    // Not acknowledged: it comes again with the same message id.
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        (&buf[..2], buf[2], buf[3]),
        (&[0x41u8, 0x44][..], first_high, first_low),
        "the retransmission: {:?}",
        &buf[..n]
    );
    socket
        .send_to(&[0x60, 0x00, first_high, first_low], &target)
        .unwrap();
    // A duplicate of the request gets the empty ACK again and is not published twice.
    socket.send_to(&post, &target).unwrap();
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &[0x60, 0x00, 0x70, 0x01]);

    // Reference clients take separate responses as answers.
    let (ok, _, stderr) = coap_client(
        &broker,
        &["-m", "post", "-e", "libcoap"],
        &format!("/ps/{topic}/libcoap?clientid={id}-l"),
    );
    assert!(ok, "{COAP_CLIENT}: {stderr}");
    assert_eq!(sub.recv(TIMEOUT).payload, b"libcoap");
    let mut client = AiocoapClient::spawn(&broker);
    let answer = client.request(
        "POST",
        &format!("/ps/{topic}/aiocoap?clientid={id}-a"),
        b"aiocoap",
        false,
    );
    assert_eq!(answer.code, "2.04");
    assert_eq!(sub.recv(TIMEOUT).payload, b"aiocoap");
    assert_eq!(
        client.observe(&format!("/ps/{topic}/aiocoap?clientid={id}-a")),
        "2.05"
    );
}

#[test]
fn a_listener_mountpoint_replaces_the_gateways() {
    let Some(broker) = gateway(
        "a CoAP listener with its own mountpoint",
        &[
            Setting::new("GATEWAY_GATEWAY__COAP__MOUNTPOINT", "gateway-wide/"),
            Setting::new(
                "GATEWAY_GATEWAY__COAP__LISTENERS__UDP__DEFAULT__MOUNTPOINT",
                "site-a/${clientid}/",
            ),
        ],
    ) else {
        return;
    };
    let topic = unique_topic("coap-mounted");
    let id = unique_client_id("mounted");
    let mut sub = MosquittoSub::start(&broker, Version::V5, &["#"], 1, &[]);
    let (ok, _, stderr) = coap_client(
        &broker,
        &["-m", "post", "-e", "mounted"],
        &format!("/ps/{topic}?clientid={id}"),
    );
    assert!(ok, "{COAP_CLIENT}: {stderr}");
    let msg = sub.recv(TIMEOUT);
    assert_eq!(msg.topic, format!("site-a/{id}/{topic}"));
    assert_eq!(msg.payload, b"mounted");
}

/// A CoAP message built by hand with any options, given in ascending number order.
fn coap_message(
    kind: u8,
    code: u8,
    message_id: u16,
    token: &[u8],
    options: &[(u16, &[u8])],
) -> Vec<u8> {
    fn nibble(value: usize, extended: &mut Vec<u8>) -> u8 {
        match value {
            0..=12 => value as u8,
            13..=268 => {
                extended.push((value - 13) as u8);
                13
            }
            _ => {
                extended.extend_from_slice(&((value - 269) as u16).to_be_bytes());
                14
            }
        }
    }
    let mut out = vec![0x40 | (kind << 4) | token.len() as u8, code];
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(token);
    let mut previous = 0u16;
    for (number, value) in options {
        let mut extended = Vec::new();
        let delta = nibble(usize::from(number - previous), &mut extended);
        let length = nibble(value.len(), &mut extended);
        previous = *number;
        out.push((delta << 4) | length);
        out.extend_from_slice(&extended);
        out.extend_from_slice(value);
    }
    out
}

/// Everything a socket receives until it has been quiet for `quiet`.
fn receive_until_quiet(socket: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    socket.set_read_timeout(Some(quiet)).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = socket.recv(&mut buf) {
        received.push(buf[..n].to_vec());
    }
    received
}

#[test]
fn one_small_non_observe_gets_at_most_three_times_its_bytes_until_the_client_answers() {
    let Some(broker) = gateway("a CoAP listener", &[]) else {
        return;
    };
    let prefix = unique_topic("coap-amp");
    for n in 0..20 {
        let topic = format!("{prefix}/{n}");
        mosquitto_pub(&broker, Version::V311, &topic, &[b'r'; 1000], 1, true, &[]);
    }
    // One non-confirmable GET with Observe of the whole tree, from an address anyone could
    // have written into the datagram: 20 KB of retained messages wait for it.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .connect(format!("{}:{}", broker.host, broker.coap_port))
        .unwrap();
    let request = coap_message(
        1,
        0x01,
        0x4242,
        b"t",
        &[(6, b""), (11, b"ps"), (11, prefix.as_bytes()), (11, b"#")],
    );
    socket.send(&request).unwrap();
    // A retransmission of the answer (ACK_TIMEOUT 2 s x up to 1.5) fits in the wait.
    let unanswered = receive_until_quiet(&socket, Duration::from_millis(3500));
    let sent: usize = unanswered.iter().map(Vec::len).sum();
    assert!(
        sent <= 3 * request.len(),
        "{sent} bytes sent for a request of {} bytes, in datagrams of {:?} bytes",
        request.len(),
        unanswered.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // The observe is answered 2.05 in a confirmable message, whose acknowledgement would
    // show that the client receives here; a real client acknowledges it, and the retained
    // messages follow, one confirmable notification per acknowledgement.
    let answer = unanswered
        .iter()
        .find(|d| d.len() > 4 && d[1] == 0x45 && d[0] >> 4 & 0x3 == 0)
        .expect("the observe is answered 2.05, confirmable");
    socket.send(&[0x60, 0, answer[2], answer[3]]).unwrap();
    let mut retained = 0;
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 65536];
    while retained < 3 {
        let n = socket.recv(&mut buf).expect("a retained notification");
        let datagram = &buf[..n];
        if datagram[1] == 0x45 && datagram.ends_with(&[b'r'; 1000]) {
            retained += 1;
            assert_eq!(
                datagram[0] >> 4 & 0x3,
                0,
                "confirmable, so paced by its ACK"
            );
            socket.send(&[0x60, 0, datagram[2], datagram[3]]).unwrap();
        }
    }
}

#[test]
fn a_request_with_wrong_credentials_naming_a_client_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwd");
    gateway_passwd(&passwords, "alice", "secret");
    let Some(broker) = gateway("a password file", &password_file_only(&passwords)) else {
        return;
    };
    let topic = unique_topic("coap-claim");
    let id = unique_client_id("victim");
    let mut victim = AiocoapClient::spawn(&broker);
    assert_eq!(
        victim.observe(&format!("/ps/{topic}/%23?clientid={id}&u=alice&p=secret")),
        "2.05"
    );
    let publish = |payload: &[u8]| {
        mosquitto_pub(
            &broker,
            Version::V311,
            &format!("{topic}/a"),
            payload,
            1,
            false,
            &["-u", "alice", "-P", "secret"],
        )
    };
    publish(b"before");
    assert_eq!(victim.notification().payload, b"before");

    // From another address, naming the victim's client id with a wrong password.
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    forger
        .connect(format!("{}:{}", broker.host, broker.coap_port))
        .unwrap();
    let client_query = format!("clientid={id}");
    let claim = coap_message(
        0,
        0x02,
        0x0777,
        b"f",
        &[
            (11, b"ps"),
            (11, topic.as_bytes()),
            (11, b"x"),
            (15, client_query.as_bytes()),
            (15, b"u=alice"),
            (15, b"p=wrong"),
        ],
    );
    forger.send(&claim).unwrap();
    forger.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 2048];
    let n = forger.recv(&mut buf).expect("an answer");
    assert_eq!(buf[1], 0x81, "4.01: {:?}", &buf[..n]);

    // The victim's observation still notifies the victim, and nothing reaches the forger.
    publish(b"after");
    let after = victim.notification();
    assert_eq!(after.payload, b"after");
    assert!(receive_until_quiet(&forger, Duration::from_millis(500)).is_empty());
    assert!(
        !broker.log_tail().contains("peer moved to a new address"),
        "log:\n{}",
        broker.log_tail()
    );
}
