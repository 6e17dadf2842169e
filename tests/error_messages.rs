//! Errors a user can act on: every error, printed with its causes (`{:#}` in anyhow, one line
//! per cause), says what failed and where, once: no message repeats its source. Transport
//! failures say their kind (connection refused, DNS, TLS, timeout) and the endpoint; a 404
//! names the endpoint; `build()` errors name the fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{CLIENT, SECRET, manager, server};
use http::StatusCode;
use tokenwarden::oauth::{Error as OAuthError, TransportKind};
use tokenwarden::{
    AccessTokenLayer, ClientConfig, ClientCredentials, ExtensionGrant, RetryPolicy, TokenManager,
};
use tokenwarden_testkit::Failure;

/// The messages of an error and of each cause below it.
fn lines(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut lines = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        lines.push(cause.to_string());
        source = cause.source();
    }
    lines
}

/// No message in the chain repeats another one, or is contained in the message above it.
fn assert_says_each_thing_once(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let lines = lines(error);
    for (i, line) in lines.iter().enumerate() {
        assert!(!line.is_empty(), "an empty message in {lines:#?}");
        for other in &lines[..i] {
            assert!(
                !other.contains(line.as_str()),
                "{line:?} repeats what {other:?} says, in {lines:#?}"
            );
        }
    }
    lines
}

/// A manager for one client whose token requests go to `config`, failing fast.
fn manager_for(config: ClientConfig) -> TokenManager {
    TokenManager::builder()
        .client(CLIENT, ClientCredentials::new(config))
        .retry(RetryPolicy::none())
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn token_error(config: ClientConfig) -> tokenwarden::Error {
    manager_for(config).token(CLIENT).await.unwrap_err()
}

fn config(endpoint: &str) -> ClientConfig {
    ClientConfig::builder(endpoint, CLIENT)
        .client_secret(SECRET)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[tokio::test]
async fn transport_failures_say_their_kind_and_the_endpoint() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}/oauth2/token");
    let error = token_error(config(&endpoint)).await;
    let lines = assert_says_each_thing_once(&error);
    assert!(
        matches!(
            error.oauth_error(),
            Some(OAuthError::Transport {
                kind: TransportKind::ConnectionRefused,
                ..
            })
        ),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains(&endpoint) && lines[1].contains("connection refused"),
        "{lines:#?}"
    );
    assert!(lines[0].contains(CLIENT), "{lines:#?}");

    // A name no resolver knows (`.invalid` is reserved for that).
    let error = token_error(
        ClientConfig::builder("https://idp.tokenwarden.invalid/token", CLIENT)
            .client_secret(SECRET)
            .build()
            .unwrap(),
    )
    .await;
    let lines = assert_says_each_thing_once(&error);
    assert!(
        matches!(
            error.oauth_error(),
            Some(OAuthError::Transport {
                kind: TransportKind::Dns,
                ..
            })
        ),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("idp.tokenwarden.invalid") && lines[1].contains("DNS"),
        "{lines:#?}"
    );

    // https to a server that speaks plain http: the TLS handshake fails.
    let server = server().await;
    let tls = server.token_endpoint().replacen("http://", "https://", 1);
    let error = token_error(config(&tls)).await;
    let lines = assert_says_each_thing_once(&error);
    assert!(
        matches!(
            error.oauth_error(),
            Some(OAuthError::Transport {
                kind: TransportKind::Tls,
                ..
            })
        ),
        "{lines:#?}"
    );
    assert!(lines[1].contains("TLS"), "{lines:#?}");

    // A server that never answers.
    server.fail_next(Failure::Hang);
    let error = token_error(config(&server.token_endpoint())).await;
    let lines = assert_says_each_thing_once(&error);
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::Timeout { .. })),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains(&server.token_endpoint()) && lines[1].contains("500ms"),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_wrong_endpoint_path_is_a_404_that_names_the_endpoint() {
    let server = server().await;
    let wrong = format!("{}/oauth/v2/token", server.base_url());
    let error = token_error(config(&wrong)).await;
    let lines = assert_says_each_thing_once(&error);
    assert!(
        matches!(
            error.oauth_error(),
            Some(OAuthError::UnexpectedStatus {
                status: StatusCode::NOT_FOUND,
                ..
            })
        ),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains(&wrong) && lines[1].contains("404"),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn every_answer_of_a_token_endpoint_is_told_once() {
    let server = server().await;
    for failure in [
        Failure::oauth("invalid_scope"),
        Failure::OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            description: Some("client authentication failed".into()),
        },
        Failure::RetryAfter {
            status: StatusCode::SERVICE_UNAVAILABLE,
            seconds: 60,
        },
        Failure::RawBody("not json".into()),
        Failure::RawBody(r#"{"token_type":"Bearer"}"#.into()),
        Failure::RawBody(r#"{"access_token":"a\r\nb","token_type":"Bearer"}"#.into()),
        Failure::RawBody(r#"{"access_token":"abc","token_type":"DPoP"}"#.into()),
        Failure::LargeBody(1024 * 1024),
        Failure::Disconnect,
    ] {
        server.fail_next(failure.clone());
        let error = token_error(config(&server.token_endpoint())).await;
        let lines = assert_says_each_thing_once(&error);
        assert!(lines[0].contains(CLIENT), "{failure:?}: {lines:#?}");
        let shown = lines.join("\n");
        assert!(!shown.contains(SECRET), "{failure:?}: {shown}");
    }
}

#[tokio::test]
async fn manager_and_layer_errors_are_told_once() {
    let server = server().await;
    let manager = manager(&server);
    let unknown = manager.token("nobody").await.unwrap_err();
    assert_says_each_thing_once(&unknown);

    server.fail_next(Failure::Hang);
    let short = TokenManager::builder()
        .client(
            CLIENT,
            ClientCredentials::new(config(&server.token_endpoint())),
        )
        .retry(RetryPolicy::none())
        .acquire_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let timeout = short.token(CLIENT).await.unwrap_err();
    let lines = assert_says_each_thing_once(&timeout);
    assert!(lines[0].contains("200ms"), "{lines:#?}");

    for config_error in [
        AccessTokenLayer::builder(&manager, CLIENT)
            .build()
            .unwrap_err(),
        AccessTokenLayer::builder(&manager, CLIENT)
            .allow_origin("api.example.com")
            .build()
            .unwrap_err(),
        TokenManager::builder()
            .client(
                CLIENT,
                ExtensionGrant::new(common::client_config(&server), "two words"),
            )
            .build()
            .unwrap_err(),
        TokenManager::builder()
            .acquire_timeout(Duration::MAX)
            .build()
            .unwrap_err(),
    ] {
        assert_says_each_thing_once(&config_error);
    }
}

#[test]
fn build_errors_name_the_fix() {
    let insecure = ClientConfig::builder("http://idp.example.com/token", CLIENT)
        .client_secret(SECRET)
        .build()
        .unwrap_err();
    assert_says_each_thing_once(&insecure);
    assert!(
        insecure.to_string().contains("allow_insecure_http"),
        "{insecure}"
    );
    let no_scheme = ClientConfig::builder("idp.example.com/token", CLIENT)
        .client_secret(SECRET)
        .build()
        .unwrap_err();
    assert!(
        no_scheme.to_string().contains("absolute http(s) URL"),
        "{no_scheme}"
    );
    let no_secret = ClientConfig::builder("https://idp.example.com/token", CLIENT)
        .build()
        .unwrap_err();
    assert!(
        no_secret.to_string().contains("client_secret"),
        "{no_secret}"
    );
}
