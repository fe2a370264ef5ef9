//! Rotating many keys at once: the one loop behind the agent's rotation checks and
//! `keysync rotate --due`.
//!
//! Keys rotate independently (each step is CAS-guarded and index entries are merge-PATCHed),
//! and one step is a dozen-odd sequential round trips to Vault and the provider, so a few keys
//! in flight keep the server busy instead of waiting on latency (1,000 keys: minutes →
//! seconds). The bound keeps a burst — every key due after an outage — from swamping Vault
//! or a provider. Steps are futures polled by the caller's task (`buffer_unordered`), not
//! spawned tasks: nothing outlives the call and no flag needs polling to know it is done.

use super::{Engine, KeyPlan, Outcome};
use crate::store::{KeyName, StoreError};
use futures_util::stream::{self, StreamExt};
use std::time::Duration;
use tokio::sync::watch;

/// How often a batching store's collected index entries are sent while keys rotate (see
/// [`crate::store::KeyStore::batching_index`]); a store that does not batch sends nothing.
const INDEX_FLUSH_EVERY: Duration = Duration::from_millis(500);

/// How one [`rotate_due`] call runs.
pub struct DueOptions<'a> {
    /// Keys in flight at once (at least 1).
    pub concurrency: usize,
    /// Rotate even keys that are not due (`keysync rotate --force`).
    pub force: bool,
    /// Recorded with each new version.
    pub reason: &'a str,
    /// Once this reads `true` no further key is started; the steps in flight finish (a cut
    /// step is resumed later, but may leave a minted key to clean up).
    pub stop: Option<watch::Receiver<bool>>,
}

/// How one key's step ended.
pub type KeyResult = Result<Outcome, StoreError>;

/// Runs [`Engine::step`] for every plan, starting them in the given order, at most
/// `concurrency` at a time, and hands each key's result to `report` as soon as its step ends
/// (so a long step does not hold back the others' output or logs). A batching store's index
/// entries are flushed every half second meanwhile and once at the end. Returns the number of
/// keys whose step was started: fewer than the plans only when `stop` was set.
pub async fn rotate_due(
    engine: &Engine<'_>,
    plans: Vec<KeyPlan>,
    opts: DueOptions<'_>,
    mut report: impl FnMut(KeyName, KeyResult),
) -> usize {
    let DueOptions { concurrency, force, reason, stop } = opts;
    let mut started = 0;
    let (done_tx, mut done_rx) = watch::channel(false);
    let steps = async {
        let mut results = stream::iter(plans)
            .take_while(|_| std::future::ready(!stop.as_ref().is_some_and(|s| *s.borrow())))
            .map(|plan| {
                started += 1;
                async move {
                    let result = engine.step(&plan, force, reason).await;
                    (plan.name, result)
                }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some((name, result)) = results.next().await {
            report(name, result);
        }
        let _ = done_tx.send(true);
    };
    // Never cut a flush in flight (its entries are taken from the batch): only the wait
    // between flushes ends when the steps are done.
    let flusher = async {
        loop {
            let done = async {
                let _ = done_rx.wait_for(|done| *done).await;
            };
            tokio::select! {
                _ = tokio::time::sleep(INDEX_FLUSH_EVERY) => engine.store.flush_index().await,
                _ = done => break,
            }
        }
    };
    tokio::join!(steps, flusher);
    engine.store.flush_index().await;
    started
}
