//! Liveness and readiness, and the HTTP endpoint that serves them with the metrics:
//! `/healthz` (the process is alive), `/readyz` (logged in, first render done, Vault reached
//! recently, no sink failing poll after poll), `/metrics`.

use super::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What readiness depends on; updated by the sync loop.
#[derive(Debug, Default)]
pub struct Health {
    authenticated: AtomicBool,
    first_render_done: AtomicBool,
    /// Unix seconds of the last sync that reached Vault.
    last_ok: AtomicI64,
    last_error: Mutex<Option<String>>,
    /// How old `last_ok` may be before the agent is not ready (about 3 polls).
    staleness_secs: AtomicI64,
    /// Sinks whose render failed, with how many passes in a row and the last error.
    failing_sinks: Mutex<BTreeMap<String, SinkFailure>>,
    /// After this many failed passes in a row a sink makes the agent unready; 0 = never
    /// (`agent.unready_after_sink_failures`).
    sink_failure_threshold: AtomicU32,
}

#[derive(Debug, Clone)]
struct SinkFailure {
    in_a_row: u32,
    reason: String,
}

impl Health {
    pub fn new(poll: Duration) -> Self {
        let h = Health::default();
        h.staleness_secs.store((poll.as_secs() as i64 * 3).max(3), Ordering::Relaxed);
        h.sink_failure_threshold.store(3, Ordering::Relaxed);
        h
    }

    /// `agent.unready_after_sink_failures`: failed passes in a row before a sink makes the
    /// agent unready (0 = sinks never do).
    pub fn set_sink_failure_threshold(&self, passes: u32) {
        self.sink_failure_threshold.store(passes, Ordering::Relaxed);
    }

    /// Records one pass that reached Vault: `failed` maps each sink that failed to its error;
    /// every other sink rendered (or had nothing to do) and starts counting from zero again.
    pub fn sinks_rendered(&self, failed: &BTreeMap<String, String>) {
        let Ok(mut failing) = self.failing_sinks.lock() else { return };
        failing.retain(|sink, _| failed.contains_key(sink));
        for (sink, reason) in failed {
            let entry = failing.entry(sink.clone()).or_insert(SinkFailure { in_a_row: 0, reason: String::new() });
            entry.in_a_row = entry.in_a_row.saturating_add(1);
            entry.reason.clone_from(reason);
        }
    }

    pub fn set_authenticated(&self, v: bool) {
        self.authenticated.store(v, Ordering::Relaxed);
    }

    pub fn set_first_render_done(&self) {
        self.first_render_done.store(true, Ordering::Relaxed);
    }

    pub fn sync_ok(&self) {
        self.last_ok.store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    pub fn sync_failed(&self, error: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.to_string());
        }
    }

    /// `Ok(())` when ready, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.authenticated.load(Ordering::Relaxed) {
            return Err("not logged in to Vault yet".into());
        }
        if !self.first_render_done.load(Ordering::Relaxed) {
            return Err("first render not done yet".into());
        }
        let age = chrono::Utc::now().timestamp() - self.last_ok.load(Ordering::Relaxed);
        if age > self.staleness_secs.load(Ordering::Relaxed) {
            let why =
                self.last_error.lock().ok().and_then(|e| e.clone()).unwrap_or_else(|| "no successful sync".into());
            return Err(format!("no successful sync with Vault for {age}s: {why}"));
        }
        let threshold = self.sink_failure_threshold.load(Ordering::Relaxed);
        if threshold > 0 {
            let failing = self.failing_sinks.lock().map(|f| f.clone()).unwrap_or_default();
            let broken: Vec<String> = failing
                .iter()
                .filter(|(_, f)| f.in_a_row >= threshold)
                .map(|(sink, f)| {
                    // Render errors start with the sink already; say it once.
                    let reason = f.reason.strip_prefix(&format!("sink {sink}: ")).unwrap_or(&f.reason);
                    format!("sink {sink} failed {} passes in a row: {reason}", f.in_a_row)
                })
                .collect();
            if !broken.is_empty() {
                return Err(broken.join("; "));
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { health, metrics });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the classic text format
/// otherwise (`curl`, `promtool check metrics`).
async fn metrics_handler(State(state): State<AppState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.encode_prometheus_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_login_render_and_a_recent_sync() {
        let h = Health::new(Duration::from_secs(10));
        assert!(h.readiness().unwrap_err().contains("logged in"));
        h.set_authenticated(true);
        assert!(h.readiness().unwrap_err().contains("first render"));
        h.set_first_render_done();
        h.sync_failed("connection refused");
        assert!(h.readiness().unwrap_err().contains("connection refused"));
        h.sync_ok();
        assert!(h.readiness().is_ok());
    }

    #[test]
    fn a_sink_failing_pass_after_pass_makes_the_agent_unready_until_it_renders() {
        let h = Health::new(Duration::from_secs(10));
        h.set_authenticated(true);
        h.set_first_render_done();
        h.sync_ok();
        h.set_sink_failure_threshold(2);
        let failed = BTreeMap::from([("/run/keys/a".to_string(), "Is a directory (os error 21)".to_string())]);
        h.sinks_rendered(&failed);
        assert!(h.readiness().is_ok(), "one failed pass is tolerated");
        h.sinks_rendered(&failed);
        let why = h.readiness().unwrap_err();
        assert!(why.contains("sink /run/keys/a failed 2 passes in a row: Is a directory"), "{why}");
        h.sinks_rendered(&BTreeMap::new());
        assert!(h.readiness().is_ok(), "a sink that renders again is forgiven at once");
        // The count is of passes in a row: a success in between starts it over.
        h.sinks_rendered(&failed);
        assert!(h.readiness().is_ok());
        // 0 turns the check off.
        h.sinks_rendered(&failed);
        h.set_sink_failure_threshold(0);
        assert!(h.readiness().is_ok());
    }
}
