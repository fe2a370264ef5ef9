//! Network faults between agents and the real dev server, through the fault proxy
//! (`support::faults`): outages (connections cut, or black-holed like a partition) in steady
//! state and in the middle of a rotation, and a slow server. What must hold: no torn or emptied
//! file at any moment (a reader checks every read), no version lost, recovery within about a
//! poll after the fault ends, and a bounded number of attempts during it.
//! Also: thousands of renders while readers read in a tight loop never show a partial file.
//!
//! Counts: `report::scale` (CI) / `KEYSYNC_RELIABILITY_FULL=1` (60 s outages, 10,000 renders).

mod support;

use keysync::secret::Secret;
use keysync::store::{KeyData, KeyName, KeyStore, PutOptions};
use std::path::Path;
use std::time::{Duration, Instant};
use support::faults::{http_get, scrape, FaultProxy, Mode, Reader};
use support::scenario::Scenario;
use support::{eventually, report, Cli, DevServer};

async fn put(store: &KeyStore, name: &str, key: &str) {
    let opts = PutOptions { promote: true, reason: "test".into(), keep_fields: true };
    store.put(&KeyName::parse(name).unwrap(), KeyData::new(Secret::new(key)), &opts).await.unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn requests(listen: &str) -> f64 {
    scrape(listen, "keysync_vault_requests_total", &[])
}

/// One steady-state outage of `secs` seconds in `mode`; returns the report row's text.
async fn steady_outage(mode: Mode, label: &str) {
    let secs = report::scale(8, 60) as u64;
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let proxy = FaultProxy::start(&server.addr).await;
    let sc = Scenario::new(&server).via(&proxy.addr).toml("[vault]\ntimeout = \"2s\"").sink("openai", "openai.key");
    let (v1, v2) = ("sk-outage-one-1111111111111111", "sk-outage-two-2222222222222222-longer");
    put(&writer, "openai", v1).await;
    let (key_file, listen) = (sc.path("openai.key"), sc.listen.clone().unwrap());
    let agent = sc.run();
    assert!(eventually(Duration::from_secs(10), || read(&key_file).trim() == v1).await, "{}", agent.log_text());
    let reader = Reader::start(key_file.clone(), move |t| t == format!("{v1}\n") || t == format!("{v2}\n"));

    let (c0, _) = proxy.counts();
    let r0 = requests(&listen);
    proxy.set(mode);
    // A new version while Vault is unreachable: it must arrive afterwards, not be lost.
    put(&writer, "openai", v2).await;
    let t_out = Instant::now();
    assert!(
        eventually(Duration::from_secs(secs.max(8)), || http_get(&listen, "/readyz").0 == 503).await,
        "{label}: /readyz should report the outage"
    );
    let (_, why) = http_get(&listen, "/readyz");
    assert!(why.contains("Vault"), "{why}");
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(t_out.elapsed())).await;
    assert_eq!(read(&key_file).trim(), v1, "{label}: the file keeps the last good key during the outage");
    let outage = t_out.elapsed().as_secs_f64();
    let (c1, _) = proxy.counts();
    let attempts = requests(&listen) - r0;
    let connections = c1 - c0;

    proxy.set(Mode::Pass);
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || read(&key_file).trim() == v2).await,
        "{label}: the version written during the outage never arrived: {}",
        agent.log_text()
    );
    let caught_up = t0.elapsed().as_secs_f64();
    assert!(eventually(Duration::from_secs(5), || http_get(&listen, "/readyz").0 == 200).await);
    let stats = reader.finish();

    // Poll 1 s, failures back off 1 s, 2 s … capped at the poll: at most one pass (one
    // request) per second, however long the outage.
    assert!(attempts <= outage + 3.0, "{label}: {attempts} requests in {outage:.0} s of outage: not backing off");
    assert!(attempts >= 1.0, "{label}: the agent stopped trying");
    // A request in flight when the fault ends may still run into its 2 s timeout, then wait
    // for the 1 s backoff: 3 s, plus slack for a loaded machine.
    assert!(caught_up <= 4.5, "{label}: caught up {caught_up:.1} s after the outage; poll 1 s, timeout 2 s");
    assert_eq!(stats.bad, 0, "{label}: {} torn or foreign reads ({:?})", stats.bad, stats.first_bad);
    assert_eq!(stats.missing, 0, "{label}: the file disappeared {} times", stats.missing);
    let why = why.trim().replace('|', "/");
    let why = if why.chars().count() > 200 { format!("{}…", why.chars().take(200).collect::<String>()) } else { why };
    report::record(
        "Faults",
        &format!("{secs} s Vault outage in steady state, {label}; a new version written meanwhile"),
        1,
        &format!(
            "0 torn or emptied reads of {} (old file kept); new version on disk {caught_up:.1} s after the outage (poll 1 s); {attempts:.0} requests, {connections} connections in {outage:.0} s ({:.2}/s); /readyz: \"{why}\"",
            stats.reads,
            attempts / outage
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_connections_cut_keeps_files_and_backs_off() {
    steady_outage(Mode::Cut, "connections reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_that_black_holes_connections_keeps_files_and_backs_off() {
    steady_outage(Mode::BlackHole, "connections black-holed (requests time out)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_slower_than_the_timeout_is_an_outage_and_a_slow_one_still_works() {
    steady_outage(Mode::Delay(Duration::from_secs(3)), "every request delayed 3 s (timeout 2 s)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_delays_renders_but_never_breaks_them() {
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let proxy = FaultProxy::start(&server.addr).await;
    let sc = Scenario::new(&server)
        .via(&proxy.addr)
        .poll("500ms")
        .no_listen()
        .toml("[vault]\ntimeout = \"2s\"")
        .sink("k", "k.key");
    put(&writer, "k", "sk-slow-0000-xxxxxxxxxxxxxxxx").await;
    let key_file = sc.path("k.key");
    let agent = sc.run();
    assert!(eventually(Duration::from_secs(10), || read(&key_file).starts_with("sk-slow-0000")).await);
    let reader = Reader::start(key_file.clone(), |t| {
        t.len() == "sk-slow-0000-xxxxxxxxxxxxxxxx\n".len() && t.starts_with("sk-slow-") && t.ends_with("x\n")
    });
    proxy.set(Mode::Delay(Duration::from_millis(400)));
    let versions = report::scale(3, 10);
    let mut worst = 0f64;
    for i in 1..=versions {
        let key = format!("sk-slow-{i:04}-xxxxxxxxxxxxxxxx");
        put(&writer, "k", &key).await;
        let t0 = Instant::now();
        assert!(
            eventually(Duration::from_secs(10), || read(&key_file).trim() == key).await,
            "v{i} never arrived through a slow server: {}",
            agent.log_text()
        );
        worst = worst.max(t0.elapsed().as_secs_f64());
    }
    proxy.set(Mode::Pass);
    let stats = reader.finish();
    assert_eq!(stats.bad + stats.missing, 0, "{stats:?}");
    report::record(
        "Faults",
        "slow Vault: every request delayed 400 ms (timeout 2 s, poll 500 ms), new versions keep coming",
        versions,
        &format!(
            "every version reached its file, slowest after {worst:.1} s; 0 torn or emptied reads of {}",
            stats.reads
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_in_the_middle_of_a_rotation_loses_nothing_and_orphans_nothing() {
    let secs = report::scale(8, 60) as u64;
    let server = DevServer::start();
    let proxy = FaultProxy::start(&server.addr).await;
    let sc = Scenario::new(&server)
        .via(&proxy.addr)
        .agent("rotate = true")
        .agent("rotation_check_interval = \"1s\"")
        .config_name("agent.toml")
        .toml("[vault]\ntimeout = \"2s\"");
    let dir = sc.d().to_path_buf();
    let d = dir.as_path();
    let dd = d.display();
    let cli = Cli::new(&server, &server.root_token, d);
    // The first mint blocks until the test has cut Vault off: the rotation is mid-flight.
    let mint = format!(
        "n=$(cat {dd}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {dd}/n; echo id-$n >> {dd}/minted; \
         if [ $n = 1 ]; then touch {dd}/minting; while [ ! -e {dd}/go ]; do sleep 0.05; done; fi; \
         printf '{{\"api_key\": \"sk-mid-%s-xxxxxxxxxxxxxxxx\", \"key_id\": \"id-%s\"}}' $n $n"
    );
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {dd}/revoked");
    let listen = sc.listen.clone().unwrap();
    let sc = sc.toml(&format!(
        "[keys.svc.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n\
         [keys.svc.rotation]\ninterval = \"30d\"\n[[keys.svc.sinks]]\npath = \"{dd}/svc.key\"\n"
    ));
    // Expired: due at once.
    let (code, _, stderr) = cli.run_with_stdin(
        &["put", "svc", "--field", "expires_at=2000-01-01T00:00:00Z", "--field", "owner=team-a"],
        "sk-mid-0-xxxxxxxxxxxxxxxx",
    );
    assert_eq!(code, 0, "{stderr}");
    let key_file = d.join("svc.key");
    let agent = sc.run();
    assert!(
        eventually(Duration::from_secs(15), || d.join("minting").exists() && read(&key_file).starts_with("sk-mid-0-"))
            .await,
        "{}",
        agent.log_text()
    );
    // The consumer: every read is a whole key the provider minted and has not revoked.
    let dir_path = d.to_path_buf();
    let reader = Reader::start(key_file.clone(), move |t| {
        let Some(n) = t.strip_prefix("sk-mid-").and_then(|r| r.strip_suffix("-xxxxxxxxxxxxxxxx\n")) else {
            return false;
        };
        if n == "0" {
            return true;
        }
        let id = format!("id-{n}");
        let has = |f: &str| std::fs::read_to_string(dir_path.join(f)).unwrap_or_default().lines().any(|l| l == id);
        has("minted") && !has("revoked")
    });
    let r0 = requests(&listen);
    let (c0, _) = proxy.counts();
    proxy.set(Mode::BlackHole);
    std::fs::write(d.join("go"), "").unwrap();
    let t_out = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    assert!(read(&key_file).starts_with("sk-mid-0-"), "the old key stays during the outage");
    let outage = t_out.elapsed().as_secs_f64();
    let attempts = requests(&listen) - r0;
    let connections = proxy.counts().0 - c0;
    let revoked_during = read(&d.join("revoked"));
    proxy.set(Mode::Pass);
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || read(&key_file).starts_with("sk-mid-2-")).await,
        "rotation did not finish after the outage: {}",
        agent.log_text()
    );
    let caught_up = t0.elapsed().as_secs_f64();
    // Let a few more rotation checks pass: nothing else may happen.
    assert!(support::wait_rotation_checks(&[&agent], 3, Duration::from_secs(15)).await, "{}", agent.log_text());
    let stats = reader.finish();
    drop(agent);

    let status = cli.json(&["status", "svc"]);
    let s = &status[0];
    assert_eq!(s["latest_version"], 2, "exactly one new version: {status}");
    assert_eq!(s["current"]["version"], 2, "{status}");
    assert_eq!(s["previous"]["version"], 1, "{status}");
    assert!(s["pending"].is_null() && s["interrupted_rotation"].is_null(), "{status}");
    let got = cli.json(&["get", "svc"]);
    assert_eq!(got["fields"]["key_id"], "id-2");
    assert_eq!(got["fields"]["owner"], "team-a", "provider fields carried over: {got}");
    assert!(got["fields"].get("expires_at").is_none(), "the old key's expiry is not the new key's: {got}");
    assert_eq!(read(&d.join("minted")), "id-1\nid-2\n", "one key minted per attempt");
    // Vault could not say whether the write landed: the key is kept, never revoked blindly
    // (another agent could adopt and promote a stored one). Once Vault answers, keysync finds
    // the write did not land, marks the key revoked and revokes it.
    assert_eq!(revoked_during, "", "a key that may have been stored was revoked during the outage");
    assert_eq!(read(&d.join("revoked")), "id-1\n", "the unstored key is revoked after the outage, and nothing else");
    assert_eq!(stats.bad + stats.missing, 0, "{stats:?}");
    // One sync pass (one request) and one rotation check per loop; each stalls for the 2 s
    // timeout: well under one request per second.
    assert!(attempts <= outage + 3.0, "{attempts} requests in {outage:.0} s of outage");
    // Finding out (backoff ≤ 2 s), then the next rotation check and a poll.
    assert!(caught_up <= 8.0, "the rotation finished {caught_up:.1} s after the outage");
    report::record(
        "Faults",
        &format!("{secs} s Vault outage (black hole) in the middle of a rotation: key minted, Vault gone before it was stored"),
        1,
        &format!(
            "the key whose write got no answer was kept during the outage (not revoked blindly), then found unstored, marked and revoked; exactly 1 new version (v2), promoted and on disk {caught_up:.1} s later; 0 orphan keys (2 minted, 1 revoked, 1 current); fields kept; 0 torn or invalid reads of {}; {attempts:.0} requests, {connections} connections in {outage:.0} s",
            stats.reads
        ),
    );
}

/// Alternating keys of very different lengths, so a partial read cannot look whole.
fn render_material(i: usize) -> keysync::render::KeyMaterial {
    let key =
        if i % 2 == 0 { "sk-short-aaaaaaaaaaaaaaaa".to_string() } else { format!("sk-long-{}", "b".repeat(3000)) };
    keysync::render::KeyMaterial::new("openai", i as u64 + 1, Secret::new(key))
        .with_field("org".to_string(), format!("org-{}", i % 2))
}

#[test]
fn thousands_of_renders_under_readers_in_a_tight_loop_show_no_partial_file() {
    let per_sink = report::scale(500, 5000);
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("openai.key");
    let json_path = dir.path().join("app.json");
    let raw = keysync::render::Sink::new(
        serde_json::from_value(serde_json::json!({ "path": raw_path, "format": "raw" })).unwrap(),
    )
    .unwrap();
    let json = keysync::render::Sink::new(
        serde_json::from_value(serde_json::json!({ "path": json_path, "format": "json" })).unwrap(),
    )
    .unwrap();
    raw.apply(&[render_material(0)]).unwrap();
    json.apply(&[render_material(0)]).unwrap();
    let short = "sk-short-aaaaaaaaaaaaaaaa\n".to_string();
    let long = format!("sk-long-{}\n", "b".repeat(3000));
    let raw_readers: Vec<Reader> = (0..2)
        .map(|_| {
            let (s, l) = (short.clone(), long.clone());
            Reader::start(raw_path.clone(), move |t| t == s || t == l)
        })
        .collect();
    let json_reader = Reader::start(json_path.clone(), |t| {
        serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| {
            let k = v["api_key"].as_str().unwrap_or("");
            (k.starts_with("sk-short-") && v["org"] == "org-0") || (k.len() == 3008 && v["org"] == "org-1")
        })
    });
    let t0 = Instant::now();
    let mut written = 0;
    for i in 1..=per_sink {
        for sink in [&raw, &json] {
            if sink.apply(&[render_material(i)]).unwrap() == keysync::render::RenderOutcome::Written {
                written += 1;
            }
        }
    }
    let took = t0.elapsed().as_secs_f64();
    let mut reads = 0;
    for r in raw_readers.into_iter().chain([json_reader]) {
        let stats = r.finish();
        assert_eq!(stats.bad, 0, "partial or mixed reads: {stats:?}");
        assert_eq!(stats.missing, 0, "the file was missing for a reader: {stats:?}");
        assert!(stats.reads > 0);
        reads += stats.reads;
    }
    assert_eq!(written, 2 * per_sink, "every render wrote the file");
    report::record(
        "Concurrency",
        &format!("{} renders ({per_sink} raw + {per_sink} json, alternating 25-byte and 3 KB keys) while 3 readers read in a tight loop", 2 * per_sink),
        2 * per_sink,
        &format!("0 partial, mixed or missing reads of {reads}; {:.0} renders/s with fsync", (2 * per_sink) as f64 / took),
    );
}
