use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The time source for expiry decisions. Wall-clock time, because expiry moments are shared
/// between processes through a cache.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time read cheaply: it may lag [`now`](Clock::now) by up to
    /// [`COARSE_CLOCK_LAG`], so callers deciding whether something expired add that much.
    /// Defaults to [`now`](Clock::now).
    fn now_coarse(&self) -> SystemTime {
        self.now()
    }

    /// [`now_coarse`](Clock::now_coarse) as nanoseconds since the Unix epoch (0 before it,
    /// saturating in the year 2554): what a hot path compares against a precomputed deadline.
    fn now_coarse_unix_nanos(&self) -> u64 {
        unix_nanos(self.now_coarse())
    }
}

/// A shared clock is a clock: every builder that takes `impl Clock` also takes the
/// `Arc<dyn Clock>` (or `Arc<ManualClock>`) another part of the program already holds.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }

    fn now_coarse(&self) -> SystemTime {
        (**self).now_coarse()
    }

    fn now_coarse_unix_nanos(&self) -> u64 {
        (**self).now_coarse_unix_nanos()
    }
}

/// `t` as nanoseconds since the Unix epoch: 0 for earlier times, saturating in the year 2554.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How far [`Clock::now_coarse`] may lag behind [`Clock::now`] (a kernel tick is 1 to 10 ms).
pub const COARSE_CLOCK_LAG: Duration = Duration::from_millis(20);

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn now_coarse(&self) -> SystemTime {
        // CLOCK_REALTIME_COARSE is the time of the last tick, read from the vDSO without a
        // syscall and without reading the TSC.
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        match (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
            (Ok(secs), Ok(nanos)) => UNIX_EPOCH + Duration::new(secs, nanos),
            _ => SystemTime::now(),
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[inline]
    fn now_coarse_unix_nanos(&self) -> u64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        match (u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) {
            (Ok(secs), Ok(nanos)) => secs.saturating_mul(1_000_000_000).saturating_add(nanos),
            _ => 0,
        }
    }
}

/// A clock that moves only when told to, for tests. Clones share the same time.
#[derive(Clone)]
pub struct ManualClock {
    nanos_since_epoch: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `start` (times before 1970 are taken as 1970).
    pub fn new(start: SystemTime) -> Self {
        ManualClock {
            nanos_since_epoch: Arc::new(AtomicU64::new(to_nanos(start))),
        }
    }

    /// A clock standing at the current system time.
    pub fn starting_now() -> Self {
        ManualClock::new(SystemTime::now())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos_since_epoch.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, to: SystemTime) {
        self.nanos_since_epoch.store(to_nanos(to), Ordering::SeqCst);
    }
}

fn to_nanos(t: SystemTime) -> u64 {
    unix_nanos(t)
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos_since_epoch.load(Ordering::SeqCst))
    }

    fn now_coarse_unix_nanos(&self) -> u64 {
        self.nanos_since_epoch.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_clock_reads_the_clock_it_shares() {
        let manual = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000));
        let shared: Arc<dyn Clock> = Arc::new(manual.clone());
        let nested = Arc::new(shared.clone());
        manual.advance(Duration::from_secs(5));
        let expected = UNIX_EPOCH + Duration::from_secs(1_005);
        for clock in [&shared as &dyn Clock, &nested] {
            assert_eq!(clock.now(), expected);
            assert_eq!(clock.now_coarse(), expected);
            assert_eq!(clock.now_coarse_unix_nanos(), 1_005_000_000_000);
        }
    }

    #[test]
    fn coarse_system_time_is_close_to_precise_time() {
        let precise_before = SystemClock.now();
        let coarse = SystemClock.now_coarse();
        let precise_after = SystemClock.now();
        assert!(coarse <= precise_after, "coarse time is never ahead");
        assert!(
            coarse + COARSE_CLOCK_LAG >= precise_before,
            "and lags by less than the bound"
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = ManualClock::new(start);
        let shared = clock.clone();
        assert_eq!(clock.now(), start);
        shared.advance(Duration::from_secs(61));
        assert_eq!(clock.now(), start + Duration::from_secs(61));
        clock.set(start);
        assert_eq!(shared.now(), start);
    }
}
