//! The auth hooks through their public API: Mosquitto password files, `gateway passwd`'s
//! helpers, and ACL rules.

// Helpers outside #[test] fns fall outside clippy's test allowances; a failed unwrap here is a
// failed test, which is what we want.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_config::{AclFormat, AclNoMatch, AuthConfig};
use mqtt_core::auth::{
    add_user, hash_password, verify_password, AclAuthorizer, Action, Auth, AuthError, AuthFiles,
    AuthOutcome, Authenticator, Authorizer, ClientInfo, DenyReason, PasswordAuthenticator,
    PasswordFile, PBKDF2_ITERATIONS,
};

/// Written by Debian's mosquitto 2.0.11 `mosquitto_passwd -b` (see the module docs of
/// mqtt_core::auth for the formats). The users and their passwords:
/// - alice / `wonderland`: default `$7$`, 101 iterations, 12-byte salt
/// - bob / `builder-42`: `-H sha512`, i.e. `$6$`
/// - carol / `pässwörd with spaces`: `$7$`, UTF-8 password
/// - dave-device.01 / `x`: `-H sha512-pbkdf2`
const MOSQUITTO_PASSWD: &str = "tests/data/mosquitto.passwd";

const MOSQUITTO_USERS: [(&str, &str); 4] = [
    ("alice", "wonderland"),
    ("bob", "builder-42"),
    ("carol", "pässwörd with spaces"),
    ("dave-device.01", "x"),
];

fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn client(client_id: &str, username: Option<&str>) -> ClientInfo {
    ClientInfo {
        protocol: "mqtt",
        listener: "default".into(),
        client_id: client_id.into(),
        username: username.map(Into::into),
        peer: None,
        mountpoint: None,
    }
}

/// What `authenticator` says of `username` presenting `password`.
fn check(
    authenticator: &dyn Authenticator,
    username: Option<&str>,
    password: Option<&str>,
) -> AuthOutcome {
    authenticator.authenticate(&client("c", username), password.map(str::as_bytes))
}

fn from_ip(client_id: &str, ip: &str) -> ClientInfo {
    ClientInfo {
        peer: Some(SocketAddr::new(
            ip.parse().unwrap_or([0, 0, 0, 0].into()),
            40000,
        )),
        ..client(client_id, None)
    }
}

/// A fresh directory per test; the tests run in parallel in one process.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mqtt-core-auth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_default();
    dir
}

pub(crate) const PUB: Action = Action::Publish {
    qos: 1,
    retain: false,
};
pub(crate) const SUB: Action = Action::Subscribe { qos: 1 };

fn acl(text: &str, no_match: AclNoMatch) -> AclAuthorizer {
    AclAuthorizer::parse(text, Path::new("test.acl"), no_match).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Passwords

#[test]
fn verifies_hashes_written_by_mosquitto_passwd() {
    let file = PasswordFile::load(&data(MOSQUITTO_PASSWD)).unwrap();
    assert_eq!(file.len(), 4);
    for (user, password) in MOSQUITTO_USERS {
        assert!(file.verify(user, password.as_bytes()), "{user}");
        assert!(!file.verify(user, b"wrong"), "{user}");
        assert!(!file.verify(user, b""), "{user}");
        // One byte short or long must fail too.
        let mut longer = password.as_bytes().to_vec();
        longer.push(b'!');
        assert!(!file.verify(user, &longer), "{user}");
    }
    assert!(!file.verify("mallory", b"wonderland"));
    // Passwords are per user, not shared.
    assert!(!file.verify("bob", b"wonderland"));
}

#[test]
fn authenticator_outcomes_with_password_file() {
    let users = PasswordFile::load(&data(MOSQUITTO_PASSWD)).unwrap();
    let strict = PasswordAuthenticator::new(Some(users.clone()), false);
    let open = PasswordAuthenticator::new(Some(users), true);
    let bad = AuthOutcome::Deny(DenyReason::BadCredentials);

    for auth in [&strict, &open] {
        assert_eq!(
            check(auth, Some("alice"), Some("wonderland")),
            AuthOutcome::Allow
        );
        assert_eq!(check(auth, Some("alice"), Some("nope")), bad);
        assert_eq!(check(auth, Some("alice"), None), bad);
        assert_eq!(check(auth, Some("nobody"), Some("wonderland")), bad);
    }
    assert_eq!(
        check(&strict, None, None),
        AuthOutcome::Deny(DenyReason::NotAuthorized)
    );
    // MQTT 5 lets a client send a password alone; it is still anonymous.
    assert_eq!(
        check(&strict, None, Some("wonderland")),
        AuthOutcome::Deny(DenyReason::NotAuthorized)
    );
    assert_eq!(check(&open, None, None), AuthOutcome::Allow);
}

#[test]
fn without_password_file_credentials_are_not_checked() {
    let strict = PasswordAuthenticator::new(None, false);
    assert_eq!(
        check(&strict, Some("anyone"), Some("anything")),
        AuthOutcome::Allow
    );
    assert_eq!(check(&strict, Some("anyone"), None), AuthOutcome::Allow);
    assert_eq!(
        check(&strict, None, None),
        AuthOutcome::Deny(DenyReason::NotAuthorized)
    );
    let open = PasswordAuthenticator::new(None, true);
    assert_eq!(check(&open, None, None), AuthOutcome::Allow);
}

#[test]
fn deny_reasons_map_to_connack_codes() {
    assert_eq!(DenyReason::BadCredentials.mqtt5_reason_code(), 0x86);
    assert_eq!(DenyReason::NotAuthorized.mqtt5_reason_code(), 0x87);
    assert_eq!(DenyReason::BadCredentials.mqtt3_return_code(), 4);
    assert_eq!(DenyReason::NotAuthorized.mqtt3_return_code(), 5);
}

#[test]
fn hash_password_round_trip() {
    let hash = hash_password("s3cret");
    let parts: Vec<&str> = hash.split('$').collect();
    assert_eq!(parts.len(), 5, "{hash}");
    assert_eq!(parts[1], "7");
    assert_eq!(parts[2], PBKDF2_ITERATIONS.to_string());
    assert_eq!(parts[3].len(), 16, "12-byte salt in padded base64: {hash}");
    assert_eq!(parts[4].len(), 88, "64-byte hash in padded base64: {hash}");
    assert!(verify_password(&hash, b"s3cret"));
    assert!(!verify_password(&hash, b"s3cret "));
    assert!(!verify_password(&hash, b"S3cret"));
    // Salted: the same password never gives the same line twice.
    assert_ne!(hash, hash_password("s3cret"));
    assert!(!verify_password("garbage", b"s3cret"));
}

#[test]
fn add_user_updates_one_line_and_keeps_the_others() {
    let dir = scratch("add_user_updates");
    let file = dir.join("passwd");
    let original = std::fs::read_to_string(data(MOSQUITTO_PASSWD)).unwrap();
    let with_comment = format!("# managed by hand\n\n{original}");
    std::fs::write(&file, &with_comment).unwrap();

    add_user(&file, "alice", "new-password").unwrap();
    add_user(&file, "erin", "erin-pw").unwrap();

    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let old_lines: Vec<&str> = with_comment.lines().collect();
    assert_eq!(lines.len(), old_lines.len() + 1, "{text}");
    assert_eq!(lines[0], "# managed by hand");
    assert_eq!(lines[1], "");
    // alice stays where she was; everyone else's line is byte-for-byte unchanged.
    for (new, old) in lines.iter().zip(&old_lines) {
        if old.starts_with("alice:") {
            assert!(new.starts_with("alice:$7$"), "{new}");
            assert_ne!(new, old);
        } else {
            assert_eq!(new, old);
        }
    }
    assert!(lines[lines.len() - 1].starts_with("erin:$7$"));

    let users = PasswordFile::load(&file).unwrap();
    assert_eq!(users.len(), 5);
    assert!(users.verify("alice", b"new-password"));
    assert!(!users.verify("alice", b"wonderland"));
    assert!(users.verify("bob", b"builder-42"));
    assert!(users.verify("erin", b"erin-pw"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn add_user_creates_a_private_file() {
    let dir = scratch("add_user_creates");
    let file = dir.join("new.passwd");
    add_user(&file, "frank", "pw").unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("frank:$7$") && text.ends_with('\n'),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn add_user_rejects_what_would_break_the_file() {
    let dir = scratch("add_user_rejects");
    let file = dir.join("passwd");
    for bad in ["", "a:b", "#admin", "line\nbreak", "tab\tname"] {
        assert!(
            matches!(
                add_user(&file, bad, "pw"),
                Err(AuthError::InvalidUsername(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        add_user(&file, "ok", ""),
        Err(AuthError::EmptyPassword)
    ));
    assert!(!file.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn password_file_errors_name_file_and_line() {
    let valid = hash_password("pw");
    let cases = [
        (
            format!("# c\nalice:{valid}\nbob:plaintext\n"),
            3,
            "plain-text",
        ),
        (
            format!("alice:{valid}\n\nalice:{valid}\n"),
            3,
            "already defined on line 1",
        ),
        ("no-colon-here\n".to_owned(), 1, "username:hash"),
        (format!(":{valid}\n"), 1, "empty username"),
        ("a:$7$0$AAAAAAAAAAAAAAAA$AAAA\n".to_owned(), 1, "iterations"),
        ("a:$7$101$!!!$AAAA\n".to_owned(), 1, "salt is not base64"),
        (
            "a:$6$AAAAAAAAAAAAAAAA$AAAA\n".to_owned(),
            1,
            "hash is 3 bytes",
        ),
        ("a:$7$101$AAAA\n".to_owned(), 1, "$7$<iterations>"),
        (
            "a:$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA\n".to_owned(),
            1,
            "argon2",
        ),
    ];
    for (text, line, needle) in cases {
        let err = PasswordFile::parse(&text, Path::new("/etc/gw/passwd")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("/etc/gw/passwd:{line}: ")),
            "{msg}"
        );
        assert!(msg.contains(needle), "{msg}");
    }
    // Comments, blank lines, CRLF endings and padding-less base64 are all fine.
    let hash = hash_password("pw");
    let unpadded = hash.trim_end_matches('=');
    let text = format!("# users\r\n\r\n  # indented comment\r\nalice:{unpadded}\r\n");
    let file = PasswordFile::parse(&text, Path::new("p")).unwrap();
    assert!(file.verify("alice", b"pw"));
}

#[test]
fn missing_file_is_a_read_error() {
    let err = PasswordFile::load(Path::new("/nonexistent/passwd")).unwrap_err();
    assert!(matches!(err, AuthError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/passwd"));
}

// ---------------------------------------------------------------------------------------------
// ACL

#[test]
fn first_matching_rule_wins() {
    let rules = acl(
        "deny user:eve all secret/#\n\
         allow all all secret/#\n\
         allow all publish public/#\n\
         deny all all public/#\n",
        AclNoMatch::Deny,
    );
    let eve = client("e1", Some("eve"));
    let bob = client("b1", Some("bob"));
    assert!(!rules.authorize(&eve, PUB, "secret/x"));
    assert!(rules.authorize(&bob, PUB, "secret/x"));
    assert!(rules.authorize(&bob, SUB, "secret/#"));
    // Publish allowed by line 3, subscribe falls through to line 4.
    assert!(rules.authorize(&eve, PUB, "public/news"));
    assert!(!rules.authorize(&eve, SUB, "public/news"));
    // Nothing matches: acl_no_match.
    assert!(!rules.authorize(&bob, PUB, "other"));
}

#[test]
fn no_match_policy_applies_to_empty_and_unmatched() {
    let c = client("c", None);
    assert!(AclAuthorizer::empty(AclNoMatch::Allow).authorize(&c, PUB, "a"));
    assert!(!AclAuthorizer::empty(AclNoMatch::Deny).authorize(&c, SUB, "a"));
    let rules = "allow all all a/#\n";
    assert!(acl(rules, AclNoMatch::Deny).authorize(&c, PUB, "a/b"));
    assert!(!acl(rules, AclNoMatch::Deny).authorize(&c, PUB, "b"));
    assert!(acl(rules, AclNoMatch::Allow).authorize(&c, PUB, "b"));
    let deny_only = "deny all all a/#\n";
    assert!(acl(deny_only, AclNoMatch::Allow).authorize(&c, PUB, "b"));
    assert!(!acl(deny_only, AclNoMatch::Allow).authorize(&c, PUB, "a/b"));
}

#[test]
fn who_selectors() {
    let rules = acl(
        "allow user:alice all by-user\n\
         allow client:dev-7 all by-client\n\
         allow ip:192.168.10.0/24 all by-net\n\
         allow ip:2001:db8::/32 all by-net6\n\
         allow ip:127.0.0.1 all by-host\n",
        AclNoMatch::Deny,
    );
    assert!(rules.authorize(&client("x", Some("alice")), PUB, "by-user"));
    assert!(!rules.authorize(&client("alice", None), PUB, "by-user"));
    assert!(rules.authorize(&client("dev-7", None), PUB, "by-client"));
    assert!(!rules.authorize(&client("x", Some("dev-7")), PUB, "by-client"));
    assert!(rules.authorize(&from_ip("x", "192.168.10.77"), PUB, "by-net"));
    assert!(rules.authorize(&from_ip("x", "::ffff:192.168.10.77"), PUB, "by-net"));
    assert!(!rules.authorize(&from_ip("x", "192.168.11.1"), PUB, "by-net"));
    assert!(rules.authorize(&from_ip("x", "2001:db8:1::5"), SUB, "by-net6"));
    assert!(!rules.authorize(&from_ip("x", "2001:db9::5"), SUB, "by-net6"));
    assert!(rules.authorize(&from_ip("x", "127.0.0.1"), PUB, "by-host"));
    assert!(!rules.authorize(&from_ip("x", "127.0.0.2"), PUB, "by-host"));
    // No peer address known: ip rules do not match.
    assert!(!rules.authorize(&client("x", None), PUB, "by-net"));
}

#[test]
fn placeholders() {
    let rules = acl(
        "allow all all users/%u/#\n\
         allow all publish devices/%c/up\n\
         allow all subscribe devices/%c/down/+\n\
         allow all all mixed/%u-%c\n",
        AclNoMatch::Deny,
    );
    let alice = client("dev1", Some("alice"));
    assert!(rules.authorize(&alice, PUB, "users/alice/x"));
    assert!(rules.authorize(&alice, SUB, "users/alice/#"));
    assert!(!rules.authorize(&alice, PUB, "users/bob/x"));
    assert!(!rules.authorize(&alice, SUB, "users/+/x"));
    assert!(rules.authorize(&alice, PUB, "devices/dev1/up"));
    assert!(!rules.authorize(&alice, PUB, "devices/dev2/up"));
    assert!(rules.authorize(&alice, SUB, "devices/dev1/down/cmd"));
    assert!(rules.authorize(&alice, SUB, "devices/dev1/down/+"));
    assert!(!rules.authorize(&alice, SUB, "devices/dev1/down/#"));
    assert!(rules.authorize(&alice, PUB, "mixed/alice-dev1"));

    // %u never matches a client without a username, even an empty literal "users//x".
    let anonymous = client("dev1", None);
    assert!(!rules.authorize(&anonymous, PUB, "users//x"));
    assert!(!rules.authorize(&anonymous, PUB, "users/%u/x"));
    assert!(rules.authorize(&anonymous, PUB, "devices/dev1/up"));

    // Values that would reshape the filter never fill it.
    for user in ["+", "#", "a/b", ""] {
        let sneaky = client("dev1", Some(user));
        assert!(
            !rules.authorize(&sneaky, SUB, &format!("users/{user}/x")),
            "{user:?}"
        );
        assert!(!rules.authorize(&sneaky, SUB, "users/+/x"), "{user:?}");
    }
    let sneaky = client("+", None);
    assert!(!rules.authorize(&sneaky, PUB, "devices/x/up"));
    assert!(!rules.authorize(&sneaky, SUB, "devices/+/down/x"));
}

#[test]
fn eq_matches_the_exact_string_only() {
    let rules = acl(
        "allow all subscribe eq:alerts/#\nallow all publish eq:cmd/+/go eq:users/%u\n",
        AclNoMatch::Deny,
    );
    let c = client("c", Some("amy"));
    assert!(rules.authorize(&c, SUB, "alerts/#"));
    assert!(!rules.authorize(&c, SUB, "alerts/fire"));
    assert!(!rules.authorize(&c, SUB, "alerts/+"));
    assert!(!rules.authorize(&c, PUB, "alerts/#"));
    assert!(rules.authorize(&c, PUB, "cmd/+/go"));
    assert!(!rules.authorize(&c, PUB, "cmd/x/go"));
    assert!(rules.authorize(&c, PUB, "users/amy"));
    assert!(!rules.authorize(&c, PUB, "users/bob"));
}

#[test]
fn subscribe_needs_coverage_publish_needs_a_match() {
    let rules = acl(
        "allow all all sensors/#\nallow all all meters/+\n",
        AclNoMatch::Deny,
    );
    let c = client("c", None);
    assert!(rules.authorize(&c, SUB, "sensors/+/temp"));
    assert!(rules.authorize(&c, SUB, "sensors/#"));
    assert!(rules.authorize(&c, SUB, "sensors"));
    assert!(rules.authorize(&c, SUB, "meters/+"));
    assert!(rules.authorize(&c, SUB, "meters/m1"));
    assert!(!rules.authorize(&c, SUB, "meters/#"));
    assert!(!rules.authorize(&c, SUB, "meters/m1/x"));
    assert!(!rules.authorize(&c, SUB, "#"));
    assert!(!rules.authorize(&c, SUB, "+/temp"));
    assert!(rules.authorize(&c, PUB, "sensors/a/temp"));
    assert!(rules.authorize(&c, PUB, "meters/m1"));
    assert!(!rules.authorize(&c, PUB, "meters/m1/x"));
}

#[test]
fn dollar_topics_need_explicit_rules() {
    let rules = acl(
        "allow all all #\nallow user:ops subscribe $SYS/#\n",
        AclNoMatch::Deny,
    );
    let anyone = client("c", Some("joe"));
    let ops = client("c", Some("ops"));
    assert!(rules.authorize(&anyone, SUB, "#"));
    assert!(!rules.authorize(&anyone, SUB, "$SYS/#"));
    assert!(!rules.authorize(&anyone, PUB, "$SYS/x"));
    assert!(rules.authorize(&ops, SUB, "$SYS/broker/+"));
}

#[test]
fn acl_errors_name_file_and_line() {
    let cases = [
        (
            "allow all all a\npermit all all b\n",
            2,
            "expected allow or deny",
        ),
        ("allow everyone all a\n", 1, "user:NAME"),
        (
            "allow all read a\n",
            1,
            "expected publish, subscribe or all",
        ),
        ("allow all all\n", 1, "no topic filter"),
        ("allow all\n", 1, "expected <allow|deny>"),
        ("# c\n\nallow all all a/#/b\n", 3, "invalid topic filter"),
        ("allow all all a+\n", 1, "invalid topic filter"),
        ("allow ip:10.0.0.0/40 all a\n", 1, "invalid prefix length"),
        ("allow ip:nowhere all a\n", 1, "invalid IP address"),
        ("allow user: all a\n", 1, "empty user name"),
        ("allow client: all a\n", 1, "empty client id"),
        ("allow all all eq:\n", 1, "empty topic filter"),
    ];
    for (text, line, needle) in cases {
        let err =
            AclAuthorizer::parse(text, Path::new("/etc/gw/acl"), AclNoMatch::Deny).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("/etc/gw/acl:{line}: ")), "{msg}");
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn shipped_acl_example_loads_and_means_what_it_says() {
    let path = data("../config/acl.example");
    let rules = AclAuthorizer::load(&path, AclNoMatch::Allow).unwrap();
    assert_eq!(rules.len(), 9);
    let dash = client("d", Some("dashboard"));
    let dev = ClientInfo {
        peer: Some("10.20.3.4:5000".parse().unwrap()),
        ..client("dev9", Some("plc"))
    };
    assert!(rules.authorize(&dash, SUB, "$SYS/broker/uptime"));
    assert!(rules.authorize(&dash, SUB, "#"));
    assert!(!rules.authorize(&dev, SUB, "$SYS/#"));
    assert!(rules.authorize(&dev, PUB, "devices/dev9/state"));
    assert!(!rules.authorize(&dev, PUB, "devices/dev8/state"));
    assert!(rules.authorize(&dev, SUB, "users/plc/#"));
    assert!(rules.authorize(&dev, PUB, "telemetry/line1"));
    assert!(!rules.authorize(&dev, SUB, "telemetry/#"));
    assert!(rules.authorize(&dev, SUB, "alerts/#"));
    assert!(!rules.authorize(&dev, SUB, "alerts/fire"));
    assert!(!rules.authorize(&dev, PUB, "alerts/fire"));
    assert!(rules.authorize(&client("a", Some("alerter")), PUB, "alerts/fire"));
    assert!(!rules.authorize(&dev, PUB, "elsewhere"));
}

// ---------------------------------------------------------------------------------------------
// Wiring

#[test]
fn auth_from_config_reads_both_files() {
    let dir = scratch("from_config");
    let acl_path = dir.join("acl");
    std::fs::write(&acl_path, "allow user:alice all a/#\n").unwrap();
    let cfg = AuthConfig {
        allow_anonymous: false,
        password_file: Some(data(MOSQUITTO_PASSWD)),
        acl_file: Some(acl_path),
        acl_no_match: AclNoMatch::Deny,
        acl_format: AclFormat::Gateway,
        max_costly_password_checks: 1,
    };
    let auth = Auth::from_config(&cfg).unwrap();
    let alice = client("c", Some("alice"));
    assert_eq!(
        check(&*auth.authenticator, Some("alice"), Some("wonderland")),
        AuthOutcome::Allow
    );
    assert_eq!(
        check(&*auth.authenticator, None, None),
        AuthOutcome::Deny(DenyReason::NotAuthorized)
    );
    assert!(auth.authorizer.authorize(&alice, PUB, "a/b"));
    assert!(!auth.authorizer.authorize(&alice, PUB, "b"));

    let missing = AuthConfig {
        acl_file: Some(dir.join("nope")),
        ..cfg
    };
    assert!(matches!(
        Auth::from_config(&missing),
        Err(AuthError::Read { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auth_from_default_config_lets_everyone_in() {
    let defaults = gateway_config::Config::defaults()
        .expect("embedded defaults")
        .auth;
    let auth = Auth::from_config(&defaults).unwrap();
    let c = client("c", Some("who"));
    assert_eq!(
        check(&*auth.authenticator, Some("who"), Some("ever")),
        AuthOutcome::Allow
    );
    assert_eq!(check(&*auth.authenticator, None, None), AuthOutcome::Allow);
    assert!(auth.authorizer.authorize(&c, SUB, "#"));
    let all = Auth::allow_all();
    assert_eq!(
        check(&*all.authenticator, Some("who"), Some("ever")),
        AuthOutcome::Allow
    );
    assert!(all.authorizer.authorize(&c, PUB, "$SYS/x"));
}

// ---------------------------------------------------------------------------------------------
// Reloading

/// `AuthFiles` over a password file holding `users` and an ACL file holding `rules`, in a
/// scratch directory: (files, password file, ACL file, directory).
fn reloadable(
    name: &str,
    users: &[(&str, &str)],
    rules: &str,
) -> (Arc<AuthFiles>, PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    for (user, password) in users {
        add_user(&passwd, user, password).unwrap();
    }
    let acl_path = dir.join("acl");
    std::fs::write(&acl_path, rules).unwrap();
    let cfg = AuthConfig {
        allow_anonymous: false,
        password_file: Some(passwd.clone()),
        acl_file: Some(acl_path.clone()),
        acl_no_match: AclNoMatch::Deny,
        acl_format: AclFormat::Gateway,
        max_costly_password_checks: 1,
    };
    (
        Arc::new(AuthFiles::load(&cfg).unwrap()),
        passwd,
        acl_path,
        dir,
    )
}

#[test]
fn a_reloaded_password_file_admits_the_users_added_and_no_longer_the_ones_removed() {
    let (files, passwd, _, dir) = reloadable("reload_users", &[("old", "pw-old")], "");
    let auth = files.auth();
    let login = |user, password| check(&*auth.authenticator, Some(user), Some(password));
    assert_eq!(login("old", "pw-old"), AuthOutcome::Allow);
    assert_eq!(
        login("new", "pw-new"),
        AuthOutcome::Deny(DenyReason::BadCredentials)
    );

    // Written but not reloaded: nothing changes yet.
    std::fs::write(&passwd, "").unwrap();
    add_user(&passwd, "new", "pw-new").unwrap();
    assert_eq!(
        login("new", "pw-new"),
        AuthOutcome::Deny(DenyReason::BadCredentials)
    );
    assert_eq!(login("old", "pw-old"), AuthOutcome::Allow);

    assert_eq!(files.reload_password_file().unwrap(), Some(1));
    assert_eq!(login("new", "pw-new"), AuthOutcome::Allow);
    assert_eq!(
        login("new", "wrong"),
        AuthOutcome::Deny(DenyReason::BadCredentials)
    );
    assert_eq!(
        login("old", "pw-old"),
        AuthOutcome::Deny(DenyReason::BadCredentials)
    );
    // The anonymous policy is the configuration's, not the file's.
    assert_eq!(
        check(&*auth.authenticator, None, None),
        AuthOutcome::Deny(DenyReason::NotAuthorized)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broken_password_file_is_kept_out_and_its_error_names_the_file_and_line() {
    let (files, passwd, _, dir) = reloadable("reload_broken_users", &[("kept", "pw")], "");
    let auth = files.auth();
    let valid = hash_password("other");
    std::fs::write(
        &passwd,
        format!("fresh:{valid}\nbroken-line-without-hash\n"),
    )
    .unwrap();
    let error = files.reload_password_file().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("{}:2: expected username:hash", passwd.display())
    );
    assert_eq!(error.path(), Some(passwd.as_path()));
    // Nothing of the broken file is in force, not even its good first line.
    assert_eq!(
        check(&*auth.authenticator, Some("kept"), Some("pw")),
        AuthOutcome::Allow
    );
    assert_eq!(
        check(&*auth.authenticator, Some("fresh"), Some("other")),
        AuthOutcome::Deny(DenyReason::BadCredentials)
    );

    // A file gone is kept out the same way.
    std::fs::remove_file(&passwd).unwrap();
    let error = files.reload_password_file().unwrap_err();
    assert!(matches!(error, AuthError::Read { .. }), "{error}");
    assert!(
        error.to_string().contains(&passwd.display().to_string()),
        "{error}"
    );
    assert_eq!(
        check(&*auth.authenticator, Some("kept"), Some("pw")),
        AuthOutcome::Allow
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reloaded_acl_file_decides_the_next_check_and_a_broken_one_changes_nothing() {
    let (files, _, acl_path, dir) = reloadable(
        "reload_acl",
        &[],
        "allow all publish open/#\ndeny all all #\n",
    );
    let auth = files.auth();
    let c = client("c", Some("u"));
    assert!(auth.authorizer.authorize(&c, PUB, "open/1"));
    assert!(!auth.authorizer.authorize(&c, PUB, "closed/1"));

    std::fs::write(&acl_path, "allow all all closed/#\n").unwrap();
    assert_eq!(files.reload_acl_file().unwrap(), Some(1));
    assert!(auth.authorizer.authorize(&c, PUB, "closed/1"));
    assert!(auth.authorizer.authorize(&c, SUB, "closed/#"));
    // No rule matches any more: acl_no_match = deny decides.
    assert!(!auth.authorizer.authorize(&c, PUB, "open/1"));

    std::fs::write(&acl_path, "allow all all open/#\nallow everyone all #\n").unwrap();
    let error = files.reload_acl_file().unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!("{}:2: ", acl_path.display())),
        "{shown}"
    );
    assert!(shown.contains("\"everyone\""), "{shown}");
    assert!(auth.authorizer.authorize(&c, PUB, "closed/1"));
    assert!(!auth.authorizer.authorize(&c, PUB, "open/1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_files_a_reload_has_nothing_to_read() {
    let defaults = gateway_config::Config::defaults().unwrap().auth;
    let files = AuthFiles::load(&defaults).unwrap();
    assert_eq!(files.reload_password_file().unwrap(), None);
    assert_eq!(files.reload_acl_file().unwrap(), None);
    assert_eq!(files.password_file(), None);
    assert_eq!(files.acl_file(), None);
}

/// Checks on other threads while the rules are replaced under them: both files allow the
/// topic, so a check that ever saw no rules or half a file (`acl_no_match = deny`) would
/// refuse it.
#[test]
fn checks_running_during_reloads_always_see_a_whole_file() {
    let first = "allow all all a/#\n";
    let second = "deny all all b/#\ndeny client:x all #\nallow all all a/#\n";
    let (files, _, acl_path, dir) = reloadable("reload_race", &[], first);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let auth = files.auth();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = client("c", Some("u"));
                let mut checks = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || checks == 0 {
                    assert!(auth.authorizer.authorize(&c, PUB, "a/x"));
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for round in 0..200 {
        std::fs::write(&acl_path, if round % 2 == 0 { second } else { first }).unwrap();
        assert_eq!(
            files.reload_acl_file().unwrap(),
            Some(1 + 2 * (1 - round % 2))
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
