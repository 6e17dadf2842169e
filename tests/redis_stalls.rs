//! Replicas sharing a Redis that stalls (a real `redis-server` stopped with `SIGSTOP`): a lease
//! request that timed out on our side still runs when Redis resumes, and nobody knows to release
//! that lease. It is released as soon as Redis answers again, so the next replica's miss costs
//! about one token request, not the lease wait; and a replica waiting for a lease takes it as
//! soon as it is released.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{CLIENT, manager_builder, server};
use tokenwarden::redis::RedisTokenCache;
use tokenwarden::redis::redis::AsyncCommands;
use tokenwarden::redis::redis::aio::MultiplexedConnection;
use tokenwarden::{TokenCache, TokenParams};
use tokenwarden_testkit::RedisServer;

/// What one token request costs at the test server, like a real authorization server's
/// round trip.
const TOKEN_ROUND_TRIP: Duration = Duration::from_millis(100);
const LEASE_TTL: Duration = Duration::from_secs(30);
const LEASE_WAIT: Duration = Duration::from_secs(5);

async fn redis() -> RedisServer {
    RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)")
}

async fn raw(redis: &RedisServer) -> MultiplexedConnection {
    let client = tokenwarden::redis::redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// How often the server ran `command` (lower case); commands run by a Lua script count too.
async fn command_calls(con: &mut MultiplexedConnection, command: &str) -> u64 {
    let info: String = tokenwarden::redis::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// Polls `command_calls` every few milliseconds until it reaches `calls`; fails after `within`.
async fn wait_for_calls(con: &mut MultiplexedConnection, command: &str, calls: u64) {
    let within = Duration::from_secs(2);
    let started = Instant::now();
    while command_calls(con, command).await < calls {
        assert!(
            started.elapsed() < within,
            "redis did not run `{command}` {calls} time(s) within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_stalled_lease_request_does_not_hold_up_the_next_replica() {
    let mut redis = redis().await;
    let server = server().await;
    server.set_delay(TOKEN_ROUND_TRIP);

    // What a miss costs without Redis: one token request.
    let started = Instant::now();
    common::manager(&server).token(CLIENT).await.unwrap();
    let without_redis = started.elapsed();

    // Replica A gives up on Redis calls after 100 ms (its future is dropped) and opens its
    // breaker after two failures; replica B is healthy.
    let cache_a = RedisTokenCache::builder(&redis.url())
        .op_timeout(Duration::from_secs(1))
        .breaker(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let a = manager_builder(&server)
        .shared_cache(cache_a.clone())
        .shared_cache_timeout(Duration::from_millis(100))
        .lease(LEASE_TTL, LEASE_WAIT)
        .build()
        .unwrap();
    let cache_b = RedisTokenCache::builder(&redis.url())
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let b = manager_builder(&server)
        .shared_cache(cache_b.clone())
        .lease(LEASE_TTL, LEASE_WAIT)
        .build()
        .unwrap();
    let key = a.cache_key(CLIENT, &TokenParams::new()).unwrap();
    let lease_key = format!("{}:lease", cache_a.redis_key(&key));
    // Both replicas are connected before the stall.
    cache_a.get(&key).await.unwrap();
    cache_b.get(&key).await.unwrap();
    let mut con = raw(&redis).await;

    redis.pause().await.unwrap();
    // A's read and lease request get no answer: it fetches its own token, and its breaker keeps
    // the token from reaching Redis.
    a.token(CLIENT).await.unwrap();
    assert!(!cache_a.is_available());
    redis.resume().await.unwrap();
    let resumed = Instant::now();

    // (a) The lease request ran when Redis resumed, and its lease was released: the release
    // script deletes a lease only for its owner.
    wait_for_calls(&mut con, "del", 1).await;
    let released = resumed.elapsed();
    assert_eq!(
        command_calls(&mut con, "set").await,
        1,
        "only A's lease request"
    );
    let exists: bool = con.exists(&lease_key).await.unwrap();
    assert!(!exists, "no lease left");

    // (b) B's miss costs a token request, not the lease wait.
    let started = Instant::now();
    b.token(CLIENT).await.unwrap();
    let next_miss = started.elapsed();
    assert_eq!(server.token_requests(CLIENT), 3, "no-Redis, A, B");
    println!(
        "lost lease released {released:?} after Redis resumed; next replica's miss took \
         {next_miss:?} (a miss without Redis: {without_redis:?}; lease wait {LEASE_WAIT:?})"
    );
    assert!(
        next_miss < without_redis + Duration::from_millis(500)
            && next_miss < Duration::from_secs(1),
        "the next miss took {next_miss:?}"
    );
}

#[tokio::test]
async fn a_waiting_replica_takes_the_lease_as_soon_as_it_is_released() {
    let redis = redis().await;
    let server = server().await;
    server.set_delay(TOKEN_ROUND_TRIP);
    let cache = RedisTokenCache::builder(&redis.url())
        .op_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let replica = manager_builder(&server)
        .shared_cache(cache.clone())
        .lease(LEASE_TTL, LEASE_WAIT)
        .build()
        .unwrap();
    let key = replica.cache_key(CLIENT, &TokenParams::new()).unwrap();
    let lease_key = format!("{}:lease", cache.redis_key(&key));

    // Another replica holds the lease, and will neither store a token nor release it in time.
    let mut con = raw(&redis).await;
    tokenwarden::redis::redis::cmd("SET")
        .arg(&lease_key)
        .arg("another-replica")
        .arg("PX")
        .arg(LEASE_TTL.as_millis().to_string())
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let replica = replica.clone();
        async move { replica.token(CLIENT).await }
    });
    // The replica asked for the lease (the planted lease was the first `SET`) and is waiting.
    wait_for_calls(&mut con, "set", 2).await;
    assert!(!waiting.is_finished());

    let _: () = con.del(&lease_key).await.unwrap();
    let released = Instant::now();
    waiting.await.unwrap().unwrap();
    let after_release = released.elapsed();
    println!("waiting replica had its token {after_release:?} after the lease was released");
    assert_eq!(server.token_requests(CLIENT), 1);
    assert!(
        after_release < TOKEN_ROUND_TRIP + Duration::from_millis(400),
        "took {after_release:?} after the release"
    );
}
