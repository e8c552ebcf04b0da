//! Maximum packet size. Needs a configured broker: against an external one it runs
//! only when told the broker's limit in GATEWAY_TEST_MAX_PACKET_SIZE.

use serde_json::json;

use interop_tests::{
    to_hex, unique_client_id, unique_topic, Broker, Lib, ScriptClient, Setting, Version, TIMEOUT,
};

const MAX_PACKET_SIZE: &str = "GATEWAY_MQTT__MAX_PACKET_SIZE";

#[test]
fn oversized_publish_disconnects_only_its_sender_and_v5_clients_see_the_limit_in_connack() {
    let Some(broker) = Broker::start_with(&[
        Setting::new(MAX_PACKET_SIZE, "1024").or_external("GATEWAY_TEST_MAX_PACKET_SIZE")
    ]) else {
        return;
    };
    let limit: usize = broker
        .value(MAX_PACKET_SIZE)
        .parse()
        .expect("a packet size");
    let prefix = unique_topic("oversize");
    let topic = format!("{prefix}/data");
    let mut bystander = ScriptClient::spawn(Lib::Paho, Version::V5, &broker);
    let ack = bystander.connect_ok(json!({ "client_id": unique_client_id("bystander") }));
    assert_eq!(
        ack.props["maximum_packet_size"], limit,
        "CONNACK Maximum Packet Size"
    );
    bystander.subscribe(&topic, 1);

    for version in [Version::V311, Version::V5] {
        for lib in Lib::ALL {
            let what = format!("{lib:?} {version:?}");
            let mut big = ScriptClient::spawn(lib, version, &broker);
            let ack = big.connect_ok(json!({ "client_id": unique_client_id("big") }));
            if version.is_v5() {
                assert_eq!(
                    ack.props["maximum_packet_size"], limit,
                    "{what}: CONNACK Maximum Packet Size"
                );
            }
            // The payload alone is about twice the limit. Not awaited: the broker is
            // expected to drop the connection instead of acknowledging.
            let payload = vec![0x5a; 2 * limit - 48];
            big.publish_with(
                json!({ "topic": topic, "payload": to_hex(&payload), "qos": 1, "wait": false }),
            );
            let end = big.expect_one_of(&["server_disconnect", "connection_lost"], TIMEOUT);
            if end["event"] == "server_disconnect" {
                assert_eq!(
                    end["reason_code"], 0x95,
                    "{what}: DISCONNECT reason (0x95 packet too large)"
                );
            }

            // The bystander is unaffected, and never saw the oversized message.
            let probe = format!("still fine after {what}");
            ScriptClient::connected(Lib::MqttJs, version, &broker, &unique_client_id("probe"))
                .publish(&topic, probe.as_bytes(), 1, false);
            let msg = bystander.recv(TIMEOUT);
            assert_eq!(
                msg.payload,
                probe.as_bytes(),
                "{what}: the bystander got something else first (size {})",
                msg.payload.len()
            );
        }
    }
}
