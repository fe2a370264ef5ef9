//! Every secret the test world knows, and a check of every keysync process's output against
//! all of them.
//!
//! The registry is process-global (one per test binary): `Admin` calls add the tokens,
//! secret_ids, wrapping tokens and API keys they send or receive, the `Cli` runner adds the
//! keys it feeds to `put`/`import`, and tests add what they mint themselves with [`register`].
//! `Cli` runs and `Agent` processes run at trace level, and their whole output is checked with
//! [`check`] when a run finishes or an agent is dropped. Totals (processes, bytes, secrets)
//! go to the reliability report as `leak_check` lines that `scripts/reliability` adds up.

use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Mutex;

static SECRETS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// JSON fields whose string values are secrets wherever they appear in a request or response.
const SECRET_FIELDS: &[&str] =
    &["api_key", "admin_key", "client_token", "secret_id", "token", "jwt", "password", "root_token"];

/// Shortest value worth registering: masks show at most 8 characters, so a 9-character run
/// is the smallest thing that proves a leak.
const WINDOW: usize = 9;

/// Adds a secret. Values shorter than 9 characters are ignored: they cannot be told apart from
/// ordinary text (and no real token or API key is that short).
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.chars().count() >= WINDOW {
        SECRETS.lock().unwrap_or_else(|e| e.into_inner()).insert(secret.to_string());
    }
}

/// Registers the string values of secret-named fields anywhere in `value`.
pub fn register_json(value: &Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if SECRET_FIELDS.contains(&k.as_str()) {
                    if let Value::String(s) = v {
                        register(s);
                    }
                }
                register_json(v);
            }
        }
        Value::Array(items) => items.iter().for_each(register_json),
        _ => {}
    }
}

/// Registers the keys of a `keysync import` file: JSON (`{"name": "key"}` or
/// `{"name": {"api_key": …}}`) or `.env` lines.
pub fn register_import_file(text: &str) {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
        for v in map.values() {
            match v {
                Value::String(s) => register(s),
                other => register_json(other),
            }
        }
        return;
    }
    for line in text.lines() {
        if let Some((_, v)) = line.split_once('=') {
            register(v.trim().trim_matches(|c| c == '"' || c == '\''));
        }
    }
}

/// How many secrets are registered.
pub fn count() -> usize {
    SECRETS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// A window is checked only when it carries some entropy: a run like `000000000` or `aaaaaaaaa`
/// inside a test key would otherwise match timestamps and padding.
fn distinctive(window: &[char]) -> bool {
    let distinct: BTreeSet<&char> = window.iter().collect();
    distinct.len() >= 4
}

/// Asserts that no 9-character run of any registered secret appears in `text` (`what` names
/// the output for the failure message), and counts the check for the report.
pub fn check(text: &str, what: &str) {
    let secrets: Vec<String> = SECRETS.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
    // Every distinctive 9-character window of every secret, then one pass over the text's
    // windows: linear in text and secrets, where searching the text once per window made a
    // check of a 2,000-key import's trace log take minutes.
    let mut pieces = std::collections::HashSet::new();
    for secret in &secrets {
        let chars: Vec<char> = secret.chars().collect();
        for window in chars.windows(WINDOW).filter(|w| distinctive(w)) {
            pieces.insert(window.iter().collect::<String>());
        }
    }
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    for w in bounds.windows(WINDOW + 1) {
        let piece = &text[w[0]..w[WINDOW]];
        assert!(
            !pieces.contains(piece),
            "{what} shows 9+ characters of a known secret ({}…); the output was:\n{text}",
            piece.chars().take(4).collect::<String>()
        );
    }
    tally(text.len(), secrets.len());
}

fn tally(bytes: usize, secrets: usize) {
    use std::io::Write as _;
    let Ok(path) = std::env::var("KEYSYNC_REPORT_FILE") else { return };
    let line = serde_json::json!({ "leak_check": { "outputs": 1, "bytes": bytes, "secrets": secrets } });
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// Trace output of keysync code running inside the test process (in-process `KeyStore`,
/// `Session`, renderers), collected by [`capture_in_process_tracing`].
static IN_PROCESS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends this test binary's own tracing (keysync's library code called in-process) to a
/// buffer at trace level, with the same caps on HTTP internals as `keysync --log-level trace`.
/// Called by `DevServer::start`; harmless when called again.
pub fn capture_in_process_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::new(
            "trace,hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn,h2=warn,tower=warn",
        );
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(|| Capture).try_init();
    });
}

/// Checks (and empties) what in-process keysync code has logged so far. Called when a
/// `DevServer` is dropped.
pub fn check_in_process_tracing() {
    let text = {
        let mut buf = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&std::mem::take(&mut *buf)).to_string()
    };
    if !text.is_empty() {
        check(&text, "trace output of keysync code running in the test process");
    }
}
