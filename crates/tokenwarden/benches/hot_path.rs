//! The layer's hot path (a cached, valid token) against tower-http's `AddAuthorization` with a
//! static value, on a no-op inner service, in the same run; and the cost of the Redis tier.
//!
//! `cargo bench -p tokenwarden --bench hot_path`
//!
//! - `single_thread/*`: one request at a time on a current-thread runtime (time per request).
//! - `multi_thread/*`: 64 tasks on a 2-worker runtime sending requests concurrently; the time
//!   reported is per request, so its inverse is throughput.
//! - `redis_tier/*`: the same hot path with a Redis shared tier configured, and an L1 miss served
//!   from Redis (needs `redis-server` on the PATH; skipped with a message otherwise).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, Uri};
use http_body_util::Full;
use tokenwarden_redis::RedisTokenCache;
use tokenwarden_testkit::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};

use common::{Fixture, noop, noop_with_client, request};

const TASKS: usize = 64;

/// Sends `count` requests through clones of `service` from `TASKS` concurrent tasks.
async fn concurrent<S>(service: S, uri: Uri, count: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let per_task = count.div_ceil(TASKS as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            // Each task has its own service clone and its own URI, as independent callers would.
            let (mut service, uri) = (service.clone(), uri.to_string().parse::<Uri>().unwrap());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let response = service
                        .ready()
                        .await
                        .unwrap()
                        .call(request(&uri))
                        .await
                        .unwrap();
                    std::hint::black_box(response);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start
        .elapsed()
        .mul_f64(count as f64 / (per_task * TASKS as u64) as f64)
}

fn layer_vs_static(c: &mut Criterion) {
    let setup = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fixture = Fixture::start(&setup);
    let uri = fixture.uri.clone();
    let layer = fixture.layer(&fixture.manager, true);
    let no_replay = fixture.layer(&fixture.manager, false);
    let static_layer = fixture.static_layer(&setup);

    let mut group = c.benchmark_group("single_thread");
    let mut tokenwarden = ServiceBuilder::new().layer(layer.clone()).service(noop());
    group.bench_function("tokenwarden_layer", |b| {
        b.iter(|| run_ready(send(&mut tokenwarden, request(&uri))))
    });
    let mut without_replay = ServiceBuilder::new()
        .layer(no_replay.clone())
        .service(noop());
    group.bench_function("tokenwarden_layer_no_replay", |b| {
        b.iter(|| run_ready(send(&mut without_replay, request(&uri))))
    });
    let mut fixed = ServiceBuilder::new()
        .layer(static_layer.clone())
        .service(noop());
    group.bench_function("static_add_authorization", |b| {
        b.iter(|| run_ready(send(&mut fixed, request(&uri))))
    });
    group.finish();

    let mut group = c.benchmark_group("multi_thread");
    let tokenwarden = ServiceBuilder::new().layer(layer).service(noop());
    group.bench_function("tokenwarden_layer", |b| {
        b.to_async(&setup)
            .iter_custom(|iters| concurrent(tokenwarden.clone(), uri.clone(), iters))
    });
    let without_replay = ServiceBuilder::new().layer(no_replay).service(noop());
    group.bench_function("tokenwarden_layer_no_replay", |b| {
        b.to_async(&setup)
            .iter_custom(|iters| concurrent(without_replay.clone(), uri.clone(), iters))
    });
    let fixed = ServiceBuilder::new()
        .layer(static_layer.clone())
        .service(noop());
    group.bench_function("static_add_authorization", |b| {
        b.to_async(&setup)
            .iter_custom(|iters| concurrent(fixed.clone(), uri.clone(), iters))
    });
    group.finish();

    // The same on 2 workers, over an inner service that carries a hyper-util client, as a layer
    // over a real client does: whatever clones the inner service per request writes the
    // client's shared reference counts from both cores.
    let mut group = c.benchmark_group("multi_thread_client_inner");
    let tokenwarden = ServiceBuilder::new()
        .layer(fixture.layer(&fixture.manager, true))
        .service(noop_with_client());
    group.bench_function("tokenwarden_layer", |b| {
        b.to_async(&setup)
            .iter_custom(|iters| concurrent(tokenwarden.clone(), uri.clone(), iters))
    });
    let fixed = ServiceBuilder::new()
        .layer(static_layer)
        .service(noop_with_client());
    group.bench_function("static_add_authorization", |b| {
        b.to_async(&setup)
            .iter_custom(|iters| concurrent(fixed.clone(), uri.clone(), iters))
    });
    group.finish();
}

async fn send<S>(service: &mut S, request: Request<Full<Bytes>>) -> Response<Full<Bytes>>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    service.ready().await.unwrap().call(request).await.unwrap()
}

/// Polls a future that completes without waiting (a cached token, a no-op inner service) once,
/// so the single-thread figures measure the middleware and not an executor.
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the hot path waited: the token was not cached"),
    }
}

fn redis_tier(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = match rt.block_on(RedisServer::start()) {
        Ok(redis) => redis,
        Err(error) => {
            eprintln!("redis_tier skipped: {error}");
            return;
        }
    };
    let fixture = Fixture::start(&rt);
    let uri = fixture.uri.clone();
    let cache = RedisTokenCache::builder(&redis.url()).build().unwrap();
    let memory_only = &fixture.manager;
    let with_redis = fixture.manager_with(&rt, |b| b.shared_cache(cache));
    let mut group = c.benchmark_group("redis_tier");
    for (name, manager) in [
        ("layer_memory_only", memory_only),
        ("layer_with_redis_tier", &with_redis),
    ] {
        let layer = fixture.layer(manager, true);
        let mut service = ServiceBuilder::new().layer(layer).service(noop());
        group.bench_function(name, |b| {
            b.iter(|| run_ready(send(&mut service, request(&uri))))
        });
    }
    // An L1 miss served by Redis: forget the in-memory copy, then ask for the token.
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
        "the Redis hits did not go to the token endpoint ({requests} token requests)"
    );
    drop(redis);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = layer_vs_static, redis_tier
}
criterion_main!(benches);
