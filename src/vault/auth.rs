//! Auth methods: turn `[vault.auth]` into a Vault token. Credentials are read from their files
//! at every login (so rotated files are picked up) and held only in [`Secret`]s.

use super::client::{with_status, Method, Request, VaultClient};
use super::config::{AppRoleAuth, AuthConfig, KubernetesAuth};
use super::error::VaultError;
use crate::secret::Secret;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What a login produced. Token details come from `lookup-self` afterwards.
#[derive(Debug, Clone)]
pub struct LoginResult {
    pub token: Secret,
    /// Where the token came from, for messages (`approle login`, `VAULT_TOKEN`, a file).
    pub origin: String,
}

/// Logs in with the configured method. Keeps an unwrapped or already-read secret_id in
/// memory, because wrapping tokens are single-use and the file may be removed after reading.
#[derive(Debug)]
pub struct Authenticator {
    config: AuthConfig,
    env_token: Option<Secret>,
    cached_secret_id: Mutex<Option<CachedSecretId>>,
    /// The last AppRole credentials Vault refused, with its answer. They are not sent again
    /// until a file changes or [`REFUSED_RETRY_AFTER`] passes: each refused login counts
    /// towards Vault's user lockout, and retrying a used-up secret_id every poll would lock the
    /// role out (403 for 15 minutes by default), so even a freshly issued secret_id would be
    /// refused.
    refused: Mutex<Option<Refusal>>,
}

/// How long refused, unchanged AppRole credentials are not sent again. Longer than Vault's
/// default lockout counter reset (15 min), so these retries alone never lock the role out,
/// and a lockout caused by someone else ends without anyone touching the files.
const REFUSED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(20 * 60);

#[derive(Debug, Clone)]
struct Refusal {
    credentials_fp: String,
    message: String,
    at: std::time::Instant,
}

#[derive(Debug, Clone)]
struct CachedSecretId {
    /// Fingerprint of the file content it came from (the wrapping token or the secret_id).
    source_fp: String,
    secret_id: Secret,
}

impl Authenticator {
    /// `VAULT_TOKEN` is captured once here; the token method falls back to it.
    pub fn new(config: AuthConfig) -> Self {
        let env_token = std::env::var("VAULT_TOKEN").ok().filter(|t| !t.trim().is_empty()).map(Secret::credential);
        Authenticator { config, env_token, cached_secret_id: Mutex::new(None), refused: Mutex::new(None) }
    }

    /// With an explicit fallback token instead of `VAULT_TOKEN` (tests, embedding).
    pub fn with_env_token(config: AuthConfig, env_token: Option<Secret>) -> Self {
        Authenticator { config, env_token, cached_secret_id: Mutex::new(None), refused: Mutex::new(None) }
    }

    pub fn method(&self) -> &'static str {
        self.config.method_name()
    }

    /// Whether a fresh token can be had without a person: every method except a token that
    /// came from the environment (a token file may be rewritten by a sidecar).
    pub fn can_relogin(&self) -> bool {
        match &self.config {
            AuthConfig::Token(t) => t.token_file.is_some() || self.env_token.is_none(),
            _ => true,
        }
    }

    /// The token file to watch for changes, if the token method reads one.
    pub fn token_file(&self) -> Option<PathBuf> {
        match &self.config {
            AuthConfig::Token(t) => {
                t.token_file.clone().or_else(|| if self.env_token.is_none() { home_token_file() } else { None })
            }
            _ => None,
        }
    }

    /// Gets a token: reads it (token method) or logs in at `auth/<mount>/login`.
    pub async fn login(&self, client: &VaultClient) -> Result<LoginResult, VaultError> {
        match &self.config {
            AuthConfig::Token(t) => {
                if let Some(file) = &t.token_file {
                    let token = read_credential(file, "vault.auth.token_file", "the Vault token")?;
                    return Ok(LoginResult { token, origin: format!("token file {}", file.display()) });
                }
                if let Some(token) = &self.env_token {
                    return Ok(LoginResult { token: token.clone(), origin: "VAULT_TOKEN".into() });
                }
                if let Some(file) = home_token_file().filter(|f| f.exists()) {
                    let token = read_credential(&file, "~/.vault-token", "the Vault token")?;
                    return Ok(LoginResult { token, origin: format!("token file {}", file.display()) });
                }
                Err(VaultError::Auth(
                    "no Vault token: export VAULT_TOKEN, set vault.auth.token_file, or choose another vault.auth.method (approle, jwt, kubernetes, cert)".into(),
                ))
            }
            AuthConfig::Approle(a) => self.login_approle(client, a).await,
            AuthConfig::Jwt(j) => {
                let jwt = read_credential(&j.jwt_file, "vault.auth.jwt_file", "the JWT")?;
                login_with_jwt(client, &j.mount, &j.role, &jwt, &j.jwt_file, "jwt").await
            }
            AuthConfig::Kubernetes(k) => {
                let jwt = read_credential(&k.jwt_file, "vault.auth.jwt_file", "the service-account token")?;
                login_kubernetes(client, k, &jwt).await
            }
            AuthConfig::Cert(c) => login_with_cert(client, &c.mount, c.name.as_deref()).await,
        }
    }

    async fn login_approle(&self, client: &VaultClient, cfg: &AppRoleAuth) -> Result<LoginResult, VaultError> {
        let role_id = read_credential(&cfg.role_id_file, "vault.auth.role_id_file", "the AppRole role_id")?;
        let secret_id = self.approle_secret_id(client, cfg).await?;
        let path = format!("auth/{}/login", cfg.mount);
        let credentials_fp =
            crate::secret::fingerprint(format!("{}\n{}", role_id.expose(), secret_id.expose()).as_bytes());
        let earlier = self.refused.lock().ok().and_then(|r| r.clone());
        if let Some(r) = earlier.filter(|r| r.credentials_fp == credentials_fp && r.at.elapsed() < REFUSED_RETRY_AFTER)
        {
            return Err(VaultError::Auth(format!(
                "{}; not tried again for 20 minutes unless {} or {} changes (repeated refused logins make Vault lock the role out)",
                r.message,
                cfg.role_id_file.display(),
                cfg.secret_id_file.display()
            )));
        }
        let (mount, role_id, secret_id) = (cfg.mount.as_str(), role_id.expose(), secret_id.expose());
        let answer = client
            .call_ok(&login_request(&path), None, |a| {
                with_status(200, async move { vaultrs::auth::approle::login(&a, mount, role_id, secret_id).await })
            })
            .await;
        let refused = matches!(answer, Err(VaultError::Api { status: 400 | 403, .. }));
        let result = answer.map_err(|e| match e {
            VaultError::Api { status: 400, message, .. } => VaultError::Auth(format!(
                "AppRole login at {path} was refused ({message}); check the role_id in {} and the secret_id in {} (a secret_id can be used up or expired: issue a new one)",
                cfg.role_id_file.display(),
                cfg.secret_id_file.display()
            )),
            VaultError::Api { status: 403, message, .. } => VaultError::Auth(format!(
                "AppRole login at {path} was refused ({message}); Vault locks a role out for a while after repeated failed logins (user lockout): check the role_id in {} and the secret_id in {}, and wait for the lockout to end or unlock it (sys/locked-users)",
                cfg.role_id_file.display(),
                cfg.secret_id_file.display()
            )),
            VaultError::Api { status: 404 | 405, message, .. } => VaultError::Auth(format!(
                "no AppRole auth at {path} ({message}); enable it (`{} auth enable approle`) or fix vault.auth.mount",
                client.cli_name()
            )),
            other => other,
        });
        if let Ok(mut slot) = self.refused.lock() {
            match &result {
                Err(e) if refused => {
                    *slot = Some(Refusal { credentials_fp, message: e.to_string(), at: std::time::Instant::now() })
                }
                Ok(_) => *slot = None,
                Err(_) => {} // transient: the credentials may still be good
            }
        }
        let auth = result?;
        Ok(LoginResult { token: client_token(auth, &path)?, origin: format!("approle login at {path}") })
    }

    /// The secret_id: from the file (unwrapping it when wrapped), or from memory when the file
    /// was removed after reading or still holds the wrapping token we already used.
    async fn approle_secret_id(&self, client: &VaultClient, cfg: &AppRoleAuth) -> Result<Secret, VaultError> {
        let cached = self.cached_secret_id.lock().ok().and_then(|c| c.clone());
        let file_content =
            match read_credential(&cfg.secret_id_file, "vault.auth.secret_id_file", "the AppRole secret_id") {
                Ok(content) => content,
                Err(e) => {
                    return match cached {
                        Some(c) if !cfg.secret_id_file.exists() => Ok(c.secret_id),
                        _ => Err(e),
                    }
                }
            };
        let source_fp = file_content.fingerprint();
        if let Some(c) = cached.filter(|c| c.source_fp == source_fp) {
            return Ok(c.secret_id);
        }
        let secret_id = if cfg.secret_id_wrapped {
            unwrap_secret_id(client, &file_content, &cfg.secret_id_file).await?
        } else {
            file_content
        };
        if let Ok(mut slot) = self.cached_secret_id.lock() {
            *slot = Some(CachedSecretId { source_fp, secret_id: secret_id.clone() });
        }
        if cfg.remove_secret_id_file {
            if let Err(e) = std::fs::remove_file(&cfg.secret_id_file) {
                tracing::warn!(file = %cfg.secret_id_file.display(), error = %e, "could not remove the secret_id file after reading it");
            }
        }
        Ok(secret_id)
    }
}

/// `sys/wrapping/unwrap` with the wrapping token as the request token.
async fn unwrap_secret_id(client: &VaultClient, wrapping_token: &Secret, file: &Path) -> Result<Secret, VaultError> {
    let req = Request::new(Method::Post, "sys/wrapping/unwrap", "unwrap");
    let data: Value = client
        .call_ok(&req, Some(wrapping_token), |a| {
            with_status(200, async move { vaultrs::sys::wrapping::unwrap::<Value>(&a, None).await })
        })
        .await
        .map_err(|e| match e {
        VaultError::Api { status: 400 | 403, message, .. } => VaultError::Auth(format!(
            "the response-wrapped secret_id in {} could not be unwrapped ({message}); wrapping tokens work once: write a freshly wrapped secret_id to that file",
            file.display()
        )),
        other => other,
    })?;
    let secret_id = data
        .get("secret_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            VaultError::Auth(format!(
                "the wrapping token in {} did not wrap an AppRole secret_id (no data.secret_id); wrap the answer of auth/approle/role/NAME/secret-id",
                file.display()
            ))
        })?;
    Ok(Secret::credential(secret_id))
}

async fn login_with_jwt(
    client: &VaultClient,
    mount: &str,
    role: &str,
    jwt: &Secret,
    file: &Path,
    method: &str,
) -> Result<LoginResult, VaultError> {
    let path = format!("auth/{mount}/login");
    let jwt_text = jwt.expose();
    let auth = client
        .call_ok(&login_request(&path), None, |a| {
            with_status(200, async move { vaultrs::auth::oidc::login(&a, mount, jwt_text, Some(role.to_string())).await })
        })
        .await
        .map_err(|e| match e {
        VaultError::Api { status: 400 | 403, message, .. } => VaultError::Auth(format!(
            "{method} login at {path} with role {role:?} was refused ({message}); check the token in {} and the role's bound claims / audiences",
            file.display()
        )),
        VaultError::Api { status: 404 | 405, message, .. } => VaultError::Auth(format!(
            "no {method} auth at {path} ({message}); enable it or fix vault.auth.mount"
        )),
        other => other,
    })?;
    Ok(LoginResult { token: client_token(auth, &path)?, origin: format!("{method} login at {path}") })
}

/// Vault's TLS certificate auth: the client certificate (vault.client_cert / client_key) is
/// presented in the TLS handshake, the body only names the role. Sent as a raw request:
/// vaultrs' cert login puts the role in a `cert_name` field, which Vault ignores (it reads
/// `name`), so `vault.auth.name` would be dropped without a word.
async fn login_with_cert(client: &VaultClient, mount: &str, name: Option<&str>) -> Result<LoginResult, VaultError> {
    let settings = client.settings();
    let Some(cert) = settings.client_cert.clone() else {
        return Err(VaultError::Auth(
            "vault.auth.method = \"cert\" needs a client certificate: set vault.client_cert and vault.client_key (or VAULT_CLIENT_CERT and VAULT_CLIENT_KEY)".into(),
        ));
    };
    let path = format!("auth/{mount}/login");
    let body = match name {
        Some(n) => json!({ "name": n }),
        None => json!({}),
    };
    let cli = client.cli_name();
    let resp = client.send(&Request::post(&path, "login", body), None).await.map_err(|e| match e {
        VaultError::Api { status: 400 | 401 | 403, message, .. } => VaultError::Auth(format!(
            "cert login at {path}{} was refused ({message}); check that vault.client_cert ({}) is signed by a CA configured in {mount}/certs (`{cli} write auth/{mount}/certs/NAME certificate=@ca.pem`), is valid now, and that Vault's listener gets it (TLS, not through a proxy that ends TLS)",
            name.map(|n| format!(" with role {n:?}")).unwrap_or_default(),
            cert.display()
        )),
        VaultError::Api { status: 404 | 405, message, .. } => VaultError::Auth(format!(
            "no cert auth at {path} ({message}); enable it (`{cli} auth enable cert`) or fix vault.auth.mount"
        )),
        other => other,
    })?;
    let token = resp.body.pointer("/auth/client_token").and_then(Value::as_str).map(str::to_string);
    Ok(LoginResult { token: client_token_of(token, &path)?, origin: format!("cert login at {path}") })
}

/// Kubernetes login. Vault checks the service account's name and namespace from the token's
/// claims against the role, then asks the cluster's TokenReview API whether the token is
/// live; its refusals ("namespace not authorized", "permission denied") say little, so the
/// error names the service account the token is for (from its unverified claims: not secret)
/// and what to change.
async fn login_kubernetes(client: &VaultClient, cfg: &KubernetesAuth, jwt: &Secret) -> Result<LoginResult, VaultError> {
    let path = format!("auth/{}/login", cfg.mount);
    let role = &cfg.role;
    let (mount, role_text, jwt_text) = (cfg.mount.as_str(), role.as_str(), jwt.expose());
    let file = cfg.jwt_file.display();
    let auth = client
        .call_ok(&login_request(&path), None, |a| {
            with_status(200, async move { vaultrs::auth::kubernetes::login(&a, mount, role_text, jwt_text).await })
        })
        .await
        .map_err(|e| match e {
        VaultError::Api { status: 400 | 403, message, .. } => {
            let who = match ServiceAccount::from_jwt(jwt) {
                Some(sa) => format!("the token in {file} is for service account {:?} in namespace {:?}", sa.name, sa.namespace),
                None => format!("the token in {file} is not a Kubernetes service-account token (no kubernetes.io claims)"),
            };
            let fix = if message.contains("namespace not authorized") {
                format!("run keysync in a namespace the role allows, or add the namespace to the role's bound_service_account_namespaces (auth/{}/role/{role})", cfg.mount)
            } else if message.contains("service account name not authorized") {
                format!("set the pod's serviceAccountName to one the role allows, or add it to the role's bound_service_account_names (auth/{}/role/{role})", cfg.mount)
            } else if message.contains("invalid role name") {
                format!("create the role (auth/{}/role/{role}) or fix vault.auth.role", cfg.mount)
            } else {
                format!("the cluster's TokenReview API did not accept the token (expired, deleted service account, wrong audience) or Vault cannot reach it: check auth/{}/config (kubernetes_host, kubernetes_ca_cert, token_reviewer_jwt) and the token file", cfg.mount)
            };
            VaultError::Auth(format!("kubernetes login at {path} with role {role:?} was refused ({message}); {who}; {fix}"))
        }
        VaultError::Api { status: 404 | 405, message, .. } => VaultError::Auth(format!(
            "no kubernetes auth at {path} ({message}); enable it (`vault auth enable kubernetes`) or fix vault.auth.mount"
        )),
        other => other,
    })?;
    Ok(LoginResult { token: client_token(auth, &path)?, origin: format!("kubernetes login at {path}") })
}

/// The service account a Kubernetes token names in its claims: the projected-token form
/// (`kubernetes.io.namespace`, `kubernetes.io.serviceaccount.name`) or the legacy secret
/// form (`kubernetes.io/serviceaccount/namespace`, `…/service-account.name`), as Vault's
/// kubernetes auth plugin reads them. Unverified: only for messages.
#[derive(Debug, PartialEq)]
struct ServiceAccount {
    name: String,
    namespace: String,
}

impl ServiceAccount {
    fn from_jwt(jwt: &Secret) -> Option<ServiceAccount> {
        let payload = jwt.expose().split('.').nth(1)?;
        let claims: Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        if let Some(k) = claims.get("kubernetes.io") {
            return Some(ServiceAccount {
                name: text(k.pointer("/serviceaccount/name"))?,
                namespace: text(k.get("namespace"))?,
            });
        }
        Some(ServiceAccount {
            name: text(claims.get("kubernetes.io/serviceaccount/service-account.name"))?,
            namespace: text(claims.get("kubernetes.io/serviceaccount/namespace"))?,
        })
    }
}

/// Unpadded (or padded) base64url, as JWT segments use.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// `POST auth/<mount>/login`, for messages and metrics (the body is vaultrs').
fn login_request(path: &str) -> Request {
    Request::new(Method::Post, path, "login")
}

/// The token of a login answer.
fn client_token(auth: vaultrs::api::AuthInfo, path: &str) -> Result<Secret, VaultError> {
    client_token_of(Some(auth.client_token), path)
}

fn client_token_of(token: Option<String>, path: &str) -> Result<Secret, VaultError> {
    token.filter(|t| !t.is_empty()).map(Secret::credential).ok_or_else(|| VaultError::InvalidResponse {
        method: "POST".into(),
        path: path.into(),
        detail: "login answer has no auth.client_token".into(),
    })
}

/// Reads a one-line credential file; trims whitespace. Errors name the file and the field.
fn read_credential(path: &Path, field: &str, what: &str) -> Result<Secret, VaultError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        VaultError::Auth(format!("cannot read {what} from {} ({e}); fix {field} or create the file", path.display()))
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(VaultError::Auth(format!("{} is empty; it must hold {what} ({field})", path.display())));
    }
    Ok(Secret::credential(value))
}

fn home_token_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".vault-token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_read_from_files_print_as_redacted_not_masked() {
        let dir = std::env::temp_dir().join(format!("keysync-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "hvs.CAESIQpZ7x4Lr2mT9kWq3vNbHdFg\n").unwrap();
        let token = read_credential(&file, "vault.auth.token_file", "the Vault token").unwrap();
        let shown = format!("{token:?} {token}");
        assert_eq!(shown, "Secret(<redacted>) <redacted>");
        let login = LoginResult { token, origin: "token file".into() };
        assert!(!format!("{login:?}").contains("hvs."), "{login:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn service_account_from_projected_and_legacy_tokens() {
        // {"kubernetes.io":{"namespace":"apps","serviceaccount":{"name":"keysync","uid":"u"}}}
        let projected = "e30.eyJrdWJlcm5ldGVzLmlvIjp7Im5hbWVzcGFjZSI6ImFwcHMiLCJzZXJ2aWNlYWNjb3VudCI6eyJuYW1lIjoia2V5c3luYyIsInVpZCI6InUifX19.sig";
        assert_eq!(
            ServiceAccount::from_jwt(&Secret::credential(projected)),
            Some(ServiceAccount { name: "keysync".into(), namespace: "apps".into() })
        );
        // {"kubernetes.io/serviceaccount/namespace":"ns","kubernetes.io/serviceaccount/service-account.name":"sa"}
        let legacy = "e30.eyJrdWJlcm5ldGVzLmlvL3NlcnZpY2VhY2NvdW50L25hbWVzcGFjZSI6Im5zIiwia3ViZXJuZXRlcy5pby9zZXJ2aWNlYWNjb3VudC9zZXJ2aWNlLWFjY291bnQubmFtZSI6InNhIn0.sig";
        assert_eq!(
            ServiceAccount::from_jwt(&Secret::credential(legacy)),
            Some(ServiceAccount { name: "sa".into(), namespace: "ns".into() })
        );
        assert_eq!(ServiceAccount::from_jwt(&Secret::credential("not-a-jwt")), None);
        assert_eq!(ServiceAccount::from_jwt(&Secret::credential("e30.e30.x")), None);
    }
}
