//! The one way a stream listener sets up a connection, whatever protocol it serves (MQTT,
//! STOMP, CoAP over TCP and WebSocket): an optional PROXY protocol header, then TLS,
//! WebSocket or both, within one handshake deadline. What the layers establish about the
//! client (the address a proxy names, the certificate it presented) reaches the protocol's
//! channel in one [`Arrival`], so every adapter sees the same client the same way.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use gateway_config::{Rate, WebSocketConfig};
use mqtt_core::broker::Broker;
use mqtt_core::protocol::CertificateIdentity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::proxy::read_proxy_header;
use crate::stream::{
    drive_stream, serve_stream_listener, ConnWakeup, DriveStream, ListenerLimits, StreamChannel,
};
use crate::tls::TlsAcceptor;
use crate::ws::{accept_websocket, WsStream};
use crate::{LayeredTransport, NamedListener, SocketStream, Transport};

/// What a protocol travels in on a listener, from the socket up.
#[derive(Clone)]
pub enum Layers {
    Tcp,
    Tls(Arc<TlsAcceptor>),
    Ws(Arc<WebSocketConfig>),
    Wss(Arc<TlsAcceptor>, Arc<WebSocketConfig>),
}

impl Layers {
    pub fn is_websocket(&self) -> bool {
        matches!(self, Layers::Ws(_) | Layers::Wss(..))
    }
}

/// How a protocol's bytes ride WebSocket messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebSocketFraming {
    /// Binary messages as one byte stream (MQTT).
    ByteStream,
    /// Binary or text messages as one byte stream, for protocols whose browser clients
    /// send text (STOMP).
    TextOrBinary,
    /// One protocol message per WebSocket message, the protocol having no length of its
    /// own there (CoAP, RFC 8323 4).
    MessagePerRecord,
}

/// A stream listener: where it listens, its limits and its layers.
#[derive(Clone)]
pub struct LayeredListener {
    /// `KIND:NAME` (`tcp:default`, `stomp:ws:default`), as logs and auth rules name it.
    pub name: Arc<str>,
    pub max_connections: usize,
    pub max_conn_rate: Rate,
    /// From accept until the layers are set up: PROXY header, TLS handshake, HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Some(time allowed for it): every connection starts with a PROXY protocol header.
    pub proxy_protocol: Option<Duration>,
    pub layers: Layers,
}

impl LayeredListener {
    /// A listener of `named` with no PROXY protocol header.
    pub fn new(
        named: &NamedListener,
        max_connections: u32,
        max_conn_rate: Rate,
        handshake_timeout: Duration,
        layers: Layers,
    ) -> LayeredListener {
        LayeredListener {
            name: named.name.clone(),
            max_connections: max_connections as usize,
            max_conn_rate,
            handshake_timeout,
            proxy_protocol: None,
            layers,
        }
    }

    /// Expects a PROXY protocol header first on every connection, within `timeout`.
    pub fn with_proxy_protocol(mut self, timeout: Option<Duration>) -> LayeredListener {
        self.proxy_protocol = timeout;
        self
    }
}

/// What the layers established about a connection, for the protocol that starts on it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client: the socket's peer, or whom a trusted PROXY header or forwarding header
    /// named (port 0 when the header names none).
    pub peer: SocketAddr,
    pub accepted: Instant,
    /// What a client certificate says, for listeners that name clients by it.
    pub certificate_identity: CertificateIdentity,
    /// Whether the protocol's bytes come in WebSocket messages.
    pub over_websocket: bool,
}

/// The protocol a stream listener serves: it makes each connection's channel once the
/// layers are set up.
pub trait StreamProtocol: Send + Sync + 'static {
    type Channel: StreamChannel + 'static;

    /// How the protocol rides WebSocket, on listeners that have it.
    fn websocket_framing(&self) -> WebSocketFraming {
        WebSocketFraming::ByteStream
    }

    /// The channel of one connection; `wakeup` is the one its broker session must use.
    fn open(&self, arrival: Arrival, wakeup: &Arc<ConnWakeup>) -> Self::Channel;
}

pin_project_lite::pin_project! {
    /// One connection's future. Plain TCP, the common case, is the driver itself; anything
    /// with a handshake first (PROXY header, TLS, WebSocket upgrade) is an async block,
    /// boxed so that its size does not become every plain connection's size.
    #[project = AcceptedProjection]
    pub enum Accepted<C> {
        Plain { #[pin] drive: DriveStream<TcpStream, C> },
        Layered { setup: Pin<Box<dyn Future<Output = ()> + Send>> },
    }
}

impl<C: StreamChannel> Future for Accepted<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            AcceptedProjection::Plain { drive } => drive.poll(cx),
            AcceptedProjection::Layered { setup } => setup.as_mut().poll(cx),
        }
    }
}

/// Serves `protocol` on a bound listener until `shutdown` turns true.
pub async fn serve_layered<P: StreamProtocol>(
    listener: TcpListener,
    settings: LayeredListener,
    protocol: Arc<P>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = ListenerLimits {
        name: settings.name.clone(),
        max_connections: settings.max_connections,
        max_conn_rate: settings.max_conn_rate,
        metrics: Arc::default(),
    };
    broker.add_listener_figures(limits.name.clone(), limits.metrics.clone());
    let settings = Arc::new(settings);
    serve_stream_listener(listener, limits, shutdown, move |socket, peer, wakeup| {
        let arrival = Arrival {
            listener: settings.name.clone(),
            peer,
            accepted: Instant::now(),
            certificate_identity: CertificateIdentity::default(),
            over_websocket: settings.layers.is_websocket(),
        };
        if settings.proxy_protocol.is_none() && matches!(settings.layers, Layers::Tcp) {
            let channel = protocol.open(arrival, &wakeup);
            return Accepted::Plain {
                drive: drive_stream(socket, channel, wakeup, broker.clone()),
            };
        }
        let setup = Connection {
            arrival,
            protocol: protocol.clone(),
            wakeup,
            broker: broker.clone(),
        }
        .set_up(socket, settings.clone());
        Accepted::Layered {
            setup: Box::pin(setup),
        }
    })
    .await;
}

/// A connection whose layers are being set up.
struct Connection<P> {
    arrival: Arrival,
    protocol: Arc<P>,
    wakeup: Arc<ConnWakeup>,
    broker: Arc<Broker>,
}

impl<P: StreamProtocol> Connection<P> {
    async fn set_up(mut self, mut socket: TcpStream, settings: Arc<LayeredListener>) {
        let deadline =
            tokio::time::Instant::from_std(self.arrival.accepted + settings.handshake_timeout);
        if let Some(timeout) = settings.proxy_protocol {
            match tokio::time::timeout(timeout, read_proxy_header(&mut socket)).await {
                Ok(Ok(Some(named))) => self.client_named(named),
                // A health check of the proxy's own: served as the proxy.
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::info!(%error, "connection closed: bad PROXY protocol header");
                    return;
                }
                Err(_) => {
                    tracing::info!("connection closed: no PROXY protocol header in time");
                    return;
                }
            }
        }
        let (acceptor, websocket) = match &settings.layers {
            Layers::Tcp => return self.drive(socket).await,
            Layers::Ws(options) => {
                let plain = crate::PlainStream::new(socket);
                return self.upgrade(plain, options, deadline).await;
            }
            Layers::Tls(acceptor) => (acceptor, None),
            Layers::Wss(acceptor, options) => (acceptor, Some(options)),
        };
        // One path for every TLS listener, so the client certificate names the client
        // whatever travels over TLS.
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(socket)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::info!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!("TLS handshake timed out");
                return;
            }
        };
        self.arrival.certificate_identity = acceptor.certificate_identity(&tls);
        match websocket {
            None => self.drive(LayeredTransport::new(tls)).await,
            Some(options) => self.upgrade(tls, options, deadline).await,
        }
    }

    fn client_named(&mut self, client: SocketAddr) {
        self.arrival.peer = client;
        tracing::Span::current().record("client_addr", tracing::field::display(client));
    }

    /// Upgrades `stream` to WebSocket by `deadline`, then serves the protocol over it.
    async fn upgrade<S: SocketStream>(
        mut self,
        stream: S,
        options: &WebSocketConfig,
        deadline: tokio::time::Instant,
    ) {
        let upgrade = accept_websocket(stream, options, Some(self.arrival.peer));
        let mut upgraded = match tokio::time::timeout_at(deadline, upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(error)) => {
                tracing::info!(%error, "WebSocket upgrade failed");
                return;
            }
            Err(_) => {
                tracing::info!("WebSocket upgrade timed out");
                return;
            }
        };
        if let Some(ip) = upgraded.forwarded_for {
            // The header names no port; the socket's own would be the proxy's.
            self.client_named(SocketAddr::new(ip, 0));
        }
        tracing::debug!(subprotocol = ?upgraded.subprotocol, "WebSocket upgraded");
        frame_for(self.protocol.websocket_framing(), &mut upgraded.stream);
        self.drive(LayeredTransport::new(upgraded.stream)).await
    }

    fn drive<T: Transport>(self, transport: T) -> DriveStream<T, P::Channel> {
        let channel = self.protocol.open(self.arrival, &self.wakeup);
        drive_stream(transport, channel, self.wakeup, self.broker)
    }
}

fn frame_for<S: std::io::Read + std::io::Write>(
    framing: WebSocketFraming,
    stream: &mut WsStream<S>,
) {
    match framing {
        WebSocketFraming::ByteStream => {}
        WebSocketFraming::TextOrBinary => stream.accept_text_frames(),
        WebSocketFraming::MessagePerRecord => stream.preserve_messages(),
    }
}
