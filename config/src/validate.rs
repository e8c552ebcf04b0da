//! Checks serde cannot express: ranges, cross-key rules, addresses.

use std::collections::hash_map::{Entry, HashMap};
use std::net::SocketAddr;

use crate::{
    parse_bind, AclNoMatch, Config, ListenerEntry, TlsConfig, TlsVerify, TlsVersion,
    WebSocketConfig,
};

/// A broken rule, before the loader adds where the value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub key: String,
    pub message: String,
}

/// Largest whole MQTT packet: a 268,435,455-byte remaining length plus the fixed header.
const MQTT_MAX_PACKET: u32 = 268_435_460;
/// The longest DTLS connection ID the engine issues (RFC 9146 allows 255 bytes; 32 keeps
/// a record's overhead small and is what common DTLS stacks accept by default).
const MAX_CONNECTION_ID_LENGTH: u32 = 32;

pub(crate) fn is_valid_listener_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn check(config: &Config) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut fail = |key: &str, message: String| {
        out.push(Violation {
            key: key.to_owned(),
            message,
        })
    };
    let m = &config.mqtt;

    // Acknowledgements of stored messages wait up to this long: beyond a second, clients
    // would time out before the sync, not gain throughput.
    if config.storage.commit_window.get() > std::time::Duration::from_secs(1) {
        fail(
            "storage.commit_window",
            "storage.commit_window must be at most 1s".into(),
        );
    }
    if config.storage.data_dir.as_os_str().is_empty() {
        fail(
            "storage.data_dir",
            "storage.data_dir must not be empty (\".\" is the working directory)".into(),
        );
    }
    if config.log.level.trim().is_empty() {
        fail("log.level", "log.level must not be empty".into());
    }
    if !(1..=MQTT_MAX_PACKET).contains(&m.max_packet_size) {
        fail(
            "mqtt.max_packet_size",
            format!(
                "mqtt.max_packet_size must be 1..={MQTT_MAX_PACKET} bytes, got {}",
                m.max_packet_size
            ),
        );
    }
    // MQTT-3.1.3-5: a server must accept client ids of 1 to 23 characters; a client id is
    // a UTF-8 string, so 65535 bytes is the ceiling.
    if !(23..=65_535).contains(&m.max_client_id_length) {
        fail(
            "mqtt.max_client_id_length",
            format!(
                "mqtt.max_client_id_length must be 23..=65535, got {}",
                m.max_client_id_length
            ),
        );
    }
    if m.max_topic_levels == 0 {
        fail(
            "mqtt.max_topic_levels",
            "mqtt.max_topic_levels must be >= 1".into(),
        );
    }
    if m.max_qos_allowed > 2 {
        fail(
            "mqtt.max_qos_allowed",
            format!(
                "mqtt.max_qos_allowed must be 0, 1 or 2, got {}",
                m.max_qos_allowed
            ),
        );
    }
    for (key, value) in [
        ("mqtt.receive_maximum", m.receive_maximum),
        ("mqtt.max_inflight", m.max_inflight),
    ] {
        if !(1..=65_535).contains(&value) {
            fail(key, format!("{key} must be 1..=65535, got {value}"));
        }
    }
    if m.max_awaiting_rel == 0 {
        fail(
            "mqtt.max_awaiting_rel",
            "mqtt.max_awaiting_rel must be >= 1".into(),
        );
    }
    if m.await_rel_timeout.is_zero() {
        fail(
            "mqtt.await_rel_timeout",
            "mqtt.await_rel_timeout must be longer than 0s".into(),
        );
    }
    if m.receiver_high_water > 0 {
        if m.receiver_low_water >= m.receiver_high_water {
            fail(
                "mqtt.receiver_low_water",
                format!(
                    "mqtt.receiver_low_water ({}) must be below mqtt.receiver_high_water ({})",
                    m.receiver_low_water, m.receiver_high_water
                ),
            );
        }
        if m.max_queued_messages > 0 && m.receiver_high_water > m.max_queued_messages {
            fail(
                "mqtt.receiver_high_water",
                format!(
                    "mqtt.receiver_high_water ({}) must not exceed mqtt.max_queued_messages ({})",
                    m.receiver_high_water, m.max_queued_messages
                ),
            );
        }
        if m.slow_receiver_timeout.is_zero() {
            fail(
                "mqtt.slow_receiver_timeout",
                "mqtt.slow_receiver_timeout must be longer than 0s".into(),
            );
        }
    }
    if m.max_keepalive == 0 {
        fail(
            "mqtt.max_keepalive",
            "mqtt.max_keepalive must be 1..=65535 seconds".into(),
        );
    }
    if m.server_keepalive > m.max_keepalive {
        fail(
            "mqtt.server_keepalive",
            format!(
                "mqtt.server_keepalive ({}) must not exceed mqtt.max_keepalive ({})",
                m.server_keepalive, m.max_keepalive
            ),
        );
    }
    // NaN fails this comparison too, which is what we want.
    if !(m.keepalive_multiplier >= 1.0 && m.keepalive_multiplier.is_finite()) {
        fail(
            "mqtt.keepalive_multiplier",
            format!(
                "mqtt.keepalive_multiplier must be >= 1.0, got {}",
                m.keepalive_multiplier
            ),
        );
    }
    // MQTT 5 carries Session Expiry Interval as four bytes of seconds.
    for (key, value) in [
        ("mqtt.session_expiry_interval", m.session_expiry_interval),
        (
            "mqtt.max_session_expiry_interval",
            m.max_session_expiry_interval,
        ),
    ] {
        if value.as_secs() > u64::from(u32::MAX) {
            fail(key, format!("{key} must be at most {} seconds", u32::MAX));
        }
    }
    // A configured expiry above the cap would be lowered without a word.
    for (key, value) in [
        ("mqtt.session_expiry_interval", m.session_expiry_interval),
        (
            "gateway.stomp.session_expiry_interval",
            config.gateway.stomp.session_expiry_interval,
        ),
    ] {
        if value > m.max_session_expiry_interval {
            fail(
                key,
                format!(
                    "{key} ({value}) must not exceed mqtt.max_session_expiry_interval ({})",
                    m.max_session_expiry_interval
                ),
            );
        }
    }
    let retainer = &config.retainer;
    if retainer.max_retained_bytes != 0
        && retainer.max_retained_bytes < u64::from(retainer.max_payload_size)
    {
        fail(
            "retainer.max_retained_bytes",
            format!(
                "retainer.max_retained_bytes ({}) must be 0 (unlimited) or at least \
                 retainer.max_payload_size ({}), or the largest retained message could never be kept",
                retainer.max_retained_bytes, retainer.max_payload_size
            ),
        );
    }
    // Without a password file, a user name is taken as given: refusing only clients that
    // send none would keep nobody out.
    if !config.auth.allow_anonymous && config.auth.password_file.is_none() {
        fail(
            "auth.allow_anonymous",
            "auth.allow_anonymous = false needs auth.password_file: without a password file \
             any user name would be accepted"
                .into(),
        );
    }
    if config.auth.max_costly_password_checks == 0 {
        fail(
            "auth.max_costly_password_checks",
            "auth.max_costly_password_checks must be at least 1: with 0 no user with a costly \
             hash could ever log in"
                .into(),
        );
    }
    if config.sys.enable && config.sys.interval.is_zero() {
        fail(
            "sys.interval",
            "sys.interval must be longer than 0s when sys.enable is true".into(),
        );
    }
    // One topic level of every presence topic: a separator or a wildcard would make them
    // unroutable or let them pass for another node's.
    let node = &config.node.name;
    if node.is_empty() || node.contains(['/', '+', '#', '\0']) || node.len() > 255 {
        fail(
            "node.name",
            "node.name must be 1 to 255 bytes without \"/\", \"+\", \"#\" or NUL".into(),
        );
    }
    let flapping = &config.flapping_detect;
    if flapping.enable {
        if flapping.max_count == 0 {
            fail(
                "flapping_detect.max_count",
                "flapping_detect.max_count must be at least 1".into(),
            );
        }
        if flapping.window_time.is_zero() || flapping.ban_time.is_zero() {
            fail(
                "flapping_detect.window_time",
                "flapping_detect.window_time and ban_time must be longer than 0s".into(),
            );
        }
    }

    if config.banned.max_entries == 0 {
        fail(
            "banned.max_entries",
            "banned.max_entries must be at least 1".into(),
        );
    }

    check_admin(config, &mut fail);

    let listeners = &config.listeners;
    let mut common: Vec<CommonListener<'_>> = Vec::new();
    for (name, l) in &listeners.tcp {
        common.push(CommonListener::new(
            "tcp",
            name,
            l.enable,
            &l.bind,
            l.max_connections,
            l.handshake_timeout,
            &l.mountpoint,
        ));
    }
    for (kind, name, proxy_protocol, timeout) in listeners
        .tcp
        .iter()
        .map(|(n, l)| ("tcp", n, l.proxy_protocol, l.proxy_protocol_timeout))
        .chain(
            listeners
                .ssl
                .iter()
                .map(|(n, l)| ("ssl", n, l.proxy_protocol, l.proxy_protocol_timeout)),
        )
    {
        if proxy_protocol && timeout.is_zero() {
            let key = format!("listeners.{kind}.{name}.proxy_protocol_timeout");
            fail(&key, format!("{key} must be longer than 0s"));
        }
    }
    for (name, l) in &listeners.ssl {
        let starts = l.enable && l.tls.has_certificate();
        common.push(CommonListener::new(
            "ssl",
            name,
            starts,
            &l.bind,
            l.max_connections,
            l.handshake_timeout,
            &l.mountpoint,
        ));
        check_tls(&format!("listeners.ssl.{name}.tls"), &l.tls, &mut fail);
    }
    for (name, l) in &listeners.ws {
        common.push(CommonListener::new(
            "ws",
            name,
            l.enable,
            &l.bind,
            l.max_connections,
            l.handshake_timeout,
            &l.mountpoint,
        ));
        check_websocket(
            &format!("listeners.ws.{name}.websocket"),
            &l.websocket,
            &mut fail,
        );
    }
    for (name, l) in &listeners.wss {
        let starts = l.enable && l.tls.has_certificate();
        common.push(CommonListener::new(
            "wss",
            name,
            starts,
            &l.bind,
            l.max_connections,
            l.handshake_timeout,
            &l.mountpoint,
        ));
        check_tls(&format!("listeners.wss.{name}.tls"), &l.tls, &mut fail);
        check_websocket(
            &format!("listeners.wss.{name}.websocket"),
            &l.websocket,
            &mut fail,
        );
    }

    for (name, l) in &listeners.quic {
        let prefix = format!("listeners.quic.{name}");
        let starts = l.enable && l.tls.has_certificate();
        common.push(CommonListener::new(
            "quic",
            name,
            starts,
            &l.bind,
            l.max_connections,
            l.handshake_timeout,
            &l.mountpoint,
        ));
        check_tls(&format!("{prefix}.tls"), &l.tls, &mut fail);
        check_quic_tls(&format!("{prefix}.tls"), &l.tls, &mut fail);
    }

    let mut started: Vec<(String, SocketAddr)> = Vec::new();
    // QUIC listens on UDP, where MQTT-SN listens too.
    let mut udp_started: Vec<(String, SocketAddr)> = Vec::new();
    for listener in common {
        let prefix = format!("listeners.{}.{}", listener.kind, listener.name);
        if !is_valid_listener_name(listener.name) {
            fail(
                &prefix,
                format!(
                    "listeners.{}: invalid listener name {:?}: use letters, digits, '_' and '-'",
                    listener.kind, listener.name
                ),
            );
        }
        if listener.max_connections == 0 {
            fail(
                &format!("{prefix}.max_connections"),
                format!("{prefix}.max_connections must be >= 1"),
            );
        }
        if listener.handshake_timeout.is_zero() {
            fail(
                &format!("{prefix}.handshake_timeout"),
                format!("{prefix}.handshake_timeout must be longer than 0s"),
            );
        }
        check_mountpoint(
            &format!("{prefix}.mountpoint"),
            listener.mountpoint,
            &mut fail,
        );
        let taken = if listener.kind == "quic" {
            &mut udp_started
        } else {
            &mut started
        };
        check_bind(prefix, listener.bind, listener.starts, taken, &mut fail);
    }
    // UDP ports are their own space, shared by QUIC and the UDP gateways.
    check_mqttsn(&config.gateway.mqttsn, &mut udp_started, &mut fail);
    check_coap(
        &config.gateway.coap,
        &mut udp_started,
        &mut started,
        &mut fail,
    );
    check_lwm2m(&config.gateway.lwm2m, &mut udp_started, &mut fail);
    check_stomp(&config.gateway.stomp, &mut started, &mut fail);
    check_unique_listener_names(&config.all_listeners(), &mut fail);
    out
}

/// Logs, metrics and auth rules tell listeners apart by name alone.
fn check_unique_listener_names(
    listeners: &[ListenerEntry<'_>],
    fail: &mut impl FnMut(&str, String),
) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for listener in listeners {
        let key = listener.key();
        match seen.entry(listener.listener_name()) {
            Entry::Occupied(other) => fail(
                &key,
                format!(
                    "{key} and {} would both be named {:?} in logs and auth rules",
                    other.get(),
                    other.key()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(key);
            }
        }
    }
}

/// Settings that are valid but that an operator should hear about before starting.
pub(crate) fn warnings(config: &Config) -> Vec<Violation> {
    let mut out = Vec::new();
    let auth = &config.auth;
    // With no ACL file, acl_no_match is the whole authorization.
    let allow_all = auth.acl_file.is_none() && auth.acl_no_match == AclNoMatch::Allow;
    if auth.allow_anonymous && allow_all {
        let exposed: Vec<String> = config
            .all_listeners()
            .iter()
            .filter(|l| l.starts)
            .filter_map(|l| {
                let addr = l.bind_addr().ok()?;
                (!addr.ip().is_loopback()).then(|| format!("{} ({addr})", l.key()))
            })
            .collect();
        if !exposed.is_empty() {
            out.push(Violation {
                key: "auth.allow_anonymous".into(),
                message: format!(
                    "anyone may connect without credentials and publish and subscribe to every \
                     topic (auth.allow_anonymous = true, no auth.acl_file, auth.acl_no_match = \
                     \"allow\") on listeners bound beyond loopback: {}; set \
                     auth.allow_anonymous = false with an auth.password_file, restrict topics \
                     with an auth.acl_file or auth.acl_no_match = \"deny\", or bind the \
                     listeners to a loopback address",
                    exposed.join(", ")
                ),
            });
        }
    }
    out
}

/// The admin API reaches every client and message: beyond loopback, never without keys.
fn check_admin(config: &Config, fail: &mut impl FnMut(&str, String)) {
    let http = &config.dashboard.listeners.http;
    if !http.enable {
        return;
    }
    let key = "dashboard.listeners.http.bind";
    match http.bind_addr() {
        Err(e) => fail(key, format!("{key}: {e}")),
        Ok(addr) if !addr.ip().is_loopback() && config.api_key.bootstrap_file.is_none() => fail(
            key,
            format!(
                "{key}: the admin API on {addr} would answer anyone: set \
                 api_key.bootstrap_file, or bind it to a loopback address"
            ),
        ),
        Ok(_) => {}
    }
    if http.max_connections == 0 {
        fail(
            "dashboard.listeners.http.max_connections",
            "dashboard.listeners.http.max_connections must be at least 1".into(),
        );
    }
    if http.request_timeout.is_zero() {
        fail(
            "dashboard.listeners.http.request_timeout",
            "dashboard.listeners.http.request_timeout must be longer than 0s".into(),
        );
    }
}

fn check_stomp(
    stomp: &crate::StompConfig,
    tcp_started: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    let p = "gateway.stomp";
    check_mountpoint(&format!("{p}.mountpoint"), &stomp.mountpoint, fail);
    check_longer_than_zero(
        p,
        &[
            ("idle_timeout", stomp.idle_timeout),
            ("transaction_timeout", stomp.transaction_timeout),
        ],
        fail,
    );
    if stomp.session_expiry_interval.get().as_secs() > u64::from(u32::MAX) {
        fail(
            &format!("{p}.session_expiry_interval"),
            format!(
                "{p}.session_expiry_interval must be at most {} seconds",
                u32::MAX
            ),
        );
    }
    let at_least_one = [
        ("max_unacked", stomp.max_unacked),
        ("max_transactions", stomp.max_transactions),
        ("max_transaction_frames", stomp.max_transaction_frames),
        ("max_transaction_bytes", stomp.max_transaction_bytes),
        ("frame.max_headers", stomp.frame.max_headers),
        ("frame.max_headers_length", stomp.frame.max_headers_length),
    ];
    for (key, value) in at_least_one {
        if value == 0 {
            fail(&format!("{p}.{key}"), format!("{p}.{key} must be >= 1"));
        }
    }
    // Unacknowledged messages wait in the session's outgoing window, numbered as MQTT's.
    if stomp.max_unacked > u32::from(u16::MAX) {
        fail(
            &format!("{p}.max_unacked"),
            format!("{p}.max_unacked must be at most {}", u16::MAX),
        );
    }
    // A TLS listener binds only once it has a certificate.
    let l = &stomp.listeners;
    let listeners = l
        .tcp
        .iter()
        .map(|(name, l)| {
            let common = (l.enable, &l.bind, l.max_connections, &l.mountpoint);
            ("tcp", name, common)
        })
        .chain(l.ssl.iter().map(|(name, l)| {
            let starts = l.enable && l.ssl_options.has_certificate();
            (
                "ssl",
                name,
                (starts, &l.bind, l.max_connections, &l.mountpoint),
            )
        }))
        .chain(l.ws.iter().map(|(name, l)| {
            let common = (l.enable, &l.bind, l.max_connections, &l.mountpoint);
            ("ws", name, common)
        }))
        .chain(l.wss.iter().map(|(name, l)| {
            let starts = l.enable && l.ssl_options.has_certificate();
            (
                "wss",
                name,
                (starts, &l.bind, l.max_connections, &l.mountpoint),
            )
        }));
    for (kind, name, (enable, bind, max_connections, mountpoint)) in listeners {
        let prefix = format!("{p}.listeners.{kind}.{name}");
        if !is_valid_listener_name(name) {
            fail(
                &prefix,
                format!("{p}.listeners.{kind}: invalid listener name {name:?}: use letters, digits, '_' and '-'"),
            );
        }
        if max_connections == 0 {
            fail(
                &format!("{prefix}.max_connections"),
                format!("{prefix}.max_connections must be >= 1"),
            );
        }
        check_mountpoint(&format!("{prefix}.mountpoint"), mountpoint, fail);
        check_bind(prefix, bind, enable && stomp.enable, tcp_started, fail);
    }
    for (name, l) in &l.ssl {
        let prefix = format!("{p}.listeners.ssl.{name}.ssl_options");
        check_tls(&prefix, &l.ssl_options, fail);
    }
    let websockets =
        l.ws.iter()
            .map(|(name, l)| ("ws", name, l.websocket()))
            .chain(l.wss.iter().map(|(name, l)| ("wss", name, l.websocket())));
    for (kind, name, websocket) in websockets {
        let prefix = format!("{p}.listeners.{kind}.{name}");
        check_gateway_websocket(&prefix, &websocket, fail);
        if websocket.max_frame_size == 0 {
            fail(
                &format!("{prefix}.max_frame_size"),
                format!("{prefix}.max_frame_size must be >= 1"),
            );
        }
    }
    for (name, l) in &l.wss {
        let prefix = format!("{p}.listeners.wss.{name}.ssl_options");
        check_tls(&prefix, &l.ssl_options, fail);
    }
}

/// The WebSocket keys every gateway's WebSocket listener has (`path`, where MQTT's
/// listeners have `websocket.mqtt_path`).
fn check_gateway_websocket(
    prefix: &str,
    websocket: &WebSocketConfig,
    fail: &mut impl FnMut(&str, String),
) {
    if !websocket.mqtt_path.starts_with('/') {
        fail(
            &format!("{prefix}.path"),
            format!(
                "{prefix}.path must start with '/', got {:?}",
                websocket.mqtt_path
            ),
        );
    }
    if websocket.fail_if_no_subprotocol && websocket.supported_subprotocols.is_empty() {
        fail(
            &format!("{prefix}.supported_subprotocols"),
            format!("{prefix}.supported_subprotocols is empty while fail_if_no_subprotocol refuses every upgrade without one"),
        );
    }
}

/// The QUIC header protection of the first packets uses TLS13_AES_128_GCM_SHA256 (RFC 9001
/// 5.2), and QUIC carries TLS 1.3 only.
const QUIC_INITIAL_SUITE: &str = "TLS13_AES_128_GCM_SHA256";

fn check_quic_tls(prefix: &str, tls: &TlsConfig, fail: &mut impl FnMut(&str, String)) {
    if !tls.versions.contains(&TlsVersion::Tlsv13) {
        fail(
            &format!("{prefix}.versions"),
            format!("{prefix}.versions must list \"tlsv1.3\": QUIC runs on TLS 1.3 only"),
        );
    }
    if !tls.ciphers.is_empty() && !tls.ciphers.iter().any(|c| c == QUIC_INITIAL_SUITE) {
        fail(
            &format!("{prefix}.ciphers"),
            format!("{prefix}.ciphers must include {QUIC_INITIAL_SUITE}, which QUIC's first packets use"),
        );
    }
}

/// Predefined ids above this would collide with the ids the gateway hands out itself.
pub(crate) const MQTTSN_MAX_PREDEFINED_ID: u16 = 1024;

/// A placeholder the gateway does not know would reach the authenticator verbatim.
fn check_clientinfo_override(
    prefix: &str,
    templates: &crate::ClientInfoOverride,
    fail: &mut impl FnMut(&str, String),
) {
    for (key, template) in [
        ("clientid", &templates.clientid),
        ("username", &templates.username),
        ("password", &templates.password),
    ] {
        let mut rest = template.as_str();
        while let Some((_, after)) = rest.split_once("${") {
            let Some((name, tail)) = after.split_once('}') else {
                fail(
                    &format!("{prefix}.{key}"),
                    format!("{prefix}.{key} {template:?}: unclosed \"${{\""),
                );
                break;
            };
            if !crate::ClientInfoOverride::PLACEHOLDERS.contains(&name) {
                let known = crate::ClientInfoOverride::PLACEHOLDERS.map(|p| format!("${{{p}}}"));
                fail(
                    &format!("{prefix}.{key}"),
                    format!(
                        "{prefix}.{key} {template:?}: unknown placeholder ${{{name}}}; known: {}",
                        known.join(", ")
                    ),
                );
            }
            rest = tail;
        }
    }
}

/// A mountpoint is a topic prefix: wildcards or NUL in it would make every topic under it
/// invalid.
fn check_mountpoint(key: &str, mountpoint: &str, fail: &mut impl FnMut(&str, String)) {
    if mountpoint.contains(['+', '#', '\0']) {
        fail(
            key,
            format!("{key} {mountpoint:?} must not contain '+', '#' or NUL"),
        );
    }
}

/// Durations of a gateway that must not be zero, by key.
fn check_longer_than_zero(
    gateway: &str,
    durations: &[(&str, crate::Duration)],
    fail: &mut impl FnMut(&str, String),
) {
    for (key, value) in durations {
        if value.is_zero() {
            fail(
                &format!("{gateway}.{key}"),
                format!("{gateway}.{key} must be longer than 0s"),
            );
        }
    }
}

fn check_mqttsn(
    sn: &crate::MqttSnConfig,
    enabled: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    let p = "gateway.mqttsn";
    check_mountpoint(&format!("{p}.mountpoint"), &sn.mountpoint, fail);
    check_clientinfo_override(
        &format!("{p}.clientinfo_override"),
        &sn.clientinfo_override,
        fail,
    );
    check_longer_than_zero(
        p,
        &[
            ("idle_timeout", sn.idle_timeout),
            ("max_idle_without_keepalive", sn.max_idle_without_keepalive),
            ("retry_interval", sn.retry_interval),
            ("advertise_interval", sn.advertise_interval),
        ],
        fail,
    );
    // ADVERTISE carries the interval in a 16-bit count of seconds.
    if sn.advertise_interval.as_secs() > u64::from(u16::MAX) {
        fail(
            &format!("{p}.advertise_interval"),
            format!(
                "{p}.advertise_interval must be at most 65535s, the 16-bit Duration of ADVERTISE"
            ),
        );
    }
    if let Err(e) = sn.broadcast_addr() {
        fail(
            &format!("{p}.broadcast_address"),
            format!("{p}.broadcast_address: {e}"),
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, topic) in sn.predefined.iter().enumerate() {
        let key = format!("{p}.predefined.{i}");
        if !(1..=MQTTSN_MAX_PREDEFINED_ID).contains(&topic.id) {
            fail(
                &key,
                format!(
                    "{key}.id must be 1..={MQTTSN_MAX_PREDEFINED_ID}, got {}",
                    topic.id
                ),
            );
        }
        if !seen.insert(topic.id) {
            fail(&key, format!("{key}.id {} is defined twice", topic.id));
        }
        if topic.topic.is_empty() || topic.topic.contains(['+', '#']) {
            fail(
                &key,
                format!(
                    "{key}.topic must be a topic name without wildcards, got {:?}",
                    topic.topic
                ),
            );
        }
    }
    let sizes = PacketSizes {
        least: 2,
        why: ", the range of MQTT-SN's length field",
    };
    check_udp_listeners(p, &sn.listeners.udp, sn.enable, sizes, enabled, fail);
    check_dtls_listeners(p, &sn.listeners.dtls, sn.enable, sizes, enabled, fail);
}

fn check_coap(
    coap: &crate::CoapConfig,
    enabled: &mut Vec<(String, SocketAddr)>,
    tcp_started: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    let p = "gateway.coap";
    check_mountpoint(&format!("{p}.mountpoint"), &coap.mountpoint, fail);
    check_longer_than_zero(
        p,
        &[
            ("heartbeat", coap.heartbeat),
            ("ack_timeout", coap.ack_timeout),
            ("exchange_lifetime", coap.exchange_lifetime),
            ("non_lifetime", coap.non_lifetime),
            (
                "blockwise.exchange_lifetime",
                coap.blockwise.exchange_lifetime,
            ),
        ],
        fail,
    );
    let block = &coap.blockwise;
    if !(16..=1024).contains(&block.max_block_size) || !block.max_block_size.is_power_of_two() {
        fail(
            &format!("{p}.blockwise.max_block_size"),
            format!(
                "{p}.blockwise.max_block_size must be 16, 32, 64, 128, 256, 512 or 1024, got {}",
                block.max_block_size
            ),
        );
    }
    if block.max_transfers == 0 {
        fail(
            &format!("{p}.blockwise.max_transfers"),
            format!("{p}.blockwise.max_transfers must be at least 1"),
        );
    }
    if !(1.0..=10.0).contains(&coap.ack_random_factor) {
        fail(
            &format!("{p}.ack_random_factor"),
            format!(
                "{p}.ack_random_factor must be 1.0..=10.0, got {}",
                coap.ack_random_factor
            ),
        );
    }
    if coap.max_retransmit > 20 {
        fail(
            &format!("{p}.max_retransmit"),
            format!("{p}.max_retransmit must be at most 20 (each retransmission doubles the wait)"),
        );
    }
    let sizes = PacketSizes { least: 64, why: "" };
    check_udp_listeners(p, &coap.listeners.udp, coap.enable, sizes, enabled, fail);
    check_dtls_listeners(p, &coap.listeners.dtls, coap.enable, sizes, enabled, fail);
    // A TLS listener binds only once it has a certificate.
    let streams = coap
        .listeners
        .tcp
        .iter()
        .map(|(name, l)| {
            let common = (l.enable, &l.bind, l.max_connections, l.max_message_size);
            ("tcp", name, common, &l.mountpoint)
        })
        .chain(coap.listeners.ssl.iter().map(|(name, l)| {
            let starts = l.enable && l.ssl_options.has_certificate();
            let common = (starts, &l.bind, l.max_connections, l.max_message_size);
            ("ssl", name, common, &l.mountpoint)
        }))
        .chain(coap.listeners.ws.iter().map(|(name, l)| {
            let common = (l.enable, &l.bind, l.max_connections, l.max_message_size);
            ("ws", name, common, &l.mountpoint)
        }))
        .chain(coap.listeners.wss.iter().map(|(name, l)| {
            let starts = l.enable && l.ssl_options.has_certificate();
            let common = (starts, &l.bind, l.max_connections, l.max_message_size);
            ("wss", name, common, &l.mountpoint)
        }));
    for (kind, name, (enable, bind, max_connections, max_message_size), mountpoint) in streams {
        let prefix = format!("{p}.listeners.{kind}.{name}");
        if !is_valid_listener_name(name) {
            fail(
                &prefix,
                format!("{p}.listeners.{kind}: invalid listener name {name:?}: use letters, digits, '_' and '-'"),
            );
        }
        if max_connections == 0 {
            fail(
                &format!("{prefix}.max_connections"),
                format!("{prefix}.max_connections must be >= 1"),
            );
        }
        // RFC 8323 5.3.1: 1152 is what every peer must take.
        if max_message_size < 1152 {
            fail(
                &format!("{prefix}.max_message_size"),
                format!("{prefix}.max_message_size must be at least 1152 (RFC 8323 5.3.1), got {max_message_size}"),
            );
        }
        check_mountpoint(&format!("{prefix}.mountpoint"), mountpoint, fail);
        check_bind(prefix, bind, enable && coap.enable, tcp_started, fail);
    }
    let websockets = coap
        .listeners
        .ws
        .iter()
        .map(|(name, l)| ("ws", name, l.websocket()))
        .chain(
            coap.listeners
                .wss
                .iter()
                .map(|(name, l)| ("wss", name, l.websocket())),
        );
    for (kind, name, websocket) in websockets {
        check_gateway_websocket(&format!("{p}.listeners.{kind}.{name}"), &websocket, fail);
    }
    for (name, l) in &coap.listeners.ssl {
        let prefix = format!("{p}.listeners.ssl.{name}.ssl_options");
        check_tls(&prefix, &l.ssl_options, fail);
    }
    for (name, l) in &coap.listeners.wss {
        let prefix = format!("{p}.listeners.wss.{name}.ssl_options");
        check_tls(&prefix, &l.ssl_options, fail);
    }
}

fn check_lwm2m(
    lwm2m: &crate::Lwm2mConfig,
    enabled: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    let p = "gateway.lwm2m";
    check_mountpoint(&format!("{p}.mountpoint"), &lwm2m.mountpoint, fail);
    check_longer_than_zero(
        p,
        &[
            ("lifetime_min", lwm2m.lifetime_min),
            ("lifetime_max", lwm2m.lifetime_max),
            ("ack_timeout", lwm2m.ack_timeout),
        ],
        fail,
    );
    if lwm2m.lifetime_min > lwm2m.lifetime_max {
        fail(
            &format!("{p}.lifetime_min"),
            format!("{p}.lifetime_min must not be longer than {p}.lifetime_max"),
        );
    }
    if lwm2m.max_retransmit > 20 {
        fail(
            &format!("{p}.max_retransmit"),
            format!("{p}.max_retransmit must be at most 20 (each retransmission doubles the wait)"),
        );
    }
    if lwm2m.max_queued_commands == 0 {
        fail(
            &format!("{p}.max_queued_commands"),
            format!("{p}.max_queued_commands must be >= 1"),
        );
    }
    let t = &lwm2m.translators;
    for (name, translator) in [
        ("command", &t.command),
        ("response", &t.response),
        ("notify", &t.notify),
        ("register", &t.register),
        ("update", &t.update),
    ] {
        let key = format!("{p}.translators.{name}");
        let wildcard_ok = name == "command";
        if translator.topic.is_empty()
            || translator.topic.contains('\0')
            || (!wildcard_ok && translator.topic.contains(['+', '#']))
        {
            fail(
                &format!("{key}.topic"),
                format!("{key}.topic {:?} is not a valid topic", translator.topic),
            );
        }
        if translator.qos > 2 {
            fail(
                &format!("{key}.qos"),
                format!("{key}.qos must be 0, 1 or 2"),
            );
        }
    }
    let sizes = PacketSizes { least: 64, why: "" };
    check_udp_listeners(p, &lwm2m.listeners.udp, lwm2m.enable, sizes, enabled, fail);
    check_dtls_listeners(p, &lwm2m.listeners.dtls, lwm2m.enable, sizes, enabled, fail);
}

/// The packet sizes a UDP gateway's listener may be given: `least..=65535` bytes.
#[derive(Clone, Copy)]
struct PacketSizes {
    least: u32,
    why: &'static str,
}

/// `[{gateway}.listeners.udp.*]` of a UDP gateway, started only with the gateway.
fn check_udp_listeners(
    gateway: &str,
    listeners: &std::collections::BTreeMap<String, crate::UdpListenerConfig>,
    gateway_enabled: bool,
    sizes: PacketSizes,
    enabled: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    check_datagram_listeners(
        gateway,
        "udp",
        listeners,
        gateway_enabled,
        sizes,
        enabled,
        fail,
    );
}

/// `[{gateway}.listeners.dtls.*]`: a UDP listener's keys, and the handshake limits; one
/// without keys does not start, so its address is not taken.
fn check_dtls_listeners(
    gateway: &str,
    listeners: &std::collections::BTreeMap<String, crate::DtlsListenerConfig>,
    gateway_enabled: bool,
    sizes: PacketSizes,
    enabled: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    let as_udp = listeners
        .iter()
        .map(|(name, l)| {
            let mut udp = l.udp();
            udp.enable = l.enable && l.has_credentials();
            (name.clone(), udp)
        })
        .collect();
    check_datagram_listeners(
        gateway,
        "dtls",
        &as_udp,
        gateway_enabled,
        sizes,
        enabled,
        fail,
    );
    for (name, listener) in listeners {
        let prefix = format!("{gateway}.listeners.dtls.{name}");
        for (key, value) in [
            ("max_handshakes", listener.max_handshakes),
            (
                "max_handshakes_per_source",
                listener.max_handshakes_per_source,
            ),
        ] {
            if value == 0 {
                fail(
                    &format!("{prefix}.{key}"),
                    format!("{prefix}.{key} must be >= 1"),
                );
            }
        }
        if listener.connection_id_length > MAX_CONNECTION_ID_LENGTH {
            fail(
                &format!("{prefix}.connection_id_length"),
                format!(
                    "{prefix}.connection_id_length must be <= {MAX_CONNECTION_ID_LENGTH} (0 = none)"
                ),
            );
        }
        let options = &listener.dtls_options;
        if options.certfile.is_some() != options.keyfile.is_some() {
            fail(
                &format!("{prefix}.dtls_options.keyfile"),
                format!("{prefix}.dtls_options.keyfile and certfile must be set together"),
            );
        }
        if options.verify != crate::TlsVerify::None && options.cacertfile.is_none() {
            fail(
                &format!("{prefix}.dtls_options.cacertfile"),
                format!(
                    "{prefix}.dtls_options.cacertfile (the CA of client certificates) must be set when verify is not none"
                ),
            );
        }
        if options.verify != crate::TlsVerify::None && options.certfile.is_none() {
            fail(
                &format!("{prefix}.dtls_options.certfile"),
                format!(
                    "{prefix}.dtls_options.certfile and keyfile must be set when verify is not none"
                ),
            );
        }
        let timeout = listener.handshake_timeout.get();
        if timeout.is_zero() || timeout > std::time::Duration::from_secs(3600) {
            fail(
                &format!("{prefix}.handshake_timeout"),
                format!("{prefix}.handshake_timeout must be more than 0 and at most 1h"),
            );
        }
    }
}

fn check_datagram_listeners(
    gateway: &str,
    table: &str,
    listeners: &std::collections::BTreeMap<String, crate::UdpListenerConfig>,
    gateway_enabled: bool,
    sizes: PacketSizes,
    enabled: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    for (name, listener) in listeners {
        let prefix = format!("{gateway}.listeners.{table}.{name}");
        if !is_valid_listener_name(name) {
            fail(
                &prefix,
                format!("{gateway}.listeners.{table}: invalid listener name {name:?}: use letters, digits, '_' and '-'"),
            );
        }
        if listener.max_connections == 0 {
            fail(
                &format!("{prefix}.max_connections"),
                format!("{prefix}.max_connections must be >= 1"),
            );
        }
        if !(sizes.least..=65_535).contains(&listener.max_packet_size) {
            fail(
                &format!("{prefix}.max_packet_size"),
                format!(
                    "{prefix}.max_packet_size must be {}..=65535 bytes{}",
                    sizes.least, sizes.why
                ),
            );
        }
        if listener.max_peers_per_source == 0 {
            fail(
                &format!("{prefix}.max_peers_per_source"),
                format!("{prefix}.max_peers_per_source must be >= 1"),
            );
        }
        if listener.max_queued_datagrams == 0 {
            fail(
                &format!("{prefix}.max_queued_datagrams"),
                format!("{prefix}.max_queued_datagrams must be >= 1"),
            );
        }
        check_mountpoint(&format!("{prefix}.mountpoint"), &listener.mountpoint, fail);
        let starts = listener.enable && gateway_enabled;
        check_bind(prefix, &listener.bind, starts, enabled, fail);
    }
}

/// What every listener kind has.
struct CommonListener<'a> {
    kind: &'static str,
    name: &'a str,
    /// Enabled and, for TLS kinds, given a certificate: it will bind.
    starts: bool,
    bind: &'a str,
    max_connections: u32,
    handshake_timeout: crate::Duration,
    mountpoint: &'a str,
}

impl<'a> CommonListener<'a> {
    fn new(
        kind: &'static str,
        name: &'a str,
        starts: bool,
        bind: &'a str,
        max_connections: u32,
        handshake_timeout: crate::Duration,
        mountpoint: &'a str,
    ) -> Self {
        CommonListener {
            kind,
            name,
            starts,
            bind,
            max_connections,
            handshake_timeout,
            mountpoint,
        }
    }
}

fn check_tls(prefix: &str, tls: &TlsConfig, fail: &mut impl FnMut(&str, String)) {
    if tls.certfile.is_some() != tls.keyfile.is_some() {
        fail(
            &format!("{prefix}.keyfile"),
            format!("{prefix}: certfile and keyfile go together: set both or neither"),
        );
    }
    if tls.verify != TlsVerify::None && tls.cacertfile.is_none() {
        fail(
            &format!("{prefix}.cacertfile"),
            format!("{prefix}.cacertfile must name the CA of client certificates when verify is not \"none\""),
        );
    }
    if tls.versions.is_empty() {
        fail(
            &format!("{prefix}.versions"),
            format!("{prefix}.versions must list at least one of \"tlsv1.3\", \"tlsv1.2\""),
        );
    }
}

fn check_websocket(prefix: &str, ws: &WebSocketConfig, fail: &mut impl FnMut(&str, String)) {
    if !ws.mqtt_path.starts_with('/') {
        fail(
            &format!("{prefix}.mqtt_path"),
            format!(
                "{prefix}.mqtt_path must start with '/', got {:?}",
                ws.mqtt_path
            ),
        );
    }
    if ws.max_frame_size == 0 {
        fail(
            &format!("{prefix}.max_frame_size"),
            format!("{prefix}.max_frame_size must be >= 1"),
        );
    }
    if ws.fail_if_no_subprotocol && ws.supported_subprotocols.is_empty() {
        fail(
            &format!("{prefix}.supported_subprotocols"),
            format!("{prefix}.supported_subprotocols is empty while fail_if_no_subprotocol refuses every upgrade without one"),
        );
    }
    if !ws.trusted_proxies.is_empty() && ws.proxy_address_header.is_empty() {
        fail(
            &format!("{prefix}.trusted_proxies"),
            format!("{prefix}.trusted_proxies lists proxies but {prefix}.proxy_address_header is empty, so no proxy can name a client"),
        );
    }
}

/// Checks the listener at `prefix` binds a valid address and, when it `starts`, one that no
/// listener already in `taken` (of the same transport) binds; records it there.
fn check_bind(
    prefix: String,
    bind: &str,
    starts: bool,
    taken: &mut Vec<(String, SocketAddr)>,
    fail: &mut impl FnMut(&str, String),
) {
    let key = format!("{prefix}.bind");
    match parse_bind(bind) {
        Err(e) => fail(&key, format!("{key}: {e}")),
        Ok(addr) if starts => {
            if let Some((other, _)) = taken.iter().find(|(_, a)| binds_overlap(*a, addr)) {
                fail(
                    &key,
                    format!("{key}: address {addr} is also bound by enabled listener {other}"),
                );
            }
            taken.push((prefix, addr));
        }
        Ok(_) => {}
    }
}

/// Two binds that the OS would refuse together: same port and same address, or a wildcard
/// address of the same family. Port 0 asks the OS for a free port, so it never collides.
/// IPv6 wildcards that also take IPv4 (dual-stack) are not judged here; the OS reports those.
fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ListenerKind;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_rules() {
        assert!(binds_overlap(addr("0.0.0.0:1883"), addr("0.0.0.0:1883")));
        assert!(binds_overlap(addr("0.0.0.0:1883"), addr("127.0.0.1:1883")));
        assert!(binds_overlap(addr("127.0.0.1:1883"), addr("0.0.0.0:1883")));
        assert!(binds_overlap(addr("[::]:1883"), addr("[::1]:1883")));
        assert!(!binds_overlap(
            addr("127.0.0.1:1883"),
            addr("127.0.0.2:1883")
        ));
        assert!(!binds_overlap(addr("0.0.0.0:1883"), addr("0.0.0.0:1884")));
        assert!(!binds_overlap(addr("0.0.0.0:0"), addr("0.0.0.0:0")));
        assert!(!binds_overlap(addr("0.0.0.0:1883"), addr("[::]:1883")));
    }

    #[test]
    fn two_listeners_under_one_name_are_refused() {
        let entry = |kind, name| ListenerEntry {
            kind,
            name,
            bind: "0",
            starts: true,
            files: crate::ListenerFiles::None,
        };
        let mut problems = Vec::new();
        check_unique_listener_names(
            &[
                entry(ListenerKind::CoapUdp, "default"),
                entry(ListenerKind::Lwm2mUdp, "default"),
                entry(ListenerKind::CoapUdp, "default"),
            ],
            &mut |key, message| problems.push((key.to_owned(), message)),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (key, message) = &problems[0];
        assert_eq!(key, "gateway.coap.listeners.udp.default");
        assert!(message.contains("\"coap:udp:default\""), "{message}");
    }

    #[test]
    fn listener_names() {
        for ok in ["default", "tcp-2", "lan_1", "A"] {
            assert!(is_valid_listener_name(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", "é"] {
            assert!(!is_valid_listener_name(bad), "{bad}");
        }
    }
}
