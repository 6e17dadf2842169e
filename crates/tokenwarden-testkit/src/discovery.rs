//! `GET /.well-known/openid-configuration` and `GET /.well-known/oauth-authorization-server`:
//! authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0).

use http::header::{ALLOW, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::{self, ResponseBody};
use crate::exchange::{DELEGATION, TOKEN_EXCHANGE};
use crate::failure;
use crate::server::{Disconnect, INTROSPECTION_PATH, REVOCATION_PATH, TOKEN_PATH};
use crate::state::State;

/// The client authentication methods of the token, revocation and introspection endpoints.
const AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];
/// The grant types every server supports; `delegation` and extension grants are added after them.
const BUILT_IN_GRANT_TYPES: [&str; 4] = [
    "client_credentials",
    "password",
    "refresh_token",
    TOKEN_EXCHANGE,
];

/// One of the two well-known paths a [`TestServer`](crate::TestServer) serves its metadata at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiscoveryDocument {
    /// `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0), the path clients try
    /// first; [`TestServerBuilder::serve_openid_configuration`](crate::TestServerBuilder::serve_openid_configuration)
    /// can make it answer 404.
    OpenIdConfiguration,
    /// `/.well-known/oauth-authorization-server` (RFC 8414 §3), the fallback.
    OAuthAuthorizationServer,
}

impl DiscoveryDocument {
    /// Both documents, in the order clients usually try them.
    pub const ALL: [Self; 2] = [Self::OpenIdConfiguration, Self::OAuthAuthorizationServer];

    /// The document's path, e.g. `/.well-known/openid-configuration`.
    pub fn path(self) -> &'static str {
        match self {
            Self::OpenIdConfiguration => "/.well-known/openid-configuration",
            Self::OAuthAuthorizationServer => "/.well-known/oauth-authorization-server",
        }
    }

    /// The document a request path names, if any.
    pub(crate) fn from_path(path: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|document| document.path() == path)
    }

    /// The document's place in [`ALL`](Self::ALL), for per-document counters.
    pub(crate) fn index(self) -> usize {
        match self {
            Self::OpenIdConfiguration => 0,
            Self::OAuthAuthorizationServer => 1,
        }
    }
}

/// Answers one request for a discovery document.
pub(crate) async fn handle(
    state: &State,
    request: Request<Incoming>,
    document: DiscoveryDocument,
) -> Result<Response<ResponseBody>, Disconnect> {
    if request.method() != Method::GET {
        let mut response = body::plain(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(response);
    }
    state.count_discovery_request(document);
    tracing::debug!(path = document.path(), "discovery request");
    if let Some(failure) = state.pop_discovery_failure() {
        return failure::respond(failure).await;
    }
    if document == DiscoveryDocument::OpenIdConfiguration && !state.serves_openid_configuration() {
        return Ok(body::plain(StatusCode::NOT_FOUND));
    }
    Ok(body::json(StatusCode::OK, &metadata(state)))
}

/// The server's metadata (RFC 8414 §2), the same at both paths.
fn metadata(state: &State) -> Value {
    let base_url = state.base_url();
    let delegation = state.delegation_grant().then_some(DELEGATION);
    let grant_types: Vec<&str> = BUILT_IN_GRANT_TYPES
        .into_iter()
        .chain(delegation)
        .chain(
            state
                .extension_grant_types()
                .into_iter()
                // Served as the built-in grant when enabled, so listed once.
                .filter(|grant_type| delegation != Some(*grant_type)),
        )
        .collect();
    let mut metadata = json!({
        "issuer": state.issuer(),
        "token_endpoint": format!("{base_url}{TOKEN_PATH}"),
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint": format!("{base_url}{REVOCATION_PATH}"),
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "introspection_endpoint": format!("{base_url}{INTROSPECTION_PATH}"),
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "grant_types_supported": grant_types,
        "response_types_supported": ["code"],
    });
    if !state.scopes_supported().is_empty() {
        metadata["scopes_supported"] = state.scopes_supported().into();
    }
    metadata
}
