//! The admin HTTP API as its users reach it: curl for the requests, and prometheus_client's
//! parser (`py/prometheus_parse.py`) for the metrics.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::Broker;

/// What a request got back.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    /// Header lines as curl printed them, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl` on the gateway's admin API: `method` `path` (with its query), with HTTP Basic
/// `credentials` (`key:secret`) when given.
pub fn http(broker: &Broker, method: &str, path: &str, credentials: Option<&str>) -> HttpReply {
    http_with_body(broker, method, path, credentials, None)
}

/// The same with a JSON body.
pub fn http_json(
    broker: &Broker,
    method: &str,
    path: &str,
    credentials: Option<&str>,
    body: &serde_json::Value,
) -> HttpReply {
    let body = body.to_string();
    http_with_body(
        broker,
        method,
        path,
        credentials,
        Some(("application/json", &body)),
    )
}

/// The same with a body of content type `body.0`.
pub fn http_with_body(
    broker: &Broker,
    method: &str,
    path: &str,
    credentials: Option<&str>,
    body: Option<(&str, &str)>,
) -> HttpReply {
    http_request(broker, method, path, credentials, body, &[])
}

/// The same with `headers` sent as a browser would send them (`Origin`, `Host`, ...).
pub fn http_with_headers(
    broker: &Broker,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    http_request(broker, method, path, None, None, headers)
}

fn http_request(
    broker: &Broker,
    method: &str,
    path: &str,
    credentials: Option<&str>,
    body: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> HttpReply {
    let url = format!("http://{}:{}{path}", broker.host, broker.admin_port);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-D", "-", "-X", method]);
    if let Some(credentials) = credentials {
        cmd.args(["-u", credentials]);
    }
    for (name, value) in headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    if let Some((content_type, body)) = body {
        cmd.args(["-H", &format!("Content-Type: {content_type}")])
            .args(["--data-binary", body]);
    }
    let output = cmd
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl (installed by scripts/install-test-tools.sh)");
    assert!(
        output.status.success(),
        "curl {method} {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head from {url}: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line from {url}: {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// The samples of a Prometheus text exposition as the reference parser reads it:
/// `{"metric": {"label=value": value}, "_types": {"family": "counter"}}`. Panics when the
/// parser refuses the text.
pub fn parse_prometheus(text: &str) -> serde_json::Value {
    let python = crate::tools::python();
    let mut child = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/prometheus_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Prometheus parser");
    child
        .stdin
        .take()
        .expect("the parser's stdin")
        .write_all(text.as_bytes())
        .expect("write to the parser");
    let output = child.wait_with_output().expect("the parser's output");
    assert!(
        output.status.success(),
        "prometheus_client refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the parser's JSON")
}

/// Runs schemathesis against the OpenAPI document the gateway serves, with `credentials`
/// when given, a fixed seed so that a failure reproduces; its output, and whether it found
/// the server true to the document: every answer's status, content type and body as the
/// document says. Two of its checks are left out, and what they would check is checked by
/// the tests themselves: `negative_data_rejection`, which with credentials supplied from
/// outside reports requests as invalid that reach the server valid (the header it dropped
/// put back, a query property it added serialized to nothing), and
/// `positive_data_acceptance`, which cannot know what a schema does not say (a payload
/// that `payload_encoding` declares base64 must be base64).
pub fn schemathesis(broker: &Broker, credentials: Option<&str>) -> (bool, String) {
    let python = crate::tools::python();
    let url = format!(
        "http://{}:{}/api-docs/openapi.json",
        broker.host, broker.admin_port
    );
    let dir = tempfile::tempdir().expect("a temp dir for schemathesis");
    let mut cmd = Command::new(python);
    cmd.current_dir(dir.path())
        .args([
            "-c",
            "from schemathesis.cli import schemathesis; schemathesis(prog_name='schemathesis')",
            "run",
            &url,
            "--checks",
            "all",
            "--exclude-checks",
            "negative_data_rejection,positive_data_acceptance",
            "--seed",
            "20261207",
            "--max-examples",
            "50",
        ])
        .env("NO_COLOR", "1");
    if let Some(credentials) = credentials {
        cmd.args(["--auth", credentials]);
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis (installed by scripts/install-test-tools.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
