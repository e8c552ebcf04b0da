//! Requests to devices from the admin HTTP API, on the running binary: a device on
//! lwm2m-node-lib (npm) registers, and curl reads, writes, observes, discovers and
//! executes through EMQX's `/api/v5/gateways/lwm2m/clients/{clientid}/...` paths; the
//! device's answers come back through `lookup` and, as an MQTT application's commands
//! do, on the `up/` topics (mosquitto_sub). A CoAP device on aiocoap, connected in
//! connection mode from the socket it serves its resources on, answers the requests
//! curl sends it through EMQX's `/api/v5/gateways/coap/clients/{clientid}/request`.
//! Invalid requests are refused before anything reaches a device.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use interop_tests::admin::{http, http_json, HttpReply};
use interop_tests::lwm2m::{device, expect_line, next_event};
use interop_tests::process::Proc;
use interop_tests::{unique_client_id, Broker, MosquittoSub, Setting, Version, TIMEOUT};
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

#[test]
fn an_operator_reads_writes_observes_discovers_and_executes_on_a_device() {
    let gw = Broker::start();
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

/// A CoAP device on aiocoap that opened a connection (connection mode) from the socket
/// its resources are served on (`py/coap_connected_server.py`).
fn connected_coap_device(gw: &Broker, client_id: &str) -> Proc {
    let python = interop_tests::tools::python();
    let mut cmd = std::process::Command::new(python);
    cmd.arg(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/coap_connected_server.py"),
    )
    .arg(&gw.host)
    .arg(gw.coap_port.to_string())
    .arg(client_id);
    let mut device = Proc::spawn("aiocoap device in connection mode", cmd);
    expect_line(&mut device, "connected");
    device
}

fn coap_request(gw: &Broker, client_id: &str, body: &Value) -> HttpReply {
    http_json(
        gw,
        "POST",
        &format!(
            "/api/v5/gateways/coap/clients/{}/request",
            encode(client_id)
        ),
        None,
        body,
    )
}

/// A CoAP response as an attacker on another port sends it: `kind` 0 (CON) or 1 (NON),
/// 2.05 Content, the given token and payload.
fn forged_response(kind: u8, token: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut datagram = vec![0x40 | (kind << 4) | token.len() as u8, 0x45, 0x12, 0x34];
    datagram.extend_from_slice(token);
    datagram.push(0xFF);
    datagram.extend_from_slice(payload);
    datagram
}

#[test]
fn an_operator_requests_a_resource_of_a_coap_client_in_connection_mode() {
    // A request the client acknowledges and never answers counts against its limit for
    // MAX_TRANSMIT_WAIT after the acknowledgement: 2 s x 1.5 x (2^3 - 1) = 21 s here,
    // long enough for the limit's test below on a loaded machine, short enough to see it
    // end.
    let Some(gw) = Broker::start_gateway_only(
        "a CoAP listener in connection mode and the admin API",
        &[
            Setting::new("GATEWAY_GATEWAY__COAP__CONNECTION_REQUIRED", "true"),
            Setting::new("GATEWAY_GATEWAY__COAP__ACK_TIMEOUT", "2s"),
            Setting::new("GATEWAY_GATEWAY__COAP__MAX_RETRANSMIT", "2"),
        ],
    ) else {
        return;
    };
    let client_id = unique_client_id("coap-served");
    let mut device = connected_coap_device(&gw, &client_id);

    // A GET of the client's resource: its response comes back in the HTTP answer.
    let reply = coap_request(
        &gw,
        &client_id,
        &json!({"method": "get", "path": "sensor", "timeout": "5s", "content_type": "text/plain"}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer = reply.json();
    assert_eq!(answer["method"], "{ok,content}", "{answer}");
    assert_eq!(answer["code"], "2.05");
    assert_eq!(answer["payload"], "22.5");
    assert!(answer["id"].as_u64().is_some(), "{answer}");
    assert_eq!(expect_line(&mut device, "served"), "served GET sensor ");

    // PUT with a payload and the operator's token, echoed; octet-stream both ways base64.
    let reply = coap_request(
        &gw,
        &client_id,
        &json!({"token": "op-1", "method": "put", "path": "/sensor", "timeout": "5s",
                "content_type": "text/plain", "payload": "hello"}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let answer = reply.json();
    assert_eq!(
        (
            &answer["token"],
            &answer["code"],
            &answer["method"],
            &answer["payload"]
        ),
        (
            &json!("op-1"),
            &json!("2.04"),
            &json!("{ok,changed}"),
            &json!("hello")
        )
    );
    assert_eq!(
        expect_line(&mut device, "served"),
        "served PUT sensor hello"
    );
    let reply = coap_request(
        &gw,
        &client_id,
        &json!({"method": "post", "path": "sensor", "timeout": "5s",
                "content_type": "application/octet-stream", "payload": "AAEC/w=="}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["payload"], "AAEC/w==");
    expect_line(&mut device, "served POST");

    // A resource the client does not have: its 4.04, as the answer.
    let reply = coap_request(
        &gw,
        &client_id,
        &json!({"path": "nowhere", "timeout": "5s"}),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        (&reply.json()["code"], &reply.json()["method"]),
        (&json!("4.04"), &json!("{error,not_found}"))
    );

    // A separate response (acknowledged first, answered 2 s later), while an attacker on
    // another port sends responses with the same token: only the client's own counts.
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            coap_request(
                &gw,
                &client_id,
                &json!({"token": "spoof1", "path": "slow", "timeout": "8s"}),
            )
        });
        expect_line(&mut device, "served GET slow");
        let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for kind in [0, 1] {
            attacker
                .send_to(
                    &forged_response(kind, b"spoof1", b"forged"),
                    (gw.host.as_str(), gw.coap_port),
                )
                .unwrap();
        }
        let started = Instant::now();
        let reply = slow.join().unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.json()["payload"], "late", "{reply:?}");
        assert!(started.elapsed() >= Duration::from_millis(500));
    });

    // A client that acknowledges and never answers: EMQX's 504 at the timeout.
    let started = Instant::now();
    let reply = coap_request(&gw, &client_id, &json!({"path": "silent", "timeout": "1s"}));
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.json()["code"], "CLIENT_NOT_RESPONSE");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    expect_line(&mut device, "served GET silent");

    // Refused before anything is sent.
    for body in [
        json!({"path": "sensor", "timeout": "soon"}),
        json!({"path": "sensor", "timeout": "0s"}),
        json!({"path": "sensor", "timeout": "5h"}),
        json!({"path": "sensor", "token": "123456789"}),
        json!({"path": "sensor", "method": "patch"}),
        json!({"path": "../sensor"}),
        json!({"path": "x".repeat(300)}),
        json!({"path": "sensor", "payload": "p".repeat(2000)}),
        json!({"path": "sensor", "content_type": "application/octet-stream", "payload": "!!"}),
        json!({"path": "sensor", "content_type": "image/png"}),
        json!({"path": "sensor", "extra": 1}),
    ] {
        let reply = coap_request(&gw, &client_id, &body);
        assert_eq!(reply.status, 400, "{body}: {reply:?}");
        assert_eq!(reply.json()["code"], "BAD_REQUEST", "{body}");
    }

    // Clients that are not connected here: 404, whatever their id holds.
    for other in ["no-such-client", "a/b", "a+b", "#"] {
        let reply = coap_request(&gw, other, &json!({"path": "sensor"}));
        assert_eq!(reply.status, 404, "{other}: {reply:?}");
        assert_eq!(reply.json()["code"], "CLIENT_NOT_FOUND");
    }

    // At most 4 requests per client wait or are in flight (the silent one above still
    // is): the fifth is refused 429, and once given up on, they free their places.
    std::thread::scope(|scope| {
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    coap_request(&gw, &client_id, &json!({"path": "silent", "timeout": "3s"}))
                })
            })
            .collect();
        for _ in 0..3 {
            expect_line(&mut device, "served GET silent");
        }
        let reply = coap_request(&gw, &client_id, &json!({"path": "sensor", "timeout": "3s"}));
        assert_eq!(reply.status, 429, "{reply:?}");
        assert_eq!(reply.json()["code"], "TOO_MANY_REQUESTS");
        for request in waiting {
            assert_eq!(request.join().unwrap().status, 504);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = coap_request(&gw, &client_id, &json!({"path": "sensor", "timeout": "3s"}));
        if reply.status == 200 {
            assert_eq!(reply.json()["payload"], "22.5");
            break;
        }
        assert_eq!(reply.status, 429, "{reply:?}");
        assert!(Instant::now() < deadline, "the limit never freed");
        std::thread::sleep(Duration::from_millis(500));
    }
}
