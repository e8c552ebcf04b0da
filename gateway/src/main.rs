//! The gateway binary: command line, configuration, wiring and graceful shutdown.

mod check;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::{Launch, Reload, StartError, WatchedCertificate};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use gateway::logging::{init_logging, LevelChange, LogLevel};
use gateway::reload::ReloadOutcome;
use gateway_config::Config;
use mqtt_core::auth::AuthFiles;
use mqtt_core::broker::Broker;
use tokio::sync::watch;

// jemalloc rather than the system's allocator: a connection is a dozen small long-lived
// blocks, which jemalloc packs in size classes without per-block headers (some 80 B less
// per idle connection), and the message path's short-lived blocks cost it less (8 % more
// QoS 1 throughput between pairs, measured on one core).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Multi-protocol IoT gateway: an MQTT broker with protocol adapters"
)]
struct Cli {
    /// TOML configuration file, applied over the embedded defaults.
    #[arg(long, short, global = true, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format; overrides `log.format`.
    #[arg(long, value_parser = ["human", "json"])]
    log_format: Option<String>,
    /// Start with an empty store when the one in `storage.data_dir` cannot be read: the
    /// unreadable file is renamed aside (`store.redb.unreadable-<unix time>`), not deleted.
    #[arg(long)]
    reset_unreadable_store: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Add or update a user in a password file (Mosquitto-compatible format).
    Passwd {
        file: PathBuf,
        username: String,
        /// The password; read from standard input when absent.
        #[arg(long)]
        password: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the embedded default configuration.
    PrintDefault,
    /// Print the configuration in effect: the embedded defaults, FILE (else the one of
    /// --config or GATEWAY_CONFIG) and the GATEWAY_* environment, secrets masked.
    Print { file: Option<PathBuf> },
    /// Check a configuration file (with the environment applied) and every file it names:
    /// report its errors, or else what it leaves open (warnings, which do not fail the
    /// check).
    Check { file: PathBuf },
}

/// The name the admin API's listener (`dashboard.listeners.http`) goes by in the log line
/// saying where it is bound, after the pattern of the adapters' `tcp:default`.
const ADMIN_LISTENER: &str = "dashboard:http";

/// How an adapter starts its listeners from the configuration.
type Start = fn(&Config, &mut Launch) -> Result<(), StartError>;

/// Every adapter, each starting its own listeners (none when it is disabled).
const ADAPTERS: [(&str, Start); 5] = [
    ("MQTT", adapter_mqtt::start),
    ("MQTT-SN", adapter_mqtt_sn::start),
    ("CoAP", adapter_coap::start),
    ("LwM2M", adapter_lwm2m::start),
    ("STOMP", adapter_stomp::start),
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config {
            action: ConfigAction::PrintDefault,
        }) => {
            print!("{}", gateway_config::DEFAULT_TOML);
            Ok(())
        }
        Some(Command::Config {
            action: ConfigAction::Print { file },
        }) => {
            let file = file.or(cli.config);
            let config = Config::load(file.as_deref()).context("loading the configuration")?;
            let layers = match &file {
                Some(file) => format!("the embedded defaults <- {} <- ", file.display()),
                None => "the embedded defaults <- ".to_owned(),
            };
            println!(
                "# The configuration in effect: {layers}GATEWAY_* environment variables.\n\
                 # Secrets are shown as \"{}\".\n",
                gateway_config::MASKED
            );
            print!("{}", config.to_masked_toml()?);
            Ok(())
        }
        Some(Command::Config {
            action: ConfigAction::Check { file },
        }) => {
            let config = Config::load(Some(&file))
                .with_context(|| format!("{} is not a valid configuration", file.display()))?;
            let unusable = check::unusable_files(&config);
            for problem in &unusable {
                eprintln!("error: {}", check::one_line(problem));
            }
            if !unusable.is_empty() {
                bail!(
                    "{} names files the gateway cannot start with ({})",
                    file.display(),
                    unusable.len()
                );
            }
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}: ok", file.display());
            Ok(())
        }
        Some(Command::Passwd {
            file,
            username,
            password,
        }) => {
            let password = match password {
                Some(password) => password,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if password.is_empty() {
                bail!("the password must not be empty");
            }
            mqtt_core::auth::add_user(&file, &username, &password)
                .with_context(|| format!("updating {}", file.display()))?;
            Ok(())
        }
        None => {
            let config =
                Config::load(cli.config.as_deref()).context("loading the configuration")?;
            let log = init_logging(&config, cli.log_format.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let running = Running {
                config_file: cli.config,
                log,
            };
            runtime.block_on(run(config, running, cli.reset_unreadable_store))
        }
    }
}

/// The store `storage` asks for; `None` for memory. An unreadable store stops start-up,
/// naming the file, unless `reset_unreadable` moves it aside.
fn open_store(
    storage: &gateway_config::StorageConfig,
    reset_unreadable: bool,
) -> Result<Option<gateway_storage::DiskStore>> {
    use gateway_config::{FsyncPolicy, StorageBackend};
    use gateway_storage::{DiskOptions, DiskStore, Fsync};
    use mqtt_core::storage::StoreError;

    if storage.backend == StorageBackend::Memory {
        return Ok(None);
    }
    let options = DiskOptions {
        path: storage.data_dir.join("store.redb"),
        fsync: match storage.fsync {
            FsyncPolicy::Always => Fsync::Always,
            FsyncPolicy::Batch => Fsync::Batch,
            FsyncPolicy::Never => Fsync::Never,
        },
        commit_window: storage.commit_window.get(),
        never_sync_interval: storage.never_sync_interval.get(),
        max_size: storage.max_size,
    };
    match DiskStore::open(options.clone()) {
        Ok(store) => Ok(Some(store)),
        Err(StoreError::Unreadable { path, reason }) if reset_unreadable => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            let aside = PathBuf::from(format!("{path}.unreadable-{stamp}"));
            std::fs::rename(&path, &aside)
                .with_context(|| format!("moving the unreadable store {path} aside"))?;
            tracing::warn!(%path, aside = %aside.display(), %reason, "unreadable store moved aside; starting empty");
            Ok(Some(DiskStore::open(options)?))
        }
        Err(StoreError::Unreadable { path, reason }) => bail!(
            "the store {path} cannot be read ({reason}); start with --reset-unreadable-store \
             to move it aside and start empty"
        ),
        Err(error) => Err(error.into()),
    }
}

/// What SIGHUP reads the configuration from again, and what it changes.
struct Running {
    config_file: Option<PathBuf>,
    log: LogLevel,
}

async fn run(config: Config, running: Running, reset_unreadable_store: bool) -> Result<()> {
    let auth_files = Arc::new(check::load_auth(&config.auth)?);
    let now = Instant::now();
    let broker = Broker::new(
        config.mqtt.clone(),
        &config.retainer,
        auth_files.auth(),
        now,
    )
    .with_wall_clock(std::time::SystemTime::now())
    .with_flapping_detect(&config.flapping_detect)
    .with_banned_limit(config.banned.max_entries as usize)
    .with_presence(&config.node.name, config.sys.sys_event_messages);
    let broker = match open_store(&config.storage, reset_unreadable_store)? {
        Some(store) => {
            let path = store.path().display().to_string();
            let broker = broker.with_store(Arc::new(store), std::time::SystemTime::now());
            let recovered = broker
                .recover(now)
                .with_context(|| format!("restoring from the store {path}"))?;
            tracing::info!(
                store = %path,
                retained = recovered.retained,
                sessions = recovered.sessions,
                messages = recovered.messages,
                awaiting_release = recovered.awaiting_release,
                "state restored from the store"
            );
            broker
        }
        None => broker,
    };
    let broker = Arc::new(broker);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut launch = Launch::new(broker.clone(), shutdown_rx.clone());
    for (adapter, start) in ADAPTERS {
        start(&config, &mut launch).with_context(|| format!("starting the {adapter} adapter"))?;
    }
    let (reloader, reload_requests) = gateway::reload::channel();
    let downlinks = gateway::admin::Downlinks::from_launch(&mut launch);
    let admin = gateway::admin::start(
        &config,
        broker.clone(),
        launch.started_listeners(),
        reloader,
        downlinks,
        shutdown_rx.clone(),
    )
    .context("starting the admin API")?;
    let (mut tasks, certificates) = launch.finish();
    let mut watched = certificates;
    watched.extend(AuthFile::watched(&auth_files));
    if let Some(path) = config.banned.bootstrap_file.as_deref() {
        let banned = gateway::admin::banned_file::BannedFile::load(path, broker.clone())
            .context("banned.bootstrap_file")?;
        watched.push(WatchedCertificate {
            key: "banned.bootstrap_file".to_owned(),
            source: Arc::new(banned),
        });
    }
    tasks.spawn(reload_files(
        watched,
        running,
        config.clone(),
        reload_requests,
        shutdown_rx.clone(),
    ));
    if let Some((bound, serve)) = admin {
        tracing::info!(listener = ADMIN_LISTENER, %bound, "admin API started");
        tasks.spawn(serve);
    }

    tasks.spawn(housekeeping(
        broker.clone(),
        config.sys.enable.then(|| config.sys.interval.get()),
        shutdown_rx.clone(),
    ));

    // Every adapter has bound its listeners by now: start() binds before it spawns.
    gateway::systemd::notify_ready();

    wait_for_signal().await;
    gateway::systemd::notify_stopping();
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections still open after 10 s; exiting anyway");
    }
    Ok(())
}

/// How often the files reloaded on change are checked.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// One file of `[auth]`, read again as certificates are.
struct AuthFile {
    files: Arc<AuthFiles>,
    acl: bool,
}

impl AuthFile {
    /// The files of `[auth]` that are configured, each under its key.
    fn watched(files: &Arc<AuthFiles>) -> Vec<WatchedCertificate> {
        let mut watched = Vec::new();
        for (key, acl, configured) in [
            ("auth.password_file", false, files.password_file().is_some()),
            ("auth.acl_file", true, files.acl_file().is_some()),
        ] {
            if configured {
                watched.push(WatchedCertificate {
                    key: key.to_owned(),
                    source: Arc::new(AuthFile {
                        files: files.clone(),
                        acl,
                    }),
                });
            }
        }
        watched
    }
}

impl Reload for AuthFile {
    fn reload(&self) -> Result<(), String> {
        let reloaded = if self.acl {
            self.files.reload_acl_file()
        } else {
            self.files.reload_password_file()
        };
        reloaded.map(drop).map_err(|error| error.to_string())
    }
    fn watched_files(&self) -> Vec<PathBuf> {
        let path = if self.acl {
            self.files.acl_file()
        } else {
            self.files.password_file()
        };
        path.map(Path::to_path_buf).into_iter().collect()
    }
    fn what(&self) -> &'static str {
        if self.acl {
            "ACL file"
        } else {
            "password file"
        }
    }
}

/// What tells a file changed: its modification time, its length and, on Unix, its inode
/// (a file replaced by a rename within the clock's granularity still shows); `None` for a
/// file that cannot be read, so its disappearance counts as a change.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(file: &Path) -> Stamp {
    let metadata = std::fs::metadata(file).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some((metadata.modified().ok()?, metadata.len(), inode))
}

/// Reads again, on SIGHUP, on an operator's request through the admin API and when one of
/// its files changes, each source in `watched`: TLS and QUIC certificates, DTLS keys and
/// certificates (connections accepted afterwards get the new ones), the password file and
/// the ACL file (the next check uses them). A reload that fails keeps what is in force and
/// says why once. SIGHUP and a request also read the configuration again for `log.level`;
/// a request is answered with what was reloaded and what was not.
async fn reload_files(
    watched: Vec<WatchedCertificate>,
    running: Running,
    config: Config,
    mut requests: gateway::reload::ReloadRequests,
    mut shutdown: watch::Receiver<bool>,
) {
    let stamps = |source: &dyn Reload| -> Vec<Stamp> {
        source
            .watched_files()
            .iter()
            .map(|file| stamp(file))
            .collect()
    };
    let all_stamps = || -> Vec<_> { watched.iter().map(|one| stamps(&*one.source)).collect() };
    let mut seen = all_stamps();
    let reload = |key: &str, source: &dyn Reload, why: &str| -> ReloadOutcome {
        let result = source.reload();
        match &result {
            Ok(()) => tracing::info!(key, why, "{} reloaded", source.what()),
            Err(error) => {
                tracing::warn!(key, why, %error, "{} reload failed; the one in force stays", source.what())
            }
        }
        ReloadOutcome {
            key: key.to_owned(),
            what: source.what().to_owned(),
            error: result.err(),
        }
    };
    let reload_all = |why: &str| -> Vec<ReloadOutcome> {
        let mut outcomes = vec![reread_log_level(&running, &config)];
        outcomes.extend(
            watched
                .iter()
                .map(|one| reload(&one.key, &*one.source, why)),
        );
        outcomes
    };
    let mut serving_requests = true;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(FILE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup_received = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup_received = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = hangup_received => {
                reload_all("SIGHUP");
                seen = all_stamps();
            }
            request = requests.next(), if serving_requests => match request {
                Some(reply) => {
                    reply.send(reload_all("admin API"));
                    seen = all_stamps();
                }
                // The admin API is off: nobody will ask.
                None => serving_requests = false,
            },
            _ = tick.tick() => {
                for (one, seen) in watched.iter().zip(seen.iter_mut()) {
                    let now = stamps(&*one.source);
                    if now != *seen {
                        *seen = now;
                        reload(&one.key, &*one.source, "file changed");
                    }
                }
            }
        }
    }
}

/// Reads the configuration again and puts its `log.level` in force. Nothing else of it
/// changes before a restart, which the log says when something else changed.
fn reread_log_level(running: &Running, started_with: &Config) -> ReloadOutcome {
    let outcome = |error: Option<String>| ReloadOutcome {
        key: "log.level".to_owned(),
        what: "log level".to_owned(),
        error,
    };
    let config = match Config::load(running.config_file.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(%error, "the configuration was not read again; the log level stays");
            return outcome(Some(format!("{error:#}")));
        }
    };
    let applied = match running.log.apply(&config.log.level) {
        Ok(LevelChange::Same) => None,
        Ok(LevelChange::PinnedByEnv) => {
            tracing::info!(
                level = %config.log.level,
                "log.level not applied: RUST_LOG is set and stays in force"
            );
            None
        }
        Ok(LevelChange::Changed { from }) => {
            tracing::info!(%from, to = %config.log.level, "log level changed");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "log.level not applied; the log level stays");
            Some(error.to_string())
        }
    };
    let mut rest = config;
    rest.log = started_with.log.clone();
    if rest != *started_with {
        tracing::info!(
            "the configuration changed beyond log.level; those changes take effect at the next start"
        );
    }
    outcome(applied)
}

/// Session expiry, delayed wills, retained-message expiry and `$SYS`.
async fn housekeeping(
    broker: Arc<Broker>,
    sys_interval: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sys = Instant::now();
    let mut next_purge = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        broker.handle_timeouts(now);
        if let Some(interval) = sys_interval {
            if now >= next_sys {
                mqtt_core::sys::publish_sys(&broker, now);
                next_sys = now + interval;
            }
        }
        if now >= next_purge {
            broker.purge_expired_retained(now);
            next_purge = now + Duration::from_secs(60);
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
