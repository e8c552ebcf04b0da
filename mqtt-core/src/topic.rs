//! Topic names and topic filters: validation, shared-subscription parsing and the
//! reference matcher (MQTT 3.1.1 section 4.7, MQTT 5.0 sections 4.7 and 4.8).
//!
//! Nothing here normalises a topic [MQTT-4.7.3-4]: levels are compared byte for byte,
//! empty levels are levels, and case matters.

/// The longest topic an MQTT UTF-8 string can carry.
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

const SHARE_PREFIX: &str = "$share/";
const QUEUE_PREFIX: &str = "$queue/";
/// The group every `$queue/` subscriber joins. As in EMQX, `$queue/t` and `$share/$queue/t`
/// are the same subscription, so clients using either spelling balance load together.
pub const QUEUE_GROUP: &str = "$queue";

/// Why a topic name, topic filter or shared subscription was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("[MQTT-4.7.3-1] topic names and topic filters must be at least one character long")]
    Empty,
    #[error(
        "[MQTT-4.7.3-2] topic names and topic filters must not contain the null character U+0000"
    )]
    NullCharacter,
    #[error("[MQTT-4.7.3-3] topic is {len} bytes, more than the 65535 a UTF-8 string can encode")]
    TooLong { len: usize },
    #[error("[MQTT-4.7.1-1] a topic name must not contain the wildcard characters '+' or '#'")]
    WildcardInTopicName,
    #[error("[MQTT-4.7.1-2] '#' must be last and alone in its level")]
    MultiLevelWildcardMisplaced,
    #[error("[MQTT-4.7.1-3] '+' must occupy an entire level")]
    SingleLevelWildcardMisplaced,
    #[error("topic has {levels} levels, more than the configured maximum of {max}")]
    TooManyLevels { levels: usize, max: usize },
    #[error("[MQTT-4.8.2-1] a shared subscription needs a share name at least one character long")]
    EmptyShareName,
    #[error("[MQTT-4.8.2-2] a share name must not contain '+' or '#'")]
    InvalidShareName,
    #[error("[MQTT-4.8.2-2] a share name must be followed by '/' and a topic filter")]
    MissingSharedFilter,
}

/// A subscription as written by the client, with `$share/` and `$queue/` recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionFilter<'a> {
    Plain(&'a str),
    Shared { group: &'a str, filter: &'a str },
}

impl<'a> SubscriptionFilter<'a> {
    /// The topic filter that publications are matched against, without any share prefix.
    pub fn filter(&self) -> &'a str {
        match *self {
            SubscriptionFilter::Plain(filter) | SubscriptionFilter::Shared { filter, .. } => filter,
        }
    }

    /// The share group, if this is a shared subscription.
    pub fn group(&self) -> Option<&'a str> {
        match *self {
            SubscriptionFilter::Plain(_) => None,
            SubscriptionFilter::Shared { group, .. } => Some(group),
        }
    }
}

/// Rules shared by names and filters, checked on the whole string before looking at levels.
fn check_string(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

fn check_levels(levels: usize, max_levels: usize) -> Result<(), TopicError> {
    if max_levels != 0 && levels > max_levels {
        return Err(TopicError::TooManyLevels {
            levels,
            max: max_levels,
        });
    }
    Ok(())
}

/// Checks a topic name as carried by PUBLISH or a will. `max_levels == 0` means unlimited.
pub fn validate_topic_name(name: &str, max_levels: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: name.len() });
    }
    // One pass over the bytes: every publish comes through here. The characters looked
    // for are ASCII, so a byte match cannot hit inside a multi-byte character.
    let mut levels = 1usize;
    for &byte in name.as_bytes() {
        match byte {
            b'/' => levels += 1,
            b'+' | b'#' => return Err(TopicError::WildcardInTopicName),
            0 => return Err(TopicError::NullCharacter),
            _ => {}
        }
    }
    check_levels(levels, max_levels)
}

/// Checks a topic filter (without any `$share/` prefix). `max_levels == 0` means unlimited.
pub fn validate_topic_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_string(filter)?;
    let mut levels = 0usize;
    let mut after_multi = false;
    for level in filter.split('/') {
        if after_multi {
            return Err(TopicError::MultiLevelWildcardMisplaced);
        }
        levels += 1;
        match level {
            "#" => after_multi = true,
            "+" => {}
            _ if level.contains('#') => return Err(TopicError::MultiLevelWildcardMisplaced),
            _ if level.contains('+') => return Err(TopicError::SingleLevelWildcardMisplaced),
            _ => {}
        }
    }
    check_levels(levels, max_levels)
}

/// Parses a SUBSCRIBE/UNSUBSCRIBE filter, recognising `$share/{group}/{filter}` (MQTT 5.0
/// section 4.8.2) and `$queue/{filter}` (EMQX's older spelling of a shared subscription
/// with one implicit group). Anything else is a plain filter, so `$share` with no slash or
/// `$sharefoo/x` are ordinary `$`-topics.
pub fn parse_subscription(
    filter: &str,
    max_levels: usize,
) -> Result<SubscriptionFilter<'_>, TopicError> {
    check_string(filter)?;
    if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        let (group, inner) = match rest.split_once('/') {
            Some(split) => split,
            None if rest.is_empty() => return Err(TopicError::EmptyShareName),
            None => return Err(TopicError::MissingSharedFilter),
        };
        if group.is_empty() {
            return Err(TopicError::EmptyShareName);
        }
        if group.contains(['+', '#']) {
            return Err(TopicError::InvalidShareName);
        }
        if inner.is_empty() {
            return Err(TopicError::MissingSharedFilter);
        }
        validate_topic_filter(inner, max_levels)?;
        Ok(SubscriptionFilter::Shared {
            group,
            filter: inner,
        })
    } else if let Some(inner) = filter.strip_prefix(QUEUE_PREFIX) {
        if inner.is_empty() {
            return Err(TopicError::MissingSharedFilter);
        }
        validate_topic_filter(inner, max_levels)?;
        Ok(SubscriptionFilter::Shared {
            group: QUEUE_GROUP,
            filter: inner,
        })
    } else {
        validate_topic_filter(filter, max_levels)?;
        Ok(SubscriptionFilter::Plain(filter))
    }
}

/// Does the topic filter `filter` match the topic name `topic`?
///
/// This is the plain reference definition the subscription index is tested against; the
/// broker matches through [`crate::trie::TopicTrie`], never by scanning filters with this.
/// Inputs are assumed valid; an invalid filter gets a definite but unspecified answer.
pub fn matches(filter: &str, topic: &str) -> bool {
    // [MQTT-4.7.2-1]: `$SYS/...` and friends stay invisible to `#` and `+/...`, so a
    // catch-all subscriber does not receive broker internals.
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` also matches the parent level: "a/#" matches "a".
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is every topic name matched by `inner` also matched by `outer`?
///
/// Used to check a subscription against an ACL rule: "a/#" covers "a/+/b", "a/+" does not
/// cover "a/#", and neither `#` nor `+` covers a filter whose first level is a literal
/// starting with `$`.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    let mut first = true;
    // Whether the levels of `inner` consumed so far can spell a topic name. `#` matches
    // its parent level too, but the parent of a leading `#` has no levels and the parent
    // of `/#` is the empty string: neither is a name anyone can publish to.
    let mut parent_is_name = false;
    loop {
        let (o, i) = match (outer_levels.next(), inner_levels.next()) {
            (Some(o), Some(i)) => (o, i),
            (Some("#"), None) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
        };
        match (o, i) {
            _ if first && i.starts_with('$') && (o == "#" || o == "+") => return false,
            ("#", _) => return true,
            // `+/#` then matches everything `#` does except that missing parent.
            ("+", "#") => return !parent_is_name && outer_levels.next() == Some("#"),
            ("+", _) => {}
            (_, "+" | "#") => return false,
            _ if o == i => {}
            _ => return false,
        }
        parent_is_name = !first || !i.is_empty();
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names() {
        use TopicError::*;
        let cases: &[(&str, usize, Result<(), TopicError>)] = &[
            ("a", 0, Ok(())),
            ("a/b/c", 0, Ok(())),
            ("/", 0, Ok(())),
            ("//", 0, Ok(())),
            ("/a", 0, Ok(())),
            ("a/", 0, Ok(())),
            ("a//b", 0, Ok(())),
            (" ", 0, Ok(())),
            ("$SYS/broker/uptime", 0, Ok(())),
            ("$", 0, Ok(())),
            ("$share/g/a", 0, Ok(())),
            ("sport/tennis/player1", 0, Ok(())),
            ("température/salon", 0, Ok(())),
            ("设备/温度", 0, Ok(())),
            ("🚀/launch", 0, Ok(())),
            ("A/a", 0, Ok(())),
            ("", 0, Err(Empty)),
            ("a\0b", 0, Err(NullCharacter)),
            ("\0", 0, Err(NullCharacter)),
            ("+", 0, Err(WildcardInTopicName)),
            ("#", 0, Err(WildcardInTopicName)),
            ("a/+", 0, Err(WildcardInTopicName)),
            ("a/#", 0, Err(WildcardInTopicName)),
            ("a+b", 0, Err(WildcardInTopicName)),
            ("a#b", 0, Err(WildcardInTopicName)),
            ("$SYS/#", 0, Err(WildcardInTopicName)),
            ("a/b/c", 3, Ok(())),
            ("a/b/c/d", 3, Err(TooManyLevels { levels: 4, max: 3 })),
            ("/", 1, Err(TooManyLevels { levels: 2, max: 1 })),
            ("a", 1, Ok(())),
            ("a/b/c/d/e/f/g/h", 0, Ok(())),
        ];
        for (name, max, want) in cases {
            assert_eq!(
                &validate_topic_name(name, *max),
                want,
                "name {name:?} max {max}"
            );
        }
    }

    #[test]
    fn topic_length_limit() {
        let longest = "a".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&longest, 0), Ok(()));
        assert_eq!(validate_topic_filter(&longest, 0), Ok(()));
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let err = Err(TopicError::TooLong {
            len: MAX_TOPIC_LEN + 1,
        });
        assert_eq!(validate_topic_name(&too_long, 0), err);
        assert_eq!(validate_topic_filter(&too_long, 0), err);
        assert!(matches!(
            parse_subscription(&too_long, 0),
            Err(TopicError::TooLong { .. })
        ));
        // The limit is on encoded bytes, not characters.
        let wide = "é".repeat(MAX_TOPIC_LEN / 2 + 1);
        assert!(matches!(
            validate_topic_name(&wide, 0),
            Err(TopicError::TooLong { .. })
        ));
    }

    #[test]
    fn topic_filters() {
        use TopicError::*;
        let cases: &[(&str, usize, Result<(), TopicError>)] = &[
            ("a", 0, Ok(())),
            ("#", 0, Ok(())),
            ("+", 0, Ok(())),
            ("+/+", 0, Ok(())),
            ("+/#", 0, Ok(())),
            ("a/#", 0, Ok(())),
            ("a/+/b", 0, Ok(())),
            ("a/+/#", 0, Ok(())),
            ("/#", 0, Ok(())),
            ("/+", 0, Ok(())),
            ("+/", 0, Ok(())),
            ("//#", 0, Ok(())),
            ("a//+//#", 0, Ok(())),
            ("/", 0, Ok(())),
            ("$SYS/#", 0, Ok(())),
            ("$SYS/+/uptime", 0, Ok(())),
            ("sport/tennis/#", 0, Ok(())),
            ("sport/+/player1", 0, Ok(())),
            ("设备/+/温度", 0, Ok(())),
            ("", 0, Err(Empty)),
            ("a/\0", 0, Err(NullCharacter)),
            ("#/a", 0, Err(MultiLevelWildcardMisplaced)),
            ("a/#/b", 0, Err(MultiLevelWildcardMisplaced)),
            ("#/", 0, Err(MultiLevelWildcardMisplaced)),
            ("#/#", 0, Err(MultiLevelWildcardMisplaced)),
            ("a#", 0, Err(MultiLevelWildcardMisplaced)),
            ("a/b#", 0, Err(MultiLevelWildcardMisplaced)),
            ("sport/tennis#", 0, Err(MultiLevelWildcardMisplaced)),
            ("##", 0, Err(MultiLevelWildcardMisplaced)),
            ("#+", 0, Err(MultiLevelWildcardMisplaced)),
            ("a+", 0, Err(SingleLevelWildcardMisplaced)),
            ("+a", 0, Err(SingleLevelWildcardMisplaced)),
            ("a/+b/c", 0, Err(SingleLevelWildcardMisplaced)),
            ("sport+", 0, Err(SingleLevelWildcardMisplaced)),
            ("++", 0, Err(SingleLevelWildcardMisplaced)),
            ("+/+/+", 3, Ok(())),
            ("a/b/#", 3, Ok(())),
            ("a/b/c/#", 3, Err(TooManyLevels { levels: 4, max: 3 })),
            ("#", 1, Ok(())),
            ("//", 2, Err(TooManyLevels { levels: 3, max: 2 })),
        ];
        for (filter, max, want) in cases {
            assert_eq!(
                &validate_topic_filter(filter, *max),
                want,
                "filter {filter:?} max {max}"
            );
        }
    }

    #[test]
    fn subscriptions() {
        use SubscriptionFilter::*;
        use TopicError::*;
        let shared = |group, filter| Ok(Shared { group, filter });
        let cases: &[(&str, usize, Result<SubscriptionFilter<'_>, TopicError>)] = &[
            ("a/b", 0, Ok(Plain("a/b"))),
            ("#", 0, Ok(Plain("#"))),
            ("$SYS/#", 0, Ok(Plain("$SYS/#"))),
            ("$share", 0, Ok(Plain("$share"))),
            ("$sharex/g/a", 0, Ok(Plain("$sharex/g/a"))),
            ("$queue", 0, Ok(Plain("$queue"))),
            ("$SHARE/g/a", 0, Ok(Plain("$SHARE/g/a"))),
            ("$share/g/a/b", 0, shared("g", "a/b")),
            ("$share/g/#", 0, shared("g", "#")),
            ("$share/g/+/x", 0, shared("g", "+/x")),
            ("$share/g//", 0, shared("g", "/")),
            ("$share/g/$SYS/#", 0, shared("g", "$SYS/#")),
            ("$share/$g/a", 0, shared("$g", "a")),
            ("$share/组/温度", 0, shared("组", "温度")),
            ("$share/g/$share/h/a", 0, shared("g", "$share/h/a")),
            ("$queue/a/b", 0, shared(QUEUE_GROUP, "a/b")),
            ("$queue/#", 0, shared(QUEUE_GROUP, "#")),
            ("$queue//", 0, shared(QUEUE_GROUP, "/")),
            ("$share/", 0, Err(EmptyShareName)),
            ("$share//a", 0, Err(EmptyShareName)),
            ("$share//", 0, Err(EmptyShareName)),
            ("$share/g", 0, Err(MissingSharedFilter)),
            ("$share/g/", 0, Err(MissingSharedFilter)),
            ("$share/+/a", 0, Err(InvalidShareName)),
            ("$share/#/a", 0, Err(InvalidShareName)),
            ("$share/g+/a", 0, Err(InvalidShareName)),
            ("$share/g#", 0, Err(MissingSharedFilter)),
            ("$share/g/a/#/b", 0, Err(MultiLevelWildcardMisplaced)),
            ("$share/g/a+", 0, Err(SingleLevelWildcardMisplaced)),
            ("$share/g/\0", 0, Err(NullCharacter)),
            ("$share/\0/a", 0, Err(NullCharacter)),
            ("$queue/", 0, Err(MissingSharedFilter)),
            ("$queue/a#", 0, Err(MultiLevelWildcardMisplaced)),
            ("", 0, Err(Empty)),
            ("a/#/b", 0, Err(MultiLevelWildcardMisplaced)),
            // Levels are counted in the filter, not in the share prefix.
            ("$share/g/a/b", 2, shared("g", "a/b")),
            (
                "$share/g/a/b/c",
                2,
                Err(TooManyLevels { levels: 3, max: 2 }),
            ),
            ("$queue/a/b", 2, shared(QUEUE_GROUP, "a/b")),
            ("a/b/c", 2, Err(TooManyLevels { levels: 3, max: 2 })),
        ];
        for (input, max, want) in cases {
            assert_eq!(
                &parse_subscription(input, *max),
                want,
                "subscription {input:?} max {max}"
            );
        }
        let sub = parse_subscription("$share/g/a/+", 0).unwrap();
        assert_eq!((sub.group(), sub.filter()), (Some("g"), "a/+"));
        let sub = parse_subscription("a/+", 0).unwrap();
        assert_eq!((sub.group(), sub.filter()), (None, "a/+"));
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            // Literal levels.
            ("a", "a", true),
            ("a", "b", false),
            ("a", "A", false),
            ("a/b", "a/b", true),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("a/b", "a/b/c", false),
            // Empty levels are levels.
            ("/", "/", true),
            ("/a", "/a", true),
            ("/a", "a", false),
            ("a/", "a", false),
            ("a//b", "a//b", true),
            ("a//b", "a/b", false),
            ("+", "/", false),
            ("+/+", "/", true),
            ("/+", "/a", true),
            ("/+", "/", true),
            ("+/", "a/", true),
            ("a/+/b", "a//b", true),
            ("#", "/", true),
            ("/#", "/", true),
            ("/#", "/a/b", true),
            ("/#", "a", false),
            // `+` is exactly one level.
            ("+", "a", true),
            ("+", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("+/+", "a/b", true),
            ("+/b", "a/b", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            // `#` is this level and every level below, including the parent.
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "b", false),
            ("a/#", "ab", false),
            ("a/b/#", "a", false),
            ("+/#", "a", true),
            ("+/#", "a/b", true),
            ("a/+/#", "a", false),
            ("a/+/#", "a/b", true),
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            // [MQTT-4.7.2-1]: leading wildcards never match `$` topics.
            ("#", "$SYS", false),
            ("#", "$SYS/broker", false),
            ("+", "$SYS", false),
            ("+/broker", "$SYS/broker", false),
            ("+/#", "$SYS/broker", false),
            ("+/+", "$/x", false),
            ("$SYS/#", "$SYS", true),
            ("$SYS/#", "$SYS/broker/load", true),
            ("$SYS/+", "$SYS/broker", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("$SYS", "$SYS", true),
            ("$", "$", true),
            // Only the first level counts as a `$` topic.
            ("a/+", "a/$b", true),
            ("a/#", "a/$b", true),
            ("#", "a$", true),
            ("+", "x$SYS", true),
            // Unicode is compared as-is, never normalised.
            ("设备/+/温度", "设备/42/温度", true),
            ("设备/#", "设备", true),
            ("café", "café", true),
            ("café", "cafe\u{301}", false),
            ("+/🚀", "x/🚀", true),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(
                matches(filter, topic),
                *want,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn covers() {
        let cases: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a", "b", false),
            ("#", "#", true),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "+", true),
            ("#", "+/a/#", true),
            ("#", "/", true),
            ("+", "a", true),
            ("+", "+", true),
            ("+", "#", false),
            ("+", "a/b", false),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "a/+", true),
            ("a/#", "a/+/b", true),
            ("a/#", "a/b/c/#", true),
            ("a/#", "b/#", false),
            ("a/#", "#", false),
            ("a/#", "+/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/+/#", "a/#", false),
            ("a/+/#", "a/+", true),
            ("a/+/#", "a/b/#", true),
            ("a/b", "a/+", false),
            ("a/b", "a/#", false),
            ("a", "a/#", false),
            ("+/#", "#", true),
            ("+/#", "+", true),
            ("+/#", "a/b", true),
            ("+/+/#", "#", false),
            // The empty string is no topic name, so `/#` never matches the parent `""`.
            ("/+/#", "/#", true),
            ("+/+/#", "/#", true),
            ("+/+/#", "+/#", false),
            ("/+/#", "/+/#", true),
            ("a/+/#", "a/#", false),
            ("//+/#", "//#", false),
            ("+/+", "+/+", true),
            ("+/+", "#", false),
            ("/+", "/a", true),
            ("/+", "+/a", false),
            ("+/a", "/a", true),
            ("a//#", "a//b", true),
            ("a//#", "a/b", false),
            // [MQTT-4.7.2-1]: a leading wildcard never covers a `$` topic.
            ("#", "$SYS/#", false),
            ("#", "$SYS", false),
            ("+/#", "$SYS/a", false),
            ("+", "$SYS", false),
            ("+/+", "$SYS/+", false),
            ("$SYS/#", "$SYS/+/x", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/#", "#", false),
            ("$SYS/+", "+/+", false),
            ("a/#", "a/$b", true),
            ("a/+", "a/$b", true),
            ("设备/#", "设备/+/温度", true),
        ];
        for (outer, inner, want) in cases {
            assert_eq!(
                filter_covers(outer, inner),
                *want,
                "outer {outer:?} inner {inner:?}"
            );
        }
    }

    const FILTER_LEVELS: &[&str] = &["a", "b", "", "$s", "+"];
    /// Topic levels: the literals filters use, plus one no filter names.
    const TOPIC_LEVELS: &[&str] = &["a", "b", "", "$s", "z"];

    fn filter_strategy(max_levels: usize) -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..=max_levels),
            any::<bool>(),
        )
            .prop_map(|(mut levels, multi)| {
                if multi || levels.is_empty() {
                    levels.push("#");
                }
                levels.join("/")
            })
            .prop_filter("the empty filter is invalid", |filter| !filter.is_empty())
    }

    /// Every topic of 1..=`max_levels` levels over `TOPIC_LEVELS`, except the empty name.
    fn all_topics(max_levels: usize) -> Vec<String> {
        let mut out: Vec<Vec<&str>> = vec![vec![]];
        let mut all = Vec::new();
        for _ in 0..max_levels {
            out = out
                .into_iter()
                .flat_map(|prefix| {
                    TOPIC_LEVELS.iter().map(move |level| {
                        let mut next = prefix.clone();
                        next.push(*level);
                        next
                    })
                })
                .collect();
            all.extend(out.iter().map(|levels| levels.join("/")));
        }
        all.retain(|t| !t.is_empty());
        all
    }

    proptest! {
        #[test]
        fn generated_filters_are_valid(filter in filter_strategy(4)) {
            prop_assert_eq!(validate_topic_filter(&filter, 0), Ok(()));
            prop_assert_eq!(parse_subscription(&filter, 0), Ok(SubscriptionFilter::Plain(&filter)));
            let shared = format!("$share/g/{filter}");
            prop_assert_eq!(
                parse_subscription(&shared, 0),
                Ok(SubscriptionFilter::Shared { group: "g", filter: &filter })
            );
        }

        #[test]
        fn a_filter_without_wildcards_matches_only_itself(
            levels in prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..4),
            other in prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..4),
        ) {
            let (name, other) = (levels.join("/"), other.join("/"));
            prop_assert!(matches(&name, &name));
            prop_assert_eq!(matches(&name, &other), name == other);
            prop_assert!(filter_covers(&name, &name));
        }

        /// Over a universe holding a witness for every non-covered pair (each filter
        /// literal, one fresh literal, one level deeper than any filter), `filter_covers`
        /// must agree exactly with its definition in terms of `matches`.
        #[test]
        fn covers_agrees_with_matches(outer in filter_strategy(3), inner in filter_strategy(3)) {
            let topics = all_topics(5);
            let by_definition = topics
                .iter()
                .all(|t| !matches(&inner, t) || matches(&outer, t));
            prop_assert_eq!(filter_covers(&outer, &inner), by_definition);
            prop_assert!(filter_covers(&outer, &outer));
        }
    }
}
