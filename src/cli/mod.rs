//! The `keysync` command line: argument parsing and one function per subcommand.

mod check_config;
mod consumers;
mod import;
mod index;
mod keys;
mod login;
mod output;
mod rotate;
mod verify;

use crate::config::{self, Config, ConfigSource};
use crate::logging::{self, LogFormat};
use crate::store::KeyStore;
use crate::vault::{Authenticator, Session, VaultClient, VaultError, VaultSettings};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

/// keysync: LLM-provider API keys in Vault / OpenBao, rotated and rendered to files.
#[derive(Debug, Parser)]
#[command(name = "keysync", version, about)]
pub struct Cli {
    /// Config file (TOML). Default: ./keysync.toml if it exists.
    #[arg(long, global = true, env = "KEYSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log level or filter (error, warn, info, debug, trace, or e.g. keysync=debug).
    #[arg(long, global = true, env = "KEYSYNC_LOG", default_value = "warn")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and print it resolved (secrets are never in it).
    CheckConfig {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Log in to Vault and show the token's accessor, policies, TTL and renewability.
    Login {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Store a new version of a key (from --file or stdin) and make it current.
    Put {
        name: String,
        /// Read the key from this file (default: stdin; hidden input on a terminal).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// A provider field stored with the key, e.g. --field base_url=https://api.deepseek.com.
        #[arg(long = "field", value_name = "K=V")]
        fields: Vec<String>,
        /// Write the version as pending; consumers keep the current key.
        #[arg(long)]
        no_promote: bool,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show a key version (masked unless --reveal).
    Get {
        name: String,
        /// A version number (default: the current version).
        #[arg(long)]
        version: Option<u64>,
        /// Print the key itself.
        #[arg(long)]
        reveal: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List keys with their current version, fingerprint and age.
    List {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Current / previous / pending versions, grace, disabled and external versions.
    Status {
        name: Option<String>,
        /// Show the agents reporting NAME: what each sink holds, and whether retirement of the
        /// previous key is held and by whom.
        #[arg(long, requires = "name")]
        consumers: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Every version of a key: created, fingerprint, role, who, why, deleted/destroyed.
    Audit {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Check that files hold the current keys (exit 1 on drift).
    Verify {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Compare with this key only (default: every key).
        #[arg(long)]
        key: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Make the previous key current again (only while it is in grace).
    Rollback {
        name: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Stop agents from rendering a key (files keep the last good key).
    Disable { name: String },
    /// Undo `disable`.
    Enable { name: String },
    /// Soft-delete every version of a key (recoverable with `undelete`).
    Delete { name: String },
    /// Restore a soft-deleted key.
    Undelete { name: String },
    /// Permanently destroy one version's data (its fingerprint stays for audit).
    Destroy {
        name: String,
        #[arg(long)]
        version: u64,
        /// Confirm: destroying cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Run the agent: render every sink, then keep them up to date.
    Run {
        /// Render everything once and exit (0 = all sinks rendered, 1 = not).
        #[arg(long)]
        once: bool,
    },
    /// Run a command with keys in its environment ([exec] env), restarting or signalling it on change.
    Exec {
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Rotate a key now (if due, or with --force), or every due key with --due.
    Rotate {
        name: Option<String>,
        /// Rotate every key with a provider that is due.
        #[arg(long, conflicts_with = "name")]
        due: bool,
        /// Rotate even if not due.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout.
    Man,
    /// The change index agents poll: status, migrate (legacy to sharded), drop-legacy.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Import many keys from JSON ({"name": "key"}) or a .env file (NAME_API_KEY=key).
    Import {
        file: PathBuf,
        /// Write as pending instead of current.
        #[arg(long)]
        no_promote: bool,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// A failed command: what to print and which exit code to use.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    /// Exit 2: the user's input (config, arguments) is wrong.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError { code: 2, message: message.into() }
    }

    /// Exit 1: the command could not do its job.
    pub fn failed(message: impl Into<String>) -> Self {
        CliError { code: 1, message: message.into() }
    }
}

impl From<config::ConfigError> for CliError {
    fn from(e: config::ConfigError) -> Self {
        CliError::usage(format!("invalid config: {e}"))
    }
}

impl From<VaultError> for CliError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Settings(_) => CliError::usage(e.to_string()),
            _ => CliError::failed(e.to_string()),
        }
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    if let Err(msg) = logging::init(&cli.log_level, cli.log_format) {
        eprintln!("error: {msg}");
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => 0,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            e.code
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let source = config::source_from_arg(cli.config.as_deref());
    match cli.command {
        Command::CheckConfig { output } => check_config::run(&source, output),
        Command::Login { output } => login::run(&source, output).await,
        Command::Put { name, file, fields, no_promote, reason, output } => {
            let name = keys::parse_name(&name)?;
            let fields = keys::parse_fields(&fields)?;
            let key = keys::read_key(file.as_deref(), &name)?;
            let cfg = load_config(&source)?;
            if !no_promote {
                if let Some(validation) = cfg.keys.get(name.as_str()).and_then(|k| k.validation.as_ref()) {
                    keys::validate_before_promote(&name, &key, validation).await?;
                }
            }
            let mut store = store_for(&cfg).await?;
            if let Some(grace) = cfg.keys.get(name.as_str()).and_then(|k| k.rotation.as_ref()).and_then(|p| p.grace) {
                store = store.with_grace(grace.get());
            }
            keys::put(&store, &name, key, fields, !no_promote, reason, output).await
        }
        Command::Get { name, version, reveal, output } => {
            let name = keys::parse_name(&name)?;
            keys::get(&open_store(&source).await?, &name, version, reveal, output).await
        }
        Command::List { output } => keys::list(&open_store(&source).await?, output).await,
        Command::Status { name, consumers: true, output } => {
            let name = keys::parse_name(name.as_deref().unwrap_or_default())?;
            let cfg = load_config(&source)?;
            consumers::run(&cfg, &store_for(&cfg).await?, &name, output).await
        }
        Command::Status { name, consumers: false, output } => {
            let name = name.as_deref().map(keys::parse_name).transpose()?;
            keys::status(&open_store(&source).await?, name.as_ref(), output).await
        }
        Command::Audit { name, output } => {
            let name = keys::parse_name(&name)?;
            keys::audit(&open_store(&source).await?, &name, output).await
        }
        Command::Verify { files, key, output } => {
            verify::run(&open_store(&source).await?, &files, key.as_deref(), output).await
        }
        Command::Rollback { name, reason, output } => {
            let name = keys::parse_name(&name)?;
            keys::rollback(&open_store(&source).await?, &name, reason, output).await
        }
        Command::Disable { name } => {
            let name = keys::parse_name(&name)?;
            keys::set_disabled(&open_store(&source).await?, &name, true).await
        }
        Command::Enable { name } => {
            let name = keys::parse_name(&name)?;
            keys::set_disabled(&open_store(&source).await?, &name, false).await
        }
        Command::Delete { name } => {
            let name = keys::parse_name(&name)?;
            keys::delete(&open_store(&source).await?, &name).await
        }
        Command::Undelete { name } => {
            let name = keys::parse_name(&name)?;
            keys::undelete(&open_store(&source).await?, &name).await
        }
        Command::Destroy { name, version, yes } => {
            let name = keys::parse_name(&name)?;
            if !yes {
                return keys::destroy_refused(&name, version);
            }
            keys::destroy(&open_store(&source).await?, &name, version, yes).await
        }
        Command::Rotate { name, due, force, reason, output } => {
            let cfg = load_config(&source)?;
            let store = store_for(&cfg).await?;
            rotate::run(&cfg, &store, name.as_deref(), due, force, reason, output).await
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "keysync", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| CliError::failed(format!("cannot write the man page: {e}")))
        }
        Command::Run { once } => run_agent(&source, once, None).await,
        Command::Exec { command } => run_agent(&source, false, Some(crate::agent::ExecSpec { argv: command })).await,
        Command::Index(command) => index::run(&open_store(&source).await?, command).await,
        Command::Import { file, no_promote, output } => {
            import::run(&open_store(&source).await?, &file, !no_promote, output).await
        }
    }
}

async fn run_agent(source: &ConfigSource, once: bool, exec: Option<crate::agent::ExecSpec>) -> Result<(), CliError> {
    let clock = std::sync::Arc::new(crate::rotation::SystemClock);
    match crate::agent::run(Arc::new(source.clone()), once, exec, clock).await {
        Ok(0) => Ok(()),
        Ok(code) => Err(CliError { code, message: String::new() }),
        Err(e) if e.is_usage() => Err(CliError::usage(e.to_string())),
        Err(e) => Err(CliError::failed(e.to_string())),
    }
}

/// Config, login and the key store, for the key commands.
async fn open_store(source: &ConfigSource) -> Result<KeyStore, CliError> {
    store_for(&load_config(source)?).await
}

/// [`open_store`] for a config already loaded.
async fn store_for(cfg: &Config) -> Result<KeyStore, CliError> {
    Ok(cfg.key_store(connect(cfg).await?))
}

/// Loads and validates the config.
pub(crate) fn load_config(source: &ConfigSource) -> Result<Config, CliError> {
    Ok(config::load(source)?)
}

/// Connects and logs in with the config's Vault settings.
pub(crate) async fn connect(cfg: &Config) -> Result<Arc<Session>, CliError> {
    let settings = VaultSettings::from_env(&cfg.vault)?;
    let client = VaultClient::new(settings)?;
    let auth = Authenticator::new(cfg.vault.auth.clone());
    Ok(Session::login(client, auth).await?)
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
