#![doc = include_str!("../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod cache;
mod entries;
mod leases;
mod users;

pub use cache::MemoryTokenCache;
pub use users::MemoryUserTokenStore;
