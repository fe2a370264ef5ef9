//! Crash points for tests. Built only with the `failpoints` cargo feature (never in release
//! builds): `KEYSYNC_FAILPOINT=<name>` aborts the process at that point, like a SIGKILL, so
//! tests can prove every rotation step resumes from Vault state alone.

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
