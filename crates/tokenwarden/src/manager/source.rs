//! What a slot fetches with: a grant and its inputs. The rest of the manager (slots,
//! single-flight, renewal, the shared tier) never names a grant; it asks a source for a cache
//! key and for a token.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokenwarden_core::{CacheKey, TokenParams};
use tokenwarden_oauth::{Grant, OAuthClient, TokenResponse};

/// A client's way to its tokens: one [`Grant`] (client credentials, an extension grant, a grant
/// of the user's own) with the per-request [`TokenParams`] as its inputs.
#[derive(Clone)]
pub(crate) struct Source {
    grant: Arc<dyn Grant>,
}

impl Source {
    /// A source for `grant`, after checking its configuration.
    pub(crate) fn grant(grant: impl Grant) -> Result<Source, tokenwarden_oauth::Error> {
        grant.validate()?;
        Ok(Source {
            grant: Arc::new(grant),
        })
    }

    /// The key of the token `params` ask for: the client's name, the client id and token
    /// endpoint (so two deployments that picked one name for different clients never share a
    /// token), and the grant's own parts.
    pub(crate) fn cache_key(&self, namespace: &str, name: &str, params: &TokenParams) -> CacheKey {
        let client = self.grant.client();
        let key = CacheKey::builder(name)
            .namespace(namespace)
            .part("client_id", client.client_id())
            .part("token_endpoint", &client.token_endpoint().to_string());
        self.grant.cache_key(params, key).build()
    }

    /// The grant's `grant_type`, for errors and logs.
    pub(crate) fn grant_type(&self) -> &str {
        self.grant.grant_type()
    }

    /// The token endpoint, for errors and logs.
    pub(crate) fn endpoint(&self) -> &http::Uri {
        self.grant.client().token_endpoint()
    }

    /// The lifetime of a token whose response does not say.
    pub(crate) fn default_lifetime(&self) -> Duration {
        self.grant.client().default_lifetime()
    }

    /// One token request.
    pub(crate) async fn request(
        &self,
        oauth: &OAuthClient,
        params: &TokenParams,
    ) -> Result<TokenResponse, tokenwarden_oauth::Error> {
        oauth.request_token(&*self.grant, params).await
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.grant, f)
    }
}
