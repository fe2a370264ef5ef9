//! The current time behind a trait, so the rotation engine can be tested without sleeping;
//! and the process clock every time-based decision of the binary reads ([`now`], [`instant`],
//! [`sleep`]): rotation due / grace / max_age / expiry, retirement `max_hold`, ack freshness,
//! hook and exec debounce, the agent's waits.
//!
//! **Virtual clock for tests (`test-clock` cargo feature only).** Built with `--features
//! test-clock`, a process started with `KEYSYNC_TEST_CLOCK=<file>` adds the offset that file
//! holds (whole milliseconds, e.g. `3600000` = one hour ahead) to the wall clock, re-read at
//! every call; a test moves time forward by rewriting the file (tests/support/clock.rs).
//! [`sleep`] then wakes at least every [`TEST_CLOCK_POLL`] to re-read it, so advancing the
//! clock past an agent's next deadline takes effect within that, not after the real wait.
//! Without the feature none of this is compiled: `KEYSYNC_TEST_CLOCK` does nothing, and a
//! release build (`--release`, no debug assertions) refuses to compile with the feature.
//! The offset only moves keysync's idea of "now": Vault's token TTLs and its own timestamps
//! stay on the real clock, as does the agent's liveness (`/readyz` staleness).

use chrono::{DateTime, Duration, Utc};
use std::sync::Mutex;

#[cfg(all(feature = "test-clock", not(debug_assertions)))]
compile_error!("the test-clock feature is for tests only: a release build must not take a virtual clock");

/// "Now" for every time-based decision: the wall clock, plus the test offset when the
/// `test-clock` feature is built in and `KEYSYNC_TEST_CLOCK` names a file.
pub fn now() -> DateTime<Utc> {
    let wall = Utc::now();
    match test_offset() {
        Some(ms) => wall.checked_add_signed(Duration::milliseconds(ms)).unwrap_or(wall),
        None => wall,
    }
}

/// The monotonic counterpart of [`now`], for debounce windows and "every so often" timers.
pub fn instant() -> std::time::Instant {
    let real = std::time::Instant::now();
    match test_offset() {
        Some(ms) if ms >= 0 => real + std::time::Duration::from_millis(ms.unsigned_abs()),
        Some(ms) => real.checked_sub(std::time::Duration::from_millis(ms.unsigned_abs())).unwrap_or(real),
        None => real,
    }
}

/// Waits `d` by the process clock. On the wall clock that is `tokio::time::sleep`; on the
/// virtual clock it also ends as soon as the clock is moved past the deadline (re-read every
/// [`TEST_CLOCK_POLL`]).
pub async fn sleep(d: std::time::Duration) {
    if test_offset().is_none() {
        return tokio::time::sleep(d).await;
    }
    let until = instant() + d;
    loop {
        let left = until.saturating_duration_since(instant());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(TEST_CLOCK_POLL)).await;
    }
}

/// How often a [`sleep`] on the virtual clock looks at the clock file again.
pub const TEST_CLOCK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The virtual clock's offset in milliseconds, or `None` on the wall clock.
#[cfg(feature = "test-clock")]
fn test_offset() -> Option<i64> {
    use std::sync::OnceLock;
    static FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    let file = FILE
        .get_or_init(|| {
            let file = std::env::var_os("KEYSYNC_TEST_CLOCK").map(std::path::PathBuf::from)?;
            tracing::warn!(file = %file.display(), "virtual clock from KEYSYNC_TEST_CLOCK (a test build)");
            Some(file)
        })
        .as_ref()?;
    // Written by rename, so a read sees the old or the new offset; unreadable: no offset yet.
    let text = std::fs::read_to_string(file).unwrap_or_default();
    Some(text.trim().parse().unwrap_or(0))
}

/// Without the `test-clock` feature there is no virtual clock: `KEYSYNC_TEST_CLOCK` is ignored.
#[cfg(not(feature = "test-clock"))]
#[inline]
fn test_offset() -> Option<i64> {
    None
}

/// A source of "now". The engine takes `&dyn Clock` so tests can drive time by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The process clock ([`now`]): the real wall clock (UTC) in production; in a `test-clock`
/// build with `KEYSYNC_TEST_CLOCK` set, the virtual one.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        now()
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
