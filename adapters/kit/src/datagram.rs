//! The datagram driver: one UDP socket per listener, a table of peers keyed by source address
//! (and by a sub-key such as a forwarder's wireless node), and one task per peer that owns
//! that peer's sans-io channel, its deadline and its wake-ups.
//!
//! UDP has no connection, so "closing" a peer means forgetting it. A peer that names itself
//! (an MQTT-SN client waking from sleep on a new source port) is found again by that name,
//! but only once its own channel has vouched for the datagram that names it: a source
//! address proves nothing, and a name in a datagram proves less.
//!
//! UDP source addresses can be forged, so until a peer has shown that it receives at its
//! address (it answered something of ours), it is sent at most three times the bytes it
//! sent (QUIC's anti-amplification rule, RFC 9000 8.1); the rest is dropped and counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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
    /// The name under which a datagram from another address may claim this peer, while the
    /// peer allows it (a sleeping client does; a connected one does not).
    fn rebindable_identity(&self) -> Option<Arc<str>>;
    /// Whether `datagram`, from `from` (an address the listener does not know) and naming
    /// this peer's identity, is this peer's client's: it authenticates as the same client
    /// and owner (the credentials this peer was admitted with, or ones the session layer
    /// accepts for the same owner). Only then does the peer move to `from`; otherwise the
    /// datagram goes to a peer of its own. Changes nothing in the channel.
    fn vouch(&mut self, datagram: &Bytes, from: SocketAddr, now: Instant) -> bool;
    /// The peer moved to `address` (after [`DatagramChannel::vouch`]): what it sends now
    /// goes there, and that it receives there is not yet shown.
    fn rebound(&mut self, address: SocketAddr);
    /// Whether the peer has shown that it receives at its current address: it answered
    /// something of ours that a forger would not have seen (an acknowledgement of our
    /// message, a value we sent echoed), or the session layer authenticated it. Until
    /// then the driver sends it at most [`AMPLIFICATION_FACTOR`] times what it sent.
    fn address_validated(&self) -> bool;
}

/// What the driver needs to know about a datagram before any channel has seen it.
pub trait Demux: Send + Sync + 'static {
    /// A sub-key separating several peers behind one address (a forwarder's nodes).
    fn sub_key(&self, datagram: &Bytes) -> Option<Bytes>;
    /// A name the datagram claims: the peer that published it is asked to vouch for the
    /// datagram before it may move to the datagram's address.
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>>;
    /// Frames one outgoing datagram for a peer with `sub_key` (e.g. re-encapsulates it).
    fn wrap(&self, sub_key: &Bytes, datagram: Bytes) -> Bytes;
    /// Whether `datagram`, from `from`, an address with no peer and claiming none, may
    /// make a peer. The listener keeps nothing for a datagram it does not admit.
    fn admit(&self, _from: SocketAddr, _datagram: &Bytes, _now: Instant) -> Admission {
        Admission::Accept
    }
}

/// What the listener does with a datagram that would make a new peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Dropped, unanswered.
    Drop,
    /// Answered with this datagram, from the listener itself: no peer is made.
    Reply(Bytes),
}

/// Bytes sent to a peer whose address is not validated, per byte received from it
/// (RFC 9000 8.1).
pub const AMPLIFICATION_FACTOR: u64 = 3;

/// What a UDP gateway listener's configuration gives its adapter.
#[derive(Debug, Clone)]
pub struct UdpListenerSettings {
    /// `udp:NAME`, as logs and auth rules name the listener.
    pub name: Arc<str>,
    pub max_peers: usize,
    /// Peers behind one source IP address (a forwarder's nodes included).
    pub max_peers_per_source: usize,
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
            max_peers_per_source: config.max_peers_per_source as usize,
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
    /// Peers tracked at once for one source IP address, however many ports and sub-keys
    /// it uses; datagrams for new peers beyond it are dropped.
    pub max_peers_per_source: usize,
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

/// Per-listener counters, published under `$SYS/broker/listeners/{name}/` (`peers/current`,
/// `datagrams/...`) and summed under `$SYS/broker/`.
#[derive(Debug, Default)]
pub struct DatagramMetrics {
    pub peers: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub datagrams_sent: AtomicU64,
    /// Dropped because the peer table, the source's share of it or a peer's queue was full.
    pub datagrams_dropped: AtomicU64,
    /// Not sent: the peer's address is not validated and its byte budget was spent.
    pub datagrams_over_budget: AtomicU64,
    /// Datagrams from a new address that claimed a peer's identity and that the peer
    /// did not vouch for (served by a peer of their own instead).
    pub claims_refused: AtomicU64,
    /// Datagrams that would have made a peer and were answered by the listener itself
    /// (a DTLS HelloVerifyRequest), no peer made.
    pub datagrams_answered_statelessly: AtomicU64,
    /// Datagrams that would have made a peer and were dropped unanswered, no peer made.
    pub datagrams_not_admitted: AtomicU64,
}

impl mqtt_core::broker::ListenerFigures for DatagramMetrics {
    fn figures(&self, out: &mut Vec<(&'static str, u64)>) {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.extend([
            ("peers/current", read(&self.peers)),
            ("datagrams/received", read(&self.datagrams_received)),
            ("datagrams/sent", read(&self.datagrams_sent)),
            ("datagrams/dropped", read(&self.datagrams_dropped)),
            ("datagrams/over_budget", read(&self.datagrams_over_budget)),
            ("datagrams/claims_refused", read(&self.claims_refused)),
            (
                "datagrams/answered_statelessly",
                read(&self.datagrams_answered_statelessly),
            ),
            ("datagrams/not_admitted", read(&self.datagrams_not_admitted)),
        ]);
    }
}

impl UdpListenerSettings {
    /// The driver's limits for this listener; `max_datagram_size` is what is read.
    pub fn limits(&self, max_datagram_size: usize, beacon: Option<Beacon>) -> DatagramSettings {
        DatagramSettings {
            name: self.name.clone(),
            max_peers: self.max_peers,
            max_peers_per_source: self.max_peers_per_source,
            max_datagram_size,
            max_queued_datagrams: self.max_queued_datagrams,
            beacon,
        }
    }
}

type PeerKey = (SocketAddr, Option<Bytes>);

/// What reaches a peer's task from the listener.
enum Input {
    Datagram(Bytes),
    /// A datagram from an address the listener does not know that names this peer's
    /// identity: the peer vouches for it and moves there, or hands it back.
    Claim(PeerKey, Bytes),
}

/// Datagrams from one claimant a peer may have waiting in its queue: its client's next
/// requests follow the first before the peer has moved. Other claimants meanwhile get
/// peers of their own, so that claims cannot crowd the peer's own datagrams out.
const MAX_QUEUED_CLAIMS: usize = 4;

struct PeerEntry {
    task_id: u64,
    inbox: mpsc::Sender<Input>,
    /// Claims of this peer waiting in its queue.
    claims_queued: usize,
}

#[derive(Default)]
struct PeerTable {
    by_key: HashMap<PeerKey, PeerEntry>,
    /// Identities peers currently accept claims under, to their key.
    by_identity: HashMap<Arc<str>, PeerKey>,
    /// An address whose claim a peer has not decided yet, to that peer's key and task: the
    /// address's next datagrams follow its claim there.
    claimants: HashMap<PeerKey, (PeerKey, u64)>,
    /// Peers per source IP address.
    per_source: HashMap<IpAddr, usize>,
}

impl PeerTable {
    fn count_source(&mut self, ip: IpAddr) {
        *self.per_source.entry(ip).or_default() += 1;
    }

    fn uncount_source(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_source.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    fn peers_of_source(&self, ip: IpAddr) -> usize {
        self.per_source.get(&ip).copied().unwrap_or(0)
    }

    /// Queues a datagram from `key`, an address the table does not know, as a claim on the
    /// peer whose identity it names (or whose claim from `key` is pending); false when it
    /// claims none and goes to a peer of its own.
    fn claim(&mut self, key: &PeerKey, datagram: &Bytes, demux: &impl Demux) -> bool {
        let pending = self
            .claimants
            .get(key)
            .cloned()
            .filter(|(claimed, task_id)| {
                self.by_key
                    .get(claimed)
                    .is_some_and(|entry| entry.task_id == *task_id)
            });
        let from_this_claimant = pending.is_some();
        let claimed = match pending {
            Some((claimed, _)) => claimed,
            None => {
                // The peer it claimed is gone.
                self.claimants.remove(key);
                let Some(identity) = demux.identity(datagram) else {
                    return false;
                };
                let Some(claimed) = self.by_identity.get(&identity).cloned() else {
                    return false;
                };
                claimed
            }
        };
        let Some(entry) = self.by_key.get_mut(&claimed) else {
            return false;
        };
        if (entry.claims_queued > 0 && !from_this_claimant)
            || entry.claims_queued >= MAX_QUEUED_CLAIMS
        {
            return false;
        }
        if entry
            .inbox
            .try_send(Input::Claim(key.clone(), datagram.clone()))
            .is_err()
        {
            return false;
        }
        entry.claims_queued += 1;
        let task_id = entry.task_id;
        self.claimants.insert(key.clone(), (claimed, task_id));
        true
    }

    /// One claim on the peer at `key` is decided.
    fn claim_decided(&mut self, key: &PeerKey, claimant: &PeerKey) {
        if let Some(entry) = self.by_key.get_mut(key) {
            entry.claims_queued = entry.claims_queued.saturating_sub(1);
            if entry.claims_queued == 0 {
                self.claimants.remove(claimant);
            }
        }
    }
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
    broker.add_listener_figures(limits.name.clone(), stats.clone());
    let socket = Arc::new(socket);
    let demux = Arc::new(demux);
    let table = Arc::new(Mutex::new(PeerTable::default()));
    let tracker = TaskTracker::new();
    // Claims a peer did not vouch for, back to be served by peers of their own.
    let (refused_tx, mut refused_rx) = mpsc::channel::<(PeerKey, Bytes)>(64);
    let mut next_task_id = 0u64;
    let mut buf = vec![0u8; limits.max_datagram_size.max(1)];
    let beacon = limits.beacon.clone();
    let mut beacon_timer = beacon.as_ref().map(|beacon| {
        let mut timer = tokio::time::interval(beacon.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    loop {
        let (key, datagram, may_claim) = tokio::select! {
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
            Some((key, datagram)) = refused_rx.recv() => (key, datagram, false),
            received = socket.recv_from(&mut buf) => {
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
                ((from, demux.sub_key(&datagram)), datagram, true)
            }
        };
        let from = key.0;

        let mut guard = table.lock();
        if let Some(entry) = guard.by_key.get(&key) {
            offer(entry, Input::Datagram(datagram), &stats);
            continue;
        }
        // A name that a peer elsewhere accepts claims under: that peer decides whether the
        // datagram is its client's, and only then moves here.
        if may_claim && guard.claim(&key, &datagram, &*demux) {
            continue;
        }
        match demux.admit(from, &datagram, Instant::now()) {
            Admission::Accept => {}
            Admission::Drop => {
                drop(guard);
                Stats::add(&stats.datagrams_not_admitted, 1);
                continue;
            }
            Admission::Reply(reply) => {
                drop(guard);
                Stats::add(&stats.datagrams_answered_statelessly, 1);
                // Not awaited: a reply that finds the socket's buffer full is lost, as
                // the network might lose it, and the client asks again.
                match socket.try_send_to(&reply, from) {
                    Ok(n) => {
                        Stats::add(&stats.datagrams_sent, 1);
                        Stats::add(&broker.stats.bytes_sent, n as u64);
                    }
                    Err(error) => {
                        tracing::debug!(listener = %limits.name, %error, peer = %from, "stateless reply not sent")
                    }
                }
                continue;
            }
        }
        if guard.by_key.len() >= limits.max_peers {
            drop(guard);
            Stats::add(&stats.datagrams_dropped, 1);
            tracing::warn!(listener = %limits.name, peer = %from, max = limits.max_peers, "datagram dropped: listener at max peers");
            continue;
        }
        if guard.peers_of_source(from.ip()) >= limits.max_peers_per_source {
            drop(guard);
            Stats::add(&stats.datagrams_dropped, 1);
            tracing::debug!(listener = %limits.name, peer = %from, max = limits.max_peers_per_source, "datagram dropped: source at max peers");
            continue;
        }
        next_task_id += 1;
        let task_id = next_task_id;
        let (inbox, rx) = mpsc::channel(limits.max_queued_datagrams.max(1));
        let entry = PeerEntry {
            task_id,
            inbox,
            claims_queued: 0,
        };
        offer(&entry, Input::Datagram(datagram), &stats);
        guard.by_key.insert(key.clone(), entry);
        guard.count_source(from.ip());
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
            refused: refused_tx.clone(),
            rebindable: None,
            budget: Budget::default(),
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

fn offer(entry: &PeerEntry, input: Input, stats: &DatagramMetrics) {
    if entry.inbox.try_send(input).is_err() {
        Stats::add(&stats.datagrams_dropped, 1);
        tracing::debug!("datagram dropped: peer queue full");
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

/// What a peer whose address is not validated may still be sent (RFC 9000 8.1).
#[derive(Debug, Default)]
struct Budget {
    validated: bool,
    received: u64,
    sent: u64,
}

impl Budget {
    fn receive(&mut self, len: usize) {
        if !self.validated {
            self.received = self.received.saturating_add(len as u64);
        }
    }

    /// Whether `len` more bytes may go out, counting them when they may.
    fn spend(&mut self, len: usize) -> bool {
        if self.validated {
            return true;
        }
        let allowed = self.received.saturating_mul(AMPLIFICATION_FACTOR);
        let after = self.sent.saturating_add(len as u64);
        if after > allowed {
            return false;
        }
        self.sent = after;
        true
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
    refused: mpsc::Sender<(PeerKey, Bytes)>,
    /// The identity the table currently maps to this peer.
    rebindable: Option<Arc<str>>,
    budget: Budget,
}

impl<D: Demux> Peer<D> {
    async fn run<C: DatagramChannel>(
        mut self,
        mut channel: C,
        mut inbox: mpsc::Receiver<Input>,
        wakeup: Arc<ConnWakeup>,
        mut shutdown: watch::Receiver<bool>,
    ) {
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
                    Some(Input::Datagram(datagram)) => {
                        self.budget.receive(datagram.len());
                        channel.handle_datagram(datagram, &mut out, Instant::now())
                    }
                    Some(Input::Claim(key, datagram)) => {
                        let now = Instant::now();
                        self.table.lock().claim_decided(&self.key, &key);
                        if key == self.key {
                            // A claim queued behind the one that moved the peer here.
                            self.budget.receive(datagram.len());
                            channel.handle_datagram(datagram, &mut out, now)
                        } else if channel.vouch(&datagram, key.0, now) && self.move_to(&key) {
                            channel.rebound(key.0);
                            self.budget.receive(datagram.len());
                            channel.handle_datagram(datagram, &mut out, now)
                        } else {
                            self.refuse_claim(key, datagram);
                            Flow::Continue
                        }
                    }
                    None => Flow::Close,
                },
                () = wakeup.woken() => channel.handle_wakeup(&mut out, Instant::now()),
                _ = sleep_until(deadline), if deadline.is_some() => {
                    channel.handle_timeout(&mut out, Instant::now())
                }
            };
            if !self.budget.validated && channel.address_validated() {
                self.budget.validated = true;
            }
            if flow == Flow::Close {
                // Closed and out of the table before the last replies leave, so a peer that
                // answers them at once reaches a new channel, not this closing one's inbox.
                channel.handle_closed(Instant::now());
                self.forget();
                self.send_all(&mut out).await;
                return;
            }
            self.send_all(&mut out).await;
            self.publish_identity(channel.rebindable_identity());
        }
    }

    async fn send_all(&mut self, out: &mut Vec<Bytes>) {
        let address = self.key.0;
        for datagram in out.drain(..) {
            let datagram = match &self.key.1 {
                Some(sub_key) => self.demux.wrap(sub_key, datagram),
                None => datagram,
            };
            if !self.budget.spend(datagram.len()) {
                Stats::add(&self.stats.datagrams_over_budget, 1);
                continue;
            }
            match self.socket.send_to(&datagram, address).await {
                Ok(n) => {
                    Stats::add(&self.stats.datagrams_sent, 1);
                    Stats::add(&self.broker.stats.bytes_sent, n as u64);
                }
                Err(error) => tracing::debug!(%error, %address, "send failed"),
            }
        }
    }

    /// Moves this peer to `key` in the table, unless a peer holds that key already.
    fn move_to(&mut self, key: &PeerKey) -> bool {
        let mut table = self.table.lock();
        if table.by_key.contains_key(key) {
            return false;
        }
        let Some(entry) = table.by_key.remove(&self.key) else {
            return false;
        };
        table.by_key.insert(key.clone(), entry);
        // Its next datagrams find the peer by its key now.
        table.claimants.remove(key);
        table.uncount_source(self.key.0.ip());
        table.count_source(key.0.ip());
        if let Some(identity) = &self.rebindable {
            table.by_identity.insert(identity.clone(), key.clone());
        }
        drop(table);
        // The span names the peer where its replies go now.
        tracing::Span::current().record("peer", tracing::field::display(key.0));
        tracing::info!(old = %self.key.0, "peer moved to a new address");
        self.key = key.clone();
        self.budget = Budget::default();
        true
    }

    /// The claim was not this peer's client's: a peer of its own serves it.
    fn refuse_claim(&mut self, key: PeerKey, datagram: Bytes) {
        Stats::add(&self.stats.claims_refused, 1);
        tracing::debug!(claimant = %key.0, "a datagram from another address named this peer and was not vouched for");
        if self.refused.try_send((key, datagram)).is_err() {
            Stats::add(&self.stats.datagrams_dropped, 1);
        }
    }

    /// Keeps the table's identity index in step with what the channel allows.
    fn publish_identity(&mut self, identity: Option<Arc<str>>) {
        if self.rebindable == identity {
            return;
        }
        let mut table = self.table.lock();
        let ours = table
            .by_key
            .get(&self.key)
            .is_some_and(|entry| entry.task_id == self.task_id);
        if let Some(old) = self.rebindable.take() {
            if table.by_identity.get(&old) == Some(&self.key) {
                table.by_identity.remove(&old);
            }
        }
        if let (Some(identity), true) = (&identity, ours) {
            table.by_identity.insert(identity.clone(), self.key.clone());
        }
        self.rebindable = identity;
    }

    fn forget(&mut self) {
        self.publish_identity(None);
        let mut table = self.table.lock();
        let ours = table
            .by_key
            .get(&self.key)
            .is_some_and(|entry| entry.task_id == self.task_id);
        if ours {
            table.by_key.remove(&self.key);
            table.uncount_source(self.key.0.ip());
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
