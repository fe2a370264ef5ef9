//! `keysync check-config`: validate, then show what keysync will actually use.

use super::{load_config, print_json, CliError, Output};
use crate::config::ConfigSource;
use crate::vault::VaultSettings;
use serde_json::json;

pub fn run(source: &ConfigSource, output: Output) -> Result<(), CliError> {
    let cfg = load_config(source)?;
    // Resolve VAULT_* fallbacks too, so a missing address is caught here, not at 3am.
    let settings = VaultSettings::from_env(&cfg.vault)?;
    let token_note = token_source(&cfg.vault.auth);
    match output {
        Output::Json => print_json(&json!({
            "file": source.path.display().to_string(),
            "file_found": source.path.exists(),
            "vault_address": settings.address.as_str(),
            "vault_addresses": settings.addresses.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "vault_namespace": settings.namespace,
            "token": token_note,
            "config": serde_json::to_value(&cfg).unwrap_or_default(),
        })),
        Output::Table => {
            let file = if source.path.exists() {
                source.path.display().to_string()
            } else {
                format!("{} (not found; defaults and environment only)", source.path.display())
            };
            println!("# config OK: {file}");
            if settings.addresses.len() > 1 {
                let list: Vec<&str> = settings.addresses.iter().map(|a| a.as_str()).collect();
                println!("# Vault addresses in use (tried in this order): {}", list.join(", "));
            } else {
                println!("# Vault address in use: {}", settings.address);
            }
            if let Some(ns) = &settings.namespace {
                println!("# Vault namespace: {ns}");
            }
            println!("# token: {token_note}");
            print!("{}", cfg.to_toml());
        }
    }
    Ok(())
}

/// Where the token will come from, in words. Never any part of the token itself: not even a
/// mask (8 characters of a root token are 8 characters fewer to guess).
fn token_source(auth: &crate::config::AuthConfig) -> String {
    use crate::config::AuthConfig;
    match auth {
        AuthConfig::Token(t) => match &t.token_file {
            Some(file) => format!("from the token file {} (vault.auth.token_file)", file.display()),
            None if std::env::var("VAULT_TOKEN").is_ok_and(|t| !t.trim().is_empty()) => {
                "from the VAULT_TOKEN environment variable".to_string()
            }
            None => "from ~/.vault-token (VAULT_TOKEN is not set)".to_string(),
        },
        AuthConfig::Approle(a) => format!(
            "from an approle login at auth/{}/login (role_id from {}, secret_id from {})",
            a.mount,
            a.role_id_file.display(),
            a.secret_id_file.display()
        ),
        AuthConfig::Jwt(j) => {
            format!(
                "from a jwt login at auth/{}/login as role {:?} (JWT from {})",
                j.mount,
                j.role,
                j.jwt_file.display()
            )
        }
        AuthConfig::Kubernetes(k) => format!(
            "from a kubernetes login at auth/{}/login as role {:?} (service-account token from {})",
            k.mount,
            k.role,
            k.jwt_file.display()
        ),
        AuthConfig::Cert(c) => format!(
            "from a cert login at auth/{}/login{} with the client certificate in vault.client_cert (or VAULT_CLIENT_CERT)",
            c.mount,
            c.name.as_ref().map(|n| format!(" as role {n:?}")).unwrap_or_default()
        ),
    }
}
