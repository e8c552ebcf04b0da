//! The MQTT channel and the broker driven packet by packet on a virtual clock: no socket,
//! no sleeping. Each test names the behaviour it proves.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use mqtt_core::auth::Auth;
use mqtt_core::broker::Broker;
use mqtt_core::codec::*;
use mqtt_core::protocol::{ConnectionInfo, Flow, MqttChannel};
use mqtt_core::rate::PublishRates;
use mqtt_core::session::SessionKey;
use mqtt_core::storage::MapStore;
use mqtt_core::testing::{self, broker, broker_on_store, CountingWakeup};

fn broker_with(edit: impl FnOnce(&mut gateway_config::Config), now: Instant) -> Arc<Broker> {
    let mut config = testing::default_config();
    edit(&mut config);
    Arc::new(Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        Auth::allow_all(),
        now,
    ))
}

struct Client {
    channel: MqttChannel,
    version: ProtocolVersion,
    decoder: Decoder,
    out: BytesMut,
    wakeup: Arc<CountingWakeup>,
    closed: bool,
    /// Packets that arrived behind the one a helper waited for (CONNACK, SUBACK).
    pending: Vec<Packet>,
}

impl Client {
    fn new(broker: &Arc<Broker>, version: ProtocolVersion, now: Instant) -> Client {
        let wakeup = Arc::new(CountingWakeup::default());
        let info = ConnectionInfo {
            listener: Arc::from("tcp:test"),
            peer: None,
            handshake_timeout: Duration::from_secs(10),
            certificate_identity: Default::default(),
            mountpoint: Arc::from(""),
            rates: PublishRates::UNLIMITED,
        };
        Client {
            channel: MqttChannel::new(broker.clone(), info, wakeup.clone(), now),
            version,
            decoder: Decoder::with_version(version, u32::MAX),
            out: BytesMut::new(),
            wakeup,
            closed: false,
            pending: Vec::new(),
        }
    }

    fn connect_with(broker: &Arc<Broker>, connect: Connect, now: Instant) -> (Client, ConnAck) {
        let mut client = Client::new(broker, connect.protocol, now);
        client.send(Packet::Connect(Box::new(connect)), now);
        match client.take_first() {
            Some(Packet::ConnAck(connack)) => (client, *connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn connect(broker: &Arc<Broker>, client_id: &str, now: Instant) -> Client {
        Client::connect_with(broker, connect_v5(client_id), now).0
    }

    fn send(&mut self, packet: Packet, now: Instant) -> Flow {
        let mut bytes = BytesMut::new();
        encode(&packet, self.version, &mut bytes).expect("encode");
        let flow = self.channel.handle_input(&mut bytes, &mut self.out, now);
        assert!(bytes.is_empty(), "the channel must consume whole packets");
        if flow == Flow::Close {
            self.close(now);
        }
        flow
    }

    /// What a driver does when the session says it has news.
    fn wake(&mut self, now: Instant) -> Flow {
        let flow = self.channel.handle_wakeup(&mut self.out, now);
        if flow == Flow::Close {
            self.close(now);
        }
        flow
    }

    fn tick(&mut self, now: Instant) -> Flow {
        let flow = self.channel.handle_timeout(&mut self.out, now);
        if flow == Flow::Close {
            self.close(now);
        }
        flow
    }

    /// The transport drops without DISCONNECT.
    fn close(&mut self, now: Instant) {
        if !self.closed {
            self.closed = true;
            self.channel.handle_closed(now);
        }
    }

    /// The first packet received; the rest wait in `pending`.
    fn take_first(&mut self) -> Option<Packet> {
        let mut packets = self.receive().into_iter();
        let first = packets.next();
        self.pending.extend(packets);
        first
    }

    fn receive(&mut self) -> Vec<Packet> {
        let mut packets = std::mem::take(&mut self.pending);
        while let Some(packet) = self
            .decoder
            .decode(&mut self.out)
            .expect("server output decodes")
        {
            packets.push(packet);
        }
        packets
    }

    fn publishes(&mut self, now: Instant) -> Vec<Publish> {
        self.wake(now);
        self.receive()
            .into_iter()
            .filter_map(|packet| match packet {
                Packet::Publish(publish) => Some(publish),
                _ => None,
            })
            .collect()
    }

    fn subscribe(&mut self, filter: &str, qos: QoS, now: Instant) -> Vec<ReasonCode> {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
            None,
            now,
        )
    }

    fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
        now: Instant,
    ) -> Vec<ReasonCode> {
        self.send(
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                subscription_identifier: id,
                user_properties: vec![],
                filters: vec![(filter.to_owned(), options)],
            }),
            now,
        );
        match self.take_first() {
            Some(Packet::SubAck(suback)) => suback.reason_codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    fn publish(
        &mut self,
        topic: &str,
        payload: &'static [u8],
        qos: QoS,
        packet_id: u16,
        now: Instant,
    ) -> Vec<Packet> {
        self.send(
            Packet::Publish(publish(topic, payload, qos, packet_id)),
            now,
        );
        self.receive()
    }
}

fn connect_v5(client_id: &str) -> Connect {
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn persistent_v5(client_id: &str, expiry: u32) -> Connect {
    Connect {
        clean_start: false,
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
        ..connect_v5(client_id)
    }
}

fn publish(topic: &str, payload: &'static [u8], qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from(topic),
        packet_id,
        payload: Bytes::from_static(payload),
        properties: Default::default(),
    }
}

fn will(topic: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: ByteString::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        },
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn keep_alive_expiry_closes_with_0x8d_and_publishes_the_will() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("wills/#", QoS::AtLeastOnce, t0);
    let connect = Connect {
        keep_alive: 10,
        will: Some(will("wills/dev", None)),
        ..connect_v5("dev")
    };
    let (mut device, _) = Client::connect_with(&broker, connect, t0);
    assert_eq!(
        device.channel.next_deadline(),
        Some(t0 + secs(15)),
        "keep-alive times 1.5"
    );
    assert_eq!(device.tick(t0 + secs(14)), Flow::Continue);
    assert!(watcher.publishes(t0 + secs(14)).is_empty());
    assert_eq!(device.tick(t0 + secs(15)), Flow::Close);
    assert!(
        matches!(device.receive().as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT)
    );
    let wills = watcher.publishes(t0 + secs(15));
    assert_eq!(wills.len(), 1);
    assert_eq!(&*wills[0].topic, "wills/dev");
}

#[test]
fn any_packet_resets_the_keep_alive_timer() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect = Connect {
        keep_alive: 10,
        ..connect_v5("dev")
    };
    let (mut device, _) = Client::connect_with(&broker, connect, t0);
    device.send(Packet::PingReq, t0 + secs(12));
    assert!(matches!(device.receive().as_slice(), [Packet::PingResp]));
    assert_eq!(device.tick(t0 + secs(20)), Flow::Continue);
    assert_eq!(device.tick(t0 + secs(27)), Flow::Close);
}

#[test]
fn handshake_timeout_closes_a_silent_connection() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut silent = Client::new(&broker, ProtocolVersion::V5, t0);
    assert_eq!(silent.tick(t0 + secs(9)), Flow::Continue);
    assert_eq!(silent.tick(t0 + secs(10)), Flow::Close);
}

#[test]
fn session_survives_until_its_expiry_and_no_longer() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let (mut sub, connack) = Client::connect_with(&broker, persistent_v5("sub", 60), t0);
    assert!(!connack.session_present);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    sub.send(Packet::Disconnect(Box::default()), t0);

    let mut publisher = Client::connect(&broker, "pub", t0);
    publisher.publish("t", b"queued", QoS::AtLeastOnce, 1, t0);

    broker.handle_timeouts(t0 + secs(59));
    let (mut sub, connack) = Client::connect_with(&broker, persistent_v5("sub", 60), t0 + secs(59));
    assert!(connack.session_present);
    let got = sub.publishes(t0 + secs(59));
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"queued");

    sub.send(Packet::Disconnect(Box::default()), t0 + secs(60));
    broker.handle_timeouts(t0 + secs(119));
    assert!(broker.session(&key("sub")).is_some());
    broker.handle_timeouts(t0 + secs(120));
    assert!(
        broker.session(&key("sub")).is_none(),
        "expired session is removed"
    );
    assert_eq!(
        broker.subscription_count(),
        0,
        "and its subscriptions with it"
    );
    let (_, connack) = Client::connect_with(&broker, persistent_v5("sub", 60), t0 + secs(121));
    assert!(!connack.session_present);
}

fn key(client_id: &str) -> SessionKey {
    SessionKey {
        namespace: "mqtt",
        client_id: Arc::from(client_id),
    }
}

#[test]
fn session_expiry_zero_ends_the_session_at_disconnect() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    sub.close(t0);
    assert!(broker.session(&key("sub")).is_none());
    assert_eq!(broker.subscription_count(), 0);
}

#[test]
fn will_delay_holds_the_will_and_a_reconnect_cancels_it() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("wills/#", QoS::AtLeastOnce, t0);

    let with_will = |id: &str| Connect {
        will: Some(will(&format!("wills/{id}"), Some(30))),
        ..persistent_v5(id, 300)
    };
    let (mut late, _) = Client::connect_with(&broker, with_will("late"), t0);
    late.close(t0);
    broker.handle_timeouts(t0 + secs(29));
    assert!(
        watcher.publishes(t0 + secs(29)).is_empty(),
        "not before the delay"
    );
    broker.handle_timeouts(t0 + secs(30));
    let wills = watcher.publishes(t0 + secs(30));
    assert_eq!(
        wills
            .iter()
            .map(|p| p.topic.to_string())
            .collect::<Vec<_>>(),
        vec!["wills/late"]
    );

    let (mut back, _) = Client::connect_with(&broker, with_will("back"), t0);
    back.close(t0);
    let (_back_again, connack) = Client::connect_with(&broker, with_will("back"), t0 + secs(10));
    assert!(connack.session_present);
    broker.handle_timeouts(t0 + secs(60));
    assert!(
        watcher.publishes(t0 + secs(60)).is_empty(),
        "reconnect within the delay cancels the will"
    );
}

#[test]
fn will_is_published_when_the_session_ends_before_the_delay() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("wills/#", QoS::AtLeastOnce, t0);
    let connect = Connect {
        will: Some(will("wills/dev", Some(100))),
        ..persistent_v5("dev", 10)
    };
    let (mut device, _) = Client::connect_with(&broker, connect, t0);
    device.close(t0);
    broker.handle_timeouts(t0 + secs(10));
    assert_eq!(watcher.publishes(t0 + secs(10)).len(), 1);
}

#[test]
fn normal_disconnect_discards_the_will_and_0x04_publishes_it() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("wills/#", QoS::AtLeastOnce, t0);
    let (mut polite, _) = Client::connect_with(
        &broker,
        Connect {
            will: Some(will("wills/a", None)),
            ..connect_v5("a")
        },
        t0,
    );
    polite.send(Packet::Disconnect(Box::default()), t0);
    assert!(watcher.publishes(t0).is_empty());
    let (mut explicit, _) = Client::connect_with(
        &broker,
        Connect {
            will: Some(will("wills/b", None)),
            ..connect_v5("b")
        },
        t0,
    );
    explicit.send(
        Packet::Disconnect(Box::new(Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL,
            ..Default::default()
        })),
        t0,
    );
    assert_eq!(watcher.publishes(t0).len(), 1);
}

#[test]
fn message_expiry_forwards_the_remaining_time_and_drops_expired_messages() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 600), t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    sub.close(t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    for (payload, expiry) in [(&b"short"[..], 10u32), (&b"long"[..], 100)] {
        let mut message = publish("t", b"", QoS::AtLeastOnce, 1);
        message.payload = Bytes::copy_from_slice(payload);
        message.properties.message_expiry_interval = Some(expiry);
        publisher.send(Packet::Publish(message), t0);
    }
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 600), t0 + secs(40));
    let got = sub.publishes(t0 + secs(40));
    assert_eq!(got.len(), 1, "the 10 s message expired while queued");
    assert_eq!(&got[0].payload[..], b"long");
    assert_eq!(got[0].properties.message_expiry_interval, Some(60));
}

#[test]
fn qos2_delivery_resumes_after_reconnect_with_dup_then_pubrel() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 600), t0);
    sub.subscribe("t", QoS::ExactlyOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    publisher.publish("t", b"once", QoS::ExactlyOnce, 9, t0);
    let first = sub.publishes(t0);
    assert_eq!(first.len(), 1);
    let packet_id = first[0].packet_id;
    assert!(!first[0].dup);
    sub.close(t0);

    // Reconnect before PUBREC: the PUBLISH comes again, DUP set, same packet id.
    let (mut sub, connack) = Client::connect_with(&broker, persistent_v5("sub", 600), t0 + secs(1));
    assert!(connack.session_present);
    let again = sub.publishes(t0 + secs(1));
    assert_eq!(again.len(), 1);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, packet_id);
    sub.send(
        Packet::PubRec(PubResponse {
            packet_id,
            ..Default::default()
        }),
        t0 + secs(1),
    );
    assert!(
        matches!(sub.receive().as_slice(), [Packet::PubRel(rel)] if rel.packet_id == packet_id)
    );
    sub.close(t0 + secs(1));

    // Reconnect after PUBREC: only PUBREL comes again, never the message.
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 600), t0 + secs(2));
    let resent = sub.receive();
    assert!(
        matches!(resent.as_slice(), [Packet::PubRel(rel)] if rel.packet_id == packet_id),
        "{resent:?}"
    );
    sub.send(
        Packet::PubComp(PubResponse {
            packet_id,
            ..Default::default()
        }),
        t0 + secs(2),
    );
    sub.close(t0 + secs(2));
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 600), t0 + secs(3));
    assert!(sub.receive().is_empty(), "completed flow is not resent");
}

#[test]
fn inbound_qos2_is_routed_exactly_once() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtMostOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    let acks = publisher.publish("t", b"x", QoS::ExactlyOnce, 7, t0);
    assert!(
        matches!(acks.as_slice(), [Packet::PubRec(rec)] if rec.packet_id == 7 && rec.reason_code == ReasonCode::SUCCESS)
    );
    let mut resent = publish("t", b"x", QoS::ExactlyOnce, 7);
    resent.dup = true;
    publisher.send(Packet::Publish(resent), t0);
    assert!(matches!(
        publisher.receive().as_slice(),
        [Packet::PubRec(_)]
    ));
    assert_eq!(
        sub.publishes(t0).len(),
        1,
        "a resent QoS 2 PUBLISH is not routed again"
    );
    publisher.send(
        Packet::PubRel(PubResponse {
            packet_id: 7,
            ..Default::default()
        }),
        t0,
    );
    assert!(
        matches!(publisher.receive().as_slice(), [Packet::PubComp(c)] if c.reason_code == ReasonCode::SUCCESS)
    );
    publisher.publish("t", b"y", QoS::ExactlyOnce, 7, t0);
    assert_eq!(
        sub.publishes(t0).len(),
        1,
        "after PUBREL the id is free for a new message"
    );
}

#[test]
fn takeover_sends_0x8e_to_the_old_connection() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let (mut first, _) = Client::connect_with(&broker, persistent_v5("dev", 60), t0);
    first.subscribe("t", QoS::AtLeastOnce, t0);
    let (mut second, connack) = Client::connect_with(&broker, persistent_v5("dev", 60), t0);
    assert!(connack.session_present);
    assert!(first.wakeup.count() > 0, "old connection was woken");
    assert_eq!(first.wake(t0), Flow::Close);
    assert!(
        matches!(first.receive().as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SESSION_TAKEN_OVER)
    );
    // The old connection's close must not detach the new one.
    let mut publisher = Client::connect(&broker, "pub", t0);
    publisher.publish("t", b"after", QoS::AtLeastOnce, 1, t0);
    assert_eq!(second.publishes(t0).len(), 1);
    assert_eq!(broker.stats.connections.load(Ordering::SeqCst), 2);
}

#[test]
fn a_kick_sends_0x98_to_an_mqtt5_client_and_discards_its_persistent_session() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("wills/#", QoS::AtLeastOnce, t0);
    let connect = Connect {
        will: Some(will("wills/dev", Some(600))),
        ..persistent_v5("dev", 3600)
    };
    let (mut dev, _) = Client::connect_with(&broker, connect, t0);
    dev.subscribe("t", QoS::AtLeastOnce, t0);
    let subscriptions = broker.subscription_count();

    assert!(broker.kick(&key("dev"), t0));
    assert!(dev.wakeup.count() > 0, "the connection was woken");
    assert_eq!(dev.wake(t0), Flow::Close);
    assert!(
        matches!(dev.receive().as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ADMINISTRATIVE_ACTION)
    );
    // Ended whatever its expiry: gone from the registry and the router, its will out now
    // rather than after its delay, as the session it waited for has ended.
    assert!(broker.session(&key("dev")).is_none());
    assert!(broker.client(&key("dev")).is_none());
    assert_eq!(broker.subscription_count(), subscriptions - 1);
    assert_eq!(watcher.publishes(t0).len(), 1, "the will");
    assert_eq!(broker.connected_count(), 1, "the watcher");
    let (_, connack) = Client::connect_with(&broker, persistent_v5("dev", 3600), t0 + secs(1));
    assert!(!connack.session_present, "the client starts anew");
    assert!(!broker.kick(&key("nobody"), t0), "no such session");
}

#[test]
fn a_kick_closes_an_mqtt_3_1_1_client_without_a_disconnect_packet() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        ..connect_v5("old")
    };
    let (mut old, connack) = Client::connect_with(&broker, connect, t0);
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
    assert!(broker.kick(&key("old"), t0));
    assert_eq!(old.wake(t0), Flow::Close);
    assert!(old.receive().is_empty(), "3.1.1 has no server DISCONNECT");
    assert_eq!(broker.connected_count(), 0);
}

#[test]
fn a_kick_discards_a_session_outliving_its_connection_with_its_queue() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let (mut dev, _) = Client::connect_with(&broker, persistent_v5("dev", 3600), t0);
    dev.subscribe("t", QoS::AtLeastOnce, t0);
    dev.close(t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    publisher.publish("t", b"queued", QoS::AtLeastOnce, 1, t0);
    assert_eq!(broker.client(&key("dev")).map(|c| c.mqueue_len), Some(1));
    assert!(broker.kick(&key("dev"), t0 + secs(1)));
    assert!(broker.session(&key("dev")).is_none());
    let (mut back, connack) =
        Client::connect_with(&broker, persistent_v5("dev", 3600), t0 + secs(2));
    assert!(!connack.session_present);
    assert!(
        back.publishes(t0 + secs(2)).is_empty(),
        "the queue went with it"
    );
}

#[test]
fn a_subscribe_handled_after_a_kick_leaves_nothing_in_the_router() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut dev = Client::connect(&broker, "dev", t0);
    assert!(broker.kick(&key("dev"), t0));
    // The SUBSCRIBE was read before the connection heard of the kick.
    assert_eq!(
        dev.subscribe("late", QoS::AtLeastOnce, t0),
        [ReasonCode::UNSPECIFIED_ERROR]
    );
    assert_eq!(broker.subscription_count(), 0);
    assert_eq!(dev.wake(t0), Flow::Close);
}

#[test]
fn the_client_list_shows_each_client_as_it_connected() {
    use mqtt_core::clients::{ClientQuery, ConnState, ProtoVer, TextMatch};
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect = Connect {
        keep_alive: 30,
        username: Some("alice".into()),
        ..persistent_v5("dev-1", 600)
    };
    let (mut dev, _) = Client::connect_with(&broker, connect, t0);
    dev.subscribe("a/+", QoS::AtLeastOnce, t0);
    dev.subscribe("b", QoS::AtMostOnce, t0);
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        ..connect_v5("dev-2")
    };
    let _other = Client::connect_with(&broker, connect, t0 + secs(1));
    let mut publisher = Client::connect(&broker, "pub", t0 + secs(2));
    // Sent and not acknowledged: in flight.
    publisher.publish("a/x", b"1", QoS::AtLeastOnce, 1, t0 + secs(2));
    assert_eq!(dev.publishes(t0 + secs(2)).len(), 1);

    let all = broker.clients(&ClientQuery::default());
    let ids: Vec<&str> = all.iter().map(|c| &*c.key.client_id).collect();
    assert_eq!(
        ids,
        ["dev-1", "dev-2", "pub"],
        "ordered by when they connected"
    );
    let one = &all[0];
    assert_eq!(one.proto.name, "MQTT");
    assert_eq!(one.proto.version, ProtoVer::Level(5));
    assert_eq!(all[1].proto.version, ProtoVer::Level(4));
    assert_eq!(one.username.as_deref(), Some("alice"));
    assert_eq!(&*one.listener, "tcp:test");
    assert_eq!(one.state, ConnState::Connected);
    assert_eq!(one.keepalive, 30);
    assert!(!one.clean_start);
    assert_eq!(one.expiry_interval, 600);
    assert_eq!(one.subscriptions, 2);
    assert_eq!(one.inflight, 1);
    assert_eq!(one.mqueue_len, 0);
    assert_eq!(
        one.connected_at,
        std::time::SystemTime::UNIX_EPOCH,
        "tests' brokers count wall-clock time from the epoch at t0"
    );
    let filters: Vec<(String, QoS)> = broker
        .client_subscriptions(&key("dev-1"))
        .unwrap()
        .into_iter()
        .map(|s| (s.filter, s.options.qos))
        .collect();
    assert_eq!(
        filters,
        [
            ("a/+".to_owned(), QoS::AtLeastOnce),
            ("b".to_owned(), QoS::AtMostOnce)
        ]
    );

    let query = |edit: fn(&mut ClientQuery)| {
        let mut query = ClientQuery::default();
        edit(&mut query);
        broker
            .clients(&query)
            .into_iter()
            .map(|c| c.key.client_id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        query(|q| q.client_id = Some(TextMatch::Contains("dev".into()))),
        ["dev-1", "dev-2"]
    );
    assert_eq!(
        query(|q| q.client_id = Some(TextMatch::Exact("dev".into()))),
        Vec::<String>::new()
    );
    assert_eq!(
        query(|q| q.username = Some(TextMatch::Exact("alice".into()))),
        ["dev-1"]
    );
    assert_eq!(
        query(|q| q.username = Some(TextMatch::Contains("lic".into()))),
        ["dev-1"]
    );
    assert_eq!(
        query(|q| q.namespace = Some("stomp".into())),
        Vec::<String>::new()
    );
    assert_eq!(query(|q| q.namespace = Some("mqtt".into())).len(), 3);

    // Gone, the persistent session stays listed as disconnected until it ends.
    dev.close(t0 + secs(5));
    let gone = broker.client(&key("dev-1")).unwrap();
    assert_eq!(gone.state, ConnState::Disconnected);
    assert_eq!(
        gone.disconnected_at,
        Some(std::time::SystemTime::UNIX_EPOCH + secs(5))
    );
    assert_eq!(
        query(|q| q.state = Some(ConnState::Disconnected)),
        ["dev-1"]
    );
    assert_eq!(broker.connected_count(), 2);
}

#[test]
fn presence_events_follow_an_mqtt_client_through_every_way_out() {
    let t0 = Instant::now();
    let broker = testing::broker_with_presence(t0);
    let watcher = testing::presence_watcher(&broker, t0);
    let reasons = |now| -> Vec<(String, String)> {
        testing::presence_events(&watcher, now)
            .into_iter()
            .map(|(topic, payload)| {
                let event = topic.rsplit('/').next().unwrap_or_default().to_owned();
                (event, payload["reason"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    };
    let connect = Connect {
        keep_alive: 10,
        username: Some("u".into()),
        ..persistent_v5("dev", 60)
    };
    let (mut dev, _) = Client::connect_with(&broker, connect.clone(), t0);
    let (topic, payload) = testing::presence_event(&watcher, t0);
    assert_eq!(topic, "$SYS/brokers/test@node/clients/dev/connected");
    assert_eq!(payload["clientid"], "dev");
    assert_eq!(payload["username"], "u");
    assert_eq!(payload["protocol"], "mqtt");
    assert_eq!(payload["proto_name"], "MQTT");
    assert_eq!(payload["proto_ver"], 5);
    assert_eq!(payload["keepalive"], 10);
    assert_eq!(payload["clean_start"], false);
    assert_eq!(payload["expiry_interval"], 60);
    assert_eq!(payload["connected_at"], 1_700_000_000_000u64);
    assert_eq!(payload["ts"], 1_700_000_000_000u64);
    assert!(payload["ipaddress"].is_null(), "no peer in this test");

    // Resumed by another connection: the first is taken over.
    let (mut second, _) = Client::connect_with(&broker, connect.clone(), t0 + secs(1));
    dev.wake(t0 + secs(1));
    assert_eq!(
        reasons(t0 + secs(1)),
        [
            ("disconnected".into(), "takenover".into()),
            ("connected".into(), String::new())
        ]
    );
    // Started anew by a clean one: discarded.
    let clean = Connect {
        username: Some("u".into()),
        ..connect_v5("dev")
    };
    let (mut third, _) = Client::connect_with(&broker, clean.clone(), t0 + secs(2));
    second.wake(t0 + secs(2));
    assert_eq!(
        reasons(t0 + secs(2)),
        [
            ("disconnected".into(), "discarded".into()),
            ("connected".into(), String::new())
        ]
    );
    third.send(
        Packet::Disconnect(Box::new(Disconnect {
            reason_code: ReasonCode::SUCCESS,
            properties: Default::default(),
        })),
        t0 + secs(3),
    );
    assert_eq!(
        reasons(t0 + secs(3)),
        [("disconnected".into(), "normal".into())]
    );
    let (mut silent, _) = Client::connect_with(&broker, connect, t0 + secs(4));
    silent.tick(t0 + secs(30));
    let (mut dropped, _) = Client::connect_with(&broker, clean.clone(), t0 + secs(31));
    dropped.close(t0 + secs(32));
    let (_kicked, _) = Client::connect_with(&broker, clean, t0 + secs(33));
    broker.kick(&key("dev"), t0 + secs(34));
    let events = testing::presence_events(&watcher, t0 + secs(34));
    let timeout = &events[1].1;
    assert_eq!(timeout["reason"], "keepalive_timeout");
    assert_eq!(timeout["disconnected_at"], 1_700_000_030_000u64);
    assert_eq!(timeout["connected_at"], 1_700_000_004_000u64);
    assert_eq!(
        events
            .iter()
            .map(|(_, p)| p["reason"].as_str().unwrap_or("-"))
            .collect::<Vec<_>>(),
        ["-", "keepalive_timeout", "-", "sock_closed", "-", "kicked"]
    );
}

#[test]
fn a_client_id_cannot_pass_for_another_clients_presence() {
    let t0 = Instant::now();
    let broker = testing::broker_with_presence(t0);
    let victim = testing::subscriber(
        &broker,
        "tracker",
        "$SYS/brokers/+/clients/victim/#",
        QoS::AtMostOnce,
        0,
        t0,
    );
    let any = testing::subscriber(
        &broker,
        "any",
        "$SYS/brokers/+/clients/+/connected",
        QoS::AtMostOnce,
        0,
        t0,
    );
    testing::presence_events(&any, t0);
    for id in [
        "victim/connected",
        "+",
        "#",
        "victim%2Fx",
        "victim/+/connected",
    ] {
        let mut client = Client::connect(&broker, id, t0);
        client.close(t0);
    }
    assert!(
        testing::presence_events(&victim, t0).is_empty(),
        "nothing lands under the victim's topics"
    );
    let seen: Vec<(String, String)> = testing::presence_events(&any, t0)
        .into_iter()
        .map(|(topic, payload)| (topic, payload["clientid"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "$SYS/brokers/test@node/clients/victim%2Fconnected/connected".into(),
                "victim/connected".into()
            ),
            (
                "$SYS/brokers/test@node/clients/%2B/connected".into(),
                "+".into()
            ),
            (
                "$SYS/brokers/test@node/clients/%23/connected".into(),
                "#".into()
            ),
            (
                "$SYS/brokers/test@node/clients/victim%252Fx/connected".into(),
                "victim%2Fx".into()
            ),
            (
                "$SYS/brokers/test@node/clients/victim%2F%2B%2Fconnected/connected".into(),
                "victim/+/connected".into()
            ),
        ],
        "each under a level of its own, its true id in the payload"
    );
}

#[test]
fn presence_events_are_off_unless_asked_for_and_each_kind_has_its_switch() {
    let t0 = Instant::now();
    let quiet = broker(t0);
    let watcher = testing::presence_watcher(&quiet, t0);
    Client::connect(&quiet, "dev", t0).close(t0);
    assert!(testing::presence_events(&watcher, t0).is_empty());

    let config = testing::default_config();
    let only_gone = gateway_config::SysEventMessages {
        client_connected: false,
        ..config.sys.sys_event_messages
    };
    let broker = Arc::new(
        Broker::new(config.mqtt.clone(), &config.retainer, Auth::allow_all(), t0)
            .with_presence(&config.node.name, only_gone),
    );
    let watcher = testing::presence_watcher(&broker, t0);
    Client::connect(&broker, "dev", t0).close(t0);
    let topics: Vec<String> = testing::presence_events(&watcher, t0)
        .into_iter()
        .map(|(topic, _)| topic)
        .collect();
    assert_eq!(
        topics,
        ["$SYS/brokers/gateway@127.0.0.1/clients/dev/disconnected"]
    );
}

#[test]
fn fan_out_to_a_thousand_sessions_shares_one_payload() {
    let t0 = Instant::now();
    let broker = broker(t0);
    // The clients stay alive so their sessions stay attached.
    let _subscribers: Vec<Client> = (0..1000)
        .map(|i| {
            let mut client = Client::connect(&broker, &format!("s{i}"), t0);
            client.subscribe("fan/out", QoS::AtMostOnce, t0);
            client
        })
        .collect();
    let payload = Bytes::from(vec![7u8; 512]);
    let message = mqtt_core::message::Message::new(
        ByteString::from_static("fan/out"),
        payload.clone(),
        QoS::AtMostOnce,
        false,
        t0,
    );
    assert_eq!(mqtt_core::testing::route(&broker, message).reached, 1000);
    for i in 0..1000 {
        let session = broker.session(&key(&format!("s{i}"))).expect("session");
        let queued = session
            .state
            .lock()
            .pop_queued(t0)
            .expect("one delivery queued");
        assert_eq!(
            queued.message.payload.as_ptr(),
            payload.as_ptr(),
            "subscriber {i} got a copy"
        );
    }
}

#[test]
fn overlapping_subscriptions_give_one_copy_with_every_identifier() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe_with(
        "a/+",
        SubscriptionOptions {
            qos: QoS::AtMostOnce,
            ..Default::default()
        },
        Some(1),
        t0,
    );
    sub.subscribe_with(
        "a/#",
        SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        },
        Some(2),
        t0,
    );
    sub.subscribe_with(
        "a/b",
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            ..Default::default()
        },
        None,
        t0,
    );
    let mut publisher = Client::connect(&broker, "pub", t0);
    publisher.publish("a/b", b"x", QoS::AtLeastOnce, 1, t0);
    let got = sub.publishes(t0);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].qos,
        QoS::AtLeastOnce,
        "highest granted, capped by the published QoS"
    );
    let mut ids = got[0].properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn no_local_skips_the_publishers_own_subscription() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut client = Client::connect(&broker, "c", t0);
    client.subscribe_with(
        "t",
        SubscriptionOptions {
            no_local: true,
            ..Default::default()
        },
        None,
        t0,
    );
    let mut other = Client::connect(&broker, "o", t0);
    other.subscribe("t", QoS::AtMostOnce, t0);
    client.publish("t", b"x", QoS::AtMostOnce, 0, t0);
    assert!(client.publishes(t0).is_empty());
    assert_eq!(other.publishes(t0).len(), 1);
}

#[test]
fn shared_subscription_round_robin_delivers_each_message_once() {
    let t0 = Instant::now();
    let broker = broker_with(
        |c| {
            c.mqtt.shared_subscription_strategy =
                gateway_config::SharedSubscriptionStrategy::RoundRobin
        },
        t0,
    );
    let mut members: Vec<Client> = (0..3)
        .map(|i| {
            let mut client = Client::connect(&broker, &format!("m{i}"), t0);
            assert_eq!(
                client.subscribe("$share/g/jobs/+", QoS::AtLeastOnce, t0),
                vec![ReasonCode::GRANTED_QOS_1]
            );
            client
        })
        .collect();
    let mut queue_member = Client::connect(&broker, "q", t0);
    queue_member.subscribe("$queue/jobs/+", QoS::AtMostOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    for i in 0..30u16 {
        publisher.publish("jobs/x", b"job", QoS::AtLeastOnce, i + 1, t0);
    }
    let counts: Vec<usize> = members.iter_mut().map(|m| m.publishes(t0).len()).collect();
    assert_eq!(counts, vec![10, 10, 10]);
    assert_eq!(
        queue_member.publishes(t0).len(),
        30,
        "$queue is a group of its own"
    );
}

#[test]
fn retained_messages_follow_retain_handling() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    let mut retained = publish("r/a", b"kept", QoS::AtLeastOnce, 1);
    retained.retain = true;
    publisher.send(Packet::Publish(retained), t0);

    let mut sub = Client::connect(&broker, "sub", t0);
    let options = |rh| SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        retain_handling: rh,
        ..Default::default()
    };
    sub.subscribe_with("r/+", options(0), None, t0);
    let got = sub.publishes(t0);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain, "retained delivery carries RETAIN");
    sub.subscribe_with("r/+", options(1), None, t0);
    assert!(
        sub.publishes(t0).is_empty(),
        "rh=1 sends nothing for an existing subscription"
    );
    sub.subscribe_with("r/#", options(1), None, t0);
    assert_eq!(
        sub.publishes(t0).len(),
        1,
        "rh=1 sends for a new subscription"
    );
    sub.subscribe_with("r/a", options(2), None, t0);
    assert!(sub.publishes(t0).is_empty(), "rh=2 never sends");

    // Live forwarding clears RETAIN unless retain-as-published.
    let mut live = Client::connect(&broker, "live", t0);
    live.subscribe_with(
        "r/b",
        SubscriptionOptions {
            retain_handling: 2,
            ..Default::default()
        },
        None,
        t0,
    );
    live.subscribe_with(
        "r/c",
        SubscriptionOptions {
            retain_handling: 2,
            retain_as_published: true,
            ..Default::default()
        },
        None,
        t0,
    );
    for topic in ["r/b", "r/c"] {
        let mut message = publish(topic, b"v", QoS::AtMostOnce, 0);
        message.retain = true;
        publisher.send(Packet::Publish(message), t0);
    }
    let flags: Vec<(String, bool)> = live
        .publishes(t0)
        .iter()
        .map(|p| (p.topic.to_string(), p.retain))
        .collect();
    assert_eq!(
        flags,
        vec![("r/b".to_owned(), false), ("r/c".to_owned(), true)]
    );

    let mut clear = publish("r/a", b"", QoS::AtMostOnce, 0);
    clear.retain = true;
    publisher.send(Packet::Publish(clear), t0);
    let mut late = Client::connect(&broker, "late", t0);
    late.subscribe("r/a", QoS::AtMostOnce, t0);
    assert!(
        late.publishes(t0).is_empty(),
        "empty payload cleared the retained message"
    );
    assert_eq!(broker.retained_count(), 2);
}

#[test]
fn topic_aliases_work_in_both_directions() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect = Connect {
        properties: ConnectProperties {
            topic_alias_maximum: Some(5),
            ..Default::default()
        },
        ..connect_v5("sub")
    };
    let (mut sub, _) = Client::connect_with(&broker, connect, t0);
    sub.subscribe("alias/t", QoS::AtMostOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    let mut first = publish("alias/t", b"1", QoS::AtMostOnce, 0);
    first.properties.topic_alias = Some(3);
    publisher.send(Packet::Publish(first), t0);
    let mut second = publish("", b"2", QoS::AtMostOnce, 0);
    second.properties.topic_alias = Some(3);
    publisher.send(Packet::Publish(second), t0);
    let got = sub.publishes(t0);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (&*got[0].topic, got[0].properties.topic_alias),
        ("alias/t", Some(1))
    );
    assert_eq!(
        (&*got[1].topic, got[1].properties.topic_alias),
        ("", Some(1))
    );

    let mut unknown = publish("", b"3", QoS::AtMostOnce, 0);
    unknown.properties.topic_alias = Some(4);
    assert_eq!(publisher.send(Packet::Publish(unknown), t0), Flow::Close);
}

#[test]
fn deliveries_over_the_clients_maximum_packet_size_are_dropped() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect = Connect {
        properties: ConnectProperties {
            maximum_packet_size: Some(64),
            ..Default::default()
        },
        ..connect_v5("small")
    };
    let (mut small, _) = Client::connect_with(&broker, connect, t0);
    small.subscribe("t", QoS::AtLeastOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    publisher.send(
        Packet::Publish(Publish {
            payload: Bytes::from(vec![0u8; 100]),
            ..publish("t", b"", QoS::AtLeastOnce, 1)
        }),
        t0,
    );
    publisher.publish("t", b"fits", QoS::AtLeastOnce, 2, t0);
    let got = small.publishes(t0);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"fits");
}

#[test]
fn outbound_window_follows_the_clients_receive_maximum() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect = Connect {
        properties: ConnectProperties {
            receive_maximum: Some(2),
            ..Default::default()
        },
        ..connect_v5("sub")
    };
    let (mut sub, _) = Client::connect_with(&broker, connect, t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    for i in 1..=5 {
        publisher.publish("t", b"m", QoS::AtLeastOnce, i, t0);
    }
    let first = sub.publishes(t0);
    assert_eq!(first.len(), 2);
    sub.send(
        Packet::PubAck(PubResponse {
            packet_id: first[0].packet_id,
            ..Default::default()
        }),
        t0,
    );
    assert_eq!(sub.receive().len(), 1, "one ack opens one slot");
}

#[test]
fn unsupported_authentication_method_gets_0x8c() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect = Connect {
        properties: ConnectProperties {
            authentication_method: Some("SCRAM-SHA-1".into()),
            ..Default::default()
        },
        ..connect_v5("c")
    };
    let (_, connack) = Client::connect_with(&broker, connect, t0);
    assert_eq!(connack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[test]
fn v5_puback_says_when_nobody_subscribed() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    let acks = publisher.publish("nobody", b"x", QoS::AtLeastOnce, 1, t0);
    assert!(
        matches!(acks.as_slice(), [Packet::PubAck(a)] if a.reason_code == ReasonCode::NO_MATCHING_SUBSCRIBERS)
    );
}

#[test]
fn empty_client_id_is_assigned_in_v5_and_refused_for_a_persistent_v311_session() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let (_, connack) = Client::connect_with(&broker, connect_v5(""), t0);
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
    assert!(connack.properties.assigned_client_identifier.is_some());
    let v311 = Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: false,
        ..connect_v5("")
    };
    let (_, connack) = Client::connect_with(&broker, v311, t0);
    assert_eq!(connack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
}

#[test]
fn queue_limit_drops_qos0_first_and_counts_it() {
    let t0 = Instant::now();
    let broker = broker_with(|c| c.mqtt.max_queued_messages = 2, t0);
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 60), t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    sub.close(t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    publisher.publish("t", b"q0", QoS::AtMostOnce, 0, t0);
    publisher.publish("t", b"q1", QoS::AtLeastOnce, 1, t0);
    publisher.publish("t", b"q1b", QoS::AtLeastOnce, 2, t0);
    publisher.publish("t", b"q1c", QoS::AtLeastOnce, 3, t0);
    assert_eq!(broker.stats.dropped_qos0.load(Ordering::SeqCst), 1);
    assert_eq!(broker.stats.dropped_queue_full.load(Ordering::SeqCst), 1);
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 60), t0);
    let payloads: Vec<Bytes> = sub.publishes(t0).into_iter().map(|p| p.payload).collect();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"q1"), Bytes::from_static(b"q1b")]
    );
}

#[test]
fn malformed_v5_connect_is_answered_with_connack_0x81() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut client = Client::new(&broker, ProtocolVersion::V5, t0);
    // CONNECT, level 5, with the reserved flag bit set [MQTT-3.1.2-3].
    let mut bytes = BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x00"[..]);
    let flow = client.channel.handle_input(&mut bytes, &mut client.out, t0);
    assert_eq!(flow, Flow::Close);
    assert!(
        matches!(client.receive().as_slice(), [Packet::ConnAck(c)] if c.reason_code == ReasonCode::MALFORMED_PACKET)
    );
}

#[test]
fn malformed_packet_after_connect_gets_disconnect_0x81_and_publishes_the_will() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("wills/#", QoS::AtLeastOnce, t0);
    let (mut device, _) = Client::connect_with(
        &broker,
        Connect {
            will: Some(will("wills/dev", None)),
            ..connect_v5("dev")
        },
        t0,
    );
    // PUBLISH with both QoS bits set.
    let mut bytes = BytesMut::from(&b"\x36\x00"[..]);
    assert_eq!(
        device.channel.handle_input(&mut bytes, &mut device.out, t0),
        Flow::Close
    );
    device.close(t0);
    assert!(
        matches!(device.receive().as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::MALFORMED_PACKET)
    );
    assert_eq!(watcher.publishes(t0).len(), 1);
}

fn broker_with_acl(rules: &str, t0: Instant) -> Arc<Broker> {
    use mqtt_core::auth::{AclAuthorizer, AllowAll};
    let authorizer = AclAuthorizer::parse(
        rules,
        std::path::Path::new("test.acl"),
        gateway_config::AclNoMatch::Deny,
    )
    .expect("rules parse");
    let auth = Auth {
        authenticator: Arc::new(AllowAll),
        authorizer: Arc::new(authorizer),
    };
    testing::broker_with_auth(auth, t0)
}

#[test]
fn acl_denials_answer_0x87_in_v5_and_0x80_in_v311() {
    let t0 = Instant::now();
    let broker = broker_with_acl(
        "allow all all open/#\nallow client:reader subscribe secret/#\n",
        t0,
    );
    let mut v5 = Client::connect(&broker, "writer", t0);
    let acks = v5.publish("secret/x", b"x", QoS::AtLeastOnce, 1, t0);
    assert!(
        matches!(acks.as_slice(), [Packet::PubAck(a)] if a.reason_code == ReasonCode::NOT_AUTHORIZED)
    );
    assert_eq!(
        v5.subscribe("secret/#", QoS::AtLeastOnce, t0),
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(
        v5.subscribe("open/+", QoS::AtLeastOnce, t0),
        vec![ReasonCode::GRANTED_QOS_1]
    );

    let (mut v311, _) = Client::connect_with(
        &broker,
        Connect {
            protocol: ProtocolVersion::V3_1_1,
            ..connect_v5("old")
        },
        t0,
    );
    assert_eq!(
        v311.subscribe("secret/#", QoS::AtLeastOnce, t0),
        vec![ReasonCode(0x80)]
    );

    let mut reader = Client::connect(&broker, "reader", t0);
    assert_eq!(
        reader.subscribe("secret/+", QoS::AtMostOnce, t0),
        vec![ReasonCode::GRANTED_QOS_0]
    );
    v5.publish("secret/x", b"denied", QoS::AtMostOnce, 0, t0);
    assert!(
        reader.publishes(t0).is_empty(),
        "a denied publish is dropped"
    );
}

#[test]
fn configured_limits_are_advertised_and_enforced() {
    let t0 = Instant::now();
    let broker = broker_with(
        |c| {
            c.mqtt.max_qos_allowed = 1;
            c.mqtt.retain_available = false;
            c.mqtt.wildcard_subscription = false;
            c.mqtt.shared_subscription = false;
            c.mqtt.subscription_identifiers = false;
            c.mqtt.max_topic_alias = 2;
            c.mqtt.max_keepalive = 30;
            c.mqtt.max_topic_levels = 3;
            c.mqtt.max_subscriptions = 2;
            c.mqtt.receive_maximum = 20;
            c.mqtt.max_packet_size = 4096;
        },
        t0,
    );
    let (mut client, connack) = Client::connect_with(
        &broker,
        Connect {
            keep_alive: 100,
            ..connect_v5("c")
        },
        t0,
    );
    let p = &connack.properties;
    assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(p.retain_available, Some(false));
    assert_eq!(p.wildcard_subscription_available, Some(false));
    assert_eq!(p.shared_subscription_available, Some(false));
    assert_eq!(p.subscription_identifiers_available, Some(false));
    assert_eq!(p.topic_alias_maximum, Some(2));
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(p.receive_maximum, Some(20));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(
        client.channel.next_deadline(),
        Some(t0 + secs(45)),
        "server keep alive times 1.5"
    );

    assert_eq!(
        client.subscribe("a/b", QoS::ExactlyOnce, t0),
        vec![ReasonCode::GRANTED_QOS_1],
        "granted QoS capped"
    );
    assert_eq!(
        client.subscribe("a/+", QoS::AtMostOnce, t0),
        vec![ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED]
    );
    assert_eq!(
        client.subscribe("$share/g/a", QoS::AtMostOnce, t0),
        vec![ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED]
    );
    assert_eq!(
        client.subscribe("a/b/c/d", QoS::AtMostOnce, t0),
        vec![ReasonCode::TOPIC_FILTER_INVALID],
        "too many levels"
    );
    assert_eq!(
        client.subscribe("x", QoS::AtMostOnce, t0),
        vec![ReasonCode::GRANTED_QOS_0]
    );
    assert_eq!(
        client.subscribe("y", QoS::AtMostOnce, t0),
        vec![ReasonCode::QUOTA_EXCEEDED],
        "max subscriptions"
    );

    let refused = |edit: &dyn Fn(&mut Publish), expected: ReasonCode| {
        let mut client = Client::connect(&broker, "p", t0);
        let mut message = publish("a/b", b"x", QoS::AtLeastOnce, 1);
        edit(&mut message);
        assert_eq!(client.send(Packet::Publish(message), t0), Flow::Close);
        let reply = client.receive();
        assert!(
            matches!(reply.as_slice(), [Packet::Disconnect(d)] if d.reason_code == expected),
            "{expected:?}: {reply:?}"
        );
    };
    refused(&|m| m.qos = QoS::ExactlyOnce, ReasonCode::QOS_NOT_SUPPORTED);
    refused(&|m| m.retain = true, ReasonCode::RETAIN_NOT_SUPPORTED);
    refused(
        &|m| m.properties.topic_alias = Some(3),
        ReasonCode::TOPIC_ALIAS_INVALID,
    );
    refused(
        &|m| m.topic = ByteString::from_static("a/b/c/d"),
        ReasonCode::TOPIC_NAME_INVALID,
    );

    let mut with_id = Client::connect(&broker, "i", t0);
    with_id.send(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscription_identifier: Some(5),
            user_properties: vec![],
            filters: vec![("x".into(), SubscriptionOptions::default())],
        }),
        t0,
    );
    assert!(
        matches!(with_id.receive().as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED)
    );
}

#[test]
fn client_id_longer_than_the_limit_is_refused() {
    let t0 = Instant::now();
    let broker = broker_with(|c| c.mqtt.max_client_id_length = 23, t0);
    let (_, connack) = Client::connect_with(&broker, connect_v5(&"x".repeat(24)), t0);
    assert_eq!(connack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    let (_, connack) = Client::connect_with(&broker, connect_v5(&"x".repeat(23)), t0);
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
}

#[test]
fn more_qos2_in_flight_than_receive_maximum_disconnects_with_0x93() {
    let t0 = Instant::now();
    let broker = broker_with(|c| c.mqtt.receive_maximum = 2, t0);
    let mut client = Client::connect(&broker, "c", t0);
    client.publish("t", b"1", QoS::ExactlyOnce, 1, t0);
    client.publish("t", b"2", QoS::ExactlyOnce, 2, t0);
    assert_eq!(
        client.send(Packet::Publish(publish("t", b"3", QoS::ExactlyOnce, 3)), t0),
        Flow::Close
    );
    assert!(
        matches!(client.receive().as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
    );
}

#[test]
fn retained_store_keeps_at_most_its_configured_count() {
    let t0 = Instant::now();
    let broker = broker_with(|c| c.retainer.max_retained_messages = 2, t0);
    let mut publisher = Client::connect(&broker, "p", t0);
    for topic in ["r/1", "r/2", "r/3"] {
        let mut message = publish(topic, b"v", QoS::AtMostOnce, 0);
        message.retain = true;
        publisher.send(Packet::Publish(message), t0);
    }
    assert_eq!(broker.retained_count(), 2);
    let mut replace = publish("r/1", b"new", QoS::AtMostOnce, 0);
    replace.retain = true;
    publisher.send(Packet::Publish(replace), t0);
    let mut sub = Client::connect(&broker, "s", t0);
    sub.subscribe("r/1", QoS::AtMostOnce, t0);
    assert_eq!(
        &sub.publishes(t0)[0].payload[..],
        b"new",
        "an existing topic may still be replaced"
    );
}

#[test]
fn every_shared_subscription_strategy_delivers_each_message_to_exactly_one_member() {
    use gateway_config::SharedSubscriptionStrategy as Strategy;
    for strategy in [
        Strategy::Random,
        Strategy::RoundRobin,
        Strategy::Sticky,
        Strategy::HashClientid,
        Strategy::HashTopic,
    ] {
        let t0 = Instant::now();
        let broker = broker_with(|c| c.mqtt.shared_subscription_strategy = strategy, t0);
        let mut members: Vec<Client> = (0..3)
            .map(|i| {
                let mut client = Client::connect(&broker, &format!("m{i}"), t0);
                client.subscribe("$share/g/s/+", QoS::AtMostOnce, t0);
                client
            })
            .collect();
        let mut publisher = Client::connect(&broker, "pub", t0);
        for i in 0..60u16 {
            // Two topics, so hash_topic has something to tell apart.
            publisher.publish(
                if i % 2 == 0 { "s/a" } else { "s/b" },
                b"m",
                QoS::AtMostOnce,
                0,
                t0,
            );
        }
        let received: Vec<Vec<String>> = members
            .iter_mut()
            .map(|m| {
                m.publishes(t0)
                    .iter()
                    .map(|p| p.topic.to_string())
                    .collect()
            })
            .collect();
        let counts: Vec<usize> = received.iter().map(Vec::len).collect();
        assert_eq!(
            counts.iter().sum::<usize>(),
            60,
            "{strategy:?}: each message once"
        );
        match strategy {
            Strategy::RoundRobin => assert_eq!(counts, vec![20, 20, 20]),
            Strategy::Sticky | Strategy::HashClientid => {
                assert_eq!(
                    counts.iter().filter(|&&n| n > 0).count(),
                    1,
                    "{strategy:?}: one member takes all: {counts:?}"
                )
            }
            Strategy::HashTopic => {
                for topics in &received {
                    for topic in ["s/a", "s/b"] {
                        let n = topics.iter().filter(|t| *t == topic).count();
                        assert!(
                            n == 0 || n == 30,
                            "hash_topic keeps {topic} on one member: {topics:?}"
                        );
                    }
                }
            }
            Strategy::Random => {}
        }
    }
}

#[test]
fn retained_messages_honour_their_message_expiry() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut publisher = Client::connect(&broker, "p", t0);
    let mut message = publish("r/exp", b"short-lived", QoS::AtLeastOnce, 1);
    message.retain = true;
    message.properties.message_expiry_interval = Some(10);
    publisher.send(Packet::Publish(message), t0);

    let mut early = Client::connect(&broker, "early", t0 + secs(4));
    early.subscribe("r/#", QoS::AtLeastOnce, t0 + secs(4));
    let got = early.publishes(t0 + secs(4));
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].properties.message_expiry_interval,
        Some(6),
        "remaining time forwarded"
    );

    let mut late = Client::connect(&broker, "late", t0 + secs(11));
    late.subscribe("r/#", QoS::AtLeastOnce, t0 + secs(11));
    assert!(
        late.publishes(t0 + secs(11)).is_empty(),
        "expired retained message not delivered"
    );
    assert_eq!(broker.purge_expired_retained(t0 + secs(11)), 1);
    assert_eq!(broker.retained_count(), 0);
}

fn queued(broker: &Broker, client_id: &str) -> usize {
    broker
        .session(&key(client_id))
        .map_or(0, |session| session.state.lock().queue_len())
}

/// The defaults: a receiver is behind at 500 queued messages and has caught up at 100.
const HIGH_WATER: usize = 500;
const LOW_WATER: usize = 100;

#[test]
fn a_receiver_behind_holds_its_publisher_back_until_it_is_down_to_low_water() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtMostOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    for _ in 0..HIGH_WATER + 200 {
        publisher.publish("t", b"x", QoS::AtMostOnce, 0, t0);
    }
    // The message that made it behind is its last until it catches up; the rest wait in
    // the publisher's connection, read but not routed.
    assert_eq!(queued(&broker, "sub"), HIGH_WATER);
    assert!(
        publisher.channel.accepts_input(),
        "200 small messages fit the parking"
    );

    // The receiver writes some, still above low water: nothing changes for the publisher.
    let woken = publisher.wakeup.count();
    let mut received = 0;
    let mut out = BytesMut::new();
    sub.channel.handle_wakeup(&mut out, t0);
    received += count_publishes(&mut out, &mut sub.decoder);
    assert!(
        queued(&broker, "sub") <= LOW_WATER,
        "one drain writes 64 KiB"
    );
    assert!(
        publisher.wakeup.count() > woken,
        "let go: the publisher is woken"
    );

    // Woken, the publisher routes what it parked, in order.
    publisher.wake(t0);
    received += sub.publishes(t0).len();
    assert_eq!(received, HIGH_WATER + 200);
    assert_eq!(broker.stats.dropped_qos0.load(Ordering::SeqCst), 0);
}

/// QoS 1 PUBLISHes of `payload` to `topic` with `packet_ids`, as one read brings them.
fn qos1_publishes_in_one_read(
    topic: &str,
    payload: &'static [u8],
    packet_ids: std::ops::RangeInclusive<u16>,
) -> BytesMut {
    let mut input = BytesMut::new();
    for packet_id in packet_ids {
        let packet = Packet::Publish(publish(topic, payload, QoS::AtLeastOnce, packet_id));
        encode(&packet, ProtocolVersion::V5, &mut input).unwrap();
    }
    input
}

fn count_publishes(out: &mut BytesMut, decoder: &mut Decoder) -> usize {
    let mut count = 0;
    while let Some(packet) = decoder.decode(out).expect("server output decodes") {
        count += usize::from(matches!(packet, Packet::Publish(_)));
    }
    count
}

#[test]
fn a_held_back_publisher_stops_taking_input_once_its_parking_is_full() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    let connect = Connect {
        keep_alive: 10,
        ..connect_v5("pub")
    };
    let (mut publisher, _) = Client::connect_with(&broker, connect, t0);
    static KIB: [u8; 1024] = [b'p'; 1024];
    for _ in 0..HIGH_WATER {
        publisher.publish("t", b"x", QoS::AtMostOnce, 0, t0);
    }
    // 70 KiB more arrive in one read: 64 KiB are parked, the rest stays in the input.
    let mut input = qos1_publishes_in_one_read("t", &KIB, 1..=70);
    publisher
        .channel
        .handle_input(&mut input, &mut publisher.out, t0);
    assert!(!publisher.channel.accepts_input());
    assert!(!input.is_empty(), "what does not fit stays unread");
    assert!(
        !publisher
            .receive()
            .iter()
            .any(|p| matches!(p, Packet::PubAck(_))),
        "a parked QoS 1 message is not acknowledged"
    );
    // Nothing is read from a client held back, so its silence is not held against it.
    assert_eq!(publisher.tick(t0 + secs(60)), Flow::Continue);

    // The receiver catches up; the driver, woken, feeds the rest of the input.
    while !sub.publishes(t0).is_empty() {}
    publisher.wake(t0);
    assert!(publisher.channel.accepts_input());
    publisher
        .channel
        .handle_input(&mut input, &mut publisher.out, t0);
    while !sub.publishes(t0).is_empty() {}
    publisher.wake(t0);
    let acked: Vec<u16> = publisher
        .receive()
        .into_iter()
        .filter_map(|packet| match packet {
            Packet::PubAck(ack) => Some(ack.packet_id),
            _ => None,
        })
        .collect();
    assert_eq!(
        acked,
        (1..=70).collect::<Vec<u16>>(),
        "every message, in order"
    );
    assert!(input.is_empty());
}

#[test]
fn acknowledgements_pass_parked_publishes_and_a_subscribe_waits_behind_them() {
    let t0 = Instant::now();
    let broker = broker(t0);
    // `both` publishes to `sub`, and receives QoS 1 from `other`.
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtMostOnce, t0);
    let mut both = Client::connect(&broker, "both", t0);
    both.subscribe("in", QoS::AtLeastOnce, t0);
    let mut other = Client::connect(&broker, "other", t0);
    for _ in 0..HIGH_WATER {
        both.publish("t", b"x", QoS::AtMostOnce, 0, t0);
    }
    other.publish("in", b"d", QoS::AtLeastOnce, 1, t0);
    let delivered = both.publishes(t0);
    assert_eq!(delivered.len(), 1);
    let mut state = broker.session(&key("both")).unwrap();
    assert_eq!(state.state.lock().outgoing_len(), 1);

    both.publish("t", b"parked", QoS::AtMostOnce, 0, t0);
    both.send(
        Packet::PubAck(PubResponse {
            packet_id: delivered[0].packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }),
        t0,
    );
    assert_eq!(
        state.state.lock().outgoing_len(),
        0,
        "the acknowledgement passed the parked publish"
    );
    both.send(
        Packet::Subscribe(Subscribe {
            packet_id: 7,
            subscription_identifier: None,
            user_properties: vec![],
            filters: vec![("late".to_owned(), SubscriptionOptions::default())],
        }),
        t0,
    );
    assert!(
        !both
            .receive()
            .iter()
            .any(|p| matches!(p, Packet::SubAck(_))),
        "SUBSCRIBE waits behind the parked publish"
    );
    assert!(!both.channel.accepts_input(), "nothing is read past it");

    while !sub.publishes(t0).is_empty() {}
    both.wake(t0);
    assert!(both.channel.accepts_input());
    assert!(both
        .receive()
        .iter()
        .any(|p| matches!(p, Packet::SubAck(_))));
    let bodies: Vec<Bytes> = sub.publishes(t0).into_iter().map(|p| p.payload).collect();
    assert_eq!(bodies, vec![Bytes::from_static(b"parked")]);
    state = broker.session(&key("both")).unwrap();
    assert!(state.state.lock().subscriptions.contains_key("late"));
}

#[test]
fn a_receiver_that_takes_nothing_while_behind_is_disconnected_and_its_publishers_go_on() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut stuck = Client::connect(&broker, "stuck", t0);
    stuck.subscribe("t", QoS::AtMostOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    // A publisher to another topic, and its receiver.
    let mut bystander_sub = Client::connect(&broker, "bystander-sub", t0);
    bystander_sub.subscribe("u", QoS::AtMostOnce, t0);
    let mut bystander = Client::connect(&broker, "bystander", t0);

    for _ in 0..HIGH_WATER + 1 {
        publisher.publish("t", b"x", QoS::AtMostOnce, 0, t0);
    }
    assert_eq!(queued(&broker, "stuck"), HIGH_WATER);
    for _ in 0..2 * HIGH_WATER {
        bystander.publish("u", b"y", QoS::AtMostOnce, 0, t0);
        bystander_sub.publishes(t0);
    }
    assert_eq!(queued(&broker, "bystander-sub"), 0, "the other topic flows");

    broker.handle_timeouts(t0 + secs(1));
    broker.handle_timeouts(t0 + secs(10));
    assert!(!stuck.closed, "10 s from when the broker first saw it");
    let woken = publisher.wakeup.count();
    broker.handle_timeouts(t0 + secs(11));
    assert!(
        publisher.wakeup.count() > woken,
        "its publisher is let go at once"
    );
    // Its close takes a while (a flush it does not read): it is counted once meanwhile.
    broker.handle_timeouts(t0 + secs(12));
    assert_eq!(stuck.wake(t0 + secs(11)), Flow::Close);
    let disconnect = stuck.receive().into_iter().find_map(|packet| match packet {
        Packet::Disconnect(disconnect) => Some(disconnect.reason_code),
        _ => None,
    });
    assert_eq!(disconnect, Some(ReasonCode::QUOTA_EXCEEDED));
    assert!(publisher.wakeup.count() > woken, "its publisher is let go");
    publisher.wake(t0 + secs(11));
    assert_eq!(
        broker
            .stats
            .slow_receivers_disconnected
            .load(Ordering::SeqCst),
        1
    );
}

#[test]
fn a_receiver_that_never_acknowledges_is_disconnected_though_it_pings_and_is_drained() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut stuck = Client::connect(&broker, "stuck", t0);
    stuck.subscribe("t", QoS::AtLeastOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    for packet_id in 1..=u16::try_from(HIGH_WATER + 200).unwrap() {
        publisher.publish("t", b"x", QoS::AtLeastOnce, packet_id, t0);
    }
    // Its window fills and is never acknowledged; each PINGREQ drains its queue once more,
    // which takes a message and puts it back: that is not taking one.
    assert!(!stuck.publishes(t0).is_empty());
    for second in 1..=11 {
        stuck.send(Packet::PingReq, t0 + secs(second));
        broker.handle_timeouts(t0 + secs(second));
    }
    assert_eq!(stuck.wake(t0 + secs(11)), Flow::Close);
    assert_eq!(
        broker
            .stats
            .slow_receivers_disconnected
            .load(Ordering::SeqCst),
        1
    );
}

#[test]
fn a_receiver_that_keeps_taking_is_never_disconnected_however_long_it_is_behind() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut slow = Client::connect(&broker, "slow", t0);
    slow.subscribe("t", QoS::AtLeastOnce, t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    let mut packet_id = 0u16;
    for second in 0..30 {
        let now = t0 + secs(second);
        for _ in 0..HIGH_WATER {
            packet_id = packet_id.wrapping_add(1).max(1);
            publisher.publish("t", b"x", QoS::AtLeastOnce, packet_id, now);
        }
        // One message a second: its window of one is acknowledged, the next goes out.
        for publish in slow.publishes(now).into_iter().take(1) {
            slow.send(
                Packet::PubAck(PubResponse {
                    packet_id: publish.packet_id,
                    reason_code: ReasonCode::SUCCESS,
                    properties: AckProperties::default(),
                }),
                now,
            );
        }
        broker.handle_timeouts(now);
        publisher.wake(now);
    }
    assert!(!slow.closed);
    assert_eq!(broker.stats.dropped_queue_full.load(Ordering::SeqCst), 0);
}

#[test]
fn an_offline_receiver_holds_nobody_back_and_keeps_its_queue_limit() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let (mut offline, _) = Client::connect_with(&broker, persistent_v5("offline", 60), t0);
    offline.subscribe("o", QoS::AtLeastOnce, t0);
    offline.close(t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    for packet_id in 1..=1100 {
        let acks = publisher.publish("o", b"y", QoS::AtLeastOnce, packet_id, t0);
        assert!(
            acks.iter().any(|p| matches!(p, Packet::PubAck(_))),
            "never held back"
        );
    }
    assert_eq!(queued(&broker, "offline"), 1000);
    assert_eq!(broker.stats.dropped_queue_full.load(Ordering::SeqCst), 100);
}

fn acks(packets: Vec<Packet>) -> Vec<(char, u16, u8)> {
    packets
        .into_iter()
        .filter_map(|packet| match packet {
            Packet::PubAck(ack) => Some(('A', ack.packet_id, ack.reason_code.0)),
            Packet::PubRec(rec) => Some(('R', rec.packet_id, rec.reason_code.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn acknowledgements_of_stored_messages_wait_until_durable_and_keep_their_order() {
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    store.hold_back();
    let broker = broker_on_store(store.clone(), t0);
    let mut publisher = Client::connect(&broker, "pub", t0);
    let mut retained = publish("kept", b"1", QoS::AtLeastOnce, 1);
    retained.retain = true;
    publisher.send(Packet::Publish(retained), t0);
    // Not retained, so nothing to store, but its PUBACK must not overtake the first.
    publisher.send(
        Packet::Publish(publish("plain", b"2", QoS::AtLeastOnce, 2)),
        t0,
    );
    let mut exactly_once = publish("kept2", b"3", QoS::ExactlyOnce, 3);
    exactly_once.retain = true;
    publisher.send(Packet::Publish(exactly_once), t0);
    assert_eq!(acks(publisher.receive()), vec![], "nothing is durable yet");
    assert_eq!(store.submitted(), 2);

    store.make_durable(1);
    assert!(publisher.wakeup.count() > 0, "the store woke it");
    publisher.wake(t0);
    assert_eq!(
        acks(publisher.receive()),
        vec![('A', 1, 0x10), ('A', 2, 0x10)],
        "the first and the one behind it, in order (0x10: nobody subscribed)"
    );
    store.make_durable(2);
    publisher.wake(t0);
    assert_eq!(acks(publisher.receive()), vec![('R', 3, 0x10)]);

    // A full store refuses every QoS 1/2 message, any of which a persistent session might
    // have to keep; QoS 0 still flows.
    store.set_full(true);
    let mut refused = publish("kept", b"4", QoS::AtLeastOnce, 4);
    refused.retain = true;
    publisher.send(Packet::Publish(refused), t0);
    publisher.send(
        Packet::Publish(publish("plain", b"5", QoS::ExactlyOnce, 5)),
        t0,
    );
    assert_eq!(
        acks(publisher.receive()),
        vec![('A', 4, 0x97), ('R', 5, 0x97)]
    );

    // A retained QoS 0 message is routed but not kept: no write passes a full store.
    let retained_before = store.count(mqtt_core::storage::Table::Retained);
    let mut qos0 = publish("kept/0", b"6", QoS::AtMostOnce, 0);
    qos0.retain = true;
    publisher.send(Packet::Publish(qos0), t0);
    assert_eq!(
        store.count(mqtt_core::storage::Table::Retained),
        retained_before
    );
    assert_eq!(broker.stats.retained_refused.load(Ordering::Relaxed), 1);
    // Once room is freed the store takes them again.
    store.set_full(false);
    let mut qos0 = publish("kept/0", b"7", QoS::AtMostOnce, 0);
    qos0.retain = true;
    publisher.send(Packet::Publish(qos0), t0);
    assert_eq!(
        store.count(mqtt_core::storage::Table::Retained),
        retained_before + 1
    );
}

/// A broker started at `now` on `store`; the wall clock moves with the virtual one from
/// a fixed date at `t0`, so a virtual downtime is a real one to the store's records.
fn restarted(
    store: &Arc<MapStore>,
    t0: Instant,
    now: Instant,
) -> (Arc<Broker>, mqtt_core::broker::Recovered) {
    let config = testing::default_config();
    let wall = std::time::SystemTime::UNIX_EPOCH + secs(1_800_000_000) + (now - t0);
    let broker = Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        Auth::allow_all(),
        now,
    )
    .with_store(store.clone(), wall);
    let recovered = broker.recover(now).expect("recover");
    (Arc::new(broker), recovered)
}

fn ack(packet_id: u16) -> PubResponse {
    PubResponse {
        packet_id,
        ..Default::default()
    }
}

#[test]
fn a_persistent_session_comes_back_from_the_store_with_its_queue_and_window() {
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let (broker, _) = restarted(&store, t0, t0);
    let (mut sub, _) = Client::connect_with(&broker, persistent_v5("sub", 3600), t0);
    sub.subscribe_with(
        "t/#",
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            ..Default::default()
        },
        Some(7),
        t0,
    );
    let (mut publisher, _) = Client::connect_with(&broker, persistent_v5("pub", 3600), t0);
    publisher.publish("t/1", b"acked", QoS::AtLeastOnce, 1, t0);
    publisher.publish("t/2", b"unacked", QoS::AtLeastOnce, 2, t0);
    publisher.publish("t/3", b"received", QoS::ExactlyOnce, 3, t0);
    publisher.publish("t/0", b"at most once", QoS::AtMostOnce, 0, t0);
    let sent = sub.publishes(t0);
    assert_eq!(sent.len(), 4);
    assert_eq!(sent[0].properties.subscription_identifiers, vec![7]);
    sub.send(Packet::PubAck(ack(sent[0].packet_id)), t0);
    sub.send(Packet::PubRec(ack(sent[2].packet_id)), t0);
    assert!(matches!(sub.receive().as_slice(), [Packet::PubRel(_)]));
    sub.close(t0);
    publisher.publish("t/4", b"queued", QoS::AtLeastOnce, 4, t0);
    // A QoS 2 message whose PUBREC is out but whose PUBREL has not come yet.
    let answer = publisher.publish("t/5", b"once", QoS::ExactlyOnce, 5, t0);
    assert!(matches!(answer.as_slice(), [Packet::PubRec(_)]));
    assert_eq!(store.count(mqtt_core::storage::Table::Sessions), 2);

    // The crash: the old broker is never told. The new one starts ten seconds later.
    drop((sub, publisher));
    let later = t0 + secs(10);
    let (broker, recovered) = restarted(&store, t0, later);
    assert_eq!((recovered.sessions, recovered.messages), (2, 4));

    // The publisher resends its unreleased QoS 2 PUBLISH: acknowledged, not routed again.
    let (mut publisher, connack) = Client::connect_with(&broker, persistent_v5("pub", 3600), later);
    assert!(connack.session_present);
    let mut dup = publish("t/5", b"once", QoS::ExactlyOnce, 5);
    dup.dup = true;
    publisher.send(Packet::Publish(dup), later);
    assert!(matches!(publisher.receive().as_slice(), [Packet::PubRec(rec)] if rec.packet_id == 5));
    publisher.send(Packet::PubRel(ack(5)), later);
    assert!(
        matches!(publisher.receive().as_slice(), [Packet::PubComp(comp)] if comp.packet_id == 5 && comp.reason_code == ReasonCode::SUCCESS),
        "the packet id awaiting release came back"
    );

    // The subscriber gets, in order: the unacknowledged QoS 1 again (DUP, same packet id),
    // PUBREL for the QoS 2 it had received, then what was queued while it was away.
    let (mut sub, connack) = Client::connect_with(&broker, persistent_v5("sub", 3600), later);
    assert!(connack.session_present);
    sub.wake(later);
    let packets = sub.receive();
    let summary: Vec<String> = packets
        .iter()
        .map(|packet| match packet {
            Packet::Publish(p) => format!(
                "{} {} dup={} id={}",
                p.topic,
                String::from_utf8_lossy(&p.payload),
                p.dup,
                p.packet_id == sent[1].packet_id
            ),
            Packet::PubRel(rel) => format!("PUBREL {}", rel.packet_id == sent[2].packet_id),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "t/2 unacked dup=true id=true",
            "PUBREL true",
            "t/4 queued dup=false id=false",
            "t/5 once dup=false id=false",
        ]
    );
    // The subscription came back with its options: still No Local, still identifier 7.
    let Packet::Publish(queued) = &packets[2] else {
        panic!("the third packet is the queued PUBLISH")
    };
    assert_eq!(queued.properties.subscription_identifiers, vec![7]);
    sub.publish("t/own", b"mine", QoS::AtLeastOnce, 9, later);
    assert!(sub.publishes(later).is_empty(), "No Local came back");
    publisher.publish("t/6", b"live", QoS::AtLeastOnce, 6, later);
    assert_eq!(sub.publishes(later).len(), 1);
}

#[test]
fn sessions_that_expired_while_the_broker_was_down_are_gone_and_their_wills_sent() {
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let (broker, _) = restarted(&store, t0, t0);
    let (mut watcher, _) = Client::connect_with(&broker, persistent_v5("watcher", 3600), t0);
    watcher.subscribe("wills/#", QoS::AtLeastOnce, t0);
    let mut short = persistent_v5("short", 5);
    short.will = Some(will("wills/short", Some(60)));
    let (mut short, _) = Client::connect_with(&broker, short, t0);
    short.subscribe("x", QoS::AtLeastOnce, t0);
    let mut delayed = persistent_v5("delayed", 3600);
    delayed.will = Some(will("wills/delayed", Some(30)));
    let (mut delayed, _) = Client::connect_with(&broker, delayed, t0);
    short.close(t0);
    delayed.close(t0);
    watcher.close(t0);
    drop((short, delayed, watcher));

    // Down for 10 s: "short" (5 s) has expired, and its will goes out at the restart;
    // "delayed" is still there, its will 20 s away.
    let later = t0 + secs(10);
    let (broker, recovered) = restarted(&store, t0, later);
    assert_eq!(recovered.sessions, 2);
    let (mut watcher, connack) =
        Client::connect_with(&broker, persistent_v5("watcher", 3600), later);
    assert!(connack.session_present);
    let topics: Vec<_> = watcher
        .publishes(later)
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(topics, vec!["wills/short"]);
    let (_, connack) = Client::connect_with(&broker, persistent_v5("short", 5), later);
    assert!(!connack.session_present, "the expired session is gone");

    broker.handle_timeouts(t0 + secs(31));
    let topics: Vec<_> = watcher
        .publishes(t0 + secs(31))
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(
        topics,
        vec!["wills/delayed"],
        "the will delay counts across the downtime"
    );
}

#[test]
fn a_clean_session_is_never_stored_and_an_ended_one_is_forgotten() {
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let (broker, _) = restarted(&store, t0, t0);
    let mut clean = Client::connect(&broker, "clean", t0);
    clean.subscribe("t", QoS::AtLeastOnce, t0);
    let (mut kept, _) = Client::connect_with(&broker, persistent_v5("kept", 3600), t0);
    kept.subscribe("t", QoS::AtLeastOnce, t0);
    kept.close(t0);
    clean.publish("t", b"x", QoS::AtLeastOnce, 1, t0);
    use mqtt_core::storage::Table;
    assert_eq!(store.count(Table::Sessions), 1);
    assert_eq!(store.count(Table::Queues), 1);
    // A clean start ends the stored session, queue and all.
    let _fresh = Client::connect(&broker, "kept", t0);
    for table in Table::ALL.into_iter().filter(|t| *t != Table::Retained) {
        assert_eq!(store.count(table), 0, "{}", table.name());
    }
}

fn broker_with_users(users: &[(&str, &str)], now: Instant) -> Arc<Broker> {
    use mqtt_core::auth::{AllowAll, PasswordAuthenticator};
    let auth = Auth {
        authenticator: Arc::new(PasswordAuthenticator::new(
            Some(testing::password_file(users)),
            false,
        )),
        authorizer: Arc::new(AllowAll),
    };
    testing::broker_with_auth(auth, now)
}

fn as_user(connect: Connect, user: &str, password: &str) -> Connect {
    Connect {
        username: Some(user.to_owned()),
        password: Some(Bytes::from(password.to_owned())),
        ..connect
    }
}

#[test]
fn another_user_can_neither_resume_nor_take_over_a_session() {
    let t0 = Instant::now();
    let broker = broker_with_users(&[("alice", "a-secret"), ("bob", "b-secret")], t0);
    let (mut alice, connack) = Client::connect_with(
        &broker,
        as_user(persistent_v5("phone", 3600), "alice", "a-secret"),
        t0,
    );
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
    alice.subscribe("inbox/#", QoS::AtLeastOnce, t0);
    alice.close(t0);
    let mut sender =
        Client::connect_with(&broker, as_user(connect_v5("s"), "bob", "b-secret"), t0).0;
    sender.publish("inbox/1", b"for alice", QoS::AtLeastOnce, 1, t0);

    for connect in [
        persistent_v5("phone", 3600),
        connect_v5("phone"),
        Connect {
            protocol: ProtocolVersion::V3_1_1,
            ..persistent_v5("phone", 0)
        },
    ] {
        let version = connect.protocol;
        let (mut thief, connack) =
            Client::connect_with(&broker, as_user(connect, "bob", "b-secret"), t0);
        // 3.1.1's return code 5 decodes as 0x87 too.
        assert_eq!(
            connack.reason_code,
            ReasonCode::NOT_AUTHORIZED,
            "{version:?}"
        );
        assert!(!connack.session_present);
        assert!(thief.closed && thief.publishes(t0).is_empty());
    }

    let (mut alice, connack) = Client::connect_with(
        &broker,
        as_user(persistent_v5("phone", 3600), "alice", "a-secret"),
        t0,
    );
    assert!(connack.session_present, "the owner's session is intact");
    let delivered = alice.publishes(t0);
    assert_eq!(delivered.len(), 1, "with the message queued for it");
    assert_eq!(&delivered[0].payload[..], b"for alice");
}

#[test]
fn clients_cannot_publish_to_sys_topics() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("$SYS/#", QoS::AtLeastOnce, t0);
    let mut forger = Client::connect(&broker, "forger", t0);
    for topic in ["$SYS/broker/uptime", "$SYS"] {
        let acks = forger.publish(topic, b"forged", QoS::AtLeastOnce, 1, t0);
        assert!(
            matches!(acks.as_slice(), [Packet::PubAck(a)] if a.reason_code == ReasonCode::NOT_AUTHORIZED),
            "{topic}: {acks:?}"
        );
    }
    forger.publish("$SYS/broker/uptime", b"forged", QoS::AtMostOnce, 0, t0);
    assert!(watcher.publishes(t0).is_empty());
}

#[test]
fn mountpoint_values_holding_wildcards_or_separators_are_refused() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let connect_under = |client_id: &str| {
        let mut client = Client::new(&broker, ProtocolVersion::V5, t0);
        client.channel = MqttChannel::new(
            broker.clone(),
            ConnectionInfo {
                listener: Arc::from("tcp:test"),
                peer: None,
                handshake_timeout: Duration::from_secs(10),
                certificate_identity: Default::default(),
                mountpoint: Arc::from("t/${clientid}/"),
                rates: PublishRates::UNLIMITED,
            },
            client.wakeup.clone(),
            t0,
        );
        client.send(Packet::Connect(Box::new(connect_v5(client_id))), t0);
        match client.take_first() {
            Some(Packet::ConnAck(connack)) => (client, connack.reason_code),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    };
    let (mut alice, accepted) = connect_under("alice");
    assert_eq!(accepted, ReasonCode::SUCCESS);
    alice.subscribe("private", QoS::AtMostOnce, t0);
    for hostile in ["+", "#", "alice/private", "${username}"] {
        let (client, refused) = connect_under(hostile);
        assert_eq!(
            refused,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "{hostile}"
        );
        assert!(client.closed);
    }
    let (mut other, _) = connect_under("mallory");
    other.publish("private", b"mine", QoS::AtMostOnce, 0, t0);
    assert!(
        alice.publishes(t0).is_empty(),
        "mallory/private is not alice/private"
    );
}

#[test]
fn a_subscription_of_a_persistent_session_writes_only_itself() {
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = broker_on_store(store.clone(), t0);
    let mut client = Client::connect_with(&broker, persistent_v5("many", 3600), t0).0;
    let mut cost = Vec::new();
    for i in 0..1000 {
        let before = store.written_bytes();
        client.subscribe(&format!("sensors/{i}/+"), QoS::AtLeastOnce, t0);
        cost.push(store.written_bytes() - before);
    }
    assert!(
        cost.iter().all(|bytes| *bytes < 64),
        "each subscription writes its own entry only: {:?}",
        &cost[990..]
    );
    assert_eq!(store.count(mqtt_core::storage::Table::Subscriptions), 1000);
    client.close(t0);
    let restarted = broker_on_store(store.clone(), t0);
    restarted.recover(t0).expect("recovers");
    let session = restarted.session(&key("many")).expect("restored");
    assert_eq!(session.state.lock().subscriptions.len(), 1000);
}

#[test]
fn session_expiry_is_capped_and_the_client_told_what_it_got() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let cap = broker.max_session_expiry();
    assert_eq!(cap, 86_400, "the shipped default is one day");
    let (mut client, connack) = Client::connect_with(&broker, persistent_v5("long", u32::MAX), t0);
    assert_eq!(connack.properties.session_expiry_interval, Some(cap));
    client.close(t0);
    let just_before = t0 + secs(u64::from(cap) - 1);
    broker.handle_timeouts(just_before);
    assert!(broker.session(&key("long")).is_some());
    broker.handle_timeouts(t0 + secs(u64::from(cap)));
    assert!(
        broker.session(&key("long")).is_none(),
        "gone after the cap, not never"
    );

    let (_, connack) = Client::connect_with(&broker, persistent_v5("short", 60), t0);
    assert_eq!(
        connack.properties.session_expiry_interval, None,
        "a request within the cap is granted as asked"
    );
}

/// A client of a listener whose clients may publish `messages` and `bytes` per period,
/// connected with `keep_alive` seconds.
fn connect_limited(
    broker: &Arc<Broker>,
    client_id: &str,
    messages: &str,
    bytes: &str,
    keep_alive: u16,
    now: Instant,
) -> Client {
    let mut client = Client::new(broker, ProtocolVersion::V5, now);
    client.channel = MqttChannel::new(
        broker.clone(),
        ConnectionInfo {
            listener: Arc::from("tcp:test"),
            peer: None,
            handshake_timeout: Duration::from_secs(10),
            certificate_identity: Default::default(),
            mountpoint: Arc::from(""),
            rates: PublishRates::new(
                messages.parse().expect("a rate"),
                bytes.parse().expect("a byte rate"),
            ),
        },
        client.wakeup.clone(),
        now,
    );
    let connect = Connect {
        keep_alive,
        ..connect_v5(client_id)
    };
    client.send(Packet::Connect(Box::new(connect)), now);
    assert!(matches!(client.take_first(), Some(Packet::ConnAck(_))));
    client
}

fn acked(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::PubAck(ack) => Some(ack.packet_id),
            _ => None,
        })
        .collect()
}

#[test]
fn over_its_messages_rate_a_client_parks_publishes_until_its_bucket_refills() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    let mut publisher = connect_limited(&broker, "pub", "10/s", "infinity", 0, t0);
    let mut answers = Vec::new();
    for packet_id in 1..=11 {
        answers.extend(publisher.publish("t", b"m", QoS::AtLeastOnce, packet_id, t0));
    }
    assert_eq!(
        acked(&answers),
        (1..=10).collect::<Vec<u16>>(),
        "the 11th is parked: not routed, not acknowledged"
    );
    assert_eq!(sub.publishes(t0).len(), 10);
    assert!(
        publisher.channel.accepts_input(),
        "one message fits the parking"
    );

    // The pause ends by time, not by a wake-up: it is the channel's deadline.
    let resume = publisher.channel.next_deadline().expect("the pause's end");
    assert!(resume > t0 && resume <= t0 + Duration::from_millis(101));
    publisher.wake(resume - Duration::from_millis(1));
    publisher.tick(resume - Duration::from_millis(1));
    assert!(
        acked(&publisher.receive()).is_empty(),
        "not before its time"
    );
    publisher.tick(resume);
    assert_eq!(acked(&publisher.receive()), vec![11]);
    assert_eq!(sub.publishes(resume).len(), 1);
    assert_eq!(broker.stats.rate_limited.load(Ordering::SeqCst), 2);

    // A second later the bucket is full again: ten go through at once.
    let later = t0 + secs(2);
    publisher.tick(later);
    assert_eq!(publisher.channel.next_deadline(), None, "no pause is left");
    let mut answers = Vec::new();
    for packet_id in 12..=21 {
        answers.extend(publisher.publish("t", b"m", QoS::AtLeastOnce, packet_id, later));
    }
    assert_eq!(acked(&answers).len(), 10);
}

#[test]
fn over_its_bytes_rate_large_publishes_wait_until_the_debt_is_paid() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    let mut publisher = connect_limited(&broker, "pub", "infinity", "10KB/s", 0, t0);
    static FOUR_KIB: [u8; 4096] = [b'b'; 4096];
    let mut answers = Vec::new();
    for packet_id in 1..=5 {
        answers.extend(publisher.publish("t", &FOUR_KIB, QoS::AtLeastOnce, packet_id, t0));
    }
    // 10 KiB pay for two and a half: the third goes through into debt, the rest waits.
    assert_eq!(acked(&answers), vec![1, 2, 3]);
    assert_eq!(sub.publishes(t0).len(), 3);
    let resume = publisher.channel.next_deadline().expect("the pause's end");
    // 3 x 4097 bytes less 10240 leave 2051 bytes owed, paid at 10240 a second.
    let owed = Duration::from_secs_f64(2051.0 / 10240.0);
    assert!(resume >= t0 + owed && resume <= t0 + owed + Duration::from_millis(1));
    publisher.tick(resume);
    assert_eq!(
        acked(&publisher.receive()),
        vec![4],
        "one more goes into debt"
    );
    publisher.tick(t0 + secs(2));
    assert_eq!(acked(&publisher.receive()), vec![5]);
    assert_eq!(sub.publishes(t0 + secs(2)).len(), 2);
}

#[test]
fn a_client_over_its_rate_stops_being_read_once_its_parking_is_full_and_keeps_its_keep_alive() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut sub = Client::connect(&broker, "sub", t0);
    sub.subscribe("t", QoS::AtLeastOnce, t0);
    let mut publisher = connect_limited(&broker, "pub", "infinity", "2KB/s", 10, t0);
    static BIG: [u8; 64 * 1024] = [b'p'; 64 * 1024];
    // Four 64 KiB messages arrive in one read: the first goes through, 62 KiB into debt
    // (31 s at 2 KiB a second); the second fills the parking; the rest is not read.
    let mut input = qos1_publishes_in_one_read("t", &BIG, 1..=4);
    publisher
        .channel
        .handle_input(&mut input, &mut publisher.out, t0);
    assert!(!publisher.channel.accepts_input());
    assert!(input.len() > 2 * BIG.len(), "two stay unread");
    let mut acknowledged = acked(&publisher.receive());
    assert_eq!(acknowledged, vec![1]);

    // What a driver does: at each deadline a timeout, then the buffered input once the
    // channel takes it again. The client pings every 10 s, as its keep-alive (15 s for
    // us) asks, but its pings queue behind what it sent before: the silence until they
    // are read is the channel's, not the client's.
    let mut now = t0;
    let mut pinged = t0;
    while acknowledged.len() < 4 {
        now = publisher
            .channel
            .next_deadline()
            .expect("a pause to wait out");
        if now >= pinged + secs(10) {
            encode(&Packet::PingReq, ProtocolVersion::V5, &mut input).unwrap();
            pinged = now;
        }
        assert_eq!(publisher.tick(now), Flow::Continue, "at {:?}", now - t0);
        if publisher.channel.accepts_input() {
            publisher
                .channel
                .handle_input(&mut input, &mut publisher.out, now);
        }
        acknowledged.extend(acked(&publisher.receive()));
        while !sub.publishes(now).is_empty() {}
    }
    assert_eq!(acknowledged, vec![1, 2, 3, 4], "in order");
    // Each message past the first waits out the 32 s the one before it owes.
    assert!(
        now >= t0 + secs(95) && now < t0 + secs(97),
        "{:?}",
        now - t0
    );
}

#[test]
fn rate_limited_pauses_are_counted_under_sys() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let mut publisher = connect_limited(&broker, "pub", "2/s", "infinity", 0, t0);
    for _ in 0..3 {
        publisher.publish("t", b"m", QoS::AtMostOnce, 0, t0);
    }
    let mut watcher = Client::connect(&broker, "watcher", t0);
    watcher.subscribe("$SYS/broker/clients/rate_limited", QoS::AtMostOnce, t0);
    mqtt_core::sys::publish_sys(&broker, t0);
    let figures = watcher.publishes(t0);
    assert_eq!(figures.len(), 1);
    assert_eq!(
        &figures[0].payload[..],
        b"1",
        "one pause, however many waited"
    );
}
