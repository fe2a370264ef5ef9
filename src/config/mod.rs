//! Reading keysync's configuration: a TOML file plus `KEYSYNC_*` environment overrides (`__`
//! nests: `KEYSYNC_VAULT__ADDRESS`), read with the `config` crate into types that refuse
//! unknown fields, then validated; every problem comes back as a [`ConfigError`] that names
//! the file, the field and the fix. Vault connection settings fall back to the usual `VAULT_*`
//! variables.
//!
//! This module loads; it does not own the sections. Each module owns its config types and
//! their validation (the agent: [`crate::agent::Config`], the file's schema, and `[agent]`,
//! `[exec]`, hooks; store: `[kv]`; rotation: `[rotation]` and the key plan; provider:
//! providers and validation; render: sinks; vault: `[vault]`). They are re-exported here so
//! callers name one module for "the config". The loader sits above the agent in the module
//! layers (see `tests/module_graph.rs`): nothing it reads imports it back.
//!
//! The config text never holds a secret: tokens, secret_ids and JWTs are read from files or
//! the environment at login time, so printing the resolved config is always safe.

pub use crate::agent::{AgentConfig, Config, ExecConfig, ExecOnChange, KeyConfig, OnChangeConfig};
pub use crate::duration::HumanDuration;
pub use crate::rotation::RotationConfig;
pub use crate::store::KvConfig;
pub use crate::vault::{AppRoleAuth, AuthConfig, CertAuth, JwtAuth, KubernetesAuth, TokenAuth, VaultConfig};

use crate::field::FieldError;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The default config file, looked up in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "keysync.toml";

/// A config problem, said so a person can fix it: which file, which field, what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file (or `environment`) the problem came from.
    pub source: String,
    /// The field, dotted (`vault.auth.role_id_file`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}: {}", self.source, field, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn new(source: &str, field: Option<&str>, message: impl Into<String>) -> Self {
        ConfigError { source: source.to_string(), field: field.map(str::to_string), message: message.into() }
    }
}

/// Where to read the config from.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Given on the command line: then a missing file is an error. The default
    /// `./keysync.toml` may be absent (environment-only setups).
    pub explicit: bool,
}

/// Reads the config file and `KEYSYNC_*__*` environment overrides, and validates the result.
pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    load_with_env(source, &env)
}

/// [`load`] with an explicit environment, for tests.
pub fn load_with_env(source: &ConfigSource, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let file_label = source.path.display().to_string();
    let exists = source.path.exists();
    if source.explicit && !exists {
        return Err(ConfigError::new(
            &file_label,
            None,
            "config file not found; pass an existing file with --config or create it",
        ));
    }
    let mut builder = config::Config::builder();
    if exists {
        let text = std::fs::read_to_string(&source.path)
            .map_err(|e| ConfigError::new(&file_label, None, format!("cannot read the config file: {e}")))?;
        // Parse with `toml` first: its errors carry line and column, config's do not.
        if let Err(e) = text.parse::<toml::Table>() {
            let msg = e.to_string().replace('\n', " ").split_whitespace().collect::<Vec<_>>().join(" ");
            return Err(ConfigError::new(&file_label, None, format!("invalid TOML: {msg}")));
        }
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    let overrides = env_overrides(env);
    let env_keys: Vec<String> = overrides.keys().cloned().collect();
    builder = builder.add_source(
        config::Environment::with_prefix("KEYSYNC")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(overrides)),
    );
    let label = if env_keys.is_empty() {
        file_label.clone()
    } else {
        format!("{file_label} (with environment overrides {})", env_keys.join(", "))
    };
    let raw = builder.build().map_err(|e| translate_config_error(&label, e))?;
    let cfg: Config = raw.try_deserialize().map_err(|e| translate_config_error(&label, e))?;
    validate(&cfg, &file_label)?;
    Ok(cfg)
}

/// Only `KEYSYNC_<SECTION>__<FIELD>` variables are overrides: a variable without `__`
/// (such as `KEYSYNC_TEST_BAO_BIN`) belongs to something else and is left alone.
fn env_overrides(env: &HashMap<String, String>) -> HashMap<String, String> {
    env.iter()
        .filter(|(k, _)| k.starts_with("KEYSYNC_") && k["KEYSYNC_".len()..].contains("__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The config crate says `unknown field `x`, expected one of ... for key `vault``; reshape
/// that into file / field / fix.
fn translate_config_error(label: &str, err: config::ConfigError) -> ConfigError {
    let text = err.to_string();
    if let Some(rest) = text.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let parent = key_from_message(tail);
        let full = match &parent {
            Some(p) if !p.is_empty() => format!("{p}.{field}"),
            _ => field.to_string(),
        };
        let expected = tail.split(" for key").next().unwrap_or("").trim_start_matches(',').trim();
        let hint = if expected.is_empty() { String::new() } else { format!(" ({expected})") };
        return ConfigError::new(label, Some(&full), format!("unknown field; remove it or fix its spelling{hint}"));
    }
    if let Some(rest) = text.strip_prefix("missing field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let parent = key_from_message(tail);
        let full = match &parent {
            Some(p) if !p.is_empty() => format!("{p}.{field}"),
            _ => field.to_string(),
        };
        return ConfigError::new(label, Some(&full), "required field is missing; add it");
    }
    if let Some(rest) = text.strip_prefix("missing configuration field \"") {
        let field = rest.split('"').next().unwrap_or(rest);
        return ConfigError::new(label, Some(&normalize_key(field)), "required field is missing; add it");
    }
    if let Some((head, value)) = text.split_once(" does not have variant constructor ") {
        let value = value.split(" for key").next().unwrap_or(value).trim();
        let field = key_from_message(&text).map(|k| normalize_key(&k));
        let enum_name = head.trim_start_matches("enum ").trim();
        let choices = match enum_name {
            "SinkFormat" => variants_of::<crate::render::SinkFormat>(),
            "WriteMode" => variants_of::<crate::render::WriteMode>(),
            "OnMissing" => variants_of::<crate::render::OnMissing>(),
            "Charset" => variants_of::<crate::provider::Charset>(),
            "ExecOnChange" => variants_of::<ExecOnChange>(),
            "Preset" => variants_of::<crate::provider::Preset>(),
            _ => None,
        }
        .unwrap_or_else(|| "a value listed in docs/configuration.md".into());
        return ConfigError::new(
            label,
            field.as_deref(),
            format!("{value:?} is not a valid value; use one of {choices}"),
        );
    }
    if text.contains("unknown variant") && text.contains("method") {
        return ConfigError::new(
            label,
            Some("vault.auth.method"),
            format!("{text}; use one of token, approle, jwt, kubernetes, cert"),
        );
    }
    let field = key_from_message(&text).map(|k| normalize_key(&k));
    ConfigError::new(label, field.as_deref(), text)
}

/// The values an enum accepts (`raw, env, json, template`), read from serde's own refusal of a
/// value no enum has, so the list in a message cannot drift from the type.
fn variants_of<T: serde::de::DeserializeOwned>() -> Option<String> {
    let refusal = serde_json::from_value::<T>(serde_json::Value::String("\u{0}".into())).err()?.to_string();
    let expected = refusal.split_once("expected")?.1;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// The config crate writes `sinks[0]format` for `sinks[0].format`.
fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut after_bracket = false;
    for c in key.chars() {
        if after_bracket && c != '.' && c != '[' {
            out.push('.');
        }
        after_bracket = c == ']';
        out.push(c);
    }
    out
}

fn key_from_message(text: &str) -> Option<String> {
    let idx = text.rfind("for key `")?;
    let rest = &text[idx + "for key `".len()..];
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

/// Checks what serde cannot, as [`load`] does: `[vault]` by [`VaultConfig::validate`], every
/// other section by its own type ([`Config::validate`]). `source` names where the config came from, for the message.
pub fn validate(cfg: &Config, source: &str) -> Result<(), ConfigError> {
    let placed = |e: FieldError| ConfigError::new(source, e.field.as_deref(), e.message);
    cfg.vault.validate().map_err(|e| ConfigError::new(source, Some(e.field), e.message))?;
    cfg.validate().map_err(placed)
}

/// Resolves a config path given on the command line, or the default.
pub fn source_from_arg(arg: Option<&Path>) -> ConfigSource {
    match arg {
        Some(p) => ConfigSource { path: p.to_path_buf(), explicit: true },
        None => ConfigSource { path: PathBuf::from(DEFAULT_CONFIG_FILE), explicit: false },
    }
}

/// The agent reads its config through this (at start, and again on SIGHUP).
impl crate::agent::ConfigLoader for ConfigSource {
    fn load(&self) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> {
        Ok(load(self)?)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load_with_env(&ConfigSource { path: file.path().to_path_buf(), explicit: true }, &env)
    }

    /// Through the config loader: a provider field problem names `keys.NAME.provider…` and
    /// lists what is accepted, as it did when providers were one serde enum.
    #[test]
    fn config_errors_name_the_provider_field() {
        let load = |text: &str| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
            let source = crate::config::ConfigSource { path: file.path().to_path_buf(), explicit: true };
            crate::config::load_with_env(&source, &Default::default()).unwrap_err().to_string()
        };
        for (text, says) in [
            ("[keys.k.provider]\ntype = \"generate\"\nlenght = 40\n", &["keys.k.provider", "lenght", "`length`"][..]),
            ("[keys.k.provider]\ntype = \"generate\"\ncharset = \"emoji\"\n", &["keys.k.provider", "charset: unknown variant `emoji`", "`base64url`"]),
            ("[keys.k.provider]\ntype = \"magic\"\n", &["keys.k.provider", "magic", "`generate`", "`manual`"]),
            ("[keys.k.provider]\ntype = \"openai\"\nadmin_key_file = \"/a\"\n", &["keys.k.provider", "project_id"]),
            ("[keys.k.provider]\ntype = \"command\"\ncommand = []\n", &["keys.k.provider", "`command` must name a program"]),
            (
                "[keys.k.provider]\ntype = \"openai\"\nproject_id = \"p\"\nadmin_key_file = \"/a\"\nname_prefix = \"a-b\"\n",
                &["keys.k.provider", "name_prefix", "\"a_b\""],
            ),
        ] {
            let err = load(text);
            for word in says {
                assert!(err.contains(word), "{text}: {word:?} missing from: {err}");
            }
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = load_text("", &[]).unwrap();
        assert_eq!(cfg, Config::default());
        assert_eq!(cfg.kv.mount, "secret");
        assert_eq!(cfg.kv.prefix, "keysync");
    }

    #[test]
    fn approle_section_parses_with_default_mount() {
        let cfg = load_text(
            "[vault]\naddress = \"http://127.0.0.1:8200\"\n[vault.auth]\nmethod = \"approle\"\nrole_id_file = \"/r\"\nsecret_id_file = \"/s\"\nsecret_id_wrapped = true\n",
            &[],
        )
        .unwrap();
        match cfg.vault.auth {
            AuthConfig::Approle(a) => {
                assert_eq!(a.mount, "approle");
                assert!(a.secret_id_wrapped);
            }
            other => panic!("expected approle, got {other:?}"),
        }
    }

    #[test]
    fn unknown_field_is_named_with_its_section() {
        let err = load_text("[vault]\nadress = \"http://x\"\n", &[]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("vault.adress"), "{err}");
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn unknown_top_level_section_is_named() {
        let err = load_text("[vaultt]\naddress = \"http://x\"\n", &[]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("vaultt"), "{err}");
    }

    #[test]
    fn unknown_field_in_auth_method_is_named() {
        let err = load_text(
            "[vault.auth]\nmethod = \"approle\"\nrole_id_file = \"/r\"\nsecret_id_file = \"/s\"\nsecretid = 1\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("secretid"), "{err}");
    }

    #[test]
    fn unknown_auth_method_lists_the_choices() {
        let err = load_text("[vault.auth]\nmethod = \"ldap\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("approle"), "{err}");
        assert!(err.to_string().contains("ldap"), "{err}");
    }

    #[test]
    fn invalid_toml_names_the_line() {
        let err = load_text("[vault\naddress = 1\n", &[]).unwrap_err();
        assert!(err.message.starts_with("invalid TOML"), "{err}");
        assert!(err.message.contains("line 1"), "{err}");
    }

    #[test]
    fn unknown_enum_values_list_the_choices_with_a_dotted_field() {
        let err = load_text("[[sinks]]\npath = \"/tmp/x\"\nkeys = [\"a\"]\nformat = \"yaml\"\n", &[]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("sinks[0].format"), "{err}");
        assert!(err.message.contains("\"yaml\"") && err.message.contains("raw, env, json, template"), "{err}");
    }

    #[test]
    fn enum_choices_come_from_the_types() {
        assert_eq!(variants_of::<crate::render::WriteMode>().as_deref(), Some("atomic, in_place"));
        assert_eq!(variants_of::<ExecOnChange>().as_deref(), Some("restart, signal"));
        let presets = variants_of::<crate::provider::Preset>().unwrap();
        assert!(presets.starts_with("openai, ") && presets.contains("anthropic"), "{presets}");
        let err = load_text("[exec]\non_change = \"reboot\"\n", &[]).unwrap_err();
        assert!(err.message.contains("use one of restart, signal"), "{err}");
    }

    #[test]
    fn a_missing_required_field_says_to_add_it() {
        let err = load_text("[vault.auth]\nmethod = \"approle\"\nrole_id_file = \"/r\"\n", &[]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("vault.auth.secret_id_file"), "{err}");
        assert!(err.message.contains("add it"), "{err}");
    }

    #[test]
    fn bad_url_is_refused_before_use() {
        let err = load_text("[vault]\naddress = \"not a url\"\n", &[]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("vault.address"));
    }

    #[test]
    fn env_overrides_nest_with_double_underscore() {
        let cfg = load_text(
            "[vault]\naddress = \"http://a:1\"\n",
            &[("KEYSYNC_VAULT__ADDRESS", "http://b:2"), ("KEYSYNC_KV__PREFIX", "keysync/prod")],
        )
        .unwrap();
        assert_eq!(cfg.vault.address.as_deref(), Some("http://b:2"));
        assert_eq!(cfg.kv.prefix, "keysync/prod");
    }

    #[test]
    fn unrelated_keysync_variables_are_not_config() {
        let cfg = load_text("", &[("KEYSYNC_TEST_BAO_BIN", "/x/bao")]).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn unknown_env_override_is_an_error_naming_the_variable() {
        let err = load_text("", &[("KEYSYNC_VAULT__ADRESS", "http://b:2")]).unwrap_err();
        assert!(err.to_string().contains("KEYSYNC_VAULT__ADRESS"), "{err}");
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let err = load_text("[vault]\ntimeout = \"soon\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    #[test]
    fn prefix_with_traversal_is_refused() {
        let err = load_text("[kv]\nprefix = \"a/../b\"\n", &[]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("kv.prefix"));
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = load_with_env(
            &ConfigSource { path: PathBuf::from("/nonexistent/keysync.toml"), explicit: true },
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(err.message.contains("not found"));
    }

    #[test]
    fn printed_config_round_trips() {
        let cfg = load_text("[vault]\naddress = \"http://127.0.0.1:8200\"\n", &[]).unwrap();
        let text = cfg.to_toml();
        let again: Config = toml::from_str(&text).unwrap();
        assert_eq!(cfg, again);
    }
}
