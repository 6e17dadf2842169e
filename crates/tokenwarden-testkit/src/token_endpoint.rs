//! `POST /token`: client authentication, grants and injected failures.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::{self, LargeBody, ReadBodyError, ResponseBody};
use crate::server::Disconnect;
use crate::state::{MAX_TOKEN_LIFETIME_SECS, State};
use crate::{AuthMethod, Failure, TokenRequestRecord};

/// Form fields that RFC 6749 §3.2 allows at most once per request.
const SINGLE_VALUED: [&str; 4] = ["grant_type", "client_id", "client_secret", "scope"];

/// Answers one request to the token endpoint.
pub(crate) async fn handle(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Disconnect> {
    if request.method() != Method::POST {
        let mut response = body::plain(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    let (parts, body) = request.into_parts();
    let form = match body::read_limited(body).await {
        Ok(bytes) => bytes,
        Err(ReadBodyError::TooLarge) => {
            state.record_token_request(None, None);
            return Ok(body::plain(StatusCode::PAYLOAD_TOO_LARGE));
        }
        Err(ReadBodyError::Transport) => return Err(Disconnect),
    };
    let request = TokenRequest::parse(&parts.headers, &form);
    tracing::debug!(
        client_id = request.client_id(),
        auth_method = ?request.auth_method(),
        "token request"
    );
    state.record_token_request(request.client_id(), Some(request.record()));

    let delay = state.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(failure) = state.pop_failure() {
        return inject(failure).await;
    }
    Ok(match answer(state, &request) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    })
}

/// Turns an injected failure into the response (or the lack of one).
async fn inject(failure: Failure) -> Result<Response<ResponseBody>, Disconnect> {
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

/// The grants this server supports. A new built-in grant (refresh_token, token exchange) is a
/// new variant here plus an arm in [`answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant<'s> {
    ClientCredentials,
    /// A grant type registered with `TestServerBuilder::extension_grant`, which issues a token
    /// like client credentials once its required form field is present.
    Extension {
        required_param: &'s str,
    },
}

impl<'s> Grant<'s> {
    /// Built-in grant types come first, so an extension cannot change how they behave.
    fn parse(state: &'s State, grant_type: &str) -> Option<Self> {
        match grant_type {
            "client_credentials" => Some(Self::ClientCredentials),
            other => state
                .extension_grant(other)
                .map(|required_param| Self::Extension { required_param }),
        }
    }
}

/// Authenticates the client, then runs the grant.
fn answer(state: &State, request: &TokenRequest) -> Result<Response<ResponseBody>, OAuthError> {
    if !request.form_content_type {
        return Err(OAuthError::invalid_request(
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    if let Some(name) = SINGLE_VALUED
        .into_iter()
        .find(|name| request.fields(name).nth(1).is_some())
    {
        return Err(OAuthError::invalid_request(format!(
            "parameter {name} is repeated"
        )));
    }
    let client_id = authenticate(state, request)?;
    let grant_type = request
        .field("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is missing"))?;
    let grant = Grant::parse(state, grant_type).ok_or_else(|| OAuthError {
        status: StatusCode::BAD_REQUEST,
        error: "unsupported_grant_type".into(),
        description: Some(format!("grant type {grant_type} is not supported")),
        challenge_basic: false,
    })?;
    match grant {
        Grant::ClientCredentials => Ok(issue(state, client_id, request)),
        Grant::Extension { required_param } => {
            if request.field(required_param).is_none_or(str::is_empty) {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {required_param} is missing"
                )));
            }
            Ok(issue(state, client_id, request))
        }
    }
}

/// Issues a bearer token to an authenticated client (RFC 6749 §5.1), echoing the requested
/// scope as granted in full.
fn issue(state: &State, client_id: &str, request: &TokenRequest) -> Response<ResponseBody> {
    // Whole seconds, as `expires_in` is, and capped like the token's `exp` so both agree.
    let expires_in = state
        .token_lifetime()
        .as_secs()
        .min(MAX_TOKEN_LIFETIME_SECS);
    let token = state.issue_token(client_id, expires_in);
    let mut response = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(scope) = request.field("scope") {
        response["scope"] = scope.into();
    }
    body::token_json(StatusCode::OK, &response)
}

/// Checks the client's credentials (RFC 6749 §2.3.1) and returns its id.
fn authenticate<'r>(state: &State, request: &'r TokenRequest) -> Result<&'r str, OAuthError> {
    match &request.basic {
        Some(Basic::Malformed) => Err(OAuthError::invalid_client(
            "malformed basic credentials",
            true,
        )),
        Some(Basic::Credentials { id, secret }) => {
            if request.field("client_secret").is_some() {
                return Err(OAuthError::invalid_request(
                    "more than one client authentication method",
                ));
            }
            if request
                .field("client_id")
                .is_some_and(|form_id| form_id != id)
            {
                return Err(OAuthError::invalid_request(
                    "client_id does not match the basic credentials",
                ));
            }
            if state.authenticate(id, secret) {
                Ok(id)
            } else {
                Err(OAuthError::invalid_client(
                    "client authentication failed",
                    true,
                ))
            }
        }
        None => match (request.field("client_id"), request.field("client_secret")) {
            (Some(id), Some(secret)) if state.authenticate(id, secret) => Ok(id),
            (Some(_), Some(_)) => Err(OAuthError::invalid_client(
                "client authentication failed",
                false,
            )),
            _ => Err(OAuthError::invalid_client(
                "client authentication required",
                false,
            )),
        },
    }
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: std::borrow::Cow<'static, str>,
    description: Option<String>,
    /// RFC 6749 §5.2: a failed Basic authentication answers 401 with a `WWW-Authenticate` challenge.
    challenge_basic: bool,
}

impl OAuthError {
    fn invalid_request(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request".into(),
            description: Some(description.into()),
            challenge_basic: false,
        }
    }

    fn invalid_client(description: &str, challenge_basic: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client".into(),
            description: Some(description.into()),
            challenge_basic,
        }
    }

    fn into_response(self) -> Response<ResponseBody> {
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

/// What an `Authorization: Basic` header held.
#[derive(Debug, PartialEq, Eq)]
enum Basic {
    Credentials { id: String, secret: String },
    Malformed,
}

impl Basic {
    /// `None` when there is no Basic authorization header.
    fn parse(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(AUTHORIZATION)?;
        let Ok(value) = value.to_str() else {
            return Some(Self::Malformed);
        };
        let (scheme, credentials) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        Some(Self::decode(credentials.trim()).unwrap_or(Self::Malformed))
    }

    /// Base64, then `id:secret`, then form-urldecoding of each part (RFC 6749 §2.3.1).
    fn decode(credentials: &str) -> Option<Self> {
        let decoded = String::from_utf8(BASE64.decode(credentials).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some(Self::Credentials {
            id: form_decode(id)?,
            secret: form_decode(secret)?,
        })
    }
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte.
/// `None` for an invalid escape or invalid UTF-8.
fn form_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        bytes.push(match byte {
            b'+' => b' ',
            b'%' => {
                let high = char::from(input.next()?).to_digit(16)?;
                let low = char::from(input.next()?).to_digit(16)?;
                // Two hex digits are at most 0xff, so this cannot truncate.
                u8::try_from(high * 16 + low).ok()?
            }
            other => other,
        });
    }
    String::from_utf8(bytes).ok()
}

/// A token request, parsed but not yet judged.
#[derive(Debug)]
struct TokenRequest {
    basic: Option<Basic>,
    form: Vec<(String, String)>,
    form_content_type: bool,
}

impl TokenRequest {
    fn parse(headers: &HeaderMap, body: &Bytes) -> Self {
        let form_content_type = headers.get(CONTENT_TYPE).is_none_or(|value| {
            value.to_str().is_ok_and(|value| {
                value.split(';').next().is_some_and(|mime| {
                    mime.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            })
        });
        Self {
            basic: Basic::parse(headers),
            form: form_urlencoded::parse(body)
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect(),
            form_content_type,
        }
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.form
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The client id the request claims, whether or not it authenticates.
    fn client_id(&self) -> Option<&str> {
        match &self.basic {
            Some(Basic::Credentials { id, .. }) => Some(id),
            Some(Basic::Malformed) => None,
            None => self.field("client_id"),
        }
    }

    fn auth_method(&self) -> AuthMethod {
        if self.basic.is_some() {
            AuthMethod::Basic
        } else if self.field("client_secret").is_some() {
            AuthMethod::Post
        } else {
            AuthMethod::None
        }
    }

    /// The request as tests see it: never with the secret.
    fn record(&self) -> TokenRequestRecord {
        TokenRequestRecord {
            auth_method: self.auth_method(),
            form: self
                .form
                .iter()
                .filter(|(key, _)| key != "client_secret")
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn headers_with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_url_decoded_after_base64() {
        // "my%20client:s%3Acr+t" -> id "my client", secret "s:cr t"
        let encoded = BASE64.encode("my%20client:s%3Acr+t");
        let headers = headers_with_authorization(&format!("Basic {encoded}"));
        assert_eq!(
            Basic::parse(&headers),
            Some(Basic::Credentials {
                id: "my client".into(),
                secret: "s:cr t".into()
            })
        );
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        let encoded = BASE64.encode("a:b");
        let headers = headers_with_authorization(&format!("bAsIc {encoded}"));
        assert!(matches!(
            Basic::parse(&headers),
            Some(Basic::Credentials { .. })
        ));
        assert_eq!(Basic::parse(&headers_with_authorization("Bearer x")), None);
    }

    #[test]
    fn malformed_basic_credentials_are_reported() {
        for value in ["Basic !!!", "Basic bm9jb2xvbg==", "Basic YTolWlo="] {
            // not base64; "nocolon"; "a:%ZZ"
            assert_eq!(
                Basic::parse(&headers_with_authorization(value)),
                Some(Basic::Malformed),
                "{value}"
            );
        }
    }

    #[test]
    fn form_decode_handles_plus_percent_and_rejects_bad_escapes() {
        assert_eq!(form_decode("a+b%2Bc%3d").as_deref(), Some("a b+c="));
        assert_eq!(form_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(form_decode("%4"), None);
        assert_eq!(form_decode("%FF"), None);
    }

    #[test]
    fn record_drops_the_client_secret() {
        let request = TokenRequest::parse(
            &HeaderMap::new(),
            &Bytes::from_static(b"grant_type=client_credentials&client_id=a&client_secret=s3cret"),
        );
        let record = request.record();
        assert_eq!(record.auth_method, AuthMethod::Post);
        assert_eq!(
            record.form,
            [
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("client_id".to_owned(), "a".to_owned())
            ]
        );
    }
}
