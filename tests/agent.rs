//! `keysync run` / `exec` against a real server: propagation within a poll, grace, unchanged
//! content, outages through a cuttable proxy, broken sinks, SIGHUP, --once, exec restarts.

mod support;

use keysync::secret::Secret;
use keysync::store::{KeyData, KeyName, KeyStore, PutOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::scenario::Scenario;
use support::{eventually, eventually_async, Agent, DevServer, Proxy};

async fn store(server: &DevServer, grace: Duration) -> KeyStore {
    support::key_store(server, &server.root_token, grace, "test-writer").await
}

async fn put(store: &KeyStore, name: &str, key: &str) {
    let opts = PutOptions { promote: true, reason: "test".into(), keep_fields: true };
    support::leak::register(key);
    store.put(&KeyName::parse(name).unwrap(), KeyData::new(Secret::new(key)), &opts).await.unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn a_promoted_key_reaches_its_files_within_one_poll_and_previous_follows_grace() {
    let server = DevServer::start();
    let grace = Duration::from_secs(4);
    let writer = store(&server, grace).await;
    let sc = Scenario::new(&server).sink_with("openai", "out/openai.key", "include_previous = true").toml(
        r#"[keys.openai.on_change]
command = ["sh", "-c", "echo $KEYSYNC_KEY $KEYSYNC_VERSION $KEYSYNC_FINGERPRINT >> {dir}/hook.log"]
[[sinks]]
path = "{dir}/out/app.json"
format = "json"
keys = ["openai"]
"#,
    );
    let d = sc.d();
    put(&writer, "openai", "sk-agent-one-1111111111111111").await;
    let key_file = d.join("out/openai.key");
    let prev_file = d.join("out/openai.key.previous");
    let agent = sc.run();
    assert!(
        eventually(Duration::from_secs(10), || read(&key_file).trim() == "sk-agent-one-1111111111111111").await,
        "{}",
        agent.log_text()
    );
    assert!(sc.ready(Duration::from_secs(3)).await);
    assert_eq!(std::fs::metadata(&key_file).unwrap().mode() & 0o777, 0o600);

    // Promotion reaches the file within one poll (1 s) plus the render.
    let t0 = Instant::now();
    put(&writer, "openai", "sk-agent-two-2222222222222222").await;
    assert!(eventually(Duration::from_secs(3), || read(&key_file).trim() == "sk-agent-two-2222222222222222").await);
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(1600), "propagation took {took:?}");
    assert_eq!(read(&prev_file).trim(), "sk-agent-one-1111111111111111", "previous rendered during grace");
    // The JSON sink is written after the raw one in the same pass: wait for it too.
    let app_json = || serde_json::from_str::<serde_json::Value>(&read(&d.join("out/app.json"))).unwrap_or_default();
    assert!(eventually(Duration::from_secs(2), || app_json()["openai"]["version"] == 2).await, "{}", app_json());
    assert_eq!(app_json()["openai"]["version"], 2, "multi-key JSON sinks are keyed by name");
    // The first render wrote the file (hook for v1), the promotion rewrote it (hook for v2).
    assert!(
        eventually(Duration::from_secs(3), || read(&d.join("hook.log")).lines().count() == 2).await,
        "{}",
        read(&d.join("hook.log"))
    );
    let hook = read(&d.join("hook.log"));
    assert!(hook.starts_with("openai 1 sha256:") && hook.contains("\nopenai 2 sha256:"), "{hook}");
    assert!(!hook.contains("sk-agent"), "hooks get the fingerprint, never the key");

    // After grace the previous file goes away (the agent's clock moves past it).
    sc.advance(grace).await;
    assert!(eventually(Duration::from_secs(8), || !prev_file.exists()).await, "previous not removed after grace");
    // Removing the .previous file is a change too: its hook runs right after; let it finish.
    assert!(eventually(Duration::from_secs(3), || read(&d.join("hook.log")).lines().count() == 3).await);

    // Identical content: a disable/enable round trip re-reads the key but writes nothing.
    let before = std::fs::metadata(&key_file).unwrap();
    let hooks_before = read(&d.join("hook.log")).lines().count();
    let name = KeyName::parse("openai").unwrap();
    writer.set_disabled(&name, true).await.unwrap();
    sc.next_passes(2).await; // one whole pass saw the key disabled
    assert_eq!(read(&key_file).trim(), "sk-agent-two-2222222222222222", "a disabled key keeps the last good file");
    writer.set_disabled(&name, false).await.unwrap();
    sc.next_passes(2).await;
    let after = std::fs::metadata(&key_file).unwrap();
    assert_eq!(before.ino(), after.ino());
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    assert_eq!(read(&d.join("hook.log")).lines().count(), hooks_before, "no hook for unchanged content");

    let metrics = sc.metrics();
    assert!(metrics.contains("keysync_key_current_version{key=\"openai\"} 2"), "{metrics}");
    assert!(metrics.contains("keysync_vault_requests_total{op=\"index_root_read\""), "{metrics}");
    assert!(metrics.contains("\nkeysync_ready 1\n"), "a ready agent says so in its metrics: {metrics}");
    let log = agent.log_text();
    assert!(!log.contains("sk-agent-one-1111") && !log.contains("sk-agent-two-2222"), "key in logs");
    assert!(!log.contains(&server.root_token), "token in logs");
}

#[tokio::test]
async fn steady_polls_cost_one_request_whatever_the_key_count() {
    let server = DevServer::start();
    let writer = store(&server, Duration::from_secs(60)).await;
    let mut sc = Scenario::new(&server).poll("500ms");
    for i in 0..20 {
        put(&writer, &format!("k{i}"), &format!("sk-many-{i:02}-xxxxxxxxxxxxxxxx")).await;
        sc = sc.sink(&format!("k{i}"), &format!("out/k{i}"));
    }
    let _agent = sc.run();
    assert!(sc.ready(Duration::from_secs(10)).await);
    // Let the first index poll after the full start-up read go by.
    sc.next_passes(2).await;
    let count = || sc.scrape("keysync_vault_requests_total", &[]) as u64;
    let (start, p0) = (count(), sc.passes());
    sc.next_passes(8).await;
    let (end, polls) = (count(), sc.passes() - p0);
    // One index read per poll for 20 keys (one more for a poll in flight at either end).
    assert!(end - start <= polls + 1, "steady state made {} requests in {polls} polls for 20 keys", end - start);
    assert!(end - start + 1 >= polls, "{} requests in {polls} polls", end - start);
}

#[tokio::test]
async fn a_change_reads_the_previous_version_only_for_sinks_that_render_it() {
    let server = DevServer::start();
    let writer = store(&server, Duration::from_secs(3600)).await;
    let sc = Scenario::new(&server).poll("300ms").sink("plain", "plain.key").sink_with(
        "withprev",
        "withprev.key",
        "include_previous = true",
    );
    let d = sc.d();
    put(&writer, "plain", "sk-plain-one-1111111111111111").await;
    put(&writer, "withprev", "sk-prev-one-11111111111111111").await;
    let _agent = sc.run();
    assert!(sc.ready(Duration::from_secs(10)).await);
    let kv_reads = || sc.scrape("keysync_vault_requests_total", &["op=\"kv_read\""]) as u64;
    let before = kv_reads();
    put(&writer, "plain", "sk-plain-two-2222222222222222").await;
    assert!(
        eventually(Duration::from_secs(5), || read(&d.join("plain.key")).trim() == "sk-plain-two-2222222222222222")
            .await
    );
    sc.next_passes(2).await;
    assert_eq!(kv_reads() - before, 1, "a key without include_previous: its new current version only");

    let before = kv_reads();
    put(&writer, "withprev", "sk-prev-two-22222222222222222").await;
    let prev_file = d.join("withprev.key.previous");
    assert!(eventually(Duration::from_secs(5), || read(&prev_file).trim() == "sk-prev-one-11111111111111111").await);
    sc.next_passes(2).await;
    assert_eq!(kv_reads() - before, 2, "include_previous: current and previous");
    assert_eq!(read(&d.join("withprev.key")).trim(), "sk-prev-two-22222222222222222");
}

#[tokio::test]
async fn an_outage_leaves_files_intact_and_the_agent_catches_up_within_a_poll() {
    let server = DevServer::start();
    let writer = store(&server, Duration::from_secs(60)).await;
    let proxy = Proxy::start(&server.addr).await;
    let sc = Scenario::new(&server).via(&proxy.addr).toml("[vault]\ntimeout = \"2s\"").sink("openai", "openai.key");
    put(&writer, "openai", "sk-outage-one-11111111111111").await;
    let key_file = sc.path("openai.key");
    let agent = sc.run();
    assert!(eventually(Duration::from_secs(10), || read(&key_file).trim() == "sk-outage-one-11111111111111").await);

    proxy.set_down(true);
    let connections_before = proxy.connections.load(std::sync::atomic::Ordering::Relaxed);
    put(&writer, "openai", "sk-outage-two-22222222222222").await;
    assert!(eventually(Duration::from_secs(8), || sc.readyz().0 == 503).await, "readyz should report the outage");
    let (_, why) = sc.readyz();
    assert!(why.contains("Vault"), "{why}");
    // Two more failed passes with the key changed behind the outage.
    let failures = sc.scrape("keysync_sync_failures_total", &[]);
    assert!(
        eventually(Duration::from_secs(8), || sc.scrape("keysync_sync_failures_total", &[]) >= failures + 2.0).await
    );
    assert_eq!(read(&key_file).trim(), "sk-outage-one-11111111111111", "file intact during the outage");
    let attempts = proxy.connections.load(std::sync::atomic::Ordering::Relaxed) - connections_before;
    assert!(attempts <= 15, "{attempts} connection attempts in ~6 s of outage: not backing off");

    proxy.set_down(false);
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || read(&key_file).trim() == "sk-outage-two-22222222222222").await,
        "{}",
        agent.log_text()
    );
    assert!(t0.elapsed() < Duration::from_millis(2500), "caught up after {:?}", t0.elapsed());
    assert!(sc.ready(Duration::from_secs(3)).await);
}

#[tokio::test]
async fn a_broken_sink_fails_alone_and_once_reports_it() {
    let server = DevServer::start();
    let writer = store(&server, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(&writer, "openai", "sk-once-aaaaaaaaaaaaaaaaaaaa").await;
    std::fs::write(d.join("not-a-dir"), "x").unwrap();
    let good = format!("[agent]\nlisten = \"off\"\n[[keys.openai.sinks]]\npath = \"{0}/good.key\"\n", d.display());
    let config = d.join("ok.toml");
    std::fs::write(&config, &good).unwrap();
    let mut agent = Agent::start(&config, &server.addr, &server.root_token, &["run", "--once"], d);
    assert_eq!(agent.wait(Duration::from_secs(20)), Some(0), "{}", agent.log_text());
    assert_eq!(read(&d.join("good.key")).trim(), "sk-once-aaaaaaaaaaaaaaaaaaaa");

    let bad = format!("{good}[[keys.openai.sinks]]\npath = \"{0}/not-a-dir/openai.key\"\n", d.display());
    let config = d.join("bad.toml");
    std::fs::write(&config, bad).unwrap();
    std::fs::remove_file(d.join("good.key")).unwrap();
    let mut agent = Agent::start(&config, &server.addr, &server.root_token, &["run", "--once"], d);
    assert_eq!(agent.wait(Duration::from_secs(20)), Some(1));
    let log = agent.log_text();
    assert!(log.contains("not-a-dir/openai.key"), "{log}");
    assert_eq!(read(&d.join("good.key")).trim(), "sk-once-aaaaaaaaaaaaaaaaaaaa", "the other sink still works");

    let missing = format!("[agent]\nlisten = \"off\"\n[[keys.nokey.sinks]]\npath = \"{0}/nokey\"\n", d.display());
    let config = d.join("missing.toml");
    std::fs::write(&config, missing).unwrap();
    let mut agent = Agent::start(&config, &server.addr, &server.root_token, &["run", "--once"], d);
    assert_eq!(agent.wait(Duration::from_secs(20)), Some(1), "a missing key is not a full render");
    assert!(!d.join("nokey").exists());
}

#[tokio::test]
async fn sighup_reloads_the_config_and_sigterm_exits_cleanly() {
    let server = DevServer::start();
    let writer = store(&server, Duration::from_secs(60)).await;
    put(&writer, "openai", "sk-hup-aaaaaaaaaaaaaaaaaaaaa").await;
    put(&writer, "deepseek", "sk-hup-bbbbbbbbbbbbbbbbbbbbb").await;
    let sc = Scenario::new(&server).poll("30s").no_listen().sink("openai", "openai.key");
    let mut agent = sc.run();
    assert!(eventually(Duration::from_secs(10), || sc.path("openai.key").exists()).await);
    let sc = sc.sink("deepseek", "deepseek.key");
    let (d, config) = (sc.d(), sc.write_config());
    agent.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || read(&d.join("deepseek.key")).trim() == "sk-hup-bbbbbbbbbbbbbbbbbbbbb")
            .await,
        "{}",
        agent.log_text()
    );
    // A broken config on SIGHUP keeps the old one running.
    std::fs::write(&config, "[agent\n").unwrap();
    agent.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || agent
            .log_text()
            .contains("the reloaded config cannot be used; keeping the old config"))
        .await,
        "{}",
        agent.log_text()
    );
    assert!(agent.child.try_wait().unwrap().is_none(), "agent died on a bad reload");
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn exec_restarts_the_child_with_the_new_key() {
    let server = DevServer::start();
    let writer = store(&server, Duration::from_secs(60)).await;
    let sc = Scenario::new(&server)
        .no_listen()
        .toml("[exec]\nenv = { OPENAI_API_KEY = \"openai\" }\nkill_timeout = \"2s\"\n");
    let d = sc.d();
    put(&writer, "openai", "sk-exec-one-1111111111111111").await;
    let script = format!(
        "echo \"$OPENAI_API_KEY\" >> {0}/seen; [ -z \"$VAULT_TOKEN\" ] || echo leaked >> {0}/seen; trap 'exit 0' TERM; while true; do sleep 0.1; done",
        d.display()
    );
    let mut agent = sc.start(&["exec", "--", "sh", "-c", &script]);
    let seen = d.join("seen");
    assert!(eventually(Duration::from_secs(10), || read(&seen).lines().count() == 1).await, "{}", agent.log_text());
    put(&writer, "openai", "sk-exec-two-2222222222222222").await;
    assert!(eventually(Duration::from_secs(6), || read(&seen).lines().count() == 2).await, "{}", agent.log_text());
    assert_eq!(
        read(&seen),
        "sk-exec-one-1111111111111111\nsk-exec-two-2222222222222222\n",
        "child env: key, never the token"
    );
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0), "keysync exits with the child's status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_agent_rotates_due_keys_and_rollback_reaches_files_within_a_poll() {
    let server = DevServer::start();
    let writer = store(&server, Duration::from_secs(60)).await;
    let sc = Scenario::new(&server)
        .no_listen()
        .agent("rotate = true")
        .agent("rotation_check_interval = \"1s\"")
        .sink("gateway", "gateway.key");
    let sc = sc.toml(
        "[keys.gateway.provider]\ntype = \"generate\"\nprefix = \"sk-gw-\"\n\
         [keys.gateway.rotation]\ninterval = \"1h\"\nmax_age = \"1s\"\ngrace = \"1h\"\n",
    );
    let d = sc.d();
    put(&writer, "gateway", "sk-rot-initial-aaaaaaaaaaaaaaaa").await;
    sc.advance(Duration::from_millis(1100)).await; // past max_age
    let config = sc.write_config();
    let key_file = d.join("gateway.key");
    let agent = sc.run();
    // max_age 1 s makes the key overdue: the agent rotates it and renders the new key.
    assert!(
        eventually(Duration::from_secs(10), || read(&key_file).starts_with("sk-gw-")).await,
        "{}",
        agent.log_text()
    );
    let name = KeyName::parse("gateway").unwrap();
    let record = writer.require(&name).await.unwrap();
    assert!(record.state.current.unwrap() >= 2);
    assert_eq!(record.state.rotated_by.as_deref().map(|b| b.is_empty()), Some(false));
    // Stop rotating before rolling back, so the rollback is what the file shows.
    let mut agent = agent;
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("rotate = true", "rotate = false"))
        .unwrap();
    let agent2 = Agent::start_env(&config, &server.addr, &server.root_token, &["run"], d, &[sc.clock.env()]);
    assert!(eventually(Duration::from_secs(10), || agent2.log_text().contains("first render done")).await);
    let state = writer.rollback(&name, "test rollback").await.unwrap();
    let t0 = Instant::now();
    let keysync::store::VersionRead::Live(target) = writer.read(&name, state.current.unwrap()).await.unwrap() else {
        panic!("rolled-back version has no data")
    };
    let want = target.api_key.expose().to_string();
    assert!(
        eventually(Duration::from_secs(3), || read(&key_file).trim() == want).await,
        "rollback not rendered: {state:?}\n{}",
        agent2.log_text()
    );
    assert!(t0.elapsed() < Duration::from_millis(1600), "rollback took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_key_is_retired_early_once_every_reporting_agent_rendered_the_new_one() {
    let server = DevServer::start();
    let admin = server.admin();
    let writer = store(&server, Duration::from_secs(3600)).await;
    let sc = Scenario::new(&server)
        .no_listen()
        .agent("report_renders = true")
        .sink("gw", "gw.key")
        .toml("[keys.gw.provider]\ntype = \"generate\"\n[keys.gw.rotation]\ninterval = \"30d\"\ngrace = \"1h\"\n");
    let d = sc.d();
    put(&writer, "gw", "sk-ack-initial-aaaaaaaaaaaaaaaaa").await;
    let config = sc.write_config();
    let _agent = sc.run();
    assert!(eventually(Duration::from_secs(10), || d.join("gw.key").exists()).await);
    let cli = sc.cli();
    let cfg = config.display().to_string();
    cli.ok(&["--config", &cfg, "rotate", "gw", "--force"]);
    let status = cli.json(&["status", "gw"]);
    let new_fp = status[0]["current"]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(status[0]["previous"]["version"], 1, "grace keeps the previous key");
    // Wait until the agent rendered and reported the new key.
    let acked = eventually_async(Duration::from_secs(10), || async {
        let (_, list) = admin.try_read("secret/metadata/keysync/_acks?list=true").await;
        let Some(name) = list["data"]["keys"][0].as_str() else { return false };
        let ack = admin.read(&format!("secret/data/keysync/_acks/{name}")).await;
        ack["data"]["data"]["keys"]["gw"] == new_fp.as_str()
    })
    .await;
    assert!(acked, "agent never reported the new fingerprint");
    cli.ok(&["--config", &cfg, "rotate", "gw"]);
    let status = cli.json(&["status", "gw"]);
    assert!(status[0]["previous"].is_null(), "retired before grace once consumers switched: {status}");
}
