//! Encrypted entries: the token never appears in Redis, keys rotate, a reader without the key misses.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{key, now_ms, raw, server, token};
use redis::AsyncCommands;
use tokenwarden_core::TokenCache;
use tokenwarden_redis::{Encryption, RedisTokenCache};

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];

fn cache(url: &str, encryption: Option<Encryption>) -> RedisTokenCache {
    let builder = RedisTokenCache::builder(url);
    match encryption {
        Some(e) => builder.encryption(e),
        None => builder,
    }
    .build()
    .unwrap()
}

#[tokio::test]
async fn the_raw_value_does_not_contain_the_token() {
    let server = server().await;
    let cache = cache(&server.url(), Some(Encryption::new("k1", K1)));
    let k = key("enc");
    let t = token("tok.secret-value-123", now_ms(), Duration::from_secs(60));
    cache.put(&k, &t).await.unwrap();
    let value: Vec<u8> = raw(&server.url())
        .await
        .get(cache.redis_key(&k))
        .await
        .unwrap();
    assert!(
        !value
            .windows(b"secret-value".len())
            .any(|w| w == b"secret-value")
    );
    assert!(
        !value
            .windows(b"read write".len())
            .any(|w| w == b"read write")
    );
    assert_eq!(cache.get(&k).await.unwrap(), Some(t.clone()));
    // Compare-and-delete still works on encrypted entries (it compares the fingerprint).
    assert!(cache.remove_if(&k, t.token()).await.unwrap());
}

#[tokio::test]
async fn a_rotated_reader_still_opens_values_written_with_the_old_key() {
    let server = server().await;
    let writer = cache(&server.url(), Some(Encryption::new("k1", K1)));
    let reader = cache(
        &server.url(),
        Some(Encryption::new("k2", K2).with_old_key("k1", K1)),
    );
    let k = key("rotate");
    let t = token("tok.rotate", now_ms(), Duration::from_secs(60));
    writer.put(&k, &t).await.unwrap();
    assert_eq!(reader.get(&k).await.unwrap(), Some(t.clone()));
    // New writes use the current key, which the old-only writer cannot open.
    reader.put(&k, &t).await.unwrap();
    assert!(writer.get(&k).await.unwrap().is_none());
    assert_eq!(reader.get(&k).await.unwrap(), Some(t));
}

#[tokio::test]
async fn a_reader_without_the_key_misses() {
    let server = server().await;
    let writer = cache(&server.url(), Some(Encryption::new("k1", K1)));
    let k = key("nokey");
    writer
        .put(&k, &token("tok.nokey", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    let plaintext_reader = cache(&server.url(), None);
    assert!(plaintext_reader.get(&k).await.unwrap().is_none());
    let unknown_id = cache(&server.url(), Some(Encryption::new("k2", K2)));
    assert!(unknown_id.get(&k).await.unwrap().is_none());
    let same_id_wrong_key = cache(&server.url(), Some(Encryption::new("k1", K2)));
    assert!(same_id_wrong_key.get(&k).await.unwrap().is_none());
    assert!(plaintext_reader.is_available() && unknown_id.is_available());
}

#[tokio::test]
async fn a_value_copied_to_another_key_does_not_decrypt() {
    let server = server().await;
    let cache = cache(&server.url(), Some(Encryption::new("k1", K1)));
    let (a, b) = (key("a"), key("b"));
    cache
        .put(&a, &token("tok.a", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    let mut con = raw(&server.url()).await;
    let value: Vec<u8> = con.get(cache.redis_key(&a)).await.unwrap();
    let _: () = con.set(cache.redis_key(&b), value).await.unwrap();
    assert!(cache.get(&b).await.unwrap().is_none());
}

#[tokio::test]
async fn with_encryption_on_a_planted_plaintext_entry_is_a_miss() {
    let server = server().await;
    let plain = cache(&server.url(), None);
    let encrypted = cache(&server.url(), Some(Encryption::new("k1", K1)));
    let k = key("planted");
    plain
        .put(&k, &token("tok.planted", now_ms(), Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(encrypted.get(&k).await.unwrap().is_none());
}
