//! CoAP (RFC 7252 with Observe, RFC 7641, and block-wise transfers, RFC 7959): the pub/sub
//! resources `/ps/{topic}` and the connection resource `/mqtt/connection`, EMQX's URIs and
//! queries, over UDP on the kit's CoAP message layer and datagram driver, and over TCP and
//! WebSocket (RFC 8323) on the kit's byte-stream driver. The resources are one channel
//! (`channel`) whatever carries them.

mod admission;
pub mod channel;
pub mod framing;
pub mod reliable;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use std::io;
use std::net::SocketAddr;

use adapter_kit::tcp_or_ws::drive_tcp_or_ws;
use adapter_kit::ws::WsStream;
use adapter_kit::{
    serve_datagram_listener, serve_stream_listener, DatagramChannel, DatagramMetrics, Demux, Flow,
    ListenerLimits, StreamChannel, UdpListenerSettings,
};
use bytes::{Bytes, BytesMut};
use gateway_config::Rate;
use mqtt_core::broker::Broker;
use mqtt_core::session::Wakeup;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use framing::Framing;

pub use admission::AuthFailureLimit;
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
        CoapChannel::rebindable_identity(self)
    }
    fn vouch(&mut self, datagram: &Bytes, _from: SocketAddr, _now: Instant) -> bool {
        CoapChannel::vouch(self, datagram)
    }
    fn rebound(&mut self, address: SocketAddr) {
        CoapChannel::rebound(self, address)
    }
    fn address_validated(&self) -> bool {
        CoapChannel::address_validated(self)
    }
    fn take_yield_request(&mut self) -> bool {
        CoapChannel::take_yield_request(self)
    }
}

/// One peer per source address, except that in connectionless mode a request from a new
/// address naming a client id that a peer elsewhere holds is a claim on that peer: the peer
/// moves there (NAT rebinding: the device's session and observations follow it) only when
/// the request presents the credentials its client was admitted with. In connection mode
/// the client proves itself with its token instead, checked by a channel of its own.
struct CoapDemux {
    connectionless: bool,
}

impl Demux for CoapDemux {
    fn sub_key(&self, _datagram: &Bytes) -> Option<Bytes> {
        None
    }
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>> {
        if !self.connectionless {
            return None;
        }
        channel::requested_client_id(datagram).map(Arc::from)
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
    // One byte more than accepted, so an oversized datagram is seen as such rather
    // than arriving truncated.
    let limits = listener.limits(listener.max_packet_size.saturating_add(1), None);
    let demux = CoapDemux {
        connectionless: !settings.connection_required,
    };
    let channel_broker = broker.clone();
    let seeds = RandomState::new();
    let counter = AtomicU64::new(0);
    serve_datagram_listener(
        socket,
        limits,
        demux,
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

/// A CoAP channel on a byte stream (RFC 8323): the driver's bytes are cut into messages
/// by the connection's framing, and the channel's messages appended to its output.
pub struct CoapStream {
    channel: CoapChannel,
    framing: Framing,
    max_message_size: usize,
    messages: Vec<Bytes>,
    started: bool,
}

impl CoapStream {
    pub fn new(channel: CoapChannel) -> CoapStream {
        CoapStream {
            framing: channel.framing().unwrap_or(Framing::Tcp),
            max_message_size: channel.max_message_size().unwrap_or(usize::MAX),
            channel,
            messages: Vec::new(),
            started: false,
        }
    }

    /// Our CSM goes first, whatever wakes the connection first.
    fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.channel.start(&mut self.messages);
        }
    }

    fn flush(&mut self, out: &mut BytesMut) {
        for message in self.messages.drain(..) {
            out.extend_from_slice(&message);
        }
    }
}

impl StreamChannel for CoapStream {
    fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, now: Instant) -> Flow {
        self.start();
        let flow = loop {
            match framing::decode(self.framing, input, self.max_message_size) {
                Ok(None) => break Flow::Continue,
                Ok(Some(frame)) => {
                    if self.channel.handle_frame(frame, &mut self.messages, now) == Flow::Close {
                        break Flow::Close;
                    }
                }
                Err(error) => {
                    tracing::info!(%error, "malformed CoAP message");
                    break self.channel.abort(&error.to_string(), &mut self.messages);
                }
            }
        };
        self.flush(out);
        flow
    }
    fn handle_wakeup(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        self.start();
        let flow = self.channel.handle_wakeup(&mut self.messages, now);
        self.flush(out);
        flow
    }
    fn handle_timeout(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        self.start();
        let flow = self.channel.handle_timeout(&mut self.messages, now);
        self.flush(out);
        flow
    }
    fn next_deadline(&self) -> Option<Instant> {
        self.channel.next_deadline()
    }
    fn wants_drain(&self) -> bool {
        self.channel.wants_drain()
    }
    fn take_yield_request(&mut self) -> bool {
        self.channel.take_yield_request()
    }
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        let flow = self.channel.shutdown(&mut self.messages);
        self.flush(out);
        flow
    }
    fn handle_closed(&mut self, now: Instant) {
        self.channel.handle_closed(now);
    }
}

/// What CoAP travels in on a stream listener.
pub use adapter_kit::tcp_or_ws::StreamLayers as Layers;

#[derive(Clone)]
pub struct StreamListenerSettings {
    /// `tcp:NAME` or `ws:NAME`.
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub max_connections: usize,
    pub max_conn_rate: Rate,
    pub layers: Layers,
}

pub async fn bind_stream(settings: &StreamListenerSettings) -> io::Result<TcpListener> {
    TcpListener::bind(settings.bind).await
}

/// Serves CoAP over TCP or WebSocket on a bound listener until `shutdown` turns true.
pub async fn serve_stream(
    listener: TcpListener,
    settings: StreamListenerSettings,
    channel_settings: Arc<Settings>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = ListenerLimits {
        name: settings.name.clone(),
        max_connections: settings.max_connections,
        max_conn_rate: settings.max_conn_rate,
    };
    let seeds = RandomState::new();
    let counter = AtomicU64::new(0);
    serve_stream_listener(listener, limits, shutdown, move |socket, peer, wakeup| {
        let seed = seeds.hash_one((peer, counter.fetch_add(1, Ordering::Relaxed)));
        let accepted = Instant::now();
        let framing = match settings.layers {
            Layers::Tcp => Framing::Tcp,
            Layers::Ws(_) => Framing::WebSocket,
        };
        let channel = CoapStream::new(CoapChannel::new_stream(
            broker.clone(),
            channel_settings.clone(),
            Some(peer),
            wakeup.clone(),
            framing,
            seed,
            accepted,
        ));
        // The first poll sends our CSM without waiting for the client's.
        wakeup.wake();
        // The upgrade gets the heartbeat interval, as a silent client would.
        drive_tcp_or_ws(
            socket,
            &settings.layers,
            accepted + channel_settings.heartbeat,
            WsStream::preserve_messages,
            channel,
            wakeup,
            broker.clone(),
        )
    })
    .await;
}
