//! The MQTT-SN channel and the broker driven message by message on a virtual clock: no
//! socket, no sleeping. An "observer" MQTT session on the same broker plays the MQTT side.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_mqtt_sn::codec::*;
use adapter_mqtt_sn::topics::{Predefined, FIRST_NORMAL_ID};
use adapter_mqtt_sn::{MqttSnChannel, Settings, MQTTSN_NAMESPACE};
use bytes::Bytes;
use bytestring::ByteString;
use mqtt_core::auth::{
    Action, Auth, AuthOutcome, Authenticator, Authorizer, ClientInfo, DenyReason,
};
use mqtt_core::broker::Broker;
use mqtt_core::client::ClientSession;
use mqtt_core::codec::QoS;
use mqtt_core::protocol::Flow;
use mqtt_core::rate::PublishRates;
use mqtt_core::session::SessionKey;
use mqtt_core::storage::{MapStore, Store as _};
use mqtt_core::testing::{self, broker, recovered_broker, CountingWakeup};

fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        listener: Arc::from("udp:test"),
        gateway_id: 7,
        enable_qos3: true,
        mountpoint: String::new(),
        clientinfo_override: testing::default_config().gateway.mqttsn.clientinfo_override,
        idle_timeout: Duration::from_secs(30),
        max_idle_without_keepalive: Duration::from_secs(120),
        retry_interval: Duration::from_secs(10),
        max_retries: 3,
        max_registered_topics: 100,
        predefined: Predefined::new([(1, "pre/one".to_owned())]),
        subs_resume: false,
        rates: PublishRates::UNLIMITED,
    })
}

struct Sn {
    channel: MqttSnChannel,
    out: Vec<Bytes>,
    closed: bool,
    wakeup: Arc<CountingWakeup>,
}

impl Sn {
    fn new(broker: &Arc<Broker>, now: Instant) -> Sn {
        Sn::with_settings(broker, settings(), now)
    }

    fn with_settings(broker: &Arc<Broker>, settings: Arc<Settings>, now: Instant) -> Sn {
        Sn::at(broker, settings, None, now)
    }

    fn at(
        broker: &Arc<Broker>,
        settings: Arc<Settings>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Sn {
        let wakeup = Arc::new(CountingWakeup::default());
        Sn {
            channel: MqttSnChannel::new(broker.clone(), settings, peer, wakeup.clone(), now),
            out: Vec::new(),
            closed: false,
            wakeup,
        }
    }

    fn note(&mut self, flow: Flow, now: Instant) {
        if flow == Flow::Close && !self.closed {
            self.closed = true;
            self.channel.handle_closed(now);
        }
    }

    fn send(&mut self, message: Message, now: Instant) -> Vec<Message> {
        let flow = self
            .channel
            .handle_datagram(to_datagram(&message).unwrap(), &mut self.out, now);
        self.note(flow, now);
        self.take()
    }

    fn wake(&mut self, now: Instant) -> Vec<Message> {
        let flow = self.channel.handle_wakeup(&mut self.out, now);
        self.note(flow, now);
        self.take()
    }

    fn tick(&mut self, now: Instant) -> Vec<Message> {
        let flow = self.channel.handle_timeout(&mut self.out, now);
        self.note(flow, now);
        self.take()
    }

    fn take(&mut self) -> Vec<Message> {
        self.out.drain(..).map(|d| decode(&d).unwrap()).collect()
    }

    fn connect(broker: &Arc<Broker>, client_id: &str, clean: bool, now: Instant) -> Sn {
        let mut sn = Sn::new(broker, now);
        let replies = sn.send(connect_message(client_id, clean, false, 30), now);
        assert_eq!(
            replies,
            vec![Message::ConnAck {
                return_code: ReturnCode::ACCEPTED
            }]
        );
        sn
    }

    fn subscribe(&mut self, filter: &str, qos: Qos, now: Instant) -> u16 {
        let replies = self.send(
            Message::Subscribe {
                flags: Flags {
                    qos,
                    ..Flags::default()
                },
                msg_id: 77,
                topic: TopicRef::Name(ByteString::from(filter)),
            },
            now,
        );
        match replies.as_slice() {
            [Message::SubAck {
                topic_id,
                msg_id: 77,
                return_code: ReturnCode::ACCEPTED,
                ..
            }] => *topic_id,
            other => panic!("SUBSCRIBE {filter}: {other:?}"),
        }
    }
}

fn connect_message(client_id: &str, clean: bool, will: bool, keep_alive: u16) -> Message {
    Message::Connect {
        flags: Flags {
            clean_session: clean,
            will,
            ..Flags::default()
        },
        protocol_id: PROTOCOL_ID,
        duration: keep_alive,
        client_id: ByteString::from(client_id),
    }
}

/// An MQTT session on the same broker, subscribed to `filter`.
fn observer(broker: &Arc<Broker>, filter: &str, now: Instant) -> ClientSession {
    testing::subscriber(broker, "observer", filter, QoS::ExactlyOnce, 0, now)
}

fn received(observer: &ClientSession, now: Instant) -> Vec<(String, Bytes)> {
    let mut state = observer.session().state.lock();
    std::iter::from_fn(|| state.pop_queued(now))
        .map(|d| (d.message.topic.to_string(), d.message.payload.clone()))
        .collect()
}

fn publish(
    topic_id: u16,
    kind: TopicIdType,
    qos: Qos,
    msg_id: u16,
    data: &'static [u8],
) -> Message {
    Message::Publish {
        flags: Flags {
            qos,
            topic_id_type: kind,
            ..Flags::default()
        },
        topic_id,
        msg_id,
        data: Bytes::from_static(data),
    }
}

#[test]
fn register_then_publish_every_qos_reaches_mqtt() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "#", now);
    let mut sn = Sn::connect(&broker, "dev1", true, now);
    let replies = sn.send(
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: ByteString::from("a/b"),
        },
        now,
    );
    assert_eq!(
        replies,
        vec![Message::RegAck {
            topic_id: FIRST_NORMAL_ID,
            msg_id: 1,
            return_code: ReturnCode::ACCEPTED
        }]
    );
    let id = FIRST_NORMAL_ID;
    assert!(sn
        .send(publish(id, TopicIdType::Normal, Qos::Zero, 0, b"q0"), now)
        .is_empty());
    assert_eq!(
        sn.send(publish(id, TopicIdType::Normal, Qos::One, 2, b"q1"), now),
        vec![Message::PubAck {
            topic_id: id,
            msg_id: 2,
            return_code: ReturnCode::ACCEPTED
        }]
    );
    assert_eq!(
        sn.send(publish(id, TopicIdType::Normal, Qos::Two, 3, b"q2"), now),
        vec![Message::PubRec { msg_id: 3 }]
    );
    // A PUBLISH sent again before PUBREL is acknowledged again and routed once.
    assert_eq!(
        sn.send(publish(id, TopicIdType::Normal, Qos::Two, 3, b"q2"), now),
        vec![Message::PubRec { msg_id: 3 }]
    );
    assert_eq!(
        sn.send(Message::PubRel { msg_id: 3 }, now),
        vec![Message::PubComp { msg_id: 3 }]
    );
    // Predefined and short topic ids need no registration.
    assert!(sn
        .send(
            publish(1, TopicIdType::Predefined, Qos::Zero, 0, b"pre"),
            now
        )
        .is_empty());
    assert!(sn
        .send(
            publish(0x7a7a, TopicIdType::Short, Qos::Zero, 0, b"short"),
            now
        )
        .is_empty());
    assert_eq!(
        received(&obs, now),
        vec![
            ("a/b".into(), Bytes::from_static(b"q0")),
            ("a/b".into(), Bytes::from_static(b"q1")),
            ("a/b".into(), Bytes::from_static(b"q2")),
            ("pre/one".into(), Bytes::from_static(b"pre")),
            ("zz".into(), Bytes::from_static(b"short")),
        ]
    );
}

#[test]
fn return_codes_follow_the_spec() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::connect(&broker, "dev2", true, now);
    // Unknown normal and predefined ids: rejected, invalid topic id.
    for (id, kind) in [(4321, TopicIdType::Normal), (99, TopicIdType::Predefined)] {
        assert_eq!(
            sn.send(publish(id, kind, Qos::One, 5, b"x"), now),
            vec![Message::PubAck {
                topic_id: id,
                msg_id: 5,
                return_code: ReturnCode::INVALID_TOPIC_ID
            }]
        );
    }
    // QoS 0 to an unknown id is answered too (spec 6.5).
    assert_eq!(
        sn.send(publish(4321, TopicIdType::Normal, Qos::Zero, 0, b"x"), now),
        vec![Message::PubAck {
            topic_id: 4321,
            msg_id: 0,
            return_code: ReturnCode::INVALID_TOPIC_ID
        }]
    );
    // A wildcard in REGISTER is not supported.
    assert_eq!(
        sn.send(
            Message::Register {
                topic_id: 0,
                msg_id: 6,
                topic_name: ByteString::from("a/+")
            },
            now
        ),
        vec![Message::RegAck {
            topic_id: 0,
            msg_id: 6,
            return_code: ReturnCode::NOT_SUPPORTED
        }]
    );
    // REGISTER of a predefined name answers with the predefined id.
    assert_eq!(
        sn.send(
            Message::Register {
                topic_id: 0,
                msg_id: 7,
                topic_name: ByteString::from("pre/one")
            },
            now
        ),
        vec![Message::RegAck {
            topic_id: 1,
            msg_id: 7,
            return_code: ReturnCode::ACCEPTED
        }]
    );
    let sub = |kind, topic| Message::Subscribe {
        flags: Flags {
            topic_id_type: kind,
            ..Flags::default()
        },
        msg_id: 8,
        topic,
    };
    assert!(matches!(
        sn.send(sub(TopicIdType::Predefined, TopicRef::Id(99)), now)
            .as_slice(),
        [Message::SubAck {
            return_code: ReturnCode::INVALID_TOPIC_ID,
            topic_id: 99,
            ..
        }]
    ));
    assert!(matches!(
        sn.send(sub(TopicIdType::Reserved, TopicRef::Id(1)), now)
            .as_slice(),
        [Message::SubAck {
            return_code: ReturnCode::NOT_SUPPORTED,
            ..
        }]
    ));
    assert!(matches!(
        sn.send(sub(TopicIdType::Predefined, TopicRef::Id(1)), now)
            .as_slice(),
        [Message::SubAck {
            return_code: ReturnCode::ACCEPTED,
            topic_id: 1,
            ..
        }]
    ));
    // A wildcard subscription has no topic id.
    assert_eq!(sn.subscribe("w/#", Qos::One, now), 0);
    // A name subscription registers the name: the same id as REGISTER gives.
    let id = sn.subscribe("n/1", Qos::One, now);
    assert_eq!(
        sn.send(
            Message::Register {
                topic_id: 0,
                msg_id: 9,
                topic_name: ByteString::from("n/1")
            },
            now
        ),
        vec![Message::RegAck {
            topic_id: id,
            msg_id: 9,
            return_code: ReturnCode::ACCEPTED
        }]
    );
    // UNSUBSCRIBE is always answered.
    assert_eq!(
        sn.send(
            Message::Unsubscribe {
                flags: Flags::default(),
                msg_id: 10,
                topic: TopicRef::Name(ByteString::from("never/subscribed"))
            },
            now
        ),
        vec![Message::UnsubAck { msg_id: 10 }]
    );
    assert_eq!(
        sn.send(Message::PingReq { client_id: None }, now),
        vec![Message::PingResp]
    );
    assert_eq!(
        sn.send(Message::SearchGw { radius: 0 }, now),
        vec![Message::GwInfo {
            gw_id: 7,
            gw_add: Bytes::new()
        }]
    );
}

#[test]
fn gateway_registers_a_new_topic_and_holds_the_message_until_regack() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::connect(&broker, "dev3", true, now);
    assert_eq!(sn.subscribe("x/#", Qos::One, now), 0);
    // QoS 0 included: held, not lost.
    testing::publish(&broker, "x/long/topic", b"first", QoS::AtMostOnce, now);
    let replies = sn.wake(now);
    let (topic_id, msg_id) = match replies.as_slice() {
        [Message::Register {
            topic_id,
            msg_id,
            topic_name,
        }] => {
            assert_eq!(topic_name, "x/long/topic");
            (*topic_id, *msg_id)
        }
        other => panic!("expected REGISTER alone, got {other:?}"),
    };
    // Another message meanwhile waits behind it.
    testing::publish(&broker, "x/long/topic", b"second", QoS::AtLeastOnce, now);
    assert!(sn.wake(now).is_empty());
    let replies = sn.send(
        Message::RegAck {
            topic_id,
            msg_id,
            return_code: ReturnCode::ACCEPTED,
        },
        now,
    );
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(
        replies[0],
        publish(topic_id, TopicIdType::Normal, Qos::Zero, 0, b"first")
    );
    let Message::Publish {
        flags,
        topic_id: second_id,
        msg_id,
        data,
    } = &replies[1]
    else {
        panic!("{replies:?}")
    };
    assert_eq!(
        (flags.qos, *second_id, &data[..]),
        (Qos::One, topic_id, &b"second"[..])
    );
    assert!(sn
        .send(
            Message::PubAck {
                topic_id,
                msg_id: *msg_id,
                return_code: ReturnCode::ACCEPTED
            },
            now
        )
        .is_empty());
    // Short and predefined topics go out without registration.
    sn.subscribe("pre/one", Qos::Zero, now);
    testing::publish(&broker, "x/", b"short", QoS::AtMostOnce, now);
    testing::publish(&broker, "pre/one", b"pre", QoS::AtMostOnce, now);
    assert_eq!(
        sn.wake(now),
        vec![
            publish(
                short_topic_id("x/").unwrap(),
                TopicIdType::Short,
                Qos::Zero,
                0,
                b"short"
            ),
            publish(1, TopicIdType::Predefined, Qos::Zero, 0, b"pre"),
        ]
    );
}

#[test]
fn a_delivery_refused_for_an_unknown_topic_id_is_registered_again_and_resent() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::connect(&broker, "dev-forgets", true, now);
    let mut topic_id = sn.subscribe("kept/topic", Qos::Two, now);
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        testing::publish(&broker, "kept/topic", b"not lost", qos, now);
        let Message::Publish { msg_id, .. } = sn.wake(now)[0].clone() else {
            panic!()
        };
        // The client restarted and lost its ids.
        let replies = sn.send(
            Message::PubAck {
                topic_id,
                msg_id,
                return_code: ReturnCode::INVALID_TOPIC_ID,
            },
            now,
        );
        let [Message::Register {
            topic_id: new_id,
            msg_id: register_id,
            topic_name,
        }] = replies.as_slice()
        else {
            panic!("expected REGISTER, got {replies:?}")
        };
        assert_eq!(topic_name, "kept/topic");
        let replies = sn.send(
            Message::RegAck {
                topic_id: *new_id,
                msg_id: *register_id,
                return_code: ReturnCode::ACCEPTED,
            },
            now,
        );
        let [Message::Publish {
            topic_id: sent_id,
            msg_id,
            data,
            flags,
        }] = replies.as_slice()
        else {
            panic!("expected the PUBLISH again, got {replies:?}")
        };
        assert_eq!((*sent_id, &data[..]), (*new_id, &b"not lost"[..]));
        match qos {
            QoS::AtLeastOnce => {
                assert_eq!(flags.qos, Qos::One);
                assert!(sn
                    .send(
                        Message::PubAck {
                            topic_id: *new_id,
                            msg_id: *msg_id,
                            return_code: ReturnCode::ACCEPTED
                        },
                        now
                    )
                    .is_empty());
            }
            _ => {
                assert_eq!(flags.qos, Qos::Two);
                let msg_id = *msg_id;
                assert_eq!(
                    sn.send(Message::PubRec { msg_id }, now),
                    vec![Message::PubRel { msg_id }]
                );
                assert!(sn.send(Message::PubComp { msg_id }, now).is_empty());
            }
        }
        // The topic's id is the new one from now on.
        topic_id = *new_id;
    }
    assert_eq!(sn.tick(now + Duration::from_secs(30)), vec![]);
}

#[test]
fn qos2_to_the_client_walks_pubrec_pubrel_pubcomp() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::connect(&broker, "dev4", true, now);
    let id = sn.subscribe("q/2", Qos::Two, now);
    testing::publish(&broker, "q/2", b"exactly", QoS::ExactlyOnce, now);
    let Message::Publish { msg_id, flags, .. } = sn.wake(now)[0].clone() else {
        panic!()
    };
    assert_eq!(flags.qos, Qos::Two);
    assert_eq!(
        sn.send(Message::PubRec { msg_id }, now),
        vec![Message::PubRel { msg_id }]
    );
    // PUBREL is what is resent while PUBCOMP is missing.
    assert_eq!(
        sn.tick(now + Duration::from_secs(10)),
        vec![Message::PubRel { msg_id }]
    );
    assert!(sn.send(Message::PubComp { msg_id }, now).is_empty());
    assert_eq!(sn.tick(now + Duration::from_secs(30)), vec![]);
    let _ = id;
}

#[test]
fn unacknowledged_publish_is_resent_then_the_client_is_lost_and_its_will_published() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "will/#", now);
    let mut sn = Sn::new(&broker, now);
    assert_eq!(
        sn.send(connect_message("dev5", true, true, 0), now),
        vec![Message::WillTopicReq]
    );
    let will = WillTopic {
        flags: Flags::default(),
        topic: ByteString::from("will/dev5"),
    };
    assert_eq!(
        sn.send(Message::WillTopic(Some(will)), now),
        vec![Message::WillMsgReq]
    );
    assert_eq!(
        sn.send(
            Message::WillMsg {
                payload: Bytes::from_static(b"gone")
            },
            now
        ),
        vec![Message::ConnAck {
            return_code: ReturnCode::ACCEPTED
        }]
    );
    let topic_id = sn.subscribe("r/1", Qos::One, now);
    testing::publish(&broker, "r/1", b"retry me", QoS::AtLeastOnce, now);
    let first = sn.wake(now);
    let Message::Publish { msg_id, flags, .. } = first[0].clone() else {
        panic!("{first:?}")
    };
    assert!(!flags.dup);
    let mut at = now;
    for _ in 0..3 {
        at += Duration::from_secs(10);
        assert_eq!(sn.channel.next_deadline(), Some(at));
        let again = sn.tick(at);
        assert_eq!(
            again,
            vec![Message::Publish {
                flags: Flags {
                    dup: true,
                    qos: Qos::One,
                    ..Flags::default()
                },
                topic_id,
                msg_id,
                data: Bytes::from_static(b"retry me"),
            }]
        );
    }
    at += Duration::from_secs(10);
    assert_eq!(sn.tick(at), vec![Message::Disconnect { duration: None }]);
    assert!(sn.closed);
    assert_eq!(
        received(&obs, at),
        vec![("will/dev5".into(), Bytes::from_static(b"gone"))]
    );
}

#[test]
fn a_client_without_keep_alive_is_forgotten_after_the_idle_bound() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::new(&broker, now);
    assert_eq!(
        sn.send(connect_message("no-keepalive", true, false, 0), now),
        vec![Message::ConnAck {
            return_code: ReturnCode::ACCEPTED
        }]
    );
    // Duration 0 asks for no keep-alive, yet the peer is not kept for ever.
    let bound = now + Duration::from_secs(120);
    assert_eq!(sn.channel.next_deadline(), Some(bound));
    assert!(sn.tick(bound - Duration::from_secs(1)).is_empty());
    assert!(!sn.closed);
    // A message from the client restarts the count.
    sn.send(
        Message::PingReq { client_id: None },
        now + Duration::from_secs(60),
    );
    assert!(sn.tick(bound).is_empty());
    assert!(!sn.closed);
    assert_eq!(
        sn.tick(bound + Duration::from_secs(60)),
        vec![Message::Disconnect { duration: None }]
    );
    assert!(sn.closed, "the peer is forgotten");
}

#[test]
fn keep_alive_timeout_publishes_the_will_but_disconnect_does_not() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "will/#", now);
    for clean_disconnect in [false, true] {
        let mut sn = Sn::new(&broker, now);
        assert_eq!(
            sn.send(connect_message("dev6", true, true, 10), now),
            vec![Message::WillTopicReq]
        );
        sn.send(
            Message::WillTopic(Some(WillTopic {
                flags: Flags::default(),
                topic: ByteString::from("will/dev6"),
            })),
            now,
        );
        sn.send(
            Message::WillMsg {
                payload: Bytes::from_static(b"w"),
            },
            now,
        );
        // Will updates: topic changed, message changed.
        assert_eq!(
            sn.send(
                Message::WillTopicUpd(Some(WillTopic {
                    flags: Flags::default(),
                    topic: ByteString::from("will/six")
                })),
                now
            ),
            vec![Message::WillTopicResp {
                return_code: ReturnCode::ACCEPTED
            }]
        );
        assert_eq!(
            sn.send(
                Message::WillMsgUpd {
                    payload: Bytes::from_static(b"bye")
                },
                now
            ),
            vec![Message::WillMsgResp {
                return_code: ReturnCode::ACCEPTED
            }]
        );
        if clean_disconnect {
            assert_eq!(
                sn.send(Message::Disconnect { duration: None }, now),
                vec![Message::Disconnect { duration: None }]
            );
            assert!(sn.closed);
        } else {
            // 1.5 times the keep-alive.
            assert_eq!(
                sn.channel.next_deadline(),
                Some(now + Duration::from_secs(15))
            );
            assert!(sn.tick(now + Duration::from_secs(14)).is_empty());
            assert_eq!(
                sn.tick(now + Duration::from_secs(15)),
                vec![Message::Disconnect { duration: None }]
            );
            assert!(sn.closed);
        }
    }
    // Only the lost client's will: the clean DISCONNECT deleted the second.
    assert_eq!(
        received(&obs, now),
        vec![("will/six".into(), Bytes::from_static(b"bye"))]
    );
}

#[test]
fn deleting_the_will_with_an_empty_update() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "will/#", now);
    let mut sn = Sn::new(&broker, now);
    sn.send(connect_message("dev7", true, true, 10), now);
    sn.send(
        Message::WillTopic(Some(WillTopic {
            flags: Flags::default(),
            topic: ByteString::from("will/dev7"),
        })),
        now,
    );
    sn.send(
        Message::WillMsg {
            payload: Bytes::from_static(b"w"),
        },
        now,
    );
    assert_eq!(
        sn.send(Message::WillTopicUpd(None), now),
        vec![Message::WillTopicResp {
            return_code: ReturnCode::ACCEPTED
        }]
    );
    assert_eq!(
        sn.send(
            Message::WillMsgUpd {
                payload: Bytes::from_static(b"x")
            },
            now
        ),
        vec![Message::WillMsgResp {
            return_code: ReturnCode::NOT_SUPPORTED
        }]
    );
    sn.tick(now + Duration::from_secs(15));
    assert!(sn.closed);
    assert!(received(&obs, now).is_empty());
}

#[test]
fn full_sleep_cycle_buffers_delivers_on_ping_then_pingresp_and_times_out() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "will/#", now);
    let mut sn = Sn::new(&broker, now);
    sn.send(connect_message("sleeper", false, true, 30), now);
    sn.send(
        Message::WillTopic(Some(WillTopic {
            flags: Flags::default(),
            topic: ByteString::from("will/sleeper"),
        })),
        now,
    );
    sn.send(
        Message::WillMsg {
            payload: Bytes::from_static(b"zzz"),
        },
        now,
    );
    let topic_id = sn.subscribe("s/1", Qos::One, now);
    assert_eq!(
        sn.send(Message::Disconnect { duration: Some(60) }, now),
        vec![Message::Disconnect { duration: None }]
    );
    assert_eq!(sn.channel.rebindable_identity().as_deref(), Some("sleeper"));
    testing::publish(&broker, "s/1", b"one", QoS::AtLeastOnce, now);
    testing::publish(&broker, "s/1", b"two", QoS::AtMostOnce, now);
    // Asleep: nothing goes out, and keep-alive no longer applies.
    assert!(sn.wake(now).is_empty());
    let t = now + Duration::from_secs(50);
    assert!(sn.tick(t).is_empty());
    // Awake: the buffered messages first, PINGRESP only after the last acknowledgement.
    let replies = sn.send(
        Message::PingReq {
            client_id: Some(ByteString::from("sleeper")),
        },
        t,
    );
    let [Message::Publish { msg_id, data, .. }] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert_eq!(&data[..], b"one");
    let replies = sn.send(
        Message::PubAck {
            topic_id,
            msg_id: *msg_id,
            return_code: ReturnCode::ACCEPTED,
        },
        t,
    );
    assert_eq!(
        replies,
        vec![
            publish(topic_id, TopicIdType::Normal, Qos::Zero, 0, b"two"),
            Message::PingResp
        ]
    );
    // Buffered messages are not replayed on the next wake.
    let t2 = t + Duration::from_secs(30);
    assert_eq!(
        sn.send(
            Message::PingReq {
                client_id: Some(ByteString::from("sleeper"))
            },
            t2
        ),
        vec![Message::PingResp]
    );
    // A PINGREQ naming another client is ignored.
    assert!(sn
        .send(
            Message::PingReq {
                client_id: Some(ByteString::from("other"))
            },
            t2
        )
        .is_empty());
    // Sleep timeout (1.5 times the duration) ends the session and publishes the will.
    let late = t2 + Duration::from_secs(90);
    assert_eq!(sn.channel.next_deadline(), Some(late));
    assert_eq!(sn.tick(late), vec![Message::Disconnect { duration: None }]);
    assert!(sn.closed);
    assert_eq!(
        received(&obs, late),
        vec![("will/sleeper".into(), Bytes::from_static(b"zzz"))]
    );
    assert!(broker
        .session(&SessionKey {
            namespace: MQTTSN_NAMESPACE,
            client_id: Arc::from("sleeper")
        })
        .is_none());
}

#[test]
fn topic_ids_survive_a_reconnect_of_a_persistent_session() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::connect(&broker, "keeper", false, now);
    let replies = sn.send(
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: ByteString::from("k/eep"),
        },
        now,
    );
    let [Message::RegAck { topic_id, .. }] = replies.as_slice() else {
        panic!()
    };
    let topic_id = *topic_id;
    sn.send(Message::Disconnect { duration: None }, now);
    let obs = observer(&broker, "k/#", now);
    let mut again = Sn::connect(&broker, "keeper", false, now);
    assert_eq!(
        again.send(
            publish(topic_id, TopicIdType::Normal, Qos::One, 2, b"same id"),
            now
        ),
        vec![Message::PubAck {
            topic_id,
            msg_id: 2,
            return_code: ReturnCode::ACCEPTED
        }]
    );
    assert_eq!(
        received(&obs, now),
        vec![("k/eep".into(), Bytes::from_static(b"same id"))]
    );
}

#[test]
fn subs_resume_registers_the_subscribed_topic_names_of_a_resumed_session() {
    let now = Instant::now();
    let broker = broker(now);
    let settings = Arc::new(Settings {
        subs_resume: true,
        ..(*settings()).clone()
    });
    let mut sn = Sn::with_settings(&broker, settings.clone(), now);
    assert_eq!(
        sn.send(connect_message("resumer", false, false, 30), now)
            .len(),
        1
    );
    let first_id = sn.subscribe("r/one", Qos::One, now);
    sn.subscribe("r/two", Qos::One, now);
    // Neither a wildcard, a predefined topic nor a short name needs registering.
    sn.subscribe("r/#", Qos::One, now);
    sn.subscribe("pre/one", Qos::One, now);
    sn.subscribe("ab", Qos::One, now);
    sn.send(Message::Disconnect { duration: None }, now);

    let mut again = Sn::with_settings(&broker, settings, now);
    let replies = again.send(connect_message("resumer", false, false, 30), now);
    let [Message::ConnAck { .. }, Message::Register {
        topic_id,
        msg_id,
        topic_name,
    }] = replies.as_slice()
    else {
        panic!("expected CONNACK then REGISTER, got {replies:?}")
    };
    assert_eq!((&**topic_name, *topic_id), ("r/one", first_id));
    let replies = again.send(
        Message::RegAck {
            topic_id: *topic_id,
            msg_id: *msg_id,
            return_code: ReturnCode::ACCEPTED,
        },
        now,
    );
    let [Message::Register {
        topic_name,
        msg_id,
        topic_id,
    }] = replies.as_slice()
    else {
        panic!("expected the second REGISTER, got {replies:?}")
    };
    assert_eq!(&**topic_name, "r/two");
    let done = again.send(
        Message::RegAck {
            topic_id: *topic_id,
            msg_id: *msg_id,
            return_code: ReturnCode::ACCEPTED,
        },
        now,
    );
    assert!(done.is_empty(), "{done:?}");
    // Off (the default), a resumed session gets no REGISTER.
    again.send(Message::Disconnect { duration: None }, now);
    let replies = Sn::new(&broker, now).send(connect_message("resumer", false, false, 30), now);
    assert_eq!(
        replies,
        vec![Message::ConnAck {
            return_code: ReturnCode::ACCEPTED
        }]
    );
}

#[test]
fn qos_minus_one_from_a_client_that_never_connected() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "#", now);
    let mut sn = Sn::new(&broker, now);
    assert!(sn
        .send(
            publish(1, TopicIdType::Predefined, Qos::MinusOne, 0, b"neg"),
            now
        )
        .is_empty());
    assert!(sn.closed);
    let mut short = Sn::new(&broker, now);
    short.send(
        publish(
            short_topic_id("ab").unwrap(),
            TopicIdType::Short,
            Qos::MinusOne,
            0,
            b"neg2",
        ),
        now,
    );
    // Normal ids mean nothing without a session: dropped.
    let mut normal = Sn::new(&broker, now);
    normal.send(
        publish(
            FIRST_NORMAL_ID,
            TopicIdType::Normal,
            Qos::MinusOne,
            0,
            b"lost",
        ),
        now,
    );
    assert_eq!(
        received(&obs, now),
        vec![
            ("pre/one".into(), Bytes::from_static(b"neg")),
            ("ab".into(), Bytes::from_static(b"neg2")),
        ]
    );
    // Turned off, nothing is published.
    let mut off = (*settings()).clone();
    off.enable_qos3 = false;
    let mut sn = Sn::with_settings(&broker, Arc::new(off), now);
    sn.send(
        publish(1, TopicIdType::Predefined, Qos::MinusOne, 0, b"off"),
        now,
    );
    assert!(received(&obs, now).is_empty());
}

#[test]
fn peers_that_never_connect_are_forgotten_and_bad_input_closes_only_that_peer() {
    let now = Instant::now();
    let broker = broker(now);
    let mut idle = Sn::new(&broker, now);
    assert_eq!(
        idle.channel.next_deadline(),
        Some(now + Duration::from_secs(30))
    );
    idle.tick(now + Duration::from_secs(30));
    assert!(idle.closed);
    // A PUBLISH before CONNECT is told to connect.
    let mut early = Sn::new(&broker, now);
    assert_eq!(
        early.send(publish(1, TopicIdType::Predefined, Qos::One, 1, b"x"), now),
        vec![Message::Disconnect { duration: None }]
    );
    // Garbage from a connected client closes it; another client carries on.
    let mut bad = Sn::connect(&broker, "bad", true, now);
    let mut good = Sn::connect(&broker, "good", true, now);
    let flow =
        bad.channel
            .handle_datagram(Bytes::from_static(&[0x05, 0x0C, 0x00]), &mut bad.out, now);
    assert_eq!(flow, Flow::Close);
    assert_eq!(
        good.send(Message::PingReq { client_id: None }, now),
        vec![Message::PingResp]
    );
    // A wrong protocol id is refused.
    let mut wrong = Sn::new(&broker, now);
    let Message::Connect {
        flags,
        duration,
        client_id,
        ..
    } = connect_message("w", true, false, 5)
    else {
        panic!()
    };
    assert_eq!(
        wrong.send(
            Message::Connect {
                flags,
                protocol_id: 2,
                duration,
                client_id
            },
            now
        ),
        vec![Message::ConnAck {
            return_code: ReturnCode::NOT_SUPPORTED
        }]
    );
}

#[test]
fn mountpoint_prefixes_topics_both_ways_with_the_client_id() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "#", now);
    let mut mounted = (*settings()).clone();
    mounted.mountpoint = "sn/${clientid}/".to_owned();
    let mut sn = Sn::with_settings(&broker, Arc::new(mounted), now);
    sn.send(connect_message("m1", true, false, 30), now);
    let id = sn.subscribe("cmd", Qos::One, now);
    assert_ne!(id, 0);
    assert!(sn
        .send(
            publish(0x7570, TopicIdType::Short, Qos::Zero, 0, b"up"),
            now
        )
        .is_empty());
    assert_eq!(
        received(&obs, now),
        vec![("sn/m1/up".into(), Bytes::from_static(b"up"))]
    );
    // A message on the mounted topic reaches the client under its own name's id.
    testing::publish(&broker, "sn/m1/cmd", b"down", QoS::AtLeastOnce, now);
    let replies = sn.wake(now);
    let [Message::Publish { topic_id, data, .. }] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert_eq!((*topic_id, &data[..]), (id, &b"down"[..]));
    // Outside the mountpoint nothing reaches it.
    testing::publish(&broker, "cmd", b"not mine", QoS::AtLeastOnce, now);
    assert!(sn.wake(now).is_empty());
}

#[test]
fn a_delivery_no_frame_can_carry_is_dropped_not_retried_forever() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::connect(&broker, "big", true, now);
    sn.subscribe("b/1", Qos::One, now);
    let huge = vec![1u8; 65_527];
    testing::publish(&broker, "b/1", &huge, QoS::AtLeastOnce, now);
    testing::publish(&broker, "b/1", b"small", QoS::AtLeastOnce, now);
    let replies = sn.wake(now);
    let [Message::Publish { data, .. }] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    assert_eq!(&data[..], b"small");
}

fn retained(topic_id: u16, qos: Qos, msg_id: u16, data: &'static [u8]) -> Message {
    Message::Publish {
        flags: Flags {
            qos,
            retain: true,
            ..Flags::default()
        },
        topic_id,
        msg_id,
        data: Bytes::from_static(data),
    }
}

fn puback(topic_id: u16, msg_id: u16, return_code: ReturnCode) -> Message {
    Message::PubAck {
        topic_id,
        msg_id,
        return_code,
    }
}

#[test]
fn acknowledgements_wait_until_the_message_is_durable_and_keep_their_order() {
    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    store.hold_back();
    let broker = recovered_broker(store.clone(), now);
    let mut sn = Sn::connect(&broker, "durable", true, now);
    let replies = sn.send(
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: ByteString::from("d/urable"),
        },
        now,
    );
    let [Message::RegAck { topic_id: id, .. }] = replies.as_slice() else {
        panic!("{replies:?}")
    };
    let id = *id;
    // Retained, so stored: its PUBACK waits for the store.
    assert_eq!(sn.send(retained(id, Qos::One, 2, b"kept"), now), vec![]);
    let first = store.submitted();
    assert!(first > 0);
    // Nothing to store, but its answer must not overtake the first.
    assert_eq!(
        sn.send(publish(id, TopicIdType::Normal, Qos::One, 3, b"plain"), now),
        vec![]
    );
    assert_eq!(
        sn.send(
            publish(9999, TopicIdType::Normal, Qos::One, 4, b"lost"),
            now
        ),
        vec![],
        "even a refusal waits its turn"
    );
    assert_eq!(sn.send(retained(id, Qos::Two, 5, b"kept 2"), now), vec![]);
    let second = store.submitted();
    assert!(second > first);

    store.make_durable(first);
    assert!(sn.wakeup.count() > 0, "the store woke it");
    assert_eq!(
        sn.wake(now),
        vec![
            puback(id, 2, ReturnCode::ACCEPTED),
            puback(id, 3, ReturnCode::ACCEPTED),
            puback(9999, 4, ReturnCode::INVALID_TOPIC_ID),
        ]
    );
    store.make_durable(second);
    assert_eq!(sn.wake(now), vec![Message::PubRec { msg_id: 5 }]);
    assert_eq!(
        sn.send(Message::PubRel { msg_id: 5 }, now),
        vec![Message::PubComp { msg_id: 5 }]
    );

    // With nothing held and nothing to store, the answer goes at once.
    assert_eq!(
        sn.send(publish(id, TopicIdType::Normal, Qos::One, 6, b"plain"), now),
        vec![puback(id, 6, ReturnCode::ACCEPTED)]
    );

    // A full store refuses every QoS 1/2 message as congestion; QoS 0 still flows.
    let obs = observer(&broker, "d/#", now);
    store.set_full(true);
    assert_eq!(
        sn.send(
            publish(id, TopicIdType::Normal, Qos::One, 7, b"no room"),
            now
        ),
        vec![puback(id, 7, ReturnCode::CONGESTION)]
    );
    assert_eq!(
        sn.send(
            publish(id, TopicIdType::Normal, Qos::Two, 8, b"no room"),
            now
        ),
        vec![puback(id, 8, ReturnCode::CONGESTION)]
    );
    assert_eq!(
        sn.send(
            publish(id, TopicIdType::Normal, Qos::Zero, 0, b"qos 0"),
            now
        ),
        vec![]
    );
    assert_eq!(
        received(&obs, now),
        vec![
            ("d/urable".into(), Bytes::from_static(b"kept 2")),
            ("d/urable".into(), Bytes::from_static(b"qos 0"))
        ],
        "the retained message, then only the QoS 0 one"
    );
}

#[test]
fn topic_ids_of_a_persistent_session_survive_a_restart() {
    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = recovered_broker(store.clone(), now);
    let mut sn = Sn::connect(&broker, "survivor", false, now);
    let replies = sn.send(
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: ByteString::from("up/link"),
        },
        now,
    );
    let [Message::RegAck {
        topic_id: uplink, ..
    }] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    let uplink = *uplink;
    let downlink = sn.subscribe("down/link", Qos::One, now);
    sn.send(Message::Disconnect { duration: None }, now);
    testing::publish(&broker, "down/link", b"while away", QoS::AtLeastOnce, now);
    // A clean session keeps its ids in memory only.
    let mut clean = Sn::connect(&broker, "forgetful", true, now);
    clean.send(
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: ByteString::from("up/link"),
        },
        now,
    );
    drop(clean);
    drop(sn);
    drop(broker);

    let broker = recovered_broker(store.clone(), now);
    let obs = observer(&broker, "up/#", now);
    let mut sn = Sn::new(&broker, now);
    let replies = sn.send(connect_message("survivor", false, false, 30), now);
    // The queued message goes out under the id the client learnt before the restart.
    let [Message::ConnAck {
        return_code: ReturnCode::ACCEPTED,
    }, Message::Publish {
        flags,
        topic_id,
        msg_id,
        data,
    }] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    assert_eq!(
        (flags.topic_id_type, *topic_id, flags.qos, &data[..]),
        (TopicIdType::Normal, downlink, Qos::One, &b"while away"[..])
    );
    let msg_id = *msg_id;
    sn.send(puback(downlink, msg_id, ReturnCode::ACCEPTED), now);
    assert_eq!(
        sn.send(
            publish(uplink, TopicIdType::Normal, Qos::One, 2, b"old id"),
            now
        ),
        vec![puback(uplink, 2, ReturnCode::ACCEPTED)]
    );
    assert_eq!(
        received(&obs, now),
        vec![("up/link".into(), Bytes::from_static(b"old id"))]
    );
    // The clean session's ids are gone with it.
    let mut clean = Sn::connect(&broker, "forgetful", false, now);
    assert_eq!(
        clean.send(
            publish(uplink, TopicIdType::Normal, Qos::One, 2, b"old id"),
            now
        ),
        vec![puback(uplink, 2, ReturnCode::INVALID_TOPIC_ID)]
    );
}

#[test]
fn unreadable_stored_topic_ids_start_an_empty_registry() {
    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = recovered_broker(store.clone(), now);
    let mut sn = Sn::connect(&broker, "garbled", false, now);
    sn.send(
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: ByteString::from("g/one"),
        },
        now,
    );
    sn.send(Message::Disconnect { duration: None }, now);
    drop(sn);
    drop(broker);
    let table = mqtt_core::storage::Table::Adapter;
    let garbled = store
        .load(table)
        .unwrap()
        .into_iter()
        .map(|(key, _)| mqtt_core::storage::Op::Put {
            table,
            key,
            value: Bytes::from_static(&[1, 0xff]),
        })
        .collect();
    store.submit(garbled);

    let broker = recovered_broker(store.clone(), now);
    let mut sn = Sn::connect(&broker, "garbled", false, now);
    assert_eq!(
        sn.send(
            publish(
                FIRST_NORMAL_ID,
                TopicIdType::Normal,
                Qos::One,
                2,
                b"lost id"
            ),
            now
        ),
        vec![puback(FIRST_NORMAL_ID, 2, ReturnCode::INVALID_TOPIC_ID)]
    );
    // Registering again works, and is stored again.
    let replies = sn.send(
        Message::Register {
            topic_id: 0,
            msg_id: 3,
            topic_name: ByteString::from("g/one"),
        },
        now,
    );
    assert!(matches!(
        replies.as_slice(),
        [Message::RegAck {
            return_code: ReturnCode::ACCEPTED,
            ..
        }]
    ));
}

// ---- the client-session layer: every refusal in MQTT-SN's terms ----------------------------

/// Authentication and authorization decided by plain functions, so each test states its rule.
struct Rules {
    admit: fn(&ClientInfo) -> bool,
    allow: fn(&ClientInfo, Action, &str) -> bool,
}

impl Authenticator for Rules {
    fn authenticate(&self, client: &ClientInfo, _password: Option<&[u8]>) -> AuthOutcome {
        if (self.admit)(client) {
            AuthOutcome::Allow
        } else {
            AuthOutcome::Deny(DenyReason::NotAuthorized)
        }
    }
}

impl Authorizer for Rules {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        (self.allow)(client, action, topic)
    }
}

fn broker_with(rules: Rules, now: Instant) -> Arc<Broker> {
    let rules = Arc::new(rules);
    testing::broker_with_auth(
        Auth {
            authenticator: rules.clone(),
            authorizer: rules,
        },
        now,
    )
}

fn connack(return_code: ReturnCode) -> Vec<Message> {
    vec![Message::ConnAck { return_code }]
}

fn register(sn: &mut Sn, topic: &str, msg_id: u16, now: Instant) -> u16 {
    let replies = sn.send(
        Message::Register {
            topic_id: 0,
            msg_id,
            topic_name: ByteString::from(topic),
        },
        now,
    );
    match replies.as_slice() {
        [Message::RegAck {
            topic_id,
            return_code: ReturnCode::ACCEPTED,
            ..
        }] => *topic_id,
        other => panic!("REGISTER {topic}: {other:?}"),
    }
}

fn sn_key(client_id: &str) -> SessionKey {
    SessionKey {
        namespace: MQTTSN_NAMESPACE,
        client_id: Arc::from(client_id),
    }
}

#[test]
fn another_users_session_is_refused_and_left_to_its_owner() {
    let now = Instant::now();
    let broker = broker(now);
    // MQTT-SN carries no user name: the gateway makes one of the peer's address.
    let mut by_host = (*settings()).clone();
    by_host.clientinfo_override.username = "${peerhost}".to_owned();
    let by_host = Arc::new(by_host);
    let owner_at = SocketAddr::from(([10, 0, 0, 1], 5000));
    let intruder_at = SocketAddr::from(([10, 0, 0, 2], 5000));

    let mut owner = Sn::at(&broker, by_host.clone(), Some(owner_at), now);
    assert_eq!(
        owner.send(connect_message("dev1", false, false, 30), now),
        connack(ReturnCode::ACCEPTED)
    );
    let topic_id = owner.subscribe("own/1", Qos::One, now);
    owner.send(Message::Disconnect { duration: None }, now);
    assert!(owner.closed);
    testing::publish(&broker, "own/1", b"queued", QoS::AtLeastOnce, now);

    // Neither resuming it nor starting it clean: both would take it from its owner.
    for clean in [false, true] {
        let mut intruder = Sn::at(&broker, by_host.clone(), Some(intruder_at), now);
        assert_eq!(
            intruder.send(connect_message("dev1", clean, false, 30), now),
            connack(ReturnCode::NOT_SUPPORTED),
            "clean = {clean}"
        );
        assert!(intruder.closed);
    }
    let session = broker
        .session(&sn_key("dev1"))
        .expect("the owner's session");
    {
        let state = session.state.lock();
        assert_eq!(state.subscriptions.len(), 1);
        assert_eq!(state.queue_len(), 1);
    }

    // The owner resumes it whole: its subscription, its topic id and its queued message.
    let mut owner = Sn::at(&broker, by_host, Some(owner_at), now);
    let replies = owner.send(connect_message("dev1", false, false, 30), now);
    let [Message::ConnAck {
        return_code: ReturnCode::ACCEPTED,
    }, Message::Publish {
        topic_id: sent_id,
        data,
        ..
    }] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    assert_eq!((*sent_id, &data[..]), (topic_id, &b"queued"[..]));
}

#[test]
fn a_client_id_that_would_widen_its_mountpoint_is_refused_before_the_will_handshake() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "#", now);
    let mut mounted = (*settings()).clone();
    mounted.mountpoint = "sn/${clientid}/".to_owned();
    let mounted = Arc::new(mounted);
    for client_id in ["a/b", "a+", "#", "${clientid}"] {
        for will in [false, true] {
            let mut sn = Sn::with_settings(&broker, mounted.clone(), now);
            assert_eq!(
                sn.send(connect_message(client_id, true, will, 30), now),
                connack(ReturnCode::NOT_SUPPORTED),
                "{client_id:?}, will = {will}"
            );
            assert!(sn.closed);
            assert!(broker.session(&sn_key(client_id)).is_none());
        }
    }
    // A plain id connects, and publishes and subscribes under its own mountpoint.
    let mut sn = Sn::with_settings(&broker, mounted, now);
    assert_eq!(
        sn.send(connect_message("ok", true, false, 30), now),
        connack(ReturnCode::ACCEPTED)
    );
    let id = register(&mut sn, "up", 1, now);
    assert!(sn
        .send(publish(id, TopicIdType::Normal, Qos::Zero, 0, b"x"), now)
        .is_empty());
    assert_eq!(
        received(&obs, now),
        vec![("sn/ok/up".into(), Bytes::from_static(b"x"))]
    );
}

#[test]
fn the_will_is_given_as_written_mounted_and_dropped_if_not_authorized() {
    let now = Instant::now();
    let broker = broker_with(
        Rules {
            admit: |_| true,
            allow: |_, _, topic| !topic.starts_with("secret/"),
        },
        now,
    );
    let obs = observer(&broker, "#", now);
    let mut mounted = (*settings()).clone();
    mounted.mountpoint = "sn/${clientid}/".to_owned();
    let mounted = Arc::new(mounted);
    for (client_id, will_topic) in [("w1", "will/t"), ("w2", "secret/will")] {
        let mut sn = Sn::with_settings(&broker, mounted.clone(), now);
        assert_eq!(
            sn.send(connect_message(client_id, true, true, 10), now),
            vec![Message::WillTopicReq]
        );
        assert_eq!(
            sn.send(
                Message::WillTopic(Some(WillTopic {
                    flags: Flags {
                        qos: Qos::One,
                        ..Flags::default()
                    },
                    topic: ByteString::from(will_topic),
                })),
                now
            ),
            vec![Message::WillMsgReq]
        );
        // Accepted either way: a will that may not be published is dropped, not refused.
        assert_eq!(
            sn.send(
                Message::WillMsg {
                    payload: Bytes::from_static(b"gone"),
                },
                now
            ),
            connack(ReturnCode::ACCEPTED),
            "{will_topic}"
        );
        sn.tick(now + Duration::from_secs(15));
        assert!(sn.closed);
    }
    // A will no message could ever be published to refuses the connection.
    let mut sn = Sn::with_settings(&broker, mounted, now);
    sn.send(connect_message("w3", true, true, 10), now);
    sn.send(
        Message::WillTopic(Some(WillTopic {
            flags: Flags::default(),
            topic: ByteString::from("will/+"),
        })),
        now,
    );
    assert_eq!(
        sn.send(
            Message::WillMsg {
                payload: Bytes::from_static(b"never"),
            },
            now
        ),
        connack(ReturnCode::NOT_SUPPORTED)
    );
    assert!(sn.closed);
    assert_eq!(
        received(&obs, now),
        vec![("sn/w1/will/t".into(), Bytes::from_static(b"gone"))]
    );
}

#[test]
fn publishing_to_sys_is_refused() {
    let now = Instant::now();
    let broker = broker(now);
    let obs = observer(&broker, "$SYS/#", now);
    let mut with_sys = (*settings()).clone();
    with_sys.predefined = Predefined::new([(2, "$SYS/broker/fake".to_owned())]);
    let with_sys = Arc::new(with_sys);
    let mut sn = Sn::with_settings(&broker, with_sys.clone(), now);
    assert_eq!(
        sn.send(connect_message("sys", true, false, 30), now),
        connack(ReturnCode::ACCEPTED)
    );
    let id = register(&mut sn, "$SYS/broker/uptime", 1, now);
    for (qos, msg_id) in [(Qos::Zero, 0), (Qos::One, 2), (Qos::Two, 3)] {
        assert_eq!(
            sn.send(publish(id, TopicIdType::Normal, qos, msg_id, b"fake"), now),
            vec![puback(id, msg_id, ReturnCode::NOT_SUPPORTED)],
            "{qos:?}"
        );
    }
    assert_eq!(
        sn.send(
            publish(2, TopicIdType::Predefined, Qos::One, 4, b"fake"),
            now
        ),
        vec![puback(2, 4, ReturnCode::NOT_SUPPORTED)]
    );
    assert_eq!(
        sn.send(
            Message::WillTopicUpd(Some(WillTopic {
                flags: Flags::default(),
                topic: ByteString::from("$SYS/will"),
            })),
            now
        ),
        vec![Message::WillTopicResp {
            return_code: ReturnCode::NOT_SUPPORTED
        }]
    );
    // Nor as a will, which is dropped: the client is accepted, and lost without a trace.
    let mut willing = Sn::with_settings(&broker, with_sys.clone(), now);
    willing.send(connect_message("willing", true, true, 10), now);
    willing.send(
        Message::WillTopic(Some(WillTopic {
            flags: Flags::default(),
            topic: ByteString::from("$SYS/will"),
        })),
        now,
    );
    assert_eq!(
        willing.send(
            Message::WillMsg {
                payload: Bytes::from_static(b"fake"),
            },
            now
        ),
        connack(ReturnCode::ACCEPTED)
    );
    willing.tick(now + Duration::from_secs(15));
    assert!(willing.closed);
    // Nor without a connection.
    let mut neg = Sn::with_settings(&broker, with_sys, now);
    neg.send(
        publish(2, TopicIdType::Predefined, Qos::MinusOne, 0, b"fake"),
        now,
    );
    assert!(neg.closed);
    assert!(received(&obs, now).is_empty());
}

#[test]
fn acl_denied_publish_and_subscribe_are_refused_with_nothing_delivered() {
    let now = Instant::now();
    let broker = broker_with(
        Rules {
            admit: |_| true,
            allow: |_, _, topic| !topic.starts_with("secret/"),
        },
        now,
    );
    let obs = observer(&broker, "#", now);
    let mut with_secret = (*settings()).clone();
    with_secret.predefined = Predefined::new([(2, "secret/pre".to_owned())]);
    let with_secret = Arc::new(with_secret);
    let mut sn = Sn::with_settings(&broker, with_secret.clone(), now);
    assert_eq!(
        sn.send(connect_message("acl", true, false, 30), now),
        connack(ReturnCode::ACCEPTED)
    );
    assert!(matches!(
        sn.send(
            Message::Subscribe {
                flags: Flags {
                    qos: Qos::One,
                    ..Flags::default()
                },
                msg_id: 1,
                topic: TopicRef::Name(ByteString::from("secret/x")),
            },
            now
        )
        .as_slice(),
        [Message::SubAck {
            msg_id: 1,
            return_code: ReturnCode::NOT_SUPPORTED,
            ..
        }]
    ));
    let id = register(&mut sn, "secret/x", 2, now);
    for (qos, msg_id) in [(Qos::Zero, 0), (Qos::One, 3), (Qos::Two, 4)] {
        assert_eq!(
            sn.send(publish(id, TopicIdType::Normal, qos, msg_id, b"leak"), now),
            vec![puback(id, msg_id, ReturnCode::NOT_SUPPORTED)],
            "{qos:?}"
        );
    }
    // The refused subscription delivers nothing either.
    testing::publish(&broker, "secret/x", b"from mqtt", QoS::AtLeastOnce, now);
    assert!(sn.wake(now).is_empty());
    // QoS -1 is authorized like any publish.
    let mut neg = Sn::with_settings(&broker, with_secret, now);
    neg.send(
        publish(2, TopicIdType::Predefined, Qos::MinusOne, 0, b"leak"),
        now,
    );
    assert_eq!(
        received(&obs, now),
        vec![("secret/x".into(), Bytes::from_static(b"from mqtt"))],
        "only the MQTT client's own message"
    );
}

#[test]
fn qos_minus_one_goes_through_a_session_that_ends_with_the_datagram() {
    let now = Instant::now();
    let broker = broker_with(
        Rules {
            // Seen with the gateway's override, as every MQTT-SN client is.
            admit: |client| client.protocol == "mqtt" || &*client.client_id == "sn-NegQoS-Client",
            allow: |_, _, _| true,
        },
        now,
    );
    let obs = observer(&broker, "#", now);
    let sessions = broker.session_count();
    let mut overridden = (*settings()).clone();
    overridden.clientinfo_override.clientid = "sn-${clientid}".to_owned();
    overridden.mountpoint = "m/${clientid}/".to_owned();
    let mut neg = Sn::with_settings(&broker, Arc::new(overridden), now);
    neg.send(
        publish(1, TopicIdType::Predefined, Qos::MinusOne, 0, b"neg"),
        now,
    );
    assert!(neg.closed);
    assert_eq!(
        received(&obs, now),
        vec![(
            "m/sn-NegQoS-Client/pre/one".into(),
            Bytes::from_static(b"neg")
        )]
    );
    assert_eq!(broker.session_count(), sessions, "no session left behind");
    // Without the override the authenticator refuses it: nothing is published.
    let mut plain = Sn::new(&broker, now);
    plain.send(
        publish(1, TopicIdType::Predefined, Qos::MinusOne, 0, b"no"),
        now,
    );
    assert!(plain.closed);
    assert!(received(&obs, now).is_empty());
    assert_eq!(broker.session_count(), sessions);
}

#[test]
fn a_publish_while_a_receiver_is_behind_is_answered_congestion_until_it_catches_up() {
    let now = Instant::now();
    let broker = broker(now);
    // Connected, not drained until later.
    let slow = observer(&broker, "#", now);
    let mut sn = Sn::connect(&broker, "fast", true, now);
    let id = register(&mut sn, "flood", 1, now);
    // The default high water is 500 messages: the 500th makes the receiver behind.
    for msg_id in 1..=500 {
        let replies = sn.send(
            publish(id, TopicIdType::Normal, Qos::One, msg_id, b"x"),
            now,
        );
        assert!(
            matches!(
                replies.as_slice(),
                [Message::PubAck {
                    return_code: ReturnCode::ACCEPTED,
                    ..
                }]
            ),
            "{msg_id}: {replies:?}"
        );
    }
    for (msg_id, qos) in [(501, Qos::One), (502, Qos::Zero), (503, Qos::Two)] {
        let replies = sn.send(publish(id, TopicIdType::Normal, qos, msg_id, b"x"), now);
        assert!(
            matches!(
                replies.as_slice(),
                [Message::PubAck { msg_id: answered, return_code: ReturnCode::CONGESTION, .. }]
                    if *answered == msg_id
            ),
            "{replies:?}"
        );
    }
    assert_eq!(received(&slow, now).len(), 500);
    assert_eq!(
        broker
            .stats
            .refused_congestion
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    let replies = sn.send(publish(id, TopicIdType::Normal, Qos::One, 501, b"x"), now);
    assert!(
        matches!(
            replies.as_slice(),
            [Message::PubAck {
                return_code: ReturnCode::ACCEPTED,
                ..
            }]
        ),
        "let go once the receiver took its messages: {replies:?}"
    );
}

#[test]
fn a_wake_up_from_another_address_is_vouched_for_only_when_the_session_layer_accepts_it() {
    let now = Instant::now();
    // Clients are admitted from 127.0.0.1 only, whatever port.
    let broker = broker_with(
        Rules {
            admit: |client| {
                client
                    .peer
                    .is_some_and(|peer| peer.ip() == std::net::Ipv4Addr::LOCALHOST)
            },
            allow: |_, _, _| true,
        },
        now,
    );
    let home: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut sn = Sn::at(&broker, settings(), Some(home), now);
    assert_eq!(
        sn.send(connect_message("sleeper", false, false, 30), now),
        connack(ReturnCode::ACCEPTED)
    );
    assert!(
        sn.channel.address_validated(),
        "the session layer accepted it"
    );
    sn.send(Message::Disconnect { duration: Some(60) }, now);
    let wake = |id: &str| {
        to_datagram(&Message::PingReq {
            client_id: Some(ByteString::from(id)),
        })
        .unwrap()
    };
    let new_port: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let other_host: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    assert!(sn.channel.vouch(&wake("sleeper"), new_port));
    assert!(
        !sn.channel.vouch(&wake("sleeper"), other_host),
        "refused by the authenticator"
    );
    assert!(
        !sn.channel.vouch(&wake("another"), new_port),
        "another client id"
    );
    let connect = to_datagram(&connect_message("sleeper", false, false, 30)).unwrap();
    assert!(
        !sn.channel.vouch(&connect, new_port),
        "only a wake-up moves a sleeper"
    );
    assert!(sn.channel.is_asleep(), "vouching changes nothing");
}

#[test]
fn a_publish_over_the_messages_rate_is_answered_congestion_until_the_pause_ends() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let obs = observer(&broker, "#", t0);
    let settings = Arc::new(Settings {
        rates: PublishRates::new("5/s".parse().unwrap(), "infinity".parse().unwrap()),
        ..(*settings()).clone()
    });
    let mut sn = Sn::with_settings(&broker, settings, t0);
    sn.send(connect_message("fast", true, false, 30), t0);
    let id = register(&mut sn, "flood", 1, t0);
    let answer = |sn: &mut Sn, msg_id: u16, now: Instant| match sn
        .send(
            publish(id, TopicIdType::Normal, Qos::One, msg_id, b"x"),
            now,
        )
        .as_slice()
    {
        [Message::PubAck {
            msg_id: answered,
            return_code,
            ..
        }] if *answered == msg_id => *return_code,
        other => panic!("{msg_id}: {other:?}"),
    };
    for msg_id in 1..=5 {
        assert_eq!(answer(&mut sn, msg_id, t0), ReturnCode::ACCEPTED);
    }
    assert_eq!(answer(&mut sn, 6, t0), ReturnCode::CONGESTION);
    assert_eq!(received(&obs, t0).len(), 5);

    // The pause ends by time: it is the channel's deadline, and no wake-up is needed.
    let resume = sn.channel.next_deadline().expect("the pause's end");
    assert!(resume > t0 && resume <= t0 + Duration::from_millis(201));
    assert_eq!(
        answer(&mut sn, 6, resume - Duration::from_millis(1)),
        ReturnCode::CONGESTION
    );
    sn.tick(resume);
    assert!(
        sn.channel.next_deadline() > Some(resume),
        "an ended pause is no deadline any more"
    );
    assert_eq!(answer(&mut sn, 6, resume), ReturnCode::ACCEPTED);
    assert_eq!(received(&obs, resume).len(), 1);
    let stats = &broker.stats;
    assert_eq!(
        stats
            .refused_congestion
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(
        stats.rate_limited.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
}

#[test]
fn a_kicked_client_gets_a_disconnect_and_its_session_is_discarded() {
    let now = Instant::now();
    let broker = broker(now);
    let mut sn = Sn::connect(&broker, "dev1", false, now);
    sn.subscribe("k/1", Qos::One, now);
    assert!(broker.kick(&sn_key("dev1"), now));
    assert!(sn.wakeup.count() > 0);
    assert_eq!(sn.wake(now), vec![Message::Disconnect { duration: None }]);
    assert!(sn.closed, "the peer is forgotten");
    assert!(broker.session(&sn_key("dev1")).is_none());
    assert_eq!(broker.subscription_count(), 0);
    assert_eq!(broker.connected_count(), 0);

    // Asleep, the client is kicked all the same; the DISCONNECT waits for nobody.
    let mut sleeper = Sn::connect(&broker, "sleeper", false, now);
    sleeper.send(Message::Disconnect { duration: Some(60) }, now);
    assert!(broker.kick(&sn_key("sleeper"), now));
    assert_eq!(
        sleeper.wake(now),
        vec![Message::Disconnect { duration: None }]
    );
    assert!(sleeper.closed);
    assert!(broker.session(&sn_key("sleeper")).is_none());
}

#[test]
fn presence_events_tell_of_mqttsn_clients_and_their_sleep() {
    let now = Instant::now();
    let broker = testing::broker_with_presence(now);
    let watcher = testing::presence_watcher(&broker, now);
    let prefix = "$SYS/brokers/test@node/gateway/mqttsn/clients/sleeper/";
    // Each event since the last look as "{event} {reason}".
    let names = |now| -> Vec<String> {
        testing::presence_events(&watcher, now)
            .into_iter()
            .map(|(topic, payload)| {
                format!(
                    "{} {}",
                    topic.trim_start_matches(prefix),
                    payload["reason"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let mut sn = Sn::new(&broker, now);
    sn.send(connect_message("sleeper", false, false, 30), now);
    let (topic, connected) = testing::presence_event(&watcher, now);
    assert_eq!(topic, format!("{prefix}connected"));
    assert_eq!(connected["protocol"], "mqttsn");
    assert_eq!(connected["proto_name"], "MQTT-SN");
    assert_eq!(connected["proto_ver"], "1.2");
    assert_eq!(connected["clientid"], "sleeper");
    assert_eq!(connected["keepalive"], 30);
    assert_eq!(connected["clean_start"], false);

    sn.send(Message::Disconnect { duration: Some(60) }, now);
    // Another DISCONNECT while asleep only changes the duration, and wake-ups by PINGREQ
    // to collect messages are part of the sleep.
    sn.send(Message::Disconnect { duration: Some(90) }, now);
    sn.send(
        Message::PingReq {
            client_id: Some(ByteString::from("sleeper")),
        },
        now,
    );
    let (topic, asleep) = testing::presence_event(&watcher, now);
    assert_eq!(topic, format!("{prefix}asleep"));
    assert_eq!(asleep["duration"], 60);
    use mqtt_core::clients::ConnState;
    assert_eq!(
        broker.client(&sn_key("sleeper")).map(|c| c.state),
        Some(ConnState::Asleep)
    );

    // Back with CONNECT: awake, then the session handed back and opened again.
    let t = now + Duration::from_secs(10);
    sn.send(connect_message("sleeper", false, false, 30), t);
    assert_eq!(names(t), ["awake ", "disconnected normal", "connected "]);
    assert_eq!(
        broker.client(&sn_key("sleeper")).map(|c| c.state),
        Some(ConnState::Connected)
    );

    // Lost to its keep-alive: said so.
    let late = t + Duration::from_secs(46);
    sn.tick(late);
    let events = testing::presence_events(&watcher, late);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["reason"], "keepalive_timeout");

    // Asleep again, and back from another address: a new peer takes the session over.
    let mut other = Sn::new(&broker, late);
    other.send(connect_message("sleeper", false, false, 30), late);
    other.send(Message::Disconnect { duration: Some(60) }, late);
    testing::presence_events(&watcher, late);
    let mut moved = Sn::new(&broker, late);
    moved.send(connect_message("sleeper", false, false, 30), late);
    assert_eq!(
        names(late),
        ["awake ", "disconnected takenover", "connected "],
        "from another address"
    );

    // A QoS -1 publish is one message, not a client coming and going.
    let mut once = Sn::new(&broker, late);
    once.send(
        publish(1, TopicIdType::Predefined, Qos::MinusOne, 0, b"neg"),
        late,
    );
    assert!(testing::presence_events(&watcher, late).is_empty());
}
