//! The conformance runner: the interop suite run against a gateway that is already running.
//!
//! It finds (or builds) the suite's test binary, lists its tests, runs each in a process of
//! its own in external mode (`GATEWAY_TEST_HOST` and the `GATEWAY_TEST_*_PORT` variables),
//! a few at a time, and reports per protocol what passed, failed and did not apply, with the
//! configuration each skipped test needs. `--junit` writes the same as JUnit XML.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use interop_tests::broker::SKIP_MARKER;
use quick_xml::events::{BytesCData, BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

/// Which protocol (or area) each module of the suite checks. A module missing here is
/// reported under "other"; a unit test keeps the table in step with the suite.
const PROTOCOLS: &[(&str, &str)] = &[
    ("pubsub", "MQTT"),
    ("retained", "MQTT"),
    ("session", "MQTT"),
    ("shared", "MQTT"),
    ("will", "MQTT"),
    ("properties", "MQTT"),
    ("robustness", "MQTT"),
    ("flow_control", "MQTT"),
    ("packet_size", "MQTT"),
    ("max_connections", "MQTT"),
    ("sys", "MQTT"),
    ("presence", "MQTT"),
    ("flapping", "MQTT"),
    ("rate_limits", "MQTT"),
    ("listeners", "MQTT"),
    ("auth", "MQTT authentication and ACL"),
    ("auth_matrix", "MQTT authentication and ACL"),
    ("mosquitto_acl", "MQTT authentication and ACL"),
    ("websocket", "MQTT over WebSocket"),
    ("tls", "MQTT over TLS"),
    ("quic", "MQTT over QUIC"),
    ("proxy_protocol", "PROXY protocol"),
    ("mqttsn", "MQTT-SN"),
    ("coap", "CoAP"),
    ("coap_stream", "CoAP"),
    ("coap_tls", "CoAP over TLS/DTLS"),
    ("dtls", "CoAP over TLS/DTLS"),
    ("dtls_aiocoap", "CoAP over TLS/DTLS"),
    ("dtls_mbedtls", "CoAP over TLS/DTLS"),
    ("lwm2m", "LwM2M"),
    ("downlink", "LwM2M"),
    ("stomp", "STOMP"),
    ("stomp_tls", "STOMP"),
    ("admin", "Admin API"),
    ("dashboard", "Dashboard"),
    ("storage", "Storage"),
    ("reload", "Operations (reload, shutdown, service manager)"),
    ("shutdown", "Operations (reload, shutdown, service manager)"),
    (
        "systemd_notify",
        "Operations (reload, shutdown, service manager)",
    ),
];

/// Modules that test this runner rather than a gateway.
const NOT_CONFORMANCE: &[&str] = &["conformance"];

/// How much of a failed test's output the report and the JUnit file keep.
const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
enum RunnerError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("`cargo test --no-run` failed ({0}); its output is above")]
    Build(std::process::ExitStatus),
    #[error("`cargo test --no-run` named no test binary for tests/it")]
    NoTestBinary,
    #[error("listing the tests of {binary} failed: {detail}")]
    List { binary: String, detail: String },
    #[error("no test matches the filters {0:?}")]
    NoTests(Vec<String>),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the gateway's interop suite against a running gateway.
#[derive(Parser, Debug)]
#[command(name = "conformance")]
struct Args {
    /// The gateway's host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// MQTT over TCP.
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// MQTT over WebSocket (`/mqtt`).
    #[arg(long, default_value_t = 8083)]
    ws_port: u16,
    /// MQTT-SN over UDP.
    #[arg(long, default_value_t = 1884)]
    mqttsn_port: u16,
    /// CoAP over UDP.
    #[arg(long, default_value_t = 5683)]
    coap_port: u16,
    /// CoAP over TCP.
    #[arg(long, default_value_t = 5683)]
    coap_tcp_port: u16,
    /// CoAP over WebSocket (off in the default configuration).
    #[arg(long, default_value_t = 8683)]
    coap_ws_port: u16,
    /// LwM2M over UDP.
    #[arg(long, default_value_t = 5783)]
    lwm2m_port: u16,
    /// STOMP over TCP.
    #[arg(long, default_value_t = 61613)]
    stomp_port: u16,
    /// STOMP over WebSocket (off in the default configuration).
    #[arg(long, default_value_t = 15674)]
    stomp_ws_port: u16,
    /// The admin HTTP API and dashboard.
    #[arg(long, default_value_t = 18083)]
    admin_port: u16,
    /// Runs only the tests whose name contains one of these (e.g. `coap::`, `pubsub::`).
    #[arg(long)]
    filter: Vec<String>,
    /// How many tests run at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Seconds a test may take before it is killed and counted as failed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Writes the results as JUnit XML to this file.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// The suite's test binary; built with cargo when left out.
    #[arg(long, env = "CONFORMANCE_TEST_BINARY")]
    test_binary: Option<PathBuf>,
    /// Prints each test as it finishes.
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Passed,
    Failed { output_tail: String },
    Skipped { needs: String },
}

#[derive(Clone, Debug)]
struct TestResult {
    name: String,
    protocol: &'static str,
    time: Duration,
    outcome: Outcome,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(results)
            if results
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Failed { .. })) =>
        {
            ExitCode::from(1)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conformance: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<Vec<TestResult>, RunnerError> {
    let binary = match &args.test_binary {
        Some(path) => path.clone(),
        None => build_test_binary()?,
    };
    let tests: Vec<String> = list_tests(&binary)?
        .into_iter()
        .filter(|name| !NOT_CONFORMANCE.contains(&module_of(name)))
        .filter(|name| args.filter.is_empty() || args.filter.iter().any(|f| name.contains(f)))
        .collect();
    if tests.is_empty() {
        return Err(RunnerError::NoTests(args.filter.clone()));
    }
    println!(
        "running {} tests against {} ({} at a time)",
        tests.len(),
        args.host,
        args.jobs.max(1)
    );
    let env = external_env(args);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(tests.len()));
    let spawn_error = Mutex::new(None);
    thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = tests.get(i) else { break };
                match run_one(&binary, name, &env, Duration::from_secs(args.timeout)) {
                    Ok(result) => {
                        if args.verbose {
                            println!("{} ... {}", result.name, outcome_word(&result.outcome));
                        }
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(result);
                    }
                    Err(e) => {
                        *spawn_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = spawn_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by(|a, b| (a.protocol, &a.name).cmp(&(b.protocol, &b.name)));
    print!("{}", report(&results));
    if let Some(path) = &args.junit {
        let xml = junit_xml(&results).map_err(|source| RunnerError::Write {
            path: path.clone(),
            source,
        })?;
        std::fs::write(path, xml).map_err(|source| RunnerError::Write {
            path: path.clone(),
            source,
        })?;
        println!("JUnit XML written to {}", path.display());
    }
    Ok(results)
}

/// The variables through which the suite's tests find an external gateway.
fn external_env(args: &Args) -> Vec<(&'static str, String)> {
    let port = |p: u16| p.to_string();
    vec![
        ("GATEWAY_TEST_HOST", args.host.clone()),
        ("GATEWAY_TEST_MQTT_PORT", port(args.mqtt_port)),
        ("GATEWAY_TEST_WS_PORT", port(args.ws_port)),
        ("GATEWAY_TEST_MQTTSN_PORT", port(args.mqttsn_port)),
        ("GATEWAY_TEST_COAP_PORT", port(args.coap_port)),
        ("GATEWAY_TEST_COAP_TCP_PORT", port(args.coap_tcp_port)),
        ("GATEWAY_TEST_COAP_WS_PORT", port(args.coap_ws_port)),
        ("GATEWAY_TEST_LWM2M_PORT", port(args.lwm2m_port)),
        ("GATEWAY_TEST_STOMP_PORT", port(args.stomp_port)),
        ("GATEWAY_TEST_STOMP_WS_PORT", port(args.stomp_ws_port)),
        ("GATEWAY_TEST_ADMIN_PORT", port(args.admin_port)),
    ]
}

/// `cargo test --release -p interop-tests --no-run`, and the path of the `it` binary.
fn build_test_binary() -> Result<PathBuf, RunnerError> {
    let workspace = interop_tests::broker::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "test",
            "--release",
            "-p",
            "interop-tests",
            "--test",
            "it",
            "--no-run",
            "--message-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("building the interop suite (cargo test --release -p interop-tests --no-run)");
    let output = cmd.output().map_err(|source| RunnerError::Spawn {
        what: "cargo".into(),
        source,
    })?;
    if !output.status.success() {
        return Err(RunnerError::Build(output.status));
    }
    test_binary_in(&String::from_utf8_lossy(&output.stdout)).ok_or(RunnerError::NoTestBinary)
}

/// The executable of the `it` test target among cargo's JSON messages.
fn test_binary_in(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "it")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// The names of the binary's tests (`module::test`).
fn list_tests(binary: &Path) -> Result<Vec<String>, RunnerError> {
    let output = Command::new(binary)
        .args(["--list", "--format", "terse"])
        .output()
        .map_err(|source| RunnerError::Spawn {
            what: binary.display().to_string(),
            source,
        })?;
    if !output.status.success() {
        return Err(RunnerError::List {
            binary: binary.display().to_string(),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

fn module_of(test: &str) -> &str {
    test.split("::").next().unwrap_or(test)
}

fn protocol_of(test: &str) -> &'static str {
    let module = module_of(test);
    PROTOCOLS
        .iter()
        .find(|(m, _)| *m == module)
        .map_or("other", |(_, p)| *p)
}

/// Runs one test in a process of its own, its output captured, killed after `timeout`.
fn run_one(
    binary: &Path,
    name: &str,
    env: &[(&'static str, String)],
    timeout: Duration,
) -> Result<TestResult, RunnerError> {
    let start = Instant::now();
    let mut cmd = Command::new(binary);
    cmd.args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| RunnerError::Spawn {
        what: binary.display().to_string(),
        source,
    })?;
    let output = Mutex::new(Vec::new());
    let (status, timed_out) = thread::scope(|scope| {
        if let Some(out) = child.stdout.take() {
            scope.spawn(|| collect(out, &output));
        }
        if let Some(err) = child.stderr.take() {
            scope.spawn(|| collect(err, &output));
        }
        wait_with_timeout(&mut child, timeout)
    });
    let output = String::from_utf8_lossy(&output.into_inner().unwrap_or_else(|e| e.into_inner()))
        .into_owned();
    let outcome = outcome_of(status.is_some_and(|s| s.success()), timed_out, &output);
    Ok(TestResult {
        name: name.to_string(),
        protocol: protocol_of(name),
        time: start.elapsed(),
        outcome,
    })
}

fn collect(stream: impl Read, into: &Mutex<Vec<u8>>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        into.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&line);
        line.clear();
    }
}

/// The exit status, or None and true when `timeout` passed first (the test is killed).
fn wait_with_timeout(
    child: &mut Child,
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Some(status), false),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                return (child.wait().ok(), true);
            }
            Err(_) => return (None, false),
        }
    }
}

/// What a test's exit and output say: a test that printed the skip line did not run.
fn outcome_of(success: bool, timed_out: bool, output: &str) -> Outcome {
    if success && !timed_out {
        // libtest prints `test NAME ... ` before the test's own output, on the same line.
        if let Some(needs) = output.lines().find_map(|line| {
            let at = line.find(SKIP_MARKER)?;
            line.get(at + SKIP_MARKER.len()..)
        }) {
            return Outcome::Skipped {
                needs: needs.trim().to_string(),
            };
        }
        return Outcome::Passed;
    }
    let mut tail = tail_of(output, OUTPUT_TAIL_BYTES).to_string();
    if timed_out {
        tail.push_str("\n(killed: the test ran past the runner's timeout)\n");
    }
    Outcome::Failed { output_tail: tail }
}

fn tail_of(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or(text)
}

fn outcome_word(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Passed => "ok",
        Outcome::Failed { .. } => "FAILED",
        Outcome::Skipped { .. } => "skipped",
    }
}

#[derive(Default)]
struct Counts {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed { .. } => self.failed += 1,
            Outcome::Skipped { .. } => self.skipped += 1,
        }
    }

    fn total(&self) -> usize {
        self.passed + self.failed + self.skipped
    }

    fn run(&self) -> usize {
        self.passed + self.failed
    }
}

fn by_protocol(results: &[TestResult]) -> BTreeMap<&'static str, Vec<&TestResult>> {
    let mut map: BTreeMap<&'static str, Vec<&TestResult>> = BTreeMap::new();
    for r in results {
        map.entry(r.protocol).or_default().push(r);
    }
    map
}

/// The text report: a table per protocol, then each failure and each skip with what it
/// needs.
fn report(results: &[TestResult]) -> String {
    let mut out = String::new();
    let mut all = Counts::default();
    let groups = by_protocol(results);
    let width = groups.keys().map(|p| p.len()).max().unwrap_or(8).max(8);
    out.push_str(&format!(
        "\n{:<width$}  {:>5}  {:>6}  {:>6}  {:>7}\n",
        "protocol", "run", "passed", "failed", "skipped"
    ));
    for (protocol, tests) in &groups {
        let mut c = Counts::default();
        for t in tests {
            c.add(&t.outcome);
            all.add(&t.outcome);
        }
        out.push_str(&format!(
            "{:<width$}  {:>5}  {:>6}  {:>6}  {:>7}\n",
            protocol,
            c.run(),
            c.passed,
            c.failed,
            c.skipped
        ));
    }
    out.push_str(&format!(
        "{:<width$}  {:>5}  {:>6}  {:>6}  {:>7}\n",
        "total",
        all.run(),
        all.passed,
        all.failed,
        all.skipped
    ));
    let percent = if all.total() == 0 {
        0.0
    } else {
        100.0 * all.run() as f64 / all.total() as f64
    };
    out.push_str(&format!(
        "{} of {} tests ran ({percent:.0} %)\n",
        all.run(),
        all.total()
    ));
    let failed: Vec<_> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed { output_tail } => Some((r, output_tail)),
            _ => None,
        })
        .collect();
    if !failed.is_empty() {
        out.push_str("\nfailed:\n");
        for (r, tail) in &failed {
            out.push_str(&format!("---- {} ({}) ----\n", r.name, r.protocol));
            out.push_str(tail_of(tail, 2048));
            if !tail.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    let mut skips: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in results {
        if let Outcome::Skipped { needs } = &r.outcome {
            skips.entry(needs).or_default().push(&r.name);
        }
    }
    if !skips.is_empty() {
        out.push_str("\nskipped, with what each needs from the gateway:\n");
        for (needs, names) in &skips {
            out.push_str(&format!("needs {needs}:\n"));
            for name in names {
                out.push_str(&format!("    {name}\n"));
            }
        }
    }
    out
}

/// The results as JUnit XML: a testsuite per protocol.
fn junit_xml(results: &[TestResult]) -> std::io::Result<Vec<u8>> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let mut all = Counts::default();
    for r in results {
        all.add(&r.outcome);
    }
    let total_time: f64 = results.iter().map(|r| r.time.as_secs_f64()).sum();
    let root = BytesStart::new("testsuites").with_attributes([
        ("name", "gateway conformance"),
        ("tests", all.total().to_string().as_str()),
        ("failures", all.failed.to_string().as_str()),
        ("errors", "0"),
        ("skipped", all.skipped.to_string().as_str()),
        ("time", format!("{total_time:.3}").as_str()),
    ]);
    w.write_event(Event::Start(root))?;
    for (protocol, tests) in by_protocol(results) {
        let mut c = Counts::default();
        for t in &tests {
            c.add(&t.outcome);
        }
        let time: f64 = tests.iter().map(|r| r.time.as_secs_f64()).sum();
        let suite = BytesStart::new("testsuite").with_attributes([
            ("name", protocol),
            ("tests", c.total().to_string().as_str()),
            ("failures", c.failed.to_string().as_str()),
            ("errors", "0"),
            ("skipped", c.skipped.to_string().as_str()),
            ("time", format!("{time:.3}").as_str()),
        ]);
        w.write_event(Event::Start(suite))?;
        for t in tests {
            let (module, name) = t.name.split_once("::").unwrap_or(("", t.name.as_str()));
            let case = BytesStart::new("testcase").with_attributes([
                ("classname", module),
                ("name", name),
                ("time", format!("{:.3}", t.time.as_secs_f64()).as_str()),
            ]);
            match &t.outcome {
                Outcome::Passed => w.write_event(Event::Empty(case))?,
                Outcome::Skipped { needs } => {
                    w.write_event(Event::Start(case))?;
                    let message = xml_chars(&format!("needs {needs}"));
                    w.write_event(Event::Empty(
                        BytesStart::new("skipped").with_attributes([("message", &*message)]),
                    ))?;
                    w.write_event(Event::End(BytesEnd::new("testcase")))?;
                }
                Outcome::Failed { output_tail } => {
                    w.write_event(Event::Start(case))?;
                    let message = output_tail
                        .lines()
                        .rev()
                        .find(|l| l.contains("panicked at") || l.contains("killed:"))
                        .unwrap_or("the test failed");
                    w.write_event(Event::Start(BytesStart::new("failure").with_attributes([
                        ("message", &*xml_chars(message)),
                        ("type", "failure"),
                    ])))?;
                    write_cdata(&mut w, &xml_chars(output_tail))?;
                    w.write_event(Event::End(BytesEnd::new("failure")))?;
                    w.write_event(Event::End(BytesEnd::new("testcase")))?;
                }
            }
        }
        w.write_event(Event::End(BytesEnd::new("testsuite")))?;
    }
    w.write_event(Event::End(BytesEnd::new("testsuites")))?;
    let mut xml = w.into_inner();
    xml.write_all(b"\n")?;
    Ok(xml)
}

/// `text` as CDATA sections: one cannot hold `]]>`, so the text is split inside it.
fn write_cdata(w: &mut Writer<Vec<u8>>, text: &str) -> std::io::Result<()> {
    if text.is_empty() {
        return w.write_event(Event::Text(BytesText::new("")));
    }
    for part in BytesCData::escaped(text) {
        w.write_event(Event::CData(part))?;
    }
    Ok(())
}

/// `text` without the characters XML 1.0 cannot carry (terminal escapes, NUL, ...).
fn xml_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r')
                || ('\u{20}'..='\u{D7FF}').contains(&c)
                || ('\u{E000}'..='\u{FFFD}').contains(&c)
                || c >= '\u{10000}'
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_of_the_suite_has_a_protocol() {
        let main = include_str!("../../tests/it/main.rs");
        let modules: Vec<&str> = main
            .lines()
            .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
            .collect();
        assert!(modules.len() > 10, "{modules:?}");
        for m in modules {
            assert!(
                NOT_CONFORMANCE.contains(&m) || PROTOCOLS.iter().any(|(p, _)| *p == m),
                "module {m} has no protocol in PROTOCOLS"
            );
        }
    }

    #[test]
    fn the_skip_line_gives_what_the_test_needs() {
        let output = format!(
            "running 1 test\ntest auth::x ... {SKIP_MARKER}auth.allow_anonymous=false\nok\n"
        );
        assert_eq!(
            outcome_of(true, false, &output),
            Outcome::Skipped {
                needs: "auth.allow_anonymous=false".into()
            }
        );
        assert_eq!(outcome_of(true, false, "ok\n"), Outcome::Passed);
        assert!(matches!(
            outcome_of(false, false, &output),
            Outcome::Failed { .. }
        ));
        assert!(matches!(
            outcome_of(true, true, "ok\n"),
            Outcome::Failed { .. }
        ));
    }

    #[test]
    fn junit_output_keeps_markup_and_cdata_ends_in_the_text() {
        let results = vec![TestResult {
            name: "coap::x".into(),
            protocol: "CoAP",
            time: Duration::from_millis(5),
            outcome: Outcome::Failed {
                output_tail: "<a>]]>&\u{1b}[0m\n".into(),
            },
        }];
        let xml = String::from_utf8(junit_xml(&results).unwrap()).unwrap();
        let mut reader = quick_xml::Reader::from_str(&xml);
        let mut text = String::new();
        loop {
            match reader.read_event().unwrap() {
                Event::Eof => break,
                Event::CData(c) => text.push_str(&c.into_inner()),
                _ => {}
            }
        }
        assert_eq!(text, "<a>]]>&[0m\n");
    }
}
