//! How an adapter starts: it reads its own part of the configuration, binds its listeners
//! and spawns them through a [`Launch`], which the gateway hands to every adapter in turn.
//! Binding is synchronous, so an adapter's listeners are all bound (or the start failed,
//! naming the configuration key at fault) before the next adapter starts.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use gateway_config::{BindAddrError, ListenerKind, TlsConfig};
use mqtt_core::broker::Broker;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::layers::{serve_layered, LayeredListener, StreamProtocol};
use crate::quic::{QuicReloader, QuicSetupError};
use crate::tls::{TlsAcceptor, TlsSetupError};

/// Connections waiting in the kernel to be accepted: enough for a burst of devices
/// reconnecting at once after an outage.
const ACCEPT_BACKLOG: u32 = 1024;

/// Why an adapter could not start; each names the configuration key at fault, its cause
/// following as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{key}.bind")]
    BadBind {
        key: String,
        #[source]
        source: BindAddrError,
    },
    #[error("{key}: cannot listen on {bind}")]
    Listen {
        key: String,
        bind: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{key}.dtls_options")]
    Dtls {
        key: String,
        #[source]
        source: Box<crate::dtls::DtlsSetupError>,
    },
    /// `key` is the TLS setting at fault (`listeners.ssl.default.tls.certfile`), or its
    /// table when no one setting is.
    #[error("{key}")]
    Tls {
        key: String,
        #[source]
        source: Box<TlsSetupError>,
    },
    #[error("{key}: cannot start on {bind} (UDP)")]
    Quic {
        key: String,
        bind: SocketAddr,
        #[source]
        source: Box<QuicSetupError>,
    },
    /// A setting of the adapter's own that cannot be used.
    #[error("{key}")]
    Setting {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A configured listener: its key in the configuration and the name logs and auth rules
/// give it (`listeners.tcp.default` is `tcp:default`).
#[derive(Debug, Clone)]
pub struct NamedListener {
    pub kind: ListenerKind,
    pub key: String,
    pub name: Arc<str>,
}

impl NamedListener {
    pub fn new(kind: ListenerKind, name: &str) -> NamedListener {
        NamedListener {
            kind,
            key: format!("{}.{name}", kind.table()),
            name: Arc::from(kind.listener_name(name)),
        }
    }

    /// The key of the listener's TLS settings: `listeners.ssl.default.tls`,
    /// `gateway.stomp.listeners.ssl.default.ssl_options`.
    pub fn tls_key(&self) -> String {
        format!("{}.{}", self.key, self.kind.tls_table().unwrap_or("tls"))
    }

    /// The error of a TLS configuration of this listener that cannot be used, naming the
    /// setting at fault.
    pub fn tls_error(&self, tls: &TlsConfig, source: TlsSetupError) -> StartError {
        let table = self.tls_key();
        StartError::Tls {
            key: match source.setting(tls) {
                Some(setting) => format!("{table}.{setting}"),
                None => table,
            },
            source: Box::new(source),
        }
    }

    /// The listener's address, or the error naming its `bind` key.
    pub fn address(
        &self,
        bind: Result<SocketAddr, BindAddrError>,
    ) -> Result<SocketAddr, StartError> {
        bind.map_err(|source| StartError::BadBind {
            key: self.key.clone(),
            source,
        })
    }

    fn cannot_listen(&self, bind: SocketAddr, source: io::Error) -> StartError {
        StartError::Listen {
            key: self.key.clone(),
            bind,
            source,
        }
    }
}

/// A certificate configuration in use, TLS or QUIC, or a DTLS listener's keys and
/// certificate, that can be read again from its files.
pub trait Reload: Send + Sync {
    /// Reads the files again; on error the configuration in use stays.
    fn reload(&self) -> Result<(), String>;
    /// The files the configuration is read from (none for a self-signed one).
    fn watched_files(&self) -> Vec<PathBuf>;
    /// What is reloaded, as the log names it.
    fn what(&self) -> &'static str {
        "TLS certificate"
    }
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
pub struct WatchedCertificate {
    pub key: String,
    pub source: Arc<dyn Reload>,
}

/// What adapters start with, and what they leave the gateway to run: the listener tasks
/// and the certificates to reload.
pub struct Launch {
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    tasks: JoinSet<()>,
    certificates: Vec<WatchedCertificate>,
    started: Vec<StartedListener>,
    /// What an adapter shares with the gateway beyond its listeners, one value per type
    /// (`shared`).
    shared: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

/// A listener that started, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedListener {
    /// `tcp:default`, `coap:dtls:default`.
    pub name: Arc<str>,
    /// The protocol it serves, as its start-up log line says (`MQTT over QUIC`).
    pub protocol: String,
    /// The address it is bound to (the port the system chose for port 0).
    pub bound: SocketAddr,
}

impl Launch {
    pub fn new(broker: Arc<Broker>, shutdown: watch::Receiver<bool>) -> Launch {
        Launch {
            broker,
            shutdown,
            tasks: JoinSet::new(),
            certificates: Vec::new(),
            started: Vec::new(),
            shared: HashMap::new(),
        }
    }

    /// The one value of type `T` of this launch, made on first use: what an adapter's
    /// listeners share with each other and with the gateway (such as the registry by
    /// which the admin API reaches an adapter's clients), without the kit knowing it.
    pub fn shared<T: Any + Send + Sync + Default>(&mut self) -> Arc<T> {
        let value = self
            .shared
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()))
            .clone();
        // The entry for `T`'s id holds a `T`: the fallback is never taken.
        value.downcast::<T>().unwrap_or_default()
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Turns true when the gateway shuts down; every listener task ends then.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Binds a TCP listener; also gives the address it is bound to. Must run on the gateway's runtime.
    pub fn bind_tcp(
        &self,
        listener: &NamedListener,
        bind: Result<SocketAddr, BindAddrError>,
    ) -> Result<(TcpListener, SocketAddr), StartError> {
        let bind = listener.address(bind)?;
        let listen = || -> io::Result<TcpListener> {
            let socket = match bind {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            // A restarted gateway binds again at once, whatever its old connections wait for.
            socket.set_reuseaddr(true)?;
            socket.bind(bind)?;
            socket.listen(ACCEPT_BACKLOG)
        };
        let socket = listen().map_err(|source| listener.cannot_listen(bind, source))?;
        let bound = socket.local_addr().unwrap_or(bind);
        Ok((socket, bound))
    }

    /// Binds `named` and serves `protocol` on it through its layers until shutdown; `what`
    /// names the protocol in the log line that says it started.
    pub fn serve_stream<P: StreamProtocol>(
        &mut self,
        what: &str,
        named: &NamedListener,
        bind: Result<SocketAddr, BindAddrError>,
        settings: LayeredListener,
        protocol: P,
    ) -> Result<(), StartError> {
        let (socket, bound) = self.bind_tcp(named, bind)?;
        let serve = serve_layered(
            socket,
            settings,
            Arc::new(protocol),
            self.broker.clone(),
            self.shutdown.clone(),
        );
        self.spawn_listener(what, named, bound, serve);
        Ok(())
    }

    /// Binds a UDP listener, allowed to send broadcasts when `broadcast`. Must run on the
    /// gateway's runtime.
    pub fn bind_udp(
        &self,
        listener: &NamedListener,
        bind: Result<SocketAddr, BindAddrError>,
        broadcast: bool,
    ) -> Result<(UdpSocket, SocketAddr), StartError> {
        let bind = listener.address(bind)?;
        let open = || -> io::Result<UdpSocket> {
            let socket = std::net::UdpSocket::bind(bind)?;
            socket.set_nonblocking(true)?;
            if broadcast {
                socket.set_broadcast(true)?;
            }
            UdpSocket::from_std(socket)
        };
        let socket = open().map_err(|source| listener.cannot_listen(bind, source))?;
        let bound = socket.local_addr().unwrap_or(bind);
        Ok((socket, bound))
    }

    /// The TLS configuration of a listener, reloaded when its files change, offering the
    /// ALPN protocols `alpn` (none: the client's choice is not asked); `None` when it has no
    /// certificate, in which case the listener does not start (said in the log).
    pub fn tls_acceptor(
        &mut self,
        listener: &NamedListener,
        tls: &TlsConfig,
        alpn: &[&str],
    ) -> Result<Option<Arc<TlsAcceptor>>, StartError> {
        if !starts_with_certificate(listener, tls) {
            return Ok(None);
        }
        let acceptor =
            TlsAcceptor::new(tls, alpn).map_err(|source| listener.tls_error(tls, source))?;
        let acceptor = Arc::new(acceptor);
        self.watch_certificate(&listener.key, acceptor.clone());
        Ok(Some(acceptor))
    }

    /// Has the gateway reload `source` on SIGHUP and when one of its files changes.
    pub fn watch_certificate(&mut self, key: &str, source: Arc<dyn Reload>) {
        self.certificates.push(WatchedCertificate {
            key: key.to_owned(),
            source,
        });
    }

    /// Runs a started listener until shutdown; `what` names its protocol in the log line
    /// that says it started (`"MQTT"`, `"CoAP"`).
    pub fn spawn_listener(
        &mut self,
        what: &str,
        listener: &NamedListener,
        bind: SocketAddr,
        serve: impl Future<Output = ()> + Send + 'static,
    ) {
        // The one line a listener logs once bound, with the port the system chose for
        // port 0: what tests and operators read to learn where it listens.
        tracing::info!(listener = %listener.name, bound = %bind, "{what} listener started");
        self.started.push(StartedListener {
            name: listener.name.clone(),
            protocol: what.to_owned(),
            bound: bind,
        });
        self.tasks.spawn(serve);
    }

    /// The listeners started so far.
    pub fn started_listeners(&self) -> &[StartedListener] {
        &self.started
    }

    /// Runs a task of an adapter's that is not a listener, until shutdown.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// The tasks that run until shutdown and the certificates to watch.
    pub fn finish(self) -> (JoinSet<()>, Vec<WatchedCertificate>) {
        (self.tasks, self.certificates)
    }
}

/// Whether a listener that needs a certificate has one, saying once why not (naming the
/// keys to set), or that it is a made-up one.
pub fn starts_with_certificate(listener: &NamedListener, tls: &TlsConfig) -> bool {
    let key = &listener.key;
    if !tls.has_certificate() {
        let table = listener.tls_key();
        tracing::info!(
            "{key}: not started: it has no certificate (set {table}.certfile and {table}.keyfile, or {table}.self_signed = true)"
        );
        return false;
    }
    if tls.certfile.is_none() {
        tracing::warn!("{key}: using a self-signed certificate made up at start; clients cannot verify it, use it for testing only");
    }
    true
}
