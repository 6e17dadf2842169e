//! Core types of tokenwarden.
//!
//! This crate holds what every other tokenwarden crate and every custom cache backend shares:
//!
//! - [`AccessToken`] and [`Secret`]: token values that never show up in `Debug`, `Display` or logs;
//! - [`CachedToken`]: a token together with the moments it must be renewed and stops being usable;
//! - [`CacheKey`]: a stable, namespaced key built from the client name and the grant's parameters;
//! - [`TokenParams`]: per-request parameters (force renewal, scope, resource, extra form fields,
//!   the [`SubjectToken`] a middle tier acts for);
//! - [`TokenCache`]: the trait a storage backend implements (memory, Redis, or your own);
//! - [`UserTokenStore`], [`UserTokens`], [`UserKey`]: signed-in users' tokens (access and refresh),
//!   kept between requests and replicas;
//! - [`Clock`]: the time source, with [`SystemClock`] and a [`ManualClock`] for tests.
//!
//! # A custom cache backend
//!
//! A backend implements four methods; compare-and-invalidate and leases have defaults that are
//! correct for a store used by one process.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use tokenwarden_core::{BoxFuture, CacheKey, CachedToken, Clock, Error, SystemClock, TokenCache};
//!
//! #[derive(Debug, Default)]
//! struct MapCache(Mutex<HashMap<CacheKey, CachedToken>>);
//!
//! impl TokenCache for MapCache {
//!     fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<Option<CachedToken>, Error>> {
//!         Box::pin(async move {
//!             let map = self.0.lock().map_err(|_| Error::cache("map lock poisoned"))?;
//!             let now = SystemClock.now();
//!             Ok(map.get(key).filter(|t| t.is_fresh(now)).cloned())
//!         })
//!     }
//!
//!     fn put<'a>(&'a self, key: &'a CacheKey, token: &'a CachedToken) -> BoxFuture<'a, Result<(), Error>> {
//!         Box::pin(async move {
//!             let mut map = self.0.lock().map_err(|_| Error::cache("map lock poisoned"))?;
//!             map.insert(key.clone(), token.clone());
//!             Ok(())
//!         })
//!     }
//!
//!     fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Result<(), Error>> {
//!         Box::pin(async move {
//!             let mut map = self.0.lock().map_err(|_| Error::cache("map lock poisoned"))?;
//!             map.remove(key);
//!             Ok(())
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tokenwarden_core::{AccessToken, TokenType};
//!
//! let cache: Arc<dyn TokenCache> = Arc::new(MapCache::default());
//! let key = CacheKey::builder("billing").scopes(["invoices.read"]).build();
//! let now = SystemClock.now();
//! let token = AccessToken::new("eyJhbGciOi.example.token", TokenType::Bearer)?;
//! let cached = CachedToken::new(token, now + Duration::from_secs(3600), now + Duration::from_secs(3540));
//! cache.put(&key, &cached).await?;
//! let hit = cache.get(&key).await?.expect("just stored");
//! assert_eq!(hit.token().expose_secret(), "eyJhbGciOi.example.token");
//! assert_eq!(format!("{:?}", hit.token().secret()), "***");
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod cache;
mod clock;
mod error;
mod key;
mod params;
mod secret;
mod subject;
mod token;
mod user;

pub use cache::{BoxFuture, Lease, TokenCache};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, Error};
pub use key::{CacheKey, CacheKeyBuilder};
pub use params::TokenParams;
pub use secret::Secret;
pub use subject::{SubjectToken, token_types};
pub use token::{AccessToken, CachedToken, TokenType};
pub use user::{UserKey, UserTokenStore, UserTokens};
