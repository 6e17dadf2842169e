use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{AccessToken, BoxFuture, CacheKey, Error, Lease, Secret};

/// The key an application knows a signed-in user by (a subject, a session id): which user's
/// tokens a request is sent with.
///
/// Put it in a request's extensions (the app's session middleware does) for a layer of a user
/// client. It may be a credential itself (a session id), so `Debug` shows only a short
/// fingerprint, and cache keys and logs hold it only as a SHA-256 digest.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserKey(Arc<str>);

impl UserKey {
    /// The key `key`.
    pub fn new(key: impl Into<Arc<str>>) -> Self {
        UserKey(key.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible fingerprint for logs (first 8 hex digits of the SHA-256).
    pub fn fingerprint(&self) -> String {
        Secret::new(self.0.clone()).fingerprint()
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey({})", self.fingerprint())
    }
}

impl From<&str> for UserKey {
    fn from(key: &str) -> Self {
        UserKey::new(key)
    }
}

impl From<String> for UserKey {
    fn from(key: String) -> Self {
        UserKey::new(key)
    }
}

/// A user's tokens, as sign-in or a refresh returned them: the access token (with its type,
/// expiry and granted scope) and the refresh token, if the server issued one.
///
/// `Debug` shows neither token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserTokens {
    access_token: AccessToken,
    refresh_token: Option<Secret>,
    renew_at: Option<SystemTime>,
}

impl UserTokens {
    /// Tokens a user signed in with, or a refresh returned. Give the access token its expiry
    /// ([`AccessToken::with_expires_at`]) when the server said one (`expires_in`): without it,
    /// the access token is taken as valid until a resource server rejects it.
    pub fn new(access_token: AccessToken, refresh_token: Option<Secret>) -> Self {
        UserTokens {
            access_token,
            refresh_token,
            renew_at: None,
        }
    }

    /// The same tokens, with the moment the access token is due for a refresh. A token manager
    /// sets it when it stores tokens (from the token's lifetime, which the access token's
    /// expiry alone does not tell), so every replica refreshes at the same moment; stores keep
    /// it.
    pub fn with_renew_at(mut self, renew_at: SystemTime) -> Self {
        self.renew_at = Some(renew_at);
        self
    }

    /// When the access token is due for a refresh, if known.
    pub fn renew_at(&self) -> Option<SystemTime> {
        self.renew_at
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The refresh token, if any.
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    /// The same tokens with another access token and, if `refresh_token` is `Some`, a new
    /// refresh token: what a refresh response means (RFC 6749 §6: a response without a refresh
    /// token keeps the old one).
    pub fn refreshed(&self, access_token: AccessToken, refresh_token: Option<Secret>) -> Self {
        UserTokens {
            access_token,
            refresh_token: refresh_token.or_else(|| self.refresh_token.clone()),
            renew_at: None,
        }
    }
}

/// Where users' tokens are kept between requests and between replicas: the memory store
/// (`tokenwarden-memory`), Redis (`tokenwarden-redis`), or your own.
///
/// Unlike a [`TokenCache`](crate::TokenCache), a store holds what cannot be fetched again: a
/// refresh token lost is a user signed out. Its errors reach the caller. Keys are
/// [`CacheKey`]s of one user and one client; one record per key, so storing a user's new
/// tokens replaces the old ones and nothing accumulates.
///
/// A store shared by several processes implements [`replace_if`](Self::replace_if) and
/// [`remove_if`](Self::remove_if) atomically and offers leases, so replicas serving the same
/// user never send the same refresh token twice.
pub trait UserTokenStore: Send + Sync + fmt::Debug + 'static {
    /// The tokens stored for `key`.
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<UserTokens>, Error>>;

    /// Stores `tokens` for `key`, replacing whatever was there (a sign-in).
    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// Rotation: replaces the stored tokens with `tokens` only if the stored refresh token is
    /// still `expected`; returns whether it did.
    fn replace_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// Removes the stored tokens (a sign-out).
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>>;

    /// Removes the stored tokens only if the stored refresh token is still `expected` (a
    /// refresh token the server refused must not take a newer sign-in with it); returns whether
    /// it did.
    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// Asks for the right to refresh `key`'s tokens, for at most `ttl`. The default answers
    /// [`Lease::NotShared`]: in-process single-flight is the manager's job.
    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        let _ = (key, ttl);
        Box::pin(async { Ok(Lease::NotShared) })
    }

    /// Gives back a lease from [`try_lease`](Self::try_lease), only if it is still this
    /// caller's.
    fn release_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let _ = (key, lease);
        Box::pin(async { Ok(()) })
    }
}

impl<T: UserTokenStore + ?Sized> UserTokenStore for Arc<T> {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<UserTokens>, Error>> {
        (**self).get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).put(key, tokens)
    }

    fn replace_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).replace_if(key, expected, tokens)
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>> {
        (**self).remove(key)
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        (**self).remove_if(key, expected)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenType;

    #[test]
    fn a_user_key_shows_only_a_fingerprint() {
        let key = UserKey::new("session-4f9a0c");
        let shown = format!("{key:?}");
        assert!(!shown.contains("session-4f9a0c"), "{shown}");
        assert_eq!(shown, format!("UserKey({})", key.fingerprint()));
    }

    #[test]
    fn a_refresh_without_a_refresh_token_keeps_the_old_one() {
        let token = |v: &str| AccessToken::new(v, TokenType::Bearer).unwrap();
        let signed_in = UserTokens::new(token("a1"), Some(Secret::new("r1")));
        let kept = signed_in.refreshed(token("a2"), None);
        assert_eq!(kept.refresh_token(), Some(&Secret::new("r1")));
        let rotated = signed_in.refreshed(token("a3"), Some(Secret::new("r2")));
        assert_eq!(rotated.refresh_token(), Some(&Secret::new("r2")));
        assert!(!format!("{rotated:?}").contains("r2"));
    }
}
