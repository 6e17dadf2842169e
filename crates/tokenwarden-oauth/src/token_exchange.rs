//! Token exchange (RFC 8693): a middle tier trades the token its caller sent for a token of its
//! own, meant for the next service, acting for the same subject.

use std::fmt;

use tokenwarden_core::{CacheKeyBuilder, SubjectToken, TokenParams, TokenType, token_types};

use crate::target::{ParamsInKey, Target};
use crate::{ClientConfig, Error, Form, Grant, TokenResponse};

/// The `grant_type` of token exchange.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Parameters this grant sets itself, besides those every grant sets.
const EXCHANGE_PARAMS: &[&str] = &[
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
];

/// The token-exchange grant (RFC 8693 §2.1): each request exchanges its
/// [`SubjectToken`] (the caller's token, from
/// [`TokenParams::subject_token`]) for a token for `audience`s and `resource`s with `scope`,
/// optionally naming an actor.
///
/// ```
/// use tokenwarden_oauth::{ClientConfig, TokenExchange};
///
/// let idp = ClientConfig::builder("https://idp.example.com/oauth2/token", "api1")
///     .client_secret("s3cr3t")
///     .build()?;
/// let to_api2 = TokenExchange::new(idp)
///     .audience("api2")
///     .resource("https://api2.example.com/")
///     .scope("orders.read");
/// # let _ = to_api2;
/// # Ok::<(), tokenwarden_oauth::Error>(())
/// ```
///
/// The response's `issued_token_type` is checked: it must be present and, when
/// [`requested_token_type`](Self::requested_token_type) is set, be that type. A token that is
/// not an access token comes with `token_type` `N_A` ([`TokenType::NotApplicable`]); it is
/// returned by [`OAuthClient::request_token`](crate::OAuthClient::request_token) but a manager
/// will not send it in an `Authorization` header.
///
/// `Debug` shows the configuration, never the actor token.
#[derive(Clone)]
pub struct TokenExchange {
    client: ClientConfig,
    target: Target,
    requested_token_type: Option<String>,
    actor: Option<SubjectToken>,
}

impl TokenExchange {
    /// Token exchange as `client`, asking for the server's default audience and scope until
    /// told otherwise.
    pub fn new(client: ClientConfig) -> Self {
        TokenExchange {
            client,
            target: Target::default(),
            requested_token_type: None,
            actor: None,
        }
    }

    /// Adds an `audience`: the logical name of the service the token is for; call again for
    /// more. A [`TokenParams::audience`] replaces them for one request.
    pub fn audience(mut self, audience: &str) -> Self {
        self.target.audiences.push(audience.to_owned());
        self
    }

    /// Adds a `resource` (RFC 8707), an absolute URI of the service the token is for; call
    /// again for more.
    pub fn resource(mut self, resource: &str) -> Self {
        self.target.resources.push(resource.to_owned());
        self
    }

    /// Adds scopes; `scope` may hold several, separated by spaces.
    pub fn scope(mut self, scope: &str) -> Self {
        self.target.add_scope(scope);
        self
    }

    /// Asks for a token of this type ([`token_types`]); the server's answer must be of it.
    /// Without it, the server picks (an access token, usually).
    pub fn requested_token_type(mut self, token_type: &str) -> Self {
        self.requested_token_type = Some(token_type.to_owned());
        self
    }

    /// Sends `actor` as the `actor_token` (RFC 8693 §1.1, delegation): the party acting for
    /// the subject, e.g. this service's own token.
    pub fn actor_token(mut self, actor: SubjectToken) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Adds a form parameter sent with every request; a second call with the same name replaces
    /// it. Names this grant sets itself are refused by [`validate`](Grant::validate).
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.target.set_param(name, value);
        self
    }
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.target.params.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TokenExchange")
            .field("client", &self.client)
            .field("audiences", &self.target.audiences)
            .field("resources", &self.target.resources)
            .field("scopes", &self.target.scopes)
            .field("requested_token_type", &self.requested_token_type)
            .field("actor_token", &self.actor)
            .field("params", &names)
            .finish()
    }
}

impl Grant for TokenExchange {
    fn client(&self) -> &ClientConfig {
        &self.client
    }

    fn grant_type(&self) -> &str {
        GRANT_TYPE
    }

    fn validate(&self) -> Result<(), Error> {
        if let Some(requested) = &self.requested_token_type {
            let valid =
                !requested.is_empty() && requested.bytes().all(|b| (0x21..=0x7e).contains(&b));
            if !valid {
                return Err(Error::config(format!(
                    "requested token type {requested:?} is not a token type identifier"
                )));
            }
        }
        if self.target.audiences.iter().any(String::is_empty) {
            return Err(Error::config("an audience is empty"));
        }
        self.target.validate(EXCHANGE_PARAMS)
    }

    fn needs_subject_token(&self) -> bool {
        true
    }

    fn form(&self, params: &TokenParams, form: &mut Form) -> Result<(), Error> {
        let subject = params.subject().ok_or_else(|| Error::MissingSubjectToken {
            grant_type: GRANT_TYPE.to_owned(),
        })?;
        form.push("subject_token", subject.expose_secret());
        form.push("subject_token_type", subject.token_type());
        if let Some(actor) = &self.actor {
            form.push("actor_token", actor.expose_secret());
            form.push("actor_token_type", actor.token_type());
        }
        if let Some(requested) = &self.requested_token_type {
            form.push("requested_token_type", requested);
        }
        self.target.write(params, EXCHANGE_PARAMS, form)
    }

    /// The audiences, resources, scope, requested type, the actor token as a digest and the
    /// parameters as digests (the subject token is added by the manager).
    fn cache_key(&self, params: &TokenParams, key: CacheKeyBuilder) -> CacheKeyBuilder {
        let mut key = key.part("grant_type", GRANT_TYPE);
        if let Some(requested) = &self.requested_token_type {
            key = key.part("requested_token_type", requested);
        }
        if let Some(actor) = &self.actor {
            key = key.hashed_part("actor_token", actor.expose_secret());
        }
        self.target.cache_key(params, key, ParamsInKey::Hashed)
    }

    /// RFC 8693 §2.2.1: `issued_token_type` is required, is the type asked for (when one was),
    /// and `token_type` is `N_A` only for a token that is not an access token.
    fn check_response(&self, response: TokenResponse) -> Result<TokenResponse, Error> {
        let Some(issued) = response.issued_token_type() else {
            return Err(Error::invalid_response(
                "the token exchange response has no issued_token_type",
            ));
        };
        if let Some(requested) = &self.requested_token_type
            && issued != requested
        {
            return Err(Error::invalid_response(format!(
                "issued_token_type is not the requested {requested}"
            )));
        }
        let not_applicable = *response.access_token().token_type() == TokenType::NotApplicable;
        if not_applicable && issued == token_types::ACCESS_TOKEN {
            return Err(Error::invalid_response(
                "token_type is N_A, but issued_token_type says it is an access token",
            ));
        }
        Ok(response)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokenwarden_core::CacheKey;

    fn idp() -> ClientConfig {
        ClientConfig::builder("https://auth.example.com/token", "api1")
            .client_secret("pw")
            .build()
            .unwrap()
    }

    fn subject(value: &str) -> TokenParams {
        TokenParams::new().subject_token(SubjectToken::access_token(value).unwrap())
    }

    #[test]
    fn the_form_carries_subject_actor_and_target() {
        let grant = TokenExchange::new(idp())
            .audience("api2")
            .audience("audit")
            .resource("https://api2.example/")
            .scope("read")
            .requested_token_type(token_types::ACCESS_TOKEN)
            .actor_token(SubjectToken::new("actor-jwt", token_types::JWT).unwrap());
        grant.validate().unwrap();
        let mut form = Form::default();
        grant.form(&subject("user-token"), &mut form).unwrap();
        assert_eq!(
            form.pairs(),
            [
                ("subject_token", "user-token"),
                ("subject_token_type", token_types::ACCESS_TOKEN),
                ("actor_token", "actor-jwt"),
                ("actor_token_type", token_types::JWT),
                ("requested_token_type", token_types::ACCESS_TOKEN),
                ("scope", "read"),
                ("resource", "https://api2.example/"),
                ("audience", "api2"),
                ("audience", "audit"),
            ]
        );
        assert!(
            !format!("{grant:?}").contains("actor-jwt"),
            "the actor token is not printed"
        );
    }

    #[test]
    fn without_a_subject_nothing_is_sent() {
        let grant = TokenExchange::new(idp());
        let err = grant
            .form(&TokenParams::new(), &mut Form::default())
            .unwrap_err();
        assert!(matches!(err, Error::MissingSubjectToken { .. }), "{err}");
        assert!(grant.needs_subject_token());
    }

    #[test]
    fn parameters_the_grant_sets_cannot_be_configured() {
        for name in EXCHANGE_PARAMS.iter().chain(&["audience", "grant_type"]) {
            let grant = TokenExchange::new(idp()).param(name, "x");
            assert!(grant.validate().is_err(), "{name}");
        }
        assert!(
            TokenExchange::new(idp())
                .requested_token_type("two words")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn the_key_names_audiences_and_hides_the_actor() {
        let key = |g: &TokenExchange| {
            g.cache_key(&TokenParams::new(), CacheKey::builder("c"))
                .build()
                .to_string()
        };
        let a = TokenExchange::new(idp()).audience("api2");
        let b = TokenExchange::new(idp()).audience("api3");
        assert_ne!(key(&a), key(&b));
        let acting = a
            .clone()
            .actor_token(SubjectToken::access_token("actor-secret").unwrap());
        assert_ne!(key(&a), key(&acting));
        assert!(!key(&acting).contains("actor-secret"));
    }

    fn response(body: &str) -> TokenResponse {
        crate::response::parse_token_response(
            &"https://auth.example.com/token".parse().unwrap(),
            http::StatusCode::OK,
            &http::HeaderMap::new(),
            body.as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn the_issued_token_type_is_checked() {
        let access = r#"{"access_token":"t","token_type":"Bearer",
            "issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#;
        let id_token = r#"{"access_token":"t","token_type":"N_A",
            "issued_token_type":"urn:ietf:params:oauth:token-type:id_token"}"#;
        let any = TokenExchange::new(idp());
        let wants_access =
            TokenExchange::new(idp()).requested_token_type(token_types::ACCESS_TOKEN);
        let wants_id = TokenExchange::new(idp()).requested_token_type(token_types::ID_TOKEN);

        assert!(any.check_response(response(access)).is_ok());
        assert!(wants_access.check_response(response(access)).is_ok());
        let n_a = wants_id.check_response(response(id_token)).unwrap();
        assert_eq!(
            *n_a.access_token().token_type(),
            TokenType::NotApplicable,
            "a token that is no access token is returned as such"
        );
        assert_eq!(n_a.issued_token_type(), Some(token_types::ID_TOKEN));

        for (grant, body, problem) in [
            (&wants_access, id_token, "not the requested"),
            (&wants_id, access, "not the requested"),
            (
                &any,
                r#"{"access_token":"t","token_type":"Bearer"}"#,
                "no issued_token_type",
            ),
            (
                &any,
                r#"{"access_token":"t","token_type":"N_A",
                    "issued_token_type":"urn:ietf:params:oauth:token-type:access_token"}"#,
                "N_A",
            ),
        ] {
            let err = grant.check_response(response(body)).unwrap_err();
            assert!(matches!(err, Error::InvalidResponse(_)), "{err}");
            assert!(err.to_string().contains(problem), "{err}");
        }
    }
}
