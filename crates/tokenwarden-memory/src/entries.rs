//! The bounded entry store behind [`MemoryTokenCache`](crate::MemoryTokenCache).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use tokenwarden_core::{CacheKey, CachedToken};

/// Entries by key, plus an index ordered by `renew_at` so that dropping stale entries and
/// evicting the entry due soonest are both O(log n) per entry touched, never a scan.
#[derive(Default)]
pub(crate) struct Entries {
    map: HashMap<CacheKey, Entry>,
    /// `(renew_at, insertion sequence)` → key. The sequence breaks ties between equal `renew_at`
    /// moments (the older entry goes first) and keeps index keys unique.
    by_renew_at: BTreeMap<(SystemTime, u64), CacheKey>,
    next_seq: u64,
}

struct Entry {
    token: CachedToken,
    seq: u64,
}

impl Entry {
    fn index_key(&self) -> (SystemTime, u64) {
        (self.token.renew_at(), self.seq)
    }
}

impl Entries {
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<&CachedToken> {
        self.map.get(key).map(|e| &e.token)
    }

    /// Stores `token` under `key`, keeping at most `max_entries` entries.
    ///
    /// A token that is no longer fresh at `now` replaces the old entry by removing it: storing it
    /// would only make an entry `get` never returns.
    pub(crate) fn insert(
        &mut self,
        key: &CacheKey,
        token: &CachedToken,
        max_entries: usize,
        now: SystemTime,
    ) {
        if !token.is_fresh(now) {
            self.remove(key);
            return;
        }
        if max_entries == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let entry = Entry {
            token: token.clone(),
            seq,
        };
        if let Some(old) = self.map.get_mut(key) {
            // Replacing an entry does not grow the store, so nothing is evicted for it.
            self.by_renew_at.remove(&old.index_key());
            self.by_renew_at.insert(entry.index_key(), key.clone());
            *old = entry;
            return;
        }
        if self.map.len() >= max_entries {
            self.purge_stale(now);
            while self.map.len() >= max_entries {
                if !self.evict_earliest() {
                    break;
                }
            }
        }
        self.by_renew_at.insert(entry.index_key(), key.clone());
        self.map.insert(key.clone(), entry);
    }

    pub(crate) fn remove(&mut self, key: &CacheKey) -> Option<CachedToken> {
        let entry = self.map.remove(key)?;
        self.by_renew_at.remove(&entry.index_key());
        Some(entry.token)
    }

    /// Drops every entry whose cache lifetime ended at `now`; returns how many.
    ///
    /// Stale entries are exactly the front of the `renew_at` index, so this touches only them.
    pub(crate) fn purge_stale(&mut self, now: SystemTime) -> usize {
        let mut dropped = 0;
        while let Some(entry) = self.by_renew_at.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.map.remove(&key);
            dropped += 1;
        }
        dropped
    }

    /// Evicts the entry with the earliest `renew_at`; returns whether there was one.
    fn evict_earliest(&mut self) -> bool {
        match self.by_renew_at.pop_first() {
            Some((_, key)) => {
                self.map.remove(&key);
                true
            }
            None => false,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.by_renew_at.clear();
    }

    #[cfg(test)]
    fn is_consistent(&self) -> bool {
        self.map.len() == self.by_renew_at.len()
            && self
                .by_renew_at
                .iter()
                .all(|(ix, key)| self.map.get(key).is_some_and(|e| e.index_key() == *ix))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use tokenwarden_core::{AccessToken, TokenType};

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn token(value: &str, renew_at: u64) -> CachedToken {
        let t = AccessToken::new(value, TokenType::Bearer).unwrap();
        CachedToken::new(t, at(renew_at + 60), at(renew_at))
    }

    fn key(name: &str) -> CacheKey {
        CacheKey::builder(name).build()
    }

    #[test]
    fn index_stays_in_step_with_the_map() {
        let mut e = Entries::default();
        let now = at(0);
        for i in 0..50u64 {
            e.insert(
                &key(&format!("k{}", i % 7)),
                &token("t", 10 + i % 5),
                4,
                now,
            );
            assert!(e.is_consistent());
            assert!(e.len() <= 4);
        }
        e.insert(&key("k1"), &token("t", 0), 4, now);
        assert!(e.is_consistent());
        let before = e.len();
        let dropped = e.purge_stale(at(12));
        assert_eq!(e.len(), before - dropped);
        assert!(e.by_renew_at.keys().all(|(renew_at, _)| *renew_at > at(12)));
        assert_eq!(e.purge_stale(at(12)), 0);
        assert!(e.is_consistent());
        e.remove(&key("k2"));
        assert!(e.is_consistent());
        e.clear();
        assert!(e.is_consistent());
        assert_eq!(e.len(), 0);
    }

    #[test]
    fn equal_renew_at_evicts_the_older_entry() {
        let mut e = Entries::default();
        e.insert(&key("first"), &token("a", 10), 2, at(0));
        e.insert(&key("second"), &token("b", 10), 2, at(0));
        e.insert(&key("third"), &token("c", 10), 2, at(0));
        assert!(e.get(&key("first")).is_none());
        assert!(e.get(&key("second")).is_some());
        assert!(e.get(&key("third")).is_some());
    }
}
