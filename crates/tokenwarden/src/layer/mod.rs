//! The tower middleware that attaches access tokens to outgoing requests.
//!
//! [`AccessTokenLayer`] wraps any `Service<http::Request<B>>` that is `Clone + Send + 'static`
//! (hyper-util's legacy `Client`, a `tower::ServiceBuilder` stack with tower-http layers, ...).
//! With replay on, the service keeps one clone of the inner service, made when the layer is
//! applied, and clones it again only to replay a request: no request pays for a clone (a
//! hyper-util `Client` clone writes about five reference counts shared by every request on
//! every core). For each request to an allowed
//! origin it sets `Authorization: <type> <token>` from the [`TokenManager`](crate::TokenManager).
//! When the response is `401 Unauthorized` it invalidates that token (only if it is still the
//! cached one), gets a new one and replays the request once. Requests to other origins pass
//! through untouched, and a request that already carries an `Authorization` header keeps it.
//!
//! A request can be replayed when its body could be buffered: its size is known exactly and at
//! most [`max_replay_body_bytes`](AccessTokenLayerBuilder::max_replay_body_bytes) (64 KiB by
//! default), as for `Full<Bytes>` or an empty body. Other bodies are streamed as they are, and a
//! 401 to such a request is returned unchanged (after invalidating the token).
//!
//! Per-request parameters travel in the request's extensions: insert a
//! [`TokenParams`](crate::TokenParams) to force renewal or ask for another scope or resource.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tokenwarden::{AccessTokenLayer, ClientCredentials, TokenManager};
//! use tokenwarden_testkit::TestServer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let server = TestServer::builder().client("billing", "s3cret").start().await?;
//! let manager = TokenManager::builder()
//!     .client(
//!         "billing",
//!         ClientCredentials::builder(&server.token_endpoint(), "billing")
//!             .client_secret("s3cret")
//!             .build()?,
//!     )
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

mod capture;
mod future;
// The layout conventions (layer.rs, service.rs, future.rs) name this file after its folder.
#[allow(clippy::module_inception)]
mod layer;
mod origin;
mod registry;
mod service;

pub use future::ResponseFuture;
pub use layer::{AccessTokenLayer, AccessTokenLayerBuilder};
pub use service::AccessTokenService;
