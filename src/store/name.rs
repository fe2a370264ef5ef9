//! Key names: the last segment of `<mount>/data/<prefix>/<NAME>`.

use std::fmt;

/// A validated key name: `[a-z0-9][a-z0-9._-]{0,63}`, no `..`. Safe to put in a URL path and a
/// metric label as is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(text: &str) -> Result<Self, String> {
        let fix = "use 1-64 characters: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit (e.g. openai-prod)";
        let valid_first = text.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let valid_rest =
            text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
        if text.is_empty() || text.len() > 64 || !valid_first || !valid_rest || text.contains("..") {
            return Err(format!("invalid key name {text:?}: {fix}"));
        }
        Ok(KeyName(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for KeyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::KeyName;
    use proptest::prelude::*;

    #[test]
    fn accepts_usual_names() {
        for ok in ["openai", "openai-prod", "deepseek.v3", "a", "0key", "glm_4"] {
            assert!(KeyName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_paths_and_odd_names() {
        let long = "a".repeat(65);
        for bad in ["", "Openai", "-x", ".x", "a/b", "a..b", "../x", "a b", "ключ", long.as_str()] {
            assert!(KeyName::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_valid_name_never_holds_a_path_separator(s in "\\PC{0,70}") {
            if let Ok(name) = KeyName::parse(&s) {
                prop_assert!(!name.as_str().contains('/'));
                prop_assert!(!name.as_str().contains(".."));
                prop_assert!(name.as_str().len() <= 64);
            }
        }
    }
}
