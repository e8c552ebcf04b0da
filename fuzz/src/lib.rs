//! What the channel targets share: a broker run as a public deployment runs it (anonymous
//! access off, a password file, an ACL that denies what it does not name), listeners whose
//! mountpoint makes each client's topics its own, the rest of the world (time, the store,
//! other publishers) as steps the fuzzer picks, and the names (users, client ids, topics)
//! that reach the interesting paths, which arbitrary strings would only rarely hit: a
//! password is checked through PBKDF2, so no comparison guides the fuzzer to it. What
//! follows each step is shared too: every client's channel woken, its due timers run, and
//! a closed connection replaced by a new one.

pub mod coap;

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use adapter_lwm2m::Lwm2mChannel;
use adapter_mqtt_sn::MqttSnChannel;
use adapter_stomp::StompChannel;
use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use gateway_config::{AclNoMatch, Config};
use mqtt_core::auth::{AclAuthorizer, Auth, PasswordAuthenticator};
use mqtt_core::broker::Broker;
use mqtt_core::codec::QoS;
use mqtt_core::message::Message;
use mqtt_core::mountpoint::Mountpoint;
use mqtt_core::protocol::{Flow, MqttChannel};
use mqtt_core::storage::MapStore;
use mqtt_core::testing;

/// The drivers' wake-ups are not needed: every step ends with each channel woken.
pub use mqtt_core::testing::NoWakeup;

/// Small limits, so that inputs of a few kilobytes reach them: queues, windows, quotas and
/// the gateways' own tables. Everything else is the embedded default.
const FUZZ_CONFIG: &str = r#"
[mqtt]
max_packet_size = 4096
max_client_id_length = 64
receive_maximum = 4
max_inflight = 4
max_awaiting_rel = 4
max_queued_messages = 8
max_queued_bytes = 4096
receiver_high_water = 6
receiver_low_water = 2
max_subscriptions = 4
max_topic_alias = 4
max_topic_levels = 16

[retainer]
max_retained_messages = 16
max_retained_bytes = 4096
max_payload_size = 1024

[gateway.mqttsn]
max_registered_topics = 4
retry_interval = "2s"
max_retries = 2
predefined = [
    { id = 1, topic = "users/alice/predefined" },
    { id = 2, topic = "public/predefined" },
]

[gateway.lwm2m]
max_queued_commands = 4
lifetime_min = "1s"
lifetime_max = "10m"
lifetime_grace = "5s"
qmode_time_window = "5s"
ack_timeout = "1s"
max_retransmit = 2

[gateway.stomp]
max_unacked = 4
max_transactions = 2
max_transaction_frames = 8
max_transaction_bytes = 2048
transaction_timeout = "10s"

[gateway.stomp.frame]
max_headers = 10
max_headers_length = 256
max_body_length = 1024
"#;

/// The configuration every target starts from.
pub fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config::from_toml_str(FUZZ_CONFIG).expect("the fuzz config parses"))
}

/// The users of the password file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum User {
    Alice,
    Bob,
}

impl User {
    pub const ALL: [User; 2] = [User::Alice, User::Bob];

    pub fn name(self) -> &'static str {
        match self {
            User::Alice => "alice",
            User::Bob => "bob",
        }
    }

    pub fn password(self) -> &'static str {
        match self {
            User::Alice => "alice-secret",
            User::Bob => "bob-secret",
        }
    }
}

/// First match decides; nothing matched is denied. The rules see topics as the client
/// wrote them, without its mountpoint.
pub const ACL: &str = "\
# Each user under its own prefix; anyone reads public/, only alice writes it.
allow all all users/%u/#
allow all subscribe public/#
allow user:alice publish public/#
# LwM2M devices read commands and publish events; bob's events are refused.
allow all subscribe dn/#
allow user:alice publish up/#
";

/// Anonymous access off, the users above in a password file made in memory, the ACL.
pub fn auth() -> Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let users = testing::password_file(&User::ALL.map(|user| (user.name(), user.password())));
        let acl = AclAuthorizer::parse(ACL, Path::new("fuzz-acl"), AclNoMatch::Deny)
            .expect("the fuzz ACL parses");
        Auth {
            authenticator: Arc::new(PasswordAuthenticator::new(Some(users), false)),
            authorizer: Arc::new(acl),
        }
    })
    .clone()
}

/// What a client presents as its user name and password.
#[derive(Debug, Clone, Arbitrary)]
pub enum Credentials {
    None,
    Right(User),
    WrongPassword(User),
    NoPassword(User),
    /// Not in the password file.
    Unknown,
    Raw {
        username: String,
        password: Vec<u8>,
    },
}

impl Credentials {
    pub fn username(&self) -> Option<&str> {
        match self {
            Credentials::None => None,
            Credentials::Right(user)
            | Credentials::WrongPassword(user)
            | Credentials::NoPassword(user) => Some(user.name()),
            Credentials::Unknown => Some("mallory"),
            Credentials::Raw { username, .. } => Some(username),
        }
    }

    pub fn password(&self) -> Option<&[u8]> {
        match self {
            Credentials::None | Credentials::NoPassword(_) => None,
            Credentials::Right(user) => Some(user.password().as_bytes()),
            Credentials::WrongPassword(_) => Some(b"not-the-password"),
            Credentials::Unknown => Some(b"mallory-secret"),
            Credentials::Raw { password, .. } => Some(password),
        }
    }

    pub fn password_text(&self) -> Option<Cow<'_, str>> {
        self.password().map(String::from_utf8_lossy)
    }
}

/// A client id, or an LwM2M endpoint name: the users' own, one they share, and the ones a
/// per-client mountpoint must refuse.
#[derive(Debug, Clone, Arbitrary)]
pub enum ClientId {
    Of(User),
    Shared,
    Wildcard,
    MultiLevel,
    Separator,
    Placeholder,
    Nul,
    Empty,
    /// Over `max_client_id_length`.
    TooLong,
    Raw(String),
}

impl ClientId {
    pub fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            ClientId::Of(user) => user.name(),
            ClientId::Shared => "device-1",
            ClientId::Wildcard => "+",
            ClientId::MultiLevel => "#",
            ClientId::Separator => "a/b",
            ClientId::Placeholder => "${username}",
            ClientId::Nul => "a\0b",
            ClientId::Empty => "",
            ClientId::TooLong => return Cow::Owned("x".repeat(65)),
            ClientId::Raw(text) => text,
        })
    }
}

/// A topic name as a client writes it.
#[derive(Debug, Clone, Arbitrary)]
pub enum Topic {
    Own(User, u8),
    Public,
    Sys,
    Commands,
    Events,
    Empty,
    /// Not a valid topic name.
    Wildcard,
    Raw(String),
}

impl Topic {
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Topic::Own(user, level) => {
                let level = ["a", "b/c", "d/e/f", ""][usize::from(*level % 4)];
                Cow::Owned(format!("users/{}/{level}", user.name()))
            }
            Topic::Public => Cow::Borrowed("public/news"),
            Topic::Sys => Cow::Borrowed("$SYS/broker/uptime"),
            Topic::Commands => Cow::Borrowed("dn/cmd"),
            Topic::Events => Cow::Borrowed("up/resp"),
            Topic::Empty => Cow::Borrowed(""),
            Topic::Wildcard => Cow::Borrowed("users/alice/+"),
            Topic::Raw(text) => Cow::Borrowed(text),
        }
    }
}

/// A topic filter as a client writes it.
#[derive(Debug, Clone, Arbitrary)]
pub enum Filter {
    Topic(Topic),
    Subtree(User),
    Everything,
    AnyUser,
    Shared(User),
    Sys,
    Raw(String),
}

impl Filter {
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            Filter::Topic(topic) => topic.text(),
            Filter::Subtree(user) => Cow::Owned(format!("users/{}/#", user.name())),
            Filter::Everything => Cow::Borrowed("#"),
            Filter::AnyUser => Cow::Borrowed("users/+/a"),
            Filter::Shared(user) => Cow::Owned(format!("$share/g/users/{}/#", user.name())),
            Filter::Sys => Cow::Borrowed("$SYS/#"),
            Filter::Raw(text) => Cow::Borrowed(text),
        }
    }
}

/// The listener's mountpoint: per client mostly, so a value that would widen it is refused
/// and every topic is mounted; none, to compare.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Mount {
    ClientId,
    Username,
    Both,
    None,
}

impl Mount {
    pub fn template(self) -> &'static str {
        match self {
            Mount::ClientId => "t/${clientid}/",
            Mount::Username => "u/${username}/",
            Mount::Both => "t/${username}/${clientid}/",
            Mount::None => "",
        }
    }
}

/// Where durable state goes: nowhere, a store that is durable at once, or one whose
/// batches become durable only when a step says so (acknowledgements then wait).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum StoreKind {
    Memory,
    Immediate,
    HeldBack,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Wait {
    Millis(u16),
    Seconds(u16),
}

impl Wait {
    pub fn duration(self) -> Duration {
        match self {
            Wait::Millis(ms) => Duration::from_millis(u64::from(ms)),
            Wait::Seconds(s) => Duration::from_secs(u64::from(s)),
        }
    }
}

/// A topic of a client as the router knows it: under the mountpoint that client gets.
#[derive(Debug, Clone, Arbitrary)]
pub struct Mounted {
    pub client_id: ClientId,
    pub user: Option<User>,
    pub topic: Topic,
}

/// What happens around the channels.
#[derive(Debug, Clone, Arbitrary)]
pub enum WorldStep {
    /// Time passes; the broker's timers (session expiry, delayed wills) fire.
    Wait(Wait),
    /// The next stored batch becomes durable, or all of them.
    Durable {
        all: bool,
    },
    StoreFull(bool),
    /// Another client publishes to a client's topic.
    Publish {
        to: Mounted,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
        expiry_seconds: Option<u8>,
    },
}

/// The broker, its store and the virtual clock of one input.
pub struct World {
    pub broker: Arc<Broker>,
    store: Option<Arc<MapStore>>,
    pub now: Instant,
    /// The mountpoint template of the listener the target's channels are on.
    pub mountpoint: &'static str,
}

impl World {
    pub fn new(store: StoreKind, mountpoint: &'static str) -> World {
        let now = Instant::now();
        let config = config();
        let broker = Broker::new(config.mqtt.clone(), &config.retainer, auth(), now);
        let store = match store {
            StoreKind::Memory => None,
            StoreKind::Immediate => Some(Arc::new(MapStore::default())),
            StoreKind::HeldBack => {
                let store = MapStore::default();
                store.hold_back();
                Some(Arc::new(store))
            }
        };
        let broker = match &store {
            Some(store) => broker.with_store(store.clone(), SystemTime::UNIX_EPOCH),
            None => broker,
        };
        World {
            broker: Arc::new(broker),
            store,
            now,
            mountpoint,
        }
    }

    /// Plays `step`; true when time passed, so the channels' timers are due a look.
    pub fn step(&mut self, step: &WorldStep) -> bool {
        match step {
            WorldStep::Wait(wait) => {
                self.now += wait.duration();
                if self
                    .broker
                    .next_timeout()
                    .is_some_and(|due| due <= self.now)
                {
                    self.broker.handle_timeouts(self.now);
                }
                return true;
            }
            WorldStep::Durable { all } => {
                if let Some(store) = &self.store {
                    if *all {
                        store.make_durable(store.submitted());
                    } else {
                        use mqtt_core::storage::Store as _;
                        store.make_durable(store.durable().saturating_add(1));
                    }
                }
            }
            WorldStep::StoreFull(full) => {
                if let Some(store) = &self.store {
                    store.set_full(*full);
                }
            }
            WorldStep::Publish {
                to,
                qos,
                retain,
                payload,
                expiry_seconds,
            } => {
                if let Some(topic) = self.mounted(to) {
                    self.publish(
                        topic,
                        Bytes::copy_from_slice(payload),
                        *qos,
                        *retain,
                        *expiry_seconds,
                    );
                }
            }
        }
        false
    }

    /// Routes another client's message to `topic`, at QoS `qos` (taken modulo 3), expiring
    /// after `expiry_seconds` when given.
    pub fn publish(
        &self,
        topic: ByteString,
        payload: Bytes,
        qos: u8,
        retain: bool,
        expiry_seconds: Option<u8>,
    ) {
        let qos = QoS::from_u8(qos % 3).unwrap_or_default();
        let mut message = Message::new(topic, payload, qos, retain, self.now);
        message.expires_at = expiry_seconds.map(|s| self.now + Duration::from_secs(u64::from(s)));
        let _ = testing::route(&self.broker, message);
    }

    /// `to`'s topic under the mountpoint its client gets, if that mountpoint and topic
    /// are ones a client could have: only what the router could see from a client is
    /// routed.
    pub fn mounted(&self, to: &Mounted) -> Option<ByteString> {
        let client_id = to.client_id.text();
        let values = [
            ("clientid", &*client_id),
            ("username", to.user.map_or("", User::name)),
            ("endpoint_name", &*client_id),
        ];
        let topic = to.topic.text();
        let routed = match Mountpoint::resolve(self.mountpoint, &values).ok()? {
            Some(mountpoint) => mountpoint.mount(&topic),
            None => ByteString::from(&*topic),
        };
        let max_levels = config().mqtt.max_topic_levels as usize;
        mqtt_core::topic::validate_topic_name(&routed, max_levels).ok()?;
        Some(routed)
    }
}

/// The calls a target makes on a channel after each step, which every adapter's channel
/// has as methods of its own.
pub trait Driven {
    /// Where the channel writes: a stream's bytes, or datagrams.
    type Out;
    fn handle_wakeup(&mut self, out: &mut Self::Out, now: Instant) -> Flow;
    fn handle_timeout(&mut self, out: &mut Self::Out, now: Instant) -> Flow;
    fn next_deadline(&self) -> Option<Instant>;
    fn handle_closed(&mut self, now: Instant);
}

macro_rules! driven {
    ($($channel:ty => $out:ty),* $(,)?) => {$(
        impl Driven for $channel {
            type Out = $out;

            fn handle_wakeup(&mut self, out: &mut $out, now: Instant) -> Flow {
                <$channel>::handle_wakeup(self, out, now)
            }

            fn handle_timeout(&mut self, out: &mut $out, now: Instant) -> Flow {
                <$channel>::handle_timeout(self, out, now)
            }

            fn next_deadline(&self) -> Option<Instant> {
                <$channel>::next_deadline(self)
            }

            fn handle_closed(&mut self, now: Instant) {
                <$channel>::handle_closed(self, now)
            }
        }
    )*};
}

driven!(
    MqttChannel => BytesMut,
    StompChannel => BytesMut,
    MqttSnChannel => Vec<Bytes>,
    Lwm2mChannel => Vec<Bytes>,
);

/// One client of a target: its channel, and what it learns from what the channel writes.
pub trait ClientSide {
    type Channel: Driven;
    fn channel(&mut self) -> &mut Self::Channel;
    /// Checks what the channel wrote, and takes it out of `out`.
    fn receive(&mut self, out: &mut <Self::Channel as Driven>::Out);
}

/// What follows every step: each peer but the one `closing` is woken and, when time passed
/// (`timers`) and one of its timers is due, has its timers fire; a peer whose channel
/// closes, and then the one `closing`, is closed and replaced by `reconnect(its index)`.
pub fn settle<P: ClientSide>(
    peers: &mut [P],
    closing: Option<usize>,
    timers: bool,
    out: &mut <P::Channel as Driven>::Out,
    now: Instant,
    mut reconnect: impl FnMut(usize) -> P,
) {
    for (index, peer) in peers.iter_mut().enumerate() {
        if closing == Some(index) {
            continue;
        }
        let mut flow = peer.channel().handle_wakeup(out, now);
        peer.receive(out);
        if flow == Flow::Continue
            && timers
            && peer.channel().next_deadline().is_some_and(|due| due <= now)
        {
            flow = peer.channel().handle_timeout(out, now);
            peer.receive(out);
        }
        if flow == Flow::Close {
            peer.channel().handle_closed(now);
            *peer = reconnect(index);
        }
    }
    if let Some(index) = closing {
        peers[index].channel().handle_closed(now);
        peers[index] = reconnect(index);
    }
}

/// The input is over: every peer's channel hands its session back.
pub fn close_all<P: ClientSide>(peers: &mut [P], now: Instant) {
    for peer in peers {
        peer.channel().handle_closed(now);
    }
}
