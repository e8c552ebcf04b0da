//! Authentication: a password file written by `gateway passwd` with anonymous access
//! off, and MQTT 5 enhanced authentication with a method the broker does not know.

use serde_json::{json, Value};

use interop_tests::broker::{gateway_passwd, password_file_only};
use interop_tests::script::ConnectOutcome;
use interop_tests::{
    external_mode, unique_client_id, Broker, Lib, ScriptClient, Setting, Version, TIMEOUT,
};

/// A broker with anonymous access off and one known user: (broker, user, password).
/// An external broker must be configured so and name a user in GATEWAY_TEST_USERNAME
/// and GATEWAY_TEST_PASSWORD. The temp dir holds the password file.
fn broker_with_user() -> Option<(Broker, String, String, Option<tempfile::TempDir>)> {
    if external_mode() {
        let (Ok(user), Ok(password)) = (
            std::env::var("GATEWAY_TEST_USERNAME"),
            std::env::var("GATEWAY_TEST_PASSWORD"),
        ) else {
            interop_tests::skip_external(
                "auth.allow_anonymous=false (set GATEWAY_TEST_USERNAME and GATEWAY_TEST_PASSWORD \
                 to a user of the broker to run it)",
            );
            return None;
        };
        return Some((Broker::start(), user, password, None));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    // Two users, the second added to an existing file, and the first one's password
    // updated: the file format must survive being edited.
    gateway_passwd(&file, "device-1", "initial password");
    gateway_passwd(&file, "operator", "another one");
    gateway_passwd(&file, "device-1", "s3cret: with spaces & ünïcode");
    let broker = Broker::start_with(&password_file_only(&file))?;
    Some((
        broker,
        "device-1".into(),
        "s3cret: with spaces & ünïcode".into(),
        Some(dir),
    ))
}

/// The CONNACK code for `credentials`, or None when the connection was just closed.
fn connack_code(broker: &Broker, lib: Lib, version: Version, mut credentials: Value) -> Option<u8> {
    credentials["client_id"] = json!(unique_client_id("auth"));
    match ScriptClient::spawn(lib, version, broker).connect(credentials) {
        ConnectOutcome::Connack(ack) => Some(ack.reason_code),
        ConnectOutcome::Lost(_) => None,
    }
}

#[test]
fn password_file_from_gateway_passwd_admits_the_right_password_only() {
    let Some((broker, user, password, _dir)) = broker_with_user() else {
        return;
    };
    for version in [Version::V311, Version::V5] {
        for lib in Lib::ALL {
            let what = format!("{lib:?} {version:?}");
            let (bad_credentials, not_authorized) = if version.is_v5() {
                (0x86, 0x87)
            } else {
                (4, 5)
            };

            let right = connack_code(
                &broker,
                lib,
                version,
                json!({ "username": user, "password": password }),
            );
            assert_eq!(right, Some(0), "{what}: right password");

            // Refused: the spec leaves the code to the server (Mosquitto says "not
            // authorized"); the gateway promises "bad user name or password".
            for (case, credentials) in [
                (
                    "wrong password",
                    json!({ "username": user, "password": "not it" }),
                ),
                (
                    "unknown user",
                    json!({ "username": "nobody", "password": password }),
                ),
            ] {
                let code = connack_code(&broker, lib, version, credentials);
                assert!(
                    code == Some(bad_credentials) || code == Some(not_authorized),
                    "{what}: {case} got {code:?}, not a refusal"
                );
                broker.gateway_promise(
                    code == Some(bad_credentials),
                    &format!("{what}: {case} gets CONNACK {bad_credentials:#04x} 'bad user name or password', got {code:?}"),
                );
            }

            // No user name at all: refused, as bad credentials or as not authorized.
            let anonymous = connack_code(&broker, lib, version, json!({}));
            assert!(
                anonymous == Some(bad_credentials) || anonymous == Some(not_authorized),
                "{what}: anonymous connection with anonymous access off got {anonymous:?}"
            );
        }
    }
}

#[test]
fn v5_connect_with_an_unsupported_authentication_method_gets_connack_0x8c() {
    let broker = Broker::start();
    for lib in Lib::ALL {
        let mut client = ScriptClient::spawn(lib, Version::V5, &broker);
        let outcome = client.connect(json!({
            "client_id": unique_client_id("authm"),
            "props": { "authentication_method": "X-UNSUPPORTED-METHOD", "authentication_data": "0102" },
        }));
        match outcome {
            ConnectOutcome::Connack(ack) => {
                assert_eq!(
                    ack.reason_code, 0x8C,
                    "{lib:?}: CONNACK reason (0x8C bad authentication method)"
                )
            }
            other => {
                panic!("{lib:?}: no CONNACK for an unsupported authentication method: {other:?}")
            }
        }
    }
}

/// A broker with anonymous access off and users `alice` and `bob`, each with the password
/// `{name}-secret`; None in external mode, which cannot be configured so.
fn broker_with_two_users() -> Option<(Broker, tempfile::TempDir)> {
    if external_mode() {
        interop_tests::skip_external(
            "auth.allow_anonymous=false, auth.password_file=[a file with the users alice and bob]",
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    gateway_passwd(&file, "alice", "alice-secret");
    gateway_passwd(&file, "bob", "bob-secret");
    let broker = Broker::start_with(&password_file_only(&file))?;
    Some((broker, dir))
}

#[test]
fn another_user_neither_resumes_nor_takes_over_a_persistent_session() {
    let Some((broker, _dir)) = broker_with_two_users() else {
        return;
    };
    for version in [Version::V311, Version::V5] {
        for lib in Lib::ALL {
            let what = format!("{lib:?} {version:?}");
            let client_id = unique_client_id("owned");
            let topic = interop_tests::unique_topic("owned");
            let alice_login = |clean: bool| {
                let mut opts = json!({
                    "client_id": client_id, "clean": clean,
                    "username": "alice", "password": "alice-secret",
                });
                if version.is_v5() {
                    opts["props"] = json!({ "session_expiry_interval": 600 });
                }
                opts
            };
            let mut alice = ScriptClient::spawn(lib, version, &broker);
            alice.connect_ok(alice_login(false));
            assert_eq!(alice.subscribe(&format!("{topic}/#"), 1), 1, "{what}");
            alice.disconnect();

            let mut sender = ScriptClient::spawn(lib, version, &broker);
            sender.connect_ok(json!({
                "client_id": unique_client_id("sender"),
                "username": "bob", "password": "bob-secret",
            }));
            sender.publish(&format!("{topic}/1"), b"for alice only", 1, false);

            // Resuming and taking over with a clean start are both refused: either would
            // hand bob alice's queued and future messages, or end her session.
            for clean in [false, true] {
                let mut bob = ScriptClient::spawn(lib, version, &broker);
                let mut opts = json!({
                    "client_id": client_id, "clean": clean,
                    "username": "bob", "password": "bob-secret",
                });
                if version.is_v5() {
                    opts["props"] = json!({ "session_expiry_interval": 600 });
                }
                let code = match bob.connect(opts) {
                    ConnectOutcome::Connack(ack) => Some(ack.reason_code),
                    ConnectOutcome::Lost(_) => None,
                };
                let refused = if version.is_v5() { 0x87 } else { 5 };
                assert_eq!(
                    code,
                    Some(refused),
                    "{what}: bob as {client_id}, clean {clean}"
                );
                assert!(
                    bob.try_recv(std::time::Duration::from_millis(300))
                        .is_none(),
                    "{what}: nothing reaches bob"
                );
            }

            let mut alice = ScriptClient::spawn(lib, version, &broker);
            let ack = alice.connect_ok(alice_login(false));
            assert!(ack.session_present, "{what}: alice's session is intact");
            let message = alice.recv(TIMEOUT);
            assert_eq!(message.payload, b"for alice only", "{what}");
            alice.disconnect();
        }
    }
}

#[test]
fn clients_cannot_publish_to_sys_topics() {
    let broker = Broker::start();
    let mut watcher =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("sysw"));
    assert_eq!(watcher.subscribe("$SYS/forged/#", 1), 1);
    for lib in Lib::ALL {
        for version in [Version::V311, Version::V5] {
            let mut forger =
                ScriptClient::connected(lib, version, &broker, &unique_client_id("sysf"));
            forger.publish("$SYS/forged/uptime", b"0 seconds", 0, true);
            // 3.1.1 acknowledges a refused QoS 1 message like any other; MQTT 5's PUBACK
            // says 0x87, which the clients report as a failed publish (the channel test
            // checks the code).
            if !version.is_v5() {
                forger.publish("$SYS/forged/uptime", b"0 seconds", 1, true);
            }
        }
    }
    let forged = watcher.try_recv(std::time::Duration::from_millis(500));
    if broker.is_gateway() {
        assert!(
            forged.is_none(),
            "a client's $SYS publish was routed: {forged:?}"
        );
    }
}

#[test]
fn a_client_id_holding_a_wildcard_or_separator_is_refused_a_per_client_mountpoint() {
    if external_mode() {
        interop_tests::skip_external("listeners.tcp.default.mountpoint=tenants/${clientid}/");
        return;
    }
    let Some(broker) = Broker::start_with(&[Setting::new(
        "GATEWAY_LISTENERS__TCP__DEFAULT__MOUNTPOINT",
        "tenants/${clientid}/",
    )]) else {
        return;
    };
    for version in [Version::V311, Version::V5] {
        for lib in Lib::ALL {
            let what = format!("{lib:?} {version:?}");
            let mut alice = ScriptClient::connected(lib, version, &broker, "alice");
            assert_eq!(alice.subscribe("private", 0), 0);
            for hostile in ["+", "#", "alice/private"] {
                let mut client = ScriptClient::spawn(lib, version, &broker);
                let code = match client.connect(json!({ "client_id": hostile })) {
                    ConnectOutcome::Connack(ack) => Some(ack.reason_code),
                    ConnectOutcome::Lost(_) => None,
                };
                let invalid = if version.is_v5() { 0x85 } else { 2 };
                assert_eq!(code, Some(invalid), "{what}: client id {hostile:?}");
            }
            let mut mallory = ScriptClient::connected(lib, version, &broker, "mallory");
            mallory.publish("private", b"mallory's", 1, false);
            assert!(
                alice
                    .try_recv(std::time::Duration::from_millis(300))
                    .is_none(),
                "{what}: mallory's private topic is not alice's"
            );
            alice.disconnect();
        }
    }
}
