//! CoAP (RFC 7252 with Observe, RFC 7641, and block-wise transfers, RFC 7959): the pub/sub
//! resources `/ps/{topic}` and the connection resource `/mqtt/connection`, EMQX's URIs and
//! queries, over UDP and DTLS on the kit's CoAP message layer and datagram driver, and over
//! TCP, TLS, WebSocket and WebSocket over TLS (RFC 8323) on the kit's byte-stream driver.
//! The resources are one channel (`channel`) whatever carries them.

mod admission;
pub mod channel;
pub mod downlink;
pub mod framing;
pub mod reliable;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use adapter_kit::dtls::spawn_dtls_listeners;
use adapter_kit::layers::{Arrival, LayeredListener, Layers, StreamProtocol, WebSocketFraming};
use adapter_kit::{
    serve_datagram_listener, ConnWakeup, DatagramChannel, DatagramMetrics, Demux, Flow, Launch,
    NamedListener, Seeds, StartError, StreamChannel, UdpListenerSettings,
};
use bytes::{Bytes, BytesMut};
use gateway_config::{Config, ListenerKind};
use mqtt_core::broker::Broker;
use mqtt_core::rate::PublishRates;
use mqtt_core::session::Wakeup;
use tokio::net::UdpSocket;
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
async fn serve_udp(
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
    let seeds = Seeds::default();
    serve_datagram_listener(
        socket,
        limits,
        demux,
        metrics,
        broker,
        shutdown,
        move |peer, wakeup| {
            CoapChannel::new(
                channel_broker.clone(),
                settings.clone(),
                Some(peer),
                wakeup,
                seeds.next(peer),
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
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        let flow = self.channel.shutdown(&mut self.messages);
        self.flush(out);
        flow
    }
    fn handle_closed(&mut self, now: Instant) {
        self.channel.handle_closed(now);
    }
}

/// CoAP over TCP or WebSocket (RFC 8323) as the kit's stream listeners serve it.
struct CoapOverStream {
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    seeds: Seeds,
}

impl StreamProtocol for CoapOverStream {
    type Channel = CoapStream;

    fn websocket_framing(&self) -> WebSocketFraming {
        WebSocketFraming::MessagePerRecord
    }

    fn open(&self, arrival: Arrival, wakeup: &Arc<ConnWakeup>) -> CoapStream {
        let framing = if arrival.over_websocket {
            Framing::WebSocket
        } else {
            Framing::Tcp
        };
        let channel = CoapStream::new(
            CoapChannel::new_stream(
                self.broker.clone(),
                self.settings.clone(),
                Some(arrival.peer),
                wakeup.clone(),
                framing,
                self.seeds.next(arrival.peer),
                arrival.accepted,
            )
            .with_certificate_identity(arrival.certificate_identity),
        );
        // The first poll sends our CSM without waiting for the client's.
        wakeup.wake();
        channel
    }
}

/// The ALPN protocol of CoAP over TLS (RFC 8323).
const COAP_ALPN: &str = "coap";

/// Starts every enabled CoAP listener of `config`:
/// `gateway.coap.listeners.{udp,dtls,tcp,ssl,ws,wss}`; a DTLS or TLS one only once it has
/// credentials.
pub fn start(config: &Config, launch: &mut Launch) -> Result<(), StartError> {
    let coap = &config.gateway.coap;
    if !coap.enable {
        return Ok(());
    }
    // One registry for every datagram listener: a client id names one client.
    let clients = launch.shared::<downlink::Clients>();
    for (name, l) in coap.listeners.udp.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::CoapUdp, name);
        let (socket, bound) = launch.bind_udp(&named, l.bind_addr(), false)?;
        let settings = Arc::new(Settings {
            clients: clients.clone(),
            ..Settings::from_config(named.name.clone(), coap, l)
        });
        launch
            .broker()
            .add_listener_figures(named.name.clone(), settings.transmission.counters.clone());
        let serve = serve_udp(
            socket,
            UdpListenerSettings::from_config(named.name.clone(), l),
            settings,
            launch.broker().clone(),
            Arc::new(DatagramMetrics::default()),
            launch.shutdown_signal(),
        );
        launch.spawn_listener("CoAP", &named, bound, serve);
    }
    let broker = launch.broker().clone();
    spawn_dtls_listeners(
        launch,
        "CoAP",
        ListenerKind::CoapDtls,
        &coap.listeners.dtls,
        |named, udp| {
            let settings = Arc::new(Settings {
                clients: clients.clone(),
                ..Settings::from_config(named.name.clone(), coap, udp)
            });
            let broker = broker.clone();
            broker.add_listener_figures(named.name.clone(), settings.transmission.counters.clone());
            move |peer, wakeup, seed, identity| {
                CoapChannel::new(
                    broker.clone(),
                    settings.clone(),
                    Some(peer),
                    wakeup,
                    seed,
                    Instant::now(),
                )
                .with_transport_identity(identity)
            }
        },
    )?;
    // The layers' handshakes get the heartbeat interval, as a silent client would.
    let timeout = coap.heartbeat.get();
    // A stream listener's own mountpoint, or else the gateway's.
    let protocol = |launch: &Launch,
                    named: &NamedListener,
                    mountpoint: &str,
                    max_size: u32,
                    rates: PublishRates| {
        let mountpoint = if mountpoint.is_empty() {
            &coap.mountpoint
        } else {
            mountpoint
        };
        let settings = Settings::for_listener(
            named.name.clone(),
            coap,
            mountpoint,
            max_size as usize,
            rates,
        );
        CoapOverStream {
            broker: launch.broker().clone(),
            settings: Arc::new(settings),
            seeds: Seeds::default(),
        }
    };
    for (name, l) in coap.listeners.tcp.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::CoapTcp, name);
        let layers = Layers::Tcp;
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let coap = protocol(launch, &named, &l.mountpoint, l.max_message_size, rates);
        launch.serve_stream("CoAP", &named, l.bind_addr(), settings, coap)?;
    }
    for (name, l) in coap.listeners.ssl.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::CoapSsl, name);
        let Some(acceptor) = launch.tls_acceptor(&named, &l.ssl_options, &[COAP_ALPN])? else {
            continue;
        };
        let layers = Layers::Tls(acceptor);
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let coap = protocol(launch, &named, &l.mountpoint, l.max_message_size, rates);
        launch.serve_stream("CoAP", &named, l.bind_addr(), settings, coap)?;
    }
    for (name, l) in coap.listeners.ws.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::CoapWs, name);
        let layers = Layers::Ws(Arc::new(l.websocket()));
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let coap = protocol(launch, &named, &l.mountpoint, l.max_message_size, rates);
        launch.serve_stream("CoAP", &named, l.bind_addr(), settings, coap)?;
    }
    for (name, l) in coap.listeners.wss.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::CoapWss, name);
        // HTTP is what the client negotiates here, if anything: no CoAP ALPN.
        let Some(acceptor) = launch.tls_acceptor(&named, &l.ssl_options, &[])? else {
            continue;
        };
        let layers = Layers::Wss(acceptor, Arc::new(l.websocket()));
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let coap = protocol(launch, &named, &l.mountpoint, l.max_message_size, rates);
        launch.serve_stream("CoAP", &named, l.bind_addr(), settings, coap)?;
    }
    Ok(())
}
