//! The token manager against a real token endpoint over loopback: caching, expiry, renewal,
//! per-request parameters, single-flight and errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CLIENT, chain, manager, manager_builder, server};
use tokenwarden::{ClientConfig, ClientCredentials, ManualClock, RetryPolicy, TokenParams};
use tokenwarden_testkit::Failure;

#[tokio::test]
async fn hundred_calls_make_one_token_request() {
    let server = server().await;
    let manager = manager(&server);
    let first = manager.token(CLIENT).await.unwrap();
    for _ in 0..99 {
        let again = manager.token(CLIENT).await.unwrap();
        assert_eq!(again.secret(), first.secret());
    }
    assert_eq!(server.token_requests(CLIENT), 1);
    assert_eq!(manager.metrics().token_requests, 1);
}

#[tokio::test]
async fn an_expired_token_is_replaced() {
    let server = server().await;
    let clock = ManualClock::starting_now();
    let manager = manager_builder(&server)
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = manager.token(CLIENT).await.unwrap();
    // 3600 s token: renewed from 3540 s (expiry - 60 s), sent until 3595 s (expiry - 5 s).
    clock.advance(Duration::from_secs(3594));
    // Past renew_at the old token is still handed out while one renewal runs.
    let during_renewal = manager.token(CLIENT).await.unwrap();
    assert_eq!(during_renewal.secret(), first.secret());
    server.wait_for_token_requests(2).await;
    clock.advance(Duration::from_secs(7));
    // Now the old one is expired: whatever the background renewal did, this is a new token.
    let second = manager.token(CLIENT).await.unwrap();
    assert_ne!(second.secret(), first.secret());
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn expiry_without_renew_ahead_window_fetches_on_the_request_path() {
    let server = server().await;
    let clock = ManualClock::starting_now();
    let manager = manager_builder(&server)
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = manager.token(CLIENT).await.unwrap();
    // Nobody asked during the renew-ahead window; 5 s (the expiry skew) before its expiry the
    // token is no longer sent, so this caller waits for a new one.
    clock.advance(Duration::from_secs(3595));
    let second = manager.token(CLIENT).await.unwrap();
    assert_ne!(second.secret(), first.secret());
    assert_eq!(server.token_requests(CLIENT), 2);
    assert_eq!(manager.metrics().background_renewals, 0);
}

#[tokio::test]
async fn renewal_ahead_of_expiry_happens_in_the_background() {
    let server = server().await;
    let clock = ManualClock::starting_now();
    let manager = manager_builder(&server)
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = manager.token(CLIENT).await.unwrap();
    // 3600 s token, 60 s buffer: fresh until 3540 s.
    clock.advance(Duration::from_secs(3539));
    assert_eq!(
        manager.token(CLIENT).await.unwrap().secret(),
        first.secret()
    );
    assert_eq!(server.token_requests(CLIENT), 1);
    clock.advance(Duration::from_secs(2));
    for _ in 0..50 {
        assert_eq!(
            manager.token(CLIENT).await.unwrap().secret(),
            first.secret()
        );
    }
    server.wait_for_token_requests(2).await;
    let renewed = loop {
        let t = manager.token(CLIENT).await.unwrap();
        if t.secret() != first.secret() {
            break t;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        server.token_requests(CLIENT),
        2,
        "one background renewal for 50 callers"
    );
    assert_eq!(manager.metrics().background_renewals, 1);
    assert!(renewed.expires_at().unwrap() > first.expires_at().unwrap());
}

#[tokio::test]
async fn force_renewal_fetches_a_new_token() {
    let server = server().await;
    let manager = manager(&server);
    let first = manager.token(CLIENT).await.unwrap();
    let forced = manager
        .token_with(CLIENT, &TokenParams::new().force_renewal())
        .await
        .unwrap();
    assert_ne!(forced.secret(), first.secret());
    // The forced token replaces the cached one.
    assert_eq!(
        manager.token(CLIENT).await.unwrap().secret(),
        forced.secret()
    );
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn concurrent_forced_renewals_share_one_request() {
    let server = server().await;
    server.set_delay(Duration::from_millis(100));
    let manager = manager(&server);
    manager.token(CLIENT).await.unwrap();
    let forced = TokenParams::new().force_renewal();
    let calls = (0..20).map(|_| manager.token_with(CLIENT, &forced));
    let tokens = futures_util::future::join_all(calls).await;
    let first = tokens[0].as_ref().unwrap().secret().clone();
    assert!(
        tokens
            .iter()
            .all(|t| t.as_ref().unwrap().secret() == &first)
    );
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn per_request_scope_gets_its_own_cache_entry() {
    let server = server().await;
    let manager = manager(&server);
    let default = manager.token(CLIENT).await.unwrap();
    let admin = TokenParams::new().scope("invoices.admin");
    let scoped = manager.token_with(CLIENT, &admin).await.unwrap();
    assert_ne!(scoped.secret(), default.secret());
    let request = server.last_token_request(CLIENT).unwrap();
    assert_eq!(request.field("scope"), Some("invoices.admin"));
    // Each is cached under its own key.
    assert_eq!(
        manager.token_with(CLIENT, &admin).await.unwrap().secret(),
        scoped.secret()
    );
    assert_eq!(
        manager.token(CLIENT).await.unwrap().secret(),
        default.secret()
    );
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn resource_audience_and_extra_parameters_reach_the_token_endpoint() {
    let server = server().await;
    let manager = manager(&server);
    let params = TokenParams::new()
        .resource("https://api.example.com/")
        .audience("api")
        .param("tenant", "acme");
    manager.token_with(CLIENT, &params).await.unwrap();
    let request = server.last_token_request(CLIENT).unwrap();
    assert_eq!(request.field("resource"), Some("https://api.example.com/"));
    assert_eq!(request.field("audience"), Some("api"));
    assert_eq!(request.field("tenant"), Some("acme"));
    assert_eq!(request.field("grant_type"), Some("client_credentials"));
}

#[tokio::test]
async fn cold_stampede_of_1000_callers_makes_one_token_request() {
    let server = server().await;
    server.set_delay(Duration::from_millis(200));
    let manager = manager(&server);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (manager, barrier) = (manager.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                manager.token(CLIENT).await
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap().unwrap());
    }
    assert!(tokens.iter().all(|t| t.secret() == tokens[0].secret()));
    assert_eq!(server.token_requests(CLIENT), 1);
}

#[tokio::test]
async fn a_failed_request_answers_its_waiters_and_is_not_cached() {
    let server = server().await;
    server.set_delay(Duration::from_millis(100));
    server.fail_next(Failure::oauth("invalid_scope"));
    let manager = manager(&server);
    let calls = (0..50).map(|_| manager.token(CLIENT));
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results.iter().all(|r| r.is_err()),
        "everyone waiting shares the failure"
    );
    assert_eq!(server.token_requests(CLIENT), 1);
    // The failure is not cached: the next call asks again and succeeds.
    manager.token(CLIENT).await.unwrap();
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn server_errors_are_retried_and_oauth_errors_are_not() {
    let server = server().await;
    let manager = manager(&server);
    server.fail_next(Failure::Status(http::StatusCode::SERVICE_UNAVAILABLE));
    server.fail_next(Failure::Status(http::StatusCode::BAD_GATEWAY));
    manager.token(CLIENT).await.unwrap();
    assert_eq!(server.token_requests(CLIENT), 3);

    let other = server_with_oauth_error().await;
    let manager = manager_builder(&other)
        .retry(RetryPolicy::new(5))
        .build()
        .unwrap();
    let error = manager.token(CLIENT).await.unwrap_err();
    assert_eq!(
        other.token_requests(CLIENT),
        1,
        "a 4xx OAuth error is final"
    );
    assert!(!error.is_retryable());
}

async fn server_with_oauth_error() -> tokenwarden_testkit::TestServer {
    let server = server().await;
    server.fail_next(Failure::oauth("invalid_client"));
    server
}

#[tokio::test]
async fn an_oauth_error_body_becomes_a_typed_error() {
    let server = server().await;
    server.fail_next(Failure::OAuthError {
        status: http::StatusCode::BAD_REQUEST,
        error: "invalid_scope".into(),
        description: Some("scope invoices.admin is not allowed".into()),
    });
    let manager = manager(&server);
    let error = manager.token(CLIENT).await.unwrap_err();
    assert_eq!(error.client(), Some(CLIENT));
    match error.oauth_error() {
        Some(tokenwarden::oauth::Error::TokenEndpoint {
            status,
            error,
            description,
            retry_after,
            ..
        }) => {
            assert_eq!(*status, http::StatusCode::BAD_REQUEST);
            assert_eq!(error, "invalid_scope");
            assert_eq!(
                description.as_deref(),
                Some("scope invoices.admin is not allowed")
            );
            assert_eq!(*retry_after, None);
        }
        other => panic!("expected a token endpoint error, got {other:?}"),
    }
    // The message says what failed, its source why: together they name both.
    let shown = error.to_string();
    assert!(shown.contains("billing"), "{shown}");
    assert!(!shown.contains("invalid_scope"), "not repeated: {shown}");
    let chain = chain(&error);
    assert!(
        chain.contains("billing") && chain.contains("invalid_scope"),
        "{chain}"
    );
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let server = server().await;
    let manager = tokenwarden::TokenManager::builder()
        .client(
            CLIENT,
            ClientCredentials::new(
                ClientConfig::builder(&server.token_endpoint(), CLIENT)
                    .client_secret("wrong")
                    .build()
                    .unwrap(),
            ),
        )
        .build()
        .unwrap();
    let error = manager.token(CLIENT).await.unwrap_err();
    assert!(
        matches!(
            error.oauth_error(),
            Some(tokenwarden::oauth::Error::TokenEndpoint { error, .. }) if error == "invalid_client"
        ),
        "{error:?}"
    );
    assert!(
        chain(&error).contains("invalid_client"),
        "{}",
        chain(&error)
    );
    assert!(
        !format!("{error:?}").contains("wrong"),
        "the secret is never printed"
    );
}

#[tokio::test]
async fn client_secret_post_is_used_when_configured() {
    let server = server().await;
    let manager = tokenwarden::TokenManager::builder()
        .client(
            CLIENT,
            ClientCredentials::new(
                ClientConfig::builder(&server.token_endpoint(), CLIENT)
                    .client_secret(common::SECRET)
                    .auth(tokenwarden::ClientAuth::SecretPost)
                    .build()
                    .unwrap(),
            ),
        )
        .build()
        .unwrap();
    manager.token(CLIENT).await.unwrap();
    let request = server.last_token_request(CLIENT).unwrap();
    assert_eq!(request.auth_method, tokenwarden_testkit::AuthMethod::Post);
    assert_eq!(request.field("client_id"), Some(CLIENT));
}

#[tokio::test]
async fn an_unknown_client_is_an_error() {
    let server = server().await;
    let manager = manager(&server);
    let error = manager.token("nope").await.unwrap_err();
    assert!(matches!(error, tokenwarden::Error::UnknownClient { .. }));
}

#[test]
fn cache_key_text_is_stable_across_versions() {
    // Replicas of different versions share Redis entries only while this text stays the same.
    let idp = ClientConfig::builder("https://idp.example.com/oauth2/token", "billing-svc")
        .client_secret("s")
        .build()
        .unwrap();
    let client = ClientCredentials::new(idp)
        .scope("invoices.read")
        .audience("ledger");
    let manager = tokenwarden::TokenManager::builder()
        .client(CLIENT, client)
        .build()
        .unwrap();
    let default = manager.cache_key(CLIENT, &TokenParams::new()).unwrap();
    assert_eq!(
        default.as_str(),
        "tokenwarden:v1:billing;scope=invoices.read;x.audience=ledger;x.client_id=billing-svc;\
         x.token_endpoint=https%3A%2F%2Fidp.example.com%2Foauth2%2Ftoken"
    );
    let params = TokenParams::new()
        .scope("b a")
        .resource("https://api.example.com/")
        .param("tenant", "acme");
    assert_eq!(
        manager.cache_key(CLIENT, &params).unwrap().as_str(),
        "tokenwarden:v1:billing;resource=https%3A%2F%2Fapi.example.com%2F;scope=a,b;x.audience=ledger;\
         x.client_id=billing-svc;x.param.tenant=acme;x.token_endpoint=https%3A%2F%2Fidp.example.com%2Foauth2%2Ftoken"
    );
    // Forcing renewal asks for the same token, so it uses the same key.
    assert_eq!(
        manager
            .cache_key(CLIENT, &TokenParams::new().force_renewal())
            .unwrap(),
        default
    );
}
