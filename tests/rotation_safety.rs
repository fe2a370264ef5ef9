//! Rotation never strands a consumer, against the real dev server:
//! * a CAS write that lands but whose answer is lost (a failpoint right after the write
//!   returns, and the fault proxy cutting Vault off while keysync finds out) never leads to a
//!   revoked key being current or previous; every minted key is stored and live, or revoked
//!   and never promoted; a write that did not land is revoked;
//! * several rotating agents with such faults count each promotion exactly once;
//! * declared keys that do not exist are created by their first rotation, exactly once when
//!   five agents try at the same moment; `manual` keys still ask for `keysync put`;
//! * a slow provider never delays a render or /readyz.
//!
//! Needs `--features failpoints`.
#![cfg(feature = "failpoints")]

mod support;

use keysync::store::{KeyName, KeyStore, VersionRead};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::faults::{scrape, FaultProxy, Mode};
use support::{eventually, free_listen_addr, report, Cli, DevServer};

/// A `command` provider that logs every key it mints (`minted`) and revokes (`revoked`).
fn logging_provider(dir: &Path) -> String {
    let d = dir.display();
    let mint = format!(
        "id=$(od -An -N8 -tx8 /dev/urandom | tr -d ' \\n'); echo $id >> {d}/minted; printf '{{\"api_key\": \"sk-safe-%s-xxxxxxxx\", \"key_id\": \"%s\"}}' $id $id"
    );
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
    format!("type = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n")
}

fn lines(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default().lines().map(str::to_string).collect()
}

/// What the key looks like now: (current, previous, pending, latest, key_id of every live version).
struct Seen {
    current: Option<u64>,
    previous: Option<u64>,
    pending: Option<u64>,
    latest: u64,
    ids: BTreeMap<u64, String>,
}

async fn look(store: &KeyStore, name: &str) -> Seen {
    let n = KeyName::parse(name).unwrap();
    let r = store.require(&n).await.unwrap();
    let mut ids = BTreeMap::new();
    for v in r.meta.versions.keys() {
        if let VersionRead::Live(d) = store.read(&n, *v).await.unwrap() {
            if let Some(id) = d.fields.get("key_id").and_then(Value::as_str) {
                ids.insert(*v, id.to_string());
            }
        }
    }
    Seen {
        current: r.state.current,
        previous: r.state.previous,
        pending: r.state.pending,
        latest: r.meta.current_version,
        ids,
    }
}

/// The invariants, checked after every step: no revoked key is current or previous; every
/// minted key is current, previous, or revoked; a revoked key that was ever current was
/// retired (superseded) and not brought back. `ever_current` collects every key seen current.
fn check(dir: &Path, seen: &Seen, ever_current: &mut BTreeMap<String, u64>, ctx: &str) {
    let revoked: BTreeSet<String> = lines(dir, "revoked").into_iter().collect();
    let minted: BTreeSet<String> = lines(dir, "minted").into_iter().collect();
    let id_of = |v: Option<u64>| v.and_then(|v| seen.ids.get(&v).cloned());
    let current = id_of(seen.current);
    let previous = id_of(seen.previous);
    if let Some(c) = &current {
        assert!(!revoked.contains(c), "{ctx}: the current key v{:?} ({c}) was revoked", seen.current);
        ever_current.insert(c.clone(), seen.current.unwrap());
    }
    if let Some(p) = &previous {
        assert!(!revoked.contains(p), "{ctx}: the previous key v{:?} ({p}) was revoked", seen.previous);
    }
    for id in &minted {
        let live = current.as_ref() == Some(id) || previous.as_ref() == Some(id);
        assert!(live || revoked.contains(id), "{ctx}: minted key {id} is neither current, previous nor revoked");
    }
    for id in revoked.iter().filter(|id| ever_current.contains_key(*id)) {
        assert!(
            ever_current[id] < seen.current.unwrap_or(0),
            "{ctx}: revoked key {id} was current (v{}) and is not superseded",
            ever_current[id]
        );
    }
}

/// Runs `keysync rotate` with extra env; on the failpoint's line in stderr, runs `on_fault`.
fn rotate_with(
    cli: &Cli,
    addr: &str,
    cfg: &str,
    args: &[&str],
    env: &[(&str, &str)],
    on_fault: impl FnOnce() + Send + 'static,
) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysync"));
    cmd.args(["--config", cfg, "rotate"])
        .args(args)
        .current_dir(&cli.dir)
        .env("VAULT_ADDR", addr)
        .env("VAULT_TOKEN", &cli.token)
        .env("HOME", &cli.dir)
        .env("KEYSYNC_AGENT_ID", "test-cli")
        .env("KEYSYNC_LOG", "debug")
        .env_remove("KEYSYNC_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let watcher = std::thread::spawn(move || {
        let mut text = String::new();
        let mut on_fault = Some(on_fault);
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("failpoint kv_write_lost_answer: failing") {
                if let Some(f) = on_fault.take() {
                    f();
                }
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let out = child.wait_with_output().unwrap();
    let stderr = watcher.join().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_lands_but_loses_its_answer_never_puts_a_revoked_key_in_use() {
    let runs = report::scale(20, 100);
    let server = DevServer::start();
    let proxy = std::sync::Arc::new(FaultProxy::start(&server.addr).await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    let cfg = d.join("keysync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rotation]\nadopt_after = \"0s\"\n[keys.svc.provider]\n{}[keys.svc.rotation]\ninterval = \"30d\"\ngrace = \"1h\"\n",
            logging_provider(d)
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let store = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "observer").await;
    // More versions than the runs make, so every version stays readable for the checks.
    server.admin().write("secret/metadata/keysync/svc", serde_json::json!({ "max_versions": 1000 })).await;
    cli.run_with_stdin(&["put", "svc"], "sk-safe-initial-xxxxxxxxxxxxxxxx");
    let mut ever_current = BTreeMap::new();
    let mut counts = BTreeMap::<&str, usize>::new();
    let mut promotions = 0usize;
    let started = Instant::now();
    for run in 0..runs {
        // Modes in turn: the write lands and its answer is lost; it lands, the answer is lost
        // and Vault is cut off for 1.5 s while keysync finds out; it does not land.
        let mode = ["landed_answer_lost", "landed_answer_lost_then_outage", "not_landed"][run % 3];
        let before = look(&store, "svc").await;
        let minted_before = lines(d, "minted").len();
        let ctx = format!("run {run} ({mode})");
        let (code, out) = match mode {
            "not_landed" => rotate_with(
                &cli,
                &proxy.addr,
                &cfg,
                &["svc", "--force"],
                &[("KEYSYNC_FAILPOINT_ERROR", "kv_write_refused")],
                || {},
            ),
            "landed_answer_lost" => rotate_with(
                &cli,
                &proxy.addr,
                &cfg,
                &["svc", "--force"],
                &[("KEYSYNC_FAILPOINT_ERROR", "kv_write_lost_answer")],
                || {},
            ),
            _ => {
                let p = proxy.clone();
                rotate_with(
                    &cli,
                    &proxy.addr,
                    &cfg,
                    &["svc", "--force"],
                    &[("KEYSYNC_FAILPOINT_ERROR", "kv_write_lost_answer"), ("KEYSYNC_FAILPOINT_PAUSE_MS", "300")],
                    move || {
                        p.set(Mode::Cut);
                        std::thread::sleep(Duration::from_millis(1500));
                        p.set(Mode::Pass);
                    },
                )
            }
        };
        if mode == "landed_answer_lost_then_outage" {
            assert!(
                out.contains("cannot find out whether the write landed yet"),
                "{ctx}: the outage was not seen: {out}"
            );
        }
        let after = look(&store, "svc").await;
        let minted = lines(d, "minted");
        assert_eq!(minted.len(), minted_before + 1, "{ctx}: one key minted per run: {out}");
        let new_id = minted.last().unwrap().clone();
        let revoked: BTreeSet<String> = lines(d, "revoked").into_iter().collect();
        match mode {
            "not_landed" => {
                assert_ne!(code, 0, "{ctx}: the failed write is an error: {out}");
                assert_eq!(after.latest, before.latest, "{ctx}: nothing written");
                assert!(revoked.contains(&new_id), "{ctx}: the unstored key is revoked: {out}");
                assert_eq!(after.current, before.current, "{ctx}: current kept");
            }
            _ => {
                assert_eq!(code, 0, "{ctx}: a landed write is finished, not failed: {out}");
                assert_eq!(after.latest, before.latest + 1, "{ctx}: one new version");
                assert_eq!(after.current, Some(after.latest), "{ctx}: and it is promoted: {out}");
                assert_eq!(after.ids.get(&after.latest), Some(&new_id), "{ctx}: the stored key is the minted one");
                assert!(!revoked.contains(&new_id), "{ctx}: the stored key was revoked: {out}");
                assert!(out.contains("was stored; recording it as pending"), "{ctx}: {out}");
                promotions += 1;
            }
        }
        assert!(after.pending.is_none(), "{ctx}: nothing left pending");
        check(d, &after, &mut ever_current, &ctx);
        *counts.entry(mode).or_default() += 1;
    }
    assert!(proxy.mode() == Mode::Pass);
    let minted = lines(d, "minted").len();
    let revoked = lines(d, "revoked").into_iter().collect::<BTreeSet<_>>().len();
    eprintln!("{runs} runs in {:?}: {counts:?}", started.elapsed());
    report::record(
        "Crashes",
        "CAS write of a rotated key lands and its answer is lost (failpoint right after the write; every third run Vault is also cut off for 1.5 s while keysync finds out), or does not land and errors; command provider logging mints and revocations",
        runs,
        &format!(
            "{} lost answers: every stored key found by re-reading the fixed target version, recorded as pending and promoted ({promotions} promotions, each reported once), none revoked; {} writes that did not land: their key marked and revoked, current kept; {minted} keys minted, {revoked} revoked (unstored or retired), 0 revoked keys ever current or previous, 0 minted keys unaccounted for",
            counts.get("landed_answer_lost").copied().unwrap_or(0)
                + counts.get("landed_answer_lost_then_outage").copied().unwrap_or(0),
            counts.get("not_landed").copied().unwrap_or(0)
        ),
    );
}

/// A `keysync run` process with its own agent id, extra env and a metrics listener.
struct RunningAgent {
    agent: support::Agent,
    listen: String,
}

fn start_agent(server: &DevServer, dir: &Path, id: &str, body: &str, env: &[(&str, &str)]) -> RunningAgent {
    let listen = free_listen_addr();
    let cfg = dir.join(format!("{id}.toml"));
    std::fs::write(&cfg, body.replace("LISTEN", &listen)).unwrap();
    let log = dir.join(format!("{id}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keysync"));
    cmd.args(["--config", cfg.to_str().unwrap(), "--log-level", "debug", "run"])
        .env("VAULT_ADDR", &server.addr)
        .env("VAULT_TOKEN", &server.root_token)
        .env("HOME", dir)
        .env("KEYSYNC_AGENT_ID", id)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    RunningAgent { agent: support::Agent { child: cmd.spawn().unwrap(), log }, listen }
}

/// A version and its key id.
type Versioned = Option<(u64, String)>;

/// Current and previous version and their key ids (a cheap look for a tight watcher loop).
async fn look_live(store: &KeyStore, n: &KeyName) -> Option<(Versioned, Versioned)> {
    let r = store.require(n).await.ok()?;
    let mut out = Vec::new();
    for v in [r.state.current, r.state.previous] {
        out.push(match v {
            Some(v) => match store.read(n, v).await.ok()? {
                VersionRead::Live(d) => d.fields.get("key_id").and_then(Value::as_str).map(|id| (v, id.to_string())),
                _ => None,
            },
            None => None,
        });
    }
    Some((out[0].clone(), out[1].clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_agents_with_lost_answers_count_each_promotion_once_and_never_use_a_revoked_key() {
    let agents = 3;
    let want = report::scale(6, 30);
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    let store = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "observer").await;
    server.admin().write("secret/metadata/keysync/svc", serde_json::json!({ "max_versions": 1000 })).await;
    cli.run_with_stdin(&["put", "svc"], "sk-safe-initial-xxxxxxxxxxxxxxxx");
    let body = |interval: &str| {
        format!(
            "[agent]\npoll_interval = \"500ms\"\nlisten = \"LISTEN\"\nrotate = true\nrotation_check_interval = \"300ms\"\n\
             [rotation]\nadopt_after = \"1s\"\n[keys.svc.provider]\n{}[keys.svc.rotation]\ninterval = \"{interval}\"\ngrace = \"1s\"\n\
             [[keys.svc.sinks]]\npath = \"{}/out-@AGENT@/svc.key\"\ncreate_dirs = true\n",
            logging_provider(d),
            d.display()
        )
    };
    // Half the rotation writes lose their answer after landing, a third fail before it, and
    // half the attempts to mark a key revoked fail as if Vault were down (the key is then kept
    // and settled at the next check, never revoked unmarked).
    let faults = [(
        "KEYSYNC_FAILPOINT_ERROR",
        "kv_write_lost_answer@0.5,kv_write_refused@0.3,mark_revoked@0.3,mark_unstored@0.5",
    )];
    let mut running: Vec<RunningAgent> = (0..agents)
        .map(|a| {
            start_agent(&server, d, &format!("agent-{a}"), &body("2s").replace("@AGENT@", &a.to_string()), &faults)
        })
        .collect();
    let n = KeyName::parse("svc").unwrap();
    let mut ever_current: BTreeMap<u64, String> = BTreeMap::new();
    let mut observations = 0u64;
    let deadline = Instant::now() + Duration::from_secs(if report::full() { 300 } else { 90 });
    let watch =
        |ever_current: &mut BTreeMap<u64, String>, observations: &mut u64, live: Option<(Versioned, Versioned)>| {
            let Some((current, _previous)) = live else { return };
            let revoked: BTreeSet<String> = lines(d, "revoked").into_iter().collect();
            if let Some((v, id)) = current {
                assert!(!revoked.contains(&id), "current v{v} ({id}) was revoked");
                ever_current.insert(v, id);
            }
            *observations += 1;
        };
    while ever_current.keys().filter(|v| **v > 1).count() < want {
        assert!(
            Instant::now() < deadline,
            "only {} promotions in time: {}",
            ever_current.len(),
            running.iter().map(|a| a.agent.log_text()).collect::<Vec<_>>().join("\n")
        );
        let live = look_live(&store, &n).await;
        watch(&mut ever_current, &mut observations, live);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Stop rotating (the reloaded config makes the key due only in 30 days) and let it settle.
    for (a, r) in running.iter().enumerate() {
        std::fs::write(
            d.join(format!("agent-{a}.toml")),
            body("30d").replace("@AGENT@", &a.to_string()).replace("LISTEN", &r.listen),
        )
        .unwrap();
        r.agent.signal(libc::SIGHUP);
    }
    let settle_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < settle_until {
        let live = look_live(&store, &n).await;
        watch(&mut ever_current, &mut observations, live);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let (store_ref, n_ref) = (&store, &n);
    let settled = support::eventually_async(Duration::from_secs(20), || async move {
        let r = store_ref.require(n_ref).await.unwrap();
        r.state.pending.is_none() && r.state.previous.is_none() && r.state.intent.is_none()
    })
    .await;
    let rotated: f64 =
        running.iter().map(|a| scrape(&a.listen, "keysync_rotations_total", &["result=\"rotated\""])).sum();
    let seen = look(&store, "svc").await;
    assert!(settled, "the key did not settle: pending {:?}, previous {:?}", seen.pending, seen.previous);
    let logs: String = running.iter().map(|a| a.agent.log_text()).collect::<Vec<_>>().join("\n");
    let mut by_id = BTreeMap::new();
    if let Ok(keep) = std::env::var("KEYSYNC_TEST_KEEP_LOGS") {
        let _ = std::fs::create_dir_all(&keep);
        for f in std::fs::read_dir(d).unwrap().flatten() {
            let _ = std::fs::copy(f.path(), Path::new(&keep).join(f.file_name()));
        }
    }
    check(d, &seen, &mut by_id, "after the agents");
    let promotions = ever_current.keys().filter(|v| **v > 1).count(); // v1 was put by hand
    assert_eq!(
        rotated as usize,
        promotions,
        "keysync_rotations_total{{result=\"rotated\"}} summed over the agents must equal the promotions seen ({:?})",
        ever_current.keys().collect::<Vec<_>>()
    );
    let lost = logs.matches("failpoint kv_write_lost_answer: failing").count();
    let refused = logs.matches("failpoint kv_write_refused: failing").count();
    let marks_failed = logs.matches("failpoint mark_revoked: failing").count()
        + logs.matches("failpoint mark_unstored: failing").count();
    let settled_later = logs.matches("the write of the earlier rotation did not land; revoking its key").count();
    assert!(lost > 0, "no answer was lost; the test proves nothing");
    // Every key an agent minted is accounted for by that agent: it never reports its own
    // rotation as interrupted. (A peer's intent older than adopt_after is taken over with a
    // warning: under load a peer may really be that slow.)
    for (a, r) in running.iter().enumerate() {
        let own = format!("an earlier rotation was interrupted after it may have minted a key; check the provider for an unused key key=svc intent=agent-{a} at");
        let log = r.agent.log_text();
        assert!(!log.contains(&own), "agent-{a} reported its own rotation as interrupted:\n{log}");
    }
    let minted = lines(d, "minted").len();
    let revocations = lines(d, "revoked").len();
    let revoked = lines(d, "revoked").into_iter().collect::<BTreeSet<_>>().len();
    running.clear();
    report::record(
        "Concurrency",
        &format!("{agents} rotating agents (`keysync run`, rotate every 2 s, grace 1 s) where half the rotation writes land and lose their answer, a third fail before landing, and half the attempts to mark a key revoked fail"),
        1,
        &format!(
            "{promotions} promotions seen by a 40 ms watcher ({observations} looks), keysync_rotations_total{{result=\"rotated\"}} summed over the agents = {rotated} (each counted once); {lost} lost answers, {refused} failed writes, {marks_failed} failed marks ({settled_later} unstored keys kept and revoked at the next check), 0 agents reporting their own rotation as interrupted; {minted} keys minted, {revoked} revoked (unstored, lost races or retired; {revocations} revoke calls, repeats are idempotent), 0 revoked keys ever current, every minted key current or revoked at the end"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_agents_create_twenty_declared_absent_keys_exactly_once() {
    let agents = 5;
    let keys = 20;
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "observer").await;
    let names: Vec<String> = (0..keys).map(|i| format!("gw{i:02}")).collect();
    let mut body = String::from(
        "[agent]\npoll_interval = \"500ms\"\nlisten = \"LISTEN\"\nrotate = true\nrotation_check_interval = \"500ms\"\n",
    );
    for name in &names {
        body.push_str(&format!(
            "[keys.{name}.provider]\ntype = \"generate\"\nprefix = \"sk-gw-\"\n[keys.{name}.rotation]\ninterval = \"30d\"\n"
        ));
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let t0 = Instant::now();
    let running: Vec<RunningAgent> = (0..agents)
        .map(|a| {
            let cfg = format!(
                "{body}[[sinks]]\npath = \"{}/agent{a}.json\"\nformat = \"json\"\nkeys = [{}]\n",
                d.display(),
                quoted.join(", ")
            );
            start_agent(&server, d, &format!("agent-{a}"), &cfg, &[])
        })
        .collect();
    let logs = || running.iter().map(|a| a.agent.log_text()).collect::<Vec<_>>().join("\n");
    let rendered = |a: usize| -> bool {
        let Ok(text) = std::fs::read_to_string(d.join(format!("agent{a}.json"))) else { return false };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
        names.iter().all(|n| v[n]["version"] == 1)
    };
    assert!(
        eventually(Duration::from_secs(90), || (0..agents).all(rendered)).await,
        "not every agent rendered v1 of every key:\n{}",
        logs()
    );
    let converged = t0.elapsed().as_secs_f64();
    // Two more rotation rounds by every agent (each checks every key): nothing may happen any more.
    let all: Vec<&support::Agent> = running.iter().map(|a| &a.agent).collect();
    assert!(support::wait_rotation_checks(&all, 2 * keys, Duration::from_secs(30)).await, "{}", logs());
    for name in &names {
        let r = store.require(&KeyName::parse(name).unwrap()).await.unwrap();
        assert_eq!(r.meta.current_version, 1, "{name}: exactly one version");
        assert_eq!(r.meta.versions.len(), 1, "{name}: exactly one version");
        let s = &r.state;
        assert_eq!((s.current, s.previous, s.pending), (Some(1), None, None), "{name}: {s:?}");
        assert!(s.intent.is_none() && s.failed.is_empty(), "{name}: {s:?}");
        assert!(s.fingerprints.contains_key(&1), "{name}: {s:?}");
    }
    let rotated: f64 =
        running.iter().map(|a| scrape(&a.listen, "keysync_rotations_total", &["result=\"rotated\""])).sum();
    assert_eq!(rotated as usize, keys, "each creation counted once: {}", logs());
    let created = logs().matches("declared key does not exist yet; creating it").count();
    drop(running);
    report::record(
        "Concurrency",
        &format!("{agents} agents with rotate = true start at once on {keys} declared keys (`generate`) that do not exist in Vault"),
        1,
        &format!(
            "exactly {keys} keys at v1 (one version each, current = 1, no previous, no pending, no intent), every agent rendered all {keys} {converged:.1} s after start; {created} creation attempts, keysync_rotations_total{{result=\"rotated\"}} summed over the agents = {rotated}"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_agent_mints_keys_side_by_side_but_never_more_than_four_at_once() {
    let keys = 10;
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Each mint adds a file to inflight/ before counting it, removes it after 1 s: the count it
    // writes is never more than the mints truly in flight.
    let mint = format!(
        "d={d}; mkdir -p $d/inflight; t=$d/inflight/$$; touch $t; ls $d/inflight | wc -l >> $d/seen; sleep 1; rm -f $t; printf '{{\"api_key\": \"sk-conc-%s-xxxxxxxxxxxxxxxxxxxx\"}}' $$",
        d = d.display()
    );
    let names: Vec<String> = (0..keys).map(|i| format!("c{i:02}")).collect();
    let mut body = String::from(
        "[agent]\npoll_interval = \"500ms\"\nlisten = \"LISTEN\"\nrotate = true\nrotation_check_interval = \"1s\"\n",
    );
    for name in &names {
        body.push_str(&format!("[keys.{name}.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\n"));
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    body.push_str(&format!(
        "[[sinks]]\npath = \"{}/all.json\"\nformat = \"json\"\nkeys = [{}]\n",
        d.display(),
        quoted.join(", ")
    ));
    let agent = start_agent(&server, d, "agent-conc", &body, &[]);
    let rendered = || {
        let Ok(text) = std::fs::read_to_string(d.join("all.json")) else { return false };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
        names.iter().all(|n| v[n]["version"] == 1)
    };
    assert!(
        eventually(Duration::from_secs(60), rendered).await,
        "not every key was created and rendered: {}",
        agent.agent.log_text()
    );
    let seen = std::fs::read_to_string(d.join("seen")).unwrap_or_default();
    let counts: Vec<usize> = seen.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(counts.len(), keys, "one mint per key: {seen}");
    let most = counts.iter().copied().max().unwrap_or(0);
    eprintln!("most mints in flight at once: {most}");
    assert!(most <= 4, "{most} mints at once: the agent's bound is 4");
    assert!(most >= 2, "the keys were minted one after the other ({most} at once at most)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_creates_an_absent_declared_key_and_a_manual_key_asks_for_put() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    let cfg = d.join("keysync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keys.gw.provider]\ntype = \"generate\"\nprefix = \"sk-gw-\"\n\
             [keys.svc.provider]\n{}\
             [keys.hand.provider]\ntype = \"manual\"\n",
            logging_provider(d)
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    for key in ["gw", "svc"] {
        let (code, stdout, stderr) = cli.run(&["--config", &cfg, "rotate", key]);
        assert_eq!(code, 0, "{key}: {stdout}{stderr}");
        assert!(stdout.contains("rotated: v1 is current"), "{key}: {stdout}");
        let status = cli.json(&["status", key]);
        assert_eq!(status[0]["latest_version"], 1, "{key}: {status}");
        assert_eq!(status[0]["current"]["version"], 1, "{key}: {status}");
        assert!(status[0]["previous"].is_null() && status[0]["pending"].is_null(), "{key}: {status}");
        // Once it exists, a plain rotate is a no-op until due.
        let (code, stdout, _) = cli.run(&["--config", &cfg, "rotate", key]);
        assert_eq!(code, 0);
        assert!(stdout.contains("not due"), "{key}: {stdout}");
    }
    let got = cli.json(&["get", "svc"]);
    assert_eq!(got["fields"]["key_id"].as_str(), lines(d, "minted").first().map(String::as_str));
    let (code, stdout, stderr) = cli.run(&["--config", &cfg, "rotate", "hand", "--force"]);
    assert_ne!(code, 0, "{stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("does not exist; create it with `keysync put hand`"),
        "{stdout}{stderr}"
    );
    report::record(
        "Concurrency",
        "`keysync rotate NAME` on a declared key that is not in Vault yet (generate, command) and on a manual one",
        1,
        "generate and command keys created as v1 (current, no previous); the manual key refused with \"does not exist; create it with `keysync put hand`\"",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_never_delays_a_render_or_readyz() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    cli.run_with_stdin(&["put", "fast"], "sk-fast-first-xxxxxxxxxxxxxxxx");
    let mint = format!(
        "touch {d}/started; sleep 6; printf '{{\"api_key\": \"sk-slow-%s-xxxxxxxxxxxxxxxx\"}}' $$",
        d = d.display()
    );
    let body = format!(
        "[agent]\npoll_interval = \"200ms\"\nlisten = \"LISTEN\"\nrotate = true\nrotation_check_interval = \"200ms\"\n\
         [keys.slow.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\ntimeout = \"20s\"\n\
         [[keys.fast.sinks]]\npath = \"{}/fast.key\"\n",
        d.display()
    );
    let agent = start_agent(&server, d, "agent-slow", &body, &[]);
    let fast = d.join("fast.key");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&fast).is_ok_and(|t| t.contains("first"))).await,
        "first render: {}",
        agent.agent.log_text()
    );
    assert!(
        eventually(Duration::from_secs(10), || d.join("started").exists()).await,
        "the slow mint did not start: {}",
        agent.agent.log_text()
    );
    // While the provider sleeps: a change reaches the file within a poll, /readyz stays 200.
    let changed_at = Instant::now();
    cli.run_with_stdin(&["put", "fast"], "sk-fast-second-xxxxxxxxxxxxxxxx");
    let mut not_ready = 0;
    let mut looks = 0;
    let mut propagated = None;
    while changed_at.elapsed() < Duration::from_secs(4) {
        let (status, _) = support::faults::http_get(&agent.listen, "/readyz");
        looks += 1;
        if status != 200 {
            not_ready += 1;
        }
        if propagated.is_none() && std::fs::read_to_string(&fast).is_ok_and(|t| t.contains("second")) {
            propagated = Some(changed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let propagated =
        propagated.unwrap_or_else(|| panic!("the change did not reach the file: {}", agent.agent.log_text()));
    assert!(propagated < Duration::from_millis(1500), "a render waited for the provider: {propagated:?}");
    assert_eq!(not_ready, 0, "/readyz failed {not_ready} of {looks} times while the provider was slow");
    // The slow mint finishes and the key is created without disturbing anything.
    assert!(
        eventually(Duration::from_secs(15), || cli.run(&["status", "slow"]).0 == 0).await,
        "the slow key was not created: {}",
        agent.agent.log_text()
    );
    report::record(
        "Faults",
        "provider that takes 6 s to mint (command that sleeps) while a rotating agent renders another key",
        1,
        &format!(
            "a change of the other key reached its file {:.0} ms after the put (poll 200 ms) while the mint was running; /readyz 200 on all {looks} checks; the slow key was created afterwards",
            propagated.as_secs_f64() * 1000.0
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_agents_finishing_the_same_pending_version_count_it_once() {
    use keysync::rotation::{Engine, KeyPlan, Memory, Outcome, SystemClock};
    use keysync::secret::Secret;
    use keysync::store::{KeyData, PutOptions};
    use keysync::telemetry::{KeyResultLabel, Metrics};
    let rounds = report::scale(20, 100);
    let agents = 8;
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "writer").await;
    let mut stores = Vec::new();
    for a in 0..agents {
        stores.push(
            support::key_store(&server, &server.root_token, Duration::from_secs(3600), &format!("agent-{a}")).await,
        );
    }
    let name = KeyName::parse("shared").unwrap();
    let plan = || KeyPlan {
        name: name.clone(),
        policy: Default::default(),
        provider: std::sync::Arc::new(keysync::provider::GenerateConfig::default()),
        validation: None,
        grace: Duration::from_secs(3600),
        adopt_after: Duration::from_secs(30),
        ack_ttl: Duration::from_secs(60),
        max_hold: Duration::from_secs(3600),
    };
    let put = |i: usize, promote: bool| {
        let data = KeyData::new(Secret::new(format!("sk-shared-{i:04}-xxxxxxxxxxxxxxxx")));
        (data, PutOptions { promote, reason: "test".into(), keep_fields: false })
    };
    let (data, opts) = put(0, true);
    writer.put(&name, data, &opts).await.unwrap();
    let metrics: Vec<Metrics> = (0..agents).map(|_| Metrics::new()).collect();
    let memory: Vec<Memory> = (0..agents).map(|_| Memory::default()).collect();
    for round in 1..=rounds {
        // A pending version (as a crashed or slow minter leaves it), finished by every agent at once.
        let (data, opts) = put(round, false);
        let pending = writer.put(&name, data, &opts).await.unwrap().version;
        let clock = SystemClock;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(agents));
        let plan = plan();
        let steps = (0..agents).map(|a| {
            let engine = Engine::new(&stores[a], &clock, Some(&metrics[a]), &memory[a]);
            let (barrier, plan) = (barrier.clone(), &plan);
            async move {
                barrier.wait().await;
                engine.step(plan, false, "test").await.unwrap()
            }
        });
        let outcomes = futures_util::future::join_all(steps).await;
        let rotated = outcomes.iter().filter(|o| matches!(o, Outcome::Rotated { .. })).count();
        assert_eq!(rotated, 1, "round {round}: exactly one agent reports the promotion: {outcomes:?}");
        let r = writer.require(&name).await.unwrap();
        assert_eq!(r.state.current, Some(pending), "round {round}");
    }
    let label = KeyResultLabel { key: "shared".into(), result: "rotated".into() };
    let counted: u64 = metrics.iter().map(|m| m.rotations_total.get_or_create(&label).get()).sum();
    assert_eq!(counted as usize, rounds, "keysync_rotations_total{{result=\"rotated\"}} over all agents");
    report::record(
        "Concurrency",
        &format!("{agents} agents finish the same pending version at the same instant (promotion is a metadata PATCH without CAS)"),
        rounds,
        &format!(
            "every version promoted; exactly one agent per round reports and counts the promotion (keysync_rotations_total{{result=\"rotated\"}} over all agents = {counted} for {rounds} promotions; the others found it promoted or lost the CAS-claimed promotion record)"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_outage_is_one_rotation_warning_not_one_per_key_per_check() {
    let keys = 10;
    let server = DevServer::start();
    let proxy = FaultProxy::start(&server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names: Vec<String> = (0..keys).map(|i| format!("gw{i:02}")).collect();
    let mut body = String::from(
        "[agent]\npoll_interval = \"200ms\"\nlisten = \"off\"\nrotate = true\nrotation_check_interval = \"200ms\"\n",
    );
    for name in &names {
        body.push_str(&format!(
            "[keys.{name}.provider]\ntype = \"generate\"\n[keys.{name}.rotation]\ninterval = \"30d\"\n\
             [[keys.{name}.sinks]]\npath = \"{}/{name}.key\"\n",
            d.display()
        ));
    }
    let cfg = d.join("agent.toml");
    std::fs::write(&cfg, &body).unwrap();
    let agent = support::Agent::start(&cfg, &proxy.addr, &server.root_token, &["run"], d);
    // The agent creates every key (absent: due) and renders them.
    assert!(
        eventually(Duration::from_secs(30), || names.iter().all(|n| d.join(format!("{n}.key")).exists())).await,
        "keys not created and rendered: {}",
        agent.log_text()
    );
    let before = agent.log_text().len();
    let outage = Duration::from_secs(5);
    proxy.set(Mode::Cut);
    tokio::time::sleep(outage).await;
    proxy.set(Mode::Pass);
    assert!(
        eventually(Duration::from_secs(10), || agent.log_text()[before..]
            .contains("Vault reachable again; rotation resumed"))
        .await,
        "no recovery line: {}",
        &agent.log_text()[before..]
    );
    let log = agent.log_text()[before..].to_string();
    let rotation_warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ") && l.contains("rotation")).collect();
    assert_eq!(rotation_warnings.len(), 1, "one warning per outage: {rotation_warnings:#?}");
    assert!(rotation_warnings[0].contains("rotation paused: Vault cannot be reached"), "{rotation_warnings:?}");
    assert!(!log.contains("rotation step failed"), "{log}");
    let recovered: Vec<&str> = log.lines().filter(|l| l.contains("Vault reachable again")).collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    let failures = recovered[0]
        .split("failures=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= keys as u64, "the recovery line counts the failed steps: {}", recovered[0]);
    drop(agent);
    report::record(
        "Faults",
        &format!("{}-s Vault outage under a rotating agent with {keys} keys, rotation check every 200 ms", outage.as_secs()),
        1,
        &format!(
            "1 rotation warning (\"rotation paused\") and 1 recovery line counting {failures} failed steps, instead of one warning per key per check ({failures} lines before)"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_key_that_cannot_be_marked_revoked_is_kept_and_revoked_at_the_next_check() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    cli.run_with_stdin(&["put", "svc"], "sk-safe-initial-xxxxxxxxxxxxxxxx");
    let body = |interval: &str| {
        format!(
            "[agent]\npoll_interval = \"500ms\"\nlisten = \"LISTEN\"\nrotate = true\nrotation_check_interval = \"300ms\"\n\
             [keys.svc.provider]\n{}[keys.svc.rotation]\ninterval = \"{interval}\"\n\
             [[keys.svc.sinks]]\npath = \"{}/svc.key\"\n",
            logging_provider(d),
            d.display()
        )
    };
    // Every write fails before landing; half the marks fail as if Vault were down right then.
    let faults = [("KEYSYNC_FAILPOINT_ERROR", "kv_write_refused,mark_unstored@0.5")];
    let agent = start_agent(&server, d, "agent-0", &body("1s"), &faults);
    let kept = || agent.agent.log_text().matches("cannot mark the unstored key revoked yet").count();
    assert!(
        eventually(Duration::from_secs(60), || kept() >= 3 && lines(d, "minted").len() >= 6).await,
        "not enough failed marks: {}",
        agent.agent.log_text()
    );
    std::fs::write(d.join("agent-0.toml"), body("30d").replace("LISTEN", &agent.listen)).unwrap();
    agent.agent.signal(libc::SIGHUP);
    // After the reload nothing is due; each kept key is settled at the next check.
    let settled = eventually(Duration::from_secs(20), || {
        let revoked: BTreeSet<String> = lines(d, "revoked").into_iter().collect();
        lines(d, "minted").iter().all(|m| revoked.contains(m))
    })
    .await;
    let logs = agent.agent.log_text();
    assert!(
        settled,
        "a minted key was never revoked: minted {:?}, revoked {:?}\n{logs}",
        lines(d, "minted"),
        lines(d, "revoked")
    );
    let minted = lines(d, "minted").len();
    let kept = logs.matches("cannot mark the unstored key revoked yet").count();
    let later = logs.matches("the write of the earlier rotation did not land; revoking its key").count();
    assert!(later >= 1, "{logs}");
    assert!(!logs.contains("an earlier rotation was interrupted"), "false interrupted-rotation warning:\n{logs}");
    let r = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "observer")
        .await
        .require(&KeyName::parse("svc").unwrap())
        .await
        .unwrap();
    assert_eq!((r.meta.current_version, r.state.current), (1, Some(1)), "nothing stored, current kept");
    assert!(r.state.intent.is_none(), "the intents were cleared: {:?}", r.state);
    drop(agent);
    report::record(
        "Crashes",
        "rotating agent whose every rotation write fails before landing, and half the attempts to mark the minted key revoked fail (Vault down at that moment)",
        minted,
        &format!(
            "{minted} keys minted, all revoked in the end; {kept} marks failed (the key was kept, never revoked unmarked), {later} times a kept key was settled at a later check (not stored: marked, then revoked); current key kept, intents cleared, 0 \"interrupted rotation\" warnings"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_during_a_long_outage_keeps_the_key_and_the_next_run_adopts_it() {
    let server = DevServer::start();
    let proxy = std::sync::Arc::new(FaultProxy::start(&server.addr).await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    let cfg = d.join("keysync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rotation]\nadopt_after = \"0s\"\n[keys.svc.provider]\n{}[keys.svc.rotation]\ninterval = \"30d\"\ngrace = \"1h\"\n",
            logging_provider(d)
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    cli.run_with_stdin(&["put", "svc"], "sk-safe-initial-xxxxxxxxxxxxxxxx");
    // The write lands, its answer is lost, and Vault stays unreachable longer than keysync
    // keeps asking (20 s).
    let p = proxy.clone();
    let started = Instant::now();
    let (code, out) = rotate_with(
        &cli,
        &proxy.addr,
        &cfg,
        &["svc", "--force"],
        &[("KEYSYNC_FAILPOINT_ERROR", "kv_write_lost_answer"), ("KEYSYNC_FAILPOINT_PAUSE_MS", "300")],
        move || p.set(Mode::Cut),
    );
    let asked_for = started.elapsed();
    proxy.set(Mode::Pass);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("its key is kept, not revoked"), "{out}");
    let minted = lines(d, "minted");
    assert_eq!(minted.len(), 1);
    assert!(lines(d, "revoked").is_empty(), "a key that may be stored was revoked: {out}");
    let status = cli.json(&["status", "svc"]);
    assert_eq!(status[0]["latest_version"], 2, "the write landed: {status}");
    assert_eq!(status[0]["current"]["version"], 1, "{status}");
    assert!(
        status[0]["interrupted_rotation"].as_str().is_some_and(|i| !i.is_empty()),
        "the intent is the trace: {status}"
    );
    // The next run finds the stored version and adopts it.
    let (code, stdout, stderr) = cli.run(&["--config", &cfg, "rotate", "svc"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("rotated: v2 is current"), "{stdout}");
    let status = cli.json(&["status", "svc"]);
    assert!(status[0]["interrupted_rotation"].is_null(), "{status}");
    assert_eq!(cli.json(&["get", "svc"])["fields"]["key_id"].as_str(), Some(minted[0].as_str()));
    assert!(lines(d, "revoked").is_empty());
    report::record(
        "Crashes",
        "CAS write of a rotated key lands, its answer is lost and Vault stays unreachable longer than keysync keeps asking (`keysync rotate`), then keysync runs again",
        1,
        &format!(
            "asked Vault for {:.0} s, then exited 1 saying the key is kept, not revoked; the intent stayed as the trace; the next run adopted the stored version and promoted it; 0 keys revoked",
            asked_for.as_secs_f64()
        ),
    );
}
