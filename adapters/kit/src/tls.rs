//! TLS with rustls: server configuration from the listener's files, the handshake, and the
//! record layer as a [`SocketStream`].

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_config::{PeerCertField, TlsConfig, TlsVerify, TlsVersion};
use mqtt_core::protocol::CertificateIdentity;
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection, WebPkiClientVerifier};
use rustls::RootCertStore;
use tokio::net::TcpStream;

use crate::layered::{is_would_block, wait_for_progress, SocketStream};

/// Why a listener's TLS settings cannot be used; each names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: not PEM: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("verify = {verify} needs cacertfile, the CA that signs client certificates")]
    NoCa { verify: &'static str },
    #[error("unknown cipher suite {0:?} (rustls names, e.g. TLS13_AES_128_GCM_SHA256)")]
    UnknownCipher(String),
    #[error("no cipher suite left for the configured TLS versions")]
    NoUsableCipher,
    #[error("certificate {} and key {} do not form a usable pair: {source}", cert.display(), key.display())]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsSetupError {
    /// The key of `settings` at fault (`certfile`, `ciphers`), when one is.
    pub fn setting(&self, settings: &TlsConfig) -> Option<&'static str> {
        let file = |path: &Path| {
            let is = |candidate: &Option<PathBuf>| candidate.as_deref() == Some(path);
            if is(&settings.certfile) {
                Some("certfile")
            } else if is(&settings.keyfile) {
                Some("keyfile")
            } else if is(&settings.cacertfile) {
                Some("cacertfile")
            } else {
                None
            }
        };
        match self {
            TlsSetupError::Read { path, .. } | TlsSetupError::BadPem { path, .. } => file(path),
            TlsSetupError::NoCertificate { .. } => Some("certfile"),
            TlsSetupError::NoKey { .. } => Some("keyfile"),
            TlsSetupError::BadCa { .. } | TlsSetupError::NoCa { .. } => Some("cacertfile"),
            TlsSetupError::UnknownCipher(_) | TlsSetupError::NoUsableCipher => Some("ciphers"),
            TlsSetupError::SelfSigned(_) => Some("self_signed"),
            // A certificate and key that do not match: neither alone is at fault.
            TlsSetupError::Pair { .. } | TlsSetupError::Rustls(_) => None,
        }
    }
}

/// A listener's server configuration, replaceable while it runs: a reload affects the
/// connections accepted after it.
pub struct TlsAcceptor {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    /// Reads and checks every file now, so a bad one stops start-up.
    pub fn new(settings: &TlsConfig, alpn: &[&str]) -> Result<TlsAcceptor, TlsSetupError> {
        let config = server_config_with_alpn(settings, alpn)?;
        Ok(TlsAcceptor {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again; on error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let alpn = self.current.read().alpn_protocols.clone();
        let mut config = server_config(&self.settings)?;
        config.alpn_protocols = alpn;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// The files this configuration is read from (none for a self-signed one).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let s = &self.settings;
        [&s.certfile, &s.keyfile, &s.cacertfile]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The user name and client id the verified client certificate of `stream` gives, as
    /// `peer_cert_as_username` and `peer_cert_as_clientid` say.
    pub fn certificate_identity(&self, stream: &TlsStream) -> CertificateIdentity {
        certificate_identity(&self.settings, stream.peer_certificates())
    }

    /// Runs the server side of the handshake; the caller bounds it in time.
    pub async fn accept(&self, socket: TcpStream) -> io::Result<TlsStream> {
        let config = self.current.read().clone();
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = TlsStream {
            socket: Arc::new(socket),
            conn,
            blocked_on_write: false,
        };
        loop {
            match stream.handshake_step() {
                Ok(true) => return Ok(stream),
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_for_progress(&stream).await?
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The server configuration of `settings` offering these ALPN protocols, for a transport
/// that runs the TLS handshake itself (QUIC). Reads and checks every file now.
pub fn server_config_with_alpn(
    settings: &TlsConfig,
    alpn: &[&str],
) -> Result<ServerConfig, TlsSetupError> {
    let mut config = server_config(settings)?;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

/// The user name and client id a verified client certificate chain (leaf first) gives, as
/// `peer_cert_as_username` and `peer_cert_as_clientid` of `settings` say.
pub fn certificate_identity(
    settings: &TlsConfig,
    chain: Option<&[CertificateDer<'static>]>,
) -> CertificateIdentity {
    let Some(leaf) = chain.and_then(|chain| chain.first()) else {
        return CertificateIdentity::default();
    };
    CertificateIdentity {
        username: certificate_field(leaf, settings.peer_cert_as_username),
        client_id: certificate_field(leaf, settings.peer_cert_as_clientid),
    }
}

/// The subject's common name of a certificate.
pub(crate) fn certificate_common_name(der: &CertificateDer<'_>) -> Option<String> {
    certificate_field(der, PeerCertField::Cn)
}

/// One field of a certificate rustls has verified; None when it lacks the field.
fn certificate_field(der: &CertificateDer<'_>, field: PeerCertField) -> Option<String> {
    if field == PeerCertField::None {
        return None;
    }
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    match field {
        PeerCertField::None => None,
        PeerCertField::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        PeerCertField::Dn => Some(cert.subject().to_string()),
        PeerCertField::San => {
            let san = cert.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(s)
                | x509_parser::extensions::GeneralName::RFC822Name(s)
                | x509_parser::extensions::GeneralName::URI(s) => Some((*s).to_owned()),
                _ => None,
            })
        }
    }
}

fn server_config(settings: &TlsConfig) -> Result<ServerConfig, TlsSetupError> {
    let provider = Arc::new(provider(settings)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = settings
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tlsv12 => &rustls::version::TLS12,
            TlsVersion::Tlsv13 => &rustls::version::TLS13,
        })
        .collect();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match settings.verify {
        TlsVerify::None => builder.with_no_client_auth(),
        verify => {
            let name = if verify == TlsVerify::Optional {
                "optional"
            } else {
                "required"
            };
            let path = settings
                .cacertfile
                .as_deref()
                .ok_or(TlsSetupError::NoCa { verify: name })?;
            let roots = Arc::new(read_roots(path)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = if verify == TlsVerify::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsSetupError::BadCa {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let (chain, key, cert_path, key_path) = match (&settings.certfile, &settings.keyfile) {
        (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?, cert.clone(), key.clone()),
        _ => {
            let (chain, key) = self_signed()?;
            (chain, key, "self-signed".into(), "self-signed".into())
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsSetupError::Pair {
            cert: cert_path,
            key: key_path,
            source,
        })
}

fn provider(settings: &TlsConfig) -> Result<CryptoProvider, TlsSetupError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !settings.ciphers.is_empty() {
        let mut chosen = Vec::new();
        for name in &settings.ciphers {
            let suite = rustls::crypto::ring::ALL_CIPHER_SUITES
                .iter()
                .find(|s| s.suite().as_str() == Some(name.as_str()))
                .ok_or_else(|| TlsSetupError::UnknownCipher(name.clone()))?;
            chosen.push(*suite);
        }
        provider.cipher_suites = chosen;
    }
    let usable = provider.cipher_suites.iter().any(|suite| {
        settings.versions.iter().any(|v| match v {
            TlsVersion::Tlsv12 => suite.version() == &rustls::version::TLS12,
            TlsVersion::Tlsv13 => suite.version() == &rustls::version::TLS13,
        })
    });
    if !usable {
        return Err(TlsSetupError::NoUsableCipher);
    }
    Ok(provider)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsSetupError::NoKey {
            path: path.to_owned(),
        },
        e => TlsSetupError::BadPem {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

pub(crate) fn read_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| TlsSetupError::BadCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let names = vec!["localhost".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsSetupError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| TlsSetupError::SelfSigned(e.to_owned()))?;
    Ok((vec![certified.cert.der().clone()], key))
}

/// TLS records over the socket; plaintext through `Read` and `Write`.
pub struct TlsStream {
    socket: Arc<TcpStream>,
    conn: ServerConnection,
    blocked_on_write: bool,
}

struct SocketIo<'a> {
    socket: &'a TcpStream,
    blocked_on_write: &'a mut bool,
}

impl Read for SocketIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.socket.try_read(buf);
        if is_would_block(&read) {
            *self.blocked_on_write = false;
        }
        read
    }
}

impl Write for SocketIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.socket.try_write(buf);
        if is_would_block(&written) {
            *self.blocked_on_write = true;
        }
        written
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    /// The client's certificate chain, leaf first, when it sent one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    fn io(&mut self) -> (SocketIo<'_>, &mut ServerConnection) {
        (
            SocketIo {
                socket: &self.socket,
                blocked_on_write: &mut self.blocked_on_write,
            },
            &mut self.conn,
        )
    }

    /// True once the handshake is complete.
    fn handshake_step(&mut self) -> io::Result<bool> {
        self.flush_records()?;
        if !self.conn.is_handshaking() {
            return Ok(true);
        }
        if self.read_records()? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(false)
    }

    fn flush_records(&mut self) -> io::Result<()> {
        let (mut io, conn) = self.io();
        while conn.wants_write() {
            if conn.write_tls(&mut io)? == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }

    /// Reads records from the socket and decrypts them; `Ok(0)` at the end of the stream.
    fn read_records(&mut self) -> io::Result<usize> {
        let (mut io, conn) = self.io();
        let read = conn.read_tls(&mut io)?;
        if let Err(error) = conn.process_new_packets() {
            // Tell the peer why (the alert is queued), then fail the connection.
            let _ = self.flush_records();
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
        Ok(read)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                // The peer closed without close_notify: for MQTT that is just a close.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.read_records()? == 0 {
                return Ok(0);
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_records()?;
        let accepted = self.conn.writer().write(buf)?;
        if accepted == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.flush_records() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(accepted),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}

impl SocketStream for TlsStream {
    fn socket(&self) -> &Arc<TcpStream> {
        &self.socket
    }
    fn blocked_on_write(&self) -> bool {
        self.blocked_on_write
    }
    fn has_buffered_output(&self) -> bool {
        self.conn.wants_write()
    }
    /// The peer learns that nothing was cut short: its TLS stack reports a clean end,
    /// not a truncation. rustls queues the alert only once, however often this is retried.
    fn end_output(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_records()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(certfile: &Path, keyfile: &Path) -> TlsConfig {
        TlsConfig {
            certfile: Some(certfile.to_owned()),
            keyfile: Some(keyfile.to_owned()),
            cacertfile: None,
            verify: TlsVerify::None,
            versions: vec![TlsVersion::Tlsv13, TlsVersion::Tlsv12],
            ciphers: Vec::new(),
            self_signed: false,
            peer_cert_as_username: PeerCertField::None,
            peer_cert_as_clientid: PeerCertField::None,
        }
    }

    fn setting_at_fault(settings: &TlsConfig) -> Option<&'static str> {
        match TlsAcceptor::new(settings, &[]) {
            Ok(_) => panic!("{settings:?} was accepted"),
            Err(error) => error.setting(settings),
        }
    }

    /// Start-up errors name the one key to fix, whichever file it is.
    #[test]
    fn a_setup_error_names_the_setting_at_fault() {
        let dir = std::env::temp_dir().join(format!("tls-setting-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key, garbage) = (dir.join("c.pem"), dir.join("k.pem"), dir.join("g.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        std::fs::write(&garbage, "not PEM\n").unwrap();
        let missing = dir.join("missing.pem");

        assert!(TlsAcceptor::new(&settings(&cert, &key), &[]).is_ok());
        assert_eq!(
            setting_at_fault(&settings(&missing, &key)),
            Some("certfile")
        );
        assert_eq!(
            setting_at_fault(&settings(&garbage, &key)),
            Some("certfile")
        );
        assert_eq!(
            setting_at_fault(&settings(&cert, &missing)),
            Some("keyfile")
        );
        assert_eq!(
            setting_at_fault(&settings(&cert, &garbage)),
            Some("keyfile")
        );
        let mut bad_ca = settings(&cert, &key);
        bad_ca.verify = TlsVerify::Required;
        bad_ca.cacertfile = Some(missing.clone());
        assert_eq!(setting_at_fault(&bad_ca), Some("cacertfile"));
        let mut bad_cipher = settings(&cert, &key);
        bad_cipher.ciphers = vec!["TLS_NO_SUCH_SUITE".into()];
        assert_eq!(setting_at_fault(&bad_cipher), Some("ciphers"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
