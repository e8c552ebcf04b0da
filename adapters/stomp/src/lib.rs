//! STOMP 1.0, 1.1 and 1.2 over TCP, TLS, WebSocket and WebSocket over TLS: frames
//! (`frame`), the per-connection channel mapping frames onto a session of the unified model
//! (`channel`), on the kit's byte-stream driver and its layers.

pub mod channel;
pub mod frame;
pub mod subscriptions;

use std::sync::Arc;
use std::time::Instant;

use adapter_kit::layers::{Arrival, LayeredListener, Layers, StreamProtocol, WebSocketFraming};
use adapter_kit::{ConnWakeup, Flow, Launch, NamedListener, Seeds, StartError, StreamChannel};
use bytes::BytesMut;
use gateway_config::{Config, ListenerKind};
use mqtt_core::broker::Broker;
use mqtt_core::rate::PublishRates;

pub use channel::{Settings, StompChannel, StompError, STOMP_NAMESPACE};

impl StreamChannel for StompChannel {
    fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, now: Instant) -> Flow {
        StompChannel::handle_input(self, input, out, now)
    }
    fn handle_wakeup(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        StompChannel::handle_wakeup(self, out, now)
    }
    fn handle_timeout(&mut self, out: &mut BytesMut, now: Instant) -> Flow {
        StompChannel::handle_timeout(self, out, now)
    }
    fn next_deadline(&self) -> Option<Instant> {
        StompChannel::next_deadline(self)
    }
    fn wants_drain(&self) -> bool {
        StompChannel::wants_drain(self)
    }
    fn accepts_input(&self, now: Instant) -> bool {
        StompChannel::accepts_input(self, now)
    }
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        StompChannel::shutdown(self, out)
    }
    fn handle_closed(&mut self, now: Instant) {
        StompChannel::handle_closed(self, now)
    }
}

/// STOMP as the kit's stream listeners serve it.
struct Stomp {
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    seeds: Seeds,
}

impl StreamProtocol for Stomp {
    type Channel = StompChannel;

    fn websocket_framing(&self) -> WebSocketFraming {
        WebSocketFraming::TextOrBinary
    }

    fn open(&self, arrival: Arrival, wakeup: &Arc<ConnWakeup>) -> StompChannel {
        StompChannel::new(
            self.broker.clone(),
            self.settings.clone(),
            Some(arrival.peer),
            wakeup.clone(),
            self.seeds.next(arrival.peer),
            arrival.accepted,
        )
        .with_certificate_identity(arrival.certificate_identity)
    }
}

/// Starts every enabled STOMP listener of `config`: `gateway.stomp.listeners.{tcp,ssl,ws,wss}`;
/// a TLS one only once it has a certificate.
pub fn start(config: &Config, launch: &mut Launch) -> Result<(), StartError> {
    let stomp = &config.gateway.stomp;
    if !stomp.enable {
        return Ok(());
    }
    // The layers' handshakes spend from the time allowed for CONNECT.
    let timeout = stomp.idle_timeout.get();
    let protocol =
        |launch: &Launch, named: &NamedListener, mountpoint: &str, rates: PublishRates| Stomp {
            broker: launch.broker().clone(),
            settings: Arc::new(Settings::from_config(
                named.name.clone(),
                stomp,
                mountpoint,
                rates,
            )),
            seeds: Seeds::default(),
        };
    for (name, l) in stomp.listeners.tcp.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::StompTcp, name);
        let layers = Layers::Tcp;
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let stomp = protocol(launch, &named, &l.mountpoint, rates);
        launch.serve_stream("STOMP", &named, l.bind_addr(), settings, stomp)?;
    }
    for (name, l) in stomp.listeners.ssl.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::StompSsl, name);
        let Some(acceptor) = launch.tls_acceptor(&named, &l.ssl_options, &[])? else {
            continue;
        };
        let layers = Layers::Tls(acceptor);
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let stomp = protocol(launch, &named, &l.mountpoint, rates);
        launch.serve_stream("STOMP", &named, l.bind_addr(), settings, stomp)?;
    }
    for (name, l) in stomp.listeners.ws.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::StompWs, name);
        let layers = Layers::Ws(Arc::new(l.websocket()));
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let stomp = protocol(launch, &named, &l.mountpoint, rates);
        launch.serve_stream("STOMP", &named, l.bind_addr(), settings, stomp)?;
    }
    for (name, l) in stomp.listeners.wss.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::StompWss, name);
        let Some(acceptor) = launch.tls_acceptor(&named, &l.ssl_options, &[])? else {
            continue;
        };
        let layers = Layers::Wss(acceptor, Arc::new(l.websocket()));
        let settings =
            LayeredListener::new(&named, l.max_connections, l.max_conn_rate, timeout, layers);
        let rates = PublishRates::new(l.messages_rate, l.bytes_rate);
        let stomp = protocol(launch, &named, &l.mountpoint, rates);
        launch.serve_stream("STOMP", &named, l.bind_addr(), settings, stomp)?;
    }
    Ok(())
}
