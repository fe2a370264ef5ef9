//! Reliability figures: tests record what they tried and what held, and
//! `scripts/reliability` turns the records into `docs/RELIABILITY.md`.
//!
//! Counts scale with `KEYSYNC_RELIABILITY_FULL=1` (the documented full run); CI runs the
//! reduced counts. Records go to `$KEYSYNC_REPORT_FILE` (JSON lines) when it is set, and
//! nowhere otherwise, so ordinary `cargo test` leaves no files behind.
#![allow(dead_code)]

use serde_json::json;
use std::io::Write as _;

/// True for the full-count run (`KEYSYNC_RELIABILITY_FULL=1`).
pub fn full() -> bool {
    std::env::var("KEYSYNC_RELIABILITY_FULL").is_ok_and(|v| v == "1")
}

/// `ci` normally, `full_count` in the full run.
pub fn scale(ci: usize, full_count: usize) -> usize {
    if full() {
        full_count
    } else {
        ci
    }
}

/// One row of the report.
///
/// * `section`: the RELIABILITY.md heading ("Faults", "Crashes", "Bad input", "Security", …)
/// * `case`: what was tried, e.g. "60 s Vault outage in steady state"
/// * `runs`: how many times it was tried
/// * `result`: what held, with the figures, e.g. "0 torn files, caught up in 1.2 s, 14 attempts"
pub fn record(section: &str, case: &str, runs: usize, result: &str) {
    let Ok(path) = std::env::var("KEYSYNC_REPORT_FILE") else { return };
    // The test binary, so a full-count run of some binaries replaces only their rows.
    let binary = env!("CARGO_CRATE_NAME");
    let line =
        json!({ "section": section, "binary": binary, "case": case, "runs": runs, "result": result, "full": full() });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open report file {path}: {e}"));
    // One write per line: appends of < PIPE_BUF from parallel tests do not interleave.
    file.write_all(format!("{line}\n").as_bytes()).unwrap_or_else(|e| panic!("cannot write report file {path}: {e}"));
}
