//! The manager's clock: a precise reading for every decision that changes state, and a cheap
//! reading for the hot path's "is the cached token still good" check.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenwarden_core::Clock;

/// Where the manager reads the time: the system's clock, or one the user set (a
/// [`ManualClock`](tokenwarden_core::ManualClock) in tests).
#[derive(Clone, Debug)]
pub(crate) enum TimeSource {
    System,
    Custom(Arc<dyn Clock>),
}

impl TimeSource {
    /// How far [`coarse_nanos`](Self::coarse_nanos) may lag behind [`now`](Self::now): the
    /// system's coarse clock advances once per kernel tick (1 to 10 ms); a custom clock is read
    /// exactly.
    pub(crate) fn coarse_lag(&self) -> Duration {
        match self {
            TimeSource::System => Duration::from_millis(20),
            TimeSource::Custom(_) => Duration::ZERO,
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        match self {
            TimeSource::System => SystemTime::now(),
            TimeSource::Custom(clock) => clock.now(),
        }
    }

    /// The time in nanoseconds since the Unix epoch, read cheaply: on Linux the system clock is
    /// `CLOCK_REALTIME_COARSE`, the time of the last tick, which the vDSO returns without a
    /// syscall or a read of the TSC. It lags [`now`](Self::now) by up to
    /// [`coarse_lag`](Self::coarse_lag), so deadlines compared with it are moved that much
    /// earlier (see [`deadline_nanos`](Self::deadline_nanos)).
    #[inline]
    pub(crate) fn coarse_nanos(&self) -> u64 {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            TimeSource::System => {
                let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
                match (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) {
                    (Ok(secs), Ok(nanos)) => {
                        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
                    }
                    _ => 0,
                }
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            TimeSource::System => unix_nanos(SystemTime::now()),
            TimeSource::Custom(clock) => unix_nanos(clock.now()),
        }
    }

    /// `at` as a deadline for [`coarse_nanos`](Self::coarse_nanos): early by the coarse lag, so
    /// a lagging reading never takes a moment past `at` for one before it.
    pub(crate) fn deadline_nanos(&self, at: SystemTime) -> u64 {
        unix_nanos(at.checked_sub(self.coarse_lag()).unwrap_or(UNIX_EPOCH))
    }
}

/// `t` as nanoseconds since the Unix epoch: 0 for earlier times, saturating in the year 2554.
fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenwarden_core::ManualClock;

    #[test]
    fn the_coarse_system_time_is_never_ahead_and_lags_less_than_its_bound() {
        let time = TimeSource::System;
        let before = unix_nanos(SystemTime::now());
        let coarse = time.coarse_nanos();
        let after = unix_nanos(SystemTime::now());
        assert!(coarse <= after, "coarse time is never ahead");
        let lag = u64::try_from(time.coarse_lag().as_nanos()).unwrap_or(u64::MAX);
        assert!(coarse + lag >= before, "and lags by less than the bound");
    }

    #[test]
    fn a_custom_clock_is_read_exactly() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(7));
        let time = TimeSource::Custom(Arc::new(clock.clone()));
        assert_eq!(time.coarse_nanos(), 7_000_000_000);
        assert_eq!(
            time.deadline_nanos(UNIX_EPOCH + Duration::from_secs(9)),
            9_000_000_000
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(time.now(), UNIX_EPOCH + Duration::from_millis(7_001));
    }
}
