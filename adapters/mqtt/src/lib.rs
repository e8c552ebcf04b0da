//! Native MQTT listeners: the MQTT channel of the core on the kit's stream driver.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::{drive_stream, serve_stream_listener, Flow, ListenerLimits, StreamChannel};
use bytes::BytesMut;
use mqtt_core::broker::Broker;
use mqtt_core::protocol::{ConnectionInfo, MqttChannel};
use tokio::net::TcpListener;
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
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        self.0.shutdown(out)
    }
    fn handle_closed(&mut self, now: Instant) {
        self.0.handle_closed(now)
    }
}

#[derive(Debug, Clone)]
pub struct TcpListenerSettings {
    /// `tcp:NAME`, as logs and auth rules name the listener.
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// Binds the listener; errors here are start-up errors the caller reports.
pub async fn bind_tcp(settings: &TcpListenerSettings) -> io::Result<TcpListener> {
    TcpListener::bind(settings.bind).await
}

/// Serves MQTT on a bound TCP listener until `shutdown` turns true.
pub async fn serve_tcp(
    listener: TcpListener,
    settings: TcpListenerSettings,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = ListenerLimits {
        name: settings.name.clone(),
        max_connections: settings.max_connections,
    };
    serve_stream_listener(listener, limits, shutdown, move |stream, peer, wakeup| {
        let info = ConnectionInfo {
            listener: settings.name.clone(),
            peer: Some(peer),
            handshake_timeout: settings.handshake_timeout,
        };
        let channel = MqttChannel::new(broker.clone(), info, wakeup.clone(), Instant::now());
        drive_stream(stream, MqttStream(channel), wakeup, broker.clone())
    })
    .await;
}
