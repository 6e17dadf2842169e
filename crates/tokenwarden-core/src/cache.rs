use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{AccessToken, CacheKey, CachedToken, Error};

/// A boxed, `Send` future: what [`TokenCache`] methods return, so the trait works as `Arc<dyn TokenCache>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The answer to [`TokenCache::try_lease`]: who fetches the next token for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lease {
    /// This caller holds the lease; the value identifies it for [`TokenCache::release_lease`].
    Acquired(Arc<str>),
    /// Another process holds the lease: wait (bounded) for the token to appear in the cache.
    HeldElsewhere,
    /// The backend does not coordinate processes: fetch directly.
    NotShared,
}

/// A token store: the in-memory cache, Redis, or a backend of your own.
///
/// Implement [`get`](TokenCache::get), [`put`](TokenCache::put) and [`remove`](TokenCache::remove);
/// the other methods have defaults that are right for a store only one process uses. A store shared
/// by several processes should implement [`remove_if`](TokenCache::remove_if) atomically and offer
/// leases, so replicas make one token request between them.
///
/// Errors are never shown to the requests that triggered them: the token manager treats a failing
/// cache as a miss and fetches directly. A backend returns entries that are still fresh
/// ([`CachedToken::is_fresh`]) and may drop entries whose cache lifetime ended; a corrupt entry
/// should be reported as a miss (`Ok(None)`), not as an error.
pub trait TokenCache: Send + Sync + fmt::Debug + 'static {
    /// The token stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<CachedToken>, Error>>;

    /// Stores `token` under `key` until its [`renew_at`](CachedToken::renew_at) moment.
    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a CachedToken,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Removes whatever is stored under `key`.
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>>;

    /// Compare-and-invalidate: removes the entry only if it still holds `token`; returns whether it did.
    ///
    /// The default reads, compares and removes in three steps, which is exact for a store one process
    /// uses behind the manager's own serialization; shared stores override it with an atomic operation.
    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            match self.get(key).await? {
                Some(current) if current.token().secret() == token.secret() => {
                    self.remove(key).await?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    /// Asks for the right to fetch the next token for `key`, for at most `ttl`.
    ///
    /// The default answers [`Lease::NotShared`]: in-process single-flight is the manager's job.
    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        let _ = (key, ttl);
        Box::pin(async { Ok(Lease::NotShared) })
    }

    /// Gives back a lease from [`try_lease`](TokenCache::try_lease), only if it is still this caller's.
    fn release_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let _ = (key, lease);
        Box::pin(async { Ok(()) })
    }
}

impl<T: TokenCache + ?Sized> TokenCache for Arc<T> {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<CachedToken>, Error>> {
        (**self).get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a CachedToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).put(key, token)
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>> {
        (**self).remove(key)
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).remove_if(key, token)
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        (**self).try_lease(key, ttl)
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).release_lease(key, lease)
    }
}
