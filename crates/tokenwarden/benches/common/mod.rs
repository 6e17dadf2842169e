//! What the hot-path benchmarks share: the test server and a manager with its token cached, the
//! three layers compared (tower-http's `AddAuthorization` with that token as a fixed value, the
//! default layer, the layer without replay), the requests sent, and how they are sent.
#![allow(dead_code)] // each benchmark uses its own part of this

use std::convert::Infallible;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{
    AccessTokenLayer, ClientConfig, ClientCredentials, NoReplay, TokenManager, TokenManagerBuilder,
};
use tokenwarden_testkit::TestServer;
use tower::{Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

/// An inner service that answers at once: the in-process measurements see the middleware alone.
pub(crate) fn noop()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::default()))
    })
}

/// A hyper-util client over plain HTTP, keeping its connection to the loopback server alive.
pub(crate) fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What a measured loop sends: a request built anew each time, as a caller would.
pub(crate) trait Shape {
    /// Where requests of this shape go, given the test API's URI `base`.
    fn uri(base: &Uri) -> Uri;
    fn request(uri: &Uri) -> Request<Full<Bytes>>;
}

/// A GET with one header and an empty body: the smallest request a caller sends, and so the
/// one where the layer's fixed cost weighs most against the request's own.
pub(crate) struct Minimal;

impl Shape for Minimal {
    fn uri(base: &Uri) -> Uri {
        base.clone()
    }

    fn request(uri: &Uri) -> Request<Full<Bytes>> {
        Request::get(uri.clone())
            .header("accept", "application/json")
            .body(Full::default())
            .unwrap()
    }
}

/// A GET as one service sends another in a traced deployment: a query, the headers a client
/// sets (accept, accept-encoding, user-agent) and the tracing headers a service forwards
/// (x-request-id, W3C traceparent).
pub(crate) struct Typical;

impl Shape for Typical {
    fn uri(base: &Uri) -> Uri {
        format!("{base}/invoices?status=open&page=2&per_page=50")
            .parse()
            .unwrap()
    }

    fn request(uri: &Uri) -> Request<Full<Bytes>> {
        Request::get(uri.clone())
            .header("accept", "application/json")
            .header("accept-encoding", "gzip, br")
            .header("user-agent", "billing-worker/1.4.2")
            .header("x-request-id", "0b6f2f8e-7c1a-4d3e-9a55-2f0c8d1e4b7a")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Full::default())
            .unwrap()
    }
}

/// Sends one request and polls its response future once: with a cached token and a no-op inner
/// service nothing waits, so no executor is involved.
#[inline]
pub(crate) fn send_ready<S>(service: &mut S, request: Request<Full<Bytes>>) -> S::Response
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let mut future = std::pin::pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(response) => response.unwrap(),
        Poll::Pending => panic!("the hot path waited: the token was not cached"),
    }
}

/// Sends `count` requests of shape `R` one at a time (see [`send_ready`]); the time they took.
pub(crate) fn single_thread<R: Shape, S>(service: &mut S, uri: &Uri, count: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..count {
        std::hint::black_box(send_ready(service, R::request(uri)));
    }
    start.elapsed()
}

/// `tasks` tasks on the current runtime each send `per_task` requests of shape `R` through their
/// own clone of `service`, concurrently; the time until all are answered.
pub(crate) async fn concurrent<R: Shape, S>(
    service: &S,
    uri: &Uri,
    tasks: u64,
    per_task: u64,
) -> Duration
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..tasks)
        .map(|_| {
            let (mut service, uri) = (service.clone(), uri.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let response = service
                        .ready()
                        .await
                        .unwrap()
                        .call(R::request(&uri))
                        .await
                        .unwrap();
                    std::hint::black_box(response);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

/// Sends a request over a real client and reads the whole answer, which must be a 200 (so the
/// token went along and was accepted).
pub(crate) async fn fetch<S, ResBody>(service: &mut S, request: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: std::fmt::Debug,
    ResBody: Body<Error: std::fmt::Debug>,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    std::hint::black_box(response.into_body().collect().await.unwrap());
}

/// Sends `count` requests of shape `R` through each of three services over a real client (see
/// [`fetch`]), one request at a time, taking turns in an order that rotates from request to
/// request (starting at `turn`); each service's median latency. The median, not the mean: a
/// request that waited for the CPU while another process ran would weigh as much as a hundred.
pub(crate) async fn real_client<R: Shape, A, B, C, BodyA, BodyB, BodyC>(
    services: (&mut A, &mut B, &mut C),
    uri: &Uri,
    count: u64,
    turn: usize,
) -> [Duration; 3]
where
    A: Service<Request<Full<Bytes>>, Response = Response<BodyA>>,
    B: Service<Request<Full<Bytes>>, Response = Response<BodyB>>,
    C: Service<Request<Full<Bytes>>, Response = Response<BodyC>>,
    A::Error: std::fmt::Debug,
    B::Error: std::fmt::Debug,
    C::Error: std::fmt::Debug,
    BodyA: Body<Error: std::fmt::Debug>,
    BodyB: Body<Error: std::fmt::Debug>,
    BodyC: Body<Error: std::fmt::Debug>,
{
    let (a, b, c) = services;
    let mut latencies: [Vec<Duration>; 3] = Default::default();
    for i in 0..count as usize {
        for k in 0..3 {
            let v = (turn + i + k) % 3;
            let start = Instant::now();
            match v {
                0 => fetch(a, R::request(uri)).await,
                1 => fetch(b, R::request(uri)).await,
                _ => fetch(c, R::request(uri)).await,
            }
            latencies[v].push(start.elapsed());
        }
    }
    latencies.map(|mut latencies| {
        latencies.sort();
        latencies[latencies.len() / 2]
    })
}

/// The test server with client `bench`, a manager with its token cached, and the test API's URI.
pub(crate) struct Fixture {
    pub(crate) server: TestServer,
    pub(crate) manager: TokenManager,
    pub(crate) uri: Uri,
}

impl Fixture {
    pub(crate) async fn start() -> Fixture {
        let server = TestServer::builder()
            .client("bench", "bench-secret")
            .start()
            .await
            .unwrap();
        let uri = server.api_url("/resource").parse().unwrap();
        let manager = warm_manager(&server, |builder| builder).await;
        Fixture {
            server,
            manager,
            uri,
        }
    }

    /// A manager for client `bench` built with `configure` (a Redis tier, say), its token cached.
    pub(crate) async fn manager_with(
        &self,
        configure: impl FnOnce(TokenManagerBuilder) -> TokenManagerBuilder,
    ) -> TokenManager {
        warm_manager(&self.server, configure).await
    }

    /// The default layer (replay policy `Buffered`) for `manager`'s client `bench`.
    pub(crate) fn layer(&self, manager: &TokenManager) -> AccessTokenLayer {
        AccessTokenLayer::builder(manager, "bench")
            .allow_origin(&self.server.base_url())
            .build()
            .unwrap()
    }

    /// The layer without replay for `manager`'s client `bench`.
    pub(crate) fn no_replay_layer(&self, manager: &TokenManager) -> AccessTokenLayer<NoReplay> {
        AccessTokenLayer::builder(manager, "bench")
            .allow_origin(&self.server.base_url())
            .replay(NoReplay)
            .build()
            .unwrap()
    }

    /// The baseline: tower-http's `AddAuthorization` with the cached token as a fixed value.
    pub(crate) async fn static_layer(&self) -> AddAuthorizationLayer {
        let token = self.manager.token("bench").await.unwrap();
        AddAuthorizationLayer::bearer(token.expose_secret())
    }
}

async fn warm_manager(
    server: &TestServer,
    configure: impl FnOnce(TokenManagerBuilder) -> TokenManagerBuilder,
) -> TokenManager {
    let config = ClientConfig::builder(&server.token_endpoint(), "bench")
        .client_secret("bench-secret")
        .build()
        .unwrap();
    let manager =
        configure(TokenManager::builder().client("bench", ClientCredentials::new(config)))
            .build()
            .unwrap();
    manager.token("bench").await.unwrap();
    manager
}
