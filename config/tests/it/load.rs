//! Loading through the public API: layering, listener templates, and error messages that name
//! the key and where the value came from. Env tests run inside `figment::Jail`, which
//! serialises them and restores the environment afterwards.

// Jail closures must return figment::Result, whose error type is large; not ours to change.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration as StdDuration;

use figment::Jail;
use gateway_config::{
    AclNoMatch, ByteRate, Config, ConfigError, LogFormat, Rate, SharedSubscriptionStrategy,
    DEFAULT_TOML,
};

// A valid config yields text no assertion looks for, so the caller's assert shows it.
fn err_text(result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(config) => format!("unexpectedly valid: {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_parse_and_validate() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c, Config::defaults().unwrap());
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Human);
    assert_eq!(c.mqtt.max_packet_size, 1_048_576);
    assert_eq!(c.mqtt.await_rel_timeout.get(), StdDuration::from_secs(300));
    assert_eq!(
        c.mqtt.session_expiry_interval.get(),
        StdDuration::from_secs(7200)
    );
    assert_eq!(
        c.mqtt.shared_subscription_strategy,
        SharedSubscriptionStrategy::RoundRobin
    );
    assert_eq!(c.auth.password_file, None);
    assert_eq!(c.auth.acl_file, None);
    assert_eq!(c.auth.acl_no_match, AclNoMatch::Allow);
    let l = &c.listeners.tcp["default"];
    assert!(l.enable);
    assert_eq!(l.bind_addr().unwrap().to_string(), "0.0.0.0:1883");
    assert_eq!(l.handshake_timeout.get(), StdDuration::from_secs(10));
}

#[test]
fn default_toml_is_the_whole_config_and_round_trips() {
    // DEFAULT_TOML alone (not merged over itself) must already be a full config.
    let alone: Config = toml::from_str(DEFAULT_TOML).unwrap();
    assert_eq!(alone, Config::defaults().unwrap());
    // Printing the effective config and loading it back changes nothing.
    let printed = toml::to_string(&Config::defaults().unwrap()).unwrap();
    assert_eq!(
        Config::from_toml_str(&printed).unwrap(),
        Config::defaults().unwrap()
    );
}

#[test]
fn all_enum_spellings() {
    for (text, want) in [
        ("random", SharedSubscriptionStrategy::Random),
        ("round_robin", SharedSubscriptionStrategy::RoundRobin),
        ("sticky", SharedSubscriptionStrategy::Sticky),
        ("hash_clientid", SharedSubscriptionStrategy::HashClientid),
        ("hash_topic", SharedSubscriptionStrategy::HashTopic),
    ] {
        let c = Config::from_toml_str(&format!(
            "[mqtt]\nshared_subscription_strategy = \"{text}\""
        ))
        .unwrap();
        assert_eq!(c.mqtt.shared_subscription_strategy, want);
    }
    let c =
        Config::from_toml_str("[log]\nformat = \"json\"\n[auth]\nacl_no_match = \"deny\"").unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.auth.acl_no_match, AclNoMatch::Deny);
}

#[test]
fn file_overrides_defaults_and_keeps_the_rest() {
    let c = Config::from_toml_str(
        r#"
        [mqtt]
        max_packet_size = 4096
        keepalive_multiplier = 2
        await_rel_timeout = 60
        [auth]
        allow_anonymous = false
        password_file = "/etc/gateway/passwd"
        "#,
    )
    .unwrap();
    assert_eq!(c.mqtt.max_packet_size, 4096);
    assert_eq!(c.mqtt.keepalive_multiplier, 2.0);
    assert_eq!(c.mqtt.await_rel_timeout.get(), StdDuration::from_secs(60));
    assert_eq!(c.mqtt.receive_maximum, 32);
    assert!(!c.auth.allow_anonymous);
    assert_eq!(
        c.auth.password_file.as_deref(),
        Some(Path::new("/etc/gateway/passwd"))
    );
    assert_eq!(c.auth.acl_file, None);
}

#[test]
fn new_listener_takes_defaults_and_default_listener_stays() {
    let c = Config::from_toml_str(
        r#"
        [listeners.tcp.local]
        bind = "127.0.0.1:11883"
        [listeners.tcp.wide]
        bind = 21883
        max_connections = 10
        "#,
    )
    .unwrap();
    assert_eq!(c.listeners.tcp.len(), 3);
    assert!(c.listeners.tcp["default"].enable);
    let local = &c.listeners.tcp["local"];
    assert!(local.enable);
    assert_eq!(local.max_connections, 1_024_000);
    assert_eq!(local.handshake_timeout.get(), StdDuration::from_secs(10));
    let wide = &c.listeners.tcp["wide"];
    assert_eq!(wide.bind_addr().unwrap().to_string(), "0.0.0.0:21883");
    assert_eq!(wide.max_connections, 10);
}

#[test]
fn default_listener_can_be_disabled() {
    let c = Config::from_toml_str("[listeners.tcp.default]\nenable = false").unwrap();
    assert!(!c.listeners.tcp["default"].enable);
    // Disabled listeners do not count for bind clashes.
    let c = Config::from_toml_str(
        "[listeners.tcp.default]\nenable = false\n[listeners.tcp.other]\nbind = \"1883\"",
    )
    .unwrap();
    assert!(c.listeners.tcp["other"].enable);
}

#[test]
fn new_listener_without_bind_names_the_key() {
    let e = err_text(Config::from_toml_str(
        "[listeners.tcp.extra]\nenable = true",
    ));
    assert!(e.contains("listeners.tcp.extra.bind"), "{e}");
}

#[test]
fn unknown_keys_name_the_key() {
    let e = err_text(Config::from_toml_str("[mqtt]\nmax_packet_sise = 10"));
    assert!(e.contains("mqtt.max_packet_sise"), "{e}");
    assert!(e.contains("unknown key"), "{e}");
    assert!(e.contains("the given TOML"), "{e}");

    let e = err_text(Config::from_toml_str("[mqqt]\nx = 1"));
    assert!(e.contains("unknown key `mqqt`"), "{e}");

    let e = err_text(Config::from_toml_str(
        "[listeners.tcp.default]\nbacklog = 5",
    ));
    assert!(e.contains("listeners.tcp.default.backlog"), "{e}");
}

#[test]
fn type_errors_name_the_key() {
    let cases = [
        ("[mqtt]\nmax_packet_size = \"big\"", "mqtt.max_packet_size"),
        ("[mqtt]\nmax_topic_alias = 70000", "mqtt.max_topic_alias"),
        (
            "[mqtt]\nretain_available = \"yes\"",
            "mqtt.retain_available",
        ),
        (
            "[mqtt]\nawait_rel_timeout = \"5 minutes\"",
            "mqtt.await_rel_timeout",
        ),
        (
            "[mqtt]\nshared_subscription_strategy = \"fastest\"",
            "mqtt.shared_subscription_strategy",
        ),
        ("[log]\nformat = \"xml\"", "log.format"),
        ("[auth]\nacl_no_match = \"maybe\"", "auth.acl_no_match"),
        ("[sys]\ninterval = -1", "sys.interval"),
        ("[listeners]\ntcp = 5", "listeners.tcp"),
    ];
    for (toml, key) in cases {
        let e = err_text(Config::from_toml_str(toml));
        assert!(e.contains(key), "{toml:?} -> {e}");
    }
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        (
            "[mqtt]\nmax_qos_allowed = 3",
            "mqtt.max_qos_allowed must be 0, 1 or 2",
        ),
        (
            "[mqtt]\nreceive_maximum = 0",
            "mqtt.receive_maximum must be 1..=65535",
        ),
        (
            "[mqtt]\nreceive_maximum = 65536",
            "mqtt.receive_maximum must be 1..=65535",
        ),
        (
            "[mqtt]\nmax_inflight = 0",
            "mqtt.max_inflight must be 1..=65535",
        ),
        (
            "[mqtt]\nkeepalive_multiplier = 0.5",
            "mqtt.keepalive_multiplier must be >= 1.0",
        ),
        (
            "[mqtt]\nkeepalive_multiplier = nan",
            "mqtt.keepalive_multiplier must be >= 1.0",
        ),
        (
            "[mqtt]\nmax_packet_size = 0",
            "mqtt.max_packet_size must be",
        ),
        (
            "[mqtt]\nmax_packet_size = 300000000",
            "mqtt.max_packet_size must be",
        ),
        (
            "[mqtt]\nmax_client_id_length = 10",
            "mqtt.max_client_id_length must be 23..=65535",
        ),
        (
            "[mqtt]\nmax_topic_levels = 0",
            "mqtt.max_topic_levels must be >= 1",
        ),
        (
            "[mqtt]\nmax_awaiting_rel = 0",
            "mqtt.max_awaiting_rel must be >= 1",
        ),
        (
            "[mqtt]\nawait_rel_timeout = \"0s\"",
            "mqtt.await_rel_timeout must be longer",
        ),
        (
            "[mqtt]\nreceiver_low_water = 500",
            "mqtt.receiver_low_water (500) must be below mqtt.receiver_high_water (500)",
        ),
        (
            "[mqtt]\nmax_queued_messages = 200",
            "mqtt.receiver_high_water (500) must not exceed mqtt.max_queued_messages (200)",
        ),
        (
            "[mqtt]\nslow_receiver_timeout = \"0s\"",
            "mqtt.slow_receiver_timeout must be longer",
        ),
        ("[mqtt]\nmax_keepalive = 0", "mqtt.max_keepalive must be"),
        (
            "[mqtt]\nmax_keepalive = 60\nserver_keepalive = 120",
            "mqtt.server_keepalive (120) must not exceed",
        ),
        (
            "[mqtt]\nsession_expiry_interval = \"50000d\"",
            "mqtt.session_expiry_interval must be at most",
        ),
        ("[sys]\ninterval = 0", "sys.interval must be longer"),
        ("[node]\nname = \"a/b\"", "node.name must be 1 to 255 bytes"),
        ("[node]\nname = \"+\"", "node.name must be 1 to 255 bytes"),
        ("[node]\nname = \"\"", "node.name must be 1 to 255 bytes"),
        ("[log]\nlevel = \"\"", "log.level must not be empty"),
        (
            "[listeners.tcp.default]\nbind = \"localhost:1883\"",
            "listeners.tcp.default.bind: invalid address \"localhost:1883\"",
        ),
        (
            "[listeners.tcp.default]\nmax_connections = 0",
            "listeners.tcp.default.max_connections must be >= 1",
        ),
        (
            "[listeners.tcp.default]\nhandshake_timeout = 0",
            "listeners.tcp.default.handshake_timeout must be longer",
        ),
        (
            "[listeners.tcp.\"a.b\"]\nbind = 1",
            "invalid listener name \"a.b\"",
        ),
        (
            "[listeners.ws.default]\nmountpoint = \"a/+/\"",
            "listeners.ws.default.mountpoint \"a/+/\" must not contain",
        ),
        (
            "[gateway.coap.listeners.udp.default]\nmax_queued_datagrams = 0",
            "gateway.coap.listeners.udp.default.max_queued_datagrams must be >= 1",
        ),
        (
            "[gateway.mqttsn.listeners.udp.default]\nmax_peers_per_source = 0",
            "gateway.mqttsn.listeners.udp.default.max_peers_per_source must be >= 1",
        ),
        (
            "[gateway.mqttsn]\nmax_idle_without_keepalive = \"0s\"",
            "gateway.mqttsn.max_idle_without_keepalive must be longer",
        ),
        (
            "[gateway.stomp]\nmax_unacked = 65536",
            "gateway.stomp.max_unacked must be at most 65535",
        ),
        (
            "[gateway.mqttsn]\nmountpoint = \"#\"",
            "gateway.mqttsn.mountpoint \"#\" must not contain",
        ),
        (
            "[gateway.mqttsn.listeners.udp.default]\nmountpoint = \"a/#\"",
            "gateway.mqttsn.listeners.udp.default.mountpoint \"a/#\" must not contain",
        ),
        (
            "[gateway.mqttsn.clientinfo_override]\nusername = \"${client_id}\"",
            "unknown placeholder ${client_id}; known: ${clientid}, ${username}",
        ),
        (
            "[gateway.mqttsn.clientinfo_override]\npassword = \"x${clientid\"",
            "gateway.mqttsn.clientinfo_override.password \"x${clientid\": unclosed",
        ),
        (
            "[listeners.tcp.default]\nmax_conn_rate = \"fast\"",
            "listeners.tcp.default.max_conn_rate",
        ),
    ];
    for (toml, want) in cases {
        let e = err_text(Config::from_toml_str(toml));
        assert!(e.contains(want), "{toml:?} -> {e}");
    }
}

#[test]
fn every_problem_is_reported_with_its_source() {
    let result = Config::from_toml_str("[mqtt]\nmax_qos_allowed = 7\nreceive_maximum = 0");
    let Err(e) = result else { panic!("must fail") };
    let problems = e.problems();
    assert_eq!(problems.len(), 2, "{e}");
    assert_eq!(problems[0].key, "mqtt.max_qos_allowed");
    assert_eq!(problems[0].origin.as_deref(), Some("the given TOML"));
    assert_eq!(problems[1].key, "mqtt.receive_maximum");
}

#[test]
fn two_enabled_listeners_on_one_address() {
    let e = err_text(Config::from_toml_str(
        "[listeners.tcp.other]\nbind = \"1883\"",
    ));
    assert!(
        e.contains("listeners.tcp.other.bind: address 0.0.0.0:1883 is also bound by enabled listener listeners.tcp.default"),
        "{e}"
    );
    let e = err_text(Config::from_toml_str(
        "[listeners.tcp.lo]\nbind = \"127.0.0.1:1883\"",
    ));
    assert!(e.contains("listeners.tcp.lo.bind"), "{e}");
    // Different port: fine.
    Config::from_toml_str("[listeners.tcp.lo]\nbind = \"127.0.0.1:1884\"").unwrap();
}

#[test]
fn toml_syntax_error_is_reported() {
    let e = err_text(Config::from_toml_str("[mqtt\nmax_qos_allowed = 1"));
    assert!(e.contains("the given TOML"), "{e}");
}

#[test]
fn load_missing_file_fails() {
    let e = Config::load(Some(Path::new("/nonexistent/gateway.toml"))).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/gateway.toml"), "{e}");
}

#[test]
fn load_file_then_env() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "gw.toml",
            r#"
            [mqtt]
            max_packet_size = 2048
            max_inflight = 8
            [listeners.tcp.default]
            bind = "127.0.0.1:1883"
            "#,
        )?;
        jail.set_env("GATEWAY_MQTT__MAX_PACKET_SIZE", "1024");
        jail.set_env("GATEWAY_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:21883");
        jail.set_env("GATEWAY_MQTT__SESSION_EXPIRY_INTERVAL", "5m");
        jail.set_env("GATEWAY_AUTH__PASSWORD_FILE", "/tmp/pw");
        jail.set_env("GATEWAY_AUTH__ALLOW_ANONYMOUS", "false");
        jail.set_env("GATEWAY_MQTT__KEEPALIVE_MULTIPLIER", "2.5");
        jail.set_env("GATEWAY_LOG__FORMAT", "json");
        // Not nested: belongs to the CLI, ignored here rather than an unknown key.
        jail.set_env("GATEWAY_CONFIG", "/somewhere/else.toml");

        let c = Config::load(Some(Path::new("gw.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(c.mqtt.max_packet_size, 1024, "env beats file");
        assert_eq!(c.mqtt.max_inflight, 8, "file beats defaults");
        assert_eq!(c.mqtt.receive_maximum, 32, "defaults stay");
        assert_eq!(
            c.listeners.tcp["default"]
                .bind_addr()
                .map_err(|e| e.to_string())?
                .to_string(),
            "127.0.0.1:21883"
        );
        assert_eq!(
            c.mqtt.session_expiry_interval.get(),
            StdDuration::from_secs(300)
        );
        assert_eq!(c.auth.password_file.as_deref(), Some(Path::new("/tmp/pw")));
        assert!(!c.auth.allow_anonymous);
        assert_eq!(c.mqtt.keepalive_multiplier, 2.5);
        assert_eq!(c.log.format, LogFormat::Json);
        Ok(())
    });
}

#[test]
fn env_adds_a_listener_with_a_bare_port() {
    Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_LISTENERS__TCP__EXTRA__BIND", "11883");
        jail.set_env("GATEWAY_LISTENERS__TCP__DEFAULT__ENABLE", "false");
        let c = Config::load(None).map_err(|e| e.to_string())?;
        assert!(!c.listeners.tcp["default"].enable);
        let extra = &c.listeners.tcp["extra"];
        assert!(extra.enable);
        assert_eq!(
            extra.bind_addr().map_err(|e| e.to_string())?.to_string(),
            "0.0.0.0:11883"
        );
        Ok(())
    });
}

#[test]
fn env_errors_name_the_variable() {
    Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_MQTT__MAX_QOS_ALLOWED", "5");
        let e = err_text(Config::load(None));
        assert!(e.contains("mqtt.max_qos_allowed must be 0, 1 or 2"), "{e}");
        assert!(e.contains("env GATEWAY_MQTT__MAX_QOS_ALLOWED"), "{e}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_MQTT__MAX_PAKET_SIZE", "5");
        let e = err_text(Config::load(None));
        assert!(e.contains("unknown key `mqtt.max_paket_size`"), "{e}");
        assert!(e.contains("env GATEWAY_MQTT__MAX_PAKET_SIZE"), "{e}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_MQTT__RETAIN_AVAILABLE", "often");
        let e = err_text(Config::load(None));
        assert!(e.contains("mqtt.retain_available"), "{e}");
        assert!(e.contains("env GATEWAY_MQTT__RETAIN_AVAILABLE"), "{e}");
        Ok(())
    });
}

#[test]
fn file_errors_name_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("bad.toml", "[mqtt]\nreceive_maximum = 0\nbogus = 1\n")?;
        let e = err_text(Config::load(Some(Path::new("bad.toml"))));
        assert!(e.contains("unknown key `mqtt.bogus`"), "{e}");
        assert!(e.contains("bad.toml"), "{e}");
        Ok(())
    });
    Jail::expect_with(|jail| {
        jail.create_file("bad.toml", "[mqtt]\nreceive_maximum = 0\n")?;
        let e = err_text(Config::load(Some(Path::new("bad.toml"))));
        assert!(
            e.contains("mqtt.receive_maximum must be 1..=65535, got 0"),
            "{e}"
        );
        assert!(e.contains("(from file ") && e.contains("bad.toml)"), "{e}");
        Ok(())
    });
}

#[test]
fn listeners_of_every_kind_take_their_kinds_defaults_nested_tables_included() {
    let c = Config::from_toml_str(
        r#"
        [listeners.ws.lan]
        bind = "[::1]:18083"
        [listeners.ws.lan.websocket]
        mqtt_path = "/lan"
        [listeners.wss.public]
        bind = 18084
        [listeners.wss.public.tls]
        certfile = "/etc/gw/cert.pem"
        keyfile = "/etc/gw/key.pem"
        [listeners.ssl.internal]
        bind = 18883
        "#,
    )
    .unwrap();
    let lan = &c.listeners.ws["lan"];
    assert_eq!(lan.bind_addr().unwrap().to_string(), "[::1]:18083");
    assert_eq!(lan.websocket.mqtt_path, "/lan");
    assert!(lan.websocket.fail_if_no_subprotocol);
    assert_eq!(lan.websocket.max_frame_size, 2_097_152);
    let public = &c.listeners.wss["public"];
    assert!(public.tls.has_certificate());
    assert_eq!(public.websocket.mqtt_path, "/mqtt");
    assert_eq!(public.tls.versions.len(), 2);
    // Without a certificate a TLS listener is valid but does not start, so it claims no port.
    assert!(!c.listeners.ssl["internal"].tls.has_certificate());
}

#[test]
fn gateway_udp_listeners_added_by_name_take_their_tables_defaults() {
    let c = Config::from_toml_str(
        r#"
        [gateway.mqttsn.listeners.udp.lan]
        bind = 11884
        mountpoint = "lan/"
        [gateway.coap.listeners.udp.lan]
        bind = 15683
        "#,
    )
    .unwrap();
    let sn = &c.gateway.mqttsn.listeners.udp["lan"];
    assert_eq!(sn.max_queued_datagrams, 64);
    assert_eq!(sn.mountpoint, "lan/");
    assert_eq!(c.gateway.mqttsn.listeners.udp["default"].mountpoint, "");
    assert_eq!(c.gateway.coap.listeners.udp["lan"].max_packet_size, 65_535);
}

#[test]
fn tls_and_websocket_settings_are_checked() {
    for (toml, key) in [
        (
            "[listeners.ssl.default.tls]\ncertfile = \"/c.pem\"",
            "listeners.ssl.default.tls.keyfile",
        ),
        (
            "[listeners.ssl.default.tls]\nverify = \"required\"",
            "listeners.ssl.default.tls.cacertfile",
        ),
        (
            "[listeners.wss.default.tls]\nversions = []",
            "listeners.wss.default.tls.versions",
        ),
        (
            "[listeners.ws.default.websocket]\nmqtt_path = \"mqtt\"",
            "listeners.ws.default.websocket.mqtt_path",
        ),
        (
            "[listeners.ws.default.websocket]\nmax_frame_size = 0",
            "listeners.ws.default.websocket.max_frame_size",
        ),
        (
            "[listeners.ws.default]\nbind = \"1883\"",
            "listeners.ws.default.bind",
        ),
    ] {
        let err = Config::from_toml_str(toml).unwrap_err();
        assert!(
            err.problems().iter().any(|p| p.key == key),
            "{toml}: expected a problem at {key}, got {err}"
        );
    }
}

#[test]
fn trusted_proxies_are_networks_and_need_the_proxy_header() {
    let c = Config::from_toml_str(
        "[listeners.wss.default.websocket]\nproxy_address_header = \"x-forwarded-for\"\ntrusted_proxies = [\"10.0.0.5\", \"fd00::/8\"]",
    )
    .unwrap();
    let trusted = &c.listeners.wss["default"].websocket.trusted_proxies;
    assert!(trusted[0].contains("10.0.0.5".parse().unwrap()));
    assert!(trusted[1].contains("fd00::7".parse().unwrap()));
    assert!(c.listeners.ws["default"]
        .websocket
        .trusted_proxies
        .is_empty());
    for (toml, key) in [
        (
            "[listeners.ws.default.websocket]\ntrusted_proxies = [\"10.0.0.5\"]",
            "listeners.ws.default.websocket.trusted_proxies",
        ),
        (
            "[listeners.ws.default.websocket]\nproxy_address_header = \"x-forwarded-for\"\ntrusted_proxies = [\"10.0.0.0/40\"]",
            "listeners.ws.default.websocket.trusted_proxies",
        ),
    ] {
        let err = Config::from_toml_str(toml).unwrap_err();
        assert!(
            err.problems().iter().any(|p| p.key.starts_with(key)),
            "{toml}: expected a problem at {key}, got {err}"
        );
    }
}

#[test]
fn proxy_protocol_is_off_by_default_and_its_timeout_checked() {
    let c = Config::defaults().unwrap();
    assert!(!c.listeners.tcp["default"].proxy_protocol);
    assert!(!c.listeners.ssl["default"].proxy_protocol);
    let err = Config::from_toml_str(
        "[listeners.tcp.default]\nproxy_protocol = true\nproxy_protocol_timeout = \"0s\"",
    )
    .unwrap_err();
    assert!(err
        .problems()
        .iter()
        .any(|p| p.key == "listeners.tcp.default.proxy_protocol_timeout"));
}

#[test]
fn quic_listener_needs_tls13_and_shares_udp_ports_with_mqttsn() {
    let c = Config::defaults().unwrap();
    let quic = &c.listeners.quic["default"];
    assert_eq!(quic.bind_addr().unwrap().to_string(), "0.0.0.0:14567");
    assert!(!quic.enable_0rtt);
    // Listed but off until it has a certificate, like ssl and wss.
    assert!(!quic.tls.has_certificate());
    for (toml, key) in [
        (
            "[listeners.quic.default.tls]\nversions = [\"tlsv1.2\"]",
            "listeners.quic.default.tls.versions",
        ),
        (
            "[listeners.quic.default.tls]\nciphers = [\"TLS13_AES_256_GCM_SHA384\"]",
            "listeners.quic.default.tls.ciphers",
        ),
        (
            "[listeners.quic.default]\nhandshake_timeout = \"0s\"",
            "listeners.quic.default.handshake_timeout",
        ),
        (
            "[listeners.quic.default]\nbind = \"0.0.0.0:1884\"\n[listeners.quic.default.tls]\nself_signed = true",
            "gateway.mqttsn.listeners.udp.default.bind",
        ),
    ] {
        let err = Config::from_toml_str(toml).unwrap_err();
        assert!(
            err.problems().iter().any(|p| p.key == key),
            "{toml}: expected a problem at {key}, got {err}"
        );
    }
    // QUIC's idle timeout follows the longest keep-alive granted unless set.
    assert_eq!(
        quic.effective_idle_timeout(&c.mqtt),
        std::time::Duration::from_secs_f64(65_535.0 * 1.5)
    );
    let set = Config::from_toml_str("[listeners.quic.default]\nidle_timeout = \"45s\"").unwrap();
    assert_eq!(
        set.listeners.quic["default"].effective_idle_timeout(&set.mqtt),
        std::time::Duration::from_secs(45)
    );
    // UDP and TCP ports are separate spaces: QUIC on 1883/udp beside MQTT on 1883/tcp is fine.
    let c = Config::from_toml_str(
        "[listeners.quic.default]\nbind = \"0.0.0.0:1883\"\n[listeners.quic.default.tls]\nself_signed = true",
    )
    .unwrap();
    assert!(c.listeners.quic["default"].tls.has_certificate());
}

#[test]
fn storage_shorthand_selects_the_backend_with_default_settings() {
    let c = Config::from_toml_str("storage = \"memory\"").unwrap();
    assert_eq!(c.storage.backend, gateway_config::StorageBackend::Memory);
    let defaults = Config::from_toml_str("").unwrap().storage;
    assert_eq!(
        c.storage,
        gateway_config::StorageConfig {
            backend: gateway_config::StorageBackend::Memory,
            ..defaults
        }
    );
    let c = Config::from_toml_str("storage = \"disk\"").unwrap();
    assert_eq!(c.storage.backend, gateway_config::StorageBackend::Disk);
    let e = err_text(Config::from_toml_str("storage = \"tape\""));
    assert!(e.contains("storage.backend"), "{e}");
}

#[test]
fn storage_settings_are_checked() {
    let e = err_text(Config::from_toml_str("[storage]\ncommit_window = \"5s\""));
    assert!(e.contains("storage.commit_window"), "{e}");
    let e = err_text(Config::from_toml_str("[storage]\nfsync = \"sometimes\""));
    assert!(e.contains("storage.fsync"), "{e}");
    let c = Config::from_toml_str("[storage]\nbackend = \"memory\"").unwrap();
    assert_eq!(c.storage.backend, gateway_config::StorageBackend::Memory);
    let c = Config::from_toml_str("[storage]\nnever_sync_interval = \"250ms\"").unwrap();
    assert_eq!(
        c.storage.never_sync_interval.get(),
        std::time::Duration::from_millis(250)
    );
    let e = err_text(Config::from_toml_str(
        "[storage]\nnever_sync_interval = \"soon\"",
    ));
    assert!(e.contains("storage.never_sync_interval"), "{e}");
}

#[test]
fn coap_stream_listeners_take_their_defaults_and_are_checked() {
    let c = Config::from_toml_str(
        r#"
        [gateway.coap.listeners.tcp.lan]
        bind = 15684
        [gateway.coap.listeners.ws.default]
        enable = true
        "#,
    )
    .unwrap();
    let coap = &c.gateway.coap;
    assert_eq!(coap.listeners.tcp["default"].bind, "0.0.0.0:5683");
    assert_eq!(coap.listeners.tcp["lan"].max_message_size, 1_048_576);
    assert_eq!(coap.listeners.ws["default"].path, "/.well-known/coap");
    assert_eq!(
        coap.listeners.ws["default"].websocket().max_frame_size,
        1_048_576
    );
    assert!(!coap.separate_response);

    let cases = [
        (
            "[gateway.coap.listeners.tcp.default]\nmax_message_size = 1000",
            "gateway.coap.listeners.tcp.default.max_message_size must be at least 1152",
        ),
        (
            "[gateway.coap.listeners.ws.default]\npath = \"coap\"",
            "gateway.coap.listeners.ws.default.path must start with '/'",
        ),
        (
            // TCP 5683 is CoAP over TCP's, so another TCP listener may not take it.
            "[gateway.stomp.listeners.tcp.default]\nbind = 5683",
            "is also bound by enabled listener gateway.coap.listeners.tcp.default",
        ),
    ];
    for (toml, want) in cases {
        let e = err_text(Config::from_toml_str(toml));
        assert!(e.contains(want), "{toml}: {e}");
    }
}

#[test]
fn anonymous_access_off_without_a_password_file_is_refused_naming_both_keys() {
    // Without a password file a user name is taken as given, so "no anonymous clients"
    // would still let in anyone who types a name.
    let err = Config::from_toml_str("[auth]\nallow_anonymous = false").unwrap_err();
    let problem = err
        .problems()
        .iter()
        .find(|p| p.key == "auth.allow_anonymous")
        .unwrap_or_else(|| panic!("no problem at auth.allow_anonymous: {err}"));
    assert!(
        problem.message.contains("auth.allow_anonymous = false")
            && problem.message.contains("auth.password_file"),
        "{problem}"
    );
    assert_eq!(problem.origin.as_deref(), Some("the given TOML"));

    Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_AUTH__ALLOW_ANONYMOUS", "false");
        let err = err_text(Config::load(None));
        assert!(
            err.contains("auth.password_file") && err.contains("env GATEWAY_AUTH__ALLOW_ANONYMOUS"),
            "{err}"
        );
        jail.set_env("GATEWAY_AUTH__PASSWORD_FILE", "/etc/gateway/passwd");
        Config::load(None).map_err(|e| e.to_string())?;
        Ok(())
    });
}

#[test]
fn public_deployment_caps_have_finite_defaults() {
    let c = Config::defaults().unwrap();
    assert_eq!(
        c.mqtt.max_session_expiry_interval.get(),
        StdDuration::from_secs(86_400)
    );
    assert_eq!(c.mqtt.max_subscriptions, 1000);
    assert_eq!(c.retainer.max_retained_messages, 1_000_000);
    assert_eq!(c.retainer.max_retained_bytes, 256 * 1024 * 1024);
    assert_eq!(c.gateway.stomp.max_transaction_bytes, 1024 * 1024);
    for udp in [
        &c.gateway.mqttsn.listeners.udp,
        &c.gateway.coap.listeners.udp,
        &c.gateway.lwm2m.listeners.udp,
    ] {
        assert_eq!(udp["default"].max_peers_per_source, 32);
    }
    // A UDP listener added by name takes its table's cap too.
    let c = Config::from_toml_str("[gateway.lwm2m.listeners.udp.lan]\nbind = 15783").unwrap();
    assert_eq!(
        c.gateway.lwm2m.listeners.udp["lan"].max_peers_per_source,
        32
    );
}

#[test]
fn public_deployment_caps_are_checked() {
    let cases = [
        (
            "[mqtt]\nmax_session_expiry_interval = \"50000d\"",
            "mqtt.max_session_expiry_interval must be at most 4294967295 seconds",
        ),
        (
            "[mqtt]\nmax_session_expiry_interval = \"1h\"",
            "mqtt.session_expiry_interval (2h) must not exceed mqtt.max_session_expiry_interval (1h)",
        ),
        (
            "[mqtt]\nmax_session_expiry_interval = \"3h\"\n[gateway.stomp]\nsession_expiry_interval = \"4h\"",
            "gateway.stomp.session_expiry_interval (4h) must not exceed mqtt.max_session_expiry_interval (3h)",
        ),
        (
            "[retainer]\nmax_retained_bytes = 1000",
            "retainer.max_retained_bytes (1000) must be 0 (unlimited) or at least retainer.max_payload_size (1048576)",
        ),
        (
            "[gateway.stomp]\nmax_transaction_bytes = 0",
            "gateway.stomp.max_transaction_bytes must be >= 1",
        ),
        (
            "[gateway.mqttsn.listeners.udp.default]\nmax_peers_per_source = 0",
            "gateway.mqttsn.listeners.udp.default.max_peers_per_source must be >= 1",
        ),
        (
            "[gateway.coap.listeners.udp.default]\nmax_peers_per_source = 0",
            "gateway.coap.listeners.udp.default.max_peers_per_source must be >= 1",
        ),
        (
            "[gateway.lwm2m.listeners.udp.default]\nmax_peers_per_source = 0",
            "gateway.lwm2m.listeners.udp.default.max_peers_per_source must be >= 1",
        ),
    ];
    for (toml, want) in cases {
        let e = err_text(Config::from_toml_str(toml));
        assert!(e.contains(want), "{toml:?} -> {e}");
    }
    // The limits that mean "unlimited" at 0 still do.
    let c = Config::from_toml_str(
        "[mqtt]\nmax_subscriptions = 0\n[retainer]\nmax_retained_messages = 0\nmax_retained_bytes = 0",
    )
    .unwrap();
    assert_eq!(c.retainer.max_retained_bytes, 0);
}

#[test]
fn every_listener_has_a_name_of_its_own_across_gateways() {
    let c = Config::defaults().unwrap();
    let listeners = c.all_listeners();
    let names: std::collections::HashSet<String> =
        listeners.iter().map(|l| l.listener_name()).collect();
    assert_eq!(names.len(), listeners.len(), "{names:?}");
    for udp in [
        "mqttsn:udp:default",
        "coap:udp:default",
        "lwm2m:udp:default",
    ] {
        assert!(names.contains(udp), "{udp} in {names:?}");
    }
    // CoAP over TCP is not MQTT over TCP.
    assert!(names.contains("tcp:default") && names.contains("coap:tcp:default"));
}

/// Every listener that starts by default, bound to loopback.
const ALL_ON_LOOPBACK: &str = r#"
[listeners.tcp.default]
bind = "127.0.0.1:1883"
[listeners.ws.default]
bind = "127.0.0.1:8083"
[gateway.mqttsn.listeners.udp.default]
bind = "127.0.0.1:1884"
[gateway.coap.listeners.udp.default]
bind = "127.0.0.1:5683"
[gateway.coap.listeners.tcp.default]
bind = "127.0.0.1:5683"
[gateway.lwm2m.listeners.udp.default]
bind = "127.0.0.1:5783"
[gateway.stomp.listeners.tcp.default]
bind = "[::1]:61613"
"#;

#[test]
fn anonymous_allow_all_on_a_listener_beyond_loopback_is_warned_about() {
    let defaults = Config::defaults().unwrap();
    let warnings = defaults.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0].message;
    for named in [
        "auth.allow_anonymous = true",
        "auth.acl_file",
        "auth.acl_no_match = \"allow\"",
        "listeners.tcp.default (0.0.0.0:1883)",
        "gateway.coap.listeners.udp.default (0.0.0.0:5683)",
        "gateway.stomp.listeners.tcp.default (0.0.0.0:61613)",
    ] {
        assert!(warning.contains(named), "{named} not in {warning}");
    }
    // Listeners that do not start expose nothing: TLS ones without a certificate, disabled ones.
    for quiet in [
        "listeners.ssl.default",
        "gateway.stomp.listeners.ws.default",
    ] {
        assert!(!warning.contains(quiet), "{quiet} in {warning}");
    }

    assert_eq!(
        Config::from_toml_str(ALL_ON_LOOPBACK).unwrap().warnings(),
        []
    );
    let one_exposed = format!("{ALL_ON_LOOPBACK}\n[listeners.tcp.lan]\nbind = \"10.0.0.1:1883\"");
    let warnings = Config::from_toml_str(&one_exposed).unwrap().warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0]
        .message
        .contains("listeners.tcp.lan (10.0.0.1:1883)"));
    assert!(!warnings[0].message.contains("listeners.tcp.default"));
    // Disabled gateways' listeners do not count.
    let gateway_off = format!("{ALL_ON_LOOPBACK}\n[gateway.coap]\nenable = false\n[gateway.coap.listeners.udp.default]\nbind = 5683");
    let gateway_off = gateway_off.replacen(
        "[gateway.coap.listeners.udp.default]\nbind = \"127.0.0.1:5683\"\n",
        "",
        1,
    );
    assert_eq!(Config::from_toml_str(&gateway_off).unwrap().warnings(), []);

    // Credentials, or an authorization that is not allow-all, silence it.
    for closed in [
        "[auth]\nallow_anonymous = false\npassword_file = \"/etc/gateway/passwd\"",
        "[auth]\nacl_no_match = \"deny\"",
        "[auth]\nacl_file = \"/etc/gateway/acl\"",
    ] {
        let c = Config::from_toml_str(closed).unwrap();
        assert_eq!(c.warnings(), [], "{closed}");
    }
}

#[test]
fn publish_rates_are_unlimited_by_default_on_every_listener_that_takes_clients() {
    let c = Config::defaults().unwrap();
    let l = &c.listeners;
    let stomp = &c.gateway.stomp.listeners;
    let coap = &c.gateway.coap.listeners;
    let rates = [
        (l.tcp["default"].messages_rate, l.tcp["default"].bytes_rate),
        (l.ssl["default"].messages_rate, l.ssl["default"].bytes_rate),
        (l.ws["default"].messages_rate, l.ws["default"].bytes_rate),
        (l.wss["default"].messages_rate, l.wss["default"].bytes_rate),
        (
            l.quic["default"].messages_rate,
            l.quic["default"].bytes_rate,
        ),
        (
            stomp.tcp["default"].messages_rate,
            stomp.tcp["default"].bytes_rate,
        ),
        (
            stomp.ws["default"].messages_rate,
            stomp.ws["default"].bytes_rate,
        ),
        (
            coap.tcp["default"].messages_rate,
            coap.tcp["default"].bytes_rate,
        ),
        (
            coap.ws["default"].messages_rate,
            coap.ws["default"].bytes_rate,
        ),
        (
            coap.udp["default"].messages_rate,
            coap.udp["default"].bytes_rate,
        ),
        (
            c.gateway.mqttsn.listeners.udp["default"].messages_rate,
            c.gateway.mqttsn.listeners.udp["default"].bytes_rate,
        ),
        (
            c.gateway.lwm2m.listeners.udp["default"].messages_rate,
            c.gateway.lwm2m.listeners.udp["default"].bytes_rate,
        ),
    ];
    for (messages, bytes) in rates {
        assert_eq!(messages, Rate::Infinity);
        assert_eq!(bytes, ByteRate::Infinity);
    }
}

#[test]
fn publish_rates_are_read_in_emqx_units_from_files_and_env() {
    let c = Config::from_toml_str(
        r#"
        [listeners.tcp.default]
        messages_rate = "1000/s"
        bytes_rate = "1MB/s"
        [gateway.mqttsn.listeners.udp.default]
        messages_rate = "50/10s"
        bytes_rate = "512KB/s"
        "#,
    )
    .unwrap();
    let tcp = &c.listeners.tcp["default"];
    assert_eq!(tcp.messages_rate.per_second(), Some(1000.0));
    assert_eq!(tcp.bytes_rate.burst(), Some(1024 * 1024));
    let sn = &c.gateway.mqttsn.listeners.udp["default"];
    assert_eq!(sn.messages_rate.per_second(), Some(5.0));
    assert_eq!(sn.bytes_rate.burst(), Some(512 * 1024));
    Jail::expect_with(|jail| {
        jail.set_env("GATEWAY_LISTENERS__TCP__DEFAULT__MESSAGES_RATE", "100/s");
        jail.set_env(
            "GATEWAY_GATEWAY__STOMP__LISTENERS__TCP__DEFAULT__BYTES_RATE",
            "10MB/10s",
        );
        let c = Config::load(None).unwrap();
        assert_eq!(c.listeners.tcp["default"].messages_rate.burst(), Some(100));
        let stomp = &c.gateway.stomp.listeners.tcp["default"];
        assert_eq!(stomp.bytes_rate.burst(), Some(10 * 1024 * 1024));
        assert_eq!(stomp.bytes_rate.per_second(), Some(1024.0 * 1024.0));
        Ok(())
    });
}

#[test]
fn a_zero_or_malformed_publish_rate_is_refused_naming_the_key() {
    for (toml, key) in [
        (
            "[listeners.tcp.default]\nmessages_rate = \"0/s\"",
            "listeners.tcp.default.messages_rate",
        ),
        (
            "[listeners.quic.default]\nbytes_rate = \"0MB/s\"",
            "listeners.quic.default.bytes_rate",
        ),
        (
            "[listeners.ws.default]\nbytes_rate = \"1MB/0s\"",
            "listeners.ws.default.bytes_rate",
        ),
        (
            "[gateway.stomp.listeners.tcp.default]\nmessages_rate = \"0/m\"",
            "gateway.stomp.listeners.tcp.default.messages_rate",
        ),
        (
            "[gateway.coap.listeners.tcp.default]\nbytes_rate = \"1TB/s\"",
            "gateway.coap.listeners.tcp.default.bytes_rate",
        ),
        (
            "[gateway.coap.listeners.udp.default]\nmessages_rate = \"fast\"",
            "gateway.coap.listeners.udp.default.messages_rate",
        ),
        (
            "[gateway.lwm2m.listeners.udp.default]\nbytes_rate = \"0/s\"",
            "gateway.lwm2m.listeners.udp.default.bytes_rate",
        ),
        (
            "[gateway.mqttsn.listeners.udp.default]\nmessages_rate = 10",
            "gateway.mqttsn.listeners.udp.default.messages_rate",
        ),
    ] {
        let e = err_text(Config::from_toml_str(toml));
        assert!(e.contains(key), "{toml:?} -> {e}");
    }
}

#[test]
fn dtls_listeners_take_their_tables_defaults_start_only_with_keys_and_check_their_limits() {
    let c = Config::from_toml_str(
        r#"
        [gateway.coap.listeners.dtls.lan]
        bind = 15684
        [gateway.coap.listeners.dtls.lan.dtls_options]
        psk_file = "/etc/keys"
        "#,
    )
    .unwrap();
    let lan = &c.gateway.coap.listeners.dtls["lan"];
    assert_eq!(lan.max_handshakes_per_source, 8);
    assert!(lan.stateless_cookies);
    assert!(lan.has_credentials());
    let default = &c.gateway.coap.listeners.dtls["default"];
    assert_eq!(default.bind, "0.0.0.0:5684");
    assert!(!default.has_credentials());
    let starts: Vec<_> = c
        .all_listeners()
        .into_iter()
        .filter(|l| l.kind == gateway_config::ListenerKind::CoapDtls)
        .map(|l| (l.listener_name(), l.starts))
        .collect();
    assert_eq!(
        starts,
        [
            ("coap:dtls:default".to_string(), false),
            ("coap:dtls:lan".to_string(), true)
        ]
    );
    // Without keys it claims no port: the UDP listener may have 5684.
    Config::from_toml_str("[gateway.coap.listeners.udp.default]\nbind = 5684").unwrap();
    let e = err_text(Config::from_toml_str(
        "[gateway.coap.listeners.udp.default]\nbind = 5684\n\
         [gateway.coap.listeners.dtls.default.dtls_options]\npsk_file = \"/k\"",
    ));
    assert!(e.contains("5684"), "{e}");
    for (toml, key) in [
        ("max_handshakes = 0", "max_handshakes"),
        ("max_handshakes_per_source = 0", "max_handshakes_per_source"),
        ("handshake_timeout = \"0s\"", "handshake_timeout"),
        ("handshake_timeout = \"2h\"", "handshake_timeout"),
        ("max_packet_size = 10", "max_packet_size"),
        (
            "[gateway.coap.listeners.dtls.default.dtls_options]\ncertfile = \"/c.pem\"",
            "dtls_options.keyfile",
        ),
        (
            "[gateway.coap.listeners.dtls.default.dtls_options]\ncertfile = \"/c\"\nkeyfile = \"/k\"\nverify = \"required\"",
            "dtls_options.cacertfile",
        ),
        (
            "[gateway.coap.listeners.dtls.default.dtls_options]\nverify = \"optional\"\ncacertfile = \"/ca\"",
            "dtls_options.certfile",
        ),
    ] {
        let e = err_text(Config::from_toml_str(&format!(
            "[gateway.coap.listeners.dtls.default]\n{toml}"
        )));
        assert!(
            e.contains(&format!("gateway.coap.listeners.dtls.default.{key}")),
            "{toml}: {e}"
        );
    }
}

/// STOMP's and CoAP's TLS listeners: a named one takes its table's defaults, starts (and
/// claims its port) only with a certificate, and its `ssl_options` are checked as an MQTT
/// ssl listener's `tls`.
#[test]
fn gateway_tls_listeners_start_only_with_a_certificate_and_check_ssl_options() {
    let c = Config::from_toml_str(
        r#"
        [gateway.stomp.listeners.ssl.lan]
        bind = 16614
        [gateway.stomp.listeners.ssl.lan.ssl_options]
        self_signed = true
        [gateway.coap.listeners.wss.lan]
        enable = true
        bind = 18684
        [gateway.coap.listeners.wss.lan.ssl_options]
        certfile = "/c.pem"
        keyfile = "/k.pem"
        "#,
    )
    .unwrap();
    let stomp = &c.gateway.stomp.listeners;
    assert_eq!(stomp.ssl["default"].bind, "0.0.0.0:61614");
    assert_eq!(stomp.wss["default"].bind, "0.0.0.0:15673");
    assert_eq!(stomp.wss["default"].path, "/ws");
    assert_eq!(stomp.ssl["lan"].max_connections, 1_024_000);
    let coap = &c.gateway.coap.listeners;
    assert_eq!(coap.ssl["default"].bind, "0.0.0.0:5684");
    assert_eq!(coap.wss["default"].bind, "0.0.0.0:8684");
    assert_eq!(coap.wss["lan"].path, "/.well-known/coap");
    let starts: Vec<_> = c
        .all_listeners()
        .into_iter()
        .filter(|l| l.kind.tls_table() == Some("ssl_options"))
        .map(|l| (l.listener_name(), l.starts))
        .collect();
    let expected = [
        ("coap:ssl:default", false),
        ("coap:wss:default", false),
        ("coap:wss:lan", true),
        ("stomp:ssl:default", false),
        ("stomp:ssl:lan", true),
        ("stomp:wss:default", false),
    ];
    assert_eq!(
        starts,
        expected.map(|(name, starts)| (name.to_string(), starts))
    );

    // Without a certificate it claims no port; with one, it does.
    Config::from_toml_str("[gateway.stomp.listeners.tcp.default]\nbind = 61614").unwrap();
    let e = err_text(Config::from_toml_str(
        "[gateway.stomp.listeners.tcp.default]\nbind = 61614\n\
         [gateway.stomp.listeners.ssl.default.ssl_options]\nself_signed = true",
    ));
    assert!(e.contains("61614"), "{e}");
    let e = err_text(Config::from_toml_str(
        "[gateway.coap.listeners.tcp.default]\nbind = 5684\n\
         [gateway.coap.listeners.ssl.default.ssl_options]\nself_signed = true",
    ));
    assert!(e.contains("5684"), "{e}");

    for (table, toml, key) in [
        (
            "gateway.stomp.listeners.ssl.default",
            "certfile = \"/c.pem\"",
            "keyfile",
        ),
        (
            "gateway.stomp.listeners.wss.default",
            "verify = \"required\"",
            "cacertfile",
        ),
        (
            "gateway.coap.listeners.ssl.default",
            "versions = []",
            "versions",
        ),
        (
            "gateway.coap.listeners.wss.default",
            "keyfile = \"/k.pem\"",
            "keyfile",
        ),
    ] {
        let err = Config::from_toml_str(&format!("[{table}.ssl_options]\n{toml}")).unwrap_err();
        let key = format!("{table}.ssl_options.{key}");
        assert!(
            err.problems().iter().any(|p| p.key == key),
            "{toml}: expected a problem at {key}, got {err}"
        );
    }
    for (toml, key) in [
        (
            "[gateway.stomp.listeners.wss.default]\npath = \"ws\"",
            "gateway.stomp.listeners.wss.default.path",
        ),
        (
            "[gateway.stomp.listeners.wss.default]\nmax_frame_size = 0",
            "gateway.stomp.listeners.wss.default.max_frame_size",
        ),
        (
            "[gateway.coap.listeners.wss.default]\nmax_message_size = 100",
            "gateway.coap.listeners.wss.default.max_message_size",
        ),
        ("[gateway.coap.listeners.ssl.default]\ntls = {}", "tls"),
    ] {
        let e = err_text(Config::from_toml_str(toml));
        assert!(e.contains(key), "{toml:?} -> {e}");
    }
}

#[test]
fn the_admin_api_beyond_loopback_needs_keys() {
    let open = "[dashboard.listeners.http]\nbind = \"0.0.0.0:18083\"\n";
    let text = err_text(Config::from_toml_str(open));
    assert!(
        text.contains("dashboard.listeners.http.bind") && text.contains("api_key.bootstrap_file"),
        "{text}"
    );
    let ipv6 = "[dashboard.listeners.http]\nbind = \"[::]:18083\"\n";
    assert!(Config::from_toml_str(ipv6).is_err());
    let keyed = format!("{open}[api_key]\nbootstrap_file = \"/etc/gateway/api_keys\"\n");
    assert!(Config::from_toml_str(&keyed).is_ok());
    for fine in [
        "[dashboard.listeners.http]\nbind = \"[::1]:18083\"\n",
        "[dashboard.listeners.http]\nenable = false\nbind = \"0.0.0.0:18083\"\n",
    ] {
        assert!(Config::from_toml_str(fine).is_ok(), "{fine}");
    }
    let text = err_text(Config::from_toml_str(
        "[dashboard.listeners.http]\nmax_connections = 0\nrequest_timeout = \"0s\"\n",
    ));
    assert!(
        text.contains("max_connections") && text.contains("request_timeout"),
        "{text}"
    );
}
