//! LwM2M 1.0 / 1.1 over UDP: devices register over CoAP (the kit's message layer) and are
//! managed from MQTT with EMQX's topics and JSON commands.

pub mod channel;
pub mod command;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use adapter_kit::{
    serve_datagram_listener, DatagramChannel, DatagramMetrics, DatagramSettings, Demux, Flow,
    UdpListenerSettings,
};
use bytes::Bytes;
use mqtt_core::broker::Broker;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub use channel::{Lwm2mChannel, Settings, LWM2M_NAMESPACE};
pub use translations::lwm2m::objects::ObjectRegistry;

impl DatagramChannel for Lwm2mChannel {
    fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        Lwm2mChannel::handle_datagram(self, datagram, out, now)
    }
    fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        Lwm2mChannel::handle_wakeup(self, out, now)
    }
    fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        Lwm2mChannel::handle_timeout(self, out, now)
    }
    fn next_deadline(&self) -> Option<Instant> {
        Lwm2mChannel::next_deadline(self)
    }
    fn shutdown(&mut self, out: &mut Vec<Bytes>) -> Flow {
        Lwm2mChannel::shutdown(self, out)
    }
    fn handle_closed(&mut self, now: Instant) {
        Lwm2mChannel::handle_closed(self, now)
    }
    fn rebindable_identity(&self) -> Option<Arc<str>> {
        self.endpoint()
    }
}

/// One peer per source address; a device that comes back from another address (NAT
/// rebinding, a new socket) is recognised by the endpoint its update names, and keeps its
/// registration.
struct Lwm2mDemux;

impl Demux for Lwm2mDemux {
    fn sub_key(&self, _datagram: &Bytes) -> Option<Bytes> {
        None
    }
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>> {
        channel::requested_identity(datagram)
    }
    fn wrap(&self, _sub_key: &Bytes, datagram: Bytes) -> Bytes {
        datagram
    }
}

/// Serves LwM2M on a bound UDP socket until `shutdown` turns true.
pub async fn serve_udp(
    socket: UdpSocket,
    listener: UdpListenerSettings,
    settings: Arc<Settings>,
    broker: Arc<Broker>,
    metrics: Arc<DatagramMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = DatagramSettings {
        name: listener.name.clone(),
        max_peers: listener.max_peers,
        // One byte more than accepted, so an oversized datagram is seen as such.
        max_datagram_size: listener.max_packet_size.saturating_add(1),
        max_queued_datagrams: listener.max_queued_datagrams,
        beacon: None,
    };
    let channel_broker = broker.clone();
    let seeds = RandomState::new();
    let counter = AtomicU64::new(0);
    serve_datagram_listener(
        socket,
        limits,
        Lwm2mDemux,
        metrics,
        broker,
        shutdown,
        move |peer, wakeup| {
            let seed = seeds.hash_one((peer, counter.fetch_add(1, Ordering::Relaxed)));
            Lwm2mChannel::new(
                channel_broker.clone(),
                settings.clone(),
                Some(peer),
                wakeup,
                seed,
                Instant::now(),
            )
        },
    )
    .await;
}
