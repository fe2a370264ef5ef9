//! A rotation intent: who started minting a key for a secret, and when. Recorded in the
//! secret's `custom_metadata` (field `intent`) just before a provider mints, cleared once the
//! minted key is stored, so a leftover one is the trace of a rotation that may have orphaned a
//! key at the provider.
//!
//! On Vault it is one text value, `<actor> at <RFC 3339 time>` (the format every keysync
//! version wrote; `keysync status` shows it as is). It is parsed into [`Intent`] once, when the
//! state is decoded, so the rotation engine compares actors and times instead of re-splitting
//! strings, and a value keysync cannot read is an error naming the field (see
//! [`super::StateError`]) rather than silently taken for someone else's intent.

use chrono::{DateTime, Utc};
use std::fmt;

/// Separates the actor from the time. An actor may itself contain it (it is free text, from
/// `KEYSYNC_AGENT_ID`): the time never does, so the last occurrence is the separator.
const SEPARATOR: &str = " at ";

/// Longest actor kept, in bytes: with the separator and the longest time keysync writes, the
/// value stays within Vault's 512-byte limit for a custom_metadata value (a longer one would
/// be cut when stored and no longer parse).
const MAX_ACTOR: usize = 400;

/// Who recorded a rotation intent, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    actor: String,
    at: DateTime<Utc>,
}

/// Why an `intent` value is not `<actor> at <RFC 3339 time>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("is {0:?}, not \"<actor> at <RFC 3339 time>\" (no \" at \")")]
    NoSeparator(String),
    #[error("is {0:?}, not \"<actor> at <RFC 3339 time>\" (no actor before \" at \")")]
    NoActor(String),
    #[error("is {0:?}, not \"<actor> at <RFC 3339 time>\" (the time is not RFC 3339)")]
    BadTime(String),
}

impl Intent {
    /// `actor`'s intent at `at`. The actor is stored as Vault will keep it: control
    /// characters folded to spaces, trimmed, at most [`MAX_ACTOR`] bytes (an empty one reads
    /// `unknown`), so the intent read back equals the one recorded.
    pub fn new(actor: &str, at: DateTime<Utc>) -> Intent {
        Intent { actor: normalize_actor(actor), at }
    }

    /// Reads an `intent` value. Any RFC 3339 time is accepted (keysync writes
    /// `2026-11-29T00:00:00.123456789+00:00`; `…Z` and other offsets read the same).
    pub fn parse(text: &str) -> Result<Intent, IntentError> {
        let text = text.trim();
        let (actor, at) = text.rsplit_once(SEPARATOR).ok_or_else(|| IntentError::NoSeparator(text.to_string()))?;
        let actor = fold(actor);
        if actor.is_empty() {
            return Err(IntentError::NoActor(text.to_string()));
        }
        let at = DateTime::parse_from_rfc3339(at.trim()).map_err(|_| IntentError::BadTime(text.to_string()))?;
        Ok(Intent { actor, at: at.with_timezone(&Utc) })
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Whether `actor` recorded this intent (compared as stored, see [`Intent::new`]).
    pub fn is_by(&self, actor: &str) -> bool {
        self.actor == normalize_actor(actor)
    }
}

/// The on-Vault text, `<actor> at <RFC 3339 time>`.
impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEPARATOR}{}", self.actor, self.at.to_rfc3339())
    }
}

/// As its on-Vault text (`keysync status --output json` shows `interrupted_rotation` so).
impl serde::Serialize for Intent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The actor as recorded: [`fold`]ed, `unknown` when nothing is left.
fn normalize_actor(actor: &str) -> String {
    let out = fold(actor);
    if out.is_empty() {
        "unknown".to_string()
    } else {
        out
    }
}

/// What Vault keeps of an actor (the state codec folds and trims every value the same way),
/// cut to [`MAX_ACTOR`] bytes at a character boundary.
fn fold(actor: &str) -> String {
    let folded: String = actor.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out = folded.trim().to_string();
    while out.len() > MAX_ACTOR {
        out.pop();
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_keysync_has_always_written() {
        let written = "agent-1 at 2026-11-29T10:20:30.123456789+00:00";
        let i = Intent::parse(written).unwrap();
        assert_eq!(i.actor(), "agent-1");
        assert_eq!(i.at(), DateTime::parse_from_rfc3339("2026-11-29T10:20:30.123456789Z").unwrap());
        assert_eq!(i.to_string(), written, "the on-Vault format is unchanged");
        // The short UTC form and other offsets are the same instant.
        assert_eq!(Intent::parse("agent-1 at 2026-11-29T10:20:30.123456789Z").unwrap(), i);
        assert_eq!(Intent::parse("agent-1 at 2026-11-29T12:20:30.123456789+02:00").unwrap(), i);
    }

    #[test]
    fn an_actor_may_contain_the_separator() {
        let i = Intent::parse("ops at night at 2026-11-29T00:00:00Z").unwrap();
        assert_eq!(i.actor(), "ops at night");
        assert!(i.is_by("ops at night") && !i.is_by("ops"));
    }

    #[test]
    fn a_malformed_intent_says_what_is_wrong() {
        let no_at = Intent::parse("agent-1").unwrap_err();
        assert_eq!(no_at, IntentError::NoSeparator("agent-1".into()));
        assert!(no_at.to_string().contains("<actor> at <RFC 3339 time>"), "{no_at}");
        assert!(matches!(Intent::parse(" at 2026-11-29T00:00:00Z"), Err(IntentError::NoSeparator(_))));
        assert!(matches!(Intent::parse("x  at 2026-11-29T00:00:00Z"), Ok(i) if i.actor() == "x"));
        assert!(matches!(Intent::parse("\u{1} at 2026-11-29T00:00:00Z"), Err(IntentError::NoActor(_))));
        let bad_time = Intent::parse("agent-1 at yesterday").unwrap_err();
        assert!(bad_time.to_string().contains("\"agent-1 at yesterday\"") && bad_time.to_string().contains("RFC 3339"));
    }

    #[test]
    fn actors_are_stored_as_vault_keeps_them() {
        let t = Utc::now();
        assert_eq!(Intent::new(" a\nb ", t).actor(), "a b");
        assert_eq!(Intent::new("", t).actor(), "unknown");
        let long = Intent::new(&"é".repeat(400), t);
        assert!(long.actor().len() <= MAX_ACTOR && long.to_string().len() <= 512);
        assert!(long.is_by(&"é".repeat(400)), "the cut actor is still recognised as ours");
    }

    /// Times as the clock gives them: any instant from 1970 to 9999, with nanoseconds.
    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        (0i64..253_402_300_799, 0u32..1_000_000_000).prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
    }

    proptest! {
        /// format → parse gives the same intent, for any actor text and time; the text fits
        /// one custom_metadata value.
        #[test]
        fn format_then_parse_round_trips(actor in "\\PC{0,500}|[a-z@.\\- ]{1,40}", at in any_time()) {
            let intent = Intent::new(&actor, at);
            let text = intent.to_string();
            prop_assert!(text.len() <= 512, "{} bytes", text.len());
            prop_assert_eq!(Intent::parse(&text), Ok(intent.clone()));
            prop_assert!(intent.is_by(&actor));
        }

        /// A well-formed text reads back to itself when keysync wrote it (canonical time).
        #[test]
        fn parse_then_format_round_trips(actor in "[a-zA-Z0-9@._-]{1,40}( at [a-z]{1,8})?", at in any_time()) {
            let text = format!("{actor} at {}", at.to_rfc3339());
            prop_assert_eq!(Intent::parse(&text).map(|i| i.to_string()), Ok(text));
        }

        /// Parsing arbitrary text never panics; whatever parses formats to text that parses to
        /// the same intent.
        #[test]
        fn parsing_anything_is_safe(text in "\\PC{0,80}( at 20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z)?") {
            if let Ok(i) = Intent::parse(&text) {
                prop_assert_eq!(Intent::parse(&i.to_string()), Ok(i));
            }
        }
    }
}
