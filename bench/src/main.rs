//! `gateway-bench`: the command line. Scenario names follow the Open MQTT Benchmark Suite.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gateway_bench::conn::{run_conn, ConnPlan};
use gateway_bench::payload::HEADER_LEN;
use gateway_bench::report::Report;
use gateway_bench::scenario::{run_traffic, Coverage, Group, RunConfig, TrafficPlan};
use gateway_bench::sys;
use mqtt_core::codec::{ProtocolVersion, QoS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N connections at R per second, held open: connect latency, rate and broker RSS.
    Conn,
    /// Publishers only, to `--topic` (`%i` = publisher index).
    Pub,
    /// Subscribers only, on `--topic`; loss is judged from sequence gaps.
    Sub,
    /// N pairs: each publisher to its own topic, one subscriber on each topic.
    P2p,
    /// P publishers to one topic, S subscribers on it.
    Fanout,
    /// N publishers on their own topics, S subscribers (default 1) on a wildcard.
    Fanin,
    /// N publishers, one `$share/` group of S subscribers.
    Sharedsub,
    /// A fixed total rate over N pairs: publish-to-delivery latency.
    Latency,
}

#[derive(Debug, Parser)]
#[command(
    name = "gateway-bench",
    disable_version_flag = true,
    about = "MQTT load generator: throughput, fairness, latency, loss and connection cost",
    after_help = "Prints a progress line per second on stderr, a table and then one JSON line \
                  (starting with {\"scenario\":) on stdout."
)]
struct Cli {
    #[arg(value_enum)]
    scenario: Scenario,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload bytes (at least 16: publisher id, sequence number, send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// MQTT protocol version.
    #[arg(long, default_value = "3.1.1", value_parser = ["3.1", "3.1.1", "5"])]
    version: String,
    /// Messages per second per publisher; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// `latency`: messages per second over all publishers.
    #[arg(long, default_value_t = 5000.0)]
    total_rate: f64,
    /// Seconds of publishing (`sub`: of receiving).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Messages per publisher; 0 = until --duration ends. Publishing stops at whichever
    /// comes first.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Most unacknowledged QoS 1/2 messages per publisher (lowered to the broker's
    /// Receive Maximum under MQTT 5).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,
    #[arg(long)]
    publishers: Option<usize>,
    #[arg(long)]
    subscribers: Option<usize>,
    /// `p2p`, `latency`: publisher/subscriber pairs.
    #[arg(long)]
    pairs: Option<usize>,
    /// `conn`: connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// `conn`: new connections per second; 0 = as fast as --conn-concurrency allows.
    #[arg(long, default_value_t = 0.0)]
    conn_rate: f64,
    /// `conn`: most handshakes in progress at once.
    #[arg(long, default_value_t = 100)]
    conn_concurrency: usize,
    /// `conn`: seconds to keep the connections open once all are up.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
    /// Topic prefix; unique per run by default, so runs never see each other's messages.
    #[arg(long)]
    topic_prefix: Option<String>,
    /// `pub`: topic, `%i` replaced by the publisher index (default PREFIX/%i).
    /// `sub`: filter (default PREFIX/#).
    #[arg(long)]
    topic: Option<String>,
    /// `sharedsub`: share name.
    #[arg(long, default_value = "g")]
    group: String,
    /// Broker process id: its CPU and memory are reported beside ours.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Seconds without any delivery, after publishing stopped, that end the run.
    #[arg(long, default_value_t = 2.0)]
    grace: f64,
    /// Longest wait for deliveries and acknowledgements after publishing stopped, seconds.
    #[arg(long, default_value_t = 30.0)]
    grace_max: f64,
    /// Subscribers read nothing for this many seconds after publishing starts (a stalled
    /// consumer: shows the broker's queue limits).
    #[arg(long, default_value_t = 0.0)]
    sub_stall: f64,
    /// Subscribers keep their sessions (clean session 0 / clean start 0 with a Session
    /// Expiry Interval): what a broker with durable storage writes to disk.
    #[arg(long)]
    persistent_subscribers: bool,
    /// MQTT keep-alive, seconds; 0 = off. Clients send PINGREQ every half of it.
    #[arg(long, default_value_t = 0)]
    keep_alive: u16,
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// Seconds allowed for TCP connect + CONNACK (and SUBACK).
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Loopback source addresses to spread the clients over (127.0.0.1, 127.0.0.2, …), so
    /// tens of thousands of connections do not exhaust one address's ephemeral ports.
    /// 0 = one per 5,000 clients when the broker is on 127.0.0.0/8, else none.
    #[arg(long, default_value_t = 0)]
    source_addrs: u8,
    /// Runtime worker threads; default: available cores.
    #[arg(long)]
    threads: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN} bytes (id, sequence and timestamp)");
    }
    for (name, value) in [
        ("--rate", cli.rate),
        ("--total-rate", cli.total_rate),
        ("--duration", cli.duration),
        ("--conn-rate", cli.conn_rate),
        ("--hold", cli.hold),
        ("--grace", cli.grace),
        ("--grace-max", cli.grace_max),
        ("--sub-stall", cli.sub_stall),
        ("--connect-timeout", cli.connect_timeout),
    ] {
        if !value.is_finite() || value < 0.0 {
            bail!("{name} must be a number >= 0, not {value}");
        }
    }
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .max(1);
    let _ = sys::raise_nofile_limit();
    let addr = resolve(&cli.host, cli.port)?;
    let run_id = run_id();
    let prefix = cli
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("gwbench/{run_id}"));
    let plan = match cli.scenario {
        Scenario::Conn => None,
        _ => Some(traffic_plan(&cli, &prefix)?),
    };
    let clients = plan.as_ref().map_or(cli.connections, |plan| {
        plan.publishers.len() + plan.groups.iter().map(|g| g.members).sum::<usize>()
    });
    let sources = source_addresses(addr, cli.source_addrs, clients);
    let cfg = RunConfig {
        addr,
        version: match cli.version.as_str() {
            "3.1" => ProtocolVersion::V3_1,
            "5" => ProtocolVersion::V5,
            _ => ProtocolVersion::V3_1_1,
        },
        qos: QoS::from_u8(cli.qos).unwrap_or_default(),
        size: cli.size,
        count: cli.count,
        duration: Duration::from_secs_f64(cli.duration),
        inflight: cli.inflight,
        grace: Duration::from_secs_f64(cli.grace),
        grace_max: Duration::from_secs_f64(cli.grace_max),
        keep_alive: cli.keep_alive,
        sub_stall: Duration::from_secs_f64(cli.sub_stall),
        persistent_subscribers: cli.persistent_subscribers,
        client_prefix: format!("gwb{run_id}"),
        sources,
        username: cli.username.clone(),
        password: cli.password.clone(),
        broker_pid: cli.broker_pid,
        connect_timeout: Duration::from_secs_f64(cli.connect_timeout),
        progress: !cli.quiet,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;

    let mut report = Report {
        scenario: format!("{:?}", cli.scenario).to_lowercase(),
        host: cli.host.clone(),
        port: cli.port,
        version: cli.version.clone(),
        qos: cli.qos,
        size: cli.size,
        publishers: 0,
        subscribers: 0,
        rate: 0.0,
        duration_s: cli.duration,
        inflight: cli.inflight,
        threads,
        topic_prefix: prefix.clone(),
        traffic: None,
        conn: None,
        cpu_pct: None,
        broker_cpu_pct: None,
        others_cpu_pct: None,
        broker_rss_kib: None,
        errors: 0,
        error_samples: Vec::new(),
    };

    let errors = if let Some(plan) = plan {
        report.publishers = plan.publishers.len();
        report.subscribers = plan.groups.iter().map(|g| g.members).sum();
        report.rate = plan.rate;
        let run = runtime
            .block_on(run_traffic(&cfg, &plan))
            .with_context(|| format!("{} scenario against {addr}", report.scenario))?;
        report.cpu_pct = run.cpu_pct;
        report.broker_cpu_pct = run.broker_cpu_pct;
        report.others_cpu_pct = run.others_cpu_pct;
        report.broker_rss_kib = run.broker_rss_kib;
        report.errors = run.errors.len();
        report.traffic = Some(run.figures);
        run.errors
    } else {
        let plan = ConnPlan {
            connections: cli.connections,
            rate: cli.conn_rate,
            concurrency: cli.conn_concurrency.max(1),
            hold: Duration::from_secs_f64(cli.hold),
        };
        let run = runtime
            .block_on(run_conn(&cfg, &plan))
            .context("conn scenario")?;
        report.duration_s = 0.0;
        report.cpu_pct = run.cpu_pct;
        report.broker_cpu_pct = run.broker_cpu_pct;
        report.others_cpu_pct = run.others_cpu_pct;
        report.broker_rss_kib = run.figures.broker_rss_kib_after;
        report.errors = (run.figures.failed + run.figures.closed_during_hold) as usize;
        report.conn = Some(run.figures);
        run.errors
    };
    report.error_samples = errors.into_iter().take(5).collect();
    // Client tasks still closing their sockets must not hold the process open.
    runtime.shutdown_timeout(Duration::from_secs(5));

    print!("{}", report.table());
    println!("{}", report.json_line().context("encoding the report")?);
    Ok(())
}

fn traffic_plan(cli: &Cli, prefix: &str) -> Result<TrafficPlan> {
    let all = |n: usize| Coverage::Publishers((0..n as u32).collect());
    let plan = match cli.scenario {
        Scenario::P2p | Scenario::Latency => {
            let pairs = cli.pairs.or(cli.publishers).unwrap_or(10);
            if pairs == 0 {
                bail!("--pairs must be at least 1");
            }
            let rate = if cli.scenario == Scenario::Latency {
                cli.total_rate / pairs as f64
            } else {
                cli.rate
            };
            if rate <= 0.0 && cli.scenario == Scenario::Latency {
                bail!("latency needs --total-rate > 0");
            }
            let kind = format!("{:?}", cli.scenario).to_lowercase();
            let topics: Vec<String> = (0..pairs).map(|i| format!("{prefix}/{kind}/{i}")).collect();
            let groups = topics
                .iter()
                .enumerate()
                .map(|(i, topic)| Group {
                    filter: topic.clone(),
                    members: 1,
                    shared: false,
                    covers: Coverage::Publishers(vec![i as u32]),
                })
                .collect();
            TrafficPlan {
                publishers: topics,
                rate,
                groups,
            }
        }
        Scenario::Fanout => {
            let publishers = cli.publishers.unwrap_or(1);
            let topic = format!("{prefix}/fanout");
            TrafficPlan {
                publishers: vec![topic.clone(); publishers],
                rate: cli.rate,
                groups: vec![Group {
                    filter: topic,
                    members: cli.subscribers.unwrap_or(10),
                    shared: false,
                    covers: all(publishers),
                }],
            }
        }
        Scenario::Fanin | Scenario::Sharedsub => {
            let shared = cli.scenario == Scenario::Sharedsub;
            let publishers = cli.publishers.unwrap_or(10);
            let base = if shared { "sharedsub" } else { "fanin" };
            let filter = if shared {
                format!("$share/{}/{prefix}/{base}/+", cli.group)
            } else {
                format!("{prefix}/{base}/+")
            };
            TrafficPlan {
                publishers: (0..publishers)
                    .map(|i| format!("{prefix}/{base}/{i}"))
                    .collect(),
                rate: cli.rate,
                groups: vec![Group {
                    filter,
                    members: cli.subscribers.unwrap_or(if shared { 4 } else { 1 }),
                    shared,
                    covers: all(publishers),
                }],
            }
        }
        Scenario::Pub => {
            let pattern = cli.topic.clone().unwrap_or_else(|| format!("{prefix}/%i"));
            TrafficPlan {
                publishers: (0..cli.publishers.unwrap_or(1))
                    .map(|i| pattern.replace("%i", &i.to_string()))
                    .collect(),
                rate: cli.rate,
                groups: Vec::new(),
            }
        }
        Scenario::Sub => TrafficPlan {
            publishers: Vec::new(),
            rate: 0.0,
            groups: vec![Group {
                filter: cli.topic.clone().unwrap_or_else(|| format!("{prefix}/#")),
                members: cli.subscribers.unwrap_or(1),
                shared: false,
                covers: Coverage::External,
            }],
        },
        Scenario::Conn => bail!("conn is not a traffic scenario"),
    };
    if cli.duration <= 0.0 && cli.count == 0 && !plan.publishers.is_empty() {
        bail!("give --duration or --count, or publishing never ends");
    }
    Ok(plan)
}

/// 127.0.0.1..=127.0.0.N for a broker on 127.0.0.0/8; nothing (the kernel's choice)
/// otherwise or when one address is enough.
fn source_addresses(broker: SocketAddr, requested: u8, clients: usize) -> Vec<IpAddr> {
    let IpAddr::V4(ip) = broker.ip() else {
        return Vec::new();
    };
    if !ip.is_loopback() {
        return Vec::new();
    }
    let count = match requested {
        0 => clients.div_ceil(5_000).clamp(1, 254) as u8,
        n => n,
    };
    if count <= 1 {
        return Vec::new();
    }
    (1..=count)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect()
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

/// Distinguishes this run's topics and client ids from any other's on the same broker.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:08x}",
        (nanos ^ (u64::from(std::process::id()) << 32)) as u32
    )
}
