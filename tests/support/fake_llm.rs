//! Local stand-ins for the three API families keysync checks keys against, each answering
//! `GET …/models` the way the provider documents it (see the comment on
//! `keysync::provider::validate`'s `classify` for where each answer was checked):
//!
//! * OpenAI-compatible (OpenAI, DeepSeek, Qwen, Moonshot, Zhipu, Doubao, Mistral, Groq,
//!   OpenRouter, Together, Ollama): `Authorization: Bearer`; a bad key gets 401
//!   `{"error": {"type": "invalid_request_error", "code": "invalid_api_key", …}}`; rate
//!   limited: 429 with `Retry-After`.
//! * Anthropic: `x-api-key` plus a required `anthropic-version`; a bad key gets 401
//!   `{"type": "error", "error": {"type": "authentication_error", …}}`; rate limited: 429
//!   `rate_limit_error` with `retry-after`.
//! * Gemini: `x-goog-api-key` (or `?key=`); a bad key gets **400** `INVALID_ARGUMENT` with
//!   `details[].reason = "API_KEY_INVALID"`; rate limited: 429 `RESOURCE_EXHAUSTED` whose
//!   `RetryInfo.retryDelay` says when to come back (Google sends no `Retry-After`).
//!
//! Any path ending in `/models` is served, so each preset's own API root (`/v1`,
//! `/compatible-mode/v1`, `/api/paas/v4`, `/v1beta`, …) can be used as is. Every key presented
//! is registered with the leak check.
#![allow(dead_code)]

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Router;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    OpenaiCompatible,
    Anthropic,
    Gemini,
}

/// How the fake treats the keys it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Keys in `FakeLlm::valid` are accepted, all others refused.
    Known,
    /// Every key is accepted.
    AcceptAll,
    /// Every key is refused with the family's documented answer.
    RefuseAll,
    /// Every request is rate limited; the number is the seconds to wait.
    RateLimited(u64),
}

pub struct FakeLlm {
    pub family: Family,
    pub mode: Mode,
    pub valid: BTreeSet<String>,
    /// Paths of the requests served, in order.
    pub requests: Vec<String>,
    /// Anthropic only: key ids set inactive through the Admin API
    /// (`POST /v1/organizations/api_keys/{id}`, `{"status": "inactive"}`, admin key [`ANTHROPIC_ADMIN_KEY`]).
    pub deactivated: Vec<String>,
}

/// The Anthropic admin key the fake accepts.
pub const ANTHROPIC_ADMIN_KEY: &str = "sk-ant-admin01-test-0123456789abcdef";

pub type Shared = Arc<Mutex<FakeLlm>>;

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn json(status: StatusCode, headers: HeaderMap, body: serde_json::Value) -> (StatusCode, HeaderMap, String) {
    (status, headers, body.to_string())
}

fn with_retry_after(seconds: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", seconds.into());
    headers
}

async fn serve(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    h: HeaderMap,
    body: String,
) -> (StatusCode, HeaderMap, String) {
    let mut s = s.lock().unwrap();
    s.requests.push(uri.path().to_string());
    let family = s.family;
    if let (Family::Anthropic, Some(id)) = (family, uri.path().strip_prefix("/v1/organizations/api_keys/")) {
        if method != Method::POST {
            return not_found(family);
        }
        if header(&h, "x-api-key") != Some(ANTHROPIC_ADMIN_KEY) || header(&h, "anthropic-version").is_none() {
            return refused(family);
        }
        let status =
            serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["status"].as_str().map(String::from));
        if status.as_deref() != Some("inactive") {
            let body = serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "message": "status: must be active or inactive"}});
            return json(StatusCode::BAD_REQUEST, HeaderMap::new(), body);
        }
        s.deactivated.push(id.to_string());
        let body = serde_json::json!({"id": id, "type": "api_key", "name": "key", "status": "inactive"});
        return json(StatusCode::OK, HeaderMap::new(), body);
    }
    if method != Method::GET || !uri.path().ends_with("/models") {
        return not_found(family);
    }
    // The key, where each family carries it.
    let key = match family {
        Family::OpenaiCompatible => header(&h, "authorization").and_then(|v| v.strip_prefix("Bearer ")),
        Family::Anthropic => header(&h, "x-api-key"),
        Family::Gemini => header(&h, "x-goog-api-key")
            .or_else(|| uri.query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")))),
    }
    .map(str::to_string);
    if let Some(k) = &key {
        crate::support::leak::register(k);
    }
    if family == Family::Anthropic && header(&h, "anthropic-version").is_none() {
        let body = serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"}});
        return json(StatusCode::BAD_REQUEST, HeaderMap::new(), body);
    }
    if let Mode::RateLimited(seconds) = s.mode {
        return rate_limited(family, seconds);
    }
    let accepted = match (s.mode, &key) {
        (_, None) => false,
        (Mode::AcceptAll, Some(_)) => true,
        (Mode::Known, Some(k)) => s.valid.contains(k),
        _ => false,
    };
    if accepted {
        ok(family)
    } else {
        refused(family)
    }
}

fn ok(family: Family) -> (StatusCode, HeaderMap, String) {
    let body = match family {
        Family::OpenaiCompatible => serde_json::json!({"object": "list", "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}]}),
        Family::Anthropic => serde_json::json!({"data": [
            {"type": "model", "id": "claude-sonnet-4-20250514", "display_name": "Claude Sonnet 4", "created_at": "2025-05-22T00:00:00Z"}],
            "has_more": false, "first_id": "claude-sonnet-4-20250514", "last_id": "claude-sonnet-4-20250514"}),
        Family::Gemini => serde_json::json!({"models": [
            {"name": "models/gemini-2.0-flash", "version": "2.0", "displayName": "Gemini 2.0 Flash",
             "supportedGenerationMethods": ["generateContent", "countTokens"]}]}),
    };
    json(StatusCode::OK, HeaderMap::new(), body)
}

fn refused(family: Family) -> (StatusCode, HeaderMap, String) {
    match family {
        Family::OpenaiCompatible => json(
            StatusCode::UNAUTHORIZED,
            HeaderMap::new(),
            serde_json::json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
        ),
        Family::Anthropic => json(
            StatusCode::UNAUTHORIZED,
            HeaderMap::new(),
            serde_json::json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
        ),
        Family::Gemini => json(
            StatusCode::BAD_REQUEST,
            HeaderMap::new(),
            serde_json::json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                     "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                     "message": "API key not valid. Please pass a valid API key."}]}}),
        ),
    }
}

fn rate_limited(family: Family, seconds: u64) -> (StatusCode, HeaderMap, String) {
    match family {
        Family::OpenaiCompatible => json(
            StatusCode::TOO_MANY_REQUESTS,
            with_retry_after(seconds),
            serde_json::json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
        ),
        Family::Anthropic => json(
            StatusCode::TOO_MANY_REQUESTS,
            with_retry_after(seconds),
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit."}}),
        ),
        Family::Gemini => json(
            StatusCode::TOO_MANY_REQUESTS,
            HeaderMap::new(),
            serde_json::json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                "status": "RESOURCE_EXHAUSTED", "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{seconds}s")}]}}),
        ),
    }
}

fn not_found(family: Family) -> (StatusCode, HeaderMap, String) {
    let body = match family {
        Family::Anthropic => {
            serde_json::json!({"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})
        }
        Family::Gemini => serde_json::json!({"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}}),
        Family::OpenaiCompatible => {
            serde_json::json!({"error": {"message": "Not found", "type": "invalid_request_error", "param": null, "code": null}})
        }
    };
    json(StatusCode::NOT_FOUND, HeaderMap::new(), body)
}

/// Starts a fake of `family` on a free loopback port; returns `http://127.0.0.1:PORT` and its
/// state (mode `Known`, no valid keys yet).
pub async fn start(family: Family) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(FakeLlm {
        family,
        mode: Mode::Known,
        valid: BTreeSet::new(),
        requests: Vec::new(),
        deactivated: Vec::new(),
    }));
    let app = Router::new().fallback(serve).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}
