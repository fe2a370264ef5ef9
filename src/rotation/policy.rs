//! The per-key rotation policy and the pure function deciding whether a key is due.

use crate::duration::HumanDuration;
use chrono::{DateTime, Duration, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[keys.NAME.rotation]`: when a key is rotated. `interval` and `schedule` are alternatives;
/// `max_age` and the key's `expires_at` are safety nets that apply on top of either.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicy {
    /// Rotate this long after the last rotation (plus the key's jitter offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// Rotate at cron ticks (strict 5 fields, UTC), for change windows people can plan around.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// With `schedule`: how long after a tick rotation may still start. Unset: any time after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<HumanDuration>,
    /// Hard upper bound on a key's age: once reached, rotate as soon as possible, window or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// How long the previous key stays usable after promotion, for clients still holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<HumanDuration>,
    /// Overrides `[rotation] max_hold` for this key: how long past grace the previous key may
    /// stay unretired while a fresh agent still holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold: Option<HumanDuration>,
    /// Spread due times over `[0, jitter)` per key so many keys don't hit a provider at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<HumanDuration>,
    /// Check a freshly minted key against the provider before promoting it.
    #[serde(default = "default_true")]
    pub validate: bool,
    /// Revoke the previous key at the provider after grace. Unset: revoke if the provider can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_previous: Option<bool>,
    /// Treat a key written outside keysync as the current one instead of flagging it.
    #[serde(default)]
    pub adopt_external: bool,
}

fn default_true() -> bool {
    true
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            interval: None,
            schedule: None,
            window: None,
            max_age: None,
            grace: None,
            max_hold: None,
            jitter: None,
            validate: true,
            revoke_previous: None,
            adopt_external: false,
        }
    }
}

impl RotationPolicy {
    /// Checks what serde cannot: combinations and values. Messages name the offending setting
    /// so a config error can be fixed without reading the code.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_some() && self.schedule.is_some() {
            return Err("rotation: set either `interval` or `schedule`, not both".into());
        }
        if let Some(interval) = self.interval {
            if interval.get().is_zero() {
                return Err("rotation: `interval` must be greater than zero".into());
            }
            if let Some(jitter) = self.jitter {
                if jitter >= interval {
                    return Err(format!("rotation: `jitter` ({jitter}) must be shorter than `interval` ({interval})"));
                }
            }
        }
        if let Some(schedule) = &self.schedule {
            let cron = parse_schedule(schedule)?;
            if cron.find_next_occurrence(&Utc::now(), false).is_err() {
                return Err(format!("rotation: schedule {schedule:?} never matches a future time"));
            }
        }
        if let Some(window) = self.window {
            if self.schedule.is_none() {
                return Err("rotation: `window` only applies to `schedule`; remove it or set `schedule`".into());
            }
            if window.get().is_zero() {
                return Err("rotation: `window` must be greater than zero (leave it unset for no window)".into());
            }
        }
        if let Some(max_age) = self.max_age {
            if max_age.get().is_zero() {
                return Err("rotation: `max_age` must be greater than zero".into());
            }
        }
        Ok(())
    }
}

/// Parses a strict 5-field cron expression (`minute hour day month weekday`, UTC). Seconds,
/// years and `@hourly`-style nicknames are refused so an expression means the same thing to
/// every cron implementation an operator might check it with.
pub fn parse_schedule(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "rotation: invalid schedule {expr:?}: expected 5 fields: minute hour day month weekday (UTC), got {fields}"
        ));
    }
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build().parse(expr).map_err(|e| {
        format!("rotation: invalid schedule {expr:?} ({e}); expected 5 fields: minute hour day month weekday (UTC)")
    })
}

/// What [`decide`] concluded for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Rotate now.
    pub due: bool,
    /// The earliest time a rotation is (or was) called for; `DateTime::<Utc>::MAX_UTC` when
    /// the policy never rotates on its own (manual keys).
    pub next: DateTime<Utc>,
    /// Rotate as soon as allowed, ignoring the schedule window: `max_age` reached or the key
    /// has already expired.
    pub overdue: bool,
    /// Why: `"interval"`, `"schedule"`, `"max_age"`, `"expiry"` or `"not_due"`.
    pub reason: &'static str,
}

/// This key's deterministic offset in `[0, jitter)`, derived from SHA-256 of the key's seed and
/// its last rotation time. Deterministic so every agent computes the same due time without
/// coordinating; re-derived after each rotation so one key is not always the last one.
pub fn jitter_offset(jitter: Option<HumanDuration>, key_seed: &str, last_rotated: DateTime<Utc>) -> Duration {
    let Some(jitter) = jitter else { return Duration::zero() };
    let span_ms = u64::try_from(jitter.get().as_millis()).unwrap_or(u64::MAX);
    if span_ms == 0 {
        return Duration::zero();
    }
    let mut hasher = Sha256::new();
    hasher.update(key_seed.as_bytes());
    hasher.update([0u8]);
    hasher.update(last_rotated.to_rfc3339().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let offset_ms = u64::from_be_bytes(first) % span_ms;
    Duration::try_milliseconds(i64::try_from(offset_ms).unwrap_or(i64::MAX)).unwrap_or(Duration::zero())
}

fn chrono_duration(d: HumanDuration) -> Option<Duration> {
    Duration::from_std(d.get()).ok()
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// One applicable rule's verdict, before they are combined.
struct Candidate {
    at: DateTime<Utc>,
    due: bool,
    overdue: bool,
    reason: &'static str,
}

/// Decides whether a key is due for rotation at `now`. Pure and deterministic: the same inputs
/// give the same answer on every agent. `key_seed` (usually the key's name) spreads jitter.
///
/// Rules, all applied; the key is due if any is due, and `next` is the earliest of their times:
/// - `interval`: due at `last_rotated + interval + jitter_offset`.
/// - `schedule`: due at the first cron tick after `last_rotated` (+ jitter offset), and with a
///   `window` only until `tick + window`; a missed window moves on to the next tick.
/// - `max_age`: due and overdue once the key is that old, regardless of the window.
/// - expiry: due at 2/3 of the way from `last_rotated` to `expires_at`; overdue once expired.
///
/// Never panics, even for a policy that failed [`RotationPolicy::validate`]: invalid parts are
/// ignored.
pub fn decide(
    policy: &RotationPolicy,
    last_rotated: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    key_seed: &str,
    now: DateTime<Utc>,
) -> Decision {
    let jitter = jitter_offset(policy.jitter, key_seed, last_rotated);
    let mut candidates: Vec<Candidate> = Vec::with_capacity(4);

    if let Some(interval) = policy.interval.and_then(chrono_duration) {
        let at = add(add(last_rotated, interval), jitter);
        candidates.push(Candidate { at, due: now >= at, overdue: false, reason: "interval" });
    }

    if let Some(cron) = policy.schedule.as_deref().and_then(|s| parse_schedule(s).ok()) {
        if let Some(candidate) = schedule_candidate(&cron, policy.window, last_rotated, jitter, now) {
            candidates.push(candidate);
        }
    }

    if let Some(max_age) = policy.max_age.and_then(chrono_duration) {
        let at = add(last_rotated, max_age);
        let due = now >= at;
        candidates.push(Candidate { at, due, overdue: due, reason: "max_age" });
    }

    if let Some(expires_at) = expires_at {
        let lifetime = expires_at.signed_duration_since(last_rotated).max(Duration::zero());
        let at = add(last_rotated, lifetime * 2 / 3);
        candidates.push(Candidate { at, due: now >= at, overdue: now >= expires_at, reason: "expiry" });
    }

    let next = candidates.iter().map(|c| c.at).min().unwrap_or(DateTime::<Utc>::MAX_UTC);
    let overdue = candidates.iter().any(|c| c.overdue);
    // The most urgent reason wins, so logs and metrics say why a key was rotated early.
    let reason = ["max_age", "expiry", "schedule", "interval"]
        .into_iter()
        .find(|r| candidates.iter().any(|c| c.due && c.reason == *r))
        .unwrap_or("not_due");
    Decision { due: reason != "not_due", next, overdue, reason }
}

/// The schedule rule. Without a window: the first tick after `last_rotated`. With one: the first
/// tick after `last_rotated` whose window has not closed yet (due if it has opened).
fn schedule_candidate(
    cron: &Cron,
    window: Option<HumanDuration>,
    last_rotated: DateTime<Utc>,
    jitter: Duration,
    now: DateTime<Utc>,
) -> Option<Candidate> {
    let window = window.and_then(chrono_duration);
    // A tick T has an open or future window iff T + jitter + window > now, i.e. T is after
    // `now - jitter - window`: start the search there instead of walking every missed tick.
    let search_from = match window {
        Some(w) => match now.checked_sub_signed(jitter).and_then(|t| t.checked_sub_signed(w)) {
            Some(t) if t > last_rotated => t,
            _ => last_rotated,
        },
        None => last_rotated,
    };
    let tick = cron.find_next_occurrence(&search_from, false).ok()?;
    let start = add(tick, jitter);
    let due = match window {
        Some(w) => now >= start && now < add(start, w),
        None => now >= start,
    };
    Some(Candidate { at: start, due, overdue: false, reason: "schedule" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotation::{Clock, FakeClock};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn hd(text: &str) -> Option<HumanDuration> {
        Some(HumanDuration::try_from(text.to_string()).unwrap())
    }

    #[test]
    fn interval_due_and_not_due() {
        let policy = RotationPolicy { interval: hd("7d"), ..Default::default() };
        let last = t(2026, 1, 1, 0, 0);
        let clock = FakeClock::new(last + Duration::days(6));
        let d = decide(&policy, last, None, "openai", clock.now());
        assert!(!d.due);
        assert_eq!(d.reason, "not_due");
        assert_eq!(d.next, t(2026, 1, 8, 0, 0));
        clock.advance(Duration::days(1));
        let d = decide(&policy, last, None, "openai", clock.now());
        assert!(d.due && !d.overdue);
        assert_eq!(d.reason, "interval");
    }

    #[test]
    fn jitter_is_deterministic_bounded_and_per_key() {
        let last = t(2026, 1, 1, 0, 0);
        let jitter = hd("1h");
        let a1 = jitter_offset(jitter, "openai", last);
        let a2 = jitter_offset(jitter, "openai", last);
        assert_eq!(a1, a2);
        let offsets: Vec<Duration> = (0..50).map(|i| jitter_offset(jitter, &format!("key-{i}"), last)).collect();
        for o in &offsets {
            assert!(*o >= Duration::zero() && *o < Duration::hours(1), "{o}");
        }
        let mut distinct = offsets.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 40, "offsets should differ per key");
        assert_eq!(jitter_offset(None, "openai", last), Duration::zero());

        let policy = RotationPolicy { interval: hd("1d"), jitter, ..Default::default() };
        let d = decide(&policy, last, None, "openai", last);
        assert_eq!(d.next, last + Duration::days(1) + a1);
    }

    #[test]
    fn schedule_with_window_inside_outside_and_missed() {
        // Sundays 03:00 UTC, 2h window. 2026-01-04 is a Sunday.
        let policy = RotationPolicy { schedule: Some("0 3 * * 0".into()), window: hd("2h"), ..Default::default() };
        policy.validate().unwrap();
        let last = t(2026, 1, 1, 12, 0);
        let clock = FakeClock::new(t(2026, 1, 4, 2, 59));
        let before = decide(&policy, last, None, "k", clock.now());
        assert!(!before.due);
        assert_eq!(before.next, t(2026, 1, 4, 3, 0));

        clock.set(t(2026, 1, 4, 4, 30));
        let inside = decide(&policy, last, None, "k", clock.now());
        assert!(inside.due && !inside.overdue);
        assert_eq!(inside.reason, "schedule");

        clock.set(t(2026, 1, 4, 5, 0));
        let missed = decide(&policy, last, None, "k", clock.now());
        assert!(!missed.due);
        assert_eq!(missed.next, t(2026, 1, 11, 3, 0));

        // Weeks later, inside a later window: due again.
        clock.set(t(2026, 2, 1, 3, 10));
        let later = decide(&policy, last, None, "k", clock.now());
        assert!(later.due);
        assert_eq!(later.next, t(2026, 2, 1, 3, 0));
    }

    #[test]
    fn schedule_without_window_is_due_any_time_after_the_tick() {
        let policy = RotationPolicy { schedule: Some("30 2 1 * *".into()), ..Default::default() };
        let last = t(2026, 1, 15, 0, 0);
        let d = decide(&policy, last, None, "k", t(2026, 3, 20, 0, 0));
        assert!(d.due);
        assert_eq!(d.next, t(2026, 2, 1, 2, 30));
    }

    #[test]
    fn max_age_overdue_wins_over_schedule_window() {
        let policy = RotationPolicy {
            schedule: Some("0 3 * * 0".into()),
            window: hd("1h"),
            max_age: hd("30d"),
            ..Default::default()
        };
        let last = t(2026, 1, 1, 12, 0);
        // Wednesday, outside any window, but 31 days old.
        let d = decide(&policy, last, None, "k", t(2026, 2, 1, 12, 0) + Duration::days(3));
        assert!(d.due && d.overdue);
        assert_eq!(d.reason, "max_age");
        assert_eq!(d.next, last + Duration::days(30));
    }

    #[test]
    fn expiry_rotates_at_two_thirds_of_lifetime() {
        let policy = RotationPolicy::default();
        let last = t(2026, 1, 1, 0, 0);
        let expires = last + Duration::days(30);
        let d = decide(&policy, last, Some(expires), "k", last + Duration::days(19));
        assert!(!d.due);
        assert_eq!(d.next, last + Duration::days(20));
        let d = decide(&policy, last, Some(expires), "k", last + Duration::days(20));
        assert!(d.due && !d.overdue);
        assert_eq!(d.reason, "expiry");
        let d = decide(&policy, last, Some(expires), "k", expires);
        assert!(d.due && d.overdue);
    }

    #[test]
    fn manual_policy_is_never_due() {
        let d = decide(&RotationPolicy::default(), t(2026, 1, 1, 0, 0), None, "k", t(2030, 1, 1, 0, 0));
        assert!(!d.due);
        assert_eq!(d.reason, "not_due");
        assert_eq!(d.next, DateTime::<Utc>::MAX_UTC);
    }

    #[test]
    fn validation_errors_are_specific() {
        let both = RotationPolicy { interval: hd("1d"), schedule: Some("0 3 * * *".into()), ..Default::default() };
        assert!(both.validate().unwrap_err().contains("not both"));

        let bad = RotationPolicy { schedule: Some("0 0 3 * * *".into()), ..Default::default() };
        let err = bad.validate().unwrap_err();
        assert!(err.contains("\"0 0 3 * * *\"") && err.contains("5 fields: minute hour day month weekday"), "{err}");

        let garbage = RotationPolicy { schedule: Some("61 * * * *".into()), ..Default::default() };
        let err = garbage.validate().unwrap_err();
        assert!(err.contains("\"61 * * * *\"") && err.contains("5 fields: minute hour day month weekday"), "{err}");

        let nickname = RotationPolicy { schedule: Some("@daily".into()), ..Default::default() };
        assert!(nickname.validate().is_err());

        let window_alone = RotationPolicy { interval: hd("1d"), window: hd("1h"), ..Default::default() };
        assert!(window_alone.validate().unwrap_err().contains("`window` only applies"));

        let zero_interval = RotationPolicy { interval: hd("0s"), ..Default::default() };
        assert!(zero_interval.validate().unwrap_err().contains("`interval` must be greater than zero"));

        let zero_window = RotationPolicy { schedule: Some("0 3 * * *".into()), window: hd("0s"), ..Default::default() };
        assert!(zero_window.validate().unwrap_err().contains("`window` must be greater than zero"));

        let long_window = RotationPolicy { schedule: Some("0 * * * *".into()), window: hd("3h"), ..Default::default() };
        assert_eq!(long_window.validate(), Ok(()));

        let jitter_too_long = RotationPolicy { interval: hd("1h"), jitter: hd("2h"), ..Default::default() };
        assert!(jitter_too_long.validate().unwrap_err().contains("jitter"));
    }

    #[test]
    fn deserializes_with_defaults_and_refuses_unknown_fields() {
        let p: RotationPolicy = toml::from_str("interval = \"30d\"\ngrace = \"1h\"").unwrap();
        assert_eq!(p.interval, hd("30d"));
        assert!(p.validate);
        assert!(!p.adopt_external);
        assert_eq!(p.revoke_previous, None);
        assert!(toml::from_str::<RotationPolicy>("intervall = \"30d\"").is_err());
    }

    proptest! {
        #[test]
        fn next_is_never_before_last_rotation(
            last_secs in 0i64..4_000_000_000,
            now_offset in -1_000_000_000i64..4_000_000_000,
            interval in proptest::option::of(0u64..100_000_000),
            schedule in proptest::option::of(prop_oneof![
                Just("0 3 * * 0"), Just("*/5 * * * *"), Just("0 0 1 1 *"), Just("15 14 1 * 1-5"), Just("bad cron")
            ]),
            window in proptest::option::of(0u64..10_000_000),
            max_age in proptest::option::of(0u64..100_000_000),
            jitter in proptest::option::of(0u64..10_000_000),
            expiry_offset in proptest::option::of(-1_000_000i64..100_000_000),
            seed in "[a-z]{0,12}",
        ) {
            let last = DateTime::<Utc>::from_timestamp(last_secs, 0).unwrap();
            let now = DateTime::<Utc>::from_timestamp(last_secs + now_offset, 0).unwrap();
            let policy = RotationPolicy {
                interval: interval.map(HumanDuration::from_secs),
                schedule: schedule.map(str::to_string),
                window: window.map(HumanDuration::from_secs),
                max_age: max_age.map(HumanDuration::from_secs),
                jitter: jitter.map(HumanDuration::from_secs),
                ..Default::default()
            };
            let expires = expiry_offset.map(|o| last + Duration::seconds(o));
            let d = decide(&policy, last, expires, &seed, now);
            prop_assert!(d.next >= last);
            prop_assert_eq!(d.due, d.reason != "not_due");
            if d.overdue { prop_assert!(d.due); }
        }
    }
}

#[cfg(test)]
mod edge_tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sub_second_times_find_the_right_tick() {
        let cron = parse_schedule("* * * * *").unwrap();
        let base = Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap();
        let before = base - Duration::milliseconds(500);
        assert_eq!(cron.find_next_occurrence(&before, false).unwrap(), base);
        let after = base + Duration::milliseconds(500);
        assert_eq!(cron.find_next_occurrence(&after, false).unwrap(), base + Duration::minutes(1));
        assert_eq!(cron.find_next_occurrence(&base, false).unwrap(), base + Duration::minutes(1));
    }

    #[test]
    fn last_rotation_at_a_tick_waits_for_the_next_one() {
        let policy = RotationPolicy { schedule: Some("0 3 * * *".into()), ..Default::default() };
        let last = Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap() + Duration::milliseconds(250);
        let d = decide(&policy, last, None, "k", last + Duration::hours(1));
        assert!(!d.due);
        assert_eq!(d.next, Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0).unwrap());
    }

    #[test]
    fn impossible_schedule_is_refused_quickly() {
        let start = std::time::Instant::now();
        let err = RotationPolicy { schedule: Some("0 0 31 2 *".into()), ..Default::default() }.validate().unwrap_err();
        assert!(err.contains("never matches"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
