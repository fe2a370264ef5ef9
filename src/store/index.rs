//! The change index: tells agents which keys changed, so a steady poll costs the same few
//! small reads whatever the number of keys, and key data is read only when an entry changed.
//!
//! **Format 2 (sharded).** `<prefix>/_index.d/<hh>` are 256 shard secrets; a key's shard is
//! the first byte of SHA-256 of its name, so it never moves. Each shard maps its keys to an
//! [`IndexEntry`]. `<prefix>/_index.d/root` maps every shard that exists to the KV version
//! its last writer produced. An agent reads the root every poll (one GET, under 4 KB)
//! and a shard only when the root's value for it changed since it last looked; then the data
//! of the keys whose entry changed. Writers merge-PATCH their shard (the server merges, so
//! writers of different keys in one shard never lose each other's entries), then
//! merge-PATCH the root with the version the shard write produced.
//!
//! Why "changed" and not "grew": two writers of one shard can PATCH the root in the other
//! order, leaving an older version there. Each version number comes from exactly one write,
//! and an agent always reads a shard's *latest* version after seeing its root value, so
//! whatever value it last saw, the shard it read then already held that write: a backwards
//! value costs at most one extra shard read and never hides a change. A writer that dies
//! between its shard and root PATCH leaves its change unannounced until the next write to
//! that shard or the agents' paced full sync (see `agent.full_sync_interval`).
//!
//! **Format 1 (legacy).** One secret `<prefix>/_index` holding every entry, which integrated
//! storage's 1 MiB entry limit breaks at ~5,600 keys. Agents fall back to it while no root
//! exists. The first writer of format 2 converts it (legacy entries copied into shards that
//! lack them, with check-and-set), and writers keep it updated while it exists so agents of
//! older keysync versions keep seeing changes; `keysync index drop-legacy` removes it once
//! every agent is upgraded.
//!
//! Portable: data PATCH exists in HashiCorp Vault ≥ 1.9 and OpenBao.

use super::name::KeyName;
use super::state::RotationState;
use crate::vault::{KvRead, Session, VaultError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// The legacy (format 1) index secret's name under the prefix. Not a valid key name.
pub const INDEX_NAME: &str = "_index";
/// The folder of the sharded (format 2) index under the prefix. Not a valid key name.
pub const INDEX_DIR: &str = "_index.d";
/// The root secret's name inside [`INDEX_DIR`].
pub const ROOT_NAME: &str = "root";
/// How many shards there are. With ~220 bytes an entry, 100,000 keys make ~86 KB shards
/// (integrated storage refuses entries over 1 MiB) and the root stays under 3.4 KB.
pub const SHARDS: usize = 256;
/// KV versions kept per shard and root: only the latest is ever read, older ones only cost
/// storage (a shard of 100,000 keys is ~86 KB a version).
const INDEX_MAX_VERSIONS: u64 = 4;
/// Shard writes in flight at once when a batch spans many shards.
const WRITE_CONCURRENCY: usize = 8;

/// What consumers need to know about one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
    /// All versions soft-deleted (`keysync delete`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Fingerprint of `current`, so a consumer can tell a real change from a re-promotion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When `current` was promoted (for the key-age metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
}

fn is_false(b: &bool) -> bool {
    !*b
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

/// The shard a key's entry lives in: the first byte of SHA-256 of its name (stable across
/// versions and machines, and spread evenly whatever the names look like).
pub fn shard_of(name: &str) -> u8 {
    Sha256::digest(name.as_bytes())[0]
}

fn shard_name(shard: u8) -> String {
    format!("{shard:02x}")
}

fn parse_shard_name(name: &str) -> Option<u8> {
    (name.len() == 2).then(|| u8::from_str_radix(name, 16).ok()).flatten()
}

/// Which index format a read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexFormat {
    /// Neither a root nor a legacy index: nothing was published yet.
    Empty,
    /// Only the format 1 single secret (written by keysync before the sharded index).
    Legacy,
    Sharded,
}

/// The whole index as read (every shard, or the legacy secret): for tools and tests. Agents
/// use [`Index::poll`], which reads only what changed.
#[derive(Clone, Debug)]
pub struct IndexSnapshot {
    pub format: IndexFormat,
    /// The legacy secret's KV version, or the sum of the shard versions (grows on every write).
    pub version: u64,
    pub entries: BTreeMap<String, IndexEntry>,
    /// Entries that could not be parsed (written by something else), by name.
    pub unreadable: Vec<String>,
    /// Shards read, with their KV version and the size of their data in bytes.
    pub shards: BTreeMap<u8, (u64, usize)>,
    /// Whether the legacy secret exists besides a sharded index (writers still keep it).
    pub legacy_present: bool,
}

/// What an agent last saw of the index, so the next poll reads only what changed.
#[derive(Clone, Debug, Default)]
pub struct IndexCursor {
    /// Root value per shard when last looked at.
    seen: BTreeMap<u8, u64>,
}

/// The result of one poll.
#[derive(Clone, Debug, Default)]
pub struct Polled {
    /// Entries of the asked-for keys in every shard read (all of them from a legacy index).
    /// A key not here did not change since the last poll, or is in no index.
    pub entries: BTreeMap<String, IndexEntry>,
    /// Vault reads this poll made.
    pub reads: u32,
    /// The format found (agents say once when they are on the legacy index).
    pub format: Option<IndexFormat>,
}

/// What a writer process learned about the index layout, shared by its clones of [`Index`]
/// so the checks cost one request per process, not one per write.
#[derive(Debug, Default)]
pub struct WriterState {
    /// The root is known to exist (conversion done or not needed).
    root_ready: AtomicBool,
    /// Legacy secret: 0 unknown, 1 present (keep it updated), 2 absent.
    legacy: AtomicU8,
    /// Whether a failed legacy update was already reported (said once per process).
    legacy_warned: AtomicBool,
}

const LEGACY_UNKNOWN: u8 = 0;
const LEGACY_PRESENT: u8 = 1;
const LEGACY_ABSENT: u8 = 2;

/// Reads and updates the index.
#[derive(Clone, Debug)]
pub struct Index {
    session: Arc<Session>,
    mount: String,
    prefix: String,
    writer: Arc<WriterState>,
}

impl Index {
    pub fn new(session: Arc<Session>, mount: &str, prefix: &str) -> Self {
        Self::with_state(session, mount, prefix, Arc::default())
    }

    /// An index sharing what other clones learned about the layout (see [`WriterState`]).
    pub fn with_state(session: Arc<Session>, mount: &str, prefix: &str, writer: Arc<WriterState>) -> Self {
        Index { session, mount: mount.trim_matches('/').into(), prefix: prefix.trim_matches('/').into(), writer }
    }

    /// `<mount>/data/<prefix>/<name>`, for messages.
    fn data_path(&self, name: &str) -> String {
        format!("{}/data/{}/{name}", self.mount, self.prefix)
    }

    /// `<prefix>/<name>`: a secret's path inside the mount.
    fn secret_path(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// The latest version of a secret under the prefix: its version and data, `None` when it
    /// does not exist or its latest version is deleted.
    async fn read_latest(&self, name: &str, op: &'static str) -> Result<Option<(u64, Map<String, Value>)>, VaultError> {
        Ok(match self.session.kv_read(&self.mount, &self.secret_path(name), None, op).await? {
            KvRead::Live { data, version } => Some((version, data)),
            KvRead::Deleted { .. } | KvRead::Missing => None,
        })
    }

    fn root_name() -> String {
        format!("{INDEX_DIR}/{ROOT_NAME}")
    }

    fn shard_secret(shard: u8) -> String {
        format!("{INDEX_DIR}/{}", shard_name(shard))
    }

    /// One GET of the root: shard → version, or `None` when there is no sharded index.
    async fn read_root(&self) -> Result<Option<BTreeMap<u8, u64>>, VaultError> {
        let Some((_, data)) = self.read_latest(&Self::root_name(), "index_root_read").await? else {
            return Ok(None);
        };
        let mut out = BTreeMap::new();
        for (k, v) in &data {
            if let (Some(shard), Some(v)) = (parse_shard_name(k), v.as_u64()) {
                out.insert(shard, v);
            }
        }
        Ok(Some(out))
    }

    /// One GET of a shard's latest version: its version, entries, unreadable names, bytes.
    async fn read_shard(&self, shard: u8) -> Result<(u64, Map<String, Value>, usize), VaultError> {
        let Some((version, map)) = self.read_latest(&Self::shard_secret(shard), "index_shard_read").await? else {
            return Ok((0, Map::new(), 0));
        };
        let bytes = serde_json::to_vec(&map).map_or(0, |v| v.len());
        Ok((version, map, bytes))
    }

    /// One GET of the legacy secret: version and entries (`None` when it does not exist).
    async fn read_legacy(&self) -> Result<Option<(u64, Map<String, Value>)>, VaultError> {
        self.read_latest(INDEX_NAME, "index_read").await
    }

    /// A steady-state poll for the keys an agent renders: the root, then only the shards of
    /// those keys whose root value changed since `cursor` saw it. Without a root, the legacy
    /// index is read whole (as keysync before format 2 did).
    pub async fn poll<'a>(
        &self,
        cursor: &mut IndexCursor,
        keys: impl IntoIterator<Item = &'a KeyName>,
    ) -> Result<Polled, VaultError> {
        let keys: Vec<&KeyName> = keys.into_iter().collect();
        let mut polled = Polled { reads: 1, ..Default::default() };
        let Some(root) = self.read_root().await? else {
            polled.reads += 1;
            let Some((_, map)) = self.read_legacy().await? else {
                polled.format = Some(IndexFormat::Empty);
                return Ok(polled);
            };
            polled.format = Some(IndexFormat::Legacy);
            cursor.seen.clear();
            for name in keys {
                if let Some(e) = map.get(name.as_str()).and_then(|v| serde_json::from_value(v.clone()).ok()) {
                    polled.entries.insert(name.to_string(), e);
                }
            }
            return Ok(polled);
        };
        polled.format = Some(IndexFormat::Sharded);
        let mut by_shard: BTreeMap<u8, Vec<&KeyName>> = BTreeMap::new();
        for name in keys {
            by_shard.entry(shard_of(name.as_str())).or_default().push(name);
        }
        for (shard, names) in by_shard {
            let Some(value) = root.get(&shard).copied() else { continue };
            if cursor.seen.get(&shard) == Some(&value) {
                continue;
            }
            let (_, map, _) = self.read_shard(shard).await?;
            polled.reads += 1;
            cursor.seen.insert(shard, value);
            for name in names {
                if let Some(e) = map.get(name.as_str()).and_then(|v| serde_json::from_value(v.clone()).ok()) {
                    polled.entries.insert(name.to_string(), e);
                }
            }
        }
        Ok(polled)
    }

    /// Marks the current root as seen without reading any shard: for an agent that has just
    /// read every key's metadata (which is newer than any entry), so its next poll reads only
    /// shards that change from now on.
    pub async fn mark_seen(&self, cursor: &mut IndexCursor) -> Result<(), VaultError> {
        cursor.seen = self.read_root().await?.unwrap_or_default();
        Ok(())
    }

    /// Everything the index holds: every shard (or the legacy secret). For `keysync index
    /// status`, tests and tools; agents poll instead.
    pub async fn read(&self) -> Result<IndexSnapshot, VaultError> {
        let mut snapshot = IndexSnapshot {
            format: IndexFormat::Empty,
            version: 0,
            entries: BTreeMap::new(),
            unreadable: Vec::new(),
            shards: BTreeMap::new(),
            legacy_present: false,
        };
        let add = |snapshot: &mut IndexSnapshot, map: Map<String, Value>| {
            for (name, v) in map {
                match serde_json::from_value::<IndexEntry>(v) {
                    Ok(e) => {
                        snapshot.entries.insert(name, e);
                    }
                    Err(_) => snapshot.unreadable.push(name),
                }
            }
        };
        match self.read_root().await? {
            Some(root) => {
                snapshot.format = IndexFormat::Sharded;
                for shard in root.keys() {
                    let (version, map, bytes) = self.read_shard(*shard).await?;
                    snapshot.version += version;
                    snapshot.shards.insert(*shard, (version, bytes));
                    add(&mut snapshot, map);
                }
                snapshot.legacy_present = self.legacy_exists().await?;
            }
            None => {
                if let Some((version, map)) = self.read_legacy().await? {
                    snapshot.format = IndexFormat::Legacy;
                    snapshot.version = version;
                    snapshot.legacy_present = true;
                    add(&mut snapshot, map);
                }
            }
        }
        Ok(snapshot)
    }

    /// Whether the legacy secret exists (a small metadata read, never the entries).
    async fn legacy_exists(&self) -> Result<bool, VaultError> {
        Ok(self.session.kv_metadata(&self.mount, &self.secret_path(INDEX_NAME), "index_legacy_check").await?.is_some())
    }

    /// Records `entry` for `name` (see [`Index::update_many`]).
    pub async fn update(&self, name: &KeyName, entry: &IndexEntry) -> Result<(), VaultError> {
        self.update_many(&BTreeMap::from([(name.clone(), entry.clone())])).await
    }

    /// Records several entries: one merge-PATCH per shard they fall in (up to
    /// [`WRITE_CONCURRENCY`] at once), then one merge-PATCH of the root with the shards' new
    /// versions, then the legacy secret while it exists. The first write of a process
    /// converts a legacy index if there is no root yet.
    pub async fn update_many(&self, entries: &BTreeMap<KeyName, IndexEntry>) -> Result<(), VaultError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.ensure_root().await?;
        let mut by_shard: BTreeMap<u8, Map<String, Value>> = BTreeMap::new();
        for (name, entry) in entries {
            by_shard
                .entry(shard_of(name.as_str()))
                .or_default()
                .insert(name.as_str().to_string(), serde_json::to_value(entry).unwrap_or(Value::Null));
        }
        let versions = self.patch_shards(by_shard).await?;
        let root_patch: Map<String, Value> = versions.iter().map(|(s, v)| (shard_name(*s), json!(v))).collect();
        self.patch_or_create(&Self::root_name(), "index_root_patch", Value::Object(root_patch)).await?;
        self.update_legacy(entries).await;
        Ok(())
    }

    /// PATCHes every shard of a batch, a few at once; returns each shard's new version.
    async fn patch_shards(&self, by_shard: BTreeMap<u8, Map<String, Value>>) -> Result<BTreeMap<u8, u64>, VaultError> {
        let mut versions = BTreeMap::new();
        let mut pending = by_shard.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < WRITE_CONCURRENCY {
                let Some((shard, map)) = pending.next() else { break };
                let index = self.clone();
                running.spawn(async move {
                    let v = index
                        .patch_or_create(&Self::shard_secret(shard), "index_shard_patch", Value::Object(map))
                        .await;
                    (shard, v)
                });
            }
            let Some(done) = running.join_next().await else { break };
            match done {
                Ok((shard, Ok(v))) => {
                    versions.insert(shard, v);
                }
                Ok((_, Err(e))) => return Err(e),
                Err(e) => {
                    return Err(VaultError::Api {
                        method: "PATCH".into(),
                        path: self.data_path(INDEX_DIR),
                        status: 0,
                        message: format!("an index shard write stopped: {e}"),
                    })
                }
            }
        }
        Ok(versions)
    }

    /// Merge-PATCHes `data` into the secret `name` under the prefix, creating it (check-and-set
    /// 0, so two creators never overwrite each other) when it does not exist. Returns the
    /// version written.
    async fn patch_or_create(&self, name: &str, op: &'static str, data: Value) -> Result<u64, VaultError> {
        let path = self.data_path(name);
        let secret = self.secret_path(name);
        for _ in 0..3 {
            if let Some(version) = self.session.kv_patch_data(&self.mount, &secret, data.clone(), op).await? {
                return Ok(version);
            }
            match self.session.kv_write(&self.mount, &secret, &json!(data), Some(0), "index_create").await {
                Ok(version) => {
                    self.limit_versions(name).await;
                    return Ok(version);
                }
                Err(VaultError::CasConflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(VaultError::Api {
            method: "PATCH".into(),
            path,
            status: 409,
            message: "the index kept changing between create and patch; try again".into(),
        })
    }

    /// Keeps few versions of an index secret (only the latest is read). Best effort: a
    /// writer without metadata rights still works, the secret only keeps more history.
    async fn limit_versions(&self, name: &str) {
        let path = self.secret_path(name);
        if let Err(e) =
            self.session.kv_set_metadata(&self.mount, &path, Some(INDEX_MAX_VERSIONS), None, "index_metadata").await
        {
            tracing::debug!(secret = name, error = %e, "could not limit the index secret's versions");
        }
    }

    /// Makes sure a root exists before the first shard write of this process, converting a
    /// legacy index if there is one. Costs one root read per process once the root exists.
    async fn ensure_root(&self) -> Result<(), VaultError> {
        if self.writer.root_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.read_root().await?.is_some() {
            if self.writer.legacy.load(Ordering::Acquire) == LEGACY_UNKNOWN {
                let present = self.legacy_exists().await?;
                self.writer.legacy.store(if present { LEGACY_PRESENT } else { LEGACY_ABSENT }, Ordering::Release);
            }
            self.writer.root_ready.store(true, Ordering::Release);
            return Ok(());
        }
        self.migrate().await?;
        Ok(())
    }

    /// Converts a legacy index (if any) into shards and announces the shards written in the
    /// root, creating it. Idempotent: entries already in a shard are left alone. Returns how
    /// many shards the conversion wrote.
    pub async fn migrate(&self) -> Result<usize, VaultError> {
        let converted = self.convert_legacy().await?;
        // Create the root with every shard the conversion wrote; if another writer created it
        // meanwhile, merge ours in.
        let root: Map<String, Value> = converted.iter().map(|(s, v)| (shard_name(*s), json!(v))).collect();
        self.patch_or_create(&Self::root_name(), "index_root_patch", Value::Object(root)).await?;
        self.writer.root_ready.store(true, Ordering::Release);
        Ok(converted.len())
    }

    /// Copies the legacy index's entries into shards that do not hold them yet: per shard a
    /// read and a check-and-set write, so an entry a format 2 writer put there first (newer
    /// than the legacy one) is never overwritten. Returns the versions of the shards written.
    async fn convert_legacy(&self) -> Result<BTreeMap<u8, u64>, VaultError> {
        let Some((_, legacy)) = self.read_legacy().await? else {
            self.writer.legacy.store(LEGACY_ABSENT, Ordering::Release);
            return Ok(BTreeMap::new());
        };
        self.writer.legacy.store(LEGACY_PRESENT, Ordering::Release);
        let mut by_shard: BTreeMap<u8, Map<String, Value>> = BTreeMap::new();
        for (name, entry) in legacy {
            by_shard.entry(shard_of(&name)).or_default().insert(name, entry);
        }
        let mut versions = BTreeMap::new();
        for (shard, entries) in by_shard {
            let secret = Self::shard_secret(shard);
            for attempt in 0.. {
                let (version, mut current, _) = self.read_shard(shard).await?;
                let before = current.len();
                for (name, entry) in &entries {
                    current.entry(name.clone()).or_insert_with(|| entry.clone());
                }
                if current.len() == before && version > 0 {
                    versions.insert(shard, version);
                    break;
                }
                let written = self
                    .session
                    .kv_write(
                        &self.mount,
                        &self.secret_path(&secret),
                        &Value::Object(current),
                        Some(version),
                        "index_convert",
                    )
                    .await;
                match written {
                    Ok(written) => {
                        if version == 0 {
                            self.limit_versions(&secret).await;
                        }
                        versions.insert(shard, written);
                        break;
                    }
                    Err(VaultError::CasConflict { .. }) if attempt < 5 => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        tracing::info!(shards = versions.len(), "converted the legacy change index to the sharded format");
        Ok(versions)
    }

    /// Keeps the legacy secret current while it exists, for agents of older keysync
    /// versions (they read nothing else). Never creates it. A failure is said once per
    /// process: the change itself is stored and format 2 agents see it.
    async fn update_legacy(&self, entries: &BTreeMap<KeyName, IndexEntry>) {
        if self.writer.legacy.load(Ordering::Acquire) != LEGACY_PRESENT {
            return;
        }
        let value: Map<String, Value> = entries
            .iter()
            .map(|(name, entry)| (name.as_str().to_string(), serde_json::to_value(entry).unwrap_or(Value::Null)))
            .collect();
        let patched = self
            .session
            .kv_patch_data(&self.mount, &self.secret_path(INDEX_NAME), Value::Object(value), "index_patch")
            .await;
        match patched {
            Ok(None) => self.writer.legacy.store(LEGACY_ABSENT, Ordering::Release),
            Ok(_) => {}
            Err(e) => {
                if !self.writer.legacy_warned.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "could not update the legacy change index {INDEX_NAME} (kept for agents older than the sharded index); such agents see changes only at their full sync. Once every agent is upgraded, remove it with `keysync index drop-legacy`");
                }
            }
        }
    }

    /// Deletes the legacy secret (every version and its metadata). Refused while no sharded
    /// index exists, since agents would then have no index at all until the next write.
    pub async fn drop_legacy(&self) -> Result<bool, VaultError> {
        if self.read_root().await?.is_none() {
            self.ensure_root().await?;
        }
        if !self.legacy_exists().await? {
            return Ok(false);
        }
        self.session.kv_delete_all(&self.mount, &self.secret_path(INDEX_NAME), "index_drop_legacy").await?;
        self.writer.legacy.store(LEGACY_ABSENT, Ordering::Release);
        Ok(true)
    }
}

/// `count` key names `<prefix><n>` that fall in `shard` (for tests of writers sharing one).
pub fn names_in_shard(shard: u8, count: usize, prefix: &str) -> Vec<String> {
    (0u64..).map(|i| format!("{prefix}{i}")).filter(|n| shard_of(n) == shard).take(count).collect()
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

    #[test]
    fn entries_leave_out_empty_fields_and_read_back_the_same() {
        let e = IndexEntry { current: Some(3), ..Default::default() };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"current":3}"#);
        assert_eq!(serde_json::from_str::<IndexEntry>(&text).unwrap(), e);
        // What keysync before the compact form wrote still reads.
        let old = r#"{"current":3,"previous":null,"grace_until":null,"disabled":false,"deleted":false,"fingerprint":null,"since":null}"#;
        assert_eq!(serde_json::from_str::<IndexEntry>(old).unwrap(), e);
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("openai"), shard_of("openai"));
        let mut counts = [0usize; SHARDS];
        for i in 0..100_000 {
            counts[shard_of(&format!("key-{i}")) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        // 390 a shard on average; a uniform hash stays well inside ±25 %.
        assert!(*min > 290 && *max < 490, "{min}..{max}");
    }

    #[test]
    fn shard_names_round_trip() {
        for s in 0..=255u8 {
            assert_eq!(parse_shard_name(&shard_name(s)), Some(s));
        }
        assert_eq!(parse_shard_name("root"), None);
        assert_eq!(parse_shard_name("g0"), None);
    }

    #[test]
    fn a_full_shard_and_the_root_stay_small_at_100k_keys() {
        // The largest entry keysync writes: current, previous, grace, fingerprint, since.
        let now = whole_seconds(Utc::now());
        let entry = IndexEntry {
            current: Some(123_456),
            previous: Some(123_455),
            grace_until: Some(now),
            disabled: false,
            deleted: false,
            fingerprint: Some(crate::secret::fingerprint(b"k")),
            since: Some(now),
        };
        let mut shard = Map::new();
        let per_shard = 100_000 / SHARDS * 5 / 4; // 25 % above the mean
        for i in 0..per_shard {
            shard.insert(format!("a-fairly-long-key-name-{i:06}"), serde_json::to_value(&entry).unwrap());
        }
        let bytes = serde_json::to_vec(&shard).unwrap().len();
        assert!(bytes < 256 * 1024, "a shard of {per_shard} entries is {bytes} bytes");
        let root: Map<String, Value> = (0..=255u8).map(|s| (shard_name(s), json!(9_999_999u64))).collect();
        let bytes = serde_json::to_vec(&root).unwrap().len();
        // Seven-digit versions (ten million writes to every shard) and Vault's envelope
        // (~400 bytes) still make a steady poll under 4 KB.
        assert!(bytes < 3_400, "the root is {bytes} bytes");
    }
}
