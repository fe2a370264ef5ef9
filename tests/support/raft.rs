//! Production-shaped Vault for tests: integrated storage (raft) in a temp dir behind a TLS
//! listener with certificates from [`super::pki`], initialised with one unseal key, unsealed,
//! KV v2 enabled at `secret/` — as one node ([`RaftServer`]) or as a 3-node cluster on
//! 127.0.0.1, 127.0.0.2 and 127.0.0.3 joined over TLS ([`Cluster`]), whose leader a test can
//! find, SIGKILL, restart and unseal.
//!
//! Server processes are started from the calling thread (they die with it: PDEATHSIG); HTTP
//! calls to them run on a short-lived helper thread with its own runtime, so these helpers
//! work inside and outside async tests.

use super::pki::{pki, Pki};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One Vault server process with raft storage and a TLS listener.
pub struct RaftNode {
    pub node_id: String,
    /// `https://<ip>:<api port>`
    pub addr: String,
    pub ip: String,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

impl RaftNode {
    /// Writes the node's config (storage in `dir/<node_id>`); `join` lists the API addresses
    /// of the other nodes for `retry_join`.
    fn configure(dir: &Path, node_id: &str, ip: &str, ports: (u16, u16), join: &[String], pki: &Pki) -> RaftNode {
        let (api_port, cluster_port) = ports;
        let data = dir.join(node_id);
        std::fs::create_dir_all(&data).expect("raft dir");
        let addr = format!("https://{ip}:{api_port}");
        let mut joins = String::new();
        for leader in join {
            joins.push_str(&format!(
                "  retry_join {{\n    leader_api_addr = \"{leader}\"\n    leader_ca_cert_file = \"{}\"\n  }}\n",
                pki.ca_cert.display()
            ));
        }
        let hcl = format!(
            r#"storage "raft" {{
  path = "{data}"
  node_id = "{node_id}"
{joins}}}
listener "tcp" {{
  address = "{ip}:{api_port}"
  cluster_address = "{ip}:{cluster_port}"
  tls_cert_file = "{cert}"
  tls_key_file = "{key}"
}}
api_addr = "{addr}"
cluster_addr = "https://{ip}:{cluster_port}"
disable_mlock = true
ui = false
log_level = "info"
"#,
            data = data.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        let config = dir.join(format!("{node_id}.hcl"));
        std::fs::write(&config, hcl).expect("write server config");
        let log = dir.join(format!("{node_id}.log"));
        RaftNode { node_id: node_id.into(), addr, ip: ip.into(), config, log, child: None }
    }

    /// Starts the process (sealed: it must be unsealed afterwards).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.node_id);
        let bin = super::server_binary();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(&bin);
        cmd.args(["server", &format!("-config={}", self.config.display())])
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env("HOME", self.config.parent().expect("dir"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())));
    }

    /// Hands the process over (the caller kills it); the node forgets it.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, no step-down; raft must elect a new leader.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `sys/health` status: 200 active, 429 standby, 501 not initialised, 503 sealed; None
    /// without an answer.
    pub fn health(&self) -> Option<u16> {
        call(&self.addr, "GET", "sys/health", None, None).map(|(s, _)| s)
    }

    /// Waits until the API answers at all (any status).
    fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("raft node {} exited with {status}:\n{}", self.node_id, self.log_text());
            }
            if self.health().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("raft node {} not listening after {timeout:?}:\n{}", self.node_id, self.log_text());
    }

    /// Sends the unseal key until the node says it is unsealed (a joining node needs the key
    /// to finish `retry_join`, which may take a few attempts).
    pub fn unseal(&mut self, key: &str, timeout: Duration) {
        self.wait_listening(Duration::from_secs(60));
        let deadline = Instant::now() + timeout;
        loop {
            let answer = call(&self.addr, "PUT", "sys/unseal", None, Some(json!({ "key": key })));
            if let Some((200, body)) = &answer {
                if body["sealed"] == Value::Bool(false) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "raft node {} still sealed after {timeout:?} (last answer {answer:?}):\n{}",
                self.node_id,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `sys/health` answers one of `statuses`.
    pub fn wait_health(&self, statuses: &[u16], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.health().is_some_and(|s| statuses.contains(&s)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` on a helper thread with its own single-threaded runtime.
pub fn block_on<T: Send>(f: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f))
            .join()
            .expect("helper thread panicked")
    })
}

/// An HTTP client that trusts the test CA (and no other).
pub fn https_client() -> reqwest::Client {
    let pem = std::fs::read(&pki().ca_cert).expect("read CA");
    let ca = reqwest::Certificate::from_pem(&pem).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        // Generous: `sys/init` on a busy 2-core machine took over 10 s once.
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("https client")
}

/// One API call; `None` without an answer. Blocking.
pub fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Option<(u16, Value)> {
    let url = format!("{addr}/v1/{path}");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let token = token.map(str::to_string);
    block_on(async move {
        let mut req = https_client().request(method, url);
        if let Some(t) = token {
            req = req.header("X-Vault-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.ok()?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    })
}

fn must(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
    match call(addr, method, path, token, body) {
        Some((s, v)) if (200..300).contains(&s) => v,
        other => panic!("{method} {addr}/v1/{path} failed: {other:?}"),
    }
}

/// Initialises with one key share; returns (unseal key, root token).
fn init(node: &mut RaftNode) -> (String, String) {
    node.wait_listening(Duration::from_secs(60));
    let body = must(&node.addr, "PUT", "sys/init", None, Some(json!({ "secret_shares": 1, "secret_threshold": 1 })));
    let key = body["keys"][0].as_str().expect("unseal key").to_string();
    let root = body["root_token"].as_str().expect("root token").to_string();
    super::leak::register(&root);
    (key, root)
}

/// Enables KV v2 at `secret/` (what the dev server does by itself), retrying while the new
/// leader settles.
fn enable_kv(addr: &str, root: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = call(
            addr,
            "POST",
            "sys/mounts/secret",
            Some(root),
            Some(json!({ "type": "kv", "options": { "version": "2" } })),
        );
        match answer {
            Some((s, _)) if (200..300).contains(&s) => break,
            other => assert!(Instant::now() < deadline, "cannot enable KV v2 at secret/: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // KV v2 upgrades its storage layout in the background; writes fail until it is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match call(addr, "GET", "secret/config", Some(root), None) {
            Some((200, _)) => return,
            other => assert!(Instant::now() < deadline, "KV v2 at secret/ not ready: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A single raft node with TLS, initialised, unsealed, KV v2 at `secret/`.
pub struct RaftServer {
    pub node: RaftNode,
    pub root_token: String,
    pub unseal_key: String,
    pub dir: tempfile::TempDir,
}

impl RaftServer {
    pub fn start() -> RaftServer {
        let dir = tempfile::Builder::new().prefix("keysync-raft-").tempdir().expect("tempdir");
        let ports = (free_port_on("127.0.0.1"), free_port_on("127.0.0.1"));
        let mut node = RaftNode::configure(dir.path(), "node1", "127.0.0.1", ports, &[], pki());
        node.spawn();
        let (unseal_key, root_token) = init(&mut node);
        node.unseal(&unseal_key, Duration::from_secs(60));
        assert!(
            node.wait_health(&[200], Duration::from_secs(60)),
            "single raft node never became active:\n{}",
            node.log_text()
        );
        enable_kv(&node.addr, &root_token);
        RaftServer { node, root_token, unseal_key, dir }
    }

    /// Restarts the process; it comes back sealed and is unsealed again.
    pub fn restart(&mut self) {
        self.node.kill();
        self.node.spawn();
        self.node.unseal(&self.unseal_key, Duration::from_secs(60));
        assert!(self.node.wait_health(&[200], Duration::from_secs(60)), "node not active after restart");
    }
}

/// Three raft nodes on 127.0.0.1, 127.0.0.2, 127.0.0.3, joined with `retry_join` over TLS.
pub struct Cluster {
    pub nodes: Vec<RaftNode>,
    pub root_token: String,
    pub unseal_key: String,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new().prefix("keysync-cluster-").tempdir().expect("tempdir");
        let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
        // Ports first, so every node's retry_join can list all the others.
        let ports: Vec<(u16, u16)> = ips.iter().map(|ip| (free_port_on(ip), free_port_on(ip))).collect();
        let addrs: Vec<String> = ips.iter().zip(&ports).map(|(ip, p)| format!("https://{ip}:{}", p.0)).collect();
        let mut nodes: Vec<RaftNode> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let others: Vec<String> =
                    addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| a.clone()).collect();
                RaftNode::configure(dir.path(), &format!("node{}", i + 1), ip, ports[i], &others, pki())
            })
            .collect();
        nodes[0].spawn();
        let (unseal_key, root_token) = init(&mut nodes[0]);
        nodes[0].unseal(&unseal_key, Duration::from_secs(60));
        assert!(nodes[0].wait_health(&[200], Duration::from_secs(60)), "node1 never became active");
        enable_kv(&nodes[0].addr, &root_token);
        for node in nodes.iter_mut().skip(1) {
            node.spawn();
            node.unseal(&unseal_key, Duration::from_secs(120));
            assert!(
                node.wait_health(&[429, 200], Duration::from_secs(120)),
                "{} never joined as a standby:\n{}",
                node.node_id,
                node.log_text()
            );
        }
        let cluster = Cluster { nodes, root_token, unseal_key, dir };
        cluster.wait_voters(Duration::from_secs(120));
        cluster
    }

    /// Waits until raft lists every node as a voter: a node joins as a non-voter and
    /// autopilot promotes it once it is stable (about 10 s), and only voters can elect a new
    /// leader when the old one dies.
    pub fn wait_voters(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            for node in &self.nodes {
                if let Some((200, body)) =
                    call(&node.addr, "GET", "sys/storage/raft/configuration", Some(&self.root_token), None)
                {
                    let servers = body["data"]["config"]["servers"].as_array().cloned().unwrap_or_default();
                    let voters = servers.iter().filter(|s| s["voter"] == Value::Bool(true)).count();
                    if voters == self.nodes.len() {
                        return;
                    }
                    last = Some(body);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("not every raft node became a voter within {timeout:?}: {last:?}");
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The node answering `sys/health` 200 (active), if any.
    pub fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.health() == Some(200))
    }

    /// Waits for an active node other than `not` (a killed leader); returns it and how long
    /// it took.
    pub fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> Option<(usize, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(i) = self.leader().filter(|i| Some(*i) != not) {
                return Some((i, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Restarts node `i` (it comes back sealed), unseals it and waits until it is a standby
    /// or the leader again.
    pub fn restart(&mut self, i: usize) {
        let key = self.unseal_key.clone();
        let node = &mut self.nodes[i];
        node.kill();
        node.spawn();
        node.unseal(&key, Duration::from_secs(120));
        assert!(
            node.wait_health(&[200, 429], Duration::from_secs(120)),
            "{} did not rejoin after restart:\n{}",
            node.node_id,
            node.log_text()
        );
    }

    /// Admin calls through node `i` (standbys forward to the leader).
    pub fn admin(&self, i: usize) -> super::Admin {
        super::Admin::new(&self.nodes[i].addr, &self.root_token)
    }
}

/// Address and root token of a raft + TLS server shared by every test of one test binary.
#[derive(Clone, Debug)]
pub struct Shared {
    pub addr: String,
    pub root_token: String,
}

/// Starts (once) a raft + TLS server on a thread that lives as long as the test process, so
/// the server outlives the test that started it (its PDEATHSIG follows that thread) and dies
/// with the process.
pub fn shared() -> Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let server = RaftServer::start();
                tx.send(Shared { addr: server.node.addr.clone(), root_token: server.root_token.clone() })
                    .expect("send");
                loop {
                    std::thread::park();
                }
            });
            rx.recv_timeout(Duration::from_secs(180)).expect("the shared raft server did not start")
        })
        .clone()
}
