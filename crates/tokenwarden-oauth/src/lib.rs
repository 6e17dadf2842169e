//! The OAuth 2.0 wire protocol of tokenwarden: token requests, client authentication and strict
//! response parsing, over any tower HTTP service.
//!
//! - [`ClientConfig`] is a client as its authorization server knows it: the token endpoint
//!   (https, unless loopback), client id, [`ClientAuth`] method and secret, and limits.
//! - A [`Grant`] is what differs between ways of getting a token: its `grant_type`, its form
//!   parameters, what tells its tokens apart in a cache and its checks of the response.
//!   [`ClientCredentials`] (RFC 6749 §4.4), [`RefreshTokenGrant`] (§6), [`TokenExchange`]
//!   (RFC 8693) and [`ExtensionGrant`] (§4.5, any `grant_type` a server defines, with or
//!   without a subject token) are grants; implement the trait for your own.
//! - [`OAuthClient::request_token`] sends one token request for any grant, over the default
//!   hyper + rustls transport ([`OAuthClient::new`]) or any `tower::Service`
//!   ([`OAuthClient::with_transport`]).
//! - [`TokenResponse`] is a parsed, validated answer; [`Error`] says what went wrong,
//!   [`Error::is_retryable`] whether trying again can help and [`Error::retry_after`] when.
//!
//! Client authentication: `client_secret_basic`, `client_secret_post` and public clients.
//! Resource indicators (RFC 8707) and `audience` for the grants that take them.
//!
//! # Example
//!
//! A token request against a stand-in transport (in production, use [`OAuthClient::new`]):
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tokenwarden_core::TokenParams;
//! use tokenwarden_oauth::{ClientConfig, ClientCredentials, Error, OAuthClient};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let idp = ClientConfig::builder("https://auth.example.com/oauth2/token", "billing")
//!     .client_secret(std::env::var("BILLING_SECRET").unwrap_or_else(|_| "s3cr3t".into()))
//!     .timeout(Duration::from_secs(5))
//!     .build()?;
//! let billing = ClientCredentials::new(idp)
//!     .scope("invoices.read invoices.write")
//!     .resource("https://api.example.com/");
//!
//! let transport = tower::service_fn(|request: http::Request<Full<Bytes>>| async move {
//!     assert_eq!(request.uri(), "https://auth.example.com/oauth2/token");
//!     let body = r#"{"access_token":"eyJhbGciOi.example","token_type":"Bearer","expires_in":300}"#;
//!     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
//! });
//! let oauth = OAuthClient::with_transport(transport);
//!
//! let response = oauth.request_token(&billing, &TokenParams::new()).await?;
//! assert_eq!(response.access_token().expose_secret(), "eyJhbGciOi.example");
//! assert_eq!(response.expires_in(), Some(Duration::from_secs(300)));
//!
//! // Secrets never print themselves.
//! assert!(!format!("{billing:?} {response:?}").contains("s3cr3t"));
//! assert!(!format!("{response:?}").contains("eyJhbGciOi.example"));
//!
//! // A per-request override asks for a different token.
//! let narrow = TokenParams::new().scope("invoices.read");
//! let response = oauth.request_token(&billing, &narrow).await?;
//! # let _ = response;
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! - The client secret and tokens are held in [`tokenwarden_core::Secret`]: `Debug`, error messages
//!   and tracing events never contain them.
//! - A token value that could not be sent in a header (CR/LF, control bytes, spaces) is refused
//!   with [`Error::InvalidToken`].
//! - The whole exchange, response body included, is bounded by [`ClientConfig::timeout`], and
//!   the body by [`ClientConfig::max_response_bytes`].
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod client;
mod client_config;
mod client_credentials;
mod discovery;
mod error;
mod extension;
mod grant;
mod refresh;
mod request;
mod response;
mod revocation;
mod target;
mod token_exchange;
mod transport;

pub use client::OAuthClient;
pub use client_config::{ClientAuth, ClientConfig, ClientConfigBuilder};
pub use client_credentials::ClientCredentials;
pub use error::{Error, TransportKind};
pub use extension::ExtensionGrant;
pub use grant::{Form, Grant};
pub use refresh::{RefreshTokenGrant, RefreshTokens};
pub use response::{MAX_EXPIRES_IN, TokenResponse};
pub use revocation::TokenTypeHint;
pub use token_exchange::TokenExchange;
pub use tokenwarden_core::BoxError;
pub use transport::{HttpsClient, https_client};
