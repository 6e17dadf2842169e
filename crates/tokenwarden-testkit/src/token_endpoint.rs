//! `POST /token`: the grants, and injected failures.

use http::header::{ALLOW, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::body::{self, ReadBodyError, ResponseBody};
use crate::client_auth::FormRequest;
use crate::exchange::{self, DELEGATION, TOKEN_EXCHANGE};
use crate::failure;
use crate::oauth_error::OAuthError;
use crate::server::Disconnect;
use crate::state::State;
use crate::tokens::{Issued, RefreshError};

/// Form fields that RFC 6749 §3.2 allows at most once per request.
const SINGLE_VALUED: [&str; 7] = [
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "username",
    "password",
    "refresh_token",
];

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
    let request = FormRequest::parse(&parts.headers, &form);
    tracing::debug!(
        client_id = request.client_id(),
        auth_method = ?request.auth_method(),
        grant_type = request.field("grant_type"),
        "token request"
    );
    state.record_token_request(request.client_id(), Some(request.record()));

    let delay = state.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(failure) = state.pop_failure() {
        return failure::respond(failure).await;
    }
    Ok(match answer(state, &request) {
        Ok(response) => {
            state.count_token_issued();
            response
        }
        Err(error) => error.into_response(),
    })
}

/// The grants this server supports. A new built-in grant is a new variant here plus an arm in
/// [`answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant<'s> {
    ClientCredentials,
    /// The resource owner password credentials grant (RFC 6749 §4.3): signs a registered user in
    /// without a browser.
    Password,
    RefreshToken,
    /// Token exchange (RFC 8693), always served.
    TokenExchange,
    /// The `delegation` extension grant, served when `TestServerBuilder::delegation_grant` says.
    Delegation,
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
            "password" => Some(Self::Password),
            "refresh_token" => Some(Self::RefreshToken),
            TOKEN_EXCHANGE => Some(Self::TokenExchange),
            DELEGATION if state.delegation_grant() => Some(Self::Delegation),
            other => state
                .extension_grant(other)
                .map(|required_param| Self::Extension { required_param }),
        }
    }
}

/// Authenticates the client, then runs the grant.
fn answer(state: &State, request: &FormRequest) -> Result<Response<ResponseBody>, OAuthError> {
    request.check_form(&SINGLE_VALUED)?;
    let client_id = request.authenticate(state)?;
    let grant_type = request
        .field("grant_type")
        .ok_or_else(|| OAuthError::invalid_request("grant_type is missing"))?;
    let grant = Grant::parse(state, grant_type).ok_or_else(|| {
        OAuthError::bad_request(
            "unsupported_grant_type",
            format!("grant type {grant_type} is not supported"),
        )
    })?;
    let scope = request.non_empty_field("scope");
    match grant {
        Grant::ClientCredentials => Ok(client_token(state, client_id, request)),
        Grant::TokenExchange => exchange::token_exchange(state, client_id, request),
        Grant::Delegation => exchange::delegation(state, client_id, request),
        Grant::Extension { required_param } => {
            if request.non_empty_field(required_param).is_none() {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {required_param} is missing"
                )));
            }
            Ok(client_token(state, client_id, request))
        }
        Grant::Password => {
            let (Some(username), Some(password)) = (
                request.non_empty_field("username"),
                request.field("password"),
            ) else {
                return Err(OAuthError::invalid_request(
                    "parameters username and password are required",
                ));
            };
            if !state.check_password(username, password) {
                return Err(OAuthError::invalid_grant(
                    "invalid resource owner credentials",
                ));
            }
            Ok(user_tokens(&state.sign_in(client_id, username, scope)))
        }
        Grant::RefreshToken => {
            let token = request
                .non_empty_field("refresh_token")
                .ok_or_else(|| OAuthError::invalid_request("parameter refresh_token is missing"))?;
            match state.refresh(client_id, token, scope) {
                Ok(issued) => Ok(user_tokens(&issued)),
                Err(error) => Err(refresh_error(error)),
            }
        }
    }
}

/// Issues a client's own bearer token (RFC 6749 §5.1), echoing the requested scope as granted in
/// full.
fn client_token(state: &State, client_id: &str, request: &FormRequest) -> Response<ResponseBody> {
    let scope = request.field("scope");
    let (token, expires_in) = state.issue_client_token(client_id, scope);
    let mut response = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(scope) = scope {
        response["scope"] = scope.into();
    }
    body::token_json(StatusCode::OK, &response)
}

/// The response to a sign-in or a refresh: the access token, and the refresh token and scope
/// when there are any.
fn user_tokens(issued: &Issued) -> Response<ResponseBody> {
    let mut response = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    });
    if let Some(refresh_token) = &issued.refresh_token {
        response["refresh_token"] = refresh_token.as_str().into();
    }
    if let Some(scope) = &issued.scope {
        response["scope"] = scope.as_str().into();
    }
    body::token_json(StatusCode::OK, &response)
}

fn refresh_error(error: RefreshError) -> OAuthError {
    match error {
        RefreshError::Unknown => OAuthError::invalid_grant("refresh token is invalid or revoked"),
        RefreshError::OtherClient => {
            OAuthError::invalid_grant("refresh token was issued to another client")
        }
        RefreshError::Reused => {
            OAuthError::invalid_grant("refresh token was already used; its token family is revoked")
        }
        RefreshError::Expired(expired) => OAuthError::invalid_grant(expired.description()),
        RefreshError::WiderScope => OAuthError::bad_request(
            "invalid_scope",
            "requested scope exceeds the scope granted at sign-in",
        ),
    }
}
