//! Messages as the router sees them: one shared allocation per publish, however many
//! sessions it reaches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;

use crate::codec::{PublishProperties, QoS, SparseProperties};

/// Identifies one incarnation of a session; a clean start makes a new one.
pub type SessionId = u64;

/// An application message accepted by the broker.
///
/// `properties` never carries a topic alias or subscription identifiers: those belong to one
/// connection and are filled in per delivery.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: SparseProperties,
    /// The publishing session, for the No Local option.
    pub publisher: Option<SessionId>,
    /// The publishing client's id, for the `hash_clientid` shared-subscription strategy.
    pub publisher_client_id: Option<Arc<str>>,
    pub expires_at: Option<Instant>,
    /// When the publish reached us, as an arrival stamp (`crate::arrival`); 0 = unknown.
    pub arrival: u64,
}

impl Message {
    pub fn new(topic: ByteString, payload: Bytes, qos: QoS, retain: bool, now: Instant) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: SparseProperties::default(),
            publisher: None,
            publisher_client_id: None,
            expires_at: None,
            arrival: 0,
        }
        .with_expiry_from_properties(now)
    }

    /// Sets `expires_at` from the Message Expiry Interval property.
    pub fn with_expiry_from_properties(mut self, now: Instant) -> Message {
        self.expires_at = Message::expiry_from(&self.properties, now);
        self
    }

    /// When a message with `properties` received `now` expires.
    pub fn expiry_from(properties: &PublishProperties, now: Instant) -> Option<Instant> {
        properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)))
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval to forward: the time left, rounded up so a message still
    /// alive is never sent with 0 [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// A copy that owns its bytes. Decoded topics and payloads share the read buffer they
    /// arrived in, which a message kept for long (a retained one) would keep alive whole.
    pub fn detached(&self) -> Message {
        let mut copy = self.clone();
        copy.topic = ByteString::from(&*self.topic);
        copy.payload = Bytes::copy_from_slice(&self.payload);
        if let Some(data) = self.properties.correlation_data.as_deref() {
            copy.properties.correlation_data = Some(Bytes::copy_from_slice(data));
        }
        copy
    }

    /// Bytes a queued copy is charged against a session's byte limit: what the message
    /// holds in memory, not its size on the wire. A user property costs two strings of its
    /// own, several times its few wire bytes, so a packet full of small ones would
    /// otherwise fill memory far beyond the limit.
    pub fn weight(&self) -> usize {
        let properties = &self.properties;
        let user_properties: usize = properties
            .user_properties
            .iter()
            .map(|(name, value)| USER_PROPERTY_OVERHEAD + name.len() + value.len())
            .sum();
        self.payload.len()
            + self.topic.len()
            + user_properties
            + properties.response_topic.as_ref().map_or(0, String::len)
            + properties.correlation_data.as_ref().map_or(0, Bytes::len)
            + properties.content_type.as_ref().map_or(0, String::len)
    }
}

/// What one user property costs beyond its text: the pair's two `String`s and an
/// allocator's bookkeeping for each of their buffers.
const USER_PROPERTY_OVERHEAD: usize = 2 * std::mem::size_of::<String>() + 2 * 16;

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SmallVec<[u32; 1]>,
    /// Its number in the session's stored queue, when a persistent session holds it.
    pub store_seq: Option<u64>,
}
