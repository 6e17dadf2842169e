//! Where tokens may go: the allow-list, checked against the request's URI and its `Host`
//! header. Anything that cannot be read exactly is refused.

use std::fmt;

use http::header::HOST;
use http::{HeaderMap, Uri};

use crate::Error;

/// Where tokens may be sent: a list of exact origins (scheme, host, port), or anywhere.
#[derive(Clone, Debug)]
pub(crate) enum Origins {
    Any,
    List(Vec<Origin>),
}

/// One origin: scheme, lower-case host, port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: String,
    port: u16,
    /// How a URI's authority usually spells this origin (`host:port`, and `host` alone for the
    /// default port): compared as text first, so the common request is not parsed.
    spellings: Vec<String>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Why a request gets no token.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its origin is not on the list (or cannot be read: no scheme, no host, a bad port).
    Origin,
    /// Its `Host` header names another origin than its URI.
    HostHeader,
}

impl Origin {
    /// Parses `https://host[:port]` (a trailing `/` is allowed; a path, query or user info is not).
    pub(crate) fn parse(text: &str) -> Result<Origin, Error> {
        let bad = |why: &str| Error::Config(format!("invalid origin `{text}`: {why}"));
        let uri: Uri = text
            .parse()
            .map_err(|_| bad("not an absolute URL such as https://api.example.com"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("an origin has no path or query"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("user info is not allowed"));
        }
        Origin::of(&uri)
            .ok_or_else(|| bad("the scheme must be http or https, with a host and a valid port"))
    }

    /// The origin a URI names, if it names one exactly.
    fn of(uri: &Uri) -> Option<Origin> {
        let target = Target::of(uri)?;
        let host = target.host.to_ascii_lowercase();
        let mut spellings = vec![format!("{host}:{}", target.port)];
        if target.port == if target.https { 443 } else { 80 } {
            spellings.push(host.clone());
        }
        Some(Origin {
            https: target.https,
            host,
            port: target.port,
            spellings,
        })
    }

    #[inline]
    fn spelled(&self, https: bool, authority: &str) -> bool {
        self.https == https && self.spellings.iter().any(|s| s == authority)
    }

    fn target(&self) -> Target<'_> {
        Target {
            https: self.https,
            host: &self.host,
            port: self.port,
        }
    }

    fn is(&self, target: &Target<'_>) -> bool {
        self.https == target.https
            && self.port == target.port
            && self.host.eq_ignore_ascii_case(target.host)
    }
}

/// Where a request goes, read from its URI without copying.
#[derive(Clone, Copy, Debug)]
struct Target<'a> {
    https: bool,
    host: &'a str,
    port: u16,
}

impl<'a> Target<'a> {
    #[inline]
    fn of(uri: &'a Uri) -> Option<Target<'a>> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let (host, port) = host_and_port(uri.authority()?.as_str(), https)?;
        Some(Target { https, host, port })
    }
}

/// The host and port of an authority (`[user@]host[:port]`), the port defaulting to the
/// scheme's. `None` for a port that is empty, not a number or out of range: such a request
/// goes nowhere this check can vouch for.
fn host_and_port(authority: &str, https: bool) -> Option<(&str, u16)> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (address, rest) = v6.split_once(']')?;
            (&host_port[..address.len() + 2], rest)
        }
        None => match host_port.find(':') {
            Some(i) => (&host_port[..i], &host_port[i..]),
            None => (host_port, ""),
        },
    };
    if host.is_empty() {
        return None;
    }
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => {
            if https {
                443
            } else {
                80
            }
        }
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse::<u16>().ok()?
        }
        _ => return None,
    };
    Some((host, port))
}

impl Origins {
    /// Whether a token may be attached to this request: its URI names an allowed origin
    /// exactly, and a `Host` header, if present, names the same origin. A URI without scheme
    /// and host (a path only) never matches a list: where it goes is not known here.
    #[inline]
    pub(crate) fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refused> {
        if let Origins::List(list) = self
            && let Some(https) = match uri.scheme_str() {
                Some("https") => Some(true),
                Some("http") => Some(false),
                _ => None,
            }
            && let Some(authority) = uri.authority()
            && let Some(origin) = list.iter().find(|o| o.spelled(https, authority.as_str()))
        {
            return check_host_header(&origin.target(), headers);
        }
        // Other spellings (upper case, an explicit default port, user info) are parsed.
        let target = Target::of(uri);
        match (self, target) {
            // Anywhere, but a request that says two things about where it goes is refused.
            (Origins::Any, Some(target)) => check_host_header(&target, headers),
            (Origins::Any, None) if uri.authority().is_none() => Ok(()),
            (Origins::List(list), Some(target)) if list.iter().any(|o| o.is(&target)) => {
                check_host_header(&target, headers)
            }
            (Origins::List(_) | Origins::Any, _) => Err(Refused::Origin),
        }
    }
}

/// HTTP/1 servers route by the `Host` header, not by the address the client connected to: a
/// token must not ride a request whose `Host` names another origin.
#[inline]
fn check_host_header(target: &Target<'_>, headers: &HeaderMap) -> Result<(), Refused> {
    // Most requests carry no `Host` (the client writes it from the URI) and a handful of
    // headers: scanning their names is cheaper than hashing one.
    let Some(name) = headers.keys().find(|name| *name == HOST) else {
        return Ok(());
    };
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Refused::HostHeader);
    };
    let text = value.to_str().map_err(|_| Refused::HostHeader)?;
    if text.contains('@') {
        return Err(Refused::HostHeader);
    }
    match host_and_port(text, target.https) {
        Some((host, port)) if port == target.port && host.eq_ignore_ascii_case(target.host) => {
            Ok(())
        }
        _ => Err(Refused::HostHeader),
    }
}

/// The scheme and authority of `uri`, for a log line: never its path or query, which may hold
/// anything.
pub(crate) fn describe(uri: &Uri) -> String {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            let host_port = authority
                .as_str()
                .rsplit_once('@')
                .map_or(authority.as_str(), |(_, hp)| hp);
            format!("{scheme}://{host_port}")
        }
        _ => "(a URI without scheme and host)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn list(origins: &[&str]) -> Origins {
        Origins::List(origins.iter().map(|o| Origin::parse(o).unwrap()).collect())
    }

    fn allows(origins: &[&str], uri: &str) -> bool {
        list(origins)
            .check(&uri.parse().unwrap(), &HeaderMap::new())
            .is_ok()
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
        assert!(allows(&["http://[::1]:8080"], "http://[::1]:8080/x"));
        assert!(!allows(&["http://[::1]:8080"], "http://[::2]:8080/x"));
    }

    #[test]
    fn a_port_that_cannot_be_read_is_not_the_default_port() {
        let api = ["https://api.example.com"];
        for odd in [
            "https://api.example.com:99999/",
            "https://api.example.com:65979/",
            "https://api.example.com:/",
            "https://api.example.com:44a/",
            "https://api.example.com:-443/",
        ] {
            // Some of these the URI parser refuses already; the rest the check refuses.
            if let Ok(uri) = odd.parse::<Uri>() {
                assert!(
                    list(&api).check(&uri, &HeaderMap::new()).is_err(),
                    "{odd} must get no token"
                );
            }
        }
        assert!(
            allows(&api, "https://api.example.com:0443/"),
            "leading zeros are a number"
        );
    }

    #[test]
    fn a_host_header_must_name_the_same_origin() {
        let api = list(&["https://api.example.com"]);
        let uri: Uri = "https://api.example.com/x".parse().unwrap();
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.append(HOST, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert!(api.check(&uri, &host("api.example.com")).is_ok());
        assert!(api.check(&uri, &host("API.example.com:443")).is_ok());
        for other in [
            "evil.example.com",
            "api.example.com:8443",
            "api.example.com:99999",
            "user@api.example.com",
            "",
        ] {
            assert_eq!(
                api.check(&uri, &host(other)),
                Err(Refused::HostHeader),
                "{other:?}"
            );
        }
        let mut two = host("api.example.com");
        two.append(HOST, HeaderValue::from_static("evil.example.com"));
        assert_eq!(api.check(&uri, &two), Err(Refused::HostHeader));
        // Even "any origin" refuses a request that names two.
        assert_eq!(
            Origins::Any.check(&uri, &host("evil.example.com")),
            Err(Refused::HostHeader)
        );
        assert!(
            Origins::Any
                .check(&"/path".parse().unwrap(), &HeaderMap::new())
                .is_ok()
        );
    }

    #[test]
    fn rejects_origins_that_are_not_origins() {
        for bad in [
            "api.example.com",
            "ftp://x",
            "https://x/path",
            "https://u:p@x",
            "https://x/?q",
            "https://x:99999",
        ] {
            assert!(matches!(Origin::parse(bad), Err(Error::Config(_))), "{bad}");
        }
    }

    #[test]
    fn descriptions_show_no_path_or_user_info() {
        assert_eq!(
            describe(
                &"https://u:p@api.example.com:8443/secret?q=1"
                    .parse()
                    .unwrap()
            ),
            "https://api.example.com:8443"
        );
    }
}
