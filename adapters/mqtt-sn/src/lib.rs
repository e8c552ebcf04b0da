//! MQTT-SN 1.2 over UDP: the codec, the per-client channel and its listener on the kit's
//! datagram driver.

pub mod channel;
pub mod codec;
pub mod topics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::dtls::spawn_dtls_listeners;
use adapter_kit::{
    serve_datagram_listener, Beacon, DatagramChannel, DatagramMetrics, Demux, Flow, Launch,
    NamedListener, StartError, UdpListenerSettings,
};
use bytes::Bytes;
use gateway_config::{Config, ListenerKind};
use mqtt_core::broker::Broker;
use tokio::net::UdpSocket;
use tokio::sync::watch;

pub use channel::{MqttSnChannel, Settings, MQTTSN_NAMESPACE};

impl DatagramChannel for MqttSnChannel {
    fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        MqttSnChannel::handle_datagram(self, datagram, out, now)
    }
    fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        MqttSnChannel::handle_wakeup(self, out, now)
    }
    fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        MqttSnChannel::handle_timeout(self, out, now)
    }
    fn next_deadline(&self) -> Option<Instant> {
        MqttSnChannel::next_deadline(self)
    }
    fn shutdown(&mut self, out: &mut Vec<Bytes>) -> Flow {
        MqttSnChannel::shutdown(self, out)
    }
    fn handle_closed(&mut self, now: Instant) {
        MqttSnChannel::handle_closed(self, now)
    }
    fn rebindable_identity(&self) -> Option<Arc<str>> {
        MqttSnChannel::rebindable_identity(self)
    }
    fn vouch(&mut self, datagram: &Bytes, from: SocketAddr, _now: Instant) -> bool {
        MqttSnChannel::vouch(self, datagram, from)
    }
    fn rebound(&mut self, address: SocketAddr) {
        MqttSnChannel::rebound(self, address)
    }
    fn address_validated(&self) -> bool {
        MqttSnChannel::address_validated(self)
    }
}

/// Finds peers by what a datagram says before any channel reads it: a forwarder's node is a
/// peer of its own, and a PINGREQ naming a client id is a claim on the sleeping client of
/// that id, which moves only if its channel vouches for it.
struct SnDemux;

impl Demux for SnDemux {
    fn sub_key(&self, datagram: &Bytes) -> Option<Bytes> {
        codec::wireless_node(datagram)
    }
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>> {
        codec::client_id_hint(datagram).map(|id| Arc::from(&*id))
    }
    fn wrap(&self, sub_key: &Bytes, datagram: Bytes) -> Bytes {
        codec::encapsulate(0, sub_key, &datagram)
    }
}

/// Starts every enabled MQTT-SN listener of `config`: `gateway.mqttsn.listeners.udp`.
pub fn start(config: &Config, launch: &mut Launch) -> Result<(), StartError> {
    let sn = &config.gateway.mqttsn;
    if !sn.enable {
        return Ok(());
    }
    let advertise = if sn.broadcast {
        let target = sn.broadcast_addr().map_err(|source| StartError::Setting {
            key: "gateway.mqttsn.broadcast_address".to_owned(),
            source: Box::new(source),
        })?;
        Some((target, sn.advertise_interval.get()))
    } else {
        None
    };
    for (name, l) in sn.listeners.udp.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(ListenerKind::MqttSnUdp, name);
        let (socket, bound) = launch.bind_udp(&named, l.bind_addr(), advertise.is_some())?;
        let serve = serve_udp(
            socket,
            UdpListenerSettings::from_config(named.name.clone(), l),
            advertise,
            Arc::new(Settings::from_config(named.name.clone(), sn, l)),
            launch.broker().clone(),
            Arc::new(DatagramMetrics::default()),
            launch.shutdown_signal(),
        );
        launch.spawn_listener("MQTT-SN", &named, bound, serve);
    }
    // No ADVERTISE: clients find a DTLS gateway by its configured address.
    let broker = launch.broker().clone();
    spawn_dtls_listeners(
        launch,
        "MQTT-SN",
        ListenerKind::MqttSnDtls,
        &sn.listeners.dtls,
        |named, udp| {
            let settings = Arc::new(Settings::from_config(named.name.clone(), sn, udp));
            let broker = broker.clone();
            move |peer, wakeup, _seed, identity| {
                MqttSnChannel::new(
                    broker.clone(),
                    settings.clone(),
                    Some(peer),
                    wakeup,
                    Instant::now(),
                )
                .with_transport_identity(identity)
            }
        },
    )?;
    Ok(())
}

/// Serves MQTT-SN on a bound UDP socket until `shutdown` turns true, sending ADVERTISE
/// every interval to the address in `advertise`, when given.
async fn serve_udp(
    socket: UdpSocket,
    listener: UdpListenerSettings,
    advertise: Option<(SocketAddr, Duration)>,
    settings: Arc<Settings>,
    broker: Arc<Broker>,
    metrics: Arc<DatagramMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    let beacon = advertise.and_then(|(target, interval)| {
        let duration = u16::try_from(interval.as_secs()).unwrap_or(u16::MAX);
        let advertise = codec::Message::Advertise {
            gw_id: settings.gateway_id,
            duration,
        };
        codec::to_datagram(&advertise).ok().map(|datagram| Beacon {
            datagram,
            target,
            interval,
        })
    });
    let limits = listener.limits(listener.max_packet_size, beacon);
    let channel_broker = broker.clone();
    serve_datagram_listener(
        socket,
        limits,
        SnDemux,
        metrics,
        broker,
        shutdown,
        move |peer, wakeup| {
            MqttSnChannel::new(
                channel_broker.clone(),
                settings.clone(),
                Some(peer),
                wakeup,
                Instant::now(),
            )
        },
    )
    .await;
}
