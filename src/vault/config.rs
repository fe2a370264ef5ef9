//! `[vault]` and `[vault.auth]`: how keysync reaches Vault and logs in, and the checks serde
//! cannot make. The vault module owns these types; `crate::config` re-exports them and turns an
//! [`InvalidField`] into its own error naming the file.

use crate::duration::HumanDuration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How to reach Vault and log in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// `http(s)://host:port`; falls back to `VAULT_ADDR`. Several addresses (a TOML list, or
    /// comma-separated) are tried in order, failing over when one does not answer, is sealed
    /// or is a standby without a leader.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "string_or_list", default)]
    pub address: Option<String>,
    /// PEM file with the CA that signed Vault's certificate; falls back to `VAULT_CACERT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    /// A directory of PEM CA files (every `*.pem`/`*.crt` in it); falls back to `VAULT_CAPATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<PathBuf>,
    /// The name to check Vault's certificate against (and send as SNI) instead of the host
    /// in the address; falls back to `VAULT_TLS_SERVER_NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// PEM client certificate presented to Vault (cert auth, or a listener that requires
    /// one); falls back to `VAULT_CLIENT_CERT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`; falls back to `VAULT_CLIENT_KEY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Vault Enterprise / OpenBao namespace; falls back to `VAULT_NAMESPACE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Skip TLS verification (testing only); falls back to `VAULT_SKIP_VERIFY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_verify: Option<bool>,
    /// Timeout of one HTTP request to Vault.
    pub timeout: HumanDuration,
    pub auth: AuthConfig,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            address: None,
            ca_cert: None,
            ca_path: None,
            tls_server_name: None,
            client_cert: None,
            client_key: None,
            namespace: None,
            skip_verify: None,
            timeout: HumanDuration::from_secs(30),
            auth: AuthConfig::default(),
        }
    }
}

/// `[vault.auth]`: which auth method logs keysync in, selected by `method`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum AuthConfig {
    Token(TokenAuth),
    Approle(AppRoleAuth),
    Jwt(JwtAuth),
    Kubernetes(KubernetesAuth),
    Cert(CertAuth),
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig::Token(TokenAuth::default())
    }
}

impl AuthConfig {
    pub fn method_name(&self) -> &'static str {
        match self {
            AuthConfig::Token(_) => "token",
            AuthConfig::Approle(_) => "approle",
            AuthConfig::Jwt(_) => "jwt",
            AuthConfig::Kubernetes(_) => "kubernetes",
            AuthConfig::Cert(_) => "cert",
        }
    }
}

/// `method = "token"`: a token from `token_file`, else `VAULT_TOKEN`, else `~/.vault-token`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenAuth {
    /// Re-read when it changes, so a sidecar can hand keysync fresh tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `method = "approle"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppRoleAuth {
    #[serde(default = "default_approle_mount")]
    pub mount: String,
    pub role_id_file: PathBuf,
    pub secret_id_file: PathBuf,
    /// The secret_id file holds a response-wrapping token to unwrap (single use).
    #[serde(default)]
    pub secret_id_wrapped: bool,
    /// Delete the secret_id file once read, like Vault Agent's
    /// `remove_secret_id_file_after_reading`.
    #[serde(default)]
    pub remove_secret_id_file: bool,
}

/// `method = "jwt"`: OpenBao/Vault's jwt auth with a JWT read from a file on every login.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    #[serde(default = "default_jwt_mount")]
    pub mount: String,
    pub role: String,
    pub jwt_file: PathBuf,
}

/// `method = "kubernetes"`: the pod's service-account token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesAuth {
    #[serde(default = "default_kubernetes_mount")]
    pub mount: String,
    pub role: String,
    #[serde(default = "default_service_account_token_file")]
    pub jwt_file: PathBuf,
}

/// `method = "cert"`: Vault's TLS certificate auth with `vault.client_cert` /
/// `vault.client_key` (or `VAULT_CLIENT_CERT` / `VAULT_CLIENT_KEY`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertAuth {
    #[serde(default = "default_cert_mount")]
    pub mount: String,
    /// The certificate role (`auth/cert/certs/NAME`) to log in against; unset: any role whose
    /// CA signed the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn default_cert_mount() -> String {
    "cert".into()
}

/// `address` as one string or a list of strings (joined with `, `; split again when the
/// settings are resolved).
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => None,
        Some(OneOrMany::One(s)) => Some(s),
        Some(OneOrMany::Many(list)) => Some(list.join(", ")),
    })
}

fn default_approle_mount() -> String {
    "approle".into()
}
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_service_account_token_file() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

/// A config field that fails a check: which one (`vault.auth.mount`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        InvalidField { field, message: message.into() }
    }
}

impl VaultConfig {
    /// Checks what serde cannot: the addresses, the timeout, and the auth method's mount and
    /// role (they become URL path segments).
    pub fn validate(&self) -> Result<(), InvalidField> {
        if let Some(addr) = &self.address {
            super::parse_addresses(addr).map_err(|m| InvalidField::new("vault.address", m))?;
        }
        if self.timeout.get().is_zero() {
            return Err(InvalidField::new("vault.timeout", "must be more than 0s"));
        }
        self.auth.validate()
    }
}

impl AuthConfig {
    /// Mounts are plain path segments, roles and names are not empty.
    pub fn validate(&self) -> Result<(), InvalidField> {
        match self {
            AuthConfig::Token(_) => {}
            AuthConfig::Approle(a) => check_segment("vault.auth.mount", &a.mount)?,
            AuthConfig::Jwt(j) => {
                check_segment("vault.auth.mount", &j.mount)?;
                check_nonempty("vault.auth.role", &j.role)?;
            }
            AuthConfig::Kubernetes(k) => {
                check_segment("vault.auth.mount", &k.mount)?;
                check_nonempty("vault.auth.role", &k.role)?;
            }
            AuthConfig::Cert(c) => {
                check_segment("vault.auth.mount", &c.mount)?;
                if let Some(name) = &c.name {
                    check_nonempty("vault.auth.name", name)?;
                }
            }
        }
        Ok(())
    }
}

fn check_nonempty(field: &'static str, value: &str) -> Result<(), InvalidField> {
    if value.trim().is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    Ok(())
}

/// An auth mount becomes one URL path segment: keep it to a plain name.
fn check_segment(field: &'static str, value: &str) -> Result<(), InvalidField> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if value.is_empty() || !value.chars().all(ok_char) || value == "." || value == ".." {
        return Err(InvalidField::new(
            field,
            format!("{value:?} is not a valid path segment; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}
