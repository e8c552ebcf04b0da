//! A CoAP client over TCP or WebSocket framing (RFC 8323) on a broker with authentication
//! on and a per-client mountpoint: arbitrary bytes (a message may span steps), CSM and
//! the other signals, and requests of the pub/sub and connection resources with the
//! credentials, client ids, topics and tokens the fuzzer picks, beside other publishers,
//! the store and the clock. A connection the channel closes is followed by a new one.
//! Whatever the channel writes must decode as whole messages of the same framing.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use adapter_coap::framing::{self, Frame, Framing};
use adapter_coap::{CoapChannel, CoapStream};
use adapter_kit::coap::{decode_framed, encode_framed};
use adapter_kit::StreamChannel;
use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqtt_core::protocol::Flow;
use mqtt_core_fuzz::coap::{self as request, connection_token, settings, uint};
use mqtt_core_fuzz::{Mount, NoWakeup, StoreKind, World, WorldStep};

#[derive(Debug, Arbitrary)]
struct Input {
    websocket: bool,
    connection_required: bool,
    mount: Mount,
    store: StoreKind,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Bytes(Vec<u8>),
    /// The client's CSM (7.01), with a Max-Message-Size option or none.
    Csm {
        max_message_size: Option<u16>,
    },
    /// A signalling message: 7.02 Ping, 7.03 Pong, 7.04 Release, 7.05 Abort, or another.
    Signal {
        code: u8,
        body: Vec<u8>,
    },
    Request(request::Request),
    /// The connection ends; the client connects again.
    Reconnect,
    World(WorldStep),
}

/// Checks what the channel wrote and learns the connection token from it.
fn read(framing: Framing, out: &mut BytesMut, token: &mut Option<String>) {
    while let Some(frame) = framing::decode(framing, out, usize::MAX).expect("we frame right") {
        let packet =
            decode_framed(frame.code, &frame.token, &frame.body).expect("we send valid CoAP");
        if let Some(new) = connection_token(&packet) {
            *token = Some(new);
        }
    }
    assert!(out.is_empty(), "only whole messages are written");
}

fn frame(framing: Framing, code: u8, body: Vec<u8>, input: &mut BytesMut) {
    let frame = Frame {
        code,
        token: Bytes::new(),
        body: Bytes::from(body),
    };
    framing::encode(framing, &frame, input);
}

fuzz_target!(|input: Input| {
    let framing = if input.websocket {
        Framing::WebSocket
    } else {
        Framing::Tcp
    };
    let mut world = World::new(input.store, input.mount.template());
    let settings = Arc::new(settings(
        "tcp:fuzz",
        2048,
        input.mount,
        input.connection_required,
    ));
    let peer = Some(SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let connect = |world: &World, seed: u64| {
        CoapStream::new(CoapChannel::new_stream(
            world.broker.clone(),
            settings.clone(),
            peer,
            Arc::new(NoWakeup),
            framing,
            seed,
            world.now,
        ))
    };
    let mut stream = connect(&world, 1);
    let mut token = None;
    let mut out = BytesMut::new();
    let mut bytes = BytesMut::new();
    for (index, step) in input.steps.iter().enumerate() {
        let mut timers = false;
        let mut flow = Flow::Continue;
        match step {
            Step::Bytes(more) => bytes.extend_from_slice(more),
            Step::Csm { max_message_size } => {
                // Option 2 (Max-Message-Size): delta 2 and the value's length.
                let body = match max_message_size {
                    Some(size) => {
                        let value = uint(u32::from(*size));
                        let mut body = vec![0x20 | value.len() as u8];
                        body.extend_from_slice(&value);
                        body
                    }
                    None => Vec::new(),
                };
                frame(framing, 0xE1, body, &mut bytes);
            }
            Step::Signal { code, body } => {
                let code = if code & 0xE0 == 0xE0 {
                    *code
                } else {
                    0xE2 + code % 4
                };
                frame(framing, code, body.clone(), &mut bytes);
            }
            Step::Request(request) => {
                if let Ok((code, token_bytes, body)) =
                    encode_framed(&request.packet(token.as_deref()))
                {
                    let frame = Frame {
                        code,
                        token: Bytes::from(token_bytes),
                        body: Bytes::from(body),
                    };
                    framing::encode(framing, &frame, &mut bytes);
                }
            }
            Step::Reconnect => flow = Flow::Close,
            Step::World(step) => timers = world.step(step),
        }
        if flow == Flow::Continue && !bytes.is_empty() {
            flow = stream.handle_input(&mut bytes, &mut out, world.now);
            read(framing, &mut out, &mut token);
        }
        if flow == Flow::Continue {
            flow = stream.handle_wakeup(&mut out, world.now);
            read(framing, &mut out, &mut token);
        }
        if flow == Flow::Continue
            && timers
            && stream.next_deadline().is_some_and(|due| due <= world.now)
        {
            flow = stream.handle_timeout(&mut out, world.now);
            read(framing, &mut out, &mut token);
        }
        if flow == Flow::Close {
            stream.handle_closed(world.now);
            stream = connect(&world, index as u64 + 2);
            bytes.clear();
        }
    }
    stream.handle_closed(world.now);
});
