//! A bounded map of slots, for the tokens that come and go with requests: per-request
//! parameters, per-subject exchanges, a user client's users. Full, it first drops the slots
//! holding nothing usable that no request holds, then the least recently used.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::SystemTime;

use super::slot::Slot;

/// Slots by key, at most `max` of them. Used under the manager's lock: every use bumps a plain
/// counter, which orders the slots by their last use exactly.
pub(crate) struct SlotMap<K> {
    slots: HashMap<K, (Arc<Slot>, u64)>,
    uses: u64,
}

impl<K: Eq + Hash + Clone> SlotMap<K> {
    pub(crate) fn new() -> Self {
        SlotMap {
            slots: HashMap::new(),
            uses: 0,
        }
    }

    /// The slot of `key`, noted as used now.
    pub(crate) fn get(&mut self, key: &K) -> Option<Arc<Slot>> {
        self.uses += 1;
        let (slot, last_used) = self.slots.get_mut(key)?;
        *last_used = self.uses;
        Some(slot.clone())
    }

    /// The slot of `key`, not counted as a use.
    pub(crate) fn peek(&self, key: &K) -> Option<Arc<Slot>> {
        self.slots.get(key).map(|(slot, _)| slot.clone())
    }

    /// Adds `slot` under `key`, making room first if the map holds `max` slots (with `max`
    /// 0, nothing is kept).
    pub(crate) fn insert(&mut self, key: K, slot: Arc<Slot>, max: usize, now: SystemTime) {
        if max == 0 {
            return;
        }
        if self.slots.len() >= max {
            self.slots
                .retain(|_, (slot, _)| Arc::strong_count(slot) > 1 || !slot.is_idle(now));
        }
        while self.slots.len() >= max {
            let least_recent = self
                .slots
                .iter()
                .min_by_key(|(_, (_, last_used))| *last_used)
                .map(|(key, _)| key.clone());
            match least_recent {
                Some(key) => self.slots.remove(&key),
                None => break,
            };
        }
        self.uses += 1;
        self.slots.insert(key, (slot, self.uses));
    }

    /// Forgets `key`'s slot.
    pub(crate) fn remove(&mut self, key: &K) {
        self.slots.remove(key);
    }

    /// Empties the map, returning the slots it held.
    pub(crate) fn drain(&mut self) -> Vec<Arc<Slot>> {
        self.slots.drain().map(|(_, (slot, _))| slot).collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokenwarden_core::{CacheKey, TokenParams};

    fn slot(name: &str) -> Arc<Slot> {
        Arc::new(Slot::new(
            CacheKey::builder(name).build(),
            TokenParams::new(),
        ))
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let now = SystemTime::now();
        let mut map = SlotMap::new();
        for key in ["a", "b", "c"] {
            map.insert(key, slot(key), 3, now);
        }
        assert!(map.get(&"a").is_some(), "a is used again");
        // Empty slots nobody holds are dropped first: all of them here.
        map.insert("d", slot("d"), 3, now);
        assert_eq!(map.len(), 1);

        // Slots a request holds are kept by the first pass; the least recent goes then.
        let held: Vec<_> = ["e", "f"].map(slot).to_vec();
        map.insert("e", held[0].clone(), 3, now);
        map.insert("f", held[1].clone(), 3, now);
        let d = map.get(&"d").unwrap();
        assert!(map.get(&"e").is_some());
        map.insert("g", slot("g"), 3, now);
        assert_eq!(map.len(), 3);
        assert!(map.peek(&"f").is_none(), "f was used least recently");
        assert!(map.peek(&"d").is_some() && map.peek(&"e").is_some());
        drop(d);
        assert_eq!(map.drain().len(), 3);
        map.insert("h", slot("h"), 0, now);
        assert_eq!(map.len(), 0, "a map of 0 keeps nothing");
    }
}
