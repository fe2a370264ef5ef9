//! The HTTP layer: one `reqwest` client per Vault address (TLS settings, no redirects), the
//! failover and election retry over the addresses, status → [`VaultError`] mapping, and
//! per-operation request counts. Every call is made by vaultrs (see `transport.rs`); this file
//! decides where it goes, how often, and what its failure means.

use super::config::VaultConfig;
use super::error::VaultError;
use super::transport::{self, Attempt, Failure};
use crate::secret::Secret;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use url::Url;

/// Vault connection settings after config and `VAULT_*` fallbacks are applied.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    /// The first address (the one messages name when there is only one).
    pub address: Url,
    /// Every address, in the order they are tried.
    pub addresses: Vec<Url>,
    pub ca_cert: Option<PathBuf>,
    /// A directory of PEM CA files.
    pub ca_path: Option<PathBuf>,
    /// The name Vault's certificate is checked against instead of the address's host.
    pub tls_server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub namespace: Option<String>,
    pub skip_verify: bool,
    pub timeout: Duration,
}

impl VaultSettings {
    /// Config first, then the environment (`VAULT_ADDR`, `VAULT_CACERT`, `VAULT_CAPATH`,
    /// `VAULT_TLS_SERVER_NAME`, `VAULT_CLIENT_CERT`, `VAULT_CLIENT_KEY`, `VAULT_NAMESPACE`,
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
        let addresses = super::parse_addresses(&text).map_err(|m| VaultError::Settings(format!("{origin}: {m}")))?;
        let skip_verify = match (cfg.skip_verify, nonempty("VAULT_SKIP_VERIFY")) {
            (Some(v), _) => v,
            (None, Some(v)) => parse_bool(&v).ok_or_else(|| {
                VaultError::Settings(format!("VAULT_SKIP_VERIFY={v:?} is not a boolean; use true or false"))
            })?,
            (None, None) => false,
        };
        let tls_server_name = cfg.tls_server_name.clone().or_else(|| nonempty("VAULT_TLS_SERVER_NAME"));
        if let Some(name) = &tls_server_name {
            if name.trim().is_empty() || name.contains(['/', ':', ' ']) {
                return Err(VaultError::Settings(format!(
                    "vault.tls_server_name / VAULT_TLS_SERVER_NAME {name:?} is not a host name; give the DNS name in Vault's certificate (e.g. vault.example.com)"
                )));
            }
        }
        let client_cert = cfg.client_cert.clone().or_else(|| nonempty("VAULT_CLIENT_CERT").map(PathBuf::from));
        let client_key = cfg.client_key.clone().or_else(|| nonempty("VAULT_CLIENT_KEY").map(PathBuf::from));
        if client_cert.is_some() != client_key.is_some() {
            return Err(VaultError::Settings(
                "a client certificate needs both vault.client_cert (VAULT_CLIENT_CERT) and vault.client_key (VAULT_CLIENT_KEY); set the missing one".into(),
            ));
        }
        Ok(VaultSettings {
            address: addresses[0].clone(),
            addresses,
            ca_cert: cfg.ca_cert.clone().or_else(|| nonempty("VAULT_CACERT").map(PathBuf::from)),
            ca_path: cfg.ca_path.clone().or_else(|| nonempty("VAULT_CAPATH").map(PathBuf::from)),
            tls_server_name,
            client_cert,
            client_key,
            namespace: cfg.namespace.clone().or_else(|| nonempty("VAULT_NAMESPACE")),
            skip_verify,
            timeout: cfg.timeout.get(),
        })
    }

    /// [`Self::resolve`] with the process environment.
    pub fn from_env(cfg: &VaultConfig) -> Result<Self, VaultError> {
        Self::resolve(cfg, &|name| std::env::var(name).ok())
    }

    /// Which CA settings are in force, for messages: what to fix when a certificate is not
    /// trusted.
    fn ca_in_use(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = &self.ca_cert {
            parts.push(format!("vault.ca_cert / VAULT_CACERT = {}", f.display()));
        }
        if let Some(d) = &self.ca_path {
            parts.push(format!("vault.ca_path / VAULT_CAPATH = {}", d.display()));
        }
        if parts.is_empty() {
            "no CA is configured, so only the system's root CAs are trusted".into()
        } else {
            format!("trusted: {}", parts.join(", "))
        }
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

/// One Vault API call. `path` is relative to `/v1/`. For a call vaultrs makes it only names
/// the call (messages, metrics, the KV mount check, whether a 307 may be retried); for a raw
/// call (merge-PATCH, the mount check, the seal status) it is also what is sent.
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

/// One address and the HTTP client that talks to it (its own, so `tls_server_name` can map
/// the certificate name to this address).
struct Endpoint {
    url: Url,
    http: reqwest::Client,
    /// vaultrs' settings for this address, every field set (see `transport.rs`).
    vaultrs: Arc<vaultrs::client::VaultClientSettings>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url.as_str()).finish()
    }
}

/// How long one request keeps retrying while no node is active (a raft election took
/// 10.8–14.7 s on an idle machine, and standbys may need a few seconds more to forward to the
/// new leader), before it fails with [`VaultError::NoActiveNode`].
const ELECTION_PATIENCE: Duration = Duration::from_secs(30);

/// A Vault HTTP client over one or more addresses (tried in order, sticking to the one that
/// last answered). Cheap to clone.
#[derive(Clone, Debug)]
pub struct VaultClient {
    endpoints: Arc<Vec<Endpoint>>,
    /// Index of the endpoint that answered last.
    active: Arc<AtomicUsize>,
    settings: Arc<VaultSettings>,
    stats: Arc<RequestStats>,
    /// `vault` or `bao`, once the server told us which it is (see [`Self::cli_name`]).
    flavor: Arc<OnceLock<&'static str>>,
}

/// Reads the CA files: `ca_cert` (a bundle) and every PEM file in `ca_path`.
fn load_roots(settings: &VaultSettings) -> Result<Vec<reqwest::Certificate>, VaultError> {
    let mut roots = Vec::new();
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
        roots.extend(certs);
    }
    if let Some(dir) = &settings.ca_path {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            VaultError::Settings(format!(
                "cannot read the CA directory {} ({e}); vault.ca_path / VAULT_CAPATH must name a directory of PEM files",
                dir.display()
            ))
        })?;
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        let mut found = 0;
        for file in files {
            let is_pem = file.extension().is_some_and(|e| e == "pem" || e == "crt" || e == "cer");
            if !is_pem || !file.is_file() {
                continue;
            }
            let pem = std::fs::read(&file).map_err(|e| {
                VaultError::Settings(format!("cannot read {} ({e}) in vault.ca_path / VAULT_CAPATH", file.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                VaultError::Settings(format!(
                    "{} in vault.ca_path / VAULT_CAPATH is not a PEM certificate ({e}); remove it or fix it",
                    file.display()
                ))
            })?;
            found += certs.len();
            roots.extend(certs);
        }
        if found == 0 {
            return Err(VaultError::Settings(format!(
                "the CA directory {} (vault.ca_path / VAULT_CAPATH) holds no *.pem, *.crt or *.cer certificate",
                dir.display()
            )));
        }
    }
    Ok(roots)
}

/// The client certificate and key as one identity.
fn load_identity(settings: &VaultSettings) -> Result<Option<reqwest::Identity>, VaultError> {
    let (Some(cert), Some(key)) = (&settings.client_cert, &settings.client_key) else { return Ok(None) };
    let read = |path: &PathBuf, field: &str| {
        std::fs::read(path).map_err(|e| {
            VaultError::Settings(format!(
                "cannot read the client {field} {} ({e}); fix vault.client_{field} or VAULT_CLIENT_{}",
                path.display(),
                field.to_uppercase()
            ))
        })
    };
    let mut pem = read(cert, "cert")?;
    pem.push(b'\n');
    pem.extend(read(key, "key")?);
    let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
        VaultError::Settings(format!(
            "vault.client_cert {} and vault.client_key {} are not a PEM certificate and private key ({}); give PEM files (the key unencrypted)",
            cert.display(),
            key.display(),
            transport_detail(&e)
        ))
    })?;
    Ok(Some(identity))
}

/// Resolves `tls_server_name` to the address's own host, so the certificate is checked
/// against the name while the connection goes to the address.
#[derive(Debug)]
struct ServerNameResolver {
    name: String,
    host: String,
}

impl reqwest::dns::Resolve for ServerNameResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host =
            if name.as_str().eq_ignore_ascii_case(&self.name) { self.host.clone() } else { name.as_str().to_string() };
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), 0)).await?;
            let list: Vec<std::net::SocketAddr> = addrs.collect();
            Ok(Box::new(list.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl VaultClient {
    pub fn new(settings: VaultSettings) -> Result<Self, VaultError> {
        let roots = load_roots(&settings)?;
        let identity = load_identity(&settings)?;
        if settings.skip_verify {
            tracing::warn!(
                "vault.skip_verify / VAULT_SKIP_VERIFY is on: Vault's TLS certificate is not checked, so anyone who can intercept the connection can pose as Vault, read every key and take keysync's token; set vault.ca_cert (or VAULT_CACERT) to the CA that signed Vault's certificate and turn skip_verify off"
            );
        }
        let mut endpoints = Vec::new();
        for address in &settings.addresses {
            let mut builder = reqwest::Client::builder()
                .timeout(settings.timeout)
                .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
                .user_agent(concat!("keysync/", env!("CARGO_PKG_VERSION")))
                // Never follow redirects: a redirect could send the token elsewhere.
                .redirect(reqwest::redirect::Policy::none());
            for cert in &roots {
                builder = builder.add_root_certificate(cert.clone());
            }
            if let Some(id) = &identity {
                builder = builder.identity(id.clone());
            }
            if settings.skip_verify {
                builder = builder.danger_accept_invalid_certs(true);
            }
            let mut url = address.clone();
            if let (Some(name), Some(host)) = (&settings.tls_server_name, address.host_str()) {
                if !host.eq_ignore_ascii_case(name) {
                    builder = builder
                        .dns_resolver(Arc::new(ServerNameResolver { name: name.clone(), host: host.to_string() }));
                    url.set_host(Some(name)).map_err(|e| {
                        VaultError::Settings(format!(
                            "vault.tls_server_name / VAULT_TLS_SERVER_NAME {name:?} is not a host name ({e})"
                        ))
                    })?;
                }
            }
            let http =
                builder.build().map_err(|e| VaultError::Settings(format!("cannot build the HTTP client: {e}")))?;
            let vaultrs = Arc::new(transport::vaultrs_settings(
                &url,
                settings.namespace.clone(),
                settings.timeout,
                settings.skip_verify,
            ));
            endpoints.push(Endpoint { url, http, vaultrs });
        }
        Ok(VaultClient {
            endpoints: Arc::new(endpoints),
            active: Arc::new(AtomicUsize::new(0)),
            settings: Arc::new(settings),
            stats: Arc::new(RequestStats::default()),
            flavor: Arc::new(OnceLock::new()),
        })
    }

    pub fn settings(&self) -> &VaultSettings {
        &self.settings
    }

    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    /// The address requests go to now (the one that answered last).
    pub fn active_address(&self) -> &Url {
        let i = self.active.load(Ordering::Relaxed).min(self.settings.addresses.len() - 1);
        &self.settings.addresses[i]
    }

    /// The server's own CLI, for hints: `bao` for OpenBao, `vault` otherwise (also before the
    /// server was asked: keysync serves HashiCorp Vault first).
    pub fn cli_name(&self) -> &'static str {
        self.flavor.get().copied().unwrap_or("vault")
    }

    /// Asks `sys/seal-status` (no token needed) which server this is, once; OpenBao's versions
    /// start at 2, HashiCorp Vault's are 1.x. Failures leave the default.
    pub async fn detect_flavor(&self) -> &'static str {
        if let Some(f) = self.flavor.get() {
            return f;
        }
        let req = Request::get("sys/seal-status", "seal_status");
        if let Ok(resp) = self.send_raw(&req, None).await {
            if let Some(version) = resp.body.get("version").and_then(Value::as_str) {
                let name = cli_name_for_version(version);
                let _ = self.flavor.set(name);
                set_cli_name(name);
            }
        }
        self.cli_name()
    }

    /// Sends a request vaultrs has no function for (see `transport.rs`) and returns the
    /// answer whatever its status; only a missing answer is an error. Use [`Self::send`]
    /// unless non-2xx bodies matter.
    pub async fn send_raw(&self, req: &Request, token: Option<&Secret>) -> Result<Response, VaultError> {
        let answer = self.call(req, token, |a| async move { transport::send_raw(&a, req).await }).await?;
        Ok(answer.unwrap_or_else(|resp| resp))
    }

    /// Makes one call through vaultrs: `f` gets an [`Attempt`] (a vaultrs client for one
    /// address) and returns vaultrs' answer with the 2xx status it stands for (200 for a
    /// value, 204 for an empty answer: vaultrs does not say). `req` names the call in
    /// messages and metrics; its body is not sent (the call is `f`'s). Returns the value, or
    /// Vault's answer when it was outside 2xx; only a missing answer is an error.
    ///
    /// With several addresses, one that does not answer, is sealed or is a standby without a
    /// leader is skipped for the next. When every node that answers says no node is active
    /// (a 307 to a dead leader, or a 503 during a raft election), the call is retried with
    /// backoff for up to [`ELECTION_PATIENCE`]. A write answered 307 is never sent again.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        req: &Request,
        token: Option<&Secret>,
        f: F,
    ) -> Result<Result<T, Response>, VaultError>
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<(T, u16), vaultrs::error::ClientError>>,
    {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(250);
        let n = self.endpoints.len();
        loop {
            let first = self.active.load(Ordering::Relaxed) % n;
            let mut unreachable: Option<VaultError> = None;
            let mut not_serving: Option<(usize, Response)> = None;
            for k in 0..n {
                let i = (first + k) % n;
                match self.try_once(i, req, token, &f).await {
                    // A standby answers 307 also when forwarding to the leader failed midway
                    // (Vault falls back to a redirect on any forwarding error), so a write
                    // may have been done: never send it again, report it as an answer lost.
                    Ok(Err(resp)) if resp.status == 307 && !matches!(req.method, Method::Get | Method::List) => {
                        return Err(VaultError::Unreachable {
                            address: self.settings.addresses[i].as_str().trim_end_matches('/').to_string(),
                            op: format!("{} {}", req.method.as_str(), req.path),
                            detail: "a standby answered 307: it could not forward the request to the leader (leader election in progress?), which may or may not have done it, so it is not sent again".into(),
                            connected: true,
                        });
                    }
                    Ok(Err(resp)) if not_serving_reason(&resp).is_some() && (n > 1 || is_election(&resp)) => {
                        tracing::debug!(address = %self.settings.addresses[i], status = resp.status, "Vault node cannot serve; trying the next");
                        if not_serving.as_ref().is_none_or(|(_, r)| !is_election(r)) {
                            not_serving = Some((i, resp));
                        }
                    }
                    Ok(answer) => {
                        if i != first {
                            self.active.store(i, Ordering::Relaxed);
                            tracing::info!(address = %self.settings.addresses[i], "switched to another Vault address");
                        }
                        return Ok(answer);
                    }
                    // Only a request that never reached a server is safe to send elsewhere;
                    // one cut off mid-way may have been done (the caller knows how to check).
                    Err(VaultError::Unreachable { address, op, detail, connected: false }) if n > 1 => {
                        unreachable = Some(VaultError::Unreachable { address, op, detail, connected: false });
                    }
                    Err(e) => return Err(e),
                }
            }
            match not_serving {
                Some((i, resp)) if is_election(&resp) && started.elapsed() + delay < ELECTION_PATIENCE => {
                    tracing::warn!(
                        address = %self.settings.addresses[i],
                        status = resp.status,
                        retry_in = ?delay,
                        "no active Vault node: leader election in progress; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Some((i, resp)) => {
                    let (method, path) = req.describe();
                    let reason = not_serving_reason(&resp).unwrap_or_default();
                    return Err(VaultError::NoActiveNode {
                        op: format!("{method} {path}"),
                        addresses: self.address_list(),
                        detail: format!(
                            "{} answered {} ({}){}",
                            self.settings.addresses[i].as_str().trim_end_matches('/'),
                            resp.status,
                            resp.error_text(),
                            if is_election(&resp) {
                                format!("; still no leader after {}s", started.elapsed().as_secs())
                            } else {
                                String::new()
                            }
                        ),
                        hint: reason,
                    });
                }
                None => {
                    return Err(unreachable.unwrap_or_else(|| VaultError::Settings("no Vault address".into())));
                }
            }
        }
    }

    fn address_list(&self) -> String {
        self.settings.addresses.iter().map(|a| a.as_str().trim_end_matches('/')).collect::<Vec<_>>().join(", ")
    }

    /// One try at endpoint `i`: counted in the request metrics and traced by method, path and
    /// status only (the token travels in a header and secrets in bodies, and neither is ever
    /// logged: the suite checks trace output against every secret).
    async fn try_once<T, F, Fut>(
        &self,
        i: usize,
        req: &Request,
        token: Option<&Secret>,
        f: &F,
    ) -> Result<Result<T, Response>, VaultError>
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<(T, u16), vaultrs::error::ClientError>>,
    {
        let endpoint = &self.endpoints[i];
        let address = self.settings.addresses[i].as_str().trim_end_matches('/').to_string();
        let attempt = Attempt::new(
            endpoint.url.as_str(),
            endpoint.http.clone(),
            endpoint.vaultrs.clone(),
            token,
            req.wrap_ttl.as_deref(),
        )
        .map_err(|m| VaultError::Auth(m.into()))?;
        let (status, result) = match f(attempt).await {
            Ok((value, status)) => (status, Ok(Ok(value))),
            Err(e) => match transport::classify(e) {
                Failure::Answer(resp) => (resp.status, Ok(Err(resp))),
                Failure::Transport { error: Some(e), .. } => {
                    (0, Err(self.transport_error(address, format!("{} {}", req.method.as_str(), req.path), &e)))
                }
                Failure::Transport { detail, connected, error: None } => (
                    0,
                    Err(VaultError::Unreachable {
                        address,
                        op: format!("{} {}", req.method.as_str(), req.path),
                        detail,
                        connected,
                    }),
                ),
                Failure::Invalid(detail) => (
                    200,
                    Err(VaultError::InvalidResponse {
                        method: req.method.as_str().into(),
                        path: req.path.clone(),
                        detail: format!("{detail}; is vault.address pointing at Vault?"),
                    }),
                ),
            },
        };
        self.stats.record(req.op, status);
        tracing::trace!(method = req.method.as_str(), path = %req.path, status, "vault request");
        result
    }

    /// A transport error; certificate problems become [`VaultError::Tls`] naming the setting
    /// to fix.
    fn transport_error(&self, address: String, op: String, e: &reqwest::Error) -> VaultError {
        let detail = transport_detail(e);
        if let Some(fix) = tls_fix(&detail, &self.settings) {
            return VaultError::Tls { address, op, detail, fix };
        }
        // A connect error never reached a server; anything later might have.
        VaultError::Unreachable { address, op, detail, connected: !e.is_connect() }
    }

    /// Sends a request; any status outside 2xx becomes a [`VaultError`].
    pub async fn send(&self, req: &Request, token: Option<&Secret>) -> Result<Response, VaultError> {
        let resp = self.send_raw(req, token).await?;
        check_status(req, resp)
    }

    /// [`Self::call`] where any answer outside 2xx becomes a [`VaultError`].
    pub(crate) async fn call_ok<T, F, Fut>(&self, req: &Request, token: Option<&Secret>, f: F) -> Result<T, VaultError>
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<(T, u16), vaultrs::error::ClientError>>,
    {
        self.call(req, token, f).await?.map_err(|resp| answer_error(req, resp))
    }
}

/// A vaultrs call's value with the 2xx status it stands for (for the request metrics).
pub(crate) async fn with_status<T>(
    status: u16,
    call: impl Future<Output = Result<T, vaultrs::error::ClientError>>,
) -> Result<(T, u16), vaultrs::error::ClientError> {
    call.await.map(|value| (value, status))
}

/// Why a node cannot serve this request, when its answer says so: sealed, standby without a
/// leader, or a redirect (a standby that cannot forward points at the leader, which may be
/// dead). `None` for every other answer.
fn not_serving_reason(resp: &Response) -> Option<String> {
    let text = resp.error_text();
    match resp.status {
        307 => Some(
            "no active Vault node: leader election in progress (a standby redirected to a leader it cannot reach)"
                .into(),
        ),
        503 if text.contains("sealed") => Some("the Vault node is sealed: unseal it (operator unseal)".into()),
        503 | 500
            if text.contains("no active Vault instance")
                || text.contains("node is not active")
                || text.contains("standby")
                || text.contains("active cluster node not found") =>
        {
            Some("no active Vault node: leader election in progress".into())
        }
        _ => None,
    }
}

/// A not-serving answer that an election will end (as opposed to a sealed node).
fn is_election(resp: &Response) -> bool {
    not_serving_reason(resp).is_some_and(|r| r.contains("election"))
}

/// For a TLS failure: which setting to fix.
fn tls_fix(detail: &str, settings: &VaultSettings) -> Option<String> {
    let d = detail.to_ascii_lowercase();
    // A server that died or closed mid-connection is an outage, not a TLS setting to fix.
    let cut_off = ["close_notify", "eof", "reset", "closed", "broken pipe", "refused", "timed out"];
    if cut_off.iter().any(|c| d.contains(c)) {
        return None;
    }
    let tls = d.contains("certificate") || d.contains("handshake") || d.contains("issuer") || d.contains("alert");
    if !tls {
        return None;
    }
    let server_name = settings.tls_server_name.as_deref();
    Some(
        if d.contains("unknownissuer")
            || d.contains("unknown issuer")
            || d.contains("badsignature")
            || d.contains("self-signed")
        {
            format!(
            "Vault's certificate is not signed by a CA keysync trusts ({}); set vault.ca_cert (or VAULT_CACERT) to the PEM file of the CA that signed it, or vault.ca_path (VAULT_CAPATH) to a directory of CA files",
            settings.ca_in_use()
        )
        } else if d.contains("notvalidforname") || d.contains("not valid for name") {
            match server_name {
            Some(name) => format!("Vault's certificate is not valid for {name:?}, the name set by vault.tls_server_name / VAULT_TLS_SERVER_NAME; set it to a name the certificate lists"),
            None => "Vault's certificate does not list the host in vault.address / VAULT_ADDR; connect by a name the certificate lists, or set vault.tls_server_name (VAULT_TLS_SERVER_NAME) to one".into(),
        }
        } else if d.contains("expired") || d.contains("notvalidyet") {
            "Vault's certificate has expired or is not valid yet; renew it on the server (or fix this machine's clock)"
                .into()
        } else if d.contains("certificaterequired")
            || d.contains("certificate required")
            || d.contains("bad certificate")
            || d.contains("badcertificate")
            || d.contains("unknown ca")
        {
            "Vault refused keysync's client certificate (or wanted one); set vault.client_cert and vault.client_key (VAULT_CLIENT_CERT / VAULT_CLIENT_KEY) to a certificate the server's listener accepts".into()
        } else {
            format!(
            "the TLS handshake failed; check vault.ca_cert / VAULT_CACERT, vault.ca_path / VAULT_CAPATH and vault.tls_server_name / VAULT_TLS_SERVER_NAME ({})",
            settings.ca_in_use()
        )
        },
    )
}

/// `bao` for an OpenBao version (2.x and later, or naming itself), `vault` for HashiCorp
/// Vault's 1.x.
fn cli_name_for_version(version: &str) -> &'static str {
    let major: u64 = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(1);
    if major >= 2 || version.to_ascii_lowercase().contains("bao") {
        "bao"
    } else {
        "vault"
    }
}

/// The server flavour once any client detected it, for hints outside a client's reach.
static CLI_NAME: OnceLock<&'static str> = OnceLock::new();

fn set_cli_name(name: &'static str) {
    let _ = CLI_NAME.set(name);
}

/// The server's CLI name (`vault` or `bao`) for hints: what the first client in this process
/// detected, `vault` before that.
pub fn cli_name() -> &'static str {
    CLI_NAME.get().copied().unwrap_or("vault")
}

/// Maps non-2xx answers to errors; CAS mismatches get their own variant.
pub(crate) fn check_status(req: &Request, resp: Response) -> Result<Response, VaultError> {
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    Err(answer_error(req, resp))
}

/// The error for an answer outside 2xx; CAS mismatches get their own variant.
pub(crate) fn answer_error(req: &Request, resp: Response) -> VaultError {
    let message = resp.error_text();
    let (method, path) = req.describe();
    if resp.status == 400 && message.contains("check-and-set parameter did not match") {
        return VaultError::CasConflict { path };
    }
    VaultError::Api { method, path, status: resp.status, message }
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
    use crate::vault::VaultConfig;
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
    fn hints_name_the_servers_own_cli() {
        assert_eq!(cli_name_for_version("1.14.1"), "vault");
        assert_eq!(cli_name_for_version("1.21.4+ent"), "vault");
        assert_eq!(cli_name_for_version("2.1.0"), "bao");
        assert_eq!(cli_name_for_version("v2.0.0-beta"), "bao");
    }

    #[test]
    fn election_answers_are_told_from_a_sealed_node() {
        let redirect = Response { status: 307, body: Value::Null };
        assert!(is_election(&redirect));
        let no_leader =
            Response { status: 503, body: serde_json::json!({"errors": ["no active Vault instance found"]}) };
        assert!(is_election(&no_leader));
        let sealed = Response { status: 503, body: serde_json::json!({"errors": ["Vault is sealed"]}) };
        assert!(!is_election(&sealed));
        assert!(not_serving_reason(&sealed).is_some_and(|r| r.contains("sealed")));
        let denied = Response { status: 403, body: serde_json::json!({"errors": ["permission denied"]}) };
        assert!(not_serving_reason(&denied).is_none());
    }

    #[test]
    fn tls_failures_name_the_setting_to_fix() {
        let cfg = VaultConfig { address: Some("https://10.0.0.5:8200".into()), ..Default::default() };
        let s = resolve(&cfg, &[]).unwrap();
        let fix = tls_fix("invalid peer certificate: UnknownIssuer", &s).unwrap();
        assert!(fix.contains("vault.ca_cert") && fix.contains("VAULT_CACERT"), "{fix}");
        let fix = tls_fix("invalid peer certificate: certificate not valid for name \"10.0.0.5\"", &s).unwrap();
        assert!(fix.contains("vault.tls_server_name"), "{fix}");
        assert!(tls_fix("Connection refused (os error 111)", &s).is_none());
        let cut = "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof";
        assert!(tls_fix(cut, &s).is_none(), "a server killed mid-connection is an outage");
        assert!(tls_fix("tls handshake eof", &s).is_none(), "a proxy with no server behind it is an outage");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let err = resolve(&VaultConfig::default(), &[("VAULT_ADDR", "https://v:1"), ("VAULT_CLIENT_CERT", "/c.pem")])
            .unwrap_err();
        assert!(err.to_string().contains("vault.client_key"), "{err}");
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
