//! The server handle, its builder, and the accept loop.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::body::{self, ResponseBody};
use crate::refresh::RefreshPolicy;
use crate::state::{Settings, State, lock};
use crate::tokens::Revoked;
use crate::{
    ApiMode, DiscoveryDocument, Failure, RefreshTokenUsage, SignedIn, TokenRequestRecord, api,
    discovery, introspection, redirect, revocation, token_endpoint,
};

/// The default lifetime of issued access tokens: one hour.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The token endpoint's path.
pub(crate) const TOKEN_PATH: &str = "/token";
/// The revocation endpoint's path.
pub(crate) const REVOCATION_PATH: &str = "/revoke";
/// The introspection endpoint's path.
pub(crate) const INTROSPECTION_PATH: &str = "/introspect";

/// An OAuth 2.0 authorization server (token, revocation, introspection and discovery endpoints,
/// no browser flows) and a protected API, serving real HTTP/1.1 on `127.0.0.1` from a task of
/// the current tokio runtime.
///
/// - `POST /token` ([`token_endpoint`](Self::token_endpoint)) issues opaque bearer tokens to the
///   clients registered with [`TestServerBuilder::client`], authenticated by
///   `client_secret_basic` or `client_secret_post`, with the `client_credentials` grant, any
///   grant type registered with [`TestServerBuilder::extension_grant`], the resource owner
///   `password` grant for users registered with [`TestServerBuilder::user`], the
///   `refresh_token` grant (see [Users and refresh tokens](Self#users-and-refresh-tokens)),
///   token exchange (RFC 8693) and, if enabled, the `delegation` grant (see
///   [Token exchange and delegation](Self#token-exchange-and-delegation)).
/// - `POST /revoke` ([`revocation_endpoint`](Self::revocation_endpoint)) revokes access and
///   refresh tokens (RFC 7009), with the same client authentication.
/// - `POST /introspect` ([`introspection_endpoint`](Self::introspection_endpoint)) describes a
///   token (RFC 7662), with the same client authentication; see
///   [Introspection](Self#introspection).
/// - `GET /.well-known/openid-configuration` and `GET /.well-known/oauth-authorization-server`
///   ([`discovery_url`](Self::discovery_url)) answer the server's metadata (RFC 8414); see
///   [Discovery](Self#discovery).
/// - Any path under `/api/` ([`api_url`](Self::api_url)) answers 200 with JSON describing the
///   request (`client`: the client the token was issued to; `sub`: its subject, the user of a
///   user's token or else the client; `user` for a user's token; `scope` if the token has one;
///   `aud`, an array, if it has audiences; `act` for an exchanged token; `method`, `path`,
///   `body`) when it carries `Authorization: Bearer` with an access token from this server that
///   is neither expired nor revoked, and 401 with `WWW-Authenticate: Bearer error="invalid_token"`
///   otherwise. [`set_api_mode`](Self::set_api_mode) makes it reject every token, or answer
///   valid ones with `insufficient_scope`.
/// - `GET` or `POST /redirect?to=URL` ([`redirect_url`](Self::redirect_url)) answers
///   `307 Temporary Redirect` to `URL`, without asking for any authentication.
///
/// # Token expiry
///
/// Access tokens expire the way a real authorization server's JWTs do: `exp` is the wall-clock
/// issue time truncated to whole seconds plus `expires_in`, and the API rejects a token once the
/// current whole second reaches `exp`. A token therefore dies up to one second *before*
/// `issue time + expires_in`; this is deliberate, so that tests catch clients that renew
/// without a safety margin.
///
/// # Users and refresh tokens
///
/// A user signs in with the password grant (`grant_type=password&username=..&password=..`,
/// optionally `scope`) from any registered client, or, without HTTP, with
/// [`sign_in`](Self::sign_in). The answer holds an access token, its `expires_in`, a refresh
/// token and the granted `scope`: the requested one, or by default every scope of
/// [`TestServerBuilder::scopes_supported`] (none if that is not configured). Each sign-in starts
/// a new *token family*: every access and refresh token later obtained from its refresh tokens.
///
/// `grant_type=refresh_token&refresh_token=..` (optionally a narrower `scope`) from the client
/// the family belongs to answers a new access token and, by [`RefreshTokenUsage`]:
///
/// - [`OneTime`](RefreshTokenUsage::OneTime) (the default): a new refresh token; the presented
///   one becomes used. Presenting a used refresh token is reuse: the whole family, its refresh
///   and access tokens, is revoked, [`reuse_detections`](Self::reuse_detections) goes up, and
///   the answer is `invalid_grant`.
/// - [`Reuse`](RefreshTokenUsage::Reuse): the same refresh token again, or none at all with
///   [`TestServerBuilder::reuse_returns_refresh_token`]`(false)`.
///
/// Every other refusal is `invalid_grant` too: an unknown or revoked refresh token, one issued
/// to another client, or a family past its absolute lifetime (counted from sign-in, default 30
/// days) or its optional sliding lifetime (counted from the family's last use: the sign-in or
/// the latest refresh). A `scope` wider than the sign-in's is `invalid_scope`. Lifetimes are
/// judged by the wall clock to the nanosecond, with the settings in force when the token is
/// presented, so a test can shorten them (even to zero) after sign-in.
///
/// # Token exchange and delegation
///
/// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693 §2.1) from any
/// registered, authenticated client trades a *subject token* for a new token that acts for the
/// same subject: a middle tier (API 1) receives a user's access token and calls API 2 as that
/// user. Subject tokens are access tokens this server issued, from [`sign_in`](Self::sign_in),
/// the password or refresh grant, [`issue_user_jwt`](Self::issue_user_jwt), client grants or an
/// earlier exchange. The request is judged in this order:
///
/// 1. `subject_token` and `subject_token_type` are required; the type must be
///    `urn:ietf:params:oauth:token-type:access_token` or `...:jwt`. `actor_token` needs
///    `actor_token_type` (same types) and that type needs the token. `requested_token_type`, if
///    sent, must be `...:access_token`, `...:jwt` or `...:id_token`. Any of these wrong is 400
///    `invalid_request` naming the parameter; a `resource` that is not an absolute URI without a
///    fragment is 400 `invalid_target`. `audience` and `resource` may repeat.
/// 2. The subject token, then the actor token, must be live (not expired by the server's clock,
///    judged like the API's), not revoked, access tokens of this server, and JWTs if declared as
///    `...:jwt`; otherwise 400 `invalid_grant` with an `error_description` saying which token
///    and why.
///
/// The answer has `access_token`, `issued_token_type` (the requested type, default
/// `...:access_token`), `token_type`, `expires_in` and, when the token has one, `scope`. An
/// access token is opaque (`tk_…`) or, if `...:jwt` was requested, a signed JWT; both are
/// `Bearer` and accepted by the API. An `...:id_token` is an opaque `it_…` with `token_type`
/// `N_A` (RFC 8693 §2.2.1) that the API refuses and the token endpoint does not take as a
/// subject. The new token is owned by the requesting client (`client`, `client_id`) and acts
/// for the subject token's subject and user (`sub`, `user`), with `act: {"sub": <client>}` (or
/// the actor token's subject) wrapping the subject token's own `act`, the `audience` then
/// `resource` values as its audience, and the requested `scope`, else the subject token's
/// (granted as asked: the test kit does not police down-scoping).
///
/// Its lifetime is the server's token lifetime and is deliberately *not* capped by the subject
/// token's `exp`, so that a client's own cap can be tested; it also survives the revocation of
/// its subject token. [`misreport_next_issued_token_type`](Self::misreport_next_issued_token_type)
/// makes coming exchanges answer a wrong `issued_token_type`.
///
/// [`TestServerBuilder::delegation_grant`] adds `grant_type=delegation`: the subject token in
/// the `token` field (missing: `invalid_request`; unknown, expired, revoked: `invalid_grant`, as
/// above), optionally `scope`, answered with a plain token response (`access_token`,
/// `token_type`, `expires_in`, `scope`) with an opaque token issued as a token exchange would.
///
/// Both grants are recorded and counted like any token request, and also in
/// [`exchange_requests`](Self::exchange_requests).
///
/// # Introspection
///
/// `POST /introspect` with client authentication and `token=..` (RFC 7662) answers, to any
/// registered client, `{"active": false}` for anything but a live token this server issued
/// (refresh tokens included), and for a live one `active`, `iss`, `sub`, `client_id`,
/// `token_type` (`Bearer` or `N_A`), `iat`, `exp`, and when they apply `username`, `scope`,
/// `aud` (an array) and `act`. A missing `token` is 400 `invalid_request`, bad client
/// credentials 401 `invalid_client`.
///
/// # Revocation
///
/// `POST /revoke` with client authentication and `token=..` (optionally `token_type_hint`,
/// which is recorded but not needed: both kinds of token are looked up) answers 200 for any
/// token of the authenticated client, and for unknown tokens too (RFC 7009 §2.2). Revoking a
/// refresh token revokes its whole family, access tokens included; revoking an access token
/// revokes just that token. Bad client credentials are 401 `invalid_client`, a missing `token`
/// 400 `invalid_request`, and a token issued to another client 400 `invalid_request` (nothing
/// is revoked).
///
/// # Discovery
///
/// Both well-known paths answer the same metadata: `issuer` ([`issuer`](Self::issuer), the base
/// URL unless [`TestServerBuilder::issuer`] says otherwise), `token_endpoint`,
/// `revocation_endpoint`, `introspection_endpoint`, `grant_types_supported` (the built-in
/// grants including token exchange, then `delegation` if enabled, then extension grants),
/// `token_endpoint_auth_methods_supported`, `revocation_endpoint_auth_methods_supported` and
/// `introspection_endpoint_auth_methods_supported` (`client_secret_basic`,
/// `client_secret_post`), `response_types_supported` (`["code"]`) and, if configured,
/// `scopes_supported`.
/// [`TestServerBuilder::serve_openid_configuration`]`(false)` makes the OpenID path answer 404,
/// to test a client's fallback, and [`fail_next_discovery`](Self::fail_next_discovery) makes the
/// next discovery requests fail (or serve any [`Failure::RawBody`], e.g. metadata with an
/// `http` endpoint).
///
/// # Leak detection
///
/// [`requests_with_authorization`](Self::requests_with_authorization) counts the requests outside
/// the token, revocation and introspection endpoints that carried an `Authorization` header. Pointing a redirect
/// at a second `TestServer` and checking that its count stays 0 proves that no token followed the
/// redirect to another origin.
///
/// The handle is cheap to clone. The server stops when the last handle is dropped or when
/// [`shutdown`](Self::shutdown) is called on any of them; counters stay readable afterwards.
#[derive(Clone)]
pub struct TestServer {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    base_url: String,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("base_url", &self.inner.base_url)
            .field("token_requests_total", &self.token_requests_total())
            .field("tokens_issued", &self.tokens_issued())
            .field("reuse_detections", &self.reuse_detections())
            .field("revocation_requests", &self.revocation_requests())
            .field("discovery_requests", &self.discovery_requests())
            .field("api_requests", &self.api_requests())
            .field("api_rejections", &self.api_rejections())
            .field(
                "requests_with_authorization",
                &self.requests_with_authorization(),
            )
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// Starts configuring a server.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The token endpoint: [`base_url`](Self::base_url) + `/token`.
    pub fn token_endpoint(&self) -> String {
        format!("{}{TOKEN_PATH}", self.inner.base_url)
    }

    /// The revocation endpoint (RFC 7009): [`base_url`](Self::base_url) + `/revoke`; see
    /// [Revocation](Self#revocation).
    pub fn revocation_endpoint(&self) -> String {
        format!("{}{REVOCATION_PATH}", self.inner.base_url)
    }

    /// The introspection endpoint (RFC 7662): [`base_url`](Self::base_url) + `/introspect`; see
    /// [Introspection](Self#introspection).
    pub fn introspection_endpoint(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.inner.base_url)
    }

    /// The `issuer` the discovery metadata announces: the one set with
    /// [`TestServerBuilder::issuer`], or [`base_url`](Self::base_url).
    pub fn issuer(&self) -> String {
        self.inner.state.issuer().to_owned()
    }

    /// The URL of a discovery document: [`base_url`](Self::base_url) + its
    /// [`path`](DiscoveryDocument::path).
    pub fn discovery_url(&self, document: DiscoveryDocument) -> String {
        format!("{}{}", self.inner.base_url, document.path())
    }

    /// A URL of the protected API: [`base_url`](Self::base_url) + `/api` + `path`, where `path`
    /// starts with `/` (e.g. `api_url("/orders")`).
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api{path}", self.inner.base_url)
    }

    /// A URL on this server that redirects to `to`: [`base_url`](Self::base_url) +
    /// `/redirect?to=` + `to` percent-encoded. `GET` and `POST` requests to it are answered
    /// `307 Temporary Redirect` with `Location: <to>`, without any authentication, so a test
    /// can send a client (and whatever credentials it attaches) anywhere, e.g.
    /// `server.redirect_url(&other_server.api_url("/x"))`. `to` is sent back as it is, so it
    /// may also be relative; an empty `to` makes the server answer 400.
    pub fn redirect_url(&self, to: &str) -> String {
        let to: String = form_urlencoded::byte_serialize(to.as_bytes()).collect();
        format!("{}/redirect?to={to}", self.inner.base_url)
    }

    /// Signs `username` in to `client_id` without HTTP, as the password grant (or a browser
    /// sign-in) would: a new token family, with an access token the API accepts as this user's,
    /// its `expires_in`, a refresh token, and the default scope (every scope of
    /// [`TestServerBuilder::scopes_supported`], or none). For tests that need a signed-in user
    /// but do not test the sign-in. It is not a token request: no counter changes.
    ///
    /// # Panics
    ///
    /// When `client_id` or `username` was not registered with the builder: the test is wrong.
    pub fn sign_in(&self, client_id: &str, username: &str) -> SignedIn {
        self.sign_in_as(client_id, username, None)
    }

    /// Like [`sign_in`](Self::sign_in), granting `scope` (space-separated) instead of the
    /// default; a later refresh may narrow it but not widen it.
    ///
    /// # Panics
    ///
    /// When `client_id` or `username` was not registered with the builder.
    pub fn sign_in_with_scope(&self, client_id: &str, username: &str, scope: &str) -> SignedIn {
        self.sign_in_as(client_id, username, Some(scope).filter(|s| !s.is_empty()))
    }

    fn sign_in_as(&self, client_id: &str, username: &str, scope: Option<&str>) -> SignedIn {
        let state = &self.inner.state;
        assert!(
            state.has_client(client_id),
            "sign_in: client {client_id:?} is not registered with TestServerBuilder::client"
        );
        assert!(
            state.has_user(username),
            "sign_in: user {username:?} is not registered with TestServerBuilder::user"
        );
        let issued = state.sign_in(client_id, username, scope);
        SignedIn {
            access_token: issued.access_token,
            token_type: "Bearer".to_owned(),
            expires_in: Duration::from_secs(issued.expires_in),
            // A sign-in always starts a family with a refresh token.
            refresh_token: issued.refresh_token.unwrap_or_default(),
            scope: issued.scope,
        }
    }

    /// The `client_id` of the tokens [`issue_user_jwt`](Self::issue_user_jwt) issues: the web app
    /// the user signed in to. It need not be registered.
    pub const USER_JWT_CLIENT_ID: &'static str = "web-app";

    /// Issues `username` an access token as a JWT, as a server that signed the user in to a web
    /// app would: `base64url(header).base64url(claims).base64url(signature)`, header
    /// `{"alg":"HS256","typ":"at+jwt"}`, HMAC-SHA256 with a key drawn at server start, claims
    /// `iss` ([`issuer`](Self::issuer)), `sub` (`username`), `aud` (`audience`), `scope`,
    /// `client_id` ([`USER_JWT_CLIENT_ID`](Self::USER_JWT_CLIENT_ID)), `iat`, `exp` and `jti`.
    /// An empty `audience` or `scope` leaves that claim out.
    ///
    /// `exp` follows the server's expiry rule (issue time truncated to whole seconds plus
    /// `lifetime`'s whole seconds, see [Token expiry](Self#token-expiry)) but with this
    /// `lifetime`, not the server's: [`Duration::ZERO`] gives an already-expired token. While
    /// live and not revoked, the API accepts it (reporting the user) and the token endpoint
    /// takes it as a subject or actor token. `username` need not be registered: the token
    /// stands for a sign-in this server did not see. It is not a token request: no counter
    /// changes.
    pub fn issue_user_jwt(
        &self,
        username: &str,
        audience: &str,
        scope: &str,
        lifetime: Duration,
    ) -> String {
        self.inner.state.issue_user_jwt(
            Self::USER_JWT_CLIENT_ID,
            username,
            audience,
            scope,
            lifetime,
        )
    }

    /// Revokes one token, whoever it was issued to, as `POST /revoke` by its client would: an
    /// access token (opaque, JWT, exchanged or `N_A`) alone, a refresh token with its whole
    /// family. Returns whether the token was known (`false`: never issued, or already
    /// revoked). Not a revocation request: no counter changes.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.inner.state.revoke_token(token) != Revoked::Nothing
    }

    /// Makes the next successful token exchange answer this `issued_token_type` instead of the
    /// type it issued (the token itself is the one requested), to test a client's check of it.
    /// Repeatable: values are used first in, first out, one per successful exchange; refused
    /// exchanges and the `delegation` grant do not use them. To test a response without
    /// `issued_token_type`, queue a [`Failure::RawBody`] with [`fail_next`](Self::fail_next).
    pub fn misreport_next_issued_token_type(&self, issued_token_type: &str) {
        self.inner
            .state
            .push_misreported_token_type(issued_token_type.to_owned());
    }

    /// How many of [`token_requests`](Self::token_requests) for this client id were token
    /// exchanges or `delegation` grants, whatever their outcome (enabled or not, refused,
    /// injected failures included).
    pub fn exchange_requests(&self, client_id: &str) -> usize {
        self.inner.state.exchange_requests(client_id)
    }

    /// How many `POST /introspect` requests arrived, whatever their outcome.
    pub fn introspection_requests(&self) -> usize {
        self.inner.state.introspection_requests()
    }

    /// How many token requests named this client id (in Basic credentials or the `client_id`
    /// form field), whatever their outcome, including injected failures and bad credentials.
    pub fn token_requests(&self, client_id: &str) -> usize {
        self.inner.state.token_requests(client_id)
    }

    /// How many of [`token_requests`](Self::token_requests) for this client id had
    /// `grant_type=refresh_token`, whatever their outcome, e.g. to check that concurrent callers
    /// for one user caused exactly one refresh.
    pub fn refresh_requests(&self, client_id: &str) -> usize {
        self.inner.state.refresh_requests(client_id)
    }

    /// How many `POST /token` requests arrived, whatever their outcome.
    pub fn token_requests_total(&self) -> usize {
        self.inner.state.token_requests_total()
    }

    /// Waits until at least `total` token requests have arrived (see
    /// [`token_requests_total`](Self::token_requests_total)), e.g. to know a background renewal
    /// has reached the server without sleeping. Wrap it in a timeout if it may never happen.
    pub async fn wait_for_token_requests(&self, total: usize) {
        self.inner.state.wait_for_token_requests(total).await;
    }

    /// How many tokens were issued by token responses (not injected ones, not
    /// [`sign_in`](Self::sign_in)): one per successful sign-in, refresh or client token.
    pub fn tokens_issued(&self) -> usize {
        self.inner.state.tokens_issued()
    }

    /// How many times a used one-time refresh token was presented, revoking its family (see
    /// [`RefreshTokenUsage::OneTime`]).
    pub fn reuse_detections(&self) -> usize {
        self.inner.state.reuse_detections()
    }

    /// The latest token request that named this client id, with its authentication method and
    /// form fields (never the client secret or the user's password), to assert on `scope`,
    /// `resource`, `refresh_token` and other parameters.
    pub fn last_token_request(&self, client_id: &str) -> Option<TokenRequestRecord> {
        self.inner.state.last_token_request(client_id)
    }

    /// Waits this long before answering each token request from now on (zero: no delay).
    /// The delay applies before any injected failure. It runs on the tokio clock, so a test with
    /// a paused clock skips through it in virtual time.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.state.set_delay(delay);
    }

    /// Queues a failure for a coming token request: failures are used first in, first out,
    /// one per token request, after the request is counted and delayed.
    pub fn fail_next(&self, failure: Failure) {
        self.inner.state.push_failure(failure);
    }

    /// Sets the lifetime of access tokens issued from now on: `expires_in` is its whole seconds
    /// (capped at about a century), and the token's `exp` is the issue time truncated to whole
    /// seconds plus `expires_in`. The API accepts the token only while the current whole second
    /// is before `exp`, so a token dies up to one second before `issue time + expires_in`, as
    /// with real servers: clients must renew with a margin (see
    /// [Token expiry](Self#token-expiry)). [`Duration::ZERO`] issues tokens the API already
    /// rejects as expired.
    ///
    /// Expiry is judged by the wall clock ([`std::time::SystemTime`]), not tokio's, so pausing
    /// or advancing tokio time does not expire tokens.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.inner.state.set_token_lifetime(lifetime);
    }

    /// Sets what a refresh does to the refresh token from now on (see [`RefreshTokenUsage`]).
    /// A refresh token already used under [`RefreshTokenUsage::OneTime`] stays used: presenting
    /// it is reuse whatever the setting.
    pub fn set_refresh_token_usage(&self, usage: RefreshTokenUsage) {
        self.inner.state.set_refresh_token_usage(usage);
    }

    /// With [`RefreshTokenUsage::Reuse`]: whether a refresh answers the same refresh token
    /// again (`true`, the default) or no refresh token at all.
    pub fn set_reuse_returns_refresh_token(&self, returns: bool) {
        self.inner.state.set_reuse_returns_refresh_token(returns);
    }

    /// Sets the absolute lifetime of refresh token families, counted from sign-in, for every
    /// refresh from now on, families signed in before included (see
    /// [Users and refresh tokens](Self#users-and-refresh-tokens)).
    pub fn set_refresh_token_absolute_lifetime(&self, lifetime: Duration) {
        self.inner
            .state
            .set_refresh_token_lifetimes(|lifetimes| lifetimes.absolute = lifetime);
    }

    /// Sets (or with `None` removes) the sliding lifetime of refresh token families, counted from
    /// their last use, for every refresh from now on. It never extends the absolute lifetime.
    pub fn set_refresh_token_sliding_lifetime(&self, lifetime: Option<Duration>) {
        self.inner
            .state
            .set_refresh_token_lifetimes(|lifetimes| lifetimes.sliding = lifetime);
    }

    /// Revokes every access and refresh token issued so far: the API rejects the access tokens
    /// and the token endpoint the refresh tokens (`invalid_grant`) from now on. Tokens issued
    /// later are accepted.
    pub fn revoke_all(&self) {
        self.inner.state.revoke_all();
    }

    /// How many `POST /revoke` requests arrived, whatever their outcome.
    pub fn revocation_requests(&self) -> usize {
        self.inner.state.revocation_requests()
    }

    /// The latest revocation request, with its authentication method and form fields (`token`,
    /// `token_type_hint`, `client_id`; never the client secret).
    pub fn last_revocation_request(&self) -> Option<TokenRequestRecord> {
        self.inner.state.last_revocation_request()
    }

    /// Queues a failure for a coming revocation request, first in, first out, one per request,
    /// after the request is counted. Nothing is revoked by a request that fails this way.
    pub fn fail_next_revocation(&self, failure: Failure) {
        self.inner.state.push_revocation_failure(failure);
    }

    /// How many `GET` requests arrived for either discovery document, whatever their outcome
    /// (404s of a disabled OpenID path and injected failures included).
    pub fn discovery_requests(&self) -> usize {
        DiscoveryDocument::ALL
            .into_iter()
            .map(|document| self.inner.state.discovery_requests(document))
            .sum()
    }

    /// How many of [`discovery_requests`](Self::discovery_requests) asked for this document,
    /// e.g. to check that a client tried the OpenID path once and then fell back.
    pub fn discovery_requests_for(&self, document: DiscoveryDocument) -> usize {
        self.inner.state.discovery_requests(document)
    }

    /// Queues a failure for a coming discovery request (to either document, served or not),
    /// first in, first out, one per request, after the request is counted.
    pub fn fail_next_discovery(&self, failure: Failure) {
        self.inner.state.push_discovery_failure(failure);
    }

    /// How many requests reached the protected API (`/api/*`), whatever their outcome.
    pub fn api_requests(&self) -> usize {
        self.inner.state.api_requests()
    }

    /// How many API requests were answered 401: a missing, unknown, expired or revoked token,
    /// or any request the [`ApiMode`] rejects.
    pub fn api_rejections(&self) -> usize {
        self.inner.state.api_rejections()
    }

    /// Changes how the protected API judges requests from now on (see [`ApiMode`]). Switching
    /// back to [`ApiMode::Normal`] makes it accept live tokens again, like an API that
    /// recovers: the mode never expires or revokes a token, it only changes the answer.
    pub fn set_api_mode(&self, mode: ApiMode) {
        self.inner.state.set_api_mode(mode);
    }

    /// How many requests that carried an `Authorization` header arrived on any path but the
    /// token, revocation and introspection endpoints: the API, [`redirect_url`](Self::redirect_url)s, discovery
    /// and unknown paths alike. A test checks with it that no credential reached a server it
    /// must not reach.
    pub fn requests_with_authorization(&self) -> usize {
        self.inner.state.requests_with_authorization()
    }

    /// Stops the server, for every handle: it stops accepting, drops open connections (a
    /// request waiting on [`Failure::Hang`] then fails) and returns once all of them are
    /// closed.
    pub async fn shutdown(self) {
        self.inner.stop.send_replace(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            // The accept loop does not panic; a cancelled task (runtime shutting down) is fine.
            let _ = task.await;
        }
    }
}

/// Configures and starts a [`TestServer`].
#[must_use]
pub struct TestServerBuilder {
    settings: Settings,
}

impl Default for TestServerBuilder {
    fn default() -> Self {
        Self {
            settings: Settings {
                clients: Vec::new(),
                extension_grants: Vec::new(),
                delegation_grant: false,
                users: Vec::new(),
                token_lifetime: DEFAULT_TOKEN_LIFETIME,
                delay: Duration::ZERO,
                api_mode: ApiMode::Normal,
                refresh: RefreshPolicy::default(),
                issuer: None,
                scopes_supported: Vec::new(),
                serve_openid_configuration: true,
            },
        }
    }
}

impl fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: secrets and passwords stay out of test output.
        let names = |pairs: &[(String, String)]| -> Vec<String> {
            pairs.iter().map(|(name, _)| name.clone()).collect()
        };
        let settings = &self.settings;
        f.debug_struct("TestServerBuilder")
            .field("clients", &names(&settings.clients))
            .field("users", &names(&settings.users))
            .field("extension_grants", &settings.extension_grants)
            .field("delegation_grant", &settings.delegation_grant)
            .field("token_lifetime", &settings.token_lifetime)
            .field("delay", &settings.delay)
            .field("api_mode", &settings.api_mode)
            .field("refresh_token_usage", &settings.refresh.usage)
            .field(
                "reuse_returns_refresh_token",
                &settings.refresh.reuse_returns_refresh_token,
            )
            .field(
                "refresh_token_absolute_lifetime",
                &settings.refresh.lifetimes.absolute,
            )
            .field(
                "refresh_token_sliding_lifetime",
                &settings.refresh.lifetimes.sliding,
            )
            .field("issuer", &settings.issuer)
            .field("scopes_supported", &settings.scopes_supported)
            .field(
                "serve_openid_configuration",
                &settings.serve_openid_configuration,
            )
            .finish()
    }
}

impl TestServerBuilder {
    /// Registers a confidential client that may authenticate with `client_secret_basic` or
    /// `client_secret_post`. Repeatable; registering an id again replaces its secret.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        replace(&mut self.settings.clients, id, secret);
        self
    }

    /// Registers a user who can sign in with the password grant from any registered client,
    /// or with [`TestServer::sign_in`]. Repeatable; registering a name again replaces its
    /// password.
    pub fn user(mut self, username: &str, password: &str) -> Self {
        replace(&mut self.settings.users, username, password);
        self
    }

    /// Makes the token endpoint also accept `grant_type=<grant_type>` (e.g.
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` with `assertion`) from any registered,
    /// authenticated client, if the form has a non-empty `required_param` field; without it the
    /// answer is 400 `invalid_request` naming the missing parameter. The token is issued exactly
    /// as for `client_credentials`: same lifetime and expiry, `token_type` `Bearer`,
    /// `expires_in`, and `scope` echoed if sent. The request is recorded and counted like any
    /// other token request, and the grant type is listed in the discovery metadata.
    ///
    /// Repeatable; registering a grant type again replaces its required parameter. Built-in
    /// grant types (`client_credentials`, `password`, `refresh_token`) keep their own behaviour,
    /// and grant types never registered keep answering `unsupported_grant_type`.
    pub fn extension_grant(mut self, grant_type: &str, required_param: &str) -> Self {
        replace(
            &mut self.settings.extension_grants,
            grant_type,
            required_param,
        );
        self
    }

    /// Makes the token endpoint serve the `delegation` extension grant (default: not served,
    /// `unsupported_grant_type` unless registered with
    /// [`extension_grant`](Self::extension_grant)): `grant_type=delegation&token=<subject
    /// token>`, optionally `scope`, from any registered, authenticated client. The token is
    /// validated as a token exchange's subject token and the answer issued as a token exchange
    /// would (see [Token exchange and delegation](TestServer#token-exchange-and-delegation)).
    /// It is listed in the discovery metadata, and it takes precedence over an extension grant
    /// registered under the same name.
    pub fn delegation_grant(mut self) -> Self {
        self.settings.delegation_grant = true;
        self
    }

    /// How the protected API judges requests from the start (default [`ApiMode::Normal`]); see
    /// [`TestServer::set_api_mode`].
    pub fn api_mode(mut self, mode: ApiMode) -> Self {
        self.settings.api_mode = mode;
        self
    }

    /// The lifetime of issued access tokens (default one hour); see
    /// [`TestServer::set_token_lifetime`].
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.token_lifetime = lifetime;
        self
    }

    /// A delay before answering each token request (default none); see
    /// [`TestServer::set_delay`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.settings.delay = delay;
        self
    }

    /// What a refresh does to the refresh token (default [`RefreshTokenUsage::OneTime`]:
    /// rotation with reuse detection); see [`TestServer::set_refresh_token_usage`].
    pub fn refresh_token_usage(mut self, usage: RefreshTokenUsage) -> Self {
        self.settings.refresh.usage = usage;
        self
    }

    /// With [`RefreshTokenUsage::Reuse`]: whether a refresh answers the same refresh token again
    /// (`true`, the default) or no refresh token at all, as some servers do.
    pub fn reuse_returns_refresh_token(mut self, returns: bool) -> Self {
        self.settings.refresh.reuse_returns_refresh_token = returns;
        self
    }

    /// How long a refresh token family may be refreshed, counted from sign-in (default 30 days);
    /// see [`TestServer::set_refresh_token_absolute_lifetime`].
    pub fn refresh_token_absolute_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.refresh.lifetimes.absolute = lifetime;
        self
    }

    /// Makes refresh token families also expire this long after their last use, the sign-in or
    /// the latest refresh (default: no sliding lifetime); see
    /// [`TestServer::set_refresh_token_sliding_lifetime`].
    pub fn refresh_token_sliding_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.refresh.lifetimes.sliding = Some(lifetime);
        self
    }

    /// The `issuer` the discovery metadata announces (default: the server's base URL), e.g.
    /// another URL to test that a client refuses metadata whose issuer is not the one it was
    /// configured with. Only the metadata changes: the server still serves at its base URL.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.settings.issuer = Some(issuer.to_owned());
        self
    }

    /// The scopes listed as `scopes_supported` in the discovery metadata (default: not listed),
    /// which are also what a user is granted by a sign-in that asks for no scope.
    pub fn scopes_supported(mut self, scopes: &[&str]) -> Self {
        self.settings.scopes_supported = scopes.iter().map(|&scope| scope.to_owned()).collect();
        self
    }

    /// Whether `/.well-known/openid-configuration` is served (default `true`); with `false` it
    /// answers 404, like a plain OAuth server, so that a client's fallback to
    /// `/.well-known/oauth-authorization-server` can be tested.
    pub fn serve_openid_configuration(mut self, serve: bool) -> Self {
        self.settings.serve_openid_configuration = serve;
        self
    }

    /// Binds `127.0.0.1` on a free port and serves on a task of the current tokio runtime.
    ///
    /// # Errors
    ///
    /// When the listening socket cannot be bound.
    pub async fn start(self) -> std::io::Result<TestServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let state = Arc::new(State::new(self.settings, base_url.clone()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), stopped));
        tracing::debug!(%addr, "test server started");
        Ok(TestServer {
            inner: Arc::new(Inner {
                addr,
                base_url,
                state,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

/// Sets `key` to `value` in a list of pairs, keeping the order of first registration.
fn replace(pairs: &mut Vec<(String, String)>, key: &str, value: &str) {
    pairs.retain(|(known, _)| known != key);
    pairs.push((key.to_owned(), value.to_owned()));
}

/// The error a handler returns to make hyper close the connection without a response.
#[derive(Debug)]
pub(crate) struct Disconnect;

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection closed by the test server")
    }
}

impl std::error::Error for Disconnect {}

/// Waits until the server is told to stop, or every handle is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender (the last handle) is gone: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let connection_stop = stop.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(
                        stream,
                        Arc::clone(&state),
                        connection_stop.clone(),
                    ));
                }
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::debug!(%error, "test server failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
    tracing::debug!("test server stopped");
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    // Requests are small and latency matters more than packet count in tests.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { route(&state, request).await }
    });
    // No header read timeout: tests with a paused, auto-advancing tokio clock would otherwise see
    // idle keep-alive connections closed in virtual time.
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "test server connection ended with an error");
            }
        }
        // Dropping the connection closes the socket, also under a request that hangs.
        () = stopped(&mut stop) => {}
    }
}

async fn route(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Disconnect> {
    let path = request.uri().path();
    // Clients authenticate at these three with `Authorization: Basic`; that is no leak.
    if path == TOKEN_PATH {
        return token_endpoint::handle(state, request).await;
    }
    if path == REVOCATION_PATH {
        return revocation::handle(state, request).await;
    }
    if path == INTROSPECTION_PATH {
        return introspection::handle(state, request).await;
    }
    if request.headers().contains_key(AUTHORIZATION) {
        state.count_request_with_authorization();
    }
    if path == "/api" || path.starts_with("/api/") {
        api::handle(state, request).await
    } else if path == "/redirect" {
        redirect::handle(request).await
    } else if let Some(document) = DiscoveryDocument::from_path(path) {
        discovery::handle(state, request, document).await
    } else {
        Ok(body::plain(StatusCode::NOT_FOUND))
    }
}
