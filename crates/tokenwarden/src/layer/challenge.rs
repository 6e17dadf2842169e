//! What a `401 Unauthorized` says about the token: its `WWW-Authenticate` challenges.

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// Whether a 401 says the token is fine but lacks a scope (RFC 6750 §3.1
/// `error="insufficient_scope"`, which some APIs send with 401 rather than 403). A new token
/// of the same scope would be refused the same way, so such a 401 neither invalidates the
/// token nor is replayed.
pub(crate) fn is_insufficient_scope(headers: &HeaderMap) -> bool {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| {
            auth_params(value).any(|(name, value)| {
                name.eq_ignore_ascii_case("error") && value == "insufficient_scope"
            })
        })
}

/// The `name=value` auth-params of a `WWW-Authenticate` value (RFC 9110 §11.6.1), of every
/// challenge in it, with quoted values unquoted; scheme names and token68 values are skipped.
fn auth_params(value: &str) -> impl Iterator<Item = (&str, String)> {
    let mut rest = value;
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                return None;
            }
            let end = rest.find(['=', ',', ' ', '\t']).unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            let after_spaces = after.trim_start_matches([' ', '\t']);
            let Some(after_equals) = after_spaces.strip_prefix('=') else {
                // A scheme name (or a token68 without padding): skip it.
                rest = after;
                continue;
            };
            let after_equals = after_equals.trim_start_matches([' ', '\t']);
            if name.is_empty() || after_equals.starts_with('=') {
                // token68 padding (`abc==`): not a parameter.
                rest = after_equals.trim_start_matches('=');
                continue;
            }
            if let Some(quoted) = after_equals.strip_prefix('"') {
                let mut unquoted = String::new();
                let mut chars = quoted.char_indices();
                let mut closed = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                unquoted.push(escaped);
                            }
                        }
                        '"' => {
                            closed = i + 1;
                            break;
                        }
                        c => unquoted.push(c),
                    }
                }
                rest = &quoted[closed.min(quoted.len())..];
                return Some((name, unquoted));
            }
            let end = after_equals
                .find([',', ' ', '\t'])
                .unwrap_or(after_equals.len());
            let (token, after_token) = after_equals.split_at(end);
            rest = after_token;
            return Some((name, token.to_owned()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn says_insufficient_scope(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(value).unwrap());
        }
        is_insufficient_scope(&headers)
    }

    #[test]
    fn insufficient_scope_is_told_apart_from_invalid_token() {
        assert!(says_insufficient_scope(&[
            r#"Bearer realm="api", error="insufficient_scope", scope="admin""#
        ]));
        assert!(says_insufficient_scope(&[
            "Bearer error=insufficient_scope"
        ]));
        assert!(says_insufficient_scope(&[
            r#"Bearer ERROR = "insufficient_scope""#
        ]));
        assert!(says_insufficient_scope(&[
            "Basic realm=\"x\"",
            r#"Bearer error="insufficient_scope""#
        ]));
        assert!(says_insufficient_scope(&[
            r#"Basic realm="x", Bearer error="insufficient_scope""#
        ]));
        assert!(!says_insufficient_scope(&[
            r#"Bearer error="invalid_token""#
        ]));
        assert!(!says_insufficient_scope(&["Bearer"]));
        assert!(!says_insufficient_scope(&[]));
        // Not fooled by the words inside another parameter's quoted value.
        assert!(!says_insufficient_scope(&[
            r#"Bearer error="invalid_token", error_description="not error=insufficient_scope""#
        ]));
        assert!(!says_insufficient_scope(&[
            r#"Bearer error_description="insufficient_scope""#
        ]));
        // A token68 challenge is no parameter.
        assert!(!says_insufficient_scope(&[
            "Negotiate abc==, Bearer error=\"invalid_token\""
        ]));
    }
}
