//! The way into a DTLS listener: every datagram from an address without a peer goes to the
//! listener's admission (the stateless cookie check and the ClientHello parse), and every
//! datagram from an address with one goes to its peer (the screen, then the handshake
//! engine or the established session). Arbitrary bytes from four sources, ClientHellos
//! that return cookies the listener gave (to the sender or to another source), a real
//! PSK client's flights (changed on the way or not), its application data and replays of
//! it, in records carrying connection IDs both ways, and time passing, with stateless
//! cookies on or off.
//!
//! Checked: no panic; a peer is made, with stateless cookies on, only for a ClientHello
//! returning a cookie the listener sent to that very source; the listener's own answer
//! is never larger than what it answers; handshakes under way and peers stay within
//! their limits, and every handshake's place is given back; what a peer sends stays
//! within the datagram size; the counters add up.

#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use adapter_kit::dtls::{
    DtlsChannel, DtlsDemux, DtlsSettings, EngineSettings, HandshakeLimits, OpenChannel, PskTable,
};
use adapter_kit::{Admission, DatagramChannel, Demux, Flow};
use arbitrary::Arbitrary;
use bytes::Bytes;
use dimpl::{Dtls, Output};
use libfuzzer_sys::fuzz_target;

const SOURCES: u8 = 4;
/// The real client's source.
const CLIENT: u8 = 0;
const MAX_PEERS: usize = 3;
const MAX_HANDSHAKES: usize = 2;
const MTU: usize = 1200;
/// The listener's largest datagram: small, so that oversized ones are easy to make.
const MAX_DATAGRAM: usize = 700;

#[derive(Debug, Arbitrary)]
struct Input {
    stateless_cookies: bool,
    /// Whether the client's key is the right one.
    right_key: bool,
    steps: Vec<Step>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Raw {
        source: u8,
        bytes: Vec<u8>,
    },
    /// A ClientHello from `source` returning the last cookie sent to `cookie_of`.
    Hello {
        source: u8,
        cookie_of: u8,
        random: u8,
        psk_suite: bool,
        tamper: Option<(u16, u8)>,
    },
    /// The client's next datagram, one byte changed when `tamper` says so.
    Client {
        tamper: Option<(u16, u8)>,
    },
    /// The client sends application data (once it is connected).
    Send(Vec<u8>),
    /// The client's last datagram again, as a replay.
    Replay,
    Wait {
        millis: u16,
    },
}

/// Answers every datagram with its length, once its handshake made it.
struct Sink;

impl DatagramChannel for Sink {
    fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, _: Instant) -> Flow {
        out.push(Bytes::from((datagram.len() as u32).to_be_bytes().to_vec()));
        Flow::Continue
    }
    fn handle_wakeup(&mut self, _: &mut Vec<Bytes>, _: Instant) -> Flow {
        Flow::Continue
    }
    fn handle_timeout(&mut self, _: &mut Vec<Bytes>, _: Instant) -> Flow {
        Flow::Continue
    }
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    fn shutdown(&mut self, _: &mut Vec<Bytes>) -> Flow {
        Flow::Close
    }
    fn handle_closed(&mut self, _: Instant) {}
    fn rebindable_identity(&self) -> Option<Arc<str>> {
        None
    }
    fn vouch(&mut self, _: &Bytes, _: SocketAddr, _: Instant) -> bool {
        false
    }
    fn rebound(&mut self, _: SocketAddr) {}
    fn address_validated(&self) -> bool {
        false
    }
}

struct ClientKey(Vec<u8>);

impl dimpl::PskResolver for ClientKey {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

fn address(source: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + source % SOURCES], 5000))
}

/// A ClientHello offering the PSK suite (or an ECDHE one), with `cookie`.
fn client_hello(random: u8, cookie: &[u8], psk_suite: bool) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&[random; 32]);
    body.push(0);
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    let suite = if psk_suite {
        [0xc0, 0xa8]
    } else {
        [0xc0, 0x2b]
    };
    body.extend_from_slice(&[0, 2, suite[0], suite[1], 1, 0]);
    let len = body.len() as u8;
    let message_seq = u8::from(!cookie.is_empty());
    let mut handshake = vec![1, 0, 0, len, 0, message_seq, 0, 0, 0, 0, 0, len];
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, message_seq];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The cookie of a HelloVerifyRequest of the listener's.
fn cookie_of_reply(reply: &[u8]) -> Option<Vec<u8>> {
    let len = usize::from(*reply.get(27)?);
    Some(reply.get(28..28 + len)?.to_vec())
}

/// The cookie a ClientHello returns, read as the listener reads it.
fn cookie_of_hello(datagram: &[u8]) -> Option<Vec<u8>> {
    let body = datagram.get(25..)?;
    let session = usize::from(*body.get(34)?);
    let at = 35 + session;
    let len = usize::from(*body.get(at)?);
    Some(body.get(at + 1..at + 1 + len)?.to_vec())
}

fn tampered(mut datagram: Vec<u8>, tamper: Option<(u16, u8)>) -> Vec<u8> {
    if let Some((at, xor)) = tamper {
        if !datagram.is_empty() {
            let at = usize::from(at) % datagram.len();
            if let Some(byte) = datagram.get_mut(at) {
                *byte ^= xor.max(1);
            }
        }
    }
    datagram
}

/// What every input starts from, made once: building the engines' configurations costs
/// far more than an input's steps.
struct Fixture {
    /// With stateless cookies off, and on.
    settings: [DtlsSettings; 2],
    /// The client's, with the right key and a wrong one.
    clients: [Arc<dimpl::Config>; 2],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let settings = |stateless: bool| {
            let mut settings = DtlsSettings::new(
                Some(PskTable::parse("dev-1:key-one\ndev-2:key-two\n").expect("keys")),
                None,
                MAX_HANDSHAKES,
                MAX_HANDSHAKES,
                EngineSettings::new(Duration::from_secs(5), MTU).with_connection_ids(8),
                stateless,
            )
            .expect("settings");
            settings.max_datagram = MAX_DATAGRAM;
            settings
        };
        let client = |key: &str| {
            let config = dimpl::Config::builder()
                .with_psk_client(
                    b"dev-1".to_vec(),
                    Arc::new(ClientKey(key.as_bytes().to_vec())),
                )
                // Its records carry the listener's connection ID, and the listener's its.
                .dtls12_connection_id_len(4)
                .build()
                .expect("client config");
            Arc::new(config)
        };
        Fixture {
            settings: [settings(false), settings(true)],
            clients: [client("key-one"), client("key-two")],
        }
    })
}

struct Listener {
    settings: DtlsSettings,
    /// The shared counters as they were when the input began.
    done_before: u64,
    cookies_before: u64,
    limits: Arc<HandshakeLimits>,
    demux: DtlsDemux,
    peers: HashMap<u8, DtlsChannel<Sink>>,
    /// Cookies the listener sent, by source.
    cookies: HashMap<u8, Vec<Vec<u8>>>,
    stateless_cookies: bool,
    peers_made: u64,
    replies: u64,
    now: Instant,
}

impl Listener {
    /// One datagram from `source`; what goes back to it.
    fn receive(&mut self, source: u8, datagram: Vec<u8>) -> Vec<Bytes> {
        let source = source % SOURCES;
        let datagram = Bytes::from(datagram);
        let mut out = Vec::new();
        let flow = match self.peers.get_mut(&source) {
            Some(peer) => peer.handle_datagram(datagram, &mut out, self.now),
            None => match self.demux.admit(address(source), &datagram, self.now) {
                Admission::Drop => return out,
                Admission::Reply(reply) => {
                    assert!(
                        reply.len() <= datagram.len(),
                        "{} bytes answer {}",
                        reply.len(),
                        datagram.len()
                    );
                    self.replies += 1;
                    let cookie = cookie_of_reply(&reply).expect("a HelloVerifyRequest");
                    self.cookies.entry(source).or_default().push(cookie);
                    out.push(reply);
                    return out;
                }
                Admission::Accept => {
                    if self.stateless_cookies {
                        let cookie = cookie_of_hello(&datagram).expect("a ClientHello");
                        assert!(
                            self.cookies
                                .get(&source)
                                .is_some_and(|sent| sent.contains(&cookie)),
                            "a peer made for a cookie not sent to its source"
                        );
                    }
                    // The datagram driver's table.
                    if self.peers.len() >= MAX_PEERS {
                        return out;
                    }
                    self.peers_made += 1;
                    let open: OpenChannel<Sink> = Box::new(|_| Sink);
                    let mut peer = DtlsChannel::new(
                        &self.settings,
                        &self.limits,
                        address(source),
                        open,
                        self.now,
                    );
                    let flow = peer.handle_datagram(datagram, &mut out, self.now);
                    self.peers.insert(source, peer);
                    flow
                }
            },
        };
        if flow == Flow::Close {
            if let Some(mut peer) = self.peers.remove(&source) {
                peer.handle_closed(self.now);
            }
        }
        self.check(&out);
        out
    }

    fn wait(&mut self, millis: u16) {
        self.now += Duration::from_millis(u64::from(millis));
        let mut closed = Vec::new();
        for (&source, peer) in &mut self.peers {
            if peer.next_deadline().is_some_and(|at| at <= self.now) {
                let mut out = Vec::new();
                if peer.handle_timeout(&mut out, self.now) == Flow::Close {
                    closed.push(source);
                }
                assert!(out.iter().all(|d| d.len() <= MTU));
            }
        }
        for source in closed {
            if let Some(mut peer) = self.peers.remove(&source) {
                peer.handle_closed(self.now);
            }
        }
    }

    fn check(&self, out: &[Bytes]) {
        assert!(out.len() <= 64, "{} datagrams for one", out.len());
        assert!(
            out.iter().all(|d| d.len() <= MTU),
            "a datagram over the MTU"
        );
        assert!(self.limits.under_way() <= MAX_HANDSHAKES);
        assert!(self.peers.len() <= MAX_PEERS);
        let metrics = self.settings.metrics();
        let done = ended(&self.settings) - self.done_before;
        assert!(
            done <= self.peers_made,
            "{done} handshakes ended of {}",
            self.peers_made
        );
        let cookies = metrics.cookies_sent.load(Ordering::Relaxed) - self.cookies_before;
        assert!(cookies >= self.replies);
    }
}

/// Handshakes the listener of `settings` completed or gave up, since it began.
fn ended(settings: &DtlsSettings) -> u64 {
    let metrics = settings.metrics();
    metrics.handshakes_completed.load(Ordering::Relaxed) + metrics.handshakes_failed()
}

fuzz_target!(|input: Input| {
    let now = Instant::now();
    let fixture = fixture();
    let settings = fixture.settings[usize::from(input.stateless_cookies)].clone();
    let limits = HandshakeLimits::new(MAX_HANDSHAKES, MAX_HANDSHAKES);
    let demux = DtlsDemux::new(&settings, limits.clone(), now);
    let mut listener = Listener {
        done_before: ended(&settings),
        cookies_before: settings.metrics().cookies_sent.load(Ordering::Relaxed),
        settings,
        limits,
        demux,
        peers: HashMap::new(),
        cookies: HashMap::new(),
        stateless_cookies: input.stateless_cookies,
        peers_made: 0,
        replies: 0,
        now,
    };
    let config = fixture.clients[usize::from(!input.right_key)].clone();
    let mut client = Dtls::new_12_psk(config, now);
    client.set_active(true);
    let _ = client.handle_timeout(now);
    let mut to_send: Vec<Vec<u8>> = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let mut buf = vec![0u8; 4096];
    let mut connected = false;
    let mut poll = |client: &mut Dtls, to_send: &mut Vec<Vec<u8>>, connected: &mut bool| loop {
        match client.poll_output(&mut buf) {
            Output::Packet(p) => to_send.push(p.to_vec()),
            Output::Connected => *connected = true,
            Output::Timeout(_) => break,
            _ => {}
        }
    };
    poll(&mut client, &mut to_send, &mut connected);
    for step in input.steps.into_iter().take(64) {
        let answers = match step {
            Step::Raw { source, bytes } => {
                let source = source % SOURCES;
                let out = listener.receive(source, bytes);
                if source == CLIENT {
                    out
                } else {
                    Vec::new()
                }
            }
            Step::Hello {
                source,
                cookie_of,
                random,
                psk_suite,
                tamper,
            } => {
                let cookie = listener
                    .cookies
                    .get(&(cookie_of % SOURCES))
                    .and_then(|sent| sent.last().cloned())
                    .unwrap_or_default();
                let hello = tampered(client_hello(random, &cookie, psk_suite), tamper);
                let source = source % SOURCES;
                let out = listener.receive(source, hello);
                if source == CLIENT {
                    out
                } else {
                    Vec::new()
                }
            }
            Step::Client { tamper } => {
                if to_send.is_empty() {
                    continue;
                }
                let datagram = tampered(to_send.remove(0), tamper);
                last = Some(datagram.clone());
                listener.receive(CLIENT, datagram)
            }
            Step::Send(data) => {
                if !connected || data.len() > 512 {
                    continue;
                }
                if client.send_application_data(&data).is_err() {
                    continue;
                }
                poll(&mut client, &mut to_send, &mut connected);
                Vec::new()
            }
            Step::Replay => match last.clone() {
                Some(datagram) => listener.receive(CLIENT, datagram),
                None => continue,
            },
            Step::Wait { millis } => {
                listener.wait(millis);
                let _ = client.handle_timeout(listener.now);
                poll(&mut client, &mut to_send, &mut connected);
                Vec::new()
            }
        };
        for answer in answers {
            let _ = client.handle_packet(&answer);
        }
        poll(&mut client, &mut to_send, &mut connected);
        to_send.truncate(16);
    }
    for (_, mut peer) in listener.peers.drain() {
        peer.handle_closed(listener.now);
    }
    assert_eq!(listener.limits.under_way(), 0, "a handshake's place kept");
});
