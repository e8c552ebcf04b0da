//! The conformance runner against a gateway it did not start: this test starts one on its
//! default configuration, then has the runner run a few of this very binary's tests of
//! different protocols against it, and reads the report and the JUnit XML.

use std::path::Path;
use std::process::{Command, Output};

use interop_tests::Broker;
use serde_json::Value;

const MQTT_TEST: &str = "pubsub::v5_mosquitto_sub_gets_exact_payloads_at_min_qos_from_every_client";
const COAP_TEST: &str = "coap::coap_client_publishes_by_post_and_put_at_qos_0_and_1_with_retain";
const STOMP_TEST: &str = "stomp::stomp_py_and_mqtt_clients_exchange_messages_in_every_version";
const SKIPPED_TEST: &str = "auth::another_user_neither_resumes_nor_takes_over_a_persistent_session";

/// The runner pointed at `broker`, with the MQTT port replaced by `mqtt_port`.
fn runner(broker: &Broker, mqtt_port: u16, tests: &[&str], junit: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conformance"));
    cmd.arg("--host").arg(&broker.host);
    for (flag, port) in [
        ("--mqtt-port", mqtt_port),
        ("--ws-port", broker.ws_port),
        ("--mqttsn-port", broker.mqttsn_port),
        ("--coap-port", broker.coap_port),
        ("--coap-tcp-port", broker.coap_tcp_port),
        ("--coap-ws-port", broker.coap_ws_port),
        ("--lwm2m-port", broker.lwm2m_port),
        ("--stomp-port", broker.stomp_port),
        ("--stomp-ws-port", broker.stomp_ws_port),
        ("--admin-port", broker.admin_port),
    ] {
        cmd.arg(flag).arg(port.to_string());
    }
    for test in tests {
        cmd.arg("--filter").arg(test);
    }
    cmd.arg("--jobs")
        .arg("2")
        .arg("--junit")
        .arg(junit)
        .arg("--test-binary")
        .arg(std::env::current_exe().expect("this test binary"));
    // The runner's tests must find the gateway through its arguments only.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GATEWAY_TEST_") {
            cmd.env_remove(key);
        }
    }
    cmd.output().expect("run the conformance runner")
}

/// The JUnit file as junitparser reads it (`py/junit_read.py`): `{"tests": n, "suites":
/// {name: [{classname, name, time, outcome, message, text}]}}`; panics when it refuses it.
fn read_junit(path: &Path) -> Value {
    let output = Command::new(interop_tests::tools::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("py/junit_read.py"))
        .arg(path)
        .output()
        .expect("run junitparser");
    assert!(
        output.status.success(),
        "junitparser refused the file: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    serde_json::from_slice(&output.stdout).expect("junit_read.py's JSON")
}

#[test]
fn the_runner_reports_per_protocol_and_writes_junit_xml_a_reader_accepts() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let junit = dir.path().join("report.xml");
    let tests = [MQTT_TEST, COAP_TEST, STOMP_TEST, SKIPPED_TEST];
    let out = runner(&broker, broker.port, &tests, &junit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let row = |protocol: &str| -> Vec<usize> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(protocol) && l[protocol.len()..].starts_with("  "))
            .unwrap_or_else(|| panic!("no row for {protocol}:\n{stdout}"));
        line[protocol.len()..]
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    // run, passed, failed, skipped
    assert_eq!(row("MQTT"), [1, 1, 0, 0], "{stdout}");
    assert_eq!(row("CoAP"), [1, 1, 0, 0], "{stdout}");
    assert_eq!(row("STOMP"), [1, 1, 0, 0], "{stdout}");
    assert_eq!(row("MQTT authentication and ACL"), [0, 0, 0, 1], "{stdout}");
    assert_eq!(row("total"), [3, 3, 0, 1], "{stdout}");
    assert!(stdout.contains("3 of 4 tests ran (75 %)"), "{stdout}");
    assert!(
        stdout.contains("needs auth.allow_anonymous=false, auth.password_file="),
        "{stdout}"
    );

    let report = read_junit(&junit);
    assert_eq!(report["tests"], 4, "{report}");
    let suites = report["suites"].as_object().expect("suites");
    let names: Vec<&str> = suites.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["CoAP", "MQTT", "MQTT authentication and ACL", "STOMP"]
    );
    for (suite, cases) in suites {
        let cases = cases.as_array().expect("cases");
        assert_eq!(cases.len(), 1, "{suite}: {cases:?}");
        let case = &cases[0];
        let full = format!(
            "{}::{}",
            case["classname"].as_str().unwrap(),
            case["name"].as_str().unwrap()
        );
        assert!(tests.contains(&full.as_str()), "{full}");
        assert!(case["time"].as_f64().unwrap() > 0.0, "{case}");
        if suite == "MQTT authentication and ACL" {
            assert_eq!(case["outcome"], "skipped");
            let message = case["message"].as_str().unwrap();
            assert!(
                message.starts_with("needs auth.allow_anonymous=false"),
                "{message}"
            );
        } else {
            assert_eq!(case["outcome"], "passed", "{suite}: {case}");
        }
    }
}

#[test]
fn a_test_failing_against_the_gateway_fails_the_run_with_its_output_in_the_junit_file() {
    let broker = Broker::start();
    // A port nothing listens on, in place of the gateway's MQTT port: one of those held
    // for servers, which no other test binds while this process holds it.
    let closed = interop_tests::ports::server_port();
    let dir = tempfile::tempdir().expect("a temp dir");
    let junit = dir.path().join("report.xml");
    let out = runner(&broker, closed, &[MQTT_TEST], &junit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("---- {MQTT_TEST} (MQTT) ----")),
        "{stdout}"
    );
    let report = read_junit(&junit);
    let cases = report["suites"]["MQTT"].as_array().expect("an MQTT suite");
    assert_eq!(cases.len(), 1);
    let case = &cases[0];
    assert_eq!(case["name"], MQTT_TEST.trim_start_matches("pubsub::"));
    assert_eq!(case["outcome"], "failure");
    let text = case["text"].as_str().unwrap();
    assert!(text.contains("panicked"), "{text}");
}
