use std::borrow::Cow;

/// A boxed error from a lower layer (a transport, a cache backend).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the core types and of cache backends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A token value that cannot be sent in an HTTP header (empty, whitespace, control bytes, non-ASCII).
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),
    /// A subject token that cannot be sent (empty, whitespace, control bytes, non-ASCII), or
    /// credentials that hold none.
    #[error("invalid subject token: {0}")]
    InvalidSubjectToken(&'static str),
    /// A cache backend failed; callers treat this as a miss.
    #[error("token cache error: {message}")]
    Cache {
        /// What the backend was doing.
        message: Cow<'static, str>,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A user token store failed; unlike a cache miss, this reaches the caller (the store holds
    /// what cannot be fetched again).
    #[error("user token store error: {message}")]
    Store {
        /// What the store was doing.
        message: Cow<'static, str>,
        /// The store's own error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A cache backend did not answer in time; callers treat this as a miss.
    #[error("token cache timed out after {0:?}")]
    CacheTimeout(std::time::Duration),
}

impl Error {
    /// A cache error with a message and no source.
    pub fn cache(message: impl Into<Cow<'static, str>>) -> Self {
        Error::Cache {
            message: message.into(),
            source: None,
        }
    }

    /// A store error with a message and, if there is one, the store's own error as its source.
    pub fn store(message: impl Into<Cow<'static, str>>, source: Option<BoxError>) -> Self {
        Error::Store {
            message: message.into(),
            source,
        }
    }

    /// A cache error with a message and the backend's error as its source.
    pub fn cache_with(message: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Error::Cache {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}
