//! A web app calling an API for its signed-in users, with no outside service: an axum app whose
//! session middleware puts the user's `UserKey` in each request's extensions, a token manager
//! with a user client, and an in-process authorization server and API (the test kit) that
//! rotates refresh tokens. Access tokens live 2 s here, so the run shows refreshes and
//! rotations as they happen.
//!
//! Run it with `cargo run --example web_app`.

use std::error::Error;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{
    AccessToken, AccessTokenLayer, AccessTokenService, ClientConfig, MemoryUserTokenStore,
    RefreshTokens, Revoke, Secret, TokenManager, TokenType, UserKey, UserTokenStore, UserTokens,
};
use tokenwarden_testkit::TestServer;
use tower::{ServiceBuilder, ServiceExt};

/// What the handlers share.
#[derive(Clone)]
struct App {
    manager: TokenManager,
    idp: TestServer,
    /// The API client: the token layer over hyper-util.
    api: AccessTokenService<Client<HttpConnector, Full<Bytes>>>,
}

/// The app's session middleware, reduced to its essence: the session cookie (here a header)
/// names the user, and the user's key goes into the request's extensions, where the token
/// layer finds it on the outgoing request.
async fn session(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get("x-session")
        .and_then(|v| v.to_str().ok())
        .map(UserKey::new);
    match user {
        Some(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        None => (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
    }
}

/// Signs the user in: in a real app, the authorization-code flow's callback; here the test
/// kit's sign-in. The tokens it returned are stored for the user.
async fn login(State(app): State<App>, request: Request) -> Result<&'static str, AppError> {
    let user = request
        .extensions()
        .get::<UserKey>()
        .cloned()
        .ok_or(AppError::NoSession)?;
    let signed_in = app.idp.sign_in("web-app", user.as_str());
    let access = AccessToken::new(signed_in.access_token.as_str(), TokenType::Bearer)?
        .with_expires_at(SystemTime::now() + signed_in.expires_in);
    let tokens = UserTokens::new(access, Some(Secret::new(signed_in.refresh_token.as_str())));
    app.manager.sign_in("web-app", &user, tokens).await?;
    Ok("signed in\n")
}

/// Calls the API for the user: the request carries the user's key, the layer adds their token.
async fn invoices(
    State(app): State<App>,
    request: Request,
) -> Result<Json<serde_json::Value>, AppError> {
    let user = request
        .extensions()
        .get::<UserKey>()
        .cloned()
        .ok_or(AppError::NoSession)?;
    let mut outgoing = http::Request::get(app.idp.api_url("/invoices")).body(Full::default())?;
    outgoing.extensions_mut().insert(user);
    let response = app
        .api
        .clone()
        .oneshot(outgoing)
        .await
        .map_err(AppError::Upstream)?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Json(serde_json::from_slice(&body)?))
}

async fn logout(State(app): State<App>, request: Request) -> Result<&'static str, AppError> {
    let user = request
        .extensions()
        .get::<UserKey>()
        .cloned()
        .ok_or(AppError::NoSession)?;
    app.manager
        .sign_out("web-app", &user, Revoke::RefreshToken)
        .await?;
    Ok("signed out\n")
}

/// What a handler can fail with, as the app's own answers.
#[derive(Debug)]
enum AppError {
    NoSession,
    SignInAgain,
    Upstream(Box<dyn Error + Send + Sync>),
    Other(Box<dyn Error + Send + Sync>),
}

impl<E: Into<Box<dyn Error + Send + Sync>>> From<E> for AppError {
    fn from(error: E) -> Self {
        AppError::Other(error.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NoSession => (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
            AppError::SignInAgain => (StatusCode::UNAUTHORIZED, "sign in again").into_response(),
            AppError::Upstream(error)
                if error
                    .downcast_ref::<tokenwarden::Error>()
                    .is_some_and(tokenwarden::Error::is_reauthentication_required) =>
            {
                AppError::SignInAgain.into_response()
            }
            AppError::Upstream(error) | AppError::Other(error) => {
                (StatusCode::BAD_GATEWAY, error.to_string()).into_response()
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    // The authorization server and the API, in this process; 2 s access tokens.
    let idp = TestServer::builder()
        .client("web-app", "web-app-secret")
        .user("alice", "alice-password")
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await?;
    let config = ClientConfig::from_issuer(&idp.issuer(), "web-app")
        .client_secret("web-app-secret")
        .build()?;
    let store = MemoryUserTokenStore::default();
    let manager = TokenManager::builder()
        .user_client("web-app", RefreshTokens::new(config))
        .user_token_store(store.clone())
        .build()?;
    let api = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, "web-app")
                .allow_origin(&idp.base_url())
                .build()?,
        )
        .service(Client::builder(TokioExecutor::new()).build_http());
    let app = App {
        manager: manager.clone(),
        idp: idp.clone(),
        api,
    };
    let router = Router::new()
        .route("/login", post(login))
        .route("/invoices", get(invoices))
        .route("/logout", post(logout))
        .layer(middleware::from_fn(session))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let web = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    println!(
        "web app at {web}, authorization server and API at {}",
        idp.base_url()
    );

    // A browser, reduced to what matters: alice's session.
    let browser = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let visit = |method: &str, path: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{web}{path}"))
            .header("x-session", "alice")
            .body(Full::default());
        let browser = browser.clone();
        async move {
            let response = browser.request(request?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn Error + Send + Sync>>((
                status,
                String::from_utf8_lossy(&body).trim().to_owned(),
            ))
        }
    };

    println!("POST /login     -> {:?}", visit("POST", "/login").await?);
    let alice = UserKey::new("alice");
    let mut last_refresh = None;
    for call in 1..=4 {
        let (status, body) = visit("GET", "/invoices").await?;
        let record = store.get(&manager.user_key("web-app", &alice)?).await?;
        let refresh = record
            .as_ref()
            .and_then(|t| t.refresh_token().map(Secret::fingerprint));
        let note = match (&last_refresh, &refresh) {
            (Some(before), Some(now)) if before != now => {
                format!("refreshed, refresh token rotated {before} -> {now}")
            }
            _ => "stored token used".to_owned(),
        };
        println!("GET /invoices #{call} -> {status} {body}  ({note})");
        last_refresh = refresh;
        // The access token is renewed after half its 2 s lifetime.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    println!("POST /logout    -> {:?}", visit("POST", "/logout").await?);
    println!("GET /invoices   -> {:?}", visit("GET", "/invoices").await?);
    println!();
    println!(
        "refreshes the server answered      {}",
        idp.refresh_requests("web-app")
    );
    println!(
        "refresh tokens reused              {}",
        idp.reuse_detections()
    );
    println!(
        "revocations at sign-out            {}",
        idp.revocation_requests()
    );
    println!("users with stored tokens at the end {}", store.len());
    Ok(())
}
