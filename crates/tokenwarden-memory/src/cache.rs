use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokenwarden_core::{
    AccessToken, BoxFuture, CacheKey, CachedToken, Clock, Error, Lease, SystemClock, TokenCache,
};

use crate::entries::Entries;
use crate::leases::Leases;

/// A bounded, TTL-aware in-memory [`TokenCache`] with in-process refresh leases.
///
/// - [`get`](TokenCache::get) returns an entry only while it is fresh by the cache's clock
///   ([`CachedToken::is_fresh`]); an entry found stale is dropped.
/// - [`put`](TokenCache::put) keeps at most `max_entries` entries: when full, it first drops the
///   entries whose cache lifetime ended, then evicts the entry with the earliest
///   [`renew_at`](CachedToken::renew_at) (the older one on a tie). Both steps use an index ordered by
///   `renew_at`, so a put costs O(log n) and never scans the store. A token that is already stale
///   is not stored (it replaces the old entry by removing it).
/// - [`remove_if`](TokenCache::remove_if) compares and removes under one lock: of many callers
///   invalidating the same failed token, exactly one sees `true`.
/// - [`try_lease`](TokenCache::try_lease) hands out real in-process leases, so several token
///   managers sharing one `MemoryTokenCache` make one token request between them. A lease expires
///   after its ttl by the cache's clock and is released only by its owner.
///
/// Clones share the same store. Locks are held only for a few map operations and never across an
/// `.await`; a lock poisoned by a panicking thread is recovered, since no operation leaves the store
/// half-updated.
#[derive(Clone)]
pub struct MemoryTokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    max_entries: usize,
    clock: Arc<dyn Clock>,
    entries: RwLock<Entries>,
    // Apart from `entries`, so lease traffic never blocks token lookups.
    leases: Mutex<Leases>,
}

impl MemoryTokenCache {
    /// The bound [`MemoryTokenCache::default`] uses.
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

    /// A cache holding at most `max_entries` tokens, timed by the system clock.
    ///
    /// With `max_entries == 0` it stores nothing and offers no leases.
    pub fn new(max_entries: usize) -> Self {
        MemoryTokenCache::with_clock(max_entries, SystemClock)
    }

    /// A cache holding at most `max_entries` tokens, timed by `clock` (a
    /// [`ManualClock`](tokenwarden_core::ManualClock) in tests).
    pub fn with_clock(max_entries: usize, clock: impl Clock) -> Self {
        MemoryTokenCache {
            inner: Arc::new(Inner {
                max_entries,
                clock: Arc::new(clock),
                entries: RwLock::new(Entries::default()),
                leases: Mutex::new(Leases::default()),
            }),
        }
    }

    /// The most tokens this cache holds.
    pub fn max_entries(&self) -> usize {
        self.inner.max_entries
    }

    /// How many fresh tokens the cache holds (entries whose cache lifetime ended are dropped first).
    pub fn len(&self) -> usize {
        let now = self.inner.clock.now();
        let mut entries = self.inner.write_entries();
        entries.purge_stale(now);
        entries.len()
    }

    /// Whether the cache holds no fresh token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every token. Leases are kept: fetches in flight stay single.
    pub fn clear(&self) {
        self.inner.write_entries().clear();
    }

    fn get_now(&self, key: &CacheKey) -> Option<CachedToken> {
        let now = self.inner.clock.now();
        {
            let entries = self.inner.read_entries();
            match entries.get(key) {
                None => return None,
                Some(token) if token.is_fresh(now) => return Some(token.clone()),
                Some(_) => {}
            }
        }
        // Stale: drop it, unless a writer replaced it with a fresh token since the read lock.
        let mut entries = self.inner.write_entries();
        match entries.get(key) {
            Some(token) if token.is_fresh(now) => Some(token.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put_now(&self, key: &CacheKey, token: &CachedToken) {
        let now = self.inner.clock.now();
        self.inner
            .write_entries()
            .insert(key, token, self.inner.max_entries, now);
    }

    fn remove_now(&self, key: &CacheKey) {
        self.inner.write_entries().remove(key);
    }

    fn remove_if_now(&self, key: &CacheKey, token: &AccessToken) -> bool {
        let now = self.inner.clock.now();
        let mut entries = self.inner.write_entries();
        match entries.get(key) {
            // A stale entry counts as absent, as it does for `get`: it is dropped, not "invalidated".
            Some(current) if !current.is_fresh(now) => {
                entries.remove(key);
                false
            }
            Some(current) if current.token().secret() == token.secret() => {
                entries.remove(key);
                true
            }
            _ => false,
        }
    }

    fn try_lease_now(&self, key: &CacheKey, ttl: Duration) -> Lease {
        if self.inner.max_entries == 0 {
            // Nothing fetched would be shared through this cache, so waiting on a lease holder
            // would only delay the others: let everyone fetch directly.
            return Lease::NotShared;
        }
        let now = self.inner.clock.now();
        match self.inner.lock_leases().try_acquire(key, ttl, now) {
            Some(owner) => Lease::Acquired(owner),
            None => Lease::HeldElsewhere,
        }
    }

    fn release_lease_now(&self, key: &CacheKey, lease: &Lease) {
        if let Lease::Acquired(owner) = lease {
            self.inner.lock_leases().release(key, owner);
        }
    }
}

impl Inner {
    // Poisoning is recovered from: every mutation of `Entries` and `Leases` keeps them consistent
    // at each step that could panic (only allocation can), so the data is still usable.
    fn read_entries(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_entries(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_leases(&self) -> MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryTokenCache {
    /// A cache of [`MemoryTokenCache::DEFAULT_MAX_ENTRIES`] tokens, timed by the system clock.
    fn default() -> Self {
        MemoryTokenCache::new(MemoryTokenCache::DEFAULT_MAX_ENTRIES)
    }
}

// Shows the bound, the entry count and the clock; never the tokens.
impl fmt::Debug for MemoryTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemoryTokenCache");
        d.field("max_entries", &self.max_entries);
        // `try_read`: printing must never wait on (or deadlock with) a writer.
        if let Ok(entries) = self.entries.try_read() {
            d.field("entries", &entries.len());
        }
        d.field("clock", &self.clock).finish()
    }
}

// Every method does its work when polled, in a synchronous helper, so no lock guard lives in the
// future and the futures stay `Send`.
impl TokenCache for MemoryTokenCache {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<CachedToken>, Error>> {
        Box::pin(async move { Ok(self.get_now(key)) })
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a CachedToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.put_now(key, token);
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.remove_now(key);
            Ok(())
        })
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move { Ok(self.remove_if_now(key, token)) })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(async move { Ok(self.try_lease_now(key, ttl)) })
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.release_lease_now(key, lease);
            Ok(())
        })
    }
}
