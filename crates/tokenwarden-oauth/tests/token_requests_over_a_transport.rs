//! `OAuthClient::request_token` driven through `with_transport(tower::service_fn(..))`, for the
//! client-credentials grant, an extension grant and a grant written by the user: what goes on the
//! wire, and how the response, `Retry-After`, the timeout and the size limit are handled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokenwarden_core::{CacheKeyBuilder, Secret, TokenParams, TokenType};
use tokenwarden_oauth::{
    ClientAuth, ClientConfig, ClientCredentials, Error, ExtensionGrant, Form, Grant, OAuthClient,
    TokenResponse,
};

const SECRET: &str = "client-secret-d0-not-log";
const TOKEN: &str = "access-token-d0-not-log";
const REFRESH: &str = "refresh-token-d0-not-log";
const ASSERTION: &str = "signed-assertion-d0-not-log";

#[derive(Debug)]
struct Captured {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    form: Vec<(String, String)>,
}

/// A transport that records each request and answers with `status`, `headers` and `body`.
fn answering(
    status: u16,
    headers: &[(http::HeaderName, String)],
    response_body: &'static str,
) -> (OAuthClient, Arc<Mutex<Vec<Captured>>>) {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let log = captured.clone();
    let headers = headers.to_vec();
    let transport = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let log = log.clone();
        let headers = headers.clone();
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let form = form_urlencoded::parse(&bytes).into_owned().collect();
            log.lock().unwrap().push(Captured {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                form,
            });
            let mut response = Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json");
            for (name, value) in headers {
                response = response.header(name, value);
            }
            let response = response
                .body(Full::new(Bytes::from_static(response_body.as_bytes())))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    (OAuthClient::with_transport(transport), captured)
}

/// A transport that records each request and answers with `status` and `body`.
fn recording(status: u16, response_body: &'static str) -> (OAuthClient, Arc<Mutex<Vec<Captured>>>) {
    answering(status, &[], response_body)
}

/// The billing service as the authorization server knows it.
fn idp(auth: ClientAuth) -> ClientConfig {
    let builder = ClientConfig::builder("https://auth.example.com/oauth/token", "billing-service")
        .auth(auth.clone());
    match auth {
        ClientAuth::None => builder.build().unwrap(),
        _ => builder.client_secret(SECRET).build().unwrap(),
    }
}

fn client(auth: ClientAuth) -> ClientCredentials {
    let grant = ClientCredentials::new(idp(auth))
        .scope("invoices.read invoices.write")
        .resource("https://api.example.com/")
        .param("tenant", "acme");
    grant.validate().unwrap();
    grant
}

fn basic_credentials() -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("billing-service:{SECRET}"));
    format!("Basic {encoded}")
}

fn pairs(form: &[(String, String)]) -> Vec<(&str, &str)> {
    form.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

const GOOD: &str = r#"{"access_token":"access-token-d0-not-log","token_type":"bearer","expires_in":"900","scope":"invoices.read"}"#;

#[tokio::test]
async fn secret_basic_request_is_a_form_post_with_basic_credentials() {
    let (oauth, captured) = recording(200, GOOD);
    let response = oauth
        .request_token(&client(ClientAuth::SecretBasic), &TokenParams::new())
        .await
        .unwrap();

    assert_eq!(response.access_token().expose_secret(), TOKEN);
    assert_eq!(response.access_token().token_type(), &TokenType::Bearer);
    assert_eq!(response.expires_in(), Some(Duration::from_secs(900)));
    assert_eq!(response.scope(), Some("invoices.read"));

    let captured = captured.lock().unwrap();
    let request = &captured[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.uri, "https://auth.example.com/oauth/token");
    assert_eq!(
        request.headers[CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(request.headers[ACCEPT], "application/json");
    assert_eq!(request.headers[AUTHORIZATION], basic_credentials().as_str());
    assert_eq!(
        pairs(&request.form),
        [
            ("grant_type", "client_credentials"),
            ("scope", "invoices.read invoices.write"),
            ("resource", "https://api.example.com/"),
            ("tenant", "acme"),
        ]
    );
}

#[tokio::test]
async fn secret_post_and_public_clients_send_their_id_in_the_form() {
    let (oauth, captured) = recording(200, GOOD);
    oauth
        .request_token(&client(ClientAuth::SecretPost), &TokenParams::new())
        .await
        .unwrap();
    oauth
        .request_token(&client(ClientAuth::None), &TokenParams::new())
        .await
        .unwrap();
    let captured = captured.lock().unwrap();
    assert!(!captured[0].headers.contains_key(AUTHORIZATION));
    let post = pairs(&captured[0].form);
    assert!(post.contains(&("client_id", "billing-service")), "{post:?}");
    assert!(post.contains(&("client_secret", SECRET)), "{post:?}");
    assert!(!captured[1].headers.contains_key(AUTHORIZATION));
    let public = pairs(&captured[1].form);
    assert!(
        public.contains(&("client_id", "billing-service")),
        "{public:?}"
    );
    assert!(
        !public.iter().any(|(n, _)| *n == "client_secret"),
        "{public:?}"
    );
}

#[tokio::test]
async fn token_params_replace_the_grants_scope_resources_audience_and_params() {
    let (oauth, captured) = recording(200, GOOD);
    let params = TokenParams::new()
        .scope("invoices.read")
        .resource("https://reports.example.com/")
        .audience("reports")
        .param("tenant", "globex");
    oauth
        .request_token(&client(ClientAuth::SecretBasic), &params)
        .await
        .unwrap();
    let captured = captured.lock().unwrap();
    assert_eq!(
        pairs(&captured[0].form),
        [
            ("grant_type", "client_credentials"),
            ("scope", "invoices.read"),
            ("resource", "https://reports.example.com/"),
            ("audience", "reports"),
            ("tenant", "globex"),
        ]
    );
}

/// Collects everything `tracing` emits while the guard lives (current-thread runtime only).
/// Everything logged in this test binary, by every test: one global subscriber, so no test's
/// events depend on tracing's per-call-site cache of who listens (which scoped subscribers set
/// on several threads at once can leave stale). Each line names its thread, and a test reads
/// back the lines of its own thread.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

#[derive(Clone, Copy)]
struct Sink;

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The current test's logs from now on.
struct Logs {
    thread: String,
    from: usize,
}

fn capture_logs() -> Logs {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_thread_names(true)
            .with_ansi(false)
            .with_writer(|| Sink)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    Logs {
        thread: std::thread::current().name().unwrap_or_default().to_owned(),
        from: LOGS.lock().unwrap().len(),
    }
}

fn text(logs: &Logs) -> String {
    let all = LOGS.lock().unwrap();
    String::from_utf8_lossy(&all[logs.from..])
        .lines()
        .filter(|line| line.contains(&logs.thread))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn refresh_token_of_a_client_credentials_response_is_dropped_and_logged() {
    let logs = capture_logs();
    let (oauth, _) = recording(
        200,
        r#"{"access_token":"access-token-d0-not-log","token_type":"Bearer","refresh_token":"refresh-token-d0-not-log"}"#,
    );
    let response = oauth
        .request_token(&client(ClientAuth::SecretBasic), &TokenParams::new())
        .await
        .unwrap();
    assert!(response.refresh_token().is_none());
    assert_eq!(response.expires_in(), None);
    let logs = text(&logs);
    assert!(logs.contains("dropped the refresh token"), "{logs}");
    assert!(logs.contains("billing-service"), "{logs}");
    assert!(!logs.contains(REFRESH), "{logs}");
}

#[tokio::test]
async fn secrets_and_tokens_never_reach_logs_or_errors() {
    let logs = capture_logs();
    for auth in [ClientAuth::SecretBasic, ClientAuth::SecretPost] {
        let c = client(auth);
        let (oauth, _) = recording(200, GOOD);
        let ok = oauth.request_token(&c, &TokenParams::new()).await.unwrap();
        let (oauth, _) = recording(401, r#"{"error":"invalid_client"}"#);
        let err = oauth
            .request_token(&c, &TokenParams::new())
            .await
            .unwrap_err();
        let (oauth, _) = recording(
            200,
            r#"{"access_token":"access-token-d0-not-log ","token_type":5}"#,
        );
        let invalid = oauth
            .request_token(&c, &TokenParams::new())
            .await
            .unwrap_err();
        let (oauth, _) = recording(200, r#"{"access_token":"access-token-d0-not-log x"}"#);
        let unsafe_token = oauth
            .request_token(&c, &TokenParams::new())
            .await
            .unwrap_err();
        assert!(
            matches!(unsafe_token, Error::InvalidToken(_)),
            "{unsafe_token:?}"
        );
        let shown = format!(
            "{c:?} {oauth:?} {ok:?} {err} {err:?} {invalid} {invalid:?} {unsafe_token} {unsafe_token:?} {:?}",
            std::error::Error::source(&unsafe_token)
        );
        for secret in [SECRET, TOKEN] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    let logs = text(&logs);
    assert!(logs.contains("requesting a token"), "{logs}");
    for secret in [SECRET, TOKEN] {
        assert!(!logs.contains(secret), "{logs}");
    }
}

#[tokio::test]
async fn oauth_errors_and_bad_statuses_are_told_apart() {
    let c = client(ClientAuth::SecretBasic);
    let (oauth, _) = recording(
        400,
        r#"{"error":"invalid_scope","error_description":"unknown scope"}"#,
    );
    match oauth.request_token(&c, &TokenParams::new()).await {
        Err(e @ Error::TokenEndpoint { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("invalid_scope"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let (oauth, _) = recording(200, r#"{"error":"access_denied"}"#);
    let err = oauth
        .request_token(&c, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenEndpoint {
                status: StatusCode::OK,
                ..
            }
        ),
        "{err:?}"
    );
    let (oauth, _) = recording(503, "upstream unavailable");
    let err = oauth
        .request_token(&c, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::UnexpectedStatus {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            ..
        }
    ));
    assert_eq!(err.retry_after(), None, "no Retry-After, no delay");
    assert!(err.is_retryable());
    let (oauth, _) = recording(429, "");
    assert!(
        oauth
            .request_token(&c, &TokenParams::new())
            .await
            .unwrap_err()
            .is_retryable()
    );
    let (oauth, _) = recording(200, "<html>login</html>");
    let err = oauth
        .request_token(&c, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidResponse(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_extension_grant_keeps_the_refresh_token_its_server_issues() {
    let (oauth, _) = recording(
        200,
        r#"{"access_token":"access-token-d0-not-log","token_type":"Bearer","refresh_token":"refresh-token-d0-not-log"}"#,
    );
    let grant = ExtensionGrant::new(idp(ClientAuth::SecretBasic), "urn:example:test");
    let response = oauth
        .request_token(&grant, &TokenParams::new())
        .await
        .unwrap();
    // Only the client-credentials grant must not issue one (RFC 6749 §4.4.3).
    assert_eq!(
        response.refresh_token().map(Secret::expose_secret),
        Some(REFRESH)
    );
}

#[tokio::test]
async fn an_extension_grant_sends_its_own_type_and_parameters_authenticated_like_any_client() {
    let basic = basic_credentials();
    for (auth, authorization, credentials_in_form) in [
        (ClientAuth::SecretBasic, Some(basic.as_str()), vec![]),
        (
            ClientAuth::SecretPost,
            None,
            vec![("client_id", "billing-service"), ("client_secret", SECRET)],
        ),
        (
            ClientAuth::None,
            None,
            vec![("client_id", "billing-service")],
        ),
    ] {
        let grant = ExtensionGrant::new(idp(auth.clone()), "urn:example:test")
            .param("subject", "alice")
            .scope("reports.read");
        grant.validate().unwrap();
        let (oauth, captured) = recording(200, GOOD);
        let response = oauth
            .request_token(&grant, &TokenParams::new())
            .await
            .unwrap();
        assert_eq!(response.access_token().expose_secret(), TOKEN);
        // A per-request parameter of the same name replaces the grant's for that request only.
        oauth
            .request_token(&grant, &TokenParams::new().param("subject", "bob"))
            .await
            .unwrap();
        oauth
            .request_token(&grant, &TokenParams::new())
            .await
            .unwrap();

        let captured = captured.lock().unwrap();
        assert_eq!(captured.len(), 3);
        for (request, subject) in captured.iter().zip(["alice", "bob", "alice"]) {
            assert_eq!(request.method, http::Method::POST);
            assert_eq!(request.uri, "https://auth.example.com/oauth/token");
            assert_eq!(
                request.headers[CONTENT_TYPE],
                "application/x-www-form-urlencoded"
            );
            assert_eq!(request.headers[ACCEPT], "application/json");
            assert_eq!(
                request
                    .headers
                    .get(AUTHORIZATION)
                    .map(|v| v.to_str().unwrap()),
                authorization,
                "{auth:?}"
            );
            let mut expected = vec![
                ("grant_type", "urn:example:test"),
                ("scope", "reports.read"),
                ("subject", subject),
            ];
            expected.extend(credentials_in_form.iter().copied());
            assert_eq!(pairs(&request.form), expected, "{auth:?}");
        }
    }
}

/// A JWT-bearer-like grant (RFC 7523 §2.1) written by a user of the crate: the assertion is
/// signed elsewhere, and this deployment insists on being told which scope was granted.
#[derive(Debug)]
struct SignedAssertion {
    client: ClientConfig,
    assertion: Secret,
}

impl Grant for SignedAssertion {
    fn client(&self) -> &ClientConfig {
        &self.client
    }

    fn grant_type(&self) -> &str {
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    }

    fn form(&self, params: &TokenParams, form: &mut Form) -> Result<(), Error> {
        form.push("assertion", self.assertion.expose_secret());
        if let Some(scopes) = params.scopes() {
            form.push("scope", &scopes.join(" "));
        }
        Ok(())
    }

    fn cache_key(&self, params: &TokenParams, key: CacheKeyBuilder) -> CacheKeyBuilder {
        key.part("grant_type", self.grant_type())
            .hashed_part("assertion", self.assertion.expose_secret())
            .scopes(params.scopes().unwrap_or_default())
    }

    fn check_response(&self, response: TokenResponse) -> Result<TokenResponse, Error> {
        if response.scope().is_none() {
            return Err(Error::InvalidResponse(
                "the response does not say which scope was granted".into(),
            ));
        }
        Ok(response)
    }
}

fn signed_assertion() -> SignedAssertion {
    SignedAssertion {
        client: idp(ClientAuth::SecretBasic),
        assertion: Secret::from(ASSERTION.to_owned()),
    }
}

#[tokio::test]
async fn a_grant_written_by_the_user_goes_through_request_token_and_its_check_applies() {
    let logs = capture_logs();
    let grant = signed_assertion();
    // Grants of different types can sit behind one trait object.
    let any: &dyn Grant = &grant;

    let (oauth, captured) = recording(200, GOOD);
    let response = oauth
        .request_token(any, &TokenParams::new().scope("invoices.read"))
        .await
        .unwrap();
    assert_eq!(response.access_token().expose_secret(), TOKEN);
    assert_eq!(response.scope(), Some("invoices.read"));
    {
        let captured = captured.lock().unwrap();
        assert_eq!(captured.len(), 1);
        assert_eq!(captured[0].uri, "https://auth.example.com/oauth/token");
        assert_eq!(
            captured[0].headers[AUTHORIZATION],
            basic_credentials().as_str()
        );
        assert_eq!(
            pairs(&captured[0].form),
            [
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", ASSERTION),
                ("scope", "invoices.read"),
            ]
        );
    }

    // A well-formed response without `scope` passes the general parsing; the grant refuses it.
    let (oauth, captured) = recording(
        200,
        r#"{"access_token":"access-token-d0-not-log","token_type":"Bearer","expires_in":60}"#,
    );
    let err = oauth
        .request_token(any, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(message) if message.contains("scope")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        pairs(&captured.lock().unwrap()[0].form),
        [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", ASSERTION),
        ]
    );

    // The check runs on tokens only: the server's own error is reported as it is.
    let (oauth, _) = recording(400, r#"{"error":"invalid_grant"}"#);
    let refused = oauth
        .request_token(&grant, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, Error::TokenEndpoint { error, .. } if error == "invalid_grant"),
        "{refused:?}"
    );

    let shown = format!("{grant:?} {err} {err:?} {refused} {refused:?}");
    for secret in [SECRET, TOKEN, ASSERTION] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let logs = text(&logs);
    assert!(logs.contains("jwt-bearer"), "{logs}");
    for secret in [SECRET, TOKEN, ASSERTION] {
        assert!(!logs.contains(secret), "{logs}");
    }
}

#[tokio::test]
async fn a_busy_server_says_when_to_try_again() {
    let c = client(ClientAuth::SecretBasic);
    let two_seconds = Some(Duration::from_secs(2));
    let seconds = |s: &str| vec![(RETRY_AFTER, s.to_owned())];

    for status in [503, 429] {
        let (oauth, _) = answering(status, &seconds("2"), "busy, come back later");
        let err = oauth
            .request_token(&c, &TokenParams::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::UnexpectedStatus { status: s, retry_after, .. }
                    if s.as_u16() == status && *retry_after == two_seconds
            ),
            "{status}: {err:?}"
        );
        assert_eq!(err.retry_after(), two_seconds, "{status}");
        assert!(err.is_retryable(), "{status}");
    }

    // An OAuth error body keeps the delay too.
    let (oauth, _) = answering(
        429,
        &seconds("2"),
        r#"{"error":"slow_down","error_description":"too many requests"}"#,
    );
    let err = oauth
        .request_token(&c, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::TokenEndpoint {
                status: StatusCode::TOO_MANY_REQUESTS,
                error,
                retry_after,
                ..
            } if error == "slow_down" && *retry_after == two_seconds
        ),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), two_seconds);
    assert!(err.is_retryable());

    // An HTTP date counts from now. It has whole seconds and the clock moves on while the test
    // runs, so the delay is a little less than the two minutes asked for.
    for status in [503, 429] {
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let (oauth, _) = answering(status, &[(RETRY_AFTER, at)], "");
        let err = oauth
            .request_token(&c, &TokenParams::new())
            .await
            .unwrap_err();
        let waited = err.retry_after().unwrap();
        assert!(
            waited > Duration::from_secs(110) && waited <= Duration::from_secs(120),
            "{status}: {waited:?}"
        );
        assert!(err.is_retryable(), "{status}");
    }

    // Only 429 and 503 carry it: a 500 is retryable, but at no particular time.
    let (oauth, _) = answering(500, &seconds("2"), "");
    let err = oauth
        .request_token(&c, &TokenParams::new())
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), None);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn invalid_token_params_fail_before_anything_is_sent() {
    let (oauth, captured) = recording(200, GOOD);
    let params = TokenParams::new().param("grant_type", "password");
    let err = oauth
        .request_token(&client(ClientAuth::SecretBasic), &params)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(captured.lock().unwrap().is_empty());
}

#[tokio::test]
async fn transport_failures_are_retryable() {
    let transport = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Err::<Response<Full<Bytes>>, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"))
    });
    let err = OAuthClient::with_transport(transport)
        .request_token(&client(ClientAuth::SecretBasic), &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());

    let transport = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(TestBody::Failing))
    });
    let err = OAuthClient::with_transport(transport)
        .request_token(&client(ClientAuth::SecretBasic), &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
}

/// Bodies a well-behaved server would not send.
enum TestBody {
    /// Never yields a frame.
    Hanging,
    /// 16 KiB chunks forever; counts what was pulled.
    Endless(Arc<AtomicUsize>),
    /// Fails when read.
    Failing,
    /// Must not be read at all.
    Untouchable,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &*self {
            TestBody::Hanging => Poll::Pending,
            TestBody::Endless(pulled) => {
                static CHUNK: [u8; 16 * 1024] = [b' '; 16 * 1024];
                pulled.fetch_add(CHUNK.len(), Ordering::SeqCst);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
            }
            TestBody::Failing => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "reset",
            )))),
            TestBody::Untouchable => panic!("the body of an oversized response was read"),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn short_timeout_client() -> ClientCredentials {
    let config = ClientConfig::builder("https://auth.example.com/token", "c")
        .client_secret("s")
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    ClientCredentials::new(config)
}

#[tokio::test(start_paused = true)]
async fn a_transport_that_never_answers_times_out() {
    let transport = tower::service_fn(|_: Request<Full<Bytes>>| {
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    });
    let err = OAuthClient::with_transport(transport)
        .request_token(&short_timeout_client(), &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after: d, .. } if d == Duration::from_millis(1500)),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_after_the_headers_times_out() {
    let transport = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(TestBody::Hanging))
    });
    let started = tokio::time::Instant::now();
    let err = OAuthClient::with_transport(transport)
        .request_token(&short_timeout_client(), &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
}

#[tokio::test]
async fn an_endless_body_is_abandoned_at_the_limit() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let transport = tower::service_fn(move |_: Request<Full<Bytes>>| {
        let counter = counter.clone();
        async move { Ok::<_, Infallible>(Response::new(TestBody::Endless(counter))) }
    });
    let client = ClientCredentials::new(
        ClientConfig::builder("https://auth.example.com/token", "c")
            .client_secret("s")
            .max_response_bytes(100_000)
            .build()
            .unwrap(),
    );
    let err = OAuthClient::with_transport(transport)
        .request_token(&client, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ResponseTooLarge { limit: 100_000 }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    // Reading stopped at the first chunk that crossed the limit.
    assert!(
        pulled.load(Ordering::SeqCst) <= 100_000 + 16 * 1024,
        "{pulled:?}"
    );
}

#[tokio::test]
async fn an_oversized_content_length_is_refused_before_reading() {
    let transport = tower::service_fn(|_: Request<Full<Bytes>>| async {
        let response = Response::builder()
            .header(CONTENT_LENGTH, "10000000")
            .body(TestBody::Untouchable)
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let err = OAuthClient::with_transport(transport)
        .request_token(&client(ClientAuth::SecretBasic), &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ResponseTooLarge { limit: 65536 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_response_exactly_at_the_limit_is_accepted() {
    let body: &'static str =
        Box::leak(format!(r#"{{"access_token":"t"{}}}"#, " ".repeat(1000)).into_boxed_str());
    let (oauth, _) = recording(200, body);
    let client = ClientCredentials::new(
        ClientConfig::builder("https://auth.example.com/token", "c")
            .client_secret("s")
            .max_response_bytes(body.len())
            .build()
            .unwrap(),
    );
    oauth
        .request_token(&client, &TokenParams::new())
        .await
        .unwrap();
    let client = ClientCredentials::new(
        ClientConfig::builder("https://auth.example.com/token", "c")
            .client_secret("s")
            .max_response_bytes(body.len() - 1)
            .build()
            .unwrap(),
    );
    let err = oauth
        .request_token(&client, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResponseTooLarge { .. }), "{err:?}");
}
