//! The broker under test: a gateway process started for one test, or an external
//! broker named by `GATEWAY_TEST_HOST` / `GATEWAY_TEST_MQTT_PORT`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::{bound_listeners, BoundListener};
use crate::process::Proc;
use crate::TIMEOUT;

/// How long a freshly started gateway may take to report its listeners bound and answer
/// an MQTT CONNECT.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the gateway gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of the gateway's log a failing test prints.
const LOG_TAIL_BYTES: u64 = 8 * 1024;

/// One configuration value a test needs from the broker.
///
/// A started gateway gets it through its environment variable. An external broker
/// cannot be configured from here, so the test runs against one only when the user
/// states the broker's value in `external_env` (for example
/// `GATEWAY_TEST_MAX_PACKET_SIZE=1024` for a broker configured that way).
#[derive(Clone, Debug)]
pub struct Setting {
    /// The gateway's environment variable, e.g. `GATEWAY_MQTT__MAX_PACKET_SIZE`.
    pub gateway_env: &'static str,
    pub value: String,
    /// The variable through which a user tells the value of an external broker; None
    /// when the test can only run against a gateway it starts itself.
    pub external_env: Option<&'static str>,
}

impl Setting {
    pub fn new(gateway_env: &'static str, value: impl Into<String>) -> Setting {
        Setting {
            gateway_env,
            value: value.into(),
            external_env: None,
        }
    }

    /// A setting an external broker can satisfy when `external_env` states its value.
    pub fn or_external(mut self, external_env: &'static str) -> Setting {
        self.external_env = Some(external_env);
        self
    }
}

/// What a test prints, ending a line, when it does not run against an external
/// broker: `not applicable in external mode: needs REQUIREMENT`. REQUIREMENT is
/// configuration keys with the values the test needs (`auth.allow_anonymous=false,
/// mqtt.max_packet_size=1024`), or, when no configuration gives it, what the test needs
/// in brackets (`[control of the gateway process: restart]`). The conformance runner reads
/// it to report skips.
pub const SKIP_MARKER: &str = "not applicable in external mode: needs ";

/// Prints the skip line (see [`SKIP_MARKER`]) for `requirement`.
pub fn skip_external(requirement: &str) {
    println!("{SKIP_MARKER}{requirement}");
}

/// The configuration key an environment variable of the gateway sets:
/// `GATEWAY_MQTT__MAX_PACKET_SIZE` is `mqtt.max_packet_size`.
pub fn config_key(gateway_env: &str) -> String {
    // Not configuration (`RUST_LOG`, `NOTIFY_SOCKET`): the variable itself.
    let Some(key) = gateway_env.strip_prefix("GATEWAY_") else {
        return gateway_env.to_string();
    };
    key.split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// `key=value, key=value` for `settings`, else `[needs]`: the requirement of a test that
/// an external broker cannot meet. A value naming a file or an address the test made is
/// of no use to the reader and would make every run's line differ: it is `<file>` or
/// `<address>`.
fn requirement(needs: &str, settings: &[Setting]) -> String {
    if settings.is_empty() {
        return format!("[{needs}]");
    }
    settings
        .iter()
        .map(|s| {
            let value = if s.value.starts_with('/') {
                "<file>"
            } else if s.value.parse::<std::net::SocketAddr>().is_ok() {
                "<address>"
            } else {
                s.value.as_str()
            };
            format!("{}={value}", config_key(s.gateway_env))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The broker a test talks to. Dropping it stops a gateway the test started.
pub struct Broker {
    pub host: String,
    pub port: u16,
    /// The MQTT-SN listener's UDP port.
    pub mqttsn_port: u16,
    /// The CoAP listener (UDP).
    pub coap_port: u16,
    /// CoAP over TCP (RFC 8323).
    pub coap_tcp_port: u16,
    /// CoAP over WebSocket (`/.well-known/coap`), when a test enables it.
    pub coap_ws_port: u16,
    /// The LwM2M listener (UDP).
    pub lwm2m_port: u16,
    /// MQTT over WebSocket (`/mqtt`).
    pub ws_port: u16,
    /// STOMP over TCP.
    pub stomp_port: u16,
    /// STOMP over WebSocket (`/ws`), when a test enables it.
    pub stomp_ws_port: u16,
    /// The admin HTTP API.
    pub admin_port: u16,
    values: Vec<(&'static str, String)>,
    gateway: Option<Gateway>,
}

struct Gateway {
    child: Child,
    /// What started it, to start it again after a crash.
    command: Command,
    log_path: PathBuf,
    /// Where each listener is bound, as the gateway reported at its last start.
    listeners: Vec<BoundListener>,
    // Holds the log file (and anything else the test put there) until the end.
    _dir: tempfile::TempDir,
}

/// True when tests run against `GATEWAY_TEST_HOST` instead of starting a gateway.
pub fn external_mode() -> bool {
    std::env::var_os("GATEWAY_TEST_HOST").is_some()
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().unwrap_or(crate_dir).to_path_buf()
}

/// `$GATEWAY_BIN`, else `<workspace>/target/release/gateway`; panics with the command
/// that builds it when it is missing.
pub fn gateway_bin() -> PathBuf {
    let bin = match std::env::var_os("GATEWAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/release/gateway"),
    };
    if !bin.is_file() {
        panic!(
            "gateway binary not found at {}: run `cargo build --release -p gateway` first \
             (or set GATEWAY_BIN, or GATEWAY_TEST_HOST to test an external broker)",
            bin.display()
        );
    }
    bin
}

/// A command running the gateway binary with an environment free of the caller's
/// `GATEWAY_*` variables: the gateway reads every one of those as configuration and
/// rejects unknown keys, and the test harness's own (`GATEWAY_TEST_HOST`, ...) are not
/// meant for it. `RUST_LOG` is left out too, since it would replace the log filter the
/// tests read the log under. Its admin API is on a port of the system's choosing. Its store
/// is in memory: gateways of tests running in parallel would otherwise share the default
/// data directory (`with_data_dir` gives one of its own).
pub fn gateway_command() -> Command {
    let mut cmd = Command::new(gateway_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GATEWAY_") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.env("GATEWAY_STORAGE__BACKEND", "memory");
    // The admin API's fixed default port would clash between gateways running in parallel.
    cmd.env("GATEWAY_DASHBOARD__LISTENERS__HTTP__BIND", "127.0.0.1:0");
    // A suite run by a service manager would otherwise have every gateway notify it.
    cmd.env_remove("NOTIFY_SOCKET");
    cmd
}

/// Gives `cmd` (from `gateway_command`) the default disk store, in `dir`.
pub fn with_data_dir(cmd: &mut Command, dir: &std::path::Path) {
    cmd.env("GATEWAY_STORAGE__BACKEND", "disk");
    cmd.env("GATEWAY_STORAGE__DATA_DIR", dir);
}

/// The port in `$var`, else `default`: where an external broker listens.
fn env_port(var: &str, default: u16) -> u16 {
    match std::env::var(var) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{var}={text} is not a port")),
        Err(_) => default,
    }
}

/// Adds `username` with `password` to the password file `file` (made when missing) with
/// `gateway passwd FILE USERNAME --password PASSWORD`. Nothing in external mode: the file is
/// only ever given to a gateway the test starts, and the gateway binary need not be there.
pub fn gateway_passwd(file: &Path, username: &str, password: &str) {
    if external_mode() {
        return;
    }
    let mut cmd = gateway_command();
    cmd.arg("passwd")
        .arg(file)
        .arg(username)
        .arg("--password")
        .arg(password);
    let mut proc = Proc::spawn("gateway passwd", cmd);
    match proc.wait(TIMEOUT) {
        Some(status) if status.success() => {}
        other => panic!(
            "gateway passwd {} {username} failed ({other:?}); stderr:\n{}",
            file.display(),
            proc.stderr()
        ),
    }
}

/// The settings of a gateway that admits the users of the password file `file` and no
/// one else.
pub fn password_file_only(file: &Path) -> [Setting; 2] {
    [
        Setting::new("GATEWAY_AUTH__ALLOW_ANONYMOUS", "false"),
        Setting::new("GATEWAY_AUTH__PASSWORD_FILE", file.display().to_string()),
    ]
}

impl Broker {
    /// The broker with its default configuration.
    pub fn start() -> Broker {
        // With no setting asked for, an external broker always qualifies.
        Broker::start_with(&[]).expect("a broker without settings")
    }

    /// A broker configured with `settings`. Returns None, after printing why, when the
    /// tests run against an external broker that is not known to have them.
    pub fn start_with(settings: &[Setting]) -> Option<Broker> {
        if external_mode() {
            return Broker::external(settings);
        }
        Some(Broker::spawn_gateway(settings))
    }

    /// A gateway started with `settings`, or an external broker used as it is: for
    /// settings that make a check sharper but that the test does not depend on.
    pub fn start_preferring(settings: &[Setting]) -> Broker {
        if external_mode() {
            return Broker::start();
        }
        Broker::spawn_gateway(settings)
    }

    /// A gateway-only check: None, after printing the skip line, in external mode. The
    /// line names `settings` as configuration keys, or `needs` when there are none (what
    /// no configuration gives, such as control of the gateway process).
    pub fn start_gateway_only(needs: &str, settings: &[Setting]) -> Option<Broker> {
        if external_mode() {
            skip_external(&requirement(needs, settings));
            return None;
        }
        Some(Broker::spawn_gateway(settings))
    }

    fn external(settings: &[Setting]) -> Option<Broker> {
        let host = std::env::var("GATEWAY_TEST_HOST").unwrap_or_default();
        let port = env_port("GATEWAY_TEST_MQTT_PORT", 1883);
        let ws_port = env_port("GATEWAY_TEST_WS_PORT", 8083);
        let mut values = Vec::new();
        for s in settings {
            match s.external_env.and_then(|var| std::env::var(var).ok()) {
                Some(value) => values.push((s.gateway_env, value)),
                None => {
                    let how = match s.external_env {
                        Some(var) => format!(" (set {var} to the broker's value to run it)"),
                        None => String::new(),
                    };
                    skip_external(&format!(
                        "{}{how}",
                        requirement("", std::slice::from_ref(s))
                    ));
                    return None;
                }
            }
        }
        let mqttsn_port = env_port("GATEWAY_TEST_MQTTSN_PORT", 1884);
        let coap_port = env_port("GATEWAY_TEST_COAP_PORT", 5683);
        let coap_tcp_port = env_port("GATEWAY_TEST_COAP_TCP_PORT", 5683);
        let coap_ws_port = env_port("GATEWAY_TEST_COAP_WS_PORT", 8683);
        let lwm2m_port = env_port("GATEWAY_TEST_LWM2M_PORT", 5783);
        let stomp_port = env_port("GATEWAY_TEST_STOMP_PORT", 61613);
        let stomp_ws_port = env_port("GATEWAY_TEST_STOMP_WS_PORT", 15674);
        let admin_port = env_port("GATEWAY_TEST_ADMIN_PORT", 18083);
        Some(Broker {
            host,
            port,
            mqttsn_port,
            coap_port,
            coap_tcp_port,
            coap_ws_port,
            lwm2m_port,
            ws_port,
            stomp_port,
            stomp_ws_port,
            admin_port,
            values,
            gateway: None,
        })
    }

    fn spawn_gateway(settings: &[Setting]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir for the gateway log");
        let log_path = dir.path().join("gateway.log");
        let log = File::create(&log_path).expect("create the gateway log");
        let mut cmd = gateway_command();
        // The default store, on disk, so the whole suite runs with it.
        with_data_dir(&mut cmd, &dir.path().join("data"));
        // Every listener the defaults start binds port 0 and reports the port it got, so
        // gateways of tests running in parallel never collide.
        for prefix in DEFAULT_LISTENERS {
            cmd.env(format!("{prefix}__BIND"), "127.0.0.1:0");
        }
        // Extra configuration for every started gateway, e.g. to turn off a listener
        // whose fixed default port would clash between gateways running in parallel.
        if let Ok(extra) = std::env::var("GATEWAY_TEST_GATEWAY_ENV") {
            for pair in extra.split_whitespace() {
                match pair.split_once('=') {
                    Some((key, value)) => cmd.env(key, value),
                    None => panic!("GATEWAY_TEST_GATEWAY_ENV: {pair:?} is not KEY=VALUE"),
                };
            }
        }
        let mut values = Vec::new();
        for s in settings {
            cmd.env(s.gateway_env, &s.value);
            values.push((s.gateway_env, s.value.clone()));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        // The log was handed to this child; a restart appends to it through its own handle.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut gateway = Gateway {
            child,
            command: cmd,
            log_path,
            listeners: Vec::new(),
            _dir: dir,
        };
        let expected = expected_listeners(&gateway.command);
        gateway.listeners = match gateway.wait_ready(0, &expected) {
            Ok(listeners) => listeners,
            Err(why) => gateway.fail(&why),
        };
        let port_of = |name: &str| {
            gateway
                .listeners
                .iter()
                .find(|l| l.name == name)
                .map_or(0, |l| l.addr.port())
        };
        Broker {
            host: "127.0.0.1".to_string(),
            port: port_of("tcp:default"),
            mqttsn_port: port_of("mqttsn:udp:default"),
            coap_port: port_of("coap:udp:default"),
            coap_tcp_port: port_of("coap:tcp:default"),
            coap_ws_port: port_of("coap:ws:default"),
            lwm2m_port: port_of("lwm2m:udp:default"),
            ws_port: port_of("ws:default"),
            stomp_port: port_of("stomp:tcp:default"),
            stomp_ws_port: port_of("stomp:ws:default"),
            admin_port: port_of("dashboard:http"),
            values,
            gateway: Some(gateway),
        }
    }

    /// Where the started gateway's listener `name` (`ssl:default`, `coap:dtls:default`)
    /// is bound, as its log reported: every listener a test configures binds port 0, and
    /// the gateway is not ready before each one has reported.
    pub fn listener(&self, name: &str) -> SocketAddr {
        let gw = self
            .gateway
            .as_ref()
            .expect("only a gateway started by the test reports its listeners");
        match gw.listeners.iter().find(|l| l.name == name) {
            Some(l) => l.addr,
            None => panic!(
                "the gateway reported no listener {name}; it reported {:?}",
                gw.listeners
            ),
        }
    }

    /// The port of [`Broker::listener`].
    pub fn listener_port(&self, name: &str) -> u16 {
        self.listener(name).port()
    }

    /// Checks a promise the gateway makes beyond what the MQTT spec demands (a SHOULD
    /// there, or one of several behaviours the spec allows). A gateway that breaks it
    /// fails the test; an external broker is judged by the spec, so it only gets a note.
    pub fn gateway_promise(&self, kept: bool, promise: &str) {
        if kept {
            return;
        }
        if self.is_gateway() {
            panic!("broken promise: {promise}");
        }
        println!("note: the external broker does not do this (the spec allows it; the gateway must): {promise}");
    }

    /// Sends a signal (`libc::SIGHUP`, ...) to a gateway this test started.
    pub fn signal(&self, signal: i32) {
        let gw = self
            .gateway
            .as_ref()
            .expect("only a gateway started by the test can be signalled");
        unsafe {
            libc::kill(gw.child.id() as libc::pid_t, signal);
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// True when this test started the gateway (false against an external broker).
    pub fn is_gateway(&self) -> bool {
        self.gateway.is_some()
    }

    /// The value in force for a setting the test asked for.
    pub fn value(&self, gateway_env: &str) -> &str {
        match self.values.iter().find(|(k, _)| *k == gateway_env) {
            Some((_, v)) => v,
            None => panic!("{gateway_env} was not among the settings this test asked for"),
        }
    }

    /// The whole of the gateway's stdout/stderr ("" against an external broker).
    pub fn log(&self) -> String {
        match &self.gateway {
            Some(gw) => read_tail(&gw.log_path, u64::MAX),
            None => String::new(),
        }
    }

    /// The end of the gateway's stdout/stderr ("" against an external broker).
    pub fn log_tail(&self) -> String {
        match &self.gateway {
            Some(gw) => read_tail(&gw.log_path, LOG_TAIL_BYTES),
            None => String::new(),
        }
    }
}

impl Broker {
    /// Kills the gateway with SIGKILL (no shutdown, no flush: a crash), then starts it again
    /// with the same configuration, ports and data directory, and waits until it listens.
    pub fn crash_and_restart(&mut self) {
        self.crash();
        self.restart();
    }

    /// Kills the gateway with SIGKILL: no shutdown, no flush.
    pub fn crash(&mut self) {
        let gw = self
            .gateway
            .as_mut()
            .expect("only a gateway started by the test can be crashed");
        gw.child.kill().expect("SIGKILL the gateway");
        gw.child.wait().expect("reap the gateway");
    }

    /// Starts a crashed gateway again with the same configuration, ports and data
    /// directory, and waits until it listens.
    ///
    /// Clients of the test reconnect to the ports of the first start, so each listener
    /// binds the address it reported then, explicitly. That is safe enough: those ports
    /// are in the ephemeral range, but the system picks a client socket's port at random
    /// among tens of thousands, so one given up a moment ago is seldom taken before the
    /// restart binds it again (`SO_REUSEADDR` covers the old connections in TIME_WAIT);
    /// should another socket have taken it all the same, the start fails on that bind and
    /// is tried again until the port is free or the start timeout has passed.
    pub fn restart(&mut self) {
        let gw = self
            .gateway
            .as_mut()
            .expect("only a gateway started by the test can be restarted");
        let mut expected = Vec::new();
        for listener in &gw.listeners {
            if let Some(key) = bind_env(&listener.name) {
                gw.command.env(key, listener.addr.to_string());
                expected.push(listener.name.clone());
            }
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let offset = std::fs::metadata(&gw.log_path).map_or(0, |m| m.len());
            let log = std::fs::OpenOptions::new()
                .append(true)
                .open(&gw.log_path)
                .expect("reopen the gateway log");
            gw.command
                .stdout(log.try_clone().expect("dup log handle"))
                .stderr(log);
            gw.child = gw
                .command
                .spawn()
                .unwrap_or_else(|e| panic!("cannot restart the gateway: {e}"));
            match gw.wait_ready(offset, &expected) {
                Ok(listeners) => {
                    gw.listeners = listeners;
                    return;
                }
                Err(why) => {
                    let taken = read_from(&gw.log_path, offset).contains("cannot listen");
                    if !taken || Instant::now() > deadline {
                        gw.fail(&why);
                    }
                    let _ = gw.child.kill();
                    let _ = gw.child.wait();
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Sends the gateway SIGTERM and waits for it to exit: how long it took, or None when
    /// it was still running after the stop timeout (it is killed when dropped).
    pub fn terminate(&mut self) -> Option<Duration> {
        let gw = self.gateway.as_mut()?;
        let start = Instant::now();
        // Once reaped, the child's pid may belong to another process: never signal it.
        if !matches!(gw.child.try_wait(), Ok(Some(_))) {
            unsafe {
                libc::kill(gw.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        while start.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = gw.child.try_wait() {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SIGTERM first: the gateway is meant to shut down gracefully.
        let stopped = self.terminate().is_some();
        let Some(gw) = self.gateway.as_mut() else {
            return;
        };
        if !stopped {
            let _ = gw.child.kill();
            let _ = gw.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- gateway log tail ({}) ----\n{}\n---- end of gateway log ----",
                gw.log_path.display(),
                read_tail(&gw.log_path, LOG_TAIL_BYTES)
            );
        } else if !stopped {
            eprintln!("warning: the gateway did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed");
        }
    }
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let _ = file.seek(SeekFrom::Start(offset));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The listeners every started gateway binds to port 0, by the prefix of their keys in
/// the environment.
const DEFAULT_LISTENERS: [&str; 10] = [
    "GATEWAY_LISTENERS__TCP__DEFAULT",
    "GATEWAY_LISTENERS__WS__DEFAULT",
    "GATEWAY_GATEWAY__MQTTSN__LISTENERS__UDP__DEFAULT",
    "GATEWAY_GATEWAY__COAP__LISTENERS__UDP__DEFAULT",
    "GATEWAY_GATEWAY__COAP__LISTENERS__TCP__DEFAULT",
    "GATEWAY_GATEWAY__COAP__LISTENERS__WS__DEFAULT",
    "GATEWAY_GATEWAY__LWM2M__LISTENERS__UDP__DEFAULT",
    "GATEWAY_GATEWAY__STOMP__LISTENERS__TCP__DEFAULT",
    "GATEWAY_GATEWAY__STOMP__LISTENERS__WS__DEFAULT",
    "GATEWAY_DASHBOARD__LISTENERS__HTTP",
];

/// The environment key of the `bind` of the listener that reports as `name`:
/// `tcp:default` is `GATEWAY_LISTENERS__TCP__DEFAULT__BIND`, `coap:dtls:default`
/// `GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__BIND`.
fn bind_env(name: &str) -> Option<String> {
    Some(format!("{}__BIND", listener_env_prefix(name)?))
}

fn listener_env_prefix(name: &str) -> Option<String> {
    let parts: Vec<String> = name.split(':').map(str::to_uppercase).collect();
    match parts.as_slice() {
        [dashboard, http] if dashboard == "DASHBOARD" => {
            Some(format!("GATEWAY_DASHBOARD__LISTENERS__{http}"))
        }
        [kind, name] => Some(format!("GATEWAY_LISTENERS__{kind}__{name}")),
        [gateway, kind, name] => Some(format!(
            "GATEWAY_GATEWAY__{gateway}__LISTENERS__{kind}__{name}"
        )),
        _ => None,
    }
}

/// The name a listener reports under, from the prefix of its keys in the environment:
/// `GATEWAY_LISTENERS__SSL__DEFAULT` is `ssl:default`.
pub fn listener_name(env_prefix: &str) -> String {
    listener_of_bind_env(&format!("{env_prefix}__BIND"))
        .unwrap_or_else(|| panic!("{env_prefix} is not the prefix of a listener's keys"))
}

/// The name of the listener whose `bind` is the environment key `key`, the inverse of
/// [`bind_env`].
fn listener_of_bind_env(key: &str) -> Option<String> {
    let prefix = key.strip_suffix("__BIND")?;
    let parts: Vec<&str> = prefix.split("__").collect();
    let name = match parts.as_slice() {
        ["GATEWAY_DASHBOARD", "LISTENERS", http] => format!("dashboard:{http}"),
        ["GATEWAY_LISTENERS", kind, name] => format!("{kind}:{name}"),
        ["GATEWAY_GATEWAY", gateway, "LISTENERS", kind, name] => {
            format!("{gateway}:{kind}:{name}")
        }
        _ => return None,
    };
    Some(name.to_lowercase())
}

/// The listeners the environment of `cmd` binds to port 0 and enables: those the
/// gateway must report before it is ready.
fn expected_listeners(cmd: &Command) -> Vec<String> {
    let env: Vec<(String, String)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
        .collect();
    let value = |key: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let mut expected = Vec::new();
    for (key, bind) in &env {
        let Some(name) = listener_of_bind_env(key) else {
            continue;
        };
        if !bind.ends_with(":0") || expected.contains(&name) {
            continue;
        }
        let Some(prefix) = listener_env_prefix(&name) else {
            continue;
        };
        // Off by default: CoAP's and STOMP's WebSocket listeners.
        let on_by_default = !(name.starts_with("coap:ws")
            || name.starts_with("coap:wss")
            || name.starts_with("stomp:ws")
            || name.starts_with("stomp:wss"));
        let enabled = match value(&format!("{prefix}__ENABLE")) {
            Some(v) => v == "true",
            None => on_by_default,
        };
        let gateway_enabled = match name.split(':').collect::<Vec<_>>().as_slice() {
            [gateway, _, _] => value(&format!(
                "GATEWAY_GATEWAY__{}__ENABLE",
                gateway.to_uppercase()
            ))
            .is_none_or(|v| v == "true"),
            _ => true,
        };
        if enabled && gateway_enabled {
            expected.push(name);
        }
    }
    expected
}

impl Gateway {
    /// Waits until every listener in `expected` has reported in the log past `offset`
    /// (the start of this run's lines), then for an MQTT CONNACK on `tcp:default` when it
    /// is among them. Every reported listener is bound, hence already queues connections
    /// and datagrams: nothing but MQTT needs a check of its own.
    fn wait_ready(
        &mut self,
        offset: u64,
        expected: &[String],
    ) -> Result<Vec<BoundListener>, String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let listeners = loop {
            let reported = bound_listeners(&read_from(&self.log_path, offset));
            let missing: Vec<&String> = expected
                .iter()
                .filter(|name| !reported.iter().any(|l| &l.name == *name))
                .collect();
            if missing.is_empty() {
                break reported;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("gateway exited during start-up ({status})"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "gateway did not report listeners {missing:?} bound within {READY_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        };
        // A gateway under a service manager says itself when it is ready (READY=1, once
        // every listener has reported), and the test playing the manager may freeze it
        // right then: readiness is that exchange, the test's to check.
        let managed = expected_value(&self.command, "NOTIFY_SOCKET").is_some();
        let tcp = listeners.iter().find(|l| l.name == "tcp:default");
        if let Some(tcp) = tcp.filter(|_| !managed) {
            let proxied = expected_value(
                &self.command,
                "GATEWAY_LISTENERS__TCP__DEFAULT__PROXY_PROTOCOL",
            )
            .is_some_and(|v| v == "true");
            mqtt_ready(tcp.addr, proxied, deadline)
                .map_err(|e| format!("no CONNACK on tcp:default ({}): {e}", tcp.addr))?;
        }
        Ok(listeners)
    }

    /// Panics with `why` and the end of the log (the gateway is killed by Drop).
    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "{why}\n---- gateway log tail ({}) ----\n{}\n---- end of gateway log ----",
            self.log_path.display(),
            read_tail(&self.log_path, LOG_TAIL_BYTES)
        );
    }
}

fn expected_value(cmd: &Command, key: &str) -> Option<String> {
    cmd.get_envs()
        .filter(|(k, _)| k.to_str().is_some_and(|k| k.eq_ignore_ascii_case(key)))
        .last()
        .and_then(|(_, v)| Some(v?.to_str()?.trim().to_ascii_lowercase()))
}

/// Waits until the MQTT server a test started at `addr` (mosquitto, a proxy in front of the
/// gateway) answers a CONNECT with a CONNACK, trying again while it is not listening yet;
/// panics after `timeout` with the last error.
pub fn wait_mqtt_ready(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match mqtt_ready(addr, false, deadline) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("no MQTT CONNACK from {addr} within {timeout:?}: {e}")
            }
            Err(_) => thread::sleep(Duration::from_millis(25)),
        }
    }
}

/// A CONNECT answered by a CONNACK, then the server's close: the exchange that proves an
/// MQTT server serves. The CONNECT names protocol level 0, which no version has, so the
/// server refuses it (CONNACK 0x01, unacceptable protocol version) before any
/// authentication: the probe opens no session, counts no refused login, sends no presence
/// event and lists no client that a test could see. A listener taking the PROXY protocol
/// gets a header naming the probe's own addresses first.
fn mqtt_ready(addr: SocketAddr, proxied: bool, deadline: Instant) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind, Write};
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left())?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(left()))?;
    if proxied {
        let local = stream.local_addr()?;
        let family = if addr.is_ipv4() { "TCP4" } else { "TCP6" };
        let header = format!(
            "PROXY {family} {} {} {} {}\r\n",
            local.ip(),
            addr.ip(),
            local.port(),
            addr.port()
        );
        stream.write_all(header.as_bytes())?;
    }
    let client_id = b"ready";
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        0,
        0x02,
        0,
        60,
        0,
        client_id.len() as u8,
    ];
    body.extend_from_slice(client_id);
    let mut connect = vec![0x10, body.len() as u8];
    connect.extend_from_slice(&body);
    stream.write_all(&connect)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack != [0x20, 2, 0, 1] {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("not the CONNACK refusing protocol level 0: {connack:02x?}"),
        ));
    }
    // The server closes after the refusal: read to the end, so the probe's connection is
    // gone before the test starts.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(())
}
