//! The key store: each provider key is one KV v2 secret whose versions are its history, and
//! whose `custom_metadata` says which version is current, previous (in grace) and pending.
//!
//! Every new version is written with check-and-set, so of several writers exactly one wins;
//! state changes are merge-PATCHes of only the fields that changed.

mod acks;
mod config;
mod index;
mod intent;
mod kv;
mod name;
mod state;

pub use acks::{ack_id, Ack, Acks, SinkHold};
pub use config::KvConfig;
pub use index::{
    names_in_shard, shard_of, Index, IndexCursor, IndexEntry, IndexFormat, IndexSnapshot, Polled, INDEX_DIR,
    INDEX_NAME, SHARDS,
};
pub use intent::{Intent, IntentError};
pub use kv::{KeyData, Kv, Metadata, VersionMeta, VersionRead};
pub use name::KeyName;
pub use state::{
    is_fingerprint, revoked_mark, RotationState, StateError, ValidationRetry, FIXED_FIELDS, MAX_FINGERPRINTS,
    MAX_REVOKED_MARKS, SCHEMA_FIELD,
};

use crate::secret::Secret;
use crate::vault::VaultError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

/// Data fields keysync adds to each version it writes: who wrote it and why. KV versions are
/// immutable, so this provenance cannot drift; renderers leave these fields out.
pub const WRITTEN_BY_FIELD: &str = "keysync_by";
pub const REASON_FIELD: &str = "keysync_reason";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("key {0} does not exist; create it with `keysync put {0}`")]
    NotFound(KeyName),
    /// Lost a check-and-set race: nothing was written.
    #[error("another writer got there first: {name} is now at version {winner_version} (written by {winner}); nothing was written — run the command again to build on that version")]
    Conflict { name: KeyName, winner_version: u64, winner: String },
    #[error("{0}")]
    Refused(String),
}

/// Whether a CAS write of a new version landed, as far as the writer can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landed {
    /// Nothing was written: refused before or by Vault (a CAS conflict, a 4xx).
    No,
    /// The version exists; what failed came after it (recording it in the metadata).
    Yes { version: u64 },
    /// The answer was lost (connection reset, timeout, 5xx, an unreadable 2xx): the write may
    /// or may not have landed. Find out with [`KeyStore::find_write`] before acting on it.
    Unknown,
}

/// A failed [`KeyStore::try_put_from`]: the error, and whether the data write landed.
#[derive(Debug)]
pub struct PutFailure {
    pub landed: Landed,
    pub error: StoreError,
}

impl PutFailure {
    fn not_landed(error: impl Into<StoreError>) -> Self {
        PutFailure { landed: Landed::No, error: error.into() }
    }
}

/// What a write that failed with this error did: a refusal wrote nothing; a lost answer or a
/// server error may have come after the write was applied.
fn landed_after(error: &VaultError) -> Landed {
    match error {
        // A 307/503 during an election: the standby may have forwarded the write before it
        // failed (Vault redirects on any forwarding error), so it may have landed.
        VaultError::Unreachable { .. } | VaultError::InvalidResponse { .. } | VaultError::NoActiveNode { .. } => {
            Landed::Unknown
        }
        VaultError::Api { status, .. } if *status >= 500 => Landed::Unknown,
        VaultError::Api { .. }
        | VaultError::CasConflict { .. }
        | VaultError::PermissionDenied { .. }
        | VaultError::TokenInvalid(_)
        | VaultError::Auth(_)
        | VaultError::Settings(_)
        | VaultError::Tls { .. }
        | VaultError::KvMount(_) => Landed::No,
    }
}

/// The role of one version, as `status` and `audit` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Current,
    Previous,
    Pending,
    /// Failed validation; never promoted.
    Failed,
    /// Written by keysync, no longer in use.
    Retired,
    /// Not written by keysync (e.g. `bao kv put`).
    External,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Current => "current",
            Role::Previous => "previous",
            Role::Pending => "pending",
            Role::Failed => "failed",
            Role::Retired => "retired",
            Role::External => "external",
        }
    }
}

/// A key's metadata and decoded rotation state.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    pub name: KeyName,
    pub meta: Metadata,
    pub state: RotationState,
}

impl KeyRecord {
    /// Whether the version `state` calls current is soft-deleted or destroyed here (the
    /// index's `deleted` flag).
    pub fn current_deleted(&self, state: &RotationState) -> bool {
        state.current.and_then(|c| self.meta.versions.get(&c)).is_some_and(|m| !m.is_live())
    }

    /// The role of `version` judged from metadata alone.
    pub fn role(&self, version: u64) -> Role {
        let s = &self.state;
        if s.current == Some(version) {
            Role::Current
        } else if s.previous == Some(version) {
            Role::Previous
        } else if s.pending == Some(version) {
            Role::Pending
        } else if s.failed.contains(&version) {
            Role::Failed
        } else if s.fingerprints.contains_key(&version) {
            Role::Retired
        } else if s.fingerprints.keys().next().is_some_and(|oldest| version < *oldest) {
            // Older than every fingerprint kept: keysync's own history, pruned.
            Role::Retired
        } else {
            Role::External
        }
    }

    /// Live versions keysync did not write.
    pub fn external_versions(&self) -> Vec<u64> {
        self.meta
            .versions
            .iter()
            .filter(|(v, m)| m.is_live() && self.role(**v) == Role::External)
            .map(|(v, _)| *v)
            .collect()
    }

    /// When the current version became current (or was written).
    pub fn current_since(&self) -> Option<DateTime<Utc>> {
        let current = self.state.current?;
        self.state.rotated_at.or_else(|| self.meta.versions.get(&current).and_then(|m| m.created_time))
    }
}

/// What `put` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PutOutcome {
    pub name: KeyName,
    pub version: u64,
    pub fingerprint: String,
    pub promoted: bool,
    /// The version that became previous (in grace), if any.
    pub previous: Option<u64>,
    /// The key already was current: nothing written.
    pub unchanged: bool,
}

/// Options of [`KeyStore::put`].
#[derive(Clone, Debug)]
pub struct PutOptions {
    /// Make the new version current (else it stays pending).
    pub promote: bool,
    pub reason: String,
    /// Carry over the current version's provider fields that the new data does not set.
    pub keep_fields: bool,
}

/// Keys in KV v2 under one mount and prefix, with the grace and identity to use for changes.
#[derive(Clone, Debug)]
pub struct KeyStore {
    kv: Kv,
    grace: Duration,
    actor: String,
    /// `Some`: index entries are collected here and sent by [`KeyStore::flush_index`] in one
    /// PATCH, instead of one PATCH per change (see [`KeyStore::batching_index`]).
    batch: Option<std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<KeyName, IndexEntry>>>>,
}

impl KeyStore {
    pub fn new(kv: Kv, grace: Duration, actor: impl Into<String>) -> Self {
        KeyStore { kv, grace, actor: actor.into(), batch: None }
    }

    /// The same store collecting index entries for [`KeyStore::flush_index`], for bulk work
    /// (`rotate --due`): every index PATCH rewrites the whole index, so with 1,000 keys one
    /// PATCH per change makes the index the bottleneck. Changes are stored at once as usual;
    /// only agents' notice waits for the next flush (or their next full sync if it never comes).
    pub fn batching_index(mut self) -> Self {
        self.batch = Some(Default::default());
        self
    }

    /// Sends the collected index entries in one merge-PATCH. A no-op without batching or with
    /// nothing collected; a failure is logged like a failed single publish.
    pub async fn flush_index(&self) {
        let Some(batch) = &self.batch else { return };
        let entries = std::mem::take(&mut *batch.lock().unwrap_or_else(|e| e.into_inner()));
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.kv.index().update_many(&entries).await {
            tracing::warn!(keys = entries.len(), error = %e, "stored the changes but could not update the change index; agents will see them at their next full sync");
        }
    }

    /// The store `[kv]` describes, with the default grace period (`[rotation] grace`), acting
    /// as [`default_actor`].
    pub fn from_config(kv: &KvConfig, grace: Duration, session: std::sync::Arc<crate::vault::Session>) -> Self {
        KeyStore::new(Kv::new(session, &kv.mount, &kv.prefix), grace, default_actor())
    }

    /// The same store with another grace period (a key's own `rotation.grace`).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub async fn list(&self) -> Result<Vec<KeyName>, StoreError> {
        Ok(self.kv.list().await?)
    }

    /// Metadata and state of a key; `None` when it does not exist.
    pub async fn record(&self, name: &KeyName) -> Result<Option<KeyRecord>, StoreError> {
        let Some(meta) = self.kv.metadata(name).await? else { return Ok(None) };
        let state = RotationState::decode(name.as_str(), &meta.custom)?;
        Ok(Some(KeyRecord { name: name.clone(), meta, state }))
    }

    pub async fn require(&self, name: &KeyName) -> Result<KeyRecord, StoreError> {
        self.record(name).await?.ok_or_else(|| StoreError::NotFound(name.clone()))
    }

    pub async fn read(&self, name: &KeyName, version: u64) -> Result<VersionRead, StoreError> {
        Ok(self.kv.read(name, version).await?)
    }

    /// Writes a new version (CAS on the latest) and records its fingerprint; promotes it to
    /// current unless `opts.promote` is false, moving the old current to previous with grace.
    pub async fn put(&self, name: &KeyName, data: KeyData, opts: &PutOptions) -> Result<PutOutcome, StoreError> {
        validate_api_key(name, &data.api_key)?;
        let record = self.record(name).await?;
        self.put_from(name, data, opts, record).await
    }

    /// [`Self::put`] building on a record read earlier. If the key changed since, the CAS
    /// write fails and the result is [`StoreError::Conflict`] naming the winner.
    pub async fn put_from(
        &self,
        name: &KeyName,
        data: KeyData,
        opts: &PutOptions,
        record: Option<KeyRecord>,
    ) -> Result<PutOutcome, StoreError> {
        self.try_put_from(name, data, opts, record).await.map_err(|f| f.error)
    }

    /// [`Self::put_from`] that also says, on failure, whether the new version was written:
    /// a rotation must never revoke a key that Vault stored (another agent would adopt and
    /// promote it), nor leave one live that it did not. The version a CAS write creates is
    /// fixed (the latest it was based on + 1), so a lost answer can be settled by reading it.
    pub async fn try_put_from(
        &self,
        name: &KeyName,
        data: KeyData,
        opts: &PutOptions,
        record: Option<KeyRecord>,
    ) -> Result<PutOutcome, PutFailure> {
        self.try_put_with(name, data, opts, record, None).await
    }

    /// [`Self::try_put_from`] with the current version's data when the caller read it already
    /// (`record`'s current; saves the read that carries its provider fields over).
    pub async fn try_put_with(
        &self,
        name: &KeyName,
        data: KeyData,
        opts: &PutOptions,
        record: Option<KeyRecord>,
        current: Option<&KeyData>,
    ) -> Result<PutOutcome, PutFailure> {
        validate_api_key(name, &data.api_key).map_err(PutFailure::not_landed)?;
        let fingerprint = data.api_key.fingerprint();
        let before = record.as_ref().map(|r| r.state.clone()).unwrap_or_default();
        if let Some(current) = before.current {
            if opts.promote && before.fingerprints.get(&current) == Some(&fingerprint) {
                return Ok(PutOutcome {
                    name: name.clone(),
                    version: current,
                    fingerprint,
                    promoted: false,
                    previous: before.previous,
                    unchanged: true,
                });
            }
        }
        let (version, _) = self.try_write(name, data, opts, record.as_ref(), current).await?;
        crate::failpoint::hit("put_after_data");
        let landed = |e: VaultError| PutFailure { landed: Landed::Yes { version }, error: e.into() };
        let now = crate::clock::now();
        let mut after = before.clone();
        after.managed = true;
        after.fingerprints.insert(version, fingerprint.clone());
        let mut previous = None;
        if opts.promote {
            previous = before.current;
            after.previous = before.current;
            after.grace_until = before.current.map(|_| now + chrono_duration(self.grace));
            after.current = Some(version);
            if after.pending.is_some_and(|p| p <= version) {
                after.pending = None;
            }
            after.rotated_at = Some(now);
            after.rotated_by = Some(self.actor.clone());
            after.reason = Some(opts.reason.clone());
        } else {
            after.pending = Some(version);
        }
        after.prune(record.as_ref().map_or(1, |r| r.meta.oldest_version));
        self.kv.patch_custom_metadata(name, after.merge_patch(&before)).await.map_err(landed)?;
        if opts.promote {
            if self.batch.is_some() {
                // Bulk work: the entry goes out with the next batch anyway, so a read-back
                // (one request per key) buys nothing; agents' full sync corrects a rare race.
                self.publish(name, &after, false).await;
            } else {
                self.publish_fresh(name, &after, false).await;
            }
        }
        Ok(PutOutcome { name: name.clone(), version, fingerprint, promoted: opts.promote, previous, unchanged: false })
    }

    /// The check-and-set write of a new version on `record`'s latest, without touching the
    /// metadata: provider fields of the current version carried over (`opts.keep_fields`; from
    /// `current` when the caller already read it, saving a read), a key keysync revoked
    /// refused, provenance fields added. Returns the version written and the data as written.
    /// A rotation records the version itself (see `rotation::engine`); [`Self::try_put_from`]
    /// records it as pending or current.
    pub async fn try_write(
        &self,
        name: &KeyName,
        mut data: KeyData,
        opts: &PutOptions,
        record: Option<&KeyRecord>,
        current: Option<&KeyData>,
    ) -> Result<(u64, KeyData), PutFailure> {
        validate_api_key(name, &data.api_key).map_err(PutFailure::not_landed)?;
        let fingerprint = data.api_key.fingerprint();
        let (before, latest) = match record {
            Some(r) => (&r.state, r.meta.current_version),
            None => (&RotationState::default(), 0),
        };
        if let (Some(current_version), true) = (before.current, opts.keep_fields) {
            let read;
            let old = match current {
                Some(d) => Some(d),
                None => {
                    read = self.kv.read(name, current_version).await.map_err(PutFailure::not_landed)?;
                    match &read {
                        VersionRead::Live(d) => Some(d),
                        _ => None,
                    }
                }
            };
            if let Some(old) = old {
                for (k, v) in &old.fields {
                    if !is_provenance_field(k) && !is_key_specific_field(k) {
                        data.fields.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        if before.is_revoked(&fingerprint) {
            return Err(PutFailure::not_landed(StoreError::Refused(format!(
                "the key given for {name} (fingerprint {}) was revoked by keysync; put a new key",
                crate::secret::short_fingerprint(&fingerprint)
            ))));
        }
        data.fields.insert(WRITTEN_BY_FIELD.into(), Value::String(self.actor.clone()));
        data.fields.insert(REASON_FIELD.into(), Value::String(opts.reason.clone()));
        let written = if crate::failpoint::fail("kv_write_refused") {
            Err(lost_answer(&self.kv, name, "failpoint kv_write_refused: not sent"))
        } else {
            self.kv.write(name, &data, latest).await
        };
        let written = match written {
            Ok(_) if crate::failpoint::fail("kv_write_lost_answer") => {
                Err(lost_answer(&self.kv, name, "failpoint kv_write_lost_answer: written, answer dropped"))
            }
            other => other,
        };
        match written {
            Ok(v) => Ok((v, data)),
            Err(VaultError::CasConflict { .. }) => Err(PutFailure::not_landed(self.conflict(name).await)),
            Err(e) => Err(PutFailure { landed: landed_after(&e), error: e.into() }),
        }
    }

    /// Settles a write whose answer was lost: did version `version` (the one a CAS write on
    /// `version - 1` creates) land with the key of fingerprint `fingerprint`, written by us?
    /// [`Landed::Unknown`] only when Vault cannot be asked. A version whose data is deleted or
    /// destroyed cannot be told apart, but its key is unreachable either way: [`Landed::No`].
    pub async fn find_write(&self, name: &KeyName, version: u64, fingerprint: &str) -> Landed {
        match self.kv.read(name, version).await {
            Ok(VersionRead::Live(d)) => {
                let ours = d.api_key.fingerprint() == fingerprint
                    && d.fields.get(WRITTEN_BY_FIELD).and_then(Value::as_str) == Some(self.actor.as_str());
                if ours {
                    Landed::Yes { version }
                } else {
                    Landed::No
                }
            }
            Ok(VersionRead::Missing | VersionRead::Deleted | VersionRead::Destroyed) => Landed::No,
            Err(e) => {
                tracing::debug!(key = %name, version, error = %e, "cannot find out whether the write landed yet");
                Landed::Unknown
            }
        }
    }

    /// Records a key's rotation intent before minting, creating the key's metadata when the
    /// key does not exist yet (a declared key created by its first rotation). Vault has no
    /// "create if absent" for metadata: a PATCH answers 404 for a missing key, then a POST
    /// creates it — the POST replaces custom_metadata whole, so it is sent only right after a
    /// 404, and a peer that created the key in between loses at most its intent (its version
    /// is still found, adopted or promoted from the data).
    pub async fn record_intent(&self, name: &KeyName, intent: &Intent) -> Result<(), StoreError> {
        match self.record(name).await? {
            Some(_) => {
                self.update_state(name, |_, s| {
                    s.intent = Some(intent.clone());
                    Ok(())
                })
                .await?;
            }
            None => {
                let state = RotationState { intent: Some(intent.clone()), managed: true, ..Default::default() };
                let patch = state.merge_patch(&RotationState::default());
                match self.kv.patch_custom_metadata(name, patch.clone()).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => self.kv.create_metadata(name, patch).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Claims the count of one promotion: true for exactly one caller per (version, key).
    ///
    /// Promotion is a metadata PATCH, and Vault 1.14 has no check-and-set on metadata, so two
    /// agents finishing the same pending version at the same instant both write `current = v`
    /// (the same value: harmless) and both believe they promoted it. A re-read cannot tell
    /// them apart: whichever PATCH lands last wins, and a re-read right after one's own PATCH
    /// may come before a peer's. So the count is decided by the one conditional write KV v2
    /// has: a CAS write of `<prefix>/_promotions/<NAME>` (data: the version and fingerprint
    /// last counted). The rule: after its promotion PATCH, every agent that changed `current`
    /// claims; the claim reads the record — already this version and key: someone counted it
    /// — and otherwise writes it with `cas` = the version it read. Of concurrent claimers
    /// exactly one write succeeds; the others get a CAS conflict, re-read, and find the version
    /// counted. The key's fingerprint is part of the claim so a key deleted and created again
    /// (versions restart at 1) is counted afresh. A claim that cannot be made (Vault down) is
    /// an error: the caller does not count (a crash loses its counters anyway).
    pub async fn claim_promotion(&self, name: &KeyName, version: u64, fingerprint: &str) -> Result<bool, StoreError> {
        for _ in 0..8 {
            let (at, counted) = self.kv.promotion_record(name).await?;
            if counted.as_ref().is_some_and(|(v, fp)| *v == version && fp == fingerprint) {
                return Ok(false);
            }
            match self.kv.write_promotion_record(name, at, version, fingerprint, &self.actor).await {
                Ok(()) => return Ok(true),
                Err(VaultError::CasConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Refused(format!(
            "could not record the promotion of {name} v{version}: too many concurrent claims"
        )))
    }

    /// After a lost CAS: who won?
    async fn conflict(&self, name: &KeyName) -> StoreError {
        match self.record(name).await {
            Ok(Some(r)) => {
                let v = r.meta.current_version;
                let winner = match self.kv.read(name, v).await {
                    Ok(VersionRead::Live(d)) => d
                        .fields
                        .get(WRITTEN_BY_FIELD)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| "a writer outside keysync".into()),
                    _ => "unknown".into(),
                };
                StoreError::Conflict { name: name.clone(), winner_version: v, winner }
            }
            Ok(None) => StoreError::Refused(format!("key {name} changed during the write and is now gone")),
            Err(e) => e,
        }
    }

    /// The current version's number and data (consumers follow `current`, never KV's latest).
    pub async fn current(&self, name: &KeyName) -> Result<(KeyRecord, u64, KeyData), StoreError> {
        let record = self.require(name).await?;
        let Some(current) = record.state.current else {
            return Err(StoreError::Refused(format!(
                "key {name} has no current version (written outside keysync?); promote one with `keysync put {name}`"
            )));
        };
        match self.kv.read(name, current).await? {
            VersionRead::Live(data) => Ok((record, current, data)),
            VersionRead::Deleted => Err(StoreError::Refused(format!(
                "the current version {current} of {name} is soft-deleted; `keysync undelete {name}` restores it"
            ))),
            VersionRead::Destroyed | VersionRead::Missing => Err(StoreError::Refused(format!(
                "the current version {current} of {name} is destroyed; put a new key with `keysync put {name}`"
            ))),
        }
    }

    /// Reads state, lets `change` edit it, and PATCHes what changed. Returns the new state.
    pub async fn update_state(
        &self,
        name: &KeyName,
        change: impl FnOnce(&KeyRecord, &mut RotationState) -> Result<(), StoreError>,
    ) -> Result<RotationState, StoreError> {
        let record = self.require(name).await?;
        let mut after = record.state.clone();
        change(&record, &mut after)?;
        after.managed = true;
        after.prune(record.meta.oldest_version);
        self.kv.patch_custom_metadata(name, after.merge_patch(&record.state)).await?;
        let deleted = record.current_deleted(&after);
        // Bookkeeping that consumers do not see (a rotation intent, a retry counter, a
        // fingerprint) leaves the index alone: no new index version, no agent wakes up.
        if record.state.managed
            && IndexEntry::from_state(&after, deleted)
                == IndexEntry::from_state(&record.state, record.current_deleted(&record.state))
        {
            return Ok(after);
        }
        self.publish_fresh(name, &after, deleted).await;
        Ok(after)
    }

    /// [`Self::update_state`] on a record the caller read already: one PATCH, no read, no
    /// index update (the caller publishes). Only the fields `change` alters are sent, so a
    /// peer's concurrent change to other fields survives; use it only where the caller's
    /// record is known to be fresh enough for the fields it changes (see the rotation
    /// engine's fresh-version path).
    pub async fn update_state_on(
        &self,
        record: &KeyRecord,
        change: impl FnOnce(&KeyRecord, &mut RotationState) -> Result<(), StoreError>,
    ) -> Result<RotationState, StoreError> {
        let mut after = record.state.clone();
        change(record, &mut after)?;
        after.managed = true;
        after.prune(record.meta.oldest_version);
        self.kv.patch_custom_metadata(&record.name, after.merge_patch(&record.state)).await?;
        Ok(after)
    }

    /// Publishes what Vault holds now rather than our view of it: a metadata patch only
    /// touches the fields we changed, but our state also carries the other fields as we read
    /// them, and another agent may have promoted since. Publishing that stale view would move
    /// the index back to the old version until the next full sync. `ours` is the fallback
    /// when the key cannot be read back.
    async fn publish_fresh(&self, name: &KeyName, ours: &RotationState, deleted: bool) {
        match self.record(name).await {
            Ok(Some(fresh)) => self.publish(name, &fresh.state, fresh.current_deleted(&fresh.state)).await,
            _ => self.publish(name, ours, deleted).await,
        }
    }

    /// Tells agents about a change through the index. The change itself is already stored;
    /// if the index cannot be updated, agents still see it at their next full sync.
    pub async fn publish(&self, name: &KeyName, state: &RotationState, deleted: bool) {
        let entry = IndexEntry::from_state(state, deleted);
        if let Some(batch) = &self.batch {
            batch.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), entry);
            return;
        }
        if let Err(e) = self.kv.index().update(name, &entry).await {
            tracing::warn!(key = %name, error = %e, "stored the change but could not update the change index; agents will see it at their next full sync");
        }
    }

    /// Swaps current and previous while previous is still in grace.
    pub async fn rollback(&self, name: &KeyName, reason: &str) -> Result<RotationState, StoreError> {
        let now = crate::clock::now();
        let actor = self.actor.clone();
        // Check first that the version we switch to still has data.
        let record = self.require(name).await?;
        let target = match (record.state.previous, record.state.in_grace(now)) {
            (Some(p), true) => p,
            (Some(p), false) => {
                return Err(StoreError::Refused(format!(
                    "the grace period of {name}'s previous version {p} ended{}; it may already be revoked — put a working key with `keysync put {name}` instead",
                    record.state.grace_until.map(|g| format!(" at {g}")).unwrap_or_default()
                )))
            }
            (None, _) => {
                return Err(StoreError::Refused(format!(
                    "{name} has no previous version to roll back to; put a working key with `keysync put {name}`"
                )))
            }
        };
        match self.kv.read(name, target).await? {
            VersionRead::Live(d) if record.state.is_revoked(&d.api_key.fingerprint()) => {
                return Err(StoreError::Refused(format!(
                    "previous version {target} of {name} is being revoked at the provider; cannot roll back to it — put a working key with `keysync put {name}`"
                )))
            }
            VersionRead::Live(_) => {}
            _ => {
                return Err(StoreError::Refused(format!(
                    "previous version {target} of {name} is deleted or destroyed; cannot roll back to it"
                )))
            }
        }
        let reason = reason.to_string();
        self.update_state(name, move |r, s| {
            if r.state.previous != Some(target)
                || r.state.fingerprints.get(&target).is_some_and(|fp| r.state.is_revoked(fp))
            {
                return Err(StoreError::Refused(format!("{name} changed while rolling back; run the command again")));
            }
            s.previous = r.state.current;
            s.current = Some(target);
            s.rotated_at = Some(now);
            s.rotated_by = Some(actor);
            s.reason = Some(reason);
            Ok(())
        })
        .await
    }

    pub async fn set_disabled(&self, name: &KeyName, disabled: bool) -> Result<RotationState, StoreError> {
        let actor = self.actor.clone();
        tracing::info!(key = %name, disabled, by = %actor, "changing the disabled flag");
        self.update_state(name, move |_, s| {
            s.disabled = disabled;
            Ok(())
        })
        .await
    }

    /// Soft-deletes every live version (undelete brings them back). Returns the versions.
    pub async fn delete(&self, name: &KeyName) -> Result<Vec<u64>, StoreError> {
        let record = self.require(name).await?;
        let live: Vec<u64> = record.meta.versions.iter().filter(|(_, m)| m.is_live()).map(|(v, _)| *v).collect();
        self.kv.delete_versions(name, &live).await?;
        self.publish(name, &record.state, true).await;
        Ok(live)
    }

    /// Restores every soft-deleted (not destroyed) version.
    pub async fn undelete(&self, name: &KeyName) -> Result<Vec<u64>, StoreError> {
        let record = self.require(name).await?;
        let deleted: Vec<u64> = record
            .meta
            .versions
            .iter()
            .filter(|(_, m)| m.deletion_time.is_some() && !m.destroyed)
            .map(|(v, _)| *v)
            .collect();
        self.kv.undelete(name, &deleted).await?;
        self.publish(name, &record.state, false).await;
        Ok(deleted)
    }

    /// Destroys one version's data for good; its fingerprint stays for audit. The current
    /// version cannot be destroyed: consumers would lose their key.
    pub async fn destroy(&self, name: &KeyName, version: u64) -> Result<(), StoreError> {
        let record = self.require(name).await?;
        if !record.meta.versions.contains_key(&version) {
            let known: Vec<String> = record.meta.versions.keys().map(u64::to_string).collect();
            return Err(StoreError::Refused(format!(
                "{name} has no version {version} (versions: {}); see `keysync audit {name}`",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )));
        }
        if record.state.current == Some(version) {
            return Err(StoreError::Refused(format!(
                "version {version} is the current key of {name}; consumers use it — put a new key (or roll back) first"
            )));
        }
        self.kv.destroy(name, &[version]).await?;
        Ok(())
    }
}

/// The error a lost answer to a write looks like (failpoints only).
fn lost_answer(kv: &Kv, name: &KeyName, detail: &str) -> VaultError {
    VaultError::Unreachable {
        address: "(failpoint)".into(),
        op: format!("POST {}", kv.path("data", name)),
        detail: detail.into(),
        connected: true,
    }
}

/// keysync's provenance fields in version data.
pub fn is_provenance_field(name: &str) -> bool {
    name == WRITTEN_BY_FIELD || name == REASON_FIELD
}

/// Fields that describe one particular key, not the account or project it belongs to: a new
/// key must never inherit them from the old one (an inherited `expires_at` would make every
/// rotated key due again at once; an inherited `key_id` would revoke the wrong key).
pub fn is_key_specific_field(name: &str) -> bool {
    name == "key_id" || name == "expires_at"
}

/// An API key must be one line of visible characters: a stray newline or space from a copy
/// and paste would break every consumer.
pub fn validate_api_key(name: &KeyName, key: &Secret) -> Result<(), StoreError> {
    let k = key.expose();
    if k.is_empty() {
        return Err(StoreError::Refused(format!("the key given for {name} is empty")));
    }
    if k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::Refused(format!(
            "the key given for {name} contains whitespace or control characters (fingerprint {}); pass the bare key",
            crate::secret::short_fingerprint(&key.fingerprint())
        )));
    }
    if k.len() > 8192 {
        return Err(StoreError::Refused(format!(
            "the key given for {name} is {} bytes; API keys are far shorter",
            k.len()
        )));
    }
    Ok(())
}

/// Who is making changes: `KEYSYNC_AGENT_ID`, else `user@host`.
pub fn default_actor() -> String {
    if let Ok(id) = std::env::var("KEYSYNC_AGENT_ID") {
        if !id.trim().is_empty() {
            return id.trim().to_string();
        }
    }
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| user_name_of_uid());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

pub fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The login name of the current uid from the passwd database, else `uid<N>`.
fn user_name_of_uid() -> String {
    // SAFETY: getpwuid_r writes into our buffer and struct; we read pw_name only on success.
    unsafe {
        let uid = libc::getuid();
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) == 0
            && !result.is_null()
            && !pwd.pw_name.is_null()
        {
            if let Ok(name) = std::ffi::CStr::from_ptr(pwd.pw_name).to_str() {
                return name.to_string();
            }
        }
        format!("uid{uid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> VaultError {
        VaultError::Api { method: "POST".into(), path: "p".into(), status, message: "m".into() }
    }

    #[test]
    fn only_a_lost_answer_or_a_server_error_leaves_a_write_unknown() {
        let unreachable = VaultError::Unreachable {
            address: "a".into(),
            op: "POST p".into(),
            detail: "connection reset".into(),
            connected: true,
        };
        assert_eq!(landed_after(&unreachable), Landed::Unknown);
        assert_eq!(landed_after(&api(500)), Landed::Unknown);
        assert_eq!(landed_after(&api(503)), Landed::Unknown);
        let garbled =
            VaultError::InvalidResponse { method: "POST".into(), path: "p".into(), detail: "no version".into() };
        assert_eq!(landed_after(&garbled), Landed::Unknown, "a 2xx we could not read may have written");
        // Refusals wrote nothing.
        assert_eq!(landed_after(&api(400)), Landed::No);
        assert_eq!(landed_after(&api(429)), Landed::No);
        assert_eq!(landed_after(&VaultError::CasConflict { path: "p".into() }), Landed::No);
        assert_eq!(landed_after(&VaultError::TokenInvalid("gone".into())), Landed::No);
    }
}
