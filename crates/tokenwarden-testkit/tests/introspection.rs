//! Token introspection (RFC 7662) at `POST /introspect`, over real loopback HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use http::StatusCode;
use http::header::{ALLOW, CACHE_CONTROL};
use serde_json::json;
use tokenwarden_testkit::TestServer;

use common::{Auth, Http, Reply};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The resource server that introspects; it was issued none of the tokens.
const API2: Auth<'static> = Auth::Basic("api2", "api2 secret");

async fn start() -> (TestServer, Http) {
    let server = TestServer::builder()
        .client("web-app", "web-secret")
        .client("api1", "api1-secret")
        .client("api2", "api2 secret")
        .user("ann", "ann-password")
        .token_lifetime(Duration::from_secs(300))
        .start()
        .await
        .unwrap();
    (server, Http::new())
}

async fn introspect(http: &Http, server: &TestServer, auth: Auth<'_>, token: &str) -> Reply {
    http.post_form(&server.introspection_endpoint(), auth, &[("token", token)])
        .await
}

#[tokio::test]
async fn any_client_sees_what_a_live_token_stands_for() {
    let (server, http) = start().await;
    assert_eq!(
        server.introspection_endpoint(),
        format!("{}/introspect", server.base_url())
    );

    // A user's JWT.
    let user_token = server.issue_user_jwt("ann", "api1", "api1 profile", Duration::from_secs(60));
    let reply = introspect(&http, &server, API2, &user_token).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.headers[CACHE_CONTROL], "no-store");
    let json = reply.json();
    assert_eq!(json["active"], true);
    assert_eq!(json["iss"], server.issuer());
    assert_eq!(json["sub"], "ann");
    assert_eq!(json["username"], "ann");
    assert_eq!(json["client_id"], TestServer::USER_JWT_CLIENT_ID);
    assert_eq!(json["scope"], "api1 profile");
    assert_eq!(json["aud"], json!(["api1"]));
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(
        json["exp"].as_u64().unwrap(),
        json["iat"].as_u64().unwrap() + 60
    );
    assert!(json.get("act").is_none());

    // The token API 1 got for it by token exchange.
    let reply = http
        .post_form(
            &server.token_endpoint(),
            Auth::Post("api1", "api1-secret"),
            &[
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &user_token),
                ("subject_token_type", ACCESS_TOKEN),
                ("audience", "api2"),
                ("scope", "api2"),
            ],
        )
        .await;
    let exchanged = reply.field("access_token");
    let json = introspect(
        &http,
        &server,
        Auth::Post("api2", "api2 secret"),
        &exchanged,
    )
    .await
    .json();
    assert_eq!(json["active"], true);
    assert_eq!(json["sub"], "ann");
    assert_eq!(json["client_id"], "api1");
    assert_eq!(json["act"], json!({ "sub": "api1" }));
    assert_eq!(json["aud"], json!(["api2"]));
    assert_eq!(json["scope"], "api2");
    assert_eq!(
        json["exp"].as_u64().unwrap(),
        json["iat"].as_u64().unwrap() + 300
    );

    // A client's own token: the client is the subject, there is no user.
    let reply = http
        .post_form(
            &server.token_endpoint(),
            Auth::Post("api1", "api1-secret"),
            &[("grant_type", "client_credentials")],
        )
        .await;
    let json = introspect(&http, &server, API2, &reply.field("access_token"))
        .await
        .json();
    assert_eq!(json["active"], true);
    assert_eq!(json["sub"], "api1");
    assert_eq!(json["client_id"], "api1");
    assert!(json.get("username").is_none());
    assert!(json.get("scope").is_none());
    assert!(json.get("aud").is_none());

    assert_eq!(server.introspection_requests(), 3);
    // Basic credentials at the introspection endpoint are expected there, not a leak.
    assert_eq!(server.requests_with_authorization(), 0);
    // Introspection is no token request.
    assert_eq!(server.token_requests("api2"), 0);
}

#[tokio::test]
async fn expired_revoked_unknown_and_refresh_tokens_are_inactive() {
    let (server, http) = start().await;
    let expired = server.issue_user_jwt("ann", "api1", "api1", Duration::ZERO);
    let signed_in = server.sign_in("web-app", "ann");
    assert!(server.revoke_token(&signed_in.access_token));
    for token in [
        expired.as_str(),
        signed_in.access_token.as_str(),
        "tk_00000000000000000000000000000000",
        signed_in.refresh_token.as_str(),
    ] {
        let reply = introspect(&http, &server, API2, token).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json(), json!({ "active": false }), "{token}");
    }
}

#[tokio::test]
async fn introspection_needs_a_token_and_an_authenticated_client() {
    let (server, http) = start().await;
    let token = server.sign_in("web-app", "ann").access_token;

    let reply = http
        .post_form(&server.introspection_endpoint(), API2, &[])
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error(), "invalid_request");
    assert!(reply.error_description().contains("token"));

    let reply = http
        .post_form(
            &server.introspection_endpoint(),
            API2,
            &[("token", &token), ("token", &token)],
        )
        .await;
    assert_eq!(reply.error(), "invalid_request");

    for auth in [Auth::Basic("api2", "wrong"), Auth::Post("nobody", "x")] {
        let reply = introspect(&http, &server, auth, &token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error(), "invalid_client");
    }

    let reply = http.get(&server.introspection_endpoint()).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers[ALLOW], "POST");
    assert_eq!(server.introspection_requests(), 4, "the GET is not counted");
}
