#![doc = include_str!("../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod api;
mod body;
mod failure;
mod record;
mod redirect;
mod redis_server;
mod server;
mod state;
mod token_endpoint;

pub use api::ApiMode;
pub use failure::Failure;
pub use record::{AuthMethod, TokenRequestRecord};
pub use redis_server::RedisServer;
pub use server::{TestServer, TestServerBuilder};
