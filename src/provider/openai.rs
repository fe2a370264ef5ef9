//! OpenAI Admin API provider: each key is a project service account.
//! Mint = `POST /v1/organization/projects/{project_id}/service_accounts` (answer carries
//! `api_key.value`, `api_key.id` and the service account `id`); revoke = `DELETE
//! /v1/organization/projects/{project_id}/service_accounts/{id}`. The admin key is read from a
//! file at each call (never from the config text) and never logged.

use super::{Minted, ProviderError};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
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

    fn client(&self) -> Result<reqwest::Client, ProviderError> {
        reqwest::Client::builder()
            .timeout(self.timeout.get().max(Duration::from_secs(1)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {e}")))
    }

    /// The name keysync gives the service account it creates for `key` at unix time `now`:
    /// `<name_prefix>-<key>-<unix time>`. [`Self::is_named_for`] is its exact inverse, which is
    /// how [`Self::reconcile`] tells the accounts a crash left behind from everyone else's.
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
    /// in one OpenAI project; the README asks for a `name_prefix` per deployment.
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

    pub async fn mint(&self) -> Result<Minted, ProviderError> {
        self.mint_for("key").await
    }

    pub async fn mint_for(&self, key: &str) -> Result<Minted, ProviderError> {
        let admin = self.admin_key()?;
        let name = self.account_name(key, chrono::Utc::now().timestamp());
        let resp = self
            .client()?
            .post(self.url(""))
            .bearer_auth(admin.expose())
            .json(&json!({ "name": name }))
            .send()
            .await
            .map_err(|e| {
                let refused = e.is_connect() || e.is_builder();
                let message = format!(
                    "OpenAI Admin API: could not create a service account: {}",
                    send_error(e, self.timeout.get())
                );
                if refused {
                    ProviderError::ApiRefused(message)
                } else {
                    ProviderError::Api(message)
                }
            })?;
        let status = resp.status();
        let bytes = read_capped(resp, "create a service account").await?;
        if !status.is_success() {
            return Err(ProviderError::ApiRefused(format!(
                "OpenAI Admin API: could not create a service account: HTTP {status}: {}",
                error_message(&bytes)
            )));
        }
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|_| api_error("create a service account", "the answer is not JSON"))?;
        let account = body.get("id").and_then(Value::as_str).filter(|s| !s.is_empty());
        let value = body.pointer("/api_key/value").and_then(Value::as_str).filter(|s| !s.is_empty());
        let (Some(account), Some(value)) = (account, value) else {
            return Err(api_error("create a service account", "the answer lacks id or api_key.value"));
        };
        if value.chars().any(char::is_whitespace) {
            return Err(api_error("create a service account", "api_key.value contains whitespace"));
        }
        let mut fields = BTreeMap::new();
        fields.insert("project_id".into(), self.project_id.clone());
        if let Some(id) = body.pointer("/api_key/id").and_then(Value::as_str) {
            fields.insert("api_key_id".into(), id.to_string());
        }
        Ok(Minted { api_key: Secret::new(value), key_id: Some(account.to_string()), expires_at: None, fields })
    }

    /// Deletes service accounts keysync created for `key` that no stored version refers to
    /// and that are older than `older_than`: keys minted by an agent that crashed before it
    /// could store them. Returns the ids deleted.
    ///
    /// Only accounts named exactly `<name_prefix>-<key>-<unix time>` are candidates
    /// ([`Self::is_named_for`]), so accounts of other keys (`openai-batch` when cleaning up for
    /// `openai`), of people, and of other tools are never touched. `referenced` holds the
    /// `key_id`s of this key's stored versions. That suffices for "never an account any key
    /// under the prefix refers to": a name matches one key only, and keysync stores an
    /// account's id only in the key it was minted for. (Someone copying another key's data by
    /// hand with `keysync put --field key_id=…` could break that; the age cutoff still spares
    /// anything minted within `older_than`.) Every page is read (`after` = the previous page's
    /// `last_id`, until `has_more` is false) before anything is deleted.
    pub async fn reconcile(
        &self,
        key: &str,
        referenced: &std::collections::BTreeSet<String>,
        older_than: Duration,
    ) -> Result<Vec<String>, ProviderError> {
        let accounts = self.list_accounts().await?;
        let cutoff =
            chrono::Utc::now().timestamp().saturating_sub(i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX));
        let orphans: Vec<&Account> = accounts
            .iter()
            .filter(|a| self.is_named_for(key, &a.name) && !referenced.contains(&a.id) && a.created_at <= cutoff)
            .collect();
        let mut deleted = Vec::new();
        let mut first_error = None;
        for account in orphans.iter() {
            match self.revoke(&account.id).await {
                Ok(()) => deleted.push(account.id.clone()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(deleted),
            Some(e) => Err(api_error(
                "delete orphaned service accounts",
                &format!("deleted {} of {} ({}); first failure: {e}", deleted.len(), orphans.len(), deleted.join(", ")),
            )),
        }
    }

    /// Every service account of the project, following OpenAI's documented cursor paging:
    /// `GET …/service_accounts?limit=100[&after=<last_id>]` answers `{"object": "list", "data":
    /// […], "first_id", "last_id", "has_more"}` (limit 1–100, default 20; checked 2026-12 at
    /// developers.openai.com/api/reference/resources/organization/subresources/projects/subresources/service_accounts/methods/list).
    async fn list_accounts(&self) -> Result<Vec<Account>, ProviderError> {
        let admin = self.admin_key()?;
        let client = self.client()?;
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
            let resp = client
                .get(url)
                .bearer_auth(admin.expose())
                .send()
                .await
                .map_err(|e| api_error(what, &send_error(e, self.timeout.get())))?;
            let status = resp.status();
            let bytes = read_capped(resp, what).await?;
            if !status.is_success() {
                return Err(api_error(what, &format!("HTTP {status}: {}", error_message(&bytes))));
            }
            let page: Page = serde_json::from_slice(&bytes).map_err(|e| {
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
        if account_id.is_empty() || account_id.contains('/') {
            return Err(ProviderError::Config(format!("{account_id:?} is not a service account id")));
        }
        let admin = self.admin_key()?;
        let resp = self
            .client()?
            .delete(self.url(&format!("/{account_id}")))
            .bearer_auth(admin.expose())
            .send()
            .await
            .map_err(|e| api_error("delete the service account", &send_error(e, self.timeout.get())))?;
        let status = resp.status();
        if status.is_success() || status.as_u16() == 404 {
            return Ok(());
        }
        let bytes = read_capped(resp, "delete the service account").await.unwrap_or_default();
        Err(api_error("delete the service account", &format!("HTTP {status}: {}", error_message(&bytes))))
    }
}

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

/// The most of an Admin API answer keysync reads: real answers are a few KiB (a page of 100
/// service accounts); anything bigger is refused rather than buffered, so a broken or hostile
/// endpoint cannot make the agent hold gigabytes.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// Reads the body chunk by chunk, refusing more than [`MAX_ANSWER`] bytes.
async fn read_capped(mut resp: reqwest::Response, what: &str) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        let why = if e.is_timeout() {
            "the answer did not arrive in time (timed out)".into()
        } else {
            e.without_url().to_string()
        };
        api_error(what, &why)
    })? {
        if out.len() + chunk.len() > MAX_ANSWER {
            return Err(api_error(
                what,
                &format!(
                    "the answer is larger than {MAX_ANSWER} bytes; refused (check base_url points at the Admin API)"
                ),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn api_error(what: &str, detail: &str) -> ProviderError {
    ProviderError::Api(format!("OpenAI Admin API: could not {what}: {detail}"))
}

/// A failed request, said without the URL (it is in the config) but with the reason.
fn send_error(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!(
            "no answer within {} (timed out); retry later or raise the provider's timeout",
            humantime::format_duration(timeout)
        );
    }
    if e.is_connect() {
        return "cannot connect; check base_url and the network".into();
    }
    e.without_url().to_string()
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
