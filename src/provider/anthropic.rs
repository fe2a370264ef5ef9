//! Revocation for keys people create by hand at Anthropic: the Admin API cannot mint keys,
//! but it can switch one off — `POST /v1/organizations/api_keys/{id}` with
//! `{"status": "inactive"}`, authenticated with an admin key (`x-api-key`).

use super::ProviderError;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[keys.NAME.provider] type = "manual"` with `revoke = "anthropic"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnthropicRevoke {
    /// File holding the Anthropic admin key (`sk-ant-admin…`); never in the config text.
    pub admin_key_file: PathBuf,
    #[serde(default = "default_base_url")]
    pub base_url: String,
}

fn default_base_url() -> String {
    "https://api.anthropic.com".into()
}

impl AnthropicRevoke {
    pub fn check(&self) -> Result<(), String> {
        crate::vault::parse_address(&self.base_url).map(|_| ()).map_err(|m| format!("base_url: {m}"))
    }

    /// Sets the key inactive. Already inactive or gone (404) counts as done. A refusal (an
    /// error status) or no answer is a provider error naming the status and Anthropic's error
    /// type, not a config error: the config may be fine and the API busy.
    pub async fn revoke(&self, key_id: &str) -> Result<(), ProviderError> {
        if key_id.is_empty() || key_id.contains('/') {
            return Err(ProviderError::Config(format!("{key_id:?} is not an Anthropic API key id")));
        }
        let text = std::fs::read_to_string(&self.admin_key_file).map_err(|e| {
            ProviderError::Config(format!(
                "cannot read the Anthropic admin key from {} ({e})",
                self.admin_key_file.display()
            ))
        })?;
        let admin = Secret::credential(text.trim());
        if admin.expose().is_empty() {
            return Err(ProviderError::Config(format!(
                "{} is empty; it must hold the Anthropic admin key",
                self.admin_key_file.display()
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {e}")))?;
        let url = format!("{}/v1/organizations/api_keys/{key_id}", self.base_url.trim_end_matches('/'));
        let what = format!("Anthropic Admin API: could not deactivate {key_id}");
        let resp = client
            .post(url)
            .header("x-api-key", admin.expose())
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(r#"{"status":"inactive"}"#)
            .send()
            .await
            .map_err(|e| {
                let refused = e.is_connect();
                let why = if e.is_timeout() {
                    format!("no answer within {} (timed out)", humantime::format_duration(TIMEOUT))
                } else if e.is_connect() {
                    "cannot connect; check base_url and the network".into()
                } else {
                    e.without_url().to_string()
                };
                let message = format!("{what}: {why}");
                if refused {
                    ProviderError::ApiRefused(message)
                } else {
                    ProviderError::Api(message)
                }
            })?;
        let status = resp.status();
        if status.is_success() || status.as_u16() == 404 {
            return Ok(());
        }
        // Error bodies are a few hundred bytes; read no more than 16 KiB of one.
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            if bytes.len() + chunk.len() > 16 * 1024 {
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        Err(ProviderError::ApiRefused(format!("{what}: HTTP {status}{}", error_type(&bytes))))
    }
}

/// Per request; the Admin API answers in well under a second.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Anthropic's documented error shape `{"type": "error", "error": {"type": "…", "message":
/// "…"}}` (docs.claude.com/en/api/errors): the type, e.g. ` (authentication_error)`; never
/// the message.
fn error_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.pointer("/error/type").and_then(|t| t.as_str()).map(str::to_string))
        .filter(|t| t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|t| format!(" ({t})"))
        .unwrap_or_default()
}
