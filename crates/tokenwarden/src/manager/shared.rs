//! The shared tier (Redis, or any [`TokenCache`]) behind the in-process slots: read, write,
//! compare-and-invalidate, and the lease that lets one replica fetch for all. Every call is
//! bounded by a timeout, and every failure is a miss: the shared tier can make a fetch
//! unnecessary, never make one fail.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokenwarden_core::{AccessToken, CacheKey, CachedToken, Lease, TokenCache};
use tokio::time::Instant;

use super::slot::Entry;
use crate::Error;

/// A shared cache and how long the manager waits on it.
#[derive(Clone, Debug)]
pub(crate) struct SharedTier {
    pub(crate) cache: Arc<dyn TokenCache>,
    /// The longest any one call may take before it counts as a miss.
    pub(crate) timeout: Duration,
    /// How long a replica may hold the lease to fetch a key's token.
    pub(crate) lease_ttl: Duration,
    /// How long the other replicas wait for that token before fetching their own.
    pub(crate) lease_wait: Duration,
}

/// Where [`SharedTier::get_or_fetch`] found its token.
pub(crate) enum Found {
    /// Another replica's token, from the shared cache.
    Shared(Entry),
    /// Fetched here (and written to the shared cache).
    Fetched(Entry),
}

impl SharedTier {
    /// Runs a call with the timeout; a failure or a timeout is `None`.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, tokenwarden_core::Error>>,
        op: &'static str,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "shared token cache failed; treated as a miss");
                None
            }
            Err(_) => {
                tracing::debug!(op, timeout = ?self.timeout, "shared token cache timed out; treated as a miss");
                None
            }
        }
    }

    /// The token stored under `key`, if `accept` takes it (fresh, valid, not rejected).
    async fn get(
        &self,
        key: &CacheKey,
        accept: &impl Fn(CachedToken) -> Option<Entry>,
    ) -> Option<Entry> {
        self.bounded(self.cache.get(key), "get")
            .await
            .flatten()
            .and_then(accept)
    }

    /// Compare-and-invalidate: removes the stored token only if it is still `token`.
    pub(crate) async fn remove_if(&self, key: &CacheKey, token: &AccessToken) {
        self.bounded(self.cache.remove_if(key, token), "remove_if")
            .await;
    }

    /// A token for `key` with one fetch across replicas: the stored one if `accept` takes it
    /// (unless `force`); else the replica that gets the lease runs `fetch` and stores the result
    /// while the others wait for it, up to the lease wait and `deadline`, then fetch themselves.
    pub(crate) async fn get_or_fetch<Fut>(
        &self,
        key: &CacheKey,
        force: bool,
        deadline: Instant,
        accept: impl Fn(CachedToken) -> Option<Entry>,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Found, Error>
    where
        Fut: Future<Output = Result<Entry, Error>>,
    {
        if !force && let Some(entry) = self.get(key, &accept).await {
            return Ok(Found::Shared(entry));
        }
        let wait_until = deadline.min(
            Instant::now()
                .checked_add(self.lease_wait)
                .unwrap_or(deadline),
        );
        let mut backoff = Duration::from_millis(5);
        loop {
            match self
                .bounded(self.cache.try_lease(key, self.lease_ttl), "try_lease")
                .await
            {
                Some(lease @ Lease::Acquired(_)) => {
                    let held = HeldLease::new(self, key, lease);
                    // Another replica may have stored its token just before this one got the lease.
                    let found = match self.get(key, &accept).await {
                        Some(entry) if !force => Ok(Found::Shared(entry)),
                        _ => self.fetch_and_put(key, fetch).await,
                    };
                    held.release(self).await;
                    return found;
                }
                Some(Lease::HeldElsewhere) if Instant::now() < wait_until => {
                    let next = Instant::now()
                        .checked_add(backoff)
                        .map_or(wait_until, |at| at.min(wait_until));
                    tokio::time::sleep_until(next).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                    if let Some(entry) = self.get(key, &accept).await {
                        return Ok(Found::Shared(entry));
                    }
                }
                Some(Lease::HeldElsewhere) => {
                    tracing::debug!(%key, "gave up waiting for another replica's token");
                    return self.fetch_and_put(key, fetch).await;
                }
                Some(Lease::NotShared) | None => return self.fetch_and_put(key, fetch).await,
            }
        }
    }

    async fn fetch_and_put<Fut>(
        &self,
        key: &CacheKey,
        fetch: impl FnOnce() -> Fut,
    ) -> Result<Found, Error>
    where
        Fut: Future<Output = Result<Entry, Error>>,
    {
        let entry = fetch().await?;
        self.bounded(self.cache.put(key, &entry.cached), "put")
            .await;
        Ok(Found::Fetched(entry))
    }
}

/// A lease this replica holds. It is given back when the fetch is done; if that release gets no
/// answer, or the fetch is abandoned (its caller dropped the future), it is released in the
/// background instead, retried until the cache answers or the lease has expired by itself, so
/// other replicas do not wait out its TTL once the cache works again.
struct HeldLease {
    cache: Arc<dyn TokenCache>,
    key: CacheKey,
    lease: Option<Lease>,
    /// The bound on each release attempt.
    timeout: Duration,
    /// By then the lease has expired by itself (it was granted before this was computed), so no
    /// release is tried after it.
    expires: Instant,
}

/// First and longest pause between background attempts to release a lease.
const RELEASE_RETRY_MIN: Duration = Duration::from_millis(20);
const RELEASE_RETRY_MAX: Duration = Duration::from_millis(500);

impl HeldLease {
    fn new(tier: &SharedTier, key: &CacheKey, lease: Lease) -> Self {
        let now = Instant::now();
        HeldLease {
            cache: tier.cache.clone(),
            key: key.clone(),
            lease: Some(lease),
            timeout: tier.timeout,
            expires: now.checked_add(tier.lease_ttl).unwrap_or(now),
        }
    }

    /// Gives the lease back now; without an answer, `Drop` keeps trying in the background.
    async fn release(mut self, tier: &SharedTier) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let released = tier
            .bounded(self.cache.release_lease(&self.key, &lease), "release_lease")
            .await;
        if released.is_none() {
            self.lease = Some(lease);
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Outside a runtime nothing can run: the lease ends with its TTL.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (cache, key, timeout) = (self.cache.clone(), self.key.clone(), self.timeout);
        let retry = async move {
            let mut backoff = RELEASE_RETRY_MIN;
            loop {
                let release = cache.release_lease(&key, &lease);
                if let Ok(Ok(())) = tokio::time::timeout(timeout, release).await {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RELEASE_RETRY_MAX);
            }
        };
        let expires = self.expires;
        runtime.spawn(async move {
            let _ = tokio::time::timeout_at(expires, retry).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokenwarden_core::{BoxFuture, Error as CacheError};

    /// A shared cache whose lease releases fail (no answer) a number of times, then succeed.
    #[derive(Debug, Default)]
    struct FlakyReleases {
        failures_left: AtomicUsize,
        attempts: AtomicUsize,
        released: AtomicUsize,
    }

    impl TokenCache for FlakyReleases {
        fn get<'a>(
            &'a self,
            _: &'a CacheKey,
        ) -> BoxFuture<'a, Result<Option<CachedToken>, CacheError>> {
            Box::pin(async { Ok(None) })
        }
        fn put<'a>(
            &'a self,
            _: &'a CacheKey,
            _: &'a CachedToken,
        ) -> BoxFuture<'a, Result<(), CacheError>> {
            Box::pin(async { Ok(()) })
        }
        fn remove<'a>(&'a self, _: &'a CacheKey) -> BoxFuture<'a, Result<(), CacheError>> {
            Box::pin(async { Ok(()) })
        }
        fn release_lease<'a>(
            &'a self,
            _: &'a CacheKey,
            _: &'a Lease,
        ) -> BoxFuture<'a, Result<(), CacheError>> {
            Box::pin(async {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                let failing = self
                    .failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    return Err(CacheError::CacheTimeout(Duration::from_millis(100)));
                }
                self.released.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    fn tier(cache: Arc<FlakyReleases>, lease_ttl: Duration) -> SharedTier {
        SharedTier {
            cache,
            timeout: Duration::from_millis(100),
            lease_ttl,
            lease_wait: Duration::from_secs(5),
        }
    }

    fn lease() -> Lease {
        Lease::Acquired("this-replica".into())
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_release_is_retried_in_the_background_until_it_is_answered() {
        let cache = Arc::new(FlakyReleases {
            failures_left: AtomicUsize::new(3),
            ..FlakyReleases::default()
        });
        let tier = tier(cache.clone(), Duration::from_secs(30));
        let key = CacheKey::builder("c").build();
        HeldLease::new(&tier, &key, lease()).release(&tier).await;
        assert_eq!(cache.released.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(cache.released.load(Ordering::SeqCst), 1);
        assert_eq!(cache.attempts.load(Ordering::SeqCst), 4);
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_lease_is_released_and_an_answered_release_is_not_repeated() {
        let cache = Arc::new(FlakyReleases::default());
        let tier = tier(cache.clone(), Duration::from_secs(30));
        let key = CacheKey::builder("c").build();
        drop(HeldLease::new(&tier, &key, lease()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(cache.released.load(Ordering::SeqCst), 1);
        HeldLease::new(&tier, &key, lease()).release(&tier).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(cache.attempts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn background_releases_stop_when_the_lease_has_expired() {
        let cache = Arc::new(FlakyReleases {
            failures_left: AtomicUsize::new(usize::MAX),
            ..FlakyReleases::default()
        });
        let ttl = Duration::from_secs(2);
        let tier = tier(cache.clone(), ttl);
        let key = CacheKey::builder("c").build();
        HeldLease::new(&tier, &key, lease()).release(&tier).await;
        tokio::time::sleep(ttl).await;
        let attempts = cache.attempts.load(Ordering::SeqCst);
        assert!(attempts > 2, "retried while the lease lived: {attempts}");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(cache.attempts.load(Ordering::SeqCst), attempts);
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0
        );
    }

    #[test]
    fn a_lease_dropped_outside_a_runtime_does_not_panic() {
        let cache = Arc::new(FlakyReleases::default());
        let tier = tier(cache.clone(), Duration::from_secs(30));
        drop(HeldLease::new(
            &tier,
            &CacheKey::builder("c").build(),
            lease(),
        ));
        assert_eq!(cache.attempts.load(Ordering::SeqCst), 0);
    }
}
