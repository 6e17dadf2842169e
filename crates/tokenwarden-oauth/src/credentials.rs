use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokenwarden_core::Secret;

use crate::Error;

/// Form parameters the library sets itself; an extra parameter may not use these names, so a
/// configuration value cannot smuggle a second `grant_type` or client identity into the request.
pub(crate) const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "resource",
    "audience",
];

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

/// A named client's definition: where to ask for tokens, how to authenticate, and what to ask for.
///
/// Built with [`ClientCredentials::builder`], which checks the configuration once. Cloning is cheap
/// (the definition is shared). `Debug` never shows the client secret.
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    token_endpoint: Uri,
    client_id: String,
    client_secret: Option<Secret>,
    auth: ClientAuth,
    scopes: Vec<String>,
    resources: Vec<String>,
    audience: Option<String>,
    extra_params: Vec<(String, String)>,
    default_lifetime: Duration,
    timeout: Duration,
    max_response_bytes: usize,
}

impl ClientCredentials {
    /// The lifetime assumed when a response has no `expires_in`.
    pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
    /// The default limit for a whole token exchange.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default limit for a response body.
    pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

    /// Starts the definition of a client of `token_endpoint`; the configuration is checked by
    /// [`ClientCredentialsBuilder::build`].
    pub fn builder(token_endpoint: &str, client_id: &str) -> ClientCredentialsBuilder {
        ClientCredentialsBuilder {
            token_endpoint: token_endpoint.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: None,
            auth: ClientAuth::default(),
            scopes: Vec::new(),
            resources: Vec::new(),
            audience: None,
            extra_params: Vec::new(),
            default_lifetime: Self::DEFAULT_LIFETIME,
            timeout: Self::DEFAULT_TIMEOUT,
            max_response_bytes: Self::DEFAULT_MAX_RESPONSE_BYTES,
            allow_insecure_http: false,
        }
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &Uri {
        &self.inner.token_endpoint
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

    /// The scopes asked for by default, one per item.
    pub fn scopes(&self) -> &[String] {
        &self.inner.scopes
    }

    /// The resource indicators (RFC 8707) asked for by default.
    pub fn resources(&self) -> &[String] {
        &self.inner.resources
    }

    /// The audience asked for by default.
    pub fn audience(&self) -> Option<&str> {
        self.inner.audience.as_deref()
    }

    /// Extra form parameters sent with every token request.
    pub fn extra_params(&self) -> &[(String, String)] {
        &self.inner.extra_params
    }

    /// The lifetime to assume when a response has no `expires_in` (default 3600 s).
    pub fn default_lifetime(&self) -> Duration {
        self.inner.default_lifetime
    }

    /// The limit for a whole token exchange, response body included (default 10 s).
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The limit for a response body, in bytes (default 64 KiB).
    pub fn max_response_bytes(&self) -> usize {
        self.inner.max_response_bytes
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("ClientCredentials")
            .field("token_endpoint", &inner.token_endpoint)
            .field("client_id", &inner.client_id)
            // `Secret` prints `***`; the field shows whether a secret is configured.
            .field("client_secret", &inner.client_secret)
            .field("auth", &inner.auth)
            .field("scopes", &inner.scopes)
            .field("resources", &inner.resources)
            .field("audience", &inner.audience)
            .field("extra_params", &inner.extra_params)
            .field("default_lifetime", &inner.default_lifetime)
            .field("timeout", &inner.timeout)
            .field("max_response_bytes", &inner.max_response_bytes)
            .finish()
    }
}

/// Builds a [`ClientCredentials`]; see [`ClientCredentials::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientCredentialsBuilder {
    token_endpoint: String,
    client_id: String,
    client_secret: Option<Secret>,
    auth: ClientAuth,
    scopes: Vec<String>,
    resources: Vec<String>,
    audience: Option<String>,
    extra_params: Vec<(String, String)>,
    default_lifetime: Duration,
    timeout: Duration,
    max_response_bytes: usize,
    allow_insecure_http: bool,
}

impl ClientCredentialsBuilder {
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

    /// Adds scopes; `scope` may hold several, separated by spaces.
    pub fn scope(mut self, scope: &str) -> Self {
        self.scopes
            .extend(scope.split_ascii_whitespace().map(str::to_owned));
        self
    }

    /// Adds a resource indicator (RFC 8707), an absolute URI; call again for more.
    pub fn resource(mut self, resource: &str) -> Self {
        self.resources.push(resource.to_owned());
        self
    }

    /// Sets the `audience` parameter some servers use instead of resource indicators.
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = Some(audience.to_owned());
        self
    }

    /// Adds a form parameter sent with every request; a second call with the same name replaces it.
    ///
    /// Names the library sets itself (`grant_type`, `client_id`, `client_secret`, `scope`,
    /// `resource`, `audience`, `client_assertion`, `client_assertion_type`) are rejected by
    /// [`build`](Self::build): use the dedicated methods.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.extra_params.retain(|(n, _)| n != name);
        self.extra_params.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the lifetime assumed when a response has no `expires_in` (default 3600 s).
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// Sets the limit for a whole token exchange, response body included (default 10 s).
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
    /// Fails with [`Error::Config`] when the endpoint is not an absolute `https` URI (`http` is
    /// accepted for loopback hosts or with [`allow_insecure_http`](Self::allow_insecure_http)),
    /// the client id is empty, the authentication method needs a secret that is missing (or has
    /// one it would not send), a scope is not a valid scope token, an extra parameter uses a
    /// reserved name, or a limit is zero.
    pub fn build(self) -> Result<ClientCredentials, Error> {
        let token_endpoint = check_endpoint(&self.token_endpoint, self.allow_insecure_http)?;
        if self.client_id.is_empty() {
            return Err(Error::config("the client id is empty"));
        }
        match (&self.auth, &self.client_secret) {
            (ClientAuth::SecretBasic | ClientAuth::SecretPost, None) => {
                return Err(Error::config(format!(
                    "{} needs a client secret",
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
        for scope in &self.scopes {
            check_scope(scope)?;
        }
        for resource in &self.resources {
            check_resource(resource)?;
        }
        for (name, _) in &self.extra_params {
            check_param_name(name)?;
        }
        if self.timeout.is_zero() {
            return Err(Error::config("the timeout is zero"));
        }
        if self.max_response_bytes == 0 {
            return Err(Error::config("the response size limit is zero"));
        }
        Ok(ClientCredentials {
            inner: Arc::new(Inner {
                token_endpoint,
                client_id: self.client_id,
                client_secret: self.client_secret,
                auth: self.auth,
                scopes: self.scopes,
                resources: self.resources,
                audience: self.audience,
                extra_params: self.extra_params,
                default_lifetime: self.default_lifetime,
                timeout: self.timeout,
                max_response_bytes: self.max_response_bytes,
            }),
        })
    }
}

impl fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth", &self.auth)
            .field("scopes", &self.scopes)
            .field("resources", &self.resources)
            .field("audience", &self.audience)
            .field("extra_params", &self.extra_params)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish_non_exhaustive()
    }
}

fn check_endpoint(endpoint: &str, allow_insecure_http: bool) -> Result<Uri, Error> {
    // The parse error is not shown: it adds nothing the message does not say.
    let uri: Uri = endpoint
        .parse()
        .map_err(|_| Error::config("the token endpoint is not a valid URI"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| Error::config("the token endpoint is not an absolute URI"))?;
    if authority.as_str().contains('@') {
        // User info would be sent nowhere useful and may end up in logs.
        return Err(Error::config(
            "the token endpoint must not contain user info",
        ));
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_insecure_http || is_loopback_host(authority.host()) => {}
        Some("http") => {
            return Err(Error::config(
                "the token endpoint must use https unless its host is loopback \
                 or insecure http is allowed",
            ));
        }
        _ => return Err(Error::config("the token endpoint must be an http(s) URI")),
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

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub(crate) fn check_scope(scope: &str) -> Result<(), Error> {
    let valid = !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!("{scope:?} is not a valid scope")))
    }
}

/// RFC 8707 §2: a resource is an absolute URI without a fragment.
pub(crate) fn check_resource(resource: &str) -> Result<(), Error> {
    let absolute = resource.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !absolute {
        return Err(Error::config(format!(
            "resource {resource:?} is not an absolute URI"
        )));
    }
    if resource.contains('#') {
        return Err(Error::config(format!(
            "resource {resource:?} must not contain a fragment"
        )));
    }
    Ok(())
}

pub(crate) fn check_param_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::config("an extra parameter has an empty name"));
    }
    if RESERVED_PARAMS.contains(&name) {
        return Err(Error::config(format!(
            "extra parameter {name:?} is set by the library; use the dedicated setting"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn build(endpoint: &str) -> Result<ClientCredentials, Error> {
        ClientCredentials::builder(endpoint, "client")
            .client_secret("s3cr3t")
            .build()
    }

    #[test]
    fn defaults() {
        let c = build("https://auth.example.com/oauth/token").unwrap();
        assert_eq!(c.token_endpoint(), "https://auth.example.com/oauth/token");
        assert_eq!(c.client_id(), "client");
        assert_eq!(c.auth(), &ClientAuth::SecretBasic);
        assert!(c.scopes().is_empty());
        assert!(c.resources().is_empty());
        assert_eq!(c.audience(), None);
        assert!(c.extra_params().is_empty());
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
            assert!(err.to_string().contains("https"), "{err}");
        }
        let allowed = ClientCredentials::builder("http://auth.internal/token", "client")
            .client_secret("s")
            .allow_insecure_http(true)
            .build();
        assert!(allowed.is_ok());
    }

    #[test]
    fn rejects_endpoints_that_are_not_absolute_http_uris() {
        for bad in [
            "",
            "/token",
            "auth.example.com/token",
            "ftp://auth.example.com/token",
            "https://user:pass@auth.example.com/token",
            "https://auth example.com",
        ] {
            assert!(matches!(build(bad), Err(Error::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn client_id_and_secret_are_required() {
        let err = ClientCredentials::builder("https://a.example/t", "")
            .client_secret("s")
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        for auth in [ClientAuth::SecretBasic, ClientAuth::SecretPost] {
            let err = ClientCredentials::builder("https://a.example/t", "c")
                .auth(auth.clone())
                .build()
                .unwrap_err();
            assert!(err.to_string().contains(auth.as_str()), "{err}");
            let err = ClientCredentials::builder("https://a.example/t", "c")
                .auth(auth)
                .client_secret("")
                .build()
                .unwrap_err();
            assert!(matches!(err, Error::Config(_)));
        }
        let public = ClientCredentials::builder("https://a.example/t", "c")
            .auth(ClientAuth::None)
            .build();
        assert!(public.is_ok());
        let confused = ClientCredentials::builder("https://a.example/t", "c")
            .auth(ClientAuth::None)
            .client_secret("s")
            .build();
        assert!(matches!(confused, Err(Error::Config(_))));
    }

    #[test]
    fn scopes_resources_and_params_are_checked() {
        let base = || ClientCredentials::builder("https://a.example/t", "c").client_secret("s");
        let c = base()
            .scope("read  write")
            .scope("admin")
            .resource("https://api.example.com/")
            .resource("urn:example:ledger")
            .audience("ledger")
            .param("k", "1")
            .param("k", "2")
            .build()
            .unwrap();
        assert_eq!(c.scopes(), ["read", "write", "admin"]);
        assert_eq!(
            c.resources(),
            ["https://api.example.com/", "urn:example:ledger"]
        );
        assert_eq!(c.audience(), Some("ledger"));
        assert_eq!(c.extra_params(), [("k".to_owned(), "2".to_owned())]);

        assert!(matches!(
            base().scope("a\"b").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            base().scope("caf\u{e9}").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            base().resource("/relative").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            base().resource("https://a/#frag").build(),
            Err(Error::Config(_))
        ));
        for reserved in RESERVED_PARAMS {
            assert!(matches!(
                base().param(reserved, "x").build(),
                Err(Error::Config(_))
            ));
        }
        assert!(matches!(
            base().param("", "x").build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            base().timeout(Duration::ZERO).build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            base().max_response_bytes(0).build(),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let builder = ClientCredentials::builder("https://a.example/t", "client-id")
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
