//! A gateway with one DTLS 1.2 listener and a file of pre-shared keys. The listener binds
//! port 0 and the gateway is ready once it has reported the port it got: a bound UDP
//! socket queues a client's first flight, so no ICMP error can fail it.

use crate::{Broker, Setting};

/// The DTLS listeners a gateway has, each by the keys of its bind address and key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtlsListener {
    Coap,
    Lwm2m,
    MqttSn,
}

impl DtlsListener {
    /// The name the listener reports under.
    pub fn name(self) -> &'static str {
        match self {
            DtlsListener::Coap => "coap:dtls:default",
            DtlsListener::Lwm2m => "lwm2m:dtls:default",
            DtlsListener::MqttSn => "mqttsn:dtls:default",
        }
    }

    fn keys(self) -> [&'static str; 2] {
        match self {
            DtlsListener::Coap => [
                "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__BIND",
                "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE",
            ],
            DtlsListener::Lwm2m => [
                "GATEWAY_GATEWAY__LWM2M__LISTENERS__DTLS__DEFAULT__BIND",
                "GATEWAY_GATEWAY__LWM2M__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE",
            ],
            DtlsListener::MqttSn => [
                "GATEWAY_GATEWAY__MQTTSN__LISTENERS__DTLS__DEFAULT__BIND",
                "GATEWAY_GATEWAY__MQTTSN__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE",
            ],
        }
    }
}

pub struct DtlsGateway {
    pub broker: Broker,
    /// The DTLS listener's UDP port on 127.0.0.1.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl DtlsGateway {
    /// A gateway whose `listener` knows `keys` (`identity:secret` lines), with `extra`
    /// settings; None, after saying why, against an external broker.
    pub fn start(listener: DtlsListener, keys: &str, extra: &[Setting]) -> Option<DtlsGateway> {
        let dir = tempfile::tempdir().expect("a temp dir for the key file");
        let file = dir.path().join("psk.txt");
        std::fs::write(&file, keys).expect("write the key file");
        let [bind, psk_file] = listener.keys();
        let mut settings = vec![
            Setting::new(bind, "127.0.0.1:0"),
            Setting::new(psk_file, file.display().to_string()),
        ];
        settings.extend_from_slice(extra);
        let broker = Broker::start_gateway_only("a DTLS listener", &settings)?;
        let port = broker.listener_port(listener.name());
        Some(DtlsGateway {
            broker,
            port,
            _dir: dir,
        })
    }

    /// `coaps://127.0.0.1:PORT`.
    pub fn coaps_base(&self) -> String {
        format!("coaps://127.0.0.1:{}", self.port)
    }
}
