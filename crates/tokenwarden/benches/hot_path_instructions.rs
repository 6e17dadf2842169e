//! A deterministic companion to the `hot_path` benchmark: runs one variant a fixed number of
//! times so an instruction counter measures it, free of the timing noise of a shared machine.
//!
//! ```sh
//! cargo bench -p tokenwarden --bench hot_path_instructions --no-run
//! B=$(ls -t target/release/deps/hot_path_instructions-* | grep -v '\.d$' | head -1)
//! for v in static tokenwarden tokenwarden_no_replay tokenwarden_redis_tier; do for n in 0 100000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null $B $v $n 2>&1 | grep refs
//! done; done
//! ```
//! Instructions per request = (refs at 100000 - refs at 0) / 100000.
//! Without arguments (as under `cargo bench`) it runs every variant briefly and prints nothing else.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use tokenwarden::{AccessTokenLayer, ClientCredentials, TokenManager};
use tokenwarden_testkit::{RedisServer, TestServer};
use tower::{Service, ServiceBuilder};
use tower_http::auth::AddAuthorizationLayer;

use common::{noop, request};

fn run<S>(mut service: S, uri: &Uri, count: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..count {
        assert!(service.poll_ready(&mut cx).is_ready());
        let mut future = std::pin::pin!(service.call(request(uri)));
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(response) => {
                std::hint::black_box(response.unwrap());
            }
            std::task::Poll::Pending => panic!("the hot path waited"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt
        .block_on(
            TestServer::builder()
                .client("bench", "bench-secret")
                .start(),
        )
        .unwrap();
    let client = ClientCredentials::builder(&server.token_endpoint(), "bench")
        .client_secret("bench-secret")
        .build()
        .unwrap();
    let manager = TokenManager::builder()
        .client("bench", client)
        .build()
        .unwrap();
    let token = rt.block_on(manager.token("bench")).unwrap();
    let uri: Uri = server.api_url("/resource").parse().unwrap();
    let layer = |replay| {
        AccessTokenLayer::builder(&manager, "bench")
            .allow_origin(&server.base_url())
            .replay_unauthorized(replay)
            .build()
            .unwrap()
    };
    let variants: Vec<&str> = match args.first() {
        Some(v) => vec![v.as_str()],
        None => vec![
            "static",
            "tokenwarden",
            "tokenwarden_no_replay",
            "tokenwarden_redis_tier",
        ],
    };
    let count: u64 = args.get(1).map_or(1_000, |n| n.parse().unwrap());
    for variant in variants {
        match variant {
            "static" => run(
                ServiceBuilder::new()
                    .layer(AddAuthorizationLayer::bearer(token.expose_secret()))
                    .service(noop()),
                &uri,
                count,
            ),
            "tokenwarden" => run(
                ServiceBuilder::new().layer(layer(true)).service(noop()),
                &uri,
                count,
            ),
            "tokenwarden_no_replay" => run(
                ServiceBuilder::new().layer(layer(false)).service(noop()),
                &uri,
                count,
            ),
            "tokenwarden_redis_tier" => {
                // The same hot path with a Redis tier behind the memory tier.
                let redis = rt
                    .block_on(RedisServer::start())
                    .expect("redis-server on the PATH");
                let client = ClientCredentials::builder(&server.token_endpoint(), "bench")
                    .client_secret("bench-secret")
                    .build()
                    .unwrap();
                let cache = tokenwarden_redis::RedisTokenCache::builder(&redis.url())
                    .build()
                    .unwrap();
                let with_redis = TokenManager::builder()
                    .client("bench", client)
                    .shared_cache(cache)
                    .build()
                    .unwrap();
                rt.block_on(with_redis.token("bench")).unwrap();
                let layer = AccessTokenLayer::builder(&with_redis, "bench")
                    .allow_origin(&server.base_url())
                    .build()
                    .unwrap();
                run(
                    ServiceBuilder::new().layer(layer).service(noop()),
                    &uri,
                    count,
                );
            }
            other => panic!("unknown variant {other}"),
        }
    }
}
