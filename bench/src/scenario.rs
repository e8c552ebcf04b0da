//! Runs a traffic scenario: subscribers connected and subscribed first, then publishers
//! started together on one schedule, then a grace period for deliveries still on their way,
//! then the accounting.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use mqtt_core::codec::{ConnAck, ProtocolVersion, QoS};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Conn, ConnectOptions};
use crate::error::BenchError;
use crate::publisher::{run_publisher, PubCounters, PublisherResult, PublisherSpec, Schedule};
use crate::report::{round2, LatencyFigures, TrafficFigures};
use crate::subscriber::{
    latency_histogram, run_subscriber, SubCounters, SubscriberResult, SubscriberSpec,
};
use crate::sys;
use crate::tracker::{union_unique, FixedLimits, SeqLimits};

/// Handshakes in progress at once while setting up publishers and subscribers.
const SETUP_PARALLELISM: usize = 64;
/// Publishers start this long after the last one is spawned, so all start on time.
const START_MARGIN: Duration = Duration::from_millis(50);
/// A `sub` run whose publishers are elsewhere cannot check sequence numbers against what
/// was sent; these bounds only stop a stray payload from growing the bitmaps without end.
const EXTERNAL_LIMITS: FixedLimits = FixedLimits {
    publishers: 1 << 16,
    max_seq: 1 << 28,
};

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub addr: SocketAddr,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub size: usize,
    /// Messages per publisher; 0 = until `duration` ends.
    pub count: u64,
    pub duration: Duration,
    pub inflight: u16,
    /// The run ends when nothing was delivered for this long after publishing stopped…
    pub grace: Duration,
    /// …or this long after publishing stopped, whichever comes first.
    pub grace_max: Duration,
    pub keep_alive: u16,
    pub sub_stall: Duration,
    pub persistent_subscribers: bool,
    pub client_prefix: String,
    /// Local addresses the clients connect from, in turn; empty = the kernel's choice.
    pub sources: Vec<IpAddr>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub broker_pid: Option<u32>,
    pub connect_timeout: Duration,
    pub progress: bool,
}

impl RunConfig {
    /// Options for the `index`-th client of the run.
    pub fn connect_options(
        &self,
        index: usize,
        client_id: String,
        persistent: bool,
    ) -> ConnectOptions {
        let source = match self.sources.len() {
            0 => None,
            n => self.sources.get(index % n).copied(),
        };
        ConnectOptions {
            source,
            client_id,
            version: self.version,
            keep_alive: self.keep_alive,
            persistent,
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }

    pub fn ping_period(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_secs(u64::from(self.keep_alive)) / 2)
    }
}

/// Who publishes where and who subscribes to what.
#[derive(Debug, Clone)]
pub struct TrafficPlan {
    /// One topic per publisher; publisher ids are the indices.
    pub publishers: Vec<String>,
    /// Messages per second per publisher; 0 = unpaced.
    pub rate: f64,
    pub groups: Vec<Group>,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub filter: String,
    pub members: usize,
    /// A `$share/` group: the members between them owe each message once.
    pub shared: bool,
    pub covers: Coverage,
}

/// Which messages a group is owed.
#[derive(Debug, Clone)]
pub enum Coverage {
    /// Every message of these publishers of this run.
    Publishers(Vec<u32>),
    /// Its publishers run in another process: loss is judged from sequence gaps.
    External,
}

#[derive(Debug)]
pub struct TrafficRun {
    pub figures: TrafficFigures,
    pub cpu_pct: Option<f64>,
    pub broker_cpu_pct: Option<f64>,
    pub others_cpu_pct: Option<f64>,
    pub broker_rss_kib: Option<u64>,
    pub errors: Vec<String>,
}

#[derive(Clone)]
enum Limits {
    Run(Arc<[Arc<PubCounters>]>),
    Fixed(FixedLimits),
}

impl SeqLimits for Limits {
    fn publishers(&self) -> u32 {
        match self {
            Limits::Run(counters) => counters.len() as u32,
            Limits::Fixed(fixed) => fixed.publishers(),
        }
    }

    fn issued(&self, publisher: u32) -> u64 {
        match self {
            Limits::Run(counters) => counters
                .get(publisher as usize)
                .map_or(0, |c| c.issued.load(Ordering::Acquire)),
            Limits::Fixed(fixed) => fixed.issued(publisher),
        }
    }
}

pub async fn run_traffic(cfg: &RunConfig, plan: &TrafficPlan) -> Result<TrafficRun, BenchError> {
    let epoch = Instant::now();

    // Subscribers first, each with its SUBACK in hand, so that no publish can precede a
    // subscription.
    let mut sub_jobs = Vec::new();
    let mut member_group = Vec::new();
    for (group_index, group) in plan.groups.iter().enumerate() {
        for _ in 0..group.members {
            let index = sub_jobs.len();
            sub_jobs.push((
                format!("{}-s{index}", cfg.client_prefix),
                Some(group.filter.clone()),
            ));
            member_group.push(group_index);
        }
    }
    let sub_count = sub_jobs.len();
    let subscribers = connect_all(cfg, 0, sub_jobs).await?;
    let pub_jobs = (0..plan.publishers.len())
        .map(|i| (format!("{}-p{i}", cfg.client_prefix), None))
        .collect();
    let publishers = connect_all(cfg, sub_count, pub_jobs).await?;

    let pub_counters: Arc<[Arc<PubCounters>]> = (0..publishers.len())
        .map(|_| Arc::new(PubCounters::default()))
        .collect();
    let sub_counters: Vec<Arc<SubCounters>> = (0..subscribers.len())
        .map(|_| Arc::new(SubCounters::default()))
        .collect();
    let (stop_tx, stop_rx) = watch::channel(false);

    let start = Instant::now() + START_MARGIN;
    let end = start + cfg.duration;
    let stall_until = (cfg.sub_stall > Duration::ZERO).then(|| start + cfg.sub_stall);
    let schedule = Schedule {
        epoch,
        start,
        end,
        drain_deadline: end.max(stall_until.unwrap_or(end)) + cfg.grace_max,
    };

    let mut sub_tasks = Vec::with_capacity(subscribers.len());
    for (index, (conn, _)) in subscribers.into_iter().enumerate() {
        let group = member_group.get(index).and_then(|&g| plan.groups.get(g));
        let limits = match group.map(|g| &g.covers) {
            Some(Coverage::Publishers(_)) => Limits::Run(pub_counters.clone()),
            _ => Limits::Fixed(EXTERNAL_LIMITS),
        };
        let spec = SubscriberSpec {
            index,
            epoch,
            limits,
            stall_until,
            ping: cfg.ping_period(),
            latency: latency_histogram()?,
        };
        let counters = sub_counters.get(index).cloned().unwrap_or_default();
        sub_tasks.push(tokio::spawn(run_subscriber(
            conn,
            spec,
            counters,
            stop_rx.clone(),
        )));
    }

    let cpu_before = sys::self_cpu_time();
    let broker_before = cfg.broker_pid.and_then(sys::process_cpu_time);
    let machine_before = sys::machine_busy_time();

    let mut reports = Vec::with_capacity(publishers.len());
    let mut pub_tasks = Vec::with_capacity(publishers.len());
    let publisher_count = publishers.len().max(1);
    for (index, (conn, connack)) in publishers.into_iter().enumerate() {
        let Some(topic) = plan.publishers.get(index) else {
            continue;
        };
        let phase = if plan.rate > 0.0 {
            Duration::from_secs_f64(index as f64 / publisher_count as f64 / plan.rate)
        } else {
            Duration::ZERO
        };
        let spec = PublisherSpec {
            id: index as u32,
            topic: ByteString::from(topic.as_str()),
            qos: cfg.qos,
            size: cfg.size,
            rate: plan.rate,
            count: cfg.count,
            inflight: cfg.inflight,
            phase,
            ping: cfg.ping_period(),
        };
        let window = window_for(&connack, cfg.inflight);
        let (report_tx, report_rx) = oneshot::channel();
        reports.push(report_rx);
        let counters = pub_counters.get(index).cloned().unwrap_or_default();
        pub_tasks.push(tokio::spawn(run_publisher(
            conn,
            spec,
            window,
            schedule,
            counters,
            report_tx,
            stop_rx.clone(),
        )));
    }

    let progress = cfg.progress.then(|| {
        tokio::spawn(progress_loop(
            start,
            pub_counters.clone(),
            sub_counters.clone(),
        ))
    });

    let mut errors = Vec::new();
    let mut pub_results: Vec<PublisherResult> = Vec::with_capacity(reports.len());
    for report in reports {
        match report.await {
            Ok(result) => pub_results.push(result),
            Err(_) => errors.push("a publisher task ended without reporting".to_owned()),
        }
    }
    pub_results.sort_by_key(|r| r.id);
    let mut sent = vec![0u64; plan.publishers.len()];
    for result in &pub_results {
        if let Some(slot) = sent.get_mut(result.id as usize) {
            *slot = result.sent;
        }
    }

    if plan.publishers.is_empty() {
        tokio::time::sleep_until(end.into()).await;
    } else {
        // A stalled subscriber cannot show progress: the grace period starts when it
        // reads again.
        if let Some(stall_until) = stall_until {
            tokio::time::sleep_until(stall_until.into()).await;
        }
        wait_for_deliveries(cfg, plan, &member_group, &sent, &sub_counters).await;
    }
    let measured_end = Instant::now();
    let cpu_after = sys::self_cpu_time();
    let broker_after = cfg.broker_pid.and_then(sys::process_cpu_time);
    let machine_after = sys::machine_busy_time();
    let broker_rss_kib = cfg.broker_pid.and_then(sys::process_rss_kib);
    if let Some(progress) = progress {
        progress.abort();
    }

    let _ = stop_tx.send(true);
    let mut sub_results = Vec::with_capacity(sub_tasks.len());
    for task in sub_tasks {
        match task.await {
            Ok(result) => sub_results.push(result),
            Err(error) => errors.push(format!("a subscriber task failed: {error}")),
        }
    }
    for task in pub_tasks {
        if let Err(error) = task.await {
            errors.push(format!("a publisher task failed: {error}"));
        }
    }
    sub_results.sort_by_key(|r| r.index);
    errors.extend(pub_results.iter().filter_map(|r| r.error.clone()));
    errors.extend(sub_results.iter().filter_map(|r| r.error.clone()));

    let figures = account(
        cfg,
        plan,
        &member_group,
        &pub_results,
        &sent,
        &sub_results,
        start,
    )?;
    let wall = measured_end.saturating_duration_since(start);
    Ok(TrafficRun {
        figures,
        cpu_pct: sys::cpu_percent(cpu_before, cpu_after, wall).map(round2),
        broker_cpu_pct: sys::cpu_percent(broker_before, broker_after, wall).map(round2),
        others_cpu_pct: sys::others_percent(
            (machine_before, machine_after),
            (cpu_before, cpu_after),
            (broker_before, broker_after),
            wall,
        ),
        broker_rss_kib,
        errors,
    })
}

/// The QoS 1/2 window: ours, lowered to the broker's Receive Maximum (MQTT 5).
fn window_for(connack: &ConnAck, inflight: u16) -> u16 {
    connack
        .properties
        .receive_maximum
        .map_or(inflight, |max| inflight.min(max))
        .max(1)
}

/// Connects (and subscribes, where a filter is given) every job, a bounded number at a time.
async fn connect_all(
    cfg: &RunConfig,
    first_index: usize,
    jobs: Vec<(String, Option<String>)>,
) -> Result<Vec<(Conn, ConnAck)>, BenchError> {
    let total = jobs.len();
    let permits = Arc::new(Semaphore::new(SETUP_PARALLELISM));
    let mut set = JoinSet::new();
    for (index, (client_id, filter)) in jobs.into_iter().enumerate() {
        let persistent = cfg.persistent_subscribers && filter.is_some();
        let options = cfg.connect_options(first_index + index, client_id, persistent);
        let permits = permits.clone();
        let (addr, timeout, qos) = (cfg.addr, cfg.connect_timeout, cfg.qos);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let (mut conn, ack) = Conn::connect(addr, &options, timeout).await?;
            if let Some(filter) = filter {
                conn.subscribe(&filter, qos, timeout).await?;
            }
            Ok::<_, BenchError>((index, conn, ack))
        });
    }
    let mut slots: Vec<Option<(Conn, ConnAck)>> = (0..total).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (index, conn, ack) = joined.map_err(|error| BenchError::Task(error.to_string()))??;
        if let Some(slot) = slots.get_mut(index) {
            *slot = Some((conn, ack));
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Waits until every subscriber (every shared group) has what it is owed, or nothing
/// arrived for `grace`, or `grace_max` passed.
async fn wait_for_deliveries(
    cfg: &RunConfig,
    plan: &TrafficPlan,
    member_group: &[usize],
    sent: &[u64],
    sub_counters: &[Arc<SubCounters>],
) {
    let owed = |covers: &Coverage| match covers {
        Coverage::Publishers(ids) => Some(
            ids.iter()
                .map(|&id| sent.get(id as usize).copied().unwrap_or(0))
                .sum::<u64>(),
        ),
        Coverage::External => None,
    };
    let done = || {
        plan.groups.iter().enumerate().all(|(g, group)| {
            let Some(owed) = owed(&group.covers) else {
                return false;
            };
            let members = member_group
                .iter()
                .zip(sub_counters)
                .filter(|(&mg, _)| mg == g)
                .map(|(_, c)| c.unique.load(Ordering::Relaxed));
            if group.shared {
                members.sum::<u64>() >= owed
            } else {
                members.into_iter().all(|unique| unique >= owed)
            }
        })
    };
    let total = || {
        sub_counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let publishing_done = Instant::now();
    let mut last_total = total();
    let mut last_change = publishing_done;
    loop {
        if done() {
            return;
        }
        let now = Instant::now();
        if now.duration_since(last_change) >= cfg.grace
            || now.duration_since(publishing_done) >= cfg.grace_max
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let current = total();
        if current != last_total {
            last_total = current;
            last_change = Instant::now();
        }
    }
}

fn account(
    cfg: &RunConfig,
    plan: &TrafficPlan,
    member_group: &[usize],
    pub_results: &[PublisherResult],
    sent: &[u64],
    sub_results: &[SubscriberResult],
    start: Instant,
) -> Result<TrafficFigures, BenchError> {
    let mut f = TrafficFigures {
        lost_basis: "sent",
        ..TrafficFigures::default()
    };
    for result in pub_results {
        f.sent += result.sent;
        f.acked += result.acked;
        f.refused += result.refused;
        f.unacked += result.unacked;
    }
    let sent_by = |id: u32| sent.get(id as usize).copied().unwrap_or(0);
    for (g, group) in plan.groups.iter().enumerate() {
        let members: Vec<&SubscriberResult> = sub_results
            .iter()
            .filter(|r| member_group.get(r.index) == Some(&g))
            .collect();
        for member in &members {
            f.received += member.received;
            f.duplicated += member.tracker.duplicates();
            f.reordered += member.tracker.reordered();
            f.foreign += member.tracker.foreign;
        }
        match &group.covers {
            Coverage::External => {
                f.lost_basis = "gaps";
                for member in &members {
                    let unique = member.tracker.unique();
                    let gaps = member.tracker.gaps();
                    f.unique += unique;
                    f.lost += gaps;
                    f.expected += unique + gaps;
                }
            }
            Coverage::Publishers(ids) if group.shared => {
                for &id in ids {
                    let union = union_unique(members.iter().map(|m| &m.tracker), id);
                    let each: u64 = members
                        .iter()
                        .filter_map(|m| m.tracker.publisher(id))
                        .map(|set| set.unique)
                        .sum();
                    // Delivered to more than one member: the group got it more than once.
                    f.duplicated += each.saturating_sub(union);
                    f.unique += union;
                    f.expected += sent_by(id);
                    f.lost += sent_by(id).saturating_sub(union);
                }
            }
            Coverage::Publishers(ids) => {
                for member in &members {
                    for &id in ids {
                        let got = member.tracker.publisher(id).map_or(0, |set| set.unique);
                        f.unique += got;
                        f.expected += sent_by(id);
                        f.lost += sent_by(id).saturating_sub(got);
                    }
                }
            }
        }
    }

    let since_start =
        |t: Option<Instant>| t.map(|t| t.saturating_duration_since(start).as_secs_f64());
    let in_window = pub_results
        .iter()
        .filter_map(|r| since_start(r.last_progress))
        .fold(0.0, f64::max);
    let in_count = if cfg.qos == QoS::AtMostOnce {
        f.sent
    } else {
        f.acked
    };
    f.in_window_s = round2(in_window);
    f.in_rate = if in_window > 0.0 {
        (in_count as f64 / in_window).round()
    } else {
        0.0
    };
    let out_window = sub_results
        .iter()
        .filter_map(|r| since_start(r.last_receive))
        .fold(0.0, f64::max);
    f.out_window_s = round2(out_window);
    f.out_rate = if out_window > 0.0 {
        (f.received as f64 / out_window).round()
    } else {
        0.0
    };

    let per_sub: Vec<u64> = sub_results.iter().map(|r| r.received).collect();
    f.sub_received_min = per_sub.iter().copied().min().unwrap_or(0);
    f.sub_received_max = per_sub.iter().copied().max().unwrap_or(0);
    f.sub_received_mean = if per_sub.is_empty() {
        0.0
    } else {
        round2(per_sub.iter().sum::<u64>() as f64 / per_sub.len() as f64)
    };
    f.fairness = if f.sub_received_max > 0 {
        (f.sub_received_min as f64 / f.sub_received_max as f64 * 1000.0).round() / 1000.0
    } else {
        0.0
    };

    let mut latency = latency_histogram()?;
    // Publishers in another process stamp their payloads on another clock.
    let same_clock = plan
        .groups
        .iter()
        .all(|g| matches!(g.covers, Coverage::Publishers(_)));
    for result in sub_results.iter().filter(|_| same_clock) {
        // Same bounds on both sides, so adding cannot fail; a failure would only drop
        // that subscriber's samples.
        let _ = latency.add(&result.latency);
    }
    f.latency_us = LatencyFigures::from_ns(&latency);
    Ok(f)
}

async fn progress_loop(start: Instant, pubs: Arc<[Arc<PubCounters>]>, subs: Vec<Arc<SubCounters>>) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let (mut last_sent, mut last_acked, mut last_received) = (0u64, 0u64, 0u64);
    loop {
        tick.tick().await;
        let sent: u64 = pubs.iter().map(|c| c.issued.load(Ordering::Relaxed)).sum();
        let acked: u64 = pubs.iter().map(|c| c.acked.load(Ordering::Relaxed)).sum();
        let received: u64 = subs
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum();
        eprintln!(
            "[{:>4}s] sent {:>9}/s  acked {:>9}/s  received {:>9}/s   (total sent {sent}, received {received})",
            start.elapsed().as_secs(),
            crate::report::si(sent.saturating_sub(last_sent) as f64),
            crate::report::si(acked.saturating_sub(last_acked) as f64),
            crate::report::si(received.saturating_sub(last_received) as f64),
        );
        (last_sent, last_acked, last_received) = (sent, acked, received);
    }
}
