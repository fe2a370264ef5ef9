//! The HTTP layer: one `reqwest` client per Vault address, request building (token,
//! namespace, wrap TTL), status → [`VaultError`] mapping, and per-operation request counts.

use super::error::VaultError;
use crate::config::VaultConfig;
use crate::secret::Secret;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use url::Url;

/// Vault connection settings after config and `VAULT_*` fallbacks are applied.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    pub address: Url,
    pub ca_cert: Option<PathBuf>,
    pub namespace: Option<String>,
    pub skip_verify: bool,
    pub timeout: Duration,
}

impl VaultSettings {
    /// Config first, then the environment (`VAULT_ADDR`, `VAULT_CACERT`, `VAULT_NAMESPACE`,
    /// `VAULT_SKIP_VERIFY`), the same precedence as Vault Agent's own config.
    pub fn resolve(cfg: &VaultConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, VaultError> {
        let nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (text, origin) = match (&cfg.address, nonempty("VAULT_ADDR")) {
            (Some(a), _) => (a.clone(), "vault.address"),
            (None, Some(a)) => (a, "VAULT_ADDR"),
            (None, None) => {
                return Err(VaultError::Settings(
                    "no Vault address: set vault.address in the config file or export VAULT_ADDR (e.g. https://vault.example.com:8200)".into(),
                ))
            }
        };
        let address = super::parse_address(&text).map_err(|m| VaultError::Settings(format!("{origin}: {m}")))?;
        let skip_verify = match (cfg.skip_verify, nonempty("VAULT_SKIP_VERIFY")) {
            (Some(v), _) => v,
            (None, Some(v)) => parse_bool(&v).ok_or_else(|| {
                VaultError::Settings(format!("VAULT_SKIP_VERIFY={v:?} is not a boolean; use true or false"))
            })?,
            (None, None) => false,
        };
        Ok(VaultSettings {
            address,
            ca_cert: cfg.ca_cert.clone().or_else(|| nonempty("VAULT_CACERT").map(PathBuf::from)),
            namespace: cfg.namespace.clone().or_else(|| nonempty("VAULT_NAMESPACE")),
            skip_verify,
            timeout: cfg.timeout.get(),
        })
    }

    /// [`Self::resolve`] with the process environment.
    pub fn from_env(cfg: &VaultConfig) -> Result<Self, VaultError> {
        Self::resolve(cfg, &|name| std::env::var(name).ok())
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" => Some(true),
        "0" | "false" | "f" | "no" => Some(false),
        _ => None,
    }
}

/// HTTP verbs keysync uses; `List` is sent as `GET ?list=true`, which every proxy passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    List,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::List => "LIST",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One Vault API call. `path` is relative to `/v1/`.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    /// Ask Vault to response-wrap the answer (`X-Vault-Wrap-TTL`).
    pub wrap_ttl: Option<String>,
    /// Metric label: what kind of call this is (`kv_read`, `login`, ...).
    pub op: &'static str,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>, op: &'static str) -> Self {
        Request { method, path: path.into(), body: None, wrap_ttl: None, op }
    }

    pub fn get(path: impl Into<String>, op: &'static str) -> Self {
        Self::new(Method::Get, path, op)
    }

    pub fn list(path: impl Into<String>, op: &'static str) -> Self {
        Self::new(Method::List, path, op)
    }

    pub fn post(path: impl Into<String>, op: &'static str, body: Value) -> Self {
        Request { body: Some(body), ..Self::new(Method::Post, path, op) }
    }

    pub fn patch(path: impl Into<String>, op: &'static str, body: Value) -> Self {
        Request { body: Some(body), ..Self::new(Method::Patch, path, op) }
    }

    pub fn delete(path: impl Into<String>, op: &'static str) -> Self {
        Self::new(Method::Delete, path, op)
    }

    pub fn describe(&self) -> (String, String) {
        (self.method.as_str().to_string(), self.path.clone())
    }
}

/// A Vault answer: status and JSON body (`Value::Null` when empty).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Response {
    /// `errors` of an error answer, joined.
    pub fn error_text(&self) -> String {
        let errors: Vec<String> = self
            .body
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let text = if errors.is_empty() { "(no error text)".to_string() } else { errors.join("; ") };
        // Vault's multierror text spans lines; keep messages on one line and short.
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if flat.chars().count() > 400 {
            format!("{}…", flat.chars().take(400).collect::<String>())
        } else {
            flat
        }
    }
}

/// Counts of Vault requests by operation and HTTP status (0 = no answer).
#[derive(Default, Debug)]
pub struct RequestStats {
    counts: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl RequestStats {
    fn record(&self, op: &'static str, status: u16) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry((op, status)).or_insert(0) += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<(&'static str, u16), u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

/// A Vault HTTP client bound to one address. Cheap to clone.
#[derive(Clone, Debug)]
pub struct VaultClient {
    http: reqwest::Client,
    settings: Arc<VaultSettings>,
    stats: Arc<RequestStats>,
}

impl VaultClient {
    pub fn new(settings: VaultSettings) -> Result<Self, VaultError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("keysync/", env!("CARGO_PKG_VERSION")))
            // Never follow redirects: a redirect could send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &settings.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| {
                VaultError::Settings(format!(
                    "cannot read the Vault CA certificate {} ({e}); fix vault.ca_cert or VAULT_CACERT",
                    ca.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                VaultError::Settings(format!(
                    "{} is not a PEM certificate bundle ({e}); fix vault.ca_cert or VAULT_CACERT",
                    ca.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(VaultError::Settings(format!(
                    "{} holds no PEM certificate; fix vault.ca_cert or VAULT_CACERT",
                    ca.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if settings.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| VaultError::Settings(format!("cannot build the HTTP client: {e}")))?;
        Ok(VaultClient { http, settings: Arc::new(settings), stats: Arc::new(RequestStats::default()) })
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    fn url(&self, req: &Request) -> Result<Url, VaultError> {
        let base = self.settings.address.as_str().trim_end_matches('/');
        let mut url = Url::parse(&format!("{base}/v1/{}", req.path.trim_start_matches('/')))
            .map_err(|e| VaultError::Settings(format!("cannot build a URL for {}: {e}", req.path)))?;
        if req.method == Method::List {
            url.query_pairs_mut().append_pair("list", "true");
        }
        Ok(url)
    }

    /// Sends a request and returns the answer whatever its status; only a missing answer is
    /// an error. Use [`Self::send`] unless non-2xx bodies matter (soft-deleted reads).
    pub async fn send_raw(&self, req: &Request, token: Option<&Secret>) -> Result<Response, VaultError> {
        let url = self.url(req)?;
        let method = match req.method {
            Method::Get | Method::List => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.http.request(method, url).header("X-Vault-Request", "true");
        if let Some(token) = token {
            builder = builder.header("X-Vault-Token", token.expose());
        }
        if let Some(ns) = &self.settings.namespace {
            builder = builder.header("X-Vault-Namespace", ns);
        }
        if let Some(ttl) = &req.wrap_ttl {
            builder = builder.header("X-Vault-Wrap-TTL", ttl);
        }
        if let Some(body) = &req.body {
            let content_type =
                if req.method == Method::Patch { "application/merge-patch+json" } else { "application/json" };
            builder = builder.header("Content-Type", content_type).body(body.to_string());
        }
        let answer = match builder.send().await {
            Ok(a) => a,
            Err(e) => {
                self.stats.record(req.op, 0);
                return Err(VaultError::Unreachable {
                    address: self.settings.address.to_string().trim_end_matches('/').to_string(),
                    op: format!("{} {}", req.method.as_str(), req.path),
                    detail: transport_detail(&e),
                });
            }
        };
        let status = answer.status().as_u16();
        self.stats.record(req.op, status);
        // Method, path and status only: the token travels in a header and secrets in bodies,
        // and neither is ever logged (the suite checks trace output against every secret).
        tracing::trace!(method = req.method.as_str(), path = %req.path, status, "vault request");
        let bytes = answer.bytes().await.map_err(|e| VaultError::Unreachable {
            address: self.settings.address.to_string(),
            op: format!("{} {}", req.method.as_str(), req.path),
            detail: transport_detail(&e),
        })?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| VaultError::InvalidResponse {
                method: req.method.as_str().into(),
                path: req.path.clone(),
                detail: format!(
                    "HTTP {status} with a body that is not JSON ({e}); is vault.address pointing at Vault?"
                ),
            })?
        };
        Ok(Response { status, body })
    }

    /// Sends a request; any status outside 2xx becomes a [`VaultError`].
    pub async fn send(&self, req: &Request, token: Option<&Secret>) -> Result<Response, VaultError> {
        let resp = self.send_raw(req, token).await?;
        check_status(req, resp)
    }
}

/// Maps non-2xx answers to errors; CAS mismatches get their own variant.
pub(crate) fn check_status(req: &Request, resp: Response) -> Result<Response, VaultError> {
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    let message = resp.error_text();
    let (method, path) = req.describe();
    if resp.status == 400 && message.contains("check-and-set parameter did not match") {
        return Err(VaultError::CasConflict { path });
    }
    Err(VaultError::Api { method, path, status: resp.status, message })
}

/// The innermost cause of a transport error ("Connection refused", "certificate unknown").
fn transport_detail(err: &reqwest::Error) -> String {
    let mut detail = if err.is_timeout() { "timed out".to_string() } else { err.to_string() };
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if err.is_timeout() && !detail.contains("timed out") {
        detail = format!("timed out: {detail}");
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VaultConfig;
    use std::collections::HashMap;

    fn resolve(cfg: &VaultConfig, env: &[(&str, &str)]) -> Result<VaultSettings, VaultError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        VaultSettings::resolve(cfg, &|k| env.get(k).cloned())
    }

    #[test]
    fn config_wins_over_environment() {
        let cfg = VaultConfig { address: Some("http://a:1".into()), ..Default::default() };
        let s = resolve(&cfg, &[("VAULT_ADDR", "http://b:2")]).unwrap();
        assert_eq!(s.address.as_str(), "http://a:1/");
    }

    #[test]
    fn environment_fills_gaps() {
        let s = resolve(
            &VaultConfig::default(),
            &[("VAULT_ADDR", "http://b:2"), ("VAULT_NAMESPACE", "team"), ("VAULT_SKIP_VERIFY", "1")],
        )
        .unwrap();
        assert_eq!(s.address.as_str(), "http://b:2/");
        assert_eq!(s.namespace.as_deref(), Some("team"));
        assert!(s.skip_verify);
    }

    #[test]
    fn missing_address_says_how_to_set_it() {
        let err = resolve(&VaultConfig::default(), &[]).unwrap_err();
        assert!(err.to_string().contains("VAULT_ADDR"), "{err}");
    }

    #[test]
    fn bad_env_address_names_the_variable() {
        let err = resolve(&VaultConfig::default(), &[("VAULT_ADDR", "localhost:8200")]).unwrap_err();
        assert!(err.to_string().starts_with("VAULT_ADDR:"), "{err}");
    }

    #[test]
    fn error_text_is_one_line() {
        let resp = Response {
            status: 403,
            body: serde_json::json!({"errors": ["1 error occurred:\n\t* permission denied\n\n"]}),
        };
        assert_eq!(resp.error_text(), "1 error occurred: * permission denied");
    }

    #[test]
    fn cas_mismatch_becomes_a_conflict() {
        let req = Request::post("secret/data/keysync/a", "kv_write", serde_json::json!({}));
        let resp = Response {
            status: 400,
            body: serde_json::json!({"errors": ["check-and-set parameter did not match the current version"]}),
        };
        assert!(matches!(check_status(&req, resp), Err(VaultError::CasConflict { .. })));
    }
}
