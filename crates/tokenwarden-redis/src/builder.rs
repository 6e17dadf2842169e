//! Configuration of a [`RedisTokenCache`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use tokenwarden_core::{Clock, SystemClock};

use crate::breaker::CircuitBreaker;
use crate::cache::{Inner, RedisTokenCache};
use crate::{Encryption, Error};

/// The default prefix of every Redis key this cache writes: none, because a [`CacheKey`]
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

/// Reconnect attempts inside one connection attempt of the connection manager; our own circuit
/// breaker does the longer-term backing off.
const RECONNECT_RETRIES: usize = 1;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// A TCP (and TLS) connect may take longer than one operation; it continues in the background
/// while operations time out, but never longer than this.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds a [`RedisTokenCache`]; start with [`RedisTokenCache::builder`].
#[must_use]
pub struct RedisTokenCacheBuilder {
    url: String,
    key_prefix: String,
    op_timeout: Duration,
    breaker_failures: u32,
    breaker_cool_down: Duration,
    encryption: Option<Encryption>,
    clock: Arc<dyn Clock>,
    #[cfg(feature = "tls-rustls")]
    tls: Option<redis::TlsCertificates>,
}

impl RedisTokenCacheBuilder {
    pub(crate) fn new(url: &str) -> Self {
        RedisTokenCacheBuilder {
            url: url.to_owned(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cool_down: DEFAULT_BREAKER_COOL_DOWN,
            encryption: None,
            clock: Arc::new(SystemClock),
            #[cfg(feature = "tls-rustls")]
            tls: None,
        }
    }

    /// Prefix of every Redis key (default none: cache keys already start with their namespace).
    /// Token entries live at `<prefix><cache key>`, leases at `<prefix><cache key>:lease` (a cache
    /// key never contains `:` after its `namespace:v1:` head, so the two cannot collide).
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_owned();
        self
    }

    /// Bound on every Redis call, including the first connect (default 200 ms). A call that takes
    /// longer fails with [`tokenwarden_core::Error::CacheTimeout`] and counts as a failure.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The circuit breaker: after `failures` consecutive failed calls (default 3) every call fails
    /// immediately for `cool_down` (default 5 s); then one call probes Redis (reconnecting first
    /// if the outage left a broken connection behind) and its success closes the breaker again.
    pub fn breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.breaker_failures = failures;
        self.breaker_cool_down = cool_down;
        self
    }

    /// Encrypts values at rest (off by default). See [`Encryption`].
    pub fn encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// The clock that decides TTLs and freshness (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Trusts these root certificates (PEM) for `rediss://` instead of the bundled public roots,
    /// as for a Redis whose certificate comes from a private CA.
    #[cfg(feature = "tls-rustls")]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(empty_tls).root_cert = Some(pem.into());
        self
    }

    /// Presents this client certificate and private key (PEM) for `rediss://` (mutual TLS).
    #[cfg(feature = "tls-rustls")]
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.get_or_insert_with(empty_tls).client_tls = Some(redis::ClientTlsConfig {
            client_cert: cert_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }

    /// Builds the cache. This does not connect: the connection is made on first use (bounded by
    /// the operation timeout), so an application starts even while Redis is down.
    ///
    /// Fails on a URL that does not parse and on out-of-range options.
    pub fn build(self) -> Result<RedisTokenCache, Error> {
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
        Ok(RedisTokenCache::from_inner(Inner::new(
            client,
            manager_config,
            endpoint,
            self.key_prefix,
            self.op_timeout,
            CircuitBreaker::new(self.breaker_failures, self.breaker_cool_down),
            self.encryption,
            self.clock,
        )))
    }
}

#[cfg(feature = "tls-rustls")]
fn empty_tls() -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: None,
    }
}

impl fmt::Debug for RedisTokenCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisTokenCacheBuilder");
        debug
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("encryption", &self.encryption)
            .field("clock", &self.clock);
        // Whether TLS material is set, never the material (a client key is a secret).
        #[cfg(feature = "tls-rustls")]
        debug.field(
            "tls",
            &self
                .tls
                .as_ref()
                .map(|t| (t.root_cert.is_some(), t.client_tls.is_some())),
        );
        debug.finish()
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
    fn build_does_not_need_a_runtime_or_a_server() {
        // Port 1 on loopback has no Redis; building must still succeed, outside any runtime.
        let cache = RedisTokenCacheBuilder::new("redis://127.0.0.1:1")
            .build()
            .unwrap();
        assert!(cache.is_available());
    }
}
