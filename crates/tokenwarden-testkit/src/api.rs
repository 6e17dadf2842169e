//! `/api/*`: the protected API that accepts only live tokens from this server, unless its
//! [`ApiMode`] says otherwise.

use http::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::{self, ReadBodyError, ResponseBody};
use crate::server::Disconnect;
use crate::state::State;

/// How the protected API (`/api/*`) judges requests, set with
/// [`TestServer::set_api_mode`](crate::TestServer::set_api_mode) or
/// [`TestServerBuilder::api_mode`](crate::TestServerBuilder::api_mode).
///
/// Every 401 the API answers, whatever the mode, counts in
/// [`TestServer::api_rejections`](crate::TestServer::api_rejections).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiMode {
    /// Accept live tokens from this server; answer 401 `Bearer error="invalid_token"` to unknown,
    /// expired or revoked tokens, and a bare `Bearer` challenge when there is no
    /// `Authorization` header.
    #[default]
    Normal,
    /// Answer every request 401 with `WWW-Authenticate: Bearer error="invalid_token"`, whatever
    /// the token (or its absence): an API that rejects every token, e.g. one configured for
    /// another audience. A client must not loop renewing tokens against it.
    RejectAll,
    /// Answer a request with a live token 401 with
    /// `WWW-Authenticate: Bearer error="insufficient_scope", scope="admin"`, as some APIs do
    /// instead of RFC 6750's 403; other requests are judged as in [`Normal`](Self::Normal).
    /// A new token would not help, so a client should not renew on this challenge.
    InsufficientScope,
}

/// The challenge for a request without any `Authorization` header (RFC 6750 §3.1: no error code).
const CHALLENGE_MISSING: &str = "Bearer";
/// The challenge for a token that is not (or no longer) accepted.
const CHALLENGE_INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";
/// The challenge for a live token that lacks a scope the resource needs.
const CHALLENGE_INSUFFICIENT_SCOPE: &str = "Bearer error=\"insufficient_scope\", scope=\"admin\"";

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
    // Read after the body, so a mode switched while a request was uploading applies to it.
    let mode = state.api_mode();
    if mode == ApiMode::RejectAll {
        state.count_api_rejection();
        return Ok(unauthorized("invalid_token", CHALLENGE_INVALID_TOKEN));
    }
    let owner = match bearer_token(&parts.headers) {
        Credentials::Missing => {
            state.count_api_rejection();
            return Ok(unauthorized("invalid_token", CHALLENGE_MISSING));
        }
        Credentials::Invalid => None,
        Credentials::Bearer(token) => state.validate_token(token),
    };
    let Some(owner) = owner else {
        state.count_api_rejection();
        return Ok(unauthorized("invalid_token", CHALLENGE_INVALID_TOKEN));
    };
    if mode == ApiMode::InsufficientScope {
        state.count_api_rejection();
        return Ok(unauthorized(
            "insufficient_scope",
            CHALLENGE_INSUFFICIENT_SCOPE,
        ));
    }
    let mut echo = json!({
        "client": owner.client_id,
        "sub": owner.sub,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "body": String::from_utf8_lossy(&body),
    });
    if let Some(user) = owner.user {
        echo["user"] = user.into();
    }
    if let Some(scope) = owner.scope {
        echo["scope"] = scope.into();
    }
    if !owner.audience.is_empty() {
        echo["aud"] = owner.audience.into();
    }
    if let Some(actor) = owner.actor {
        echo["act"] = actor.to_json();
    }
    Ok(body::json(StatusCode::OK, &echo))
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

/// A 401 with a JSON `{"error": error}` body and this `WWW-Authenticate` challenge.
fn unauthorized(error: &str, challenge: &'static str) -> Response<ResponseBody> {
    let mut response = body::json(StatusCode::UNAUTHORIZED, &json!({ "error": error }));
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
