//! Flapping detection against reference clients: a client id that connects more often than
//! `flapping_detect.max_count` within the window is refused for the ban time, by every
//! adapter the same way, in its own terms, while other client ids go on.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::process::{Command, Output};

use interop_tests::{coap_client, unique_client_id, unique_topic, Broker, Setting};

const MAX_COUNT: usize = 3;

fn gateway() -> Option<Broker> {
    Broker::start_gateway_only(
        "flapping detection on",
        &[
            Setting::new("GATEWAY_FLAPPING_DETECT__ENABLE", "true"),
            Setting::new("GATEWAY_FLAPPING_DETECT__MAX_COUNT", MAX_COUNT.to_string()),
        ],
    )
}

fn mosquitto_pub(broker: &Broker, client_id: &str, topic: &str) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", &broker.host, "-p", &broker.port.to_string()])
        .args(["-V", "mqttv5", "-i", client_id, "-t", topic, "-m", "hello"])
        .output()
        .expect("run mosquitto_pub")
}

#[test]
fn an_mqtt_client_id_connecting_too_often_gets_connack_banned() {
    let Some(broker) = gateway() else { return };
    let id = unique_client_id("flap");
    let topic = unique_topic("flapping");
    for attempt in 0..MAX_COUNT {
        let output = mosquitto_pub(&broker, &id, &topic);
        assert!(
            output.status.success(),
            "connection {attempt} is within the limit: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let refused = mosquitto_pub(&broker, &id, &topic);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "one connection too many");
    assert!(stderr.contains("Banned"), "CONNACK 0x8A (Banned): {stderr}");
    // Another client id is not concerned.
    let other = mosquitto_pub(&broker, &unique_client_id("calm"), &topic);
    assert!(other.status.success());
    assert!(
        broker.log_tail().contains("flapping: client id banned"),
        "the ban is logged once"
    );
}

#[test]
fn a_coap_client_id_connecting_too_often_gets_4_29_with_max_age() {
    let Some(broker) = Broker::start_gateway_only(
        "flapping detection on, CoAP in connection mode",
        &[
            Setting::new("GATEWAY_FLAPPING_DETECT__ENABLE", "true"),
            Setting::new("GATEWAY_FLAPPING_DETECT__MAX_COUNT", MAX_COUNT.to_string()),
            Setting::new("GATEWAY_GATEWAY__COAP__CONNECTION_REQUIRED", "true"),
        ],
    ) else {
        return;
    };
    let id = unique_client_id("coapflap");
    // Each coap-client run opens a connection (POST /mqtt/connection) from a new UDP port.
    let path = format!("/mqtt/connection?clientid={id}");
    for attempt in 0..MAX_COUNT {
        let (ok, stdout, stderr) = coap_client(&broker, &["-m", "post", "-v", "7"], &path);
        assert!(
            ok && stdout.contains("c:2.01"),
            "attempt {attempt}: {stdout} {stderr}"
        );
    }
    let (_, stdout, stderr) = coap_client(&broker, &["-m", "post", "-v", "7"], &path);
    let said = format!("{stdout}\n{stderr}");
    assert!(said.contains("c:4.29"), "Too Many Requests: {said}");
    assert!(said.contains("Max-Age"), "with when to retry: {said}");
    assert!(said.contains("banned"), "with the reason: {said}");
}
