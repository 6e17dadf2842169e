//! RFC 6749 §5.2 error responses, shared by the token and revocation endpoints.

use std::borrow::Cow;

use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::json;

use crate::body::{self, ResponseBody};

/// An RFC 6749 §5.2 error response: `{"error": .., "error_description": ..}`.
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub(crate) status: StatusCode,
    pub(crate) error: Cow<'static, str>,
    pub(crate) description: Option<String>,
    /// RFC 6749 §5.2: a failed Basic authentication answers 401 with a `WWW-Authenticate` challenge.
    pub(crate) challenge_basic: bool,
}

impl OAuthError {
    /// A 400 with this error code and description.
    pub(crate) fn bad_request(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            description: Some(description.into()),
            challenge_basic: false,
        }
    }

    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::bad_request("invalid_request", description)
    }

    /// `invalid_grant`: the grant (resource owner credentials, refresh token) is invalid,
    /// expired, revoked or was issued to another client.
    pub(crate) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad_request("invalid_grant", description)
    }

    pub(crate) fn invalid_client(description: &str, challenge_basic: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            description: Some(description.into()),
            challenge_basic,
        }
    }

    pub(crate) fn into_response(self) -> Response<ResponseBody> {
        let mut value = json!({ "error": self.error });
        if let Some(description) = self.description {
            value["error_description"] = description.into();
        }
        let mut response = body::token_json(self.status, &value);
        if self.challenge_basic {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tokenwarden-testkit\""),
            );
        }
        response
    }
}
