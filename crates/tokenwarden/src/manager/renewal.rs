//! When a token is due: the renew-ahead point and the expiry skew of a new token, and how one
//! token is fetched: retries with jittered backoff, the server's `Retry-After`, all within the
//! acquisition's deadline.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokenwarden_core::{CachedToken, Secret, TokenParams};
use tokenwarden_oauth::{OAuthClient, TokenResponse};
use tokio::time::Instant;

use super::source::Source;

/// How failed token requests are retried: server errors (5xx, 429), transport failures and
/// timeouts are; OAuth errors (4xx) are not. A server's `Retry-After` on a 429 or 503 is waited
/// for, up to [`max_retry_after`](Self::max_retry_after). Every wait ends within the manager's
/// [`acquire_timeout`](crate::TokenManagerBuilder::acquire_timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub(crate) max_retries: u32,
    pub(crate) base_delay: Duration,
    pub(crate) max_delay: Duration,
    pub(crate) max_retry_after: Duration,
}

impl RetryPolicy {
    /// Retries up to `max_retries` times with exponential backoff and full jitter.
    pub fn new(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            ..RetryPolicy::default()
        }
    }

    /// Never retries.
    pub fn none() -> Self {
        RetryPolicy::new(0)
    }

    /// The first backoff (default 100 ms); each retry doubles it.
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.base_delay = delay;
        self
    }

    /// The longest backoff (default 2 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The longest `Retry-After` that is waited for (default 10 s); a server asking for more
    /// gets its retry after this long.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The wait before retry number `attempt + 1` after `error`.
    fn delay(&self, attempt: u32, error: &tokenwarden_oauth::Error) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.max_delay);
        // Full jitter: replicas that failed together do not retry together.
        let backoff = exp.mul_f64(fastrand::f64());
        match error.retry_after() {
            Some(asked) => backoff.max(asked.min(self.max_retry_after)),
            None => backoff,
        }
    }
}

impl Default for RetryPolicy {
    /// Two retries, 100 ms base delay, 2 s cap, `Retry-After` honoured up to 10 s.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

/// When tokens are renewed and when they stop being used.
#[derive(Clone, Debug)]
pub(crate) struct Timing {
    /// How long before expiry a token is renewed, at most half its lifetime.
    pub(crate) renew_before: Duration,
    /// How long before expiry a token stops being sent, at most half its lifetime.
    pub(crate) expiry_skew: Duration,
}

impl Timing {
    /// The cache entry for a token that arrived for a request sent at `sent_at`: it expires
    /// `expires_in` after that (the server's clock started later, so this errs early) and is
    /// renewed `min(renew_before, lifetime / 2)` before.
    pub(crate) fn cached_token(
        &self,
        response: TokenResponse,
        sent_at: SystemTime,
        default_lifetime: Duration,
    ) -> CachedToken {
        let expires_at = response.expires_at(sent_at, default_lifetime);
        let lifetime = expires_at.duration_since(sent_at).unwrap_or_default();
        let renew_at = expires_at
            .checked_sub(self.renew_before.min(lifetime / 2))
            .unwrap_or(sent_at);
        let token = response.into_access_token().with_expires_at(expires_at);
        CachedToken::new(token, expires_at, renew_at)
    }

    /// `cached`, kept no later than `not_after` (a subject token's expiry): a token capped
    /// there is neither renewed ahead nor dropped early, since a renewal for the same subject
    /// could not outlive it either; it is sent until then and not after.
    pub(crate) fn capped(&self, cached: CachedToken, not_after: SystemTime) -> CachedToken {
        if cached.expires_at() <= not_after {
            return cached;
        }
        let token = cached.into_token().with_expires_at(not_after);
        CachedToken::new(token, not_after, not_after)
    }

    /// The last moment a token is sent: a skew allowance before it expires, because servers
    /// truncate `exp` to whole seconds (a token can die up to 1 s early) and clocks drift. The
    /// allowance is at most the renew-ahead window, so a token from a shared cache, whose
    /// lifetime is unknown here, gets the same treatment as one fetched here.
    pub(crate) fn usable_until(&self, cached: &CachedToken) -> SystemTime {
        let window = cached
            .expires_at()
            .duration_since(cached.renew_at())
            .unwrap_or_default();
        cached
            .expires_at()
            .checked_sub(self.expiry_skew.min(window))
            .unwrap_or(cached.renew_at())
    }
}

/// Whether a failed request certainly did not reach the token endpoint's logic: then a refresh
/// may be sent again. A refresh that may have arrived (a timeout, a connection closed before the
/// answer, a 500) is not repeated: a one-time refresh token sent twice is reuse, and the server
/// revokes the user's whole token family.
fn never_reached_the_server(error: &tokenwarden_oauth::Error) -> bool {
    use tokenwarden_oauth::{Error as E, TransportKind as K};
    match error {
        E::TokenEndpoint { status, .. } | E::UnexpectedStatus { status, .. } => {
            *status == StatusCode::TOO_MANY_REQUESTS || *status == StatusCode::SERVICE_UNAVAILABLE
        }
        E::Transport { kind, .. } => matches!(kind, K::ConnectionRefused | K::Dns | K::Tls),
        _ => false,
    }
}

/// Why [`fetch`] gave up.
pub(crate) enum Stop {
    /// The last attempt's error.
    Failed(tokenwarden_oauth::Error),
    /// The deadline cut a request short.
    Deadline,
}

/// Requests a token from `source`, retrying what may succeed on a second try, until
/// `deadline`: a request cut short by the deadline fails with a timeout, and no backoff or
/// `Retry-After` wait is begun that would end past it. `sending` is called before each request
/// and returns the time it is sent at; `answered` after each.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch(
    source: &Source,
    oauth: &OAuthClient,
    params: &TokenParams,
    refresh_token: Option<&Secret>,
    retry: &RetryPolicy,
    deadline: Instant,
    mut sending: impl FnMut() -> SystemTime,
    mut answered: impl FnMut(Result<(), &tokenwarden_oauth::Error>),
) -> Result<(TokenResponse, SystemTime), Stop> {
    let mut retries = 0;
    loop {
        let sent_at = sending();
        let request = source.request(oauth, params, refresh_token);
        let error = match tokio::time::timeout_at(deadline, request).await {
            Ok(Ok(response)) => {
                answered(Ok(()));
                return Ok((response, sent_at));
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => return Err(Stop::Deadline),
        };
        answered(Err(&error));
        let may_repeat = match refresh_token {
            None => error.is_retryable(),
            Some(_) => never_reached_the_server(&error),
        };
        if !may_repeat || retries >= retry.max_retries {
            return Err(Stop::Failed(error));
        }
        let delay = retry.delay(retries, &error);
        if Instant::now()
            .checked_add(delay)
            .is_none_or(|at| at >= deadline)
        {
            tracing::debug!(%error, ?delay, "token request failed; no time left for a retry");
            return Err(Stop::Failed(error));
        }
        tracing::debug!(%error, ?delay, "token request failed; retrying");
        tokio::time::sleep(delay).await;
        retries += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwarden_core::{AccessToken, TokenType};

    fn timing() -> Timing {
        Timing {
            renew_before: Duration::from_secs(60),
            expiry_skew: Duration::from_secs(5),
        }
    }

    fn cached(lifetime: u64, renew_before: u64) -> CachedToken {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let token = AccessToken::new("t", TokenType::Bearer).unwrap();
        let expires_at = t0 + Duration::from_secs(lifetime);
        CachedToken::new(
            token,
            expires_at,
            expires_at - Duration::from_secs(renew_before),
        )
    }

    #[test]
    fn capped_tokens_live_until_the_cap_and_are_not_renewed_ahead() {
        let hour = cached(3600, 60);
        let cap = hour.expires_at() - Duration::from_secs(3000);
        let capped = timing().capped(hour.clone(), cap);
        assert_eq!(capped.expires_at(), cap);
        assert_eq!(capped.renew_at(), cap, "no renewal ahead of the cap");
        assert_eq!(capped.token().expires_at(), Some(cap));
        assert_eq!(timing().usable_until(&capped), cap, "sent until the cap");
        let later = hour.expires_at() + Duration::from_secs(1);
        assert_eq!(
            timing().capped(hour.clone(), later),
            hour,
            "a later cap changes nothing"
        );
    }

    #[test]
    fn short_tokens_are_renewed_at_half_their_lifetime_and_used_until_then() {
        // 2 s: renewed after 1 s, and not sent after that (the server may count it dead
        // up to 1 s early).
        let two = cached(2, 1);
        assert_eq!(
            timing().usable_until(&two),
            two.renew_at(),
            "the skew is capped by the window"
        );
        // One hour: renewed a minute early, sent until five seconds before expiry.
        let hour = cached(3600, 60);
        assert_eq!(
            timing().usable_until(&hour),
            hour.expires_at() - Duration::from_secs(5)
        );
        // Zero lifetime: due and unusable at once.
        let zero = cached(0, 0);
        assert_eq!(timing().usable_until(&zero), zero.expires_at());
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let policy = RetryPolicy::default().max_retry_after(Duration::from_secs(3));
        let error = |secs: Option<u64>| tokenwarden_oauth::Error::UnexpectedStatus {
            endpoint: "https://idp.example.com/token".to_owned(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: secs.map(Duration::from_secs),
        };
        assert_eq!(policy.delay(0, &error(Some(1))), Duration::from_secs(1));
        assert_eq!(policy.delay(0, &error(Some(60))), Duration::from_secs(3));
        assert!(policy.delay(0, &error(None)) <= Duration::from_millis(100));
        assert!(policy.delay(40, &error(None)) <= Duration::from_secs(2));
    }
}
