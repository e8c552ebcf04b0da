//! A raw WebSocket connection (tungstenite's client) for what the MQTT client libraries
//! will not do: choose how MQTT packets fall into frames, offer odd subprotocols, send
//! text frames, or pose as a proxy with X-Forwarded-For.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Response;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

use crate::raw::{Packet, Received};

pub struct RawWs {
    ws: WebSocket<TcpStream>,
    /// Bytes of frames received and not yet parsed into packets.
    pending: Vec<u8>,
    pub response: Response,
}

/// The HTTP status and body of a refused upgrade, or the error text of a failed one.
#[derive(Debug)]
pub struct Refused {
    pub status: Option<u16>,
    pub body: String,
}

impl RawWs {
    /// Upgrades a new connection to `ws://host:port{path}` with the given subprotocols
    /// (none sends no header) and extra headers, in order.
    pub fn open(
        host: &str,
        port: u16,
        path: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> Result<RawWs, Refused> {
        let mut request = format!("ws://{host}:{port}{path}")
            .into_client_request()
            .expect("a valid ws URL");
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&protocols.join(", ")).expect("header value"),
            );
        }
        // Appended, not inserted: a name given twice is sent as two header lines.
        for (name, value) in headers {
            request.headers_mut().append(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let stream = TcpStream::connect((host, port)).expect("TCP connect");
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        match tungstenite::client(request, stream) {
            Ok((ws, response)) => Ok(RawWs {
                ws,
                pending: Vec::new(),
                response,
            }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(Refused {
                    status: Some(response.status().as_u16()),
                    body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                        .into_owned(),
                })
            }
            Err(e) => Err(Refused {
                status: None,
                body: e.to_string(),
            }),
        }
    }

    /// The subprotocol the server chose, if it answered one.
    pub fn subprotocol(&self) -> Option<String> {
        self.response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// Sends `bytes` as one binary frame.
    pub fn send_frame(&mut self, bytes: &[u8]) {
        let _ = self.ws.send(Message::Binary(bytes.to_vec().into()));
    }

    pub fn send_text(&mut self, text: &str) {
        let _ = self.ws.send(Message::Text(text.into()));
    }

    /// The next MQTT packet, whatever frames it came in.
    pub fn read_packet(&mut self, timeout: Duration) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = self.take_packet() {
                return Received::Packet(packet);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::Timeout;
            }
            self.ws.get_mut().set_read_timeout(Some(left)).ok();
            match self.ws.read() {
                Ok(Message::Binary(bytes)) => self.pending.extend_from_slice(&bytes),
                Ok(Message::Close(_)) => return Received::Closed,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return Received::Timeout
                }
                Err(_) => return Received::Closed,
            }
        }
    }

    /// Reads until the server closes; the packets read, or None if still open at `timeout`.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Option<Vec<Packet>> {
        let deadline = Instant::now() + timeout;
        let mut packets = Vec::new();
        loop {
            match self.read_packet(deadline.saturating_duration_since(Instant::now())) {
                Received::Packet(p) => packets.push(p),
                Received::Closed => return Some(packets),
                Received::Timeout => return None,
            }
        }
    }

    fn take_packet(&mut self) -> Option<Packet> {
        let first = *self.pending.first()?;
        let mut len = 0usize;
        let mut header = 1;
        loop {
            let byte = *self.pending.get(header)?;
            len |= usize::from(byte & 0x7f) << (7 * (header - 1));
            header += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if self.pending.len() < header + len {
            return None;
        }
        let body = self.pending[header..header + len].to_vec();
        self.pending.drain(..header + len);
        Some(Packet {
            kind: first >> 4,
            flags: first & 0x0f,
            body,
        })
    }
}
