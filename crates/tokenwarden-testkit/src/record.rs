//! What the server remembers about a token request, for assertions.

/// How a client authenticated a token request (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// `Authorization: Basic` with the form-urlencoded `client_id:client_secret` (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` as form fields (`client_secret_post`).
    Post,
    /// No client secret was presented (a `client_id` form field alone, or nothing at all).
    None,
}

/// One token request (or revocation request) as the server received it.
///
/// Secrets are never kept: the `client_secret` and `password` form fields are left out of
/// [`form`](Self::form), and the `Authorization` header is reduced to
/// [`auth_method`](Self::auth_method). Tokens the client sends (`refresh_token`, `token`) are
/// kept, so a test can check which one arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestRecord {
    /// How the client authenticated.
    pub auth_method: AuthMethod,
    /// The form fields in the order they were sent, decoded, without `client_secret` and
    /// `password`.
    pub form: Vec<(String, String)>,
}

impl TokenRequestRecord {
    /// The first value of the form field `name`, e.g. `record.field("scope")`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of the form field `name` in request order, e.g. repeated `resource` parameters (RFC 8707).
    pub fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.form
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn field_lookup_returns_first_and_all_values() {
        let record = TokenRequestRecord {
            auth_method: AuthMethod::Post,
            form: vec![
                ("grant_type".into(), "client_credentials".into()),
                ("resource".into(), "https://a.example".into()),
                ("resource".into(), "https://b.example".into()),
            ],
        };
        assert_eq!(record.field("grant_type"), Some("client_credentials"));
        assert_eq!(record.field("resource"), Some("https://a.example"));
        assert_eq!(
            record.fields("resource").collect::<Vec<_>>(),
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(record.field("scope"), None);
    }
}
