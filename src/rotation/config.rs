//! `[rotation]`: defaults for every key's rotation, and the key plan built from them.

use super::{KeyPlan, RotationPolicy};
use crate::duration::HumanDuration;
use crate::provider::{ProviderConfig, Validation};
use crate::store::KeyName;
use serde::{Deserialize, Serialize};

/// `[rotation]`: defaults for every key's rotation policy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// How long the previous key stays valid (and rendered) after a new one is promoted.
    pub grace: HumanDuration,
    /// A version written by keysync but not yet recorded in the metadata is adopted as
    /// pending once it is this old (its writer crashed); younger, its writer is still at work.
    pub adopt_after: HumanDuration,
    /// Render reports older than this are ignored (the agent is gone); reporting agents
    /// refresh theirs every `ack_ttl` / 2.
    pub ack_ttl: HumanDuration,
    /// How long past grace a previous key may stay unretired because a fresh agent still
    /// holds it; then it is retired anyway (logged, counted, shown by `status`).
    pub max_hold: HumanDuration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            grace: HumanDuration::from_secs(24 * 3600),
            adopt_after: HumanDuration::from_secs(30),
            ack_ttl: HumanDuration::from_secs(600),
            max_hold: HumanDuration::from_secs(12 * 3600),
        }
    }
}

impl RotationConfig {
    /// The plan for rotating `name` with `provider`: the key's own policy (`[keys.NAME.rotation]`,
    /// default when absent) and validation, this section's defaults for what the key leaves
    /// unset. Fails when the provider's settings cannot make a provider.
    pub fn plan(
        &self,
        name: KeyName,
        provider: &ProviderConfig,
        policy: Option<RotationPolicy>,
        validation: Option<Validation>,
    ) -> Result<KeyPlan, String> {
        let policy = policy.unwrap_or_default();
        let grace = policy.grace.map(|g| g.get()).unwrap_or(self.grace.get());
        let max_hold = policy.max_hold.map(|g| g.get()).unwrap_or(self.max_hold.get());
        Ok(KeyPlan {
            name,
            provider: provider.build().map_err(|e| e.to_string())?,
            validation,
            policy,
            grace,
            adopt_after: self.adopt_after.get(),
            ack_ttl: self.ack_ttl.get(),
            max_hold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{GenerateConfig, ProviderConfig};
    use std::time::Duration;

    #[test]
    fn a_key_policy_overrides_the_section_defaults_and_the_rest_comes_from_the_section() {
        let defaults = RotationConfig::default();
        let policy = RotationPolicy { grace: Some(HumanDuration::from_secs(60)), ..Default::default() };
        let plan = defaults
            .plan(
                KeyName::parse("a").unwrap(),
                &ProviderConfig::of::<GenerateConfig>(&GenerateConfig::default()).unwrap(),
                Some(policy),
                None,
            )
            .unwrap();
        assert_eq!(plan.grace, Duration::from_secs(60));
        assert_eq!(plan.max_hold, defaults.max_hold.get());
        assert_eq!(plan.adopt_after, defaults.adopt_after.get());
        assert_eq!(plan.ack_ttl, defaults.ack_ttl.get());
    }
}
