//! A deterministic companion to the `hot_path` benchmark: runs one variant a fixed number of
//! times so an instruction counter measures it, free of the timing noise of a shared machine.
//!
//! ```sh
//! cargo bench -p tokenwarden --bench hot_path_instructions --no-run
//! B=$(ls -t target/release/deps/hot_path_instructions-* | grep -v '\.d$' | head -1)
//! for v in static tokenwarden tokenwarden_no_replay tokenwarden_redis_tier \
//!     static_clone_per_request tokenwarden_clone_per_request static_client_inner \
//!     tokenwarden_client_inner static_typical tokenwarden_typical \
//!     tokenwarden_no_replay_typical; do for n in 0 100000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null $B $v $n 2>&1 | grep refs
//! done; done
//! ```
//! Instructions per request = (refs at 100000 - refs at 0) / 100000.
//! Without arguments (as under `cargo bench`) it runs every variant briefly and prints nothing else.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use tokenwarden_redis::RedisTokenCache;
use tokenwarden_testkit::RedisServer;
use tower::{Service, ServiceBuilder};

use bytes::Bytes;
use common::{
    Fixture, Shape, Typical, noop, noop_with_client, send_many, send_many_cloned, send_many_of,
};
use http::{Request, Response, Uri};
use http_body_util::Full;

fn run<S>(mut service: S, uri: &Uri, count: u64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    send_many(&mut service, uri, count);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    // Multi-thread, as services run: only there does a timer vouch for a cached token (see
    // `TokenManager::arm_freshness_timer`). Its one worker sleeps while requests are counted.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fixture = Fixture::start(&rt);
    let uri = &fixture.uri;
    let variants: Vec<&str> = match args.first() {
        Some(v) => vec![v.as_str()],
        None => vec![
            "static",
            "tokenwarden",
            "tokenwarden_no_replay",
            "tokenwarden_redis_tier",
            "static_clone_per_request",
            "tokenwarden_clone_per_request",
            "static_client_inner",
            "tokenwarden_client_inner",
            "static_typical",
            "tokenwarden_typical",
            "tokenwarden_no_replay_typical",
        ],
    };
    let count: u64 = args.get(1).map_or(1_000, |n| n.parse().unwrap());
    for variant in variants {
        let layer = |replay| fixture.layer(&fixture.manager, replay);
        match variant {
            "static" => run(
                ServiceBuilder::new()
                    .layer(fixture.static_layer(&rt))
                    .service(noop()),
                uri,
                count,
            ),
            "tokenwarden" => run(
                ServiceBuilder::new().layer(layer(true)).service(noop()),
                uri,
                count,
            ),
            "tokenwarden_no_replay" => run(
                ServiceBuilder::new().layer(layer(false)).service(noop()),
                uri,
                count,
            ),
            // A clone of the service for every request.
            "static_clone_per_request" => send_many_cloned(
                &ServiceBuilder::new()
                    .layer(fixture.static_layer(&rt))
                    .service(noop()),
                uri,
                count,
            ),
            "tokenwarden_clone_per_request" => send_many_cloned(
                &ServiceBuilder::new().layer(layer(true)).service(noop()),
                uri,
                count,
            ),
            // An inner service carrying a hyper-util client, whose clones share counts.
            "static_client_inner" => run(
                ServiceBuilder::new()
                    .layer(fixture.static_layer(&rt))
                    .service(noop_with_client()),
                uri,
                count,
            ),
            "tokenwarden_client_inner" => run(
                ServiceBuilder::new()
                    .layer(layer(true))
                    .service(noop_with_client()),
                uri,
                count,
            ),
            // The request a traced service sends (see `common::Typical`).
            "static_typical" => send_many_of::<Typical, _>(
                &mut ServiceBuilder::new()
                    .layer(fixture.static_layer(&rt))
                    .service(noop()),
                &Typical::uri(uri),
                count,
            ),
            "tokenwarden_typical" => send_many_of::<Typical, _>(
                &mut ServiceBuilder::new().layer(layer(true)).service(noop()),
                &Typical::uri(uri),
                count,
            ),
            "tokenwarden_no_replay_typical" => send_many_of::<Typical, _>(
                &mut ServiceBuilder::new().layer(layer(false)).service(noop()),
                &Typical::uri(uri),
                count,
            ),
            "tokenwarden_redis_tier" => {
                // The same hot path with a Redis tier behind the memory tier.
                let redis = rt
                    .block_on(RedisServer::start())
                    .expect("redis-server on the PATH");
                let cache = RedisTokenCache::builder(&redis.url()).build().unwrap();
                let with_redis = fixture.manager_with(&rt, |b| b.shared_cache(cache));
                run(
                    ServiceBuilder::new()
                        .layer(fixture.layer(&with_redis, true))
                        .service(noop()),
                    uri,
                    count,
                );
            }
            other => panic!("unknown variant {other}"),
        }
    }
}
