//! Token exchange (RFC 8693 §2) and the `delegation` extension grant: a middle tier trades the
//! token its caller sent (the *subject token*) for a token of its own that acts for the same
//! subject. Both grants validate the presented tokens and issue the new one here; the token
//! endpoint authenticates the client and dispatches.

use http::{Response, StatusCode};
use serde_json::json;

use crate::body::{self, ResponseBody};
use crate::client_auth::FormRequest;
use crate::jwt;
use crate::oauth_error::OAuthError;
use crate::state::State;
use crate::tokens::{Actor, Owner, TokenType, Unusable};

/// The `grant_type` of token exchange (RFC 8693 §2.1).
pub(crate) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The `grant_type` of the delegation extension grant, when the server serves it.
pub(crate) const DELEGATION: &str = "delegation";

/// Token type identifiers (RFC 8693 §3) this server understands.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Token exchange parameters that may appear at most once (`audience` and `resource` repeat).
const EXCHANGE_SINGLE_VALUED: [&str; 5] = [
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
];

/// Whether a request with this `grant_type` counts as an exchange for
/// `TestServer::exchange_requests`, whether or not the server serves the grant.
pub(crate) fn is_exchange_grant_type(grant_type: &str) -> bool {
    grant_type == TOKEN_EXCHANGE || grant_type == DELEGATION
}

/// The types a subject or actor token may be declared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PresentedTokenType {
    /// `...:access_token`: an access token this server issued, opaque or JWT.
    AccessToken,
    /// `...:jwt`: an access token this server issued as a JWT.
    Jwt,
}

impl PresentedTokenType {
    fn parse(uri: &str) -> Option<Self> {
        match uri {
            ACCESS_TOKEN_TYPE => Some(Self::AccessToken),
            JWT_TOKEN_TYPE => Some(Self::Jwt),
            _ => None,
        }
    }
}

/// The token types a client may ask a token exchange for (`requested_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestedTokenType {
    /// `...:access_token`, the default: an opaque access token (`tk_…`).
    AccessToken,
    /// `...:jwt`: an access token as a signed JWT.
    Jwt,
    /// `...:id_token`: an opaque token (`it_…`) with `token_type` `N_A` (RFC 8693 §2.2.1),
    /// accepted neither by the API nor as a subject token.
    IdToken,
}

impl RequestedTokenType {
    fn parse(uri: &str) -> Option<Self> {
        match uri {
            ACCESS_TOKEN_TYPE => Some(Self::AccessToken),
            JWT_TOKEN_TYPE => Some(Self::Jwt),
            ID_TOKEN_TYPE => Some(Self::IdToken),
            _ => None,
        }
    }

    /// The token type identifier, as `issued_token_type`.
    fn uri(self) -> &'static str {
        match self {
            Self::AccessToken => ACCESS_TOKEN_TYPE,
            Self::Jwt => JWT_TOKEN_TYPE,
            Self::IdToken => ID_TOKEN_TYPE,
        }
    }

    /// The `token_type` of the response: `N_A` for what is not an access token.
    fn token_type(self) -> TokenType {
        match self {
            Self::AccessToken | Self::Jwt => TokenType::Bearer,
            Self::IdToken => TokenType::NotApplicable,
        }
    }
}

/// The token exchange grant (RFC 8693 §2.1) for the authenticated `client_id`. Parameters are
/// judged before tokens, so a malformed request is `invalid_request` (or `invalid_target`)
/// whatever its tokens; then the subject token, then the actor token, are `invalid_grant` if
/// they are not live access tokens of this server.
pub(crate) fn token_exchange(
    state: &State,
    client_id: &str,
    request: &FormRequest,
) -> Result<Response<ResponseBody>, OAuthError> {
    request.check_form(&EXCHANGE_SINGLE_VALUED)?;
    let subject_token = required(request, "subject_token")?;
    let subject_type = presented_type(request, "subject_token_type")?;
    let actor = match (
        request.non_empty_field("actor_token"),
        request.non_empty_field("actor_token_type"),
    ) {
        (None, None) => None,
        (Some(token), Some(_)) => Some((token, presented_type(request, "actor_token_type")?)),
        (Some(_), None) => {
            return Err(OAuthError::invalid_request(
                "parameter actor_token_type is required with actor_token",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "parameter actor_token_type must not be sent without actor_token",
            ));
        }
    };
    let requested = match request.non_empty_field("requested_token_type") {
        None => RequestedTokenType::AccessToken,
        Some(uri) => RequestedTokenType::parse(uri).ok_or_else(|| {
            OAuthError::invalid_request(format!("requested_token_type {uri} is not supported"))
        })?,
    };
    let resources: Vec<&str> = non_empty_fields(request, "resource").collect();
    if let Some(resource) = resources.iter().find(|resource| !is_absolute_uri(resource)) {
        return Err(OAuthError::bad_request(
            "invalid_target",
            format!("resource {resource} is not an absolute URI without a fragment"),
        ));
    }
    let audience = non_empty_fields(request, "audience")
        .chain(resources)
        .map(str::to_owned)
        .collect();

    let subject = presented_token(state, "subject_token", subject_token, subject_type)?;
    let actor = match actor {
        Some((token, token_type)) => {
            Some(presented_token(state, "actor_token", token, token_type)?)
        }
        None => None,
    };
    let scope = request.non_empty_field("scope");
    let owner = act_for(client_id, subject, actor, audience, scope);
    let granted_scope = owner.scope.clone();
    let (token, expires_in) = state.issue_exchanged(owner, requested);
    // A test may have asked for a wrong answer, to exercise the client's check of it.
    let issued_token_type = state
        .pop_misreported_token_type()
        .unwrap_or_else(|| requested.uri().to_owned());
    let mut response = json!({
        "access_token": token,
        "issued_token_type": issued_token_type,
        "token_type": requested.token_type().as_str(),
        "expires_in": expires_in,
    });
    // RFC 8693 §2.2.1: required unless identical to the requested scope, so always sent when
    // the token has one (the subject's, when none was requested).
    if let Some(scope) = granted_scope {
        response["scope"] = scope.into();
    }
    Ok(body::token_json(StatusCode::OK, &response))
}

/// The `delegation` extension grant for the authenticated `client_id`: the subject token is the
/// `token` form field, optionally with `scope`; the answer is a plain RFC 6749 §5.1 response
/// (no `issued_token_type`) with an opaque access token, as a token exchange would issue it.
pub(crate) fn delegation(
    state: &State,
    client_id: &str,
    request: &FormRequest,
) -> Result<Response<ResponseBody>, OAuthError> {
    request.check_form(&["token"])?;
    let token = required(request, "token")?;
    let subject = presented_token(state, "token", token, PresentedTokenType::AccessToken)?;
    let scope = request.non_empty_field("scope");
    let owner = act_for(client_id, subject, None, Vec::new(), scope);
    let granted_scope = owner.scope.clone();
    let (token, expires_in) = state.issue_exchanged(owner, RequestedTokenType::AccessToken);
    let mut response = json!({
        "access_token": token,
        "token_type": TokenType::Bearer.as_str(),
        "expires_in": expires_in,
    });
    if let Some(scope) = granted_scope {
        response["scope"] = scope.into();
    }
    Ok(body::token_json(StatusCode::OK, &response))
}

/// A required, non-empty form field.
fn required<'r>(request: &'r FormRequest, name: &str) -> Result<&'r str, OAuthError> {
    request
        .non_empty_field(name)
        .ok_or_else(|| OAuthError::invalid_request(format!("parameter {name} is missing")))
}

/// Every non-empty value of a repeatable form field, in request order.
fn non_empty_fields<'r>(
    request: &'r FormRequest,
    name: &'r str,
) -> impl Iterator<Item = &'r str> + 'r {
    request.fields(name).filter(|value| !value.is_empty())
}

/// The declared type of a subject or actor token: required, and one this server accepts.
fn presented_type(request: &FormRequest, name: &str) -> Result<PresentedTokenType, OAuthError> {
    let uri = required(request, name)?;
    PresentedTokenType::parse(uri)
        .ok_or_else(|| OAuthError::invalid_request(format!("{name} {uri} is not supported")))
}

/// Whose a presented subject or actor token is, if it is a live access token of this server of
/// the declared type; `invalid_grant` saying why not otherwise.
fn presented_token(
    state: &State,
    name: &str,
    token: &str,
    declared: PresentedTokenType,
) -> Result<Owner, OAuthError> {
    let owner = state.check_access_token(token).map_err(|unusable| {
        OAuthError::invalid_grant(match unusable {
            Unusable::Unknown => format!("{name} is unknown or revoked"),
            Unusable::Expired => format!("{name} is expired"),
            Unusable::NotAccessToken => format!("{name} is not an access token"),
        })
    })?;
    if declared == PresentedTokenType::Jwt && !jwt::is_jwt(token) {
        return Err(OAuthError::invalid_grant(format!(
            "{name} is not a JWT but was sent as one"
        )));
    }
    Ok(owner)
}

/// The owner of a token issued to `client_id` acting for `subject`: same subject and user, the
/// requested scope (the subject's when none is requested, never checked against it), the given
/// audience, and as actor the actor token's subject, or else the client itself, with the
/// subject's own actors nested inside (RFC 8693 §4.1).
fn act_for(
    client_id: &str,
    subject: Owner,
    actor: Option<Owner>,
    audience: Vec<String>,
    scope: Option<&str>,
) -> Owner {
    let actor_sub = actor.map_or_else(|| client_id.to_owned(), |actor| actor.sub);
    Owner {
        client_id: client_id.to_owned(),
        sub: subject.sub,
        user: subject.user,
        scope: scope.map(str::to_owned).or(subject.scope),
        audience,
        actor: Some(Actor {
            sub: actor_sub,
            prior: subject.actor.map(Box::new),
        }),
    }
}

/// Whether `value` is an absolute URI without a fragment, as RFC 8707 §2 asks of `resource`:
/// a scheme (a letter, then letters, digits, `+`, `-` or `.`), a colon, something after it,
/// and no `#`, space or control character.
fn is_absolute_uri(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else {
        return false;
    };
    let mut scheme = scheme.bytes();
    scheme
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && scheme.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && !value
            .bytes()
            .any(|byte| byte == b'#' || byte.is_ascii_whitespace() || byte.is_ascii_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_must_be_absolute_uris_without_a_fragment() {
        for valid in [
            "https://api2.example.com/",
            "https://api2.example.com/orders?x=1",
            "urn:example:api2",
            "my+app.v2-x:thing",
        ] {
            assert!(is_absolute_uri(valid), "{valid}");
        }
        for invalid in [
            "api2",
            "/orders",
            "https://api2.example.com/#top",
            "2http://x",
            ":x",
            "https:",
            "https://a b",
            "ht_tp://x",
        ] {
            assert!(!is_absolute_uri(invalid), "{invalid}");
        }
    }

    #[test]
    fn requested_token_types_round_trip_and_only_id_tokens_are_not_bearer() {
        for requested in [
            RequestedTokenType::AccessToken,
            RequestedTokenType::Jwt,
            RequestedTokenType::IdToken,
        ] {
            assert_eq!(RequestedTokenType::parse(requested.uri()), Some(requested));
        }
        assert_eq!(
            RequestedTokenType::IdToken.token_type(),
            TokenType::NotApplicable
        );
        assert_eq!(RequestedTokenType::Jwt.token_type(), TokenType::Bearer);
        assert_eq!(
            RequestedTokenType::parse("urn:ietf:params:oauth:token-type:refresh_token"),
            None
        );
        assert_eq!(PresentedTokenType::parse(ID_TOKEN_TYPE), None);
        assert!(is_exchange_grant_type(TOKEN_EXCHANGE));
        assert!(is_exchange_grant_type(DELEGATION));
        assert!(!is_exchange_grant_type("refresh_token"));
    }

    #[test]
    fn the_client_acts_for_the_subject_and_earlier_actors_nest() {
        let ann = Owner::user("web-app", "ann", Some("api1"));
        let first = act_for("api1", ann, None, vec!["api2".to_owned()], Some("api2"));
        assert_eq!(first.client_id, "api1");
        assert_eq!(first.sub, "ann");
        assert_eq!(first.user.as_deref(), Some("ann"));
        assert_eq!(first.scope.as_deref(), Some("api2"));
        assert_eq!(first.audience, ["api2"]);
        assert_eq!(
            first.actor.as_ref().map(Actor::to_json),
            Some(json!({ "sub": "api1" }))
        );

        // API 2 exchanges again, naming its own client token as the actor; no scope asked.
        let actor = Owner::client("api2-service", None);
        let second = act_for("api2", first, Some(actor), Vec::new(), None);
        assert_eq!(second.sub, "ann");
        assert_eq!(second.scope.as_deref(), Some("api2"));
        assert_eq!(
            second.actor.as_ref().map(Actor::to_json),
            Some(json!({ "sub": "api2-service", "act": { "sub": "api1" } }))
        );
    }
}
