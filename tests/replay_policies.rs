//! Replay policies: `NoReplay` puts no bound on the body type (streaming, boxed, hyper's
//! `Incoming`) and still invalidates a rejected token; a policy of the user's own decides which
//! requests are kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{CLIENT, manager, server};
use http::{Method, Request, StatusCode};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenwarden::layer::Kept;
use tokenwarden::{AccessTokenLayer, AccessTokenService, NoReplay, ReplayPolicy, TokenManager};
use tokenwarden_testkit::TestServer;
use tower::{Service, ServiceBuilder, ServiceExt};

fn no_replay(manager: &TokenManager, server: &TestServer) -> AccessTokenLayer<NoReplay> {
    AccessTokenLayer::builder(manager, CLIENT)
        .allow_origin(&server.base_url())
        .replay(NoReplay)
        .build()
        .unwrap()
}

/// Compiles only if the no-replay service serves requests with this body type.
fn serves<S: Service<Request<B>>, B>(_: &S) {}

/// With `NoReplay` nothing is kept: any body type works (a boxed body cannot be rebuilt from
/// bytes), a 401 goes back as it is, and the token it refused is invalidated all the same.
#[tokio::test]
async fn with_no_replay_any_body_type_works_and_a_401_goes_back() {
    let server = server().await;
    let manager = manager(&server);
    let http = Client::builder(TokioExecutor::new())
        .build_http::<BoxBody<Bytes, std::convert::Infallible>>();
    let client: AccessTokenService<_, NoReplay> = ServiceBuilder::new()
        .layer(no_replay(&manager, &server))
        .service(http);
    let send = |path: &str| {
        let request = Request::post(server.api_url(path))
            .body(Full::new(Bytes::from_static(b"{}")).boxed())
            .unwrap();
        client.clone().oneshot(request)
    };
    assert_eq!(send("/first").await.unwrap().status(), StatusCode::OK);
    server.revoke_all();

    let response = send("/rejected").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .headers()
            .contains_key(http::header::WWW_AUTHENTICATE),
        "the server's 401, unchanged"
    );
    assert_eq!(server.api_requests(), 2, "not replayed");
    assert_eq!(manager.metrics().replays, 0);
    assert_eq!(manager.metrics().invalidations, 1);

    // The next request gets a new token.
    assert_eq!(send("/next").await.unwrap().status(), StatusCode::OK);
    assert_eq!(server.token_requests(CLIENT), 2);
}

/// The body types a no-replay layer serves besides `BoxBody`: checked by the compiler.
#[test]
fn no_replay_serves_streaming_and_boxed_bodies() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(server());
    let manager = manager(&server);
    let layer = || no_replay(&manager, &server);
    let empty = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    serves::<_, Empty<Bytes>>(&ServiceBuilder::new().layer(layer()).service(empty));
    let unsync =
        Client::builder(TokioExecutor::new()).build_http::<UnsyncBoxBody<Bytes, hyper::Error>>();
    serves::<_, UnsyncBoxBody<Bytes, hyper::Error>>(
        &ServiceBuilder::new().layer(layer()).service(unsync),
    );
    let incoming = Client::builder(TokioExecutor::new()).build_http::<hyper::body::Incoming>();
    serves::<_, hyper::body::Incoming>(&ServiceBuilder::new().layer(layer()).service(incoming));
}

/// A policy of the user's own: replay GETs only (say, because POSTs are not idempotent here).
#[derive(Clone, Debug)]
struct GetsOnly;

impl ReplayPolicy<Full<Bytes>> for GetsOnly {
    fn keep(&self, request: &mut Request<Full<Bytes>>) -> Kept<Full<Bytes>> {
        if request.method() == Method::GET {
            Kept::Body(request.body().clone())
        } else {
            Kept::Nothing
        }
    }
}

#[tokio::test]
async fn a_policy_of_ones_own_decides_what_is_replayed() {
    let server = server().await;
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, CLIENT)
                .allow_origin(&server.base_url())
                .replay(GetsOnly)
                .build()
                .unwrap(),
        )
        .service(common::http_client());
    let send = |method: Method| {
        let request = Request::builder()
            .method(method)
            .uri(server.api_url("/x"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        client.clone().oneshot(request)
    };
    assert_eq!(send(Method::GET).await.unwrap().status(), StatusCode::OK);
    server.revoke_all();
    assert_eq!(
        send(Method::GET).await.unwrap().status(),
        StatusCode::OK,
        "replayed"
    );
    assert_eq!(manager.metrics().replays, 1);
    server.revoke_all();
    assert_eq!(
        send(Method::POST).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(manager.metrics().replays, 1, "not replayed");
    assert_eq!(manager.metrics().invalidations, 2);
}
