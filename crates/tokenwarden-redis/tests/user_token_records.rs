//! Users' tokens in a real Redis: one record per user and client, rotation by compare-and-swap
//! (also under a race), sign-out, a TTL renewed by every write, unusable records read as absent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Warnings, eventually, now_ms, raw, server, user_key, user_tokens};
use redis::AsyncCommands;
use tokenwarden_core::{AccessToken, Secret, TokenType, UserTokenStore, UserTokens};
use tokenwarden_redis::{DEFAULT_USER_RECORD_TTL, RedisUserTokenStore};
use tokio::sync::Barrier;

fn store(url: &str) -> RedisUserTokenStore {
    RedisUserTokenStore::builder(url).build().unwrap()
}

#[tokio::test]
async fn a_sign_in_round_trips_every_field() {
    let server = server().await;
    let store = store(&server.url());
    let access = AccessToken::new("at.alice-1", TokenType::DPoP)
        .unwrap()
        .with_scope("openid profile api.read")
        .with_expires_at(now_ms() + Duration::from_secs(3599));
    let tokens = UserTokens::new(access, Some(Secret::new("rt.alice-1")));
    store.put(&user_key("alice"), &tokens).await.unwrap();

    let read = store
        .get(&user_key("alice"))
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(read, tokens);
    assert_eq!(read.access_token().token_type(), &TokenType::DPoP);
    assert_eq!(read.access_token().scope(), Some("openid profile api.read"));
    assert_eq!(read.refresh_token(), Some(&Secret::new("rt.alice-1")));
    assert!(store.get(&user_key("bob")).await.unwrap().is_none());

    // Neither a refresh token nor an expiry is required.
    let bare = UserTokens::new(
        AccessToken::new("at.bare", TokenType::Bearer).unwrap(),
        None,
    );
    store.put(&user_key("carol"), &bare).await.unwrap();
    assert_eq!(store.get(&user_key("carol")).await.unwrap(), Some(bare));
}

#[tokio::test]
async fn a_second_sign_in_leaves_one_record() {
    let server = server().await;
    let store = store(&server.url());
    let mut con = raw(&server.url()).await;
    let k = user_key("alice");
    store.put(&k, &user_tokens("at.1", "rt.1")).await.unwrap();
    // A stray field (an older writer, an operator) does not survive a write either.
    let _: () = con.hset(store.redis_key(&k), "stray", "x").await.unwrap();
    let second = user_tokens("at.2", "rt.2");
    store.put(&k, &second).await.unwrap();

    let keys: Vec<String> = con.keys("*").await.unwrap();
    assert_eq!(
        keys,
        vec![store.redis_key(&k)],
        "one record per user and client"
    );
    let mut fields: Vec<String> = con.hkeys(store.redis_key(&k)).await.unwrap();
    fields.sort();
    assert_eq!(fields, ["rt", "v"]);
    assert_eq!(store.get(&k).await.unwrap(), Some(second));
}

#[tokio::test]
async fn rotation_replaces_only_the_expected_refresh_token() {
    let server = server().await;
    let store = store(&server.url());
    let k = user_key("alice");
    let rotated = user_tokens("at.2", "rt.2");
    assert!(
        !store
            .replace_if(&k, &Secret::new("rt.1"), &rotated)
            .await
            .unwrap(),
        "nothing stored: nothing to replace"
    );
    assert!(
        store.get(&k).await.unwrap().is_none(),
        "and nothing created"
    );

    let signed_in = user_tokens("at.1", "rt.1");
    store.put(&k, &signed_in).await.unwrap();
    assert!(
        !store
            .replace_if(&k, &Secret::new("rt.0"), &rotated)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(signed_in));
    assert!(
        store
            .replace_if(&k, &Secret::new("rt.1"), &rotated)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(rotated.clone()));
    // A late rotation with the old refresh token loses.
    let late = user_tokens("at.late", "rt.late");
    assert!(
        !store
            .replace_if(&k, &Secret::new("rt.1"), &late)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(rotated));

    // A refresh response without a refresh token keeps the old one.
    let kept = store
        .get(&k)
        .await
        .unwrap()
        .unwrap()
        .refreshed(AccessToken::new("at.3", TokenType::Bearer).unwrap(), None);
    assert!(
        store
            .replace_if(&k, &Secret::new("rt.2"), &kept)
            .await
            .unwrap()
    );
    let read = store.get(&k).await.unwrap().unwrap();
    assert_eq!(read.access_token().expose_secret(), "at.3");
    assert_eq!(read.refresh_token(), Some(&Secret::new("rt.2")));
}

#[tokio::test]
async fn a_record_without_a_refresh_token_matches_no_expected_one() {
    let server = server().await;
    let store = store(&server.url());
    let k = user_key("alice");
    let bare = UserTokens::new(
        AccessToken::new("at.bare", TokenType::Bearer).unwrap(),
        None,
    );
    store.put(&k, &bare).await.unwrap();
    assert!(
        !store
            .replace_if(&k, &Secret::new(""), &user_tokens("a", "r"))
            .await
            .unwrap()
    );
    assert!(!store.remove_if(&k, &Secret::new("")).await.unwrap());
    assert_eq!(store.get(&k).await.unwrap(), Some(bare));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_twenty_racing_rotations_exactly_one_wins() {
    const RACERS: usize = 20;
    let server = server().await;
    // Four replicas, each with its own connection.
    let stores: Vec<_> = (0..4).map(|_| store(&server.url())).collect();
    let k = user_key("alice");
    stores[0]
        .put(&k, &user_tokens("at.1", "rt.1"))
        .await
        .unwrap();

    let start = Arc::new(Barrier::new(RACERS));
    let mut racers = Vec::new();
    for i in 0..RACERS {
        let (store, k, start) = (stores[i % stores.len()].clone(), k.clone(), start.clone());
        racers.push(tokio::spawn(async move {
            let mine = user_tokens(&format!("at.2-{i}"), &format!("rt.2-{i}"));
            start.wait().await;
            let won = store
                .replace_if(&k, &Secret::new("rt.1"), &mine)
                .await
                .unwrap();
            (won, mine)
        }));
    }
    let mut winners = Vec::new();
    for racer in racers {
        let (won, mine) = racer.await.unwrap();
        if won {
            winners.push(mine);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation wins");
    assert_eq!(stores[1].get(&k).await.unwrap().as_ref(), winners.first());
}

#[tokio::test]
async fn sign_out_removes_the_record() {
    let server = server().await;
    let store = store(&server.url());
    let k = user_key("alice");
    store.put(&k, &user_tokens("at.1", "rt.1")).await.unwrap();
    assert!(!store.remove_if(&k, &Secret::new("rt.0")).await.unwrap());
    assert!(
        store.get(&k).await.unwrap().is_some(),
        "a stale refresh token removes nothing"
    );
    assert!(store.remove_if(&k, &Secret::new("rt.1")).await.unwrap());
    assert!(store.get(&k).await.unwrap().is_none());
    assert!(!store.remove_if(&k, &Secret::new("rt.1")).await.unwrap());

    store.put(&k, &user_tokens("at.2", "rt.2")).await.unwrap();
    store.remove(&k).await.unwrap();
    assert!(store.get(&k).await.unwrap().is_none());
    store.remove(&k).await.unwrap();
}

#[tokio::test]
async fn every_write_sets_the_record_ttl() {
    let server = server().await;
    let mut con = raw(&server.url()).await;
    let k = user_key("alice");

    let default = store(&server.url());
    assert_eq!(default.record_ttl(), DEFAULT_USER_RECORD_TTL);
    // An access token without an expiry still gets the TTL.
    let bare = UserTokens::new(
        AccessToken::new("at.bare", TokenType::Bearer).unwrap(),
        Some(Secret::new("rt.1")),
    );
    default.put(&k, &bare).await.unwrap();
    let pttl: i64 = con.pttl(default.redis_key(&k)).await.unwrap();
    let thirty_days = 30 * 24 * 3600 * 1000;
    assert!(
        (thirty_days - 60_000..=thirty_days).contains(&pttl),
        "PTTL {pttl} ms should be about 30 days"
    );

    let ten_minutes = RedisUserTokenStore::builder(&server.url())
        .record_ttl(Duration::from_secs(600))
        .build()
        .unwrap();
    ten_minutes
        .put(&k, &user_tokens("at.1", "rt.1"))
        .await
        .unwrap();
    let pttl: i64 = con.pttl(ten_minutes.redis_key(&k)).await.unwrap();
    assert!((598_000..=600_000).contains(&pttl), "PTTL {pttl}");

    // A rotation renews it; a failed one leaves it alone.
    let _: () = con.pexpire(ten_minutes.redis_key(&k), 5_000).await.unwrap();
    let rotated = user_tokens("at.2", "rt.2");
    assert!(
        !ten_minutes
            .replace_if(&k, &Secret::new("rt.0"), &rotated)
            .await
            .unwrap()
    );
    let pttl: i64 = con.pttl(ten_minutes.redis_key(&k)).await.unwrap();
    assert!((1..=5_000).contains(&pttl), "PTTL {pttl}");
    assert!(
        ten_minutes
            .replace_if(&k, &Secret::new("rt.1"), &rotated)
            .await
            .unwrap()
    );
    let pttl: i64 = con.pttl(ten_minutes.redis_key(&k)).await.unwrap();
    assert!((598_000..=600_000).contains(&pttl), "PTTL {pttl}");
}

#[tokio::test]
async fn a_user_who_stays_away_loses_the_record() {
    let server = server().await;
    let store = RedisUserTokenStore::builder(&server.url())
        .record_ttl(Duration::from_millis(50))
        .build()
        .unwrap();
    let k = user_key("alice");
    store.put(&k, &user_tokens("at.1", "rt.1")).await.unwrap();
    eventually(Duration::from_secs(5), "the record to expire", || async {
        store.get(&k).await.unwrap().is_none()
    })
    .await;
}

/// The hex SHA-256 the store keeps beside a record's envelope.
fn digest(refresh_token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(refresh_token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn unusable_records_read_as_absent_with_one_warning_each() {
    let server = server().await;
    let store = store(&server.url());
    let mut con = raw(&server.url()).await;
    let good = user_tokens("at.secret-access", "rt.secret-refresh");
    let valid = r#"{"v":1,"access_token":"at.x","token_type":"Bearer","refresh_token":"rt.x"}"#;

    // What someone (a bug, an operator, a newer version) left under the key, as hash fields.
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "not an envelope",
            vec![("v", "garbage".into()), ("rt", String::new())],
        ),
        (
            "a newer envelope version",
            vec![("v", r#"{"v":2,"x":1}"#.into()), ("rt", String::new())],
        ),
        (
            "an invalid access token",
            vec![
                (
                    "v",
                    r#"{"v":1,"access_token":"a b","token_type":"Bearer"}"#.into(),
                ),
                ("rt", String::new()),
            ],
        ),
        (
            "a digest that does not match the refresh token",
            vec![("v", valid.into()), ("rt", digest("rt.other"))],
        ),
        ("an envelope without its digest", vec![("v", valid.into())]),
        (
            "a digest without its envelope",
            vec![("rt", digest("rt.x"))],
        ),
        // Not a hash at all: planted below as a string.
        ("another type", vec![]),
    ];
    let warnings = Warnings::install();
    for (i, (what, fields)) in cases.iter().enumerate() {
        let k = user_key(&format!("user-{i}"));
        let rk = store.redis_key(&k);
        if fields.is_empty() {
            let _: () = con.set(&rk, "a string").await.unwrap();
        } else {
            let _: () = con.hset_multiple(&rk, fields).await.unwrap();
        }
        assert!(store.get(&k).await.unwrap().is_none(), "{what}: absent");
        assert_eq!(warnings.count(), i + 1, "{what}: one warning per read");
        assert!(store.is_available(), "{what}: not an outage");
        // Compare-and-swap and compare-and-remove find no match there, and fail on nothing.
        let none = Secret::new("rt.none");
        assert!(!store.replace_if(&k, &none, &good).await.unwrap(), "{what}");
        assert!(!store.remove_if(&k, &none).await.unwrap(), "{what}");
        // The user signs in again: the record is whole again.
        store.put(&k, &good).await.unwrap();
        assert_eq!(store.get(&k).await.unwrap().as_ref(), Some(&good), "{what}");
    }
    // The valid envelope with its own digest reads: the cases above fail for their reason only.
    let k = user_key("control");
    let _: () = con
        .hset_multiple(
            store.redis_key(&k),
            &[("v", valid.to_owned()), ("rt", digest("rt.x"))],
        )
        .await
        .unwrap();
    let read = store
        .get(&k)
        .await
        .unwrap()
        .expect("a well-formed record reads");
    assert_eq!(read.refresh_token(), Some(&Secret::new("rt.x")));
    assert_eq!(warnings.count(), cases.len());

    for line in warnings.lines() {
        assert!(!line.contains("secret-"), "no token in a warning: {line}");
        assert!(!line.contains("user-"), "no user key in a warning: {line}");
        assert!(line.contains("reason="), "the warning says why: {line}");
    }
}
