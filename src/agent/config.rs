//! The config file's schema: [`Config`], everything `keysync run` runs on, and the sections the
//! agent owns (`[agent]`, `[exec]`, `[keys.NAME.on_change]`) with their validation.
//!
//! Each other section's type lives with the module that uses it and validates itself:
//! `[vault]` (vault), `[kv]` ([`crate::store::KvConfig`]), `[rotation]` and the key plan
//! ([`crate::rotation::RotationConfig`]), providers and validation (provider), sinks (render).
//! [`Config`] puts them together and checks what only the whole file can: key names, one
//! writer per path, which keys exec variables name. Reading the file and the environment, and
//! saying a problem with the file's name, is `config/`'s job; it sits above the agent, which
//! gets its config through a [`ConfigLoader`] and never reads config files itself.

use crate::duration::HumanDuration;
use crate::field::FieldError;
use crate::render::{DirSinkConfig, SinkConfig};
use crate::rotation::{KeyPlan, RotationConfig};
use crate::store::{KeyName, KeyStore, KvConfig};
use crate::vault::VaultConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// Where the agent's config comes from: read at start and again on SIGHUP. The real one is
/// `config::ConfigSource` (the file plus `KEYSYNC_*` variables); taking it as a trait keeps
/// the agent below the loader, so no import runs both ways. Held as `Arc<dyn ConfigLoader>`
/// by whatever reloads.
pub trait ConfigLoader: Send + Sync {
    /// The config as it is now, validated.
    fn load(&self) -> Result<Config, Box<dyn std::error::Error + Send + Sync>>;
    /// The config file, for messages that tell the user what to edit.
    fn path(&self) -> &Path;
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

impl AgentConfig {
    /// Fields are named relative to `[agent]`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.poll_interval.get() < std::time::Duration::from_millis(100) {
            return Err(FieldError::new("poll_interval", "must be at least 100ms"));
        }
        if self.listen != "off" && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(FieldError::new(
                "listen",
                format!("{:?} is not host:port (e.g. \"127.0.0.1:9464\") or \"off\"", self.listen),
            ));
        }
        Ok(())
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
    pub signal: Option<super::SignalName>,
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

impl OnChangeConfig {
    /// `at` is where the section is (`keys.NAME.on_change`); fields are named in full, since
    /// a user or group that cannot be resolved is reported with its path.
    pub fn validate(&self, at: &str) -> Result<(), FieldError> {
        if self.command.is_empty() && self.signal.is_none() {
            return Err(FieldError::new(at, "set command = [\"prog\", \"arg\"] or signal + pid_file"));
        }
        if self.signal.is_some() != self.pid_file.is_some() {
            return Err(FieldError::new(at, "signal and pid_file go together"));
        }
        super::check_pass_env(&self.pass_env).map_err(|m| FieldError::new(format!("{at}.pass_env"), m))?;
        // The message starts with the field (`keys.NAME.on_change.user: …`).
        super::RunAs::resolve(at, self.user.as_deref(), self.group.as_deref()).map_err(FieldError::unplaced)?;
        Ok(())
    }
}

/// `[exec]`: `keysync exec -- CMD` runs CMD with keys in its environment.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// Environment variable → key name, e.g. `OPENAI_API_KEY = "openai"`.
    pub env: BTreeMap<String, String>,
    /// On change: `restart` the child (default), or send it `signal`.
    pub on_change: ExecOnChange,
    pub signal: Option<super::SignalName>,
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

impl ExecConfig {
    /// Fields are named relative to `[exec]`, except a user or group that cannot be resolved
    /// (its message names `exec.user` / `exec.group` itself).
    pub fn validate(&self) -> Result<(), FieldError> {
        for (var, key) in &self.env {
            if !crate::render::is_shell_identifier(var) {
                return Err(FieldError::new("env", format!("{var:?} is not a valid environment variable name")));
            }
            if KeyName::parse(key).is_err() {
                return Err(FieldError::new("env", format!("{var} = {key:?}: not a valid key name")));
            }
        }
        super::check_pass_env(&self.pass_env).map_err(|m| FieldError::new("pass_env", m))?;
        super::RunAs::resolve("exec", self.user.as_deref(), self.group.as_deref()).map_err(FieldError::unplaced)?;
        if self.on_change == ExecOnChange::Signal && self.signal.is_none() {
            return Err(FieldError::new("signal", "on_change = \"signal\" needs signal = \"SIGHUP\" (or another)"));
        }
        Ok(())
    }
}

impl Config {
    /// Checks what serde cannot in every section but `[vault]` (checked where its types live),
    /// then what only the whole file can: key names, one writer per path, which keys sinks
    /// and exec variables name. Fields are named in full (`keys.a.sinks[0].path`).
    pub fn validate(&self) -> Result<(), FieldError> {
        self.agent.validate().map_err(|e| e.under("agent"))?;
        self.kv.validate().map_err(|e| e.under("kv"))?;
        let known = |k: &str| KeyName::parse(k).is_ok();
        let mut paths = BTreeSet::new();
        let mut check_path = |field: String, path: &Path| {
            if !paths.insert(path.to_path_buf()) {
                return Err(FieldError::new(
                    field,
                    format!("{} is written by another sink too; give each sink its own path", path.display()),
                ));
            }
            Ok(())
        };
        for (name, key) in &self.keys {
            let at = format!("keys.{name}");
            KeyName::parse(name).map_err(|m| FieldError::new(&at, m))?;
            for (i, sink) in key.sinks.iter().enumerate() {
                let field = format!("{at}.sinks[{i}]");
                sink.validate().map_err(|m| FieldError::new(&field, m))?;
                if !sink.keys.is_empty() {
                    return Err(FieldError::new(
                        format!("{field}.keys"),
                        "a sink under [keys.NAME] renders that key; put multi-key sinks in [[sinks]]",
                    ));
                }
                check_path(field, &sink.path)?;
            }
            if let Some(policy) = &key.rotation {
                policy.validate().map_err(|m| FieldError::new(format!("{at}.rotation"), m))?;
            }
            if let Some(p) = &key.provider {
                p.build().map_err(|e| FieldError::new(format!("{at}.provider"), e.to_string()))?;
            }
            if let Some(v) = &key.validation {
                v.check().map_err(|m| FieldError::new(format!("{at}.validation"), m))?;
            }
            if let Some(hook) = &key.on_change {
                hook.validate(&format!("{at}.on_change"))?;
            }
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            let field = format!("sinks[{i}]");
            sink.validate().map_err(|m| FieldError::new(&field, m))?;
            if sink.keys.is_empty() {
                return Err(FieldError::new(
                    format!("{field}.keys"),
                    "list the keys this sink renders, e.g. keys = [\"openai\"]",
                ));
            }
            if let Some(k) = sink.keys.iter().find(|k| !known(k)) {
                return Err(FieldError::new(format!("{field}.keys"), format!("{k:?} is not a valid key name")));
            }
            check_path(field, &sink.path)?;
        }
        for (i, sink) in self.dir_sinks.iter().enumerate() {
            let field = format!("dir_sinks[{i}]");
            sink.validate().map_err(|m| FieldError::new(&field, m))?;
            if let Some(f) = sink.files.iter().find(|f| f.keys.is_empty()) {
                return Err(FieldError::new(format!("{field}.files"), format!("file {:?} needs keys = [...]", f.name)));
            }
            check_path(field, &sink.path)?;
        }
        if let Some(exec) = &self.exec {
            exec.validate().map_err(|e| e.under("exec"))?;
        }
        Ok(())
    }

    /// The rotation plan of `name`, if it has a provider.
    pub fn rotation_plan(&self, name: &str) -> Result<Option<KeyPlan>, String> {
        let Some(key) = self.keys.get(name) else { return Ok(None) };
        let Some(provider) = &key.provider else { return Ok(None) };
        self.rotation.plan(KeyName::parse(name)?, provider, key.rotation.clone(), key.validation.clone()).map(Some)
    }

    /// The key store `[kv]` describes, with `[rotation] grace`.
    pub fn key_store(&self, session: std::sync::Arc<crate::vault::Session>) -> KeyStore {
        KeyStore::from_config(&self.kv, self.rotation.grace.get(), session)
    }

    /// Every key some sink or exec variable renders.
    pub fn rendered_keys(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> =
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn two_sinks_writing_one_path_are_refused_naming_the_second() {
        let cfg = parse("[[keys.a.sinks]]\npath = \"/run/k\"\n[[sinks]]\npath = \"/run/k\"\nkeys = [\"a\"]\n");
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field.as_deref(), Some("sinks[0]"), "{err}");
        assert!(err.message.contains("another sink"), "{err}");
    }

    #[test]
    fn a_hook_needs_a_command_or_a_signal_with_a_pid_file() {
        let cfg = parse("[keys.a.on_change]\nsignal = \"HUP\"\n");
        assert_eq!(cfg.validate().unwrap_err().field.as_deref(), Some("keys.a.on_change"));
    }

    #[test]
    fn exec_problems_are_named_under_exec() {
        let cfg = parse("[exec]\non_change = \"signal\"\n");
        assert_eq!(cfg.validate().unwrap_err().field.as_deref(), Some("exec.signal"));
        let cfg = parse("[exec.env]\n\"1X\" = \"a\"\n");
        assert_eq!(cfg.validate().unwrap_err().field.as_deref(), Some("exec.env"));
    }

    #[test]
    fn agent_and_kv_problems_are_named_under_their_sections() {
        let cfg = parse("[agent]\nlisten = \"nowhere\"\n");
        assert_eq!(cfg.validate().unwrap_err().field.as_deref(), Some("agent.listen"));
        let cfg = parse("[kv]\nmount = \"a/b\"\n");
        assert_eq!(cfg.validate().unwrap_err().field.as_deref(), Some("kv.mount"));
    }

    #[test]
    fn rendered_keys_cover_sinks_dir_sinks_and_exec() {
        let cfg = parse(
            "[[keys.a.sinks]]\npath = \"/run/a\"\n[[sinks]]\npath = \"/run/m\"\nkeys = [\"b\"]\n[exec.env]\nX = \"c\"\n",
        );
        assert_eq!(cfg.rendered_keys().into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
