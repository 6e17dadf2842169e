//! The test server over real loopback HTTP, driven by a plain hyper-util client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokenwarden_testkit::{ApiMode, AuthMethod, Failure, TestServer};

const FORM: &str = "application/x-www-form-urlencoded";

struct Harness {
    server: TestServer,
    http: Client<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Harness {
    async fn start() -> Self {
        let server = TestServer::builder()
            .client("alpha", "alpha-secret")
            .client("beta", "beta secret:with+specials")
            .start()
            .await
            .unwrap();
        Self::with(server)
    }

    fn with(server: TestServer) -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        Self { server, http }
    }

    async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let response = self.http.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A `client_secret_post` token request with extra form fields.
    fn post_request(&self, id: &str, secret: &str, extra: &str) -> Request<Full<Bytes>> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials")
            .append_pair("client_id", id)
            .append_pair("client_secret", secret);
        let mut form = form.finish();
        if !extra.is_empty() {
            form = format!("{form}&{extra}");
        }
        Request::post(self.server.token_endpoint())
            .header(CONTENT_TYPE, FORM)
            .body(Full::from(form))
            .unwrap()
    }

    /// A `client_secret_basic` token request, encoded as RFC 6749 §2.3.1 says.
    fn basic_request(&self, id: &str, secret: &str, form: &str) -> Request<Full<Bytes>> {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = BASE64.encode(format!("{}:{}", encode(id), encode(secret)));
        Request::post(self.server.token_endpoint())
            .header(CONTENT_TYPE, FORM)
            .header(AUTHORIZATION, format!("Basic {credentials}"))
            .body(Full::from(form.to_owned()))
            .unwrap()
    }

    async fn token(&self) -> String {
        let reply = self
            .send(self.post_request("alpha", "alpha-secret", ""))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }

    async fn call_api(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(self.server.api_url(path));
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Full::from(body.to_owned())).unwrap())
            .await
            .unwrap()
    }
}

fn assert_invalid_token(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.headers[WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\""
    );
}

#[tokio::test]
async fn client_secret_post_issues_a_bearer_token() {
    let h = Harness::start().await;
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", "scope=read+write"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CACHE_CONTROL], "no-store");
    assert_eq!(reply.headers[CONTENT_TYPE], "application/json");
    let json = reply.json();
    let token = json["access_token"].as_str().unwrap();
    assert!(token.starts_with("tk_"), "{token}");
    assert_eq!(token.len(), 3 + 32);
    assert!(token[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    assert_eq!(json["scope"], "read write");

    let record = h.server.last_token_request("alpha").unwrap();
    assert_eq!(record.auth_method, AuthMethod::Post);
    assert_eq!(
        record.form,
        [
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_id".to_owned(), "alpha".to_owned()),
            ("scope".to_owned(), "read write".to_owned()),
        ]
    );
    assert!(!format!("{record:?}").contains("alpha-secret"));
}

#[tokio::test]
async fn client_secret_basic_decodes_url_encoded_credentials() {
    let h = Harness::start().await;
    let reply = h
        .send(h.basic_request(
            "beta",
            "beta secret:with+specials",
            "grant_type=client_credentials&resource=https%3A%2F%2Fa.example&resource=https%3A%2F%2Fb.example",
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let json = reply.json();
    assert!(json.get("scope").is_none(), "no scope requested: {json}");

    let record = h.server.last_token_request("beta").unwrap();
    assert_eq!(record.auth_method, AuthMethod::Basic);
    assert_eq!(
        record.fields("resource").collect::<Vec<_>>(),
        ["https://a.example", "https://b.example"]
    );
    assert_eq!(h.server.token_requests("beta"), 1);
    assert_eq!(h.server.token_requests("alpha"), 0);
}

#[tokio::test]
async fn basic_credentials_that_are_not_url_encoded_do_not_authenticate() {
    let h = Harness::start().await;
    // "beta secret:with+specials" sent raw: the '+' decodes to a space, so the secret is wrong.
    let raw = BASE64.encode("beta:beta secret:with+specials");
    let request = Request::post(h.server.token_endpoint())
        .header(CONTENT_TYPE, FORM)
        .header(AUTHORIZATION, format!("Basic {raw}"))
        .body(Full::from("grant_type=client_credentials"))
        .unwrap();
    let reply = h.send(request).await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "invalid_client");
}

#[tokio::test]
async fn wrong_secret_or_unknown_client_is_invalid_client() {
    let h = Harness::start().await;
    for request in [
        h.post_request("alpha", "wrong", ""),
        h.post_request("nobody", "alpha-secret", ""),
        h.basic_request("alpha", "wrong", "grant_type=client_credentials"),
        Request::post(h.server.token_endpoint())
            .header(CONTENT_TYPE, FORM)
            .body(Full::from("grant_type=client_credentials&client_id=alpha"))
            .unwrap(),
    ] {
        let reply = h.send(request).await.unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.headers[CACHE_CONTROL], "no-store");
        assert_eq!(reply.json()["error"], "invalid_client");
    }
    assert_eq!(h.server.tokens_issued(), 0);
    assert_eq!(h.server.token_requests("alpha"), 3);
    assert_eq!(h.server.token_requests("nobody"), 1);
    assert_eq!(h.server.token_requests_total(), 4);
    assert_eq!(
        h.server.last_token_request("alpha").unwrap().auth_method,
        AuthMethod::None
    );
}

#[tokio::test]
async fn failed_basic_authentication_carries_a_basic_challenge() {
    let h = Harness::start().await;
    let reply = h
        .send(h.basic_request("alpha", "wrong", "grant_type=client_credentials"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(
        reply.headers[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
}

#[tokio::test]
async fn other_grants_are_unsupported() {
    let h = Harness::start().await;
    let request = Request::post(h.server.token_endpoint())
        .header(CONTENT_TYPE, FORM)
        .body(Full::from(
            "grant_type=authorization_code&code=x&client_id=alpha&client_secret=alpha-secret",
        ))
        .unwrap();
    let reply = h.send(request).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn malformed_requests_are_invalid_request() {
    let h = Harness::start().await;
    let both_methods = h.basic_request(
        "alpha",
        "alpha-secret",
        "grant_type=client_credentials&client_secret=alpha-secret",
    );
    let repeated_scope = h.post_request("alpha", "alpha-secret", "scope=a&scope=b");
    let no_grant = Request::post(h.server.token_endpoint())
        .header(CONTENT_TYPE, FORM)
        .body(Full::from("client_id=alpha&client_secret=alpha-secret"))
        .unwrap();
    let json_body = Request::post(h.server.token_endpoint())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::from("{}"))
        .unwrap();
    for request in [both_methods, repeated_scope, no_grant, json_body] {
        let reply = h.send(request).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.json()["error"], "invalid_request");
    }
    let get = Request::get(h.server.token_endpoint())
        .body(Full::default())
        .unwrap();
    assert_eq!(
        h.send(get).await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn counters_track_requests_tokens_and_api_calls() {
    let h = Harness::start().await;
    let first = h.token().await;
    let second = h.token().await;
    assert_ne!(first, second, "every token is new");
    h.send(h.post_request("alpha", "wrong", "")).await.unwrap();
    assert_eq!(h.server.token_requests("alpha"), 3);
    assert_eq!(h.server.token_requests_total(), 3);
    assert_eq!(h.server.tokens_issued(), 2);

    h.call_api(Method::GET, "/a", Some(&first), "").await;
    h.call_api(Method::GET, "/b", Some("tk_forged"), "").await;
    h.call_api(Method::GET, "/c", None, "").await;
    assert_eq!(h.server.api_requests(), 3);
    assert_eq!(h.server.api_rejections(), 2);
}

#[tokio::test]
async fn api_echoes_client_method_path_and_body() {
    let h = Harness::start().await;
    let token = h.token().await;
    let body = "{\"replay\":\"me\",\"unicode\":\"é\"}";
    let reply = h
        .call_api(Method::PUT, "/orders/7?x=1", Some(&token), body)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    assert_eq!(json["client"], "alpha");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/api/orders/7");
    assert_eq!(json["body"], body);
}

#[tokio::test]
async fn api_rejects_missing_and_unknown_tokens() {
    let h = Harness::start().await;
    let missing = h.call_api(Method::GET, "/x", None, "").await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers[WWW_AUTHENTICATE], "Bearer");
    assert_invalid_token(&h.call_api(Method::GET, "/x", Some("tk_unknown"), "").await);
}

#[tokio::test]
async fn revoke_all_rejects_earlier_tokens_but_not_later_ones() {
    let h = Harness::start().await;
    let old = h.token().await;
    assert_eq!(
        h.call_api(Method::GET, "/x", Some(&old), "").await.status,
        StatusCode::OK
    );
    h.server.revoke_all();
    assert_invalid_token(&h.call_api(Method::POST, "/x", Some(&old), "body").await);
    let new = h.token().await;
    assert_eq!(
        h.call_api(Method::GET, "/x", Some(&new), "").await.status,
        StatusCode::OK
    );
    assert_eq!(h.server.api_rejections(), 1);
}

#[tokio::test]
async fn zero_lifetime_issues_already_expired_tokens() {
    let server = TestServer::builder()
        .client("alpha", "alpha-secret")
        .token_lifetime(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let h = Harness::with(server);
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.json()["expires_in"], 0);
    let expired = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_invalid_token(&h.call_api(Method::GET, "/x", Some(&expired), "").await);

    h.server.set_token_lifetime(Duration::from_secs(60));
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.json()["expires_in"], 60);
    h.server.set_token_lifetime(Duration::from_millis(60_900));
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.json()["expires_in"], 60, "whole seconds only");
    let live = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        h.call_api(Method::GET, "/x", Some(&live), "").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn delay_holds_back_the_token_response() {
    let h = Harness::start().await;
    let delay = Duration::from_millis(150);
    h.server.set_delay(delay);
    let started = tokio::time::Instant::now();
    h.token().await;
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());

    h.server.set_delay(Duration::ZERO);
    let api_started = tokio::time::Instant::now();
    let token = h.token().await;
    h.call_api(Method::GET, "/x", Some(&token), "").await;
    // The API is never delayed; this only guards against the delay sticking around.
    assert!(api_started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn builder_delay_applies_from_the_first_request() {
    let delay = Duration::from_millis(100);
    let server = TestServer::builder()
        .client("alpha", "alpha-secret")
        .delay(delay)
        .start()
        .await
        .unwrap();
    let h = Harness::with(server);
    let started = tokio::time::Instant::now();
    h.token().await;
    assert!(started.elapsed() >= delay);
}

#[tokio::test]
async fn fail_next_status_answers_html_then_recovers() {
    let h = Harness::start().await;
    h.server.fail_next(Failure::Status(StatusCode::BAD_GATEWAY));
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(std::str::from_utf8(&reply.body).unwrap().contains("502"));
    assert_eq!(h.server.token_requests("alpha"), 1);
    assert_eq!(h.server.tokens_issued(), 0);
    h.token().await;
    assert_eq!(h.server.tokens_issued(), 1);
}

#[tokio::test]
async fn fail_next_oauth_error_answers_rfc6749_json() {
    let h = Harness::start().await;
    h.server.fail_next(Failure::OAuthError {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_scope".into(),
        description: Some("no such scope".into()),
    });
    h.server
        .fail_next(Failure::oauth("temporarily_unavailable"));
    let first = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::BAD_REQUEST);
    assert_eq!(first.headers[CACHE_CONTROL], "no-store");
    assert_eq!(
        first.json(),
        serde_json::json!({"error": "invalid_scope", "error_description": "no such scope"})
    );
    // Failures are consumed in order, one per request, even with bad credentials.
    let second = h.send(h.post_request("alpha", "wrong", "")).await.unwrap();
    assert_eq!(
        second.json(),
        serde_json::json!({"error": "temporarily_unavailable"})
    );
    h.token().await;
}

#[tokio::test]
async fn fail_next_raw_body_is_sent_verbatim() {
    let h = Harness::start().await;
    let raw = "{\"access_token\":\"evil\\r\\nX-Injected: 1\",\"token_type\":\"Bearer\"";
    h.server.fail_next(Failure::RawBody(raw.to_owned()));
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CONTENT_TYPE], "application/json");
    assert_eq!(reply.body, raw.as_bytes());
}

#[tokio::test]
async fn fail_next_large_body_is_streamed_without_content_length() {
    let h = Harness::start().await;
    let len = 3 * 1024 * 1024 + 17;
    h.server.fail_next(Failure::LargeBody(len));
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get(CONTENT_LENGTH).is_none());
    assert_eq!(reply.headers["transfer-encoding"], "chunked");
    assert_eq!(reply.body.len(), len);
}

#[tokio::test]
async fn fail_next_hang_never_answers_until_shutdown() {
    let h = Harness::start().await;
    h.server.fail_next(Failure::Hang);
    let pending = tokio::spawn(h.http.request(h.post_request("alpha", "alpha-secret", "")));
    h.server.wait_for_token_requests(1).await;
    assert!(!pending.is_finished());
    h.server.clone().shutdown().await;
    let result = pending.await.unwrap();
    assert!(
        result.is_err(),
        "a hung request gets no response: {result:?}"
    );
    assert_eq!(h.server.token_requests("alpha"), 1);
}

#[tokio::test]
async fn fail_next_hang_lets_the_client_give_up() {
    let h = Harness::start().await;
    h.server.fail_next(Failure::Hang);
    let request = h.http.request(h.post_request("alpha", "alpha-secret", ""));
    let gave_up = tokio::time::timeout(Duration::from_millis(100), request).await;
    assert!(gave_up.is_err());
    // The server keeps serving other connections.
    h.token().await;
}

#[tokio::test]
async fn fail_next_disconnect_closes_without_a_response() {
    let h = Harness::start().await;
    h.server.fail_next(Failure::Disconnect);
    let result = h.send(h.post_request("alpha", "alpha-secret", "")).await;
    assert!(result.is_err());
    assert_eq!(h.server.token_requests("alpha"), 1);
    h.token().await;
}

#[tokio::test]
async fn oversized_request_bodies_are_refused() {
    let h = Harness::start().await;
    let token = h.token().await;
    let big = "x".repeat(1024 * 1024 + 1);
    let reply = h
        .call_api(Method::POST, "/upload", Some(&token), &big)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let ok = h
        .call_api(Method::POST, "/upload", Some(&token), &big[1..])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["body"].as_str().unwrap().len(), 1024 * 1024);
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    let h = Harness::start().await;
    let request = Request::get(format!("{}/apix", h.server.base_url()))
        .body(Full::default())
        .unwrap();
    assert_eq!(h.send(request).await.unwrap().status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn urls_and_debug_are_as_documented() {
    let h = Harness::start().await;
    let base = h.server.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    assert_eq!(base, format!("http://{}", h.server.local_addr()));
    assert_eq!(h.server.token_endpoint(), format!("{base}/token"));
    assert_eq!(h.server.api_url("/v1/x"), format!("{base}/api/v1/x"));
    assert_eq!(
        h.server.redirect_url("http://127.0.0.1:1/a?b=c d&e=%"),
        format!("{base}/redirect?to=http%3A%2F%2F127.0.0.1%3A1%2Fa%3Fb%3Dc+d%26e%3D%25")
    );
    let debug = format!("{:?}", h.server);
    assert!(debug.contains(&base));
    let builder = format!(
        "{:?}",
        TestServer::builder().client("alpha", "alpha-secret")
    );
    assert!(builder.contains("alpha") && !builder.contains("alpha-secret"));
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let h = Harness::start().await;
    let token = h.token().await;
    let url = h.server.api_url("/x");
    let other = h.server.clone();
    drop(other);
    // Still served while a handle remains.
    assert_eq!(
        h.call_api(Method::GET, "/x", Some(&token), "").await.status,
        StatusCode::OK
    );
    let Harness { server, http } = h;
    server.shutdown().await;
    let request = Request::get(url).body(Full::default()).unwrap();
    assert!(http.request(request).await.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    let h = Harness::start().await;
    let token = h.token().await;
    let reply = h.call_api(Method::POST, "/x", Some(&token), "hi").await;
    assert_eq!(reply.json()["body"], "hi");
}

#[tokio::test(start_paused = true)]
async fn a_paused_clock_does_not_close_idle_connections() {
    // Tests of renewal logic often run with a paused, auto-advancing clock; the server must not
    // time out keep-alive connections in virtual time.
    let h = Harness::start().await;
    let token = h.token().await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let reply = h.call_api(Method::GET, "/x", Some(&token), "").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn absurd_lifetimes_are_capped_and_still_accepted() {
    let server = TestServer::builder()
        .client("alpha", "alpha-secret")
        .token_lifetime(Duration::MAX)
        .start()
        .await
        .unwrap();
    let h = Harness::with(server);
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    let expires_in = reply.json()["expires_in"].as_u64().unwrap();
    assert!(
        (3_000_000_000..4_000_000_000).contains(&expires_in),
        "about a century: {expires_in}"
    );
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        h.call_api(Method::GET, "/x", Some(&token), "").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn fail_next_retry_after_answers_html_with_a_retry_after_header() {
    let h = Harness::start().await;
    h.server.fail_next(Failure::RetryAfter {
        status: StatusCode::TOO_MANY_REQUESTS,
        seconds: 7,
    });
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers[RETRY_AFTER], "7");
    assert!(
        reply.headers[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(std::str::from_utf8(&reply.body).unwrap().contains("429"));
    assert_eq!(h.server.tokens_issued(), 0);
    // Consumed: the next request gets a token, without the header.
    let reply = h
        .send(h.post_request("alpha", "alpha-secret", ""))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get(RETRY_AFTER).is_none());
}

#[tokio::test]
async fn an_api_that_rejects_every_token_then_recovers() {
    let h = Harness::start().await;
    let token = h.token().await;
    h.server.set_api_mode(ApiMode::RejectAll);
    assert_invalid_token(&h.call_api(Method::GET, "/x", Some(&token), "").await);
    // Even a brand-new token, and even no token at all.
    let fresh = h.token().await;
    assert_invalid_token(&h.call_api(Method::POST, "/x", Some(&fresh), "b").await);
    assert_invalid_token(&h.call_api(Method::GET, "/x", None, "").await);
    assert_eq!(h.server.api_rejections(), 3);

    h.server.set_api_mode(ApiMode::Normal);
    for token in [&token, &fresh] {
        let reply = h.call_api(Method::GET, "/x", Some(token), "").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(h.server.api_requests(), 5);
    assert_eq!(h.server.api_rejections(), 3);
}

#[tokio::test]
async fn an_api_that_answers_insufficient_scope_with_401() {
    let h = Harness::start().await;
    let token = h.token().await;
    h.server.set_api_mode(ApiMode::InsufficientScope);
    let reply = h.call_api(Method::GET, "/admin", Some(&token), "").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.headers[WWW_AUTHENTICATE],
        "Bearer error=\"insufficient_scope\", scope=\"admin\""
    );
    assert_eq!(reply.json()["error"], "insufficient_scope");
    // Bad or missing tokens are judged as usual.
    assert_invalid_token(
        &h.call_api(Method::GET, "/admin", Some("tk_forged"), "")
            .await,
    );
    let missing = h.call_api(Method::GET, "/admin", None, "").await;
    assert_eq!(missing.headers[WWW_AUTHENTICATE], "Bearer");
    assert_eq!(h.server.api_rejections(), 3);

    h.server.set_api_mode(ApiMode::Normal);
    let reply = h.call_api(Method::GET, "/admin", Some(&token), "").await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn builder_api_mode_applies_from_the_first_request() {
    assert_eq!(ApiMode::default(), ApiMode::Normal);
    let server = TestServer::builder()
        .client("alpha", "alpha-secret")
        .api_mode(ApiMode::RejectAll)
        .start()
        .await
        .unwrap();
    let h = Harness::with(server);
    let token = h.token().await;
    assert_invalid_token(&h.call_api(Method::GET, "/x", Some(&token), "").await);
    assert_eq!(h.server.api_rejections(), 1);
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn extension_server() -> tokenwarden_testkit::TestServerBuilder {
    TestServer::builder()
        .client("alpha", "alpha-secret")
        .client("beta", "beta secret:with+specials")
        .extension_grant(JWT_BEARER, "assertion")
        .extension_grant("urn:example:grant", "ticket")
}

/// A `client_secret_post` request for `grant_type` with extra form fields.
fn extension_request(
    h: &Harness,
    grant_type: &str,
    extra: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", grant_type)
        .append_pair("client_id", "alpha")
        .append_pair("client_secret", "alpha-secret");
    for (key, value) in extra {
        form.append_pair(key, value);
    }
    Request::post(h.server.token_endpoint())
        .header(CONTENT_TYPE, FORM)
        .body(Full::from(form.finish()))
        .unwrap()
}

#[tokio::test]
async fn extension_grants_issue_tokens_like_client_credentials() {
    let server = extension_server()
        .token_lifetime(Duration::from_secs(120))
        .start()
        .await
        .unwrap();
    let h = Harness::with(server);
    let reply = h
        .send(extension_request(
            &h,
            JWT_BEARER,
            &[("assertion", "eyJ.a.b"), ("scope", "read")],
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.headers[CACHE_CONTROL], "no-store");
    let json = reply.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 120);
    assert_eq!(json["scope"], "read");
    let token = json["access_token"].as_str().unwrap().to_owned();
    let echo = h.call_api(Method::GET, "/x", Some(&token), "").await;
    assert_eq!(echo.status, StatusCode::OK);
    assert_eq!(echo.json()["client"], "alpha");

    let record = h.server.last_token_request("alpha").unwrap();
    assert_eq!(record.field("grant_type"), Some(JWT_BEARER));
    assert_eq!(record.field("assertion"), Some("eyJ.a.b"));
    assert_eq!(h.server.token_requests("alpha"), 1);
    assert_eq!(h.server.token_requests_total(), 1);
    assert_eq!(h.server.tokens_issued(), 1);

    // Any registered client, with Basic authentication too; no scope, no scope echoed.
    let reply = h
        .send(h.basic_request(
            "beta",
            "beta secret:with+specials",
            "grant_type=urn%3Aexample%3Agrant&ticket=t-1",
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(reply.json().get("scope").is_none());
    assert_eq!(h.server.tokens_issued(), 2);
    assert_eq!(
        h.server.last_token_request("beta").unwrap().field("ticket"),
        Some("t-1")
    );
}

#[tokio::test]
async fn extension_grants_without_their_parameter_are_invalid_request() {
    let h = Harness::with(extension_server().start().await.unwrap());
    for extra in [&[][..], &[("assertion", "")][..], &[("ticket", "t-1")][..]] {
        let reply = h
            .send(extension_request(&h, JWT_BEARER, extra))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.json()["error"], "invalid_request");
        let description = reply.json()["error_description"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(description.contains("assertion"), "{description}");
    }
    assert_eq!(h.server.token_requests("alpha"), 3);
    assert_eq!(h.server.tokens_issued(), 0);
}

#[tokio::test]
async fn extension_grants_still_require_client_authentication() {
    let h = Harness::with(extension_server().start().await.unwrap());
    let request = Request::post(h.server.token_endpoint())
        .header(CONTENT_TYPE, FORM)
        .body(Full::from(
            "grant_type=urn%3Aexample%3Agrant&ticket=t-1&client_id=alpha&client_secret=wrong",
        ))
        .unwrap();
    let reply = h.send(request).await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "invalid_client");
    assert_eq!(h.server.tokens_issued(), 0);
}

#[tokio::test]
async fn unregistered_grant_types_stay_unsupported_next_to_extensions() {
    let h = Harness::with(extension_server().start().await.unwrap());
    for grant_type in ["authorization_code", "urn:example:other"] {
        let reply = h
            .send(extension_request(
                &h,
                grant_type,
                &[("assertion", "a"), ("ticket", "t")],
            ))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.json()["error"], "unsupported_grant_type");
    }
    // Client credentials are unaffected by registered extensions.
    h.token().await;
}

#[tokio::test]
async fn redirect_answers_307_to_the_decoded_target() {
    let h = Harness::start().await;
    let target = format!("{}?q=a%20b&r=%2F", h.server.api_url("/orders"));
    for method in [Method::GET, Method::POST] {
        let request = Request::builder()
            .method(method.clone())
            .uri(h.server.redirect_url(&target))
            .body(Full::from("payload"))
            .unwrap();
        let reply = h.send(request).await.unwrap();
        assert_eq!(reply.status, StatusCode::TEMPORARY_REDIRECT, "{method}");
        assert_eq!(reply.headers[LOCATION], target.as_str());
    }
    // Following it by hand reaches the API.
    let token = h.token().await;
    let request = Request::post(target.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::from("payload"))
        .unwrap();
    let reply = h.send(request).await.unwrap();
    assert_eq!(reply.json()["path"], "/api/orders");
    assert_eq!(reply.json()["body"], "payload");
}

#[tokio::test]
async fn redirect_without_a_target_is_a_bad_request() {
    let h = Harness::start().await;
    let base = h.server.base_url();
    for uri in [
        format!("{base}/redirect"),
        format!("{base}/redirect?to="),
        format!("{base}/redirect?from=x"),
    ] {
        let request = Request::get(uri.as_str()).body(Full::default()).unwrap();
        assert_eq!(
            h.send(request).await.unwrap().status,
            StatusCode::BAD_REQUEST,
            "{uri}"
        );
    }
    let put = Request::put(h.server.redirect_url("http://127.0.0.1:1/"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        h.send(put).await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn requests_with_authorization_are_counted_on_every_path_but_the_token_endpoint() {
    let h = Harness::start().await;
    // Basic credentials at the token endpoint are expected there, not a leak.
    let token = h.token().await;
    h.send(h.basic_request("alpha", "alpha-secret", "grant_type=client_credentials"))
        .await
        .unwrap();
    assert_eq!(h.server.requests_with_authorization(), 0);

    h.call_api(Method::GET, "/x", None, "").await;
    assert_eq!(h.server.requests_with_authorization(), 0);
    h.call_api(Method::GET, "/x", Some(&token), "").await;
    h.call_api(Method::GET, "/x", Some("tk_forged"), "").await;
    assert_eq!(h.server.requests_with_authorization(), 2);

    for uri in [
        h.server.redirect_url("http://127.0.0.1:1/"),
        format!("{}/elsewhere", h.server.base_url()),
    ] {
        let request = Request::get(uri.as_str())
            .header(AUTHORIZATION, "Basic YTpi")
            .body(Full::default())
            .unwrap();
        h.send(request).await.unwrap();
    }
    assert_eq!(h.server.requests_with_authorization(), 4);
    assert!(format!("{:?}", h.server).contains("requests_with_authorization: 4"));
}

#[tokio::test]
async fn a_token_that_follows_a_redirect_to_another_origin_is_detected() {
    let h = Harness::start().await;
    let other = TestServer::builder().start().await.unwrap();
    let token = h.token().await;
    let hop = h.server.redirect_url(&other.api_url("/steal"));

    // A leaky follower: resends the request, credentials and all, to the new origin.
    let request = Request::get(hop.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    let reply = h.send(request).await.unwrap();
    let location = reply.headers[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(location, other.api_url("/steal"));
    let leaked = Request::get(location.as_str())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    h.send(leaked).await.unwrap();
    assert_eq!(other.requests_with_authorization(), 1);

    // A careful follower drops the credentials across origins: nothing more arrives.
    let careful = Request::get(location.as_str())
        .body(Full::default())
        .unwrap();
    h.send(careful).await.unwrap();
    assert_eq!(other.requests_with_authorization(), 1);
    assert_eq!(other.api_requests(), 2);
    // The redirecting server saw the token once, at the redirect itself.
    assert_eq!(h.server.requests_with_authorization(), 1);
}
