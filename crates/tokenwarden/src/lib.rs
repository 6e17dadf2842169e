#![doc = include_str!("../../../README.md")]
#![deny(unsafe_code, unreachable_pub)]
#![warn(missing_docs)]

mod error;
pub mod layer;
mod manager;
pub mod metrics;

pub use error::Error;
pub use layer::{
    AccessTokenLayer, AccessTokenLayerBuilder, AccessTokenService, Buffered, NoReplay, ReplayPolicy,
};
pub use manager::{Metrics, RetryPolicy, Revoke, TokenManager, TokenManagerBuilder};

pub use tokenwarden_core::{
    AccessToken, CacheKey, CachedToken, Clock, Lease, ManualClock, Secret, SubjectToken,
    SystemClock, TokenCache, TokenParams, TokenType, UserKey, UserTokenStore, UserTokens,
    token_types,
};
pub use tokenwarden_memory::{MemoryTokenCache, MemoryUserTokenStore};
pub use tokenwarden_oauth::{
    ClientAuth, ClientConfig, ClientCredentials, ExtensionGrant, Grant, HttpsClient, OAuthClient,
    RefreshTokens, TokenExchange, TokenTypeHint, https_client,
};

/// The crates tokenwarden is made of, for what the facade does not re-export.
pub mod core {
    pub use tokenwarden_core::*;
}

/// The OAuth 2.0 protocol client.
pub mod oauth {
    pub use tokenwarden_oauth::*;
}

/// The Redis token cache shared by replicas.
#[cfg(feature = "redis")]
pub mod redis {
    pub use tokenwarden_redis::*;
}
