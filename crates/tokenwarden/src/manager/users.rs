//! Signed-in users' tokens: kept in the user token store, refreshed with the user's refresh
//! token, one refresh per user and client across replicas (a lease in the store), the rotated
//! tokens stored with a compare-and-swap before the access token is handed out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokenwarden_core::{CacheKey, Lease, UserTokenStore, UserTokens};
use tokio::time::Instant;

use super::slot::Entry;

/// The store, and how long a refresh may hold its lease and others wait for it.
#[derive(Clone, Debug)]
pub(crate) struct UserStore {
    pub(crate) store: Arc<dyn UserTokenStore>,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_wait: Duration,
}

/// Why no token could be had for a user.
pub(crate) enum UserFailure {
    /// The store failed: the user's tokens are unknown, not gone.
    Store(tokenwarden_core::Error),
    /// Nothing is stored for the user: they never signed in, or signed out.
    NotSignedIn,
    /// The access token can no longer be used and there is no refresh token.
    NoRefreshToken,
    /// The refresh failed, and the stored tokens are kept (a transport error, a 5xx).
    Refresh(super::renewal::Stop),
    /// The server refused the refresh token (`invalid_grant`: expired, revoked, reused); the
    /// stored tokens were removed.
    Refused(tokenwarden_oauth::Error),
}

/// What a refresh made of a response: the user's new tokens and the slot's entry for them.
pub(crate) type Refreshed = (UserTokens, Entry);

impl UserStore {
    /// A token for the user of `key`: the stored access token if `accept` takes it (unless
    /// `force`), else a refresh by `refresh`, which gets the stored tokens and returns the new
    /// ones. With a lease, one replica refreshes and the others read the rotated tokens;
    /// without one (or once the wait is over) a caller refreshes with the latest stored token.
    pub(crate) async fn get_or_refresh<Fut>(
        &self,
        key: &CacheKey,
        force: bool,
        deadline: Instant,
        accept: impl Fn(&UserTokens) -> Option<Entry>,
        refresh: impl Fn(UserTokens) -> Fut,
    ) -> Result<(Entry, bool), UserFailure>
    where
        Fut: Future<Output = Result<Refreshed, UserFailure>>,
    {
        let stored = self.read(key).await?;
        if !force && let Some(entry) = accept(&stored) {
            return Ok((entry, false));
        }
        let wait_until = deadline.min(
            Instant::now()
                .checked_add(self.lease_wait)
                .unwrap_or(deadline),
        );
        let mut seen = stored;
        let mut backoff = Duration::from_millis(5);
        loop {
            // A lease that cannot be had (the store failed) does not stop the refresh: the
            // refresh token is still in hand, and the store's compare-and-swap keeps rotation safe.
            let lease = self
                .store
                .try_lease(key, self.lease_ttl)
                .await
                .unwrap_or(Lease::NotShared);
            match lease {
                Lease::HeldElsewhere if Instant::now() < wait_until => {
                    let next = Instant::now()
                        .checked_add(backoff)
                        .map_or(wait_until, |at| at.min(wait_until));
                    tokio::time::sleep_until(next).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                    let now_stored = self.read(key).await?;
                    // Another replica rotated the tokens: theirs answer this caller too.
                    if now_stored.refresh_token() != seen.refresh_token()
                        && let Some(entry) = accept(&now_stored)
                    {
                        return Ok((entry, false));
                    }
                    seen = now_stored;
                }
                Lease::Acquired(_) => {
                    let result = self
                        .refresh_holding_lease(key, force, &seen, &accept, &refresh)
                        .await;
                    if let Err(error) = self.store.release_lease(key, &lease).await {
                        tracing::debug!(%key, %error, "could not release a refresh lease; it expires by itself");
                    }
                    return result;
                }
                Lease::HeldElsewhere | Lease::NotShared => {
                    return self
                        .refresh_holding_lease(key, force, &seen, &accept, &refresh)
                        .await;
                }
            }
        }
    }

    /// With the lease (or none to take): tokens another replica stored just before are used;
    /// else a refresh.
    async fn refresh_holding_lease<Fut>(
        &self,
        key: &CacheKey,
        force: bool,
        seen: &UserTokens,
        accept: &impl Fn(&UserTokens) -> Option<Entry>,
        refresh: &impl Fn(UserTokens) -> Fut,
    ) -> Result<(Entry, bool), UserFailure>
    where
        Fut: Future<Output = Result<Refreshed, UserFailure>>,
    {
        let latest = self.read(key).await?;
        let rotated_meanwhile = latest.refresh_token() != seen.refresh_token();
        if (!force || rotated_meanwhile)
            && let Some(entry) = accept(&latest)
        {
            return Ok((entry, false));
        }
        self.rotate(key, latest, refresh).await.map(|e| (e, true))
    }

    /// One refresh with `stored`'s refresh token; the new tokens replace it in the store (only if
    /// it is still stored) before the access token is handed out. A refused refresh token takes
    /// the stored tokens with it.
    async fn rotate<Fut>(
        &self,
        key: &CacheKey,
        stored: UserTokens,
        refresh: &impl Fn(UserTokens) -> Fut,
    ) -> Result<Entry, UserFailure>
    where
        Fut: Future<Output = Result<Refreshed, UserFailure>>,
    {
        let Some(old) = stored.refresh_token().cloned() else {
            return Err(UserFailure::NoRefreshToken);
        };
        match refresh(stored).await {
            Ok((tokens, entry)) => {
                match self.store.replace_if(key, &old, &tokens).await {
                    Ok(true) => {}
                    // The stored tokens changed meanwhile (a new sign-in, a replica that refreshed
                    // without a lease): they stay; this caller still has a good access token.
                    Ok(false) => {
                        tracing::warn!(%key, "the user's stored tokens changed during a refresh; keeping the stored ones")
                    }
                    Err(error) => return Err(UserFailure::Store(error)),
                }
                Ok(entry)
            }
            Err(UserFailure::Refused(error)) => match self.store.remove_if(key, &old).await {
                Ok(_) => Err(UserFailure::Refused(error)),
                Err(store) => Err(UserFailure::Store(store)),
            },
            Err(other) => Err(other),
        }
    }

    async fn read(&self, key: &CacheKey) -> Result<UserTokens, UserFailure> {
        match self.store.get(key).await {
            Ok(Some(tokens)) => Ok(tokens),
            Ok(None) => Err(UserFailure::NotSignedIn),
            Err(error) => Err(UserFailure::Store(error)),
        }
    }
}
