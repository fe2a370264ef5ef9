//! `type = "manual"`: keys are written by people (`keysync put`); keysync distributes them and,
//! with `revoke`, switches retired ones off at the provider. It never mints: a due rotation is
//! reported overdue.

use super::anthropic::AnthropicRevoke;
use super::{BoxFuture, Capabilities, Kind, Provider, ProviderError};
use serde::{Deserialize, Serialize};

/// Settings of `type = "manual"`; the struct exists so unknown fields are refused.
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
    Anthropic(AnthropicRevoke),
}

impl Provider for ManualConfig {
    fn kind(&self) -> &'static str {
        Self::NAME
    }

    /// Never mints; revokes when a `revoke` preset is set.
    fn capabilities(&self) -> Capabilities {
        Capabilities { revokes: self.revoke.is_some(), ..Capabilities::default() }
    }

    fn revoke<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(async move {
            match &self.revoke {
                Some(ManualRevoke::Anthropic(a)) => a.revoke(key_id).await,
                None => Err(ProviderError::RevokeUnsupported(Self::NAME)),
            }
        })
    }
}

impl Kind for ManualConfig {
    const NAME: &'static str = "manual";
    type Config = ManualConfig;

    fn build(config: ManualConfig) -> Result<Self, ProviderError> {
        if let Some(ManualRevoke::Anthropic(a)) = &config.revoke {
            a.check().map_err(ProviderError::Config)?;
        }
        Ok(config)
    }
}
