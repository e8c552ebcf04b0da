//! Mosquitto's ACL file (`acl_file` of mosquitto.conf), decided as Mosquitto 2.x decides.
//!
//! ```text
//! # comment
//! topic [read|write|readwrite|deny] <topic-filter>     (before any user line: anonymous clients)
//! user <username>
//! topic [read|write|readwrite|deny] <topic-filter>     (this user)
//! pattern [read|write|readwrite|deny] <topic-filter>   (every client, wherever it stands)
//! ```
//!
//! - The access word may be left out: `readwrite`. A line with a single word after `topic`
//!   takes it as the filter, so `topic read` grants read and write on the topic `read`, as
//!   in Mosquitto. The filter is the rest of the line, spaces included.
//! - A client's rules are those of its user section (the anonymous section for a client
//!   without a username), then the patterns. In each list `deny` rules come first: a `deny`
//!   that matches refuses, whatever else matches; then any rule that matches and grants the
//!   access allows. A `deny` among the user's rules refuses before the patterns are read; a
//!   refusal of the patterns does not take back what the user's rules allowed.
//! - Nothing allows: refused. An ACL file without a rule for a client refuses it everything;
//!   `auth.acl_no_match` does not apply.
//! - In a pattern, a level that is exactly `%c` or `%u` stands for the client id or the
//!   username (`%u` elsewhere in a level is literal text). A pattern with `%u` never matches a
//!   client without a username; a value containing `/` never matches a level. A client whose
//!   username or client id contains `+` or `#` is refused by every pattern, as in Mosquitto.
//! - A filter not starting with `$` never matches a topic that does: `$SYS/...` must be
//!   granted by a rule that names it.
//! - Publish is `write` on the topic. Publishing to `$SYS/...` is always refused.
//! - Subscribe: Mosquitto 2.x grants every subscription and checks `read` on each message it
//!   would deliver. The gateway decides once, at SUBSCRIBE: a filter is granted when every
//!   topic it can match may be read, i.e. one rule that grants `read` covers it and no `deny`
//!   rule overlaps it. For a filter without wildcards this is exactly Mosquitto's decision on
//!   every message of that topic; for a wildcard filter the gateway refuses (SUBACK failure)
//!   a subscription through which Mosquitto would deliver only part of the messages.

use std::collections::HashMap;
use std::path::Path;

use super::{Action, AuthError, Authorizer, ClientInfo};

const READ: u8 = 1;
const WRITE: u8 = 2;
/// `deny`: no access bit.
const NONE: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    filter: String,
    access: u8,
    /// Whether a level is exactly `%c` / `%u` (patterns only; `topic` filters are literal).
    client_level: bool,
    user_level: bool,
    /// Mosquitto skips a pattern that mentions `%u` anywhere for a client without username.
    mentions_user: bool,
}

impl Rule {
    fn new(filter: &str, access: u8, pattern: bool) -> Rule {
        let levels = || filter.split('/');
        Rule {
            filter: filter.to_owned(),
            access,
            client_level: pattern && levels().any(|l| l == "%c"),
            user_level: pattern && levels().any(|l| l == "%u"),
            mentions_user: pattern && filter.contains("%u"),
        }
    }

    /// The filter for this client, or `None` when the rule cannot match it.
    fn expand(&self, client: &ClientInfo) -> Option<std::borrow::Cow<'_, str>> {
        if self.mentions_user && client.username.is_none() {
            return None;
        }
        if !self.client_level && !self.user_level {
            return Some(std::borrow::Cow::Borrowed(&self.filter));
        }
        let mut out = String::with_capacity(self.filter.len() + 16);
        for (i, level) in self.filter.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            let value = match level {
                "%c" => &*client.client_id,
                "%u" => client.username.as_deref()?,
                other => other,
            };
            // A level holding `/` would be several levels; Mosquitto compares level by
            // level, where such a value equals no level.
            if (level == "%c" || level == "%u") && value.contains('/') {
                return None;
            }
            out.push_str(value);
        }
        Some(std::borrow::Cow::Owned(out))
    }
}

/// Rules of a Mosquitto ACL file; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct MosquittoAcl {
    anonymous: Option<Vec<Rule>>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
    rule_count: usize,
}

impl MosquittoAcl {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        MosquittoAcl::parse(&text, path)
    }

    /// `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let mut acl = MosquittoAcl::default();
        let mut user: Option<String> = None;
        for (index, line) in text.lines().enumerate() {
            let syntax = |message: String| AuthError::Syntax {
                path: path.to_owned(),
                line: index + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(syntax("user without a username".into()));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let (first, after) = split_word(rest);
                    if first.is_empty() {
                        return Err(syntax(format!("{keyword} without a topic filter")));
                    }
                    let (access, filter) = if after.is_empty() {
                        (READ | WRITE, first)
                    } else {
                        let access = match first {
                            "read" => READ,
                            "write" => WRITE,
                            "readwrite" => READ | WRITE,
                            "deny" => NONE,
                            other => {
                                return Err(syntax(format!(
                                    "expected read, write, readwrite or deny, found {other:?}"
                                )))
                            }
                        };
                        (access, after)
                    };
                    if let Err(error) = crate::topic::validate_topic_filter(filter, 0) {
                        return Err(syntax(format!("invalid topic filter {filter:?}: {error}")));
                    }
                    let pattern = keyword == "pattern";
                    let rule = Rule::new(filter, access, pattern);
                    let list = if pattern {
                        &mut acl.patterns
                    } else {
                        match &user {
                            Some(name) => acl.users.entry(name.clone()).or_default(),
                            None => acl.anonymous.get_or_insert_with(Vec::new),
                        }
                    };
                    list.push(rule);
                    acl.rule_count += 1;
                }
                other => {
                    return Err(syntax(format!(
                        "expected user, topic or pattern, found {other:?}"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// Number of `topic` and `pattern` rules.
    pub fn len(&self) -> usize {
        self.rule_count
    }

    pub fn is_empty(&self) -> bool {
        self.rule_count == 0
    }

    fn own_rules(&self, client: &ClientInfo) -> Option<&[Rule]> {
        match client.username.as_deref() {
            Some(name) => self.users.get(name).map(Vec::as_slice),
            None => self.anonymous.as_deref(),
        }
    }
}

/// The first word of `text` and the rest with surrounding blanks removed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

/// What one list of rules says: refused, allowed, or nothing.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Deny,
    Allow,
    NoMatch,
}

/// Both sides' `$` rule as in Mosquitto: a filter and a topic one of which starts with `$`
/// and the other not never match.
fn dollar_mismatch(filter: &str, topic: &str) -> bool {
    filter.starts_with('$') != topic.starts_with('$')
}

fn check_topic(rules: &[Rule], client: &ClientInfo, topic: &str, access: u8) -> Verdict {
    let mut allowed = false;
    for rule in rules {
        let Some(filter) = rule.expand(client) else {
            continue;
        };
        if dollar_mismatch(&filter, topic) || !crate::topic::matches(&filter, topic) {
            continue;
        }
        if rule.access == NONE {
            return Verdict::Deny;
        }
        allowed |= rule.access & access != 0;
    }
    if allowed {
        Verdict::Allow
    } else {
        Verdict::NoMatch
    }
}

/// Can every topic `wanted` matches be read? See the module docs.
fn check_filter(rules: &[Rule], client: &ClientInfo, wanted: &str) -> Verdict {
    let mut allowed = false;
    for rule in rules {
        let Some(filter) = rule.expand(client) else {
            continue;
        };
        if dollar_mismatch(&filter, wanted) {
            continue;
        }
        if rule.access == NONE {
            if filters_overlap(&filter, wanted) {
                return Verdict::Deny;
            }
        } else if rule.access & READ != 0 && crate::topic::filter_covers(&filter, wanted) {
            allowed = true;
        }
    }
    if allowed {
        Verdict::Allow
    } else {
        Verdict::NoMatch
    }
}

/// Is there a topic name both filters match?
fn filters_overlap(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    let mut first = true;
    loop {
        match (a_levels.next(), b_levels.next()) {
            (None, None) => return true,
            // `x/#` matches `x` too.
            (Some("#"), None) | (None, Some("#")) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                let wild = |l: &str| l == "#" || l == "+";
                if first && ((wild(x) && y.starts_with('$')) || (wild(y) && x.starts_with('$'))) {
                    return false;
                }
                if x == "#" || y == "#" {
                    return true;
                }
                if !(x == "+" || y == "+" || x == y) {
                    return false;
                }
            }
        }
        first = false;
    }
}

impl Authorizer for MosquittoAcl {
    fn authorize(&self, client: &ClientInfo, action: Action, topic: &str) -> bool {
        let check = |rules: &[Rule]| match action {
            Action::Publish { .. } => check_topic(rules, client, topic, WRITE),
            Action::Subscribe { .. } => check_filter(rules, client, topic),
        };
        if matches!(action, Action::Publish { .. })
            && (topic == "$SYS" || topic.starts_with("$SYS/"))
        {
            return false;
        }
        if let Some(rules) = self.own_rules(client) {
            match check(rules) {
                Verdict::Allow => return true,
                Verdict::Deny => return false,
                Verdict::NoMatch => {}
            }
        }
        if self.patterns.is_empty() {
            return false;
        }
        let dangerous = |value: &str| value.contains(['+', '#']);
        if client.username.as_deref().is_some_and(dangerous) || dangerous(&client.client_id) {
            return false;
        }
        check(&self.patterns) == Verdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap() {
        for (a, b) in [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a"),
            ("#", "a/b/c"),
            ("+/b", "a/+"),
            ("$SYS/#", "$SYS/x"),
        ] {
            assert!(filters_overlap(a, b), "{a} {b}");
            assert!(filters_overlap(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("a/b", "a/c"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
        ] {
            assert!(!filters_overlap(a, b), "{a} {b}");
            assert!(!filters_overlap(b, a), "{b} {a}");
        }
    }
}
