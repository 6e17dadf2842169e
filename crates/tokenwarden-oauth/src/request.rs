//! The HTTP request of a token request: the grant's form, client authentication and encoding,
//! the same for every grant.

use crate::{ClientAuth, ClientConfig, Error, Form};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;

/// The HTTP request posting `form` to `endpoint`, authenticated as `client` (token and
/// revocation requests alike).
pub(crate) fn form_post(
    client: &ClientConfig,
    endpoint: &Uri,
    mut form: Form,
) -> Result<Request<Full<Bytes>>, Error> {
    let mut authorization = None;
    match (client.auth(), client.client_secret()) {
        (ClientAuth::SecretBasic, Some(secret)) => {
            authorization = Some(basic_authorization(
                client.client_id(),
                secret.expose_secret(),
            ));
        }
        (ClientAuth::SecretPost, Some(secret)) => {
            form.push("client_id", client.client_id());
            form.push("client_secret", secret.expose_secret());
        }
        (ClientAuth::None, _) => form.push("client_id", client.client_id()),
        // `ClientConfigBuilder::build` refuses a secret-based method without a secret.
        (ClientAuth::SecretBasic | ClientAuth::SecretPost, None) => {
            return Err(Error::config(format!(
                "{} needs a client secret",
                client.auth().as_str()
            )));
        }
    }
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(endpoint.clone())
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )
        .header(ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    // The builder can only fail on a bad method, URI or header, all of which are fixed or
    // already validated; the message stays generic so no form value can end up in it.
    builder
        .body(Full::new(Bytes::from(form.encode())))
        .map_err(|_| Error::config("could not build the request"))
}

/// RFC 6749 §2.3.1: the id and secret are form-encoded before they are joined and base64-encoded,
/// so a `:` in either cannot move the split point.
pub(crate) fn basic_authorization(client_id: &str, secret: &str) -> HeaderValue {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let encoded = STANDARD.encode(format!("{id}:{secret}"));
    // Base64 output is always a valid header value.
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn grant_form() -> Form {
        let mut form = Form::default();
        form.push("grant_type", "client_credentials");
        form
    }

    #[test]
    fn basic_authorization_form_encodes_before_base64() {
        let value = basic_authorization("my:client id+%é", "p:a ss+%w€rd");
        assert!(value.is_sensitive());
        let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(
            decoded,
            "my%3Aclient+id%2B%25%C3%A9:p%3Aa+ss%2B%25w%E2%82%ACrd"
        );
        // The split point is the only raw `:`, and the server recovers the exact values.
        let (id, secret) = decoded.split_once(':').unwrap();
        let unescape = |s: &str| {
            form_urlencoded::parse(format!("v={s}").as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned()
        };
        assert_eq!(unescape(id), "my:client id+%é");
        assert_eq!(unescape(secret), "p:a ss+%w€rd");
    }

    #[test]
    fn basic_authorization_of_plain_values_matches_rfc_example() {
        // RFC 6749 §2.3.1 example: client id `s6BhdRkqt3`, secret `7Fjfp0ZBr1KtDRbnfVdmIw`.
        let value = basic_authorization("s6BhdRkqt3", "7Fjfp0ZBr1KtDRbnfVdmIw");
        assert_eq!(value, "Basic czZCaGRSa3F0Mzo3RmpmcDBaQnIxS3REUmJuZlZkbUl3");
    }

    async fn body_of(req: Request<Full<Bytes>>) -> (http::request::Parts, String) {
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn secret_basic_request() {
        let c = ClientConfig::builder("https://auth.example.com/token", "app")
            .client_secret("pw")
            .build()
            .unwrap();
        let (parts, body) =
            body_of(form_post(&c, c.token_endpoint().unwrap(), grant_form()).unwrap()).await;
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "https://auth.example.com/token");
        assert_eq!(
            parts.headers[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(parts.headers[ACCEPT], "application/json");
        assert_eq!(
            parts.headers[AUTHORIZATION],
            basic_authorization("app", "pw")
        );
        assert_eq!(body, "grant_type=client_credentials");
    }

    #[tokio::test]
    async fn secret_post_and_public_clients_put_the_id_in_the_form() {
        let post = ClientConfig::builder("https://a.example/t", "my app")
            .auth(ClientAuth::SecretPost)
            .client_secret("p&w=d")
            .build()
            .unwrap();
        let mut form = grant_form();
        form.push("scope", "a b");
        let (parts, body) =
            body_of(form_post(&post, post.token_endpoint().unwrap(), form).unwrap()).await;
        assert!(!parts.headers.contains_key(AUTHORIZATION));
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=a+b&client_id=my+app&client_secret=p%26w%3Dd"
        );

        let public = ClientConfig::builder("https://a.example/t", "pub")
            .auth(ClientAuth::None)
            .build()
            .unwrap();
        let (parts, body) =
            body_of(form_post(&public, public.token_endpoint().unwrap(), grant_form()).unwrap())
                .await;
        assert!(!parts.headers.contains_key(AUTHORIZATION));
        assert_eq!(body, "grant_type=client_credentials&client_id=pub");
    }
}
