//! Failures a test can inject into the next token, revocation or discovery request.

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::{self, LargeBody, ResponseBody};
use crate::oauth_error::OAuthError;
use crate::server::Disconnect;

/// A failure an endpoint answers with instead of its usual answer, queued with
/// [`TestServer::fail_next`](crate::TestServer::fail_next) (token endpoint),
/// [`TestServer::fail_next_revocation`](crate::TestServer::fail_next_revocation) or
/// [`TestServer::fail_next_discovery`](crate::TestServer::fail_next_discovery).
///
/// Each endpoint has its own queue. Failures are consumed first in, first out, one per request
/// to that endpoint, whatever client sent it and whether or not its credentials are valid. A
/// queued failure is applied after the request is counted (and, at the token endpoint, after
/// the configured delay).
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
    /// a missing `access_token`, a token containing `"\r\n"`, or discovery metadata with an
    /// `http` endpoint or another `issuer`.
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

/// Turns an injected failure into the response (or the lack of one).
pub(crate) async fn respond(failure: Failure) -> Result<Response<ResponseBody>, Disconnect> {
    Ok(match failure {
        Failure::Status(status) => body::html_status(status),
        Failure::RetryAfter { status, seconds } => {
            let mut response = body::html_status(status);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
        Failure::OAuthError {
            status,
            error,
            description,
        } => OAuthError {
            status,
            error: error.into(),
            description,
            challenge_basic: false,
        }
        .into_response(),
        Failure::RawBody(raw) => {
            let mut response = body::full(StatusCode::OK, "application/json", raw);
            response
                .headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-store"));
            response
        }
        Failure::LargeBody(len) => {
            let mut response = Response::new(ResponseBody::Large(LargeBody::new(len)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        // The connection task drops this future when the client goes away or the server stops.
        Failure::Hang => std::future::pending().await,
        Failure::Disconnect => return Err(Disconnect),
    })
}
