//! Extension grants (RFC 6749 §4.5): any `grant_type` a server defines, as configuration.

use std::fmt;

use tokenwarden_core::{CacheKeyBuilder, TokenParams};

use crate::target::{ParamsInKey, Target, check_param_name};
use crate::{ClientConfig, Error, Form, Grant};

/// A grant a server defines itself (RFC 6749 §4.5): a `grant_type` of its choosing and the form
/// parameters it takes, besides the usual scope, resources and audience.
///
/// ```
/// use tokenwarden_oauth::{ClientConfig, ExtensionGrant};
///
/// let idp = ClientConfig::builder("https://idp.example.com/oauth2/token", "reports")
///     .client_secret("s3cr3t")
///     .build()?;
/// let grant = ExtensionGrant::new(idp, "urn:example:grant-type:tenant")
///     .param("tenant", "acme")
///     .scope("reports.read");
/// # let _ = grant;
/// # Ok::<(), tokenwarden_oauth::Error>(())
/// ```
///
/// Parameters are part of the cache key, as SHA-256 digests (a parameter may be a secret, such
/// as an assertion): two grants that differ in a parameter never share a token. `Debug` shows
/// parameter names, not values.
///
/// A grant that exchanges the caller's token names the form parameter it goes in with
/// [`subject_token_param`](Self::subject_token_param); each request then needs a
/// [`SubjectToken`](tokenwarden_core::SubjectToken), as with [`TokenExchange`](crate::TokenExchange).
/// Seed 001's `grant_type=delegation&token=…&scope=api2` is configuration:
///
/// ```
/// use tokenwarden_oauth::{ClientConfig, ExtensionGrant};
///
/// # let idp = ClientConfig::builder("https://idp.example.com/oauth2/token", "api1")
/// #     .client_secret("s3cr3t")
/// #     .build()?;
/// let delegation = ExtensionGrant::new(idp, "delegation")
///     .subject_token_param("token")
///     .scope("api2");
/// # let _ = delegation;
/// # Ok::<(), tokenwarden_oauth::Error>(())
/// ```
#[derive(Clone)]
pub struct ExtensionGrant {
    client: ClientConfig,
    grant_type: String,
    target: Target,
    subject_param: Option<String>,
}

impl ExtensionGrant {
    /// The grant `grant_type` for `client`. RFC 6749 asks for an absolute URI
    /// (`urn:ietf:params:oauth:grant-type:jwt-bearer`); plain names that servers use
    /// (`delegation`) are accepted too.
    pub fn new(client: ClientConfig, grant_type: &str) -> Self {
        ExtensionGrant {
            client,
            grant_type: grant_type.to_owned(),
            target: Target::default(),
            subject_param: None,
        }
    }

    /// Sends each request's subject token ([`TokenParams::subject_token`]) as the form
    /// parameter `name` (`token` for seed 001's `delegation` grant): the grant then needs one.
    pub fn subject_token_param(mut self, name: &str) -> Self {
        self.subject_param = Some(name.to_owned());
        self
    }

    /// Adds a form parameter sent with every request; a second call with the same name replaces
    /// it. A [`TokenParams::param`] of the same name replaces it for one request.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.target.set_param(name, value);
        self
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

    /// Sets the `audience` parameter.
    pub fn audience(mut self, audience: &str) -> Self {
        self.target.audiences = vec![audience.to_owned()];
        self
    }
}

impl fmt::Debug for ExtensionGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.target.params.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ExtensionGrant")
            .field("client", &self.client)
            .field("grant_type", &self.grant_type)
            .field("scopes", &self.target.scopes)
            .field("resources", &self.target.resources)
            .field("audiences", &self.target.audiences)
            .field("params", &names)
            .field("subject_token_param", &self.subject_param)
            .finish()
    }
}

impl Grant for ExtensionGrant {
    fn client(&self) -> &ClientConfig {
        &self.client
    }

    fn grant_type(&self) -> &str {
        &self.grant_type
    }

    fn validate(&self) -> Result<(), Error> {
        // A form value can hold anything, but a grant type with spaces or control characters
        // is a configuration mistake, not a name a server chose.
        let valid = !self.grant_type.is_empty()
            && self.grant_type.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !valid {
            return Err(Error::config(format!(
                "grant type {:?} is not a valid grant type name",
                self.grant_type
            )));
        }
        match &self.subject_param {
            Some(name) => {
                if self.target.params.iter().any(|(n, _)| n == name) {
                    return Err(Error::config(format!(
                        "parameter {name:?} is both the subject token and a fixed parameter"
                    )));
                }
                // The subject's parameter may not be one the library sets either.
                check_param_name(name, &[])?;
                self.target.validate(&[name.as_str()])
            }
            None => self.target.validate(&[]),
        }
    }

    fn needs_subject_token(&self) -> bool {
        self.subject_param.is_some()
    }

    fn form(&self, params: &TokenParams, form: &mut Form) -> Result<(), Error> {
        let Some(name) = &self.subject_param else {
            return self.target.write(params, &[], form);
        };
        let subject = params.subject().ok_or_else(|| Error::MissingSubjectToken {
            grant_type: self.grant_type.clone(),
        })?;
        form.push(name, subject.expose_secret());
        self.target.write(params, &[name.as_str()], form)
    }

    /// The grant type, scope, resources and audience, and every parameter as a digest (the
    /// subject token is added by the manager).
    fn cache_key(&self, params: &TokenParams, key: CacheKeyBuilder) -> CacheKeyBuilder {
        let mut key = key.part("grant_type", &self.grant_type);
        if let Some(name) = &self.subject_param {
            key = key.part("subject_token_param", name);
        }
        self.target.cache_key(params, key, ParamsInKey::Hashed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokenwarden_core::CacheKey;

    fn idp() -> ClientConfig {
        ClientConfig::builder("https://auth.example.com/token", "app")
            .client_secret("pw")
            .build()
            .unwrap()
    }

    #[test]
    fn parameters_go_in_the_form_and_the_key() {
        let grant = ExtensionGrant::new(idp(), "urn:example:test")
            .param("input", "first-value")
            .scope("s");
        grant.validate().unwrap();
        let mut form = Form::default();
        grant.form(&TokenParams::new(), &mut form).unwrap();
        assert_eq!(form.pairs(), [("scope", "s"), ("input", "first-value")]);
        let key = |g: &ExtensionGrant| {
            g.cache_key(&TokenParams::new(), CacheKey::builder("c"))
                .build()
        };
        let other = ExtensionGrant::new(idp(), "urn:example:test")
            .param("input", "second-value")
            .scope("s");
        assert_ne!(key(&grant), key(&other));
        let text = key(&grant);
        assert!(text.as_str().contains("x.grant_type=urn%3Aexample%3Atest"));
        assert!(
            !text.as_str().contains("first-value"),
            "values are hashed: {text}"
        );
        assert!(
            !format!("{grant:?}").contains("first-value"),
            "and not printed"
        );
    }

    #[test]
    fn a_subject_token_goes_in_its_parameter() {
        use tokenwarden_core::SubjectToken;
        let grant = ExtensionGrant::new(idp(), "delegation")
            .subject_token_param("token")
            .scope("api2");
        grant.validate().unwrap();
        assert!(grant.needs_subject_token());
        let params =
            TokenParams::new().subject_token(SubjectToken::access_token("user-token").unwrap());
        let mut form = Form::default();
        grant.form(&params, &mut form).unwrap();
        assert_eq!(form.pairs(), [("token", "user-token"), ("scope", "api2")]);
        let err = grant
            .form(&TokenParams::new(), &mut Form::default())
            .unwrap_err();
        assert!(matches!(err, Error::MissingSubjectToken { .. }), "{err}");
        // A request cannot set the subject's parameter another way.
        assert!(
            grant
                .form(
                    &params.clone().param("token", "other"),
                    &mut Form::default()
                )
                .is_err()
        );
        for bad in [
            ExtensionGrant::new(idp(), "delegation")
                .subject_token_param("token")
                .param("token", "fixed"),
            ExtensionGrant::new(idp(), "delegation").subject_token_param("client_secret"),
            ExtensionGrant::new(idp(), "delegation").subject_token_param(""),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(!ExtensionGrant::new(idp(), "delegation").needs_subject_token());
    }

    #[test]
    fn a_grant_type_that_is_no_name_is_refused() {
        for bad in ["", "two words", "line\nbreak"] {
            assert!(
                ExtensionGrant::new(idp(), bad).validate().is_err(),
                "{bad:?}"
            );
        }
        assert!(ExtensionGrant::new(idp(), "delegation").validate().is_ok());
    }
}
