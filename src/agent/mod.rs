//! `keysync run` and `keysync exec`: log in, render every sink, then poll for changes.
//!
//! SIGHUP reloads the config and syncs now; SIGTERM/SIGINT finish the pass in flight and exit
//! 0. A pass that cannot reach Vault leaves every file alone and is retried with backoff
//! (1 s, 2 s, 4 s … capped at the poll interval, so recovery is seen within one poll).

mod child;
pub mod config;
mod exec;
mod hooks;
mod report;
mod sync;

pub use child::{check_pass_env, RunAs};
pub use config::{
    parse_signal, AgentConfig, Config, ConfigLoader, ExecConfig, ExecOnChange, KeyConfig, OnChangeConfig,
};
pub use exec::ExecSpec;
pub use sync::{PassReport, Syncer};

use crate::store::{default_actor, KeyName, Kv};
use crate::telemetry::{Health, Metrics};
use crate::vault::{Authenticator, Session, VaultClient, VaultSettings};
use hooks::Hooks;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How `run` ended, as an exit code.
pub type ExitCode = i32;

fn build(cfg: &Config, session: &Arc<Session>, metrics: &Arc<Metrics>) -> Result<(Syncer, Hooks), String> {
    let syncer = Syncer::new(cfg, cfg.key_store(session.clone()), metrics.clone())?;
    let mut hook_cfg = std::collections::BTreeMap::new();
    for (name, k) in &cfg.keys {
        if let (Some(h), Ok(n)) = (&k.on_change, KeyName::parse(name)) {
            hook_cfg.insert(n, h.clone());
        }
    }
    Ok((syncer, Hooks::new(hook_cfg, metrics.clone())))
}

/// Runs the agent. `once`: one full pass, exit 0 if every sink was rendered, 1 otherwise.
pub async fn run(source: Arc<dyn ConfigLoader>, once: bool, exec: Option<ExecSpec>) -> Result<ExitCode, String> {
    let mut cfg = source.load().map_err(|e| format!("invalid config: {e}"))?;
    if cfg.rendered_keys().is_empty() && exec.is_none() {
        return Err(format!(
            "{}: no sinks configured; add [[keys.NAME.sinks]] with a path (see README, \"Sinks\")",
            source.path().display()
        ));
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(cfg.agent.poll_interval.get()));
    health.set_sink_failure_threshold(cfg.agent.unready_after_sink_failures);
    metrics.track_health(health.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    if !once && cfg.agent.listen != "off" {
        let listener = tokio::net::TcpListener::bind(&cfg.agent.listen).await.map_err(|e| {
            format!("agent.listen {}: cannot listen ({e}); choose a free address or \"off\"", cfg.agent.listen)
        })?;
        let mut rx = stop_rx.clone();
        let (h, m) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = crate::telemetry::serve(listener, h, m, shutdown).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }

    let settings = VaultSettings::from_env(&cfg.vault).map_err(|e| e.to_string())?;
    let client = VaultClient::new(settings).map_err(|e| e.to_string())?;
    metrics.track_vault_client(&client);
    let session = if once {
        Session::login(client, Authenticator::new(cfg.vault.auth.clone())).await.map_err(|e| e.to_string())?
    } else {
        match login_waiting(client, &cfg).await? {
            Some(session) => session,
            None => return Ok(0),
        }
    };
    health.set_authenticated(true);
    let maintain = tokio::spawn(session.clone().maintain(stop_rx.clone()));
    let (mut syncer, mut hooks) = build(&cfg, &session, &metrics).map_err(|e| format!("invalid sink: {e}"))?;

    if once {
        let code = match syncer.pass(true).await {
            Ok(report) if report.failed_sinks.is_empty() && report.missing_sinks.is_empty() => 0,
            Ok(report) => {
                for s in &report.failed_sinks {
                    eprintln!("error: sink {s} was not rendered: writing it failed (the error is logged above)");
                }
                for s in &report.missing_sinks {
                    eprintln!(
                        "error: sink {s} was not rendered: its key does not exist under {}/{} (create it with `keysync put NAME`, or check kv.mount and kv.prefix)",
                        cfg.kv.mount, cfg.kv.prefix
                    );
                }
                1
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        };
        let _ = stop_tx.send(true);
        let _ = maintain.await;
        return Ok(code);
    }

    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut child = exec.map(|spec| exec::Child::new(spec, cfg.exec.clone().unwrap_or_default()));

    let mut full = true;
    let mut failures: u32 = 0;
    let mut first_done = false;
    let mut reporter = report::Reporter::default();
    let mut last_ack: Option<crate::store::Ack> = None;
    let mut last_ack_at = Instant::now();
    // Rotation runs beside the poll loop, never inside it: a slow provider or a burst of due
    // keys must not delay a render or flip /readyz (see `rotation_task`).
    let (rotation_cfg, rotation_cfg_rx) = tokio::sync::watch::channel(Arc::new(cfg.clone()));
    let mut rotation = tokio::spawn(rotation_task(rotation_cfg_rx, session.clone(), metrics.clone(), stop_rx.clone()));
    let exit_code = loop {
        let started = Instant::now();
        let result = syncer.pass(full).await;
        metrics.sync_duration_seconds.observe(started.elapsed().as_secs_f64());
        if let Some(ttl) = session.token_ttl_remaining() {
            metrics.token_ttl_seconds.set(ttl.as_secs_f64());
        }
        match result {
            Ok(report) => {
                failures = 0;
                full = false;
                health.sync_ok();
                health.sinks_rendered(&report.failure_reasons);
                metrics.last_successful_sync_timestamp_seconds.set(chrono::Utc::now().timestamp() as f64);
                if !first_done {
                    first_done = true;
                    health.set_first_render_done();
                    tracing::info!(sinks = syncer.sink_count(), "first render done");
                    crate::agent::notify_ready();
                }
                for (key, (version, fp)) in &report.changed {
                    hooks.changed(key, *version, fp);
                }
                if let Some(c) = child.as_mut() {
                    if let Err(e) = c.after_pass(&syncer, &report).await {
                        eprintln!("error: {e}");
                        tracing::error!(error = %e, "cannot start the child; stopping");
                        break 127;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                metrics.sync_failures_total.inc();
                health.sync_failed(&e.to_string());
                tracing::warn!(error = %e, attempt = failures, "sync failed; files are left as they are");
                if let Some(c) = child.as_mut() {
                    // A debounced restart that fell due is not held up by Vault being away.
                    if let Err(e) = c.after_pass(&syncer, &PassReport::default()).await {
                        eprintln!("error: {e}");
                        tracing::error!(error = %e, "cannot start the child; stopping");
                        break 127;
                    }
                }
            }
        }
        let hook_results = hooks.run_due().await;
        if cfg.agent.report_renders && first_done {
            let ack = consumer_report(&mut reporter, &syncer, &hooks, child.as_ref(), &hook_results);
            // Refreshed well within ack_ttl, so a healthy agent never reads as silent.
            let refresh = last_ack_at.elapsed() >= cfg.rotation.ack_ttl.get() / 2;
            if last_ack.as_ref() != Some(&ack) || refresh {
                let kv = Kv::new(session.clone(), &cfg.kv.mount, &cfg.kv.prefix);
                match kv.acks().report(&default_actor(), &ack).await {
                    Ok(()) => {
                        last_ack = Some(ack);
                        last_ack_at = Instant::now();
                    }
                    Err(e) => tracing::warn!(error = %e, "could not report what this agent's sinks hold"),
                }
            }
        }

        let poll = cfg.agent.poll_interval.get();
        let mut wait =
            if failures > 0 { Duration::from_secs(1u64 << failures.min(10)).min(poll) } else { jittered(poll) };
        if let Some(g) = syncer.next_grace_end() {
            let until = (g - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(50);
            wait = wait.min(until);
        }
        for due in [hooks.next_due(), child.as_ref().and_then(|c| c.next_due())].into_iter().flatten() {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        let child_exit = async {
            match child.as_mut() {
                Some(c) => c.wait_exit().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                match source.load() {
                    Ok(new_cfg) => match build(&new_cfg, &session, &metrics) {
                        Ok((s, h)) => {
                            health.set_sink_failure_threshold(new_cfg.agent.unready_after_sink_failures);
                            syncer = s; hooks = h; cfg = new_cfg; full = true;
                            rotation_cfg.send_replace(Arc::new(cfg.clone()));
                        }
                        Err(e) => tracing::error!(error = %e, "new config has a bad sink; keeping the old config"),
                    },
                    Err(e) => tracing::error!(error = %e, "new config is invalid; keeping the old config"),
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                break match child.as_mut() { Some(c) => c.stop(nix::sys::signal::Signal::SIGTERM).await, None => 0 };
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping");
                break match child.as_mut() { Some(c) => c.stop(nix::sys::signal::Signal::SIGINT).await, None => 0 };
            }
            code = child_exit => {
                tracing::info!(code, "child exited");
                break code;
            }
        }
    };
    let _ = stop_tx.send(true);
    let _ = maintain.await;
    // A rotation step in flight is finished rather than cut (a cut one is resumed later, but
    // may leave a minted key to clean up); the workers take no new key once stopped.
    if tokio::time::timeout(ROTATION_STOP_WAIT, &mut rotation).await.is_err() {
        tracing::warn!(
            "a rotation step did not finish within {ROTATION_STOP_WAIT:?} of stopping; it resumes at the next start"
        );
        rotation.abort();
    }
    Ok(exit_code)
}

/// Logs in; while Vault cannot be reached (down, sealed, electing a leader) waits and tries
/// again (1 s doubling to 30 s), not ready meanwhile, instead of exiting: an agent started
/// before its Vault (a reboot, a cluster restart) comes up by itself. A refusal (bad
/// credentials, bad settings) still ends `run` at once. `None`: SIGTERM/SIGINT while waiting.
async fn login_waiting(client: VaultClient, cfg: &Config) -> Result<Option<Arc<Session>>, String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut wait = Duration::from_secs(1);
    loop {
        match Session::login(client.clone(), Authenticator::new(cfg.vault.auth.clone())).await {
            Ok(session) => return Ok(Some(session)),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?wait, "Vault is not available yet; waiting (not ready)");
            }
            Err(e) => return Err(e.to_string()),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => return Ok(None),
            _ = int.recv() => return Ok(None),
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// This pass's report: what each key's sinks and exec variables hold, each key moved on only
/// once its hook or exec restart finished (see `report.rs`).
fn consumer_report(
    reporter: &mut report::Reporter,
    syncer: &Syncer,
    hooks: &Hooks,
    child: Option<&exec::Child>,
    hook_results: &[hooks::HookResult],
) -> crate::store::Ack {
    let mut disk = syncer.holdings();
    let mut gated: std::collections::BTreeSet<KeyName> = disk.keys().filter(|k| hooks.is_pending(k)).cloned().collect();
    if let Some(c) = child {
        for (k, h) in c.holdings() {
            disk.entry(k).or_default().extend(h);
        }
        gated.extend(c.pending_keys());
    }
    for (key, result) in hook_results {
        reporter.hook_finished(key, result, disk.get(key).cloned());
    }
    reporter.update(disk, &gated);
    reporter.ack(&syncer.current_fingerprints())
}

/// The wait before the next poll: `poll` shortened by up to 10 %, never lengthened, so agents
/// started together spread out while a change still reaches the files within one
/// `poll_interval` (plus one pass), the propagation bound operators are promised.
fn jittered(poll: Duration) -> Duration {
    poll.mul_f64(rand::rng().random_range(0.9..=1.0))
}

/// Keys rotated at the same time by one agent: enough to hide provider latency, few enough not
/// to swamp a provider or Vault after an outage.
const ROTATION_CONCURRENCY: usize = 4;

/// How long a stopping agent waits for the rotation steps in flight.
const ROTATION_STOP_WAIT: Duration = Duration::from_secs(10);

/// Rotation beside the poll loop (agent.rotate = true): every `rotation_check_interval`
/// (shortened by up to 10 %, like polls), one round over every key with a provider, in a
/// random order, [`ROTATION_CONCURRENCY`] keys at a time; rounds never overlap. A scheduled
/// rotation starts after a random wait of up to a tenth of the interval (at most 10 s), so keys
/// that came due together — after an outage — are spread out. Picks up a reloaded config at
/// the next round; ends with the agent. Repeated failures are logged once per outage
/// ([`crate::rotation::FailureLog`]).
async fn rotation_task(
    cfg: tokio::sync::watch::Receiver<Arc<Config>>,
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let memory = Arc::new(crate::rotation::Memory::default());
    let log = Arc::new(std::sync::Mutex::new(crate::rotation::FailureLog::default()));
    loop {
        let current = cfg.borrow().clone();
        if current.agent.rotate {
            rotate_due(&current, &session, &metrics, &memory, &log, &stop).await;
        }
        let wait = jittered(current.agent.rotation_check_interval.get());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One round of rotation for every key with a provider (see [`rotation_task`]).
async fn rotate_due(
    cfg: &Arc<Config>,
    session: &Arc<Session>,
    metrics: &Arc<Metrics>,
    memory: &Arc<crate::rotation::Memory>,
    log: &Arc<std::sync::Mutex<crate::rotation::FailureLog>>,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    use rand::seq::SliceRandom as _;
    let mut names: Vec<String> =
        cfg.keys.iter().filter(|(_, k)| k.provider.is_some()).map(|(n, _)| n.clone()).collect();
    names.shuffle(&mut rand::rng());
    let jitter = (cfg.agent.rotation_check_interval.get() / 10).min(Duration::from_secs(10));
    let queue = Arc::new(std::sync::Mutex::new(names));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..ROTATION_CONCURRENCY {
        let (cfg, session, metrics, memory, log, queue, stop) =
            (cfg.clone(), session.clone(), metrics.clone(), memory.clone(), log.clone(), queue.clone(), stop.clone());
        workers.spawn(async move {
            let store = cfg.key_store(session);
            let clock = crate::rotation::SystemClock;
            let mut engine = crate::rotation::Engine::new(&store, &clock, Some(&metrics), &memory);
            engine.start_jitter = Some(jitter);
            loop {
                if *stop.borrow() {
                    break;
                }
                let Some(name) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else { break };
                let plan = match cfg.rotation_plan(&name) {
                    Ok(Some(plan)) => plan,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(key = %name, error = %e, "no rotation plan");
                        continue;
                    }
                };
                let result = engine.step(&plan, false, "scheduled rotation").await;
                let now = Instant::now();
                let lines = {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    match &result {
                        Ok(_) => log.succeeded(&name, now),
                        Err(e) => log.failed(&name, e, now).into_iter().collect(),
                    }
                };
                lines.iter().for_each(crate::rotation::FailureLog::emit);
                if let Ok(outcome) = result {
                    tracing::debug!(key = %name, ?outcome, "rotation check");
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
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
