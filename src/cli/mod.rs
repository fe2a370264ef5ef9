//! The `keysync` command line: argument parsing and one function per subcommand.

mod check_config;
mod login;

use crate::config::{self, Config, ConfigSource};
use crate::logging::{self, LogFormat};
use crate::vault::{Authenticator, Session, VaultClient, VaultError, VaultSettings};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::Arc;

/// keysync: LLM-provider API keys in Vault / OpenBao, rotated and rendered to files.
#[derive(Debug, Parser)]
#[command(name = "keysync", version, about, propagate_version = true)]
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
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let source = config::source_from_arg(cli.config.as_deref());
    match cli.command {
        Command::CheckConfig { output } => check_config::run(&source, output),
        Command::Login { output } => login::run(&source, output).await,
    }
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
