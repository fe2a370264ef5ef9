//! The one way keysync talks HTTP to provider APIs: the admin APIs that mint and revoke keys
//! (OpenAI, Anthropic) and the LLM APIs that check a key ([`super::validate`]). Every such
//! request goes through [`send`], so they all get the same guarantees:
//!
//! * one client, built once, that never follows a redirect (a key or admin key is only ever
//!   sent to the configured host);
//! * a timeout per request (each provider's own setting);
//! * answers read chunk by chunk and refused past [`MAX_BODY`], so a broken or hostile
//!   endpoint cannot make the agent hold gigabytes;
//! * `Retry-After` read and honoured by [`with_retries`] (idempotent calls only: a create is
//!   never repeated, it could mint twice);
//! * failures said one way ([`Call::failed`], [`Call::status_error`]): the API, what keysync
//!   tried, the endpoint, the status and the fix; a refusal (401/403) is a provider error, never
//!   a config error; secrets sent with the request are cut out of anything the provider echoes.

use super::ProviderError;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

/// The most of an answer keysync reads. Real answers are a few KiB (a page of 100 service
/// accounts, a model list); anything bigger is refused rather than buffered.
pub const MAX_BODY: usize = 1024 * 1024;

/// The shared client. Idle connections are not kept: provider calls are a few per rotation,
/// and a pooled connection belongs to the tokio runtime that opened it, so a connection kept
/// from one runtime (a test, a CLI command) would be dead in the next one.
fn client() -> Result<&'static reqwest::Client, Failure> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Failure::Build(format!("cannot build the HTTP client: {e}")))
}

/// One request to a provider API, described well enough to say what went wrong.
pub struct Call<'a> {
    /// Who is called, for messages: `OpenAI Admin API`.
    pub api: &'a str,
    /// What keysync tried, as a verb phrase: `create a service account`.
    pub what: &'a str,
    pub method: Method,
    pub url: String,
    /// Headers to send; secret values are marked sensitive by [`Call::secret_header`] and cut
    /// out of error details.
    headers: Vec<(HeaderName, HeaderValue)>,
    secrets: Vec<String>,
    body: Option<Vec<u8>>,
    pub timeout: Duration,
    /// Read at most this much of the answer and stop there instead of refusing a bigger one
    /// (a key check reads only error bodies; a model list may be large).
    truncate_at: Option<usize>,
}

impl<'a> Call<'a> {
    pub fn new(api: &'a str, what: &'a str, method: Method, url: impl Into<String>, timeout: Duration) -> Self {
        Call {
            api,
            what,
            method,
            url: url.into(),
            headers: Vec::new(),
            secrets: Vec::new(),
            body: None,
            timeout: timeout.max(Duration::from_millis(1)),
            truncate_at: None,
        }
    }

    /// Keep only the first `limit` bytes of the answer (at most [`MAX_BODY`]) and drop the
    /// rest, instead of refusing an answer over [`MAX_BODY`].
    pub fn read_at_most(mut self, limit: usize) -> Self {
        self.truncate_at = Some(limit.min(MAX_BODY));
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A header carrying a credential (`prefix` + `secret`): marked sensitive, and the secret
    /// is cut out of anything the provider says back. A value no header may hold (a newline)
    /// is refused without sending anything.
    pub fn secret_header(mut self, name: HeaderName, prefix: &str, secret: &str) -> Result<Self, Failure> {
        let mut value = HeaderValue::from_str(&format!("{prefix}{secret}")).map_err(|_| {
            Failure::Build(format!("the credential for the {name} header contains characters not allowed in HTTP"))
        })?;
        value.set_sensitive(true);
        self.headers.push((name, value));
        if !secret.is_empty() {
            self.secrets.push(secret.to_string());
        }
        Ok(self)
    }

    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.headers.push((reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
        self.body = Some(body.to_string().into_bytes());
        self
    }

    /// The URL without its query string, for messages.
    pub fn endpoint(&self) -> String {
        let base = self.url.split('?').next().unwrap_or(&self.url);
        format!("{} {base}", self.method)
    }

    /// `text` with every secret sent by this call replaced, so an API echoing a credential back
    /// (in an error message) never puts it in a log.
    pub fn redact(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_string(), |t, s| t.replace(s.as_str(), "<redacted>"))
    }

    /// A request that did not get an answer. Nothing reached the provider (no connection, or
    /// a request that could not be built): [`ProviderError::ApiRefused`], nothing was done.
    /// Otherwise (timed out, cut off, too large) it may have acted:
    /// [`ProviderError::Api`].
    pub fn failed(&self, failure: Failure) -> ProviderError {
        let message = format!("{}: could not {}: {}", self.api, self.what, self.redact(&failure.describe()));
        if failure.reached_provider() {
            ProviderError::Api(message)
        } else {
            ProviderError::ApiRefused(message)
        }
    }

    /// An answer that is not what keysync asked for: the API said no (401/403: a refusal, its
    /// fix is the credential), is busy (429/5xx: try later, after `Retry-After`), or does not
    /// know the request (other 4xx: the URL or id is wrong). `detail` is what the API said, as
    /// the caller read it from the body (redacted here).
    pub fn status_error(&self, answer: &Answer, detail: &str) -> ProviderError {
        let status = answer.status;
        let fix = match status.as_u16() {
            401 => "the credential was refused: check that the admin key file holds a valid, unrevoked admin key".into(),
            403 => "the credential lacks permission for this: give the admin key access to this project or organization".into(),
            408 | 429 | 500..=599 => match answer.retry_after {
                Some(wait) => format!(
                    "the provider is busy or failing and asks to wait {}; keysync tries again at the next rotation check",
                    humantime::format_duration(wait)
                ),
                None => "the provider is busy or failing; keysync tries again at the next rotation check".into(),
            },
            _ => "check base_url and the ids in the config".into(),
        };
        let detail = self.redact(detail);
        let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
        ProviderError::ApiRefused(format!(
            "{}: could not {}: {} answered HTTP {status}{detail}; {fix}",
            self.api,
            self.what,
            self.endpoint()
        ))
    }
}

/// An answer, its body read (capped at [`MAX_BODY`]).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// `Retry-After`, when the API sent one keysync understands.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Answer {
    /// Whether asking again later may give another answer: 408, 429 and 5xx.
    pub fn is_busy(&self) -> bool {
        matches!(self.status.as_u16(), 408 | 429) || self.status.is_server_error()
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// The request could not be built or the client not made: nothing was sent.
    Build(String),
    /// No connection to the host: nothing was sent.
    Connect,
    /// Sent, but no complete answer within the timeout.
    Timeout(Duration),
    /// The answer was larger than [`MAX_BODY`].
    TooLarge,
    /// Sent, then the connection failed (reset, broken body).
    Transport(String),
}

impl Failure {
    /// Whether the request may have reached the provider (and so may have acted).
    pub fn reached_provider(&self) -> bool {
        !matches!(self, Failure::Build(_) | Failure::Connect)
    }

    pub fn describe(&self) -> String {
        match self {
            Failure::Build(why) => why.clone(),
            Failure::Connect => "cannot connect; check base_url and the network".into(),
            Failure::Timeout(t) => format!(
                "no answer within {} (timed out); retry later or raise the provider's timeout",
                humantime::format_duration(*t)
            ),
            Failure::TooLarge => format!(
                "the answer is larger than {MAX_BODY} bytes; refused (check base_url points at the provider's API)"
            ),
            Failure::Transport(why) => why.clone(),
        }
    }

    fn from_reqwest(e: reqwest::Error, timeout: Duration) -> Failure {
        if e.is_timeout() {
            Failure::Timeout(timeout)
        } else if e.is_connect() {
            Failure::Connect
        } else if e.is_builder() {
            Failure::Build(format!("invalid request: {}", e.without_url()))
        } else {
            Failure::Transport(e.without_url().to_string())
        }
    }
}

/// Sends `call` once with the shared client and reads the answer.
pub async fn send(call: &Call<'_>) -> Result<Answer, Failure> {
    let mut request = client()?.request(call.method.clone(), &call.url).timeout(call.timeout);
    for (name, value) in &call.headers {
        request = request.header(name.clone(), value.clone());
    }
    if let Some(body) = &call.body {
        request = request.body(body.clone());
    }
    let mut response = request.send().await.map_err(|e| Failure::from_reqwest(e, call.timeout))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Failure::from_reqwest(e, call.timeout))? {
        if let Some(limit) = call.truncate_at {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == limit {
                break; // the rest is not read: dropping the response closes the connection
            }
            continue;
        }
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Failure::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer { status, retry_after, body })
}

/// [`send`] for a request that is safe to repeat (a read, a delete): a busy answer (429,
/// 5xx) or a lost one is asked again per [`Retry::default`], never sooner than `Retry-After`.
/// The last answer or failure is returned as it is.
pub async fn send_idempotent(call: &Call<'_>) -> Result<Answer, Failure> {
    let retried = with_retries(Retry::default(), || async {
        match send(call).await {
            Ok(a) if a.is_busy() => {
                let wait = a.retry_after;
                Step::Again(Ok(a), wait)
            }
            Err(f) if f.reached_provider() && !matches!(f, Failure::TooLarge) => Step::Again(Err(f), None),
            other => Step::Done(other),
        }
    })
    .await;
    match retried {
        Retried::Done(r) => r,
        Retried::GaveUp { last, .. } => last,
    }
}

/// How often and how patiently to ask again.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// First backoff delay (doubled each time, with jitter).
    pub min_delay: Duration,
    /// Tries in all, the first included.
    pub max_tries: usize,
    /// A provider asking to wait longer than this gets no early retry: the caller's own
    /// schedule (the next rotation check) asks later.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { min_delay: Duration::from_millis(500), max_tries: 3, max_retry_after: Duration::from_secs(30) }
    }
}

/// What one attempt gave: a final answer, or one worth asking again (after the delay the
/// provider asked for, if any).
pub enum Step<D, A> {
    Done(D),
    Again(A, Option<Duration>),
}

/// Why [`with_retries`] stopped asking.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp {
    /// Every try was used.
    Tries(usize),
    /// The provider asked to wait longer than [`Retry::max_retry_after`].
    AskedToWait(Duration),
}

pub enum Retried<D, A> {
    Done(D),
    GaveUp { last: A, why: GaveUp },
}

/// Runs `attempt` until it is done, up to `retry.max_tries` times, waiting jittered
/// exponential backoff between tries and never less than the delay the provider asked for.
pub async fn with_retries<D, A, F, Fut>(retry: Retry, mut attempt: F) -> Retried<D, A>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Step<D, A>>,
{
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(retry.min_delay)
        .with_max_delay(retry.max_retry_after)
        .with_jitter()
        .with_max_times(retry.max_tries.saturating_sub(1))
        .build();
    loop {
        match attempt().await {
            Step::Done(d) => return Retried::Done(d),
            Step::Again(last, asked) => {
                // Asked to wait longer than a call may take: no early retry (it would only be
                // refused again); the caller's own schedule tries later.
                if let Some(wait) = asked.filter(|w| *w > retry.max_retry_after) {
                    return Retried::GaveUp { last, why: GaveUp::AskedToWait(wait) };
                }
                match backoff.next() {
                    None => return Retried::GaveUp { last, why: GaveUp::Tries(retry.max_tries) },
                    Some(delay) => tokio::time::sleep(asked.map_or(delay, |a| a.max(delay))).await,
                }
            }
        }
    }
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date (`Wed, 21 Oct 2015
/// 07:28:00 GMT`) counted from `now`; a date in the past means "now". Anything else: `None`,
/// and keysync's own backoff applies.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-connection-per-answer HTTP/1.1 server answering `(status, extra headers, body)`
    /// in order; returns its address and the number of requests served.
    async fn serve(answers: Vec<(u16, &'static str, String)>) -> (String, Arc<Mutex<usize>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(Mutex::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            for (status, headers, body) in answers {
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
                *count.lock().unwrap() += 1;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                // The client may hang up early (a refused large body).
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        (base, served)
    }

    fn call(base: &str) -> Call<'static> {
        Call::new("Test API", "list things", Method::GET, format!("{base}/v1/things?after=x"), Duration::from_secs(5))
            .secret_header(reqwest::header::AUTHORIZATION, "Bearer ", "sk-admin-SECRET")
            .unwrap()
    }

    #[tokio::test]
    async fn a_refusal_names_the_api_the_endpoint_the_status_and_the_fix_without_the_secret() {
        let body = r#"{"error":{"message":"key sk-admin-SECRET is revoked"}}"#.to_string();
        let (base, _) = serve(vec![(401, "", body)]).await;
        let c = call(&base);
        let answer = send(&c).await.unwrap();
        let detail = String::from_utf8_lossy(&answer.body).to_string();
        let err = c.status_error(&answer, &detail);
        let text = err.to_string();
        assert!(matches!(err, ProviderError::ApiRefused(_)), "a refusal is not a config error: {err:?}");
        assert!(text.starts_with("Test API: could not list things: GET "), "{text}");
        assert!(text.contains("/v1/things answered HTTP 401") && !text.contains("after=x"), "{text}");
        assert!(text.contains("admin key file"), "the fix: {text}");
        assert!(!text.contains("SECRET") && text.contains("<redacted>"), "{text}");
    }

    #[tokio::test]
    async fn answers_past_the_cap_are_refused() {
        let (base, _) = serve(vec![(200, "", "x".repeat(MAX_BODY + 1))]).await;
        let c = call(&base);
        let failure = send(&c).await.unwrap_err();
        assert!(matches!(failure, Failure::TooLarge), "{failure:?}");
        let err = c.failed(failure);
        assert!(matches!(&err, ProviderError::Api(m) if m.contains("larger than 1048576 bytes")), "{err:?}");
        let (base, _) = serve(vec![(200, "", "x".repeat(MAX_BODY))]).await;
        assert_eq!(send(&call(&base)).await.unwrap().body.len(), MAX_BODY, "exactly the cap is fine");
    }

    #[tokio::test]
    async fn idempotent_calls_wait_out_retry_after_then_succeed() {
        let (base, served) = serve(vec![(503, "Retry-After: 1\r\n", String::new()), (200, "", "{}".into())]).await;
        let start = std::time::Instant::now();
        let answer = send_idempotent(&call(&base)).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert!(start.elapsed() >= Duration::from_millis(950), "{:?}", start.elapsed());
        assert_eq!(*served.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_long_retry_after_is_not_waited_and_the_answer_says_when() {
        let (base, served) = serve(vec![(429, "Retry-After: 3600\r\n", String::new()), (200, "", "{}".into())]).await;
        let c = call(&base);
        let answer = send_idempotent(&c).await.unwrap();
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(*served.lock().unwrap(), 1);
        let text = c.status_error(&answer, "").to_string();
        assert!(text.contains("HTTP 429") && text.contains("asks to wait 1h"), "{text}");
    }

    #[tokio::test]
    async fn no_connection_means_nothing_was_sent() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let c = call(&base);
        let failure = send(&c).await.unwrap_err();
        assert!(!failure.reached_provider(), "{failure:?}");
        let err = c.failed(failure);
        assert!(matches!(&err, ProviderError::ApiRefused(m) if m.contains("cannot connect")), "{err:?}");
        assert!(err.nothing_minted());
    }

    #[test]
    fn a_credential_no_header_can_hold_is_refused_before_sending() {
        let r = Call::new("T", "x", Method::GET, "http://127.0.0.1:1", Duration::from_secs(1)).secret_header(
            reqwest::header::AUTHORIZATION,
            "Bearer ",
            "sk-line\nbreak",
        );
        let Err(failure) = r else { panic!("a newline in a header value must be refused") };
        assert!(!failure.reached_provider() && !failure.describe().contains("sk-line"), "{failure:?}");
    }

    #[test]
    fn retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 09:28:00 GMT", now), Some(Duration::from_secs(7200)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
