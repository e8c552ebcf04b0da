//! Feeds arbitrary datagrams, one after another, to a CoAP channel on a broker, with the
//! clock moving on between them: the whole receive path (message layer, resources,
//! sessions, observe, retransmission). Everything the channel sends must be valid CoAP.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use adapter_coap::{AuthFailureLimit, CoapChannel, Settings, UNDERSTOOD_CRITICAL_BLOCKWISE};
use adapter_kit::coap::{Packet, TransmissionParams};
use adapter_kit::coap_block::BlockwiseParams;
use bytes::Bytes;
use gateway_config::{CoapNotifyType, CoapQos, Config};
use libfuzzer_sys::fuzz_target;
use mqtt_core::auth::Auth;
use mqtt_core::broker::Broker;
use mqtt_core::protocol::Flow;
use mqtt_core::session::Wakeup;

struct NoWakeup;

impl Wakeup for NoWakeup {
    fn wake(&self) {}
}

fn broker() -> Arc<Broker> {
    static BROKER: OnceLock<Arc<Broker>> = OnceLock::new();
    BROKER
        .get_or_init(|| {
            let config = Config::defaults().expect("embedded defaults");
            Arc::new(Broker::new(
                config.mqtt.clone(),
                &config.retainer,
                Auth::allow_all(),
                Instant::now(),
            ))
        })
        .clone()
}

fn check(out: &mut Vec<Bytes>) {
    for datagram in out.drain(..) {
        Packet::from_bytes(&datagram).expect("the channel sends valid CoAP");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let settings = Arc::new(Settings {
        listener: Arc::from("udp:fuzz"),
        heartbeat: Duration::from_secs(30),
        // The first byte picks the mode, so both are reached.
        connection_required: data.first().is_some_and(|b| b & 1 == 1),
        notify_type: CoapNotifyType::Qos,
        subscribe_qos: CoapQos::Coap,
        publish_qos: CoapQos::Coap,
        mountpoint: String::new(),
        transmission: TransmissionParams {
            max_message_size: 1024,
            ..TransmissionParams::rfc7252(UNDERSTOOD_CRITICAL_BLOCKWISE)
        },
        // Small blocks and bodies, so that uploads complete and fail within one input.
        blockwise: Some(BlockwiseParams {
            max_szx: 2,
            max_body_size: 512,
            lifetime: Duration::from_secs(60),
            max_transfers: 2,
        }),
        // The second bit: answers piggybacked or separate.
        separate_response: data.first().is_some_and(|b| b & 2 == 2),
        // Small, so that inputs (wrong connection tokens) reach the lockout and its end.
        auth_failures: AuthFailureLimit {
            max: 3,
            window: Duration::from_secs(10),
            lockout: Duration::from_secs(5),
        },
    });
    let mut channel = CoapChannel::new(broker(), settings, None, Arc::new(NoWakeup), 1, now);
    let mut out = Vec::new();
    // Datagrams are length-prefixed by one byte.
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&len, tail)) = rest.split_first() {
        let (datagram, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let flow = channel.handle_datagram(Bytes::copy_from_slice(datagram), &mut out, now);
        check(&mut out);
        if flow == Flow::Close {
            break;
        }
        now += Duration::from_millis(1500);
        let flow = channel.handle_wakeup(&mut out, now);
        check(&mut out);
        if flow == Flow::Close || channel.handle_timeout(&mut out, now) == Flow::Close {
            check(&mut out);
            break;
        }
        check(&mut out);
    }
    channel.handle_closed(now);
});
