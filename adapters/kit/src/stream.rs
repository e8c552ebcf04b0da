//! The byte-stream driver: one loop per connection that owns the socket, the channel's
//! deadline, back-pressure and the byte counters.
//!
//! It waits for readiness before it holds a read buffer, so an idle connection costs no
//! buffer at all: the input buffer exists only while it holds bytes of a partial packet.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use mqtt_core::broker::Stats;
use mqtt_core::protocol::Flow;
use mqtt_core::session::Wakeup;
use tokio::net::{TcpListener, TcpStream};
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

/// A byte stream driven by readiness: wait until it can be read or written, then try.
/// Waiting this way needs no buffer, which is what keeps idle connections small.
///
/// A layered transport (TLS, WebSocket) may hold bytes of its own: records or frames
/// accepted from `try_write` but not yet on the socket. It says so through
/// `has_buffered_output`, and the driver then waits for `writable` and calls `try_flush`
/// even when it has nothing more to write.
pub trait Transport: Send + Sync {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    fn has_buffered_output(&self) -> bool {
        false
    }
    /// Pushes buffered output towards the socket; `WouldBlock` when some is left.
    fn try_flush(&self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::readable(self)
    }
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        TcpStream::writable(self)
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
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
const READ_CHUNK: usize = 8 * 1024;
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What one step of the loop decided.
enum Step {
    Go(Flow),
    /// The peer closed or the socket failed: nothing more can be written.
    Gone,
}

/// Runs one connection until either side closes it or `shutdown` turns true.
pub async fn drive_stream<T, C>(
    transport: T,
    channel: &mut C,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
    stats: &Stats,
) where
    T: Transport,
    C: StreamChannel,
{
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    loop {
        if out.len() < OUTPUT_READ_PAUSE / 4
            && channel.wants_drain()
            && channel.handle_wakeup(&mut out, Instant::now()) == Flow::Close
        {
            flush(&transport, &mut out, stats).await;
            break;
        }
        let deadline = channel.next_deadline();
        let can_read = out.len() < OUTPUT_READ_PAUSE;
        let step = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    Step::Go(channel.shutdown(&mut out))
                } else {
                    Step::Go(Flow::Continue)
                }
            }
            ready = transport.writable(), if !out.is_empty() || transport.has_buffered_output() => match ready {
                Ok(()) if out.is_empty() => flush_buffered(&transport),
                Ok(()) => write_some(&transport, &mut out, stats),
                Err(_) => Step::Gone,
            },
            ready = transport.readable(), if can_read => match ready {
                Ok(()) => read_some(&transport, channel, &mut input, &mut out, stats),
                Err(_) => Step::Gone,
            },
            _ = notify.notified() => Step::Go(channel.handle_wakeup(&mut out, Instant::now())),
            _ = sleep_until(deadline), if deadline.is_some() => {
                Step::Go(channel.handle_timeout(&mut out, Instant::now()))
            }
        };
        match step {
            Step::Gone => break,
            Step::Go(Flow::Close) => {
                flush(&transport, &mut out, stats).await;
                break;
            }
            Step::Go(Flow::Continue) => {
                // Most replies fit the socket buffer at once: write now rather than after
                // another trip through the poll loop.
                if !out.is_empty() {
                    if let Step::Gone = write_some(&transport, &mut out, stats) {
                        break;
                    }
                }
            }
        }
    }
    channel.handle_closed(Instant::now());
}

fn read_some<T: Transport, C: StreamChannel>(
    transport: &T,
    channel: &mut C,
    input: &mut BytesMut,
    out: &mut BytesMut,
    stats: &Stats,
) -> Step {
    input.reserve(READ_CHUNK);
    let step = match transport.try_read_buf(input) {
        // MQTT has no half-close: end of input ends the connection.
        Ok(0) => Step::Gone,
        Ok(n) => {
            Stats::add(&stats.bytes_received, n as u64);
            Step::Go(channel.handle_input(input, out, Instant::now()))
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Step::Go(Flow::Continue),
        // A layer under the protocol (TLS, WebSocket) refused what the peer sent.
        Err(error) if error.kind() == io::ErrorKind::InvalidData => {
            tracing::info!(%error, "connection closed: malformed input");
            Step::Gone
        }
        Err(error) => {
            tracing::debug!(%error, "read failed");
            Step::Gone
        }
    };
    if input.is_empty() {
        *input = BytesMut::new();
    }
    step
}

fn flush_buffered<T: Transport>(transport: &T) -> Step {
    match transport.try_flush() {
        Ok(()) => Step::Go(Flow::Continue),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Step::Go(Flow::Continue),
        Err(error) => {
            tracing::debug!(%error, "write failed");
            Step::Gone
        }
    }
}

fn write_some<T: Transport>(transport: &T, out: &mut BytesMut, stats: &Stats) -> Step {
    match transport.try_write(out) {
        Ok(0) => Step::Gone,
        Ok(n) => {
            Stats::add(&stats.bytes_sent, n as u64);
            out.advance(n);
            if out.is_empty() {
                *out = BytesMut::new();
            }
            Step::Go(Flow::Continue)
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Step::Go(Flow::Continue),
        Err(error) => {
            tracing::debug!(%error, "write failed");
            Step::Gone
        }
    }
}

/// Writes what is left before a close, for at most `CLOSE_FLUSH_TIMEOUT`.
async fn flush<T: Transport>(transport: &T, out: &mut BytesMut, stats: &Stats) {
    let written = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
        while !out.is_empty() || transport.has_buffered_output() {
            if transport.writable().await.is_err() {
                return;
            }
            let step = if out.is_empty() {
                flush_buffered(transport)
            } else {
                write_some(transport, out, stats)
            };
            if let Step::Gone = step {
                return;
            }
        }
    })
    .await;
    if written.is_err() {
        tracing::debug!(
            left = out.len(),
            "peer too slow to take the last bytes before close"
        );
    }
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
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
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
        // `client_addr` is filled in when a proxy names the real client.
        let span = tracing::info_span!(
            "conn",
            listener = %limits.name,
            %peer,
            client_addr = tracing::field::Empty,
            client_id = tracing::field::Empty
        );
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
