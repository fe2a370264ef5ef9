//! KV v2 calls for keysync's keys: metadata, versioned data, CAS writes, merge-PATCH of
//! custom_metadata, delete / undelete / destroy. Paths are built here and nowhere else.

use super::name::KeyName;
use crate::secret::Secret;
use crate::vault::{Request, Session, VaultError};
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

    /// Where a key lives, as people write it (`secret/keysync/openai`).
    pub fn display_path(&self, name: &KeyName) -> String {
        format!("{}/{}/{name}", self.mount, self.prefix)
    }

    /// Names of all keys under the prefix (sub-folders such as `_acks/` are skipped).
    pub async fn list(&self) -> Result<Vec<KeyName>, VaultError> {
        let req = Request::list(format!("{}/metadata/{}", self.mount, self.prefix), "kv_list");
        let resp = self.session.request_allowing(&req, &[404]).await?;
        if resp.status == 404 {
            return Ok(Vec::new());
        }
        let mut names: Vec<KeyName> = resp
            .body
            .pointer("/data/keys")
            .and_then(Value::as_array)
            .map(|keys| keys.iter().filter_map(Value::as_str).filter_map(|k| KeyName::parse(k).ok()).collect())
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    /// Metadata of a key, `None` when it does not exist.
    pub async fn metadata(&self, name: &KeyName) -> Result<Option<Metadata>, VaultError> {
        let req = Request::get(self.path("metadata", name), "kv_metadata");
        let resp = self.session.request_allowing(&req, &[404]).await?;
        if resp.status == 404 {
            return Ok(None);
        }
        let data = resp.body.get("data").ok_or_else(|| invalid(&req, "metadata answer has no data"))?;
        let num = |k: &str| data.get(k).and_then(Value::as_u64).unwrap_or(0);
        let mut versions = BTreeMap::new();
        if let Some(map) = data.get("versions").and_then(Value::as_object) {
            for (v, meta) in map {
                let Ok(n) = v.parse::<u64>() else { continue };
                versions.insert(
                    n,
                    VersionMeta {
                        created_time: time(meta.get("created_time")),
                        deletion_time: time(meta.get("deletion_time")),
                        destroyed: meta.get("destroyed").and_then(Value::as_bool).unwrap_or(false),
                    },
                );
            }
        }
        let custom = match data.get("custom_metadata") {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect(),
            _ => BTreeMap::new(),
        };
        Ok(Some(Metadata {
            current_version: num("current_version"),
            oldest_version: num("oldest_version"),
            max_versions: num("max_versions"),
            created_time: time(data.get("created_time")),
            updated_time: time(data.get("updated_time")),
            versions,
            custom,
        }))
    }

    /// Reads one version's data.
    pub async fn read(&self, name: &KeyName, version: u64) -> Result<VersionRead, VaultError> {
        let req = Request::get(format!("{}?version={version}", self.path("data", name)), "kv_read");
        let resp = self.session.request_allowing(&req, &[404]).await?;
        let meta = resp.body.pointer("/data/metadata");
        if resp.status == 404 {
            return Ok(match meta {
                Some(m) if m.get("destroyed").and_then(Value::as_bool) == Some(true) => VersionRead::Destroyed,
                Some(m) if time(m.get("deletion_time")).is_some() => VersionRead::Deleted,
                _ => VersionRead::Missing,
            });
        }
        let data = match resp.body.pointer("/data/data") {
            Some(Value::Object(map)) => map.clone(),
            Some(Value::Null) | None => return Ok(VersionRead::Deleted),
            Some(other) => {
                return Err(invalid(
                    &req,
                    &format!("data of {name} v{version} is a {}, not an object", json_type(other)),
                ))
            }
        };
        Ok(VersionRead::Live(parse_key_data(name, version, data)?))
    }

    /// Writes a new version with check-and-set: succeeds only if the latest version is still
    /// `cas` (0 = the key must not exist). Returns the new version number.
    pub async fn write(&self, name: &KeyName, data: &KeyData, cas: u64) -> Result<u64, VaultError> {
        let req = Request::post(
            self.path("data", name),
            "kv_write",
            json!({ "options": { "cas": cas }, "data": data.to_json() }),
        );
        let resp = self.session.request(&req).await?;
        resp.body
            .pointer("/data/version")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid(&req, "write answer has no data.version"))
    }

    /// Merge-PATCHes custom_metadata (`null` deletes a field). Other fields, including other
    /// tools' and concurrent writers', are left alone.
    pub async fn patch_custom_metadata(&self, name: &KeyName, patch: Map<String, Value>) -> Result<(), VaultError> {
        if patch.is_empty() {
            return Ok(());
        }
        let req = Request::patch(self.path("metadata", name), "kv_patch_metadata", json!({ "custom_metadata": patch }));
        match self.session.request(&req).await {
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

    /// Soft-deletes versions (recoverable with [`Self::undelete`]).
    pub async fn delete_versions(&self, name: &KeyName, versions: &[u64]) -> Result<(), VaultError> {
        self.versions_call("delete", "kv_delete", name, versions).await
    }

    pub async fn undelete(&self, name: &KeyName, versions: &[u64]) -> Result<(), VaultError> {
        self.versions_call("undelete", "kv_undelete", name, versions).await
    }

    /// Destroys versions' data for good (their metadata and fingerprints stay).
    pub async fn destroy(&self, name: &KeyName, versions: &[u64]) -> Result<(), VaultError> {
        self.versions_call("destroy", "kv_destroy", name, versions).await
    }

    async fn versions_call(
        &self,
        kind: &str,
        op: &'static str,
        name: &KeyName,
        versions: &[u64],
    ) -> Result<(), VaultError> {
        if versions.is_empty() {
            return Ok(());
        }
        let req = Request::post(self.path(kind, name), op, json!({ "versions": versions }));
        self.session.request(&req).await.map(|_| ())
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
fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn invalid(req: &Request, detail: &str) -> VaultError {
    let (method, path) = req.describe();
    VaultError::InvalidResponse { method, path, detail: detail.into() }
}
