//! The admin API's keys: `key:secret` lines, as EMQX's `api_key.bootstrap_file` has them
//! (a third `:role` field is accepted and ignored: every key may do everything). A request
//! presents one as HTTP Basic credentials.

use std::path::Path;

use base64::Engine;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: &'static str,
    },
}

/// The keys the admin API accepts.
pub struct ApiKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ApiKeys {
    /// Names the keys, never their secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(key, _)| key))
            .finish()
    }
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<ApiKeys, KeysError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: shown.clone(),
            source,
        })?;
        ApiKeys::parse(&text).map_err(|(line, reason)| KeysError::Line {
            path: shown,
            line,
            reason,
        })
    }

    /// Keys from `key:secret[:role]` lines; blank lines and `#` comments are skipped. An
    /// error gives the line (from 1) and what is wrong with it.
    pub fn parse(text: &str) -> Result<ApiKeys, (usize, &'static str)> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let (Some(key), Some(secret)) = (fields.next(), fields.next()) else {
                return Err((number, "expected key:secret"));
            };
            if key.is_empty() || secret.is_empty() {
                return Err((number, "the key and the secret must not be empty"));
            }
            if keys.iter().any(|(known, _)| known == key) {
                return Err((number, "the key is listed twice"));
            }
            keys.push((key.to_owned(), secret.as_bytes().to_vec()));
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key an `Authorization: Basic ...` header value names, when its secret is right.
    /// Every key's secret is compared, in constant time, so that the time taken tells
    /// neither whether the key exists nor how much of the secret was right.
    pub fn authorize(&self, header: &str) -> Option<&str> {
        let encoded = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let (key, secret) = decoded.split_at(colon);
        let secret = secret.get(1..)?;
        let mut found = None;
        for (known, known_secret) in &self.keys {
            let key_matches = known.as_bytes().ct_eq(key);
            let secret_matches = known_secret.as_slice().ct_eq(secret);
            if bool::from(key_matches & secret_matches) {
                found = Some(known.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn keys_are_key_secret_lines_with_an_optional_role() {
        let keys = ApiKeys::parse("# ops\nops:s3cret:administrator\n\nci:other:secret\n").unwrap();
        assert_eq!(keys.authorize(&basic("ops:s3cret")), Some("ops"));
        assert_eq!(
            keys.authorize(&basic("ci:other")),
            Some("ci"),
            "a role follows the secret"
        );
        assert_eq!(keys.authorize(&basic("ci:other:secret")), None);
        assert_eq!(keys.authorize(&basic("ops:s3cre")), None);
        assert_eq!(keys.authorize(&basic("ops:s3cretx")), None);
        assert_eq!(keys.authorize(&basic("nobody:s3cret")), None);
        assert_eq!(keys.authorize("Bearer ops:s3cret"), None);
        assert_eq!(keys.authorize("Basic not base64!"), None);
        assert_eq!(keys.authorize(&basic("no colon")), None);
        assert!(!format!("{keys:?}").contains("s3cret"));
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(
            ApiKeys::parse("a:b\nno-secret\n").err(),
            Some((2, "expected key:secret"))
        );
        assert!(ApiKeys::parse(":x\n").is_err());
        assert!(ApiKeys::parse("a:\n").is_err());
        assert!(ApiKeys::parse("a:1\na:2\n").is_err());
        assert!(ApiKeys::parse("").unwrap().is_empty());
    }
}
