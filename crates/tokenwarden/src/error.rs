use std::sync::Arc;
use std::time::Duration;

/// Why a token could not be had: which client, which grant, and the cause.
///
/// Cloneable, because one failed token request answers every caller that was waiting on it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No client with this name was registered with the [`TokenManager`](crate::TokenManager).
    #[error("unknown token client `{client}`")]
    UnknownClient {
        /// The name asked for.
        client: Arc<str>,
    },
    /// The token request failed: the server's OAuth error, a transport failure, a timeout or an
    /// invalid response ([`tokenwarden_oauth::Error`] says which).
    #[error("{grant} token request for client `{client}` failed")]
    Token {
        /// The client's name.
        client: Arc<str>,
        /// The grant that was used, e.g. `client_credentials`.
        grant: Arc<str>,
        /// The cause.
        #[source]
        source: Arc<tokenwarden_oauth::Error>,
    },
    /// No token could be had within the manager's
    /// [`acquire_timeout`](crate::TokenManagerBuilder::acquire_timeout), waits for other callers
    /// and replicas and retries included.
    #[error("no token for client `{client}` ({grant}) within {timeout:?}")]
    Timeout {
        /// The client's name.
        client: Arc<str>,
        /// The grant that was used.
        grant: Arc<str>,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// Tokens are obtained on a Tokio runtime (with its time driver), and none runs on this
    /// thread.
    #[error("a token was needed outside a Tokio runtime; run the request on one")]
    NoRuntime,
    /// The configuration cannot work (no allowed origin, an invalid origin, no HTTP transport).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The client this error is about, if it is about one.
    pub fn client(&self) -> Option<&str> {
        match self {
            Error::UnknownClient { client }
            | Error::Token { client, .. }
            | Error::Timeout { client, .. } => Some(client),
            Error::NoRuntime | Error::Config(_) => None,
        }
    }

    /// The protocol error, when the token request itself failed.
    pub fn oauth_error(&self) -> Option<&tokenwarden_oauth::Error> {
        match self {
            Error::Token { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (server errors, transport failures, timeouts).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            _ => self
                .oauth_error()
                .is_some_and(tokenwarden_oauth::Error::is_retryable),
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause`, for log lines (a `Display` of the
/// error alone says what failed, not why).
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
