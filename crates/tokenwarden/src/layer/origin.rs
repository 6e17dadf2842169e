use http::Uri;

use crate::Error;

/// Where tokens may be sent: a list of exact origins (scheme, host, port), or anywhere.
#[derive(Clone, Debug)]
pub(crate) enum Origins {
    Any,
    List {
        origins: Vec<Origin>,
        /// Every origin's authority as text (`host:port`, and `host` alone for a default port)
        /// with its scheme: compared byte for byte on the hot path, before any parsing.
        spellings: Vec<(bool, String)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
}

impl Origin {
    /// Parses `https://host[:port]` (a trailing `/` is allowed; a path, query or user info is not).
    pub(crate) fn parse(text: &str) -> Result<Origin, Error> {
        let bad = |why: &str| Error::Config(format!("invalid origin `{text}`: {why}"));
        let uri: Uri = text.parse().map_err(|_| bad("not a URI"))?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("an origin has no path or query"));
        }
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Origin { https, host, port })
    }

    fn spellings(&self) -> impl Iterator<Item = (bool, String)> + '_ {
        let default_port = self.port == if self.https { 443 } else { 80 };
        let bare = default_port.then(|| (self.https, self.host.clone()));
        std::iter::once((self.https, format!("{}:{}", self.host, self.port))).chain(bare)
    }

    fn matches(&self, https: bool, uri: &Uri) -> bool {
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        https == self.https && port == self.port && host.eq_ignore_ascii_case(&self.host)
    }
}

impl Origins {
    pub(crate) fn list(origins: Vec<Origin>) -> Origins {
        let spellings = origins.iter().flat_map(Origin::spellings).collect();
        Origins::List { origins, spellings }
    }

    /// Whether a token may be attached to a request for `uri`. A URI without scheme and host (a
    /// path only) never matches a list: where it goes is not known here.
    #[inline]
    pub(crate) fn allows(&self, uri: &Uri) -> bool {
        let Origins::List { origins, spellings } = self else {
            return true;
        };
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return false,
        };
        let Some(authority) = uri.authority() else {
            return false;
        };
        let text = authority.as_str().as_bytes();
        spellings
            .iter()
            .any(|(h, a)| *h == https && same_bytes(a.as_bytes(), text))
            || origins.iter().any(|o| o.matches(https, uri))
    }
}

/// `a == b`, without a call to `memcmp` for the short strings an authority is: compared eight
/// bytes at a time, the last eight overlapping.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() < 8 || a.len() > 64 {
        return a == b;
    }
    let last = |s: &[u8]| s.last_chunk::<8>().copied();
    let (a_chunks, _) = a.as_chunks::<8>();
    let (b_chunks, _) = b.as_chunks::<8>();
    a_chunks.iter().zip(b_chunks).all(|(x, y)| x == y) && last(a) == last(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(origins: &[&str], uri: &str) -> bool {
        let list = origins.iter().map(|o| Origin::parse(o).unwrap()).collect();
        Origins::list(list).allows(&uri.parse().unwrap())
    }

    #[test]
    fn exact_origin_matching() {
        let api = ["https://api.example.com"];
        assert!(allows(&api, "https://api.example.com/v1/x?y=1"));
        assert!(allows(&api, "https://API.example.com:443/"));
        assert!(
            allows(&api, "HTTPS://api.example.com/"),
            "schemes ignore case"
        );
        assert!(!allows(&api, "HTTP://api.example.com/"));
        assert!(!allows(&api, "http://api.example.com/"), "scheme differs");
        assert!(
            !allows(&api, "https://api.example.com:8443/"),
            "port differs"
        );
        assert!(
            !allows(&api, "https://api.example.com.evil.net/"),
            "suffix attack"
        );
        assert!(!allows(&api, "https://evil.net/api.example.com"));
        assert!(!allows(&api, "/relative/path"));
        assert!(allows(
            &["http://127.0.0.1:8080/"],
            "http://127.0.0.1:8080/x"
        ));
    }

    #[test]
    fn same_bytes_is_equality() {
        let texts = [
            "",
            "a",
            "b",
            "1234567",
            "12345678",
            "12345679",
            "127.0.0.1:8080",
            "127.0.0.1:8081",
            "227.0.0.1:8080",
            "api.example.com",
            "api.example.con",
            "bpi.example.com",
        ];
        for a in texts {
            for b in texts {
                assert_eq!(same_bytes(a.as_bytes(), b.as_bytes()), a == b, "{a} vs {b}");
            }
        }
        let long = "x".repeat(100);
        assert!(same_bytes(long.as_bytes(), long.as_bytes()));
    }

    #[test]
    fn rejects_origins_that_are_not_origins() {
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://x/path",
            "https://u:p@x",
            "https://x/?q",
        ] {
            assert!(matches!(Origin::parse(bad), Err(Error::Config(_))), "{bad}");
        }
    }
}
