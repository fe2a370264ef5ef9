//! Render acknowledgements: agents with `agent.report_renders = true` record, under
//! `<prefix>/_acks/<agent-id>`, what each of their sinks holds for every key they are bound
//! to. Retirement of a previous key then waits for consumers to switch instead of only for
//! the clock, and `keysync status NAME --consumers` shows the fleet.
//!
//! `keys` lists every key the agent is bound to (a sink or exec variable renders it): key →
//! the current key's fingerprint when every sink holds it *as loaded by the consumer*
//! (reported only after the key's `on_change` hook or exec restart finished), else the
//! fingerprint (or `unknown`) of what some sink still holds. `sinks` details, for the keys
//! where some sink lags or failed, one entry per sink (and per exec variable) with what it
//! holds and its last error; keys that are fully switched stay out of it, so a report is
//! about as small as the fingerprints alone (one Vault entry per agent, far below 1 MiB even
//! with thousands of keys).
//!
//! Reports of older keysyncs have only `keys`, with the key left out when one of its sinks
//! failed; they are read the same way (a key in `keys` only: every sink holds that
//! fingerprint). Older deciders reading a new report see a lagging agent's `keys` entry
//! differ from the current fingerprint and keep waiting for it instead of retiring early.

use crate::vault::{KvRead, Session, VaultError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One agent's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub seen_at: Option<DateTime<Utc>>,
    /// key name → fingerprint every sink of the key holds, for every bound key (see the
    /// module doc).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// key name → what each sink bound to it holds, for keys where some sink lags or failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, Vec<SinkHold>>,
}

/// What one sink (a file, a directory sink, or an exec variable `exec:NAME`) holds for a key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkHold {
    /// The sink's path, or `exec:VAR` for a `keysync exec` child's variable.
    pub sink: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Fingerprint of the key on disk (as loaded by the consumer); `None`: not known (the
    /// sink never rendered in this agent's life, or its hook has not run yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why the last render (or the key's `on_change` hook) failed; never key material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The sink name a key listed only in `keys` is shown under.
pub const EVERY_SINK: &str = "(every sink)";

/// The `keys` value for a key whose sinks hold nothing known.
pub const UNKNOWN_FINGERPRINT: &str = "unknown";

impl Ack {
    /// Builds a report from what each key's sinks hold; `current` gives each key's current
    /// fingerprint as this agent last read it (for the `keys` summary).
    pub fn from_holdings(holdings: BTreeMap<String, Vec<SinkHold>>, current: &BTreeMap<String, String>) -> Ack {
        let mut keys = BTreeMap::new();
        let mut sinks = BTreeMap::new();
        for (name, holds) in holdings {
            let cur = current.get(&name);
            let lagging = holds.iter().find(|h| h.error.is_some() || h.fingerprint.as_ref() != cur);
            let summary = match (lagging, cur) {
                (None, Some(c)) => c.clone(),
                (Some(h), _) => h.fingerprint.clone().unwrap_or_else(|| UNKNOWN_FINGERPRINT.into()),
                (None, None) => UNKNOWN_FINGERPRINT.into(),
            };
            if lagging.is_some() || cur.is_none() {
                sinks.insert(name.clone(), holds);
            }
            keys.insert(name, summary);
        }
        Ack { seen_at: None, keys, sinks }
    }

    /// What this agent's sinks of `key` hold; `None` when the agent is not known to be bound
    /// to the key (an older agent leaves out a key whose sink failed).
    pub fn holdings(&self, key: &str) -> Option<Vec<SinkHold>> {
        if let Some(h) = self.sinks.get(key) {
            return Some(h.clone());
        }
        self.keys.get(key).map(|fp| {
            vec![SinkHold {
                sink: EVERY_SINK.into(),
                version: None,
                fingerprint: (fp != UNKNOWN_FINGERPRINT).then(|| fp.clone()),
                error: None,
            }]
        })
    }
}

#[derive(Clone, Debug)]
pub struct Acks {
    session: Arc<Session>,
    mount: String,
    prefix: String,
}

/// Agent ids become path segments: keep letters, digits, '.', '_' and '-'.
pub fn ack_id(agent: &str) -> String {
    let id: String = agent
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    id.trim_matches('-').chars().take(100).collect()
}

impl Acks {
    pub fn new(session: Arc<Session>, mount: &str, prefix: &str) -> Self {
        Acks { session, mount: mount.into(), prefix: prefix.into() }
    }

    /// Records this agent's report (a plain write: each agent owns its secret); `seen_at` is
    /// set to now.
    pub async fn report(&self, agent: &str, ack: &Ack) -> Result<(), VaultError> {
        let path = format!("{}/_acks/{}", self.prefix, ack_id(agent));
        let data = json!({ "seen_at": crate::clock::now().to_rfc3339(), "keys": ack.keys, "sinks": ack.sinks });
        self.session.kv_write(&self.mount, &path, &data, None, "ack_write").await.map(|_| ())
    }

    /// Every agent's latest report.
    pub async fn all(&self) -> Result<Vec<(String, Ack)>, VaultError> {
        let listed = self.session.kv_list(&self.mount, &format!("{}/_acks", self.prefix), "ack_list").await?;
        let names: Vec<String> = listed.into_iter().filter(|k| !k.ends_with('/')).collect();
        let mut out = Vec::new();
        for name in names {
            let path = format!("{}/_acks/{name}", self.prefix);
            if let KvRead::Live { data, .. } = self.session.kv_read(&self.mount, &path, None, "ack_read").await? {
                if let Ok(ack) = serde_json::from_value::<Ack>(Value::Object(data)) {
                    out.push((name, ack));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(sink: &str, fp: Option<&str>, error: Option<&str>) -> SinkHold {
        SinkHold { sink: sink.into(), version: None, fingerprint: fp.map(Into::into), error: error.map(Into::into) }
    }

    #[test]
    fn an_older_agents_report_reads_as_one_sink_and_a_missing_key_as_unbound() {
        let old: Ack =
            serde_json::from_value(json!({"seen_at": "2026-12-01T00:00:00Z", "keys": {"gw": "sha256:aa"}})).unwrap();
        assert_eq!(old.holdings("gw"), Some(vec![hold(EVERY_SINK, Some("sha256:aa"), None)]));
        assert_eq!(old.holdings("other"), None);
    }

    #[test]
    fn the_keys_summary_names_what_a_lagging_sink_holds_so_older_deciders_wait() {
        let current: BTreeMap<String, String> =
            [("a".to_string(), "sha256:new".to_string()), ("b".to_string(), "sha256:new".to_string())].into();
        let sinks: BTreeMap<String, Vec<SinkHold>> = [
            (
                "a".to_string(),
                vec![hold("/x", Some("sha256:new"), None), hold("/y", Some("sha256:old"), Some("disk full"))],
            ),
            ("b".to_string(), vec![hold("/z", Some("sha256:new"), None)]),
        ]
        .into();
        let ack = Ack::from_holdings(sinks, &current);
        assert_eq!(ack.keys["a"], "sha256:old");
        assert_eq!(ack.keys["b"], "sha256:new");
        assert!(!ack.sinks.contains_key("b"), "a fully switched key is not detailed");
        let round: Ack = serde_json::from_value(serde_json::to_value(&ack).unwrap()).unwrap();
        assert_eq!(round.holdings("a").unwrap().len(), 2);
        assert_eq!(round.holdings("b"), Some(vec![hold(EVERY_SINK, Some("sha256:new"), None)]));
        assert_eq!(round.holdings("c"), None, "a key in neither map is not bound");
    }
}
