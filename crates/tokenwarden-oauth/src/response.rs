//! Strict parsing of token endpoint responses (RFC 6749 §5.1 and §5.2).

use std::time::{Duration, SystemTime};

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Map, Value};
use tokenwarden_core::{AccessToken, Secret, TokenType};

use crate::Error;

/// The longest lifetime taken from `expires_in`: about ten years. Larger values are capped so that
/// adding the lifetime to the current time can never overflow.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A successful token response (RFC 6749 §5.1).
///
/// `Debug` shows neither the access token nor the refresh token.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenResponse {
    access_token: AccessToken,
    expires_in: Option<Duration>,
    refresh_token: Option<Secret>,
    scope: Option<String>,
    issued_token_type: Option<String>,
}

impl TokenResponse {
    /// The access token, with its type and the granted scope. Its expiry is not set: the response
    /// only says how long it lives ([`expires_in`](Self::expires_in)); see
    /// [`expires_at`](Self::expires_at).
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The lifetime the server gave (`expires_in`), capped at [`MAX_EXPIRES_IN`]; `None` when the
    /// response did not say, in which case the client's default lifetime applies.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// When the token expires, counting from `received_at` (the moment the response arrived) and
    /// using `default_lifetime` when the response has no `expires_in`.
    pub fn expires_at(&self, received_at: SystemTime, default_lifetime: Duration) -> SystemTime {
        let lifetime = self.expires_in.unwrap_or(default_lifetime);
        received_at
            .checked_add(lifetime)
            .or_else(|| received_at.checked_add(MAX_EXPIRES_IN))
            .unwrap_or(received_at)
    }

    /// The refresh token, if the grant allows one and the server sent it. Always `None` for the
    /// client-credentials grant.
    pub fn refresh_token(&self) -> Option<&Secret> {
        self.refresh_token.as_ref()
    }

    /// The scope the server granted, when it said (it may differ from the scope asked for).
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The type of the token issued by a token exchange (RFC 8693 §2.2.1 `issued_token_type`,
    /// e.g. [`token_types::ACCESS_TOKEN`](tokenwarden_core::token_types::ACCESS_TOKEN)), when
    /// the server said.
    pub fn issued_token_type(&self) -> Option<&str> {
        self.issued_token_type.as_deref()
    }

    /// Unwraps the access token.
    pub fn into_access_token(self) -> AccessToken {
        self.access_token
    }

    /// Drops the refresh token, for grants that must not issue one.
    pub(crate) fn without_refresh_token(mut self) -> Self {
        self.refresh_token = None;
        self
    }
}

/// Turns a token endpoint's status and body into a token or the right error.
///
/// An OAuth error body wins over everything else, whatever the status: a `200` carrying `error`
/// is an error. Messages name the field at fault but never repeat a value from the body.
pub(crate) fn parse_token_response(
    endpoint: &Uri,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<TokenResponse, Error> {
    let parsed = serde_json::from_slice::<Value>(body);
    let retry_after = retry_after(status, headers);
    if let Ok(Value::Object(map)) = &parsed
        && let Some(error) = oauth_error(endpoint, status, map, retry_after)
    {
        return Err(error);
    }
    if !status.is_success() {
        return Err(Error::UnexpectedStatus {
            endpoint: endpoint.to_string(),
            status,
            retry_after,
        });
    }
    let map = match parsed {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(Error::invalid_response(format!(
                "the body is a JSON {}, not an object",
                kind(&other)
            )));
        }
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => {
            return Err(Error::invalid_response("the body is empty"));
        }
        // serde_json's messages can quote the input; only the position is reported.
        Err(e) => {
            return Err(Error::invalid_response(format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            )));
        }
    };
    parse_success(&map)
}

fn parse_success(map: &Map<String, Value>) -> Result<TokenResponse, Error> {
    let value = match map.get("access_token") {
        None | Some(Value::Null) => {
            return Err(Error::invalid_response("the response has no access_token"));
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(Error::invalid_response("access_token is empty"));
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(Error::invalid_response(format!(
                "access_token is a JSON {}, not a string",
                kind(other)
            )));
        }
    };
    let token_type = match map.get("token_type") {
        // RFC 6749 makes token_type required, but servers that leave it out issue bearer tokens.
        None | Some(Value::Null) => TokenType::Bearer,
        Some(Value::String(s)) if is_auth_scheme(s) => TokenType::parse(s),
        Some(Value::String(_)) => {
            return Err(Error::invalid_response(
                "token_type is not a valid authorization scheme",
            ));
        }
        Some(other) => {
            return Err(Error::invalid_response(format!(
                "token_type is a JSON {}, not a string",
                kind(other)
            )));
        }
    };
    let expires_in = parse_expires_in(map.get("expires_in"))?;
    let scope = optional_string(map, "scope")?;
    let refresh_token = optional_string(map, "refresh_token")?.map(Secret::from);
    let issued_token_type = optional_string(map, "issued_token_type")?;
    let mut access_token = AccessToken::new(value, token_type).map_err(Error::InvalidToken)?;
    if let Some(scope) = &scope {
        access_token = access_token.with_scope(scope.as_str());
    }
    Ok(TokenResponse {
        access_token,
        expires_in,
        refresh_token,
        scope,
        issued_token_type,
    })
}

/// The error an answer that is not a success stands for: the OAuth error in its body (RFC 7009
/// §2.2.1 uses the same form), else its status.
pub(crate) fn parse_token_response_error(
    endpoint: &Uri,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Error {
    let retry_after = retry_after(status, headers);
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && let Some(error) = oauth_error(endpoint, status, &map, retry_after)
    {
        return error;
    }
    Error::UnexpectedStatus {
        endpoint: endpoint.to_string(),
        status,
        retry_after,
    }
}

/// RFC 6749 §5.2: an object with a string `error` is an error response.
fn oauth_error(
    endpoint: &Uri,
    status: StatusCode,
    map: &Map<String, Value>,
    retry_after: Option<Duration>,
) -> Option<Error> {
    let error = match map.get("error") {
        Some(Value::String(e)) if !e.is_empty() => e.clone(),
        _ => return None,
    };
    let description = match map.get("error_description") {
        Some(Value::String(d)) if !d.is_empty() => Some(d.clone()),
        _ => None,
    };
    Some(Error::TokenEndpoint {
        endpoint: endpoint.to_string(),
        status,
        error,
        description,
        retry_after,
    })
}

/// RFC 9110 §10.2.3: `Retry-After` as delay-seconds or an HTTP date, read on the statuses that
/// carry it for a client (429, RFC 6585 §4; 503). A date in the past is no delay; a malformed
/// value is ignored.
fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: the parse fails only on overflow.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn parse_expires_in(value: Option<&Value>) -> Result<Option<Duration>, Error> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => secs,
            (None, Some(f)) if f < 0.0 => {
                return Err(Error::invalid_response("expires_in is negative"));
            }
            // A fraction is rounded down; a huge float saturates and is capped below.
            (None, Some(f)) if f.is_finite() => f as u64,
            _ => return Err(Error::invalid_response("expires_in is not a number")),
        },
        // Some servers send the number as a string.
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.starts_with('-') {
                return Err(Error::invalid_response("expires_in is negative"));
            }
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::invalid_response("expires_in is not a number"));
            }
            // Only digits are left, so the parse fails only on overflow: cap it.
            s.parse::<u64>().unwrap_or(u64::MAX)
        }
        Some(other) => {
            return Err(Error::invalid_response(format!(
                "expires_in is a JSON {}, not a number",
                kind(other)
            )));
        }
    };
    Ok(Some(Duration::from_secs(seconds).min(MAX_EXPIRES_IN)))
}

fn optional_string(map: &Map<String, Value>, name: &str) -> Result<Option<String>, Error> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::invalid_response(format!(
            "{name} is a JSON {}, not a string",
            kind(other)
        ))),
    }
}

/// An HTTP authorization scheme is a `token` (RFC 9110 §5.6.2), so it can go in a header.
fn is_auth_scheme(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn endpoint() -> Uri {
        Uri::from_static("https://idp.example.com/token")
    }

    fn ok(body: &str) -> Result<TokenResponse, Error> {
        parse_token_response(
            &endpoint(),
            StatusCode::OK,
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    fn invalid(body: &str) -> String {
        match ok(body) {
            Err(Error::InvalidResponse(message)) => message,
            other => panic!("{body}: expected InvalidResponse, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_full_response() {
        let r = ok(
            r#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"example",
            "expires_in":3600,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA","scope":"read write",
            "example_parameter":"example_value"}"#,
        )
        .unwrap();
        assert_eq!(r.access_token().expose_secret(), "2YotnFZFEjr1zCsicMWpAA");
        assert_eq!(r.access_token().token_type().as_str(), "example");
        assert_eq!(r.access_token().scope(), Some("read write"));
        assert_eq!(r.access_token().expires_at(), None);
        assert_eq!(r.expires_in(), Some(Duration::from_secs(3600)));
        assert_eq!(
            r.refresh_token().map(Secret::expose_secret),
            Some("tGzv3JOkF0XG5Qx2TlKWIA")
        );
        assert_eq!(r.scope(), Some("read write"));
        let shown = format!("{r:?}");
        assert!(!shown.contains("2YotnFZFEjr1zCsicMWpAA"), "{shown}");
        assert!(!shown.contains("tGzv3JOkF0XG5Qx2TlKWIA"), "{shown}");
        assert_eq!(
            r.into_access_token().expose_secret(),
            "2YotnFZFEjr1zCsicMWpAA"
        );
    }

    #[test]
    fn token_type_is_case_insensitive_and_defaults_to_bearer() {
        for (body, expected) in [
            (
                r#"{"access_token":"t","token_type":"bearer"}"#,
                TokenType::Bearer,
            ),
            (
                r#"{"access_token":"t","token_type":"BEARER"}"#,
                TokenType::Bearer,
            ),
            (
                r#"{"access_token":"t","token_type":"dpop"}"#,
                TokenType::DPoP,
            ),
            (r#"{"access_token":"t"}"#, TokenType::Bearer),
            (
                r#"{"access_token":"t","token_type":null}"#,
                TokenType::Bearer,
            ),
        ] {
            assert_eq!(
                ok(body).unwrap().access_token().token_type(),
                &expected,
                "{body}"
            );
        }
        assert!(invalid(r#"{"access_token":"t","token_type":""}"#).contains("token_type"));
        assert!(invalid(r#"{"access_token":"t","token_type":"Bearer x"}"#).contains("token_type"));
        assert!(invalid(r#"{"access_token":"t","token_type":7}"#).contains("token_type"));
    }

    #[test]
    fn expires_in_accepts_integers_and_numeric_strings() {
        let secs = |body: &str| ok(body).unwrap().expires_in();
        assert_eq!(
            secs(r#"{"access_token":"t","expires_in":300}"#),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            secs(r#"{"access_token":"t","expires_in":"300"}"#),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            secs(r#"{"access_token":"t","expires_in":299.9}"#),
            Some(Duration::from_secs(299))
        );
        assert_eq!(
            secs(r#"{"access_token":"t","expires_in":0}"#),
            Some(Duration::ZERO)
        );
        assert_eq!(secs(r#"{"access_token":"t"}"#), None);
        assert_eq!(secs(r#"{"access_token":"t","expires_in":null}"#), None);
    }

    #[test]
    fn expires_in_rejects_negative_and_non_numeric_values() {
        for body in [
            r#"{"access_token":"t","expires_in":-1}"#,
            r#"{"access_token":"t","expires_in":-0.5}"#,
            r#"{"access_token":"t","expires_in":"-60"}"#,
        ] {
            assert_eq!(invalid(body), "expires_in is negative", "{body}");
        }
        for body in [
            r#"{"access_token":"t","expires_in":"soon"}"#,
            r#"{"access_token":"t","expires_in":""}"#,
            r#"{"access_token":"t","expires_in":"1e3"}"#,
            r#"{"access_token":"t","expires_in":true}"#,
            r#"{"access_token":"t","expires_in":[1]}"#,
        ] {
            assert!(invalid(body).starts_with("expires_in is"), "{body}");
        }
    }

    #[test]
    fn absurd_lifetimes_are_capped() {
        for body in [
            r#"{"access_token":"t","expires_in":18446744073709551615}"#,
            r#"{"access_token":"t","expires_in":1e300}"#,
            r#"{"access_token":"t","expires_in":"99999999999999999999999999"}"#,
        ] {
            let r = ok(body).unwrap();
            assert_eq!(r.expires_in(), Some(MAX_EXPIRES_IN), "{body}");
            let now = SystemTime::now();
            assert_eq!(
                r.expires_at(now, Duration::from_secs(60)),
                now + MAX_EXPIRES_IN
            );
        }
    }

    #[test]
    fn expires_at_uses_the_default_lifetime_when_absent() {
        let r = ok(r#"{"access_token":"t"}"#).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            r.expires_at(t0, Duration::from_secs(3600)),
            t0 + Duration::from_secs(3600)
        );
        let r = ok(r#"{"access_token":"t","expires_in":60}"#).unwrap();
        assert_eq!(
            r.expires_at(t0, Duration::from_secs(3600)),
            t0 + Duration::from_secs(60)
        );
    }

    #[test]
    fn access_token_is_required_and_header_safe() {
        assert_eq!(
            invalid(r#"{"token_type":"Bearer"}"#),
            "the response has no access_token"
        );
        assert_eq!(
            invalid(r#"{"access_token":null}"#),
            "the response has no access_token"
        );
        assert_eq!(invalid(r#"{"access_token":""}"#), "access_token is empty");
        assert_eq!(
            invalid(r#"{"access_token":42}"#),
            "access_token is a JSON number, not a string"
        );
        for bad in [
            r#""abc\r\nX-Evil: 1""#,
            r#""a b""#,
            r#""a\u0000b""#,
            r#""t\u00f6ken""#,
        ] {
            let body = format!(r#"{{"access_token":{bad}}}"#);
            let err = ok(&body).unwrap_err();
            assert!(matches!(err, Error::InvalidToken(_)), "{body}: {err:?}");
        }
    }

    #[test]
    fn body_must_be_a_json_object_and_errors_never_echo_it() {
        assert_eq!(invalid(""), "the body is empty");
        assert_eq!(
            invalid(r#""sekrit-token-value""#),
            "the body is a JSON string, not an object"
        );
        assert_eq!(
            invalid(r#"["sekrit-token-value"]"#),
            "the body is a JSON array, not an object"
        );
        let message = invalid(r#"access_token=sekrit-token-value&token_type=bearer"#);
        assert!(
            message.starts_with("the body is not valid JSON (line 1, column"),
            "{message}"
        );
        let message = invalid(r#"{"access_token":"sekrit-token-value","#);
        assert!(
            message.starts_with("the body is not valid JSON"),
            "{message}"
        );
        assert!(!message.contains("sekrit"), "{message}");
        for body in [
            r#"{"access_token":"sekrit-token-value","scope":5}"#,
            r#"{"access_token":"sekrit-token-value","refresh_token":{"v":"sekrit-token-value"}}"#,
            r#"{"access_token":"sekrit token value"}"#,
        ] {
            let err = ok(body).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("sekrit"), "{shown}");
        }
    }

    #[test]
    fn oauth_error_bodies_become_token_endpoint_errors_with_any_status() {
        let body = br#"{"error":"invalid_client","error_description":"unknown client"}"#;
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::OK,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            match parse_token_response(&endpoint(), status, &HeaderMap::new(), body) {
                Err(Error::TokenEndpoint {
                    status: s,
                    error,
                    description,
                    ..
                }) => {
                    assert_eq!(s, status);
                    assert_eq!(error, "invalid_client");
                    assert_eq!(description.as_deref(), Some("unknown client"));
                }
                other => panic!("{status}: {other:?}"),
            }
        }
        match parse_token_response(
            &endpoint(),
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":"invalid_scope"}"#,
        ) {
            Err(Error::TokenEndpoint {
                error,
                description: None,
                ..
            }) => assert_eq!(error, "invalid_scope"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_failures_become_unexpected_status() {
        for (status, body) in [
            (StatusCode::INTERNAL_SERVER_ERROR, "<html>oops</html>"),
            (StatusCode::BAD_GATEWAY, ""),
            (StatusCode::NOT_FOUND, r#"{"message":"not found"}"#),
            (StatusCode::BAD_REQUEST, r#"{"error":42}"#),
            (StatusCode::UNAUTHORIZED, r#"{"access_token":"t"}"#),
        ] {
            match parse_token_response(&endpoint(), status, &HeaderMap::new(), body.as_bytes()) {
                Err(Error::UnexpectedStatus { status: s, .. }) => assert_eq!(s, status),
                other => panic!("{status} {body}: {other:?}"),
            }
        }
    }

    #[test]
    fn optional_fields_must_be_strings() {
        assert_eq!(
            invalid(r#"{"access_token":"t","scope":["a"]}"#),
            "scope is a JSON array, not a string"
        );
        assert_eq!(
            invalid(r#"{"access_token":"t","refresh_token":1}"#),
            "refresh_token is a JSON number, not a string"
        );
        let r = ok(r#"{"access_token":"t","scope":"","refresh_token":null}"#).unwrap();
        assert_eq!(r.scope(), None);
        assert!(r.refresh_token().is_none());
    }

    #[test]
    fn retry_after_is_read_on_429_and_503_as_seconds_or_a_date() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, value.parse().unwrap());
            headers
        };
        let wait = |status: u16, headers: &HeaderMap| {
            parse_token_response(
                &endpoint(),
                StatusCode::from_u16(status).unwrap(),
                headers,
                b"",
            )
            .unwrap_err()
            .retry_after()
        };
        assert_eq!(wait(503, &with("3")), Some(Duration::from_secs(3)));
        assert_eq!(wait(429, &with(" 120 ")), Some(Duration::from_secs(120)));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let waited = wait(503, &with(&soon)).unwrap();
        assert!(
            waited > Duration::from_secs(28) && waited <= Duration::from_secs(30),
            "{waited:?}"
        );
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(30));
        assert_eq!(wait(429, &with(&past)), Some(Duration::ZERO));
        assert_eq!(
            wait(503, &with("soon")),
            None,
            "malformed values are ignored"
        );
        assert_eq!(wait(500, &with("3")), None, "only 429 and 503 carry it");
        assert_eq!(wait(503, &HeaderMap::new()), None);
        let oauth = parse_token_response(
            &endpoint(),
            StatusCode::TOO_MANY_REQUESTS,
            &with("7"),
            br#"{"error":"slow_down"}"#,
        )
        .unwrap_err();
        assert_eq!(oauth.retry_after(), Some(Duration::from_secs(7)));
    }
}
