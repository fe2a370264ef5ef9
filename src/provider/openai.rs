//! OpenAI Admin API provider: each key is a project service account.
//! Mint = `POST /v1/organization/projects/{project_id}/service_accounts` (answer carries
//! `api_key.value`, `api_key.id` and the service account `id`); revoke = `DELETE
//! /v1/organization/projects/{project_id}/service_accounts/{id}`. The admin key is read from a
//! file at each call (never from the config text) and never logged.

use super::{Minted, ProviderError};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[keys.NAME.provider] type = "openai"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    pub project_id: String,
    /// File holding the organization admin key (`sk-admin-…`).
    pub admin_key_file: PathBuf,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Service accounts are named `<name_prefix>-<unix time>`.
    #[serde(default = "default_name_prefix")]
    pub name_prefix: String,
    #[serde(default = "default_timeout")]
    pub timeout: crate::config::HumanDuration,
}

fn default_base_url() -> String {
    "https://api.openai.com".into()
}
fn default_name_prefix() -> String {
    "keysync".into()
}
fn default_timeout() -> crate::config::HumanDuration {
    crate::config::HumanDuration::from_secs(30)
}

impl OpenAiConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.project_id.trim().is_empty() || self.project_id.contains('/') {
            return Err(format!("project_id {:?} must be an OpenAI project id like proj_abc123", self.project_id));
        }
        crate::vault::parse_address(&self.base_url).map_err(|m| format!("base_url: {m}"))?;
        Ok(())
    }

    fn admin_key(&self) -> Result<Secret, ProviderError> {
        let text = std::fs::read_to_string(&self.admin_key_file).map_err(|e| {
            ProviderError::Config(format!(
                "cannot read the OpenAI admin key from {} ({e})",
                self.admin_key_file.display()
            ))
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(ProviderError::Config(format!(
                "{} is empty; it must hold the admin key",
                self.admin_key_file.display()
            )));
        }
        Ok(Secret::credential(key))
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}/v1/organization/projects/{}/service_accounts{tail}",
            self.base_url.trim_end_matches('/'),
            self.project_id
        )
    }

    fn client(&self) -> Result<reqwest::Client, ProviderError> {
        reqwest::Client::builder()
            .timeout(self.timeout.get().max(Duration::from_secs(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {e}")))
    }

    /// Service accounts keysync creates for `key` are named `<name_prefix>-<key>-<unix time>`,
    /// which is how [`Self::reconcile`] finds the ones a crash left behind.
    fn account_prefix(&self, key: &str) -> String {
        format!("{}-{key}-", self.name_prefix)
    }

    pub async fn mint(&self) -> Result<Minted, ProviderError> {
        self.mint_for("key").await
    }

    pub async fn mint_for(&self, key: &str) -> Result<Minted, ProviderError> {
        let admin = self.admin_key()?;
        let name = format!("{}{}", self.account_prefix(key), chrono::Utc::now().timestamp());
        let resp = self
            .client()?
            .post(self.url(""))
            .bearer_auth(admin.expose())
            .json(&json!({ "name": name }))
            .send()
            .await
            .map_err(|e| {
                let refused = e.is_connect() || e.is_builder();
                let message = format!(
                    "OpenAI Admin API: could not create a service account: {}",
                    send_error(e, self.timeout.get())
                );
                if refused {
                    ProviderError::ApiRefused(message)
                } else {
                    ProviderError::Api(message)
                }
            })?;
        let status = resp.status();
        let bytes = read_capped(resp, "create a service account").await?;
        if !status.is_success() {
            return Err(ProviderError::ApiRefused(format!(
                "OpenAI Admin API: could not create a service account: HTTP {status}: {}",
                error_message(&bytes)
            )));
        }
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|_| api_error("create a service account", "the answer is not JSON"))?;
        let account = body.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let value = body.pointer("/api_key/value").and_then(Value::as_str).filter(|s| !s.is_empty());
        let (Some(account), Some(value)) = (account, value) else {
            return Err(api_error("create a service account", "the answer lacks id or api_key.value"));
        };
        if value.chars().any(char::is_whitespace) {
            return Err(api_error("create a service account", "api_key.value contains whitespace"));
        }
        let mut fields = BTreeMap::new();
        fields.insert("project_id".into(), self.project_id.clone());
        if let Some(id) = body.pointer("/api_key/id").and_then(Value::as_str) {
            fields.insert("api_key_id".into(), id.to_string());
        }
        Ok(Minted { api_key: Secret::new(value), key_id: Some(account.to_string()), expires_at: None, fields })
    }

    /// Deletes service accounts keysync created for `key` that no stored version refers to
    /// and that are older than `older_than`: keys minted by an agent that crashed before it
    /// could store them. Returns the ids deleted.
    pub async fn reconcile(
        &self,
        key: &str,
        referenced: &std::collections::BTreeSet<String>,
        older_than: Duration,
    ) -> Result<Vec<String>, ProviderError> {
        let admin = self.admin_key()?;
        let resp = self
            .client()?
            .get(self.url("?limit=100"))
            .bearer_auth(admin.expose())
            .send()
            .await
            .map_err(|e| api_error("list service accounts", &send_error(e, self.timeout.get())))?;
        let status = resp.status();
        let bytes = read_capped(resp, "list service accounts").await?;
        if !status.is_success() {
            return Err(api_error("list service accounts", &format!("HTTP {status}: {}", error_message(&bytes))));
        }
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|_| api_error("list service accounts", "the answer is not JSON"))?;
        let prefix = self.account_prefix(key);
        let cutoff = chrono::Utc::now().timestamp() - older_than.as_secs() as i64;
        let mut deleted = Vec::new();
        for account in body.get("data").and_then(Value::as_array).into_iter().flatten() {
            let (Some(id), Some(name)) =
                (account.get("id").and_then(Value::as_str), account.get("name").and_then(Value::as_str))
            else {
                continue;
            };
            let created = account.get("created_at").and_then(Value::as_i64).unwrap_or(i64::MAX);
            if name.starts_with(&prefix) && !referenced.contains(id) && created <= cutoff {
                self.revoke(id).await?;
                deleted.push(id.to_string());
            }
        }
        Ok(deleted)
    }

    /// Deletes the service account (and so its key). Already gone (404) counts as done.
    pub async fn revoke(&self, account_id: &str) -> Result<(), ProviderError> {
        if account_id.is_empty() || account_id.contains('/') {
            return Err(ProviderError::Config(format!("{account_id:?} is not a service account id")));
        }
        let admin = self.admin_key()?;
        let resp = self
            .client()?
            .delete(self.url(&format!("/{account_id}")))
            .bearer_auth(admin.expose())
            .send()
            .await
            .map_err(|e| api_error("delete the service account", &send_error(e, self.timeout.get())))?;
        let status = resp.status();
        if status.is_success() || status.as_u16() == 404 {
            return Ok(());
        }
        let bytes = read_capped(resp, "delete the service account").await.unwrap_or_default();
        Err(api_error("delete the service account", &format!("HTTP {status}: {}", error_message(&bytes))))
    }
}

/// The most of an Admin API answer keysync reads: real answers are a few KiB (a page of 100
/// service accounts); anything bigger is refused rather than buffered, so a broken or hostile
/// endpoint cannot make the agent hold gigabytes.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// Reads the body chunk by chunk, refusing more than [`MAX_ANSWER`] bytes.
async fn read_capped(mut resp: reqwest::Response, what: &str) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        let why = if e.is_timeout() {
            "the answer did not arrive in time (timed out)".into()
        } else {
            e.without_url().to_string()
        };
        api_error(what, &why)
    })? {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(api_error(
                what,
                &format!(
                    "the answer is larger than {MAX_ANSWER} bytes; refused (check base_url points at the Admin API)"
                ),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn api_error(what: &str, detail: &str) -> ProviderError {
    ProviderError::Api(format!("OpenAI Admin API: could not {what}: {detail}"))
}

/// A failed request, said without the URL (it is in the config) but with the reason.
fn send_error(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!(
            "no answer within {} (timed out); retry later or raise the provider's timeout",
            humantime::format_duration(timeout)
        );
    }
    if e.is_connect() {
        return "cannot connect; check base_url and the network".into();
    }
    e.without_url().to_string()
}

/// OpenAI's `{"error": {"message": …}}`, cut short; never the whole body.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(|m| m.chars().take(200).collect()))
        .unwrap_or_else(|| "no error message".into())
}
