use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::origin::{Origin, Origins};
use super::service::{AccessTokenService, Shared};
use crate::{Error, TokenManager};

/// A [`Layer`] that attaches tokens of one client to requests for the origins it allows.
///
/// Built with [`AccessTokenLayer::builder`]; see the [module docs](crate::layer).
#[derive(Clone)]
pub struct AccessTokenLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for AccessTokenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenLayer")
            .field("client", &self.shared.client.name)
            .field("origins", &self.shared.origins)
            .field("max_replay_body_bytes", &self.shared.max_replay_bytes)
            .field("replay", &self.shared.replay)
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
            max_replay_bytes: 64 * 1024,
            replay: true,
        }
    }
}

/// The inner service must be `Clone + Send + 'static`: with replay on, the service keeps one
/// clone of it to replay requests with after a 401 (see [`AccessTokenService`]).
impl<S: Clone + Send + 'static> Layer<S> for AccessTokenLayer {
    type Service = AccessTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessTokenService::from_shared(inner, self.shared.clone())
    }
}

/// Builds an [`AccessTokenLayer`].
#[derive(Debug)]
pub struct AccessTokenLayerBuilder {
    manager: TokenManager,
    client: String,
    origins: Vec<String>,
    any_origin: bool,
    max_replay_bytes: usize,
    replay: bool,
}

impl AccessTokenLayerBuilder {
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

    /// The largest body buffered so the request can be replayed after a 401 (default 64 KiB);
    /// `0` replays only requests with empty bodies.
    pub fn max_replay_body_bytes(mut self, max: usize) -> Self {
        self.max_replay_bytes = max;
        self
    }

    /// Whether a request that got a 401 is replayed once with a new token (default: yes).
    ///
    /// Replaying means keeping a copy of each request's method, URI and headers until its
    /// response arrives (a few hundred nanoseconds per request). Without it, a 401 still
    /// invalidates the token, so the next request gets a new one, and goes back to the caller.
    pub fn replay_unauthorized(mut self, replay: bool) -> Self {
        self.replay = replay;
        self
    }

    /// Builds the layer: fails for an unknown client, an invalid origin, or no allowed origin at all.
    pub fn build(self) -> Result<AccessTokenLayer, Error> {
        let client = self.manager.client(&self.client)?;
        let origins = if self.any_origin {
            Origins::Any
        } else if self.origins.is_empty() {
            return Err(Error::Config(format!(
                "the layer for client `{}` allows no origin: call allow_origin, or allow_any_origin deliberately",
                self.client
            )));
        } else {
            Origins::list(
                self.origins
                    .iter()
                    .map(|o| Origin::parse(o))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(AccessTokenLayer {
            shared: super::registry::register(|id| Shared {
                id,
                manager: self.manager,
                client,
                origins,
                max_replay_bytes: self.max_replay_bytes,
                replay: self.replay,
            }),
        })
    }
}
