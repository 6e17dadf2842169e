//! A Redis that restarts after an outage is used again one breaker cool-down after the breaker
//! opened, not two: the probe does not fail on the connection the outage left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{eventually, key, now_ms, server, token};
use tokenwarden_core::TokenCache;
use tokenwarden_redis::RedisTokenCache;

const OP_TIMEOUT: Duration = Duration::from_millis(200);
const COOL_DOWN: Duration = Duration::from_secs(2);
/// How long Redis stays down after the breaker opened: long enough for the connection manager's
/// own reconnect attempts to give up, as they do in any outage longer than a blip.
const OUTAGE: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_restarted_redis_closes_the_breaker_within_one_cool_down() {
    let mut server = server().await;
    let cache = RedisTokenCache::builder(&server.url())
        .op_timeout(OP_TIMEOUT)
        .breaker(3, COOL_DOWN)
        .build()
        .unwrap();
    let k = key("restart");
    cache
        .put(&k, &token("tok.restart", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();

    server.kill().await;
    while cache.is_available() {
        assert!(cache.get(&k).await.is_err(), "redis is down");
    }
    let opened = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    server.restart().await.unwrap();
    let restarted = opened.elapsed();
    assert!(
        restarted < COOL_DOWN,
        "the restart ended at {restarted:?}, after the cool-down: the test cannot tell"
    );

    // Requests keep asking, as they would; the breaker fails them fast until its cool-down ends,
    // then the first one probes.
    eventually(COOL_DOWN * 3, "the breaker to close", || async {
        cache.get(&k).await.is_ok()
    })
    .await;
    let recovered = opened.elapsed();
    println!(
        "breaker closed {recovered:?} after it opened ({COOL_DOWN:?} cool-down, Redis back after {restarted:?})"
    );
    assert!(
        recovered < COOL_DOWN + COOL_DOWN / 2,
        "took {recovered:?}: more than one cool-down"
    );
    assert!(cache.is_available());
    let t = token("tok.after-restart", now_ms(), Duration::from_secs(60));
    cache.put(&k, &t).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), Some(t));
}
