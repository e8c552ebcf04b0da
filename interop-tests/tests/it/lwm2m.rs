//! LwM2M over real UDP: devices on two LwM2M client libraries from npm, lwm2m-node-lib
//! and coap-node, register with the built gateway and are managed with EMQX-style JSON
//! commands published by mosquitto_pub; their answers, notifications and registration
//! events are read by mosquitto_sub on the `up/` topics. A reporting-only LwM2M 1.1 device
//! on aiocoap sends SenML encoded by cbor2.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::process::Command;
use std::time::Duration;

use interop_tests::broker::workspace_root;
use interop_tests::lwm2m::{device, expect_line, next_event, node_device};
use interop_tests::process::Proc;
use interop_tests::{mosquitto_pub, unique_client_id, Broker, MosquittoSub, Setting, Version};
use serde_json::{json, Value};

fn command(broker: &Broker, endpoint: &str, body: Value) {
    mosquitto_pub(
        broker,
        Version::V311,
        &format!("lwm2m/{endpoint}/dn/cmd"),
        body.to_string().as_bytes(),
        0,
        false,
        &[],
    );
}

/// Sends `body` and returns the response published for it.
fn ask(broker: &Broker, sub: &mut MosquittoSub, endpoint: &str, body: Value) -> Value {
    command(broker, endpoint, body);
    let (topic, json) = next_event(sub, endpoint);
    assert_eq!(topic, "up/resp", "{json}");
    json
}

#[test]
fn lwm2m_node_lib_device_registers_and_is_read_written_executed_and_observed() {
    let broker = Broker::start();
    let endpoint = unique_client_id("lwm2m-ep");
    let mut sub = MosquittoSub::start(
        &broker,
        Version::V311,
        &[&format!("lwm2m/{endpoint}/up/#")],
        0,
        &[],
    );
    let mut device = device(&broker, &endpoint);
    let registered = expect_line(&mut device, "registered");
    assert_eq!(registered, format!("registered rd/{endpoint}"));

    let (topic, event) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/resp");
    assert_eq!(event["msgType"], "register");
    assert_eq!(event["data"]["ep"], endpoint.as_str());
    assert_eq!(event["data"]["lt"], 60);
    assert_eq!(event["data"]["lwm2m"], "1.0");
    assert_eq!(event["data"]["alternatePath"], "/");
    assert_eq!(event["data"]["objectList"], json!(["/3/0", "/3303/0"]));

    // Read: a String and a Float, typed by the object definitions.
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/0"}}),
    );
    assert_eq!(
        read,
        json!({"reqID": 1, "msgType": "read", "data": {
            "reqPath": "/3/0/0", "code": "2.05", "codeMsg": "content",
            "content": [{"path": "/3/0/0", "value": "Open Mobile Alliance"}]}})
    );
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 2, "msgType": "read", "data": {"path": "/3303/0/5700"}}),
    );
    assert_eq!(
        read["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}])
    );

    // Write, then read back what the device stored.
    let write = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 3, "msgType": "write",
               "data": {"path": "/3/0/14", "type": "String", "value": "+05:00"}}),
    );
    assert_eq!(
        write,
        json!({"reqID": 3, "msgType": "write", "data": {
            "reqPath": "/3/0/14", "code": "2.04", "codeMsg": "changed"}})
    );
    assert_eq!(expect_line(&mut device, "write"), "write /3/0/14 +05:00");
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 4, "msgType": "read", "data": {"path": "/3/0/14"}}),
    );
    assert_eq!(
        read["data"]["content"],
        json!([{"path": "/3/0/14", "value": "+05:00"}])
    );

    // Execute and discover.
    let execute = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 5, "msgType": "execute", "data": {"path": "/3/0/4", "args": "now"}}),
    );
    assert_eq!(execute["data"]["code"], "2.04", "{execute}");
    assert_eq!(expect_line(&mut device, "execute"), "execute /3/0/4 now");
    let discover = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 6, "msgType": "discover", "data": {"path": "/3/0"}}),
    );
    assert_eq!(discover["data"]["code"], "2.05", "{discover}");
    let links = discover["data"]["content"].as_array().unwrap();
    assert!(links.contains(&json!("</3/0/0>")), "{discover}");

    // An invalid command is answered 4.00 with its fields echoed.
    let invalid = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 7, "msgType": "write",
               "data": {"path": "/3/0/14", "type": "Integer", "value": "x"}}),
    );
    assert_eq!(invalid["reqID"], 7);
    assert_eq!(invalid["data"]["code"], "4.00");
    assert_eq!(invalid["data"]["codeMsg"], "bad_request");

    // Observe, then a changed value arrives as a notification.
    let observe = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 8, "msgType": "observe", "data": {"path": "/3303/0/5700"}}),
    );
    assert_eq!(observe["data"]["code"], "2.05", "{observe}");
    assert_eq!(
        observe["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}])
    );
    device.send_line("set /3303/0 5700 30.25");
    let (topic, notify) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/notify", "{notify}");
    assert_eq!(notify["msgType"], "notify");
    assert_eq!(notify["reqID"], 8);
    assert!(notify["seqNum"].as_u64().is_some(), "{notify}");
    assert_eq!(
        notify["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 30.25}])
    );

    // An update (from a new source port, as this client sends it) is published.
    device.send_line("update");
    expect_line(&mut device, "updated");
    let (topic, update) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/update", "{update}");
    assert_eq!(update["msgType"], "update");
    assert_eq!(update["data"]["ep"], endpoint.as_str());

    // The device is still reachable at its new address.
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 9, "msgType": "read", "data": {"path": "/3/0/9"}}),
    );
    assert_eq!(
        read["data"]["content"],
        json!([{"path": "/3/0/9", "value": 87}])
    );

    device.send_line("deregister");
    expect_line(&mut device, "deregistered");
    // Commands to a de-registered device go nowhere.
    command(
        &broker,
        &endpoint,
        json!({"reqID": 10, "msgType": "read", "data": {"path": "/3/0/0"}}),
    );
    assert!(sub.try_recv(Duration::from_millis(500)).is_none());
}

/// coap-node answers reads and observations in TLV and takes create, delete,
/// write-attributes and cancel-observe, the commands lwm2m-node-lib lacks.
#[test]
fn coap_node_device_answers_in_tlv_and_is_created_deleted_attributed_and_cancelled() {
    // coap-node never answers a create or a delete (it acknowledges them empty, then
    // forgets to respond), so the gateway waits for a separate response only briefly.
    let Some(broker) = Broker::start_gateway_only(
        "an LwM2M listener with short CoAP timeouts",
        &[
            Setting::new("GATEWAY_GATEWAY__LWM2M__ACK_TIMEOUT", "250ms"),
            Setting::new("GATEWAY_GATEWAY__LWM2M__MAX_RETRANSMIT", "2"),
        ],
    ) else {
        return;
    };
    let endpoint = unique_client_id("coap-node-ep");
    let mut sub = MosquittoSub::start(
        &broker,
        Version::V311,
        &[&format!("lwm2m/{endpoint}/up/#")],
        0,
        &[],
    );
    let mut device = node_device(&broker, &endpoint, "coap-node", "lwm2m_coap_node.js", None);
    assert_eq!(expect_line(&mut device, "registered"), "registered 2.01");
    let (topic, event) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/resp");
    assert_eq!(event["msgType"], "register");
    // `</>;ct=11543;hb` describes the client, not an object.
    assert_eq!(
        event["data"]["objectList"],
        json!(["/3/0", "/4/0", "/3303/0", "/3311/0"])
    );

    // A whole instance read as TLV, typed by the definitions.
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 1, "msgType": "read", "data": {"path": "/3303/0"}}),
    );
    assert_eq!(
        read,
        json!({"reqID": 1, "msgType": "read", "data": {
            "reqPath": "/3303/0", "code": "2.05", "codeMsg": "content",
            "content": [{"path": "/3303/0/5700", "value": 21.5},
                        {"path": "/3303/0/5701", "value": "Cel"}]}})
    );

    // Write-attr, seen by the device in what it discovers.
    let attrs = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 2, "msgType": "write-attr",
               "data": {"path": "/3303/0/5700", "pmin": "1", "pmax": "30"}}),
    );
    assert_eq!(
        attrs,
        json!({"reqID": 2, "msgType": "write-attr", "data": {
            "reqPath": "/3303/0/5700", "code": "2.04", "codeMsg": "changed"}})
    );
    let discover = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 3, "msgType": "discover", "data": {"path": "/3303/0/5700"}}),
    );
    assert_eq!(
        discover["data"]["content"],
        json!(["</3303/0/5700>;pmin=1;pmax=30"])
    );

    // Observe (TLV answers and notifications), then cancel: no more notifications.
    let observe = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 4, "msgType": "observe", "data": {"path": "/3303/0/5700"}}),
    );
    assert_eq!(
        observe["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 21.5}])
    );
    device.send_line("set 3303 0 5700 30.25");
    let (topic, notify) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/notify", "{notify}");
    assert_eq!(notify["msgType"], "notify");
    assert_eq!(notify["reqID"], 4);
    assert!(notify["seqNum"].as_u64().is_some(), "{notify}");
    assert_eq!(
        notify["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 30.25}])
    );
    let cancel = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 5, "msgType": "cancel-observe", "data": {"path": "/3303/0/5700"}}),
    );
    assert_eq!(
        cancel,
        json!({"reqID": 5, "msgType": "cancel-observe", "data": {
            "reqPath": "/3303/0/5700", "code": "2.05", "codeMsg": "content"}})
    );
    device.send_line("set 3303 0 5700 31.5");
    expect_line(&mut device, "set done");
    assert!(sub.try_recv(Duration::from_millis(500)).is_none());

    // Create: the instance arrives as TLV and the device makes it (read back below), but
    // answers only with an empty ACK: `ack`, then `coap_timeout` once the separate
    // response is overdue.
    let create = json!({"reqID": 6, "msgType": "create", "data": {"basePath": "/3303",
        "content": [{"path": "/3303/1/5700", "type": "Float", "value": 20.5},
                    {"path": "/3303/1/5701", "type": "String", "value": "Cel"}]}});
    let ack = ask(&broker, &mut sub, &endpoint, create.clone());
    let mut expected = create.clone();
    expected["msgType"] = json!("ack");
    assert_eq!(ack, expected);
    let (topic, timeout) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/resp");
    expected["msgType"] = json!("coap_timeout");
    assert_eq!(timeout, expected);
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 7, "msgType": "read", "data": {"path": "/3303/1"}}),
    );
    assert_eq!(
        read["data"]["content"],
        json!([{"path": "/3303/1/5700", "value": 20.5},
               {"path": "/3303/1/5701", "value": "Cel"}])
    );

    // Delete, the same way; the instance is gone afterwards.
    let delete = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 8, "msgType": "delete", "data": {"path": "/3303/1"}}),
    );
    assert_eq!(delete["msgType"], "ack", "{delete}");
    let (_, timeout) = next_event(&mut sub, &endpoint);
    assert_eq!(timeout["msgType"], "coap_timeout", "{timeout}");
    let gone = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 9, "msgType": "read", "data": {"path": "/3303/1"}}),
    );
    assert_eq!(
        gone,
        json!({"reqID": 9, "msgType": "read", "data": {
            "reqPath": "/3303/1", "code": "4.04", "codeMsg": "not_found"}})
    );

    // A batch write naming one resource goes as a TLV resource; a hex write as text.
    let batch = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 10, "msgType": "write", "data": {"basePath": "/3311/0/5851",
               "content": [{"path": "/3311/0/5851", "type": "Integer", "value": "60"}]}}),
    );
    assert_eq!(batch["data"]["code"], "2.04", "{batch}");
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 11, "msgType": "read", "data": {"path": "/3311/0/5851"}}),
    );
    assert_eq!(
        read["data"]["content"],
        json!([{"path": "/3311/0/5851", "value": 60}])
    );
    let hex = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 12, "msgType": "write", "encoding": "hex",
               "data": {"path": "/3311/0/5851", "type": "Integer", "value": "0050"}}),
    );
    assert_eq!(hex["data"]["code"], "2.04", "{hex}");
    let read = ask(
        &broker,
        &mut sub,
        &endpoint,
        json!({"reqID": 13, "msgType": "read", "data": {"path": "/3311/0"}}),
    );
    assert_eq!(
        read["data"]["content"],
        json!([{"path": "/3311/0/5850", "value": true},
               {"path": "/3311/0/5851", "value": 80}])
    );
}

/// LwM2M 1.1 Send from a device on aiocoap whose SenML CBOR is written by cbor2 (in
/// canonical form: half-precision floats, `bn` after `n`), then SenML JSON.
#[test]
fn lwm2m_1_1_send_in_senml_cbor_and_json_is_published_on_the_notify_topic() {
    let broker = Broker::start();
    let endpoint = unique_client_id("lwm2m-send");
    let mut sub = MosquittoSub::start(
        &broker,
        Version::V311,
        &[&format!("lwm2m/{endpoint}/up/#")],
        0,
        &[],
    );
    let python = interop_tests::tools::python();
    let mut cmd = Command::new(python);
    cmd.arg(workspace_root().join("interop-tests/py/lwm2m_send.py"))
        .arg(&broker.host)
        .arg(broker.lwm2m_port.to_string())
        .arg(&endpoint);
    let mut device = Proc::spawn("aiocoap LwM2M 1.1 device", cmd);
    assert_eq!(
        expect_line(&mut device, "register"),
        format!("register 2.01 rd/{endpoint}")
    );
    let (topic, event) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/resp");
    assert_eq!(event["data"]["lwm2m"], "1.1");
    assert_eq!(event["data"]["objectList"], json!(["/3303/0"]));

    assert_eq!(expect_line(&mut device, "send-cbor"), "send-cbor 2.04");
    let (topic, send) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/notify", "{send}");
    assert_eq!(
        send,
        json!({"msgType": "send", "data": {"reqPath": "/dp", "code": "2.04", "codeMsg": "changed",
               "content": [{"path": "/3303/0/5700", "value": 21.5},
                           {"path": "/3303/0/5701", "value": "Cel"}]}})
    );
    assert_eq!(expect_line(&mut device, "send-json"), "send-json 2.04");
    let (topic, send) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/notify", "{send}");
    assert_eq!(
        send["data"]["content"],
        json!([{"path": "/3303/0/5700", "value": 30.25}])
    );
    assert_eq!(expect_line(&mut device, "deregister"), "deregister 2.02");
}

/// A device on aiocoap registering with link format that splitting on `,` misreads (a
/// quoted `,` and `;`, an escaped quote, LwM2M 1.1's root with a list of content formats,
/// whitespace), then sending an object list that is not link format in an update and in a
/// new registration: both refused 4.00, nothing published, the registration kept.
#[test]
fn an_aiocoap_device_s_link_format_is_read_whole_and_a_malformed_one_refused_4_00() {
    let broker = Broker::start();
    let endpoint = unique_client_id("lwm2m-links");
    let mut sub = MosquittoSub::start(
        &broker,
        Version::V311,
        &[&format!("lwm2m/{endpoint}/up/#")],
        0,
        &[],
    );
    let good = r#"</>;rt="oma.lwm2m";ct="60 110 112 11542 11543", </1/0>;title="a,</9/0>;b",</3/0>;title="say \"hi\", ok""#;
    let bad = r#"</3/0>;title="a,b"#;
    let update = "</3/0>,\r\n</3303/0>;pmin=10";
    let python = interop_tests::tools::python();
    let mut cmd = Command::new(python);
    cmd.arg(workspace_root().join("interop-tests/py/lwm2m_register.py"))
        .arg(&broker.host)
        .arg(broker.lwm2m_port.to_string())
        .arg(&endpoint)
        .args([good, bad, update]);
    let mut device = Proc::spawn("aiocoap LwM2M 1.1 device", cmd);
    assert_eq!(
        expect_line(&mut device, "register"),
        format!("register 2.01 rd/{endpoint}")
    );
    let (topic, event) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/resp");
    assert_eq!(event["data"]["alternatePath"], "/", "{event}");
    assert_eq!(
        event["data"]["objectList"],
        json!(["/1/0", "/3/0"]),
        "{event}"
    );

    assert_eq!(expect_line(&mut device, "update-bad"), "update-bad 4.00");
    assert_eq!(
        expect_line(&mut device, "register-bad"),
        "register-bad 4.00"
    );
    assert_eq!(expect_line(&mut device, "update"), "update 2.04");
    // The next event is the good update's: the refused ones published nothing.
    let (topic, event) = next_event(&mut sub, &endpoint);
    assert_eq!(topic, "up/update", "{event}");
    assert_eq!(
        event["data"]["objectList"],
        json!(["/3/0", "/3303/0"]),
        "{event}"
    );
    assert_eq!(event["data"]["lwm2m"], "1.1", "{event}");
    assert_eq!(expect_line(&mut device, "deregister"), "deregister 2.02");
}
