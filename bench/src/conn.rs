//! The `conn` scenario: many connections opened at a set rate and held idle, to measure
//! how fast a broker accepts them and what each one costs it in memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_core::codec::{encode, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::Conn;
use crate::error::BenchError;
use crate::report::{round2, ConnFigures, LatencyFigures};
use crate::scenario::RunConfig;
use crate::subscriber::latency_histogram;
use crate::sys;

/// The broker is given this long after the last CONNACK before its memory is read, so
/// allocations it makes just after accepting are counted.
const SETTLE: Duration = Duration::from_secs(1);
const ERROR_SAMPLES: usize = 5;

#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub connections: usize,
    /// New connections per second; 0 = as fast as `concurrency` allows.
    pub rate: f64,
    /// Most handshakes in progress at once.
    pub concurrency: usize,
    /// How long every connection stays open once all are up.
    pub hold: Duration,
}

#[derive(Debug)]
pub struct ConnRun {
    pub figures: ConnFigures,
    pub cpu_pct: Option<f64>,
    pub broker_cpu_pct: Option<f64>,
    pub others_cpu_pct: Option<f64>,
    pub errors: Vec<String>,
}

#[derive(Default)]
struct Shared {
    connected: AtomicU64,
    failed: AtomicU64,
    closed_during_hold: AtomicU64,
    /// Nanoseconds from the start to the latest CONNACK.
    last_connack_ns: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn note_error(&self, error: String) {
        if let Ok(mut errors) = self.errors.lock() {
            if errors.len() < ERROR_SAMPLES {
                errors.push(error);
            }
        }
    }
}

pub async fn run_conn(cfg: &RunConfig, plan: &ConnPlan) -> Result<ConnRun, BenchError> {
    let rss_before = cfg.broker_pid.and_then(sys::process_rss_kib);
    let shared = Arc::new(Shared::default());
    let latencies = Arc::new(Mutex::new(latency_histogram()?));
    let permits = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let start = Instant::now();
    let cpu_before = sys::self_cpu_time();
    let broker_before = cfg.broker_pid.and_then(sys::process_cpu_time);
    let machine_before = sys::machine_busy_time();
    let progress = cfg
        .progress
        .then(|| tokio::spawn(progress_loop(start, shared.clone())));
    for k in 0..plan.connections {
        if plan.rate > 0.0 {
            let due = start + Duration::from_secs_f64(k as f64 / plan.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let options = cfg.connect_options(k, format!("{}-c{k}", cfg.client_prefix), false);
        let (addr, timeout, ping) = (cfg.addr, cfg.connect_timeout, cfg.ping_period());
        let (shared, latencies, stop) = (shared.clone(), latencies.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let began = Instant::now();
            match Conn::connect(addr, &options, timeout).await {
                Ok((conn, _)) => {
                    let done = Instant::now();
                    if let Ok(mut histogram) = latencies.lock() {
                        histogram.saturating_record(done.duration_since(began).as_nanos() as u64);
                    }
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                    shared.last_connack_ns.fetch_max(
                        done.duration_since(start).as_nanos() as u64,
                        Ordering::Relaxed,
                    );
                    drop(permit);
                    if !hold(conn, stop, ping).await {
                        shared.closed_during_hold.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(error.to_string());
                }
            }
        });
    }
    // Every handshake has finished once every permit is back.
    let _all = permits.acquire_many(plan.concurrency.max(1) as u32).await;
    let connect_window = Duration::from_nanos(shared.last_connack_ns.load(Ordering::Relaxed));
    let cpu_after = sys::self_cpu_time();
    let broker_after = cfg.broker_pid.and_then(sys::process_cpu_time);
    let machine_after = sys::machine_busy_time();
    let connect_wall = start.elapsed();

    tokio::time::sleep(SETTLE).await;
    let rss_after = cfg.broker_pid.and_then(sys::process_rss_kib);
    tokio::time::sleep(plan.hold.saturating_sub(SETTLE)).await;
    if let Some(progress) = progress {
        progress.abort();
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    let connected = shared.connected.load(Ordering::Relaxed);
    let window_s = connect_window.as_secs_f64();
    let latency = latencies
        .lock()
        .ok()
        .and_then(|histogram| LatencyFigures::from_ns(&histogram));
    let rss_per_conn_bytes = match (rss_before, rss_after) {
        (Some(before), Some(after)) if connected > 0 => Some(round2(
            after.saturating_sub(before) as f64 * 1024.0 / connected as f64,
        )),
        _ => None,
    };
    let figures = ConnFigures {
        connections: plan.connections,
        connected,
        failed: shared.failed.load(Ordering::Relaxed),
        closed_during_hold: shared.closed_during_hold.load(Ordering::Relaxed),
        conn_rate: if window_s > 0.0 {
            (connected as f64 / window_s).round()
        } else {
            0.0
        },
        connect_window_s: round2(window_s),
        connect_latency_us: latency,
        broker_rss_kib_before: rss_before,
        broker_rss_kib_after: rss_after,
        rss_per_conn_bytes,
        hold_s: plan.hold.as_secs_f64(),
    };
    let errors = shared.errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(ConnRun {
        figures,
        cpu_pct: sys::cpu_percent(cpu_before, cpu_after, connect_wall).map(round2),
        broker_cpu_pct: sys::cpu_percent(broker_before, broker_after, connect_wall).map(round2),
        others_cpu_pct: sys::others_percent(
            (machine_before, machine_after),
            (cpu_before, cpu_after),
            (broker_before, broker_after),
            connect_wall,
        ),
        errors,
    })
}

/// Keeps a connection open and idle until `stop`; false if the broker closed it first.
async fn hold(conn: Conn, mut stop: watch::Receiver<bool>, ping: Option<Duration>) -> bool {
    let Conn {
        mut stream,
        version,
        ..
    } = conn;
    let mut pingreq = BytesMut::new();
    let _ = encode(&Packet::PingReq, version, &mut pingreq);
    let period = ping.unwrap_or(Duration::from_secs(3600));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            read = stream.read(&mut scratch) => {
                if !matches!(read, Ok(n) if n > 0) {
                    return false;
                }
            }
            _ = ticker.tick(), if ping.is_some() => {
                if stream.write_all(&pingreq).await.is_err() {
                    return false;
                }
            }
        }
    }
    let mut disconnect = BytesMut::new();
    let _ = encode(
        &Packet::Disconnect(Default::default()),
        version,
        &mut disconnect,
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(&disconnect).await;
        let _ = stream.shutdown().await;
    })
    .await;
    true
}

async fn progress_loop(start: Instant, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let connected = shared.connected.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4}s] connected {:>8}/s   (total {connected}, failed {})",
            start.elapsed().as_secs(),
            crate::report::si(connected.saturating_sub(last) as f64),
            shared.failed.load(Ordering::Relaxed),
        );
        last = connected;
    }
}
