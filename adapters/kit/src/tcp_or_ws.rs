//! A device protocol's connection over plain TCP or over WebSocket on the same driver: the
//! listeners of STOMP and of CoAP over TCP (RFC 8323) take either.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use gateway_config::WebSocketConfig;
use mqtt_core::broker::Broker;
use tokio::net::TcpStream;

use crate::stream::{drive_stream, ConnWakeup, DriveStream, StreamChannel};
use crate::ws::{accept_websocket, WsStream};
use crate::{LayeredTransport, PlainStream};

/// What a stream listener's bytes travel in.
#[derive(Clone)]
pub enum StreamLayers {
    Tcp,
    Ws(Arc<WebSocketConfig>),
}

pin_project_lite::pin_project! {
    /// One connection's future: plain TCP is the driver itself; WebSocket first runs
    /// its upgrade, boxed so that its size is not every plain connection's.
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

/// Drives `channel` on `socket` as `layers` says. A WebSocket upgrade must complete by
/// `upgrade_deadline`; `prepare` sets the WebSocket layer up for the protocol (keeping
/// message boundaries, accepting text frames) before the driver takes it.
pub fn drive_tcp_or_ws<C: StreamChannel + 'static>(
    socket: TcpStream,
    layers: &StreamLayers,
    upgrade_deadline: Instant,
    prepare: fn(&mut WsStream<PlainStream>),
    channel: C,
    wakeup: Arc<ConnWakeup>,
    broker: Arc<Broker>,
) -> Accepted<C> {
    match layers {
        StreamLayers::Tcp => Accepted::Plain {
            drive: drive_stream(socket, channel, wakeup, broker),
        },
        StreamLayers::Ws(options) => {
            let options = options.clone();
            let deadline = tokio::time::Instant::from_std(upgrade_deadline);
            let setup = async move {
                let peer = socket.peer_addr().ok();
                let upgrade = accept_websocket(PlainStream::new(socket), &options, peer);
                match tokio::time::timeout_at(deadline, upgrade).await {
                    Ok(Ok(mut upgraded)) => {
                        tracing::debug!(subprotocol = ?upgraded.subprotocol, "WebSocket upgraded");
                        prepare(&mut upgraded.stream);
                        let transport = LayeredTransport::new(upgraded.stream);
                        drive_stream(transport, channel, wakeup, broker).await
                    }
                    Ok(Err(error)) => tracing::info!(%error, "WebSocket upgrade failed"),
                    Err(_) => tracing::info!("WebSocket upgrade timed out"),
                }
            };
            Accepted::Layered {
                setup: Box::pin(setup),
            }
        }
    }
}
