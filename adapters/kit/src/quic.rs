//! MQTT over QUIC with quinn: the endpoint, the handshake up to the one bidirectional
//! stream that carries the MQTT session (what EMQX's and NanoSDK's clients open), and that
//! stream as the driver's [`Transport`].
//!
//! EMQX's multi-stream mode (extra streams for data) is not supported: a connection may
//! open one bidirectional stream and no unidirectional one, so QUIC flow control keeps a
//! client from opening more.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use gateway_config::{TlsConfig, TlsVerify};
use mqtt_core::protocol::CertificateIdentity;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;

use crate::stream::read_through_scratch;
use crate::tls::{certificate_identity, server_config_with_alpn, TlsSetupError};
use crate::{Acceptor, Transport};

/// The ALPN protocol of MQTT over QUIC, as EMQX names it.
pub const ALPN_MQTT: &str = "mqtt";

/// How long a closing connection waits for the peer to acknowledge the last bytes (a
/// DISCONNECT, say) before it closes anyway: closing drops data not yet delivered.
const CLOSE_LINGER: Duration = Duration::from_secs(3);

/// The error code of a connection the gateway closes: no error, the MQTT session is over.
const CLOSE_NO_ERROR: VarInt = VarInt::from_u32(0);

/// Why a QUIC listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("the TLS settings leave out TLS13_AES_128_GCM_SHA256 or TLS 1.3, which QUIC needs")]
    NoInitialSuite,
    #[error("cannot listen: {0}")]
    Bind(#[source] io::Error),
}

/// What a QUIC listener is made of, besides its address.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    pub tls: TlsConfig,
    /// QUIC's own idle timeout.
    pub idle_timeout: Duration,
    pub enable_0rtt: bool,
}

impl QuicSettings {
    /// Reads the certificate files and makes the configuration as binding does, without
    /// binding.
    pub fn check(&self) -> Result<(), QuicSetupError> {
        server_config(self).map(drop)
    }
}

/// A bound QUIC endpoint serving MQTT.
pub struct QuicListener {
    endpoint: Endpoint,
    settings: Arc<QuicSettings>,
}

impl QuicListener {
    /// Reads the certificate files and binds the UDP socket; must run inside the runtime.
    pub fn bind(addr: SocketAddr, settings: QuicSettings) -> Result<QuicListener, QuicSetupError> {
        let config = server_config(&settings)?;
        let endpoint = Endpoint::server(config, addr).map_err(QuicSetupError::Bind)?;
        Ok(QuicListener {
            endpoint,
            settings: Arc::new(settings),
        })
    }

    /// The endpoint, to wait on it at shutdown (closing connections send their last packets
    /// through it) or to swap its certificate.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A handle that reloads this listener's certificate files.
    pub fn reloader(&self) -> QuicReloader {
        QuicReloader {
            endpoint: self.endpoint.clone(),
            settings: self.settings.clone(),
        }
    }
}

/// Re-reads a QUIC listener's certificate files; connections accepted afterwards get them.
pub struct QuicReloader {
    endpoint: Endpoint,
    settings: Arc<QuicSettings>,
}

impl QuicReloader {
    /// Reads the files again; on error the configuration in use stays.
    pub fn reload(&self) -> Result<(), QuicSetupError> {
        self.endpoint
            .set_server_config(Some(server_config(&self.settings)?));
        Ok(())
    }

    /// The files the configuration is read from (none for a self-signed one).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let s = &self.settings.tls;
        [&s.certfile, &s.keyfile, &s.cacertfile]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

fn server_config(settings: &QuicSettings) -> Result<quinn::ServerConfig, QuicSetupError> {
    let mut tls = server_config_with_alpn(&settings.tls, &[ALPN_MQTT])?;
    // QUIC allows only these two values: early data refused, or taken whole.
    tls.max_early_data_size = if settings.enable_0rtt { u32::MAX } else { 0 };
    let crypto =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|_| QuicSetupError::NoInitialSuite)?;
    // A timeout longer than QUIC can express (2^62 ms) is as good as none.
    let idle = IdleTimeout::try_from(settings.idle_timeout).ok();
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(idle)
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

impl Acceptor for QuicListener {
    type Conn = QuicIncoming;

    async fn accept(&self) -> io::Result<(QuicIncoming, SocketAddr)> {
        let incoming = self
            .endpoint
            .accept()
            .await
            .ok_or_else(|| io::Error::other("QUIC endpoint closed"))?;
        let peer = incoming.remote_address();
        Ok((
            QuicIncoming {
                incoming,
                settings: self.settings.clone(),
            },
            peer,
        ))
    }
}

/// A client's first packet, before the handshake. Dropping it refuses the connection.
pub struct QuicIncoming {
    incoming: quinn::Incoming,
    settings: Arc<QuicSettings>,
}

/// Why a QUIC connection did not get as far as its MQTT stream.
#[derive(Debug, thiserror::Error)]
pub enum QuicAcceptError {
    #[error("QUIC handshake failed: {0}")]
    Handshake(#[from] quinn::ConnectionError),
}

impl QuicIncoming {
    /// Runs the handshake and waits for the client to open its stream; the caller bounds it
    /// in time.
    pub async fn establish(self) -> Result<QuicStream, QuicAcceptError> {
        let connecting = self.incoming.accept()?;
        // Served before the handshake completes (0.5-RTT), the stream carries the client's
        // early data at once; but a client certificate is only checked at completion, so a
        // listener that verifies them waits for it (early data is still taken, buffered).
        let early = self.settings.enable_0rtt && self.settings.tls.verify == TlsVerify::None;
        let connection = if early {
            // On the server side the conversion always succeeds.
            match connecting.into_0rtt() {
                Ok((connection, _)) => connection,
                Err(connecting) => connecting.await?,
            }
        } else {
            connecting.await?
        };
        let (send, recv) = connection.accept_bi().await?;
        let identity = certificate_identity(
            &self.settings.tls,
            connection
                .peer_identity()
                .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
                .as_deref()
                .map(Vec::as_slice),
        );
        Ok(QuicStream {
            peer: connection.remote_address(),
            connection,
            send,
            recv,
            identity,
        })
    }
}

/// The bidirectional stream that carries one MQTT session.
pub struct QuicStream {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The client's address as last seen, to notice when the connection migrates.
    peer: SocketAddr,
    identity: CertificateIdentity,
}

impl QuicStream {
    /// The user name and client id the client certificate gives, as the TLS settings say.
    pub fn certificate_identity(&self) -> CertificateIdentity {
        self.identity.clone()
    }

    /// Ends the stream, lets the client acknowledge what is still in flight (for a while at
    /// most), then closes the connection.
    pub async fn close(&mut self) {
        // Already finished when the driver shut the stream down after the channel closed;
        // `stopped` returns at once for a stream that was reset or a connection that is lost.
        let _ = self.send.finish();
        let _ = tokio::time::timeout(CLOSE_LINGER, self.send.stopped()).await;
        self.connection.close(CLOSE_NO_ERROR, b"");
    }

    fn note_migration(&mut self) {
        let now = self.connection.remote_address();
        if now != self.peer {
            tracing::info!(from = %self.peer, to = %now, "QUIC connection migrated");
            self.peer = now;
        }
    }
}

impl Transport for QuicStream {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let recv = &mut self.recv;
        let read = read_through_scratch(buf, |scratch| {
            recv.poll_read(cx, scratch).map_err(io::Error::from)
        });
        match read {
            Poll::Ready(Ok(n)) if n > 0 => self.note_migration(),
            // quinn looked at what the connection received and found nothing for us.
            Poll::Pending => crate::stream::note_empty_read(),
            _ => {}
        }
        read
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(io::Error::from)
    }

    fn poll_shutdown(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.finish().map_err(io::Error::from))
    }

    /// Input left unread destroys nothing in QUIC, and `close` already waits for the
    /// client to acknowledge the last bytes before it closes the connection.
    fn drains_before_close(&self) -> bool {
        false
    }
}
