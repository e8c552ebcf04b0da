//! Topic ids: the gateway-wide predefined table and each session's registry of normal ids.

use std::collections::HashMap;

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

/// One session's normal topic ids, shared by both directions (spec 6.5, 6.10). Kept in the
/// session so a client resuming it keeps its ids.
#[derive(Debug, Clone)]
pub struct TopicRegistry {
    by_id: HashMap<u16, ByteString>,
    by_name: HashMap<ByteString, u16>,
    next: u16,
    limit: usize,
}

impl TopicRegistry {
    pub fn new(limit: usize) -> TopicRegistry {
        TopicRegistry {
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            next: FIRST_NORMAL_ID,
            limit: limit.min(usize::from(u16::MAX - FIRST_NORMAL_ID) + 1),
        }
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
        if let Some(old) = self.by_id.insert(id, name.clone()) {
            self.by_name.remove(&old);
        }
        self.by_name.insert(name, id);
    }

    pub fn forget(&mut self, id: u16) {
        if let Some(name) = self.by_id.remove(&id) {
            self.by_name.remove(&name);
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
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
