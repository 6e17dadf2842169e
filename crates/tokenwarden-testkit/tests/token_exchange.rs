//! Token exchange (RFC 8693) and the `delegation` extension grant, over real loopback HTTP: a
//! middle tier (API 1) receives a user's access token and calls API 2 as that user.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use http::StatusCode;
use http::header::CACHE_CONTROL;
use serde_json::{Value, json};
use tokenwarden_testkit::{AuthMethod, TestServer, TestServerBuilder};

use common::{Auth, Http, Reply};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";

const API1: Auth<'static> = Auth::Post("api1", "api1-secret");
const API1_BASIC: Auth<'static> = Auth::Basic("api1", "api1-secret");
const API2: Auth<'static> = Auth::Basic("api2", "api2 secret");

fn builder() -> TestServerBuilder {
    TestServer::builder()
        .client("web-app", "web-secret")
        .client("api1", "api1-secret")
        .client("api2", "api2 secret")
        .client("gateway", "gateway-secret")
        .user("ann", "ann-password")
        .token_lifetime(Duration::from_secs(600))
}

async fn start(builder: TestServerBuilder) -> (TestServer, Http) {
    (builder.start().await.unwrap(), Http::new())
}

/// A token exchange for `subject_token` of `subject_type`, with more form fields.
async fn exchange(
    http: &Http,
    server: &TestServer,
    auth: Auth<'_>,
    subject_token: &str,
    subject_type: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", subject_type),
    ];
    form.extend_from_slice(extra);
    http.post_form(&server.token_endpoint(), auth, &form).await
}

async fn token_request(
    http: &Http,
    server: &TestServer,
    auth: Auth<'_>,
    form: &[(&str, &str)],
) -> Reply {
    http.post_form(&server.token_endpoint(), auth, form).await
}

fn assert_ok(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

fn assert_error(reply: &Reply, error: &str, description: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.error(), error, "{:?}", reply.body);
    assert!(
        reply.error_description().contains(description),
        "{:?} should say {description:?}",
        reply.error_description()
    );
}

/// The claims of a JWT, without checking its signature.
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has three segments");
    serde_json::from_slice(&BASE64URL.decode(payload).unwrap()).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_middle_tier_exchanges_a_users_jwt_and_api2_sees_the_user_and_the_acting_client() {
    let (server, http) = start(builder()).await;
    let before = unix_now();
    let user_token = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));

    // The user's token is a signed at+jwt with the claims a test would check.
    let segments: Vec<&str> = user_token.split('.').collect();
    assert_eq!(segments.len(), 3, "{user_token}");
    let header: Value = serde_json::from_slice(&BASE64URL.decode(segments[0]).unwrap()).unwrap();
    assert_eq!(header, json!({ "alg": "HS256", "typ": "at+jwt" }));
    let user_claims = claims(&user_token);
    assert_eq!(user_claims["iss"], server.issuer());
    assert_eq!(user_claims["sub"], "ann");
    assert_eq!(user_claims["aud"], "api1");
    assert_eq!(user_claims["scope"], "api1");
    assert_eq!(user_claims["client_id"], TestServer::USER_JWT_CLIENT_ID);
    let iat = user_claims["iat"].as_u64().unwrap();
    assert!((before..=unix_now()).contains(&iat));
    assert_eq!(user_claims["exp"].as_u64().unwrap(), iat + 60);
    assert!(user_claims["jti"].is_string());
    assert_eq!(server.tokens_issued(), 0, "not a token response");

    // API 1 accepts it as the user's.
    let echo = http.call_api(&server.api_url("/api1"), &user_token).await;
    assert_ok(&echo);
    let echo = echo.json();
    assert_eq!(echo["user"], "ann");
    assert_eq!(echo["sub"], "ann");
    assert_eq!(echo["client"], "web-app");
    assert_eq!(echo["aud"], json!(["api1"]));
    assert!(echo.get("act").is_none());

    // API 1 exchanges it for a token to API 2.
    let reply = exchange(
        &http,
        &server,
        API1,
        &user_token,
        ACCESS_TOKEN,
        &[("audience", "api2"), ("scope", "api2")],
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.headers[CACHE_CONTROL], "no-store");
    let json = reply.json();
    assert_eq!(json["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 600);
    assert_eq!(json["scope"], "api2");
    assert!(json.get("refresh_token").is_none());
    let api2_token = reply.field("access_token");
    assert!(api2_token.starts_with("tk_"), "{api2_token}");
    assert_ne!(api2_token, user_token);

    // API 2 receives a token that is not the user's: issued to API 1, acting for Ann.
    let echo = http.call_api(&server.api_url("/api2"), &api2_token).await;
    assert_ok(&echo);
    let echo = echo.json();
    assert_eq!(echo["client"], "api1");
    assert_eq!(echo["sub"], "ann");
    assert_eq!(echo["user"], "ann");
    assert_eq!(echo["act"], json!({ "sub": "api1" }));
    assert_eq!(echo["aud"], json!(["api2"]));
    assert_eq!(echo["scope"], "api2");

    // The request arrived verbatim and is counted as an exchange.
    let record = server.last_token_request("api1").unwrap();
    assert_eq!(record.auth_method, AuthMethod::Post);
    assert_eq!(record.field("grant_type"), Some(TOKEN_EXCHANGE));
    assert_eq!(record.field("subject_token"), Some(user_token.as_str()));
    assert_eq!(record.field("subject_token_type"), Some(ACCESS_TOKEN));
    assert_eq!(record.field("audience"), Some("api2"));
    assert_eq!(record.field("scope"), Some("api2"));
    assert_eq!(record.field("client_secret"), None);
    assert_eq!(server.token_requests("api1"), 1);
    assert_eq!(server.exchange_requests("api1"), 1);
    assert_eq!(server.refresh_requests("api1"), 0);
    assert_eq!(server.tokens_issued(), 1);
    assert_eq!(server.exchange_requests("web-app"), 0);
}

#[tokio::test]
async fn opaque_sign_in_tokens_are_subject_tokens_too_and_keep_their_scope() {
    let (server, http) = start(builder().scopes_supported(&["orders", "profile"])).await;
    let signed_in = server.sign_in("web-app", "ann");
    let reply = exchange(
        &http,
        &server,
        API1_BASIC,
        &signed_in.access_token,
        ACCESS_TOKEN,
        &[],
    )
    .await;
    assert_ok(&reply);
    // No scope asked: the subject's, which the response then states (RFC 8693 §2.2.1).
    assert_eq!(reply.json()["scope"], "orders profile");
    assert_eq!(reply.json()["issued_token_type"], ACCESS_TOKEN);
    let echo = http
        .call_api(&server.api_url("/x"), &reply.field("access_token"))
        .await;
    let echo = echo.json();
    assert_eq!(echo["user"], "ann");
    assert_eq!(echo["client"], "api1");
    assert_eq!(echo["scope"], "orders profile");
    assert!(echo.get("aud").is_none());
    assert_eq!(
        server.last_token_request("api1").unwrap().auth_method,
        AuthMethod::Basic
    );

    // A client's own token is a subject too: its subject is the client.
    let client_token = token_request(
        &http,
        &server,
        Auth::Post("gateway", "gateway-secret"),
        &[("grant_type", "client_credentials")],
    )
    .await
    .field("access_token");
    let reply = exchange(&http, &server, API1, &client_token, ACCESS_TOKEN, &[]).await;
    assert_ok(&reply);
    let echo = http
        .call_api(&server.api_url("/x"), &reply.field("access_token"))
        .await
        .json();
    assert_eq!(echo["sub"], "gateway");
    assert!(echo.get("user").is_none());
    assert_eq!(echo["act"], json!({ "sub": "api1" }));
}

#[tokio::test]
async fn expired_revoked_unknown_and_non_access_subject_tokens_are_invalid_grant() {
    let (server, http) = start(builder()).await;
    let expired = server.issue_user_jwt("ann", "api1", "api1", Duration::ZERO);
    let reply = exchange(&http, &server, API1, &expired, JWT, &[]).await;
    assert_error(&reply, "invalid_grant", "subject_token is expired");
    // The API agrees it is dead.
    assert_eq!(
        http.call_api(&server.api_url("/x"), &expired).await.status,
        StatusCode::UNAUTHORIZED
    );

    let revoked = server.sign_in("web-app", "ann");
    assert!(server.revoke_token(&revoked.access_token));
    assert!(
        !server.revoke_token(&revoked.access_token),
        "already revoked"
    );
    let reply = exchange(
        &http,
        &server,
        API1,
        &revoked.access_token,
        ACCESS_TOKEN,
        &[],
    )
    .await;
    assert_error(
        &reply,
        "invalid_grant",
        "subject_token is unknown or revoked",
    );
    // Revoking one access token leaves its family alone.
    let refreshed = token_request(
        &http,
        &server,
        Auth::Post("web-app", "web-secret"),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &revoked.refresh_token),
        ],
    )
    .await;
    assert_ok(&refreshed);

    for unknown in [
        "tk_00000000000000000000000000000000",
        "not-a-token",
        "a.b.c",
    ] {
        let reply = exchange(&http, &server, API1, unknown, ACCESS_TOKEN, &[]).await;
        assert_error(
            &reply,
            "invalid_grant",
            "subject_token is unknown or revoked",
        );
    }
    // A refresh token is not an access token of this server.
    let reply = exchange(
        &http,
        &server,
        API1,
        &revoked.refresh_token,
        ACCESS_TOKEN,
        &[],
    )
    .await;
    assert_error(&reply, "invalid_grant", "unknown or revoked");

    // An opaque token declared as a JWT is refused.
    let live = server.sign_in("web-app", "ann");
    let reply = exchange(&http, &server, API1, &live.access_token, JWT, &[]).await;
    assert_error(&reply, "invalid_grant", "not a JWT");

    // A user JWT revoked by the test is refused as well.
    let jwt = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    assert!(server.revoke_token(&jwt));
    let reply = exchange(&http, &server, API1, &jwt, JWT, &[]).await;
    assert_error(&reply, "invalid_grant", "unknown or revoked");
    assert_eq!(
        http.call_api(&server.api_url("/x"), &jwt).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.tokens_issued(), 1, "only the refresh");
    assert_eq!(server.exchange_requests("api1"), 8);
}

#[tokio::test]
async fn missing_or_unsupported_parameters_are_invalid_request_before_tokens_are_judged() {
    let (server, http) = start(builder()).await;
    let token = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    let exchange_form = |extra: &[(&'static str, &'static str)]| {
        let mut form = vec![("grant_type", TOKEN_EXCHANGE)];
        form.extend_from_slice(extra);
        form
    };
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("subject_token_type", ACCESS_TOKEN)],
            "parameter subject_token is missing",
        ),
        (
            &[("subject_token", ""), ("subject_token_type", ACCESS_TOKEN)],
            "parameter subject_token is missing",
        ),
        (
            &[("subject_token", "tk_x")],
            "parameter subject_token_type is missing",
        ),
        (
            &[
                ("subject_token", "tk_x"),
                ("subject_token_type", REFRESH_TOKEN),
            ],
            "subject_token_type urn:ietf:params:oauth:token-type:refresh_token is not supported",
        ),
        (
            &[("subject_token", "tk_x"), ("subject_token_type", ID_TOKEN)],
            "subject_token_type",
        ),
        (
            &[
                ("subject_token", "tk_x"),
                ("subject_token_type", ACCESS_TOKEN),
                ("actor_token", "tk_y"),
            ],
            "actor_token_type is required",
        ),
        (
            &[
                ("subject_token", "tk_x"),
                ("subject_token_type", ACCESS_TOKEN),
                ("actor_token_type", ACCESS_TOKEN),
            ],
            "actor_token_type must not be sent without actor_token",
        ),
        (
            &[
                ("subject_token", "tk_x"),
                ("subject_token_type", ACCESS_TOKEN),
                ("actor_token", "tk_y"),
                ("actor_token_type", "urn:example:mine"),
            ],
            "actor_token_type urn:example:mine is not supported",
        ),
        (
            &[
                ("subject_token", "tk_x"),
                ("subject_token_type", ACCESS_TOKEN),
                ("requested_token_type", REFRESH_TOKEN),
            ],
            "requested_token_type",
        ),
        (
            &[
                ("subject_token", "tk_x"),
                ("subject_token", "tk_y"),
                ("subject_token_type", ACCESS_TOKEN),
            ],
            "parameter subject_token is repeated",
        ),
        (
            &[
                ("subject_token", "tk_x"),
                ("subject_token_type", ACCESS_TOKEN),
                ("requested_token_type", JWT),
                ("requested_token_type", JWT),
            ],
            "parameter requested_token_type is repeated",
        ),
    ];
    for (fields, description) in cases {
        let reply = token_request(&http, &server, API1, &exchange_form(fields)).await;
        assert_error(&reply, "invalid_request", description);
    }

    // A resource must be an absolute URI without a fragment, even with a valid subject token.
    for resource in ["api2", "https://api2.example/#orders"] {
        let reply = exchange(
            &http,
            &server,
            API1,
            &token,
            ACCESS_TOKEN,
            &[("resource", resource)],
        )
        .await;
        assert_error(&reply, "invalid_target", resource);
    }

    // Client authentication comes first, as for every grant.
    let reply = exchange(
        &http,
        &server,
        Auth::Post("api1", "wrong"),
        &token,
        ACCESS_TOKEN,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error(), "invalid_client");
    assert_eq!(server.tokens_issued(), 0);
    assert_eq!(server.exchange_requests("api1"), cases.len() + 3);
}

#[tokio::test]
async fn an_id_token_is_answered_as_n_a_and_the_api_refuses_it() {
    let (server, http) = start(builder()).await;
    let token = server.issue_user_jwt("ann", "api1", "openid", Duration::from_secs(60));
    let reply = exchange(
        &http,
        &server,
        API1,
        &token,
        JWT,
        &[("requested_token_type", ID_TOKEN), ("audience", "api2")],
    )
    .await;
    assert_ok(&reply);
    let json = reply.json();
    assert_eq!(json["issued_token_type"], ID_TOKEN);
    assert_eq!(json["token_type"], "N_A");
    assert_eq!(json["expires_in"], 600);
    assert_eq!(json["scope"], "openid");
    let id_token = reply.field("access_token");
    assert!(id_token.starts_with("it_"), "{id_token}");

    assert_eq!(
        http.call_api(&server.api_url("/x"), &id_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Not a subject token either.
    let reply = exchange(&http, &server, API1, &id_token, ACCESS_TOKEN, &[]).await;
    assert_error(
        &reply,
        "invalid_grant",
        "subject_token is not an access token",
    );
    // Introspection knows what it is.
    let reply = http
        .post_form(
            &server.introspection_endpoint(),
            API2,
            &[("token", &id_token)],
        )
        .await;
    let json = reply.json();
    assert_eq!(json["active"], true);
    assert_eq!(json["token_type"], "N_A");
    assert_eq!(json["sub"], "ann");
    assert_eq!(json["client_id"], "api1");
    assert!(server.revoke_token(&id_token));
}

#[tokio::test]
async fn a_requested_jwt_is_a_signed_jwt_access_token_with_an_act_claim() {
    let (server, http) = start(builder()).await;
    let subject = server.sign_in_with_scope("web-app", "ann", "api1");
    let reply = exchange(
        &http,
        &server,
        API1,
        &subject.access_token,
        ACCESS_TOKEN,
        &[
            ("requested_token_type", JWT),
            ("audience", "api2"),
            ("scope", "api2.read"),
        ],
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.json()["issued_token_type"], JWT);
    assert_eq!(reply.json()["token_type"], "Bearer");
    let token = reply.field("access_token");
    let claims = claims(&token);
    assert_eq!(claims["sub"], "ann");
    assert_eq!(claims["client_id"], "api1");
    assert_eq!(claims["aud"], "api2");
    assert_eq!(claims["scope"], "api2.read");
    assert_eq!(claims["act"], json!({ "sub": "api1" }));
    assert_eq!(
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap() + 600
    );
    let echo = http.call_api(&server.api_url("/x"), &token).await;
    assert_ok(&echo);
    assert_eq!(echo.json()["act"], json!({ "sub": "api1" }));
    // An exchanged JWT can itself be exchanged, declared as a JWT.
    let again = exchange(&http, &server, API2, &token, JWT, &[]).await;
    assert_ok(&again);
}

#[tokio::test]
async fn the_exchanged_token_is_not_capped_by_the_subject_and_outlives_its_revocation() {
    let (server, http) = start(builder().token_lifetime(Duration::from_secs(3600))).await;
    let subject = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(5));
    let reply = exchange(&http, &server, API1, &subject, JWT, &[]).await;
    assert_ok(&reply);
    // The server's lifetime, not what is left of the subject's 5 seconds.
    assert_eq!(reply.json()["expires_in"], 3600);
    let exchanged = reply.field("access_token");
    assert!(server.revoke_token(&subject));
    assert_eq!(
        http.call_api(&server.api_url("/x"), &exchanged)
            .await
            .status,
        StatusCode::OK
    );
    // The server's lifetime applies from the moment of the exchange, like any token.
    server.set_token_lifetime(Duration::ZERO);
    let subject = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    let reply = exchange(&http, &server, API1, &subject, JWT, &[]).await;
    assert_eq!(reply.json()["expires_in"], 0);
    assert_eq!(
        http.call_api(&server.api_url("/x"), &reply.field("access_token"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_actor_token_names_the_actor_and_earlier_actors_nest() {
    let (server, http) = start(builder()).await;
    let gateway_token = token_request(
        &http,
        &server,
        Auth::Basic("gateway", "gateway-secret"),
        &[("grant_type", "client_credentials")],
    )
    .await
    .field("access_token");
    let subject = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    let reply = exchange(
        &http,
        &server,
        API1,
        &subject,
        JWT,
        &[
            ("actor_token", &gateway_token),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_ok(&reply);
    let first = reply.field("access_token");
    let record = server.last_token_request("api1").unwrap();
    assert_eq!(record.field("actor_token"), Some(gateway_token.as_str()));
    assert_eq!(record.field("actor_token_type"), Some(ACCESS_TOKEN));
    let echo = http.call_api(&server.api_url("/x"), &first).await.json();
    assert_eq!(echo["act"], json!({ "sub": "gateway" }));
    assert_eq!(echo["client"], "api1");

    // API 2 exchanges that token in turn: it acts now, after the gateway.
    let reply = exchange(
        &http,
        &server,
        API2,
        &first,
        ACCESS_TOKEN,
        &[("audience", "api3")],
    )
    .await;
    assert_ok(&reply);
    let echo = http
        .call_api(&server.api_url("/x"), &reply.field("access_token"))
        .await
        .json();
    assert_eq!(
        echo["act"],
        json!({ "sub": "api2", "act": { "sub": "gateway" } })
    );
    assert_eq!(echo["sub"], "ann");
    assert_eq!(echo["client"], "api2");

    // An actor token that is not a live token of ours is refused, after the subject.
    let expired_actor = server.issue_user_jwt("bot", "", "", Duration::ZERO);
    for (actor, description) in [
        ("tk_unknown", "actor_token is unknown or revoked"),
        (expired_actor.as_str(), "actor_token is expired"),
    ] {
        let reply = exchange(
            &http,
            &server,
            API1,
            &subject,
            JWT,
            &[("actor_token", actor), ("actor_token_type", ACCESS_TOKEN)],
        )
        .await;
        assert_error(&reply, "invalid_grant", description);
    }
    let reply = exchange(
        &http,
        &server,
        API1,
        "tk_unknown",
        ACCESS_TOKEN,
        &[
            ("actor_token", "tk_unknown"),
            ("actor_token_type", ACCESS_TOKEN),
        ],
    )
    .await;
    assert_error(&reply, "invalid_grant", "subject_token");
}

#[tokio::test]
async fn repeated_audiences_and_resources_arrive_verbatim_and_make_the_audience() {
    let (server, http) = start(builder()).await;
    let subject = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    let reply = exchange(
        &http,
        &server,
        API1,
        &subject,
        JWT,
        &[
            ("resource", "https://api2.example.com/orders?x=1&y=2"),
            ("audience", "api2"),
            ("audience", "api 3"),
            ("resource", "urn:example:api3"),
            ("audience", ""),
        ],
    )
    .await;
    assert_ok(&reply);
    let record = server.last_token_request("api1").unwrap();
    assert_eq!(
        record.fields("audience").collect::<Vec<_>>(),
        ["api2", "api 3", ""]
    );
    assert_eq!(
        record.fields("resource").collect::<Vec<_>>(),
        [
            "https://api2.example.com/orders?x=1&y=2",
            "urn:example:api3"
        ]
    );
    // Audiences first, then resources, each in request order; empty values are omitted.
    let echo = http
        .call_api(&server.api_url("/x"), &reply.field("access_token"))
        .await
        .json();
    assert_eq!(
        echo["aud"],
        json!([
            "api2",
            "api 3",
            "https://api2.example.com/orders?x=1&y=2",
            "urn:example:api3"
        ])
    );
}

#[tokio::test]
async fn a_misreported_issued_token_type_is_answered_once_per_successful_exchange() {
    let (server, http) = start(builder()).await;
    let subject = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    server.misreport_next_issued_token_type(ID_TOKEN);
    server.misreport_next_issued_token_type("urn:example:weird");

    // A refused exchange does not use one up.
    let reply = exchange(&http, &server, API1, "tk_unknown", ACCESS_TOKEN, &[]).await;
    assert_error(&reply, "invalid_grant", "subject_token");

    let reply = exchange(&http, &server, API1, &subject, JWT, &[]).await;
    assert_ok(&reply);
    assert_eq!(reply.json()["issued_token_type"], ID_TOKEN);
    // The token is still the access token that was asked for.
    assert_eq!(reply.json()["token_type"], "Bearer");
    assert_eq!(
        http.call_api(&server.api_url("/x"), &reply.field("access_token"))
            .await
            .status,
        StatusCode::OK
    );
    let reply = exchange(&http, &server, API1, &subject, JWT, &[]).await;
    assert_eq!(reply.json()["issued_token_type"], "urn:example:weird");
    let reply = exchange(&http, &server, API1, &subject, JWT, &[]).await;
    assert_eq!(reply.json()["issued_token_type"], ACCESS_TOKEN);
}

#[tokio::test]
async fn the_delegation_grant_trades_the_token_field_for_a_token_acting_for_the_user() {
    let (server, http) = start(builder().delegation_grant()).await;
    let user_token = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    let reply = token_request(
        &http,
        &server,
        API1,
        &[
            ("grant_type", "delegation"),
            ("token", &user_token),
            ("scope", "api2"),
        ],
    )
    .await;
    assert_ok(&reply);
    let json = reply.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 600);
    assert_eq!(json["scope"], "api2");
    assert!(json.get("issued_token_type").is_none());
    let token = reply.field("access_token");
    assert!(token.starts_with("tk_"), "{token}");
    let echo = http.call_api(&server.api_url("/api2"), &token).await.json();
    assert_eq!(echo["user"], "ann");
    assert_eq!(echo["client"], "api1");
    assert_eq!(echo["act"], json!({ "sub": "api1" }));
    assert_eq!(echo["scope"], "api2");
    let record = server.last_token_request("api1").unwrap();
    assert_eq!(record.field("grant_type"), Some("delegation"));
    assert_eq!(record.field("token"), Some(user_token.as_str()));

    // Opaque user tokens too; without scope, the subject's.
    let signed_in = server.sign_in_with_scope("web-app", "ann", "orders");
    let reply = token_request(
        &http,
        &server,
        API1_BASIC,
        &[
            ("grant_type", "delegation"),
            ("token", &signed_in.access_token),
        ],
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.json()["scope"], "orders");

    // Refusals, as for a subject token.
    let expired = server.issue_user_jwt("ann", "api1", "api1", Duration::ZERO);
    let revoked = server.sign_in("web-app", "ann").access_token;
    server.revoke_token(&revoked);
    let refusals = [
        (vec![], "invalid_request", "parameter token is missing"),
        (
            vec![("token", "")],
            "invalid_request",
            "parameter token is missing",
        ),
        (
            vec![("token", "a"), ("token", "b")],
            "invalid_request",
            "parameter token is repeated",
        ),
        (
            vec![("token", "tk_unknown")],
            "invalid_grant",
            "token is unknown or revoked",
        ),
        (
            vec![("token", expired.as_str())],
            "invalid_grant",
            "token is expired",
        ),
        (
            vec![("token", revoked.as_str())],
            "invalid_grant",
            "token is unknown or revoked",
        ),
    ];
    for (fields, error, description) in &refusals {
        let mut form = vec![("grant_type", "delegation")];
        form.extend(fields.iter().copied());
        let reply = token_request(&http, &server, API1, &form).await;
        assert_error(&reply, error, description);
    }
    assert_eq!(server.exchange_requests("api1"), 2 + refusals.len());
    assert_eq!(server.tokens_issued(), 2);
}

#[tokio::test]
async fn without_delegation_grant_the_grant_type_is_unsupported_but_counted() {
    let (server, http) = start(builder()).await;
    let user_token = server.issue_user_jwt("ann", "api1", "api1", Duration::from_secs(60));
    let reply = token_request(
        &http,
        &server,
        API1,
        &[("grant_type", "delegation"), ("token", &user_token)],
    )
    .await;
    assert_error(&reply, "unsupported_grant_type", "delegation");
    assert_eq!(server.exchange_requests("api1"), 1);

    // An extension grant of that name keeps its own behaviour: a client token.
    let server = builder()
        .extension_grant("delegation", "token")
        .start()
        .await
        .unwrap();
    let reply = token_request(
        &http,
        &server,
        API1,
        &[("grant_type", "delegation"), ("token", "anything")],
    )
    .await;
    assert_ok(&reply);
    let echo = http
        .call_api(&server.api_url("/x"), &reply.field("access_token"))
        .await
        .json();
    assert!(echo.get("act").is_none());
    assert_eq!(echo["sub"], "api1");
}
