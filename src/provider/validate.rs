//! Checking a freshly minted key against the LLM provider before it is promoted: one cheap
//! authenticated GET (usually `/models`). The answer is three-valued because "the provider is
//! down" must never be mistaken for "the key is bad" (or worse, "the key is good").

use super::http::{self, Call, Failure, GaveUp, Retried, Retry, Step};
use crate::duration::HumanDuration;
use crate::secret::Secret;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Providers whose key-check request keysync knows. All but `anthropic`, `gemini` and `custom`
/// speak the OpenAI-compatible API: `GET {base_url}/models` with `Authorization: Bearer <key>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Openai,
    Deepseek,
    Qwen,
    Moonshot,
    Zhipu,
    Doubao,
    Mistral,
    Groq,
    Openrouter,
    Together,
    Ollama,
    /// `GET /models` with `x-api-key` and `anthropic-version: 2023-06-01`.
    Anthropic,
    /// `GET /models` with `x-goog-api-key`.
    Gemini,
    /// Everything given explicitly: `method`, `url`, `header`, `prefix`, `expect`.
    Custom,
}

/// Which provider API a preset speaks: how the key is sent and what a refusal looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// `Authorization: Bearer`, refusal = 401 (403 for a key without access).
    OpenaiCompatible,
    /// `x-api-key`, refusal = 401 `authentication_error` (403 `permission_error`).
    Anthropic,
    /// `x-goog-api-key`, refusal = 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID`
    /// (403 `PERMISSION_DENIED` for a key without access).
    Gemini,
    /// Whatever the operator configured; refusal = 401/403.
    Custom,
}

impl Preset {
    /// Every preset, in the order the config reference lists them.
    pub const ALL: [Preset; 14] = [
        Preset::Openai,
        Preset::Deepseek,
        Preset::Qwen,
        Preset::Moonshot,
        Preset::Zhipu,
        Preset::Doubao,
        Preset::Mistral,
        Preset::Groq,
        Preset::Openrouter,
        Preset::Together,
        Preset::Ollama,
        Preset::Anthropic,
        Preset::Gemini,
        Preset::Custom,
    ];

    /// `openai, deepseek, …, custom`: the values `preset` accepts, for error messages (derived
    /// from the type, so a new preset is listed without touching the message).
    pub fn choices() -> String {
        Preset::ALL
            .iter()
            .filter_map(|p| serde_json::to_value(p).ok())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn family(self) -> Family {
        match self {
            Preset::Anthropic => Family::Anthropic,
            Preset::Gemini => Family::Gemini,
            Preset::Custom => Family::Custom,
            _ => Family::OpenaiCompatible,
        }
    }

    /// The provider's public API root; `None` for `custom`.
    pub fn default_base_url(self) -> Option<&'static str> {
        Some(match self {
            Preset::Openai => "https://api.openai.com/v1",
            Preset::Deepseek => "https://api.deepseek.com/v1",
            Preset::Qwen => "https://dashscope.aliyuncs.com/compatible-mode/v1",
            Preset::Moonshot => "https://api.moonshot.cn/v1",
            Preset::Zhipu => "https://open.bigmodel.cn/api/paas/v4",
            Preset::Doubao => "https://ark.cn-beijing.volces.com/api/v3",
            Preset::Mistral => "https://api.mistral.ai/v1",
            Preset::Groq => "https://api.groq.com/openai/v1",
            Preset::Openrouter => "https://openrouter.ai/api/v1",
            Preset::Together => "https://api.together.xyz/v1",
            Preset::Ollama => "http://127.0.0.1:11434/v1",
            Preset::Anthropic => "https://api.anthropic.com/v1",
            Preset::Gemini => "https://generativelanguage.googleapis.com/v1beta",
            Preset::Custom => return None,
        })
    }
}

/// `[keys.NAME.validation]`: how to check a key before promoting it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Validation {
    pub preset: Preset,
    /// Replaces the preset's API root (proxies, regional endpoints, self-hosted gateways).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// `custom` only: HTTP method, default GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `custom` only: the full URL to call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `custom` only: header carrying the key, default `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `custom` only: text before the key in the header; default `"Bearer "` for
    /// `Authorization`, `""` for any other header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `custom` only: the status meaning "valid", default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<u16>,
    /// Per-request timeout, default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

impl Validation {
    /// A preset with its default URL, for code and tests.
    pub fn preset(preset: Preset) -> Self {
        Validation {
            preset,
            base_url: None,
            method: None,
            url: None,
            header: None,
            prefix: None,
            expect: None,
            timeout: None,
        }
    }
}

/// The outcome of a key check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The provider accepted the key: safe to promote.
    Valid,
    /// The provider rejected the key (401/403, or Gemini's 400 `API_KEY_INVALID`): never
    /// promote it.
    Invalid(String),
    /// No answer either way (429, 5xx, timeouts, network errors after retries, odd statuses):
    /// keep the current key and try again later.
    Undecided(String),
}

/// The request a [`Validation`] boils down to.
struct Plan {
    method: Method,
    url: String,
    header: HeaderName,
    prefix: String,
    extra: Vec<(HeaderName, HeaderValue)>,
    expect: Option<StatusCode>,
    family: Family,
}

impl Validation {
    /// Checks the settings (custom fields only with `custom`, parsable URL, method and header),
    /// so a typo shows up at config load instead of as an undecided rotation.
    pub fn check(&self) -> Result<(), String> {
        self.plan().map(|_| ())
    }

    fn plan(&self) -> Result<Plan, String> {
        let custom_fields = self.method.is_some()
            || self.url.is_some()
            || self.header.is_some()
            || self.prefix.is_some()
            || self.expect.is_some();
        let plan = match self.preset.default_base_url() {
            Some(default) => {
                if custom_fields {
                    return Err(
                        "validation: `method`, `url`, `header`, `prefix` and `expect` need preset = \"custom\"".into(),
                    );
                }
                let base = self.base_url.as_deref().unwrap_or(default).trim_end_matches('/');
                let url = format!("{base}/models");
                let (header, prefix, extra) = match self.preset {
                    Preset::Anthropic => (
                        HeaderName::from_static("x-api-key"),
                        String::new(),
                        vec![(HeaderName::from_static("anthropic-version"), HeaderValue::from_static("2023-06-01"))],
                    ),
                    Preset::Gemini => (HeaderName::from_static("x-goog-api-key"), String::new(), Vec::new()),
                    _ => (AUTHORIZATION, "Bearer ".to_string(), Vec::new()),
                };
                Plan { method: Method::GET, url, header, prefix, extra, expect: None, family: self.preset.family() }
            }
            None => {
                if self.base_url.is_some() {
                    return Err("validation: preset \"custom\" takes `url`, not `base_url`".into());
                }
                let url = self.url.clone().ok_or("validation: preset \"custom\" needs `url`")?;
                let method = match self.method.as_deref() {
                    None => Method::GET,
                    Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("validation: invalid HTTP method {m:?}"))?,
                };
                let header = match self.header.as_deref() {
                    None => AUTHORIZATION,
                    Some(h) => HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("validation: invalid header name {h:?}"))?,
                };
                let prefix = self.prefix.clone().unwrap_or_else(|| {
                    if header == AUTHORIZATION {
                        "Bearer ".into()
                    } else {
                        String::new()
                    }
                });
                let expect = match self.expect {
                    None => StatusCode::OK,
                    Some(code) => StatusCode::from_u16(code)
                        .map_err(|_| format!("validation: `expect` {code} is not an HTTP status"))?,
                };
                Plan { method, url, header, prefix, extra: Vec::new(), expect: Some(expect), family: Family::Custom }
            }
        };
        let parsed = url::Url::parse(&plan.url).map_err(|e| format!("validation: invalid URL {:?}: {e}", plan.url))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("validation: URL {:?} must be http or https", plan.url));
        }
        Ok(plan)
    }

    /// Calls the provider with `key`. Retries 429, 408, 5xx, timeouts and network errors up to
    /// 3 tries with jittered exponential backoff, never sooner than `Retry-After` (or Gemini's
    /// `retryDelay`); a provider asking for more than 30 s gets no early retry: the answer is
    /// undecided right away and the rotation tries again later. Never follows redirects, so
    /// the key is only ever sent to the configured host.
    pub async fn validate(&self, key: &Secret) -> Verdict {
        self.validate_with(key, Retry::default()).await
    }

    async fn validate_with(&self, key: &Secret, retry: Retry) -> Verdict {
        let plan = match self.plan() {
            Ok(p) => p,
            Err(e) => return Verdict::Undecided(e),
        };
        let timeout = self.timeout.map_or(Duration::from_secs(10), HumanDuration::get);
        let mut call = Call::new("key check", "check the key", plan.method.clone(), plan.url.clone(), timeout)
            .read_at_most(MAX_REFUSAL);
        for (name, value) in &plan.extra {
            call = call.header(name.clone(), value.clone());
        }
        let call = match call.secret_header(plan.header.clone(), &plan.prefix, key.expose()) {
            Ok(c) => c,
            Err(_) => return Verdict::Invalid("the key contains characters not allowed in an HTTP header".into()),
        };
        match http::with_retries(retry, || attempt(&call, &plan)).await {
            Retried::Done(verdict) => verdict,
            Retried::GaveUp { last: reason, why: GaveUp::Tries(n) } => {
                Verdict::Undecided(format!("{reason} (after {n} tries)"))
            }
            Retried::GaveUp { last: reason, why: GaveUp::AskedToWait(wait) } => Verdict::Undecided(format!(
                "{reason}; the provider asks to wait {} before retrying",
                humantime::format_duration(wait)
            )),
        }
    }
}

/// One request: a verdict, or a reason to ask again (after the provider's delay).
async fn attempt(call: &Call<'_>, plan: &Plan) -> Step<Verdict, String> {
    let answer = match http::send(call).await {
        Ok(a) => a,
        Err(Failure::Build(why)) => return Step::Done(Verdict::Undecided(format!("invalid request: {why}"))),
        Err(failure) => {
            let kind = if matches!(failure, Failure::Timeout(_)) { "timed out" } else { "request failed" };
            return Step::Again(format!("{} {}: {}", plan.method, kind, call.redact(&failure.describe())), None);
        }
    };
    let status = answer.status;
    let valid = match plan.expect {
        Some(expect) => status == expect,
        None => status.is_success(),
    };
    if valid {
        return Step::Done(Verdict::Valid);
    }
    let refusal = Refusal::parse(&answer.body);
    let detail = refusal.describe();
    match classify(plan.family, status, &refusal) {
        Class::Invalid => Step::Done(Verdict::Invalid(format!("{} rejected the key with {status}{detail}", plan.url))),
        Class::Retry => {
            Step::Again(format!("{} answered {status}{detail}", plan.url), answer.retry_after.or(refusal.retry_delay))
        }
        Class::Undecided => {
            Step::Done(Verdict::Undecided(format!("{} answered unexpected status {status}{detail}", plan.url)))
        }
    }
}

/// What an answer other than "valid" means.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    /// The provider refused the key itself.
    Invalid,
    /// Busy, rate limited or failing: ask again (after `Retry-After`).
    Retry,
    /// Neither: most likely a wrong `base_url` or a request keysync got wrong.
    Undecided,
}

/// Each family's documented refusal (checked 2026-12; the pages are the providers' own):
///
/// * OpenAI: 401 "Invalid Authentication" / "Incorrect API key provided" (`invalid_api_key`),
///   403 for a country or project without access, 429 rate limit or quota, 500/503
///   (developers.openai.com/docs/guides/error-codes).
/// * DeepSeek: 401 "Authentication Fails", 402 insufficient balance, 429 rate limit, 500, 503
///   overloaded (api-docs.deepseek.com/quick_start/error_codes).
/// * Qwen (DashScope compatible mode): 401 `InvalidApiKey` "Invalid API-key provided", 403
///   access denied, 429 throttling (alibabacloud.com/help/en/model-studio/error-code).
/// * Moonshot (Kimi): 401 invalid authentication, 403 insufficient balance, 429, 500
///   (kimi.com/help/kimi-api/api-error-codes).
/// * Zhipu (GLM, z.ai / bigmodel.cn): HTTP 401 with business codes 1000–1004 for a bad or
///   expired key; 429 for concurrency, balance and locked accounts (docs.z.ai/api-reference/api-code).
/// * Doubao (Volcengine Ark): 401 `AuthenticationError` for a missing or wrong key (Ark API
///   reference, error codes).
/// * Mistral: 401 missing/invalid/expired key, 403 no access to the model, 429
///   (docs.mistral.ai/resources/error-glossary). Groq: 401, 403, 429 with `retry-after`
///   (console.groq.com/docs/errors). OpenRouter: 401 invalid or revoked key
///   (openrouter.ai/docs, errors). Together: not checked; it claims OpenAI compatibility.
///   Ollama ignores the key (no auth): its check only proves the server answers.
/// * Anthropic: `{"type":"error","error":{"type":…}}` with 401 `authentication_error`, 403
///   `permission_error`, 429 `rate_limit_error` (with `retry-after`), 500 `api_error`, 529
///   `overloaded_error` (docs.claude.com/en/api/errors).
/// * Gemini: a bad key is **400** `INVALID_ARGUMENT` with `details[].reason =
///   "API_KEY_INVALID"` ("API key not valid. Please pass a valid API key."), not 401; 403
///   `PERMISSION_DENIED` for a key without access; 429 `RESOURCE_EXHAUSTED`, whose
///   `RetryInfo.retryDelay` stands in for `Retry-After`; 500/503
///   (ai.google.dev/gemini-api/docs/troubleshooting). `API_KEY_EXPIRED` is the same answer
///   for an expired key (seen in Google's answers, not in that table).
///
/// So: 401 and 403 refuse the key everywhere; Gemini's 400 does only with its key reason
/// (any other 400 is a malformed request: undecided, never "the key is bad"); 408, 429 and
/// 5xx (529 included) are retried; anything else is undecided.
fn classify(family: Family, status: StatusCode, refusal: &Refusal) -> Class {
    match status.as_u16() {
        401 | 403 => Class::Invalid,
        400 if family == Family::Gemini && refusal.has_code(&["API_KEY_INVALID", "API_KEY_EXPIRED"]) => Class::Invalid,
        408 | 429 => Class::Retry,
        s if s >= 500 => Class::Retry,
        _ => Class::Undecided,
    }
}

/// The most of a refusal keysync reads: error bodies are a few hundred bytes.
const MAX_REFUSAL: usize = 16 * 1024;

/// The machine-readable parts of an error body: type, code, status and reason words (never
/// the message, which some providers fill with part of the key), and Gemini's retry delay.
#[derive(Debug, Default)]
struct Refusal {
    codes: Vec<String>,
    retry_delay: Option<Duration>,
}

impl Refusal {
    /// Reads `{"error": {"type", "code", "status", "details": [{"reason", "retryDelay"}]}}`
    /// (OpenAI-compatible, Anthropic and Google shapes) and a top-level `type`/`code`
    /// (Mistral). Anything else gives an empty refusal.
    fn parse(body: &[u8]) -> Refusal {
        let mut refusal = Refusal::default();
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return refusal };
        let error = value.get("error").filter(|e| e.is_object());
        let mut words: Vec<&serde_json::Value> = Vec::new();
        if let Some(e) = error {
            words.extend(["type", "code", "status"].iter().filter_map(|k| e.get(*k)));
            for detail in e.get("details").and_then(|d| d.as_array()).into_iter().flatten() {
                words.extend(detail.get("reason"));
                if let Some(delay) = detail.get("retryDelay").and_then(|d| d.as_str()) {
                    refusal.retry_delay = parse_google_duration(delay);
                }
            }
        } else {
            words.extend(["type", "code"].iter().filter_map(|k| value.get(*k)));
        }
        for word in words {
            // Numbers (Google's `code`) only repeat the HTTP status.
            let serde_json::Value::String(text) = word else { continue };
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if !text.is_empty() && text.len() <= 64 && text.chars().all(plain) && !refusal.codes.contains(text) {
                refusal.codes.push(text.clone());
            }
        }
        refusal
    }

    fn has_code(&self, any_of: &[&str]) -> bool {
        self.codes.iter().any(|c| any_of.contains(&c.as_str()))
    }

    /// ` (authentication_error)`, or nothing when the body said nothing usable.
    fn describe(&self) -> String {
        if self.codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.codes.join(", "))
        }
    }
}

/// Google's `google.protobuf.Duration` JSON form: `"37s"`, `"1.5s"`.
fn parse_google_duration(text: &str) -> Option<Duration> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    (0.0..1e9).contains(&seconds).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::http::parse_retry_after;
    use chrono::{DateTime, Utc};
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A one-connection-per-response HTTP/1.1 server answering `(status, extra header lines)`
    /// in order, recording each request head (lowercased).
    async fn serve(responses: Vec<(u16, &'static str)>) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            for (status, headers) in responses {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                record.lock().unwrap().push(String::from_utf8_lossy(&head).to_lowercase());
                let reply =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n{headers}\r\n{{}}");
                conn.write_all(reply.as_bytes()).await.unwrap();
                conn.shutdown().await.unwrap();
            }
        });
        (base, seen)
    }

    fn fast() -> Retry {
        Retry { min_delay: Duration::from_millis(10), ..Retry::default() }
    }

    fn openai_at(base: &str) -> Validation {
        Validation { base_url: Some(base.to_string()), ..Validation::preset(Preset::Openai) }
    }

    fn key() -> Secret {
        Secret::new("sk-test-0123456789abcdef")
    }

    #[tokio::test]
    async fn ok_sends_bearer_to_models() {
        let (base, seen) = serve(vec![(200, "")]).await;
        assert_eq!(openai_at(&base).validate_with(&key(), fast()).await, Verdict::Valid);
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("get /models http/1.1"), "{}", seen[0]);
        assert!(seen[0].contains("authorization: bearer sk-test-0123456789abcdef"), "{}", seen[0]);
    }

    #[tokio::test]
    async fn unauthorized_is_invalid_without_retry() {
        let (base, seen) = serve(vec![(401, ""), (200, "")]).await;
        let verdict = openai_at(&base).validate_with(&key(), fast()).await;
        assert!(
            matches!(verdict, Verdict::Invalid(ref m) if m.contains("401") && !m.contains("sk-test")),
            "{verdict:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn honours_retry_after_then_valid() {
        let (base, seen) = serve(vec![(429, "Retry-After: 1\r\n"), (200, "")]).await;
        let start = std::time::Instant::now();
        assert_eq!(openai_at(&base).validate_with(&key(), fast()).await, Verdict::Valid);
        assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn server_errors_three_times_are_undecided() {
        let (base, seen) = serve(vec![(500, ""), (502, ""), (503, ""), (200, "")]).await;
        let verdict = openai_at(&base).validate_with(&key(), fast()).await;
        assert!(
            matches!(verdict, Verdict::Undecided(ref m) if m.contains("503") && m.contains("3 tries")),
            "{verdict:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn unexpected_status_is_undecided() {
        let (base, _) = serve(vec![(404, "")]).await;
        assert!(matches!(openai_at(&base).validate_with(&key(), fast()).await, Verdict::Undecided(_)));
    }

    #[tokio::test]
    async fn network_errors_are_undecided() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let verdict = openai_at(&base).validate_with(&key(), fast()).await;
        assert!(matches!(verdict, Verdict::Undecided(_)), "{verdict:?}");
    }

    #[tokio::test]
    async fn anthropic_and_gemini_headers() {
        let (base, seen) = serve(vec![(200, "")]).await;
        let v = Validation { base_url: Some(base), ..Validation::preset(Preset::Anthropic) };
        assert_eq!(v.validate_with(&key(), fast()).await, Verdict::Valid);
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("get /models "), "{head}");
        assert!(head.contains("x-api-key: sk-test-0123456789abcdef"), "{head}");
        assert!(head.contains("anthropic-version: 2023-06-01"), "{head}");
        assert!(!head.contains("authorization:"), "{head}");

        let (base, seen) = serve(vec![(200, "")]).await;
        let v = Validation { base_url: Some(base), ..Validation::preset(Preset::Gemini) };
        assert_eq!(v.validate_with(&key(), fast()).await, Verdict::Valid);
        assert!(seen.lock().unwrap()[0].contains("x-goog-api-key: sk-test-0123456789abcdef"));
    }

    #[tokio::test]
    async fn custom_method_header_and_expected_status() {
        let (base, seen) = serve(vec![(204, "")]).await;
        let v = Validation {
            method: Some("post".into()),
            url: Some(format!("{base}/v2/check")),
            header: Some("X-Key".into()),
            expect: Some(204),
            ..Validation::preset(Preset::Custom)
        };
        assert_eq!(v.validate_with(&key(), fast()).await, Verdict::Valid);
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("post /v2/check "), "{head}");
        assert!(head.contains("x-key: sk-test-0123456789abcdef"), "{head}");
    }

    #[test]
    fn each_family_reads_its_documented_refusal() {
        let gemini_bad = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        let r = Refusal::parse(gemini_bad);
        assert_eq!(r.codes, ["INVALID_ARGUMENT", "API_KEY_INVALID"]);
        assert_eq!(classify(Family::Gemini, StatusCode::BAD_REQUEST, &r), Class::Invalid);
        // The same 400 from an OpenAI-compatible API, or a Gemini 400 about the request, is
        // not a verdict on the key.
        assert_eq!(classify(Family::OpenaiCompatible, StatusCode::BAD_REQUEST, &r), Class::Undecided);
        let malformed = Refusal::parse(br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"x"}}"#);
        assert_eq!(classify(Family::Gemini, StatusCode::BAD_REQUEST, &malformed), Class::Undecided);

        let anthropic = Refusal::parse(
            br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        );
        assert_eq!(anthropic.describe(), " (authentication_error)");
        assert_eq!(classify(Family::Anthropic, StatusCode::UNAUTHORIZED, &anthropic), Class::Invalid);
        let overloaded =
            Refusal::parse(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert_eq!(classify(Family::Anthropic, StatusCode::from_u16(529).unwrap(), &overloaded), Class::Retry);

        // OpenAI's message quotes part of the key: only type and code are kept.
        let openai = Refusal::parse(
            br#"{"error":{"message":"Incorrect API key provided: sk-abc***wxyz.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert_eq!(openai.describe(), " (invalid_request_error, invalid_api_key)");
        assert_eq!(classify(Family::OpenaiCompatible, StatusCode::UNAUTHORIZED, &openai), Class::Invalid);
        assert_eq!(classify(Family::OpenaiCompatible, StatusCode::FORBIDDEN, &Refusal::default()), Class::Invalid);
        assert_eq!(classify(Family::OpenaiCompatible, StatusCode::TOO_MANY_REQUESTS, &openai), Class::Retry);
        assert_eq!(classify(Family::Custom, StatusCode::SERVICE_UNAVAILABLE, &openai), Class::Retry);
        assert_eq!(classify(Family::Custom, StatusCode::NOT_FOUND, &openai), Class::Undecided);

        let limited = Refusal::parse(
            br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}"#,
        );
        assert_eq!(limited.retry_delay, Some(Duration::from_secs(37)));
        assert_eq!(parse_google_duration("1.5s"), Some(Duration::from_millis(1500)));
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 09:28:00 GMT", now), Some(Duration::from_secs(7200)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_google_duration("-1s"), None);
        assert_eq!(parse_google_duration("soon"), None);
        // Odd bodies give nothing, and words that are not plain identifiers are dropped.
        assert!(Refusal::parse(b"<html>bad gateway</html>").codes.is_empty());
        assert!(Refusal::parse(br#"{"error":{"type":"has spaces and sk-secret"}}"#).codes.is_empty());
        assert_eq!(
            Refusal::parse(br#"{"object":"error","type":"invalid_request_error","code":"unknown_model"}"#).codes.len(),
            2
        );
    }

    #[tokio::test]
    async fn a_long_retry_after_is_not_retried_early() {
        let (base, seen) = serve(vec![(429, "Retry-After: 3600\r\n"), (200, "")]).await;
        let verdict = openai_at(&base).validate_with(&key(), fast()).await;
        assert!(matches!(verdict, Verdict::Undecided(ref m) if m.contains("429") && m.contains("1h")), "{verdict:?}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn every_preset_is_listed() {
        // serde lists every variant for an unknown one: ALL must hold the same, in order.
        let err = serde_json::from_str::<Preset>("\"zz\"").unwrap_err().to_string();
        let serde_list: Vec<&str> = err.split('`').skip(3).step_by(2).collect();
        assert_eq!(Preset::choices(), serde_list.join(", "), "{err}");
        assert!(Preset::choices().starts_with("openai, deepseek") && Preset::choices().ends_with("gemini, custom"));
    }

    #[test]
    fn config_checks() {
        assert!(Validation::preset(Preset::Custom).check().unwrap_err().contains("needs `url`"));
        let stray = Validation { url: Some("https://x".into()), ..Validation::preset(Preset::Openai) };
        assert!(stray.check().unwrap_err().contains("custom"));
        let bad_url = Validation { base_url: Some("ftp://x".into()), ..Validation::preset(Preset::Openai) };
        assert!(bad_url.check().is_err());
        let v: Validation = toml::from_str("preset = \"deepseek\"").unwrap();
        assert_eq!(v.check(), Ok(()));
        assert!(toml::from_str::<Validation>("preset = \"openai\"\nbase = \"x\"").is_err());
        assert_eq!(Preset::Groq.default_base_url(), Some("https://api.groq.com/openai/v1"));
        assert_eq!(Preset::Ollama.default_base_url(), Some("http://127.0.0.1:11434/v1"));
    }
}
