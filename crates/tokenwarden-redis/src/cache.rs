//! [`RedisTokenCache`]: the [`TokenCache`] implementation over Redis.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use tokenwarden_core::{
    AccessToken, BoxFuture, CacheKey, CachedToken, Clock, Error, Lease, TokenCache,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::RedisTokenCacheBuilder;
use crate::breaker::CircuitBreaker;
use crate::encryption::{self, Encryption};
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

/// First and longest pause between attempts to release a lease whose request had no answer.
const LOST_LEASE_RETRY_MIN: Duration = Duration::from_millis(20);
const LOST_LEASE_RETRY_MAX: Duration = Duration::from_millis(500);

/// Deletes the lease `KEYS[1]` only if it is still held by owner `ARGV[1]`.
const RELEASE_IF_OWNER: &str = r"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
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

pub(crate) struct Inner {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    connection: OnceCell<ConnectionManager>,
    /// `host:port`, for Debug: never the URL, which may hold a password.
    endpoint: String,
    key_prefix: String,
    op_timeout: Duration,
    breaker: CircuitBreaker,
    encryption: Option<Encryption>,
    clock: Arc<dyn Clock>,
    remove_if_script: Script,
    release_script: Script,
}

impl Inner {
    #[allow(clippy::too_many_arguments)] // called once, by the builder
    pub(crate) fn new(
        client: redis::Client,
        manager_config: ConnectionManagerConfig,
        endpoint: String,
        key_prefix: String,
        op_timeout: Duration,
        breaker: CircuitBreaker,
        encryption: Option<Encryption>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Inner {
            client,
            manager_config,
            connection: OnceCell::new(),
            endpoint,
            key_prefix,
            op_timeout,
            breaker,
            encryption,
            clock,
            remove_if_script: Script::new(REMOVE_IF_FINGERPRINT),
            release_script: Script::new(RELEASE_IF_OWNER),
        }
    }
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

    pub(crate) fn from_inner(inner: Inner) -> Self {
        RedisTokenCache {
            inner: Arc::new(inner),
        }
    }

    /// Whether Redis calls currently go through: `false` while the circuit breaker is open (or
    /// probing), when calls fail immediately without touching the network.
    pub fn is_available(&self) -> bool {
        self.inner.breaker.is_closed()
    }

    /// The Redis key an entry for `key` is stored under: the prefix followed by the key's text.
    /// Useful to inspect raw values in tests and operations.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.inner.key_prefix, key.as_str())
    }

    /// The Redis key of the refresh lease for `key`.
    fn lease_key(&self, key: &CacheKey) -> String {
        format!("{}{}:lease", self.inner.key_prefix, key.as_str())
    }

    /// Runs one Redis operation behind the circuit breaker and the operation timeout.
    ///
    /// The breaker's probe first makes sure the connection works: after an outage the connection
    /// manager still holds its last failed (or server-closed) connection, and only the command
    /// that meets it makes it reconnect. Sent as the probe, that command would fail and keep the
    /// breaker open for another cool-down although Redis is back; a `PING` meets it instead, and a
    /// second `PING` waits for the fresh connection. Both stay within the operation timeout.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Error>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let inner = &*self.inner;
        let Some(permit) = inner.breaker.try_acquire() else {
            return Err(Error::cache("redis unavailable: circuit breaker open"));
        };
        let probe = permit.is_probe();
        let attempt = async {
            let mut connection = self.connection().await?;
            if probe {
                ping_reconnecting(&mut connection).await?;
            }
            f(connection).await
        };
        match tokio::time::timeout(inner.op_timeout, attempt).await {
            Ok(Ok(value)) => {
                permit.success();
                Ok(value)
            }
            // The connection's own response timeout (the same length) may fire first.
            Ok(Err(e)) if e.is_timeout() => {
                permit.failure();
                tracing::debug!(op, timeout = ?inner.op_timeout, "redis call timed out");
                Err(Error::CacheTimeout(inner.op_timeout))
            }
            Ok(Err(e)) => {
                permit.failure();
                tracing::debug!(op, error = %e, "redis call failed");
                Err(Error::cache_with(
                    Cow::Owned(format!("redis {op} failed")),
                    e,
                ))
            }
            Err(_) => {
                permit.failure();
                tracing::debug!(op, timeout = ?inner.op_timeout, "redis call timed out");
                Err(Error::CacheTimeout(inner.op_timeout))
            }
        }
    }

    /// The shared connection, made on first use.
    async fn connection(&self) -> RedisResult<ConnectionManager> {
        let inner = &*self.inner;
        let connection = inner
            .connection
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(
                    inner.client.clone(),
                    inner.manager_config.clone(),
                )
            })
            .await?;
        Ok(connection.clone())
    }

    /// Compare-and-deletes the lease `lease_key` if `owner` holds it, within the operation timeout
    /// and past the circuit breaker: `Some(true)` if it deleted the lease, `Some(false)` if Redis
    /// answered that `owner` does not hold it, `None` without an answer.
    async fn release_unguarded(&self, lease_key: &str, owner: &str) -> Option<bool> {
        let attempt = async {
            let mut connection = self.connection().await?;
            self.inner
                .release_script
                .key(lease_key)
                .arg(owner)
                .invoke_async::<i64>(&mut connection)
                .await
        };
        match tokio::time::timeout(self.inner.op_timeout, attempt).await {
            Ok(Ok(deleted)) => Some(deleted > 0),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Turns a stored value back into a token, or explains why it is a miss.
    fn decode(&self, redis_key: &str, value: &[u8]) -> Result<CachedToken, Cow<'static, str>> {
        let (fingerprint, payload) = envelope::split(value).ok_or("corrupt entry")?;
        let json = match (
            &self.inner.encryption,
            payload.starts_with(encryption::MAGIC),
        ) {
            (Some(encryption), true) => Cow::Owned(
                encryption
                    .open(redis_key, payload)
                    .map_err(|e| e.as_str())?,
            ),
            (None, true) => {
                return Err("encrypted entry, but no encryption key is configured".into());
            }
            (Some(_), false) => {
                return Err("plaintext entry, but encryption is required".into());
            }
            (None, false) => Cow::Borrowed(payload),
        };
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
        let inner = &*self.inner;
        f.debug_struct("RedisTokenCache")
            .field("endpoint", &inner.endpoint)
            .field("key_prefix", &inner.key_prefix)
            .field("op_timeout", &inner.op_timeout)
            .field("available", &inner.breaker.is_closed())
            .field("encryption", &inner.encryption)
            .field("clock", &inner.clock)
            .finish_non_exhaustive()
    }
}

impl TokenCache for RedisTokenCache {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<CachedToken>, Error>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let rk = redis_key.as_str();
            let value: Option<Vec<u8>> = self
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
                .await?;
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
            let payload = match &self.inner.encryption {
                Some(encryption) => encryption
                    .seal(&redis_key, &json)
                    .map_err(|_| Error::cache("could not encrypt the token"))?,
                None => json,
            };
            let value = envelope::join(
                &envelope::fingerprint(token.token().expose_secret()),
                &payload,
            );
            self.call("SET", |mut con| async move {
                redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut con)
                    .await
            })
            .await
        })
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            self.call("DEL", |mut con| async move {
                redis::cmd("DEL")
                    .arg(&redis_key)
                    .query_async::<()>(&mut con)
                    .await
            })
            .await
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
                .call("remove_if", |mut con| async move {
                    script
                        .key(&redis_key)
                        .arg(&fingerprint)
                        .invoke_async(&mut con)
                        .await
                })
                .await?;
            Ok(deleted == 1)
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(async move {
            let lease_key = self.lease_key(key);
            let owner = new_owner_id();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let set: Option<String> = self
                .call("lease", |mut con| {
                    // From here on the `SET` may reach Redis; until its answer arrives, this
                    // guard stands for the lease it may create.
                    let unanswered = UnansweredLease::new(self, &lease_key, &owner, ttl);
                    let mut command = redis::cmd("SET");
                    command
                        .arg(&lease_key)
                        .arg(&owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms);
                    async move {
                        let reply = command.query_async(&mut con).await;
                        if reply.is_ok() {
                            unanswered.answered();
                        }
                        reply
                    }
                })
                .await?;
            Ok(match set {
                Some(_) => Lease::Acquired(owner.into()),
                None => Lease::HeldElsewhere,
            })
        })
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a CacheKey,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let Lease::Acquired(owner) = lease else {
                return Ok(());
            };
            let lease_key = self.lease_key(key);
            let script = &self.inner.release_script;
            self.call("release_lease", |mut con| async move {
                script
                    .key(&lease_key)
                    .arg(&**owner)
                    .invoke_async::<i64>(&mut con)
                    .await
            })
            .await?;
            Ok(())
        })
    }
}

/// A lease request (`SET NX PX`) whose answer has not arrived, because it timed out, failed on
/// the way back, or its future was dropped (the token manager drops it when its own shared-cache
/// timeout fires).
///
/// Redis may still execute such a request: a stalled server (a pause, a long fork, a `SIGSTOP`)
/// works through its input when it resumes. The lease it creates belongs to an owner id nobody
/// knows, so nobody releases it, and every replica's miss on that key would wait for it until
/// its TTL ends. Unless it was answered, this guard leaves a task behind when dropped that
/// releases the lease if it exists (compare-and-delete for this owner only, so it never touches
/// another replica's lease) as soon as Redis answers again; see [`release_lost_lease`].
///
/// The task is spawned only on a Tokio runtime (outside one, dropping the guard does nothing and
/// the lease ends with its TTL), dies with the runtime, and never outlives the lease's TTL.
struct UnansweredLease {
    cache: RedisTokenCache,
    lease_key: String,
    owner: String,
    /// When a lease from this request would have expired had Redis executed it at once.
    ttl_end: Instant,
    answered: bool,
}

impl UnansweredLease {
    fn new(cache: &RedisTokenCache, lease_key: &str, owner: &str, ttl: Duration) -> Self {
        let now = Instant::now();
        UnansweredLease {
            cache: cache.clone(),
            lease_key: lease_key.to_owned(),
            owner: owner.to_owned(),
            ttl_end: now.checked_add(ttl).unwrap_or(now),
            answered: false,
        }
    }

    /// Redis answered: the caller knows whether it holds the lease, and releases it if so.
    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for UnansweredLease {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(release_lost_lease(
            self.cache.clone(),
            std::mem::take(&mut self.lease_key),
            std::mem::take(&mut self.owner),
            self.ttl_end,
        ));
    }
}

/// Releases the lease `owner` may hold under `lease_key` after its request went unanswered:
/// retried with backoff until Redis answers, and given up when the lease's TTL has passed.
///
/// The circuit breaker is not asked: while it is open this is exactly when the lease needs
/// releasing, and a background task costs no request any time.
///
/// One answer is not always enough. The release usually travels on the connection that carried
/// the `SET`, and Redis runs one connection's commands in order, so its answer settles it. But the
/// connection may have been replaced in between, and a resumed server may run the old
/// connection's `SET` after the new connection's release. So an answer that finds no lease is
/// confirmed by one more release, sent after that answer: by then the server has read its
/// pending input.
async fn release_lost_lease(
    cache: RedisTokenCache,
    lease_key: String,
    owner: String,
    ttl_end: Instant,
) {
    let release = async {
        let mut backoff = LOST_LEASE_RETRY_MIN;
        let mut answers = 0;
        loop {
            match cache.release_unguarded(&lease_key, &owner).await {
                Some(true) => {
                    tracing::debug!(lease = %lease_key, "released a lease whose request had no answer");
                    return;
                }
                Some(false) => {
                    answers += 1;
                    if answers == 2 {
                        return;
                    }
                }
                None => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LOST_LEASE_RETRY_MAX);
                }
            }
        }
    };
    if tokio::time::timeout_at(ttl_end, release).await.is_err() {
        tracing::debug!(lease = %lease_key, "redis did not answer within the lease TTL; a lease from the unanswered request ends with its TTL");
    }
}

/// A random 128-bit lease owner id, in hex: unique across processes without coordination.
fn new_owner_id() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `PING`, and once more if the first one met a broken or failed connection: the connection
/// manager reconnects when a command meets one, and the second `PING` waits for that connection.
async fn ping_reconnecting(connection: &mut ConnectionManager) -> RedisResult<()> {
    let ping = redis::cmd("PING");
    match ping.query_async::<()>(connection).await {
        Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
            tracing::debug!(error = %e, "redis probe met a stale connection: reconnecting");
            ping.query_async::<()>(connection).await
        }
        other => other,
    }
}
