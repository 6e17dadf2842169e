//! Refresh leases: one replica at a time fetches a new token for a key.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{eventually, key, raw, server};
use redis::AsyncCommands;
use tokenwarden_core::{Lease, TokenCache};
use tokenwarden_redis::RedisTokenCache;

#[tokio::test]
async fn only_one_replica_acquires_the_lease() {
    let server = server().await;
    let a = RedisTokenCache::builder(&server.url()).build().unwrap();
    let b = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("lease");
    let lease_a = a.try_lease(&k, Duration::from_secs(30)).await.unwrap();
    assert!(matches!(lease_a, Lease::Acquired(_)), "{lease_a:?}");
    assert_eq!(
        b.try_lease(&k, Duration::from_secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
    assert_eq!(
        a.try_lease(&k, Duration::from_secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
    // Leases are per key.
    assert!(matches!(
        b.try_lease(&key("other"), Duration::from_secs(30))
            .await
            .unwrap(),
        Lease::Acquired(_)
    ));
    a.release_lease(&k, &lease_a).await.unwrap();
    assert!(matches!(
        b.try_lease(&k, Duration::from_secs(30)).await.unwrap(),
        Lease::Acquired(_)
    ));
}

#[tokio::test]
async fn many_concurrent_callers_get_exactly_one_lease() {
    let server = server().await;
    let caches: Vec<_> = (0..4)
        .map(|_| RedisTokenCache::builder(&server.url()).build().unwrap())
        .collect();
    let k = key("stampede");
    let mut tasks = Vec::new();
    for i in 0..32 {
        let cache = caches[i % caches.len()].clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            cache.try_lease(&k, Duration::from_secs(30)).await.unwrap()
        }));
    }
    let mut acquired = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Lease::Acquired(_)) {
            acquired += 1;
        }
    }
    assert_eq!(acquired, 1);
}

#[tokio::test]
async fn a_release_by_a_non_owner_does_nothing() {
    let server = server().await;
    let a = RedisTokenCache::builder(&server.url()).build().unwrap();
    let b = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("owner");
    let held = a.try_lease(&k, Duration::from_secs(30)).await.unwrap();
    let impostor = Lease::Acquired("not-the-owner".into());
    b.release_lease(&k, &impostor).await.unwrap();
    b.release_lease(&k, &Lease::HeldElsewhere).await.unwrap();
    assert_eq!(
        b.try_lease(&k, Duration::from_secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
    a.release_lease(&k, &held).await.unwrap();
    let lease_key = format!("{}:lease", k.as_str());
    let exists: bool = raw(&server.url()).await.exists(&lease_key).await.unwrap();
    assert!(!exists);
}

#[tokio::test]
async fn a_lease_expires_after_its_ttl() {
    let server = server().await;
    let a = RedisTokenCache::builder(&server.url()).build().unwrap();
    let b = RedisTokenCache::builder(&server.url()).build().unwrap();
    let k = key("expiry");
    let held = a.try_lease(&k, Duration::from_millis(50)).await.unwrap();
    assert!(matches!(held, Lease::Acquired(_)));
    let lease_key = format!("{}:lease", k.as_str());
    let pttl: i64 = raw(&server.url()).await.pttl(&lease_key).await.unwrap();
    // -2: already gone on a slow machine; never -1 (no expiry).
    assert!(pttl == -2 || (1..=50).contains(&pttl), "PTTL {pttl}");
    eventually(Duration::from_secs(5), "the lease to expire", || async {
        matches!(
            b.try_lease(&k, Duration::from_secs(30)).await.unwrap(),
            Lease::Acquired(_)
        )
    })
    .await;
    // The first holder's late release must not free the new holder's lease.
    a.release_lease(&k, &held).await.unwrap();
    assert_eq!(
        a.try_lease(&k, Duration::from_secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
}
