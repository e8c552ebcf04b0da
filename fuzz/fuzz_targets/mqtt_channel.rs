//! Two MQTT connections on a broker with authentication on (a password file, an ACL
//! denying what it does not name) and a per-client mountpoint: arbitrary bytes, or packets
//! the fuzzer builds (CONNECT with the credentials and client id it picks, or none, then
//! PUBLISH, SUBSCRIBE, acknowledgements...), other publishers, the store and the clock. The
//! whole channel (decoder, CONNECT and its refusals, sessions taken over or owned by
//! another user, QoS flows, aliases, keep-alive, wills, the delivery path); everything it
//! writes must decode in the connection's protocol version.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use libfuzzer_sys::fuzz_target;
use mqtt_core::codec::{
    self, Connect, ConnectProperties, Decoder, Disconnect, DisconnectProperties, LastWill, Packet,
    ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, Unsubscribe, WillProperties,
};
use mqtt_core::protocol::{CertificateIdentity, ConnectionInfo, Flow, MqttChannel};
use mqtt_core::rate::PublishRates;
use mqtt_core_fuzz::{
    close_all, settle, ClientId, ClientSide, Credentials, Filter, Mount, NoWakeup, StoreKind,
    Topic, World, WorldStep,
};

#[derive(Debug, Arbitrary)]
struct Input {
    mount: Mount,
    store: StoreKind,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Conn {
    First,
    Second,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Bytes(Conn, Vec<u8>),
    Packet(Conn, ClientPacket),
    /// The transport is gone (the will goes out); the client connects again.
    Drop(Conn),
    World(WorldStep),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Version {
    V3_1,
    V3_1_1,
    V5,
}

/// A packet id: the last one the server used on this connection, or any.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum PacketId {
    Last,
    Literal(u16),
}

#[derive(Debug, Arbitrary)]
struct Will {
    topic: Topic,
    qos: u8,
    retain: bool,
    payload: Vec<u8>,
    delay: Option<u8>,
}

#[derive(Debug, Arbitrary)]
enum ClientPacket {
    Connect {
        version: Version,
        client_id: ClientId,
        credentials: Credentials,
        clean_start: bool,
        keep_alive: u8,
        session_expiry: Option<u16>,
        receive_maximum: Option<u8>,
        topic_alias_maximum: Option<u8>,
        will: Option<Will>,
    },
    Publish {
        topic: Topic,
        qos: u8,
        retain: bool,
        dup: bool,
        packet_id: u16,
        payload: Vec<u8>,
        alias: Option<u8>,
        expiry: Option<u8>,
    },
    Subscribe {
        packet_id: u16,
        filters: Vec<(Filter, u8)>,
        identifier: Option<u16>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<Filter>,
    },
    PubAck(PacketId),
    PubRec(PacketId),
    PubRel(PacketId),
    PubComp(PacketId),
    PingReq,
    Disconnect {
        with_will: bool,
        session_expiry: Option<u16>,
    },
}

fn qos(level: u8) -> QoS {
    QoS::from_u8(level % 3).unwrap_or_default()
}

impl ClientPacket {
    fn packet(&self, last_id: u16) -> Packet {
        let id = |packet_id: &PacketId| PubResponse {
            packet_id: match packet_id {
                PacketId::Last => last_id,
                PacketId::Literal(id) => *id,
            },
            ..PubResponse::default()
        };
        match self {
            ClientPacket::Connect {
                version,
                client_id,
                credentials,
                clean_start,
                keep_alive,
                session_expiry,
                receive_maximum,
                topic_alias_maximum,
                will,
            } => Packet::Connect(Box::new(Connect {
                protocol: match version {
                    Version::V3_1 => ProtocolVersion::V3_1,
                    Version::V3_1_1 => ProtocolVersion::V3_1_1,
                    Version::V5 => ProtocolVersion::V5,
                },
                clean_start: *clean_start,
                keep_alive: u16::from(*keep_alive),
                client_id: client_id.text().into_owned(),
                will: will.as_ref().map(|will| LastWill {
                    topic: ByteString::from(&*will.topic.text()),
                    payload: Bytes::copy_from_slice(&will.payload),
                    qos: qos(will.qos),
                    retain: will.retain,
                    properties: WillProperties {
                        will_delay_interval: will.delay.map(u32::from),
                        ..WillProperties::default()
                    },
                }),
                username: credentials.username().map(str::to_owned),
                password: credentials.password().map(Bytes::copy_from_slice),
                properties: ConnectProperties {
                    session_expiry_interval: session_expiry.map(u32::from),
                    receive_maximum: receive_maximum.map(u16::from),
                    topic_alias_maximum: topic_alias_maximum.map(u16::from),
                    ..ConnectProperties::default()
                },
            })),
            ClientPacket::Publish {
                topic,
                qos: level,
                retain,
                dup,
                packet_id,
                payload,
                alias,
                expiry,
            } => {
                let qos = qos(*level);
                Packet::Publish(Publish {
                    dup: *dup,
                    qos,
                    retain: *retain,
                    topic: ByteString::from(&*topic.text()),
                    packet_id: if qos == QoS::AtMostOnce {
                        0
                    } else {
                        (*packet_id).max(1)
                    },
                    payload: Bytes::copy_from_slice(payload),
                    properties: PublishProperties {
                        topic_alias: alias.map(u16::from),
                        message_expiry_interval: expiry.map(u32::from),
                        ..PublishProperties::default()
                    }
                    .into(),
                })
            }
            ClientPacket::Subscribe {
                packet_id,
                filters,
                identifier,
            } => Packet::Subscribe(Subscribe {
                packet_id: (*packet_id).max(1),
                subscription_identifier: identifier.map(u32::from),
                user_properties: Vec::new(),
                filters: filters
                    .iter()
                    .map(|(filter, options)| {
                        (
                            filter.text().into_owned(),
                            SubscriptionOptions {
                                qos: qos(*options),
                                no_local: options & 0x04 != 0,
                                retain_as_published: options & 0x08 != 0,
                                retain_handling: (options >> 4) % 3,
                            },
                        )
                    })
                    .collect(),
            }),
            ClientPacket::Unsubscribe { packet_id, filters } => Packet::Unsubscribe(Unsubscribe {
                packet_id: (*packet_id).max(1),
                user_properties: Vec::new(),
                filters: filters.iter().map(|f| f.text().into_owned()).collect(),
            }),
            ClientPacket::PubAck(packet_id) => Packet::PubAck(id(packet_id)),
            ClientPacket::PubRec(packet_id) => Packet::PubRec(id(packet_id)),
            ClientPacket::PubRel(packet_id) => Packet::PubRel(id(packet_id)),
            ClientPacket::PubComp(packet_id) => Packet::PubComp(id(packet_id)),
            ClientPacket::PingReq => Packet::PingReq,
            ClientPacket::Disconnect {
                with_will,
                session_expiry,
            } => Packet::Disconnect(Box::new(Disconnect {
                reason_code: if *with_will {
                    ReasonCode::DISCONNECT_WITH_WILL
                } else {
                    ReasonCode::NORMAL_DISCONNECTION
                },
                properties: DisconnectProperties {
                    session_expiry_interval: session_expiry.map(u32::from),
                    ..DisconnectProperties::default()
                },
            })),
        }
    }
}

/// One client's connection: the channel and what the client knows of it.
struct Connection {
    channel: MqttChannel,
    input: BytesMut,
    /// The version packets are built in: the CONNECT's once one was built.
    version: ProtocolVersion,
    /// The packet id of the server's last PUBLISH or PUBREL.
    last_id: u16,
}

impl Connection {
    fn new(world: &World, port: u16) -> Connection {
        let info = ConnectionInfo {
            listener: Arc::from("tcp:fuzz"),
            peer: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            handshake_timeout: Duration::from_secs(10),
            certificate_identity: CertificateIdentity::default(),
            mountpoint: Arc::from(world.mountpoint),
            rates: PublishRates::UNLIMITED,
        };
        Connection {
            channel: MqttChannel::new(world.broker.clone(), info, Arc::new(NoWakeup), world.now),
            input: BytesMut::new(),
            version: ProtocolVersion::V3_1_1,
            last_id: 1,
        }
    }
}

impl ClientSide for Connection {
    type Channel = MqttChannel;

    fn channel(&mut self) -> &mut MqttChannel {
        &mut self.channel
    }

    /// Checks what the channel wrote, in the version it speaks, and reads packet ids off it.
    fn receive(&mut self, out: &mut BytesMut) {
        if out.is_empty() {
            return;
        }
        let mut decoder = Decoder::with_version(self.channel.version(), u32::MAX);
        while !out.is_empty() {
            let packet = decoder
                .decode(out)
                .expect("the channel writes valid packets")
                .expect("the channel writes whole packets");
            match packet {
                Packet::Publish(publish) if publish.qos != QoS::AtMostOnce => {
                    self.last_id = publish.packet_id;
                }
                Packet::PubRel(response) => self.last_id = response.packet_id,
                _ => {}
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(input.store, input.mount.template());
    let mut connections = [Connection::new(&world, 1), Connection::new(&world, 2)];
    let mut out = BytesMut::new();
    for step in &input.steps {
        let mut timers = false;
        let mut closing = None;
        match step {
            Step::Bytes(conn, bytes) => {
                let connection = &mut connections[*conn as usize];
                connection.input.extend_from_slice(bytes);
                if connection
                    .channel
                    .handle_input(&mut connection.input, &mut out, world.now)
                    == Flow::Close
                {
                    closing = Some(*conn as usize);
                }
                connection.receive(&mut out);
            }
            Step::Packet(conn, packet) => {
                let connection = &mut connections[*conn as usize];
                if let ClientPacket::Connect { version, .. } = packet {
                    connection.version = match version {
                        Version::V3_1 => ProtocolVersion::V3_1,
                        Version::V3_1_1 => ProtocolVersion::V3_1_1,
                        Version::V5 => ProtocolVersion::V5,
                    };
                }
                let packet = packet.packet(connection.last_id);
                // What the codec cannot encode (a string too long) is not sent.
                if codec::encode(&packet, connection.version, &mut connection.input).is_ok()
                    && connection
                        .channel
                        .handle_input(&mut connection.input, &mut out, world.now)
                        == Flow::Close
                {
                    closing = Some(*conn as usize);
                }
                connection.receive(&mut out);
            }
            Step::Drop(conn) => closing = Some(*conn as usize),
            Step::World(step) => timers = world.step(step),
        }
        settle(
            &mut connections,
            closing,
            timers,
            &mut out,
            world.now,
            |index| Connection::new(&world, index as u16 + 1),
        );
    }
    close_all(&mut connections, world.now);
});
