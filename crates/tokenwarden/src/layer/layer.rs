use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::origin::{Origin, Origins};
use super::replay::Buffered;
use super::service::{AccessTokenService, Config, SubjectFn};
use crate::{Error, SubjectToken, TokenManager};

/// A [`Layer`] that attaches tokens of one client to requests for the origins it allows, and
/// replays a request once after a 401 if its [`ReplayPolicy`](super::ReplayPolicy) `P` kept it.
///
/// Built with [`AccessTokenLayer::builder`]; see the [module docs](crate::layer).
#[derive(Clone)]
pub struct AccessTokenLayer<P = Buffered> {
    config: Arc<Config>,
    replay: P,
}

impl<P: fmt::Debug> fmt::Debug for AccessTokenLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenLayer")
            .field("client", &self.config.client.name)
            .field("origins", &self.config.origins)
            .field("replay", &self.replay)
            .finish()
    }
}

impl AccessTokenLayer {
    /// Starts a layer for the manager's client named `client`.
    pub fn builder(manager: &TokenManager, client: &str) -> AccessTokenLayerBuilder {
        AccessTokenLayerBuilder {
            manager: manager.clone(),
            client: client.to_owned(),
            origins: Vec::new(),
            any_origin: false,
            replay: Buffered::default(),
            subject_from: None,
        }
    }
}

/// Applying the layer costs one small allocation: the state the service and its response
/// futures share (see [`AccessTokenService`]).
impl<S, P: Clone> Layer<S> for AccessTokenLayer<P> {
    type Service = AccessTokenService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessTokenService::new(inner, self.config.clone(), self.replay.clone())
    }
}

/// Builds an [`AccessTokenLayer`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct AccessTokenLayerBuilder<P = Buffered> {
    manager: TokenManager,
    client: String,
    origins: Vec<String>,
    any_origin: bool,
    replay: P,
    subject_from: Option<SubjectFn>,
}

impl<P> AccessTokenLayerBuilder<P> {
    /// For a client that exchanges a subject token ([`TokenExchange`](crate::TokenExchange), an
    /// [`ExtensionGrant`](crate::ExtensionGrant) with a subject parameter): where to find the
    /// subject of a request that carries no [`SubjectToken`](crate::SubjectToken) in its
    /// extensions, e.g. in a type of the app's own that its middleware inserted, or in a task
    /// local. A request for which neither gives one fails with
    /// [`Error::NoSubjectToken`] and is not sent.
    pub fn subject_token_from<F>(mut self, find: F) -> Self
    where
        F: Fn(&http::Extensions) -> Option<SubjectToken> + Send + Sync + 'static,
    {
        self.subject_from = Some(SubjectFn(Arc::new(find)));
        self
    }

    /// Allows sending tokens to `origin` (`https://host[:port]`); call once per origin.
    pub fn allow_origin(mut self, origin: &str) -> Self {
        self.origins.push(origin.to_owned());
        self
    }

    /// Sends tokens to every origin. Only for stacks that talk to one trusted service: a redirect
    /// or a user-supplied URL would carry the token elsewhere.
    pub fn allow_any_origin(mut self) -> Self {
        self.any_origin = true;
        self
    }

    /// Which requests are kept to be replayed after a 401 (default [`Buffered`]: bodies of known
    /// size up to 64 KiB). [`NoReplay`](super::NoReplay) keeps none and works with any body type.
    pub fn replay<Q>(self, policy: Q) -> AccessTokenLayerBuilder<Q> {
        AccessTokenLayerBuilder {
            manager: self.manager,
            client: self.client,
            origins: self.origins,
            any_origin: self.any_origin,
            replay: policy,
            subject_from: self.subject_from,
        }
    }

    /// Builds the layer: fails for an unknown client, an invalid origin, no allowed origin at all,
    /// or a [`subject_token_from`](Self::subject_token_from) function for a client that
    /// exchanges no subject token.
    pub fn build(self) -> Result<AccessTokenLayer<P>, Error> {
        let client = self.manager.client(&self.client)?;
        if self.subject_from.is_some() && !client.needs_subject_token() {
            return Err(Error::Config(format!(
                "the layer for client `{}` has a subject token function, but the client exchanges no subject token",
                self.client
            )));
        }
        let origins = if self.any_origin {
            Origins::Any
        } else if self.origins.is_empty() {
            return Err(Error::Config(format!(
                "the layer for client `{}` allows no origin: call allow_origin, or allow_any_origin deliberately",
                self.client
            )));
        } else {
            Origins::List(
                self.origins
                    .iter()
                    .map(|o| Origin::parse(o))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(AccessTokenLayer {
            config: Arc::new(Config {
                manager: self.manager,
                client,
                origins,
                subject_from: self.subject_from,
            }),
            replay: self.replay,
        })
    }
}

impl AccessTokenLayerBuilder<Buffered> {
    /// With the default [`Buffered`] policy: the largest body kept for a replay (default
    /// 64 KiB); `0` keeps only requests with empty bodies.
    pub fn max_replay_body_bytes(self, max: usize) -> Self {
        self.replay(Buffered::new(max))
    }
}
