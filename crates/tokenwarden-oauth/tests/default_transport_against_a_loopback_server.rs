//! `OAuthClient::new()` (hyper-util + rustls) against a real hyper 1 server on 127.0.0.1:0: the
//! default transport sends a proper request, passes the server's `Retry-After` on, and a hung
//! server or an oversized body is cut off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokenwarden_core::{TokenParams, TokenType};
use tokenwarden_oauth::{ClientConfig, ClientCredentials, Error, OAuthClient};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type ServerBody = BoxBody<Bytes, Infallible>;

/// Serves `handler` with hyper's HTTP/1 server on a free loopback port until the test ends.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ServerBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                // The client hanging up mid-body is part of some tests.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn json(status: u16, body: &'static str) -> Response<ServerBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .unwrap()
}

fn client(addr: SocketAddr) -> ClientCredentials {
    let config = ClientConfig::builder(&format!("http://{addr}/oauth2/token"), "reports")
        .client_secret("loopback-secret")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    ClientCredentials::new(config).scope("reports.read")
}

/// A client of `addr` that gives up after 300 ms.
fn impatient_client(addr: SocketAddr) -> ClientCredentials {
    let config = ClientConfig::builder(&format!("http://{addr}/token"), "c")
        .client_secret("s")
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    ClientCredentials::new(config)
}

#[derive(Debug)]
struct Seen {
    method: http::Method,
    path: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_transport_gets_a_token_from_a_real_server() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let addr = serve(move |request: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            let header = |name: &str| {
                request
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let (content_type, authorization) = (header("content-type"), header("authorization"));
            let body = request.into_body().collect().await.unwrap().to_bytes();
            seen_tx
                .send(Seen {
                    method,
                    path,
                    content_type,
                    authorization,
                    body: String::from_utf8(body.to_vec()).unwrap(),
                })
                .unwrap();
            json(
                200,
                r#"{"access_token":"loopback-token","token_type":"Bearer","expires_in":120}"#,
            )
        }
    })
    .await;

    let oauth = OAuthClient::new().unwrap();
    let response = oauth
        .request_token(&client(addr), &TokenParams::new())
        .await
        .unwrap();
    assert_eq!(response.access_token().expose_secret(), "loopback-token");
    assert_eq!(response.access_token().token_type(), &TokenType::Bearer);
    assert_eq!(response.expires_in(), Some(Duration::from_secs(120)));

    let seen = seen_rx.recv().await.unwrap();
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.path, "/oauth2/token");
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    // base64("reports:loopback-secret")
    assert_eq!(
        seen.authorization.as_deref(),
        Some("Basic cmVwb3J0czpsb29wYmFjay1zZWNyZXQ=")
    );
    assert_eq!(
        seen.body,
        "grant_type=client_credentials&scope=reports.read"
    );

    // A clone shares the pooled connection and keeps working.
    let again = oauth
        .clone()
        .request_token(&client(addr), &TokenParams::new())
        .await
        .unwrap();
    assert_eq!(again.access_token().expose_secret(), "loopback-token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_transport_reports_the_servers_oauth_error() {
    let addr = serve(|_| async {
        json(
            401,
            r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
        )
    })
    .await;
    let err = OAuthClient::new()
        .unwrap()
        .request_token(&client(addr), &TokenParams::new())
        .await
        .unwrap_err();
    match &err {
        Error::TokenEndpoint {
            status,
            error,
            description,
            retry_after,
            ..
        } => {
            assert_eq!(*status, StatusCode::UNAUTHORIZED);
            assert_eq!(*retry_after, None);
            assert_eq!(error, "invalid_client");
            assert_eq!(description.as_deref(), Some("client authentication failed"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_servers_retry_after_reaches_the_caller() {
    let addr = serve(|_| async {
        Response::builder()
            .status(503)
            .header("retry-after", "2")
            .body(http_body_util::Empty::new().boxed())
            .unwrap()
    })
    .await;
    let err = OAuthClient::new()
        .unwrap()
        .request_token(&client(addr), &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnexpectedStatus {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    assert!(err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_retryable_transport_error() {
    // Bind then drop, so the port is (almost certainly) closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = OAuthClient::new()
        .unwrap()
        .request_token(&client(addr), &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_but_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, mut held_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            // Hold the connection open without ever reading or writing.
            let (stream, _) = listener.accept().await.unwrap();
            if held_tx.send(stream).is_err() {
                return;
            }
        }
    });
    let client = impatient_client(addr);
    let started = Instant::now();
    let err = OAuthClient::new()
        .unwrap()
        .request_token(&client, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after: d, .. } if d == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(held_rx.recv().await.is_some(), "the client connected");
}

/// A server body that sends the headers, then nothing.
struct Stalled;

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_mid_body_times_out() {
    let addr = serve(|_| async { Response::new(Stalled.boxed()) }).await;
    let client = impatient_client(addr);
    let err = OAuthClient::new()
        .unwrap()
        .request_token(&client, &TokenParams::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

/// A 10 MB server body in 64 KiB chunks, counting what hyper pulled from it.
struct TenMegabytes {
    produced: Arc<AtomicUsize>,
    announce_length: bool,
}

const TEN_MB: usize = 10 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

impl Body for TenMegabytes {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let before = self.produced.fetch_add(CHUNK, Ordering::SeqCst);
        if before >= TEN_MB {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK])))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.announce_length {
            // An exact hint makes hyper send `Content-Length` instead of chunked encoding.
            let remaining = TEN_MB.saturating_sub(self.produced.load(Ordering::SeqCst));
            SizeHint::with_exact(remaining as u64)
        } else {
            SizeHint::default()
        }
    }
}

async fn ten_megabyte_response(announce_length: bool) -> (Error, usize) {
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let addr = serve(move |_| {
        let produced = counter.clone();
        async move {
            Response::new(
                TenMegabytes {
                    produced,
                    announce_length,
                }
                .boxed(),
            )
        }
    })
    .await;
    let err = OAuthClient::new()
        .unwrap()
        .request_token(&client(addr), &TokenParams::new())
        .await
        .unwrap_err();
    (err, produced.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_chunked_body_is_refused_while_reading() {
    let (err, produced) = ten_megabyte_response(false).await;
    assert!(
        matches!(err, Error::ResponseTooLarge { limit: 65536 }),
        "{err:?}"
    );
    // The client hung up long before the server could send it all.
    assert!(produced < TEN_MB, "server produced {produced} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_content_length_is_refused_before_reading() {
    let (err, produced) = ten_megabyte_response(true).await;
    assert!(
        matches!(err, Error::ResponseTooLarge { limit: 65536 }),
        "{err:?}"
    );
    assert!(produced < TEN_MB, "server produced {produced} bytes");
}
