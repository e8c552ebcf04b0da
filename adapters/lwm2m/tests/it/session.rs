//! Registrations through the client-session layer, on a virtual clock: what a register
//! that is refused (wrong password, another user's endpoint, an endpoint name that would
//! widen the mountpoint) must leave alone, which channel may update or end a registration,
//! and how events the broker refuses (`$SYS`, the ACL, a full store) and events that must
//! first be durable are answered to the device.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use crate::common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapter_kit::coap::{CoapOption, MessageClass, Packet, RequestType, ResponseType};
use adapter_lwm2m::{Lwm2mChannel, Settings};
use bytes::Bytes;
use common::{decode, request, settings};
use mqtt_core::auth::{AclAuthorizer, AllowAll, Auth, PasswordAuthenticator};
use mqtt_core::broker::Broker;
use mqtt_core::client::ClientSession;
use mqtt_core::codec::QoS;
use mqtt_core::protocol::Flow;
use mqtt_core::rate::PublishRates;
use mqtt_core::storage::MapStore;
use mqtt_core::testing::{self, CountingWakeup};

/// Users `dev` (password `right`) and `mallory` (password `mallory-pw`).
fn broker_with_users(now: Instant) -> Arc<Broker> {
    let users = testing::password_file(&[("dev", "right"), ("mallory", "mallory-pw")]);
    testing::broker_with_auth(
        Auth {
            authenticator: Arc::new(PasswordAuthenticator::new(Some(users), false)),
            authorizer: Arc::new(AllowAll),
        },
        now,
    )
}

/// ACL rules (topics relative to the mountpoint), anything else denied; the test's MQTT
/// application (client `application`) may subscribe to everything.
fn broker_with_acl(rules: &str, now: Instant) -> Arc<Broker> {
    let rules = format!("allow client:application subscribe #\n{rules}");
    let authorizer = AclAuthorizer::parse(
        &rules,
        std::path::Path::new("test.acl"),
        gateway_config::AclNoMatch::Deny,
    )
    .unwrap();
    testing::broker_with_auth(
        Auth {
            authenticator: Arc::new(AllowAll),
            authorizer: Arc::new(authorizer),
        },
        now,
    )
}

/// One device's channel, as the datagram driver would make it for one address.
struct Device {
    channel: Lwm2mChannel,
    wakeup: Arc<CountingWakeup>,
}

impl Device {
    fn new(broker: &Arc<Broker>, settings: Settings, now: Instant) -> Device {
        let wakeup = Arc::new(CountingWakeup::default());
        let channel = Lwm2mChannel::new(
            broker.clone(),
            Arc::new(settings),
            None,
            wakeup.clone(),
            3,
            now,
        );
        Device { channel, wakeup }
    }

    fn send(&mut self, datagram: Bytes, now: Instant) -> (Flow, Vec<Packet>) {
        let mut out = Vec::new();
        let flow = self.channel.handle_datagram(datagram, &mut out, now);
        (flow, decode(out))
    }

    fn request(
        &mut self,
        method: RequestType,
        path: &[&str],
        queries: &[&str],
        payload: &[u8],
        now: Instant,
    ) -> (Flow, Vec<Packet>) {
        self.send(request(method, next_id(), path, queries, payload), now)
    }

    /// The answer to a register, which must be the only datagram out.
    fn register(&mut self, queries: &[&str], now: Instant) -> ResponseType {
        let (_, out) = self.request(RequestType::Post, &["rd"], queries, b"</1/0>,</3/0>", now);
        assert_eq!(out.len(), 1, "{out:?}");
        response_code(&out[0])
    }

    fn wake(&mut self, now: Instant) -> (Flow, Vec<Packet>) {
        let mut out = Vec::new();
        let flow = self.channel.handle_wakeup(&mut out, now);
        (flow, decode(out))
    }

    /// Routes a read to `endpoint`'s command topic and says whether this device was sent it.
    fn gets_command_for(&mut self, broker: &Broker, endpoint: &str, now: Instant) -> bool {
        command_to(broker, endpoint, now);
        let (_, out) = self.wake(now);
        out.iter()
            .any(|packet| packet.header.code == MessageClass::Request(RequestType::Get))
    }
}

fn next_id() -> u16 {
    static NEXT_ID: AtomicU16 = AtomicU16::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn response_code(packet: &Packet) -> ResponseType {
    match packet.header.code {
        MessageClass::Response(code) => code,
        other => panic!("not a response: {other:?}"),
    }
}

fn command_to(broker: &Broker, endpoint: &str, now: Instant) {
    let command = r#"{"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}"#;
    testing::publish(
        broker,
        &format!("lwm2m/{endpoint}/dn/cmd"),
        command.as_bytes(),
        QoS::AtMostOnce,
        now,
    );
}

/// An MQTT application subscribed to `filter`.
fn watch(broker: &Arc<Broker>, filter: &str, expiry_interval: u32, now: Instant) -> ClientSession {
    testing::subscriber(
        broker,
        "application",
        filter,
        QoS::AtLeastOnce,
        expiry_interval,
        now,
    )
}

/// The topics of what `watcher` received since the last look.
fn received(watcher: &ClientSession, now: Instant) -> Vec<String> {
    let mut state = watcher.session().state.lock();
    std::iter::from_fn(|| state.pop_queued(now).map(|d| d.message.topic.to_string())).collect()
}

#[test]
fn a_register_with_a_wrong_password_leaves_the_registration_untouched() {
    let now = Instant::now();
    let broker = broker_with_users(now);
    let mut device = Device::new(&broker, settings(), now);
    let genuine = ["ep=dev", "imei=dev", "password=right"];
    assert_eq!(device.register(&genuine, now), ResponseType::Created);

    // A register naming a registered endpoint, from the address of the channel that
    // holds it.
    let forged = ["ep=dev", "imei=dev", "password=wrong"];
    assert_eq!(device.register(&forged, now), ResponseType::Unauthorized);
    assert!(device.channel.registration().is_some());
    assert!(device.gets_command_for(&broker, "dev", now));

    // From a channel of its own, too.
    let mut elsewhere = Device::new(&broker, settings(), now);
    assert_eq!(elsewhere.register(&forged, now), ResponseType::Unauthorized);
    assert!(elsewhere.channel.registration().is_none());
    assert!(device.channel.registration().is_some());

    // The device itself registering again starts over and stays reachable.
    assert_eq!(device.register(&genuine, now), ResponseType::Created);
    let (_, out) = device.request(RequestType::Post, &["rd", "dev"], &[], &[], now);
    // The answer to the read sent above (still in flight) is not awaited: registering
    // again cancelled it.
    assert_eq!(response_code(&out[0]), ResponseType::Changed);
    assert!(device.gets_command_for(&broker, "dev", now));
}

#[test]
fn an_update_from_another_address_is_vouched_for_only_with_the_owners_credentials() {
    let now = Instant::now();
    let broker = broker_with_users(now);
    let mut device = Device::new(&broker, settings(), now);
    let genuine = ["ep=dev", "imei=dev", "password=right"];
    assert_eq!(device.register(&genuine, now), ResponseType::Created);
    let from: std::net::SocketAddr = "127.0.0.2:5783".parse().unwrap();
    let to_location =
        |method, queries: &[&str]| request(method, next_id(), &["rd", "dev"], queries, b"");
    for method in [RequestType::Post, RequestType::Delete] {
        assert!(
            !device.channel.vouch(&to_location(method, &[]), from),
            "{method:?} without credentials"
        );
        assert!(!device
            .channel
            .vouch(&to_location(method, &["password=wrong"]), from));
        assert!(device
            .channel
            .vouch(&to_location(method, &["password=right"]), from));
    }
    // Another location, or a register, is never vouched for: a channel of its own serves it.
    let other = request(
        RequestType::Post,
        next_id(),
        &["rd", "other"],
        &["password=right"],
        b"",
    );
    assert!(!device.channel.vouch(&other, from));
    let register = request(RequestType::Post, next_id(), &["rd"], &genuine, b"</3/0>");
    assert!(!device.channel.vouch(&register, from));

    // That channel holds no such location: 4.04, and the registration stays where it was.
    let mut elsewhere = Device::new(&broker, settings(), now);
    let (_, out) = elsewhere.send(to_location(RequestType::Post, &[]), now);
    assert_eq!(response_code(&out[0]), ResponseType::NotFound);
    assert!(device.channel.registration().is_some());
    assert!(device.gets_command_for(&broker, "dev", now));
}

#[test]
fn another_users_register_of_an_endpoint_is_refused_4_03_and_the_owner_keeps_its_session() {
    let start = Instant::now();
    let broker = broker_with_users(start);
    let mut device = Device::new(&broker, settings(), start);
    let owner = ["ep=dev", "imei=dev", "password=right", "lt=300", "b=UQ"];
    assert_eq!(device.register(&owner, start), ResponseType::Created);
    // Asleep in queue mode: a command waits in the channel.
    let asleep = start + std::time::Duration::from_secs(60);
    assert!(!device.gets_command_for(&broker, "dev", asleep));
    assert_eq!(device.channel.queued_commands(), 1);

    // Right credentials of another user, for the endpoint (and so the client id) `dev`.
    let intruder = ["ep=dev", "imei=mallory", "password=mallory-pw"];
    let mut elsewhere = Device::new(&broker, settings(), asleep);
    assert_eq!(
        elsewhere.register(&intruder, asleep),
        ResponseType::Forbidden
    );
    assert!(elsewhere.channel.registration().is_none());
    assert_eq!(device.register(&intruder, asleep), ResponseType::Forbidden);

    let registration = device.channel.registration().unwrap();
    assert_eq!(registration.endpoint, "dev");
    assert!(registration.queue_mode);
    assert_eq!(device.channel.queued_commands(), 1);
    // The session is still subscribed: a second command is delivered and queued too.
    assert!(!device.gets_command_for(&broker, "dev", asleep));
    assert_eq!(device.channel.queued_commands(), 2);
    let (_, out) = device.request(RequestType::Post, &["rd", "dev"], &[], &[], asleep);
    assert_eq!(response_code(&out[0]), ResponseType::Changed);
    assert_eq!(
        out[1].header.code,
        MessageClass::Request(RequestType::Get),
        "the device woke: the first queued command goes"
    );
}

#[test]
fn an_endpoint_name_that_would_widen_the_mountpoint_is_refused_4_00() {
    let now = Instant::now();
    let broker = testing::broker(now);
    let mut victim = Device::new(&broker, settings(), now);
    assert_eq!(victim.register(&["ep=victim"], now), ResponseType::Created);

    for queries in [
        ["ep=${username}", "imei=+"],
        ["ep=${clientid}", "device_id=+"],
        // Substituted into the template, these would lead into the victim's prefix.
        ["ep=${username}", "imei=victim"],
        ["ep=${clientid}", "device_id=victim"],
        ["ep=${username}", "imei=#"],
        ["ep=a/b", "imei=x"],
        ["ep=+", "imei=x"],
        // Another session's client id under the victim's endpoint name.
        ["ep=victim", "device_id=mine"],
    ] {
        let mut attacker = Device::new(&broker, settings(), now);
        assert_eq!(
            attacker.register(&queries, now),
            ResponseType::BadRequest,
            "{queries:?}"
        );
        assert!(attacker.channel.registration().is_none());
        assert!(
            !attacker.gets_command_for(&broker, "victim", now),
            "{queries:?} received the victim's command"
        );
    }
    assert!(victim.gets_command_for(&broker, "victim", now));
}

#[test]
fn update_and_deregister_are_honoured_only_by_the_channel_holding_the_registration() {
    let now = Instant::now();
    let broker = testing::broker(now);
    let mut holder = Device::new(&broker, settings(), now);
    assert_eq!(holder.register(&["ep=a"], now), ResponseType::Created);

    // A channel that holds no registration, then one that holds another.
    let mut other = Device::new(&broker, settings(), now);
    for method in [RequestType::Post, RequestType::Delete] {
        let (flow, out) = other.request(method, &["rd", "a"], &["lt=20"], &[], now);
        assert_eq!(response_code(&out[0]), ResponseType::NotFound);
        assert_eq!(flow, Flow::Close, "it holds nothing");
    }
    let mut other = Device::new(&broker, settings(), now);
    assert_eq!(other.register(&["ep=b"], now), ResponseType::Created);
    for method in [RequestType::Post, RequestType::Delete] {
        let (flow, out) = other.request(method, &["rd", "a"], &["lt=20"], &[], now);
        assert_eq!(response_code(&out[0]), ResponseType::NotFound);
        assert_eq!(flow, Flow::Continue);
    }
    assert_eq!(other.channel.registration().unwrap().endpoint, "b");

    let registration = holder.channel.registration().unwrap();
    assert_eq!(registration.endpoint, "a");
    assert_ne!(registration.lifetime.as_secs(), 20);
    assert!(holder.gets_command_for(&broker, "a", now));
    // The holder's own de-registration is honoured, once.
    let (flow, out) = holder.request(RequestType::Delete, &["rd", "a"], &[], &[], now);
    assert_eq!(response_code(&out[0]), ResponseType::Deleted);
    assert_eq!(flow, Flow::Close);
    assert!(!other.gets_command_for(&broker, "a", now));
}

#[test]
fn a_mountpoint_that_resolves_into_sys_refuses_the_registration() {
    let now = Instant::now();
    let broker = testing::broker(now);
    let watcher = watch(&broker, "$SYS/#", 0, now);
    let mut settings = settings();
    settings.mountpoint = Arc::from("${endpoint_name}/");
    let mut device = Device::new(&broker, settings, now);
    // `$SYS` is a safe value as far as topic levels go, but its events would be the broker's.
    assert_eq!(device.register(&["ep=$SYS"], now), ResponseType::Forbidden);
    assert!(device.channel.registration().is_none());
    assert_eq!(received(&watcher, now), Vec::<String>::new());
}

#[test]
fn acl_denials_refuse_what_the_device_asked_for_and_deliver_nothing() {
    let now = Instant::now();

    // No right to the command topic: a device that cannot be managed is not registered.
    let broker = broker_with_acl("allow all publish up/#\n", now);
    let watcher = watch(&broker, "lwm2m/#", 0, now);
    let mut device = Device::new(&broker, settings(), now);
    assert_eq!(device.register(&["ep=deaf"], now), ResponseType::Forbidden);
    assert!(device.channel.registration().is_none());
    assert_eq!(received(&watcher, now), Vec::<String>::new());

    // Commands and the register event allowed; Send (on up/notify) and the update event not.
    let broker = broker_with_acl("allow all subscribe dn/#\nallow all publish up/resp\n", now);
    let watcher = watch(&broker, "lwm2m/#", 0, now);
    let mut device = Device::new(&broker, settings(), now);
    assert_eq!(
        device.register(&["ep=d", "lwm2m=1.1"], now),
        ResponseType::Created
    );
    assert_eq!(received(&watcher, now), ["lwm2m/d/up/resp"]);

    let senml = br#"[{"bn":"/3/0/","n":"0","vs":"acme"}]"#;
    let mut send =
        Packet::from_bytes(&request(RequestType::Post, next_id(), &["dp"], &[], senml)).unwrap();
    send.add_option(CoapOption::ContentFormat, vec![110]);
    let (_, out) = device.send(Bytes::from(send.to_bytes().unwrap()), now);
    assert_eq!(response_code(&out[0]), ResponseType::Forbidden);

    let (_, out) = device.request(
        RequestType::Post,
        &["rd", "d"],
        &["lt=600"],
        b"</1/0>,</3/0>,</5/0>",
        now,
    );
    assert_eq!(response_code(&out[0]), ResponseType::Forbidden);
    let registration = device.channel.registration().unwrap();
    assert_eq!(
        registration.object_list,
        ["/1/0", "/3/0"],
        "the update changed nothing"
    );
    assert_ne!(registration.lifetime.as_secs(), 600);
    assert_eq!(received(&watcher, now), Vec::<String>::new());
    // The command path still works.
    assert!(device.gets_command_for(&broker, "d", now));
}

#[test]
fn a_full_store_refuses_events_kept_at_qos_1_with_5_03() {
    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    let broker = testing::broker_on_store(store.clone(), now);
    let watcher = watch(&broker, "lwm2m/#", 0, now);
    let mut settings = settings();
    settings.register.qos = QoS::AtLeastOnce;
    settings.update.qos = QoS::AtLeastOnce;
    settings.notify.qos = QoS::AtLeastOnce;
    let mut device = Device::new(&broker, settings, now);

    store.set_full(true);
    assert_eq!(
        device.register(&["ep=full", "lwm2m=1.1"], now),
        ResponseType::ServiceUnavailable
    );
    assert!(device.channel.registration().is_none());
    assert!(
        !device.gets_command_for(&broker, "full", now),
        "no session left subscribed"
    );
    assert_eq!(received(&watcher, now), ["lwm2m/full/dn/cmd"]);

    store.set_full(false);
    assert_eq!(
        device.register(&["ep=full", "lwm2m=1.1"], now),
        ResponseType::Created
    );
    assert_eq!(received(&watcher, now), ["lwm2m/full/up/resp"]);
    store.set_full(true);
    let (_, out) = device.request(RequestType::Post, &["rd", "full"], &["lt=600"], &[], now);
    assert_eq!(response_code(&out[0]), ResponseType::ServiceUnavailable);
    assert_ne!(
        device.channel.registration().unwrap().lifetime.as_secs(),
        600
    );
    let senml = br#"[{"bn":"/3/0/","n":"0","vs":"acme"}]"#;
    let mut send =
        Packet::from_bytes(&request(RequestType::Post, next_id(), &["dp"], &[], senml)).unwrap();
    send.add_option(CoapOption::ContentFormat, vec![110]);
    let (_, out) = device.send(Bytes::from(send.to_bytes().unwrap()), now);
    assert_eq!(response_code(&out[0]), ResponseType::ServiceUnavailable);
    assert_eq!(received(&watcher, now), Vec::<String>::new());
    // Commands (QoS 0) still reach the device.
    assert!(device.gets_command_for(&broker, "full", now));
}

#[test]
fn the_answer_to_a_register_waits_until_its_event_is_durable() {
    let now = Instant::now();
    let store = Arc::new(MapStore::default());
    store.hold_back();
    let broker = testing::broker_on_store(store.clone(), now);
    // A persistent subscriber: the register event (QoS 1) is stored for it.
    let watcher = watch(&broker, "lwm2m/+/up/#", 3600, now);
    let mut settings = settings();
    settings.register.qos = QoS::AtLeastOnce;
    let mut device = Device::new(&broker, settings, now);

    let id = next_id();
    let register = request(RequestType::Post, id, &["rd"], &["ep=slow"], b"</3/0>");
    let (flow, out) = device.send(register.clone(), now);
    assert_eq!(flow, Flow::Continue);
    assert!(
        out.is_empty(),
        "answered before the event is durable: {out:?}"
    );
    assert_eq!(received(&watcher, now), ["lwm2m/slow/up/resp"]);
    // The device retransmits: not registered twice.
    let (_, out) = device.send(register.clone(), now);
    assert!(out.is_empty());
    assert_eq!(received(&watcher, now), Vec::<String>::new());
    // Nor is it sent a command before it knows it is registered.
    assert!(!device.gets_command_for(&broker, "slow", now));

    let woken = device.wakeup.count();
    store.make_durable(store.submitted());
    assert!(device.wakeup.count() > woken, "the store woke it");
    let (flow, out) = device.wake(now);
    assert_eq!(flow, Flow::Continue);
    assert_eq!(response_code(&out[0]), ResponseType::Created);
    assert_eq!(out[0].header.message_id, id);
    assert_eq!(out[1].header.code, MessageClass::Request(RequestType::Get));
    // A retransmission now gets the same answer again from the message layer.
    let (_, out) = device.send(register, now);
    assert_eq!(out.len(), 1);
    assert_eq!(response_code(&out[0]), ResponseType::Created);
    assert_eq!(received(&watcher, now), Vec::<String>::new());
}

#[test]
fn an_update_while_a_receiver_of_its_events_is_behind_gets_5_03_with_max_age_1() {
    let t0 = Instant::now();
    let broker = testing::broker(t0);
    // Connected, and not drained until later: the default high water is 500 messages.
    let watcher = watch(&broker, "lwm2m/#", 0, t0);
    let mut device = Device::new(&broker, settings(), t0);
    assert_eq!(
        device.register(&["ep=busy", "lwm2m=1.1"], t0),
        ResponseType::Created
    );
    let update = |device: &mut Device| {
        let (_, out) = device.request(RequestType::Post, &["rd", "busy"], &[], &[], t0);
        out.into_iter().next().expect("an answer")
    };
    // The register event and 499 update events make it behind.
    for _ in 0..499 {
        assert_eq!(response_code(&update(&mut device)), ResponseType::Changed);
    }
    let answer = update(&mut device);
    assert_eq!(response_code(&answer), ResponseType::ServiceUnavailable);
    let max_age = answer
        .get_first_option(CoapOption::MaxAge)
        .map(|raw| raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)));
    assert_eq!(max_age, Some(1));
    // The receiver takes its events: the device is let go.
    assert_eq!(received(&watcher, t0).len(), 500);
    assert_eq!(response_code(&update(&mut device)), ResponseType::Changed);
}

#[test]
fn an_update_over_the_messages_rate_gets_5_03_with_the_seconds_left_as_max_age() {
    let t0 = Instant::now();
    let broker = testing::broker(t0);
    let watcher = watch(&broker, "lwm2m/#", 0, t0);
    let mut settings = settings();
    // One event per 10 s: the register event spends it.
    settings.rates = PublishRates::new("1/10s".parse().unwrap(), "infinity".parse().unwrap());
    let mut device = Device::new(&broker, settings, t0);
    assert_eq!(
        device.register(&["ep=rated", "lwm2m=1.1"], t0),
        ResponseType::Created
    );
    assert_eq!(received(&watcher, t0).len(), 1);

    let later = t0 + Duration::from_millis(3500);
    let update = |device: &mut Device, now: Instant| {
        let (_, out) = device.request(RequestType::Post, &["rd", "rated"], &["lt=600"], &[], now);
        out.into_iter().next().expect("an answer")
    };
    let answer = update(&mut device, later);
    assert_eq!(response_code(&answer), ResponseType::ServiceUnavailable);
    let max_age = answer
        .get_first_option(CoapOption::MaxAge)
        .map(|raw| raw.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)));
    assert_eq!(max_age, Some(7), "6.5 s left, rounded up");
    assert_ne!(
        device.channel.registration().unwrap().lifetime.as_secs(),
        600,
        "a refused update changes nothing"
    );

    // The pause ends by time: it is the channel's deadline.
    let resume = device.channel.next_deadline().expect("a deadline");
    assert!(resume >= t0 + Duration::from_secs(10));
    assert!(resume <= t0 + Duration::from_millis(10_001));
    device.channel.handle_timeout(&mut Vec::new(), resume);
    assert!(device.channel.next_deadline() > Some(resume));
    assert_eq!(
        response_code(&update(&mut device, resume)),
        ResponseType::Changed
    );
    assert_eq!(received(&watcher, resume), ["lwm2m/rated/up/update"]);
}

fn lwm2m_key(endpoint: &str) -> mqtt_core::session::SessionKey {
    mqtt_core::session::SessionKey {
        namespace: "lwm2m",
        client_id: Arc::from(endpoint),
    }
}

#[test]
fn a_kicked_device_is_forgotten_and_must_register_again() {
    let now = Instant::now();
    let broker = testing::broker(now);
    let mut device = Device::new(&broker, settings(), now);
    assert_eq!(device.register(&["ep=k"], now), ResponseType::Created);
    assert!(broker.kick(&lwm2m_key("k"), now));
    assert!(device.wakeup.count() > 0);
    let (flow, out) = device.wake(now);
    assert_eq!(flow, Flow::Close, "the registration is forgotten");
    assert!(out.is_empty(), "LwM2M has no message for it");
    device.channel.handle_closed(now);
    assert!(broker.session(&lwm2m_key("k")).is_none());
    assert_eq!(broker.subscription_count(), 0, "its command topic too");
    // Its next update, on the peer the driver makes anew, is told to register again.
    let mut again = Device::new(&broker, settings(), now);
    let (_, out) = again.request(RequestType::Post, &["rd", "k"], &[], &[], now);
    assert_eq!(response_code(&out[0]), ResponseType::NotFound);
    assert_eq!(again.register(&["ep=k"], now), ResponseType::Created);
}

#[test]
fn presence_events_tell_of_registrations() {
    let now = Instant::now();
    let broker = testing::broker_with_presence(now);
    let watcher = testing::presence_watcher(&broker, now);
    let mut device = Device::new(&broker, settings(), now);
    assert_eq!(
        device.register(&["ep=urn:dev:1", "lwm2m=1.1", "lt=300"], now),
        ResponseType::Created
    );
    let lifetime = device.channel.registration().unwrap().lifetime.as_secs();
    let (topic, connected) = testing::presence_event(&watcher, now);
    assert_eq!(
        topic,
        "$SYS/brokers/test@node/gateway/lwm2m/clients/urn:dev:1/connected"
    );
    assert_eq!(connected["protocol"], "lwm2m");
    assert_eq!(connected["proto_name"], "LwM2M");
    assert_eq!(connected["proto_ver"], "1.1");
    assert_eq!(connected["keepalive"], lifetime);
    assert_eq!(connected["username"], "urn:dev:1");
    let (flow, _) = device.request(RequestType::Delete, &["rd", "urn:dev:1"], &[], &[], now);
    assert_eq!(flow, Flow::Close);
    device.channel.handle_closed(now);
    let events = testing::presence_events(&watcher, now);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].0.ends_with("/disconnected"));
    assert_eq!(events[0].1["reason"], "normal");

    // A registration whose lifetime runs out.
    let mut device = Device::new(&broker, settings(), now);
    assert_eq!(device.register(&["ep=quiet"], now), ResponseType::Created);
    testing::presence_events(&watcher, now);
    let expiry = device.channel.next_deadline().unwrap();
    let mut out = Vec::new();
    assert_eq!(device.channel.handle_timeout(&mut out, expiry), Flow::Close);
    device.channel.handle_closed(expiry);
    let events = testing::presence_events(&watcher, expiry);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["reason"], "keepalive_timeout");
}
