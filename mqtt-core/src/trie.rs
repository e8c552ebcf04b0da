//! The subscription index: a trie keyed per topic level.
//!
//! Each node holds its literal children in a hash map and its `+` and `#` children beside
//! it, so matching a publication walks one path per wildcard branch instead of scanning
//! every filter, and a node with a hundred thousand device-id children is still one hash
//! lookup. The same structure, keyed by topic names instead, serves the retained store,
//! which asks the reverse question through [`TopicTrie::for_each_matched_by`].
//!
//! Keys are split on `/` and never normalised, so `a//b`, `/a` and `a/` are distinct keys
//! with empty levels. The trie does not validate keys; callers validate with
//! [`crate::topic`] first. Stored filters are expected to be valid: a `#` that is not the
//! last level is stored, but what lies under it is never matched.

use std::collections::HashMap;

/// Splits a key into levels without allocating. What `str::split('/')` does, by a byte
/// scan that suits short levels: every publish walks its topic through here.
#[derive(Clone)]
struct Levels<'k> {
    rest: Option<&'k str>,
}

impl<'k> Iterator for Levels<'k> {
    type Item = &'k str;

    fn next(&mut self) -> Option<&'k str> {
        let rest = self.rest?;
        match rest.bytes().position(|byte| byte == b'/') {
            Some(slash) => {
                // `/` is ASCII, so both sides of it are character boundaries.
                let (level, tail) = rest.split_at(slash);
                self.rest = Some(tail.get(1..).unwrap_or_default());
                Some(level)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

fn levels(key: &str) -> Levels<'_> {
    Levels { rest: Some(key) }
}

/// A map from topic filters (or topic names) to values, matched level by level.
#[derive(Debug, Clone)]
pub struct TopicTrie<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<V> {
    value: Option<V>,
    // The levels come from the network, so the hasher is seeded at random (a flooding
    // client must not be able to pick keys that collide), but it is foldhash rather than
    // SipHash: every publish hashes each of its levels here.
    children: HashMap<Box<str>, Node<V>, foldhash::fast::RandomState>,
    single: Option<Box<Node<V>>>,
    multi: Option<Box<Node<V>>>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            value: None,
            children: HashMap::default(),
            single: None,
            multi: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.value.is_none()
            && self.children.is_empty()
            && self.single.is_none()
            && self.multi.is_none()
    }

    fn child(&self, level: &str) -> Option<&Node<V>> {
        match level {
            "+" => self.single.as_deref(),
            "#" => self.multi.as_deref(),
            literal => self.children.get(literal),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<V>> {
        match level {
            "+" => self.single.as_deref_mut(),
            "#" => self.multi.as_deref_mut(),
            literal => self.children.get_mut(literal),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<V> {
        match level {
            "+" => self.single.get_or_insert_with(Box::default),
            "#" => self.multi.get_or_insert_with(Box::default),
            // std's entry API wants an owned key even when the child exists; subscribing is
            // rare next to matching, so that short-lived allocation is accepted here.
            literal => self.children.entry(Box::from(literal)).or_default(),
        }
    }

    fn descend(&self, key: &str) -> Option<&Node<V>> {
        levels(key).try_fold(self, |node, level| node.child(level))
    }

    fn descend_mut(&mut self, key: &str) -> Option<&mut Node<V>> {
        levels(key).try_fold(self, |node, level| node.child_mut(level))
    }

    fn count(&self) -> usize {
        1 + self.children.values().map(Node::count).sum::<usize>()
            + self.single.as_deref().map_or(0, Node::count)
            + self.multi.as_deref().map_or(0, Node::count)
    }

    /// Drops the empty nodes along the path `levels`, deepest first, and tells whether
    /// `self` is left empty for its parent to drop.
    fn prune(&mut self, mut levels: Levels<'_>) -> bool {
        if let Some(level) = levels.next() {
            match level {
                "+" => {
                    if self.single.as_deref_mut().is_some_and(|c| c.prune(levels)) {
                        self.single = None;
                    }
                }
                "#" => {
                    if self.multi.as_deref_mut().is_some_and(|c| c.prune(levels)) {
                        self.multi = None;
                    }
                }
                literal => {
                    if self
                        .children
                        .get_mut(literal)
                        .is_some_and(|c| c.prune(levels))
                    {
                        self.children.remove(literal);
                        // A map that once held every device of a fleet keeps its buckets
                        // after they unsubscribe; give the memory back once it is mostly
                        // unused, which stays amortised O(1) per removal.
                        if self.children.len() < self.children.capacity() / 4 {
                            self.children.shrink_to_fit();
                        }
                    }
                }
            }
        }
        self.is_empty()
    }
}

/// Stored keys are filters; walks every filter that matches the topic name `levels`.
fn visit_filters<'a, V, F: FnMut(&'a V)>(
    node: &'a Node<V>,
    mut levels: Levels<'_>,
    wildcards_allowed: bool,
    visit: &mut F,
) {
    let level = levels.next();
    // `#` matches this level and everything below, and its parent too, so it matches
    // whether or not the name has levels left.
    if wildcards_allowed {
        if let Some(value) = node.multi.as_deref().and_then(|m| m.value.as_ref()) {
            visit(value);
        }
    }
    let Some(level) = level else {
        if let Some(value) = &node.value {
            visit(value);
        }
        return;
    };
    if let Some(child) = node.children.get(level) {
        visit_filters(child, levels.clone(), true, visit);
    }
    if wildcards_allowed {
        if let Some(child) = node.single.as_deref() {
            visit_filters(child, levels, true, visit);
        }
    }
}

/// Stored keys are names; walks every name matched by the filter `levels`.
fn visit_names<'a, V, F: FnMut(&'a V)>(
    node: &'a Node<V>,
    mut levels: Levels<'_>,
    at_root: bool,
    visit: &mut F,
) {
    match levels.next() {
        None => {
            if let Some(value) = &node.value {
                visit(value);
            }
        }
        Some("#") => visit_subtree(node, at_root, visit),
        Some("+") => {
            for (level, child) in &node.children {
                if !(at_root && level.starts_with('$')) {
                    visit_names(child, levels.clone(), false, visit);
                }
            }
            // Names never contain wildcards, but if one was stored anyway `+` matches its
            // level like any other, as `topic::matches` would.
            for child in [node.single.as_deref(), node.multi.as_deref()]
                .into_iter()
                .flatten()
            {
                visit_names(child, levels.clone(), false, visit);
            }
        }
        Some(literal) => {
            if let Some(child) = node.children.get(literal) {
                visit_names(child, levels, false, visit);
            }
        }
    }
}

/// Visits `node` and everything under it; at the root, `$` names stay hidden from `#`.
fn visit_subtree<'a, V, F: FnMut(&'a V)>(node: &'a Node<V>, at_root: bool, visit: &mut F) {
    if let Some(value) = &node.value {
        visit(value);
    }
    for (level, child) in &node.children {
        if !(at_root && level.starts_with('$')) {
            visit_subtree(child, false, visit);
        }
    }
    for child in [node.single.as_deref(), node.multi.as_deref()]
        .into_iter()
        .flatten()
    {
        visit_subtree(child, false, visit);
    }
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> TopicTrie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of stored values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value stored under exactly `key` (wildcards in `key` are literal here).
    pub fn get(&self, key: &str) -> Option<&V> {
        self.root.descend(key)?.value.as_ref()
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.root.descend_mut(key)?.value.as_mut()
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let node = levels(key).fold(&mut self.root, |node, level| node.child_or_insert(level));
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(make)
    }

    /// Stores `value` under `key`, returning the value it replaces.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        self.update(key, |slot| slot.replace(value))
    }

    /// Runs `f` on the slot for `key` (None if absent); if the slot is None afterwards, the
    /// value is removed and empty nodes pruned.
    ///
    /// Made for subscriber sets: the closure adds or removes one subscriber and clears the
    /// slot when the set empties, so the entry and its path go with the last subscriber.
    pub fn update<R>(&mut self, key: &str, f: impl FnOnce(&mut Option<V>) -> R) -> R {
        let Some(node) = self.root.descend_mut(key) else {
            // Nodes are only created once `f` has produced a value, so a lookup that
            // leaves the slot empty costs no allocation and nothing to prune.
            let mut slot = None;
            let result = f(&mut slot);
            if let Some(value) = slot {
                self.get_or_insert_with(key, || value);
            }
            return result;
        };
        let had_value = node.value.is_some();
        let result = f(&mut node.value);
        match (had_value, node.value.is_some()) {
            (false, true) => self.len += 1,
            (true, false) => {
                self.len -= 1;
                self.root.prune(levels(key));
            }
            _ => {}
        }
        result
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.update(key, Option::take)
    }

    /// Stored keys are FILTERS; visits every value whose filter matches the topic NAME
    /// `topic`, each once.
    ///
    /// Allocation-free and recursive only to the depth of `topic`, which the caller bounds
    /// by validating names against the configured maximum level count.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a V)) {
        // [MQTT-4.7.2-1]: a filter starting with a wildcard never matches a `$` topic.
        let wildcards_allowed = !topic.starts_with('$');
        visit_filters(&self.root, levels(topic), wildcards_allowed, &mut visit);
    }

    /// Stored keys are topic NAMES; visits every value whose name is matched by the
    /// FILTER `filter` (used by the retained store), each once.
    ///
    /// Recursive to the depth of the deepest stored name under a `#`.
    pub fn for_each_matched_by<'a>(&'a self, filter: &str, mut visit: impl FnMut(&'a V)) {
        visit_names(&self.root, levels(filter), true, &mut visit);
    }

    /// Nodes in the trie, the root included: 1 when empty. Walks the whole trie, so it is
    /// for tests and occasional metrics, not for the publish path.
    pub fn node_count(&self) -> usize {
        self.root.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn trie_of(keys: &[&str]) -> TopicTrie<String> {
        let mut trie = TopicTrie::new();
        for key in keys {
            trie.insert(key, key.to_string());
        }
        trie
    }

    fn matching_filters<'a>(trie: &'a TopicTrie<String>, topic: &str) -> Vec<&'a str> {
        let mut found = Vec::new();
        trie.for_each_match(topic, |v| found.push(v.as_str()));
        found.sort_unstable();
        found
    }

    fn names_matched_by<'a>(trie: &'a TopicTrie<String>, filter: &str) -> Vec<&'a str> {
        let mut found = Vec::new();
        trie.for_each_matched_by(filter, |v| found.push(v.as_str()));
        found.sort_unstable();
        found
    }

    const FILTERS: &[&str] = &[
        "#",
        "+",
        "+/#",
        "+/+",
        "a",
        "a/#",
        "a/+",
        "a/b",
        "a/b/#",
        "a/+/c",
        "a//c",
        "/",
        "/#",
        "/+",
        "$SYS/#",
        "$SYS/+",
        "$SYS/broker/uptime",
        "设备/+/温度",
    ];

    #[test]
    fn filters_matching_a_name() {
        let trie = trie_of(FILTERS);
        let cases: &[(&str, &[&str])] = &[
            ("a", &["#", "+", "+/#", "a", "a/#"]),
            ("a/b", &["#", "+/#", "+/+", "a/#", "a/+", "a/b", "a/b/#"]),
            ("a/b/c", &["#", "+/#", "a/#", "a/+/c", "a/b/#"]),
            ("a//c", &["#", "+/#", "a/#", "a/+/c", "a//c"]),
            ("a/", &["#", "+/#", "+/+", "a/#", "a/+"]),
            ("b", &["#", "+", "+/#"]),
            ("b/c/d", &["#", "+/#"]),
            ("/", &["#", "+/#", "+/+", "/", "/#", "/+"]),
            ("/x", &["#", "+/#", "+/+", "/#", "/+"]),
            ("//", &["#", "+/#", "/#"]),
            ("$SYS", &["$SYS/#"]),
            ("$SYS/broker", &["$SYS/#", "$SYS/+"]),
            ("$SYS/broker/uptime", &["$SYS/#", "$SYS/broker/uptime"]),
            ("$other", &[]),
            ("设备/7/温度", &["#", "+/#", "设备/+/温度"]),
            ("x$", &["#", "+", "+/#"]),
        ];
        for (topic, want) in cases {
            assert_eq!(&matching_filters(&trie, topic), want, "topic {topic:?}");
            let naive: Vec<&str> = FILTERS
                .iter()
                .copied()
                .filter(|f| topic::matches(f, topic))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(&naive, want, "reference matcher disagrees on {topic:?}");
        }
    }

    const NAMES: &[&str] = &[
        "a",
        "a/b",
        "a/b/c",
        "a//c",
        "a/",
        "b",
        "/",
        "/x",
        "//",
        "$SYS",
        "$SYS/broker",
        "$SYS/broker/uptime",
        "设备/7/温度",
    ];

    #[test]
    fn names_matched_by_a_filter() {
        let trie = trie_of(NAMES);
        let cases: &[(&str, &[&str])] = &[
            ("a", &["a"]),
            ("a/b", &["a/b"]),
            ("c", &[]),
            (
                "#",
                &[
                    "/",
                    "//",
                    "/x",
                    "a",
                    "a/",
                    "a//c",
                    "a/b",
                    "a/b/c",
                    "b",
                    "设备/7/温度",
                ],
            ),
            ("+", &["a", "b"]),
            ("+/+", &["/", "/x", "a/", "a/b"]),
            (
                "+/#",
                &[
                    "/",
                    "//",
                    "/x",
                    "a",
                    "a/",
                    "a//c",
                    "a/b",
                    "a/b/c",
                    "b",
                    "设备/7/温度",
                ],
            ),
            ("a/#", &["a", "a/", "a//c", "a/b", "a/b/c"]),
            ("a/+", &["a/", "a/b"]),
            ("a/+/c", &["a//c", "a/b/c"]),
            ("/#", &["/", "//", "/x"]),
            ("/+", &["/", "/x"]),
            ("$SYS/#", &["$SYS", "$SYS/broker", "$SYS/broker/uptime"]),
            ("$SYS/+", &["$SYS/broker"]),
            ("$SYS", &["$SYS"]),
            ("设备/+/温度", &["设备/7/温度"]),
        ];
        for (filter, want) in cases {
            assert_eq!(&names_matched_by(&trie, filter), want, "filter {filter:?}");
            let naive: Vec<&str> = NAMES
                .iter()
                .copied()
                .filter(|n| topic::matches(filter, n))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(&naive, want, "reference matcher disagrees on {filter:?}");
        }
    }

    #[test]
    fn keys_are_exact() {
        let mut trie = trie_of(&["a/+", "a/#", "a/b", "a//b", "/a"]);
        assert_eq!(trie.len(), 5);
        assert_eq!(trie.get("a/+").map(String::as_str), Some("a/+"));
        assert_eq!(trie.get("a/#").map(String::as_str), Some("a/#"));
        assert_eq!(trie.get("a//b").map(String::as_str), Some("a//b"));
        assert_eq!(trie.get("a/c"), None);
        assert_eq!(trie.get("a"), None);
        assert_eq!(trie.get("a/b/c"), None);
        assert_eq!(trie.get("a/"), None);
        assert!(trie.contains_key("/a"));
        assert!(!trie.contains_key("a/"));
        if let Some(v) = trie.get_mut("a/b") {
            v.push('!');
        }
        assert_eq!(trie.get("a/b").map(String::as_str), Some("a/b!"));
        assert_eq!(trie.insert("a/b", "again".into()).as_deref(), Some("a/b!"));
        assert_eq!(trie.len(), 5);
    }

    #[test]
    fn subscriber_sets_through_update() {
        let mut trie: TopicTrie<BTreeSet<u32>> = TopicTrie::new();
        trie.get_or_insert_with("s/+/t", BTreeSet::new).insert(1);
        trie.get_or_insert_with("s/+/t", BTreeSet::new).insert(2);
        assert_eq!(trie.len(), 1);

        // Removing one subscriber keeps the entry.
        let removed = trie.update("s/+/t", |slot| {
            let set = slot.as_mut()?;
            let removed = set.remove(&1);
            if set.is_empty() {
                *slot = None;
            }
            Some(removed)
        });
        assert_eq!(removed, Some(true));
        assert_eq!(trie.len(), 1);

        // Removing the last one removes it and prunes the path.
        trie.update("s/+/t", |slot| {
            if let Some(set) = slot {
                set.remove(&2);
                if set.is_empty() {
                    *slot = None;
                }
            }
        });
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);

        // An update that finds nothing and adds nothing creates no nodes.
        let seen = trie.update("x/y/z", |slot| slot.is_some());
        assert!(!seen);
        assert_eq!(trie.node_count(), 1);

        // An update may create the entry.
        trie.update("x/y/z", |slot| *slot = Some(BTreeSet::from([9])));
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.node_count(), 4);
        assert_eq!(trie.get("x/y/z"), Some(&BTreeSet::from([9])));

        // A get_or_insert_with that is never filled is still counted as stored.
        trie.get_or_insert_with("x/y", BTreeSet::new);
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.remove("x/y"), Some(BTreeSet::new()));
        assert_eq!(trie.node_count(), 4);
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut trie = trie_of(&["a/b/c", "a/b", "a/+/c", "a/#", "d"]);
        // root, a, b, c, +, c, #, d
        assert_eq!(trie.node_count(), 8);
        assert_eq!(trie.remove("a/b/c").as_deref(), Some("a/b/c"));
        assert_eq!(trie.node_count(), 7);
        assert_eq!(trie.remove("a/b/c"), None);
        assert_eq!(trie.remove("a/b").as_deref(), Some("a/b"));
        assert_eq!(trie.node_count(), 6);
        assert_eq!(trie.remove("a/+/c").as_deref(), Some("a/+/c"));
        assert_eq!(trie.node_count(), 4);
        // Removing a key that is only a path prefix removes nothing.
        assert_eq!(trie.remove("a"), None);
        assert_eq!(trie.node_count(), 4);
        assert_eq!(trie.remove("a/#").as_deref(), Some("a/#"));
        assert_eq!(trie.remove("d").as_deref(), Some("d"));
        assert_eq!(trie.node_count(), 1);
        assert!(trie.is_empty());
    }

    #[test]
    fn prefix_values_survive_pruning_below_them() {
        let mut trie = trie_of(&["a", "a/b/c"]);
        assert_eq!(trie.remove("a/b/c").as_deref(), Some("a/b/c"));
        assert_eq!(trie.node_count(), 2);
        assert_eq!(matching_filters(&trie, "a"), ["a"]);
    }

    #[test]
    fn wide_levels_shrink_after_unsubscribe() {
        let mut trie = TopicTrie::new();
        trie.insert("devices/gateway", u32::MAX);
        for id in 0..10_000u32 {
            trie.insert(&format!("devices/{id}/state"), id);
        }
        assert_eq!(trie.node_count(), 3 + 2 * 10_000);
        let capacity = |trie: &TopicTrie<u32>| trie.root.children["devices"].children.capacity();
        assert!(capacity(&trie) >= 10_001);
        for id in 0..10_000u32 {
            assert_eq!(trie.remove(&format!("devices/{id}/state")), Some(id));
        }
        assert_eq!(trie.node_count(), 3);
        assert!(capacity(&trie) < 8, "capacity {}", capacity(&trie));
        assert_eq!(trie.get("devices/gateway"), Some(&u32::MAX));
    }

    #[test]
    fn invalid_filters_are_stored_but_inert() {
        // `#` followed by more levels is rejected by topic validation; the trie only
        // promises not to match or lose it.
        let mut trie = trie_of(&["a/#/b"]);
        assert!(matching_filters(&trie, "a/x/b").is_empty());
        assert!(matching_filters(&trie, "a").is_empty());
        assert_eq!(trie.remove("a/#/b").as_deref(), Some("a/#/b"));
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn deep_topics() {
        let deep = vec!["l"; 1000].join("/");
        let filter = format!("{}/#", vec!["+"; 999].join("/"));
        let mut trie = trie_of(&[deep.as_str(), filter.as_str()]);
        assert_eq!(matching_filters(&trie, &deep).len(), 2);
        assert_eq!(names_matched_by(&trie, "#").len(), 2);
        trie.remove(&deep);
        trie.remove(&filter);
        assert_eq!(trie.node_count(), 1);
    }

    // Small alphabets so random keys collide, share prefixes and exercise every branch.
    const FILTER_LEVELS: &[&str] = &["a", "b", "", "$SYS", "$x", "+"];
    const NAME_LEVELS: &[&str] = &["a", "b", "", "$SYS", "$x", "c"];

    fn filter_strategy() -> BoxedStrategy<String> {
        (
            prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..4),
            any::<bool>(),
        )
            .prop_map(|(mut levels, multi)| {
                if multi || levels.is_empty() {
                    levels.push("#");
                }
                levels.join("/")
            })
            .prop_filter("the empty filter is invalid", |f| !f.is_empty())
            .boxed()
    }

    fn name_strategy() -> BoxedStrategy<String> {
        prop::collection::vec(prop::sample::select(NAME_LEVELS), 1..5)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("the empty name is invalid", |n| !n.is_empty())
            .boxed()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u32),
        Remove(String),
        /// Drop the value only if it is even, as a subscriber set would when it empties.
        UpdateDropEven(String),
    }

    fn op_strategy(key: BoxedStrategy<String>) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => key.clone().prop_map(Op::Remove),
            1 => key.prop_map(Op::UpdateDropEven),
        ]
    }

    /// Each value carries its own key, so a visit says which key matched.
    type Entry = (String, u32);

    /// Applies `ops` to the trie and to a `BTreeMap` model, checking they agree throughout.
    fn run_against_model(
        ops: &[Op],
    ) -> Result<(TopicTrie<Entry>, BTreeMap<String, u32>), TestCaseError> {
        let mut trie = TopicTrie::new();
        let mut model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(k, v) => {
                    let old = trie.insert(k, (k.clone(), *v)).map(|(_, v)| v);
                    prop_assert_eq!(old, model.insert(k.clone(), *v));
                }
                Op::Remove(k) => {
                    let old = trie.remove(k).map(|(_, v)| v);
                    prop_assert_eq!(old, model.remove(k));
                }
                Op::UpdateDropEven(k) => {
                    let seen = trie.update(k, |slot| {
                        let seen = slot.as_ref().map(|(_, v)| *v);
                        if seen.is_some_and(|v| v % 2 == 0) {
                            *slot = None;
                        }
                        seen
                    });
                    prop_assert_eq!(seen, model.get(k).copied());
                    if seen.is_some_and(|v| v % 2 == 0) {
                        model.remove(k);
                    }
                }
            }
            prop_assert_eq!(trie.len(), model.len());
        }
        for (k, v) in &model {
            prop_assert_eq!(trie.get(k).map(|(_, v)| *v), Some(*v));
        }
        // Pruning leaves exactly one node per distinct level-prefix of a stored key.
        let mut prefixes = BTreeSet::new();
        for k in model.keys() {
            let mut end = 0;
            for level in k.split('/') {
                end += level.len();
                prefixes.insert(&k[..end]);
                end += 1;
            }
        }
        prop_assert_eq!(trie.node_count(), 1 + prefixes.len());
        Ok((trie, model))
    }

    fn drain(trie: &mut TopicTrie<Entry>, model: &BTreeMap<String, u32>) {
        for k in model.keys() {
            assert!(trie.remove(k).is_some());
        }
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);
    }

    proptest! {
        #[test]
        fn for_each_match_agrees_with_matches(
            ops in prop::collection::vec(op_strategy(filter_strategy()), 0..60),
            topics in prop::collection::vec(name_strategy(), 1..20),
        ) {
            let (mut trie, model) = run_against_model(&ops)?;
            for topic in &topics {
                let mut visited = Vec::new();
                trie.for_each_match(topic, |(filter, _)| visited.push(filter.as_str()));
                visited.sort_unstable();
                let expected: Vec<&str> = model
                    .keys()
                    .map(String::as_str)
                    .filter(|f| topic::matches(f, topic))
                    .collect();
                // Sorted equality also proves no value was visited twice.
                prop_assert_eq!(visited, expected, "topic {:?}", topic);
            }
            drain(&mut trie, &model);
        }

        #[test]
        fn for_each_matched_by_agrees_with_matches(
            ops in prop::collection::vec(op_strategy(name_strategy()), 0..60),
            filters in prop::collection::vec(filter_strategy(), 1..20),
        ) {
            let (mut trie, model) = run_against_model(&ops)?;
            for filter in &filters {
                let mut visited = Vec::new();
                trie.for_each_matched_by(filter, |(name, _)| visited.push(name.as_str()));
                visited.sort_unstable();
                let expected: Vec<&str> = model
                    .keys()
                    .map(String::as_str)
                    .filter(|n| topic::matches(filter, n))
                    .collect();
                prop_assert_eq!(visited, expected, "filter {:?}", filter);
            }
            drain(&mut trie, &model);
        }
    }
}
