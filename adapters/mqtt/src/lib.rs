//! Native MQTT listeners: the MQTT channel of the core on the kit's stream driver, over
//! TCP, TLS, WebSocket, WebSocket over TLS or a QUIC stream. The channel does not know which.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use adapter_kit::proxy::read_proxy_header;
use adapter_kit::quic::QuicListener;
use adapter_kit::tls::TlsAcceptor;
use adapter_kit::ws::{accept_websocket, Upgraded, WsStream};
use adapter_kit::{
    drive_stream, serve_stream_listener, ConnWakeup, DriveStream, Flow, LayeredTransport,
    ListenerLimits, PlainStream, SocketStream, StreamChannel, Transport,
};
use bytes::BytesMut;
use gateway_config::{Rate, WebSocketConfig};
use mqtt_core::broker::Broker;
use mqtt_core::protocol::{CertificateIdentity, ConnectionInfo, MqttChannel};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The MQTT channel as the kit's driver sees it.
struct MqttStream(MqttChannel);

impl StreamChannel for MqttStream {
    fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, now: Instant) -> Flow {
        self.0.handle_input(input, out, now)
    }
    fn handle_wakeup(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        self.0.handle_wakeup(out, now)
    }
    fn handle_timeout(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        self.0.handle_timeout(out, now)
    }
    fn next_deadline(&self) -> Option<Instant> {
        self.0.next_deadline()
    }
    fn wants_drain(&self) -> bool {
        self.0.wants_drain()
    }
    fn take_yield_request(&mut self) -> bool {
        self.0.take_yield_request()
    }
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        self.0.shutdown(out)
    }
    fn handle_closed(&mut self, now: Instant) {
        self.0.handle_closed(now)
    }
}

/// What MQTT travels in on a listener, from the socket up.
#[derive(Clone)]
pub enum Layers {
    Tcp,
    Tls(Arc<TlsAcceptor>),
    Ws(Arc<WebSocketConfig>),
    Wss(Arc<TlsAcceptor>, Arc<WebSocketConfig>),
}

#[derive(Clone)]
pub struct ListenerSettings {
    /// `KIND:NAME` (`tcp:default`, `wss:default`), as logs and auth rules name the listener.
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub max_connections: usize,
    /// From accept to a complete CONNECT, TLS handshake and HTTP upgrade included.
    pub handshake_timeout: Duration,
    /// Some(time allowed for it): every connection starts with a PROXY protocol header.
    pub proxy_protocol: Option<Duration>,
    pub max_conn_rate: Rate,
    /// Template with `${clientid}` and `${username}`; `""` for none.
    pub mountpoint: Arc<str>,
    pub layers: Layers,
}

/// Binds the listener; errors here are start-up errors the caller reports.
pub async fn bind(settings: &ListenerSettings) -> io::Result<TcpListener> {
    TcpListener::bind(settings.bind).await
}

/// Serves MQTT on a bound listener until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = ListenerLimits {
        name: settings.name.clone(),
        max_connections: settings.max_connections,
        max_conn_rate: settings.max_conn_rate,
    };
    serve_stream_listener(
        listener,
        limits,
        shutdown,
        move |mut socket, peer, wakeup| {
            let connection = Connection::new(
                &broker,
                &settings.name,
                peer,
                settings.handshake_timeout,
                &settings.mountpoint,
                wakeup,
            );
            if settings.proxy_protocol.is_none() && matches!(settings.layers, Layers::Tcp) {
                return Accepted::Plain {
                    drive: connection.drive(socket),
                };
            }
            let settings = settings.clone();
            let setup = async move {
                let deadline = tokio::time::Instant::from_std(
                    connection.accepted + settings.handshake_timeout,
                );
                let mut connection = connection;
                if let Some(timeout) = settings.proxy_protocol {
                    match tokio::time::timeout(timeout, read_proxy_header(&mut socket)).await {
                        Ok(Ok(Some(named))) => {
                            connection.info.peer = Some(named);
                            tracing::Span::current()
                                .record("client_addr", tracing::field::display(named));
                        }
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
                let (acceptor, websocket) = match settings.layers {
                    Layers::Tcp => return connection.drive(socket).await,
                    Layers::Ws(options) => {
                        return connection
                            .upgrade(PlainStream::new(socket), &options, deadline)
                            .await
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
                let connection = connection.with_identity(acceptor.certificate_identity(&tls));
                match websocket {
                    None => connection.drive(LayeredTransport::new(tls)).await,
                    Some(options) => connection.upgrade(tls, &options, deadline).await,
                }
            };
            Accepted::Layered {
                setup: Box::pin(setup),
            }
        },
    )
    .await;
}

/// What a QUIC listener needs besides its endpoint.
#[derive(Clone)]
pub struct QuicListenerSettings {
    /// `quic:NAME`.
    pub name: Arc<str>,
    pub max_connections: usize,
    /// From the client's first packet to a complete CONNECT, QUIC handshake and the opening
    /// of the stream included.
    pub handshake_timeout: Duration,
    pub max_conn_rate: Rate,
    /// Template with `${clientid}` and `${username}`; `""` for none.
    pub mountpoint: Arc<str>,
}

/// How long shutdown waits for closing QUIC connections to send their last packets.
const QUIC_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves MQTT on a bound QUIC endpoint until `shutdown` turns true: one bidirectional
/// stream per connection carries the session.
pub async fn serve_quic(
    listener: QuicListener,
    settings: QuicListenerSettings,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let endpoint = listener.endpoint().clone();
    let limits = ListenerLimits {
        name: settings.name.clone(),
        max_connections: settings.max_connections,
        max_conn_rate: settings.max_conn_rate,
    };
    serve_stream_listener(listener, limits, shutdown, move |incoming, peer, wakeup| {
        let connection = Connection::new(
            &broker,
            &settings.name,
            peer,
            settings.handshake_timeout,
            &settings.mountpoint,
            wakeup,
        );
        let deadline =
            tokio::time::Instant::from_std(connection.accepted + settings.handshake_timeout);
        async move {
            match tokio::time::timeout_at(deadline, incoming.establish()).await {
                Ok(Ok(stream)) => {
                    let identity = stream.certificate_identity();
                    let drive = connection.with_identity(identity).drive(stream);
                    let mut drive = std::pin::pin!(drive);
                    drive.as_mut().await;
                    drive.transport_mut().close().await;
                }
                Ok(Err(error)) => {
                    tracing::info!(%error, "QUIC connection closed before its stream")
                }
                Err(_) => tracing::info!("QUIC handshake or stream opening timed out"),
            }
        }
    })
    .await;
    // Connections closed at shutdown still have their CONNECTION_CLOSE to send.
    let _ = tokio::time::timeout(QUIC_DRAIN_TIMEOUT, endpoint.wait_idle()).await;
}

pin_project_lite::pin_project! {
    /// One connection's future. Plain TCP, the common case, is the driver itself; anything
    /// with a handshake first (PROXY header, TLS, WebSocket upgrade) is an async block,
    /// boxed so that its size does not become every plain connection's size.
    #[project = AcceptedProjection]
    enum Accepted {
        Plain { #[pin] drive: DriveStream<TcpStream, MqttStream> },
        Layered { setup: Pin<Box<dyn Future<Output = ()> + Send>> },
    }
}

impl Future for Accepted {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project() {
            AcceptedProjection::Plain { drive } => drive.poll(cx),
            AcceptedProjection::Layered { setup } => setup.as_mut().poll(cx),
        }
    }
}

/// One accepted connection, whatever carries it.
struct Connection {
    broker: Arc<Broker>,
    info: ConnectionInfo,
    accepted: Instant,
    wakeup: Arc<ConnWakeup>,
}

impl Connection {
    fn new(
        broker: &Arc<Broker>,
        listener: &Arc<str>,
        peer: SocketAddr,
        handshake_timeout: Duration,
        mountpoint: &Arc<str>,
        wakeup: Arc<ConnWakeup>,
    ) -> Connection {
        Connection {
            broker: broker.clone(),
            info: ConnectionInfo {
                listener: listener.clone(),
                peer: Some(peer),
                handshake_timeout,
                certificate_identity: CertificateIdentity::default(),
                mountpoint: mountpoint.clone(),
            },
            accepted: Instant::now(),
            wakeup,
        }
    }

    fn with_identity(mut self, identity: CertificateIdentity) -> Connection {
        self.info.certificate_identity = identity;
        self
    }

    /// Upgrades `stream` to WebSocket by `deadline`, then serves MQTT over it.
    async fn upgrade<S: SocketStream>(
        self,
        stream: S,
        options: &WebSocketConfig,
        deadline: tokio::time::Instant,
    ) {
        let upgrade = accept_websocket(stream, options, self.info.peer);
        match tokio::time::timeout_at(deadline, upgrade).await {
            Ok(Ok(upgraded)) => self.drive_websocket(upgraded).await,
            Ok(Err(error)) => tracing::info!(%error, "WebSocket upgrade failed"),
            Err(_) => tracing::info!("WebSocket upgrade timed out"),
        }
    }

    fn drive_websocket<S: SocketStream>(
        mut self,
        upgraded: Upgraded<S>,
    ) -> DriveStream<LayeredTransport<WsStream<S>>, MqttStream> {
        if let (Some(ip), Some(peer)) = (upgraded.forwarded_for, self.info.peer.as_mut()) {
            // The proxy names no port; the socket's own would be the proxy's.
            *peer = SocketAddr::new(ip, 0);
            tracing::Span::current().record("client_addr", tracing::field::display(ip));
        }
        tracing::debug!(subprotocol = ?upgraded.subprotocol, "WebSocket upgraded");
        self.drive(LayeredTransport::new(upgraded.stream))
    }

    fn drive<T: Transport>(self, transport: T) -> DriveStream<T, MqttStream> {
        // The handshake deadline counts from accept, so TLS and the upgrade spend from it.
        let channel = MqttChannel::new(
            self.broker.clone(),
            self.info,
            self.wakeup.clone(),
            self.accepted,
        );
        drive_stream(transport, MqttStream(channel), self.wakeup, self.broker)
    }
}
