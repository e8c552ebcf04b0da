//! A DTLS listener's credentials, read from its files and replaced whole when they are read
//! again (on SIGHUP, or when a file changes, as the TLS listeners' certificates are): new
//! handshakes take the credentials current when they begin; sessions keep the engine they
//! were made with. A session made with a pre-shared key holds a lease naming its identity
//! and secret, and a reload after which the listener no longer accepts that pair (the
//! identity removed, or given another secret) closes the session: a key taken out of the
//! file is revoked, not merely refused to the next handshake. A session made with a
//! certificate is not checked again; it lasts until it ends.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dimpl::Dtls;
use gateway_config::DtlsOptions;
use mqtt_core::session::Wakeup;
use parking_lot::{Mutex, RwLock};

use super::{ClientCertificates, DtlsSetupError, PskCredentials, PskTable, ServerCertificate};
use crate::launch::Reload;
use crate::ConnWakeup;

/// What every engine of a listener is configured with besides its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// A handshake not done by then is given up, its peer forgotten.
    pub handshake_timeout: Duration,
    /// The largest datagram the engine sends.
    pub mtu: usize,
    /// The length of the connection ID (RFC 9146) the listener gives a client that offers
    /// the extension, so that the client keeps its session when its address changes; None:
    /// the extension is not negotiated.
    pub connection_id_len: Option<usize>,
}

impl EngineSettings {
    pub fn new(handshake_timeout: Duration, mtu: usize) -> EngineSettings {
        EngineSettings {
            handshake_timeout,
            mtu,
            connection_id_len: None,
        }
    }

    pub fn with_connection_ids(self, len: usize) -> EngineSettings {
        EngineSettings {
            connection_id_len: Some(len),
            ..self
        }
    }

    pub(super) fn builder(&self) -> dimpl::ConfigBuilder {
        let builder = dimpl::Config::builder()
            .handshake_timeout(self.handshake_timeout)
            .mtu(self.mtu);
        match self.connection_id_len {
            Some(len) => builder.dtls12_connection_id_len(len),
            None => builder,
        }
    }

    /// Bytes a protected record adds to its content: header, explicit nonce, tag, and the
    /// connection ID with the inner content type when one is in use.
    pub fn record_overhead(&self) -> usize {
        super::RECORD_OVERHEAD + self.connection_id_len.map_or(0, |len| len + 1)
    }
}

/// What a listener authenticates with, as read at one time.
pub(super) struct Credentials {
    pub(super) psk: Option<PskCredentials>,
    pub(super) certificate: Option<Arc<ServerCertificate>>,
    /// The engine's configuration for certificate handshakes, shared by every peer.
    pub(super) certificate_config: Option<Arc<dimpl::Config>>,
}

impl Credentials {
    /// Pre-shared keys, a server certificate, or both, checked now so that no peer's
    /// engine can fail on them later.
    pub(super) fn new(
        psk: Option<PskTable>,
        certificate: Option<ServerCertificate>,
        engine: EngineSettings,
    ) -> Result<Credentials, DtlsSetupError> {
        let psk = psk
            .map(|table| PskCredentials::new(table, engine))
            .transpose()?;
        let certificate = match certificate {
            Some(certificate) => {
                let config = probe_certificate(&certificate, engine)?;
                Some((certificate, config))
            }
            None => None,
        };
        Credentials::assemble(psk, certificate)
    }

    /// Keys made ready and a certificate already probed, its engine configuration beside it.
    fn assemble(
        psk: Option<PskCredentials>,
        certificate: Option<(ServerCertificate, Arc<dimpl::Config>)>,
    ) -> Result<Credentials, DtlsSetupError> {
        if psk.is_none() && certificate.is_none() {
            return Err(DtlsSetupError::NoCredentials);
        }
        let (certificate, certificate_config) = match certificate {
            Some((certificate, config)) => (Some(Arc::new(certificate)), Some(config)),
            None => (None, None),
        };
        Ok(Credentials {
            psk,
            certificate,
            certificate_config,
        })
    }

    /// The credentials `options` names, every file read now; an error names the file at
    /// fault (and the line, in the key file).
    pub(super) fn read(
        options: &DtlsOptions,
        engine: EngineSettings,
    ) -> Result<Credentials, DtlsSetupError> {
        let psk = options
            .psk_file
            .as_deref()
            .map(PskTable::load)
            .transpose()?
            .map(|table| PskCredentials::new(table, engine))
            .transpose()?;
        let certificate = match (&options.certfile, &options.keyfile) {
            (Some(cert), Some(key)) => {
                let certificate = ServerCertificate::load(
                    cert,
                    key,
                    options.verify,
                    options.cacertfile.as_deref(),
                )?;
                // Probed here rather than in `new`, to say which files hold what the
                // engine refused.
                let config = probe_certificate(&certificate, engine).map_err(|error| {
                    DtlsSetupError::Pair {
                        cert: cert.display().to_string(),
                        key: key.display().to_string(),
                        reason: error.to_string(),
                    }
                })?;
                Some((certificate, config))
            }
            _ => None,
        };
        Credentials::assemble(psk, certificate)
    }
}

/// The engine's configuration for certificate handshakes with `certificate`. The engine
/// reads the key when a peer's engine is made, and panics on one it cannot use (RSA, say):
/// one is made now, so that no peer's can fail.
fn probe_certificate(
    certificate: &ServerCertificate,
    engine: EngineSettings,
) -> Result<Arc<dimpl::Config>, DtlsSetupError> {
    let require = !matches!(certificate.clients, ClientCertificates::Ignored);
    let config = engine
        .builder()
        .require_client_certificate(require)
        .build()
        .map_err(|error| DtlsSetupError::Engine(error.to_string()))?;
    let config = Arc::new(config);
    let pair = certificate.certificate.clone();
    let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut engine = Dtls::new_12(config.clone(), pair, Instant::now());
        engine.handle_timeout(Instant::now())
    }));
    match probe {
        Ok(Ok(())) => Ok(config),
        Ok(Err(error)) => Err(DtlsSetupError::Certificate(error.to_string())),
        Err(_) => Err(DtlsSetupError::Certificate(
            "the key is not an ECDSA P-256 or P-384 key".into(),
        )),
    }
}

/// The credentials in use, and the sessions made with a key.
pub(super) struct CredentialCell {
    current: RwLock<Arc<Credentials>>,
    sessions: Mutex<HashMap<u64, KeySession>>,
    next_session: AtomicU64,
}

impl std::fmt::Debug for CredentialCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current();
        f.debug_struct("CredentialCell")
            .field("psk", &current.psk)
            .field("certificate", &current.certificate.is_some())
            .field("key_sessions", &self.sessions.lock().len())
            .finish()
    }
}

/// A session made with a pre-shared key, as a reload checks it.
struct KeySession {
    identity: Box<[u8]>,
    secret: Box<[u8]>,
    revoked: Arc<AtomicBool>,
    /// Wakes the session's task, so an idle session closes at the reload, not at its
    /// next datagram.
    wakeup: Option<Arc<ConnWakeup>>,
}

impl CredentialCell {
    pub(super) fn new(credentials: Credentials) -> Arc<CredentialCell> {
        Arc::new(CredentialCell {
            current: RwLock::new(Arc::new(credentials)),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
        })
    }

    pub(super) fn current(&self) -> Arc<Credentials> {
        self.current.read().clone()
    }

    /// Puts `credentials` in use and revokes the sessions whose key they no longer hold;
    /// returns how many.
    pub(super) fn replace(&self, credentials: Credentials) -> usize {
        let credentials = Arc::new(credentials);
        *self.current.write() = credentials.clone();
        let sessions = self.sessions.lock();
        let mut revoked = 0;
        for session in sessions.values() {
            if !accepts(&credentials, &session.identity, &session.secret)
                && !session.revoked.swap(true, Ordering::AcqRel)
            {
                revoked += 1;
                if let Some(wakeup) = &session.wakeup {
                    wakeup.wake();
                }
            }
        }
        revoked
    }

    /// Registers a session made with `identity` and `secret`, revoked at once when the
    /// credentials were replaced during its handshake and hold that key no more.
    pub(super) fn lease(
        self: &Arc<Self>,
        identity: &[u8],
        secret: &[u8],
        wakeup: Option<Arc<ConnWakeup>>,
    ) -> KeyLease {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let revoked = Arc::new(AtomicBool::new(false));
        let mut sessions = self.sessions.lock();
        // Checked under the sessions' lock: a replacement either is seen here or sees
        // this session.
        if !accepts(&self.current(), identity, secret) {
            revoked.store(true, Ordering::Release);
        }
        sessions.insert(
            id,
            KeySession {
                identity: identity.into(),
                secret: secret.into(),
                revoked: revoked.clone(),
                wakeup,
            },
        );
        KeyLease {
            cell: self.clone(),
            id,
            revoked,
        }
    }

    #[cfg(test)]
    pub(super) fn leases(&self) -> usize {
        self.sessions.lock().len()
    }
}

fn accepts(credentials: &Credentials, identity: &[u8], secret: &[u8]) -> bool {
    credentials
        .psk
        .as_ref()
        .and_then(|psk| psk.table.get(identity))
        .is_some_and(|current| current == secret)
}

/// A session's place among those a reload checks, given up when dropped.
pub(super) struct KeyLease {
    cell: Arc<CredentialCell>,
    id: u64,
    revoked: Arc<AtomicBool>,
}

impl KeyLease {
    pub(super) fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        self.cell.sessions.lock().remove(&self.id);
    }
}

/// Reads a DTLS listener's files again; on error the credentials in use stay.
pub struct DtlsReloader {
    cell: Arc<CredentialCell>,
    options: DtlsOptions,
    engine: EngineSettings,
    listener: Arc<str>,
}

impl DtlsReloader {
    pub(super) fn new(
        cell: Arc<CredentialCell>,
        options: DtlsOptions,
        engine: EngineSettings,
        listener: Arc<str>,
    ) -> DtlsReloader {
        DtlsReloader {
            cell,
            options,
            engine,
            listener,
        }
    }

    /// Reads the files again and puts what they hold in use; returns how many sessions
    /// that revoked.
    pub fn reload(&self) -> Result<usize, DtlsSetupError> {
        let credentials = Credentials::read(&self.options, self.engine)?;
        let revoked = self.cell.replace(credentials);
        if revoked > 0 {
            tracing::info!(
                listener = %self.listener,
                revoked,
                "DTLS sessions closing: the key file no longer holds their key"
            );
        }
        Ok(revoked)
    }
}

impl Reload for DtlsReloader {
    fn reload(&self) -> Result<(), String> {
        DtlsReloader::reload(self)
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    fn watched_files(&self) -> Vec<PathBuf> {
        let o = &self.options;
        [&o.psk_file, &o.certfile, &o.keyfile, &o.cacertfile]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn what(&self) -> &'static str {
        "DTLS credentials"
    }
}
