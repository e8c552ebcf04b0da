//! The router: which sessions a published message goes to.
//!
//! The subscription index sits behind a read-write lock that publishing only ever reads;
//! shared-subscription choice uses atomics so it needs no write lock either.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use gateway_config::SharedSubscriptionStrategy;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::codec::{QoS, SubscriptionOptions};
use crate::message::{Delivery, Message, SessionId};
use crate::session::SessionCell;
use crate::trie::TopicTrie;

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<SessionCell>,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<Subscriber>,
    next: AtomicUsize,
    /// The member chosen by the sticky strategy, 0 when none is chosen yet.
    sticky: AtomicU64,
}

#[derive(Debug, Default)]
struct FilterEntry {
    plain: Vec<Subscriber>,
    shared: HashMap<String, SharedGroup>,
}

impl FilterEntry {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }
}

/// One session's share of a routed message.
#[derive(Debug, Clone)]
pub struct Target {
    pub session: Arc<SessionCell>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SmallVec<[u32; 1]>,
    /// Copies for shared subscriptions are never merged with a session's other copies.
    pub shared: bool,
}

impl Target {
    /// `message` as this target's session gets it, with the session to offer it to.
    pub fn into_delivery(self, message: Arc<Message>) -> (Arc<SessionCell>, Delivery) {
        let delivery = Delivery {
            message,
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            store_seq: None,
        };
        (self.session, delivery)
    }
}

pub type Targets = SmallVec<[Target; 4]>;

#[derive(Debug)]
pub struct Router {
    index: RwLock<TopicTrie<FilterEntry>>,
    strategy: SharedSubscriptionStrategy,
    subscriptions: AtomicUsize,
    /// The last messages routed that carry an arrival stamp, sharded by publisher so
    /// publishers on different threads rarely meet on one lock.
    recent: [Mutex<Recent>; RECENT_SHARDS],
}

/// Shards of `Router::recent`.
const RECENT_SHARDS: usize = 8;
/// What each shard keeps: enough for the moments between a SUBSCRIBE's arrival and its
/// turn, when messages routed meanwhile would be missed; bounded in bytes too, since
/// what it keeps stays alive.
const RECENT_MESSAGES: usize = 64;
const RECENT_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct Recent {
    /// Each with its weight, kept so that letting the oldest go reads nothing of it: by
    /// then it is long out of the cache.
    messages: VecDeque<(Arc<Message>, usize)>,
    bytes: usize,
}

impl Recent {
    fn record(&mut self, message: &Arc<Message>) {
        let weight = message.weight();
        if weight > RECENT_BYTES {
            return;
        }
        while self.messages.len() >= RECENT_MESSAGES || self.bytes + weight > RECENT_BYTES {
            match self.messages.pop_front() {
                Some((_, oldest_weight)) => self.bytes -= oldest_weight,
                None => break,
            }
        }
        self.bytes += weight;
        self.messages.push_back((message.clone(), weight));
    }
}

impl Router {
    pub fn new(strategy: SharedSubscriptionStrategy) -> Router {
        Router {
            index: RwLock::new(TopicTrie::new()),
            strategy,
            subscriptions: AtomicUsize::new(0),
            recent: Default::default(),
        }
    }

    /// Number of subscriptions, shared members included.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Adds or replaces a subscription; returns whether it already existed, and what the
    /// subscriber missed: messages routed before this call that arrived after the
    /// SUBSCRIBE did (`arrival`, see `crate::arrival`), which it must be given now. A shared
    /// subscription misses nothing (another member may have had the message), nor does a
    /// session that another of its subscriptions gave the message already.
    pub fn subscribe(
        &self,
        filter: &str,
        group: Option<&str>,
        subscriber: Subscriber,
        arrival: u64,
    ) -> (bool, Vec<(Arc<Message>, Target)>) {
        let mut index = self.index.write();
        let entry = index.get_or_insert_with(filter, FilterEntry::default);
        let members = match group {
            None => &mut entry.plain,
            Some(group) => &mut entry.shared.entry(group.to_owned()).or_default().members,
        };
        let existed = match members
            .iter_mut()
            .find(|member| member.session.id == subscriber.session.id)
        {
            Some(existing) => {
                *existing = subscriber.clone();
                true
            }
            None => {
                members.push(subscriber.clone());
                self.subscriptions.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        if group.is_some() || arrival == 0 {
            return (existed, Vec::new());
        }
        // Every routing before this write lock was taken has been recorded, and every one
        // after it sees the subscription: what is recorded now is exactly what it missed.
        let mut missed = Vec::new();
        for shard in &self.recent {
            for (message, _) in &shard.lock().messages {
                if message.arrival <= arrival
                    || !crate::topic::matches(filter, &message.topic)
                    || (subscriber.options.no_local
                        && message.publisher == Some(subscriber.session.id))
                {
                    continue;
                }
                let mut subscribed = 0;
                index.for_each_match(&message.topic, |entry| {
                    subscribed += entry
                        .plain
                        .iter()
                        .filter(|member| member.session.id == subscriber.session.id)
                        .count();
                });
                if subscribed == 1 {
                    missed.push((message.clone(), target_for(&subscriber, message, false)));
                }
            }
        }
        missed.sort_by_key(|(message, _)| message.arrival);
        (existed, missed)
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str, group: Option<&str>, session: SessionId) -> bool {
        let mut index = self.index.write();
        let removed = index.update(filter, |slot| {
            let Some(entry) = slot.as_mut() else {
                return false;
            };
            let removed = match group {
                None => remove_member(&mut entry.plain, session),
                Some(group) => match entry.shared.get_mut(group) {
                    Some(shared) => {
                        let removed = remove_member(&mut shared.members, session);
                        if shared.members.is_empty() {
                            entry.shared.remove(group);
                        }
                        removed
                    }
                    None => false,
                },
            };
            if entry.is_empty() {
                *slot = None;
            }
            removed
        });
        if removed {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// The sessions `message` goes to: one target per session for its ordinary
    /// subscriptions (highest QoS, every identifier), plus one per shared group.
    pub fn route(&self, message: &Arc<Message>) -> Targets {
        let mut targets = Targets::new();
        let mut filters_matched = 0usize;
        {
            let index = self.index.read();
            if message.arrival != 0 {
                // Under the read lock, so that a subscription (under the write lock) sees
                // every message routed before it here, and no message routed after it.
                let shard = message
                    .publisher
                    .map_or(0, |id| id as usize % RECENT_SHARDS);
                if let Some(recent) = self.recent.get(shard) {
                    recent.lock().record(message);
                }
            }
            index.for_each_match(&message.topic, |entry| {
                filters_matched += 1;
                for subscriber in &entry.plain {
                    if subscriber.options.no_local
                        && message.publisher == Some(subscriber.session.id)
                    {
                        continue;
                    }
                    targets.push(target_for(subscriber, message, false));
                }
                for group in entry.shared.values() {
                    if let Some(subscriber) = self.pick(group, message) {
                        targets.push(target_for(subscriber, message, true));
                    }
                }
            });
        }
        if filters_matched > 1 {
            merge_overlapping(&mut targets);
        }
        targets
    }

    /// Another member of share `group` on `filter` for a message that member `from` took
    /// and will not acknowledge: the next in the group's rotation other than `from`, a
    /// connected one when there is one. None when `from` is alone in the group. The
    /// configured strategy is not asked: a hash or sticky choice could name `from` again.
    pub fn pick_other(
        &self,
        filter: &str,
        group: &str,
        from: SessionId,
        message: &Message,
    ) -> Option<Target> {
        let index = self.index.read();
        let shared = index.get(filter)?.shared.get(group)?;
        let others: SmallVec<[&Subscriber; 8]> = shared
            .members
            .iter()
            .filter(|member| member.session.id != from)
            .collect();
        let count = others.len();
        if count == 0 {
            return None;
        }
        let start = shared.next.fetch_add(1, Ordering::Relaxed) % count;
        let chosen = (0..count)
            .filter_map(|offset| others.get((start + offset) % count))
            .find(|member| member.session.is_connected())
            .or_else(|| others.get(start))?;
        Some(target_for(chosen, message, true))
    }

    fn pick<'a>(&self, group: &'a SharedGroup, message: &Message) -> Option<&'a Subscriber> {
        let members = &group.members;
        let count = members.len();
        if count == 0 {
            return None;
        }
        let start = match self.strategy {
            SharedSubscriptionStrategy::Random => rand::random_range(0..count),
            SharedSubscriptionStrategy::RoundRobin => {
                group.next.fetch_add(1, Ordering::Relaxed) % count
            }
            SharedSubscriptionStrategy::Sticky => {
                let chosen = group.sticky.load(Ordering::Relaxed);
                match members
                    .iter()
                    .position(|m| m.session.id == chosen && m.session.is_connected())
                {
                    Some(index) => index,
                    None => {
                        let index = first_connected(members, rand::random_range(0..count));
                        if let Some(member) = members.get(index) {
                            group.sticky.store(member.session.id, Ordering::Relaxed);
                        }
                        return members.get(index);
                    }
                }
            }
            SharedSubscriptionStrategy::HashClientid => {
                hash_of(message.publisher_client_id.as_deref().unwrap_or("")) % count
            }
            SharedSubscriptionStrategy::HashTopic => hash_of(&message.topic) % count,
        };
        // Hash strategies promise a stable member, so they do not skip offline ones.
        let index = match self.strategy {
            SharedSubscriptionStrategy::HashClientid | SharedSubscriptionStrategy::HashTopic => {
                start
            }
            _ => first_connected(members, start),
        };
        members.get(index)
    }
}

fn remove_member(members: &mut Vec<Subscriber>, session: SessionId) -> bool {
    match members
        .iter()
        .position(|member| member.session.id == session)
    {
        Some(index) => {
            members.swap_remove(index);
            true
        }
        None => false,
    }
}

/// The first connected member at or after `start`, wrapping; `start` itself if none is.
fn first_connected(members: &[Subscriber], start: usize) -> usize {
    let count = members.len();
    (0..count)
        .map(|offset| (start + offset) % count)
        .find(|&index| members.get(index).is_some_and(|m| m.session.is_connected()))
        .unwrap_or(start)
}

fn hash_of(value: &str) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish() as usize
}

fn target_for(subscriber: &Subscriber, message: &Message, shared: bool) -> Target {
    Target {
        session: subscriber.session.clone(),
        qos: message.qos.min(subscriber.options.qos),
        retain: message.retain && subscriber.options.retain_as_published,
        subscription_ids: subscriber.identifier.into_iter().collect(),
        shared,
    }
}

/// Overlapping subscriptions of one session give one copy at the highest QoS carrying
/// every matching subscription identifier [MQTT-3.3.4-2], [MQTT-3.3.4-3].
fn merge_overlapping(targets: &mut Targets) {
    targets.sort_by_key(|target| (target.shared, target.session.id));
    let mut merged = Targets::with_capacity(targets.len());
    for target in targets.drain(..) {
        match merged.last_mut() {
            Some(last)
                if !target.shared && !last.shared && last.session.id == target.session.id =>
            {
                last.qos = last.qos.max(target.qos);
                last.retain |= target.retain;
                last.subscription_ids.extend(target.subscription_ids);
            }
            _ => merged.push(target),
        }
    }
    *targets = merged;
}
