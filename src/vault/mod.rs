//! Talking to Vault / OpenBao: the HTTP client, auth methods and the token lifecycle.
//!
//! The rest of keysync speaks in keys, versions and fingerprints; this module is the only
//! place that knows Vault's HTTP API. We call the API with `reqwest` directly instead of
//! through vaultrs: we need merge-PATCH, LIST, per-request metrics, one error type that names
//! the path, and re-authentication on a dead token in one place, none of which vaultrs offers,
//! and its settings builder panics on a bad URL and reads `VAULT_*` silently.

mod auth;
mod client;
mod error;
mod session;

pub use auth::{Authenticator, LoginResult};
pub use client::{Method, Request, Response, VaultClient, VaultSettings};
pub use error::VaultError;
pub use session::{Session, TokenInfo};

use url::Url;

/// Checks a Vault address before anything uses it: absolute `http`/`https` URL with a host
/// and no query, fragment or credentials.
pub fn parse_address(text: &str) -> Result<Url, String> {
    let fix = "write it like \"https://vault.example.com:8200\"";
    let url = Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a valid URL ({e}); {fix}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("{text:?} must start with http:// or https://; {fix}"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host; {fix}"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?} must not carry a query, fragment or credentials; {fix}"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn accepts_plain_addresses() {
        assert!(parse_address("http://127.0.0.1:8200").is_ok());
        assert!(parse_address("https://vault.example.com").is_ok());
        assert!(parse_address("https://vault.example.com/").is_ok());
    }

    #[test]
    fn refuses_what_would_break_requests() {
        for bad in ["", "127.0.0.1:8200", "ftp://x", "http://", "not a url", "http://u:p@host", "http://h?x=1"] {
            assert!(parse_address(bad).is_err(), "{bad} should be refused");
        }
    }
}
