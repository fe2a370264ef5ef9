//! One sync pass: find out which keys changed (one index read in steady state), read data
//! only for those, and render every sink whose inputs changed. The filesystem is touched only
//! through `render`; a Vault error leaves every file as it was.

use super::config::Config;
use crate::render::{DirSink, KeyMaterial, RenderError, RenderOutcome, Sink};
use crate::secret::Secret;
use crate::store::{IndexCursor, IndexEntry, IndexFormat, KeyName, KeyStore, SinkHold, VersionRead};
use crate::telemetry::{KeyLabel, Metrics, SinkLabel, SinkResultLabel};
use crate::vault::VaultError;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A rendered key as last read from Vault.
#[derive(Clone, Debug)]
struct CachedKey {
    entry: IndexEntry,
    /// `None`: missing, disabled, deleted or unreadable — sinks keep their last good file.
    current: Option<(u64, Secret, BTreeMap<String, String>)>,
    previous: Option<(u64, Secret)>,
    /// Whether the previous key was inside its grace period when read.
    previous_visible: bool,
}

/// A sink of any kind with the keys it renders.
enum AnySink {
    File(Box<Sink>),
    Dir(DirSink),
}

struct Binding {
    sink: AnySink,
    keys: Vec<KeyName>,
    label: String,
    /// Fingerprints of what was last rendered successfully; `None` forces a render.
    rendered: Option<String>,
    /// Per key: the version and fingerprint the sink holds on disk, from its last successful
    /// render in this agent's life (kept when a later render fails: the old file stays).
    on_disk: BTreeMap<KeyName, (u64, String)>,
    /// Why the last render failed, until one succeeds.
    error: Option<String>,
}

/// Which keys changed in a pass, for hooks and exec.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    /// Keys whose files were written (or removed) in this pass, with version and fingerprint.
    pub changed: BTreeMap<KeyName, (u64, String)>,
    /// Sinks that failed or kept a stale file because a key was missing.
    pub failed_sinks: Vec<String>,
    pub missing_sinks: Vec<String>,
    /// Why each sink in `failed_sinks` failed (the render error), for `/readyz`.
    pub failure_reasons: BTreeMap<String, String>,
}

/// The sync state of one agent.
pub struct Syncer {
    store: KeyStore,
    metrics: Arc<Metrics>,
    keys: BTreeSet<KeyName>,
    bindings: Vec<Binding>,
    cache: BTreeMap<KeyName, CachedKey>,
    /// What the last poll saw of the change index; `None` until the first full read.
    cursor: Option<IndexCursor>,
    /// The paced full sync: where the sweep of key metadata stands, and how many keys each
    /// pass checks so that every key is checked once per `agent.full_sync_interval`.
    sweep_at: usize,
    /// Keys per pass (a fraction when there are fewer keys than passes per interval) and
    /// the fraction carried over, so the sweep costs exactly keys per interval.
    sweep_per_pass: f64,
    sweep_credit: f64,
    /// Whether this agent already said it reads a legacy (format 1) index.
    said_legacy: bool,
    /// Keys some sink renders with `include_previous`: only their previous version is read,
    /// so a change costs the other keys one data read, not two.
    wants_previous: BTreeSet<KeyName>,
}

impl Syncer {
    /// Builds sinks from the config (templates compiled now, so errors show at start).
    pub fn new(cfg: &Config, store: KeyStore, metrics: Arc<Metrics>) -> Result<Self, String> {
        let parse = |k: &str| KeyName::parse(k);
        let mut bindings = Vec::new();
        let mut wants_previous = BTreeSet::new();
        for (name, key) in &cfg.keys {
            if key.sinks.iter().any(|s| s.include_previous) {
                wants_previous.insert(parse(name)?);
            }
            for s in &key.sinks {
                let sink = Sink::new(s.clone()).map_err(|e| e.to_string())?;
                bindings.push(Binding {
                    label: s.path.display().to_string(),
                    sink: AnySink::File(Box::new(sink)),
                    keys: vec![parse(name)?],
                    rendered: None,
                    on_disk: BTreeMap::new(),
                    error: None,
                });
            }
        }
        for s in &cfg.sinks {
            let sink = Sink::new(s.clone()).map_err(|e| e.to_string())?;
            let keys = s.keys.iter().map(|k| parse(k)).collect::<Result<Vec<_>, _>>()?;
            if s.include_previous {
                wants_previous.extend(keys.iter().cloned());
            }
            bindings.push(Binding {
                label: s.path.display().to_string(),
                sink: AnySink::File(Box::new(sink)),
                keys,
                rendered: None,
                on_disk: BTreeMap::new(),
                error: None,
            });
        }
        for d in &cfg.dir_sinks {
            let sink = DirSink::new(d.clone()).map_err(|e| e.to_string())?;
            let mut keys: Vec<KeyName> =
                d.files.iter().flat_map(|f| f.keys.iter()).map(|k| parse(k)).collect::<Result<Vec<_>, _>>()?;
            keys.sort();
            keys.dedup();
            for f in d.files.iter().filter(|f| f.include_previous) {
                wants_previous.extend(f.keys.iter().map(|k| parse(k)).collect::<Result<Vec<_>, _>>()?);
            }
            bindings.push(Binding {
                label: d.path.display().to_string(),
                sink: AnySink::Dir(sink),
                keys,
                rendered: None,
                on_disk: BTreeMap::new(),
                error: None,
            });
        }
        let keys = cfg.rendered_keys().iter().map(|k| parse(k)).collect::<Result<BTreeSet<_>, _>>()?;
        let sweep_per_pass =
            sweep_per_pass(keys.len(), cfg.agent.poll_interval.get(), cfg.agent.full_sync_interval.get());
        Ok(Syncer {
            store,
            metrics,
            keys,
            bindings,
            cache: BTreeMap::new(),
            cursor: None,
            sweep_at: 0,
            sweep_per_pass,
            sweep_credit: 0.0,
            said_legacy: false,
            wants_previous,
        })
    }

    pub fn sink_count(&self) -> usize {
        self.bindings.len()
    }

    /// The key material for `name` as last read, for exec's environment.
    pub fn current_key(&self, name: &KeyName) -> Option<(u64, Secret)> {
        self.cache.get(name).and_then(|c| c.current.as_ref()).map(|(v, k, _)| (*v, k.clone()))
    }

    /// The fingerprint of each key's current version as last read.
    pub fn current_fingerprints(&self) -> BTreeMap<String, String> {
        self.cache
            .iter()
            .filter_map(|(n, c)| c.current.as_ref().map(|(_, k, _)| (n.to_string(), k.fingerprint())))
            .collect()
    }

    /// Per key this agent renders: what each of its sinks holds on disk and the sink's last
    /// error. A failed sink still holds what its last good render wrote (or nothing known).
    pub fn holdings(&self) -> BTreeMap<KeyName, Vec<SinkHold>> {
        let mut out: BTreeMap<KeyName, Vec<SinkHold>> = self.keys.iter().map(|k| (k.clone(), Vec::new())).collect();
        for b in &self.bindings {
            for k in &b.keys {
                let held = b.on_disk.get(k);
                out.entry(k.clone()).or_default().push(SinkHold {
                    sink: b.label.clone(),
                    version: held.map(|(v, _)| *v),
                    fingerprint: held.map(|(_, fp)| fp.clone()),
                    error: b.error.clone(),
                });
            }
        }
        out
    }

    /// When the earliest grace period that still shows a previous key ends.
    pub fn next_grace_end(&self) -> Option<DateTime<Utc>> {
        let now = crate::clock::now();
        self.cache.values().filter_map(|c| c.entry.grace_until).filter(|g| *g > now).min()
    }

    /// One pass. `full`: read every key's metadata instead of trusting the index (start,
    /// periodic, SIGHUP). Returns what changed; an error means Vault could not be read and
    /// nothing on disk was touched.
    pub async fn pass(&mut self, full: bool) -> Result<PassReport, VaultError> {
        // A pass that fails after the index poll must not lose what the poll announced: the
        // next pass starts from the cursor as it was.
        let (cursor, sweep_at, credit) = (self.cursor.clone(), self.sweep_at, self.sweep_credit);
        let result = self.pass_inner(full).await;
        if result.is_err() {
            (self.cursor, self.sweep_at, self.sweep_credit) = (cursor, sweep_at, credit);
        }
        result
    }

    async fn pass_inner(&mut self, full: bool) -> Result<PassReport, VaultError> {
        let entries = self.entries(full).await?;
        let now = crate::clock::now();
        let mut to_read = Vec::new();
        for name in self.keys.clone() {
            let entry = match entries.get(&name) {
                Some(e) => e.clone(),
                None => match self.cache.get(&name) {
                    Some(c) => c.entry.clone(),
                    None => IndexEntry::default(),
                },
            };
            let cached = self.cache.get(&name);
            let previous_visible = entry.grace_until.is_some_and(|g| g > now) && entry.previous.is_some();
            let cached_previous_visible = cached.is_some_and(|c| c.previous_visible);
            let needs_read = match cached {
                None => true,
                Some(c) => c.entry != entry || previous_visible != cached_previous_visible,
            };
            if !needs_read {
                continue;
            }
            to_read.push((name, entry, previous_visible));
        }
        // A few reads in flight at once: a start with 100,000 keys is 100,000 data reads, and
        // one at a time they take minutes of round trips. Any error leaves the cache as it was
        // for the keys not read yet, as before.
        for chunk in to_read.chunks(READS_IN_FLIGHT) {
            let reads = chunk.iter().map(|(name, entry, prev)| self.read_key(name, entry.clone(), *prev));
            let fresh = futures_util::future::join_all(reads).await;
            for ((name, _, _), fresh) in chunk.iter().zip(fresh) {
                let fresh = fresh?;
                self.update_key_metrics(name, &fresh);
                self.cache.insert(name.clone(), fresh);
            }
        }
        for (name, c) in &self.cache {
            if let Some(since) = c.entry.since {
                let age = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics.key_age_seconds.get_or_create(&KeyLabel { key: name.to_string() }).set(age);
            }
            self.update_expiry_metric(name, c, now);
        }
        Ok(self.render_all())
    }

    /// The entries to act on. `full` (start, SIGHUP): every key's metadata, the truth the
    /// index only announces. Otherwise the index poll (the root, plus shards whose root value
    /// changed) and this pass's slice of the paced full sync.
    async fn entries(&mut self, full: bool) -> Result<BTreeMap<KeyName, IndexEntry>, VaultError> {
        let mut out = BTreeMap::new();
        let index = self.store.kv().index();
        let Some(cursor) = self.cursor.as_mut().filter(|_| !full) else {
            // Look at the root first, so changes during the full read are seen next poll.
            let mut cursor = IndexCursor::default();
            index.mark_seen(&mut cursor).await?;
            let keys: Vec<KeyName> = self.keys.iter().cloned().collect();
            for chunk in keys.chunks(READS_IN_FLIGHT) {
                let entries = futures_util::future::join_all(chunk.iter().map(|name| self.metadata_entry(name))).await;
                for (name, entry) in chunk.iter().zip(entries) {
                    out.insert(name.clone(), entry?);
                }
            }
            self.cursor = Some(cursor);
            self.sweep_at = 0;
            return Ok(out);
        };
        let polled = index.poll(cursor, &self.keys).await?;
        if polled.format == Some(IndexFormat::Legacy) && !self.said_legacy {
            self.said_legacy = true;
            tracing::info!("the change index is in the legacy single-secret format; the first keysync writer of this version converts it");
        }
        for (name, entry) in polled.entries {
            if let Ok(name) = KeyName::parse(&name) {
                out.insert(name, entry);
            }
        }
        // The paced full sync: a few keys' metadata per pass, in turn. Metadata is the truth
        // the index only announces, so it overrides the index's entry.
        let keys: Vec<KeyName> = self.keys.iter().cloned().collect();
        self.sweep_credit = (self.sweep_credit + self.sweep_per_pass).min(keys.len() as f64);
        let now = self.sweep_credit.floor();
        self.sweep_credit -= now;
        // Several reads in flight, like the first pass: at 100,000 keys a slice is ~140 keys a
        // pass, and one at a time their round trips would delay what the index announced.
        let slice: Vec<KeyName> = (0..now as usize).map(|i| keys[(self.sweep_at + i) % keys.len()].clone()).collect();
        if !keys.is_empty() {
            self.sweep_at = (self.sweep_at + slice.len()) % keys.len();
        }
        for chunk in slice.chunks(READS_IN_FLIGHT) {
            let entries = futures_util::future::join_all(chunk.iter().map(|name| self.metadata_entry(name))).await;
            for (name, entry) in chunk.iter().zip(entries) {
                out.insert(name.clone(), entry?);
            }
        }
        Ok(out)
    }

    /// A key's entry built from its metadata; a key keysync cannot decode keeps its files.
    async fn metadata_entry(&self, name: &KeyName) -> Result<IndexEntry, VaultError> {
        Ok(match self.store.record(name).await {
            Ok(Some(r)) => IndexEntry::from_state(&r.state, r.current_deleted(&r.state)),
            Ok(None) => IndexEntry::default(),
            Err(crate::store::StoreError::Vault(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(key = %name, error = %e, "cannot read the key's state; keeping its files as they are");
                self.cache.get(name).map(|c| c.entry.clone()).unwrap_or_default()
            }
        })
    }

    /// Reads the data a key's entry points at. Vault errors propagate (files untouched);
    /// a missing or unusable version makes the key missing.
    async fn read_key(
        &self,
        name: &KeyName,
        entry: IndexEntry,
        previous_visible: bool,
    ) -> Result<CachedKey, VaultError> {
        let mut fresh = CachedKey { entry: entry.clone(), current: None, previous: None, previous_visible };
        if entry.disabled || entry.deleted {
            tracing::warn!(key = %name, disabled = entry.disabled, deleted = entry.deleted, "key is not available; files keep the last good key");
            return Ok(fresh);
        }
        let Some(current) = entry.current else {
            return Ok(fresh);
        };
        match self.store.kv().read(name, current).await? {
            VersionRead::Live(data) => {
                let fields =
                    data.string_fields().into_iter().filter(|(k, _)| !crate::store::is_provenance_field(k)).collect();
                fresh.current = Some((current, data.api_key, fields));
            }
            other => {
                tracing::warn!(key = %name, version = current, state = ?std::mem::discriminant(&other), "current version has no data (deleted or destroyed); files keep the last good key");
                return Ok(fresh);
            }
        }
        if let (true, true, Some(prev)) = (previous_visible, self.wants_previous.contains(name), entry.previous) {
            if let VersionRead::Live(data) = self.store.kv().read(name, prev).await? {
                fresh.previous = Some((prev, data.api_key));
            }
        }
        Ok(fresh)
    }

    fn update_key_metrics(&self, name: &KeyName, key: &CachedKey) {
        let label = KeyLabel { key: name.to_string() };
        if let Some((v, _, fields)) = &key.current {
            self.metrics.key_current_version.get_or_create(&label).set(*v as i64);
            if let Some(text) = fields.get("expires_at") {
                if chrono::DateTime::parse_from_rfc3339(text).is_err() {
                    tracing::warn!(key = %name, version = *v, expires_at = %text, "the key's expires_at field is not an RFC 3339 time (like 2027-01-31T00:00:00Z); keysync_key_expires_in_seconds is not exported for it");
                }
            }
        }
    }

    /// `keysync_key_expires_in_seconds` from the current key's `expires_at` field, refreshed
    /// every pass (so it is at most one poll old). A key without the field exports nothing; a
    /// key whose field is not RFC 3339 exports nothing and is reported when read.
    fn update_expiry_metric(&self, name: &KeyName, key: &CachedKey, now: chrono::DateTime<Utc>) {
        let label = KeyLabel { key: name.to_string() };
        let expires = key.current.as_ref().and_then(|(_, _, fields)| fields.get("expires_at"));
        match expires.map(|text| chrono::DateTime::parse_from_rfc3339(text)) {
            Some(Ok(at)) => {
                let left = (at.with_timezone(&Utc) - now).num_milliseconds() as f64 / 1000.0;
                self.metrics.key_expires_in_seconds.get_or_create(&label).set(left);
            }
            Some(Err(_)) | None => {
                self.metrics.key_expires_in_seconds.remove(&label);
            }
        }
    }

    fn material(&self, name: &KeyName) -> Option<KeyMaterial> {
        let c = self.cache.get(name)?;
        let (v, key, fields) = c.current.as_ref()?;
        let mut m = KeyMaterial::new(name.as_str(), *v, key.clone());
        for (k, val) in fields {
            m = m.with_field(k.clone(), val.clone());
        }
        if let Some((pv, pk)) = &c.previous {
            m = m.with_previous(*pv, pk.clone());
        }
        Some(m)
    }

    /// Renders every sink whose inputs differ from what it last rendered successfully.
    fn render_all(&mut self) -> PassReport {
        let mut report = PassReport::default();
        let mut bindings = std::mem::take(&mut self.bindings);
        for b in &mut bindings {
            let materials: Vec<Option<KeyMaterial>> = b.keys.iter().map(|k| self.material(k)).collect();
            let signature = if materials.iter().all(Option::is_some) {
                Some(
                    materials
                        .iter()
                        .flatten()
                        .map(|m| {
                            format!(
                                "{}:{}:{}",
                                m.name,
                                m.fingerprint,
                                m.previous.as_ref().map(|p| p.fingerprint.as_str()).unwrap_or("-")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                )
            } else {
                None
            };
            let label = SinkLabel { sink: b.label.clone() };
            let result = match &signature {
                Some(sig) if b.rendered.as_deref() == Some(sig.as_str()) => continue,
                Some(_) => {
                    let ms: Vec<KeyMaterial> = materials.into_iter().flatten().collect();
                    match &b.sink {
                        AnySink::File(s) => s.apply(&ms),
                        AnySink::Dir(d) => d.apply(&ms),
                    }
                }
                None => {
                    self.metrics.sink_key_missing_total.get_or_create(&label).inc();
                    report.missing_sinks.push(b.label.clone());
                    let r = match &b.sink {
                        AnySink::File(s) => s.apply_missing(),
                        AnySink::Dir(d) => d.apply_missing(),
                    };
                    if matches!(r, Ok(RenderOutcome::Kept)) && b.rendered.is_some() {
                        tracing::warn!(sink = %b.label, "a key of this sink is missing, disabled or deleted; keeping the last good file");
                    }
                    r
                }
            };
            let outcome_name = match &result {
                Ok(RenderOutcome::Written) => "written",
                Ok(RenderOutcome::Unchanged) => "unchanged",
                Ok(RenderOutcome::Removed) => "removed",
                Ok(RenderOutcome::Kept) => "kept",
                Err(_) => "failed",
            };
            self.metrics
                .sink_render_total
                .get_or_create(&SinkResultLabel { sink: b.label.clone(), result: outcome_name.into() })
                .inc();
            match result {
                Ok(outcome) => {
                    if signature.is_some() {
                        self.metrics
                            .sink_last_success_timestamp_seconds
                            .get_or_create(&label)
                            .set(crate::clock::now().timestamp() as f64);
                    }
                    match outcome {
                        RenderOutcome::Written | RenderOutcome::Unchanged if signature.is_some() => {
                            b.on_disk = b
                                .keys
                                .iter()
                                .filter_map(|k| self.material(k).map(|m| (k.clone(), (m.version, m.fingerprint))))
                                .collect();
                        }
                        RenderOutcome::Removed => b.on_disk.clear(),
                        _ => {}
                    }
                    b.error = None;
                    if matches!(outcome, RenderOutcome::Written | RenderOutcome::Removed) {
                        tracing::info!(sink = %b.label, result = outcome_name, "rendered");
                        for k in &b.keys {
                            if let Some(m) = self.material(k) {
                                report.changed.insert(k.clone(), (m.version, m.fingerprint.clone()));
                            }
                        }
                    }
                    b.rendered = signature;
                }
                Err(e) => {
                    log_render_error(&b.label, &e);
                    b.error = Some(short_error(&e.to_string()));
                    report.failure_reasons.insert(b.label.clone(), e.to_string());
                    report.failed_sinks.push(b.label.clone());
                    b.rendered = None;
                }
            }
        }
        self.bindings = bindings;
        report
    }
}

/// A render error short enough for a report (render errors never carry key material).
fn short_error(text: &str) -> String {
    const MAX: usize = 300;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    format!("{}…", text.chars().take(MAX).collect::<String>())
}

/// Vault reads a full pass keeps in flight (multiplexed on the session's connection).
const READS_IN_FLIGHT: usize = 16;

/// Keys whose metadata each pass checks so that all `keys` are checked once per `full_sync`
/// when a pass runs every `poll`: spread evenly instead of one burst of `keys` reads (a
/// fraction below one: one key every few passes).
fn sweep_per_pass(keys: usize, poll: std::time::Duration, full_sync: std::time::Duration) -> f64 {
    let passes = (full_sync.as_secs_f64() / poll.as_secs_f64().max(0.001)).max(1.0);
    keys as f64 / passes
}

fn log_render_error(sink: &str, e: &RenderError) {
    tracing::error!(sink = %sink, error = %e, "render failed; the previous file is left as it was");
}

#[cfg(test)]
mod tests {
    use super::sweep_per_pass;
    use std::time::Duration;

    #[test]
    fn the_full_sync_is_spread_over_its_interval() {
        let (poll, hour) = (Duration::from_secs(10), Duration::from_secs(3600));
        // 360 passes an hour: 1,000 keys take 2.8 a pass, 100,000 keys 278 a pass.
        assert!((sweep_per_pass(1_000, poll, hour) - 2.78).abs() < 0.01);
        assert!((sweep_per_pass(100_000, poll, hour) - 277.8).abs() < 0.1);
        // Fewer keys than passes: one key every 72 passes.
        assert!((sweep_per_pass(5, poll, hour) - 5.0 / 360.0).abs() < 1e-9);
        assert_eq!(sweep_per_pass(0, poll, hour), 0.0);
        // An interval shorter than a poll checks everything every pass.
        assert_eq!(sweep_per_pass(7, poll, Duration::from_secs(1)), 7.0);
    }
}
