//! Errors of building a [`RedisTokenCache`](crate::RedisTokenCache) or a
//! [`RedisUserTokenStore`](crate::RedisUserTokenStore).

/// Why a [`RedisTokenCache`](crate::RedisTokenCache) or a
/// [`RedisUserTokenStore`](crate::RedisUserTokenStore) could not be built.
///
/// Their operations return [`tokenwarden_core::Error`] instead: the cache `Cache` or
/// `CacheTimeout`, which the token manager treats as a miss; the store `Store`, which reaches the
/// caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Redis URL did not parse (the message never repeats the URL, which may hold a password).
    #[error("invalid redis url")]
    Url(#[source] redis::RedisError),
    /// An option is out of range (an empty or duplicate encryption key id, a zero timeout).
    #[error("invalid redis configuration: {0}")]
    Config(String),
}
