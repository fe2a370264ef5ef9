//! The Vault session: the current token, its renewal, and logging in again by itself.
//!
//! Every Vault call in keysync goes through [`Session::request`]. A 403 is checked once with
//! `lookup-self`: if the token itself is dead (revoked, expired) the session logs in again and
//! retries the call; otherwise it is an ACL denial and the error names the path and policies.
//! [`Session::maintain`] renews the token at about 2/3 of its TTL and logs in again when
//! renewal fails or max TTL nears, backing off exponentially with jitter (never a hot loop).

use super::auth::Authenticator;
use super::client::{answer_error, with_status, Request, Response, VaultClient};
use super::error::{PolicyList, VaultError};
use super::transport::{self, Attempt};
use crate::secret::Secret;
use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Mutex};

/// What `lookup-self` told us about the token. Never holds the token itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TokenInfo {
    pub accessor: String,
    pub policies: Vec<String>,
    pub display_name: String,
    /// Seconds left when looked up; 0 = never expires (root).
    pub ttl_secs: u64,
    /// The TTL the token was created with: the increment asked for on renewal.
    pub creation_ttl_secs: u64,
    pub renewable: bool,
    pub expire_time: Option<String>,
    pub token_type: String,
    /// How the token was obtained (`approle login at auth/approle/login`, `VAULT_TOKEN`).
    pub origin: String,
}

struct TokenState {
    token: Secret,
    info: TokenInfo,
    /// When `info.ttl_secs` was measured.
    measured_at: Instant,
    /// Bumped on every new token, so concurrent callers re-authenticate only once.
    generation: u64,
    /// The last renewal got less than asked for: max TTL is near, log in again instead.
    capped: bool,
    /// Fingerprint of the token file content the token came from (token method).
    source_fp: Option<String>,
}

/// A logged-in Vault session shared by everything that talks to Vault.
pub struct Session {
    client: VaultClient,
    auth: Authenticator,
    state: RwLock<TokenState>,
    relogin: Mutex<()>,
    logins: AtomicU64,
    renewals: AtomicU64,
    /// KV mounts found to be KV v2 (checked once, before the first read or write).
    kv_mounts: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("address", &self.client.settings().address.as_str())
            .field("method", &self.auth.method())
            .field("token", &"<redacted>")
            .finish()
    }
}

/// How long to wait between re-login attempts: exponential from 1 s to 60 s, with jitter.
fn relogin_backoff(max_times: Option<usize>) -> ExponentialBuilder {
    let b = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .with_jitter();
    match max_times {
        Some(n) => b.with_max_times(n),
        None => b.without_max_times(),
    }
}

impl Session {
    /// Logs in (once, no retries: a first login that fails is for a person to fix) and looks
    /// the token up.
    pub async fn login(client: VaultClient, auth: Authenticator) -> Result<Arc<Session>, VaultError> {
        client.detect_flavor().await;
        let (token, info) = obtain_token(&client, &auth).await?;
        let source_fp = auth.token_file().and_then(|f| file_fingerprint(&f));
        tracing::info!(
            method = auth.method(),
            accessor = %info.accessor,
            policies = ?info.policies,
            ttl_secs = info.ttl_secs,
            renewable = info.renewable,
            "logged in to Vault"
        );
        Ok(Arc::new(Session {
            client,
            auth,
            state: RwLock::new(TokenState {
                token,
                info,
                measured_at: Instant::now(),
                generation: 1,
                capped: false,
                source_fp,
            }),
            relogin: Mutex::new(()),
            logins: AtomicU64::new(1),
            renewals: AtomicU64::new(0),
            kv_mounts: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        }))
    }

    pub fn client(&self) -> &VaultClient {
        &self.client
    }

    /// Details of the current token.
    pub fn token_info(&self) -> TokenInfo {
        self.read_state(|s| s.info.clone())
    }

    /// Seconds until the current token expires, `None` when it never does.
    pub fn token_ttl_remaining(&self) -> Option<Duration> {
        self.read_state(|s| {
            (s.info.ttl_secs > 0).then(|| Duration::from_secs(s.info.ttl_secs).saturating_sub(s.measured_at.elapsed()))
        })
    }

    /// How many times this session has obtained a token (1 after the first login).
    pub fn login_count(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// How many successful renew-self calls this session made.
    pub fn renewal_count(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    fn read_state<T>(&self, f: impl FnOnce(&TokenState) -> T) -> T {
        match self.state.read() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write_state(&self, f: impl FnOnce(&mut TokenState)) {
        match self.state.write() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn current(&self) -> (Secret, u64) {
        self.read_state(|s| (s.token.clone(), s.generation))
    }

    /// Sends a request with the session token; a 2xx answer or an error. A 403 becomes
    /// [`VaultError::PermissionDenied`] after the token is found alive.
    pub async fn request(&self, req: &Request) -> Result<Response, VaultError> {
        self.request_allowing(req, &[]).await
    }

    /// Like [`Self::request`], but answers with a status in `allowed` are returned as they
    /// are (KV reads answer 404 with a body for deleted and destroyed versions).
    pub async fn request_allowing(&self, req: &Request, allowed: &[u16]) -> Result<Response, VaultError> {
        let resp = self.request_raw(req).await?;
        if allowed.contains(&resp.status) || (200..300).contains(&resp.status) {
            return Ok(resp);
        }
        Err(self.refusal(req, resp))
    }

    /// Like [`Self::request`] but returns any answer (for 404 bodies of deleted versions).
    /// A dead token is replaced and the request sent once more.
    pub async fn request_raw(&self, req: &Request) -> Result<Response, VaultError> {
        if let Some(mount) = kv_mount_of(&req.path) {
            self.ensure_kv2(mount).await?;
        }
        self.request_unchecked(req).await
    }

    /// Checks once per mount, before the first KV read or write there, that `mount` is a KV
    /// version 2 mount (`sys/internal/ui/mounts/<mount>`, which needs no sys rights): a KV v1
    /// mount would take v2-shaped writes as plain secrets, and a missing one would look like
    /// "no keys".
    pub async fn ensure_kv2(&self, mount: &str) -> Result<(), VaultError> {
        if self.kv_mounts.lock().is_ok_and(|m| m.contains(mount)) {
            return Ok(());
        }
        let cli = self.client.cli_name();
        let req = Request::get(format!("sys/internal/ui/mounts/{mount}"), "mount_check");
        let resp = self.request_unchecked(&req).await?;
        let data = resp.body.get("data").cloned().unwrap_or(Value::Null);
        match resp.status {
            200 => {
                let kind = data.get("type").and_then(Value::as_str).unwrap_or_default();
                let found = data.get("path").and_then(Value::as_str).unwrap_or(mount).trim_end_matches('/').to_string();
                let version = match data.pointer("/options/version") {
                    Some(Value::String(v)) => v.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => String::new(),
                };
                if kind != "kv" && kind != "generic" {
                    return Err(VaultError::KvMount(format!(
                        "{found}/ is a {kind:?} mount, not KV; point kv.mount at a KV version 2 mount (`{cli} secrets enable -version=2 -path=NAME kv`)"
                    )));
                }
                if version != "2" {
                    return Err(VaultError::KvMount(format!(
                        "{found}/ is KV version 1; keysync needs KV v2: {cli} kv enable-versioning {found} (or point kv.mount at a KV v2 mount)"
                    )));
                }
            }
            // Vault answers 403 both for a path under no mount and for a token with no
            // policy anywhere under the mount. For a root token it can only be the first;
            // any other token goes on to the request itself, whose 403 names the path and
            // the token's policies.
            403 | 404
                if resp.status == 404
                    || (resp.error_text().contains("preflight")
                        && self.token_info().policies.iter().any(|p| p == "root")) =>
            {
                return Err(VaultError::KvMount(format!(
                    "no KV mount at {mount}/: check kv.mount (`{cli} secrets list` shows the mounts)"
                )));
            }
            // A server without this endpoint (or a proxy that hides it): nothing to learn,
            // carry on as before rather than refuse a mount that may be fine.
            status => {
                tracing::debug!(mount, status, "cannot check the KV mount's version; assuming KV v2");
            }
        }
        if let Ok(mut m) = self.kv_mounts.lock() {
            m.insert(mount.to_string());
        }
        Ok(())
    }

    /// [`Self::request_raw`] without the mount check.
    async fn request_unchecked(&self, req: &Request) -> Result<Response, VaultError> {
        let answer = self.call_unchecked(req, &|a| async move { transport::send_raw(&a, req).await }).await?;
        Ok(answer.unwrap_or_else(|resp| resp))
    }

    /// Makes a call through vaultrs with the session token (see [`VaultClient::call`]): the
    /// value, or Vault's answer outside 2xx. KV calls check their mount first.
    pub(crate) async fn call<T, F, Fut>(&self, req: &Request, f: F) -> Result<Result<T, Response>, VaultError>
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<(T, u16), vaultrs::error::ClientError>>,
    {
        if let Some(mount) = kv_mount_of(&req.path) {
            self.ensure_kv2(mount).await?;
        }
        self.call_unchecked(req, &f).await
    }

    /// [`Self::call`] where an answer outside 2xx and `allowed` becomes an error: a 403 after
    /// the token was found alive is [`VaultError::PermissionDenied`].
    pub(crate) async fn call_allowing<T, F, Fut>(
        &self,
        req: &Request,
        allowed: &[u16],
        f: F,
    ) -> Result<Result<T, Response>, VaultError>
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<(T, u16), vaultrs::error::ClientError>>,
    {
        match self.call(req, f).await? {
            Err(resp) if !allowed.contains(&resp.status) => Err(self.refusal(req, resp)),
            answer => Ok(answer),
        }
    }

    /// The error for an answer outside 2xx, naming the token's policies on a 403.
    fn refusal(&self, req: &Request, resp: Response) -> VaultError {
        if resp.status == 403 {
            let (method, path) = req.describe();
            return VaultError::PermissionDenied { method, path, policies: PolicyList(self.token_info().policies) };
        }
        answer_error(req, resp)
    }

    /// The one re-authentication point: every call with the session token comes through
    /// here. A 403 is checked with `lookup-self`: a dead token is replaced and the call made
    /// once more; a live one means the policies refuse it.
    async fn call_unchecked<T, F, Fut>(&self, req: &Request, f: &F) -> Result<Result<T, Response>, VaultError>
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<(T, u16), vaultrs::error::ClientError>>,
    {
        let (token, generation) = self.current();
        let answer = self.client.call(req, Some(&token), f).await?;
        if !matches!(&answer, Err(resp) if resp.status == 403) {
            return Ok(answer);
        }
        match lookup_self(&self.client, &token).await {
            Ok(_) => Ok(answer),
            Err(e) if e.status() == Some(403) => {
                tracing::warn!(op = req.op, "Vault token no longer valid; logging in again");
                self.reauthenticate(generation).await?;
                let (token, _) = self.current();
                self.client.call(req, Some(&token), f).await
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the token unless another task already did since `seen_generation`.
    async fn reauthenticate(&self, seen_generation: u64) -> Result<(), VaultError> {
        let _guard = self.relogin.lock().await;
        if self.read_state(|s| s.generation) != seen_generation {
            return Ok(());
        }
        if !self.auth.can_relogin() {
            return Err(VaultError::TokenInvalid(
                "the token from VAULT_TOKEN was revoked or expired and keysync cannot get another by itself; export a new VAULT_TOKEN or configure vault.auth".into(),
            ));
        }
        let attempt = || async { obtain_token(&self.client, &self.auth).await };
        let (token, info) = attempt
            .retry(relogin_backoff(Some(4)))
            .when(VaultError::is_transient)
            .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "re-authentication failed"))
            .await
            .map_err(|e| VaultError::TokenInvalid(e.to_string()))?;
        self.install(token, info);
        Ok(())
    }

    fn install(&self, token: Secret, info: TokenInfo) {
        let source_fp = self.auth.token_file().and_then(|f| file_fingerprint(&f));
        tracing::info!(accessor = %info.accessor, ttl_secs = info.ttl_secs, "obtained a new Vault token");
        self.write_state(|s| {
            s.token = token;
            s.info = info;
            s.measured_at = Instant::now();
            s.generation += 1;
            s.capped = false;
            s.source_fp = source_fp;
        });
        self.logins.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the token alive until `shutdown` turns true: renews at 2/3 of the TTL, logs in
    /// again when renewal fails or max TTL nears, and picks up a rewritten token file.
    pub async fn maintain(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        const FILE_POLL: Duration = Duration::from_secs(5);
        loop {
            let (renew_at, renewable, capped, ttl) = self.read_state(|s| {
                let ttl = Duration::from_secs(s.info.ttl_secs);
                (s.measured_at + ttl.mul_f64(2.0 / 3.0), s.info.renewable, s.capped, s.info.ttl_secs)
            });
            let token_file = self.auth.token_file();
            let mut wake = if ttl == 0 { Instant::now() + Duration::from_secs(3600) } else { renew_at };
            if token_file.is_some() {
                wake = wake.min(Instant::now() + FILE_POLL);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if let Some(file) = &token_file {
                let fp = file_fingerprint(file);
                if fp.is_some() && fp != self.read_state(|s| s.source_fp.clone()) {
                    tracing::info!(file = %file.display(), "token file changed; switching to the new token");
                    let generation = self.read_state(|s| s.generation);
                    self.relogin_until_done(generation, &mut shutdown).await;
                    continue;
                }
            }
            if ttl == 0 || Instant::now() < renew_at {
                continue;
            }
            if renewable && !capped {
                match self.renew().await {
                    Ok(()) => continue,
                    Err(e) => tracing::warn!(error = %e, "token renewal failed; logging in again"),
                }
            }
            if !self.auth.can_relogin() {
                tracing::warn!("the Vault token cannot be renewed and came from VAULT_TOKEN; keysync will stop working when it expires");
                self.write_state(|s| s.info.ttl_secs = 0);
                continue;
            }
            let generation = self.read_state(|s| s.generation);
            self.relogin_until_done(generation, &mut shutdown).await;
        }
    }

    /// Logs in again, retrying with capped backoff until it works or shutdown.
    async fn relogin_until_done(&self, seen_generation: u64, shutdown: &mut watch::Receiver<bool>) {
        let _guard = self.relogin.lock().await;
        if self.read_state(|s| s.generation) != seen_generation {
            return;
        }
        let attempt = || async { obtain_token(&self.client, &self.auth).await };
        let result = tokio::select! {
            r = attempt
                .retry(relogin_backoff(None))
                .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "Vault login failed; will retry")) => r,
            _ = shutdown.changed() => return,
        };
        if let Ok((token, info)) = result {
            self.install(token, info);
        }
    }

    /// `renew-self` asking for the token's creation TTL again.
    async fn renew(&self) -> Result<(), VaultError> {
        let (token, creation_ttl) = self.read_state(|s| (s.token.clone(), s.info.creation_ttl_secs));
        let req = Request::new(super::client::Method::Post, "auth/token/renew-self", "renew");
        let increment = format!("{creation_ttl}s");
        let increment = increment.as_str();
        let auth = self
            .client
            .call_ok(&req, Some(&token), |a| {
                with_status(200, async move { vaultrs::token::renew_self(&a, Some(increment)).await })
            })
            .await?;
        let granted = auth.lease_duration;
        if granted == 0 {
            return Err(VaultError::InvalidResponse {
                method: "POST".into(),
                path: req.path,
                detail: "renewal answer has auth.lease_duration 0".into(),
            });
        }
        let capped = granted + 1 < creation_ttl;
        tracing::debug!(granted_secs = granted, capped, "renewed the Vault token");
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.write_state(|s| {
            s.info.ttl_secs = granted;
            s.measured_at = Instant::now();
            s.capped = capped;
        });
        Ok(())
    }
}

/// Logs in and looks the new token up.
async fn obtain_token(client: &VaultClient, auth: &Authenticator) -> Result<(Secret, TokenInfo), VaultError> {
    let login = auth.login(client).await?;
    let mut info = lookup_self(client, &login.token).await.map_err(|e| match e {
        VaultError::Api { status: 403, .. } => VaultError::Auth(format!(
            "the Vault token from {} is not valid (permission denied on auth/token/lookup-self); get a fresh token",
            login.origin
        )),
        other => other,
    })?;
    info.origin = login.origin;
    Ok((login.token, info))
}

/// `auth/token/lookup-self`, through vaultrs. Its answer has no `type`: a token without an
/// accessor is a batch token (Vault gives only service tokens accessors).
pub(crate) async fn lookup_self(client: &VaultClient, token: &Secret) -> Result<TokenInfo, VaultError> {
    let req = Request::get("auth/token/lookup-self", "lookup_self");
    let data = client
        .call_ok(&req, Some(token), |a| with_status(200, async move { vaultrs::token::lookup_self(&a).await }))
        .await?;
    let mut policies = data.policies;
    for p in data.identity_policies.unwrap_or_default() {
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    let token_type = if data.accessor.is_empty() { "batch" } else { "service" };
    Ok(TokenInfo {
        accessor: data.accessor,
        policies,
        display_name: data.display_name,
        ttl_secs: data.ttl,
        creation_ttl_secs: data.creation_ttl,
        renewable: data.renewable.unwrap_or(false),
        expire_time: data.expire_time,
        token_type: token_type.into(),
        origin: String::new(),
    })
}

/// The KV mount a KV v2 request path goes to (`secret` of `secret/data/keysync/x`); None for
/// sys, auth and identity paths.
fn kv_mount_of(path: &str) -> Option<&str> {
    let path = path.trim_start_matches('/');
    if ["sys/", "auth/", "identity/", "cubbyhole/"].iter().any(|p| path.starts_with(p)) {
        return None;
    }
    ["/data/", "/metadata/", "/delete/", "/undelete/", "/destroy/"]
        .iter()
        .filter_map(|sep| path.find(sep))
        .min()
        .map(|i| &path[..i])
        .or_else(|| ["/data", "/metadata"].iter().find_map(|sep| path.strip_suffix(sep)))
}

fn file_fingerprint(path: &std::path::Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| crate::secret::fingerprint(String::from_utf8_lossy(&b).trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::kv_mount_of;

    #[test]
    fn kv_paths_name_their_mount() {
        assert_eq!(kv_mount_of("secret/data/keysync/openai"), Some("secret"));
        assert_eq!(kv_mount_of("team/kv/metadata/keysync/"), Some("team/kv"));
        assert_eq!(kv_mount_of("kv1/destroy/keysync/x"), Some("kv1"));
        assert_eq!(kv_mount_of("sys/internal/ui/mounts/secret"), None);
        assert_eq!(kv_mount_of("auth/approle/role/x/secret-id"), None);
    }
}
