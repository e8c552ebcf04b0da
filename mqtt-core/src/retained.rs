//! Retained messages, one per topic, found by subscription filters.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use crate::message::Message;
use crate::trie::TopicTrie;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    Stored,
    Cleared,
    /// The store holds its maximum count and the topic is new, or the message would
    /// take the store past its byte bound.
    Full,
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    messages: TopicTrie<Arc<Message>>,
    /// 0 = unlimited.
    max_messages: usize,
    /// Topic and payload bytes of every message held.
    bytes: usize,
    /// 0 = unlimited.
    max_bytes: usize,
}

fn size(message: &Message) -> usize {
    message.topic.len() + message.payload.len()
}

impl RetainedStore {
    pub fn new(max_messages: usize, max_bytes: usize) -> RetainedStore {
        RetainedStore {
            messages: TopicTrie::new(),
            max_messages,
            bytes: 0,
            max_bytes,
        }
    }

    /// Topic and payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Stores `message` for its topic; an empty payload clears the topic [MQTT-3.3.1-10].
    pub fn set(&mut self, message: Arc<Message>) -> RetainOutcome {
        if message.payload.is_empty() {
            self.forget(&message.topic);
            return RetainOutcome::Cleared;
        }
        let count_full = self.max_messages > 0 && self.messages.len() >= self.max_messages;
        let (bytes, max_bytes) = (self.bytes, self.max_bytes);
        let topic = message.topic.clone();
        let added = size(&message);
        let (outcome, removed) = self.messages.update(&topic, |slot| {
            let held = slot.as_deref().map_or(0, size);
            if slot.is_none() && count_full {
                return (RetainOutcome::Full, 0);
            }
            if max_bytes > 0 && bytes - held + added > max_bytes {
                // Refused, and the topic's older message goes too: kept, it would stand for
                // a topic whose last retained message is another one.
                return (RetainOutcome::Full, slot.take().map_or(0, |old| size(&old)));
            }
            *slot = Some(message);
            (RetainOutcome::Stored, held)
        });
        self.bytes -= removed;
        if outcome == RetainOutcome::Stored {
            self.bytes += added;
        }
        outcome
    }

    fn forget(&mut self, topic: &str) {
        if let Some(old) = self.messages.remove(topic) {
            self.bytes -= size(&old);
        }
    }

    /// Live retained messages whose topic matches `filter`.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let mut found = Vec::new();
        self.messages.for_each_matched_by(filter, |message| {
            if !message.is_expired(now) {
                found.push(message.clone());
            }
        });
        found
    }

    /// Drops expired messages; returns their topics.
    pub fn purge_expired(&mut self, now: Instant) -> Vec<ByteString> {
        let mut expired = Vec::new();
        self.messages.for_each_matched_by("#", |message| {
            if message.is_expired(now) {
                expired.push(message.topic.clone());
            }
        });
        // `#` skips `$` topics by rule; those are the broker's own and never carry an expiry.
        for topic in &expired {
            self.forget(topic);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use bytes::Bytes;

    fn message(topic: &'static str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            ByteString::from_static(topic),
            Bytes::from_static(payload),
            QoS::AtMostOnce,
            true,
            Instant::now(),
        ))
    }

    #[test]
    fn the_byte_bound_refuses_what_would_pass_it_and_counts_what_is_freed() {
        let mut store = RetainedStore::new(0, 20);
        assert_eq!(store.set(message("a", b"123456789")), RetainOutcome::Stored);
        assert_eq!(store.set(message("b", b"123456789")), RetainOutcome::Stored);
        assert_eq!(store.bytes(), 20);
        assert_eq!(store.set(message("c", b"1")), RetainOutcome::Full);
        // Same size for a known topic: replaced.
        assert_eq!(store.set(message("a", b"abcdefghi")), RetainOutcome::Stored);
        assert_eq!(store.bytes(), 20);
        // Larger: refused, and the stale one is gone with it.
        assert_eq!(store.set(message("b", b"1234567890")), RetainOutcome::Full);
        assert_eq!(store.bytes(), 10);
        assert!(store.matching("b", Instant::now()).is_empty());
        assert_eq!(store.set(message("a", b"")), RetainOutcome::Cleared);
        assert_eq!(store.bytes(), 0);
        assert_eq!(store.set(message("c", b"1")), RetainOutcome::Stored);
    }
}
