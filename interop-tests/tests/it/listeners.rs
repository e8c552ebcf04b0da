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

use interop_tests::broker::listener_name;
use interop_tests::ports::{parse_bound_line, BoundListener};
use interop_tests::{
    mosquitto_pub, unique_client_id, unique_topic, Broker, MosquittoSub, Setting, Version, TIMEOUT,
};

const QUIET: Duration = Duration::from_millis(500);

/// A gateway with a second TCP listener configured by `(key, value)` pairs; its port.
fn with_second_listener(pairs: &[(&'static str, &str)]) -> Option<(Broker, String)> {
    let mut settings = vec![Setting::new(
        "GATEWAY_LISTENERS__TCP__MOUNTED__BIND",
        "127.0.0.1:0",
    )];
    settings.extend(
        pairs
            .iter()
            .map(|(key, value)| Setting::new(key, value.to_string())),
    );
    let broker = Broker::start_gateway_only("a second TCP listener", &settings)?;
    let port = broker.listener_port("tcp:mounted");
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

/// Every listener kind, by the prefix of its keys, and the key that gives it what it needs
/// to start (a self-signed certificate, a key file) with its value, if any.
fn every_listener(psk_file: &str) -> Vec<(String, Option<(&'static str, String)>)> {
    let mqtt_tls = Some(("TLS__SELF_SIGNED", "true".to_owned()));
    let gateway_tls = Some(("SSL_OPTIONS__SELF_SIGNED", "true".to_owned()));
    let dtls = Some(("DTLS_OPTIONS__PSK_FILE", psk_file.to_owned()));
    let mut all = vec![
        ("GATEWAY_LISTENERS__TCP__DEFAULT".to_owned(), None),
        (
            "GATEWAY_LISTENERS__SSL__DEFAULT".to_owned(),
            mqtt_tls.clone(),
        ),
        ("GATEWAY_LISTENERS__WS__DEFAULT".to_owned(), None),
        (
            "GATEWAY_LISTENERS__WSS__DEFAULT".to_owned(),
            mqtt_tls.clone(),
        ),
        ("GATEWAY_LISTENERS__QUIC__DEFAULT".to_owned(), mqtt_tls),
        ("GATEWAY_DASHBOARD__LISTENERS__HTTP".to_owned(), None),
    ];
    for (gateway, kinds) in [
        ("MQTTSN", &["UDP", "DTLS"][..]),
        ("COAP", &["UDP", "DTLS", "TCP", "SSL", "WS", "WSS"][..]),
        ("LWM2M", &["UDP", "DTLS"][..]),
        ("STOMP", &["TCP", "SSL", "WS", "WSS"][..]),
    ] {
        for kind in kinds {
            let needs = match *kind {
                "SSL" | "WSS" => gateway_tls.clone(),
                "DTLS" => dtls.clone(),
                _ => None,
            };
            all.push((
                format!("GATEWAY_GATEWAY__{gateway}__LISTENERS__{kind}__DEFAULT"),
                needs,
            ));
        }
    }
    all
}

#[test]
fn every_listener_bound_to_port_0_reports_where_it_is_bound_in_both_log_formats() {
    let dir = tempfile::tempdir().unwrap();
    let psk_file = dir.path().join("psk.txt");
    std::fs::write(&psk_file, "device:secret\n").unwrap();
    let listeners = every_listener(&psk_file.display().to_string());
    let key = |k: String| -> &'static str { Box::leak(k.into_boxed_str()) };
    for format in ["human", "json"] {
        let mut settings = vec![Setting::new("GATEWAY_LOG__FORMAT", format)];
        for (prefix, needs) in &listeners {
            settings.push(Setting::new(key(format!("{prefix}__BIND")), "127.0.0.1:0"));
            settings.push(Setting::new(key(format!("{prefix}__ENABLE")), "true"));
            if let Some((k, v)) = needs {
                settings.push(Setting::new(key(format!("{prefix}__{k}")), v.clone()));
            }
        }
        let Some(broker) = Broker::start_gateway_only("every listener", &settings) else {
            return;
        };
        let log = broker.log();
        let reports: Vec<(&str, BoundListener)> = log
            .lines()
            .filter_map(|line| Some((line, parse_bound_line(line)?)))
            .collect();
        let mut names: Vec<String> = reports.iter().map(|(_, b)| b.name.clone()).collect();
        let mut expected: Vec<String> = listeners.iter().map(|(p, _)| listener_name(p)).collect();
        names.sort();
        expected.sort();
        // One line for each, no more.
        assert_eq!(names, expected, "{format}:\n{log}");
        for (line, bound) in &reports {
            assert_eq!(line.starts_with('{'), format == "json", "{line}");
            assert_ne!(bound.addr.port(), 0, "{line}");
            assert_eq!(bound.addr.ip().to_string(), "127.0.0.1", "{line}");
            // The port reported is the one held: binding it again fails.
            let name = bound.name.as_str();
            let datagrams =
                name.contains(":udp:") || name.contains(":dtls:") || name == "quic:default";
            let taken = if datagrams {
                std::net::UdpSocket::bind(bound.addr).is_err()
            } else {
                std::net::TcpListener::bind(bound.addr).is_err()
            };
            assert!(taken, "{name} does not hold {}: {line}", bound.addr);
        }
        assert_eq!(broker.port, broker.listener_port("tcp:default"));
        assert_eq!(broker.admin_port, broker.listener_port("dashboard:http"));
    }
}
