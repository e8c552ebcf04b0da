//! `$SYS` broker statistics under Mosquitto's topic names, and `$`-topics kept out of
//! wildcard subscriptions that start with a wildcard (MQTT-4.7.2-1).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use interop_tests::{
    unique_client_id, unique_topic, Broker, Lib, Msg, ScriptClient, Setting, Version, TIMEOUT,
};

const INTERVAL: &str = "GATEWAY_SYS__INTERVAL";

/// A broker publishing $SYS every second (or as often as GATEWAY_TEST_SYS_INTERVAL
/// says an external one does); returns it with the interval.
fn sys_broker() -> Option<(Broker, Duration)> {
    let broker = Broker::start_with(&[
        Setting::new(INTERVAL, "1s").or_external("GATEWAY_TEST_SYS_INTERVAL")
    ])?;
    let text = broker.value(INTERVAL).trim_end_matches('s').to_string();
    let secs: f64 = text
        .parse()
        .unwrap_or_else(|_| panic!("{INTERVAL}: {text:?} is not a number of seconds"));
    Some((broker, Duration::from_secs_f64(secs)))
}

/// The leading integer of a $SYS value ("42", "17 seconds").
fn number(msg: &Msg) -> u64 {
    let text = String::from_utf8_lossy(&msg.payload);
    let digits: String = text
        .trim()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{}: {text:?} does not start with a number", msg.topic))
}

#[test]
fn sys_topics_publish_version_uptime_connected_clients_and_received_messages() {
    let Some((broker, interval)) = sys_broker() else {
        return;
    };
    let mut watcher =
        ScriptClient::connected(Lib::Paho, Version::V311, &broker, &unique_client_id("sys"));
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
    ];
    for topic in wanted {
        watcher.subscribe(topic, 0);
    }
    // Some traffic for the counters to count.
    let topic = unique_topic("sys-traffic");
    ScriptClient::connected(
        Lib::Paho,
        Version::V311,
        &broker,
        &unique_client_id("traffic"),
    )
    .publish_many(&topic, 10, 1, 0);

    // Messages retained from before this test (Mosquitto retains $SYS values) are
    // stale; a live publication has retain 0 for this MQTT 3.1.1 subscriber. Wanted:
    // the version in any form, every counter live, the uptime twice to see it advance.
    let needed = |topic: &str| match topic {
        "$SYS/broker/version" => 0,
        "$SYS/broker/uptime" => 2,
        _ => 1,
    };
    let deadline = Instant::now() + 3 * interval + TIMEOUT;
    let mut live: BTreeMap<String, Vec<Msg>> = BTreeMap::new();
    let mut version = None;
    // The counter is read until it shows the traffic: a publication from a tick before the
    // traffic finished says 0, and ticks fall wherever the clients' start-up puts them.
    let traffic_counted = |live: &BTreeMap<String, Vec<Msg>>| {
        live.get("$SYS/broker/messages/received")
            .is_some_and(|msgs| msgs.iter().any(|m| number(m) >= 10))
    };
    while version.is_none()
        || !traffic_counted(&live)
        || wanted
            .iter()
            .any(|t| live.get(*t).map_or(0, Vec::len) < needed(t))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = watcher.try_recv(left) else {
            panic!(
                "live $SYS publications seen within {:?}: {:?}; version: {version:?}",
                3 * interval + TIMEOUT,
                live
            );
        };
        if msg.topic == "$SYS/broker/version" {
            version = Some(String::from_utf8_lossy(&msg.payload).into_owned());
        }
        if !msg.retain {
            live.entry(msg.topic.clone()).or_default().push(msg);
        }
    }

    assert!(
        version.is_some_and(|v| !v.trim().is_empty()),
        "empty $SYS/broker/version"
    );
    let uptimes: Vec<u64> = live["$SYS/broker/uptime"].iter().map(number).collect();
    assert!(
        uptimes.windows(2).all(|w| w[0] < w[1]),
        "uptime does not advance: {uptimes:?}"
    );
    let connected = live["$SYS/broker/clients/connected"]
        .iter()
        .map(number)
        .max()
        .unwrap_or(0);
    assert!(
        connected >= 1,
        "$SYS/broker/clients/connected = {connected} with this watcher connected"
    );
    let received = live["$SYS/broker/messages/received"]
        .iter()
        .map(number)
        .max()
        .unwrap_or(0);
    assert!(
        received >= 10,
        "$SYS/broker/messages/received = {received} after 10 messages were published"
    );
}

#[test]
fn wildcard_subscriptions_starting_with_a_wildcard_do_not_receive_sys_topics() {
    let Some((broker, interval)) = sys_broker() else {
        return;
    };
    // Proof that $SYS messages are flowing meanwhile.
    let mut sys =
        ScriptClient::connected(Lib::Paho, Version::V5, &broker, &unique_client_id("sysw"));
    sys.subscribe("$SYS/broker/uptime", 0);
    let mut wild =
        ScriptClient::connected(Lib::MqttJs, Version::V5, &broker, &unique_client_id("wild"));
    wild.subscribe("#", 0);
    wild.subscribe("+/broker/#", 0);

    for _ in 0..2 {
        sys.recv(2 * interval + TIMEOUT);
    }
    // Everything routed to `wild` before this barrier is now in.
    let barrier = unique_topic("sys-barrier");
    let before = wild.until_barrier(&broker, &barrier);
    let leaked: Vec<&str> = before
        .iter()
        .map(|m| m.topic.as_str())
        .filter(|t| t.starts_with('$'))
        .collect();
    assert!(
        leaked.is_empty(),
        "'#' or '+/broker/#' received $-topics: {leaked:?}"
    );
}
