//! JWT access tokens (RFC 9068 shape): `base64url(header).base64url(claims).base64url(signature)`
//! with `{"alg":"HS256","typ":"at+jwt"}`, signed with HMAC-SHA256 (RFC 2104) under a key each
//! server draws at start.
//!
//! The server never needs to verify a signature: every token it issued is in its token store,
//! so a token is accepted because it is found there, not because its signature checks out. The
//! signature is real all the same, so a token looks and decodes like a real server's.

use std::fmt;
use std::hash::{BuildHasher, RandomState};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// SHA-256's block size in bytes, which HMAC pads the key to.
const BLOCK_LEN: usize = 64;

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // A key longer than a block is hashed first; a shorter one is padded with zeros.
    let mut block = [0u8; BLOCK_LEN];
    if key.len() > BLOCK_LEN {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|byte| byte ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|byte| byte ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The key a server signs its JWTs with. `Debug` does not show it.
pub(crate) struct SigningKey([u8; 32]);

impl SigningKey {
    /// A key no other server (and no test) can predict: 256 bits from the standard library's
    /// randomly seeded hasher, the same source that makes opaque token values unguessable.
    pub(crate) fn random() -> Self {
        let entropy = RandomState::new();
        let mut key = [0u8; 32];
        for (index, chunk) in key.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(&entropy.hash_one(index).to_le_bytes());
        }
        Self(key)
    }

    /// Encodes `claims` as an HS256-signed `at+jwt`.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "HS256", "typ": "at+jwt" });
        let signing_input = format!(
            "{}.{}",
            BASE64URL.encode(header.to_string()),
            BASE64URL.encode(claims.to_string())
        );
        let signature = hmac_sha256(&self.0, signing_input.as_bytes());
        format!("{signing_input}.{}", BASE64URL.encode(signature))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Whether `token` has the shape of a JWS in compact serialization: three non-empty base64url
/// segments separated by dots. Says nothing about who issued it.
pub(crate) fn is_jwt(token: &str) -> bool {
    let segments: Vec<&str> = token.split('.').collect();
    segments.len() == 3
        && segments.iter().all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn hmac_matches_the_rfc_4231_test_vectors() {
        // Test case 1: a 20-byte key.
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2: a key shorter than the output.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than a block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signed_tokens_decode_and_carry_a_valid_signature() {
        let key = SigningKey::random();
        let claims = json!({ "sub": "ann", "exp": 1_700_000_000u64 });
        let token = key.sign(&claims);
        assert!(is_jwt(&token), "{token}");
        let segments: Vec<&str> = token.split('.').collect();
        let header: Value =
            serde_json::from_slice(&BASE64URL.decode(segments[0]).unwrap()).unwrap();
        assert_eq!(header, json!({ "alg": "HS256", "typ": "at+jwt" }));
        let payload: Value =
            serde_json::from_slice(&BASE64URL.decode(segments[1]).unwrap()).unwrap();
        assert_eq!(payload, claims);
        let signing_input = format!("{}.{}", segments[0], segments[1]);
        assert_eq!(
            BASE64URL.decode(segments[2]).unwrap(),
            hmac_sha256(&key.0, signing_input.as_bytes())
        );
        // Another server's key signs the same claims differently.
        assert_ne!(SigningKey::random().sign(&claims), token);
        assert_eq!(format!("{key:?}"), "SigningKey(***)");
    }

    #[test]
    fn only_three_base64url_segments_look_like_a_jwt() {
        assert!(is_jwt("eyJh.eyJi.c2ln"));
        assert!(is_jwt("a-b_c.d.e"));
        assert!(!is_jwt("tk_0123456789abcdef"));
        assert!(!is_jwt("a.b"));
        assert!(!is_jwt("a.b.c.d"));
        assert!(!is_jwt("a..c"));
        assert!(!is_jwt("a.b+.c"));
        assert!(!is_jwt("a.b.c="));
    }
}
