//! Sink configuration: what a user writes in the config file to say where a key goes, in which
//! shape, with which permissions. Serde types refuse unknown fields so a typo is an error, not a
//! silently ignored option; [`SinkConfig::validate`] and [`DirSinkConfig::validate`] catch what
//! serde cannot (relative paths, conflicting options, bad modes).
//!
//! Which key a sink renders: a sink with an empty `keys` list belongs to the key whose config
//! section it sits in (the caller hands it exactly that key). A sink with `keys = ["a", "b"]`
//! renders those keys together (env lines, a JSON object per key, or a template over `keys.*`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// The shape of the bytes written to a sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// The key alone: what `OPENAI_API_KEY_FILE`-style consumers read.
    #[default]
    Raw,
    /// `NAME='value'` lines for POSIX shells, systemd `EnvironmentFile` and dotenv readers.
    Env,
    /// A JSON object with the key, its version, fingerprint, previous key and provider fields.
    Json,
    /// A minijinja template with strict undefined.
    Template,
}

impl SinkFormat {
    fn as_str(self) -> &'static str {
        match self {
            SinkFormat::Raw => "raw",
            SinkFormat::Env => "env",
            SinkFormat::Json => "json",
            SinkFormat::Template => "template",
        }
    }
}

/// How the new content replaces the old.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Temp file + rename: readers see the old or the new file, never a mix.
    #[default]
    Atomic,
    /// Rewrite the existing inode. For Docker single-file bind mounts, where a rename would
    /// detach the file from the mount. Readers may briefly see partial content.
    InPlace,
}

/// What to do with the file when its key is missing or disabled in Vault.
///
/// This is only for a key that Vault says is gone: an unreachable Vault never removes a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Keep the last good file (the caller should warn).
    #[default]
    Keep,
    /// Delete the file (and its `.previous`), so apps fail loudly instead of using a dead key.
    Remove,
}

/// One file that receives one key (or several, with `keys`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Absolute path of the file to write.
    pub path: PathBuf,
    #[serde(default)]
    pub format: SinkFormat,
    /// Octal permission bits, e.g. `"0600"` or `"0640"`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// User name or numeric uid that should own the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group name or numeric gid that should own the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Create missing parent directories (0700, or 0750 when `group` is set).
    #[serde(default)]
    pub create_dirs: bool,
    /// Raw format only: end the file with a newline. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailing_newline: Option<bool>,
    /// Make the previous key (during its grace period) available: raw writes `<path>.previous`;
    /// env adds `<NAME>_PREVIOUS`; json fills `previous`; templates see `key.previous`.
    #[serde(default)]
    pub include_previous: bool,
    #[serde(default)]
    pub write: WriteMode,
    #[serde(default)]
    pub on_missing: OnMissing,
    /// Env format only: the variable name. Default: derived from the key name (see
    /// [`derive_env_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_name: Option<String>,
    /// Template format: the template text inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Template format: an absolute path to the template file, read when the sink is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<PathBuf>,
    /// Several keys in one file; empty means the key this sink is configured under.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// A directory of files that change together, kubelet style: the files live in a hidden
/// timestamped directory and a `..data` symlink is swapped atomically, so a reader that opens
/// `dir/a` and `dir/b` never gets one from before and one from after a rotation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSinkConfig {
    /// Absolute path of the directory.
    pub path: PathBuf,
    /// Octal permission bits of every file, e.g. `"0600"`.
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Create the directory and its missing parents.
    #[serde(default)]
    pub create_dirs: bool,
    /// Only `atomic` is possible: the `..data` swap is the whole point of a directory sink.
    #[serde(default)]
    pub write: WriteMode,
    #[serde(default)]
    pub on_missing: OnMissing,
    /// The files, at least one.
    pub files: Vec<DirFileConfig>,
}

/// One file inside a directory sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirFileConfig {
    /// Plain file name inside the directory (no `/`, not starting with `..`).
    pub name: String,
    #[serde(default)]
    pub format: SinkFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trailing_newline: Option<bool>,
    /// Raw format: writes a sibling `<name>.previous` file during the grace period.
    #[serde(default)]
    pub include_previous: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

/// The part of a sink that decides the bytes, shared by file and directory sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct ContentConfig {
    pub format: SinkFormat,
    pub trailing_newline: bool,
    pub include_previous: bool,
    pub env_name: Option<String>,
    pub template: Option<String>,
    pub template_file: Option<PathBuf>,
    pub keys: Vec<String>,
}

fn default_mode() -> String {
    "0600".into()
}

impl SinkConfig {
    /// A raw sink at `path` with every other option at its default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SinkConfig {
            path: path.into(),
            format: SinkFormat::Raw,
            mode: default_mode(),
            owner: None,
            group: None,
            create_dirs: false,
            trailing_newline: None,
            include_previous: false,
            write: WriteMode::Atomic,
            on_missing: OnMissing::Keep,
            env_name: None,
            template: None,
            template_file: None,
            keys: Vec::new(),
        }
    }

    /// The content options of this sink.
    pub fn content(&self) -> ContentConfig {
        ContentConfig {
            format: self.format,
            trailing_newline: self.trailing_newline.unwrap_or(true),
            include_previous: self.include_previous,
            env_name: self.env_name.clone(),
            template: self.template.clone(),
            template_file: self.template_file.clone(),
            keys: self.keys.clone(),
        }
    }

    /// The permission bits, parsed. Errors as in [`parse_mode`].
    pub fn mode_bits(&self) -> Result<u32, String> {
        parse_mode(&self.mode)
    }

    /// Checks what serde cannot. The message names the field and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        check_target_path("path", &self.path)?;
        if self.path.file_name().is_none() {
            return Err(format!("path: {} has no file name; point it at a file", self.path.display()));
        }
        parse_mode(&self.mode).map_err(|m| format!("mode: {m}"))?;
        check_ids(self.owner.as_deref(), self.group.as_deref())?;
        check_content(
            self.format,
            self.trailing_newline,
            self.env_name.as_deref(),
            self.template.as_deref(),
            self.template_file.as_deref(),
            &self.keys,
        )?;
        if self.include_previous && self.format == SinkFormat::Raw && self.keys.len() > 1 {
            return Err("include_previous: a raw sink holds one key; remove the extra keys".into());
        }
        Ok(())
    }
}

impl DirSinkConfig {
    /// The permission bits of the files, parsed.
    pub fn mode_bits(&self) -> Result<u32, String> {
        parse_mode(&self.mode)
    }

    /// Checks what serde cannot. The message names the field and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        check_target_path("path", &self.path)?;
        parse_mode(&self.mode).map_err(|m| format!("mode: {m}"))?;
        check_ids(self.owner.as_deref(), self.group.as_deref())?;
        if self.write == WriteMode::InPlace {
            return Err("write: a directory sink always swaps its `..data` link atomically; \
                 in_place is for single files (Docker file bind mounts): bind-mount the directory \
                 instead, or remove `write`"
                .into());
        }
        if self.files.is_empty() {
            return Err("files: a directory sink needs at least one file".into());
        }
        let mut names = BTreeSet::new();
        for (i, file) in self.files.iter().enumerate() {
            let at = format!("files[{i}]");
            check_file_name(&file.name).map_err(|m| format!("{at}.name: {m}"))?;
            if !names.insert(file.name.as_str()) {
                return Err(format!("{at}.name: {:?} appears twice; file names must be unique", file.name));
            }
            check_content(
                file.format,
                file.trailing_newline,
                file.env_name.as_deref(),
                file.template.as_deref(),
                file.template_file.as_deref(),
                &file.keys,
            )
            .map_err(|m| format!("{at}.{m}"))?;
        }
        for file in &self.files {
            if file.include_previous && file.format == SinkFormat::Raw {
                let prev = format!("{}.previous", file.name);
                if names.contains(prev.as_str()) {
                    return Err(format!(
                        "files: {:?} is also the previous-key file of {:?} (include_previous); rename one",
                        prev, file.name
                    ));
                }
            }
        }
        Ok(())
    }
}

impl DirFileConfig {
    /// The content options of this file.
    pub fn content(&self) -> ContentConfig {
        ContentConfig {
            format: self.format,
            trailing_newline: self.trailing_newline.unwrap_or(true),
            include_previous: self.include_previous,
            env_name: self.env_name.clone(),
            template: self.template.clone(),
            template_file: self.template_file.clone(),
            keys: self.keys.clone(),
        }
    }
}

/// Parses `"0600"`-style octal permissions: 3 or 4 octal digits, no setuid/setgid/sticky bits
/// (they make no sense on a secret file and setuid would be dangerous) and not world-writable
/// (anyone could replace the key an app uses).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if !(3..=4).contains(&digits.len()) || !digits.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(format!("{text:?} is not an octal mode; write 3 or 4 octal digits like \"0600\" or \"0640\""));
    }
    let bits = u32::from_str_radix(digits, 8).map_err(|_| format!("{text:?} is not an octal mode"))?;
    if bits & 0o7000 != 0 {
        return Err(format!("{text:?} sets setuid, setgid or sticky bits; a key file needs none: use e.g. \"0600\""));
    }
    if bits & 0o002 != 0 {
        return Err(format!(
            "{text:?} makes the file world-writable, so anyone could swap the key; drop the last \
             digit's write bit (e.g. \"0644\" instead of \"0666\")"
        ));
    }
    Ok(bits)
}

/// True when `name` can be a POSIX shell variable name.
pub fn is_shell_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_ascii_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// The env variable name for a key without `env_name`: ASCII-uppercased, every character that
/// is not an ASCII letter or digit becomes `_`, and a leading digit (or an empty name) gets a
/// `_` prefix. `openai-prod` → `OPENAI_PROD`, `9lives` → `_9LIVES`.
pub fn derive_env_name(key_name: &str) -> String {
    let mut out: String =
        key_name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn check_target_path(field: &str, path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{field}: {} is relative; write an absolute path", path.display()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{field}: {} contains `..`; write the path without it", path.display()));
    }
    Ok(())
}

fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name.starts_with("..") || name.contains('/') || name.contains('\0') {
        return Err(format!(
            "{name:?} is not a plain file name; use a name without `/` that does not start with `..` \
             (names starting with `..` are reserved for the `..data` swap)"
        ));
    }
    Ok(())
}

fn check_ids(owner: Option<&str>, group: Option<&str>) -> Result<(), String> {
    for (field, value) in [("owner", owner), ("group", group)] {
        if let Some(v) = value {
            if v.trim().is_empty() || v.contains(|c: char| c.is_whitespace() || c == ':' || c == '\0') {
                return Err(format!("{field}: {v:?} is not a user/group name or numeric id"));
            }
        }
    }
    Ok(())
}

fn check_content(
    format: SinkFormat,
    trailing_newline: Option<bool>,
    env_name: Option<&str>,
    template: Option<&str>,
    template_file: Option<&Path>,
    keys: &[String],
) -> Result<(), String> {
    let name = format.as_str();
    if trailing_newline.is_some() && format != SinkFormat::Raw {
        return Err(format!(
            "trailing_newline: only applies to format = \"raw\" (this sink is {name}); remove it \
             (templates control their own newlines)"
        ));
    }
    match (format, template, template_file) {
        (SinkFormat::Template, None, None) => {
            return Err("template: format = \"template\" needs `template` (inline) or `template_file`".into())
        }
        (SinkFormat::Template, Some(_), Some(_)) => {
            return Err("template: set either `template` or `template_file`, not both".into())
        }
        (SinkFormat::Template, _, Some(p)) => check_target_path("template_file", p)?,
        (SinkFormat::Template, Some(_), None) => {}
        (_, Some(_), _) | (_, _, Some(_)) => {
            return Err(format!(
                "template: `template`/`template_file` need format = \"template\" (this sink is {name}); \
                 set the format or remove the template"
            ))
        }
        (_, None, None) => {}
    }
    if let Some(env) = env_name {
        if format != SinkFormat::Env {
            return Err(format!("env_name: only applies to format = \"env\" (this sink is {name}); remove it"));
        }
        if !is_shell_identifier(env) {
            return Err(format!(
                "env_name: {env:?} is not a shell variable name; use letters, digits and `_`, not \
                 starting with a digit (e.g. \"OPENAI_API_KEY\")"
            ));
        }
        if keys.len() > 1 {
            return Err("env_name: names one variable but this sink has several keys; remove env_name \
                 (names are derived from each key name)"
                .into());
        }
    }
    if format == SinkFormat::Raw && keys.len() > 1 {
        return Err("keys: a raw sink holds exactly one key; use env, json or template for several".into());
    }
    let mut seen = BTreeSet::new();
    for k in keys {
        if k.trim().is_empty() {
            return Err("keys: key names must not be empty".into());
        }
        if !seen.insert(k.as_str()) {
            return Err(format!("keys: {k:?} appears twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(toml_text: &str) -> Result<SinkConfig, String> {
        toml::from_str::<SinkConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_sink_gets_safe_defaults() {
        let s = sink("path = \"/run/keys/openai\"").unwrap();
        assert_eq!(s.format, SinkFormat::Raw);
        assert_eq!(s.mode_bits().unwrap(), 0o600);
        assert_eq!(s.write, WriteMode::Atomic);
        assert_eq!(s.on_missing, OnMissing::Keep);
        assert!(s.content().trailing_newline);
        s.validate().unwrap();
    }

    #[test]
    fn unknown_sink_field_is_refused() {
        let err = sink("path = \"/a\"\nmod = \"0600\"").unwrap_err();
        assert!(err.contains("mod"), "{err}");
    }

    #[test]
    fn relative_and_dotdot_paths_are_refused() {
        let err = SinkConfig::new("keys/openai").validate().unwrap_err();
        assert!(err.contains("relative"), "{err}");
        let err = SinkConfig::new("/run/../etc/passwd").validate().unwrap_err();
        assert!(err.contains(".."), "{err}");
    }

    #[test]
    fn modes_with_special_bits_or_world_write_are_refused() {
        assert_eq!(parse_mode("0640").unwrap(), 0o640);
        assert_eq!(parse_mode("600").unwrap(), 0o600);
        assert!(parse_mode("4600").unwrap_err().contains("setuid"));
        assert!(parse_mode("1600").unwrap_err().contains("sticky"));
        assert!(parse_mode("0666").unwrap_err().contains("world-writable"));
        assert!(parse_mode("0800").unwrap_err().contains("octal"));
        assert!(parse_mode("60").unwrap_err().contains("octal"));
        assert!(parse_mode("rw-------").unwrap_err().contains("octal"));
    }

    #[test]
    fn template_options_must_match_the_format() {
        let mut s = SinkConfig::new("/a");
        s.template = Some("{{ key.api_key }}".into());
        assert!(s.validate().unwrap_err().contains("format = \"template\""));
        s.format = SinkFormat::Template;
        s.validate().unwrap();
        s.template_file = Some("/t".into());
        assert!(s.validate().unwrap_err().contains("not both"));
        s.template = None;
        s.template_file = Some("t.j2".into());
        assert!(s.validate().unwrap_err().contains("template_file"));
        s.template_file = None;
        assert!(s.validate().unwrap_err().contains("needs"));
    }

    #[test]
    fn env_name_must_be_a_shell_identifier_on_an_env_sink() {
        let mut s = SinkConfig::new("/a");
        s.format = SinkFormat::Env;
        s.env_name = Some("OPENAI-KEY".into());
        assert!(s.validate().unwrap_err().contains("shell variable"));
        s.env_name = Some("1KEY".into());
        assert!(s.validate().is_err());
        s.env_name = Some("OPENAI_API_KEY".into());
        s.validate().unwrap();
        s.format = SinkFormat::Json;
        assert!(s.validate().unwrap_err().contains("env_name"));
    }

    #[test]
    fn trailing_newline_is_only_for_raw() {
        let mut s = SinkConfig::new("/a");
        s.trailing_newline = Some(false);
        s.validate().unwrap();
        s.format = SinkFormat::Json;
        assert!(s.validate().unwrap_err().contains("trailing_newline"));
    }

    #[test]
    fn raw_sink_with_several_keys_is_refused() {
        let mut s = SinkConfig::new("/a");
        s.keys = vec!["a".into(), "b".into()];
        assert!(s.validate().unwrap_err().contains("raw"));
        s.format = SinkFormat::Env;
        s.validate().unwrap();
        s.keys = vec!["a".into(), "a".into()];
        assert!(s.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn env_names_are_derived_from_key_names() {
        assert_eq!(derive_env_name("openai-prod"), "OPENAI_PROD");
        assert_eq!(derive_env_name("anthropic.eu/main"), "ANTHROPIC_EU_MAIN");
        assert_eq!(derive_env_name("9lives"), "_9LIVES");
        assert_eq!(derive_env_name(""), "_");
        assert!(is_shell_identifier(&derive_env_name("ключ")));
    }

    #[test]
    fn dir_sink_refuses_in_place_and_odd_file_names() {
        let text = "path = \"/run/llm\"\nwrite = \"in_place\"\n[[files]]\nname = \"openai\"\n";
        let d: DirSinkConfig = toml::from_str(text).unwrap();
        assert!(d.validate().unwrap_err().contains("in_place"));
        let text = "path = \"/run/llm\"\n[[files]]\nname = \"..data\"\n";
        let d: DirSinkConfig = toml::from_str(text).unwrap();
        assert!(d.validate().unwrap_err().contains("files[0].name"));
        let text = "path = \"/run/llm\"\n[[files]]\nname = \"a/b\"\n";
        let d: DirSinkConfig = toml::from_str(text).unwrap();
        assert!(d.validate().is_err());
        let text = "path = \"/run/llm\"\n[[files]]\nname = \"a\"\n[[files]]\nname = \"a\"\n";
        let d: DirSinkConfig = toml::from_str(text).unwrap();
        assert!(d.validate().unwrap_err().contains("twice"));
    }

    #[test]
    fn dir_sink_file_options_are_checked_like_sinks() {
        let text = "path = \"/run/llm\"\n[[files]]\nname = \"env\"\nformat = \"env\"\nenv_name = \"A B\"\n";
        let d: DirSinkConfig = toml::from_str(text).unwrap();
        let err = d.validate().unwrap_err();
        assert!(err.starts_with("files[0].env_name"), "{err}");
        let text = "path = \"/run/llm\"\n[[files]]\nname = \"k\"\n[[files]]\nname = \"j\"\nformat = \"json\"\n";
        let d: DirSinkConfig = toml::from_str(text).unwrap();
        d.validate().unwrap();
    }
}
