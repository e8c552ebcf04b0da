//! What tests of the core and of the adapters need to stand in for other clients: a
//! session opened in one call, and a message routed as if the broker had it from anyone;
//! and the brokers, wake-ups and password files those tests build their cases on.
//! Only built with the `testing` feature, which only test targets and the fuzz crate enable, so no
//! adapter can reach the router around the session layer.

// A helper that cannot set up what a test asked for ends that test, as the test's own
// code would.
#![allow(clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;
use gateway_config::Config;

use crate::auth::{hash_password, Auth, PasswordFile};
use crate::broker::{Broker, Dispatched};
use crate::client::{ClientSession, ConnectRefused, OpenSession, Presented};
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;
use crate::session::{ConnControl, Wakeup};
use crate::storage::Store;

/// A wake-up nobody listens to: the test takes a session's deliveries itself.
pub struct NoWakeup;

impl Wakeup for NoWakeup {
    fn wake(&self) {}
}

/// A wake-up that counts how often the session asked for its connection.
#[derive(Default)]
pub struct CountingWakeup(AtomicUsize);

impl Wakeup for CountingWakeup {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingWakeup {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The embedded defaults: what a configuration file without keys loads to.
pub fn default_config() -> Config {
    Config::defaults().expect("the embedded defaults load")
}

/// A broker on the default configuration that lets anyone do anything.
pub fn broker(now: Instant) -> Arc<Broker> {
    broker_with_auth(Auth::allow_all(), now)
}

/// A broker on the default configuration that admits and authorizes by `auth`.
pub fn broker_with_auth(auth: Auth, now: Instant) -> Arc<Broker> {
    Arc::new(broker_on_config(&default_config(), auth, now))
}

/// A broker on `config`, for a test to add to (`with_store`, `with_flapping_detect`).
pub fn broker_on_config(config: &Config, auth: Auth, now: Instant) -> Broker {
    Broker::new(config.mqtt.clone(), &config.retainer, auth, now)
}

/// The node name in the presence topics of [`broker_with_presence`].
pub const PRESENCE_NODE: &str = "test@node";

/// A broker on the default configuration that lets anyone do anything and publishes every
/// presence event under [`PRESENCE_NODE`].
pub fn broker_with_presence(now: Instant) -> Arc<Broker> {
    let every = gateway_config::SysEventMessages {
        client_connected: true,
        client_disconnected: true,
        client_asleep: true,
        client_awake: true,
    };
    Arc::new(
        broker_on_config(&default_config(), Auth::allow_all(), now)
            .with_wall_clock(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
            .with_presence(PRESENCE_NODE, every),
    )
}

/// An MQTT application that receives every presence event of every node (`$SYS/brokers/#`),
/// to read with [`presence_events`].
pub fn presence_watcher(broker: &Arc<Broker>, now: Instant) -> ClientSession {
    subscriber(
        broker,
        "presence-watcher",
        "$SYS/brokers/#",
        QoS::AtMostOnce,
        0,
        now,
    )
}

/// The messages `watcher` was given since last asked: each one's topic and its payload as
/// JSON (`null` for a payload that is not).
pub fn presence_events(watcher: &ClientSession, now: Instant) -> Vec<(String, serde_json::Value)> {
    let mut state = watcher.session().state.lock();
    std::iter::from_fn(|| state.pop_queued(now))
        .map(|delivery| {
            let payload = serde_json::from_slice(&delivery.message.payload).unwrap_or_default();
            (delivery.message.topic.to_string(), payload)
        })
        .collect()
}

/// The one message `watcher` was given since last asked (see [`presence_events`]).
pub fn presence_event(watcher: &ClientSession, now: Instant) -> (String, serde_json::Value) {
    let mut events = presence_events(watcher, now);
    assert_eq!(events.len(), 1, "one presence event: {events:?}");
    events.pop().expect("one event")
}

/// A broker on the default configuration that lets anyone do anything and keeps what
/// is durable in `store`, without restoring what the store already holds.
pub fn broker_on_store(store: Arc<dyn Store>, now: Instant) -> Arc<Broker> {
    Arc::new(
        broker_on_config(&default_config(), Auth::allow_all(), now)
            .with_store(store, SystemTime::now()),
    )
}

/// A broker (re)started at `now` on `store`, with what the store kept restored.
pub fn recovered_broker(store: Arc<dyn Store>, now: Instant) -> Arc<Broker> {
    let broker = broker_on_store(store, now);
    broker.recover(now).expect("recover");
    broker
}

/// A password file of `users`, each a user name and its password.
pub fn password_file(users: &[(&str, &str)]) -> PasswordFile {
    let text: String = users
        .iter()
        .map(|(user, password)| format!("{user}:{}\n", hash_password(password)))
        .collect();
    PasswordFile::parse(&text, Path::new("test.passwd")).expect("hash_password's lines parse")
}

/// A session of `client_id` in `namespace`, anonymous, on its own connection woken by `wakeup`.
pub fn open_session(
    broker: &Arc<Broker>,
    namespace: &'static str,
    client_id: &str,
    clean_start: bool,
    expiry_interval: u32,
    wakeup: Arc<dyn Wakeup>,
    now: Instant,
) -> Result<ClientSession, ConnectRefused> {
    let control = ConnControl::new(broker.next_connection_id(), wakeup);
    open_session_on(
        broker,
        namespace,
        client_id,
        clean_start,
        expiry_interval,
        control,
        now,
    )
}

/// [`open_session`] through the connection `control`, which may have opened others before.
pub fn open_session_on(
    broker: &Arc<Broker>,
    namespace: &'static str,
    client_id: &str,
    clean_start: bool,
    expiry_interval: u32,
    control: Arc<ConnControl>,
    now: Instant,
) -> Result<ClientSession, ConnectRefused> {
    let who = broker.authenticate(Presented {
        protocol: namespace,
        listener: Arc::from("test"),
        client_id: Arc::from(client_id),
        username: None,
        password: None,
        peer: None,
        mountpoint: Arc::from(""),
        mountpoint_values: Vec::new(),
    })?;
    broker.open_session(
        who,
        OpenSession {
            clean_start,
            expiry_interval,
            will: None,
            control,
            rates: crate::rate::PublishRates::UNLIMITED,
            proto: crate::clients::ProtoInfo {
                name: "MQTT",
                version: crate::clients::ProtoVer::Level(5),
            },
            keepalive: 0,
            announce: true,
        },
        now,
    )
}

/// Subscribes `client` to `filter` at `qos`, with no subscription identifier.
pub fn subscribe(client: &ClientSession, filter: &str, qos: QoS, now: Instant) {
    client
        .subscribe(
            filter,
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
            None,
            now,
        )
        .expect("the subscription is granted");
}

/// An MQTT application subscribed to `filter` at `qos`: a clean session of `client_id`,
/// kept `expiry_interval` seconds after its connection ends, whose deliveries the test
/// takes from its queue. Dropped unclosed, the session stays attached, as to a connection
/// that never closes.
pub fn subscriber(
    broker: &Arc<Broker>,
    client_id: &str,
    filter: &str,
    qos: QoS,
    expiry_interval: u32,
    now: Instant,
) -> ClientSession {
    let client = open_session(
        broker,
        "mqtt",
        client_id,
        true,
        expiry_interval,
        Arc::new(NoWakeup),
        now,
    )
    .expect("the subscriber's session opens");
    subscribe(&client, filter, qos, now);
    client
}

/// Routes `message` as it stands, with no client's checks: for a test playing the rest of
/// the world.
pub fn route(broker: &Broker, message: Message) -> Dispatched {
    broker.publish(Arc::new(message), None)
}

/// Routes a message of `payload` to `topic` at `qos`, not retained, as another client
/// would publish it, for a test that does not look at what routing did ([`route`] says).
pub fn publish(broker: &Broker, topic: &str, payload: &[u8], qos: QoS, now: Instant) {
    let _ = route(
        broker,
        Message::new(
            ByteString::from(topic),
            Bytes::copy_from_slice(payload),
            qos,
            false,
            now,
        ),
    );
}
