//! OpenAI Admin API provider: each key is a project service account.
//! Mint = `POST /v1/organization/projects/{project_id}/service_accounts` (answer carries
//! `api_key.value`, `api_key.id` and the service account `id`); revoke = `DELETE
//! /v1/organization/projects/{project_id}/service_accounts/{id}`. The admin key is read from a
//! file at each call (never from the config text) and never logged.

use super::http::{self, Call};
use super::{BoxFuture, Capabilities, Kind, Minted, OwnKey, Provider, ProviderError};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[keys.NAME.provider] type = "openai"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    pub project_id: String,
    /// File holding the organization admin key (`sk-admin-…`).
    pub admin_key_file: PathBuf,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Service accounts are named `<name_prefix>-<key>-<unix time>`; one prefix per keysync
    /// deployment sharing an OpenAI project. No `-` (see `is_named_for`).
    #[serde(default = "default_name_prefix")]
    pub name_prefix: String,
    #[serde(default = "default_timeout")]
    pub timeout: crate::duration::HumanDuration,
}

fn default_base_url() -> String {
    "https://api.openai.com".into()
}
fn default_name_prefix() -> String {
    "keysync".into()
}
fn default_timeout() -> crate::duration::HumanDuration {
    crate::duration::HumanDuration::from_secs(30)
}

impl OpenAiConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.project_id.trim().is_empty() || self.project_id.contains('/') {
            return Err(format!("project_id {:?} must be an OpenAI project id like proj_abc123", self.project_id));
        }
        crate::vault::parse_address(&self.base_url).map_err(|m| format!("base_url: {m}"))?;
        let p = &self.name_prefix;
        let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        if p.is_empty() || p.len() > 64 || !p.chars().all(allowed) {
            return Err(format!(
                "name_prefix {p:?} must be 1-64 letters, digits, '_' or '.' (no '-': keysync names service \
                 accounts `<name_prefix>-<key>-<unix time>` and deletes orphans by that exact name, so a '-' \
                 in the prefix could make another key's accounts look like this key's); e.g. {:?}",
                Some(p.replace(|c: char| !allowed(c), "_").trim_matches('_').to_string())
                    .filter(|s| !s.is_empty() && s.len() <= 64)
                    .unwrap_or_else(default_name_prefix)
            ));
        }
        Ok(())
    }

    fn admin_key(&self) -> Result<Secret, ProviderError> {
        let text = std::fs::read_to_string(&self.admin_key_file).map_err(|e| {
            ProviderError::Config(format!(
                "cannot read the OpenAI admin key from {} ({e})",
                self.admin_key_file.display()
            ))
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(ProviderError::Config(format!(
                "{} is empty; it must hold the admin key",
                self.admin_key_file.display()
            )));
        }
        Ok(Secret::credential(key))
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}/v1/organization/projects/{}/service_accounts{tail}",
            self.base_url.trim_end_matches('/'),
            self.project_id
        )
    }

    fn call<'a>(&self, what: &'a str, method: Method, url: String) -> Result<Call<'a>, ProviderError> {
        let admin = self.admin_key()?;
        Call::new(API, what, method, url, self.timeout.get().max(Duration::from_secs(1)))
            .secret_header(AUTHORIZATION, "Bearer ", admin.expose())
            .map_err(|f| ProviderError::Config(format!("{}: {}", self.admin_key_file.display(), f.describe())))
    }

    /// The name keysync gives the service account it creates for `key` at unix time `now`:
    /// `<name_prefix>-<key>-<unix time>`. [`Self::is_named_for`] is its exact inverse, which is
    /// how [`Self::list_own`] tells the accounts a crash left behind from everyone else's.
    fn account_name(&self, key: &str, now: i64) -> String {
        format!("{}-{key}-{now}", self.name_prefix)
    }

    /// Whether `name` is exactly `<name_prefix>-<key>-<digits>`: a name [`Self::account_name`]
    /// makes for this key and no other.
    ///
    /// Why no other key's name can match: the tail after the last `-` must be all digits, and
    /// digits hold no `-`, so the stem `<name_prefix>-<key>` is fixed by the name. `name_prefix`
    /// may not contain `-` ([`Self::check`]), so the stem's first `-` separates the prefix and
    /// everything after it is the key. Two different (prefix, key) pairs therefore never share
    /// a name: `keysync-openai-1711471533` belongs to key `openai`, and
    /// `keysync-openai-batch-1711471533` to `openai-batch` only (its tail after
    /// `keysync-openai-` is `batch-1711471533`, not digits). What the grammar cannot tell apart
    /// is two keysync deployments (two Vault prefixes) with the same `name_prefix` and key name
    /// in one OpenAI project; docs/configuration.md asks for a `name_prefix` per deployment.
    fn is_named_for(&self, key: &str, name: &str) -> bool {
        let Some(tail) = name
            .strip_prefix(self.name_prefix.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_prefix(key))
            .and_then(|r| r.strip_prefix('-'))
        else {
            return false;
        };
        !tail.is_empty() && tail.len() <= 20 && tail.bytes().all(|b| b.is_ascii_digit())
    }

    /// Creates a service account named for `key` and returns its key. Never repeated on a
    /// busy answer: a second create could mint a second account.
    pub async fn mint_for(&self, key: &str) -> Result<Minted, ProviderError> {
        let what = "create a service account";
        let name = self.account_name(key, crate::clock::now().timestamp());
        let call = self.call(what, Method::POST, self.url(""))?.json(&json!({ "name": name }));
        let answer = http::send(&call).await.map_err(|f| call.failed(f))?;
        if !answer.status.is_success() {
            return Err(call.status_error(&answer, &error_message(&answer.body)));
        }
        let body: Value = serde_json::from_slice(&answer.body).map_err(|_| api_error(what, "the answer is not JSON"))?;
        let account = body.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let value = body.pointer("/api_key/value").and_then(Value::as_str).filter(|s| !s.is_empty());
        let (Some(account), Some(value)) = (account, value) else {
            return Err(api_error(what, "the answer lacks id or api_key.value"));
        };
        if value.chars().any(char::is_whitespace) {
            return Err(api_error(what, "api_key.value contains whitespace"));
        }
        let mut fields = BTreeMap::new();
        fields.insert("project_id".into(), self.project_id.clone());
        if let Some(id) = body.pointer("/api_key/id").and_then(Value::as_str) {
            fields.insert("api_key_id".into(), id.to_string());
        }
        Ok(Minted { api_key: Secret::new(value), key_id: Some(account.to_string()), expires_at: None, fields })
    }

    /// The service accounts keysync created for `key`: those named exactly
    /// `<name_prefix>-<key>-<unix time>` ([`Self::is_named_for`]), so accounts of other keys
    /// (`openai-batch` when cleaning up for `openai`), of people, and of other tools are never
    /// reported. Every page is read first (see [`Self::list_accounts`]).
    ///
    /// Why that suffices for "never an account any key under the prefix refers to": a name
    /// matches one key only, and keysync stores an account's id only in the key it was minted
    /// for. (Someone copying another key's data by hand with `keysync put --field key_id=…`
    /// could break that; the age cutoff of [`super::delete_orphans`] still spares anything
    /// minted within `adopt_after`.)
    pub async fn list_own(&self, key: &str) -> Result<Vec<OwnKey>, ProviderError> {
        let accounts = self.list_accounts().await?;
        Ok(accounts
            .into_iter()
            .filter(|a| self.is_named_for(key, &a.name))
            .map(|a| OwnKey { id: a.id, created_at: chrono::DateTime::from_timestamp(a.created_at, 0) })
            .collect())
    }

    /// Every service account of the project, following OpenAI's documented cursor paging:
    /// `GET …/service_accounts?limit=100[&after=<last_id>]` answers `{"object": "list", "data":
    /// […], "first_id", "last_id", "has_more"}` (limit 1–100, default 20; checked 2026-12 at
    /// developers.openai.com/api/reference/resources/organization/subresources/projects/subresources/service_accounts/methods/list).
    async fn list_accounts(&self) -> Result<Vec<Account>, ProviderError> {
        let what = "list service accounts";
        let mut accounts = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = url::Url::parse(&self.url(""))
                .map_err(|e| ProviderError::Config(format!("base_url: cannot build the service accounts URL: {e}")))?;
            url.query_pairs_mut().append_pair("limit", &PAGE_SIZE.to_string());
            if let Some(cursor) = &after {
                url.query_pairs_mut().append_pair("after", cursor);
            }
            let call = self.call(what, Method::GET, url.to_string())?;
            let answer = http::send_idempotent(&call).await.map_err(|f| call.failed(f))?;
            if !answer.status.is_success() {
                return Err(call.status_error(&answer, &error_message(&answer.body)));
            }
            let page: Page = serde_json::from_slice(&answer.body).map_err(|e| {
                let why = match e.classify() {
                    serde_json::error::Category::Data => "a field is missing or has the wrong type",
                    _ => "the answer is not JSON",
                };
                api_error(what, &format!("not a list of service accounts: {why}"))
            })?;
            let last_in_data = page.data.last().map(|a| a.id.clone());
            accounts.extend(page.data);
            if !page.has_more {
                return Ok(accounts);
            }
            // `last_id` is the documented cursor; the last item's id is the same thing.
            let next = page.last_id.or(last_in_data).filter(|id| !id.is_empty());
            match next {
                Some(id) if after.as_deref() != Some(id.as_str()) => after = Some(id),
                _ => {
                    return Err(api_error(
                        what,
                        "the answer says has_more but gives no new last_id to continue from; nothing deleted",
                    ))
                }
            }
        }
        Err(api_error(
            what,
            &format!("more than {} service accounts ({MAX_PAGES} pages); nothing deleted", MAX_PAGES * PAGE_SIZE),
        ))
    }

    /// Deletes the service account (and so its key). Already gone (404) counts as done.
    pub async fn revoke(&self, account_id: &str) -> Result<(), ProviderError> {
        if account_id.is_empty() || account_id.contains(['/', '?', '#']) {
            return Err(ProviderError::BadKeyId { what: "OpenAI service account", key_id: account_id.to_string() });
        }
        let call = self.call("delete the service account", Method::DELETE, self.url(&format!("/{account_id}")))?;
        let answer = http::send_idempotent(&call).await.map_err(|f| call.failed(f))?;
        if answer.status.is_success() || answer.status.as_u16() == 404 {
            return Ok(());
        }
        Err(call.status_error(&answer, &error_message(&answer.body)))
    }
}

impl Provider for OpenAiConfig {
    fn kind(&self) -> &'static str {
        Self::NAME
    }

    /// Mints, revokes, and lists its own service accounts (for orphan cleanup). Keys are
    /// checked by `[validation]` (preset `openai`), not by the Admin API.
    fn capabilities(&self) -> Capabilities {
        Capabilities { mints: true, mints_locally: false, revokes: true, lists_own: true, validates: false }
    }

    fn mint<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Minted, ProviderError>> {
        Box::pin(self.mint_for(key))
    }

    fn revoke<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(OpenAiConfig::revoke(self, key_id))
    }

    fn list_own<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<OwnKey>, ProviderError>> {
        Box::pin(OpenAiConfig::list_own(self, key))
    }
}

impl Kind for OpenAiConfig {
    const NAME: &'static str = "openai";
    type Config = OpenAiConfig;

    fn build(config: OpenAiConfig) -> Result<Self, ProviderError> {
        config.check().map_err(ProviderError::Config)?;
        Ok(config)
    }
}

/// Who [`Call`]s name in messages.
const API: &str = "OpenAI Admin API";

/// Accounts per list request: the documented maximum.
const PAGE_SIZE: usize = 100;
/// Pages read before giving up: a project with 100,000 service accounts is not keysync's.
const MAX_PAGES: usize = 1000;

/// One page of `GET …/service_accounts`.
#[derive(Deserialize)]
struct Page {
    data: Vec<Account>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    last_id: Option<String>,
}

/// A project service account as listed. An account without `created_at` counts as brand new
/// (never old enough to delete).
#[derive(Deserialize)]
struct Account {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default = "never_old")]
    created_at: i64,
}

fn never_old() -> i64 {
    i64::MAX
}

fn api_error(what: &str, detail: &str) -> ProviderError {
    ProviderError::Api(format!("{API}: could not {what}: {detail}"))
}

/// OpenAI's `{"error": {"message": …}}`, cut short; never the whole body.
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(|m| m.chars().take(200).collect()))
        .unwrap_or_else(|| "no error message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prefix: &str) -> OpenAiConfig {
        OpenAiConfig {
            project_id: "proj_x".into(),
            admin_key_file: "/nonexistent".into(),
            base_url: default_base_url(),
            name_prefix: prefix.into(),
            timeout: default_timeout(),
        }
    }

    #[test]
    fn a_name_belongs_to_exactly_one_key() {
        let c = config("keysync");
        let name = c.account_name("openai", 1711471533);
        assert_eq!(name, "keysync-openai-1711471533");
        assert!(c.is_named_for("openai", &name));
        for other in ["openai-batch", "openai-1711471533", "open", "ai", "openai-"] {
            assert!(!c.is_named_for(other, &name), "{other}");
        }
        let batch = c.account_name("openai-batch", 1711471533);
        assert!(!c.is_named_for("openai", &batch), "openai-batch's account is not openai's");
        assert!(c.is_named_for("openai-batch", &batch));
        // A key name ending in digits cannot swallow another key's timestamp.
        let numbered = c.account_name("openai-2024", 1711471533);
        assert!(!c.is_named_for("openai", &numbered));
        for not_ours in [
            "keysync-openai-",
            "keysync-openai-12a",
            "keysync-openai-1711471533-x",
            "Keysync-openai-1711471533",
            "keysync-openai1711471533",
            "xkeysync-openai-1711471533",
            "keysync-openai-123456789012345678901",
            "CI Service Account",
        ] {
            assert!(!c.is_named_for("openai", not_ours), "{not_ours}");
        }
        assert!(!config("prod").is_named_for("openai", &name), "another prefix, another deployment");
    }

    #[test]
    fn name_prefix_is_checked() {
        assert_eq!(config("keysync").check(), Ok(()));
        assert_eq!(config("prod_gateway.v2").check(), Ok(()));
        let err = config("prod-gateway").check().unwrap_err();
        assert!(err.contains("no '-'") && err.contains("\"prod_gateway\""), "{err}");
        assert!(config("").check().is_err());
        assert!(config("a b").check().is_err());
        assert!(config(&"a".repeat(65)).check().is_err());
    }
}
