//! A middle-tier API calling a back-end API as its caller, with no outside service: API 1 (an
//! axum app) receives a user's access token and calls API 2 (another axum app) through the
//! token layer, which exchanges the user's token at the authorization server for a token meant
//! for API 2: first with RFC 8693 token exchange, then with a server's own `delegation`
//! extension grant (`grant_type=delegation&token=…&scope=api2`). The authorization server is
//! the test kit, in this process.
//!
//! Each answer shows what each API saw: the subject, audience and scope of the token it got,
//! and that the token API 2 got is not the user's. A revoked user token shows how API 1 answers
//! its caller 401 when the authorization server refuses to exchange the caller's token.
//!
//! Run it with `cargo run --example middle_tier`.

use std::error::Error;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::StatusCode;
use http::header::AUTHORIZATION;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokenwarden::{
    AccessTokenLayer, AccessTokenService, ClientConfig, ExtensionGrant, Secret, SubjectToken,
    TokenExchange, TokenManager,
};
use tokenwarden_testkit::TestServer;
use tower::{ServiceBuilder, ServiceExt};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

// ---------------------------------------------------------------------------------------------
// API 2: the back end. It accepts tokens meant for it, checked by introspection (RFC 7662) at
// the authorization server, and answers with what it saw.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Api2 {
    idp: TestServer,
    http: HttpClient,
}

async fn api2_orders(State(api2): State<Api2>, request: Request) -> Response {
    let Some(token) = bearer(&request) else {
        return (StatusCode::UNAUTHORIZED, "no token").into_response();
    };
    let claims = match introspect(&api2, &token).await {
        Ok(claims) => claims,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    // Only tokens for API 2: its audience (token exchange) or its scope (delegation).
    let for_api2 = claims["aud"]
        .as_array()
        .is_some_and(|aud| aud.iter().any(|a| a == "api2"))
        || claims["scope"]
            .as_str()
            .is_some_and(|scope| scope.split(' ').any(|s| s == "api2"));
    if claims["active"] != true || !for_api2 {
        return (StatusCode::UNAUTHORIZED, "not a token for API 2").into_response();
    }
    Json(json!({
        "subject": claims["sub"],
        "client_id": claims["client_id"],
        "audience": claims["aud"],
        "scope": claims["scope"],
        "act": claims["act"],
        "token_fingerprint": Secret::new(token).fingerprint(),
    }))
    .into_response()
}

async fn introspect(api2: &Api2, token: &str) -> Result<Value, Box<dyn Error + Send + Sync>> {
    let form = format!("token={token}");
    let request = http::Request::post(api2.idp.introspection_endpoint())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", "Basic YXBpMjphcGkyLXNlY3JldA==") // api2:api2-secret
        .body(Full::from(form))?;
    let response = api2.http.request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

// ---------------------------------------------------------------------------------------------
// API 1: the middle tier. Its middleware takes the caller's token, checks it and puts it in
// the request's extensions as the subject token; its handlers call API 2 through the layer.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Api1 {
    api2: String,
    /// API 2 through the layer of the token-exchange client.
    via_exchange: AccessTokenService<HttpClient>,
    /// API 2 through the layer of the delegation client.
    via_delegation: AccessTokenService<HttpClient>,
}

/// What API 1 knows of its caller: the token and its claims.
#[derive(Clone)]
struct Caller {
    subject: SubjectToken,
    claims: Value,
}

/// API 1's authentication: a bearer JWT for audience `api1`. A real API verifies the signature
/// with the issuer's published keys; the test kit signs with a key of its own, so this one
/// reads the claims, checks audience and expiry, and leaves the signature to the authorization
/// server, which verifies the token when API 1 exchanges it. Revocation, too, is only seen
/// there: this is where the 401 mapping below earns its keep.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let caller = bearer(&request).and_then(|token| {
        let subject = SubjectToken::access_token(token.as_str()).ok()?;
        let claims = jwt_claims(&token)?;
        Some(Caller { subject, claims })
    });
    let Some(caller) = caller else {
        return (StatusCode::UNAUTHORIZED, "a bearer JWT is required").into_response();
    };
    let expired = caller
        .subject
        .expires_at()
        .is_none_or(|exp| exp <= std::time::SystemTime::now());
    if caller.claims["aud"] != "api1" || expired {
        return (StatusCode::UNAUTHORIZED, "not a live token for API 1").into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

async fn orders_via_exchange(State(api1): State<Api1>, request: Request) -> Response {
    call_api2(api1.via_exchange.clone(), &api1.api2, request).await
}

async fn orders_via_delegation(State(api1): State<Api1>, request: Request) -> Response {
    call_api2(api1.via_delegation.clone(), &api1.api2, request).await
}

/// Calls API 2 for the caller: the outgoing request carries the caller's token as its subject
/// token; the layer exchanges it and sends API 2 the result, never the caller's token.
async fn call_api2(
    api2: AccessTokenService<HttpClient>,
    api2_url: &str,
    request: Request,
) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let mut outgoing = match http::Request::get(format!("{api2_url}/orders")).body(Full::default())
    {
        Ok(request) => request,
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
        }
    };
    outgoing.extensions_mut().insert(caller.subject.clone());
    let response = match api2.oneshot(outgoing).await {
        Ok(response) => response,
        // The caller's token was refused by the authorization server (expired, revoked): the
        // caller's problem, answered as API 1 answers any bad token.
        Err(error)
            if error
                .downcast_ref::<tokenwarden::Error>()
                .is_some_and(tokenwarden::Error::is_subject_token_rejected) =>
        {
            let message = format!("your token was refused: {error}");
            return (StatusCode::UNAUTHORIZED, message).into_response();
        }
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let status = response.status();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let api2_saw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !status.is_success() {
        return (StatusCode::BAD_GATEWAY, format!("API 2 answered {status}")).into_response();
    }
    Json(json!({
        "api1_saw": {
            "subject": caller.claims["sub"],
            "audience": caller.claims["aud"],
            "scope": caller.claims["scope"],
            "token_fingerprint": caller.subject.secret().fingerprint(),
        },
        "api2_saw": api2_saw,
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------

fn bearer<B>(request: &http::Request<B>) -> Option<String> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let subject = SubjectToken::from_authorization(value).ok()?;
    Some(subject.expose_secret().to_owned())
}

/// A JWT's claims, read without verifying (see [`authenticate`]).
fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

async fn serve(router: Router) -> Result<String, Box<dyn Error + Send + Sync>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    // The authorization server: API 1 may exchange tokens (both grants); API 2 introspects.
    let idp = TestServer::builder()
        .client("api1", "api1-secret")
        .client("api2", "api2-secret")
        .delegation_grant()
        .start()
        .await?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    let api2_url = serve(
        Router::new()
            .route("/orders", get(api2_orders))
            .with_state(Api2 {
                idp: idp.clone(),
                http: http.clone(),
            }),
    )
    .await?;

    // API 1's token manager: one client per way to API 2.
    let api1_config = ClientConfig::from_issuer(&idp.issuer(), "api1")
        .client_secret("api1-secret")
        .build()?;
    let manager = TokenManager::builder()
        .client(
            "api2-exchange",
            TokenExchange::new(api1_config.clone())
                .audience("api2")
                .scope("orders.read"),
        )
        .client(
            "api2-delegation",
            ExtensionGrant::new(api1_config, "delegation")
                .subject_token_param("token")
                .scope("api2"),
        )
        .build()?;
    let layer = |client: &str| {
        AccessTokenLayer::builder(&manager, client)
            .allow_origin(&api2_url)
            .build()
    };
    let api1 = Api1 {
        api2: api2_url.clone(),
        via_exchange: ServiceBuilder::new()
            .layer(layer("api2-exchange")?)
            .service(http.clone()),
        via_delegation: ServiceBuilder::new()
            .layer(layer("api2-delegation")?)
            .service(http.clone()),
    };
    let api1_url = serve(
        Router::new()
            .route("/orders/exchange", get(orders_via_exchange))
            .route("/orders/delegation", get(orders_via_delegation))
            .layer(middleware::from_fn(authenticate))
            .with_state(api1),
    )
    .await?;
    println!(
        "API 1 at {api1_url}, API 2 at {api2_url}, authorization server at {}",
        idp.base_url()
    );

    // The user's client: alice's access token for API 1, as a web app would hold it.
    let call = |path: &str, token: &str| {
        let request = http::Request::get(format!("{api1_url}{path}"))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::default());
        let http = http.clone();
        async move {
            let response = http.request(request?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn Error + Send + Sync>>((status, body))
        }
    };
    let alice = idp.issue_user_jwt("alice", "api1", "orders.read", Duration::from_secs(300));
    println!(
        "\nalice calls API 1 with her token (fingerprint {})",
        Secret::new(alice.as_str()).fingerprint()
    );
    for path in ["/orders/exchange", "/orders/delegation"] {
        let (status, body) = call(path, &alice).await?;
        let answer: Value = serde_json::from_slice(&body)?;
        println!(
            "\nGET {path} -> {status}\n{}",
            serde_json::to_string_pretty(&answer)?
        );
        let (api1_saw, api2_saw) = (&answer["api1_saw"], &answer["api2_saw"]);
        assert_eq!(api2_saw["subject"], "alice", "API 2 sees the user");
        assert_eq!(api2_saw["client_id"], "api1", "through API 1");
        assert_ne!(
            api1_saw["token_fingerprint"], api2_saw["token_fingerprint"],
            "API 2 never gets the user's token"
        );
    }
    let (status, _) = call("/orders/exchange", &alice).await?;
    assert_eq!(status, StatusCode::OK);
    println!(
        "\nagain: {status}, and still {} exchanges in all (one per subject and client, cached)",
        idp.exchange_requests("api1")
    );

    // Bob signed out: his token is revoked. API 1 cannot tell from the JWT; the exchange can.
    let bob = idp.issue_user_jwt("bob", "api1", "orders.read", Duration::from_secs(300));
    idp.revoke_token(&bob);
    let (status, body) = call("/orders/exchange", &bob).await?;
    println!(
        "\nbob, with a revoked token -> {status}: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    Ok(())
}
