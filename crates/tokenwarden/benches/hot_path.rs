//! The layer's hot path (a cached, valid token) against tower-http's `AddAuthorization` with the
//! same token as a fixed value; the cost of a Redis tier; and the latency over a real client.
//!
//! `cargo bench -p tokenwarden --bench hot_path`
//!
//! - `single_thread/*`: one request at a time on a no-op inner service (time per request);
//! - `two_workers/*`: 64 tasks, each with its own service clone, on a 2-worker runtime over the
//!   no-op inner service; the time reported is per request, so its inverse is throughput;
//! - `redis_tier/*`: the single-thread hot path with a Redis shared tier configured, and an
//!   in-memory miss served from Redis (needs `redis-server` on the PATH; skipped otherwise);
//! - `real_client/*`: one request at a time over a hyper-util client to the test kit's API on
//!   loopback, the answer read in full (time per request).
//!
//! Criterion measures one variant after another; for the ratios the goals name, with the
//! variants interleaved, see the `hot_path_ratio` bench.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tokenwarden_redis::RedisTokenCache;
use tokenwarden_testkit::RedisServer;
use tower::{Layer, Service};

use common::{Fixture, Minimal, Shape, concurrent, fetch, http_client, noop, send_ready};

const TASKS: u64 = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn single_thread<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut service: S, uri: &Uri)
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.iter(|| send_ready(&mut service, Minimal::request(uri)))
    });
}

fn layer_vs_static(c: &mut Criterion) {
    let rt = runtime();
    let fixture = rt.block_on(Fixture::start());
    let uri = &fixture.uri;
    let static_layer = rt.block_on(fixture.static_layer());
    let default_layer = fixture.layer(&fixture.manager);
    let no_replay_layer = fixture.no_replay_layer(&fixture.manager);

    let mut group = c.benchmark_group("single_thread");
    single_thread(
        &mut group,
        "static_add_authorization",
        static_layer.layer(noop()),
        uri,
    );
    single_thread(
        &mut group,
        "tokenwarden_default",
        default_layer.layer(noop()),
        uri,
    );
    single_thread(
        &mut group,
        "tokenwarden_no_replay",
        no_replay_layer.layer(noop()),
        uri,
    );
    group.finish();

    let mut group = c.benchmark_group("two_workers");
    two_workers(
        &mut group,
        "static_add_authorization",
        &rt,
        static_layer.layer(noop()),
        uri,
    );
    two_workers(
        &mut group,
        "tokenwarden_default",
        &rt,
        default_layer.layer(noop()),
        uri,
    );
    two_workers(
        &mut group,
        "tokenwarden_no_replay",
        &rt,
        no_replay_layer.layer(noop()),
        uri,
    );
    group.finish();

    let mut group = c.benchmark_group("real_client");
    let client = http_client();
    real_client(
        &mut group,
        "static_add_authorization",
        &rt,
        static_layer.layer(client.clone()),
        uri,
    );
    real_client(
        &mut group,
        "tokenwarden_default",
        &rt,
        default_layer.layer(client.clone()),
        uri,
    );
    real_client(
        &mut group,
        "tokenwarden_no_replay",
        &rt,
        no_replay_layer.layer(client),
        uri,
    );
    group.finish();
}

/// `iters` requests spread over `TASKS` tasks on the 2-worker runtime; the time per request.
fn two_workers<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    service: S,
    uri: &Uri,
) where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: std::fmt::Debug,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let per_task = iters.div_ceil(TASKS);
            let service = &service;
            async move {
                let elapsed = concurrent::<Minimal, _>(service, uri, TASKS, per_task).await;
                elapsed.mul_f64(iters as f64 / (per_task * TASKS) as f64)
            }
        })
    });
}

/// One request at a time over the real client, the answer read in full; each sample through a
/// clone of `service`, made before the clock starts.
fn real_client<S, ResBody>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    service: S,
    uri: &Uri,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone,
    S::Error: std::fmt::Debug,
    ResBody: Body<Error: std::fmt::Debug>,
{
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut service = service.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    fetch(&mut service, Minimal::request(uri)).await;
                }
                start.elapsed()
            }
        })
    });
}

fn redis_tier(c: &mut Criterion) {
    let rt = runtime();
    let redis = match rt.block_on(RedisServer::start()) {
        Ok(redis) => redis,
        Err(error) => {
            eprintln!("redis_tier skipped: {error}");
            return;
        }
    };
    let fixture = rt.block_on(Fixture::start());
    let uri = &fixture.uri;
    let cache = RedisTokenCache::builder(&redis.url()).build().unwrap();
    let with_redis = rt.block_on(fixture.manager_with(|b| b.shared_cache(cache)));

    let mut group = c.benchmark_group("redis_tier");
    let memory_only = fixture.layer(&fixture.manager).layer(noop());
    single_thread(&mut group, "layer_memory_only", memory_only, uri);
    let with_redis_tier = fixture.layer(&with_redis).layer(noop());
    single_thread(&mut group, "layer_with_redis_tier", with_redis_tier, uri);
    // An in-memory miss served by Redis: forget the in-memory copy, then ask for the token.
    group.bench_function("l1_miss_redis_hit", |b| {
        b.to_async(&rt).iter(|| async {
            with_redis.purge_local();
            with_redis.token("bench").await.unwrap()
        })
    });
    group.finish();
    let requests = fixture.server.token_requests("bench");
    assert!(
        requests <= 3,
        "the Redis hits went to the token endpoint ({requests} token requests)"
    );
    drop(redis);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = layer_vs_static, redis_tier
}
criterion_main!(benches);
