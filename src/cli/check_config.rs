//! `keysync check-config`: validate, then show what keysync will actually use.

use super::{load_config, print_json, CliError, Output};
use crate::config::ConfigSource;
use crate::vault::VaultSettings;
use serde_json::json;

pub fn run(source: &ConfigSource, output: Output) -> Result<(), CliError> {
    let cfg = load_config(source)?;
    // Resolve VAULT_* fallbacks too, so a missing address is caught here, not at 3am.
    let settings = VaultSettings::from_env(&cfg.vault)?;
    let token_note = match &cfg.vault.auth {
        crate::config::AuthConfig::Token(t) if t.token_file.is_none() => {
            match std::env::var("VAULT_TOKEN").ok().filter(|t| !t.is_empty()) {
                Some(t) => format!("from VAULT_TOKEN ({})", crate::secret::mask(&t)),
                None => "from ~/.vault-token (VAULT_TOKEN is not set)".to_string(),
            }
        }
        other => format!("from {} login", other.method_name()),
    };
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
