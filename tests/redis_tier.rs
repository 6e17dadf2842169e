//! The Redis tier behind the in-memory one, against a real `redis-server` per test: shared
//! tokens, no round trip for a token fresh in memory, compare-and-invalidate across managers, a
//! Redis that dies mid-run, corrupt values, and encryption at rest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{CLIENT, manager_builder, server};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokenwarden::redis::redis::AsyncCommands;
use tokenwarden::redis::{Encryption, RedisTokenCache};
use tokenwarden::{AccessTokenLayer, TokenManager, TokenParams};
use tokenwarden_testkit::{RedisServer, TestServer};
use tower::{ServiceBuilder, ServiceExt};

async fn redis() -> RedisServer {
    RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)")
}

fn cache(redis: &RedisServer) -> RedisTokenCache {
    RedisTokenCache::builder(&redis.url())
        .op_timeout(Duration::from_millis(200))
        .breaker(2, Duration::from_millis(200))
        .build()
        .unwrap()
}

fn shared_manager(server: &TestServer, cache: RedisTokenCache) -> TokenManager {
    manager_builder(server).shared_cache(cache).build().unwrap()
}

async fn raw(redis: &RedisServer) -> tokenwarden::redis::redis::aio::MultiplexedConnection {
    let client = tokenwarden::redis::redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The Redis key of the client's default token, as the manager builds it.
fn default_key(server: &TestServer, cache: &RedisTokenCache) -> String {
    let key = common::manager(server)
        .cache_key(CLIENT, &TokenParams::new())
        .unwrap();
    cache.redis_key(&key)
}

async fn commands_processed(redis: &RedisServer) -> u64 {
    let info: String = tokenwarden::redis::redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut raw(redis).await)
        .await
        .unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("total_commands_processed:"))
        .unwrap();
    // Minus the INFO command that asked.
    line["total_commands_processed:".len()..]
        .trim()
        .parse::<u64>()
        .unwrap()
        - 1
}

#[tokio::test]
async fn two_managers_share_one_token() {
    let redis = redis().await;
    let server = server().await;
    let a = shared_manager(&server, cache(&redis));
    let b = shared_manager(&server, cache(&redis));
    let from_a = a.token(CLIENT).await.unwrap();
    let from_b = b.token(CLIENT).await.unwrap();
    assert_eq!(from_a.secret(), from_b.secret());
    assert_eq!(server.token_requests(CLIENT), 1);
    assert_eq!(b.metrics().shared_cache_hits, 1);
    // The key is namespace, version, client name, client id and token endpoint.
    let key = default_key(&server, &cache(&redis));
    assert!(key.starts_with("tokenwarden:v1:billing;"), "{key}");
    assert!(
        key.contains("x.client_id=billing")
            && key.contains("x.token_endpoint=http%3A%2F%2F127.0.0.1"),
        "{key}"
    );
    let stored: Option<Vec<u8>> = raw(&redis)
        .await
        .get(default_key(&server, &cache(&redis)))
        .await
        .unwrap();
    assert!(stored.is_some());
}

#[tokio::test]
async fn a_token_fresh_in_memory_costs_no_redis_round_trip() {
    let redis = redis().await;
    let server = server().await;
    let manager = shared_manager(&server, cache(&redis));
    manager.token(CLIENT).await.unwrap();
    let before = commands_processed(&redis).await;
    for _ in 0..100 {
        manager.token(CLIENT).await.unwrap();
    }
    assert_eq!(
        commands_processed(&redis).await - 1,
        before,
        "only our own INFO reached Redis"
    );
}

#[tokio::test]
async fn a_401_on_one_manager_renews_once_for_all() {
    let redis = redis().await;
    let server = server().await;
    let a = shared_manager(&server, cache(&redis));
    let b = shared_manager(&server, cache(&redis));
    let old = a.token(CLIENT).await.unwrap();
    assert_eq!(b.token(CLIENT).await.unwrap().secret(), old.secret());
    server.revoke_all();
    // Manager A hears of the 401 first: it removes the shared entry (it still holds that token).
    assert!(
        a.invalidate(CLIENT, &TokenParams::new(), &old)
            .await
            .unwrap()
    );
    let new = a.token(CLIENT).await.unwrap();
    assert_ne!(new.secret(), old.secret());
    // Manager B's 401 for the same old token finds the new one in Redis: no request of its own.
    assert!(
        b.invalidate(CLIENT, &TokenParams::new(), &old)
            .await
            .unwrap()
    );
    assert_eq!(b.token(CLIENT).await.unwrap().secret(), new.secret());
    assert_eq!(server.token_requests(CLIENT), 2);
    // A stale report of the old token cannot remove the new one from Redis.
    assert!(
        !a.invalidate(CLIENT, &TokenParams::new(), &old)
            .await
            .unwrap()
    );
    let c = shared_manager(&server, cache(&redis));
    assert_eq!(c.token(CLIENT).await.unwrap().secret(), new.secret());
    assert_eq!(server.token_requests(CLIENT), 2);
}

#[tokio::test]
async fn a_redis_outage_fails_no_request_and_redis_is_used_again_after_restart() {
    let mut redis = redis().await;
    let server = server().await;
    let shared = cache(&redis);
    let manager = shared_manager(&server, shared.clone());
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, CLIENT)
                .allow_origin(&server.base_url())
                .build()
                .unwrap(),
        )
        .service(common::http_client());
    let send = |path: &str| {
        let request = Request::get(server.api_url(path))
            .body(Full::default())
            .unwrap();
        client.clone().oneshot(request)
    };
    assert_eq!(send("/before").await.unwrap().status(), StatusCode::OK);

    redis.kill().await;
    let mut failed = 0;
    for i in 0..100 {
        if i % 25 == 0 {
            // Also lose the in-memory copy now and then: the Redis tier is down, so this costs a
            // direct token request, never a failed request.
            manager.purge_local();
        }
        match send(&format!("/during/{i}")).await {
            Ok(response) if response.status() == StatusCode::OK => {}
            _ => failed += 1,
        }
    }
    assert_eq!(failed, 0, "no request failed while Redis was down");
    assert!(!shared.is_available(), "the circuit breaker opened");

    redis.restart().await.unwrap();
    let key = default_key(&server, &shared);
    let mut con = raw(&redis).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        manager
            .token_with(CLIENT, &TokenParams::new().force_renewal())
            .await
            .unwrap();
        let stored: Option<Vec<u8>> = con.get(&key).await.unwrap();
        if stored.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis was not used again after its restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(shared.is_available());
}

#[tokio::test]
async fn a_corrupt_shared_value_is_a_miss_and_is_replaced() {
    let redis = redis().await;
    let server = server().await;
    let shared = cache(&redis);
    let key = default_key(&server, &shared);
    let mut con = raw(&redis).await;
    let _: () = con.set_ex(&key, "not a token entry", 600).await.unwrap();
    let manager = shared_manager(&server, shared);
    let token = manager.token(CLIENT).await.unwrap();
    assert_eq!(
        server.token_requests(CLIENT),
        1,
        "the corrupt value was refetched"
    );
    let stored: Vec<u8> = con.get(&key).await.unwrap();
    assert!(
        String::from_utf8_lossy(&stored).contains(token.expose_secret()),
        "and replaced"
    );
}

#[tokio::test]
async fn with_encryption_the_raw_value_does_not_contain_the_token() {
    let redis = redis().await;
    let server = server().await;
    let encrypted = RedisTokenCache::builder(&redis.url())
        .encryption(Encryption::new("k1", [7; 32]))
        .build()
        .unwrap();
    let key = default_key(&server, &encrypted);
    let manager = shared_manager(&server, encrypted.clone());
    let token = manager.token(CLIENT).await.unwrap();
    let stored: Vec<u8> = raw(&redis).await.get(&key).await.unwrap();
    let needle = token.expose_secret().as_bytes();
    assert!(
        !stored.windows(needle.len()).any(|w| w == needle),
        "the token is not in Redis in clear"
    );
    // Another replica with the key reads it back without a token request.
    let other = shared_manager(&server, encrypted);
    assert_eq!(other.token(CLIENT).await.unwrap().secret(), token.secret());
    assert_eq!(server.token_requests(CLIENT), 1);
}
