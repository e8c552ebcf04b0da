//! Authentication and authorization hooks shared by every protocol adapter.
//!
//! Both hooks are synchronous and know nothing of the protocol on the wire: an adapter fills
//! a [`ClientInfo`] once per connection, asks [`Authenticator::authenticate`] at connect, and
//! [`Authorizer::authorize`] before each publish and each subscription.
//!
//! # Password file
//!
//! One `username:hash` per line; blank lines and lines starting with `#` are ignored. The hashes
//! are those of Mosquitto's `mosquitto_passwd`, so its files work unchanged and ours work in
//! Mosquitto:
//!
//! - `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512, 64-byte hash;
//! - `$6$<salt>$<hash>`: SHA512 over the password bytes followed by the salt bytes.
//!
//! - `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>`: Argon2id (RFC 9106) in the
//!   PHC string form of the reference implementation, as Mosquitto 2.1's `mosquitto_passwd`
//!   writes it (by default m=47104, t=1, p=1, a 64-byte salt and a 64-byte hash).
//!
//! Salt and hash are standard base64, padded or not. New hashes ([`hash_password`]) are `$7$`
//! with a 12-byte salt (the length every Mosquitto release reads) and [`PBKDF2_ITERATIONS`].
//! Argon2id costs are bounded ([`MAX_ARGON2_MEMORY_KIB`], [`MAX_ARGON2_PASSES`],
//! [`MAX_ARGON2_LANES`]): every CONNECT of that user pays them, so a line asking for more is
//! refused at load like any malformed line. Other Argon2 variants (`$argon2i$`, `$argon2d$`)
//! and versions other than 19 are refused.
//!
//! # ACL file
//!
//! Ordered rules, one per line, `#` comments; the first rule that matches decides, and when
//! none does `auth.acl_no_match` decides. Fields are separated by whitespace:
//!
//! ```text
//! <allow|deny> <who> <publish|subscribe|all> <topic-filter> [<topic-filter> ...]
//! ```
//!
//! - `who`: `all`, `user:NAME`, `client:ID`, `ip:ADDR` or `ip:ADDR/PREFIX` (IPv4 or IPv6; an
//!   IPv4-mapped IPv6 peer matches IPv4 rules).
//! - A rule matches when its `who` and action match and any one of its filters matches.
//! - `%u` and `%c` in a filter are replaced by the username and the client id before matching.
//!   A rule that needs `%u` never matches a client without a username, and a rule that needs
//!   either never matches a value that is empty or contains `/`, `+` or `#`: such a value would
//!   widen the rule to topics of other clients (a username `+` turning `users/%u/#` into
//!   `users/+/#`).
//! - A filter written `eq:TEXT` matches only the exact string `TEXT`; wildcards in it are
//!   literal.
//! - Publish: the topic name must match the filter. Subscribe: the requested filter must be
//!   covered by the rule's filter, i.e. every topic it can match is matched by the rule
//!   (`sensors/#` covers `sensors/+/temp`; `sensors/+` does not cover `sensors/#`). For a shared
//!   subscription the caller passes the filter without its `$share/GROUP/` prefix.
//! - Wildcards at the first level never match topics starting with `$`, as in MQTT routing, so
//!   `$SYS/#` must be granted by name.
//! - Topic filters cannot contain whitespace in this format.
//!
//! Without an ACL file the rule list is empty and `auth.acl_no_match` decides everything.
//!
//! With `auth.acl_format = "mosquitto"` the ACL file is Mosquitto's instead, decided as
//! Mosquitto decides; see [`MosquittoAcl`].
//!
//! # Reloading
//!
//! [`AuthFiles`] holds both files as read last and reads either again on demand: a file
//! that reads and parses replaces the one in force whole, one that does not changes
//! nothing. The next CONNECT is checked against the users in force then, the next publish
//! or subscription against the rules; nothing already admitted is checked again (a
//! connected client whose user was removed keeps its connection and its session, and a
//! subscription made under rules since changed keeps receiving), as in Mosquitto and EMQX.
//! A check reads the files in force once, without a lock, so a reload never waits for
//! clients and clients never wait for a reload.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytestring::ByteString;
use gateway_config::{AclFormat, AclNoMatch, AuthConfig, IpNet};
use rand::Rng as _;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;

use crate::mountpoint::Mountpoint;

mod mosquitto_acl;
pub use mosquitto_acl::MosquittoAcl;

/// PBKDF2 iterations for hashes we create.
///
/// Every CONNECT with a username verifies one hash on the async runtime, so this is a cost
/// paid per connection, not once per login session as on a website. Measured with the release
/// profile on the 2-core development machine: 101 (Mosquitto 2.0's default) ≈ 0.06 ms, 1 000
/// ≈ 0.56 ms, 10 000 ≈ 5.8 ms per verify. 1 000 is ten times Mosquitto's work factor against
/// an offline attack on a leaked file while a reconnect storm of 10 000 devices costs about
/// 6 s of one core, and a runtime worker is held about half a millisecond per CONNECT.
/// OWASP's 210 000 would cost ~120 ms per CONNECT, which a broker cannot afford; the defence
/// that matters here is high-entropy device credentials.
pub const PBKDF2_ITERATIONS: u32 = 1_000;

/// Largest Argon2id memory cost accepted in a password file, KiB (256 MiB): 5.5 times
/// Mosquitto's default. Each CONNECT of such a user holds that much memory while it hashes.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 256 * 1024;
/// Largest Argon2id pass count accepted in a password file.
pub const MAX_ARGON2_PASSES: u32 = 16;
/// Largest Argon2id lane count accepted in a password file; lanes are hashed one after the
/// other here, so they cost time as passes do.
pub const MAX_ARGON2_LANES: u32 = 16;
// RFC 9106's minimum tag length, and a bound well above any generator's.
const ARGON2_HASH_LEN: std::ops::RangeInclusive<usize> = 4..=128;
const ARGON2_MAX_SALT_LEN: usize = 128;

const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;
// Anything more is a corrupt or hostile file: it would stall every CONNECT of that user.
const MAX_ITERATIONS: u32 = 10_000_000;

// Some generators drop base64 padding; OpenSSL, which Mosquitto uses, accepts both.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Who is asking, as every adapter can describe it.
#[derive(Clone)]
pub struct ClientInfo {
    /// `"mqtt"`, `"mqtt-sn"`, `"coap"`, `"lwm2m"`, `"stomp"`.
    pub protocol: &'static str,
    /// The listener name from the config, e.g. `"default"`.
    /// Shared with the listener's settings: every connection names the same listener.
    pub listener: Arc<str>,
    /// Shared with the session key.
    pub client_id: Arc<str>,
    pub username: Option<String>,
    pub peer: Option<SocketAddr>,
    /// The listener's mountpoint resolved for this client: its topics as the router sees them.
    pub mountpoint: Option<Mountpoint>,
}

impl ClientInfo {
    /// The topic as the router knows it.
    pub fn mount(&self, topic: &str) -> ByteString {
        match &self.mountpoint {
            Some(mountpoint) => mountpoint.mount(topic),
            None => ByteString::from(topic),
        }
    }

    /// [`mount`](Self::mount) for a topic held as shared bytes: the same bytes, not a
    /// copy, when there is no mountpoint.
    pub fn mount_shared(&self, topic: &ByteString) -> ByteString {
        match &self.mountpoint {
            Some(mountpoint) => mountpoint.mount(topic),
            None => topic.clone(),
        }
    }

    /// A routed topic as this client knows it, sharing the routed topic's bytes.
    pub fn unmount(&self, topic: &ByteString) -> ByteString {
        match &self.mountpoint {
            Some(mountpoint) => topic.slice_ref(mountpoint.unmount(topic)),
            None => topic.clone(),
        }
    }
}

impl fmt::Debug for ClientInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInfo")
            .field("protocol", &self.protocol)
            .field("listener", &self.listener)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("peer", &self.peer)
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Unknown user or wrong password.
    BadCredentials,
    /// The credentials may be fine but this client may not connect (e.g. anonymous).
    NotAuthorized,
    /// The credentials were not checked: as many costly password checks as
    /// `auth.max_costly_password_checks` allows are running. The client may retry.
    Busy,
}

impl DenyReason {
    /// CONNACK reason code of MQTT 5.
    pub const fn mqtt5_reason_code(self) -> u8 {
        match self {
            DenyReason::BadCredentials => 0x86,
            DenyReason::NotAuthorized => 0x87,
            DenyReason::Busy => 0x89,
        }
    }

    /// CONNACK return code of MQTT 3.1 and 3.1.1.
    pub const fn mqtt3_return_code(self) -> u8 {
        match self {
            DenyReason::BadCredentials => 4,
            DenyReason::NotAuthorized => 5,
            DenyReason::Busy => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Allow,
    Deny(DenyReason),
}

pub trait Authenticator: Send + Sync {
    /// The password is handed over for the check only, never kept with the client: a
    /// `ClientInfo` lives as long as its session and is logged.
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthOutcome;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish { qos: u8, retain: bool },
    Subscribe { qos: u8 },
}

pub trait Authorizer: Send + Sync {
    /// `topic` is the topic name for a publish, the filter (without `$share/GROUP/`) for a
    /// subscription.
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool;
}

/// The pair of hooks a broker is built with.
#[derive(Clone)]
pub struct Auth {
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// Reads the password and ACL files the config names, once; [`AuthFiles`] reads them
    /// again on demand.
    pub fn from_config(cfg: &AuthConfig) -> Result<Auth, AuthError> {
        Ok(Arc::new(AuthFiles::load(cfg)?).auth())
    }

    pub fn allow_all() -> Auth {
        Auth {
            authenticator: Arc::new(AllowAll),
            authorizer: Arc::new(AllowAll),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid username {0:?}: it must be non-empty, must not start with '#' and must not contain ':' or control characters")]
    InvalidUsername(String),
    #[error("empty password")]
    EmptyPassword,
}

impl AuthError {
    /// The file at fault, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            AuthError::Read { path, .. }
            | AuthError::Write { path, .. }
            | AuthError::Syntax { path, .. } => Some(path),
            AuthError::InvalidUsername(_) | AuthError::EmptyPassword => None,
        }
    }
}

/// Lets everyone connect, publish and subscribe.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _client: &ClientInfo, _password: Option<&[u8]>) -> AuthOutcome {
        AuthOutcome::Allow
    }
}

impl Authorizer for AllowAll {
    fn authorize(&self, _client: &ClientInfo, _action: Action, _topic: &str) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Passwords

#[derive(Debug, Clone, PartialEq, Eq)]
enum PasswordHash {
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    Argon2id {
        params: argon2::Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("expected $7$<iterations>$<salt>$<hash>".into());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|n| (1..=MAX_ITERATIONS).contains(n))
                .ok_or_else(|| format!("iterations must be 1..={MAX_ITERATIONS}"))?;
            Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else if let Some(rest) = text.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("expected $6$<salt>$<hash>".into());
            };
            Ok(PasswordHash::Sha512 {
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else if let Some(rest) = text.strip_prefix("$argon2id$") {
            parse_argon2id(rest)
        } else if text.starts_with("$argon2") {
            Err("only the argon2id variant of Argon2 is supported".into())
        } else {
            Err("not a $7$ (PBKDF2-SHA512), $6$ (SHA512) or $argon2id$ hash; plain-text passwords are not accepted".into())
        }
    }

    /// What one check of this hash costs, roughly in microseconds of one core (measured
    /// with the release profile: PBKDF2-SHA512 about 0.56 µs per iteration, Argon2id about
    /// 1 µs per KiB and pass). Only compared with [`COSTLY_CHECK_MICROS`].
    fn cost_micros(&self) -> u64 {
        match self {
            PasswordHash::Sha512 { .. } => 1,
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => u64::from(*iterations) * 56 / 100,
            PasswordHash::Argon2id { params, .. } => {
                u64::from(params.m_cost()) * u64::from(params.t_cost())
            }
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        let (expected, computed) = match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut hasher = Sha512::new();
                hasher.update(password);
                hasher.update(salt);
                let digest: [u8; HASH_LEN] = hasher.finalize().into();
                (hash, digest)
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; HASH_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                (hash, out)
            }
            PasswordHash::Argon2id { params, salt, hash } => {
                let mut out = vec![0u8; hash.len()];
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params.clone(),
                );
                // Parameters were checked at load; a failure here (out of memory for the
                // blocks) refuses the login rather than crash the broker.
                if argon.hash_password_into(password, salt, &mut out).is_err() {
                    return false;
                }
                return bool::from(hash.as_slice().ct_eq(&out));
            }
        };
        bool::from(expected.ct_eq(&computed))
    }

    fn encode(&self) -> String {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", STANDARD.encode(salt), STANDARD.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                STANDARD.encode(salt),
                STANDARD.encode(hash)
            ),
            PasswordHash::Argon2id { params, salt, hash } => format!(
                "$argon2id$v=19$m={},t={},p={}${}${}",
                params.m_cost(),
                params.t_cost(),
                params.p_cost(),
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(salt),
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
            ),
        }
    }
}

/// `rest` is what follows `$argon2id$`: `v=19$m=..,t=..,p=..$salt$hash`.
fn parse_argon2id(rest: &str) -> Result<PasswordHash, String> {
    const SHAPE: &str = "expected $argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>";
    let mut parts = rest.split('$');
    let (Some(version), Some(costs), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(SHAPE.into());
    };
    if version != "v=19" {
        return Err(format!(
            "argon2id version {version:?} is not supported, only v=19"
        ));
    }
    let (mut m, mut t, mut p) = (None, None, None);
    for cost in costs.split(',') {
        let Some((key, value)) = cost.split_once('=') else {
            return Err(SHAPE.into());
        };
        let slot = match key {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return Err(format!("unknown argon2id parameter {key:?}; {SHAPE}")),
        };
        if slot.is_some() {
            return Err(format!("argon2id parameter {key:?} given twice"));
        }
        let value: u32 = value
            .parse()
            .map_err(|_| format!("argon2id parameter {key}={value:?} is not a number"))?;
        *slot = Some(value);
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return Err(SHAPE.into());
    };
    if !(1..=MAX_ARGON2_PASSES).contains(&t) {
        return Err(format!(
            "argon2id t={t}: passes must be 1..={MAX_ARGON2_PASSES}"
        ));
    }
    if !(1..=MAX_ARGON2_LANES).contains(&p) {
        return Err(format!(
            "argon2id p={p}: lanes must be 1..={MAX_ARGON2_LANES}"
        ));
    }
    if m > MAX_ARGON2_MEMORY_KIB || m < 8 * p {
        return Err(format!(
            "argon2id m={m}: memory must be 8*p..={MAX_ARGON2_MEMORY_KIB} KiB"
        ));
    }
    let salt = LENIENT_B64
        .decode(salt)
        .map_err(|e| format!("salt is not base64: {e}"))?;
    if !(8..=ARGON2_MAX_SALT_LEN).contains(&salt.len()) {
        return Err(format!(
            "argon2id salt is {} bytes, expected 8..={ARGON2_MAX_SALT_LEN}",
            salt.len()
        ));
    }
    let hash = LENIENT_B64
        .decode(hash)
        .map_err(|e| format!("hash is not base64: {e}"))?;
    if !ARGON2_HASH_LEN.contains(&hash.len()) {
        return Err(format!(
            "argon2id hash is {} bytes, expected {}..={}",
            hash.len(),
            ARGON2_HASH_LEN.start(),
            ARGON2_HASH_LEN.end()
        ));
    }
    let params = argon2::Params::new(m, t, p, Some(hash.len()))
        .map_err(|e| format!("argon2id parameters refused: {e}"))?;
    Ok(PasswordHash::Argon2id { params, salt, hash })
}

fn decode_salt(b64: &str) -> Result<Vec<u8>, String> {
    let salt = LENIENT_B64
        .decode(b64)
        .map_err(|e| format!("salt is not base64: {e}"))?;
    if salt.is_empty() {
        return Err("empty salt".into());
    }
    Ok(salt)
}

fn decode_hash(b64: &str) -> Result<[u8; HASH_LEN], String> {
    let bytes = LENIENT_B64
        .decode(b64)
        .map_err(|e| format!("hash is not base64: {e}"))?;
    let len = bytes.len();
    <[u8; HASH_LEN]>::try_from(bytes)
        .map_err(|_| format!("hash is {len} bytes, expected {HASH_LEN}"))
}

fn hash_with(password: &[u8], iterations: u32) -> PasswordHash {
    let mut salt = vec![0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    let mut hash = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
    PasswordHash::Pbkdf2Sha512 {
        iterations,
        salt,
        hash,
    }
}

/// A new `$7$` hash of `password` with a random salt, as written by `gateway passwd`.
pub fn hash_password(password: &str) -> String {
    hash_with(password.as_bytes(), PBKDF2_ITERATIONS).encode()
}

/// Checks `password` against one encoded hash (`$7$...` or `$6$...`); `false` for a hash that
/// does not parse.
pub fn verify_password(encoded: &str, password: &[u8]) -> bool {
    PasswordHash::parse(encoded).is_ok_and(|h| h.verify(password))
}

fn check_username(username: &str) -> Result<(), AuthError> {
    let bad = username.is_empty()
        || username.starts_with('#')
        || username.chars().any(|c| c == ':' || c.is_control());
    if bad {
        Err(AuthError::InvalidUsername(username.to_owned()))
    } else {
        Ok(())
    }
}

/// Where a username sits in a password file line, if the line is a user entry.
fn line_username(line: &str) -> Option<&str> {
    let trimmed = line.trim_end();
    if trimmed.trim_start().is_empty() || trimmed.trim_start().starts_with('#') {
        return None;
    }
    trimmed.split_once(':').map(|(user, _)| user)
}

/// Sets `username`'s password in `file`: replaces that user's line, appends one if the user is
/// new, creates the file if missing, and leaves every other line (comments included) as it
/// was. The file is replaced atomically; a new file is readable by its owner only.
pub fn add_user(file: &Path, username: &str, password: &str) -> Result<(), AuthError> {
    check_username(username)?;
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AuthError::Read {
                path: file.to_owned(),
                source,
            })
        }
    };
    let entry = format!("{username}:{}", hash_password(password));

    let mut out = String::new();
    let mut replaced = false;
    for line in existing.as_deref().unwrap_or("").lines() {
        if line_username(line) == Some(username) {
            // A second line for the same user would make the file fail to load; keep one.
            if !replaced {
                out.push_str(&entry);
                out.push('\n');
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&entry);
        out.push('\n');
    }

    let write_err = |source| AuthError::Write {
        path: file.to_owned(),
        source,
    };
    let tmp = temp_path(file);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        restrict_permissions(&f, file)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if result.is_err() {
        // Best effort: the original file is untouched either way.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

fn temp_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

#[cfg(unix)]
fn restrict_permissions(tmp: &std::fs::File, original: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // Keep the mode an operator chose for an existing file; a new one holds hashes, so 0600.
    let mode = std::fs::metadata(original)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o600);
    tmp.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict_permissions(_tmp: &std::fs::File, _original: &Path) -> std::io::Result<()> {
    Ok(())
}

/// The users of a password file.
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
    /// The costliest hash of the file, checked for a user the file does not name, so that
    /// the time an answer takes does not tell which user names exist (beyond which users
    /// have cheaper hashes than the costliest). `None` for an empty file.
    decoy: Option<PasswordHash>,
}

/// Checks of a password hash costing at least this (see `PasswordHash::cost_micros`) hold a
/// runtime worker long enough to count against `auth.max_costly_password_checks`; Mosquitto
/// 2.0's `$7$` hashes (101 iterations) and `gateway passwd`'s (1,000) cost less.
pub const COSTLY_CHECK_MICROS: u64 = 1_000;

/// How many costly password checks may run at once. A check runs on the thread of the
/// connection that asked, holding a runtime worker (and, for Argon2id, its memory cost) until
/// it ends; without a bound, clients naming a user with a costly hash (a known user name is
/// enough, with any password) could hold every worker and stall every other client.
/// One over the bound is refused as busy at once rather than queued, since queueing would
/// hold a worker too.
#[derive(Debug)]
pub struct CostlyChecks {
    running: AtomicUsize,
    limit: usize,
}

impl CostlyChecks {
    pub fn new(limit: usize) -> CostlyChecks {
        CostlyChecks {
            running: AtomicUsize::new(0),
            limit,
        }
    }

    /// A permit to run one costly check, or `None` when `limit` are running.
    fn begin(&self) -> Option<CostlyCheck<'_>> {
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < self.limit).then_some(running + 1)
            })
            .ok()
            .map(|_| CostlyCheck(self))
    }
}

/// One costly check running; the slot is given back when dropped.
struct CostlyCheck<'a>(&'a CostlyChecks);

impl Drop for CostlyCheck<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch,
    /// Not checked: the check is costly and [`CostlyChecks`] had no room for it.
    Busy,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish()
    }
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(&text, path)
    }

    /// `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<PasswordFile, AuthError> {
        let mut users = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let syntax = |message: String| AuthError::Syntax {
                path: path.to_owned(),
                line: line_no,
                message,
            };
            let trimmed = line.trim_end();
            if trimmed.trim_start().is_empty() || trimmed.trim_start().starts_with('#') {
                continue;
            }
            let Some((user, hash)) = trimmed.split_once(':') else {
                return Err(syntax("expected username:hash".into()));
            };
            if user.is_empty() {
                return Err(syntax("empty username".into()));
            }
            let hash = PasswordHash::parse(hash).map_err(&syntax)?;
            if let Some(first) = first_line.get(user) {
                return Err(syntax(format!(
                    "user {user:?} is already defined on line {first}"
                )));
            }
            first_line.insert(user.to_owned(), line_no);
            users.insert(user.to_owned(), hash);
        }
        let decoy = users
            .values()
            .max_by_key(|hash| hash.cost_micros())
            .cloned();
        Ok(PasswordFile { users, decoy })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// `false` for an unknown user too, after the work of the file's costliest hash, so
    /// that response time does not tell which usernames exist. Never refused as busy: for
    /// tools and tests; connections go through [`PasswordFile::check`].
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.check(username, password, &CostlyChecks::new(usize::MAX)) == Verdict::Match
    }

    /// [`PasswordFile::verify`], with the costly checks bounded by `costly`.
    pub fn check(&self, username: &str, password: &[u8], costly: &CostlyChecks) -> Verdict {
        let (hash, known) = match (self.users.get(username), &self.decoy) {
            (Some(hash), _) => (hash, true),
            (None, Some(decoy)) => (decoy, false),
            (None, None) => return Verdict::Mismatch,
        };
        let _permit = if hash.cost_micros() >= COSTLY_CHECK_MICROS {
            match costly.begin() {
                Some(permit) => Some(permit),
                None => return Verdict::Busy,
            }
        } else {
            None
        };
        if hash.verify(password) && known {
            Verdict::Match
        } else {
            Verdict::Mismatch
        }
    }
}

/// Username/password check against an optional password file, plus the anonymous policy.
#[derive(Debug)]
pub struct PasswordAuthenticator {
    users: Option<PasswordFile>,
    allow_anonymous: bool,
    costly: CostlyChecks,
}

impl PasswordAuthenticator {
    /// Without a password file, usernames and passwords are not checked. Costly checks
    /// are bounded as by default ([`DEFAULT_COSTLY_PASSWORD_CHECKS`]).
    pub fn new(users: Option<PasswordFile>, allow_anonymous: bool) -> Self {
        PasswordAuthenticator {
            users,
            allow_anonymous,
            costly: CostlyChecks::new(DEFAULT_COSTLY_PASSWORD_CHECKS),
        }
    }
}

/// `auth.max_costly_password_checks` by default: one runtime worker at most hashing.
pub const DEFAULT_COSTLY_PASSWORD_CHECKS: usize = 1;

impl Authenticator for PasswordAuthenticator {
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthOutcome {
        check_credentials(
            self.users.as_ref(),
            self.allow_anonymous,
            &self.costly,
            client,
            password,
        )
    }
}

/// The anonymous policy, then `users` (when there is a password file) on the credentials.
fn check_credentials(
    users: Option<&PasswordFile>,
    allow_anonymous: bool,
    costly: &CostlyChecks,
    client: &ClientInfo,
    password: Option<&[u8]>,
) -> AuthOutcome {
    let Some(username) = client.username.as_deref() else {
        // MQTT 5 allows a password without a username; it proves nothing on its own.
        return if allow_anonymous {
            AuthOutcome::Allow
        } else {
            AuthOutcome::Deny(DenyReason::NotAuthorized)
        };
    };
    let Some(users) = users else {
        return AuthOutcome::Allow;
    };
    // A missing password is checked like an empty one: same timing as a wrong one, and
    // no stored hash can be of the empty password since `add_user` refuses it.
    match users.check(username, password.unwrap_or_default(), costly) {
        Verdict::Match if password.is_some() => AuthOutcome::Allow,
        Verdict::Busy => AuthOutcome::Deny(DenyReason::Busy),
        Verdict::Match | Verdict::Mismatch => AuthOutcome::Deny(DenyReason::BadCredentials),
    }
}

// ---------------------------------------------------------------------------------------------
// The files of `[auth]`, reloadable

/// The password file and the ACL file of `[auth]` in force, each replaced whole when read
/// again ([`reload_password_file`](Self::reload_password_file),
/// [`reload_acl_file`](Self::reload_acl_file)); a broker built with [`AuthFiles::auth`]
/// checks every client against what is in force at the time of the check. See the module
/// docs for what a reload changes.
pub struct AuthFiles {
    allow_anonymous: bool,
    acl_no_match: AclNoMatch,
    acl_format: AclFormat,
    /// `None` without a password file: user names are not checked.
    users: Option<(PathBuf, ArcSwap<PasswordFile>)>,
    /// `None` without an ACL file: `acl_no_match` decides everything.
    acl_file: Option<PathBuf>,
    acl: ArcSwap<AclFile>,
    costly: CostlyChecks,
}

impl fmt::Debug for AuthFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFiles")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("password_file", &self.password_file())
            .field("acl_file", &self.acl_file)
            .field("acl_no_match", &self.acl_no_match)
            .field("acl_format", &self.acl_format)
            .finish_non_exhaustive()
    }
}

impl AuthFiles {
    /// Reads the files `cfg` names; either failing fails the whole, as at start-up.
    pub fn load(cfg: &AuthConfig) -> Result<AuthFiles, AuthError> {
        let users = match cfg.password_file.as_deref() {
            Some(path) => Some((
                path.to_owned(),
                ArcSwap::from_pointee(PasswordFile::load(path)?),
            )),
            None => None,
        };
        let acl = match cfg.acl_file.as_deref() {
            Some(path) => AclFile::load(path, cfg.acl_format, cfg.acl_no_match)?,
            None => AclFile::Gateway(AclAuthorizer::empty(cfg.acl_no_match)),
        };
        Ok(AuthFiles {
            allow_anonymous: cfg.allow_anonymous,
            acl_no_match: cfg.acl_no_match,
            acl_format: cfg.acl_format,
            users,
            acl_file: cfg.acl_file.clone(),
            acl: ArcSwap::from_pointee(acl),
            costly: CostlyChecks::new(cfg.max_costly_password_checks as usize),
        })
    }

    /// The hooks a broker is built with, both reading what is in force at each check.
    pub fn auth(self: &Arc<Self>) -> Auth {
        Auth {
            authenticator: self.clone(),
            authorizer: self.clone(),
        }
    }

    pub fn password_file(&self) -> Option<&Path> {
        self.users.as_ref().map(|(path, _)| path.as_path())
    }

    pub fn acl_file(&self) -> Option<&Path> {
        self.acl_file.as_deref()
    }

    /// Reads the password file again and puts it in force: the number of users in it, or
    /// `None` when there is no password file. On error the users in force stay.
    pub fn reload_password_file(&self) -> Result<Option<usize>, AuthError> {
        let Some((path, users)) = &self.users else {
            return Ok(None);
        };
        let loaded = PasswordFile::load(path)?;
        let count = loaded.len();
        users.store(Arc::new(loaded));
        Ok(Some(count))
    }

    /// Reads the ACL file again and puts it in force: the number of rules in it, or `None`
    /// when there is no ACL file. On error the rules in force stay.
    pub fn reload_acl_file(&self) -> Result<Option<usize>, AuthError> {
        let Some(path) = &self.acl_file else {
            return Ok(None);
        };
        let loaded = AclFile::load(path, self.acl_format, self.acl_no_match)?;
        let count = loaded.len();
        self.acl.store(Arc::new(loaded));
        Ok(Some(count))
    }
}

impl Authenticator for AuthFiles {
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthOutcome {
        // A full reference rather than a guard: the hash takes long enough (PBKDF2) that
        // holding one of the thread's few guard slots through it is not worth it.
        let users = self.users.as_ref().map(|(_, users)| users.load_full());
        check_credentials(
            users.as_deref(),
            self.allow_anonymous,
            &self.costly,
            client,
            password,
        )
    }
}

impl Authorizer for AuthFiles {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        self.acl.load().authorize(client, action, topic)
    }
}

// ---------------------------------------------------------------------------------------------
// ACL

/// An ACL file in either format `auth.acl_format` names.
#[derive(Debug, Clone)]
pub enum AclFile {
    Gateway(AclAuthorizer),
    Mosquitto(MosquittoAcl),
}

impl AclFile {
    pub fn load(path: &Path, format: AclFormat, no_match: AclNoMatch) -> Result<Self, AuthError> {
        Ok(match format {
            AclFormat::Gateway => AclFile::Gateway(AclAuthorizer::load(path, no_match)?),
            AclFormat::Mosquitto => AclFile::Mosquitto(MosquittoAcl::load(path)?),
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        match self {
            AclFile::Gateway(acl) => acl.len(),
            AclFile::Mosquitto(acl) => acl.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Authorizer for AclFile {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        match self {
            AclFile::Gateway(acl) => acl.authorize(client, action, topic),
            AclFile::Mosquitto(acl) => acl.authorize(client, action, topic),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    All,
    User(String),
    Client(String),
    Ip(IpNet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Publish,
    Subscribe,
    All,
}

/// A rule filter with its placeholder needs worked out once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleFilter {
    text: String,
    exact: bool,
    needs_user: bool,
    needs_client: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    who: Who,
    access: Access,
    filters: Vec<RuleFilter>,
}

/// Ordered allow/deny rules from an ACL file; see the module docs for the format.
#[derive(Debug, Clone)]
pub struct AclAuthorizer {
    rules: Vec<Rule>,
    no_match: AclNoMatch,
}

impl AclAuthorizer {
    /// No rules: `no_match` decides everything.
    pub fn empty(no_match: AclNoMatch) -> Self {
        AclAuthorizer {
            rules: Vec::new(),
            no_match,
        }
    }

    pub fn load(path: &Path, no_match: AclNoMatch) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        AclAuthorizer::parse(&text, path, no_match)
    }

    /// `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path, no_match: AclNoMatch) -> Result<Self, AuthError> {
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let rule = parse_rule(trimmed).map_err(|message| AuthError::Syntax {
                path: path.to_owned(),
                line: index + 1,
                message,
            })?;
            rules.push(rule);
        }
        Ok(AclAuthorizer { rules, no_match })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    const SHAPE: &str =
        "expected <allow|deny> <who> <publish|subscribe|all> <topic-filter> [<topic-filter> ...]";
    let mut fields = line.split_whitespace();
    let (Some(permission), Some(who), Some(access)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(SHAPE.into());
    };
    let allow = match permission {
        "allow" => true,
        "deny" => false,
        other => return Err(format!("expected allow or deny, found {other:?}")),
    };
    let who = if who == "all" {
        Who::All
    } else if let Some(name) = who.strip_prefix("user:") {
        Who::User(non_empty(name, "user name")?)
    } else if let Some(id) = who.strip_prefix("client:") {
        Who::Client(non_empty(id, "client id")?)
    } else if let Some(net) = who.strip_prefix("ip:") {
        Who::Ip(
            net.parse()
                .map_err(|e: gateway_config::IpNetError| e.to_string())?,
        )
    } else {
        return Err(format!(
            "expected all, user:NAME, client:ID, ip:ADDR or ip:ADDR/PREFIX, found {who:?}"
        ));
    };
    let access = match access {
        "publish" => Access::Publish,
        "subscribe" => Access::Subscribe,
        "all" => Access::All,
        other => {
            return Err(format!(
                "expected publish, subscribe or all, found {other:?}"
            ))
        }
    };
    let filters = fields
        .map(parse_rule_filter)
        .collect::<Result<Vec<_>, _>>()?;
    if filters.is_empty() {
        return Err(format!("no topic filter; {SHAPE}"));
    }
    Ok(Rule {
        allow,
        who,
        access,
        filters,
    })
}

fn non_empty(value: &str, what: &str) -> Result<String, String> {
    if value.is_empty() {
        Err(format!("empty {what}"))
    } else {
        Ok(value.to_owned())
    }
}

fn parse_rule_filter(token: &str) -> Result<RuleFilter, String> {
    let (text, exact) = match token.strip_prefix("eq:") {
        Some(text) => (text, true),
        None => (token, false),
    };
    if text.is_empty() {
        return Err(format!("empty topic filter in {token:?}"));
    }
    if !exact {
        if let Err(error) = crate::topic::validate_topic_filter(text, 0) {
            return Err(format!("invalid topic filter {text:?}: {error}"));
        }
    }
    Ok(RuleFilter {
        text: text.to_owned(),
        exact,
        needs_user: text.contains("%u"),
        needs_client: text.contains("%c"),
    })
}

/// A placeholder value that would change the rule's shape is treated as absent.
fn safe_value(value: &str) -> Option<&str> {
    let unsafe_char = |c: char| matches!(c, '/' | '+' | '#');
    (!value.is_empty() && !value.contains(unsafe_char)).then_some(value)
}

impl RuleFilter {
    /// The filter with `%u`/`%c` replaced, or `None` when the client lacks a usable value.
    fn expand<'a>(&'a self, client: &ClientInfo) -> Option<Cow<'a, str>> {
        if !self.needs_user && !self.needs_client {
            return Some(Cow::Borrowed(&self.text));
        }
        let mut text = self.text.clone();
        if self.needs_user {
            text = text.replace("%u", safe_value(client.username.as_deref()?)?);
        }
        if self.needs_client {
            text = text.replace("%c", safe_value(&client.client_id)?);
        }
        Some(Cow::Owned(text))
    }

    fn matches(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        let Some(filter) = self.expand(client) else {
            return false;
        };
        match action {
            _ if self.exact => *filter == *topic,
            Action::Publish { .. } => crate::topic::matches(&filter, topic),
            Action::Subscribe { .. } => crate::topic::filter_covers(&filter, topic),
        }
    }
}

impl Rule {
    fn applies_to(&self, client: &ClientInfo, action: Action) -> bool {
        let access = matches!(
            (self.access, action),
            (Access::All, _)
                | (Access::Publish, Action::Publish { .. })
                | (Access::Subscribe, Action::Subscribe { .. })
        );
        access
            && match &self.who {
                Who::All => true,
                Who::User(name) => client.username.as_deref() == Some(name.as_str()),
                Who::Client(id) => *client.client_id == **id,
                Who::Ip(net) => client.peer.is_some_and(|peer| net.contains(peer.ip())),
            }
    }
}

impl Authorizer for AclAuthorizer {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        for rule in &self.rules {
            if rule.applies_to(client, action)
                && rule
                    .filters
                    .iter()
                    .any(|f| f.matches(client, action, topic))
            {
                return rule.allow;
            }
        }
        self.no_match == AclNoMatch::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validity() {
        for ok in ["a", "#", "+", "a/#", "a/+/b", "/", "+/+", "%u/#", "a b"] {
            assert!(crate::topic::validate_topic_filter(ok, 0).is_ok(), "{ok}");
        }
        for bad in ["a#", "#/a", "a/#/b", "a+", "+a/b", "a/b+"] {
            assert!(
                crate::topic::validate_topic_filter(bad, 0).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn hash_encoding_round_trips() {
        let h = hash_with(b"pw", 3);
        assert!(h.verify(b"pw"));
        assert_eq!(PasswordHash::parse(&h.encode()).unwrap(), h);
    }
}
