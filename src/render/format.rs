//! Turning keys into bytes: raw, env, json and template formats. Pure: no filesystem access
//! after [`Content::new`] has read and compiled the template, so every format is testable
//! without files and the writer never has to know about formats.
//!
//! # Formats
//! - **raw**: the key, plus `\n` unless `trailing_newline = false`.
//! - **env**: one `NAME='value'` line per key, single-quoted for POSIX shells (`'` becomes
//!   `'\''`); with `include_previous`, a `NAME_PREVIOUS='…'` line during the grace period.
//!   Values with NUL, CR or LF are refused: no `.env` dialect carries them safely. Readers that
//!   strip quotes the POSIX way (`. file`, systemd `EnvironmentFile`, docker compose
//!   `env_file`, python-dotenv) get the exact value; `docker run --env-file` keeps quotes
//!   literally, so use a template for it.
//! - **json**: pretty-printed, fields in this order: `name`, `api_key`, `version`,
//!   `fingerprint`, `previous` (`{"api_key", "version", "fingerprint"}` or `null`; only filled
//!   with `include_previous`), then the provider fields sorted by name. A provider field named
//!   like a fixed field is dropped (the fixed field wins). A sink with several keys writes
//!   `{"<key name>": {…}, …}` in the order of `keys`.
//! - **template**: minijinja with strict undefined and no auto-escaping. The context has
//!   `keys.<name>` for every key and `key` when the sink has exactly one key; each key is
//!   `{name, api_key, version, fingerprint, fields, previous}`. The `env_quote` filter quotes a
//!   value like the env format does. The output is exactly what the template produces (a
//!   final newline in the template is kept).

use super::config::{derive_env_name, ContentConfig, SinkFormat};
use super::error::{redact, RenderError};
use super::material::KeyMaterial;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The template's name inside the minijinja environment.
const TEMPLATE_NAME: &str = "sink";

/// Field names of the JSON object that provider fields may not override.
const FIXED_JSON_FIELDS: [&str; 5] = ["name", "api_key", "version", "fingerprint", "previous"];

/// A prepared renderer for one file: config plus compiled template.
#[derive(Debug)]
pub struct Content {
    path: PathBuf,
    config: ContentConfig,
    template: Option<Environment<'static>>,
}

/// Why a value cannot go into an env file. Carries no part of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvQuoteError {
    Nul,
    Newline,
}

impl std::fmt::Display for EnvQuoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvQuoteError::Nul => f.write_str("contains a NUL byte, which env files cannot carry"),
            EnvQuoteError::Newline => {
                f.write_str("contains a line break (CR or LF), which env files cannot carry safely")
            }
        }
    }
}

/// Quotes `value` for a POSIX shell: `'…'` with every `'` written as `'\''`. Refuses NUL
/// (shells truncate at it) and line breaks (line-based `.env` readers split on them).
pub fn env_quote(value: &str) -> Result<String, EnvQuoteError> {
    if value.contains('\0') {
        return Err(EnvQuoteError::Nul);
    }
    if value.contains(['\n', '\r']) {
        return Err(EnvQuoteError::Newline);
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Ok(out)
}

impl Content {
    /// Prepares rendering for the file at `path` (named in errors): reads `template_file` and
    /// compiles the template, so syntax errors show up when the sink is built, not at the first
    /// rotation.
    pub fn new(path: &Path, config: ContentConfig) -> Result<Self, RenderError> {
        let template = if config.format == SinkFormat::Template {
            let source = match (&config.template, &config.template_file) {
                (Some(inline), _) => inline.clone(),
                (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| RenderError::Config {
                    path: path.to_path_buf(),
                    message: format!("cannot read template_file {}: {e}; check the path", file.display()),
                })?,
                (None, None) => {
                    return Err(RenderError::Config {
                        path: path.to_path_buf(),
                        message: "format = \"template\" needs `template` or `template_file`".into(),
                    })
                }
            };
            Some(build_environment(path, source)?)
        } else {
            None
        };
        Ok(Content { path: path.to_path_buf(), config, template })
    }

    /// The content options this renderer was built from.
    pub fn config(&self) -> &ContentConfig {
        &self.config
    }

    /// The bytes of the file for `keys`. See the module docs for each format.
    pub fn render(&self, keys: &[KeyMaterial]) -> Result<Vec<u8>, RenderError> {
        let selected = self.select(keys)?;
        for k in &selected {
            if k.key.is_empty() {
                return Err(self
                    .value_error(k, "the key is empty; refusing to write an empty key file (check the key in Vault)"));
            }
        }
        match self.config.format {
            SinkFormat::Raw => {
                let k = selected[0];
                Ok(self.raw(k.key.expose()))
            }
            SinkFormat::Env => self.env(&selected),
            SinkFormat::Json => self.json(&selected),
            SinkFormat::Template => self.template(&selected, keys),
        }
    }

    /// Raw format with `include_previous`: the bytes of the `.previous` file, or `None` when
    /// there is no previous key (the file should then be removed).
    pub fn render_previous(&self, keys: &[KeyMaterial]) -> Result<Option<Vec<u8>>, RenderError> {
        if self.config.format != SinkFormat::Raw || !self.config.include_previous {
            return Ok(None);
        }
        let selected = self.select(keys)?;
        Ok(selected[0].previous.as_ref().filter(|p| !p.key.is_empty()).map(|p| self.raw(p.key.expose())))
    }

    fn raw(&self, key: &str) -> Vec<u8> {
        let mut out = key.as_bytes().to_vec();
        if self.config.trailing_newline {
            out.push(b'\n');
        }
        out
    }

    /// The keys this file shows, in config order; errors if the caller did not provide them.
    fn select<'k>(&self, keys: &'k [KeyMaterial]) -> Result<Vec<&'k KeyMaterial>, RenderError> {
        if self.config.keys.is_empty() {
            return match keys {
                [one] => Ok(vec![one]),
                [] => Err(RenderError::Config {
                    path: self.path.clone(),
                    message: "no key was given to a single-key sink; attach the sink to a key or list `keys`".into(),
                }),
                _ => Err(RenderError::Config {
                    path: self.path.clone(),
                    message: format!(
                        "{} keys were given to a single-key sink; list the ones it should show in `keys`",
                        keys.len()
                    ),
                }),
            };
        }
        self.config
            .keys
            .iter()
            .map(|name| {
                keys.iter()
                    .find(|k| &k.name == name)
                    .ok_or_else(|| RenderError::MissingKey { path: self.path.clone(), key: name.clone() })
            })
            .collect()
    }

    fn value_error(&self, key: &KeyMaterial, message: impl Into<String>) -> RenderError {
        RenderError::Value { path: self.path.clone(), key: key.name.clone(), message: message.into() }
    }

    fn env(&self, selected: &[&KeyMaterial]) -> Result<Vec<u8>, RenderError> {
        let mut out = String::new();
        let mut names = BTreeSet::new();
        for k in selected {
            let name = match (&self.config.env_name, selected.len()) {
                (Some(n), 1) => n.clone(),
                _ => derive_env_name(&k.name),
            };
            let mut lines = vec![(name.clone(), k.key.expose(), "api_key")];
            if self.config.include_previous {
                if let Some(p) = &k.previous {
                    lines.push((format!("{name}_PREVIOUS"), p.key.expose(), "previous api_key"));
                }
            }
            for (var, value, what) in lines {
                if !names.insert(var.clone()) {
                    return Err(self.value_error(
                        k,
                        format!("env variable {var} is produced by two keys; rename a key or use a template"),
                    ));
                }
                let quoted = env_quote(value).map_err(|e| {
                    self.value_error(k, format!("the {what} {e}; use format = \"raw\" or \"json\" for this key"))
                })?;
                out.push_str(&var);
                out.push('=');
                out.push_str(&quoted);
                out.push('\n');
            }
        }
        Ok(out.into_bytes())
    }

    fn json(&self, selected: &[&KeyMaterial]) -> Result<Vec<u8>, RenderError> {
        let objects: Vec<(&str, JsonKey<'_>)> =
            selected.iter().map(|k| (k.name.as_str(), JsonKey::new(k, self.config.include_previous))).collect();
        let result = if self.config.keys.is_empty() {
            serde_json::to_vec_pretty(&objects[0].1)
        } else {
            serde_json::to_vec_pretty(&OrderedMap(&objects))
        };
        let mut out = result.map_err(|e| RenderError::Config {
            path: self.path.clone(),
            message: format!("cannot encode JSON ({:?}); report this as a keysync bug", e.classify()),
        })?;
        out.push(b'\n');
        Ok(out)
    }

    fn template(&self, selected: &[&KeyMaterial], all: &[KeyMaterial]) -> Result<Vec<u8>, RenderError> {
        let env = self.template.as_ref().ok_or_else(|| RenderError::Config {
            path: self.path.clone(),
            message: "template format without a compiled template; report this as a keysync bug".into(),
        })?;
        let mut by_name = BTreeMap::new();
        for k in selected {
            by_name.insert(k.name.clone(), key_value(k, self.config.include_previous));
        }
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        if let [one] = selected {
            ctx.insert("key".into(), key_value(one, self.config.include_previous));
        }
        ctx.insert("keys".into(), Value::from(by_name));
        let secrets: Vec<&str> = all.iter().flat_map(KeyMaterial::secrets).collect();
        let tmpl =
            env.get_template(TEMPLATE_NAME).map_err(|e| template_error(&self.path, &e, secrets.iter().copied()))?;
        tmpl.render(Value::from(ctx))
            .map(String::into_bytes)
            .map_err(|e| template_error(&self.path, &e, secrets.iter().copied()))
    }
}

/// Serializes `[(name, value)]` as a JSON object keeping the given order (serde_json's own map
/// would sort it).
struct OrderedMap<'a, V>(&'a [(&'a str, V)]);

impl<V: Serialize> Serialize for OrderedMap<'_, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct JsonKey<'a> {
    name: &'a str,
    api_key: &'a str,
    version: u64,
    fingerprint: &'a str,
    previous: Option<JsonPrevious<'a>>,
    #[serde(flatten)]
    fields: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct JsonPrevious<'a> {
    api_key: &'a str,
    version: u64,
    fingerprint: &'a str,
}

impl<'a> JsonKey<'a> {
    fn new(k: &'a KeyMaterial, include_previous: bool) -> Self {
        JsonKey {
            name: &k.name,
            api_key: k.key.expose(),
            version: k.version,
            fingerprint: &k.fingerprint,
            previous: k.previous.as_ref().filter(|_| include_previous).map(|p| JsonPrevious {
                api_key: p.key.expose(),
                version: p.version,
                fingerprint: &p.fingerprint,
            }),
            fields: k
                .fields
                .iter()
                .filter(|(name, _)| !FIXED_JSON_FIELDS.contains(&name.as_str()))
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
        }
    }
}

/// The template view of one key.
fn key_value(k: &KeyMaterial, include_previous: bool) -> Value {
    let mut m: BTreeMap<String, Value> = BTreeMap::new();
    m.insert("name".into(), Value::from(k.name.as_str()));
    m.insert("api_key".into(), Value::from(k.key.expose()));
    m.insert("version".into(), Value::from(k.version));
    m.insert("fingerprint".into(), Value::from(k.fingerprint.as_str()));
    let fields: BTreeMap<String, Value> = k.fields.iter().map(|(n, v)| (n.clone(), Value::from(v.as_str()))).collect();
    m.insert("fields".into(), Value::from(fields));
    let previous = match (&k.previous, include_previous) {
        (Some(p), true) => {
            let mut pm: BTreeMap<String, Value> = BTreeMap::new();
            pm.insert("api_key".into(), Value::from(p.key.expose()));
            pm.insert("version".into(), Value::from(p.version));
            pm.insert("fingerprint".into(), Value::from(p.fingerprint.as_str()));
            Value::from(pm)
        }
        _ => Value::from(()),
    };
    m.insert("previous".into(), previous);
    Value::from(m)
}

/// A strict, non-escaping environment holding the sink's template.
///
/// Debug mode is on only so that undefined-variable errors name the expression (`key.nope`);
/// the debug info it attaches (which includes variable values, i.e. keys) is never displayed:
/// errors are rebuilt from kind, detail and line in [`template_error`].
fn build_environment(path: &Path, source: String) -> Result<Environment<'static>, RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_debug(true);
    let mut syntax = minijinja::syntax::SyntaxConfig::builder();
    syntax.keep_trailing_newline(true);
    let syntax = syntax.build().map_err(|e| template_error(path, &e, []))?;
    env.set_syntax(syntax);
    env.add_filter("env_quote", env_quote_filter);
    env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| template_error(path, &e, []))?;
    Ok(env)
}

fn env_quote_filter(value: Value) -> Result<String, minijinja::Error> {
    let text = match value.as_str() {
        Some(s) => s.to_string(),
        None => value.to_string(),
    };
    env_quote(&text)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("env_quote: the value {e}")))
}

/// Rebuilds a template error from its parts (never its `Display`, which can include debug info
/// with variable values), scrubbed of every key the render could see.
fn template_error<'a>(path: &Path, err: &minijinja::Error, secrets: impl IntoIterator<Item = &'a str>) -> RenderError {
    let mut message = err.kind().to_string();
    if let Some(detail) = err.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    match err.kind() {
        ErrorKind::UndefinedError => message.push_str(
            "; the context has `key` (single-key sinks) and `keys.<name>`, each with name, api_key, \
             version, fingerprint, fields.<field> and previous (none without include_previous); \
             use `x is defined` or `x | default(...)` for optional values",
        ),
        ErrorKind::SyntaxError => message.push_str("; fix the template syntax"),
        _ => {}
    }
    RenderError::Template { path: path.to_path_buf(), line: err.line(), message: redact(&message, secrets) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::config::SinkConfig;
    use crate::secret::Secret;
    use proptest::prelude::*;
    use std::process::Command;

    const SECRET: &str = "sk-test-SECRETSECRETSECRET";

    fn content(cfg: &SinkConfig) -> Result<Content, RenderError> {
        Content::new(&cfg.path, cfg.content())
    }

    fn cfg(format: SinkFormat) -> SinkConfig {
        let mut c = SinkConfig::new("/run/keysync/openai");
        c.format = format;
        c
    }

    fn key() -> KeyMaterial {
        KeyMaterial::new("openai-prod", 7, Secret::new(SECRET))
            .with_field("base_url", "https://api.openai.com/v1")
            .with_field("org_id", "org-1")
    }

    fn template(text: &str) -> SinkConfig {
        let mut c = cfg(SinkFormat::Template);
        c.template = Some(text.into());
        c
    }

    fn render_str(c: &SinkConfig, keys: &[KeyMaterial]) -> Result<String, RenderError> {
        content(c)?.render(keys).map(|b| String::from_utf8(b).unwrap())
    }

    /// Parses one `NAME='…'` line the POSIX way: single-quoted runs and `\'` between them.
    fn parse_env_line(line: &str) -> Option<(String, String)> {
        let (name, rest) = line.split_once('=')?;
        let mut value = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => loop {
                    match chars.next()? {
                        '\'' => break,
                        other => value.push(other),
                    }
                },
                '\\' => value.push(chars.next()?),
                _ => return None,
            }
        }
        Some((name.to_string(), value))
    }

    #[test]
    fn raw_is_the_key_with_an_optional_newline() {
        let mut c = cfg(SinkFormat::Raw);
        assert_eq!(render_str(&c, &[key()]).unwrap(), format!("{SECRET}\n"));
        c.trailing_newline = Some(false);
        assert_eq!(render_str(&c, &[key()]).unwrap(), SECRET);
    }

    #[test]
    fn raw_previous_exists_only_with_include_previous_and_a_previous_key() {
        let mut c = cfg(SinkFormat::Raw);
        let k = key().with_previous(6, Secret::new("sk-old-key-0123456789"));
        assert_eq!(content(&c).unwrap().render_previous(std::slice::from_ref(&k)).unwrap(), None);
        c.include_previous = true;
        assert_eq!(content(&c).unwrap().render_previous(&[k]).unwrap(), Some(b"sk-old-key-0123456789\n".to_vec()));
        assert_eq!(content(&c).unwrap().render_previous(&[key()]).unwrap(), None);
    }

    #[test]
    fn env_uses_the_derived_name_or_env_name() {
        let mut c = cfg(SinkFormat::Env);
        assert_eq!(render_str(&c, &[key()]).unwrap(), format!("OPENAI_PROD='{SECRET}'\n"));
        c.env_name = Some("OPENAI_API_KEY".into());
        c.include_previous = true;
        let k = key().with_previous(6, Secret::new("old'key"));
        assert_eq!(
            render_str(&c, &[k]).unwrap(),
            format!("OPENAI_API_KEY='{SECRET}'\nOPENAI_API_KEY_PREVIOUS='old'\\''key'\n")
        );
    }

    #[test]
    fn env_refuses_newlines_and_nul_without_showing_the_value() {
        let c = cfg(SinkFormat::Env);
        for bad in [format!("{SECRET}\nX=1"), format!("{SECRET}\0"), format!("{SECRET}\r")] {
            let k = KeyMaterial::new("openai-prod", 1, Secret::new(bad));
            let err = render_str(&c, &[k]).unwrap_err().to_string();
            assert!(err.contains("/run/keysync/openai") && err.contains("openai-prod"), "{err}");
            assert!(!err.contains("SECRETSECRET"), "{err}");
        }
    }

    #[test]
    fn env_quoting_round_trips_through_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        let nasty = [
            "it's",
            "a b  c",
            "$HOME $(id) `id`",
            "back\\slash\\",
            "'",
            "''",
            "\"double\"",
            "semi;colon&amp|pipe",
            "tab\there",
            "ünïcødé ключ",
            "*?[glob]",
            "#hash",
            "",
        ];
        for value in nasty {
            let quoted = env_quote(value).unwrap();
            std::fs::write(&file, format!("NAME={quoted}\n")).unwrap();
            let out =
                Command::new("sh").arg("-c").arg(r#". "$1"; printf %s "$NAME""#).arg("sh").arg(&file).output().unwrap();
            assert!(out.status.success(), "{value:?}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8(out.stdout).unwrap(), value, "{quoted}");
        }
    }

    #[test]
    fn env_with_several_keys_writes_one_line_each_and_refuses_name_clashes() {
        let mut c = cfg(SinkFormat::Env);
        c.keys = vec!["openai-prod".into(), "anthropic".into()];
        let a = KeyMaterial::new("anthropic", 1, Secret::new("sk-ant-xyz"));
        let text = render_str(&c, &[a.clone(), key()]).unwrap();
        assert_eq!(text, format!("OPENAI_PROD='{SECRET}'\nANTHROPIC='sk-ant-xyz'\n"));
        c.keys = vec!["openai-prod".into(), "openai_prod".into()];
        let clash = KeyMaterial::new("openai_prod", 1, Secret::new("sk-other"));
        let err = render_str(&c, &[key(), clash]).unwrap_err().to_string();
        assert!(err.contains("OPENAI_PROD") && !err.contains("SECRETSECRET"), "{err}");
    }

    #[test]
    fn json_has_the_documented_shape_and_order() {
        let mut c = cfg(SinkFormat::Json);
        let k = key().with_previous(6, Secret::new("sk-old-key-0123456789")).with_field("api_key", "shadow");
        let text = render_str(&c, std::slice::from_ref(&k)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["name"], "openai-prod");
        assert_eq!(v["api_key"], SECRET);
        assert_eq!(v["version"], 7);
        assert_eq!(v["fingerprint"], Secret::new(SECRET).fingerprint());
        assert_eq!(v["previous"], serde_json::Value::Null);
        assert_eq!(v["base_url"], "https://api.openai.com/v1");
        assert_eq!(v["org_id"], "org-1");
        let order: Vec<usize> =
            ["\"name\"", "\"api_key\"", "\"version\"", "\"fingerprint\"", "\"previous\"", "\"base_url\""]
                .iter()
                .map(|f| text.find(f).unwrap())
                .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(text.matches("\"api_key\"").count(), 1, "provider field must not shadow: {text}");
        assert!(text.ends_with("}\n"));

        c.include_previous = true;
        let v: serde_json::Value = serde_json::from_str(&render_str(&c, &[k]).unwrap()).unwrap();
        assert_eq!(v["previous"]["api_key"], "sk-old-key-0123456789");
        assert_eq!(v["previous"]["version"], 6);
    }

    #[test]
    fn json_with_several_keys_is_an_object_by_key_name_in_config_order() {
        let mut c = cfg(SinkFormat::Json);
        c.keys = vec!["zeta".into(), "alpha".into()];
        let z = KeyMaterial::new("zeta", 1, Secret::new("sk-zeta"));
        let a = KeyMaterial::new("alpha", 2, Secret::new("sk-alpha"));
        let text = render_str(&c, &[a, z]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["zeta"]["api_key"], "sk-zeta");
        assert_eq!(v["alpha"]["version"], 2);
        assert!(text.find("zeta").unwrap() < text.find("alpha").unwrap(), "{text}");
    }

    #[test]
    fn missing_key_in_a_multi_key_sink_is_named() {
        let mut c = cfg(SinkFormat::Json);
        c.keys = vec!["openai-prod".into(), "gone".into()];
        let err = render_str(&c, &[key()]).unwrap_err().to_string();
        assert!(err.contains("\"gone\"") && err.contains("/run/keysync/openai"), "{err}");
    }

    #[test]
    fn empty_keys_are_refused() {
        let k = KeyMaterial::new("openai-prod", 1, Secret::new(""));
        let err = render_str(&cfg(SinkFormat::Raw), &[k]).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn template_sees_key_fields_previous_and_env_quote() {
        let mut c = template(
            "export OPENAI_API_KEY={{ key.api_key | env_quote }}\nBASE={{ key.fields.base_url }}\nV={{ key.version }}\n{% if key.previous %}OLD={{ key.previous.version }}\n{% endif %}",
        );
        let k = key().with_previous(6, Secret::new("sk-old-key-0123456789"));
        assert_eq!(
            render_str(&c, std::slice::from_ref(&k)).unwrap(),
            format!("export OPENAI_API_KEY='{SECRET}'\nBASE=https://api.openai.com/v1\nV=7\n")
        );
        c.include_previous = true;
        assert!(render_str(&c, &[k]).unwrap().ends_with("OLD=6\n"));
    }

    #[test]
    fn template_with_several_keys_uses_keys_by_name() {
        let mut c = template("{{ keys['openai-prod'].version }} {{ keys.anthropic.api_key }}");
        c.keys = vec!["openai-prod".into(), "anthropic".into()];
        let a = KeyMaterial::new("anthropic", 1, Secret::new("sk-ant-xyz"));
        assert_eq!(render_str(&c, &[key(), a]).unwrap(), "7 sk-ant-xyz");
    }

    #[test]
    fn template_does_not_html_escape() {
        let c = template("{{ key.fields.q }}");
        let k = key().with_field("q", "<a&b>'\"");
        assert_eq!(render_str(&c, &[k]).unwrap(), "<a&b>'\"");
    }

    #[test]
    fn template_strict_undefined_errors_name_the_variable_and_line_not_the_key() {
        let c = template("line one {{ key.api_key }}\n{{ key.fields.nope }}\n");
        let err = render_str(&c, &[key()]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("key.fields.nope"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("/run/keysync/openai"), "{text}");
        assert!(!text.contains("SECRETSECRET"), "{text}");
    }

    #[test]
    fn template_errors_that_would_quote_the_key_are_scrubbed() {
        for t in [
            "{{ key.api_key | int }}",
            "{{ key.api_key + 1 }}",
            "{{ key.api_key() }}",
            "{{ key.api_key | env_quote }}",
            "{{ (key.api_key ~ '\n') | env_quote }}",
            "{{ key.api_key[key.api_key] }}",
            "{% for x in key.version %}{% endfor %}",
            "{{ range(key.api_key) }}",
            "{{ key.api_key | split('x') | join(1, 2) }}",
            "{{ raise(key.api_key) }}",
            "{{ key.fields[key.api_key] }}",
        ] {
            let c = template(t);
            if let Err(err) = render_str(&c, &[key()]) {
                let text = err.to_string();
                assert!(!text.contains("SECRETSECRET"), "{t}: {text}");
                assert!(text.contains("/run/keysync/openai"), "{t}: {text}");
            }
        }
    }

    #[test]
    fn template_syntax_errors_show_up_when_the_sink_is_built() {
        let c = template("ok\n{{ key.api_key \n");
        let err = content(&c).unwrap_err().to_string();
        assert!(err.contains("syntax") && err.contains("line"), "{err}");
    }

    #[test]
    fn template_file_is_read_when_the_sink_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.j2");
        std::fs::write(&file, "K={{ key.name }}\n").unwrap();
        let mut c = cfg(SinkFormat::Template);
        c.template_file = Some(file.clone());
        assert_eq!(render_str(&c, &[key()]).unwrap(), "K=openai-prod\n");
        c.template_file = Some(dir.path().join("missing.j2"));
        let err = content(&c).unwrap_err().to_string();
        assert!(err.contains("missing.j2"), "{err}");
    }

    #[test]
    fn single_key_sink_given_no_key_says_so() {
        let err = render_str(&cfg(SinkFormat::Raw), &[]).unwrap_err().to_string();
        assert!(err.contains("no key"), "{err}");
    }

    fn any_format() -> impl Strategy<Value = SinkFormat> {
        prop_oneof![Just(SinkFormat::Raw), Just(SinkFormat::Env), Just(SinkFormat::Json), Just(SinkFormat::Template)]
    }

    proptest! {
        #[test]
        fn env_quote_round_trips_through_a_posix_parser(value in "[^\u{0}\r\n]*") {
            let quoted = env_quote(&value).unwrap();
            let (name, parsed) = parse_env_line(&format!("K={quoted}")).unwrap();
            prop_assert_eq!(name, "K");
            prop_assert_eq!(parsed, value);
        }

        #[test]
        fn env_format_round_trips_any_printable_key(value in "[^\u{0}\r\n]{1,64}") {
            let k = KeyMaterial::new("k", 1, Secret::new(value.clone()));
            let text = render_str(&cfg(SinkFormat::Env), &[k]).unwrap();
            let line = text.strip_suffix('\n').unwrap();
            prop_assert_eq!(parse_env_line(line).unwrap(), ("K".to_string(), value));
        }

        #[test]
        fn render_content_never_panics(
            format in any_format(),
            name in ".{0,12}",
            key in any::<String>(),
            prev in proptest::option::of(any::<String>()),
            field in ".{0,8}",
            field_value in any::<String>(),
            template in ".{0,40}",
            include_previous in any::<bool>(),
        ) {
            let mut c = cfg(format);
            c.include_previous = include_previous;
            if format == SinkFormat::Template {
                c.template = Some(template);
            }
            let mut k = KeyMaterial::new(name, 3, Secret::new(key)).with_field(field, field_value);
            if let Some(p) = prev {
                k = k.with_previous(2, Secret::new(p));
            }
            if let Ok(sink) = crate::render::Sink::new(c) {
                let _ = crate::render::render_content(&sink, std::slice::from_ref(&k));
                let _ = content(sink.config()).map(|c| c.render_previous(&[k]));
            }
        }
    }
}
