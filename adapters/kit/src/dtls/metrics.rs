//! What a DTLS listener counts: handshakes by outcome, the cookies it sent, the records it
//! dropped by reason. Counted exactly, published under `$SYS`, and summed up in the log
//! once per interval at most: a flood of bad records or handshakes costs a counter each,
//! never a log line each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mqtt_core::broker::{ListenerFigures, Stats, DROP_REPORT_INTERVAL};
use tokio::sync::watch;

/// Why a handshake did not make a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// A wrong key, an unknown identity, or a client certificate refused (or the client
    /// refused ours).
    Credentials,
    /// Not done within the handshake timeout (a client gone silent, or a wrong key its
    /// client waited on).
    Timeout,
    /// Anything else the engine refused: a message out of place, an unsupported
    /// parameter, bytes it could not parse.
    Malformed,
}

/// Why a datagram that reached a DTLS listener was dropped unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDrop {
    /// Not DTLS records (a bad header, a length past the datagram's end), or records no
    /// session takes (anything but an opening ClientHello from an address without one).
    Garbage,
    /// Longer than the largest record the listener accepts.
    Oversized,
    /// Well-formed application data of a session that did not authenticate under its
    /// keys (forged, corrupted, or a replay).
    Undecryptable,
}

/// Per-listener DTLS counters.
#[derive(Debug, Default)]
pub struct DtlsMetrics {
    pub handshakes_completed: AtomicU64,
    pub handshakes_failed_credentials: AtomicU64,
    pub handshakes_failed_timeout: AtomicU64,
    pub handshakes_failed_malformed: AtomicU64,
    /// HelloVerifyRequests sent, by the listener or, with stateless cookies off, by a
    /// peer's engine.
    pub cookies_sent: AtomicU64,
    pub records_dropped_garbage: AtomicU64,
    pub records_dropped_oversized: AtomicU64,
    pub records_dropped_undecryptable: AtomicU64,
    /// Sessions closed because a reload removed or changed the key they were made with.
    pub sessions_revoked: AtomicU64,
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl DtlsMetrics {
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        Stats::add(
            match why {
                HandshakeFailure::Credentials => &self.handshakes_failed_credentials,
                HandshakeFailure::Timeout => &self.handshakes_failed_timeout,
                HandshakeFailure::Malformed => &self.handshakes_failed_malformed,
            },
            1,
        );
    }

    pub fn handshake_completed(&self) {
        Stats::add(&self.handshakes_completed, 1);
    }

    pub fn cookie_sent(&self) {
        Stats::add(&self.cookies_sent, 1);
    }

    pub fn dropped(&self, why: RecordDrop, n: u64) {
        Stats::add(
            match why {
                RecordDrop::Garbage => &self.records_dropped_garbage,
                RecordDrop::Oversized => &self.records_dropped_oversized,
                RecordDrop::Undecryptable => &self.records_dropped_undecryptable,
            },
            n,
        );
    }

    pub fn session_revoked(&self) {
        Stats::add(&self.sessions_revoked, 1);
    }

    pub fn handshakes_failed(&self) -> u64 {
        read(&self.handshakes_failed_credentials)
            + read(&self.handshakes_failed_timeout)
            + read(&self.handshakes_failed_malformed)
    }

    pub fn records_dropped(&self) -> u64 {
        read(&self.records_dropped_garbage)
            + read(&self.records_dropped_oversized)
            + read(&self.records_dropped_undecryptable)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            credentials: read(&self.handshakes_failed_credentials),
            timeout: read(&self.handshakes_failed_timeout),
            malformed: read(&self.handshakes_failed_malformed),
            garbage: read(&self.records_dropped_garbage),
            oversized: read(&self.records_dropped_oversized),
            undecryptable: read(&self.records_dropped_undecryptable),
        }
    }
}

/// `$SYS/broker/listeners/{name}/dtls/...`, the totals and their reasons beside them as
/// `publish/messages/dropped` has them.
impl ListenerFigures for DtlsMetrics {
    fn figures(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            (
                "dtls/handshakes/completed",
                read(&self.handshakes_completed),
            ),
            ("dtls/handshakes/failed", self.handshakes_failed()),
            (
                "dtls/handshakes/failed/credentials",
                read(&self.handshakes_failed_credentials),
            ),
            (
                "dtls/handshakes/failed/timeout",
                read(&self.handshakes_failed_timeout),
            ),
            (
                "dtls/handshakes/failed/malformed",
                read(&self.handshakes_failed_malformed),
            ),
            ("dtls/cookies/sent", read(&self.cookies_sent)),
            ("dtls/records/dropped", self.records_dropped()),
            (
                "dtls/records/dropped/garbage",
                read(&self.records_dropped_garbage),
            ),
            (
                "dtls/records/dropped/oversized",
                read(&self.records_dropped_oversized),
            ),
            (
                "dtls/records/dropped/undecryptable",
                read(&self.records_dropped_undecryptable),
            ),
            ("dtls/sessions/revoked", read(&self.sessions_revoked)),
        ]);
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    credentials: u64,
    timeout: u64,
    malformed: u64,
    garbage: u64,
    oversized: u64,
    undecryptable: u64,
}

/// Says once per interval what failed and what was dropped since the last line, and
/// nothing for an interval in which nothing was; ends at shutdown.
pub async fn report(
    metrics: Arc<DtlsMetrics>,
    listener: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    report_every(metrics, listener, &mut shutdown, DROP_REPORT_INTERVAL).await;
}

async fn report_every(
    metrics: Arc<DtlsMetrics>,
    listener: Arc<str>,
    shutdown: &mut watch::Receiver<bool>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = metrics.snapshot();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let now = metrics.snapshot();
        if let Some(line) = summary(&last, &now) {
            tracing::info!(
                %listener,
                credentials = line.credentials,
                timeout = line.timeout,
                malformed = line.malformed,
                garbage = line.garbage,
                oversized = line.oversized,
                undecryptable = line.undecryptable,
                "DTLS handshakes failed and records dropped in the last {} s",
                interval.as_secs()
            );
        }
        last = now;
    }
}

/// What changed from `last` to `now`, or `None` when nothing did.
fn summary(last: &Snapshot, now: &Snapshot) -> Option<Snapshot> {
    let since = Snapshot {
        credentials: now.credentials.saturating_sub(last.credentials),
        timeout: now.timeout.saturating_sub(last.timeout),
        malformed: now.malformed.saturating_sub(last.malformed),
        garbage: now.garbage.saturating_sub(last.garbage),
        oversized: now.oversized.saturating_sub(last.oversized),
        undecryptable: now.undecryptable.saturating_sub(last.undecryptable),
    };
    (since != Snapshot::default()).then_some(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_are_the_sums_of_their_reasons() {
        let metrics = DtlsMetrics::default();
        metrics.handshake_failed(HandshakeFailure::Credentials);
        metrics.handshake_failed(HandshakeFailure::Credentials);
        metrics.handshake_failed(HandshakeFailure::Timeout);
        metrics.dropped(RecordDrop::Garbage, 3);
        metrics.dropped(RecordDrop::Undecryptable, 2);
        let mut figures = Vec::new();
        metrics.figures(&mut figures);
        let of = |name: &str| {
            figures
                .iter()
                .find(|(topic, _)| *topic == name)
                .map(|(_, value)| *value)
        };
        assert_eq!(of("dtls/handshakes/failed"), Some(3));
        assert_eq!(of("dtls/handshakes/failed/credentials"), Some(2));
        assert_eq!(of("dtls/handshakes/failed/malformed"), Some(0));
        assert_eq!(of("dtls/records/dropped"), Some(5));
        assert_eq!(of("dtls/records/dropped/oversized"), Some(0));
    }

    #[test]
    fn a_quiet_interval_says_nothing_and_a_busy_one_what_changed() {
        let metrics = DtlsMetrics::default();
        let first = metrics.snapshot();
        assert_eq!(summary(&first, &metrics.snapshot()), None);
        for _ in 0..1000 {
            metrics.dropped(RecordDrop::Garbage, 1);
        }
        metrics.handshake_failed(HandshakeFailure::Malformed);
        let second = metrics.snapshot();
        let line = summary(&first, &second).expect("a line");
        assert_eq!(
            (line.garbage, line.malformed, line.credentials),
            (1000, 1, 0)
        );
        assert_eq!(summary(&second, &metrics.snapshot()), None);
    }
}
