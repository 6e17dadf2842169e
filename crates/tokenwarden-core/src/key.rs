use std::fmt;
use std::sync::Arc;

/// The key a token is cached under: namespace, client name and the grant's parameters.
///
/// The textual form is part of tokenwarden's compatibility promise: replicas of different versions
/// sharing one Redis compute the same key for the same client and parameters. It looks like
/// `tokenwarden:v1:billing;resource=https%3A%2F%2Fapi;scope=a,b`: scopes and resources are sorted and
/// de-duplicated, extra parameters sorted by name, and every piece is percent-escaped so no value
/// can forge a separator. Secret inputs (a subject token) go in only as a SHA-256 digest
/// ([`CacheKeyBuilder::hashed_part`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// The default namespace.
    pub const DEFAULT_NAMESPACE: &'static str = "tokenwarden";

    /// Starts a key for the named client.
    pub fn builder(client: &str) -> CacheKeyBuilder {
        CacheKeyBuilder {
            namespace: CacheKey::DEFAULT_NAMESPACE.to_owned(),
            client: client.to_owned(),
            scopes: Vec::new(),
            resources: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheKey").field(&&*self.0).finish()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds a [`CacheKey`].
#[derive(Clone, Debug)]
pub struct CacheKeyBuilder {
    namespace: String,
    client: String,
    scopes: Vec<String>,
    resources: Vec<String>,
    parts: Vec<(String, String)>,
}

impl CacheKeyBuilder {
    /// Sets the namespace (default `tokenwarden`), to keep apart applications sharing one store.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    /// Adds scopes; each item may itself hold several space-separated scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for s in scopes {
            self.scopes
                .extend(s.as_ref().split_ascii_whitespace().map(str::to_owned));
        }
        self
    }

    /// Adds resource indicators (RFC 8707).
    pub fn resources<I, S>(mut self, resources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.resources
            .extend(resources.into_iter().map(|r| r.as_ref().to_owned()));
        self
    }

    /// Adds a named part (an audience, an extra form parameter, a user id).
    pub fn part(mut self, name: &str, value: &str) -> Self {
        self.parts.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Adds a named part whose value is secret (a subject token): only its SHA-256 goes in the key.
    pub fn hashed_part(self, name: &str, secret_value: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(secret_value.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.part(name, &format!("sha256:{hex}"))
    }

    /// Builds the key.
    pub fn build(mut self) -> CacheKey {
        let mut out = String::with_capacity(64);
        escape_into(&mut out, &self.namespace);
        out.push_str(":v1:");
        escape_into(&mut out, &self.client);
        self.scopes.sort_unstable();
        self.scopes.dedup();
        self.resources.sort_unstable();
        self.resources.dedup();
        // Parts are sorted by name, then value, so the order calls were made in does not matter.
        self.parts.sort_unstable();
        self.parts.dedup();
        // (is a named part, name, values); named parts are written with an `x.` prefix, so a part
        // named `scope` cannot pass for the scopes.
        let mut fields: Vec<(bool, &str, Vec<&str>)> = Vec::new();
        if !self.resources.is_empty() {
            let values = self.resources.iter().map(String::as_str).collect();
            fields.push((false, "resource", values));
        }
        if !self.scopes.is_empty() {
            fields.push((
                false,
                "scope",
                self.scopes.iter().map(String::as_str).collect(),
            ));
        }
        for (name, value) in &self.parts {
            match fields
                .iter_mut()
                .find(|(p, n, _)| *p && *n == name.as_str())
            {
                Some((_, _, values)) => values.push(value),
                None => fields.push((true, name.as_str(), vec![value])),
            }
        }
        fields.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (is_part, name, values) in fields {
            out.push(';');
            if is_part {
                out.push_str("x.");
            }
            escape_into(&mut out, name);
            out.push('=');
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                escape_into(&mut out, v);
            }
        }
        CacheKey(out.into())
    }
}

fn escape_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_is_stable() {
        // This exact text is a compatibility promise: replicas of different versions share keys.
        let key = CacheKey::builder("billing")
            .scopes(["invoices.write invoices.read", "invoices.read"])
            .resources(["https://api.example.com/"])
            .part("audience", "api")
            .build();
        assert_eq!(
            key.as_str(),
            "tokenwarden:v1:billing;resource=https%3A%2F%2Fapi.example.com%2F;scope=invoices.read,invoices.write;x.audience=api"
        );
        assert_eq!(
            CacheKey::builder("a b").build().as_str(),
            "tokenwarden:v1:a%20b"
        );
        assert_eq!(
            CacheKey::builder("c").namespace("ns").build().as_str(),
            "ns:v1:c"
        );
    }

    #[test]
    fn order_of_scopes_and_parts_does_not_matter() {
        let a = CacheKey::builder("c")
            .scopes(["b a"])
            .part("k2", "v")
            .part("k1", "v")
            .build();
        let b = CacheKey::builder("c")
            .scopes(["a", "b"])
            .part("k1", "v")
            .part("k2", "v")
            .build();
        assert_eq!(a, b);
    }

    #[test]
    fn values_cannot_forge_separators() {
        let forged = CacheKey::builder("c;scope=admin").build();
        let real = CacheKey::builder("c").scopes(["admin"]).build();
        assert_ne!(forged, real);
        let part_named_scope = CacheKey::builder("c").part("scope", "admin").build();
        assert_ne!(part_named_scope, real);
    }

    #[test]
    fn hashed_parts_do_not_contain_the_secret() {
        let key = CacheKey::builder("c")
            .hashed_part("subject", "user-token-value")
            .build();
        assert!(!key.as_str().contains("user-token-value"));
        assert!(key.as_str().contains("x.subject=sha256%3A"));
    }
}
