//! What the manager and the layer report through the [`metrics`](https://docs.rs/metrics) facade,
//! with the feature `metrics` (without it these functions do nothing). Install any recorder
//! (a Prometheus exporter, StatsD, ...) to collect them:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `tokenwarden_token_requests_total` | counter | `client`, `grant`, `outcome` | requests sent to token endpoints, every retry included, users' refreshes too (`grant` `refresh_token`); `outcome`: `ok`, `oauth_error`, `status`, `transport`, `timeout`, `invalid_response` (also a failed discovery), `config` |
//! | `tokenwarden_token_acquisitions_total` | counter | `client`, `tier`, `reason` | tokens obtained because the cached one would not do; `tier` where the token came from: `memory` (another caller's request, or a token that became fresh meanwhile), `shared` (the shared tier; for a user client, the user token store), `endpoint` (for a user client, a refresh), or `failed`; `reason`: `missing`, `expired`, `due` (background renewal), `forced`, `rejected` (after a 401) |
//! | `tokenwarden_token_acquisition_seconds` | histogram | `client`, `tier` | how long each of those took, waits and retries included |
//! | `tokenwarden_invalidations_total` | counter | `client` | cached tokens dropped because a resource server rejected them |
//! | `tokenwarden_replays_total` | counter | `client` | requests the layer replayed with a new token after a 401 |
//! | `tokenwarden_shared_cache_breaker_open` | gauge | | 1 while the Redis token cache's circuit breaker is open (from `tokenwarden-redis` with its feature `metrics`) |
//! | `tokenwarden_user_store_breaker_open` | gauge | | 1 while the Redis user token store's circuit breaker is open (from `tokenwarden-redis` with its feature `metrics`) |
//!
//! A request served from the in-memory tier on the layer's hot path is not counted: a counter
//! every request wrote would be memory every core writes, which the hot path avoids. Revocations
//! and discovery requests are not counted.
//!
//! Users' tokens also show in `tracing` events: `user token refreshed` at debug level (the
//! client, the new access token's fingerprint, and whether the refresh token was rotated), and
//! `the user must sign in again` at info level (the client and the reason), when a user client
//! answers [`Error::ReauthenticationRequired`](crate::Error::ReauthenticationRequired).

use std::time::Duration;

/// A token request's outcome, as the `outcome` label says it.
pub(crate) fn outcome(result: Result<(), &tokenwarden_oauth::Error>) -> &'static str {
    use tokenwarden_oauth::Error as E;
    match result {
        Ok(()) => "ok",
        Err(E::TokenEndpoint { .. }) => "oauth_error",
        Err(E::UnexpectedStatus { .. }) => "status",
        Err(E::Transport { .. }) => "transport",
        Err(E::Timeout { .. }) => "timeout",
        Err(E::Config(_)) => "config",
        Err(_) => "invalid_response",
    }
}

/// One request sent to a token endpoint.
pub(crate) fn token_request(client: &str, grant: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tokenwarden_token_requests_total",
        "client" => client.to_owned(),
        "grant" => grant.to_owned(),
        "outcome" => outcome,
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (client, grant, outcome);
}

/// One token acquisition, ended at `tier` after `took`.
pub(crate) fn acquisition(client: &str, tier: &'static str, reason: &'static str, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!(
            "tokenwarden_token_acquisitions_total",
            "client" => client.to_owned(),
            "tier" => tier,
            "reason" => reason,
        )
        .increment(1);
        metrics::histogram!(
            "tokenwarden_token_acquisition_seconds",
            "client" => client.to_owned(),
            "tier" => tier,
        )
        .record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (client, tier, reason, took);
}

/// A cached token dropped because a resource server rejected it.
pub(crate) fn invalidation(client: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tokenwarden_invalidations_total", "client" => client.to_owned())
        .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = client;
}

/// A request replayed with a new token.
pub(crate) fn replay(client: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tokenwarden_replays_total", "client" => client.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = client;
}
