//! Topic ids: the gateway-wide predefined table and each session's registry of normal ids.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

/// Normal ids start above the predefined range, so one id never means two topics.
pub const FIRST_NORMAL_ID: u16 = 1025;

/// Predefined topic ids, the same for every client (spec 2.4, 6.6).
#[derive(Debug, Clone, Default)]
pub struct Predefined {
    by_id: HashMap<u16, ByteString>,
    by_name: HashMap<ByteString, u16>,
}

impl Predefined {
    pub fn new(entries: impl IntoIterator<Item = (u16, String)>) -> Predefined {
        let mut table = Predefined::default();
        for (id, topic) in entries {
            let topic = ByteString::from(topic);
            table.by_name.insert(topic.clone(), id);
            table.by_id.insert(id, topic);
        }
        table
    }

    pub fn name(&self, id: u16) -> Option<&ByteString> {
        self.by_id.get(&id)
    }

    pub fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }
}

/// The first byte of a stored registry; a record of another format is refused, not misread.
const REGISTRY_FORMAT: u8 = 1;

/// Why a stored registry could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryDecodeError {
    #[error("unknown registry format {0}")]
    UnknownFormat(u8),
    #[error("registry record ends early")]
    Truncated,
    #[error("{0} bytes after the last entry")]
    TrailingBytes(usize),
    #[error("next id {0} is below the normal range")]
    NextOutOfRange(u16),
    #[error("topic id 0 is reserved")]
    ReservedId,
    #[error("topic name is not UTF-8")]
    NotUtf8,
    #[error("topic name is empty or has a wildcard")]
    BadName,
    #[error("topic id {0} or its name appears twice")]
    Duplicate(u16),
}

/// One session's normal topic ids, shared by both directions (spec 6.5, 6.10). Kept in the
/// session so a client resuming it keeps its ids, and stored as `encode` writes it so they
/// survive a restart too.
#[derive(Debug, Clone)]
pub struct TopicRegistry {
    by_id: HashMap<u16, ByteString>,
    by_name: HashMap<ByteString, u16>,
    next: u16,
    limit: usize,
    /// Set by every change, so the caller stores the registry only when it changed.
    changed: bool,
}

impl TopicRegistry {
    pub fn new(limit: usize) -> TopicRegistry {
        TopicRegistry {
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            next: FIRST_NORMAL_ID,
            limit: limit.min(usize::from(u16::MAX - FIRST_NORMAL_ID) + 1),
            changed: false,
        }
    }

    /// Whether the registry changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every id and its name, by id.
    pub fn entries(&self) -> Vec<(u16, &ByteString)> {
        let mut entries: Vec<(u16, &ByteString)> =
            self.by_id.iter().map(|(id, name)| (*id, name)).collect();
        entries.sort_unstable_by_key(|(id, _)| *id);
        entries
    }

    /// The registry as stored: format, the next id to offer, the entry count, then each id
    /// with its length-prefixed name, by id. Names are at most 65535 bytes, as REGISTER
    /// carries them.
    pub fn encode(&self) -> Bytes {
        let entries = self.entries();
        let size = 5 + entries
            .iter()
            .map(|(_, name)| 4 + name.len())
            .sum::<usize>();
        let mut out = BytesMut::with_capacity(size);
        out.put_u8(REGISTRY_FORMAT);
        out.put_u16(self.next);
        out.put_u16(u16::try_from(entries.len()).unwrap_or(u16::MAX));
        for (id, name) in entries.into_iter().take(usize::from(u16::MAX)) {
            let name = name.as_bytes();
            let len = name.len().min(usize::from(u16::MAX));
            out.put_u16(id);
            out.put_u16(u16::try_from(len).unwrap_or(u16::MAX));
            out.put_slice(name.get(..len).unwrap_or_default());
        }
        out.freeze()
    }

    /// Reads a record `encode` wrote, with the limit configured now: a registry restored
    /// over a smaller limit keeps every id the client knows and takes no new one.
    pub fn decode(record: &[u8], limit: usize) -> Result<TopicRegistry, RegistryDecodeError> {
        let mut input = Reader(record);
        let format = input.u8()?;
        if format != REGISTRY_FORMAT {
            return Err(RegistryDecodeError::UnknownFormat(format));
        }
        let next = input.u16()?;
        if next < FIRST_NORMAL_ID {
            return Err(RegistryDecodeError::NextOutOfRange(next));
        }
        let count = input.u16()?;
        let mut registry = TopicRegistry::new(limit);
        registry.next = next;
        for _ in 0..count {
            let id = input.u16()?;
            let len = input.u16()?;
            let name = std::str::from_utf8(input.take(usize::from(len))?)
                .map_err(|_| RegistryDecodeError::NotUtf8)?;
            if id == 0 {
                return Err(RegistryDecodeError::ReservedId);
            }
            if name.is_empty() || name.contains(['+', '#']) {
                return Err(RegistryDecodeError::BadName);
            }
            if registry.by_id.contains_key(&id) || registry.by_name.contains_key(name) {
                return Err(RegistryDecodeError::Duplicate(id));
            }
            registry.insert(id, ByteString::from(name));
        }
        if !input.0.is_empty() {
            return Err(RegistryDecodeError::TrailingBytes(input.0.len()));
        }
        registry.changed = false;
        Ok(registry)
    }

    pub fn name(&self, id: u16) -> Option<&ByteString> {
        self.by_id.get(&id)
    }

    pub fn id(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// The id of `name`, assigning a new one if needed; `None` when the registry is full.
    pub fn register(&mut self, name: &ByteString) -> Option<u16> {
        if let Some(id) = self.id(name) {
            return Some(id);
        }
        let id = self.free_id()?;
        self.insert(id, name.clone());
        Some(id)
    }

    /// An id not in use, without taking it: the gateway offers it in REGISTER and records it
    /// only once the client accepts.
    pub fn free_id(&mut self) -> Option<u16> {
        if self.by_id.len() >= self.limit {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == u16::MAX {
                FIRST_NORMAL_ID
            } else {
                id + 1
            };
            if !self.by_id.contains_key(&id) {
                return Some(id);
            }
        }
    }

    pub fn insert(&mut self, id: u16, name: ByteString) {
        if self.by_id.get(&id) == Some(&name) {
            return;
        }
        // Neither the id's old name nor the name's old id may linger: each maps one way.
        if let Some(old_id) = self.by_name.remove(&name) {
            self.by_id.remove(&old_id);
        }
        if let Some(old) = self.by_id.insert(id, name.clone()) {
            self.by_name.remove(&old);
        }
        self.by_name.insert(name, id);
        self.changed = true;
    }

    pub fn forget(&mut self, id: u16) {
        if let Some(name) = self.by_id.remove(&id) {
            self.by_name.remove(&name);
            self.changed = true;
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Reads a stored record front to back; running out is `Truncated`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], RegistryDecodeError> {
        if self.0.len() < len {
            return Err(RegistryDecodeError::Truncated);
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, RegistryDecodeError> {
        let [byte] = self.take(1)? else {
            return Err(RegistryDecodeError::Truncated);
        };
        Ok(*byte)
    }

    fn u16(&mut self) -> Result<u16, RegistryDecodeError> {
        let [high, low] = self.take(2)? else {
            return Err(RegistryDecodeError::Truncated);
        };
        Ok(u16::from_be_bytes([*high, *low]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_id_and_limit_holds() {
        let mut registry = TopicRegistry::new(2);
        let a = registry.register(&ByteString::from("a/b")).unwrap();
        assert_eq!(a, FIRST_NORMAL_ID);
        assert_eq!(registry.register(&ByteString::from("a/b")), Some(a));
        let b = registry.register(&ByteString::from("c/d")).unwrap();
        assert_ne!(a, b);
        assert_eq!(registry.register(&ByteString::from("e/f")), None);
        registry.forget(a);
        assert!(registry.register(&ByteString::from("e/f")).is_some());
        assert_eq!(registry.name(b).map(|n| n.as_ref()), Some("c/d"));
    }
}

#[cfg(test)]
mod stored {
    use super::*;
    use proptest::prelude::*;

    fn names(registry: &TopicRegistry) -> Vec<(u16, String)> {
        registry
            .entries()
            .into_iter()
            .map(|(id, name)| (id, name.to_string()))
            .collect()
    }

    #[test]
    fn round_trip_keeps_ids_and_the_next_offer() {
        let mut registry = TopicRegistry::new(10);
        registry.register(&ByteString::from("a/b"));
        registry.insert(4000, ByteString::from("from/regack"));
        registry.register(&ByteString::from("ünï/cödé"));
        registry.forget(FIRST_NORMAL_ID);
        assert!(registry.take_changed());
        let record = registry.encode();
        let mut back = TopicRegistry::decode(&record, 10).unwrap();
        assert!(
            !back.take_changed(),
            "a restored registry has nothing new to store"
        );
        assert_eq!(names(&back), names(&registry));
        assert_eq!(back.encode(), record);
        assert_eq!(back.free_id(), registry.free_id());
    }

    #[test]
    fn an_empty_registry_is_five_bytes() {
        assert_eq!(
            &TopicRegistry::new(3).encode()[..],
            &[REGISTRY_FORMAT, 0x04, 0x01, 0, 0]
        );
    }

    #[test]
    fn garbage_is_refused_with_its_reason() {
        use RegistryDecodeError::*;
        let cases: &[(&[u8], RegistryDecodeError)] = &[
            (b"", Truncated),
            (&[2, 4, 1, 0, 0], UnknownFormat(2)),
            (&[1, 0, 5, 0, 0], NextOutOfRange(5)),
            (&[1, 4, 1, 0, 1, 4, 1, 0, 3, b'a', b'b'], Truncated),
            (&[1, 4, 1, 0, 0, 9], TrailingBytes(1)),
            (&[1, 4, 1, 0, 1, 0, 0, 0, 1, b'a'], ReservedId),
            (&[1, 4, 1, 0, 1, 4, 1, 0, 1, 0xff], NotUtf8),
            (&[1, 4, 1, 0, 1, 4, 1, 0, 0], BadName),
            (&[1, 4, 1, 0, 1, 4, 1, 0, 1, b'#'], BadName),
            (
                &[1, 4, 1, 0, 2, 4, 1, 0, 1, b'a', 4, 2, 0, 1, b'a'],
                Duplicate(1026),
            ),
            (
                &[1, 4, 1, 0, 2, 4, 1, 0, 1, b'a', 4, 1, 0, 1, b'b'],
                Duplicate(1025),
            ),
        ];
        for (record, reason) in cases {
            assert_eq!(
                TopicRegistry::decode(record, 10).err().as_ref(),
                Some(reason),
                "{record:?}"
            );
        }
    }

    #[test]
    fn restored_over_a_smaller_limit_keeps_every_id_but_takes_no_new_one() {
        let mut registry = TopicRegistry::new(3);
        for name in ["a", "b", "c"] {
            registry.register(&ByteString::from(name));
        }
        let mut back = TopicRegistry::decode(&registry.encode(), 1).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back.register(&ByteString::from("d")), None);
        assert_eq!(back.id("c"), registry.id("c"));
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_the_same_registry(
            steps in proptest::collection::vec(
                (0u8..3, "[a-z/é]{1,12}", 1u16..=u16::MAX), 0..40),
        ) {
            let mut registry = TopicRegistry::new(30);
            for (kind, name, id) in steps {
                match kind {
                    0 => { registry.register(&ByteString::from(name)); }
                    1 => registry.insert(id, ByteString::from(name)),
                    _ => registry.forget(id),
                }
            }
            let record = registry.encode();
            let back = TopicRegistry::decode(&record, 30).unwrap();
            prop_assert_eq!(names(&back), names(&registry));
            prop_assert_eq!(back.encode(), record.clone());
            // Any shorter record is refused: the count says how much must follow.
            for cut in 0..record.len() {
                prop_assert!(TopicRegistry::decode(&record[..cut], 30).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(record in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = TopicRegistry::decode(&record, 30);
            let framed: Vec<u8> = [REGISTRY_FORMAT, 4, 1].iter().chain(&record).copied().collect();
            let _ = TopicRegistry::decode(&framed, 30);
        }
    }
}
