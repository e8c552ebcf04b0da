//! The datagram driver: one UDP socket per listener, a table of peers keyed by source address
//! (and by a sub-key such as a forwarder's wireless node), and one task per peer that owns
//! that peer's sans-io channel, its deadline and its wake-ups.
//!
//! UDP has no connection, so "closing" a peer means forgetting it. A peer that names itself
//! (an MQTT-SN client waking from sleep on a new source port) is found again by that name.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtt_core::broker::{Broker, Stats};
use mqtt_core::protocol::Flow;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::ConnWakeup;
use tracing::Instrument;

/// The sans-io side of one peer, as the datagram driver sees it. Every call may append
/// datagrams to `out`; the driver sends them to the peer's current address.
pub trait DatagramChannel: Send + 'static {
    fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow;
    /// The session has new deliveries, or the broker asks the peer to go.
    fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow;
    fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow;
    fn next_deadline(&self) -> Option<Instant>;
    fn shutdown(&mut self, out: &mut Vec<Bytes>) -> Flow;
    /// The peer is forgotten; hands its session back.
    fn handle_closed(&mut self, now: Instant);
    /// The name under which a datagram from another address may reach this peer, while the
    /// peer allows it (a sleeping client does; a connected one does not).
    fn rebindable_identity(&self) -> Option<Arc<str>>;
    /// True once after input that fed a receiver already behind: the driver yields before
    /// this peer's next datagram, so that receiver's task gets its turn to drain.
    fn take_yield_request(&mut self) -> bool {
        false
    }
}

/// What the driver needs to know about a datagram before any channel has seen it.
pub trait Demux: Send + Sync + 'static {
    /// A sub-key separating several peers behind one address (a forwarder's nodes).
    fn sub_key(&self, datagram: &Bytes) -> Option<Bytes>;
    /// A name that may find an existing peer which moved to this address.
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>>;
    /// Frames one outgoing datagram for a peer with `sub_key` (e.g. re-encapsulates it).
    fn wrap(&self, sub_key: &Bytes, datagram: Bytes) -> Bytes;
}

/// What a UDP gateway listener's configuration gives its adapter.
#[derive(Debug, Clone)]
pub struct UdpListenerSettings {
    /// `udp:NAME`, as logs and auth rules name the listener.
    pub name: Arc<str>,
    pub max_peers: usize,
    /// Datagrams waiting for one peer's channel; more are dropped.
    pub max_queued_datagrams: usize,
    /// The largest datagram accepted.
    pub max_packet_size: usize,
}

impl UdpListenerSettings {
    pub fn from_config(
        name: Arc<str>,
        config: &gateway_config::UdpListenerConfig,
    ) -> UdpListenerSettings {
        UdpListenerSettings {
            name,
            max_peers: config.max_connections as usize,
            max_queued_datagrams: config.max_queued_datagrams as usize,
            max_packet_size: config.max_packet_size as usize,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatagramSettings {
    pub name: Arc<str>,
    /// Peers tracked at once; datagrams from new peers beyond it are dropped.
    pub max_peers: usize,
    /// Largest datagram read; longer ones arrive truncated and fail to decode.
    pub max_datagram_size: usize,
    /// Datagrams queued for one peer's task; beyond it they are dropped as the network might.
    pub max_queued_datagrams: usize,
    pub beacon: Option<Beacon>,
}

/// A datagram the listener sends on its own, on a fixed interval (a gateway ADVERTISE).
#[derive(Debug, Clone)]
pub struct Beacon {
    pub datagram: Bytes,
    pub target: SocketAddr,
    pub interval: Duration,
}

/// Per-listener counters.
#[derive(Debug, Default)]
pub struct DatagramMetrics {
    pub peers: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub datagrams_sent: AtomicU64,
    /// Dropped because the peer table or a peer's queue was full.
    pub datagrams_dropped: AtomicU64,
}

type PeerKey = (SocketAddr, Option<Bytes>);

struct PeerEntry {
    task_id: u64,
    inbox: mpsc::Sender<(SocketAddr, Bytes)>,
}

#[derive(Default)]
struct PeerTable {
    by_key: HashMap<PeerKey, PeerEntry>,
    /// Identities peers currently accept rebinding under, to their key.
    by_identity: HashMap<Arc<str>, PeerKey>,
}

/// Serves one UDP socket until `shutdown` turns true. `new_channel` makes the channel of a
/// new peer; it gets the peer's address and the wake-up handle to give the broker.
pub async fn serve_datagram_listener<C, D, F>(
    socket: UdpSocket,
    limits: DatagramSettings,
    demux: D,
    stats: Arc<DatagramMetrics>,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    new_channel: F,
) where
    C: DatagramChannel,
    D: Demux,
    F: Fn(SocketAddr, Arc<ConnWakeup>) -> C,
{
    let socket = Arc::new(socket);
    let demux = Arc::new(demux);
    let table = Arc::new(Mutex::new(PeerTable::default()));
    let tracker = TaskTracker::new();
    let mut next_task_id = 0u64;
    let mut buf = vec![0u8; limits.max_datagram_size.max(1)];
    let beacon = limits.beacon.clone();
    let mut beacon_timer = beacon.as_ref().map(|beacon| {
        let mut timer = tokio::time::interval(beacon.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    loop {
        let received = tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick(&mut beacon_timer) => {
                if let Some(beacon) = &beacon {
                    match socket.send_to(&beacon.datagram, beacon.target).await {
                        Ok(_) => Stats::add(&stats.datagrams_sent, 1),
                        Err(error) => tracing::debug!(listener = %limits.name, %error, target = %beacon.target, "beacon not sent"),
                    }
                }
                continue;
            }
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(error) => {
                // ICMP port-unreachable from an earlier send surfaces here on some systems.
                tracing::debug!(listener = %limits.name, %error, "receive failed");
                continue;
            }
        };
        Stats::add(&stats.datagrams_received, 1);
        Stats::add(&broker.stats.bytes_received, len as u64);
        let datagram = Bytes::copy_from_slice(buf.get(..len).unwrap_or_default());
        let key = (from, demux.sub_key(&datagram));

        let mut guard = table.lock();
        if let Some(entry) = guard.by_key.get(&key) {
            offer(entry, from, datagram, &stats);
            continue;
        }
        // A peer known by name that moved here: re-key it so replies follow it.
        if let Some(identity) = demux.identity(&datagram) {
            if let Some(old_key) = guard.by_identity.get(&identity).cloned() {
                let moved = guard.by_key.remove(&old_key);
                if let Some(entry) = moved {
                    tracing::debug!(listener = %limits.name, old = %old_key.0, new = %from, %identity, "peer moved");
                    guard.by_identity.insert(identity, key.clone());
                    offer(&entry, from, datagram, &stats);
                    guard.by_key.insert(key, entry);
                    continue;
                }
            }
        }
        if guard.by_key.len() >= limits.max_peers {
            drop(guard);
            Stats::add(&stats.datagrams_dropped, 1);
            tracing::warn!(listener = %limits.name, peer = %from, max = limits.max_peers, "datagram dropped: listener at max peers");
            continue;
        }
        next_task_id += 1;
        let task_id = next_task_id;
        let (inbox, rx) = mpsc::channel(limits.max_queued_datagrams.max(1));
        let entry = PeerEntry { task_id, inbox };
        offer(&entry, from, datagram, &stats);
        guard.by_key.insert(key.clone(), entry);
        drop(guard);

        let wakeup = Arc::new(ConnWakeup::default());
        let channel = new_channel(from, wakeup.clone());
        let peer = Peer {
            task_id,
            key,
            socket: socket.clone(),
            table: table.clone(),
            demux: demux.clone(),
            stats: stats.clone(),
            broker: broker.clone(),
            rebindable: None,
        };
        Stats::add(&stats.peers, 1);
        let span = tracing::info_span!("peer", listener = %limits.name, peer = %from, client_id = tracing::field::Empty);
        tracker.spawn(
            peer.run(channel, rx, wakeup, shutdown.clone())
                .instrument(span),
        );
    }
    tracker.close();
    tracker.wait().await;
}

fn offer(entry: &PeerEntry, from: SocketAddr, datagram: Bytes, stats: &DatagramMetrics) {
    if entry.inbox.try_send((from, datagram)).is_err() {
        Stats::add(&stats.datagrams_dropped, 1);
        tracing::debug!(peer = %from, "datagram dropped: peer queue full");
    }
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

struct Peer<D: Demux> {
    task_id: u64,
    key: PeerKey,
    socket: Arc<UdpSocket>,
    table: Arc<Mutex<PeerTable>>,
    demux: Arc<D>,
    stats: Arc<DatagramMetrics>,
    broker: Arc<Broker>,
    /// The identity the table currently maps to this peer.
    rebindable: Option<Arc<str>>,
}

impl<D: Demux> Peer<D> {
    async fn run<C: DatagramChannel>(
        mut self,
        mut channel: C,
        mut inbox: mpsc::Receiver<(SocketAddr, Bytes)>,
        wakeup: Arc<ConnWakeup>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut address = self.key.0;
        let mut out = Vec::new();
        loop {
            let deadline = channel.next_deadline();
            let flow = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        channel.shutdown(&mut out)
                    } else {
                        Flow::Continue
                    }
                }
                received = inbox.recv() => match received {
                    Some((from, datagram)) => {
                        // The table moved this peer here if `from` is new to it.
                        if from != address {
                            // The span names the peer where its replies go now.
                            tracing::Span::current().record("peer", tracing::field::display(from));
                            tracing::info!(old = %address, "peer moved to a new address");
                        }
                        address = from;
                        self.key.0 = from;
                        channel.handle_datagram(datagram, &mut out, Instant::now())
                    }
                    None => Flow::Close,
                },
                () = wakeup.woken() => channel.handle_wakeup(&mut out, Instant::now()),
                _ = sleep_until(deadline), if deadline.is_some() => {
                    channel.handle_timeout(&mut out, Instant::now())
                }
            };
            if flow == Flow::Close {
                // Closed and out of the table before the last replies leave, so a peer that
                // answers them at once reaches a new channel, not this closing one's inbox.
                channel.handle_closed(Instant::now());
                self.forget();
                self.send_all(&mut out, address).await;
                return;
            }
            self.send_all(&mut out, address).await;
            self.publish_identity(channel.rebindable_identity());
            if channel.take_yield_request() {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn send_all(&self, out: &mut Vec<Bytes>, address: SocketAddr) {
        for datagram in out.drain(..) {
            let datagram = match &self.key.1 {
                Some(sub_key) => self.demux.wrap(sub_key, datagram),
                None => datagram,
            };
            match self.socket.send_to(&datagram, address).await {
                Ok(n) => {
                    Stats::add(&self.stats.datagrams_sent, 1);
                    Stats::add(&self.broker.stats.bytes_sent, n as u64);
                }
                Err(error) => tracing::debug!(%error, %address, "send failed"),
            }
        }
    }

    /// This peer's key in the table: the address it last heard from, unless a datagram from
    /// an older address was still queued behind a move, which only a scan can tell.
    fn current_key(&self, table: &PeerTable) -> Option<PeerKey> {
        match table.by_key.get(&self.key) {
            Some(entry) if entry.task_id == self.task_id => Some(self.key.clone()),
            _ => table
                .by_key
                .iter()
                .find(|(_, entry)| entry.task_id == self.task_id)
                .map(|(key, _)| key.clone()),
        }
    }

    /// Keeps the table's identity index in step with what the channel allows.
    fn publish_identity(&mut self, identity: Option<Arc<str>>) {
        if self.rebindable == identity {
            return;
        }
        let mut table = self.table.lock();
        let key = self.current_key(&table);
        if let Some(old) = self.rebindable.take() {
            if table.by_identity.get(&old) == key.as_ref() {
                table.by_identity.remove(&old);
            }
        }
        if let (Some(identity), Some(key)) = (&identity, key) {
            table.by_identity.insert(identity.clone(), key);
        }
        self.rebindable = identity;
    }

    fn forget(&mut self) {
        self.publish_identity(None);
        let mut table = self.table.lock();
        if let Some(key) = self.current_key(&table) {
            table.by_key.remove(&key);
        }
        self.stats.peers.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

/// Binds a UDP socket, with broadcast allowed when the listener advertises itself.
pub async fn bind_udp(bind: SocketAddr, broadcast: bool) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(bind).await?;
    if broadcast {
        socket.set_broadcast(true)?;
    }
    Ok(socket)
}
