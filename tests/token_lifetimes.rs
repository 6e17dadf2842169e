//! Token lifetimes as real servers hand them out: short tokens whose `exp` is truncated to
//! whole seconds, tokens that arrive already due (`expires_in: 0`), and a background renewal
//! whose runtime goes away before it runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CLIENT, SECRET, http_client, manager, manager_builder};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokenwarden::{AccessTokenLayer, ManualClock};
use tokenwarden_testkit::TestServer;
use tower::{ServiceBuilder, ServiceExt};

/// The test server sets `exp = floor(now) + expires_in` and rejects a token once
/// `exp <= floor(now)`, so a 2 s token can die after barely more than 1 s. Counted at the API,
/// since a replay would hide a rejection from the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_tokens_at_fifty_requests_a_second_are_never_rejected() {
    let server = TestServer::builder()
        .client(CLIENT, SECRET)
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, CLIENT)
                .allow_origin(&server.base_url())
                .build()
                .unwrap(),
        )
        .service(http_client());
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(10) {
        ticks.tick().await;
        let request = Request::get(server.api_url("/ticks"))
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        sent += 1;
    }
    assert!(sent >= 400, "only {sent} requests in 10 s");
    assert_eq!(server.api_rejections(), 0, "the API rejected a token");
    assert_eq!(manager.metrics().replays, 0);
    // About one token a second: renewed at half the lifetime.
    let tokens = server.token_requests(CLIENT);
    assert!((8..=12).contains(&tokens), "{tokens} token requests");
}

/// A token that arrives already due for renewal still answers every caller that waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_lifetime_token_answers_every_waiting_caller() {
    let server = TestServer::builder()
        .client(CLIENT, SECRET)
        .token_lifetime(Duration::ZERO)
        .delay(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let manager = manager(&server);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let (manager, barrier) = (manager.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                manager.token(CLIENT).await
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap());
    }
    assert!(tokens.iter().all(|t| t.secret() == tokens[0].secret()));
    assert_eq!(server.token_requests(CLIENT), 1);
}

/// A background renewal spawned on a runtime that shuts down before running it must not leave
/// the slot believing a renewal is under way: later renewals still happen in the background.
#[test]
fn a_renewal_dropped_with_its_runtime_does_not_stop_later_renewals() {
    let main = tokio::runtime::Runtime::new().unwrap();
    let server = main.block_on(common::server());
    let clock = ManualClock::starting_now();
    let manager = manager_builder(&server)
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = main.block_on(manager.token(CLIENT)).unwrap();
    clock.advance(Duration::from_secs(3545));

    // Due for renewal: the call spawns the renewal on its own runtime and returns the current
    // token at once; the runtime is gone before the renewal ever runs.
    let short_lived = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let during = short_lived.block_on(manager.token(CLIENT)).unwrap();
    assert_eq!(during.secret(), first.secret());
    drop(short_lived);
    assert_eq!(server.token_requests(CLIENT), 1, "that renewal never ran");

    // The next call starts a renewal again, and it runs.
    main.block_on(async {
        let again = manager.token(CLIENT).await.unwrap();
        assert_eq!(again.secret(), first.secret());
        tokio::time::timeout(Duration::from_secs(10), server.wait_for_token_requests(2))
            .await
            .expect("a second background renewal");
    });
    assert_eq!(manager.metrics().background_renewals, 2);
}
