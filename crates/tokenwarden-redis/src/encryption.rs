//! Encryption at rest of cached tokens: XChaCha20-Poly1305 with random nonces and key rotation.

use std::fmt;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Marks an encrypted value: `TWE1`, then the key id length (1 byte), the key id, the 24-byte
/// nonce and the ciphertext with its 16-byte tag.
pub(crate) const MAGIC: &[u8; 4] = b"TWE1";
const NONCE_LEN: usize = 24;

/// Encryption at rest for [`RedisTokenCache`](crate::RedisTokenCache) values.
///
/// Values are sealed with XChaCha20-Poly1305 under the current key, with a random 192-bit nonce
/// each time and the full Redis key as associated data, so a value copied to another key does not
/// decrypt. Each value names the key id it was sealed with; keys added with
/// [`with_old_key`](Encryption::with_old_key) still open old values, so keys rotate without a
/// flush: deploy the new key as current with the old one kept, and drop the old key once every
/// entry written with it has expired (at most one token lifetime later).
///
/// A value that does not decrypt (unknown key id, wrong key, tampering) is a cache miss. With
/// encryption configured, plaintext values are misses too, so nobody with write access to Redis
/// can plant a token.
///
/// ```
/// use tokenwarden_redis::Encryption;
///
/// let current = [7u8; 32]; // in production: 32 random bytes from your secret store
/// let previous = [3u8; 32];
/// let encryption = Encryption::new("2025-06", current).with_old_key("2025-01", previous);
/// assert_eq!(format!("{encryption:?}"), r#"Encryption { current: "2025-06", old: ["2025-01"] }"#);
/// ```
#[derive(Clone)]
pub struct Encryption {
    /// The first key is the current one (used for writing); all of them are tried for reading.
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl Encryption {
    /// Encryption with `key` as the current key, named `key_id` (1 to 255 bytes, stored in every
    /// value so readers know which key to use).
    pub fn new(key_id: &str, key: [u8; 32]) -> Self {
        Encryption {
            keys: vec![(key_id.to_owned(), XChaCha20Poly1305::new(&key.into()))],
        }
    }

    /// Adds a previous key that still decrypts values written with it; it is never used to write.
    pub fn with_old_key(mut self, key_id: &str, key: [u8; 32]) -> Self {
        self.keys
            .push((key_id.to_owned(), XChaCha20Poly1305::new(&key.into())));
        self
    }

    /// Checks the key ids: non-empty, at most 255 bytes, no duplicates.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (i, (id, _)) in self.keys.iter().enumerate() {
            if id.is_empty() || id.len() > usize::from(u8::MAX) {
                return Err(format!(
                    "encryption key id must be 1 to 255 bytes, got {} bytes",
                    id.len()
                ));
            }
            if self.keys[..i].iter().any(|(other, _)| other == id) {
                return Err(format!("encryption key id {id:?} is configured twice"));
            }
        }
        Ok(())
    }

    /// Seals `plaintext` for `redis_key` under the current key.
    pub(crate) fn seal(&self, redis_key: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let (id, cipher) = self.keys.first().ok_or(SealError)?;
        let id_len = u8::try_from(id.len()).map_err(|_| SealError)?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: redis_key.as_bytes(),
                },
            )
            .map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + id.len() + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(MAGIC);
        out.push(id_len);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens a value sealed by [`seal`](Encryption::seal) for the same `redis_key`.
    pub(crate) fn open(&self, redis_key: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(OpenError::Malformed)?;
        let (&id_len, rest) = rest.split_first().ok_or(OpenError::Malformed)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN {
            return Err(OpenError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(known, _)| known.as_bytes() == id)
            .ok_or(OpenError::UnknownKey)?;
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: redis_key.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Undecryptable)
    }
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.keys.iter().map(|(id, _)| id.as_str());
        f.debug_struct("Encryption")
            .field("current", &ids.next().unwrap_or_default())
            .field("old", &ids.collect::<Vec<_>>())
            .finish()
    }
}

/// Sealing failed (no key, or the cipher refused the input size).
#[derive(Debug)]
pub(crate) struct SealError;

/// Why a value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Not an encrypted envelope, or truncated.
    Malformed,
    /// Sealed with a key id this reader does not know.
    UnknownKey,
    /// Wrong key, another Redis key's value, or tampered with.
    Undecryptable,
}

impl OpenError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OpenError::Malformed => "malformed encrypted value",
            OpenError::UnknownKey => "encrypted with an unknown key id",
            OpenError::Undecryptable => "does not decrypt (wrong key or moved/tampered value)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_with_rotation() {
        let k1 = Encryption::new("k1", [1; 32]);
        let sealed = k1.seal("rk", b"hello").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        let k2 = Encryption::new("k2", [2; 32]).with_old_key("k1", [1; 32]);
        assert_eq!(k2.open("rk", &sealed).unwrap(), b"hello");
        assert_eq!(
            Encryption::new("k2", [2; 32]).open("rk", &sealed),
            Err(OpenError::UnknownKey)
        );
        assert_eq!(
            Encryption::new("k1", [9; 32]).open("rk", &sealed),
            Err(OpenError::Undecryptable)
        );
    }

    #[test]
    fn a_value_moved_to_another_key_does_not_open() {
        let e = Encryption::new("k", [1; 32]);
        let sealed = e.seal("a", b"x").unwrap();
        assert_eq!(e.open("b", &sealed), Err(OpenError::Undecryptable));
        assert_eq!(e.open("a", &sealed[..10]), Err(OpenError::Malformed));
    }

    #[test]
    fn nonces_are_random() {
        let e = Encryption::new("k", [1; 32]);
        assert_ne!(e.seal("a", b"x").unwrap(), e.seal("a", b"x").unwrap());
    }

    #[test]
    fn key_ids_are_validated() {
        assert!(Encryption::new("k", [1; 32]).validate().is_ok());
        assert!(Encryption::new("", [1; 32]).validate().is_err());
        assert!(
            Encryption::new(&"x".repeat(256), [1; 32])
                .validate()
                .is_err()
        );
        let dup = Encryption::new("k", [1; 32]).with_old_key("k", [2; 32]);
        assert!(dup.validate().is_err());
    }
}
