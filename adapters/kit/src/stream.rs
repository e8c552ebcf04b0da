//! The byte-stream driver: one future per connection that owns the transport, the
//! channel, the channel's deadline, back-pressure and the byte counters.
//!
//! The future is written by hand rather than as an `async fn`: an async loop keeps every
//! future it waits on (readiness, wake-up, shutdown, timer) in its state, plus copies of
//! its arguments, which made that state most of an idle connection's memory. Here the
//! transport is polled for readiness directly, the wake-up is an atomic waker, and the
//! only stored timer is re-armed in place. An idle connection holds no buffer either:
//! the transport reserves room only once bytes are there to read.
//!
//! A close the channel asks for ends in a linger: our side of the stream is shut down, so
//! the peer reads everything we sent and then the end, and what it still sends is read
//! and thrown away until it closes too. Closing a TCP socket with input unread makes the
//! kernel send a reset instead, and a reset destroys what the peer has not read yet:
//! often the very DISCONNECT or ERROR that says why it was closed.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{Buf, BytesMut};
use gateway_config::Rate;
use mqtt_core::broker::{Broker, Stats};
use mqtt_core::protocol::Flow;
use mqtt_core::rate::TokenBucket;
use mqtt_core::session::Wakeup;
use parking_lot::Mutex;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The sans-io side of a connection, as the driver sees it.
pub trait StreamChannel: Send {
    fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, now: Instant) -> Flow;
    fn handle_wakeup(&mut self, out: &mut BytesMut, now: Instant) -> Flow;
    /// May come before `next_deadline()` (the driver's timer only moves earlier), so it
    /// acts only on what is due at `now`.
    fn handle_timeout(&mut self, out: &mut BytesMut, now: Instant) -> Flow;
    fn next_deadline(&self) -> Option<Instant>;
    /// True when the channel stopped filling `out` at its high-water mark with more to send.
    fn wants_drain(&self) -> bool;
    /// When the input about to be handled arrived (`mqtt_core::arrival`): after
    /// `earliest`, before `latest`.
    fn note_arrival(&mut self, _earliest: u64, _latest: u64) {}
    /// False while the channel holds input it cannot take yet (its client is held back by
    /// a receiver that is behind, or paused for going over its publish rates until a time
    /// `next_deadline` names): the driver reads nothing more, and once a wake-up or a
    /// timeout makes it true again, hands the channel what is still buffered before it
    /// reads.
    fn accepts_input(&self, _now: Instant) -> bool {
        true
    }
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow;
    fn handle_closed(&mut self, now: Instant);
}

/// A byte stream the driver polls directly. Every call either makes progress at once or
/// registers `cx` to be woken when it can.
///
/// A layered transport (TLS, WebSocket) may hold bytes of its own: records or frames
/// accepted by `poll_write` but not yet on the socket. It says so through
/// `has_buffered_output`, and the driver then calls `poll_flush` even when it has nothing
/// more to write. A layer that refuses what the peer sent reports `InvalidData`.
pub trait Transport: Send + Unpin {
    /// Appends what can be read now to `buf`, growing it only by what was read; `Ok(0)`
    /// is the end of the stream.
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>>;
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    fn has_buffered_output(&self) -> bool {
        false
    }
    /// Pushes buffered output towards the socket; ready once none is left.
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// Ends what we send after what was written: the peer reads all of it and then the end
    /// of the stream (TLS close_notify, TCP FIN), while what it sends can still be read.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Whether dropping the transport with the peer's input unread can destroy what the
    /// peer has not read yet, so that a closing connection must drain that input first:
    /// true of TCP, which answers such a close with a reset.
    fn drains_before_close(&self) -> bool {
        true
    }
}

impl Transport for TcpStream {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        // Through tokio's `poll_read`, not `try_read`: a read that does not fill the buffer
        // has emptied the socket, and tokio then forgets its readiness, where `try_read`
        // would keep it and cost one more `recv` that finds nothing, after every read.
        read_through_scratch(buf, |scratch| {
            let capacity = scratch.len();
            let mut read = tokio::io::ReadBuf::new(scratch);
            match Pin::new(&mut *self).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n < capacity {
                        // The moment after it found the socket empty: what the next read
                        // gets arrived later.
                        note_empty_read();
                    }
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            }
        })
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let socket = &*self;
        try_when_ready(
            cx,
            |cx| socket.poll_write_ready(cx),
            || socket.try_write(buf),
        )
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shut_down_writing(self))
    }
}

/// Sends FIN once the socket has sent what it holds; reading goes on. Takes a shared
/// reference because layered transports share their socket.
pub(crate) fn shut_down_writing(socket: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write)
}

/// Reads with `read` into the per-thread scratch buffer and appends what it read to `buf`,
/// so that `buf` grows by exactly that much.
pub(crate) fn read_through_scratch<R: ReadOutcome>(
    buf: &mut BytesMut,
    read: impl FnOnce(&mut [u8]) -> R,
) -> R {
    SCRATCH.with_borrow_mut(|scratch| {
        let result = read(scratch);
        if let Some(n) = result.bytes_read() {
            buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
        }
        result
    })
}

/// How many bytes a read into the scratch buffer produced, if it produced any.
pub(crate) trait ReadOutcome {
    fn bytes_read(&self) -> Option<usize>;
}

impl ReadOutcome for io::Result<usize> {
    fn bytes_read(&self) -> Option<usize> {
        self.as_ref().ok().copied()
    }
}

impl ReadOutcome for Poll<io::Result<usize>> {
    fn bytes_read(&self) -> Option<usize> {
        match self {
            Poll::Ready(result) => result.bytes_read(),
            Poll::Pending => None,
        }
    }
}

/// Waits with `ready`, then makes `attempt`. A `WouldBlock` means the readiness was stale
/// and the attempt cleared it, so it waits again.
pub(crate) fn try_when_ready<R>(
    cx: &mut Context<'_>,
    mut ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut attempt: impl FnMut() -> io::Result<R>,
) -> Poll<io::Result<R>> {
    loop {
        ready!(ready(cx))?;
        match attempt() {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

const WOKEN: u8 = 1;
const SHUTTING_DOWN: u8 = 2;

/// How the broker, and the listener at shutdown, wake one connection. A wake that comes
/// while the connection is busy is kept in `pending`, so none is lost.
#[derive(Default)]
pub struct ConnWakeup {
    waker: AtomicWaker,
    pending: AtomicU8,
    /// Index in the listener's `Connections`, kept so removal is O(1).
    slot: AtomicUsize,
}

impl ConnWakeup {
    fn raise(&self, bits: u8) {
        self.pending.fetch_or(bits, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Resolves once woken, for a driver written as an async loop (the datagram one).
    /// Only one task may wait.
    pub async fn woken(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.pending.fetch_and(!WOKEN, Ordering::AcqRel) & WOKEN != 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl Wakeup for ConnWakeup {
    fn wake(&self) {
        self.raise(WOKEN);
    }
}

/// Reads stop while this much output waits to be written: a client that does not read
/// cannot make us buffer without bound by sending requests that need answers.
const OUTPUT_READ_PAUSE: usize = 256 * 1024;
/// Most bytes one read takes. Reads land in a per-thread scratch buffer and are copied
/// into the connection's input at their exact size: decoded payloads share the input
/// buffer, so a message waiting in a queue keeps alive the bytes of its own read, not a
/// whole fixed-size buffer.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
    /// The arrival stamp taken when a transport's read found its socket empty, for the
    /// driver that called it: what it reads later arrived after that.
    static LAST_EMPTY_READ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A read found the socket empty (it would block, or did not fill its buffer): stamps the
/// moment for the driver, as the earliest that input read later can have arrived
/// (`mqtt_core::arrival`).
pub(crate) fn note_empty_read() {
    LAST_EMPTY_READ.set(mqtt_core::arrival::stamp());
}
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection the channel closed keeps draining the peer's input after our
/// side is shut down, waiting for the peer to close its own. The peer has its last bytes
/// by then; this only keeps a reset from destroying them before it reads them, which
/// takes a reader a round trip or two. Long enough for a client that was busy sending
/// (the one that exceeded a limit) to read and close, short enough that a peer that never
/// closes holds its connection slot and session only briefly.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Rounds of reading, writing and waking in one poll before the task yields, so one busy
/// connection cannot hold its worker thread.
const ROUNDS_PER_POLL: usize = 32;

enum Phase {
    Running,
    /// Writing what is left before closing, until the timer fires.
    Flushing,
    /// Our side shut down (once `write_shut`), reading and discarding the peer's input
    /// until it closes too, the timer fires or the listener shuts down.
    Lingering {
        write_shut: bool,
    },
    /// The channel is told the connection closed, once.
    Done,
    Closed,
}

pin_project_lite::pin_project! {
    /// One connection, from accept to close: see [`drive_stream`].
    #[project = Projection]
    pub struct DriveStream<T, C> {
        transport: T,
        channel: C,
        wakeup: Arc<ConnWakeup>,
        // The arrival stamp of the last read that found the socket empty: what is read
        // next arrived after it.
        empty_at: u64,
        broker: Arc<Broker>,
        input: BytesMut,
        out: BytesMut,
        #[pin]
        timer: Sleep,
        // Whether `timer` is set to a deadline the channel asked for.
        armed: bool,
        phase: Phase,
        // The channel stopped taking input with some of it still buffered.
        stalled: bool,
    }
}

/// Runs one connection until either side closes it or its listener shuts down. The
/// channel is woken through `wakeup`, which it must also hand to the broker.
pub fn drive_stream<T, C>(
    transport: T,
    channel: C,
    wakeup: Arc<ConnWakeup>,
    broker: Arc<Broker>,
) -> DriveStream<T, C>
where
    T: Transport,
    C: StreamChannel,
{
    DriveStream {
        transport,
        channel,
        empty_at: mqtt_core::arrival::stamp(),
        wakeup,
        broker,
        input: BytesMut::new(),
        out: BytesMut::new(),
        timer: tokio::time::sleep(Duration::ZERO),
        armed: false,
        phase: Phase::Running,
        stalled: false,
    }
}

impl<T, C> DriveStream<T, C> {
    /// The transport, for what is left to do with it once the connection ended: a QUIC
    /// stream waits for its last bytes to be acknowledged before the connection closes.
    pub fn transport_mut(self: Pin<&mut Self>) -> &mut T {
        self.project().transport
    }
}

/// What one attempt at the socket came to.
enum Io {
    Progress,
    Blocked,
    /// The peer closed or the socket failed: nothing more can be written.
    Gone,
}

impl<T: Transport, C: StreamChannel> Future for DriveStream<T, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            match this.phase {
                Phase::Running => match run(&mut this, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Flow::Continue) => {
                        tracing::debug!("connection lost");
                        *this.phase = Phase::Done;
                    }
                    Poll::Ready(Flow::Close) => {
                        let until = tokio::time::Instant::now() + CLOSE_FLUSH_TIMEOUT;
                        this.timer.as_mut().reset(until);
                        *this.phase = Phase::Flushing;
                    }
                },
                Phase::Flushing => {
                    // Only a peer that took every byte is worth lingering for.
                    let mut flushed = true;
                    while !this.out.is_empty() || this.transport.has_buffered_output() {
                        match write(this.transport, cx, this.out, &this.broker.stats) {
                            Io::Progress => {}
                            Io::Gone => {
                                this.out.clear();
                                flushed = false;
                                break;
                            }
                            Io::Blocked => {
                                if this.timer.as_mut().poll(cx).is_pending() {
                                    return Poll::Pending;
                                }
                                tracing::debug!(
                                    left = this.out.len(),
                                    "peer too slow to take the last bytes before close"
                                );
                                this.out.clear();
                                flushed = false;
                                break;
                            }
                        }
                    }
                    *this.out = BytesMut::new();
                    *this.phase = if flushed {
                        let until = tokio::time::Instant::now() + CLOSE_LINGER;
                        this.timer.as_mut().reset(until);
                        // What the channel left unread is of no use any more; the drain
                        // starts from an empty buffer, so it holds one read at most.
                        *this.input = BytesMut::new();
                        Phase::Lingering { write_shut: false }
                    } else {
                        Phase::Done
                    };
                }
                Phase::Lingering { write_shut } => {
                    let mut write_shut = *write_shut;
                    if linger(&mut this, cx, &mut write_shut).is_pending() {
                        *this.phase = Phase::Lingering { write_shut };
                        return Poll::Pending;
                    }
                    *this.input = BytesMut::new();
                    *this.phase = Phase::Done;
                }
                Phase::Done => {
                    this.channel.handle_closed(Instant::now());
                    *this.phase = Phase::Closed;
                    return Poll::Ready(());
                }
                // A future is not polled after it finished; if it is, nothing happens again.
                Phase::Closed => return Poll::Ready(()),
            }
        }
    }
}

/// Runs the connection until it must close (`Close`: flush first; `Continue`: the peer
/// is gone) or nothing more can happen now (`Pending`).
fn run<T: Transport, C: StreamChannel>(
    this: &mut Projection<'_, T, C>,
    cx: &mut Context<'_>,
) -> Poll<Flow> {
    // Registered before `pending` is read: a wake between the two is not lost.
    this.wakeup.waker.register(cx.waker());
    for _ in 0..ROUNDS_PER_POLL {
        let mut progress = false;
        let pending = this.wakeup.pending.swap(0, Ordering::AcqRel);
        if pending & SHUTTING_DOWN != 0 && this.channel.shutdown(this.out) == Flow::Close {
            // Left pending, without a wake, so that the linger after the flush is skipped.
            this.wakeup
                .pending
                .fetch_or(SHUTTING_DOWN, Ordering::AcqRel);
            return Poll::Ready(Flow::Close);
        }
        let drain = this.out.len() < OUTPUT_READ_PAUSE / 4 && this.channel.wants_drain();
        if (pending & WOKEN != 0 || drain)
            && this.channel.handle_wakeup(this.out, Instant::now()) == Flow::Close
        {
            return Poll::Ready(Flow::Close);
        }

        // The timer only ever moves earlier; when it fires for a deadline that has since
        // moved later (keep-alive after traffic), the channel finds nothing due and the
        // timer is re-armed. That spares a timer update on every packet.
        if let Some(deadline) = this.channel.next_deadline() {
            let deadline = tokio::time::Instant::from_std(deadline);
            if !*this.armed || deadline < this.timer.deadline() {
                this.timer.as_mut().reset(deadline);
                *this.armed = true;
            }
        }
        if *this.armed && this.timer.as_mut().poll(cx).is_ready() {
            *this.armed = false;
            progress = true;
            if this.channel.handle_timeout(this.out, Instant::now()) == Flow::Close {
                return Poll::Ready(Flow::Close);
            }
        }

        if !this.out.is_empty() || this.transport.has_buffered_output() {
            match write(this.transport, cx, this.out, &this.broker.stats) {
                Io::Progress => progress = true,
                Io::Blocked => {}
                Io::Gone => return Poll::Ready(Flow::Continue),
            }
        }

        if *this.stalled && this.channel.accepts_input(Instant::now()) {
            // Let go: what the channel left in the buffer may be all the peer sent.
            *this.stalled = false;
            progress = true;
            if this
                .channel
                .handle_input(this.input, this.out, Instant::now())
                == Flow::Close
            {
                return Poll::Ready(Flow::Close);
            }
            *this.stalled = !this.channel.accepts_input(Instant::now());
        }
        if this.out.len() < OUTPUT_READ_PAUSE && !*this.stalled {
            LAST_EMPTY_READ.set(0);
            let read = this.transport.poll_read_buf(cx, this.input);
            // A read that returns bytes may also have found the socket empty after them:
            // that bounds the next input's arrival, not this one's.
            let emptied_at = LAST_EMPTY_READ.replace(0);
            if emptied_at != 0 && !matches!(read, Poll::Ready(Ok(n)) if n > 0) {
                *this.empty_at = emptied_at;
            }
            match read {
                // MQTT has no half-close: end of input ends the connection.
                Poll::Ready(Ok(0)) => return Poll::Ready(Flow::Continue),
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    Stats::add(&this.broker.stats.bytes_received, n as u64);
                    // Between the last look that found nothing and now.
                    this.channel
                        .note_arrival(*this.empty_at, mqtt_core::arrival::stamp());
                    if emptied_at != 0 {
                        *this.empty_at = emptied_at;
                    }
                    if this
                        .channel
                        .handle_input(this.input, this.out, Instant::now())
                        == Flow::Close
                    {
                        return Poll::Ready(Flow::Close);
                    }
                    *this.stalled = !this.channel.accepts_input(Instant::now());
                }
                // A layer under the protocol (TLS, WebSocket) refused what the peer sent.
                Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::InvalidData => {
                    tracing::info!(%error, "connection closed: malformed input");
                    return Poll::Ready(Flow::Continue);
                }
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "read failed");
                    return Poll::Ready(Flow::Continue);
                }
                Poll::Pending => {}
            }
            if this.input.is_empty() {
                // An idle connection keeps no read buffer, nor a share of one a decoded
                // packet was split from (which may have no capacity left).
                *this.input = BytesMut::new();
            }
        }

        if !progress && this.wakeup.pending.load(Ordering::Acquire) == 0 {
            return Poll::Pending;
        }
    }
    // Busy: let the other connections on this worker run, and come back.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Shuts our side down, then reads and discards the peer's input until it ends (`Ready`)
/// or nothing more can be read now (`Pending`). Ends at once when the listener shuts down
/// or the linger's time is up.
fn linger<T: Transport, C: StreamChannel>(
    this: &mut Projection<'_, T, C>,
    cx: &mut Context<'_>,
    write_shut: &mut bool,
) -> Poll<()> {
    // Registered before `pending` is read, as in `run`: a shutdown in between is not lost.
    this.wakeup.waker.register(cx.waker());
    if this.wakeup.pending.load(Ordering::Acquire) & SHUTTING_DOWN != 0 {
        return Poll::Ready(());
    }
    if !*write_shut {
        match this.transport.poll_shutdown(cx) {
            Poll::Ready(Ok(())) => *write_shut = true,
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "shutdown failed");
                return Poll::Ready(());
            }
            Poll::Pending => return this.timer.as_mut().poll(cx),
        }
        if !this.transport.drains_before_close() {
            return Poll::Ready(());
        }
    }
    for _ in 0..ROUNDS_PER_POLL {
        // Each read lands in the same buffer, emptied first: bounded by one read's size.
        this.input.clear();
        match this.transport.poll_read_buf(cx, this.input) {
            Poll::Ready(Ok(0)) => return Poll::Ready(()),
            Poll::Ready(Ok(n)) => Stats::add(&this.broker.stats.bytes_received, n as u64),
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "read failed while closing");
                return Poll::Ready(());
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    tracing::debug!("peer did not close in time");
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
        }
    }
    if this.timer.as_mut().poll(cx).is_ready() {
        tracing::debug!("peer did not stop sending in time");
        return Poll::Ready(());
    }
    // Still sending: let the other connections on this worker run, and come back.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Writes `out`, or, once it is empty, what the transport itself still holds.
fn write<T: Transport>(
    transport: &mut T,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
    stats: &Stats,
) -> Io {
    if out.is_empty() {
        return match transport.poll_flush(cx) {
            Poll::Ready(Ok(())) => Io::Progress,
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "write failed");
                Io::Gone
            }
            Poll::Pending => Io::Blocked,
        };
    }
    match transport.poll_write(cx, out) {
        Poll::Ready(Ok(0)) => Io::Gone,
        Poll::Ready(Ok(n)) => {
            Stats::add(&stats.bytes_sent, n as u64);
            out.advance(n);
            if out.is_empty() {
                *out = BytesMut::new();
            }
            Io::Progress
        }
        Poll::Ready(Err(error)) => {
            tracing::debug!(%error, "write failed");
            Io::Gone
        }
        Poll::Pending => Io::Blocked,
    }
}

/// The live connections of one listener, so that shutdown can reach each of them.
#[derive(Default)]
struct Connections {
    members: Mutex<Vec<Arc<ConnWakeup>>>,
    shutting_down: AtomicBool,
}

impl Connections {
    fn join(&self, wakeup: &Arc<ConnWakeup>) {
        let mut members = self.members.lock();
        wakeup.slot.store(members.len(), Ordering::Relaxed);
        members.push(wakeup.clone());
        // Checked under the lock: a connection that joins after shutdown began is told too.
        if self.shutting_down.load(Ordering::Acquire) {
            wakeup.raise(SHUTTING_DOWN);
        }
    }

    fn leave(&self, wakeup: &ConnWakeup) {
        let mut members = self.members.lock();
        let slot = wakeup.slot.load(Ordering::Relaxed);
        if slot < members.len() {
            members.swap_remove(slot);
            if let Some(moved) = members.get(slot) {
                moved.slot.store(slot, Ordering::Relaxed);
            }
        }
    }

    fn shut_down(&self) {
        let members = self.members.lock();
        self.shutting_down.store(true, Ordering::Release);
        for member in members.iter() {
            member.raise(SHUTTING_DOWN);
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection that holds its listener slot until it ends. A struct rather than an
    /// async block: a block that captures the connection future and awaits it stores that
    /// future twice.
    struct Membership<F> {
        #[pin]
        connection: F,
        wakeup: Arc<ConnWakeup>,
        connections: Arc<Connections>,
        metrics: Arc<StreamMetrics>,
        _permit: OwnedSemaphorePermit,
    }

    impl<F> PinnedDrop for Membership<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.metrics.current.fetch_sub(1, Ordering::Relaxed);
            this.connections.leave(this.wakeup);
        }
    }
}

impl<F: Future> Future for Membership<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().connection.poll(cx)
    }
}

/// Where a stream listener's connections come from: a TCP listener or a QUIC endpoint.
pub trait Acceptor: Send {
    /// An accepted connection, before any handshake of its own.
    type Conn: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>> + Send;
}

impl Acceptor for TcpListener {
    type Conn = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

#[derive(Debug, Clone)]
pub struct ListenerLimits {
    pub name: Arc<str>,
    pub max_connections: usize,
    pub max_conn_rate: Rate,
    /// Where the listener counts its connections; the caller publishes it as the
    /// listener's figures.
    pub metrics: Arc<StreamMetrics>,
}

/// A stream listener's connections, published under `$SYS/broker/listeners/{name}/`.
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Open now, handshakes under way included.
    pub current: AtomicU64,
    pub accepted: AtomicU64,
    /// Closed at once: the listener had `max_connections` open.
    pub refused: AtomicU64,
}

impl mqtt_core::broker::ListenerFigures for StreamMetrics {
    fn figures(&self, out: &mut Vec<(&'static str, u64)>) {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.extend([
            ("connections/current", read(&self.current)),
            ("connections/accepted", read(&self.accepted)),
            ("connections/refused", read(&self.refused)),
        ]);
    }
}

/// Accepts connections until `shutdown` turns true, then tells every connection to
/// close and waits for them. `serve` builds one connection's future around the wake-up
/// its channel must hand to the broker; connections beyond the limit are closed at once.
pub async fn serve_stream_listener<A, F, Fut>(
    listener: A,
    limits: ListenerLimits,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    A: Acceptor,
    F: Fn(A::Conn, SocketAddr, Arc<ConnWakeup>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Arc::new(Connections::default());
    let tracker = TaskTracker::new();
    let mut accept_rate = TokenBucket::new(limits.max_conn_rate, Instant::now());
    loop {
        // Over the rate, connections wait in the kernel's backlog rather than being refused.
        if let Some(Err(wait)) = accept_rate
            .as_mut()
            .map(|bucket| bucket.take(Instant::now()))
        {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let accepted = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
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
            limits.metrics.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %limits.name, %peer, max = limits.max_connections, "connection refused: listener at max connections");
            drop(stream);
            continue;
        };
        limits.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        limits.metrics.current.fetch_add(1, Ordering::Relaxed);
        // `client_addr` is filled in when a proxy names the real client.
        let span = tracing::info_span!(
            "conn",
            listener = %limits.name,
            %peer,
            client_addr = tracing::field::Empty,
            client_id = tracing::field::Empty
        );
        let wakeup = Arc::new(ConnWakeup::default());
        connections.join(&wakeup);
        let connection = span.in_scope(|| {
            tracing::debug!("connection accepted");
            serve(stream, peer, wakeup.clone())
        });
        tracker.spawn(
            Membership {
                connection,
                wakeup,
                connections: connections.clone(),
                metrics: limits.metrics.clone(),
                _permit: permit,
            }
            .instrument(span),
        );
    }
    drop(listener);
    connections.shut_down();
    tracker.close();
    tracker.wait().await;
}
