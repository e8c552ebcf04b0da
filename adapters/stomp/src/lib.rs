//! STOMP 1.0, 1.1 and 1.2 over TCP and WebSocket: frames (`frame`), the per-connection
//! channel mapping frames onto a session of the unified model (`channel`), on the kit's
//! byte-stream driver.

pub mod channel;
pub mod frame;
pub mod subscriptions;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use adapter_kit::tcp_or_ws::drive_tcp_or_ws;
use adapter_kit::ws::WsStream;
use adapter_kit::{serve_stream_listener, Flow, ListenerLimits, StreamChannel};
use bytes::BytesMut;
use gateway_config::Rate;
use mqtt_core::broker::Broker;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    fn take_yield_request(&mut self) -> bool {
        StompChannel::take_yield_request(self)
    }
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        StompChannel::shutdown(self, out)
    }
    fn handle_closed(&mut self, now: Instant) {
        StompChannel::handle_closed(self, now)
    }
}

/// What STOMP travels in on a listener.
pub use adapter_kit::tcp_or_ws::StreamLayers as Layers;

#[derive(Clone)]
pub struct ListenerSettings {
    /// `tcp:NAME` or `ws:NAME`.
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub max_connections: usize,
    pub max_conn_rate: Rate,
    pub layers: Layers,
}

pub async fn bind(settings: &ListenerSettings) -> io::Result<TcpListener> {
    TcpListener::bind(settings.bind).await
}

/// Serves STOMP on a bound listener until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
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
        let channel = StompChannel::new(
            broker.clone(),
            channel_settings.clone(),
            Some(peer),
            wakeup.clone(),
            seed,
            accepted,
        );
        drive_tcp_or_ws(
            socket,
            &settings.layers,
            accepted + channel_settings.idle_timeout,
            WsStream::accept_text_frames,
            channel,
            wakeup,
            broker.clone(),
        )
    })
    .await;
}
