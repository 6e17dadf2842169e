//! The refresh-token grant (RFC 6749 §6): a signed-in user's new access token for their refresh
//! token.

use std::fmt;

use tokenwarden_core::{CacheKeyBuilder, Secret, TokenParams};

use crate::target::check_scope;
use crate::{ClientConfig, Error, Form, Grant};

/// A client that acts for signed-in users: it refreshes their access tokens with their refresh
/// tokens (RFC 6749 §6), asking for its configured scope (none: what the user consented to).
///
/// Register it with a token manager as a user client; the manager keeps each user's tokens in
/// its user token store and sends [`RefreshTokenGrant`]s made by [`grant`](Self::grant).
///
/// ```
/// use tokenwarden_oauth::{ClientConfig, RefreshTokens};
///
/// let web = ClientConfig::from_issuer("https://idp.example.com", "web-app")
///     .client_secret("s3cr3t")
///     .build()?;
/// let users = RefreshTokens::new(web).scope("openid invoices.read");
/// # let _ = users;
/// # Ok::<(), tokenwarden_oauth::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RefreshTokens {
    client: ClientConfig,
    scopes: Vec<String>,
}

impl RefreshTokens {
    /// Refreshes as `client`.
    pub fn new(client: ClientConfig) -> Self {
        RefreshTokens {
            client,
            scopes: Vec::new(),
        }
    }

    /// Adds scopes to ask for on refresh; `scope` may hold several, separated by spaces. A
    /// refresh may narrow the scope the user granted, never widen it (RFC 6749 §6).
    pub fn scope(mut self, scope: &str) -> Self {
        self.scopes
            .extend(scope.split_ascii_whitespace().map(str::to_owned));
        self
    }

    /// The client.
    pub fn client(&self) -> &ClientConfig {
        &self.client
    }

    /// Checks the configured scopes.
    pub fn validate(&self) -> Result<(), Error> {
        self.scopes.iter().try_for_each(|s| check_scope(s))
    }

    /// The grant that exchanges `refresh_token` for new tokens.
    pub fn grant(&self, refresh_token: Secret) -> RefreshTokenGrant {
        RefreshTokenGrant {
            client: self.client.clone(),
            scopes: self.scopes.clone(),
            refresh_token,
        }
    }
}

/// One refresh: `grant_type=refresh_token` with a user's refresh token. The response keeps its
/// refresh token, if the server rotated it (RFC 6749 §6): the caller stores it in place of the
/// old one.
#[derive(Clone)]
pub struct RefreshTokenGrant {
    client: ClientConfig,
    scopes: Vec<String>,
    refresh_token: Secret,
}

impl fmt::Debug for RefreshTokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrant")
            .field("client", &self.client)
            .field("scopes", &self.scopes)
            .field("refresh_token", &self.refresh_token)
            .finish()
    }
}

impl Grant for RefreshTokenGrant {
    fn client(&self) -> &ClientConfig {
        &self.client
    }

    fn grant_type(&self) -> &str {
        "refresh_token"
    }

    fn validate(&self) -> Result<(), Error> {
        self.scopes.iter().try_for_each(|s| check_scope(s))
    }

    /// The refresh token, and the scope: the request's override, else the configured one.
    fn form(&self, params: &TokenParams, form: &mut Form) -> Result<(), Error> {
        form.push("refresh_token", self.refresh_token.expose_secret());
        let scopes = match params.scopes() {
            Some(overridden) => {
                overridden.iter().try_for_each(|s| check_scope(s))?;
                overridden
            }
            None => &self.scopes,
        };
        if !scopes.is_empty() {
            form.push("scope", &scopes.join(" "));
        }
        Ok(())
    }

    fn cache_key(&self, params: &TokenParams, key: CacheKeyBuilder) -> CacheKeyBuilder {
        key.scopes(params.scopes().unwrap_or(&self.scopes))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_sends_the_token_and_the_scope_and_never_prints_the_token() {
        let client = ClientConfig::builder("https://idp.example.com/token", "web")
            .client_secret("s")
            .build()
            .unwrap();
        let users = RefreshTokens::new(client).scope("openid api");
        users.validate().unwrap();
        let grant = users.grant(Secret::new("rt-123"));
        let mut form = Form::default();
        grant.form(&TokenParams::new(), &mut form).unwrap();
        assert_eq!(
            form.pairs(),
            [("refresh_token", "rt-123"), ("scope", "openid api")]
        );
        let mut narrow = Form::default();
        grant
            .form(&TokenParams::new().scope("api"), &mut narrow)
            .unwrap();
        assert_eq!(narrow.get("scope"), Some("api"));
        assert!(!format!("{grant:?}").contains("rt-123"));
        assert!(
            RefreshTokens::new(grant.client().clone())
                .scope("bad\"")
                .validate()
                .is_err()
        );
    }
}
