//! [`RedisTokenCache`]: the [`TokenCache`] implementation over Redis.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokenwarden_core::{
    AccessToken, BoxFuture, CacheKey, CachedToken, Clock, Error, Lease, TokenCache,
};

use crate::RedisTokenCacheBuilder;
use crate::connection::{CallError, Connection};
use crate::envelope;

/// Deletes `KEYS[1]` only if its value starts with the fingerprint `ARGV[1]` followed by `|`.
/// `pcall` so a key holding another type is simply "not ours" instead of a script error.
const REMOVE_IF_FINGERPRINT: &str = r"
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'string' and string.sub(v, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// A [`TokenCache`] in Redis, shared by every replica that points at the same server and prefix.
///
/// Built with [`RedisTokenCache::builder`]. Cloning is cheap and clones share the connection and
/// the circuit breaker.
///
/// A Redis outage never fails a request: every call is bounded by the operation timeout, errors
/// come back as [`Error::Cache`] / [`Error::CacheTimeout`] (which the token manager treats as a
/// miss), and after a few consecutive failures a circuit breaker makes calls fail immediately
/// for a cool-down, so a dead Redis costs no per-request wait. Entries that are corrupt, of an
/// unknown format version, undecryptable or no longer fresh are misses (`Ok(None)`).
///
/// A lease request that got no answer (a stalled Redis still runs it when it resumes) leaves a
/// background task that releases the lease it may have created as soon as Redis answers again,
/// so other replicas do not wait for a lease nobody holds.
#[derive(Clone)]
pub struct RedisTokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Arc<Connection>,
    clock: Arc<dyn Clock>,
    remove_if_script: Script,
}

impl RedisTokenCache {
    /// Starts building a cache for `url`: `redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS (feature `tls-rustls`, on by default).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenwarden_redis::RedisTokenCache;
    ///
    /// # fn main() -> Result<(), tokenwarden_redis::Error> {
    /// let cache = RedisTokenCache::builder("redis://:secret@127.0.0.1:6379")
    ///     .key_prefix("billing-service:")
    ///     .op_timeout(Duration::from_millis(100))
    ///     .build()?; // does not connect yet
    /// assert!(!format!("{cache:?}").contains("secret"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: &str) -> RedisTokenCacheBuilder {
        RedisTokenCacheBuilder::new(url)
    }

    pub(crate) fn new(redis: Connection, clock: Arc<dyn Clock>) -> Self {
        RedisTokenCache {
            inner: Arc::new(Inner {
                redis: Arc::new(redis),
                clock,
                remove_if_script: Script::new(REMOVE_IF_FINGERPRINT),
            }),
        }
    }

    /// Whether Redis calls currently go through: `false` while the circuit breaker is open (or
    /// probing), when calls fail immediately without touching the network.
    pub fn is_available(&self) -> bool {
        self.inner.redis.is_available()
    }

    /// The Redis key an entry for `key` is stored under: the prefix followed by the key's text.
    /// Useful to inspect raw values in tests and operations.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        self.inner.redis.redis_key(key)
    }

    /// Turns a stored value back into a token, or explains why it is a miss.
    fn decode(&self, redis_key: &str, value: &[u8]) -> Result<CachedToken, Cow<'static, str>> {
        let (fingerprint, payload) = envelope::split(value).ok_or("corrupt entry")?;
        let json = self.inner.redis.open(redis_key, payload)?;
        let cached = envelope::decode(&json).map_err(|e| match e {
            envelope::DecodeError::UnknownVersion(v) => {
                Cow::Owned(format!("unknown envelope version {v}"))
            }
            other => Cow::Borrowed(other.as_str()),
        })?;
        if envelope::fingerprint(cached.token().expose_secret()).as_bytes() != fingerprint {
            return Err("entry fingerprint does not match its token".into());
        }
        Ok(cached)
    }
}

impl fmt::Debug for RedisTokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisTokenCache");
        self.inner.redis.debug_fields(&mut debug);
        debug
            .field("clock", &self.inner.clock)
            .finish_non_exhaustive()
    }
}

impl TokenCache for RedisTokenCache {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<CachedToken>, Error>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let rk = redis_key.as_str();
            let value: Option<Vec<u8>> = self
                .inner
                .redis
                .call("GET", |mut con| async move {
                    let reply = redis::cmd("GET").arg(rk).query_async(&mut con).await;
                    match reply {
                        // Someone stored another type under our key: a corrupt entry, not an outage.
                        Err(e) if e.code() == Some("WRONGTYPE") => {
                            tracing::warn!(key = %key, "ignoring redis token cache entry of the wrong type");
                            Ok(None)
                        }
                        other => other,
                    }
                })
                .await
                .map_err(CallError::into_cache_error)?;
            let Some(value) = value else {
                return Ok(None);
            };
            let cached = match self.decode(&redis_key, &value) {
                Ok(cached) => cached,
                Err(reason) => {
                    // The key is safe to log: secret inputs enter it only as digests.
                    tracing::warn!(key = %key, %reason, "ignoring unusable redis token cache entry");
                    return Ok(None);
                }
            };
            if !cached.is_fresh(self.inner.clock.now()) {
                tracing::debug!(key = %key, "redis token cache entry is due for renewal: miss");
                return Ok(None);
            }
            Ok(Some(cached))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a CachedToken,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let Some(ttl) = token.cache_ttl(self.inner.clock.now()) else {
                return Ok(());
            };
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let redis_key = self.redis_key(key);
            let json = envelope::encode(token)
                .map_err(|e| Error::cache_with("could not serialize the token", e))?;
            let payload = self
                .inner
                .redis
                .seal(&redis_key, json)
                .map_err(|_| Error::cache("could not encrypt the token"))?;
            let value = envelope::join(
                &envelope::fingerprint(token.token().expose_secret()),
                &payload,
            );
            self.inner
                .redis
                .call("SET", |mut con| async move {
                    redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<()>(&mut con)
                        .await
                })
                .await
                .map_err(CallError::into_cache_error)
        })
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            self.inner
                .redis
                .call("DEL", |mut con| async move {
                    redis::cmd("DEL")
                        .arg(&redis_key)
                        .query_async::<()>(&mut con)
                        .await
                })
                .await
                .map_err(CallError::into_cache_error)
        })
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        token: &'a AccessToken,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let fingerprint = envelope::fingerprint(token.expose_secret());
            let script = &self.inner.remove_if_script;
            let deleted: i64 = self
                .inner
                .redis
                .call("remove_if", |mut con| async move {
                    script
                        .key(&redis_key)
                        .arg(&fingerprint)
                        .invoke_async(&mut con)
                        .await
                })
                .await
                .map_err(CallError::into_cache_error)?;
            Ok(deleted == 1)
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(async move {
            self.inner
                .redis
                .try_lease(key, ttl)
                .await
                .map_err(CallError::into_cache_error)
        })
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.inner
                .redis
                .release_lease(key, lease)
                .await
                .map_err(CallError::into_cache_error)
        })
    }
}
