//! Rotation against a real server: generate and command providers, grace and retirement with
//! revocation, validation failures that are never promoted, and racing agents.

mod support;

use std::path::Path;
use std::time::Duration;
use support::clock::TestClock;
use support::{fake_openai, Cli, DevServer};

/// Writes the rotation config beside (not as) the working directory's keysync.toml, so the
/// plain `put` calls that set up a test do not pick it up.
fn config(dir: &Path, body: &str) -> String {
    let path = dir.join("rotation.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn generate_rotation_promotes_keeps_previous_in_grace_then_retires_it() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    let cfg = config(
        dir.path(),
        "[keys.gateway.provider]\ntype = \"generate\"\nprefix = \"sk-gw-\"\nlength = 40\n[keys.gateway.rotation]\ninterval = \"7d\"\ngrace = \"2s\"\n",
    );
    cli.run_with_stdin(&["put", "gateway"], "sk-gw-initial-aaaaaaaaaaaaaaaaaaaa");
    let out = cli.json(&["--config", &cfg, "rotate", "gateway"]);
    assert_eq!(out[0]["outcome"]["result"], "not_due", "{out}");
    let out = cli.json(&["--config", &cfg, "rotate", "gateway", "--force", "--reason", "test"]);
    assert_eq!(out[0]["outcome"]["result"], "rotated", "{out}");
    assert_eq!(out[0]["outcome"]["version"], 2);
    let status = cli.json(&["status", "gateway"]);
    assert_eq!(status[0]["current"]["version"], 2);
    assert_eq!(status[0]["previous"]["version"], 1);
    let key = cli.ok(&["get", "gateway", "--reveal"]);
    assert!(key.starts_with("sk-gw-") && key.trim().len() == 46, "{key}");
    clock.advance(Duration::from_millis(2500)).await;
    cli.json(&["--config", &cfg, "rotate", "gateway"]);
    let status = cli.json(&["status", "gateway"]);
    assert!(status[0]["previous"].is_null(), "previous retired after grace: {status}");
    assert_eq!(status[0]["current"]["version"], 2);
}

#[tokio::test]
async fn command_rotation_revokes_the_previous_key_after_grace() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    let mint = format!(
        "n=$(cat {d}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/n; printf '{{\"api_key\": \"sk-cmd-%s-xxxxxxxxxxxxxxxx\", \"key_id\": \"id-%s\"}}' $n $n"
    );
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
    let cfg = config(
        dir.path(),
        &format!(
            "[keys.svc.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n[keys.svc.rotation]\ninterval = \"7d\"\ngrace = \"1s\"\n"
        ),
    );
    cli.run_with_stdin(&["put", "svc"], "sk-cmd-initial-xxxxxxxxxxxxxxxx");
    cli.ok(&["--config", &cfg, "rotate", "svc", "--force"]); // v2 = id-1
    clock.advance(Duration::from_millis(1500)).await;
    cli.ok(&["--config", &cfg, "rotate", "svc", "--force"]); // retires v1 (no key_id), v3 = id-2
    clock.advance(Duration::from_millis(1500)).await;
    cli.ok(&["--config", &cfg, "rotate", "svc"]); // retires v2 → revokes id-1
    let revoked = std::fs::read_to_string(dir.path().join("revoked")).unwrap_or_default();
    assert_eq!(revoked, "id-1\n", "exactly the retired key was revoked");
    let status = cli.json(&["status", "svc"]);
    assert_eq!(status[0]["current"]["version"], 3);
    assert!(status[0]["previous"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_fails_validation_is_never_promoted_and_is_revoked() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    // A provider endpoint that refuses every key: 401, like OpenAI for a bad key.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await;
        }
    });
    let mint = "printf '{\"api_key\": \"sk-bad-new-key-xxxxxxxxxxxxxxxx\", \"key_id\": \"id-bad\"}'";
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
    let cfg = config(
        dir.path(),
        &format!(
            "[keys.llm.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n[keys.llm.validation]\npreset = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
        ),
    );
    cli.run_with_stdin(&["put", "llm"], "sk-good-current-xxxxxxxxxxxxxxx");
    let (code, stdout, _) = cli.run(&["--config", &cfg, "rotate", "llm", "--force"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAILED") && stdout.contains("current key kept"), "{stdout}");
    let status = cli.json(&["status", "llm"]);
    assert_eq!(status[0]["current"]["version"], 1, "the failed key is not current");
    assert_eq!(status[0]["failed_versions"], serde_json::json!([2]));
    assert!(status[0]["pending"].is_null());
    assert_eq!(std::fs::read_to_string(dir.path().join("revoked")).unwrap(), "id-bad\n");
    let audit = cli.json(&["audit", "llm"]);
    assert_eq!(audit["versions"][0]["destroyed"], true, "refused key data destroyed: {audit}");
    assert!(audit["versions"][0]["fingerprint"].as_str().is_some_and(|f| f.starts_with("sha256:")));
    assert_eq!(cli.ok(&["get", "llm", "--reveal"]).trim(), "sk-good-current-xxxxxxxxxxxxxxx");
}

#[tokio::test]
async fn three_agents_rotating_the_same_due_keys_make_one_version_each() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    let mut body = String::new();
    for i in 0..5 {
        cli.run_with_stdin(&["put", &format!("k{i}")], &format!("sk-race-{i}-aaaaaaaaaaaaaaaaaaaa"));
        body.push_str(&format!("[keys.k{i}.provider]\ntype = \"generate\"\n[keys.k{i}.rotation]\ninterval = \"4s\"\n"));
    }
    let cfg = config(dir.path(), &body);
    clock.advance(Duration::from_millis(4200)).await;
    let mut children = Vec::new();
    for _ in 0..3 {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keysync"));
        cmd.args(["--config", &cfg, "rotate", "--due", "--output", "json"])
            .env("VAULT_ADDR", &server.addr)
            .env("VAULT_TOKEN", &server.root_token)
            .env("KEYSYNC_LOG", "trace")
            .envs([clock.env()])
            .envs(support::test_ca().map(|ca| ("VAULT_CACERT", ca)))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        support::leak::check(&String::from_utf8_lossy(&out.stdout), "stdout of rotate --due");
        support::leak::check(&String::from_utf8_lossy(&out.stderr), "trace log of rotate --due");
    }
    for i in 0..5 {
        let status = cli.json(&["status", &format!("k{i}")]);
        assert_eq!(status[0]["latest_version"], 2, "k{i}: exactly one new version: {status}");
        assert_eq!(status[0]["current"]["version"], 2);
    }
    // `rotate --due` sends index entries in batches: every rotation still reaches the index
    // agents poll, with the fingerprint `status` shows.
    let store = support::key_store(&server, &server.root_token, Duration::from_secs(60), "test").await;
    let index = store.kv().index().read().await.unwrap();
    for i in 0..5 {
        let status = cli.json(&["status", &format!("k{i}")]);
        let entry = &index.entries[&format!("k{i}")];
        assert_eq!(entry.current, Some(2), "k{i}: {entry:?}");
        assert_eq!(entry.previous, Some(1), "k{i}: {entry:?}");
        assert_eq!(entry.fingerprint.as_deref(), status[0]["current"]["fingerprint"].as_str(), "k{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_rotation_mints_validates_and_deletes_retired_service_accounts() {
    let server = DevServer::start();
    let (base, accounts) = fake_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let mut cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    cli.secrets = vec![fake_openai::ADMIN_KEY.into(), "secretpart".into()];
    std::fs::write(dir.path().join("admin.key"), fake_openai::ADMIN_KEY).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[keys.openai.provider]\ntype = \"openai\"\nproject_id = \"proj_test\"\nadmin_key_file = \"{}/admin.key\"\nbase_url = \"{base}\"\n\
             [keys.openai.validation]\npreset = \"openai\"\nbase_url = \"{base}/v1\"\n\
             [keys.openai.rotation]\ninterval = \"30d\"\ngrace = \"1s\"\n",
            dir.path().display()
        ),
    );
    cli.run_with_stdin(&["put", "openai"], "sk-proj-handmade-xxxxxxxxxxxxxxxx");
    let out = cli.json(&["--config", &cfg, "rotate", "openai", "--force"]);
    assert_eq!(out[0]["outcome"]["result"], "rotated", "{out}");
    clock.advance(Duration::from_millis(1300)).await;
    let out = cli.json(&["--config", &cfg, "rotate", "openai", "--force"]);
    assert_eq!(out[0]["outcome"]["version"], 3, "{out}");
    clock.advance(Duration::from_millis(1300)).await;
    cli.json(&["--config", &cfg, "rotate", "openai"]); // grace of v2 over: retire it
    {
        let a = accounts.lock().unwrap();
        assert_eq!(a.accounts.len(), 2, "one service account per rotation");
        assert!(a.accounts["svc_acct_1"].1, "the retired key's service account was deleted");
        assert!(!a.accounts["svc_acct_2"].1, "the current key's service account is live");
    }
    let current = cli.ok(&["get", "openai", "--reveal"]);
    assert_eq!(current.trim(), accounts.lock().unwrap().accounts["svc_acct_2"].0);
    let got = cli.json(&["get", "openai"]);
    assert_eq!(got["fields"]["key_id"], "svc_acct_2");
    assert_eq!(got["fields"]["project_id"], "proj_test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_put_key_that_the_provider_refuses_is_not_stored() {
    let server = DevServer::start();
    let (base, accounts) = fake_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let mut cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    cli.secrets = vec!["sk-typo-key-xxxxxxxxxxxxxxxxxx".into()];
    let cfg = config(
        dir.path(),
        &format!("[keys.openai.provider]\ntype = \"manual\"\n[keys.openai.validation]\npreset = \"openai\"\nbase_url = \"{base}/v1\"\n"),
    );
    let (code, _, stderr) = cli.run_with_stdin(&["--config", &cfg, "put", "openai"], "sk-typo-key-xxxxxxxxxxxxxxxxxx");
    assert_eq!(code, 1);
    assert!(stderr.contains("not stored") && stderr.contains("refused"), "{stderr}");
    let (status, _) = server.admin().try_read("secret/metadata/keysync/openai").await;
    assert_eq!(status, 404, "nothing written");
    // A key the provider knows goes through.
    std::fs::write(dir.path().join("admin.key"), fake_openai::ADMIN_KEY).unwrap();
    let minted = keysync::provider::OpenAiConfig {
        project_id: "proj_x".into(),
        admin_key_file: dir.path().join("admin.key"),
        base_url: base.clone(),
        name_prefix: "t".into(),
        timeout: keysync::config::HumanDuration::from_secs(5),
    }
    .mint_for("openai")
    .await
    .unwrap();
    assert_eq!(accounts.lock().unwrap().accounts.len(), 1);
    let (code, _, stderr) = cli.run_with_stdin(&["--config", &cfg, "put", "openai"], minted.api_key.expose());
    assert_eq!(code, 0, "{stderr}");
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_minting_leaves_no_orphan_service_account() {
    let server = DevServer::start();
    let (base, accounts) = fake_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    std::fs::write(dir.path().join("admin.key"), fake_openai::ADMIN_KEY).unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[rotation]\nadopt_after = \"1s\"\n[keys.openai.provider]\ntype = \"openai\"\nproject_id = \"proj_test\"\nadmin_key_file = \"{}/admin.key\"\nbase_url = \"{base}\"\n[keys.openai.rotation]\ninterval = \"30d\"\n",
            dir.path().display()
        ),
    );
    cli.run_with_stdin(&["put", "openai"], "sk-proj-handmade-xxxxxxxxxxxxxxxx");
    for run in 0..3 {
        let out = cli
            .command(&["--config", &cfg, "rotate", "openai", "--force"])
            .env("KEYSYNC_FAILPOINT", "after_mint")
            .output()
            .unwrap();
        support::leak::check(&String::from_utf8_lossy(&out.stderr), "trace log of a crashed rotate");
        assert!(!out.status.success(), "run {run}: the failpoint should have killed keysync");
    }
    // Each crash minted one account; a later crashed run may already have cleaned up older
    // orphans (adopt_after is 1 s), so at least the last one is still there.
    assert_eq!(accounts.lock().unwrap().accounts.len(), 3, "three accounts minted");
    assert!(accounts.lock().unwrap().accounts.values().any(|(_, d)| !d), "an orphan is live before cleanup");
    clock.advance(Duration::from_millis(2100)).await;
    let out = cli.json(&["--config", &cfg, "rotate", "openai", "--force"]);
    assert_eq!(out[0]["outcome"]["result"], "rotated", "{out}");
    let a = accounts.lock().unwrap();
    let live: Vec<&String> = a.accounts.iter().filter(|(_, (_, d))| !d).map(|(id, _)| id).collect();
    assert_eq!(live, vec!["svc_acct_4"], "only the stored key's service account is left");
    let status = cli.json(&["status", "openai"]);
    assert_eq!(status[0]["latest_version"], 2, "exactly one promotion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_anthropic_key_is_set_inactive_after_grace() {
    use axum::extract::{Path as AxPath, State};
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::{Arc, Mutex};
    type Log = Arc<Mutex<Vec<String>>>;
    async fn update(
        State(log): State<Log>,
        AxPath(id): AxPath<String>,
        h: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        let admin = h.get("x-api-key").and_then(|v| v.to_str().ok()) == Some("sk-ant-admin-test-000000");
        let version = h.get("anthropic-version").is_some();
        if !admin || !version {
            return (StatusCode::UNAUTHORIZED, r#"{"type":"error","error":{"type":"authentication_error"}}"#.into());
        }
        let status =
            serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["status"].as_str().map(String::from));
        log.lock().unwrap().push(format!("{id}={}", status.unwrap_or_default()));
        (StatusCode::OK, format!(r#"{{"id":"{id}","type":"api_key","status":"inactive"}}"#))
    }
    let log: Log = Arc::default();
    let app = axum::Router::new()
        .route("/v1/organizations/api_keys/{id}", axum::routing::post(update))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let mut cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    cli.secrets = vec!["sk-ant-admin-test-000000".into()];
    std::fs::write(dir.path().join("admin.key"), "sk-ant-admin-test-000000").unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[keys.claude.provider]\ntype = \"manual\"\nrevoke = {{ anthropic = {{ admin_key_file = \"{}/admin.key\", base_url = \"{base}\" }} }}\n[keys.claude.rotation]\nmax_age = \"90d\"\ngrace = \"1s\"\n",
            dir.path().display()
        ),
    );
    cli.run_with_stdin(
        &["--config", &cfg, "put", "claude", "--field", "key_id=apikey_01"],
        "sk-ant-api03-first-xxxxxxxxxxxx",
    );
    cli.run_with_stdin(
        &["--config", &cfg, "put", "claude", "--field", "key_id=apikey_02"],
        "sk-ant-api03-second-xxxxxxxxxxx",
    );
    clock.advance(Duration::from_millis(1300)).await;
    let out = cli.json(&["--config", &cfg, "rotate", "claude"]);
    assert_eq!(out[0]["outcome"]["result"], "not_due", "manual keys are never minted: {out}");
    assert_eq!(*log.lock().unwrap(), vec!["apikey_01=inactive".to_string()], "the retired key was set inactive");
    let status = cli.json(&["status", "claude"]);
    assert!(status[0]["previous"].is_null());
    let (code, stdout, _) = cli.run(&["--config", &cfg, "rotate", "claude", "--force"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("OVERDUE") && stdout.contains("keysync put claude"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_validation_keeps_the_key_pending_and_backs_off() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let hits = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = hits.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            h.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await;
        }
    });
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    let cfg = config(
        dir.path(),
        &format!("[keys.llm.provider]\ntype = \"generate\"\n[keys.llm.validation]\npreset = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"),
    );
    cli.run_with_stdin(&["put", "llm"], "sk-current-good-xxxxxxxxxxxxxxx");
    let out = cli.json(&["--config", &cfg, "rotate", "llm", "--force"]);
    assert_eq!(out[0]["outcome"]["result"], "pending", "{out}");
    let after_first = hits.load(Ordering::Relaxed);
    assert!(after_first >= 1, "the validator was asked");
    let status = cli.json(&["status", "llm"]);
    assert_eq!(status[0]["current"]["version"], 1, "an undecided key is not promoted");
    assert_eq!(status[0]["pending"]["version"], 2);
    let meta = server.admin().read("secret/metadata/keysync/llm").await;
    assert!(meta["data"]["custom_metadata"]["retry"].as_str().is_some_and(|r| r.starts_with("v2:1:")), "{meta}");
    // Within the backoff the next run does not ask the provider again.
    let out = cli.json(&["--config", &cfg, "rotate", "llm"]);
    assert_eq!(out[0]["outcome"]["result"], "pending", "{out}");
    assert!(out[0]["outcome"]["why"].as_str().unwrap().contains("next try"), "{out}");
    assert_eq!(hits.load(Ordering::Relaxed), after_first, "backing off: no new validation request");
    assert_eq!(cli.ok(&["get", "llm", "--reveal"]).trim(), "sk-current-good-xxxxxxxxxxxxxxx");
}

#[tokio::test]
async fn a_hand_written_version_is_adopted_only_when_the_policy_says_so() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new(); // grace and intervals pass by advancing it
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    cli.run_with_stdin(&["put", "svc"], "sk-keysync-first-xxxxxxxxxxxxxxx");
    admin
        .write("secret/data/keysync/svc", serde_json::json!({"data": {"api_key": "sk-by-hand-second-xxxxxxxxxxxxx"}}))
        .await;
    let report = config(dir.path(), "[keys.svc.provider]\ntype = \"manual\"\n[keys.svc.rotation]\nmax_age = \"90d\"\n");
    cli.json(&["--config", &report, "rotate", "svc"]);
    let status = cli.json(&["status", "svc"]);
    assert_eq!(status[0]["current"]["version"], 1, "reported, not adopted");
    assert_eq!(status[0]["external_versions"], serde_json::json!([2]));
    let adopt = config(
        dir.path(),
        "[keys.svc.provider]\ntype = \"manual\"\n[keys.svc.rotation]\nmax_age = \"90d\"\nadopt_external = true\n",
    );
    let out = cli.json(&["--config", &adopt, "rotate", "svc"]);
    assert_eq!(out[0]["outcome"]["result"], "rotated", "{out}");
    let status = cli.json(&["status", "svc"]);
    assert_eq!(status[0]["current"]["version"], 2, "adopted and promoted");
    assert_eq!(status[0]["previous"]["version"], 1);
    assert_eq!(status[0]["external_versions"], serde_json::json!([]));
}

/// A command provider that records how many mints run at once: each mint adds a file to
/// `inflight/` before counting it and removes it after a pause, so the count it writes to
/// `seen` is never more than the mints truly in flight.
fn counting_mint(dir: &Path, pause: &str) -> String {
    format!(
        "d={d}; mkdir -p $d/inflight; t=$d/inflight/$$; touch $t; ls $d/inflight | wc -l >> $d/seen; sleep {pause}; rm -f $t; printf '{{\"api_key\": \"sk-conc-%s-xxxxxxxxxxxxxxxxxxxx\"}}' $$",
        d = dir.display()
    )
}

/// The most mints a `counting_mint` provider saw at once.
fn most_in_flight(dir: &Path) -> usize {
    let seen = std::fs::read_to_string(dir.join("seen")).unwrap_or_default();
    seen.lines().filter_map(|l| l.trim().parse().ok()).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_due_rotates_keys_side_by_side_but_never_more_than_eight_at_once() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    let mint = counting_mint(dir.path(), "0.5");
    let mut body = String::new();
    for i in 0..20 {
        // Declared, not in Vault yet: due, so `--due` creates each one.
        body.push_str(&format!("[keys.c{i:02}.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\n"));
    }
    let cfg = config(dir.path(), &body);
    let out = cli.json(&["--config", &cfg, "rotate", "--due"]);
    let rows = out.as_array().unwrap();
    assert_eq!(rows.len(), 20, "{out}");
    assert!(rows.iter().all(|r| r["outcome"]["result"] == "rotated" && r["outcome"]["version"] == 1), "{out}");
    let most = most_in_flight(dir.path());
    eprintln!("most mints in flight at once: {most}");
    assert!(most <= 8, "{most} mints at once: the bound is 8");
    assert!(most >= 2, "the keys were rotated one after the other ({most} at once at most)");
}

/// `KEYSYNC_TEST_CLOCK` moves keysync's time only in a `test-clock` build (tests, never
/// release: src/clock.rs refuses to compile the feature without debug assertions).
/// Eight days on, a key with a 7-day interval is due there; any other build ignores the file.
#[tokio::test]
async fn the_test_clock_moves_keysync_only_in_a_test_clock_build() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let clock = TestClock::new();
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    let cfg = config(dir.path(), "[keys.gw.provider]\ntype = \"generate\"\n[keys.gw.rotation]\ninterval = \"7d\"\n");
    cli.run_with_stdin(&["put", "gw"], "sk-gw-clock-aaaaaaaaaaaaaaaaaaaaaaaa");
    let out = cli.json(&["--config", &cfg, "rotate", "gw"]);
    assert_eq!(out[0]["outcome"]["result"], "not_due", "{out}");
    clock.jump_file(Duration::from_secs(8 * 24 * 3600));
    let out = cli.json(&["--config", &cfg, "rotate", "gw"]);
    let want = if support::clock::VIRTUAL { "rotated" } else { "not_due" };
    assert_eq!(out[0]["outcome"]["result"], want, "test-clock feature built in: {}: {out}", support::clock::VIRTUAL);
}

/// Every request one `keysync rotate NAME` makes, from the server's audit log (method and
/// path), for a `generate` key: the rotation itself — reading the key, minting, the CAS write,
/// the promotion, the index update — costs at most 6 requests, and the rest is the process's
/// one-time set-up (token lookup, KV mount check, finding the index root), listed and bounded
/// too. Twice: a first rotation, and one after grace ended (the retirement of the previous
/// version rides on the promotion).
#[tokio::test]
async fn one_rotation_costs_at_most_six_vault_requests() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    let audit = dir.path().join("audit.log");
    server
        .admin()
        .write(
            "sys/audit/file",
            serde_json::json!({ "type": "file", "options": { "file_path": audit.display().to_string() } }),
        )
        .await;
    let cfg = config(
        dir.path(),
        "[keys.gateway.provider]\ntype = \"generate\"\nprefix = \"sk-gw-\"\n[keys.gateway.rotation]\ninterval = \"1s\"\ngrace = \"1s\"\n",
    );
    cli.run_with_stdin(&["put", "gateway"], "sk-gw-initial-aaaaaaaaaaaaaaaaaaaa");
    let requests_since = |offset: u64| -> Vec<(String, String)> {
        let text = std::fs::read(&audit).unwrap();
        String::from_utf8_lossy(&text[offset as usize..])
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim_matches('\0')).ok())
            .filter(|e| e["type"] == "request")
            .map(|e| {
                (
                    e["request"]["operation"].as_str().unwrap_or("?").to_string(),
                    e["request"]["path"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    };
    for round in 1..=2u64 {
        // Due (interval 1 s) and, the second time, the previous version's grace is over.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let before = std::fs::metadata(&audit).unwrap().len();
        let out = cli.json(&["--config", &cfg, "rotate", "gateway"]);
        assert_eq!(out[0]["outcome"]["result"], "rotated", "round {round}: {out}");
        let all = requests_since(before);
        let listing: Vec<String> = all.iter().map(|(op, path)| format!("{op} {path}")).collect();
        let (rotation, setup): (Vec<_>, Vec<_>) = all
            .iter()
            .partition(|(op, path)| path.contains("/gateway") || (path.contains("_index.d/") && op != "read"));
        assert!(
            rotation.len() <= 6,
            "round {round}: the rotation made {} requests (at most 6):\n{}",
            rotation.len(),
            listing.join("\n")
        );
        // Once per process: token lookup, KV v2 mount check, the index root and legacy check
        // before the first index write.
        assert!(
            setup.iter().all(|(_, p)| p.starts_with("auth/token/") || p.starts_with("sys/") || p.contains("_index")),
            "round {round}: unexpected requests:\n{}",
            listing.join("\n")
        );
        assert!(setup.len() <= 4, "round {round}: {} set-up requests:\n{}", setup.len(), listing.join("\n"));
        let status = cli.json(&["status", "gateway"]);
        assert_eq!(status[0]["current"]["version"], round + 1, "{status}");
        assert_eq!(status[0]["previous"]["version"], round, "the promoted key's predecessor is in grace: {status}");
        assert!(status[0]["pending"].is_null() && status[0]["interrupted_rotation"].is_null(), "{status}");
        eprintln!(
            "round {round}: {} requests for the rotation, {} set-up:\n{}",
            rotation.len(),
            setup.len(),
            listing.join("\n")
        );
    }
    // What agents read: the index announces the new current version.
    let shard = keysync::store::shard_of("gateway");
    let entry = server.admin().read(&format!("secret/data/keysync/_index.d/{shard:02x}")).await;
    assert_eq!(entry["data"]["data"]["gateway"]["current"], 3, "index entry updated: {entry}");
}

/// Rotating again while the previous key is in its grace period revokes that key before the
/// promotion, whose PATCH replaces `previous`. If the promotion is then refused (here another
/// agent marks the new key revoked while it is being validated), the revoked key must not stay
/// in the state as `previous`, where a sink with `include_previous` would still hand it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_refused_after_the_previous_key_was_revoked_leaves_no_revoked_previous() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let clock = TestClock::new();
    let cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    let peer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "peer").await;
    // The key check: the third minted key is marked revoked (as a peer retiring it would) before
    // the check answers 200, so its promotion must be refused.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let bearer = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("authorization: Bearer ").or_else(|| l.strip_prefix("Authorization: Bearer "))
                })
                .map(|k| k.trim().to_string());
            if let Some(key) = bearer.filter(|k| k.starts_with("sk-cmd-3-")) {
                let fp = keysync::secret::fingerprint(key.as_bytes());
                let name = keysync::store::KeyName::parse("svc").unwrap();
                peer.update_state(&name, |_, s| {
                    s.mark_revoked(&fp);
                    Ok(())
                })
                .await
                .expect("mark the new key revoked");
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await;
        }
    });
    let mint = format!(
        "n=$(cat {d}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/n; printf '{{\"api_key\": \"sk-cmd-%s-xxxxxxxxxxxxxxxx\", \"key_id\": \"id-%s\"}}' $n $n"
    );
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
    let cfg = config(
        dir.path(),
        &format!(
            "[keys.svc.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n[keys.svc.validation]\npreset = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n[keys.svc.rotation]\ninterval = \"7d\"\ngrace = \"1h\"\n"
        ),
    );
    cli.run_with_stdin(&["put", "svc"], "sk-cmd-initial-xxxxxxxxxxxxxxxx");
    cli.ok(&["--config", &cfg, "rotate", "svc", "--force"]); // v2 = id-1, previous v1
    cli.ok(&["--config", &cfg, "rotate", "svc", "--force"]); // v3 = id-2, previous v2 (id-1) in grace
    let status = cli.json(&["status", "svc"]);
    assert_eq!(
        (status[0]["current"]["version"].as_u64(), status[0]["previous"]["version"].as_u64()),
        (Some(3), Some(2)),
        "{status}"
    );
    // v4 = id-3: v2 is revoked (rotating again within grace), then v4's promotion is refused.
    let (_, stdout, stderr) = cli.run(&["--config", &cfg, "rotate", "svc", "--force"]);
    let status = cli.json(&["status", "svc"]);
    assert_eq!(status[0]["current"]["version"], 3, "the refused key is not current: {status}\n{stdout}\n{stderr}");
    let revoked = std::fs::read_to_string(dir.path().join("revoked")).unwrap_or_default();
    assert!(revoked.lines().any(|l| l == "id-1"), "v2 was revoked before the promotion: {revoked:?}");
    assert!(
        status[0]["previous"].is_null(),
        "v2's key was revoked, so it is no longer the previous key: {status}\n{stdout}\n{stderr}"
    );
    assert_eq!(cli.ok(&["get", "svc", "--reveal"]).trim(), "sk-cmd-2-xxxxxxxxxxxxxxxx");
}
