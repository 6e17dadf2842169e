//! What an operator sees in the logs: a span around each token acquisition with the client, the
//! grant, why the token was needed, where it came from, how many requests it took, how long and
//! how it ended; a WARN line for a failed token request naming the client and the endpoint; and
//! never a secret. Its own binary: tracing decides once per call site whether anyone listens, and
//! every test here listens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::{CLIENT, SECRET, http_client, manager, server};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokenwarden::AccessTokenLayer;
use tokenwarden_testkit::Failure;
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::fmt::format::FmtSpan;

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

impl Logs {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Logs everything at debug level and above, each span's fields when it closes.
fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn each_acquisition_is_a_span_with_what_it_took_and_no_secret() {
    let (logs, _guard) = capture();
    let server = server().await;
    server.fail_next(Failure::Status(StatusCode::BAD_GATEWAY));
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, CLIENT)
                .allow_origin(&server.base_url())
                .build()
                .unwrap(),
        )
        .service(http_client());
    let get = || {
        Request::get(server.api_url("/x"))
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(
        client.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );
    server.revoke_all();
    assert_eq!(
        client.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );

    let text = logs.text();
    let closes: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("token_acquisition{") && l.contains("close"))
        .collect();
    assert_eq!(closes.len(), 2, "one span per acquisition:\n{text}");
    let first = closes[0];
    for field in [
        "client=billing",
        "grant=client_credentials",
        "reason=\"missing\"",
        "tier=\"endpoint\"",
        "attempts=2",
        "duration_ms=",
        "outcome=\"ok\"",
    ] {
        assert!(first.contains(field), "{field} missing in {first}");
    }
    assert!(closes[1].contains("reason=\"rejected\""), "{}", closes[1]);
    assert!(closes[1].contains("attempts=1"), "{}", closes[1]);

    // No secret anywhere: not the client secret, not a token (the test server's tokens start
    // with `tk_`; logs show a short fingerprint instead).
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("tk_"), "{text}");
}

#[tokio::test]
async fn a_failed_token_request_is_a_warning_naming_the_client_and_the_endpoint() {
    let (logs, _guard) = capture();
    let server = server().await;
    server.fail_next(Failure::oauth("invalid_scope"));
    let manager = manager(&server);
    let error = manager.token(CLIENT).await.unwrap_err();
    let text = logs.text();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("token request failed"))
        .unwrap_or_else(|| panic!("no warning for {error}:\n{text}"));
    assert!(warning.contains("client=billing"), "{warning}");
    assert!(warning.contains(&server.token_endpoint()), "{warning}");
    assert!(warning.contains("invalid_scope"), "{warning}");
    assert!(!text.contains(SECRET), "{text}");
}
