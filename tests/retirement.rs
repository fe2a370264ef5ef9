//! Retirement that never strands a consumer, against the real server:
//! * an agent whose sink for the key cannot be written (RLIMIT_FSIZE set on the running agent)
//!   keeps reporting that it still holds the previous key: the previous key is neither
//!   retired nor revoked while that agent holds it, until `max_hold` runs out; then it is
//!   retired anyway, and the rotating agent's metrics and `keysync status` say why;
//! * a slow `on_change` hook: the agent reports the new key only after the hook finished, and
//!   early retirement waits for that report;
//! * an agent that stopped reporting stops holding retirement once its report is older than
//!   `ack_ttl` (retired by the rule, not forced);
//! * two keys changed together with one shared hook run it once; different hooks signalling
//!   one pid signal it once; `keysync exec` restarts its child once, and reports the keys the
//!   child got only after the restart;
//! * `keysync status NAME --consumers`, text and JSON.

mod support;

use keysync::secret::Secret;
use keysync::store::{KeyData, KeyName, KeyStore, PutOptions};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::clock::TestClock;
use support::faults::scrape;
use support::scenario::Scenario;
use support::{eventually, eventually_async, free_listen_addr, report, Agent, DevServer};

async fn put(store: &KeyStore, name: &str, key: &str, fields: &[(&str, &str)]) {
    let opts = PutOptions { promote: true, reason: "test".into(), keep_fields: true };
    support::leak::register(key);
    let mut data = KeyData::new(Secret::new(key));
    for (k, v) in fields {
        data.fields.insert(k.to_string(), Value::String(v.to_string()));
    }
    store.put(&KeyName::parse(name).unwrap(), data, &opts).await.unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_string).collect()
}

/// A `keysync run` with its own agent id, stderr piped (a log file would itself hit
/// RLIMIT_FSIZE), SIGXFSZ ignored so writes past the limit fail with EFBIG.
struct PipedAgent {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl PipedAgent {
    fn start(config: &Path, addr: &str, token: &str, id: &str, clock: &TestClock) -> PipedAgent {
        support::leak::register(token);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysync"));
        cmd.args(["--config", config.to_str().unwrap(), "--log-level", "debug", "run"])
            .envs([clock.env()])
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", token)
            .env("KEYSYNC_AGENT_ID", id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
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

    /// Every file write of the agent fails from now on (EFBIG), or works again.
    fn set_fsize_limit(&self, limit: Option<u64>) {
        let rl = libc::rlimit { rlim_cur: limit.unwrap_or(libc::RLIM_INFINITY), rlim_max: libc::RLIM_INFINITY };
        let rc = unsafe { libc::prlimit(self.child.id() as i32, libc::RLIMIT_FSIZE, &rl, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

impl Drop for PipedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            support::leak::check(&self.log_text(), "log of a keysync agent");
        }
    }
}

/// An agent's report as stored in Vault.
async fn ack(admin: &support::Admin, id: &str) -> Value {
    let (_, v) = admin.try_read(&format!("secret/data/keysync/_acks/{id}")).await;
    v["data"]["data"].clone()
}

/// Waits until `cond` holds for agent `id`'s report; returns the report.
async fn wait_ack(admin: &support::Admin, id: &str, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Option<Value> {
    let found = std::sync::Mutex::new(None);
    let (slot, cond) = (&found, &cond);
    eventually_async(timeout, || async move {
        let a = ack(admin, id).await;
        let hit = cond(&a);
        if hit {
            *slot.lock().unwrap() = Some(a);
        }
        hit
    })
    .await;
    found.into_inner().unwrap()
}

/// Puts `alpha` = `a` and, 30 ms after starting that, `beta` = `b`; returns how far apart the
/// two writes landed.
async fn change_both(writer: &KeyStore, a: &str, b: &str) -> Duration {
    let first = async {
        put(writer, "alpha", a, &[]).await;
        Instant::now()
    };
    let second = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        put(writer, "beta", b, &[]).await;
        Instant::now()
    };
    let (ta, tb) = tokio::join!(first, second);
    if ta > tb {
        ta - tb
    } else {
        tb - ta
    }
}

/// The id of the (only) agent that reports to this server.
async fn agent_id(admin: &support::Admin) -> Option<String> {
    let found = std::sync::Mutex::new(None);
    let slot = &found;
    eventually_async(Duration::from_secs(10), || async move {
        let (_, list) = admin.try_read("secret/metadata/keysync/_acks?list=true").await;
        let name = list["data"]["keys"][0].as_str().map(str::to_string);
        let hit = name.is_some();
        *slot.lock().unwrap() = name;
        hit
    })
    .await;
    found.into_inner().unwrap()
}

fn sink_of(ack: &Value, key: &str) -> Value {
    ack["sinks"][key][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_sink_fails_holds_retirement_until_max_hold_then_it_is_forced_loudly() {
    let server = DevServer::start();
    let admin = server.admin();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (da, db) = (d.join("a"), d.join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    put(&writer, "gw", "sk-hold-initial-aaaaaaaaaaaaaaaa", &[("key_id", "id-initial")]).await;
    let fp1 = Secret::new("sk-hold-initial-aaaaaaaaaaaaaaaa").fingerprint();
    let listen = free_listen_addr();
    let revoked = d.join("revoked.log");
    let (grace, max_hold) = (3u64, 8u64);
    // Agent A rotates (its check runs every 300 ms) and renders; agent B only renders.
    let config_a = d.join("a.toml");
    std::fs::write(
        &config_a,
        format!(
            r#"[agent]
poll_interval = "300ms"
listen = "{listen}"
report_renders = true
rotate = true
rotation_check_interval = "300ms"
[rotation]
ack_ttl = "1m"
[[keys.gw.sinks]]
path = "{da}/gw.key"
[keys.gw.provider]
type = "command"
command = ["sh", "-c", "n=$(date +%s%N); printf '{{\"api_key\": \"sk-minted-%s-bbbbbbbbbbbb\", \"key_id\": \"id-%s\"}}' $n $n"]
revoke_command = ["sh", "-c", "echo $KEYSYNC_KEY_ID >> {revoked}"]
[keys.gw.rotation]
interval = "30d"
grace = "{grace}s"
max_hold = "{max_hold}s"
validate = false
"#,
            da = da.display(),
            revoked = revoked.display()
        ),
    )
    .unwrap();
    let config_b = d.join("b.toml");
    std::fs::write(
        &config_b,
        format!(
            "[agent]\npoll_interval = \"300ms\"\nlisten = \"off\"\nreport_renders = true\n[[keys.gw.sinks]]\npath = \"{}/gw.key\"\n",
            db.display()
        ),
    )
    .unwrap();
    // Grace and max_hold pass on a virtual clock shared by both agents and the CLI.
    let clock = TestClock::new();
    let agent_a = PipedAgent::start(&config_a, &server.addr, &server.root_token, "agent-a", &clock);
    let agent_b = PipedAgent::start(&config_b, &server.addr, &server.root_token, "agent-b", &clock);
    for id in ["agent-a", "agent-b"] {
        assert!(
            wait_ack(&admin, id, Duration::from_secs(15), |a| a["keys"]["gw"] == fp1.as_str()).await.is_some(),
            "{id} never reported v1\nA: {}\nB: {}",
            agent_a.log_text(),
            agent_b.log_text()
        );
    }

    // B's disk "fills up": every write fails from now on. Then the key rotates.
    agent_b.set_fsize_limit(Some(1));
    let cli = support::Cli::new(&server, &server.root_token, d).on_clock(&clock);
    let cfg = config_a.display().to_string();
    cli.ok(&["--config", &cfg, "rotate", "gw", "--force"]);
    let status = cli.json(&["status", "gw"]);
    let fp2 = status[0]["current"]["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(status[0]["previous"]["version"], 1);
    // Stored with whole seconds: the reference for every timing below.
    let grace_until: chrono::DateTime<chrono::Utc> =
        status[0]["previous"]["grace_until"].as_str().unwrap().parse().expect("grace_until");
    let since_grace_end = || (clock.now() - grace_until).to_std().ok();
    let promoted_at = grace_until - chrono::Duration::seconds(grace as i64);
    let since_promotion = || (clock.now() - promoted_at).to_std().unwrap_or_default();

    // B reports its failed sink, still holding v1; A reports v2.
    let b_ack = wait_ack(&admin, "agent-b", Duration::from_secs(10), |a| sink_of(a, "gw")["error"].is_string()).await;
    let b_ack = b_ack.unwrap_or_else(|| panic!("agent-b never reported its failed sink\n{}", agent_b.log_text()));
    assert_eq!(sink_of(&b_ack, "gw")["fingerprint"], fp1.as_str(), "a failed sink still holds the previous key");
    assert_eq!(b_ack["keys"]["gw"], fp1.as_str(), "older deciders see agent-b still on v1");
    assert!(wait_ack(&admin, "agent-a", Duration::from_secs(10), |a| a["keys"]["gw"] == fp2.as_str()).await.is_some());
    assert!(since_grace_end().is_none(), "the test needs the failure reported within grace");

    // Grace ends: retirement is held by agent-b, the previous key is not revoked.
    clock.advance(Duration::from_secs(grace)).await;
    let held = || scrape(&listen, "keysync_retirement_held", &["key=\"gw\""]) == 1.0;
    assert!(eventually(Duration::from_secs(grace + 5), held).await, "never held\n{}", agent_a.log_text());
    let held_at = since_promotion();
    assert!(since_grace_end().is_some(), "held before grace ended");
    let consumers = cli.json(&["--config", &cfg, "status", "gw", "--consumers"]);
    let text = cli.ok(&["--config", &cfg, "status", "gw", "--consumers"]);
    let record = writer.require(&KeyName::parse("gw").unwrap()).await.unwrap();
    let still_held = since_grace_end().is_some_and(|t| t < Duration::from_secs(max_hold));
    assert!(still_held, "the checks above took too long to see the hold ({:?})", since_promotion());
    assert_eq!(record.state.previous, Some(1), "previous retired while agent-b holds it");
    assert!(!read(&revoked).contains("id-initial"), "previous key revoked while agent-b holds it");
    assert_eq!(consumers["retirement"]["state"], "held", "{consumers:#}");
    assert_eq!(consumers["retirement"]["by"], serde_json::json!(["agent-b"]), "{consumers:#}");
    let agents: Vec<&Value> = consumers["consumers"].as_array().unwrap().iter().collect();
    let b = agents.iter().find(|c| c["agent"] == "agent-b").expect("agent-b listed");
    let a = agents.iter().find(|c| c["agent"] == "agent-a").expect("agent-a listed");
    assert_eq!((b["state"].as_str(), b["holds_retirement"].as_bool()), (Some("failed"), Some(true)), "{b:#}");
    assert_eq!(b["sinks"][0]["holds"], "previous");
    assert_eq!(b["sinks"][0]["version"], 1);
    assert!(b["sinks"][0]["error"].as_str().unwrap().contains(&db.display().to_string()), "{b:#}");
    assert_eq!((a["state"].as_str(), a["holds_retirement"].as_bool()), (Some("current"), Some(false)), "{a:#}");
    assert!(text.contains("HELD by agent-b"), "{text}");
    assert!(text.lines().any(|l| l.contains("agent-b") && l.contains("failed") && l.contains("v1")), "{text}");
    assert!(text.lines().any(|l| l.contains("agent-a") && l.contains("current") && l.contains("v2")), "{text}");
    assert_eq!(scrape(&listen, "keysync_key_consumers", &["key=\"gw\"", "state=\"failed\""]), 1.0);
    assert_eq!(scrape(&listen, "keysync_key_consumers", &["key=\"gw\"", "state=\"current\""]), 1.0);

    // max_hold runs out: retired (and revoked) anyway, and everything says why.
    clock.advance(Duration::from_secs(max_hold)).await;
    let retired =
        eventually(Duration::from_secs(grace + max_hold + 10), || read(&revoked).contains("id-initial")).await;
    assert!(retired, "never forced\n{}", agent_a.log_text());
    let forced_at = since_promotion();
    assert!(
        since_grace_end().is_some_and(|t| t >= Duration::from_secs(max_hold)),
        "forced before max_hold: {forced_at:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || scrape(&listen, "keysync_retirements_forced_total", &["key=\"gw\""])
            == 1.0)
        .await
    );
    assert_eq!(scrape(&listen, "keysync_retirement_held", &["key=\"gw\""]), 0.0);
    eventually(Duration::from_secs(5), || cli.json(&["status", "gw"])[0]["forced_retirement"].is_string()).await;
    let status = cli.json(&["status", "gw"]);
    assert!(status[0]["previous"].is_null(), "{status:#}");
    let note = status[0]["forced_retirement"].as_str().unwrap_or_default().to_string();
    assert!(
        note.contains("v1") && note.contains("agent-b") && note.contains("max_hold") && note.contains("failed"),
        "{note}"
    );
    assert!(agent_a.log_text().contains("max_hold ran out"), "no ERROR line\n{}", agent_a.log_text());
    let text = cli.ok(&["status", "gw"]);
    assert!(text.contains("forced retirement") && text.contains("agent-b"), "{text}");

    // B's disk recovers: it renders v2 and reports it.
    agent_b.set_fsize_limit(None);
    assert!(wait_ack(&admin, "agent-b", Duration::from_secs(10), |a| a["keys"]["gw"] == fp2.as_str()).await.is_some());
    report::record(
        "Retirement",
        &format!(
            "an agent's sink cannot be written (RLIMIT_FSIZE) across a rotation; grace 3 s, max_hold 8 s{}",
            if support::clock::VIRTUAL { " (virtual clock: times below are keysync's)" } else { "" }
        ),
        1,
        &format!(
            "previous key kept and not revoked while held (hold seen at {:.1} s); retired and revoked at {:.1} s \
             (grace + max_hold = {} s), metric, ERROR log and status name agent-b",
            held_at.as_secs_f64(),
            forced_at.as_secs_f64(),
            grace + max_hold
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reports_a_key_only_after_its_slow_hook_finished_and_early_retirement_waits() {
    let server = DevServer::start();
    let admin = server.admin();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(&writer, "gw", "sk-hook-initial-aaaaaaaaaaaaaaaa", &[]).await;
    let fp1 = Secret::new("sk-hook-initial-aaaaaaaaaaaaaaaa").fingerprint();
    let (started, ended) = (d.join("hook.start"), d.join("hook.end"));
    let config = d.join("keysync.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
poll_interval = "300ms"
listen = "off"
report_renders = true
[[keys.gw.sinks]]
path = "{d}/gw.key"
[keys.gw.on_change]
command = ["sh", "-c", "date +%s.%N >> {start}; sleep 3; date +%s.%N >> {end}"]
[keys.gw.provider]
type = "generate"
[keys.gw.rotation]
interval = "30d"
grace = "1h"
"#,
            d = d.display(),
            start = started.display(),
            end = ended.display()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(&config, &server.addr, &server.root_token, &["run"], d);
    // The agent's id is user@host: find it under _acks.
    let agent_id = agent_id(&admin).await.unwrap_or_else(|| panic!("no report\n{}", agent.log_text()));
    assert!(
        wait_ack(&admin, &agent_id, Duration::from_secs(10), |a| a["keys"]["gw"] == fp1.as_str()).await.is_some(),
        "{}",
        agent.log_text()
    );
    assert_eq!(lines(&ended).len(), 1, "the first render's hook finished before v1 was reported");

    let cli = support::Cli::new(&server, &server.root_token, d);
    let cfg = config.display().to_string();
    cli.ok(&["--config", &cfg, "rotate", "gw", "--force"]);
    let status = cli.json(&["status", "gw"]);
    let fp2 = status[0]["current"]["fingerprint"].as_str().unwrap().to_string();
    // The file changes, the hook starts and sleeps: the report still says v1, and a
    // retirement check keeps the previous key.
    assert!(eventually(Duration::from_secs(5), || lines(&started).len() == 2).await, "{}", agent.log_text());
    let during = ack(&admin, &agent_id).await;
    cli.ok(&["--config", &cfg, "rotate", "gw"]);
    let status = cli.json(&["status", "gw"]);
    let hook_still_running = lines(&ended).len() == 1;
    assert!(hook_still_running, "the checks took longer than the hook; the test proves nothing");
    assert_eq!(during["keys"]["gw"], fp1.as_str(), "reported before the hook finished: {during:#}");
    // (`keys` alone: every sink holds v1, as far as the app is concerned.)
    assert!(sink_of(&during, "gw").is_null() || sink_of(&during, "gw")["fingerprint"] == fp1.as_str(), "{during:#}");
    assert_eq!(status[0]["previous"]["version"], 1, "retired while the app was still loading the new key");

    let after = wait_ack(&admin, &agent_id, Duration::from_secs(10), |a| a["keys"]["gw"] == fp2.as_str()).await;
    let after = after.unwrap_or_else(|| panic!("never reported v2\n{}", agent.log_text()));
    let hook_end: f64 = lines(&ended).get(1).and_then(|l| l.trim().parse().ok()).expect("second hook end time");
    let seen_at = chrono::DateTime::parse_from_rfc3339(after["seen_at"].as_str().unwrap()).unwrap();
    let seen = seen_at.timestamp() as f64 + f64::from(seen_at.timestamp_subsec_nanos()) / 1e9;
    assert!(seen >= hook_end, "report at {seen} before the hook ended at {hook_end}");
    let hook_start: f64 = lines(&started)[1].trim().parse().unwrap();
    cli.ok(&["--config", &cfg, "rotate", "gw"]);
    let status = cli.json(&["status", "gw"]);
    assert!(status[0]["previous"].is_null(), "retired early once the agent reported v2: {status:#}");
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    report::record(
        "Retirement",
        "an on_change hook that sleeps 3 s after a rotation",
        1,
        &format!(
            "report of the new key {:.2} s after the hook started and {:.3} s after it ended (never before); \
             early retirement waited for it",
            seen - hook_start,
            seen - hook_end
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_changed_together_run_their_shared_hook_once() {
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    put(&writer, "alpha", "sk-burst-alpha-0-aaaaaaaaaaaaaaaa", &[]).await;
    put(&writer, "beta", "sk-burst-beta-0-bbbbbbbbbbbbbbbbb", &[]).await;
    let hook = "command = [\"sh\", \"-c\", \"echo \\\"$KEYSYNC_KEYS\\\" >> {dir}/hook.log\"]\nwait_min = \"1s\"\n";
    let sc = Scenario::new(&server)
        .poll("200ms")
        .sink("alpha", "alpha.key")
        .toml(&format!("[keys.alpha.on_change]\n{hook}"))
        .sink("beta", "beta.key")
        .toml(&format!("[keys.beta.on_change]\n{hook}"));
    let (d, log) = (sc.d(), sc.path("hook.log"));
    let agent = sc.run();
    assert!(eventually(Duration::from_secs(10), || lines(&log).len() == 1).await, "{}", agent.log_text());
    assert_eq!(lines(&log), ["alpha beta"], "the first render of both keys runs the hook once");
    let runs = support::report::scale(3, 20);
    let mut max_gap = Duration::ZERO;
    for i in 1..=runs {
        let (a, b) = (format!("sk-burst-alpha-{i}-aaaaaaaaaaaaaaaa"), format!("sk-burst-beta-{i}-bbbbbbbbbbbbbbbbb"));
        max_gap = max_gap.max(change_both(&writer, &a, &b).await);
        assert!(
            eventually(Duration::from_secs(10), || lines(&log).len() == i + 1).await,
            "run {i}: hook did not run\n{}",
            agent.log_text()
        );
        assert_eq!(read(&d.join("alpha.key")).trim(), a);
        assert_eq!(read(&d.join("beta.key")).trim(), b);
        // No second run: past wait_min (on the agent's clock) and one whole poll after that.
        sc.advance(Duration::from_millis(1500)).await;
        sc.next_passes(2).await;
        assert_eq!(lines(&log).len(), i + 1, "run {i}: the shared hook ran more than once: {:?}", lines(&log));
        assert_eq!(lines(&log).last().map(String::as_str), Some("alpha beta"));
    }
    // Under load a write can take longer; one run is promised while the second change is
    // seen (gap + one 200 ms poll) within the first one's wait_min.
    assert!(max_gap < Duration::from_millis(700), "the two changes were {max_gap:?} apart");
    report::record(
        "Retirement",
        "two keys changed ~30 ms apart, one shared on_change hook (wait_min 1 s)",
        runs,
        &format!("hook ran once per burst in {runs} of {runs} (changes up to {} ms apart)", max_gap.as_millis()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_changed_together_restart_an_exec_child_once() {
    let server = DevServer::start();
    let admin = server.admin();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    put(&writer, "alpha", "sk-exec-alpha-0-aaaaaaaaaaaaaaaaa", &[]).await;
    put(&writer, "beta", "sk-exec-beta-0-bbbbbbbbbbbbbbbbbb", &[]).await;
    let sc = Scenario::new(&server).poll("200ms").agent("report_renders = true").toml(
        "[exec]\nenv = { ALPHA_KEY = \"alpha\", BETA_KEY = \"beta\" }\nwait_min = \"1s\"\nkill_timeout = \"2s\"\n",
    );
    let starts = sc.path("starts.log");
    // The child records a hash of the keys it started with (never the keys themselves).
    let script = format!(
        "printf '%s %s' \"$ALPHA_KEY\" \"$BETA_KEY\" | sha256sum | cut -c1-16 >> {}; exec sleep 600",
        starts.display()
    );
    let agent = sc.start(&["exec", "--", "sh", "-c", &script]);
    let hash = |a: &str, b: &str| {
        let out = Command::new("sh")
            .args(["-c", "printf '%s %s' \"$1\" \"$2\" | sha256sum | cut -c1-16", "sh", a, b])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(eventually(Duration::from_secs(10), || lines(&starts).len() == 1).await, "{}", agent.log_text());
    let runs = support::report::scale(3, 20);
    let mut max_gap = Duration::ZERO;
    for i in 1..=runs {
        let (a, b) = (format!("sk-exec-alpha-{i}-aaaaaaaaaaaaaaaaa"), format!("sk-exec-beta-{i}-bbbbbbbbbbbbbbbbbb"));
        max_gap = max_gap.max(change_both(&writer, &a, &b).await);
        assert!(
            eventually(Duration::from_secs(10), || lines(&starts).len() == i + 1).await,
            "run {i}: child not restarted\n{}",
            agent.log_text()
        );
        // No second restart: past wait_min (on the agent's clock) and one whole poll after that.
        sc.advance(Duration::from_millis(1500)).await;
        sc.next_passes(2).await;
        assert_eq!(lines(&starts).len(), i + 1, "run {i}: the child restarted more than once");
        assert_eq!(lines(&starts).last().cloned(), Some(hash(&a, &b)), "run {i}: restarted without both new keys");
        // The report names what the running child holds: the new keys, after the restart.
        let id = agent_id(&admin).await.expect("the agent reports");
        let (fa, fb) = (Secret::new(&a).fingerprint(), Secret::new(&b).fingerprint());
        let acked = wait_ack(&admin, &id, Duration::from_secs(5), |r| {
            r["keys"]["alpha"] == fa.as_str() && r["keys"]["beta"] == fb.as_str()
        })
        .await;
        assert!(acked.is_some(), "run {i}: the child's keys were not reported: {:#}", ack(&admin, &id).await);
    }
    // Under load a write can take longer; one run is promised while the second change is
    // seen (gap + one 200 ms poll) within the first one's wait_min.
    assert!(max_gap < Duration::from_millis(700), "the two changes were {max_gap:?} apart");
    report::record(
        "Retirement",
        "two keys changed ~30 ms apart under keysync exec ([exec] wait_min 1 s)",
        runs,
        &format!(
            "child restarted once per burst, with both new keys, in {runs} of {runs} (changes up to {} ms apart)",
            max_gap.as_millis()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stopped_reporting_does_not_hold_retirement() {
    let server = DevServer::start();
    let admin = server.admin();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    put(&writer, "gw", "sk-silent-initial-aaaaaaaaaaaaaa", &[]).await;
    let fp1 = Secret::new("sk-silent-initial-aaaaaaaaaaaaaa").fingerprint();
    let ack_ttl = 3u64;
    let config = d.join("keysync.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\npoll_interval = \"300ms\"\nlisten = \"off\"\nreport_renders = true\n\
             [rotation]\nack_ttl = \"{ack_ttl}s\"\nmax_hold = \"1h\"\n\
             [[keys.gw.sinks]]\npath = \"{}/gw.key\"\n\
             [keys.gw.provider]\ntype = \"generate\"\n[keys.gw.rotation]\ninterval = \"30d\"\ngrace = \"1s\"\n",
            d.display()
        ),
    )
    .unwrap();
    let clock = TestClock::new();
    let mut agent = PipedAgent::start(&config, &server.addr, &server.root_token, "agent-gone", &clock);
    assert!(
        wait_ack(&admin, "agent-gone", Duration::from_secs(10), |a| a["keys"]["gw"] == fp1.as_str()).await.is_some(),
        "{}",
        agent.log_text()
    );
    agent.set_fsize_limit(Some(1));
    let cli = support::Cli::new(&server, &server.root_token, d).on_clock(&clock);
    let cfg = config.display().to_string();
    cli.ok(&["--config", &cfg, "rotate", "gw", "--force"]);
    let failed =
        wait_ack(&admin, "agent-gone", Duration::from_secs(10), |a| sink_of(a, "gw")["error"].is_string()).await;
    assert!(failed.is_some(), "{}", agent.log_text());
    // Grace (1 s) over, the agent still holds v1: held.
    clock.advance(Duration::from_secs(1)).await;
    let consumers = || cli.json(&["--config", &cfg, "status", "gw", "--consumers"]);
    let held = eventually(Duration::from_secs(5), || consumers()["retirement"]["state"] == "held").await;
    assert!(held, "{:#}", consumers());
    cli.ok(&["--config", &cfg, "rotate", "gw"]);
    assert_eq!(cli.json(&["status", "gw"])[0]["previous"]["version"], 1, "retired while a fresh agent holds it");

    // The agent dies: once its report is older than ack_ttl it no longer counts.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    // Its last report ages past ack_ttl (on the shared clock): the next check retires the key.
    let died = clock.now();
    clock.advance(Duration::from_secs(ack_ttl + 1)).await;
    cli.ok(&["--config", &cfg, "rotate", "gw"]);
    assert!(cli.json(&["status", "gw"])[0]["previous"].is_null(), "a silent agent still holds retirement");
    let retired_after = (clock.now() - died).to_std().unwrap_or_default();
    let status = cli.json(&["status", "gw"]);
    assert!(status[0]["forced_retirement"].is_null(), "retired by the rule, not forced: {status:#}");
    let consumers = cli.json(&["--config", &cfg, "status", "gw", "--consumers"]);
    assert_eq!(consumers["consumers"][0]["state"], "silent", "{consumers:#}");
    assert_eq!(consumers["consumers"][0]["fresh"], false);
    report::record(
        "Retirement",
        "an agent holding the previous key (failed sink) dies; ack_ttl 3 s, max_hold 1 h",
        1,
        &format!(
            "held while it reported; retired {:.1} s after it died (its last report aged past ack_ttl), not forced",
            retired_after.as_secs_f64()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_hooks_signalling_one_pid_signal_it_once_per_burst() {
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let sc = Scenario::new(&server).poll("200ms");
    let d = sc.d();
    put(&writer, "alpha", "sk-signal-alpha-0-aaaaaaaaaaaaaaa", &[]).await;
    put(&writer, "beta", "sk-signal-beta-0-bbbbbbbbbbbbbbbb", &[]).await;
    let (pid_file, signals, runs) = (d.join("app.pid"), d.join("signals.log"), d.join("runs.log"));
    // The "app": counts the SIGUSR1s it gets.
    let app = KillOnDrop(
        Command::new("sh")
            .args(["-c", &format!("trap 'echo usr1 >> {}' USR1; while :; do sleep 0.05; done", signals.display())])
            .spawn()
            .unwrap(),
    );
    std::fs::write(&pid_file, app.0.id().to_string()).unwrap();
    let hook = |tag: &str, wait: &str| {
        format!(
            "command = [\"sh\", \"-c\", \"echo {tag} >> {}\"]\nsignal = \"SIGUSR1\"\npid_file = \"{}\"\nwait_min = \"{wait}\"\n",
            runs.display(),
            pid_file.display()
        )
    };
    let (alpha_hook, beta_hook) = (hook("alpha", "1s"), hook("beta", "1500ms"));
    let sc = sc
        .sink("alpha", "alpha.key")
        .toml(&format!("[keys.alpha.on_change]\n{alpha_hook}"))
        .sink("beta", "beta.key")
        .toml(&format!("[keys.beta.on_change]\n{beta_hook}"));
    let agent = sc.run();
    let both_ran = |n: usize| {
        let l = lines(&runs);
        l.iter().filter(|x| *x == "alpha").count() == n && l.iter().filter(|x| *x == "beta").count() == n
    };
    assert!(eventually(Duration::from_secs(10), || both_ran(1)).await, "{}", agent.log_text());
    assert!(eventually(Duration::from_secs(3), || lines(&signals).len() == 1).await, "{}", agent.log_text());
    let bursts = support::report::scale(2, 10);
    for i in 1..=bursts {
        put(&writer, "alpha", &format!("sk-signal-alpha-{i}-aaaaaaaaaaaaaaa"), &[]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        put(&writer, "beta", &format!("sk-signal-beta-{i}-bbbbbbbbbbbbbbbb"), &[]).await;
        assert!(eventually(Duration::from_secs(10), || both_ran(i + 1)).await, "burst {i}\n{}", agent.log_text());
        // Both windows are over 2 s later (on the agent's clock); a second signal would have
        // been sent by the whole poll after that.
        sc.advance(Duration::from_millis(2000)).await;
        sc.next_passes(2).await;
        assert!(both_ran(i + 1), "burst {i}: a hook ran twice: {:?}", lines(&runs));
        assert_eq!(lines(&signals).len(), i + 1, "burst {i}: the app was signalled more than once");
    }
    drop(app);
    report::record(
        "Retirement",
        "two keys with different on_change commands signalling one pid (wait_min 1 s / 1.5 s), changed 30 ms apart",
        bursts,
        &format!("one SIGUSR1 per burst in {bursts} of {bursts}; each command ran once"),
    );
}

/// A helper process, killed when the test ends (also on failure).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
