//! What a user's sign-in returns.

use std::fmt;
use std::time::Duration;

/// The tokens a sign-in returned, from [`TestServer::sign_in`](crate::TestServer::sign_in): what a
/// web app stores for its user after the authorization-code flow, without the browser.
///
/// `Debug` shows neither token.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SignedIn {
    /// The access token (`tk_…`), accepted by the protected API, which reports the user.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// The access token's `expires_in`: the server's token lifetime in whole seconds.
    pub expires_in: Duration,
    /// The refresh token (`rt_…`), first of a new token family.
    pub refresh_token: String,
    /// The granted scope, space-separated; `None` when none was granted.
    pub scope: Option<String>,
}

impl fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedIn")
            .field("access_token", &"***")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &"***")
            .field("scope", &self.scope)
            .finish()
    }
}
