//! WebSocket (RFC 6455) with tungstenite: the HTTP upgrade with path, subprotocol, Origin
//! and proxy-header checks, then binary frames as a byte stream.
//!
//! A proxy header (X-Forwarded-For) is a list each proxy appends the address it saw to, so
//! everything left of what our own proxies wrote was written by the client and is never
//! believed: the client is the rightmost entry that is not one of `trusted_proxies`.
//!
//! The carried protocol sees only bytes: a packet may span frames and a frame may hold
//! several packets, because frames are concatenated before the protocol decoder sees them.
//! Outgoing bytes waiting at a write go out as one frame, so several packets share one.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use gateway_config::{IpNet, WebSocketConfig};
use parking_lot::Mutex;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig as FrameLimits;
use tungstenite::{Message, WebSocket};

use crate::layered::{wait_for_progress, SocketStream};

/// tungstenite's read buffer is allocated per connection; frames larger than this are
/// still read, in several steps.
const READ_BUFFER: usize = 4 * 1024;

/// Why an upgrade did not produce a WebSocket.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Answered with an HTTP error status, the reason in its body.
    #[error("upgrade refused with HTTP {status}: {reason}")]
    Refused { status: u16, reason: String },
    #[error("not a WebSocket upgrade: {0}")]
    Handshake(tungstenite::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why the proxy header names no client; the upgrade is refused (HTTP 400) rather than
/// served as the socket's peer, since that peer is the proxy, whose address an ACL may
/// trust more than any client's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("{header}: {entry:?} is not an IP address")]
    NotAnAddress { header: String, entry: String },
    #[error("{header}: a value that is not visible ASCII")]
    NotText { header: String },
}

/// The result of a successful upgrade.
pub struct Upgraded<S: SocketStream> {
    pub stream: WsStream<S>,
    /// The client address a trusted proxy named in the configured header; None when the
    /// client is the socket's peer.
    pub forwarded_for: Option<IpAddr>,
    pub subprotocol: Option<String>,
}

#[derive(Default)]
struct Decision {
    forwarded_for: Option<IpAddr>,
    subprotocol: Option<String>,
}

/// Runs the server side of the HTTP upgrade on `stream`; the caller bounds it in time.
/// `peer` is the connection's peer as far as the gateway knows it (the socket's, or what a
/// PROXY protocol header named): the only one that may be a trusted proxy.
// The callback's error type is tungstenite's; it is built once per refused upgrade.
#[allow(clippy::result_large_err)]
pub async fn accept_websocket<S: SocketStream>(
    stream: S,
    options: &WebSocketConfig,
    peer: Option<SocketAddr>,
) -> Result<Upgraded<S>, UpgradeError> {
    let decision = Arc::new(Mutex::new(Decision::default()));
    let callback = {
        let decision = decision.clone();
        let options = options.clone();
        let peer = peer.map(|p| p.ip());
        move |request: &Request, response: Response| {
            check_request(&options, peer, request, response, &mut decision.lock())
        }
    };
    let limits = frame_limits(options.max_frame_size);
    let mut attempt = tungstenite::accept_hdr_with_config(stream, callback, Some(limits));
    let ws = loop {
        match attempt {
            Ok(ws) => break ws,
            Err(HandshakeError::Interrupted(mid)) => {
                wait_for_progress(mid.get_ref().get_ref()).await?;
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let reason = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                return Err(UpgradeError::Refused {
                    status: response.status().as_u16(),
                    reason,
                });
            }
            Err(HandshakeError::Failure(tungstenite::Error::Io(e))) => return Err(e.into()),
            Err(HandshakeError::Failure(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::HandshakeIncomplete,
            ))) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Err(HandshakeError::Failure(e)) => return Err(UpgradeError::Handshake(e)),
        }
    };
    let decision = std::mem::take(&mut *decision.lock());
    Ok(Upgraded {
        stream: WsStream::from_websocket(ws),
        forwarded_for: decision.forwarded_for,
        subprotocol: decision.subprotocol,
    })
}

fn refuse(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(reason.to_owned()));
    *response.status_mut() = status;
    response
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

#[allow(clippy::result_large_err)]
fn check_request(
    options: &WebSocketConfig,
    peer: Option<IpAddr>,
    request: &Request,
    mut response: Response,
    decision: &mut Decision,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != options.mqtt_path {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            &format!("no WebSocket endpoint at {}", request.uri().path()),
        ));
    }
    if options.check_origin_enable {
        match header(request, "origin") {
            None if !options.allow_origin_absence => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "an Origin header is required",
                ));
            }
            None => {}
            Some(origin) if options.check_origins.iter().any(|o| o == origin) => {}
            Some(origin) => {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    &format!("origin {origin} is not allowed"),
                ));
            }
        }
    }
    // The first protocol of the client's list that we support, as RFC 6455 4.2.2 asks.
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| {
            options
                .supported_subprotocols
                .iter()
                .any(|s| s.eq_ignore_ascii_case(p))
        });
    match offered {
        Some(protocol) => {
            if let Ok(value) = HeaderValue::from_str(protocol) {
                response
                    .headers_mut()
                    .insert("sec-websocket-protocol", value);
                decision.subprotocol = Some(protocol.to_owned());
            }
        }
        None if options.fail_if_no_subprotocol => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                &format!(
                    "no supported WebSocket subprotocol offered; supported: {}",
                    options.supported_subprotocols.join(", ")
                ),
            ));
        }
        None => {}
    }
    decision.forwarded_for = forwarded_client(options, peer, request)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, &e.to_string()))?;
    Ok(response)
}

/// The client a trusted proxy names in the configured header for a connection from
/// `peer`; None when the header is not configured, not present, or `peer` is not one of
/// the configured `trusted_proxies`.
fn forwarded_client(
    options: &WebSocketConfig,
    peer: Option<IpAddr>,
    request: &Request,
) -> Result<Option<IpAddr>, ForwardedError> {
    let name = options.proxy_address_header.as_str();
    if name.is_empty() {
        return Ok(None);
    }
    let lines = request.headers().get_all(name);
    let trusted = &options.trusted_proxies;
    let from_a_proxy = peer.is_some_and(|peer| trusted.iter().any(|net| net.contains(peer)));
    if !trusted.is_empty() && !from_a_proxy {
        if lines.iter().next().is_some() {
            tracing::debug!(
                ?peer,
                header = name,
                "header ignored: the peer is no trusted proxy"
            );
        }
        return Ok(None);
    }
    client_in_header(name, lines.iter(), trusted)
}

/// The client named by a header whose lines, in order, each hold addresses separated by
/// commas, every proxy appending the one it saw: the rightmost entry that is not one of
/// `trusted` (every entry trusted: the leftmost, a proxy speaking for itself). Entries
/// further left are the client's own writing and are not read; a malformed entry before
/// the client is found is an error. None when there is no line.
fn client_in_header<'a>(
    header: &str,
    lines: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    trusted: &[IpNet],
) -> Result<Option<IpAddr>, ForwardedError> {
    let mut leftmost_proxy = None;
    for line in lines.rev() {
        let text = line.to_str().map_err(|_| ForwardedError::NotText {
            header: header.to_owned(),
        })?;
        for entry in text.rsplit(',').map(str::trim) {
            let ip = parse_forwarded_entry(entry).ok_or_else(|| ForwardedError::NotAnAddress {
                header: header.to_owned(),
                entry: entry.to_owned(),
            })?;
            if !trusted.iter().any(|net| net.contains(ip)) {
                return Ok(Some(ip));
            }
            leftmost_proxy = Some(ip);
        }
    }
    Ok(leftmost_proxy)
}

/// An entry as proxies write them: an address, bracketed or not for IPv6, with or without
/// a port (which we do not use: it is the client's side of a connection to the proxy).
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

fn frame_limits(max_frame_size: u32) -> FrameLimits {
    FrameLimits::default()
        .read_buffer_size(READ_BUFFER)
        .max_frame_size(Some(max_frame_size as usize))
        .max_message_size(Some(max_frame_size as usize))
}

/// Binary frames in, binary frames out, as a byte stream.
pub struct WsStream<S> {
    ws: WebSocket<S>,
    /// The part of the last frame not yet read.
    leftover: Bytes,
    flush_pending: bool,
    closed: bool,
    /// Text frames are read as bytes too, for protocols whose clients send text (STOMP).
    accept_text: bool,
    /// Message mode, for protocols whose messages are WebSocket messages (CoAP, RFC 8323
    /// 4): what is written but not yet a whole record.
    records: Option<BytesMut>,
}

/// The length prefix of a record in message mode.
const RECORD_HEADER: usize = 4;

impl<S: Read + Write> WsStream<S> {
    /// The server side of a connection whose upgrade is already done: what follows on
    /// `stream` are the client's frames.
    pub fn after_upgrade(stream: S, max_frame_size: u32) -> WsStream<S> {
        WsStream::from_websocket(WebSocket::from_raw_socket(
            stream,
            tungstenite::protocol::Role::Server,
            Some(frame_limits(max_frame_size)),
        ))
    }

    fn from_websocket(ws: WebSocket<S>) -> WsStream<S> {
        WsStream {
            ws,
            leftover: Bytes::new(),
            flush_pending: false,
            closed: false,
            accept_text: false,
            records: None,
        }
    }

    /// Keeps message boundaries, for a protocol that has one message per WebSocket message
    /// and no length of its own: each binary message is read as a record, its length in 4
    /// bytes (big-endian) and then its bytes, and what is written must be such records,
    /// each of which leaves as one binary message.
    pub fn preserve_messages(&mut self) {
        self.records = Some(BytesMut::new());
    }

    /// Reads text frames as their UTF-8 bytes instead of refusing them: STOMP clients
    /// send text frames (browsers cannot choose otherwise for string bodies).
    pub fn accept_text_frames(&mut self) {
        self.accept_text = true;
    }

    /// The stream under the frames (TLS for WSS).
    pub fn inner(&self) -> &S {
        self.ws.get_ref()
    }

    fn note_flush(&mut self, result: tungstenite::Result<()>) -> io::Result<()> {
        match result {
            Ok(()) => {
                self.flush_pending = false;
                Ok(())
            }
            Err(tungstenite::Error::Io(e)) => {
                if e.kind() == io::ErrorKind::WouldBlock {
                    self.flush_pending = true;
                }
                Err(e)
            }
            Err(e) => Err(to_io(e)),
        }
    }
}

fn to_io(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        tungstenite::Error::Capacity(e) => {
            io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {e}"))
        }
        e => io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {e}")),
    }
}

impl<S: Read + Write> Read for WsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.leftover.is_empty() {
                let n = buf.len().min(self.leftover.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), self.leftover.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.leftover.advance(n);
                return Ok(n);
            }
            if self.closed {
                return Ok(0);
            }
            match self.ws.read() {
                Ok(Message::Binary(frame)) if self.records.is_some() => {
                    let mut record = BytesMut::with_capacity(RECORD_HEADER + frame.len());
                    record.put_u32(u32::try_from(frame.len()).unwrap_or(u32::MAX));
                    record.extend_from_slice(&frame);
                    self.leftover = record.freeze();
                }
                Ok(Message::Binary(frame)) => self.leftover = frame,
                Ok(Message::Text(text)) if self.accept_text => self.leftover = Bytes::from(text),
                Ok(Message::Text(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "WebSocket text frame: MQTT travels in binary frames",
                    ))
                }
                Ok(Message::Close(_)) => {
                    // tungstenite has queued the answering Close frame.
                    self.closed = true;
                    let flushed = self.ws.flush();
                    let _ = self.note_flush(flushed);
                }
                // A Ping's Pong is queued; it leaves with the next flush.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    self.flush_pending = true;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.closed = true;
                }
                Err(e) => return Err(to_io(e)),
            }
        }
    }
}

impl<S: Read + Write> Write for WsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush()?;
        let messages = match &mut self.records {
            None => vec![Bytes::copy_from_slice(buf)],
            Some(pending) => {
                pending.extend_from_slice(buf);
                let mut whole = Vec::new();
                while let Some(header) = pending.get(..RECORD_HEADER) {
                    let mut length = [0u8; RECORD_HEADER];
                    length.copy_from_slice(header);
                    let end = RECORD_HEADER + u32::from_be_bytes(length) as usize;
                    if pending.len() < end {
                        break;
                    }
                    let mut record = pending.split_to(end);
                    record.advance(RECORD_HEADER);
                    whole.push(record.freeze());
                }
                whole
            }
        };
        for message in messages {
            match self.ws.write(Message::Binary(message)) {
                // A frame that met a full socket stays queued inside tungstenite.
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        let flushed = self.ws.flush();
        match self.note_flush(flushed) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let flushed = self.ws.flush();
        self.note_flush(flushed)
    }
}

impl<S: SocketStream> SocketStream for WsStream<S> {
    fn socket(&self) -> &Arc<tokio::net::TcpStream> {
        self.ws.get_ref().socket()
    }
    fn blocked_on_write(&self) -> bool {
        self.ws.get_ref().blocked_on_write()
    }
    fn has_buffered_output(&self) -> bool {
        self.flush_pending || self.ws.get_ref().has_buffered_output()
    }
    /// The frames tungstenite still holds, then the end of the stream under them (TLS for
    /// WSS). No close frame: whether and when to send one is the protocol's business.
    fn end_output(&mut self) -> io::Result<()> {
        self.flush()?;
        self.ws.get_mut().end_output()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A client's frames as they arrive; what the server writes is kept apart.
    struct Wire {
        incoming: Cursor<Vec<u8>>,
        outgoing: Vec<u8>,
    }

    impl Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.incoming.read(buf)
        }
    }

    impl Write for Wire {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.outgoing.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Frames as a client sends them: masked.
    fn client_frames(messages: Vec<Message>) -> Vec<u8> {
        let wire = Wire {
            incoming: Cursor::new(Vec::new()),
            outgoing: Vec::new(),
        };
        let mut client =
            WebSocket::from_raw_socket(wire, tungstenite::protocol::Role::Client, None);
        for message in messages {
            client.send(message).unwrap();
        }
        client.get_ref().outgoing.clone()
    }

    fn server(frames: Vec<u8>, max_frame_size: u32) -> WsStream<Wire> {
        let wire = Wire {
            incoming: Cursor::new(frames),
            outgoing: Vec::new(),
        };
        WsStream::after_upgrade(wire, max_frame_size)
    }

    #[test]
    fn binary_frames_read_as_one_byte_stream_and_pings_are_answered() {
        let frames = client_frames(vec![
            Message::binary(b"ab".to_vec()),
            Message::Ping(Bytes::from_static(b"p")),
            Message::binary(b"cde".to_vec()),
            Message::Close(None),
        ]);
        let mut stream = server(frames, 1024);
        let mut read = Vec::new();
        stream.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"abcde");
        assert!(
            !stream.inner().outgoing.is_empty(),
            "the Pong and the closing Close went out"
        );
    }

    #[test]
    fn message_mode_keeps_message_boundaries_both_ways() {
        let frames = client_frames(vec![
            Message::binary(b"ab".to_vec()),
            Message::binary(b"cde".to_vec()),
            Message::Close(None),
        ]);
        let mut stream = server(frames, 1024);
        stream.preserve_messages();
        let mut read = Vec::new();
        stream.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"\0\0\0\x02ab\0\0\0\x03cde");

        let mut stream = server(Vec::new(), 1024);
        stream.preserve_messages();
        // Two records and the start of a third in one write, the rest in the next.
        stream.write_all(b"\0\0\0\x01x\0\0\0\x02yz\0\0").unwrap();
        stream.write_all(b"\0\x01w").unwrap();
        let sent = stream.inner().outgoing.clone();
        let mut client = WebSocket::from_raw_socket(
            Wire {
                incoming: Cursor::new(sent),
                outgoing: Vec::new(),
            },
            tungstenite::protocol::Role::Client,
            None,
        );
        for want in [&b"x"[..], b"yz", b"w"] {
            assert_eq!(client.read().unwrap(), Message::binary(want.to_vec()));
        }
    }

    fn upgrade_request(lines: &[&str]) -> Request {
        let mut request = Request::builder().uri("/mqtt");
        for line in lines {
            request = request.header("X-Forwarded-For", *line);
        }
        request.body(()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    /// The client as `client_in_header` finds it in these header lines.
    fn named(lines: &[&str], trusted: &[&str]) -> Result<Option<IpAddr>, ForwardedError> {
        let request = upgrade_request(lines);
        let lines = request.headers().get_all("x-forwarded-for");
        client_in_header("x-forwarded-for", lines.iter(), &nets(trusted))
    }

    #[test]
    fn the_client_is_the_rightmost_entry_not_a_trusted_proxy() {
        let cases: &[(&[&str], &[&str], &str)] = &[
            // One proxy in front: what it appended, whatever the client wrote before.
            (&["203.0.113.7"], &[], "203.0.113.7"),
            (&["10.9.9.9, 127.0.0.1"], &[], "127.0.0.1"),
            (&["10.9.9.9,127.0.0.1"], &[], "127.0.0.1"),
            // A proxy that adds its own line (HAProxy) after the client's forged one.
            (&["10.9.9.9", "127.0.0.1"], &[], "127.0.0.1"),
            (
                &["10.9.9.9, 10.8.8.8", "127.0.0.1, 198.51.100.4"],
                &["198.51.100.0/24"],
                "127.0.0.1",
            ),
            // A chain of our own proxies is skipped from the right.
            (
                &["10.9.9.9, 203.0.113.7, 198.51.100.4, 10.0.0.5"],
                &["198.51.100.0/24", "10.0.0.5"],
                "203.0.113.7",
            ),
            (
                &["203.0.113.7", "198.51.100.4"],
                &["198.51.100.0/24"],
                "203.0.113.7",
            ),
            // Every entry a proxy of ours: the leftmost, a proxy speaking for itself.
            (
                &["198.51.100.9, 198.51.100.4"],
                &["198.51.100.0/24"],
                "198.51.100.9",
            ),
            // Forms proxies write: IPv6 bare or bracketed, with a port.
            (&["2001:db8::1"], &[], "2001:db8::1"),
            (&["[2001:db8::1]"], &[], "2001:db8::1"),
            (&["[2001:db8::1]:4711"], &[], "2001:db8::1"),
            (&["203.0.113.7:4711"], &[], "203.0.113.7"),
            (&["::ffff:203.0.113.7"], &[], "203.0.113.7"),
            // What lies left of the client is the client's writing and is not read.
            (&["unknown, <script>, 203.0.113.7"], &[], "203.0.113.7"),
        ];
        for (lines, trusted, client) in cases {
            assert_eq!(
                named(lines, trusted),
                Ok(Some(ip(client))),
                "{lines:?} with trusted proxies {trusted:?}"
            );
        }
        assert_eq!(named(&[], &[]), Ok(None), "no header: the socket's peer");
    }

    #[test]
    fn a_malformed_entry_where_the_client_should_be_is_an_error() {
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["10.9.9.9, unknown"], &[], "unknown"),
            (&["10.9.9.9, "], &[], ""),
            (&[""], &[], ""),
            (&["10.9.9.9", ""], &[], ""),
            (&["10.9.9.9, 198.51.100.4:x"], &[], "198.51.100.4:x"),
            (&["fe80::1%eth0"], &[], "fe80::1%eth0"),
            // Past a trusted proxy's entry the walk goes on, and so does the check.
            (
                &["10.9.9.9, garbage, 198.51.100.4"],
                &["198.51.100.0/24"],
                "garbage",
            ),
        ];
        for (lines, trusted, entry) in cases {
            assert_eq!(
                named(lines, trusted),
                Err(ForwardedError::NotAnAddress {
                    header: "x-forwarded-for".into(),
                    entry: (*entry).into()
                }),
                "{lines:?} with trusted proxies {trusted:?}"
            );
        }
        let mut request = upgrade_request(&[]);
        request.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap(),
        );
        let lines = request.headers().get_all("x-forwarded-for");
        assert_eq!(
            client_in_header("x-forwarded-for", lines.iter(), &[]),
            Err(ForwardedError::NotText {
                header: "x-forwarded-for".into()
            })
        );
    }

    #[test]
    fn only_the_configured_header_from_a_trusted_peer_is_read() {
        let request = upgrade_request(&["10.9.9.9, 203.0.113.7"]);
        let mut options = WebSocketConfig {
            mqtt_path: "/mqtt".into(),
            supported_subprotocols: vec!["mqtt".into()],
            fail_if_no_subprotocol: false,
            max_frame_size: 1024,
            check_origin_enable: false,
            allow_origin_absence: true,
            check_origins: Vec::new(),
            proxy_address_header: String::new(),
            trusted_proxies: Vec::new(),
        };
        let peer = Some(ip("127.0.0.1"));
        assert_eq!(forwarded_client(&options, peer, &request), Ok(None));

        options.proxy_address_header = "X-Forwarded-For".into();
        // Without trusted proxies any peer's header is read, its rightmost entry believed.
        assert_eq!(
            forwarded_client(&options, peer, &request),
            Ok(Some(ip("203.0.113.7")))
        );
        assert_eq!(
            forwarded_client(&options, None, &request),
            Ok(Some(ip("203.0.113.7")))
        );

        options.trusted_proxies = nets(&["127.0.0.0/8"]);
        assert_eq!(
            forwarded_client(&options, peer, &request),
            Ok(Some(ip("203.0.113.7")))
        );
        assert_eq!(
            forwarded_client(&options, Some(ip("::ffff:127.0.0.1")), &request),
            Ok(Some(ip("203.0.113.7"))),
            "an IPv4-mapped peer is the IPv4 proxy"
        );
        for stranger in [Some(ip("192.0.2.1")), None] {
            assert_eq!(
                forwarded_client(&options, stranger, &request),
                Ok(None),
                "{stranger:?} is no proxy of ours: it is its own client"
            );
        }
        let bad = upgrade_request(&["10.9.9.9, bad"]);
        assert!(forwarded_client(&options, Some(ip("192.0.2.1")), &bad).is_ok());
        assert!(forwarded_client(&options, peer, &bad).is_err());
        assert_eq!(
            forwarded_client(&options, peer, &upgrade_request(&[])),
            Ok(None)
        );
    }

    #[test]
    fn text_and_oversized_frames_are_errors() {
        let mut stream = server(client_frames(vec![Message::text("x")]), 1024);
        let error = stream.read(&mut [0; 16]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);

        let mut stream = server(client_frames(vec![Message::binary(vec![0; 100])]), 64);
        let error = stream.read(&mut [0; 16]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
