//! The client-credentials grant (RFC 6749 §4.4): a service acting as itself.

use tokenwarden_core::{CacheKeyBuilder, TokenParams};

use crate::target::{ParamsInKey, Target};
use crate::{ClientConfig, Error, Form, Grant, TokenResponse};

/// The client-credentials grant: tokens for the client itself, with a default scope,
/// resources (RFC 8707), audience and extra form parameters, each replaceable per request by
/// [`TokenParams`].
///
/// ```
/// use tokenwarden_oauth::{ClientConfig, ClientCredentials};
///
/// let idp = ClientConfig::builder("https://idp.example.com/oauth2/token", "billing-svc")
///     .client_secret("s3cr3t")
///     .build()?;
/// let billing = ClientCredentials::new(idp)
///     .scope("invoices.read invoices.write")
///     .resource("https://billing.example.com/");
/// # let _ = billing;
/// # Ok::<(), tokenwarden_oauth::Error>(())
/// ```
///
/// A refresh token in a response is dropped (RFC 6749 §4.4.3: this grant must not issue one).
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    client: ClientConfig,
    target: Target,
}

impl ClientCredentials {
    /// The grant for `client`, asking for the server's default scope until told otherwise.
    pub fn new(client: ClientConfig) -> Self {
        ClientCredentials {
            client,
            target: Target::default(),
        }
    }

    /// Adds scopes; `scope` may hold several, separated by spaces.
    pub fn scope(mut self, scope: &str) -> Self {
        self.target.add_scope(scope);
        self
    }

    /// Adds a resource indicator (RFC 8707), an absolute URI; call again for more.
    pub fn resource(mut self, resource: &str) -> Self {
        self.target.resources.push(resource.to_owned());
        self
    }

    /// Sets the `audience` parameter some servers use instead of resource indicators.
    pub fn audience(mut self, audience: &str) -> Self {
        self.target.audiences = vec![audience.to_owned()];
        self
    }

    /// Adds a form parameter sent with every request; a second call with the same name replaces
    /// it. Names the library sets itself (`grant_type`, `client_id`, `client_secret`, `scope`,
    /// `resource`, `audience`, `client_assertion`, `client_assertion_type`) are refused by
    /// [`validate`](Grant::validate): use the dedicated methods.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.target.set_param(name, value);
        self
    }

    /// The scopes asked for by default, one per item.
    pub fn scopes(&self) -> &[String] {
        &self.target.scopes
    }

    /// The resource indicators asked for by default.
    pub fn resources(&self) -> &[String] {
        &self.target.resources
    }

    /// The extra form parameters sent with every request.
    pub fn params(&self) -> &[(String, String)] {
        &self.target.params
    }
}

impl Grant for ClientCredentials {
    fn client(&self) -> &ClientConfig {
        &self.client
    }

    fn grant_type(&self) -> &str {
        "client_credentials"
    }

    fn validate(&self) -> Result<(), Error> {
        self.target.validate(&[])
    }

    fn form(&self, params: &TokenParams, form: &mut Form) -> Result<(), Error> {
        self.target.write(params, &[], form)
    }

    /// Scopes, resources, audience and parameters; not the grant type, so the key text of
    /// client-credentials tokens stays what earlier versions wrote.
    fn cache_key(&self, params: &TokenParams, key: CacheKeyBuilder) -> CacheKeyBuilder {
        self.target.cache_key(params, key, ParamsInKey::Plain)
    }

    fn check_response(&self, response: TokenResponse) -> Result<TokenResponse, Error> {
        if response.refresh_token().is_some() {
            tracing::debug!(
                client_id = self.client.client_id(),
                "dropped the refresh token of a client-credentials response (RFC 6749 section 4.4.3)"
            );
        }
        Ok(response.without_refresh_token())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn idp() -> ClientConfig {
        ClientConfig::builder("https://auth.example.com/token", "app")
            .client_secret("pw")
            .build()
            .unwrap()
    }

    #[test]
    fn the_form_has_the_configured_target() {
        let grant = ClientCredentials::new(idp())
            .scope("read  write")
            .scope("admin")
            .resource("urn:example:ledger")
            .audience("ledger")
            .param("k", "1")
            .param("k", "2");
        grant.validate().unwrap();
        let mut form = Form::default();
        grant.form(&TokenParams::new(), &mut form).unwrap();
        assert_eq!(
            form.pairs(),
            [
                ("scope", "read write admin"),
                ("resource", "urn:example:ledger"),
                ("audience", "ledger"),
                ("k", "2"),
            ]
        );
        assert_eq!(grant.scopes(), ["read", "write", "admin"]);
        assert_eq!(grant.params(), [("k".to_owned(), "2".to_owned())]);
    }

    #[test]
    fn a_minimal_form_is_empty_and_reserved_names_are_refused() {
        let mut form = Form::default();
        ClientCredentials::new(idp())
            .form(&TokenParams::new(), &mut form)
            .unwrap();
        assert!(form.pairs().is_empty());
        let err = ClientCredentials::new(idp())
            .param("client_id", "x")
            .validate()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
    }
}
