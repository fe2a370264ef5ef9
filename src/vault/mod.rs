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
pub use client::{cli_name, Method, Request, Response, VaultClient, VaultSettings};
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

/// One address, or several separated by commas (a TOML list is joined that way): each
/// checked like [`parse_address`], at least one, no duplicates.
pub fn parse_addresses(text: &str) -> Result<Vec<Url>, String> {
    let mut out: Vec<Url> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = parse_address(part)?;
        if out.contains(&url) {
            return Err(format!("{part:?} is listed twice; list each Vault address once"));
        }
        out.push(url);
    }
    if out.is_empty() {
        return Err(format!("{text:?} holds no address; write it like \"https://vault.example.com:8200\""));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{parse_address, parse_addresses};

    #[test]
    fn several_addresses_keep_their_order() {
        let list = parse_addresses("https://a:8200, https://b:8200,https://c:8200").unwrap();
        let hosts: Vec<_> = list.iter().map(|u| u.host_str().unwrap().to_string()).collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert!(parse_addresses("https://a:1, https://a:1").unwrap_err().contains("twice"));
        assert!(parse_addresses(" , ").is_err());
        assert!(parse_addresses("https://a:1, nope").is_err());
    }

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
