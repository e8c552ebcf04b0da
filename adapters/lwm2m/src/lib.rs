//! LwM2M 1.0 / 1.1 over UDP: devices register over CoAP (the kit's message layer) and are
//! managed from MQTT with EMQX's topics and JSON commands.

pub mod channel;
pub mod command;
pub mod downlink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use adapter_kit::coap::{CoapOption, Packet};
use adapter_kit::dtls::spawn_dtls_listeners;
use adapter_kit::{
    serve_datagram_listener, DatagramChannel, DatagramMetrics, Demux, Flow, Launch, NamedListener,
    Seeds, StartError, UdpListenerSettings,
};
use bytes::Bytes;
use gateway_config::{Config, ListenerKind};
use mqtt_core::broker::Broker;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub use channel::{Lwm2mChannel, Settings, LWM2M_NAMESPACE};
pub use downlink::{Device, Devices};
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
    fn vouch(&mut self, datagram: &Bytes, from: SocketAddr, _now: Instant) -> bool {
        Lwm2mChannel::vouch(self, datagram, from)
    }
    fn rebound(&mut self, address: SocketAddr) {
        Lwm2mChannel::rebound(self, address)
    }
    fn address_validated(&self) -> bool {
        Lwm2mChannel::address_validated(self)
    }
}

/// One peer per source address; a request from another address (NAT rebinding, a new
/// socket) naming a registered endpoint in its `/rd/{ep}` path or `ep` query is a claim on
/// that registration's peer, which moves there, keeping the registration, only when its
/// channel vouches for the request (an update or de-register the session layer accepts
/// for the same client and owner).
struct Lwm2mDemux;

impl Demux for Lwm2mDemux {
    fn sub_key(&self, _datagram: &Bytes) -> Option<Bytes> {
        None
    }
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>> {
        let packet = Packet::from_bytes(datagram).ok()?;
        let mut path = packet.get_option(CoapOption::UriPath)?.iter();
        if path.next()?.as_slice() != b"rd" {
            return None;
        }
        if let Some(endpoint) = path.next() {
            return std::str::from_utf8(endpoint).ok().map(Arc::from);
        }
        packet
            .get_option(CoapOption::UriQuery)?
            .iter()
            .find_map(|query| query.strip_prefix(b"ep="))
            .and_then(|ep| std::str::from_utf8(ep).ok())
            .map(Arc::from)
    }
    fn wrap(&self, _sub_key: &Bytes, datagram: Bytes) -> Bytes {
        datagram
    }
}

/// The object definitions: the built-in ones and those of `xml_dir`, whose failure names
/// the key.
pub fn object_registry(lwm2m: &gateway_config::Lwm2mConfig) -> Result<ObjectRegistry, StartError> {
    ObjectRegistry::load(&lwm2m.xml_dir).map_err(|source| StartError::Setting {
        key: "gateway.lwm2m.xml_dir".to_owned(),
        source: Box::new(source),
    })
}

/// Starts every enabled LwM2M listener of `config`: `gateway.lwm2m.listeners.{udp,dtls}`.
pub fn start(config: &Config, launch: &mut Launch) -> Result<(), StartError> {
    let lwm2m = &config.gateway.lwm2m;
    if !lwm2m.enable {
        return Ok(());
    }
    let objects = Arc::new(object_registry(lwm2m)?);
    // One registry for every listener: a client id names one registration, whichever
    // listener it came through.
    let devices = launch.shared::<Devices>();
    tracing::info!(objects = objects.len(), "LwM2M object definitions loaded");
    for (name, l) in lwm2m.listeners.udp.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::Lwm2mUdp, name);
        let (socket, bound) = launch.bind_udp(&named, l.bind_addr(), false)?;
        let settings = Settings {
            devices: devices.clone(),
            ..Settings::from_config(named.name.clone(), lwm2m, l, objects.clone())
        };
        launch
            .broker()
            .add_listener_figures(named.name.clone(), settings.transmission.counters.clone());
        let serve = serve_udp(
            socket,
            UdpListenerSettings::from_config(named.name.clone(), l),
            Arc::new(settings),
            launch.broker().clone(),
            Arc::new(DatagramMetrics::default()),
            launch.shutdown_signal(),
        );
        launch.spawn_listener("LwM2M", &named, bound, serve);
    }
    let broker = launch.broker().clone();
    spawn_dtls_listeners(
        launch,
        "LwM2M",
        ListenerKind::Lwm2mDtls,
        &lwm2m.listeners.dtls,
        |named, udp| {
            let settings = Arc::new(Settings {
                devices: devices.clone(),
                ..Settings::from_config(named.name.clone(), lwm2m, udp, objects.clone())
            });
            let broker = broker.clone();
            broker.add_listener_figures(named.name.clone(), settings.transmission.counters.clone());
            move |peer, wakeup, seed, identity| {
                Lwm2mChannel::new(
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
    Ok(())
}

/// Serves LwM2M on a bound UDP socket until `shutdown` turns true.
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
    let channel_broker = broker.clone();
    let seeds = Seeds::default();
    serve_datagram_listener(
        socket,
        limits,
        Lwm2mDemux,
        metrics,
        broker,
        shutdown,
        move |peer, wakeup| {
            Lwm2mChannel::new(
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
