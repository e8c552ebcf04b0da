//! Feeds arbitrary bytes, in reads of a size the first byte picks, to a CoAP channel over
//! TCP or WebSocket framing (RFC 8323; the second bit of the first byte picks which): the
//! framing decoder, the signalling messages and the resources behind them. Whatever the
//! channel writes must decode as messages of the same framing.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use adapter_coap::framing::{self, Framing};
use adapter_coap::{
    AuthFailureLimit, CoapChannel, CoapStream, Settings, UNDERSTOOD_CRITICAL_BLOCKWISE,
};
use adapter_kit::coap::{decode_framed, TransmissionParams};
use adapter_kit::coap_block::BlockwiseParams;
use adapter_kit::StreamChannel;
use bytes::BytesMut;
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

fn check(framing: Framing, out: &mut BytesMut) {
    while let Some(frame) = framing::decode(framing, out, usize::MAX).expect("we frame right") {
        decode_framed(frame.code, &frame.token, &frame.body).expect("we send valid CoAP");
    }
    assert!(out.is_empty(), "only whole messages are written");
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let framing = if first & 2 == 2 {
        Framing::WebSocket
    } else {
        Framing::Tcp
    };
    let mut now = Instant::now();
    let settings = Arc::new(Settings {
        listener: Arc::from("tcp:fuzz"),
        heartbeat: Duration::from_secs(30),
        connection_required: first & 1 == 1,
        notify_type: CoapNotifyType::Qos,
        subscribe_qos: CoapQos::Coap,
        publish_qos: CoapQos::Coap,
        mountpoint: String::new(),
        transmission: TransmissionParams {
            max_message_size: 2048,
            ..TransmissionParams::rfc7252(UNDERSTOOD_CRITICAL_BLOCKWISE)
        },
        blockwise: Some(BlockwiseParams {
            max_szx: 2,
            max_body_size: 512,
            lifetime: Duration::from_secs(60),
            max_transfers: 2,
        }),
        separate_response: false,
        // Small, so that inputs (wrong connection tokens) reach the lockout and its end.
        auth_failures: AuthFailureLimit {
            max: 3,
            window: Duration::from_secs(10),
            lockout: Duration::from_secs(5),
        },
    });
    let channel = CoapChannel::new_stream(
        broker(),
        settings,
        None,
        Arc::new(NoWakeup),
        framing,
        1,
        now,
    );
    let mut stream = CoapStream::new(channel);
    let mut out = BytesMut::new();
    let mut input = BytesMut::new();
    let read = usize::from(first >> 2).max(1);
    for piece in rest.chunks(read) {
        input.extend_from_slice(piece);
        let flow = stream.handle_input(&mut input, &mut out, now);
        check(framing, &mut out);
        if flow == Flow::Close {
            stream.handle_closed(now);
            return;
        }
        now += Duration::from_secs(1);
        if stream.handle_timeout(&mut out, now) == Flow::Close {
            check(framing, &mut out);
            stream.handle_closed(now);
            return;
        }
        check(framing, &mut out);
    }
    stream.handle_closed(now);
});
