//! The token manager: named clients, each a [`Source`] of tokens; a slot per cache key in
//! memory, a shared tier behind it, single-flight, renewal ahead of expiry, retries within a
//! deadline, and compare-and-invalidate.
//!
//! A token is asked for in [`TokenManager::entry`]: the slot's current token if it is usable
//! (one background renewal when it is due), else [`TokenManager::acquire`]: the slot's
//! single-flight, around the shared tier, around a fetch from the source with retries.

mod renewal;
mod shared;
mod slot;
mod slot_map;
mod source;
mod time;
mod users;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use tokenwarden_core::{
    AccessToken, CacheKey, CachedToken, Clock, SubjectToken, TokenCache, TokenParams, UserKey,
    UserTokenStore, UserTokens,
};
use tokenwarden_oauth::{Grant, OAuthClient, RefreshTokens, TokenTypeHint};
use tokio::time::Instant;
use tracing::Instrument;

pub use renewal::RetryPolicy;
pub(crate) use slot::{Entry, Slot, TokenView};
use slot_map::SlotMap;

use renewal::{Stop, Timing};
use shared::{Found, SharedTier};
use slot::{Freshness, Rejection};
use source::Source;
use time::TimeSource;
use users::{UserFailure, UserStore};

use crate::Error;

/// After a failed background renewal, the still-valid token is used this long before trying again.
const RENEWAL_RETRY_AFTER: Duration = Duration::from_secs(2);

/// The longest duration any setting takes: far beyond any sensible value, and far enough from
/// overflow that adding it to the current time is always safe.
const MAX_SETTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// Obtains, caches and renews access tokens for named clients. Cheap to clone: clones share
/// everything (clients, caches, in-flight requests).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tokenwarden::{ClientConfig, ClientCredentials, TokenManager, TokenParams};
///
/// let idp = ClientConfig::builder("https://idp.example.com/oauth2/token", "billing-svc")
///     .client_secret(std::env::var("BILLING_SECRET")?)
///     .build()?;
/// let manager = TokenManager::builder()
///     .client("billing", ClientCredentials::new(idp).scope("invoices.read"))
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
    clients: HashMap<Arc<str>, Arc<NamedClient>>,
    oauth: OAuthClient,
    shared: Option<SharedTier>,
    users: UserStore,
    time: TimeSource,
    timing: Timing,
    retry: RetryPolicy,
    acquire_timeout: Duration,
    rejection_backoff: Duration,
    namespace: String,
    max_cached_tokens: usize,
    /// Slots for per-request parameters; each client's default slot lives in its `NamedClient`.
    slots: Mutex<SlotMap<CacheKey>>,
    next_entry_id: AtomicU64,
    counters: Counters,
}

/// What a request takes of a token: its `Authorization` value, and what a response to it must
/// be reported with.
pub(crate) struct Sendable {
    pub(crate) header: HeaderValue,
    pub(crate) id: u64,
    /// An answer other than 401 is reported with [`TokenManager::accepted`].
    pub(crate) on_probation: bool,
}

impl Sendable {
    #[inline]
    pub(crate) fn of(entry: &Entry) -> Sendable {
        Sendable {
            header: entry.header.clone(),
            id: entry.id,
            on_probation: entry.on_probation(),
        }
    }
}

/// A registered client: its name, its source of tokens and the slot of its configured token.
pub(crate) struct NamedClient {
    pub(crate) name: Arc<str>,
    /// Whose tokens these are, and so what a request must carry.
    pub(crate) kind: ClientKind,
    source: Source,
    grant: Arc<str>,
    /// The slot of the client's configured token (unused by a user client).
    pub(crate) default_slot: Arc<Slot>,
    /// A user client's slots, one per user seen lately.
    users: Mutex<SlotMap<UserKey>>,
}

/// Whose tokens a client gets, which decides what a request for one must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientKind {
    /// The client's own (client credentials, an extension grant): nothing.
    Own,
    /// Signed-in users': the [`UserKey`] of the user.
    Users,
    /// Its callers', by exchanging their tokens: the [`SubjectToken`].
    Subjects,
}

impl NamedClient {
    /// Whether its tokens are signed-in users', so a request needs a [`UserKey`].
    pub(crate) fn is_user_client(&self) -> bool {
        self.kind == ClientKind::Users
    }

    /// Whether it exchanges a subject token, so a request needs a [`SubjectToken`].
    pub(crate) fn needs_subject_token(&self) -> bool {
        self.kind == ClientKind::Subjects
    }

    /// Checks that `params` carry a subject token if and only if the client exchanges one.
    pub(crate) fn check_subject(&self, params: &TokenParams) -> Result<(), Error> {
        match (self.needs_subject_token(), params.subject().is_some()) {
            (true, false) => Err(Error::NoSubjectToken {
                client: self.name.clone(),
            }),
            (false, true) => Err(Error::Config(format!(
                "client `{}` ({}) exchanges no subject token; the request carries one",
                self.name, self.grant
            ))),
            _ => Ok(()),
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

/// What [`TokenManager::sign_out`] revokes at the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revoke {
    /// The refresh token (servers revoke the access tokens issued from it with it).
    RefreshToken,
    /// The refresh token, and the access token on its own request.
    RefreshAndAccessToken,
}

/// Why a token is acquired rather than taken from the slot.
#[derive(Clone, Copy, Debug)]
enum Reason {
    /// None was cached.
    Missing,
    /// The cached one is no longer sent.
    Expired,
    /// Renewal ahead of expiry, in the background.
    Due,
    /// The caller asked for a new one.
    Forced,
    /// A resource server rejected the cached one.
    Rejected,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Expired => "expired",
            Reason::Due => "due",
            Reason::Forced => "forced",
            Reason::Rejected => "rejected",
        }
    }
}

/// Where an acquisition's token came from: the farthest tier it reached.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Tier {
    /// Another caller's attempt, or a token that became fresh while this one waited.
    Memory,
    Shared,
    Endpoint,
}

/// What an acquisition did, filled in as it goes (shared with the attempt's future, which may
/// run on another thread).
struct Progress {
    tier: AtomicU8,
    attempts: AtomicU32,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            tier: AtomicU8::new(Tier::Memory as u8),
            attempts: AtomicU32::new(0),
        }
    }
}

impl Progress {
    fn reached(&self, tier: Tier) {
        self.tier.store(tier as u8, Ordering::Relaxed);
    }

    fn tier(&self) -> &'static str {
        match self.tier.load(Ordering::Relaxed) {
            t if t == Tier::Shared as u8 => "shared",
            t if t == Tier::Endpoint as u8 => "endpoint",
            _ => "memory",
        }
    }
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

/// Builds a [`TokenManager`].
pub struct TokenManagerBuilder {
    clients: Vec<(String, Result<Source, tokenwarden_oauth::Error>)>,
    oauth: Option<OAuthClient>,
    shared: Option<Arc<dyn TokenCache>>,
    user_store: Option<Arc<dyn UserTokenStore>>,
    time: TimeSource,
    renew_before: Duration,
    expiry_skew: Duration,
    retry: RetryPolicy,
    acquire_timeout: Duration,
    rejection_backoff: Duration,
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
            .field("expiry_skew", &self.expiry_skew)
            .field("retry", &self.retry)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

impl TokenManagerBuilder {
    /// Registers a client under `name`: its tokens come from `grant`
    /// ([`ClientCredentials`](crate::ClientCredentials), an
    /// [`ExtensionGrant`](crate::ExtensionGrant), [`TokenExchange`](crate::TokenExchange), or
    /// your own [`Grant`]). A grant that [needs a subject token](Grant::needs_subject_token)
    /// gets one token per subject, each request bringing its
    /// [`SubjectToken`](crate::SubjectToken).
    pub fn client(mut self, name: &str, grant: impl Grant) -> Self {
        self.clients.push((name.to_owned(), Source::grant(grant)));
        self
    }

    /// Registers a client that acts for signed-in users under `name`: each user's tokens are
    /// stored at sign-in ([`TokenManager::sign_in`]), and the access token is refreshed with the
    /// user's refresh token when it expires or is due. Requests through its layer carry the
    /// user's [`UserKey`] in their extensions.
    pub fn user_client(mut self, name: &str, refresh: RefreshTokens) -> Self {
        self.clients.push((name.to_owned(), Source::users(refresh)));
        self
    }

    /// Where users' tokens are kept (default: a [`MemoryUserTokenStore`] for this process;
    /// replicas share one, such as Redis).
    ///
    /// [`MemoryUserTokenStore`]: tokenwarden_memory::MemoryUserTokenStore
    pub fn user_token_store(mut self, store: impl UserTokenStore) -> Self {
        self.user_store = Some(Arc::new(store));
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
        self.time = TimeSource::Custom(Arc::new(clock));
        self
    }

    /// How long before expiry a token is renewed (default 60 s), at most half its lifetime: a
    /// 60 s token is renewed after 30 s. Callers keep the current token while one renewal runs
    /// in the background.
    pub fn renew_before(mut self, buffer: Duration) -> Self {
        self.renew_before = buffer;
        self
    }

    /// How long before expiry a token stops being sent (default 5 s), at most the renew-ahead
    /// window. Servers truncate a token's `exp` to whole seconds, so a token can die up to a
    /// second before its `expires_in` says; clocks drift too.
    pub fn expiry_skew(mut self, skew: Duration) -> Self {
        self.expiry_skew = skew;
        self
    }

    /// How failed token requests are retried.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The longest one token acquisition may take, waits for other callers and replicas,
    /// retries and `Retry-After` included (default 30 s). A hung token endpoint costs a caller
    /// no more.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long renewals of a key pause after a token fetched because its predecessor was
    /// rejected is rejected too (default 5 s). During the pause the token is still sent and
    /// 401s go back to callers, so an API that rejects every token costs a token request per
    /// pause, not per request, and requests succeed as soon as it accepts the token again.
    pub fn rejection_backoff(mut self, backoff: Duration) -> Self {
        self.rejection_backoff = backoff;
        self
    }

    /// The cache key namespace (default `tokenwarden`), to keep applications sharing a Redis apart.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// How many tokens with per-request parameters or per subject are kept in memory, and how
    /// many users' tokens per user client (default 1,000); each client's configured token is
    /// always kept. When full, slots holding nothing usable that no request holds go first,
    /// then the least recently used.
    pub fn max_cached_tokens(mut self, max: usize) -> Self {
        self.max_cached_tokens = max;
        self
    }

    /// The longest any shared-cache call may take before it counts as a miss (default 500 ms).
    pub fn shared_cache_timeout(mut self, timeout: Duration) -> Self {
        self.cache_timeout = timeout;
        self
    }

    /// How long a replica may hold the cross-replica lease to fetch a token (default 30 s, and
    /// at least the acquire timeout) and how long the others wait for its token before fetching
    /// their own (default 5 s).
    pub fn lease(mut self, ttl: Duration, wait: Duration) -> Self {
        self.lease_ttl = ttl;
        self.lease_wait = wait;
        self
    }

    /// Builds the manager: fails for a client whose grant is misconfigured, a name registered
    /// twice, a duration that cannot work, or a default HTTP transport that cannot be set up.
    pub fn build(self) -> Result<TokenManager, Error> {
        for (setting, value) in [
            ("renew_before", self.renew_before),
            ("expiry_skew", self.expiry_skew),
            ("acquire_timeout", self.acquire_timeout),
            ("rejection_backoff", self.rejection_backoff),
            ("shared_cache_timeout", self.cache_timeout),
            ("the lease TTL", self.lease_ttl),
            ("the lease wait", self.lease_wait),
            ("the retry base delay", self.retry.base_delay),
            ("the retry max delay", self.retry.max_delay),
            ("max_retry_after", self.retry.max_retry_after),
        ] {
            if value > MAX_SETTING {
                return Err(Error::Config(format!(
                    "{setting} of {value:?} is too long: at most {MAX_SETTING:?}"
                )));
            }
        }
        for (setting, value) in [
            ("acquire_timeout", self.acquire_timeout),
            ("shared_cache_timeout", self.cache_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{setting} is zero")));
            }
        }
        let oauth = match self.oauth {
            Some(oauth) => oauth,
            None => OAuthClient::new().map_err(|e| {
                Error::Config(format!("cannot build the default HTTP transport: {e}"))
            })?,
        };
        let mut clients = HashMap::with_capacity(self.clients.len());
        for (name, source) in self.clients {
            let source = source.map_err(|e| Error::Config(format!("client `{name}`: {e}")))?;
            let params = TokenParams::new();
            let key = source.cache_key(&self.namespace, &name, &params);
            let name: Arc<str> = name.into();
            let kind = if source.is_users() {
                ClientKind::Users
            } else if source.needs_subject_token() {
                ClientKind::Subjects
            } else {
                ClientKind::Own
            };
            let client = Arc::new(NamedClient {
                name: name.clone(),
                kind,
                grant: source.grant_type().into(),
                source,
                default_slot: Arc::new(Slot::new(key, params)),
                users: Mutex::new(SlotMap::new()),
            });
            if clients.insert(name.clone(), client).is_some() {
                return Err(Error::Config(format!(
                    "client `{name}` is registered twice"
                )));
            }
        }
        let users = UserStore {
            store: self
                .user_store
                .unwrap_or_else(|| Arc::new(tokenwarden_memory::MemoryUserTokenStore::default())),
            lease_ttl: self.lease_ttl.max(self.acquire_timeout),
            lease_wait: self.lease_wait,
        };
        let shared = self.shared.map(|cache| SharedTier {
            cache,
            timeout: self.cache_timeout,
            // The lease outlives the longest fetch, or a second replica would fetch while the
            // first still waits.
            lease_ttl: self.lease_ttl.max(self.acquire_timeout),
            lease_wait: self.lease_wait,
        });
        Ok(TokenManager {
            inner: Arc::new(Inner {
                clients,
                oauth,
                shared,
                users,
                time: self.time,
                timing: Timing {
                    renew_before: self.renew_before,
                    expiry_skew: self.expiry_skew,
                },
                retry: self.retry,
                acquire_timeout: self.acquire_timeout,
                rejection_backoff: self.rejection_backoff,
                namespace: self.namespace,
                max_cached_tokens: self.max_cached_tokens,
                slots: Mutex::new(SlotMap::new()),
                next_entry_id: AtomicU64::new(1),
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
            .field(
                "shared_cache",
                &self.inner.shared.as_ref().map(|s| &s.cache),
            )
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
            user_store: None,
            time: TimeSource::System,
            renew_before: Duration::from_secs(60),
            expiry_skew: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            acquire_timeout: Duration::from_secs(30),
            rejection_backoff: Duration::from_secs(5),
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

    /// A valid token for per-request parameters (force renewal, scope, resource, extra
    /// parameters, and the [`SubjectToken`](crate::SubjectToken) a client that exchanges one
    /// needs: it is cached per subject, never past the subject's expiry).
    pub async fn token_with(
        &self,
        client: &str,
        params: &TokenParams,
    ) -> Result<AccessToken, Error> {
        let client = self.client(client)?;
        client.check_subject(params)?;
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
        let Some(entry) = slot.invalidate_if(|e| e.cached.token().secret() == token.secret())
        else {
            return Ok(false);
        };
        self.invalidated(&client, &slot, &entry).await;
        Ok(true)
    }

    /// The cache key a token for `client` and `params` is stored under, here and in the shared
    /// cache (for inspecting a shared cache, or invalidating from outside).
    pub fn cache_key(&self, client: &str, params: &TokenParams) -> Result<CacheKey, Error> {
        let client = self.client(client)?;
        Ok(client
            .source
            .cache_key(&self.inner.namespace, &client.name, params))
    }

    /// The key `user`'s tokens for the user client `client` are stored under (the user key only
    /// as a SHA-256 digest), for inspecting a user token store.
    pub fn user_key(&self, client: &str, user: &UserKey) -> Result<CacheKey, Error> {
        let client = self.user_client(client)?;
        Ok(client
            .source
            .user_key(&self.inner.namespace, &client.name, user))
    }

    /// Drops every token held in this process's memory, clients' own, per-request, per-subject
    /// and users' access tokens alike (not the shared cache nor the user token store): the next
    /// call goes to the shared cache, the store or the token endpoint.
    pub fn purge_local(&self) {
        for client in self.inner.clients.values() {
            client.default_slot.clear();
            for slot in lock(&client.users).drain() {
                slot.clear();
            }
        }
        for slot in lock(&self.inner.slots).drain() {
            slot.clear();
        }
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

    /// Stores what a user's sign-in returned for the user client `client`, replacing whatever
    /// was stored for that user and client (seed 004: one record, nothing accumulates). The
    /// access token should carry its expiry ([`AccessToken::with_expires_at`]).
    pub async fn sign_in(
        &self,
        client: &str,
        user: &UserKey,
        tokens: UserTokens,
    ) -> Result<(), Error> {
        let client = self.user_client(client)?;
        let slot = self.user_slot(&client, user);
        // Signed in just now: the token's lifetime is what is left of it, and its renewal point
        // follows from that for every replica that reads it.
        let tokens = match (tokens.renew_at(), tokens.access_token().expires_at()) {
            (None, Some(_)) => {
                let renew_at = self.stored_user_token(&client, &tokens).renew_at();
                tokens.with_renew_at(renew_at)
            }
            _ => tokens,
        };
        self.inner
            .users
            .store
            .put(&slot.key, &tokens)
            .await
            .map_err(|source| Error::Store {
                client: client.name.clone(),
                source: Arc::new(source),
            })?;
        // Whatever this process held for the user belongs to the previous sign-in.
        slot.clear();
        tracing::debug!(client = %client.name, user = %user.fingerprint(), "user signed in");
        Ok(())
    }

    /// A valid access token of `user` for the user client `client`: the stored one, refreshed
    /// with the user's refresh token when it has expired or is due (one refresh per user and
    /// client, across replicas sharing the store). [`Error::ReauthenticationRequired`] when the
    /// user must sign in again.
    pub async fn user_token(&self, client: &str, user: &UserKey) -> Result<AccessToken, Error> {
        self.user_token_with(client, user, &TokenParams::new())
            .await
    }

    /// [`user_token`](Self::user_token) with per-request parameters: only
    /// [`force_renewal`](TokenParams::force_renewal) is taken (a user's tokens are the ones
    /// they consented to).
    pub async fn user_token_with(
        &self,
        client: &str,
        user: &UserKey,
        params: &TokenParams,
    ) -> Result<AccessToken, Error> {
        let client = self.user_client(client)?;
        let slot = self.user_slot(&client, user);
        let entry = self
            .entry(&client, &slot, params.is_force_renewal())
            .await?;
        Ok(entry.cached.token().clone())
    }

    /// Signs `user` out of the user client `client`: revokes their refresh token at the
    /// server (RFC 7009, `token_type_hint=refresh_token`; servers revoke its access tokens with
    /// it) and, with `revoke` [`Revoke::RefreshAndAccessToken`], the access token too, then
    /// removes the stored tokens. The tokens are removed even when a revocation fails; that
    /// failure is the error returned ([`Error::Revocation`]).
    pub async fn sign_out(
        &self,
        client: &str,
        user: &UserKey,
        revoke: Revoke,
    ) -> Result<(), Error> {
        let client = self.user_client(client)?;
        let slot = self.user_slot(&client, user);
        let store_error = |source| Error::Store {
            client: client.name.clone(),
            source: Arc::new(source),
        };
        let stored = self
            .inner
            .users
            .store
            .get(&slot.key)
            .await
            .map_err(store_error)?;
        let mut failed = None;
        if let Some(tokens) = &stored {
            let mut revocations = Vec::new();
            if let Some(refresh) = tokens.refresh_token() {
                revocations.push((refresh.clone(), TokenTypeHint::RefreshToken));
            }
            if revoke == Revoke::RefreshAndAccessToken || tokens.refresh_token().is_none() {
                revocations.push((
                    tokens.access_token().secret().clone(),
                    TokenTypeHint::AccessToken,
                ));
            }
            for (token, hint) in revocations {
                if let Err(error) = self
                    .inner
                    .oauth
                    .revoke(client.source.config(), &token, hint)
                    .await
                {
                    tracing::warn!(client = %client.name, hint = hint.as_str(), error = %crate::error::Chain(&error), "revoking a user's token failed");
                    failed.get_or_insert(Error::Revocation {
                        client: client.name.clone(),
                        hint: hint.as_str(),
                        source: Arc::new(error),
                    });
                }
            }
        }
        self.inner
            .users
            .store
            .remove(&slot.key)
            .await
            .map_err(store_error)?;
        slot.clear();
        lock(&client.users).remove(user);
        tracing::debug!(client = %client.name, user = %user.fingerprint(), "user signed out");
        failed.map_or(Ok(()), Err)
    }

    /// The registered user client `name`.
    fn user_client(&self, name: &str) -> Result<Arc<NamedClient>, Error> {
        let client = self.client(name)?;
        if !client.is_user_client() {
            return Err(Error::Config(format!(
                "client `{name}` gets its own tokens; users' tokens need a client registered with user_client"
            )));
        }
        Ok(client)
    }

    /// The slot of `user`'s access token for the user client `client`.
    pub(crate) fn user_slot(&self, client: &NamedClient, user: &UserKey) -> Arc<Slot> {
        let mut slots = lock(&client.users);
        if let Some(slot) = slots.get(user) {
            return slot;
        }
        // Users seen lately stay; the others' tokens are still in the store.
        let key = client
            .source
            .user_key(&self.inner.namespace, &client.name, user);
        let slot = Arc::new(Slot::new(key, TokenParams::new()));
        let max = self.inner.max_cached_tokens.max(1);
        slots.insert(user.clone(), slot.clone(), max, self.now());
        slot
    }

    pub(crate) fn client(&self, name: &str) -> Result<Arc<NamedClient>, Error> {
        self.inner
            .clients
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownClient {
                client: name.into(),
            })
    }

    fn now(&self) -> SystemTime {
        self.inner.time.now()
    }

    pub(crate) fn count_replay(&self, client: &NamedClient) {
        self.inner.counters.replays.fetch_add(1, Ordering::Relaxed);
        crate::metrics::replay(&client.name);
    }

    /// The hot path: the token of `slot`, read through the caller's `view` of it, if it may be
    /// sent; without locks or writes to memory other threads read, and without allocation
    /// except the view's copy of a token it has not seen yet. A token due for renewal is still
    /// returned while one renewal runs in the background.
    #[inline]
    pub(crate) fn cached(
        &self,
        client: &Arc<NamedClient>,
        slot: &Arc<Slot>,
        view: &mut TokenView,
    ) -> Option<Sendable> {
        let (entry, header) = view.load()?;
        let sendable = Sendable {
            header,
            id: entry.id,
            on_probation: entry.on_probation(),
        };
        match entry.freshness_coarse(self.inner.time.coarse_nanos()) {
            Freshness::Fresh => {}
            Freshness::Due => self.renew_in_background(client, slot),
            Freshness::Unusable => return None,
        }
        Some(sendable)
    }

    /// [`cached`](Self::cached) for a slot read without a view of its own (a user's).
    #[inline]
    pub(crate) fn cached_in(
        &self,
        client: &Arc<NamedClient>,
        slot: &Arc<Slot>,
    ) -> Option<Sendable> {
        let current = slot.load();
        let entry = current.as_ref()?;
        match entry.freshness_coarse(self.inner.time.coarse_nanos()) {
            Freshness::Fresh => {}
            Freshness::Due => self.renew_in_background(client, slot),
            Freshness::Unusable => return None,
        }
        Some(Sendable::of(entry))
    }

    /// The slot of the token `params` ask for.
    pub(crate) fn slot_for(&self, client: &NamedClient, params: &TokenParams) -> Arc<Slot> {
        if params.uses_default_key() {
            return client.default_slot.clone();
        }
        let key = client
            .source
            .cache_key(&self.inner.namespace, &client.name, params);
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get(&key) {
            return slot;
        }
        let slot = Arc::new(Slot::new(key.clone(), params.clone()));
        slots.insert(key, slot.clone(), self.inner.max_cached_tokens, self.now());
        slot
    }

    fn existing_slot(&self, client: &NamedClient, params: &TokenParams) -> Option<Arc<Slot>> {
        if params.uses_default_key() {
            return Some(client.default_slot.clone());
        }
        let key = client
            .source
            .cache_key(&self.inner.namespace, &client.name, params);
        lock(&self.inner.slots).peek(&key)
    }

    /// A token of `slot` that may be sent: the current one, unless it is unusable or `force`.
    pub(crate) async fn entry(
        &self,
        client: &Arc<NamedClient>,
        slot: &Arc<Slot>,
        force: bool,
    ) -> Result<Arc<Entry>, Error> {
        self.entry_or(client, slot, force, Reason::Missing).await
    }

    /// [`entry`](Self::entry), saying why a token is missing, if it is.
    async fn entry_or(
        &self,
        client: &Arc<NamedClient>,
        slot: &Arc<Slot>,
        force: bool,
        missing: Reason,
    ) -> Result<Arc<Entry>, Error> {
        let reason = match slot.current_full() {
            _ if force => Reason::Forced,
            None => missing,
            Some(entry) => match entry.freshness(self.now()) {
                Freshness::Fresh => return Ok(entry),
                Freshness::Due => {
                    self.renew_in_background(client, slot);
                    return Ok(entry);
                }
                Freshness::Unusable => Reason::Expired,
            },
        };
        self.acquire(client, slot, force, reason).await
    }

    /// A new token for `slot`, one attempt for all callers, within the acquire timeout; in a
    /// span that says what it took (never a secret).
    async fn acquire(
        &self,
        client: &NamedClient,
        slot: &Slot,
        force: bool,
        reason: Reason,
    ) -> Result<Arc<Entry>, Error> {
        // Without a runtime the timers below would panic; say so instead.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let span = tracing::info_span!(
            "token_acquisition",
            client = %client.name,
            grant = %client.grant,
            reason = reason.as_str(),
            tier = tracing::field::Empty,
            attempts = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let progress = Progress::default();
        let timeout = self.inner.acquire_timeout;
        let deadline = started.checked_add(timeout).unwrap_or(started);
        let attempt = slot.get_or_fetch(force, &self.inner.time, |previous| {
            self.fetch(client, slot, force, previous, deadline, &progress)
        });
        let result = match tokio::time::timeout_at(deadline, attempt)
            .instrument(span.clone())
            .await
        {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Timeout {
                client: client.name.clone(),
                grant: client.grant.clone(),
                timeout,
            }),
        };
        let took = started.elapsed();
        let tier = match &result {
            Ok(_) => progress.tier(),
            Err(_) => "failed",
        };
        span.record("tier", tier);
        span.record("attempts", progress.attempts.load(Ordering::Relaxed));
        span.record("duration_ms", took.as_millis() as u64);
        span.record("outcome", if result.is_ok() { "ok" } else { "error" });
        crate::metrics::acquisition(&client.name, tier, reason.as_str(), took);
        if let Err(Error::Timeout { .. }) = &result {
            span.in_scope(|| {
                tracing::warn!(client = %client.name, ?timeout, "no token within the acquire timeout");
            });
        }
        result
    }

    /// The fetch of one attempt: a user's tokens from the user store (and a refresh), or the
    /// client's through the shared tier, if there is one.
    async fn fetch(
        &self,
        client: &NamedClient,
        slot: &Slot,
        force: bool,
        previous: Option<Arc<Entry>>,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<Entry, Error> {
        if client.source.is_users() {
            return self
                .fetch_user(client, slot, force, previous, deadline, progress)
                .await;
        }
        if let Some(exp) = slot.params.subject().and_then(SubjectToken::expires_at)
            && exp <= self.now()
        {
            return Err(Error::SubjectTokenRejected {
                client: client.name.clone(),
                reason: "it has expired (its `exp` claim is past)",
                source: None,
            });
        }
        let Some(shared) = &self.inner.shared else {
            return self
                .fetch_from_source(client, slot, deadline, progress)
                .await;
        };
        let rejected = slot.rejected();
        let accept = |cached: CachedToken| -> Option<Entry> {
            let secret = cached.token().secret();
            let stale = !cached.is_fresh(self.now())
                || rejected.as_deref() == Some(secret)
                || (force
                    && previous
                        .as_ref()
                        .is_some_and(|p| p.cached.token().secret() == secret));
            if stale {
                return None;
            }
            match self.entry_of(cached) {
                Ok(entry) => Some(entry),
                Err(error) => {
                    tracing::warn!(key = %slot.key, %error, "ignored an invalid token in the shared cache");
                    None
                }
            }
        };
        let fetch = || self.fetch_from_source(client, slot, deadline, progress);
        match shared
            .get_or_fetch(&slot.key, force, deadline, accept, fetch)
            .await?
        {
            Found::Shared(entry) => {
                self.inner
                    .counters
                    .shared_hits
                    .fetch_add(1, Ordering::Relaxed);
                progress.reached(Tier::Shared);
                Ok(entry)
            }
            Found::Fetched(entry) => Ok(entry),
        }
    }

    /// A token request to the client's source, retried within `deadline`.
    async fn fetch_from_source(
        &self,
        client: &NamedClient,
        slot: &Slot,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<Entry, Error> {
        let result = self
            .request(client, slot, None, deadline, progress)
            .await
            .and_then(|(response, sent_at)| {
                let mut cached = self.inner.timing.cached_token(
                    response,
                    sent_at,
                    client.source.default_lifetime(),
                );
                // A token got for a subject never outlives it.
                if let Some(exp) = slot.params.subject().and_then(SubjectToken::expires_at) {
                    cached = self.inner.timing.capped(cached, exp);
                }
                self.entry_of(cached).map_err(Stop::Failed)
            });
        match result {
            Ok(entry) => {
                tracing::debug!(client = %client.name, token = %entry.cached.token().secret().fingerprint(), "token obtained");
                Ok(entry)
            }
            Err(stop) => Err(self.request_failed(client, stop)),
        }
    }

    /// A user's token: the stored access token if it will do, else a refresh with the stored
    /// refresh token (one per user and client, across replicas), rotated in the store.
    async fn fetch_user(
        &self,
        client: &NamedClient,
        slot: &Slot,
        force: bool,
        previous: Option<Arc<Entry>>,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<Entry, Error> {
        let rejected = slot.rejected();
        let accept = |tokens: &UserTokens| -> Option<Entry> {
            let token = tokens.access_token();
            let secret = token.secret();
            let refused = rejected.as_deref() == Some(secret)
                || (force
                    && previous
                        .as_ref()
                        .is_some_and(|p| p.cached.token().secret() == secret));
            if refused {
                return None;
            }
            let cached = self.stored_user_token(client, tokens);
            if !cached.is_fresh(self.now()) {
                return None;
            }
            match self.entry_of(cached) {
                Ok(entry) => Some(entry),
                Err(error) => {
                    tracing::warn!(client = %client.name, %error, "ignored an unusable stored access token");
                    None
                }
            }
        };
        let refresh = |stored: UserTokens| async move {
            progress.reached(Tier::Endpoint);
            let result = self
                .request(client, slot, stored.refresh_token(), deadline, progress)
                .await;
            match result {
                Ok((response, sent_at)) => {
                    let rotated = response.refresh_token().cloned();
                    let cached = self.inner.timing.cached_token(
                        response,
                        sent_at,
                        client.source.default_lifetime(),
                    );
                    let tokens = stored
                        .refreshed(cached.token().clone(), rotated.clone())
                        .with_renew_at(cached.renew_at());
                    tracing::debug!(
                        client = %client.name,
                        token = %cached.token().secret().fingerprint(),
                        rotated = rotated.is_some(),
                        "user token refreshed"
                    );
                    let entry = self
                        .entry_of(cached)
                        .map_err(|e| UserFailure::Refresh(Stop::Failed(e)))?;
                    Ok((tokens, entry))
                }
                Err(Stop::Failed(error)) if error.is_invalid_grant() => {
                    Err(UserFailure::Refused(error))
                }
                Err(stop) => Err(UserFailure::Refresh(stop)),
            }
        };
        match self
            .inner
            .users
            .get_or_refresh(&slot.key, force, deadline, accept, refresh)
            .await
        {
            Ok((entry, refreshed)) => {
                if !refreshed {
                    progress.reached(Tier::Shared);
                }
                Ok(entry)
            }
            Err(failure) => {
                // Tokens of a user who must sign in again are not sent either: the server
                // revoked them with the refresh token, or the user signed out elsewhere.
                if matches!(failure, UserFailure::Refused(_) | UserFailure::NotSignedIn) {
                    slot.clear();
                }
                Err(self.user_failed(client, failure))
            }
        }
    }

    /// How a stored access token is cached here: due at the renewal point stored with it; a
    /// token stored without one (by the app itself) is renewed ahead of its expiry by
    /// `min(renew_before, what is left / 2)`, and a token without an expiry is taken to live the
    /// client's default lifetime from now.
    fn stored_user_token(&self, client: &NamedClient, tokens: &UserTokens) -> CachedToken {
        let token = tokens.access_token();
        let now = self.now();
        let expires_at = token.expires_at().unwrap_or_else(|| {
            now.checked_add(client.source.default_lifetime())
                .unwrap_or(now)
        });
        let renew_at = tokens.renew_at().unwrap_or_else(|| {
            let left = expires_at.duration_since(now).unwrap_or_default();
            expires_at
                .checked_sub(self.inner.timing.renew_before.min(left / 2))
                .unwrap_or(now)
        });
        CachedToken::new(token.clone(), expires_at, renew_at)
    }

    /// One token request (with `refresh_token`, a refresh), retried within `deadline`, counted.
    async fn request(
        &self,
        client: &NamedClient,
        slot: &Slot,
        refresh_token: Option<&tokenwarden_core::Secret>,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<(tokenwarden_oauth::TokenResponse, SystemTime), Stop> {
        progress.reached(Tier::Endpoint);
        let sending = || {
            progress.attempts.fetch_add(1, Ordering::Relaxed);
            self.inner
                .counters
                .token_requests
                .fetch_add(1, Ordering::Relaxed);
            self.now()
        };
        let answered = |result: Result<(), &tokenwarden_oauth::Error>| {
            crate::metrics::token_request(
                &client.name,
                &client.grant,
                crate::metrics::outcome(result),
            );
        };
        renewal::fetch(
            &client.source,
            &self.inner.oauth,
            &slot.params,
            refresh_token,
            &self.inner.retry,
            deadline,
            sending,
            answered,
        )
        .await
    }

    /// The error for a token request that failed, said once at warning level.
    fn request_failed(&self, client: &NamedClient, stop: Stop) -> Error {
        match stop {
            Stop::Deadline => {
                crate::metrics::token_request(&client.name, &client.grant, "timeout");
                Error::Timeout {
                    client: client.name.clone(),
                    grant: client.grant.clone(),
                    timeout: self.inner.acquire_timeout,
                }
            }
            Stop::Failed(error) if error.is_invalid_grant() && client.needs_subject_token() => {
                // The caller's token, not this service, is at fault: not a warning here.
                tracing::info!(
                    client = %client.name,
                    grant = %client.grant,
                    error = %crate::error::Chain(&error),
                    "the authorization server refused the subject token"
                );
                Error::SubjectTokenRejected {
                    client: client.name.clone(),
                    reason: "the authorization server refused it (invalid_grant)",
                    source: Some(Arc::new(error)),
                }
            }
            Stop::Failed(error) => {
                // Error messages hold no secrets: see `tokenwarden_oauth::Error`.
                tracing::warn!(
                    client = %client.name,
                    grant = %client.grant,
                    token_endpoint = %client.source.endpoint(),
                    error = %crate::error::Chain(&error),
                    "token request failed"
                );
                Error::Token {
                    client: client.name.clone(),
                    grant: client.grant.clone(),
                    source: Arc::new(error),
                }
            }
        }
    }

    fn user_failed(&self, client: &NamedClient, failure: UserFailure) -> Error {
        let reauthenticate = |reason: &'static str, source: Option<tokenwarden_oauth::Error>| {
            tracing::info!(client = %client.name, reason, "the user must sign in again");
            Error::ReauthenticationRequired {
                client: client.name.clone(),
                reason,
                source: source.map(Arc::new),
            }
        };
        match failure {
            UserFailure::Store(source) => {
                tracing::warn!(client = %client.name, error = %crate::error::Chain(&source), "the user token store failed");
                Error::Store {
                    client: client.name.clone(),
                    source: Arc::new(source),
                }
            }
            UserFailure::NotSignedIn => reauthenticate("no tokens are stored for the user", None),
            UserFailure::NoRefreshToken => reauthenticate(
                "the access token can no longer be used and there is no refresh token",
                None,
            ),
            UserFailure::Refused(error) => {
                reauthenticate("the server refused the refresh token", Some(error))
            }
            UserFailure::Refresh(stop) => self.request_failed(client, stop),
        }
    }

    fn entry_of(&self, cached: CachedToken) -> Result<Entry, tokenwarden_oauth::Error> {
        let usable_until = self.inner.timing.usable_until(&cached);
        let id = self.inner.next_entry_id.fetch_add(1, Ordering::Relaxed);
        Entry::new(cached, usable_until, id, &self.inner.time)
    }

    /// Starts the slot's one background renewal, unless it runs already.
    #[cold]
    #[inline(never)]
    fn renew_in_background(&self, client: &Arc<NamedClient>, slot: &Arc<Slot>) {
        // No runtime to renew on: the token is renewed on the request path once it expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(renewal) = slot.start_renewal(self.now()) else {
            return;
        };
        self.inner
            .counters
            .background_renewals
            .fetch_add(1, Ordering::Relaxed);
        let (this, client) = (self.clone(), client.clone());
        // The claim moves into the task: it ends when the renewal does, or when the task is
        // dropped without running.
        runtime.spawn(async move {
            let renewed = this
                .acquire(&client, renewal.slot(), false, Reason::Due)
                .await;
            if let Err(error) = renewed {
                if error.is_subject_token_rejected() {
                    // The caller's token, not this service, is at fault; said at INFO already.
                    tracing::debug!(client = %client.name, %error, "background token renewal refused; the current token stays in use");
                } else {
                    tracing::warn!(client = %client.name, %error, "background token renewal failed; the current token stays in use");
                }
                renewal.retry_after(this.now(), RENEWAL_RETRY_AFTER);
            }
        });
    }

    /// A resource server rejected token `id` of `slot`: compare-and-invalidate it (unless
    /// renewals of the key are backing off), and, with `replace`, get the token to replay with.
    /// `None`: keep the 401.
    pub(crate) async fn rejected(
        &self,
        client: &Arc<NamedClient>,
        slot: &Arc<Slot>,
        id: u64,
        replace: bool,
    ) -> Result<Option<Arc<Entry>>, Error> {
        match slot.reject(id, self.now(), self.inner.rejection_backoff) {
            Rejection::BackedOff => return Ok(None),
            Rejection::Invalidated(entry) => self.invalidated(client, slot, &entry).await,
            Rejection::Replaced => {}
        }
        if !replace {
            return Ok(None);
        }
        self.entry_or(client, slot, false, Reason::Rejected)
            .await
            .map(Some)
    }

    /// A resource server accepted token `id` of `slot` (after it was fetched because of a
    /// rejection): a later rejection of it renews at once.
    #[cold]
    pub(crate) fn accepted(&self, slot: &Slot, id: u64) {
        slot.accept(id);
    }

    /// What follows an invalidation: the count, and the shared copy removed if it is the same token.
    async fn invalidated(&self, client: &NamedClient, slot: &Slot, entry: &Entry) {
        self.inner
            .counters
            .invalidations
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::invalidation(&client.name);
        // A user's tokens are not in the shared tier; the rejected token is remembered in the
        // slot, so the next fetch refreshes instead of taking it back from the store.
        if client.source.is_users() {
            return;
        }
        tracing::debug!(key = %slot.key, token = %entry.cached.token().secret().fingerprint(), "invalidated a rejected token");
        if let Some(shared) = &self.inner.shared {
            shared.remove_if(&slot.key, entry.cached.token()).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded map holds no invariants a panic could break half-way.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
