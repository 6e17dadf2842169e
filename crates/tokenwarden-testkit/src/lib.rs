#![doc = include_str!("../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod api;
mod body;
mod client_auth;
mod discovery;
mod exchange;
mod failure;
mod introspection;
mod jwt;
mod oauth_error;
mod record;
mod redirect;
mod redis_server;
mod refresh;
mod revocation;
mod server;
mod sign_in;
mod state;
mod token_endpoint;
mod tokens;

pub use api::ApiMode;
pub use discovery::DiscoveryDocument;
pub use failure::Failure;
pub use record::{AuthMethod, TokenRequestRecord};
pub use redis_server::RedisServer;
pub use refresh::RefreshTokenUsage;
pub use server::{TestServer, TestServerBuilder};
pub use sign_in::SignedIn;
