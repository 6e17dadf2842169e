//! A small consecutive-failure circuit breaker, so a dead Redis costs no per-request timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` counts consecutive failures.
    Closed { failures: u32 },
    /// Calls fail immediately until `until`.
    Open { until: Instant },
    /// One probe call is in flight; the others still fail immediately.
    HalfOpen,
}

/// Which Redis user a breaker guards: it names the calls in the log line and the gauge
/// (feature `metrics`), so a token cache and a user token store in one process report apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// A [`RedisTokenCache`](crate::RedisTokenCache).
    TokenCache,
    /// A [`RedisUserTokenStore`](crate::RedisUserTokenStore).
    UserStore,
}

impl Tier {
    /// Whose calls fail fast while the breaker is open, for the log line.
    fn calls(self) -> &'static str {
        match self {
            Tier::TokenCache => "token cache",
            Tier::UserStore => "user token store",
        }
    }

    /// The gauge that is 1 while the breaker is open.
    #[cfg(feature = "metrics")]
    fn gauge(self) -> &'static str {
        match self {
            Tier::TokenCache => "tokenwarden_shared_cache_breaker_open",
            Tier::UserStore => "tokenwarden_user_store_breaker_open",
        }
    }
}

/// Opens after `threshold` consecutive failures, stays open for `cool_down`, then lets one probe
/// through: its success closes the breaker, its failure opens it for another cool-down.
///
/// The lock is held only to read or write the state, never across an await.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    tier: Tier,
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

/// Permission to make one call; report its outcome with [`Permit::success`] or [`Permit::failure`].
///
/// A permit dropped without a report (the caller's future was cancelled) counts as a failure, so a
/// cancelled half-open probe can never leave the breaker stuck half-open.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    reported: bool,
    probe: bool,
}

impl CircuitBreaker {
    pub(crate) fn new(tier: Tier, threshold: u32, cool_down: Duration) -> Self {
        CircuitBreaker {
            tier,
            threshold: threshold.max(1),
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether calls currently go through (closed). Open and half-open count as unavailable.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.load(), State::Closed { .. })
    }

    /// A permit to call Redis, or `None` while the breaker is open (or a probe is in flight).
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                tracing::debug!("redis circuit breaker half-open: probing");
                true
            }
            State::Open { .. } | State::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self,
            reported: false,
            probe,
        })
    }

    fn on_success(&self) {
        let mut state = self.lock();
        if !matches!(*state, State::Closed { .. }) {
            tracing::warn!(
                tier = self.tier.calls(),
                "redis is available again: circuit breaker closed"
            );
            #[cfg(feature = "metrics")]
            metrics::gauge!(self.tier.gauge()).set(0.0);
        }
        *state = State::Closed { failures: 0 };
    }

    fn on_failure(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        let open = State::Open {
            until: now.checked_add(self.cool_down).unwrap_or(now),
        };
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                tracing::warn!(
                    failures = failures + 1,
                    cool_down_ms = u64::try_from(self.cool_down.as_millis()).unwrap_or(u64::MAX),
                    "redis is unavailable: circuit breaker opened, {} calls fail fast",
                    self.tier.calls()
                );
                #[cfg(feature = "metrics")]
                metrics::gauge!(self.tier.gauge()).set(1.0);
                *state = open;
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                }
            }
            State::HalfOpen => {
                tracing::debug!("redis probe failed: circuit breaker stays open");
                *state = open;
            }
            // A call that started before the breaker opened finished late: keep the cool-down.
            State::Open { .. } => {}
        }
    }

    fn load(&self) -> State {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain Copy value written whole, so a poisoned lock still holds a valid one.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Permit<'_> {
    /// Whether this call is the half-open probe: the first call after an outage, which decides
    /// whether the breaker closes.
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded (Redis answered).
    pub(crate) fn success(mut self) {
        self.reported = true;
        self.breaker.on_success();
    }

    /// The call failed or timed out.
    pub(crate) fn failure(mut self) {
        self.reported = true;
        self.breaker.on_failure();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.on_failure();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = CircuitBreaker::new(Tier::TokenCache, 3, Duration::from_secs(60));
        b.try_acquire().unwrap().failure();
        let closed = b.try_acquire().unwrap();
        assert!(
            !closed.is_probe(),
            "calls through a closed breaker are not probes"
        );
        closed.failure();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        assert!(b.is_closed(), "a success resets the count");
        b.try_acquire().unwrap().failure();
        assert!(!b.is_closed());
        assert!(b.try_acquire().is_none());
    }

    #[test]
    fn one_probe_after_cool_down_and_success_closes() {
        let b = CircuitBreaker::new(Tier::TokenCache, 1, Duration::ZERO);
        b.try_acquire().unwrap().failure();
        assert!(!b.is_closed());
        let probe = b.try_acquire().expect("cool-down is over: probe");
        assert!(probe.is_probe());
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        probe.success();
        assert!(b.is_closed());
    }

    #[test]
    fn failed_probe_reopens() {
        let b = CircuitBreaker::new(Tier::TokenCache, 1, Duration::from_secs(60));
        b.try_acquire().unwrap().failure();
        *b.lock() = State::Open {
            until: Instant::now(),
        };
        b.try_acquire().unwrap().failure();
        assert!(b.try_acquire().is_none(), "a new cool-down started");
    }

    #[test]
    fn a_cancelled_probe_counts_as_failure() {
        let b = CircuitBreaker::new(Tier::TokenCache, 1, Duration::ZERO);
        b.try_acquire().unwrap().failure();
        drop(b.try_acquire().unwrap());
        assert!(!b.is_closed());
        assert!(b.try_acquire().is_some(), "not stuck half-open");
    }
}
