//! The state shared by the server's connections and every `TestServer` handle.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::exchange::{self, RequestedTokenType};
use crate::jwt::SigningKey;
use crate::refresh::{Lifetimes, RefreshPolicy};
use crate::tokens::{
    Issued, MAX_TOKEN_LIFETIME_SECS, OtherClient, Owner, RefreshError, Revoked, TokenInfo, Tokens,
    Unusable,
};
use crate::{ApiMode, DiscoveryDocument, Failure, RefreshTokenUsage, TokenRequestRecord};

/// The wall clock as time since the Unix epoch (zero before it, which no test machine is).
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Everything a server is configured with before it starts. No `Debug`: it holds client secrets
/// and passwords (the builder's `Debug` shows names only).
pub(crate) struct Settings {
    /// Client ids and secrets.
    pub(crate) clients: Vec<(String, String)>,
    /// Extension grant types and the form field each requires.
    pub(crate) extension_grants: Vec<(String, String)>,
    /// Whether the `delegation` grant is served.
    pub(crate) delegation_grant: bool,
    /// User names and passwords.
    pub(crate) users: Vec<(String, String)>,
    pub(crate) token_lifetime: Duration,
    pub(crate) delay: Duration,
    pub(crate) api_mode: ApiMode,
    pub(crate) refresh: RefreshPolicy,
    /// The `issuer` of the discovery metadata; `None`: the base URL.
    pub(crate) issuer: Option<String>,
    pub(crate) scopes_supported: Vec<String>,
    pub(crate) serve_openid_configuration: bool,
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
    /// Requests with `grant_type=refresh_token`, whatever their outcome.
    refreshes: AtomicUsize,
    /// Requests for the token exchange or the delegation grant, whatever their outcome.
    exchanges: AtomicUsize,
    last: Mutex<Option<TokenRequestRecord>>,
}

impl Activity {
    fn record(&self, record: TokenRequestRecord) {
        let grant_type = record.field("grant_type");
        let refresh = grant_type == Some("refresh_token");
        let exchange = grant_type.is_some_and(exchange::is_exchange_grant_type);
        *lock(&self.last) = Some(record);
        if refresh {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
        }
        if exchange {
            self.exchanges.fetch_add(1, Ordering::SeqCst);
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
    }
}

/// Everything the server knows and counts.
#[derive(Debug)]
pub(crate) struct State {
    base_url: String,
    /// Registered clients; fixed at start, so lookups take no lock.
    clients: HashMap<String, Client>,
    /// Activity of client ids that are not registered (rare: only tests of `invalid_client`).
    strangers: Mutex<HashMap<String, Activity>>,
    /// Registered users and their passwords; fixed at start.
    users: HashMap<String, String>,
    token_requests_total: AtomicUsize,
    tokens_issued: AtomicUsize,
    api_requests: AtomicUsize,
    api_rejections: AtomicUsize,
    /// Requests outside the token and revocation endpoints that carried an `Authorization` header.
    requests_with_authorization: AtomicUsize,
    api_mode: Mutex<ApiMode>,
    /// Extension grant types and the form field each requires; fixed at start.
    extension_grants: HashMap<String, String>,
    /// Whether the `delegation` grant is served; fixed at start.
    delegation_grant: bool,
    /// Signs the JWT access tokens this server issues.
    signing_key: SigningKey,
    /// `issued_token_type` values the next successful token exchanges answer instead of the
    /// true one.
    misreported_token_types: Mutex<VecDeque<String>>,
    /// Wakes `wait_for_token_requests` callers after each counted token request.
    token_request_seen: Notify,
    token_lifetime_nanos: AtomicU64,
    delay_nanos: AtomicU64,
    failures: Mutex<VecDeque<Failure>>,
    tokens: Mutex<Tokens>,
    refresh_policy: Mutex<RefreshPolicy>,
    reuse_detections: AtomicUsize,
    revocation_requests: AtomicUsize,
    last_revocation_request: Mutex<Option<TokenRequestRecord>>,
    revocation_failures: Mutex<VecDeque<Failure>>,
    introspection_requests: AtomicUsize,
    issuer: String,
    scopes_supported: Vec<String>,
    serve_openid_configuration: bool,
    /// Requests per discovery document, in [`DiscoveryDocument::ALL`] order.
    discovery_requests: [AtomicUsize; 2],
    discovery_failures: Mutex<VecDeque<Failure>>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl State {
    pub(crate) fn new(settings: Settings, base_url: String) -> Self {
        Self {
            issuer: settings.issuer.unwrap_or_else(|| base_url.clone()),
            base_url,
            clients: settings
                .clients
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
            users: settings.users.into_iter().collect(),
            token_requests_total: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            api_requests: AtomicUsize::new(0),
            api_rejections: AtomicUsize::new(0),
            requests_with_authorization: AtomicUsize::new(0),
            api_mode: Mutex::new(settings.api_mode),
            extension_grants: settings.extension_grants.into_iter().collect(),
            delegation_grant: settings.delegation_grant,
            signing_key: SigningKey::random(),
            misreported_token_types: Mutex::default(),
            token_request_seen: Notify::new(),
            token_lifetime_nanos: AtomicU64::new(nanos(settings.token_lifetime)),
            delay_nanos: AtomicU64::new(nanos(settings.delay)),
            failures: Mutex::default(),
            tokens: Mutex::new(Tokens::new()),
            refresh_policy: Mutex::new(settings.refresh),
            reuse_detections: AtomicUsize::new(0),
            revocation_requests: AtomicUsize::new(0),
            last_revocation_request: Mutex::default(),
            revocation_failures: Mutex::default(),
            introspection_requests: AtomicUsize::new(0),
            scopes_supported: settings.scopes_supported,
            serve_openid_configuration: settings.serve_openid_configuration,
            discovery_requests: Default::default(),
            discovery_failures: Mutex::default(),
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

    pub(crate) fn refresh_requests(&self, client_id: &str) -> usize {
        match self.clients.get(client_id) {
            Some(client) => client.activity.refreshes.load(Ordering::SeqCst),
            None => lock(&self.strangers)
                .get(client_id)
                .map_or(0, |activity| activity.refreshes.load(Ordering::SeqCst)),
        }
    }

    pub(crate) fn exchange_requests(&self, client_id: &str) -> usize {
        match self.clients.get(client_id) {
            Some(client) => client.activity.exchanges.load(Ordering::SeqCst),
            None => lock(&self.strangers)
                .get(client_id)
                .map_or(0, |activity| activity.exchanges.load(Ordering::SeqCst)),
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

    /// Whether `password` is the password of the registered user `username`.
    pub(crate) fn check_password(&self, username: &str, password: &str) -> bool {
        self.users
            .get(username)
            .is_some_and(|known| known == password)
    }

    pub(crate) fn has_client(&self, client_id: &str) -> bool {
        self.clients.contains_key(client_id)
    }

    pub(crate) fn has_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
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

    /// Whether the `delegation` grant is served.
    pub(crate) fn delegation_grant(&self) -> bool {
        self.delegation_grant
    }

    pub(crate) fn push_misreported_token_type(&self, issued_token_type: String) {
        lock(&self.misreported_token_types).push_back(issued_token_type);
    }

    pub(crate) fn pop_misreported_token_type(&self) -> Option<String> {
        lock(&self.misreported_token_types).pop_front()
    }

    pub(crate) fn push_failure(&self, failure: Failure) {
        lock(&self.failures).push_back(failure);
    }

    pub(crate) fn pop_failure(&self) -> Option<Failure> {
        lock(&self.failures).pop_front()
    }

    pub(crate) fn set_refresh_token_usage(&self, usage: RefreshTokenUsage) {
        lock(&self.refresh_policy).usage = usage;
    }

    pub(crate) fn set_reuse_returns_refresh_token(&self, returns: bool) {
        lock(&self.refresh_policy).reuse_returns_refresh_token = returns;
    }

    pub(crate) fn set_refresh_token_lifetimes(&self, change: impl FnOnce(&mut Lifetimes)) {
        change(&mut lock(&self.refresh_policy).lifetimes);
    }

    // --- tokens ---

    /// `expires_in` for tokens issued now: the lifetime's whole seconds, capped like `exp`.
    fn expires_in(&self) -> u64 {
        self.token_lifetime().as_secs().min(MAX_TOKEN_LIFETIME_SECS)
    }

    /// Issues a client's own token (client credentials, extension grants); returns it with its
    /// `expires_in`.
    pub(crate) fn issue_client_token(&self, client_id: &str, scope: Option<&str>) -> (String, u64) {
        let expires_in = self.expires_in();
        let owner = Owner::client(client_id, scope);
        let token = lock(&self.tokens).issue(owner, None, expires_in, unix_now());
        (token, expires_in)
    }

    /// Issues a user's JWT access token to `client_id`, living `lifetime` (whole seconds) from
    /// now whatever the server's token lifetime; empty `audience` or `scope` leave their claim
    /// out.
    pub(crate) fn issue_user_jwt(
        &self,
        client_id: &str,
        user: &str,
        audience: &str,
        scope: &str,
        lifetime: Duration,
    ) -> String {
        let mut owner = Owner::user(client_id, user, Some(scope).filter(|s| !s.is_empty()));
        if !audience.is_empty() {
            owner.audience.push(audience.to_owned());
        }
        let lifetime_secs = lifetime.as_secs();
        lock(&self.tokens).issue_jwt(
            &self.signing_key,
            &self.issuer,
            owner,
            lifetime_secs,
            unix_now(),
        )
    }

    /// Issues the token a token exchange (or the delegation grant) answers, of the requested
    /// type, with the server's token lifetime; returns it with its `expires_in`.
    pub(crate) fn issue_exchanged(
        &self,
        owner: Owner,
        token_type: RequestedTokenType,
    ) -> (String, u64) {
        let expires_in = self.expires_in();
        let now = unix_now();
        let mut tokens = lock(&self.tokens);
        let token = match token_type {
            RequestedTokenType::AccessToken => tokens.issue(owner, None, expires_in, now),
            RequestedTokenType::Jwt => {
                tokens.issue_jwt(&self.signing_key, &self.issuer, owner, expires_in, now)
            }
            RequestedTokenType::IdToken => tokens.issue_not_applicable(owner, expires_in, now),
        };
        (token, expires_in)
    }

    /// Signs a user in; the caller has checked that the client and user exist. `scope: None`
    /// grants the default scope (every supported scope, if any are configured).
    pub(crate) fn sign_in(&self, client_id: &str, user: &str, scope: Option<&str>) -> Issued {
        let default_scope = self.default_scope();
        let scope = scope.or(default_scope.as_deref());
        let expires_in = self.expires_in();
        lock(&self.tokens).sign_in(client_id, user, scope, expires_in, unix_now())
    }

    /// The scope granted to a user who asks for none: every supported scope, if configured.
    fn default_scope(&self) -> Option<String> {
        (!self.scopes_supported.is_empty()).then(|| self.scopes_supported.join(" "))
    }

    /// The refresh token grant, judged under the refresh policy in force now.
    pub(crate) fn refresh(
        &self,
        client_id: &str,
        token: &str,
        scope: Option<&str>,
    ) -> Result<Issued, RefreshError> {
        let policy = *lock(&self.refresh_policy);
        let expires_in = self.expires_in();
        let result =
            lock(&self.tokens).refresh(client_id, token, scope, policy, expires_in, unix_now());
        if result == Err(RefreshError::Reused) {
            self.reuse_detections.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    pub(crate) fn revoke(&self, client_id: &str, token: &str) -> Result<Revoked, OtherClient> {
        lock(&self.tokens).revoke(client_id, token)
    }

    /// Whom a token belongs to, if the token is known, unexpired and not revoked.
    pub(crate) fn validate_token(&self, token: &str) -> Option<Owner> {
        lock(&self.tokens).validate(token, unix_now())
    }

    /// Whom an access token belongs to, or why it is not a usable one now.
    pub(crate) fn check_access_token(&self, token: &str) -> Result<Owner, Unusable> {
        lock(&self.tokens).check_access_token(token, unix_now())
    }

    /// What introspection reports of a token, if it is live.
    pub(crate) fn introspect(&self, token: &str) -> Option<TokenInfo> {
        lock(&self.tokens).introspect(token, unix_now())
    }

    /// Revokes one token, whoever it was issued to (a refresh token with its family).
    pub(crate) fn revoke_token(&self, token: &str) -> Revoked {
        lock(&self.tokens).revoke_any(token)
    }

    pub(crate) fn revoke_all(&self) {
        lock(&self.tokens).clear();
    }

    /// Counts a successful token response.
    pub(crate) fn count_token_issued(&self) {
        self.tokens_issued.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn tokens_issued(&self) -> usize {
        self.tokens_issued.load(Ordering::SeqCst)
    }

    pub(crate) fn reuse_detections(&self) -> usize {
        self.reuse_detections.load(Ordering::SeqCst)
    }

    // --- revocation ---

    pub(crate) fn record_revocation_request(&self, record: Option<TokenRequestRecord>) {
        if let Some(record) = record {
            *lock(&self.last_revocation_request) = Some(record);
        }
        self.revocation_requests.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn revocation_requests(&self) -> usize {
        self.revocation_requests.load(Ordering::SeqCst)
    }

    pub(crate) fn last_revocation_request(&self) -> Option<TokenRequestRecord> {
        lock(&self.last_revocation_request).clone()
    }

    pub(crate) fn push_revocation_failure(&self, failure: Failure) {
        lock(&self.revocation_failures).push_back(failure);
    }

    pub(crate) fn pop_revocation_failure(&self) -> Option<Failure> {
        lock(&self.revocation_failures).pop_front()
    }

    // --- introspection ---

    pub(crate) fn count_introspection_request(&self) {
        self.introspection_requests.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn introspection_requests(&self) -> usize {
        self.introspection_requests.load(Ordering::SeqCst)
    }

    // --- discovery ---

    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    pub(crate) fn scopes_supported(&self) -> &[String] {
        &self.scopes_supported
    }

    pub(crate) fn serves_openid_configuration(&self) -> bool {
        self.serve_openid_configuration
    }

    /// The registered extension grant types, sorted so the metadata is stable.
    pub(crate) fn extension_grant_types(&self) -> Vec<&str> {
        let mut grant_types: Vec<&str> = self.extension_grants.keys().map(String::as_str).collect();
        grant_types.sort_unstable();
        grant_types
    }

    pub(crate) fn count_discovery_request(&self, document: DiscoveryDocument) {
        self.discovery_requests[document.index()].fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn discovery_requests(&self, document: DiscoveryDocument) -> usize {
        self.discovery_requests[document.index()].load(Ordering::SeqCst)
    }

    pub(crate) fn push_discovery_failure(&self, failure: Failure) {
        lock(&self.discovery_failures).push_back(failure);
    }

    pub(crate) fn pop_discovery_failure(&self) -> Option<Failure> {
        lock(&self.discovery_failures).pop_front()
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
