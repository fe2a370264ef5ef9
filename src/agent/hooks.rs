//! `on_change` hooks: a command (argv, no shell, with a timeout) or a signal to a pid file,
//! debounced like consul-template's `wait = {min, max}`.

use crate::config::{parse_signal, OnChangeConfig};
use crate::store::KeyName;
use crate::telemetry::{Metrics, SinkResultLabel};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Pending {
    first: Instant,
    last: Instant,
    version: u64,
    fingerprint: String,
}

/// Hooks waiting for their quiet period.
pub struct Hooks {
    config: BTreeMap<KeyName, OnChangeConfig>,
    pending: BTreeMap<KeyName, Pending>,
    metrics: Arc<Metrics>,
}

impl Hooks {
    pub fn new(config: BTreeMap<KeyName, OnChangeConfig>, metrics: Arc<Metrics>) -> Self {
        Hooks { config, pending: BTreeMap::new(), metrics }
    }

    /// Notes that `key`'s files changed.
    pub fn changed(&mut self, key: &KeyName, version: u64, fingerprint: &str) {
        if !self.config.contains_key(key) {
            return;
        }
        let now = Instant::now();
        let p = self.pending.entry(key.clone()).or_insert(Pending {
            first: now,
            last: now,
            version,
            fingerprint: fingerprint.into(),
        });
        p.last = now;
        p.version = version;
        p.fingerprint = fingerprint.into();
    }

    /// When the next hook is due, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().filter_map(|(k, p)| self.config.get(k).map(|c| due(c, p))).min()
    }

    /// Runs every hook whose wait is over.
    pub async fn run_due(&mut self) {
        let now = Instant::now();
        let due_keys: Vec<KeyName> = self
            .pending
            .iter()
            .filter(|(k, p)| self.config.get(*k).is_some_and(|c| due(c, p) <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due_keys {
            let (Some(p), Some(cfg)) = (self.pending.remove(&key), self.config.get(&key)) else { continue };
            let result = run_hook(cfg, &key, p.version, &p.fingerprint).await;
            let label = match &result {
                Ok(()) => "ok",
                Err(e) if e.contains("timed out") => "timeout",
                Err(_) => "failed",
            };
            if let Err(e) = &result {
                tracing::error!(key = %key, error = %e, "on_change hook failed");
            }
            self.metrics
                .hook_runs_total
                .get_or_create(&SinkResultLabel { sink: key.to_string(), result: label.into() })
                .inc();
        }
    }
}

fn due(cfg: &OnChangeConfig, p: &Pending) -> Instant {
    let min = cfg.wait_min.map(|d| d.get()).unwrap_or(Duration::ZERO);
    let max = cfg.wait_max.map(|d| d.get()).unwrap_or(Duration::from_secs(4 * 3600)).max(min);
    (p.last + min).min(p.first + max)
}

/// Runs the command (env: `PATH`, `pass_env`, KEYSYNC_KEY/VERSION/FINGERPRINT — never the key
/// or keysync's token; as `user`/`group` when set) and/or sends the signal.
async fn run_hook(cfg: &OnChangeConfig, key: &KeyName, version: u64, fingerprint: &str) -> Result<(), String> {
    if let (Some(sig), Some(pid_file)) = (&cfg.signal, &cfg.pid_file) {
        let signal = parse_signal(sig)?;
        let text = std::fs::read_to_string(pid_file)
            .map_err(|e| format!("cannot read pid file {} ({e})", pid_file.display()))?;
        let pid: i32 =
            text.trim().parse().map_err(|_| format!("pid file {} does not hold a pid", pid_file.display()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| format!("cannot send {sig} to pid {pid} from {} ({e})", pid_file.display()))?;
        tracing::info!(key = %key, pid, signal = %sig, "signalled process");
    }
    let Some((program, args)) = cfg.command.split_first() else { return Ok(()) };
    let timeout = cfg.timeout.map(|d| d.get()).unwrap_or(Duration::from_secs(30));
    let mut env = super::child::inherited_env(super::child::HOOK_BASE_ENV, &cfg.pass_env);
    let mut cmd = tokio::process::Command::new(program);
    if let Some(run_as) =
        super::RunAs::resolve(&format!("keys.{key}.on_change"), cfg.user.as_deref(), cfg.group.as_deref())?
    {
        run_as.apply(&mut cmd, &mut env);
    }
    env.insert("KEYSYNC_KEY".into(), key.as_str().into());
    env.insert("KEYSYNC_VERSION".into(), version.to_string());
    env.insert("KEYSYNC_FINGERPRINT".into(), fingerprint.into());
    cmd.args(args).env_clear().envs(env).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let child = cmd.output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(format!("{program} timed out after {}", humantime::format_duration(timeout))),
        Ok(Err(e)) => Err(format!("cannot run {program} ({e}); check keys.{key}.on_change.command")),
        Ok(Ok(out)) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            tracing::info!(key = %key, command = %program, status = %out.status, stdout = %stdout.trim(), stderr = %stderr.trim(), "on_change hook ran");
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{program} exited with {}", out.status))
            }
        }
    }
}
