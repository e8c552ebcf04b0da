//! Presence events: a client of any protocol coming and going, published as EMQX publishes
//! them (`sys_topics.sys_event_messages`), QoS 0, not retained, through the broker's own
//! dispatch, once per connection and never per message:
//!
//! - MQTT clients: `$SYS/brokers/{node}/clients/{clientid}/{event}`;
//! - the others: `$SYS/brokers/{node}/gateway/{gateway}/clients/{clientid}/{event}`, the
//!   gateway being EMQX's name for it (`mqttsn`, `coap`, `lwm2m`, `stomp`), so a device's
//!   id, which lives in its protocol's namespace, never names an MQTT client's topic.
//!
//! Events: `connected`, `disconnected` (with EMQX's reason words), and for MQTT-SN clients
//! `asleep` and `awake`. The payload is a JSON object with EMQX's field names.
//!
//! A client id is written into its topic level with `%`, `/`, `+`, `#` and NUL
//! percent-encoded ([`topic_level`]): a client cannot make its events land one level up or
//! down (`a/b` would otherwise pass for client `a`'s event `b/...`), nor publish a topic
//! with a wildcard, and since `%` itself is encoded, no two client ids share a level.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use gateway_config::SysEventMessages;
use serde_json::{json, Value};

use crate::broker::Broker;
use crate::clients::{Attachment, DisconnectReason, ProtoVer};
use crate::codec::QoS;
use crate::message::Message;
use crate::session::SessionKey;

/// The longest topic an MQTT packet can carry; an event whose topic would be longer (a
/// client id near the length limit, its bytes encoded) is not published.
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Where and which presence events are published.
#[derive(Debug, Clone)]
pub struct Presence {
    /// `$SYS/brokers/{node}/`.
    prefix: String,
    events: SysEventMessages,
}

impl Presence {
    /// Events of `events` under node `node` (written as one topic level, as a client id).
    pub fn new(node: &str, events: SysEventMessages) -> Presence {
        Presence {
            prefix: format!("$SYS/brokers/{}/", topic_level(node)),
            events,
        }
    }

    /// The topic of `event` for the client of session `key`, or `None` when it would be
    /// too long to publish.
    pub fn topic(&self, key: &SessionKey, event: &str) -> Option<String> {
        let mut topic = self.prefix.clone();
        if let Some(gateway) = gateway_name(key.namespace) {
            let _ = write!(topic, "gateway/{}/", topic_level(gateway));
        }
        let _ = write!(topic, "clients/{}/{event}", topic_level(&key.client_id));
        (topic.len() <= MAX_TOPIC_LEN).then_some(topic)
    }
}

/// What happened to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Connected {
        expiry_interval: u32,
    },
    Disconnected {
        reason: DisconnectReason,
        at_ms: u64,
    },
    /// Asleep for this many seconds (MQTT-SN DISCONNECT with a duration).
    Asleep {
        duration: u32,
    },
    Awake,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Connected { .. } => "connected",
            Event::Disconnected { .. } => "disconnected",
            Event::Asleep { .. } => "asleep",
            Event::Awake => "awake",
        }
    }

    fn enabled(self, events: &SysEventMessages) -> bool {
        match self {
            Event::Connected { .. } => events.client_connected,
            Event::Disconnected { .. } => events.client_disconnected,
            Event::Asleep { .. } => events.client_asleep,
            Event::Awake => events.client_awake,
        }
    }
}

/// EMQX's name of the gateway serving a session namespace; `None` for native MQTT clients.
pub fn gateway_name(namespace: &str) -> Option<&str> {
    match namespace {
        "mqtt" => None,
        "mqtt-sn" => Some("mqttsn"),
        other => Some(other),
    }
}

/// `text` as one topic level: `%`, `/`, `+`, `#` and NUL percent-encoded (`%25`, `%2F`,
/// `%2B`, `%23`, `%00`), everything else as it is. Different texts give different levels.
pub fn topic_level(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '/', '+', '#', '\0']) {
        return Cow::Borrowed(text);
    }
    let mut level = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '%' | '/' | '+' | '#' | '\0' => {
                let _ = write!(level, "%{:02X}", u32::from(c));
            }
            c => level.push(c),
        }
    }
    Cow::Owned(level)
}

impl Broker {
    /// Publishes presence events under node `node`, those `events` turns on. Without it
    /// (the default) there are none.
    pub fn with_presence(mut self, node: &str, events: SysEventMessages) -> Broker {
        self.presence = Some(Presence::new(node, events));
        self
    }

    pub(crate) fn announce_departure(
        &self,
        key: &SessionKey,
        attachment: &Attachment,
        reason: DisconnectReason,
        now: Instant,
    ) {
        let at_ms = self.clock.unix_ms(now);
        self.announce(key, attachment, Event::Disconnected { reason, at_ms }, now);
    }

    /// Publishes `event` for the client of session `key`, if that event is on and the
    /// session is one a client connected to (not a single message's).
    pub(crate) fn announce(
        &self,
        key: &SessionKey,
        attachment: &Attachment,
        event: Event,
        now: Instant,
    ) {
        let Some(presence) = &self.presence else {
            return;
        };
        if !attachment.announced || !event.enabled(&presence.events) {
            return;
        }
        let Some(topic) = presence.topic(key, event.name()) else {
            tracing::debug!(client_id = %key.client_id, "presence event not published: topic too long");
            return;
        };
        let payload = self.presence_payload(key, attachment, event, now);
        let message = Message::new(
            ByteString::from(topic),
            Bytes::from(payload.to_string()),
            QoS::AtMostOnce,
            false,
            now,
        );
        // The broker's own message: nobody acknowledges it or is held back by it.
        let _ = self.dispatch(Arc::new(message), None);
    }

    fn presence_payload(
        &self,
        key: &SessionKey,
        attachment: &Attachment,
        event: Event,
        now: Instant,
    ) -> Value {
        let client = &attachment.client;
        let proto_ver = match attachment.proto.version {
            ProtoVer::Level(level) => json!(level),
            ProtoVer::Text(text) => json!(text),
        };
        let mut payload = json!({
            "clientid": &*key.client_id,
            "username": client.username,
            "ipaddress": client.peer.map(|peer| peer.ip().to_canonical().to_string()),
            "protocol": gateway_name(key.namespace).unwrap_or("mqtt"),
            "proto_name": attachment.proto.name,
            "proto_ver": proto_ver,
            "connected_at": attachment.connected_at_ms,
            "ts": self.clock.unix_ms(now),
        });
        let Value::Object(fields) = &mut payload else {
            return payload;
        };
        match event {
            Event::Connected { expiry_interval } => {
                fields.insert("keepalive".into(), json!(attachment.keepalive));
                fields.insert("clean_start".into(), json!(attachment.clean_start));
                fields.insert("expiry_interval".into(), json!(expiry_interval));
            }
            Event::Disconnected { reason, at_ms } => {
                fields.insert("reason".into(), json!(reason.as_str()));
                fields.insert("disconnected_at".into(), json!(at_ms));
            }
            Event::Asleep { duration } => {
                fields.insert("duration".into(), json!(duration));
            }
            Event::Awake => {}
        }
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(namespace: &'static str, client_id: &str) -> SessionKey {
        SessionKey {
            namespace,
            client_id: Arc::from(client_id),
        }
    }

    fn all() -> SysEventMessages {
        SysEventMessages {
            client_connected: true,
            client_disconnected: true,
            client_asleep: true,
            client_awake: true,
        }
    }

    #[test]
    fn mqtt_clients_and_gateway_clients_have_emqx_topics() {
        let presence = Presence::new("gateway@127.0.0.1", all());
        assert_eq!(
            presence.topic(&key("mqtt", "dev1"), "connected").as_deref(),
            Some("$SYS/brokers/gateway@127.0.0.1/clients/dev1/connected")
        );
        assert_eq!(
            presence.topic(&key("mqtt-sn", "dev1"), "asleep").as_deref(),
            Some("$SYS/brokers/gateway@127.0.0.1/gateway/mqttsn/clients/dev1/asleep")
        );
        for gateway in ["coap", "lwm2m", "stomp"] {
            let namespace = crate::session::intern_namespace(gateway);
            assert_eq!(
                presence.topic(&key(namespace, "d"), "disconnected"),
                Some(format!(
                    "$SYS/brokers/gateway@127.0.0.1/gateway/{gateway}/clients/d/disconnected"
                ))
            );
        }
    }

    #[test]
    fn topic_breaking_characters_are_encoded_and_no_two_ids_share_a_level() {
        let cases = [
            ("a/b", "a%2Fb"),
            ("+", "%2B"),
            ("#", "%23"),
            ("a%2Fb", "a%252Fb"),
            ("nul\0x", "nul%00x"),
            ("$SYS", "$SYS"),
            ("ünï", "ünï"),
        ];
        for (id, level) in cases {
            assert_eq!(topic_level(id), level, "{id:?}");
        }
        // Injective: what an attacker may name itself never writes another id's level.
        let ids = [
            "a/b", "a%2Fb", "a%2fb", "a+b", "a%2Bb", "%", "%25", "/", "%2F",
        ];
        let levels: std::collections::HashSet<String> =
            ids.iter().map(|id| topic_level(id).into_owned()).collect();
        assert_eq!(levels.len(), ids.len());
        let presence = Presence::new("n", all());
        for id in ids {
            let topic = presence
                .topic(&key("mqtt", id), "connected")
                .unwrap_or_default();
            assert!(!topic.contains(['+', '#']), "{topic}");
            assert_eq!(topic.split('/').count(), 6, "{topic}");
        }
    }

    #[test]
    fn a_node_name_is_one_level_too() {
        let presence = Presence::new("a/+", all());
        assert_eq!(
            presence.topic(&key("mqtt", "c"), "connected").as_deref(),
            Some("$SYS/brokers/a%2F%2B/clients/c/connected")
        );
    }

    #[test]
    fn a_topic_too_long_for_mqtt_is_not_made() {
        let presence = Presence::new("n", all());
        let long = "/".repeat(30_000);
        assert_eq!(presence.topic(&key("mqtt", &long), "connected"), None);
        let fits = "a".repeat(60_000);
        assert!(presence.topic(&key("mqtt", &fits), "connected").is_some());
    }
}
