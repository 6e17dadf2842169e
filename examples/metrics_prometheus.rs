//! What an operator sees: tokenwarden's counters and histograms through the `metrics` facade
//! (feature `metrics`), collected by a Prometheus recorder and printed in Prometheus' text
//! format. No outside service: an in-process OAuth 2.0 server and API, a revocation half-way,
//! and a token endpoint that fails once.
//!
//! Run it with `cargo run --example metrics_prometheus`.

use std::error::Error;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokenwarden::{AccessTokenLayer, ClientConfig, ClientCredentials, RetryPolicy, TokenManager};
use tokenwarden_testkit::{Failure, TestServer};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    // In a service this would be the exporter's HTTP listener; here, a handle to render with.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let server = TestServer::builder()
        .client("billing", "billing-secret")
        .start()
        .await?;
    let idp = ClientConfig::builder(&server.token_endpoint(), "billing")
        .client_secret("billing-secret")
        .build()?;
    let manager = TokenManager::builder()
        .client("billing", ClientCredentials::new(idp))
        .retry(RetryPolicy::new(2).base_delay(std::time::Duration::from_millis(10)))
        .build()?;
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, "billing")
                .allow_origin(&server.base_url())
                .build()?,
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // The first token request meets a 503 and is retried.
    server.fail_next(Failure::Status(StatusCode::SERVICE_UNAVAILABLE));
    for i in 0..20 {
        if i == 10 {
            server.revoke_all();
        }
        let request = http::Request::get(server.api_url("/invoices")).body(Full::default())?;
        let response = client.clone().oneshot(request).await?;
        response.into_body().collect().await?;
    }

    println!("{}", prometheus.render());
    Ok(())
}
