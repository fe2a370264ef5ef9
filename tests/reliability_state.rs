//! What keysync does when the disk or the server's state turns against it:
//! * a sink on a full filesystem (a 64 KiB tmpfs, filled up) or over the process's file size
//!   limit (RLIMIT_FSIZE, which needs no root): the old file stays whole, the error says what
//!   to do, a metric counts the failures, and the file is written once space returns;
//! * the agent's token revoked (AppRole: logs in again; plain token: not ready, with the
//!   reason, and one attempt per poll), its secret_id used up (the error names the fix, and a
//!   new secret_id is picked up), the server sealed (not ready with the reason, no hot loop,
//!   recovery after unseal). All against the real dev server.

mod support;

use keysync::secret::Secret;
use keysync::store::{KeyData, KeyName, KeyStore, PutOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::faults::{http_get, scrape, FaultProxy, Reader};
use support::{eventually, free_listen_addr, report, Agent, DevServer};

async fn put(store: &KeyStore, name: &str, key: &str) {
    let opts = PutOptions { promote: true, reason: "test".into(), keep_fields: true };
    store.put(&KeyName::parse(name).unwrap(), KeyData::new(Secret::new(key)), &opts).await.unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn short(text: &str, n: usize) -> String {
    let t = text.trim().replace('|', "/").replace('\n', " ");
    if t.chars().count() > n {
        format!("{}…", t.chars().take(n).collect::<String>())
    } else {
        t
    }
}

// ---------------------------------------------------------------------------------------
// Disk

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// How the test makes writes fail.
enum WriteFault {
    /// A 64 KiB tmpfs, filled up with a filler file; removing it returns the space.
    FullTmpfs { _mount: Tmpfs, filler: PathBuf },
    /// RLIMIT_FSIZE on the agent below the new file's size; raised again with prlimit.
    FileSizeLimit,
}

/// An agent whose stderr goes to a pipe (a file would itself hit RLIMIT_FSIZE).
struct PipedAgent {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl PipedAgent {
    fn start(config: &Path, addr: &str, token: &str, fsize_limit: Option<u64>) -> PipedAgent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysync"));
        cmd.args(["--config", config.to_str().unwrap(), "run"])
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(limit) = fsize_limit {
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(move || {
                    // Ignored signals stay ignored across exec: writes past the limit then
                    // fail with EFBIG instead of killing the process with SIGXFSZ.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let rl = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start keysync run");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        PipedAgent { child, log }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn raise_fsize_limit(&self) {
        let rl = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        let rc = unsafe { libc::prlimit(self.child.id() as i32, libc::RLIMIT_FSIZE, &rl, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

impl Drop for PipedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fill(filler: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).unwrap();
    let mut written = 0u64;
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {
        written += 4096;
    }
    while f.write_all(&[0]).is_ok() {
        written += 1;
    }
    let _ = f.sync_all();
    written
}

async fn write_error_scenario(use_tmpfs: bool) {
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let dir = tempfile::tempdir().unwrap();
    let sinkdir = dir.path().join("sink");
    std::fs::create_dir(&sinkdir).unwrap();
    let (fault, how) = if use_tmpfs {
        match Tmpfs::mount(&sinkdir, "64k") {
            Ok(m) => {
                (WriteFault::FullTmpfs { _mount: m, filler: sinkdir.join("filler") }, "a full 64 KiB tmpfs".to_string())
            }
            // Not root, or no mount privilege in this container: another real write error.
            Err(e) => {
                (WriteFault::FileSizeLimit, format!("RLIMIT_FSIZE (tmpfs not mountable here: {})", short(&e, 60)))
            }
        }
    } else {
        (WriteFault::FileSizeLimit, "RLIMIT_FSIZE 4 KiB on the agent".to_string())
    };
    let v1 = "sk-disk-one-1111111111111111".to_string();
    // Bigger than the 4 KiB size limit and than what is left on the full tmpfs.
    let v2 = format!("sk-disk-two-{}", "2".repeat(6000));
    put(&writer, "openai", &v1).await;
    let listen = free_listen_addr();
    let config = dir.path().join("keysync.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\npoll_interval = \"500ms\"\nlisten = \"{listen}\"\n[[keys.openai.sinks]]\npath = \"{}/openai.key\"\n",
            sinkdir.display()
        ),
    )
    .unwrap();
    let key_file = sinkdir.join("openai.key");
    let limit = matches!(fault, WriteFault::FileSizeLimit).then_some(4096);
    let agent = PipedAgent::start(&config, &server.addr, &server.root_token, limit);
    assert!(eventually(Duration::from_secs(10), || read(&key_file).trim() == v1).await, "{}", agent.log_text());
    if let WriteFault::FullTmpfs { filler, .. } = &fault {
        fill(filler);
    }
    let (a, b) = (format!("{v1}\n"), format!("{v2}\n"));
    let reader = Reader::start(key_file.clone(), move |t| t == a || t == b);
    let failed = || scrape(&listen, "keysync_sink_render_total", &["result=\"failed\""]);
    let f0 = failed();
    put(&writer, "openai", &v2).await;
    assert!(
        eventually(Duration::from_secs(10), || failed() >= f0 + 2.0).await,
        "the render should fail (and be retried): {}",
        agent.log_text()
    );
    // A few more polls with the disk still full: one failed render per poll, no more.
    let (t_full, f_full) = (Instant::now(), failed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_sec = (failed() - f_full) / t_full.elapsed().as_secs_f64();
    assert_eq!(read(&key_file), format!("{v1}\n"), "the old file stays whole");
    let log = agent.log_text();
    let (errno, hint) = match fault {
        WriteFault::FullTmpfs { .. } => ("No space left on device", "free space"),
        WriteFault::FileSizeLimit => ("File too large", "ulimit -f"),
    };
    let line = log
        .lines()
        .find(|l| l.contains("render failed") && l.contains(errno))
        .unwrap_or_else(|| panic!("no clear render error in the log: {log}"))
        .to_string();
    assert!(line.contains(&key_file.display().to_string()) && line.contains(hint), "{line}");
    let stray: Vec<String> = std::fs::read_dir(&sinkdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "openai.key" && n != "filler")
        .collect();
    assert!(stray.is_empty(), "temporary files left behind: {stray:?}");
    assert!(per_sec <= 2.5, "{per_sec:.1} failed renders per second at a 500 ms poll");
    let failures = failed() - f0;

    // Space returns.
    match &fault {
        WriteFault::FullTmpfs { filler, .. } => std::fs::remove_file(filler).unwrap(),
        WriteFault::FileSizeLimit => agent.raise_fsize_limit(),
    }
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || read(&key_file).trim() == v2).await,
        "not written after space returned: {}",
        agent.log_text()
    );
    let recovered = t0.elapsed().as_secs_f64();
    let stats = reader.finish();
    assert_eq!(stats.bad + stats.missing, 0, "{stats:?}");
    assert!(recovered <= 1.5, "written {recovered:.1} s after space returned; poll is 500 ms");
    let error = line.split("error=").nth(1).unwrap_or(&line);
    report::record(
        "Disk",
        &format!("sink write fails ({how}) when a new version arrives"),
        1,
        &format!(
            "old file intact (0 torn/missing of {} reads), no temp file left; error: `{}`; keysync_sink_render_total{{result=\"failed\"}} +{failures:.0} (about {per_sec:.1}/s at a 500 ms poll); new key written {recovered:.1} s after space returned",
            stats.reads,
            short(error, 260)
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_keeps_the_old_file_reports_and_recovers() {
    write_error_scenario(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_size_limit_keeps_the_old_file_reports_and_recovers() {
    write_error_scenario(false).await;
}

// ---------------------------------------------------------------------------------------
// Auth and server state

/// An AppRole the agent logs in with; returns the config's auth section.
async fn approle_agent(server: &DevServer, dir: &Path, secret_id_num_uses: u64) -> String {
    let admin = server.admin();
    support::load_repo_policies(&admin).await;
    admin.enable_auth("approle", "approle").await;
    let (role_id, secret_id) = admin
        .approle(
            "approle",
            "agent",
            serde_json::json!({ "token_policies": ["keysync-agent"], "token_ttl": "1h", "secret_id_num_uses": secret_id_num_uses }),
        )
        .await;
    std::fs::write(dir.join("role_id"), role_id).unwrap();
    std::fs::write(dir.join("secret_id"), secret_id).unwrap();
    format!(
        "[vault.auth]\nmethod = \"approle\"\nmount = \"approle\"\nrole_id_file = \"{0}/role_id\"\nsecret_id_file = \"{0}/secret_id\"\n",
        dir.display()
    )
}

fn agent_config(dir: &Path, listen: &str, auth: &str) -> PathBuf {
    let config = dir.join("keysync.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\npoll_interval = \"1s\"\nlisten = \"{listen}\"\n[vault]\ntimeout = \"2s\"\n{auth}[[keys.openai.sinks]]\npath = \"{}/openai.key\"\n",
            dir.display()
        ),
    )
    .unwrap();
    config
}

async fn revoke_approle_tokens(server: &DevServer) {
    server.admin().write("sys/leases/revoke-prefix/auth/approle/login", serde_json::json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_approle_token_is_replaced_by_logging_in_again() {
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let proxy = FaultProxy::start(&server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(&writer, "openai", "sk-auth-one-1111111111111111").await;
    let auth = approle_agent(&server, d, 0).await;
    let listen = free_listen_addr();
    let agent = Agent::start(&agent_config(d, &listen, &auth), &proxy.addr, "", &["run"], d);
    let key_file = d.join("openai.key");
    assert!(
        eventually(Duration::from_secs(10), || read(&key_file).starts_with("sk-auth-one")).await,
        "{}",
        agent.log_text()
    );
    let rounds = report::scale(2, 5);
    let mut worst = 0f64;
    for i in 0..rounds {
        revoke_approle_tokens(&server).await;
        let key = format!("sk-auth-new-{i}-2222222222222222");
        put(&writer, "openai", &key).await;
        let t0 = Instant::now();
        assert!(
            eventually(Duration::from_secs(10), || read(&key_file).trim() == key).await,
            "round {i}: the agent did not log in again: {}",
            agent.log_text()
        );
        worst = worst.max(t0.elapsed().as_secs_f64());
    }
    let log = agent.log_text();
    let relogins = log.matches("obtained a new Vault token").count();
    assert_eq!(relogins, rounds, "one new login per revocation: {log}");
    assert!(worst <= 2.5, "took {worst:.1} s to log in again and render");
    assert_eq!(http_get(&listen, "/readyz").0, 200);
    report::record(
        "Auth and server state",
        "AppRole agent's token revoked (sys/leases/revoke-prefix), then a new version written",
        rounds,
        &format!("logged in again once per revocation ({relogins} logins), new version on disk within {worst:.1} s; stayed ready"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_plain_token_makes_the_agent_not_ready_with_the_reason_and_no_hot_loop() {
    let secs = report::scale(8, 60) as u64;
    let server = DevServer::start();
    let admin = server.admin();
    support::load_repo_policies(&admin).await;
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let proxy = FaultProxy::start(&server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(&writer, "openai", "sk-plain-one-1111111111111111").await;
    let token = support::token_with_policies(&admin, &["keysync-agent"]).await;
    let listen = free_listen_addr();
    let agent = Agent::start(&agent_config(d, &listen, ""), &proxy.addr, &token, &["run"], d);
    let key_file = d.join("openai.key");
    assert!(eventually(Duration::from_secs(10), || read(&key_file).starts_with("sk-plain-one")).await);
    let reader = Reader::start(key_file.clone(), |t| t == "sk-plain-one-1111111111111111\n");
    admin.write("auth/token/revoke", serde_json::json!({ "token": token })).await;
    put(&writer, "openai", "sk-plain-two-2222222222222222").await;
    let (_, r0) = proxy.counts();
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || http_get(&listen, "/readyz").0 == 503).await,
        "{}",
        agent.log_text()
    );
    let (_, why) = http_get(&listen, "/readyz");
    assert!(why.contains("VAULT_TOKEN") && why.contains("revoked"), "the reason names the fix: {why}");
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed())).await;
    let window = t0.elapsed().as_secs_f64();
    let (_, r1) = proxy.counts();
    let requests = (r1 - r0) as f64;
    let stats = reader.finish();
    assert_eq!(stats.bad + stats.missing, 0, "the file keeps the last good key: {stats:?}");
    // Each failed pass: the request and one lookup-self; one pass per poll (1 s).
    assert!(requests <= 2.0 * (window + 2.0), "{requests} requests in {window:.0} s: a hot loop");
    assert!(requests >= 2.0, "the agent gave up instead of retrying");
    report::record(
        "Auth and server state",
        &format!("plain VAULT_TOKEN revoked, agent watched for {secs} s"),
        1,
        &format!(
            "/readyz 503: \"{}\"; files kept (0 bad of {} reads); {requests:.0} requests in {window:.0} s ({:.1}/s, request + lookup-self once per 1 s poll)",
            short(&why, 260),
            stats.reads,
            requests / window
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_secret_id_is_reported_with_the_fix_and_a_new_one_is_picked_up() {
    let secs = report::scale(6, 30) as u64;
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let proxy = FaultProxy::start(&server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(&writer, "openai", "sk-sid-one-1111111111111111").await;
    let auth = approle_agent(&server, d, 1).await;
    let listen = free_listen_addr();
    let agent = Agent::start(&agent_config(d, &listen, &auth), &proxy.addr, "", &["run"], d);
    let key_file = d.join("openai.key");
    assert!(
        eventually(Duration::from_secs(10), || read(&key_file).starts_with("sk-sid-one")).await,
        "{}",
        agent.log_text()
    );
    // The only use of the secret_id went into the first login; now the token goes away.
    revoke_approle_tokens(&server).await;
    put(&writer, "openai", "sk-sid-two-2222222222222222").await;
    let (_, r0) = proxy.counts();
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || http_get(&listen, "/readyz").0 == 503).await,
        "{}",
        agent.log_text()
    );
    let (_, why) = http_get(&listen, "/readyz");
    assert!(why.contains("secret_id") && why.contains("issue a new one"), "the reason names the fix: {why}");
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed())).await;
    let window = t0.elapsed().as_secs_f64();
    let requests = (proxy.counts().1 - r0) as f64;
    assert!(read(&key_file).starts_with("sk-sid-one"), "the file keeps the last good key");
    // The refused secret_id is sent once, not every poll: Vault locks a role out after a
    // few refused logins (5 by default), and then even a new secret_id would not work.
    let refused_logins =
        support::faults::scrape(&listen, "keysync_vault_requests_total", &["op=\"login\"", "status=\"400\""]);
    assert_eq!(refused_logins, 1.0, "the used-up secret_id was sent again: {}", agent.log_text());
    // Each failed pass: the request, lookup-self, one login attempt; one pass per poll.
    assert!(requests <= 3.0 * (window + 2.0), "{requests} requests in {window:.0} s: a hot loop");
    let (role_id_ok, new_sid) = {
        let admin = server.admin();
        let sid = admin.write("auth/approle/role/agent/secret-id", serde_json::json!({})).await["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
        (true, sid)
    };
    assert!(role_id_ok);
    std::fs::write(d.join("secret_id"), new_sid).unwrap();
    let t1 = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || read(&key_file).starts_with("sk-sid-two")).await,
        "a new secret_id in the file was not picked up: {}",
        agent.log_text()
    );
    let recovered = t1.elapsed().as_secs_f64();
    report::record(
        "Auth and server state",
        &format!("AppRole secret_id used up (secret_id_num_uses = 1) and the token revoked, {secs} s"),
        1,
        &format!(
            "/readyz 503: \"{}\"; the refused secret_id sent once (no lockout), {requests:.0} requests in {window:.0} s ({:.1}/s); a new secret_id written to the file was used {recovered:.1} s later",
            short(&why, 300),
            requests / window
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_server_is_reported_without_a_hot_loop_and_recovered_after_unseal() {
    let secs = report::scale(8, 60) as u64;
    let server = DevServer::start();
    if server.log.as_os_str().is_empty() {
        panic!("this test seals the server: it needs the dev server the suite starts, not an external one");
    }
    let admin = server.admin();
    let proxy = FaultProxy::start(&server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    put(&writer, "openai", "sk-seal-one-1111111111111111").await;
    let key = server.unseal_key().await;
    let listen = free_listen_addr();
    let agent = Agent::start(&agent_config(d, &listen, ""), &proxy.addr, &server.root_token, &["run"], d);
    let key_file = d.join("openai.key");
    assert!(eventually(Duration::from_secs(10), || read(&key_file).starts_with("sk-seal-one")).await);
    let reader = Reader::start(key_file.clone(), |t| {
        t == "sk-seal-one-1111111111111111\n" || t == "sk-seal-two-2222222222222222\n"
    });
    let (_, r0) = proxy.counts();
    admin.write("sys/seal", serde_json::json!({})).await;
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || http_get(&listen, "/readyz").0 == 503).await,
        "{}",
        agent.log_text()
    );
    let (_, why) = http_get(&listen, "/readyz");
    assert!(why.contains("sealed"), "the reason says the server is sealed: {why}");
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed())).await;
    let window = t0.elapsed().as_secs_f64();
    let requests = (proxy.counts().1 - r0) as f64;
    assert!(read(&key_file).starts_with("sk-seal-one"), "the file keeps the last good key");
    assert!(requests <= window + 3.0, "{requests} requests in {window:.0} s sealed: a hot loop");
    assert!(requests >= 2.0, "the agent stopped trying");

    let (status, body) = admin.try_write("sys/unseal", serde_json::json!({ "key": key })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sealed"], false, "{body}");
    let t1 = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || http_get(&listen, "/readyz").0 == 200).await,
        "not ready after unseal: {}",
        agent.log_text()
    );
    let ready_after = t1.elapsed().as_secs_f64();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    put(&writer, "openai", "sk-seal-two-2222222222222222").await;
    let t2 = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || read(&key_file).starts_with("sk-seal-two")).await,
        "{}",
        agent.log_text()
    );
    let propagated = t2.elapsed().as_secs_f64();
    let stats = reader.finish();
    assert_eq!(stats.bad + stats.missing, 0, "{stats:?}");
    assert!(ready_after <= 3.5, "ready {ready_after:.1} s after unseal");
    report::record(
        "Auth and server state",
        &format!("server sealed (sys/seal) for {secs} s, then unsealed"),
        1,
        &format!(
            "/readyz 503: \"{}\"; files kept (0 bad of {} reads); {requests:.0} requests in {window:.0} s sealed ({:.1}/s); ready again {ready_after:.1} s after unseal, next version on disk {propagated:.1} s after it was written",
            short(&why, 260),
            stats.reads,
            requests / window
        ),
    );
}
