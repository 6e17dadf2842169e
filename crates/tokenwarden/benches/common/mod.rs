//! What every hot-path benchmark sends, to what, and through which layers: the same request to a
//! no-op service, through the layer or through tower-http's `AddAuthorization` with a fixed value.
#![allow(dead_code)] // each benchmark uses its own part of this

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{AccessTokenLayer, ClientCredentials, TokenManager, TokenManagerBuilder};
use tokenwarden_testkit::TestServer;
use tower::Service;
use tower_http::auth::AddAuthorizationLayer;

/// An inner service that answers at once: the benchmarks measure the middleware alone.
pub(crate) fn noop()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::default()))
    })
}

/// Like [`noop`], but carrying a hyper-util `Client` as a layer over a real client does: it still
/// answers at once, and every clone of it clones the client, whose parts share reference counts
/// (connector configuration, executor, pool) with every other clone in the process.
pub(crate) fn noop_with_client()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        std::hint::black_box(&client);
        async { Ok::<_, Infallible>(Response::new(Full::default())) }
    })
}

/// A GET with one header and an empty body, built anew for every request as a caller would.
pub(crate) fn request(uri: &Uri) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri.clone())
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap()
}

/// What a measured loop sends: a request built anew each time, as a caller would.
pub(crate) trait Shape {
    /// Where requests of this shape go, on the fixture's server at `base`.
    fn uri(base: &Uri) -> Uri;
    fn request(uri: &Uri) -> Request<Full<Bytes>>;
}

/// [`request`]: the smallest request a caller sends, and so the one where the layer's fixed
/// cost weighs most against the request's own.
pub(crate) struct Minimal;

impl Shape for Minimal {
    fn uri(base: &Uri) -> Uri {
        base.clone()
    }

    #[inline(always)]
    fn request(uri: &Uri) -> Request<Full<Bytes>> {
        request(uri)
    }
}

/// A GET as one service sends another in a traced deployment: a query, the headers a client
/// sets (accept, accept-encoding, user-agent) and the tracing headers a service forwards
/// (x-request-id, W3C traceparent). Each header is built from a string, as callers do.
pub(crate) struct Typical;

impl Shape for Typical {
    /// `base` with a path and query a listing call carries.
    fn uri(base: &Uri) -> Uri {
        let base = base.to_string();
        format!(
            "{}/invoices?status=open&page=2&per_page=50",
            base.trim_end_matches('/')
        )
        .parse()
        .unwrap()
    }

    #[inline(always)]
    fn request(uri: &Uri) -> Request<Full<Bytes>> {
        Request::builder()
            .uri(uri.clone())
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

/// Sends `count` requests through `service` one at a time, polling each response once: a cached
/// token and a no-op inner service never wait, so no executor is involved.
pub(crate) fn send_many<S>(service: &mut S, uri: &Uri, count: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    send_many_of::<Minimal, S>(service, uri, count);
}

/// [`send_many`] with requests of shape `R`.
pub(crate) fn send_many_of<R: Shape, S>(service: &mut S, uri: &Uri, count: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..count {
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut future = std::pin::pin!(service.call(R::request(uri)));
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(response) => {
                std::hint::black_box(response.unwrap());
            }
            std::task::Poll::Pending => panic!("the hot path waited: the token was not cached"),
        }
    }
}

/// Like [`send_many`], through a fresh clone of `service` for every request, as callers that clone
/// a client for each call do.
pub(crate) fn send_many_cloned<S>(service: &S, uri: &Uri, count: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone,
    S::Error: std::fmt::Debug,
{
    for _ in 0..count {
        send_many(&mut service.clone(), uri, 1);
    }
}

/// The test server with client `bench`, a manager with its token cached, and the URI requests go to.
pub(crate) struct Fixture {
    pub(crate) server: TestServer,
    pub(crate) manager: TokenManager,
    pub(crate) uri: Uri,
}

impl Fixture {
    pub(crate) fn start(rt: &tokio::runtime::Runtime) -> Fixture {
        let server = rt
            .block_on(
                TestServer::builder()
                    .client("bench", "bench-secret")
                    .start(),
            )
            .unwrap();
        let uri = server.api_url("/resource").parse().unwrap();
        let manager = warm_manager(rt, &server, |b| b);
        Fixture {
            server,
            manager,
            uri,
        }
    }

    /// A manager for client `bench` built with `configure` (a Redis tier, say), its token cached.
    pub(crate) fn manager_with(
        &self,
        rt: &tokio::runtime::Runtime,
        configure: impl FnOnce(TokenManagerBuilder) -> TokenManagerBuilder,
    ) -> TokenManager {
        warm_manager(rt, &self.server, configure)
    }

    /// The layer for `manager`'s client `bench`, allowed to send to the test server.
    pub(crate) fn layer(&self, manager: &TokenManager, replay: bool) -> AccessTokenLayer {
        AccessTokenLayer::builder(manager, "bench")
            .allow_origin(&self.server.base_url())
            .replay_unauthorized(replay)
            .build()
            .unwrap()
    }

    /// The baseline: tower-http's `AddAuthorization` with the cached token as a fixed value.
    pub(crate) fn static_layer(&self, rt: &tokio::runtime::Runtime) -> AddAuthorizationLayer {
        let token = rt.block_on(self.manager.token("bench")).unwrap();
        AddAuthorizationLayer::bearer(token.expose_secret())
    }
}

fn warm_manager(
    rt: &tokio::runtime::Runtime,
    server: &TestServer,
    configure: impl FnOnce(TokenManagerBuilder) -> TokenManagerBuilder,
) -> TokenManager {
    let client = ClientCredentials::builder(&server.token_endpoint(), "bench")
        .client_secret("bench-secret")
        .build()
        .unwrap();
    let manager = configure(TokenManager::builder().client("bench", client))
        .build()
        .unwrap();
    rt.block_on(manager.token("bench")).unwrap();
    manager
}
