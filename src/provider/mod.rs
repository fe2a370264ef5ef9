//! Where new keys come from and how old ones are revoked: generated locally, minted by an
//! operator-supplied command, or written by hand. Plus [`validate`]: checking a key against the
//! LLM provider's API before it is promoted. No Vault access here; the rotation engine wires
//! these into the create/validate/promote/retire steps.

pub mod anthropic;
pub mod command;
pub mod generate;
pub mod openai;
pub mod validate;

pub use command::{CommandConfig, CommandProvider};
pub use generate::{Charset, GenerateConfig};
pub use openai::OpenAiConfig;
pub use validate::{Preset, Validation, Verdict};

use crate::secret::Secret;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A freshly minted key and what the provider told us about it.
#[derive(Clone, PartialEq)]
pub struct Minted {
    pub api_key: Secret,
    /// The provider's id for the key, needed to revoke it later.
    pub key_id: Option<String>,
    /// When the provider will expire the key; rotation aims for 2/3 of the lifetime.
    pub expires_at: Option<DateTime<Utc>>,
    /// Other string fields the minting command returned (stored next to the key).
    pub fields: BTreeMap<String, String>,
}

// Hand-written so that extra fields (which may hold other credentials) are never printed.
impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("api_key", &self.api_key)
            .field("key_id", &self.key_id)
            .field("expires_at", &self.expires_at)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `[keys.NAME.provider]`, tagged by `type`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Random key made here, for services that accept any key we hand them (proxies, gateways).
    Generate(GenerateConfig),
    /// An operator's script talks to the provider's admin API and prints the new key as JSON.
    Command(CommandConfig),
    /// OpenAI Admin API: one project service account per key version.
    Openai(OpenAiConfig),
    /// Keys are written by people (`keysync put`); keysync only distributes them.
    Manual(ManualConfig),
}

/// `type = "manual"` takes no settings; the struct exists so unknown fields are refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManualConfig {
    /// Revoke retired keys at the provider: `revoke = { anthropic = { admin_key_file = "…" } }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<ManualRevoke>,
}

/// Revocation presets for keys made by hand.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ManualRevoke {
    Anthropic(anthropic::AnthropicRevoke),
}

/// Why minting or revoking failed. Messages never contain a key: command stdout is never
/// quoted, and JSON problems are described by field name and type only.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("this key is managed by hand (provider type \"manual\"): write a new one with `keysync put`")]
    Manual,
    #[error("provider type \"{0}\" cannot revoke keys")]
    RevokeUnsupported(&'static str),
    #[error("invalid provider config: {0}")]
    Config(String),
    /// A provider's API refused the request (an error status, no connection): nothing was
    /// minted (or, for a revocation, revoked).
    #[error("{0}")]
    ApiRefused(String),
    /// A provider's API answered with something unusable, or not in time: it may have minted
    /// a key keysync could not take.
    #[error("{0}")]
    Api(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("could not start {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program:?} failed: {source}")]
    Io { program: String, source: std::io::Error },
    #[error("{program:?} exited with {status}; stderr: {stderr:?}")]
    Exit { program: String, status: String, stderr: String },
    #[error("{program:?} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program:?} printed more than {limit} bytes on stdout; refused")]
    OutputTooLarge { program: String, limit: usize },
    #[error("{program:?} printed invalid output: {reason}")]
    BadOutput { program: String, reason: String },
}

impl ProviderError {
    /// Whether the provider certainly holds no new key after this failure: the request never
    /// went out, or was refused outright. Otherwise (a timeout, an unreadable answer) a key
    /// may exist at the provider, and the rotation intent stays recorded so `status` says so.
    pub fn nothing_minted(&self) -> bool {
        matches!(
            self,
            ProviderError::Manual
                | ProviderError::RevokeUnsupported(_)
                | ProviderError::Config(_)
                | ProviderError::Random(_)
                | ProviderError::Spawn { .. }
                | ProviderError::Exit { .. }
                | ProviderError::ApiRefused(_)
        )
    }
}

/// A configured provider, ready to mint. An enum rather than a trait object: the set of kinds
/// is closed and `match` keeps the async code free of boxing.
#[derive(Clone, Debug)]
pub enum Provider {
    Generate(GenerateConfig),
    Command(CommandProvider),
    Openai(OpenAiConfig),
    Manual(ManualConfig),
}

impl Provider {
    /// Builds the provider after checking settings serde cannot (lengths, empty argv).
    pub fn from_config(config: &ProviderConfig) -> Result<Provider, ProviderError> {
        match config {
            ProviderConfig::Generate(g) => {
                g.check().map_err(ProviderError::Config)?;
                Ok(Provider::Generate(g.clone()))
            }
            ProviderConfig::Command(c) => Ok(Provider::Command(CommandProvider::new(c.clone())?)),
            ProviderConfig::Openai(o) => {
                o.check().map_err(ProviderError::Config)?;
                Ok(Provider::Openai(o.clone()))
            }
            ProviderConfig::Manual(m) => {
                if let Some(ManualRevoke::Anthropic(a)) = &m.revoke {
                    a.check().map_err(ProviderError::Config)?;
                }
                Ok(Provider::Manual(m.clone()))
            }
        }
    }

    /// Creates a new key at the provider (step 1 of a rotation).
    pub async fn mint(&self) -> Result<Minted, ProviderError> {
        match self {
            Provider::Generate(g) => {
                Ok(Minted { api_key: g.generate()?, key_id: None, expires_at: None, fields: BTreeMap::new() })
            }
            Provider::Command(c) => c.mint().await,
            Provider::Openai(o) => o.mint().await,
            Provider::Manual(_) => Err(ProviderError::Manual),
        }
    }

    /// [`Self::mint`] for a named key (providers that label what they create use the name).
    pub async fn mint_for(&self, key: &str) -> Result<Minted, ProviderError> {
        match self {
            Provider::Openai(o) => o.mint_for(key).await,
            other => other.mint().await,
        }
    }

    /// Revokes a retired key at the provider (step 4), by the id returned when it was minted.
    pub async fn revoke(&self, key_id: &str) -> Result<(), ProviderError> {
        match self {
            Provider::Generate(_) => Err(ProviderError::RevokeUnsupported("generate")),
            Provider::Command(c) => c.revoke(key_id).await,
            Provider::Openai(o) => o.revoke(key_id).await,
            Provider::Manual(ManualConfig { revoke: Some(ManualRevoke::Anthropic(a)) }) => a.revoke(key_id).await,
            Provider::Manual(_) => Err(ProviderError::RevokeUnsupported("manual")),
        }
    }

    /// Whether [`Provider::revoke`] can work, so the engine can skip retire-time revocation.
    pub fn can_revoke(&self) -> bool {
        match self {
            Provider::Command(c) => c.can_revoke(),
            Provider::Openai(_) => true,
            Provider::Manual(m) => m.revoke.is_some(),
            Provider::Generate(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_tagged_by_type_and_refuses_unknown_fields() {
        let g: ProviderConfig = toml::from_str("type = \"generate\"\nprefix = \"sk-\"").unwrap();
        assert!(
            matches!(g, ProviderConfig::Generate(GenerateConfig { ref prefix, length: 48, .. }) if prefix == "sk-")
        );
        let c: ProviderConfig = toml::from_str("type = \"command\"\ncommand = [\"mint\"]").unwrap();
        assert!(matches!(c, ProviderConfig::Command(_)));
        let m: ProviderConfig = toml::from_str("type = \"manual\"").unwrap();
        assert_eq!(m, ProviderConfig::Manual(ManualConfig { revoke: None }));
        assert!(toml::from_str::<ProviderConfig>("type = \"manual\"\nfoo = 1").is_err());
        assert!(toml::from_str::<ProviderConfig>("type = \"generate\"\nlenght = 40").is_err());
        assert!(toml::from_str::<ProviderConfig>("type = \"command\"\ncommand = [\"x\"]\nshell = true").is_err());
        assert!(toml::from_str::<ProviderConfig>("type = \"magic\"").is_err());
    }

    #[tokio::test]
    async fn dispatches_by_kind() {
        let generate = Provider::from_config(&ProviderConfig::Generate(GenerateConfig::default())).unwrap();
        let minted = generate.mint().await.unwrap();
        assert_eq!(minted.api_key.expose().len(), 48);
        assert!(!generate.can_revoke());
        assert!(matches!(generate.revoke("x").await, Err(ProviderError::RevokeUnsupported("generate"))));
        assert!(!format!("{minted:?}").contains(minted.api_key.expose()));

        let manual = Provider::from_config(&ProviderConfig::Manual(ManualConfig { revoke: None })).unwrap();
        assert!(matches!(manual.mint().await, Err(ProviderError::Manual)));
        assert!(!manual.can_revoke());

        let bad = GenerateConfig { length: 8, ..Default::default() };
        assert!(matches!(Provider::from_config(&ProviderConfig::Generate(bad)), Err(ProviderError::Config(_))));
    }
}
