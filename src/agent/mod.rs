//! `keysync run` and `keysync exec`: log in, render every sink, then poll for changes.
//!
//! SIGHUP reloads the config and syncs now; SIGTERM/SIGINT finish the pass in flight and exit
//! 0. A pass that cannot reach Vault leaves every file alone and is retried with backoff
//! (2 s, 4 s, 8 s … capped at the poll interval, so recovery is seen within one poll).
//!
//! [`run`] sets up (config, metrics endpoint, login) and hands over to the loop in
//! `agent_loop.rs`, whose steps — tick, wait for the next deadline, reload, shutdown — are
//! methods of their own; rotation runs beside it (`rotation.rs`).

mod agent_loop;
mod child;
pub mod config;
mod error;
mod exec;
mod hooks;
mod report;
mod rotation;
mod signal;
mod sync;

pub use child::{check_pass_env, RunAs};
pub use config::{AgentConfig, Config, ConfigLoader, ExecConfig, ExecOnChange, KeyConfig, OnChangeConfig};
pub use error::AgentError;
pub use exec::ExecSpec;
pub use signal::SignalName;
pub use sync::{PassReport, Syncer};

use crate::rotation::Clock;
use crate::telemetry::{Health, Metrics};
use crate::vault::{Authenticator, Session, VaultClient, VaultSettings};
use agent_loop::{AgentLoop, Shared, Signals};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How `run` ended, as an exit code.
pub type ExitCode = i32;

/// Runs the agent. `once`: one full pass, exit 0 if every sink was rendered, 1 otherwise.
/// `clock` is "now" for the agent's deadlines and rotation decisions (the system clock, except
/// in tests).
pub async fn run(
    source: Arc<dyn ConfigLoader>,
    once: bool,
    exec: Option<ExecSpec>,
    clock: Arc<dyn Clock>,
) -> Result<ExitCode, AgentError> {
    let cfg = source.load().map_err(AgentError::Config)?;
    if cfg.rendered_keys().is_empty() && exec.is_none() {
        return Err(AgentError::NoSinks { path: source.path().display().to_string() });
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(cfg.agent.poll_interval.get()));
    health.set_sink_failure_threshold(cfg.agent.unready_after_sink_failures);
    metrics.track_health(health.clone());
    let (stop, stop_rx) = watch::channel(false);
    if !once && cfg.agent.listen != "off" {
        serve_telemetry(&cfg.agent.listen, &health, &metrics, stop_rx).await?;
    }
    let client = VaultClient::new(VaultSettings::from_env(&cfg.vault)?)?;
    metrics.track_vault_client(&client);
    if once {
        let session = Session::login(client, Authenticator::new(cfg.vault.auth.clone())).await?;
        let shared = Shared { session, metrics, health, clock };
        let mut agent = AgentLoop::new(source, cfg, shared, stop, exec)?;
        let code = agent.once().await;
        agent.shutdown().await;
        return Ok(code);
    }
    let mut signals = Signals::install()?;
    let Some(session) = login_waiting(client, &cfg, &mut signals).await? else { return Ok(0) };
    let shared = Shared { session, metrics, health, clock };
    let mut agent = AgentLoop::new(source, cfg, shared, stop, exec)?;
    let code = agent.run(signals).await;
    agent.shutdown().await;
    Ok(code)
}

/// Serves /metrics, /healthz and /readyz on `listen` until `stop` is set.
async fn serve_telemetry(
    listen: &str,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| AgentError::Listen { address: listen.to_string(), source })?;
    let (h, m) = (health.clone(), metrics.clone());
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::telemetry::serve(listener, h, m, shutdown).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Logs in; while Vault cannot be reached (down, sealed, electing a leader) waits and tries
/// again (1 s doubling to 30 s), not ready meanwhile, instead of exiting: an agent started
/// before its Vault (a reboot, a cluster restart) comes up by itself. A refusal (bad
/// credentials, bad settings) still ends `run` at once. `None`: SIGTERM/SIGINT while waiting.
async fn login_waiting(
    client: VaultClient,
    cfg: &Config,
    signals: &mut Signals,
) -> Result<Option<Arc<Session>>, AgentError> {
    let mut wait = Duration::from_secs(1);
    loop {
        match Session::login(client.clone(), Authenticator::new(cfg.vault.auth.clone())).await {
            Ok(session) => return Ok(Some(session)),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?wait, "Vault is not available yet; waiting (not ready)");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = signals.stop_requested() => return Ok(None),
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// The wait before the next poll: `poll` shortened by up to 10 %, never lengthened, so agents
/// started together spread out while a change still reaches the files within one
/// `poll_interval` (plus one pass), the propagation bound operators are promised.
fn jittered(poll: Duration) -> Duration {
    poll.mul_f64(rand::rng().random_range(0.9..=1.0))
}

/// Tells systemd (Type=notify) that the first render is done, when run under it.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = std::path::PathBuf::from(path);
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let target = path.to_string_lossy().to_string();
    let result = if let Some(abstract_name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(b"READY=1\n", &addr))
    } else {
        sock.send_to(b"READY=1\n", &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_never_waits_longer_than_the_poll_interval() {
        let poll = Duration::from_secs(10);
        let waits: Vec<Duration> = (0..2000).map(|_| jittered(poll)).collect();
        assert!(waits.iter().all(|w| *w <= poll && *w >= poll.mul_f64(0.9)), "{waits:?}");
        // Still spread: agents started together do not stay in lockstep.
        let (min, max) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*max - *min > Duration::from_millis(500), "{min:?}..{max:?}");
    }
}
