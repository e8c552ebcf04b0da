//! The CoAP channel and the broker driven datagram by datagram on a virtual clock: no
//! socket, no sleeping. An MQTT session on the same broker plays the MQTT side.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::too_many_arguments,
    clippy::type_complexity
)]

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_coap::{CoapChannel, Settings, UNDERSTOOD_CRITICAL_BLOCKWISE};
use adapter_kit::coap::{
    CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType, TransmissionParams,
};
use adapter_kit::coap_block::{uint_option, BlockOption, BlockwiseParams};
use bytes::Bytes;
use common::settings;
use gateway_config::AclNoMatch;
use gateway_config::CoapNotifyType;
use mqtt_core::auth::{AclAuthorizer, Auth, AuthOutcome, Authenticator, PasswordAuthenticator};
use mqtt_core::broker::Broker;
use mqtt_core::codec::QoS;
use mqtt_core::message::Message as Routed;
use mqtt_core::protocol::{CertificateIdentity, Flow};
use mqtt_core::rate::PublishRates;
use mqtt_core::session::{SessionCell, SessionKey};
use mqtt_core::storage::MapStore;
use mqtt_core::testing::{self, broker, NoWakeup};

struct Peer {
    channel: CoapChannel,
    next_id: u16,
    closed: bool,
    /// Answers the ping that asks whether it receives at its address, as a real client
    /// does, and leaves it out of what the test sees.
    answers_address_check: bool,
}

impl Peer {
    fn new(broker: &Arc<Broker>, settings: Settings, now: Instant) -> Peer {
        Peer {
            channel: CoapChannel::new(
                broker.clone(),
                Arc::new(settings),
                None,
                Arc::new(NoWakeup),
                7,
                now,
            ),
            next_id: 100,
            closed: false,
            answers_address_check: true,
        }
    }

    /// A peer on a DTLS session that authenticated `identity`.
    fn over_dtls(broker: &Arc<Broker>, settings: Settings, identity: &str, now: Instant) -> Peer {
        let mut peer = Peer::new(broker, settings, now);
        peer.channel = peer
            .channel
            .with_transport_identity(Some(Arc::from(identity)));
        peer
    }

    fn send_raw(&mut self, datagram: Vec<u8>, now: Instant) -> Vec<Packet> {
        let validated = self.channel.address_validated();
        let mut out = Vec::new();
        let flow = self
            .channel
            .handle_datagram(Bytes::from(datagram), &mut out, now);
        self.closed |= flow == Flow::Close;
        let mut answers = decode_all(out);
        if validated || !self.answers_address_check {
            return answers;
        }
        // An observer's address is checked with a confirmable message: the answer to its
        // observe (after an empty acknowledgement), or a ping. A real client acknowledges
        // the one and resets the other; what follows is what the test sees.
        self.answers_address_check = false;
        if let Some(at) = answers.iter().position(is_ping) {
            let ping = answers.remove(at);
            answers.extend(self.reset(&ping, now));
        } else if let Some(answer) = answers
            .iter()
            .find(|p| {
                p.header.get_type() == MessageType::Confirmable
                    && matches!(code(p), MessageClass::Response(_))
            })
            .cloned()
        {
            answers.retain(|packet| !is_empty_ack(packet));
            answers.extend(self.ack(&answer, now));
        }
        self.answers_address_check = true;
        answers
    }

    /// Sends a request and returns everything the channel sent back.
    fn request(
        &mut self,
        kind: MessageType,
        method: RequestType,
        path: &str,
        token: &[u8],
        observe: Option<u32>,
        payload: &[u8],
        now: Instant,
    ) -> Vec<Packet> {
        self.next_id += 1;
        let datagram = build(kind, method, self.next_id, path, token, observe, payload);
        self.send_raw(datagram, now)
    }

    fn post(&mut self, path: &str, payload: &[u8], now: Instant) -> Packet {
        let answers = self.request(
            MessageType::Confirmable,
            RequestType::Post,
            path,
            b"p",
            None,
            payload,
            now,
        );
        answers.into_iter().next().expect("an answer")
    }

    fn observe(&mut self, path: &str, token: &[u8], now: Instant) -> Vec<Packet> {
        self.request(
            MessageType::Confirmable,
            RequestType::Get,
            path,
            token,
            Some(0),
            b"",
            now,
        )
    }

    fn wake(&mut self, now: Instant) -> Vec<Packet> {
        let mut out = Vec::new();
        let flow = self.channel.handle_wakeup(&mut out, now);
        self.closed |= flow == Flow::Close;
        decode_all(out)
    }

    fn tick(&mut self, now: Instant) -> Vec<Packet> {
        let mut out = Vec::new();
        let flow = self.channel.handle_timeout(&mut out, now);
        self.closed |= flow == Flow::Close;
        decode_all(out)
    }

    fn ack(&mut self, message: &Packet, now: Instant) -> Vec<Packet> {
        let id = message.header.message_id;
        self.send_raw(vec![0x60, 0, (id >> 8) as u8, id as u8], now)
    }

    fn reset(&mut self, message: &Packet, now: Instant) -> Vec<Packet> {
        let id = message.header.message_id;
        self.send_raw(vec![0x70, 0, (id >> 8) as u8, id as u8], now)
    }
}

fn is_empty_ack(packet: &Packet) -> bool {
    packet.header.code == MessageClass::Empty
        && packet.header.get_type() == MessageType::Acknowledgement
}

fn is_ping(packet: &Packet) -> bool {
    packet.header.code == MessageClass::Empty
        && packet.header.get_type() == MessageType::Confirmable
}

fn decode_all(out: Vec<Bytes>) -> Vec<Packet> {
    out.iter()
        .map(|datagram| Packet::from_bytes(datagram).expect("the channel sends valid CoAP"))
        .collect()
}

/// A request to `path`, which may carry a `?query` with `&`-separated parameters.
fn build(
    kind: MessageType,
    method: RequestType,
    message_id: u16,
    path: &str,
    token: &[u8],
    observe: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = common::request(method, path, token, observe);
    packet.header.set_type(kind);
    packet.header.message_id = message_id;
    packet.payload = payload.to_vec();
    packet.to_bytes_unlimited().unwrap()
}

fn code(packet: &Packet) -> MessageClass {
    packet.header.code
}

fn content() -> MessageClass {
    MessageClass::Response(ResponseType::Content)
}

/// An MQTT session subscribed to `filter`, to see what CoAP clients publish.
fn mqtt_subscriber(broker: &Arc<Broker>, filter: &str, now: Instant) -> Arc<SessionCell> {
    // Dropped unclosed, the session stays attached, as to a connection that never closes.
    testing::subscriber(broker, "watcher", filter, QoS::ExactlyOnce, 0, now)
        .session()
        .clone()
}

fn drain(session: &SessionCell, now: Instant) -> Vec<Arc<Routed>> {
    let mut state = session.state.lock();
    std::iter::from_fn(|| state.pop_queued(now).map(|d| d.message)).collect()
}

#[test]
fn a_duplicate_confirmable_publish_is_answered_again_but_routed_once() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "dup/#", now);
    let mut peer = Peer::new(&broker, settings(), now);
    let datagram = build(
        MessageType::Confirmable,
        RequestType::Post,
        9,
        "/ps/dup/a?clientid=c1&qos=1",
        b"tk",
        None,
        b"once",
    );
    let first = peer.send_raw(datagram.clone(), now);
    let again = peer.send_raw(datagram, now + Duration::from_secs(3));
    assert_eq!(first.len(), 1);
    assert_eq!(first, again);
    assert_eq!(
        code(&first[0]),
        MessageClass::Response(ResponseType::Changed)
    );
    assert_eq!(first[0].header.get_type(), MessageType::Acknowledgement);
    let routed = drain(&watcher, now);
    assert_eq!(routed.len(), 1);
    assert_eq!(
        (&*routed[0].topic, &routed[0].payload[..], routed[0].qos),
        ("dup/a", &b"once"[..], QoS::AtLeastOnce)
    );
}

#[test]
fn publish_queries_set_qos_retain_expiry_and_put_publishes_too() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "q/#", now);
    let mut peer = Peer::new(&broker, settings(), now);
    let answer = peer.request(
        MessageType::NonConfirmable,
        RequestType::Put,
        "/ps/q/1?c=c2&q=2&r=true&expiry=60",
        b"",
        None,
        b"x",
        now,
    );
    assert_eq!(answer[0].header.get_type(), MessageType::NonConfirmable);
    assert_eq!(
        code(&answer[0]),
        MessageClass::Response(ResponseType::Changed)
    );
    // Without a qos query a non-confirmable publish is QoS 0, a confirmable one QoS 1.
    peer.request(
        MessageType::NonConfirmable,
        RequestType::Post,
        "/ps/q/2",
        b"",
        None,
        b"y",
        now,
    );
    peer.post("/ps/q/3", b"z", now);
    let routed = drain(&watcher, now);
    assert_eq!(routed.len(), 3);
    assert_eq!(routed[0].qos, QoS::ExactlyOnce);
    assert!(routed[0].retain);
    assert_eq!(routed[0].properties.message_expiry_interval, Some(60));
    assert_eq!(routed[1].qos, QoS::AtMostOnce);
    assert!(!routed[1].retain);
    assert_eq!(routed[2].qos, QoS::AtLeastOnce);
    assert_eq!(broker.retained_count(), 1);
}

#[test]
fn bad_requests_get_their_codes() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, settings(), now);
    let cases: &[(RequestType, &str, Option<u32>, &[u8], ResponseType)] = &[
        (
            RequestType::Post,
            "/ps",
            None,
            b"t",
            ResponseType::BadRequest,
        ),
        (
            RequestType::Post,
            "/ps/a/%2B",
            None,
            b"t",
            ResponseType::Changed,
        ),
        (
            RequestType::Post,
            "/ps/a/+",
            None,
            b"t",
            ResponseType::BadRequest,
        ),
        (
            RequestType::Post,
            "/ps/a?qos=5",
            None,
            b"t",
            ResponseType::BadRequest,
        ),
        (
            RequestType::Post,
            "/other",
            None,
            b"t",
            ResponseType::NotFound,
        ),
        (
            RequestType::Delete,
            "/ps/a",
            None,
            b"t",
            ResponseType::MethodNotAllowed,
        ),
        (
            RequestType::Get,
            "/ps/a",
            None,
            b"t",
            ResponseType::BadRequest,
        ),
        (
            RequestType::Get,
            "/ps/a",
            Some(2),
            b"t",
            ResponseType::BadRequest,
        ),
        (
            RequestType::Get,
            "/ps/a",
            Some(0),
            b"",
            ResponseType::BadRequest,
        ),
    ];
    for (method, path, observe, token, want) in cases {
        let answer = peer.request(
            MessageType::Confirmable,
            *method,
            &format!(
                "{path}{}clientid=bad",
                if path.contains('?') { "&" } else { "?" }
            ),
            token,
            *observe,
            b"",
            now,
        );
        assert_eq!(
            code(&answer[0]),
            MessageClass::Response(*want),
            "{method:?} {path} observe {observe:?}"
        );
    }
}

#[test]
fn observe_subscribes_with_wildcards_and_notifies_with_increasing_sequence_numbers() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, settings(), now);
    // `#` arrives percent-decoded in the Uri-Path option.
    let answer = peer.observe("/ps/obs/#?clientid=o1", b"ob", now);
    assert_eq!(answer.len(), 1);
    assert_eq!(code(&answer[0]), content());
    let registered = answer[0].get_observe_value().unwrap().unwrap();
    testing::publish(&broker, "obs/a", b"n1", QoS::AtMostOnce, now);
    testing::publish(&broker, "obs/b/c", b"n2", QoS::AtMostOnce, now);
    let notes = peer.wake(now);
    assert_eq!(notes.len(), 2);
    let mut last = registered;
    for (note, payload) in notes.iter().zip([&b"n1"[..], b"n2"]) {
        assert_eq!(note.header.get_type(), MessageType::NonConfirmable);
        assert_eq!(note.get_token(), b"ob");
        assert_eq!(note.payload, payload);
        assert!(note.get_content_format().is_none());
        let sequence = note.get_observe_value().unwrap().unwrap();
        assert!(sequence > last);
        last = sequence;
    }
    // Observe 1 cancels: nothing more arrives.
    let answer = peer.request(
        MessageType::Confirmable,
        RequestType::Get,
        "/ps/obs/#",
        b"ob",
        Some(1),
        b"",
        now,
    );
    assert_eq!(code(&answer[0]), content());
    assert!(answer[0].get_observe_value().is_none());
    assert_eq!(peer.channel.observation_count(), 0);
    testing::publish(&broker, "obs/a", b"n3", QoS::AtMostOnce, now);
    assert!(peer.wake(now).is_empty());
}

#[test]
fn one_confirmable_notification_in_flight_and_the_rest_wait_for_its_ack() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, settings(), now);
    peer.observe("/ps/con?clientid=o2", b"cn", now);
    for payload in [b"1", b"2", b"3"] {
        testing::publish(&broker, "con", payload, QoS::AtLeastOnce, now);
    }
    let first = peer.wake(now);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].header.get_type(), MessageType::Confirmable);
    assert_eq!(first[0].payload, b"1");
    // The ACK releases the next one.
    let second = peer.ack(&first[0], now);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].payload, b"2");
    let third = peer.ack(&second[0], now);
    assert_eq!(third[0].payload, b"3");
    assert!(peer.ack(&third[0], now).is_empty());
}

#[test]
fn an_unacknowledged_notification_is_retransmitted_then_the_observer_removed() {
    let start = Instant::now();
    let broker = broker(start);
    let mut peer = Peer::new(&broker, settings(), start);
    peer.observe("/ps/gone?clientid=o3", b"gn", start);
    testing::publish(&broker, "gone", b"hello", QoS::AtLeastOnce, start);
    let sent = peer.wake(start);
    assert_eq!(sent.len(), 1);
    let mut now = start;
    for wait in [2, 4, 8, 16] {
        now += Duration::from_secs(wait);
        let again = peer.tick(now);
        assert_eq!(again, sent, "retransmitted after {wait} s");
    }
    now += Duration::from_secs(32);
    // Given up: the observer is removed, and the silent client is then pinged.
    let after = peer.tick(now);
    assert_eq!(peer.channel.observation_count(), 0);
    assert!(after.iter().all(|p| p.payload.is_empty()));
    testing::publish(&broker, "gone", b"later", QoS::AtLeastOnce, now);
    assert!(peer.wake(now).iter().all(|p| p.payload.is_empty()));
}

#[test]
fn a_reset_notification_removes_the_observer() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, settings(), now);
    peer.observe("/ps/rst/+?clientid=o4", b"rs", now);
    testing::publish(&broker, "rst/x", b"a", QoS::AtMostOnce, now);
    let note = peer.wake(now);
    assert_eq!(note[0].header.get_type(), MessageType::NonConfirmable);
    peer.reset(&note[0], now);
    assert_eq!(peer.channel.observation_count(), 0);
    testing::publish(&broker, "rst/x", b"b", QoS::AtMostOnce, now);
    assert!(peer.wake(now).is_empty());
}

#[test]
fn notify_type_con_and_non_override_the_qos() {
    let now = Instant::now();
    let broker = broker(now);
    for (kind, qos, want) in [
        (
            CoapNotifyType::Con,
            QoS::AtMostOnce,
            MessageType::Confirmable,
        ),
        (
            CoapNotifyType::Non,
            QoS::AtLeastOnce,
            MessageType::NonConfirmable,
        ),
    ] {
        let mut peer = Peer::new(
            &broker,
            Settings {
                notify_type: kind,
                ..settings()
            },
            now,
        );
        peer.observe(&format!("/ps/nt/{kind:?}?clientid=nt{kind:?}"), b"n", now);
        testing::publish(&broker, &format!("nt/{kind:?}"), b"m", qos, now);
        let note = peer.wake(now);
        assert_eq!(note[0].header.get_type(), want, "{kind:?}");
    }
}

#[test]
fn retained_messages_arrive_after_the_observe_answer() {
    let now = Instant::now();
    let broker = broker(now);
    let mut publisher = Peer::new(&broker, settings(), now);
    publisher.post("/ps/ret/a?clientid=rp&retain=true", b"kept", now);
    let mut peer = Peer::new(&broker, settings(), now);
    let answer = peer.observe("/ps/ret/#?clientid=ro", b"rt", now);
    assert_eq!(answer.len(), 2);
    assert_eq!(code(&answer[0]), content());
    assert_eq!(answer[1].payload, b"kept");
    assert_eq!(answer[1].get_token(), b"rt");
}

#[test]
fn content_format_becomes_the_content_type_and_back() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "cf", now);
    let mut observer = Peer::new(&broker, settings(), now);
    observer.observe("/ps/cf?clientid=cfo", b"cf", now);
    let mut datagram = Packet::from_bytes(&build(
        MessageType::Confirmable,
        RequestType::Post,
        1,
        "/ps/cf?clientid=cfp",
        b"x",
        None,
        b"{}",
    ))
    .unwrap();
    datagram.add_option(CoapOption::ContentFormat, vec![50]);
    let mut publisher = Peer::new(&broker, settings(), now);
    publisher.send_raw(datagram.to_bytes_unlimited().unwrap(), now);
    let routed = drain(&watcher, now);
    assert_eq!(
        routed[0].properties.content_type.as_deref(),
        Some("application/json")
    );
    let note = observer.wake(now);
    assert_eq!(
        note[0].get_first_option(CoapOption::ContentFormat),
        Some(&vec![50])
    );
}

#[test]
fn mountpoint_prefixes_topics_with_the_client_id() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "coap/#", now);
    let mut peer = Peer::new(
        &broker,
        Settings {
            mountpoint: "coap/${clientid}/".into(),
            ..settings()
        },
        now,
    );
    peer.post("/ps/t?clientid=m1", b"v", now);
    assert_eq!(&*drain(&watcher, now)[0].topic, "coap/m1/t");
    peer.observe("/ps/in", b"i", now);
    testing::publish(&broker, "coap/m1/in", b"w", QoS::AtMostOnce, now);
    assert_eq!(peer.wake(now)[0].payload, b"w");
}

#[test]
fn a_silent_observer_is_pinged_and_forgotten_when_it_does_not_answer() {
    let start = Instant::now();
    let broker = broker(start);
    let mut peer = Peer::new(&broker, settings(), start);
    peer.observe("/ps/quiet?clientid=q1", b"q", start);
    let mut now = start + Duration::from_secs(30);
    let ping = peer.tick(now);
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].header.code, MessageClass::Empty);
    assert_eq!(ping[0].header.get_type(), MessageType::Confirmable);
    // Its Reset proves it is there.
    peer.reset(&ping[0], now);
    assert!(!peer.closed);
    assert_eq!(
        peer.channel.next_deadline(),
        Some(now + Duration::from_secs(30))
    );
    now += Duration::from_secs(30);
    let ping = peer.tick(now);
    assert_eq!(ping.len(), 1);
    for wait in [2, 4, 8, 16, 32] {
        now += Duration::from_secs(wait);
        peer.tick(now);
    }
    assert!(peer.closed);
    assert!(broker
        .session(&SessionKey {
            namespace: "coap",
            client_id: Arc::from("q1"),
        })
        .is_some());
    peer.channel.handle_closed(now);
    assert!(broker
        .session(&SessionKey {
            namespace: "coap",
            client_id: Arc::from("q1"),
        })
        .is_none());
}

#[test]
fn a_client_without_observations_is_forgotten_after_the_heartbeat() {
    let start = Instant::now();
    let broker = broker(start);
    let mut peer = Peer::new(&broker, settings(), start);
    peer.post("/ps/hb?clientid=h1", b"v", start);
    assert!(!peer.closed);
    assert_eq!(
        peer.channel.next_deadline(),
        Some(start + Duration::from_secs(30))
    );
    peer.tick(start + Duration::from_secs(30));
    assert!(peer.closed);
}

/// Over UDP a peer acting for no client is forgotten at once, as it costs nothing to make
/// again; over DTLS that would end the session and cost the device a handshake, so a ping
/// or a refused request first keeps it, until it is silent for the heartbeat interval.
#[test]
fn a_dtls_peer_acting_for_no_client_yet_is_kept_until_silent_for_the_heartbeat() {
    let start = Instant::now();
    let broker = broker(start);
    let dtls_peer = || Peer::over_dtls(&broker, settings(), "dev-1", start);
    let ping = |peer: &mut Peer, at: Instant| {
        peer.next_id += 1;
        let mut empty = Packet::new();
        empty.header.set_type(MessageType::Confirmable);
        empty.header.message_id = peer.next_id;
        peer.send_raw(empty.to_bytes().expect("an empty message"), at)
    };

    let mut udp = Peer::new(&broker, settings(), start);
    assert_eq!(ping(&mut udp, start).len(), 1, "a reset");
    assert!(udp.closed, "a plain UDP peer holds nothing worth keeping");

    let mut peer = dtls_peer();
    assert_eq!(ping(&mut peer, start).len(), 1, "a reset");
    assert!(!peer.closed);
    let refused = peer.post("/ps/t?clientid=someone-else", b"v", start);
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Forbidden)
    );
    assert!(!peer.closed);
    let later = start + Duration::from_secs(10);
    let ok = peer.post("/ps/t", b"v", later);
    assert_eq!(code(&ok), MessageClass::Response(ResponseType::Changed));
    assert!(!peer.closed);

    let mut idle = dtls_peer();
    ping(&mut idle, start);
    assert_eq!(
        idle.channel.next_deadline(),
        Some(start + Duration::from_secs(30))
    );
    idle.tick(start + Duration::from_secs(29));
    assert!(!idle.closed);
    idle.tick(start + Duration::from_secs(30));
    assert!(idle.closed, "silent for the heartbeat interval");
}

#[test]
fn connection_mode_hands_out_a_token_and_checks_it() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "cm/#", now);
    let connected = || Settings {
        connection_required: true,
        ..settings()
    };
    let mut peer = Peer::new(&broker, connected(), now);
    let missing = peer.post("/mqtt/connection", b"", now);
    assert_eq!(
        code(&missing),
        MessageClass::Response(ResponseType::BadRequest)
    );
    let created = peer.post(
        "/mqtt/connection?clientid=cm1&username=u&password=p",
        b"",
        now,
    );
    assert_eq!(
        code(&created),
        MessageClass::Response(ResponseType::Created)
    );
    let token = String::from_utf8(created.payload.clone()).unwrap();
    assert!(token.parse::<u32>().is_ok(), "{token}");

    let no_token = peer.post("/ps/cm/a?clientid=cm1", b"v", now);
    assert_eq!(
        code(&no_token),
        MessageClass::Response(ResponseType::BadRequest)
    );
    let wrong = peer.post(&format!("/ps/cm/a?clientid=cm1&token={token}0"), b"v", now);
    assert_eq!(
        code(&wrong),
        MessageClass::Response(ResponseType::Unauthorized)
    );
    assert!(drain(&watcher, now).is_empty());
    let good = peer.post(&format!("/ps/cm/a?clientid=cm1&token={token}"), b"v", now);
    assert_eq!(code(&good), MessageClass::Response(ResponseType::Changed));
    assert_eq!(drain(&watcher, now).len(), 1);

    // The token works from another address too, taking the session over.
    let mut moved = Peer::new(&broker, connected(), now);
    let good = moved.post(&format!("/ps/cm/b?clientid=cm1&token={token}"), b"w", now);
    assert_eq!(code(&good), MessageClass::Response(ResponseType::Changed));
    assert_eq!(drain(&watcher, now).len(), 1);
    assert!(peer.wake(now).is_empty());
    assert!(peer.closed, "the first address is closed by the takeover");

    let heartbeat = moved.request(
        MessageType::Confirmable,
        RequestType::Put,
        &format!("/mqtt/connection?clientid=cm1&token={token}"),
        b"h",
        None,
        b"",
        now,
    );
    assert_eq!(
        code(&heartbeat[0]),
        MessageClass::Response(ResponseType::Changed)
    );
    let deleted = moved.request(
        MessageType::Confirmable,
        RequestType::Delete,
        &format!("/mqtt/connection?clientid=cm1&token={token}"),
        b"d",
        None,
        b"",
        now,
    );
    assert_eq!(
        code(&deleted[0]),
        MessageClass::Response(ResponseType::Deleted)
    );
    assert!(moved.closed);
}

#[test]
fn bad_credentials_get_4_01() {
    let now = Instant::now();
    let config = gateway_config::Config::from_toml_str("").expect("defaults");
    let broker = Arc::new(Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        Auth {
            authenticator: Arc::new(PasswordAuthenticator::new(None, false)),
            authorizer: Arc::new(AclAuthorizer::empty(AclNoMatch::Allow)),
        },
        now,
    ));
    let mut peer = Peer::new(&broker, settings(), now);
    let refused = peer.post("/ps/a?clientid=x", b"v", now);
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Unauthorized)
    );
    let mut peer = Peer::new(
        &broker,
        Settings {
            connection_required: true,
            ..settings()
        },
        now,
    );
    let refused = peer.post("/mqtt/connection?clientid=x", b"", now);
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Unauthorized)
    );
}

// ---- block-wise transfers (RFC 7959) ----------------------------------------------------

fn blockwise_settings(max_szx: u8, max_body_size: usize) -> Settings {
    Settings {
        transmission: TransmissionParams {
            ack_random_factor: 1.0,
            ..TransmissionParams::rfc7252(UNDERSTOOD_CRITICAL_BLOCKWISE)
        },
        blockwise: Some(BlockwiseParams {
            max_szx,
            max_body_size,
            lifetime: Duration::from_secs(247),
            max_transfers: 2,
        }),
        ..settings()
    }
}

fn with_options(datagram: Vec<u8>, options: &[(CoapOption, Vec<u8>)]) -> Vec<u8> {
    let mut packet = Packet::from_bytes(&datagram).unwrap();
    for (option, value) in options {
        packet.add_option(*option, value.clone());
    }
    packet.to_bytes_unlimited().unwrap()
}

fn block_option(packet: &Packet, option: CoapOption) -> BlockOption {
    BlockOption::decode(packet.get_first_option(option).expect("a block option")).unwrap()
}

fn uint(packet: &Packet, option: CoapOption) -> u64 {
    packet
        .get_first_option(option)
        .expect("the option")
        .iter()
        .fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

impl Peer {
    /// A confirmable POST carrying one Block1 block (and Size1 if given); returns the answer.
    fn block1(
        &mut self,
        path: &str,
        block: BlockOption,
        payload: &[u8],
        size1: Option<u32>,
        now: Instant,
    ) -> Packet {
        self.next_id += 1;
        // Each block under a token of its own: RFC 7959 lets the token change.
        let token = self.next_id.to_be_bytes();
        let mut options = vec![(CoapOption::Block1, block.encode())];
        if let Some(size) = size1 {
            options.push((CoapOption::Size1, uint_option(size)));
        }
        let datagram = with_options(
            build(
                MessageType::Confirmable,
                RequestType::Post,
                self.next_id,
                path,
                &token,
                None,
                payload,
            ),
            &options,
        );
        let answers = self.send_raw(datagram, now);
        assert_eq!(answers.len(), 1, "{answers:?}");
        answers.into_iter().next().unwrap()
    }

    /// A GET of block `num` of the size `szx` of `path`, without Observe; returns the
    /// answer and whatever followed it.
    fn get_block(&mut self, path: &str, num: u32, szx: u8, now: Instant) -> Vec<Packet> {
        self.next_id += 1;
        let block = BlockOption {
            num,
            more: false,
            szx,
        };
        let datagram = with_options(
            build(
                MessageType::Confirmable,
                RequestType::Get,
                self.next_id,
                path,
                b"g",
                None,
                b"",
            ),
            &[(CoapOption::Block2, block.encode())],
        );
        self.send_raw(datagram, now)
    }
}

fn blk(num: u32, more: bool, szx: u8) -> BlockOption {
    BlockOption { num, more, szx }
}

fn response_code(code: ResponseType) -> MessageClass {
    MessageClass::Response(code)
}

#[test]
fn block1_blocks_are_continued_then_published_once_as_one_body() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "up/#", now);
    let mut peer = Peer::new(&broker, blockwise_settings(6, 64 * 1024), now);
    let whole = body(10 * 1024 + 100);
    let path = "/ps/up/big?clientid=up1";
    let chunks: Vec<&[u8]> = whole.chunks(1024).collect();
    let last = chunks.len() - 1;
    for (num, chunk) in chunks.iter().enumerate() {
        let more = num < last;
        let size1 = (num == 0).then_some(whole.len() as u32);
        let answer = peer.block1(path, blk(num as u32, more, 6), chunk, size1, now);
        if more {
            assert_eq!(code(&answer), response_code(ResponseType::Continue));
            assert_eq!(
                block_option(&answer, CoapOption::Block1),
                blk(num as u32, true, 6)
            );
            assert!(
                drain(&watcher, now).is_empty(),
                "nothing before the last block"
            );
        } else {
            assert_eq!(code(&answer), response_code(ResponseType::Changed));
            assert_eq!(
                block_option(&answer, CoapOption::Block1),
                blk(num as u32, false, 6)
            );
        }
        if num == 3 {
            // The same block again under a new message id (its answer was lost): continued
            // again, appended once.
            let again = peer.block1(path, blk(3, true, 6), chunk, None, now);
            assert_eq!(code(&again), response_code(ResponseType::Continue));
        }
    }
    let routed = drain(&watcher, now);
    assert_eq!(routed.len(), 1);
    assert_eq!(&*routed[0].topic, "up/big");
    assert_eq!(&routed[0].payload[..], &whole[..]);
}

#[test]
fn block1_out_of_order_gets_4_08_and_a_body_over_the_limit_4_13_with_size1() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "lim/#", now);
    let mut peer = Peer::new(&broker, blockwise_settings(6, 2048), now);
    let path = "/ps/lim/a?clientid=lim1";
    let block = body(1024);
    let incomplete = response_code(ResponseType::RequestEntityIncomplete);
    let too_large = response_code(ResponseType::RequestEntityTooLarge);

    // A block of no upload under way.
    let answer = peer.block1(path, blk(1, true, 6), &block, None, now);
    assert_eq!(code(&answer), incomplete);
    // A gap: block 2 after block 0; the upload is then forgotten.
    peer.block1(path, blk(0, true, 6), &block, None, now);
    assert_eq!(
        code(&peer.block1(path, blk(2, true, 6), &block, None, now)),
        incomplete
    );
    assert_eq!(
        code(&peer.block1(path, blk(1, false, 6), &block, None, now)),
        incomplete
    );
    // Size1 announcing more than the limit: 4.13 naming the limit in Size1.
    let answer = peer.block1(path, blk(0, true, 6), &block, Some(4096), now);
    assert_eq!(code(&answer), too_large);
    assert_eq!(uint(&answer, CoapOption::Size1), 2048);
    // A body growing past the limit without Size1.
    peer.block1(path, blk(0, true, 6), &block, None, now);
    peer.block1(path, blk(1, true, 6), &block, None, now);
    let answer = peer.block1(path, blk(2, false, 6), b"x", None, now);
    assert_eq!(code(&answer), too_large);
    assert_eq!(uint(&answer, CoapOption::Size1), 2048);
    // The reserved size exponent 7, and a middle block shorter than its size: 4.00.
    let answer = peer.block1(path, blk(0, true, 7), &block, None, now);
    assert_eq!(code(&answer), response_code(ResponseType::BadRequest));
    let answer = peer.block1(path, blk(0, true, 6), &block[..100], None, now);
    assert_eq!(code(&answer), response_code(ResponseType::BadRequest));
    assert!(drain(&watcher, now).is_empty());
}

#[test]
fn block1_size_is_negotiated_down_to_ours() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "neg/#", now);
    // Our blocks are 16 bytes; the client starts with 1024.
    let mut peer = Peer::new(&broker, blockwise_settings(0, 4096), now);
    let path = "/ps/neg?clientid=neg1";
    let whole = body(1024 + 16 + 5);
    let answer = peer.block1(path, blk(0, true, 6), &whole[..1024], None, now);
    assert_eq!(code(&answer), response_code(ResponseType::Continue));
    assert_eq!(block_option(&answer, CoapOption::Block1), blk(0, true, 0));
    // RFC 7959 2.5: the client goes on after the 1024 bytes at the smaller size.
    let answer = peer.block1(path, blk(64, true, 0), &whole[1024..1040], None, now);
    assert_eq!(block_option(&answer, CoapOption::Block1), blk(64, true, 0));
    let answer = peer.block1(path, blk(65, false, 0), &whole[1040..], None, now);
    assert_eq!(code(&answer), response_code(ResponseType::Changed));
    assert_eq!(block_option(&answer, CoapOption::Block1), blk(65, false, 0));
    let routed = drain(&watcher, now);
    assert_eq!(routed.len(), 1);
    assert_eq!(&routed[0].payload[..], &whole[..]);
}

#[test]
fn block_options_are_bad_options_when_blockwise_is_off() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, settings(), now);
    let answer = peer.block1(
        "/ps/off?clientid=off1",
        blk(0, true, 6),
        &body(1024),
        None,
        now,
    );
    assert_eq!(code(&answer), response_code(ResponseType::BadOption));
}

/// Observes `topic`, publishes `large` and then `next` from MQTT, and returns the first
/// notification.
fn observe_then_publish(
    peer: &mut Peer,
    broker: &Broker,
    topic: &str,
    large: &[u8],
    now: Instant,
) -> Packet {
    let answer = peer.observe(&format!("/ps/{topic}?clientid=obs1"), b"ob", now);
    assert_eq!(code(&answer[0]), content());
    testing::publish(broker, topic, large, QoS::AtMostOnce, now);
    testing::publish(broker, topic, b"next", QoS::AtMostOnce, now);
    let sent = peer.wake(now);
    assert_eq!(sent.len(), 1, "later notifications wait: {sent:?}");
    sent.into_iter().next().unwrap()
}

#[test]
fn a_large_notification_is_read_in_block2_blocks_and_the_next_waits_for_it() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, blockwise_settings(6, 4096), now);
    let large = body(2500);
    let first = observe_then_publish(&mut peer, &broker, "big", &large, now);
    assert_eq!(first.get_token(), b"ob");
    assert!(first.get_observe_value().is_some());
    assert_eq!(block_option(&first, CoapOption::Block2), blk(0, true, 6));
    assert_eq!(uint(&first, CoapOption::Size2), 2500);
    let etag = first.get_first_option(CoapOption::ETag).unwrap().clone();
    let mut read = first.payload.clone();
    for num in 1..=2 {
        let mut sent = peer.get_block("/ps/big?clientid=obs1", num, 6, now);
        let block = sent.remove(0);
        assert_eq!(code(&block), content());
        assert_eq!(
            block_option(&block, CoapOption::Block2),
            blk(num, num < 2, 6)
        );
        assert_eq!(block.get_first_option(CoapOption::ETag), Some(&etag));
        assert!(block.get_observe_value().is_none());
        read.extend_from_slice(&block.payload);
        if num == 1 {
            assert!(
                sent.is_empty() && peer.wake(now).is_empty(),
                "still reading"
            );
        } else {
            // The last block served, the next notification goes out right after it.
            assert_eq!(sent.len(), 1);
            let next = &sent[0];
            assert_eq!(next.payload, b"next");
            assert!(next.get_first_option(CoapOption::Block2).is_none());
        }
    }
    assert_eq!(read, large);
    // A block beyond the end is a bad option; smaller blocks may be asked for.
    let beyond = peer.get_block("/ps/big?clientid=obs1", 9, 6, now).remove(0);
    assert_eq!(code(&beyond), response_code(ResponseType::BadOption));
    let small = peer.get_block("/ps/big?clientid=obs1", 3, 4, now).remove(0);
    assert_eq!(block_option(&small, CoapOption::Block2), blk(3, true, 4));
    assert_eq!(small.payload, &large[768..1024]);
}

#[test]
fn held_notifications_go_out_when_the_client_stops_reading_blocks() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, blockwise_settings(6, 4096), now);
    observe_then_publish(&mut peer, &broker, "stall", &body(3000), now);
    // Two acknowledgement timeouts (2 s, random factor 1.0) without a GET of the next block.
    let deadline = peer.channel.next_deadline().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(4));
    let next = peer.tick(deadline);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].payload, b"next");
}

#[test]
fn an_observe_request_may_ask_for_smaller_blocks() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, blockwise_settings(6, 4096), now);
    let datagram = with_options(
        build(
            MessageType::Confirmable,
            RequestType::Get,
            7,
            "/ps/small?clientid=sm1",
            b"sm",
            Some(0),
            b"",
        ),
        &[(CoapOption::Block2, blk(0, false, 2).encode())],
    );
    let answer = peer.send_raw(datagram, now);
    assert_eq!(code(&answer[0]), content());
    testing::publish(&broker, "small", &body(100), QoS::AtMostOnce, now);
    let sent = peer.wake(now);
    assert_eq!(block_option(&sent[0], CoapOption::Block2), blk(0, true, 2));
    assert_eq!(sent[0].payload.len(), 64);
}

#[test]
fn acl_denial_gets_4_01_for_publish_and_observe() {
    let now = Instant::now();
    let config = gateway_config::Config::from_toml_str("").expect("defaults");
    let acl = AclAuthorizer::parse(
        "deny all all secret/#\n",
        std::path::Path::new("acl"),
        AclNoMatch::Allow,
    )
    .unwrap();
    let broker = Arc::new(Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        Auth {
            authenticator: Arc::new(PasswordAuthenticator::new(None, true)),
            authorizer: Arc::new(acl),
        },
        now,
    ));
    let watcher = mqtt_subscriber(&broker, "#", now);
    let mut peer = Peer::new(&broker, settings(), now);
    let unauthorized = response_code(ResponseType::Unauthorized);
    assert_eq!(
        code(&peer.post("/ps/secret/a?clientid=acl1", b"v", now)),
        unauthorized
    );
    assert_eq!(
        code(&peer.observe("/ps/secret/#?clientid=acl1", b"o", now)[0]),
        unauthorized
    );
    assert_eq!(peer.channel.observation_count(), 0);
    // Elsewhere the same client is served.
    assert_eq!(
        code(&peer.post("/ps/open/a?clientid=acl1", b"v", now)),
        response_code(ResponseType::Changed)
    );
    let routed = drain(&watcher, now);
    assert_eq!(routed.len(), 1);
    assert_eq!(&*routed[0].topic, "open/a");
}

// ---- the client-session layer: credentials, ownership, refusals --------------------------

/// The password-file authenticator, counting how often it runs: each run is a PBKDF2 hash.
struct Counting {
    inner: PasswordAuthenticator,
    calls: AtomicUsize,
}

impl Authenticator for Counting {
    fn authenticate(
        &self,
        client: &mqtt_core::auth::ClientInfo,
        password: Option<&[u8]>,
    ) -> AuthOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.authenticate(client, password)
    }
}

impl Counting {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts from zero again (after the test's own MQTT sessions were authenticated).
    fn reset(&self) {
        self.calls.store(0, Ordering::SeqCst);
    }
}

/// A broker whose users are alice (password "wonder") and mallory ("evil"), with `acl`
/// (rules; no match allows). Anonymous clients are let in, as the MQTT watcher is.
fn broker_with_users(acl: &str, now: Instant) -> (Arc<Broker>, Arc<Counting>) {
    let users = testing::password_file(&[("alice", "wonder"), ("mallory", "evil")]);
    let counting = Arc::new(Counting {
        inner: PasswordAuthenticator::new(Some(users), true),
        calls: AtomicUsize::new(0),
    });
    let acl = AclAuthorizer::parse(acl, std::path::Path::new("acl"), AclNoMatch::Allow).unwrap();
    let broker = testing::broker_with_auth(
        Auth {
            authenticator: counting.clone(),
            authorizer: Arc::new(acl),
        },
        now,
    );
    (broker, counting)
}

const ALICE: &str = "u=alice&p=wonder";

#[test]
fn a_client_pays_the_password_check_once_not_per_request() {
    let now = Instant::now();
    let (broker, auth) = broker_with_users("", now);
    let watcher = mqtt_subscriber(&broker, "once/#", now);
    auth.reset();
    let mut peer = Peer::new(&broker, settings(), now);
    for n in 0..200 {
        let answer = peer.post(&format!("/ps/once/{n}?clientid=dev1&{ALICE}"), b"v", now);
        assert_eq!(code(&answer), response_code(ResponseType::Changed));
    }
    let observed = peer.observe(&format!("/ps/once/in?clientid=dev1&{ALICE}"), b"o", now);
    assert_eq!(code(&observed[0]), content());
    assert_eq!(auth.calls(), 1, "one check for 201 requests");
    assert_eq!(drain(&watcher, now).len(), 200);

    // Anything else presented is checked: a wrong password is refused and the session it
    // named is left as it was.
    let wrong = peer.post("/ps/once/x?clientid=dev1&u=alice&p=wander", b"v", now);
    assert_eq!(code(&wrong), response_code(ResponseType::Unauthorized));
    assert_eq!(auth.calls(), 2);
    let no_password = peer.post("/ps/once/x?clientid=dev1&u=alice", b"v", now);
    assert_eq!(
        code(&no_password),
        response_code(ResponseType::Unauthorized)
    );
    assert_eq!(auth.calls(), 3);
    assert!(drain(&watcher, now).is_empty());
    assert_eq!(peer.channel.observation_count(), 1);
    let again = peer.post(&format!("/ps/once/y?clientid=dev1&{ALICE}"), b"v", now);
    assert_eq!(code(&again), response_code(ResponseType::Changed));
    assert_eq!(
        auth.calls(),
        3,
        "the admitted credentials still need no check"
    );
    // Another client id behind the same address is another client: checked.
    let other = peer.post(&format!("/ps/once/z?clientid=dev2&{ALICE}"), b"v", now);
    assert_eq!(code(&other), response_code(ResponseType::Changed));
    assert_eq!(auth.calls(), 4);
}

#[test]
fn a_source_failing_too_often_gets_4_29_unchecked_until_its_lockout_ends() {
    let t0 = Instant::now();
    let (broker, auth) = broker_with_users("", t0);
    let watcher = mqtt_subscriber(&broker, "lock/#", t0);
    auth.reset();
    let mut peer = Peer::new(&broker, settings(), t0);
    for n in 0..5 {
        let wrong = peer.post(
            &format!("/ps/lock/a?clientid=d&u=alice&p=guess{n}"),
            b"v",
            t0,
        );
        assert_eq!(code(&wrong), response_code(ResponseType::Unauthorized));
        assert!(!peer.closed, "the source's failures are remembered");
    }
    assert_eq!(auth.calls(), 5);
    // Locked out: refused without a check, even with the right password, for a minute.
    let at = t0 + Duration::from_secs(10);
    for n in 0..1000 {
        let refused = peer.post(
            &format!("/ps/lock/a?clientid=d&u=alice&p=guess{n}"),
            b"v",
            at,
        );
        assert_eq!(code(&refused), response_code(ResponseType::TooManyRequests));
        assert_eq!(uint(&refused, CoapOption::MaxAge), 50, "seconds left");
    }
    let right = peer.post(&format!("/ps/lock/a?clientid=d&{ALICE}"), b"v", at);
    assert_eq!(code(&right), response_code(ResponseType::TooManyRequests));
    assert_eq!(auth.calls(), 5);
    assert!(drain(&watcher, at).is_empty());

    // Once the lockout is over the source is checked again.
    let after = t0 + Duration::from_secs(60);
    let right = peer.post(&format!("/ps/lock/a?clientid=d&{ALICE}"), b"v", after);
    assert_eq!(code(&right), response_code(ResponseType::Changed));
    assert_eq!(auth.calls(), 6);
    assert_eq!(drain(&watcher, after).len(), 1);
}

#[test]
fn a_lockout_does_not_refuse_the_client_already_admitted_and_is_forgotten_in_time() {
    let t0 = Instant::now();
    let (broker, auth) = broker_with_users("", t0);
    let mut peer = Peer::new(&broker, settings(), t0);
    let admitted = peer.post(&format!("/ps/k/a?clientid=d&{ALICE}"), b"v", t0);
    assert_eq!(code(&admitted), response_code(ResponseType::Changed));
    for _ in 0..5 {
        peer.post("/ps/k/a?clientid=d&u=alice&p=nope", b"v", t0);
    }
    let refused = peer.post("/ps/k/a?clientid=d&u=alice&p=nope", b"v", t0);
    assert_eq!(code(&refused), response_code(ResponseType::TooManyRequests));
    let served = peer.post(&format!("/ps/k/a?clientid=d&{ALICE}"), b"v", t0);
    assert_eq!(code(&served), response_code(ResponseType::Changed));
    assert_eq!(auth.calls(), 6);

    // A source without a session is kept only while its failures count.
    let mut stranger = Peer::new(&broker, settings(), t0);
    stranger.post("/ps/k/a?clientid=s&u=alice&p=nope", b"v", t0);
    assert!(!stranger.closed);
    let forgotten = t0 + Duration::from_secs(60);
    assert_eq!(stranger.channel.next_deadline(), Some(forgotten));
    stranger.tick(forgotten - Duration::from_millis(1));
    assert!(!stranger.closed);
    stranger.tick(forgotten);
    assert!(stranger.closed);
}

#[test]
fn another_users_session_is_refused_with_4_03_and_left_to_its_owner() {
    let now = Instant::now();
    let (broker, _) = broker_with_users("", now);
    let mut owner = Peer::new(&broker, settings(), now);
    let observed = owner.observe(&format!("/ps/own/t?clientid=dev&{ALICE}"), b"o", now);
    assert_eq!(code(&observed[0]), content());
    // One confirmable notification in flight, the second waits in the session's queue.
    testing::publish(&broker, "own/t", b"1", QoS::AtLeastOnce, now);
    testing::publish(&broker, "own/t", b"2", QoS::AtLeastOnce, now);
    let first = owner.wake(now);
    assert_eq!(first.len(), 1);

    let forbidden = response_code(ResponseType::Forbidden);
    let mut thief = Peer::new(&broker, settings(), now);
    let taken = thief.observe("/ps/own/#?clientid=dev&u=mallory&p=evil", b"m", now);
    assert_eq!(code(&taken[0]), forbidden);
    assert!(thief.closed, "nothing kept for the refused peer");
    // From the owner's own address too.
    let taken = owner.post("/ps/own/t?clientid=dev&u=mallory&p=evil", b"m", now);
    assert_eq!(code(&taken), forbidden);

    // Nor can a connection be opened on it.
    let mut connecting = Peer::new(
        &broker,
        Settings {
            connection_required: true,
            ..settings()
        },
        now,
    );
    let taken = connecting.post("/mqtt/connection?clientid=dev&u=mallory&p=evil", b"", now);
    assert_eq!(code(&taken), forbidden);

    let key = SessionKey {
        namespace: "coap",
        client_id: Arc::from("dev"),
    };
    let session = broker.session(&key).expect("the owner's session");
    assert_eq!(session.state.lock().subscriptions.len(), 1);
    let second = owner.ack(&first[0], now);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].payload, b"2", "the queued message is still there");
}

#[test]
fn a_client_id_that_would_widen_the_mountpoint_is_refused_with_4_00() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "#", now);
    let mountpointed = || Settings {
        mountpoint: "coap/${clientid}/".into(),
        ..settings()
    };
    for client_id in ["a+b", "#", "a/b"] {
        let mut peer = Peer::new(&broker, mountpointed(), now);
        let answer = peer.post(&format!("/ps/t?clientid={client_id}"), b"v", now);
        assert_eq!(
            code(&answer),
            response_code(ResponseType::BadRequest),
            "{client_id}"
        );
        let observed = peer.observe(&format!("/ps/t?clientid={client_id}"), b"o", now);
        assert_eq!(code(&observed[0]), response_code(ResponseType::BadRequest));
        assert_eq!(peer.channel.observation_count(), 0);
    }
    assert!(drain(&watcher, now).is_empty());
}

#[test]
fn publishing_to_sys_is_refused_with_4_01() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "$SYS/#", now);
    let mut peer = Peer::new(&broker, settings(), now);
    let answer = peer.post("/ps/$SYS/broker/uptime?clientid=sys1", b"0", now);
    assert_eq!(code(&answer), response_code(ResponseType::Unauthorized));
    assert!(drain(&watcher, now).is_empty());
}

#[test]
fn acl_denial_refuses_publish_and_observe_with_nothing_delivered() {
    let now = Instant::now();
    let (broker, _) = broker_with_users("deny user:alice all secret/#\n", now);
    let watcher = mqtt_subscriber(&broker, "#", now);
    let mut peer = Peer::new(&broker, settings(), now);
    let refused = peer.post(&format!("/ps/secret/a?clientid=acl2&{ALICE}"), b"v", now);
    assert_eq!(code(&refused), response_code(ResponseType::Unauthorized));
    let observed = peer.observe(&format!("/ps/secret/a?clientid=acl2&{ALICE}"), b"o", now);
    assert_eq!(
        code(&observed[0]),
        response_code(ResponseType::Unauthorized)
    );
    testing::publish(&broker, "secret/a", b"x", QoS::AtMostOnce, now);
    assert!(peer.wake(now).is_empty(), "nothing delivered");
    assert_eq!(drain(&watcher, now).len(), 1, "only the MQTT publish");
}

// ---- durability of what a publish is answered for ----------------------------------------

#[test]
fn a_qos_1_publish_is_answered_2_04_only_once_the_stored_copy_is_durable() {
    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = common::broker_with_keeper(&store, "kept/#", now);
    store.hold_back();
    let mut peer = Peer::new(&broker, settings(), now);
    let datagram = build(
        MessageType::Confirmable,
        RequestType::Post,
        0x0A0A,
        "/ps/kept/a?clientid=dur1&qos=1",
        b"tk",
        None,
        b"v",
    );
    let first = peer.send_raw(datagram.clone(), now);
    // Only the empty acknowledgement, so the client stops retransmitting.
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].header.get_type(), MessageType::Acknowledgement);
    assert_eq!(first[0].header.code, MessageClass::Empty);
    assert_eq!(first[0].header.message_id, 0x0A0A);
    // Its retransmission gets the same, and is not published again.
    let again = peer.send_raw(datagram, now + Duration::from_secs(2));
    assert_eq!(again, first);
    assert_eq!(store.count(mqtt_core::storage::Table::Queues), 1);
    assert!(peer.wake(now).is_empty(), "not durable yet");
    // A QoS 0 publish promised nothing more than routing: answered at once.
    let zero = peer.request(
        MessageType::Confirmable,
        RequestType::Post,
        "/ps/kept/b?clientid=dur1&qos=0",
        b"z",
        None,
        b"v",
        now,
    );
    assert_eq!(code(&zero[0]), response_code(ResponseType::Changed));

    store.release();
    let answer = peer.wake(now);
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].header.get_type(), MessageType::Confirmable);
    assert_eq!(code(&answer[0]), response_code(ResponseType::Changed));
    assert_eq!(answer[0].get_token(), b"tk");
    // Retransmitted until acknowledged, like any confirmable message of ours.
    assert_eq!(peer.tick(now + Duration::from_secs(2)), answer);
    peer.ack(&answer[0], now);
    assert!(peer.tick(now + Duration::from_secs(6)).is_empty());
}

#[test]
fn a_full_store_refuses_qos_1_with_5_03_and_max_age_and_routes_nothing() {
    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = common::broker_with_keeper(&store, "full/#", now);
    let watcher = mqtt_subscriber(&broker, "full/#", now);
    store.set_full(true);
    let mut peer = Peer::new(&broker, settings(), now);
    for qos in ["1", "2"] {
        let answer = peer.post(&format!("/ps/full/a?clientid=f1&qos={qos}"), b"v", now);
        assert_eq!(
            code(&answer),
            response_code(ResponseType::ServiceUnavailable)
        );
        assert_eq!(uint(&answer, CoapOption::MaxAge), 5);
    }
    assert!(drain(&watcher, now).is_empty());
    // QoS 0 is stored nowhere, so it still goes.
    let answer = peer.post("/ps/full/a?clientid=f1&qos=0", b"v", now);
    assert_eq!(code(&answer), response_code(ResponseType::Changed));
    assert_eq!(drain(&watcher, now).len(), 1);
}

#[test]
fn a_publish_while_a_receiver_is_behind_gets_5_03_with_max_age_until_it_catches_up() {
    let now = Instant::now();
    let broker = broker(now);
    let watcher = mqtt_subscriber(&broker, "busy/#", now);
    let mut peer = Peer::new(&broker, settings(), now);
    // The default high water is 500: the 500th publish makes the receiver behind.
    for _ in 0..500 {
        let answer = peer.post("/ps/busy/a?clientid=c1&qos=0", b"v", now);
        assert_eq!(code(&answer), response_code(ResponseType::Changed));
    }
    for qos in ["0", "1"] {
        let answer = peer.post(&format!("/ps/busy/a?clientid=c1&qos={qos}"), b"v", now);
        assert_eq!(
            code(&answer),
            response_code(ResponseType::ServiceUnavailable)
        );
        assert_eq!(uint(&answer, CoapOption::MaxAge), 1);
    }
    assert_eq!(drain(&watcher, now).len(), 500);
    assert_eq!(broker.stats.refused_congestion.load(Ordering::SeqCst), 2);
    let answer = peer.post("/ps/busy/a?clientid=c1&qos=1", b"v", now);
    assert_eq!(code(&answer), response_code(ResponseType::Changed));
}

#[test]
fn a_publish_over_the_messages_rate_gets_5_03_with_the_seconds_left_as_max_age() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let watcher = mqtt_subscriber(&broker, "rated/#", t0);
    // Three messages per 10 s: a pause of 3.3 s once they are spent.
    let mut peer = Peer::new(
        &broker,
        Settings {
            rates: PublishRates::new("3/10s".parse().unwrap(), "infinity".parse().unwrap()),
            ..settings()
        },
        t0,
    );
    for _ in 0..3 {
        let answer = peer.post("/ps/rated/a?clientid=c1&qos=1", b"v", t0);
        assert_eq!(code(&answer), response_code(ResponseType::Changed));
    }
    let answer = peer.post("/ps/rated/a?clientid=c1&qos=1", b"v", t0);
    assert_eq!(
        code(&answer),
        response_code(ResponseType::ServiceUnavailable)
    );
    assert_eq!(uint(&answer, CoapOption::MaxAge), 4, "3.3 s, rounded up");
    let second = t0 + Duration::from_secs(2);
    let answer = peer.post("/ps/rated/a?clientid=c1&qos=1", b"v", second);
    assert_eq!(uint(&answer, CoapOption::MaxAge), 2, "1.3 s left");
    assert_eq!(drain(&watcher, second).len(), 3);

    // The pause ends by time: it is the channel's deadline.
    let resume = peer.channel.next_deadline().expect("a deadline");
    assert!(resume > t0 + Duration::from_secs(3) && resume <= t0 + Duration::from_millis(3334));
    peer.tick(resume);
    assert!(peer.channel.next_deadline() > Some(resume));
    let answer = peer.post("/ps/rated/a?clientid=c1&qos=1", b"v", resume);
    assert_eq!(code(&answer), response_code(ResponseType::Changed));
    assert_eq!(drain(&watcher, resume).len(), 1);
    assert_eq!(broker.stats.refused_congestion.load(Ordering::SeqCst), 2);
}

// ---- Block1 uploads are admitted at their first block ------------------------------------

#[test]
fn block1_from_an_unauthenticated_client_is_refused_at_the_first_block_and_nothing_kept() {
    let now = Instant::now();
    let (broker, auth) = broker_with_users("", now);
    let watcher = mqtt_subscriber(&broker, "bw/#", now);
    auth.reset();
    let mut peer = Peer::new(&broker, blockwise_settings(6, 64 * 1024), now);
    let block = body(1024);
    let wrong = "/ps/bw/a?clientid=b1&u=alice&p=nope";
    let answer = peer.block1(wrong, blk(0, true, 6), &block, None, now);
    assert_eq!(code(&answer), response_code(ResponseType::Unauthorized));
    assert_eq!(peer.channel.upload_count(), 0, "nothing of the body kept");
    // Its later blocks continue no upload.
    let answer = peer.block1(wrong, blk(1, true, 6), &block, None, now);
    assert_eq!(
        code(&answer),
        response_code(ResponseType::RequestEntityIncomplete)
    );
    assert_eq!(peer.channel.upload_count(), 0);
    assert_eq!(auth.calls(), 1);

    // A client that may publish has its upload kept, checked once for every block.
    let right = format!("/ps/bw/a?clientid=b1&{ALICE}");
    let whole = body(3000);
    let chunks: Vec<&[u8]> = whole.chunks(1024).collect();
    let first = peer.block1(&right, blk(0, true, 6), chunks[0], None, now);
    assert_eq!(code(&first), response_code(ResponseType::Continue));
    assert_eq!(peer.channel.upload_count(), 1);
    peer.block1(&right, blk(1, true, 6), chunks[1], None, now);
    let last = peer.block1(&right, blk(2, false, 6), chunks[2], None, now);
    assert_eq!(code(&last), response_code(ResponseType::Changed));
    assert_eq!(auth.calls(), 2);
    let routed = drain(&watcher, now);
    assert_eq!(routed.len(), 1);
    assert_eq!(&routed[0].payload[..], &whole[..]);

    // The connection resource takes no body.
    let mut connected = Peer::new(
        &broker,
        Settings {
            connection_required: true,
            ..blockwise_settings(6, 64 * 1024)
        },
        now,
    );
    let answer = connected.block1(
        &format!("/mqtt/connection?clientid=b2&{ALICE}"),
        blk(0, true, 6),
        &block,
        None,
        now,
    );
    assert_eq!(code(&answer), response_code(ResponseType::BadOption));
    assert_eq!(connected.channel.upload_count(), 0);
}

#[test]
fn guessed_connection_tokens_count_as_failed_authentications() {
    let now = Instant::now();
    let (broker, auth) = broker_with_users("", now);
    let connected = || Settings {
        connection_required: true,
        ..settings()
    };
    let mut owner = Peer::new(&broker, connected(), now);
    let created = owner.post(&format!("/mqtt/connection?clientid=cm&{ALICE}"), b"", now);
    assert_eq!(code(&created), response_code(ResponseType::Created));
    let token = String::from_utf8(created.payload.clone()).unwrap();
    let mut guesser = Peer::new(&broker, connected(), now);
    for guess in 0..5 {
        let wrong = guesser.post(&format!("/ps/cm/a?clientid=cm&token=x{guess}"), b"v", now);
        assert_eq!(code(&wrong), response_code(ResponseType::Unauthorized));
    }
    let right = guesser.post(&format!("/ps/cm/a?clientid=cm&token={token}"), b"v", now);
    assert_eq!(code(&right), response_code(ResponseType::TooManyRequests));
    // The token proves the identity that obtained it: taking the session over from a new
    // address runs no password check.
    let calls = auth.calls();
    let mut moved = Peer::new(&broker, connected(), now);
    let right = moved.post(&format!("/ps/cm/a?clientid=cm&token={token}"), b"v", now);
    assert_eq!(code(&right), response_code(ResponseType::Changed));
    assert_eq!(auth.calls(), calls);
}

// ---- address validation and claims from other addresses --------------------------------

#[test]
fn notifications_wait_until_the_observer_shows_it_receives_at_its_address() {
    let now = Instant::now();
    let broker = broker(now);
    let mut publisher = Peer::new(&broker, settings(), now);
    for n in 0..5 {
        publisher.post(
            &format!("/ps/spoof/{n}?clientid=sp&retain=true"),
            &[b'r'; 100],
            now,
        );
    }
    // A forged source: the observe request reaches us, nothing we send reaches it back.
    let mut forged = Peer::new(&broker, settings(), now);
    forged.answers_address_check = false;
    let answer = forged.request(
        MessageType::NonConfirmable,
        RequestType::Get,
        "/ps/spoof/#",
        b"t",
        Some(0),
        b"",
        now,
    );
    // The answer only, confirmable, so that its acknowledgement shows the address: no
    // retained replay yet.
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(code(&answer[0]), content());
    assert_eq!(answer[0].header.get_type(), MessageType::Confirmable);
    assert!(forged.wake(now).is_empty(), "the replay waits");
    testing::publish(&broker, "spoof/live", b"live", QoS::AtMostOnce, now);
    assert!(forged.wake(now).is_empty(), "live traffic waits too");
    // The answer is retransmitted, then given up: the observer is forgotten, having been
    // sent nothing else.
    let mut at = now;
    let mut retransmitted = 0;
    while !forged.closed {
        at = forged.channel.next_deadline().expect("a deadline");
        let out = forged.tick(at);
        assert!(out.iter().all(|p| p == &answer[0]), "{out:?}");
        retransmitted += out.len();
        assert!(at < now + Duration::from_secs(120));
    }
    assert_eq!(retransmitted, 4, "MAX_RETRANSMIT retransmissions");

    // A real client acknowledges the answer: the replay follows.
    let mut real = Peer::new(&broker, settings(), at);
    let answer = real.observe("/ps/spoof/#?clientid=real", b"ob", at);
    assert_eq!(code(&answer[0]), content());
    assert_eq!(answer[1].payload, vec![b'r'; 100]);
    assert!(real.channel.address_validated());
}

#[test]
fn a_retained_replay_leaves_one_confirmable_notification_per_acknowledgement() {
    let now = Instant::now();
    let broker = broker(now);
    let mut publisher = Peer::new(&broker, settings(), now);
    for n in 0..3 {
        publisher.post(
            &format!("/ps/replay/{n}?clientid=rp&qos=0&retain=true"),
            b"kept",
            now,
        );
    }
    let mut peer = Peer::new(&broker, settings(), now);
    let answer = peer.observe("/ps/replay/#?clientid=ro", b"rt", now);
    assert_eq!(
        answer.len(),
        2,
        "the answer, then one notification: {answer:?}"
    );
    let mut note = answer[1].clone();
    for _ in 0..2 {
        assert_eq!(note.header.get_type(), MessageType::Confirmable);
        assert!(
            peer.wake(now).is_empty(),
            "the next waits for the acknowledgement"
        );
        let next = peer.ack(&note, now);
        assert_eq!(next.len(), 1);
        note = next[0].clone();
    }
    assert_eq!(note.header.get_type(), MessageType::Confirmable);
    assert!(peer.ack(&note, now).is_empty());
    // Live QoS 0 messages are non-confirmable as before.
    testing::publish(&broker, "replay/live", b"live", QoS::AtMostOnce, now);
    let live = peer.wake(now);
    assert_eq!(live[0].header.get_type(), MessageType::NonConfirmable);
}

#[test]
fn a_request_from_another_address_is_vouched_for_only_with_the_admitted_credentials() {
    let now = Instant::now();
    let (broker, auth) = broker_with_users("", now);
    let mut peer = Peer::new(&broker, settings(), now);
    let answer = peer.observe(&format!("/ps/v/#?clientid=dev1&{ALICE}"), b"o", now);
    assert_eq!(code(&answer[0]), content());
    auth.reset();
    let claim = |query: &str| {
        Bytes::from(build(
            MessageType::Confirmable,
            RequestType::Post,
            1,
            &format!("/ps/v/x?{query}"),
            b"c",
            None,
            b"",
        ))
    };
    assert!(peer
        .channel
        .vouch(&claim(&format!("clientid=dev1&{ALICE}"))));
    for refused in [
        "clientid=dev1&u=alice&p=wander".to_owned(),
        "clientid=dev1".to_owned(),
        "clientid=dev1&u=mallory&p=evil".to_owned(),
        format!("clientid=dev2&{ALICE}"),
    ] {
        assert!(!peer.channel.vouch(&claim(&refused)), "{refused}");
    }
    // An acknowledgement names no one.
    assert!(!peer.channel.vouch(&Bytes::from_static(&[0x60, 0, 0, 1])));
    assert_eq!(
        auth.calls(),
        0,
        "vouching compares, it runs no password check"
    );
    assert_eq!(peer.channel.observation_count(), 1, "and changes nothing");

    // Moved, the peer asks again whether the client receives at its new address.
    let elsewhere: std::net::SocketAddr = "127.0.0.2:5683".parse().unwrap();
    peer.channel.rebound(elsewhere);
    assert!(!peer.channel.address_validated());
    testing::publish(&broker, "v/after", b"after", QoS::AtMostOnce, now);
    let out = peer.wake(now);
    assert_eq!(out.len(), 1);
    assert!(is_ping(&out[0]), "{out:?}");
    let replay = peer.reset(&out[0], now);
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0].payload, b"after");
}

/// A client its transport authenticated (DTLS): the identity is its user name and its one
/// client id, in connectionless and connection mode alike; a password, when the broker has
/// a password file, is still checked, against the identity.
#[test]
fn a_transport_identity_is_the_user_name_and_the_only_client_id() {
    let now = Instant::now();
    let acl = "allow all publish dev/%u/#\nallow all subscribe #\ndeny all all #\n";
    let (broker, _) = broker_with_users(acl, now);
    let watcher = mqtt_subscriber(&broker, "dev/#", now);
    let dtls_peer = |settings: Settings| Peer::over_dtls(&broker, settings, "alice", now);
    // Connectionless: no clientid means the identity; the query's user name is not used.
    let mut peer = dtls_peer(settings());
    let ok = peer.post(
        "/ps/dev/alice/t?username=mallory&password=wonder",
        b"v",
        now,
    );
    assert_eq!(code(&ok), MessageClass::Response(ResponseType::Changed));
    assert_eq!(drain(&watcher, now).len(), 1);
    // The user name the ACL sees is the identity's: mallory's prefix is refused.
    let refused = peer.post(
        "/ps/dev/mallory/t?username=mallory&password=wonder",
        b"v",
        now,
    );
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Unauthorized)
    );
    // Mallory's password is checked against the identity, and fails.
    let refused = peer.post("/ps/dev/alice/t?username=mallory&password=evil", b"v", now);
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Unauthorized)
    );
    let other = peer.post("/ps/dev/alice/t?clientid=bob&password=wonder", b"v", now);
    assert_eq!(
        code(&other),
        MessageClass::Response(ResponseType::Forbidden)
    );
    assert!(drain(&watcher, now).is_empty());

    // Connection mode: a connection for another client id is refused, and so is another
    // client's token.
    let connected = || Settings {
        connection_required: true,
        ..settings()
    };
    let mut peer = dtls_peer(connected());
    let refused = peer.post("/mqtt/connection?clientid=bob&password=wonder", b"", now);
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Forbidden)
    );
    let created = peer.post("/mqtt/connection?clientid=alice&password=wonder", b"", now);
    assert_eq!(
        code(&created),
        MessageClass::Response(ResponseType::Created)
    );
    let token = String::from_utf8(created.payload.clone()).unwrap();
    let ok = peer.post(
        &format!("/ps/dev/alice/c?clientid=alice&token={token}"),
        b"v",
        now,
    );
    assert_eq!(code(&ok), MessageClass::Response(ResponseType::Changed));
    assert_eq!(drain(&watcher, now).len(), 1);
    let mut plain = Peer::new(&broker, connected(), now);
    let bobs = plain.post(
        "/mqtt/connection?clientid=bob&username=mallory&password=evil",
        b"",
        now,
    );
    assert_eq!(code(&bobs), MessageClass::Response(ResponseType::Created));
    let bob_token = String::from_utf8(bobs.payload.clone()).unwrap();
    let stolen = peer.post(
        &format!("/ps/dev/mallory/c?clientid=bob&token={bob_token}"),
        b"v",
        now,
    );
    assert_eq!(
        code(&stolen),
        MessageClass::Response(ResponseType::Forbidden)
    );
    assert!(drain(&watcher, now).is_empty());
}

/// A client certificate over TLS names the user and the client apart, as the listener's
/// `peer_cert_as_username` and `peer_cert_as_clientid` say: a user name alone leaves the
/// client id to the request; a client id alone leaves the user name to the query.
#[test]
fn a_certificate_names_the_user_and_the_client_apart() {
    let now = Instant::now();
    let acl = "allow all publish dev/%u/#\nallow all publish id/%c/#\nallow all subscribe #\ndeny all all #\n";
    let (broker, _) = broker_with_users(acl, now);
    let watcher = mqtt_subscriber(&broker, "#", now);
    let tls_peer = |username: Option<&str>, client_id: Option<&str>| Peer {
        channel: CoapChannel::new(
            broker.clone(),
            Arc::new(settings()),
            None,
            Arc::new(NoWakeup),
            9,
            now,
        )
        .with_certificate_identity(CertificateIdentity {
            username: username.map(str::to_owned),
            client_id: client_id.map(str::to_owned),
        }),
        next_id: 100,
        closed: false,
        answers_address_check: true,
    };
    let changed = MessageClass::Response(ResponseType::Changed);

    // The certificate's user, whatever the query says, with the password checked for it.
    let mut peer = tls_peer(Some("alice"), None);
    let ok = peer.post(
        "/ps/dev/alice/t?clientid=desk-1&username=mallory&password=wonder",
        b"v",
        now,
    );
    assert_eq!(code(&ok), changed);
    let refused = peer.post(
        "/ps/dev/mallory/t?clientid=desk-1&username=mallory&password=wonder",
        b"v",
        now,
    );
    assert_eq!(
        code(&refused),
        MessageClass::Response(ResponseType::Unauthorized)
    );
    assert_eq!(drain(&watcher, now).len(), 1);

    // The certificate's client id: named or implied, and no other.
    let mut peer = tls_peer(None, Some("device-9"));
    let ok = peer.post("/ps/id/device-9/t?u=mallory&p=evil", b"v", now);
    assert_eq!(code(&ok), changed);
    let ok = peer.post(
        "/ps/dev/mallory/t?clientid=device-9&u=mallory&p=evil",
        b"v",
        now,
    );
    assert_eq!(code(&ok), changed);
    let other = peer.post(
        "/ps/id/desk-2/t?clientid=desk-2&u=mallory&p=evil",
        b"v",
        now,
    );
    assert_eq!(
        code(&other),
        MessageClass::Response(ResponseType::Forbidden)
    );
    assert_eq!(drain(&watcher, now).len(), 2);
}

#[test]
fn a_kicked_client_is_forgotten_and_its_observations_end() {
    let now = Instant::now();
    let broker = broker(now);
    let mut peer = Peer::new(&broker, settings(), now);
    peer.observe("/ps/k/1?clientid=k1", b"o", now);
    let key = SessionKey {
        namespace: "coap",
        client_id: Arc::from("k1"),
    };
    assert_eq!(broker.client(&key).map(|c| c.subscriptions), Some(1));
    assert!(broker.kick(&key, now));
    assert!(peer.wake(now).is_empty(), "CoAP has no message for it");
    assert!(peer.closed, "the peer is forgotten");
    peer.channel.handle_closed(now);
    assert!(broker.session(&key).is_none());
    assert_eq!(broker.subscription_count(), 0);
    assert_eq!(broker.connected_count(), 0);
    // The client that comes back is a new one: authenticated and observing anew.
    let mut back = Peer::new(&broker, settings(), now);
    let answer = back.post("/ps/k/1?clientid=k1", b"v", now);
    assert_eq!(code(&answer), MessageClass::Response(ResponseType::Changed));
}

#[test]
fn presence_events_tell_of_coap_clients() {
    let now = Instant::now();
    let broker = testing::broker_with_presence(now);
    let watcher = testing::presence_watcher(&broker, now);
    let mut peer = Peer::new(&broker, settings(), now);
    peer.post("/ps/p/1?clientid=c/x&username=u", b"v", now);
    let (topic, connected) = testing::presence_event(&watcher, now);
    assert_eq!(
        topic,
        "$SYS/brokers/test@node/gateway/coap/clients/c%2Fx/connected"
    );
    assert_eq!(connected["clientid"], "c/x");
    assert_eq!(connected["username"], "u");
    assert_eq!(connected["protocol"], "coap");
    assert_eq!(connected["proto_name"], "CoAP");
    assert_eq!(connected["proto_ver"], "1");
    assert_eq!(connected["keepalive"], 30, "the heartbeat");
    // Silent for the heartbeat: forgotten, and said so.
    let later = now + Duration::from_secs(30);
    peer.tick(later);
    assert!(peer.closed);
    peer.channel.handle_closed(later);
    let (topic, gone) = testing::presence_event(&watcher, later);
    assert!(topic.ends_with("/clients/c%2Fx/disconnected"), "{topic}");
    assert_eq!(gone["reason"], "keepalive_timeout");
}

/// A request of the operator's (the admin API's) to a client in connection mode goes out
/// confirmable on its peer and ends in the client's piggybacked or separate answer, its
/// Reset, the message layer giving up, or the connection's end.
#[test]
fn operator_requests_to_a_connected_client_end_in_its_answer_a_reset_or_a_timeout() {
    use adapter_coap::downlink::{Failure, Outgoing};

    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = Settings {
        connection_required: true,
        ..settings()
    };
    let clients = settings.clients.clone();
    let mut peer = Peer::new(&broker, settings, t0);
    assert!(clients.get("dl1").is_none());
    let created = peer.post("/mqtt/connection?clientid=dl1&username=u", b"", t0);
    assert_eq!(
        code(&created),
        MessageClass::Response(ResponseType::Created)
    );
    let client = clients.get("dl1").expect("a connected client is reachable");
    let get = |path: &str| Outgoing {
        method: RequestType::Get,
        path: vec![path.to_owned()],
        queries: Vec::new(),
        content_format: None,
        payload: Vec::new(),
        token: Vec::new(),
    };
    let send = |peer: &mut Peer, now: Instant| {
        let mut out = Vec::new();
        assert_eq!(peer.channel.handle_wakeup(&mut out, now), Flow::Continue);
        let sent = decode_all(out);
        assert_eq!(sent.len(), 1, "{sent:?}");
        sent.into_iter().next().unwrap()
    };
    let reply = |kind: MessageType, id: u16, token: &[u8], response: Option<ResponseType>| {
        let mut packet = Packet::new();
        packet.header.set_type(kind);
        packet.header.message_id = id;
        match response {
            Some(response) => {
                packet.header.code = MessageClass::Response(response);
                packet.set_token(token.to_vec());
                packet.payload = b"21.5".to_vec();
            }
            None => packet.header.code = MessageClass::Empty,
        }
        packet.to_bytes().unwrap()
    };

    // Answered on the acknowledgement.
    let mut answer = client.request(get("temp")).unwrap();
    let request = send(&mut peer, t0);
    assert_eq!(request.header.get_type(), MessageType::Confirmable);
    assert_eq!(code(&request), MessageClass::Request(RequestType::Get));
    assert_eq!(
        request
            .get_option(CoapOption::UriPath)
            .unwrap()
            .front()
            .unwrap(),
        b"temp"
    );
    let ack = reply(
        MessageType::Acknowledgement,
        request.header.message_id,
        request.get_token(),
        Some(ResponseType::Content),
    );
    peer.send_raw(ack, t0);
    let got = answer.try_recv().unwrap().unwrap();
    assert_eq!(
        (got.code, got.payload.as_slice()),
        (ResponseType::Content, &b"21.5"[..])
    );

    // Acknowledged empty, answered separately (matched by token, acknowledged by us).
    let mut answer = client.request(get("temp")).unwrap();
    let request = send(&mut peer, t0);
    let empty = reply(
        MessageType::Acknowledgement,
        request.header.message_id,
        b"",
        None,
    );
    peer.send_raw(empty, t0);
    assert!(answer.try_recv().is_err());
    let separate = reply(
        MessageType::Confirmable,
        999,
        request.get_token(),
        Some(ResponseType::Content),
    );
    let acked = peer.send_raw(separate, t0);
    assert!(acked.iter().any(is_empty_ack), "{acked:?}");
    assert_eq!(answer.try_recv().unwrap().unwrap().message_id, 999);

    // Rejected with Reset.
    let mut answer = client.request(get("temp")).unwrap();
    let request = send(&mut peer, t0);
    peer.send_raw(
        reply(MessageType::Reset, request.header.message_id, b"", None),
        t0,
    );
    assert_eq!(answer.try_recv().unwrap(), Err(Failure::Reset));

    // Never acknowledged: retransmitted, then given up.
    let mut answer = client.request(get("temp")).unwrap();
    send(&mut peer, t0);
    let mut now = t0;
    let mut retransmitted = 0;
    let outcome = loop {
        now += Duration::from_millis(500);
        let mut out = Vec::new();
        peer.channel.handle_timeout(&mut out, now);
        retransmitted += out.len();
        if let Ok(outcome) = answer.try_recv() {
            break outcome;
        }
        assert!(now < t0 + Duration::from_secs(300), "never given up");
    };
    assert_eq!(outcome, Err(Failure::Timeout));
    assert_eq!(retransmitted, 4, "MAX_RETRANSMIT retransmissions");

    // The connection ends: what waits fails, and the client is no longer reachable.
    let mut answer = client.request(get("temp")).unwrap();
    peer.channel.handle_closed(now);
    assert_eq!(answer.try_recv().unwrap(), Err(Failure::Gone));
    assert!(clients.get("dl1").is_none());
}
