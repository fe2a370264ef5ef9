//! `type = "command"`: an operator-supplied program mints (and optionally revokes) keys, e.g. a
//! script calling a provider's admin API. keysync runs it without a shell, with a minimal
//! environment and a timeout, and reads one JSON object from its stdout.

use super::{BoxFuture, Capabilities, Kind, Minted, Provider, ProviderError};
use crate::duration::HumanDuration;
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// Largest stdout accepted from a command; anything bigger is not a key and is refused.
pub const MAX_STDOUT: usize = 1024 * 1024;
/// How much stderr is quoted in an error.
const STDERR_CHARS: usize = 200;
/// How much stderr is kept while reading (the rest is drained and dropped).
const STDERR_KEEP: usize = 16 * 1024;
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Settings of `type = "command"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// argv of the minting program (no shell). It prints
    /// `{"api_key": "...", "key_id": "...", "expires_at": "RFC 3339"}`; other string fields are
    /// kept in [`Minted::fields`].
    pub command: Vec<String>,
    /// argv of the revoking program, run with `KEYSYNC_KEY_ID` set. Unset: keys are not revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_command: Option<Vec<String>>,
    /// Kill the program after this long. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// A checked [`CommandConfig`] plus the `KEYSYNC_*` variables to hand the program.
#[derive(Clone, Debug)]
pub struct CommandProvider {
    config: CommandConfig,
    env: BTreeMap<String, String>,
}

impl CommandProvider {
    /// Refuses an empty argv up front rather than at the first rotation.
    pub fn new(config: CommandConfig) -> Result<Self, ProviderError> {
        if config.command.first().is_none_or(|p| p.is_empty()) {
            return Err(ProviderError::Config("command: `command` must name a program".into()));
        }
        if let Some(revoke) = &config.revoke_command {
            if revoke.first().is_none_or(|p| p.is_empty()) {
                return Err(ProviderError::Config("command: `revoke_command` must name a program".into()));
            }
        }
        if config.timeout.is_some_and(|t| t.get().is_zero()) {
            return Err(ProviderError::Config("command: `timeout` must be greater than zero".into()));
        }
        Ok(CommandProvider { config, env: BTreeMap::new() })
    }

    /// Adds a variable for the programs (e.g. `KEYSYNC_KEY_NAME`). Only `KEYSYNC_*` names are
    /// accepted: the environment is otherwise cleared so the agent's own credentials (Vault
    /// token, cloud credentials) never reach a third-party script.
    pub fn with_env(mut self, name: &str, value: &str) -> Result<Self, ProviderError> {
        if !name.starts_with("KEYSYNC_") || name.contains('=') {
            return Err(ProviderError::Config(format!(
                "command: environment variable {name:?} must start with KEYSYNC_"
            )));
        }
        self.env.insert(name.to_string(), value.to_string());
        Ok(self)
    }

    pub fn can_revoke(&self) -> bool {
        self.config.revoke_command.is_some()
    }

    fn timeout(&self) -> Duration {
        self.config.timeout.map_or(Duration::from_secs(30), HumanDuration::get)
    }

    /// Runs `command` and parses its JSON output into a [`Minted`].
    pub async fn mint(&self) -> Result<Minted, ProviderError> {
        let argv = &self.config.command;
        let program = argv.first().cloned().unwrap_or_default();
        let stdout = run(argv, &self.env, self.timeout()).await?;
        parse_output(&stdout).map_err(|reason| ProviderError::BadOutput { program, reason })
    }

    /// Runs `revoke_command` with `KEYSYNC_KEY_ID=key_id`; success is exit status 0.
    pub async fn revoke(&self, key_id: &str) -> Result<(), ProviderError> {
        let Some(argv) = &self.config.revoke_command else {
            return Err(ProviderError::RevokeUnsupported("command without revoke_command"));
        };
        let mut env = self.env.clone();
        env.insert("KEYSYNC_KEY_ID".into(), key_id.to_string());
        run(argv, &env, self.timeout()).await.map(|_| ())
    }
}

impl Provider for CommandProvider {
    fn kind(&self) -> &'static str {
        Self::NAME
    }

    /// Mints; revokes only with a `revoke_command`. It cannot list what the program made.
    fn capabilities(&self) -> Capabilities {
        Capabilities { mints: true, revokes: self.can_revoke(), ..Capabilities::default() }
    }

    fn mint<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<Minted, ProviderError>> {
        Box::pin(CommandProvider::mint(self))
    }

    fn revoke<'a>(&'a self, key_id: &'a str) -> BoxFuture<'a, Result<(), ProviderError>> {
        Box::pin(CommandProvider::revoke(self, key_id))
    }
}

impl Kind for CommandProvider {
    const NAME: &'static str = "command";
    type Config = CommandConfig;

    fn build(config: CommandConfig) -> Result<Self, ProviderError> {
        CommandProvider::new(config)
    }
}

/// Runs argv (no shell) with a cleared environment, stdin closed, stdout capped at
/// [`MAX_STDOUT`], and a timeout after which the whole process group is killed. Returns stdout
/// on exit status 0.
async fn run(argv: &[String], env: &BTreeMap<String, String>, timeout: Duration) -> Result<Vec<u8>, ProviderError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ProviderError::Config("command: empty argv".into()));
    };
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout also kills grandchildren (`sh -c 'sleep 100'`).
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ProviderError::Spawn { program: program.clone(), source })?;

    let result = tokio::time::timeout(timeout, collect(&mut child, program)).await;
    match result {
        Ok(Ok((status, stdout, stderr))) => {
            if status.success() {
                Ok(stdout)
            } else {
                Err(ProviderError::Exit {
                    program: program.clone(),
                    status: describe_status(status),
                    stderr: stderr_excerpt(&stderr),
                })
            }
        }
        Ok(Err(e)) => {
            kill_group(&mut child).await;
            Err(e)
        }
        Err(_) => {
            kill_group(&mut child).await;
            Err(ProviderError::Timeout { program: program.clone(), timeout })
        }
    }
}

/// Reads stdout (capped) and stderr (kept partly) concurrently, then waits for exit. Reading
/// both at once avoids a deadlock when the child fills the stderr pipe.
async fn collect(child: &mut Child, program: &str) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), ProviderError> {
    let io_err = |source| ProviderError::Io { program: program.to_string(), source };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read_out = async {
        match stdout {
            Some(s) => read_capped(s, MAX_STDOUT, true).await,
            None => Ok(Vec::new()),
        }
    };
    let read_err = async {
        match stderr {
            Some(s) => read_capped(s, STDERR_KEEP, false).await,
            None => Ok(Vec::new()),
        }
    };
    let (out, err) = tokio::try_join!(read_out, read_err).map_err(|e| match e {
        ReadError::TooLarge => ProviderError::OutputTooLarge { program: program.to_string(), limit: MAX_STDOUT },
        ReadError::Io(source) => io_err(source),
    })?;
    let status = child.wait().await.map_err(io_err)?;
    Ok((status, out, err))
}

enum ReadError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads a pipe in chunks, never holding more than `limit` bytes. With `refuse`, more data is
/// an error; otherwise the excess is read and dropped so the child never blocks on the pipe.
async fn read_capped(mut pipe: impl AsyncRead + Unpin, limit: usize, refuse: bool) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = pipe.read(&mut chunk).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Ok(out);
        }
        let room = limit - out.len();
        if n > room {
            if refuse {
                return Err(ReadError::TooLarge);
            }
            out.extend_from_slice(&chunk[..room]);
        } else {
            out.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // The group may already be gone; nothing useful to do about an error here.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown status".to_string(),
    }
}

/// At most [`STDERR_CHARS`] characters of stderr, trimmed, for error messages.
fn stderr_excerpt(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let trimmed = text.trim();
    let mut excerpt: String = trimmed.chars().take(STDERR_CHARS).collect();
    if trimmed.chars().count() > STDERR_CHARS {
        excerpt.push('…');
    }
    excerpt
}

/// Parses the program's JSON by hand on a [`Value`] rather than with a typed struct: serde's
/// type errors quote the offending value, which could be the key.
fn parse_output(stdout: &[u8]) -> Result<Minted, String> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| {
        // Syntax errors carry only a category and position, never input text.
        format!("stdout is not JSON ({:?} error at line {} column {})", e.classify(), e.line(), e.column())
    })?;
    let Value::Object(map) = value else {
        return Err(format!("expected a JSON object, got {}", type_name(&value)));
    };
    let mut api_key = None;
    let mut key_id = None;
    let mut expires_at = None;
    let mut fields = BTreeMap::new();
    for (name, value) in map {
        match (name.as_str(), value) {
            ("api_key", Value::String(s)) => api_key = Some(Secret::new(s)),
            ("api_key", other) => return Err(format!("\"api_key\" must be a string, got {}", type_name(&other))),
            ("key_id" | "expires_at", Value::Null) => {}
            ("key_id", Value::String(s)) => key_id = Some(s).filter(|s| !s.is_empty()),
            ("expires_at", Value::String(s)) => {
                let t = DateTime::parse_from_rfc3339(&s)
                    .map_err(|_| "\"expires_at\" is not an RFC 3339 timestamp".to_string())?;
                expires_at = Some(t.with_timezone(&Utc));
            }
            (_, Value::String(s)) => {
                fields.insert(name, s);
            }
            (_, other) => return Err(format!("field {name:?} must be a string, got {}", type_name(&other))),
        }
    }
    let api_key = api_key.ok_or("missing \"api_key\"")?;
    if api_key.is_empty() {
        return Err("\"api_key\" is empty".into());
    }
    if api_key.expose().chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("\"api_key\" contains whitespace or control characters".into());
    }
    Ok(Minted { api_key, key_id, expires_at, fields })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> CommandProvider {
        CommandProvider::new(CommandConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            revoke_command: None,
            timeout: None,
        })
        .unwrap()
    }

    async fn mint_err(script: &str) -> String {
        sh(script).mint().await.unwrap_err().to_string()
    }

    #[tokio::test]
    async fn mints_from_json() {
        let p =
            sh(r#"printf '{"api_key":"sk-abc123","key_id":"k1","expires_at":"2026-03-01T00:00:00Z","org":"acme"}'"#);
        let m = p.mint().await.unwrap();
        assert_eq!(m.api_key.expose(), "sk-abc123");
        assert_eq!(m.key_id.as_deref(), Some("k1"));
        assert_eq!(m.expires_at.unwrap().to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert_eq!(m.fields.get("org").map(String::as_str), Some("acme"));
    }

    #[tokio::test]
    async fn errors_never_contain_the_key() {
        let err = mint_err(r#"printf '{"api_key":"sk-SECRET SECRET"}'"#).await;
        assert!(err.contains("whitespace") && !err.contains("SECRET"), "{err}");
        let err = mint_err(r#"printf '{"api_key":"sk-SECRET\nx"}'"#).await;
        assert!(!err.contains("SECRET"), "{err}");
        // Non-zero exit: stdout (which may hold a key) is never quoted, stderr is.
        let err = mint_err(r#"printf '{"api_key":"sk-SECRET"}'; echo 'quota exceeded' >&2; exit 3"#).await;
        assert!(err.contains("exit code 3") && err.contains("quota exceeded") && !err.contains("SECRET"), "{err}");
        // Wrong type next to a key-looking value.
        let err = mint_err(r#"printf '{"api_key":"sk-SECRET","key_id":42}'"#).await;
        assert!(err.contains("\"key_id\" must be a string") && !err.contains("SECRET"), "{err}");
        let err = mint_err(r#"printf '{"api_key":"sk-SECRET",}'"#).await;
        assert!(err.contains("not JSON") && !err.contains("SECRET"), "{err}");
        let err = mint_err(r#"printf '{"api_key":"sk-SECRET","expires_at":"tomorrow"}'"#).await;
        assert!(err.contains("RFC 3339") && !err.contains("SECRET"), "{err}");
    }

    #[tokio::test]
    async fn rejects_bad_output() {
        assert!(mint_err("printf 'not json'").await.contains("not JSON"));
        assert!(mint_err(r#"printf '{"key_id":"k"}'"#).await.contains("missing \"api_key\""));
        assert!(mint_err(r#"printf '{"api_key":""}'"#).await.contains("empty"));
        assert!(mint_err(r#"printf '{"api_key":7}'"#).await.contains("must be a string, got a number"));
        assert!(mint_err(r#"printf '["sk"]'"#).await.contains("expected a JSON object"));
    }

    #[tokio::test]
    async fn stderr_is_cut_to_200_characters() {
        let err = mint_err("head -c 5000 /dev/zero | tr '\\0' 'e' >&2; exit 1").await;
        let quoted = err.matches('e').count();
        assert!(quoted <= 210, "{quoted}");
    }

    #[tokio::test]
    async fn refuses_more_than_one_mebibyte() {
        let err = mint_err("head -c 2000000 /dev/zero").await;
        assert!(err.contains("more than 1048576 bytes"), "{err}");
    }

    #[tokio::test]
    async fn times_out_and_kills() {
        let p = CommandProvider::new(CommandConfig {
            command: vec!["sh".into(), "-c".into(), "sleep 30".into()],
            revoke_command: None,
            timeout: Some(HumanDuration(Duration::from_millis(300))),
        })
        .unwrap();
        let start = std::time::Instant::now();
        let err = p.mint().await.unwrap_err();
        assert!(matches!(err, ProviderError::Timeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn environment_is_path_plus_keysync_vars() {
        let p = sh(r#"printf '{"api_key":"k","env":"%s"}' "$(env | grep -v '^PWD=' | grep -v '^SHLVL=' | grep -v '^_=' | sort | tr '\n' ' ')""#)
            .with_env("KEYSYNC_KEY_NAME", "openai")
            .unwrap();
        let m = p.mint().await.unwrap();
        let env = m.fields.get("env").unwrap();
        let names: Vec<&str> = env.split_whitespace().map(|kv| kv.split('=').next().unwrap()).collect();
        assert_eq!(names, ["KEYSYNC_KEY_NAME", "PATH"], "{env}");
        assert!(sh("true").with_env("HOME", "/").is_err());
    }

    #[tokio::test]
    async fn revoke_gets_the_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("revoked");
        let p = CommandProvider::new(CommandConfig {
            command: vec!["true".into()],
            revoke_command: Some(vec![
                "sh".into(),
                "-c".into(),
                format!("printf '%s' \"$KEYSYNC_KEY_ID\" > '{}'", out.display()),
            ]),
            timeout: None,
        })
        .unwrap();
        assert!(p.can_revoke());
        p.revoke("key-123").await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "key-123");
        assert!(!sh("true").can_revoke());
        assert!(matches!(sh("true").revoke("x").await, Err(ProviderError::RevokeUnsupported(_))));
    }

    #[test]
    fn empty_argv_is_refused() {
        let cfg = CommandConfig { command: vec![], revoke_command: None, timeout: None };
        assert!(CommandProvider::new(cfg).is_err());
    }
}
