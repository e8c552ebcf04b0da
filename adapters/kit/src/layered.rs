//! Streams layered on a TCP socket (TLS records, WebSocket frames) driven by readiness.
//!
//! Each layer is a blocking-style `Read + Write` over a non-blocking socket: where the socket
//! would block the layer returns `WouldBlock` and keeps its state, so the next call resumes.
//! The driver still waits on the socket's readiness, not on a task per direction, and an idle
//! connection holds only what the layer itself keeps (rustls's and tungstenite's state).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::stream::{shut_down_writing, try_when_ready};
use crate::Transport;

/// One read takes at most this much: the rest stays in the layer and is read on the next
/// poll without waiting for the socket, so a fast sender cannot starve the connection's
/// writes.
const READ_BUDGET: usize = 64 * 1024;

/// A `Read + Write` stream over a shared non-blocking socket.
pub trait SocketStream: Read + Write + Send + Unpin + 'static {
    fn socket(&self) -> &Arc<TcpStream>;
    /// Whether the last `WouldBlock` came from writing to the socket (else from reading).
    fn blocked_on_write(&self) -> bool;
    /// Bytes accepted by `write` that are not yet on the socket.
    fn has_buffered_output(&self) -> bool;
    /// Queues what the layer sends at the end of its stream, if anything (TLS's
    /// close_notify), and pushes it to the socket with what else it holds; `WouldBlock`
    /// while the socket is full.
    fn end_output(&mut self) -> io::Result<()> {
        self.flush()
    }
}

/// Waits until `stream` can make progress on what last blocked it: for handshakes, where
/// reads and writes alternate inside the layer.
pub async fn wait_for_progress<S: SocketStream>(stream: &S) -> io::Result<()> {
    let socket = stream.socket().clone();
    if stream.blocked_on_write() {
        socket.writable().await
    } else {
        socket.readable().await
    }
}

/// The socket itself, as a blocking-style stream that answers `WouldBlock`.
pub struct PlainStream {
    socket: Arc<TcpStream>,
    blocked_on_write: bool,
}

impl PlainStream {
    pub fn new(socket: TcpStream) -> PlainStream {
        PlainStream {
            socket: Arc::new(socket),
            blocked_on_write: false,
        }
    }
}

impl Read for PlainStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.socket.try_read(buf);
        if is_would_block(&read) {
            self.blocked_on_write = false;
        }
        read
    }
}

impl Write for PlainStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.socket.try_write(buf);
        if is_would_block(&written) {
            self.blocked_on_write = true;
        }
        written
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SocketStream for PlainStream {
    fn socket(&self) -> &Arc<TcpStream> {
        &self.socket
    }
    fn blocked_on_write(&self) -> bool {
        self.blocked_on_write
    }
    fn has_buffered_output(&self) -> bool {
        false
    }
}

pub(crate) fn is_would_block<T>(result: &io::Result<T>) -> bool {
    matches!(result, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// A layered stream as the driver's [`Transport`]: MQTT bytes in and out, whatever the
/// layer makes of them on the wire.
pub struct LayeredTransport<S: SocketStream> {
    socket: Arc<TcpStream>,
    stream: S,
    /// The layer may hold input the socket no longer signals: bytes decrypted along with
    /// the handshake, or left over when a read stopped at its budget.
    more_input: bool,
}

impl<S: SocketStream> LayeredTransport<S> {
    pub fn new(stream: S) -> LayeredTransport<S> {
        LayeredTransport {
            socket: stream.socket().clone(),
            stream,
            more_input: true,
        }
    }

    /// Runs `f` on the stream, for what the connection needs of the layer (a peer
    /// certificate, say).
    pub fn with_stream<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.stream)
    }

    /// Reads what the layer gives now, up to the budget; `WouldBlock` when nothing.
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        self.more_input = false;
        let start = buf.len();
        let mut chunk = [0u8; 8 * 1024];
        loop {
            if buf.len() - start >= READ_BUDGET {
                self.more_input = true;
                break;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) if buf.len() == start => return Ok(0),
                Ok(0) => {
                    // Hand over what came before the end; the next read reports the end.
                    self.more_input = true;
                    break;
                }
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        match buf.len() - start {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl<S: SocketStream> Transport for LayeredTransport<S> {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.more_input {
                ready!(self.socket.poll_read_ready(cx))?;
            }
            match self.try_read_buf(buf) {
                // The socket's readiness was cleared by the read that blocked: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    crate::stream::note_empty_read();
                    continue;
                }
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let (socket, stream) = (&self.socket, &mut self.stream);
        try_when_ready(
            cx,
            |cx| socket.poll_write_ready(cx),
            || stream.flush().and_then(|()| stream.write(buf)),
        )
    }

    fn has_buffered_output(&self) -> bool {
        self.stream.has_buffered_output()
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (socket, stream) = (&self.socket, &mut self.stream);
        try_when_ready(cx, |cx| socket.poll_write_ready(cx), || stream.flush())
    }

    /// The layers' own ending first (a WebSocket close frame is the protocol's to send),
    /// then the socket's.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (socket, stream) = (&self.socket, &mut self.stream);
        ready!(try_when_ready(
            cx,
            |cx| socket.poll_write_ready(cx),
            || stream.end_output()
        ))?;
        Poll::Ready(shut_down_writing(socket))
    }
}
