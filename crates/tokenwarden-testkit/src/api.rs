//! `/api/*`: the protected API that accepts only live tokens from this server.

use http::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::{self, ReadBodyError, ResponseBody};
use crate::server::Disconnect;
use crate::state::State;

/// Answers one request to the protected API.
pub(crate) async fn handle(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Disconnect> {
    state.count_api_request();
    let (parts, body) = request.into_parts();
    // Read in full before answering, also for 401s, so a client replaying the request has had its
    // whole body consumed, as with a real server.
    let body = match body::read_limited(body).await {
        Ok(bytes) => bytes,
        Err(ReadBodyError::TooLarge) => return Ok(body::plain(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(ReadBodyError::Transport) => return Err(Disconnect),
    };
    let client = match bearer_token(&parts.headers) {
        Credentials::Missing => {
            state.count_api_rejection();
            return Ok(unauthorized("Bearer"));
        }
        Credentials::Invalid => None,
        Credentials::Bearer(token) => state.validate_token(token),
    };
    let Some(client) = client else {
        state.count_api_rejection();
        return Ok(unauthorized("Bearer error=\"invalid_token\""));
    };
    Ok(body::json(
        StatusCode::OK,
        &json!({
            "client": client,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "body": String::from_utf8_lossy(&body),
        }),
    ))
}

/// What the request offered as credentials.
#[derive(Debug, PartialEq, Eq)]
enum Credentials<'a> {
    /// No `Authorization` header: RFC 6750 §3.1 says the challenge carries no error code.
    Missing,
    /// An `Authorization` header that is not one usable bearer token.
    Invalid,
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
}

fn bearer_token(headers: &HeaderMap) -> Credentials<'_> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(AUTHORIZATION) {
            Credentials::Invalid
        } else {
            Credentials::Missing
        };
    };
    let Some((scheme, token)) = value.to_str().ok().and_then(|v| v.trim().split_once(' ')) else {
        return Credentials::Invalid;
    };
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
        Credentials::Bearer(token)
    } else {
        Credentials::Invalid
    }
}

fn unauthorized(challenge: &'static str) -> Response<ResponseBody> {
    let mut response = body::json(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": "invalid_token" }),
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn bearer_token_parsing() {
        assert_eq!(bearer_token(&with(&[])), Credentials::Missing);
        assert_eq!(
            bearer_token(&with(&["Bearer tk_1"])),
            Credentials::Bearer("tk_1")
        );
        assert_eq!(
            bearer_token(&with(&["bearer  tk_1 "])),
            Credentials::Bearer("tk_1")
        );
        assert_eq!(bearer_token(&with(&["Basic abc"])), Credentials::Invalid);
        assert_eq!(bearer_token(&with(&["Bearer"])), Credentials::Invalid);
        assert_eq!(
            bearer_token(&with(&["Bearer a", "Bearer b"])),
            Credentials::Invalid
        );
    }
}
