//! Every token acquisition ends: a hung token endpoint costs a caller the acquire timeout, not
//! more; `Retry-After` is honoured, capped, within it; configuration that cannot work is an
//! error at `build()`, and a token needed outside a Tokio runtime is an error, not a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use common::{CLIENT, SECRET, manager, manager_builder, server};
use http::StatusCode;
use tokenwarden::{ClientConfig, ClientCredentials, RetryPolicy, TokenManager};
use tokenwarden_testkit::Failure;

#[tokio::test]
async fn a_hung_token_endpoint_costs_a_caller_the_acquire_timeout() {
    let server = server().await;
    for _ in 0..5 {
        server.fail_next(Failure::Hang);
    }
    let config = ClientConfig::builder(&server.token_endpoint(), CLIENT)
        .client_secret(SECRET)
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let manager = TokenManager::builder()
        .client(CLIENT, ClientCredentials::new(config))
        .retry(RetryPolicy::new(5).base_delay(Duration::from_millis(5)))
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = manager.token(CLIENT).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_millis(3000),
        "waited {waited:?}"
    );
    assert!(error.is_retryable(), "{error:?}");
    assert!(
        server.token_requests(CLIENT) <= 3,
        "no attempt begun past the deadline"
    );
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let server = server().await;
    server.fail_next(Failure::RetryAfter {
        status: StatusCode::SERVICE_UNAVAILABLE,
        seconds: 1,
    });
    let manager = manager(&server);
    let started = Instant::now();
    manager.token(CLIENT).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried too early"
    );
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn a_long_retry_after_is_capped() {
    let server = server().await;
    server.fail_next(Failure::RetryAfter {
        status: StatusCode::TOO_MANY_REQUESTS,
        seconds: 3600,
    });
    let manager = manager_builder(&server)
        .retry(
            RetryPolicy::new(2)
                .base_delay(Duration::from_millis(5))
                .max_retry_after(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    manager.token(CLIENT).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_fails_at_once_and_says_when() {
    let server = server().await;
    server.fail_next(Failure::RetryAfter {
        status: StatusCode::SERVICE_UNAVAILABLE,
        seconds: 5,
    });
    let manager = manager_builder(&server)
        .acquire_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = manager.token(CLIENT).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no wait that cannot end in time"
    );
    assert_eq!(
        error.oauth_error().and_then(|e| e.retry_after()),
        Some(Duration::from_secs(5))
    );
    assert_eq!(server.token_requests(CLIENT), 1);
}

#[tokio::test]
async fn durations_that_cannot_work_are_refused_at_build() {
    let server = server().await;
    for builder in [
        manager_builder(&server).acquire_timeout(Duration::MAX),
        manager_builder(&server).acquire_timeout(Duration::ZERO),
        manager_builder(&server).lease(Duration::MAX, Duration::from_secs(1)),
        manager_builder(&server).lease(Duration::from_secs(1), Duration::MAX),
        manager_builder(&server).renew_before(Duration::MAX),
        manager_builder(&server).expiry_skew(Duration::MAX),
        manager_builder(&server).rejection_backoff(Duration::MAX),
        manager_builder(&server).shared_cache_timeout(Duration::MAX),
        manager_builder(&server).retry(RetryPolicy::default().max_delay(Duration::MAX)),
    ] {
        let error = builder.build().unwrap_err();
        assert!(matches!(error, tokenwarden::Error::Config(_)), "{error}");
    }
    let error = ClientConfig::builder(&server.token_endpoint(), CLIENT)
        .client_secret(SECRET)
        .timeout(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("timeout"), "{error}");
}

#[test]
fn a_token_needed_outside_a_runtime_is_an_error() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(server());
    let manager = manager(&server);
    // Polled on a thread with no Tokio runtime.
    let result = std::thread::spawn(move || {
        let mut call = std::pin::pin!(manager.token(CLIENT));
        match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result.map(|_| ()),
            Poll::Pending => panic!("nothing to wait for without a runtime"),
        }
    })
    .join()
    .expect("no panic");
    assert!(
        matches!(result, Err(tokenwarden::Error::NoRuntime)),
        "{result:?}"
    );
}
