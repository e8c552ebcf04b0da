//! The benchmark payload: a 16-byte header, then zero padding up to `--size`.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | publisher id, big-endian u32 |
//! | 4..8 | sequence number within that publisher, big-endian u32, from 0 |
//! | 8..16 | send time, nanoseconds since the run's shared start `Instant`, big-endian u64 |

/// The smallest payload that can carry the header.
pub const HEADER_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub publisher: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header over the first `HEADER_LEN` bytes of `dst`; false if it is shorter.
    pub fn write(&self, dst: &mut [u8]) -> bool {
        let Some(dst) = dst.get_mut(..HEADER_LEN) else {
            return false;
        };
        let (id, rest) = dst.split_at_mut(4);
        let (seq, sent) = rest.split_at_mut(4);
        id.copy_from_slice(&self.publisher.to_be_bytes());
        seq.copy_from_slice(&self.seq.to_be_bytes());
        sent.copy_from_slice(&self.sent_ns.to_be_bytes());
        true
    }

    /// `None` for a payload too short to be ours.
    pub fn read(src: &[u8]) -> Option<Header> {
        let publisher = u32::from_be_bytes(src.get(0..4)?.try_into().ok()?);
        let seq = u32::from_be_bytes(src.get(4..8)?.try_into().ok()?);
        let sent_ns = u64::from_be_bytes(src.get(8..16)?.try_into().ok()?);
        Some(Header {
            publisher,
            seq,
            sent_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_short_payloads_are_rejected() {
        let header = Header {
            publisher: 7,
            seq: 0xDEAD_BEEF,
            sent_ns: 123_456_789_012,
        };
        let mut buf = [0u8; 64];
        assert!(header.write(&mut buf));
        assert_eq!(Header::read(&buf), Some(header));
        assert!(!header.write(&mut [0u8; 15]));
        assert_eq!(Header::read(&buf[..15]), None);
    }
}
