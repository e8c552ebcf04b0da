//! A minimal MQTT client connection: the codec over a `TcpStream`, with the handshakes
//! (CONNECT/CONNACK, SUBSCRIBE/SUBACK) done here and the hot loops in `publisher` and
//! `subscriber`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_core::codec::{
    encode, ConnAck, Connect, ConnectProperties, Decoder, Packet, ProtocolVersion, PubResponse,
    QoS, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::BenchError;

/// Large enough for any packet a broker may send us; the broker's own limit is what counts.
const MAX_PACKET_SIZE: u32 = 256 * 1024 * 1024;
/// Reads go into at least this much free space, so one syscall can take a large burst.
pub const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Local address to connect from (port chosen by the kernel); `None` lets the kernel
    /// choose both.
    pub source: Option<IpAddr>,
    pub client_id: String,
    pub version: ProtocolVersion,
    pub keep_alive: u16,
    /// Keeps the session after the connection (an hour under MQTT 5).
    pub persistent: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// One client connection: socket, codec state and the two buffers.
pub struct Conn {
    pub stream: TcpStream,
    pub decoder: Decoder,
    pub version: ProtocolVersion,
    pub input: BytesMut,
    pub out: BytesMut,
}

impl Conn {
    /// Opens TCP and completes CONNECT/CONNACK within `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        options: &ConnectOptions,
        timeout: Duration,
    ) -> Result<(Conn, ConnAck), BenchError> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, options))
            .await
            .map_err(|_| BenchError::Timeout {
                what: "CONNACK",
                after: timeout,
            })?
    }

    async fn connect_inner(
        addr: SocketAddr,
        options: &ConnectOptions,
    ) -> Result<(Conn, ConnAck), BenchError> {
        let stream = match options.source {
            None => TcpStream::connect(addr).await,
            Some(source) => connect_from(source, addr).await,
        }
        .map_err(BenchError::io("TCP connect"))?;
        stream
            .set_nodelay(true)
            .map_err(BenchError::io("setting TCP_NODELAY"))?;
        let mut conn = Conn {
            stream,
            decoder: Decoder::with_version(options.version, MAX_PACKET_SIZE),
            version: options.version,
            input: BytesMut::new(),
            out: BytesMut::new(),
        };
        let connect = Connect {
            protocol: options.version,
            clean_start: !options.persistent,
            keep_alive: options.keep_alive,
            client_id: options.client_id.clone(),
            will: None,
            username: options.username.clone(),
            password: options.password.clone().map(Into::into),
            properties: ConnectProperties {
                session_expiry_interval: (options.persistent
                    && options.version == ProtocolVersion::V5)
                    .then_some(3600),
                ..ConnectProperties::default()
            },
        };
        conn.send(&Packet::Connect(Box::new(connect))).await?;
        match conn.read_packet().await? {
            Packet::ConnAck(ack) if ack.reason_code.is_error() => {
                Err(BenchError::Refused(ack.reason_code.0))
            }
            Packet::ConnAck(ack) => Ok((conn, *ack)),
            other => Err(BenchError::Unexpected {
                expected: "CONNACK",
                got: other.name(),
            }),
        }
    }

    /// Subscribes to one filter and waits for its SUBACK; fails if the broker refuses it.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
        timeout: Duration,
    ) -> Result<(), BenchError> {
        let subscribe = Subscribe {
            packet_id: 1,
            subscription_identifier: None,
            user_properties: Vec::new(),
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
        };
        self.send(&Packet::Subscribe(subscribe)).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let packet = tokio::time::timeout(remaining, self.read_packet())
                .await
                .map_err(|_| BenchError::Timeout {
                    what: "SUBACK",
                    after: timeout,
                })??;
            match packet {
                Packet::SubAck(ack) if ack.packet_id == 1 => {
                    return match ack.reason_codes.first() {
                        Some(code) if !code.is_error() => Ok(()),
                        Some(code) => Err(BenchError::SubscribeRefused {
                            filter: filter.to_owned(),
                            code: code.0,
                        }),
                        None => Err(BenchError::Unexpected {
                            expected: "SUBACK with one reason code",
                            got: "SUBACK without any",
                        }),
                    };
                }
                // A retained message may precede the SUBACK: acknowledge it so the broker's
                // window stays open, and leave it out of the counts.
                Packet::Publish(publish) => {
                    let ack = PubResponse {
                        packet_id: publish.packet_id,
                        ..PubResponse::default()
                    };
                    match publish.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)).await?,
                        QoS::ExactlyOnce => self.send(&Packet::PubRec(ack)).await?,
                    }
                }
                Packet::PubRel(rel) => {
                    let comp = PubResponse {
                        packet_id: rel.packet_id,
                        ..PubResponse::default()
                    };
                    self.send(&Packet::PubComp(comp)).await?;
                }
                Packet::Disconnect(disconnect) => {
                    return Err(BenchError::Disconnected(disconnect.reason_code.0))
                }
                other => {
                    return Err(BenchError::Unexpected {
                        expected: "SUBACK",
                        got: other.name(),
                    })
                }
            }
        }
    }

    /// Sends DISCONNECT and closes, ignoring errors: the run's figures are already taken.
    pub async fn disconnect(mut self) {
        self.out.clear();
        let _ = encode(
            &Packet::Disconnect(Box::default()),
            self.version,
            &mut self.out,
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.stream.write_all(&self.out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), BenchError> {
        encode(packet, self.version, &mut self.out)?;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(BenchError::io("writing to the broker"))?;
        self.out.clear();
        Ok(())
    }

    async fn read_packet(&mut self) -> Result<Packet, BenchError> {
        loop {
            if let Some(packet) = self.decoder.decode(&mut self.input)? {
                return Ok(packet);
            }
            self.input.reserve(READ_CHUNK);
            let read = self
                .stream
                .read_buf(&mut self.input)
                .await
                .map_err(BenchError::io("reading from the broker"))?;
            if read == 0 {
                return Err(BenchError::Closed);
            }
        }
    }
}

/// Connects from a chosen local address. Tens of thousands of connections to one broker
/// address exhaust one source address's ephemeral ports and make every `connect` search
/// them, so large runs spread their clients over several loopback addresses.
async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    defer_port_choice(&socket);
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// Lets `connect` pick the local port for the whole 4-tuple, instead of `bind` picking one
/// that must be unique on its own (Linux `IP_BIND_ADDRESS_NO_PORT`). Best effort: without
/// it the connection still works, only port choice is costlier.
#[cfg(target_os = "linux")]
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is open for the lifetime of `socket`, and the option value is
    // a c_int whose size is passed alongside it.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_port_choice(_socket: &TcpSocket) {}

/// Makes sure `buf` has room for a large read without reallocating on every call.
pub fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}
