//! `gateway config check FILE` and `gateway config print`, run as an operator runs them:
//! errors fail the check, a file the configuration names that start-up could not use fails
//! it as start-up would, naming the key and the file, and what a valid file leaves open is a
//! warning line and the check still passes. `config print` shows the configuration in effect
//! with its secrets masked.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Where the tests write their files.
fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config_check");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The gateway binary with none of the caller's `GATEWAY_*` variables (the commands apply
/// the environment) nor `RUST_LOG`.
fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GATEWAY_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Writes `toml` to `file_name` in the scratch directory.
fn write(file_name: &str, toml: &str) -> PathBuf {
    let file = scratch().join(file_name);
    std::fs::write(&file, toml).unwrap();
    file
}

/// Runs `gateway config check` on a file holding `toml`.
fn check(file_name: &str, toml: &str) -> Output {
    let file = write(file_name, toml);
    gateway()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap()
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
    let passwd = scratch().join("closed.passwd");
    std::fs::write(&passwd, "").unwrap();
    let closed = format!(
        "[auth]\nallow_anonymous = false\npassword_file = {:?}\n",
        passwd.display().to_string()
    );
    for (name, toml) in [
        ("loopback.toml", ALL_ON_LOOPBACK),
        ("closed.toml", closed.as_str()),
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

/// [`ALL_ON_LOOPBACK`] on ports the system chooses, and the store in memory: a gateway
/// started with it binds nothing another test or gateway uses.
fn all_on_any_port() -> String {
    let mut toml = String::from("storage = \"memory\"\n");
    for line in ALL_ON_LOOPBACK.lines() {
        match line.strip_prefix("bind = ") {
            Some(_) => toml.push_str("bind = \"127.0.0.1:0\""),
            None => toml.push_str(line),
        }
        toml.push('\n');
    }
    toml
}

/// `key = "path"` as TOML.
fn path_setting(key: &str, path: &std::path::Path) -> String {
    format!("{key} = {:?}\n", path.display().to_string())
}

/// The `error:` lines of a failed check.
fn error_lines(output: &Output) -> Vec<String> {
    text(&output.stderr)
        .lines()
        .filter(|line| line.starts_with("error: "))
        .map(str::to_owned)
        .collect()
}

/// Starts the gateway on `file` and waits for it to stop, which it must do at once: what it
/// wrote on stderr.
fn start_up_failure(file: &std::path::Path) -> String {
    let mut child = gateway()
        .arg("--config")
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                !status.success(),
                "the gateway started on {}",
                file.display()
            );
            break;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("the gateway did not refuse to start on {}", file.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

/// Checks the configuration `toml`, which names `missing` under `key`, then starts the
/// gateway on it: both must fail, the check with one error line naming the key and the file,
/// start-up naming them too.
fn fails_check_and_start_up(file_name: &str, toml: &str, key: &str, missing: &std::path::Path) {
    let file = write(file_name, toml);
    let output = gateway()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(!text(&output.stdout).contains(": ok"), "{output:?}");
    let errors = error_lines(&output);
    assert_eq!(errors.len(), 1, "{output:?}");
    let expected = format!("error: {key}: cannot read {}: ", missing.display());
    assert!(errors[0].starts_with(&expected), "{errors:?}");

    let start_up = start_up_failure(&file);
    assert!(start_up.contains(key), "{start_up}");
    assert!(
        start_up.contains(&format!("cannot read {}", missing.display())),
        "{start_up}"
    );
}

#[test]
fn a_missing_password_file_fails_the_check_as_it_fails_start_up() {
    let missing = scratch().join("no-such.passwd");
    let toml = format!(
        "{}[auth]\nallow_anonymous = false\n{}",
        all_on_any_port(),
        path_setting("password_file", &missing)
    );
    fails_check_and_start_up("missing-passwd.toml", &toml, "auth.password_file", &missing);
}

#[test]
fn a_missing_certificate_fails_the_check_as_it_fails_start_up() {
    let cert = scratch().join("no-such-server.pem");
    let key = scratch().join("no-such-server.key");
    let toml = format!(
        "{}[listeners.ssl.default]\nbind = \"127.0.0.1:0\"\n[listeners.ssl.default.tls]\n{}{}",
        all_on_any_port(),
        path_setting("certfile", &cert),
        path_setting("keyfile", &key)
    );
    let key_name = "listeners.ssl.default.tls.certfile";
    fails_check_and_start_up("missing-cert.toml", &toml, key_name, &cert);
}

#[test]
fn a_malformed_object_definition_fails_the_check_and_start_up_naming_its_file_and_line() {
    let dir = scratch().join("malformed-xml-dir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let definition = dir.join("9000.xml");
    std::fs::write(
        &definition,
        "<?xml version=\"1.0\"?>\n<LWM2M>\n  <Object>\n    <ObjectID>9000</ObjectID>\n  </Objet>\n</LWM2M>\n",
    )
    .unwrap();
    let toml = format!(
        "{}[gateway.lwm2m]\n{}",
        all_on_any_port(),
        path_setting("xml_dir", &dir)
    );
    let file = write("malformed-xml.toml", &toml);
    let output = gateway()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let errors = error_lines(&output);
    assert_eq!(
        errors,
        [format!(
            "error: gateway.lwm2m.xml_dir: {}:5:3: expected 'Object' tag, not 'Objet'",
            definition.display()
        )],
        "{output:?}"
    );
    let start_up = start_up_failure(&file);
    assert!(start_up.contains("gateway.lwm2m.xml_dir"), "{start_up}");
    assert!(
        start_up.contains(&format!("{}:5:3: ", definition.display())),
        "{start_up}"
    );
}

#[test]
fn every_file_the_configuration_names_is_read_and_each_unusable_one_named() {
    // A directory of its own, emptied: the files the test makes usable must be missing at
    // first however often it runs.
    let dir = scratch().join("many-files");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let acl = dir.join("broken.acl");
    std::fs::write(&acl, "allow all all a/#\nallow nobody-knows all #\n").unwrap();
    let passwd = dir.join("broken.passwd");
    std::fs::write(&passwd, "user-without-hash\n").unwrap();
    let psk = dir.join("no-such-psk.txt");
    let ca = dir.join("no-such-ca.pem");
    let xml_dir = dir.join("no-such-xml-dir");
    let toml = format!(
        "{}[auth]\n{}{}\
         [gateway.coap.listeners.dtls.default.dtls_options]\n{}\
         [gateway.stomp.listeners.ssl.default.ssl_options]\nself_signed = true\n\
         verify = \"optional\"\n{}\
         [gateway.lwm2m]\n{}",
        all_on_any_port(),
        path_setting("password_file", &passwd),
        path_setting("acl_file", &acl),
        path_setting("psk_file", &psk),
        path_setting("cacertfile", &ca),
        path_setting("xml_dir", &xml_dir),
    );
    let output = check("many-files.toml", &toml);
    assert!(!output.status.success(), "{output:?}");
    let errors = error_lines(&output);
    let expected = [
        format!("error: auth.password_file: {}:1: expected username:hash", passwd.display()),
        format!("error: auth.acl_file: {}:2: ", acl.display()),
        format!("error: gateway.coap.listeners.dtls.default.dtls_options: cannot read the pre-shared key file {}", psk.display()),
        format!("error: gateway.stomp.listeners.ssl.default.ssl_options.cacertfile: cannot read {}", ca.display()),
        format!("error: gateway.lwm2m.xml_dir: cannot read {}: ", xml_dir.display()),
    ];
    assert_eq!(errors.len(), expected.len(), "{output:?}");
    for (error, expected) in errors.iter().zip(&expected) {
        assert!(
            error.starts_with(expected.as_str()),
            "{error}\ndoes not start with\n{expected}"
        );
    }

    // The same files, usable: the check passes.
    std::fs::write(&acl, "allow all all a/#\n").unwrap();
    std::fs::write(&passwd, "").unwrap();
    std::fs::write(&psk, "device-1:00112233445566778899aabbccddeeff\n").unwrap();
    std::fs::create_dir_all(&xml_dir).unwrap();
    let usable = toml
        .replace(&path_setting("cacertfile", &ca), "")
        .replace("verify = \"optional\"\n", "");
    let output = check("many-files-usable.toml", &usable);
    assert!(output.status.success(), "{output:?}");
    assert!(
        text(&output.stdout).contains("many-files-usable.toml: ok"),
        "{output:?}"
    );
}

#[test]
fn config_print_shows_the_configuration_in_effect_with_its_secrets_masked() {
    let file = write(
        "print.toml",
        r#"
[auth]
acl_file = "/etc/gateway/acl"
[gateway.mqttsn.clientinfo_override]
password = "from-the-file"
[listeners.tcp.default]
bind = "127.0.0.1:21883"
"#,
    );
    let output = gateway()
        .args(["config", "print"])
        .arg(&file)
        .env("GATEWAY_MQTT__MAX_PACKET_SIZE", "4096")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = text(&output.stdout);
    assert!(!printed.contains("from-the-file"), "{printed}");
    for shown in [
        "password = \"<masked>\"",
        "acl_file = \"/etc/gateway/acl\"",
        "bind = \"127.0.0.1:21883\"",
        "max_packet_size = 4096",
    ] {
        assert!(printed.contains(shown), "{shown} not in {printed}");
    }
    // What it prints is a configuration that loads, to the same effect but the secret.
    let reprinted_file = write("print-again.toml", &printed);
    let again = gateway()
        .args(["config", "print"])
        .arg(&reprinted_file)
        .env("GATEWAY_MQTT__MAX_PACKET_SIZE", "4096")
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    let body = |all: &str| {
        all.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&text(&again.stdout)), body(&printed));

    // GATEWAY_CONFIG names the file when no FILE and no --config do; a secret set in the
    // environment is masked too.
    let output = gateway()
        .args(["config", "print"])
        .env("GATEWAY_CONFIG", &file)
        .env(
            "GATEWAY_GATEWAY__MQTTSN__CLIENTINFO_OVERRIDE__PASSWORD",
            "from-the-env",
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = text(&output.stdout);
    assert!(printed.contains("bind = \"127.0.0.1:21883\""), "{printed}");
    assert!(!printed.contains("from-the-env"), "{printed}");
    assert!(printed.contains("password = \"<masked>\""), "{printed}");
}

#[test]
fn the_gateway_reads_its_configuration_from_gateway_config() {
    // A file that start-up refuses, named only by GATEWAY_CONFIG: refusing it proves it
    // was read.
    let missing = scratch().join("env-named-no-such.passwd");
    let file = write(
        "env-named.toml",
        &format!(
            "{}[auth]\n{}",
            all_on_any_port(),
            path_setting("password_file", &missing)
        ),
    );
    let output = gateway().env("GATEWAY_CONFIG", &file).output().unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("auth.password_file"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[test]
fn a_missing_api_key_file_fails_the_check_as_it_fails_start_up() {
    let missing = scratch().join("no-such.api_keys");
    let toml = format!(
        "{}[dashboard.listeners.http]\nbind = \"127.0.0.1:0\"\n[api_key]\n{}",
        all_on_any_port(),
        path_setting("bootstrap_file", &missing)
    );
    fails_check_and_start_up(
        "missing-api-keys.toml",
        &toml,
        "api_key.bootstrap_file",
        &missing,
    );
}

#[test]
fn a_mosquitto_acl_file_is_checked_in_the_format_acl_format_names() {
    let dir = scratch();
    let acl = dir.join("mosquitto.acl");
    std::fs::write(
        &acl,
        "user alice\ntopic read alice/#\npattern readwrite %u/#\n",
    )
    .unwrap();
    let mosquitto = format!(
        "{}[auth]\nacl_format = \"mosquitto\"\n{}",
        all_on_any_port(),
        path_setting("acl_file", &acl)
    );
    let output = check("mosquitto-acl.toml", &mosquitto);
    assert!(output.status.success(), "{output:?}");
    // The same file read as the gateway's format is refused on its first line.
    let gateway_format = format!(
        "{}[auth]\n{}",
        all_on_any_port(),
        path_setting("acl_file", &acl)
    );
    let output = check("mosquitto-acl-as-gateway.toml", &gateway_format);
    assert!(!output.status.success(), "{output:?}");
    let expected = format!("error: auth.acl_file: {}:1: ", acl.display());
    assert!(
        error_lines(&output)
            .iter()
            .any(|e| e.starts_with(&expected)),
        "{output:?}"
    );
    // A Mosquitto file with an unknown access word names its line.
    let broken = dir.join("broken-mosquitto.acl");
    std::fs::write(
        &broken,
        "user alice\ntopic read alice/#\ntopic readonly x\n",
    )
    .unwrap();
    let toml = format!(
        "{}[auth]\nacl_format = \"mosquitto\"\n{}",
        all_on_any_port(),
        path_setting("acl_file", &broken)
    );
    let output = check("broken-mosquitto-acl.toml", &toml);
    assert!(!output.status.success(), "{output:?}");
    let expected = format!(
        "error: auth.acl_file: {}:3: expected read, write, readwrite or deny",
        broken.display()
    );
    assert!(
        error_lines(&output)
            .iter()
            .any(|e| e.starts_with(&expected)),
        "{output:?}"
    );
}
