//! Token endpoint answers that are not a usable token response become clear, typed errors:
//! never a panic, a hang, a cached garbage token or a leaked header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{CLIENT, chain, manager_builder, server};
use tokenwarden::oauth::Error as OAuthError;
use tokenwarden::{ClientConfig, ClientCredentials, RetryPolicy};
use tokenwarden_testkit::Failure;

async fn error_for(failure: Failure) -> tokenwarden::Error {
    let server = server().await;
    server.fail_next(failure);
    let manager = manager_builder(&server)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let error = manager.token(CLIENT).await.unwrap_err();
    // Nothing was cached: the next call asks the server again and gets a real token.
    manager.token(CLIENT).await.unwrap();
    assert_eq!(server.token_requests(CLIENT), 2);
    error
}

#[tokio::test]
async fn a_body_that_is_not_json() {
    let error = error_for(Failure::RawBody("<html>oops</html>".into())).await;
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::InvalidResponse(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_response_without_access_token() {
    let error = error_for(Failure::RawBody(
        r#"{"token_type":"Bearer","expires_in":3600}"#.into(),
    ))
    .await;
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::InvalidResponse(_))),
        "{error:?}"
    );
    assert!(chain(&error).contains("access_token"), "{}", chain(&error));
}

#[tokio::test]
async fn a_token_with_a_line_break() {
    let body =
        r#"{"access_token":"abc\r\nX-Injected: yes","token_type":"Bearer","expires_in":3600}"#;
    let error = error_for(Failure::RawBody(body.into())).await;
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::InvalidToken(_))),
        "{error:?}"
    );
    let shown = format!("{} {error:?}", chain(&error));
    assert!(
        !shown.contains("Injected"),
        "the token value is not echoed: {shown}"
    );
}

#[tokio::test]
async fn a_ten_megabyte_body() {
    let error = error_for(Failure::LargeBody(10 * 1024 * 1024)).await;
    assert!(
        matches!(
            error.oauth_error(),
            Some(OAuthError::ResponseTooLarge { .. })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_hung_token_endpoint_times_out() {
    let server = server().await;
    server.fail_next(Failure::Hang);
    let idp = ClientConfig::builder(&server.token_endpoint(), CLIENT)
        .client_secret(common::SECRET)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let credentials = ClientCredentials::new(idp);
    let manager = tokenwarden::TokenManager::builder()
        .client(CLIENT, credentials)
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let error = manager.token(CLIENT).await.unwrap_err();
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::Timeout { .. })),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn a_server_error_page() {
    let error = error_for(Failure::Status(http::StatusCode::INTERNAL_SERVER_ERROR)).await;
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::UnexpectedStatus { status, retry_after: None, .. }) if status.as_u16() == 500),
        "{error:?}"
    );
}

#[tokio::test]
async fn expires_in_as_a_string_is_accepted() {
    let server = server().await;
    server.fail_next(Failure::RawBody(
        r#"{"access_token":"tk_string_expiry","token_type":"bearer","expires_in":"120"}"#.into(),
    ));
    let manager = manager_builder(&server).build().unwrap();
    let token = manager.token(CLIENT).await.unwrap();
    assert_eq!(token.expose_secret(), "tk_string_expiry");
    assert_eq!(token.token_type(), &tokenwarden::TokenType::Bearer);
    let lifetime = token
        .expires_at()
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        lifetime <= Duration::from_secs(120) && lifetime > Duration::from_secs(100),
        "{lifetime:?}"
    );
}

#[tokio::test]
async fn a_dpop_bound_token_is_refused_rather_than_sent_without_a_proof() {
    let body = r#"{"access_token":"tk_dpop","token_type":"DPoP","expires_in":3600}"#;
    let error = error_for(Failure::RawBody(body.into())).await;
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::InvalidResponse(_))),
        "{error:?}"
    );
    assert!(chain(&error).contains("DPoP"), "{}", chain(&error));
}
