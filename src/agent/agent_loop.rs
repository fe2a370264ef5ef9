//! The long-running agent as explicit steps, so each can be read (and changed) on its own:
//!
//! * [`AgentLoop::tick`]: one sync pass — render what changed, start or restart the exec child,
//!   run due hooks, report what this agent's sinks hold;
//! * [`AgentLoop::wait_for_next_deadline`]: sleep until the next poll (or the backoff after
//!   a failed pass), a grace end or a debounced action — or until a signal or the child's exit;
//! * [`AgentLoop::reload`]: SIGHUP — the new config replaces the old one only if it is usable;
//! * [`AgentLoop::shutdown`]: stop the token upkeep and let a rotation step in flight finish.
//!
//! Rotation runs beside the loop, never inside it (see [`super::rotation`]).

use super::config::{Config, ConfigLoader};
use super::exec::{self, ExecSpec};
use super::hooks::{self, Hooks};
use super::report;
use super::rotation::{rotation_task, RotationDeps};
use super::sync::{PassReport, Syncer};
use super::{jittered, AgentError, ExitCode};
use crate::clock;
use crate::rotation::Clock;
use crate::store::{default_actor, Ack, KeyName, Kv};
use crate::telemetry::{Health, Metrics};
use crate::vault::Session;
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a stopping agent waits for the rotation steps in flight.
const ROTATION_STOP_WAIT: Duration = Duration::from_secs(10);

/// The signals a running agent handles, installed once (before login, so a SIGTERM while
/// waiting for Vault is not lost).
pub(super) struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> Result<Signals, AgentError> {
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| AgentError::Signal { signal: name, source })
        };
        Ok(Signals {
            hup: listen(SignalKind::hangup(), "SIGHUP")?,
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Waits for SIGTERM or SIGINT (returned).
    pub(super) async fn stop_requested(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
        }
    }
}

/// What ended a [`AgentLoop::wait_for_next_deadline`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// The next pass is due (poll interval, backoff, grace end or a debounced action).
    Deadline,
    /// SIGHUP.
    Reload,
    /// SIGTERM or SIGINT.
    Stop(Signal),
    /// The exec child exited by itself, with this code.
    ChildExited(ExitCode),
}

/// What the loop shares with the tasks beside it (token upkeep, rotation, metrics endpoint).
pub(super) struct Shared {
    pub session: Arc<Session>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub clock: Arc<dyn Clock>,
}

/// The agent between login and exit (see the module comment).
pub(super) struct AgentLoop {
    source: Arc<dyn ConfigLoader>,
    cfg: Config,
    shared: Shared,
    syncer: Syncer,
    hooks: Hooks,
    child: Option<exec::Child>,
    /// The next pass reads every key's metadata, not just the index: the first pass and the
    /// first after a reload.
    full: bool,
    /// Failed passes in a row; sets the backoff.
    failures: u32,
    first_done: bool,
    reporter: report::Reporter,
    last_ack: Option<Ack>,
    last_ack_at: Instant,
    stop: watch::Sender<bool>,
    maintain: JoinHandle<()>,
    /// The rotation task and the sender that hands it reloaded configs.
    rotation: Option<(watch::Sender<Arc<Config>>, JoinHandle<()>)>,
}

/// The sink renderer and the hooks for `cfg`.
fn build(cfg: &Config, session: &Arc<Session>, metrics: &Arc<Metrics>) -> Result<(Syncer, Hooks), AgentError> {
    let syncer = Syncer::new(cfg, cfg.key_store(session.clone()), metrics.clone()).map_err(AgentError::Sink)?;
    let mut hook_cfg = BTreeMap::new();
    for (name, k) in &cfg.keys {
        if let (Some(h), Ok(n)) = (&k.on_change, KeyName::parse(name)) {
            hook_cfg.insert(n, h.clone());
        }
    }
    Ok((syncer, Hooks::new(hook_cfg, metrics.clone())))
}

/// The wait after `failures` failed passes in a row: 2 s, 4 s, 8 s … never longer than `poll`,
/// so recovery is seen within one poll interval.
fn backoff(failures: u32, poll: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.min(10)).min(poll)
}

impl AgentLoop {
    /// Sets up sinks, hooks and the exec child for `cfg`, and starts keeping the session's
    /// token alive until [`AgentLoop::shutdown`].
    pub(super) fn new(
        source: Arc<dyn ConfigLoader>,
        cfg: Config,
        shared: Shared,
        stop: watch::Sender<bool>,
        exec: Option<ExecSpec>,
    ) -> Result<AgentLoop, AgentError> {
        shared.health.set_authenticated(true);
        let (syncer, hooks) = build(&cfg, &shared.session, &shared.metrics)?;
        let maintain = tokio::spawn(shared.session.clone().maintain(stop.subscribe()));
        let child = exec.map(|spec| exec::Child::new(spec, cfg.exec.clone().unwrap_or_default()));
        Ok(AgentLoop {
            source,
            cfg,
            shared,
            syncer,
            hooks,
            child,
            full: true,
            failures: 0,
            first_done: false,
            reporter: report::Reporter::default(),
            last_ack: None,
            last_ack_at: clock::instant(),
            stop,
            maintain,
            rotation: None,
        })
    }

    /// `keysync run --once`: one full pass; 0 if every sink was rendered, 1 otherwise (each
    /// sink that was not is named on stderr with the fix).
    pub(super) async fn once(&mut self) -> ExitCode {
        match self.syncer.pass(true).await {
            Ok(report) if report.failed_sinks.is_empty() && report.missing_sinks.is_empty() => 0,
            Ok(report) => {
                for s in &report.failed_sinks {
                    eprintln!("error: sink {s} was not rendered: writing it failed (the error is logged above)");
                }
                for s in &report.missing_sinks {
                    eprintln!(
                        "error: sink {s} was not rendered: its key does not exist under {}/{} (create it with `keysync put NAME`, or check kv.mount and kv.prefix)",
                        self.cfg.kv.mount, self.cfg.kv.prefix
                    );
                }
                1
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    }

    /// Runs until SIGTERM/SIGINT (0, or the child's exit code), the child's own exit (its
    /// code) or a child that cannot be started (127). Starts rotation beside the loop.
    pub(super) async fn run(&mut self, mut signals: Signals) -> ExitCode {
        self.start_rotation();
        loop {
            if let ControlFlow::Break(code) = self.tick().await {
                return code;
            }
            match self.wait_for_next_deadline(&mut signals).await {
                Wake::Deadline => {}
                Wake::Reload => {
                    tracing::info!("SIGHUP: reloading the config");
                    if let Err(e) = self.reload() {
                        tracing::error!(error = %e, "the reloaded config cannot be used; keeping the old config");
                    }
                }
                Wake::Stop(sig) => {
                    tracing::info!("{}: stopping", sig.as_str());
                    return match self.child.as_mut() {
                        Some(c) => c.stop(sig).await,
                        None => 0,
                    };
                }
                Wake::ChildExited(code) => {
                    tracing::info!(code, "child exited");
                    return code;
                }
            }
        }
    }

    /// Spawns the rotation task (it rotates only while `agent.rotate` is on).
    fn start_rotation(&mut self) {
        let (cfg_tx, cfg_rx) = watch::channel(Arc::new(self.cfg.clone()));
        let deps = RotationDeps {
            session: self.shared.session.clone(),
            metrics: self.shared.metrics.clone(),
            clock: self.shared.clock.clone(),
        };
        let task = tokio::spawn(rotation_task(cfg_rx, deps, self.stop.subscribe()));
        self.rotation = Some((cfg_tx, task));
    }

    /// One pass: sync the sinks, then the exec child, due hooks and the consumer report.
    /// `Break(127)`: the child cannot be started, the agent stops.
    pub(super) async fn tick(&mut self) -> ControlFlow<ExitCode> {
        let started = Instant::now();
        let result = self.syncer.pass(self.full).await;
        let metrics = &self.shared.metrics;
        metrics.sync_duration_seconds.observe(started.elapsed().as_secs_f64());
        if let Some(ttl) = self.shared.session.token_ttl_remaining() {
            metrics.token_ttl_seconds.set(ttl.as_secs_f64());
        }
        let report = match result {
            Ok(report) => {
                self.pass_succeeded(&report);
                report
            }
            Err(e) => {
                self.failures += 1;
                metrics.sync_failures_total.inc();
                self.shared.health.sync_failed(&e.to_string());
                tracing::warn!(error = %e, attempt = self.failures, "sync failed; files are left as they are");
                // A debounced restart that fell due is not held up by Vault being away.
                PassReport::default()
            }
        };
        if let Some(c) = self.child.as_mut() {
            if let Err(e) = c.after_pass(&self.syncer, &report).await {
                eprintln!("error: {e}");
                tracing::error!(error = %e, "cannot start the child; stopping");
                return ControlFlow::Break(127);
            }
        }
        let hook_results = self.hooks.run_due().await;
        if self.cfg.agent.report_renders && self.first_done {
            self.report_consumers(&hook_results).await;
        }
        ControlFlow::Continue(())
    }

    fn pass_succeeded(&mut self, report: &PassReport) {
        let Shared { metrics, health, clock, .. } = &self.shared;
        self.failures = 0;
        self.full = false;
        health.sync_ok();
        health.sinks_rendered(&report.failure_reasons);
        metrics.last_successful_sync_timestamp_seconds.set(clock.now().timestamp() as f64);
        if !self.first_done {
            self.first_done = true;
            health.set_first_render_done();
            tracing::info!(sinks = self.syncer.sink_count(), "first render done");
            super::notify_ready();
        }
        for (key, (version, fp)) in &report.changed {
            self.hooks.changed(key, *version, fp);
        }
    }

    /// Writes what this agent's sinks and exec variables hold to Vault when it changed, and
    /// at least every half `ack_ttl`, so a healthy agent never reads as silent.
    async fn report_consumers(&mut self, hook_results: &[hooks::HookResult]) {
        let ack = consumer_report(&mut self.reporter, &self.syncer, &self.hooks, self.child.as_ref(), hook_results);
        let refresh =
            clock::instant().saturating_duration_since(self.last_ack_at) >= self.cfg.rotation.ack_ttl.get() / 2;
        if self.last_ack.as_ref() == Some(&ack) && !refresh {
            return;
        }
        let kv = Kv::new(self.shared.session.clone(), &self.cfg.kv.mount, &self.cfg.kv.prefix);
        match kv.acks().report(&default_actor(), &ack).await {
            Ok(()) => {
                self.last_ack = Some(ack);
                self.last_ack_at = clock::instant();
            }
            Err(e) => tracing::warn!(error = %e, "could not report what this agent's sinks hold"),
        }
    }

    /// How long until the next pass: the poll interval (shortened by up to 10 %, see
    /// [`jittered`]) or the backoff after failed passes, but never past the end of a grace
    /// period (the previous key leaves the files on time) or a debounced hook or restart
    /// falling due.
    fn next_wait(&self) -> Duration {
        let poll = self.cfg.agent.poll_interval.get();
        let mut wait = if self.failures > 0 { backoff(self.failures, poll) } else { jittered(poll) };
        if let Some(g) = self.syncer.next_grace_end() {
            let until = (g - self.shared.clock.now()).to_std().unwrap_or_default() + Duration::from_millis(50);
            wait = wait.min(until);
        }
        let now = clock::instant();
        for due in [self.hooks.next_due(), self.child.as_ref().and_then(|c| c.next_due())].into_iter().flatten() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        wait
    }

    /// Sleeps until the next deadline (see `next_wait`), or until a signal or the exec
    /// child's exit, whichever comes first.
    pub(super) async fn wait_for_next_deadline(&mut self, signals: &mut Signals) -> Wake {
        let wait = self.next_wait();
        let child_exit = async {
            match self.child.as_mut() {
                Some(c) => c.wait_exit().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // clock::sleep: on a test's virtual clock it also wakes when the clock is moved on.
            _ = clock::sleep(wait) => Wake::Deadline,
            _ = signals.hup.recv() => Wake::Reload,
            _ = signals.term.recv() => Wake::Stop(Signal::SIGTERM),
            _ = signals.int.recv() => Wake::Stop(Signal::SIGINT),
            code = child_exit => Wake::ChildExited(code),
        }
    }

    /// Loads the config again and switches to it if it loads and its sinks can be set up;
    /// otherwise everything keeps running on the old one. The next pass is a full one, and
    /// the rotation task takes the new config at its next round. (The exec child keeps the
    /// `[exec]` section it was started with.)
    pub(super) fn reload(&mut self) -> Result<(), AgentError> {
        let cfg = self.source.load().map_err(AgentError::Config)?;
        let (syncer, hooks) = build(&cfg, &self.shared.session, &self.shared.metrics)?;
        self.shared.health.set_sink_failure_threshold(cfg.agent.unready_after_sink_failures);
        self.syncer = syncer;
        self.hooks = hooks;
        self.full = true;
        if let Some((cfg_tx, _)) = &self.rotation {
            cfg_tx.send_replace(Arc::new(cfg.clone()));
        }
        self.cfg = cfg;
        Ok(())
    }

    /// Stops the token upkeep and the rotation task. A rotation step in flight is finished
    /// rather than cut (a cut one is resumed later, but may leave a minted key to clean up);
    /// no new key is started once stopping.
    pub(super) async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.maintain.await;
        let Some((_, mut rotation)) = self.rotation else { return };
        if tokio::time::timeout(ROTATION_STOP_WAIT, &mut rotation).await.is_err() {
            tracing::warn!(
                "a rotation step did not finish within {ROTATION_STOP_WAIT:?} of stopping; it resumes at the next start"
            );
            rotation.abort();
        }
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
) -> Ack {
    let mut disk = syncer.holdings();
    let mut gated: BTreeSet<KeyName> = disk.keys().filter(|k| hooks.is_pending(k)).cloned().collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_passes_back_off_doubling_up_to_the_poll_interval() {
        let poll = Duration::from_secs(30);
        let waits: Vec<u64> = (1..=7).map(|f| backoff(f, poll).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30, 30]);
        // Many failures never overflow the shift.
        assert_eq!(backoff(u32::MAX, Duration::from_secs(3600)), Duration::from_secs(1024));
    }
}
