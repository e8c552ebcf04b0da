//! `gateway config check FILE`, run as an operator runs it: errors fail the check, what a
//! valid file leaves open is a warning line and the check still passes.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `gateway config check` on a file holding `toml`, with none of the caller's
/// `GATEWAY_*` variables (the check applies the environment).
fn check(file_name: &str, toml: &str) -> Output {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config_check");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(file_name);
    std::fs::write(&file, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GATEWAY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["config", "check"]).arg(&file).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn warning_lines(output: &Output) -> Vec<String> {
    text(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("warning: "))
        .map(str::to_owned)
        .collect()
}

/// Every listener that starts by default, bound to loopback.
const ALL_ON_LOOPBACK: &str = r#"
[listeners.tcp.default]
bind = "127.0.0.1:1883"
[listeners.ws.default]
bind = "127.0.0.1:8083"
[gateway.mqttsn.listeners.udp.default]
bind = "127.0.0.1:1884"
[gateway.coap.listeners.udp.default]
bind = "127.0.0.1:5683"
[gateway.coap.listeners.tcp.default]
bind = "127.0.0.1:5683"
[gateway.lwm2m.listeners.udp.default]
bind = "127.0.0.1:5783"
[gateway.stomp.listeners.tcp.default]
bind = "127.0.0.1:61613"
"#;

#[test]
fn anonymous_allow_all_on_a_public_address_is_a_warning_not_a_failure() {
    let output = check("defaults.toml", "");
    assert!(output.status.success(), "{output:?}");
    assert!(
        text(&output.stdout).contains("defaults.toml: ok"),
        "{output:?}"
    );
    let warnings = warning_lines(&output);
    assert_eq!(warnings.len(), 1, "{output:?}");
    let warning = &warnings[0];
    for named in [
        "auth.allow_anonymous = true",
        "auth.acl_no_match = \"allow\"",
        "listeners.tcp.default (0.0.0.0:1883)",
        "gateway.mqttsn.listeners.udp.default (0.0.0.0:1884)",
    ] {
        assert!(warning.contains(named), "{named} not in {warning}");
    }

    let one_public = format!("{ALL_ON_LOOPBACK}[listeners.tcp.lan]\nbind = \"0.0.0.0:11883\"\n");
    let output = check("one-public.toml", &one_public);
    assert!(output.status.success(), "{output:?}");
    let warnings = warning_lines(&output);
    assert_eq!(warnings.len(), 1, "{output:?}");
    assert!(
        warnings[0].contains("listeners.tcp.lan (0.0.0.0:11883)"),
        "{warnings:?}"
    );
    assert!(
        !warnings[0].contains("listeners.tcp.default"),
        "{warnings:?}"
    );
}

#[test]
fn loopback_only_or_closed_configurations_check_without_a_warning() {
    let closed = "[auth]\nallow_anonymous = false\npassword_file = \"/etc/gateway/passwd\"\n";
    for (name, toml) in [
        ("loopback.toml", ALL_ON_LOOPBACK),
        ("closed.toml", closed),
        ("deny.toml", "[auth]\nacl_no_match = \"deny\"\n"),
    ] {
        let output = check(name, toml);
        assert!(output.status.success(), "{name}: {output:?}");
        assert_eq!(warning_lines(&output), Vec::<String>::new(), "{name}");
        assert!(
            text(&output.stdout).contains(&format!("{name}: ok")),
            "{output:?}"
        );
    }
}

#[test]
fn anonymous_access_off_without_a_password_file_fails_the_check() {
    let output = check("no-passwords.toml", "[auth]\nallow_anonymous = false\n");
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("auth.allow_anonymous = false needs auth.password_file"),
        "{stderr}"
    );
    assert!(!text(&output.stdout).contains(": ok"), "{output:?}");
}
