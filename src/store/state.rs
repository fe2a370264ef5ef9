//! The rotation state codec: [`RotationState`] ⇄ a secret's KV v2 `custom_metadata`.
//!
//! This is the only place that knows the metadata field names. Vault's limits shape it: at
//! most 64 keys, key ≤ 128 bytes, value 1–512 printable bytes. Fingerprints (`fp.v<N>`) are
//! pruned below `oldest_version` and capped in number so a key with many versions never hits
//! the 64-key limit. Values keysync cannot read are errors naming the key and field — never
//! silently reset, because resetting `current` would switch every consumer.

use super::intent::Intent;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Marks metadata written by keysync, and its layout version.
pub const SCHEMA_FIELD: &str = "keysync_schema";
pub const SCHEMA_VERSION: &str = "1";
/// Fingerprints kept at most (current/previous/pending always kept): 64 minus the fixed
/// fields, with room left for other tools' own custom_metadata.
pub const MAX_FINGERPRINTS: usize = 40;
const MAX_VALUE: usize = 512;

/// The custom_metadata fields keysync owns besides `fp.v<N>` (see [`RotationState::is_own_field`]).
pub const FIXED_FIELDS: [&str; 14] = [
    SCHEMA_FIELD,
    "current",
    "previous",
    "pending",
    "grace_until",
    "rotated_at",
    "rotated_by",
    "reason",
    "disabled",
    "failed",
    "retry",
    "intent",
    "revoked",
    "forced_retirement",
];

/// Revocation marks kept at most (oldest dropped first): a mark only matters while a version
/// with that key could still be adopted or promoted, i.e. for the latest few versions.
pub const MAX_REVOKED_MARKS: usize = 24;

/// Which version plays which part, and the history keysync keeps about them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationState {
    /// The version consumers use.
    pub current: Option<u64>,
    /// The version before `current`, still valid until `grace_until`.
    pub previous: Option<u64>,
    /// Written but not yet validated and promoted; never rendered.
    pub pending: Option<u64>,
    pub grace_until: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// Who made the last change (agent id or `user@host`).
    pub rotated_by: Option<String>,
    pub reason: Option<String>,
    /// Disabled keys are not rendered (the last good file stays).
    pub disabled: bool,
    /// Versions that failed validation: never promoted.
    pub failed: BTreeSet<u64>,
    /// Undecided validations of the pending version: attempts so far and when to try again
    /// (exponential backoff), stored as `v<N>:<attempts>:<RFC 3339>`.
    pub retry: Option<ValidationRetry>,
    /// Set just before a provider mints a key (stored as `<agent> at <time>`), cleared once
    /// the key is stored: a leftover intent is the trace of a crash that may have orphaned a key.
    pub intent: Option<Intent>,
    /// The last time a previous key was retired although an agent still held it (past
    /// `max_hold`): which version, when, and who held it. For people; never parsed.
    pub forced_retirement: Option<String>,
    /// `sha256:<hex>` of each version keysync wrote.
    pub fingerprints: BTreeMap<u64, String>,
    /// Keys keysync revoked (or is about to revoke) at the provider, as [`revoked_mark`]s of
    /// their fingerprints, oldest first, at most [`MAX_REVOKED_MARKS`]. Written *before* the
    /// provider is asked to revoke, and checked before any version is adopted, validated,
    /// promoted or rolled back to: a revoked key never becomes current or previous again,
    /// even when the write that stored it was only found out about later. Stored as
    /// comma-separated marks.
    pub revoked: Vec<String>,
    /// Whether the schema marker was present (false: a key keysync never wrote state to).
    pub managed: bool,
}

/// Backoff state of an undecided validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationRetry {
    pub version: u64,
    pub attempts: u32,
    pub next_at: DateTime<Utc>,
}

/// A custom_metadata value keysync cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("custom_metadata of key {key}: field {field:?} {problem}; fix or remove it ({cli} kv metadata patch) or restore it from `keysync audit`", cli = crate::vault::cli_name())]
pub struct StateError {
    pub key: String,
    pub field: String,
    pub problem: String,
}

impl RotationState {
    /// Reads keysync's fields out of `custom_metadata`, ignoring other tools' fields.
    pub fn decode(key: &str, meta: &BTreeMap<String, String>) -> Result<Self, StateError> {
        let err = |field: &str, problem: String| StateError { key: key.into(), field: field.into(), problem };
        let version = |field: &str| -> Result<Option<u64>, StateError> {
            match meta.get(field) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(err(field, format!("is {v:?}, not a version number"))),
                },
            }
        };
        let time = |field: &str| -> Result<Option<DateTime<Utc>>, StateError> {
            match meta.get(field) {
                None => Ok(None),
                Some(v) => DateTime::parse_from_rfc3339(v.trim())
                    .map(|t| Some(t.with_timezone(&Utc)))
                    .map_err(|_| err(field, format!("is {v:?}, not an RFC 3339 time"))),
            }
        };
        let managed = match meta.get(SCHEMA_FIELD).map(|s| s.trim()) {
            None => false,
            Some(SCHEMA_VERSION) => true,
            Some(other) => {
                return Err(err(
                    SCHEMA_FIELD,
                    format!("is {other:?}: written by another keysync version (this one reads {SCHEMA_VERSION}); upgrade keysync"),
                ))
            }
        };
        let disabled = match meta.get("disabled").map(|s| s.trim()) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(err("disabled", format!("is {other:?}, not true or false"))),
        };
        let mut failed = BTreeSet::new();
        if let Some(list) = meta.get("failed") {
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let n = part
                    .parse::<u64>()
                    .map_err(|_| err("failed", format!("is {list:?}, not a comma-separated list of versions")))?;
                failed.insert(n);
            }
        }
        let mut fingerprints = BTreeMap::new();
        for (field, value) in meta.range("fp.v".to_string()..) {
            let Some(n) = field.strip_prefix("fp.v") else { break };
            let version =
                n.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| err(field, "is not fp.v<version>".into()))?;
            if !is_fingerprint(value) {
                return Err(err(field, format!("is {value:?}, not sha256:<64 hex digits>")));
            }
            fingerprints.insert(version, value.clone());
        }
        let mut revoked = Vec::new();
        if let Some(list) = meta.get("revoked") {
            for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !is_revoked_mark(part) {
                    return Err(err("revoked", format!("is {list:?}, not a comma-separated list of 16 hex digits")));
                }
                revoked.push(part.to_string());
            }
        }
        let retry = match meta.get("retry") {
            None => None,
            Some(v) => {
                let bad = || err("retry", format!("is {v:?}, not v<version>:<attempts>:<RFC 3339 time>"));
                let mut parts = v.splitn(3, ':');
                let version =
                    parts.next().and_then(|p| p.strip_prefix('v')).and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let attempts = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let next_at = parts
                    .next()
                    .and_then(|p| DateTime::parse_from_rfc3339(p).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .ok_or_else(bad)?;
                Some(ValidationRetry { version, attempts, next_at })
            }
        };
        // Read as keysync would write them, so decode(encode(s)) == s: an empty value (Vault
        // refuses them, other tools may not) is no value, and an intent of "" is no intent.
        let text = |field: &str| meta.get(field).map(|s| sanitize(s)).filter(|s| !s.is_empty());
        Ok(RotationState {
            current: version("current")?,
            previous: version("previous")?,
            pending: version("pending")?,
            grace_until: time("grace_until")?,
            rotated_at: time("rotated_at")?,
            rotated_by: text("rotated_by"),
            reason: text("reason"),
            disabled,
            failed,
            retry,
            intent: text("intent").map(|v| Intent::parse(&v)).transpose().map_err(|e| err("intent", e.to_string()))?,
            forced_retirement: text("forced_retirement"),
            fingerprints,
            revoked,
            managed,
        })
    }

    /// keysync's fields as custom_metadata entries (other tools' fields are not included).
    pub fn encode(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if self.managed {
            out.insert(SCHEMA_FIELD.to_string(), SCHEMA_VERSION.to_string());
        }
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v.map(|v| sanitize(&v)).filter(|v| !v.is_empty()) {
                out.insert(k.to_string(), v);
            }
        };
        put("current", self.current.map(|v| v.to_string()));
        put("previous", self.previous.map(|v| v.to_string()));
        put("pending", self.pending.map(|v| v.to_string()));
        put("grace_until", self.grace_until.map(rfc3339));
        put("rotated_at", self.rotated_at.map(rfc3339));
        put("rotated_by", self.rotated_by.clone());
        put("reason", self.reason.clone());
        put("disabled", self.disabled.then(|| "true".to_string()));
        let failed: Vec<String> = self.failed.iter().map(u64::to_string).collect();
        put("failed", (!failed.is_empty()).then(|| failed.join(",")));
        put("intent", self.intent.as_ref().map(Intent::to_string));
        put("revoked", (!self.revoked.is_empty()).then(|| self.revoked.join(",")));
        put("forced_retirement", self.forced_retirement.clone());
        put("retry", self.retry.as_ref().map(|r| format!("v{}:{}:{}", r.version, r.attempts, rfc3339(r.next_at))));
        for (v, fp) in &self.fingerprints {
            out.insert(format!("fp.v{v}"), fp.clone());
        }
        out
    }

    /// A JSON merge patch for `custom_metadata` that turns `before` into `self`: changed
    /// fields set, vanished fields `null`, untouched and foreign fields left out (so a
    /// concurrent writer's other fields survive).
    pub fn merge_patch(&self, before: &RotationState) -> Map<String, Value> {
        let old = before.encode();
        let new = self.encode();
        let mut patch = Map::new();
        for (k, v) in &new {
            if old.get(k) != Some(v) {
                patch.insert(k.clone(), Value::String(v.clone()));
            }
        }
        for k in old.keys() {
            if !new.contains_key(k) {
                patch.insert(k.clone(), Value::Null);
            }
        }
        patch
    }

    /// Drops fingerprints and failure marks of versions KV no longer keeps (below
    /// `oldest_version`), then the oldest beyond [`MAX_FINGERPRINTS`], sparing the versions
    /// in use.
    pub fn prune(&mut self, oldest_version: u64) {
        let in_use: BTreeSet<u64> = [self.current, self.previous, self.pending].into_iter().flatten().collect();
        self.fingerprints.retain(|v, _| *v >= oldest_version || in_use.contains(v));
        self.failed.retain(|v| *v >= oldest_version);
        let excess = self.fingerprints.len().saturating_sub(MAX_FINGERPRINTS);
        let victims: Vec<u64> =
            self.fingerprints.keys().copied().filter(|v| !in_use.contains(v)).take(excess).collect();
        for v in victims {
            self.fingerprints.remove(&v);
        }
        let min_fp = self.fingerprints.keys().next().copied().unwrap_or(0);
        self.failed.retain(|v| *v >= min_fp || in_use.contains(v));
    }

    /// Records that the key with fingerprint `fp` is revoked (or about to be): it is never
    /// adopted, validated, promoted or rolled back to again. Idempotent; the oldest marks go
    /// beyond [`MAX_REVOKED_MARKS`].
    pub fn mark_revoked(&mut self, fp: &str) {
        let mark = revoked_mark(fp);
        if !self.revoked.contains(&mark) {
            self.revoked.push(mark);
        }
        let excess = self.revoked.len().saturating_sub(MAX_REVOKED_MARKS);
        self.revoked.drain(..excess);
    }

    /// Whether the key with fingerprint `fp` was marked revoked.
    pub fn is_revoked(&self, fp: &str) -> bool {
        let mark = revoked_mark(fp);
        self.revoked.contains(&mark)
    }

    /// Whether the grace period of `previous` is still running at `now`.
    pub fn in_grace(&self, now: DateTime<Utc>) -> bool {
        self.previous.is_some() && self.grace_until.is_some_and(|g| g > now)
    }

    /// Whether `name` is a custom_metadata field keysync owns.
    pub fn is_own_field(name: &str) -> bool {
        FIXED_FIELDS.contains(&name) || name.starts_with("fp.v")
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Vault accepts printable values of 1–512 bytes: fold whitespace, drop control characters,
/// cut at a character boundary.
fn sanitize(v: &str) -> String {
    let folded: String = v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out = folded.trim().to_string();
    while out.len() > MAX_VALUE {
        out.pop();
    }
    out
}

/// The revocation mark of a fingerprint: its first 16 hex digits (64 bits — enough to tell
/// keys apart, short enough that [`MAX_REVOKED_MARKS`] fit in one 512-byte value).
pub fn revoked_mark(fp: &str) -> String {
    fp.strip_prefix("sha256:").unwrap_or(fp).chars().take(16).collect()
}

fn is_revoked_mark(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_fingerprint(v: &str) -> bool {
    v.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::fingerprint;
    use proptest::prelude::*;

    fn sample() -> RotationState {
        RotationState {
            current: Some(3),
            previous: Some(2),
            pending: None,
            grace_until: Some(Utc::now() + chrono::Duration::hours(24)),
            rotated_at: Some(Utc::now()),
            rotated_by: Some("agent-1".into()),
            reason: Some("scheduled".into()),
            disabled: false,
            failed: [4].into_iter().collect(),
            retry: Some(ValidationRetry { version: 5, attempts: 2, next_at: Utc::now() }),
            intent: Some(Intent::parse("agent-1 at 2026-11-29T00:00:00Z").unwrap()),
            forced_retirement: Some("v1 retired although still held: agent-2 /k: holds previous".into()),
            fingerprints: (1..=4).map(|v| (v, fingerprint(format!("k{v}").as_bytes()))).collect(),
            revoked: vec![revoked_mark(&fingerprint(b"gone"))],
            managed: true,
        }
        .round_trip_times()
    }

    impl RotationState {
        /// Times keep whole seconds in metadata.
        fn round_trip_times(mut self) -> Self {
            let trunc = |t: DateTime<Utc>| DateTime::parse_from_rfc3339(&rfc3339(t)).unwrap().with_timezone(&Utc);
            self.grace_until = self.grace_until.map(trunc);
            self.rotated_at = self.rotated_at.map(trunc);
            if let Some(r) = self.retry.as_mut() {
                r.next_at = trunc(r.next_at);
            }
            self
        }
    }

    #[test]
    fn encode_then_decode_gives_the_same_state() {
        let s = sample();
        assert_eq!(RotationState::decode("k", &s.encode()).unwrap(), s);
    }

    #[test]
    fn metadata_without_keysync_fields_is_an_unmanaged_key() {
        let meta: BTreeMap<String, String> = [("owner".to_string(), "team-a".to_string())].into();
        let s = RotationState::decode("k", &meta).unwrap();
        assert!(!s.managed);
        assert_eq!(s.current, None);
    }

    #[test]
    fn a_corrupt_current_names_the_key_and_field() {
        let meta: BTreeMap<String, String> = [("current".to_string(), "three".to_string())].into();
        let err = RotationState::decode("openai", &meta).unwrap_err();
        assert_eq!(err.field, "current");
        let text = err.to_string();
        assert!(text.contains("openai") && text.contains("\"three\""), "{text}");
    }

    #[test]
    fn empty_text_fields_read_as_absent() {
        let meta: BTreeMap<String, String> =
            [("intent".to_string(), " ".to_string()), ("rotated_by".to_string(), String::new())].into();
        let s = RotationState::decode("k", &meta).unwrap();
        assert_eq!((s.intent, s.rotated_by), (None, None));
    }

    #[test]
    fn a_malformed_intent_names_the_key_and_field() {
        let meta: BTreeMap<String, String> = [("intent".to_string(), "agent-1 at noon".to_string())].into();
        let e = RotationState::decode("openai", &meta).unwrap_err();
        assert_eq!((e.key.as_str(), e.field.as_str()), ("openai", "intent"));
        let text = e.to_string();
        assert!(text.contains("\"agent-1 at noon\"") && text.contains("<actor> at <RFC 3339 time>"), "{text}");
    }

    #[test]
    fn an_intent_is_stored_as_actor_at_time() {
        let at = DateTime::parse_from_rfc3339("2026-11-29T10:00:00.5+00:00").unwrap().with_timezone(&Utc);
        let s = RotationState { intent: Some(Intent::new("agent-1", at)), ..Default::default() };
        assert_eq!(s.encode()["intent"], "agent-1 at 2026-11-29T10:00:00.500+00:00");
        assert_eq!(RotationState::decode("k", &s.encode()).unwrap().intent, s.intent);
    }

    #[test]
    fn a_newer_schema_asks_for_an_upgrade() {
        let meta: BTreeMap<String, String> = [(SCHEMA_FIELD.to_string(), "9".to_string())].into();
        assert!(RotationState::decode("k", &meta).unwrap_err().to_string().contains("upgrade"));
    }

    #[test]
    fn a_bad_fingerprint_is_refused() {
        let meta: BTreeMap<String, String> = [("fp.v2".to_string(), "md5:abc".to_string())].into();
        assert_eq!(RotationState::decode("k", &meta).unwrap_err().field, "fp.v2");
        let meta: BTreeMap<String, String> = [("fp.vx".to_string(), fingerprint(b"a"))].into();
        assert_eq!(RotationState::decode("k", &meta).unwrap_err().field, "fp.vx");
    }

    #[test]
    fn merge_patch_touches_only_what_changed() {
        let before = sample();
        let mut after = before.clone();
        after.previous = None;
        after.grace_until = None;
        after.current = Some(5);
        let patch = after.merge_patch(&before);
        assert_eq!(patch.get("previous"), Some(&Value::Null));
        assert_eq!(patch.get("grace_until"), Some(&Value::Null));
        assert_eq!(patch.get("current"), Some(&Value::String("5".into())));
        assert!(!patch.contains_key("rotated_by"), "unchanged fields stay out of the patch");
        assert!(!patch.contains_key(SCHEMA_FIELD));
    }

    #[test]
    fn the_first_write_marks_the_key_as_managed() {
        let before = RotationState::default();
        let after = RotationState { current: Some(1), managed: true, ..Default::default() };
        assert_eq!(after.merge_patch(&before).get(SCHEMA_FIELD), Some(&Value::String(SCHEMA_VERSION.into())));
    }

    #[test]
    fn pruning_keeps_versions_in_use_and_caps_the_count() {
        let mut s = RotationState {
            current: Some(70),
            previous: Some(1),
            fingerprints: (1..=70u64).map(|v| (v, fingerprint(&v.to_le_bytes()))).collect(),
            ..Default::default()
        };
        s.prune(1);
        assert_eq!(s.fingerprints.len(), MAX_FINGERPRINTS);
        assert!(s.fingerprints.contains_key(&70) && s.fingerprints.contains_key(&1));
        assert!(s.encode().len() <= 64);
        s.prune(60);
        assert!(s.fingerprints.keys().all(|v| *v >= 60 || *v == 1));
    }

    #[test]
    fn revocation_marks_round_trip_fit_one_value_and_drop_the_oldest() {
        let mut s = RotationState::default();
        let fps: Vec<String> = (0..30u32).map(|i| fingerprint(&i.to_le_bytes())).collect();
        for fp in &fps {
            s.mark_revoked(fp);
            s.mark_revoked(fp); // idempotent
        }
        assert_eq!(s.revoked.len(), MAX_REVOKED_MARKS);
        assert!(!s.is_revoked(&fps[0]), "the oldest marks go first");
        assert!(s.is_revoked(&fps[29]) && s.is_revoked(&fps[6]));
        let encoded = s.encode();
        assert!(encoded["revoked"].len() <= MAX_VALUE);
        assert_eq!(RotationState::decode("k", &encoded).unwrap().revoked, s.revoked);
        let bad: BTreeMap<String, String> = [("revoked".to_string(), "xyz".to_string())].into();
        assert_eq!(RotationState::decode("k", &bad).unwrap_err().field, "revoked");
    }

    #[test]
    fn long_and_control_values_are_made_acceptable() {
        let s = RotationState { reason: Some(format!("line1\nline2 {}", "x".repeat(600))), ..Default::default() };
        let reason = &s.encode()["reason"];
        assert!(reason.len() <= 512 && !reason.contains('\n'));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_metadata_never_panics(entries in proptest::collection::btree_map("[a-z_.v0-9]{1,12}", "\\PC{0,40}", 0..12)) {
            let _ = RotationState::decode("k", &entries);
        }

        #[test]
        fn every_encoded_state_decodes_back(cur in 1u64..1000, prev in proptest::option::of(1u64..1000), disabled: bool, reason in "\\PC{0,600}") {
            let s = RotationState { current: Some(cur), previous: prev, disabled, reason: Some(reason), managed: true, ..Default::default() };
            let encoded = s.encode();
            prop_assert!(encoded.values().all(|v| !v.is_empty() && v.len() <= 512 && !v.chars().any(char::is_control)));
            let back = RotationState::decode("k", &encoded).unwrap();
            prop_assert_eq!(back.current, s.current);
            prop_assert_eq!(back.previous, s.previous);
            prop_assert_eq!(back.disabled, s.disabled);
        }
    }
}
