//! keysync's configuration: a TOML file plus `KEYSYNC_*` environment overrides (`__` nests:
//! `KEYSYNC_VAULT__ADDRESS`), read with the `config` crate into types that refuse unknown
//! fields. Vault connection settings fall back to the usual `VAULT_*` variables.
//!
//! The config text never holds a secret: tokens, secret_ids and JWTs are read from files or
//! the environment at login time, so printing the resolved config is always safe.

mod duration;

pub use duration::HumanDuration;

pub use crate::vault::{AppRoleAuth, AuthConfig, CertAuth, JwtAuth, KubernetesAuth, TokenAuth, VaultConfig};

use crate::render::{DirSinkConfig, SinkConfig};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// The default config file, looked up in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "keysync.toml";

/// Everything keysync reads from its config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub vault: VaultConfig,
    pub kv: KvConfig,
    pub rotation: RotationConfig,
    pub agent: AgentConfig,
    /// Per-key settings: `[keys.NAME]` with `[[keys.NAME.sinks]]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, KeyConfig>,
    /// Sinks rendering several keys (`keys = [...]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkConfig>,
    /// Directory sinks: several files switched at once (`..data` symlink swap).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dir_sinks: Vec<DirSinkConfig>,
    /// `keysync exec`: environment variables for the child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecConfig>,
}

/// `[agent]`: the long-running sync loop.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// How often to look for changes (one Vault request per poll); each wait is up to 10% shorter
    /// (jitter spreads agents, never delays a change beyond one interval).
    pub poll_interval: HumanDuration,
    /// Every key's metadata is re-read once per this interval, a few keys each poll, catching
    /// changes the index did not announce (edited by hand, or a writer that died in between).
    pub full_sync_interval: HumanDuration,
    /// Address of /metrics, /healthz, /readyz; "off" disables the endpoint.
    pub listen: String,
    /// Rotate keys that have a `provider` when they fall due.
    pub rotate: bool,
    /// How often a rotating agent checks its keys' schedules (a few requests per key).
    pub rotation_check_interval: HumanDuration,
    /// Record the fingerprints this agent rendered under `<prefix>/_acks/<agent-id>`, so a
    /// previous key is retired once every reporting agent switched (or grace ends).
    pub report_renders: bool,
    /// `/readyz` answers 503 (naming the sink and its error) once a sink has failed this many
    /// passes in a row; 0 = sink failures never make the agent unready.
    pub unready_after_sink_failures: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            poll_interval: HumanDuration::from_secs(10),
            full_sync_interval: HumanDuration::from_secs(3600),
            listen: "127.0.0.1:9464".into(),
            rotate: false,
            rotation_check_interval: HumanDuration::from_secs(60),
            report_renders: false,
            unready_after_sink_failures: 3,
        }
    }
}

/// `[keys.NAME]`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkConfig>,
    /// Run a command or signal a process when this key's files change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_change: Option<OnChangeConfig>,
    /// When to rotate (interval or cron schedule, max_age, grace, jitter, validate…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<crate::rotation::RotationPolicy>,
    /// Where new keys come from: generate | command | manual.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<crate::provider::ProviderConfig>,
    /// How a new key is checked before promotion (a cheap authenticated GET).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<crate::provider::Validation>,
}

/// `[keys.NAME.on_change]`: argv (no shell), or a signal to the pid in `pid_file`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OnChangeConfig {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    pub timeout: Option<HumanDuration>,
    /// Parsed when the config is loaded: an unknown name is a config error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<crate::agent::SignalName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// Quiet period after a change before the hook runs (debounce), like consul-template's wait.
    pub wait_min: Option<HumanDuration>,
    /// The hook runs at most this long after the first change, even if changes continue.
    pub wait_max: Option<HumanDuration>,
    /// Run the command as this user (name or uid) instead of keysync's; needs keysync as root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// ...and this group (name or gid); default: the user's primary group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Variables of keysync's environment the command may see besides `PATH` (names or
    /// `PREFIX_*`); `VAULT_*`, `BAO_*` and `KEYSYNC_*` are never passed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
}

/// `[exec]`: `keysync exec -- CMD` runs CMD with keys in its environment.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// Environment variable → key name, e.g. `OPENAI_API_KEY = "openai"`.
    pub env: BTreeMap<String, String>,
    /// On change: `restart` the child (default), or send it `signal`.
    pub on_change: ExecOnChange,
    pub signal: Option<crate::agent::SignalName>,
    /// How long a stopping child gets between SIGTERM and SIGKILL.
    pub kill_timeout: Option<HumanDuration>,
    /// Debounce: restart (or signal) the child only after its keys were quiet this long, so
    /// keys changing together restart it once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_min: Option<HumanDuration>,
    /// ...but no later than this after the first change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_max: Option<HumanDuration>,
    /// Run the child as this user (name or uid); needs keysync as root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// ...and this group (name or gid); default: the user's primary group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Variables of keysync's environment the child may see besides the basics (`PATH`,
    /// `HOME`, `USER`, `LANG`, `LC_*`, `TZ`, `TERM`, …): names or `PREFIX_*`, or `"*"` for
    /// all; `VAULT_*`, `BAO_*` and `KEYSYNC_*` are never passed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_env: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExecOnChange {
    #[default]
    Restart,
    Signal,
}

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
    cfg.validate(&file_label)?;
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
        let presets = crate::provider::Preset::choices();
        let choices = match enum_name {
            "SinkFormat" => "raw, env, json, template",
            "WriteMode" => "atomic, in_place",
            "OnMissing" => "keep, remove",
            "ExecOnChange" => "restart, signal",
            "Preset" => presets.as_str(),
            _ => "a value listed in the README",
        };
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

impl Config {
    /// Checks what serde cannot: names, paths and combinations.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        self.vault.validate().map_err(|e| ConfigError::new(source, Some(e.field), e.message))?;
        self.validate_agent(source)?;
        check_segment(source, "kv.mount", &self.kv.mount, false)?;
        check_segment(source, "kv.prefix", &self.kv.prefix, true)?;
        Ok(())
    }

    fn validate_agent(&self, source: &str) -> Result<(), ConfigError> {
        if self.agent.poll_interval.get() < std::time::Duration::from_millis(100) {
            return Err(ConfigError::new(source, Some("agent.poll_interval"), "must be at least 100ms"));
        }
        if self.agent.listen != "off" && self.agent.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                source,
                Some("agent.listen"),
                format!("{:?} is not host:port (e.g. \"127.0.0.1:9464\") or \"off\"", self.agent.listen),
            ));
        }
        let known = |k: &str| crate::store::KeyName::parse(k).is_ok();
        let mut paths = std::collections::BTreeSet::new();
        let mut check_path = |field: String, path: &Path| {
            if !paths.insert(path.to_path_buf()) {
                return Err(ConfigError::new(
                    source,
                    Some(&field),
                    format!("{} is written by another sink too; give each sink its own path", path.display()),
                ));
            }
            Ok(())
        };
        for (name, key) in &self.keys {
            if !known(name) {
                return Err(ConfigError::new(
                    source,
                    Some(&format!("keys.{name}")),
                    crate::store::KeyName::parse(name).err().unwrap_or_default(),
                ));
            }
            for (i, sink) in key.sinks.iter().enumerate() {
                let field = format!("keys.{name}.sinks[{i}]");
                sink.validate().map_err(|m| ConfigError::new(source, Some(&field), m))?;
                if !sink.keys.is_empty() {
                    return Err(ConfigError::new(
                        source,
                        Some(&format!("{field}.keys")),
                        "a sink under [keys.NAME] renders that key; put multi-key sinks in [[sinks]]",
                    ));
                }
                check_path(field, &sink.path)?;
            }
            if let Some(policy) = &key.rotation {
                policy.validate().map_err(|m| ConfigError::new(source, Some(&format!("keys.{name}.rotation")), m))?;
            }
            if let Some(p) = &key.provider {
                p.build()
                    .map_err(|e| ConfigError::new(source, Some(&format!("keys.{name}.provider")), e.to_string()))?;
            }
            if let Some(v) = &key.validation {
                v.check().map_err(|m| ConfigError::new(source, Some(&format!("keys.{name}.validation")), m))?;
            }
            if let Some(hook) = &key.on_change {
                let field = format!("keys.{name}.on_change");
                if hook.command.is_empty() && hook.signal.is_none() {
                    return Err(ConfigError::new(
                        source,
                        Some(&field),
                        "set command = [\"prog\", \"arg\"] or signal + pid_file",
                    ));
                }
                if hook.signal.is_some() != hook.pid_file.is_some() {
                    return Err(ConfigError::new(source, Some(&field), "signal and pid_file go together"));
                }
                crate::agent::check_pass_env(&hook.pass_env)
                    .map_err(|m| ConfigError::new(source, Some(&format!("{field}.pass_env")), m))?;
                // The message starts with the field (`keys.NAME.on_change.user: …`).
                crate::agent::RunAs::resolve(&field, hook.user.as_deref(), hook.group.as_deref())
                    .map_err(|m| ConfigError::new(source, None, m))?;
            }
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            let field = format!("sinks[{i}]");
            sink.validate().map_err(|m| ConfigError::new(source, Some(&field), m))?;
            if sink.keys.is_empty() {
                return Err(ConfigError::new(
                    source,
                    Some(&format!("{field}.keys")),
                    "list the keys this sink renders, e.g. keys = [\"openai\"]",
                ));
            }
            for k in &sink.keys {
                if !known(k) {
                    return Err(ConfigError::new(
                        source,
                        Some(&format!("{field}.keys")),
                        format!("{k:?} is not a valid key name"),
                    ));
                }
            }
            check_path(field, &sink.path)?;
        }
        for (i, sink) in self.dir_sinks.iter().enumerate() {
            let field = format!("dir_sinks[{i}]");
            sink.validate().map_err(|m| ConfigError::new(source, Some(&field), m))?;
            for f in &sink.files {
                if f.keys.is_empty() {
                    return Err(ConfigError::new(
                        source,
                        Some(&format!("{field}.files")),
                        format!("file {:?} needs keys = [...]", f.name),
                    ));
                }
            }
            check_path(field, &sink.path)?;
        }
        if let Some(exec) = &self.exec {
            for (var, key) in &exec.env {
                if !crate::render::is_shell_identifier(var) {
                    return Err(ConfigError::new(
                        source,
                        Some("exec.env"),
                        format!("{var:?} is not a valid environment variable name"),
                    ));
                }
                if !known(key) {
                    return Err(ConfigError::new(
                        source,
                        Some("exec.env"),
                        format!("{var} = {key:?}: not a valid key name"),
                    ));
                }
            }
            crate::agent::check_pass_env(&exec.pass_env)
                .map_err(|m| ConfigError::new(source, Some("exec.pass_env"), m))?;
            crate::agent::RunAs::resolve("exec", exec.user.as_deref(), exec.group.as_deref())
                .map_err(|m| ConfigError::new(source, None, m))?;
            if exec.on_change == ExecOnChange::Signal && exec.signal.is_none() {
                return Err(ConfigError::new(
                    source,
                    Some("exec.signal"),
                    "on_change = \"signal\" needs signal = \"SIGHUP\" (or another)",
                ));
            }
        }
        Ok(())
    }

    /// The rotation plan of `name`, if it has a provider.
    pub fn rotation_plan(&self, name: &str) -> Result<Option<crate::rotation::KeyPlan>, String> {
        let Some(key) = self.keys.get(name) else { return Ok(None) };
        let Some(provider) = &key.provider else { return Ok(None) };
        let policy = key.rotation.clone().unwrap_or_default();
        let grace = policy.grace.map(|g| g.get()).unwrap_or(self.rotation.grace.get());
        let max_hold = policy.max_hold.map(|g| g.get());
        Ok(Some(crate::rotation::KeyPlan {
            name: crate::store::KeyName::parse(name)?,
            provider: provider.build().map_err(|e| e.to_string())?,
            validation: key.validation.clone(),
            policy,
            grace,
            adopt_after: self.rotation.adopt_after.get(),
            ack_ttl: self.rotation.ack_ttl.get(),
            max_hold: max_hold.unwrap_or(self.rotation.max_hold.get()),
        }))
    }

    /// Every key some sink or exec variable renders.
    pub fn rendered_keys(&self) -> std::collections::BTreeSet<String> {
        let mut out: std::collections::BTreeSet<String> =
            self.keys.iter().filter(|(_, k)| !k.sinks.is_empty()).map(|(n, _)| n.clone()).collect();
        out.extend(self.sinks.iter().flat_map(|s| s.keys.iter().cloned()));
        out.extend(self.dir_sinks.iter().flat_map(|d| d.files.iter().flat_map(|f| f.keys.iter().cloned())));
        if let Some(exec) = &self.exec {
            out.extend(exec.env.values().cloned());
        }
        out
    }

    /// The resolved config as TOML. Safe to print: the config holds no secrets.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Mount and prefix become URL path segments: keep them to plain names.
fn check_segment(source: &str, field: &str, value: &str, allow_slash: bool) -> Result<(), ConfigError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (allow_slash && c == '/');
    if value.is_empty()
        || !value.chars().all(ok_char)
        || value.starts_with('/')
        || value.ends_with('/')
        || value.split('/').any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(ConfigError::new(
            source,
            Some(field),
            format!(
                "{value:?} is not a valid path segment; use letters, digits, '-', '_' and '.'{}",
                if allow_slash { " with single '/' between parts (e.g. \"keysync/prod\")" } else { "" }
            ),
        ));
    }
    Ok(())
}

/// Resolves a config path given on the command line, or the default.
pub fn source_from_arg(arg: Option<&Path>) -> ConfigSource {
    match arg {
        Some(p) => ConfigSource { path: p.to_path_buf(), explicit: true },
        None => ConfigSource { path: PathBuf::from(DEFAULT_CONFIG_FILE), explicit: false },
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
