//! `keysync exec -- CMD ARGS…`: run CMD with keys in its environment once they are rendered;
//! on a change restart it (SIGTERM, then SIGKILL after `kill_timeout`) or send it a signal.
//! keysync exits with the child's status. The child never gets keysync's Vault token.
//!
//! Changes are debounced with `[exec] wait_min`/`wait_max` like hooks: keys that change
//! together (within `wait_min` of each other) restart the child once.

use super::config::{ExecConfig, ExecOnChange};
use super::sync::{PassReport, Syncer};
use crate::store::KeyName;
use crate::store::SinkHold;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The command line to run.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    pub argv: Vec<String>,
}

/// The supervised child.
pub struct Child {
    spec: ExecSpec,
    cfg: ExecConfig,
    process: Option<tokio::process::Child>,
    /// Fingerprints of the keys in the running child's environment.
    env_fingerprints: BTreeMap<String, String>,
    /// Versions of the keys in the running child's environment.
    env_versions: BTreeMap<String, u64>,
    /// A change seen but not yet applied (waiting for `wait_min`).
    pending: Option<PendingChange>,
}

struct PendingChange {
    first: Instant,
    last: Instant,
    fingerprints: BTreeMap<String, String>,
}

impl Child {
    pub fn new(spec: ExecSpec, cfg: ExecConfig) -> Self {
        Child {
            spec,
            cfg,
            process: None,
            env_fingerprints: BTreeMap::new(),
            env_versions: BTreeMap::new(),
            pending: None,
        }
    }

    /// The child's variables from the keys as last read: values, fingerprints, versions.
    fn environment(&self, syncer: &Syncer) -> Option<Environment> {
        let mut env = Environment::default();
        for (var, key) in &self.cfg.env {
            let name = KeyName::parse(key).ok()?;
            let (version, secret) = syncer.current_key(&name)?;
            env.fingerprints.insert(var.clone(), secret.fingerprint());
            env.versions.insert(var.clone(), version);
            env.values.insert(var.clone(), secret.expose().to_string());
        }
        Some(env)
    }

    /// Per key in `[exec] env`: what the running child holds, as `exec:VAR` sinks.
    pub fn holdings(&self) -> BTreeMap<KeyName, Vec<SinkHold>> {
        let mut out: BTreeMap<KeyName, Vec<SinkHold>> = BTreeMap::new();
        for (var, key) in &self.cfg.env {
            let Ok(name) = KeyName::parse(key) else { continue };
            let running = self.process.is_some();
            out.entry(name).or_default().push(SinkHold {
                sink: format!("exec:{var}"),
                version: self.env_versions.get(var).copied().filter(|_| running),
                fingerprint: self.env_fingerprints.get(var).cloned().filter(|_| running),
                error: (!running).then(|| "the child is not running".to_string()),
            });
        }
        out
    }

    /// Keys whose change the child has not been given yet (restart or signal pending).
    pub fn pending_keys(&self) -> BTreeSet<KeyName> {
        let Some(p) = &self.pending else { return BTreeSet::new() };
        self.cfg
            .env
            .iter()
            .filter(|(var, _)| p.fingerprints.get(*var) != self.env_fingerprints.get(*var))
            .filter_map(|(_, key)| KeyName::parse(key).ok())
            .collect()
    }

    /// When a pending restart is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| self.due(p))
    }

    fn due(&self, p: &PendingChange) -> Instant {
        let min = self.cfg.wait_min.map(|d| d.get()).unwrap_or(Duration::ZERO);
        let max = self.cfg.wait_max.map(|d| d.get()).unwrap_or(Duration::from_secs(4 * 3600)).max(min);
        (p.last + min).min(p.first + max)
    }

    /// Starts the child with a minimal environment (see `child.rs`) plus its keys, as
    /// `[exec] user`/`group` when set.
    fn spawn(&mut self, keys: BTreeMap<String, String>) -> Result<(), String> {
        let Some((program, args)) = self.spec.argv.split_first() else {
            return Err("no command given after --; write keysync exec -- CMD ARGS…".into());
        };
        let mut env = super::child::inherited_env(super::child::EXEC_BASE_ENV, &self.cfg.pass_env);
        let mut cmd = tokio::process::Command::new(program);
        if let Some(run_as) = super::RunAs::resolve("exec", self.cfg.user.as_deref(), self.cfg.group.as_deref())? {
            run_as.apply(&mut cmd, &mut env);
        }
        env.extend(keys);
        cmd.args(args).env_clear().envs(env);
        let child = cmd.spawn().map_err(|e| format!("cannot start {program} ({e}); check the command after --"))?;
        tracing::info!(pid = child.id(), command = %program, "started child");
        self.process = Some(child);
        Ok(())
    }

    /// Starts the child after the first render, restarts or signals it when its keys change
    /// and the debounce wait is over. Called after every pass (also failed ones, so a due
    /// restart is not held up by Vault). An error means the child could not be started:
    /// `keysync exec` then exits with it rather than supervising nothing.
    pub async fn after_pass(&mut self, syncer: &Syncer, _report: &PassReport) -> Result<(), String> {
        let Some(env) = self.environment(syncer) else {
            if self.process.is_none() {
                tracing::warn!("not starting the child yet: a key named in [exec] env is missing");
            }
            return Ok(());
        };
        if self.process.is_none() {
            self.spawn(env.values)?;
            self.env_fingerprints = env.fingerprints;
            self.env_versions = env.versions;
            self.pending = None;
            return Ok(());
        }
        if env.fingerprints == self.env_fingerprints {
            self.pending = None;
            return Ok(());
        }
        let now = crate::clock::instant();
        match &mut self.pending {
            Some(p) if p.fingerprints == env.fingerprints => {}
            Some(p) => {
                p.last = now;
                p.fingerprints = env.fingerprints.clone();
            }
            None => {
                self.pending = Some(PendingChange { first: now, last: now, fingerprints: env.fingerprints.clone() })
            }
        }
        if self.pending.as_ref().is_some_and(|p| self.due(p) > now) {
            return Ok(());
        }
        self.pending = None;
        self.env_fingerprints = env.fingerprints;
        self.env_versions = env.versions;
        let env = env.values;
        match self.cfg.on_change {
            ExecOnChange::Signal => match self.cfg.signal {
                Some(sig) => {
                    self.signal(sig.get());
                    tracing::info!(signal = %sig, "keys changed: signalled the child");
                }
                // Config validation refuses on_change = "signal" without a signal; no guess here.
                None => tracing::error!(
                    "keys changed but exec.on_change = \"signal\" names no exec.signal; the child keeps its old keys"
                ),
            },
            ExecOnChange::Restart => {
                tracing::info!("keys changed: restarting the child");
                self.stop(Signal::SIGTERM).await;
                self.spawn(env)?;
            }
        }
        Ok(())
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.process.as_ref().and_then(|p| p.id()) {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Waits for the child to exit on its own; its exit code (128 + signal when killed).
    pub async fn wait_exit(&mut self) -> i32 {
        match self.process.as_mut() {
            Some(p) => {
                let status = p.wait().await;
                self.process = None;
                status.map(exit_code).unwrap_or(1)
            }
            None => std::future::pending().await,
        }
    }

    /// Sends `sig`, waits up to `kill_timeout`, then SIGKILLs. Returns the exit code.
    pub async fn stop(&mut self, sig: Signal) -> i32 {
        let Some(mut p) = self.process.take() else { return 0 };
        if let Some(pid) = p.id() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
        let grace = self.cfg.kill_timeout.map(|d| d.get()).unwrap_or(Duration::from_secs(10));
        match tokio::time::timeout(grace, p.wait()).await {
            Ok(status) => status.map(exit_code).unwrap_or(1),
            Err(_) => {
                tracing::warn!("child did not stop in time; killing it");
                let _ = p.kill().await;
                p.wait().await.map(exit_code).unwrap_or(137)
            }
        }
    }
}

/// The child's key variables.
#[derive(Default)]
struct Environment {
    values: BTreeMap<String, String>,
    fingerprints: BTreeMap<String, String>,
    versions: BTreeMap<String, u64>,
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
