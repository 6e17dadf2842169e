//! Configuration of a [`RedisTokenCache`] or a [`RedisUserTokenStore`]: one builder type, whose
//! Redis settings both share.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use tokenwarden_core::{Clock, SystemClock};

use crate::breaker::{CircuitBreaker, Tier};
use crate::connection::Connection;
use crate::{Encryption, Error, RedisTokenCache, RedisUserTokenStore};

/// The default prefix of every Redis key this crate writes: none, because a [`CacheKey`]
/// already starts with its namespace (`tokenwarden:v1:` unless the manager was given another).
///
/// [`CacheKey`]: tokenwarden_core::CacheKey
pub const DEFAULT_KEY_PREFIX: &str = "";
/// The default bound on every Redis call.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(200);
/// The default number of consecutive failures that opens the circuit breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;
/// The default time the circuit breaker stays open before it probes Redis again.
pub const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);
/// The default lifetime of a user token record in Redis, renewed by every write: 30 days.
pub const DEFAULT_USER_RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest user record TTL [`RedisUserTokenStoreBuilder::record_ttl`] accepts: 10 years.
pub const MAX_USER_RECORD_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Reconnect attempts inside one connection attempt of the connection manager; our own circuit
/// breaker does the longer-term backing off.
const RECONNECT_RETRIES: usize = 1;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// A TCP (and TLS) connect may take longer than one operation; it continues in the background
/// while operations time out, but never longer than this.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds a [`RedisTokenCache`] ([`RedisTokenCache::builder`]) or a [`RedisUserTokenStore`]
/// ([`RedisUserTokenStore::builder`]).
///
/// The Redis settings (URL, key prefix, operation timeout, circuit breaker, encryption, TLS) are
/// the same for both; [`clock`](RedisTokenCacheBuilder::clock) is the cache's own and
/// [`record_ttl`](RedisUserTokenStoreBuilder::record_ttl) the store's.
#[must_use]
pub struct RedisBuilder<T> {
    settings: Settings,
    /// The cache's: decides TTLs and freshness.
    clock: Arc<dyn Clock>,
    /// The store's: how long a record lives after its last write.
    record_ttl: Duration,
    builds: PhantomData<fn() -> T>,
}

/// Builds a [`RedisTokenCache`]; start with [`RedisTokenCache::builder`].
pub type RedisTokenCacheBuilder = RedisBuilder<RedisTokenCache>;

/// Builds a [`RedisUserTokenStore`]; start with [`RedisUserTokenStore::builder`].
pub type RedisUserTokenStoreBuilder = RedisBuilder<RedisUserTokenStore>;

/// What both products are built from: where Redis is and how every call to it behaves.
struct Settings {
    url: String,
    key_prefix: String,
    op_timeout: Duration,
    breaker_failures: u32,
    breaker_cool_down: Duration,
    encryption: Option<Encryption>,
    #[cfg(feature = "tls-rustls")]
    tls: Option<redis::TlsCertificates>,
}

impl<T> RedisBuilder<T> {
    pub(crate) fn new(url: &str) -> Self {
        RedisBuilder {
            settings: Settings {
                url: url.to_owned(),
                key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
                op_timeout: DEFAULT_OP_TIMEOUT,
                breaker_failures: DEFAULT_BREAKER_FAILURES,
                breaker_cool_down: DEFAULT_BREAKER_COOL_DOWN,
                encryption: None,
                #[cfg(feature = "tls-rustls")]
                tls: None,
            },
            clock: Arc::new(SystemClock),
            record_ttl: DEFAULT_USER_RECORD_TTL,
            builds: PhantomData,
        }
    }

    /// Prefix of every Redis key (default none: cache keys already start with their namespace).
    /// Values live at `<prefix><cache key>`, leases at `<prefix><cache key>:lease` (a cache key
    /// never contains `:` after its `namespace:v1:` head, so the two cannot collide).
    ///
    /// A token cache and a user token store on the same Redis must not share a key: give them
    /// different prefixes unless their cache keys differ anyway.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.settings.key_prefix = prefix.to_owned();
        self
    }

    /// Bound on every Redis call, including the first connect (default 200 ms). A call that takes
    /// longer fails (a cache with [`tokenwarden_core::Error::CacheTimeout`], a store with
    /// [`tokenwarden_core::Error::Store`]) and counts as a failure.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.settings.op_timeout = timeout;
        self
    }

    /// The circuit breaker: after `failures` consecutive failed calls (default 3) every call fails
    /// immediately for `cool_down` (default 5 s); then one call probes Redis (reconnecting first
    /// if the outage left a broken connection behind) and its success closes the breaker again.
    pub fn breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.settings.breaker_failures = failures;
        self.settings.breaker_cool_down = cool_down;
        self
    }

    /// Encrypts values at rest (off by default). See [`Encryption`].
    pub fn encryption(mut self, encryption: Encryption) -> Self {
        self.settings.encryption = Some(encryption);
        self
    }

    /// Trusts these root certificates (PEM) for `rediss://` instead of the bundled public roots,
    /// as for a Redis whose certificate comes from a private CA.
    #[cfg(feature = "tls-rustls")]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.settings.tls.get_or_insert_with(empty_tls).root_cert = Some(pem.into());
        self
    }

    /// Presents this client certificate and private key (PEM) for `rediss://` (mutual TLS).
    #[cfg(feature = "tls-rustls")]
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.settings.tls.get_or_insert_with(empty_tls).client_tls = Some(redis::ClientTlsConfig {
            client_cert: cert_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }
}

impl RedisBuilder<RedisTokenCache> {
    /// The clock that decides TTLs and freshness (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the cache. This does not connect: the connection is made on first use (bounded by
    /// the operation timeout), so an application starts even while Redis is down.
    ///
    /// Fails on a URL that does not parse and on out-of-range options.
    pub fn build(self) -> Result<RedisTokenCache, Error> {
        let connection = self.settings.connect(Tier::TokenCache)?;
        Ok(RedisTokenCache::new(connection, self.clock))
    }
}

impl RedisBuilder<RedisUserTokenStore> {
    /// How long a user's record stays in Redis after it was last written (default
    /// [`DEFAULT_USER_RECORD_TTL`], 30 days; at most [`MAX_USER_RECORD_TTL`]). Every write
    /// (sign-in, rotation) starts it again, so only users who stay away that long lose their
    /// record and sign in again; a record whose access token has no expiry gets it too.
    ///
    /// Choose it at least as long as the refresh tokens' idle (sliding) lifetime at your
    /// authorization server: a record that outlives its refresh token only costs memory, one
    /// that goes before it signs the user out early.
    pub fn record_ttl(mut self, ttl: Duration) -> Self {
        self.record_ttl = ttl;
        self
    }

    /// Builds the store. This does not connect: the connection is made on first use (bounded by
    /// the operation timeout).
    ///
    /// Fails on a URL that does not parse and on out-of-range options.
    pub fn build(self) -> Result<RedisUserTokenStore, Error> {
        if self.record_ttl < Duration::from_millis(1) {
            return Err(Error::Config(
                "record_ttl must be at least one millisecond".into(),
            ));
        }
        if self.record_ttl > MAX_USER_RECORD_TTL {
            return Err(Error::Config(format!(
                "record_ttl of {:?} is too long: at most {MAX_USER_RECORD_TTL:?}",
                self.record_ttl
            )));
        }
        let connection = self.settings.connect(Tier::UserStore)?;
        Ok(RedisUserTokenStore::new(connection, self.record_ttl))
    }
}

impl Settings {
    /// Checks the settings and makes the (not yet connected) connection.
    fn connect(self, tier: Tier) -> Result<Connection, Error> {
        if self.op_timeout.is_zero() {
            return Err(Error::Config("op_timeout must be greater than zero".into()));
        }
        if self.breaker_failures == 0 {
            return Err(Error::Config("breaker failures must be at least 1".into()));
        }
        // Far beyond any sensible value, and far enough from overflow that adding either to the
        // current time is always safe.
        const MAX: Duration = Duration::from_secs(24 * 3600);
        for (setting, value) in [
            ("op_timeout", self.op_timeout),
            ("the breaker cool-down", self.breaker_cool_down),
        ] {
            if value > MAX {
                return Err(Error::Config(format!(
                    "{setting} of {value:?} is too long: at most {MAX:?}"
                )));
            }
        }
        if let Some(encryption) = &self.encryption {
            encryption.validate().map_err(Error::Config)?;
        }
        #[cfg(feature = "tls-rustls")]
        let client = match self.tls {
            Some(tls) => redis::Client::build_with_tls(self.url.as_str(), tls),
            None => redis::Client::open(self.url.as_str()),
        };
        #[cfg(not(feature = "tls-rustls"))]
        let client = redis::Client::open(self.url.as_str());
        let client = client.map_err(Error::Url)?;
        let endpoint = client.get_connection_info().addr().to_string();
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.op_timeout.max(MIN_CONNECT_TIMEOUT)))
            .set_response_timeout(Some(self.op_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY);
        Ok(Connection::new(
            client,
            manager_config,
            endpoint,
            self.key_prefix,
            self.op_timeout,
            CircuitBreaker::new(tier, self.breaker_failures, self.breaker_cool_down),
            self.encryption,
        ))
    }

    /// The fields both builders' `Debug` show: never the password or TLS key material.
    fn debug_fields(&self, debug: &mut fmt::DebugStruct<'_, '_>) {
        debug
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("encryption", &self.encryption);
        // Whether TLS material is set, never the material (a client key is a secret).
        #[cfg(feature = "tls-rustls")]
        debug.field(
            "tls",
            &self
                .tls
                .as_ref()
                .map(|t| (t.root_cert.is_some(), t.client_tls.is_some())),
        );
    }
}

#[cfg(feature = "tls-rustls")]
fn empty_tls() -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: None,
    }
}

impl fmt::Debug for RedisBuilder<RedisTokenCache> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisTokenCacheBuilder");
        self.settings.debug_fields(&mut debug);
        debug.field("clock", &self.clock).finish()
    }
}

impl fmt::Debug for RedisBuilder<RedisUserTokenStore> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisUserTokenStoreBuilder");
        self.settings.debug_fields(&mut debug);
        debug.field("record_ttl", &self.record_ttl).finish()
    }
}

/// The URL with its user-info (`user:password@`) replaced by `***@`.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "***".to_owned();
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    match url[scheme_end..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &url[scheme_end + at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("rediss://u:p@ss@h"), "rediss://***@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("garbage:pw"), "***");
    }

    #[test]
    fn builder_debug_hides_the_password() {
        let b = RedisTokenCacheBuilder::new("redis://user:hunter2@127.0.0.1:1")
            .encryption(Encryption::new("k1", [1; 32]));
        let shown = format!("{b:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("k1"), "{shown}");
    }

    #[test]
    fn build_rejects_bad_options_and_urls() {
        let bad_url = RedisTokenCacheBuilder::new("http://x").build();
        assert!(matches!(bad_url, Err(Error::Url(_))));
        let zero = RedisTokenCacheBuilder::new("redis://h")
            .op_timeout(Duration::ZERO)
            .build();
        assert!(matches!(zero, Err(Error::Config(_))));
        let dup = RedisTokenCacheBuilder::new("redis://h")
            .encryption(Encryption::new("k", [1; 32]).with_old_key("k", [2; 32]))
            .build();
        assert!(matches!(dup, Err(Error::Config(_))));
        let breaker = RedisTokenCacheBuilder::new("redis://h")
            .breaker(0, Duration::ZERO)
            .build();
        assert!(matches!(breaker, Err(Error::Config(_))));
        for too_long in [
            RedisTokenCacheBuilder::new("redis://h").op_timeout(Duration::MAX),
            RedisTokenCacheBuilder::new("redis://h").breaker(3, Duration::MAX),
        ] {
            assert!(matches!(too_long.build(), Err(Error::Config(_))));
        }
    }

    #[test]
    fn the_user_store_builder_checks_its_record_ttl_and_hides_the_password() {
        let b = RedisUserTokenStoreBuilder::new("redis://:hunter2@127.0.0.1:1")
            .record_ttl(Duration::from_secs(60));
        let shown = format!("{b:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.starts_with("RedisUserTokenStoreBuilder"), "{shown}");
        assert!(shown.contains("record_ttl: 60s"), "{shown}");
        let store = b.build().unwrap();
        assert_eq!(store.record_ttl(), Duration::from_secs(60));
        assert!(!format!("{store:?}").contains("hunter2"));

        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            MAX_USER_RECORD_TTL * 2,
        ] {
            let built = RedisUserTokenStoreBuilder::new("redis://h")
                .record_ttl(bad)
                .build();
            assert!(matches!(built, Err(Error::Config(_))), "{bad:?}");
        }
        // The shared settings are checked for the store too.
        let zero = RedisUserTokenStoreBuilder::new("redis://h")
            .op_timeout(Duration::ZERO)
            .build();
        assert!(matches!(zero, Err(Error::Config(_))));
        let bad_url = RedisUserTokenStoreBuilder::new("http://x").build();
        assert!(matches!(bad_url, Err(Error::Url(_))));
        assert_eq!(
            RedisUserTokenStoreBuilder::new("redis://h")
                .build()
                .unwrap()
                .record_ttl(),
            DEFAULT_USER_RECORD_TTL
        );
    }

    #[test]
    fn build_does_not_need_a_runtime_or_a_server() {
        // Port 1 on loopback has no Redis; building must still succeed, outside any runtime.
        let cache = RedisTokenCacheBuilder::new("redis://127.0.0.1:1")
            .build()
            .unwrap();
        assert!(cache.is_available());
    }
}
