//! tokenwarden against a real authorization server: `oidc-provider` (Node), run from
//! `tests/interop/server.mjs` on a free loopback port, one server per test.
//!
//! Client credentials (HTTP Basic, form post, resource indicators), discovery, users' tokens
//! refreshed with rotation, reuse detection and revocation, a middle tier exchanging its
//! callers' tokens (token exchange, RFC 8693, and a custom `delegation` grant), all through the
//! library's public API; raw HTTP only for what an app does outside it (signing a user in, a
//! stolen refresh token replayed, a user's token revoked) and for checking the outcome at the
//! server (token introspection).
//!
//! Needs `node` and `tests/interop/node_modules` (`npm ci --prefix tests/interop`, which
//! `scripts/test.sh` runs). Without them the tests fail under `CI=true`, and elsewhere pass
//! with a warning on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use common::chain;
use http::StatusCode;
use oidc_provider::{
    API, API1, API2, BILLING_BASIC, BILLING_POST, OidcProvider, REPORTS, SignedIn, WEB,
};
use tokenwarden::core::{BoxFuture, Error as CoreError};
use tokenwarden::oauth::Error as OAuthError;
use tokenwarden::{
    CacheKey, ClientAuth, ClientConfig, ClientCredentials, ExtensionGrant, MemoryUserTokenStore,
    RefreshTokens, RetryPolicy, Revoke, Secret, SubjectToken, TokenExchange, TokenManager,
    TokenParams, UserKey, UserTokenStore, UserTokens, token_types,
};

// --- Client credentials ---------------------------------------------------------------------

#[tokio::test]
async fn client_credentials_with_http_basic_get_a_token_the_server_accepts() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    // The secret has a space, a colon, `+`, `/` and `%`: oidc-provider form-decodes the Basic
    // credentials as RFC 6749 §2.3.1 says, so it accepts them only if they were form-encoded.
    let client = ClientConfig::builder(server.token_endpoint(), BILLING_BASIC.id)
        .client_secret(BILLING_BASIC.secret)
        .auth(ClientAuth::SecretBasic)
        .build()
        .unwrap();
    let manager =
        manager(|m| m.client("billing", ClientCredentials::new(client).scope("api:read")));

    let token = manager.token("billing").await.unwrap();

    let seen = server.introspect(token.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], BILLING_BASIC.id, "{seen}");
    assert_eq!(seen["scope"], "api:read", "{seen}");
    // The token's expiry is the server's: `expires_in` of the response.
    assert_expires_in(&token, Duration::from_secs(600));
    // And it is cached: the same token again.
    assert_eq!(
        manager.token("billing").await.unwrap().secret(),
        token.secret()
    );
}

#[tokio::test]
async fn client_credentials_with_the_secret_in_the_form_get_a_token_the_server_accepts() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    // `+`, `&` and `=` in the secret: it must be form-encoded in the body.
    let client = ClientConfig::builder(server.token_endpoint(), BILLING_POST.id)
        .client_secret(BILLING_POST.secret)
        .auth(ClientAuth::SecretPost)
        .build()
        .unwrap();
    let manager =
        manager(|m| m.client("billing", ClientCredentials::new(client).scope("api:write")));

    let token = manager.token("billing").await.unwrap();

    let seen = server.introspect(token.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], BILLING_POST.id, "{seen}");
    assert_eq!(seen["scope"], "api:write", "{seen}");
}

#[tokio::test]
async fn client_credentials_with_a_resource_indicator_get_a_token_for_that_resource() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    let client = ClientConfig::builder(server.token_endpoint(), BILLING_BASIC.id)
        .client_secret(BILLING_BASIC.secret)
        .build()
        .unwrap();
    let grant = ClientCredentials::new(client)
        .resource(API)
        .scope("api:read");
    let manager = manager(|m| m.client("billing", grant));

    // The configured resource.
    let for_api = manager.token("billing").await.unwrap();
    let seen = server.introspect(for_api.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["aud"], API, "{seen}");
    assert_eq!(seen["scope"], "api:read", "{seen}");

    // Another resource for one request: its own token, in its own cache entry.
    let reports = TokenParams::new().resource(REPORTS).scope("reports:read");
    let for_reports = manager.token_with("billing", &reports).await.unwrap();
    assert_ne!(for_reports.secret(), for_api.secret());
    let seen = server.introspect(for_reports.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["aud"], REPORTS, "{seen}");
    assert_eq!(seen["scope"], "reports:read", "{seen}");
    assert_eq!(
        manager.token("billing").await.unwrap().secret(),
        for_api.secret()
    );
    assert_eq!(
        manager
            .token_with("billing", &reports)
            .await
            .unwrap()
            .secret(),
        for_reports.secret()
    );

    // A resource the server does not know is the server's `invalid_target`, not a token.
    let unknown = TokenParams::new().resource("urn:tokenwarden:test:unknown");
    let error = manager.token_with("billing", &unknown).await.unwrap_err();
    match error.oauth_error() {
        Some(OAuthError::TokenEndpoint {
            status,
            error: code,
            ..
        }) => {
            assert_eq!(*status, StatusCode::BAD_REQUEST, "{}", chain(&error));
            assert_eq!(code, "invalid_target", "{}", chain(&error));
        }
        _ => panic!(
            "expected the server's invalid_target, got: {}",
            chain(&error)
        ),
    }
}

// --- Discovery ------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_configured_by_issuer_finds_the_token_endpoint_in_the_metadata() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    let client = ClientConfig::from_issuer(server.issuer(), BILLING_POST.id)
        .client_secret(BILLING_POST.secret)
        .auth(ClientAuth::SecretPost)
        .build()
        .unwrap();
    let manager =
        manager(|m| m.client("billing", ClientCredentials::new(client).scope("api:read")));

    let token = manager.token("billing").await.unwrap();

    let seen = server.introspect(token.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], BILLING_POST.id, "{seen}");
}

#[tokio::test]
async fn a_wrong_issuer_is_a_discovery_error() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    let token_for_issuer = |issuer: String| async move {
        let client = ClientConfig::from_issuer(&issuer, BILLING_POST.id)
            .client_secret(BILLING_POST.secret)
            .auth(ClientAuth::SecretPost)
            .build()
            .unwrap();
        let manager = manager(|m| m.client("billing", ClientCredentials::new(client)));
        manager.token("billing").await.unwrap_err()
    };

    // An issuer the server does not serve metadata for: neither well-known document exists.
    let error = token_for_issuer(format!("{}/tenant-b", server.issuer())).await;
    assert!(
        matches!(error.oauth_error(), Some(OAuthError::Discovery { .. })),
        "expected a discovery error, got: {}",
        chain(&error)
    );

    // The same server under another name: its metadata names its own issuer, which is not the
    // one configured (RFC 8414 §3.3), so its endpoints are not used.
    let port = server.port();
    let error = token_for_issuer(format!("http://localhost:{port}")).await;
    match error.oauth_error() {
        Some(OAuthError::Discovery { problem, .. }) => {
            assert!(problem.contains("another issuer"), "{}", chain(&error));
        }
        _ => panic!(
            "expected a discovery error for the issuer mismatch, got: {}",
            chain(&error)
        ),
    }
}

// --- Users' tokens --------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_user_access_token_is_refreshed_and_the_refresh_token_rotates() {
    // Users' access tokens live 3 s here, so the test can wait for one to expire.
    let Some(server) = OidcProvider::start_with(&[("INTEROP_ACCESS_TOKEN_TTL", "3")]).await else {
        return;
    };
    let store = WatchedStore::default();
    let manager = user_manager(&server, &store);
    let alice = UserKey::new("session-alice");
    let signed_in = server.sign_in("alice").await;
    manager
        .sign_in(WEB.id, &alice, signed_in.user_tokens())
        .await
        .unwrap();

    // Wait until the server itself no longer accepts the access token.
    tokio::time::sleep_until(signed_in.expires_at).await;
    let seen = server.introspect(&signed_in.access_token).await;
    assert_eq!(
        seen["active"], false,
        "the signed-in access token outlived its TTL: {seen}"
    );

    let refreshed = manager.user_token(WEB.id, &alice).await.unwrap();

    assert_ne!(refreshed.expose_secret(), signed_in.access_token);
    let seen = server.introspect(refreshed.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], "alice", "{seen}");
    assert_eq!(seen["client_id"], WEB.id, "{seen}");
    assert_eq!(seen["aud"], API, "{seen}");
    // The refresh rotated the refresh token; the store holds the new one with the new access
    // token, and the server has consumed the old one.
    let stored = store
        .tokens_of(&signed_in)
        .expect("alice's tokens are stored");
    assert_eq!(stored.access_token().secret(), refreshed.secret());
    let new_refresh = stored
        .refresh_token()
        .expect("a refresh token is stored")
        .expose_secret();
    assert_ne!(new_refresh, signed_in.refresh_token);
    let seen = server.introspect(&signed_in.refresh_token).await;
    assert_eq!(
        seen["active"], false,
        "the used refresh token is still active: {seen}"
    );
    let seen = server.introspect(new_refresh).await;
    assert_eq!(seen["active"], true, "{seen}");
}

#[tokio::test]
async fn each_refresh_rotates_the_stored_refresh_token() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    let store = WatchedStore::default();
    let manager = user_manager(&server, &store);
    let alice = UserKey::new("session-alice");
    let signed_in = server.sign_in("alice").await;
    manager
        .sign_in(WEB.id, &alice, signed_in.user_tokens())
        .await
        .unwrap();
    let stored_refresh = || {
        let stored = store
            .tokens_of(&signed_in)
            .expect("alice's tokens are stored");
        stored
            .refresh_token()
            .expect("a refresh token is stored")
            .expose_secret()
            .to_owned()
    };

    // A valid stored access token is handed out as it is: no refresh.
    let first = manager.user_token(WEB.id, &alice).await.unwrap();
    assert_eq!(first.expose_secret(), signed_in.access_token);
    assert_eq!(stored_refresh(), signed_in.refresh_token);

    // Each renewal sends the stored refresh token and stores the one the server rotated to.
    let force = TokenParams::new().force_renewal();
    let mut refresh_tokens = vec![signed_in.refresh_token.clone()];
    let mut access_tokens = vec![first];
    for _ in 0..2 {
        let renewed = manager
            .user_token_with(WEB.id, &alice, &force)
            .await
            .unwrap();
        assert!(access_tokens.iter().all(|t| t.secret() != renewed.secret()));
        let rotated = stored_refresh();
        assert!(
            !refresh_tokens.contains(&rotated),
            "the refresh token did not rotate"
        );
        access_tokens.push(renewed);
        refresh_tokens.push(rotated);
    }
    // The latest access token is cached.
    let again = manager.user_token(WEB.id, &alice).await.unwrap();
    assert_eq!(again.secret(), access_tokens[2].secret());

    // At the server: the used refresh tokens are consumed, the stored one is live.
    for used in &refresh_tokens[..2] {
        let seen = server.introspect(used).await;
        assert_eq!(
            seen["active"], false,
            "a used refresh token is still active: {seen}"
        );
    }
    let seen = server.introspect(&refresh_tokens[2]).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], "alice", "{seen}");
}

#[tokio::test]
async fn a_replayed_refresh_token_revokes_the_family_and_the_user_must_sign_in_again() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    let store = WatchedStore::default();
    let manager = user_manager(&server, &store);
    let alice = UserKey::new("session-alice");
    let signed_in = server.sign_in("alice").await;
    manager
        .sign_in(WEB.id, &alice, signed_in.user_tokens())
        .await
        .unwrap();
    let force = TokenParams::new().force_renewal();
    manager
        .user_token_with(WEB.id, &alice, &force)
        .await
        .unwrap();
    let rotated = store
        .tokens_of(&signed_in)
        .unwrap()
        .refresh_token()
        .unwrap()
        .clone();
    assert_ne!(rotated.expose_secret(), signed_in.refresh_token);

    // Someone replays the first refresh token, already used by the rotation above.
    let (status, body) = server.refresh(&signed_in.refresh_token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    // oidc-provider's reuse detection revoked the whole grant: the rotated token too.
    let seen = server.introspect(rotated.expose_secret()).await;
    assert_eq!(
        seen["active"], false,
        "the family survived the replay: {seen}"
    );

    // The library's next refresh is refused: the user must sign in again, and their tokens
    // are gone from the store.
    let error = manager
        .user_token_with(WEB.id, &alice, &force)
        .await
        .unwrap_err();
    assert!(
        matches!(error, tokenwarden::Error::ReauthenticationRequired { .. }),
        "expected ReauthenticationRequired, got: {}",
        chain(&error)
    );
    match error.oauth_error() {
        Some(OAuthError::TokenEndpoint {
            status,
            error: code,
            ..
        }) => {
            assert_eq!(*status, StatusCode::BAD_REQUEST, "{}", chain(&error));
            assert_eq!(code, "invalid_grant", "{}", chain(&error));
        }
        _ => panic!(
            "expected the server's invalid_grant as the cause, got: {}",
            chain(&error)
        ),
    }
    assert_eq!(
        store.tokens_of(&signed_in),
        None,
        "the refused tokens are still stored"
    );
    // And no token is handed out for alice any more, not even the one cached in memory (which
    // the server revoked with the family).
    let error = manager.user_token(WEB.id, &alice).await.unwrap_err();
    assert!(
        error.is_reauthentication_required(),
        "got: {}",
        chain(&error)
    );
}

#[tokio::test]
async fn sign_out_revokes_the_refresh_token_at_the_server_and_forgets_the_user() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    let store = WatchedStore::default();
    let manager = user_manager(&server, &store);

    // Alice signs in, her tokens are refreshed once, and she signs out.
    let alice = UserKey::new("session-alice");
    let alice_signed_in = server.sign_in("alice").await;
    manager
        .sign_in(WEB.id, &alice, alice_signed_in.user_tokens())
        .await
        .unwrap();
    let force = TokenParams::new().force_renewal();
    let access = manager
        .user_token_with(WEB.id, &alice, &force)
        .await
        .unwrap();
    let refresh = store
        .tokens_of(&alice_signed_in)
        .unwrap()
        .refresh_token()
        .unwrap()
        .clone();

    manager
        .sign_out(WEB.id, &alice, Revoke::RefreshToken)
        .await
        .unwrap();

    // Revoked at the server (RFC 7009): the refresh token, and with it (oidc-provider revokes
    // the grant) the access token.
    let seen = server.introspect(refresh.expose_secret()).await;
    assert_eq!(
        seen["active"], false,
        "the refresh token survived sign-out: {seen}"
    );
    let seen = server.introspect(access.expose_secret()).await;
    assert_eq!(
        seen["active"], false,
        "the access token survived sign-out: {seen}"
    );
    // Forgotten here.
    assert_eq!(store.tokens_of(&alice_signed_in), None);
    let error = manager.user_token(WEB.id, &alice).await.unwrap_err();
    assert!(
        error.is_reauthentication_required(),
        "got: {}",
        chain(&error)
    );

    // Bob signs out revoking both tokens, each with its own request. oidc-provider revoked the
    // access token with the refresh token's grant, so it answers the second request for a token
    // it no longer knows with 200 (RFC 7009 §2.2), and sign-out succeeds.
    let bob = UserKey::new("session-bob");
    let bob_signed_in = server.sign_in("bob").await;
    manager
        .sign_in(WEB.id, &bob, bob_signed_in.user_tokens())
        .await
        .unwrap();
    manager
        .sign_out(WEB.id, &bob, Revoke::RefreshAndAccessToken)
        .await
        .unwrap();
    for token in [&bob_signed_in.refresh_token, &bob_signed_in.access_token] {
        let seen = server.introspect(token).await;
        assert_eq!(seen["active"], false, "a token survived sign-out: {seen}");
    }
    assert_eq!(store.tokens_of(&bob_signed_in), None);

    // Carol's app kept no refresh token: sign-out revokes her access token (hint
    // `access_token`). oidc-provider revokes only that token; the grant's refresh token, which
    // the app never had, lives on (RFC 7009 leaves that to the server).
    let carol = UserKey::new("session-carol");
    let carol_signed_in = server.sign_in("carol").await;
    let access_only = UserTokens::new(carol_signed_in.user_tokens().access_token().clone(), None);
    manager.sign_in(WEB.id, &carol, access_only).await.unwrap();
    manager
        .sign_out(WEB.id, &carol, Revoke::RefreshToken)
        .await
        .unwrap();
    let seen = server.introspect(&carol_signed_in.access_token).await;
    assert_eq!(
        seen["active"], false,
        "the access token survived sign-out: {seen}"
    );
    assert!(store.inner.is_empty(), "{:?}", store.inner);
}

// --- Token exchange ---------------------------------------------------------------------

#[tokio::test]
async fn token_exchange_trades_a_users_token_for_the_middle_tiers_token_for_api2() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    // The middle tier (API 1) calls API 2 for the user whose token it was called with: by
    // resource indicator, and by audience asking for an access token explicitly.
    let by_resource = TokenExchange::new(api1(&server))
        .resource(API2)
        .scope("api2:read");
    let by_audience = TokenExchange::new(api1(&server))
        .audience(API2)
        .requested_token_type(token_types::ACCESS_TOKEN)
        .scope("api2:read api2:write");
    let manager = manager(|m| {
        m.client("api2", by_resource)
            .client("api2-by-audience", by_audience)
    });
    let alice = server.sign_in("alice").await;

    let token = manager
        .token_with("api2", &acting_for(&alice.access_token))
        .await
        .unwrap();

    assert_ne!(token.expose_secret(), alice.access_token);
    let seen = server.introspect(token.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], "alice", "{seen}");
    assert_eq!(seen["client_id"], API1.id, "{seen}");
    assert_eq!(seen["aud"], API2, "{seen}");
    assert_eq!(seen["scope"], "api2:read", "{seen}");
    assert_eq!(seen["act"]["sub"], API1.id, "{seen}");
    assert_expires_in(&token, Duration::from_secs(300));
    // The user's own token is untouched: still hers, for API 1's resource.
    let seen = server.introspect(&alice.access_token).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["client_id"], WEB.id, "{seen}");
    assert_eq!(seen["aud"], API, "{seen}");

    // The same subject again: the cached token, no second exchange.
    assert_eq!(manager.metrics().token_requests, 1);
    let again = manager
        .token_with("api2", &acting_for(&alice.access_token))
        .await
        .unwrap();
    assert_eq!(again.secret(), token.secret());
    assert_eq!(manager.metrics().token_requests, 1);

    // Another user: another exchange, another token, for him.
    let bob = server.sign_in("bob").await;
    let for_bob = manager
        .token_with("api2", &acting_for(&bob.access_token))
        .await
        .unwrap();
    assert_ne!(for_bob.secret(), token.secret());
    assert_eq!(manager.metrics().token_requests, 2);
    let seen = server.introspect(for_bob.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], "bob", "{seen}");
    assert_eq!(seen["client_id"], API1.id, "{seen}");

    // By audience, with the type asked for (the response's issued_token_type is checked).
    let by_audience = manager
        .token_with("api2-by-audience", &acting_for(&alice.access_token))
        .await
        .unwrap();
    assert_ne!(by_audience.secret(), token.secret());
    assert_eq!(manager.metrics().token_requests, 3);
    let seen = server.introspect(by_audience.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], "alice", "{seen}");
    assert_eq!(seen["client_id"], API1.id, "{seen}");
    assert_eq!(seen["aud"], API2, "{seen}");
    assert_eq!(seen["scope"], "api2:read api2:write", "{seen}");
}

#[tokio::test]
async fn the_delegation_grant_trades_a_users_token_for_the_middle_tiers_token_for_api2() {
    let Some(server) = OidcProvider::start().await else {
        return;
    };
    // Seed 001's `grant_type=delegation&token=…&scope=…`; the server's default resource is API 2.
    let delegation = ExtensionGrant::new(api1(&server), "delegation")
        .subject_token_param("token")
        .scope("api2:write");
    let manager = manager(|m| m.client("api2", delegation));
    let alice = server.sign_in("alice").await;

    let token = manager
        .token_with("api2", &acting_for(&alice.access_token))
        .await
        .unwrap();

    assert_ne!(token.expose_secret(), alice.access_token);
    let seen = server.introspect(token.expose_secret()).await;
    assert_eq!(seen["active"], true, "{seen}");
    assert_eq!(seen["sub"], "alice", "{seen}");
    assert_eq!(seen["client_id"], API1.id, "{seen}");
    assert_eq!(seen["aud"], API2, "{seen}");
    assert_eq!(seen["scope"], "api2:write", "{seen}");
    assert_eq!(seen["act"]["sub"], API1.id, "{seen}");

    // The same subject again: one exchange.
    let again = manager
        .token_with("api2", &acting_for(&alice.access_token))
        .await
        .unwrap();
    assert_eq!(again.secret(), token.secret());
    assert_eq!(manager.metrics().token_requests, 1);
}

#[tokio::test]
async fn a_revoked_expired_or_unknown_subject_token_is_rejected_by_the_server() {
    // Users' access tokens live 2 s here, so the test can wait for one to expire.
    let Some(server) = OidcProvider::start_with(&[("INTEROP_ACCESS_TOKEN_TTL", "2")]).await else {
        return;
    };
    let exchange = TokenExchange::new(api1(&server)).resource(API2);
    let delegation = ExtensionGrant::new(api1(&server), "delegation").subject_token_param("token");
    let manager = manager(|m| {
        m.client("exchange", exchange)
            .client("delegation", delegation)
    });
    let alice = server.sign_in("alice").await;
    let bob = server.sign_in("bob").await;

    // Alice's token is revoked (she signed out) before the middle tier is called with it.
    server.revoke(WEB, &alice.access_token).await;
    let seen = server.introspect(&alice.access_token).await;
    assert_eq!(seen["active"], false, "{seen}");

    // Opaque tokens: the library cannot tell; the server refuses them (invalid_grant), which
    // is the subject token's fault, not the middle tier's.
    let made_up = "not-a-token-this-server-issued";
    for client in ["exchange", "delegation"] {
        for subject in [alice.access_token.as_str(), made_up] {
            let error = manager
                .token_with(client, &acting_for(subject))
                .await
                .unwrap_err();
            assert_subject_token_rejected(&error);
        }
    }
    // Each refusal was one request: invalid_grant is not retried.
    assert_eq!(manager.metrics().token_requests, 4);

    // Bob's token expires at the server.
    tokio::time::sleep_until(bob.expires_at).await;
    let seen = server.introspect(&bob.access_token).await;
    assert_eq!(seen["active"], false, "{seen}");
    for client in ["exchange", "delegation"] {
        let error = manager
            .token_with(client, &acting_for(&bob.access_token))
            .await
            .unwrap_err();
        assert_subject_token_rejected(&error);
    }
}

// --- Helpers --------------------------------------------------------------------------------

/// A manager built by `register`, retrying quickly.
fn manager(
    register: impl FnOnce(tokenwarden::TokenManagerBuilder) -> tokenwarden::TokenManagerBuilder,
) -> TokenManager {
    register(
        TokenManager::builder().retry(RetryPolicy::new(2).base_delay(Duration::from_millis(5))),
    )
    .build()
    .unwrap()
}

/// A manager for the `web` client, configured by issuer, keeping users' tokens in `store`.
fn user_manager(server: &OidcProvider, store: &WatchedStore) -> TokenManager {
    let web = ClientConfig::from_issuer(server.issuer(), WEB.id)
        .client_secret(WEB.secret)
        .build()
        .unwrap();
    manager(|m| {
        m.user_client(WEB.id, RefreshTokens::new(web))
            .user_token_store(store.clone())
    })
}

/// The middle tier's client (`api1`) at the server's token endpoint.
fn api1(server: &OidcProvider) -> ClientConfig {
    ClientConfig::builder(server.token_endpoint(), API1.id)
        .client_secret(API1.secret)
        .build()
        .unwrap()
}

/// The parameters of a request the middle tier makes for the caller who sent `access_token`.
fn acting_for(access_token: &str) -> TokenParams {
    TokenParams::new().subject_token(SubjectToken::access_token(access_token).unwrap())
}

/// `error` is the server's `invalid_grant` for the subject token.
fn assert_subject_token_rejected(error: &tokenwarden::Error) {
    assert!(
        matches!(error, tokenwarden::Error::SubjectTokenRejected { .. }),
        "expected SubjectTokenRejected, got: {}",
        chain(error)
    );
    assert!(error.is_subject_token_rejected());
    match error.oauth_error() {
        Some(OAuthError::TokenEndpoint {
            status,
            error: code,
            ..
        }) => {
            assert_eq!(*status, StatusCode::BAD_REQUEST, "{}", chain(error));
            assert_eq!(code, "invalid_grant", "{}", chain(error));
        }
        _ => panic!(
            "expected the server's invalid_grant as the cause, got: {}",
            chain(error)
        ),
    }
}

/// `token` expires `lifetime` from now, give or take the test's own time.
fn assert_expires_in(token: &tokenwarden::AccessToken, lifetime: Duration) {
    let expires_at = token.expires_at().expect("the token has an expiry");
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        left <= lifetime && left + Duration::from_secs(30) >= lifetime,
        "expected about {lifetime:?} left, got {left:?}"
    );
}

/// A memory store that remembers which record each sign-in made, so a test can read a user's
/// stored tokens as the manager left them.
#[derive(Clone, Debug, Default)]
struct WatchedStore {
    inner: MemoryUserTokenStore,
    /// The key of each sign-in, by the refresh token it stored.
    sign_ins: Arc<Mutex<Vec<(Secret, CacheKey)>>>,
}

impl WatchedStore {
    /// What is stored now for the user and client that `signed_in` made a record for.
    fn tokens_of(&self, signed_in: &SignedIn) -> Option<UserTokens> {
        let sign_ins = self.sign_ins.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, key) = sign_ins
            .iter()
            .find(|(refresh, _)| refresh.expose_secret() == signed_in.refresh_token)
            .expect("the manager stored this sign-in");
        let key = key.clone();
        drop(sign_ins);
        // The memory store answers at once; the future only wraps its answer.
        futures_util::FutureExt::now_or_never(self.inner.get(&key))
            .expect("the memory store answers at once")
            .unwrap()
    }
}

impl UserTokenStore for WatchedStore {
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<UserTokens>, CoreError>> {
        self.inner.get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), CoreError>> {
        if let Some(refresh) = tokens.refresh_token() {
            self.sign_ins
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((refresh.clone(), key.clone()));
        }
        self.inner.put(key, tokens)
    }

    fn replace_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<bool, CoreError>> {
        self.inner.replace_if(key, expected, tokens)
    }

    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), CoreError>> {
        self.inner.remove(key)
    }

    fn remove_if<'a>(
        &'a self,
        key: &'a CacheKey,
        expected: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, CoreError>> {
        self.inner.remove_if(key, expected)
    }
}

/// The interop authorization server: `node tests/interop/server.mjs` as a child process.
mod oidc_provider {
    use std::io::Write as _;
    use std::net::{Ipv4Addr, TcpListener};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
    use http::{Method, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;
    use tokenwarden::{AccessToken, Secret, TokenType, UserTokens};
    use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
    use tokio::process::{Child, ChildStdin, Command};
    use tokio::time::Instant;

    use crate::common::{HttpClient, http_client};

    /// A client registered in `tests/interop/clients.mjs`.
    #[derive(Clone, Copy)]
    pub(crate) struct Registered {
        pub(crate) id: &'static str,
        pub(crate) secret: &'static str,
    }

    /// Client credentials with HTTP Basic; the secret needs form-encoding.
    pub(crate) const BILLING_BASIC: Registered = Registered {
        id: "billing-basic",
        secret: "basic s3cret: with+plus/slash%percent",
    };
    /// Client credentials with the secret in the form.
    pub(crate) const BILLING_POST: Registered = Registered {
        id: "billing-post",
        secret: "post-s3cret+&=",
    };
    /// The web app acting for users (HTTP Basic): the test sign-in grant and refresh tokens.
    pub(crate) const WEB: Registered = Registered {
        id: "web",
        secret: "web-s3cret",
    };
    /// The middle tier (API 1, HTTP Basic): token exchange and the `delegation` grant, for API 2.
    pub(crate) const API1: Registered = Registered {
        id: "api1",
        secret: "api1-s3cret",
    };
    /// The resource server that introspects tokens.
    const INTROSPECTOR: Registered = Registered {
        id: "introspector",
        secret: "introspector-s3cret",
    };

    /// The resource servers of `tests/interop/resources.mjs`; users' tokens are for `API`.
    pub(crate) const API: &str = "urn:tokenwarden:test:api";
    pub(crate) const REPORTS: &str = "urn:tokenwarden:test:reports";
    /// API 2, which the middle tier calls for users; exchanged tokens are for it by default.
    pub(crate) const API2: &str = "urn:tokenwarden:test:api2";

    /// The test-only grant of `tests/interop/grants/sign-in.mjs`.
    const SIGN_IN_GRANT: &str = "urn:tokenwarden:test:sign-in";

    const SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/server.mjs");
    const PACKAGES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/node_modules/oidc-provider"
    );
    /// Node and oidc-provider start in well under a second; this bounds a loaded CI machine.
    const READY_TIMEOUT: Duration = Duration::from_secs(30);
    /// How many free ports are tried when another process takes one between probe and bind.
    const PORT_ATTEMPTS: usize = 5;
    /// How long one HTTP call to the server may take.
    const CALL_TIMEOUT: Duration = Duration::from_secs(10);

    /// oidc-provider on `127.0.0.1`, killed when dropped (and, should this process die first,
    /// exiting when its stdin closes). Its log is printed when a test fails.
    pub(crate) struct OidcProvider {
        port: u16,
        issuer: String,
        token_endpoint: String,
        introspection_endpoint: String,
        revocation_endpoint: String,
        _child: Child,
        _stdin: ChildStdin,
        log: Arc<Mutex<String>>,
        http: HttpClient,
    }

    /// What the test sign-in returned, as an app would keep it.
    pub(crate) struct SignedIn {
        pub(crate) access_token: String,
        pub(crate) refresh_token: String,
        /// When the access token expires (by the response's `expires_in`, counted from when the
        /// response arrived, so the server considers it expired by then).
        pub(crate) expires_at: Instant,
        expires_at_system: SystemTime,
        scope: String,
    }

    impl SignedIn {
        /// The tokens as `TokenManager::sign_in` takes them.
        pub(crate) fn user_tokens(&self) -> UserTokens {
            let access = AccessToken::new(self.access_token.clone(), TokenType::Bearer)
                .unwrap()
                .with_expires_at(self.expires_at_system)
                .with_scope(self.scope.clone());
            UserTokens::new(access, Some(Secret::new(self.refresh_token.clone())))
        }
    }

    enum StartError {
        PortTaken(String),
        Failed(String),
    }

    impl OidcProvider {
        /// A server with the default settings; `None` when Node or the packages are missing
        /// outside CI (the test is then skipped, loudly).
        pub(crate) async fn start() -> Option<OidcProvider> {
            OidcProvider::start_with(&[]).await
        }

        /// A server with settings from environment variables (see `server.mjs`).
        pub(crate) async fn start_with(env: &[(&str, &str)]) -> Option<OidcProvider> {
            if let Err(missing) = prerequisites().await {
                if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                    panic!(
                        "the interop tests need {missing} (CI=true: a missing dependency fails, never skips)"
                    );
                }
                // Past the test harness's output capture, so the skip is seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED interop test: {missing}; run scripts/test.sh or `npm ci --prefix tests/interop` ***\n"
                );
                return None;
            }
            let mut last = String::new();
            for _ in 0..PORT_ATTEMPTS {
                match OidcProvider::spawn(free_port(), env).await {
                    Ok(server) => return Some(server),
                    Err(StartError::PortTaken(log)) => last = log,
                    Err(StartError::Failed(message)) => panic!("{message}"),
                }
            }
            panic!("the interop server found no free port in {PORT_ATTEMPTS} attempts: {last}");
        }

        async fn spawn(port: u16, env: &[(&str, &str)]) -> Result<OidcProvider, StartError> {
            let mut child = Command::new("node")
                .arg(SERVER_SCRIPT)
                .args(["--port", &port.to_string(), "--exit-with-stdin"])
                .envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    StartError::Failed(format!("could not start node {SERVER_SCRIPT}: {e}"))
                })?;
            let stdin = child.stdin.take().expect("stdin is piped");
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
            let log = Arc::new(Mutex::new(String::new()));
            let stderr_drained = tokio::spawn(drain_into(
                child.stderr.take().expect("stderr is piped"),
                log.clone(),
            ));

            let ready = tokio::time::timeout(READY_TIMEOUT, async {
                while let Ok(Some(line)) = stdout.next_line().await {
                    if let Some(issuer) = line.strip_prefix("ready ") {
                        return Some(issuer.to_owned());
                    }
                    append(&log, &line);
                }
                None
            })
            .await;
            let issuer = match ready {
                Ok(Some(issuer)) => issuer,
                Ok(None) => {
                    // It exited: wait for its last words, then say why.
                    let _ = child.wait().await;
                    let _ = tokio::time::timeout(READY_TIMEOUT, stderr_drained).await;
                    let log = text(&log);
                    if log.contains("EADDRINUSE") {
                        return Err(StartError::PortTaken(log));
                    }
                    return Err(StartError::Failed(format!(
                        "the interop server exited before it was ready:\n{log}"
                    )));
                }
                Err(_elapsed) => {
                    return Err(StartError::Failed(format!(
                        "the interop server was not ready within {READY_TIMEOUT:?}:\n{}",
                        text(&log)
                    )));
                }
            };
            assert_eq!(
                issuer,
                format!("http://127.0.0.1:{port}"),
                "the server's issuer"
            );
            // Keep reading what it prints, so it never blocks on a full pipe.
            tokio::spawn(drain_into(stdout.into_inner(), log.clone()));

            let mut server = OidcProvider {
                port,
                issuer,
                token_endpoint: String::new(),
                introspection_endpoint: String::new(),
                revocation_endpoint: String::new(),
                _child: child,
                _stdin: stdin,
                log,
                http: http_client(),
            };
            // The endpoints the raw calls use, from the server's own discovery document.
            let discovery = format!("{}/.well-known/openid-configuration", server.issuer);
            let (status, metadata) = server.call(Method::GET, &discovery, None, None).await;
            assert_eq!(status, StatusCode::OK, "{metadata}");
            assert_eq!(metadata["issuer"], server.issuer.as_str(), "{metadata}");
            let endpoint = |name: &str| match metadata[name].as_str() {
                Some(url) => url.to_owned(),
                None => panic!("the metadata has no {name}: {metadata}"),
            };
            server.token_endpoint = endpoint("token_endpoint");
            server.introspection_endpoint = endpoint("introspection_endpoint");
            server.revocation_endpoint = endpoint("revocation_endpoint");
            Ok(server)
        }

        /// `http://127.0.0.1:PORT`.
        pub(crate) fn issuer(&self) -> &str {
            &self.issuer
        }

        pub(crate) fn port(&self) -> u16 {
            self.port
        }

        pub(crate) fn token_endpoint(&self) -> &str {
            &self.token_endpoint
        }

        /// Signs `username` in with the test grant as the web app: what its authorization-code
        /// flow would have returned.
        pub(crate) async fn sign_in(&self, username: &str) -> SignedIn {
            let form = [("grant_type", SIGN_IN_GRANT), ("username", username)];
            let (status, body) = self.post_form(&self.token_endpoint, WEB, &form).await;
            let received = (Instant::now(), SystemTime::now());
            assert_eq!(status, StatusCode::OK, "sign-in of {username}: {body}");
            let text = |name: &str| match body[name].as_str() {
                Some(value) => value.to_owned(),
                None => panic!("the sign-in response has no {name}: {body}"),
            };
            let expires_in = Duration::from_secs(body["expires_in"].as_u64().expect("expires_in"));
            SignedIn {
                access_token: text("access_token"),
                refresh_token: text("refresh_token"),
                expires_at: received.0 + expires_in,
                expires_at_system: received.1 + expires_in,
                scope: text("scope"),
            }
        }

        /// A refresh request with `refresh_token`, sent as the web app but outside the library
        /// (a replay, for instance): the status and the JSON body.
        pub(crate) async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ];
            self.post_form(&self.token_endpoint, WEB, &form).await
        }

        /// Revokes `token` (RFC 7009) as `client`, which it was issued to, outside the library
        /// (an app signing a user out on its own, say).
        pub(crate) async fn revoke(&self, client: Registered, token: &str) {
            let (status, body) = self
                .post_form(&self.revocation_endpoint, client, &[("token", token)])
                .await;
            assert_eq!(status, StatusCode::OK, "revocation: {body}");
        }

        /// What the server says of `token` (RFC 7662), asked by the introspecting resource server.
        pub(crate) async fn introspect(&self, token: &str) -> Value {
            let (status, body) = self
                .post_form(
                    &self.introspection_endpoint,
                    INTROSPECTOR,
                    &[("token", token)],
                )
                .await;
            assert_eq!(status, StatusCode::OK, "introspection: {body}");
            body
        }

        async fn post_form(
            &self,
            url: &str,
            client: Registered,
            form: &[(&str, &str)],
        ) -> (StatusCode, Value) {
            let body = form
                .iter()
                .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
                .collect::<Vec<_>>()
                .join("&");
            let basic = format!(
                "Basic {}",
                base64(
                    format!("{}:{}", form_encode(client.id), form_encode(client.secret)).as_bytes()
                )
            );
            self.call(Method::POST, url, Some(basic), Some(body)).await
        }

        async fn call(
            &self,
            method: Method,
            url: &str,
            authorization: Option<String>,
            form: Option<String>,
        ) -> (StatusCode, Value) {
            let mut request = Request::builder()
                .method(method)
                .uri(url)
                .header(ACCEPT, "application/json");
            if let Some(authorization) = authorization {
                request = request.header(AUTHORIZATION, authorization);
            }
            if form.is_some() {
                request = request.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
            }
            let request = request
                .body(Full::new(Bytes::from(form.unwrap_or_default())))
                .unwrap();
            let exchange = async {
                let response = self.http.request(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let json = if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap_or_else(|_| {
                        panic!("{url} answered {status} without JSON: {body:?}")
                    })
                };
                (status, json)
            };
            tokio::time::timeout(CALL_TIMEOUT, exchange)
                .await
                .unwrap_or_else(|_| panic!("{url} did not answer within {CALL_TIMEOUT:?}"))
        }
    }

    impl Drop for OidcProvider {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!(
                    "--- interop server ({}) log ---\n{}",
                    self.issuer,
                    text(&self.log)
                );
            }
        }
    }

    /// Node on the PATH and the packages installed, or what is missing.
    async fn prerequisites() -> Result<(), String> {
        let node = Command::new("node")
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await;
        match node {
            Ok(output) if output.status.success() => {}
            Ok(output) => {
                return Err(format!(
                    "a working `node` (node --version: {})",
                    output.status
                ));
            }
            Err(e) => return Err(format!("`node` on the PATH ({e})")),
        }
        if !std::path::Path::new(PACKAGES).is_dir() {
            return Err(format!("{PACKAGES} (npm ci --prefix tests/interop)"));
        }
        Ok(())
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
        listener.local_addr().expect("a bound address").port()
    }

    async fn drain_into(stream: impl AsyncRead + Unpin, log: Arc<Mutex<String>>) {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            append(&log, &line);
        }
    }

    fn append(log: &Mutex<String>, line: &str) {
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        log.push_str(line);
        log.push('\n');
    }

    fn text(log: &Mutex<String>) -> String {
        log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `application/x-www-form-urlencoded` encoding of one name or value.
    fn form_encode(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for byte in value.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(byte as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    }

    /// Standard Base64 with padding (RFC 4648 §4), for the Basic credentials of raw calls.
    fn base64(input: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let bytes = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn raw_calls_encode_like_the_rfcs() {
        // RFC 4648 §10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(form_encode("a b+c&d=é"), "a+b%2Bc%26d%3D%C3%A9");
    }
}
