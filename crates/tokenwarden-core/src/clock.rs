use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The time source for expiry decisions. Wall-clock time, because expiry moments are shared
/// between processes through a cache.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// A shared clock is a clock: every builder that takes `impl Clock` also takes the
/// `Arc<dyn Clock>` (or `Arc<ManualClock>`) another part of the program already holds.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
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

/// `t` as nanoseconds since the Unix epoch: 0 for earlier times, saturating in the year 2554.
fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.nanos_since_epoch.load(Ordering::SeqCst))
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
        }
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
