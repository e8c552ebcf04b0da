//! EMQX's per-client publish rates of a listener (`messages_rate`): a client over its rate
//! is not read for a while and loses nothing, while a client within its rate on the same
//! listener is not slowed.

use std::time::{Duration, Instant};

use interop_tests::mosquitto::MosquittoSub;
use interop_tests::{
    collect_distinct, unique_client_id, unique_topic, Broker, Lib, ScriptClient, Setting, Version,
};

const BURST: usize = 500;
const CALM: usize = 50;

#[test]
fn a_qos1_burst_over_messages_rate_takes_the_rates_time_and_loses_nothing_while_a_calm_client_is_not_slowed(
) {
    let Some(broker) = Broker::start_gateway_only(
        "a listener's messages_rate",
        &[
            Setting::new("GATEWAY_LISTENERS__TCP__DEFAULT__MESSAGES_RATE", "100/s"),
            Setting::new("GATEWAY_SYS__INTERVAL", "1s"),
        ],
    ) else {
        return;
    };
    let prefix = unique_topic("rated");
    let mut sub = MosquittoSub::start(&broker, Version::V311, &[&format!("{prefix}/#")], 1, &[]);
    let mut burst = ScriptClient::connected(
        Lib::Paho,
        Version::V311,
        &broker,
        &unique_client_id("burst"),
    );
    let mut calm =
        ScriptClient::connected(Lib::Paho, Version::V311, &broker, &unique_client_id("calm"));
    let mut watcher =
        ScriptClient::connected(Lib::Paho, Version::V311, &broker, &unique_client_id("sys"));
    watcher.subscribe("$SYS/broker/clients/rate_limited", 0);

    // 500 QoS 1 messages as fast as paho sends them: the first 100 (one period's worth)
    // at once, the other 400 at 100 a second.
    let started = Instant::now();
    burst.start_publish_many(&format!("{prefix}/burst"), BURST, 1, 16);
    // Meanwhile another client of the same listener publishes within its own rate.
    std::thread::sleep(Duration::from_millis(500));
    let calm_started = Instant::now();
    calm.publish_many(&format!("{prefix}/calm"), CALM, 1, 16);
    let calm_took = calm_started.elapsed();
    burst.finish_publish_many();
    let burst_took = started.elapsed();

    let seen = collect_distinct(
        BURST + CALM,
        Instant::now() + Duration::from_secs(30),
        |left| sub.try_recv(left),
    );
    assert_eq!(
        seen.len(),
        BURST + CALM,
        "{} of {} messages arrived; broker log:\n{}",
        seen.len(),
        BURST + CALM,
        broker.log_tail()
    );
    // 400 messages past the first period at 100 a second: 4 s, with slack for timers.
    assert!(
        burst_took >= Duration::from_secs(3),
        "the burst took {burst_took:?}: not held to its rate"
    );
    assert!(
        burst_took < Duration::from_secs(20),
        "the burst took {burst_took:?}"
    );
    assert!(
        calm_took < Duration::from_millis(1500),
        "the calm client took {calm_took:?} for {CALM} messages: slowed by another's rate"
    );
    assert!(
        calm_started + calm_took + Duration::from_secs(1) < started + burst_took,
        "the calm client finished while the burst was still paced"
    );

    // The pauses are counted under $SYS, published every second here.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut paused = 0;
    while paused == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = watcher.try_recv(left) else {
            break;
        };
        paused = String::from_utf8_lossy(&msg.payload)
            .trim()
            .parse()
            .unwrap_or(0);
    }
    assert!(paused > 0, "$SYS/broker/clients/rate_limited stayed 0");
    println!(
        "{BURST} QoS 1 messages at 100/s in {burst_took:?}, none lost; {CALM} of a calm client \
         in {calm_took:?}; {paused} pauses"
    );
}
