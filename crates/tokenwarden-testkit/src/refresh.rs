//! Refresh token policy: rotation, and the absolute and sliding lifetimes.

use std::time::Duration;

/// What happens to a refresh token when it is used, set with
/// [`TestServerBuilder::refresh_token_usage`](crate::TestServerBuilder::refresh_token_usage) or
/// [`TestServer::set_refresh_token_usage`](crate::TestServer::set_refresh_token_usage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefreshTokenUsage {
    /// Rotation: each refresh answers a new refresh token and the presented one becomes *used*.
    /// Presenting a used refresh token again is reuse: the server revokes the whole family (every
    /// refresh and access token descended from the same sign-in), counts a
    /// [`reuse_detection`](crate::TestServer::reuse_detections) and answers `invalid_grant`, as
    /// servers that rotate refresh tokens do to stop a stolen one.
    #[default]
    OneTime,
    /// The refresh token stays valid for its whole lifetime and can be used any number of times.
    /// A refresh answers the same refresh token again, or none at all (see
    /// [`TestServerBuilder::reuse_returns_refresh_token`](crate::TestServerBuilder::reuse_returns_refresh_token)).
    Reuse,
}

/// The default absolute lifetime of a refresh token family: 30 days, as in IdentityServer.
pub(crate) const DEFAULT_ABSOLUTE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// How refresh tokens behave; judged when a refresh token is presented, so a change applies to
/// families signed in before it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefreshPolicy {
    pub(crate) usage: RefreshTokenUsage,
    /// With [`RefreshTokenUsage::Reuse`]: whether a refresh response repeats the refresh token.
    pub(crate) reuse_returns_refresh_token: bool,
    pub(crate) lifetimes: Lifetimes,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            usage: RefreshTokenUsage::OneTime,
            reuse_returns_refresh_token: true,
            lifetimes: Lifetimes {
                absolute: DEFAULT_ABSOLUTE_LIFETIME,
                sliding: None,
            },
        }
    }
}

/// How long a refresh token family lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    /// Counted from sign-in; refreshing does not extend it.
    pub(crate) absolute: Duration,
    /// Counted from the last use of the family (sign-in or the latest refresh), if set.
    pub(crate) sliding: Option<Duration>,
}

/// Which lifetime a refresh token outlived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    Absolute,
    Sliding,
}

impl Expired {
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::Absolute => "refresh token expired (absolute lifetime)",
            Self::Sliding => "refresh token expired (sliding lifetime)",
        }
    }
}

impl Lifetimes {
    /// Whether a refresh token of a family signed in at `signed_in_at` and last used at
    /// `last_used_at` is still accepted at `now` (all as time since the Unix epoch): only
    /// strictly before the end of each lifetime, so a zero lifetime is expired at once. The
    /// absolute lifetime is judged first, as it cannot be extended.
    pub(crate) fn check(
        self,
        signed_in_at: Duration,
        last_used_at: Duration,
        now: Duration,
    ) -> Result<(), Expired> {
        let outlived = |start: Duration, lifetime: Duration| {
            // A lifetime too long to add never ends.
            start.checked_add(lifetime).is_some_and(|end| now >= end)
        };
        if outlived(signed_in_at, self.absolute) {
            return Err(Expired::Absolute);
        }
        if self
            .sliding
            .is_some_and(|sliding| outlived(last_used_at, sliding))
        {
            return Err(Expired::Sliding);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn millis(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn the_absolute_lifetime_counts_from_sign_in_whatever_the_use() {
        let lifetimes = Lifetimes {
            absolute: secs(3600),
            sliding: None,
        };
        // Signed in at 20:00 (t = 1000), used at 20:58: still refused from 21:00 on.
        let signed_in = secs(1000);
        let last_used = secs(1000 + 58 * 60);
        assert_eq!(lifetimes.check(signed_in, last_used, secs(4599)), Ok(()));
        assert_eq!(
            lifetimes.check(signed_in, last_used, secs(4600)),
            Err(Expired::Absolute)
        );
        assert_eq!(
            lifetimes.check(signed_in, last_used, secs(9999)),
            Err(Expired::Absolute)
        );
    }

    #[test]
    fn the_sliding_lifetime_counts_from_the_last_use() {
        let lifetimes = Lifetimes {
            absolute: secs(3600),
            sliding: Some(secs(300)),
        };
        let signed_in = secs(1000);
        // Unused: dies 5 minutes after sign-in.
        assert_eq!(lifetimes.check(signed_in, signed_in, secs(1299)), Ok(()));
        assert_eq!(
            lifetimes.check(signed_in, signed_in, secs(1300)),
            Err(Expired::Sliding)
        );
        // Used at 1200: lives until 1500.
        assert_eq!(lifetimes.check(signed_in, secs(1200), secs(1499)), Ok(()));
        assert_eq!(
            lifetimes.check(signed_in, secs(1200), secs(1500)),
            Err(Expired::Sliding)
        );
    }

    #[test]
    fn a_sliding_lifetime_never_outlasts_the_absolute_one() {
        let lifetimes = Lifetimes {
            absolute: secs(3600),
            sliding: Some(secs(7200)),
        };
        // Used just before the absolute end: the sliding window would reach further, but no.
        assert_eq!(
            lifetimes.check(secs(1000), secs(4590), secs(4600)),
            Err(Expired::Absolute)
        );
    }

    #[test]
    fn lifetimes_are_judged_to_the_millisecond() {
        let lifetimes = Lifetimes {
            absolute: millis(300),
            sliding: Some(millis(100)),
        };
        let signed_in = secs(1000) + millis(950);
        assert_eq!(
            lifetimes.check(signed_in, signed_in, signed_in + millis(99)),
            Ok(())
        );
        assert_eq!(
            lifetimes.check(signed_in, signed_in, signed_in + millis(100)),
            Err(Expired::Sliding)
        );
    }

    #[test]
    fn zero_lifetimes_are_expired_at_once_and_huge_ones_never() {
        let zero = Lifetimes {
            absolute: Duration::ZERO,
            sliding: None,
        };
        assert_eq!(
            zero.check(secs(5), secs(5), secs(5)),
            Err(Expired::Absolute)
        );
        let zero_sliding = Lifetimes {
            absolute: Duration::MAX,
            sliding: Some(Duration::ZERO),
        };
        assert_eq!(
            zero_sliding.check(secs(5), secs(5), secs(5)),
            Err(Expired::Sliding)
        );
        let huge = Lifetimes {
            absolute: Duration::MAX,
            sliding: Some(Duration::MAX),
        };
        assert_eq!(huge.check(secs(5), secs(5), Duration::MAX), Ok(()));
    }
}
