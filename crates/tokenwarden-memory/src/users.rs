use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokenwarden_core::{BoxFuture, CacheKey, Error, Secret, UserTokenStore, UserTokens};

/// An in-process [`UserTokenStore`]: signed-in users' tokens for one process (a single
/// instance, or tests). Replicas that serve the same users share a store such as Redis
/// instead.
///
/// One record per key: storing replaces, and compare-and-swap ([`replace_if`]) and
/// compare-and-remove ([`remove_if`]) happen under one lock. It holds at most `max_users`
/// records; when full, a new sign-in evicts the record whose access token expires first (that
/// user signs in again). Clones share the same store.
///
/// [`replace_if`]: UserTokenStore::replace_if
/// [`remove_if`]: UserTokenStore::remove_if
#[derive(Clone)]
pub struct MemoryUserTokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    max_users: usize,
    records: Mutex<HashMap<CacheKey, UserTokens>>,
}

impl MemoryUserTokenStore {
    /// The bound [`MemoryUserTokenStore::default`] uses.
    pub const DEFAULT_MAX_USERS: usize = 100_000;

    /// A store holding at most `max_users` records (at least one).
    pub fn new(max_users: usize) -> Self {
        MemoryUserTokenStore {
            inner: Arc::new(Inner {
                max_users: max_users.max(1),
                records: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn records(&self) -> MutexGuard<'_, HashMap<CacheKey, UserTokens>> {
        // Every operation leaves the map whole; a panic elsewhere cannot break it half-way.
        self.inner
            .records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryUserTokenStore {
    fn default() -> Self {
        MemoryUserTokenStore::new(Self::DEFAULT_MAX_USERS)
    }
}

impl fmt::Debug for MemoryUserTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryUserTokenStore")
            .field("users", &self.len())
            .field("max_users", &self.inner.max_users)
            .finish()
    }
}

fn holds(tokens: &UserTokens, expected: &Secret) -> bool {
    tokens.refresh_token() == Some(expected)
}

impl UserTokenStore for MemoryUserTokenStore {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<UserTokens>, Error>> {
        let found = self.records().get(key).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let mut records = self.records();
        if records.len() >= self.inner.max_users && !records.contains_key(key) {
            let first_to_expire = records
                .iter()
                .min_by_key(|(_, t)| t.access_token().expires_at())
                .map(|(k, _)| k.clone());
            if let Some(evicted) = first_to_expire {
                records.remove(&evicted);
            }
        }
        records.insert(key.clone(), tokens.clone());
        Box::pin(async { Ok(()) })
    }

    fn replace_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let mut records = self.records();
        let replaced = match records.get_mut(key) {
            Some(stored) if holds(stored, expected) => {
                *stored = tokens.clone();
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(replaced) })
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>> {
        self.records().remove(key);
        Box::pin(async { Ok(()) })
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let mut records = self.records();
        let removed = records.get(key).is_some_and(|t| holds(t, expected));
        if removed {
            records.remove(key);
        }
        Box::pin(async move { Ok(removed) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};
    use tokenwarden_core::{AccessToken, TokenType};

    fn tokens(access: &str, refresh: &str, expires_in: u64) -> UserTokens {
        let token = AccessToken::new(access, TokenType::Bearer)
            .unwrap()
            .with_expires_at(SystemTime::now() + Duration::from_secs(expires_in));
        UserTokens::new(token, Some(Secret::new(refresh)))
    }

    fn key(user: &str) -> CacheKey {
        CacheKey::builder("web").hashed_part("user", user).build()
    }

    #[tokio::test]
    async fn rotation_replaces_only_the_expected_refresh_token() {
        let store = MemoryUserTokenStore::default();
        store
            .put(&key("alice"), &tokens("a1", "r1", 60))
            .await
            .unwrap();
        let rotated = tokens("a2", "r2", 60);
        assert!(
            !store
                .replace_if(&key("alice"), &Secret::new("r0"), &rotated)
                .await
                .unwrap()
        );
        assert!(
            store
                .replace_if(&key("alice"), &Secret::new("r1"), &rotated)
                .await
                .unwrap()
        );
        assert_eq!(store.get(&key("alice")).await.unwrap(), Some(rotated));
        assert!(
            !store
                .remove_if(&key("alice"), &Secret::new("r1"))
                .await
                .unwrap()
        );
        assert!(
            store
                .remove_if(&key("alice"), &Secret::new("r2"))
                .await
                .unwrap()
        );
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_new_sign_in_replaces_the_old_record_and_the_bound_holds() {
        let store = MemoryUserTokenStore::new(2);
        store
            .put(&key("alice"), &tokens("a1", "r1", 60))
            .await
            .unwrap();
        store
            .put(&key("alice"), &tokens("a2", "r2", 60))
            .await
            .unwrap();
        assert_eq!(store.len(), 1, "one record per user and client");
        store
            .put(&key("bob"), &tokens("b1", "s1", 10))
            .await
            .unwrap();
        store
            .put(&key("carol"), &tokens("c1", "t1", 60))
            .await
            .unwrap();
        assert_eq!(store.len(), 2);
        assert!(
            store.get(&key("bob")).await.unwrap().is_none(),
            "the first to expire went"
        );
        store.remove(&key("alice")).await.unwrap();
        assert!(store.get(&key("alice")).await.unwrap().is_none());
    }
}
