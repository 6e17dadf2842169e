//! Test kit for tokenwarden (being written).
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod redis_server;

pub use redis_server::RedisServer;
