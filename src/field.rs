//! Validating config values: [`FieldError`], the problem a config type finds in itself, and
//! checks several modules' config types share.
//!
//! A leaf module. Each module validates its own config types and names the offending field
//! relative to its own section (`mount`); whoever holds that section adds the path to it
//! ([`FieldError::under`]: `kv.mount`), and `config/` adds the file it came from. So no config
//! type needs to know where it sits in the file, and no module imports the loader.

use std::fmt;

/// A config value that failed validation: which field (dotted, relative to the section that
/// checked it) and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `None`: the message names its field itself (a resolved user or group, for one).
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: Some(field.into()), message: message.into() }
    }

    /// A problem whose message already says where it is.
    pub fn unplaced(message: impl Into<String>) -> Self {
        FieldError { field: None, message: message.into() }
    }

    /// The same problem seen from the enclosing section: `mount` under `kv` is `kv.mount`
    /// (`sinks[0]` under `keys.a` is `keys.a.sinks[0]`).
    pub fn under(self, parent: &str) -> Self {
        let field = match self.field {
            Some(f) if f.starts_with('[') => Some(format!("{parent}{f}")),
            Some(f) => Some(format!("{parent}.{f}")),
            None => None,
        };
        FieldError { field, ..self }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FieldError {}

/// Mounts and prefixes become URL path segments of Vault requests: keep them to plain names
/// (`allow_slash`: several segments, `keysync/prod`), so no value can climb out of its mount.
pub fn check_path_segment(value: &str, allow_slash: bool) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (allow_slash && c == '/');
    if value.is_empty()
        || !value.chars().all(ok_char)
        || value.starts_with('/')
        || value.ends_with('/')
        || value.split('/').any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "{value:?} is not a valid path segment; use letters, digits, '-', '_' and '.'{}",
            if allow_slash { " with single '/' between parts (e.g. \"keysync/prod\")" } else { "" }
        ));
    }
    Ok(())
}

/// A required text field left blank.
pub fn check_nonempty(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_named_from_the_enclosing_sections() {
        let e = FieldError::new("mount", "bad").under("kv");
        assert_eq!(e.field.as_deref(), Some("kv.mount"));
        let e = FieldError::new("[0]", "bad").under("sinks").under("keys.a");
        assert_eq!(e.field.as_deref(), Some("keys.a.sinks[0]"));
        assert_eq!(FieldError::unplaced("exec.user: no such user").under("x").field, None);
    }

    #[test]
    fn path_segments_refuse_traversal_and_empty_parts() {
        assert!(check_path_segment("secret", false).is_ok());
        assert!(check_path_segment("keysync/prod", true).is_ok());
        for bad in ["", "a/../b", "/a", "a/", "a//b", "a b", "."] {
            assert!(check_path_segment(bad, true).is_err(), "{bad:?}");
        }
        assert!(check_path_segment("a/b", false).unwrap_err().contains("not a valid path segment"));
    }
}
