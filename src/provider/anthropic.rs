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

    /// Sets the key inactive. Already inactive or gone (404) counts as done.
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
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {e}")))?;
        let url = format!("{}/v1/organizations/api_keys/{key_id}", self.base_url.trim_end_matches('/'));
        let resp = client
            .post(url)
            .header("x-api-key", admin.expose())
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(r#"{"status":"inactive"}"#)
            .send()
            .await
            .map_err(|e| ProviderError::Config(format!("Anthropic Admin API: {}", e.without_url())))?;
        let status = resp.status();
        if status.is_success() || status.as_u16() == 404 {
            Ok(())
        } else {
            Err(ProviderError::Config(format!("Anthropic Admin API refused to deactivate {key_id}: HTTP {status}")))
        }
    }
}
