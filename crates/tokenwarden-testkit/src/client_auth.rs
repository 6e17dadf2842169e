//! Form requests from confidential clients (token and revocation endpoints): parsing, client
//! authentication (`client_secret_basic`, `client_secret_post`) and what tests may see of them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};

use crate::oauth_error::OAuthError;
use crate::state::State;
use crate::{AuthMethod, TokenRequestRecord};

/// Form fields that are secrets of the client or the user, never recorded for tests.
const SECRET_FIELDS: [&str; 2] = ["client_secret", "password"];

/// What an `Authorization: Basic` header held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Basic {
    Credentials { id: String, secret: String },
    Malformed,
}

impl Basic {
    /// `None` when there is no Basic authorization header.
    fn parse(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(AUTHORIZATION)?;
        let Ok(value) = value.to_str() else {
            return Some(Self::Malformed);
        };
        let (scheme, credentials) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        Some(Self::decode(credentials.trim()).unwrap_or(Self::Malformed))
    }

    /// Base64, then `id:secret`, then form-urldecoding of each part (RFC 6749 §2.3.1).
    fn decode(credentials: &str) -> Option<Self> {
        let decoded = String::from_utf8(BASE64.decode(credentials).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some(Self::Credentials {
            id: form_decode(id)?,
            secret: form_decode(secret)?,
        })
    }
}

/// Decodes `application/x-www-form-urlencoded` text: `+` is a space, `%XX` a byte.
/// `None` for an invalid escape or invalid UTF-8.
fn form_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        bytes.push(match byte {
            b'+' => b' ',
            b'%' => {
                let high = char::from(input.next()?).to_digit(16)?;
                let low = char::from(input.next()?).to_digit(16)?;
                // Two hex digits are at most 0xff, so this cannot truncate.
                u8::try_from(high * 16 + low).ok()?
            }
            other => other,
        });
    }
    String::from_utf8(bytes).ok()
}

/// A form request from a client, parsed but not yet judged.
#[derive(Debug)]
pub(crate) struct FormRequest {
    basic: Option<Basic>,
    form: Vec<(String, String)>,
    form_content_type: bool,
}

impl FormRequest {
    pub(crate) fn parse(headers: &HeaderMap, body: &Bytes) -> Self {
        let form_content_type = headers.get(CONTENT_TYPE).is_none_or(|value| {
            value.to_str().is_ok_and(|value| {
                value.split(';').next().is_some_and(|mime| {
                    mime.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            })
        });
        Self {
            basic: Basic::parse(headers),
            form: form_urlencoded::parse(body)
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect(),
            form_content_type,
        }
    }

    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The field's value, unless it is missing or empty (RFC 6749 §3.1: a parameter sent
    /// without a value is treated as omitted).
    pub(crate) fn non_empty_field(&self, name: &str) -> Option<&str> {
        self.field(name).filter(|value| !value.is_empty())
    }

    /// Every value of the field `name`, in request order.
    pub(crate) fn fields<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.form
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The client id the request claims, whether or not it authenticates.
    pub(crate) fn client_id(&self) -> Option<&str> {
        match &self.basic {
            Some(Basic::Credentials { id, .. }) => Some(id),
            Some(Basic::Malformed) => None,
            None => self.field("client_id"),
        }
    }

    pub(crate) fn auth_method(&self) -> AuthMethod {
        if self.basic.is_some() {
            AuthMethod::Basic
        } else if self.field("client_secret").is_some() {
            AuthMethod::Post
        } else {
            AuthMethod::None
        }
    }

    /// The request as tests see it: never with the client secret or the user's password.
    pub(crate) fn record(&self) -> TokenRequestRecord {
        TokenRequestRecord {
            auth_method: self.auth_method(),
            form: self
                .form
                .iter()
                .filter(|(key, _)| !SECRET_FIELDS.contains(&key.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Checks what every endpoint asks of a form: its content type, and that none of
    /// `single_valued` is repeated (RFC 6749 §3.1, §3.2).
    pub(crate) fn check_form(&self, single_valued: &[&str]) -> Result<(), OAuthError> {
        if !self.form_content_type {
            return Err(OAuthError::invalid_request(
                "content type must be application/x-www-form-urlencoded",
            ));
        }
        if let Some(name) = single_valued
            .iter()
            .find(|name| self.fields(name).nth(1).is_some())
        {
            return Err(OAuthError::invalid_request(format!(
                "parameter {name} is repeated"
            )));
        }
        Ok(())
    }

    /// Checks the client's credentials (RFC 6749 §2.3.1) and returns its id.
    pub(crate) fn authenticate(&self, state: &State) -> Result<&str, OAuthError> {
        match &self.basic {
            Some(Basic::Malformed) => Err(OAuthError::invalid_client(
                "malformed basic credentials",
                true,
            )),
            Some(Basic::Credentials { id, secret }) => {
                if self.field("client_secret").is_some() {
                    return Err(OAuthError::invalid_request(
                        "more than one client authentication method",
                    ));
                }
                if self.field("client_id").is_some_and(|form_id| form_id != id) {
                    return Err(OAuthError::invalid_request(
                        "client_id does not match the basic credentials",
                    ));
                }
                if state.authenticate(id, secret) {
                    Ok(id)
                } else {
                    Err(OAuthError::invalid_client(
                        "client authentication failed",
                        true,
                    ))
                }
            }
            None => match (self.field("client_id"), self.field("client_secret")) {
                (Some(id), Some(secret)) if state.authenticate(id, secret) => Ok(id),
                (Some(_), Some(_)) => Err(OAuthError::invalid_client(
                    "client authentication failed",
                    false,
                )),
                _ => Err(OAuthError::invalid_client(
                    "client authentication required",
                    false,
                )),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers_with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn basic_credentials_are_url_decoded_after_base64() {
        // "my%20client:s%3Acr+t" -> id "my client", secret "s:cr t"
        let encoded = BASE64.encode("my%20client:s%3Acr+t");
        let headers = headers_with_authorization(&format!("Basic {encoded}"));
        assert_eq!(
            Basic::parse(&headers),
            Some(Basic::Credentials {
                id: "my client".into(),
                secret: "s:cr t".into()
            })
        );
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_other_schemes_are_ignored() {
        let encoded = BASE64.encode("a:b");
        let headers = headers_with_authorization(&format!("bAsIc {encoded}"));
        assert!(matches!(
            Basic::parse(&headers),
            Some(Basic::Credentials { .. })
        ));
        assert_eq!(Basic::parse(&headers_with_authorization("Bearer x")), None);
    }

    #[test]
    fn malformed_basic_credentials_are_reported() {
        for value in ["Basic !!!", "Basic bm9jb2xvbg==", "Basic YTolWlo="] {
            // not base64; "nocolon"; "a:%ZZ"
            assert_eq!(
                Basic::parse(&headers_with_authorization(value)),
                Some(Basic::Malformed),
                "{value}"
            );
        }
    }

    #[test]
    fn form_decode_handles_plus_percent_and_rejects_bad_escapes() {
        assert_eq!(form_decode("a+b%2Bc%3d").as_deref(), Some("a b+c="));
        assert_eq!(form_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(form_decode("%4"), None);
        assert_eq!(form_decode("%FF"), None);
    }

    #[test]
    fn record_drops_the_client_secret_and_the_password() {
        let request = FormRequest::parse(
            &HeaderMap::new(),
            &Bytes::from_static(
                b"grant_type=password&client_id=a&client_secret=s3cret&username=ann&password=pw",
            ),
        );
        let record = request.record();
        assert_eq!(record.auth_method, AuthMethod::Post);
        assert_eq!(
            record.form,
            [
                ("grant_type".to_owned(), "password".to_owned()),
                ("client_id".to_owned(), "a".to_owned()),
                ("username".to_owned(), "ann".to_owned()),
            ]
        );
    }

    #[test]
    fn empty_fields_count_as_omitted() {
        let request = FormRequest::parse(&HeaderMap::new(), &Bytes::from_static(b"scope=&a=b"));
        assert_eq!(request.field("scope"), Some(""));
        assert_eq!(request.non_empty_field("scope"), None);
        assert_eq!(request.non_empty_field("a"), Some("b"));
    }
}
