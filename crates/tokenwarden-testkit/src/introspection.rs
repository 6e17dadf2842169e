//! `POST /introspect`: token introspection (RFC 7662), so a test can see what a token stands for
//! the way a resource server would.

use http::header::{ALLOW, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::{self, ReadBodyError, ResponseBody};
use crate::client_auth::FormRequest;
use crate::oauth_error::OAuthError;
use crate::server::Disconnect;
use crate::state::State;
use crate::tokens::TokenInfo;

/// Form fields that may appear at most once.
const SINGLE_VALUED: [&str; 4] = ["token", "token_type_hint", "client_id", "client_secret"];

/// Answers one request to the introspection endpoint.
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
    state.count_introspection_request();
    let (parts, body) = request.into_parts();
    let form = match body::read_limited(body).await {
        Ok(bytes) => bytes,
        Err(ReadBodyError::TooLarge) => return Ok(body::plain(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(ReadBodyError::Transport) => return Err(Disconnect),
    };
    let request = FormRequest::parse(&parts.headers, &form);
    tracing::debug!(
        client_id = request.client_id(),
        auth_method = ?request.auth_method(),
        "introspection request"
    );
    Ok(match answer(state, &request) {
        Ok(response) => body::token_json(StatusCode::OK, &response),
        Err(error) => error.into_response(),
    })
}

/// Authenticates the client (any registered client may introspect any token, as resource
/// servers do), then describes the token. Anything that is not a live token of this server,
/// refresh tokens included, is `{"active": false}` (RFC 7662 §2.2).
fn answer(state: &State, request: &FormRequest) -> Result<Value, OAuthError> {
    request.check_form(&SINGLE_VALUED)?;
    request.authenticate(state)?;
    let token = request
        .non_empty_field("token")
        .ok_or_else(|| OAuthError::invalid_request("parameter token is missing"))?;
    Ok(match state.introspect(token) {
        Some(info) => describe(state.issuer(), &info),
        None => json!({ "active": false }),
    })
}

/// The RFC 7662 §2.2 response for a live token. `aud` is always an array, possibly of one.
fn describe(issuer: &str, info: &TokenInfo) -> Value {
    let owner = &info.owner;
    let mut response = json!({
        "active": true,
        "iss": issuer,
        "sub": owner.sub,
        "client_id": owner.client_id,
        "token_type": info.token_type.as_str(),
        "iat": info.iat,
        "exp": info.exp,
    });
    if let Some(user) = &owner.user {
        response["username"] = user.as_str().into();
    }
    if let Some(scope) = &owner.scope {
        response["scope"] = scope.as_str().into();
    }
    if !owner.audience.is_empty() {
        response["aud"] = owner.audience.as_slice().into();
    }
    if let Some(actor) = &owner.actor {
        response["act"] = actor.to_json();
    }
    response
}
