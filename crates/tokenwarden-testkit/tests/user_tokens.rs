//! Users: sign-in with the password grant or `sign_in`, and the refresh token grant with
//! rotation, reuse detection, reusable tokens, lifetimes and scopes, over real loopback HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use http::StatusCode;
use http::header::CACHE_CONTROL;
use tokenwarden_testkit::{AuthMethod, RefreshTokenUsage, TestServer, TestServerBuilder};

use common::{Auth, Http, Reply};

const WEB: Auth<'static> = Auth::Post("web", "web-secret");
const MOBILE: Auth<'static> = Auth::Basic("mobile", "mobile secret");

fn builder() -> TestServerBuilder {
    TestServer::builder()
        .client("web", "web-secret")
        .client("mobile", "mobile secret")
        .user("ann", "ann-password")
        .user("bob", "bob-password")
}

async fn start(builder: TestServerBuilder) -> (TestServer, Http) {
    (builder.start().await.unwrap(), Http::new())
}

async fn password_grant(
    http: &Http,
    server: &TestServer,
    auth: Auth<'_>,
    user: &str,
    password: &str,
    scope: Option<&str>,
) -> Reply {
    let mut form = vec![
        ("grant_type", "password"),
        ("username", user),
        ("password", password),
    ];
    form.extend(scope.map(|scope| ("scope", scope)));
    http.post_form(&server.token_endpoint(), auth, &form).await
}

async fn refresh(
    http: &Http,
    server: &TestServer,
    auth: Auth<'_>,
    refresh_token: &str,
    scope: Option<&str>,
) -> Reply {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    form.extend(scope.map(|scope| ("scope", scope)));
    http.post_form(&server.token_endpoint(), auth, &form).await
}

fn assert_invalid_grant(reply: &Reply, description: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.error(), "invalid_grant");
    assert!(
        reply.error_description().contains(description),
        "{:?} should say {description:?}",
        reply.error_description()
    );
}

async fn api_status(http: &Http, server: &TestServer, token: &str) -> StatusCode {
    http.call_api(&server.api_url("/me"), token).await.status
}

#[tokio::test]
async fn a_user_signs_in_with_the_password_grant_and_the_api_names_them() {
    let (server, http) = start(builder().token_lifetime(Duration::from_secs(300))).await;
    for (auth, client) in [(WEB, "web"), (MOBILE, "mobile")] {
        let reply = password_grant(
            &http,
            &server,
            auth,
            "ann",
            "ann-password",
            Some("orders profile"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.headers[CACHE_CONTROL], "no-store");
        let json = reply.json();
        assert_eq!(json["token_type"], "Bearer");
        assert_eq!(json["expires_in"], 300);
        assert_eq!(json["scope"], "orders profile");
        assert!(reply.field("access_token").starts_with("tk_"));
        let refresh_token = reply.field("refresh_token");
        assert!(refresh_token.starts_with("rt_"), "{refresh_token}");
        assert_eq!(refresh_token.len(), 3 + 32);

        let echo = http
            .call_api(&server.api_url("/me"), &reply.field("access_token"))
            .await;
        assert_eq!(echo.status, StatusCode::OK);
        assert_eq!(echo.json()["user"], "ann");
        assert_eq!(echo.json()["client"], client);
        assert_eq!(echo.json()["scope"], "orders profile");
    }
    // The password is never recorded; the user name is.
    let record = server.last_token_request("web").unwrap();
    assert_eq!(record.auth_method, AuthMethod::Post);
    assert_eq!(record.field("username"), Some("ann"));
    assert_eq!(record.field("password"), None);
    assert!(!format!("{record:?}").contains("ann-password"));
    assert_eq!(server.tokens_issued(), 2);
    assert_eq!(server.refresh_requests("web"), 0);
}

#[tokio::test]
async fn client_tokens_name_no_user() {
    let (server, http) = start(builder()).await;
    let reply = http
        .post_form(
            &server.token_endpoint(),
            WEB,
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert!(reply.json().get("refresh_token").is_none());
    let echo = http
        .call_api(&server.api_url("/x"), &reply.field("access_token"))
        .await;
    assert_eq!(echo.json()["client"], "web");
    assert!(echo.json().get("user").is_none());
    assert!(echo.json().get("scope").is_none());
}

#[tokio::test]
async fn bad_resource_owner_credentials_are_invalid_grant() {
    let (server, http) = start(builder()).await;
    for (user, password) in [("ann", "wrong"), ("ann", ""), ("nobody", "ann-password")] {
        let reply = password_grant(&http, &server, WEB, user, password, None).await;
        assert_invalid_grant(&reply, "resource owner credentials");
    }
    let missing = http
        .post_form(
            &server.token_endpoint(),
            WEB,
            &[("grant_type", "password"), ("username", "ann")],
        )
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.error(), "invalid_request");
    // The client must authenticate first.
    let reply = password_grant(
        &http,
        &server,
        Auth::Post("web", "wrong"),
        "ann",
        "ann-password",
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error(), "invalid_client");
    assert_eq!(server.tokens_issued(), 0);
}

#[tokio::test]
async fn sign_in_without_http_returns_what_a_sign_in_would() {
    let (server, http) = start(
        builder()
            .token_lifetime(Duration::from_secs(120))
            .scopes_supported(&["openid", "orders"]),
    )
    .await;
    let signed_in = server.sign_in("web", "ann");
    assert_eq!(signed_in.token_type, "Bearer");
    assert_eq!(signed_in.expires_in, Duration::from_secs(120));
    assert_eq!(signed_in.scope.as_deref(), Some("openid orders"));
    assert!(signed_in.refresh_token.starts_with("rt_"));
    let debug = format!("{signed_in:?}");
    assert!(!debug.contains(&signed_in.access_token) && !debug.contains(&signed_in.refresh_token));
    // No request was made.
    assert_eq!(server.token_requests_total(), 0);
    assert_eq!(server.tokens_issued(), 0);

    let echo = http
        .call_api(&server.api_url("/me"), &signed_in.access_token)
        .await;
    assert_eq!(echo.json()["user"], "ann");
    assert_eq!(echo.json()["client"], "web");
    // Its refresh token works like any other.
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["scope"], "openid orders");

    let scoped = server.sign_in_with_scope("mobile", "bob", "orders");
    assert_eq!(scoped.scope.as_deref(), Some("orders"));
    // A password grant without scope gets the default scope too.
    let reply = password_grant(&http, &server, WEB, "bob", "bob-password", None).await;
    assert_eq!(reply.json()["scope"], "openid orders");
}

#[tokio::test]
async fn without_supported_scopes_a_sign_in_grants_no_scope() {
    let (server, http) = start(builder()).await;
    assert_eq!(server.sign_in("web", "ann").scope, None);
    let reply = password_grant(&http, &server, WEB, "ann", "ann-password", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json().get("scope").is_none());
    assert!(reply.json().get("refresh_token").is_some());
}

#[tokio::test]
#[should_panic(expected = "not registered")]
async fn sign_in_of_an_unregistered_user_is_a_test_bug() {
    let server = builder().start().await.unwrap();
    server.sign_in("web", "mallory");
}

#[tokio::test]
async fn one_time_refresh_tokens_rotate_on_every_refresh() {
    let (server, http) = start(builder()).await;
    let signed_in = server.sign_in("web", "ann");
    let mut current = signed_in.refresh_token.clone();
    let mut seen = vec![current.clone()];
    for round in 1..=3 {
        let reply = refresh(&http, &server, WEB, &current, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.headers[CACHE_CONTROL], "no-store");
        assert_eq!(reply.json()["token_type"], "Bearer");
        assert_eq!(reply.json()["expires_in"], 3600);
        let access_token = reply.field("access_token");
        let echo = http.call_api(&server.api_url("/me"), &access_token).await;
        assert_eq!(echo.json()["user"], "ann");
        current = reply.field("refresh_token");
        assert!(
            !seen.contains(&current),
            "round {round}: a new refresh token"
        );
        seen.push(current.clone());
        let record = server.last_token_request("web").unwrap();
        assert_eq!(record.field("grant_type"), Some("refresh_token"));
        assert_eq!(
            record.field("refresh_token"),
            Some(seen[round - 1].as_str())
        );
    }
    assert_eq!(server.refresh_requests("web"), 3);
    assert_eq!(server.refresh_requests("mobile"), 0);
    assert_eq!(server.token_requests("web"), 3);
    assert_eq!(server.tokens_issued(), 3);
    assert_eq!(server.reuse_detections(), 0);
    // Earlier access tokens of the family stay valid until they expire.
    assert_eq!(
        api_status(&http, &server, &signed_in.access_token).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_family() {
    let (server, http) = start(builder()).await;
    let signed_in = server.sign_in("web", "ann");
    let bystander = server.sign_in("web", "ann"); // a second sign-in: another family
    let rotated = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    let newest_refresh_token = rotated.field("refresh_token");
    let newest_access_token = rotated.field("access_token");

    // The first refresh token again: reuse.
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_invalid_grant(&reply, "already used");
    assert_eq!(server.reuse_detections(), 1);
    assert_eq!(server.refresh_requests("web"), 2);

    // Every token of the family is revoked: access tokens at the API, the newest refresh token
    // at the token endpoint.
    for token in [&signed_in.access_token, &newest_access_token] {
        assert_eq!(
            api_status(&http, &server, token).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let reply = refresh(&http, &server, WEB, &newest_refresh_token, None).await;
    assert_invalid_grant(&reply, "revoked");
    // Revoked is not reused: counted once.
    assert_eq!(server.reuse_detections(), 1);

    // The other family is untouched.
    assert_eq!(
        api_status(&http, &server, &bystander.access_token).await,
        StatusCode::OK
    );
    let reply = refresh(&http, &server, WEB, &bystander.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn reusable_refresh_tokens_are_returned_again_or_not_at_all() {
    let (server, http) = start(builder().refresh_token_usage(RefreshTokenUsage::Reuse)).await;
    let signed_in = server.sign_in("web", "ann");
    let mut access_tokens = Vec::new();
    for _ in 0..3 {
        let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.field("refresh_token"), signed_in.refresh_token);
        access_tokens.push(reply.field("access_token"));
    }
    access_tokens.dedup();
    assert_eq!(access_tokens.len(), 3, "a new access token every time");

    server.set_reuse_returns_refresh_token(false);
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.json().get("refresh_token").is_none(),
        "{}",
        reply.json()
    );
    assert_eq!(
        api_status(&http, &server, &reply.field("access_token")).await,
        StatusCode::OK
    );
    assert_eq!(server.reuse_detections(), 0);

    // The builder option sets the same thing from the start.
    let (server, http) = start(
        builder()
            .refresh_token_usage(RefreshTokenUsage::Reuse)
            .reuse_returns_refresh_token(false),
    )
    .await;
    let signed_in = server.sign_in("web", "ann");
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert!(reply.json().get("refresh_token").is_none());
}

#[tokio::test]
async fn switching_to_one_time_use_rotates_from_then_on() {
    let (server, http) = start(builder().refresh_token_usage(RefreshTokenUsage::Reuse)).await;
    let signed_in = server.sign_in("web", "ann");
    server.set_refresh_token_usage(RefreshTokenUsage::OneTime);
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_ne!(reply.field("refresh_token"), signed_in.refresh_token);
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_invalid_grant(&reply, "already used");
}

#[tokio::test]
async fn a_refresh_token_presented_by_another_client_is_invalid_grant() {
    let (server, http) = start(builder()).await;
    let signed_in = server.sign_in("web", "ann");
    let reply = refresh(&http, &server, MOBILE, &signed_in.refresh_token, None).await;
    assert_invalid_grant(&reply, "another client");
    assert_eq!(server.refresh_requests("mobile"), 1);
    // Nothing was revoked or used up.
    assert_eq!(server.reuse_detections(), 0);
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Unknown refresh tokens are invalid_grant too; a missing one is invalid_request.
    let reply = refresh(&http, &server, WEB, "rt_forged", None).await;
    assert_invalid_grant(&reply, "invalid");
    let reply = http
        .post_form(
            &server.token_endpoint(),
            WEB,
            &[("grant_type", "refresh_token")],
        )
        .await;
    assert_eq!(reply.error(), "invalid_request");
}

#[tokio::test]
async fn a_refresh_may_narrow_the_scope_but_not_widen_it() {
    let (server, http) = start(builder()).await;
    let signed_in = server.sign_in_with_scope("web", "ann", "orders profile");

    let narrow = refresh(
        &http,
        &server,
        WEB,
        &signed_in.refresh_token,
        Some("orders"),
    )
    .await;
    assert_eq!(narrow.status, StatusCode::OK);
    assert_eq!(narrow.json()["scope"], "orders");
    let echo = http
        .call_api(&server.api_url("/x"), &narrow.field("access_token"))
        .await;
    assert_eq!(echo.json()["scope"], "orders");

    // The next refresh token still carries the sign-in's scope.
    let next = narrow.field("refresh_token");
    let wide = refresh(&http, &server, WEB, &next, Some("orders admin")).await;
    assert_eq!(wide.status, StatusCode::BAD_REQUEST);
    assert_eq!(wide.error(), "invalid_scope");
    let full = refresh(&http, &server, WEB, &next, None).await;
    assert_eq!(
        full.status,
        StatusCode::OK,
        "a refused scope does not use up the token"
    );
    assert_eq!(full.json()["scope"], "orders profile");
}

#[tokio::test]
async fn refresh_tokens_past_their_absolute_or_sliding_lifetime_are_invalid_grant() {
    // Lifetimes are judged when a token is presented, so shortening them expires families at
    // once, without waiting.
    let (server, http) = start(builder()).await;
    let ann = server.sign_in("web", "ann");
    server.set_refresh_token_absolute_lifetime(Duration::ZERO);
    let reply = refresh(&http, &server, WEB, &ann.refresh_token, None).await;
    assert_invalid_grant(&reply, "absolute lifetime");

    server.set_refresh_token_absolute_lifetime(Duration::from_secs(3600));
    let reply = refresh(&http, &server, WEB, &ann.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK, "expiry revokes nothing");

    server.set_refresh_token_sliding_lifetime(Some(Duration::ZERO));
    let bob = server.sign_in("web", "bob");
    let reply = refresh(&http, &server, WEB, &bob.refresh_token, None).await;
    assert_invalid_grant(&reply, "sliding lifetime");
    server.set_refresh_token_sliding_lifetime(None);
    let reply = refresh(&http, &server, WEB, &bob.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn use_extends_the_sliding_lifetime_but_never_the_absolute_one() {
    // Real time must pass here; the lifetimes are short and the gaps leave wide margins:
    // every gap (~250 ms) is well inside the 400 ms sliding lifetime, and the last refresh
    // (>= 850 ms after sign-in) is past the 800 ms absolute lifetime whatever the load.
    let (server, http) = start(
        builder()
            .refresh_token_usage(RefreshTokenUsage::Reuse)
            .refresh_token_absolute_lifetime(Duration::from_millis(800))
            .refresh_token_sliding_lifetime(Duration::from_millis(400)),
    )
    .await;
    let signed_in = server.sign_in("web", "ann");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    // ~500 ms after sign-in: alive only because each use slid the 400 ms window on.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_invalid_grant(&reply, "absolute lifetime");
}

#[tokio::test]
async fn revoke_all_revokes_refresh_tokens_too() {
    let (server, http) = start(builder()).await;
    let signed_in = server.sign_in("web", "ann");
    server.revoke_all();
    assert_eq!(
        api_status(&http, &server, &signed_in.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    let reply = refresh(&http, &server, WEB, &signed_in.refresh_token, None).await;
    assert_invalid_grant(&reply, "revoked");
    // Sign-ins after it work.
    let again = server.sign_in("web", "ann");
    let reply = refresh(&http, &server, WEB, &again.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_are_counted_and_only_one_wins() {
    // What a client without single-flight does: the first refresh rotates the token, the next
    // one is reuse and revokes the family, and the rest find it revoked.
    let (server, http) = start(builder()).await;
    let signed_in = server.sign_in("web", "ann");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (server, http) = (server.clone(), http.clone());
        let token = signed_in.refresh_token.clone();
        tasks.spawn(async move { refresh(&http, &server, WEB, &token, None).await });
    }
    let replies = tasks.join_all().await;
    let winners: Vec<&Reply> = replies
        .iter()
        .filter(|reply| reply.status == StatusCode::OK)
        .collect();
    assert_eq!(winners.len(), 1);
    for reply in replies
        .iter()
        .filter(|reply| reply.status != StatusCode::OK)
    {
        assert_eq!(reply.error(), "invalid_grant");
    }
    assert_eq!(server.refresh_requests("web"), 5);
    assert_eq!(server.reuse_detections(), 1);
    // The winner's tokens went with the family.
    assert_eq!(
        api_status(&http, &server, &winners[0].field("access_token")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn builder_debug_names_users_but_never_their_passwords() {
    let debug = format!("{:?}", builder());
    assert!(debug.contains("ann") && debug.contains("bob"), "{debug}");
    assert!(!debug.contains("ann-password") && !debug.contains("web-secret"));
}
