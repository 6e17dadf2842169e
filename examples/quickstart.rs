//! tokenwarden in one minute, with no outside service: an in-process OAuth 2.0 server and API,
//! 100 requests through a hyper-util client with the token layer, and a server-side revocation
//! half-way that the layer absorbs (invalidate, renew, replay once).
//!
//! Run it with `cargo run --example quickstart`.

use std::error::Error;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{AccessTokenLayer, ClientConfig, ClientCredentials, TokenManager};
use tokenwarden_testkit::TestServer;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    // An authorization server and a protected API on 127.0.0.1, in this process.
    let server = TestServer::builder()
        .client("billing", "billing-secret")
        .start()
        .await?;
    println!("test OAuth server and API at {}", server.base_url());

    // Business code registers its client once (as the authorization server knows it), says
    // which grant gets its tokens...
    let idp = ClientConfig::builder(&server.token_endpoint(), "billing")
        .client_secret("billing-secret")
        .build()?;
    let manager = TokenManager::builder()
        .client(
            "billing",
            ClientCredentials::new(idp).scope("invoices.read"),
        )
        .build()?;

    // ...and sends plain requests through a stack that attaches tokens.
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, "billing")
                .allow_origin(&server.base_url())
                .build()?,
        )
        .service(http);

    let (mut ok, mut failed) = (0, 0);
    for i in 0..100 {
        if i == 50 {
            server.revoke_all();
            println!("request {i}: the server revoked every token it had issued");
        }
        let request =
            http::Request::get(server.api_url(&format!("/invoices/{i}"))).body(Full::default())?;
        match client.clone().oneshot(request).await {
            Ok(response) if response.status().is_success() => {
                response.into_body().collect().await?;
                ok += 1;
            }
            Ok(response) => {
                println!("request {i}: {}", response.status());
                failed += 1;
            }
            Err(error) => {
                println!("request {i}: {error}");
                failed += 1;
            }
        }
    }

    let metrics = manager.metrics();
    println!();
    println!("requests sent by the app                   {}", ok + failed);
    println!("  answered with success                    {ok}");
    println!("  failed (as the app saw them)             {failed}");
    println!(
        "token requests the server received         {}",
        server.token_requests("billing")
    );
    println!(
        "401s the API answered                      {}",
        server.api_rejections()
    );
    println!(
        "requests the layer replayed after a 401    {}",
        metrics.replays
    );
    println!(
        "cached tokens the layer invalidated        {}",
        metrics.invalidations
    );
    server.shutdown().await;
    if failed > 0 {
        return Err(format!("{failed} requests failed").into());
    }
    Ok(())
}
