#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! Authentication and authorization across every adapter and transport of one gateway:
//! anonymous access off, a password file written by `gateway passwd`, and an ACL file
//! (`acl_no_match = deny`) that keeps each user under `users/<its user name>/`. For each
//! adapter × transport, with the protocol's reference client: no credentials and a wrong
//! password are refused in the protocol's terms, the right password is accepted and may
//! publish and subscribe under its prefix; a publish and a subscription outside it are
//! refused and route nothing; another user naming the same session (client id, endpoint)
//! is refused and the owner's live session keeps its subscriptions; a client id holding a
//! wildcard or a separator is refused a per-client mountpoint. Every refusal is checked by
//! its code, and every "nothing delivered" by a watcher subscribed to `#` (or the client
//! itself) reading up to a later message: a gateway that accepted would fail the check.
//!
//! One gateway per test function, so a failure names the adapter family.

use serde_json::{json, Value};

use interop_tests::broker::gateway_passwd;
use interop_tests::certs::TestPki;
use interop_tests::coap::coap_client;
use interop_tests::lwm2m::node_device;
use interop_tests::process::{Line, Proc};
use interop_tests::quic::QuicClient;
use interop_tests::script::ConnectOutcome;
use interop_tests::stomp::{StompClient, StompEvent};
use interop_tests::{
    mosquitto_pub, unique_client_id, AiocoapClient, Broker, Carrier, Lib, MosquittoSub, Msg,
    ScriptClient, Setting, SnClient, StompJs, StompPy, Version, TIMEOUT,
};

// ---- the gateway ---------------------------------------------------------------------------

const ALICE: (&str, &str) = ("alice", "alice-secret");
const BOB: (&str, &str) = ("bob", "bob-secret");
const CAROL: (&str, &str) = ("carol", "carol-secret");
const DAVE: (&str, &str) = ("dave", "dave-secret");
const WATCHER: (&str, &str) = ("watcher", "watcher-secret");

/// MQTT-SN's CONNECT carries no credentials: `clientinfo_override` makes the user name
/// `${clientid}@${peerhost}` and the password `${clientid}-secret`, so a client id is
/// authenticated as a device of one host, and the same client id from another host is
/// another user.
const SN_USERS: &[(&str, &str)] = &[
    ("alice@127.0.0.1", "alice-secret"),
    ("alice@127.0.0.2", "alice-secret"),
    // Its password is not what the template makes of its client id.
    ("mallory@127.0.0.1", "not mallory-secret"),
    // Users whose client ids only the mountpoint can refuse.
    ("+@127.0.0.1", "+-secret"),
    ("a/b@127.0.0.1", "a/b-secret"),
];

/// First match decides; nothing matched is denied.
const ACL: &str = "\
# The watcher reads and writes everywhere, to see what must not arrive.
allow user:watcher all #
# LwM2M devices read commands and publish events under their endpoint's mountpoint, which
# rules see without it: carol may read commands but not publish events, dave neither.
allow user:alice subscribe dn/#
allow user:alice publish up/#
allow user:bob subscribe dn/#
allow user:bob publish up/#
allow user:carol subscribe dn/#
# Everyone else stays under their own prefix.
allow all all users/%u/#
";

/// The per-client mountpoints (the MQTT one on every MQTT listener but `tcp:default`).
const MQTT_MOUNT: &str = "tenants/${clientid}/";
const SN_MOUNT: &str = "sn/${clientid}/";
const COAP_MOUNT: &str = "coap/${clientid}/";
const STOMP_MOUNT: &str = "stomp/${clientid}/";

/// The gateway, its extra ports, and a watcher subscribed to `#` on the plain TCP
/// listener (no mountpoint) as the user the ACL lets read everything.
struct Matrix {
    broker: Broker,
    pki: TestPki,
    mounted_tcp_port: u16,
    tls_port: u16,
    wss_port: u16,
    quic_port: u16,
    watcher: MosquittoSub,
    /// Everything the watcher received so far, in order.
    seen: Vec<Msg>,
    barriers: u32,
    _files: tempfile::TempDir,
}

impl Matrix {
    fn start() -> Option<Matrix> {
        let files = tempfile::tempdir().expect("temp dir");
        let passwd = files.path().join("passwd");
        for (user, password) in [ALICE, BOB, CAROL, DAVE, WATCHER].iter().chain(SN_USERS) {
            gateway_passwd(&passwd, user, password);
        }
        let acl = files.path().join("acl");
        std::fs::write(&acl, ACL).expect("write the ACL file");
        let pki = TestPki::new();
        let server = pki.server();
        let cert = server.cert.display().to_string();
        let key = server.key.display().to_string();
        let local = || "127.0.0.1:0".to_owned();
        let settings = [
            Setting::new("GATEWAY_AUTH__ALLOW_ANONYMOUS", "false"),
            Setting::new("GATEWAY_AUTH__PASSWORD_FILE", passwd.display().to_string()),
            Setting::new("GATEWAY_AUTH__ACL_FILE", acl.display().to_string()),
            Setting::new("GATEWAY_AUTH__ACL_NO_MATCH", "deny"),
            Setting::new("GATEWAY_LISTENERS__TCP__MOUNTED__BIND", local()),
            Setting::new("GATEWAY_LISTENERS__TCP__MOUNTED__MOUNTPOINT", MQTT_MOUNT),
            Setting::new("GATEWAY_LISTENERS__SSL__DEFAULT__BIND", local()),
            Setting::new("GATEWAY_LISTENERS__SSL__DEFAULT__MOUNTPOINT", MQTT_MOUNT),
            Setting::new(
                "GATEWAY_LISTENERS__SSL__DEFAULT__TLS__CERTFILE",
                cert.clone(),
            ),
            Setting::new("GATEWAY_LISTENERS__SSL__DEFAULT__TLS__KEYFILE", key.clone()),
            Setting::new("GATEWAY_LISTENERS__WS__DEFAULT__MOUNTPOINT", MQTT_MOUNT),
            Setting::new("GATEWAY_LISTENERS__WSS__DEFAULT__BIND", local()),
            Setting::new("GATEWAY_LISTENERS__WSS__DEFAULT__MOUNTPOINT", MQTT_MOUNT),
            Setting::new(
                "GATEWAY_LISTENERS__WSS__DEFAULT__TLS__CERTFILE",
                cert.clone(),
            ),
            Setting::new("GATEWAY_LISTENERS__WSS__DEFAULT__TLS__KEYFILE", key.clone()),
            Setting::new("GATEWAY_LISTENERS__QUIC__DEFAULT__BIND", local()),
            Setting::new("GATEWAY_LISTENERS__QUIC__DEFAULT__MOUNTPOINT", MQTT_MOUNT),
            Setting::new("GATEWAY_LISTENERS__QUIC__DEFAULT__TLS__CERTFILE", cert),
            Setting::new("GATEWAY_LISTENERS__QUIC__DEFAULT__TLS__KEYFILE", key),
            Setting::new(
                "GATEWAY_GATEWAY__MQTTSN__CLIENTINFO_OVERRIDE__USERNAME",
                "${clientid}@${peerhost}",
            ),
            Setting::new(
                "GATEWAY_GATEWAY__MQTTSN__CLIENTINFO_OVERRIDE__PASSWORD",
                "${clientid}-secret",
            ),
            Setting::new("GATEWAY_GATEWAY__MQTTSN__MOUNTPOINT", SN_MOUNT),
            Setting::new("GATEWAY_GATEWAY__COAP__MOUNTPOINT", COAP_MOUNT),
            Setting::new(
                "GATEWAY_GATEWAY__COAP__LISTENERS__WS__DEFAULT__ENABLE",
                "true",
            ),
            Setting::new("GATEWAY_GATEWAY__STOMP__MOUNTPOINT", STOMP_MOUNT),
            Setting::new(
                "GATEWAY_GATEWAY__STOMP__LISTENERS__WS__DEFAULT__ENABLE",
                "true",
            ),
        ];
        let broker = Broker::start_gateway_only(
            "a password file, an ACL file, mountpoints and every listener",
            &settings,
        )?;
        let mounted_tcp_port = broker.listener_port("tcp:mounted");
        let tls_port = broker.listener_port("ssl:default");
        let wss_port = broker.listener_port("wss:default");
        let quic_port = broker.listener_port("quic:default");
        let watcher = MosquittoSub::start(
            &broker,
            Version::V311,
            &["#"],
            1,
            &["-u", WATCHER.0, "-P", WATCHER.1],
        );
        Some(Matrix {
            broker,
            pki,
            mounted_tcp_port,
            tls_port,
            wss_port,
            quic_port,
            watcher,
            seen: Vec::new(),
            barriers: 0,
            _files: files,
        })
    }

    /// Publishes at QoS 1 as the watcher, on the plain TCP listener (no mountpoint).
    fn publish(&self, topic: &str, payload: &[u8]) {
        mosquitto_pub(
            &self.broker,
            Version::V311,
            topic,
            payload,
            1,
            false,
            &["-u", WATCHER.0, "-P", WATCHER.1],
        );
    }

    /// Reads the watcher up to a barrier published now: whatever was routed before this
    /// call (every refusal checked so far was answered after its routing would have
    /// happened) is in `seen` afterwards.
    fn catch_up(&mut self) {
        self.barriers += 1;
        let barrier = format!("barrier/{}", self.barriers);
        self.publish(&barrier, b"barrier");
        loop {
            let msg = self.watcher.recv(TIMEOUT);
            if msg.topic == barrier {
                return;
            }
            self.seen.push(msg);
        }
    }

    /// The first message the watcher got, or gets, that `wanted` accepts (kept in `seen`
    /// like every other).
    fn wait_for(&mut self, wanted: impl Fn(&Msg) -> bool) -> Msg {
        if let Some(msg) = self.seen.iter().find(|m| wanted(m)) {
            return msg.clone();
        }
        loop {
            let msg = self.watcher.recv(TIMEOUT);
            self.seen.push(msg.clone());
            if wanted(&msg) {
                return msg;
            }
        }
    }

    /// Fails unless a message with `payload` reached `topic`.
    fn assert_routed(&mut self, what: &str, topic: &str, payload: &[u8]) {
        self.catch_up();
        assert!(
            self.seen
                .iter()
                .any(|m| m.topic == topic && m.payload == payload),
            "{what}: {:?} never reached {topic}; the watcher saw {:?}",
            String::from_utf8_lossy(payload),
            self.topics()
        );
    }

    /// Fails when any message carrying one of `payloads` was routed, wherever to.
    fn assert_not_routed(&mut self, what: &str, payloads: &[Vec<u8>]) {
        self.catch_up();
        for msg in &self.seen {
            assert!(
                !payloads.contains(&msg.payload),
                "{what}: a refused message was routed to {}: {:?}",
                msg.topic,
                String::from_utf8_lossy(&msg.payload)
            );
        }
    }

    fn topics(&self) -> Vec<&str> {
        self.seen.iter().map(|m| m.topic.as_str()).collect()
    }
}

/// `template` with `${clientid}` replaced, prefixed to `topic`.
fn mounted(template: &str, client_id: &str, topic: &str) -> String {
    format!("{}{topic}", template.replace("${clientid}", client_id))
}

// ---- MQTT over TCP, TLS, WebSocket, WSS and QUIC -------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MqttTransport {
    /// `tcp:default`, the one MQTT listener without a mountpoint.
    Tcp,
    /// `tcp:mounted`, with the per-client mountpoint.
    MountedTcp,
    Tls,
    Ws,
    Wss,
    Quic,
}

/// A client of the MQTT matrix: paho-mqtt or MQTT.js through a carrier, or aioquic.
enum MqttClient {
    Script(ScriptClient),
    Quic(QuicClient, Version),
}

impl MqttClient {
    fn spawn(m: &Matrix, transport: MqttTransport, lib: Option<Lib>, version: Version) -> Self {
        let ca = m.pki.ca();
        let carrier = match transport {
            MqttTransport::Quic => {
                return MqttClient::Quic(QuicClient::spawn(m.quic_port, &ca), version)
            }
            MqttTransport::Tcp => Carrier::default(),
            MqttTransport::MountedTcp => Carrier {
                port: Some(m.mounted_tcp_port),
                ..Carrier::default()
            },
            MqttTransport::Tls => Carrier::tls(m.tls_port, &ca),
            MqttTransport::Ws => Carrier::ws(m.broker.ws_port),
            MqttTransport::Wss => Carrier::wss(m.wss_port, &ca),
        };
        let lib = lib.expect("a script library for a TCP-borne transport");
        MqttClient::Script(ScriptClient::spawn_via(lib, version, &m.broker, &carrier))
    }

    /// Connects with a clean session: the CONNACK's code, None when closed without one.
    fn login(&mut self, client_id: &str, credentials: Option<(&str, &str)>) -> Option<u8> {
        match self {
            MqttClient::Script(client) => {
                let mut opts = json!({ "client_id": client_id });
                if let Some((username, password)) = credentials {
                    opts["username"] = json!(username);
                    opts["password"] = json!(password);
                }
                match client.connect(opts) {
                    ConnectOutcome::Connack(ack) => {
                        if ack.reason_code != 0 {
                            // The close follows a refusal; reported later, it would
                            // answer for the next attempt.
                            client.expect_event("connection_lost", TIMEOUT);
                        }
                        Some(ack.reason_code)
                    }
                    ConnectOutcome::Lost(_) => None,
                }
            }
            MqttClient::Quic(client, version) => {
                // Each attempt on a QUIC connection of its own: a refusal closes it.
                client.handshake(&["mqtt"]).expect("QUIC handshake");
                client.try_login(*version, client_id, credentials)
            }
        }
    }

    /// Subscribes at QoS 1: the SUBACK's code.
    fn subscribe(&mut self, filter: &str) -> u8 {
        match self {
            MqttClient::Script(client) => client.subscribe(filter, 1),
            MqttClient::Quic(client, _) => client.subscribe(filter, 1),
        }
    }

    /// Publishes at QoS 1: the PUBACK's reason code (0 in 3.1.1, which has none).
    fn publish(&mut self, topic: &str, payload: &[u8]) -> u8 {
        match self {
            MqttClient::Script(client) => client.publish_reason(topic, payload, 1),
            MqttClient::Quic(client, _) => client.publish(topic, payload, 1).unwrap_or(255),
        }
    }

    fn recv(&mut self) -> Msg {
        match self {
            MqttClient::Script(client) => client.recv(TIMEOUT),
            MqttClient::Quic(client, _) => client.recv(),
        }
    }

    fn disconnect(&mut self) {
        match self {
            MqttClient::Script(client) => client.disconnect(),
            MqttClient::Quic(client, _) => client.disconnect(),
        }
    }
}

#[test]
fn mqtt_over_every_transport_refuses_what_the_password_file_and_acl_refuse() {
    let Some(mut m) = Matrix::start() else {
        return;
    };
    // Each library and version more than once; aioquic is the QUIC client.
    let rows: [(MqttTransport, Option<Lib>, Version); 6] = [
        (MqttTransport::Tcp, Some(Lib::Paho), Version::V5),
        (MqttTransport::MountedTcp, Some(Lib::MqttJs), Version::V311),
        (MqttTransport::Tls, Some(Lib::MqttJs), Version::V5),
        (MqttTransport::Ws, Some(Lib::Paho), Version::V311),
        (MqttTransport::Wss, Some(Lib::Paho), Version::V5),
        (MqttTransport::Quic, None, Version::V5),
    ];
    for (transport, lib, version) in rows {
        let client_name = lib.map_or("aioquic".to_owned(), |lib| format!("{lib:?}"));
        let what = format!("MQTT {transport:?} ({client_name} {version:?})");
        let v5 = version.is_v5();
        let (bad_credentials, not_authorized, invalid_client_id, refused_filter) = if v5 {
            (0x86, 0x87, 0x85, 0x87)
        } else {
            (4, 5, 2, 0x80)
        };
        let mountpoint = if transport == MqttTransport::Tcp {
            ""
        } else {
            MQTT_MOUNT
        };
        let client_id = unique_client_id("mx");
        let mount = |topic: &str| mounted(mountpoint, &client_id, topic);
        let mut alice = MqttClient::spawn(&m, transport, lib, version);

        let anonymous = alice.login(&client_id, None);
        assert!(
            anonymous == Some(bad_credentials) || anonymous == Some(not_authorized),
            "{what}: no credentials got {anonymous:?}"
        );
        assert_eq!(
            alice.login(&client_id, Some((ALICE.0, "not alice-secret"))),
            Some(bad_credentials),
            "{what}: wrong password"
        );
        assert_eq!(
            alice.login(&client_id, Some(ALICE)),
            Some(0),
            "{what}: right password"
        );
        assert_eq!(alice.subscribe("users/alice/#"), 1, "{what}: own prefix");
        let allowed = format!("{what}: allowed").into_bytes();
        assert_eq!(alice.publish("users/alice/hello", &allowed), 0, "{what}");
        assert_eq!(alice.recv().payload, allowed, "{what}: own message back");
        m.assert_routed(&what, &mount("users/alice/hello"), &allowed);

        // Outside the prefix: 5.0 refuses with 0x87; 3.1.1 has no refusal but to drop it.
        let denied = format!("{what}: denied publish").into_bytes();
        let reason = alice.publish("users/bob/x", &denied);
        assert_eq!(
            reason,
            if v5 { 0x87 } else { 0 },
            "{what}: ACL-denied publish"
        );
        assert_eq!(
            alice.subscribe("users/bob/#"),
            refused_filter,
            "{what}: ACL-denied subscribe"
        );

        // Bob naming alice's live session: refused, and alice keeps her connection.
        let mut other = MqttClient::spawn(&m, transport, lib, version);
        let bobs = other.login(&client_id, Some(BOB));
        assert_eq!(
            bobs,
            Some(not_authorized),
            "{what}: bob as alice's client id"
        );

        // What the refused subscription would have matched, then what alice's does: she
        // gets only the second, on the connection bob did not take over.
        m.publish(&mount("users/bob/bait"), b"bait");
        m.publish(&mount("users/alice/after"), b"after");
        let next = alice.recv();
        assert_eq!(
            (next.topic.as_str(), next.payload.as_slice()),
            ("users/alice/after", &b"after"[..]),
            "{what}: alice's next message"
        );
        m.assert_not_routed(&what, &[denied]);

        if !mountpoint.is_empty() {
            for hostile in ["+", "a/b"] {
                assert_eq!(
                    other.login(hostile, Some(ALICE)),
                    Some(invalid_client_id),
                    "{what}: client id {hostile:?} under {MQTT_MOUNT}"
                );
            }
        }
        alice.disconnect();
    }
}

// ---- MQTT-SN over UDP ----------------------------------------------------------------------

/// The return code at the end of mqtt-sn-12's error ("... not supported (3)").
fn sn_return_code(error: &str) -> Option<u8> {
    let (_, rest) = error.rsplit_once('(')?;
    rest.strip_suffix(')')?.parse().ok()
}

/// CONNECT as `client_id` from `source`: Ok, or the CONNACK's return code.
fn sn_connect(client: &mut SnClient, client_id: &str, source: &str) -> Result<(), Option<u8>> {
    client
        .try_run(
            "connect",
            json!({ "client_id": client_id, "source": source }),
            "connack",
        )
        .map(|_| ())
        .map_err(|error| sn_return_code(&error))
}

#[test]
fn mqttsn_refuses_what_the_password_file_and_acl_refuse() {
    let Some(mut m) = Matrix::start() else {
        return;
    };
    let what = "MQTT-SN UDP (mqtt-sn-12)";
    let not_supported = Err(Some(0x03));
    let mut probe = SnClient::spawn(&m.broker);
    // The override gives every client a user name; one no user has is refused.
    assert_eq!(
        sn_connect(&mut probe, "nobody", "127.0.0.1"),
        not_supported,
        "{what}: a client id no user has"
    );
    assert_eq!(
        sn_connect(&mut probe, "mallory", "127.0.0.1"),
        not_supported,
        "{what}: wrong password"
    );

    let mut alice = SnClient::spawn(&m.broker);
    sn_connect(&mut alice, "alice", "127.0.0.1").expect("right password");
    let own = "users/alice@127.0.0.1";
    alice
        .try_run(
            "subscribe",
            json!({ "topic": format!("{own}/#"), "qos": 1 }),
            "suback",
        )
        .unwrap_or_else(|e| panic!("{what}: own prefix: {e}"));
    let allowed = format!("{what}: allowed").into_bytes();
    alice.publish(&format!("{own}/hello"), &allowed, 1, false);
    assert_eq!(alice.recv().payload, allowed, "{what}: own message back");
    m.assert_routed(
        what,
        &mounted(SN_MOUNT, "alice", &format!("{own}/hello")),
        &allowed,
    );

    let denied = format!("{what}: denied publish").into_bytes();
    let published = alice.try_run(
        "publish",
        json!({ "topic": "users/bob/x", "payload": interop_tests::to_hex(&denied), "qos": 1 }),
        "published",
    );
    assert_eq!(
        published.map(|_| ()).map_err(|e| sn_return_code(&e)),
        not_supported,
        "{what}: ACL-denied publish"
    );
    let subscribed = alice.try_run(
        "subscribe",
        json!({ "topic": "users/bob/#", "qos": 1 }),
        "suback",
    );
    assert_eq!(
        subscribed.map(|_| ()).map_err(|e| sn_return_code(&e)),
        not_supported,
        "{what}: ACL-denied subscribe"
    );

    // The same client id from another host is another user: refused, and alice's live
    // session keeps its subscription.
    assert_eq!(
        sn_connect(&mut probe, "alice", "127.0.0.2"),
        not_supported,
        "{what}: alice@127.0.0.2 as alice@127.0.0.1's client id"
    );
    m.publish(&mounted(SN_MOUNT, "alice", "users/bob/bait"), b"bait");
    m.publish(
        &mounted(SN_MOUNT, "alice", &format!("{own}/after")),
        b"after",
    );
    let next = alice.recv();
    assert_eq!(
        (next.topic.as_deref(), next.payload.as_slice()),
        (Some(format!("{own}/after").as_str()), &b"after"[..]),
        "{what}: alice's next message"
    );
    m.assert_not_routed(what, &[denied]);

    // Users exist for these, so only the mountpoint refuses them.
    for hostile in ["+", "a/b"] {
        assert_eq!(
            sn_connect(&mut probe, hostile, "127.0.0.1"),
            not_supported,
            "{what}: client id {hostile:?} under {SN_MOUNT}"
        );
    }
    alice.disconnect();
}

// ---- CoAP over UDP, TCP and WebSocket ------------------------------------------------------

/// The query naming `client_id` with these credentials.
fn coap_query(client_id: &str, credentials: Option<(&str, &str)>) -> String {
    match credentials {
        Some((username, password)) => {
            format!("clientid={client_id}&username={username}&password={password}")
        }
        None => format!("clientid={client_id}"),
    }
}

#[test]
fn coap_over_every_transport_refuses_what_the_password_file_and_acl_refuse() {
    let Some(mut m) = Matrix::start() else {
        return;
    };
    let host = m.broker.host.clone();
    let rows = [
        ("UDP", format!("coap://{host}:{}", m.broker.coap_port)),
        (
            "TCP",
            format!("coap+tcp://{host}:{}", m.broker.coap_tcp_port),
        ),
        ("WS", format!("coap+ws://{host}:{}", m.broker.coap_ws_port)),
    ];
    for (transport, base) in rows {
        let what = format!("CoAP {transport} (aiocoap)");
        let client_id = unique_client_id("coapx");
        let q = |credentials| coap_query(&client_id, credentials);
        let mount = |topic: &str| mounted(COAP_MOUNT, &client_id, topic);
        let mut alice = AiocoapClient::spawn_to(base.clone());
        let mut refused = Vec::new();

        for (case, credentials, code) in [
            ("no credentials", None, "4.01"),
            (
                "wrong password",
                Some((ALICE.0, "not alice-secret")),
                "4.01",
            ),
        ] {
            let payload = format!("{what}: {case}").into_bytes();
            let answer = alice.request(
                "POST",
                &format!("/ps/users/alice/x?{}", q(credentials)),
                &payload,
                false,
            );
            assert_eq!(answer.code, code, "{what}: {case}");
            refused.push(payload);
        }
        let allowed = format!("{what}: allowed").into_bytes();
        let answer = alice.request(
            "POST",
            &format!("/ps/users/alice/hello?{}&qos=1", q(Some(ALICE))),
            &allowed,
            false,
        );
        assert_eq!(answer.code, "2.04", "{what}: right password");
        m.assert_routed(&what, &mount("users/alice/hello"), &allowed);

        // ACL refusals are 4.01, as EMQX answers them.
        let denied = format!("{what}: denied publish").into_bytes();
        let answer = alice.request(
            "POST",
            &format!("/ps/users/bob/x?{}", q(Some(ALICE))),
            &denied,
            false,
        );
        assert_eq!(answer.code, "4.01", "{what}: ACL-denied publish");
        refused.push(denied);
        assert_eq!(
            alice.observe(&format!("/ps/users/bob/%23?{}", q(Some(ALICE)))),
            "4.01",
            "{what}: ACL-denied observe"
        );
        assert_eq!(
            alice.observe(&format!("/ps/users/alice/%23?{}", q(Some(ALICE)))),
            "2.05",
            "{what}: observe under the own prefix"
        );

        // Bob naming alice's client id from another endpoint: 4.03, and alice's live
        // observation stays hers, where she is.
        let mut other = AiocoapClient::spawn_to(base.clone());
        let bobs = format!("{what}: bob as alice's client id").into_bytes();
        let answer = other.request(
            "POST",
            &format!("/ps/users/bob/x?{}", coap_query(&client_id, Some(BOB))),
            &bobs,
            false,
        );
        assert_eq!(answer.code, "4.03", "{what}: bob as alice's client id");
        refused.push(bobs);
        for hostile in ["%2B", "a/b"] {
            let payload = format!("{what}: client id {hostile}").into_bytes();
            let answer = other.request(
                "POST",
                &format!("/ps/users/alice/x?{}", coap_query(hostile, Some(ALICE))),
                &payload,
                false,
            );
            assert_eq!(
                answer.code, "4.00",
                "{what}: client id {hostile:?} under {COAP_MOUNT}"
            );
            refused.push(payload);
        }

        m.publish(&mount("users/bob/bait"), b"bait");
        m.publish(&mount("users/alice/after"), b"after");
        assert_eq!(
            alice.notification().payload,
            b"after",
            "{what}: alice's next notification"
        );
        m.assert_not_routed(&what, &refused);
    }

    // libcoap's coap-client, one request (and one UDP port) each; it prints the code of
    // an error response only.
    let what = "CoAP UDP (coap-client)";
    let client_id = unique_client_id("coapcli");
    let code = |path: &str, query: String, payload: &str| {
        let (ok, _, stderr) = coap_client(
            &m.broker,
            &["-m", "post", "-e", payload],
            &format!("{path}?{query}"),
        );
        assert!(ok, "{what}: coap-client failed: {stderr}");
        stderr.split_whitespace().next().map(str::to_owned)
    };
    let mut refused = Vec::new();
    for (case, path, client, credentials, expected) in [
        (
            "no credentials",
            "/ps/users/alice/x",
            client_id.as_str(),
            None,
            Some("4.01"),
        ),
        (
            "wrong password",
            "/ps/users/alice/x",
            &client_id,
            Some((ALICE.0, "not alice-secret")),
            Some("4.01"),
        ),
        (
            "ACL-denied publish",
            "/ps/users/bob/x",
            &client_id,
            Some(ALICE),
            Some("4.01"),
        ),
        (
            "client id \"+\"",
            "/ps/users/alice/x",
            "%2B",
            Some(ALICE),
            Some("4.00"),
        ),
        (
            "client id \"a/b\"",
            "/ps/users/alice/x",
            "a/b",
            Some(ALICE),
            Some("4.00"),
        ),
        (
            "right password",
            "/ps/users/alice/cli",
            &client_id,
            Some(ALICE),
            None,
        ),
    ] {
        let payload = format!("{what}: {case}");
        let got = code(path, coap_query(client, credentials), &payload);
        assert_eq!(got.as_deref(), expected, "{what}: {case}");
        if expected.is_some() {
            refused.push(payload.into_bytes());
        }
    }
    m.assert_routed(
        what,
        &mounted(COAP_MOUNT, &client_id, "users/alice/cli"),
        format!("{what}: right password").as_bytes(),
    );
    m.assert_not_routed(what, &refused);
}

// ---- LwM2M over UDP ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Lwm2mLib {
    /// Prints `registered rd/EP`, or `error register CODE`.
    NodeLib,
    /// Prints `registered CODE`.
    CoapNode,
}

/// A device registering `endpoint`, with `imei` and `password` queries when `credentials`
/// are given; the code of the answer.
fn lwm2m_device(
    m: &Matrix,
    lib: Lwm2mLib,
    endpoint: &str,
    credentials: Option<(&str, &str)>,
) -> (Proc, String) {
    let (package, script) = match lib {
        Lwm2mLib::NodeLib => ("lwm2m-node-lib", "lwm2m_client.js"),
        Lwm2mLib::CoapNode => ("coap-node", "lwm2m_coap_node.js"),
    };
    let query =
        credentials.map(|(username, password)| format!("imei={username}&password={password}"));
    let mut device = node_device(&m.broker, endpoint, package, script, query.as_deref());
    let code = loop {
        match device.next_line(TIMEOUT) {
            Line::Line(line) => {
                if let Some(code) = line.strip_prefix("error register ") {
                    break code.to_owned();
                }
                if let Some(answer) = line.strip_prefix("registered ") {
                    break match lib {
                        Lwm2mLib::NodeLib => {
                            assert_eq!(answer, format!("rd/{endpoint}"), "location");
                            "2.01".to_owned()
                        }
                        Lwm2mLib::CoapNode => answer.to_owned(),
                    };
                }
            }
            other => panic!(
                "{package} {endpoint}: no registration answer ({other:?}); stderr:\n{}",
                device.stderr()
            ),
        }
    };
    (device, code)
}

#[test]
fn lwm2m_refuses_what_the_password_file_and_acl_refuse() {
    let Some(mut m) = Matrix::start() else {
        return;
    };
    let what = "LwM2M UDP";
    let endpoint = unique_client_id("lwx");
    let others: Vec<String> = (0..3).map(|_| unique_client_id("lwy")).collect();
    let (anonymous, carols, daves) = (&others[0], &others[1], &others[2]);
    // The user name is `imei`, or the endpoint name without it.
    for (case, lib, ep, credentials, expected) in [
        (
            "no credentials",
            Lwm2mLib::CoapNode,
            anonymous.as_str(),
            None,
            "4.01",
        ),
        (
            "wrong password",
            Lwm2mLib::NodeLib,
            &endpoint,
            Some((ALICE.0, "not alice-secret")),
            "4.01",
        ),
        (
            "register event ACL-denied",
            Lwm2mLib::CoapNode,
            carols,
            Some(CAROL),
            "4.03",
        ),
        (
            "command topic ACL-denied",
            Lwm2mLib::NodeLib,
            daves,
            Some(DAVE),
            "4.03",
        ),
        (
            "endpoint \"+\"",
            Lwm2mLib::NodeLib,
            "+",
            Some(ALICE),
            "4.00",
        ),
        (
            "endpoint \"a/b\"",
            Lwm2mLib::CoapNode,
            "a/b",
            Some(ALICE),
            "4.00",
        ),
    ] {
        let (_device, code) = lwm2m_device(&m, lib, ep, credentials);
        assert_eq!(code, expected, "{what} ({lib:?}): {case}");
    }

    let (_alice, code) = lwm2m_device(&m, Lwm2mLib::NodeLib, &endpoint, Some(ALICE));
    assert_eq!(code, "2.01", "{what}: right password");
    let responses = format!("lwm2m/{endpoint}/up/resp");
    let is = |msg_type: &'static str| {
        let responses = responses.clone();
        move |msg: &Msg| msg.topic == responses && json_of(msg)["msgType"] == msg_type
    };
    m.wait_for(is("register"));

    // Bob registering alice's endpoint from another address: 4.03, and commands still
    // reach alice's device. The read names a resource whose value tells the libraries
    // apart, in case one went to bob's.
    let (_bob, code) = lwm2m_device(&m, Lwm2mLib::CoapNode, &endpoint, Some(BOB));
    assert_eq!(code, "4.03", "{what}: bob as alice's endpoint");
    let read = json!({"reqID": 1, "msgType": "read", "data": {"path": "/3/0/1"}});
    m.publish(
        &format!("lwm2m/{endpoint}/dn/cmd"),
        read.to_string().as_bytes(),
    );
    // No device may answer for dave's refused endpoint.
    m.publish(
        &format!("lwm2m/{daves}/dn/cmd"),
        read.to_string().as_bytes(),
    );
    let answer = json_of(&m.wait_for(is("read")));
    assert_eq!(
        answer["data"]["content"],
        json!([{"path": "/3/0/1", "value": "Lightweight M2M Client"}]),
        "{what}: alice's device answers: {answer}"
    );
    m.catch_up();
    let registered = m.seen.iter().filter(|msg| is("register")(msg)).count();
    assert_eq!(registered, 1, "{what}: one register event, alice's");
    for ep in [anonymous, carols, daves] {
        let up = format!("lwm2m/{ep}/up/");
        assert!(
            !m.seen.iter().any(|msg| msg.topic.starts_with(&up)),
            "{what}: a refused device's event or answer was published: {:?}",
            m.topics()
        );
    }
}

fn json_of(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload).unwrap_or(Value::Null)
}

// ---- STOMP over TCP and WebSocket ----------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum StompTransport {
    /// stomp.py
    Tcp,
    /// @stomp/stompjs
    Ws,
}

fn stomp_spawn(m: &Matrix, transport: StompTransport) -> StompClient {
    match transport {
        StompTransport::Tcp => StompPy::spawn(),
        StompTransport::Ws => StompJs::spawn(&m.broker),
    }
}

/// CONNECT with `client-id`: the CONNECTED frame, or the ERROR frame (after which the
/// connection must close).
fn stomp_connect(
    m: &Matrix,
    client: &mut StompClient,
    transport: StompTransport,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<StompEvent, StompEvent> {
    let mut fields = json!({});
    if let Some((login, passcode)) = credentials {
        fields["login"] = json!(login);
        fields["passcode"] = json!(passcode);
    }
    match transport {
        StompTransport::Tcp => {
            fields["client_id"] = json!(client_id);
            client.connect_tcp(&m.broker, "1.2", fields);
        }
        StompTransport::Ws => {
            fields["headers"] = json!({ "client-id": client_id });
            client.connect_ws(fields);
        }
    }
    stomp_answer(client, "connected")
}

/// The next `kind` frame, or the ERROR frame that came instead (the close must follow it).
fn stomp_answer(client: &mut StompClient, kind: &str) -> Result<StompEvent, StompEvent> {
    let event = client.expect_any(&[kind, "error"]);
    if event.kind == "error" {
        client.expect("disconnected");
        return Err(event);
    }
    Ok(event)
}

#[test]
fn stomp_over_tcp_and_websocket_refuses_what_the_password_file_and_acl_refuse() {
    let Some(mut m) = Matrix::start() else {
        return;
    };
    for transport in [StompTransport::Tcp, StompTransport::Ws] {
        let what = format!("STOMP {transport:?}");
        let client_id = unique_client_id("stx");
        let mount = |client_id: &str, topic: &str| mounted(STOMP_MOUNT, client_id, topic);
        let mut probe = stomp_spawn(&m, transport);
        for (case, credentials) in [
            ("no credentials", None),
            ("wrong password", Some((ALICE.0, "not alice-secret"))),
        ] {
            let answer = stomp_connect(&m, &mut probe, transport, &client_id, credentials);
            let error = answer.expect_err(&format!("{what}: {case} connected"));
            assert!(
                error
                    .header("message")
                    .unwrap_or("")
                    .starts_with("Login Failed"),
                "{what}: {case}: {error:?}"
            );
        }

        let mut alice = stomp_spawn(&m, transport);
        stomp_connect(&m, &mut alice, transport, &client_id, Some(ALICE))
            .unwrap_or_else(|e| panic!("{what}: right password refused: {e:?}"));
        alice.subscribe("users/alice/#", "own", "auto");
        let allowed = format!("{what}: allowed").into_bytes();
        alice.send("users/alice/hello", &allowed, json!({}));
        assert_eq!(
            alice.expect("message").body,
            allowed,
            "{what}: own message back"
        );
        m.assert_routed(&what, &mount(&client_id, "users/alice/hello"), &allowed);

        // Bob naming alice's live session.
        let error = stomp_connect(&m, &mut probe, transport, &client_id, Some(BOB))
            .expect_err(&format!("{what}: bob connected as alice's client id"));
        assert_eq!(
            error.header("message"),
            Some("the session belongs to another user"),
            "{what}: {error:?}"
        );
        for hostile in ["+", "a/b"] {
            stomp_connect(&m, &mut probe, transport, hostile, Some(ALICE)).expect_err(&format!(
                "{what}: client id {hostile:?} under {STOMP_MOUNT} connected"
            ));
        }

        // A SEND and a SUBSCRIBE outside the prefix: an ERROR frame, then the close.
        let other_id = unique_client_id("sty");
        let mut denied_client = stomp_spawn(&m, transport);
        stomp_connect(&m, &mut denied_client, transport, &other_id, Some(ALICE))
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let denied = format!("{what}: denied send").into_bytes();
        denied_client.send("users/bob/x", &denied, json!({}));
        denied_client.expect("error");
        denied_client.expect("disconnected");
        stomp_connect(&m, &mut denied_client, transport, &other_id, Some(ALICE))
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        denied_client.subscribe("users/bob/#", "theirs", "auto");
        denied_client.expect("error");
        denied_client.expect("disconnected");
        // The named session outlives the connection: the refused subscription is not in it.
        stomp_connect(&m, &mut denied_client, transport, &other_id, Some(ALICE))
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        denied_client.subscribe("users/alice/#", "own", "auto");
        // Frames of one connection are taken in order: once this comes back, the
        // subscription is in place for what others publish.
        denied_client.send("users/alice/ready", b"ready", json!({}));
        assert_eq!(denied_client.expect("message").body, b"ready", "{what}");

        m.publish(&mount(&other_id, "users/bob/bait"), b"bait");
        m.publish(&mount(&other_id, "users/alice/after"), b"after");
        m.publish(&mount(&client_id, "users/alice/after"), b"after");
        assert_eq!(
            denied_client.expect("message").body,
            b"after",
            "{what}: next message after a refused subscription"
        );
        assert_eq!(
            alice.expect("message").body,
            b"after",
            "{what}: alice's next message after bob's attempt"
        );
        m.assert_not_routed(&what, &[denied]);
    }
}
