//! The token a service acts for: the incoming caller's token that a middle tier exchanges for
//! one of its own (RFC 8693 token exchange, or a server's extension grant).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::token::check_token_value;
use crate::{Error, Secret};

/// Token type identifiers (RFC 8693 §3), for a subject token's type, an actor token's type and
/// the type of token asked for.
pub mod token_types {
    /// An OAuth 2.0 access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// An OAuth 2.0 refresh token.
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
    /// An OpenID Connect ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    /// A JWT (RFC 7519).
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// A base64url-encoded SAML 1.1 assertion.
    pub const SAML1: &str = "urn:ietf:params:oauth:token-type:saml1";
    /// A base64url-encoded SAML 2.0 assertion.
    pub const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
}

/// The largest JWT payload read for its `exp`; a token in an HTTP header is far smaller.
const MAX_PAYLOAD: usize = 16 * 1024;

/// The token of the party a request acts for, usually the access token the caller sent: the
/// input of a token exchange (RFC 8693 §2.1 `subject_token`) or of an extension grant that
/// takes one (seed 001's `grant_type=delegation&token=…`).
///
/// Put it in a request's extensions (or in [`TokenParams::subject_token`](crate::TokenParams::subject_token))
/// and the client's token for that request is exchanged for it, cached under the SHA-256 of the
/// token, never the token.
///
/// When the token is a JWT with an `exp` claim, [`expires_at`](Self::expires_at) is read when it
/// is made, without verifying the signature (the authorization server does that): only so a
/// token obtained for it is never used after it expires. Other tokens are not parsed.
///
/// `Debug` shows the type, the expiry and a fingerprint, never the token.
///
/// ```
/// use tokenwarden_core::SubjectToken;
///
/// let subject = SubjectToken::from_authorization("Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")?;
/// assert_eq!(subject.token_type(), tokenwarden_core::token_types::ACCESS_TOKEN);
/// assert_eq!(subject.expires_at(), None); // no `exp` claim
/// # Ok::<(), tokenwarden_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectToken {
    value: Secret,
    token_type: Arc<str>,
    expires_at: Option<SystemTime>,
}

impl SubjectToken {
    /// An access token the caller presented (type [`token_types::ACCESS_TOKEN`]).
    pub fn access_token(value: impl Into<String>) -> Result<Self, Error> {
        SubjectToken::new(value, token_types::ACCESS_TOKEN)
    }

    /// A token of `token_type`, a [token type identifier](token_types) or another URI the
    /// server understands.
    ///
    /// The value must be one that can be sent: not empty, without whitespace, control bytes or
    /// non-ASCII characters (every JWT, SAML assertion in base64url and opaque token is).
    pub fn new(value: impl Into<String>, token_type: &str) -> Result<Self, Error> {
        let value = value.into();
        check_token_value(&value).map_err(Error::InvalidSubjectToken)?;
        if token_type.is_empty() || !token_type.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(Error::InvalidSubjectToken(
                "the token type is not a token type identifier",
            ));
        }
        let expires_at = jwt_expiry(&value);
        Ok(SubjectToken {
            value: Secret::new(value),
            token_type: token_type.into(),
            expires_at,
        })
    }

    /// The bearer token of an `Authorization` header value (`Bearer <token>`, the scheme in any
    /// case), as an access token: what a middle tier's middleware takes from its caller's
    /// request.
    pub fn from_authorization(value: &str) -> Result<Self, Error> {
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(Error::InvalidSubjectToken(
                "the credentials are not `Bearer <token>`",
            ))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Error::InvalidSubjectToken(
                "the credentials are not `Bearer <token>`",
            ));
        }
        SubjectToken::access_token(token.trim_start_matches(' '))
    }

    /// The token.
    pub fn secret(&self) -> &Secret {
        &self.value
    }

    /// The token's value. Call this only where it is sent.
    pub fn expose_secret(&self) -> &str {
        self.value.expose_secret()
    }

    /// The token's type identifier.
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// When the token expires, if it is a JWT with an `exp` claim (read, not verified).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectToken")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("fingerprint", &self.value.fingerprint())
            .finish()
    }
}

/// The `exp` claim of a JWS-compact token (`header.payload.signature`), read without
/// verifying anything; `None` for anything else, an `exp` that is not a number included.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_PAYLOAD {
        return None; // a JWE (five parts) cannot be read; an opaque token has no dots
    }
    let payload = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&payload).ok()?;
    // A NumericDate may have a fraction; a negative or absurd one is no expiry to trust.
    let exp = claims.get("exp")?.as_f64()?;
    if !(0.0..=1e11).contains(&exp) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(exp))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn a_jwt_subject_expires_with_its_exp_claim() {
        let token = SubjectToken::access_token(jwt(r#"{"sub":"alice","exp":1900000000}"#)).unwrap();
        assert_eq!(
            token.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000))
        );
        let fraction = SubjectToken::access_token(jwt(r#"{"exp":1900000000.5}"#)).unwrap();
        assert_eq!(
            fraction.expires_at(),
            Some(UNIX_EPOCH + Duration::from_millis(1_900_000_000_500))
        );
    }

    #[test]
    fn tokens_without_a_readable_exp_have_no_expiry() {
        for token in [
            "opaque-token-value".to_owned(),
            "a.b".to_owned(),
            "a.b.c.d.e".to_owned(),
            jwt(r#"{"sub":"alice"}"#),
            jwt(r#"{"exp":"tomorrow"}"#),
            jwt(r#"{"exp":-5}"#),
            jwt(r#"{"exp":1e300}"#),
            jwt(r#"["not","an","object"]"#),
            format!("x.{}.y", "!".repeat(10)),
        ] {
            let subject = SubjectToken::access_token(token.clone()).unwrap();
            assert_eq!(subject.expires_at(), None, "{token}");
        }
    }

    #[test]
    fn values_that_cannot_be_sent_are_refused() {
        for bad in ["", "with space", "line\nbreak", "ünïcode"] {
            assert!(
                matches!(
                    SubjectToken::access_token(bad),
                    Err(Error::InvalidSubjectToken(_))
                ),
                "{bad:?}"
            );
        }
        assert!(SubjectToken::new("t", "").is_err());
        assert!(SubjectToken::new("t", "two words").is_err());
    }

    #[test]
    fn bearer_credentials_become_access_token_subjects() {
        let token = SubjectToken::from_authorization("bearer  abc.def").unwrap();
        assert_eq!(token.expose_secret(), "abc.def");
        assert_eq!(token.token_type(), token_types::ACCESS_TOKEN);
        for bad in ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "abc"] {
            assert!(SubjectToken::from_authorization(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let token = SubjectToken::access_token(jwt(r#"{"exp":1900000000}"#)).unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains(token.expose_secret()), "{shown}");
        assert!(shown.contains("fingerprint"), "{shown}");
    }
}
