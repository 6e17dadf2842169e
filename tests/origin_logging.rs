//! A request the layer sends without a token is said at debug level, with its origin: a
//! `localhost` vs `127.0.0.1` mistake shows in the logs. Alone in its binary, because tracing
//! decides once per call site whether anyone listens, and a test running at the same moment
//! on another thread could make that decision before this test's subscriber is in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::{CLIENT, http_client, manager, server};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokenwarden::AccessTokenLayer;
use tower::{ServiceBuilder, ServiceExt};

/// A `localhost` vs `127.0.0.1` mistake sends requests without a token; the debug log says so.
#[tokio::test]
async fn a_request_to_an_origin_not_allowed_is_logged_at_debug_with_its_origin() {
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = server().await;
    let manager = manager(&server);
    let port = server.local_addr().port();
    let layer = AccessTokenLayer::builder(&manager, CLIENT)
        .allow_origin(&format!("http://localhost:{port}"))
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(layer).service(http_client());
    let request = Request::get(format!("http://127.0.0.1:{port}/api/secret-path?q=1"))
        .body(Full::default())
        .unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("does not allow"))
        .unwrap_or_else(|| panic!("no debug event in:\n{text}"));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains(&format!("http://127.0.0.1:{port}")), "{line}");
    assert!(
        !line.contains("secret-path"),
        "the path stays out of the log: {line}"
    );
}
