//! In-process refresh leases: who fetches the next token for a key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokenwarden_core::CacheKey;

/// Below this many held leases, expired ones are left for `try_acquire` to overwrite.
const MIN_PRUNE_AT: usize = 64;

/// Leases by key. A lease nobody releases is dropped once it expired, so a crashed caller cannot
/// block a key for longer than its ttl, and the map cannot grow without bound.
pub(crate) struct Leases {
    held: HashMap<CacheKey, Held>,
    next_id: u64,
    /// When `held` reaches this size, expired leases are pruned (amortized O(1) per acquisition).
    prune_at: usize,
}

struct Held {
    owner: Arc<str>,
    /// `None`: the ttl was too long to represent, so the lease lasts until released.
    until: Option<SystemTime>,
}

impl Held {
    fn is_live(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            held: HashMap::new(),
            next_id: 0,
            prune_at: MIN_PRUNE_AT,
        }
    }
}

impl Leases {
    /// Takes the lease for `key` unless a live one is held; returns the new owner id.
    pub(crate) fn try_acquire(
        &mut self,
        key: &CacheKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Option<Arc<str>> {
        if self.held.get(key).is_some_and(|h| h.is_live(now)) {
            return None;
        }
        if self.held.len() >= self.prune_at {
            self.held.retain(|_, h| h.is_live(now));
            self.prune_at = (self.held.len() * 2).max(MIN_PRUNE_AT);
        }
        self.next_id = self.next_id.wrapping_add(1);
        let owner: Arc<str> = format!("memory-lease-{}", self.next_id).into();
        let held = Held {
            owner: Arc::clone(&owner),
            until: now.checked_add(ttl),
        };
        self.held.insert(key.clone(), held);
        Some(owner)
    }

    /// Releases the lease for `key` if `owner` holds it; returns whether it did.
    pub(crate) fn release(&mut self, key: &CacheKey, owner: &str) -> bool {
        match self.held.get(key) {
            Some(h) if *h.owner == *owner => {
                self.held.remove(key);
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn expired_leases_do_not_pile_up() {
        let mut leases = Leases::default();
        let ttl = Duration::from_secs(1);
        for i in 0..10_000u64 {
            let now = UNIX_EPOCH + Duration::from_secs(i * 2);
            let key = CacheKey::builder(&format!("client-{i}")).build();
            assert!(leases.try_acquire(&key, ttl, now).is_some());
            assert!(leases.len() <= MIN_PRUNE_AT, "{} leases held", leases.len());
        }
    }

    #[test]
    fn a_ttl_too_long_to_represent_lasts_until_released() {
        let mut leases = Leases::default();
        let key = CacheKey::builder("c").build();
        let now = UNIX_EPOCH;
        let owner = leases.try_acquire(&key, Duration::MAX, now).unwrap();
        let much_later = now + Duration::from_secs(100 * 365 * 24 * 3600);
        assert!(
            leases
                .try_acquire(&key, Duration::MAX, much_later)
                .is_none()
        );
        assert!(leases.release(&key, &owner));
        assert!(
            leases
                .try_acquire(&key, Duration::MAX, much_later)
                .is_some()
        );
    }

    #[test]
    fn owner_ids_are_unique() {
        let mut leases = Leases::default();
        let key = CacheKey::builder("c").build();
        let a = leases
            .try_acquire(&key, Duration::ZERO, UNIX_EPOCH)
            .unwrap();
        let b = leases
            .try_acquire(&key, Duration::ZERO, UNIX_EPOCH)
            .unwrap();
        assert_ne!(a, b);
    }
}
