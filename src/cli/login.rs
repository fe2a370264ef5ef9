//! `keysync login`: prove the auth config works; show what the token may do, never the token.

use super::{connect, load_config, print_json, CliError, Output};
use crate::config::ConfigSource;

pub async fn run(source: &ConfigSource, output: Output) -> Result<(), CliError> {
    let cfg = load_config(source)?;
    let session = connect(&cfg).await?;
    let info = session.token_info();
    // The address that answered (with several, not necessarily the first).
    let address = session.client().active_address().as_str().trim_end_matches('/').to_string();
    match output {
        Output::Json => print_json(&serde_json::json!({
            "address": address,
            "method": cfg.vault.auth.method_name(),
            "origin": info.origin,
            "accessor": info.accessor,
            "policies": info.policies,
            "ttl_secs": info.ttl_secs,
            "renewable": info.renewable,
            "expire_time": info.expire_time,
            "token_type": info.token_type,
        })),
        Output::Table => {
            let ttl = if info.ttl_secs == 0 {
                "never expires".to_string()
            } else {
                let mut t = humantime::format_duration(std::time::Duration::from_secs(info.ttl_secs)).to_string();
                if let Some(exp) = &info.expire_time {
                    t.push_str(&format!(" (until {exp})"));
                }
                t
            };
            println!("Logged in to {address} ({})", info.origin);
            println!("  accessor    {}", info.accessor);
            println!("  policies    {}", info.policies.join(", "));
            println!("  ttl         {ttl}");
            println!("  renewable   {}", if info.renewable { "yes" } else { "no" });
            println!("  token type  {}", info.token_type);
        }
    }
    Ok(())
}
