//! KV v2 calls for keysync's keys: metadata, versioned data, CAS writes, merge-PATCH of
//! custom_metadata, delete / undelete / destroy. Paths are built here and nowhere else.

use super::name::KeyName;
use crate::secret::Secret;
use crate::vault::{KvRead, Session, VaultError, VersionAction};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// KV v2 metadata of one key.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub current_version: u64,
    pub oldest_version: u64,
    pub max_versions: u64,
    pub created_time: Option<DateTime<Utc>>,
    pub updated_time: Option<DateTime<Utc>>,
    pub versions: BTreeMap<u64, VersionMeta>,
    pub custom: BTreeMap<String, String>,
}

/// What KV v2 says about one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionMeta {
    pub created_time: Option<DateTime<Utc>>,
    /// Set when soft-deleted (recoverable with undelete).
    pub deletion_time: Option<DateTime<Utc>>,
    pub destroyed: bool,
}

impl VersionMeta {
    pub fn is_live(&self) -> bool {
        self.deletion_time.is_none() && !self.destroyed
    }
}

/// A key version's data: `api_key` plus provider fields, kept as written (unknown fields too).
#[derive(Clone, Debug)]
pub struct KeyData {
    pub api_key: Secret,
    pub fields: Map<String, Value>,
}

impl KeyData {
    pub fn new(api_key: Secret) -> Self {
        KeyData { api_key, fields: Map::new() }
    }

    fn to_json(&self) -> Value {
        let mut data = self.fields.clone();
        data.insert("api_key".into(), Value::String(self.api_key.expose().to_string()));
        Value::Object(data)
    }

    /// Provider fields as strings (non-strings as their JSON text), for rendering.
    pub fn string_fields(&self) -> BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect()
    }
}

/// The result of reading one version.
#[derive(Clone, Debug)]
pub enum VersionRead {
    Live(KeyData),
    Deleted,
    Destroyed,
    /// Never written, or pruned by max_versions.
    Missing,
}

/// KV v2 access bound to a mount and prefix.
#[derive(Clone, Debug)]
pub struct Kv {
    session: Arc<Session>,
    mount: String,
    prefix: String,
    /// What this process learned about the change index's layout (shared by clones).
    index_state: Arc<super::index::WriterState>,
}

impl Kv {
    pub fn new(session: Arc<Session>, mount: &str, prefix: &str) -> Self {
        Kv {
            session,
            mount: mount.trim_matches('/').into(),
            prefix: prefix.trim_matches('/').into(),
            index_state: Arc::default(),
        }
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Render acknowledgements under the same mount and prefix.
    pub fn acks(&self) -> super::Acks {
        super::Acks::new(self.session.clone(), &self.mount, &self.prefix)
    }

    /// The change index under the same mount and prefix.
    pub fn index(&self) -> super::Index {
        super::Index::with_state(self.session.clone(), &self.mount, &self.prefix, self.index_state.clone())
    }

    /// `<mount>/<kind>/<prefix>/<name>`: the path of a key under one KV v2 endpoint.
    pub fn path(&self, kind: &str, name: &KeyName) -> String {
        format!("{}/{kind}/{}/{name}", self.mount, self.prefix)
    }

    /// `<prefix>/<name>`: a key's path inside the mount.
    fn key_path(&self, name: &KeyName) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// Where a key lives, as people write it (`secret/keysync/openai`).
    pub fn display_path(&self, name: &KeyName) -> String {
        format!("{}/{}/{name}", self.mount, self.prefix)
    }

    /// Names of all keys under the prefix (sub-folders such as `_acks/` are skipped).
    pub async fn list(&self) -> Result<Vec<KeyName>, VaultError> {
        let keys = self.session.kv_list(&self.mount, &self.prefix, "kv_list").await?;
        let mut names: Vec<KeyName> = keys.iter().filter_map(|k| KeyName::parse(k).ok()).collect();
        names.sort();
        Ok(names)
    }

    /// Metadata of a key, `None` when it does not exist.
    pub async fn metadata(&self, name: &KeyName) -> Result<Option<Metadata>, VaultError> {
        let Some(m) = self.session.kv_metadata(&self.mount, &self.key_path(name), "kv_metadata").await? else {
            return Ok(None);
        };
        let versions = m
            .versions
            .into_iter()
            .map(|(n, v)| {
                let meta = VersionMeta {
                    created_time: time_text(v.created_time.as_deref()),
                    deletion_time: time_text(v.deletion_time.as_deref()),
                    destroyed: v.destroyed,
                };
                (n, meta)
            })
            .collect();
        Ok(Some(Metadata {
            current_version: m.current_version,
            oldest_version: m.oldest_version,
            max_versions: m.max_versions,
            created_time: time_text(m.created_time.as_deref()),
            updated_time: time_text(m.updated_time.as_deref()),
            versions,
            custom: m.custom,
        }))
    }

    /// Reads one version's data.
    pub async fn read(&self, name: &KeyName, version: u64) -> Result<VersionRead, VaultError> {
        let read = self.session.kv_read(&self.mount, &self.key_path(name), Some(version), "kv_read").await?;
        let data = match read {
            KvRead::Live { data, .. } => data,
            KvRead::Deleted { destroyed: true, .. } => return Ok(VersionRead::Destroyed),
            KvRead::Deleted { .. } => return Ok(VersionRead::Deleted),
            KvRead::Missing => return Ok(VersionRead::Missing),
        };
        Ok(VersionRead::Live(parse_key_data(name, version, data)?))
    }

    /// Writes a new version with check-and-set: succeeds only if the latest version is still
    /// `cas` (0 = the key must not exist). Returns the new version number.
    pub async fn write(&self, name: &KeyName, data: &KeyData, cas: u64) -> Result<u64, VaultError> {
        self.session.kv_write(&self.mount, &self.key_path(name), &data.to_json(), Some(cas), "kv_write").await
    }

    /// Merge-PATCHes custom_metadata (`null` deletes a field). Other fields, including other
    /// tools' and concurrent writers', are left alone.
    pub async fn patch_custom_metadata(&self, name: &KeyName, patch: Map<String, Value>) -> Result<(), VaultError> {
        if patch.is_empty() {
            return Ok(());
        }
        match self.session.kv_patch_metadata(&self.mount, &self.key_path(name), patch, "kv_patch_metadata").await {
            Ok(_) => Ok(()),
            Err(VaultError::Api { status: 405 | 415, method, path, message }) => Err(VaultError::Api {
                status: 405,
                method,
                path,
                message: format!("{message} (metadata PATCH needs Vault 1.9+ or OpenBao)"),
            }),
            Err(VaultError::Api { status: 400, message, method, path }) if message.contains("custom_metadata") => {
                Err(VaultError::Api {
                    status: 400,
                    method,
                    path,
                    message: format!(
                        "{message} (Vault allows 64 custom_metadata fields of ≤512 printable bytes; remove other tools' fields from this key)"
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a key's metadata (no version yet) with these custom_metadata fields. POST
    /// replaces custom_metadata whole: only for a key that does not exist (see
    /// [`super::KeyStore::record_intent`]).
    pub async fn create_metadata(&self, name: &KeyName, custom: Map<String, Value>) -> Result<(), VaultError> {
        let custom: BTreeMap<String, String> = custom
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
            .collect();
        self.session.kv_set_metadata(&self.mount, &self.key_path(name), None, Some(custom), "kv_create_metadata").await
    }

    /// `<prefix>/_promotions/<name>`: which promotion of a key was last counted.
    fn promotion_path(&self, name: &KeyName) -> String {
        format!("{}/_promotions/{name}", self.prefix)
    }

    /// The promotion record of a key: its KV version (0: none yet, the `cas` for the next
    /// write) and the (version, fingerprint) it counted.
    pub async fn promotion_record(&self, name: &KeyName) -> Result<(u64, Option<(u64, String)>), VaultError> {
        let (at, data) =
            match self.session.kv_read(&self.mount, &self.promotion_path(name), None, "kv_read_promotion").await? {
                KvRead::Live { data, version } => (version, data),
                KvRead::Deleted { version, .. } => return Ok((version, None)),
                KvRead::Missing => return Ok((0, None)),
            };
        let version = data.get("version").and_then(Value::as_u64);
        let fp = data.get("fingerprint").and_then(Value::as_str).map(str::to_string);
        Ok((at, version.zip(fp)))
    }

    /// Writes the promotion record with check-and-set on `cas` (see
    /// [`super::KeyStore::claim_promotion`]). Only the latest version matters; KV prunes the rest.
    pub async fn write_promotion_record(
        &self,
        name: &KeyName,
        cas: u64,
        version: u64,
        fingerprint: &str,
        by: &str,
    ) -> Result<(), VaultError> {
        let data = json!({ "version": version, "fingerprint": fingerprint, "by": by });
        self.session
            .kv_write(&self.mount, &self.promotion_path(name), &data, Some(cas), "kv_write_promotion")
            .await
            .map(|_| ())
    }

    /// Soft-deletes versions (recoverable with [`Self::undelete`]).
    pub async fn delete_versions(&self, name: &KeyName, versions: &[u64]) -> Result<(), VaultError> {
        self.versions_call(VersionAction::Delete, "kv_delete", name, versions).await
    }

    pub async fn undelete(&self, name: &KeyName, versions: &[u64]) -> Result<(), VaultError> {
        self.versions_call(VersionAction::Undelete, "kv_undelete", name, versions).await
    }

    /// Destroys versions' data for good (their metadata and fingerprints stay).
    pub async fn destroy(&self, name: &KeyName, versions: &[u64]) -> Result<(), VaultError> {
        self.versions_call(VersionAction::Destroy, "kv_destroy", name, versions).await
    }

    async fn versions_call(
        &self,
        action: VersionAction,
        op: &'static str,
        name: &KeyName,
        versions: &[u64],
    ) -> Result<(), VaultError> {
        self.session.kv_versions(action, &self.mount, &self.key_path(name), versions, op).await
    }
}

/// Checks a version's data: `api_key` must be a non-empty string.
fn parse_key_data(name: &KeyName, version: u64, mut data: Map<String, Value>) -> Result<KeyData, VaultError> {
    let problem = match data.remove("api_key") {
        Some(Value::String(s)) if !s.is_empty() => return Ok(KeyData { api_key: Secret::new(s), fields: data }),
        Some(Value::String(_)) => "an empty api_key".to_string(),
        Some(other) => format!("an api_key that is a {}, not a string", json_type(&other)),
        None => "no api_key field".to_string(),
    };
    Err(VaultError::InvalidResponse {
        method: "GET".into(),
        path: format!("{name} v{version}"),
        detail: format!(
            "version {version} of key {name} has {problem}; write a proper version with `keysync put {name}`"
        ),
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// KV's times: RFC 3339, with `""` meaning unset.
fn time_text(v: Option<&str>) -> Option<DateTime<Utc>> {
    v.filter(|s| !s.is_empty()).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}
