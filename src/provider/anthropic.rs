//! Revocation for keys people create by hand at Anthropic: the Admin API cannot mint keys,
//! but it can switch one off — `POST /v1/organizations/api_keys/{id}` with
//! `{"status": "inactive"}`, authenticated with an admin key (`x-api-key`).

use super::http::{self, Call};
use super::ProviderError;
use crate::secret::Secret;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
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

    /// Sets the key inactive (safe to repeat: busy answers are asked again after
    /// `Retry-After`). Already inactive or gone (404) counts as done. A refusal (an error
    /// status) or no answer is a provider error naming the endpoint, the status and Anthropic's
    /// error type, not a config error: the config may be fine and the API busy.
    pub async fn revoke(&self, key_id: &str) -> Result<(), ProviderError> {
        if key_id.is_empty() || key_id.contains(['/', '?', '#']) {
            return Err(ProviderError::BadKeyId { what: "Anthropic API key", key_id: key_id.to_string() });
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
        let url = format!("{}/v1/organizations/api_keys/{key_id}", self.base_url.trim_end_matches('/'));
        let what = format!("deactivate {key_id}");
        let call = Call::new("Anthropic Admin API", &what, Method::POST, url, TIMEOUT)
            .header(HeaderName::from_static("anthropic-version"), HeaderValue::from_static("2023-06-01"))
            .json(&serde_json::json!({ "status": "inactive" }));
        let call = match call.secret_header(HeaderName::from_static("x-api-key"), "", admin.expose()) {
            Ok(c) => c,
            Err(f) => {
                return Err(ProviderError::Config(format!("{}: {}", self.admin_key_file.display(), f.describe())))
            }
        };
        let answer = http::send_idempotent(&call).await.map_err(|f| call.failed(f))?;
        if answer.status.is_success() || answer.status.as_u16() == 404 {
            return Ok(());
        }
        Err(call.status_error(&answer, &error_type(&answer.body)))
    }
}

/// Per request; the Admin API answers in well under a second.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Anthropic's documented error shape `{"type": "error", "error": {"type": "…", "message":
/// "…"}}` (docs.claude.com/en/api/errors): the type, e.g. `authentication_error`; never the
/// message.
fn error_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.pointer("/error/type").and_then(|t| t.as_str()).map(str::to_string))
        .filter(|t| t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or_default()
}
