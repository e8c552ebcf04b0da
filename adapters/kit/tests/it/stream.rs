//! The stream driver's close: after the channel asks for it, our side is shut down and the
//! peer's input drained, so the peer reads the last bytes and then the end instead of a
//! reset. On a scripted transport (what the driver does, in order, on a paused clock) and
//! over real TCP and TLS sockets on 127.0.0.1. And a channel that takes no input for a
//! while (a client over its publish rates) is handed what waits when its time comes. An
//! idle connection keeps no share of the buffer its input was read into.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use adapter_kit::tls::TlsAcceptor;
use adapter_kit::{
    drive_stream, serve_stream_listener, Acceptor, ConnWakeup, Flow, LayeredTransport,
    ListenerLimits, StreamChannel, Transport,
};
use bytes::{BufMut, Bytes, BytesMut};
use gateway_config::{PeerCertField, Rate, TlsConfig, TlsVerify, TlsVersion};
use mqtt_core::auth::Auth;
use mqtt_core::broker::Broker;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// The driver's linger after a close (`CLOSE_LINGER` in the driver).
const LINGER: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(10);

fn broker() -> Arc<Broker> {
    let config = gateway_config::Config::from_toml_str("").expect("defaults");
    Arc::new(Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        Auth::allow_all(),
        Instant::now(),
    ))
}

fn bytes_received(broker: &Broker) -> u64 {
    broker.stats.bytes_received.load(Ordering::Relaxed)
}

/// What the channel saw.
#[derive(Default)]
struct Seen {
    input: Mutex<Vec<u8>>,
    /// The input as it was split off the driver's buffer, kept as a decoder keeps a packet.
    kept: Mutex<Vec<Bytes>>,
    closed: AtomicUsize,
}

/// Answers input holding `close` with `bye` and closes; the listener's shutdown with
/// `going`. Everything else it takes in silence.
struct Toy {
    seen: Arc<Seen>,
}

impl StreamChannel for Toy {
    fn handle_input(&mut self, input: &mut BytesMut, out: &mut BytesMut, _now: Instant) -> Flow {
        let taken = input.split().freeze();
        self.seen.input.lock().extend_from_slice(&taken);
        let close = taken.windows(5).any(|w| w == b"close");
        self.seen.kept.lock().push(taken);
        if close {
            out.put_slice(b"bye");
            return Flow::Close;
        }
        Flow::Continue
    }
    fn handle_wakeup(&mut self, _out: &mut BytesMut, _now: Instant) -> Flow {
        Flow::Continue
    }
    fn handle_timeout(&mut self, _out: &mut BytesMut, _now: Instant) -> Flow {
        Flow::Continue
    }
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    fn wants_drain(&self) -> bool {
        false
    }
    fn shutdown(&mut self, out: &mut BytesMut) -> Flow {
        out.put_slice(b"going");
        Flow::Close
    }
    fn handle_closed(&mut self, _now: Instant) {
        self.seen.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the driver did to the transport, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Read(&'static str),
    Wrote(String),
    Shutdown,
}

/// How a script ends once its reads are used up.
#[derive(Clone, Copy)]
enum Then {
    /// The peer closes.
    Eof,
    /// The peer stays, silent: reads never complete.
    Silence,
}

#[derive(Default)]
struct Log {
    events: Mutex<Vec<Event>>,
    first_read: Notify,
    shut_down: Notify,
}

impl Log {
    fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }
}

/// A transport whose reads follow a script; writes and shutdowns always succeed.
struct Script {
    reads: VecDeque<&'static str>,
    then: Then,
    log: Arc<Log>,
    polled: bool,
}

fn script(reads: &[&'static str], then: Then) -> (Script, Arc<Log>) {
    let log = Arc::new(Log::default());
    let script = Script {
        reads: reads.iter().copied().collect(),
        then,
        log: log.clone(),
        polled: false,
    };
    (script, log)
}

impl Transport for Script {
    fn poll_read_buf(
        &mut self,
        _cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if !self.polled {
            self.polled = true;
            self.log.first_read.notify_one();
        }
        match (self.reads.pop_front(), self.then) {
            (Some(read), _) => {
                self.log.events.lock().push(Event::Read(read));
                buf.extend_from_slice(read.as_bytes());
                Poll::Ready(Ok(read.len()))
            }
            (None, Then::Eof) => Poll::Ready(Ok(0)),
            // Nothing will ever wake the reader: only the driver's timer or wake-up can.
            (None, Then::Silence) => Poll::Pending,
        }
    }

    fn poll_write(&mut self, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let text = String::from_utf8_lossy(buf).into_owned();
        self.log.events.lock().push(Event::Wrote(text));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.log.events.lock().push(Event::Shutdown);
        self.log.shut_down.notify_one();
        Poll::Ready(Ok(()))
    }
}

/// Drives `transport` with a toy channel to its end; what the channel saw, and how long
/// it took on the (paused) clock.
async fn drive(transport: Script, broker: &Arc<Broker>) -> (Arc<Seen>, Duration) {
    let seen = Arc::new(Seen::default());
    let channel = Toy { seen: seen.clone() };
    let started = tokio::time::Instant::now();
    drive_stream(
        transport,
        channel,
        Arc::new(ConnWakeup::default()),
        broker.clone(),
    )
    .await;
    (seen, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn after_the_channel_closes_our_side_ends_and_the_peer_is_drained_until_it_closes() {
    let broker = broker();
    let (transport, log) = script(&["close", "late-1", "late-22"], Then::Eof);
    let (seen, took) = drive(transport, &broker).await;

    assert_eq!(
        log.events(),
        [
            Event::Read("close"),
            Event::Wrote("bye".into()),
            Event::Shutdown,
            Event::Read("late-1"),
            Event::Read("late-22"),
        ],
        "the last bytes, then the end of our side, then the peer's input drained"
    );
    assert_eq!(
        *seen.input.lock(),
        b"close",
        "drained input never reaches the channel"
    );
    assert_eq!(
        bytes_received(&broker),
        5 + 6 + 7,
        "drained input is counted"
    );
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1);
    assert_eq!(took, Duration::ZERO, "the peer's end ends the linger");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_closes_is_let_go_at_the_linger_deadline() {
    let broker = broker();
    let (transport, log) = script(&["close"], Then::Silence);
    let (seen, took) = drive(transport, &broker).await;

    assert_eq!(
        log.events(),
        [
            Event::Read("close"),
            Event::Wrote("bye".into()),
            Event::Shutdown
        ]
    );
    assert!(
        took >= LINGER && took < LINGER + Duration::from_millis(100),
        "closed after {took:?}"
    );
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_left_is_not_lingered_for() {
    let broker = broker();
    let (transport, log) = script(&["hello"], Then::Eof);
    let (seen, took) = drive(transport, &broker).await;

    assert_eq!(log.events(), [Event::Read("hello")], "no shutdown");
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1);
    assert_eq!(took, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_keeps_no_share_of_the_buffer_its_input_was_read_into() {
    // Eight bytes fill a fresh buffer exactly: once the channel splits them off, what the
    // driver keeps has no capacity left, but would still share the allocation.
    let (transport, _log) = script(&["12345678"], Then::Silence);
    let seen = Arc::new(Seen::default());
    let channel = Toy { seen: seen.clone() };
    let driver = tokio::spawn(drive_stream(
        transport,
        channel,
        Arc::new(ConnWakeup::default()),
        broker(),
    ));
    // The paused clock moves only once the driver has read, handed over and gone idle.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let kept = seen.kept.lock();
    assert_eq!(kept.len(), 1, "the input was handed over");
    assert!(
        kept[0].is_unique(),
        "the idle driver holds no share of the buffer the input came in"
    );
    driver.abort();
}

/// Hands out one connection, then none.
struct OneConnection(Mutex<Option<Script>>);

impl Acceptor for OneConnection {
    type Conn = Script;

    async fn accept(&self) -> io::Result<(Script, SocketAddr)> {
        let next = self.0.lock().take();
        match next {
            Some(conn) => Ok((conn, SocketAddr::from(([127, 0, 0, 1], 1)))),
            None => std::future::pending().await,
        }
    }
}

/// Serves `transport` on a listener of its own; the channel's record, the listener's task
/// and the switch that shuts it down.
fn listen(transport: Script) -> (Arc<Seen>, tokio::task::JoinHandle<()>, watch::Sender<bool>) {
    let broker = broker();
    let seen = Arc::new(Seen::default());
    let (shutdown, shutdown_seen) = watch::channel(false);
    let limits = ListenerLimits {
        name: Arc::from("tcp:test"),
        max_connections: 10,
        max_conn_rate: Rate::Infinity,
        metrics: Arc::default(),
    };
    let channel_seen = seen.clone();
    let listener = tokio::spawn(serve_stream_listener(
        OneConnection(Mutex::new(Some(transport))),
        limits,
        shutdown_seen,
        move |conn: Script, _peer, wakeup: Arc<ConnWakeup>| {
            let channel = Toy {
                seen: channel_seen.clone(),
            };
            drive_stream(conn, channel, wakeup, broker.clone())
        },
    ));
    (seen, listener, shutdown)
}

#[tokio::test(start_paused = true)]
async fn the_listener_shutting_down_ends_a_linger_at_once() {
    let (transport, log) = script(&["close"], Then::Silence);
    let (seen, listener, shutdown) = listen(transport);
    tokio::time::timeout(TIMEOUT, log.shut_down.notified())
        .await
        .expect("the connection shuts its side down");

    let started = tokio::time::Instant::now();
    shutdown.send(true).unwrap();
    tokio::time::timeout(TIMEOUT, listener)
        .await
        .expect("the listener ends")
        .unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait for the deadline"
    );
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_close_for_the_listener_shutting_down_does_not_linger() {
    let (transport, log) = script(&[], Then::Silence);
    let (seen, listener, shutdown) = listen(transport);
    tokio::time::timeout(TIMEOUT, log.first_read.notified())
        .await
        .expect("the connection reads");

    let started = tokio::time::Instant::now();
    shutdown.send(true).unwrap();
    tokio::time::timeout(TIMEOUT, listener)
        .await
        .expect("the listener ends")
        .unwrap();
    assert_eq!(log.events(), [Event::Wrote("going".into())]);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1);
}

/// More than one read takes (64 KiB), so that input is left unread when the channel closes.
const LATE_INPUT: usize = 512 * 1024;

fn close_then_late_input() -> Vec<u8> {
    let mut sent = b"close".to_vec();
    sent.resize(5 + LATE_INPUT, b'.');
    sent
}

#[tokio::test]
async fn over_tcp_a_peer_still_sending_reads_the_last_bytes_and_then_the_end() {
    let broker = broker();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let server = tokio::spawn({
        let (broker, seen) = (broker.clone(), seen.clone());
        async move {
            let (socket, _) = listener.accept().await.unwrap();
            drive_stream(
                socket,
                Toy { seen },
                Arc::new(ConnWakeup::default()),
                broker,
            )
            .await;
        }
    });

    // The peer sends on after the close, reads only once it has sent everything, and
    // closes when it reads the end: a reset would fail the write or the read.
    let client = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        socket.write_all(&close_then_late_input()).unwrap();
        let mut received = Vec::new();
        socket.read_to_end(&mut received).unwrap();
        received
    });
    assert_eq!(client.await.unwrap(), b"bye");
    tokio::time::timeout(TIMEOUT, server)
        .await
        .expect("the driver ends once the peer closes")
        .unwrap();
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1);
    assert_eq!(bytes_received(&broker), (5 + LATE_INPUT) as u64);
}

/// Accepts whatever certificate the server shows: the test is about how the stream ends.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn over_tls_the_peer_reads_the_last_bytes_then_close_notify() {
    let settings = TlsConfig {
        certfile: None,
        keyfile: None,
        cacertfile: None,
        verify: TlsVerify::None,
        versions: vec![TlsVersion::Tlsv13, TlsVersion::Tlsv12],
        ciphers: Vec::new(),
        self_signed: true,
        peer_cert_as_username: PeerCertField::None,
        peer_cert_as_clientid: PeerCertField::None,
    };
    let acceptor = TlsAcceptor::new(&settings, &[]).unwrap();
    let broker = broker();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let server = tokio::spawn({
        let seen = seen.clone();
        async move {
            let (socket, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(socket).await.unwrap();
            let transport = LayeredTransport::new(tls);
            drive_stream(
                transport,
                Toy { seen },
                Arc::new(ConnWakeup::default()),
                broker,
            )
            .await;
        }
    });

    let client = tokio::task::spawn_blocking(move || {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = std::net::TcpStream::connect(address).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, socket);
        tls.write_all(&close_then_late_input()).unwrap();
        tls.flush().unwrap();
        // rustls reports an end without close_notify as UnexpectedEof.
        let mut received = Vec::new();
        tls.read_to_end(&mut received).unwrap();
        received
    });
    assert_eq!(client.await.unwrap(), b"bye");
    tokio::time::timeout(TIMEOUT, server)
        .await
        .expect("the driver ends once the peer closes")
        .unwrap();
    assert_eq!(seen.closed.load(Ordering::Relaxed), 1);
}

/// How long [`Paced`] takes no input after each item.
const PAUSE: Duration = Duration::from_millis(50);

/// Takes one `;`-ended item per call, then no input until `PAUSE` has passed: a channel
/// paused by time, as one whose client went over its publish rates is, which no wake-up
/// lets go.
struct Paced {
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
    paused_until: Option<Instant>,
}

impl StreamChannel for Paced {
    fn handle_input(&mut self, input: &mut BytesMut, _out: &mut BytesMut, now: Instant) -> Flow {
        if let Some(end) = input.iter().position(|b| *b == b';') {
            let item = input.split_to(end + 1);
            let item = String::from_utf8_lossy(&item[..end]).into_owned();
            self.seen.lock().push((item, now));
            self.paused_until = Some(now + PAUSE);
        }
        Flow::Continue
    }
    fn handle_wakeup(&mut self, _out: &mut BytesMut, _now: Instant) -> Flow {
        Flow::Continue
    }
    fn handle_timeout(&mut self, _out: &mut BytesMut, now: Instant) -> Flow {
        if self.paused_until.is_some_and(|until| now >= until) {
            self.paused_until = None;
        }
        Flow::Continue
    }
    fn next_deadline(&self) -> Option<Instant> {
        self.paused_until
    }
    fn wants_drain(&self) -> bool {
        false
    }
    fn accepts_input(&self, now: Instant) -> bool {
        self.paused_until.is_none_or(|until| now >= until)
    }
    fn shutdown(&mut self, _out: &mut BytesMut) -> Flow {
        Flow::Close
    }
    fn handle_closed(&mut self, _now: Instant) {}
}

// On the real clock: the channel is handed `std::time::Instant`s, which a paused tokio
// clock does not move.
#[tokio::test]
async fn input_a_paused_channel_left_buffered_is_handed_to_it_when_its_pause_ends() {
    let broker = broker();
    // Three items in one read, then the peer closes: only the pauses' ends, no wake-up
    // and no more input, can make the driver hand the channel the other two.
    let (transport, log) = script(&["a;b;c;"], Then::Eof);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let channel = Paced {
        seen: seen.clone(),
        paused_until: None,
    };
    let started = Instant::now();
    let drive = drive_stream(
        transport,
        channel,
        Arc::new(ConnWakeup::default()),
        broker.clone(),
    );
    tokio::time::timeout(TIMEOUT, drive)
        .await
        .expect("the driver ends with the peer's close");
    let seen = seen.lock().clone();
    let items: Vec<&str> = seen.iter().map(|(item, _)| item.as_str()).collect();
    assert_eq!(items, ["a", "b", "c"]);
    for pair in seen.windows(2) {
        assert!(
            pair[1].1 >= pair[0].1 + PAUSE,
            "{} came {:?} after {}",
            pair[1].0,
            pair[1].1 - pair[0].1,
            pair[0].0
        );
    }
    assert!(seen[0].1 < started + PAUSE, "the first at once");
    assert_eq!(log.events(), [Event::Read("a;b;c;")]);
}
