//! [`RedisUserTokenStore`]: the [`UserTokenStore`] implementation over Redis.
//!
//! ```
//! use std::time::Duration;
//! use tokenwarden_redis::{Encryption, RedisUserTokenStore};
//!
//! # fn main() -> Result<(), tokenwarden_redis::Error> {
//! let store = RedisUserTokenStore::builder("redis://:secret@127.0.0.1:6379")
//!     .key_prefix("web-app:users:")
//!     .record_ttl(Duration::from_secs(14 * 24 * 3600)) // users idle for 14 days sign in again
//!     .encryption(Encryption::new("2025-06", [7u8; 32])) // use a real random key
//!     .build()?; // does not connect yet
//! assert!(!format!("{store:?}").contains("secret"));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use tokenwarden_core::{BoxFuture, CacheKey, Error, Lease, Secret, UserTokenStore, UserTokens};

use crate::RedisUserTokenStoreBuilder;
use crate::connection::{CallError, Connection};
use crate::envelope::{self, DecodeError};

/// Hash field of a record holding the user envelope (JSON, or sealed with encryption on).
const FIELD_ENVELOPE: &str = "v";
/// Hash field of a record holding the hex SHA-256 of the refresh token, empty without one.
const FIELD_REFRESH_DIGEST: &str = "rt";

/// A record's `v` and `rt` fields as `HMGET` returns them, each `None` where missing.
type RecordFields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Writes the record `KEYS[1]` whole: the envelope `ARGV[1]`, the refresh token digest `ARGV[2]`
/// (empty without a refresh token) and a TTL of `ARGV[3]` ms. With `ARGV[4]` non-empty it writes
/// only if the stored digest is `ARGV[4]` (compare-and-swap). Returns 1 if it wrote, 0 if not.
///
/// `DEL` first, so nothing of an older record (or a value of another type) survives a write.
/// `pcall` so a key holding another type is simply "not the expected record".
const WRITE_RECORD: &str = r"
if ARGV[4] ~= '' and redis.pcall('HGET', KEYS[1], 'rt') ~= ARGV[4] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'rt', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Deletes the record `KEYS[1]` only if its refresh token digest is `ARGV[1]`.
const REMOVE_IF_REFRESH_DIGEST: &str = r"
if redis.pcall('HGET', KEYS[1], 'rt') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// A [`UserTokenStore`] in Redis: signed-in users' access and refresh tokens, shared by every
/// replica that points at the same server and prefix.
///
/// Built with [`RedisUserTokenStore::builder`], with the same Redis settings as a
/// [`RedisTokenCache`](crate::RedisTokenCache). Cloning is cheap and clones share the connection
/// and the circuit breaker.
///
/// # Records
///
/// One record per [`CacheKey`] (one user and one client), a hash at `<prefix><cache key>`:
/// `v` holds the tokens (access token, type, expiry, scope, refresh token) in a versioned
/// envelope, sealed when [encryption](crate::Encryption) is on; `rt` holds the SHA-256 (hex) of
/// the refresh token, so [`replace_if`](UserTokenStore::replace_if) and
/// [`remove_if`](UserTokenStore::remove_if) compare in a Lua script, atomically, without reading
/// the (possibly encrypted) envelope. Storing writes the whole record, so a new sign-in replaces
/// the old one and nothing accumulates.
///
/// Every write sets the record's TTL ([`record_ttl`](RedisUserTokenStoreBuilder::record_ttl),
/// 30 days by default), so the record of a user who never comes back goes away by itself.
///
/// # Failures
///
/// Unlike a cache miss, a lost refresh token signs a user out, so errors reach the caller as
/// [`Error::Store`]: Redis errors, timeouts (bounded by the operation timeout), and calls made
/// while the circuit breaker is open, which fail at once. A write that timed out may still have
/// happened; read the record again to know. A record that is corrupt, of an unknown envelope
/// version, undecryptable, or plaintext while encryption is on reads as absent (`Ok(None)`: the
/// user signs in again), with a warning that names the key and the reason and holds no secret. It
/// is left in place (a newer replica may be able to read it) until a write replaces it or its TTL
/// ends.
///
/// # Leases
///
/// [`try_lease`](UserTokenStore::try_lease) takes `<prefix><cache key>:lease` with `SET NX PX`
/// and a random owner id, and [`release_lease`](UserTokenStore::release_lease) deletes it only
/// while that owner holds it, as the token cache does; a lease request that got no answer is
/// released in the background once Redis answers again.
#[derive(Clone)]
pub struct RedisUserTokenStore {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Arc<Connection>,
    record_ttl: Duration,
    write_script: Script,
    remove_if_script: Script,
}

impl RedisUserTokenStore {
    /// Starts building a store for `url`: `redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS (feature `tls-rustls`, on by default).
    pub fn builder(url: &str) -> RedisUserTokenStoreBuilder {
        RedisUserTokenStoreBuilder::new(url)
    }

    pub(crate) fn new(redis: Connection, record_ttl: Duration) -> Self {
        RedisUserTokenStore {
            inner: Arc::new(Inner {
                redis: Arc::new(redis),
                record_ttl,
                write_script: Script::new(WRITE_RECORD),
                remove_if_script: Script::new(REMOVE_IF_REFRESH_DIGEST),
            }),
        }
    }

    /// Whether Redis calls currently go through: `false` while the circuit breaker is open (or
    /// probing), when calls fail immediately with [`Error::Store`].
    pub fn is_available(&self) -> bool {
        self.inner.redis.is_available()
    }

    /// The Redis key `key`'s record is stored under: the prefix followed by the key's text.
    /// Useful to inspect raw values in tests and operations.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        self.inner.redis.redis_key(key)
    }

    /// How long a record lives after its last write.
    pub fn record_ttl(&self) -> Duration {
        self.inner.record_ttl
    }

    /// Writes `tokens` as `key`'s record; with `expected`, only if the stored refresh token is
    /// still that one. Returns whether it wrote.
    async fn write(
        &self,
        key: &CacheKey,
        expected: Option<&Secret>,
        tokens: &UserTokens,
    ) -> Result<bool, Error> {
        let redis_key = self.redis_key(key);
        let json = envelope::encode_user(tokens).map_err(|e| {
            Error::store("could not serialize the user's tokens", Some(Box::new(e)))
        })?;
        let payload = self
            .inner
            .redis
            .seal(&redis_key, json)
            .map_err(|_| Error::store("could not encrypt the user's tokens", None))?;
        let digest = refresh_digest(tokens.refresh_token());
        let expected = refresh_digest(expected);
        let ttl_ms = u64::try_from(self.inner.record_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let script = &self.inner.write_script;
        let written: i64 = self
            .inner
            .redis
            .call("write_user_tokens", |mut con| async move {
                script
                    .key(&redis_key)
                    .arg(payload)
                    .arg(digest)
                    .arg(ttl_ms)
                    .arg(expected)
                    .invoke_async(&mut con)
                    .await
            })
            .await
            .map_err(CallError::into_store_error)?;
        Ok(written == 1)
    }

    /// Turns a record's fields back into tokens, or explains why the record is unusable.
    fn decode(
        &self,
        redis_key: &str,
        payload: &[u8],
        stored_digest: &[u8],
    ) -> Result<UserTokens, String> {
        let json = self.inner.redis.open(redis_key, payload)?;
        let tokens = envelope::decode_user(&json).map_err(|e| match e {
            DecodeError::UnknownVersion(v) => format!("unknown envelope version {v}"),
            other => other.as_str().to_owned(),
        })?;
        if refresh_digest(tokens.refresh_token()).as_bytes() != stored_digest {
            return Err("the refresh token digest does not match the record".to_owned());
        }
        Ok(tokens)
    }
}

/// The hex SHA-256 of a refresh token, or the empty string for none (which no digest equals).
fn refresh_digest(refresh_token: Option<&Secret>) -> String {
    refresh_token.map_or_else(String::new, |r| envelope::fingerprint(r.expose_secret()))
}

impl fmt::Debug for RedisUserTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisUserTokenStore");
        self.inner.redis.debug_fields(&mut debug);
        debug
            .field("record_ttl", &self.inner.record_ttl)
            .finish_non_exhaustive()
    }
}

impl UserTokenStore for RedisUserTokenStore {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<UserTokens>, Error>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let rk = redis_key.as_str();
            let fields: Result<RecordFields, &'static str> = self
                .inner
                .redis
                .call("HMGET", |mut con| async move {
                    let reply = redis::cmd("HMGET")
                        .arg(rk)
                        .arg(FIELD_ENVELOPE)
                        .arg(FIELD_REFRESH_DIGEST)
                        .query_async(&mut con)
                        .await;
                    match reply {
                        Ok(fields) => Ok(Ok(fields)),
                        // Someone stored another type under our key: unusable, not an outage.
                        Err(e) if e.code() == Some("WRONGTYPE") => {
                            Ok(Err("the key holds another type"))
                        }
                        Err(e) => Err(e),
                    }
                })
                .await
                .map_err(CallError::into_store_error)?;
            let decoded = match fields {
                Ok((None, None)) => return Ok(None),
                Ok((Some(payload), Some(digest))) => self.decode(&redis_key, &payload, &digest),
                Ok(_) => Err("incomplete record".to_owned()),
                Err(reason) => Err(reason.to_owned()),
            };
            match decoded {
                Ok(tokens) => Ok(Some(tokens)),
                Err(reason) => {
                    // The key is safe to log: secret inputs (a user key) enter it only as digests.
                    tracing::warn!(
                        key = %key,
                        %reason,
                        "ignoring unusable redis user token record: the user must sign in again"
                    );
                    Ok(None)
                }
            }
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.write(key, None, tokens).await?;
            Ok(())
        })
    }

    fn replace_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(self.write(key, Some(expected), tokens))
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
                .map_err(CallError::into_store_error)
        })
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let expected = refresh_digest(Some(expected));
            let script = &self.inner.remove_if_script;
            let deleted: i64 = self
                .inner
                .redis
                .call("remove_user_tokens_if", |mut con| async move {
                    script
                        .key(&redis_key)
                        .arg(&expected)
                        .invoke_async(&mut con)
                        .await
                })
                .await
                .map_err(CallError::into_store_error)?;
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
                .map_err(CallError::into_store_error)
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
                .map_err(CallError::into_store_error)
        })
    }
}
