//! Encrypted user records: neither token appears in Redis, rotation and sign-out still compare
//! refresh tokens, keys rotate, and a record that does not open reads as absent.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use common::{raw, server, user_key, user_tokens};
use redis::AsyncCommands;
use tokenwarden_core::{Secret, UserTokenStore};
use tokenwarden_redis::{Encryption, RedisUserTokenStore};

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];

fn store(url: &str, encryption: Option<Encryption>) -> RedisUserTokenStore {
    let builder = RedisUserTokenStore::builder(url);
    match encryption {
        Some(e) => builder.encryption(e),
        None => builder,
    }
    .build()
    .unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_raw_record_contains_neither_token() {
    let server = server().await;
    let store = store(&server.url(), Some(Encryption::new("k1", K1)));
    let k = user_key("alice");
    let tokens = user_tokens("at.access-secret-1", "rt.refresh-secret-1");
    store.put(&k, &tokens).await.unwrap();

    let fields: Vec<(String, Vec<u8>)> = raw(&server.url())
        .await
        .hgetall(store.redis_key(&k))
        .await
        .unwrap();
    assert_eq!(fields.len(), 2, "{fields:?}");
    for (field, value) in &fields {
        for secret in ["access-secret", "refresh-secret", "openid profile"] {
            assert!(!contains(value, secret), "{field} holds {secret}");
        }
    }
    assert_eq!(store.get(&k).await.unwrap(), Some(tokens));

    // Compare-and-swap and compare-and-remove still work: they compare digests.
    let rotated = user_tokens("at.access-secret-2", "rt.refresh-secret-2");
    assert!(
        !store
            .replace_if(&k, &Secret::new("rt.wrong"), &rotated)
            .await
            .unwrap()
    );
    assert!(
        store
            .replace_if(&k, &Secret::new("rt.refresh-secret-1"), &rotated)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&k).await.unwrap(), Some(rotated));
    assert!(
        store
            .remove_if(&k, &Secret::new("rt.refresh-secret-2"))
            .await
            .unwrap()
    );
    assert!(store.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn a_rotated_store_still_opens_records_written_with_the_old_key() {
    let server = server().await;
    let old = store(&server.url(), Some(Encryption::new("k1", K1)));
    let rotated = store(
        &server.url(),
        Some(Encryption::new("k2", K2).with_old_key("k1", K1)),
    );
    let k = user_key("alice");
    let tokens = user_tokens("at.1", "rt.1");
    old.put(&k, &tokens).await.unwrap();
    assert_eq!(rotated.get(&k).await.unwrap(), Some(tokens));

    // The refresh writes with the current key, which a store with only the old key cannot open.
    let refreshed = user_tokens("at.2", "rt.2");
    assert!(
        rotated
            .replace_if(&k, &Secret::new("rt.1"), &refreshed)
            .await
            .unwrap()
    );
    assert_eq!(rotated.get(&k).await.unwrap(), Some(refreshed));
    assert!(old.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn a_record_that_does_not_open_reads_as_absent() {
    let server = server().await;
    let writer = store(&server.url(), Some(Encryption::new("k1", K1)));
    let k = user_key("alice");
    writer.put(&k, &user_tokens("at.1", "rt.1")).await.unwrap();

    let without_key = store(&server.url(), None);
    assert!(without_key.get(&k).await.unwrap().is_none());
    let unknown_id = store(&server.url(), Some(Encryption::new("k2", K2)));
    assert!(unknown_id.get(&k).await.unwrap().is_none());
    let wrong_key = store(&server.url(), Some(Encryption::new("k1", K2)));
    assert!(wrong_key.get(&k).await.unwrap().is_none());
    assert!(without_key.is_available() && unknown_id.is_available() && wrong_key.is_available());

    // A record copied to another user's key does not open there.
    let mut con = raw(&server.url()).await;
    let fields: Vec<(String, Vec<u8>)> = con.hgetall(writer.redis_key(&k)).await.unwrap();
    let bob = user_key("bob");
    let _: () = con
        .hset_multiple(writer.redis_key(&bob), &fields)
        .await
        .unwrap();
    assert!(writer.get(&bob).await.unwrap().is_none());
}

#[tokio::test]
async fn with_encryption_on_a_planted_plaintext_record_reads_as_absent() {
    let server = server().await;
    let plain = store(&server.url(), None);
    let encrypted = store(&server.url(), Some(Encryption::new("k1", K1)));
    let k = user_key("alice");
    plain
        .put(&k, &user_tokens("at.planted", "rt.planted"))
        .await
        .unwrap();
    assert!(encrypted.get(&k).await.unwrap().is_none());
}
