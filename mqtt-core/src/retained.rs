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
    /// The store holds its maximum count and the topic is new.
    Full,
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    messages: TopicTrie<Arc<Message>>,
    /// 0 = unlimited.
    max_messages: usize,
}

impl RetainedStore {
    pub fn new(max_messages: usize) -> RetainedStore {
        RetainedStore {
            messages: TopicTrie::new(),
            max_messages,
        }
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
            self.messages.remove(&message.topic);
            return RetainOutcome::Cleared;
        }
        let full = self.max_messages > 0 && self.messages.len() >= self.max_messages;
        let topic = message.topic.clone();
        self.messages.update(&topic, |slot| {
            if slot.is_none() && full {
                return RetainOutcome::Full;
            }
            *slot = Some(message);
            RetainOutcome::Stored
        })
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
            self.messages.remove(topic);
        }
        expired
    }
}
