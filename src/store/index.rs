//! The change index: one KV v2 secret (`<prefix>/_index`) whose data maps every key name to
//! the part of its rotation state consumers care about. Writers merge-PATCH their key's entry
//! after each state change; agents read this one secret per poll, so steady-state Vault load
//! is one request whatever the number of keys, and key data is read only when an entry changed.
//!
//! Portable: data PATCH exists in HashiCorp Vault ≥ 1.9 and OpenBao. The PATCH is merged by
//! the server, so writers of different keys never lose each other's entries.

use super::name::KeyName;
use super::state::RotationState;
use crate::vault::{Request, Session, VaultError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The index secret's name under the prefix. Not a valid key name, so it never collides.
pub const INDEX_NAME: &str = "_index";

/// What consumers need to know about one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub current: Option<u64>,
    pub previous: Option<u64>,
    pub grace_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub disabled: bool,
    /// All versions soft-deleted (`keysync delete`).
    #[serde(default)]
    pub deleted: bool,
    /// Fingerprint of `current`, so a consumer can tell a real change from a re-promotion.
    pub fingerprint: Option<String>,
    /// When `current` was promoted (for the key-age metric).
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
}

impl IndexEntry {
    pub fn from_state(state: &RotationState, deleted: bool) -> Self {
        IndexEntry {
            current: state.current,
            previous: state.previous,
            grace_until: state.previous.and(state.grace_until).map(whole_seconds),
            disabled: state.disabled,
            deleted,
            fingerprint: state.current.and_then(|c| state.fingerprints.get(&c).cloned()),
            since: state.rotated_at.map(whole_seconds),
        }
    }
}

/// Metadata keeps whole seconds; so must the index, or an entry built from metadata (full
/// sync) would never equal the one a writer published and every key would be re-read.
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// Reads and updates the index.
#[derive(Clone, Debug)]
pub struct Index {
    session: Arc<Session>,
    data_path: String,
}

/// The index as read: entries and the KV version they came from.
#[derive(Clone, Debug, Default)]
pub struct IndexSnapshot {
    pub version: u64,
    pub entries: BTreeMap<String, IndexEntry>,
    /// Entries that could not be parsed (written by something else), by name.
    pub unreadable: Vec<String>,
}

impl Index {
    pub fn new(session: Arc<Session>, mount: &str, prefix: &str) -> Self {
        Index { session, data_path: format!("{mount}/data/{prefix}/{INDEX_NAME}") }
    }

    /// One GET. A missing index reads as empty (no key was changed by keysync yet).
    pub async fn read(&self) -> Result<IndexSnapshot, VaultError> {
        let req = Request::get(self.data_path.clone(), "index_read");
        let resp = self.session.request_allowing(&req, &[404]).await?;
        if resp.status == 404 {
            return Ok(IndexSnapshot::default());
        }
        let version = resp.body.pointer("/data/metadata/version").and_then(Value::as_u64).unwrap_or(0);
        let mut snapshot = IndexSnapshot { version, ..Default::default() };
        if let Some(map) = resp.body.pointer("/data/data").and_then(Value::as_object) {
            for (name, v) in map {
                match serde_json::from_value::<IndexEntry>(v.clone()) {
                    Ok(e) => {
                        snapshot.entries.insert(name.clone(), e);
                    }
                    Err(_) => snapshot.unreadable.push(name.clone()),
                }
            }
        }
        Ok(snapshot)
    }

    /// Records `entry` for `name`: merge-PATCH of the latest version, or a create-only write
    /// when the index does not exist yet (retrying as PATCH if another writer created it).
    pub async fn update(&self, name: &KeyName, entry: &IndexEntry) -> Result<(), VaultError> {
        self.update_many(&BTreeMap::from([(name.clone(), entry.clone())])).await
    }

    /// Records several entries in one request (see [`Index::update`]).
    pub async fn update_many(&self, entries: &BTreeMap<KeyName, IndexEntry>) -> Result<(), VaultError> {
        let value: serde_json::Map<String, Value> = entries
            .iter()
            .map(|(name, entry)| (name.as_str().to_string(), serde_json::to_value(entry).unwrap_or(Value::Null)))
            .collect();
        let value = Value::Object(value);
        let patch = Request::patch(self.data_path.clone(), "index_patch", json!({ "data": value }));
        for _ in 0..3 {
            let resp = self.session.request_allowing(&patch, &[404]).await?;
            if resp.status != 404 {
                return Ok(());
            }
            let create = Request::post(
                self.data_path.clone(),
                "index_create",
                json!({ "options": { "cas": 0 }, "data": value }),
            );
            match self.session.request(&create).await {
                Ok(_) => return Ok(()),
                Err(VaultError::CasConflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(VaultError::Api {
            method: "PATCH".into(),
            path: self.data_path.clone(),
            status: 409,
            message: "the index kept changing between create and patch; try again".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_from_fresh_state_equals_one_from_stored_metadata() {
        let fresh = RotationState {
            current: Some(2),
            previous: Some(1),
            grace_until: Some(Utc::now() + chrono::Duration::hours(1)),
            rotated_at: Some(Utc::now()),
            managed: true,
            ..Default::default()
        };
        let stored = RotationState::decode("k", &fresh.encode()).unwrap();
        assert_eq!(IndexEntry::from_state(&fresh, false), IndexEntry::from_state(&stored, false));
    }
}
