//! One error type for every Vault call. Each variant names the request that failed and says
//! what to check; none carries a token or a response body that could hold a secret.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// No HTTP answer at all: refused, DNS, TLS, timeout.
    #[error("cannot reach Vault at {address} ({detail}) during {op}; check that the server is running and that vault.address / VAULT_ADDR is right")]
    Unreachable {
        address: String,
        op: String,
        detail: String,
        /// The connection was made (the request may have been done): not sent elsewhere.
        connected: bool,
    },

    /// The TLS handshake failed; `fix` names the setting to change.
    #[error("TLS with Vault at {address} failed during {op} ({detail}): {fix}")]
    Tls { address: String, op: String, detail: String, fix: String },

    /// Every address answered, but no node could serve: sealed, or standbys without a leader.
    #[error("no active Vault node for {op} (tried {addresses}): {detail}; {hint}")]
    NoActiveNode { op: String, addresses: String, detail: String, hint: String },

    /// The token was accepted but its policies do not allow this request.
    #[error("permission denied: {method} {path} was refused; check that the token's policies ({policies}) grant the needed capability on that path (see policies/keysync-*.hcl)")]
    PermissionDenied { method: String, path: String, policies: PolicyList },

    /// The token is gone (revoked or expired) and keysync could not log in again.
    #[error("Vault token is no longer valid and re-authentication failed: {0}")]
    TokenInvalid(String),

    /// A CAS write lost: someone else wrote first.
    #[error("check-and-set conflict on {path}: another writer created a newer version first")]
    CasConflict { path: String },

    /// Vault answered with an error status.
    #[error("Vault answered {status} to {method} {path}: {message}")]
    Api { method: String, path: String, status: u16, message: String },

    /// Vault answered 2xx with a body we could not understand.
    #[error("unexpected answer from Vault to {method} {path}: {detail}")]
    InvalidResponse { method: String, path: String, detail: String },

    /// Logging in failed for a reason the operator must fix (bad file, bad role).
    #[error("{0}")]
    Auth(String),

    /// `kv.mount` is not a KV v2 mount (missing, KV v1, another engine).
    #[error("{0}")]
    KvMount(String),

    /// The Vault settings themselves are wrong (bad CA file, bad address).
    #[error("{0}")]
    Settings(String),
}

impl VaultError {
    /// Worth retrying later: network trouble, 5xx, 429.
    pub fn is_transient(&self) -> bool {
        match self {
            VaultError::Unreachable { .. } | VaultError::NoActiveNode { .. } => true,
            VaultError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            VaultError::Api { status, .. } => Some(*status),
            VaultError::PermissionDenied { .. } | VaultError::TokenInvalid(_) => Some(403),
            VaultError::CasConflict { .. } => Some(400),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// Policies of the token, for messages.
#[derive(Debug, Clone, Default)]
pub struct PolicyList(pub Vec<String>);

impl fmt::Display for PolicyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("unknown")
        } else {
            f.write_str(&self.0.join(", "))
        }
    }
}
