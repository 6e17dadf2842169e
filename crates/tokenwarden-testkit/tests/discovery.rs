//! Authorization server metadata (RFC 8414) at both well-known paths, over real loopback HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use http::StatusCode;
use http::header::{ALLOW, CONTENT_TYPE};
use serde_json::json;
use tokenwarden_testkit::{DiscoveryDocument, Failure, TestServer};

use common::{Auth, Http};

#[tokio::test]
async fn both_well_known_paths_serve_the_same_rfc8414_metadata() {
    let server = TestServer::builder()
        .client("web", "web-secret")
        .extension_grant("urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion")
        .delegation_grant()
        .scopes_supported(&["openid", "orders"])
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let base = server.base_url();
    assert_eq!(server.issuer(), base);
    assert_eq!(server.revocation_endpoint(), format!("{base}/revoke"));
    assert_eq!(
        server.discovery_url(DiscoveryDocument::OpenIdConfiguration),
        format!("{base}/.well-known/openid-configuration")
    );
    assert_eq!(
        server.discovery_url(DiscoveryDocument::OAuthAuthorizationServer),
        format!("{base}/.well-known/oauth-authorization-server")
    );

    let expected = json!({
        "issuer": base,
        "token_endpoint": server.token_endpoint(),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint": server.revocation_endpoint(),
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint": server.introspection_endpoint(),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": [
            "client_credentials",
            "password",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "delegation",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
        ],
        "response_types_supported": ["code"],
        "scopes_supported": ["openid", "orders"],
    });
    for document in DiscoveryDocument::ALL {
        let reply = http.get(&server.discovery_url(document)).await;
        assert_eq!(reply.status, StatusCode::OK, "{document:?}");
        assert_eq!(reply.headers[CONTENT_TYPE], "application/json");
        assert_eq!(reply.json(), expected, "{document:?}");
    }
    assert_eq!(server.discovery_requests(), 2);

    // The endpoints it names work.
    let metadata = http
        .get(&server.discovery_url(DiscoveryDocument::OAuthAuthorizationServer))
        .await
        .json();
    let reply = http
        .post_form(
            metadata["token_endpoint"].as_str().unwrap(),
            Auth::Basic("web", "web-secret"),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = http
        .post_form(
            metadata["revocation_endpoint"].as_str().unwrap(),
            Auth::Basic("web", "web-secret"),
            &[("token", &reply.field("access_token"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = http
        .post_form(
            metadata["introspection_endpoint"].as_str().unwrap(),
            Auth::Post("web", "web-secret"),
            &[("token", "tk_unknown")],
        )
        .await;
    assert_eq!(reply.json(), json!({ "active": false }));
}

#[tokio::test]
async fn scopes_supported_is_left_out_unless_configured() {
    let server = TestServer::builder().start().await.unwrap();
    let metadata = Http::new()
        .get(&server.discovery_url(DiscoveryDocument::OpenIdConfiguration))
        .await
        .json();
    assert!(metadata.get("scopes_supported").is_none(), "{metadata}");
    assert_eq!(
        metadata["grant_types_supported"],
        json!([
            "client_credentials",
            "password",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
}

#[tokio::test]
async fn delegation_is_listed_once_even_when_also_registered_as_an_extension_grant() {
    let server = TestServer::builder()
        .extension_grant("delegation", "token")
        .extension_grant("urn:example:grant", "ticket")
        .delegation_grant()
        .start()
        .await
        .unwrap();
    let metadata = Http::new()
        .get(&server.discovery_url(DiscoveryDocument::OpenIdConfiguration))
        .await
        .json();
    assert_eq!(
        metadata["grant_types_supported"],
        json!([
            "client_credentials",
            "password",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "delegation",
            "urn:example:grant"
        ])
    );
}

#[tokio::test]
async fn a_configured_issuer_is_announced_to_test_issuer_checks() {
    let server = TestServer::builder()
        .issuer("https://login.example.com")
        .start()
        .await
        .unwrap();
    assert_eq!(server.issuer(), "https://login.example.com");
    let metadata = Http::new()
        .get(&server.discovery_url(DiscoveryDocument::OpenIdConfiguration))
        .await
        .json();
    assert_eq!(metadata["issuer"], "https://login.example.com");
    // The endpoints stay where the server actually is.
    assert_eq!(metadata["token_endpoint"], server.token_endpoint());
}

#[tokio::test]
async fn the_openid_path_can_answer_404_to_test_the_fallback() {
    let server = TestServer::builder()
        .serve_openid_configuration(false)
        .start()
        .await
        .unwrap();
    let http = Http::new();
    let openid = http
        .get(&server.discovery_url(DiscoveryDocument::OpenIdConfiguration))
        .await;
    assert_eq!(openid.status, StatusCode::NOT_FOUND);
    let oauth = http
        .get(&server.discovery_url(DiscoveryDocument::OAuthAuthorizationServer))
        .await;
    assert_eq!(oauth.status, StatusCode::OK);
    assert_eq!(oauth.json()["issuer"], server.issuer());
    assert_eq!(
        server.discovery_requests_for(DiscoveryDocument::OpenIdConfiguration),
        1
    );
    assert_eq!(
        server.discovery_requests_for(DiscoveryDocument::OAuthAuthorizationServer),
        1
    );
    assert_eq!(server.discovery_requests(), 2);
}

#[tokio::test]
async fn fail_next_discovery_injects_failures_in_order_then_recovers() {
    let server = TestServer::builder().start().await.unwrap();
    let http = Http::new();
    let url = server.discovery_url(DiscoveryDocument::OpenIdConfiguration);
    server.fail_next_discovery(Failure::Status(StatusCode::BAD_GATEWAY));
    let raw = format!(
        r#"{{"issuer":"{}","token_endpoint":"http://evil.example/token"}}"#,
        server.issuer()
    );
    server.fail_next_discovery(Failure::RawBody(raw.clone()));
    let reply = http.get(&url).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    // The queue serves either path.
    let reply = http
        .get(&server.discovery_url(DiscoveryDocument::OAuthAuthorizationServer))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, raw.as_bytes());
    let reply = http.get(&url).await;
    assert_eq!(reply.json()["token_endpoint"], server.token_endpoint());
    assert_eq!(server.discovery_requests(), 3);
    // The token endpoint's queue is separate and untouched.
    assert_eq!(server.token_requests_total(), 0);
}

#[tokio::test]
async fn discovery_documents_are_get_only() {
    let server = TestServer::builder().start().await.unwrap();
    let http = Http::new();
    let request = http::Request::post(server.discovery_url(DiscoveryDocument::OpenIdConfiguration))
        .body(http_body_util::Full::default())
        .unwrap();
    let reply = http.send(request).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers[ALLOW], "GET");
    assert_eq!(server.discovery_requests(), 0);
    // Only the exact paths are documents.
    let reply = http
        .get(&format!("{}/.well-known/other", server.base_url()))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}
