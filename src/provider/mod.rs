//! Where new keys come from and how old ones are revoked: generated locally, minted by an
//! operator-supplied command or the OpenAI Admin API, or written by hand. Plus [`validate`]:
//! checking a key against the LLM provider's API before it is promoted, and [`http`]: the one
//! HTTP path (client, timeouts, capped answers, `Retry-After`, error wording) every provider
//! API call takes. No Vault access here; the rotation engine wires these into the
//! create/validate/promote/retire steps.
//!
//! Every provider is a [`Provider`]: the engine asks its [`Capabilities`] (does it mint, revoke,
//! list the keys it made, check keys?) and never which kind it is. `type = "…"` in
//! `[keys.NAME.provider]` picks an entry of [`PROVIDERS`]; the rest of the table is that
//! entry's settings struct, read when the config is loaded so a typo is reported with its field.
//!
//! # Adding a provider
//!
//! One file and one line:
//!
//! 1. `src/provider/<name>.rs` holding
//!    * the settings struct (`#[derive(Serialize, Deserialize)]`, `#[serde(deny_unknown_fields)]`,
//!      defaults via `#[serde(default = …)]`);
//!    * `impl Provider for <Type>`: `kind`, `capabilities`, and the methods its capabilities
//!      promise (`mint`, `revoke`, `list_own`, `validate`; the others keep their defaults,
//!      which refuse); HTTP calls go through [`http::send`] / [`http::send_idempotent`];
//!    * `impl Kind for <Type>`: `NAME` (the `type` string), `Config` (the settings struct) and
//!      `build` (checks serde cannot do, then the provider).
//! 2. In this file, the line `<name>::<Type>,` in the `providers!` list below (it declares the
//!    module and registers the type).
//!
//! Nothing else changes: not the engine, not `config/`. The config reference (docs/configuration.md)
//! gets a section for the new `type` (tests/config_reference.rs fails until it has one). The
//! unit test `a_provider_is_one_type_and_one_registration` builds a provider this way.

pub mod anthropic;
pub mod http;
pub mod validate;

/// Declares each provider's module and registers its type, in the order error messages list
/// the `type` values. A new provider is one line here.
macro_rules! providers {
    ($($module:ident :: $ty:ident),* $(,)?) => {
        $(pub mod $module;)*
        /// Every provider type keysync knows.
        pub const PROVIDERS: &[Registration] = &[$(register::<$module::$ty>()),*];
    };
}

providers![generate::GenerateConfig, command::CommandProvider, openai::OpenAiConfig, manual::ManualConfig,];

pub use command::{CommandConfig, CommandProvider};
pub use generate::{Charset, GenerateConfig};
pub use manual::{ManualConfig, ManualRevoke};
pub use openai::OpenAiConfig;
pub use validate::{Preset, Validation, Verdict};

use crate::secret::Secret;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What provider methods return: a boxed future keeps [`Provider`] usable as `dyn Provider`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a provider can do; the engine decides by these, never by the provider's kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Makes new keys ([`Provider::mint`]). Without it keys are put by people (`keysync put`):
    /// see [`Capabilities::manual`].
    pub mints: bool,
    /// Makes keys without calling anyone (`generate`): nothing exists outside Vault until the
    /// key is stored, so a crash before the write orphans nothing and the rotation records no
    /// intent first (two requests fewer).
    pub mints_locally: bool,
    /// Switches a key off by its `key_id` ([`Provider::revoke`]): retired and refused keys are
    /// revoked.
    pub revokes: bool,
    /// Lists the keys it made for a key name ([`Provider::list_own`]), so keys an interrupted
    /// rotation minted but never stored are found and revoked ([`delete_orphans`]).
    pub lists_own: bool,
    /// Checks a key itself ([`Provider::validate`]) when the key has no `[validation]`.
    pub validates: bool,
}

impl Capabilities {
    /// Keys are written by people: a due rotation is reported overdue instead of minting, and a
    /// declared key that does not exist yet is an error rather than created.
    pub fn manual(&self) -> bool {
        !self.mints
    }
}

/// A key a provider made for a key name, as [`Provider::list_own`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnKey {
    /// The id [`Provider::revoke`] takes (what [`Minted::key_id`] was).
    pub id: String,
    /// When the provider made it; `None` counts as brand new (never old enough to delete).
    pub created_at: Option<DateTime<Utc>>,
}

/// A configured provider. Methods a provider's [`Capabilities`] do not promise keep their
/// defaults, which refuse with a [`ProviderError`] that names the provider type.
pub trait Provider: Send + Sync + fmt::Debug {
    /// The `type` it is configured with, for messages.
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Creates a new key at the provider (step 1 of a rotation). `key` is keysync's name for
    /// it; providers that label what they create use it.
    fn mint<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Minted, ProviderError>> {
        let _ = key;
        let kind = self.kind();
        Box::pin(async move { Err(ProviderError::CannotMint(kind)) })
    }

    /// Revokes a key by the id returned when it was minted (step 4). A key already gone counts
    /// as revoked.
    fn revoke<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        let _ = key_id;
        let kind = self.kind();
        Box::pin(async move { Err(ProviderError::RevokeUnsupported(kind)) })
    }

    /// Every key this provider made for `key` (and for no other key name), live at the
    /// provider, read to the end: a partial list is an error, never a short answer.
    fn list_own<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<OwnKey>, ProviderError>> {
        let _ = key;
        let kind = self.kind();
        Box::pin(async move { Err(ProviderError::ListUnsupported(kind)) })
    }

    /// Checks `key` against the provider's API.
    fn validate<'a>(&'a self, key: &'a Secret) -> BoxFuture<'a, Verdict> {
        let _ = key;
        let kind = self.kind();
        Box::pin(async move { Verdict::Undecided(format!("provider type \"{kind}\" cannot check keys")) })
    }
}

/// A provider type as its file declares it, for [`register`].
pub trait Kind: Provider + Sized + 'static {
    /// The `type = "…"` value that selects it.
    const NAME: &'static str;
    /// Its settings: the rest of `[keys.NAME.provider]`.
    type Config: Serialize + DeserializeOwned;
    /// Checks what serde cannot (lengths, empty argv, URLs) and builds the provider. Only
    /// [`ProviderError::Config`] errors: the config is at fault.
    fn build(config: Self::Config) -> Result<Self, ProviderError>;
}

/// A provider's settings as read: the `[keys.NAME.provider]` table without `type`.
type Settings = Map<String, Value>;

/// One entry of [`PROVIDERS`]: a `type` name and how to read and build it.
pub struct Registration {
    pub name: &'static str,
    /// Reads the settings into the type's struct and back, so unknown fields and wrong types
    /// are refused at load and every default is filled in (printed configs show them).
    normalize: fn(Settings) -> Result<Settings, String>,
    build: fn(&Settings) -> Result<Arc<dyn Provider>, ProviderError>,
}

/// The [`Registration`] of `K`.
pub const fn register<K: Kind>() -> Registration {
    Registration { name: K::NAME, normalize: normalize::<K>, build: build_kind::<K> }
}

fn normalize<K: Kind>(settings: Settings) -> Result<Settings, String> {
    let config: K::Config = serde_json::from_value(Value::Object(settings.clone()))
        .map_err(|e| name_the_field(&e.to_string(), &settings))?;
    match serde_json::to_value(&config) {
        Ok(Value::Object(mut map)) => {
            // TOML has no null: an unset optional field is left out.
            map.retain(|_, v| !v.is_null());
            Ok(map)
        }
        Ok(_) => Err(format!("provider type \"{}\": its settings are not a table", K::NAME)),
        Err(e) => Err(format!("provider type \"{}\": {e}", K::NAME)),
    }
}

/// serde names a bad enum value but not its field (`unknown variant `emoji`, expected …`):
/// put the field in front when one top-level setting holds that value (`charset: unknown …`).
fn name_the_field(message: &str, settings: &Settings) -> String {
    let bad = message.strip_prefix("unknown variant `").and_then(|r| r.split('`').next());
    let field = bad.and_then(|bad| settings.iter().find(|(_, v)| v.as_str() == Some(bad)).map(|(k, _)| k));
    match field {
        Some(field) => format!("{field}: {message}"),
        None => message.to_string(),
    }
}

fn build_kind<K: Kind>(settings: &Map<String, Value>) -> Result<Arc<dyn Provider>, ProviderError> {
    let config: K::Config = serde_json::from_value(Value::Object(settings.clone()))
        .map_err(|e| ProviderError::Config(format!("{}: {e}", K::NAME)))?;
    Ok(Arc::new(K::build(config)?))
}

fn registration(kind: &str) -> Option<&'static Registration> {
    PROVIDERS.iter().find(|r| r.name == kind)
}

/// The registered `type` names, for "expected one of" messages.
pub fn kinds() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| PROVIDERS.iter().map(|r| r.name).collect())
}

/// `[keys.NAME.provider]`: a registered `type` and its settings, already checked against that
/// type's settings struct (defaults filled in).
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderConfig {
    kind: &'static str,
    settings: Map<String, Value>,
}

impl ProviderConfig {
    /// The config of provider type `K` with `config` as its settings (for code and tests).
    pub fn of<K: Kind>(config: &K::Config) -> Result<ProviderConfig, ProviderError> {
        let settings = match serde_json::to_value(config) {
            Ok(Value::Object(map)) => map,
            _ => return Err(ProviderError::Config(format!("{}: the settings are not a table", K::NAME))),
        };
        let settings = normalize::<K>(settings).map_err(ProviderError::Config)?;
        Ok(ProviderConfig { kind: K::NAME, settings })
    }

    /// The `type`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Checks the settings and builds the provider.
    pub fn build(&self) -> Result<Arc<dyn Provider>, ProviderError> {
        let reg = registration(self.kind)
            .ok_or_else(|| ProviderError::Config(format!("unknown provider type {:?}", self.kind)))?;
        (reg.build)(&self.settings)
    }
}

impl Serialize for ProviderConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.settings.len() + 1))?;
        map.serialize_entry("type", self.kind)?;
        for (k, v) in &self.settings {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ProviderConfig {
    /// Reads `type`, then the rest as that type's settings: an unknown `type` lists the
    /// registered ones, an unknown field lists the type's fields (serde's own wording, which
    /// the config loader turns into field / fix messages).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = Map::<String, Value>::deserialize(d)?;
        let kind = match table.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(_) => return Err(D::Error::custom("`type` must be a string naming the provider type")),
            None => return Err(D::Error::missing_field("type")),
        };
        let Some(reg) = registration(&kind) else { return Err(D::Error::unknown_variant(&kind, kinds())) };
        let settings = (reg.normalize)(table).map_err(D::Error::custom)?;
        Ok(ProviderConfig { kind: reg.name, settings })
    }
}

/// Revokes the keys `provider` made for `key` that no stored version refers to and that are
/// older than `older_than`: keys minted by an agent that crashed before it could store them.
/// Returns the ids revoked. Needs [`Capabilities::lists_own`].
///
/// Only what [`Provider::list_own`] reports for `key` is a candidate, so other keys' keys, and
/// people's and other tools' keys, are never touched. `referenced` holds the `key_id`s of this
/// key's stored versions; the age cutoff spares anything minted within `older_than` (another
/// agent may be about to store it). The whole list is read before anything is revoked.
pub async fn delete_orphans(
    provider: &dyn Provider,
    key: &str,
    referenced: &BTreeSet<String>,
    older_than: Duration,
) -> Result<Vec<String>, ProviderError> {
    let own = provider.list_own(key).await?;
    let cutoff = crate::clock::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let orphans: Vec<&OwnKey> =
        own.iter().filter(|k| !referenced.contains(&k.id) && k.created_at.is_some_and(|t| t <= cutoff)).collect();
    let mut deleted = Vec::new();
    let mut first_error = None;
    for orphan in &orphans {
        match provider.revoke(&orphan.id).await {
            Ok(()) => deleted.push(orphan.id.clone()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(deleted),
        Some(e) => Err(ProviderError::Api(format!(
            "provider type \"{}\": could not revoke every orphaned key of {key}: revoked {} of {} ({}); first failure: {e}",
            provider.kind(),
            deleted.len(),
            orphans.len(),
            deleted.join(", ")
        ))),
    }
}

/// The check for a new key: the key's `[validation]` when it has one, else the provider's own
/// check when it [`Capabilities::validates`], else none (`None`: promote unchecked).
pub async fn check_key(provider: &dyn Provider, validation: Option<&Validation>, key: &Secret) -> Option<Verdict> {
    match validation {
        Some(v) => Some(v.validate(key).await),
        None if provider.capabilities().validates => Some(provider.validate(key).await),
        None => None,
    }
}

/// A freshly minted key and what the provider told us about it.
#[derive(Clone, PartialEq)]
pub struct Minted {
    pub api_key: Secret,
    /// The provider's id for the key, needed to revoke it later.
    pub key_id: Option<String>,
    /// When the provider will expire the key; rotation aims for 2/3 of the lifetime.
    pub expires_at: Option<DateTime<Utc>>,
    /// Other string fields the minting command returned (stored next to the key).
    pub fields: BTreeMap<String, String>,
}

// Hand-written so that extra fields (which may hold other credentials) are never printed.
impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("api_key", &self.api_key)
            .field("key_id", &self.key_id)
            .field("expires_at", &self.expires_at)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why minting or revoking failed. Messages never contain a key: command stdout is never
/// quoted, JSON problems are described by field name and type only, and what an API says back
/// is stripped of the credentials sent ([`http::Call::redact`]).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("keys of provider type \"{0}\" are managed by hand: write a new one with `keysync put`")]
    CannotMint(&'static str),
    #[error("provider type \"{0}\" cannot revoke keys")]
    RevokeUnsupported(&'static str),
    #[error("provider type \"{0}\" cannot list the keys it made")]
    ListUnsupported(&'static str),
    #[error("invalid provider config: {0}")]
    Config(String),
    /// A stored `key_id` that cannot be one of this provider's ids (it would change the URL):
    /// nothing was sent.
    #[error("{key_id:?} is not a {what} id; nothing was sent (fix or remove the version's key_id field)")]
    BadKeyId { what: &'static str, key_id: String },
    /// A provider's API refused the request (an error status, no connection): nothing was
    /// minted (or, for a revocation, revoked).
    #[error("{0}")]
    ApiRefused(String),
    /// A provider's API answered with something unusable, or not in time: it may have minted
    /// a key keysync could not take.
    #[error("{0}")]
    Api(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("could not start {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{program:?} failed: {source}")]
    Io { program: String, source: std::io::Error },
    #[error("{program:?} exited with {status}; stderr: {stderr:?}")]
    Exit { program: String, status: String, stderr: String },
    #[error("{program:?} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program:?} printed more than {limit} bytes on stdout; refused")]
    OutputTooLarge { program: String, limit: usize },
    #[error("{program:?} printed invalid output: {reason}")]
    BadOutput { program: String, reason: String },
}

impl ProviderError {
    /// Whether the provider certainly holds no new key after this failure: the request never
    /// went out, or was refused outright. Otherwise (a timeout, an unreadable answer) a key
    /// may exist at the provider, and the rotation intent stays recorded so `status` says so.
    pub fn nothing_minted(&self) -> bool {
        matches!(
            self,
            ProviderError::CannotMint(_)
                | ProviderError::RevokeUnsupported(_)
                | ProviderError::ListUnsupported(_)
                | ProviderError::BadKeyId { .. }
                | ProviderError::Config(_)
                | ProviderError::Random(_)
                | ProviderError::Spawn { .. }
                | ProviderError::Exit { .. }
                | ProviderError::ApiRefused(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<ProviderConfig, String> {
        toml::from_str::<ProviderConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn config_is_tagged_by_type_and_refuses_unknown_fields() {
        let g = read("type = \"generate\"\nprefix = \"sk-\"").unwrap();
        assert_eq!(g.kind(), "generate");
        assert_eq!(
            g,
            ProviderConfig::of::<GenerateConfig>(&GenerateConfig { prefix: "sk-".into(), ..Default::default() })
                .unwrap()
        );
        assert_eq!(g.settings.get("length"), Some(&Value::from(48)), "defaults are filled in");
        assert_eq!(read("type = \"command\"\ncommand = [\"mint\"]").unwrap().kind(), "command");
        let m = read("type = \"manual\"").unwrap();
        assert_eq!(m, ProviderConfig::of::<ManualConfig>(&ManualConfig { revoke: None }).unwrap());
        let err = read("type = \"manual\"\nfoo = 1").unwrap_err();
        assert!(err.contains("unknown field `foo`, expected `revoke`"), "{err}");
        let err = read("type = \"generate\"\nlenght = 40").unwrap_err();
        assert!(err.contains("unknown field `lenght`, expected one of `prefix`, `length`, `charset`"), "{err}");
        assert!(read("type = \"command\"\ncommand = [\"x\"]\nshell = true").is_err());
        let err = read("type = \"magic\"").unwrap_err();
        assert!(
            err.contains("unknown variant `magic`, expected one of `generate`, `command`, `openai`, `manual`"),
            "the registered types, in order: {err}"
        );
        assert!(read("prefix = \"x\"").unwrap_err().contains("missing field `type`"));
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        for text in [
            "type = \"generate\"\ncharset = \"hex\"",
            "type = \"command\"\ncommand = [\"mint\"]\ntimeout = \"5s\"",
            "type = \"openai\"\nproject_id = \"proj_1\"\nadmin_key_file = \"/a\"",
            "type = \"manual\"\nrevoke = { anthropic = { admin_key_file = \"/a\" } }",
        ] {
            let config = read(text).unwrap();
            let printed = toml::to_string(&config).unwrap();
            assert_eq!(read(&printed).unwrap(), config, "{printed}");
        }
    }

    #[tokio::test]
    async fn the_engine_sees_capabilities_not_kinds() {
        let generate = ProviderConfig::of::<GenerateConfig>(&GenerateConfig::default()).unwrap().build().unwrap();
        let caps = generate.capabilities();
        assert!(caps.mints && !caps.revokes && !caps.lists_own && !caps.manual());
        let minted = generate.mint("gateway").await.unwrap();
        assert_eq!(minted.api_key.expose().len(), 48);
        assert!(matches!(generate.revoke("x").await, Err(ProviderError::RevokeUnsupported("generate"))));
        assert!(!format!("{minted:?}").contains(minted.api_key.expose()));

        let manual = ProviderConfig::of::<ManualConfig>(&ManualConfig { revoke: None }).unwrap().build().unwrap();
        assert!(manual.capabilities().manual() && !manual.capabilities().revokes);
        let err = manual.mint("k").await.unwrap_err();
        assert!(err.nothing_minted() && err.to_string().contains("keysync put"), "{err}");
        let with_revoke: ProviderConfig =
            toml::from_str("type = \"manual\"\nrevoke = { anthropic = { admin_key_file = \"/a\" } }").unwrap();
        assert!(with_revoke.build().unwrap().capabilities().revokes);

        let command = read("type = \"command\"\ncommand = [\"mint\"]").unwrap().build().unwrap();
        assert!(command.capabilities().mints && !command.capabilities().revokes);
        let openai =
            read("type = \"openai\"\nproject_id = \"proj_1\"\nadmin_key_file = \"/a\"").unwrap().build().unwrap();
        let caps = openai.capabilities();
        assert!(caps.mints && caps.revokes && caps.lists_own && !caps.validates);

        let bad = ProviderConfig::of::<GenerateConfig>(&GenerateConfig { length: 8, ..Default::default() }).unwrap();
        assert!(matches!(bad.build(), Err(ProviderError::Config(_))));
    }

    /// A provider written the way the module doc says: one type, its `Provider` and `Kind`
    /// impls, and one registration. It mints numbered keys, revokes and lists them, and checks
    /// keys itself.
    #[derive(Debug)]
    struct Counter {
        config: CounterConfig,
        made: std::sync::Mutex<Vec<(String, bool)>>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CounterConfig {
        #[serde(default = "default_start")]
        start: u32,
    }

    fn default_start() -> u32 {
        1
    }

    impl Provider for Counter {
        fn kind(&self) -> &'static str {
            Self::NAME
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities { mints: true, mints_locally: false, revokes: true, lists_own: true, validates: true }
        }
        fn mint<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Minted, ProviderError>> {
            Box::pin(async move {
                let mut made = self.made.lock().unwrap();
                let id = format!("{key}-{}", self.config.start as usize + made.len());
                made.push((id.clone(), true));
                Ok(Minted {
                    api_key: Secret::new(format!("sk-counter-{id}")),
                    key_id: Some(id),
                    expires_at: None,
                    fields: BTreeMap::new(),
                })
            })
        }
        fn revoke<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
            Box::pin(async move {
                for (id, live) in self.made.lock().unwrap().iter_mut() {
                    if id == key_id {
                        *live = false;
                    }
                }
                Ok(())
            })
        }
        fn list_own<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<OwnKey>, ProviderError>> {
            let long_ago = Some(Utc::now() - chrono::Duration::hours(1));
            Box::pin(async move {
                let made = self.made.lock().unwrap();
                Ok(made
                    .iter()
                    .filter(|(id, live)| {
                        // `<key>-<digits>`: `svc-batch-9` is not `svc`'s.
                        let n = id.strip_prefix(key).and_then(|r| r.strip_prefix('-'));
                        *live && n.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .map(|(id, _)| OwnKey { id: id.clone(), created_at: long_ago })
                    .collect())
            })
        }
        fn validate<'a>(&'a self, key: &'a Secret) -> BoxFuture<'a, Verdict> {
            Box::pin(async move {
                let live = self
                    .made
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(id, live)| *live && key.expose() == format!("sk-counter-{id}"));
                if live {
                    Verdict::Valid
                } else {
                    Verdict::Invalid("not a live counter key".into())
                }
            })
        }
    }

    impl Kind for Counter {
        const NAME: &'static str = "counter";
        type Config = CounterConfig;
        fn build(config: CounterConfig) -> Result<Self, ProviderError> {
            Ok(Counter { config, made: Default::default() })
        }
    }

    #[tokio::test]
    async fn a_provider_is_one_type_and_one_registration() {
        // The line a new provider adds to `providers!` makes exactly this registration.
        let registry = [register::<Counter>()];
        let reg = &registry[0];
        assert_eq!(reg.name, "counter");
        let table: Map<String, Value> = serde_json::from_str(r#"{"start": 7}"#).unwrap();
        let settings = (reg.normalize)(table).unwrap();
        assert!((reg.normalize)(serde_json::from_str(r#"{"stat": 7}"#).unwrap())
            .unwrap_err()
            .contains("unknown field"));
        let provider = (reg.build)(&settings).unwrap();
        // What the engine does with it, through capabilities only.
        assert!(!provider.capabilities().manual());
        let a = provider.mint("svc").await.unwrap();
        let b = provider.mint("svc").await.unwrap();
        let other = provider.mint("svc-batch").await.unwrap();
        assert_eq!(a.key_id.as_deref(), Some("svc-7"));
        assert_eq!(
            check_key(&*provider, None, &a.api_key).await,
            Some(Verdict::Valid),
            "its own check, no [validation]"
        );
        let referenced = BTreeSet::from([b.key_id.clone().unwrap()]);
        let deleted = delete_orphans(&*provider, "svc", &referenced, Duration::from_secs(60)).await.unwrap();
        assert_eq!(deleted, vec!["svc-7".to_string()], "the unreferenced key of this name only");
        assert!(matches!(check_key(&*provider, None, &a.api_key).await, Some(Verdict::Invalid(_))));
        assert_eq!(
            check_key(&*provider, None, &other.api_key).await,
            Some(Verdict::Valid),
            "another key name's key is alive"
        );
        // A configured [validation] takes precedence over the provider's own check.
        let elsewhere =
            Validation { base_url: Some("http://127.0.0.1:1".into()), ..Validation::preset(Preset::Openai) };
        assert!(matches!(check_key(&*provider, Some(&elsewhere), &b.api_key).await, Some(Verdict::Undecided(_))));
    }

    #[tokio::test]
    async fn what_a_provider_does_not_promise_it_refuses() {
        for reg in PROVIDERS {
            assert!(registration(reg.name).is_some());
        }
        assert_eq!(kinds(), ["generate", "command", "openai", "manual"]);
        let generate = ProviderConfig::of::<GenerateConfig>(&GenerateConfig::default()).unwrap().build().unwrap();
        assert!(matches!(generate.list_own("k").await, Err(ProviderError::ListUnsupported("generate"))));
        let none = BTreeSet::new();
        let err = delete_orphans(&*generate, "k", &none, Duration::ZERO).await.unwrap_err();
        assert!(matches!(err, ProviderError::ListUnsupported("generate")), "{err:?}");
        assert_eq!(check_key(&*generate, None, &Secret::new("sk-x")).await, None, "no check: promoted unchecked");
        assert!(matches!(generate.validate(&Secret::new("sk-x")).await, Verdict::Undecided(_)));
    }
}
