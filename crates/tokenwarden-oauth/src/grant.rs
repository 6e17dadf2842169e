//! The grant seam: what differs between grants (the `grant_type`, its form parameters, what
//! tells its tokens apart in a cache, its checks of the response) behind one trait, so one
//! function ([`OAuthClient::request_token`](crate::OAuthClient::request_token)) sends a token
//! request for any of them.

use std::fmt;

use tokenwarden_core::{CacheKeyBuilder, TokenParams};

use crate::{ClientConfig, Error, TokenResponse};

/// A way to obtain an access token from a token endpoint (RFC 6749 §4), with its inputs.
///
/// The crate implements [`ClientCredentials`](crate::ClientCredentials),
/// [`TokenExchange`](crate::TokenExchange), [`ExtensionGrant`](crate::ExtensionGrant) and
/// [`RefreshTokenGrant`](crate::RefreshTokenGrant); implement it for a grant of your own. Client
/// authentication, the HTTP exchange, response parsing and its general checks are the same for
/// every grant and are done by [`OAuthClient::request_token`](crate::OAuthClient::request_token).
///
/// ```
/// use tokenwarden_core::{CacheKeyBuilder, TokenParams};
/// use tokenwarden_oauth::{ClientConfig, Error, Form, Grant};
///
/// /// RFC 7523 §2.1: a JWT bearer assertion signed elsewhere.
/// #[derive(Debug)]
/// struct JwtBearer {
///     client: ClientConfig,
///     assertion: String,
/// }
///
/// impl Grant for JwtBearer {
///     fn client(&self) -> &ClientConfig {
///         &self.client
///     }
///     fn grant_type(&self) -> &str {
///         "urn:ietf:params:oauth:grant-type:jwt-bearer"
///     }
///     fn form(&self, _params: &TokenParams, form: &mut Form) -> Result<(), Error> {
///         form.push("assertion", &self.assertion);
///         Ok(())
///     }
///     fn cache_key(&self, _params: &TokenParams, key: CacheKeyBuilder) -> CacheKeyBuilder {
///         key.part("grant_type", self.grant_type()).hashed_part("assertion", &self.assertion)
///     }
/// }
/// ```
pub trait Grant: fmt::Debug + Send + Sync + 'static {
    /// The client the requests are sent as: token endpoint, client id and authentication.
    fn client(&self) -> &ClientConfig;

    /// The `grant_type` form parameter.
    fn grant_type(&self) -> &str;

    /// Checks the grant's own configuration; called once when it is registered, so a mistake
    /// is an error at start-up rather than at the first request. The default accepts anything.
    fn validate(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Whether each request must carry a [`SubjectToken`](tokenwarden_core::SubjectToken)
    /// ([`TokenParams::subject_token`]): the grant exchanges the caller's token for one of its
    /// own. A manager then refuses a request without one before anything is sent, keys its
    /// tokens by the subject (as a SHA-256 digest) and never keeps one past the subject's
    /// expiry. The default is `false`.
    fn needs_subject_token(&self) -> bool {
        false
    }

    /// Adds the grant's form parameters (everything but `grant_type` and client
    /// authentication) for a request with these per-request parameters.
    fn form(&self, params: &TokenParams, form: &mut Form) -> Result<(), Error>;

    /// Adds to `key` everything that makes this grant's token for `params` differ from another
    /// one of the same client (scopes, resources, audience, parameters; a secret input only as
    /// [`CacheKeyBuilder::hashed_part`]). The client name, client id and token endpoint are
    /// already in `key`; so is the subject token, when a manager keys a grant that
    /// [needs one](Self::needs_subject_token).
    fn cache_key(&self, params: &TokenParams, key: CacheKeyBuilder) -> CacheKeyBuilder;

    /// Checks (and may adjust) a successful response before it is returned; the default returns
    /// it as it is.
    fn check_response(&self, response: TokenResponse) -> Result<TokenResponse, Error> {
        Ok(response)
    }
}

/// The form parameters of one token request, in the order they are sent.
///
/// `Debug` shows parameter names only: values may be secrets (an assertion, a subject token).
#[derive(Clone, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Appends a parameter; a name may repeat (RFC 8707's `resource`).
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_owned(), value.to_owned()));
    }

    /// The first value of `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn encode(&self) -> String {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.0 {
            serializer.append_pair(name, value);
        }
        serializer.finish()
    }

    #[cfg(test)]
    pub(crate) fn pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }
}

impl fmt::Debug for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}
