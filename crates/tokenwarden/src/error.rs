use std::sync::Arc;

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
    #[error("{grant} token request for client `{client}` failed: {source}")]
    Token {
        /// The client's name.
        client: Arc<str>,
        /// The grant that was used, e.g. `client_credentials`.
        grant: &'static str,
        /// The cause.
        #[source]
        source: Arc<tokenwarden_oauth::Error>,
    },
    /// The configuration cannot work (no allowed origin, an invalid origin, no HTTP transport).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The client this error is about, if it is about one.
    pub fn client(&self) -> Option<&str> {
        match self {
            Error::UnknownClient { client } | Error::Token { client, .. } => Some(client),
            Error::Config(_) => None,
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
        self.oauth_error()
            .is_some_and(tokenwarden_oauth::Error::is_retryable)
    }
}
