//! One interface over the three client families, for tests that run the same
//! scenario with each of them (a publisher of one family, a subscriber of another).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::mosquitto::{mosquitto_pub, MosquittoSub};
use crate::script::{Lib, ScriptClient};
use crate::{unique_client_id, Broker, Msg, Version};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// mosquitto_pub / mosquitto_sub
    Mosquitto,
    Paho,
    MqttJs,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Mosquitto, Family::Paho, Family::MqttJs];

    fn lib(self) -> Option<Lib> {
        match self {
            Family::Mosquitto => None,
            Family::Paho => Some(Lib::Paho),
            Family::MqttJs => Some(Lib::MqttJs),
        }
    }
}

/// A subscriber of any family.
pub enum Subscriber {
    /// mosquitto_sub applies one QoS to all its filters, so there is one process per
    /// distinct QoS.
    Mosquitto(Vec<MosquittoSub>),
    Script(ScriptClient),
}

impl Subscriber {
    /// Subscribes to each (filter, QoS) and returns once every SUBACK arrived, with
    /// the granted QoS in the same order.
    pub fn start(
        family: Family,
        version: Version,
        broker: &Broker,
        subs: &[(&str, u8)],
    ) -> (Subscriber, Vec<u8>) {
        match family.lib() {
            None => {
                // One mosquitto_sub per distinct QoS, holding all filters of that QoS, so
                // messages on filters of the same QoS keep their relative order.
                let mut qos_levels: Vec<u8> = subs.iter().map(|(_, q)| *q).collect();
                qos_levels.sort_unstable();
                qos_levels.dedup();
                let mut procs = Vec::new();
                let mut granted = vec![255u8; subs.len()];
                for qos in qos_levels {
                    let indexes: Vec<usize> =
                        (0..subs.len()).filter(|i| subs[*i].1 == qos).collect();
                    let filters: Vec<&str> = indexes.iter().map(|i| subs[*i].0).collect();
                    let proc = MosquittoSub::start(broker, version, &filters, qos, &[]);
                    for (k, i) in indexes.iter().enumerate() {
                        granted[*i] = proc.granted.get(k).copied().unwrap_or(255);
                    }
                    procs.push(proc);
                }
                (Subscriber::Mosquitto(procs), granted)
            }
            Some(lib) => {
                let mut client =
                    ScriptClient::connected(lib, version, broker, &unique_client_id("sub"));
                let list: Vec<_> = subs
                    .iter()
                    .map(|(f, q)| json!({ "filter": f, "qos": q }))
                    .collect();
                let granted = client.subscribe_with(json!(list), json!({}));
                (Subscriber::Script(client), granted)
            }
        }
    }

    /// Publishes a barrier message to `barrier_topic` (which this subscriber must have
    /// subscribed to) and returns every message received before it. The broker sends
    /// one session's messages in order, so once the barrier is in, anything the broker
    /// was going to send before it (retained messages, queued ones) is in too.
    /// The barrier is published at QoS 2; subscribe to it at QoS 2 when QoS 2
    /// messages may precede it (clients hand those over only on PUBREL, so a barrier
    /// of a lower QoS could overtake them).
    pub fn until_barrier(&mut self, broker: &Broker, barrier_topic: &str) -> Vec<Msg> {
        crate::collect_until_barrier(broker, barrier_topic, |timeout| self.recv(timeout))
    }

    /// The next message (from whichever process has one), or None after `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Option<Msg> {
        match self {
            Subscriber::Script(client) => client.try_recv(timeout),
            Subscriber::Mosquitto(procs) => {
                let deadline = Instant::now() + timeout;
                loop {
                    for p in procs.iter_mut() {
                        if let Some(msg) = p.try_recv(Duration::from_millis(5)) {
                            return Some(msg);
                        }
                    }
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
            }
        }
    }

    pub fn recv(&mut self, timeout: Duration) -> Msg {
        match self.try_recv(timeout) {
            Some(msg) => msg,
            None => panic!("subscriber: no message within {timeout:?}"),
        }
    }
}

/// A publisher of any family.
pub enum Publisher<'a> {
    /// One mosquitto_pub run per message.
    Mosquitto {
        broker: &'a Broker,
        version: Version,
    },
    Script(ScriptClient),
}

impl<'a> Publisher<'a> {
    pub fn start(family: Family, version: Version, broker: &'a Broker) -> Publisher<'a> {
        match family.lib() {
            None => Publisher::Mosquitto { broker, version },
            Some(lib) => Publisher::Script(ScriptClient::connected(
                lib,
                version,
                broker,
                &unique_client_id("pub"),
            )),
        }
    }

    /// Publishes and returns once the broker acknowledged it (written, for QoS 0).
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        match self {
            Publisher::Mosquitto { broker, version } => {
                mosquitto_pub(broker, *version, topic, payload, qos, retain, &[])
            }
            Publisher::Script(client) => client.publish(topic, payload, qos, retain),
        }
    }
}
