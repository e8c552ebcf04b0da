//! A STOMP session's own subscriptions: what the core does not know of them (the client's
//! ids and ack modes), kept with the session and, for a session that outlives its
//! connection, in the store as a small versioned record, so that messages queued before a
//! restart still reach the subscription id they were meant for.

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    /// An ACK acknowledges every message of the subscription sent up to the one it names.
    Client,
    ClientIndividual,
}

impl AckMode {
    pub fn parse(text: &str) -> Option<AckMode> {
        match text {
            "auto" => Some(AckMode::Auto),
            "client" => Some(AckMode::Client),
            "client-individual" => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }

    fn code(self) -> u8 {
        match self {
            AckMode::Auto => 0,
            AckMode::Client => 1,
            AckMode::ClientIndividual => 2,
        }
    }

    fn from_code(code: u8) -> Option<AckMode> {
        match code {
            0 => Some(AckMode::Auto),
            1 => Some(AckMode::Client),
            2 => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }
}

/// One SUBSCRIBE: its id, the destination as the client wrote it, and the MQTT
/// subscription identifier that marks the deliveries it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompSubscription {
    pub id: String,
    pub destination: String,
    pub ack: AckMode,
    pub identifier: u32,
}

/// Subscriptions kept in the session, so that a client resuming it with `client-id` finds
/// them, and the deliveries queued for them, again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSubscriptions {
    pub subscriptions: Vec<StompSubscription>,
    pub next_identifier: u32,
}

/// The first byte of the record; a record of another format is refused, not misread.
const FORMAT: u8 = 1;

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown record format {0}")]
    UnknownFormat(u8),
    #[error("record ends early")]
    Truncated,
    #[error("unknown ack mode {0}")]
    UnknownAckMode(u8),
    #[error("a subscription id or destination is not UTF-8")]
    NotUtf8,
    #[error("{0} bytes after the last subscription")]
    TrailingBytes(usize),
}

impl SessionSubscriptions {
    /// `FORMAT`, the next identifier (u32), the count (u32), then per subscription its
    /// identifier (u32), ack mode (u8), id and destination (each a u16 length and UTF-8).
    /// Ids and destinations longer than a frame header can be never occur; one that did
    /// would be cut at 65,535 bytes rather than make the record unreadable.
    pub fn encode(&self) -> Bytes {
        let size: usize = self
            .subscriptions
            .iter()
            .map(|s| 9 + s.id.len() + s.destination.len())
            .sum();
        let mut out = BytesMut::with_capacity(9 + size);
        out.put_u8(FORMAT);
        out.put_u32(self.next_identifier);
        out.put_u32(u32::try_from(self.subscriptions.len()).unwrap_or(u32::MAX));
        for subscription in &self.subscriptions {
            out.put_u32(subscription.identifier);
            out.put_u8(subscription.ack.code());
            put_text(&mut out, &subscription.id);
            put_text(&mut out, &subscription.destination);
        }
        out.freeze()
    }

    pub fn decode(mut record: &[u8]) -> Result<SessionSubscriptions, RecordError> {
        let format = take_u8(&mut record)?;
        if format != FORMAT {
            return Err(RecordError::UnknownFormat(format));
        }
        let next_identifier = take_u32(&mut record)?;
        let count = take_u32(&mut record)?;
        // The count comes from the record: allocate as its bytes prove, not as it claims.
        let mut subscriptions = Vec::with_capacity((count as usize).min(record.len() / 9));
        for _ in 0..count {
            let identifier = take_u32(&mut record)?;
            let code = take_u8(&mut record)?;
            let ack = AckMode::from_code(code).ok_or(RecordError::UnknownAckMode(code))?;
            let id = take_text(&mut record)?;
            let destination = take_text(&mut record)?;
            subscriptions.push(StompSubscription {
                id,
                destination,
                ack,
                identifier,
            });
        }
        if !record.is_empty() {
            return Err(RecordError::TrailingBytes(record.len()));
        }
        Ok(SessionSubscriptions {
            subscriptions,
            next_identifier,
        })
    }
}

fn put_text(out: &mut BytesMut, text: &str) {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let kept = text.get(..end).unwrap_or_default();
    out.put_u16(kept.len() as u16);
    out.put_slice(kept.as_bytes());
}

fn take_u8(record: &mut &[u8]) -> Result<u8, RecordError> {
    if record.remaining() < 1 {
        return Err(RecordError::Truncated);
    }
    Ok(record.get_u8())
}

fn take_u32(record: &mut &[u8]) -> Result<u32, RecordError> {
    if record.remaining() < 4 {
        return Err(RecordError::Truncated);
    }
    Ok(record.get_u32())
}

fn take_text(record: &mut &[u8]) -> Result<String, RecordError> {
    if record.remaining() < 2 {
        return Err(RecordError::Truncated);
    }
    let len = usize::from(record.get_u16());
    let bytes = record.get(..len).ok_or(RecordError::Truncated)?;
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)?;
    record.advance(len);
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionSubscriptions {
        SessionSubscriptions {
            subscriptions: vec![
                StompSubscription {
                    id: "s1".into(),
                    destination: "a/+/c".into(),
                    ack: AckMode::Client,
                    identifier: 1,
                },
                StompSubscription {
                    id: "zwei ü".into(),
                    destination: "$share/g/x".into(),
                    ack: AckMode::ClientIndividual,
                    identifier: 7,
                },
                StompSubscription {
                    id: String::new(),
                    destination: "t".into(),
                    ack: AckMode::Auto,
                    identifier: u32::MAX,
                },
            ],
            next_identifier: 7,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let record = sample().encode();
        assert_eq!(SessionSubscriptions::decode(&record), Ok(sample()));
        let empty = SessionSubscriptions::default();
        assert_eq!(SessionSubscriptions::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn every_cut_and_every_bad_byte_is_refused_without_panic() {
        let record = sample().encode();
        for end in 0..record.len() {
            assert!(
                SessionSubscriptions::decode(&record[..end]).is_err(),
                "a record cut at {end} bytes"
            );
        }
        let mut longer = record.to_vec();
        longer.push(0);
        assert_eq!(
            SessionSubscriptions::decode(&longer),
            Err(RecordError::TrailingBytes(1))
        );
        let mut other = record.to_vec();
        other[0] = 2;
        assert_eq!(
            SessionSubscriptions::decode(&other),
            Err(RecordError::UnknownFormat(2))
        );
        // The first subscription's ack mode.
        let mut bad_ack = record.to_vec();
        bad_ack[13] = 9;
        assert_eq!(
            SessionSubscriptions::decode(&bad_ack),
            Err(RecordError::UnknownAckMode(9))
        );
        // A count far beyond the bytes that follow.
        let mut huge = record.to_vec();
        huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            SessionSubscriptions::decode(&huge),
            Err(RecordError::Truncated)
        );
        // Every byte flipped in turn: an error or some record, never a panic.
        for at in 0..record.len() {
            let mut flipped = record.to_vec();
            flipped[at] ^= 0xff;
            let _ = SessionSubscriptions::decode(&flipped);
        }
    }

    fn subscription() -> impl proptest::strategy::Strategy<Value = StompSubscription> {
        use proptest::prelude::*;
        (any::<String>(), any::<String>(), 0u8..3, any::<u32>()).prop_map(
            |(id, destination, code, identifier)| StompSubscription {
                id,
                destination,
                ack: AckMode::from_code(code).unwrap_or(AckMode::Auto),
                identifier,
            },
        )
    }

    proptest::proptest! {
        #[test]
        fn any_subscriptions_read_back_as_written(
            subscriptions in proptest::collection::vec(subscription(), 0..8),
            next_identifier in proptest::prelude::any::<u32>(),
        ) {
            let kept = SessionSubscriptions { subscriptions, next_identifier };
            proptest::prop_assert_eq!(SessionSubscriptions::decode(&kept.encode()), Ok(kept));
        }

        #[test]
        fn arbitrary_bytes_are_refused_or_read_never_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            let _ = SessionSubscriptions::decode(&bytes);
        }
    }
}
