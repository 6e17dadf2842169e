use crate::SubjectToken;

/// Per-request token parameters, the counterpart of Duende's `TokenRequestParameters`.
///
/// The default asks for the client's configured token. Overriding the scope, the resources, the
/// audience, adding extra form parameters or a subject token asks for a different token, cached
/// under its own key; [`TokenParams::force_renewal`] skips the caches and fetches a new token for the same key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenParams {
    force_renewal: bool,
    scopes: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    audience: Option<String>,
    extra: Vec<(String, String)>,
    subject: Option<SubjectToken>,
}

impl TokenParams {
    /// No overrides: the client's configured token.
    pub fn new() -> Self {
        TokenParams::default()
    }

    /// Fetch a new token even if a cached one is still valid (concurrent callers still share one request).
    pub fn force_renewal(mut self) -> Self {
        self.force_renewal = true;
        self
    }

    /// Replaces the client's scopes; `scope` may hold several space-separated scopes.
    pub fn scope(mut self, scope: &str) -> Self {
        let scopes = self.scopes.get_or_insert_with(Vec::new);
        scopes.extend(scope.split_ascii_whitespace().map(str::to_owned));
        self
    }

    /// Replaces the client's resource indicators (RFC 8707); call again to add more.
    pub fn resource(mut self, resource: &str) -> Self {
        self.resources
            .get_or_insert_with(Vec::new)
            .push(resource.to_owned());
        self
    }

    /// Replaces the client's audience.
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = Some(audience.to_owned());
        self
    }

    /// Adds an extra form parameter to the token request (and to the cache key); a second value
    /// for the same name replaces the first.
    pub fn param(mut self, name: &str, value: &str) -> Self {
        match self.extra.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.extra.push((name.to_owned(), value.to_owned())),
        }
        self
    }

    /// The token this request acts for: a token exchange or an extension grant that takes a
    /// subject token exchanges it for the client's token, cached per subject (under the
    /// token's SHA-256, never the token).
    pub fn subject_token(mut self, subject: SubjectToken) -> Self {
        self.subject = Some(subject);
        self
    }

    /// The same parameters without [`force_renewal`](Self::force_renewal): what a renewal of the
    /// token they produced asks for.
    pub fn without_force_renewal(&self) -> Self {
        TokenParams {
            force_renewal: false,
            ..self.clone()
        }
    }

    /// Whether the caches must be skipped.
    pub fn is_force_renewal(&self) -> bool {
        self.force_renewal
    }

    /// The scope override, if any.
    pub fn scopes(&self) -> Option<&[String]> {
        self.scopes.as_deref()
    }

    /// The resource override, if any.
    pub fn resources(&self) -> Option<&[String]> {
        self.resources.as_deref()
    }

    /// The audience override, if any.
    pub fn audience_override(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// Extra form parameters.
    pub fn extra_params(&self) -> &[(String, String)] {
        &self.extra
    }

    /// The subject token, if any.
    pub fn subject(&self) -> Option<&SubjectToken> {
        self.subject.as_ref()
    }

    /// Whether these parameters ask for the client's configured token (the key is the client's default).
    pub fn uses_default_key(&self) -> bool {
        self.subject.is_none()
            && self.scopes.is_none()
            && self.resources.is_none()
            && self.audience.is_none()
            && self.extra.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_key_unless_overridden() {
        assert!(TokenParams::new().uses_default_key());
        assert!(TokenParams::new().force_renewal().uses_default_key());
        assert!(!TokenParams::new().scope("a").uses_default_key());
        assert!(!TokenParams::new().param("k", "v").uses_default_key());
    }

    #[test]
    fn a_repeated_parameter_replaces_the_earlier_value() {
        let p = TokenParams::new().param("tenant", "a").param("tenant", "b");
        assert_eq!(p.extra_params(), &[("tenant".to_owned(), "b".to_owned())]);
    }

    #[test]
    fn scope_splits_on_whitespace() {
        let p = TokenParams::new().scope("a  b").scope("c");
        assert_eq!(
            p.scopes(),
            Some(&["a".to_owned(), "b".to_owned(), "c".to_owned()][..])
        );
    }
}
