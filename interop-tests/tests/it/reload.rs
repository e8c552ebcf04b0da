//! The password file, the ACL file and the log level changed while the gateway runs: read
//! again on SIGHUP (`kill -HUP`) and, for the files, when they change. A broken file keeps
//! the one in force and is named, with its line, once in the log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use interop_tests::admin::http;
use interop_tests::broker::{gateway_passwd, password_file_only};
use interop_tests::coap::coap_client;
use interop_tests::process::Proc;
use interop_tests::{
    unique_client_id, unique_topic, Broker, MosquittoSub, Setting, Version, TIMEOUT,
};

/// How long the gateway may take to notice a changed file: two of its checks.
const NOTICED_WITHIN: Duration = Duration::from_secs(5);

/// Publishes one QoS 1 message with `mosquitto_pub` (MQTT 5) as `user` with `password`
/// (anonymously with `None`): Ok once acknowledged, or mosquitto_pub's complaint.
fn publish_as(
    broker: &Broker,
    credentials: Option<(&str, &str)>,
    topic: &str,
    payload: &str,
) -> Result<(), String> {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", &broker.host, "-p", &broker.port.to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-t", topic, "-m", payload]);
    if let Some((user, password)) = credentials {
        cmd.args(["-u", user, "-P", password]);
    }
    let mut proc = Proc::spawn("mosquitto_pub", cmd);
    match proc.wait(TIMEOUT) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("{status}: {}", proc.stderr())),
        None => panic!("mosquitto_pub -t {topic} hung; stderr:\n{}", proc.stderr()),
    }
}

/// The code `coap-client` gets for a publish as `user` with `password`: None for success,
/// else the error code it prints ("4.01").
fn coap_publish_as(broker: &Broker, user: &str, password: &str, topic: &str) -> Option<String> {
    let query = format!(
        "clientid={}&username={user}&password={password}",
        unique_client_id("reload")
    );
    let (ok, _, stderr) = coap_client(
        broker,
        &["-m", "post", "-e", "from coap"],
        &format!("/ps/{topic}?{query}"),
    );
    assert!(ok, "coap-client failed: {stderr}");
    stderr.split_whitespace().next().map(str::to_owned)
}

/// Polls `done` every 100 ms until it holds or `within` passes.
fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines of the gateway's log that hold every one of `needles`.
fn log_lines(broker: &Broker, needles: &[&str]) -> Vec<String> {
    broker
        .log()
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

/// Takes `user`'s line out of the password file `file`.
fn remove_user(file: &Path, user: &str) {
    let text = std::fs::read_to_string(file).expect("read the password file");
    let kept: String = text
        .lines()
        .filter(|line| !line.starts_with(&format!("{user}:")))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(file, kept).expect("write the password file");
}

/// How mosquitto_pub words CONNACK 0x86, in lower case.
const BAD_CREDENTIALS: &str = "bad user name or password";

/// Whether mosquitto_pub's complaint is CONNACK 0x86.
fn bad_credentials(complaint: &str) -> bool {
    complaint.to_lowercase().contains(BAD_CREDENTIALS)
}

#[test]
fn a_user_added_to_the_password_file_is_admitted_after_sighup_in_every_protocol_and_a_removed_one_no_longer(
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    gateway_passwd(&file, "device-1", "pw-1");
    let Some(broker) =
        Broker::start_gateway_only("a gateway the test signals", &password_file_only(&file))
    else {
        return;
    };
    let topic = unique_topic("reload-users");
    publish_as(&broker, Some(("device-1", "pw-1")), &topic, "known").unwrap();
    let refused = publish_as(&broker, Some(("newuser", "pw")), &topic, "unknown").unwrap_err();
    assert!(bad_credentials(&refused), "{refused}");
    assert_eq!(
        coap_publish_as(&broker, "newuser", "pw", &topic).as_deref(),
        Some("4.01")
    );

    gateway_passwd(&file, "newuser", "pw");
    broker.signal(libc::SIGHUP);
    assert!(
        eventually(TIMEOUT, || publish_as(
            &broker,
            Some(("newuser", "pw")),
            &topic,
            "new"
        )
        .is_ok()),
        "the user added is admitted after SIGHUP:\n{}",
        broker.log_tail()
    );
    assert!(
        !log_lines(
            &broker,
            &["auth.password_file", "SIGHUP", "password file reloaded"]
        )
        .is_empty(),
        "{}",
        broker.log_tail()
    );
    // Every protocol authenticates through the same users: CoAP admits the new one too.
    assert_eq!(coap_publish_as(&broker, "newuser", "pw", &topic), None);
    let wrong = publish_as(&broker, Some(("newuser", "not it")), &topic, "x").unwrap_err();
    assert!(bad_credentials(&wrong), "{wrong}");

    // A connected client of a user then removed keeps its connection and its session.
    let mut connected = MosquittoSub::start(
        &broker,
        Version::V5,
        &[&topic],
        1,
        &["-u", "newuser", "-P", "pw", "-i", &unique_client_id("kept")],
    );
    remove_user(&file, "newuser");
    broker.signal(libc::SIGHUP);
    // Publishes that may still be admitted go where the connected client is not subscribed.
    let probe = format!("{topic}-probe");
    assert!(
        eventually(TIMEOUT, || {
            publish_as(&broker, Some(("newuser", "pw")), &probe, "removed")
                .is_err_and(|error| bad_credentials(&error))
        }),
        "the user removed is refused after SIGHUP:\n{}",
        broker.log_tail()
    );
    assert_eq!(
        coap_publish_as(&broker, "newuser", "pw", &topic).as_deref(),
        Some("4.01")
    );
    publish_as(
        &broker,
        Some(("device-1", "pw-1")),
        &topic,
        "to the one still connected",
    )
    .unwrap();
    assert_eq!(
        connected.recv(TIMEOUT).payload,
        b"to the one still connected"
    );
}

#[test]
fn a_user_added_to_the_password_file_is_admitted_without_a_signal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    gateway_passwd(&file, "device-1", "pw-1");
    let Some(broker) = Broker::start_gateway_only(
        "a gateway that watches its files",
        &password_file_only(&file),
    ) else {
        return;
    };
    let topic = unique_topic("reload-watch");
    let refused = publish_as(&broker, Some(("watched", "pw")), &topic, "unknown").unwrap_err();
    assert!(bad_credentials(&refused), "{refused}");

    gateway_passwd(&file, "watched", "pw");
    assert!(
        eventually(NOTICED_WITHIN + TIMEOUT, || {
            publish_as(&broker, Some(("watched", "pw")), &topic, "new").is_ok()
        }),
        "the user added is admitted once the change is noticed:\n{}",
        broker.log_tail()
    );
    assert!(
        !log_lines(
            &broker,
            &[
                "auth.password_file",
                "file changed",
                "password file reloaded"
            ]
        )
        .is_empty(),
        "{}",
        broker.log_tail()
    );
    assert!(
        log_lines(&broker, &["SIGHUP"]).is_empty(),
        "{}",
        broker.log_tail()
    );
}

#[test]
fn a_user_added_to_the_password_file_is_admitted_after_a_reload_through_the_admin_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwd");
    gateway_passwd(&file, "device-1", "pw-1");
    let Some(broker) = Broker::start_gateway_only(
        "a gateway reloaded through its admin API",
        &password_file_only(&file),
    ) else {
        return;
    };
    let topic = unique_topic("reload-api");
    let refused = publish_as(&broker, Some(("asked", "pw")), &topic, "unknown").unwrap_err();
    assert!(bad_credentials(&refused), "{refused}");

    gateway_passwd(&file, "asked", "pw");
    let asked = http(&broker, "POST", "/api/v5/reload", None);
    assert_eq!(asked.status, 200, "{asked:?}");
    let answer = asked.json();
    assert_eq!(answer["failed"], serde_json::json!([]), "{answer}");
    assert!(
        answer["reloaded"].as_array().is_some_and(|done| done
            .iter()
            .any(|one| one["key"] == "auth.password_file" && one["what"] == "password file")),
        "{answer}"
    );
    // Admitted at once, without waiting for the file's change to be noticed.
    publish_as(&broker, Some(("asked", "pw")), &topic, "admitted").expect("admitted");
    assert!(
        !log_lines(
            &broker,
            &["auth.password_file", "admin API", "password file reloaded"]
        )
        .is_empty(),
        "{}",
        broker.log_tail()
    );
    // Only with a key, once the gateway has keys: tested with the other operations in
    // admin.rs; a GET is not a reload.
    assert_eq!(http(&broker, "GET", "/api/v5/reload", None).status, 405);
}

/// What a SUBACK grants an anonymous MQTT 5 client for `allowed/...` and `denied/...`,
/// and which of two publishes, the `denied/...` one first, a subscriber allowed everything
/// gets.
fn rules_in_force(broker: &Broker, watcher: &mut MosquittoSub, label: &str) -> (Vec<u8>, String) {
    let allowed = format!("allowed/{}", unique_topic(label));
    let denied = format!("denied/{}", unique_topic(label));
    let mut sub = MosquittoSub::start(broker, Version::V5, &[&allowed, &denied], 1, &[]);
    let granted = sub.granted.clone();
    sub.kill();
    // QoS 1: the first is acknowledged (or refused) before the second is sent. A refused
    // publish may make mosquitto_pub fail; what was routed is what counts.
    let _ = publish_as(broker, None, &denied, "to denied");
    let _ = publish_as(broker, None, &allowed, "to allowed");
    let first = watcher.recv(TIMEOUT);
    (
        granted,
        first.topic.split('/').next().unwrap_or_default().to_owned(),
    )
}

const REFUSED: u8 = 0x87;

#[test]
fn a_broken_acl_file_keeps_the_rules_in_force_and_is_named_once_with_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acl = dir.path().join("acl");
    let watcher_rule = "allow user:watcher subscribe allowed/# denied/#\n";
    std::fs::write(
        &acl,
        format!("{watcher_rule}allow all all allowed/#\ndeny all all #\n"),
    )
    .unwrap();
    let Some(broker) = Broker::start_gateway_only(
        "a gateway the test signals",
        &[
            Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string()),
            Setting::new("GATEWAY_AUTH__ACL_NO_MATCH", "deny"),
        ],
    ) else {
        return;
    };
    let mut watcher = MosquittoSub::start(
        &broker,
        Version::V5,
        &["allowed/#", "denied/#"],
        1,
        &["-u", "watcher"],
    );
    assert_eq!(watcher.granted, [1, 1]);
    let as_loaded = (vec![1, REFUSED], "allowed".to_owned());
    assert_eq!(
        rules_in_force(&broker, &mut watcher, "acl-first"),
        as_loaded
    );

    // Broken on line 4: had it been taken, `denied/...` would be allowed.
    std::fs::write(
        &acl,
        format!(
            "{watcher_rule}allow all all allowed/#\nallow all all denied/#\nallow nobody all #\n"
        ),
    )
    .unwrap();
    let failed = |broker: &Broker| log_lines(broker, &["auth.acl_file", "ACL file reload failed"]);
    assert!(
        eventually(NOTICED_WITHIN, || !failed(&broker).is_empty()),
        "a broken ACL file is noticed:\n{}",
        broker.log_tail()
    );
    // Two more checks of the file: it is named once, not at every check.
    std::thread::sleep(NOTICED_WITHIN);
    let lines = failed(&broker);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(
        lines[0].contains(&format!("{}:4:", acl.display())),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\"nobody\""), "{}", lines[0]);
    assert_eq!(
        rules_in_force(&broker, &mut watcher, "acl-broken"),
        as_loaded
    );

    // SIGHUP reads it again, fails again, says so once more, and keeps the rules.
    broker.signal(libc::SIGHUP);
    assert!(
        eventually(TIMEOUT, || failed(&broker).len() == 2),
        "{}",
        broker.log_tail()
    );
    assert!(
        failed(&broker)[1].contains("SIGHUP"),
        "{:#?}",
        failed(&broker)
    );
    assert_eq!(
        rules_in_force(&broker, &mut watcher, "acl-sighup"),
        as_loaded
    );

    // So does an operator's request through the admin API, which answers which source
    // kept what was in force, and why.
    let asked = http(&broker, "POST", "/api/v5/reload", None);
    assert_eq!(asked.status, 422, "{asked:?}");
    let answer = asked.json();
    let failed = answer["failed"].as_array().cloned().unwrap_or_default();
    assert_eq!(failed.len(), 1, "{answer}");
    assert_eq!(failed[0]["key"], "auth.acl_file");
    assert_eq!(failed[0]["what"], "ACL file");
    let why = failed[0]["error"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("{}:4:", acl.display())), "{why}");
    assert!(
        answer["reloaded"]
            .as_array()
            .is_some_and(|done| done.iter().any(|one| one["key"] == "log.level")),
        "{answer}"
    );
    assert_eq!(rules_in_force(&broker, &mut watcher, "acl-api"), as_loaded);

    // Mended, with the rules turned around: the next checks follow them.
    std::fs::write(
        &acl,
        format!("{watcher_rule}allow all all denied/#\ndeny all all #\n"),
    )
    .unwrap();
    broker.signal(libc::SIGHUP);
    assert!(
        eventually(TIMEOUT, || !log_lines(
            &broker,
            &["auth.acl_file", "ACL file reloaded"]
        )
        .is_empty()),
        "{}",
        broker.log_tail()
    );
    assert_eq!(
        rules_in_force(&broker, &mut watcher, "acl-mended"),
        (vec![REFUSED, 1], "denied".to_owned())
    );
}

#[test]
fn sighup_puts_the_log_level_of_the_configuration_file_in_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[log]\nlevel = \"info\"\n").unwrap();
    let Some(broker) = Broker::start_gateway_only(
        "a gateway the test signals",
        &[Setting::new("GATEWAY_CONFIG", config.display().to_string())],
    ) else {
        return;
    };
    let topic = unique_topic("reload-log");
    // A debug line every accepted connection writes.
    let accepted = |broker: &Broker| log_lines(broker, &["DEBUG", "connection accepted"]).len();
    publish_as(&broker, None, &topic, "at info").unwrap();
    assert_eq!(accepted(&broker), 0, "{}", broker.log_tail());

    std::fs::write(&config, "[log]\nlevel = \"debug\"\n").unwrap();
    broker.signal(libc::SIGHUP);
    assert!(
        eventually(TIMEOUT, || !log_lines(
            &broker,
            &["log level changed", "debug"]
        )
        .is_empty()),
        "{}",
        broker.log_tail()
    );
    publish_as(&broker, None, &topic, "at debug").unwrap();
    assert!(accepted(&broker) >= 1, "{}", broker.log_tail());

    // Back to info, with another change that waits for a restart, which is said.
    std::fs::write(
        &config,
        "[log]\nlevel = \"info\"\n[mqtt]\nmax_packet_size = 4096\n",
    )
    .unwrap();
    broker.signal(libc::SIGHUP);
    assert!(
        eventually(TIMEOUT, || log_lines(&broker, &["log level changed"]).len()
            == 2),
        "{}",
        broker.log_tail()
    );
    assert!(
        !log_lines(&broker, &["take effect at the next start"]).is_empty(),
        "{}",
        broker.log_tail()
    );
    let before = accepted(&broker);
    publish_as(&broker, None, &topic, "at info again").unwrap();
    assert_eq!(accepted(&broker), before, "{}", broker.log_tail());
}

#[test]
fn rust_log_replaces_the_configured_level_and_stays_through_sighup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[log]\nlevel = \"info\"\n").unwrap();
    let Some(broker) = Broker::start_gateway_only(
        "a gateway started with RUST_LOG",
        &[
            Setting::new("GATEWAY_CONFIG", config.display().to_string()),
            Setting::new("RUST_LOG", "info,adapter_kit=debug"),
        ],
    ) else {
        return;
    };
    let topic = unique_topic("rust-log");
    let accepted = |broker: &Broker| log_lines(broker, &["DEBUG", "connection accepted"]).len();
    publish_as(&broker, None, &topic, "x").unwrap();
    assert!(accepted(&broker) >= 1, "{}", broker.log_tail());

    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").unwrap();
    broker.signal(libc::SIGHUP);
    assert!(
        eventually(TIMEOUT, || !log_lines(&broker, &["RUST_LOG is set"])
            .is_empty()),
        "{}",
        broker.log_tail()
    );
    let before = accepted(&broker);
    publish_as(&broker, None, &topic, "y").unwrap();
    assert!(accepted(&broker) > before, "{}", broker.log_tail());
}

/// Publishes one message with `mosquitto_pub` (MQTT 5) as client `id`: whether it was let in,
/// and what it said.
fn publish_with_id(broker: &Broker, id: &str) -> Result<(), String> {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", &broker.host, "-p", &broker.port.to_string()])
        .args(["-V", "mqttv5", "-i", id, "-t", "reload/banned", "-m", "x"]);
    let mut proc = Proc::spawn("mosquitto_pub", cmd);
    match proc.wait(TIMEOUT) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("{status}: {}", proc.stderr())),
        None => panic!("mosquitto_pub as {id} hung; stderr:\n{}", proc.stderr()),
    }
}

#[test]
fn the_banned_file_is_read_at_start_and_again_and_a_broken_one_keeps_its_bans() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("banned.csv");
    let stolen = unique_client_id("stolen");
    std::fs::write(&file, format!("as,who,reason\nclientid,{stolen},lost\n")).unwrap();
    let Some(broker) = Broker::start_gateway_only(
        "a gateway with a banned file",
        &[Setting::new(
            "GATEWAY_BANNED__BOOTSTRAP_FILE",
            file.display().to_string(),
        )],
    ) else {
        return;
    };
    let refused = publish_with_id(&broker, &stolen).unwrap_err();
    assert!(refused.contains("Banned"), "{refused}");
    publish_with_id(&broker, &unique_client_id("free")).expect("another client id");

    // A user added to the file: the reload kicks out the client it names, connected now.
    let mut eve = Proc::spawn("mosquitto_sub as eve", {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-h", &broker.host, "-p", &broker.port.to_string()])
            .args(["-V", "mqttv5", "-u", "eve", "-t", "reload/#"]);
        cmd
    });
    assert!(eventually(TIMEOUT, || {
        http(&broker, "GET", "/api/v5/clients?username=eve", None).json()["meta"]["count"] == 1
    }));
    std::fs::write(
        &file,
        format!("as,who,reason\nclientid,{stolen},lost\nusername,eve,eavesdrops\n"),
    )
    .unwrap();
    let asked = http(&broker, "POST", "/api/v5/reload", None);
    assert_eq!(asked.status, 200, "{asked:?}");
    assert!(eve.wait(TIMEOUT).is_some(), "eve's client still connected");
    let listed = http(&broker, "GET", "/api/v5/banned", None).json();
    assert_eq!(listed["meta"]["count"], 2, "{listed}");
    assert_eq!(listed["data"][1]["by"], "banned.bootstrap_file");

    // Broken on line 3: refused, named, and the bans read before stay in force.
    std::fs::write(
        &file,
        format!("as,who\nclientid,{stolen}\npeerhost,localhost\n"),
    )
    .unwrap();
    let asked = http(&broker, "POST", "/api/v5/reload", None);
    assert_eq!(asked.status, 422, "{asked:?}");
    let answer = asked.json();
    assert_eq!(
        answer["failed"][0]["key"], "banned.bootstrap_file",
        "{answer}"
    );
    let why = answer["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("{}:3:", file.display())), "{why}");
    assert_eq!(
        http(&broker, "GET", "/api/v5/banned", None).json()["meta"]["count"],
        2
    );
    assert!(publish_with_id(&broker, &stolen).is_err());

    // `config check` reads it as start-up would, and fails on the same line.
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[banned]\nbootstrap_file = {:?}\n",
            file.display().to_string()
        ),
    )
    .unwrap();
    let output = interop_tests::broker::gateway_command()
        .args(["config", "check"])
        .arg(&config)
        .output()
        .expect("run gateway config check");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains(&format!("{}:3:", file.display())), "{said}");
}
