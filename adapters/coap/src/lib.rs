//! CoAP over UDP (RFC 7252 with Observe, RFC 7641, and block-wise transfers, RFC 7959): the pub/sub resources `/ps/{topic}` and
//! the connection resource `/mqtt/connection`, EMQX's URIs and queries, on the kit's CoAP
//! message layer and datagram driver.

pub mod channel;

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

pub use channel::{
    CoapChannel, Settings, COAP_NAMESPACE, UNDERSTOOD_CRITICAL, UNDERSTOOD_CRITICAL_BLOCKWISE,
};

impl DatagramChannel for CoapChannel {
    fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        CoapChannel::handle_datagram(self, datagram, out, now)
    }
    fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        CoapChannel::handle_wakeup(self, out, now)
    }
    fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        CoapChannel::handle_timeout(self, out, now)
    }
    fn next_deadline(&self) -> Option<Instant> {
        CoapChannel::next_deadline(self)
    }
    fn shutdown(&mut self, out: &mut Vec<Bytes>) -> Flow {
        CoapChannel::shutdown(self, out)
    }
    fn handle_closed(&mut self, now: Instant) {
        CoapChannel::handle_closed(self, now)
    }
    fn rebindable_identity(&self) -> Option<Arc<str>> {
        None
    }
}

/// One peer per source address: a client coming back from another address proves itself
/// with its connection token instead.
struct CoapDemux;

impl Demux for CoapDemux {
    fn sub_key(&self, _datagram: &Bytes) -> Option<Bytes> {
        None
    }
    fn identity(&self, _datagram: &Bytes) -> Option<Arc<str>> {
        None
    }
    fn wrap(&self, _sub_key: &Bytes, datagram: Bytes) -> Bytes {
        datagram
    }
}

/// Serves CoAP on a bound UDP socket until `shutdown` turns true.
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
        // One byte more than accepted, so an oversized datagram is seen as such rather
        // than arriving truncated.
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
        CoapDemux,
        metrics,
        broker,
        shutdown,
        move |peer, wakeup| {
            let seed = seeds.hash_one((peer, counter.fetch_add(1, Ordering::Relaxed)));
            CoapChannel::new(
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
