//! What a 401 does: services built per call still invalidate and replay (see also tests/layer.rs
//! for services dropped while their request is out); an API that rejects
//! every token costs a token request per back-off, not per request, and works again as soon as
//! it accepts the token; a 401 for a missing scope is the caller's business.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{CLIENT, http_client, manager, manager_builder, server};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokenwarden::{AccessTokenLayer, ManualClock, TokenManager};
use tokenwarden_testkit::{ApiMode, TestServer};
use tower::{ServiceBuilder, ServiceExt};

fn layer(manager: &TokenManager, server: &TestServer) -> AccessTokenLayer {
    AccessTokenLayer::builder(manager, CLIENT)
        .allow_origin(&server.base_url())
        .build()
        .unwrap()
}

fn get(server: &TestServer) -> Request<Full<Bytes>> {
    Request::get(server.api_url("/invoices"))
        .body(Full::default())
        .unwrap()
}

/// The README's pattern: a stack built for one call and used once with `oneshot`.
#[tokio::test]
async fn services_built_per_call_still_replace_a_revoked_token() {
    let server = server().await;
    let manager = manager(&server);
    let once = || {
        ServiceBuilder::new()
            .layer(layer(&manager, &server))
            .service(http_client())
    };
    assert_eq!(
        once().oneshot(get(&server)).await.unwrap().status(),
        StatusCode::OK
    );
    server.revoke_all();
    for _ in 0..20 {
        let response = once().oneshot(get(&server)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(server.token_requests(CLIENT), 2, "exactly one new token");
    assert_eq!(server.api_rejections(), 1, "one 401, replayed");
    assert_eq!(manager.metrics().replays, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_rejects_every_token_costs_a_few_token_requests_and_recovers() {
    let server = server().await;
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(layer(&manager, &server))
        .service(http_client());
    server.set_api_mode(ApiMode::RejectAll);
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (client, server, sent) = (client.clone(), server.clone(), sent.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    let response = client.clone().oneshot(get(&server)).await.unwrap();
                    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let requests = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(requests > 50, "the callers kept sending: {requests}");
    let token_requests = server.token_requests(CLIENT);
    assert!(
        token_requests <= 4,
        "{token_requests} token requests for {requests} requests to an API that rejects all"
    );

    // The API recovers: the token it rejected a moment ago is good again, and the back-off does
    // not stand in the way.
    server.set_api_mode(ApiMode::Normal);
    let response = client.clone().oneshot(get(&server)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.token_requests(CLIENT), token_requests);
}

#[tokio::test]
async fn after_the_back_off_a_rejection_renews_again() {
    let server = server().await;
    // The back-off is measured on the manager's clock.
    let clock = ManualClock::starting_now();
    let manager = manager_builder(&server)
        .clock(clock.clone())
        .rejection_backoff(Duration::from_secs(5))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(layer(&manager, &server))
        .service(http_client());
    server.set_api_mode(ApiMode::RejectAll);
    // The first token is rejected, its successor too (the replay), then the back-off starts.
    for _ in 0..3 {
        let response = client.clone().oneshot(get(&server)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.token_requests(CLIENT), 2);
    clock.advance(Duration::from_secs(6));
    server.revoke_all();
    server.set_api_mode(ApiMode::Normal);
    // Past the back-off, the revoked token's 401 renews and replays as usual.
    let response = client.clone().oneshot(get(&server)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.token_requests(CLIENT), 3);
}

#[tokio::test]
async fn a_401_for_a_missing_scope_neither_invalidates_nor_replays() {
    let server = server().await;
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(layer(&manager, &server))
        .service(http_client());
    server.set_api_mode(ApiMode::InsufficientScope);
    for _ in 0..5 {
        let response = client.clone().oneshot(get(&server)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }
    assert_eq!(server.token_requests(CLIENT), 1);
    assert_eq!(server.api_requests(), 5, "no replay");
    assert_eq!(manager.metrics().invalidations, 0);
    assert_eq!(manager.metrics().replays, 0);
}
