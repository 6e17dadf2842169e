//! A web app acting for its signed-in users: their tokens stored at sign-in, the access token
//! refreshed with the refresh token (one refresh per user however many requests need it), the
//! rotated refresh token stored atomically, `invalid_grant` answered with
//! `ReauthenticationRequired` and the stored tokens gone, sign-out revoking at the server, and
//! the layer sending each request with its own user's token and never without one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{CLIENT, SECRET, client_config, http_client};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokenwarden::{
    AccessToken, AccessTokenLayer, ClientConfig, Clock, ManualClock, MemoryUserTokenStore,
    RefreshTokens, Revoke, Secret, TokenManager, TokenManagerBuilder, TokenParams, TokenType,
    UserKey, UserTokenStore, UserTokens,
};
use tokenwarden_testkit::{RefreshTokenUsage, SignedIn, TestServer};
use tower::{ServiceBuilder, ServiceExt};

const WEB: &str = "web";

async fn server() -> TestServer {
    TestServer::builder()
        .client(CLIENT, SECRET)
        .user("alice", "alice-password")
        .user("bob", "bob-password")
        .start()
        .await
        .unwrap()
}

/// A manager with the user client `web` (the test server's client, with its revocation
/// endpoint) and `store`.
fn manager_builder(server: &TestServer, store: &MemoryUserTokenStore) -> TokenManagerBuilder {
    let config = ClientConfig::builder(&server.token_endpoint(), CLIENT)
        .client_secret(SECRET)
        .revocation_endpoint(&server.revocation_endpoint())
        .build()
        .unwrap();
    TokenManager::builder()
        .user_client(WEB, RefreshTokens::new(config))
        .user_token_store(store.clone())
}

/// What the app does after the user signed in: the tokens as the server gave them.
fn tokens(signed_in: &SignedIn, now: SystemTime) -> UserTokens {
    let access = AccessToken::new(signed_in.access_token.as_str(), TokenType::Bearer)
        .unwrap()
        .with_expires_at(now + signed_in.expires_in);
    UserTokens::new(access, Some(Secret::new(signed_in.refresh_token.as_str())))
}

/// The store's record of `user`.
async fn stored(
    manager: &TokenManager,
    store: &MemoryUserTokenStore,
    user: &UserKey,
) -> Option<UserTokens> {
    let key = manager.user_key(WEB, user).unwrap();
    store.get(&key).await.unwrap()
}

#[tokio::test]
async fn a_refresh_rotates_the_refresh_token_in_the_store() {
    let server = server().await;
    let store = MemoryUserTokenStore::default();
    let manager = manager_builder(&server, &store).build().unwrap();
    let alice = UserKey::new("alice-session");
    let signed_in = server.sign_in(CLIENT, "alice");
    manager
        .sign_in(WEB, &alice, tokens(&signed_in, SystemTime::now()))
        .await
        .unwrap();

    // A fresh access token is the stored one: no refresh.
    let first = manager.user_token(WEB, &alice).await.unwrap();
    assert_eq!(first.expose_secret(), signed_in.access_token);
    assert_eq!(server.refresh_requests(CLIENT), 0);

    let forced = TokenParams::new().force_renewal();
    let second = manager.user_token_with(WEB, &alice, &forced).await.unwrap();
    assert_ne!(second.secret(), first.secret());
    assert_eq!(server.refresh_requests(CLIENT), 1);
    let record = stored(&manager, &store, &alice).await.unwrap();
    assert_eq!(record.access_token().secret(), second.secret());
    let rotated = record.refresh_token().unwrap().clone();
    assert_ne!(rotated.expose_secret(), signed_in.refresh_token, "rotated");
    assert_eq!(store.len(), 1);

    // The next refresh sends the rotated token, and works.
    manager.user_token_with(WEB, &alice, &forced).await.unwrap();
    assert_eq!(
        server
            .last_token_request(CLIENT)
            .unwrap()
            .field("refresh_token"),
        Some(rotated.expose_secret())
    );
    assert_eq!(server.reuse_detections(), 0);
}

#[tokio::test]
async fn reuse_of_an_old_refresh_token_signs_the_user_out() {
    let server = server().await;
    let store = MemoryUserTokenStore::default();
    let manager = manager_builder(&server, &store).build().unwrap();
    let alice = UserKey::new("alice-session");
    let signed_in = server.sign_in(CLIENT, "alice");
    manager
        .sign_in(WEB, &alice, tokens(&signed_in, SystemTime::now()))
        .await
        .unwrap();
    let forced = TokenParams::new().force_renewal();
    manager.user_token_with(WEB, &alice, &forced).await.unwrap();

    // Someone replays the refresh token the app had before the rotation: the server revokes
    // the whole family.
    let stolen = tokenwarden::OAuthClient::new()
        .unwrap()
        .request_token(
            &RefreshTokens::new(client_config(&server))
                .grant(Secret::new(signed_in.refresh_token.as_str())),
            &TokenParams::new(),
        )
        .await
        .unwrap_err();
    assert!(stolen.to_string().contains("invalid_grant"), "{stolen}");
    assert_eq!(server.reuse_detections(), 1);

    let error = manager
        .user_token_with(WEB, &alice, &forced)
        .await
        .unwrap_err();
    assert!(error.is_reauthentication_required(), "{error:?}");
    assert!(
        stored(&manager, &store, &alice).await.is_none(),
        "the stored tokens are gone"
    );
    // And it stays that way until the user signs in again.
    let again = manager.user_token(WEB, &alice).await.unwrap_err();
    assert!(again.is_reauthentication_required(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_for_one_user_with_an_expired_token_make_one_refresh() {
    let server = server().await;
    server.set_delay(Duration::from_millis(100));
    let store = MemoryUserTokenStore::default();
    let clock = ManualClock::starting_now();
    let manager = manager_builder(&server, &store)
        .clock(clock.clone())
        .build()
        .unwrap();
    let alice = UserKey::new("alice-session");
    let signed_in = server.sign_in(CLIENT, "alice");
    manager
        .sign_in(WEB, &alice, tokens(&signed_in, clock.now()))
        .await
        .unwrap();
    clock.advance(signed_in.expires_in + Duration::from_secs(1));

    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (manager, alice, barrier) = (manager.clone(), alice.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                manager.user_token(WEB, &alice).await
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap());
    }
    assert!(tokens.iter().all(|t| t.secret() == tokens[0].secret()));
    assert_ne!(tokens[0].expose_secret(), signed_in.access_token);
    assert_eq!(server.refresh_requests(CLIENT), 1);
    assert_eq!(server.reuse_detections(), 0);
}

#[tokio::test]
async fn a_second_sign_in_leaves_one_record() {
    let server = server().await;
    let store = MemoryUserTokenStore::default();
    let manager = manager_builder(&server, &store).build().unwrap();
    let alice = UserKey::new("alice-session");
    for _ in 0..3 {
        let signed_in = server.sign_in(CLIENT, "alice");
        manager
            .sign_in(WEB, &alice, tokens(&signed_in, SystemTime::now()))
            .await
            .unwrap();
        assert_eq!(
            manager
                .user_token(WEB, &alice)
                .await
                .unwrap()
                .expose_secret(),
            signed_in.access_token,
            "the latest sign-in's token"
        );
    }
    assert_eq!(store.len(), 1);
    let bob = UserKey::new("bob-session");
    manager
        .sign_in(
            WEB,
            &bob,
            tokens(&server.sign_in(CLIENT, "bob"), SystemTime::now()),
        )
        .await
        .unwrap();
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn sign_out_revokes_at_the_server_and_forgets_the_user() {
    let server = server().await;
    let store = MemoryUserTokenStore::default();
    let manager = manager_builder(&server, &store).build().unwrap();
    let alice = UserKey::new("alice-session");
    let signed_in = server.sign_in(CLIENT, "alice");
    manager
        .sign_in(WEB, &alice, tokens(&signed_in, SystemTime::now()))
        .await
        .unwrap();
    manager
        .sign_out(WEB, &alice, Revoke::RefreshToken)
        .await
        .unwrap();
    assert_eq!(server.revocation_requests(), 1);
    let revoked = server.last_revocation_request().unwrap();
    assert_eq!(
        revoked.field("token"),
        Some(signed_in.refresh_token.as_str())
    );
    assert_eq!(revoked.field("token_type_hint"), Some("refresh_token"));
    assert!(store.is_empty());
    let error = manager.user_token(WEB, &alice).await.unwrap_err();
    assert!(error.is_reauthentication_required(), "{error:?}");
    // The server revoked the family: the old refresh token no longer works anywhere.
    let refused = tokenwarden::OAuthClient::new()
        .unwrap()
        .request_token(
            &RefreshTokens::new(client_config(&server))
                .grant(Secret::new(signed_in.refresh_token.as_str())),
            &TokenParams::new(),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("invalid_grant"), "{refused}");
}

#[tokio::test]
async fn a_token_revoked_at_the_server_asks_the_user_to_sign_in_again() {
    let server = server().await;
    let store = MemoryUserTokenStore::default();
    let manager = manager_builder(&server, &store).build().unwrap();
    let alice = UserKey::new("alice-session");
    manager
        .sign_in(
            WEB,
            &alice,
            tokens(&server.sign_in(CLIENT, "alice"), SystemTime::now()),
        )
        .await
        .unwrap();
    server.revoke_all();
    let forced = TokenParams::new().force_renewal();
    let error = manager
        .user_token_with(WEB, &alice, &forced)
        .await
        .unwrap_err();
    assert!(error.is_reauthentication_required(), "{error:?}");
    assert!(error.to_string().contains("sign in again"), "{error}");
    assert!(store.is_empty());
}

#[tokio::test]
async fn reusable_refresh_tokens_keep_working() {
    let server = TestServer::builder()
        .client(CLIENT, SECRET)
        .user("alice", "alice-password")
        .refresh_token_usage(RefreshTokenUsage::Reuse)
        .reuse_returns_refresh_token(false)
        .start()
        .await
        .unwrap();
    let store = MemoryUserTokenStore::default();
    let manager = manager_builder(&server, &store).build().unwrap();
    let alice = UserKey::new("alice-session");
    let signed_in = server.sign_in(CLIENT, "alice");
    manager
        .sign_in(WEB, &alice, tokens(&signed_in, SystemTime::now()))
        .await
        .unwrap();
    let forced = TokenParams::new().force_renewal();
    let mut seen = vec![signed_in.access_token.clone()];
    for _ in 0..3 {
        let token = manager.user_token_with(WEB, &alice, &forced).await.unwrap();
        assert!(!seen.contains(&token.expose_secret().to_owned()));
        seen.push(token.expose_secret().to_owned());
    }
    assert_eq!(server.refresh_requests(CLIENT), 3);
    // The server sent no new refresh token: the stored one is kept.
    let record = stored(&manager, &store, &alice).await.unwrap();
    assert_eq!(
        record.refresh_token().unwrap().expose_secret(),
        signed_in.refresh_token
    );
}

#[tokio::test]
async fn the_layer_sends_each_request_with_its_users_token_and_none_without_a_user() {
    let server = server().await;
    let store = MemoryUserTokenStore::default();
    let manager = manager_builder(&server, &store).build().unwrap();
    for user in ["alice", "bob"] {
        manager
            .sign_in(
                WEB,
                &UserKey::new(format!("{user}-session")),
                tokens(&server.sign_in(CLIENT, user), SystemTime::now()),
            )
            .await
            .unwrap();
    }
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, WEB)
                .allow_origin(&server.base_url())
                .build()
                .unwrap(),
        )
        .service(http_client());
    let get = |user: Option<&str>| {
        let mut request = Request::get(server.api_url("/me"))
            .body(Full::<Bytes>::default())
            .unwrap();
        if let Some(user) = user {
            request
                .extensions_mut()
                .insert(UserKey::new(format!("{user}-session")));
        }
        request
    };
    for user in ["alice", "bob", "alice"] {
        let response = client.clone().oneshot(get(Some(user))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["user"], user);
    }
    let error = client.clone().oneshot(get(None)).await.unwrap_err();
    let error = error.downcast_ref::<tokenwarden::Error>().unwrap();
    assert!(
        matches!(error, tokenwarden::Error::NoUserKey { .. }),
        "{error:?}"
    );
    let unknown = client
        .clone()
        .oneshot(get(Some("carol")))
        .await
        .unwrap_err();
    let unknown = unknown.downcast_ref::<tokenwarden::Error>().unwrap();
    assert!(unknown.is_reauthentication_required(), "{unknown:?}");
    assert_eq!(
        server.api_requests(),
        3,
        "nothing sent without a user's token"
    );

    // A 401 for a user's token (the server revoked it) is refreshed and replayed.
    server.revoke_all();
    let after = client.clone().oneshot(get(Some("alice"))).await.unwrap();
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "revoke_all revoked the refresh tokens too"
    );
}
