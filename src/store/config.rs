//! `[kv]`: where the key store lives, and its validation.

use crate::field::{check_path_segment, FieldError};
use serde::{Deserialize, Serialize};

/// `[kv]`: where keys live: `<mount>/data/<prefix>/<NAME>`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    pub mount: String,
    pub prefix: String,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig { mount: "secret".into(), prefix: "keysync".into() }
    }
}

impl KvConfig {
    /// Mount and prefix become URL path segments: plain names only (a prefix may have
    /// several parts). Fields are named relative to `[kv]`.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_path_segment(&self.mount, false).map_err(|m| FieldError::new("mount", m))?;
        check_path_segment(&self.prefix, true).map_err(|m| FieldError::new("prefix", m))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_may_have_parts_but_a_mount_may_not() {
        let ok = KvConfig { mount: "secret".into(), prefix: "keysync/prod".into() };
        assert_eq!(ok.validate(), Ok(()));
        let bad_mount = KvConfig { mount: "a/b".into(), ..ok.clone() };
        assert_eq!(bad_mount.validate().unwrap_err().field.as_deref(), Some("mount"));
        let bad_prefix = KvConfig { prefix: "a/../b".into(), ..ok };
        assert_eq!(bad_prefix.validate().unwrap_err().field.as_deref(), Some("prefix"));
    }
}
