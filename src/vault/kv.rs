//! KV version 2 through vaultrs: read, list, metadata, check-and-set write, metadata write,
//! delete / undelete / destroy of versions, and removal of a secret. Each call goes through the
//! [`Session`] (one re-authentication point, the KV mount check) and is named by method, path
//! and metric label for messages. Merge-PATCH, which vaultrs lacks, goes through the session's
//! raw request (`transport.rs` is the one place that sends it).
//!
//! Answers come back in keysync's own types, never vaultrs': the store above speaks in keys,
//! versions and fingerprints and should not care which crate made the call.

use super::client::{with_status, Method, Request};
use super::error::VaultError;
use super::session::Session;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use vaultrs::api::kv2::requests::{
    DeleteSecretMetadataRequest, DeleteSecretVersionsRequest, DestroySecretVersionsRequest, ListSecretsRequest,
    ReadSecretMetadataRequest, ReadSecretRequest, SetSecretMetadataRequest, SetSecretRequest, SetSecretRequestOptions,
    UndeleteSecretVersionsRequest,
};
use vaultrs::api::{exec_with_empty, exec_with_result};

/// One version of a KV secret as Vault answered a read.
#[derive(Debug)]
pub enum KvRead {
    /// The version's data (an object).
    Live { data: Map<String, Value>, version: u64 },
    /// The version exists but its data is gone: soft-deleted, or destroyed for good.
    Deleted { version: u64, destroyed: bool },
    /// No such secret or version.
    Missing,
}

/// A secret's metadata. Times are RFC 3339 text as Vault gives them, `None` when unset.
#[derive(Debug, Clone, Default)]
pub struct KvMetadata {
    pub current_version: u64,
    pub oldest_version: u64,
    pub max_versions: u64,
    pub created_time: Option<String>,
    pub updated_time: Option<String>,
    pub versions: BTreeMap<u64, KvVersionMetadata>,
    pub custom: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct KvVersionMetadata {
    pub created_time: Option<String>,
    pub deletion_time: Option<String>,
    pub destroyed: bool,
}

/// What to do to some versions of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionAction {
    /// Soft-delete (recoverable).
    Delete,
    Undelete,
    /// Destroy the data for good (the metadata stays).
    Destroy,
}

/// Vault gives an unset time as `""` (and older servers as the zero time).
fn time(text: String) -> Option<String> {
    (!text.is_empty() && !text.starts_with("0001-01-01")).then_some(text)
}

fn api_path(mount: &str, kind: &str, path: &str) -> String {
    format!("{mount}/{kind}/{path}")
}

impl Session {
    /// Reads one version (`None`: the latest).
    pub async fn kv_read(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
        op: &'static str,
    ) -> Result<KvRead, VaultError> {
        let mut described = api_path(mount, "data", path);
        if let Some(v) = version {
            described.push_str(&format!("?version={v}"));
        }
        let req = Request::get(described, op);
        let answer = self
            .call_allowing(&req, &[404], |a| {
                let endpoint = ReadSecretRequest { mount: mount.into(), path: path.into(), version };
                with_status(200, async move { exec_with_result(&a, endpoint).await })
            })
            .await?;
        let secret = match answer {
            Ok(secret) => secret,
            // A deleted or destroyed version answers 404 with its metadata.
            Err(resp) => {
                let meta = resp.body.pointer("/data/metadata");
                let version = meta.and_then(|m| m.get("version")).and_then(Value::as_u64).unwrap_or(0);
                let destroyed = meta.and_then(|m| m.get("destroyed")).and_then(Value::as_bool) == Some(true);
                let deleted = meta
                    .and_then(|m| m.get("deletion_time"))
                    .and_then(Value::as_str)
                    .is_some_and(|t| time(t.to_string()).is_some());
                return Ok(if destroyed || deleted { KvRead::Deleted { version, destroyed } } else { KvRead::Missing });
            }
        };
        let version = secret.metadata.version;
        match secret.data {
            Value::Object(data) => Ok(KvRead::Live { data, version }),
            Value::Null => Ok(KvRead::Deleted { version, destroyed: secret.metadata.destroyed }),
            other => Err(VaultError::InvalidResponse {
                method: "GET".into(),
                path: req.path,
                detail: format!("data of v{version} is {}, not an object", kind_of(&other)),
            }),
        }
    }

    /// The names directly under `path` (folders end in `/`); empty when there is none.
    pub async fn kv_list(&self, mount: &str, path: &str, op: &'static str) -> Result<Vec<String>, VaultError> {
        let req = Request::list(api_path(mount, "metadata", path), op);
        let answer = self
            .call_allowing(&req, &[404], |a| {
                let endpoint = ListSecretsRequest { mount: mount.into(), path: path.into() };
                with_status(200, async move { exec_with_result(&a, endpoint).await })
            })
            .await?;
        Ok(answer.map(|list| list.keys).unwrap_or_default())
    }

    /// A secret's metadata, `None` when it does not exist.
    pub async fn kv_metadata(
        &self,
        mount: &str,
        path: &str,
        op: &'static str,
    ) -> Result<Option<KvMetadata>, VaultError> {
        let req = Request::get(api_path(mount, "metadata", path), op);
        let answer = self
            .call_allowing(&req, &[404], |a| {
                let endpoint = ReadSecretMetadataRequest { mount: mount.into(), path: path.into() };
                with_status(200, async move { exec_with_result(&a, endpoint).await })
            })
            .await?;
        let Ok(m) = answer else { return Ok(None) };
        let versions = m
            .versions
            .into_iter()
            .filter_map(|(v, meta)| {
                let n = v.parse::<u64>().ok()?;
                Some((
                    n,
                    KvVersionMetadata {
                        created_time: time(meta.created_time),
                        deletion_time: time(meta.deletion_time),
                        destroyed: meta.destroyed,
                    },
                ))
            })
            .collect();
        Ok(Some(KvMetadata {
            current_version: m.current_version,
            oldest_version: m.oldest_version,
            max_versions: m.max_versions,
            created_time: time(m.created_time),
            updated_time: time(m.updated_time),
            versions,
            custom: m.custom_metadata.unwrap_or_default().into_iter().collect(),
        }))
    }

    /// Writes a new version; with `cas`, only if the latest version is still `cas` (0: the
    /// secret must not exist), else [`VaultError::CasConflict`]. Returns the version written.
    pub async fn kv_write(
        &self,
        mount: &str,
        path: &str,
        data: &Value,
        cas: Option<u64>,
        op: &'static str,
    ) -> Result<u64, VaultError> {
        let req = Request::new(Method::Post, api_path(mount, "data", path), op);
        let options = match cas {
            Some(c) => Some(SetSecretRequestOptions {
                cas: u32::try_from(c).map_err(|_| VaultError::InvalidResponse {
                    method: "POST".into(),
                    path: req.path.clone(),
                    detail: format!("version {c} is beyond what a check-and-set write can name"),
                })?,
            }),
            None => None,
        };
        let written = self
            .call_allowing(&req, &[], |a| {
                let endpoint = SetSecretRequest {
                    mount: mount.into(),
                    path: path.into(),
                    data: data.clone(),
                    options: options.clone(),
                };
                with_status(200, async move { exec_with_result(&a, endpoint).await })
            })
            .await?;
        written.map(|meta| meta.version).map_err(|resp| super::client::answer_error(&req, resp))
    }

    /// Sets metadata fields with POST: `max_versions` when given, and `custom_metadata`, which
    /// POST replaces whole (use [`Self::kv_patch_metadata`] to change some fields).
    pub async fn kv_set_metadata(
        &self,
        mount: &str,
        path: &str,
        max_versions: Option<u64>,
        custom: Option<BTreeMap<String, String>>,
        op: &'static str,
    ) -> Result<(), VaultError> {
        let req = Request::new(Method::Post, api_path(mount, "metadata", path), op);
        let custom: Option<HashMap<String, String>> = custom.map(|c| c.into_iter().collect());
        self.call_allowing(&req, &[], |a| {
            let endpoint = SetSecretMetadataRequest {
                mount: mount.into(),
                path: path.into(),
                max_versions,
                custom_metadata: custom.clone(),
                ..Default::default()
            };
            with_status(204, async move { exec_with_empty(&a, endpoint).await })
        })
        .await?
        .map_err(|resp| super::client::answer_error(&req, resp))
    }

    /// Soft-deletes, undeletes or destroys `versions` (nothing when empty).
    pub async fn kv_versions(
        &self,
        action: VersionAction,
        mount: &str,
        path: &str,
        versions: &[u64],
        op: &'static str,
    ) -> Result<(), VaultError> {
        if versions.is_empty() {
            return Ok(());
        }
        let kind = match action {
            VersionAction::Delete => "delete",
            VersionAction::Undelete => "undelete",
            VersionAction::Destroy => "destroy",
        };
        let req = Request::new(Method::Post, api_path(mount, kind, path), op);
        self.call_allowing(&req, &[], |a| {
            let (mount, path, versions) = (mount.to_string(), path.to_string(), versions.to_vec());
            with_status(204, async move {
                match action {
                    VersionAction::Delete => {
                        exec_with_empty(&a, DeleteSecretVersionsRequest { mount, path, versions }).await
                    }
                    VersionAction::Undelete => {
                        exec_with_empty(&a, UndeleteSecretVersionsRequest { mount, path, versions }).await
                    }
                    VersionAction::Destroy => {
                        exec_with_empty(&a, DestroySecretVersionsRequest { mount, path, versions }).await
                    }
                }
            })
        })
        .await?
        .map_err(|resp| super::client::answer_error(&req, resp))
    }

    /// Removes a secret: every version and its metadata.
    pub async fn kv_delete_all(&self, mount: &str, path: &str, op: &'static str) -> Result<(), VaultError> {
        let req = Request::delete(api_path(mount, "metadata", path), op);
        self.call_allowing(&req, &[], |a| {
            let endpoint = DeleteSecretMetadataRequest { mount: mount.into(), path: path.into() };
            with_status(204, async move { exec_with_empty(&a, endpoint).await })
        })
        .await?
        .map_err(|resp| super::client::answer_error(&req, resp))
    }

    /// Merge-PATCHes a secret's latest data (`null` removes a field). Returns the version
    /// written, `None` when the secret does not exist (PATCH never creates).
    pub async fn kv_patch_data(
        &self,
        mount: &str,
        path: &str,
        data: Value,
        op: &'static str,
    ) -> Result<Option<u64>, VaultError> {
        let req = Request::patch(api_path(mount, "data", path), op, serde_json::json!({ "data": data }));
        let resp = self.request_allowing(&req, &[404]).await?;
        if resp.status == 404 {
            return Ok(None);
        }
        Ok(Some(resp.body.pointer("/data/version").and_then(Value::as_u64).unwrap_or(0)))
    }

    /// Merge-PATCHes a secret's custom_metadata (`null` removes a field); other fields,
    /// including other tools' and concurrent writers', are left alone.
    pub async fn kv_patch_metadata(
        &self,
        mount: &str,
        path: &str,
        custom: Map<String, Value>,
        op: &'static str,
    ) -> Result<(), VaultError> {
        let req =
            Request::patch(api_path(mount, "metadata", path), op, serde_json::json!({ "custom_metadata": custom }));
        self.request(&req).await.map(|_| ())
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::time;

    #[test]
    fn unset_times_are_none() {
        assert_eq!(time(String::new()), None);
        assert_eq!(time("0001-01-01T00:00:00Z".into()), None);
        assert_eq!(time("2026-01-02T03:04:05Z".into()).as_deref(), Some("2026-01-02T03:04:05Z"));
    }
}
