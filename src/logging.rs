//! Log setup: text or JSON to stderr through `tracing`. Chatty HTTP internals are kept at
//! `warn` so that raising keysync's own level to `trace` never dumps request headers. vaultrs
//! and rustify are off: they log every Vault refusal at `error` (a 404 read, a lost
//! check-and-set), which keysync handles or reports itself with the path and the fix.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` is a level (`debug`) or a filter directive
/// (`keysync=trace`). Calling it twice is harmless.
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    check_level(level)?;
    let directives = format!(
        "{level},hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn,h2=warn,tower=warn,vaultrs=off,rustify=off"
    );
    let filter = EnvFilter::try_new(&directives).map_err(|e| {
        format!("--log-level {level:?} is not a level or filter ({e}); use error, warn, info, debug or trace")
    })?;
    // Colour only on a terminal: journald, `docker logs` and log files get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// `EnvFilter` takes any word as a target name, so a typo like `--log-level debgu` would
/// silently log nothing: accept only levels and `target=level` directives.
fn check_level(spec: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let ok = !spec.trim().is_empty()
        && spec.split(',').all(|part| {
            let level =
                part.rsplit_once('=').map_or(part, |(target, level)| if target.is_empty() { "" } else { level });
            LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--log-level {spec:?} is not a level or filter; use error, warn, info, debug, trace, or target=level"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check_level;

    #[test]
    fn levels_and_directives_pass_typos_do_not() {
        for ok in ["info", "DEBUG", "warn,keysync=trace", "keysync::vault=debug"] {
            assert!(check_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "loud!", "debgu", "keysync=", "=info"] {
            assert!(check_level(bad).is_err(), "{bad}");
        }
    }
}
