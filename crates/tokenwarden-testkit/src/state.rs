//! The state shared by the server's connections and every `TestServer` handle.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::{Failure, TokenRequestRecord};

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
    expires_at: Instant,
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
        token_lifetime: Duration,
        delay: Duration,
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

    pub(crate) fn push_failure(&self, failure: Failure) {
        lock(&self.failures).push_back(failure);
    }

    pub(crate) fn pop_failure(&self) -> Option<Failure> {
        lock(&self.failures).pop_front()
    }

    // --- tokens ---

    /// Issues a new token for `client_id`, valid for `lifetime` from now.
    pub(crate) fn issue_token(&self, client_id: &str, lifetime: Duration) -> String {
        // Capped so absurd lifetimes (e.g. `Duration::MAX`) cannot overflow `Instant`.
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let expires_at = Instant::now() + lifetime.min(CENTURY);
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
                expires_at,
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
        (Instant::now() < issued.expires_at).then(|| issued.client_id.clone())
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

    pub(crate) fn api_requests(&self) -> usize {
        self.api_requests.load(Ordering::SeqCst)
    }

    pub(crate) fn api_rejections(&self) -> usize {
        self.api_rejections.load(Ordering::SeqCst)
    }
}
