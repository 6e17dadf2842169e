//! A middle tier acting for its caller: the caller's token exchanged with RFC 8693 token
//! exchange and with seed 001's `delegation` extension grant, against the test server, which
//! validates the subject token. Parameters arrive verbatim; tokens are cached per subject (the
//! subject's SHA-256 in the key, never the token), never past a JWT subject's `exp`, in a
//! bounded map, and through a shared Redis across replicas; a refused subject is a distinct
//! error; the layer sends no request without a subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::http_client;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokenwarden::redis::RedisTokenCache;
use tokenwarden::{
    AccessTokenLayer, ClientConfig, ClientCredentials, Error, ExtensionGrant, ManualClock,
    OAuthClient, SubjectToken, TokenExchange, TokenManager, TokenManagerBuilder, TokenParams,
    TokenType, token_types,
};
use tokenwarden_testkit::{RedisServer, TestServer};
use tower::{ServiceBuilder, ServiceExt};

/// The middle tier (API 1) as the authorization server knows it.
const API1: &str = "api1";
const API1_SECRET: &str = "api1-secret";
/// The manager's names for its two ways to call API 2.
const EXCHANGE: &str = "api2-exchange";
const DELEGATION: &str = "api2-delegation";

async fn server() -> TestServer {
    TestServer::builder()
        .client(API1, API1_SECRET)
        .user("carol", "carol-password")
        .delegation_grant()
        .start()
        .await
        .expect("test server starts")
}

fn api1(server: &TestServer) -> ClientConfig {
    ClientConfig::builder(&server.token_endpoint(), API1)
        .client_secret(API1_SECRET)
        .build()
        .unwrap()
}

/// A manager with both ways to API 2: token exchange for audience `api2`, and the delegation
/// grant with the subject in `token` and `scope=api2`.
fn manager_builder(server: &TestServer) -> TokenManagerBuilder {
    TokenManager::builder()
        .client(
            EXCHANGE,
            TokenExchange::new(api1(server))
                .audience("api2")
                .scope("orders.read"),
        )
        .client(
            DELEGATION,
            ExtensionGrant::new(api1(server), "delegation")
                .subject_token_param("token")
                .scope("api2"),
        )
}

/// A user's access token, a JWT living `lifetime`, as API 1 received it from its caller.
fn user_token(server: &TestServer, user: &str, lifetime: Duration) -> SubjectToken {
    SubjectToken::access_token(server.issue_user_jwt(user, "api1", "orders.read", lifetime))
        .unwrap()
}

fn for_subject(subject: &SubjectToken) -> TokenParams {
    TokenParams::new().subject_token(subject.clone())
}

/// What the test server's API saw of a request with `token`.
async fn api_sees(server: &TestServer, token: &str) -> serde_json::Value {
    let request = Request::get(server.api_url("/orders"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = http_client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn token_exchange_sends_subject_actor_and_target_verbatim() {
    let server = server().await;
    let subject = user_token(&server, "alice", Duration::from_secs(300));
    let actor = SubjectToken::new(
        server.issue_user_jwt("api1-service", "", "", Duration::from_secs(300)),
        token_types::JWT,
    )
    .unwrap();
    let grant = TokenExchange::new(api1(&server))
        .audience("api2")
        .audience("audit")
        .resource("https://api2.example.com/")
        .scope("orders.read orders.list")
        .requested_token_type(token_types::ACCESS_TOKEN)
        .actor_token(actor.clone());
    let manager = TokenManager::builder()
        .client(EXCHANGE, grant)
        .build()
        .unwrap();

    let token = manager
        .token_with(EXCHANGE, &for_subject(&subject))
        .await
        .unwrap();

    let sent = server.last_token_request(API1).unwrap();
    assert_eq!(
        sent.field("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(sent.field("subject_token"), Some(subject.expose_secret()));
    assert_eq!(
        sent.field("subject_token_type"),
        Some(token_types::ACCESS_TOKEN)
    );
    assert_eq!(sent.field("actor_token"), Some(actor.expose_secret()));
    assert_eq!(sent.field("actor_token_type"), Some(token_types::JWT));
    assert_eq!(
        sent.field("requested_token_type"),
        Some(token_types::ACCESS_TOKEN)
    );
    assert_eq!(
        sent.fields("audience").collect::<Vec<_>>(),
        ["api2", "audit"]
    );
    assert_eq!(sent.field("resource"), Some("https://api2.example.com/"));
    assert_eq!(sent.field("scope"), Some("orders.read orders.list"));

    // API 2 sees the user, through API 1, with its own audience: not the user's token.
    assert_ne!(token.expose_secret(), subject.expose_secret());
    let seen = api_sees(&server, token.expose_secret()).await;
    assert_eq!(seen["user"], "alice", "{seen}");
    assert_eq!(seen["client"], API1, "{seen}");
    assert_eq!(seen["scope"], "orders.read orders.list", "{seen}");
    let audience = seen["aud"].to_string();
    assert!(audience.contains("api2"), "{seen}");
}

#[tokio::test]
async fn the_delegation_grant_is_configuration() {
    let server = server().await;
    let manager = manager_builder(&server).build().unwrap();
    let subject = user_token(&server, "alice", Duration::from_secs(300));

    let token = manager
        .token_with(DELEGATION, &for_subject(&subject))
        .await
        .unwrap();

    let sent = server.last_token_request(API1).unwrap();
    assert_eq!(sent.field("grant_type"), Some("delegation"));
    assert_eq!(sent.field("token"), Some(subject.expose_secret()));
    assert_eq!(sent.field("scope"), Some("api2"));
    assert_eq!(sent.field("subject_token"), None);
    let seen = api_sees(&server, token.expose_secret()).await;
    assert_eq!(seen["user"], "alice", "{seen}");
    assert_eq!(seen["client"], API1, "{seen}");
    assert_eq!(seen["scope"], "api2", "{seen}");
}

#[tokio::test]
async fn one_exchange_per_subject_keyed_by_its_digest() {
    let server = server().await;
    let manager = manager_builder(&server).build().unwrap();
    let alice = user_token(&server, "alice", Duration::from_secs(300));
    let bob = user_token(&server, "bob", Duration::from_secs(300));

    let first = manager
        .token_with(EXCHANGE, &for_subject(&alice))
        .await
        .unwrap();
    let again = manager
        .token_with(EXCHANGE, &for_subject(&alice))
        .await
        .unwrap();
    assert_eq!(first, again, "the same subject: the cached token");
    assert_eq!(server.exchange_requests(API1), 1);
    let other = manager
        .token_with(EXCHANGE, &for_subject(&bob))
        .await
        .unwrap();
    assert_ne!(other, first, "another subject: its own token");
    assert_eq!(server.exchange_requests(API1), 2);
    assert_eq!(
        api_sees(&server, other.expose_secret()).await["user"],
        "bob"
    );

    // The key holds the subject's SHA-256, never the subject.
    let key = manager.cache_key(EXCHANGE, &for_subject(&alice)).unwrap();
    let digest = {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(alice.expose_secret().as_bytes());
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert!(key.as_str().contains(&digest), "{key}");
    assert!(!key.as_str().contains(alice.expose_secret()), "{key}");
    assert_ne!(
        key,
        manager.cache_key(EXCHANGE, &for_subject(&bob)).unwrap()
    );
    // Debug output of everything that held the subject shows no token either.
    let shown = format!("{:?} {:?}", for_subject(&alice), manager);
    assert!(!shown.contains(alice.expose_secret()), "{shown}");
}

#[tokio::test]
async fn a_cached_exchange_is_never_used_past_its_subjects_expiry() {
    let server = server().await;
    // The server gives exchanged tokens an hour, whatever the subject's expiry.
    let clock = ManualClock::new(SystemTime::now());
    let manager = manager_builder(&server)
        .clock(clock.clone())
        .build()
        .unwrap();
    let subject = user_token(&server, "alice", Duration::from_secs(120));
    let exp = subject.expires_at().expect("a JWT with exp");

    let token = manager
        .token_with(EXCHANGE, &for_subject(&subject))
        .await
        .unwrap();
    assert_eq!(token.expires_at(), Some(exp), "capped at the subject's exp");

    // Until the subject's expiry the exchanged token is reused, and not renewed ahead: a
    // renewal for this subject could not outlive it either.
    clock.set(exp - Duration::from_secs(1));
    let still = manager
        .token_with(EXCHANGE, &for_subject(&subject))
        .await
        .unwrap();
    assert_eq!(still, token);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(server.exchange_requests(API1), 1);
    assert_eq!(manager.metrics().background_renewals, 0);

    // From then on, neither the cached token nor a new exchange: the subject has expired.
    clock.set(exp);
    let error = manager
        .token_with(EXCHANGE, &for_subject(&subject))
        .await
        .unwrap_err();
    assert!(error.is_subject_token_rejected(), "{error:?}");
    assert!(error.oauth_error().is_none(), "decided here: {error:?}");
    assert_eq!(server.exchange_requests(API1), 1, "nothing sent");

    // An opaque subject is not parsed: its token lives as the server said.
    let opaque = SubjectToken::access_token(server.sign_in(API1, "carol").access_token).unwrap();
    assert_eq!(opaque.expires_at(), None);
    let token = manager
        .token_with(EXCHANGE, &for_subject(&opaque))
        .await
        .unwrap();
    assert!(token.expires_at().unwrap() > exp + Duration::from_secs(1800));
}

#[tokio::test]
async fn a_refused_subject_is_an_error_the_middle_tier_can_answer_401_with() {
    let server = server().await;
    let manager = manager_builder(&server).build().unwrap();
    let revoked = user_token(&server, "alice", Duration::from_secs(300));
    assert!(server.revoke_token(revoked.expose_secret()));
    let unknown = SubjectToken::access_token("not-a-token-of-this-server").unwrap();
    let expired_here = user_token(&server, "bob", Duration::ZERO);

    for client in [EXCHANGE, DELEGATION] {
        for subject in [&revoked, &unknown] {
            let error = manager
                .token_with(client, &for_subject(subject))
                .await
                .unwrap_err();
            assert!(error.is_subject_token_rejected(), "{client}: {error:?}");
            assert!(
                matches!(error, Error::SubjectTokenRejected { .. }),
                "{client}: {error:?}"
            );
            let oauth = error.oauth_error().expect("the server's answer");
            assert!(oauth.is_invalid_grant(), "{oauth:?}");
            assert!(!error.is_retryable(), "{error:?}");
        }
        // A JWT whose exp has passed is refused without asking.
        let before = server.exchange_requests(API1);
        let error = manager
            .token_with(client, &for_subject(&expired_here))
            .await
            .unwrap_err();
        assert!(error.is_subject_token_rejected(), "{error:?}");
        assert_eq!(server.exchange_requests(API1), before);
    }
    // Refused exchanges are not retried: one request each.
    assert_eq!(server.exchange_requests(API1), 4);

    // Other failures stay what they were: a server error is a token request failure.
    let fine = user_token(&server, "carol", Duration::from_secs(300));
    server.fail_next(tokenwarden_testkit::Failure::Status(
        StatusCode::SERVICE_UNAVAILABLE,
    ));
    server.fail_next(tokenwarden_testkit::Failure::Status(
        StatusCode::SERVICE_UNAVAILABLE,
    ));
    server.fail_next(tokenwarden_testkit::Failure::Status(
        StatusCode::SERVICE_UNAVAILABLE,
    ));
    let error = manager
        .token_with(EXCHANGE, &for_subject(&fine))
        .await
        .unwrap_err();
    assert!(!error.is_subject_token_rejected(), "{error:?}");
    assert!(matches!(error, Error::Token { .. }), "{error:?}");
}

#[tokio::test]
async fn requests_without_a_subject_are_refused_before_anything_is_sent() {
    let server = server().await;
    let manager = manager_builder(&server)
        .client(
            "own",
            ClientCredentials::new(api1(&server)).scope("orders.read"),
        )
        .build()
        .unwrap();
    for client in [EXCHANGE, DELEGATION] {
        let error = manager.token(client).await.unwrap_err();
        assert!(matches!(error, Error::NoSubjectToken { .. }), "{error:?}");
    }
    let subject = user_token(&server, "alice", Duration::from_secs(300));
    let error = manager
        .token_with("own", &for_subject(&subject))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert_eq!(server.token_requests_total(), 0);
}

/// The subject a middle tier's own middleware put in a request's extensions, in a type of its
/// own: the layer's function finds it.
#[derive(Clone)]
struct Caller(String);

#[tokio::test]
async fn the_layer_exchanges_each_requests_subject_and_sends_none_without() {
    let server = server().await;
    let manager = manager_builder(&server).build().unwrap();
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, EXCHANGE)
                .allow_origin(&server.base_url())
                .subject_token_from(|extensions| {
                    let Caller(token) = extensions.get::<Caller>()?;
                    SubjectToken::access_token(token.as_str()).ok()
                })
                .build()
                .unwrap(),
        )
        .service(http_client());
    let get = || {
        Request::get(server.api_url("/orders"))
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let seen = |response: http::Response<hyper::body::Incoming>| async move {
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };

    let alice = user_token(&server, "alice", Duration::from_secs(300));
    let mut request = get();
    request.extensions_mut().insert(alice.clone());
    let json = seen(client.clone().oneshot(request).await.unwrap()).await;
    assert_eq!(json["user"], "alice");
    assert_eq!(json["client"], API1);

    let bob = user_token(&server, "bob", Duration::from_secs(300));
    let mut request = get();
    request
        .extensions_mut()
        .insert(Caller(bob.expose_secret().to_owned()));
    let json = seen(client.clone().oneshot(request).await.unwrap()).await;
    assert_eq!(json["user"], "bob", "found by the layer's function");

    let error = client.clone().oneshot(get()).await.unwrap_err();
    let error = error.downcast_ref::<Error>().unwrap();
    assert!(matches!(error, Error::NoSubjectToken { .. }), "{error:?}");
    assert_eq!(server.api_requests(), 2, "nothing sent without a subject");
    assert_eq!(server.requests_with_authorization(), 2);

    // A refused subject fails the request, distinctly; nothing is sent.
    assert!(server.revoke_token(alice.expose_secret()));
    manager.purge_local();
    let mut request = get();
    request.extensions_mut().insert(alice.clone());
    let error = client.clone().oneshot(request).await.unwrap_err();
    let error = error.downcast_ref::<Error>().unwrap();
    assert!(error.is_subject_token_rejected(), "{error:?}");
    assert_eq!(server.api_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_for_one_subject_exchange_once() {
    let server = server().await;
    server.set_delay(Duration::from_millis(100));
    let manager = manager_builder(&server).build().unwrap();
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, DELEGATION)
                .allow_origin(&server.base_url())
                .build()
                .unwrap(),
        )
        .service(http_client());
    let subject = user_token(&server, "alice", Duration::from_secs(300));
    let calls = (0..500).map(|_| {
        let client = client.clone();
        let mut request = Request::get(server.api_url("/orders"))
            .body(Full::<Bytes>::default())
            .unwrap();
        request.extensions_mut().insert(subject.clone());
        tokio::spawn(async move { client.oneshot(request).await.map(|r| r.status()) })
    });
    let statuses = futures_util::future::join_all(calls).await;
    for status in statuses {
        assert_eq!(status.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(server.exchange_requests(API1), 1);
    assert_eq!(server.api_requests(), 500);
}

#[tokio::test]
async fn the_per_subject_cache_is_bounded() {
    let server = server().await;
    let manager = manager_builder(&server)
        .max_cached_tokens(3)
        .build()
        .unwrap();
    let subjects: Vec<SubjectToken> = (0..10)
        .map(|i| user_token(&server, &format!("user{i}"), Duration::from_secs(300)))
        .collect();
    for subject in &subjects {
        manager
            .token_with(EXCHANGE, &for_subject(subject))
            .await
            .unwrap();
    }
    assert_eq!(server.exchange_requests(API1), 10);
    // The three latest are still held; the first was evicted and is exchanged again.
    for subject in &subjects[7..] {
        manager
            .token_with(EXCHANGE, &for_subject(subject))
            .await
            .unwrap();
    }
    assert_eq!(server.exchange_requests(API1), 10);
    manager
        .token_with(EXCHANGE, &for_subject(&subjects[0]))
        .await
        .unwrap();
    assert_eq!(server.exchange_requests(API1), 11);
}

#[tokio::test]
async fn replicas_share_per_subject_tokens_through_redis() {
    let server = server().await;
    let redis = RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)");
    let replica = || {
        let cache = RedisTokenCache::builder(&redis.url()).build().unwrap();
        manager_builder(&server)
            .shared_cache(cache)
            .build()
            .unwrap()
    };
    let (one, two) = (replica(), replica());
    let alice = user_token(&server, "alice", Duration::from_secs(300));
    let bob = user_token(&server, "bob", Duration::from_secs(300));

    let from_one = one
        .token_with(EXCHANGE, &for_subject(&alice))
        .await
        .unwrap();
    let from_two = two
        .token_with(EXCHANGE, &for_subject(&alice))
        .await
        .unwrap();
    assert_eq!(from_one.secret(), from_two.secret());
    assert_eq!(
        from_two.expires_at(),
        alice.expires_at(),
        "capped there too"
    );
    assert_eq!(
        server.exchange_requests(API1),
        1,
        "one exchange for both replicas"
    );
    assert_eq!(two.metrics().shared_cache_hits, 1);

    let bobs = two.token_with(EXCHANGE, &for_subject(&bob)).await.unwrap();
    assert_ne!(bobs.secret(), from_one.secret());
    assert_eq!(server.exchange_requests(API1), 2);
    let key = two.cache_key(EXCHANGE, &for_subject(&bob)).unwrap();
    assert!(!key.as_str().contains(bob.expose_secret()));
}

#[tokio::test]
async fn the_issued_token_type_is_checked_and_n_a_tokens_are_never_sent() {
    let server = server().await;
    let subject = user_token(&server, "alice", Duration::from_secs(300));

    // Asked for an access token, answered "an ID token": refused, whatever the token.
    let manager = TokenManager::builder()
        .client(
            EXCHANGE,
            TokenExchange::new(api1(&server))
                .audience("api2")
                .requested_token_type(token_types::ACCESS_TOKEN),
        )
        .build()
        .unwrap();
    server.misreport_next_issued_token_type(token_types::ID_TOKEN);
    let error = manager
        .token_with(EXCHANGE, &for_subject(&subject))
        .await
        .unwrap_err();
    let oauth = error.oauth_error().unwrap();
    assert!(
        matches!(oauth, tokenwarden::oauth::Error::InvalidResponse(_)),
        "{oauth:?}"
    );

    // An ID token is not an access token: the protocol client returns it as the RFC says...
    let id_token = TokenExchange::new(api1(&server))
        .audience("api2")
        .requested_token_type(token_types::ID_TOKEN);
    let oauth = OAuthClient::new().unwrap();
    let response = oauth
        .request_token(&id_token, &for_subject(&subject))
        .await
        .unwrap();
    assert_eq!(
        *response.access_token().token_type(),
        TokenType::NotApplicable
    );
    assert_eq!(response.issued_token_type(), Some(token_types::ID_TOKEN));

    // ...and a manager never puts it in an Authorization header.
    let manager = TokenManager::builder()
        .client("id", id_token)
        .build()
        .unwrap();
    let error = manager
        .token_with("id", &for_subject(&subject))
        .await
        .unwrap_err();
    assert!(
        common::chain(&error).contains("not an access token"),
        "{error:#}"
    );
}
