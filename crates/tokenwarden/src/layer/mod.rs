//! The tower middleware that attaches access tokens to outgoing requests.
//!
//! [`AccessTokenLayer`] wraps any `Service<http::Request<B>>` that is `Clone` (hyper-util's
//! legacy `Client`, a `tower::ServiceBuilder` stack with tower-http layers, ...). For each
//! request to an allowed origin it sets `Authorization: Bearer <token>` from the
//! [`TokenManager`](crate::TokenManager): the cached token when there is one (read without a
//! lock), else one obtained first. Requests to other origins pass through untouched (with a
//! `debug` event naming the origin), and a request that already carries an `Authorization`
//! header keeps it.
//!
//! When the response is `401 Unauthorized`, the token that was sent is invalidated (only if it
//! is still the cached one, so a burst of 401s costs one renewal) and, if the
//! [`ReplayPolicy`] kept the request, the request is replayed once with a new token. A 401
//! whose `WWW-Authenticate` says `error="insufficient_scope"` goes back as it is: a new token
//! would not have the scope either. When a token fetched after a rejection is rejected too,
//! renewals back off for a while (see
//! [`rejection_backoff`](crate::TokenManagerBuilder::rejection_backoff)).
//!
//! The default policy, [`Buffered`], keeps requests whose body has a known size up to 64 KiB
//! (read into memory before the first send); [`NoReplay`] keeps none and works with any body
//! type (`Incoming`, `BoxBody`, a stream).
//!
//! Which token a request gets: the layer's client, with the [`TokenParams`](crate::TokenParams)
//! the request carries in its extensions, if any (scope, resource, force renewal). For a user
//! client, the [`UserKey`](crate::UserKey) in its extensions names the user; for a client that
//! exchanges its caller's token, the [`SubjectToken`](crate::SubjectToken) (in its
//! `TokenParams`, in its extensions, or found by
//! [`subject_token_from`](AccessTokenLayerBuilder::subject_token_from)) names the caller. A
//! request that needs one and has none fails and is not sent.
//!
//! # Redirects
//!
//! Put a redirect follower *outside* this layer
//! (`ServiceBuilder::new().layer(FollowRedirectLayer::new()).layer(tokens)`): every hop then
//! passes the origin check, and the token goes only to allowed origins. Inside it
//! (`.layer(tokens).layer(FollowRedirectLayer::new())`), the follower re-sends the request with
//! the token already on it: tower-http's follower strips credentials only when a hop changes
//! origin from the hop before, so a chain `allowed → other → other` delivers the token to the
//! last hop.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tokenwarden::{AccessTokenLayer, ClientConfig, ClientCredentials, TokenManager};
//! use tokenwarden_testkit::TestServer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let server = TestServer::builder().client("billing", "s3cret").start().await?;
//! let idp = ClientConfig::builder(&server.token_endpoint(), "billing")
//!     .client_secret("s3cret")
//!     .build()?;
//! let manager = TokenManager::builder()
//!     .client("billing", ClientCredentials::new(idp))
//!     .build()?;
//! let layer = AccessTokenLayer::builder(&manager, "billing")
//!     .allow_origin(&server.base_url())
//!     .build()?;
//!
//! // Any inner service works; here one that checks the header it receives.
//! let inner = tower::service_fn(|req: Request<Full<Bytes>>| async move {
//!     let auth = req.headers()[http::header::AUTHORIZATION].to_str()?.to_owned();
//!     assert!(auth.starts_with("Bearer "));
//!     Ok::<_, http::header::ToStrError>(Response::new(Full::new(Bytes::new())))
//! });
//! let mut client = ServiceBuilder::new().layer(layer).service(inner);
//! let response = client
//!     .ready()
//!     .await?
//!     .call(Request::get(server.api_url("/invoices")).body(Full::default())?)
//!     .await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```

mod challenge;
mod future;
// The layout conventions (layer.rs, service.rs, future.rs) name this file after its folder.
#[allow(clippy::module_inception)]
mod layer;
mod origin;
mod replay;
mod service;

pub use future::ResponseFuture;
pub use layer::{AccessTokenLayer, AccessTokenLayerBuilder};
pub use replay::{BodyFuture, Buffered, Kept, NoReplay, ReplayPolicy};
pub use service::AccessTokenService;
