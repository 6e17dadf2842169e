//! Values read from the shared tier are checked like token-endpoint responses: a planted entry
//! that would put a second credential in the `Authorization` header, or any token type other
//! than Bearer, is a miss, never sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{CLIENT, http_client, manager_builder, server};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokenwarden::redis::RedisTokenCache;
use tokenwarden::{AccessToken, AccessTokenLayer, CachedToken, TokenCache, TokenParams, TokenType};
use tokenwarden_testkit::RedisServer;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test]
async fn a_planted_value_that_is_not_a_plain_bearer_token_is_never_sent() {
    let redis = RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)");
    let cache = || RedisTokenCache::builder(&redis.url()).build().unwrap();
    for planted_type in ["Bearer x, Basic", "Basic", "DPoP", "mac"] {
        let server = server().await;
        let manager = manager_builder(&server)
            .shared_cache(cache())
            .build()
            .unwrap();
        let key = manager.cache_key(CLIENT, &TokenParams::new()).unwrap();
        let now = SystemTime::now();
        let planted = AccessToken::new("Zm9v", TokenType::parse(planted_type)).unwrap();
        let hour = Duration::from_secs(3600);
        cache()
            .put(&key, &CachedToken::new(planted, now + hour, now + hour / 2))
            .await
            .unwrap();

        let client = ServiceBuilder::new()
            .layer(
                AccessTokenLayer::builder(&manager, CLIENT)
                    .allow_origin(&server.base_url())
                    .build()
                    .unwrap(),
            )
            .service(http_client());
        let request = Request::get(server.api_url("/x"))
            .body(Full::default())
            .unwrap();
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{planted_type}");
        assert_eq!(
            server.api_rejections(),
            0,
            "{planted_type}: the planted value was sent"
        );
        assert_eq!(server.token_requests(CLIENT), 1, "{planted_type}");
        assert_eq!(manager.metrics().shared_cache_hits, 0, "{planted_type}");
        // The planted entry was replaced by the real token.
        let stored = cache().get(&key).await.unwrap().unwrap();
        assert_eq!(stored.token().token_type(), &TokenType::Bearer);
    }
}
