//! Several replicas sharing one Redis: each has its own `TokenManager` (its own memory tier and
//! single-flight), all share the Redis tier, and between them they make one token request.
//!
//! Uses `REDIS_URL` when set (keys go under a fresh namespace), otherwise starts a
//! `redis-server` from the PATH on a free port. Run it with
//! `cargo run --example redis_replicas`.

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokenwarden::redis::RedisTokenCache;
use tokenwarden::{AccessTokenLayer, ClientConfig, ClientCredentials, TokenManager};
use tokenwarden_testkit::{RedisServer, TestServer};
use tower::{ServiceBuilder, ServiceExt};

const REPLICAS: usize = 6;
const REQUESTS_PER_REPLICA: usize = 50;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error + Send + Sync>> {
    let (redis_url, _own_server) = match std::env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = RedisServer::start().await?;
            (server.url(), Some(server))
        }
    };
    println!("Redis at {redis_url}");

    // The token endpoint answers slowly, as a busy identity provider does.
    let idp = TestServer::builder()
        .client("billing", "billing-secret")
        .start()
        .await?;
    idp.set_delay(Duration::from_millis(150));

    // A namespace of its own, so a shared REDIS_URL never serves an older run's tokens.
    let namespace = format!("tokenwarden-example-{}", std::process::id());
    let client = ClientConfig::builder(&idp.token_endpoint(), "billing")
        .client_secret("billing-secret")
        .build()?;
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        let manager = TokenManager::builder()
            .client("billing", ClientCredentials::new(client.clone()))
            .namespace(&namespace)
            .shared_cache(RedisTokenCache::builder(&redis_url).build()?)
            .build()?;
        replicas.push(manager);
    }

    // Every replica starts cold and sends its requests at the same time.
    let mut tasks = Vec::new();
    for (i, manager) in replicas.iter().enumerate() {
        let layer = AccessTokenLayer::builder(manager, "billing")
            .allow_origin(&idp.base_url())
            .build()?;
        let client = ServiceBuilder::new()
            .layer(layer)
            .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
        let base = idp.api_url(&format!("/replica/{i}"));
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for n in 0..REQUESTS_PER_REPLICA {
                let request = http::Request::get(format!("{base}/{n}")).body(Full::default())?;
                if client.clone().oneshot(request).await?.status().is_success() {
                    ok += 1;
                }
            }
            Ok::<_, Box<dyn Error + Send + Sync>>(ok)
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += task.await??;
    }

    println!("replicas                         {REPLICAS}");
    println!(
        "requests sent                    {}",
        REPLICAS * REQUESTS_PER_REPLICA
    );
    println!("  succeeded                      {ok}");
    println!(
        "token requests made              {}",
        idp.token_requests("billing")
    );
    for (i, manager) in replicas.iter().enumerate() {
        let m = manager.metrics();
        println!(
            "replica {i}: token requests {}, tokens from Redis {}",
            m.token_requests, m.shared_cache_hits
        );
    }
    Ok(())
}
