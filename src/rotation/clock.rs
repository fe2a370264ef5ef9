//! The current time behind a trait, so the rotation engine can be tested without sleeping.

use chrono::{DateTime, Duration, Utc};
use std::sync::Mutex;

/// A source of "now". The engine takes `&dyn Clock` so tests can drive time by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock (UTC), for production.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to, so tests can step through schedules instantly.
#[derive(Debug)]
pub struct FakeClock(Mutex<DateTime<Utc>>);

impl FakeClock {
    pub fn new(now: DateTime<Utc>) -> Self {
        FakeClock(Mutex::new(now))
    }

    /// Jump to an absolute time (may go backwards, to test clock skew).
    pub fn set(&self, now: DateTime<Utc>) {
        *self.lock() = now;
    }

    /// Move forward (or backward, with a negative duration) by `by`.
    pub fn advance(&self, by: Duration) {
        let mut guard = self.lock();
        *guard = guard.checked_add_signed(by).unwrap_or(*guard);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        // A panic while holding this lock cannot leave the time half-written: recover.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = FakeClock::new(t0);
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::hours(2));
        assert_eq!(clock.now(), t0 + Duration::hours(2));
        clock.set(t0);
        assert_eq!(clock.now(), t0);
    }

    #[test]
    fn system_clock_is_close_to_now() {
        let diff = SystemClock.now() - Utc::now();
        assert!(diff.num_seconds().abs() < 5);
    }
}
