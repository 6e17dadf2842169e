use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::{StatusCode, Uri};
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
        "{endpoint} returned error {error:?} (status {status}){}",
        description_suffix(description.as_deref())
    )]
    TokenEndpoint {
        /// The token endpoint.
        endpoint: String,
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
    /// The token endpoint answered with a non-2xx status and no OAuth 2.0 error body (a 404
    /// usually means the endpoint URL is wrong).
    #[error("{endpoint} answered {status}")]
    UnexpectedStatus {
        /// The token endpoint.
        endpoint: String,
        /// The HTTP status of the response.
        status: StatusCode,
        /// How long the server asked to wait before trying again (`Retry-After` on a 429 or
        /// 503 response).
        retry_after: Option<Duration>,
    },
    /// The request could not be sent or the response could not be read: `kind` says what went
    /// wrong (connection refused, DNS, TLS, ...), `source` how the transport put it.
    #[error("could not reach {endpoint}: {kind}")]
    Transport {
        /// The token endpoint.
        endpoint: String,
        /// What went wrong, as far as it can be told.
        kind: TransportKind,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// No complete answer (response body included) within the client's timeout, or the
    /// manager's deadline.
    #[error("{endpoint} did not answer within {after:?}")]
    Timeout {
        /// The token endpoint.
        endpoint: String,
        /// How long it was given.
        after: Duration,
    },
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
    /// A client configured by issuer could not learn its endpoints from the issuer's metadata.
    #[error("discovery of {issuer} failed: {problem}")]
    Discovery {
        /// The configured issuer.
        issuer: String,
        /// What went wrong.
        problem: String,
        /// The failure behind it (a transport error, a status), if any.
        #[source]
        source: Option<Box<Error>>,
    },
    /// A revocation was asked of a client with no revocation endpoint.
    #[error(
        "client {client_id:?} has no revocation endpoint: configure one, or configure the client by issuer"
    )]
    NoRevocationEndpoint {
        /// The client's id.
        client_id: String,
    },
    /// A grant that exchanges a subject token (token exchange, an extension grant with a
    /// subject token parameter) was asked for a token without one
    /// ([`TokenParams::subject_token`](tokenwarden_core::TokenParams::subject_token)).
    #[error("the {grant_type} grant needs a subject token, and the request has none")]
    MissingSubjectToken {
        /// The grant.
        grant_type: String,
    },
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
            Error::Transport { .. } | Error::Timeout { .. } => true,
            Error::Discovery { source, .. } => source.as_deref().is_some_and(Error::is_retryable),
            Error::NoRevocationEndpoint { .. } | Error::MissingSubjectToken { .. } => false,
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
            Error::TokenEndpoint { retry_after, .. }
            | Error::UnexpectedStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the server refused the grant itself (`invalid_grant`): an expired or revoked
    /// refresh token or subject token, a reused refresh token. Asking again with the same input
    /// cannot succeed.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Error::TokenEndpoint { error, .. } if error == "invalid_grant")
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }

    pub(crate) fn invalid_response(message: impl Into<String>) -> Self {
        Error::InvalidResponse(message.into())
    }
}

/// What kind of transport failure an [`Error::Transport`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// Nothing listens at the endpoint's address and port.
    ConnectionRefused,
    /// The endpoint's host name could not be resolved.
    Dns,
    /// The TLS handshake failed (certificate not trusted, wrong host name, protocol).
    Tls,
    /// Connecting (or a read or write) timed out in the transport.
    Timeout,
    /// The connection was closed or reset before the answer was complete.
    ConnectionClosed,
    /// Anything else; the source says what.
    Other,
}

impl TransportKind {
    /// Tells what `error` was from the errors in its chain: I/O error kinds, rustls's error,
    /// and hyper-util's connector, which says `dns error` (its type is private).
    pub fn of(error: &(dyn StdError + 'static)) -> TransportKind {
        let mut current = Some(error);
        while let Some(error) = current {
            if error.downcast_ref::<rustls::Error>().is_some() {
                return TransportKind::Tls;
            }
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        return TransportKind::ConnectionRefused;
                    }
                    std::io::ErrorKind::TimedOut => return TransportKind::Timeout,
                    std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof => return TransportKind::ConnectionClosed,
                    _ => {}
                }
                // An I/O error's `source()` skips the error it wraps: look at that one too.
                if let Some(inner) = io.get_ref() {
                    let kind = TransportKind::of(inner);
                    if kind != TransportKind::Other {
                        return kind;
                    }
                }
            }
            if error.to_string() == "dns error" {
                return TransportKind::Dns;
            }
            current = error.source();
        }
        TransportKind::Other
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::ConnectionRefused => "connection refused",
            TransportKind::Dns => "the host name could not be resolved (DNS)",
            TransportKind::Tls => "the TLS handshake failed",
            TransportKind::Timeout => "the connection timed out",
            TransportKind::ConnectionClosed => {
                "the connection was closed before the answer was complete"
            }
            TransportKind::Other => "transport error",
        })
    }
}

impl Error {
    pub(crate) fn transport(endpoint: &Uri, source: BoxError) -> Self {
        Error::Transport {
            endpoint: endpoint.to_string(),
            kind: TransportKind::of(&*source),
            source,
        }
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

    fn endpoint() -> String {
        "https://idp.example.com/oauth2/token".to_owned()
    }

    #[test]
    fn retryable_by_cause() {
        let oauth = |status: u16| Error::TokenEndpoint {
            endpoint: endpoint(),
            status: StatusCode::from_u16(status).unwrap(),
            error: "invalid_client".into(),
            description: None,
            retry_after: None,
        };
        let unexpected = |status: u16| Error::UnexpectedStatus {
            endpoint: endpoint(),
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
        assert!(Error::transport(&endpoint().parse().unwrap(), "reset".into()).is_retryable());
        let timeout = Error::Timeout {
            endpoint: endpoint(),
            after: Duration::from_secs(1),
        };
        assert!(timeout.is_retryable());
        assert!(!Error::invalid_response("x").is_retryable());
        assert!(!Error::ResponseTooLarge { limit: 1 }.is_retryable());
        assert!(!Error::config("x").is_retryable());
        let invalid = tokenwarden_core::Error::InvalidToken("the token contains whitespace");
        assert!(!Error::InvalidToken(invalid).is_retryable());
    }

    #[test]
    fn messages_name_the_endpoint_and_quote_server_text() {
        let e = Error::TokenEndpoint {
            endpoint: endpoint(),
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            description: Some("bad\nline".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            r#"https://idp.example.com/oauth2/token returned error "invalid_client" (status 401 Unauthorized): "bad\nline""#
        );
        let e = Error::UnexpectedStatus {
            endpoint: endpoint(),
            status: StatusCode::NOT_FOUND,
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "https://idp.example.com/oauth2/token answered 404 Not Found"
        );
        let e = Error::Timeout {
            endpoint: endpoint(),
            after: Duration::from_millis(250),
        };
        assert_eq!(
            e.to_string(),
            "https://idp.example.com/oauth2/token did not answer within 250ms"
        );
    }

    #[test]
    fn transport_failures_are_told_apart() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = Error::transport(&endpoint().parse().unwrap(), Box::new(refused));
        assert_eq!(
            e.to_string(),
            "could not reach https://idp.example.com/oauth2/token: connection refused"
        );
        #[derive(Debug)]
        struct Named(&'static str, Option<std::io::Error>);
        impl fmt::Display for Named {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for Named {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                self.1.as_ref().map(|e| e as _)
            }
        }
        let dns = Named(
            "dns error",
            Some(std::io::Error::other("failed to lookup address")),
        );
        assert_eq!(
            TransportKind::of(&Named("client error", None)),
            TransportKind::Other
        );
        let outer = Named("client error (Connect)", None);
        assert_eq!(TransportKind::of(&outer), TransportKind::Other);
        assert_eq!(TransportKind::of(&dns), TransportKind::Dns);
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(TransportKind::of(&tls), TransportKind::Tls);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(TransportKind::of(&reset), TransportKind::ConnectionClosed);
    }
}
