//! A stalled Redis (here a real `redis-server` stopped with `SIGSTOP`) still executes the lease
//! requests we gave up on when it resumes. Such a lease belongs to nobody who knows it, so the
//! cache releases it in the background as soon as Redis answers again, never touches anyone
//! else's lease, and never keeps a task beyond the lease's TTL or without a runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{alive_tasks, command_calls, eventually, key, raw, server};
use redis::AsyncCommands;
use tokenwarden_core::{CacheKey, Error, Lease, TokenCache};
use tokenwarden_redis::RedisTokenCache;

const LEASE_TTL: Duration = Duration::from_secs(30);

fn lease_key(cache: &RedisTokenCache, k: &CacheKey) -> String {
    format!("{}:lease", cache.redis_key(k))
}

/// A cache connected before the test stalls the server: a stall during the first connect is
/// another story (the connect times out and no command is sent).
async fn connected_cache(url: &str, op_timeout: Duration) -> RedisTokenCache {
    let cache = RedisTokenCache::builder(url)
        .op_timeout(op_timeout)
        .breaker(1, Duration::from_secs(60))
        .build()
        .unwrap();
    cache.get(&key("warm-up")).await.unwrap();
    cache
}

#[tokio::test]
async fn a_lease_whose_answer_timed_out_is_released_when_redis_resumes() {
    let mut server = server().await;
    let mut con = raw(&server.url()).await;
    let cache = connected_cache(&server.url(), Duration::from_millis(100)).await;
    let k = key("timed-out-lease");

    server.pause().await.unwrap();
    let err = cache.try_lease(&k, LEASE_TTL).await.unwrap_err();
    assert!(matches!(err, Error::CacheTimeout(_)), "{err}");
    assert!(
        !cache.is_available(),
        "the breaker is open: the release must not wait for it"
    );
    server.resume().await.unwrap();
    let resumed = Instant::now();

    // The `SET NX` ran when the server resumed, and the release script deleted its lease (a
    // `DEL` runs only when the lease is this owner's).
    eventually(
        Duration::from_secs(2),
        "the lost lease to be released",
        || {
            let mut con = con.clone();
            async move { command_calls(&mut con, "del").await == 1 }
        },
    )
    .await;
    let released = resumed.elapsed();
    assert_eq!(
        command_calls(&mut con, "set").await,
        1,
        "the lease request ran"
    );
    let exists: bool = con.exists(lease_key(&cache, &k)).await.unwrap();
    assert!(!exists);
    println!("lost lease released {released:?} after the server resumed");

    // Another replica takes the lease at once.
    let other = RedisTokenCache::builder(&server.url()).build().unwrap();
    assert!(matches!(
        other.try_lease(&k, LEASE_TTL).await.unwrap(),
        Lease::Acquired(_)
    ));
}

#[tokio::test]
async fn a_dropped_lease_request_is_released_when_redis_resumes() {
    let mut server = server().await;
    let mut con = raw(&server.url()).await;
    // The caller gives up long before the cache's own timeout, as the token manager does when
    // its shared-cache timeout is the shorter one.
    let cache = connected_cache(&server.url(), Duration::from_secs(5)).await;
    let k = key("dropped-lease");

    server.pause().await.unwrap();
    let mut request = cache.try_lease(&k, LEASE_TTL);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut request)
            .await
            .is_err(),
        "a stopped server answers nothing"
    );
    drop(request);
    server.resume().await.unwrap();
    let resumed = Instant::now();

    eventually(
        Duration::from_secs(2),
        "the lost lease to be released",
        || {
            let mut con = con.clone();
            async move { command_calls(&mut con, "del").await == 1 }
        },
    )
    .await;
    let released = resumed.elapsed();
    assert_eq!(
        command_calls(&mut con, "set").await,
        1,
        "the lease request ran"
    );
    let exists: bool = con.exists(lease_key(&cache, &k)).await.unwrap();
    assert!(!exists);
    println!("lost lease of a dropped request released {released:?} after the server resumed");
}

#[tokio::test]
async fn a_lost_lease_request_never_releases_another_replicas_lease() {
    let mut server = server().await;
    let mut con = raw(&server.url()).await;
    let holder = RedisTokenCache::builder(&server.url()).build().unwrap();
    let cache = connected_cache(&server.url(), Duration::from_millis(100)).await;
    let k = key("held-elsewhere");
    let held = holder.try_lease(&k, LEASE_TTL).await.unwrap();
    assert!(matches!(held, Lease::Acquired(_)));

    let baseline = alive_tasks();
    server.pause().await.unwrap();
    assert!(cache.try_lease(&k, LEASE_TTL).await.is_err());
    assert_eq!(alive_tasks(), baseline + 1, "one release task is waiting");
    server.resume().await.unwrap();

    // The late `SET NX` found the holder's lease; the release task finds nothing of its own and
    // ends once Redis has answered.
    eventually(
        Duration::from_secs(2),
        "the release task to end",
        || async { alive_tasks() == baseline },
    )
    .await;
    assert_eq!(command_calls(&mut con, "del").await, 0);
    assert_eq!(
        holder.try_lease(&k, LEASE_TTL).await.unwrap(),
        Lease::HeldElsewhere,
        "the holder still holds its lease"
    );
    holder.release_lease(&k, &held).await.unwrap();
}

#[tokio::test]
async fn an_answered_lease_request_leaves_no_task_behind() {
    let server = server().await;
    let cache = connected_cache(&server.url(), Duration::from_millis(500)).await;
    let k = key("answered");
    let baseline = alive_tasks();
    let lease = cache.try_lease(&k, LEASE_TTL).await.unwrap();
    assert!(matches!(lease, Lease::Acquired(_)));
    assert_eq!(
        cache.try_lease(&k, LEASE_TTL).await.unwrap(),
        Lease::HeldElsewhere
    );
    assert_eq!(alive_tasks(), baseline);
    cache.release_lease(&k, &lease).await.unwrap();
}

#[tokio::test]
async fn a_release_task_gives_up_when_the_lease_ttl_has_passed() {
    const SHORT_TTL: Duration = Duration::from_millis(400);
    let mut server = server().await;
    let cache = connected_cache(&server.url(), Duration::from_millis(50)).await;
    let k = key("gives-up");

    let baseline = alive_tasks();
    server.pause().await.unwrap();
    let asked = Instant::now();
    assert!(cache.try_lease(&k, SHORT_TTL).await.is_err());
    assert_eq!(alive_tasks(), baseline + 1, "one release task is retrying");
    eventually(
        Duration::from_secs(3),
        "the release task to give up",
        || async { alive_tasks() == baseline },
    )
    .await;
    let lived = asked.elapsed();
    // It retried while a lease could still exist, and not beyond that.
    assert!(lived >= SHORT_TTL - Duration::from_millis(100), "{lived:?}");
    assert!(lived < SHORT_TTL + Duration::from_millis(500), "{lived:?}");
    println!("release task lived {lived:?} with a {SHORT_TTL:?} lease TTL");

    server.resume().await.unwrap();
    // Whatever ran late (the `SET`, the releases queued behind it) leaves no lease for long.
    let con = raw(&server.url()).await;
    let lease = lease_key(&cache, &k);
    eventually(SHORT_TTL + Duration::from_secs(2), "no lease left", || {
        let (mut con, lease) = (con.clone(), lease.clone());
        async move { !con.exists::<_, bool>(&lease).await.unwrap() }
    })
    .await;
}

#[test]
fn a_lease_request_dropped_without_a_runtime_does_not_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut server, cache) = runtime.block_on(async {
        let server = server().await;
        let cache = connected_cache(&server.url(), Duration::from_secs(5)).await;
        (server, cache)
    });
    let k = key("no-runtime");
    runtime.block_on(server.pause()).unwrap();

    // One request in flight inside a task that the runtime's shutdown drops, one outside it.
    let in_task = cache.clone();
    let in_task_key = k.clone();
    runtime.spawn(async move { in_task.try_lease(&in_task_key, LEASE_TTL).await });
    let mut outside = cache.try_lease(&k, LEASE_TTL);
    runtime.block_on(async {
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut outside)
                .await
                .is_err()
        );
    });
    drop(runtime);
    drop(outside);

    // Nothing is left to release the lease: it ends with its TTL.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(server.resume()).unwrap();
    drop(server);
}
