#![doc = include_str!("../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod breaker;
mod builder;
mod cache;
mod connection;
mod encryption;
mod envelope;
mod error;
mod users;

pub use builder::{
    DEFAULT_BREAKER_COOL_DOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_KEY_PREFIX, DEFAULT_OP_TIMEOUT,
    DEFAULT_USER_RECORD_TTL, MAX_USER_RECORD_TTL, RedisBuilder, RedisTokenCacheBuilder,
    RedisUserTokenStoreBuilder,
};
pub use cache::RedisTokenCache;
pub use encryption::Encryption;
pub use error::Error;
/// The `redis` crate this crate is built on, re-exported so you can use the same version (for
/// example to inspect raw values in tests).
pub use redis;
pub use users::RedisUserTokenStore;
