//! The grant seam: a custom extension grant (`grant_type=urn:example:test` with its own form
//! parameter), registered as a client like any other, gets a cached, single-flight, renewed
//! token through the layer. Nothing in the manager or the layer names a grant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CLIENT, SECRET, client_config, http_client};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokenwarden::{
    AccessTokenLayer, ExtensionGrant, ManualClock, TokenManager, TokenManagerBuilder,
};
use tokenwarden_testkit::TestServer;
use tower::{ServiceBuilder, ServiceExt};

const GRANT: &str = "urn:example:test";
const INPUT: &str = "example_input";

async fn server() -> TestServer {
    TestServer::builder()
        .client(CLIENT, SECRET)
        .extension_grant(GRANT, INPUT)
        .start()
        .await
        .unwrap()
}

/// The client `tester` gets its tokens with the extension grant, as the client `billing`.
fn manager_builder(server: &TestServer) -> TokenManagerBuilder {
    TokenManager::builder().client(
        "tester",
        ExtensionGrant::new(client_config(server), GRANT).param(INPUT, "42"),
    )
}

fn client(
    manager: &TokenManager,
    server: &TestServer,
) -> tokenwarden::AccessTokenService<common::HttpClient> {
    let layer = AccessTokenLayer::builder(manager, "tester")
        .allow_origin(&server.base_url())
        .build()
        .unwrap();
    ServiceBuilder::new().layer(layer).service(http_client())
}

async fn get(
    client: &tokenwarden::AccessTokenService<common::HttpClient>,
    server: &TestServer,
) -> StatusCode {
    let request = Request::get(server.api_url("/reports"))
        .body(Full::default())
        .unwrap();
    client.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn an_extension_grant_token_is_sent_and_cached() {
    let server = server().await;
    let manager = manager_builder(&server).build().unwrap();
    let client = client(&manager, &server);
    for _ in 0..50 {
        assert_eq!(get(&client, &server).await, StatusCode::OK);
    }
    assert_eq!(server.token_requests(CLIENT), 1);
    let request = server.last_token_request(CLIENT).unwrap();
    assert_eq!(request.field("grant_type"), Some(GRANT));
    assert_eq!(request.field(INPUT), Some("42"));
    // The key tells this grant's tokens apart, and holds the parameter only as a digest.
    let key = manager
        .cache_key("tester", &tokenwarden::TokenParams::new())
        .unwrap();
    assert!(
        key.as_str().contains("x.grant_type=urn%3Aexample%3Atest"),
        "{key}"
    );
    assert!(!key.as_str().contains("=42"), "{key}");
}

#[tokio::test]
async fn concurrent_first_requests_share_one_extension_grant_request() {
    let server = server().await;
    server.set_delay(Duration::from_millis(200));
    let manager = manager_builder(&server).build().unwrap();
    let client = client(&manager, &server);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, server, barrier) = (client.clone(), server.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                get(&client, &server).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(server.token_requests(CLIENT), 1);
}

#[tokio::test]
async fn an_extension_grant_token_is_renewed_ahead_of_expiry() {
    let server = server().await;
    let clock = ManualClock::starting_now();
    let manager = manager_builder(&server)
        .clock(clock.clone())
        .build()
        .unwrap();
    let client = client(&manager, &server);
    assert_eq!(get(&client, &server).await, StatusCode::OK);
    let first = manager.token("tester").await.unwrap();
    // One hour tokens are renewed a minute before they expire.
    clock.advance(Duration::from_secs(3540));
    assert_eq!(get(&client, &server).await, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), server.wait_for_token_requests(2))
        .await
        .expect("a background renewal");
    let renewed = loop {
        let token = manager.token("tester").await.unwrap();
        if token.secret() != first.secret() {
            break token;
        }
        tokio::task::yield_now().await;
    };
    assert!(renewed.expires_at() > first.expires_at());
    assert_eq!(get(&client, &server).await, StatusCode::OK);
    assert_eq!(server.token_requests(CLIENT), 2);
    assert_eq!(manager.metrics().background_renewals, 1);
    assert_eq!(
        server
            .last_token_request(CLIENT)
            .unwrap()
            .field("grant_type"),
        Some(GRANT)
    );
}

#[tokio::test]
async fn a_server_that_refuses_the_grant_gives_a_typed_error() {
    let server = server().await;
    // Without its required parameter the server refuses the request.
    let manager = TokenManager::builder()
        .client("tester", ExtensionGrant::new(client_config(&server), GRANT))
        .build()
        .unwrap();
    let error = manager.token("tester").await.unwrap_err();
    assert_eq!(error.client(), Some("tester"));
    match error.oauth_error() {
        Some(tokenwarden::oauth::Error::TokenEndpoint { error, .. }) => {
            assert_eq!(error, "invalid_request");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&error, tokenwarden::Error::Token { grant, .. } if &**grant == GRANT));
}
