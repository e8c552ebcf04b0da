//! What the CoAP channel's tests share, over datagrams and over streams: the gateway's
//! settings, the requests a client writes, and a broker that stores what it routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_coap::{AuthFailureLimit, Settings, UNDERSTOOD_CRITICAL};
use adapter_kit::coap::{CoapOption, MessageClass, Packet, RequestType, TransmissionParams};
use gateway_config::{CoapNotifyType, CoapQos};
use mqtt_core::broker::Broker;
use mqtt_core::codec::QoS;
use mqtt_core::rate::PublishRates;
use mqtt_core::storage::MapStore;
use mqtt_core::testing::{self, NoWakeup};

/// The UDP listener's settings: no block-wise transfers, no random spread of the
/// retransmission timeout (so the virtual clock knows when it fires), and a lockout only
/// after several wrong credentials.
pub fn settings() -> Settings {
    Settings {
        listener: Arc::from("udp:test"),
        heartbeat: Duration::from_secs(30),
        connection_required: false,
        notify_type: CoapNotifyType::Qos,
        subscribe_qos: CoapQos::Coap,
        publish_qos: CoapQos::Coap,
        mountpoint: String::new(),
        transmission: TransmissionParams {
            ack_random_factor: 1.0,
            ..TransmissionParams::rfc7252(UNDERSTOOD_CRITICAL)
        },
        blockwise: None,
        separate_response: false,
        auth_failures: AuthFailureLimit {
            max: 5,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(60),
        },
        rates: PublishRates::UNLIMITED,
        clients: Arc::default(),
    }
}

/// A request to `path`, which may carry a `?query` with `&`-separated parameters.
pub fn request(method: RequestType, path: &str, token: &[u8], observe: Option<u32>) -> Packet {
    let mut packet = Packet::new();
    packet.header.code = MessageClass::Request(method);
    packet.set_token(token.to_vec());
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        packet.add_option(CoapOption::UriPath, segment.as_bytes().to_vec());
    }
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        packet.add_option(CoapOption::UriQuery, pair.as_bytes().to_vec());
    }
    if let Some(value) = observe {
        packet.set_observe_value(value);
    }
    packet
}

/// A broker on `store` with a persistent MQTT session subscribed to `filter` at QoS 1, so
/// that a QoS 1 message to it is stored.
pub fn broker_with_keeper(store: &Arc<MapStore>, filter: &str, now: Instant) -> Arc<Broker> {
    let broker = testing::broker_on_store(store.clone(), now);
    let keeper = testing::open_session(
        &broker,
        "mqtt",
        "keeper",
        false,
        3600,
        Arc::new(NoWakeup),
        now,
    )
    .unwrap();
    testing::subscribe(&keeper, filter, QoS::AtLeastOnce, now);
    broker
}
