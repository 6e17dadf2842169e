//! Token entries in a real Redis: format, TTL, misses for unusable values, compare-and-delete.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{key, now_ms, raw, server, server_with_args, token};
use redis::AsyncCommands;
use tokenwarden_core::{AccessToken, Clock, ManualClock, TokenCache, TokenType};
use tokenwarden_redis::RedisTokenCache;

#[tokio::test]
async fn put_then_get_returns_every_field() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let now = now_ms();
    let access = AccessToken::new("tok.roundtrip", TokenType::DPoP)
        .unwrap()
        .with_scope("a b")
        .with_expires_at(now + Duration::from_secs(3599));
    let cached = tokenwarden_core::CachedToken::new(
        access,
        now + Duration::from_secs(3600),
        now + Duration::from_secs(3000),
    );
    cache.put(&key("rt"), &cached).await.unwrap();
    let hit = cache.get(&key("rt")).await.unwrap().expect("hit");
    assert_eq!(hit, cached);
    assert_eq!(hit.token().token_type(), &TokenType::DPoP);
    assert_eq!(hit.token().scope(), Some("a b"));
    assert!(cache.get(&key("other")).await.unwrap().is_none());
}

#[tokio::test]
async fn redis_ttl_is_the_cache_lifetime_until_renew_at() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("ttl");
    cache
        .put(&k, &token("tok.ttl", now_ms(), Duration::from_secs(120)))
        .await
        .unwrap();
    let pttl: i64 = raw(&server.url())
        .await
        .pttl(cache.redis_key(&k))
        .await
        .unwrap();
    assert!(
        (118_000..=120_000).contains(&pttl),
        "PTTL {pttl} ms should be about 120 s"
    );
}

#[tokio::test]
async fn a_token_already_due_for_renewal_is_not_stored() {
    let server = server().await;
    let clock = ManualClock::new(now_ms());
    let cache = RedisTokenCache::builder(&server.url())
        .clock(clock.clone())
        .build()
        .unwrap();
    let due = token("tok.due", clock.now(), Duration::ZERO);
    cache.put(&key("due"), &due).await.unwrap();
    let exists: bool = raw(&server.url())
        .await
        .exists(cache.redis_key(&key("due")))
        .await
        .unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn an_entry_no_longer_fresh_by_the_clock_is_a_miss() {
    let server = server().await;
    let clock = ManualClock::new(now_ms());
    let cache = RedisTokenCache::builder(&server.url())
        .clock(clock.clone())
        .build()
        .unwrap();
    let k = key("fresh");
    cache
        .put(
            &k,
            &token("tok.fresh", clock.now(), Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(cache.get(&k).await.unwrap().is_some());
    // Another replica's clock (or ours) has passed renew_at while Redis still holds the entry.
    clock.advance(Duration::from_secs(61));
    assert!(cache.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn the_key_prefix_is_applied() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url())
        .key_prefix("svc-a:")
        .build()
        .unwrap();
    let k = key("prefixed");
    assert_eq!(cache.redis_key(&k), format!("svc-a:{}", k.as_str()));
    cache
        .put(&k, &token("tok.prefix", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    let keys: Vec<String> = raw(&server.url()).await.keys("*").await.unwrap();
    assert_eq!(keys, vec![format!("svc-a:{}", k.as_str())]);
    let default = RedisTokenCache::builder(&server.url()).build().unwrap();
    assert_eq!(default.redis_key(&k), k.as_str());
    assert!(
        default.get(&k).await.unwrap().is_none(),
        "prefixes keep apps apart"
    );
}

#[tokio::test]
async fn the_stored_value_is_a_fingerprint_and_a_versioned_json_envelope() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("format");
    cache
        .put(&k, &token("tok.format", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    let value: String = raw(&server.url())
        .await
        .get(cache.redis_key(&k))
        .await
        .unwrap();
    let (fingerprint, json) = value.split_once('|').unwrap();
    assert_eq!(fingerprint.len(), 64);
    assert!(!fingerprint.contains("tok.format"));
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(json["v"], 1);
    assert_eq!(json["access_token"], "tok.format");
    assert_eq!(json["token_type"], "Bearer");
    assert!(json["renew_at_ms"].is_u64() && json["expires_at_ms"].is_u64());
}

#[tokio::test]
async fn corrupt_values_are_misses() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("corrupt");
    let rk = cache.redis_key(&k);
    let mut con = raw(&server.url()).await;
    let fp = "0".repeat(64);
    for garbage in [
        b"not a token entry".to_vec(),
        format!("{fp}|{{not json").into_bytes(),
        vec![0xff, 0x00, 0xfe],
        format!("{fp}|{{\"v\":1}}").into_bytes(),
    ] {
        let _: () = con.set(&rk, garbage).await.unwrap();
        assert!(cache.get(&k).await.unwrap().is_none());
    }
    // A valid envelope whose fingerprint does not match its token was tampered with.
    cache
        .put(&k, &token("tok.real", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    let value: String = con.get(&rk).await.unwrap();
    let tampered = format!("{fp}{}", &value[64..]);
    let _: () = con.set(&rk, tampered).await.unwrap();
    assert!(cache.get(&k).await.unwrap().is_none());
    // A key of another type is a miss, not an error.
    let _: () = con.del(&rk).await.unwrap();
    let _: () = con.hset(&rk, "field", "value").await.unwrap();
    assert!(cache.get(&k).await.unwrap().is_none());
    assert!(cache.is_available());
}

#[tokio::test]
async fn an_unknown_envelope_version_is_a_miss() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("v2");
    cache
        .put(&k, &token("tok.v", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    let mut con = raw(&server.url()).await;
    let value: String = con.get(cache.redis_key(&k)).await.unwrap();
    let _: () = con
        .set(cache.redis_key(&k), value.replace("{\"v\":1,", "{\"v\":2,"))
        .await
        .unwrap();
    assert!(cache.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn remove_deletes_the_entry() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("rm");
    cache
        .put(&k, &token("tok.rm", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    cache.remove(&k).await.unwrap();
    assert!(cache.get(&k).await.unwrap().is_none());
    cache.remove(&k).await.unwrap();
}

#[tokio::test]
async fn remove_if_deletes_only_the_token_that_failed() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("cas");
    let current = token("tok.current", now_ms(), Duration::from_secs(60));
    cache.put(&k, &current).await.unwrap();
    let stale = AccessToken::new("tok.stale", TokenType::Bearer).unwrap();
    assert!(!cache.remove_if(&k, &stale).await.unwrap());
    assert_eq!(cache.get(&k).await.unwrap().as_ref(), Some(&current));
    assert!(cache.remove_if(&k, current.token()).await.unwrap());
    assert!(cache.get(&k).await.unwrap().is_none());
    assert!(
        !cache.remove_if(&k, current.token()).await.unwrap(),
        "already gone"
    );
}

#[tokio::test]
async fn a_burst_of_concurrent_remove_ifs_deletes_once() {
    let server = server().await;
    let cache = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("burst");
    let failed = token("tok.burst", now_ms(), Duration::from_secs(60));
    cache.put(&k, &failed).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, k, t) = (cache.clone(), k.clone(), failed.token().clone());
        tasks.push(tokio::spawn(async move {
            cache.remove_if(&k, &t).await.unwrap()
        }));
    }
    let mut deleted = 0;
    for task in tasks {
        deleted += usize::from(task.await.unwrap());
    }
    assert_eq!(deleted, 1);
}

#[tokio::test]
async fn a_password_protected_server_works_with_credentials_in_the_url() {
    let server = server_with_args(&["--requirepass", "pw"]).await;
    let url = format!("redis://:pw@127.0.0.1:{}", server.port());
    let cache = RedisTokenCache::builder(&url).build().unwrap();
    let k = key("auth");
    let t = token("tok.auth", now_ms(), Duration::from_secs(60));
    cache.put(&k, &t).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), Some(t));
    let shown = format!("{cache:?}");
    assert!(!shown.contains("pw@") && !shown.contains(":pw"), "{shown}");

    // Without the password every call fails (as an error, never a panic or a hang).
    let anonymous = RedisTokenCache::builder(&server.url()).build().unwrap();
    assert!(anonymous.get(&k).await.is_err());
}
