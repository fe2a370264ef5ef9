//! Why `keysync run` / `keysync exec` could not start (or keep) running. Each message names
//! the thing and the fix; the CLI maps [`AgentError::Config`] to the usage exit code (2) and
//! everything else to 1.

use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config file (or an environment override) is unusable.
    #[error("invalid config: {0}")]
    Config(Box<dyn std::error::Error + Send + Sync>),
    /// Nothing to render and no command to run: the agent would do nothing.
    #[error("{path}: no sinks configured; add [[keys.NAME.sinks]] with a path (see docs/agent.md)")]
    NoSinks { path: String },
    /// `agent.listen` cannot be bound.
    #[error("agent.listen {address}: cannot listen ({source}); choose a free address or \"off\"")]
    Listen { address: String, source: std::io::Error },
    /// Vault settings, login or a refusal that waiting will not fix.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A sink the config describes cannot be set up (its message names the sink).
    #[error("invalid sink: {0}")]
    Sink(String),
    /// The process cannot listen for a signal it must handle.
    #[error("cannot handle {signal} ({source}); keysync needs signal handlers to reload and stop cleanly")]
    Signal { signal: &'static str, source: std::io::Error },
}

impl AgentError {
    /// Whether the user's config is at fault (exit code 2, like other usage errors).
    pub fn is_usage(&self) -> bool {
        matches!(self, AgentError::Config(_))
    }
}
