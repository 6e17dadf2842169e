use std::time::Duration;

use http::StatusCode;
use tokenwarden_core::BoxError;

/// Errors of a token request, from configuration to the server's answer.
///
/// [`Error::is_retryable`] tells a retry policy whether trying again can help. No variant ever holds
/// a client secret or a token value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token endpoint answered with an OAuth 2.0 error body (RFC 6749 §5.2).
    #[error(
        "token endpoint returned error {error:?} (status {status}){}",
        description_suffix(description.as_deref())
    )]
    TokenEndpoint {
        /// The HTTP status of the response.
        status: StatusCode,
        /// The `error` code, e.g. `invalid_client` or `invalid_scope`.
        error: String,
        /// The `error_description`, if the server sent one.
        description: Option<String>,
        /// How long the server asked to wait before trying again (`Retry-After` on a 429 or
        /// 503 response).
        retry_after: Option<Duration>,
    },
    /// The token endpoint answered with a non-2xx status and no OAuth 2.0 error body.
    #[error("token endpoint returned unexpected status {status}")]
    UnexpectedStatus {
        /// The HTTP status of the response.
        status: StatusCode,
        /// How long the server asked to wait before trying again (`Retry-After` on a 429 or
        /// 503 response).
        retry_after: Option<Duration>,
    },
    /// The request could not be sent or the response could not be read (connection, TLS, I/O).
    #[error("token endpoint transport error")]
    Transport(#[source] BoxError),
    /// The whole exchange (request and response body) took longer than the client's timeout.
    #[error("token request timed out after {0:?}")]
    Timeout(Duration),
    /// The response is not a valid token response; the message names the problem, never a token value.
    #[error("invalid token response: {0}")]
    InvalidResponse(String),
    /// The response body is larger than the client's limit.
    #[error("token response exceeds the limit of {limit} bytes")]
    ResponseTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The server issued an access token that cannot be sent in an HTTP header.
    #[error("token endpoint issued an access token that is not header-safe")]
    InvalidToken(#[source] tokenwarden_core::Error),
    /// The client's configuration or the request's parameters are invalid.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether trying the same request again may succeed: 5xx and 429 responses, transport errors
    /// and timeouts. OAuth 2.0 errors with a 4xx status, invalid responses and configuration errors
    /// are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::TokenEndpoint { status, .. } | Error::UnexpectedStatus { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Error::Transport(_) | Error::Timeout(_) => true,
            Error::InvalidResponse(_)
            | Error::ResponseTooLarge { .. }
            | Error::InvalidToken(_)
            | Error::Config(_) => false,
        }
    }

    /// How long the server asked to wait before the next attempt, if it said (`Retry-After`
    /// on a 429 or 503 response).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::TokenEndpoint { retry_after, .. } | Error::UnexpectedStatus { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    pub(crate) fn invalid_response(message: impl Into<String>) -> Self {
        Error::InvalidResponse(message.into())
    }
}

fn description_suffix(description: Option<&str>) -> String {
    // Debug formatting quotes the server's text and escapes control characters, so a hostile
    // description cannot forge log lines.
    description.map(|d| format!(": {d:?}")).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn retryable_by_cause() {
        let oauth = |status: u16| Error::TokenEndpoint {
            status: StatusCode::from_u16(status).unwrap(),
            error: "invalid_client".into(),
            description: None,
            retry_after: None,
        };
        let unexpected = |status: u16| Error::UnexpectedStatus {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
        };
        assert!(!oauth(400).is_retryable());
        assert!(!oauth(401).is_retryable());
        assert!(oauth(503).is_retryable());
        assert!(oauth(429).is_retryable());
        assert!(unexpected(500).is_retryable());
        assert!(unexpected(502).is_retryable());
        assert!(unexpected(429).is_retryable());
        assert!(!unexpected(404).is_retryable());
        assert!(Error::Transport("reset".into()).is_retryable());
        assert!(Error::Timeout(Duration::from_secs(1)).is_retryable());
        assert!(!Error::invalid_response("x").is_retryable());
        assert!(!Error::ResponseTooLarge { limit: 1 }.is_retryable());
        assert!(!Error::config("x").is_retryable());
        let invalid = tokenwarden_core::Error::InvalidToken("the token contains whitespace");
        assert!(!Error::InvalidToken(invalid).is_retryable());
    }

    #[test]
    fn messages_are_lower_case_and_quote_server_text() {
        let e = Error::TokenEndpoint {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            description: Some("bad\nline".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            r#"token endpoint returned error "invalid_client" (status 401 Unauthorized): "bad\nline""#
        );
        let e = Error::UnexpectedStatus {
            status: StatusCode::BAD_GATEWAY,
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "token endpoint returned unexpected status 502 Bad Gateway"
        );
        assert_eq!(
            Error::Timeout(Duration::from_millis(250)).to_string(),
            "token request timed out after 250ms"
        );
    }
}
