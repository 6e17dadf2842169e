//! The token manager: named clients, a two-tier cache, single-flight, renew-ahead and retries.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokenwarden_core::{
    AccessToken, COARSE_CLOCK_LAG, CacheKey, CachedToken, Clock, Lease, Secret, SystemClock,
    TokenCache, TokenParams, unix_nanos,
};
use tokenwarden_oauth::{ClientCredentials, OAuthClient, TokenResponse};
use tokio::runtime::RuntimeFlavor;
use tokio::task::AbortHandle;

use crate::Error;

const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
/// After a failed background renewal, the still-valid token is used this long before trying again.
const RENEWAL_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Obtains, caches and renews access tokens for named clients. Cheap to clone: clones share
/// everything (clients, caches, in-flight requests).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tokenwarden::{ClientCredentials, TokenManager, TokenParams};
///
/// let manager = TokenManager::builder()
///     .client(
///         "billing",
///         ClientCredentials::builder("https://idp.example.com/oauth2/token", "billing-svc")
///             .client_secret(std::env::var("BILLING_SECRET")?)
///             .scope("invoices.read")
///             .build()?,
///     )
///     .build()?;
///
/// let token = manager.token("billing").await?;            // cached, renewed ahead of expiry
/// let admin = manager
///     .token_with("billing", &TokenParams::new().scope("invoices.admin"))
///     .await?;                                             // its own cache entry
/// # let _ = (token, admin);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    clients: HashMap<Arc<str>, Arc<ClientEntry>>,
    oauth: OAuthClient,
    shared: Option<Arc<dyn TokenCache>>,
    clock: Arc<dyn Clock>,
    /// No clock was set: the hot path reads the system's coarse clock directly, not through
    /// `clock`'s vtable.
    system_clock: bool,
    renew_before: Duration,
    retry: RetryPolicy,
    namespace: String,
    max_cached_tokens: usize,
    cache_timeout: Duration,
    lease_ttl: Duration,
    lease_wait: Duration,
    /// Slots for per-request parameters; each client's default slot lives in its `ClientEntry`.
    slots: Mutex<HashMap<CacheKey, Arc<Slot>>>,
    counters: Counters,
}

/// A registered client and the slot of its configured (default-parameter) token.
pub(crate) struct ClientEntry {
    pub(crate) name: Arc<str>,
    config: ClientCredentials,
    pub(crate) default_slot: Arc<Slot>,
}

/// One cache key's state in this process: the token (read without locks), the single-flight lock,
/// and what the last attempt did.
pub(crate) struct Slot {
    key: CacheKey,
    /// The parameters the token is requested with (never `force_renewal`).
    params: TokenParams,
    /// Behind its own `Arc` so a layer can keep an `arc_swap::Cache` of it: a check of one
    /// pointer per request instead of a full load.
    current: Arc<ArcSwapOption<Entry>>,
    flight: tokio::sync::Mutex<()>,
    /// Bumped by every completed attempt and every invalidation, so waiters can tell that
    /// something happened while they waited.
    generation: AtomicU64,
    last_failure: ArcSwapOption<Failure>,
    renewing: AtomicBool,
    renew_not_before_ms: AtomicU64,
    /// The last token that was rejected by a resource server: never taken back from the shared cache.
    rejected: ArcSwapOption<Secret>,
}

struct Failure {
    generation: u64,
    error: Error,
}

/// What a layer's service keeps to read the default token: it re-reads the slot only when the
/// slot's pointer changed.
pub(crate) type DefaultTokenCache = arc_swap::Cache<Arc<ArcSwapOption<Entry>>, Option<Arc<Entry>>>;

/// Entry ids are unique in the process, not only in one manager: a layer keeps per-thread copies
/// of headers by entry id, whatever manager the entry came from.
static NEXT_ENTRY_ID: AtomicU64 = AtomicU64::new(1);

/// A cached token with its ready-made `Authorization` value.
pub(crate) struct Entry {
    pub(crate) cached: CachedToken,
    pub(crate) header: HeaderValue,
    /// Unique within the process: what a request remembers of the token it sent, so a 401 can
    /// invalidate exactly that token without holding on to (and contending for) the header.
    pub(crate) id: u64,
    /// `renew_at` and `expires_at` moved earlier by the coarse clock's lag, so the hot path
    /// compares a coarse reading directly (nanoseconds since the Unix epoch).
    fresh_until_coarse: u64,
    usable_until_coarse: u64,
    /// Set while a timer on the runtime vouches that `renew_at` has not come yet: the hot path
    /// then reads no clock at all. The timer clears it when it fires and when it is dropped
    /// unfired (its runtime shut down), so a set flag is never stale by more than the timer's
    /// lateness; with the flag clear, the hot path asks the clock as before. See
    /// [`TokenManager::arm_freshness_timer`].
    fresh: AtomicBool,
    /// The timer's task, stopped when the entry goes.
    timer: OnceLock<AbortHandle>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.get() {
            timer.abort();
        }
    }
}

/// When a freshness timer clears the flag: at `renew_at`, but at least [`COARSE_CLOCK_LAG`]
/// before expiry. A timer fires a little late, never early, and where renewal is due only at
/// expiry (a token from a shared cache may say so) it must not let the flag outlive the token.
fn fresh_until(cached: &CachedToken) -> SystemTime {
    let margin = cached.expires_at().checked_sub(COARSE_CLOCK_LAG);
    margin.map_or(UNIX_EPOCH, |t| t.min(cached.renew_at()))
}

/// Clears an entry's `fresh` flag when dropped: when its timer fires, and when the timer's task
/// is dropped before that (aborted, or its runtime shut down, polled or not).
struct MarkStale(Weak<Entry>);

impl Drop for MarkStale {
    fn drop(&mut self) {
        if let Some(entry) = self.0.upgrade() {
            entry.fresh.store(false, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    shared_hits: AtomicU64,
    background_renewals: AtomicU64,
    invalidations: AtomicU64,
    replays: AtomicU64,
}

/// Counts of what a [`TokenManager`] did since it was built (all clients together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Requests sent to token endpoints (each retry counts).
    pub token_requests: u64,
    /// Tokens taken from the shared cache instead of the token endpoint.
    pub shared_cache_hits: u64,
    /// Renewals started ahead of expiry while callers kept using the current token.
    pub background_renewals: u64,
    /// Cached tokens invalidated because a resource server rejected them.
    pub invalidations: u64,
    /// Requests the layer replayed with a new token after a 401.
    pub replays: u64,
}

/// How failed token requests are retried: server errors (5xx, 429), transport failures and
/// timeouts are; OAuth errors (4xx) are not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    base_delay: Duration,
    max_delay: Duration,
}

impl RetryPolicy {
    /// Retries up to `max_retries` times with exponential backoff and full jitter.
    pub fn new(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            ..RetryPolicy::default()
        }
    }

    /// Never retries.
    pub fn none() -> Self {
        RetryPolicy::new(0)
    }

    /// The first backoff (default 100 ms); each retry doubles it.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The longest backoff (default 2 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.max_delay);
        // Full jitter: replicas that failed together do not retry together.
        exp.mul_f64(fastrand::f64())
    }
}

impl Default for RetryPolicy {
    /// Two retries, 100 ms base delay, 2 s cap.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Builds a [`TokenManager`].
pub struct TokenManagerBuilder {
    clients: Vec<(String, ClientCredentials)>,
    oauth: Option<OAuthClient>,
    shared: Option<Arc<dyn TokenCache>>,
    clock: Arc<dyn Clock>,
    custom_clock: bool,
    renew_before: Duration,
    retry: RetryPolicy,
    namespace: String,
    max_cached_tokens: usize,
    cache_timeout: Duration,
    lease_ttl: Duration,
    lease_wait: Duration,
}

impl fmt::Debug for TokenManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManagerBuilder")
            .field(
                "clients",
                &self.clients.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("shared_cache", &self.shared)
            .field("renew_before", &self.renew_before)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl TokenManagerBuilder {
    /// Registers a client-credentials client under `name`.
    pub fn client(mut self, name: &str, client: ClientCredentials) -> Self {
        self.clients.push((name.to_owned(), client));
        self
    }

    /// The protocol client (and so the HTTP transport) used for token requests; by default
    /// [`OAuthClient::new`]: hyper-util with rustls.
    pub fn oauth_client(mut self, oauth: OAuthClient) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// A cache shared between processes (Redis) or managers, behind the in-memory tier.
    pub fn shared_cache(mut self, cache: impl TokenCache) -> Self {
        self.shared = Some(Arc::new(cache));
        self
    }

    /// Like [`shared_cache`](Self::shared_cache), for a cache already behind an `Arc`.
    pub fn shared_cache_arc(mut self, cache: Arc<dyn TokenCache>) -> Self {
        self.shared = Some(cache);
        self
    }

    /// The time source (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self.custom_clock = true;
        self
    }

    /// How long before expiry a token is renewed (default 60 s). For short-lived tokens the buffer
    /// is at most a quarter of the lifetime, so a 60 s token is used for 45 s.
    pub fn renew_before(mut self, buffer: Duration) -> Self {
        self.renew_before = buffer;
        self
    }

    /// How failed token requests are retried.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The cache key namespace (default `tokenwarden`), to keep applications sharing a Redis apart.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// How many tokens with per-request parameters are kept in memory (default 1,000); each
    /// client's configured token is always kept.
    pub fn max_cached_tokens(mut self, max: usize) -> Self {
        self.max_cached_tokens = max;
        self
    }

    /// The longest any shared-cache call may take before it counts as a miss (default 500 ms).
    pub fn shared_cache_timeout(mut self, timeout: Duration) -> Self {
        self.cache_timeout = timeout;
        self
    }

    /// How long a replica may hold the cross-replica refresh lease (default 30 s) and how long
    /// the others wait for its token before fetching their own (default 5 s).
    pub fn lease(mut self, ttl: Duration, wait: Duration) -> Self {
        self.lease_ttl = ttl;
        self.lease_wait = wait;
        self
    }

    /// Builds the manager.
    pub fn build(self) -> Result<TokenManager, Error> {
        let oauth = match self.oauth {
            Some(oauth) => oauth,
            None => OAuthClient::new().map_err(|e| {
                Error::Config(format!("cannot build the default HTTP transport: {e}"))
            })?,
        };
        let mut clients = HashMap::with_capacity(self.clients.len());
        for (name, config) in self.clients {
            let params = TokenParams::new();
            let key = cache_key(&self.namespace, &name, &config, &params);
            let name: Arc<str> = name.into();
            let entry = Arc::new(ClientEntry {
                name: name.clone(),
                config,
                default_slot: Arc::new(Slot::new(key, params)),
            });
            if clients.insert(name.clone(), entry).is_some() {
                return Err(Error::Config(format!(
                    "client `{name}` is registered twice"
                )));
            }
        }
        Ok(TokenManager {
            inner: Arc::new(Inner {
                clients,
                oauth,
                shared: self.shared,
                clock: self.clock,
                system_clock: !self.custom_clock,
                renew_before: self.renew_before,
                retry: self.retry,
                namespace: self.namespace,
                max_cached_tokens: self.max_cached_tokens,
                cache_timeout: self.cache_timeout,
                lease_ttl: self.lease_ttl,
                lease_wait: self.lease_wait,
                slots: Mutex::new(HashMap::new()),
                counters: Counters::default(),
            }),
        })
    }
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.inner.clients.keys().map(|n| &**n).collect();
        names.sort_unstable();
        f.debug_struct("TokenManager")
            .field("clients", &names)
            .field("shared_cache", &self.inner.shared)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// Starts building a manager.
    pub fn builder() -> TokenManagerBuilder {
        TokenManagerBuilder {
            clients: Vec::new(),
            oauth: None,
            shared: None,
            clock: Arc::new(SystemClock),
            custom_clock: false,
            renew_before: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            namespace: CacheKey::DEFAULT_NAMESPACE.to_owned(),
            max_cached_tokens: 1_000,
            cache_timeout: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(30),
            lease_wait: Duration::from_secs(5),
        }
    }

    /// A valid token for the client's configured parameters: from memory, else from the shared
    /// cache, else from the token endpoint (one request however many callers ask at once).
    pub async fn token(&self, client: &str) -> Result<AccessToken, Error> {
        self.token_with(client, &TokenParams::new()).await
    }

    /// A valid token for per-request parameters (force renewal, scope, resource, extra parameters).
    pub async fn token_with(
        &self,
        client: &str,
        params: &TokenParams,
    ) -> Result<AccessToken, Error> {
        let client = self.client(client)?;
        let slot = self.slot_for(&client, params);
        let entry = self
            .entry(&client, &slot, params.is_force_renewal())
            .await?;
        Ok(entry.cached.token().clone())
    }

    /// Compare-and-invalidate: forgets the cached token for these parameters only if it is still
    /// `token` (the one a resource server rejected), here and in the shared cache. Returns whether
    /// it did; a burst of callers reporting the same token invalidates it once.
    pub async fn invalidate(
        &self,
        client: &str,
        params: &TokenParams,
        token: &AccessToken,
    ) -> Result<bool, Error> {
        let client = self.client(client)?;
        let Some(slot) = self.existing_slot(&client, params) else {
            return Ok(false);
        };
        Ok(self
            .invalidate_if(&slot, |e| e.cached.token().secret() == token.secret())
            .await)
    }

    /// The cache key a token for `client` and `params` is stored under, here and in the shared
    /// cache (for inspecting a shared cache, or invalidating from outside).
    pub fn cache_key(&self, client: &str, params: &TokenParams) -> Result<CacheKey, Error> {
        let client = self.client(client)?;
        Ok(cache_key(
            &self.inner.namespace,
            &client.name,
            &client.config,
            params,
        ))
    }

    /// Drops every token held in this process's memory (not the shared cache): the next call
    /// goes to the shared cache or the token endpoint.
    pub fn purge_local(&self) {
        for client in self.inner.clients.values() {
            client.default_slot.current.store(None);
            client
                .default_slot
                .generation
                .fetch_add(1, Ordering::AcqRel);
        }
        lock(&self.inner.slots).clear();
    }

    /// What this manager has done so far.
    pub fn metrics(&self) -> Metrics {
        let c = &self.inner.counters;
        Metrics {
            token_requests: c.token_requests.load(Ordering::Relaxed),
            shared_cache_hits: c.shared_hits.load(Ordering::Relaxed),
            background_renewals: c.background_renewals.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            replays: c.replays.load(Ordering::Relaxed),
        }
    }

    /// The names of the registered clients.
    pub fn client_names(&self) -> impl Iterator<Item = &str> {
        self.inner.clients.keys().map(|n| &**n)
    }

    pub(crate) fn client(&self, name: &str) -> Result<Arc<ClientEntry>, Error> {
        self.inner
            .clients
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownClient {
                client: name.into(),
            })
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    pub(crate) fn count_replay(&self) {
        self.inner.counters.replays.fetch_add(1, Ordering::Relaxed);
    }

    /// The hot path: the default token if it is usable, without locks, allocation or writes to
    /// memory other threads read. A token due for renewal is still returned while one renewal
    /// runs in the background.
    #[inline]
    pub(crate) fn usable_default<'a>(
        &self,
        client: &Arc<ClientEntry>,
        tokens: &'a mut DefaultTokenCache,
    ) -> Option<&'a Arc<Entry>> {
        let entry = tokens.load().as_ref()?;
        if entry.fresh.load(Ordering::Relaxed) {
            return Some(entry);
        }
        self.usable_by_clock(client, entry)
    }

    /// [`usable_default`](Self::usable_default) when no timer vouches for the entry: a custom
    /// clock, no runtime, or a token due for renewal.
    #[inline(never)]
    fn usable_by_clock<'a>(
        &self,
        client: &Arc<ClientEntry>,
        entry: &'a Arc<Entry>,
    ) -> Option<&'a Arc<Entry>> {
        let now = match self.inner.system_clock {
            true => SystemClock.now_coarse_unix_nanos(),
            false => self.inner.clock.now_coarse_unix_nanos(),
        };
        if now < entry.fresh_until_coarse {
            return Some(entry);
        }
        if now < entry.usable_until_coarse {
            self.renew_in_background(client, &client.default_slot, self.now());
            return Some(entry);
        }
        None
    }

    /// A view of the client's default token for [`usable_default`](Self::usable_default).
    pub(crate) fn default_token_cache(client: &ClientEntry) -> DefaultTokenCache {
        arc_swap::Cache::new(client.default_slot.current.clone())
    }

    /// What tells the client's default token apart from every other slot's while a
    /// [`DefaultTokenCache`] of it is alive: the address of what the cache holds a reference to.
    pub(crate) fn default_token_key(client: &ClientEntry) -> usize {
        Arc::as_ptr(&client.default_slot.current).addr()
    }

    pub(crate) fn slot_for(&self, client: &ClientEntry, params: &TokenParams) -> Arc<Slot> {
        if params.uses_default_key() {
            return client.default_slot.clone();
        }
        let key = cache_key(&self.inner.namespace, &client.name, &client.config, params);
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        if slots.len() >= self.inner.max_cached_tokens {
            self.evict(&mut slots);
        }
        let slot = Arc::new(Slot::new(key.clone(), params.without_force_renewal()));
        if self.inner.max_cached_tokens > 0 {
            slots.insert(key, slot.clone());
        }
        slot
    }

    fn existing_slot(&self, client: &ClientEntry, params: &TokenParams) -> Option<Arc<Slot>> {
        if params.uses_default_key() {
            return Some(client.default_slot.clone());
        }
        let key = cache_key(&self.inner.namespace, &client.name, &client.config, params);
        lock(&self.inner.slots).get(&key).cloned()
    }

    /// Keeps the per-request slots within bounds: first drop the ones holding nothing usable that
    /// nobody is using, then the one due for renewal first.
    fn evict(&self, slots: &mut HashMap<CacheKey, Arc<Slot>>) {
        let now = self.now();
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|e| e.cached.is_usable(now))
        });
        while slots.len() >= self.inner.max_cached_tokens.max(1) {
            let oldest = slots
                .iter()
                .min_by_key(|(_, s)| s.current.load().as_ref().map(|e| e.cached.renew_at()))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(key) => {
                    slots.remove(&key);
                }
                None => break,
            }
        }
    }

    pub(crate) async fn entry(
        &self,
        client: &Arc<ClientEntry>,
        slot: &Arc<Slot>,
        force: bool,
    ) -> Result<Arc<Entry>, Error> {
        if !force && let Some(entry) = slot.current.load_full() {
            let now = self.now();
            if entry.cached.is_fresh(now) {
                return Ok(entry);
            }
            if entry.cached.is_usable(now) {
                self.renew_in_background(client, slot, now);
                return Ok(entry);
            }
        }
        self.acquire(client, slot, force).await
    }

    /// The single-flight section: one caller per slot fetches, the others share its outcome.
    async fn acquire(
        &self,
        client: &ClientEntry,
        slot: &Slot,
        force: bool,
    ) -> Result<Arc<Entry>, Error> {
        let seen = slot.generation.load(Ordering::Acquire);
        let previous = slot.current.load_full();
        let _flight = slot.flight.lock().await;
        let now = self.now();
        let generation = slot.generation.load(Ordering::Acquire);
        if let Some(entry) = slot.current.load_full() {
            let replaced = !same_entry(previous.as_ref(), &entry);
            // Someone fetched while this caller waited: that answers a forced renewal as well.
            if entry.cached.is_fresh(now) && (!force || (generation != seen && replaced)) {
                return Ok(entry);
            }
        }
        if generation != seen
            && let Some(failure) = slot.last_failure.load_full()
            && failure.generation == generation
        {
            return Err(failure.error.clone());
        }
        match self
            .fetch_through_shared(client, slot, force, previous.as_deref())
            .await
        {
            Ok(entry) => {
                let entry = Arc::new(entry);
                self.arm_freshness_timer(&entry);
                slot.current.store(Some(entry.clone()));
                slot.generation.fetch_add(1, Ordering::AcqRel);
                Ok(entry)
            }
            Err(error) => {
                let generation = slot.generation.fetch_add(1, Ordering::AcqRel) + 1;
                slot.last_failure.store(Some(Arc::new(Failure {
                    generation,
                    error: error.clone(),
                })));
                Err(error)
            }
        }
    }

    /// Lets the layer's hot path skip the clock while `entry` is fresh: sets its `fresh` flag
    /// and starts a timer on the current runtime that clears it at `renew_at`.
    ///
    /// Reading even the coarse clock costs a vDSO call on every request (6–8 ns on this
    /// project's VM, a large part of what the layer adds to a request); a flag costs a load.
    ///
    /// Only with the system clock (a custom clock may not move with real time) and on a
    /// multi-thread Tokio runtime, whose workers keep firing timers while time passes. A
    /// current-thread runtime fires them only while something drives it: one that sits idle
    /// between `block_on` calls would leave the flag set long past `renew_at`, so there the hot
    /// path keeps asking the clock. The timer measures the time left on the monotonic clock, so
    /// a step of the wall clock after the token arrived does not stretch or cut its cache
    /// lifetime.
    fn arm_freshness_timer(&self, entry: &Arc<Entry>) {
        if !self.inner.system_clock {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !matches!(runtime.runtime_flavor(), RuntimeFlavor::MultiThread) {
            return;
        }
        let Ok(left) = fresh_until(&entry.cached).duration_since(SystemTime::now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        entry.fresh.store(true, Ordering::Relaxed);
        // Made out here, so that a task dropped before its first poll clears the flag too.
        let stale = MarkStale(Arc::downgrade(entry));
        let timer = runtime.spawn(async move {
            let _stale = stale;
            tokio::time::sleep(left).await;
        });
        let _ = entry.timer.set(timer.abort_handle());
    }

    #[cold]
    fn renew_in_background(&self, client: &Arc<ClientEntry>, slot: &Arc<Slot>, now: SystemTime) {
        let now_ms = unix_ms(now);
        if now_ms < slot.renew_not_before_ms.load(Ordering::Relaxed) {
            return;
        }
        if slot.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to renew on: the token is renewed on the request path once it expires.
            slot.renewing.store(false, Ordering::Release);
            return;
        };
        self.inner
            .counters
            .background_renewals
            .fetch_add(1, Ordering::Relaxed);
        let (this, client, slot) = (self.clone(), client.clone(), slot.clone());
        runtime.spawn(async move {
            if let Err(error) = this.acquire(&client, &slot, false).await {
                tracing::warn!(client = %client.name, %error, "background token renewal failed; the current token stays in use");
                let retry_at = unix_ms(this.now()) + RENEWAL_RETRY_AFTER.as_millis() as u64;
                slot.renew_not_before_ms.store(retry_at, Ordering::Relaxed);
            }
            slot.renewing.store(false, Ordering::Release);
        });
    }

    /// Compare-and-invalidate on one slot; `matches` says whether the current entry is the one that failed.
    pub(crate) async fn invalidate_if(
        &self,
        slot: &Slot,
        matches: impl Fn(&Entry) -> bool,
    ) -> bool {
        let current = slot.current.load();
        let Some(entry) = current.as_ref().filter(|e| matches(e)).cloned() else {
            return false;
        };
        let previous = slot.current.compare_and_swap(&*current, None);
        if !same_entry(previous.as_ref(), &entry) {
            return false;
        }
        slot.generation.fetch_add(1, Ordering::AcqRel);
        slot.rejected
            .store(Some(Arc::new(entry.cached.token().secret().clone())));
        self.inner
            .counters
            .invalidations
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(key = %slot.key, token = %entry.cached.token().secret().fingerprint(), "invalidated a rejected token");
        if let Some(shared) = &self.inner.shared {
            self.bounded(
                shared.remove_if(&slot.key, entry.cached.token()),
                "remove_if",
            )
            .await;
        }
        true
    }

    /// The shared tier and the cross-replica lease around a fetch.
    async fn fetch_through_shared(
        &self,
        client: &ClientEntry,
        slot: &Slot,
        force: bool,
        previous: Option<&Entry>,
    ) -> Result<Entry, Error> {
        let Some(shared) = self.inner.shared.clone() else {
            return self.fetch(client, slot).await;
        };
        let rejected = slot.rejected.load_full();
        let acceptable = |cached: &CachedToken, now: SystemTime| {
            let secret = cached.token().secret();
            cached.is_fresh(now)
                && rejected.as_deref() != Some(secret)
                && !(force && previous.is_some_and(|p| p.cached.token().secret() == secret))
        };
        let from_shared = |cached: Option<CachedToken>| -> Option<Entry> {
            let cached = cached.filter(|c| acceptable(c, self.now()))?;
            let entry = self.entry_from_cached(cached).ok()?;
            self.inner
                .counters
                .shared_hits
                .fetch_add(1, Ordering::Relaxed);
            Some(entry)
        };
        if !force
            && let Some(entry) =
                from_shared(self.bounded(shared.get(&slot.key), "get").await.flatten())
        {
            return Ok(entry);
        }
        // The lease must outlive the longest fetch (every attempt timing out, every backoff at its
        // cap), or a second replica would fetch while the first still waits.
        let retry = &self.inner.retry;
        let longest_fetch =
            client.config.timeout() * (retry.max_retries + 1) + retry.max_delay * retry.max_retries;
        let lease_ttl = self.inner.lease_ttl.max(longest_fetch);
        let deadline = tokio::time::Instant::now() + self.inner.lease_wait;
        let mut backoff = Duration::from_millis(5);
        loop {
            match self
                .bounded(shared.try_lease(&slot.key, lease_ttl), "try_lease")
                .await
            {
                Some(lease @ Lease::Acquired(_)) => {
                    let mut held = HeldLease {
                        cache: shared.clone(),
                        key: slot.key.clone(),
                        lease: Some(lease),
                    };
                    // Another replica may have stored its token just before this one got the lease.
                    let stored = self.bounded(shared.get(&slot.key), "get").await.flatten();
                    let result = match from_shared(stored) {
                        Some(entry) => Ok(entry),
                        None => self.fetch_and_share(client, slot, &shared).await,
                    };
                    if let Some(lease) = held.lease.take() {
                        self.bounded(shared.release_lease(&slot.key, &lease), "release_lease")
                            .await;
                    }
                    return result;
                }
                Some(Lease::HeldElsewhere) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                    if let Some(entry) =
                        from_shared(self.bounded(shared.get(&slot.key), "get").await.flatten())
                    {
                        return Ok(entry);
                    }
                }
                Some(Lease::HeldElsewhere) => {
                    tracing::debug!(key = %slot.key, "gave up waiting for another replica's token");
                    return self.fetch_and_share(client, slot, &shared).await;
                }
                Some(Lease::NotShared) | None => {
                    return self.fetch_and_share(client, slot, &shared).await;
                }
            }
        }
    }

    async fn fetch_and_share(
        &self,
        client: &ClientEntry,
        slot: &Slot,
        shared: &Arc<dyn TokenCache>,
    ) -> Result<Entry, Error> {
        let entry = self.fetch(client, slot).await?;
        self.bounded(shared.put(&slot.key, &entry.cached), "put")
            .await;
        Ok(entry)
    }

    /// Runs a shared-cache call with the manager's timeout; any failure is a miss (`None`).
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, tokenwarden_core::Error>>,
        op: &'static str,
    ) -> Option<T> {
        match tokio::time::timeout(self.inner.cache_timeout, call).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "shared token cache failed; treated as a miss");
                None
            }
            Err(_) => {
                tracing::debug!(op, timeout = ?self.inner.cache_timeout, "shared token cache timed out; treated as a miss");
                None
            }
        }
    }

    /// One token request, retried on server errors, transport failures and timeouts.
    async fn fetch(&self, client: &ClientEntry, slot: &Slot) -> Result<Entry, Error> {
        let mut attempt = 0;
        loop {
            self.inner
                .counters
                .token_requests
                .fetch_add(1, Ordering::Relaxed);
            let sent_at = self.now();
            let result = self
                .inner
                .oauth
                .client_credentials(&client.config, &slot.params)
                .await;
            let error = match result {
                Ok(response) => return self.entry_from_response(client, response, sent_at),
                Err(error) => error,
            };
            if error.is_retryable() && attempt < self.inner.retry.max_retries {
                let delay = self.inner.retry.delay(attempt);
                tracing::debug!(client = %client.name, %error, ?delay, "token request failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            tracing::warn!(client = %client.name, %error, "token request failed");
            return Err(Error::Token {
                client: client.name.clone(),
                grant: GRANT_CLIENT_CREDENTIALS,
                source: Arc::new(error),
            });
        }
    }

    fn entry_from_response(
        &self,
        client: &ClientEntry,
        response: TokenResponse,
        sent_at: SystemTime,
    ) -> Result<Entry, Error> {
        let lifetime = response
            .expires_in()
            .unwrap_or_else(|| client.config.default_lifetime());
        let expires_at = sent_at
            .checked_add(lifetime)
            .unwrap_or(sent_at + Duration::from_secs(365 * 24 * 3600));
        let buffer = self.inner.renew_before.min(lifetime / 4);
        let renew_at = expires_at.checked_sub(buffer).unwrap_or(expires_at);
        let token = response.into_access_token().with_expires_at(expires_at);
        if *token.token_type() == tokenwarden_core::TokenType::DPoP {
            // Sending a DPoP-bound token without a proof would only earn 401s.
            return Err(Error::Token {
                client: client.name.clone(),
                grant: GRANT_CLIENT_CREDENTIALS,
                source: Arc::new(tokenwarden_oauth::Error::InvalidResponse(
                    "the server issued a DPoP-bound token, but this client sends no DPoP proofs"
                        .into(),
                )),
            });
        }
        tracing::debug!(client = %client.name, token = %token.secret().fingerprint(), ?lifetime, "token obtained");
        self.entry_from_cached(CachedToken::new(token, expires_at, renew_at))
            .map_err(|error| Error::Token {
                client: client.name.clone(),
                grant: GRANT_CLIENT_CREDENTIALS,
                source: Arc::new(error),
            })
    }
}

impl TokenManager {
    fn entry_from_cached(&self, cached: CachedToken) -> Result<Entry, tokenwarden_oauth::Error> {
        let token = cached.token();
        let value = format!("{} {}", token.token_type().as_str(), token.expose_secret());
        let mut header = HeaderValue::try_from(value).map_err(|_| {
            tokenwarden_oauth::Error::InvalidResponse(
                "the token type cannot be sent in an Authorization header".into(),
            )
        })?;
        header.set_sensitive(true);
        let id = NEXT_ENTRY_ID.fetch_add(1, Ordering::Relaxed);
        // The coarse clock may lag: deadlines for it are earlier by its bound, so an expired
        // token is never sent.
        let early =
            |t: SystemTime| unix_nanos(t.checked_sub(COARSE_CLOCK_LAG).unwrap_or(UNIX_EPOCH));
        Ok(Entry {
            fresh_until_coarse: early(cached.renew_at()),
            usable_until_coarse: early(cached.expires_at()),
            cached,
            header,
            id,
            fresh: AtomicBool::new(false),
            timer: OnceLock::new(),
        })
    }
}

/// A lease this replica holds; if the fetch is abandoned (its caller dropped the future), the
/// lease is released in the background instead of making other replicas wait out its TTL.
struct HeldLease {
    cache: Arc<dyn TokenCache>,
    key: CacheKey,
    lease: Option<Lease>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cache, key) = (self.cache.clone(), self.key.clone());
            runtime.spawn(async move {
                let release = cache.release_lease(&key, &lease);
                let _ = tokio::time::timeout(Duration::from_secs(1), release).await;
            });
        }
    }
}

impl Slot {
    fn new(key: CacheKey, params: TokenParams) -> Self {
        Slot {
            key,
            params,
            current: Arc::new(ArcSwapOption::empty()),
            flight: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            last_failure: ArcSwapOption::empty(),
            renewing: AtomicBool::new(false),
            renew_not_before_ms: AtomicU64::new(0),
            rejected: ArcSwapOption::empty(),
        }
    }
}

fn same_entry(a: Option<&Arc<Entry>>, b: &Arc<Entry>) -> bool {
    a.is_some_and(|a| Arc::ptr_eq(a, b))
}

/// The cache key of a client's token for some parameters: what the token request will contain.
fn cache_key(
    namespace: &str,
    name: &str,
    config: &ClientCredentials,
    params: &TokenParams,
) -> CacheKey {
    let scopes = params.scopes().unwrap_or(config.scopes());
    let resources = params.resources().unwrap_or(config.resources());
    let mut key = CacheKey::builder(name)
        .namespace(namespace)
        .scopes(scopes)
        .resources(resources)
        // Two deployments that picked the same client name for other credentials or another
        // authorization server never share tokens.
        .part("client_id", config.client_id())
        .part("token_endpoint", &config.token_endpoint().to_string());
    if let Some(audience) = params.audience_override().or(config.audience()) {
        key = key.part("audience", audience);
    }
    for (name, value) in config.extra_params() {
        if !params.extra_params().iter().any(|(n, _)| n == name) {
            key = key.part(&format!("param.{name}"), value);
        }
    }
    for (name, value) in params.extra_params() {
        key = key.part(&format!("param.{name}"), value);
    }
    key.build()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps hold no invariants a panic could break half-way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwarden_core::{ManualClock, TokenType};

    fn manager_with(clock: Option<ManualClock>) -> TokenManager {
        // Nothing is fetched: entries are made from tokens built here.
        let credentials = ClientCredentials::builder("http://127.0.0.1:9/token", "c")
            .client_secret("s")
            .build()
            .unwrap();
        let builder = TokenManager::builder().client("c", credentials);
        match clock {
            Some(clock) => builder.clock(clock),
            None => builder,
        }
        .build()
        .unwrap()
    }

    /// An entry fresh for `fresh_for`, armed as `acquire` arms a new one.
    fn armed_entry(manager: &TokenManager, fresh_for: Duration) -> Arc<Entry> {
        let now = SystemTime::now();
        let token = AccessToken::new("t", TokenType::Bearer).unwrap();
        let cached = CachedToken::new(token, now + fresh_for * 2, now + fresh_for);
        let entry = Arc::new(manager.entry_from_cached(cached).unwrap());
        manager.arm_freshness_timer(&entry);
        entry
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_fresh_flag_is_cleared_when_renewal_is_due() {
        let manager = manager_with(None);
        let entry = armed_entry(&manager, Duration::from_millis(300));
        assert!(entry.fresh.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(entry.fresh.load(Ordering::Relaxed), "cleared early");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!entry.fresh.load(Ordering::Relaxed), "not cleared when due");
    }

    #[test]
    fn a_fresh_flag_never_outlives_the_token() {
        let t0 = SystemTime::now();
        let token = || AccessToken::new("t", TokenType::Bearer).unwrap();
        let hour = Duration::from_secs(3600);
        let renew_early = CachedToken::new(token(), t0 + hour, t0 + hour - Duration::from_secs(60));
        assert_eq!(
            fresh_until(&renew_early),
            t0 + hour - Duration::from_secs(60)
        );
        let renew_at_expiry = CachedToken::new(token(), t0 + hour, t0 + hour);
        assert_eq!(fresh_until(&renew_at_expiry), t0 + hour - COARSE_CLOCK_LAG);
    }

    #[test]
    fn the_fresh_flag_is_cleared_when_the_timers_runtime_shuts_down() {
        let manager = manager_with(None);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let entry = {
            let _inside = runtime.enter();
            armed_entry(&manager, Duration::from_secs(3600))
        };
        assert!(entry.fresh.load(Ordering::Relaxed));
        drop(runtime);
        assert!(!entry.fresh.load(Ordering::Relaxed));
        // The hot path then asks the clock, which still finds the token fresh.
        let client = manager.client("c").unwrap();
        assert!(manager.usable_by_clock(&client, &entry).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_entry_stops_its_timer_when_it_goes() {
        let manager = manager_with(None);
        let metrics = tokio::runtime::Handle::current().metrics();
        let entry = armed_entry(&manager, Duration::from_secs(3600));
        assert_eq!(metrics.num_alive_tasks(), 1);
        drop(entry);
        // A worker finishes the aborted task in its own time.
        for _ in 0..200 {
            if metrics.num_alive_tasks() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the timer outlived its entry");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn no_timer_vouches_for_a_token_under_a_custom_clock_or_without_a_runtime() {
        let manager = manager_with(Some(ManualClock::starting_now()));
        let entry = armed_entry(&manager, Duration::from_secs(3600));
        assert!(!entry.fresh.load(Ordering::Relaxed));

        let manager = manager_with(None);
        let entry = std::thread::spawn(move || armed_entry(&manager, Duration::from_secs(3600)))
            .join()
            .unwrap();
        assert!(!entry.fresh.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn no_timer_vouches_for_a_token_on_a_current_thread_runtime() {
        // Such a runtime fires timers only while it is driven; the clock decides instead.
        let manager = manager_with(None);
        let entry = armed_entry(&manager, Duration::from_secs(3600));
        assert!(!entry.fresh.load(Ordering::Relaxed));
        let client = manager.client("c").unwrap();
        assert!(manager.usable_by_clock(&client, &entry).is_some());
    }
}
