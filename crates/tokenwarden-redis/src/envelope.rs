//! The stored forms of a cached token and of a user's tokens.
//!
//! A token cache value is `<fingerprint>|<payload>`:
//! - `fingerprint`: the lower-case hex SHA-256 of the token value (64 characters). It lets the
//!   compare-and-delete script check which token an entry holds without reading the payload, which
//!   may be encrypted. Its first 8 digits equal [`Secret::fingerprint`](tokenwarden_core::Secret::fingerprint),
//!   so operators can correlate an entry with log lines. A SHA-256 of a high-entropy token reveals
//!   nothing usable.
//! - `payload`: the JSON envelope below, or that JSON sealed by [`Encryption`](crate::Encryption).
//!
//! A user token record is a hash (see [`RedisUserTokenStore`](crate::RedisUserTokenStore)) whose
//! field `v` holds the user envelope below, as JSON or sealed, and whose field `rt` holds the
//! [`fingerprint`] of the refresh token, for the same reason.
//!
//! Both JSON envelopes are versioned (`"v":1`); a reader that does not know the version treats the
//! value as absent. Times are milliseconds since the Unix epoch, rounded down.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenwarden_core::{AccessToken, CachedToken, Secret, TokenType, UserTokens};

/// The envelope version this crate writes and reads.
pub(crate) const VERSION: u32 = 1;
/// Length of the hex fingerprint prefix.
pub(crate) const FINGERPRINT_LEN: usize = 64;
/// Separates the fingerprint from the payload.
pub(crate) const SEPARATOR: u8 = b'|';

#[derive(Serialize, Deserialize)]
struct EnvelopeV1<'a> {
    v: u32,
    #[serde(flatten)]
    access: AccessFields<'a>,
    expires_at_ms: u64,
    renew_at_ms: u64,
}

/// A user's tokens: the access token as in [`EnvelopeV1`] without the cache's own times, and the
/// refresh token.
#[derive(Serialize, Deserialize)]
struct UserEnvelopeV1<'a> {
    v: u32,
    #[serde(flatten)]
    access: AccessFields<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<Cow<'a, str>>,
    /// When the access token is due for a refresh; records written before it existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renew_at_ms: Option<u64>,
}

/// The access token's own fields, the same in both envelopes.
#[derive(Serialize, Deserialize)]
struct AccessFields<'a> {
    access_token: Cow<'a, str>,
    token_type: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Cow<'a, str>>,
    /// The token's own expiry (`AccessToken::expires_at`), when the server gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_expires_at_ms: Option<u64>,
}

impl<'a> AccessFields<'a> {
    fn of(access: &'a AccessToken) -> Self {
        AccessFields {
            access_token: access.expose_secret().into(),
            token_type: access.token_type().as_str().into(),
            scope: access.scope().map(Into::into),
            token_expires_at_ms: access.expires_at().map(to_millis),
        }
    }

    fn into_token(self) -> Result<AccessToken, DecodeError> {
        let mut token = AccessToken::new(
            self.access_token.into_owned(),
            TokenType::parse(&self.token_type),
        )
        .map_err(|_| DecodeError::InvalidToken)?;
        if let Some(scope) = self.scope {
            token = token.with_scope(scope.as_ref());
        }
        if let Some(ms) = self.token_expires_at_ms {
            token = token.with_expires_at(from_millis(ms));
        }
        Ok(token)
    }
}

/// Only the version (see [`check_version`]).
#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Why a stored value is not a usable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not JSON, or fields missing or of the wrong type.
    Corrupt,
    /// A version this reader does not know (written by a newer tokenwarden).
    UnknownVersion(u32),
    /// The token value is not a valid header value.
    InvalidToken,
}

impl DecodeError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DecodeError::Corrupt => "corrupt entry",
            DecodeError::UnknownVersion(_) => "unknown envelope version",
            DecodeError::InvalidToken => "entry holds an invalid token value",
        }
    }
}

/// The lower-case hex SHA-256 of a token value.
pub(crate) fn fingerprint(token_value: &str) -> String {
    let digest = Sha256::digest(token_value.as_bytes());
    let mut hex = String::with_capacity(FINGERPRINT_LEN);
    for b in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// Splits a stored value into its fingerprint and payload.
pub(crate) fn split(value: &[u8]) -> Option<(&[u8], &[u8])> {
    if value.len() > FINGERPRINT_LEN && value[FINGERPRINT_LEN] == SEPARATOR {
        Some((&value[..FINGERPRINT_LEN], &value[FINGERPRINT_LEN + 1..]))
    } else {
        None
    }
}

/// Joins a fingerprint and a payload into a stored value.
pub(crate) fn join(fingerprint: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fingerprint.len() + 1 + payload.len());
    out.extend_from_slice(fingerprint.as_bytes());
    out.push(SEPARATOR);
    out.extend_from_slice(payload);
    out
}

/// The JSON envelope of `token`.
pub(crate) fn encode(token: &CachedToken) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&EnvelopeV1 {
        v: VERSION,
        access: AccessFields::of(token.token()),
        expires_at_ms: to_millis(token.expires_at()),
        renew_at_ms: to_millis(token.renew_at()),
    })
}

/// Reads a JSON envelope.
pub(crate) fn decode(json: &[u8]) -> Result<CachedToken, DecodeError> {
    check_version(json)?;
    let envelope: EnvelopeV1<'_> =
        serde_json::from_slice(json).map_err(|_| DecodeError::Corrupt)?;
    Ok(CachedToken::new(
        envelope.access.into_token()?,
        from_millis(envelope.expires_at_ms),
        from_millis(envelope.renew_at_ms),
    ))
}

/// The JSON envelope of a user's tokens.
pub(crate) fn encode_user(tokens: &UserTokens) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&UserEnvelopeV1 {
        v: VERSION,
        access: AccessFields::of(tokens.access_token()),
        refresh_token: tokens.refresh_token().map(|r| r.expose_secret().into()),
        renew_at_ms: tokens.renew_at().map(to_millis),
    })
}

/// Reads a user envelope.
pub(crate) fn decode_user(json: &[u8]) -> Result<UserTokens, DecodeError> {
    check_version(json)?;
    let envelope: UserEnvelopeV1<'_> =
        serde_json::from_slice(json).map_err(|_| DecodeError::Corrupt)?;
    let refresh_token = envelope.refresh_token.map(|r| Secret::new(r.into_owned()));
    let tokens = UserTokens::new(envelope.access.into_token()?, refresh_token);
    Ok(match envelope.renew_at_ms {
        Some(ms) => tokens.with_renew_at(from_millis(ms)),
        None => tokens,
    })
}

/// Reads the version first, so a newer envelope is recognised as such, not as corrupt.
fn check_version(json: &[u8]) -> Result<(), DecodeError> {
    let VersionOnly { v } = serde_json::from_slice(json).map_err(|_| DecodeError::Corrupt)?;
    match v {
        VERSION => Ok(()),
        other => Err(DecodeError::UnknownVersion(other)),
    }
}

fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedToken {
        let t0 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let token = AccessToken::new("abc.def", TokenType::DPoP)
            .unwrap()
            .with_scope("a b")
            .with_expires_at(t0 + Duration::from_secs(3600));
        CachedToken::new(
            token,
            t0 + Duration::from_secs(3600),
            t0 + Duration::from_secs(3000),
        )
    }

    #[test]
    fn roundtrip_keeps_every_field() {
        let c = sample();
        assert_eq!(decode(&encode(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn the_envelope_format_is_stable() {
        let json = String::from_utf8(encode(&sample()).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"access_token":"abc.def","token_type":"DPoP","scope":"a b","token_expires_at_ms":1700003600123,"expires_at_ms":1700003600123,"renew_at_ms":1700003000123}"#
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_rejected() {
        assert_eq!(decode(b"{\"v\":2}"), Err(DecodeError::UnknownVersion(2)));
        assert_eq!(decode(b"not json"), Err(DecodeError::Corrupt));
        assert_eq!(decode(b"{\"v\":1}"), Err(DecodeError::Corrupt));
        let bad = br#"{"v":1,"access_token":"a b","token_type":"Bearer","expires_at_ms":1,"renew_at_ms":1}"#;
        assert_eq!(decode(bad), Err(DecodeError::InvalidToken));
    }

    fn user_sample() -> UserTokens {
        let t0 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let token = AccessToken::new("abc.def", TokenType::Bearer)
            .unwrap()
            .with_scope("openid profile")
            .with_expires_at(t0 + Duration::from_secs(3600));
        UserTokens::new(token, Some(Secret::new("rt-1")))
            .with_renew_at(t0 + Duration::from_secs(3540))
    }

    #[test]
    fn a_user_envelope_roundtrip_keeps_every_field() {
        let tokens = user_sample();
        assert_eq!(decode_user(&encode_user(&tokens).unwrap()).unwrap(), tokens);
        let bare = UserTokens::new(AccessToken::new("x", TokenType::Bearer).unwrap(), None);
        assert_eq!(decode_user(&encode_user(&bare).unwrap()).unwrap(), bare);
    }

    #[test]
    fn the_user_envelope_format_is_stable() {
        let json = String::from_utf8(encode_user(&user_sample()).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"access_token":"abc.def","token_type":"Bearer","scope":"openid profile","token_expires_at_ms":1700003600123,"refresh_token":"rt-1","renew_at_ms":1700003540123}"#
        );
        let bare = r#"{"v":1,"access_token":"x","token_type":"Bearer"}"#;
        let tokens = decode_user(bare.as_bytes()).unwrap();
        assert_eq!(tokens.access_token().expires_at(), None);
        assert_eq!(tokens.refresh_token(), None);
    }

    #[test]
    fn unusable_user_envelopes_are_rejected() {
        assert_eq!(
            decode_user(b"{\"v\":2}").err(),
            Some(DecodeError::UnknownVersion(2))
        );
        assert_eq!(decode_user(b"\x00\x01").err(), Some(DecodeError::Corrupt));
        let bad = br#"{"v":1,"access_token":"a\nb","token_type":"Bearer"}"#;
        assert_eq!(decode_user(bad).err(), Some(DecodeError::InvalidToken));
    }

    #[test]
    fn fingerprint_prefix_matches_core_secret_fingerprint() {
        let fp = fingerprint("hunter2");
        assert_eq!(fp.len(), FINGERPRINT_LEN);
        assert!(fp.starts_with(&tokenwarden_core::Secret::new("hunter2").fingerprint()));
        let value = join(&fp, b"payload");
        assert_eq!(split(&value), Some((fp.as_bytes(), &b"payload"[..])));
        assert_eq!(split(b"short|x"), None);
    }
}
