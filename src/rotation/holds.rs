//! Who still holds a key, and whether the previous key may be retired: a pure function of
//! the key's state, the agents' reports (`_acks`) and the clock, shared by the rotation
//! engine (which acts on it) and `keysync status NAME --consumers` (which shows it).
//!
//! The rule (docs/rotation.md, "Retirement waits for consumers"):
//! * An agent counts when its report is younger than `ack_ttl` and lists the key (it is
//!   bound to it). An older report is *silent*: shown, never waited for.
//! * A sink *holds back* retirement when it holds the previous key, or when what it holds is
//!   unknown (it never rendered in the agent's life, or its hook has not run since start).
//!   A sink holding an older, already retired key (*stale*) does not: waiting cannot help it.
//! * Before `grace_until` the previous key is retired early when at least one agent counts
//!   and none holds back. At `grace_until` it is retired when none holds back; otherwise
//!   retirement is *held* until `grace_until + max_hold`, then *forced* (logged, counted,
//!   recorded for `status`).

use crate::store::{Ack, KeyRecord, SinkHold};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// What one sink holds, relative to the key's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    Current,
    /// An older key keysync already retired.
    Stale,
    Previous,
    /// Nothing known on disk (never rendered here, or waiting for its hook since start).
    Unknown,
}

impl Held {
    pub fn as_str(self) -> &'static str {
        match self {
            Held::Current => "current",
            Held::Stale => "stale",
            Held::Previous => "previous",
            Held::Unknown => "unknown",
        }
    }
}

/// One sink of one agent.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerSink {
    pub sink: String,
    /// `failed` when the last render or hook failed, else what it holds.
    pub state: &'static str,
    pub holds: Held,
    pub version: Option<u64>,
    pub fingerprint: Option<String>,
    pub error: Option<String>,
}

/// One agent bound to the key.
#[derive(Clone, Debug, Serialize)]
pub struct Consumer {
    pub agent: String,
    pub reported_at: Option<DateTime<Utc>>,
    /// Reported within `ack_ttl`.
    pub fresh: bool,
    /// Fresh and some sink holds the previous key or something unknown.
    pub holds_retirement: bool,
    pub sinks: Vec<ConsumerSink>,
}

impl Consumer {
    /// The agent's state for metrics: `silent`, `failed`, or the worst of what it holds.
    pub fn state(&self) -> &'static str {
        if !self.fresh {
            return "silent";
        }
        if self.sinks.iter().any(|s| s.state == "failed") {
            return "failed";
        }
        self.sinks.iter().map(|s| s.holds).max().unwrap_or(Held::Unknown).as_str()
    }
}

/// Every state a consumer can be counted in (`keysync_key_consumers{state}`).
pub const CONSUMER_STATES: [&str; 6] = ["current", "previous", "stale", "unknown", "failed", "silent"];

/// What happens to the previous key now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Retirement {
    /// No previous key.
    Nothing,
    /// In grace and not every counted agent switched (or none reports): wait for grace end.
    Waiting { grace_until: DateTime<Utc> },
    /// In grace and every counted agent switched: retire now.
    Early,
    /// Grace over and nobody holds it back: retire now.
    Due,
    /// Grace over, but these agents still hold it: wait, at most until `until`.
    Held { by: Vec<String>, until: DateTime<Utc> },
    /// Held past `max_hold`: retire anyway.
    Forced { by: Vec<String>, why: String },
}

impl Retirement {
    /// Whether the previous key should be retired now.
    pub fn retire_now(&self) -> bool {
        matches!(self, Retirement::Early | Retirement::Due | Retirement::Forced { .. })
    }
}

/// The agents bound to `key` with what their sinks hold.
pub fn consumers(record: &KeyRecord, acks: &[(String, Ack)], now: DateTime<Utc>, ack_ttl: Duration) -> Vec<Consumer> {
    let s = &record.state;
    let fp_of = |v: Option<u64>| v.and_then(|v| s.fingerprints.get(&v));
    let (current, previous) = (fp_of(s.current), fp_of(s.previous));
    let ttl = chrono::Duration::from_std(ack_ttl).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    for (agent, ack) in acks {
        let Some(holds) = ack.holdings(record.name.as_str()) else { continue };
        let fresh = ack.seen_at.is_some_and(|t| now - t < ttl);
        let sinks: Vec<ConsumerSink> = holds.into_iter().map(|h| classify(h, record, current, previous)).collect();
        let holds_retirement =
            fresh && s.previous.is_some() && sinks.iter().any(|c| matches!(c.holds, Held::Previous | Held::Unknown));
        out.push(Consumer { agent: agent.clone(), reported_at: ack.seen_at, fresh, holds_retirement, sinks });
    }
    out
}

fn classify(h: SinkHold, record: &KeyRecord, current: Option<&String>, previous: Option<&String>) -> ConsumerSink {
    let holds = match &h.fingerprint {
        None => Held::Unknown,
        Some(fp) if Some(fp) == current => Held::Current,
        Some(fp) if Some(fp) == previous => Held::Previous,
        Some(_) => Held::Stale,
    };
    ConsumerSink {
        state: if h.error.is_some() { "failed" } else { holds.as_str() },
        sink: h.sink,
        holds,
        // A report without the version (a fully switched key, an older agent): the version
        // whose recorded fingerprint it is.
        version: h.version.or_else(|| {
            let fp = h.fingerprint.as_ref()?;
            record.state.fingerprints.iter().find(|(_, f)| *f == fp).map(|(v, _)| *v)
        }),
        fingerprint: h.fingerprint,
        error: h.error,
    }
}

/// The retirement decision for the key's previous version (see the module doc).
pub fn decide(record: &KeyRecord, consumers: &[Consumer], now: DateTime<Utc>, max_hold: Duration) -> Retirement {
    let s = &record.state;
    let (Some(prev), Some(grace_until)) = (s.previous, s.grace_until) else { return Retirement::Nothing };
    let current_known = s.current.is_some_and(|c| s.fingerprints.contains_key(&c));
    let holders: Vec<String> = consumers.iter().filter(|c| c.holds_retirement).map(|c| c.agent.clone()).collect();
    if now < grace_until {
        let counted = consumers.iter().any(|c| c.fresh);
        return if current_known && counted && holders.is_empty() {
            Retirement::Early
        } else {
            Retirement::Waiting { grace_until }
        };
    }
    if holders.is_empty() {
        return Retirement::Due;
    }
    let until = grace_until + chrono::Duration::from_std(max_hold).unwrap_or(chrono::Duration::MAX / 2);
    if now < until {
        return Retirement::Held { by: holders, until };
    }
    let detail: Vec<String> = consumers
        .iter()
        .filter(|c| c.holds_retirement)
        .flat_map(|c| {
            c.sinks.iter().filter(|s| matches!(s.holds, Held::Previous | Held::Unknown)).map(move |s| {
                let what = match s.error.as_deref() {
                    Some(e) => format!("failed ({e}), holds {}", s.holds.as_str()),
                    None => format!("holds {}", s.holds.as_str()),
                };
                format!("{} {}: {what}", c.agent, s.sink)
            })
        })
        .collect();
    Retirement::Forced {
        by: holders,
        why: format!(
            "v{prev} retired although still held: grace ended {} and max_hold ({}) ran out; {}",
            grace_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            humantime::format_duration(max_hold),
            detail.join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{KeyName, Metadata, RotationState};

    fn record(grace_until: DateTime<Utc>) -> KeyRecord {
        let state = RotationState {
            current: Some(2),
            previous: Some(1),
            grace_until: Some(grace_until),
            fingerprints: [(1, "sha256:one".to_string()), (2, "sha256:two".to_string())].into(),
            managed: true,
            ..Default::default()
        };
        KeyRecord { name: KeyName::parse("gw").unwrap(), meta: Metadata::default(), state }
    }

    fn ack(at: DateTime<Utc>, fp: Option<&str>, error: Option<&str>) -> Ack {
        let hold = SinkHold {
            sink: "/k".into(),
            version: None,
            fingerprint: fp.map(Into::into),
            error: error.map(Into::into),
        };
        Ack { seen_at: Some(at), keys: Default::default(), sinks: [("gw".to_string(), vec![hold])].into() }
    }

    const TTL: Duration = Duration::from_secs(600);
    const HOLD: Duration = Duration::from_secs(3600);

    #[test]
    fn a_fresh_agent_holding_the_previous_key_holds_retirement_until_max_hold() {
        let now = Utc::now();
        let r = record(now - chrono::Duration::seconds(10));
        let acks = vec![
            ("a".to_string(), ack(now, Some("sha256:two"), None)),
            ("b".to_string(), ack(now, Some("sha256:one"), Some("disk full"))),
        ];
        let c = consumers(&r, &acks, now, TTL);
        assert_eq!(c[1].state(), "failed");
        assert!(matches!(decide(&r, &c, now, HOLD), Retirement::Held { ref by, .. } if by == &["b".to_string()]));
        let later = now + chrono::Duration::seconds(3600);
        let c = consumers(&r, &acks, now, TTL); // same reports, still fresh at `now`
        match decide(&r, &c, later, HOLD) {
            Retirement::Forced { by, why } => {
                assert_eq!(by, ["b".to_string()]);
                assert!(why.contains("b /k: failed (disk full), holds previous"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_agent_that_stopped_reporting_does_not_hold_retirement() {
        let now = Utc::now();
        let r = record(now - chrono::Duration::seconds(10));
        let acks = vec![("gone".to_string(), ack(now - chrono::Duration::seconds(601), Some("sha256:one"), None))];
        let c = consumers(&r, &acks, now, TTL);
        assert_eq!(c[0].state(), "silent");
        assert_eq!(decide(&r, &c, now, HOLD), Retirement::Due);
    }

    #[test]
    fn early_retirement_needs_a_fresh_agent_and_no_holder_and_stale_or_unknown_are_told_apart() {
        let now = Utc::now();
        let r = record(now + chrono::Duration::seconds(3600));
        assert!(matches!(decide(&r, &[], now, HOLD), Retirement::Waiting { .. }));
        let switched = vec![("a".to_string(), ack(now, Some("sha256:two"), None))];
        assert_eq!(decide(&r, &consumers(&r, &switched, now, TTL), now, HOLD), Retirement::Early);
        let stale = vec![("a".to_string(), ack(now, Some("sha256:zero"), None))];
        let c = consumers(&r, &stale, now, TTL);
        assert_eq!(c[0].state(), "stale");
        assert_eq!(decide(&r, &c, now, HOLD), Retirement::Early, "a stale sink cannot be helped by waiting");
        let unknown = vec![("a".to_string(), ack(now, None, None))];
        assert!(matches!(decide(&r, &consumers(&r, &unknown, now, TTL), now, HOLD), Retirement::Waiting { .. }));
    }

    #[test]
    fn an_older_agents_report_counts_by_its_single_fingerprint() {
        let now = Utc::now();
        let r = record(now + chrono::Duration::seconds(3600));
        let old = Ack {
            seen_at: Some(now),
            keys: [("gw".to_string(), "sha256:two".to_string())].into(),
            ..Default::default()
        };
        let c = consumers(&r, &[("old".to_string(), old)], now, TTL);
        assert_eq!(c[0].sinks[0].holds, Held::Current);
        assert_eq!(decide(&r, &c, now, HOLD), Retirement::Early);
    }
}
