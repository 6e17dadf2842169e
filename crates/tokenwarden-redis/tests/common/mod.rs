//! Shared helpers of the Redis integration tests: one real `redis-server` per test.
#![allow(dead_code, unreachable_pub)]

use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenwarden_core::{AccessToken, CacheKey, CachedToken, Secret, TokenType, UserTokens};
use tokenwarden_testkit::RedisServer;

/// Starts a fresh server, failing with a clear message if `redis-server` is not installed.
pub async fn server() -> RedisServer {
    server_with_args(&[]).await
}

pub async fn server_with_args(args: &[&str]) -> RedisServer {
    match RedisServer::start_with_args(args).await {
        Ok(server) => server,
        Err(e) => panic!("these tests need a real redis-server: {e}"),
    }
}

/// A raw connection for reading and planting values behind the cache's back.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub fn key(client: &str) -> CacheKey {
    CacheKey::builder(client).scopes(["read", "write"]).build()
}

/// A time on a whole millisecond, so round trips through the millisecond envelope are exact.
pub fn now_ms() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A token valid for an hour, to be renewed after `renew_in`.
pub fn token(value: &str, now: SystemTime, renew_in: Duration) -> CachedToken {
    let access = AccessToken::new(value, TokenType::Bearer)
        .unwrap()
        .with_scope("read write")
        .with_expires_at(now + Duration::from_secs(3600));
    CachedToken::new(access, now + Duration::from_secs(3600), now + renew_in)
}

/// The key of one user's tokens for one client, the user key hashed as the manager does.
pub fn user_key(user: &str) -> CacheKey {
    CacheKey::builder("web").hashed_part("user", user).build()
}

/// A user's tokens: an access token valid for an hour with a scope, and a refresh token.
pub fn user_tokens(access: &str, refresh: &str) -> UserTokens {
    let access = AccessToken::new(access, TokenType::Bearer)
        .unwrap()
        .with_scope("openid profile")
        .with_expires_at(now_ms() + Duration::from_secs(3600));
    UserTokens::new(access, Some(Secret::new(refresh)))
}

/// Polls `check` every 10 ms until it returns true, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How often the server has run `command` (lower case), from `INFO commandstats`; commands a Lua
/// script runs count too, so a `DEL` here proves a release script deleted a lease.
pub async fn command_calls(con: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// Tasks alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Records `WARN` events from this crate on the current thread (a current-thread tokio test runs
/// everything there): each event's message and fields, as `Debug` shows them.
#[derive(Clone, Default)]
pub struct Warnings(Arc<Mutex<Vec<String>>>);

/// Keeps a [`Warnings`] recorder installed until dropped.
pub struct WarningsGuard {
    warnings: Warnings,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Warnings {
    pub fn install() -> WarningsGuard {
        let warnings = Warnings::default();
        let guard = tracing::subscriber::set_default(warnings.clone());
        WarningsGuard {
            warnings,
            _guard: guard,
        }
    }
}

impl WarningsGuard {
    pub fn count(&self) -> usize {
        self.warnings.0.lock().unwrap().len()
    }

    /// Every warning so far, one line each.
    pub fn lines(&self) -> Vec<String> {
        self.warnings.0.lock().unwrap().clone()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target().starts_with("tokenwarden_redis")
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
