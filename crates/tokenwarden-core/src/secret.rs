use std::fmt;
use std::sync::Arc;

/// A secret string (access token, refresh token, client secret) that never prints itself.
///
/// `Debug` and `Display` print `***`; the value is reached only through [`Secret::expose_secret`], so a
/// secret cannot end up in a log line by accident. Cloning is cheap (the value is shared).
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Call this only where the value is sent or stored.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// A short, non-reversible fingerprint (first 8 hex digits of the SHA-256) for correlating logs.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Compares in time independent of where the values differ, so a comparison leaks no prefix.
impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose_secret(), "hunter2");
    }

    #[test]
    fn equality_compares_values() {
        assert_eq!(Secret::new("a"), Secret::new("a"));
        assert_ne!(Secret::new("a"), Secret::new("b"));
        assert_ne!(Secret::new("a"), Secret::new("ab"));
    }

    #[test]
    fn fingerprint_is_short_and_stable() {
        let fp = Secret::new("hunter2").fingerprint();
        assert_eq!(fp.len(), 8);
        assert_eq!(fp, Secret::new("hunter2").fingerprint());
        assert!(!fp.contains("hunter2"));
    }
}
