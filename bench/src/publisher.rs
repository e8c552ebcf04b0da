//! The publisher loop: paced (or unpaced) publishes batched into one output buffer, a
//! bounded window of unacknowledged QoS 1/2 messages, and the acknowledgements read back on
//! the same task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use mqtt_core::codec::{encode, Decoder, Packet, ProtocolVersion, PubResponse, Publish, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};

use crate::client::{reserve_for_read, Conn};
use crate::error::BenchError;
use crate::payload::Header;

/// Encoding stops at this much unwritten output, so one write carries a large batch while
/// the buffer stays small.
const OUT_HIGH_WATER: usize = 64 * 1024;

/// What a publisher's progress looks like from other tasks. One writer (the publisher), so
/// relaxed stores once per batch are enough; the cache-line alignment keeps two publishers
/// on different cores from sharing a line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PubCounters {
    /// Sequence numbers handed out: messages encoded for sending.
    pub issued: AtomicU64,
    /// PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received.
    pub acked: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct PublisherSpec {
    pub id: u32,
    pub topic: ByteString,
    pub qos: QoS,
    /// Payload bytes, at least `payload::HEADER_LEN`.
    pub size: usize,
    /// Messages per second; 0 sends as fast as the window and the socket allow.
    pub rate: f64,
    /// Messages to send in all; 0 means until the end of the schedule.
    pub count: u64,
    /// Most QoS 1/2 messages awaiting acknowledgement.
    pub inflight: u16,
    /// Offset of this publisher's first message, so paced publishers do not all fire on
    /// the same tick.
    pub phase: Duration,
    /// PINGREQ period; `None` when keep-alive is off.
    pub ping: Option<Duration>,
}

/// When to publish, on the clock shared by every client of the run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Payload timestamps are nanoseconds since this.
    pub epoch: Instant,
    pub start: Instant,
    pub end: Instant,
    /// Unacknowledged messages are given up on at this point.
    pub drain_deadline: Instant,
}

#[derive(Debug, Clone)]
pub struct PublisherResult {
    pub id: u32,
    /// Messages handed to the broker: sequence numbers `0..sent` were issued.
    pub sent: u64,
    /// QoS 1/2 messages acknowledged with a success code.
    pub acked: u64,
    /// QoS 1/2 acknowledgements carrying an error reason code (MQTT 5).
    pub refused: u64,
    /// QoS 1/2 messages never acknowledged by the end of the drain.
    pub unacked: u64,
    /// Acknowledgements for packet ids that were not in flight.
    pub stray_acks: u64,
    /// Last time a write emptied the buffer (QoS 0) or an acknowledgement came (QoS 1/2).
    pub last_progress: Option<Instant>,
    pub error: Option<String>,
}

/// Runs one publisher: publishes on `schedule`, waits for its acknowledgements, reports on
/// `report`, then keeps the connection open until `stop` so that closing it cannot disturb
/// deliveries still under way.
pub async fn run_publisher(
    mut conn: Conn,
    spec: PublisherSpec,
    window: u16,
    schedule: Schedule,
    counters: Arc<PubCounters>,
    report: oneshot::Sender<PublisherResult>,
    mut stop: watch::Receiver<bool>,
) {
    let mut publisher = Publisher::new(&spec, conn.version, window, schedule, counters);
    let outcome = publisher.run(&mut conn, &mut stop).await;
    let failed = outcome.is_err();
    let _ = report.send(publisher.result(outcome.err()));
    if !failed {
        let _ = publisher.hold(&mut conn, &mut stop).await;
    }
    conn.disconnect().await;
}

struct Publisher {
    id: u32,
    version: ProtocolVersion,
    qos: QoS,
    size: usize,
    rate: f64,
    /// Sequence numbers available: `count`, or all a u32 can number.
    limit: u64,
    window: u16,
    phase_start: Instant,
    schedule: Schedule,
    ping: Option<Duration>,
    /// Encoded again for every message with only the packet id changed; the payload bytes
    /// are patched in the output buffer afterwards.
    packet: Packet,
    next_seq: u64,
    ids: PacketIds,
    acked: u64,
    refused: u64,
    stray_acks: u64,
    last_progress: Option<Instant>,
    counters: Arc<PubCounters>,
}

impl Publisher {
    fn new(
        spec: &PublisherSpec,
        version: ProtocolVersion,
        window: u16,
        schedule: Schedule,
        counters: Arc<PubCounters>,
    ) -> Self {
        let template = Publish {
            dup: false,
            qos: spec.qos,
            retain: false,
            topic: spec.topic.clone(),
            packet_id: 0,
            payload: Bytes::from(vec![0u8; spec.size]),
            properties: Default::default(),
        };
        let limit = if spec.count == 0 {
            u64::from(u32::MAX)
        } else {
            spec.count.min(u64::from(u32::MAX))
        };
        Publisher {
            id: spec.id,
            version,
            qos: spec.qos,
            size: spec.size,
            rate: spec.rate,
            limit,
            window: window.max(1),
            phase_start: schedule.start + spec.phase,
            schedule,
            ping: spec.ping,
            packet: Packet::Publish(template),
            next_seq: 0,
            ids: PacketIds::new(),
            acked: 0,
            refused: 0,
            stray_acks: 0,
            last_progress: None,
            counters,
        }
    }

    fn result(&self, error: Option<BenchError>) -> PublisherResult {
        PublisherResult {
            id: self.id,
            sent: self.next_seq,
            acked: self.acked,
            refused: self.refused,
            unacked: u64::from(self.ids.in_use),
            stray_acks: self.stray_acks,
            last_progress: self.last_progress,
            error: error.map(|error| error.to_string()),
        }
    }

    fn window_open(&self) -> bool {
        self.qos == QoS::AtMostOnce || self.ids.in_use < u32::from(self.window)
    }

    /// How many messages the schedule wants issued by `now`.
    fn due(&self, now: Instant) -> u64 {
        if self.rate <= 0.0 {
            return self.limit;
        }
        if now < self.phase_start {
            return 0;
        }
        let elapsed = now.duration_since(self.phase_start).as_secs_f64();
        ((elapsed * self.rate) as u64 + 1).min(self.limit)
    }

    /// When message `next_seq` is due: the schedule is anchored at the start, so a late
    /// wake-up is caught up on the next one instead of shifting every later message.
    fn next_due(&self) -> Instant {
        self.phase_start + Duration::from_secs_f64(self.next_seq as f64 / self.rate)
    }

    fn fill(&mut self, out: &mut BytesMut, now: Instant) -> Result<(), BenchError> {
        let due = self.due(now);
        if self.next_seq >= due || !self.window_open() || out.len() >= OUT_HIGH_WATER {
            return Ok(());
        }
        let sent_ns = now.duration_since(self.schedule.epoch).as_nanos() as u64;
        while self.next_seq < due && self.window_open() && out.len() < OUT_HIGH_WATER {
            let packet_id = if self.qos == QoS::AtMostOnce {
                0
            } else {
                self.ids.allocate().ok_or(BenchError::Unexpected {
                    expected: "a free packet identifier",
                    got: "all 65535 in use",
                })?
            };
            if let Packet::Publish(publish) = &mut self.packet {
                publish.packet_id = packet_id;
            }
            encode(&self.packet, self.version, out)?;
            // The payload is the last field of PUBLISH, so its first bytes sit `size` from
            // the end of what was just encoded.
            let header = Header {
                publisher: self.id,
                seq: self.next_seq as u32,
                sent_ns,
            };
            let at = out.len() - self.size;
            if let Some(payload) = out.get_mut(at..) {
                header.write(payload);
            }
            self.next_seq += 1;
        }
        self.counters.issued.store(self.next_seq, Ordering::Release);
        Ok(())
    }

    async fn run(
        &mut self,
        conn: &mut Conn,
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
        let end_timer = tokio::time::sleep_until(self.schedule.end.into());
        let drain_timer = tokio::time::sleep_until(self.schedule.drain_deadline.into());
        let pace_timer = tokio::time::sleep_until(self.schedule.start.into());
        tokio::pin!(end_timer, drain_timer, pace_timer);
        let mut ping = ping_interval(self.ping);
        let mut publishing = true;
        loop {
            let now = Instant::now();
            if publishing && (now >= self.schedule.end || self.next_seq >= self.limit) {
                publishing = false;
            }
            if publishing {
                self.fill(out, now)?;
            } else if out.is_empty() && self.ids.in_use == 0 {
                return Ok(());
            }
            let paced_wait = publishing
                && out.is_empty()
                && self.rate > 0.0
                && self.window_open()
                && self.next_seq < self.limit;
            if paced_wait {
                pace_timer.as_mut().reset(self.next_due().into());
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
                written = writer.write(out), if !out.is_empty() => match written {
                    Ok(0) => return Err(BenchError::Closed),
                    Ok(n) => {
                        out.advance(n);
                        if out.is_empty() && self.qos == QoS::AtMostOnce {
                            self.last_progress = Some(Instant::now());
                        }
                    }
                    Err(error) => return Err(BenchError::Io { context: "writing to the broker", source: error }),
                },
                read = reader.read_buf(input) => match read {
                    Ok(0) => return Err(BenchError::Closed),
                    Ok(_) => {
                        self.handle_input(decoder, input, out, version)?;
                        reserve_for_read(input);
                    }
                    Err(error) => return Err(BenchError::Io { context: "reading from the broker", source: error }),
                },
                () = &mut pace_timer, if paced_wait => {}
                () = &mut end_timer, if publishing => {}
                () = &mut drain_timer, if !publishing => return Ok(()),
                _ = ping.tick(), if self.ping.is_some() => {
                    encode(&Packet::PingReq, version, out)?;
                }
            }
        }
    }

    /// After reporting: answer the broker (PUBREL for a late PUBREC, pings) until `stop`.
    async fn hold(
        &mut self,
        conn: &mut Conn,
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
        let mut ping = ping_interval(self.ping);
        loop {
            if !out.is_empty() {
                stream
                    .write_all(out)
                    .await
                    .map_err(BenchError::io("writing to the broker"))?;
                out.clear();
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
                read = stream.read_buf(input) => match read {
                    Ok(0) => return Err(BenchError::Closed),
                    Ok(_) => {
                        self.handle_input(decoder, input, out, version)?;
                        reserve_for_read(input);
                    }
                    Err(error) => return Err(BenchError::Io { context: "reading from the broker", source: error }),
                },
                _ = ping.tick(), if self.ping.is_some() => {
                    encode(&Packet::PingReq, version, out)?;
                }
            }
        }
    }

    fn handle_input(
        &mut self,
        decoder: &mut Decoder,
        input: &mut BytesMut,
        out: &mut BytesMut,
        version: ProtocolVersion,
    ) -> Result<(), BenchError> {
        let before = self.acked;
        while let Some(packet) = decoder.decode(input)? {
            match packet {
                Packet::PubAck(ack) if self.qos == QoS::AtLeastOnce => {
                    self.settle(ack.packet_id, ack.reason_code.is_error());
                }
                Packet::PubRec(rec) if self.qos == QoS::ExactlyOnce => {
                    if !self.ids.contains(rec.packet_id) {
                        self.stray_acks += 1;
                    } else if rec.reason_code.is_error() {
                        // MQTT 5: a failed PUBREC ends the exchange; no PUBREL follows.
                        self.settle(rec.packet_id, true);
                    } else {
                        let rel = PubResponse {
                            packet_id: rec.packet_id,
                            ..PubResponse::default()
                        };
                        encode(&Packet::PubRel(rel), version, out)?;
                    }
                }
                Packet::PubComp(comp) if self.qos == QoS::ExactlyOnce => {
                    self.settle(comp.packet_id, comp.reason_code.is_error());
                }
                Packet::PingResp => {}
                Packet::Disconnect(disconnect) => {
                    return Err(BenchError::Disconnected(disconnect.reason_code.0))
                }
                other => {
                    return Err(BenchError::Unexpected {
                        expected: "an acknowledgement of our publishes",
                        got: other.name(),
                    })
                }
            }
        }
        if self.acked != before {
            self.last_progress = Some(Instant::now());
            self.counters.acked.store(self.acked, Ordering::Relaxed);
        }
        Ok(())
    }

    fn settle(&mut self, packet_id: u16, refused: bool) {
        if !self.ids.release(packet_id) {
            self.stray_acks += 1;
        } else if refused {
            self.refused += 1;
        } else {
            self.acked += 1;
        }
    }
}

fn ping_interval(period: Option<Duration>) -> tokio::time::Interval {
    let period = period.unwrap_or(Duration::from_secs(3600));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// The packet identifiers in flight, as a 65,536-bit set.
struct PacketIds {
    used: Box<[u64; 1024]>,
    in_use: u32,
    next: u16,
}

impl PacketIds {
    fn new() -> Self {
        PacketIds {
            used: Box::new([0; 1024]),
            in_use: 0,
            next: 1,
        }
    }

    fn slot(&mut self, id: u16) -> Option<(&mut u64, u64)> {
        let word = self.used.get_mut(usize::from(id / 64))?;
        Some((word, 1u64 << (id % 64)))
    }

    fn contains(&self, id: u16) -> bool {
        self.used
            .get(usize::from(id / 64))
            .is_some_and(|word| word & (1u64 << (id % 64)) != 0)
    }

    fn allocate(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next;
            self.next = if self.next == u16::MAX {
                1
            } else {
                self.next + 1
            };
            let (word, mask) = self.slot(id)?;
            if *word & mask == 0 {
                *word |= mask;
                self.in_use += 1;
                return Some(id);
            }
        }
        None
    }

    fn release(&mut self, id: u16) -> bool {
        let Some((word, mask)) = self.slot(id) else {
            return false;
        };
        if *word & mask == 0 {
            return false;
        }
        *word &= !mask;
        self.in_use -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_skip_those_in_flight_and_never_use_zero() {
        let mut ids = PacketIds::new();
        let first: Vec<u16> = (0..3).filter_map(|_| ids.allocate()).collect();
        assert_eq!(first, [1, 2, 3]);
        assert!(ids.release(2));
        assert!(!ids.release(2));
        ids.next = u16::MAX;
        assert_eq!(ids.allocate(), Some(u16::MAX));
        // Wraps past 0 and 1 (still in flight) to 2.
        assert_eq!(ids.allocate(), Some(2));
        assert_eq!(ids.in_use, 4);
    }
}
