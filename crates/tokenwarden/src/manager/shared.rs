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
                    let mut held = HeldLease {
                        cache: self.cache.clone(),
                        key: key.clone(),
                        lease: Some(lease),
                    };
                    // Another replica may have stored its token just before this one got the lease.
                    let found = match self.get(key, &accept).await {
                        Some(entry) if !force => Ok(Found::Shared(entry)),
                        _ => self.fetch_and_put(key, fetch).await,
                    };
                    if let Some(lease) = held.lease.take() {
                        self.bounded(self.cache.release_lease(key, &lease), "release_lease")
                            .await;
                    }
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

/// A lease this replica holds; if the fetch is abandoned (its caller dropped the future), the
/// lease is released in the background instead of making other replicas wait out its TTL.
struct HeldLease {
    cache: Arc<dyn TokenCache>,
    key: CacheKey,
    lease: Option<Lease>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cache, key) = (self.cache.clone(), self.key.clone());
            runtime.spawn(async move {
                let release = cache.release_lease(&key, &lease);
                let _ = tokio::time::timeout(Duration::from_secs(1), release).await;
            });
        }
    }
}
