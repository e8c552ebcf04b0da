//! The datagram driver over real UDP sockets on 127.0.0.1 (and 127.0.0.2 for a second
//! source), with a toy channel: who may move a peer, how much an unvalidated address is
//! sent, and how many peers one source may hold.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::{
    serve_datagram_listener, Admission, ConnWakeup, DatagramChannel, DatagramMetrics,
    DatagramSettings, Demux, Flow,
};
use bytes::Bytes;
use mqtt_core::auth::Auth;
use mqtt_core::broker::Broker;
use tokio::net::UdpSocket;
use tokio::sync::watch;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A channel that answers each datagram with its own number and what it was told:
/// `id:NAME` takes a name claims may name, `claim:NAME:SECRET` is vouched for when the
/// secret is `good`, `ack` answers something of ours (validates the address), `big`
/// asks for 1,000 bytes, anything else is echoed.
struct Toy {
    serial: u64,
    identity: Option<Arc<str>>,
    validated: bool,
}

impl DatagramChannel for Toy {
    fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, _now: Instant) -> Flow {
        let text = String::from_utf8_lossy(&datagram).into_owned();
        let reply = if let Some(name) = text.strip_prefix("id:") {
            self.identity = Some(Arc::from(name));
            format!("{}:named {name}", self.serial)
        } else if text == "ack" {
            self.validated = true;
            format!("{}:acknowledged", self.serial)
        } else if text == "big" {
            format!("{}:{}", self.serial, "x".repeat(1000))
        } else {
            format!("{}:{text}", self.serial)
        };
        out.push(Bytes::from(reply));
        Flow::Continue
    }
    fn handle_wakeup(&mut self, _out: &mut Vec<Bytes>, _now: Instant) -> Flow {
        Flow::Continue
    }
    fn handle_timeout(&mut self, _out: &mut Vec<Bytes>, _now: Instant) -> Flow {
        Flow::Continue
    }
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    fn shutdown(&mut self, _out: &mut Vec<Bytes>) -> Flow {
        Flow::Close
    }
    fn handle_closed(&mut self, _now: Instant) {}
    fn rebindable_identity(&self) -> Option<Arc<str>> {
        self.identity.clone()
    }
    fn vouch(&mut self, datagram: &Bytes, _from: SocketAddr, _now: Instant) -> bool {
        datagram.ends_with(b":good")
    }
    fn rebound(&mut self, _address: SocketAddr) {
        self.validated = false;
    }
    fn address_validated(&self) -> bool {
        self.validated
    }
}

/// `node:N:...` is node N behind a forwarder; `claim:NAME:...` names NAME; from an
/// address without a peer, `knock` is answered `who?` by the listener and `noise` dropped.
struct ToyDemux;

impl Demux for ToyDemux {
    fn sub_key(&self, datagram: &Bytes) -> Option<Bytes> {
        let rest = datagram.strip_prefix(b"node:")?;
        let end = rest.iter().position(|&b| b == b':')?;
        Some(Bytes::copy_from_slice(rest.get(..end)?))
    }
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>> {
        let text = std::str::from_utf8(datagram.strip_prefix(b"claim:")?).ok()?;
        text.split(':').next().map(Arc::from)
    }
    fn admit(&self, _from: SocketAddr, datagram: &Bytes, _now: Instant) -> Admission {
        match &datagram[..] {
            b"knock" => Admission::Reply(Bytes::from_static(b"who?")),
            b"noise" => Admission::Drop,
            _ => Admission::Accept,
        }
    }
    fn wrap(&self, sub_key: &Bytes, datagram: Bytes) -> Bytes {
        let mut wrapped = b"node:".to_vec();
        wrapped.extend_from_slice(sub_key);
        wrapped.push(b':');
        wrapped.extend_from_slice(&datagram);
        Bytes::from(wrapped)
    }
}

struct Listener {
    address: SocketAddr,
    metrics: Arc<DatagramMetrics>,
    _shutdown: watch::Sender<bool>,
}

async fn listener(max_peers_per_source: usize) -> Listener {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let config = gateway_config::Config::from_toml_str("").expect("defaults");
    let broker = Arc::new(Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        Auth::allow_all(),
        Instant::now(),
    ));
    let metrics = Arc::new(DatagramMetrics::default());
    let (shutdown, watch) = watch::channel(false);
    let limits = DatagramSettings {
        name: Arc::from("udp:test"),
        max_peers: 1000,
        max_peers_per_source,
        max_datagram_size: 2048,
        max_queued_datagrams: 16,
        beacon: None,
    };
    let serials = AtomicU64::new(0);
    tokio::spawn(serve_datagram_listener(
        socket,
        limits,
        ToyDemux,
        metrics.clone(),
        broker,
        watch,
        move |_peer: SocketAddr, _wakeup: Arc<ConnWakeup>| Toy {
            serial: serials.fetch_add(1, Ordering::Relaxed) + 1,
            identity: None,
            validated: false,
        },
    ));
    Listener {
        address,
        metrics,
        _shutdown: shutdown,
    }
}

async fn client(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).await.unwrap()
}

async fn ask(socket: &UdpSocket, to: SocketAddr, text: &str) -> String {
    socket.send_to(text.as_bytes(), to).await.unwrap();
    receive(socket).await
}

async fn receive(socket: &UdpSocket) -> String {
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn a_peer_moves_only_for_a_claim_it_vouches_for() {
    let listener = listener(32).await;
    let to = listener.address;
    let device = client("127.0.0.1").await;
    assert_eq!(ask(&device, to, "id:dev").await, "1:named dev");

    // A claim the peer does not vouch for is served by a peer of its own, and the device's
    // peer stays where it was.
    let forger = client("127.0.0.1").await;
    assert_eq!(
        ask(&forger, to, "claim:dev:bad").await,
        "2:claim:dev:bad",
        "a new peer answers"
    );
    assert_eq!(ask(&device, to, "still").await, "1:still");
    assert_eq!(listener.metrics.claims_refused.load(Ordering::Relaxed), 1);

    // One it vouches for moves the peer: the device's channel answers at the new address.
    let moved = client("127.0.0.1").await;
    assert_eq!(ask(&moved, to, "claim:dev:good").await, "1:claim:dev:good");
    assert_eq!(ask(&moved, to, "after").await, "1:after");
    // The old address is a stranger now.
    assert_eq!(ask(&device, to, "old").await, "3:old");
}

#[tokio::test]
async fn an_unvalidated_peer_is_sent_at_most_three_times_what_it_sent() {
    let listener = listener(32).await;
    let to = listener.address;
    let socket = client("127.0.0.1").await;
    // 3 bytes in allow 9 out: the 1,000-byte answer is not sent...
    socket.send_to(b"big", to).await.unwrap();
    // ...and the next answer that fits is the first to arrive.
    assert_eq!(ask(&socket, to, "hello").await, "1:hello");
    assert_eq!(
        listener
            .metrics
            .datagrams_over_budget
            .load(Ordering::Relaxed),
        1
    );

    // Once the peer answered something of ours, the budget no longer applies.
    assert_eq!(ask(&socket, to, "ack").await, "1:acknowledged");
    let big = ask(&socket, to, "big").await;
    assert_eq!(big.len(), 1002, "{big:.20}");

    // A peer that moves is unvalidated at its new address again.
    assert_eq!(ask(&socket, to, "id:dev").await, "1:named dev");
    let moved = client("127.0.0.1").await;
    assert_eq!(ask(&moved, to, "claim:dev:good").await, "1:claim:dev:good");
    moved.send_to(b"big", to).await.unwrap();
    assert_eq!(ask(&moved, to, "hi").await, "1:hi");
    assert_eq!(
        listener
            .metrics
            .datagrams_over_budget
            .load(Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn one_source_holds_at_most_max_peers_per_source_and_another_still_gets_one() {
    let listener = listener(3).await;
    let to = listener.address;
    let forwarder = client("127.0.0.1").await;
    for node in 0..3 {
        let text = format!("node:{node}:hi");
        let answer = ask(&forwarder, to, &text).await;
        assert_eq!(answer, format!("node:{node}:{}:{text}", node + 1));
    }
    // Nodes beyond the bound are not served; the nodes already known still are.
    forwarder.send_to(b"node:3:hi", to).await.unwrap();
    forwarder.send_to(b"node:4:hi", to).await.unwrap();
    assert_eq!(
        ask(&forwarder, to, "node:0:again").await,
        "node:0:1:node:0:again"
    );
    assert_eq!(
        listener.metrics.datagrams_dropped.load(Ordering::Relaxed),
        2
    );
    assert_eq!(listener.metrics.peers.load(Ordering::Relaxed), 3);
    // Another port of the same address counts against the same source.
    let same_host = client("127.0.0.1").await;
    same_host.send_to(b"hi", to).await.unwrap();
    assert_eq!(
        ask(&forwarder, to, "node:1:again").await,
        "node:1:2:node:1:again"
    );
    assert_eq!(
        listener.metrics.datagrams_dropped.load(Ordering::Relaxed),
        3
    );

    // Another source address still gets a peer.
    let other = client("127.0.0.2").await;
    assert_eq!(ask(&other, to, "hi").await, "4:hi");
}

#[tokio::test]
async fn what_the_demux_does_not_admit_makes_no_peer_and_an_existing_peer_is_not_asked() {
    let listener = listener(32).await;
    let to = listener.address;
    let stranger = client("127.0.0.1").await;
    assert_eq!(ask(&stranger, to, "knock").await, "who?");
    assert_eq!(ask(&stranger, to, "knock").await, "who?", "still no peer");
    stranger.send_to(b"noise", to).await.unwrap();
    // The first peer made is the first channel: nothing before made one.
    assert_eq!(ask(&stranger, to, "hello").await, "1:hello");
    assert_eq!(listener.metrics.peers.load(Ordering::Relaxed), 1);
    assert_eq!(
        listener
            .metrics
            .datagrams_answered_statelessly
            .load(Ordering::Relaxed),
        2
    );
    assert_eq!(
        listener
            .metrics
            .datagrams_not_admitted
            .load(Ordering::Relaxed),
        1
    );
    // Its peer's channel takes what the listener would have answered.
    assert_eq!(ask(&stranger, to, "knock").await, "1:knock");
}
