//! `coap-bench`: CoAP publishes over UDP or DTLS counted by an MQTT subscriber, and DTLS
//! handshakes per second. Prints a summary on stderr and one JSON line on stdout.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use gateway_bench::client::{Conn, ConnectOptions};
use gateway_bench::coap::{
    psk_client_config, run_handshakes, run_publisher, HandshakeCounters, PublishCounters,
    PublisherSpec, Security,
};
use gateway_bench::payload::HEADER_LEN;
use gateway_bench::report::{round2, LatencyFigures};
use gateway_bench::subscriber::{latency_histogram, run_subscriber, SubCounters, SubscriberSpec};
use gateway_bench::sys;
use gateway_bench::tracker::FixedLimits;
use mqtt_core::codec::{ProtocolVersion, QoS};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "coap-bench", disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    /// Broker process id: its CPU is reported beside ours.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0, global = true)]
    duration: f64,
    /// DTLS pre-shared keys, `identity:secret` lines as the gateway reads them; client `i`
    /// takes line `i`. Without it, `publish` is plain UDP.
    #[arg(long, global = true)]
    psk_file: Option<std::path::PathBuf>,
    /// Over DTLS, offer the connection ID extension (RFC 9146): the records sent carry the
    /// gateway's ID.
    #[arg(long, global = true)]
    connection_id: bool,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Clients publish by confirmable POST /ps/{topic}, one request outstanding each; an
    /// MQTT subscriber on the topics counts what is delivered.
    Publish {
        /// CoAP (UDP or DTLS) port.
        #[arg(long, default_value_t = 5683)]
        port: u16,
        /// MQTT port of the same gateway, for the subscriber.
        #[arg(long, default_value_t = 1883)]
        mqtt_port: u16,
        #[arg(long, default_value_t = 50)]
        clients: u32,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Handshakes back to back, each closed with a close_notify once complete.
    Handshake {
        /// DTLS port.
        #[arg(long, default_value_t = 5684)]
        port: u16,
        /// Handshakes in progress at once (each from its own socket).
        #[arg(long, default_value_t = 32)]
        concurrency: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !cli.duration.is_finite() || cli.duration <= 0.0 {
        bail!("--duration must be a number > 0");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(async {
        match cli.mode {
            Mode::Publish {
                port,
                mqtt_port,
                clients,
                size,
            } => publish(&cli, port, mqtt_port, clients, size).await,
            Mode::Handshake { port, concurrency } => handshake(&cli, port, concurrency).await,
        }
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    println!("{report}");
    Ok(())
}

/// Identities and their secrets.
type Keys = Vec<(String, Vec<u8>)>;

/// The `identity:secret` lines of `path`, blank and `#` lines skipped.
fn read_keys(path: &std::path::Path) -> Result<Keys> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (identity, secret) = line
                .split_once(':')
                .with_context(|| format!("{}: a line without ':'", path.display()))?;
            Ok((identity.to_owned(), secret.as_bytes().to_vec()))
        })
        .collect()
}

/// The keys of the first `count` clients, or none without a key file.
fn client_keys(cli: &Cli, count: u32) -> Result<Option<Keys>> {
    let Some(path) = &cli.psk_file else {
        return Ok(None);
    };
    let keys = read_keys(path)?;
    if keys.len() < count as usize {
        bail!(
            "{} has {} keys for {count} clients",
            path.display(),
            keys.len()
        );
    }
    Ok(Some(keys.into_iter().take(count as usize).collect()))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

/// CPU time of this process, the broker and the whole machine, to turn into shares of a
/// core over a window.
struct CpuMark {
    at: Instant,
    own: Option<Duration>,
    broker: Option<Duration>,
    machine: Option<Duration>,
}

impl CpuMark {
    fn now(broker_pid: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            own: sys::self_cpu_time(),
            broker: broker_pid.and_then(sys::process_cpu_time),
            machine: sys::machine_busy_time(),
        }
    }

    /// Percent of one core used by us, the broker, and everything else since `self`.
    fn shares(&self, broker_pid: Option<u32>) -> (Option<f64>, Option<f64>, Option<f64>) {
        let later = CpuMark::now(broker_pid);
        let wall = later.at.duration_since(self.at);
        (
            sys::cpu_percent(self.own, later.own, wall).map(round2),
            sys::cpu_percent(self.broker, later.broker, wall).map(round2),
            sys::others_percent(
                (self.machine, later.machine),
                (self.own, later.own),
                (self.broker, later.broker),
                wall,
            ),
        )
    }
}

async fn publish(
    cli: &Cli,
    port: u16,
    mqtt_port: u16,
    clients: u32,
    size: usize,
) -> Result<serde_json::Value> {
    if size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN}");
    }
    if clients == 0 {
        bail!("--clients must be at least 1");
    }
    let server = resolve(&cli.host, port)?;
    let prefix = format!("coapbench/{}", std::process::id());
    let epoch = Instant::now();

    let (mut conn, _) = Conn::connect(
        resolve(&cli.host, mqtt_port)?,
        &ConnectOptions {
            source: None,
            client_id: format!("coapbench-sub-{}", std::process::id()),
            version: ProtocolVersion::V3_1_1,
            keep_alive: 0,
            persistent: false,
            username: None,
            password: None,
        },
        Duration::from_secs(10),
    )
    .await
    .context("connecting the MQTT subscriber")?;
    conn.subscribe(
        &format!("{prefix}/#"),
        QoS::AtLeastOnce,
        Duration::from_secs(10),
    )
    .await
    .context("subscribing")?;
    let sub_counters = Arc::new(SubCounters::default());
    let (stop_sub, stop_sub_rx) = tokio::sync::watch::channel(false);
    let subscriber = tokio::spawn(run_subscriber(
        conn,
        SubscriberSpec {
            index: 0,
            epoch,
            limits: FixedLimits {
                publishers: clients,
                max_seq: u64::from(u32::MAX),
            },
            stall_until: None,
            ping: None,
            latency: latency_histogram()?,
        },
        sub_counters.clone(),
        stop_sub_rx,
    ));

    let keys = client_keys(cli, clients)?;
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<PublishCounters>> = (0..clients)
        .map(|_| Arc::new(PublishCounters::default()))
        .collect();
    let cpu = CpuMark::now(cli.broker_pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, counters) in (0..clients).zip(&counters) {
        let (security, client_id) = match &keys {
            None => (Security::Udp, format!("coapbench-{index}")),
            Some(keys) => {
                let (identity, key) = keys
                    .get(index as usize)
                    .cloned()
                    .context("fewer keys than clients")?;
                (
                    Security::Psk {
                        identity: identity.clone(),
                        key,
                        connection_id: cli.connection_id,
                    },
                    identity,
                )
            }
        };
        let spec = PublisherSpec {
            index,
            server,
            security,
            client_id,
            topic: format!("{prefix}/{index}"),
            size,
            epoch,
            handshake_timeout: Duration::from_secs(10),
        };
        tasks.push(tokio::spawn(run_publisher(
            spec,
            counters.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs_f64(cli.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let (own_cpu, broker_cpu, others_cpu) = cpu.shares(cli.broker_pid);
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => errors.push(error.to_string()),
            Err(error) => errors.push(error.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sum = |field: fn(&PublishCounters) -> &AtomicU64| -> u64 {
        counters
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .sum()
    };
    let accepted = sum(|c| &c.accepted);
    // Deliveries still on their way after the last answer.
    let grace_until = Instant::now() + Duration::from_secs(10);
    while sub_counters.unique.load(Ordering::Relaxed) < accepted && Instant::now() < grace_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_sub.send(true);
    let result = subscriber.await.context("the subscriber task")?;
    let unique = result.tracker.unique();
    let latency = LatencyFigures::from_ns(&result.latency);
    if let Some(error) = result.error {
        errors.push(format!("subscriber: {error}"));
    }
    let transport = if keys.is_some() { "dtls" } else { "udp" };
    let in_rate = round2(accepted as f64 / elapsed);
    let report = json!({
        "scenario": "coap-publish",
        "transport": transport,
        "clients": clients,
        "size": size,
        "duration_s": round2(elapsed),
        "sent": sum(|c| &c.sent),
        "accepted": accepted,
        "refused": sum(|c| &c.refused),
        "unanswered": sum(|c| &c.unanswered),
        "retransmitted": sum(|c| &c.retransmitted),
        "delivered": unique,
        "duplicated": result.tracker.duplicates(),
        "lost": accepted.saturating_sub(unique),
        "in_rate": in_rate,
        "latency_us": latency,
        "cpu_pct": own_cpu,
        "broker_cpu_pct": broker_cpu,
        "others_cpu_pct": others_cpu,
        "errors": errors.len(),
        "error_samples": errors.iter().take(5).collect::<Vec<_>>(),
    });
    eprintln!(
        "coap publish over {transport}: {in_rate} accepted/s, {unique} delivered of {accepted} accepted, broker CPU {broker_cpu:?} %"
    );
    Ok(report)
}

async fn handshake(cli: &Cli, port: u16, concurrency: u32) -> Result<serde_json::Value> {
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let Some(keys) = client_keys(cli, concurrency)? else {
        bail!("handshake needs --psk-file");
    };
    let server = resolve(&cli.host, port)?;
    let counters = Arc::new(HandshakeCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Made before the clock starts: a configuration costs the crypto provider's self-tests.
    let configs = keys
        .iter()
        .map(|(identity, key)| psk_client_config(identity.as_bytes(), key, cli.connection_id))
        .collect::<Result<Vec<_>, _>>()?;
    let cpu = CpuMark::now(cli.broker_pid);
    let started = Instant::now();
    let tasks: Vec<_> = configs
        .into_iter()
        .enumerate()
        .map(|(index, config)| {
            tokio::spawn(run_handshakes(
                index,
                server,
                config,
                Duration::from_secs(5),
                counters.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(cli.duration)).await;
    // Counted at the end of the window: handshakes finishing afterwards are not.
    let done = counters.completed.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (own_cpu, broker_cpu, others_cpu) = cpu.shares(cli.broker_pid);
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let failed = counters.failed.load(Ordering::Relaxed);
    let handshake_rate = round2(done as f64 / elapsed);
    let report = json!({
        "scenario": "dtls-handshake",
        "concurrency": concurrency,
        "duration_s": round2(elapsed),
        "completed": done,
        "failed": failed,
        "error_samples": counters.failures.lock().map(|f| f.clone()).unwrap_or_default(),
        "handshake_rate": handshake_rate,
        "cpu_pct": own_cpu,
        "broker_cpu_pct": broker_cpu,
        "others_cpu_pct": others_cpu,
    });
    eprintln!(
        "DTLS handshakes: {handshake_rate} /s completed, {failed} failed, broker CPU {broker_cpu:?} %, ours {own_cpu:?} %"
    );
    Ok(report)
}
