//! Building token requests: the grant's form parameters and client authentication, kept apart so
//! every grant shares the same client authentication and encoding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use tokenwarden_core::TokenParams;

use crate::credentials::{check_param_name, check_resource, check_scope};
use crate::{ClientAuth, ClientCredentials, Error};

/// The form parameters of one token request, in the order they are sent.
#[derive(Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_owned(), value.to_owned()));
    }

    fn encode(&self) -> String {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &self.0 {
            serializer.append_pair(name, value);
        }
        serializer.finish()
    }

    #[cfg(test)]
    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// `grant_type=client_credentials` with the client's scope, resources, audience and extra
/// parameters, each replaced by the request's override when it has one.
pub(crate) fn client_credentials_form(
    client: &ClientCredentials,
    params: &TokenParams,
) -> Result<Form, Error> {
    let mut form = Form::default();
    form.push("grant_type", "client_credentials");
    add_target_params(&mut form, client, params)?;
    Ok(form)
}

/// The parameters that choose which token is issued (scope, resource, audience, extras); shared by
/// the grants that accept them.
pub(crate) fn add_target_params(
    form: &mut Form,
    client: &ClientCredentials,
    params: &TokenParams,
) -> Result<(), Error> {
    let scopes = match params.scopes() {
        Some(overridden) => {
            for scope in overridden {
                check_scope(scope)?;
            }
            overridden
        }
        None => client.scopes(),
    };
    if !scopes.is_empty() {
        form.push("scope", &scopes.join(" "));
    }
    let resources = match params.resources() {
        Some(overridden) => {
            for resource in overridden {
                check_resource(resource)?;
            }
            overridden
        }
        None => client.resources(),
    };
    for resource in resources {
        form.push("resource", resource);
    }
    if let Some(audience) = params.audience_override().or(client.audience()) {
        form.push("audience", audience);
    }
    let overrides = params.extra_params();
    for (name, _) in overrides {
        check_param_name(name)?;
    }
    for (name, value) in client.extra_params() {
        if !overrides.iter().any(|(n, _)| n == name) {
            form.push(name, value);
        }
    }
    for (name, value) in overrides {
        form.push(name, value);
    }
    Ok(())
}

/// The HTTP request for `form`, authenticated as `client`.
pub(crate) fn token_request(
    client: &ClientCredentials,
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
        // `ClientCredentialsBuilder::build` refuses a secret-based method without a secret.
        (ClientAuth::SecretBasic | ClientAuth::SecretPost, None) => {
            return Err(Error::config(format!(
                "{} needs a client secret",
                client.auth().as_str()
            )));
        }
    }
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(client.token_endpoint().clone())
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
        .map_err(|_| Error::config("could not build the token request"))
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

    fn pairs(form: &Form) -> Vec<(&str, &str)> {
        form.pairs()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    fn configured() -> ClientCredentials {
        ClientCredentials::builder("https://auth.example.com/token", "app")
            .client_secret("pw")
            .scope("read write")
            .resource("https://api.example.com/")
            .audience("api")
            .param("tenant", "t1")
            .param("region", "eu")
            .build()
            .unwrap()
    }

    #[test]
    fn client_credentials_form_uses_the_client_configuration() {
        let form = client_credentials_form(&configured(), &TokenParams::new()).unwrap();
        assert_eq!(
            pairs(&form),
            [
                ("grant_type", "client_credentials"),
                ("scope", "read write"),
                ("resource", "https://api.example.com/"),
                ("audience", "api"),
                ("tenant", "t1"),
                ("region", "eu"),
            ]
        );
    }

    #[test]
    fn token_params_override_the_client_configuration() {
        let params = TokenParams::new()
            .scope("admin")
            .resource("https://a.example/")
            .resource("https://b.example/")
            .audience("other")
            .param("tenant", "t2")
            .param("extra", "x");
        let form = client_credentials_form(&configured(), &params).unwrap();
        assert_eq!(
            pairs(&form),
            [
                ("grant_type", "client_credentials"),
                ("scope", "admin"),
                ("resource", "https://a.example/"),
                ("resource", "https://b.example/"),
                ("audience", "other"),
                ("region", "eu"),
                ("tenant", "t2"),
                ("extra", "x"),
            ]
        );
    }

    #[test]
    fn minimal_form_has_only_the_grant_type() {
        let c = ClientCredentials::builder("https://a.example/t", "app")
            .client_secret("pw")
            .build()
            .unwrap();
        let form = client_credentials_form(&c, &TokenParams::new()).unwrap();
        assert_eq!(pairs(&form), [("grant_type", "client_credentials")]);
    }

    #[test]
    fn invalid_overrides_are_config_errors() {
        let c = configured();
        for params in [
            TokenParams::new().param("grant_type", "password"),
            TokenParams::new().param("client_secret", "x"),
            TokenParams::new().resource("not a uri"),
            TokenParams::new().scope("bad\\scope"),
        ] {
            let err = client_credentials_form(&c, &params).err().unwrap();
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
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
        let c = ClientCredentials::builder("https://auth.example.com/token", "app")
            .client_secret("pw")
            .build()
            .unwrap();
        let form = client_credentials_form(&c, &TokenParams::new()).unwrap();
        let (parts, body) = body_of(token_request(&c, form).unwrap()).await;
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
        let post = ClientCredentials::builder("https://a.example/t", "my app")
            .auth(ClientAuth::SecretPost)
            .client_secret("p&w=d")
            .scope("a b")
            .build()
            .unwrap();
        let form = client_credentials_form(&post, &TokenParams::new()).unwrap();
        let (parts, body) = body_of(token_request(&post, form).unwrap()).await;
        assert!(!parts.headers.contains_key(AUTHORIZATION));
        assert_eq!(
            body,
            "grant_type=client_credentials&scope=a+b&client_id=my+app&client_secret=p%26w%3Dd"
        );

        let public = ClientCredentials::builder("https://a.example/t", "pub")
            .auth(ClientAuth::None)
            .build()
            .unwrap();
        let form = client_credentials_form(&public, &TokenParams::new()).unwrap();
        let (parts, body) = body_of(token_request(&public, form).unwrap()).await;
        assert!(!parts.headers.contains_key(AUTHORIZATION));
        assert_eq!(body, "grant_type=client_credentials&client_id=pub");
    }
}
