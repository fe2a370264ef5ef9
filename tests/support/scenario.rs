//! One way to set up an agent test: a temporary directory, a config written from parts, the
//! metrics endpoint on a free address, a virtual clock shared by the agents and CLI runs it
//! starts, and waits on what the agent did (its passes, its readiness) instead of on time.
//!
//! ```ignore
//! let sc = Scenario::new(&server).poll("1s").sink("openai", "out/openai.key");
//! let agent = sc.run();                       // writes keysync.toml, starts `keysync run`
//! assert!(sc.wait_file("out/openai.key", |t| t.trim() == "sk-…").await, "{}", agent.log_text());
//! sc.advance(Duration::from_secs(3600)).await; // an hour later, for the agent…
//! sc.next_passes(2).await;                     // …and it has looked again since
//! ```
//! `{dir}` in TOML given to [`Scenario::toml`] stands for the test directory.

use super::clock::TestClock;
use super::faults::{http_get, metric_sum};
use super::{eventually, free_listen_addr, Agent, Cli, DevServer};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Scenario<'s> {
    pub server: &'s DevServer,
    pub dir: tempfile::TempDir,
    /// The agent's metrics / health address (`None`: `listen = "off"`).
    pub listen: Option<String>,
    pub clock: TestClock,
    addr: String,
    token: String,
    agent: Vec<String>,
    body: String,
    config_name: String,
}

impl<'s> Scenario<'s> {
    /// Polls every second, listens on a free address, root token, straight to the server.
    pub fn new(server: &'s DevServer) -> Scenario<'s> {
        Scenario {
            server,
            dir: tempfile::tempdir().expect("tempdir"),
            listen: Some(free_listen_addr()),
            clock: TestClock::new(),
            addr: server.addr.clone(),
            token: server.root_token.clone(),
            agent: vec!["poll_interval = \"1s\"".into()],
            body: String::new(),
            config_name: "keysync.toml".into(),
        }
    }

    pub fn poll(mut self, every: &str) -> Self {
        self.agent.retain(|l| !l.starts_with("poll_interval"));
        self.agent.push(format!("poll_interval = \"{every}\""));
        self
    }

    /// Any other `[agent]` line, e.g. `report_renders = true`.
    pub fn agent(mut self, line: &str) -> Self {
        self.agent.push(line.to_string());
        self
    }

    /// `listen = "off"` (no metrics: [`Scenario::passes`] and friends then panic).
    pub fn no_listen(mut self) -> Self {
        self.listen = None;
        self
    }

    /// Talks to Vault through `addr` (a proxy) instead of the server itself.
    pub fn via(mut self, addr: &str) -> Self {
        self.addr = addr.to_string();
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.token = token.to_string();
        self
    }

    /// Writes the config as `name` (for tests that keep several configs side by side).
    pub fn config_name(mut self, name: &str) -> Self {
        self.config_name = name.to_string();
        self
    }

    /// A file sink for `key` at `file` (relative to the test directory).
    pub fn sink(self, key: &str, file: &str) -> Self {
        self.sink_with(key, file, "")
    }

    /// A file sink with extra lines (`include_previous = true`, `format = "json"` …).
    pub fn sink_with(self, key: &str, file: &str, extra: &str) -> Self {
        let extra = if extra.is_empty() || extra.ends_with('\n') { extra.to_string() } else { format!("{extra}\n") };
        self.toml(&format!("[[keys.{key}.sinks]]\npath = \"{{dir}}/{file}\"\ncreate_dirs = true\n{extra}"))
    }

    /// Raw TOML after the `[agent]` table; `{dir}` is the test directory.
    pub fn toml(mut self, text: &str) -> Self {
        self.body.push_str(&text.replace("{dir}", &self.d().display().to_string()));
        if !self.body.ends_with('\n') {
            self.body.push('\n');
        }
        self
    }

    pub fn d(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.d().join(rel)
    }

    /// A file's text ("" while it does not exist).
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    pub fn config_text(&self) -> String {
        let listen = self.listen.as_deref().unwrap_or("off");
        format!("[agent]\n{}\nlisten = \"{listen}\"\n{}", self.agent.join("\n"), self.body)
    }

    /// Writes the config; returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.path(&self.config_name);
        std::fs::write(&path, self.config_text()).expect("write the test config");
        path
    }

    /// Writes the config and starts `keysync ARGS` on the scenario's clock.
    pub fn start(&self, args: &[&str]) -> Agent {
        let config = self.write_config();
        Agent::start_env(&config, &self.addr, &self.token, args, self.d(), &[self.clock.env()])
    }

    /// `keysync run`.
    pub fn run(&self) -> Agent {
        self.start(&["run"])
    }

    /// The CLI as root, in the test directory, on the scenario's clock.
    pub fn cli(&self) -> Cli {
        Cli::new(self.server, &self.server.root_token, self.d()).on_clock(&self.clock)
    }

    /// A key store writing as `test-writer` with `grace` (in the test process: wall clock).
    pub async fn writer(&self, grace: Duration) -> keysync::store::KeyStore {
        super::key_store(self.server, &self.server.root_token, grace, "test-writer").await
    }

    fn listen(&self) -> &str {
        self.listen.as_deref().expect("this scenario has no metrics endpoint (no_listen)")
    }

    pub fn metrics(&self) -> String {
        http_get(self.listen(), "/metrics").1
    }

    /// Sum of a metric family's samples whose labels contain all of `labels`.
    pub fn scrape(&self, family: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), family, labels)
    }

    /// `/readyz`: (status, reason).
    pub fn readyz(&self) -> (u16, String) {
        http_get(self.listen(), "/readyz")
    }

    /// Waits until `/readyz` says 200.
    pub async fn ready(&self, timeout: Duration) -> bool {
        eventually(timeout, || self.readyz().0 == 200).await
    }

    /// Poll passes the agent finished (successful or not).
    pub fn passes(&self) -> u64 {
        self.scrape("keysync_sync_duration_seconds_count", &[]) as u64
    }

    /// Waits until the agent finished `n` more passes than now; the first may have started
    /// before the call, so `n >= 2` guarantees one whole pass after it.
    pub async fn next_passes(&self, n: u64) {
        let start = self.passes();
        let t0 = Instant::now();
        let seen = eventually(Duration::from_secs(30), || self.passes() >= start + n).await;
        assert!(seen, "the agent did not finish {n} passes in {:?} (from {start} to {})", t0.elapsed(), self.passes());
    }

    /// Waits until file `rel` satisfies `cond`.
    pub async fn wait_file(&self, rel: &str, cond: impl Fn(&str) -> bool) -> bool {
        eventually(Duration::from_secs(10), || cond(&self.read(rel))).await
    }

    /// Moves time on for every process of the scenario (see [`TestClock::advance`]).
    pub async fn advance(&self, by: Duration) {
        self.clock.advance(by).await;
    }
}
