//! Two STOMP connections on a broker with authentication on (a password file, an ACL
//! denying what it does not name) and a per-client mountpoint: arbitrary bytes, or frames
//! the fuzzer builds (CONNECT with the login, passcode and client-id it picks, SEND,
//! SUBSCRIBE, ACK and NACK of the messages received, transactions, receipts), other
//! publishers, the store and the clock. The whole channel (decoder, CONNECT and its
//! refusals, sessions named by client-id and owned by their user, acknowledgement
//! windows, transactions, heart-beats, the delivery path); everything it writes must
//! decode as frames.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use adapter_stomp::frame::{encode, Command, Decoder, Frame, FrameLimits, Version};
use adapter_stomp::{Settings, StompChannel};
use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqtt_core::protocol::Flow;
use mqtt_core::rate::PublishRates;
use mqtt_core_fuzz::{
    close_all, config, settle, ClientId, ClientSide, Credentials, Filter, Mount, NoWakeup,
    StoreKind, Topic, World, WorldStep,
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
    Frame(Conn, ClientFrame),
    /// The transport is gone; the client connects again.
    Drop(Conn),
    World(WorldStep),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Versions {
    None,
    V1_0,
    V1_1,
    V1_2,
    All,
    Unknown,
}

impl Versions {
    fn header(self) -> Option<&'static str> {
        match self {
            Versions::None => None,
            Versions::V1_0 => Some("1.0"),
            Versions::V1_1 => Some("1.1"),
            Versions::V1_2 => Some("1.2"),
            Versions::All => Some("1.0,1.1,1.2"),
            Versions::Unknown => Some("3.0"),
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum AckMode {
    Auto,
    Client,
    ClientIndividual,
    Bad,
}

/// What an ACK or NACK names: the last MESSAGE received, or anything.
#[derive(Debug, Clone, Arbitrary)]
enum AckRef {
    Last,
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum ClientFrame {
    Connect {
        stomp: bool,
        versions: Versions,
        credentials: Credentials,
        client_id: Option<ClientId>,
        heart_beat: Option<(u16, u16)>,
    },
    Send {
        destination: Topic,
        body: Vec<u8>,
        receipt: Option<u8>,
        transaction: Option<u8>,
        content_type: bool,
        property: Option<(String, String)>,
    },
    Subscribe {
        id: u8,
        destination: Filter,
        ack: Option<AckMode>,
        receipt: Option<u8>,
    },
    Unsubscribe {
        id: u8,
        receipt: Option<u8>,
    },
    Ack {
        id: AckRef,
        transaction: Option<u8>,
    },
    Nack {
        id: AckRef,
        transaction: Option<u8>,
    },
    Begin(u8),
    Commit(u8),
    Abort(u8),
    Disconnect {
        receipt: Option<u8>,
    },
}

impl ClientFrame {
    fn frame(&self, last: &Delivered) -> Frame {
        let receipt = |frame: Frame, receipt: &Option<u8>| match receipt {
            Some(r) => frame.with_header("receipt", r.to_string()),
            None => frame,
        };
        let transaction = |frame: Frame, transaction: &Option<u8>| match transaction {
            Some(t) => frame.with_header("transaction", t.to_string()),
            None => frame,
        };
        let acknowledge = |command: Command, id: &AckRef, tx: &Option<u8>| {
            let frame = match id {
                AckRef::Last => Frame::new(command)
                    .with_header("id", last.ack.clone())
                    .with_header("message-id", last.message_id.clone())
                    .with_header("subscription", last.subscription.clone()),
                AckRef::Raw(id) => Frame::new(command)
                    .with_header("id", id.clone())
                    .with_header("message-id", id.clone()),
            };
            transaction(frame, tx)
        };
        match self {
            ClientFrame::Connect {
                stomp,
                versions,
                credentials,
                client_id,
                heart_beat,
            } => {
                let mut frame = Frame::new(if *stomp {
                    Command::Stomp
                } else {
                    Command::Connect
                })
                .with_header("host", "fuzz");
                if let Some(versions) = versions.header() {
                    frame = frame.with_header("accept-version", versions);
                }
                if let Some(login) = credentials.username() {
                    frame = frame.with_header("login", login);
                }
                if let Some(passcode) = credentials.password_text() {
                    frame = frame.with_header("passcode", passcode);
                }
                if let Some(client_id) = client_id {
                    frame = frame.with_header("client-id", client_id.text());
                }
                if let Some((send, receive)) = heart_beat {
                    frame = frame.with_header("heart-beat", format!("{send},{receive}"));
                }
                frame
            }
            ClientFrame::Send {
                destination,
                body,
                receipt: r,
                transaction: t,
                content_type,
                property,
            } => {
                let mut frame =
                    Frame::new(Command::Send).with_header("destination", destination.text());
                if *content_type {
                    frame = frame.with_header("content-type", "text/plain");
                }
                if let Some((name, value)) = property {
                    frame = frame.with_header(name, value.clone());
                }
                frame.body = Bytes::copy_from_slice(body);
                transaction(receipt(frame, r), t)
            }
            ClientFrame::Subscribe {
                id,
                destination,
                ack,
                receipt: r,
            } => {
                let mut frame = Frame::new(Command::Subscribe)
                    .with_header("id", id.to_string())
                    .with_header("destination", destination.text());
                if let Some(ack) = ack {
                    let mode = match ack {
                        AckMode::Auto => "auto",
                        AckMode::Client => "client",
                        AckMode::ClientIndividual => "client-individual",
                        AckMode::Bad => "sometimes",
                    };
                    frame = frame.with_header("ack", mode);
                }
                receipt(frame, r)
            }
            ClientFrame::Unsubscribe { id, receipt: r } => receipt(
                Frame::new(Command::Unsubscribe).with_header("id", id.to_string()),
                r,
            ),
            ClientFrame::Ack { id, transaction } => acknowledge(Command::Ack, id, transaction),
            ClientFrame::Nack { id, transaction } => acknowledge(Command::Nack, id, transaction),
            ClientFrame::Begin(t) => transaction(Frame::new(Command::Begin), &Some(*t)),
            ClientFrame::Commit(t) => transaction(Frame::new(Command::Commit), &Some(*t)),
            ClientFrame::Abort(t) => transaction(Frame::new(Command::Abort), &Some(*t)),
            ClientFrame::Disconnect { receipt: r } => receipt(Frame::new(Command::Disconnect), r),
        }
    }
}

/// What identifies the last MESSAGE a client received.
#[derive(Default)]
struct Delivered {
    ack: String,
    message_id: String,
    subscription: String,
}

/// One client's connection: the channel and what the client knows of it.
struct Connection {
    channel: StompChannel,
    input: BytesMut,
    /// What the client reads frames with; its version follows CONNECTED.
    decoder: Decoder,
    version: Version,
    last: Delivered,
}

const READ_LIMITS: FrameLimits = FrameLimits {
    max_headers: usize::MAX,
    max_headers_length: usize::MAX,
    max_body_length: usize::MAX,
};

impl Connection {
    fn new(world: &World, settings: &Arc<Settings>, index: usize, seed: u64) -> Connection {
        Connection {
            channel: StompChannel::new(
                world.broker.clone(),
                settings.clone(),
                Some(SocketAddr::from(([127, 0, 0, 1], 40_000 + index as u16))),
                Arc::new(NoWakeup),
                seed,
                world.now,
            ),
            input: BytesMut::new(),
            decoder: Decoder::new(READ_LIMITS),
            version: Version::V1_0,
            last: Delivered::default(),
        }
    }
}

impl ClientSide for Connection {
    type Channel = StompChannel;

    fn channel(&mut self) -> &mut StompChannel {
        &mut self.channel
    }

    /// Checks what the channel wrote: whole frames and heart-beats, and nothing else.
    fn receive(&mut self, out: &mut BytesMut) {
        while let Some(frame) = self
            .decoder
            .decode(out)
            .expect("the channel writes valid frames")
        {
            match frame.command {
                Command::Connected => {
                    self.version = frame
                        .header("version")
                        .and_then(Version::parse)
                        .unwrap_or(Version::V1_0);
                    self.decoder.set_version(self.version);
                }
                Command::Message => {
                    let header = |name| frame.header(name).unwrap_or_default().to_owned();
                    self.last = Delivered {
                        ack: header("ack"),
                        message_id: header("message-id"),
                        subscription: header("subscription"),
                    };
                }
                _ => {}
            }
        }
        assert!(out.is_empty(), "the channel writes whole frames");
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(input.store, input.mount.template());
    let settings = Arc::new(Settings::from_config(
        Arc::from("tcp:fuzz"),
        &config().gateway.stomp,
        input.mount.template(),
        PublishRates::UNLIMITED,
    ));
    let mut connections = [
        Connection::new(&world, &settings, 0, 1),
        Connection::new(&world, &settings, 1, 2),
    ];
    let mut out = BytesMut::new();
    for (number, step) in input.steps.iter().enumerate() {
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
            Step::Frame(conn, frame) => {
                let connection = &mut connections[*conn as usize];
                let frame = frame.frame(&connection.last);
                encode(&frame, connection.version, &mut connection.input);
                if connection
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
            |index| Connection::new(&world, &settings, index, number as u64 + 3),
        );
    }
    close_all(&mut connections, world.now);
});
