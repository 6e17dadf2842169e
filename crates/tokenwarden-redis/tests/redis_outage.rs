//! A Redis outage never fails a request: calls are bounded, the breaker makes them fail fast, and
//! the cache recovers by itself when Redis is back.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{Warnings, eventually, key, now_ms, server, token};
use tokenwarden_core::{Error, TokenCache};
use tokenwarden_redis::RedisTokenCache;

const OP_TIMEOUT: Duration = Duration::from_millis(200);

#[tokio::test]
async fn killed_redis_fails_fast_then_recovers_after_restart() {
    let warnings = Warnings::install();
    let mut server = server().await;
    let cache = RedisTokenCache::builder(&server.url())
        .op_timeout(OP_TIMEOUT)
        .breaker(3, Duration::from_millis(200))
        .build()
        .unwrap();
    let k = key("outage");
    cache
        .put(&k, &token("tok.outage", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(cache.get(&k).await.unwrap().is_some());

    server.kill().await;
    let mut failures = 0;
    while cache.is_available() {
        let started = Instant::now();
        assert!(cache.get(&k).await.is_err(), "redis is down");
        let took = started.elapsed();
        assert!(
            took <= OP_TIMEOUT + Duration::from_millis(100),
            "a failing call took {took:?}"
        );
        failures += 1;
        assert!(
            failures <= 3,
            "the breaker should open after 3 consecutive failures"
        );
    }
    assert_eq!(failures, 3);

    // Open: calls fail without touching the network.
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let started = Instant::now();
        let err = cache.get(&k).await.unwrap_err();
        slowest = slowest.max(started.elapsed());
        assert!(matches!(err, Error::Cache { .. }), "{err}");
    }
    assert!(
        slowest < Duration::from_millis(5),
        "a call while open took {slowest:?}"
    );
    println!("slowest of 100 calls while the breaker is open: {slowest:?}");
    assert!(!cache.is_available());
    assert_eq!(
        warnings.count(),
        1,
        "one warning when the breaker opens, not one per call"
    );

    server.restart().await.unwrap();
    let started = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the cache to work again",
        || async { cache.get(&k).await.is_ok() },
    )
    .await;
    println!("recovered {:?} after the restart", started.elapsed());
    assert!(cache.is_available());
    assert_eq!(
        warnings.count(),
        2,
        "one more warning when the breaker closes"
    );
    let t = token("tok.after", now_ms(), Duration::from_secs(60));
    cache.put(&k, &t).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), Some(t));
}

#[tokio::test]
async fn a_hanging_redis_costs_at_most_the_op_timeout_per_call() {
    // Accepts connections and never answers, like a frozen server or a black-holed route.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let cache = RedisTokenCache::builder(&format!("redis://127.0.0.1:{port}"))
        .op_timeout(Duration::from_millis(100))
        .breaker(2, Duration::from_secs(60))
        .build()
        .unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let err = cache.get(&key("hang")).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, Error::CacheTimeout(t) if t == Duration::from_millis(100)),
            "{err}"
        );
        assert!(took < Duration::from_millis(400), "took {took:?}");
    }
    assert!(!cache.is_available());
    let started = Instant::now();
    assert!(
        cache
            .put(
                &key("hang"),
                &token("tok.h", now_ms(), Duration::from_secs(60))
            )
            .await
            .is_err()
    );
    assert!(
        cache
            .try_lease(&key("hang"), Duration::from_secs(1))
            .await
            .is_err()
    );
    assert!(
        started.elapsed() < Duration::from_millis(5),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn the_cache_builds_and_answers_while_redis_is_down() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let cache = RedisTokenCache::builder(&format!("redis://127.0.0.1:{port}"))
        .op_timeout(OP_TIMEOUT)
        .build()
        .unwrap();
    assert!(cache.is_available(), "nothing has failed yet");
    let started = Instant::now();
    assert!(cache.get(&key("down")).await.is_err());
    assert!(started.elapsed() <= OP_TIMEOUT + Duration::from_millis(100));
}

#[cfg(feature = "tls-rustls")]
#[tokio::test]
async fn a_rediss_url_speaks_tls_and_a_failed_handshake_is_just_an_error() {
    // The server speaks plain RESP, so the TLS handshake fails: an error, not a panic (the rustls
    // crypto provider is available) and not a hang.
    let server = server().await;
    let cache = RedisTokenCache::builder(&format!("rediss://127.0.0.1:{}", server.port()))
        .op_timeout(OP_TIMEOUT)
        .build()
        .unwrap();
    let started = Instant::now();
    assert!(cache.get(&key("tls")).await.is_err());
    assert!(started.elapsed() <= OP_TIMEOUT + Duration::from_millis(100));
}
