//! What spares the authenticator: a client recognised by the credentials it was admitted
//! with, and a source refused for a while after failing too often. A password check is a
//! deliberately slow hash (PBKDF2), and CoAP repeats the credentials in every request, so
//! checking each one would let a stream of forged datagrams fill a core.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The credentials a client was admitted with, as an HMAC-SHA256 of its user name and
/// password under a key drawn once per process: a later request is recognised by a
/// constant-time comparison, and the password itself is not kept.
#[derive(Clone)]
pub(crate) struct Credentials([u8; 32]);

impl Credentials {
    pub(crate) fn of(username: Option<&str>, password: Option<&[u8]>) -> Credentials {
        static KEY: OnceLock<[u8; 32]> = OnceLock::new();
        let key = KEY.get_or_init(rand::random);
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            // HMAC takes a key of any length; unreachable, and all-zero never matches a
            // digest.
            return Credentials([0; 32]);
        };
        // Each field with its presence and length, so no two pairs share an encoding.
        for field in [username.map(str::as_bytes), password] {
            match field {
                None => mac.update(&[0]),
                Some(bytes) => {
                    mac.update(&[1]);
                    mac.update(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
                    mac.update(bytes);
                }
            }
        }
        Credentials(mac.finalize().into_bytes().into())
    }

    pub(crate) fn matches(&self, other: &Credentials) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// How many failed authentications one source may make within `window` before its
/// requests that need checking are refused, unchecked, for `lockout`. `max` 0 = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailureLimit {
    pub max: u32,
    pub window: Duration,
    pub lockout: Duration,
}

impl AuthFailureLimit {
    pub fn from_config(config: &gateway_config::CoapConfig) -> AuthFailureLimit {
        AuthFailureLimit {
            max: config.max_auth_failures,
            window: config.auth_failure_window.get(),
            lockout: config.auth_lockout.get(),
        }
    }
}

/// One source's failed authentications.
#[derive(Debug, Default)]
pub(crate) struct AuthFailures {
    count: u32,
    /// When the window `count` is counted in began.
    since: Option<Instant>,
    locked_until: Option<Instant>,
}

impl AuthFailures {
    /// How long the source is still refused, if it is; a lockout that ended starts it
    /// afresh.
    pub(crate) fn locked(&mut self, now: Instant) -> Option<Duration> {
        let until = self.locked_until?;
        if until > now {
            return Some(until - now);
        }
        *self = AuthFailures::default();
        None
    }

    /// Counts a failure at `now`; true when it locks the source out.
    pub(crate) fn record(&mut self, limit: &AuthFailureLimit, now: Instant) -> bool {
        if limit.max == 0 {
            return false;
        }
        match self.since {
            Some(since) if now < since + limit.window => {}
            _ => {
                self.since = Some(now);
                self.count = 0;
            }
        }
        self.count = self.count.saturating_add(1);
        if self.count < limit.max {
            return false;
        }
        self.count = 0;
        self.since = None;
        self.locked_until = Some(now + limit.lockout);
        true
    }

    /// When nothing is left to remember: the end of the lockout or of the window.
    pub(crate) fn forgotten_at(&self, limit: &AuthFailureLimit) -> Option<Instant> {
        let window_end = self.since.map(|since| since + limit.window);
        window_end.into_iter().chain(self.locked_until).max()
    }

    /// Forgets what no longer counts at `now`.
    pub(crate) fn forget_expired(&mut self, limit: &AuthFailureLimit, now: Instant) {
        if self.forgotten_at(limit).is_some_and(|at| at <= now) {
            *self = AuthFailures::default();
        }
    }

    /// Whether a source that holds nothing else must still be kept, to remember this.
    pub(crate) fn remembers(&self, limit: &AuthFailureLimit, now: Instant) -> bool {
        self.forgotten_at(limit).is_some_and(|at| at > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_only_the_same_user_name_and_password() {
        let admitted = Credentials::of(Some("alice"), Some(b"secret"));
        assert!(admitted.matches(&Credentials::of(Some("alice"), Some(b"secret"))));
        for (username, password) in [
            (Some("alice"), Some(&b"secreT"[..])),
            (Some("alice"), None),
            (Some("alic"), Some(&b"esecret"[..])),
            (None, Some(&b"secret"[..])),
            (Some("bob"), Some(&b"secret"[..])),
        ] {
            assert!(
                !admitted.matches(&Credentials::of(username, password)),
                "{username:?} {password:?}"
            );
        }
        assert!(Credentials::of(None, None).matches(&Credentials::of(None, None)));
        assert!(!Credentials::of(Some(""), None).matches(&Credentials::of(None, None)));
    }

    #[test]
    fn failures_lock_out_at_the_limit_within_the_window_only() {
        let limit = AuthFailureLimit {
            max: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(30),
        };
        let t0 = Instant::now();
        let mut failures = AuthFailures::default();
        assert!(!failures.record(&limit, t0));
        assert!(!failures.record(&limit, t0 + Duration::from_secs(59)));
        // The window began at t0: the third failure counts in a new one.
        assert!(!failures.record(&limit, t0 + Duration::from_secs(60)));
        assert!(!failures.record(&limit, t0 + Duration::from_secs(61)));
        let third = t0 + Duration::from_secs(62);
        assert!(failures.record(&limit, third));
        assert_eq!(failures.locked(third), Some(Duration::from_secs(30)));
        assert!(failures.remembers(&limit, third + Duration::from_secs(29)));
        assert_eq!(failures.locked(third + Duration::from_secs(30)), None);
        assert!(!failures.remembers(&limit, third + Duration::from_secs(30)));
        // No limit: never locked.
        let off = AuthFailureLimit { max: 0, ..limit };
        let mut failures = AuthFailures::default();
        for _ in 0..100 {
            assert!(!failures.record(&off, t0));
        }
        assert_eq!(failures.locked(t0), None);
    }
}
