//! What an operator can graph (feature `metrics`): token requests by client and outcome,
//! acquisitions by tier and reason with their duration, invalidations and replays, read back from
//! a real Prometheus recorder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{CLIENT, http_client, manager, server};
use http::{Request, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokenwarden::AccessTokenLayer;
use tokenwarden_testkit::Failure;
use tower::{ServiceBuilder, ServiceExt};

/// The value of one sample line of Prometheus' text format.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

// A current-thread runtime: the recorder is this thread's, and every task runs here.
#[tokio::test(flavor = "current_thread")]
async fn token_requests_acquisitions_invalidations_and_replays_are_counted() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);

    let server = server().await;
    server.fail_next(Failure::Status(StatusCode::SERVICE_UNAVAILABLE));
    let manager = manager(&server);
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, CLIENT)
                .allow_origin(&server.base_url())
                .build()
                .unwrap(),
        )
        .service(http_client());
    let get = || {
        Request::get(server.api_url("/x"))
            .body(Full::default())
            .unwrap()
    };
    for i in 0..10 {
        if i == 5 {
            server.revoke_all();
        }
        assert_eq!(
            client.clone().oneshot(get()).await.unwrap().status(),
            StatusCode::OK
        );
    }

    let text = handle.render();
    let requests = |outcome: &str| {
        sample(
            &text,
            &format!(
                "tokenwarden_token_requests_total{{client=\"billing\",grant=\"client_credentials\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(requests("ok"), Some(2.0), "{text}");
    assert_eq!(requests("status"), Some(1.0), "{text}");
    let acquisitions = |reason: &str| {
        sample(
            &text,
            &format!(
                "tokenwarden_token_acquisitions_total{{client=\"billing\",tier=\"endpoint\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(acquisitions("missing"), Some(1.0), "{text}");
    assert_eq!(acquisitions("rejected"), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "tokenwarden_token_acquisition_seconds_count{client=\"billing\",tier=\"endpoint\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tokenwarden_invalidations_total{client=\"billing\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tokenwarden_replays_total{client=\"billing\"}"),
        Some(1.0),
        "{text}"
    );
    // Cached tokens on the hot path are not counted: ten requests, two acquisitions.
    assert!(!text.contains("tier=\"memory\""), "{text}");
}

/// The Redis tier's circuit breaker, as a gauge: 1 while it is open, 0 again once Redis is back.
#[tokio::test(flavor = "current_thread")]
async fn the_shared_cache_breaker_state_is_a_gauge() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let breaker_open = || sample(&handle.render(), "tokenwarden_shared_cache_breaker_open");

    let mut redis = tokenwarden_testkit::RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)");
    let cache = tokenwarden::redis::RedisTokenCache::builder(&redis.url())
        .op_timeout(std::time::Duration::from_millis(200))
        .breaker(2, std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let server = server().await;
    let manager = common::manager_builder(&server)
        .shared_cache(cache)
        .build()
        .unwrap();
    manager.token(CLIENT).await.unwrap();

    redis.kill().await;
    for _ in 0..3 {
        manager.purge_local();
        manager.token(CLIENT).await.unwrap();
    }
    assert_eq!(breaker_open(), Some(1.0));

    redis.restart().await.unwrap();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while breaker_open() != Some(0.0) && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        manager.purge_local();
        manager.token(CLIENT).await.unwrap();
    }
    assert_eq!(
        breaker_open(),
        Some(0.0),
        "closed again after the cool-down"
    );
}
