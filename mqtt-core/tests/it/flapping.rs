#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Flapping detection in the session layer: every adapter opens sessions through it, so a
//! client id that connects too often is refused whatever it speaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_core::auth::Auth;
use mqtt_core::broker::Broker;
use mqtt_core::client::ConnectRefused;
use mqtt_core::session::ConnControl;
use mqtt_core::testing::{
    broker_on_config, default_config, open_session, open_session_on, NoWakeup,
};

fn flapping_broker(max_count: u32, now: Instant) -> Arc<Broker> {
    let mut config = default_config();
    config.flapping_detect.enable = true;
    config.flapping_detect.max_count = max_count;
    Arc::new(
        broker_on_config(&config, Auth::allow_all(), now)
            .with_flapping_detect(&config.flapping_detect),
    )
}

fn connect(broker: &Arc<Broker>, client_id: &str, now: Instant) -> Result<(), ConnectRefused> {
    let client = open_session(broker, "mqtt", client_id, true, 0, Arc::new(NoWakeup), now)?;
    client.close(mqtt_core::broker::WillDisposition::Discard, now);
    Ok(())
}

#[test]
fn a_client_id_connecting_too_often_is_refused_as_banned() {
    let start = Instant::now();
    let broker = flapping_broker(3, start);
    for n in 0..3 {
        connect(&broker, "dev", start + Duration::from_secs(n)).unwrap();
    }
    let refused = connect(&broker, "dev", start + Duration::from_secs(3)).unwrap_err();
    assert!(matches!(refused, ConnectRefused::Banned(_)), "{refused:?}");
    assert_eq!(refused.mqtt5_reason_code().0, 0x8A);
    connect(&broker, "neighbour", start + Duration::from_secs(3)).unwrap();
    // Five minutes later (EMQX's ban time, the default) it is welcome again.
    connect(&broker, "dev", start + Duration::from_secs(3 + 300)).unwrap();
}

#[test]
fn sessions_a_connection_opens_after_its_first_are_not_counted() {
    let start = Instant::now();
    let broker = flapping_broker(1, start);
    // One connection opening the same client's session again and again, as an MQTT-SN
    // peer does for each QoS -1 publish: one connect.
    let control = ConnControl::new(broker.next_connection_id(), Arc::new(NoWakeup));
    for _ in 0..10 {
        let session = open_session_on(
            &broker,
            "mqtt-sn",
            "sensor",
            true,
            0,
            control.clone(),
            start,
        )
        .expect("the same connection is not flapping");
        session.close(mqtt_core::broker::WillDisposition::Discard, start);
    }
}
