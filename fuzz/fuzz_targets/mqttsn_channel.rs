//! Two MQTT-SN peers on a broker with authentication on (a password file, an ACL denying
//! what it does not name; MQTT-SN's CONNECT carries no credentials, so the gateway's
//! `clientinfo_override` makes them, as the fuzzer picks) and a per-client mountpoint:
//! arbitrary datagrams, or messages the fuzzer builds (CONNECT and the will handshake,
//! REGISTER, PUBLISH by registered, predefined or short topic ids and QoS -1, SUBSCRIBE,
//! acknowledgements, sleep and wake), other publishers, the store and the clock. Every
//! datagram the channel sends must decode.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use adapter_mqtt_sn::codec::{self, Flags, Message, Qos, ReturnCode, TopicIdType, TopicRef};
use adapter_mqtt_sn::{MqttSnChannel, Settings};
use arbitrary::Arbitrary;
use bytes::Bytes;
use bytestring::ByteString;
use gateway_config::ClientInfoOverride;
use libfuzzer_sys::fuzz_target;
use mqtt_core::protocol::Flow;
use mqtt_core_fuzz::{
    close_all, config, settle, ClientId, ClientSide, Filter, Mount, NoWakeup, StoreKind, Topic,
    User, World, WorldStep,
};

#[derive(Debug, Arbitrary)]
struct Input {
    identity: Identity,
    mount: Mount,
    store: StoreKind,
    steps: Vec<Step>,
}

/// What `clientinfo_override` makes of a client.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Identity {
    /// No user name: anonymous, refused.
    Anonymous,
    /// The client id is the user name, and the password what the users' passwords are.
    ClientIdIsUser,
    /// Every client is this user.
    Fixed(User),
    /// As `ClientIdIsUser`, and the session's client id prefixed.
    Renamed,
}

impl Identity {
    fn templates(self) -> ClientInfoOverride {
        let (clientid, username, password) = match self {
            Identity::Anonymous => ("", "", ""),
            Identity::ClientIdIsUser => ("", "${clientid}", "${clientid}-secret"),
            Identity::Fixed(user) => ("", user.name(), user.password()),
            Identity::Renamed => ("sn-${clientid}", "${clientid}", "${clientid}-secret"),
        };
        ClientInfoOverride {
            clientid: clientid.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Peer {
    First,
    Second,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Datagram(Peer, Vec<u8>),
    Message(Peer, ClientMessage),
    /// The listener forgets the peer; its next datagram makes a new channel.
    Forget(Peer),
    World(WorldStep),
}

/// An id the gateway gave (a topic id from REGACK, SUBACK or its REGISTER; a message id
/// of its PUBLISH, PUBREL or REGISTER), or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum IdRef {
    Last,
    Literal(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum SnQos {
    Zero,
    One,
    Two,
    MinusOne,
}

impl SnQos {
    fn codec(self) -> Qos {
        match self {
            SnQos::Zero => Qos::Zero,
            SnQos::One => Qos::One,
            SnQos::Two => Qos::Two,
            SnQos::MinusOne => Qos::MinusOne,
        }
    }
}

/// How a PUBLISH names its topic.
#[derive(Debug, Clone, Arbitrary)]
enum PublishTopic {
    Registered(IdRef),
    /// 1 and 2 are configured.
    Predefined(u16),
    Short([u8; 2]),
}

/// How a SUBSCRIBE or UNSUBSCRIBE names its topic.
#[derive(Debug, Clone, Arbitrary)]
enum SubscribeTopic {
    Name(Filter),
    Predefined(u16),
    Short([u8; 2]),
}

impl SubscribeTopic {
    fn parts(&self) -> (TopicIdType, TopicRef) {
        match self {
            SubscribeTopic::Name(filter) => (
                TopicIdType::Normal,
                TopicRef::Name(ByteString::from(&*filter.text())),
            ),
            SubscribeTopic::Predefined(id) => (TopicIdType::Predefined, TopicRef::Id(*id)),
            SubscribeTopic::Short(name) => {
                (TopicIdType::Short, TopicRef::Id(u16::from_be_bytes(*name)))
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
enum ClientMessage {
    Connect {
        will: bool,
        clean_session: bool,
        duration: u16,
        client_id: ClientId,
    },
    WillTopic {
        will: Option<(SnQos, bool, Topic)>,
    },
    WillMsg(Vec<u8>),
    WillTopicUpd {
        will: Option<(SnQos, bool, Topic)>,
    },
    WillMsgUpd(Vec<u8>),
    Register {
        msg_id: u16,
        topic: Topic,
    },
    RegAck {
        topic_id: IdRef,
        msg_id: IdRef,
        return_code: u8,
    },
    Publish {
        qos: SnQos,
        retain: bool,
        dup: bool,
        topic: PublishTopic,
        msg_id: u16,
        data: Vec<u8>,
    },
    PubAck {
        topic_id: IdRef,
        msg_id: IdRef,
        return_code: u8,
    },
    PubRec(IdRef),
    PubRel(IdRef),
    PubComp(IdRef),
    Subscribe {
        qos: SnQos,
        msg_id: u16,
        topic: SubscribeTopic,
    },
    Unsubscribe {
        msg_id: u16,
        topic: SubscribeTopic,
    },
    PingReq(Option<ClientId>),
    Disconnect(Option<u16>),
    SearchGw,
}

/// What a client has learnt from the gateway's datagrams.
#[derive(Default)]
struct Known {
    topic_id: u16,
    msg_id: u16,
}

impl Known {
    fn id(value: u16, id: IdRef) -> u16 {
        match id {
            IdRef::Last => value,
            IdRef::Literal(id) => id,
        }
    }

    fn read(&mut self, out: &mut Vec<Bytes>) {
        for datagram in out.drain(..) {
            let message = codec::decode(&datagram).expect("the channel sends valid MQTT-SN");
            match message {
                Message::RegAck { topic_id, .. } | Message::SubAck { topic_id, .. }
                    if topic_id != 0 =>
                {
                    self.topic_id = topic_id;
                }
                Message::Register {
                    topic_id, msg_id, ..
                } => {
                    self.topic_id = topic_id;
                    self.msg_id = msg_id;
                }
                Message::Publish { msg_id, .. } | Message::PubRel { msg_id } => {
                    self.msg_id = msg_id;
                }
                _ => {}
            }
        }
    }
}

fn will_topic(will: &Option<(SnQos, bool, Topic)>) -> Option<codec::WillTopic> {
    will.as_ref().map(|(qos, retain, topic)| codec::WillTopic {
        flags: Flags {
            qos: qos.codec(),
            retain: *retain,
            ..Flags::default()
        },
        topic: ByteString::from(&*topic.text()),
    })
}

impl ClientMessage {
    fn message(&self, known: &Known) -> Message {
        let msg_id = |id: &IdRef| Known::id(known.msg_id, *id);
        let topic_id = |id: &IdRef| Known::id(known.topic_id, *id);
        match self {
            ClientMessage::Connect {
                will,
                clean_session,
                duration,
                client_id,
            } => Message::Connect {
                flags: Flags {
                    will: *will,
                    clean_session: *clean_session,
                    ..Flags::default()
                },
                protocol_id: codec::PROTOCOL_ID,
                duration: *duration,
                client_id: ByteString::from(&*client_id.text()),
            },
            ClientMessage::WillTopic { will } => Message::WillTopic(will_topic(will)),
            ClientMessage::WillMsg(payload) => Message::WillMsg {
                payload: Bytes::copy_from_slice(payload),
            },
            ClientMessage::WillTopicUpd { will } => Message::WillTopicUpd(will_topic(will)),
            ClientMessage::WillMsgUpd(payload) => Message::WillMsgUpd {
                payload: Bytes::copy_from_slice(payload),
            },
            ClientMessage::Register { msg_id, topic } => Message::Register {
                topic_id: 0,
                msg_id: *msg_id,
                topic_name: ByteString::from(&*topic.text()),
            },
            ClientMessage::RegAck {
                topic_id: id,
                msg_id: message,
                return_code,
            } => Message::RegAck {
                topic_id: topic_id(id),
                msg_id: msg_id(message),
                return_code: ReturnCode(*return_code),
            },
            ClientMessage::Publish {
                qos,
                retain,
                dup,
                topic,
                msg_id,
                data,
            } => {
                let (topic_id_type, topic_id) = match topic {
                    PublishTopic::Registered(id) => (TopicIdType::Normal, topic_id(id)),
                    PublishTopic::Predefined(id) => (TopicIdType::Predefined, *id),
                    PublishTopic::Short(name) => (TopicIdType::Short, u16::from_be_bytes(*name)),
                };
                Message::Publish {
                    flags: Flags {
                        dup: *dup,
                        qos: qos.codec(),
                        retain: *retain,
                        topic_id_type,
                        ..Flags::default()
                    },
                    topic_id,
                    msg_id: *msg_id,
                    data: Bytes::copy_from_slice(data),
                }
            }
            ClientMessage::PubAck {
                topic_id: id,
                msg_id: message,
                return_code,
            } => Message::PubAck {
                topic_id: topic_id(id),
                msg_id: msg_id(message),
                return_code: ReturnCode(*return_code),
            },
            ClientMessage::PubRec(id) => Message::PubRec { msg_id: msg_id(id) },
            ClientMessage::PubRel(id) => Message::PubRel { msg_id: msg_id(id) },
            ClientMessage::PubComp(id) => Message::PubComp { msg_id: msg_id(id) },
            ClientMessage::Subscribe { qos, msg_id, topic } => {
                let (topic_id_type, topic) = topic.parts();
                Message::Subscribe {
                    flags: Flags {
                        qos: qos.codec(),
                        topic_id_type,
                        ..Flags::default()
                    },
                    msg_id: *msg_id,
                    topic,
                }
            }
            ClientMessage::Unsubscribe { msg_id, topic } => {
                let (topic_id_type, topic) = topic.parts();
                Message::Unsubscribe {
                    flags: Flags {
                        topic_id_type,
                        ..Flags::default()
                    },
                    msg_id: *msg_id,
                    topic,
                }
            }
            ClientMessage::PingReq(client_id) => Message::PingReq {
                client_id: client_id
                    .as_ref()
                    .map(|client_id| ByteString::from(&*client_id.text())),
            },
            ClientMessage::Disconnect(duration) => Message::Disconnect {
                duration: *duration,
            },
            ClientMessage::SearchGw => Message::SearchGw { radius: 1 },
        }
    }
}

struct Client {
    channel: MqttSnChannel,
    known: Known,
}

impl ClientSide for Client {
    type Channel = MqttSnChannel;

    fn channel(&mut self) -> &mut MqttSnChannel {
        &mut self.channel
    }

    fn receive(&mut self, out: &mut Vec<Bytes>) {
        self.known.read(out);
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(input.store, input.mount.template());
    let config = config();
    let listener = &config.gateway.mqttsn.listeners.udp["default"];
    let settings = Arc::new(Settings {
        mountpoint: input.mount.template().to_owned(),
        clientinfo_override: input.identity.templates(),
        ..Settings::from_config(Arc::from("udp:fuzz"), &config.gateway.mqttsn, listener)
    });
    let connect = |world: &World, index: usize| Client {
        channel: MqttSnChannel::new(
            world.broker.clone(),
            settings.clone(),
            Some(SocketAddr::from(([127, 0, 0, 1], 40_000 + index as u16))),
            Arc::new(NoWakeup),
            world.now,
        ),
        known: Known::default(),
    };
    let mut clients = [connect(&world, 0), connect(&world, 1)];
    let mut out = Vec::new();
    for step in &input.steps {
        let mut timers = false;
        let mut closing = None;
        match step {
            Step::Datagram(peer, datagram) => {
                let client = &mut clients[*peer as usize];
                let datagram = Bytes::copy_from_slice(datagram);
                if client
                    .channel
                    .handle_datagram(datagram, &mut out, world.now)
                    == Flow::Close
                {
                    closing = Some(*peer as usize);
                }
                client.known.read(&mut out);
            }
            Step::Message(peer, message) => {
                let client = &mut clients[*peer as usize];
                // What the codec cannot encode (a name too long) is not sent.
                if let Ok(datagram) = codec::to_datagram(&message.message(&client.known)) {
                    if client
                        .channel
                        .handle_datagram(datagram, &mut out, world.now)
                        == Flow::Close
                    {
                        closing = Some(*peer as usize);
                    }
                }
                client.known.read(&mut out);
            }
            Step::Forget(peer) => closing = Some(*peer as usize),
            Step::World(step) => timers = world.step(step),
        }
        settle(
            &mut clients,
            closing,
            timers,
            &mut out,
            world.now,
            |index| connect(&world, index),
        );
    }
    close_all(&mut clients, world.now);
});
