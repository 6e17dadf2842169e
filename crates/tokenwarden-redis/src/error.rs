//! Errors of building a [`RedisTokenCache`](crate::RedisTokenCache).

/// Why a [`RedisTokenCache`](crate::RedisTokenCache) could not be built.
///
/// Cache operations themselves return [`tokenwarden_core::Error`] (`Cache` or `CacheTimeout`),
/// which the token manager treats as a miss.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Redis URL did not parse (the message never repeats the URL, which may hold a password).
    #[error("invalid redis url")]
    Url(#[source] redis::RedisError),
    /// An option is out of range (an empty or duplicate encryption key id, a zero timeout).
    #[error("invalid redis cache configuration: {0}")]
    Config(String),
}
