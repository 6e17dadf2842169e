//! The behaviour of `MemoryTokenCache` through the `TokenCache` trait, timed by a `ManualClock`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenwarden_core::{
    AccessToken, CacheKey, CachedToken, Clock, Lease, ManualClock, TokenCache, TokenType,
};
use tokenwarden_memory::MemoryTokenCache;

const T0: u64 = 1_700_000_000;

fn setup(max_entries: usize) -> (MemoryTokenCache, ManualClock) {
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(T0));
    let cache = MemoryTokenCache::with_clock(max_entries, clock.clone());
    (cache, clock)
}

fn key(client: &str) -> CacheKey {
    CacheKey::builder(client).build()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A token renewed `renew_in` from now and expiring a minute after that.
fn token(clock: &ManualClock, value: &str, renew_in: u64) -> CachedToken {
    let now = clock.now();
    let t = AccessToken::new(value, TokenType::Bearer).unwrap();
    CachedToken::new(t, now + secs(renew_in + 60), now + secs(renew_in))
}

async fn value(cache: &MemoryTokenCache, k: &CacheKey) -> Option<String> {
    let hit = cache.get(k).await.unwrap();
    hit.map(|t| t.token().expose_secret().to_owned())
}

#[tokio::test]
async fn serves_a_token_only_while_it_is_fresh() {
    let (cache, clock) = setup(10);
    let k = key("billing");
    assert_eq!(value(&cache, &k).await, None);
    cache.put(&k, &token(&clock, "t1", 100)).await.unwrap();
    assert_eq!(value(&cache, &k).await.as_deref(), Some("t1"));

    clock.advance(secs(99));
    assert_eq!(value(&cache, &k).await.as_deref(), Some("t1"));
    assert_eq!(cache.len(), 1);

    // At renew_at the cache lifetime has ended, although the token is still usable.
    clock.advance(secs(1));
    assert_eq!(value(&cache, &k).await, None);
    assert!(cache.is_empty());
}

#[tokio::test]
async fn a_stale_entry_found_by_get_is_dropped() {
    let (cache, clock) = setup(10);
    cache.put(&key("a"), &token(&clock, "a", 10)).await.unwrap();
    cache
        .put(&key("b"), &token(&clock, "b", 100))
        .await
        .unwrap();
    clock.advance(secs(10));
    assert_eq!(value(&cache, &key("a")).await, None);
    // Setting the clock back does not resurrect it: it was dropped, not hidden.
    clock.set(UNIX_EPOCH + secs(T0));
    assert_eq!(value(&cache, &key("a")).await, None);
    assert_eq!(value(&cache, &key("b")).await.as_deref(), Some("b"));
}

#[tokio::test]
async fn put_replaces_and_a_stale_put_removes() {
    let (cache, clock) = setup(10);
    let k = key("billing");
    cache.put(&k, &token(&clock, "old", 100)).await.unwrap();
    cache.put(&k, &token(&clock, "new", 200)).await.unwrap();
    assert_eq!(value(&cache, &k).await.as_deref(), Some("new"));
    assert_eq!(cache.len(), 1);

    // A token already due for renewal is not worth keeping, and must not leave the old one behind.
    let now = clock.now();
    let due = CachedToken::new(
        AccessToken::new("due", TokenType::Bearer).unwrap(),
        now + secs(30),
        now,
    );
    cache.put(&k, &due).await.unwrap();
    assert_eq!(value(&cache, &k).await, None);
    assert!(cache.is_empty());
}

#[tokio::test]
async fn the_bound_holds_by_evicting_the_entry_due_soonest() {
    let (cache, clock) = setup(3);
    cache
        .put(&key("late"), &token(&clock, "late", 300))
        .await
        .unwrap();
    cache
        .put(&key("soon"), &token(&clock, "soon", 100))
        .await
        .unwrap();
    cache
        .put(&key("mid"), &token(&clock, "mid", 200))
        .await
        .unwrap();
    assert_eq!(cache.len(), 3);

    cache
        .put(&key("new"), &token(&clock, "new", 250))
        .await
        .unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(
        value(&cache, &key("soon")).await,
        None,
        "earliest renew_at goes first"
    );
    for k in ["late", "mid", "new"] {
        assert_eq!(value(&cache, &key(k)).await.as_deref(), Some(k));
    }

    cache
        .put(&key("newer"), &token(&clock, "newer", 400))
        .await
        .unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(value(&cache, &key("mid")).await, None);
}

#[tokio::test]
async fn a_full_cache_drops_stale_entries_before_evicting_fresh_ones() {
    let (cache, clock) = setup(3);
    cache.put(&key("a"), &token(&clock, "a", 10)).await.unwrap();
    cache.put(&key("b"), &token(&clock, "b", 20)).await.unwrap();
    cache
        .put(&key("c"), &token(&clock, "c", 1_000))
        .await
        .unwrap();
    clock.advance(secs(20));

    cache
        .put(&key("d"), &token(&clock, "d", 100))
        .await
        .unwrap();
    // Both stale entries went; the fresh one stayed, so there is room for another without eviction.
    assert_eq!(cache.len(), 2);
    cache
        .put(&key("e"), &token(&clock, "e", 100))
        .await
        .unwrap();
    for k in ["c", "d", "e"] {
        assert_eq!(value(&cache, &key(k)).await.as_deref(), Some(k));
    }
}

#[tokio::test]
async fn replacing_an_entry_in_a_full_cache_evicts_nothing() {
    let (cache, clock) = setup(2);
    cache.put(&key("a"), &token(&clock, "a", 10)).await.unwrap();
    cache.put(&key("b"), &token(&clock, "b", 20)).await.unwrap();
    cache
        .put(&key("b"), &token(&clock, "b2", 30))
        .await
        .unwrap();
    assert_eq!(value(&cache, &key("a")).await.as_deref(), Some("a"));
    assert_eq!(value(&cache, &key("b")).await.as_deref(), Some("b2"));
}

#[tokio::test]
async fn a_cache_of_zero_entries_stores_nothing_and_shares_no_leases() {
    let (cache, clock) = setup(0);
    let k = key("billing");
    cache.put(&k, &token(&clock, "t", 100)).await.unwrap();
    assert_eq!(value(&cache, &k).await, None);
    assert!(cache.is_empty());
    assert_eq!(
        cache.try_lease(&k, secs(10)).await.unwrap(),
        Lease::NotShared
    );
}

#[tokio::test]
async fn remove_and_clear() {
    let (cache, clock) = setup(10);
    cache
        .put(&key("a"), &token(&clock, "a", 100))
        .await
        .unwrap();
    cache
        .put(&key("b"), &token(&clock, "b", 100))
        .await
        .unwrap();
    cache.remove(&key("a")).await.unwrap();
    cache.remove(&key("absent")).await.unwrap();
    assert_eq!(value(&cache, &key("a")).await, None);
    assert_eq!(cache.len(), 1);
    cache.clear();
    assert!(cache.is_empty());
}

#[tokio::test]
async fn clones_share_one_store() {
    let (cache, clock) = setup(10);
    let other = cache.clone();
    cache
        .put(&key("a"), &token(&clock, "a", 100))
        .await
        .unwrap();
    assert_eq!(value(&other, &key("a")).await.as_deref(), Some("a"));
    let as_dyn: Arc<dyn TokenCache> = Arc::new(other);
    assert!(as_dyn.get(&key("a")).await.unwrap().is_some());
}

#[tokio::test]
async fn remove_if_invalidates_only_the_token_that_failed() {
    let (cache, clock) = setup(10);
    let k = key("billing");
    let failed = AccessToken::new("failed", TokenType::Bearer).unwrap();

    assert!(
        !cache.remove_if(&k, &failed).await.unwrap(),
        "nothing stored"
    );

    // Someone already stored a renewed token: the 401 for the old one must not remove it.
    cache.put(&k, &token(&clock, "renewed", 100)).await.unwrap();
    assert!(!cache.remove_if(&k, &failed).await.unwrap());
    assert_eq!(value(&cache, &k).await.as_deref(), Some("renewed"));

    cache.put(&k, &token(&clock, "failed", 100)).await.unwrap();
    assert!(cache.remove_if(&k, &failed).await.unwrap());
    assert_eq!(value(&cache, &k).await, None);
    assert!(!cache.remove_if(&k, &failed).await.unwrap(), "only once");
}

#[tokio::test]
async fn remove_if_treats_a_stale_entry_as_absent() {
    let (cache, clock) = setup(10);
    let k = key("billing");
    cache.put(&k, &token(&clock, "failed", 10)).await.unwrap();
    clock.advance(secs(10));
    let failed = AccessToken::new("failed", TokenType::Bearer).unwrap();
    assert!(!cache.remove_if(&k, &failed).await.unwrap());
    assert!(cache.is_empty());
}

#[tokio::test]
async fn a_lease_is_exclusive_until_released_by_its_owner() {
    let (cache, _clock) = setup(10);
    let k = key("billing");
    let lease = cache.try_lease(&k, secs(30)).await.unwrap();
    assert!(matches!(lease, Lease::Acquired(_)));
    assert_eq!(
        cache.try_lease(&k, secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
    // Leases are per key.
    assert!(matches!(
        cache.try_lease(&key("other"), secs(30)).await.unwrap(),
        Lease::Acquired(_)
    ));

    // Not the owner: an id of our own making, or an answer that is not a lease at all.
    let forged = Lease::Acquired("memory-lease-999".into());
    cache.release_lease(&k, &forged).await.unwrap();
    cache
        .release_lease(&k, &Lease::HeldElsewhere)
        .await
        .unwrap();
    cache.release_lease(&k, &Lease::NotShared).await.unwrap();
    assert_eq!(
        cache.try_lease(&k, secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );

    cache.release_lease(&k, &lease).await.unwrap();
    assert!(matches!(
        cache.try_lease(&k, secs(30)).await.unwrap(),
        Lease::Acquired(_)
    ));
}

#[tokio::test]
async fn a_lease_expires_after_its_ttl() {
    let (cache, clock) = setup(10);
    let k = key("billing");
    let first = cache.try_lease(&k, secs(30)).await.unwrap();
    clock.advance(secs(29));
    assert_eq!(
        cache.try_lease(&k, secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
    clock.advance(secs(1));
    let second = cache.try_lease(&k, secs(30)).await.unwrap();
    assert!(matches!(second, Lease::Acquired(_)));
    assert_ne!(first, second);

    // The first holder comes back late: releasing its expired lease must not free the new one.
    cache.release_lease(&k, &first).await.unwrap();
    assert_eq!(
        cache.try_lease(&k, secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
    cache.release_lease(&k, &second).await.unwrap();
    assert!(matches!(
        cache.try_lease(&k, secs(30)).await.unwrap(),
        Lease::Acquired(_)
    ));
}

#[tokio::test]
async fn clear_keeps_leases() {
    let (cache, _clock) = setup(10);
    let k = key("billing");
    let _lease = cache.try_lease(&k, secs(30)).await.unwrap();
    cache.clear();
    assert_eq!(
        cache.try_lease(&k, secs(30)).await.unwrap(),
        Lease::HeldElsewhere
    );
}

#[test]
fn default_and_debug() {
    let cache = MemoryTokenCache::default();
    assert_eq!(cache.max_entries(), MemoryTokenCache::DEFAULT_MAX_ENTRIES);
    assert_eq!(MemoryTokenCache::DEFAULT_MAX_ENTRIES, 10_000);
    let shown = format!("{cache:?}");
    assert!(shown.contains("max_entries: 10000"), "{shown}");
}

#[test]
fn debug_does_not_show_tokens() {
    let (cache, clock) = setup(10);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(cache.put(&key("a"), &token(&clock, "supersecretvalue", 100)))
        .unwrap();
    let shown = format!("{cache:?}");
    assert!(!shown.contains("supersecretvalue"), "{shown}");
}

// ---- concurrency: many tasks on a multi-threaded runtime ----

const TASKS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_get_exactly_one_lease() {
    let (cache, clock) = setup(100);
    let k = key("billing");
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (cache, k, barrier) = (cache.clone(), k.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache.try_lease(&k, secs(30)).await.unwrap()
        }));
    }
    let mut acquired = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            lease @ Lease::Acquired(_) => acquired.push(lease),
            Lease::HeldElsewhere => {}
            Lease::NotShared => panic!("a bounded memory cache shares leases"),
        }
    }
    assert_eq!(acquired.len(), 1, "one fetch for all callers");

    // The winner stores the token and releases; everyone sees that one token.
    cache.put(&k, &token(&clock, "shared", 100)).await.unwrap();
    cache.release_lease(&k, &acquired[0]).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (cache, k) = (cache.clone(), k.clone());
        tasks.push(tokio::spawn(async move { value(&cache, &k).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().as_deref(), Some("shared"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_invalidations_removes_the_token_once() {
    let (cache, clock) = setup(100);
    let k = key("billing");
    cache.put(&k, &token(&clock, "failed", 100)).await.unwrap();
    let failed = AccessToken::new("failed", TokenType::Bearer).unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (cache, k, failed, barrier) = (
            cache.clone(),
            k.clone(),
            failed.clone(),
            Arc::clone(&barrier),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache.remove_if(&k, &failed).await.unwrap()
        }));
    }
    let mut removed = 0;
    for t in tasks {
        removed += usize::from(t.await.unwrap());
    }
    assert_eq!(removed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_and_gets_keep_the_bound() {
    const MAX: usize = 16;
    let (cache, clock) = setup(MAX);
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (cache, clock, barrier) = (cache.clone(), clock.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut seen = HashSet::new();
            for i in 0..200u64 {
                let k = key(&format!("client-{}", (task as u64 * 7 + i) % 40));
                let v = format!("t{task}-{i}");
                cache
                    .put(&k, &token(&clock, &v, 10 + i % 50))
                    .await
                    .unwrap();
                if let Some(hit) = value(&cache, &k).await {
                    seen.insert(hit);
                }
                if i % 10 == 0 {
                    cache.remove(&k).await.unwrap();
                }
                assert!(cache.len() <= MAX);
                tokio::task::yield_now().await;
            }
            seen.len()
        }));
    }
    let mut hits = 0;
    for t in tasks {
        hits += t.await.unwrap();
    }
    assert!(hits > 0);
    assert!(cache.len() <= MAX);
    let later: SystemTime = clock.now() + secs(1_000);
    clock.set(later);
    assert!(cache.is_empty(), "everything ends its cache lifetime");
}
