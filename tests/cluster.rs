//! A 3-node raft cluster (127.0.0.1–3, TLS) whose leader is SIGKILLed under running agents.
//!
//! - `an_agent_listing_all_three_nodes_stays_ready_through_a_leader_kill` (CI, ~1 min): one
//!   agent with `vault.address` listing every node keeps rendering; it is not ready at most
//!   for the election, and a write made during the election lands once a leader is back.
//! - `leader_sigkilled_during_rotations` (ignored in plain `cargo test`; `scripts/reliability`
//!   runs it with `--include-ignored`): rotating agents, one pinned to each node plus one
//!   listing all three, while the leader is SIGKILLed right after a rotation's CAS write (or
//!   right after the keys fell due), restarted and unsealed; every round each key gets
//!   exactly one new version, no sink is ever torn, and each agent's time to be ready again
//!   is measured.

mod support;

use keysync::config::{AuthConfig, VaultConfig};
use keysync::secret::Secret;
use keysync::store::{KeyData, KeyName, KeyStore, Kv, PutOptions};
use keysync::vault::{Authenticator, Session, VaultClient, VaultSettings};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::faults::http_get;
use support::raft::Cluster;
use support::{eventually, report, Agent};

/// A key store reaching the cluster through every node's address.
async fn store(cluster: &Cluster, actor: &str) -> KeyStore {
    let cfg = VaultConfig {
        address: Some(cluster.addrs().join(", ")),
        ca_cert: Some(support::pki::pki().ca_cert.clone()),
        ..Default::default()
    };
    let client = VaultClient::new(VaultSettings::resolve(&cfg, &|_| None).expect("settings")).expect("client");
    let auth = Authenticator::with_env_token(AuthConfig::default(), Some(Secret::new(&cluster.root_token)));
    let session = Session::login(client, auth).await.expect("login through the cluster");
    KeyStore::new(Kv::new(session, "secret", "keysync"), Duration::from_secs(3600), actor)
}

/// Polls an agent's /readyz every 100 ms and keeps the moments it changed.
struct ReadyMonitor {
    changes: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
}

impl ReadyMonitor {
    fn start(listen: String) -> ReadyMonitor {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (changes.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = None;
            while !s.load(Ordering::Relaxed) {
                let ready = http_get(&listen, "/readyz").0 == 200;
                if last != Some(ready) {
                    c.lock().unwrap().push((Instant::now(), ready));
                    last = Some(ready);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        ReadyMonitor { changes, stop }
    }

    /// Seconds not ready within [from, to].
    fn not_ready_secs(&self, from: Instant, to: Instant) -> f64 {
        let changes = self.changes.lock().unwrap().clone();
        let mut total = 0.0;
        let mut state = changes.iter().rev().find(|(t, _)| *t <= from).map(|(_, r)| *r).unwrap_or(false);
        let mut since = from;
        for (t, ready) in changes.iter().filter(|(t, _)| *t > from && *t <= to) {
            if !state {
                total += (*t - since).as_secs_f64();
            }
            state = *ready;
            since = *t;
        }
        if !state {
            total += (to - since).as_secs_f64();
        }
        total
    }

    /// Seconds from `from` until the agent was ready again after its last not-ready stretch
    /// that began after `from` (0 when it never stopped being ready).
    fn ready_again_after(&self, from: Instant, to: Instant) -> f64 {
        let changes = self.changes.lock().unwrap().clone();
        changes
            .iter()
            .rfind(|(t, ready)| *t > from && *t <= to && *ready)
            .filter(|_| changes.iter().any(|(t, r)| *t > from && *t <= to && !*r))
            .map(|(t, _)| (*t - from).as_secs_f64())
            .unwrap_or(0.0)
    }
}

impl Drop for ReadyMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads a sink file every 2 ms (gentler than the suite's busy reader: three Vault nodes and
/// four agents share two cores here) and counts contents that `ok` refuses.
struct LightReader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
}

impl LightReader {
    fn start(path: PathBuf, ok: impl Fn(&str) -> bool + Send + 'static) -> LightReader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let (s, r, b) = (stop.clone(), reads.clone(), bad.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    r.fetch_add(1, Ordering::Relaxed);
                    if !ok(&text) {
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        LightReader { stop, reads, bad }
    }
}

impl Drop for LightReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `keysync run` with its own agent id, the root token and the test CA; the config names the
/// addresses.
fn spawn_agent(cfg: &Path, token: &str, id: &str, dir: &Path) -> Agent {
    support::leak::register(token);
    let log = dir.join(format!("{id}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_keysync"))
        .args(["--config", cfg.to_str().unwrap(), "--log-level", "debug", "run"])
        .env_remove("VAULT_ADDR")
        .env("VAULT_TOKEN", token)
        .env("KEYSYNC_AGENT_ID", id)
        .env("HOME", dir)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start keysync run");
    Agent { child, log }
}

fn json_sink(path: &Path, names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("[[sinks]]\npath = \"{}\"\nformat = \"json\"\nkeys = [{}]\n", path.display(), quoted.join(", "))
}

fn rendered_versions(path: &Path, names: &[String]) -> Option<Vec<u64>> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    names.iter().map(|n| v[n]["version"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_listing_all_three_nodes_stays_ready_through_a_leader_kill() {
    let started = Instant::now();
    let mut cluster = Cluster::start();
    let cluster_up = started.elapsed().as_secs_f64();
    let writer = store(&cluster, "test-writer").await;
    let name = KeyName::parse("openai").unwrap();
    let put = |key: &'static str| {
        let writer = &writer;
        let name = &name;
        async move {
            writer
                .put(
                    name,
                    KeyData::new(Secret::new(key)),
                    &PutOptions { promote: true, reason: "test".into(), keep_fields: false },
                )
                .await
        }
    };
    put("sk-cluster-one-aaaaaaaaaaaaaaaaaaaa").await.expect("first put");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let listen = support::free_listen_addr();
    let file = d.join("openai.key");
    let cfg = d.join("agent.toml");
    let quoted: Vec<String> = cluster.addrs().iter().map(|a| format!("{a:?}")).collect();
    std::fs::write(
        &cfg,
        format!(
            "[vault]\naddress = [{}]\nca_cert = \"{}\"\ntimeout = \"5s\"\n[agent]\npoll_interval = \"1s\"\nlisten = \"{listen}\"\n[[keys.openai.sinks]]\npath = \"{}\"\n",
            quoted.join(", "),
            support::pki::pki().ca_cert.display(),
            file.display()
        ),
    )
    .unwrap();
    let agent = spawn_agent(&cfg, &cluster.root_token, "all-three", d);
    assert!(
        eventually(Duration::from_secs(30), || http_get(&listen, "/readyz").0 == 200).await,
        "{}",
        agent.log_text()
    );
    let monitor = ReadyMonitor::start(listen.clone());
    let leader = cluster.leader().expect("a leader");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writer2 = store(&cluster, "test-writer-2").await;
    let killed = Instant::now();
    cluster.kill(leader);
    // A write during the election: retried by the client until a leader is back.
    let write = tokio::spawn({
        let writer = writer2;
        let name = name.clone();
        async move {
            let t = Instant::now();
            let r = writer
                .put(
                    &name,
                    KeyData::new(Secret::new("sk-cluster-two-bbbbbbbbbbbbbbbbbbbb")),
                    &PutOptions { promote: true, reason: "during the election".into(), keep_fields: false },
                )
                .await;
            (r.map(|_| ()).map_err(|e| e.to_string()), t.elapsed())
        }
    });
    let (new_leader, election) =
        cluster.wait_leader(Some(leader), Duration::from_secs(60)).expect("no new leader within 60 s");
    let (written, write_took) = write.await.unwrap();
    let mut write_took = write_took;
    if let Err(e) = &written {
        // The election outlasted the client's patience: the error must say so, and the
        // next attempt (as the agent's next poll would) succeeds.
        assert!(e.contains("no active Vault node") || e.contains("cannot reach"), "{e}");
        let t = Instant::now();
        put("sk-cluster-two-bbbbbbbbbbbbbbbbbbbb").await.expect("write after the election");
        write_took += t.elapsed();
    }
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_to_string(&file)
            .is_ok_and(|t| t.trim() == "sk-cluster-two-bbbbbbbbbbbbbbbbbbbb"))
        .await,
        "{}",
        agent.log_text()
    );
    let rendered = killed.elapsed().as_secs_f64();
    assert!(eventually(Duration::from_secs(10), || http_get(&listen, "/readyz").0 == 200).await);
    let now = Instant::now();
    let not_ready = monitor.not_ready_secs(killed, now);
    let election = election.as_secs_f64();
    assert!(
        not_ready <= election + 5.0,
        "not ready {not_ready:.1} s, but the election took {election:.1} s: {}",
        agent.log_text()
    );
    report::record(
        "Cluster",
        "3-node raft cluster (TLS, 127.0.0.1–3): the leader SIGKILLed under an agent whose vault.address lists all three nodes, a write sent during the election",
        1,
        &format!(
            "cluster up in {cluster_up:.0} s; new leader node{} after {election:.1} s; the agent was not ready {not_ready:.1} s in all (the election, no longer); the write made during the election took {:.1} s ({}) and reached the file {rendered:.1} s after the kill",
            new_leader + 1,
            write_took.as_secs_f64(),
            if written.is_ok() { "retried by the client until a leader answered" } else { "failed once with \"no active Vault node\", then succeeded" }
        ),
    );
    drop(monitor);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long (several minutes): scripts/reliability runs it with --include-ignored"]
async fn leader_sigkilled_during_rotations() {
    let rounds = report::scale(2, 10);
    let keys = 5;
    let mut cluster = Cluster::start();
    let addrs = cluster.addrs();
    let writer = store(&cluster, "test-writer").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names: Vec<String> = (0..keys).map(|i| format!("c{i}")).collect();
    let dd = d.display();
    let mint = format!(
        "id=$(od -An -N8 -tx8 /dev/urandom | tr -d ' \\n'); echo $id >> {dd}/minted; printf '{{\"api_key\": \"sk-clu-%s-xxxxxxxx\", \"key_id\": \"%s\"}}' $id $id"
    );
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {dd}/revoked");
    let mut body = String::new();
    for name in &names {
        body.push_str(&format!(
            "[keys.{name}.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n\
             [keys.{name}.rotation]\ninterval = \"30d\"\ngrace = \"1h\"\n"
        ));
    }
    // Makes every key due: a new promoted version whose expiry has passed.
    let make_due = |round: usize| {
        let writer = &writer;
        let names = &names;
        async move {
            let mut versions = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let mut data = KeyData::new(Secret::new(format!("sk-clu-put-{round}-{i}-xxxxxxxxxxxxxxxx")));
                data.fields.insert("expires_at".into(), Value::String("2000-01-01T00:00:00Z".into()));
                let opts = PutOptions { promote: true, reason: format!("round {round}"), keep_fields: false };
                writer.put(&KeyName::parse(name).unwrap(), data, &opts).await.expect("put");
                versions.push(writer.require(&KeyName::parse(name).unwrap()).await.expect("read").meta.current_version);
            }
            versions
        }
    };
    // The keys exist, not due, before any agent starts: a rotating agent creates a declared key
    // that is missing, and a first round's `put` would then race it for version 1.
    for (i, name) in names.iter().enumerate() {
        let data = KeyData::new(Secret::new(format!("sk-clu-first-{i}-xxxxxxxxxxxxxxxx")));
        let opts = PutOptions { promote: true, reason: "first version".into(), keep_fields: false };
        writer.put(&KeyName::parse(name).unwrap(), data, &opts).await.expect("first put");
    }
    // Agents: one pinned to each node, one listing all three.
    let mut agents = Vec::new();
    let mut monitors = Vec::new();
    let mut readers = Vec::new();
    let mut labels = Vec::new();
    let mut sinks = Vec::new();
    let plans: Vec<(String, Vec<String>)> = (0..3)
        .map(|i| (format!("node{}-only", i + 1), vec![addrs[i].clone()]))
        .chain([("all-three".to_string(), addrs.clone())])
        .collect();
    for (label, list) in &plans {
        let listen = support::free_listen_addr();
        let sink = d.join(format!("{label}.json"));
        let quoted: Vec<String> = list.iter().map(|a| format!("{a:?}")).collect();
        let cfg = d.join(format!("{label}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[vault]\naddress = [{}]\nca_cert = \"{}\"\ntimeout = \"5s\"\n[agent]\npoll_interval = \"1s\"\nfull_sync_interval = \"15s\"\nlisten = \"{listen}\"\nrotate = true\nrotation_check_interval = \"1s\"\n{body}{}",
                quoted.join(", "),
                support::pki::pki().ca_cert.display(),
                json_sink(&sink, &names)
            ),
        )
        .unwrap();
        let agent = spawn_agent(&cfg, &cluster.root_token, label, d);
        let names_c = names.clone();
        readers.push(LightReader::start(sink.clone(), move |t| {
            serde_json::from_str::<Value>(t).is_ok_and(|v| names_c.iter().all(|n| v[n]["api_key"].is_string()))
        }));
        monitors.push(ReadyMonitor::start(listen));
        agents.push(agent);
        labels.push(label.clone());
        sinks.push(sink);
    }
    let logs = |agents: &[Agent]| agents.iter().map(|a| a.log_text()).collect::<Vec<_>>().join("\n----\n");
    let mut elections = Vec::new();
    let mut ready_again: Vec<Vec<f64>> = vec![Vec::new(); agents.len()];
    let mut kill_after_cas = 0;
    // The key id that was current at the end of each round, per key.
    let mut currents: BTreeSet<String> = BTreeSet::new();
    // `promoted key=… version=…` for each round's one new version of each key.
    let mut expected_promotions: BTreeSet<String> = BTreeSet::new();
    for round in 0..rounds {
        let base = make_due(round).await;
        let leader = cluster.leader().expect("a leader before the round");
        // Even rounds: kill right after the first rotation's CAS write lands; odd rounds:
        // right after the keys fell due (rotations about to start).
        if round % 2 == 0 {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut advanced = false;
                for (i, n) in names.iter().enumerate() {
                    let admin = cluster.admin(leader);
                    let (s, v) = admin.try_read(&format!("secret/metadata/keysync/{n}")).await;
                    if s == 200 && v["data"]["current_version"].as_u64().unwrap_or(0) > base[i] {
                        advanced = true;
                        break;
                    }
                }
                if advanced {
                    kill_after_cas += 1;
                    break;
                }
                assert!(Instant::now() < deadline, "no rotation started: {}", logs(&agents));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let killed = Instant::now();
        cluster.kill(leader);
        let (_, election) = cluster.wait_leader(Some(leader), Duration::from_secs(90)).expect("no new leader");
        elections.push(election.as_secs_f64());
        cluster.restart(leader);
        // Every key: exactly one new version after the one that made it due, promoted, and
        // rendered by every agent.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let all_rendered = sinks.iter().all(|s| {
                rendered_versions(s, &names).is_some_and(|v| v.iter().zip(&base).all(|(got, b)| *got == b + 1))
            });
            if all_rendered {
                break;
            }
            if Instant::now() > deadline {
                let mut why = String::new();
                for (i, sink) in sinks.iter().enumerate() {
                    why.push_str(&format!("{}: {:?}\n", labels[i], rendered_versions(sink, &names)));
                }
                for n in &names {
                    let r = writer.require(&KeyName::parse(n).unwrap()).await.expect("read");
                    why.push_str(&format!("{n}: latest {} state {:?}\n", r.meta.current_version, r.state));
                }
                panic!(
                    "round {round}: not every agent rendered the rotation (expected versions {:?}):\n{why}\nagent logs (warnings):\n{}",
                    base.iter().map(|b| b + 1).collect::<Vec<_>>(),
                    logs(&agents).lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Everyone ready again (the agent pinned to the killed node only after its restart).
        let settle = Instant::now() + Duration::from_secs(30);
        while Instant::now() < settle
            && monitors.iter().any(|m| m.changes.lock().unwrap().last().is_some_and(|(_, r)| !*r))
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let now = Instant::now();
        for (i, m) in monitors.iter().enumerate() {
            assert!(
                m.changes.lock().unwrap().last().is_some_and(|(_, r)| *r),
                "round {round}: {} not ready again: {}",
                labels[i],
                agents[i].log_text()
            );
            ready_again[i].push(m.ready_again_after(killed, now));
        }
        let revoked_now: BTreeSet<String> =
            std::fs::read_to_string(d.join("revoked")).unwrap_or_default().lines().map(str::to_string).collect();
        for (i, n) in names.iter().enumerate() {
            let key = KeyName::parse(n).unwrap();
            let r = writer.require(&key).await.expect("read");
            let said = || -> String {
                agents
                    .iter()
                    .zip(&labels)
                    .flat_map(|(a, label)| {
                        a.log_text()
                            .lines()
                            .filter(|l| l.contains(&format!("key={n} ")) && !l.contains("NotDue"))
                            .map(|l| format!("[{label}] {l}"))
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(r.meta.current_version, base[i] + 1, "round {round}, {n}: exactly one new version:\n{}", said());
            assert_eq!(r.state.current, Some(base[i] + 1), "round {round}, {n}: promoted: {:?}\n{}", r.state, said());
            assert_eq!(r.state.previous, Some(base[i]), "round {round}, {n}: previous: {:?}\n{}", r.state, said());
            assert!(
                r.state.pending.is_none() && r.state.intent.is_none(),
                "round {round}, {n}: {:?}\n{}",
                r.state,
                said()
            );
            let keysync::store::VersionRead::Live(data) = writer.read(&key, base[i] + 1).await.expect("read data")
            else {
                panic!("round {round}, {n}: the current version has no data")
            };
            let id = data.fields.get("key_id").and_then(Value::as_str).unwrap_or_default().to_string();
            currents.insert(id.clone());
            expected_promotions.insert(format!("promoted key={n} version={}", base[i] + 1));
            assert!(
                !revoked_now.contains(&id),
                "round {round}, {n}: the current key {id} was revoked at the provider; what the agents did with {n}:\n{}",
                logs(&agents)
                    .lines()
                    .filter(|l| l.contains(&format!("key={n} ")) && !l.contains("NotDue") && !l.contains("another agent"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    // Each new version promoted exactly once, by one agent (agents log `promoted key=… version=…`).
    let all_logs = logs(&agents);
    let mut promotions: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for line in all_logs.lines().filter(|l| l.contains(" promoted key=")) {
        let tail = &line[line.find("promoted key=").unwrap_or(0)..];
        *promotions.entry(tail.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).or_default() += 1;
    }
    // Two agents finishing the same pending version at the same instant both log it; the
    // state they write is the same (checked each round: current = the new version,
    // previous = the one before it), so that is one promotion reported twice.
    let reported_twice = promotions.values().filter(|c| **c > 1).count();
    let stray: Vec<&String> = promotions.keys().filter(|k| !expected_promotions.contains(*k)).collect();
    assert!(stray.is_empty(), "versions promoted that were not the round's one new version: {stray:?}");
    let reads: u64 = readers.iter().map(|r| r.reads.load(Ordering::Relaxed)).sum();
    let torn: u64 = readers.iter().map(|r| r.bad.load(Ordering::Relaxed)).sum();
    drop(readers);
    drop(monitors);
    drop(agents);
    assert_eq!(torn, 0, "torn or unparsable sink contents");
    let lines = |f: &str| -> Vec<String> {
        std::fs::read_to_string(d.join(f)).unwrap_or_default().lines().map(str::to_string).collect()
    };
    let minted: BTreeSet<String> = lines("minted").into_iter().collect();
    let revoked: BTreeSet<String> = lines("revoked").into_iter().collect();
    assert_eq!(minted.len(), lines("minted").len(), "ids are unique");
    assert!(revoked.is_subset(&minted));
    assert_eq!(currents.len(), rounds * keys, "a new key per key per round");
    // No orphan at the provider: every minted key became current (and was retired by the
    // next round's rotation, or is current now) or was revoked by the agent that minted it.
    let accounted: BTreeSet<String> = currents.union(&revoked).cloned().collect();
    let orphans: Vec<&String> = minted.difference(&accounted).collect();
    assert!(
        orphans.is_empty(),
        "minted keys neither stored nor revoked: {orphans:?}; what the agents said about minted keys:\n{}",
        all_logs
            .lines()
            .filter(|l| l.contains("minted key") || l.contains("revoke") || l.contains("interrupted"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let losers = minted.difference(&currents).count();
    let retired = currents.intersection(&revoked).count();
    let stats = |v: &[f64]| {
        let max = v.iter().cloned().fold(0.0, f64::max);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        format!("mean {mean:.1} s, max {max:.1} s")
    };
    let per_agent: Vec<String> = labels.iter().zip(&ready_again).map(|(l, v)| format!("{l}: {}", stats(v))).collect();
    report::record(
        "Cluster",
        &format!(
            "3-node raft cluster (TLS): the leader SIGKILLed during rotations ({keys} due keys, 4 rotating agents: one pinned to each node, one listing all three; poll 1 s, full sync 15 s), {kill_after_cas} of {rounds} kills right after a rotation's CAS write, the others right after the keys fell due; the node restarted and unsealed each round"
        ),
        rounds,
        &format!(
            "every round each key got exactly one new version, promoted exactly once ({} promotions, no other version ever promoted; {reported_twice} reported by two agents finishing the same pending version together, same state written), its key not revoked while current; {} keys minted = {} stored ({retired} later retired by the next round's rotation) + {losers} revoked by the agents that minted them and lost a race or the write (0 orphans); 0 torn of {reads} sink reads; elections {}; time from the kill until each agent was ready again: {}",
            rounds * keys,
            minted.len(),
            currents.len(),
            stats(&elections),
            per_agent.join("; ")
        ),
    );
}
