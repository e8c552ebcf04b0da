//! Mosquitto's ACL file format (`auth.acl_format = "mosquitto"`) and its argon2id password
//! hashes, through the public API. The interop suite checks the same decisions against a
//! Mosquitto broker.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_config::{AclFormat, AclNoMatch, AuthConfig};
use mqtt_core::auth::{
    AuthError, AuthFiles, AuthOutcome, Authorizer, CostlyChecks, DenyReason, MosquittoAcl,
    PasswordFile, Verdict,
};

use super::auth::{client, PUB, SUB};

fn acl(text: &str) -> MosquittoAcl {
    MosquittoAcl::parse(text, Path::new("m.acl")).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    super::auth::scratch(&format!("mosquitto-{name}"))
}

#[test]
fn sections_and_access_words() {
    let a = acl("# comment\n\
         topic read public/#\n\
         topic write anon/in\n\
         \n\
         user alice\n\
         topic readwrite alice/#\n\
         topic read shared/#\n\
         topic write   spaced topic/x  \n\
         user bob\n\
         topic bob/#\n\
         topic read\n");
    assert_eq!(a.len(), 7);
    let anon = client("a", None);
    let alice = client("c1", Some("alice"));
    let bob = client("c2", Some("bob"));
    let carol = client("c3", Some("carol"));
    // Rules before any `user` line are the anonymous client's only.
    assert!(anon.username.is_none());
    assert!(a.authorize(&anon, SUB, "public/x"));
    assert!(!a.authorize(&anon, PUB, "public/x"));
    assert!(a.authorize(&anon, PUB, "anon/in"));
    assert!(!a.authorize(&alice, SUB, "public/x"));
    // A user's section.
    assert!(a.authorize(&alice, PUB, "alice/a/b"));
    assert!(a.authorize(&alice, SUB, "alice/#"));
    assert!(a.authorize(&alice, SUB, "shared/+/x"));
    assert!(!a.authorize(&alice, PUB, "shared/x"));
    assert!(a.authorize(&alice, PUB, "spaced topic/x"));
    assert!(!a.authorize(&alice, SUB, "spaced topic/x"));
    // No access word: readwrite; a lone word is the topic, as Mosquitto reads it.
    assert!(a.authorize(&bob, PUB, "bob/x") && a.authorize(&bob, SUB, "bob/x"));
    assert!(a.authorize(&bob, PUB, "read") && a.authorize(&bob, SUB, "read"));
    // A user without a section and no patterns: everything refused.
    assert!(!a.authorize(&carol, SUB, "public/x"));
    assert!(!a.authorize(&carol, PUB, "carol/x"));
}

#[test]
fn deny_wins_in_its_list_whatever_its_place() {
    let a = acl("user alice\n\
         topic readwrite home/#\n\
         topic deny home/secret/#\n\
         pattern readwrite %u/#\n\
         pattern deny %u/locked\n");
    let alice = client("c", Some("alice"));
    assert!(a.authorize(&alice, PUB, "home/x"));
    assert!(!a.authorize(&alice, PUB, "home/secret/x"));
    assert!(!a.authorize(&alice, SUB, "home/secret/x"));
    // A filter through which some topic would be refused is refused whole.
    assert!(!a.authorize(&alice, SUB, "home/#"));
    assert!(a.authorize(&alice, SUB, "home/open/#"));
    assert!(a.authorize(&alice, PUB, "alice/x"));
    assert!(!a.authorize(&alice, PUB, "alice/locked"));
    // A user-list deny refuses before the patterns are read.
    let b = acl("user alice\ntopic deny alice/x\npattern readwrite %u/#\n");
    assert!(!b.authorize(&alice, PUB, "alice/x"));
    assert!(b.authorize(&alice, PUB, "alice/y"));
    // A pattern deny does not take back what the user's rules allowed.
    let c = acl("user alice\ntopic readwrite alice/x\npattern deny %u/#\n");
    assert!(c.authorize(&alice, PUB, "alice/x"));
    assert!(!c.authorize(&alice, PUB, "alice/y"));
}

#[test]
fn patterns_substitute_whole_levels_for_every_client() {
    let a = acl("pattern readwrite users/%u/#\n\
         pattern read devices/%c/cmd\n\
         pattern write devices/%c/state\n\
         pattern read literal/x%uy\n");
    let alice = client("dev1", Some("alice"));
    let anon = client("dev2", None);
    assert!(a.authorize(&alice, PUB, "users/alice/a"));
    assert!(a.authorize(&alice, SUB, "users/alice/#"));
    assert!(!a.authorize(&alice, PUB, "users/bob/a"));
    assert!(!a.authorize(&alice, SUB, "users/+/a"));
    assert!(a.authorize(&alice, SUB, "devices/dev1/cmd"));
    assert!(!a.authorize(&alice, PUB, "devices/dev1/cmd"));
    assert!(a.authorize(&alice, PUB, "devices/dev1/state"));
    assert!(a.authorize(&anon, PUB, "devices/dev2/state"));
    assert!(!a.authorize(&anon, PUB, "devices/dev1/state"));
    // `%u` never matches a client without a username.
    assert!(!a.authorize(&anon, PUB, "users/%u/a"));
    // `%u` inside a level is literal text; it still needs a username.
    assert!(a.authorize(&alice, SUB, "literal/x%uy"));
    assert!(!a.authorize(&alice, SUB, "literal/xalicey"));
    assert!(!a.authorize(&anon, SUB, "literal/x%uy"));
}

#[test]
fn usernames_and_client_ids_that_would_widen_a_pattern_get_nothing_from_patterns() {
    let a = acl("pattern readwrite users/%u/#\n\
         pattern readwrite devices/%c\n\
         user plus+\n\
         topic read granted/by/name\n");
    for name in ["+", "#", "a+b", "plus+"] {
        let c = client("dev", Some(name));
        assert!(!a.authorize(&c, PUB, "users/alice/x"), "{name}");
        assert!(!a.authorize(&c, SUB, "users/alice/x"), "{name}");
        assert!(!a.authorize(&c, PUB, &format!("users/{name}/x")), "{name}");
        assert!(!a.authorize(&c, PUB, "devices/dev"), "{name}");
    }
    // Its own user section still applies, as in Mosquitto.
    assert!(a.authorize(&client("dev", Some("plus+")), SUB, "granted/by/name"));
    for id in ["+", "#", "x#"] {
        let c = client(id, Some("alice"));
        assert!(!a.authorize(&c, PUB, "users/alice/x"), "{id}");
        assert!(!a.authorize(&c, PUB, "devices/+"), "{id}");
    }
    // `/` makes several levels: it equals no single level.
    let slash = client("dev", Some("alice/x"));
    assert!(!a.authorize(&slash, PUB, "users/alice/x/y"));
    assert!(!a.authorize(&slash, PUB, "users/alice/x"));
    let slash_id = client("a/b", Some("z"));
    assert!(!a.authorize(&slash_id, PUB, "devices/a/b"));
    assert!(!a.authorize(&slash_id, PUB, "devices/a"));
}

#[test]
fn dollar_topics_need_rules_that_name_them_and_sys_is_never_published() {
    let a = acl("user admin\n\
         topic readwrite #\n\
         topic readwrite +/x\n\
         user ops\n\
         topic readwrite $SYS/#\n\
         topic readwrite $internal/#\n");
    let admin = client("a", Some("admin"));
    let ops = client("o", Some("ops"));
    assert!(a.authorize(&admin, SUB, "any/thing"));
    assert!(!a.authorize(&admin, SUB, "$SYS/broker/uptime"));
    assert!(!a.authorize(&admin, SUB, "$SYS/#"));
    assert!(!a.authorize(&admin, PUB, "$internal/x"));
    assert!(!a.authorize(&admin, SUB, "$internal/x"));
    assert!(a.authorize(&ops, SUB, "$SYS/broker/uptime"));
    assert!(a.authorize(&ops, SUB, "$SYS/#"));
    assert!(!a.authorize(&ops, PUB, "$SYS/broker/uptime"));
    assert!(a.authorize(&ops, PUB, "$internal/x"));
    // `#` does not cover a `$` filter either.
    assert!(!a.authorize(&admin, SUB, "$internal/#"));
}

#[test]
fn an_empty_file_refuses_everything() {
    let a = acl("# nothing\n\n");
    assert!(a.is_empty());
    assert!(!a.authorize(&client("c", None), SUB, "a"));
    assert!(!a.authorize(&client("c", Some("u")), PUB, "a"));
}

#[test]
fn malformed_lines_are_refused_with_their_line_number() {
    for (text, line, needle) in [
        ("topic read a\nuser\n", 2, "user without a username"),
        ("\n\ntopic\n", 3, "without a topic filter"),
        ("pattern\n", 1, "without a topic filter"),
        (
            "topic readonly a/b\n",
            1,
            "expected read, write, readwrite or deny",
        ),
        ("user a\ntopic read a/#/b\n", 2, "invalid topic filter"),
        ("topic read a+\n", 1, "invalid topic filter"),
        (
            "# ok\ntopics read a\n",
            2,
            "expected user, topic or pattern",
        ),
        (
            "allow all publish #\n",
            1,
            "expected user, topic or pattern",
        ),
    ] {
        match MosquittoAcl::parse(text, Path::new("bad.acl")) {
            Err(AuthError::Syntax {
                path,
                line: at,
                message,
            }) => {
                assert_eq!(path, Path::new("bad.acl"), "{text:?}");
                assert_eq!(at, line, "{text:?}: {message}");
                assert!(message.contains(needle), "{text:?}: {message}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn auth_files_read_the_mosquitto_format_and_reload_it() {
    let dir = scratch("reload");
    let path = dir.join("acl");
    std::fs::write(&path, "user alice\ntopic read a/#\n").unwrap();
    let cfg = AuthConfig {
        allow_anonymous: true,
        password_file: None,
        acl_file: Some(path.clone()),
        // Not consulted by the Mosquitto format: nothing matching is refused.
        acl_no_match: AclNoMatch::Allow,
        acl_format: AclFormat::Mosquitto,
        max_costly_password_checks: 1,
    };
    let files = Arc::new(AuthFiles::load(&cfg).unwrap());
    let auth = files.auth();
    let alice = client("c", Some("alice"));
    assert!(auth.authorizer.authorize(&alice, SUB, "a/x"));
    assert!(!auth.authorizer.authorize(&alice, SUB, "b/x"));
    std::fs::write(&path, "user alice\ntopic read b/#\n").unwrap();
    assert_eq!(files.reload_acl_file().unwrap(), Some(1));
    assert!(auth.authorizer.authorize(&alice, SUB, "b/x"));
    assert!(!auth.authorizer.authorize(&alice, SUB, "a/x"));
    // Broken: the error names file and line, the rules in force stay.
    std::fs::write(&path, "user alice\ntopic read b/#\ntopic sometimes c\n").unwrap();
    match files.reload_acl_file() {
        Err(AuthError::Syntax { path: p, line, .. }) => {
            assert_eq!(p, path);
            assert_eq!(line, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(auth.authorizer.authorize(&alice, SUB, "b/x"));
    // The gateway's format of the same file is refused: the setting decides the syntax.
    let gateway = AuthConfig {
        acl_format: AclFormat::Gateway,
        max_costly_password_checks: 1,
        ..cfg
    };
    std::fs::write(&path, "user alice\ntopic read b/#\n").unwrap();
    assert!(matches!(
        AuthFiles::load(&gateway),
        Err(AuthError::Syntax { line: 1, .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// argon2id

/// Made with argon2-cffi 23.1.0 (Python binding of the reference implementation, the one
/// Mosquitto 2.1 links), `argon2.low_level.hash_secret(..., type=Type.ID)`: password
/// `argon-secret` with Mosquitto 2.1's costs (m=47104, t=1, p=1, 64-byte salt and hash), and
/// `hunter2` with m=19456, t=2, p=2 and a 16-byte salt and 32-byte hash.
const ARGON2ID_MOSQUITTO: &str = "$argon2id$v=19$m=47104,t=1,p=1$NazN2T4cCoPoeh2EIxHxRJD3p4BqH1ElT/nbmW+RpgnMatbp8ntQio990nxkHn02gKHgrceSeh6GR3Dx58Sdjg$tBuGk9kDbOuJ1cPwU9zlPmVnlnPM24xlsA47Bt4Jm04c3cNQsM2As4Ewa0PHls7RKDfzMeH7/8faMv/mnSQO6g";
const ARGON2ID_SMALL: &str =
    "$argon2id$v=19$m=19456,t=2,p=2$n/PQ/eMdhUjBrpnaHYqt6Q$seNjV5ZrD+ZD5vwmxiA1QMmyqFQ4qpgSClohJuwwoEM";
/// Same tool, `Type.I`: a variant Mosquitto never writes.
const ARGON2I: &str =
    "$argon2i$v=19$m=19456,t=2,p=2$hAjpKjUGNiBLaFhiR3O3lw$i1LcI+IAW7aJChW26yghzx+OxGsev0XQzlM8ct70n5o";

#[test]
fn costly_checks_beyond_the_bound_are_refused_as_busy_and_cheap_ones_never_are() {
    let cheap = mqtt_core::auth::hash_password("cheap-secret");
    let text = format!("mosq:{ARGON2ID_MOSQUITTO}\ncheap:{cheap}\n");
    let file = PasswordFile::parse(&text, Path::new("pw")).unwrap();
    // No room at all: the Argon2id user is not checked, nor is a user the file does not
    // name (checked against the costliest hash so as to take as long), but `$7$` with
    // 1,000 iterations is cheap and goes on.
    let none = CostlyChecks::new(0);
    assert_eq!(file.check("mosq", b"argon-secret", &none), Verdict::Busy);
    assert_eq!(file.check("nobody", b"argon-secret", &none), Verdict::Busy);
    assert_eq!(file.check("cheap", b"cheap-secret", &none), Verdict::Match);
    assert_eq!(file.check("cheap", b"wrong", &none), Verdict::Mismatch);
    // One at a time: each check gives its room back when it ends.
    let one = CostlyChecks::new(1);
    for _ in 0..2 {
        assert_eq!(file.check("mosq", b"argon-secret", &one), Verdict::Match);
        assert_eq!(file.check("mosq", b"wrong", &one), Verdict::Mismatch);
        assert_eq!(
            file.check("nobody", b"argon-secret", &one),
            Verdict::Mismatch
        );
    }
}

#[test]
fn a_busy_password_check_refuses_the_connection_as_busy_not_as_bad_credentials() {
    let dir = scratch("busy");
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, format!("mosq:{ARGON2ID_MOSQUITTO}\n")).unwrap();
    let cfg = |limit| AuthConfig {
        allow_anonymous: false,
        password_file: Some(passwd.clone()),
        acl_file: None,
        acl_no_match: AclNoMatch::Allow,
        acl_format: AclFormat::Gateway,
        max_costly_password_checks: limit,
    };
    let client = client("c1", Some("mosq"));
    let busy = Arc::new(AuthFiles::load(&cfg(0)).unwrap()).auth();
    assert_eq!(
        busy.authenticator
            .authenticate(&client, Some(b"argon-secret")),
        AuthOutcome::Deny(DenyReason::Busy)
    );
    assert_eq!(DenyReason::Busy.mqtt5_reason_code(), 0x89);
    assert_eq!(DenyReason::Busy.mqtt3_return_code(), 3);
    let room = Arc::new(AuthFiles::load(&cfg(1)).unwrap()).auth();
    assert_eq!(
        room.authenticator
            .authenticate(&client, Some(b"argon-secret")),
        AuthOutcome::Allow
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn argon2id_hashes_of_the_reference_implementation_verify() {
    let text = format!("mosq:{ARGON2ID_MOSQUITTO}\nsmall:{ARGON2ID_SMALL}\n");
    let file = PasswordFile::parse(&text, Path::new("pw")).unwrap();
    assert!(file.verify("mosq", b"argon-secret"));
    assert!(!file.verify("mosq", b"argon-secreT"));
    assert!(!file.verify("mosq", b""));
    assert!(file.verify("small", b"hunter2"));
    assert!(!file.verify("small", b"hunter3"));
}

#[test]
fn argon2_lines_that_are_malformed_or_too_costly_are_refused_with_their_line() {
    let salt = "c2FsdHNhbHQ";
    let hash =
        "x6MqtldV6iSNrUjwDe3jgdW90ZuHtYKoLvtUdxVHseDAiMvjYIb15qsVIN0oVdp+MDEscGgkOX1uvdY6cMAKyA";
    for (hash_text, needle) in [
        (ARGON2I.to_owned(), "only the argon2id variant"),
        (
            format!("$argon2id$v=16$m=64,t=1,p=1${salt}${hash}"),
            "version",
        ),
        (
            format!("$argon2id$v=19$m=1048576,t=1,p=1${salt}${hash}"),
            "memory",
        ),
        (
            format!("$argon2id$v=19$m=4294967295,t=1,p=1${salt}${hash}"),
            "memory",
        ),
        (
            format!("$argon2id$v=19$m=64,t=17,p=1${salt}${hash}"),
            "passes",
        ),
        (
            format!("$argon2id$v=19$m=64,t=0,p=1${salt}${hash}"),
            "passes",
        ),
        (
            format!("$argon2id$v=19$m=1024,t=1,p=64${salt}${hash}"),
            "lanes",
        ),
        (
            format!("$argon2id$v=19$m=4,t=1,p=1${salt}${hash}"),
            "memory",
        ),
        (format!("$argon2id$v=19$m=64,t=1${salt}${hash}"), "expected"),
        (
            format!("$argon2id$v=19$m=64,t=1,p=1,m=64${salt}${hash}"),
            "twice",
        ),
        (
            format!("$argon2id$v=19$m=64,t=1,p=1,x=1${salt}${hash}"),
            "unknown",
        ),
        (
            format!("$argon2id$v=19$m=x,t=1,p=1${salt}${hash}"),
            "not a number",
        ),
        (
            format!("$argon2id$v=19$m=64,t=1,p=1$c2Fs${hash}"),
            "salt is 3 bytes",
        ),
        (
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}$AAAA"),
            "hash is 3 bytes",
        ),
        (
            format!("$argon2id$v=19$m=64,t=1,p=1${salt}$!!"),
            "not base64",
        ),
        (format!("$argon2id$v=19$m=64,t=1,p=1${salt}"), "expected"),
    ] {
        let text = format!("ok:$argon2id$v=19$m=64,t=1,p=1${salt}${hash}\nbad:{hash_text}\n");
        match PasswordFile::parse(&text, Path::new("pw")) {
            Err(AuthError::Syntax { line, message, .. }) => {
                assert_eq!(line, 2, "{hash_text}: {message}");
                assert!(message.contains(needle), "{hash_text}: {message}");
            }
            other => panic!("{hash_text}: {other:?}"),
        }
    }
    // The good line of that file verifies ("x", made by the reference implementation).
    let ok = PasswordFile::parse(
        &format!("ok:$argon2id$v=19$m=64,t=1,p=1${salt}${hash}\n"),
        Path::new("pw"),
    )
    .unwrap();
    assert!(ok.verify("ok", b"x"));
}

mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("topic".to_owned()),
            Just("pattern".to_owned()),
            Just("user".to_owned()),
            Just("read".to_owned()),
            Just("deny".to_owned()),
            Just("%u".to_owned()),
            Just("%c".to_owned()),
            "[a-c+#/$%ucu ]{0,6}",
        ]
    }

    proptest! {
        // Whatever the file and whoever asks, loading and deciding never panic, and a
        // client whose name holds a wildcard is never granted a topic through a pattern
        // alone.
        #[test]
        fn any_file_any_client(
            lines in proptest::collection::vec(proptest::collection::vec(word(), 0..5), 0..8),
            user in proptest::option::of("[a-c+#/]{0,4}"),
            id in "[a-c+#/]{1,4}",
            topic in "[a-c+#/$]{1,6}",
        ) {
            let text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
            if let Ok(acl) = MosquittoAcl::parse(&text, Path::new("p")) {
                let c = client(&id, user.as_deref());
                let _ = acl.authorize(&c, PUB, &topic);
                let _ = acl.authorize(&c, SUB, &topic);
                let only_patterns = !text.lines().any(|l| l.trim_start().starts_with("topic"));
                let wild = id.contains(['+', '#'])
                    || user.as_deref().is_some_and(|u| u.contains(['+', '#']));
                if only_patterns && wild {
                    prop_assert!(!acl.authorize(&c, PUB, &topic));
                    prop_assert!(!acl.authorize(&c, SUB, &topic));
                }
            }
        }
    }
}
