//! A raw TCP connection speaking just enough MQTT to do what no reference client will:
//! send garbage after a valid CONNECT, go silent despite a keep-alive, or subscribe and
//! never read. The few packets it builds are written out by hand, byte by byte, from
//! the MQTT 3.1.1 / 5.0 specifications.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use crate::{Broker, Version};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBREC: u8 = 5;
pub const SUBACK: u8 = 9;
pub const DISCONNECT: u8 = 14;

/// One MQTT control packet as read from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The packet type (high nibble of the first byte).
    pub kind: u8,
    /// The flags (low nibble of the first byte).
    pub flags: u8,
    pub body: Vec<u8>,
}

impl Packet {
    /// The reason code of a CONNACK (its second byte; the return code in 3.1.1).
    pub fn connack_code(&self) -> Option<u8> {
        (self.kind == CONNACK)
            .then(|| self.body.get(1).copied())
            .flatten()
    }

    /// The reason code of an MQTT 5 DISCONNECT (absent means 0x00).
    pub fn disconnect_code(&self) -> Option<u8> {
        (self.kind == DISCONNECT).then(|| self.body.first().copied().unwrap_or(0))
    }

    /// A two-byte property of an MQTT 5 CONNACK (Receive Maximum is 0x21), if present.
    pub fn connack_u16_property(&self, id: u8) -> Option<u16> {
        if self.kind != CONNACK {
            return None;
        }
        let block = self.body.get(2..)?;
        let header = varint_len(block);
        let mut props = block.get(header - varint_value(block)..header)?;
        while let Some((&prop, rest)) = props.split_first() {
            // The value's size by the property's type (MQTT 5 2.2.2.2).
            let size = match prop {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
                0x13 | 0x21 | 0x22 => 2,
                0x11 | 0x27 => 4,
                0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                    2 + usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]))
                }
                0x26 => {
                    let key = 2 + usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
                    let value = rest.get(key..key + 2)?;
                    key + 2 + usize::from(u16::from_be_bytes([value[0], value[1]]))
                }
                other => panic!("unknown CONNACK property {other:#04x} in {self:?}"),
            };
            if prop == id {
                return Some(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
            }
            props = rest.get(size..)?;
        }
        None
    }
}

/// How a connection ended, as the reading side saw it.
#[derive(Debug)]
pub enum End {
    /// The end of the stream: everything the broker sent was read.
    Eof,
    /// An error, a reset by the broker's kernel above all: whatever the broker sent that
    /// had not been read yet was lost with it.
    Error(std::io::Error),
    /// Still open at the deadline.
    Timeout,
}

/// What reading the next packet produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Packet(Packet),
    /// The broker closed the connection (EOF or reset).
    Closed,
    Timeout,
}

/// The fields of a CONNECT this module can build.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    pub version: Version,
    pub client_id: String,
    pub keep_alive: u16,
    pub clean: bool,
    /// (topic, payload, qos)
    pub will: Option<(String, Vec<u8>, u8)>,
}

impl ConnectOpts {
    pub fn new(version: Version, client_id: &str) -> ConnectOpts {
        ConnectOpts {
            version,
            client_id: client_id.to_string(),
            keep_alive: 60,
            clean: true,
            will: None,
        }
    }
}

pub struct RawClient {
    stream: TcpStream,
    version: Version,
    /// The error that ended the connection, when a read met one instead of the end.
    end_error: Option<std::io::Error>,
}

impl RawClient {
    /// Opens a TCP connection to the broker (no MQTT yet).
    pub fn open(broker: &Broker, version: Version) -> RawClient {
        RawClient::open_at(&broker.addr(), version)
    }

    /// Opens a TCP connection to `addr` (`host:port`), another listener than MQTT over TCP.
    pub fn open_at(addr: &str, version: Version) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).ok();
        RawClient {
            stream,
            version,
            end_error: None,
        }
    }

    /// Opens a TCP connection whose kernel receive buffer is about `rcvbuf` bytes, so
    /// that a client that never reads pushes back on the broker quickly. The buffer
    /// must be set before connecting (it fixes the window scale), which std's
    /// TcpStream cannot do, hence libc.
    pub fn open_with_small_receive_buffer(
        broker: &Broker,
        version: Version,
        rcvbuf: i32,
    ) -> RawClient {
        let addr = broker
            .addr()
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.find(|a| a.is_ipv4()))
            .unwrap_or_else(|| panic!("{} has no IPv4 address", broker.addr()));
        let std::net::SocketAddr::V4(v4) = addr else {
            unreachable!("filtered to IPv4")
        };
        // SAFETY: plain socket calls on a descriptor this function owns until it hands
        // it to TcpStream, which then closes it.
        let stream = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket(): {}", std::io::Error::last_os_error());
            let stream = TcpStream::from_raw_fd(fd);
            let size: libc::c_int = rcvbuf;
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert!(
                rc == 0,
                "setsockopt(SO_RCVBUF): {}",
                std::io::Error::last_os_error()
            );
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            let rc = libc::connect(
                fd,
                &sin as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert!(
                rc == 0,
                "connect({addr}): {}",
                std::io::Error::last_os_error()
            );
            stream
        };
        RawClient {
            stream,
            version,
            end_error: None,
        }
    }

    /// Opens a connection, sends CONNECT and returns the CONNACK's reason code.
    pub fn connect(broker: &Broker, opts: &ConnectOpts) -> (RawClient, u8) {
        let mut client = RawClient::open(broker, opts.version);
        let code = client.handshake(opts);
        (client, code)
    }

    /// Sends CONNECT on an open connection and returns the CONNACK's reason code.
    pub fn handshake(&mut self, opts: &ConnectOpts) -> u8 {
        let connack = self.handshake_connack(opts);
        match connack.connack_code() {
            Some(code) => code,
            None => panic!("short CONNACK {connack:?}"),
        }
    }

    /// Sends CONNECT on an open connection and returns the CONNACK.
    pub fn handshake_connack(&mut self, opts: &ConnectOpts) -> Packet {
        self.version = opts.version;
        self.send(&connect_packet(opts));
        match self.read_packet(crate::TIMEOUT) {
            Received::Packet(p) if p.kind == CONNACK => p,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes to one filter and waits for the SUBACK; returns its reason code.
    pub fn subscribe(&mut self, packet_id: u16, filter: &str, qos: u8) -> u8 {
        self.send(&subscribe_packet(self.version, packet_id, filter, qos));
        let deadline = Instant::now() + crate::TIMEOUT;
        loop {
            match self.read_packet(deadline.saturating_duration_since(Instant::now())) {
                // A retained message may come first; only the SUBACK matters here.
                Received::Packet(p) if p.kind == SUBACK => {
                    let props_len = if self.version.is_v5() {
                        varint_len(&p.body[2..])
                    } else {
                        0
                    };
                    return *p
                        .body
                        .get(2 + props_len)
                        .unwrap_or_else(|| panic!("short SUBACK {p:?}"));
                }
                Received::Packet(_) => continue,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // A broker that already closed the connection makes this fail; the reader
        // sees that as Closed, which is what the tests check, so the error is moot.
        let _ = self.stream.write_all(bytes);
    }

    /// Reads the next packet, waiting at most `timeout` for it to be complete.
    pub fn read_packet(&mut self, timeout: Duration) -> Received {
        let deadline = Instant::now() + timeout;
        let mut first = [0u8; 1];
        match self.read_exact_by(&mut first, deadline) {
            Ok(true) => {}
            Ok(false) => return Received::Closed,
            Err(()) => return Received::Timeout,
        }
        let mut len: usize = 0;
        for shift in [0, 7, 14, 21] {
            let mut byte = [0u8; 1];
            match self.read_exact_by(&mut byte, deadline) {
                Ok(true) => {}
                Ok(false) => return Received::Closed,
                Err(()) => return Received::Timeout,
            }
            len |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        match self.read_exact_by(&mut body, deadline) {
            Ok(true) => Received::Packet(Packet {
                kind: first[0] >> 4,
                flags: first[0] & 0x0f,
                body,
            }),
            Ok(false) => Received::Closed,
            Err(()) => Received::Timeout,
        }
    }

    /// Reads packets until the broker closes the connection; returns them, or None if
    /// the connection is still open at `timeout`.
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

    /// Reads packets until the connection ends or `timeout` passes; returns them and how
    /// it ended, telling a clean end of stream from a reset.
    pub fn read_until_end(&mut self, timeout: Duration) -> (Vec<Packet>, End) {
        let deadline = Instant::now() + timeout;
        let mut packets = Vec::new();
        loop {
            match self.read_packet(deadline.saturating_duration_since(Instant::now())) {
                Received::Packet(p) => packets.push(p),
                Received::Closed => {
                    let end = match self.end_error.take() {
                        Some(error) => End::Error(error),
                        None => End::Eof,
                    };
                    return (packets, end);
                }
                Received::Timeout => return (packets, End::Timeout),
            }
        }
    }

    /// Closes the TCP connection without DISCONNECT.
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Fills `buf` completely: Ok(true) done, Ok(false) closed by the peer,
    /// Err(()) deadline passed.
    fn read_exact_by(&mut self, buf: &mut [u8], deadline: Instant) -> Result<bool, ()> {
        let mut filled = 0;
        while filled < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            self.stream.set_read_timeout(Some(left)).ok();
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => return Ok(false),
                Ok(n) => filled += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(())
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A reset is the broker closing the connection too.
                Err(e) => {
                    self.end_error = Some(e);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// MQTT's variable byte integer.
pub fn encode_varint(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// The value of the variable byte integer that `bytes` start with.
fn varint_value(bytes: &[u8]) -> usize {
    let mut value = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return value;
        }
    }
    panic!("bad variable byte integer in {bytes:?}")
}

/// How many bytes a property block takes: its varint length plus the properties.
fn varint_len(bytes: &[u8]) -> usize {
    let mut value = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return i + 1 + value;
        }
    }
    panic!("bad variable byte integer in {bytes:?}")
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A control packet: first byte, remaining length, body.
pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    encode_varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

pub fn connect_packet(opts: &ConnectOpts) -> Vec<u8> {
    let v5 = opts.version.is_v5();
    let mut body = Vec::new();
    let (name, level): (&[u8], u8) = match opts.version {
        Version::V31 => (b"MQIsdp", 3),
        Version::V311 => (b"MQTT", 4),
        Version::V5 => (b"MQTT", 5),
    };
    put_str(&mut body, name);
    body.push(level);
    let mut flags = 0u8;
    if opts.clean {
        flags |= 0x02;
    }
    if let Some((_, _, qos)) = &opts.will {
        flags |= 0x04 | (qos << 3);
    }
    body.push(flags);
    body.extend_from_slice(&opts.keep_alive.to_be_bytes());
    if v5 {
        body.push(0); // no CONNECT properties
    }
    put_str(&mut body, opts.client_id.as_bytes());
    if let Some((topic, payload, _)) = &opts.will {
        if v5 {
            body.push(0); // no will properties
        }
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, payload);
    }
    packet(CONNECT << 4, &body)
}

pub fn subscribe_packet(version: Version, packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if version.is_v5() {
        body.push(0); // no SUBSCRIBE properties
    }
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    packet(0x82, &body)
}

/// A PUBLISH; `packet_id` is used when qos > 0.
pub fn publish_packet(
    version: Version,
    topic: &str,
    qos: u8,
    packet_id: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    if version.is_v5() {
        body.push(0); // no PUBLISH properties
    }
    body.extend_from_slice(payload);
    packet((PUBLISH << 4) | (qos << 1), &body)
}
