//! A client as its authorization server knows it: the token endpoint, the client id and how the
//! client authenticates. Every grant sends its requests as such a client.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokenwarden_core::Secret;

use crate::Error;
use crate::discovery::Discovery;

/// How the client authenticates to the token endpoint (RFC 6749 §2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-encoded client id and secret (the default).
    #[default]
    SecretBasic,
    /// `client_secret_post`: `client_id` and `client_secret` in the request body.
    SecretPost,
    /// A public client: only `client_id` in the request body.
    None,
}

impl ClientAuth {
    /// The method's name as registered for `token_endpoint_auth_method` (RFC 7591).
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic => "client_secret_basic",
            ClientAuth::SecretPost => "client_secret_post",
            ClientAuth::None => "none",
        }
    }
}

/// Where a client's requests go: endpoints configured, or learned from the issuer's metadata.
pub(crate) enum Endpoints {
    Fixed { token: Uri, revocation: Option<Uri> },
    Discovered(Arc<Discovery>),
}

/// A client registered at an authorization server: where its token endpoint is, its id, how it
/// authenticates, and the limits of one token request.
///
/// Every grant ([`ClientCredentials`](crate::ClientCredentials),
/// [`ExtensionGrant`](crate::ExtensionGrant), your own [`Grant`](crate::Grant)) sends its token
/// requests as such a client. Built with [`ClientConfig::builder`], which checks the
/// configuration once. Cloning is cheap (the definition is shared). `Debug` never shows the
/// client secret.
///
/// ```
/// use tokenwarden_oauth::{ClientConfig, ClientCredentials};
///
/// let idp = ClientConfig::builder("https://idp.example.com/oauth2/token", "billing-svc")
///     .client_secret("s3cr3t")
///     .build()?;
/// let billing = ClientCredentials::new(idp).scope("invoices.read");
/// # let _ = billing;
/// # Ok::<(), tokenwarden_oauth::Error>(())
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Endpoints,
    client_id: String,
    client_secret: Option<Secret>,
    auth: ClientAuth,
    default_lifetime: Duration,
    timeout: Duration,
    max_response_bytes: usize,
}

impl ClientConfig {
    /// The lifetime assumed when a response has no `expires_in`.
    pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
    /// The default limit for a whole token exchange.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The longest timeout [`ClientConfigBuilder::timeout`] accepts.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    /// The default limit for a response body.
    pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

    /// The default lifetime of discovered metadata.
    pub const DEFAULT_DISCOVERY_TTL: Duration = Duration::from_secs(3600);

    /// Starts the definition of a client of `token_endpoint`; the configuration is checked by
    /// [`ClientConfigBuilder::build`].
    pub fn builder(token_endpoint: &str, client_id: &str) -> ClientConfigBuilder {
        ClientConfigBuilder::new(Where::Endpoint(token_endpoint.to_owned()), client_id)
    }

    /// Starts the definition of a client of the authorization server `issuer`, whose endpoints
    /// are read from its metadata (RFC 8414, OpenID Connect Discovery): from
    /// `{issuer}/.well-known/openid-configuration`, else
    /// `/.well-known/oauth-authorization-server`, when they are first needed. The metadata is
    /// kept for [`discovery_ttl`](ClientConfigBuilder::discovery_ttl) and fetched again after a
    /// failure; its `issuer` must be `issuer`, and its endpoints https (unless loopback or
    /// [`allow_insecure_http`](ClientConfigBuilder::allow_insecure_http)).
    pub fn from_issuer(issuer: &str, client_id: &str) -> ClientConfigBuilder {
        ClientConfigBuilder::new(Where::Issuer(issuer.to_owned()), client_id)
    }

    /// The token endpoint, when it was configured rather than discovered.
    pub fn token_endpoint(&self) -> Option<&Uri> {
        match &self.inner.endpoints {
            Endpoints::Fixed { token, .. } => Some(token),
            Endpoints::Discovered(_) => None,
        }
    }

    /// The authorization server's issuer, when the endpoints are discovered.
    pub fn issuer(&self) -> Option<&Uri> {
        match &self.inner.endpoints {
            Endpoints::Fixed { .. } => None,
            Endpoints::Discovered(discovery) => Some(discovery.issuer()),
        }
    }

    /// What identifies the server: the token endpoint, or the issuer (for cache keys and logs).
    pub fn server(&self) -> &Uri {
        match &self.inner.endpoints {
            Endpoints::Fixed { token, .. } => token,
            Endpoints::Discovered(discovery) => discovery.issuer(),
        }
    }

    pub(crate) fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The client secret, if the client has one (redacted when printed).
    pub fn client_secret(&self) -> Option<&Secret> {
        self.inner.client_secret.as_ref()
    }

    /// How the client authenticates.
    pub fn auth(&self) -> &ClientAuth {
        &self.inner.auth
    }

    /// The lifetime to assume when a response has no `expires_in` (default 3600 s).
    pub fn default_lifetime(&self) -> Duration {
        self.inner.default_lifetime
    }

    /// The limit for one token request, response body included (default 10 s).
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The limit for a response body, in bytes (default 64 KiB).
    pub fn max_response_bytes(&self) -> usize {
        self.inner.max_response_bytes
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut debug = f.debug_struct("ClientConfig");
        match &inner.endpoints {
            Endpoints::Fixed { token, revocation } => debug
                .field("token_endpoint", token)
                .field("revocation_endpoint", revocation),
            Endpoints::Discovered(discovery) => debug.field("issuer", discovery.issuer()),
        };
        debug
            .field("client_id", &inner.client_id)
            // `Secret` prints `***`; the field shows whether a secret is configured.
            .field("client_secret", &inner.client_secret)
            .field("auth", &inner.auth)
            .field("default_lifetime", &inner.default_lifetime)
            .field("timeout", &inner.timeout)
            .field("max_response_bytes", &inner.max_response_bytes)
            .finish()
    }
}

/// Builds a [`ClientConfig`]; see [`ClientConfig::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientConfigBuilder {
    server: Where,
    revocation_endpoint: Option<String>,
    discovery_ttl: Duration,
    client_id: String,
    client_secret: Option<Secret>,
    auth: ClientAuth,
    default_lifetime: Duration,
    timeout: Duration,
    max_response_bytes: usize,
    allow_insecure_http: bool,
}

/// Where the builder's client sends its requests.
#[derive(Clone, Debug)]
enum Where {
    Endpoint(String),
    Issuer(String),
}

impl ClientConfigBuilder {
    fn new(server: Where, client_id: &str) -> Self {
        ClientConfigBuilder {
            server,
            revocation_endpoint: None,
            discovery_ttl: ClientConfig::DEFAULT_DISCOVERY_TTL,
            client_id: client_id.to_owned(),
            client_secret: None,
            auth: ClientAuth::default(),
            default_lifetime: ClientConfig::DEFAULT_LIFETIME,
            timeout: ClientConfig::DEFAULT_TIMEOUT,
            max_response_bytes: ClientConfig::DEFAULT_MAX_RESPONSE_BYTES,
            allow_insecure_http: false,
        }
    }

    /// Sets the revocation endpoint (RFC 7009) of a client configured with its token endpoint;
    /// a discovered client takes it from the metadata.
    pub fn revocation_endpoint(mut self, endpoint: &str) -> Self {
        self.revocation_endpoint = Some(endpoint.to_owned());
        self
    }

    /// How long discovered metadata is used before it is fetched again (default one hour).
    pub fn discovery_ttl(mut self, ttl: Duration) -> Self {
        self.discovery_ttl = ttl;
        self
    }

    /// Sets the client secret, required by [`ClientAuth::SecretBasic`] and [`ClientAuth::SecretPost`].
    pub fn client_secret(mut self, secret: impl Into<Secret>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// Sets how the client authenticates (default [`ClientAuth::SecretBasic`]).
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the lifetime assumed when a response has no `expires_in` (default 3600 s).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// Sets the limit for one token request, response body included (default 10 s, at most
    /// [`ClientConfig::MAX_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the limit for a response body, in bytes (default 64 KiB).
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Allows an `http://` token endpoint on a host that is not loopback. Credentials and tokens
    /// then cross the network in clear text: use only in a closed test environment.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Checks the configuration and builds the client definition.
    ///
    /// Fails with [`Error::Config`] when the endpoint is not an absolute `https` URL (`http` is
    /// accepted for loopback hosts or with [`allow_insecure_http`](Self::allow_insecure_http)),
    /// the client id is empty, the authentication method needs a secret that is missing (or has
    /// one it would not send), or a limit is zero or too large.
    pub fn build(self) -> Result<ClientConfig, Error> {
        let endpoints = match &self.server {
            Where::Endpoint(token) => Endpoints::Fixed {
                token: check_endpoint("the token endpoint", token, self.allow_insecure_http)?,
                revocation: self
                    .revocation_endpoint
                    .as_deref()
                    .map(|r| check_endpoint("the revocation endpoint", r, self.allow_insecure_http))
                    .transpose()?,
            },
            Where::Issuer(issuer) => {
                if self.revocation_endpoint.is_some() {
                    return Err(Error::config(
                        "a client configured by issuer takes its revocation endpoint from the issuer's metadata",
                    ));
                }
                if self.discovery_ttl > ClientConfig::MAX_TIMEOUT {
                    return Err(Error::config(format!(
                        "the discovery TTL of {:?} is too long: at most {:?}",
                        self.discovery_ttl,
                        ClientConfig::MAX_TIMEOUT
                    )));
                }
                let issuer = check_endpoint("the issuer", issuer, self.allow_insecure_http)?;
                Endpoints::Discovered(Arc::new(Discovery::new(
                    issuer,
                    self.allow_insecure_http,
                    self.discovery_ttl,
                )))
            }
        };
        if self.client_id.is_empty() {
            return Err(Error::config("the client id is empty"));
        }
        match (&self.auth, &self.client_secret) {
            (ClientAuth::SecretBasic | ClientAuth::SecretPost, None) => {
                return Err(Error::config(format!(
                    "{} needs a client secret: set client_secret, or use ClientAuth::None for a public client",
                    self.auth.as_str()
                )));
            }
            (ClientAuth::SecretBasic | ClientAuth::SecretPost, Some(s))
                if s.expose_secret().is_empty() =>
            {
                return Err(Error::config("the client secret is empty"));
            }
            (ClientAuth::None, Some(_)) => {
                return Err(Error::config(
                    "a client secret is set but client authentication is none",
                ));
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return Err(Error::config("the timeout is zero"));
        }
        if self.timeout > ClientConfig::MAX_TIMEOUT {
            return Err(Error::config(format!(
                "the timeout of {:?} is too long: at most {:?}",
                self.timeout,
                ClientConfig::MAX_TIMEOUT
            )));
        }
        if self.default_lifetime > crate::MAX_EXPIRES_IN {
            return Err(Error::config(format!(
                "the default lifetime of {:?} is too long: at most {:?}",
                self.default_lifetime,
                crate::MAX_EXPIRES_IN
            )));
        }
        if self.max_response_bytes == 0 {
            return Err(Error::config("the response size limit is zero"));
        }
        Ok(ClientConfig {
            inner: Arc::new(Inner {
                endpoints,
                client_id: self.client_id,
                client_secret: self.client_secret,
                auth: self.auth,
                default_lifetime: self.default_lifetime,
                timeout: self.timeout,
                max_response_bytes: self.max_response_bytes,
            }),
        })
    }
}

impl fmt::Debug for ClientConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfigBuilder")
            .field("server", &self.server)
            .field("revocation_endpoint", &self.revocation_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth", &self.auth)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish_non_exhaustive()
    }
}

/// Checks that `endpoint` (`what` it is, for the message) is an absolute https URL, or http on
/// a loopback host or when allowed.
pub(crate) fn check_endpoint(
    what: &str,
    endpoint: &str,
    allow_insecure_http: bool,
) -> Result<Uri, Error> {
    let not_absolute = || {
        Error::config(format!(
            "{what} {endpoint:?} must be an absolute http(s) URL, such as \
             https://idp.example.com/oauth2/token"
        ))
    };
    // The parse error is not shown: it adds nothing the message does not say.
    let uri: Uri = endpoint.parse().map_err(|_| not_absolute())?;
    let authority = uri.authority().ok_or_else(not_absolute)?;
    if authority.as_str().contains('@') {
        // User info would be sent nowhere useful and may end up in logs; it is not echoed.
        return Err(Error::config(format!("{what} must not contain user info")));
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_insecure_http || is_loopback_host(authority.host()) => {}
        Some("http") => {
            return Err(Error::config(format!(
                "{what} {endpoint:?} must use https: http is accepted only for \
                 loopback hosts, or with allow_insecure_http(true) in a closed test network"
            )));
        }
        _ => return Err(not_absolute()),
    }
    Ok(uri)
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        // `::ffff:127.0.0.1` is loopback too.
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn build(endpoint: &str) -> Result<ClientConfig, Error> {
        ClientConfig::builder(endpoint, "client")
            .client_secret("s3cr3t")
            .build()
    }

    #[test]
    fn defaults() {
        let c = build("https://auth.example.com/oauth/token").unwrap();
        assert_eq!(
            c.token_endpoint().unwrap(),
            "https://auth.example.com/oauth/token"
        );
        assert_eq!(c.issuer(), None);
        assert_eq!(c.client_id(), "client");
        assert_eq!(c.auth(), &ClientAuth::SecretBasic);
        assert_eq!(c.default_lifetime(), Duration::from_secs(3600));
        assert_eq!(c.timeout(), Duration::from_secs(10));
        assert_eq!(c.max_response_bytes(), 64 * 1024);
    }

    #[test]
    fn https_required_unless_loopback_or_allowed() {
        assert!(build("https://auth.example.com/token").is_ok());
        for loopback in [
            "http://127.0.0.1:8080/token",
            "http://127.1.2.3/token",
            "http://[::1]:9000/token",
            "http://localhost/token",
            "http://LOCALHOST:1234/token",
            "http://[::ffff:127.0.0.1]/token",
        ] {
            assert!(build(loopback).is_ok(), "{loopback}");
        }
        for remote in [
            "http://auth.example.com/token",
            "http://10.0.0.1/token",
            "http://128.0.0.1/token",
            "http://[::2]/token",
            "http://localhost.example.com/token",
        ] {
            let err = build(remote).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{remote}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains("https") && shown.contains("allow_insecure_http"),
                "the message names the fix: {shown}"
            );
        }
        let allowed = ClientConfig::builder("http://auth.internal/token", "client")
            .client_secret("s")
            .allow_insecure_http(true)
            .build();
        assert!(allowed.is_ok());
    }

    #[test]
    fn rejects_endpoints_that_are_not_absolute_http_urls() {
        for bad in [
            "",
            "/token",
            "auth.example.com/token",
            "ftp://auth.example.com/token",
            "https://auth example.com",
        ] {
            let err = build(bad).unwrap_err();
            assert!(
                err.to_string().contains("absolute http(s) URL"),
                "{bad:?}: {err}"
            );
        }
        let err = build("https://user:pass@auth.example.com/token").unwrap_err();
        assert!(!err.to_string().contains("pass"), "{err}");
    }

    #[test]
    fn client_id_and_secret_are_required() {
        let err = ClientConfig::builder("https://a.example/t", "")
            .client_secret("s")
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        for auth in [ClientAuth::SecretBasic, ClientAuth::SecretPost] {
            let err = ClientConfig::builder("https://a.example/t", "c")
                .auth(auth.clone())
                .build()
                .unwrap_err();
            assert!(err.to_string().contains(auth.as_str()), "{err}");
            let err = ClientConfig::builder("https://a.example/t", "c")
                .auth(auth)
                .client_secret("")
                .build()
                .unwrap_err();
            assert!(matches!(err, Error::Config(_)));
        }
        let public = ClientConfig::builder("https://a.example/t", "c")
            .auth(ClientAuth::None)
            .build();
        assert!(public.is_ok());
        let confused = ClientConfig::builder("https://a.example/t", "c")
            .auth(ClientAuth::None)
            .client_secret("s")
            .build();
        assert!(matches!(confused, Err(Error::Config(_))));
    }

    #[test]
    fn limits_must_be_positive_and_bounded() {
        let base = || ClientConfig::builder("https://a.example/t", "c").client_secret("s");
        for bad in [
            base().timeout(Duration::ZERO),
            base().timeout(Duration::MAX),
            base().default_lifetime(Duration::MAX),
            base().max_response_bytes(0),
        ] {
            assert!(matches!(bad.build(), Err(Error::Config(_))));
        }
        assert!(base().timeout(ClientConfig::MAX_TIMEOUT).build().is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let builder = ClientConfig::builder("https://a.example/t", "client-id")
            .client_secret("super-secret-value");
        assert!(!format!("{builder:?}").contains("super-secret-value"));
        let c = builder.build().unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("super-secret-value"), "{shown}");
        assert!(shown.contains("client-id"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert!(!format!("{:#?}", c.clone()).contains("super-secret-value"));
    }
}
