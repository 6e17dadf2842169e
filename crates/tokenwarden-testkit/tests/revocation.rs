//! Token revocation (RFC 7009) at `POST /revoke`, over real loopback HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use http::StatusCode;
use http::header::ALLOW;
use tokenwarden_testkit::{AuthMethod, Failure, TestServer};

use common::{Auth, Http, Reply};

const WEB_BASIC: Auth<'static> = Auth::Basic("web", "web secret");
const WEB_POST: Auth<'static> = Auth::Post("web", "web secret");

async fn start() -> (TestServer, Http) {
    let server = TestServer::builder()
        .client("web", "web secret")
        .client("mobile", "mobile-secret")
        .user("ann", "ann-password")
        .start()
        .await
        .unwrap();
    (server, Http::new())
}

async fn revoke(
    http: &Http,
    server: &TestServer,
    auth: Auth<'_>,
    token: &str,
    hint: Option<&str>,
) -> Reply {
    let mut form = vec![("token", token)];
    form.extend(hint.map(|hint| ("token_type_hint", hint)));
    http.post_form(&server.revocation_endpoint(), auth, &form)
        .await
}

async fn refresh(http: &Http, server: &TestServer, refresh_token: &str) -> Reply {
    http.post_form(
        &server.token_endpoint(),
        WEB_POST,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

async fn api_status(http: &Http, server: &TestServer, token: &str) -> StatusCode {
    http.call_api(&server.api_url("/x"), token).await.status
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_its_family_sign_out_style() {
    let (server, http) = start().await;
    let signed_in = server.sign_in("web", "ann");
    let other_family = server.sign_in("web", "ann");
    let rotated = refresh(&http, &server, &signed_in.refresh_token).await;
    let refresh_token = rotated.field("refresh_token");

    let reply = revoke(
        &http,
        &server,
        WEB_BASIC,
        &refresh_token,
        Some("refresh_token"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.headers["cache-control"], "no-store");
    assert_eq!(server.revocation_requests(), 1);
    // Basic credentials at the revocation endpoint are expected there, not a leak.
    assert_eq!(server.requests_with_authorization(), 0);

    // The refresh token and every access token of its family are gone.
    let reply = refresh(&http, &server, &refresh_token).await;
    assert_eq!(reply.error(), "invalid_grant");
    for token in [signed_in.access_token, rotated.field("access_token")] {
        assert_eq!(
            api_status(&http, &server, &token).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // Revocation is not reuse.
    assert_eq!(server.reuse_detections(), 0);
    // Another sign-in of the same user is another family.
    assert_eq!(
        api_status(&http, &server, &other_family.access_token).await,
        StatusCode::OK
    );

    let record = server.last_revocation_request().unwrap();
    assert_eq!(record.auth_method, AuthMethod::Basic);
    assert_eq!(record.field("token"), Some(refresh_token.as_str()));
    assert_eq!(record.field("token_type_hint"), Some("refresh_token"));
    // Revocation requests are not token requests.
    assert_eq!(server.token_requests_total(), 2);
}

#[tokio::test]
async fn revoking_an_access_token_revokes_only_that_token() {
    let (server, http) = start().await;
    let signed_in = server.sign_in("web", "ann");
    let reply = revoke(
        &http,
        &server,
        WEB_POST,
        &signed_in.access_token,
        Some("access_token"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        api_status(&http, &server, &signed_in.access_token).await,
        StatusCode::UNAUTHORIZED
    );
    // The refresh token still works: a new access token for the user.
    let reply = refresh(&http, &server, &signed_in.refresh_token).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        api_status(&http, &server, &reply.field("access_token")).await,
        StatusCode::OK
    );
    let record = server.last_revocation_request().unwrap();
    assert_eq!(record.auth_method, AuthMethod::Post);
    assert_eq!(record.field("client_id"), Some("web"));
    assert_eq!(record.field("client_secret"), None);
}

#[tokio::test]
async fn client_tokens_can_be_revoked_and_hints_are_only_hints() {
    let (server, http) = start().await;
    let reply = http
        .post_form(
            &server.token_endpoint(),
            WEB_POST,
            &[("grant_type", "client_credentials")],
        )
        .await;
    let token = reply.field("access_token");
    // A wrong hint: the server looks beyond it (RFC 7009 §2.1).
    let reply = revoke(&http, &server, WEB_BASIC, &token, Some("refresh_token")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        api_status(&http, &server, &token).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn unknown_tokens_and_hints_are_answered_200() {
    let (server, http) = start().await;
    for hint in [
        None,
        Some("access_token"),
        Some("refresh_token"),
        Some("id_token"),
    ] {
        let reply = revoke(&http, &server, WEB_BASIC, "tk_never_issued", hint).await;
        assert_eq!(reply.status, StatusCode::OK, "{hint:?}");
    }
    // Revoking twice is fine too.
    let signed_in = server.sign_in("web", "ann");
    for _ in 0..2 {
        let reply = revoke(&http, &server, WEB_POST, &signed_in.refresh_token, None).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(server.revocation_requests(), 6);
}

#[tokio::test]
async fn bad_client_credentials_are_invalid_client_and_revoke_nothing() {
    let (server, http) = start().await;
    let signed_in = server.sign_in("web", "ann");
    for auth in [
        Auth::Basic("web", "wrong"),
        Auth::Post("web", "wrong"),
        Auth::Post("nobody", "web secret"),
    ] {
        let reply = revoke(&http, &server, auth, &signed_in.refresh_token, None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error(), "invalid_client");
    }
    assert_eq!(server.revocation_requests(), 3);
    assert_eq!(
        api_status(&http, &server, &signed_in.access_token).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_token_of_another_client_is_refused_and_kept() {
    let (server, http) = start().await;
    let signed_in = server.sign_in("web", "ann");
    let mobile = Auth::Post("mobile", "mobile-secret");
    for token in [&signed_in.refresh_token, &signed_in.access_token] {
        let reply = revoke(&http, &server, mobile, token, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.error(), "invalid_request");
    }
    assert_eq!(
        api_status(&http, &server, &signed_in.access_token).await,
        StatusCode::OK
    );
    assert_eq!(
        refresh(&http, &server, &signed_in.refresh_token)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_revocation_requests_are_refused() {
    let (server, http) = start().await;
    let no_token = http
        .post_form(&server.revocation_endpoint(), WEB_POST, &[])
        .await;
    assert_eq!(no_token.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_token.error(), "invalid_request");
    let repeated = http
        .post_form(
            &server.revocation_endpoint(),
            WEB_POST,
            &[("token", "a"), ("token", "b")],
        )
        .await;
    assert_eq!(repeated.error(), "invalid_request");
    let get = http.get(&server.revocation_endpoint()).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.headers[ALLOW], "POST");
    assert_eq!(server.revocation_requests(), 2);
}

#[tokio::test]
async fn fail_next_revocation_answers_the_failure_and_revokes_nothing() {
    let (server, http) = start().await;
    let signed_in = server.sign_in("web", "ann");
    server.fail_next_revocation(Failure::Status(StatusCode::SERVICE_UNAVAILABLE));
    server.fail_next_revocation(Failure::oauth("temporarily_unavailable"));
    let reply = revoke(&http, &server, WEB_POST, &signed_in.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let reply = revoke(&http, &server, WEB_POST, &signed_in.refresh_token, None).await;
    assert_eq!(reply.error(), "temporarily_unavailable");
    assert_eq!(
        api_status(&http, &server, &signed_in.access_token).await,
        StatusCode::OK
    );
    // The token endpoint's queue is separate.
    assert_eq!(
        refresh(&http, &server, &signed_in.refresh_token)
            .await
            .status,
        StatusCode::OK
    );
    let reply = revoke(&http, &server, WEB_POST, &signed_in.refresh_token, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(server.revocation_requests(), 3);
}
