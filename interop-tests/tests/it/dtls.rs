//! DTLS 1.2 with pre-shared keys on the datagram listeners: libcoap's coap-client in its
//! OpenSSL and GnuTLS builds (Debian libcoap3-bin) publish and observe over `coaps://` and
//! register as LwM2M devices, `openssl s_client` carries MQTT-SN, mosquitto clients on the
//! MQTT side; a wrong key, a client id or endpoint not the key's, and ClientHellos from
//! addresses that never receive are refused without a session. A key file changed on
//! disk or after SIGHUP is taken without a restart, a removed key's session closed; wrong
//! keys, garbage and oversized datagrams are counted under `$SYS` (read with
//! mosquitto_sub) and leave other clients' sessions alone.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use interop_tests::broker::listener_name;
use interop_tests::mosquitto::sys_values_until;
use interop_tests::process::{Line, Proc};
use interop_tests::{mosquitto_pub, unique_topic, Broker, MosquittoSub, Setting, Version, TIMEOUT};

const CLIENTS: [&str; 2] = ["coap-client-openssl", "coap-client-gnutls"];
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

struct DtlsGateway {
    broker: Broker,
    port: u16,
    /// The key file the listener reads.
    keys: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A gateway whose CoAP DTLS listener knows `keys` (`identity:secret` lines), ready once
/// the listener has reported where it is bound.
fn gateway(keys: &str, extra: &[Setting]) -> Option<DtlsGateway> {
    gateway_of(
        [
            "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__BIND",
            "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE",
        ],
        keys,
        extra,
    )
}

/// The same for the DTLS listener whose two keys `bind_and_keys` names.
fn gateway_of(
    bind_and_keys: [&'static str; 2],
    keys: &str,
    extra: &[Setting],
) -> Option<DtlsGateway> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("psk.txt");
    std::fs::write(&file, keys).unwrap();
    let mut settings = vec![
        Setting::new(bind_and_keys[0], "127.0.0.1:0"),
        Setting::new(bind_and_keys[1], file.display().to_string()),
    ];
    settings.extend_from_slice(extra);
    let broker = Broker::start_gateway_only("a CoAP DTLS listener", &settings)?;
    let listener = bind_and_keys[0].trim_end_matches("__BIND");
    let port = broker.listener_port(&listener_name(listener));
    Some(DtlsGateway {
        broker,
        port,
        keys: file,
        _dir: dir,
    })
}

/// A DTLS 1.2 ClientHello offering TLS_PSK_WITH_AES_128_CCM_8, with `cookie`.
fn client_hello(random: u8, cookie: &[u8]) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&[random; 32]);
    body.push(0);
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
    let len = body.len() as u8;
    let message_seq = u8::from(!cookie.is_empty());
    let mut handshake = vec![1, 0, 0, len, 0, message_seq, 0, 0, 0, 0, 0, len];
    handshake.extend_from_slice(&body);
    let mut record = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, message_seq];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The cookie of a HelloVerifyRequest.
fn cookie_of(reply: &[u8]) -> Vec<u8> {
    assert_eq!(reply[0], 22, "a handshake record");
    assert_eq!(reply[13], 3, "a HelloVerifyRequest");
    let len = reply[27] as usize;
    reply[28..28 + len].to_vec()
}

/// Sends `datagram` from `socket` and returns every datagram that comes back within a
/// short while.
fn exchange(socket: &UdpSocket, port: u16, datagram: &[u8]) -> Vec<Vec<u8>> {
    socket.send_to(datagram, ("127.0.0.1", port)).unwrap();
    let mut replies = Vec::new();
    let mut buf = [0u8; 2048];
    // Generous for the first answer, on a loaded machine; shorter for any more.
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        replies.push(buf[..n].to_vec());
        socket
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
    }
    replies
}

fn coaps_command(client: &str, identity: &str, key: &str) -> Command {
    let mut cmd = Command::new(client);
    cmd.args(["-u", identity, "-k", key, "-B", "8"]);
    cmd
}

fn uri(gw: &DtlsGateway, path_and_query: &str) -> String {
    format!("coaps://127.0.0.1:{}{path_and_query}", gw.port)
}

/// Runs a client to its end: (exit success, stdout and stderr).
fn run(mut cmd: Command) -> (bool, String) {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let mut proc = Proc::spawn(&name, {
        cmd.stdin(std::process::Stdio::null());
        cmd
    });
    let mut out = String::new();
    loop {
        match proc.next_line(COMMAND_TIMEOUT) {
            Line::Line(line) => {
                out.push_str(&line);
                out.push('\n');
            }
            Line::Eof => break,
            Line::Timeout => panic!("{name} hung; stderr:\n{}", proc.stderr()),
        }
    }
    let status = proc.wait(COMMAND_TIMEOUT);
    out.push_str(&proc.stderr());
    (status.is_some_and(|s| s.success()), out)
}

#[test]
fn coap_clients_publish_over_dtls_with_a_psk_as_the_keys_identity() {
    let keys = "# devices\nsensor-1:secret-one\nsensor-2:another:secret\n";
    let Some(gw) = gateway(keys, &[]) else {
        return;
    };
    let topic = unique_topic("dtls-pub");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    for (client, (identity, key)) in CLIENTS
        .iter()
        .zip([("sensor-1", "secret-one"), ("sensor-2", "another:secret")])
    {
        let payload = format!("over DTLS from {client}");
        let mut cmd = coaps_command(client, identity, key);
        cmd.args(["-m", "post", "-e", &payload]);
        cmd.arg(uri(&gw, &format!("/ps/{topic}/{identity}?qos=1")));
        let (ok, out) = run(cmd);
        assert!(ok, "{client}: {out}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic.as_str(), msg.payload.as_slice()),
            (format!("{topic}/{identity}").as_str(), payload.as_bytes()),
            "{client}"
        );
    }
}

#[test]
fn coap_clients_observe_over_dtls_what_mosquitto_publishes() {
    let Some(gw) = gateway("watcher:watch-key\n", &[]) else {
        return;
    };
    for client in CLIENTS {
        let topic = unique_topic("dtls-obs");
        let mut cmd = coaps_command(client, "watcher", "watch-key");
        cmd.args(["-m", "get", "-s", "15"]);
        cmd.arg(uri(&gw, &format!("/ps/{topic}?qos=1")));
        cmd.stdin(std::process::Stdio::null());
        let mut observer = Proc::spawn(client, cmd);
        // The observation is registered after the handshake: publish until one arrives.
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = None;
        let mut n = 0;
        while seen.is_none() && Instant::now() < deadline {
            n += 1;
            mosquitto_pub(
                &gw.broker,
                Version::V5,
                &topic,
                // coap-client prints payloads as they are: a newline makes each a line.
                format!("notification {n}\n").as_bytes(),
                1,
                false,
                &[],
            );
            if let Line::Line(line) = observer.next_line(Duration::from_millis(500)) {
                seen = Some(line);
            }
        }
        let line =
            seen.unwrap_or_else(|| panic!("{client} saw no notification: {}", observer.stderr()));
        assert!(
            line.starts_with("notification "),
            "{client} printed {line:?}"
        );
        // The next publish arrives too.
        mosquitto_pub(
            &gw.broker,
            Version::V5,
            &topic,
            b"and another\n",
            1,
            false,
            &[],
        );
        let mut later = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match observer.next_line(Duration::from_millis(500)) {
                Line::Line(line) if line.contains("and another") => {
                    later.push(line);
                    break;
                }
                Line::Line(line) => later.push(line),
                _ => {}
            }
        }
        assert!(
            later.iter().any(|l| l.contains("and another")),
            "{client} printed {later:?}; stderr: {}",
            observer.stderr()
        );
        observer.kill();
    }
}

#[test]
fn a_wrong_key_an_unknown_identity_and_another_devices_client_id_are_refused() {
    let Some(gw) = gateway("sensor-1:right-key\nsensor-2:other-key\n", &[]) else {
        return;
    };
    let topic = unique_topic("dtls-refused");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    for client in CLIENTS {
        for (identity, key) in [("sensor-1", "wrong-key"), ("nobody", "right-key")] {
            let mut cmd = coaps_command(client, identity, key);
            cmd.args(["-m", "post", "-e", "must not arrive"]);
            cmd.arg(uri(&gw, &format!("/ps/{topic}/x")));
            let (_, out) = run(cmd);
            assert!(!out.contains("2.04"), "{client} {identity}: {out}");
        }
        // The right key, naming another device's client id: 4.03, nothing published.
        let mut cmd = coaps_command(client, "sensor-1", "right-key");
        cmd.args(["-m", "post", "-e", "as another device"]);
        cmd.arg(uri(&gw, &format!("/ps/{topic}/y?clientid=sensor-2")));
        let (_, out) = run(cmd);
        assert!(out.contains("4.03"), "{client}: {out}");
    }
    assert!(
        sub.try_recv(Duration::from_millis(500)).is_none(),
        "a refused client published"
    );
    // The right key and its own client id are served.
    let mut cmd = coaps_command(CLIENTS[0], "sensor-1", "right-key");
    cmd.args(["-m", "post", "-e", "as itself"]);
    cmd.arg(uri(&gw, &format!("/ps/{topic}/z?clientid=sensor-1")));
    let (ok, out) = run(cmd);
    assert!(ok, "{out}");
    assert_eq!(sub.recv(TIMEOUT).payload, b"as itself");
}

#[test]
fn client_hellos_from_addresses_that_do_not_receive_get_one_small_reply_and_no_session() {
    // One peer and one handshake at a time: a ClientHello that made a peer would keep a
    // real client out for the handshake timeout.
    let Some(gw) = gateway(
        "sensor-1:right-key\n",
        &[
            Setting::new(
                "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__MAX_CONNECTIONS",
                "1",
            ),
            Setting::new(
                "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__MAX_HANDSHAKES",
                "1",
            ),
            Setting::new(
                "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__HANDSHAKE_TIMEOUT",
                "60s",
            ),
        ],
    ) else {
        return;
    };
    // The owner of an address asks, and gets a cookie for it.
    let owner = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hello = client_hello(9, &[]);
    let replies = exchange(&owner, gw.port, &hello);
    assert_eq!(replies.len(), 1, "one HelloVerifyRequest");
    assert!(
        replies[0].len() <= hello.len(),
        "{} bytes answer {}",
        replies[0].len(),
        hello.len()
    );
    let cookie = cookie_of(&replies[0]);
    // The same ClientHello with that cookie from another address (a forger who saw the
    // cookie, or a spoofed source): a fresh HelloVerifyRequest, no handshake.
    let forger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let replies = exchange(&forger, gw.port, &client_hello(9, &cookie));
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0][13], 3, "a HelloVerifyRequest, not a ServerHello");
    assert_ne!(cookie_of(&replies[0]), cookie);
    // Many sources that never answer: one small reply each, nothing kept.
    for n in 0..40u8 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let hello = client_hello(n, &[]);
        let replies = exchange(&socket, gw.port, &hello);
        assert_eq!(replies.len(), 1);
        assert!(replies[0].len() <= hello.len());
    }
    // Garbage makes no reply.
    assert!(exchange(&forger, gw.port, &[0x17, 0xfe, 0xfd, 0, 1]).is_empty());
    assert!(exchange(&forger, gw.port, b"\x40\x01\x00\x01").is_empty());
    // The one peer place and the one handshake place are free for a real client.
    let topic = unique_topic("dtls-abuse");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&topic], 1, &[]);
    let mut cmd = coaps_command(CLIENTS[0], "sensor-1", "right-key");
    cmd.args(["-m", "post", "-e", "still served"]);
    cmd.arg(uri(&gw, &format!("/ps/{topic}")));
    let (ok, out) = run(cmd);
    assert!(ok, "{out}");
    assert_eq!(sub.recv(TIMEOUT).payload, b"still served");
}

#[test]
fn the_keys_identity_is_the_user_name_that_acl_rules_see() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "allow all publish devices/%u/#\nallow all subscribe #\ndeny all all #\n",
    )
    .unwrap();
    let Some(gw) = gateway(
        "sensor-1:key-one\nsensor-2:key-two\n",
        &[Setting::new(
            "GATEWAY_AUTH__ACL_FILE",
            acl.display().to_string(),
        )],
    ) else {
        return;
    };
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &["devices/#"], 1, &[]);
    for client in CLIENTS {
        // Under its own name: published.
        let payload = format!("{client} as sensor-1");
        let mut cmd = coaps_command(client, "sensor-1", "key-one");
        cmd.args(["-m", "post", "-e", &payload]);
        cmd.arg(uri(&gw, "/ps/devices/sensor-1/t"));
        let (ok, out) = run(cmd);
        assert!(ok, "{client}: {out}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(
            (msg.topic.as_str(), msg.payload.as_slice()),
            ("devices/sensor-1/t", payload.as_bytes())
        );
        // Under another device's name, with that device's user name in the query: the
        // key's identity is the user name all the same, and the rule refuses it.
        let mut cmd = coaps_command(client, "sensor-1", "key-one");
        cmd.args(["-m", "post", "-e", "into sensor-2"]);
        cmd.arg(uri(&gw, "/ps/devices/sensor-2/t?username=sensor-2"));
        let (_, out) = run(cmd);
        assert!(!out.contains("2.04"), "{client}: {out}");
        assert!(
            sub.try_recv(Duration::from_millis(500)).is_none(),
            "{client} published under another device's name"
        );
    }
}

#[test]
fn with_stateless_cookies_off_the_handshakes_own_cookie_serves_clients() {
    let Some(gw) = gateway(
        "sensor-1:key-one\n",
        &[Setting::new(
            "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__STATELESS_COOKIES",
            "false",
        )],
    ) else {
        return;
    };
    let topic = unique_topic("dtls-stateful");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&topic], 1, &[]);
    for client in CLIENTS {
        let mut cmd = coaps_command(client, "sensor-1", "key-one");
        cmd.args(["-m", "post", "-e", client]);
        cmd.arg(uri(&gw, &format!("/ps/{topic}")));
        let (ok, out) = run(cmd);
        assert!(ok, "{client}: {out}");
        assert_eq!(sub.recv(TIMEOUT).payload, client.as_bytes());
    }
    // A ClientHello gets the handshake's HelloVerifyRequest, within 3x its size.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let hello = client_hello(3, &[]);
    let replies = exchange(&socket, gw.port, &hello);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0][13], 3, "a HelloVerifyRequest");
    assert!(replies[0].len() <= hello.len() * 3);
}

#[test]
fn lwm2m_devices_register_over_dtls_under_their_keys_identity_only() {
    let Some(gw) = gateway_of(
        [
            "GATEWAY_GATEWAY__LWM2M__LISTENERS__DTLS__DEFAULT__BIND",
            "GATEWAY_GATEWAY__LWM2M__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE",
        ],
        "meter-1:key-one\nmeter-2:key-two\n",
        &[],
    ) else {
        return;
    };
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &["lwm2m/#"], 1, &[]);
    let register = |client: &str, key_of: &str, endpoint: &str| {
        let key = if key_of == "meter-1" {
            "key-one"
        } else {
            "key-two"
        };
        let mut cmd = coaps_command(client, key_of, key);
        cmd.args(["-m", "post", "-t", "40", "-e", "</3/0>"]);
        cmd.arg(uri(&gw, &format!("/rd?ep={endpoint}&lt=60&lwm2m=1.0")));
        run(cmd)
    };
    for client in CLIENTS {
        // Another device's endpoint name: 4.03, no register event.
        let (_, out) = register(client, "meter-1", "meter-2");
        assert!(out.contains("4.03"), "{client}: {out}");
        assert!(sub.try_recv(Duration::from_millis(300)).is_none());
        // Its own: registered, the event under its endpoint's mountpoint.
        let (ok, out) = register(client, "meter-2", "meter-2");
        assert!(ok, "{client}: {out}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(msg.topic, "lwm2m/meter-2/up/resp", "{client}");
        let event = String::from_utf8_lossy(&msg.payload);
        assert!(event.contains("\"register\""), "{client}: {event}");
        assert!(event.contains("\"meter-2\""), "{client}: {event}");
    }
}

/// `openssl s_client` over DTLS 1.2 with a pre-shared key, as an MQTT-SN client's
/// transport: what is written to it goes out as one record, what it prints is what the
/// gateway sent.
struct OpensslDtls {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    printed: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

impl OpensslDtls {
    fn start(port: u16, identity: &str, key: &str) -> OpensslDtls {
        use std::io::Read;
        use std::sync::{Arc, Mutex};
        let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-dtls1_2",
                "-quiet",
                "-cipher",
                "PSK-AES128-CCM8",
            ])
            .args(["-psk", &hex, "-psk_identity", identity])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl");
        let mut stdout = child.stdout.take().unwrap();
        let printed = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let printed = printed.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 1024];
                while let Ok(n) = stdout.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    printed.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        };
        let stdin = child.stdin.take().unwrap();
        OpensslDtls {
            child,
            stdin,
            printed,
            reader,
        }
    }

    /// Sends one message (s_client reads its input once the handshake is done: a first
    /// message waits for it).
    fn send(&mut self, message: &[u8]) {
        use std::io::Write;
        self.stdin.write_all(message).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits until the gateway has sent `len` bytes in all, or `TIMEOUT` passes.
    fn wait_for(&self, len: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline && self.printed.lock().unwrap().len() < len {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the gateway sent.
    fn finish(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let out = self.printed.lock().unwrap().clone();
        out
    }
}

/// Runs `steps` over one [`OpensslDtls`]: each message sent, then, when its count is
/// above what came before, waiting until the gateway has sent that many bytes in all (a
/// second otherwise); everything the gateway sent.
fn openssl_dtls(port: u16, identity: &str, key: &str, steps: &[(Vec<u8>, usize)]) -> Vec<u8> {
    let mut session = OpensslDtls::start(port, identity, key);
    let mut expected = 0;
    for (message, answered) in steps {
        session.send(message);
        if *answered > expected {
            expected = *answered;
            session.wait_for(expected);
        } else {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    session.finish()
}

/// An MQTT-SN 1.2 CONNECT (clean session, keep-alive 60 s).
fn sn_connect(client_id: &str) -> Vec<u8> {
    let mut m = vec![(6 + client_id.len()) as u8, 0x04, 0x04, 0x01, 0, 60];
    m.extend_from_slice(client_id.as_bytes());
    m
}

/// An MQTT-SN QoS 0 PUBLISH to a two-character short topic name.
fn sn_publish_short(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![(7 + payload.len()) as u8, 0x0c, 0x02];
    m.extend_from_slice(topic.as_bytes());
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(payload);
    m
}

#[test]
fn mqtt_sn_clients_connect_over_dtls_under_their_keys_identity_only() {
    let Some(gw) = gateway_of(
        [
            "GATEWAY_GATEWAY__MQTTSN__LISTENERS__DTLS__DEFAULT__BIND",
            "GATEWAY_GATEWAY__MQTTSN__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE",
        ],
        "sn-dev-1:sn-key-one\nsn-dev-2:sn-key-two\n",
        &[],
    ) else {
        return;
    };
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &["ab"], 0, &[]);
    // Its own client id: CONNACK accepted, and its publish routed.
    let out = openssl_dtls(
        gw.port,
        "sn-dev-1",
        "sn-key-one",
        &[
            (sn_connect("sn-dev-1"), 3),
            (sn_publish_short("ab", b"over DTLS"), 3),
        ],
    );
    assert_eq!(out.get(..3), Some(&[3, 5, 0][..]), "{out:?}");
    assert_eq!(sub.recv(TIMEOUT).payload, b"over DTLS");
    // Another device's client id: CONNACK refused, its publish dropped.
    let out = openssl_dtls(
        gw.port,
        "sn-dev-1",
        "sn-key-one",
        &[
            (sn_connect("sn-dev-2"), 3),
            (sn_publish_short("ab", b"as another"), 3),
        ],
    );
    assert_eq!(out.get(..2), Some(&[3, 5][..]), "{out:?}");
    assert_ne!(out.get(2), Some(&0), "{out:?}");
    // A wrong key: no session, no answer.
    let out = openssl_dtls(
        gw.port,
        "sn-dev-2",
        "sn-key-one",
        &[
            (sn_connect("sn-dev-2"), 0),
            (sn_publish_short("ab", b"wrong key"), 0),
        ],
    );
    assert!(out.is_empty(), "{out:?}");
    assert!(sub.try_recv(Duration::from_millis(500)).is_none());
}

/// An MQTT-SN QoS 0 SUBSCRIBE to a two-character short topic name.
fn sn_subscribe_short(topic: &str, msg_id: u16) -> Vec<u8> {
    let mut m = vec![7, 0x12, 0x02];
    m.extend_from_slice(&msg_id.to_be_bytes());
    m.extend_from_slice(topic.as_bytes());
    m
}

#[test]
fn an_mqtt_sn_client_over_dtls_subscribes_and_gets_what_mosquitto_publishes() {
    let Some(gw) = gateway_of(
        [
            "GATEWAY_GATEWAY__MQTTSN__LISTENERS__DTLS__DEFAULT__BIND",
            "GATEWAY_GATEWAY__MQTTSN__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__PSK_FILE",
        ],
        "sn-dev-1:sn-key-one\n",
        &[],
    ) else {
        return;
    };
    let mut session = OpensslDtls::start(gw.port, "sn-dev-1", "sn-key-one");
    session.send(&sn_connect("sn-dev-1"));
    session.wait_for(3);
    session.send(&sn_subscribe_short("cd", 7));
    // CONNACK, then SUBACK (8 bytes): granted QoS 0, message id 7, accepted.
    session.wait_for(3 + 8);
    for payload in [&b"from mosquitto"[..], &[0u8, 0xff, 0x0c, 0x00][..]] {
        mosquitto_pub(&gw.broker, Version::V311, "cd", payload, 0, false, &[]);
    }
    let publishes: usize = [14usize, 4].iter().map(|len| 7 + len).sum();
    session.wait_for(3 + 8 + publishes);
    let out = session.finish();
    assert_eq!(out.get(..3), Some(&[3, 5, 0][..]), "CONNACK: {out:?}");
    let suback = &out[3..11];
    assert_eq!(
        (suback[0], suback[1], &suback[5..7], suback[7]),
        (8, 0x13, &[0, 7][..], 0),
        "SUBACK: {out:?}"
    );
    let mut rest = &out[11..];
    for payload in [&b"from mosquitto"[..], &[0u8, 0xff, 0x0c, 0x00][..]] {
        let len = usize::from(rest[0]);
        let publish = &rest[..len];
        assert_eq!(publish[1], 0x0c, "PUBLISH: {out:?}");
        assert_eq!(&publish[3..5], b"cd", "the short topic name: {out:?}");
        assert_eq!(&publish[7..], payload);
        rest = &rest[len..];
    }
    assert!(rest.is_empty(), "{out:?}");
}

#[test]
fn certificates_beside_keys_a_verified_common_name_is_the_identity_and_another_cas_is_refused() {
    let pki = interop_tests::certs::TestPki::new();
    let server = pki.server();
    let key = |k: &str| -> &'static str {
        Box::leak(
            format!("GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__DTLS_OPTIONS__{k}")
                .into_boxed_str(),
        )
    };
    let Some(gw) = gateway(
        "sensor-1:key-one\n",
        &[
            Setting::new(key("CERTFILE"), server.cert.display().to_string()),
            Setting::new(key("KEYFILE"), server.key.display().to_string()),
            Setting::new(key("CACERTFILE"), pki.ca().display().to_string()),
            Setting::new(key("VERIFY"), "required"),
        ],
    ) else {
        return;
    };
    let topic = unique_topic("dtls-cert");
    let mut sub = MosquittoSub::start(&gw.broker, Version::V5, &[&format!("{topic}/#")], 1, &[]);
    let device = pki.client("dev-7", "ca");
    let rogue = pki.client("dev-7", "rogue-ca");
    let with_cert = |client: &str, pair: &interop_tests::certs::Pair, path: &str, payload: &str| {
        let mut cmd = Command::new(client);
        cmd.args(["-B", "8", "-m", "post", "-e", payload]);
        cmd.arg("-c").arg(&pair.cert).arg("-j").arg(&pair.key);
        // The gateway's certificate is checked against the CA too.
        cmd.arg("-C").arg(pki.ca());
        cmd.arg(uri(&gw, path));
        run(cmd)
    };
    for client in CLIENTS {
        let payload = format!("{client} with a certificate");
        let (ok, out) = with_cert(client, &device, &format!("/ps/{topic}/a"), &payload);
        assert!(ok, "{client}: {out}");
        let msg = sub.recv(TIMEOUT);
        assert_eq!(msg.payload, payload.as_bytes(), "{client}");
        // The common name is the client id it may use.
        let (_, out) = with_cert(
            client,
            &device,
            &format!("/ps/{topic}/b?clientid=dev-8"),
            "x",
        );
        assert!(out.contains("4.03"), "{client}: {out}");
        // Another CA's certificate with the same name: no session.
        let (_, out) = with_cert(client, &rogue, &format!("/ps/{topic}/c"), "rogue");
        assert!(!out.contains("2.04"), "{client}: {out}");
        assert!(
            sub.try_recv(Duration::from_millis(300)).is_none(),
            "{client}"
        );
        // A key still works on the same listener.
        let mut cmd = coaps_command(client, "sensor-1", "key-one");
        cmd.args(["-m", "post", "-e", "by key"]);
        cmd.arg(uri(&gw, &format!("/ps/{topic}/d")));
        let (ok, out) = run(cmd);
        assert!(ok, "{client}: {out}");
        assert_eq!(sub.recv(TIMEOUT).payload, b"by key");
    }
}

const SYS_INTERVAL: &str = "GATEWAY_SYS__INTERVAL";
const LISTENER_SYS: &str = "$SYS/broker/listeners/coap:dtls:default/dtls";

/// A subscriber to what [`posted`] publishes.
struct Posts {
    topic: String,
    sub: MosquittoSub,
    sent: usize,
}

impl Posts {
    fn new(gw: &DtlsGateway) -> Posts {
        let topic = unique_topic("dtls-post");
        let sub = MosquittoSub::start(&gw.broker, Version::V5, &[&topic], 1, &[]);
        Posts {
            topic,
            sub,
            sent: 0,
        }
    }

    /// Runs a coap-client POST over DTLS with `identity` and `key`: whether what it
    /// posted was published (coap-client's exit status does not tell a failed
    /// handshake).
    fn posted(&mut self, gw: &DtlsGateway, identity: &str, key: &str) -> bool {
        self.sent += 1;
        let payload = format!("{identity} {key} {}", self.sent);
        let mut cmd = coaps_command(CLIENTS[0], identity, key);
        cmd.args(["-m", "post", "-e", &payload]);
        cmd.arg(uri(gw, &format!("/ps/{}", self.topic)));
        run(cmd);
        // The publish is routed before the answer leaves.
        while let Some(msg) = self.sub.try_recv(Duration::from_millis(300)) {
            if msg.payload == payload.as_bytes() {
                return true;
            }
        }
        false
    }
}

/// Starts coap-client observing `topic` over DTLS with `identity` and `key`, and returns
/// it once it printed a first notification.
fn observing(gw: &DtlsGateway, identity: &str, key: &str, topic: &str) -> Proc {
    let mut cmd = coaps_command(CLIENTS[0], identity, key);
    cmd.args(["-m", "get", "-s", "60"]);
    cmd.arg(uri(gw, &format!("/ps/{topic}?qos=1")));
    cmd.stdin(std::process::Stdio::null());
    let mut observer = Proc::spawn(CLIENTS[0], cmd);
    let deadline = Instant::now() + TIMEOUT;
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let payload = format!("notification {n}\n");
        mosquitto_pub(
            &gw.broker,
            Version::V5,
            topic,
            payload.as_bytes(),
            1,
            false,
            &[],
        );
        if let Line::Line(line) = observer.next_line(Duration::from_millis(500)) {
            assert!(line.starts_with("notification "), "{line:?}");
            return observer;
        }
    }
    panic!("the observer saw no notification: {}", observer.stderr());
}

/// Whether `observer` prints `payload`, published to `topic`, within a while.
fn notified(gw: &DtlsGateway, observer: &mut Proc, topic: &str, payload: &str) -> bool {
    let line = format!("{payload}\n");
    mosquitto_pub(
        &gw.broker,
        Version::V5,
        topic,
        line.as_bytes(),
        1,
        false,
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match observer.next_line(Duration::from_millis(500)) {
            Line::Line(line) if line.contains(payload) => return true,
            Line::Eof => return false,
            _ => {}
        }
    }
    false
}

/// Writes the key file in place and puts its modification time back, so that only a
/// SIGHUP, not the file watcher, can notice the change: `keys` must be as long as what the
/// file held, since the watcher compares lengths too.
fn write_keys_unnoticed(gw: &DtlsGateway, keys: &str) {
    let before = std::fs::metadata(&gw.keys).unwrap().modified().unwrap();
    std::fs::write(&gw.keys, keys).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&gw.keys)
        .unwrap()
        .set_modified(before)
        .unwrap();
}

#[test]
fn a_changed_key_file_is_taken_without_restart_and_a_removed_keys_session_is_closed() {
    let Some(gw) = gateway(
        "sensor-1:old-key\nwatcher:watch-key\n",
        &[Setting::new(SYS_INTERVAL, "1s")],
    ) else {
        return;
    };
    let mut posts = Posts::new(&gw);
    assert!(posts.posted(&gw, "sensor-1", "old-key"));
    let watched = unique_topic("dtls-revoked");
    let mut observer = observing(&gw, "watcher", "watch-key", &watched);

    // The file changes on disk: sensor-1 gets a new key, the watcher's is removed.
    std::fs::write(&gw.keys, "sensor-1:new-key\n").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !posts.posted(&gw, "sensor-1", "new-key") {
        assert!(
            Instant::now() < deadline,
            "the new key is never served:\n{}",
            gw.broker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!posts.posted(&gw, "sensor-1", "old-key"));
    // The watcher's session, made with a key the file no longer holds, is closed.
    assert!(
        !notified(&gw, &mut observer, &watched, "after revocation"),
        "a revoked session is still served"
    );
    observer.kill();
    assert!(
        gw.broker
            .log_tail()
            .contains("DTLS session closed: the key file no longer holds its key"),
        "{}",
        gw.broker.log_tail()
    );
    let revoked = format!("{LISTENER_SYS}/sessions/revoked");
    let values = sys_values_until(&gw.broker, &[&revoked], |v| v[&revoked] >= 1);
    assert_eq!(values.get(&revoked), Some(&1), "{values:?}");

    // SIGHUP alone: a change the file watcher cannot see (the same length, file and
    // modification time) is taken on the signal.
    write_keys_unnoticed(&gw, "sensor-1:3rd-key\n");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        posts.posted(&gw, "sensor-1", "new-key"),
        "reloaded before the signal"
    );
    gw.broker.signal(libc::SIGHUP);
    let deadline = Instant::now() + TIMEOUT;
    while !posts.posted(&gw, "sensor-1", "3rd-key") {
        assert!(Instant::now() < deadline, "{}", gw.broker.log_tail());
        std::thread::sleep(Duration::from_millis(300));
    }

    // A broken file keeps the keys in use, and the log names the file and the line.
    std::fs::write(&gw.keys, "sensor-1:fourth-key\nno secret on this line\n").unwrap();
    gw.broker.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(posts.posted(&gw, "sensor-1", "3rd-key"));
    assert!(!posts.posted(&gw, "sensor-1", "fourth-key"));
    let log = gw.broker.log_tail();
    assert!(log.contains("DTLS credentials reload failed"), "{log}");
    assert!(
        log.contains(&format!("{}, line 2", gw.keys.display())),
        "{log}"
    );
}

#[test]
fn wrong_keys_are_refused_and_each_counted_once_under_sys() {
    let Some(gw) = gateway("sensor-1:right-key\n", &[Setting::new(SYS_INTERVAL, "1s")]) else {
        return;
    };
    let mut posts = Posts::new(&gw);
    let topic = posts.topic.clone();
    // Three wrong keys at once, from three clients, and one unknown identity.
    let attempts: Vec<_> = [
        ("sensor-1", "wrong-1"),
        ("sensor-1", "wrong-2"),
        ("sensor-1", "wrong-3"),
        ("nobody", "right-key"),
    ]
    .into_iter()
    .map(|(identity, key)| {
        let mut cmd = coaps_command(CLIENTS[0], identity, key);
        cmd.args(["-m", "post", "-e", "must not arrive"]);
        cmd.arg(format!("coaps://127.0.0.1:{}/ps/{topic}", gw.port));
        std::thread::spawn(move || run(cmd))
    })
    .collect();
    for attempt in attempts {
        let (_, out) = attempt.join().unwrap();
        assert!(!out.contains("2.04"), "{out}");
    }
    assert!(posts.sub.try_recv(Duration::from_millis(300)).is_none());
    assert!(posts.posted(&gw, "sensor-1", "right-key"));

    let credentials = format!("{LISTENER_SYS}/handshakes/failed/credentials");
    let completed = format!("{LISTENER_SYS}/handshakes/completed");
    let total = "$SYS/broker/dtls/handshakes/failed/credentials";
    let topics = [credentials.as_str(), completed.as_str(), total];
    let values = sys_values_until(&gw.broker, &topics, |v| {
        v[&credentials] >= 4 && v[&completed] >= 1
    });
    assert_eq!(values.get(&credentials), Some(&4), "{values:?}");
    assert_eq!(values.get(total), Some(&4), "{values:?}");
    assert_eq!(values.get(&completed), Some(&1), "{values:?}");
    // Counted once each: the figures stay where they are.
    std::thread::sleep(Duration::from_secs(2));
    let later = sys_values_until(&gw.broker, &topics, |_| true);
    assert_eq!(later, values);
    assert!(
        !gw.broker.log_tail().contains("DTLS handshake failed"),
        "a failure logged on its own line"
    );
}

#[test]
fn garbage_and_oversized_datagrams_are_dropped_and_counted_while_a_session_goes_on() {
    let Some(gw) = gateway(
        "watcher:watch-key\n",
        &[
            Setting::new(SYS_INTERVAL, "1s"),
            Setting::new(
                "GATEWAY_GATEWAY__COAP__LISTENERS__DTLS__DEFAULT__MAX_PACKET_SIZE",
                "512",
            ),
        ],
    ) else {
        return;
    };
    let topic = unique_topic("dtls-garbage");
    let mut observer = observing(&gw, "watcher", "watch-key", &topic);
    // From other addresses: bytes that are no records, truncated records, records of no
    // session, and datagrams beyond 512 bytes and the record overhead.
    let mut sent_garbage = 0;
    let mut sent_oversized = 0;
    for n in 0..10u8 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = ("127.0.0.1", gw.port);
        for garbage in [
            vec![n; 40],
            b"\x40\x01\x00\x01".to_vec(),
            vec![0x17, 0xfe, 0xfd, 0, 1],
            vec![
                0x17, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, n, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,
            ],
        ] {
            socket.send_to(&garbage, target).unwrap();
            sent_garbage += 1;
        }
        let mut oversized = client_hello(n, &[]);
        oversized.resize(1400, n);
        socket.send_to(&oversized, target).unwrap();
        socket.send_to(&[0x17; 2000], target).unwrap();
        sent_oversized += 2;
    }
    assert!(
        notified(&gw, &mut observer, &topic, "still observed"),
        "the established session stopped: {}",
        observer.stderr()
    );
    observer.kill();
    let garbage = format!("{LISTENER_SYS}/records/dropped/garbage");
    let oversized = format!("{LISTENER_SYS}/records/dropped/oversized");
    let values = sys_values_until(&gw.broker, &[&garbage, &oversized], |v| {
        v[&garbage] >= sent_garbage && v[&oversized] >= sent_oversized
    });
    assert_eq!(values.get(&garbage), Some(&sent_garbage), "{values:?}");
    assert_eq!(values.get(&oversized), Some(&sent_oversized), "{values:?}");
}
