//! Where tokens go: only to allowed origins, the check failing closed on ports it cannot read
//! and on a `Host` header that names another origin; a request it refuses is said at debug
//! level; a redirect follower outside the layer never carries the token past the allowed origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use common::{CLIENT, http_client, manager, server};
use http::header::{AUTHORIZATION, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokenwarden::{AccessTokenLayer, TokenManager};
use tokenwarden_testkit::TestServer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

fn layer(manager: &TokenManager, origin: &str) -> AccessTokenLayer {
    AccessTokenLayer::builder(manager, CLIENT)
        .allow_origin(origin)
        .build()
        .unwrap()
}

/// An inner service that answers 200 and records whether each request carried a token.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<bool>>>);

impl tower::Service<Request<Full<Bytes>>> for Recorder {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        self.0
            .lock()
            .unwrap()
            .push(request.headers().contains_key(AUTHORIZATION));
        std::future::ready(Ok(Response::new(Full::default())))
    }
}

#[tokio::test]
async fn a_port_that_cannot_be_read_gets_no_token() {
    let server = server().await;
    let manager = manager(&server);
    let port = server.local_addr().port();
    let recorder = Recorder::default();
    let client = ServiceBuilder::new()
        .layer(layer(&manager, &format!("http://127.0.0.1:{port}")))
        .service(recorder.clone());
    let uris = [
        format!("http://127.0.0.1:{port}/ok"),
        "http://127.0.0.1:99999/".to_owned(),
        "http://127.0.0.1:65979/".to_owned(),
        "http://127.0.0.1:/".to_owned(),
        format!("http://127.0.0.1:{port}0/"),
    ];
    for uri in &uris {
        let request = Request::get(uri.as_str()).body(Full::default()).unwrap();
        client.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [true, false, false, false, false]
    );
}

/// HTTP/1 servers route by `Host`: a request whose `Host` names another origin than its URI goes
/// there as far as the server is concerned.
#[tokio::test]
async fn a_host_header_naming_another_origin_gets_no_token() {
    let server = server().await;
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(layer(&manager, &server.base_url()))
        .service(http_client());
    let request = Request::get(server.api_url("/x"))
        .header(HOST, "billing.other.example")
        .body(Full::default())
        .unwrap();
    let response = client.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "sent without a token"
    );
    assert_eq!(server.requests_with_authorization(), 0);
    assert_eq!(server.token_requests(CLIENT), 0, "none was even fetched");

    // The same request with a Host that agrees with its URI gets one.
    let authority = server.base_url().trim_start_matches("http://").to_owned();
    let request = Request::get(server.api_url("/x"))
        .header(HOST, authority)
        .body(Full::default())
        .unwrap();
    assert_eq!(
        client.oneshot(request).await.unwrap().status(),
        StatusCode::OK
    );
}

async fn other_server() -> TestServer {
    TestServer::builder()
        .client("other", "other-secret")
        .start()
        .await
        .unwrap()
}

/// `allowed → other → other`: the follower outside the layer sends every hop through the origin
/// check, so the other origin never sees the token.
#[tokio::test]
async fn a_redirect_follower_outside_the_layer_never_carries_the_token_away() {
    let allowed = server().await;
    let other = other_server().await;
    let manager = manager(&allowed);
    let client = ServiceBuilder::new()
        .layer(FollowRedirectLayer::new())
        .layer(layer(&manager, &allowed.base_url()))
        .service(http_client());
    let chain = allowed.redirect_url(&other.redirect_url(&other.api_url("/landing")));
    let request = Request::get(chain).body(Full::default()).unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the last hop had no token"
    );
    assert_eq!(
        allowed.requests_with_authorization(),
        1,
        "the first hop had it"
    );
    assert_eq!(other.requests_with_authorization(), 0);
}

/// The order the docs warn against, and why: tower-http's follower re-sends the first request's
/// headers on every hop and strips credentials only when a hop changes origin from the one
/// before, so on `allowed → other → other` the last hop gets the token.
#[tokio::test]
async fn a_redirect_follower_inside_the_layer_leaks_the_token_which_is_why_it_goes_outside() {
    let allowed = server().await;
    let other = other_server().await;
    let manager = manager(&allowed);
    let client = ServiceBuilder::new()
        .layer(layer(&manager, &allowed.base_url()))
        .layer(FollowRedirectLayer::new())
        .service(http_client());
    let chain = allowed.redirect_url(&other.redirect_url(&other.api_url("/landing")));
    let request = Request::get(chain).body(Full::default()).unwrap();
    let _ = client.oneshot(request).await.unwrap();
    assert!(
        other.requests_with_authorization() >= 1,
        "if this fails, tower-http stopped leaking: update the layer's docs and docs/security.md"
    );
}
