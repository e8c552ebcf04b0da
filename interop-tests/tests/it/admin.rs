//! The admin HTTP API on the running binary, driven with curl: `/status` for health checks
//! without credentials, `/api/v5` only with an API key when the gateway has keys, the
//! metrics read by Prometheus' own parser moving as clients publish, the OpenAPI document
//! naming every path it serves, and the limits a public port needs (no start beyond
//! loopback without keys, a trickled request head cut off).

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use interop_tests::admin::{http, http_json, http_with_body, parse_prometheus, schemathesis};
use interop_tests::broker::gateway_command;
use interop_tests::mqttsn::SnClient;
use interop_tests::process::Proc;
use interop_tests::{
    coap_client, mosquitto_pub, unique_client_id, unique_topic, Broker, MosquittoSub, Setting,
    Version, TIMEOUT,
};

const KEYS: &str = "# operators\nops:s3cret:administrator\nci:an:other:secret\n";

/// A gateway with the keys above, and the file holding them.
fn with_keys(extra: &[Setting]) -> Option<(Broker, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("api_keys");
    std::fs::write(&file, KEYS).expect("write the key file");
    let mut settings = vec![Setting::new(
        "GATEWAY_API_KEY__BOOTSTRAP_FILE",
        file.display().to_string(),
    )];
    settings.extend_from_slice(extra);
    let broker = Broker::start_gateway_only("the admin API", &settings)?;
    Some((broker, dir))
}

/// The admin API of an external gateway, or a gateway with the keys above: for a test that
/// sends the key only to be let in, which a gateway without keys (the default, on loopback)
/// ignores, and that sees nothing of other clients.
fn admin_api() -> Option<(Broker, Option<tempfile::TempDir>)> {
    if interop_tests::external_mode() {
        return Some((Broker::start(), None));
    }
    with_keys(&[]).map(|(broker, keys)| (broker, Some(keys)))
}

/// A gateway of the test's own with the keys above: for a test that counts every client
/// or changes what every client sees, which tests beside it on a shared gateway would upset.
fn own_gateway_with_keys() -> Option<(Broker, tempfile::TempDir)> {
    if interop_tests::external_mode() {
        interop_tests::skip_external(
            "[a gateway of the test's own: it counts or bans every client of the gateway]",
        );
        return None;
    }
    with_keys(&[])
}

#[test]
fn status_answers_health_checks_without_credentials() {
    let Some((gw, _keys)) = admin_api() else {
        return;
    };
    for path in ["/status", "/api/v5/status"] {
        let reply = http(&gw, "GET", path, None);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(
            reply.body,
            "Node gateway@127.0.0.1 is started\ngateway is running"
        );
        let json = http(&gw, "GET", &format!("{path}?format=json"), None).json();
        assert_eq!(json["status"], "running");
        assert_eq!(json["node_name"], "gateway@127.0.0.1");
    }
    assert_eq!(http(&gw, "GET", "/status?format=xml", None).status, 400);
}

#[test]
fn the_api_takes_only_a_key_of_the_gateways() {
    let Some((gw, _keys)) = with_keys(&[]) else {
        return;
    };
    for credentials in [None, Some("ops:wrong"), Some("nobody:s3cret"), Some("ops:")] {
        let reply = http(&gw, "GET", "/api/v5/listeners", credentials);
        assert_eq!(reply.status, 401, "{credentials:?}: {reply:?}");
        assert_eq!(reply.json()["code"], "BAD_API_KEY_OR_SECRET");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"gateway\"")
        );
    }
    for credentials in ["ops:s3cret", "ci:an"] {
        let reply = http(&gw, "GET", "/api/v5/listeners", Some(credentials));
        assert_eq!(reply.status, 200, "{credentials}: {reply:?}");
        let listeners = reply.json();
        let tcp = listeners
            .as_array()
            .expect("a list")
            .iter()
            .find(|l| l["id"] == "tcp:default")
            .expect("tcp:default listed");
        assert_eq!(tcp["running"], true);
        assert_eq!(tcp["type"], "tcp");
        assert_eq!(tcp["protocol"], "mqtt");
        assert_eq!(tcp["bind"], format!("127.0.0.1:{}", gw.port));
        let coap = listeners
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == "coap:udp:default")
            .expect("coap:udp:default listed");
        assert_eq!(
            (coap["type"].as_str(), coap["protocol"].as_str()),
            (Some("udp"), Some("coap"))
        );
    }
    let unknown = http(&gw, "GET", "/api/v5/no-such-thing", Some("ops:s3cret"));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["code"], "NOT_FOUND");
}

/// Reads the metrics through Prometheus' parser.
fn scrape(gw: &Broker) -> serde_json::Value {
    let reply = http(gw, "GET", "/metrics", None);
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{reply:?}"
    );
    parse_prometheus(&reply.body)
}

fn sample(metrics: &serde_json::Value, name: &str) -> f64 {
    metrics[name][""]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_as_clients_publish() {
    let Some((gw, _keys)) = own_gateway_with_keys() else {
        return;
    };
    let before = scrape(&gw);
    assert_eq!(before["_types"]["gateway_messages_received"], "counter");
    assert_eq!(before["_types"]["gateway_clients_connected"], "gauge");
    assert_eq!(sample(&before, "gateway_clients_connected"), 0.0);
    let version = before["gateway_build_info"]
        .as_object()
        .expect("build info")
        .keys()
        .next()
        .cloned()
        .unwrap_or_default();
    assert!(version.starts_with("version="), "{version}");

    let topic = unique_topic("admin-metrics");
    let mut sub = MosquittoSub::start(&gw, Version::V5, &[&topic], 1, &[]);
    for n in 0..5 {
        mosquitto_pub(
            &gw,
            Version::V311,
            &topic,
            format!("m{n}").as_bytes(),
            1,
            false,
            &[],
        );
        sub.recv(TIMEOUT);
    }
    let after = scrape(&gw);
    assert_eq!(
        sample(&after, "gateway_clients_connected"),
        1.0,
        "the subscriber"
    );
    let received = sample(&after, "gateway_messages_received_total")
        - sample(&before, "gateway_messages_received_total");
    let sent = sample(&after, "gateway_messages_sent_total")
        - sample(&before, "gateway_messages_sent_total");
    assert!(received >= 5.0, "received {received}");
    assert!(sent >= 5.0, "sent {sent}");
    assert!(
        sample(&after, "gateway_bytes_received_total")
            > sample(&before, "gateway_bytes_received_total")
    );
    // EMQX's path gives the same figures.
    let emqx = http(&gw, "GET", "/api/v5/prometheus/stats", None);
    assert_eq!(emqx.status, 200);
    parse_prometheus(&emqx.body);

    let stats = http(
        &gw,
        "GET",
        "/api/v5/stats?aggregate=true",
        Some("ops:s3cret"),
    )
    .json();
    assert_eq!(stats["connections.count"], 1);
    assert_eq!(stats["subscriptions.count"], 1);
    let per_node = http(&gw, "GET", "/api/v5/metrics", Some("ops:s3cret")).json();
    assert_eq!(per_node[0]["node"], "gateway@127.0.0.1");
    assert!(per_node[0]["messages.received"].as_u64().unwrap() >= 5);
}

#[test]
fn the_openapi_document_names_what_the_server_serves() {
    let Some((gw, _keys)) = with_keys(&[]) else {
        return;
    };
    let reply = http(&gw, "GET", "/api-docs/openapi.json", None);
    assert_eq!(reply.status, 200);
    let document = reply.json();
    assert!(document["openapi"]
        .as_str()
        .unwrap_or_default()
        .starts_with("3."));
    assert_eq!(
        document["components"]["securitySchemes"]["api_key"]["scheme"],
        "basic"
    );
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/status",
        "/api/v5/status",
        "/metrics",
        "/api/v5/prometheus/stats",
        "/api/v5/listeners",
        "/api/v5/stats",
        "/api/v5/metrics",
        "/api/v5/publish",
        "/api/v5/publish/bulk",
        "/api/v5/mqtt/retainer/messages",
        "/api/v5/mqtt/retainer/message/{topic}",
        "/api/v5/gateways/lwm2m/clients/{clientid}/read",
        "/api/v5/gateways/lwm2m/clients/{clientid}/write",
        "/api/v5/gateways/lwm2m/clients/{clientid}/observe",
        "/api/v5/gateways/lwm2m/clients/{clientid}/execute",
        "/api/v5/gateways/lwm2m/clients/{clientid}/discover",
        "/api/v5/gateways/lwm2m/clients/{clientid}/lookup",
    ] {
        assert!(paths.contains_key(path), "{path} not documented");
    }
    // Every documented operation is routed (never the fallback's 404 NOT_FOUND for a
    // path), one that asks for a key is refused without it, and every GET without path
    // parameters answers 200 with a key.
    for (path, operations) in paths {
        let concrete = path.replace("{topic}", "no%2Fsuch%2Ftopic");
        for (method, operation) in operations.as_object().unwrap() {
            let secured = operation.get("security").is_some();
            let method = method.to_uppercase();
            let without = http(&gw, &method, &concrete, None);
            if secured {
                assert_eq!(without.status, 401, "{method} {path} without a key");
            }
            let with_key = http(&gw, &method, &concrete, Some("ops:s3cret"));
            assert_ne!(with_key.status, 401, "{method} {path}");
            assert_ne!(with_key.status, 405, "{method} {path}");
            if method == "GET" && !path.contains('{') {
                assert_eq!(with_key.status, 200, "{method} {path}: {with_key:?}");
            }
        }
    }
    assert_eq!(
        http(&gw, "GET", "/api-docs/swagger.json", None).json(),
        document
    );
}

#[test]
fn beyond_loopback_without_keys_the_gateway_does_not_start() {
    if interop_tests::external_mode() {
        interop_tests::skip_external("[a gateway the test starts: start-up checks]");
        return;
    }
    let mut cmd = gateway_command();
    cmd.env("GATEWAY_DASHBOARD__LISTENERS__HTTP__BIND", "0.0.0.0:0")
        .env("GATEWAY_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0")
        .env("GATEWAY_LISTENERS__WS__DEFAULT__ENABLE", "false");
    let mut proc = Proc::spawn("gateway with an open admin API", cmd);
    match proc.wait(TIMEOUT) {
        Some(status) => assert!(!status.success()),
        None => panic!("the gateway started with its admin API open to anyone"),
    }
    let stderr = proc.stderr();
    assert!(
        stderr.contains("dashboard.listeners.http.bind")
            && stderr.contains("api_key.bootstrap_file"),
        "{stderr}"
    );
}

#[test]
fn a_request_head_trickled_past_the_timeout_loses_its_connection() {
    let Some((gw, _keys)) = with_keys(&[Setting::new(
        "GATEWAY_DASHBOARD__LISTENERS__HTTP__REQUEST_TIMEOUT",
        "1s",
    )]) else {
        return;
    };
    let mut slow = TcpStream::connect((gw.host.as_str(), gw.admin_port)).expect("connect");
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: gateway\r\n")
        .expect("write part of a head");
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    // Closed by the server (an answer, if any, is a 408 before the close).
    loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // Others are served meanwhile and after.
    assert_eq!(http(&gw, "GET", "/status", None).status, 200);
}

#[test]
fn schemathesis_finds_the_server_true_to_its_openapi_document() {
    let Some((gw, _keys)) = own_gateway_with_keys() else {
        return;
    };
    for credentials in [Some("ops:s3cret"), None] {
        let (passed, report) = schemathesis(&gw, credentials);
        assert!(passed, "with {credentials:?}:\n{report}");
        assert!(report.contains("passed"), "{report}");
    }
    // What schemathesis's negative check is left out for: a query parameter the operation
    // does not know, or a value outside its schema, is refused with EMQX's error shape.
    for path in [
        "/api/v5/stats?aggregate=maybe",
        "/api/v5/stats?aggregat=true",
        "/api/v5/metrics?aggregate=true&aggregate=false",
        "/status?formatt=json",
    ] {
        let reply = http(&gw, "GET", path, Some("ops:s3cret"));
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
        assert_eq!(reply.json()["code"], "BAD_REQUEST", "{path}");
    }
}

const KEY: Option<&str> = Some("ops:s3cret");

#[test]
fn an_operator_publishes_one_message_or_several_to_subscribers() {
    let Some((gw, _keys)) = with_keys(&[]) else {
        return;
    };
    let topic = unique_topic("admin-publish");
    let mut sub = MosquittoSub::start(&gw, Version::V5, &[&format!("{topic}/#")], 2, &[]);
    let reply = http_json(
        &gw,
        "POST",
        "/api/v5/publish",
        KEY,
        &json!({"topic": format!("{topic}/a"), "payload": "hello", "qos": 1}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let id = reply.json()["id"].as_str().unwrap_or_default().to_owned();
    assert!(
        id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    let msg = sub.recv(TIMEOUT);
    assert_eq!(
        (msg.topic, msg.payload),
        (format!("{topic}/a"), b"hello".to_vec())
    );

    // Every byte value, base64 in the request.
    let reply = http_json(
        &gw,
        "POST",
        "/api/v5/publish",
        KEY,
        &json!({"topic": format!("{topic}/b"), "payload": "AP8KDQBtcXR0", "payload_encoding": "base64", "qos": 2}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(sub.recv(TIMEOUT).payload, b"\x00\xff\n\r\x00mqtt");

    let nobody = http_json(
        &gw,
        "POST",
        "/api/v5/publish",
        KEY,
        &json!({"topic": unique_topic("nobody-listens"), "payload": "x"}),
    );
    assert_eq!(nobody.status, 202);
    assert_eq!(
        nobody.json(),
        json!({"message": "no_matching_subscribers", "reason_code": 16})
    );

    let bulk = http_json(
        &gw,
        "POST",
        "/api/v5/publish/bulk",
        KEY,
        &json!([
            {"topic": format!("{topic}/c"), "payload": "one"},
            {"topic": unique_topic("nobody-listens"), "payload": "two"},
            {"topic": format!("{topic}/d"), "payload": "three", "qos": 1},
        ]),
    );
    assert_eq!(bulk.status, 200, "{bulk:?}");
    let results = bulk.json();
    assert!(
        results[0]["id"].is_string() && results[2]["id"].is_string(),
        "{results}"
    );
    assert_eq!(results[1]["reason_code"], 16);
    assert_eq!(sub.recv(TIMEOUT).payload, b"one");
    assert_eq!(sub.recv(TIMEOUT).payload, b"three");

    // Refused, each with EMQX's error shape, and nothing published.
    for (why, body) in [
        (
            "a filter",
            json!({"topic": format!("{topic}/+"), "payload": "x"}),
        ),
        (
            "the broker's own topics",
            json!({"topic": "$SYS/broker/uptime", "payload": "x"}),
        ),
        (
            "QoS 3",
            json!({"topic": format!("{topic}/e"), "payload": "x", "qos": 3}),
        ),
        (
            "not base64",
            json!({"topic": format!("{topic}/e"), "payload": "%%", "payload_encoding": "base64"}),
        ),
        (
            "an unknown field",
            json!({"topic": format!("{topic}/e"), "payload": "x", "qso": 1}),
        ),
        ("no topic", json!({"payload": "x"})),
        ("an empty topic", json!({"topic": "", "payload": "x"})),
    ] {
        let reply = http_json(&gw, "POST", "/api/v5/publish", KEY, &body);
        assert_eq!(reply.status, 400, "{why}: {reply:?}");
        assert_eq!(reply.json()["code"], "BAD_REQUEST", "{why}");
    }
    let half_bad = http_json(
        &gw,
        "POST",
        "/api/v5/publish/bulk",
        KEY,
        &json!([{"topic": format!("{topic}/f"), "payload": "first"}, {"topic": "#", "payload": "x"}]),
    );
    assert_eq!(half_bad.status, 400, "{half_bad:?}");
    assert!(half_bad.json()["message"]
        .as_str()
        .unwrap_or_default()
        .starts_with("message 1:"));
    let not_json = http_with_body(
        &gw,
        "POST",
        "/api/v5/publish",
        KEY,
        Some(("application/json", "{topic")),
    );
    assert_eq!(not_json.status, 400);
    let no_type = http_with_body(
        &gw,
        "POST",
        "/api/v5/publish",
        KEY,
        Some(("text/plain", "{}")),
    );
    assert_eq!(no_type.status, 415);
    let anonymous = http_json(
        &gw,
        "POST",
        "/api/v5/publish",
        None,
        &json!({"topic": format!("{topic}/g"), "payload": "x"}),
    );
    assert_eq!(anonymous.status, 401);
    assert!(
        sub.try_recv(Duration::from_millis(500)).is_none(),
        "a refused request published something"
    );
}

#[test]
fn an_operator_lists_reads_and_clears_retained_messages() {
    let Some((gw, _keys)) = admin_api() else {
        return;
    };
    let topic = unique_topic("admin-retained");
    for n in 0..3 {
        mosquitto_pub(
            &gw,
            Version::V5,
            &format!("{topic}/r{n}"),
            format!("kept {n}").as_bytes(),
            1,
            true,
            &[],
        );
    }
    let reply = http(
        &gw,
        "GET",
        &format!("/api/v5/mqtt/retainer/messages?topic={topic}/%23&limit=2"),
        KEY,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let page = reply.json();
    assert_eq!(
        page["meta"],
        json!({"page": 1, "limit": 2, "count": 3, "hasnext": true})
    );
    let topics: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, [format!("{topic}/r0"), format!("{topic}/r1")]);
    let second = http(
        &gw,
        "GET",
        &format!("/api/v5/mqtt/retainer/messages?topic={topic}/%23&limit=2&page=2"),
        KEY,
    )
    .json();
    assert_eq!(second["meta"]["hasnext"], false);
    assert_eq!(second["data"][0]["topic"], format!("{topic}/r2"));

    let encoded = format!("{topic}/r1").replace('/', "%2F");
    let one = http(
        &gw,
        "GET",
        &format!("/api/v5/mqtt/retainer/message/{encoded}"),
        KEY,
    );
    assert_eq!(one.status, 200, "{one:?}");
    assert_eq!(one.json()["payload"], "a2VwdCAx", "base64 of \"kept 1\"");
    assert_eq!(one.json()["qos"], 1);

    let cleared = http(
        &gw,
        "DELETE",
        &format!("/api/v5/mqtt/retainer/message/{encoded}"),
        KEY,
    );
    assert_eq!(cleared.status, 204, "{cleared:?}");
    assert_eq!(
        http(
            &gw,
            "GET",
            &format!("/api/v5/mqtt/retainer/message/{encoded}"),
            KEY
        )
        .status,
        404
    );
    assert_eq!(
        http(
            &gw,
            "DELETE",
            &format!("/api/v5/mqtt/retainer/message/{encoded}"),
            KEY
        )
        .status,
        404
    );
    // A filter names no message, and clears none.
    let filter = format!("{topic}/%2B");
    assert_eq!(
        http(
            &gw,
            "DELETE",
            &format!("/api/v5/mqtt/retainer/message/{filter}"),
            KEY
        )
        .status,
        404
    );
    // A new subscriber gets the two left, and the cleared one is not sent to anyone.
    let mut sub = MosquittoSub::start(&gw, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    let mut got: Vec<String> = (0..2).map(|_| sub.recv(TIMEOUT).topic).collect();
    got.sort();
    assert_eq!(got, [format!("{topic}/r0"), format!("{topic}/r2")]);
    assert!(sub.try_recv(Duration::from_millis(500)).is_none());
    assert_eq!(
        http(
            &gw,
            "GET",
            "/api/v5/mqtt/retainer/messages?topic=%23&limit=0",
            KEY
        )
        .status,
        400
    );
}

/// `mosquitto_pub` as `client_id` and `username`: whether it connected and published, and
/// what it printed.
fn publish_as(gw: &Broker, client_id: &str, username: Option<&str>) -> (bool, String) {
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args(["-h", &gw.host, "-p", &gw.port.to_string()])
        .args([
            "-V",
            "mqttv5",
            "-i",
            client_id,
            "-t",
            "banned/test",
            "-m",
            "x",
        ]);
    if let Some(username) = username {
        cmd.args(["-u", username]);
    }
    let output = cmd.output().expect("run mosquitto_pub");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_ban_refuses_its_clients_in_every_protocol_until_lifted() {
    let Some((gw, _keys)) = own_gateway_with_keys() else {
        return;
    };
    let device = unique_client_id("banned");
    let made = http_json(
        &gw,
        "POST",
        "/api/v5/banned",
        KEY,
        &json!({"as": "clientid", "who": device, "reason": "stolen", "by": "ops"}),
    );
    assert_eq!(made.status, 200, "{made:?}");
    assert_eq!(made.json()["who"], device.as_str());
    let (ok, said) = publish_as(&gw, &device, None);
    assert!(!ok && said.contains("Banned"), "CONNACK 0x8A: {said}");
    assert!(
        publish_as(&gw, &unique_client_id("free"), None).0,
        "another client id"
    );

    let made = http_json(
        &gw,
        "POST",
        "/api/v5/banned",
        KEY,
        &json!({"as": "username", "who": "mallory"}),
    );
    assert_eq!(made.status, 200, "{made:?}");
    assert!(!publish_as(&gw, &unique_client_id("m"), Some("mallory")).0);
    assert!(publish_as(&gw, &unique_client_id("m"), Some("mallorie")).0);

    // The whole loopback network, for a minute: MQTT and CoAP alike.
    let until = time_in(60);
    let made = http_json(
        &gw,
        "POST",
        "/api/v5/banned",
        KEY,
        &json!({"as": "peerhost_net", "who": "127.0.0.0/8", "until": until}),
    );
    assert_eq!(made.status, 200, "{made:?}");
    assert!(!publish_as(&gw, &unique_client_id("net"), None).0);
    let coap_path = format!(
        "/ps/{}?clientid={}",
        unique_topic("banned"),
        unique_client_id("c")
    );
    let (_, stdout, stderr) = coap_client(&gw, &["-m", "post", "-e", "x", "-v", "7"], &coap_path);
    let said = format!("{stdout}\n{stderr}");
    assert!(
        said.contains("c:4.29") && said.contains("banned"),
        "CoAP: {said}"
    );

    let listed = http(&gw, "GET", "/api/v5/banned", KEY).json();
    assert_eq!(listed["meta"]["count"], 3, "{listed}");
    let net = &listed["data"][2];
    assert_eq!(
        (net["as"].as_str(), net["who"].as_str()),
        (Some("peerhost_net"), Some("127.0.0.0/8"))
    );
    assert!(
        net["until"].as_str().unwrap_or_default().ends_with('Z'),
        "{net}"
    );

    let lifted = http(
        &gw,
        "DELETE",
        "/api/v5/banned/peerhost_net/127.0.0.0%2F8",
        KEY,
    );
    assert_eq!(lifted.status, 204, "{lifted:?}");
    assert!(publish_as(&gw, &unique_client_id("net"), None).0, "lifted");
    let (ok, stdout, _) = coap_client(&gw, &["-m", "post", "-e", "x", "-v", "7"], &coap_path);
    assert!(ok && stdout.contains("c:2.04"), "{stdout}");
    assert_eq!(
        http(
            &gw,
            "DELETE",
            "/api/v5/banned/peerhost_net/127.0.0.0%2F8",
            KEY
        )
        .status,
        404
    );

    for (why, body) in [
        (
            "not an address",
            json!({"as": "peerhost", "who": "localhost"}),
        ),
        (
            "no such prefix",
            json!({"as": "peerhost_net", "who": "10.0.0.0/33"}),
        ),
        (
            "already over",
            json!({"as": "clientid", "who": "x", "until": "2001-01-01T00:00:00Z"}),
        ),
        (
            "not a time",
            json!({"as": "clientid", "who": "x", "until": "tomorrow"}),
        ),
        ("no such kind", json!({"as": "clientid_re", "who": "x"})),
        (
            "an unknown field",
            json!({"as": "clientid", "who": "x", "forever": true}),
        ),
        ("nobody", json!({"as": "clientid", "who": ""})),
        (
            "too long a name",
            json!({"as": "username", "who": "u".repeat(1025)}),
        ),
    ] {
        let reply = http_json(&gw, "POST", "/api/v5/banned", KEY, &body);
        assert_eq!(reply.status, 400, "{why}: {reply:?}");
    }
    assert_eq!(
        http_json(
            &gw,
            "POST",
            "/api/v5/banned",
            None,
            &json!({"as": "clientid", "who": "y"})
        )
        .status,
        401
    );
}

/// RFC 3339, `seconds` from now.
fn time_in(seconds: u64) -> String {
    let output = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("+{seconds} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .expect("run date");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn refused_logins_and_banned_clients_move_their_metrics() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let passwords = dir.path().join("passwd");
    interop_tests::broker::gateway_passwd(&passwords, "alice", "wonderland");
    let Some((gw, _keys)) = with_keys(&interop_tests::broker::password_file_only(&passwords))
    else {
        return;
    };
    let refused = |metrics: &serde_json::Value| {
        (
            sample(metrics, "gateway_clients_refused_authentication_total"),
            sample(metrics, "gateway_clients_refused_banned_total"),
        )
    };
    assert_eq!(refused(&scrape(&gw)), (0.0, 0.0));
    for password in ["wrong", "Wonderland", ""] {
        let output = std::process::Command::new("mosquitto_pub")
            .args(["-h", &gw.host, "-p", &gw.port.to_string(), "-V", "mqttv5"])
            .args(["-u", "alice", "-P", password, "-t", "t", "-m", "x"])
            .output()
            .expect("run mosquitto_pub");
        assert!(!output.status.success(), "{password:?} let in");
    }
    let banned = http_json(
        &gw,
        "POST",
        "/api/v5/banned",
        KEY,
        &json!({"as": "username", "who": "alice"}),
    );
    assert_eq!(banned.status, 200);
    let output = std::process::Command::new("mosquitto_pub")
        .args(["-h", &gw.host, "-p", &gw.port.to_string(), "-V", "mqttv5"])
        .args(["-u", "alice", "-P", "wonderland", "-t", "t", "-m", "x"])
        .output()
        .expect("run mosquitto_pub");
    assert!(!output.status.success(), "banned");
    assert_eq!(refused(&scrape(&gw)), (3.0, 1.0));
}

/// The clients `path` lists, polled until `done` holds for them or `TIMEOUT` passes.
fn clients_until(
    gw: &Broker,
    path: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = http(gw, "GET", path, KEY);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        let data = reply.json()["data"].as_array().cloned().unwrap_or_default();
        if done(&data) || Instant::now() > deadline {
            return data;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_operator_lists_and_kicks_clients_of_every_protocol() {
    let Some((gw, _keys)) = own_gateway_with_keys() else {
        return;
    };
    let id = unique_client_id("listed");
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args(["-h", &gw.host, "-p", &gw.port.to_string(), "-V", "mqttv5"])
        .args(["-i", &id, "-u", "carol", "-k", "42", "-t", "admin/kick/#"]);
    let mut sub = Proc::spawn("mosquitto_sub to be kicked", cmd);
    let listed = clients_until(
        &gw,
        &format!("/api/v5/clients?like_clientid={id}"),
        |data| !data.is_empty(),
    );
    let client = &listed[0];
    assert_eq!(client["clientid"], id.as_str());
    assert_eq!(client["username"], "carol");
    assert_eq!(client["proto_name"], "MQTT");
    assert_eq!(client["proto_ver"], "5");
    assert_eq!(client["keepalive"], 42);
    assert_eq!(client["subscriptions_cnt"], 1);
    assert_eq!(client["conn_state"], "connected");
    assert_eq!(client["ip_address"], "127.0.0.1");
    assert_eq!(client["listener"], "tcp:default");
    let one = http(&gw, "GET", &format!("/api/v5/clients/{id}"), KEY);
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["clientid"], id.as_str());
    let by_user = http(
        &gw,
        "GET",
        "/api/v5/clients?username=carol&proto_name=MQTT",
        KEY,
    )
    .json();
    assert_eq!(by_user["meta"]["count"], 1);
    assert_eq!(
        http(
            &gw,
            "GET",
            "/api/v5/clients?proto_name=CoAP&username=carol",
            KEY
        )
        .json()["meta"]["count"],
        0
    );
    assert_eq!(
        http(&gw, "GET", "/api/v5/clients?proto_name=Telnet", KEY).status,
        400
    );

    let kicked = http(&gw, "DELETE", &format!("/api/v5/clients/{id}"), KEY);
    assert_eq!(kicked.status, 204, "{kicked:?}");
    // mosquitto_sub runs until its connection ends: the kick ends it.
    assert!(
        sub.wait(TIMEOUT).is_some(),
        "mosquitto_sub still connected after the kick"
    );
    assert_eq!(
        http(&gw, "GET", &format!("/api/v5/clients/{id}"), KEY).status,
        404
    );
    assert_eq!(
        http(&gw, "DELETE", &format!("/api/v5/clients/{id}"), KEY).status,
        404
    );

    // A CoAP client, through the gateway's own path.
    let coap_id = unique_client_id("coap-listed");
    let path = format!("/ps/{}?clientid={coap_id}", unique_topic("admin-coap"));
    let (ok, stdout, _) = coap_client(&gw, &["-m", "post", "-e", "x", "-v", "7"], &path);
    assert!(ok && stdout.contains("c:2.04"), "{stdout}");
    let listed = clients_until(
        &gw,
        &format!("/api/v5/gateways/coap/clients?clientid={coap_id}"),
        |data| !data.is_empty(),
    );
    assert_eq!(listed[0]["proto_name"], "CoAP");
    // Not an MQTT client, though it has the id.
    assert_eq!(
        http(&gw, "GET", &format!("/api/v5/clients/{coap_id}"), KEY).status,
        404
    );
    let one = format!("/api/v5/gateways/coap/clients/{coap_id}");
    assert_eq!(http(&gw, "GET", &one, KEY).status, 200);
    assert_eq!(http(&gw, "DELETE", &one, KEY).status, 204);
    assert_eq!(http(&gw, "GET", &one, KEY).status, 404);
    assert_eq!(
        http(&gw, "GET", "/api/v5/gateways/telnet/clients", KEY).status,
        400
    );
}

#[test]
fn an_operator_lists_subscriptions_of_every_client_and_filters_them() {
    let Some((gw, _keys)) = own_gateway_with_keys() else {
        return;
    };
    let id = unique_client_id("subscribed");
    let plain = unique_topic("admin-subs");
    let shared_filter = format!("{}/+", unique_topic("admin-shared"));
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args(["-h", &gw.host, "-p", &gw.port.to_string(), "-V", "mqttv5"])
        .args(["-i", &id, "-q", "1", "-t", &plain])
        .args(["-t", &format!("$share/grp/{shared_filter}")])
        .args(["-D", "subscribe", "subscription-identifier", "7"]);
    let _sub = Proc::spawn("mosquitto_sub with two subscriptions", cmd);
    let mine = format!("/api/v5/subscriptions?clientid={id}");
    let listed = clients_until(&gw, &mine, |data| data.len() == 2);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let topics: Vec<&str> = listed.iter().filter_map(|s| s["topic"].as_str()).collect();
    assert!(topics.contains(&plain.as_str()), "{listed:?}");
    assert!(
        topics.contains(&format!("$share/grp/{shared_filter}").as_str()),
        "{listed:?}"
    );
    for subscription in &listed {
        assert_eq!(subscription["clientid"], id.as_str());
        assert_eq!(subscription["qos"], 1);
        assert_eq!(subscription["sub_id"], 7);
        assert_eq!(subscription["rh"], 0);
    }

    // The filters narrow the list; a topic name matching the shared filter finds it.
    let count = |query: &str| {
        let reply = http(&gw, "GET", &format!("{mine}&{query}"), KEY);
        assert_eq!(reply.status, 200, "{query}: {reply:?}");
        reply.json()["meta"]["count"].as_u64().unwrap_or(u64::MAX)
    };
    assert_eq!(count("share_group=grp"), 1);
    assert_eq!(count(&format!("topic={plain}")), 1);
    let matching = shared_filter.replace('+', "device-9");
    assert_eq!(count(&format!("match_topic={matching}")), 1);
    assert_eq!(count("qos=0"), 0);
    assert_eq!(count("limit=1"), 2);
    let first_page = http(&gw, "GET", &format!("{mine}&limit=1"), KEY).json();
    assert_eq!(first_page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(first_page["meta"]["hasnext"], true);

    // One client's, through its own path; none for a client that is not there.
    let own = http(
        &gw,
        "GET",
        &format!("/api/v5/clients/{id}/subscriptions"),
        KEY,
    );
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(own.json().as_array().map(Vec::len), Some(2));
    assert_eq!(
        http(&gw, "GET", "/api/v5/clients/nobody-here/subscriptions", KEY).status,
        404
    );
    // A query that cannot be read is refused, not ignored.
    for bad in ["qos=3", "limit=0", "colour=red"] {
        assert_eq!(
            http(&gw, "GET", &format!("/api/v5/subscriptions?{bad}"), KEY).status,
            400,
            "{bad}"
        );
    }
    // Without a key, nothing.
    assert_eq!(http(&gw, "GET", "/api/v5/subscriptions", None).status, 401);

    // An MQTT-SN client is listed as a gateway's client with its subscription.
    let sn_topic = unique_topic("admin-sn-subs");
    let sn_id = unique_client_id("sn-subscribed");
    let mut sn = SnClient::connected(&gw, &sn_id, json!({}));
    sn.subscribe(&sn_topic, 1);
    let sn_subs = http(
        &gw,
        "GET",
        &format!("/api/v5/gateways/mqttsn/clients/{sn_id}/subscriptions"),
        KEY,
    );
    assert_eq!(sn_subs.status, 200, "{sn_subs:?}");
    assert_eq!(sn_subs.json()[0]["topic"], sn_topic.as_str());
}

/// A labelled sample of `name`, e.g. `labels` = `protocol=coap`; 0 when it is not there yet.
fn labelled(metrics: &serde_json::Value, name: &str, labels: &str) -> f64 {
    metrics[name][labels].as_f64().unwrap_or(0.0)
}

/// Scrapes until `done` holds for the metrics or `TIMEOUT` passes; the last scrape.
fn scrape_until(gw: &Broker, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = scrape(gw);
        if done(&metrics) || Instant::now() > deadline {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_queues_drops_protocols_connections_retransmissions_and_commits() {
    let Some((gw, _keys)) = with_keys(&[
        Setting::new("GATEWAY_MQTT__MAX_QUEUED_MESSAGES", "3"),
        Setting::new("GATEWAY_MQTT__RECEIVER_HIGH_WATER", "0"),
        Setting::new("GATEWAY_GATEWAY__COAP__ACK_TIMEOUT", "100ms"),
    ]) else {
        return;
    };
    let before = scrape(&gw);
    assert_eq!(
        before["_types"]["gateway_store_commit_seconds"],
        "histogram"
    );

    // A session outliving its subscriber: what is published meanwhile is queued, up to 3,
    // and the rest dropped, counted.
    let id = unique_client_id("metrics-offline");
    let topic = unique_topic("admin-metrics-queue");
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args(["-h", &gw.host, "-p", &gw.port.to_string(), "-V", "mqttv5"])
        .args([
            "-i", &id, "-c", "-x", "600", "-q", "1", "-t", &topic, "-C", "1",
        ]);
    let mut sub = Proc::spawn("mosquitto_sub with a lasting session", cmd);
    clients_until(&gw, &format!("/api/v5/clients?clientid={id}"), |data| {
        data.first().is_some_and(|c| c["subscriptions_cnt"] == 1)
    });
    mosquitto_pub(&gw, Version::V5, &topic, b"first", 1, false, &[]);
    assert!(
        sub.wait(TIMEOUT).is_some(),
        "mosquitto_sub took its message"
    );
    clients_until(
        &gw,
        &format!("/api/v5/clients?clientid={id}&conn_state=disconnected"),
        |data| !data.is_empty(),
    );
    let dropped_before = sample(
        &scrape(&gw),
        "gateway_publish_messages_dropped_queue_full_total",
    );
    for n in 0..5 {
        mosquitto_pub(
            &gw,
            Version::V5,
            &topic,
            format!("q{n}").as_bytes(),
            1,
            false,
            &[],
        );
    }
    let held = scrape(&gw);
    assert_eq!(sample(&held, "gateway_messages_queued"), 3.0);
    assert_eq!(sample(&held, "gateway_messages_queued_deepest"), 3.0);
    assert!(sample(&held, "gateway_messages_queued_bytes") > 0.0);
    assert_eq!(
        sample(&held, "gateway_publish_messages_dropped_queue_full_total") - dropped_before,
        2.0
    );
    assert!(sample(&held, "gateway_publish_messages_dropped_total") >= 2.0);
    assert_eq!(
        labelled(
            &held,
            "gateway_listener_publish_messages_dropped_queue_full_total",
            "listener=tcp:default"
        ),
        2.0
    );
    // The queued QoS 1 messages were stored: the store committed, each commit timed.
    let commits = sample(&held, "gateway_store_commit_seconds_count");
    assert!(commits >= 3.0, "{commits} commits");
    let infinite = labelled(&held, "gateway_store_commit_seconds_bucket", "le=+Inf");
    assert_eq!(infinite, commits);
    assert!(sample(&held, "gateway_store_commit_seconds_sum") > 0.0);
    // Every MQTT connection so far went through the TCP listener: 1 subscriber, 6 publishers.
    assert!(
        labelled(
            &held,
            "gateway_listener_connections_accepted_total",
            "listener=tcp:default"
        ) >= 7.0,
        "{held}"
    );
    assert!(
        labelled(
            &held,
            "gateway_protocol_clients_connections_total",
            "protocol=mqtt"
        ) >= 7.0
    );

    // A CoAP client and an LwM2M device are counted by protocol; a registration is a
    // connection of the LwM2M protocol.
    let coap_id = unique_client_id("metrics-coap");
    let path = format!(
        "/ps/{}?clientid={coap_id}",
        unique_topic("admin-metrics-coap")
    );
    let (ok, stdout, stderr) = coap_client(&gw, &["-m", "post", "-e", "x"], &path);
    assert!(ok, "{stdout}{stderr}");
    let endpoint = unique_client_id("metrics-lwm2m");
    let mut lwm2m = interop_tests::lwm2m::device(&gw, &endpoint);
    interop_tests::lwm2m::expect_line(&mut lwm2m, "registered");
    let counted = scrape_until(&gw, |m| {
        labelled(
            m,
            "gateway_protocol_clients_connections_total",
            "protocol=lwm2m",
        ) >= 1.0
            && labelled(
                m,
                "gateway_protocol_clients_connections_total",
                "protocol=coap",
            ) >= 1.0
    });
    assert_eq!(
        labelled(
            &counted,
            "gateway_protocol_clients_connections_total",
            "protocol=lwm2m"
        ),
        1.0
    );
    assert_eq!(
        labelled(
            &counted,
            "gateway_protocol_clients_connected",
            "protocol=lwm2m"
        ),
        1.0
    );
    assert_eq!(
        labelled(
            &counted,
            "gateway_protocol_clients_connections_total",
            "protocol=coap"
        ),
        1.0
    );
    lwm2m.kill();

    // A CoAP observer that goes away without a word: its confirmable notification is sent
    // again, and again, each time counted.
    let observed = unique_topic("admin-metrics-observed");
    mosquitto_pub(&gw, Version::V5, &observed, b"retained-now", 1, true, &[]);
    let observer_id = unique_client_id("metrics-observer");
    let mut cmd = std::process::Command::new(interop_tests::coap::COAP_CLIENT);
    cmd.args(["-m", "get", "-s", "30"]).arg(format!(
        "coap://{}:{}/ps/{observed}?clientid={observer_id}",
        gw.host, gw.coap_port
    ));
    // coap-client writes what it receives only when it exits: the observation is seen
    // from the gateway's side.
    let mut observer = Proc::spawn("coap-client observing", cmd);
    let observing = clients_until(
        &gw,
        &format!("/api/v5/subscriptions?clientid={observer_id}"),
        |data| !data.is_empty(),
    );
    assert!(
        !observing.is_empty(),
        "coap-client's observation never arrived"
    );
    // Its retained message's notification acknowledged first.
    std::thread::sleep(Duration::from_millis(300));
    observer.kill();
    mosquitto_pub(&gw, Version::V5, &observed, b"unheard", 1, false, &[]);
    let retried = scrape_until(&gw, |m| {
        labelled(
            m,
            "gateway_listener_coap_retransmissions_total",
            "listener=coap:udp:default",
        ) >= 2.0
    });
    assert!(
        labelled(
            &retried,
            "gateway_listener_coap_retransmissions_total",
            "listener=coap:udp:default"
        ) >= 2.0,
        "{retried}"
    );
    assert!(sample(&retried, "gateway_coap_retransmissions_total") >= 2.0);
}

#[test]
fn a_ban_kicks_out_the_clients_it_names_that_are_connected() {
    let Some((gw, _keys)) = own_gateway_with_keys() else {
        return;
    };
    let subscriber = |id: &str, user: &str| {
        let mut cmd = std::process::Command::new("mosquitto_sub");
        cmd.args(["-h", &gw.host, "-p", &gw.port.to_string(), "-V", "mqttv5"])
            .args(["-i", id, "-u", user, "-t", "admin/ban-kick/#"]);
        Proc::spawn("mosquitto_sub", cmd)
    };
    let eve_id = unique_client_id("eve");
    let bystander_id = unique_client_id("bystander");
    let mut eve = subscriber(&eve_id, "eve");
    let _bystander = subscriber(&bystander_id, "bob");
    let sn_id = unique_client_id("sn-banned");
    let _sn = SnClient::connected(&gw, &sn_id, json!({}));
    clients_until(&gw, "/api/v5/clients?conn_state=connected", |data| {
        data.len() == 3
    });

    let made = http_json(
        &gw,
        "POST",
        "/api/v5/banned",
        KEY,
        &json!({"as": "username", "who": "eve"}),
    );
    assert_eq!(made.status, 200, "{made:?}");
    assert!(eve.wait(TIMEOUT).is_some(), "eve's client still connected");
    assert_eq!(
        http(&gw, "GET", &format!("/api/v5/clients/{eve_id}"), KEY).status,
        404
    );

    let made = http_json(
        &gw,
        "POST",
        "/api/v5/banned",
        KEY,
        &json!({"as": "clientid", "who": sn_id}),
    );
    assert_eq!(made.status, 200, "{made:?}");
    assert_eq!(
        http(
            &gw,
            "GET",
            &format!("/api/v5/gateways/mqttsn/clients/{sn_id}"),
            KEY
        )
        .status,
        404,
        "the MQTT-SN client's session ended"
    );
    // Whom no ban names goes on.
    let bystander_seen = http(&gw, "GET", &format!("/api/v5/clients/{bystander_id}"), KEY);
    assert_eq!(
        bystander_seen.json()["conn_state"],
        "connected",
        "{bystander_seen:?}\n{}",
        gw.log_tail()
    );
}

#[test]
fn a_page_of_another_site_cannot_steer_the_gateway_through_the_operators_browser() {
    // Without keys, on loopback: what a browser visiting a hostile page would send.
    let gw = Broker::start();
    let id = unique_client_id("steered");
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args([
        "-h",
        &gw.host,
        "-p",
        &gw.port.to_string(),
        "-i",
        &id,
        "-t",
        "x",
    ]);
    let _sub = Proc::spawn("mosquitto_sub", cmd);
    clients_until(&gw, &format!("/api/v5/clients?clientid={id}"), |data| {
        !data.is_empty()
    });
    let kick = format!("/api/v5/clients/{id}");
    let own = format!("{}:{}", gw.host, gw.admin_port);
    for (why, headers) in [
        (
            "a form or fetch from another site",
            vec![
                ("Origin", "http://evil.example"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
        ),
        (
            "another origin, an older browser",
            vec![("Origin", "http://evil.example")],
        ),
        ("a sandboxed page", vec![("Origin", "null")]),
        (
            "DNS rebinding: a hostile name resolved to loopback",
            vec![("Host", "evil.example:18083")],
        ),
    ] {
        let reply = interop_tests::admin::http_with_headers(&gw, "DELETE", &kick, &headers);
        assert_eq!(reply.status, 403, "{why}: {reply:?}");
        assert_eq!(reply.json()["code"], "FORBIDDEN", "{why}");
    }
    let rebound = interop_tests::admin::http_with_headers(
        &gw,
        "GET",
        "/api/v5/clients",
        &[("Host", "evil.example:18083")],
    );
    assert_eq!(rebound.status, 403, "DNS rebinding reads nothing");
    // The client is still there; the dashboard's own requests go through.
    let same_origin = interop_tests::admin::http_with_headers(
        &gw,
        "DELETE",
        &kick,
        &[
            ("Origin", &format!("http://{own}")),
            ("Sec-Fetch-Site", "same-origin"),
        ],
    );
    assert_eq!(same_origin.status, 204, "{same_origin:?}");
}
