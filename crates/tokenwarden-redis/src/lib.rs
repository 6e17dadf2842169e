#![doc = include_str!("../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod breaker;
mod builder;
mod cache;
mod encryption;
mod envelope;
mod error;

pub use builder::{
    DEFAULT_BREAKER_COOL_DOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_KEY_PREFIX, DEFAULT_OP_TIMEOUT,
    RedisTokenCacheBuilder,
};
pub use cache::RedisTokenCache;
pub use encryption::Encryption;
pub use error::Error;
/// The `redis` crate this cache is built on, re-exported so you can use the same version (for
/// example to inspect raw values in tests).
pub use redis;
