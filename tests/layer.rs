//! The tower layer in a real hyper-util client stack against the test API over loopback:
//! tokens attached, 401s answered with one replay, bodies preserved, origins respected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{CLIENT, chain, http_client, manager, manager_builder, server};
use http::{Method, Request, StatusCode, header::AUTHORIZATION};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{AccessTokenLayer, AccessTokenService, TokenManager, TokenParams};
use tokenwarden_testkit::TestServer;
use tower::{Service, ServiceBuilder, ServiceExt};

fn layer(manager: &TokenManager, server: &TestServer) -> AccessTokenLayer {
    AccessTokenLayer::builder(manager, CLIENT)
        .allow_origin(&server.base_url())
        .build()
        .unwrap()
}

/// The layer over a hyper-util client: the stack a service would build.
fn stack(manager: &TokenManager, server: &TestServer) -> AccessTokenService<common::HttpClient> {
    ServiceBuilder::new()
        .layer(layer(manager, server))
        .service(http_client())
}

/// One request, so a token is cached before the story of a test begins.
async fn warm_up<S, B>(client: &S, server: &TestServer)
where
    S: Service<Request<B>, Response = http::Response<hyper::body::Incoming>> + Clone,
    S::Error: std::fmt::Debug,
    B: From<Bytes>,
{
    let warm = Request::get(server.api_url("/warm"))
        .body(B::from(Bytes::new()))
        .unwrap();
    let response = client.clone().oneshot(warm).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

async fn body_json(response: http::Response<hyper::body::Incoming>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn requests_carry_the_token_and_share_it() {
    let server = server().await;
    let manager = manager(&server);
    let client = stack(&manager, &server);
    for _ in 0..20 {
        let request = Request::get(server.api_url("/invoices"))
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_json(response).await["client"], CLIENT);
    }
    assert_eq!(server.token_requests(CLIENT), 1);
    assert_eq!(server.api_rejections(), 0);
}

/// With the system clock on a multi-thread runtime (the layer's hot path reads the coarse
/// clock), the token is renewed ahead of expiry in the background as under a manual clock, and
/// no request meets a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_ahead_of_expiry_happens_on_real_time_too() {
    let server = server().await;
    // 6 s tokens: renewed at half their lifetime (3 s) and, with a 1 s expiry skew, sent until
    // 5 s. The test server truncates `exp` to whole seconds, so a token dies between 5 s and 6 s
    // after it was issued: never while this client still sends it. (With the default 5 s skew,
    // capped by the 3 s renew-ahead window, a token this short would stop being sent the moment
    // it is due, leaving no time for a background renewal.)
    server.set_token_lifetime(Duration::from_secs(6));
    let manager = manager_builder(&server)
        .expiry_skew(Duration::from_secs(1))
        .build()
        .unwrap();
    let client = stack(&manager, &server);
    let send = || {
        let request = Request::get(server.api_url("/invoices"))
            .body(Full::default())
            .unwrap();
        client.clone().oneshot(request)
    };
    // The token is requested between these two instants.
    let started = tokio::time::Instant::now();
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    let got_token = tokio::time::Instant::now();
    // Fresh until at least `started + 3 s`: a second of margin.
    while started.elapsed() < Duration::from_millis(2_000) {
        assert_eq!(send().await.unwrap().status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.token_requests(CLIENT),
        1,
        "not renewed before it was due"
    );
    assert_eq!(manager.metrics().background_renewals, 0);
    // Surely past the renewal point (3 s after the request), and about 1.5 s before the token
    // stops being sent (5 s).
    tokio::time::sleep_until(got_token + Duration::from_millis(3_400)).await;
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(manager.metrics().background_renewals, 1);
    server.wait_for_token_requests(2).await;
    assert_eq!(server.api_rejections(), 0);
    assert_eq!(manager.metrics().replays, 0);
}

#[tokio::test]
async fn composes_with_tower_http_layers() {
    let server = server().await;
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(10),
        ))
        // tower-http's timeout answers with a default body, so give the response a boxed one.
        .map_response(|r: http::Response<hyper::body::Incoming>| r.map(BodyExt::boxed))
        .layer(layer(&manager, &server))
        .service(http_client());
    let request = Request::get(server.api_url("/x"))
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_post_body_replayed() {
    let server = server().await;
    let manager = manager(&server);
    let client = stack(&manager, &server);
    warm_up(&client, &server).await;
    server.revoke_all();

    let request = Request::builder()
        .method(Method::POST)
        .uri(server.api_url("/invoices"))
        .header("content-type", "application/json")
        .header("x-request-id", "42")
        .body(Full::new(Bytes::from_static(
            br#"{"amount":1200,"currency":"EUR"}"#,
        )))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = body_json(response).await;
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/api/invoices");
    assert_eq!(echoed["body"], r#"{"amount":1200,"currency":"EUR"}"#);
    assert_eq!(server.api_rejections(), 1);
    assert_eq!(server.token_requests(CLIENT), 2);
    assert_eq!(manager.metrics().replays, 1);
}

/// The response future keeps what a 401 needs (the layer's configuration and a service to
/// replay with), so dropping the service while a request is out changes nothing for it.
#[tokio::test]
async fn a_401_after_the_service_is_gone_is_still_answered_with_a_replay() {
    let server = server().await;
    let manager = manager(&server);
    let mut client = stack(&manager, &server);
    warm_up(&client, &server).await;
    server.revoke_all();

    let request = Request::get(server.api_url("/invoices"))
        .body(Full::default())
        .unwrap();
    let response = client.ready().await.unwrap().call(request);
    // No service built from the layer is left when the 401 arrives.
    drop(client);
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the replay succeeded");
    assert_eq!(body_json(response).await["path"], "/api/invoices");
    assert_eq!(
        server.token_requests(CLIENT),
        2,
        "the warm-up's token, and exactly one renewal"
    );
    assert_eq!(server.api_rejections(), 1);
    assert_eq!(manager.metrics().invalidations, 1);
    assert_eq!(manager.metrics().replays, 1);
}

/// An inner service that counts its clones.
#[derive(Debug)]
struct CountsClones<S> {
    inner: S,
    clones: Arc<AtomicUsize>,
}

impl<S: Clone> Clone for CountsClones<S> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::Relaxed);
        CountsClones {
            inner: self.inner.clone(),
            clones: self.clones.clone(),
        }
    }
}

impl<S: Service<R>, R> Service<R> for CountsClones<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.inner.call(request)
    }
}

/// Replays need a service to send with, but no request pays for one: the layer keeps one clone
/// of the inner service, made the first time a request is kept, and clones that only for a
/// replay.
#[tokio::test]
async fn the_inner_service_is_cloned_once_per_replay_not_per_request() {
    let server = server().await;
    let manager = manager(&server);
    let clones = Arc::new(AtomicUsize::new(0));
    let inner = CountsClones {
        inner: http_client(),
        clones: clones.clone(),
    };
    let mut service = ServiceBuilder::new()
        .layer(layer(&manager, &server))
        .service(inner);
    assert_eq!(
        clones.load(Ordering::Relaxed),
        0,
        "applying the layer clones nothing"
    );
    for round in 0..2 {
        for i in 0..50 {
            // POST with a body, buffered for the replay, and GET without one.
            let request = match i % 2 {
                0 => Request::post(server.api_url("/invoices"))
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap(),
                _ => Request::get(server.api_url("/invoices"))
                    .body(Full::default())
                    .unwrap(),
            };
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        if round == 0 {
            server.revoke_all();
        }
    }
    assert_eq!(manager.metrics().replays, 1);
    // A POST waits for its body before it is sent (a slow path), so the ready service goes
    // into its future and the layer keeps a clone to make ready for the next request; a GET
    // with a cached token (the hot path) clones nothing. Then one clone for the replay.
    assert_eq!(
        clones.load(Ordering::Relaxed),
        1 + 50 + 1,
        "the clone kept for replays, one per POST, and one for the replay"
    );
}

/// Two services from one layer: when one of them (and every clone of it) is gone, its requests
/// still out are replayed all the same (their futures keep a service to replay with), and the
/// token that was refused is dropped from the cache for everyone else: one renewal in all.
#[tokio::test]
async fn a_401_after_its_service_is_gone_is_replayed_and_the_token_invalidated_for_all() {
    let server = server().await;
    let manager = manager(&server);
    let layer = layer(&manager, &server);
    let mut gone = ServiceBuilder::new()
        .layer(layer.clone())
        .service(http_client());
    let staying = ServiceBuilder::new().layer(layer).service(http_client());
    warm_up(&staying, &server).await;
    server.revoke_all();

    let request = Request::get(server.api_url("/invoices"))
        .body(Full::default())
        .unwrap();
    let response = gone.ready().await.unwrap().call(request);
    drop(gone);
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the replay succeeded");
    assert_eq!(manager.metrics().replays, 1);
    assert_eq!(manager.metrics().invalidations, 1);
    assert_eq!(server.token_requests(CLIENT), 2);

    // The other service uses the renewed token at once, with no 401 of its own.
    let request = Request::get(server.api_url("/invoices"))
        .body(Full::default())
        .unwrap();
    let response = staying.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.token_requests(CLIENT), 2);
    assert_eq!(server.api_rejections(), 1);
}

#[tokio::test]
async fn burst_of_1000_unauthorized_responses_costs_one_renewal() {
    let server = server().await;
    let manager = manager(&server);
    let client = stack(&manager, &server);
    warm_up(&client, &server).await;
    server.revoke_all();

    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (client, barrier, url) = (
                client.clone(),
                barrier.clone(),
                server.api_url(&format!("/item/{i}")),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let request = Request::get(url).body(Full::default()).unwrap();
                client.oneshot(request).await.map(|r| r.status())
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000, "every request succeeds on its replay");
    assert_eq!(
        server.token_requests(CLIENT),
        2,
        "one token for the warm-up, one renewal for the burst"
    );
    assert_eq!(server.api_rejections(), 1000);
    assert_eq!(manager.metrics().invalidations, 1);
    assert_eq!(manager.metrics().replays, 1000);
}

#[tokio::test]
async fn a_second_401_goes_back_to_the_caller() {
    // Tokens that are expired when issued: the replay gets a 401 too.
    let server = TestServer::builder()
        .client(CLIENT, common::SECRET)
        .token_lifetime(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let manager = manager(&server);
    let client = stack(&manager, &server);
    let request = Request::get(server.api_url("/x"))
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        server.api_requests(),
        2,
        "sent once, replayed once, not more"
    );
    assert_eq!(server.token_requests(CLIENT), 2);
    assert_eq!(manager.metrics().replays, 1);
}

/// A request body a user might stream: chunks, with or without a known length.
struct Chunks {
    chunks: VecDeque<Bytes>,
    known_length: bool,
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Self {
        Chunks {
            chunks: VecDeque::from([bytes]),
            known_length: true,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.known_length {
            SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

#[tokio::test]
async fn a_streaming_body_is_sent_once_and_its_401_returned() {
    let server = server().await;
    let manager = manager(&server);
    let http = Client::builder(TokioExecutor::new()).build_http::<Chunks>();
    let client = ServiceBuilder::new()
        .layer(layer(&manager, &server))
        .service(http);
    warm_up(&client, &server).await;
    server.revoke_all();

    let stream = Chunks {
        chunks: VecDeque::from([
            Bytes::from_static(b"part one, "),
            Bytes::from_static(b"part two"),
        ]),
        known_length: false,
    };
    let request = Request::post(server.api_url("/upload"))
        .body(stream)
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .headers()
            .contains_key(http::header::WWW_AUTHENTICATE),
        "the server's 401, unchanged"
    );
    assert_eq!(
        server.api_requests(),
        2,
        "no replay of a body that was not buffered"
    );
    assert_eq!(manager.metrics().replays, 0);

    // The rejected token was invalidated all the same: the next request gets a new one.
    let next = Request::post(server.api_url("/upload"))
        .body(Chunks::from(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(client.oneshot(next).await.unwrap().status(), StatusCode::OK);
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn a_buffered_body_over_the_replay_limit_is_not_replayed() {
    let server = server().await;
    let manager = manager(&server);
    let layer = AccessTokenLayer::builder(&manager, CLIENT)
        .allow_origin(&server.base_url())
        .max_replay_body_bytes(16)
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer).service(http_client());
    warm_up(&client, &server).await;
    server.revoke_all();
    let request = Request::post(server.api_url("/big"))
        .body(Full::new(Bytes::from(vec![b'a'; 17])))
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(manager.metrics().replays, 0);
}

#[tokio::test]
async fn tokens_go_only_to_allowed_origins() {
    let server = server().await;
    let elsewhere = server_elsewhere().await;
    let manager = manager(&server);
    let client = stack(&manager, &server);
    let request = Request::get(elsewhere.api_url("/steal"))
        .body(Full::default())
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "no token was attached"
    );
    assert_eq!(
        server.token_requests(CLIENT),
        0,
        "no token was even fetched"
    );
    assert_eq!(manager.metrics().replays, 0);

    // A request that brings its own Authorization keeps it.
    let own = Request::get(server.api_url("/own"))
        .header(AUTHORIZATION, "Bearer not-from-tokenwarden")
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(own).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(server.token_requests(CLIENT), 0);
}

async fn server_elsewhere() -> TestServer {
    TestServer::builder()
        .client("other", "other")
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_layer_without_allowed_origins_is_refused() {
    let server = server().await;
    let manager = manager(&server);
    let error = AccessTokenLayer::builder(&manager, CLIENT)
        .build()
        .unwrap_err();
    assert!(matches!(error, tokenwarden::Error::Config(_)), "{error}");
    assert!(
        AccessTokenLayer::builder(&manager, CLIENT)
            .allow_any_origin()
            .build()
            .is_ok()
    );
    let unknown = AccessTokenLayer::builder(&manager, "nope")
        .allow_any_origin()
        .build();
    assert!(matches!(
        unknown,
        Err(tokenwarden::Error::UnknownClient { .. })
    ));
}

#[tokio::test]
async fn per_request_parameters_ride_in_the_extensions() {
    let server = server().await;
    let manager = manager(&server);
    let mut client = ServiceBuilder::new()
        .layer(layer(&manager, &server))
        .service(http_client());
    let mut request = Request::get(server.api_url("/admin"))
        .body(Full::default())
        .unwrap();
    request
        .extensions_mut()
        .insert(TokenParams::new().scope("invoices.admin"));
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        server.last_token_request(CLIENT).unwrap().field("scope"),
        Some("invoices.admin")
    );

    let mut forced = Request::get(server.api_url("/again"))
        .body(Full::default())
        .unwrap();
    forced
        .extensions_mut()
        .insert(TokenParams::new().force_renewal());
    let response = client.ready().await.unwrap().call(forced).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn a_token_endpoint_failure_is_an_error_of_the_service() {
    let server = server().await;
    server.fail_next(tokenwarden_testkit::Failure::oauth("unauthorized_client"));
    let manager = manager(&server);
    let client = stack(&manager, &server);
    let request = Request::get(server.api_url("/x"))
        .body(Full::default())
        .unwrap();
    let error = client.oneshot(request).await.unwrap_err();
    let error = error
        .downcast_ref::<tokenwarden::Error>()
        .expect("a tokenwarden error");
    assert!(
        matches!(
            error.oauth_error(),
            Some(tokenwarden::oauth::Error::TokenEndpoint { error, .. }) if error == "unauthorized_client"
        ),
        "{error:?}"
    );
    assert!(
        chain(error).contains("unauthorized_client"),
        "{}",
        chain(error)
    );
    assert_eq!(server.api_requests(), 0, "nothing is sent without a token");
}

#[tokio::test]
async fn a_request_with_its_own_authorization_keeps_it_when_a_token_is_cached() {
    let server = server().await;
    let manager = manager(&server);
    let client = stack(&manager, &server);
    warm_up(&client, &server).await;
    let own = Request::get(server.api_url("/own"))
        .header(AUTHORIZATION, "Bearer chosen-by-the-caller")
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(own).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the caller's header was sent, not ours"
    );
    assert_eq!(
        manager.metrics().replays,
        0,
        "and its 401 is the caller's business"
    );
    assert_eq!(manager.metrics().invalidations, 0);
}
