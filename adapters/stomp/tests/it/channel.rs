//! The STOMP channel and the broker driven frame by frame on a virtual clock: no socket,
//! no sleeping. Other STOMP channels on the same broker play the other clients.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_stomp::frame::{encode, Command, Decoder, Frame, FrameLimits, Version};
use adapter_stomp::{Settings, StompChannel, STOMP_NAMESPACE};
use bytes::{Bytes, BytesMut};
use gateway_config::{ByteRate, Rate, StompSharedRedelivery};
use mqtt_core::auth::{
    Action, Auth, AuthOutcome, Authenticator, Authorizer, ClientInfo, DenyReason,
};
use mqtt_core::broker::Broker;
use mqtt_core::codec::QoS;
use mqtt_core::protocol::{CertificateIdentity, Flow};
use mqtt_core::rate::PublishRates;
use mqtt_core::session::SessionKey;
use mqtt_core::storage::MapStore;
use mqtt_core::testing::{self, broker, recovered_broker, NoWakeup};

/// Anyone anonymous; a user whose passcode is its own name; `mallory` may neither publish
/// nor subscribe under `secret`.
struct TestUsers;

impl Authenticator for TestUsers {
    fn authenticate(&self, client: &ClientInfo, password: Option<&[u8]>) -> AuthOutcome {
        match (client.username.as_deref(), password) {
            (None, _) => AuthOutcome::Allow,
            (Some(user), Some(passcode)) if user.as_bytes() == passcode => AuthOutcome::Allow,
            _ => AuthOutcome::Deny(DenyReason::BadCredentials),
        }
    }
}

impl Authorizer for TestUsers {
    fn authorize(&self, client: &ClientInfo, _action: Action, topic: &str) -> bool {
        client.username.as_deref() != Some("mallory") || !topic.starts_with("secret")
    }
}

fn users_broker(now: Instant) -> Arc<Broker> {
    let users = Arc::new(TestUsers);
    testing::broker_with_auth(
        Auth {
            authenticator: users.clone(),
            authorizer: users,
        },
        now,
    )
}

fn settings(edit: impl FnOnce(&mut Settings)) -> Arc<Settings> {
    let config = testing::default_config();
    let mut settings = Settings::from_config(
        Arc::from("tcp:test"),
        &config.gateway.stomp,
        "",
        PublishRates::UNLIMITED,
    );
    edit(&mut settings);
    Arc::new(settings)
}

/// Another client's QoS 1 message.
fn publish(broker: &Broker, topic: &str, payload: &[u8], now: Instant) {
    testing::publish(broker, topic, payload, QoS::AtLeastOnce, now);
}

/// One STOMP 1.2 client: frames in, the frames the channel answered out.
struct Client {
    channel: StompChannel,
    decoder: Decoder,
    out: BytesMut,
    /// Frames that came behind the one a helper waited for (CONNECTED, RECEIPT).
    pending: Vec<Frame>,
    closed: bool,
}

/// Unnamed clients are named after their seed, so each gets its own.
static NEXT_SEED: AtomicU64 = AtomicU64::new(1);

impl Client {
    /// Connects, with `client-id` when `client_id` is given.
    fn connect(
        broker: &Arc<Broker>,
        settings: &Arc<Settings>,
        client_id: Option<&str>,
        now: Instant,
    ) -> Client {
        Client::connect_as(broker, settings, client_id, None, now)
    }

    /// Connects with `login` and a passcode of the same name when `login` is given.
    fn connect_as(
        broker: &Arc<Broker>,
        settings: &Arc<Settings>,
        client_id: Option<&str>,
        login: Option<&str>,
        now: Instant,
    ) -> Client {
        let (mut client, mut answer) = Client::try_connect(broker, settings, client_id, login, now);
        assert_eq!(answer[0].command, Command::Connected, "{answer:?}");
        // A resumed session's subscriptions deliver at once.
        client.pending = answer.split_off(1);
        client
    }

    /// Sends CONNECT; returns the client and what the channel answered.
    fn try_connect(
        broker: &Arc<Broker>,
        settings: &Arc<Settings>,
        client_id: Option<&str>,
        login: Option<&str>,
        now: Instant,
    ) -> (Client, Vec<Frame>) {
        Client::try_connect_with(broker, settings, client_id, login, &[], now)
    }

    /// [`Client::try_connect`] with more CONNECT headers.
    fn try_connect_with(
        broker: &Arc<Broker>,
        settings: &Arc<Settings>,
        client_id: Option<&str>,
        login: Option<&str>,
        headers: &[(&str, &str)],
        now: Instant,
    ) -> (Client, Vec<Frame>) {
        let client = Client::open(broker, settings, CertificateIdentity::default(), now);
        client.send_connect(client_id, login, headers, now)
    }

    /// A connection not yet sent anything, whose TLS layer established `certificate`.
    fn open(
        broker: &Arc<Broker>,
        settings: &Arc<Settings>,
        certificate: CertificateIdentity,
        now: Instant,
    ) -> Client {
        let mut decoder = Decoder::new(FrameLimits {
            max_headers: 64,
            max_headers_length: 4096,
            max_body_length: 1 << 20,
        });
        decoder.set_version(Version::V1_2);
        Client {
            channel: StompChannel::new(
                broker.clone(),
                settings.clone(),
                None,
                Arc::new(NoWakeup),
                NEXT_SEED.fetch_add(1, Ordering::Relaxed),
                now,
            )
            .with_certificate_identity(certificate),
            decoder,
            out: BytesMut::new(),
            pending: Vec::new(),
            closed: false,
        }
    }

    /// Sends CONNECT with `client-id` and `login` (with a passcode of the same name) when
    /// given, and `headers`.
    fn send_connect(
        mut self,
        client_id: Option<&str>,
        login: Option<&str>,
        headers: &[(&str, &str)],
        now: Instant,
    ) -> (Client, Vec<Frame>) {
        let mut connect = Frame::new(Command::Connect).with_header("accept-version", "1.2");
        if let Some(id) = client_id {
            connect = connect.with_header("client-id", id);
        }
        if let Some(login) = login {
            connect = connect
                .with_header("login", login)
                .with_header("passcode", login);
        }
        for (name, value) in headers {
            connect = connect.with_header(name, *value);
        }
        let answer = self.send(connect, now);
        (self, answer)
    }

    /// Sends one frame; returns what the channel answered.
    fn send(&mut self, frame: Frame, now: Instant) -> Vec<Frame> {
        let mut input = BytesMut::new();
        encode(&frame, Version::V1_2, &mut input);
        if self.channel.handle_input(&mut input, &mut self.out, now) == Flow::Close {
            self.closed = true;
        }
        self.frames()
    }

    fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
        headers
            .iter()
            .fold(Frame::new(command), |frame, (name, value)| {
                frame.with_header(name, *value)
            })
    }

    /// Subscribes as `s`; returns the MESSAGE frames sent since the last look, the RECEIPT
    /// left out.
    fn subscribe(&mut self, destination: &str, ack: &str, now: Instant) -> Vec<Frame> {
        let answer = self.send(
            Client::frame(
                Command::Subscribe,
                &[
                    ("destination", destination),
                    ("id", "s"),
                    ("ack", ack),
                    ("receipt", "subscribed"),
                ],
            ),
            now,
        );
        let (receipts, messages): (Vec<Frame>, Vec<Frame>) = answer
            .into_iter()
            .partition(|f| f.command == Command::Receipt);
        assert_eq!(receipts.len(), 1, "{messages:?}");
        messages
    }

    /// What the broker queued for this client, as the channel sends it.
    fn wake(&mut self, now: Instant) -> Vec<Frame> {
        if self.channel.handle_wakeup(&mut self.out, now) == Flow::Close {
            self.closed = true;
        }
        self.frames()
    }

    fn tick(&mut self, now: Instant) -> Vec<Frame> {
        if self.channel.handle_timeout(&mut self.out, now) == Flow::Close {
            self.closed = true;
        }
        self.frames()
    }

    fn frames(&mut self) -> Vec<Frame> {
        let mut frames = std::mem::take(&mut self.pending);
        frames.extend(std::iter::from_fn(|| {
            self.decoder
                .decode(&mut self.out)
                .expect("well-formed output")
        }));
        frames
    }

    fn close(mut self, now: Instant) {
        self.channel.handle_closed(now);
    }
}

fn bodies(frames: &[Frame]) -> Vec<&[u8]> {
    frames
        .iter()
        .filter(|f| f.command == Command::Message)
        .map(|f| &f.body[..])
        .collect()
}

#[test]
fn a_timed_out_transaction_leaves_nothing_behind() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let timeout = Duration::from_secs(5);
    let settings = settings(|s| s.transaction_timeout = timeout);
    let mut watcher = Client::connect(&broker, &settings, None, t0);
    watcher.subscribe("out/#", "auto", t0);
    let mut client = Client::connect(&broker, &settings, Some("tx-client"), t0);
    client.subscribe("in/t", "client", t0);
    publish(&broker, "in/t", b"held", t0);
    let message = client.wake(t0);
    assert_eq!(bodies(&message), vec![&b"held"[..]]);
    let ack_id = message[0].header("ack").unwrap().to_owned();

    // A committed transaction is published, so the watcher does see what a commit sends.
    client.send(Client::frame(Command::Begin, &[("transaction", "ok")]), t0);
    client.send(
        Client::frame(
            Command::Send,
            &[("destination", "out/committed"), ("transaction", "ok")],
        ),
        t0,
    );
    client.send(Client::frame(Command::Commit, &[("transaction", "ok")]), t0);
    assert_eq!(bodies(&watcher.wake(t0)).len(), 1);

    client.send(Client::frame(Command::Begin, &[("transaction", "tx")]), t0);
    client.send(
        Client::frame(
            Command::Send,
            &[("destination", "out/never"), ("transaction", "tx")],
        ),
        t0,
    );
    client.send(
        Client::frame(
            Command::Ack,
            &[("id", ack_id.as_str()), ("transaction", "tx")],
        ),
        t0,
    );
    assert_eq!(client.channel.next_deadline(), Some(t0 + timeout));
    let almost = t0 + timeout - Duration::from_millis(1);
    client.tick(almost);
    let expired = t0 + timeout;
    client.tick(expired);
    assert!(
        !client.closed,
        "a timed-out transaction does not close the connection"
    );
    assert_eq!(client.channel.next_deadline(), None, "no timer left");

    // It is gone: COMMIT names no open transaction, and nothing was published.
    let answer = client.send(
        Client::frame(Command::Commit, &[("transaction", "tx"), ("receipt", "c")]),
        expired,
    );
    assert_eq!(answer[0].command, Command::Error);
    assert_eq!(answer[0].header("message"), Some("no open transaction tx"));
    assert!(client.closed);
    assert!(
        bodies(&watcher.wake(expired)).is_empty(),
        "its SEND was never published"
    );

    // Its ACK was never applied: the session hands the message out again.
    client.close(expired);
    let mut again = Client::connect(&broker, &settings, Some("tx-client"), expired);
    let resent = again.subscribe("in/t", "client", expired);
    assert_eq!(bodies(&resent), vec![&b"held"[..]]);
}

#[test]
fn unacknowledged_messages_are_bounded_by_max_unacked() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = settings(|s| s.max_unacked = 2);
    let mut client = Client::connect(&broker, &settings, None, t0);
    client.subscribe("t", "client-individual", t0);
    for body in ["1", "2", "3"] {
        publish(&broker, "t", body.as_bytes(), t0);
    }
    let sent = client.wake(t0);
    assert_eq!(
        bodies(&sent),
        vec![&b"1"[..], b"2"],
        "two in flight at most"
    );
    assert!(client.wake(t0).is_empty(), "the third waits");
    let ack = sent[1].header("ack").unwrap().to_owned();
    let answer = client.send(Client::frame(Command::Ack, &[("id", ack.as_str())]), t0);
    assert_eq!(bodies(&answer), vec![&b"3"[..]], "an ACK makes room");
}

/// A client-individual member of `$share/g/jobs` holds two messages sent and one queued
/// (max_unacked 2) when its connection closes without an ACK.
#[test]
fn shared_messages_a_client_leaves_unacknowledged_follow_shared_redelivery() {
    for (mode, named, to_group) in [
        (StompSharedRedelivery::Group, true, true),
        (StompSharedRedelivery::Group, false, true),
        (StompSharedRedelivery::Session, true, false),
        // A session that ends with its connection cannot keep them.
        (StompSharedRedelivery::Session, false, true),
    ] {
        let case = format!("{mode:?}, client-id: {named}");
        let t0 = Instant::now();
        let broker = broker(t0);
        let settings = settings(|s| {
            s.shared_redelivery = mode;
            s.max_unacked = 2;
        });
        let client_id = named.then_some("leaver");
        let mut leaver = Client::connect(&broker, &settings, client_id, t0);
        leaver.subscribe("$share/g/jobs", "client-individual", t0);
        for body in ["j1", "j2", "j3"] {
            publish(&broker, "jobs", body.as_bytes(), t0);
        }
        assert_eq!(bodies(&leaver.wake(t0)), vec![&b"j1"[..], b"j2"], "{case}");

        let mut other = Client::connect(&broker, &settings, None, t0);
        other.subscribe("$share/g/jobs", "auto", t0);
        // Plain subscribers are not part of the group.
        let mut plain = Client::connect(&broker, &settings, None, t0);
        plain.subscribe("jobs", "auto", t0);
        leaver.close(t0);

        let handed = other.wake(t0);
        let back = if to_group {
            assert_eq!(
                bodies(&handed),
                vec![&b"j1"[..], b"j2", b"j3"],
                "{case}: in order"
            );
            assert_eq!(handed[0].header("subscription"), Some("s"));
            Vec::new()
        } else {
            assert!(handed.is_empty(), "{case}: {handed:?}");
            vec![&b"j1"[..], b"j2", b"j3"]
        };
        assert!(plain.wake(t0).is_empty(), "{case}");
        if named {
            let mut returning = Client::connect(&broker, &settings, client_id, t0);
            let resent = returning.subscribe("$share/g/jobs", "client-individual", t0);
            let mut got = bodies(&resent)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>();
            // Past the window of two, the rest follows the first ACKs.
            if got.len() == 2 {
                let frames = returning.send(Client::frame(Command::Ack, &[("id", "1")]), t0);
                got.extend(bodies(&frames).into_iter().map(<[u8]>::to_vec));
            }
            assert_eq!(got, back, "{case}: what the returning session gets");
        }
    }
}

fn receipt_ids(frames: &[Frame]) -> Vec<&str> {
    frames
        .iter()
        .filter(|f| f.command == Command::Receipt)
        .filter_map(|f| f.header("receipt-id"))
        .collect()
}

#[test]
fn receipts_of_sends_wait_until_the_message_is_durable_and_keep_their_order() {
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = recovered_broker(store.clone(), t0);
    let settings = settings(|_| {});
    // A persistent subscriber, so a SEND to its destination has something to store. Its
    // SUBSCRIBE's RECEIPT, too, says the subscription is kept.
    let mut keeper = Client::connect(&broker, &settings, Some("keeper"), t0);
    store.hold_back();
    let subscribe = Client::frame(
        Command::Subscribe,
        &[
            ("destination", "kept/t"),
            ("id", "s"),
            ("ack", "client"),
            ("receipt", "sub"),
        ],
    );
    assert!(receipt_ids(&keeper.send(subscribe, t0)).is_empty());
    store.release();
    assert_eq!(receipt_ids(&keeper.wake(t0)), vec!["sub"]);
    keeper.close(t0);

    let mut sender = Client::connect(&broker, &settings, None, t0);
    store.hold_back();
    let send = |destination: &str, receipt: &str| {
        Client::frame(
            Command::Send,
            &[("destination", destination), ("receipt", receipt)],
        )
    };
    assert!(receipt_ids(&sender.send(send("kept/t", "r1"), t0)).is_empty());
    // Nothing of this one is stored, but its RECEIPT must not overtake the first.
    assert!(receipt_ids(&sender.send(send("nobody/t", "r2"), t0)).is_empty());
    assert!(
        receipt_ids(&sender.wake(t0)).is_empty(),
        "nothing durable yet"
    );
    // A DISCONNECT with a receipt closes only once every RECEIPT before it has gone.
    let answer = sender.send(
        Client::frame(Command::Disconnect, &[("receipt", "bye")]),
        t0,
    );
    assert!(answer.is_empty() && !sender.closed, "{answer:?}");

    store.release();
    assert_eq!(receipt_ids(&sender.wake(t0)), vec!["r1", "r2", "bye"]);
    assert!(sender.closed);
    assert_eq!(store.count(mqtt_core::storage::Table::Queues), 1);
}

#[test]
fn a_full_store_refuses_a_send_that_asks_for_a_receipt_with_an_error() {
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = recovered_broker(store.clone(), t0);
    let settings = settings(|_| {});
    let mut keeper = Client::connect(&broker, &settings, Some("keeper"), t0);
    keeper.subscribe("kept/t", "client", t0);
    store.set_full(true);

    // Without a receipt nothing was promised: it goes at most once, stored nowhere.
    let mut sender = Client::connect(&broker, &settings, None, t0);
    sender.send(
        Client::frame(Command::Send, &[("destination", "kept/t")]),
        t0,
    );
    assert_eq!(bodies(&keeper.wake(t0)), vec![&b""[..]]);
    assert_eq!(store.count(mqtt_core::storage::Table::Queues), 0);

    let answer = sender.send(
        Client::frame(
            Command::Send,
            &[("destination", "kept/t"), ("receipt", "r1")],
        ),
        t0,
    );
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].command, Command::Error);
    assert_eq!(
        answer[0].header("message"),
        Some("message refused: the store is full")
    );
    assert_eq!(answer[0].header("receipt-id"), Some("r1"));
    assert!(sender.closed, "an ERROR closes the connection");
    assert!(
        keeper.wake(t0).is_empty(),
        "the refused message went nowhere"
    );
}

#[test]
fn a_persistent_session_gets_its_unacknowledged_messages_again_after_a_crash() {
    use mqtt_core::storage::Table;
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = recovered_broker(store.clone(), t0);
    let settings = settings(|_| {});
    let mut client = Client::connect(&broker, &settings, Some("durable"), t0);
    let subscribed = client.send(
        Client::frame(
            Command::Subscribe,
            &[
                ("destination", "jobs/+"),
                ("id", "my-jobs"),
                ("ack", "client-individual"),
            ],
        ),
        t0,
    );
    assert!(subscribed.is_empty(), "{subscribed:?}");
    for body in ["1", "2", "3"] {
        publish(&broker, "jobs/a", body.as_bytes(), t0);
    }
    let sent = client.wake(t0);
    assert_eq!(bodies(&sent), vec![&b"1"[..], b"2", b"3"]);
    let ack = sent[1].header("ack").unwrap().to_owned();
    client.send(Client::frame(Command::Ack, &[("id", ack.as_str())]), t0);
    assert_eq!(
        store.count(Table::Queues),
        2,
        "the acknowledged one is deleted"
    );
    assert_eq!(
        store.count(Table::Inflight),
        2,
        "the others are stored as sent"
    );
    // The crash: the broker and the connection vanish without a word.
    drop(client);
    drop(broker);

    let broker = recovered_broker(store.clone(), t0);
    publish(&broker, "jobs/b", b"4", t0);
    let mut client = Client::connect(&broker, &settings, Some("durable"), t0);
    let resent = client.wake(t0);
    assert_eq!(bodies(&resent), vec![&b"1"[..], b"3", b"4"]);
    assert!(
        resent
            .iter()
            .all(|f| f.header("subscription") == Some("my-jobs") && f.header("ack").is_some()),
        "{resent:?}"
    );
    for frame in &resent {
        let ack = frame.header("ack").unwrap();
        client.send(Client::frame(Command::Ack, &[("id", ack)]), t0);
    }
    assert_eq!(store.count(Table::Queues), 0);
    assert_eq!(store.count(Table::Inflight), 0);

    // Unsubscribing is kept too: after another restart nothing reaches the old id.
    client.send(
        Client::frame(Command::Unsubscribe, &[("id", "my-jobs")]),
        t0,
    );
    drop(client);
    drop(broker);
    let broker = recovered_broker(store.clone(), t0);
    publish(&broker, "jobs/c", b"5", t0);
    let mut client = Client::connect(&broker, &settings, Some("durable"), t0);
    assert!(client.wake(t0).is_empty());
}

#[test]
fn a_nacked_message_stays_stored_until_it_is_acknowledged() {
    use mqtt_core::storage::Table;
    let t0 = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = recovered_broker(store.clone(), t0);
    let settings = settings(|_| {});
    let mut client = Client::connect(&broker, &settings, Some("nacker"), t0);
    client.subscribe("t", "client", t0);
    publish(&broker, "t", b"x", t0);
    let sent = client.wake(t0);
    let ack = sent[0].header("ack").unwrap().to_owned();
    let again = client.send(Client::frame(Command::Nack, &[("id", ack.as_str())]), t0);
    assert_eq!(bodies(&again), vec![&b"x"[..]], "sent again at once");
    assert_eq!(store.count(Table::Queues), 1);
    let ack = again[0].header("ack").unwrap().to_owned();
    client.send(Client::frame(Command::Ack, &[("id", ack.as_str())]), t0);
    assert_eq!(store.count(Table::Queues), 0);
    assert_eq!(store.count(Table::Inflight), 0);
}

/// The ERROR frame a refused client got, and that its connection closed.
fn assert_refused(client: &Client, answer: &[Frame], message: &str) {
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].command, Command::Error, "{answer:?}");
    assert_eq!(answer[0].header("message"), Some(message), "{answer:?}");
    assert!(client.closed, "an ERROR closes the connection");
}

#[test]
fn another_users_named_session_is_refused_and_left_to_its_owner() {
    let t0 = Instant::now();
    let broker = users_broker(t0);
    let settings = settings(|_| {});
    let mut alice = Client::connect_as(&broker, &settings, Some("desk"), Some("alice"), t0);
    alice.subscribe("t", "client", t0);

    // While alice is connected: bob neither takes the session over nor closes her.
    let (bob, answer) = Client::try_connect(&broker, &settings, Some("desk"), Some("bob"), t0);
    assert_refused(&bob, &answer, "the session belongs to another user");
    bob.close(t0);
    publish(&broker, "t", b"m1", t0);
    let sent = alice.wake(t0);
    assert_eq!(bodies(&sent), vec![&b"m1"[..]]);
    assert!(!alice.closed);

    // While it waits for her return: bob neither resumes nor replaces it.
    alice.close(t0);
    publish(&broker, "t", b"m2", t0);
    let (bob, answer) = Client::try_connect(&broker, &settings, Some("desk"), Some("bob"), t0);
    assert_refused(&bob, &answer, "the session belongs to another user");
    bob.close(t0);
    // Nor does an anonymous client.
    let (anonymous, answer) = Client::try_connect(&broker, &settings, Some("desk"), None, t0);
    assert_refused(&anonymous, &answer, "the session belongs to another user");
    anonymous.close(t0);

    // Her subscription and her messages, the unacknowledged one first, are all there.
    let mut alice = Client::connect_as(&broker, &settings, Some("desk"), Some("alice"), t0);
    let resent = alice.wake(t0);
    assert_eq!(bodies(&resent), vec![&b"m1"[..], b"m2"]);
    assert!(resent.iter().all(|f| f.header("subscription") == Some("s")));
}

/// What a verified client certificate says names the client, whatever CONNECT claims: its
/// user name is the one authenticated and authorized, and its client id names the session.
#[test]
fn a_certificate_identity_replaces_login_and_client_id() {
    let t0 = Instant::now();
    let broker = users_broker(t0);
    let settings = settings(|_| {});
    let certified = |username: &str, client_id: Option<&str>| CertificateIdentity {
        username: Some(username.to_owned()),
        client_id: client_id.map(str::to_owned),
    };
    // The certificate says mallory, CONNECT says alice with alice's passcode: the passcode
    // is checked against mallory, so it fails.
    let (client, answer) = Client::open(&broker, &settings, certified("mallory", None), t0)
        .send_connect(None, Some("alice"), &[], t0);
    assert_refused(&client, &answer, "Login Failed: authentication failed");
    client.close(t0);

    // With mallory's own passcode it passes, as mallory: refused where mallory is.
    let (mut client, answer) = Client::open(
        &broker,
        &settings,
        certified("mallory", Some("device-7")),
        t0,
    )
    .send_connect(
        Some("chosen"),
        None,
        &[("login", "alice"), ("passcode", "mallory")],
        t0,
    );
    assert_eq!(answer[0].command, Command::Connected, "{answer:?}");
    assert_eq!(answer[0].header("session"), Some("device-7"));
    let key = |id: &str| SessionKey {
        namespace: STOMP_NAMESPACE,
        client_id: Arc::from(id),
    };
    assert!(broker.session(&key("device-7")).is_some());
    assert!(broker.session(&key("chosen")).is_none());
    let refused = client.send(
        Client::frame(Command::Send, &[("destination", "secret/plans")]),
        t0,
    );
    assert_eq!(refused[0].command, Command::Error, "{refused:?}");
    client.close(t0);
    // Naming the session (client-id) still makes it outlive the connection.
    assert!(broker.session(&key("device-7")).is_some());
}

#[test]
fn a_mountpoint_value_that_would_widen_the_mountpoint_is_refused() {
    let t0 = Instant::now();
    let broker = users_broker(t0);
    let settings = settings(|s| s.mountpoint = Arc::from("tenants/${username}/"));
    for login in ["a/b", "+", "#", "x/#"] {
        let (client, answer) = Client::try_connect(&broker, &settings, None, Some(login), t0);
        assert_refused(
            &client,
            &answer,
            &format!(
                "mountpoint placeholder ${{username}}: value {login:?} is empty or holds a \
                 wildcard, a separator or a placeholder"
            ),
        );
        client.close(t0);
    }
    // A plain name is mounted under its own prefix.
    let mut alice = Client::connect_as(&broker, &settings, None, Some("alice"), t0);
    alice.subscribe("t", "auto", t0);
    publish(&broker, "tenants/alice/t", b"mine", t0);
    publish(&broker, "tenants/bob/t", b"bob's", t0);
    let got = alice.wake(t0);
    assert_eq!(bodies(&got), vec![&b"mine"[..]]);
    assert_eq!(got[0].header("destination"), Some("t"));
}

#[test]
fn a_send_to_sys_is_refused() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = settings(|_| {});
    let mut watcher = Client::connect(&broker, &settings, None, t0);
    watcher.subscribe("$SYS/#", "auto", t0);
    let mut client = Client::connect(&broker, &settings, None, t0);
    let answer = client.send(
        Client::frame(Command::Send, &[("destination", "$SYS/broker/uptime")]),
        t0,
    );
    assert_refused(&client, &answer, "not authorized for $SYS/broker/uptime");
    assert!(bodies(&watcher.wake(t0)).is_empty());
}

#[test]
fn acl_denied_sends_and_subscriptions_are_refused_and_deliver_nothing() {
    let t0 = Instant::now();
    let broker = users_broker(t0);
    let settings = settings(|_| {});
    let mut watcher = Client::connect(&broker, &settings, None, t0);
    watcher.subscribe("secret/#", "auto", t0);

    let mut mallory = Client::connect_as(&broker, &settings, None, Some("mallory"), t0);
    let answer = mallory.send(
        Client::frame(Command::Send, &[("destination", "secret/plans")]),
        t0,
    );
    assert_refused(&mallory, &answer, "not authorized for secret/plans");
    assert!(bodies(&watcher.wake(t0)).is_empty());
    mallory.close(t0);

    // A named session, so what its refused SUBSCRIBE left behind can be looked at after.
    let mut mallory = Client::connect_as(&broker, &settings, Some("m"), Some("mallory"), t0);
    let answer = mallory.send(
        Client::frame(
            Command::Subscribe,
            &[("destination", "secret/#"), ("id", "s")],
        ),
        t0,
    );
    assert_refused(&mallory, &answer, "not authorized for secret/#");
    mallory.close(t0);
    publish(&broker, "secret/plans", b"x", t0);
    let key = SessionKey {
        namespace: STOMP_NAMESPACE,
        client_id: Arc::from("m"),
    };
    let session = broker.session(&key).expect("the named session waits");
    assert!(
        !session.state.lock().has_queued(),
        "nothing was queued for the refused subscription"
    );
    assert_eq!(bodies(&watcher.wake(t0)), vec![&b"x"[..]]);
}

#[test]
fn a_refused_send_in_a_transaction_leaves_the_whole_transaction_unpublished() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = settings(|_| {});
    let mut watcher = Client::connect(&broker, &settings, None, t0);
    watcher.subscribe("out/#", "auto", t0);
    let mut client = Client::connect(&broker, &settings, None, t0);
    client.send(Client::frame(Command::Begin, &[("transaction", "tx")]), t0);
    for destination in ["out/first", "$SYS/x", "out/last"] {
        client.send(
            Client::frame(
                Command::Send,
                &[("destination", destination), ("transaction", "tx")],
            ),
            t0,
        );
    }
    let answer = client.send(Client::frame(Command::Commit, &[("transaction", "tx")]), t0);
    assert_refused(&client, &answer, "not authorized for $SYS/x");
    assert!(bodies(&watcher.wake(t0)).is_empty());
}

#[test]
fn a_sender_feeding_a_receiver_behind_is_not_read_until_it_catches_up() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = settings(|_| {});
    // Connected, and not woken: its queue only grows.
    let mut slow = Client::connect(&broker, &settings, None, t0);
    slow.subscribe("t", "auto", t0);
    let mut sender = Client::connect(&broker, &settings, None, t0);
    for _ in 0..499 {
        sender.send(Client::frame(Command::Send, &[("destination", "t")]), t0);
        assert!(sender.channel.accepts_input(t0));
    }
    // The 500th makes the receiver behind (the default high water): what follows stays
    // unread in the input, as it would in the socket.
    let mut input = BytesMut::new();
    for _ in 0..3 {
        encode(
            &Client::frame(Command::Send, &[("destination", "t")]),
            Version::V1_2,
            &mut input,
        );
    }
    sender.channel.handle_input(&mut input, &mut sender.out, t0);
    assert!(!sender.channel.accepts_input(t0));
    let unread = input.len();
    assert!(unread > 0);

    // The receiver takes its messages; the sender is let go and its input is read.
    let mut received = 0;
    loop {
        let got = bodies(&slow.wake(t0)).len();
        if got == 0 {
            break;
        }
        received += got;
    }
    sender.wake(t0);
    assert!(sender.channel.accepts_input(t0));
    sender.channel.handle_input(&mut input, &mut sender.out, t0);
    assert!(input.is_empty());
    received += bodies(&slow.wake(t0)).len();
    assert_eq!(received, 502);
}

/// Settings whose clients may publish `messages` and `bytes` per period.
fn rate_limited(messages: &str, bytes: &str) -> Arc<Settings> {
    let messages: Rate = messages.parse().expect("a rate");
    let bytes: ByteRate = bytes.parse().expect("a byte rate");
    settings(|settings| settings.rates = PublishRates::new(messages, bytes))
}

/// `count` SENDs to `t` in one read, each with `body`.
fn sends(count: usize, body: &[u8]) -> BytesMut {
    let mut input = BytesMut::new();
    for _ in 0..count {
        let mut frame = Client::frame(Command::Send, &[("destination", "t")]);
        frame.body = Bytes::copy_from_slice(body);
        encode(&frame, Version::V1_2, &mut input);
    }
    input
}

#[test]
fn a_sender_over_its_messages_rate_is_not_read_until_its_pause_ends() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = rate_limited("10/s", "infinity");
    let mut watcher = Client::connect(&broker, &settings, None, t0);
    watcher.subscribe("t", "auto", t0);
    let mut sender = Client::connect(&broker, &settings, None, t0);
    let mut input = sends(12, b"m");
    sender.channel.handle_input(&mut input, &mut sender.out, t0);
    assert_eq!(bodies(&watcher.wake(t0)).len(), 10, "one period's worth");
    assert!(!sender.channel.accepts_input(t0));
    assert!(
        !input.is_empty(),
        "the rest stays unread, as it would in the socket"
    );

    // The pause ends by time: it is the channel's deadline, and once there, the driver
    // hands it what is still buffered.
    let resume = sender.channel.next_deadline().expect("the pause's end");
    assert!(resume > t0 && resume <= t0 + Duration::from_millis(101));
    assert!(!sender
        .channel
        .accepts_input(resume - Duration::from_millis(1)));
    sender.tick(resume);
    assert!(sender.channel.accepts_input(resume));
    assert_ne!(
        sender.channel.next_deadline(),
        Some(resume),
        "an ended pause is no deadline any more"
    );
    sender
        .channel
        .handle_input(&mut input, &mut sender.out, resume);
    assert_eq!(
        bodies(&watcher.wake(resume)).len(),
        1,
        "one token came back"
    );
    assert!(!sender.channel.accepts_input(resume));

    let later = t0 + Duration::from_secs(1);
    sender.tick(later);
    sender
        .channel
        .handle_input(&mut input, &mut sender.out, later);
    assert!(input.is_empty());
    assert_eq!(bodies(&watcher.wake(later)).len(), 1);
    assert!(!sender.closed);
    assert_eq!(broker.stats.rate_limited.load(Ordering::Relaxed), 2);
}

#[test]
fn heart_beat_silence_is_not_held_against_a_sender_paused_for_its_bytes_rate() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = rate_limited("infinity", "1KB/s");
    let mut watcher = Client::connect(&broker, &settings, None, t0);
    watcher.subscribe("t", "auto", t0);
    // The client sends a heart-beat every second; two seconds of silence close it.
    let (mut sender, answer) = Client::try_connect_with(
        &broker,
        &settings,
        None,
        None,
        &[("heart-beat", "1000,0")],
        t0,
    );
    assert_eq!(answer[0].command, Command::Connected);

    // 5 KiB at once leave the sender 4 KiB in debt: four seconds unread.
    let mut input = sends(2, &[b'x'; 5 * 1024]);
    sender.channel.handle_input(&mut input, &mut sender.out, t0);
    assert_eq!(bodies(&watcher.wake(t0)).len(), 1);
    assert!(!input.is_empty());
    let mut now = t0;
    while let Some(deadline) = sender.channel.next_deadline() {
        if sender.channel.accepts_input(deadline) {
            now = deadline;
            break;
        }
        now = deadline;
        sender.tick(now);
        assert!(!sender.closed, "silent while unread at {:?}", now - t0);
    }
    assert!(now >= t0 + Duration::from_secs(4), "{:?}", now - t0);
    sender.tick(now);
    assert!(
        !sender.closed,
        "the pause's end is no silence of the client's"
    );
    sender
        .channel
        .handle_input(&mut input, &mut sender.out, now);
    assert!(input.is_empty());
    assert_eq!(bodies(&watcher.wake(now)).len(), 1);
}

/// A SEND of `body` in transaction `tx`, with a receipt.
fn send_in_transaction(receipt: &str, body: &[u8]) -> Frame {
    let mut frame = Client::frame(
        Command::Send,
        &[
            ("destination", "out/t"),
            ("transaction", "tx"),
            ("receipt", receipt),
        ],
    );
    frame.body = Bytes::copy_from_slice(body);
    frame
}

#[test]
fn a_transaction_holds_at_most_max_transaction_bytes() {
    let t0 = Instant::now();
    let broker = broker(t0);
    // The defaults: bodies up to 64 KiB, transactions up to 1 MiB.
    let settings = settings(|_| {});
    let mut watcher = Client::connect(&broker, &settings, None, t0);
    watcher.subscribe("out/#", "auto", t0);
    let mut client = Client::connect(&broker, &settings, None, t0);
    client.send(Client::frame(Command::Begin, &[("transaction", "tx")]), t0);
    let body = vec![b'x'; 60 * 1024];
    // 17 bodies of 60 KiB and their headers fit in 1 MiB; an 18th does not.
    for n in 1..=17 {
        let receipt = format!("r{n}");
        let answer = client.send(send_in_transaction(&receipt, &body), t0);
        assert_eq!(receipt_ids(&answer), vec![receipt.as_str()]);
    }
    let answer = client.send(send_in_transaction("r18", &body), t0);
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].command, Command::Error);
    assert_eq!(
        answer[0].header("message"),
        Some("more than 1048576 bytes in a transaction (max_transaction_bytes)")
    );
    assert_eq!(answer[0].header("receipt-id"), Some("r18"));
    assert!(client.closed);
    client.close(t0);
    assert!(
        bodies(&watcher.wake(t0)).is_empty(),
        "nothing of the transaction was published"
    );
}

fn stomp_key(client_id: &str) -> SessionKey {
    SessionKey {
        namespace: STOMP_NAMESPACE,
        client_id: Arc::from(client_id),
    }
}

#[test]
fn a_kicked_client_gets_an_error_and_its_named_session_is_discarded() {
    let t0 = Instant::now();
    let broker = broker(t0);
    let settings = settings(|_| {});
    let mut desk = Client::connect(&broker, &settings, Some("desk"), t0);
    desk.subscribe("k/1", "client", t0);
    publish(&broker, "k/1", b"queued", t0);
    assert!(broker.kick(&stomp_key("desk"), t0));
    let answer = desk.wake(t0);
    assert_refused(&desk, &answer, "kicked out by the administrator");
    desk.close(t0);
    assert!(broker.session(&stomp_key("desk")).is_none());
    assert_eq!(broker.subscription_count(), 0);
    // Named again, the client finds nothing of the old session.
    let mut back = Client::connect(&broker, &settings, Some("desk"), t0);
    assert!(back.wake(t0).is_empty());

    // A session taken over says so too.
    let mut first = Client::connect(&broker, &settings, Some("twice"), t0);
    let _second = Client::connect(&broker, &settings, Some("twice"), t0);
    let answer = first.wake(t0);
    assert_refused(&first, &answer, "session taken over by another connection");
}

#[test]
fn presence_events_tell_of_stomp_clients() {
    let t0 = Instant::now();
    let broker = testing::broker_with_presence(t0);
    let watcher = testing::presence_watcher(&broker, t0);
    let settings = settings(|_| {});
    let (mut client, _) = Client::try_connect_with(
        &broker,
        &settings,
        Some("desk"),
        None,
        &[("heart-beat", "1500,0")],
        t0,
    );
    let (topic, connected) = testing::presence_event(&watcher, t0);
    assert_eq!(
        topic,
        "$SYS/brokers/test@node/gateway/stomp/clients/desk/connected"
    );
    assert_eq!(connected["protocol"], "stomp");
    assert_eq!(connected["proto_name"], "STOMP");
    assert_eq!(connected["proto_ver"], "1.2");
    assert_eq!(connected["keepalive"], 2, "1.5 s of heart-beat, rounded up");
    assert_eq!(connected["clean_start"], false, "a named session is kept");
    client.send(Client::frame(Command::Disconnect, &[]), t0);
    client.close(t0);
    let events = testing::presence_events(&watcher, t0);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["reason"], "normal");

    // Silent past its heart-beat.
    let (mut silent, _) = Client::try_connect_with(
        &broker,
        &settings,
        None,
        None,
        &[("heart-beat", "1000,0")],
        t0,
    );
    testing::presence_events(&watcher, t0);
    silent.tick(t0 + Duration::from_secs(10));
    assert!(silent.closed);
    silent.close(t0 + Duration::from_secs(10));
    let events = testing::presence_events(&watcher, t0 + Duration::from_secs(10));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["reason"], "keepalive_timeout");
}
