//! The virtual clock a test hands to the keysync processes it starts (`KEYSYNC_TEST_CLOCK`, read
//! by src/clock.rs in a `test-clock` build): a file holding how many milliseconds
//! keysync's "now" runs ahead of the wall clock. [`TestClock::advance`] moves it on, and an
//! agent waiting for a deadline (its next poll, a grace end, a debounce window, a rotation
//! check) sees the move within 50 ms instead of after the real wait.
//!
//! Without the `test-clock` feature the binary ignores the file, so `advance` really waits
//! instead: the same tests pass either way, only slower (scripts/test builds with the feature).

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Whether the keysync under test reads the virtual clock (built with `--features test-clock`).
pub const VIRTUAL: bool = cfg!(feature = "test-clock");

pub struct TestClock {
    file: PathBuf,
    offset_ms: AtomicI64,
    _dir: tempfile::TempDir,
}

impl Default for TestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClock {
    /// A clock at the wall-clock time (offset 0).
    pub fn new() -> TestClock {
        let dir = tempfile::tempdir().expect("tempdir for the test clock");
        let file = dir.path().join("clock");
        let clock = TestClock { file, offset_ms: AtomicI64::new(0), _dir: dir };
        clock.write(0);
        clock
    }

    /// The environment that puts a keysync process on this clock.
    pub fn env(&self) -> (String, String) {
        ("KEYSYNC_TEST_CLOCK".to_string(), self.file.display().to_string())
    }

    /// How far ahead of the wall clock keysync's time is.
    pub fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms.load(Ordering::SeqCst).max(0) as u64)
    }

    /// keysync's "now" on this clock (for checking timestamps keysync wrote).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::SeqCst))
    }

    /// Moves keysync's time forward by `by`; without the `test-clock` feature, waits `by`.
    pub async fn advance(&self, by: Duration) {
        if !VIRTUAL {
            tokio::time::sleep(by).await;
            return;
        }
        let ms = i64::try_from(by.as_millis()).expect("a test advances by less than 292 million years");
        let now = self.offset_ms.fetch_add(ms, Ordering::SeqCst) + ms;
        self.write(now);
    }

    /// Moves the clock file on by `by` even without the `test-clock` feature (no waiting): for
    /// the test that proves such a build ignores it.
    pub fn jump_file(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).expect("a test jumps by less than 292 million years");
        let now = self.offset_ms.fetch_add(ms, Ordering::SeqCst) + ms;
        self.write(now);
    }

    /// Written beside and renamed into place, so a reader never sees half a number.
    fn write(&self, offset_ms: i64) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, offset_ms.to_string()).expect("write the test clock");
        std::fs::rename(&tmp, &self.file).expect("move the test clock into place");
    }
}
