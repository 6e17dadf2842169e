use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{Error, Secret};

/// The `token_type` of an access token (RFC 6749 §7.1), compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// `Bearer` (RFC 6750).
    Bearer,
    /// `DPoP` (RFC 9449).
    DPoP,
    /// `N_A` (RFC 8693 §2.2.1): a token exchange issued a token that is not an access token
    /// (an ID token, a SAML assertion), which cannot be sent in an `Authorization` header.
    NotApplicable,
    /// Any other type, kept as the server spelled it.
    Other(Arc<str>),
}

impl TokenType {
    /// Parses a `token_type` value; `bearer`, `BEARER` and `Bearer` are all [`TokenType::Bearer`].
    pub fn parse(value: &str) -> TokenType {
        if value.eq_ignore_ascii_case("bearer") {
            TokenType::Bearer
        } else if value.eq_ignore_ascii_case("dpop") {
            TokenType::DPoP
        } else if value == "N_A" {
            TokenType::NotApplicable
        } else {
            TokenType::Other(value.into())
        }
    }

    /// The authorization scheme to send in the `Authorization` header (`N_A` for
    /// [`NotApplicable`](Self::NotApplicable), which is none).
    pub fn as_str(&self) -> &str {
        match self {
            TokenType::Bearer => "Bearer",
            TokenType::DPoP => "DPoP",
            TokenType::NotApplicable => "N_A",
            TokenType::Other(other) => other,
        }
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth 2.0 access token: its value (redacted when printed), type, expiry and granted scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessToken {
    value: Secret,
    token_type: TokenType,
    expires_at: Option<SystemTime>,
    scope: Option<Arc<str>>,
}

impl AccessToken {
    /// Creates a token after checking that its value can be sent in an `Authorization` header.
    ///
    /// The value must be non-empty visible ASCII (`0x21..=0x7E`): a token with a space, a CR/LF, a
    /// control byte or a non-ASCII byte is rejected with [`Error::InvalidToken`] rather than sent.
    pub fn new(value: impl Into<String>, token_type: TokenType) -> Result<Self, Error> {
        let value = value.into();
        check_token_value(&value).map_err(Error::InvalidToken)?;
        Ok(AccessToken {
            value: Secret::new(value),
            token_type,
            expires_at: None,
            scope: None,
        })
    }

    /// Sets the moment the token stops being valid.
    pub fn with_expires_at(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the scope the server granted.
    pub fn with_scope(mut self, scope: impl Into<Arc<str>>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The token value, redacted when printed.
    pub fn secret(&self) -> &Secret {
        &self.value
    }

    /// The token value itself, for sending it.
    pub fn expose_secret(&self) -> &str {
        self.value.expose_secret()
    }

    /// The token type.
    pub fn token_type(&self) -> &TokenType {
        &self.token_type
    }

    /// When the token stops being valid, if known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The scope the server granted, if it said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// Whether the token is expired at `now` (a token with no known expiry never is).
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Why `value` cannot be sent as a token in an HTTP header or a form, if it cannot: empty,
/// whitespace, control bytes or non-ASCII.
pub(crate) fn check_token_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("the token is empty");
    }
    if let Some(b) = value.bytes().find(|b| !(0x21..=0x7e).contains(b)) {
        return Err(match b {
            b'\r' | b'\n' => "the token contains a line break",
            b' ' | b'\t' => "the token contains whitespace",
            0x00..=0x1f | 0x7f => "the token contains a control character",
            _ => "the token contains a non-ASCII byte",
        });
    }
    Ok(())
}

/// A token as a cache holds it: the token, when it must be renewed and when it stops being usable.
///
/// `renew_at` is the end of the entry's cache lifetime: a cache keeps the entry until then (a Redis
/// backend uses it as the key's TTL). Between `renew_at` and `expires_at` a token manager still uses
/// its own copy while one renewal runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedToken {
    token: AccessToken,
    expires_at: SystemTime,
    renew_at: SystemTime,
}

impl CachedToken {
    /// A cached token; `renew_at` is clamped to be no later than `expires_at`.
    pub fn new(token: AccessToken, expires_at: SystemTime, renew_at: SystemTime) -> Self {
        CachedToken {
            token,
            expires_at,
            renew_at: renew_at.min(expires_at),
        }
    }

    /// The token.
    pub fn token(&self) -> &AccessToken {
        &self.token
    }

    /// Unwraps the token.
    pub fn into_token(self) -> AccessToken {
        self.token
    }

    /// When the token stops being valid.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// When the token should be renewed: the end of the cache lifetime.
    pub fn renew_at(&self) -> SystemTime {
        self.renew_at
    }

    /// Fresh: within its cache lifetime, no renewal needed.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.renew_at
    }

    /// Usable: not expired yet (it may be due for renewal).
    pub fn is_usable(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    /// How long a cache should keep the entry from `now`: `None` when it is already due for renewal.
    pub fn cache_ttl(&self, now: SystemTime) -> Option<Duration> {
        self.renew_at
            .duration_since(now)
            .ok()
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_type_is_case_insensitive() {
        assert_eq!(TokenType::parse("bearer"), TokenType::Bearer);
        assert_eq!(TokenType::parse("BEARER"), TokenType::Bearer);
        assert_eq!(TokenType::parse("DPoP"), TokenType::DPoP);
        assert_eq!(TokenType::parse("mac").as_str(), "mac");
    }

    #[test]
    fn rejects_values_that_are_not_header_safe() {
        for bad in [
            "",
            "abc\r\nX-Evil: 1",
            "abc\n",
            "a b",
            "a\tb",
            "a\u{0}b",
            "a\u{7f}",
            "tökén",
        ] {
            let err = AccessToken::new(bad, TokenType::Bearer).unwrap_err();
            assert!(matches!(err, Error::InvalidToken(_)), "{bad:?} gave {err}");
        }
        let crlf = AccessToken::new("abc\r\n", TokenType::Bearer).unwrap_err();
        assert_eq!(
            crlf.to_string(),
            "invalid access token: the token contains a line break"
        );
        assert!(AccessToken::new("eyJ0.eyJ1-_~+/=", TokenType::Bearer).is_ok());
    }

    #[test]
    fn debug_does_not_show_the_value() {
        let t = AccessToken::new("supersecretvalue", TokenType::Bearer).unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("supersecretvalue"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn cached_token_freshness_and_ttl() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let token = AccessToken::new("t", TokenType::Bearer).unwrap();
        let c = CachedToken::new(
            token,
            t0 + Duration::from_secs(100),
            t0 + Duration::from_secs(40),
        );
        assert!(c.is_fresh(t0));
        assert_eq!(c.cache_ttl(t0), Some(Duration::from_secs(40)));
        let later = t0 + Duration::from_secs(50);
        assert!(!c.is_fresh(later));
        assert!(c.is_usable(later));
        assert_eq!(c.cache_ttl(later), None);
        assert!(!c.is_usable(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn renew_at_never_exceeds_expiry() {
        let t0 = SystemTime::UNIX_EPOCH;
        let token = AccessToken::new("t", TokenType::Bearer).unwrap();
        let c = CachedToken::new(
            token,
            t0 + Duration::from_secs(10),
            t0 + Duration::from_secs(20),
        );
        assert_eq!(c.renew_at(), c.expires_at());
    }
}
