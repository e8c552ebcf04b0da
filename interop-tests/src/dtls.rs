//! A gateway with one DTLS 1.2 listener and a file of pre-shared keys, ready once the
//! listener answers a ClientHello: a DTLS client's first flight to a port nobody listens on
//! yet would fail on the ICMP error instead of waiting.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::broker::free_udp_port;
use crate::{Broker, Setting, TIMEOUT};

/// The DTLS listeners a gateway has, each by the keys of its bind address and key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtlsListener {
    Coap,
    Lwm2m,
    MqttSn,
}

impl DtlsListener {
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
        let port = free_udp_port();
        let [bind, psk_file] = listener.keys();
        let mut settings = vec![
            Setting::new(bind, format!("127.0.0.1:{port}")),
            Setting::new(psk_file, file.display().to_string()),
        ];
        settings.extend_from_slice(extra);
        let broker = Broker::start_gateway_only("a DTLS listener", &settings)?;
        wait_dtls(port);
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

/// A DTLS 1.2 ClientHello offering TLS_PSK_WITH_AES_128_CCM_8, without a cookie.
fn client_hello() -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&[1; 32]);
    // No session id, no cookie; one suite; no compression.
    body.extend_from_slice(&[0, 0, 0, 2, 0xc0, 0xa8, 1, 0]);
    let len = body.len() as u8;
    let mut handshake = vec![1, 0, 0, len, 0, 0, 0, 0, 0, 0, 0, len];
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Waits until the listener on `port` answers a ClientHello with a handshake record.
fn wait_dtls(port: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set a read timeout");
    let hello = client_hello();
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        // An ICMP error while the listener is not bound yet shows as a failed send or
        // receive: both mean "not yet".
        if socket.send_to(&hello, ("127.0.0.1", port)).is_ok() {
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                if n > 0 && buf[0] == 22 {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the DTLS listener on {port} never answered a ClientHello");
}
