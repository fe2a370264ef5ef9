//! Logs an operator can read while something stays broken: a rotating agent checks every key
//! every `rotation_check_interval`, so an outage of a minute used to print one warning per key
//! per check (882 lines in 81 s). [`FailureLog`] prints the first failure of a kind, counts the
//! identical ones that follow, repeats a reminder with the count at most every
//! [`REMINDER_EVERY`], and prints one line when it works again.
//!
//! Kinds: a Vault outage (unreachable, 5xx, 429) is one kind for all keys — one line per
//! outage, whatever the number of keys; any other failure is its own kind per key and message.

use crate::store::StoreError;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A failure that keeps happening is mentioned again (with its count) this often.
pub const REMINDER_EVERY: Duration = Duration::from_secs(600);

/// The scope under which Vault outages are counted (not a key name: key names cannot start
/// with `_`).
const VAULT: &str = "_vault";

#[derive(Debug)]
struct Streak {
    /// What identifies the failure: for a Vault outage any transient error (the cause may
    /// change during one outage: refused, reset, timed out), else the message.
    kind: String,
    /// The first failure's text, for the log.
    what: String,
    count: u64,
    since: Instant,
    told: Instant,
}

/// Rate-limited logging of repeated rotation failures (see the module comment).
#[derive(Debug, Default)]
pub struct FailureLog {
    streaks: BTreeMap<String, Streak>,
}

/// What the caller should log for one event; `None`: stay quiet.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A new kind of failure (or the first after recovery).
    First { scope: String, what: String },
    /// The same failure still happening, `count` times since `for_secs` ago.
    Reminder { scope: String, what: String, count: u64, for_secs: u64 },
    /// Working again after `count` failures over `for_secs`.
    Recovered { scope: String, what: String, count: u64, for_secs: u64 },
}

impl FailureLog {
    /// Records a failed step of `key`; returns the line to log, if any.
    pub fn failed(&mut self, key: &str, error: &StoreError, now: Instant) -> Option<Line> {
        let (scope, kind, what) = match error {
            StoreError::Vault(v) if v.is_transient() => (VAULT.to_string(), VAULT.to_string(), outage_kind(v)),
            other => (key.to_string(), other.to_string(), other.to_string()),
        };
        match self.streaks.get_mut(&scope) {
            Some(s) if s.kind == kind => {
                s.count += 1;
                if now.duration_since(s.told) >= REMINDER_EVERY {
                    s.told = now;
                    return Some(Line::Reminder {
                        scope,
                        what,
                        count: s.count,
                        for_secs: now.duration_since(s.since).as_secs(),
                    });
                }
                None
            }
            _ => {
                self.streaks
                    .insert(scope.clone(), Streak { kind, what: what.clone(), count: 1, since: now, told: now });
                Some(Line::First { scope, what })
            }
        }
    }

    /// Records a step of `key` that worked (it reached Vault): ends the Vault outage streak and
    /// the key's own streak. Returns the recovery lines to log.
    pub fn succeeded(&mut self, key: &str, now: Instant) -> Vec<Line> {
        [VAULT, key]
            .into_iter()
            .filter_map(|scope| {
                let s = self.streaks.remove(scope)?;
                Some(Line::Recovered {
                    scope: scope.to_string(),
                    what: s.what,
                    count: s.count,
                    for_secs: now.duration_since(s.since).as_secs(),
                })
            })
            .collect()
    }

    /// Logs a line from [`Self::failed`] or [`Self::succeeded`] with `tracing`.
    pub fn emit(line: &Line) {
        match line {
            Line::First { scope, what } if scope == VAULT => tracing::warn!(
                error = %what,
                "rotation paused: Vault cannot be reached; retrying every check (further failures are counted, not logged, until it recovers)"
            ),
            Line::First { scope, what } => {
                tracing::warn!(key = %scope, error = %what, "rotation step failed; retrying every check (repeats are counted, not logged)")
            }
            Line::Reminder { scope, what, count, for_secs } => {
                tracing::warn!(scope = %scope, error = %what, failures = count, for_secs, "rotation still failing")
            }
            Line::Recovered { scope, count, for_secs, .. } if scope == VAULT => {
                tracing::info!(failures = count, for_secs, "Vault reachable again; rotation resumed")
            }
            Line::Recovered { scope, count, for_secs, .. } => {
                tracing::info!(key = %scope, failures = count, for_secs, "rotation step works again")
            }
        }
    }
}

/// An outage's kind without the request path (which differs per key): the address and cause.
fn outage_kind(e: &crate::vault::VaultError) -> String {
    match e {
        crate::vault::VaultError::Unreachable { address, detail, .. } => {
            format!("cannot reach Vault at {address} ({detail})")
        }
        crate::vault::VaultError::Api { status, .. } => format!("Vault answered {status}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::VaultError;

    fn down(path: &str) -> StoreError {
        StoreError::Vault(VaultError::Unreachable {
            address: "http://v:8200".into(),
            op: format!("GET {path}"),
            detail: "Connection refused".into(),
            connected: false,
        })
    }

    #[test]
    fn an_outage_is_one_line_for_all_keys_then_one_when_it_ends() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let mut lines = Vec::new();
        for check in 0..80u64 {
            for key in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"] {
                let mut e = down(&format!("secret/metadata/keysync/{key}"));
                if check % 2 == 1 {
                    // The cause changes during one outage (refused, reset, sealed): same outage.
                    e = StoreError::Vault(VaultError::Api {
                        method: "GET".into(),
                        path: key.into(),
                        status: 503,
                        message: "sealed".into(),
                    });
                }
                lines.extend(log.failed(key, &e, t0 + Duration::from_secs(check)));
            }
        }
        assert_eq!(lines.len(), 1, "{lines:?}");
        let back = log.succeeded("a", t0 + Duration::from_secs(81));
        assert!(matches!(&back[..], [Line::Recovered { count: 880, for_secs: 81, .. }]), "{back:?}");
        assert!(log.succeeded("b", t0 + Duration::from_secs(82)).is_empty(), "recovery is told once");
    }

    #[test]
    fn a_long_failure_is_reminded_with_its_count() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let e = StoreError::Refused("minting a key for k failed: exit 1".into());
        assert!(matches!(log.failed("k", &e, t0), Some(Line::First { .. })));
        assert_eq!(log.failed("k", &e, t0 + Duration::from_secs(60)), None);
        let later = log.failed("k", &e, t0 + REMINDER_EVERY + Duration::from_secs(1));
        assert!(matches!(later, Some(Line::Reminder { count: 3, .. })), "{later:?}");
        // Another key's failure and a different failure of the same key are told.
        assert!(log.failed("other", &e, t0).is_some());
        let e2 = StoreError::Refused("minting a key for k failed: exit 2".into());
        assert!(matches!(log.failed("k", &e2, t0 + Duration::from_secs(700)), Some(Line::First { .. })));
    }
}
