//! One refresh per user across replicas: leases on the user token store, released only by their
//! owner, released in the background when their request got no answer; and a store that fails
//! with `Error::Store` (fast, once the breaker is open) when Redis is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::{command_calls, eventually, raw, server, user_key, user_tokens};
use redis::AsyncCommands;
use tokenwarden_core::{Error, Lease, Secret, UserTokenStore};
use tokenwarden_redis::RedisUserTokenStore;

const LEASE_TTL: Duration = Duration::from_secs(30);

fn store(url: &str) -> RedisUserTokenStore {
    RedisUserTokenStore::builder(url).build().unwrap()
}

#[tokio::test]
async fn one_replica_at_a_time_refreshes_a_user() {
    let server = server().await;
    let (a, b) = (store(&server.url()), store(&server.url()));
    let k = user_key("alice");

    let lease_a = a.try_lease(&k, LEASE_TTL).await.unwrap();
    assert!(matches!(lease_a, Lease::Acquired(_)), "{lease_a:?}");
    assert_eq!(
        b.try_lease(&k, LEASE_TTL).await.unwrap(),
        Lease::HeldElsewhere
    );
    assert!(
        matches!(
            b.try_lease(&user_key("bob"), LEASE_TTL).await.unwrap(),
            Lease::Acquired(_)
        ),
        "leases are per user"
    );
    let lease_key = format!("{}:lease", a.redis_key(&k));
    let pttl: i64 = raw(&server.url()).await.pttl(&lease_key).await.unwrap();
    assert!((1..=30_000).contains(&pttl), "PTTL {pttl}");

    // Someone else's release does nothing; the owner's frees it.
    b.release_lease(&k, &Lease::Acquired("not-the-owner".into()))
        .await
        .unwrap();
    b.release_lease(&k, &Lease::HeldElsewhere).await.unwrap();
    assert_eq!(
        b.try_lease(&k, LEASE_TTL).await.unwrap(),
        Lease::HeldElsewhere
    );
    a.release_lease(&k, &lease_a).await.unwrap();
    let lease_b = b.try_lease(&k, LEASE_TTL).await.unwrap();
    assert!(matches!(lease_b, Lease::Acquired(_)));

    // A's late second release must not free B's lease.
    a.release_lease(&k, &lease_a).await.unwrap();
    assert_eq!(
        a.try_lease(&k, LEASE_TTL).await.unwrap(),
        Lease::HeldElsewhere
    );
    b.release_lease(&k, &lease_b).await.unwrap();
}

#[tokio::test]
async fn a_lease_and_the_record_live_apart() {
    let server = server().await;
    let store = store(&server.url());
    let k = user_key("alice");
    let tokens = user_tokens("at.1", "rt.1");
    store.put(&k, &tokens).await.unwrap();
    let lease = store.try_lease(&k, LEASE_TTL).await.unwrap();
    assert!(matches!(lease, Lease::Acquired(_)));
    assert_eq!(store.get(&k).await.unwrap(), Some(tokens));
    store.remove(&k).await.unwrap();
    assert_eq!(
        store.try_lease(&k, LEASE_TTL).await.unwrap(),
        Lease::HeldElsewhere
    );
    store.release_lease(&k, &lease).await.unwrap();
}

#[tokio::test]
async fn a_lease_whose_answer_timed_out_is_released_when_redis_resumes() {
    let mut server = server().await;
    let mut con = raw(&server.url()).await;
    let store = RedisUserTokenStore::builder(&server.url())
        .op_timeout(Duration::from_millis(100))
        .breaker(1, Duration::from_secs(60))
        .build()
        .unwrap();
    let k = user_key("alice");
    assert!(store.get(&k).await.unwrap().is_none(), "connected");

    server.pause().await.unwrap();
    let err = store.try_lease(&k, LEASE_TTL).await.unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(!store.is_available());
    server.resume().await.unwrap();

    eventually(
        Duration::from_secs(2),
        "the lost lease to be released",
        || {
            let mut con = con.clone();
            async move { command_calls(&mut con, "del").await == 1 }
        },
    )
    .await;
    assert_eq!(
        command_calls(&mut con, "set").await,
        1,
        "the lease request ran"
    );
    let exists: bool = con
        .exists(format!("{}:lease", store.redis_key(&k)))
        .await
        .unwrap();
    assert!(!exists);
    assert!(matches!(
        self::store(&server.url())
            .try_lease(&k, LEASE_TTL)
            .await
            .unwrap(),
        Lease::Acquired(_)
    ));
}

#[tokio::test]
async fn a_dead_redis_is_a_store_error_and_the_breaker_makes_it_fast() {
    const OP_TIMEOUT: Duration = Duration::from_millis(200);
    let mut server = server().await;
    let store = RedisUserTokenStore::builder(&server.url())
        .op_timeout(OP_TIMEOUT)
        .breaker(2, Duration::from_millis(200))
        .build()
        .unwrap();
    let k = user_key("alice");
    let tokens = user_tokens("at.1", "rt.1");
    store.put(&k, &tokens).await.unwrap();

    server.kill().await;
    for _ in 0..2 {
        let started = Instant::now();
        let err = store.get(&k).await.unwrap_err();
        assert!(matches!(err, Error::Store { .. }), "{err}");
        assert!(started.elapsed() <= OP_TIMEOUT + Duration::from_millis(100));
    }
    assert!(!store.is_available(), "two failures open the breaker");

    // Open: every operation fails at once, with a store error.
    let started = Instant::now();
    let rt = Secret::new("rt.1");
    let errors = [
        store.get(&k).await.err(),
        store.put(&k, &tokens).await.err(),
        store.replace_if(&k, &rt, &tokens).await.err(),
        store.remove(&k).await.err(),
        store.remove_if(&k, &rt).await.err(),
        store.try_lease(&k, LEASE_TTL).await.err(),
        store
            .release_lease(&k, &Lease::Acquired("owner".into()))
            .await
            .err(),
    ];
    let took = started.elapsed();
    for err in errors {
        let err = err.expect("fails while the breaker is open");
        assert!(matches!(err, Error::Store { .. }), "{err}");
        assert!(err.to_string().contains("circuit breaker open"), "{err}");
    }
    assert!(took < Duration::from_millis(20), "{took:?}");

    server.restart().await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the store to work again",
        || async { store.get(&k).await.is_ok() },
    )
    .await;
    assert!(store.is_available());
    // Nothing was persisted (`--save ''`): the restarted server is empty.
    assert!(store.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn a_hanging_redis_is_a_store_error_within_the_op_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let store = RedisUserTokenStore::builder(&format!("redis://127.0.0.1:{port}"))
        .op_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = store.get(&user_key("alice")).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    hold.abort();
}
