//! Talking to Vault / OpenBao: the HTTP client, auth methods, the token lifecycle and KV v2.
//!
//! The rest of keysync speaks in keys, versions and fingerprints; this module is the only
//! place that knows Vault's HTTP API, and vaultrs makes the calls: the AppRole, JWT and
//! Kubernetes logins, token lookup-self and renew-self, unwrapping, and KV v2 read, list,
//! metadata read and write, check-and-set write, delete, undelete, destroy and removal
//! (`kv.rs`, `auth.rs`, `session.rs`). Around vaultrs, keysync keeps what it does not do:
//!
//! - vaultrs' settings builder panics on a bad URL and reads `VAULT_*` for every field left
//!   unset: keysync never uses it. Addresses are checked with [`parse_address`], `VAULT_*`
//!   is read once, visibly, in [`VaultSettings::resolve`], and vaultrs' settings are built with
//!   every field set (`transport.rs`). Its middleware panics on a token or namespace that
//!   cannot be a header value: those are checked first and refused with a message.
//! - TLS (`ca_cert`, `ca_path`, `tls_server_name`, client certificate, `skip_verify`), no
//!   redirects, timeouts: each address gets its own `reqwest` client, handed to vaultrs'
//!   HTTP client.
//! - Several addresses with failover, the retry through a raft election (307 / 503), never
//!   resending a write answered 307, and telling "not sent" from "maybe done" for writes
//!   (`Unreachable { connected }`, which rotation uses to decide landed / not landed /
//!   unknown): vaultrs talks to one address and folds every failure into one error, so each
//!   call is one closure that `client.rs` runs against each address and whose failure
//!   `transport.rs` sorts back into an answer (status, body) or a transport failure.
//! - Per-request metrics by operation and status, errors that name method, path and the fix
//!   ([`VaultError`]), and one re-authentication point ([`Session`]: a 403 is checked with
//!   lookup-self, a dead token replaced and the call made once more).
//!
//! Calls vaultrs has no function for, or would get wrong, go through vaultrs' HTTP client
//! as one raw endpoint (`transport.rs`, [`Request`]): merge-PATCH of KV data and of
//! custom_metadata (vaultrs has no PATCH and never sets the `application/merge-patch+json`
//! content type), the KV mount check (`sys/internal/ui/mounts`), the server flavour
//! (`sys/seal-status`, whose version vaultrs does not return), and the cert login (vaultrs
//! sends the role as `cert_name`, which Vault ignores, so `vault.auth.name` would be lost).
//! vaultrs' lookup-self answer has no token type; a token without an accessor is reported as
//! a batch token.

mod auth;
mod client;
mod config;
mod error;
mod kv;
mod session;
mod transport;

pub use auth::{Authenticator, LoginResult};
pub use client::{cli_name, Method, Request, Response, VaultClient, VaultSettings};
pub use config::{AppRoleAuth, AuthConfig, CertAuth, InvalidField, JwtAuth, KubernetesAuth, TokenAuth, VaultConfig};
pub use error::VaultError;
pub use kv::{KvMetadata, KvRead, KvVersionMetadata, VersionAction};
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
