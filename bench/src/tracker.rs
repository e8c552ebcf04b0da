//! Exact per-publisher sequence accounting for one subscriber.
//!
//! A bitmap of the sequence numbers seen (one bit per message the publisher sent) makes
//! duplicate and reorder detection exact, and lets the members of a shared-subscription
//! group be merged at the end to check that the group as a whole got each message once.

use crate::payload::Header;

/// How a received message relates to what this subscriber had already seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time, and no later sequence number from that publisher came before it.
    InOrder,
    /// First time, but a higher sequence number from that publisher came before it.
    Reordered,
    /// Already seen.
    Duplicate,
    /// Not from a publisher of this run, or a sequence number it has not sent.
    Foreign,
}

/// Bounds that reject payloads no publisher of this run can have sent, so a stray message
/// on our topics cannot make the bitmaps grow without bound.
pub trait SeqLimits {
    /// Publisher ids are `0..publishers()`.
    fn publishers(&self) -> u32;
    /// Sequence numbers that publisher has issued so far are `0..issued(publisher)`. Only
    /// consulted when a bitmap has to grow, so it may be an atomic shared with the publisher.
    fn issued(&self, publisher: u32) -> u64;
}

/// Fixed bounds for a subscriber whose publishers run in another process.
#[derive(Debug, Clone, Copy)]
pub struct FixedLimits {
    pub publishers: u32,
    pub max_seq: u64,
}

impl SeqLimits for FixedLimits {
    fn publishers(&self) -> u32 {
        self.publishers
    }

    fn issued(&self, _publisher: u32) -> u64 {
        self.max_seq
    }
}

/// The sequence numbers one subscriber received from one publisher.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    highest: Option<u32>,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl SeqSet {
    pub fn contains(&self, seq: u32) -> bool {
        let (word, mask) = position(seq);
        self.bits.get(word).is_some_and(|bits| bits & mask != 0)
    }

    /// Sequence numbers below the highest one received that never arrived: the loss as a
    /// subscriber alone can see it, without the publisher's count of what it sent.
    pub fn gaps(&self) -> u64 {
        self.highest
            .map_or(0, |highest| u64::from(highest) + 1 - self.unique)
    }

    fn record(&mut self, seq: u32, limit: impl FnOnce() -> u64) -> Seen {
        let (word, mask) = position(seq);
        if word >= self.bits.len() {
            let limit = limit();
            if u64::from(seq) >= limit {
                return Seen::Foreign;
            }
            // The bitmap never covers a sequence number not yet issued, so every one it
            // accepts was checked against the limit; `Vec` amortises the growth.
            let issued_words = limit.div_ceil(64).min(usize::MAX as u64) as usize;
            let len = (word + 1).max(self.bits.len() * 2).min(issued_words);
            self.bits.resize(len, 0);
        }
        let Some(bits) = self.bits.get_mut(word) else {
            return Seen::Foreign;
        };
        if *bits & mask != 0 {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        *bits |= mask;
        self.unique += 1;
        match self.highest {
            Some(highest) if seq < highest => {
                self.reordered += 1;
                Seen::Reordered
            }
            _ => {
                self.highest = Some(seq);
                Seen::InOrder
            }
        }
    }
}

fn position(seq: u32) -> (usize, u64) {
    ((seq / 64) as usize, 1u64 << (seq % 64))
}

/// Everything one subscriber received, by publisher.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    publishers: Vec<SeqSet>,
    pub foreign: u64,
}

impl SeqTracker {
    pub fn record(&mut self, header: &Header, limits: &impl SeqLimits) -> Seen {
        if header.publisher >= limits.publishers() {
            self.foreign += 1;
            return Seen::Foreign;
        }
        let index = header.publisher as usize;
        if index >= self.publishers.len() {
            self.publishers.resize_with(index + 1, SeqSet::default);
        }
        let Some(set) = self.publishers.get_mut(index) else {
            self.foreign += 1;
            return Seen::Foreign;
        };
        let seen = set.record(header.seq, || limits.issued(header.publisher));
        if seen == Seen::Foreign {
            self.foreign += 1;
        }
        seen
    }

    /// What was received from `publisher`; empty if nothing was.
    pub fn publisher(&self, publisher: u32) -> Option<&SeqSet> {
        self.publishers.get(publisher as usize)
    }

    pub fn publishers(&self) -> impl Iterator<Item = (u32, &SeqSet)> {
        self.publishers
            .iter()
            .enumerate()
            .map(|(id, set)| (id as u32, set))
    }

    pub fn unique(&self) -> u64 {
        self.publishers.iter().map(|set| set.unique).sum()
    }

    pub fn duplicates(&self) -> u64 {
        self.publishers.iter().map(|set| set.duplicates).sum()
    }

    pub fn reordered(&self) -> u64 {
        self.publishers.iter().map(|set| set.reordered).sum()
    }

    pub fn gaps(&self) -> u64 {
        self.publishers.iter().map(SeqSet::gaps).sum()
    }
}

/// How many distinct sequence numbers of `publisher` the members received between them.
pub fn union_unique<'a>(members: impl IntoIterator<Item = &'a SeqTracker>, publisher: u32) -> u64 {
    let mut union: Vec<u64> = Vec::new();
    for member in members {
        let Some(set) = member.publisher(publisher) else {
            continue;
        };
        if union.len() < set.bits.len() {
            union.resize(set.bits.len(), 0);
        }
        for (acc, bits) in union.iter_mut().zip(&set.bits) {
            *acc |= bits;
        }
    }
    union.iter().map(|bits| u64::from(bits.count_ones())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(publisher: u32, seq: u32) -> Header {
        Header {
            publisher,
            seq,
            sent_ns: 0,
        }
    }

    const LIMITS: FixedLimits = FixedLimits {
        publishers: 2,
        max_seq: 1_000,
    };

    #[test]
    fn classifies_in_order_reordered_duplicate_and_foreign() {
        let mut tracker = SeqTracker::default();
        let cases = [
            ((0, 0), Seen::InOrder),
            ((0, 1), Seen::InOrder),
            ((0, 3), Seen::InOrder),
            ((0, 2), Seen::Reordered),
            ((0, 2), Seen::Duplicate),
            ((0, 3), Seen::Duplicate),
            ((1, 500), Seen::InOrder),
            ((2, 0), Seen::Foreign),
            ((1, 1_000), Seen::Foreign),
        ];
        for ((publisher, seq), expected) in cases {
            assert_eq!(
                tracker.record(&header(publisher, seq), &LIMITS),
                expected,
                "publisher {publisher} seq {seq}"
            );
        }
        assert_eq!(tracker.unique(), 5);
        assert_eq!(tracker.duplicates(), 2);
        assert_eq!(tracker.reordered(), 1);
        assert_eq!(tracker.foreign, 2);
        // Publisher 1 sent 0..=500 as far as this subscriber can tell and it got one.
        assert_eq!(tracker.gaps(), 500);
    }

    #[test]
    fn a_group_union_counts_each_message_once() {
        let mut a = SeqTracker::default();
        let mut b = SeqTracker::default();
        for seq in 0..100 {
            let member = if seq % 2 == 0 { &mut a } else { &mut b };
            member.record(&header(0, seq), &LIMITS);
        }
        // Delivered to both members: one duplicate for the group.
        b.record(&header(0, 10), &LIMITS);
        assert_eq!(union_unique([&a, &b], 0), 100);
        assert_eq!(a.unique() + b.unique() - union_unique([&a, &b], 0), 1);
        assert_eq!(union_unique([&a, &b], 1), 0);
    }
}
