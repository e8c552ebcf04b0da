//! Requests to devices from the admin HTTP API, on the running binary: a device on
//! lwm2m-node-lib (npm) registers, and curl reads, writes, observes, discovers and
//! executes through EMQX's `/api/v5/gateways/lwm2m/clients/{clientid}/...` paths; the
//! device's answers come back through `lookup` and, as an MQTT application's commands
//! do, on the `up/` topics (mosquitto_sub). Invalid requests are refused before anything
//! reaches the device.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use interop_tests::admin::{http, HttpReply};
use interop_tests::lwm2m::{device, expect_line};
use interop_tests::{unique_client_id, Broker, MosquittoSub, Version, TIMEOUT};
use serde_json::{json, Value};

/// Percent-encodes a query value or path segment (everything but unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn device_path(client_id: &str, operation: &str, query: &str) -> String {
    format!(
        "/api/v5/gateways/lwm2m/clients/{}/{operation}?{query}",
        encode(client_id)
    )
}

fn post(gw: &Broker, client_id: &str, operation: &str, query: &str) -> HttpReply {
    http(gw, "POST", &device_path(client_id, operation, query), None)
}

fn lookup(gw: &Broker, client_id: &str, path: &str, action: &str) -> Value {
    let query = format!("path={}&action={action}", encode(path));
    let reply = http(gw, "GET", &device_path(client_id, "lookup", &query), None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// Polls `lookup` until `done` holds for the result or `TIMEOUT` passes.
fn lookup_until(
    gw: &Broker,
    client_id: &str,
    path: &str,
    action: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let result = lookup(gw, client_id, path, action);
        if done(&result) || Instant::now() > deadline {
            return result;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn answered(result: &Value) -> bool {
    result["code"] != "6.01"
}

/// The next message on the device's `up/` topics, as (topic suffix, JSON).
fn next_event(sub: &mut MosquittoSub, endpoint: &str) -> (String, Value) {
    let msg = sub.recv(TIMEOUT);
    let suffix = msg
        .topic
        .strip_prefix(&format!("lwm2m/{endpoint}/"))
        .unwrap_or_else(|| panic!("unexpected topic {}", msg.topic))
        .to_owned();
    (suffix, serde_json::from_slice(&msg.payload).unwrap())
}

#[test]
fn an_operator_reads_writes_observes_discovers_and_executes_on_a_device() {
    let Some(gw) = Broker::start_gateway_only("an LwM2M listener and the admin API", &[]) else {
        return;
    };
    let endpoint = unique_client_id("downlink-ep");
    let mut sub = MosquittoSub::start(
        &gw,
        Version::V311,
        &[&format!("lwm2m/{endpoint}/up/#")],
        0,
        &[],
    );
    let mut device = device(&gw, &endpoint);
    expect_line(&mut device, "registered");
    let (topic, event) = next_event(&mut sub, &endpoint);
    assert_eq!(
        (topic.as_str(), &event["msgType"]),
        ("up/resp", &json!("register"))
    );

    // Before any answer, EMQX's placeholder.
    assert_eq!(
        lookup(&gw, &endpoint, "/3/0/0", "read"),
        json!({"clientid": endpoint, "path": "/3/0/0", "action": "read",
               "code": "6.01", "codeMsg": "reply_not_received"})
    );

    // Read: 204 at once, the answer in lookup and on the response topic, as a command
    // from MQTT would have it.
    let reply = post(&gw, &endpoint, "read", "path=/3/0/0");
    assert_eq!(reply.status, 204, "{reply:?}");
    let read = lookup_until(&gw, &endpoint, "/3/0/0", "read", answered);
    assert_eq!(
        read,
        json!({"clientid": endpoint, "path": "/3/0/0", "action": "read",
               "code": "2.05", "codeMsg": "content",
               "content": [{"path": "/3/0/0", "value": "Open Mobile Alliance"}]})
    );
    let (topic, published) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/resp");
    assert_eq!(
        published,
        json!({"msgType": "read", "data": {"reqPath": "/3/0/0", "code": "2.05",
               "codeMsg": "content",
               "content": [{"path": "/3/0/0", "value": "Open Mobile Alliance"}]}})
    );

    // Write, then read back what the device stored.
    let reply = post(
        &gw,
        &endpoint,
        "write",
        &format!("path=/3/0/14&type=String&value={}", encode("+05:00")),
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(expect_line(&mut device, "write"), "write /3/0/14 +05:00");
    let written = lookup_until(&gw, &endpoint, "/3/0/14", "write", answered);
    assert_eq!(
        (&written["code"], &written["codeMsg"]),
        (&json!("2.04"), &json!("changed"))
    );
    assert_eq!(post(&gw, &endpoint, "read", "path=/3/0/14").status, 204);
    let read = lookup_until(&gw, &endpoint, "/3/0/14", "read", answered);
    assert_eq!(
        read["content"],
        json!([{"path": "/3/0/14", "value": "+05:00"}])
    );

    // Observe: the first value, then a change as a notification on the notify topic and
    // in lookup.
    assert_eq!(
        post(&gw, &endpoint, "observe", "path=/3303/0/5700&enable=true").status,
        204
    );
    let observed = lookup_until(&gw, &endpoint, "/3303/0/5700", "observe", answered);
    assert_eq!(observed["code"], "2.05", "{observed}");
    assert_eq!(
        observed["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}])
    );
    device.send_line("set /3303/0 5700 30.25");
    let notify = loop {
        let (topic, event) = next_event(&mut sub, &endpoint);
        if topic == "up/notify" {
            break event;
        }
    };
    assert_eq!(notify["msgType"], "notify");
    assert_eq!(
        notify["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 30.25}])
    );
    let observed = lookup_until(&gw, &endpoint, "/3303/0/5700", "observe", |r| {
        r["content"][0]["value"] == 30.25
    });
    assert_eq!(
        observed["content"],
        json!([{"path": "/3303/0/5700", "value": 30.25}])
    );

    // Discover: the links named and typed by the object definitions.
    assert_eq!(post(&gw, &endpoint, "discover", "path=/3/0").status, 204);
    let discovered = lookup_until(&gw, &endpoint, "/3/0", "discover", answered);
    assert_eq!(discovered["code"], "2.05", "{discovered}");
    let resources = discovered["content"].as_array().unwrap();
    assert!(
        resources.contains(&json!({"path": "/3/0/0", "name": "Manufacturer",
                                    "operations": "R", "dataType": "String"})),
        "{discovered}"
    );
    assert!(
        resources.contains(&json!({"path": "/3/0/14", "name": "UTC Offset",
                                    "operations": "RW", "dataType": "String"})),
        "{discovered}"
    );

    // Execute: the device runs it with the arguments; lookup has its code.
    assert_eq!(
        post(&gw, &endpoint, "execute", "path=/3/0/4&args=now").status,
        204
    );
    assert_eq!(expect_line(&mut device, "execute"), "execute /3/0/4 now");
    let executed = lookup_until(&gw, &endpoint, "/3/0/4", "execute", answered);
    assert_eq!(
        (&executed["code"], &executed["codeMsg"]),
        (&json!("2.04"), &json!("changed"))
    );

    // Refused before anything is sent: every one of these is answered 400 BAD_REQUEST,
    // and the device sees none of them (its next write is the valid one below).
    let long = "9".repeat(5000);
    for (operation, query) in [
        ("read", "path=/3/%2B/0".to_owned()),
        ("read", "path=/3/%23".to_owned()),
        ("read", "path=/3/../0".to_owned()),
        ("read", "path=/3/0/0/0/0".to_owned()),
        ("read", "path=/70000/0/0".to_owned()),
        ("read", "path=/3/0/99999999999999999999999".to_owned()),
        ("read", "path=3/0/0".to_owned()),
        ("read", "path=/3/0/0%3Fpmin=1".to_owned()),
        ("read", "path=".to_owned()),
        ("read", format!("path=/{}", "3/".repeat(40))),
        ("read", "path=/3/0/0&extra=1".to_owned()),
        ("write", "path=/3/0/14&type=Integer&value=x".to_owned()),
        ("write", "path=/3/0/14&type=Integer&value=1.5".to_owned()),
        (
            "write",
            "path=/3/0/14&type=Integer&value=99999999999999999999".to_owned(),
        ),
        ("write", "path=/3/0/14&type=Float&value=warm".to_owned()),
        ("write", "path=/3/0/14&type=Boolean&value=maybe".to_owned()),
        ("write", "path=/3/0/14&type=Objlnk&value=1".to_owned()),
        ("write", "path=/3/0/14&type=Opaque&value=%21%21".to_owned()),
        ("write", "path=/3/0/14&type=Blob&value=1".to_owned()),
        ("write", "path=/3/0&type=String&value=x".to_owned()),
        ("write", "path=/3/0/14&type=String".to_owned()),
        ("write", format!("path=/3/0/14&type=String&value={long}")),
        ("execute", "path=/3/0".to_owned()),
        ("execute", "path=/3/0/4/1".to_owned()),
        ("execute", format!("path=/3/0/4&args={long}")),
        ("observe", "path=/3/0/0&enable=perhaps".to_owned()),
        ("observe", "path=/3/*/0&enable=true".to_owned()),
    ] {
        let reply = post(&gw, &endpoint, operation, &query);
        assert_eq!(reply.status, 400, "{operation}?{query}: {reply:?}");
        assert_eq!(reply.json()["code"], "BAD_REQUEST", "{operation}?{query}");
    }
    for query in [
        "path=/3/0/0&action=fly",
        "path=/3/x&action=read",
        "action=read",
    ] {
        let reply = http(&gw, "GET", &device_path(&endpoint, "lookup", query), None);
        assert_eq!(reply.status, 400, "{query}: {reply:?}");
    }
    let reply = post(
        &gw,
        &endpoint,
        "write",
        &format!("path=/3/0/14&type=String&value={}", encode("-03:00")),
    );
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(expect_line(&mut device, "write"), "write /3/0/14 -03:00");

    // Clients that are not registered devices: 404, whatever their id holds.
    for client_id in [
        "no-such-device",
        "a/b",
        "a+b",
        "#",
        &format!("{endpoint}/"),
        &format!("+/{endpoint}"),
    ] {
        for operation in ["read", "lookup"] {
            let method = if operation == "read" { "POST" } else { "GET" };
            let path = device_path(client_id, operation, "path=/3/0/0&action=read");
            let path = if operation == "read" {
                device_path(client_id, operation, "path=/3/0/0")
            } else {
                path
            };
            let reply = http(&gw, method, &path, None);
            assert_eq!(reply.status, 404, "{client_id} {operation}: {reply:?}");
            assert_eq!(reply.json()["code"], "CLIENT_NOT_FOUND");
        }
    }

    // Once it de-registers, the device is gone for the API too.
    device.send_line("deregister");
    expect_line(&mut device, "deregistered");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = post(&gw, &endpoint, "read", "path=/3/0/0");
        if reply.status == 404 {
            assert_eq!(reply.json()["code"], "CLIENT_NOT_FOUND");
            break;
        }
        assert!(Instant::now() < deadline, "still reachable: {reply:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
