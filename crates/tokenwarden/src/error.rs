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
    /// The user must sign in again: nothing is stored for them, or the server refused their
    /// refresh token (`invalid_grant`: expired by an absolute or sliding lifetime, revoked,
    /// reused); their stored tokens were removed. An app answers this by starting a new sign-in
    /// (or, for an API, with a 401 of its own).
    #[error("the user must sign in again for client `{client}`: {reason}")]
    ReauthenticationRequired {
        /// The client's name.
        client: Arc<str>,
        /// Why.
        reason: &'static str,
        /// The server's answer, when it refused the refresh token.
        #[source]
        source: Option<Arc<tokenwarden_oauth::Error>>,
    },
    /// The user token store failed: the user's tokens are unknown, not gone.
    #[error("the user token store failed for client `{client}`")]
    Store {
        /// The client's name.
        client: Arc<str>,
        /// The store's error.
        #[source]
        source: Arc<tokenwarden_core::Error>,
    },
    /// A request through the layer of a user client carries no [`UserKey`](crate::UserKey) in its
    /// extensions: it is not sent (it would go without a token, or with another user's).
    #[error("a request for the user client `{client}` carries no UserKey in its extensions")]
    NoUserKey {
        /// The client's name.
        client: Arc<str>,
    },
    /// A request for a client that exchanges its caller's token (token exchange, an extension
    /// grant with a subject token) carries no [`SubjectToken`](crate::SubjectToken), in its
    /// extensions or from the layer's function: it is not sent.
    #[error("a request for client `{client}` carries no subject token to exchange")]
    NoSubjectToken {
        /// The client's name.
        client: Arc<str>,
    },
    /// The subject token cannot be exchanged: it expired (by its `exp` claim), or the server
    /// refused it (`invalid_grant`: expired, revoked, not for this client). The caller's
    /// credentials are at fault: a middle tier answers its caller 401, as it would for a token
    /// it rejected itself. (`invalid_grant` does not say which token was refused: a configured
    /// actor token the server refuses is reported here too.)
    #[error("client `{client}` cannot exchange the subject token: {reason}")]
    SubjectTokenRejected {
        /// The client's name.
        client: Arc<str>,
        /// Why.
        reason: &'static str,
        /// The server's answer, when it refused the token.
        #[source]
        source: Option<Arc<tokenwarden_oauth::Error>>,
    },
    /// Revoking a user's token at sign-out failed; the stored tokens were removed all the same,
    /// but the server may still accept the token until it expires.
    #[error(
        "revoking the user's {hint} for client `{client}` failed; the stored tokens were removed"
    )]
    Revocation {
        /// The client's name.
        client: Arc<str>,
        /// Which token: `refresh_token` or `access_token`.
        hint: &'static str,
        /// The cause.
        #[source]
        source: Arc<tokenwarden_oauth::Error>,
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
            | Error::Timeout { client, .. }
            | Error::ReauthenticationRequired { client, .. }
            | Error::Store { client, .. }
            | Error::NoUserKey { client }
            | Error::NoSubjectToken { client }
            | Error::SubjectTokenRejected { client, .. }
            | Error::Revocation { client, .. } => Some(client),
            Error::NoRuntime | Error::Config(_) => None,
        }
    }

    /// The protocol error, when the token request itself failed.
    pub fn oauth_error(&self) -> Option<&tokenwarden_oauth::Error> {
        match self {
            Error::Token { source, .. } | Error::Revocation { source, .. } => Some(source),
            Error::ReauthenticationRequired { source, .. }
            | Error::SubjectTokenRejected { source, .. } => source.as_deref(),
            _ => None,
        }
    }

    /// Whether the user must sign in again ([`Error::ReauthenticationRequired`]).
    pub fn is_reauthentication_required(&self) -> bool {
        matches!(self, Error::ReauthenticationRequired { .. })
    }

    /// Whether the subject token a request acted for is at fault
    /// ([`Error::SubjectTokenRejected`]): a middle tier answers its own caller 401.
    pub fn is_subject_token_rejected(&self) -> bool {
        matches!(self, Error::SubjectTokenRejected { .. })
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
