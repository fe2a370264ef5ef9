//! Liveness and readiness, and the HTTP endpoint that serves them with the metrics:
//! `/healthz` (the process is alive), `/readyz` (logged in, first render done, Vault reached
//! recently), `/metrics`.

use super::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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
}

impl Health {
    pub fn new(poll: Duration) -> Self {
        let h = Health::default();
        h.staleness_secs.store((poll.as_secs() as i64 * 3).max(3), Ordering::Relaxed);
        h
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

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
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
}
