//! STOMP frames (1.0, 1.1, 1.2): a bounded decoder that checks a whole frame is there
//! before it parses it, and the encoder.
//!
//! A frame is `COMMAND EOL (name:value EOL)* EOL body NUL`, EOL being LF or CR LF. Between
//! frames any number of EOLs may come: those are heart-beats. The body ends at the NUL
//! after `content-length` bytes when that header is given (so it may hold NULs), at the
//! first NUL otherwise. Header names and values are escaped (`\n`, `\c`, `\\`, and `\r`
//! from 1.2) except in CONNECT, STOMP and CONNECTED, and not at all in 1.0. A repeated
//! header counts only its first occurrence.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// The longest command name (UNSUBSCRIBE) with room for a CR.
const MAX_COMMAND_LINE: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    fn parse(name: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|command| command.as_str().as_bytes() == name)
    }

    /// The connection frames carry their headers unescaped (STOMP 1.2, "Value Encoding").
    fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    pub fn parse(text: &str) -> Option<Version> {
        match text.trim() {
            "1.0" => Some(Version::V1_0),
            "1.1" => Some(Version::V1_1),
            "1.2" => Some(Version::V1_2),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Frame {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The first occurrence of `name`: a repeated header counts only once.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The limits of `[gateway.stomp.frame]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_headers: usize,
    /// The longest header line, name, colon and value, as sent (escaped), bytes.
    pub max_headers_length: usize,
    pub max_body_length: usize,
}

/// Why bytes are not a frame; the connection gets an ERROR frame and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown command")]
    UnknownCommand,
    #[error("a CR not followed by LF")]
    BareCarriageReturn,
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    #[error("a header longer than {0} bytes")]
    HeaderTooLong(usize),
    #[error("a header line without a colon")]
    HeaderWithoutColon,
    #[error("an undefined escape sequence in a header")]
    InvalidEscape,
    #[error("a header that is not UTF-8")]
    NotUtf8,
    #[error("content-length is not a number")]
    InvalidContentLength,
    #[error("a body longer than {0} bytes")]
    BodyTooLong(usize),
    #[error("no NUL after content-length bytes of body")]
    MissingNul,
}

/// Decodes frames from a byte stream, one at a time, under the configured limits.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: FrameLimits,
    version: Version,
}

impl Decoder {
    /// Starts at 1.0 (no escaping) until the version is negotiated: CONNECT is never
    /// escaped anyway.
    pub fn new(limits: FrameLimits) -> Decoder {
        Decoder {
            limits,
            version: Version::V1_0,
        }
    }

    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// Drops leading heart-beats, then takes one frame off `buf` if a whole one is there
    /// (`Ok(None)`: more bytes are needed, and `buf` keeps what it has). Every limit is
    /// checked on what has arrived so far, so an over-long frame is refused without
    /// waiting for its end.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        skip_heartbeats(buf)?;
        if buf.is_empty() {
            return Ok(None);
        }
        let Some(layout) = self.scan(buf)? else {
            return Ok(None);
        };
        let mut frame_bytes = buf.split_to(layout.end);
        let head = frame_bytes.split_to(layout.body_start).freeze();
        let body = frame_bytes.split_to(layout.body_len).freeze();
        self.parse(&head, layout.command, body).map(Some)
    }

    /// Finds where the frame at the start of `buf` ends, checking the limits.
    fn scan(&self, buf: &[u8]) -> Result<Option<Layout>, FrameError> {
        let Some(command_end) = find(buf, 0, b'\n') else {
            if buf.len() > MAX_COMMAND_LINE {
                return Err(FrameError::UnknownCommand);
            }
            return Ok(None);
        };
        let command_line = strip_cr(buf.get(..command_end).unwrap_or_default());
        let command = Command::parse(command_line).ok_or(FrameError::UnknownCommand)?;
        let mut at = command_end + 1;
        let mut headers = 0;
        let mut content_length = None;
        let max_line = self.limits.max_headers_length;
        loop {
            let Some(line_end) = find(buf, at, b'\n') else {
                // The line so far may still be a blank line with its CR.
                if buf.len().saturating_sub(at) > max_line + 1 {
                    return Err(FrameError::HeaderTooLong(max_line));
                }
                return Ok(None);
            };
            let line = strip_cr(buf.get(at..line_end).unwrap_or_default());
            at = line_end + 1;
            if line.is_empty() {
                break;
            }
            if line.len() > max_line {
                return Err(FrameError::HeaderTooLong(max_line));
            }
            headers += 1;
            if headers > self.limits.max_headers {
                return Err(FrameError::TooManyHeaders(self.limits.max_headers));
            }
            // The first content-length counts; its name and value need no unescaping.
            if content_length.is_none() {
                if let Some(value) = line.strip_prefix(b"content-length:") {
                    let text =
                        std::str::from_utf8(value).map_err(|_| FrameError::InvalidContentLength)?;
                    let length: usize = text
                        .trim()
                        .parse()
                        .map_err(|_| FrameError::InvalidContentLength)?;
                    content_length = Some(length);
                }
            }
        }
        let body_start = at;
        let max_body = self.limits.max_body_length;
        match content_length {
            Some(length) => {
                if length > max_body {
                    return Err(FrameError::BodyTooLong(max_body));
                }
                let nul_at = body_start + length;
                match buf.get(nul_at) {
                    None => Ok(None),
                    Some(0) => Ok(Some(Layout {
                        command,
                        body_start,
                        body_len: length,
                        end: nul_at + 1,
                    })),
                    Some(_) => Err(FrameError::MissingNul),
                }
            }
            None => match find(buf, body_start, 0) {
                Some(nul_at) if nul_at - body_start > max_body => {
                    Err(FrameError::BodyTooLong(max_body))
                }
                Some(nul_at) => Ok(Some(Layout {
                    command,
                    body_start,
                    body_len: nul_at - body_start,
                    end: nul_at + 1,
                })),
                None if buf.len() - body_start > max_body => Err(FrameError::BodyTooLong(max_body)),
                None => Ok(None),
            },
        }
    }

    fn parse(&self, head: &[u8], command: Command, body: Bytes) -> Result<Frame, FrameError> {
        let escaping = escaping(self.version, command);
        let mut lines = head.split(|b| *b == b'\n').map(strip_cr);
        lines.next();
        let mut headers = Vec::new();
        for line in lines.filter(|line| !line.is_empty()) {
            let colon = line
                .iter()
                .position(|b| *b == b':')
                .ok_or(FrameError::HeaderWithoutColon)?;
            let (name, value) = line.split_at(colon);
            let value = value.get(1..).unwrap_or_default();
            headers.push((unescape(name, escaping)?, unescape(value, escaping)?));
        }
        Ok(Frame {
            command,
            headers,
            body,
        })
    }
}

struct Layout {
    command: Command,
    body_start: usize,
    body_len: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escaping {
    None,
    /// 1.1: `\n`, `\c`, `\\`.
    V1_1,
    /// 1.2: also `\r`.
    V1_2,
}

fn escaping(version: Version, command: Command) -> Escaping {
    if !command.escapes_headers() {
        return Escaping::None;
    }
    match version {
        Version::V1_0 => Escaping::None,
        Version::V1_1 => Escaping::V1_1,
        Version::V1_2 => Escaping::V1_2,
    }
}

fn skip_heartbeats(buf: &mut BytesMut) -> Result<(), FrameError> {
    loop {
        match buf.first() {
            Some(b'\n') => buf.advance(1),
            Some(b'\r') => match buf.get(1) {
                Some(b'\n') => buf.advance(2),
                Some(_) => return Err(FrameError::BareCarriageReturn),
                None => return Ok(()),
            },
            _ => return Ok(()),
        }
    }
}

fn find(buf: &[u8], from: usize, byte: u8) -> Option<usize> {
    buf.get(from..)?
        .iter()
        .position(|b| *b == byte)
        .map(|at| at + from)
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn unescape(raw: &[u8], escaping: Escaping) -> Result<String, FrameError> {
    if escaping == Escaping::None || !raw.contains(&b'\\') {
        return String::from_utf8(raw.to_vec()).map_err(|_| FrameError::NotUtf8);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b'c') => out.push(b':'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'r') if escaping == Escaping::V1_2 => out.push(b'\r'),
            _ => return Err(FrameError::InvalidEscape),
        }
    }
    String::from_utf8(out).map_err(|_| FrameError::NotUtf8)
}

fn escape_into(text: &str, escaping: Escaping, out: &mut BytesMut) {
    for b in text.bytes() {
        match (escaping, b) {
            (Escaping::None, b'\n' | b'\r') => out.extend_from_slice(b" "),
            (Escaping::None, _) => out.extend_from_slice(&[b]),
            (_, b'\n') => out.extend_from_slice(b"\\n"),
            (_, b':') => out.extend_from_slice(b"\\c"),
            (_, b'\\') => out.extend_from_slice(b"\\\\"),
            (Escaping::V1_2, b'\r') => out.extend_from_slice(b"\\r"),
            // 1.1 cannot carry a CR in a header.
            (Escaping::V1_1, b'\r') => out.extend_from_slice(b" "),
            _ => out.extend_from_slice(&[b]),
        }
    }
}

/// Appends `frame` in `version`'s encoding. A 1.0 frame or a connection frame cannot
/// carry a line break in a header, which becomes a space; a colon in a 1.0 header name
/// would split it anew and becomes `_`.
pub fn encode(frame: &Frame, version: Version, out: &mut BytesMut) {
    let escaping = escaping(version, frame.command);
    out.extend_from_slice(frame.command.as_str().as_bytes());
    out.extend_from_slice(b"\n");
    for (name, value) in &frame.headers {
        if escaping == Escaping::None {
            let name = name.replace(':', "_");
            escape_into(&name, escaping, out);
        } else {
            escape_into(name, escaping, out);
        }
        out.extend_from_slice(b":");
        escape_into(value, escaping, out);
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.extend_from_slice(&frame.body);
    out.extend_from_slice(b"\0");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn limits() -> FrameLimits {
        FrameLimits {
            max_headers: 10,
            max_headers_length: 64,
            max_body_length: 32,
        }
    }

    fn decode_all(bytes: &[u8], version: Version) -> Result<Option<Frame>, FrameError> {
        let mut decoder = Decoder::new(limits());
        decoder.set_version(version);
        decoder.decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn escapes_are_decoded_per_version() {
        let wire = b"SEND\nde\\cst:a\\nb\\\\c\\rd\n\nx\0";
        let frame = decode_all(wire, Version::V1_2).unwrap().unwrap();
        assert_eq!(frame.headers, vec![("de:st".into(), "a\nb\\c\rd".into())]);
        // 1.1 has no \r escape: an undefined escape is an error.
        assert_eq!(
            decode_all(wire, Version::V1_1),
            Err(FrameError::InvalidEscape)
        );
        // 1.0 takes the bytes as they are.
        let frame = decode_all(wire, Version::V1_0).unwrap().unwrap();
        assert_eq!(frame.headers[0].0, "de\\cst");
        // CONNECT is never unescaped.
        let frame = decode_all(b"CONNECT\nlogin:a\\cb\n\n\0", Version::V1_2)
            .unwrap()
            .unwrap();
        assert_eq!(frame.header("login"), Some("a\\cb"));
    }

    #[test]
    fn crlf_heartbeats_nul_bodies_and_first_header_wins() {
        let wire = b"\n\r\n\nSEND\r\ncontent-length:3\r\na:1\r\na:2\r\n\r\nx\0y\0\n";
        let mut buf = BytesMut::from(&wire[..]);
        let mut decoder = Decoder::new(limits());
        let frame = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.command, Command::Send);
        assert_eq!(&frame.body[..], b"x\0y");
        assert_eq!(frame.header("a"), Some("1"));
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "the trailing EOL is a heart-beat");
    }

    #[test]
    fn split_input_waits_for_the_rest() {
        let wire = b"SEND\ndestination:a/b\n\nhello\0";
        for cut in 0..wire.len() {
            let mut decoder = Decoder::new(limits());
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decoder.decode(&mut buf).unwrap(), None, "cut at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            let frame = decoder.decode(&mut buf).unwrap().unwrap();
            assert_eq!(&frame.body[..], b"hello");
        }
    }

    #[test]
    fn malformed_frames_and_limits() {
        let long_value = format!("SEND\na:{}\n\n\0", "v".repeat(70));
        let many = format!("SEND\n{}\n\0", "h:v\n".repeat(11));
        let cases: Vec<(&[u8], FrameError)> = vec![
            (b"FOO\n\n\0", FrameError::UnknownCommand),
            (b"SENDSENDSENDSEND", FrameError::UnknownCommand),
            (b"\rX", FrameError::BareCarriageReturn),
            (b"SEND\nnocolon\n\n\0", FrameError::HeaderWithoutColon),
            (b"SEND\na:\\t\n\n\0", FrameError::InvalidEscape),
            (b"SEND\na:\xff\n\n\0", FrameError::NotUtf8),
            (
                b"SEND\ncontent-length:x\n\n\0",
                FrameError::InvalidContentLength,
            ),
            (b"SEND\ncontent-length:2\n\nabc\0", FrameError::MissingNul),
            (b"SEND\ncontent-length:33\n\n", FrameError::BodyTooLong(32)),
            (
                b"SEND\n\n0123456789012345678901234567890123",
                FrameError::BodyTooLong(32),
            ),
            (long_value.as_bytes(), FrameError::HeaderTooLong(64)),
            (many.as_bytes(), FrameError::TooManyHeaders(10)),
        ];
        for (wire, expected) in cases {
            assert_eq!(
                decode_all(wire, Version::V1_2),
                Err(expected.clone()),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        // An over-long header is refused before its end arrives.
        assert_eq!(
            decode_all(
                format!("SEND\na:{}", "v".repeat(80)).as_bytes(),
                Version::V1_2
            ),
            Err(FrameError::HeaderTooLong(64))
        );
    }

    #[test]
    fn encode_escapes_per_version() {
        let frame = Frame::new(Command::Message).with_header("k:1", "a\nb\r");
        let mut out = BytesMut::new();
        encode(&frame, Version::V1_2, &mut out);
        assert_eq!(&out[..], b"MESSAGE\nk\\c1:a\\nb\\r\n\n\0");
        out.clear();
        encode(&frame, Version::V1_1, &mut out);
        assert_eq!(&out[..], b"MESSAGE\nk\\c1:a\\nb \n\n\0");
        out.clear();
        encode(&frame, Version::V1_0, &mut out);
        assert_eq!(&out[..], b"MESSAGE\nk_1:a b \n\n\0");
    }
}
