//! Native MQTT listeners: the MQTT channel of the core on the kit's stream driver, over
//! TCP, TLS, WebSocket, WebSocket over TLS or a QUIC stream. The channel does not know which.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::layers::{Arrival, LayeredListener, Layers, StreamProtocol};
use adapter_kit::quic::{QuicListener, QuicSettings};
use adapter_kit::{
    drive_stream, serve_stream_listener, starts_with_certificate, ConnWakeup, Flow, Launch,
    ListenerLimits, NamedListener, StartError, StreamChannel,
};
use bytes::BytesMut;
use gateway_config::{Config, ListenerKind};
use mqtt_core::broker::Broker;
use mqtt_core::protocol::{CertificateIdentity, ConnectionInfo, MqttChannel};
use mqtt_core::rate::PublishRates;
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
    fn accepts_input(&self, _now: Instant) -> bool {
        // What the channel parked decides; a rate pause ends in `handle_timeout`.
        self.0.accepts_input()
    }
    fn note_arrival(&mut self, earliest: u64, latest: u64) {
        self.0.note_arrival(earliest, latest)
    }
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        self.0.shutdown(out)
    }
    fn handle_closed(&mut self, now: Instant) {
        self.0.handle_closed(now)
    }
}

/// MQTT as the kit's listeners serve it: one channel per connection, told what the layers
/// established about the client.
struct Mqtt {
    broker: Arc<Broker>,
    /// From accept to a complete CONNECT, the layers' handshakes included.
    handshake_timeout: Duration,
    /// Template with `${clientid}` and `${username}`; `""` for none.
    mountpoint: Arc<str>,
    /// What each client may publish: the listener's `messages_rate` and `bytes_rate`.
    rates: PublishRates,
}

impl Mqtt {
    fn new(
        launch: &Launch,
        handshake_timeout: Duration,
        mountpoint: &str,
        rates: PublishRates,
    ) -> Mqtt {
        Mqtt {
            broker: launch.broker().clone(),
            handshake_timeout,
            mountpoint: Arc::from(mountpoint),
            rates,
        }
    }
}

impl StreamProtocol for Mqtt {
    type Channel = MqttStream;

    fn open(&self, arrival: Arrival, wakeup: &Arc<ConnWakeup>) -> MqttStream {
        let info = ConnectionInfo {
            listener: arrival.listener,
            peer: Some(arrival.peer),
            handshake_timeout: self.handshake_timeout,
            certificate_identity: arrival.certificate_identity,
            mountpoint: self.mountpoint.clone(),
            rates: self.rates,
        };
        // The handshake deadline counts from accept, so TLS and the upgrade spend from it.
        MqttStream(MqttChannel::new(
            self.broker.clone(),
            info,
            wakeup.clone(),
            arrival.accepted,
        ))
    }
}

/// Starts every enabled MQTT listener of `config`: `listeners.{tcp,ssl,ws,wss,quic}`.
pub fn start(config: &Config, launch: &mut Launch) -> Result<(), StartError> {
    let listeners = &config.listeners;
    let proxy = |enabled: bool, timeout: gateway_config::Duration| enabled.then(|| timeout.get());
    for (name, l) in listeners.tcp.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::Tcp, name);
        let timeout = l.handshake_timeout.get();
        let settings = LayeredListener::new(
            &named,
            l.max_connections,
            l.max_conn_rate,
            timeout,
            Layers::Tcp,
        )
        .with_proxy_protocol(proxy(l.proxy_protocol, l.proxy_protocol_timeout));
        let protocol = Mqtt::new(
            launch,
            timeout,
            &l.mountpoint,
            PublishRates::new(l.messages_rate, l.bytes_rate),
        );
        launch.serve_stream("MQTT", &named, l.bind_addr(), settings, protocol)?;
    }
    for (name, l) in listeners.ssl.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::Ssl, name);
        let Some(acceptor) = launch.tls_acceptor(&named, &l.tls, &[])? else {
            continue;
        };
        let timeout = l.handshake_timeout.get();
        let layers = Layers::Tls(acceptor);
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers)
                .with_proxy_protocol(proxy(l.proxy_protocol, l.proxy_protocol_timeout));
        let protocol = Mqtt::new(
            launch,
            timeout,
            &l.mountpoint,
            PublishRates::new(l.messages_rate, l.bytes_rate),
        );
        launch.serve_stream("MQTT", &named, l.bind_addr(), settings, protocol)?;
    }
    for (name, l) in listeners.ws.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::Ws, name);
        let timeout = l.handshake_timeout.get();
        let layers = Layers::Ws(Arc::new(l.websocket.clone()));
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let protocol = Mqtt::new(
            launch,
            timeout,
            &l.mountpoint,
            PublishRates::new(l.messages_rate, l.bytes_rate),
        );
        launch.serve_stream("MQTT", &named, l.bind_addr(), settings, protocol)?;
    }
    for (name, l) in listeners.wss.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::Wss, name);
        let Some(acceptor) = launch.tls_acceptor(&named, &l.tls, &[])? else {
            continue;
        };
        let timeout = l.handshake_timeout.get();
        let layers = Layers::Wss(acceptor, Arc::new(l.websocket.clone()));
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let protocol = Mqtt::new(
            launch,
            timeout,
            &l.mountpoint,
            PublishRates::new(l.messages_rate, l.bytes_rate),
        );
        launch.serve_stream("MQTT", &named, l.bind_addr(), settings, protocol)?;
    }
    for (name, l) in listeners.quic.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::Quic, name);
        if !starts_with_certificate(&named, &l.tls) {
            continue;
        }
        let bind = named.address(l.bind_addr())?;
        let quic_settings = QuicSettings {
            tls: l.tls.clone(),
            idle_timeout: l.effective_idle_timeout(&config.mqtt),
            enable_0rtt: l.enable_0rtt,
        };
        let listener =
            QuicListener::bind(bind, quic_settings).map_err(|source| StartError::Quic {
                key: named.key.clone(),
                bind,
                source: Box::new(source),
            })?;
        launch.watch_certificate(&named.key, Arc::new(listener.reloader()));
        let bound = listener.endpoint().local_addr().unwrap_or(bind);
        let limits = ListenerLimits {
            name: named.name.clone(),
            max_connections: l.max_connections as usize,
            max_conn_rate: l.max_conn_rate,
            metrics: Arc::default(),
        };
        launch
            .broker()
            .add_listener_figures(limits.name.clone(), limits.metrics.clone());
        let protocol = Arc::new(Mqtt::new(
            launch,
            l.handshake_timeout.get(),
            &l.mountpoint,
            PublishRates::new(l.messages_rate, l.bytes_rate),
        ));
        let serve = serve_quic(
            listener,
            limits,
            protocol,
            launch.broker().clone(),
            launch.shutdown_signal(),
        );
        launch.spawn_listener("MQTT over QUIC", &named, bound, serve);
    }
    Ok(())
}

/// How long shutdown waits for closing QUIC connections to send their last packets.
const QUIC_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves MQTT on a bound QUIC endpoint until `shutdown` turns true: one bidirectional
/// stream per connection carries the session.
async fn serve_quic(
    listener: QuicListener,
    limits: ListenerLimits,
    protocol: Arc<Mqtt>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let endpoint = listener.endpoint().clone();
    let name = limits.name.clone();
    serve_stream_listener(listener, limits, shutdown, move |incoming, peer, wakeup| {
        let mut arrival = Arrival {
            listener: name.clone(),
            peer,
            accepted: Instant::now(),
            certificate_identity: CertificateIdentity::default(),
            over_websocket: false,
        };
        // The handshake deadline covers the QUIC handshake and the opening of the stream.
        let deadline =
            tokio::time::Instant::from_std(arrival.accepted + protocol.handshake_timeout);
        let (protocol, broker) = (protocol.clone(), broker.clone());
        async move {
            match tokio::time::timeout_at(deadline, incoming.establish()).await {
                Ok(Ok(stream)) => {
                    arrival.certificate_identity = stream.certificate_identity();
                    let channel = protocol.open(arrival, &wakeup);
                    let drive = drive_stream(stream, channel, wakeup, broker);
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
