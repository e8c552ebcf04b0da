//! DTLS 1.2 for the datagram listeners (RFC 6347), with pre-shared keys (RFC 4279,
//! `TLS_PSK_WITH_AES_128_CCM_8`, the suite CoAP mandates in RFC 7252 9.1.3.1).
//!
//! The listener answers a ClientHello that carries no valid cookie of ours with a
//! HelloVerifyRequest and keeps nothing: the cookie is a keyed hash of the source address,
//! the client's random and a coarse time window (RFC 6347 4.2.1). Only a ClientHello that
//! returns such a cookie, which a forger at another address never saw, makes a peer. The
//! peer then runs the handshake engine, whose first words are a HelloVerifyRequest of its
//! own: the engine takes no cookie from outside, so the client goes through the exchange
//! twice (clients allow a server to repeat it), at the cost of one round trip, which buys
//! a listener that holds no state for any address that has not shown it receives there.
//!
//! Handshakes are limited in number, per source address and in time. The key identity a
//! client authenticated with is what the channel behind the peer is told: the adapters
//! make it the client's user name and refuse a client id other than it.
//!
//! A datagram is screened before the engine sees it: one that is not whole DTLS records,
//! or longer than the listener takes, is dropped and counted, so that nobody who can send
//! from a peer's address ends its session with bytes that are not even records. The
//! credentials are read again on SIGHUP and when their files change (see
//! [`credentials`]); what the listener refuses, drops and completes is counted (see
//! [`metrics`]).

mod credentials;
mod metrics;

pub use credentials::{DtlsReloader, EngineSettings};
pub use metrics::{DtlsMetrics, HandshakeFailure, RecordDrop};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use dimpl::{Dtls, Output};
use gateway_config::{DtlsListenerConfig, ListenerKind, UdpListenerConfig};
use hmac::{Hmac, KeyInit as _, Mac as _};
use mqtt_core::protocol::Flow;
use parking_lot::Mutex;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use sha2::Sha256;

use crate::datagram::{Admission, DatagramChannel, DatagramMetrics, Demux, UdpListenerSettings};
use crate::launch::{Launch, NamedListener, StartError};
use crate::{serve_datagram_listener, ConnWakeup, Seeds};
use credentials::{CredentialCell, Credentials, KeyLease};

/// How long a cookie stays good: it names the window it was made in, and the one before
/// is accepted too, so a cookie lives one to two windows.
const COOKIE_WINDOW: Duration = Duration::from_secs(30);
const COOKIE_LEN: usize = 32;
const RECORD_HEADER_LEN: usize = 13;
const HANDSHAKE_HEADER_LEN: usize = 12;
const CONTENT_HANDSHAKE: u8 = 22;
/// A record carrying a connection ID (RFC 9146).
const CONTENT_TLS12_CID: u8 = 25;
const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;
/// RFC 6347 4.2.1: the HelloVerifyRequest names DTLS 1.0, whatever is negotiated later.
const DTLS_1_0: [u8; 2] = [0xfe, 0xff];
/// TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655).
const PSK_AES128_CCM_8: [u8; 2] = [0xc0, 0xa8];
/// Bytes a record adds to what it protects with the CCM_8 suite: header, explicit nonce, tag.
pub const RECORD_OVERHEAD: usize = RECORD_HEADER_LEN + 8 + 8;
/// The largest datagram a session sends: within the IPv6 minimum MTU of 1280 less the IP
/// and UDP headers.
pub const MTU: usize = 1232;

#[derive(Debug, thiserror::Error)]
pub enum DtlsSetupError {
    #[error("cannot read the pre-shared key file {path}: {error}")]
    PskFile { path: String, error: std::io::Error },
    #[error("pre-shared key file {path}, line {line}: {reason}")]
    PskLine {
        path: String,
        line: usize,
        reason: &'static str,
    },
    #[error("pre-shared key file {path} holds no key")]
    NoKeys { path: String },
    #[error("DTLS engine configuration: {0}")]
    Engine(String),
    #[error(transparent)]
    Files(#[from] crate::tls::TlsSetupError),
    #[error("server certificate: {0}")]
    Certificate(String),
    #[error("certificate {cert} and key {key}: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("neither psk_file nor certfile and keyfile")]
    NoCredentials,
}

/// Pre-shared keys by identity, as read from a file of `identity:secret` lines: the
/// identity is everything before the first `:`, the secret the bytes after it (so a
/// secret may hold `:`). Blank lines and lines starting with `#` are skipped.
#[derive(Clone, Default)]
pub struct PskTable {
    keys: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl std::fmt::Debug for PskTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("PskTable")
            .field("identities", &self.keys.len())
            .finish()
    }
}

impl PskTable {
    pub fn load(path: &Path) -> Result<PskTable, DtlsSetupError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| DtlsSetupError::PskFile {
            path: shown.clone(),
            error,
        })?;
        let table = PskTable::parse(&text).map_err(|(line, reason)| DtlsSetupError::PskLine {
            path: shown.clone(),
            line,
            reason,
        })?;
        if table.keys.is_empty() {
            return Err(DtlsSetupError::NoKeys { path: shown });
        }
        Ok(table)
    }

    /// The table in `text`, or the first bad line (from 1) and what is wrong with it.
    pub fn parse(text: &str) -> Result<PskTable, (usize, &'static str)> {
        let mut keys = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((identity, secret)) = line.split_once(':') else {
                return Err((index + 1, "expected identity:secret"));
            };
            if identity.is_empty() || identity.len() > 128 {
                return Err((index + 1, "the identity must be 1 to 128 bytes"));
            }
            if secret.is_empty() || secret.len() > 64 {
                return Err((index + 1, "the secret must be 1 to 64 bytes"));
            }
            if keys
                .insert(Box::from(identity.as_bytes()), Box::from(secret.as_bytes()))
                .is_some()
            {
                return Err((index + 1, "the identity is listed twice"));
            }
        }
        Ok(PskTable { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get(&self, identity: &[u8]) -> Option<&[u8]> {
        self.keys.get(identity).map(|secret| &**secret)
    }
}

/// How a certificate-authenticated client's certificate is checked.
#[derive(Clone)]
pub enum ClientCertificates {
    /// None is asked for.
    Ignored,
    /// Asked for; one sent must be signed by the CA, and none is needed.
    Optional(Arc<dyn ClientCertVerifier>),
    /// Asked for, and one signed by the CA needed.
    Required(Arc<dyn ClientCertVerifier>),
}

/// The server's certificate (ECDSA P-256 or P-384: the engine signs with nothing else)
/// and how clients' certificates are checked.
#[derive(Clone)]
pub struct ServerCertificate {
    pub certificate: dimpl::DtlsCertificate,
    pub clients: ClientCertificates,
}

impl ServerCertificate {
    /// The certificate and key in `certfile` and `keyfile` (PEM, leaf first; only the
    /// leaf is sent), clients checked as `verify` says against `cacertfile`.
    pub fn load(
        certfile: &Path,
        keyfile: &Path,
        verify: gateway_config::TlsVerify,
        cacertfile: Option<&Path>,
    ) -> Result<ServerCertificate, DtlsSetupError> {
        use gateway_config::TlsVerify;
        let chain = crate::tls::read_chain(certfile)?;
        let key = crate::tls::read_key(keyfile)?;
        let Some(leaf) = chain.into_iter().next() else {
            return Err(crate::tls::TlsSetupError::NoCertificate {
                path: certfile.to_path_buf(),
            }
            .into());
        };
        let verifier = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, DtlsSetupError> {
            let Some(ca) = cacertfile else {
                return Err(DtlsSetupError::Certificate(
                    "verify needs cacertfile".into(),
                ));
            };
            let roots = Arc::new(crate::tls::read_roots(ca)?);
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let builder = if optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|error| DtlsSetupError::Certificate(error.to_string()))
        };
        let clients = match verify {
            TlsVerify::None => ClientCertificates::Ignored,
            TlsVerify::Optional => ClientCertificates::Optional(verifier(true)?),
            TlsVerify::Required => ClientCertificates::Required(verifier(false)?),
        };
        Ok(ServerCertificate {
            certificate: dimpl::DtlsCertificate {
                certificate: leaf.as_ref().to_vec(),
                private_key: key.secret_der().to_vec(),
            },
            clients,
        })
    }

    /// The name a verified client certificate gives its client: its subject's common name.
    fn client_identity(&self, der: Option<&[u8]>) -> Result<Option<Arc<str>>, &'static str> {
        let verifier = match &self.clients {
            ClientCertificates::Ignored => return Ok(None),
            ClientCertificates::Optional(verifier) | ClientCertificates::Required(verifier) => {
                verifier
            }
        };
        let Some(der) = der else {
            return match self.clients {
                ClientCertificates::Required(_) => Err("no client certificate"),
                _ => Ok(None),
            };
        };
        let leaf = rustls_pki_types::CertificateDer::from(der);
        verifier
            .verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now())
            .map_err(|_| "client certificate not signed by the CA, or not valid now")?;
        crate::tls::certificate_common_name(&leaf)
            .map(|cn| Some(Arc::from(cn)))
            .ok_or("client certificate without a common name")
    }
}

/// A DTLS listener's credentials and limits.
#[derive(Clone)]
pub struct DtlsSettings {
    /// Replaced whole by a reload; shared by the listener and every peer.
    credentials: Arc<CredentialCell>,
    metrics: Arc<DtlsMetrics>,
    /// Handshakes under way at once on the listener.
    pub max_handshakes: usize,
    /// Handshakes under way at once from one source IP address.
    pub max_handshakes_per_source: usize,
    pub engine: EngineSettings,
    /// The listener answers ClientHellos without its cookie itself, keeping nothing;
    /// otherwise every ClientHello makes a peer whose engine asks for its own cookie.
    pub stateless_cookies: bool,
    /// The longest datagram taken; a longer one is dropped unread, as oversized.
    pub max_datagram: usize,
}

impl std::fmt::Debug for DtlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsSettings")
            .field("credentials", &self.credentials)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_handshakes_per_source", &self.max_handshakes_per_source)
            .field("engine", &self.engine)
            .field("stateless_cookies", &self.stateless_cookies)
            .field("max_datagram", &self.max_datagram)
            .finish_non_exhaustive()
    }
}

impl DtlsSettings {
    /// Settings with pre-shared keys, a server certificate, or both (a ClientHello that
    /// offers the PSK suite gets a PSK handshake, any other a certificate one).
    pub fn new(
        psk: Option<PskTable>,
        certificate: Option<ServerCertificate>,
        max_handshakes: usize,
        max_handshakes_per_source: usize,
        engine: EngineSettings,
        stateless_cookies: bool,
    ) -> Result<DtlsSettings, DtlsSetupError> {
        let credentials = Credentials::new(psk, certificate, engine)?;
        Ok(DtlsSettings {
            credentials: CredentialCell::new(credentials),
            metrics: Arc::default(),
            max_handshakes,
            max_handshakes_per_source,
            engine,
            stateless_cookies,
            max_datagram: usize::from(u16::MAX) + engine.record_overhead(),
        })
    }

    /// The settings of the DTLS listener `l`, its files read, or `None` when it has no
    /// credentials; a failure names the listener's `dtls_options`.
    pub fn from_config(
        named: &NamedListener,
        l: &gateway_config::DtlsListenerConfig,
    ) -> Result<Option<DtlsSettings>, StartError> {
        if !l.has_credentials() {
            return Ok(None);
        }
        let load = || -> Result<DtlsSettings, DtlsSetupError> {
            let mut engine = EngineSettings::new(l.handshake_timeout.get(), MTU);
            if l.connection_id_length > 0 {
                engine = engine.with_connection_ids(l.connection_id_length as usize);
            }
            let credentials = Credentials::read(&l.dtls_options, engine)?;
            Ok(DtlsSettings {
                credentials: CredentialCell::new(credentials),
                metrics: Arc::default(),
                max_handshakes: l.max_handshakes as usize,
                max_handshakes_per_source: l.max_handshakes_per_source as usize,
                engine,
                stateless_cookies: l.stateless_cookies,
                max_datagram: (l.max_packet_size as usize).saturating_add(engine.record_overhead()),
            })
        };
        load().map(Some).map_err(|source| StartError::Dtls {
            key: named.key.clone(),
            source: Box::new(source),
        })
    }

    /// What the listener counts.
    pub fn metrics(&self) -> &Arc<DtlsMetrics> {
        &self.metrics
    }

    /// What reads `options`' files again and puts them in use for the listener of these
    /// settings; `listener` names it in the log.
    pub fn reloader(
        &self,
        options: &gateway_config::DtlsOptions,
        listener: Arc<str>,
    ) -> DtlsReloader {
        DtlsReloader::new(
            self.credentials.clone(),
            options.clone(),
            self.engine,
            listener,
        )
    }

    /// A new engine for a peer whose first datagram is `hello`: a PSK one when the
    /// ClientHello offers the PSK suite and there are keys, else a certificate one.
    fn engine(&self, hello: &[u8], now: Instant) -> Result<(Dtls, Mode), DtlsSetupError> {
        let offers_psk = parse_client_hello(hello).is_some_and(|hello| {
            hello
                .cipher_suites
                .chunks_exact(2)
                .any(|suite| suite == PSK_AES128_CCM_8)
        });
        let credentials = self.credentials.current();
        match (
            &credentials.psk,
            &credentials.certificate,
            &credentials.certificate_config,
        ) {
            (Some(psk), _, _) if offers_psk || credentials.certificate.is_none() => Ok((
                Dtls::new_12_psk(psk.config.clone(), now),
                Mode::Psk { named: None },
            )),
            (_, Some(certificate), Some(config)) => Ok((
                Dtls::new_12(config.clone(), certificate.certificate.clone(), now),
                Mode::Certificate {
                    certificate: certificate.clone(),
                    peer: None,
                },
            )),
            _ => Err(DtlsSetupError::NoCredentials),
        }
    }
}

/// A listener's pre-shared keys and the engine configuration that resolves them, made
/// once per key file read: making a configuration runs the crypto provider's self-tests,
/// key exchanges and signatures that cost many times a PSK handshake.
#[derive(Clone)]
pub(crate) struct PskCredentials {
    pub(crate) table: Arc<PskTable>,
    config: Arc<dimpl::Config>,
}

impl std::fmt::Debug for PskCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.table.fmt(f)
    }
}

impl PskCredentials {
    pub(crate) fn new(
        table: PskTable,
        engine: EngineSettings,
    ) -> Result<PskCredentials, DtlsSetupError> {
        let table = Arc::new(table);
        let config = engine
            .builder()
            .with_psk_server(
                None,
                Arc::new(RecordingResolver {
                    table: table.clone(),
                }),
            )
            .build()
            .map_err(|error| DtlsSetupError::Engine(error.to_string()))?;
        Ok(PskCredentials {
            table,
            config: Arc::new(config),
        })
    }
}

/// Starts the enabled DTLS listeners of one kind (a gateway's `listeners.dtls` tables),
/// the one way every datagram protocol does. `open_for` is given each listener's name and
/// its settings as a UDP listener, and returns what makes a peer's channel (from its
/// address, wake-up, seed and proven identity) once the peer's handshake is done. A
/// listener whose `dtls_options` name no credentials is not started and claims no port.
pub fn spawn_dtls_listeners<C, F>(
    launch: &mut Launch,
    protocol: &str,
    kind: ListenerKind,
    listeners: &BTreeMap<String, DtlsListenerConfig>,
    mut open_for: impl FnMut(&NamedListener, &UdpListenerConfig) -> F,
) -> Result<(), StartError>
where
    C: DatagramChannel,
    F: Fn(SocketAddr, Arc<ConnWakeup>, u64, Option<Arc<str>>) -> C + Clone + Send + 'static,
{
    for (name, l) in listeners.iter().filter(|(_, l)| l.enable) {
        let named = NamedListener::new(kind, name);
        let Some(dtls) = DtlsSettings::from_config(&named, l)? else {
            tracing::info!(
                listener = %named.name,
                "{protocol} DTLS listener not started: dtls_options names no psk_file and no certfile"
            );
            continue;
        };
        let udp = l.udp();
        let (socket, bound) = launch.bind_udp(&named, l.bind_addr(), false)?;
        // Through the same watcher as the TLS listeners' certificates.
        launch.watch_certificate(
            &named.key,
            Arc::new(dtls.reloader(&l.dtls_options, named.name.clone())),
        );
        let open = open_for(&named, &udp);
        let serve = serve_dtls_listener(
            socket,
            UdpListenerSettings::from_config(named.name.clone(), &udp),
            dtls,
            launch.broker().clone(),
            Arc::new(DatagramMetrics::default()),
            launch.shutdown_signal(),
            open,
        );
        launch.spawn_listener(&format!("{protocol} DTLS"), &named, bound, serve);
    }
    Ok(())
}

/// Serves a datagram protocol over DTLS on a bound UDP socket until `shutdown` turns true.
/// `open` makes a peer's channel once its handshake authenticated it, from its address,
/// its wake-up handle, a seed and the identity it proved (see [`OpenChannel`]).
pub async fn serve_dtls_listener<C, F>(
    socket: tokio::net::UdpSocket,
    listener: UdpListenerSettings,
    dtls: DtlsSettings,
    broker: Arc<mqtt_core::broker::Broker>,
    metrics: Arc<DatagramMetrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    open: F,
) where
    C: DatagramChannel,
    F: Fn(SocketAddr, Arc<ConnWakeup>, u64, Option<Arc<str>>) -> C + Clone + Send + 'static,
{
    let mut dtls = dtls;
    // A record of the largest datagram accepted, and one byte more, so an oversized one
    // is seen as such rather than arriving truncated.
    dtls.max_datagram = listener
        .max_packet_size
        .saturating_add(dtls.engine.record_overhead());
    let read = dtls.max_datagram.saturating_add(1);
    let limits = listener.limits(read, None);
    let handshakes = HandshakeLimits::new(dtls.max_handshakes, dtls.max_handshakes_per_source);
    let demux = DtlsDemux::new(&dtls, handshakes.clone(), Instant::now());
    // A client that restarts on an open session's address is asked for the listener's
    // cookie, which then admits its next ClientHello (a jar of its own for the restarts,
    // when the listener leaves cookies to the engines and admits any ClientHello).
    let restarts = demux
        .cookies
        .clone()
        .unwrap_or_else(|| Arc::new(CookieJar::new(Instant::now())));
    let seeds = Seeds::default();
    broker.add_listener_figures(listener.name.clone(), dtls.metrics.clone());
    let report = metrics::report(
        dtls.metrics.clone(),
        listener.name.clone(),
        shutdown.clone(),
    );
    let serve = serve_datagram_listener(
        socket,
        limits,
        demux,
        metrics,
        broker,
        shutdown,
        move |peer, wakeup| {
            let seed = seeds.next(peer);
            let open = open.clone();
            let session_wakeup = wakeup.clone();
            let make: OpenChannel<C> = Box::new(move |identity| open(peer, wakeup, seed, identity));
            DtlsChannel::new(&dtls, &handshakes, peer, make, Instant::now())
                .with_restarts(restarts.clone())
                .with_wakeup(session_wakeup)
        },
    );
    tokio::join!(serve, report);
}

/// What a ClientHello tells before any state exists for its sender.
#[derive(Debug, PartialEq, Eq)]
struct ClientHello<'a> {
    /// The record's sequence number, echoed in our HelloVerifyRequest (RFC 6347 4.2.1).
    record_sequence: &'a [u8],
    /// client_version, random and session_id: what the cookie binds.
    hello_prefix: &'a [u8],
    cookie: &'a [u8],
    /// Two bytes each.
    cipher_suites: &'a [u8],
}

/// Reads the unfragmented ClientHello that opens `datagram`, or `None`. A ClientHello
/// that needs more than one datagram gets no cookie: clients fit the first one in one.
fn parse_client_hello(datagram: &[u8]) -> Option<ClientHello<'_>> {
    let header = datagram.get(..RECORD_HEADER_LEN)?;
    // Epoch 0: a handshake record sent in the clear.
    if header.first() != Some(&CONTENT_HANDSHAKE) || header.get(3..5)? != [0, 0] {
        return None;
    }
    let record_len = usize::from(u16::from_be_bytes([*header.get(11)?, *header.get(12)?]));
    let fragment = datagram.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + record_len)?;
    let handshake = fragment.get(..HANDSHAKE_HEADER_LEN)?;
    if handshake.first() != Some(&CLIENT_HELLO) {
        return None;
    }
    let length = handshake.get(1..4)?;
    // Offset 0 and the whole message in this fragment.
    if handshake.get(6..9)? != [0, 0, 0] || handshake.get(9..12)? != length {
        return None;
    }
    let length = usize::from(*length.get(1)?) << 8 | usize::from(*length.get(2)?);
    let body = fragment.get(HANDSHAKE_HEADER_LEN..HANDSHAKE_HEADER_LEN + length)?;
    // client_version (2), random (32), session_id <0..32>, cookie <0..255>.
    let session_len = usize::from(*body.get(34)?);
    let prefix_end = 35 + session_len;
    let cookie_len = usize::from(*body.get(prefix_end)?);
    let cookie = body.get(prefix_end + 1..prefix_end + 1 + cookie_len)?;
    let suites_at = prefix_end + 1 + cookie_len;
    let suites_len = usize::from(u16::from_be_bytes([
        *body.get(suites_at)?,
        *body.get(suites_at + 1)?,
    ]));
    Some(ClientHello {
        record_sequence: header.get(5..11)?,
        hello_prefix: body.get(..prefix_end)?,
        cookie,
        cipher_suites: body.get(suites_at + 2..suites_at + 2 + suites_len)?,
    })
}

/// Stateless cookies (RFC 6347 4.2.1): HMAC-SHA256 of the time window, the source address
/// and the ClientHello's version, random and session id, under a key made at start.
pub struct CookieJar {
    key: [u8; 32],
    started: Instant,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar").finish_non_exhaustive()
    }
}

impl CookieJar {
    pub fn new(now: Instant) -> CookieJar {
        CookieJar {
            key: rand::random(),
            started: now,
        }
    }

    fn window(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / COOKIE_WINDOW.as_secs()
    }

    fn cookie(&self, window: u64, from: SocketAddr, hello_prefix: &[u8]) -> [u8; COOKIE_LEN] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC takes a key of any length.
            return [0; COOKIE_LEN];
        };
        mac.update(&window.to_be_bytes());
        match from.ip() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&from.port().to_be_bytes());
        mac.update(hello_prefix);
        mac.finalize().into_bytes().into()
    }

    fn valid(&self, from: SocketAddr, hello: &ClientHello<'_>, now: Instant) -> bool {
        use subtle::ConstantTimeEq;
        let window = self.window(now);
        [Some(window), window.checked_sub(1)]
            .into_iter()
            .flatten()
            .any(|window| {
                let expected = self.cookie(window, from, hello.hello_prefix);
                bool::from(expected.as_slice().ct_eq(hello.cookie))
            })
    }

    /// What to do with `datagram` from `from`, an address that has no peer.
    fn admit(&self, from: SocketAddr, datagram: &[u8], now: Instant) -> Gate {
        let Some(hello) = parse_client_hello(datagram) else {
            return Gate::Ignore;
        };
        if self.valid(from, &hello, now) {
            return Gate::Proven;
        }
        Gate::Verify(self.verify_request(from, &hello, now))
    }

    /// The HelloVerifyRequest that answers `hello` from `from`, with its cookie.
    fn verify_request(&self, from: SocketAddr, hello: &ClientHello<'_>, now: Instant) -> Bytes {
        let cookie = self.cookie(self.window(now), from, hello.hello_prefix);
        hello_verify_request(hello.record_sequence, &cookie)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Not an opening ClientHello.
    Ignore,
    /// The ClientHello returns our cookie: its sender receives at its address.
    Proven,
    /// Answer with this HelloVerifyRequest and keep nothing.
    Verify(Bytes),
}

fn hello_verify_request(record_sequence: &[u8], cookie: &[u8]) -> Bytes {
    let body_len = 2 + 1 + cookie.len();
    let mut out = BytesMut::with_capacity(RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + body_len);
    out.put_u8(CONTENT_HANDSHAKE);
    out.put_slice(&DTLS_1_0);
    out.put_u16(0);
    out.put_slice(record_sequence);
    out.put_u16((HANDSHAKE_HEADER_LEN + body_len) as u16);
    out.put_u8(HELLO_VERIFY_REQUEST);
    let length = (body_len as u32).to_be_bytes();
    let length = length.get(1..).unwrap_or_default();
    out.put_slice(length);
    // message_seq 0: the first message of ours (RFC 6347 4.2.2).
    out.put_u16(0);
    out.put_slice(&[0, 0, 0]);
    out.put_slice(length);
    out.put_slice(&DTLS_1_0);
    out.put_u8(cookie.len() as u8);
    out.put_slice(cookie);
    out.freeze()
}

/// Handshakes under way, in all and per source address.
#[derive(Debug)]
pub struct HandshakeLimits {
    max: usize,
    max_per_source: usize,
    state: Mutex<HandshakeCount>,
}

#[derive(Debug, Default)]
struct HandshakeCount {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl HandshakeLimits {
    pub fn new(max: usize, max_per_source: usize) -> Arc<HandshakeLimits> {
        Arc::new(HandshakeLimits {
            max,
            max_per_source,
            state: Mutex::new(HandshakeCount::default()),
        })
    }

    fn has_room(&self, ip: IpAddr) -> bool {
        let state = self.state.lock();
        state.total < self.max
            && state.per_source.get(&ip).copied().unwrap_or(0) < self.max_per_source
    }

    /// A place for one handshake from `ip`, held until the slot is dropped.
    pub fn begin(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeSlot> {
        let mut state = self.state.lock();
        let from_source = state.per_source.get(&ip).copied().unwrap_or(0);
        if state.total >= self.max || from_source >= self.max_per_source {
            return None;
        }
        state.total += 1;
        state.per_source.insert(ip, from_source + 1);
        Some(HandshakeSlot {
            limits: self.clone(),
            ip,
        })
    }

    pub fn under_way(&self) -> usize {
        self.state.lock().total
    }
}

/// One handshake counted in [`HandshakeLimits`] until dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    limits: Arc<HandshakeLimits>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut state = self.limits.state.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_source.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_source.remove(&self.ip);
            }
        }
    }
}

/// The datagram listener's view of a DTLS listener: only a ClientHello returning our
/// cookie (any ClientHello, with stateless cookies off), with a handshake place free for
/// the listener and its source, makes a peer.
pub struct DtlsDemux {
    /// `None` when the listener leaves cookies to each peer's engine.
    cookies: Option<Arc<CookieJar>>,
    limits: Arc<HandshakeLimits>,
    metrics: Arc<DtlsMetrics>,
    max_datagram: usize,
    /// The length of the connection IDs the listener gives; 0 when it gives none.
    cid_len: usize,
}

impl DtlsDemux {
    pub fn new(settings: &DtlsSettings, limits: Arc<HandshakeLimits>, now: Instant) -> DtlsDemux {
        DtlsDemux {
            cookies: settings
                .stateless_cookies
                .then(|| Arc::new(CookieJar::new(now))),
            limits,
            metrics: settings.metrics.clone(),
            max_datagram: settings.max_datagram,
            cid_len: settings.engine.connection_id_len.unwrap_or(0),
        }
    }
}

/// The name under which a session with connection ID `cid` may be found from a new
/// address.
fn connection_id_identity(cid: &[u8]) -> Arc<str> {
    use std::fmt::Write;
    let mut name = String::with_capacity(4 + 2 * cid.len());
    name.push_str("cid:");
    for byte in cid {
        // Writing to a String cannot fail.
        let _ = write!(name, "{byte:02x}");
    }
    Arc::from(name)
}

impl Demux for DtlsDemux {
    fn sub_key(&self, _datagram: &Bytes) -> Option<Bytes> {
        None
    }
    /// A record with a connection ID (RFC 9146) names the session it belongs to: from a
    /// new address, that session's engine decides whether the record is its peer's.
    /// Nothing else in a record names anything.
    fn identity(&self, datagram: &Bytes) -> Option<Arc<str>> {
        if self.cid_len == 0 || datagram.first() != Some(&CONTENT_TLS12_CID) {
            return None;
        }
        let cid_at = RECORD_HEADER_LEN - 2;
        let cid = datagram.get(cid_at..cid_at + self.cid_len)?;
        Some(connection_id_identity(cid))
    }
    fn wrap(&self, _sub_key: &Bytes, datagram: Bytes) -> Bytes {
        datagram
    }
    fn admit(&self, from: SocketAddr, datagram: &Bytes, now: Instant) -> Admission {
        // Arrived cut short: what it holds is not what was sent, whatever it looks like.
        if datagram.len() > self.max_datagram {
            self.metrics.dropped(RecordDrop::Oversized, 1);
            return Admission::Drop;
        }
        let gate = match &self.cookies {
            Some(cookies) => cookies.admit(from, datagram, now),
            None if parse_client_hello(datagram).is_some() => Gate::Proven,
            None => Gate::Ignore,
        };
        match gate {
            Gate::Ignore => {
                // Whatever it is, no session takes it: a record of a peer forgotten
                // counts as garbage as much as bytes that are no record.
                self.metrics.dropped(RecordDrop::Garbage, 1);
                Admission::Drop
            }
            Gate::Verify(reply) => {
                self.metrics.cookie_sent();
                Admission::Reply(reply)
            }
            Gate::Proven if self.limits.has_room(from.ip()) => Admission::Accept,
            Gate::Proven => Admission::Drop,
        }
    }
}

thread_local! {
    /// The identity the shared resolver last resolved on this thread: an engine resolves
    /// within the call that hands it a datagram, so the peer that made the call takes it
    /// from here once the call returns (`resolved_during`).
    static RESOLVED: std::cell::RefCell<Option<NamedKey>> = const { std::cell::RefCell::new(None) };
}

/// Resolves identities from one key table for every peer's engine made while it is
/// current, leaving the identity the client named, with its secret (none for an unknown
/// identity), to the peer whose datagram asked (`RESOLVED`): the client's once the
/// handshake's Finished messages prove the key.
struct RecordingResolver {
    table: Arc<PskTable>,
}

struct NamedKey {
    identity: Vec<u8>,
    secret: Option<Vec<u8>>,
}

impl dimpl::PskResolver for RecordingResolver {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let secret = self.table.get(identity).map(<[u8]>::to_vec);
        RESOLVED.with(|resolved| {
            *resolved.borrow_mut() = Some(NamedKey {
                identity: identity.to_vec(),
                secret: secret.clone(),
            })
        });
        secret
    }
}

/// Runs an engine call, and returns with its result the identity it resolved, if any.
fn resolved_during<T>(call: impl FnOnce() -> T) -> (T, Option<NamedKey>) {
    RESOLVED.with(|resolved| resolved.borrow_mut().take());
    let result = call();
    (
        result,
        RESOLVED.with(|resolved| resolved.borrow_mut().take()),
    )
}

impl std::panic::UnwindSafe for RecordingResolver {}
impl std::panic::RefUnwindSafe for RecordingResolver {}

/// Makes the channel of an authenticated peer, given the identity it proved: a key's, a
/// verified client certificate's common name, or none (a certificate handshake whose
/// client sent no certificate where none is required).
pub type OpenChannel<C> = Box<dyn FnOnce(Option<Arc<str>>) -> C + Send>;

/// How a peer's handshake authenticates it.
enum Mode {
    /// The identity the client named, once the engine asked for its key.
    Psk { named: Option<NamedKey> },
    Certificate {
        certificate: Arc<ServerCertificate>,
        /// The client's leaf certificate, once sent.
        peer: Option<Vec<u8>>,
    },
}

enum Phase<C> {
    Handshake {
        open: OpenChannel<C>,
        /// Chosen by the first ClientHello.
        mode: Option<Mode>,
        deadline: Instant,
        _slot: HandshakeSlot,
    },
    Open(C),
    Closed,
}

/// One peer's DTLS session around the channel that serves it: records in, the channel's
/// datagrams out as records. The channel is made once the handshake authenticated the
/// client, and sees nothing before.
pub struct DtlsChannel<C> {
    settings: DtlsSettings,
    /// Made for the peer's first ClientHello, whose cipher suites choose its kind.
    engine: Option<Dtls>,
    phase: Phase<C>,
    /// The engine's next retransmission or timer.
    engine_deadline: Option<Instant>,
    /// Whether the engine has yet to see the datagram that made the peer, a ClientHello
    /// that returned a cookie: the listener's, or the one a client that restarted on an
    /// open session was asked for.
    first: bool,
    /// Whether the listener proved the peer's address before it made the peer.
    proven: bool,
    buf: Vec<u8>,
    peer: SocketAddr,
    /// The cookies that a ClientHello on the open session must return to end it.
    restarts: Option<Arc<CookieJar>>,
    /// Version, random and session id of the ClientHello that made the peer: a late copy
    /// of one of its handshake's ClientHellos is no restart.
    opening: Vec<u8>,
    /// Wakes the peer's task, so that a reload revoking the session's key closes it at
    /// once.
    wakeup: Option<Arc<ConnWakeup>>,
    /// The key the session was made with, which a reload may revoke.
    lease: Option<KeyLease>,
    /// The identity the session was opened under, for the log.
    identity: Option<Arc<str>>,
    /// Application data records the engine handed over: what a datagram held and the
    /// engine did not hand over, it dropped.
    records_received: u64,
    /// The name its connection ID gives the open session, under which a record from a new
    /// address may claim it.
    cid_identity: Option<Arc<str>>,
    /// The peer moved to a new address on the strength of its connection ID: until its
    /// channel sees it receive there, it is sent no more than the driver's budget allows.
    moved: bool,
}

impl<C: DatagramChannel> DtlsChannel<C> {
    /// A peer that a ClientHello from `peer` made. It closes at once when no handshake
    /// place is free after all.
    pub fn new(
        settings: &DtlsSettings,
        limits: &Arc<HandshakeLimits>,
        peer: SocketAddr,
        open: OpenChannel<C>,
        now: Instant,
    ) -> DtlsChannel<C> {
        let phase = match limits.begin(peer.ip()) {
            Some(slot) => Phase::Handshake {
                open,
                mode: None,
                deadline: now + settings.engine.handshake_timeout,
                _slot: slot,
            },
            None => Phase::Closed,
        };
        DtlsChannel {
            settings: settings.clone(),
            engine: None,
            phase,
            engine_deadline: None,
            first: settings.stateless_cookies,
            proven: settings.stateless_cookies,
            buf: vec![0; settings.engine.mtu.max(2048)],
            peer,
            restarts: None,
            opening: Vec::new(),
            wakeup: None,
            lease: None,
            identity: None,
            records_received: 0,
            cid_identity: None,
            moved: false,
        }
    }

    /// Lets a client that lost its session start a new one from the same address (see
    /// [`DtlsChannel::restarted`]), proving it receives there with a cookie of `jar`, the
    /// listener's. Without it such a ClientHello goes to the session, which ignores it.
    pub fn with_restarts(mut self, jar: Arc<CookieJar>) -> DtlsChannel<C> {
        self.restarts = Some(jar);
        self
    }

    /// RFC 6347 4.2.8: a ClientHello on an open session comes from a client that lost it,
    /// typically a device restarted on the same port, whose records the session would
    /// ignore until it expires. It is answered with a HelloVerifyRequest, keeping nothing;
    /// only a ClientHello returning the cookie, which proves its sender receives at this
    /// address, ends the session (a forged one cannot). That ClientHello is not answered:
    /// the client sends it again, and the listener admits it by the same cookie as a new
    /// peer, whose handshake starts as any other.
    fn restarted(
        &mut self,
        hello: &ClientHello<'_>,
        jar: &CookieJar,
        out: &mut Vec<Bytes>,
        now: Instant,
    ) -> Flow {
        if !jar.valid(self.peer, hello, now) {
            out.push(jar.verify_request(self.peer, hello, now));
            return Flow::Continue;
        }
        tracing::info!("DTLS client started a new session: the open one ends");
        // No close_notify: the client has no keys left to read it with.
        if let Phase::Open(channel) = &mut self.phase {
            channel.handle_closed(now);
        }
        self.phase = Phase::Closed;
        Flow::Close
    }

    /// Has the peer's task woken through `wakeup` when a reload revokes the session's key.
    pub fn with_wakeup(mut self, wakeup: Arc<ConnWakeup>) -> DtlsChannel<C> {
        self.wakeup = Some(wakeup);
        self
    }

    /// Takes what the engine has to say: records to send, and the plaintext received,
    /// which goes to the channel. Loops until neither side has more.
    fn pump(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        let mut received = Vec::new();
        loop {
            let Some(engine) = self.engine.as_mut() else {
                return Flow::Close;
            };
            let mut connected = false;
            let mut closed = false;
            loop {
                match engine.poll_output(&mut self.buf) {
                    Output::Packet(packet) => {
                        if matches!(self.phase, Phase::Handshake { .. })
                            && is_hello_verify_request(packet)
                        {
                            self.settings.metrics.cookie_sent();
                        }
                        out.push(Bytes::copy_from_slice(packet));
                    }
                    Output::BufferTooSmall { needed } => self.buf.resize(needed, 0),
                    Output::Timeout(at) => {
                        self.engine_deadline = Some(at);
                        break;
                    }
                    Output::Connected => connected = true,
                    Output::PeerCert(der) => {
                        if let Phase::Handshake {
                            mode: Some(Mode::Certificate { peer, .. }),
                            ..
                        } = &mut self.phase
                        {
                            *peer = Some(der.to_vec());
                        }
                    }
                    Output::ApplicationData(data) => {
                        self.records_received += 1;
                        received.push(Bytes::copy_from_slice(data));
                    }
                    Output::CloseNotify => closed = true,
                    _ => {}
                }
            }
            if connected {
                self.open();
            }
            if closed {
                tracing::debug!("DTLS close_notify received");
                return self.close(out, now);
            }
            if received.is_empty() {
                return match self.phase {
                    Phase::Closed => Flow::Close,
                    _ => Flow::Continue,
                };
            }
            let Phase::Open(channel) = &mut self.phase else {
                // Application data before the handshake is done is not the client's yet.
                received.clear();
                continue;
            };
            let mut plain = Vec::new();
            let mut flow = Flow::Continue;
            for datagram in received.drain(..) {
                if channel.handle_datagram(datagram, &mut plain, now) == Flow::Close {
                    flow = Flow::Close;
                    break;
                }
            }
            if self.seal(plain, out) == Flow::Close || flow == Flow::Close {
                return self.close(out, now);
            }
        }
    }

    /// The handshake is done: the channel is made with the identity the client proved,
    /// or the session ends if what it proved is not enough.
    fn open(&mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        let Phase::Handshake { open, mode, .. } = phase else {
            self.phase = phase;
            return;
        };
        let metrics = self.settings.metrics.clone();
        let identity = match mode {
            Some(Mode::Psk { named }) => {
                let Some(NamedKey {
                    identity,
                    secret: Some(secret),
                }) = named
                else {
                    tracing::warn!("DTLS handshake done without a resolved identity");
                    metrics.handshake_failed(HandshakeFailure::Credentials);
                    return;
                };
                let lease =
                    self.settings
                        .credentials
                        .lease(&identity, &secret, self.wakeup.clone());
                if lease.revoked() {
                    tracing::debug!("DTLS handshake done with a key a reload has removed since");
                    metrics.handshake_failed(HandshakeFailure::Credentials);
                    return;
                }
                self.lease = Some(lease);
                Some(Arc::from(String::from_utf8_lossy(&identity).as_ref()))
            }
            Some(Mode::Certificate { certificate, peer }) => {
                match certificate.client_identity(peer.as_deref()) {
                    Ok(identity) => identity,
                    Err(reason) => {
                        tracing::debug!(reason, "DTLS client certificate refused");
                        metrics.handshake_failed(HandshakeFailure::Credentials);
                        return;
                    }
                }
            }
            None => return,
        };
        metrics.handshake_completed();
        match &identity {
            Some(identity) => tracing::info!(identity = %identity, "DTLS session established"),
            None => tracing::info!("DTLS session established without a client identity"),
        }
        self.identity = identity.clone();
        self.cid_identity = self
            .engine
            .as_ref()
            .and_then(|engine| engine.connection_id())
            .map(connection_id_identity);
        self.phase = Phase::Open(open(identity));
    }

    /// Hands the channel's datagrams to the engine as application data, each sent as a
    /// datagram of its own: the engine would pack several records into one, which some
    /// clients read only one record of until the next datagram arrives.
    fn seal(&mut self, plain: Vec<Bytes>, out: &mut Vec<Bytes>) -> Flow {
        for datagram in plain {
            let Some(engine) = self.engine.as_mut() else {
                return Flow::Close;
            };
            if let Err(error) = guarded(|| engine.send_application_data(&datagram)) {
                tracing::debug!(%error, "DTLS send failed");
                return Flow::Close;
            }
            self.drain_records(out);
        }
        Flow::Continue
    }

    /// Ends the session: the channel is closed and told, a close_notify sent when the
    /// session was up.
    fn close(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        self.lease = None;
        if let Phase::Open(channel) = &mut self.phase {
            channel.handle_closed(now);
            if let Some(engine) = self.engine.as_mut() {
                let _ = guarded(|| engine.close());
            }
            self.drain_records(out);
        }
        self.phase = Phase::Closed;
        Flow::Close
    }

    fn drain_records(&mut self, out: &mut Vec<Bytes>) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        loop {
            match engine.poll_output(&mut self.buf) {
                Output::Packet(packet) => out.push(Bytes::copy_from_slice(packet)),
                Output::BufferTooSmall { needed } => self.buf.resize(needed, 0),
                Output::Timeout(at) => {
                    self.engine_deadline = Some(at);
                    break;
                }
                _ => {}
            }
        }
    }

    /// Runs what the channel produces outside of input (a wake-up, its timer, shutdown).
    fn drive_channel(
        &mut self,
        out: &mut Vec<Bytes>,
        now: Instant,
        act: impl FnOnce(&mut C, &mut Vec<Bytes>) -> Flow,
    ) -> Flow {
        let Phase::Open(channel) = &mut self.phase else {
            return Flow::Continue;
        };
        let mut plain = Vec::new();
        let flow = act(channel, &mut plain);
        if self.seal(plain, out) == Flow::Close || flow == Flow::Close {
            self.drain_records(out);
            return self.close(out, now);
        }
        self.pump(out, now)
    }

    fn fail(&mut self, error: &dimpl::Error, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if let Phase::Handshake { mode, .. } = &self.phase {
            let why = failure_of(error, mode.as_ref());
            self.settings.metrics.handshake_failed(why);
            // Counted, and summed up in the log once per interval: not a line each.
            tracing::debug!(%error, ?why, "DTLS handshake failed");
        } else {
            tracing::debug!(%error, "DTLS session failed");
        }
        self.close(out, now)
    }

    /// Keeps the identity the client named in this peer's handshake.
    fn note_resolved(&mut self, resolved: Option<NamedKey>) {
        if let (
            Some(resolved),
            Phase::Handshake {
                mode: Some(Mode::Psk { named }),
                ..
            },
        ) = (resolved, &mut self.phase)
        {
            *named = Some(resolved);
        }
    }

    /// Makes the engine for the ClientHello that made the peer.
    fn start(&mut self, hello: &[u8], now: Instant) -> bool {
        match self.settings.engine(hello, now) {
            Ok((engine, chosen)) => {
                if let Phase::Handshake { mode, .. } = &mut self.phase {
                    *mode = Some(chosen);
                }
                self.engine = Some(engine);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "DTLS session not made");
                false
            }
        }
    }
}

/// Why a handshake the engine gave up on failed: the credentials when the client named an
/// identity the listener does not know, or a key or certificate did not prove what it
/// claimed (a record that does not decrypt under the key named, a Finished or a
/// signature that does not verify, a certificate refused on either side).
fn failure_of(error: &dimpl::Error, mode: Option<&Mode>) -> HandshakeFailure {
    use dimpl::{CryptoError, CryptoOperation, Error, SecurityError};
    if let Some(Mode::Psk { named: Some(named) }) = mode {
        if named.secret.is_none() {
            return HandshakeFailure::Credentials;
        }
    }
    match error {
        Error::Timeout(_) => HandshakeFailure::Timeout,
        Error::CertificateError(_)
        | Error::PskError(_)
        | Error::SecurityError(SecurityError::ClientFinishedVerificationFailed)
        | Error::CryptoError(
            CryptoError::SignatureVerificationFailed { .. }
            | CryptoError::OperationFailed(
                CryptoOperation::Decrypt
                | CryptoOperation::VerifySignature
                | CryptoOperation::VerifyData,
            ),
        ) => HandshakeFailure::Credentials,
        Error::SecurityError(SecurityError::FatalAlert { description })
            if refuses_credentials(*description) =>
        {
            HandshakeFailure::Credentials
        }
        _ => HandshakeFailure::Malformed,
    }
}

/// Alerts a client sends when it refuses what authenticates us, or tells that its key did
/// not work (RFC 5246 7.2, RFC 4279 2): bad_record_mac, handshake_failure, the
/// certificate alerts, access_denied, decrypt_error, unknown_psk_identity.
fn refuses_credentials(description: u8) -> bool {
    matches!(description, 20 | 40 | 42..=46 | 48 | 49 | 51 | 115)
}

/// Whether `packet` is a HelloVerifyRequest, in the clear.
fn is_hello_verify_request(packet: &[u8]) -> bool {
    packet.first() == Some(&CONTENT_HANDSHAKE)
        && packet.get(3..5) == Some(&[0, 0][..])
        && packet.get(RECORD_HEADER_LEN) == Some(&HELLO_VERIFY_REQUEST)
}

/// How many application data records of a protected epoch `datagram` holds, when it is
/// nothing but whole DTLS records no longer than `max`; otherwise why it is dropped. What
/// passes may still be refused by the engine; what fails would be, or would end a session
/// that a forged source address could end at will.
fn screen(datagram: &[u8], max: usize, cid_len: usize) -> Result<u64, RecordDrop> {
    const CONTENT_TYPES: std::ops::RangeInclusive<u8> = 20..=23;
    const CONTENT_APPLICATION_DATA: u8 = 23;
    if datagram.len() > max {
        return Err(RecordDrop::Oversized);
    }
    if datagram.is_empty() {
        return Err(RecordDrop::Garbage);
    }
    let mut rest = datagram;
    let mut application = 0;
    while !rest.is_empty() {
        let header = rest.get(..RECORD_HEADER_LEN).ok_or(RecordDrop::Garbage)?;
        let (Some(&content), Some(&major), Some(&minor)) =
            (header.first(), header.get(1), header.get(2))
        else {
            return Err(RecordDrop::Garbage);
        };
        // A record with a connection ID (RFC 9146) has it before its length; its real
        // content type, application data almost always, is inside the protection.
        let with_cid = content == CONTENT_TLS12_CID && cid_len > 0;
        // DTLS 1.0 (0xfeff) or 1.2 (0xfefd).
        if !(CONTENT_TYPES.contains(&content) || with_cid)
            || major != 0xfe
            || !matches!(minor, 0xfd | 0xff)
        {
            return Err(RecordDrop::Garbage);
        }
        let header_len = if with_cid {
            RECORD_HEADER_LEN + cid_len
        } else {
            RECORD_HEADER_LEN
        };
        let (Some(&high), Some(&low)) = (rest.get(header_len - 2), rest.get(header_len - 1)) else {
            return Err(RecordDrop::Garbage);
        };
        let length = usize::from(u16::from_be_bytes([high, low]));
        rest = rest.get(header_len + length..).ok_or(RecordDrop::Garbage)?;
        if (content == CONTENT_APPLICATION_DATA || with_cid)
            && header.get(3..5) != Some(&[0, 0][..])
        {
            application += 1;
        }
    }
    Ok(application)
}

/// Runs an engine call that a peer's bytes drive, a panic in it taken as the end of that
/// peer's session rather than of its task, which would leave the peer in the table.
fn guarded<T>(call: impl FnOnce() -> Result<T, dimpl::Error>) -> Result<T, dimpl::Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call))
        .unwrap_or(Err(dimpl::Error::ConnectionClosed))
}

/// The ClientHello that made the peer, as the first one of the exchange: the engine
/// answers it with a HelloVerifyRequest of its own (dropped), after which it takes the
/// real one, message_seq 1, as a client's second ClientHello.
fn as_first_hello(datagram: &[u8]) -> Vec<u8> {
    let mut first = datagram.to_vec();
    // message_seq, in the handshake header after type (1) and length (3).
    let at = RECORD_HEADER_LEN + 4;
    if let Some(seq) = first.get_mut(at..at + 2) {
        seq.copy_from_slice(&[0, 0]);
    }
    first
}

impl<C: DatagramChannel> DtlsChannel<C> {
    /// Runs `step`, a panic in it (the engine's, on a state nobody foresaw) ending the
    /// session rather than the peer's task, which would leave the peer in the table.
    fn contained(&mut self, step: impl FnOnce(&mut Self) -> Flow) -> Flow {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| step(&mut *self))) {
            Ok(flow) => flow,
            Err(_) => {
                tracing::warn!("DTLS session ended by a panic in its engine");
                if matches!(self.phase, Phase::Handshake { .. }) {
                    self.settings
                        .metrics
                        .handshake_failed(HandshakeFailure::Malformed);
                }
                self.engine = None;
                self.lease = None;
                self.phase = Phase::Closed;
                Flow::Close
            }
        }
    }

    /// Closes the session when a reload took its key away since.
    fn revoked(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Option<Flow> {
        if !self.lease.as_ref().is_some_and(KeyLease::revoked) {
            return None;
        }
        self.settings.metrics.session_revoked();
        let identity = self.identity.as_deref().unwrap_or_default();
        tracing::info!(
            identity,
            "DTLS session closed: the key file no longer holds its key"
        );
        Some(self.close(out, now))
    }

    fn receive(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if matches!(self.phase, Phase::Closed) {
            return Flow::Close;
        }
        let cid_len = self.settings.engine.connection_id_len.unwrap_or(0);
        let application = match screen(&datagram, self.settings.max_datagram, cid_len) {
            Ok(application) => application,
            Err(why) => {
                self.settings.metrics.dropped(why, 1);
                // A peer whose first datagram it was has nothing to go on.
                return match self.engine {
                    Some(_) => Flow::Continue,
                    None => self.close(out, now),
                };
            }
        };
        let open = matches!(self.phase, Phase::Open(_));
        let received = self.records_received;
        let flow = self.deliver(datagram, out, now);
        if open {
            let handed = self.records_received.saturating_sub(received);
            let dropped = application.saturating_sub(handed);
            if dropped > 0 {
                self.settings
                    .metrics
                    .dropped(RecordDrop::Undecryptable, dropped);
            }
        }
        flow
    }

    /// Hands a screened datagram to the engine.
    fn deliver(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        if matches!(self.phase, Phase::Open(_)) {
            if let Some(hello) = parse_client_hello(&datagram) {
                if hello.hello_prefix != self.opening.as_slice() {
                    if let Some(jar) = self.restarts.clone() {
                        return self.restarted(&hello, &jar, out, now);
                    }
                }
            }
        }
        if self.engine.is_none() {
            if let Some(hello) = parse_client_hello(&datagram) {
                self.opening = hello.hello_prefix.to_vec();
                // Its sender's second ClientHello: the engine takes it only after a first.
                self.first |= !hello.cookie.is_empty();
            }
            if !self.start(&datagram, now) {
                return self.close(out, now);
            }
        }
        let Some(engine) = self.engine.as_mut() else {
            return self.close(out, now);
        };
        if std::mem::take(&mut self.first) {
            let first = as_first_hello(&datagram);
            let (result, resolved) = resolved_during(|| {
                guarded(|| {
                    engine.handle_timeout(now)?;
                    engine.handle_packet(&first)
                })
            });
            self.note_resolved(resolved);
            if let Err(error) = result {
                return self.fail(&error, out, now);
            }
            let mut dropped = Vec::new();
            self.drain_records(&mut dropped);
        }
        let Some(engine) = self.engine.as_mut() else {
            return self.close(out, now);
        };
        let (result, resolved) = resolved_during(|| {
            guarded(|| {
                // The engine draws its random on its first timer.
                engine.handle_timeout(now)?;
                engine.handle_packet(&datagram)
            })
        });
        self.note_resolved(resolved);
        if let Err(error) = result {
            return self.fail(&error, out, now);
        }
        self.pump(out, now)
    }

    fn timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        match &self.phase {
            Phase::Closed => return Flow::Close,
            Phase::Handshake { deadline, .. } if now >= *deadline => {
                self.settings
                    .metrics
                    .handshake_failed(HandshakeFailure::Timeout);
                tracing::debug!("DTLS handshake timed out");
                return self.close(out, now);
            }
            _ => {}
        }
        if self.engine_deadline.is_some_and(|at| now >= at) {
            self.engine_deadline = None;
            if let Some(engine) = self.engine.as_mut() {
                if let Err(error) = guarded(|| engine.handle_timeout(now)) {
                    return self.fail(&error, out, now);
                }
                if self.pump(out, now) == Flow::Close {
                    return Flow::Close;
                }
            }
        }
        let due = match &self.phase {
            Phase::Open(channel) => channel.next_deadline().is_some_and(|at| now >= at),
            _ => false,
        };
        if due {
            return self.drive_channel(out, now, |channel, plain| {
                channel.handle_timeout(plain, now)
            });
        }
        Flow::Continue
    }
}

impl<C: DatagramChannel> DatagramChannel for DtlsChannel<C> {
    fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        self.contained(|this| match this.revoked(out, now) {
            Some(flow) => flow,
            None => this.receive(datagram, out, now),
        })
    }

    fn handle_wakeup(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        self.contained(|this| match this.revoked(out, now) {
            Some(flow) => flow,
            None => {
                this.drive_channel(out, now, |channel, plain| channel.handle_wakeup(plain, now))
            }
        })
    }

    fn handle_timeout(&mut self, out: &mut Vec<Bytes>, now: Instant) -> Flow {
        self.contained(|this| match this.revoked(out, now) {
            Some(flow) => flow,
            None => this.timeout(out, now),
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        let own = match &self.phase {
            Phase::Handshake { deadline, .. } => Some(*deadline),
            Phase::Open(channel) => channel.next_deadline(),
            Phase::Closed => None,
        };
        match (own, self.engine_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Bytes>) -> Flow {
        let now = Instant::now();
        self.contained(|this| {
            let flow = this.drive_channel(out, now, |channel, plain| channel.shutdown(plain));
            if flow == Flow::Close {
                return Flow::Close;
            }
            this.close(out, now)
        })
    }

    fn handle_closed(&mut self, now: Instant) {
        if let Phase::Open(channel) = &mut self.phase {
            channel.handle_closed(now);
        }
        self.lease = None;
        self.phase = Phase::Closed;
    }

    /// An open session with a connection ID, by that ID.
    fn rebindable_identity(&self) -> Option<Arc<str>> {
        match self.phase {
            Phase::Open(_) => self.cid_identity.clone(),
            _ => None,
        }
    }

    /// RFC 9146 6: the record authenticates under the session's keys and is newer than any
    /// the session received, so neither a forger nor a replay moves the session.
    fn vouch(&mut self, datagram: &Bytes, _from: SocketAddr, _now: Instant) -> bool {
        if !matches!(self.phase, Phase::Open(_)) {
            return false;
        }
        let Some(engine) = self.engine.as_mut() else {
            return false;
        };
        guarded(|| Ok(engine.vouches_for_move(datagram))).unwrap_or(false)
    }

    fn rebound(&mut self, address: SocketAddr) {
        tracing::debug!(old = %self.peer, "DTLS session follows its connection ID to a new address");
        self.peer = address;
        self.moved = true;
        if let Phase::Open(channel) = &mut self.phase {
            channel.rebound(address);
        }
    }

    /// The peer's ClientHello returned the listener's cookie, or its handshake, which
    /// began with the engine's, is done; after a move, only once the channel saw the peer
    /// receive at its new address (DTLS 1.2 has no check of its own).
    fn address_validated(&self) -> bool {
        match &self.phase {
            Phase::Open(channel) if self.moved => channel.address_validated(),
            Phase::Open(_) => true,
            _ => self.proven,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Reload;

    fn client_hello(record_seq: u8, message_seq: u8, cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]); // one suite, null compression
        let len = body.len() as u8;
        let mut hs = vec![CLIENT_HELLO, 0, 0, len, 0, message_seq, 0, 0, 0, 0, 0, len];
        hs.extend_from_slice(&body);
        let mut record = vec![
            CONTENT_HANDSHAKE,
            0xfe,
            0xfd,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            record_seq,
        ];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn cookie_of(reply: &Bytes) -> Vec<u8> {
        // Record and handshake headers, server_version, cookie length.
        reply
            .get(RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 3..)
            .unwrap_or_default()
            .to_vec()
    }

    #[test]
    fn a_hello_without_cookie_gets_a_small_verify_request_echoing_its_record_number() {
        let now = Instant::now();
        let jar = CookieJar::new(now);
        let hello = client_hello(5, 0, &[]);
        let Gate::Verify(reply) = jar.admit(addr(1000), &hello, now) else {
            panic!("no HelloVerifyRequest");
        };
        assert_eq!(reply.len(), 60);
        assert!(reply.len() <= hello.len() * 3);
        assert_eq!(reply.get(5..11), Some(&[0, 0, 0, 0, 0, 5][..]));
        assert_eq!(reply.get(13), Some(&HELLO_VERIFY_REQUEST));
        assert_eq!(cookie_of(&reply).len(), COOKIE_LEN);
    }

    #[test]
    fn the_cookie_admits_its_address_only_and_only_for_two_windows() {
        let now = Instant::now();
        let jar = CookieJar::new(now);
        let Gate::Verify(reply) = jar.admit(addr(1000), &client_hello(0, 0, &[]), now) else {
            panic!("no HelloVerifyRequest");
        };
        let cookie = cookie_of(&reply);
        let second = client_hello(1, 1, &cookie);
        assert_eq!(jar.admit(addr(1000), &second, now), Gate::Proven);
        assert_eq!(
            jar.admit(addr(1000), &second, now + COOKIE_WINDOW),
            Gate::Proven
        );
        // Another port or host, a later window, another random: a new cookie.
        assert!(matches!(
            jar.admit(addr(1001), &second, now),
            Gate::Verify(_)
        ));
        let other_host = SocketAddr::from(([192, 0, 2, 2], 1000));
        assert!(matches!(
            jar.admit(other_host, &second, now),
            Gate::Verify(_)
        ));
        assert!(matches!(
            jar.admit(addr(1000), &second, now + COOKIE_WINDOW * 2),
            Gate::Verify(_)
        ));
        let mut other_random = second.clone();
        if let Some(byte) = other_random.get_mut(RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 2) {
            *byte ^= 1;
        }
        assert!(matches!(
            jar.admit(addr(1000), &other_random, now),
            Gate::Verify(_)
        ));
        // Another listener's key.
        let other = CookieJar::new(now);
        assert!(matches!(
            other.admit(addr(1000), &second, now),
            Gate::Verify(_)
        ));
    }

    #[test]
    fn anything_but_an_unfragmented_client_hello_is_ignored() {
        let now = Instant::now();
        let jar = CookieJar::new(now);
        let hello = client_hello(0, 0, &[]);
        for len in 0..hello.len() {
            assert_eq!(
                jar.admit(addr(1), hello.get(..len).unwrap_or_default(), now),
                Gate::Ignore
            );
        }
        let mut fragment = hello.clone();
        if let Some(byte) = fragment.get_mut(RECORD_HEADER_LEN + 11) {
            *byte -= 1; // fragment_length short of the length
        }
        assert_eq!(jar.admit(addr(1), &fragment, now), Gate::Ignore);
        let mut epoch1 = hello.clone();
        if let Some(byte) = epoch1.get_mut(4) {
            *byte = 1;
        }
        assert_eq!(jar.admit(addr(1), &epoch1, now), Gate::Ignore);
        let mut application = hello.clone();
        if let Some(byte) = application.get_mut(0) {
            *byte = 23;
        }
        assert_eq!(jar.admit(addr(1), &application, now), Gate::Ignore);
        assert_eq!(jar.admit(addr(1), b"\x40\x01\x00\x01", now), Gate::Ignore);
    }

    #[test]
    fn handshakes_are_limited_in_all_and_per_source() {
        let limits = HandshakeLimits::new(3, 2);
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        let first = limits.begin(a);
        let second = limits.begin(a);
        assert!(first.is_some() && second.is_some());
        assert!(!limits.has_room(a));
        assert!(limits.begin(a).is_none());
        let third = limits.begin(b);
        assert!(third.is_some());
        assert!(!limits.has_room(b), "the listener is full");
        drop(first);
        assert!(limits.has_room(a));
        assert_eq!(limits.under_way(), 2);
        drop((second, third));
        assert_eq!(limits.under_way(), 0);
        assert!(limits.state.lock().per_source.is_empty());
    }

    #[test]
    fn the_key_file_splits_at_the_first_colon() {
        let table = PskTable::parse("# devices\ndev1:secret1\n\ndev2:a:b\r\n").unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(b"dev1"), Some(&b"secret1"[..]));
        assert_eq!(table.get(b"dev2"), Some(&b"a:b"[..]));
        assert_eq!(table.get(b"dev3"), None);
        assert_eq!(
            PskTable::parse("dev1\n").err(),
            Some((1, "expected identity:secret"))
        );
        assert!(PskTable::parse("ok:1\n:x\n").is_err_and(|(line, _)| line == 2));
        assert!(PskTable::parse("a:\n").is_err());
        assert!(PskTable::parse("a:1\na:2\n").is_err());
        assert!(!format!("{table:?}").contains("secret1"));
    }

    /// Echoes every datagram, after the identity it was opened with.
    struct Echo {
        identity: Option<Arc<str>>,
        closed: Arc<Mutex<bool>>,
    }

    impl DatagramChannel for Echo {
        fn handle_datagram(&mut self, datagram: Bytes, out: &mut Vec<Bytes>, _: Instant) -> Flow {
            let mut reply = BytesMut::from(self.identity.as_deref().unwrap_or("-").as_bytes());
            reply.put_u8(b'|');
            reply.put_slice(&datagram);
            out.push(reply.freeze());
            Flow::Continue
        }
        fn handle_wakeup(&mut self, _: &mut Vec<Bytes>, _: Instant) -> Flow {
            Flow::Continue
        }
        fn handle_timeout(&mut self, _: &mut Vec<Bytes>, _: Instant) -> Flow {
            Flow::Continue
        }
        fn next_deadline(&self) -> Option<Instant> {
            None
        }
        fn shutdown(&mut self, _: &mut Vec<Bytes>) -> Flow {
            Flow::Close
        }
        fn handle_closed(&mut self, _: Instant) {
            *self.closed.lock() = true;
        }
        fn rebindable_identity(&self) -> Option<Arc<str>> {
            None
        }
        fn vouch(&mut self, _: &Bytes, _: SocketAddr, _: Instant) -> bool {
            false
        }
        fn rebound(&mut self, _: SocketAddr) {}
        fn address_validated(&self) -> bool {
            false
        }
    }

    struct ClientKey(Vec<u8>);

    impl dimpl::PskResolver for ClientKey {
        fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
            Some(self.0.clone())
        }
    }

    fn psk_client(identity: &str, key: &str, now: Instant) -> Dtls {
        psk_client_with(identity, key, now, None)
    }

    /// A client asking for a connection ID of `cid_len` bytes, when given.
    fn psk_client_with(identity: &str, key: &str, now: Instant, cid_len: Option<usize>) -> Dtls {
        let builder = dimpl::Config::builder().with_psk_client(
            identity.as_bytes().to_vec(),
            Arc::new(ClientKey(key.as_bytes().to_vec())),
        );
        let builder = match cid_len {
            Some(len) => builder.dtls12_connection_id_len(len),
            None => builder,
        };
        let config = builder.build().unwrap();
        let mut client = Dtls::new_12_psk(Arc::new(config), now);
        client.set_active(true);
        client.handle_timeout(now).unwrap();
        client
    }

    /// The client's records, and what it received and whether it connected.
    fn poll_client(client: &mut Dtls, received: &mut Vec<Vec<u8>>) -> (Vec<Vec<u8>>, bool) {
        let mut buf = vec![0u8; 4096];
        let mut packets = Vec::new();
        let mut connected = false;
        loop {
            match client.poll_output(&mut buf) {
                Output::Packet(p) => packets.push(p.to_vec()),
                Output::Timeout(_) => break,
                Output::Connected => connected = true,
                Output::ApplicationData(d) => received.push(d.to_vec()),
                _ => {}
            }
        }
        (packets, connected)
    }

    const KEYS: &str = "dev-1:key-one\ndev-2:key-two\n";

    fn psk_settings(stateless: bool, keys: &str) -> DtlsSettings {
        DtlsSettings::new(
            Some(PskTable::parse(keys).unwrap()),
            None,
            16,
            16,
            EngineSettings::new(Duration::from_secs(10), 1200),
            stateless,
        )
        .unwrap()
    }

    struct Run {
        channel: Option<DtlsChannel<Echo>>,
        limits: Arc<HandshakeLimits>,
        closed: Arc<Mutex<bool>>,
        connected: bool,
        received: Vec<Vec<u8>>,
        flow: Flow,
        /// Records the listener answered itself, before any peer.
        stateless_replies: usize,
        client: Dtls,
        now: Instant,
        /// The peer's wake-up, as the listener gives it.
        wakeup: Arc<ConnWakeup>,
    }

    impl Run {
        /// Sends `data` from the client as one record; what the client received back.
        fn send(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
            self.client.send_application_data(data).unwrap();
            let (packets, _) = poll_client(&mut self.client, &mut Vec::new());
            self.deliver(packets)
        }

        /// Hands `datagrams` to the peer, and its answers to the client; the application
        /// data the client received.
        fn deliver(&mut self, datagrams: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
            let channel = self.channel.as_mut().expect("a peer");
            for datagram in datagrams {
                let mut out = Vec::new();
                self.flow = channel.handle_datagram(Bytes::from(datagram), &mut out, self.now);
                for reply in out {
                    let _ = self.client.handle_packet(&reply);
                }
            }
            let mut received = Vec::new();
            poll_client(&mut self.client, &mut received);
            received
        }
    }

    /// A client and a listener's admission and peer, datagrams carried between them
    /// until neither has anything to say; `send` is sent once the client is connected.
    fn handshake(stateless: bool, identity: &str, key: &str, send: &[u8]) -> Run {
        let settings = psk_settings(stateless, KEYS);
        let limits = HandshakeLimits::new(4, 2);
        handshake_on(&settings, &limits, addr(5684), identity, key, send)
    }

    /// The same with a listener's settings and limits, from `from`.
    fn handshake_on(
        settings: &DtlsSettings,
        limits: &Arc<HandshakeLimits>,
        from: SocketAddr,
        identity: &str,
        key: &str,
        send: &[u8],
    ) -> Run {
        let now = Instant::now();
        let client = psk_client(identity, key, now);
        handshake_of(settings, limits, from, client, send, now)
    }

    /// The same with a client of the test's own.
    fn handshake_of(
        settings: &DtlsSettings,
        limits: &Arc<HandshakeLimits>,
        from: SocketAddr,
        client: Dtls,
        send: &[u8],
        now: Instant,
    ) -> Run {
        let demux = DtlsDemux::new(settings, limits.clone(), now);
        let mut run = Run {
            channel: None,
            limits: limits.clone(),
            closed: Arc::new(Mutex::new(false)),
            connected: false,
            received: Vec::new(),
            flow: Flow::Continue,
            stateless_replies: 0,
            client,
            now,
            wakeup: Arc::new(ConnWakeup::default()),
        };
        let (mut to_server, _) = poll_client(&mut run.client, &mut run.received);
        let mut sent = false;
        for _ in 0..20 {
            let mut to_client = Vec::new();
            for datagram in to_server.drain(..) {
                let datagram = Bytes::from(datagram);
                if run.channel.is_none() {
                    match demux.admit(from, &datagram, now) {
                        Admission::Drop => {}
                        Admission::Reply(reply) => {
                            run.stateless_replies += 1;
                            to_client.push(reply);
                        }
                        Admission::Accept => {
                            let closed = run.closed.clone();
                            let open: OpenChannel<Echo> =
                                Box::new(move |identity| Echo { identity, closed });
                            run.channel = Some(
                                DtlsChannel::new(settings, &run.limits, from, open, now)
                                    .with_wakeup(run.wakeup.clone()),
                            );
                        }
                    }
                }
                if let Some(channel) = &mut run.channel {
                    let mut out = Vec::new();
                    run.flow = channel.handle_datagram(datagram, &mut out, now);
                    to_client.extend(out);
                }
            }
            for datagram in to_client {
                if run.client.handle_packet(&datagram).is_err() {
                    return run;
                }
            }
            let (packets, connected) = poll_client(&mut run.client, &mut run.received);
            run.connected |= connected;
            to_server = packets;
            if run.connected && !sent {
                sent = true;
                run.client.send_application_data(send).unwrap();
                to_server.extend(poll_client(&mut run.client, &mut run.received).0);
            }
            if to_server.is_empty() {
                break;
            }
        }
        run
    }

    #[test]
    fn a_client_with_its_key_is_served_under_the_keys_identity() {
        let run = handshake(false, "dev-2", "key-two", b"ping");
        assert!(run.connected);
        assert_eq!(
            run.stateless_replies, 0,
            "the engine asked for its cookie itself"
        );
        assert_eq!(run.received, vec![b"dev-2|ping".to_vec()]);
        assert_eq!(run.flow, Flow::Continue);
        assert_eq!(
            run.limits.under_way(),
            0,
            "the handshake's place is given back"
        );
        assert!(run.channel.is_some_and(|c| c.address_validated()));
    }

    fn cid_settings(cid_len: usize) -> DtlsSettings {
        DtlsSettings::new(
            Some(PskTable::parse(KEYS).unwrap()),
            None,
            16,
            16,
            EngineSettings::new(Duration::from_secs(10), 1200).with_connection_ids(cid_len),
            false,
        )
        .unwrap()
    }

    /// The client's next record of `data`, not handed to the peer.
    fn record_of(client: &mut Dtls, data: &[u8]) -> Bytes {
        client.send_application_data(data).unwrap();
        let (mut packets, _) = poll_client(client, &mut Vec::new());
        assert_eq!(packets.len(), 1);
        Bytes::from(packets.remove(0))
    }

    #[test]
    fn a_session_with_a_connection_id_vouches_only_for_a_fresh_record_of_its_own_client() {
        let settings = cid_settings(8);
        let limits = HandshakeLimits::new(4, 2);
        let now = Instant::now();
        let client = psk_client_with("dev-1", "key-one", now, Some(0));
        let mut run = handshake_of(&settings, &limits, addr(5684), client, b"ping", now);
        assert!(run.connected);
        assert_eq!(run.received, vec![b"dev-1|ping".to_vec()]);
        let channel = run.channel.as_mut().expect("a peer");
        let identity = channel
            .rebindable_identity()
            .expect("named by its connection ID");
        assert!(identity.starts_with("cid:") && identity.len() == 4 + 16);

        let demux = DtlsDemux::new(&settings, limits.clone(), now);
        let fresh = record_of(&mut run.client, b"moved");
        assert_eq!(fresh[0], CONTENT_TLS12_CID);
        assert_eq!(demux.identity(&fresh), Some(identity.clone()));
        let new_address = addr(40000);
        let mut forged = fresh.to_vec();
        *forged.last_mut().unwrap() ^= 1;
        assert!(
            !channel.vouch(&Bytes::from(forged), new_address, now),
            "a forgery"
        );
        let mut other = fresh.to_vec();
        other[RECORD_HEADER_LEN - 2] ^= 1;
        assert!(
            !channel.vouch(&Bytes::from(other), new_address, now),
            "another ID"
        );
        assert!(channel.vouch(&fresh, new_address, now));
        assert!(
            channel.vouch(&fresh, new_address, now),
            "vouching changes nothing"
        );

        channel.rebound(new_address);
        assert!(
            !channel.address_validated(),
            "not yet seen to receive there"
        );
        let mut out = Vec::new();
        assert_eq!(
            channel.handle_datagram(fresh.clone(), &mut out, now),
            Flow::Continue
        );
        assert_eq!(out.len(), 1);
        let mut received = Vec::new();
        run.client.handle_packet(&out[0]).unwrap();
        poll_client(&mut run.client, &mut received);
        assert_eq!(received, vec![b"dev-1|moved".to_vec()]);

        // Once the session has it, the same record is a replay: it moves nothing.
        assert!(!channel.vouch(&fresh, addr(40001), now), "a replay");
        let later = record_of(&mut run.client, b"again");
        assert!(channel.vouch(&later, addr(40001), now));
    }

    #[test]
    fn connection_ids_go_both_ways_and_a_client_without_one_keeps_the_classic_records() {
        let settings = cid_settings(4);
        let limits = HandshakeLimits::new(4, 2);
        let now = Instant::now();
        // The client asks for records carrying an ID of its own, too.
        let client = psk_client_with("dev-2", "key-two", now, Some(6));
        let mut run = handshake_of(&settings, &limits, addr(5684), client, b"ping", now);
        assert!(run.connected);
        assert_eq!(run.received, vec![b"dev-2|ping".to_vec()]);
        let reply = {
            let record = record_of(&mut run.client, b"x");
            let mut out = Vec::new();
            let channel = run.channel.as_mut().unwrap();
            channel.handle_datagram(record, &mut out, now);
            out.remove(0)
        };
        assert_eq!(
            reply[0], CONTENT_TLS12_CID,
            "the gateway's record carries the client's ID"
        );
        assert_eq!(run.client.connection_id().map(<[u8]>::len), Some(6));

        let client = psk_client("dev-2", "key-two", now);
        let mut run = handshake_of(&settings, &limits, addr(5685), client, b"ping", now);
        assert!(run.connected);
        assert_eq!(run.received, vec![b"dev-2|ping".to_vec()]);
        let channel = run.channel.as_mut().unwrap();
        assert_eq!(channel.rebindable_identity(), None);
        let record = record_of(&mut run.client, b"x");
        assert_eq!(record[0], 23);
        assert!(!channel.vouch(&record, addr(40000), now));
    }

    /// Why stateless cookies can be turned off: a client that takes one HelloVerifyRequest
    /// only (this engine's own client does) stops at the engine's, after the listener's.
    /// OpenSSL's and GnuTLS's take both (the interop tests).
    #[test]
    fn a_client_taking_one_verify_request_only_stops_at_the_second() {
        let run = handshake(true, "dev-2", "key-two", b"ping");
        assert_eq!(run.stateless_replies, 1);
        assert!(!run.connected);
        assert!(run.channel.is_some(), "its second ClientHello made a peer");
    }

    /// A device restarted on its port sends a new ClientHello to its open session: it is
    /// asked for a cookie, the session kept, until it returns the cookie; then the session
    /// ends, and the listener admits the same ClientHello as a new peer. A cookie made for
    /// another address, or a late copy of the session's own ClientHello, ends nothing.
    #[test]
    fn a_client_restarting_on_its_address_ends_its_session_by_returning_a_cookie() {
        let now = Instant::now();
        let from = addr(5684);
        let run = handshake(false, "dev-2", "key-two", b"ping");
        assert!(run.connected);
        let jar = Arc::new(CookieJar::new(now));
        let mut channel = run.channel.expect("a session").with_restarts(jar.clone());
        let send = |channel: &mut DtlsChannel<Echo>, hello: &[u8]| {
            let mut out = Vec::new();
            let flow = channel.handle_datagram(Bytes::copy_from_slice(hello), &mut out, now);
            (flow, out)
        };

        let hello = client_hello(0, 0, &[]);
        let (flow, out) = send(&mut channel, &hello);
        assert_eq!(flow, Flow::Continue);
        assert_eq!(out.len(), 1, "one HelloVerifyRequest");
        assert!(out[0].len() <= hello.len());
        assert_eq!(out[0][RECORD_HEADER_LEN], HELLO_VERIFY_REQUEST);
        let cookie = cookie_of(&out[0]);
        assert!(matches!(channel.phase, Phase::Open(_)));

        let Gate::Verify(elsewhere) = jar.admit(addr(9), &hello, now) else {
            panic!("no HelloVerifyRequest");
        };
        let (flow, out) = send(&mut channel, &client_hello(1, 1, &cookie_of(&elsewhere)));
        assert_eq!((flow, out.len()), (Flow::Continue, 1));
        assert!(matches!(channel.phase, Phase::Open(_)));

        // The session's own ClientHello again, even with a valid cookie.
        let opening = channel.opening.clone();
        assert_eq!(opening.len(), 35, "version, random, empty session id");
        let mut copy = client_hello(1, 1, &[]);
        let body = RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN;
        copy[body..body + 35].copy_from_slice(&opening);
        let Gate::Verify(reply) = jar.admit(from, &copy, now) else {
            panic!("no HelloVerifyRequest");
        };
        let mut copy = client_hello(1, 1, &cookie_of(&reply));
        copy[body..body + 35].copy_from_slice(&opening);
        assert_eq!(jar.admit(from, &copy, now), Gate::Proven);
        assert_eq!(send(&mut channel, &copy).0, Flow::Continue);
        assert!(matches!(channel.phase, Phase::Open(_)));
        assert!(!*run.closed.lock());

        let returned = client_hello(1, 1, &cookie);
        let (flow, out) = send(&mut channel, &returned);
        assert_eq!(flow, Flow::Close);
        assert!(out.is_empty(), "nothing the restarted client could read");
        assert!(*run.closed.lock(), "the channel was told");
        assert_eq!(jar.admit(from, &returned, now), Gate::Proven);
    }

    /// With cookies left to the engines, the ClientHello that a restarted client sends
    /// again with the cookie it was asked for (its second, message_seq 1) makes a peer
    /// whose engine answers it, rather than waiting for a first that never comes.
    #[test]
    fn a_peer_made_by_a_client_hello_returning_a_cookie_is_answered_by_its_engine() {
        let now = Instant::now();
        let settings = DtlsSettings::new(
            Some(PskTable::parse("dev-1:key-one\n").unwrap()),
            None,
            4,
            2,
            EngineSettings::new(Duration::from_secs(10), 1200),
            false,
        )
        .unwrap();
        let limits = HandshakeLimits::new(4, 2);
        let open: OpenChannel<Echo> = Box::new(|identity| Echo {
            identity,
            closed: Arc::default(),
        });
        let mut channel = DtlsChannel::new(&settings, &limits, addr(1), open, now);
        let mut out = Vec::new();
        let hello = Bytes::from(client_hello(1, 1, &[9; COOKIE_LEN]));
        assert_eq!(
            channel.handle_datagram(hello, &mut out, now),
            Flow::Continue
        );
        assert_eq!(out.len(), 1, "the engine's HelloVerifyRequest");
        assert_eq!(out[0][RECORD_HEADER_LEN], HELLO_VERIFY_REQUEST);
    }

    #[test]
    fn a_wrong_key_or_an_unknown_identity_opens_no_channel() {
        for (identity, key) in [("dev-1", "key-two"), ("dev-3", "key-one")] {
            let run = handshake(false, identity, key, b"ping");
            assert!(run.received.is_empty(), "{identity}");
            assert!(!*run.closed.lock());
            let channel = run.channel.expect("a peer for the proven ClientHello");
            assert!(
                !matches!(channel.phase, Phase::Open(_)),
                "{identity} with {key} has a channel"
            );
        }
    }

    #[test]
    fn a_handshake_not_done_in_time_ends_and_gives_its_place_back() {
        let now = Instant::now();
        let settings = DtlsSettings::new(
            Some(PskTable::parse("dev-1:key-one\n").unwrap()),
            None,
            1,
            1,
            EngineSettings::new(Duration::from_secs(5), 1200),
            true,
        )
        .unwrap();
        let limits = HandshakeLimits::new(1, 1);
        let jar = CookieJar::new(now);
        let mut client = psk_client("dev-1", "key-one", now);
        let mut received = Vec::new();
        let first = poll_client(&mut client, &mut received).0.remove(0);
        let Gate::Verify(reply) = jar.admit(addr(1), &first, now) else {
            panic!("no HelloVerifyRequest");
        };
        client.handle_packet(&reply).unwrap();
        let second = Bytes::from(poll_client(&mut client, &mut received).0.remove(0));
        assert_eq!(jar.admit(addr(1), &second, now), Gate::Proven);
        let open: OpenChannel<Echo> = Box::new(|identity| Echo {
            identity,
            closed: Arc::default(),
        });
        let mut channel = DtlsChannel::new(&settings, &limits, addr(1), open, now);
        let mut out = Vec::new();
        assert_eq!(
            channel.handle_datagram(second, &mut out, now),
            Flow::Continue
        );
        assert_eq!(out.len(), 1, "the engine's own HelloVerifyRequest");
        assert_eq!(limits.under_way(), 1);
        // A second peer from the same source finds no place and closes at once.
        let open: OpenChannel<Echo> = Box::new(|identity| Echo {
            identity,
            closed: Arc::default(),
        });
        let mut other = DtlsChannel::new(&settings, &limits, addr(2), open, now);
        assert_eq!(
            other.handle_datagram(Bytes::new(), &mut out, now),
            Flow::Close
        );
        // The client goes silent.
        let deadline = channel.next_deadline().expect("a deadline");
        assert!(deadline <= now + Duration::from_secs(5));
        let mut flow = Flow::Continue;
        let mut at = now;
        while flow == Flow::Continue && at <= now + Duration::from_secs(6) {
            at = channel.next_deadline().unwrap_or(at).max(at);
            flow = channel.handle_timeout(&mut Vec::new(), at);
            at += Duration::from_millis(1);
        }
        assert_eq!(flow, Flow::Close);
        assert!(at <= now + Duration::from_secs(5) + Duration::from_millis(10));
        drop(channel);
        assert_eq!(limits.under_way(), 0);
        assert_eq!(count(&settings.metrics().handshakes_failed_timeout), 1);
    }

    #[test]
    fn a_certificate_the_engine_cannot_use_is_refused_at_start() {
        let certificate = ServerCertificate {
            certificate: dimpl::DtlsCertificate {
                certificate: vec![0x30, 0x03, 0x02, 0x01, 0x01],
                private_key: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            },
            clients: ClientCertificates::Ignored,
        };
        let settings = DtlsSettings::new(
            None,
            Some(certificate),
            1,
            1,
            EngineSettings::new(Duration::from_secs(5), 1200),
            true,
        );
        assert!(settings.is_err());
        assert!(matches!(
            DtlsSettings::new(
                None,
                None,
                1,
                1,
                EngineSettings::new(Duration::from_secs(5), 1200),
                true
            ),
            Err(DtlsSetupError::NoCredentials)
        ));
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn credentials(keys: &str) -> Credentials {
        Credentials::new(
            Some(PskTable::parse(keys).unwrap()),
            None,
            EngineSettings::new(Duration::from_secs(10), 1200),
        )
        .unwrap()
    }

    #[test]
    fn every_wrong_key_and_unknown_identity_is_one_credentials_failure() {
        let settings = psk_settings(false, KEYS);
        let limits = HandshakeLimits::new(16, 16);
        for port in 0..5 {
            let run = handshake_on(
                &settings,
                &limits,
                addr(6000 + port),
                "dev-1",
                "key-two",
                b"x",
            );
            assert!(run.received.is_empty());
        }
        for port in 0..3 {
            let run = handshake_on(
                &settings,
                &limits,
                addr(7000 + port),
                "dev-9",
                "key-one",
                b"x",
            );
            assert!(run.received.is_empty());
        }
        let run = handshake_on(&settings, &limits, addr(8000), "dev-2", "key-two", b"ping");
        assert_eq!(run.received, vec![b"dev-2|ping".to_vec()]);
        let metrics = settings.metrics();
        assert_eq!(count(&metrics.handshakes_failed_credentials), 8);
        assert_eq!(count(&metrics.handshakes_completed), 1);
        assert_eq!(count(&metrics.handshakes_failed_timeout), 0);
        assert_eq!(count(&metrics.handshakes_failed_malformed), 0);
        // With stateless cookies off, each peer's engine sent one HelloVerifyRequest.
        assert_eq!(count(&metrics.cookies_sent), 9);
        assert_eq!(limits.under_way(), 0, "every handshake gave its place back");
    }

    #[test]
    fn the_listeners_cookies_and_what_no_session_takes_are_counted() {
        let now = Instant::now();
        let mut settings = psk_settings(true, KEYS);
        settings.max_datagram = 200;
        let demux = DtlsDemux::new(&settings, HandshakeLimits::new(4, 4), now);
        for port in 0..3 {
            let hello = Bytes::from(client_hello(0, 0, &[]));
            assert!(matches!(
                demux.admit(addr(port), &hello, now),
                Admission::Reply(_)
            ));
        }
        for garbage in [&b"\x40\x01\x00\x01"[..], &[0x17, 0xfe, 0xfd, 0, 1], &[]] {
            let garbage = Bytes::copy_from_slice(garbage);
            assert_eq!(demux.admit(addr(9), &garbage, now), Admission::Drop);
        }
        let oversized = Bytes::from(vec![CONTENT_HANDSHAKE; 201]);
        assert_eq!(demux.admit(addr(9), &oversized, now), Admission::Drop);
        // A ClientHello cut short by the read is refused, not answered.
        let mut long_hello = client_hello(0, 0, &[]);
        long_hello.resize(201, 0);
        let long_hello = Bytes::from(long_hello);
        assert_eq!(demux.admit(addr(9), &long_hello, now), Admission::Drop);
        let metrics = settings.metrics();
        assert_eq!(count(&metrics.cookies_sent), 3);
        assert_eq!(count(&metrics.records_dropped_garbage), 3);
        assert_eq!(count(&metrics.records_dropped_oversized), 2);
    }

    #[test]
    fn only_whole_dtls_records_within_the_size_pass_the_screen() {
        let hello = client_hello(0, 0, &[]);
        assert_eq!(screen(&hello, 1000, 0), Ok(0));
        let mut two = hello.clone();
        two.extend_from_slice(&hello);
        assert_eq!(screen(&two, 1000, 0), Ok(0));
        let application = [23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 2, 9, 9];
        assert_eq!(screen(&application, 1000, 0), Ok(1));
        let mut after_hello = hello.clone();
        after_hello.extend_from_slice(&application);
        assert_eq!(screen(&after_hello, 1000, 0), Ok(1));
        // Application data in the clear is not counted as a protected record.
        let clear = [23, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 9];
        assert_eq!(screen(&clear, 1000, 0), Ok(0));
        assert_eq!(
            screen(&hello, hello.len() - 1, 0),
            Err(RecordDrop::Oversized)
        );
        let mut trailing = hello.clone();
        trailing.push(0);
        let mut short = hello.clone();
        short.pop();
        let mut content = hello.clone();
        content[0] = 24;
        let mut version = hello.clone();
        version[2] = 0xfc;
        for (name, bad) in [
            ("empty", Vec::new()),
            ("a trailing byte", trailing),
            ("a record short of its length", short),
            ("an unknown content type", content),
            ("TLS's version", version),
            ("a header alone", hello[..12].to_vec()),
        ] {
            assert_eq!(screen(&bad, 1000, 0), Err(RecordDrop::Garbage), "{name}");
        }
    }

    #[test]
    fn garbage_oversized_and_forged_records_mid_session_are_dropped_and_the_session_goes_on() {
        let mut settings = psk_settings(false, KEYS);
        settings.max_datagram = 300;
        let limits = HandshakeLimits::new(4, 4);
        let mut run = handshake_on(&settings, &limits, addr(1), "dev-1", "key-one", b"first");
        assert_eq!(run.received, vec![b"dev-1|first".to_vec()]);
        let mut past_end = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 50];
        past_end.extend_from_slice(&[0; 20]);
        for garbage in [
            Vec::new(),
            b"\x40\x01\x00\x01".to_vec(),
            vec![0x17, 0xfe, 0xfd, 0, 1],
            past_end,
            vec![0xff; 40],
        ] {
            assert!(run.deliver(vec![garbage]).is_empty());
            assert_eq!(run.flow, Flow::Continue);
        }
        assert!(run.deliver(vec![vec![23; 301]]).is_empty());
        assert_eq!(run.flow, Flow::Continue);
        // A record of the session whose ciphertext was changed on the way.
        run.client.send_application_data(b"forged").unwrap();
        let (mut packets, _) = poll_client(&mut run.client, &mut Vec::new());
        assert_eq!(packets.len(), 1);
        if let Some(byte) = packets[0].last_mut() {
            *byte ^= 0x40;
        }
        assert!(run.deliver(packets).is_empty());
        assert_eq!(run.flow, Flow::Continue);
        assert_eq!(run.send(b"after"), vec![b"dev-1|after".to_vec()]);
        let metrics = settings.metrics();
        assert_eq!(count(&metrics.records_dropped_garbage), 5);
        assert_eq!(count(&metrics.records_dropped_oversized), 1);
        assert_eq!(count(&metrics.records_dropped_undecryptable), 1);
        assert_eq!(count(&metrics.handshakes_completed), 1);
        assert!(!*run.closed.lock());
    }

    #[test]
    fn a_reload_serves_new_keys_and_closes_the_sessions_of_keys_it_removed_or_changed() {
        let settings = psk_settings(false, KEYS);
        let limits = HandshakeLimits::new(8, 8);
        let mut one = handshake_on(&settings, &limits, addr(1), "dev-1", "key-one", b"a");
        let mut two = handshake_on(&settings, &limits, addr(2), "dev-2", "key-two", b"b");
        assert_eq!(one.received, vec![b"dev-1|a".to_vec()]);
        assert_eq!(two.received, vec![b"dev-2|b".to_vec()]);
        assert_eq!(settings.credentials.leases(), 2);

        // dev-1 removed, dev-2 kept as it was, dev-3 added.
        let revoked = settings
            .credentials
            .replace(credentials("dev-2:key-two\ndev-3:key-three\n"));
        assert_eq!(revoked, 1);
        // The idle session's task is woken to close it now.
        let wakeup = one.wakeup.clone();
        let mut woken = std::pin::pin!(wakeup.woken());
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(woken.as_mut(), &mut context).is_ready());
        let mut out = Vec::new();
        let channel = one.channel.as_mut().unwrap();
        assert_eq!(channel.handle_wakeup(&mut out, one.now), Flow::Close);
        assert!(*one.closed.lock(), "the channel behind it is told");
        assert_eq!(out.len(), 1, "a close_notify");
        assert_eq!(two.send(b"still"), vec![b"dev-2|still".to_vec()]);
        assert_eq!(settings.credentials.leases(), 1);

        // New handshakes: the removed key is refused, the added one served.
        let refused = handshake_on(&settings, &limits, addr(3), "dev-1", "key-one", b"x");
        assert!(refused.received.is_empty());
        let three = handshake_on(&settings, &limits, addr(4), "dev-3", "key-three", b"c");
        assert_eq!(three.received, vec![b"dev-3|c".to_vec()]);

        // dev-2's key changed: its session is closed at its next datagram too.
        assert_eq!(
            settings
                .credentials
                .replace(credentials("dev-2:new-two\ndev-3:key-three\n")),
            1
        );
        assert!(two.send(b"late").is_empty());
        assert_eq!(two.flow, Flow::Close);
        let metrics = settings.metrics();
        assert_eq!(count(&metrics.sessions_revoked), 2);
        assert_eq!(count(&metrics.handshakes_failed_credentials), 1);
        drop((one, two));
        assert_eq!(settings.credentials.leases(), 1, "dev-3's");
    }

    #[test]
    fn a_reload_during_a_handshake_revokes_the_key_it_was_begun_with() {
        let cell = CredentialCell::new(credentials(KEYS));
        let kept = cell.lease(b"dev-1", b"key-one", None);
        let stale = cell.lease(b"dev-2", b"old-two", None);
        assert!(!kept.revoked());
        assert!(stale.revoked(), "its key is not the table's");
        assert_eq!(cell.leases(), 2);
        drop((kept, stale));
        assert_eq!(cell.leases(), 0);
    }

    #[test]
    fn a_broken_key_file_keeps_the_keys_in_use_and_says_which_file_and_line() {
        let dir = std::env::temp_dir().join(format!("dtls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("psk.txt");
        std::fs::write(&file, "dev-1:key-one\n").unwrap();
        let options = gateway_config::DtlsOptions {
            psk_file: Some(file.clone()),
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: gateway_config::TlsVerify::None,
        };
        let settings = DtlsSettings::new(
            Some(PskTable::load(&file).unwrap()),
            None,
            4,
            4,
            EngineSettings::new(Duration::from_secs(10), 1200),
            false,
        )
        .unwrap();
        let reloader = settings.reloader(&options, Arc::from("coap:dtls:test"));
        assert_eq!(Reload::watched_files(&reloader), vec![file.clone()]);
        let in_use = |identity: &[u8]| {
            let current = settings.credentials.current();
            current
                .psk
                .as_ref()
                .and_then(|psk| psk.table.get(identity).map(<[u8]>::to_vec))
        };

        std::fs::write(&file, "dev-1:key-one\ndev-2 without a secret\n").unwrap();
        let error = Reload::reload(&reloader).unwrap_err();
        assert!(error.contains(&file.display().to_string()), "{error}");
        assert!(error.contains("line 2"), "{error}");
        assert_eq!(in_use(b"dev-1"), Some(b"key-one".to_vec()));

        std::fs::write(&file, "# no keys left\n").unwrap();
        assert!(Reload::reload(&reloader).is_err());
        std::fs::remove_file(&file).unwrap();
        let error = Reload::reload(&reloader).unwrap_err();
        assert!(error.contains("cannot read"), "{error}");
        assert_eq!(in_use(b"dev-1"), Some(b"key-one".to_vec()));

        // A certificate that is not PEM: named, and the keys stay.
        std::fs::write(&file, "dev-2:key-two\n").unwrap();
        let cert = dir.join("cert.pem");
        std::fs::write(&cert, "broken").unwrap();
        let with_cert = gateway_config::DtlsOptions {
            certfile: Some(cert.clone()),
            keyfile: Some(cert.clone()),
            ..options.clone()
        };
        let broken = settings.reloader(&with_cert, Arc::from("coap:dtls:test"));
        let error = Reload::reload(&broken).unwrap_err();
        assert!(error.contains(&cert.display().to_string()), "{error}");
        assert_eq!(in_use(b"dev-2"), None);

        assert_eq!(reloader.reload().unwrap(), 0);
        assert_eq!(in_use(b"dev-1"), None);
        assert_eq!(in_use(b"dev-2"), Some(b"key-two".to_vec()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
