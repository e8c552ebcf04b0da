#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
//! Per-listener settings on MQTT listeners: a mountpoint that gives a listener's clients
//! a topic space of their own, and a connection rate limit. mosquitto clients on a second
//! TCP listener (`listeners.tcp.mounted`) and on the default one.
//!
//! mosquitto's clients read their arguments in order, so a `-p` among the extra arguments
//! overrides the default listener's port.

use std::time::{Duration, Instant};

use interop_tests::broker::free_port;
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, MosquittoSub, Setting, Version, TIMEOUT,
};

const QUIET: Duration = Duration::from_millis(500);

/// A gateway with a second TCP listener configured by `(key, value)` pairs; its port.
fn with_second_listener(pairs: &[(&'static str, &str)]) -> Option<(Broker, String)> {
    let port = free_port();
    let mut settings = vec![Setting::new(
        "GATEWAY_LISTENERS__TCP__MOUNTED__BIND",
        format!("127.0.0.1:{port}"),
    )];
    settings.extend(
        pairs
            .iter()
            .map(|(key, value)| Setting::new(key, value.to_string())),
    );
    let mut broker = Broker::start_gateway_only("a second TCP listener", &settings)?;
    broker.wait_listening(port);
    Some((broker, port.to_string()))
}

#[test]
fn a_mountpoint_gives_the_listener_clients_a_topic_space_of_their_own() {
    let prefix = unique_topic("tenant");
    let mountpoint = format!("{prefix}/");
    let Some((broker, mounted_port)) =
        with_second_listener(&[("GATEWAY_LISTENERS__TCP__MOUNTED__MOUNTPOINT", &mountpoint)])
    else {
        return;
    };
    let on_mounted = ["-p", mounted_port.as_str()];
    for version in [Version::V311, Version::V5] {
        // Outside sees the mounted clients' messages under the prefix.
        let mut outside = MosquittoSub::start(&broker, version, &[&format!("{prefix}/#")], 1, &[]);
        // Inside, clients see their own topics, and nothing beyond the prefix.
        let mut inside = MosquittoSub::start(&broker, version, &["a/#"], 1, &on_mounted);

        mosquitto_pub(
            &broker,
            version,
            "a/up",
            b"from inside",
            1,
            false,
            &on_mounted,
        );
        let seen = outside.recv(TIMEOUT);
        assert_eq!(seen.topic, format!("{prefix}/a/up"), "{version:?}");
        assert_eq!(seen.payload, b"from inside");
        let seen = inside.recv(TIMEOUT);
        assert_eq!(
            (seen.topic.as_str(), seen.payload.as_slice()),
            ("a/up", b"from inside".as_slice()),
            "{version:?}: a mounted client's own message comes back under its own topic"
        );

        mosquitto_pub(&broker, version, "a/down", b"unmounted", 1, false, &[]);
        mosquitto_pub(
            &broker,
            version,
            &format!("{prefix}/a/down"),
            b"into the mountpoint",
            1,
            false,
            &[],
        );
        let seen = inside.recv(TIMEOUT);
        assert_eq!(
            (seen.topic.as_str(), seen.payload.as_slice()),
            ("a/down", b"into the mountpoint".as_slice()),
            "{version:?}: only the message under the prefix reaches the mounted listener"
        );
        assert!(inside.try_recv(QUIET).is_none(), "{version:?}");
        assert_eq!(
            outside.recv(TIMEOUT).topic,
            format!("{prefix}/a/down"),
            "{version:?}"
        );

        // Retained messages are kept under the prefix and handed back without it.
        let retained = format!("r/{}", unique_topic("kept"));
        mosquitto_pub(&broker, version, &retained, b"kept", 1, true, &on_mounted);
        let mut late = MosquittoSub::start(&broker, version, &[&retained], 1, &on_mounted);
        let seen = late.recv(TIMEOUT);
        assert_eq!(
            (seen.topic.as_str(), seen.retain),
            (retained.as_str(), true)
        );
        let mut late_outside =
            MosquittoSub::start(&broker, version, &[&format!("{prefix}/{retained}")], 1, &[]);
        assert_eq!(late_outside.recv(TIMEOUT).payload, b"kept");
        mosquitto_pub(&broker, version, &retained, b"", 1, true, &on_mounted);
    }
}

#[test]
fn a_mountpoint_with_the_client_id_puts_each_client_under_its_own_prefix() {
    let prefix = unique_topic("devices");
    let template = format!("{prefix}/${{clientid}}/");
    let Some((broker, mounted_port)) =
        with_second_listener(&[("GATEWAY_LISTENERS__TCP__MOUNTED__MOUNTPOINT", &template)])
    else {
        return;
    };
    let device = unique_client_id("dev");
    let mut outside = MosquittoSub::start(
        &broker,
        Version::V311,
        &[&format!("{prefix}/+/state")],
        1,
        &[],
    );
    let mut commands = MosquittoSub::start(
        &broker,
        Version::V5,
        &["cmd"],
        1,
        &["-p", &mounted_port, "-i", &device],
    );
    mosquitto_pub(
        &broker,
        Version::V5,
        "state",
        b"on",
        1,
        false,
        &["-p", &mounted_port, "-i", &format!("{device}-p")],
    );
    let seen = outside.recv(TIMEOUT);
    assert_eq!(seen.topic, format!("{prefix}/{device}-p/state"));

    mosquitto_pub(
        &broker,
        Version::V311,
        &format!("{prefix}/{device}-other/cmd"),
        b"not yours",
        1,
        false,
        &[],
    );
    mosquitto_pub(
        &broker,
        Version::V311,
        &format!("{prefix}/{device}/cmd"),
        b"reboot",
        1,
        false,
        &[],
    );
    let seen = commands.recv(TIMEOUT);
    assert_eq!(
        (seen.topic.as_str(), seen.payload.as_slice()),
        ("cmd", b"reboot".as_slice())
    );
    assert!(commands.try_recv(QUIET).is_none());
}

#[test]
fn connections_beyond_the_listener_rate_wait_and_are_then_served() {
    const RATE_PER_SECOND: u32 = 2;
    const CONNECTIONS: u32 = 6;
    let rate = format!("{RATE_PER_SECOND}/s");
    let Some((broker, limited_port)) =
        with_second_listener(&[("GATEWAY_LISTENERS__TCP__MOUNTED__MAX_CONN_RATE", &rate)])
    else {
        return;
    };
    let topic = unique_topic("rate");
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&topic], 1, &[]);
    let started = Instant::now();
    for i in 0..CONNECTIONS {
        mosquitto_pub(
            &broker,
            Version::V311,
            &topic,
            format!("{i}").as_bytes(),
            1,
            false,
            &["-p", &limited_port],
        );
    }
    let elapsed = started.elapsed();
    for i in 0..CONNECTIONS {
        assert_eq!(sub.recv(TIMEOUT).payload, format!("{i}").as_bytes());
    }
    // The first second's worth comes at once; each further one waits its turn.
    let least = Duration::from_secs_f64(
        f64::from(CONNECTIONS - RATE_PER_SECOND) / f64::from(RATE_PER_SECOND) * 0.9,
    );
    assert!(
        elapsed >= least,
        "{CONNECTIONS} connections at {rate} took {elapsed:?}, less than {least:?}"
    );
}
