//! Token revocation (RFC 7009): telling the authorization server a token is no longer needed.

use tokenwarden_core::Secret;

use crate::client::send;
use crate::request::form_post;
use crate::response::parse_token_response_error;
use crate::{ClientConfig, Error, Form, OAuthClient};

/// What kind of token is revoked: the `token_type_hint` of RFC 7009 §2.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenTypeHint {
    /// A refresh token: servers revoke its access tokens with it.
    RefreshToken,
    /// An access token.
    AccessToken,
}

impl TokenTypeHint {
    /// The hint as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenTypeHint::RefreshToken => "refresh_token",
            TokenTypeHint::AccessToken => "access_token",
        }
    }
}

impl OAuthClient {
    /// Revokes `token` at the client's revocation endpoint (configured, or from the issuer's
    /// metadata), authenticated as `client`. A token the server does not know counts as
    /// revoked (RFC 7009 §2.2 answers 200); an OAuth error or another status is an error.
    pub async fn revoke(
        &self,
        client: &ClientConfig,
        token: &Secret,
        hint: TokenTypeHint,
    ) -> Result<(), Error> {
        let endpoint = self.endpoints(client).await?.revocation.ok_or_else(|| {
            Error::NoRevocationEndpoint {
                client_id: client.client_id().to_owned(),
            }
        })?;
        let mut form = Form::default();
        form.push("token", token.expose_secret());
        form.push("token_type_hint", hint.as_str());
        let request = form_post(client, &endpoint, form)?;
        tracing::debug!(client_id = client.client_id(), revocation_endpoint = %endpoint, hint = hint.as_str(), "revoking a token");
        let exchange = send(
            self.transport().clone(),
            request,
            &endpoint,
            client.max_response_bytes(),
        );
        let (status, headers, body) = match tokio::time::timeout(client.timeout(), exchange).await {
            Ok(result) => result?,
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    endpoint: endpoint.to_string(),
                    after: client.timeout(),
                });
            }
        };
        if status.is_success() {
            return Ok(());
        }
        Err(parse_token_response_error(
            &endpoint, status, &headers, &body,
        ))
    }
}
