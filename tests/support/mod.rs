//! Test harness: a real Vault-compatible dev server per test, and small helpers to set it up.
//!
//! `DevServer::start()` runs `<bin> server -dev` on a free loopback port with a random root
//! token and stops it when dropped (panics included). `KEYSYNC_TEST_BAO_BIN` names a prebuilt
//! binary; otherwise `scripts/dev-server-bin` builds (once) or finds the cached one.
//! `KEYSYNC_TEST_VAULT_ADDR` + `KEYSYNC_TEST_VAULT_TOKEN` use an external server instead; tests
//! then keep to their own random mounts and prefixes.
//! `KEYSYNC_TEST_SERVER=raft-tls` makes `DevServer::start()` start a production-shaped server
//! instead (raft storage, TLS with a test CA, initialised and unsealed: see [`raft`]); keysync
//! processes started through these helpers get `VAULT_CACERT`.
#![allow(dead_code)]

pub mod fake_llm;
pub mod fake_openai;
pub mod faults;
pub mod leak;
pub mod pki;
pub mod raft;
pub mod report;
pub mod token_review;

use rand::Rng as _;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct DevServer {
    pub addr: String,
    pub root_token: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// The raft + TLS server's unseal key (its init answer); the dev server prints its own in
    /// the log banner instead (see `unseal_key`).
    raft_unseal_key: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// A random lowercase name with a prefix, so tests never collide on a shared server.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{:012x}", n & 0xffff_ffff_ffff)
}

/// Whether `KEYSYNC_TEST_SERVER=raft-tls` asks for the raft + TLS server.
pub fn raft_tls() -> bool {
    std::env::var("KEYSYNC_TEST_SERVER").is_ok_and(|v| v == "raft-tls")
}

/// The CA a keysync process needs to trust the test server (raft-tls mode only).
pub fn test_ca() -> Option<PathBuf> {
    raft_tls().then(|| pki::pki().ca_cert.clone())
}

pub(crate) fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("KEYSYNC_TEST_BAO_BIN") {
            return PathBuf::from(bin);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-server-bin");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed; see its output above", script.display());
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The Vault binary the dev server runs, which is also the `vault` CLI (for scripts).
pub fn vault_cli() -> PathBuf {
    server_binary()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// GET a path with plain HTTP/1.0; returns the status code, or None without an answer.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let hostport = addr.trim_start_matches("http://");
    let mut stream = TcpStream::connect_timeout(&hostport.parse().ok()?, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

impl DevServer {
    /// Starts a fresh dev server (or attaches to the external one).
    pub fn start() -> DevServer {
        leak::capture_in_process_tracing();
        if let (Ok(addr), Ok(token)) =
            (std::env::var("KEYSYNC_TEST_VAULT_ADDR"), std::env::var("KEYSYNC_TEST_VAULT_TOKEN"))
        {
            leak::register(&token);
            return DevServer {
                addr,
                root_token: token,
                child: None,
                log: PathBuf::new(),
                raft_unseal_key: None,
                _dir: None,
            };
        }
        if raft_tls() {
            let server = raft::RaftServer::start();
            let mut node = server.node;
            let child = node.take_child();
            return DevServer {
                addr: node.addr.clone(),
                root_token: server.root_token,
                child,
                log: node.log.clone(),
                raft_unseal_key: Some(server.unseal_key),
                _dir: Some(server.dir),
            };
        }
        let bin = server_binary();
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = dir.path().join("server.log");
            let port = free_port();
            let addr = format!("http://127.0.0.1:{port}");
            let root_token = unique("root");
            leak::register(&root_token);
            let log_file = std::fs::File::create(&log).expect("log file");
            let mut cmd = Command::new(&bin);
            cmd.args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={root_token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                "-dev-no-store-token",
            ])
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file);
            // Take the server down with the test process even on SIGKILL.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_err = format!(
                        "dev server exited with {status}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if http_status(&addr, "/v1/sys/health") == Some(200) {
                    return DevServer {
                        addr,
                        root_token,
                        child: Some(child),
                        log,
                        raft_unseal_key: None,
                        _dir: Some(dir),
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = format!(
                        "dev server not healthy after 60s:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start the dev server: {last_err}");
    }

    /// The key that unseals this server: from the raft server's init, or from the dev
    /// server's banner (`Unseal Key: …`, printed a moment after it first answers).
    pub async fn unseal_key(&self) -> String {
        if let Some(key) = &self.raft_unseal_key {
            return key.clone();
        }
        let find = || {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            log.lines().find_map(|l| l.trim().strip_prefix("Unseal Key: ").map(|k| k.trim().to_string()))
        };
        assert!(
            eventually(Duration::from_secs(10), || find().is_some()).await,
            "no unseal key in the dev server log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        find().expect("found above")
    }

    pub fn admin(&self) -> Admin {
        Admin::new(&self.addr, &self.root_token)
    }

    /// Stops the server process (for outage tests). No-op on an external server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            leak::check_in_process_tracing();
        }
    }
}

/// Root-token calls for setting the server up in tests.
#[derive(Clone)]
pub struct Admin {
    pub addr: String,
    pub token: String,
    http: reqwest::Client,
}

impl Admin {
    /// Trusts the test CA for `https://` addresses.
    pub fn new(addr: &str, token: &str) -> Admin {
        let http = if addr.starts_with("https://") { raft::https_client() } else { reqwest::Client::new() };
        Admin { addr: addr.to_string(), token: token.to_string(), http }
    }

    pub fn with_token(&self, token: &str) -> Admin {
        Admin { token: token.to_string(), ..self.clone() }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        wrap_ttl: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let mut req = self.http.request(method, url).header("X-Vault-Token", &self.token);
        if let Some(ttl) = wrap_ttl {
            req = req.header("X-Vault-Wrap-TTL", ttl);
        }
        leak::register(&self.token);
        if let Some(body) = body {
            leak::register_json(&body);
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("request to {path} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        leak::register_json(&value);
        (status, value)
    }

    /// Any status; for tests that check refusals.
    pub async fn try_write(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body), None).await
    }

    pub async fn write(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.try_write(path, body).await;
        assert!((200..300).contains(&status), "POST {path} -> {status}: {value}");
        value
    }

    pub async fn write_wrapped(&self, path: &str, body: Value, ttl: &str) -> Value {
        let (status, value) = self.call(reqwest::Method::POST, path, Some(body), Some(ttl)).await;
        assert!((200..300).contains(&status), "POST {path} (wrapped) -> {status}: {value}");
        value
    }

    pub async fn read(&self, path: &str) -> Value {
        let (status, value) = self.call(reqwest::Method::GET, path, None, None).await;
        assert!((200..300).contains(&status), "GET {path} -> {status}: {value}");
        value
    }

    pub async fn try_read(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None, None).await
    }

    /// A merge-PATCH (`application/merge-patch+json`), any status.
    pub async fn call_patch(&self, path: &str, body: Value) -> (u16, Value) {
        let url = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        leak::register(&self.token);
        leak::register_json(&body);
        let resp = self
            .http
            .patch(url)
            .header("X-Vault-Token", &self.token)
            .header("Content-Type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PATCH {path} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// The names a LIST of `path` answers (empty when there is nothing there).
    pub async fn list(&self, path: &str) -> Vec<String> {
        let (status, value) = self.call(reqwest::Method::GET, &format!("{path}?list=true"), None, None).await;
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "LIST {path}: {value}");
        value["data"]["keys"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(str::to_string)).collect()
    }

    pub async fn enable_auth(&self, mount: &str, kind: &str) {
        self.write(&format!("sys/auth/{mount}"), serde_json::json!({ "type": kind })).await;
    }

    pub async fn put_policy(&self, name: &str, hcl: &str) {
        let path = format!("sys/policies/acl/{name}");
        let (status, body) =
            self.call(reqwest::Method::PUT, &path, Some(serde_json::json!({ "policy": hcl })), None).await;
        assert!((200..300).contains(&status), "policy {name} refused: {status} {body}");
    }

    /// Creates an AppRole role and returns (role_id, secret_id).
    pub async fn approle(&self, mount: &str, role: &str, settings: Value) -> (String, String) {
        self.write(&format!("auth/{mount}/role/{role}"), settings).await;
        let role_id = self.read(&format!("auth/{mount}/role/{role}/role-id")).await["data"]["role_id"]
            .as_str()
            .expect("role_id")
            .to_string();
        let secret_id = self.write(&format!("auth/{mount}/role/{role}/secret-id"), serde_json::json!({})).await["data"]
            ["secret_id"]
            .as_str()
            .expect("secret_id")
            .to_string();
        (role_id, secret_id)
    }
}

/// Runs the `keysync` binary against a server with a token; returns (exit code, stdout,
/// stderr) after checking that no output shows more than 8 characters of any of `secrets`.
pub struct Cli {
    pub addr: String,
    pub token: String,
    pub dir: PathBuf,
    /// Values that must never appear in output (unless a test asks for `--reveal`).
    pub secrets: Vec<String>,
}

impl Cli {
    pub fn new(server: &DevServer, token: &str, dir: &Path) -> Cli {
        Cli { addr: server.addr.clone(), token: token.to_string(), dir: dir.to_path_buf(), secrets: Vec::new() }
    }

    pub fn command(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("keysync").expect("keysync binary");
        cmd.current_dir(&self.dir)
            .env("VAULT_ADDR", &self.addr)
            .env("VAULT_TOKEN", &self.token)
            .env("HOME", &self.dir)
            .env("KEYSYNC_AGENT_ID", "test-cli")
            .env("KEYSYNC_LOG", "trace")
            .env_remove("KEYSYNC_CONFIG")
            .args(args);
        if let Some(ca) = test_ca() {
            cmd.env("VAULT_CACERT", ca);
        }
        cmd
    }

    /// Runs with `stdin` and checks the output for leaks (unless `--reveal` is in `args`).
    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        self.register_inputs(args, stdin);
        let out = self.command(args).write_stdin(stdin.to_string()).output().expect("run keysync");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!stderr.contains("panicked"), "keysync {args:?} panicked: {stderr}");
        if !args.contains(&"--reveal") {
            for s in self.secrets.iter().chain([&self.token]) {
                assert_no_leak(s, &stdout, &format!("stdout of keysync {args:?}"));
                assert_no_leak(s, &stderr, &format!("stderr of keysync {args:?}"));
            }
            leak::check(&stdout, &format!("stdout of keysync {args:?}"));
        }
        leak::check(&stderr, &format!("stderr (trace log) of keysync {args:?}"));
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    /// Adds the keys a `put` or `import` is about to store to the leak registry.
    fn register_inputs(&self, args: &[&str], stdin: &str) {
        leak::register(&self.token);
        self.secrets.iter().for_each(|s| leak::register(s));
        let file_arg = |flag: &str| args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1));
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        if args.contains(&"put") {
            match file_arg("--file") {
                Some(f) => leak::register(&read(f)),
                None => leak::register(stdin),
            }
        }
        if let Some(i) = args.iter().position(|a| *a == "import") {
            if let Some(f) = args.get(i + 1) {
                leak::register_import_file(&read(f));
            }
        }
    }

    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with_stdin(args, "")
    }

    /// Runs, expects exit 0, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(code, 0, "keysync {args:?} failed: {stderr}");
        stdout
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("keysync {args:?} JSON: {e}: {out}"))
    }
}

/// No 9-character run of `secret` may appear in `text`: masks show at most 8.
pub fn assert_no_leak(secret: &str, text: &str, what: &str) {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 9 {
        assert!(!text.contains(secret), "{what} shows a secret");
        return;
    }
    for window in chars.windows(9) {
        let piece: String = window.iter().collect();
        assert!(!text.contains(&piece), "{what} shows 9+ characters of a secret ({piece:?} …)");
    }
}

/// A token with the given policies (no default policy, so the matrix is exact... plus the
/// default policy for lookup-self/renew-self, which every real token has).
pub async fn token_with_policies(admin: &Admin, policies: &[&str]) -> String {
    admin.write("auth/token/create", serde_json::json!({ "policies": policies, "ttl": "1h" })).await["auth"]
        ["client_token"]
        .as_str()
        .expect("client_token")
        .to_string()
}

/// Loads every file of `policies/` into the server under its file name.
pub async fn load_repo_policies(admin: &Admin) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(&dir).expect("policies/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "hcl") {
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            admin.put_policy(&name, &std::fs::read_to_string(&path).unwrap()).await;
        }
    }
}

/// A TCP proxy in front of the server that a test can cut (connections refused and dropped)
/// and restore, to simulate a Vault outage without losing the in-memory dev server.
pub struct Proxy {
    pub addr: String,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let scheme = if upstream.starts_with("https://") { "https" } else { "http" };
        let addr = format!("{scheme}://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").trim_start_matches("https://").to_string();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (d, c) = (down.clone(), connections.clone());
        tokio::spawn(async move {
            let mut live: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                c.fetch_add(1, Ordering::Relaxed);
                if d.load(Ordering::Relaxed) {
                    for h in live.drain(..) {
                        h.abort();
                    }
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let d2 = d.clone();
                live.retain(|h| !h.is_finished());
                live.push(tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !d2.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = watch => {} }
                }));
            }
        });
        Proxy { addr, down, connections }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A `keysync run` process, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(config: &Path, addr: &str, token: &str, args: &[&str], dir: &Path) -> Agent {
        leak::register(token);
        let log = dir.join(format!("agent-{}.log", unique("run")));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysync"));
        if let Some(ca) = test_ca() {
            cmd.env("VAULT_CACERT", ca);
        }
        let child = cmd
            .args(["--config", config.to_str().unwrap(), "--log-level", "trace"])
            .args(args)
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", token)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start keysync run");
        Agent { child, log }
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for exit; returns the code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Checked after the process is gone, so its last words are included; not while a
        // test is already failing (a second panic would abort and hide the first).
        if !std::thread::panicking() {
            leak::check(&self.log_text(), &format!("trace log of keysync agent {}", self.log.display()));
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

pub fn free_listen_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A key store on the server's default mount and prefix, logged in with `token`.
pub async fn key_store(server: &DevServer, token: &str, grace: Duration, actor: &str) -> keysync::store::KeyStore {
    use keysync::config::{AuthConfig, VaultConfig};
    use keysync::vault::{Authenticator, Session, VaultClient, VaultSettings};
    let cfg = VaultConfig { address: Some(server.addr.clone()), ca_cert: test_ca(), ..Default::default() };
    let client = VaultClient::new(VaultSettings::resolve(&cfg, &|_| None).expect("settings")).expect("client");
    let auth = Authenticator::with_env_token(AuthConfig::default(), Some(keysync::secret::Secret::new(token)));
    let session = Session::login(client, auth).await.expect("login");
    keysync::store::KeyStore::new(keysync::store::Kv::new(session, "secret", "keysync"), grace, actor)
}
