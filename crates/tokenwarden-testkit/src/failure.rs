//! Failures a test can inject into the next token request.

use http::StatusCode;

/// A failure the token endpoint answers with instead of a token, queued with
/// [`TestServer::fail_next`](crate::TestServer::fail_next).
///
/// Failures are consumed first in, first out, one per token request, whatever client sent it and
/// whether or not its credentials are valid. A queued failure is applied after the request is
/// counted and after the configured delay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// Answer with this status and a small HTML body, the way a proxy or a crashed gateway does
    /// (not an OAuth JSON error).
    Status(StatusCode),
    /// Answer with this status, the small HTML body of [`Status`](Self::Status) and a
    /// `Retry-After: <seconds>` header, the way a rate limiter (429) or a server in maintenance
    /// (503) asks the client to come back later.
    RetryAfter {
        /// The HTTP status, usually 429 or 503.
        status: StatusCode,
        /// The `Retry-After` value, in seconds.
        seconds: u64,
    },
    /// Answer with an RFC 6749 §5.2 error: `{"error": .., "error_description": ..}` with this status.
    OAuthError {
        /// The HTTP status, usually 400 or 401.
        status: StatusCode,
        /// The `error` code, e.g. `invalid_scope`.
        error: String,
        /// The optional `error_description`.
        description: Option<String>,
    },
    /// Answer 200 with `Content-Type: application/json` and exactly this body, e.g. malformed JSON,
    /// a missing `access_token`, or a token containing `"\r\n"`.
    RawBody(String),
    /// Answer 200 with a body of this many bytes, streamed in chunks without `Content-Length`, to test
    /// the client's response size limit.
    LargeBody(usize),
    /// Never answer: the request stays open until the client gives up or the server shuts down.
    Hang,
    /// Close the connection without sending a response, like a server that crashed mid-request.
    Disconnect,
}

impl Failure {
    /// An [`OAuthError`](Self::OAuthError) with status 400 and no description, e.g.
    /// `Failure::oauth("invalid_scope")`.
    pub fn oauth(error: impl Into<String>) -> Self {
        Self::OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            description: None,
        }
    }
}
