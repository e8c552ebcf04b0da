//! The subscriber loop: reads deliveries, acknowledges them in batches, and accounts for
//! every one by publisher and sequence number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use mqtt_core::codec::{encode, Packet, ProtocolVersion, PubResponse, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::client::{reserve_for_read, Conn};
use crate::error::BenchError;
use crate::payload::Header;
use crate::tracker::{Seen, SeqLimits, SeqTracker};

/// Reads stop while this much acknowledgement output waits: a broker that does not read
/// cannot make us buffer without bound.
const OUT_PAUSE: usize = 1024 * 1024;
/// Latencies are recorded in nanoseconds with three significant digits up to 100 s; a
/// slower delivery is recorded as 100 s.
const LATENCY_MAX_NS: u64 = 100_000_000_000;

pub fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3)
}

/// A subscriber's progress as other tasks see it: stored once per read, one writer.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct SubCounters {
    /// Deliveries of PUBLISH, duplicates included.
    pub received: AtomicU64,
    /// Distinct messages of this run's publishers.
    pub unique: AtomicU64,
}

#[derive(Debug)]
pub struct SubscriberResult {
    pub index: usize,
    pub tracker: SeqTracker,
    /// Deliveries of PUBLISH, duplicates and foreign messages included.
    pub received: u64,
    pub latency: Histogram<u64>,
    pub last_receive: Option<Instant>,
    pub error: Option<String>,
}

pub struct SubscriberSpec<L> {
    pub index: usize,
    pub epoch: Instant,
    pub limits: L,
    /// The subscriber does not read until then, as a consumer that stalls would.
    pub stall_until: Option<Instant>,
    pub ping: Option<Duration>,
    /// Empty; filled with publish-to-delivery latencies in nanoseconds.
    pub latency: Histogram<u64>,
}

/// Receives until `stop` turns true (or the connection fails) and returns what it saw.
pub async fn run_subscriber<L: SeqLimits>(
    mut conn: Conn,
    spec: SubscriberSpec<L>,
    counters: Arc<SubCounters>,
    mut stop: watch::Receiver<bool>,
) -> SubscriberResult {
    let mut state = Subscriber {
        epoch: spec.epoch,
        limits: spec.limits,
        tracker: SeqTracker::default(),
        received: 0,
        unique: 0,
        latency: spec.latency,
        last_receive: None,
        counters,
    };
    let outcome = state
        .run(&mut conn, spec.stall_until, spec.ping, &mut stop)
        .await;
    conn.disconnect().await;
    SubscriberResult {
        index: spec.index,
        tracker: state.tracker,
        received: state.received,
        latency: state.latency,
        last_receive: state.last_receive,
        error: outcome.err().map(|error| error.to_string()),
    }
}

struct Subscriber<L> {
    epoch: Instant,
    limits: L,
    tracker: SeqTracker,
    received: u64,
    unique: u64,
    latency: Histogram<u64>,
    last_receive: Option<Instant>,
    counters: Arc<SubCounters>,
}

impl<L: SeqLimits> Subscriber<L> {
    async fn run(
        &mut self,
        conn: &mut Conn,
        stall_until: Option<Instant>,
        ping: Option<Duration>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), BenchError> {
        let Conn {
            stream,
            decoder,
            version,
            input,
            out,
        } = conn;
        let version = *version;
        let (mut reader, mut writer) = stream.split();
        let mut stalled = stall_until.is_some();
        let stall_timer = tokio::time::sleep_until(stall_until.unwrap_or_else(Instant::now).into());
        tokio::pin!(stall_timer);
        let period = ping.unwrap_or(Duration::from_secs(3600));
        let mut ping_timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
                written = writer.write(out), if !out.is_empty() => match written {
                    Ok(0) => return Err(BenchError::Closed),
                    Ok(n) => out.advance(n),
                    Err(error) => return Err(BenchError::Io { context: "writing to the broker", source: error }),
                },
                read = reader.read_buf(input), if !stalled && out.len() < OUT_PAUSE => match read {
                    Ok(0) => return Err(BenchError::Closed),
                    Ok(_) => {
                        let now = Instant::now();
                        let before = self.received;
                        while let Some(packet) = decoder.decode(input)? {
                            self.handle(packet, now, version, out)?;
                        }
                        if self.received != before {
                            self.last_receive = Some(now);
                            self.counters.received.store(self.received, Ordering::Relaxed);
                            self.counters.unique.store(self.unique, Ordering::Relaxed);
                        }
                        reserve_for_read(input);
                    }
                    Err(error) => return Err(BenchError::Io { context: "reading from the broker", source: error }),
                },
                () = &mut stall_timer, if stalled => stalled = false,
                _ = ping_timer.tick(), if ping.is_some() => {
                    encode(&Packet::PingReq, version, out)?;
                }
            }
        }
    }

    fn handle(
        &mut self,
        packet: Packet,
        now: Instant,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), BenchError> {
        match packet {
            Packet::Publish(publish) => {
                self.received += 1;
                if let Some(header) = Header::read(&publish.payload) {
                    match self.tracker.record(&header, &self.limits) {
                        Seen::InOrder | Seen::Reordered => {
                            self.unique += 1;
                            self.record_latency(&header, now);
                        }
                        Seen::Duplicate => self.record_latency(&header, now),
                        Seen::Foreign => {}
                    }
                } else {
                    self.tracker.foreign += 1;
                }
                let ack = PubResponse {
                    packet_id: publish.packet_id,
                    ..PubResponse::default()
                };
                match publish.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => encode(&Packet::PubAck(ack), version, out)?,
                    QoS::ExactlyOnce => encode(&Packet::PubRec(ack), version, out)?,
                }
            }
            Packet::PubRel(rel) => {
                let comp = PubResponse {
                    packet_id: rel.packet_id,
                    ..PubResponse::default()
                };
                encode(&Packet::PubComp(comp), version, out)?;
            }
            Packet::PingResp => {}
            Packet::Disconnect(disconnect) => {
                return Err(BenchError::Disconnected(disconnect.reason_code.0))
            }
            other => {
                return Err(BenchError::Unexpected {
                    expected: "PUBLISH or PUBREL",
                    got: other.name(),
                })
            }
        }
        Ok(())
    }

    fn record_latency(&mut self, header: &Header, now: Instant) {
        let now_ns = now.duration_since(self.epoch).as_nanos() as u64;
        self.latency
            .saturating_record(now_ns.saturating_sub(header.sent_ns).max(1));
    }
}
