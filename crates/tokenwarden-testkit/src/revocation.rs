//! `POST /revoke`: token revocation (RFC 7009).

use http::header::{ALLOW, CACHE_CONTROL, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, ReadBodyError, ResponseBody};
use crate::client_auth::FormRequest;
use crate::failure;
use crate::oauth_error::OAuthError;
use crate::server::Disconnect;
use crate::state::State;
use crate::tokens::OtherClient;

/// Form fields that may appear at most once.
const SINGLE_VALUED: [&str; 4] = ["token", "token_type_hint", "client_id", "client_secret"];

/// Answers one request to the revocation endpoint.
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
            state.record_revocation_request(None);
            return Ok(body::plain(StatusCode::PAYLOAD_TOO_LARGE));
        }
        Err(ReadBodyError::Transport) => return Err(Disconnect),
    };
    let request = FormRequest::parse(&parts.headers, &form);
    tracing::debug!(
        client_id = request.client_id(),
        auth_method = ?request.auth_method(),
        token_type_hint = request.field("token_type_hint"),
        "revocation request"
    );
    state.record_revocation_request(Some(request.record()));
    if let Some(failure) = state.pop_revocation_failure() {
        return failure::respond(failure).await;
    }
    Ok(match answer(state, &request) {
        Ok(()) => {
            // RFC 7009 §2.2: the body is ignored by the client; the answer must not be cached.
            let mut response = body::full(StatusCode::OK, "text/plain; charset=utf-8", "");
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error.into_response(),
    })
}

/// Authenticates the client, then revokes the token if it is the client's. An unknown token is
/// no error (RFC 7009 §2.2), and neither is an unknown `token_type_hint`: the server searches
/// every kind of token anyway (§2.1).
fn answer(state: &State, request: &FormRequest) -> Result<(), OAuthError> {
    request.check_form(&SINGLE_VALUED)?;
    let client_id = request.authenticate(state)?;
    let token = request
        .non_empty_field("token")
        .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    match state.revoke(client_id, token) {
        Ok(revoked) => {
            tracing::debug!(client_id, ?revoked, "revocation");
            Ok(())
        }
        // RFC 7009 §2.1: a token issued to another client is refused with an error.
        Err(OtherClient) => Err(OAuthError::invalid_request(
            "token was issued to another client",
        )),
    }
}
