//! CoAP load: clients publishing by confirmable `POST /ps/{topic}` over UDP or DTLS 1.2
//! with a pre-shared key, each with one request outstanding (RFC 7252's NSTART = 1), and
//! DTLS handshakes back to back. Deliveries are counted by an MQTT subscriber.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use dimpl::{Dtls, Output};
use tokio::net::UdpSocket;

use crate::error::BenchError;
use crate::payload::Header;

/// RFC 7252's ACK_TIMEOUT: a request unanswered this long is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// RFC 7252's MAX_RETRANSMIT: after this many retransmissions a request counts as lost.
const MAX_RETRANSMIT: u32 = 4;
const DATAGRAM: usize = 2048;

/// How a client reaches the CoAP listener.
#[derive(Debug, Clone)]
pub enum Security {
    Udp,
    /// DTLS 1.2 with `TLS_PSK_WITH_AES_128_CCM_8` and this identity and key; the identity
    /// is the client id too, as the gateway requires of DTLS clients.
    Psk {
        identity: String,
        key: Vec<u8>,
        /// Offers the connection ID extension (RFC 9146), asking for none of its own: its
        /// records then carry the gateway's ID.
        connection_id: bool,
    },
}

/// What one publishing client did.
#[derive(Debug, Default)]
pub struct PublishCounters {
    /// Requests sent, retransmissions not counted.
    pub sent: AtomicU64,
    /// Answered 2.xx.
    pub accepted: AtomicU64,
    /// Answered with another code.
    pub refused: AtomicU64,
    /// Never answered after every retransmission.
    pub unanswered: AtomicU64,
    pub retransmitted: AtomicU64,
}

/// The loopback source of client `index`, spread over 127.0.0.2..=127.0.0.251 so that
/// per-source limits of a listener see many sources, as from a fleet.
pub fn source_for(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (index % 250) as u8))
}

/// A UDP socket bound on `source` and connected to `server`.
pub async fn socket_to(source: IpAddr, server: SocketAddr) -> Result<UdpSocket, BenchError> {
    let socket = UdpSocket::bind(SocketAddr::new(source, 0))
        .await
        .map_err(BenchError::io("binding a UDP socket"))?;
    socket
        .connect(server)
        .await
        .map_err(BenchError::io("connecting a UDP socket"))?;
    Ok(socket)
}

/// One DTLS 1.2 client session over a connected socket.
pub struct DtlsSession {
    dtls: Dtls,
    scratch: Vec<u8>,
    next_timeout: Option<Instant>,
}

struct ClientKey(Vec<u8>);

impl dimpl::PskResolver for ClientKey {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

/// A client configuration for one pre-shared key. Made once and shared: building one runs
/// the crypto provider's self-tests, which cost far more than a PSK handshake.
pub fn psk_client_config(
    identity: &[u8],
    key: &[u8],
    connection_id: bool,
) -> Result<Arc<dimpl::Config>, BenchError> {
    let builder = dimpl::Config::builder()
        .with_psk_client(identity.to_vec(), Arc::new(ClientKey(key.to_vec())));
    let builder = if connection_id {
        builder.dtls12_connection_id_len(0)
    } else {
        builder
    };
    builder
        .build()
        .map(Arc::new)
        .map_err(|error| BenchError::Dtls(error.to_string()))
}

impl DtlsSession {
    /// Runs the handshake (cookie exchanges included) within `timeout`.
    pub async fn connect(
        socket: &UdpSocket,
        config: Arc<dimpl::Config>,
        timeout: Duration,
    ) -> Result<DtlsSession, BenchError> {
        let now = Instant::now();
        let mut session = DtlsSession {
            dtls: Dtls::new_12_psk(config, now),
            scratch: vec![0; DATAGRAM],
            next_timeout: None,
        };
        session.dtls.set_active(true);
        session.tick(now)?;
        let deadline = now + timeout;
        let mut datagram = vec![0; DATAGRAM];
        loop {
            if session.flush(socket).await?.connected {
                return Ok(session);
            }
            let wake = session.next_timeout.map_or(deadline, |at| at.min(deadline));
            match tokio::time::timeout_at(wake.into(), socket.recv(&mut datagram)).await {
                Ok(Ok(n)) => session.receive(datagram.get(..n).unwrap_or_default())?,
                Ok(Err(error)) => return Err(BenchError::io("receiving")(error)),
                Err(_) if Instant::now() >= deadline => {
                    return Err(BenchError::Timeout {
                        what: "DTLS handshake",
                        after: timeout,
                    })
                }
                Err(_) => session.tick(Instant::now())?,
            }
        }
    }

    fn tick(&mut self, now: Instant) -> Result<(), BenchError> {
        self.dtls
            .handle_timeout(now)
            .map_err(|error| BenchError::Dtls(error.to_string()))
    }

    fn receive(&mut self, datagram: &[u8]) -> Result<(), BenchError> {
        self.dtls
            .handle_packet(datagram)
            .map_err(|error| BenchError::Dtls(error.to_string()))
    }

    /// Sends what the engine has to send; returns the application data received and
    /// whether the handshake completed in this batch and the peer closed.
    async fn flush(&mut self, socket: &UdpSocket) -> Result<Flushed, BenchError> {
        let mut flushed = Flushed::default();
        let mut packets = Vec::new();
        loop {
            match self.dtls.poll_output(&mut self.scratch) {
                Output::Packet(packet) => packets.push(packet.to_vec()),
                Output::Timeout(at) => {
                    self.next_timeout = Some(at);
                    break;
                }
                Output::Connected => flushed.connected = true,
                Output::ApplicationData(data) => flushed.data.push(data.to_vec()),
                Output::CloseNotify => flushed.closed = true,
                Output::BufferTooSmall { needed } => self.scratch.resize(needed, 0),
                _ => {}
            }
        }
        for packet in packets {
            socket
                .send(&packet)
                .await
                .map_err(BenchError::io("sending"))?;
        }
        Ok(flushed)
    }

    /// Sends a close_notify, so the server frees the session at once.
    pub async fn close(mut self, socket: &UdpSocket) -> Result<(), BenchError> {
        self.dtls
            .close()
            .map_err(|error| BenchError::Dtls(error.to_string()))?;
        self.flush(socket).await.map(|_| ())
    }
}

#[derive(Default)]
struct Flushed {
    data: Vec<Vec<u8>>,
    connected: bool,
    closed: bool,
}

/// A CoAP endpoint over UDP or DTLS: sends datagrams, returns the CoAP messages received.
enum Link {
    Udp(UdpSocket),
    Dtls(UdpSocket, Box<DtlsSession>),
}

impl Link {
    async fn send(&mut self, message: &[u8]) -> Result<(), BenchError> {
        match self {
            Link::Udp(socket) => socket
                .send(message)
                .await
                .map(|_| ())
                .map_err(BenchError::io("sending")),
            Link::Dtls(socket, session) => {
                session
                    .dtls
                    .send_application_data(message)
                    .map_err(|error| BenchError::Dtls(error.to_string()))?;
                session.flush(socket).await.map(|_| ())
            }
        }
    }

    /// Waits until `until` for datagrams; returns the CoAP messages they carried (none
    /// at the deadline).
    async fn receive(
        &mut self,
        buf: &mut [u8],
        until: Instant,
    ) -> Result<Vec<Vec<u8>>, BenchError> {
        match self {
            Link::Udp(socket) => {
                match tokio::time::timeout_at(until.into(), socket.recv(buf)).await {
                    Ok(Ok(n)) => Ok(vec![buf.get(..n).unwrap_or_default().to_vec()]),
                    Ok(Err(error)) => Err(BenchError::io("receiving")(error)),
                    Err(_) => Ok(Vec::new()),
                }
            }
            Link::Dtls(socket, session) => {
                let wake = session.next_timeout.map_or(until, |at| at.min(until));
                match tokio::time::timeout_at(wake.into(), socket.recv(buf)).await {
                    Ok(Ok(n)) => session.receive(buf.get(..n).unwrap_or_default())?,
                    Ok(Err(error)) => return Err(BenchError::io("receiving")(error)),
                    Err(_) => session.tick(Instant::now())?,
                }
                let flushed = session.flush(socket).await?;
                if flushed.closed {
                    return Err(BenchError::Dtls("the server closed the session".into()));
                }
                Ok(flushed.data)
            }
        }
    }
}

/// One publishing client's plan.
pub struct PublisherSpec {
    pub index: u32,
    pub server: SocketAddr,
    pub security: Security,
    pub client_id: String,
    pub topic: String,
    pub size: usize,
    pub epoch: Instant,
    pub handshake_timeout: Duration,
}

/// Publishes one request at a time until `stop`, answering the server's confirmable
/// messages (a separate response) with an empty ACK.
pub async fn run_publisher(
    spec: PublisherSpec,
    counters: Arc<PublishCounters>,
    stop: Arc<AtomicBool>,
) -> Result<(), BenchError> {
    let socket = socket_to(source_for(spec.index as usize), spec.server).await?;
    let mut link = match &spec.security {
        Security::Udp => Link::Udp(socket),
        Security::Psk {
            identity,
            key,
            connection_id,
        } => {
            let config = psk_client_config(identity.as_bytes(), key, *connection_id)?;
            let session = DtlsSession::connect(&socket, config, spec.handshake_timeout).await?;
            Link::Dtls(socket, Box::new(session))
        }
    };
    let mut message_id = (spec.index as u16).wrapping_mul(7919);
    let mut payload = vec![0u8; spec.size];
    let mut buf = vec![0u8; DATAGRAM];
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        message_id = message_id.wrapping_add(1);
        let token = seq.to_be_bytes().to_vec();
        Header {
            publisher: spec.index,
            seq,
            sent_ns: spec.epoch.elapsed().as_nanos() as u64,
        }
        .write(&mut payload);
        let request = publish_request(&spec, message_id, &token, &payload)?;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        seq += 1;
        let mut attempts = 0;
        let mut deadline = Instant::now() + ACK_TIMEOUT;
        link.send(&request).await?;
        'answer: loop {
            for message in link.receive(&mut buf, deadline).await? {
                let Ok(packet) = Packet::from_bytes(&message) else {
                    continue;
                };
                if packet.header.get_type() == MessageType::Confirmable {
                    let mut ack = Packet::new();
                    ack.header.set_type(MessageType::Acknowledgement);
                    ack.header.message_id = packet.header.message_id;
                    link.send(&encode(&ack)?).await?;
                }
                if packet.get_token() != token.as_slice() {
                    continue;
                }
                match packet.header.code {
                    // An empty ACK: the answer follows as a separate response.
                    MessageClass::Empty => deadline = Instant::now() + ACK_TIMEOUT * 8,
                    MessageClass::Response(code) => {
                        if success(code) {
                            counters.accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        break 'answer;
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                if attempts == MAX_RETRANSMIT {
                    counters.unanswered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                attempts += 1;
                counters.retransmitted.fetch_add(1, Ordering::Relaxed);
                deadline = Instant::now() + ACK_TIMEOUT * 2u32.pow(attempts);
                link.send(&request).await?;
            }
        }
    }
    if let Link::Dtls(socket, session) = link {
        session.close(&socket).await?;
    }
    Ok(())
}

fn success(code: ResponseType) -> bool {
    matches!(
        code,
        ResponseType::Created
            | ResponseType::Deleted
            | ResponseType::Valid
            | ResponseType::Changed
            | ResponseType::Content
    )
}

fn publish_request(
    spec: &PublisherSpec,
    message_id: u16,
    token: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>, BenchError> {
    let mut request = Packet::new();
    request.header.set_type(MessageType::Confirmable);
    request.header.code = MessageClass::Request(RequestType::Post);
    request.header.message_id = message_id;
    request.set_token(token.to_vec());
    request.add_option(CoapOption::UriPath, b"ps".to_vec());
    for segment in spec.topic.split('/') {
        request.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    request.add_option(
        CoapOption::UriQuery,
        format!("clientid={}", spec.client_id).into_bytes(),
    );
    request.payload = payload.to_vec();
    encode(&request)
}

fn encode(packet: &Packet) -> Result<Vec<u8>, BenchError> {
    packet
        .to_bytes()
        .map_err(|error| BenchError::Coap(format!("encoding a message: {error}")))
}

/// What the handshake loops did, together.
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// The first few failures, as examples.
    pub failures: std::sync::Mutex<Vec<String>>,
}

impl HandshakeCounters {
    fn fail(&self, error: &BenchError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut failures) = self.failures.lock() {
            if failures.len() < 5 {
                failures.push(error.to_string());
            }
        }
    }
}

/// Handshakes back to back from `index`'s source until `stop`, with `config` (a
/// [`psk_client_config`]): each connects, then closes with a close_notify.
pub async fn run_handshakes(
    index: usize,
    server: SocketAddr,
    config: Arc<dimpl::Config>,
    timeout: Duration,
    counters: Arc<HandshakeCounters>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let outcome = async {
            let socket = socket_to(source_for(index), server).await?;
            let session = DtlsSession::connect(&socket, config.clone(), timeout).await?;
            session.close(&socket).await
        }
        .await;
        match outcome {
            Ok(()) => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => counters.fail(&error),
        }
    }
}
