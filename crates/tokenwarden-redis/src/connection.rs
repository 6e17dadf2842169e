//! What the token cache and the user token store share: one Redis endpoint with its connection,
//! key prefix, operation timeout, circuit breaker and encryption, and the refresh leases built on
//! them.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};
use tokenwarden_core::{CacheKey, Error, Lease};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::breaker::CircuitBreaker;
use crate::encryption::{self, Encryption, SealError};

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

/// One Redis endpoint as a [`RedisTokenCache`](crate::RedisTokenCache) or a
/// [`RedisUserTokenStore`](crate::RedisUserTokenStore) uses it. Shared behind an `Arc` by the
/// clones of its owner and by the background tasks that release lost leases.
pub(crate) struct Connection {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    connection: OnceCell<ConnectionManager>,
    /// `host:port`, for Debug: never the URL, which may hold a password.
    endpoint: String,
    key_prefix: String,
    op_timeout: Duration,
    breaker: CircuitBreaker,
    encryption: Option<Encryption>,
    release_script: Script,
}

/// Why a Redis call failed; each owner turns it into the core error its trait promises
/// ([`into_cache_error`](CallError::into_cache_error), [`into_store_error`](CallError::into_store_error)).
#[derive(Debug)]
pub(crate) enum CallError {
    /// The circuit breaker is open: nothing was sent.
    BreakerOpen,
    /// No answer within the operation timeout.
    Timeout { op: &'static str, timeout: Duration },
    /// Redis (or the connection to it) answered with an error.
    Redis {
        op: &'static str,
        source: RedisError,
    },
}

impl CallError {
    /// For a cache, whose errors the token manager treats as misses.
    pub(crate) fn into_cache_error(self) -> Error {
        match self {
            CallError::BreakerOpen => Error::cache("redis unavailable: circuit breaker open"),
            CallError::Timeout { timeout, .. } => Error::CacheTimeout(timeout),
            CallError::Redis { op, source } => {
                Error::cache_with(Cow::Owned(format!("redis {op} failed")), source)
            }
        }
    }

    /// For a store, whose errors reach the caller.
    pub(crate) fn into_store_error(self) -> Error {
        match self {
            CallError::BreakerOpen => Error::store("redis unavailable: circuit breaker open", None),
            CallError::Timeout { op, timeout } => {
                Error::store(format!("redis {op} timed out after {timeout:?}"), None)
            }
            CallError::Redis { op, source } => {
                Error::store(format!("redis {op} failed"), Some(Box::new(source)))
            }
        }
    }
}

impl Connection {
    #[allow(clippy::too_many_arguments)] // called once, by the builder
    pub(crate) fn new(
        client: redis::Client,
        manager_config: ConnectionManagerConfig,
        endpoint: String,
        key_prefix: String,
        op_timeout: Duration,
        breaker: CircuitBreaker,
        encryption: Option<Encryption>,
    ) -> Self {
        Connection {
            client,
            manager_config,
            connection: OnceCell::new(),
            endpoint,
            key_prefix,
            op_timeout,
            breaker,
            encryption,
            release_script: Script::new(RELEASE_IF_OWNER),
        }
    }

    /// Whether calls currently go through (the circuit breaker is closed).
    pub(crate) fn is_available(&self) -> bool {
        self.breaker.is_closed()
    }

    /// The Redis key of `key`'s value: the prefix followed by the key's text.
    pub(crate) fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.key_prefix, key.as_str())
    }

    /// The Redis key of the refresh lease for `key`.
    pub(crate) fn lease_key(&self, key: &CacheKey) -> String {
        format!("{}{}:lease", self.key_prefix, key.as_str())
    }

    /// The fields every owner's `Debug` shows: where, how, whether it is up; never a secret.
    pub(crate) fn debug_fields(&self, debug: &mut fmt::DebugStruct<'_, '_>) {
        debug
            .field("endpoint", &self.endpoint)
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .field("available", &self.breaker.is_closed())
            .field("encryption", &self.encryption);
    }

    /// Runs one Redis operation behind the circuit breaker and the operation timeout.
    ///
    /// The breaker's probe first makes sure the connection works: after an outage the connection
    /// manager still holds its last failed (or server-closed) connection, and only the command
    /// that meets it makes it reconnect. Sent as the probe, that command would fail and keep the
    /// breaker open for another cool-down although Redis is back; a `PING` meets it instead, and a
    /// second `PING` waits for the fresh connection. Both stay within the operation timeout.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, CallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(permit) = self.breaker.try_acquire() else {
            return Err(CallError::BreakerOpen);
        };
        let probe = permit.is_probe();
        let attempt = async {
            let mut connection = self.connection().await?;
            if probe {
                ping_reconnecting(&mut connection).await?;
            }
            f(connection).await
        };
        match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(Ok(value)) => {
                permit.success();
                Ok(value)
            }
            // The connection's own response timeout (the same length) may fire first.
            Ok(Err(e)) if e.is_timeout() => {
                permit.failure();
                tracing::debug!(op, timeout = ?self.op_timeout, "redis call timed out");
                Err(CallError::Timeout {
                    op,
                    timeout: self.op_timeout,
                })
            }
            Ok(Err(source)) => {
                permit.failure();
                tracing::debug!(op, error = %source, "redis call failed");
                Err(CallError::Redis { op, source })
            }
            Err(_) => {
                permit.failure();
                tracing::debug!(op, timeout = ?self.op_timeout, "redis call timed out");
                Err(CallError::Timeout {
                    op,
                    timeout: self.op_timeout,
                })
            }
        }
    }

    /// The shared connection, made on first use.
    async fn connection(&self) -> RedisResult<ConnectionManager> {
        let connection = self
            .connection
            .get_or_try_init(|| async {
                ConnectionManager::new_lazy_with_config(
                    self.client.clone(),
                    self.manager_config.clone(),
                )
            })
            .await?;
        Ok(connection.clone())
    }

    /// Seals a serialized envelope for `redis_key` if encryption is on; returns it as is if not.
    pub(crate) fn seal(&self, redis_key: &str, plaintext: Vec<u8>) -> Result<Vec<u8>, SealError> {
        match &self.encryption {
            Some(encryption) => encryption.seal(redis_key, &plaintext),
            None => Ok(plaintext),
        }
    }

    /// Opens a stored payload read from `redis_key`, or explains why it is unusable. With
    /// encryption on, a plaintext payload is refused, so nobody with write access to Redis can
    /// plant a token.
    pub(crate) fn open<'p>(
        &self,
        redis_key: &str,
        payload: &'p [u8],
    ) -> Result<Cow<'p, [u8]>, &'static str> {
        match (&self.encryption, payload.starts_with(encryption::MAGIC)) {
            (Some(encryption), true) => encryption
                .open(redis_key, payload)
                .map(Cow::Owned)
                .map_err(|e| e.as_str()),
            (None, true) => Err("encrypted value, but no encryption key is configured"),
            (Some(_), false) => Err("plaintext value, but encryption is required"),
            (None, false) => Ok(Cow::Borrowed(payload)),
        }
    }

    /// Asks for the refresh lease of `key` (`SET <lease key> <random owner> NX PX <ttl>`):
    /// [`Lease::Acquired`] if this caller got it, [`Lease::HeldElsewhere`] if someone else
    /// holds it.
    ///
    /// A request that gets no answer leaves a task behind that releases the lease it may have
    /// created once Redis answers again; see [`UnansweredLease`].
    pub(crate) async fn try_lease(
        self: &Arc<Self>,
        key: &CacheKey,
        ttl: Duration,
    ) -> Result<Lease, CallError> {
        let lease_key = self.lease_key(key);
        let owner = new_owner_id();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .call("lease", |mut con| {
                // From here on the `SET` may reach Redis; until its answer arrives, this guard
                // stands for the lease it may create.
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
    }

    /// Gives back `lease` of `key` if its owner still holds it (compare-and-delete), so a lease
    /// that expired and went to another replica is left alone; a lease not acquired is nothing
    /// to give back.
    pub(crate) async fn release_lease(
        &self,
        key: &CacheKey,
        lease: &Lease,
    ) -> Result<(), CallError> {
        let Lease::Acquired(owner) = lease else {
            return Ok(());
        };
        let owner: &str = owner;
        let lease_key = self.lease_key(key);
        let script = &self.release_script;
        self.call("release_lease", |mut con| async move {
            script
                .key(&lease_key)
                .arg(owner)
                .invoke_async::<i64>(&mut con)
                .await
        })
        .await?;
        Ok(())
    }

    /// Compare-and-deletes the lease `lease_key` if `owner` holds it, within the operation timeout
    /// and past the circuit breaker: `Some(true)` if it deleted the lease, `Some(false)` if Redis
    /// answered that `owner` does not hold it, `None` without an answer.
    async fn release_unguarded(&self, lease_key: &str, owner: &str) -> Option<bool> {
        let attempt = async {
            let mut connection = self.connection().await?;
            self.release_script
                .key(lease_key)
                .arg(owner)
                .invoke_async::<i64>(&mut connection)
                .await
        };
        match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(Ok(deleted)) => Some(deleted > 0),
            Ok(Err(_)) | Err(_) => None,
        }
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
    connection: Arc<Connection>,
    lease_key: String,
    owner: String,
    /// When a lease from this request would have expired had Redis executed it at once.
    ttl_end: Instant,
    answered: bool,
}

impl UnansweredLease {
    fn new(connection: &Arc<Connection>, lease_key: &str, owner: &str, ttl: Duration) -> Self {
        let now = Instant::now();
        UnansweredLease {
            connection: connection.clone(),
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
            self.connection.clone(),
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
    connection: Arc<Connection>,
    lease_key: String,
    owner: String,
    ttl_end: Instant,
) {
    let release = async {
        let mut backoff = LOST_LEASE_RETRY_MIN;
        let mut answers = 0;
        loop {
            match connection.release_unguarded(&lease_key, &owner).await {
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
