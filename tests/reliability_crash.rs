//! A rotating keysync killed at every step boundary of the rotation engine (the `failpoints`
//! feature aborts the process there, which is what SIGKILL does: no destructor, no flush),
//! then run again, while an agent renders the key and a consumer thread reads the rendered
//! file in a tight loop. Against a fake OpenAI Admin API (service accounts) and the real
//! dev server. What must hold for each boundary and run:
//! * exactly one promotion per rotation (one new version, current/previous as expected);
//! * no orphan at the provider: the live service accounts are exactly the ones Vault points at;
//! * every key the consumer read was one the provider accepted at that moment.
#![cfg(feature = "failpoints")]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::clock::TestClock;
use support::fake_openai::{self, Shared};
use support::faults::Reader;
use support::{eventually, report, unique, Agent, Cli, DevServer};

/// Where the process dies, and what that step boundary means.
const POINTS: &[(&str, &str)] = &[
    ("after_intent", "intent recorded, nothing minted yet"),
    ("after_mint", "key minted at the provider, nothing stored"),
    ("put_after_data", "new version's data written, metadata not updated"),
    ("after_put", "pending version recorded, intent not cleared"),
    ("after_pending", "pending version recorded, intent cleared"),
    ("after_validate", "pending key validated, not promoted"),
    ("after_promote", "promoted, process dies before reporting"),
    ("after_revoke_previous", "retiring: previous key revoked at the provider, state not cleared"),
    ("after_refused_revoke", "refused key revoked at the provider, not marked failed"),
];

const GRACE_SECS: u64 = 2;

fn live_accounts(fake: &Shared, key: &str) -> BTreeSet<String> {
    let a = fake.lock().unwrap();
    a.accounts
        .iter()
        .filter(|(id, (_, deleted))| !deleted && a.names.get(*id).is_some_and(|(n, _)| n.contains(&format!("-{key}-"))))
        .map(|(id, _)| id.clone())
        .collect()
}

fn minted_count(fake: &Shared, key: &str) -> usize {
    fake.lock().unwrap().names.values().filter(|(n, _)| n.contains(&format!("-{key}-"))).count()
}

fn account_key(fake: &Shared, id: &str) -> String {
    fake.lock().unwrap().accounts[id].0.clone()
}

struct Run {
    key: String,
    cfg: String,
    sink: std::path::PathBuf,
    agent: Agent,
    reader: Reader,
}

async fn setup(server: &DevServer, cli: &Cli, base: &str, fake: &Shared, dir: &Path) -> Run {
    let key = unique("c").replace('-', "");
    let d = dir.display();
    let cfg_path = dir.join(format!("{key}.toml"));
    std::fs::write(
        &cfg_path,
        format!(
            "[agent]\npoll_interval = \"200ms\"\nlisten = \"off\"\n[rotation]\nadopt_after = \"1s\"\n\
             [keys.{key}.provider]\ntype = \"openai\"\nproject_id = \"proj_crash\"\nadmin_key_file = \"{d}/admin.key\"\nbase_url = \"{base}\"\n\
             [keys.{key}.validation]\npreset = \"openai\"\nbase_url = \"{base}/v1\"\n\
             [keys.{key}.rotation]\ninterval = \"30d\"\ngrace = \"{GRACE_SECS}s\"\n\
             [[keys.{key}.sinks]]\npath = \"{d}/out/{key}.key\"\ncreate_dirs = true\n"
        ),
    )
    .unwrap();
    let cfg = cfg_path.display().to_string();
    // The first key comes from the provider too, so the consumer can check every read.
    let first = keysync::provider::OpenAiConfig {
        project_id: "proj_crash".into(),
        admin_key_file: dir.join("admin.key"),
        base_url: base.to_string(),
        name_prefix: "keysync".into(),
        timeout: keysync::config::HumanDuration::from_secs(5),
    }
    .mint_for(&key)
    .await
    .unwrap();
    let id = first.key_id.clone().unwrap();
    let (code, _, stderr) = cli
        .run_with_stdin(&["--config", &cfg, "put", &key, "--field", &format!("key_id={id}")], first.api_key.expose());
    assert_eq!(code, 0, "{stderr}");
    let sink = dir.join(format!("out/{key}.key"));
    // On the CLI's clock (the test's virtual clock), like every keysync process of the test.
    let agent = Agent::start_env(&cfg_path, &server.addr, &server.root_token, &["run"], dir, &cli.env);
    let want = first.api_key.expose().to_string();
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&sink).is_ok_and(|t| t.trim() == want)).await,
        "first render: {}",
        agent.log_text()
    );
    let f = fake.clone();
    let reader = Reader::start(sink.clone(), move |text| {
        let a = f.lock().unwrap();
        !text.trim().is_empty() && a.accounts.values().any(|(k, deleted)| k == text.trim() && !deleted)
    });
    Run { key, cfg, sink, agent, reader }
}

fn crash(cli: &Cli, cfg: &str, key: &str, point: &str, force: bool) {
    let mut args = vec!["--config", cfg, "rotate", key];
    if force {
        args.push("--force");
    }
    let out = cli.command(&args).env("KEYSYNC_FAILPOINT", point).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&format!("failpoint {point}")),
        "{point}: did not crash: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_at_every_step_boundary_resumes_to_exactly_one_promotion() {
    let runs = report::scale(1, 3);
    let server = DevServer::start();
    let (base, fake) = fake_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.key"), fake_openai::ADMIN_KEY).unwrap();
    // Grace and adopt_after pass on a virtual clock (tests/support/clock.rs).
    let clock = TestClock::new();
    let mut cli = Cli::new(&server, &server.root_token, dir.path()).on_clock(&clock);
    cli.secrets = vec![fake_openai::ADMIN_KEY.into(), "secretpart".into()];
    let mut total_reads = 0u64;
    let started = Instant::now();
    for (point, meaning) in POINTS {
        let mut reads = 0u64;
        let mut minted = 0usize;
        for run in 0..runs {
            let r = setup(&server, &cli, &base, &fake, dir.path()).await;
            let key = r.key.as_str();
            let v1_id = live_accounts(&fake, key).into_iter().next().unwrap();
            let ctx = format!("{point} run {run}");
            match *point {
                "after_revoke_previous" => {
                    cli.ok(&["--config", &r.cfg, "rotate", key, "--force"]);
                    clock.advance(Duration::from_millis(GRACE_SECS * 1000 + 300)).await;
                    crash(&cli, &r.cfg, key, point, false);
                    assert!(!live_accounts(&fake, key).contains(&v1_id), "{ctx}: the crash came after the revocation");
                }
                "after_refused_revoke" => {
                    fake.lock().unwrap().refuse = true;
                    crash(&cli, &r.cfg, key, point, true);
                }
                _ => crash(&cli, &r.cfg, key, point, true),
            }
            // Versions written by a crashed keysync are adopted once older than adopt_after
            // (1 s), orphaned accounts once older than that at the provider (whole seconds).
            if matches!(*point, "after_mint" | "put_after_data") {
                clock.advance(Duration::from_millis(2100)).await;
            }
            // Before anything is stored a rerun must start over (forced, as the crashed run
            // was); after that, a plain run must finish the crashed rotation, not start another.
            let force = matches!(*point, "after_intent" | "after_mint");
            let mut args = vec!["--config", r.cfg.as_str(), "rotate", key];
            if force {
                args.push("--force");
            }
            let (code, stdout, stderr) = cli.run(&args);
            let status = cli.json(&["status", key]);
            let s = &status[0];
            let live = live_accounts(&fake, key);
            match *point {
                "after_refused_revoke" => {
                    fake.lock().unwrap().refuse = false;
                    // The resumed rotation ends as it would have: refused, reported, exit 1.
                    assert_eq!(code, 1, "{ctx}: {stdout}{stderr}");
                    assert!(stdout.contains("FAILED") && stdout.contains("current key kept"), "{ctx}: {stdout}");
                    assert_eq!(s["current"]["version"], 1, "{ctx}: a refused key is never promoted: {status}");
                    assert_eq!(s["failed_versions"], serde_json::json!([2]), "{ctx}: {status}");
                    assert!(s["pending"].is_null(), "{ctx}: {status}");
                    assert_eq!(live, BTreeSet::from([v1_id.clone()]), "{ctx}: the refused key's account is gone");
                }
                "after_revoke_previous" => {
                    assert_eq!(code, 0, "{ctx}: {stdout}{stderr}");
                    assert_eq!(s["latest_version"], 2, "{ctx}: {status}");
                    assert_eq!(s["current"]["version"], 2, "{ctx}: {status}");
                    assert!(s["previous"].is_null(), "{ctx}: the retirement finished: {status}");
                    assert_eq!(live.len(), 1, "{ctx}: only the current key's account is live: {live:?}");
                }
                _ => {
                    assert_eq!(code, 0, "{ctx}: {stdout}{stderr}");
                    assert_eq!(s["latest_version"], 2, "{ctx}: exactly one new version: {status}");
                    assert_eq!(s["current"]["version"], 2, "{ctx}: promoted once: {status}");
                    assert_eq!(s["previous"]["version"], 1, "{ctx}: {status}");
                    assert!(s["pending"].is_null(), "{ctx}: {status}");
                    assert!(s["interrupted_rotation"].is_null(), "{ctx}: the trace is cleared once finished: {status}");
                    let got = cli.json(&["get", key]);
                    let v2_id = got["fields"]["key_id"].as_str().unwrap().to_string();
                    assert_eq!(
                        live,
                        BTreeSet::from([v1_id.clone(), v2_id.clone()]),
                        "{ctx}: live accounts are exactly current and previous (in grace): no orphan"
                    );
                    // The consumer gets the new key within a few polls.
                    let want = account_key(&fake, &v2_id);
                    assert!(
                        eventually(Duration::from_secs(5), || std::fs::read_to_string(&r.sink)
                            .is_ok_and(|t| t.trim() == want))
                        .await,
                        "{ctx}: the new key did not reach the consumer: {}",
                        r.agent.log_text()
                    );
                }
            }
            minted += minted_count(&fake, key);
            let stats = r.reader.finish();
            assert_eq!(stats.bad, 0, "{ctx}: the consumer read a key the provider refuses ({:?})", stats.first_bad);
            assert_eq!(stats.missing, 0, "{ctx}: the consumer found no file");
            assert!(stats.reads > 0, "{ctx}: the consumer read nothing");
            reads += stats.reads;
            drop(r.agent);
        }
        total_reads += reads;
        let held = if *point == "after_refused_revoke" {
            "the refused key never promoted and marked failed on resume"
        } else {
            "exactly one promotion per rotation"
        };
        report::record(
            "Crashes",
            &format!("killed at `{point}` ({meaning}), then run again"),
            runs,
            &format!(
                "{held}, 0 orphan service accounts ({minted} minted, each current, previous in grace or deleted), {reads} consumer reads, all of a key the provider accepted"
            ),
        );
    }
    eprintln!("{} boundaries x {runs} runs, {total_reads} reads, {:?}", POINTS.len(), started.elapsed());
}

/// A rotating agent (`keysync run`, `agent.rotate = true`) SIGKILLed at random moments over
/// and over while it rotates every 2 s (the fake provider takes 150 ms per call, so many kills
/// land mid-rotation), then left to run cleanly: the key ends with no pending version, no
/// interrupted rotation and no unrecorded version, and the provider holds live exactly the
/// current and previous keys. A second, non-rotating agent renders the key all along; its
/// consumer must only ever read keys the provider accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_agent_sigkilled_at_random_moments_leaves_no_orphan_and_no_bad_read() {
    use rand::Rng as _;
    let kills = report::scale(10, 50);
    let server = DevServer::start();
    let (base, fake) = fake_openai::start().await;
    fake.lock().unwrap().latency = Duration::from_millis(150);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.key"), fake_openai::ADMIN_KEY).unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    cli.secrets = vec![fake_openai::ADMIN_KEY.into(), "secretpart".into()];
    // The renderer (setup's agent) uses the key's config; the rotator gets its own.
    let r = setup(&server, &cli, &base, &fake, dir.path()).await;
    let key = r.key.clone();
    let d = dir.path().display();
    let rot_cfg = dir.path().join("rotator.toml");
    std::fs::write(
        &rot_cfg,
        format!(
            "[agent]\npoll_interval = \"200ms\"\nlisten = \"off\"\nrotate = true\nrotation_check_interval = \"200ms\"\n[rotation]\nadopt_after = \"1s\"\n\
             [keys.{key}.provider]\ntype = \"openai\"\nproject_id = \"proj_crash\"\nadmin_key_file = \"{d}/admin.key\"\nbase_url = \"{base}\"\n\
             [keys.{key}.validation]\npreset = \"openai\"\nbase_url = \"{base}/v1\"\n\
             [keys.{key}.rotation]\ninterval = \"2s\"\ngrace = \"3s\"\n\
             [[keys.{key}.sinks]]\npath = \"{d}/rotator/{key}.key\"\ncreate_dirs = true\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut unfinished = 0;
    for _ in 0..kills {
        let mut agent = Agent::start(&rot_cfg, &server.addr, &server.root_token, &["run"], dir.path());
        let wait = rand::rng().random_range(300..2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        agent.child.kill().unwrap(); // SIGKILL
        let _ = agent.child.wait();
        // Did it die mid-rotation? Then the key shows a trace the next run must finish.
        let st = cli.json(&["status", &key]);
        let st = &st[0];
        if !st["pending"].is_null()
            || !st["interrupted_rotation"].is_null()
            || st["current"]["version"] != st["latest_version"]
        {
            unfinished += 1;
        }
    }
    let killed_for = started.elapsed().as_secs_f64();
    let rotations_before_clean = cli.json(&["status", &key])[0]["latest_version"].as_u64().unwrap();
    // A clean run until it has rotated at least once more (which also cleans up orphans
    // older than adopt_after) and is idle again.
    let agent = Agent::start(&rot_cfg, &server.addr, &server.root_token, &["run"], dir.path());
    let settled = eventually(Duration::from_secs(30), || {
        let s = cli.json(&["status", &key]);
        let s = &s[0];
        s["latest_version"].as_u64().unwrap() > rotations_before_clean + 1
            && s["pending"].is_null()
            && s["interrupted_rotation"].is_null()
            && s["current"]["version"] == s["latest_version"]
    })
    .await;
    assert!(settled, "the key did not settle after the kills: {}\n{}", cli.json(&["status", &key]), agent.log_text());
    drop(agent);
    // The renderer catches up with the final current key.
    let got = cli.json(&["get", &key]);
    let current_id = got["fields"]["key_id"].as_str().unwrap().to_string();
    let want = account_key(&fake, &current_id);
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&r.sink).is_ok_and(|t| t.trim() == want)).await,
        "the renderer did not get the final key"
    );
    let status = cli.json(&["status", &key]);
    let s = &status[0];
    let latest = s["latest_version"].as_u64().unwrap();
    // Every account is accounted for: live only if it backs current or previous.
    let mut expected = BTreeSet::from([current_id]);
    if let Some(p) = s["previous"]["version"].as_u64() {
        let prev = cli.json(&["get", &key, "--version", &p.to_string()]);
        expected.insert(prev["fields"]["key_id"].as_str().unwrap().to_string());
    }
    let live = live_accounts(&fake, &key);
    let minted = minted_count(&fake, &key);
    assert_eq!(live, expected, "live service accounts must be exactly current (+ previous): {status}");
    let stats = r.reader.finish();
    assert_eq!(stats.bad, 0, "the consumer read a key the provider refuses ({:?})", stats.first_bad);
    assert_eq!(stats.missing, 0);
    drop(r.agent);
    report::record(
        "Crashes",
        "rotating agent (`keysync run`, rotate every 2 s, grace 3 s, provider calls 150 ms) SIGKILLed at random moments, then run cleanly",
        kills,
        &format!(
            "{kills} kills in {killed_for:.0} s ({unfinished} left a rotation half done); {} versions made, ended with no pending, no interrupted rotation, no unrecorded version; {minted} accounts minted, {} live = exactly current + previous (0 orphans); {} consumer reads, all of a key the provider accepted",
            latest,
            live.len(),
            stats.reads
        ),
    );
}
