//! The files a configuration names, read as start-up reads them: `gateway config check`
//! fails on a file that would stop start-up, naming its key, and start-up names the key of
//! an `[auth]` file it cannot use in the same words.

use adapter_kit::dtls::DtlsSettings;
use adapter_kit::quic::{QuicSettings, QuicSetupError};
use adapter_kit::tls::TlsAcceptor;
use adapter_kit::{NamedListener, StartError};
use anyhow::{anyhow, Error};
use gateway_config::{AuthConfig, Config, ListenerFiles};
use mqtt_core::auth::{AclFile, AuthError, AuthFiles, PasswordFile};

/// Reads the password and ACL files of `[auth]`; an error names the key of the file at
/// fault.
pub fn load_auth(auth: &AuthConfig) -> Result<AuthFiles, Error> {
    AuthFiles::load(auth).map_err(|error| auth_error(auth, error))
}

fn auth_error(auth: &AuthConfig, error: AuthError) -> Error {
    let key = match error.path() {
        Some(path) if auth.acl_file.as_deref() == Some(path) => "auth.acl_file",
        _ => "auth.password_file",
    };
    anyhow!(error).context(key)
}

/// Every file of `config` that start-up could not use, each error naming its key and, in
/// its source, the file: the password and ACL files, the certificates, keys and CA files of
/// the TLS, QUIC and DTLS listeners that would start, their pre-shared key files, and the
/// LwM2M object definitions of `xml_dir`, the admin API's keys. Each is read with the code start-up reads it with.
/// The store is not opened: a running gateway holds it.
pub fn unusable_files(config: &Config) -> Vec<Error> {
    let mut problems = Vec::new();
    let auth = &config.auth;
    if let Some(path) = auth.password_file.as_deref() {
        if let Err(error) = PasswordFile::load(path) {
            problems.push(auth_error(auth, error));
        }
    }
    if let Some(path) = auth.acl_file.as_deref() {
        if let Err(error) = AclFile::load(path, auth.acl_format, auth.acl_no_match) {
            problems.push(auth_error(auth, error));
        }
    }
    for listener in config.all_listeners().iter().filter(|l| l.starts) {
        let named = NamedListener::new(listener.kind, listener.name);
        let read = match listener.files {
            ListenerFiles::None => Ok(()),
            ListenerFiles::Tls(tls) => TlsAcceptor::new(tls, &[])
                .map(drop)
                .map_err(|source| named.tls_error(tls, source)),
            ListenerFiles::Quic(quic) => QuicSettings {
                tls: quic.tls.clone(),
                idle_timeout: quic.effective_idle_timeout(&config.mqtt),
                enable_0rtt: quic.enable_0rtt,
            }
            .check()
            .map_err(|source| match source {
                QuicSetupError::Tls(source) => named.tls_error(&quic.tls, source),
                source => StartError::Setting {
                    key: named.tls_key(),
                    source: Box::new(source),
                },
            }),
            ListenerFiles::Dtls(dtls) => DtlsSettings::from_config(&named, dtls).map(drop),
        };
        if let Err(error) = read {
            problems.push(error.into());
        }
    }
    if config.gateway.lwm2m.enable {
        if let Err(error) = adapter_lwm2m::object_registry(&config.gateway.lwm2m) {
            problems.push(error.into());
        }
    }
    if let Some(path) = config.banned.bootstrap_file.as_deref() {
        match gateway::admin::banned_file::read(path, std::time::SystemTime::now()) {
            Ok(bans) if bans.len() > config.banned.max_entries as usize => {
                problems.push(anyhow::anyhow!(
                    "banned.bootstrap_file: {} holds {} bans, more than banned.max_entries ({})",
                    path.display(),
                    bans.len(),
                    config.banned.max_entries
                ));
            }
            Ok(_) => {}
            Err(error) => {
                problems.push(Error::new(error).context("banned.bootstrap_file"));
            }
        }
    }
    if config.dashboard.listeners.http.enable {
        if let Some(path) = config.api_key.bootstrap_file.as_deref() {
            if let Err(error) = gateway::admin::keys::ApiKeys::load(path) {
                problems.push(gateway::admin::AdminError::Keys(error).into());
            }
        }
    }
    problems
}

/// `error` and its causes on one line, each cause after a colon, but a cause its error
/// already quotes at its end (`cannot read FILE: REASON` and then REASON) only once.
pub fn one_line(error: &Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
