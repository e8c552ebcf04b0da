//! The byte-stream driver: TCP today, any `AsyncRead + AsyncWrite` (TLS, WebSocket, a QUIC
//! stream) through the same loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mqtt_core::broker::Stats;
use mqtt_core::protocol::Flow;
use mqtt_core::session::Wakeup;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The sans-io side of a connection, as the driver sees it.
pub trait StreamChannel: Send {
    fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, now: Instant) -> Flow;
    fn handle_wakeup(&mut self, out: &mut BytesMut, now: Instant) -> Flow;
    fn handle_timeout(&mut self, out: &mut BytesMut, now: Instant) -> Flow;
    fn next_deadline(&self) -> Option<Instant>;
    /// True when the channel stopped filling `out` at its high-water mark with more to send.
    fn wants_drain(&self) -> bool;
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow;
    fn handle_closed(&mut self, now: Instant);
}

/// Wakes a connection task through a tokio `Notify`; a wake with no waiter is kept as a
/// permit, so none is lost between two polls.
pub struct NotifyWakeup(pub Arc<Notify>);

impl Wakeup for NotifyWakeup {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Reads stop while this much output waits to be written: a client that does not read
/// cannot make us buffer without bound by sending requests that need answers.
const OUTPUT_READ_PAUSE: usize = 256 * 1024;
const READ_CHUNK: usize = 4 * 1024;
/// An idle connection keeps no large buffers: after a burst they are given back.
const IDLE_BUFFER_LIMIT: usize = 64 * 1024;
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one connection until either side closes it or `shutdown` turns true.
pub async fn drive_stream<S, C>(
    stream: S,
    channel: &mut C,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    stats: &Stats,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    C: StreamChannel,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    loop {
        if out.len() < OUTPUT_READ_PAUSE / 4
            && channel.wants_drain()
            && channel.handle_wakeup(&mut out, Instant::now()) == Flow::Close
        {
            break;
        }
        if out.is_empty() && out.capacity() > IDLE_BUFFER_LIMIT {
            out = BytesMut::new();
        }
        if input.is_empty() && input.capacity() > IDLE_BUFFER_LIMIT {
            input = BytesMut::new();
        }
        if input.capacity() - input.len() < READ_CHUNK / 4 {
            input.reserve(READ_CHUNK);
        }
        let deadline = channel.next_deadline();
        let can_read = out.len() < OUTPUT_READ_PAUSE;
        let flow = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    channel.shutdown(&mut out)
                } else {
                    Flow::Continue
                }
            }
            written = writer.write(&out), if !out.is_empty() => match written {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    Stats::add(&stats.bytes_sent, n as u64);
                    out.advance(n);
                    Flow::Continue
                }
            },
            read = reader.read_buf(&mut input), if can_read => match read {
                // MQTT has no half-close: end of input ends the connection.
                Ok(0) => break,
                Ok(n) => {
                    Stats::add(&stats.bytes_received, n as u64);
                    channel.handle_input(&mut input, &mut out, Instant::now())
                }
                Err(error) => {
                    tracing::debug!(%error, "read failed");
                    break;
                }
            },
            _ = notify.notified() => channel.handle_wakeup(&mut out, Instant::now()),
            _ = sleep_until(deadline), if deadline.is_some() => channel.handle_timeout(&mut out, Instant::now()),
        };
        if flow == Flow::Close {
            flush(&mut writer, &mut out, stats).await;
            break;
        }
    }
    let _ = writer.shutdown().await;
    channel.handle_closed(Instant::now());
}

async fn flush<W: AsyncWrite + Unpin>(writer: &mut W, out: &mut BytesMut, stats: &Stats) {
    if out.is_empty() {
        return;
    }
    let written = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer.write_all(out)).await;
    if let Ok(Ok(())) = written {
        Stats::add(&stats.bytes_sent, out.len() as u64);
    }
    out.clear();
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub name: Arc<str>,
    pub max_connections: usize,
}

/// Accepts connections until `shutdown` turns true, then waits for them to close.
/// `serve` runs one connection; connections beyond the limit are closed at once.
pub async fn serve_stream_listener<F, Fut>(
    listener: TcpListener,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %limits.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(listener = %limits.name, %peer, max = limits.max_connections, "connection refused: listener at max connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("conn", listener = %limits.name, %peer, client_id = tracing::field::Empty);
        let connection = serve(stream, peer, shutdown.clone());
        tracker.spawn(
            async move {
                connection.await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
}
