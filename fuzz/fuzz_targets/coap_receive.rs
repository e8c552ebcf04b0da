//! A CoAP client over UDP on a broker with authentication on (a password file, an ACL
//! denying what it does not name) and a per-client mountpoint: arbitrary datagrams and
//! requests of the pub/sub and connection resources with the credentials, client ids,
//! topics and tokens the fuzzer picks, the client's acknowledgements, other publishers,
//! the store and the clock. The whole receive path (message layer, resources, sessions,
//! observe, block-wise, retransmission, the refusals) and the send path of notifications;
//! everything the channel sends must be valid CoAP.

#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use adapter_coap::{CoapChannel, Settings};
use adapter_kit::coap::{MessageClass, MessageType, Packet};
use arbitrary::Arbitrary;
use bytes::Bytes;
use gateway_config::CoapNotifyType;
use libfuzzer_sys::fuzz_target;
use mqtt_core::protocol::Flow;
use mqtt_core_fuzz::coap::{self as request, connection_token};
use mqtt_core_fuzz::{Mount, NoWakeup, StoreKind, World, WorldStep};

#[derive(Debug, Arbitrary)]
struct Input {
    connection_required: bool,
    separate_response: bool,
    confirmable_notifications: bool,
    mount: Mount,
    store: StoreKind,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Datagram(Vec<u8>),
    Request(request::Request),
    /// The client acknowledges, or resets, the last confirmable message the channel sent.
    Answer {
        reset: bool,
    },
    /// The listener forgets the peer; its next datagram makes a new channel.
    Forget,
    World(WorldStep),
}

/// What the client has learnt from the channel's datagrams.
#[derive(Default)]
struct Client {
    token: Option<String>,
    last_confirmable: Option<u16>,
}

impl Client {
    fn read(&mut self, out: &mut Vec<Bytes>) {
        for datagram in out.drain(..) {
            let packet = Packet::from_bytes(&datagram).expect("the channel sends valid CoAP");
            if packet.header.get_type() == MessageType::Confirmable {
                self.last_confirmable = Some(packet.header.message_id);
            }
            if let Some(token) = connection_token(&packet) {
                self.token = Some(token);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(input.store, input.mount.template());
    let settings = Arc::new(Settings {
        notify_type: if input.confirmable_notifications {
            CoapNotifyType::Con
        } else {
            CoapNotifyType::Qos
        },
        separate_response: input.separate_response,
        ..mqtt_core_fuzz::coap::settings("udp:fuzz", 1024, input.mount, input.connection_required)
    });
    let peer = Some(SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let new_channel = |world: &World, seed: u64| {
        CoapChannel::new(
            world.broker.clone(),
            settings.clone(),
            peer,
            Arc::new(NoWakeup),
            seed,
            world.now,
        )
    };
    let mut channel = new_channel(&world, 1);
    let mut client = Client::default();
    let mut out = Vec::new();
    for (index, step) in input.steps.iter().enumerate() {
        let mut timers = false;
        let flow = match step {
            Step::Datagram(datagram) => {
                channel.handle_datagram(Bytes::copy_from_slice(datagram), &mut out, world.now)
            }
            Step::Request(request) => {
                let packet = request.packet(client.token.as_deref());
                match packet.to_bytes() {
                    Ok(datagram) => {
                        channel.handle_datagram(Bytes::from(datagram), &mut out, world.now)
                    }
                    Err(_) => Flow::Continue,
                }
            }
            Step::Answer { reset } => match client.last_confirmable {
                Some(message_id) => {
                    let mut packet = Packet::new();
                    packet.header.set_type(if *reset {
                        MessageType::Reset
                    } else {
                        MessageType::Acknowledgement
                    });
                    packet.header.code = MessageClass::Empty;
                    packet.header.message_id = message_id;
                    let datagram = packet.to_bytes().expect("an empty message encodes");
                    channel.handle_datagram(Bytes::from(datagram), &mut out, world.now)
                }
                None => Flow::Continue,
            },
            Step::Forget => Flow::Close,
            Step::World(step) => {
                timers = world.step(step);
                Flow::Continue
            }
        };
        client.read(&mut out);
        let mut flow = flow;
        if flow == Flow::Continue {
            flow = channel.handle_wakeup(&mut out, world.now);
            client.read(&mut out);
        }
        if flow == Flow::Continue
            && timers
            && channel.next_deadline().is_some_and(|due| due <= world.now)
        {
            flow = channel.handle_timeout(&mut out, world.now);
            client.read(&mut out);
        }
        if flow == Flow::Close {
            channel.handle_closed(world.now);
            channel = new_channel(&world, index as u64 + 2);
        }
    }
    channel.handle_closed(world.now);
});
