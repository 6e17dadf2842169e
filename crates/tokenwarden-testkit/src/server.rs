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
use crate::state::{State, lock};
use crate::{ApiMode, Failure, TokenRequestRecord, api, redirect, token_endpoint};

/// The default lifetime of issued tokens: one hour.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// An OAuth 2.0 authorization server (token endpoint only) and a protected API, serving real
/// HTTP/1.1 on `127.0.0.1` from a task of the current tokio runtime.
///
/// - `POST /token` ([`token_endpoint`](Self::token_endpoint)) issues opaque bearer tokens with
///   the `client_credentials` grant, and with any grant type registered with
///   [`TestServerBuilder::extension_grant`], to the clients registered with
///   [`TestServerBuilder::client`], authenticated by `client_secret_basic` or
///   `client_secret_post`.
/// - Any path under `/api/` ([`api_url`](Self::api_url)) answers 200 with JSON describing the
///   request (`client`, `method`, `path`, `body`) when it carries `Authorization: Bearer` with
///   a token from this server that is neither expired nor revoked, and 401 with
///   `WWW-Authenticate: Bearer error="invalid_token"` otherwise. [`set_api_mode`](Self::set_api_mode)
///   makes it reject every token, or answer valid ones with `insufficient_scope`.
/// - `GET` or `POST /redirect?to=URL` ([`redirect_url`](Self::redirect_url)) answers
///   `307 Temporary Redirect` to `URL`, without asking for any authentication.
///
/// # Token expiry
///
/// Tokens expire the way a real authorization server's JWTs do: `exp` is the wall-clock issue
/// time truncated to whole seconds plus `expires_in`, and the API rejects a token once the
/// current whole second reaches `exp`. A token therefore dies up to one second *before*
/// `issue time + expires_in`; this is deliberate, so that tests catch clients that renew
/// without a safety margin.
///
/// # Leak detection
///
/// [`requests_with_authorization`](Self::requests_with_authorization) counts the requests outside
/// the token endpoint that carried an `Authorization` header. Pointing a redirect at a second
/// `TestServer` and checking that its count stays 0 proves that no token followed the redirect
/// to another origin.
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
        format!("{}/token", self.inner.base_url)
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

    /// How many token requests named this client id (in Basic credentials or the `client_id`
    /// form field), whatever their outcome, including injected failures and bad credentials.
    pub fn token_requests(&self, client_id: &str) -> usize {
        self.inner.state.token_requests(client_id)
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

    /// How many tokens were issued (successful token responses, not injected ones).
    pub fn tokens_issued(&self) -> usize {
        self.inner.state.tokens_issued()
    }

    /// The latest token request that named this client id, with its authentication method and
    /// form fields (never the client secret), to assert on `scope`, `resource` and other
    /// parameters.
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

    /// Sets the lifetime of tokens issued from now on: `expires_in` is its whole seconds (capped
    /// at about a century), and the token's `exp` is the issue time truncated to whole seconds
    /// plus `expires_in`. The API accepts the token only while the current whole second is
    /// before `exp`, so a token dies up to one second before `issue time + expires_in`, as with
    /// real servers: clients must renew with a margin (see [Token expiry](Self#token-expiry)).
    /// [`Duration::ZERO`] issues tokens the API already rejects as expired.
    ///
    /// Expiry is judged by the wall clock ([`std::time::SystemTime`]), not tokio's, so pausing
    /// or advancing tokio time does not expire tokens.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.inner.state.set_token_lifetime(lifetime);
    }

    /// Revokes every token issued so far: the API rejects them from now on. Tokens issued
    /// later are accepted.
    pub fn revoke_all(&self) {
        self.inner.state.revoke_all();
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
    /// token endpoint: the API, [`redirect_url`](Self::redirect_url)s and unknown paths alike.
    /// A test checks with it that no credential reached a server it must not reach.
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
    clients: Vec<(String, String)>,
    /// Extension grant types and the form field each requires.
    extension_grants: Vec<(String, String)>,
    token_lifetime: Duration,
    delay: Duration,
    api_mode: ApiMode,
}

impl Default for TestServerBuilder {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            extension_grants: Vec::new(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            delay: Duration::ZERO,
            api_mode: ApiMode::Normal,
        }
    }
}

impl fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.clients.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("TestServerBuilder")
            .field("clients", &ids)
            .field("extension_grants", &self.extension_grants)
            .field("token_lifetime", &self.token_lifetime)
            .field("delay", &self.delay)
            .field("api_mode", &self.api_mode)
            .finish()
    }
}

impl TestServerBuilder {
    /// Registers a confidential client that may authenticate with `client_secret_basic` or
    /// `client_secret_post`. Repeatable; registering an id again replaces its secret.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.clients.retain(|(known, _)| known != id);
        self.clients.push((id.to_owned(), secret.to_owned()));
        self
    }

    /// Makes the token endpoint also accept `grant_type=<grant_type>` (e.g.
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` with `assertion`) from any registered,
    /// authenticated client, if the form has a non-empty `required_param` field; without it the
    /// answer is 400 `invalid_request` naming the missing parameter. The token is issued exactly
    /// as for `client_credentials`: same lifetime and expiry, `token_type` `Bearer`,
    /// `expires_in`, and `scope` echoed if sent. The request is recorded and counted like any
    /// other token request.
    ///
    /// Repeatable; registering a grant type again replaces its required parameter. Built-in
    /// grant types (`client_credentials`) keep their own behaviour, and grant types never
    /// registered keep answering `unsupported_grant_type`.
    pub fn extension_grant(mut self, grant_type: &str, required_param: &str) -> Self {
        self.extension_grants
            .retain(|(known, _)| known != grant_type);
        self.extension_grants
            .push((grant_type.to_owned(), required_param.to_owned()));
        self
    }

    /// How the protected API judges requests from the start (default [`ApiMode::Normal`]); see
    /// [`TestServer::set_api_mode`].
    pub fn api_mode(mut self, mode: ApiMode) -> Self {
        self.api_mode = mode;
        self
    }

    /// The lifetime of issued tokens (default one hour); see [`TestServer::set_token_lifetime`].
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// A delay before answering each token request (default none); see
    /// [`TestServer::set_delay`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
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
        let state = Arc::new(State::new(
            self.clients,
            self.extension_grants,
            self.token_lifetime,
            self.delay,
            self.api_mode,
        ));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), stopped));
        tracing::debug!(%addr, "test server started");
        Ok(TestServer {
            inner: Arc::new(Inner {
                addr,
                base_url: format!("http://{addr}"),
                state,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }
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
    if path == "/token" {
        // Clients authenticate here with `Authorization: Basic`; that is no leak.
        return token_endpoint::handle(state, request).await;
    }
    if request.headers().contains_key(AUTHORIZATION) {
        state.count_request_with_authorization();
    }
    if path == "/api" || path.starts_with("/api/") {
        api::handle(state, request).await
    } else if path == "/redirect" {
        redirect::handle(request).await
    } else {
        Ok(body::plain(StatusCode::NOT_FOUND))
    }
}
