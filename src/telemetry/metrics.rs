//! Prometheus metrics. One [`Metrics`] per process, shared by the sync loop, the rotation
//! engine and the HTTP endpoint. Vault request counts are read from the client's own counters
//! at scrape time, so they are never counted twice.

use super::Health;
use crate::vault::VaultClient;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResultLabel {
    pub sink: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyResultLabel {
    pub key: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyReasonLabel {
    pub key: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyStateLabel {
    pub key: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultLabel {
    op: String,
    status: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric keysync exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub key_current_version: Family<KeyLabel, Gauge>,
    pub key_age_seconds: Family<KeyLabel, FloatGauge>,
    pub sink_render_total: Family<SinkResultLabel, Counter>,
    pub sink_last_success_timestamp_seconds: Family<SinkLabel, FloatGauge>,
    pub sink_key_missing_total: Family<SinkLabel, Counter>,
    pub sync_duration_seconds: Histogram,
    pub token_ttl_seconds: FloatGauge,
    pub last_successful_sync_timestamp_seconds: FloatGauge,
    pub sync_failures_total: Counter,
    pub hook_runs_total: Family<SinkResultLabel, Counter>,
    pub rotations_total: Family<KeyResultLabel, Counter>,
    pub key_next_rotation_timestamp_seconds: Family<KeyLabel, FloatGauge>,
    pub key_rotation_overdue: Family<KeyLabel, Gauge>,
    pub validation_failures_total: Family<KeyReasonLabel, Counter>,
    pub key_consumers: Family<KeyStateLabel, Gauge>,
    pub retirement_held: Family<KeyLabel, Gauge>,
    pub retirements_forced_total: Family<KeyLabel, Counter>,
    pub key_expires_in_seconds: Family<KeyLabel, FloatGauge>,
    vault_clients: Arc<Mutex<Vec<VaultClient>>>,
    health: Arc<Mutex<Option<Arc<Health>>>>,
}

/// Names of every metric family, as exported (for docs and the dashboard check).
pub const METRIC_NAMES: &[&str] = &[
    "keysync_key_current_version",
    "keysync_key_age_seconds",
    "keysync_sink_render_total",
    "keysync_sink_last_success_timestamp_seconds",
    "keysync_sink_key_missing_total",
    "keysync_sync_duration_seconds",
    "keysync_token_ttl_seconds",
    "keysync_last_successful_sync_timestamp_seconds",
    "keysync_sync_failures_total",
    "keysync_hook_runs_total",
    "keysync_rotations_total",
    "keysync_key_next_rotation_timestamp_seconds",
    "keysync_key_rotation_overdue",
    "keysync_validation_failures_total",
    "keysync_key_consumers",
    "keysync_retirement_held",
    "keysync_retirements_forced_total",
    "keysync_key_expires_in_seconds",
    "keysync_vault_requests_total",
    "keysync_ready",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            key_current_version: Family::default(),
            key_age_seconds: Family::default(),
            sink_render_total: Family::default(),
            sink_last_success_timestamp_seconds: Family::default(),
            sink_key_missing_total: Family::default(),
            sync_duration_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            token_ttl_seconds: FloatGauge::default(),
            last_successful_sync_timestamp_seconds: FloatGauge::default(),
            sync_failures_total: Counter::default(),
            hook_runs_total: Family::default(),
            rotations_total: Family::default(),
            key_next_rotation_timestamp_seconds: Family::default(),
            key_rotation_overdue: Family::default(),
            validation_failures_total: Family::default(),
            key_consumers: Family::default(),
            retirement_held: Family::default(),
            retirements_forced_total: Family::default(),
            key_expires_in_seconds: Family::default(),
            vault_clients: Arc::new(Mutex::new(Vec::new())),
            health: Arc::new(Mutex::new(None)),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "keysync_key_current_version",
            "Version number of each key's current version",
            m.key_current_version.clone(),
        );
        r.register(
            "keysync_key_age_seconds",
            "Seconds since each key's current version was promoted",
            m.key_age_seconds.clone(),
        );
        r.register(
            "keysync_sink_render",
            "Sink renders by result (written, unchanged, failed, removed, kept)",
            m.sink_render_total.clone(),
        );
        r.register(
            "keysync_sink_last_success_timestamp_seconds",
            "Unix time of each sink's last successful render",
            m.sink_last_success_timestamp_seconds.clone(),
        );
        r.register(
            "keysync_sink_key_missing",
            "Renders skipped because a key was missing, disabled or deleted (the last good file is kept unless on_missing = remove)",
            m.sink_key_missing_total.clone(),
        );
        r.register("keysync_sync_duration_seconds", "Duration of one sync pass", m.sync_duration_seconds.clone());
        r.register(
            "keysync_token_ttl_seconds",
            "Seconds left on the Vault token (0 = never expires)",
            m.token_ttl_seconds.clone(),
        );
        r.register(
            "keysync_last_successful_sync_timestamp_seconds",
            "Unix time of the last sync pass that reached Vault",
            m.last_successful_sync_timestamp_seconds.clone(),
        );
        r.register(
            "keysync_sync_failures",
            "Sync passes that could not reach Vault or read the index",
            m.sync_failures_total.clone(),
        );
        r.register(
            "keysync_hook_runs",
            "on_change hook runs by result (ok, failed, timeout)",
            m.hook_runs_total.clone(),
        );
        r.register("keysync_rotations", "Rotations by result", m.rotations_total.clone());
        r.register(
            "keysync_key_next_rotation_timestamp_seconds",
            "Unix time of each key's next scheduled rotation",
            m.key_next_rotation_timestamp_seconds.clone(),
        );
        r.register(
            "keysync_key_rotation_overdue",
            "1 when a key is older than its max_age",
            m.key_rotation_overdue.clone(),
        );
        r.register(
            "keysync_validation_failures",
            "Key validations that failed, by reason",
            m.validation_failures_total.clone(),
        );
        r.register(
            "keysync_key_consumers",
            "Agents reporting a key, by what their sinks hold (current, previous, stale, unknown, failed, silent); rotating agents, during grace",
            m.key_consumers.clone(),
        );
        r.register(
            "keysync_retirement_held",
            "1 while a previous key's grace is over but a fresh agent still holds it (retirement waits, up to max_hold)",
            m.retirement_held.clone(),
        );
        r.register(
            "keysync_retirements_forced",
            "Previous keys retired past max_hold although an agent still held them",
            m.retirements_forced_total.clone(),
        );
        r.register(
            "keysync_key_expires_in_seconds",
            "Seconds until the current key's expires_at (its data field, RFC 3339); negative once expired. Only keys that have one",
            m.key_expires_in_seconds.clone(),
        );
        r.register_collector(Box::new(VaultRequests(m.vault_clients.clone())));
        r.register_collector(Box::new(Ready(m.health.clone())));
        Metrics { registry, ..m }
    }

    /// Counts this client's requests in `keysync_vault_requests_total`.
    pub fn track_vault_client(&self, client: &VaultClient) {
        if let Ok(mut clients) = self.vault_clients.lock() {
            clients.push(client.clone());
        }
    }

    /// Exports `keysync_ready` from this agent's readiness, the same answer `/readyz` gives.
    pub fn track_health(&self, health: Arc<Health>) {
        if let Ok(mut h) = self.health.lock() {
            *h = Some(health);
        }
    }

    /// The OpenMetrics text format (what Prometheus asks for first).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The classic Prometheus text format 0.0.4, for scrapers and tools that do not ask for
    /// OpenMetrics (`curl`, `promtool check metrics`, older Prometheus). The samples are the
    /// same; counters are described under their `_total` name and there is no `# EOF`.
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }
}

/// OpenMetrics text → Prometheus text 0.0.4 for what keysync exports (counters, gauges,
/// histograms): a counter family `x` is `x_total` in HELP/TYPE, `# UNIT` and `# EOF` go.
fn openmetrics_to_prometheus_text(open: &str) -> String {
    let counters: std::collections::BTreeSet<&str> =
        open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or(line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                out.push_str(&format!("{tag}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Reads the Vault clients' request counters at scrape time.
#[derive(Debug)]
struct VaultRequests(Arc<Mutex<Vec<VaultClient>>>);

impl prometheus_client::collector::Collector for VaultRequests {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut totals = std::collections::BTreeMap::new();
        if let Ok(clients) = self.0.lock() {
            for c in clients.iter() {
                for ((op, status), n) in c.stats().snapshot() {
                    *totals.entry((op, status)).or_insert(0u64) += n;
                }
            }
        }
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "keysync_vault_requests",
            "Vault requests by operation and HTTP status (0 = no answer)",
            None,
            counter.metric_type(),
        )?;
        for ((op, status), n) in totals {
            let labels = VaultLabel { op: op.to_string(), status: status.to_string() };
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// `keysync_ready`, read at scrape time: a gauge set by the sync loop would stay 1 when the
/// loop hangs, but readiness ages out by itself (Vault not reached within three polls).
#[derive(Debug)]
struct Ready(Arc<Mutex<Option<Arc<Health>>>>);

impl prometheus_client::collector::Collector for Ready {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(health) = self.0.lock().ok().and_then(|h| h.clone()) else { return Ok(()) };
        let gauge = ConstGauge::new(i64::from(health.readiness().is_ok()));
        let metric = encoder.encode_descriptor(
            "keysync_ready",
            "1 when the agent is ready (logged in, first render done, Vault reached within three polls), as /readyz",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_metric_is_exported() {
        let m = Metrics::new();
        let key = KeyLabel { key: "k".into() };
        m.key_current_version.get_or_create(&key).set(1);
        m.key_age_seconds.get_or_create(&key).set(1.0);
        let sink = SinkLabel { sink: "/s".into() };
        let sr = SinkResultLabel { sink: "/s".into(), result: "written".into() };
        m.sink_render_total.get_or_create(&sr).inc();
        m.sink_last_success_timestamp_seconds.get_or_create(&sink).set(1.0);
        m.sink_key_missing_total.get_or_create(&sink).inc();
        m.hook_runs_total.get_or_create(&sr).inc();
        m.rotations_total.get_or_create(&KeyResultLabel { key: "k".into(), result: "ok".into() }).inc();
        m.key_next_rotation_timestamp_seconds.get_or_create(&key).set(1.0);
        m.key_rotation_overdue.get_or_create(&key).set(0);
        m.validation_failures_total.get_or_create(&KeyReasonLabel { key: "k".into(), reason: "invalid".into() }).inc();
        m.key_consumers.get_or_create(&KeyStateLabel { key: "k".into(), state: "current".into() }).set(1);
        m.retirement_held.get_or_create(&key).set(0);
        m.retirements_forced_total.get_or_create(&key).inc();
        m.key_expires_in_seconds.get_or_create(&key).set(60.0);
        m.track_health(Arc::new(Health::new(std::time::Duration::from_secs(10))));
        let text = m.encode();
        for name in METRIC_NAMES {
            let base = name.trim_end_matches("_total");
            assert!(text.contains(&format!("# TYPE {base} ")), "{name} missing:\n{text}");
        }
    }

    #[test]
    fn the_classic_text_format_names_counters_with_total_and_has_no_eof() {
        let m = Metrics::new();
        m.sync_failures_total.inc();
        m.token_ttl_seconds.set(5.0);
        let text = m.encode_prometheus_text();
        assert!(text.contains("# HELP keysync_sync_failures_total Sync passes"), "{text}");
        assert!(text.contains("# TYPE keysync_sync_failures_total counter\nkeysync_sync_failures_total 1\n"), "{text}");
        assert!(text.contains("# TYPE keysync_token_ttl_seconds gauge\nkeysync_token_ttl_seconds 5.0\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn ready_gauge_follows_readiness_at_scrape_time() {
        let m = Metrics::new();
        assert!(!m.encode().contains("keysync_ready"), "a process without an agent exports no readiness");
        let health = Arc::new(Health::new(std::time::Duration::from_secs(10)));
        m.track_health(health.clone());
        assert!(m.encode().contains("\nkeysync_ready 0\n"), "{}", m.encode());
        health.set_authenticated(true);
        health.set_first_render_done();
        health.sync_ok();
        assert!(m.encode().contains("\nkeysync_ready 1\n"), "{}", m.encode());
    }
}
