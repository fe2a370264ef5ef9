//! Crash and fault points for tests. Built only with the `failpoints` cargo feature (never in
//! release builds):
//! * `KEYSYNC_FAILPOINT=<name>` aborts the process at that point, like a SIGKILL, so tests can
//!   prove every rotation step resumes from Vault state alone ([`hit`]);
//! * `KEYSYNC_FAILPOINT_ERROR=<name>[@<probability>],…` makes [`fail`] answer true there (each
//!   time with that probability, default 1), so the caller returns an error as if the network
//!   had failed — e.g. a CAS write that landed but whose answer was lost. With
//!   `KEYSYNC_FAILPOINT_PAUSE_MS=<ms>` the thread then sleeps that long, so a test that watches
//!   for the failpoint's line can inject a network fault before the process goes on.

/// Aborts here when the `failpoints` feature is on and `KEYSYNC_FAILPOINT` names this point.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("KEYSYNC_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether the caller should fail here: `KEYSYNC_FAILPOINT_ERROR` names this point (with its
/// probability). Always false without the `failpoints` feature.
#[inline]
pub fn fail(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        let Ok(list) = std::env::var("KEYSYNC_FAILPOINT_ERROR") else { return false };
        for entry in list.split(',').map(str::trim) {
            let (point, p) = match entry.split_once('@') {
                Some((point, p)) => (point, p.parse::<f64>().unwrap_or(1.0)),
                None => (entry, 1.0),
            };
            if point == name {
                use rand::Rng as _;
                let fire = rand::rng().random_bool(p.clamp(0.0, 1.0));
                if fire {
                    eprintln!("failpoint {name}: failing");
                    if let Some(ms) = std::env::var("KEYSYNC_FAILPOINT_PAUSE_MS").ok().and_then(|v| v.parse().ok()) {
                        std::thread::sleep(std::time::Duration::from_millis(ms));
                    }
                }
                return fire;
            }
        }
        false
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}
