//! The rotation engine: AWS Secrets Manager's four steps on KV v2 — create (mint, CAS-write
//! as pending), validate, promote, retire — each idempotent and resumable from Vault state
//! alone. Of several agents, the CAS write lets exactly one create a version; validating and
//! promoting a given pending version give the same result whoever does them, and a loser
//! revokes the key it minted so nothing is orphaned at the provider.

use super::holds::{self, Retirement};
use super::{decide, Clock, RotationPolicy};
use crate::provider::{Provider, Validation, Verdict};
use crate::store::{
    chrono_duration, Intent, KeyData, KeyName, KeyRecord, KeyStore, Landed, PutFailure, PutOptions, StoreError,
    VersionRead,
};
use crate::telemetry::{KeyLabel, KeyReasonLabel, KeyResultLabel, KeyStateLabel, Metrics};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// Undecided validations (rate limits, outages) are retried after 1 min, 2 min, 4 min … up
/// to 6 h between tries; after this many the pending key is given up (revoked, destroyed).
const MAX_UNDECIDED: u32 = 8;
const UNDECIDED_BASE_DELAY: Duration = Duration::from_secs(60);
const UNDECIDED_MAX_DELAY: Duration = Duration::from_secs(6 * 3600);

/// Everything the engine needs to rotate one key.
pub struct KeyPlan {
    pub name: KeyName,
    pub policy: RotationPolicy,
    /// Asked what it can do ([`crate::provider::Capabilities`]), never what kind it is.
    pub provider: Arc<dyn Provider>,
    pub validation: Option<Validation>,
    pub grace: Duration,
    /// How old an unrecorded keysync-written version must be before it counts as left by a
    /// crashed agent (and is adopted) rather than being written right now by a live one.
    pub adopt_after: Duration,
    /// Render reports younger than this count when deciding to retire before grace ends.
    pub ack_ttl: Duration,
    /// How long past grace retirement may wait for an agent still holding the previous key.
    pub max_hold: Duration,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    NotDue {
        next: DateTime<Utc>,
    },
    /// Due, but keysync cannot mint (manual provider): a person must `keysync put`.
    Overdue {
        since: DateTime<Utc>,
    },
    Rotated {
        version: u64,
        previous: Option<u64>,
    },
    /// Written, validation undecided (rate limit, outage): retried next cycle.
    Pending {
        version: u64,
        why: String,
    },
    /// Failed validation: never promoted, revoked at the provider where possible.
    Failed {
        version: u64,
        why: String,
    },
    /// Another agent got there first: it created the version (ours was revoked), is rotating
    /// the key right now, or promoted the same version at the same moment and counts it.
    LostRace,
}

/// How long a minter keeps trying to find out whether a write whose answer was lost landed,
/// before it leaves the question to the next pass (its intent stays as the trace).
pub const SETTLE_FOR: Duration = Duration::from_secs(20);

/// A key this process minted whose fate is not settled yet: the write's answer was lost and
/// Vault could not be asked since, or it could not mark the key revoked. Kept in memory so the
/// next pass finishes the job — adopt it if the write landed, revoke it if not — instead of
/// revoking blindly (another agent might promote the stored version) or forgetting it.
#[derive(Clone, Debug)]
struct Unsettled {
    intent: Intent,
    /// The version the CAS write would have created.
    version: u64,
    fingerprint: String,
    key_id: Option<String>,
}

/// What one keysync process remembers between rotation passes: minted keys not yet settled,
/// and the intents whose key it already stored or revoked (so a leftover intent it could not
/// clear is not reported as an interrupted rotation).
#[derive(Debug, Default)]
pub struct Memory {
    unsettled: Mutex<BTreeMap<KeyName, Unsettled>>,
    accounted: Mutex<BTreeMap<KeyName, Intent>>,
}

impl Memory {
    fn take(&self, name: &KeyName) -> Option<Unsettled> {
        self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    fn keep(&self, name: &KeyName, u: Unsettled) {
        self.unsettled.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), u);
    }

    fn accounted_for(&self, name: &KeyName, intent: &Intent) {
        self.accounted.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), intent.clone());
    }

    fn is_accounted(&self, name: &KeyName, intent: &Intent) -> bool {
        self.accounted.lock().unwrap_or_else(|e| e.into_inner()).get(name).is_some_and(|i| i == intent)
    }
}

pub struct Engine<'a> {
    pub store: &'a KeyStore,
    pub clock: &'a dyn Clock,
    pub metrics: Option<&'a Metrics>,
    /// Unsettled mints and accounted intents, kept across passes by a long-running agent.
    pub memory: &'a Memory,
    /// How long to keep asking Vault whether a write whose answer was lost landed.
    pub settle_for: Duration,
    /// A scheduled (not forced) rotation first waits a random time up to this, then checks
    /// again: keys that came due together (after an outage) spread out, and of several agents
    /// the first to start is seen by the others, who leave the key to it.
    pub start_jitter: Option<Duration>,
}

impl<'a> Engine<'a> {
    /// An engine with the default settle time and no start jitter.
    pub fn new(store: &'a KeyStore, clock: &'a dyn Clock, metrics: Option<&'a Metrics>, memory: &'a Memory) -> Self {
        Engine { store, clock, metrics, memory, settle_for: SETTLE_FOR, start_jitter: None }
    }
}

impl Engine<'_> {
    /// Retires an expired previous key, resumes a pending version, or rotates if due (or
    /// `force`). Creates a declared key that does not exist yet (a minting provider's first
    /// rotation: v1, no previous). Safe to call from many agents at once and after a crash at
    /// any point.
    pub async fn step(&self, plan: &KeyPlan, force: bool, reason: &str) -> Result<Outcome, StoreError> {
        let name = &plan.name;
        if let Some(outcome) = self.settle_earlier_mint(plan, reason).await? {
            return Ok(outcome);
        }
        let Some(first) = self.store.record(name).await? else {
            if plan.provider.capabilities().manual() {
                return Err(StoreError::NotFound(name.clone()));
            }
            if !force && self.wait_start_jitter().await && self.store.record(name).await?.is_some() {
                tracing::info!(key = %name, "another agent created the key meanwhile; leaving it to them");
                return Ok(Outcome::LostRace);
            }
            tracing::info!(key = %name, "declared key does not exist yet; creating it");
            return self.create(plan, reason, None, None, force).await;
        };
        // A retirement that only clears `previous` (nothing to revoke) is folded into the
        // promotion when one follows: the promotion overwrites `previous` anyway, so doing it
        // first would only add requests. It is done on its own when no rotation follows.
        let fold_retirement = !revokes_previous(plan);
        let record = if fold_retirement {
            first
        } else if self.retire_if_due(plan, &first).await? {
            self.store.require(name).await?
        } else {
            first
        };
        if let Some(pending) = record.state.pending {
            if !record.state.failed.contains(&pending) {
                if let Some(r) = record.state.retry.as_ref().filter(|r| r.version == pending) {
                    if r.next_at > self.clock.now() && !force {
                        self.retire_unfolded(plan, &record, fold_retirement).await?;
                        return Ok(Outcome::Pending {
                            version: pending,
                            why: format!(
                                "validation undecided {} time(s); next try at {}",
                                r.attempts,
                                r.next_at.to_rfc3339()
                            ),
                        });
                    }
                }
                return self.validate_and_promote(plan, pending, reason).await;
            }
        }
        let now = self.clock.now();
        if let Some(outcome) = self.unrecorded_latest(plan, &record, now, reason).await? {
            return Ok(outcome);
        }
        let last = record.current_since().unwrap_or(DateTime::<Utc>::MIN_UTC);
        // The current version's data: its `expires_at` is part of the decision, and its
        // provider fields are carried over to the new version (read once for both).
        let current_data = match record.state.current {
            Some(c) => match self.store.read(name, c).await? {
                VersionRead::Live(d) => Some(d),
                _ => None,
            },
            None => None,
        };
        let expires_at = current_data
            .as_ref()
            .and_then(|d| d.fields.get("expires_at"))
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        let decision = decide(&plan.policy, last, expires_at, name.as_str(), now);
        if let Some(m) = self.metrics {
            let label = KeyLabel { key: name.to_string() };
            m.key_next_rotation_timestamp_seconds.get_or_create(&label).set(decision.next.timestamp() as f64);
            m.key_rotation_overdue.get_or_create(&label).set(i64::from(decision.overdue));
        }
        if !decision.due && !force {
            self.retire_unfolded(plan, &record, fold_retirement).await?;
            return Ok(Outcome::NotDue { next: decision.next });
        }
        if plan.provider.capabilities().manual() {
            self.retire_unfolded(plan, &record, fold_retirement).await?;
            tracing::warn!(key = %name, "rotation due but the key is managed by hand; put a new one with `keysync put`");
            return Ok(Outcome::Overdue { since: decision.next });
        }
        let mut record = record;
        let mut current_data = current_data;
        if !force && self.wait_start_jitter().await {
            let fresh = self.store.require(name).await?;
            if fresh.meta.current_version != record.meta.current_version || fresh.state.pending != record.state.pending
            {
                tracing::info!(key = %name, "another agent rotated the key meanwhile; leaving it to them");
                return Ok(Outcome::LostRace);
            }
            if fresh.state.current != record.state.current {
                current_data = None; // re-read by the write
            }
            record = fresh;
        }
        self.create(plan, reason, Some(&record), current_data.as_ref(), force).await
    }

    /// The retirement [`Self::step`] left to a promotion that did not come (see
    /// `fold_retirement` there): done on its own now.
    async fn retire_unfolded(&self, plan: &KeyPlan, record: &KeyRecord, folded: bool) -> Result<(), StoreError> {
        if folded {
            self.retire_if_due(plan, record).await?;
        }
        Ok(())
    }

    /// Sleeps a random time up to `start_jitter`; false without jitter.
    async fn wait_start_jitter(&self) -> bool {
        let Some(j) = self.start_jitter.filter(|j| !j.is_zero()) else { return false };
        let wait = {
            use rand::Rng as _;
            j.mul_f64(rand::rng().random_range(0.0..1.0))
        };
        crate::clock::sleep(wait).await; // wakes when a test moves its virtual clock
        true
    }

    /// Finishes what this process left unsettled at an earlier pass (a minted key whose write
    /// answer was lost): adopt it if the write landed, revoke it (marked first) if not.
    async fn settle_earlier_mint(&self, plan: &KeyPlan, reason: &str) -> Result<Option<Outcome>, StoreError> {
        let Some(u) = self.memory.take(&plan.name) else { return Ok(None) };
        match self.store.find_write(&plan.name, u.version, &u.fingerprint).await {
            Landed::Yes { version } => {
                tracing::info!(key = %plan.name, version, "the write of the earlier rotation landed after all; finishing it");
                self.finish_landed(plan, &u, version).await?;
                self.validate_and_promote(plan, version, reason).await.map(Some)
            }
            Landed::No => {
                tracing::info!(key = %plan.name, "the write of the earlier rotation did not land; revoking its key");
                self.discard_unstored(plan, u).await?;
                Ok(None)
            }
            Landed::Unknown => {
                let why = format!(
                    "still cannot find out whether the new version {} of {} was stored; its key is kept, not revoked, until Vault answers",
                    u.version, plan.name
                );
                self.memory.keep(&plan.name, u);
                Err(StoreError::Refused(why))
            }
        }
    }

    /// A latest version newer than anything the state knows was written by a keysync that
    /// has not recorded it yet: another agent mid-rotation (leave it alone), or one that
    /// crashed between the data write and the metadata update (adopt it as pending).
    async fn unrecorded_latest(
        &self,
        plan: &KeyPlan,
        record: &crate::store::KeyRecord,
        now: DateTime<Utc>,
        reason: &str,
    ) -> Result<Option<Outcome>, StoreError> {
        let s = &record.state;
        let known = [s.current, s.pending, s.previous, s.fingerprints.keys().last().copied(), s.failed.last().copied()]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        let latest = record.meta.current_version;
        if latest <= known {
            return Ok(None);
        }
        let VersionRead::Live(data) = self.store.read(&plan.name, latest).await? else { return Ok(None) };
        if s.is_revoked(&data.api_key.fingerprint()) {
            // Its key was revoked (a minter that found out too late that the write landed, or
            // crashed between marking and cleaning up): never adopted. Finish the clean-up.
            tracing::info!(key = %plan.name, version = latest, "the latest version holds a key keysync revoked; discarding it");
            self.discard(plan, latest, &data, "revoked before it was recorded").await?;
            return Ok(None);
        }
        let external = !data.fields.contains_key(crate::store::WRITTEN_BY_FIELD);
        if external && !plan.policy.adopt_external {
            return Ok(None); // written by hand: external, reported by `status`
        }
        let created = record.meta.versions.get(&latest).and_then(|m| m.created_time).unwrap_or(now);
        if external {
            tracing::info!(key = %plan.name, version = latest, "adopting a version written outside keysync (adopt_external)");
        } else if now - created < chrono_duration(plan.adopt_after) {
            tracing::info!(key = %plan.name, version = latest, "another agent is creating a version; leaving it to them");
            return Ok(Some(Outcome::LostRace));
        }
        tracing::warn!(key = %plan.name, version = latest, "found a version written by an interrupted rotation; adopting it as pending");
        let fp = data.api_key.fingerprint();
        self.store
            .update_state(&plan.name, |_, st| {
                st.pending = Some(latest);
                st.fingerprints.insert(latest, fp);
                st.intent = None; // the interrupted rotation's key is found: no orphan
                Ok(())
            })
            .await?;
        self.validate_and_promote(plan, latest, reason).await.map(Some)
    }

    async fn create(
        &self,
        plan: &KeyPlan,
        reason: &str,
        record: Option<&KeyRecord>,
        current_data: Option<&KeyData>,
        force: bool,
    ) -> Result<Outcome, StoreError> {
        let name = &plan.name;
        let now = self.clock.now();
        let latest = record.map_or(0, |r| r.meta.current_version);
        let original_current = record.and_then(|r| r.state.current);
        if let Some(old) = record.and_then(|r| r.state.intent.as_ref()) {
            if self.memory.is_accounted(name, old) {
                // Ours, and its key is already stored or revoked: only the clearing failed.
                tracing::debug!(key = %name, intent = %old, "replacing our own earlier intent (its key is accounted for)");
            } else if !force && self.is_peers_fresh_intent(old, now, plan.adopt_after) {
                // Another live agent is rotating right now: minting too would only make a key
                // that loses the CAS race and is revoked again (with many agents, several per
                // rotation).
                tracing::info!(key = %name, intent = %old, "another agent is rotating this key; leaving it to them");
                return Ok(Outcome::LostRace);
            } else {
                tracing::warn!(key = %name, intent = %old, "an earlier rotation was interrupted after it may have minted a key; check the provider for an unused key");
            }
        }
        let ours = Intent::new(self.store.actor(), now);
        if mints_locally(plan) {
            return self.create_local(plan, reason, record, current_data, ours).await;
        }
        self.store.record_intent(name, &ours).await?;
        crate::failpoint::hit("after_intent");
        // Build on the state that now carries the intent, but keep the CAS on the version we
        // decided from: if anyone wrote since, our write must lose.
        let mut with_intent = self.store.require(name).await?;
        if !force && with_intent.state.intent.as_ref() != Some(&ours) {
            // A peer recorded its intent right after ours: the last one recorded goes ahead.
            tracing::info!(key = %name, "another agent started rotating this key at the same moment; leaving it to them");
            return Ok(Outcome::LostRace);
        }
        with_intent.meta.current_version = latest;
        let record = &with_intent;
        self.reconcile(plan, record).await;
        let minted = match plan.provider.mint(name.as_str()).await {
            Ok(m) => m,
            Err(e) if e.nothing_minted() => {
                self.memory.accounted_for(name, &ours); // nothing to account for
                self.clear_intent(name).await;
                return Err(StoreError::Refused(format!("minting a key for {name} failed: {e}")));
            }
            Err(e) => {
                return Err(StoreError::Refused(format!(
                    "minting a key for {name} failed: {e}; the provider may hold a key keysync could not take \
                     (`keysync status {name}` shows the interrupted rotation until the next one succeeds)"
                )))
            }
        };
        crate::failpoint::hit("after_mint");
        let (data, fingerprint, key_id) = stored_form(minted);
        let opts = PutOptions { promote: false, reason: reason.to_string(), keep_fields: true };
        let mint = Unsettled { intent: ours, version: latest + 1, fingerprint, key_id };
        // The current data read before deciding still holds if `current` did not move since.
        let current_data = current_data.filter(|_| original_current == record.state.current);
        let outcome = match self.store.try_put_with(name, data, &opts, Some(record.clone()), current_data).await {
            Ok(o) => o,
            Err(failure) => return self.settle_failed_write(plan, reason, failure, mint).await,
        };
        crate::failpoint::hit("after_put");
        self.memory.accounted_for(name, &mint.intent);
        self.clear_intent(name).await;
        tracing::info!(key = %name, version = outcome.version, "created a pending version");
        crate::failpoint::hit("after_pending");
        self.validate_and_promote(plan, outcome.version, reason).await
    }

    /// [`Self::create`] for a provider that mints locally (`generate`): the key exists nowhere
    /// but in this process until it is stored, so a crash before the write orphans nothing and
    /// no intent is recorded. Write (CAS), validate, then record and promote the version in
    /// one metadata PATCH — no pending record in between: a crash after the write leaves an
    /// unrecorded latest version, which any agent adopts as pending after `adopt_after`.
    ///
    /// Peers leave an unrecorded version alone for `adopt_after` (judged from its
    /// `created_time`), and only a peer that adopted it could mark its key revoked or promote
    /// it too. So when the promotion lands within half of `adopt_after` of sending the write
    /// (our monotonic clock; the version's `created_time` is later than the send), no peer
    /// can have touched it unless its clock runs `adopt_after`/2 ahead of the server's: the
    /// promotion is ours alone, counted without the CAS-claimed promotion record and without
    /// a read-back. Slower than that, the read-back (revoked while promoted?) and the claim
    /// run as for any other promotion.
    async fn create_local(
        &self,
        plan: &KeyPlan,
        reason: &str,
        record: Option<&KeyRecord>,
        current_data: Option<&KeyData>,
        ours: Intent,
    ) -> Result<Outcome, StoreError> {
        let name = &plan.name;
        let minted = plan
            .provider
            .mint(name.as_str())
            .await
            .map_err(|e| StoreError::Refused(format!("minting a key for {name} failed: {e}")))?;
        crate::failpoint::hit("after_mint");
        let latest = record.map_or(0, |r| r.meta.current_version);
        let (data, fingerprint, key_id) = stored_form(minted);
        let opts = PutOptions { promote: false, reason: reason.to_string(), keep_fields: true };
        let mint = Unsettled { intent: ours, version: latest + 1, fingerprint: fingerprint.clone(), key_id };
        let sent = std::time::Instant::now();
        let (version, data) = match self.store.try_write(name, data, &opts, record, current_data).await {
            Ok(w) => w,
            Err(failure) => return self.settle_failed_write(plan, reason, failure, mint).await,
        };
        crate::failpoint::hit("put_after_data");
        self.memory.accounted_for(name, &mint.intent);
        tracing::info!(key = %name, version, "created a new version");
        if plan.policy.validate {
            if let Some(v) = &plan.validation {
                match v.validate(&data.api_key).await {
                    Verdict::Valid => {}
                    Verdict::Invalid(why) => {
                        self.failure(name, "invalid");
                        return self.give_up(plan, version, &data, why).await;
                    }
                    Verdict::Undecided(_) => {
                        // Record it as pending; the usual path retries with backoff.
                        self.failure(name, "undecided");
                        let fp = fingerprint.clone();
                        self.store
                            .update_state(name, |_, s| {
                                s.fingerprints.insert(version, fp);
                                if s.current.is_none_or(|c| c < version) {
                                    s.pending = Some(version);
                                }
                                Ok(())
                            })
                            .await?;
                        return self.validate_and_promote(plan, version, reason).await;
                    }
                }
            }
        }
        crate::failpoint::hit("after_validate");
        let base = match record {
            Some(r) => r.clone(),
            None => KeyRecord {
                name: name.clone(),
                meta: crate::store::Metadata::default(),
                state: crate::store::RotationState::default(),
            },
        };
        if let Some(p) = base.state.previous.filter(|p| Some(*p) != base.state.current) {
            tracing::info!(key = %name, version = p, "retired the previous key (replaced by the promotion)");
        }
        let now = self.clock.now();
        let grace = plan.grace;
        let actor = self.store.actor().to_string();
        let reason_text = reason.to_string();
        let fp = fingerprint.clone();
        let after = self
            .store
            .update_state_on(&base, |_, s| {
                s.fingerprints.insert(version, fp);
                s.previous = s.current;
                s.grace_until = s.current.map(|_| now + chrono_duration(grace));
                s.current = Some(version);
                if s.pending.is_some_and(|p| p <= version) {
                    s.pending = None;
                }
                s.retry = None;
                s.rotated_at = Some(now);
                s.rotated_by = Some(actor);
                s.reason = Some(reason_text);
                Ok(())
            })
            .await;
        let after = match after {
            Ok(a) => a,
            Err(e) => {
                // Stored but not recorded: an unrecorded latest version, adopted as pending
                // by the next check (ours or a peer's after `adopt_after`).
                tracing::warn!(key = %name, version, error = %e, "stored the new version but could not promote it; the next rotation check adopts it");
                return Err(e);
            }
        };
        crate::failpoint::hit("after_promote");
        let previous = base.state.current;
        if sent.elapsed() < plan.adopt_after / 2 {
            self.store.publish(name, &after, false).await;
            self.count(name, "rotated");
            tracing::info!(key = %name, version, "promoted");
            return Ok(Outcome::Rotated { version, previous });
        }
        // Slow: a peer may have adopted the version meanwhile. Check as any promoter does.
        let fresh = self.store.require(name).await?;
        self.store.publish(name, &fresh.state, fresh.current_deleted(&fresh.state)).await;
        self.checked_promotion(plan, version, &fingerprint, previous, &fresh).await
    }

    /// The CAS write of a minted key failed. Never revoke a key Vault may have stored: another
    /// agent would adopt and promote the revoked key. So: not written — mark it revoked, revoke
    /// it; written — finish it (record it as pending); answer lost — find out by reading the
    /// version the write would have created (its number is fixed by the CAS), for up to
    /// `settle_for`, and if Vault still cannot be asked, keep the key (and the intent as the
    /// trace) for the next pass to settle.
    async fn settle_failed_write(
        &self,
        plan: &KeyPlan,
        reason: &str,
        failure: PutFailure,
        mint: Unsettled,
    ) -> Result<Outcome, StoreError> {
        let name = &plan.name;
        let landed = match failure.landed {
            Landed::Unknown => {
                tracing::warn!(key = %name, version = mint.version, error = %failure.error, "the answer to the write of the new version was lost; finding out whether it landed before doing anything with the key");
                self.find_out(name, &mint).await
            }
            known => known,
        };
        match landed {
            Landed::No if matches!(failure.error, StoreError::Conflict { .. }) => {
                self.discard_unstored(plan, mint).await?;
                self.count(name, "lost_race");
                Ok(Outcome::LostRace)
            }
            Landed::No => {
                self.discard_unstored(plan, mint).await?;
                Err(failure.error)
            }
            Landed::Yes { version } => {
                tracing::info!(key = %name, version, "the new version was stored; recording it as pending");
                self.finish_landed(plan, &mint, version).await?;
                self.validate_and_promote(plan, version, reason).await
            }
            Landed::Unknown => {
                let why = format!(
                    "could not find out within {:?} whether the new version {} of {name} was stored ({}); its key is kept, not revoked — the next rotation check adopts it if it was stored and revokes it if not",
                    self.settle_for, mint.version, failure.error
                );
                self.memory.keep(name, mint);
                Err(StoreError::Refused(why))
            }
        }
    }

    /// Asks Vault whether `mint` landed, with backoff (0.25 s, 0.5 s, 1 s, then every 2 s) for
    /// `settle_for`.
    async fn find_out(&self, name: &KeyName, mint: &Unsettled) -> Landed {
        let deadline = tokio::time::Instant::now() + self.settle_for;
        let mut wait = Duration::from_millis(250);
        loop {
            match self.store.find_write(name, mint.version, &mint.fingerprint).await {
                Landed::Unknown if tokio::time::Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                known => return known,
            }
        }
    }

    /// A minted key that Vault holds as `version` but whose recording failed: record it as
    /// pending (the data is there, the key is live: it is finished, not revoked).
    async fn finish_landed(&self, plan: &KeyPlan, mint: &Unsettled, version: u64) -> Result<(), StoreError> {
        let fp = mint.fingerprint.clone();
        let ours = mint.intent.clone();
        let recorded = self
            .store
            .update_state(&plan.name, |read, s| {
                refuse_stale(read, version)?;
                s.fingerprints.insert(version, fp);
                if s.current.is_none_or(|c| c < version) && s.pending.is_none_or(|p| p <= version) {
                    s.pending = Some(version);
                }
                if s.intent.as_ref() == Some(&ours) {
                    s.intent = None;
                }
                Ok(())
            })
            .await;
        if let Err(e) = recorded {
            // Stored but not recorded: any agent adopts it from the data; we do it next pass.
            self.memory.keep(&plan.name, mint.clone());
            return Err(e);
        }
        self.memory.accounted_for(&plan.name, &mint.intent);
        Ok(())
    }

    /// A minted key Vault did not store: mark it revoked (so a write that still lands late is
    /// never adopted), revoke it at the provider, clear our intent. If the mark cannot be
    /// written the key is kept for the next pass — never revoked unmarked.
    async fn discard_unstored(&self, plan: &KeyPlan, mint: Unsettled) -> Result<(), StoreError> {
        let name = &plan.name;
        let marked = if crate::failpoint::fail("mark_unstored") {
            Err(StoreError::Refused("failpoint mark_unstored".into()))
        } else {
            self.mark_revoked(name, &mint.fingerprint).await
        };
        if let Err(e) = marked {
            tracing::warn!(key = %name, error = %e, "cannot mark the unstored key revoked yet; keeping it for the next rotation check");
            self.memory.keep(name, mint);
            return Err(e);
        }
        self.revoke(plan, mint.key_id.as_deref(), "the new version was not stored").await;
        self.memory.accounted_for(name, &mint.intent);
        let ours = mint.intent;
        let cleared = self
            .store
            .update_state(name, |_, s| {
                if s.intent.as_ref() == Some(&ours) {
                    s.intent = None;
                }
                Ok(())
            })
            .await;
        if let Err(e) = cleared {
            tracing::debug!(key = %name, error = %e, "could not clear our intent; it is accounted for");
        }
        Ok(())
    }

    /// Records the key with fingerprint `fp` as revoked, before it is revoked (a key is not
    /// marked in a key that no longer exists: nothing can adopt from it).
    async fn mark_revoked(&self, name: &KeyName, fp: &str) -> Result<(), StoreError> {
        if crate::failpoint::fail("mark_revoked") {
            return Err(StoreError::Vault(crate::vault::VaultError::Unreachable {
                address: "(failpoint)".into(),
                op: format!("PATCH metadata of {name}"),
                detail: "failpoint mark_revoked".into(),
                connected: true,
            }));
        }
        let fp = fp.to_string();
        match self
            .store
            .update_state(name, |_, s| {
                s.mark_revoked(&fp);
                Ok(())
            })
            .await
        {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn validate_and_promote(&self, plan: &KeyPlan, version: u64, reason: &str) -> Result<Outcome, StoreError> {
        let name = &plan.name;
        let data = match self.store.read(name, version).await? {
            VersionRead::Live(d) if self.store.require(name).await?.state.is_revoked(&d.api_key.fingerprint()) => {
                // Marked revoked by an agent that is revoking it (or crashed doing so): never
                // validated or promoted; finish the revocation (idempotent).
                return self.give_up(plan, version, &d, "its key was revoked by keysync".into()).await;
            }
            VersionRead::Live(d) => d,
            _ => {
                self.store
                    .update_state(name, |_, s| {
                        s.failed.insert(version);
                        s.pending = None;
                        Ok(())
                    })
                    .await?;
                return Ok(Outcome::Failed { version, why: "pending version has no data".into() });
            }
        };
        if plan.policy.validate {
            if let Some(verdict) =
                crate::provider::check_key(&*plan.provider, plan.validation.as_ref(), &data.api_key).await
            {
                match verdict {
                    Verdict::Valid => {}
                    Verdict::Invalid(why) => {
                        self.failure(name, "invalid");
                        return self.give_up(plan, version, &data, why).await;
                    }
                    Verdict::Undecided(why) => {
                        self.failure(name, "undecided");
                        let now = self.clock.now();
                        let record = self.store.require(name).await?;
                        let attempts =
                            record.state.retry.as_ref().filter(|r| r.version == version).map_or(0, |r| r.attempts) + 1;
                        if attempts >= MAX_UNDECIDED {
                            return self
                                .give_up(plan, version, &data, format!("validation undecided {attempts} times: {why}"))
                                .await;
                        }
                        let delay =
                            UNDECIDED_BASE_DELAY.saturating_mul(1 << (attempts - 1).min(16)).min(UNDECIDED_MAX_DELAY);
                        let next_at = now + chrono_duration(delay);
                        self.store
                            .update_state(name, |_, s| {
                                s.retry = Some(crate::store::ValidationRetry { version, attempts, next_at });
                                Ok(())
                            })
                            .await?;
                        return Ok(Outcome::Pending {
                            version,
                            why: format!("{why}; attempt {attempts}, next at {}", next_at.to_rfc3339()),
                        });
                    }
                }
            }
        }
        crate::failpoint::hit("after_validate");
        // Promoting pushes the current key to `previous`; a previous key still in its grace
        // period would drop out of the state without ever being revoked (rotating again within
        // grace: `--force`, or an interval shorter than grace). Revoke it first; the promotion
        // PATCH itself replaces `previous` (a separate PATCH clearing it could land after a
        // peer's promotion of the same version and erase the `previous` that one set).
        let record = self.store.require(name).await?;
        refuse_stale(&record, version)?;
        let mut retired = None;
        if let Some(p) = record.state.previous.filter(|p| *p != version && record.state.current != Some(version)) {
            if record.state.in_grace(self.clock.now()) {
                tracing::warn!(key = %name, version = p, "rotating again while the previous key is in its grace period; retiring it now so it is not left live at the provider");
            }
            // (Grace over: the retirement `step` left to this promotion, nothing to revoke.)
            self.revoke_retired(plan, p).await?;
            retired = Some(p);
        }
        let now = self.clock.now();
        let grace = plan.grace;
        let actor = self.store.actor().to_string();
        let reason = reason.to_string();
        let writer = data.fields.get(crate::store::WRITTEN_BY_FIELD).and_then(Value::as_str).map(str::to_string);
        let fp = data.api_key.fingerprint();
        let mut previous = None;
        let mut already = false;
        let promoted = self
            .store
            .update_state(name, |read, s| {
                refuse_stale(read, version)?;
                if s.is_revoked(&fp) {
                    return Err(StoreError::Refused(format!(
                        "{name} v{version} was marked revoked while it was being validated; not promoted"
                    )));
                }
                clear_intent_of(s, writer.as_deref());
                s.fingerprints.insert(version, fp.clone());
                if s.current == Some(version) {
                    already = true; // a peer finishing the same pending version got there first
                    if s.pending == Some(version) {
                        s.pending = None; // recorded by a check that read before the peer's promotion
                    }
                    return Ok(());
                }
                previous = s.current;
                s.previous = s.current;
                s.grace_until = s.current.map(|_| now + chrono_duration(grace));
                s.current = Some(version);
                if s.pending == Some(version) {
                    s.pending = None;
                }
                s.retry = None;
                s.rotated_at = Some(now);
                s.rotated_by = Some(actor);
                s.reason = Some(reason);
                Ok(())
            })
            .await;
        if let Some(p) = retired {
            match &promoted {
                Ok(_) => {
                    tracing::info!(key = %name, version = p, "retired the previous key (replaced by the promotion)")
                }
                // Not promoted after all: the revoked key must not stay visible as `previous`.
                Err(_) => self.clear_previous(name, p).await?,
            }
        }
        promoted?;
        if already {
            self.count(name, "lost_race");
            return Ok(Outcome::LostRace);
        }
        crate::failpoint::hit("after_promote");
        let after = self.store.require(name).await?;
        self.checked_promotion(plan, version, &fp, previous, &after).await
    }

    /// After a promotion PATCH: steps back if a peer marked the key revoked meanwhile (Vault
    /// has no metadata CAS), then claims the promotion's count (exactly one promoter counts
    /// it). `after` is the state read after the PATCH.
    async fn checked_promotion(
        &self,
        plan: &KeyPlan,
        version: u64,
        fp: &str,
        previous: Option<u64>,
        after: &KeyRecord,
    ) -> Result<Outcome, StoreError> {
        let name = &plan.name;
        if after.state.is_revoked(fp) && after.state.current == Some(version) {
            tracing::error!(key = %name, version, "the promoted key was marked revoked by another agent at the same moment; restoring the earlier current key");
            self.store
                .update_state(name, |_, s| {
                    if s.current == Some(version) {
                        s.current = previous;
                        s.previous = None;
                        s.grace_until = None;
                        s.failed.insert(version);
                    }
                    Ok(())
                })
                .await?;
            self.count(name, "failed");
            return Ok(Outcome::Failed { version, why: "its key was revoked while it was promoted".into() });
        }
        // Several agents may have promoted this version at once; exactly one counts it.
        match self.store.claim_promotion(name, version, fp).await {
            Ok(true) => {
                self.count(name, "rotated");
                tracing::info!(key = %name, version, "promoted");
                Ok(Outcome::Rotated { version, previous })
            }
            Ok(false) => {
                self.count(name, "lost_race");
                tracing::info!(key = %name, version, "promoted at the same moment as another agent, which counts it");
                Ok(Outcome::LostRace)
            }
            Err(e) => {
                tracing::warn!(key = %name, version, error = %e, "promoted, but could not record the promotion count");
                Ok(Outcome::Rotated { version, previous })
            }
        }
    }

    /// A pending version that will not be promoted: mark its key revoked, revoke it at the
    /// provider, then mark the version failed and destroy its data (the fingerprint stays for
    /// audit).
    ///
    /// Mark first: from then on no agent adopts, validates or promotes it. The version stays
    /// pending until the provider revoked it, so a crash in between is resumed here (the
    /// mark sends the resuming agent to this function again): a key is never left live at the
    /// provider with nothing pointing at it. Revoking again is harmless (providers treat an
    /// already revoked key as done).
    async fn give_up(&self, plan: &KeyPlan, version: u64, data: &KeyData, why: String) -> Result<Outcome, StoreError> {
        self.mark_revoked(&plan.name, &data.api_key.fingerprint()).await?;
        self.discard(plan, version, data, "failed validation").await?;
        self.count(&plan.name, "failed");
        Ok(Outcome::Failed { version, why })
    }

    /// Revokes the (already marked) key of `version`, then marks the version failed and
    /// destroys its data.
    async fn discard(&self, plan: &KeyPlan, version: u64, data: &KeyData, why: &str) -> Result<(), StoreError> {
        let name = &plan.name;
        let key_id = data.fields.get("key_id").and_then(Value::as_str);
        self.revoke(plan, key_id, why).await;
        crate::failpoint::hit("after_refused_revoke");
        let writer = data.fields.get(crate::store::WRITTEN_BY_FIELD).and_then(Value::as_str).map(str::to_string);
        self.store
            .update_state(name, |_, s| {
                clear_intent_of(s, writer.as_deref());
                s.failed.insert(version);
                if s.pending == Some(version) {
                    s.pending = None;
                }
                if s.retry.as_ref().is_some_and(|r| r.version == version) {
                    s.retry = None;
                }
                Ok(())
            })
            .await?;
        if let Err(e) = self.store.kv().destroy(name, &[version]).await {
            tracing::warn!(key = %name, version, error = %e, "could not destroy the refused version's data");
        }
        Ok(())
    }

    /// Retires the previous key when [`super::holds::decide`] says so: early once every
    /// reporting agent holds the current key, at grace end unless a fresh agent still holds
    /// the previous one, and past `max_hold` anyway — loudly (error log, metric, a
    /// `forced_retirement` note that `keysync status` shows).
    /// Returns whether it retired (the caller's record is then stale).
    async fn retire_if_due(&self, plan: &KeyPlan, record: &KeyRecord) -> Result<bool, StoreError> {
        let name = &plan.name;
        let (Some(prev), Some(_)) = (record.state.previous, record.state.grace_until) else { return Ok(false) };
        let decision = self.every_reporting_agent_switched(plan, record).await?;
        if !decision.retire_now() {
            return Ok(false);
        }
        self.retire(plan, prev).await?;
        if let Retirement::Forced { by, why } = decision {
            // Counted and logged once the retirement happened (a failed revoke is retried).
            tracing::error!(key = %name, held_by = %by.join(" "), why = %why, "retired the previous key although agents still hold it: max_hold ran out; fix those agents' sinks or hooks");
            if let Some(m) = self.metrics {
                m.retirements_forced_total.get_or_create(&KeyLabel { key: name.to_string() }).inc();
            }
            let note = format!("{why} (at {} by {})", self.clock.now().to_rfc3339(), self.store.actor());
            let noted = self
                .store
                .update_state(name, |_, s| {
                    s.forced_retirement = Some(note);
                    Ok(())
                })
                .await;
            if let Err(e) = noted {
                tracing::warn!(key = %name, error = %e, "could not record the forced retirement for `keysync status`");
            }
        }
        Ok(true)
    }

    /// Revokes version `prev` at the provider (when it can and the policy wants it), then
    /// clears `previous` if it still is `prev`. Safe to repeat after a crash in between.
    async fn retire(&self, plan: &KeyPlan, prev: u64) -> Result<(), StoreError> {
        let name = &plan.name;
        self.revoke_retired(plan, prev).await?;
        crate::failpoint::hit("after_revoke_previous");
        self.clear_previous(name, prev).await?;
        tracing::info!(key = %name, version = prev, "retired the previous key");
        Ok(())
    }

    /// Clears `previous` (and its grace) if it still is `prev`, so a revoked key is no longer
    /// rendered as the previous one.
    async fn clear_previous(&self, name: &KeyName, prev: u64) -> Result<(), StoreError> {
        self.store
            .update_state(name, |_, s| {
                if s.previous == Some(prev) {
                    s.previous = None;
                    s.grace_until = None;
                }
                Ok(())
            })
            .await
            .map(drop)
    }

    /// The provider half of a retirement: marks version `prev`'s key revoked, then revokes it
    /// (when the provider can and the policy wants it). Leaves the state's `previous` alone.
    async fn revoke_retired(&self, plan: &KeyPlan, prev: u64) -> Result<(), StoreError> {
        let name = &plan.name;
        if plan.policy.revoke_previous.unwrap_or(true) && plan.provider.capabilities().revokes {
            if let VersionRead::Live(d) = self.store.read(name, prev).await? {
                if let Some(id) = d.fields.get("key_id").and_then(Value::as_str) {
                    // Mark, revoke, clean up: a rollback (or anything else) never brings the
                    // key back once its revocation started.
                    self.mark_revoked(name, &d.api_key.fingerprint()).await?;
                    plan.provider
                        .revoke(id)
                        .await
                        .map_err(|e| StoreError::Refused(format!("revoking {name} v{prev} failed: {e}; will retry")))?;
                }
            }
        }
        Ok(())
    }

    /// Reads the agents' reports and decides about the previous key (see
    /// [`super::holds`]); logs and exports the decision (`keysync_key_consumers`,
    /// `keysync_retirement_held`, `keysync_retirements_forced_total`).
    async fn every_reporting_agent_switched(
        &self,
        plan: &KeyPlan,
        record: &crate::store::KeyRecord,
    ) -> Result<Retirement, StoreError> {
        let name = &plan.name;
        let now = self.clock.now();
        let acks = self.store.kv().acks().all().await?;
        let consumers = holds::consumers(record, &acks, now, plan.ack_ttl);
        let decision = holds::decide(record, &consumers, now, plan.max_hold);
        let label = KeyLabel { key: name.to_string() };
        let was_held = self.metrics.is_some_and(|m| m.retirement_held.get_or_create(&label).get() == 1);
        match &decision {
            Retirement::Early => {
                let agents = consumers.iter().filter(|c| c.fresh).count();
                tracing::info!(key = %name, agents, "every reporting agent holds the current key; retiring the previous one early");
            }
            Retirement::Held { by, until } if !was_held => {
                tracing::warn!(key = %name, held_by = %by.join(" "), until = %until.to_rfc3339(), "grace is over but agents still hold the previous key; retirement waits for them (max_hold)");
            }
            Retirement::Held { by, .. } => {
                tracing::debug!(key = %name, held_by = %by.join(" "), "retirement still held");
            }
            _ => {}
        }
        if let Some(m) = self.metrics {
            m.retirement_held.get_or_create(&label).set(i64::from(matches!(decision, Retirement::Held { .. })));
            // After a retirement the previous key's holders are stale: count them as such.
            let counted = if decision.retire_now() {
                let mut after = record.clone();
                after.state.previous = None;
                holds::consumers(&after, &acks, now, plan.ack_ttl)
            } else {
                consumers
            };
            for state in holds::CONSUMER_STATES {
                let n = counted.iter().filter(|c| c.state() == state).count();
                m.key_consumers
                    .get_or_create(&KeyStateLabel { key: name.to_string(), state: state.into() })
                    .set(n as i64);
            }
        }
        Ok(decision)
    }

    /// Before minting: revoke provider keys an earlier, crashed rotation minted but never
    /// stored (providers that can list the keys they made for a key name).
    async fn reconcile(&self, plan: &KeyPlan, record: &crate::store::KeyRecord) {
        if !plan.provider.capabilities().lists_own {
            return;
        }
        let mut referenced = std::collections::BTreeSet::new();
        for (v, meta) in &record.meta.versions {
            if meta.destroyed {
                continue;
            }
            match self.store.read(&plan.name, *v).await {
                Ok(VersionRead::Live(d)) => {
                    if let Some(id) = d.fields.get("key_id").and_then(Value::as_str) {
                        referenced.insert(id.to_string());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = %plan.name, error = %e, "cannot read every version; skipping orphan cleanup");
                    return;
                }
            }
        }
        match crate::provider::delete_orphans(&*plan.provider, plan.name.as_str(), &referenced, plan.adopt_after).await
        {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::warn!(key = %plan.name, ?deleted, "revoked provider keys minted by an interrupted rotation")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key = %plan.name, error = %e, "could not check the provider for orphaned keys"),
        }
    }

    /// Whether `intent` was recorded by another agent less than `adopt_after` ago: that agent
    /// is most likely still rotating. An older one (or our own) is the trace of an interrupted
    /// rotation and is taken over.
    fn is_peers_fresh_intent(&self, intent: &Intent, now: DateTime<Utc>, adopt_after: Duration) -> bool {
        !intent.is_by(self.store.actor()) && now - intent.at() < chrono_duration(adopt_after)
    }

    async fn clear_intent(&self, name: &KeyName) {
        let cleared = self
            .store
            .update_state(name, |_, s| {
                s.intent = None;
                Ok(())
            })
            .await;
        if let Err(e) = cleared {
            tracing::warn!(key = %name, error = %e, "could not clear the rotation intent");
        }
    }

    async fn revoke(&self, plan: &KeyPlan, key_id: Option<&str>, why: &str) {
        let (Some(id), true) = (key_id, plan.provider.capabilities().revokes) else { return };
        if let Err(e) = plan.provider.revoke(id).await {
            tracing::error!(key = %plan.name, key_id = id, error = %e, "could not revoke a minted key ({why}); revoke it by hand");
        }
    }

    fn count(&self, name: &KeyName, result: &str) {
        if let Some(m) = self.metrics {
            m.rotations_total.get_or_create(&KeyResultLabel { key: name.to_string(), result: result.into() }).inc();
        }
    }

    fn failure(&self, name: &KeyName, reason: &str) {
        if let Some(m) = self.metrics {
            m.validation_failures_total
                .get_or_create(&KeyReasonLabel { key: name.to_string(), reason: reason.into() })
                .inc();
        }
    }
}

/// Whether the provider makes its keys itself, in this process (`generate`): nothing exists
/// at a provider before the key is stored, so a crash cannot orphan one and no rotation
/// intent needs recording first.
/// A minted key as it is written to Vault: the key, the provider's extra fields, its `key_id`
/// and `expires_at`; with its fingerprint and key id, which the rotation needs after the write.
fn stored_form(minted: crate::provider::Minted) -> (KeyData, String, Option<String>) {
    let key_id = minted.key_id.clone();
    let fingerprint = minted.api_key.fingerprint();
    let mut data = KeyData::new(minted.api_key);
    for (k, v) in minted.fields {
        data.fields.insert(k, Value::String(v));
    }
    if let Some(id) = &key_id {
        data.fields.insert("key_id".into(), Value::String(id.clone()));
    }
    if let Some(exp) = minted.expires_at {
        data.fields.insert("expires_at".into(), Value::String(exp.to_rfc3339()));
    }
    (data, fingerprint, key_id)
}

/// Refuses to build a state change on a read that predates `version`, which the caller knows
/// Vault holds (it wrote or read it): during a raft leadership change a node that has just lost
/// leadership can still answer reads from its own, older, storage for a moment. A merge PATCH
/// computed from such a read would write old values back (a promotion would record the
/// version before last as `previous`, a key already revoked). The next check reads again.
fn refuse_stale(record: &KeyRecord, version: u64) -> Result<(), StoreError> {
    if record.meta.current_version < version {
        return Err(StoreError::Refused(format!(
            "Vault answered with metadata of {} at version {}, older than version {version} which it holds \
             (a node that has just lost leadership?); not acting on it, will read again",
            record.name, record.meta.current_version
        )));
    }
    Ok(())
}

fn mints_locally(plan: &KeyPlan) -> bool {
    plan.provider.capabilities().mints_locally
}

/// Whether retiring this key's previous version revokes it at the provider; if not,
/// retirement only clears `previous`, which a promotion does anyway.
fn revokes_previous(plan: &KeyPlan) -> bool {
    plan.policy.revoke_previous.unwrap_or(true) && plan.provider.capabilities().revokes
}

/// Clears the rotation intent when the agent that wrote the version being finished is the
/// one that recorded it: its minted key is stored, so nothing is orphaned. (A crash between
/// storing the pending version and clearing the intent would otherwise leave a stale
/// "interrupted rotation" behind for good.) Another agent's intent is left alone.
fn clear_intent_of(state: &mut crate::store::RotationState, writer: Option<&str>) {
    let Some(writer) = writer else { return };
    if state.intent.as_ref().is_some_and(|i| i.is_by(writer)) {
        state.intent = None;
    }
}

#[cfg(test)]
mod tests {
    use super::{clear_intent_of, refuse_stale};
    use crate::store::{Intent, KeyName, KeyRecord, Metadata, RotationState};

    #[test]
    fn a_read_older_than_a_known_version_is_not_acted_on() {
        let record = |latest: u64| KeyRecord {
            name: KeyName::parse("openai").unwrap(),
            meta: Metadata { current_version: latest, ..Default::default() },
            state: RotationState { current: Some(5), previous: Some(4), ..Default::default() },
        };
        let err = refuse_stale(&record(6), 7).unwrap_err().to_string();
        assert!(err.contains("openai") && err.contains("version 6") && err.contains("version 7"), "{err}");
        assert!(refuse_stale(&record(7), 7).is_ok());
        assert!(refuse_stale(&record(9), 7).is_ok(), "newer versions since: the read is fresh enough");
    }

    #[test]
    fn finishing_a_version_clears_only_its_writers_intent() {
        let intent = Intent::parse("agent-a at 2026-01-01T00:00:00Z").unwrap();
        let mut s = RotationState { intent: Some(intent), ..Default::default() };
        clear_intent_of(&mut s, Some("agent-b"));
        assert!(s.intent.is_some(), "another agent's intent is its trace, not ours to clear");
        clear_intent_of(&mut s, None);
        assert!(s.intent.is_some(), "a version without a writer (by hand) clears nothing");
        clear_intent_of(&mut s, Some("agent"));
        assert!(s.intent.is_some(), "a prefix of the actor is a different actor");
        clear_intent_of(&mut s, Some("agent-a"));
        assert!(s.intent.is_none());
    }
}
