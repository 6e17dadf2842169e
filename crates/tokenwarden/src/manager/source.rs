//! What a slot fetches with: a grant and its inputs. The rest of the manager (slots,
//! single-flight, renewal, the shared tier) never names a grant; it asks a source for a cache
//! key and for a token request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokenwarden_core::{CacheKey, CacheKeyBuilder, Secret, TokenParams, UserKey};
use tokenwarden_oauth::{ClientConfig, Grant, OAuthClient, RefreshTokens, TokenResponse};

/// A client's way to its tokens.
#[derive(Clone)]
pub(crate) enum Source {
    /// Tokens of the client itself: one [`Grant`] (client credentials, an extension grant, a
    /// grant of the user's own) with the per-request [`TokenParams`] as its inputs.
    Grant(Arc<dyn Grant>),
    /// Tokens of signed-in users: kept in the user token store, refreshed with each user's
    /// refresh token.
    Users(RefreshTokens),
}

impl Source {
    /// A source for `grant`, after checking its configuration.
    pub(crate) fn grant(grant: impl Grant) -> Result<Source, tokenwarden_oauth::Error> {
        grant.validate()?;
        Ok(Source::Grant(Arc::new(grant)))
    }

    /// A source of users' tokens, after checking its configuration.
    pub(crate) fn users(refresh: RefreshTokens) -> Result<Source, tokenwarden_oauth::Error> {
        refresh.validate()?;
        Ok(Source::Users(refresh))
    }

    fn client(&self) -> &ClientConfig {
        match self {
            Source::Grant(grant) => grant.client(),
            Source::Users(refresh) => refresh.client(),
        }
    }

    /// Whether each token request exchanges a subject token, which then keys the token.
    pub(crate) fn needs_subject_token(&self) -> bool {
        match self {
            Source::Grant(grant) => grant.needs_subject_token(),
            Source::Users(_) => false,
        }
    }

    /// Whether the tokens are users' rather than the client's own.
    pub(crate) fn is_users(&self) -> bool {
        matches!(self, Source::Users(_))
    }

    /// The start of every key of this client: its name, the client id and the server (so two
    /// deployments that picked one name for different clients never share a token).
    fn key(&self, namespace: &str, name: &str) -> CacheKeyBuilder {
        let client = self.client();
        let key = CacheKey::builder(name)
            .namespace(namespace)
            .part("client_id", client.client_id());
        match client.token_endpoint() {
            Some(endpoint) => key.part("token_endpoint", &endpoint.to_string()),
            None => key.part("issuer", &client.server().to_string()),
        }
    }

    /// The key of the client's token that `params` ask for. The subject token of a grant
    /// that exchanges one is in it as its SHA-256 digest (whatever the grant adds itself), so
    /// two subjects never share a token and the key never holds one.
    pub(crate) fn cache_key(&self, namespace: &str, name: &str, params: &TokenParams) -> CacheKey {
        let mut key = self.key(namespace, name);
        match self {
            Source::Grant(grant) => {
                if let Some(subject) = params.subject().filter(|_| grant.needs_subject_token()) {
                    key = key
                        .part("subject_token_type", subject.token_type())
                        .hashed_part("subject_token", subject.expose_secret());
                }
                grant.cache_key(params, key).build()
            }
            Source::Users(_) => key.build(),
        }
    }

    /// The key of `user`'s tokens: where the user token store keeps them and the slot that
    /// holds the access token (the user key only as a digest).
    pub(crate) fn user_key(&self, namespace: &str, name: &str, user: &UserKey) -> CacheKey {
        self.key(namespace, name)
            .hashed_part("user", user.as_str())
            .build()
    }

    /// The grant type, for errors and logs.
    pub(crate) fn grant_type(&self) -> &str {
        match self {
            Source::Grant(grant) => grant.grant_type(),
            Source::Users(_) => "refresh_token",
        }
    }

    /// The token endpoint or the issuer, for errors and logs.
    pub(crate) fn endpoint(&self) -> &Uri {
        self.client().server()
    }

    /// The client, for revocation.
    pub(crate) fn config(&self) -> &ClientConfig {
        self.client()
    }

    /// The lifetime of a token whose response does not say.
    pub(crate) fn default_lifetime(&self) -> Duration {
        self.client().default_lifetime()
    }

    /// One token request: the client's grant, or a refresh with `refresh_token`.
    pub(crate) async fn request(
        &self,
        oauth: &OAuthClient,
        params: &TokenParams,
        refresh_token: Option<&Secret>,
    ) -> Result<TokenResponse, tokenwarden_oauth::Error> {
        match (self, refresh_token) {
            (Source::Grant(grant), _) => oauth.request_token(&**grant, params).await,
            (Source::Users(refresh), Some(token)) => {
                oauth
                    .request_token(&refresh.grant(token.clone()), params)
                    .await
            }
            (Source::Users(_), None) => Err(tokenwarden_oauth::Error::Config(
                "a user's tokens are refreshed with their refresh token".into(),
            )),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Grant(grant) => fmt::Debug::fmt(grant, f),
            Source::Users(refresh) => fmt::Debug::fmt(refresh, f),
        }
    }
}
