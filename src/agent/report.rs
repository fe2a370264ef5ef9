//! What an agent with `report_renders = true` tells the rotating agents: per key it is bound
//! to, what each sink (and exec variable) holds *as its consumer has loaded it*.
//!
//! A file written is not yet a key in use: when the key has an `on_change` hook or is in an
//! exec child's environment, the app loads it only once the hook ran or the child restarted.
//! So a key's entry moves to what is on disk only after that finished; until then it keeps
//! what the consumer loaded before (or, right after start, "unknown"). A hook that fails
//! freezes the entry at what was loaded before, with the hook's error, until the key's next
//! change runs the hook again: the app may never have loaded the new key.

use crate::store::{Ack, KeyName, SinkHold};
use std::collections::{BTreeMap, BTreeSet};

/// The report this agent publishes, kept between passes.
#[derive(Default)]
pub struct Reporter {
    acked: BTreeMap<KeyName, Vec<SinkHold>>,
    /// Keys whose last hook failed, with the error.
    hook_failed: BTreeMap<KeyName, String>,
}

impl Reporter {
    /// Takes in what is on disk now. `gated`: keys whose hook or exec restart is still to
    /// come; their entry keeps what the consumer loaded before.
    pub fn update(&mut self, disk: BTreeMap<KeyName, Vec<SinkHold>>, gated: &BTreeSet<KeyName>) {
        self.acked.retain(|k, _| disk.contains_key(k));
        for (key, holds) in disk {
            if gated.contains(&key) || self.hook_failed.contains_key(&key) {
                self.acked.entry(key).or_insert_with(|| unknown(&holds));
            } else {
                self.acked.insert(key, holds);
            }
        }
    }

    /// A key's hook finished; `disk` is what its sinks hold now (what the hook made the app load).
    pub fn hook_finished(&mut self, key: &KeyName, result: &Result<(), String>, disk: Option<Vec<SinkHold>>) {
        match result {
            Ok(()) => {
                self.hook_failed.remove(key);
                if let Some(d) = disk {
                    self.acked.insert(key.clone(), d);
                }
            }
            Err(e) => {
                let why = format!("on_change hook failed: {e}");
                self.hook_failed.insert(key.clone(), why.clone());
                let before =
                    self.acked.get(key).cloned().or_else(|| disk.as_ref().map(|d| unknown(d))).unwrap_or_default();
                let frozen = before.into_iter().map(|h| SinkHold { error: Some(why.clone()), ..h }).collect();
                self.acked.insert(key.clone(), frozen);
            }
        }
    }

    /// The report to publish; `current` is each key's current fingerprint as last read.
    pub fn ack(&self, current: &BTreeMap<String, String>) -> Ack {
        let sinks = self.acked.iter().map(|(k, h)| (k.to_string(), h.clone())).collect();
        Ack::from_holdings(sinks, current)
    }
}

/// The same sinks, holding nothing known.
fn unknown(holds: &[SinkHold]) -> Vec<SinkHold> {
    holds.iter().map(|h| SinkHold { sink: h.sink.clone(), version: None, fingerprint: None, error: None }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(fp: &str) -> Vec<SinkHold> {
        vec![SinkHold { sink: "/k".into(), version: Some(1), fingerprint: Some(fp.into()), error: None }]
    }

    #[test]
    fn a_key_moves_to_what_is_on_disk_only_after_its_hook_finished() {
        let k = KeyName::parse("k").unwrap();
        let mut r = Reporter::default();
        r.update([(k.clone(), held("sha256:old"))].into(), &BTreeSet::new());
        r.update([(k.clone(), held("sha256:new"))].into(), &[k.clone()].into());
        assert_eq!(r.acked[&k], held("sha256:old"), "hook pending: the app still has the old key");
        r.hook_finished(&k, &Ok(()), Some(held("sha256:new")));
        assert_eq!(r.acked[&k], held("sha256:new"));
    }

    #[test]
    fn a_failed_hook_freezes_the_key_at_what_was_loaded_before() {
        let k = KeyName::parse("k").unwrap();
        let mut r = Reporter::default();
        r.update([(k.clone(), held("sha256:old"))].into(), &BTreeSet::new());
        r.hook_finished(&k, &Err("exit 1".into()), Some(held("sha256:new")));
        r.update([(k.clone(), held("sha256:new"))].into(), &BTreeSet::new());
        let h = &r.acked[&k][0];
        assert_eq!(h.fingerprint.as_deref(), Some("sha256:old"));
        assert!(h.error.as_deref().unwrap().contains("hook failed"));
        r.hook_finished(&k, &Ok(()), Some(held("sha256:new")));
        r.update([(k.clone(), held("sha256:new"))].into(), &BTreeSet::new());
        assert_eq!(r.acked[&k], held("sha256:new"));
    }

    #[test]
    fn a_hook_pending_at_start_reports_unknown() {
        let k = KeyName::parse("k").unwrap();
        let mut r = Reporter::default();
        r.update([(k.clone(), held("sha256:new"))].into(), &[k.clone()].into());
        assert_eq!(r.acked[&k][0].fingerprint, None);
    }
}
