//! The state shared by the server's connections and every `TestServer` handle.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::{ApiMode, Failure, TokenRequestRecord};

/// The longest lifetime a token gets, in seconds (about a century): longer lifetimes (e.g.
/// `Duration::MAX`) are capped so that `exp` and `expires_in` cannot overflow.
pub(crate) const MAX_TOKEN_LIFETIME_SECS: u64 = 100 * 365 * 24 * 3600;

/// The wall clock as time since the Unix epoch (zero before it, which no test machine is).
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The `exp` (Unix seconds) of a token issued at `issued_at` (time since the epoch) that lives
/// `lifetime_secs`: like a real authorization server's JWT, the issue time is truncated to whole
/// seconds, so the token dies up to one second before `issued_at + lifetime_secs`.
fn expiry(issued_at: Duration, lifetime_secs: u64) -> u64 {
    issued_at
        .as_secs()
        .saturating_add(lifetime_secs.min(MAX_TOKEN_LIFETIME_SECS))
}

/// Whether a token with this `exp` is still accepted at `now` (time since the epoch): like a
/// real API, only while the current whole second is before `exp`.
fn is_live(exp: u64, now: Duration) -> bool {
    now.as_secs() < exp
}

/// Locks a mutex, recovering from poisoning: every critical section here leaves the data
/// consistent, so a panic elsewhere must not take the server down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client the server knows.
#[derive(Debug)]
pub(crate) struct Client {
    secret: String,
    activity: Activity,
}

/// Token requests seen for one client id.
#[derive(Debug, Default)]
struct Activity {
    requests: AtomicUsize,
    last: Mutex<Option<TokenRequestRecord>>,
}

impl Activity {
    fn record(&self, record: TokenRequestRecord) {
        *lock(&self.last) = Some(record);
        self.requests.fetch_add(1, Ordering::SeqCst);
    }
}

/// A token this server issued.
#[derive(Debug)]
pub(crate) struct IssuedToken {
    pub(crate) client_id: String,
    /// Unix seconds, as a JWT's `exp` claim.
    exp: u64,
}

/// Everything the server knows and counts.
#[derive(Debug)]
pub(crate) struct State {
    /// Registered clients; fixed at start, so lookups take no lock.
    clients: HashMap<String, Client>,
    /// Activity of client ids that are not registered (rare: only tests of `invalid_client`).
    strangers: Mutex<HashMap<String, Activity>>,
    token_requests_total: AtomicUsize,
    tokens_issued: AtomicUsize,
    api_requests: AtomicUsize,
    api_rejections: AtomicUsize,
    /// Requests outside the token endpoint that carried an `Authorization` header.
    requests_with_authorization: AtomicUsize,
    api_mode: Mutex<ApiMode>,
    /// Extension grant types and the form field each requires; fixed at start.
    extension_grants: HashMap<String, String>,
    /// Wakes `wait_for_token_requests` callers after each counted token request.
    token_request_seen: Notify,
    token_lifetime_nanos: AtomicU64,
    delay_nanos: AtomicU64,
    failures: Mutex<VecDeque<Failure>>,
    tokens: Mutex<HashMap<String, IssuedToken>>,
    /// Makes token values unpredictable; seeded randomly by the standard library.
    token_entropy: RandomState,
    token_serial: AtomicU64,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl State {
    pub(crate) fn new(
        clients: impl IntoIterator<Item = (String, String)>,
        extension_grants: impl IntoIterator<Item = (String, String)>,
        token_lifetime: Duration,
        delay: Duration,
        api_mode: ApiMode,
    ) -> Self {
        Self {
            clients: clients
                .into_iter()
                .map(|(id, secret)| {
                    let client = Client {
                        secret,
                        activity: Activity::default(),
                    };
                    (id, client)
                })
                .collect(),
            strangers: Mutex::default(),
            token_requests_total: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            api_requests: AtomicUsize::new(0),
            api_rejections: AtomicUsize::new(0),
            requests_with_authorization: AtomicUsize::new(0),
            api_mode: Mutex::new(api_mode),
            extension_grants: extension_grants.into_iter().collect(),
            token_request_seen: Notify::new(),
            token_lifetime_nanos: AtomicU64::new(nanos(token_lifetime)),
            delay_nanos: AtomicU64::new(nanos(delay)),
            failures: Mutex::default(),
            tokens: Mutex::default(),
            token_entropy: RandomState::new(),
            token_serial: AtomicU64::new(0),
        }
    }

    // --- token requests ---

    /// Counts one token request, remembers it under its client id (if any) and wakes waiters.
    pub(crate) fn record_token_request(
        &self,
        client_id: Option<&str>,
        record: Option<TokenRequestRecord>,
    ) {
        if let (Some(id), Some(record)) = (client_id, record) {
            match self.clients.get(id) {
                Some(client) => client.activity.record(record),
                None => lock(&self.strangers)
                    .entry(id.to_owned())
                    .or_default()
                    .record(record),
            }
        }
        // Counted last so a caller woken by the total also sees the per-client record.
        self.token_requests_total.fetch_add(1, Ordering::SeqCst);
        self.token_request_seen.notify_waiters();
    }

    pub(crate) fn token_requests(&self, client_id: &str) -> usize {
        match self.clients.get(client_id) {
            Some(client) => client.activity.requests.load(Ordering::SeqCst),
            None => lock(&self.strangers)
                .get(client_id)
                .map_or(0, |activity| activity.requests.load(Ordering::SeqCst)),
        }
    }

    pub(crate) fn last_token_request(&self, client_id: &str) -> Option<TokenRequestRecord> {
        match self.clients.get(client_id) {
            Some(client) => lock(&client.activity.last).clone(),
            None => lock(&self.strangers)
                .get(client_id)
                .and_then(|activity| lock(&activity.last).clone()),
        }
    }

    pub(crate) fn token_requests_total(&self) -> usize {
        self.token_requests_total.load(Ordering::SeqCst)
    }

    pub(crate) async fn wait_for_token_requests(&self, total: usize) {
        loop {
            let seen = self.token_request_seen.notified();
            let mut seen = std::pin::pin!(seen);
            // Registered before the check, so a request counted in between still wakes us.
            seen.as_mut().enable();
            if self.token_requests_total() >= total {
                return;
            }
            seen.await;
        }
    }

    /// Whether `secret` is the secret of the registered client `client_id`.
    pub(crate) fn authenticate(&self, client_id: &str, secret: &str) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|client| client.secret == secret)
    }

    // --- behaviour knobs ---

    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay_nanos.store(nanos(delay), Ordering::SeqCst);
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }

    pub(crate) fn set_token_lifetime(&self, lifetime: Duration) {
        self.token_lifetime_nanos
            .store(nanos(lifetime), Ordering::SeqCst);
    }

    pub(crate) fn token_lifetime(&self) -> Duration {
        Duration::from_nanos(self.token_lifetime_nanos.load(Ordering::SeqCst))
    }

    pub(crate) fn set_api_mode(&self, mode: ApiMode) {
        *lock(&self.api_mode) = mode;
    }

    pub(crate) fn api_mode(&self) -> ApiMode {
        *lock(&self.api_mode)
    }

    /// The form field an extension grant type requires, if that grant type is registered.
    pub(crate) fn extension_grant(&self, grant_type: &str) -> Option<&str> {
        self.extension_grants.get(grant_type).map(String::as_str)
    }

    pub(crate) fn push_failure(&self, failure: Failure) {
        lock(&self.failures).push_back(failure);
    }

    pub(crate) fn pop_failure(&self) -> Option<Failure> {
        lock(&self.failures).pop_front()
    }

    // --- tokens ---

    /// Issues a new token for `client_id` that lives `lifetime_secs` (see [`expiry`]).
    pub(crate) fn issue_token(&self, client_id: &str, lifetime_secs: u64) -> String {
        let exp = expiry(unix_now(), lifetime_secs);
        let mut tokens = lock(&self.tokens);
        let token = loop {
            let candidate = self.random_token();
            if !tokens.contains_key(&candidate) {
                break candidate;
            }
        };
        tokens.insert(
            token.clone(),
            IssuedToken {
                client_id: client_id.to_owned(),
                exp,
            },
        );
        drop(tokens);
        self.tokens_issued.fetch_add(1, Ordering::SeqCst);
        token
    }

    /// `tk_` and 32 hex digits (128 bits) that cannot be guessed from earlier tokens.
    fn random_token(&self) -> String {
        let serial = self.token_serial.fetch_add(1, Ordering::Relaxed);
        let high = self.token_entropy.hash_one((serial, 0u8));
        let low = self.token_entropy.hash_one((serial, 1u8));
        format!("tk_{high:016x}{low:016x}")
    }

    /// The client a token was issued to, if the token is known, unexpired and not revoked.
    pub(crate) fn validate_token(&self, token: &str) -> Option<String> {
        let tokens = lock(&self.tokens);
        let issued = tokens.get(token)?;
        is_live(issued.exp, unix_now()).then(|| issued.client_id.clone())
    }

    pub(crate) fn revoke_all(&self) {
        lock(&self.tokens).clear();
    }

    pub(crate) fn tokens_issued(&self) -> usize {
        self.tokens_issued.load(Ordering::SeqCst)
    }

    // --- protected API ---

    pub(crate) fn count_api_request(&self) {
        self.api_requests.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn count_api_rejection(&self) {
        self.api_rejections.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn count_request_with_authorization(&self) {
        self.requests_with_authorization
            .fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn requests_with_authorization(&self) -> usize {
        self.requests_with_authorization.load(Ordering::SeqCst)
    }

    pub(crate) fn api_requests(&self) -> usize {
        self.api_requests.load(Ordering::SeqCst)
    }

    pub(crate) fn api_rejections(&self) -> usize {
        self.api_rejections.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `secs` whole seconds and `millis` milliseconds after the epoch.
    fn at(secs: u64, millis: u64) -> Duration {
        Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn a_token_issued_late_in_a_second_dies_at_the_next_whole_second() {
        // Issued at 1000.9 for 1 s: exp is 1001, so the token dies 0.1 s after issue, not 1 s.
        let exp = expiry(at(1000, 900), 1);
        assert_eq!(exp, 1001);
        assert!(is_live(exp, at(1000, 900)));
        assert!(is_live(exp, at(1000, 999)));
        assert!(!is_live(exp, at(1001, 0)));
        assert!(!is_live(exp, at(1001, 500)));
    }

    #[test]
    fn a_token_issued_on_a_whole_second_lives_its_full_lifetime() {
        let exp = expiry(at(1000, 0), 60);
        assert_eq!(exp, 1060);
        assert!(is_live(exp, at(1059, 999)));
        assert!(!is_live(exp, at(1060, 0)));
    }

    #[test]
    fn a_zero_lifetime_token_is_never_live() {
        let issued_at = at(1000, 0);
        assert!(!is_live(expiry(issued_at, 0), issued_at));
        assert!(!is_live(expiry(at(1000, 999), 0), at(1000, 999)));
    }

    #[test]
    fn absurd_lifetimes_are_capped_instead_of_overflowing() {
        let exp = expiry(at(1000, 0), u64::MAX);
        assert_eq!(exp, 1000 + MAX_TOKEN_LIFETIME_SECS);
        assert_eq!(expiry(Duration::MAX, u64::MAX), u64::MAX);
    }
}
