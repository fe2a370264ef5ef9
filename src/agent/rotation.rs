//! Rotation beside the poll loop (`agent.rotate = true`), never inside it: a slow provider or
//! a burst of due keys must not delay a render or flip /readyz. The keys are rotated by
//! [`crate::rotation::rotate_due`], the same loop `keysync rotate --due` uses.

use super::config::Config;
use super::jittered;
use crate::rotation::{rotate_due, Clock, DueOptions, Engine, FailureLog, KeyPlan, Memory};
use crate::telemetry::Metrics;
use crate::vault::Session;
use rand::seq::SliceRandom as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Keys rotated at the same time by one agent: enough to hide provider latency, few enough not
/// to swamp a provider or Vault after an outage.
const ROTATION_CONCURRENCY: usize = 4;

/// What the rotation task works with besides its config.
pub(super) struct RotationDeps {
    pub session: Arc<Session>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
}

/// Every `rotation_check_interval` (shortened by up to 10 %, like polls), one round over every
/// key with a provider, in a random order, [`ROTATION_CONCURRENCY`] keys at a time; rounds
/// never overlap. A scheduled rotation starts after a random wait of up to a tenth of the
/// interval (at most 10 s), so keys that came due together — after an outage — are spread
/// out. Picks up a reloaded config at the next round; takes no new key once `stop` is set.
/// Repeated failures are logged once per outage ([`FailureLog`]).
pub(super) async fn rotation_task(
    cfg: watch::Receiver<Arc<Config>>,
    deps: RotationDeps,
    mut stop: watch::Receiver<bool>,
) {
    let memory = Memory::default();
    let mut log = FailureLog::default();
    loop {
        let current = cfg.borrow().clone();
        if current.agent.rotate {
            round(&current, &deps, &memory, &mut log, &stop).await;
        }
        let wait = jittered(current.agent.rotation_check_interval.get());
        tokio::select! {
            _ = crate::clock::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One round of rotation for every key with a provider (see [`rotation_task`]).
async fn round(cfg: &Config, deps: &RotationDeps, memory: &Memory, log: &mut FailureLog, stop: &watch::Receiver<bool>) {
    let mut plans: Vec<KeyPlan> = Vec::new();
    for name in cfg.keys.iter().filter(|(_, k)| k.provider.is_some()).map(|(n, _)| n) {
        match cfg.rotation_plan(name) {
            Ok(Some(plan)) => plans.push(plan),
            Ok(None) => {}
            Err(e) => tracing::warn!(key = %name, error = %e, "no rotation plan"),
        }
    }
    plans.shuffle(&mut rand::rng());
    let store = cfg.key_store(deps.session.clone());
    let mut engine = Engine::new(&store, deps.clock.as_ref(), Some(&deps.metrics), memory);
    engine.start_jitter = Some(start_jitter(cfg.agent.rotation_check_interval.get()));
    let opts = DueOptions {
        concurrency: ROTATION_CONCURRENCY,
        force: false,
        reason: "scheduled rotation",
        stop: Some(stop.clone()),
    };
    rotate_due(&engine, plans, opts, |name, result| {
        let now = crate::clock::instant();
        let lines = match &result {
            Ok(_) => log.succeeded(name.as_str(), now),
            Err(e) => log.failed(name.as_str(), e, now).into_iter().collect(),
        };
        lines.iter().for_each(FailureLog::emit);
        if let Ok(outcome) = result {
            tracing::debug!(key = %name, ?outcome, "rotation check");
        }
    })
    .await;
}

/// The longest random wait before a scheduled rotation: a tenth of the check interval, at most
/// 10 s (see [`Engine::start_jitter`]).
fn start_jitter(check_interval: Duration) -> Duration {
    (check_interval / 10).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_jitter_is_a_tenth_of_the_interval_up_to_ten_seconds() {
        assert_eq!(start_jitter(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(start_jitter(Duration::from_secs(3600)), Duration::from_secs(10));
    }
}
