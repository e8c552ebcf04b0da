//! The gateway binary: command line, configuration, wiring and graceful shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::quic::{QuicListener, QuicReloader, QuicSettings};
use adapter_kit::tls::TlsAcceptor;
use adapter_mqtt::{Layers, ListenerSettings, QuicListenerSettings};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use gateway_config::{Config, ListenerKind, LogFormat, TlsConfig};
use mqtt_core::auth::Auth;
use mqtt_core::broker::Broker;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Multi-protocol IoT gateway: an MQTT broker with protocol adapters"
)]
struct Cli {
    /// TOML configuration file, applied over the embedded defaults.
    #[arg(long, short, global = true)]
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
    /// Check a configuration file (with the environment applied): report its errors, or
    /// else what it leaves open (warnings, which do not fail the check).
    Check { file: PathBuf },
}

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
            action: ConfigAction::Check { file },
        }) => {
            let config = Config::load(Some(&file))
                .with_context(|| format!("{} is not a valid configuration", file.display()))?;
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
            init_logging(&config, cli.log_format.as_deref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(run(config, cli.reset_unreadable_store))
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

fn init_logging(config: &Config, format_flag: Option<&str>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("log.level: invalid filter {:?}", config.log.level))?;
    let json = match format_flag {
        Some(flag) => flag == "json",
        None => config.log.format == LogFormat::Json,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    Ok(())
}

async fn run(config: Config, reset_unreadable_store: bool) -> Result<()> {
    let auth = Auth::from_config(&config.auth).context("loading authentication and ACL files")?;
    let now = Instant::now();
    let broker = Broker::new(config.mqtt.clone(), &config.retainer, auth, now);
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
    let mut tasks = JoinSet::new();

    let (listeners, mut tls_acceptors) = listener_settings(&config)?;
    for settings in listeners {
        let bind = settings.bind;
        let socket = adapter_mqtt::bind(&settings).await.with_context(|| {
            format!(
                "listeners.{}: cannot listen on {bind}",
                settings.name.replace(':', ".")
            )
        })?;
        tracing::info!(listener = %settings.name, %bind, "MQTT listener started");
        tasks.spawn(adapter_mqtt::serve(
            socket,
            settings,
            broker.clone(),
            shutdown_rx.clone(),
        ));
    }
    for (listener, settings) in quic_listeners(&config, &mut tls_acceptors)? {
        let bind = listener.endpoint().local_addr().ok();
        tracing::info!(listener = %settings.name, ?bind, "MQTT over QUIC listener started (UDP)");
        tasks.spawn(adapter_mqtt::serve_quic(
            listener,
            settings,
            broker.clone(),
            shutdown_rx.clone(),
        ));
    }
    tasks.spawn(reload_certificates(tls_acceptors, shutdown_rx.clone()));

    let sn = &config.gateway.mqttsn;
    if sn.enable {
        let advertise = if sn.broadcast {
            let target = sn
                .broadcast_addr()
                .context("gateway.mqttsn.broadcast_address")?;
            Some((target, sn.advertise_interval.get()))
        } else {
            None
        };
        for (name, listener) in &sn.listeners.udp {
            if !listener.enable {
                continue;
            }
            let (socket, listener_name, bind) =
                bind_gateway_udp(ListenerKind::MqttSnUdp, name, listener, advertise.is_some())
                    .await?;
            let settings = Arc::new(adapter_mqtt_sn::Settings::from_config(
                listener_name.clone(),
                sn,
                listener,
            ));
            tracing::info!(listener = %listener_name, %bind, "MQTT-SN listener started");
            tasks.spawn(adapter_mqtt_sn::serve_udp(
                socket,
                adapter_kit::UdpListenerSettings::from_config(listener_name, listener),
                advertise,
                settings,
                broker.clone(),
                Arc::new(adapter_kit::DatagramMetrics::default()),
                shutdown_rx.clone(),
            ));
        }
    }

    let coap = &config.gateway.coap;
    if coap.enable {
        for (name, listener) in &coap.listeners.udp {
            if !listener.enable {
                continue;
            }
            let (socket, listener_name, bind) =
                bind_gateway_udp(ListenerKind::CoapUdp, name, listener, false).await?;
            let settings = Arc::new(adapter_coap::Settings::from_config(
                listener_name.clone(),
                coap,
                listener,
            ));
            tracing::info!(listener = %listener_name, %bind, "CoAP listener started");
            tasks.spawn(adapter_coap::serve_udp(
                socket,
                adapter_kit::UdpListenerSettings::from_config(listener_name, listener),
                settings,
                broker.clone(),
                Arc::new(adapter_kit::DatagramMetrics::default()),
                shutdown_rx.clone(),
            ));
        }
        spawn_coap_stream_listeners(coap, &broker, &shutdown_rx, &mut tasks).await?;
    }

    let lwm2m = &config.gateway.lwm2m;
    if lwm2m.enable {
        let objects = Arc::new(
            adapter_lwm2m::ObjectRegistry::load(&lwm2m.xml_dir)
                .context("gateway.lwm2m.xml_dir: object definitions")?,
        );
        for (name, listener) in &lwm2m.listeners.udp {
            if !listener.enable {
                continue;
            }
            let (socket, listener_name, bind) =
                bind_gateway_udp(ListenerKind::Lwm2mUdp, name, listener, false).await?;
            let settings = Arc::new(adapter_lwm2m::Settings::from_config(
                listener_name.clone(),
                lwm2m,
                listener,
                objects.clone(),
            ));
            tracing::info!(listener = %listener_name, %bind, objects = objects.len(), "LwM2M listener started");
            tasks.spawn(adapter_lwm2m::serve_udp(
                socket,
                adapter_kit::UdpListenerSettings::from_config(listener_name, listener),
                settings,
                broker.clone(),
                Arc::new(adapter_kit::DatagramMetrics::default()),
                shutdown_rx.clone(),
            ));
        }
    }

    let stomp = &config.gateway.stomp;
    if stomp.enable {
        let tcp = stomp
            .listeners
            .tcp
            .iter()
            .filter(|(_, l)| l.enable)
            .map(|(name, l)| {
                (
                    ListenerKind::StompTcp,
                    name,
                    l.bind_addr(),
                    l.max_connections,
                    l.max_conn_rate,
                    &l.mountpoint,
                    adapter_stomp::Layers::Tcp,
                )
            });
        let ws = stomp
            .listeners
            .ws
            .iter()
            .filter(|(_, l)| l.enable)
            .map(|(name, l)| {
                (
                    ListenerKind::StompWs,
                    name,
                    l.bind_addr(),
                    l.max_connections,
                    l.max_conn_rate,
                    &l.mountpoint,
                    adapter_stomp::Layers::Ws(Arc::new(l.websocket())),
                )
            });
        for (kind, name, bind, max_connections, max_conn_rate, mountpoint, layers) in tcp.chain(ws)
        {
            let key = format!("{}.{name}", kind.table());
            let bind = bind.with_context(|| format!("{key}.bind"))?;
            let listener_name: Arc<str> = Arc::from(kind.listener_name(name));
            let settings = adapter_stomp::ListenerSettings {
                name: listener_name.clone(),
                bind,
                max_connections: max_connections as usize,
                max_conn_rate,
                layers,
            };
            let channel_settings = Arc::new(adapter_stomp::Settings::from_config(
                listener_name.clone(),
                stomp,
                mountpoint,
            ));
            let socket = adapter_stomp::bind(&settings)
                .await
                .with_context(|| format!("{key}: cannot listen on {bind}"))?;
            tracing::info!(listener = %listener_name, %bind, "STOMP listener started");
            tasks.spawn(adapter_stomp::serve(
                socket,
                settings,
                channel_settings,
                broker.clone(),
                shutdown_rx.clone(),
            ));
        }
    }

    tasks.spawn(housekeeping(
        broker.clone(),
        config.sys.enable.then(|| config.sys.interval.get()),
        shutdown_rx.clone(),
    ));

    wait_for_signal().await;
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

/// The listeners that start, by kind then name, and the TLS configurations among them.
/// CoAP over TCP and WebSocket (RFC 8323): `gateway.coap.listeners.{tcp,ws}.*`.
async fn spawn_coap_stream_listeners(
    coap: &gateway_config::CoapConfig,
    broker: &Arc<Broker>,
    shutdown_rx: &tokio::sync::watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    let tcp = coap
        .listeners
        .tcp
        .iter()
        .filter(|(_, l)| l.enable)
        .map(|(name, l)| {
            let common = (l.bind_addr(), l.max_connections, l.max_conn_rate);
            let size = l.max_message_size as usize;
            (
                ListenerKind::CoapTcp,
                name,
                common,
                size,
                &l.mountpoint,
                adapter_coap::Layers::Tcp,
            )
        });
    let ws = coap
        .listeners
        .ws
        .iter()
        .filter(|(_, l)| l.enable)
        .map(|(name, l)| {
            let common = (l.bind_addr(), l.max_connections, l.max_conn_rate);
            let size = l.max_message_size as usize;
            let layers = adapter_coap::Layers::Ws(Arc::new(l.websocket()));
            (
                ListenerKind::CoapWs,
                name,
                common,
                size,
                &l.mountpoint,
                layers,
            )
        });
    for (
        kind,
        name,
        (bind, max_connections, max_conn_rate),
        max_message_size,
        mountpoint,
        layers,
    ) in tcp.chain(ws)
    {
        let key = format!("{}.{name}", kind.table());
        let bind = bind.with_context(|| format!("{key}.bind"))?;
        let listener_name: Arc<str> = Arc::from(kind.listener_name(name));
        let settings = adapter_coap::StreamListenerSettings {
            name: listener_name.clone(),
            bind,
            max_connections: max_connections as usize,
            max_conn_rate,
            layers,
        };
        let mountpoint = if mountpoint.is_empty() {
            &coap.mountpoint
        } else {
            mountpoint
        };
        let channel_settings = Arc::new(adapter_coap::Settings::for_listener(
            listener_name.clone(),
            coap,
            mountpoint,
            max_message_size,
        ));
        let socket = adapter_coap::bind_stream(&settings)
            .await
            .with_context(|| format!("{key}: cannot listen on {bind}"))?;
        tracing::info!(listener = %listener_name, %bind, "CoAP listener started");
        tasks.spawn(adapter_coap::serve_stream(
            socket,
            settings,
            channel_settings,
            broker.clone(),
            shutdown_rx.clone(),
        ));
    }
    Ok(())
}

/// The bound socket of the UDP listener `name` of `kind`, with the name logs and auth rules
/// give it (`coap:udp:{name}`) and its address.
async fn bind_gateway_udp(
    kind: ListenerKind,
    name: &str,
    listener: &gateway_config::UdpListenerConfig,
    broadcast: bool,
) -> Result<(tokio::net::UdpSocket, Arc<str>, std::net::SocketAddr)> {
    let key = format!("{}.{name}", kind.table());
    let bind = listener
        .bind_addr()
        .with_context(|| format!("{key}.bind"))?;
    let socket = adapter_kit::bind_udp(bind, broadcast)
        .await
        .with_context(|| format!("{key}: cannot listen on {bind}"))?;
    Ok((socket, Arc::from(kind.listener_name(name)), bind))
}

fn listener_settings(config: &Config) -> Result<(Vec<ListenerSettings>, Vec<NamedAcceptor>)> {
    let listeners = &config.listeners;
    let mut out = Vec::new();
    let mut acceptors = Vec::new();
    let mut tls = |key: &str, tls: &TlsConfig| -> Result<Option<Arc<TlsAcceptor>>> {
        if !starts_with_certificate(key, tls) {
            return Ok(None);
        }
        let acceptor = Arc::new(TlsAcceptor::new(tls, &[]).with_context(|| format!("{key}.tls"))?);
        acceptors.push((key.to_owned(), acceptor.clone() as Arc<dyn Reload>));
        Ok(Some(acceptor))
    };
    let proxy = |enabled: bool, timeout: gateway_config::Duration| enabled.then(|| timeout.get());
    for (name, l) in listeners.tcp.iter().filter(|(_, l)| l.enable) {
        let key = format!("listeners.tcp.{name}");
        out.push(ListenerSettings {
            name: Arc::from(ListenerKind::Tcp.listener_name(name)),
            bind: l.bind_addr().with_context(|| format!("{key}.bind"))?,
            max_connections: l.max_connections as usize,
            handshake_timeout: l.handshake_timeout.get(),
            max_conn_rate: l.max_conn_rate,
            mountpoint: Arc::from(l.mountpoint.as_str()),
            proxy_protocol: proxy(l.proxy_protocol, l.proxy_protocol_timeout),
            layers: Layers::Tcp,
        });
    }
    for (name, l) in listeners.ssl.iter().filter(|(_, l)| l.enable) {
        let key = format!("listeners.ssl.{name}");
        let Some(acceptor) = tls(&key, &l.tls)? else {
            continue;
        };
        out.push(ListenerSettings {
            name: Arc::from(ListenerKind::Ssl.listener_name(name)),
            bind: l.bind_addr().with_context(|| format!("{key}.bind"))?,
            max_connections: l.max_connections as usize,
            handshake_timeout: l.handshake_timeout.get(),
            max_conn_rate: l.max_conn_rate,
            mountpoint: Arc::from(l.mountpoint.as_str()),
            proxy_protocol: proxy(l.proxy_protocol, l.proxy_protocol_timeout),
            layers: Layers::Tls(acceptor),
        });
    }
    for (name, l) in listeners.ws.iter().filter(|(_, l)| l.enable) {
        let key = format!("listeners.ws.{name}");
        out.push(ListenerSettings {
            name: Arc::from(ListenerKind::Ws.listener_name(name)),
            bind: l.bind_addr().with_context(|| format!("{key}.bind"))?,
            max_connections: l.max_connections as usize,
            handshake_timeout: l.handshake_timeout.get(),
            max_conn_rate: l.max_conn_rate,
            mountpoint: Arc::from(l.mountpoint.as_str()),
            proxy_protocol: None,
            layers: Layers::Ws(Arc::new(l.websocket.clone())),
        });
    }
    for (name, l) in listeners.wss.iter().filter(|(_, l)| l.enable) {
        let key = format!("listeners.wss.{name}");
        let Some(acceptor) = tls(&key, &l.tls)? else {
            continue;
        };
        out.push(ListenerSettings {
            name: Arc::from(ListenerKind::Wss.listener_name(name)),
            bind: l.bind_addr().with_context(|| format!("{key}.bind"))?,
            max_connections: l.max_connections as usize,
            handshake_timeout: l.handshake_timeout.get(),
            max_conn_rate: l.max_conn_rate,
            mountpoint: Arc::from(l.mountpoint.as_str()),
            proxy_protocol: None,
            layers: Layers::Wss(acceptor, Arc::new(l.websocket.clone())),
        });
    }
    Ok((out, acceptors))
}

/// Whether a listener that needs a certificate has one, saying why not, or that it is a
/// made-up one.
fn starts_with_certificate(key: &str, tls: &TlsConfig) -> bool {
    if !tls.has_certificate() {
        tracing::info!(
            "{key}: not started: it has no certificate (set tls.certfile and tls.keyfile, or tls.self_signed = true)"
        );
        return false;
    }
    if tls.certfile.is_none() {
        tracing::warn!("{key}: using a self-signed certificate made up at start; clients cannot verify it, use it for testing only");
    }
    true
}

/// The QUIC listeners that start, with their endpoints bound.
fn quic_listeners(
    config: &Config,
    acceptors: &mut Vec<NamedAcceptor>,
) -> Result<Vec<(QuicListener, QuicListenerSettings)>> {
    let mut out = Vec::new();
    for (name, l) in config.listeners.quic.iter().filter(|(_, l)| l.enable) {
        let key = format!("listeners.quic.{name}");
        if !starts_with_certificate(&key, &l.tls) {
            continue;
        }
        let bind = l.bind_addr().with_context(|| format!("{key}.bind"))?;
        let settings = QuicSettings {
            tls: l.tls.clone(),
            idle_timeout: l.effective_idle_timeout(&config.mqtt),
            enable_0rtt: l.enable_0rtt,
        };
        let listener = QuicListener::bind(bind, settings)
            .with_context(|| format!("{key}: cannot start on {bind} (UDP)"))?;
        acceptors.push((key, Arc::new(listener.reloader()) as Arc<dyn Reload>));
        out.push((
            listener,
            QuicListenerSettings {
                name: Arc::from(ListenerKind::Quic.listener_name(name)),
                max_connections: l.max_connections as usize,
                handshake_timeout: l.handshake_timeout.get(),
                max_conn_rate: l.max_conn_rate,
                mountpoint: Arc::from(l.mountpoint.as_str()),
            },
        ));
    }
    Ok(out)
}

/// A certificate configuration in use, TLS or QUIC, that can be read again from its files.
trait Reload: Send + Sync {
    fn reload(&self) -> Result<(), String>;
    fn watched_files(&self) -> Vec<PathBuf>;
}

impl Reload for TlsAcceptor {
    fn reload(&self) -> Result<(), String> {
        TlsAcceptor::reload(self).map_err(|e| e.to_string())
    }
    fn watched_files(&self) -> Vec<PathBuf> {
        TlsAcceptor::watched_files(self)
    }
}

impl Reload for QuicReloader {
    fn reload(&self) -> Result<(), String> {
        QuicReloader::reload(self).map_err(|e| e.to_string())
    }
    fn watched_files(&self) -> Vec<PathBuf> {
        QuicReloader::watched_files(self)
    }
}

/// A certificate configuration in use and the listener key that names it in logs.
type NamedAcceptor = (String, Arc<dyn Reload>);

/// How often certificate files are checked for changes.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads TLS and QUIC certificates on SIGHUP and when a file changes; connections accepted
/// afterwards get the new ones. A reload that fails keeps the previous configuration.
async fn reload_certificates(acceptors: Vec<NamedAcceptor>, mut shutdown: watch::Receiver<bool>) {
    let stamps = |acceptor: &dyn Reload| -> Vec<Option<std::time::SystemTime>> {
        acceptor
            .watched_files()
            .iter()
            .map(|file| std::fs::metadata(file).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut seen: Vec<_> = acceptors.iter().map(|(_, a)| stamps(&**a)).collect();
    let reload = |key: &str, acceptor: &dyn Reload, why: &str| match acceptor.reload() {
        Ok(()) => tracing::info!(listener = key, why, "TLS certificate reloaded"),
        Err(error) => {
            tracing::warn!(listener = key, why, %error, "TLS certificate reload failed; the previous one stays in use")
        }
    };
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK_INTERVAL);
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
                for (key, acceptor) in &acceptors {
                    reload(key, &**acceptor, "SIGHUP");
                }
                seen = acceptors.iter().map(|(_, a)| stamps(&**a)).collect();
            }
            _ = tick.tick() => {
                for ((key, acceptor), seen) in acceptors.iter().zip(seen.iter_mut()) {
                    let now = stamps(&**acceptor);
                    if now != *seen {
                        *seen = now;
                        reload(key, &**acceptor, "file changed");
                    }
                }
            }
        }
    }
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
