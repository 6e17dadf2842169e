//! Clients configured by issuer: endpoints from the issuer's metadata (OpenID Connect discovery,
//! else RFC 8414), kept for a while, fetched again after a failure, the `issuer` checked and
//! the endpoints required to be https unless loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{CLIENT, SECRET};
use http::StatusCode;
use tokenwarden::{
    AccessToken, ClientConfig, ClientCredentials, RefreshTokens, Revoke, Secret, TokenManager,
    TokenType, UserKey, UserTokens,
};
use tokenwarden_testkit::{DiscoveryDocument, Failure, TestServer};

fn by_issuer(server: &TestServer) -> ClientConfig {
    ClientConfig::from_issuer(&server.issuer(), CLIENT)
        .client_secret(SECRET)
        .build()
        .unwrap()
}

fn manager(config: ClientConfig) -> TokenManager {
    TokenManager::builder()
        .client(CLIENT, ClientCredentials::new(config))
        .build()
        .unwrap()
}

async fn server() -> TestServer {
    TestServer::builder()
        .client(CLIENT, SECRET)
        .user("alice", "alice-password")
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_configured_by_issuer_finds_its_token_endpoint_once() {
    let server = server().await;
    let config = by_issuer(&server);
    assert_eq!(config.token_endpoint(), None);
    assert_eq!(
        config.issuer().unwrap().to_string().trim_end_matches('/'),
        server.issuer()
    );
    let manager = manager(config);
    manager.token(CLIENT).await.unwrap();
    manager
        .token_with(CLIENT, &tokenwarden::TokenParams::new().force_renewal())
        .await
        .unwrap();
    assert_eq!(server.token_requests(CLIENT), 2);
    assert_eq!(server.discovery_requests(), 1, "the metadata is kept");
    // The cache key names the issuer, not an endpoint it might change.
    let key = manager
        .cache_key(CLIENT, &tokenwarden::TokenParams::new())
        .unwrap();
    assert!(key.as_str().contains("x.issuer="), "{key}");
}

#[tokio::test]
async fn without_an_openid_document_the_oauth_metadata_is_used() {
    let server = TestServer::builder()
        .client(CLIENT, SECRET)
        .serve_openid_configuration(false)
        .start()
        .await
        .unwrap();
    manager(by_issuer(&server)).token(CLIENT).await.unwrap();
    assert_eq!(
        server.discovery_requests_for(DiscoveryDocument::OpenIdConfiguration),
        1
    );
    assert_eq!(
        server.discovery_requests_for(DiscoveryDocument::OAuthAuthorizationServer),
        1
    );
}

#[tokio::test]
async fn metadata_naming_another_issuer_is_refused() {
    let server = TestServer::builder()
        .client(CLIENT, SECRET)
        .issuer("https://idp.attacker.example")
        .start()
        .await
        .unwrap();
    // The client expects the server at its own address; the metadata says otherwise.
    let config = ClientConfig::from_issuer(&server.base_url(), CLIENT)
        .client_secret(SECRET)
        .build()
        .unwrap();
    let error = manager(config).token(CLIENT).await.unwrap_err();
    match error.oauth_error() {
        Some(tokenwarden::oauth::Error::Discovery { problem, .. }) => {
            assert!(problem.contains("another issuer"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        server.token_requests(CLIENT),
        0,
        "no credentials sent anywhere"
    );
}

#[tokio::test]
async fn metadata_with_an_http_endpoint_is_refused() {
    let server = server().await;
    let metadata = serde_json::json!({
        "issuer": server.issuer(),
        "token_endpoint": "http://idp.example.com/token",
    });
    server.fail_next_discovery(Failure::RawBody(metadata.to_string()));
    server.fail_next_discovery(Failure::RawBody(metadata.to_string()));
    let error = manager(by_issuer(&server)).token(CLIENT).await.unwrap_err();
    let shown = common::chain(&error);
    assert!(
        matches!(
            error.oauth_error(),
            Some(tokenwarden::oauth::Error::Discovery { .. })
        ),
        "{shown}"
    );
    assert!(shown.contains("https"), "{shown}");
    assert_eq!(server.token_requests(CLIENT), 0);
}

#[tokio::test]
async fn discovery_is_tried_again_after_a_failure_and_after_its_ttl() {
    let server = server().await;
    for _ in 0..2 {
        server.fail_next_discovery(Failure::Status(StatusCode::SERVICE_UNAVAILABLE));
    }
    let config = ClientConfig::from_issuer(&server.issuer(), CLIENT)
        .client_secret(SECRET)
        .discovery_ttl(Duration::from_millis(300))
        .build()
        .unwrap();
    let manager = TokenManager::builder()
        .client(CLIENT, ClientCredentials::new(config))
        .retry(tokenwarden::RetryPolicy::none())
        .build()
        .unwrap();
    let error = manager.token(CLIENT).await.unwrap_err();
    assert!(error.is_retryable(), "a 503 may pass: {error:?}");
    manager.token(CLIENT).await.unwrap();
    assert_eq!(
        server.discovery_requests(),
        3,
        "both documents once, then one that worked"
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    manager
        .token_with(CLIENT, &tokenwarden::TokenParams::new().force_renewal())
        .await
        .unwrap();
    assert_eq!(
        server.discovery_requests(),
        4,
        "fetched again after the TTL"
    );
}

#[tokio::test]
async fn a_user_client_by_issuer_signs_out_at_the_discovered_revocation_endpoint() {
    let server = server().await;
    let manager = TokenManager::builder()
        .user_client("web", RefreshTokens::new(by_issuer(&server)))
        .build()
        .unwrap();
    let alice = UserKey::new("alice-session");
    let signed_in = server.sign_in(CLIENT, "alice");
    let access = AccessToken::new(signed_in.access_token.as_str(), TokenType::Bearer)
        .unwrap()
        .with_expires_at(SystemTime::now() + signed_in.expires_in);
    manager
        .sign_in(
            "web",
            &alice,
            UserTokens::new(access, Some(Secret::new(signed_in.refresh_token.as_str()))),
        )
        .await
        .unwrap();
    manager
        .sign_out("web", &alice, Revoke::RefreshToken)
        .await
        .unwrap();
    assert_eq!(server.revocation_requests(), 1);
}
