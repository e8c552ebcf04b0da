//! Native MQTT listeners: the MQTT channel of the core on the kit's stream driver, over
//! TCP, TLS, WebSocket or WebSocket over TLS. The channel does not know which.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::proxy::read_proxy_header;
use adapter_kit::tls::TlsAcceptor;
use adapter_kit::ws::{accept_websocket, Upgraded};
use adapter_kit::{
    drive_stream, serve_stream_listener, Flow, LayeredTransport, ListenerLimits, NotifyWakeup,
    PlainStream, SocketStream, StreamChannel, Transport,
};
use bytes::BytesMut;
use gateway_config::WebSocketConfig;
use mqtt_core::broker::Broker;
use mqtt_core::protocol::{CertificateIdentity, ConnectionInfo, MqttChannel};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

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
    };
    serve_stream_listener(
        listener,
        limits,
        shutdown,
        move |mut socket, peer, shutdown| {
            let broker = broker.clone();
            let settings = settings.clone();
            async move {
                let accepted = Instant::now();
                let deadline =
                    tokio::time::Instant::from_std(accepted + settings.handshake_timeout);
                tracing::debug!("connection accepted");
                let mut client = peer;
                if let Some(timeout) = settings.proxy_protocol {
                    match tokio::time::timeout(timeout, read_proxy_header(&mut socket)).await {
                        Ok(Ok(Some(named))) => {
                            client = named;
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
                let connection = Connection {
                    broker,
                    info: ConnectionInfo {
                        listener: settings.name.clone(),
                        peer: Some(client),
                        handshake_timeout: settings.handshake_timeout,
                        certificate_identity: CertificateIdentity::default(),
                    },
                    accepted,
                    shutdown,
                };
                match settings.layers {
                    Layers::Tcp => connection.run(socket).await,
                    Layers::Tls(acceptor) => {
                        let tls = tokio::time::timeout_at(deadline, acceptor.accept(socket)).await;
                        match tls {
                            Ok(Ok(tls)) => {
                                let identity = acceptor.certificate_identity(&tls);
                                connection
                                    .with_identity(identity)
                                    .run(LayeredTransport::new(tls))
                                    .await
                            }
                            Ok(Err(error)) => tracing::info!(%error, "TLS handshake failed"),
                            Err(_) => tracing::info!("TLS handshake timed out"),
                        }
                    }
                    Layers::Ws(options) => {
                        let upgrade = accept_websocket(PlainStream::new(socket), &options);
                        match tokio::time::timeout_at(deadline, upgrade).await {
                            Ok(Ok(upgraded)) => connection.run_websocket(upgraded).await,
                            Ok(Err(error)) => tracing::info!(%error, "WebSocket upgrade failed"),
                            Err(_) => tracing::info!("WebSocket upgrade timed out"),
                        }
                    }
                    Layers::Wss(acceptor, options) => {
                        let upgrade = async {
                            let tls = acceptor.accept(socket).await?;
                            accept_websocket(tls, &options).await
                        };
                        match tokio::time::timeout_at(deadline, upgrade).await {
                            Ok(Ok(upgraded)) => connection.run_websocket(upgraded).await,
                            Ok(Err(error)) => {
                                tracing::info!(%error, "TLS or WebSocket upgrade failed")
                            }
                            Err(_) => {
                                tracing::info!("TLS handshake or WebSocket upgrade timed out")
                            }
                        }
                    }
                }
                tracing::debug!("connection closed");
            }
        },
    )
    .await;
}

/// One accepted connection, whatever carries it.
struct Connection {
    broker: Arc<Broker>,
    info: ConnectionInfo,
    accepted: Instant,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    fn with_identity(mut self, identity: CertificateIdentity) -> Connection {
        self.info.certificate_identity = identity;
        self
    }

    async fn run_websocket<S: SocketStream>(mut self, upgraded: Upgraded<S>) {
        if let (Some(ip), Some(peer)) = (upgraded.forwarded_for, self.info.peer.as_mut()) {
            // The proxy names no port; the socket's own would be the proxy's.
            *peer = SocketAddr::new(ip, 0);
            tracing::Span::current().record("client_addr", tracing::field::display(ip));
        }
        tracing::debug!(subprotocol = ?upgraded.subprotocol, "WebSocket upgraded");
        self.run(LayeredTransport::new(upgraded.stream)).await
    }

    async fn run<T: Transport>(self, transport: T) {
        let notify = Arc::new(Notify::new());
        let wakeup = Arc::new(NotifyWakeup(notify.clone()));
        // The handshake deadline counts from accept, so TLS and the upgrade spend from it.
        let mut channel = MqttStream(MqttChannel::new(
            self.broker.clone(),
            self.info,
            wakeup,
            self.accepted,
        ));
        drive_stream(
            transport,
            &mut channel,
            notify,
            self.shutdown,
            &self.broker.stats,
        )
        .await;
    }
}
