//! What the sync loop hands the renderer for one key: the current key, its identity, provider
//! fields, and the previous key while it is still in its grace period.

use crate::secret::Secret;
use std::collections::BTreeMap;

/// One key as the renderer sees it. `Debug` is safe to log: [`Secret`] masks itself.
#[derive(Clone, Debug)]
pub struct KeyMaterial {
    /// The key's name in keysync (`openai-prod`).
    pub name: String,
    /// KV v2 version of the current key.
    pub version: u64,
    pub key: Secret,
    /// `sha256:<hex>` of the key, for consumers that want to detect a change without the key.
    pub fingerprint: String,
    /// Non-secret provider fields stored beside the key (`base_url`, `org_id`, ...).
    pub fields: BTreeMap<String, String>,
    /// The key that was current before the last rotation, while apps may still use it.
    pub previous: Option<PreviousKey>,
}

/// The key before the last rotation, kept during the grace period so apps can switch over.
#[derive(Clone, Debug)]
pub struct PreviousKey {
    pub version: u64,
    pub key: Secret,
    pub fingerprint: String,
}

impl KeyMaterial {
    /// A key without fields or previous key; the fingerprint is computed from the key.
    pub fn new(name: impl Into<String>, version: u64, key: Secret) -> Self {
        let fingerprint = key.fingerprint();
        KeyMaterial { name: name.into(), version, key, fingerprint, fields: BTreeMap::new(), previous: None }
    }

    /// Adds a previous key (fingerprint computed), for builders and tests.
    pub fn with_previous(mut self, version: u64, key: Secret) -> Self {
        let fingerprint = key.fingerprint();
        self.previous = Some(PreviousKey { version, key, fingerprint });
        self
    }

    /// Adds a provider field.
    pub fn with_field(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.insert(name.into(), value.into());
        self
    }

    /// Every secret value this key carries, so error messages can be scrubbed of them.
    pub(crate) fn secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.key.expose()).chain(self.previous.as_ref().map(|p| p.key.expose()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_current_or_previous_key() {
        let k = KeyMaterial::new("openai", 3, Secret::new("sk-test-SECRETSECRETSECRET"))
            .with_previous(2, Secret::new("sk-old-SECRETSECRETSECRET"))
            .with_field("base_url", "https://api.openai.com/v1");
        let text = format!("{k:?}");
        assert!(!text.contains("SECRETSECRET"), "{text}");
        assert!(text.contains("base_url"), "{text}");
    }
}
