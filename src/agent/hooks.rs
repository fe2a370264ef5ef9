//! `on_change` hooks: a command (argv, no shell, with a timeout) or a signal to a pid file,
//! debounced like consul-template's `wait = {min, max}`.
//!
//! The debounce is shared across keys: keys whose `on_change` is the same action (same argv,
//! user, group, pass_env, signal and pid file) wait in one window and the action runs once for
//! all of them, so an app whose keys change together restarts once. Within one round of due
//! hooks a pid gets each signal once, even when several different hooks name it; when one
//! hook signalling a pid file falls due, the other pending hooks signalling it run with it.

use super::config::OnChangeConfig;
use super::SignalName;
use crate::store::KeyName;
use crate::telemetry::{Metrics, SinkResultLabel};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What makes two keys' hooks the same action.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HookId {
    command: Vec<String>,
    user: Option<String>,
    group: Option<String>,
    pass_env: Vec<String>,
    signal: Option<SignalName>,
    pid_file: Option<PathBuf>,
}

impl HookId {
    fn of(cfg: &OnChangeConfig) -> HookId {
        HookId {
            command: cfg.command.clone(),
            user: cfg.user.clone(),
            group: cfg.group.clone(),
            pass_env: cfg.pass_env.clone(),
            signal: cfg.signal,
            pid_file: cfg.pid_file.clone(),
        }
    }
}

struct Pending {
    first: Instant,
    last: Instant,
    /// Keys changed in this window, with the version and fingerprint now on disk.
    keys: BTreeMap<KeyName, (u64, String)>,
}

/// Hooks waiting for their quiet period.
pub struct Hooks {
    config: BTreeMap<KeyName, OnChangeConfig>,
    pending: BTreeMap<HookId, Pending>,
    metrics: Arc<Metrics>,
}

/// How one key's hook ended.
pub type HookResult = (KeyName, Result<(), String>);

impl Hooks {
    pub fn new(config: BTreeMap<KeyName, OnChangeConfig>, metrics: Arc<Metrics>) -> Self {
        Hooks { config, pending: BTreeMap::new(), metrics }
    }

    /// Whether `key` changed and its hook has not run yet.
    pub fn is_pending(&self, key: &KeyName) -> bool {
        self.pending.values().any(|p| p.keys.contains_key(key))
    }

    /// Notes that `key`'s files changed.
    pub fn changed(&mut self, key: &KeyName, version: u64, fingerprint: &str) {
        let Some(cfg) = self.config.get(key) else { return };
        let now = crate::clock::instant();
        let p = self.pending.entry(HookId::of(cfg)).or_insert(Pending { first: now, last: now, keys: BTreeMap::new() });
        p.last = now;
        p.keys.insert(key.clone(), (version, fingerprint.into()));
    }

    /// When the next hook is due, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|p| self.due(p)).min()
    }

    /// A window's due time: the longest `wait_min` and the shortest `wait_max` of its keys.
    fn due(&self, p: &Pending) -> Instant {
        let cfgs: Vec<&OnChangeConfig> = p.keys.keys().filter_map(|k| self.config.get(k)).collect();
        let min = cfgs.iter().filter_map(|c| c.wait_min.map(|d| d.get())).max().unwrap_or(Duration::ZERO);
        let max = cfgs
            .iter()
            .filter_map(|c| c.wait_max.map(|d| d.get()))
            .min()
            .unwrap_or(Duration::from_secs(4 * 3600))
            .max(min);
        (p.last + min).min(p.first + max)
    }

    /// Runs every hook whose wait is over: each action once for all its keys, each
    /// (pid, signal) once. Returns how each key's hook ended.
    pub async fn run_due(&mut self) -> Vec<HookResult> {
        let now = crate::clock::instant();
        let mut due_ids: Vec<HookId> =
            self.pending.iter().filter(|(_, p)| self.due(p) <= now).map(|(id, _)| id.clone()).collect();
        // A pid gets one signal per burst: other pending hooks signalling the same pid file
        // run now too, instead of signalling it again when their own window ends.
        let targets: BTreeSet<(SignalName, PathBuf)> =
            due_ids.iter().filter_map(|id| Some((id.signal?, id.pid_file.clone()?))).collect();
        let joining: Vec<HookId> = self
            .pending
            .keys()
            .filter(|id| !due_ids.contains(id))
            .filter(|id| matches!((&id.signal, &id.pid_file), (Some(s), Some(p)) if targets.contains(&(*s, p.clone()))))
            .cloned()
            .collect();
        due_ids.extend(joining);
        let mut results = Vec::new();
        let mut signalled: BTreeSet<(i32, SignalName)> = BTreeSet::new();
        for id in due_ids {
            let Some(p) = self.pending.remove(&id) else { continue };
            let keys: Vec<KeyName> = p.keys.keys().cloned().collect();
            let timeout = keys
                .iter()
                .filter_map(|k| self.config.get(k).and_then(|c| c.timeout.map(|d| d.get())))
                .max()
                .unwrap_or(Duration::from_secs(30));
            let result = run_hook(&id, &p.keys, timeout, &mut signalled).await;
            let label = match &result {
                Ok(()) => "ok",
                Err(e) if e.contains("timed out") => "timeout",
                Err(_) => "failed",
            };
            let names: Vec<&str> = keys.iter().map(KeyName::as_str).collect();
            if let Err(e) = &result {
                tracing::error!(keys = %names.join(" "), error = %e, "on_change hook failed");
            }
            for k in keys {
                self.metrics
                    .hook_runs_total
                    .get_or_create(&SinkResultLabel { sink: k.to_string(), result: label.into() })
                    .inc();
                results.push((k, result.clone()));
            }
        }
        results
    }
}

/// Sends the signal (once per pid in this round) and runs the command (env: `PATH`,
/// `pass_env`, KEYSYNC_KEY/VERSION/FINGERPRINT of the first key, KEYSYNC_KEYS listing every
/// key of the window — never a key or keysync's token; as `user`/`group` when set).
async fn run_hook(
    id: &HookId,
    keys: &BTreeMap<KeyName, (u64, String)>,
    timeout: Duration,
    signalled: &mut BTreeSet<(i32, SignalName)>,
) -> Result<(), String> {
    let Some((first, (version, fingerprint))) = keys.iter().next() else { return Ok(()) };
    let field = format!("keys.{first}.on_change");
    if let (Some(sig), Some(pid_file)) = (&id.signal, &id.pid_file) {
        let signal = sig.get();
        let text = std::fs::read_to_string(pid_file)
            .map_err(|e| format!("cannot read pid file {} ({e})", pid_file.display()))?;
        let pid: i32 =
            text.trim().parse().map_err(|_| format!("pid file {} does not hold a pid", pid_file.display()))?;
        if signalled.insert((pid, *sig)) {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .map_err(|e| format!("cannot send {sig} to pid {pid} from {} ({e})", pid_file.display()))?;
            tracing::info!(key = %first, pid, signal = %sig, "signalled process");
        } else {
            tracing::debug!(key = %first, pid, signal = %sig, "process already signalled in this round");
        }
    }
    let Some((program, args)) = id.command.split_first() else { return Ok(()) };
    let mut env = super::child::inherited_env(super::child::HOOK_BASE_ENV, &id.pass_env);
    let mut cmd = tokio::process::Command::new(program);
    if let Some(run_as) = super::RunAs::resolve(&field, id.user.as_deref(), id.group.as_deref())? {
        run_as.apply(&mut cmd, &mut env);
    }
    let names: Vec<&str> = keys.keys().map(KeyName::as_str).collect();
    env.insert("KEYSYNC_KEY".into(), first.as_str().into());
    env.insert("KEYSYNC_VERSION".into(), version.to_string());
    env.insert("KEYSYNC_FINGERPRINT".into(), fingerprint.clone());
    env.insert("KEYSYNC_KEYS".into(), names.join(" "));
    cmd.args(args).env_clear().envs(env).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let child = cmd.output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(format!("{program} timed out after {}", humantime::format_duration(timeout))),
        Ok(Err(e)) => Err(format!("cannot run {program} ({e}); check {field}.command")),
        Ok(Ok(out)) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            tracing::info!(keys = %names.join(" "), command = %program, status = %out.status, stdout = %stdout.trim(), stderr = %stderr.trim(), "on_change hook ran");
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{program} exited with {}", out.status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;

    fn cfg(cmd: &str, wait_min: u64) -> OnChangeConfig {
        OnChangeConfig {
            command: vec!["sh".into(), "-c".into(), cmd.into()],
            wait_min: Some(HumanDuration::from_secs(wait_min)),
            ..Default::default()
        }
    }

    #[test]
    fn keys_with_the_same_action_share_one_window_and_others_do_not() {
        let a = KeyName::parse("a").unwrap();
        let b = KeyName::parse("b").unwrap();
        let c = KeyName::parse("c").unwrap();
        let config =
            [(a.clone(), cfg("reload", 1)), (b.clone(), cfg("reload", 2)), (c.clone(), cfg("other", 1))].into();
        let mut hooks = Hooks::new(config, Arc::new(Metrics::new()));
        hooks.changed(&a, 1, "sha256:a");
        hooks.changed(&b, 1, "sha256:b");
        hooks.changed(&c, 1, "sha256:c");
        assert_eq!(hooks.pending.len(), 2, "a and b share one action");
        assert!(hooks.is_pending(&a) && hooks.is_pending(&b) && hooks.is_pending(&c));
        let shared = hooks.pending.values().find(|p| p.keys.len() == 2).unwrap();
        // The longest wait_min of the window applies.
        assert!(hooks.due(shared) >= shared.last + Duration::from_secs(2));
    }
}
