//! Many rotating agents (`keysync run` with `agent.rotate = true`) on the same due keys at the
//! same moment, against the real dev server: exactly one new version per key, no field of the
//! key data or of its rotation state lost, every agent rendering the result. 3 agents × 20
//! keys in CI, 10 × 100 with `KEYSYNC_RELIABILITY_FULL=1`.

mod support;

use keysync::secret::Secret;
use keysync::store::{KeyData, KeyName, PutOptions, VersionRead};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{report, DevServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rotating_agents_make_exactly_one_new_version_per_due_key() {
    let agents = report::scale(3, 10);
    let keys = report::scale(20, 100);
    let server = DevServer::start();
    let store = support::key_store(&server, &server.root_token, Duration::from_secs(3600), "test-writer").await;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..keys).map(|i| format!("k{i:03}")).collect();
    // A provider that can revoke: every key it mints and every key it revokes is logged, so
    // the agents that lose a race must be seen revoking what they minted.
    let d = dir.path().display();
    let mint = format!(
        "id=$(od -An -N8 -tx8 /dev/urandom | tr -d ' \\n'); echo $id >> {d}/minted; printf '{{\"api_key\": \"sk-conc-%s-xxxxxxxx\", \"key_id\": \"%s\"}}' $id $id"
    );
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
    let mut body = String::from(
        "[agent]\npoll_interval = \"1s\"\nlisten = \"off\"\nrotate = true\nrotation_check_interval = \"1s\"\n",
    );
    for (i, name) in names.iter().enumerate() {
        let mut data = KeyData::new(Secret::new(format!("sk-conc-{i:03}-first-xxxxxxxxxxxxxxxx")));
        // Expired: due now. Plus fields that must survive the rotation.
        data.fields.insert("expires_at".into(), Value::String("2000-01-01T00:00:00Z".into()));
        data.fields.insert("owner".into(), Value::String(format!("team-{i}")));
        data.fields.insert("base_url".into(), Value::String("https://llm.example/v1".into()));
        let opts = PutOptions { promote: true, reason: "setup".into(), keep_fields: true };
        store.put(&KeyName::parse(name).unwrap(), data, &opts).await.unwrap();
        body.push_str(&format!(
            "[keys.{name}.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n\
             [keys.{name}.rotation]\ninterval = \"30d\"\ngrace = \"1h\"\n"
        ));
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let mut children = Vec::new();
    let t0 = Instant::now();
    for a in 0..agents {
        let out = dir.path().join(format!("agent{a}.json"));
        let cfg = dir.path().join(format!("agent{a}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "{body}[[sinks]]\npath = \"{}\"\nformat = \"json\"\nkeys = [{}]\n",
                out.display(),
                quoted.join(", ")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join(format!("agent{a}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_keysync"))
            .args(["--config", cfg.to_str().unwrap(), "--log-level", "debug", "run"])
            .env("VAULT_ADDR", &server.addr)
            .env("VAULT_TOKEN", &server.root_token)
            .env("KEYSYNC_AGENT_ID", format!("agent-{a}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        children.push(support::Agent { child, log: dir.path().join(format!("agent{a}.log")) });
    }
    let logs = |children: &[support::Agent]| children.iter().map(|c| c.log_text()).collect::<Vec<_>>().join("\n");

    // Every key promoted once, and every agent renders all of them at v2.
    let rendered_v2 = |a: usize| -> bool {
        let Ok(text) = std::fs::read_to_string(dir.path().join(format!("agent{a}.json"))) else { return false };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
        names.iter().all(|n| v[n]["version"] == 2)
    };
    let timeout = Duration::from_secs(if report::full() { 300 } else { 120 });
    if !support::eventually(timeout, || (0..agents).all(rendered_v2)).await {
        {
            let mut why = String::new();
            let index = store.kv().index().read().await.unwrap();
            for a in 0..agents {
                let text = std::fs::read_to_string(dir.path().join(format!("agent{a}.json"))).unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                for n in names.iter().filter(|n| v[n.as_str()]["version"] != 2) {
                    let r = store.require(&KeyName::parse(n).unwrap()).await.unwrap();
                    why.push_str(&format!(
                        "agent{a} renders {n} v{}; latest {}, state {:?}; index {:?}\n",
                        v[n.as_str()]["version"],
                        r.meta.current_version,
                        r.state,
                        index.entries.get(n)
                    ));
                }
            }
            panic!("not every agent rendered v2 of every key in time:\n{why}\n{}", logs(&children));
        }
    }
    let converged = t0.elapsed().as_secs_f64();
    // Two more rotation rounds by every agent (each checks every key): nothing may happen any more.
    let all: Vec<&support::Agent> = children.iter().collect();
    assert!(support::wait_rotation_checks(&all, 2 * keys, Duration::from_secs(30)).await, "{}", logs(&children));
    let all_logs = logs(&children);
    drop(children);

    let mut versions = 0;
    for (i, name) in names.iter().enumerate() {
        let n = KeyName::parse(name).unwrap();
        let r = store.require(&n).await.unwrap();
        assert_eq!(r.meta.current_version, 2, "{name}: exactly one new version");
        versions += r.meta.current_version - 1;
        let s = &r.state;
        assert_eq!(s.current, Some(2), "{name}: {s:?}");
        assert_eq!(s.previous, Some(1), "{name}: {s:?}");
        assert!(s.pending.is_none() && s.intent.is_none() && s.failed.is_empty(), "{name}: {s:?}");
        assert!(s.fingerprints.contains_key(&1) && s.fingerprints.contains_key(&2), "{name}: {s:?}");
        assert!(s.grace_until.is_some() && s.rotated_at.is_some(), "{name}: {s:?}");
        assert!(s.rotated_by.as_deref().is_some_and(|a| a.starts_with("agent-")), "{name}: {s:?}");
        let VersionRead::Live(d) = store.read(&n, 2).await.unwrap() else { panic!("{name}: v2 has no data") };
        assert_eq!(d.fields["owner"], format!("team-{i}"), "{name}: field lost");
        assert_eq!(d.fields["base_url"], "https://llm.example/v1", "{name}: field lost");
        assert!(!d.fields.contains_key("expires_at"), "{name}: the old key's expiry was copied onto the new key");
        assert_eq!(s.fingerprints[&2], d.api_key.fingerprint(), "{name}: state and data disagree");
        let VersionRead::Live(d1) = store.read(&n, 1).await.unwrap() else { panic!("{name}: v1 has no data") };
        assert_eq!(s.fingerprints[&1], d1.api_key.fingerprint());
    }
    let index = store.kv().index().read().await.unwrap();
    for name in &names {
        let e = &index.entries[name];
        assert_eq!((e.current, e.previous), (Some(2), Some(1)), "{name}: change index disagrees: {e:?}");
    }
    // Agents log each rotation step's outcome at debug level.
    let lost = all_logs.matches("outcome=LostRace").count();
    let rotated = all_logs.matches("outcome=Rotated").count();
    assert_eq!(versions as usize, keys);
    // No orphan at the provider: minted = stored as v2 + revoked by the agents that lost.
    let lines = |f: &str| -> Vec<String> {
        std::fs::read_to_string(dir.path().join(f)).unwrap_or_default().lines().map(str::to_string).collect()
    };
    let minted: BTreeSet<String> = lines("minted").into_iter().collect();
    let revoked: BTreeSet<String> = lines("revoked").into_iter().collect();
    assert_eq!(lines("minted").len(), minted.len(), "ids are unique");
    let mut stored = BTreeSet::new();
    for name in &names {
        let n = KeyName::parse(name).unwrap();
        let VersionRead::Live(d) = store.read(&n, 2).await.unwrap() else { unreachable!() };
        stored.insert(d.fields["key_id"].as_str().unwrap().to_string());
    }
    assert!(stored.is_disjoint(&revoked), "a stored key was revoked");
    let accounted: BTreeSet<String> = stored.union(&revoked).cloned().collect();
    assert_eq!(minted, accounted, "every minted key is either stored or revoked");
    report::record(
        "Concurrency",
        &format!("{agents} agents with rotate = true start at once on {keys} due keys (command provider that logs mints and revocations)"),
        1,
        &format!(
            "exactly {versions} new versions (one per key); {} keys minted = {versions} stored + {} revoked by the agents that lost (0 orphans); state (current, previous, fingerprints, rotated_by) and fields (owner, base_url) intact on all {keys}, change index consistent, every agent rendered v2 of every key {converged:.1} s after start; {lost} steps found another agent ahead (lost the CAS race or left it to the writer), {rotated} promotions reported{}",
            minted.len(),
            revoked.len(),
            if rotated > keys {
                " (two peers finishing the same pending version at the same instant both report it; the write is the same)"
            } else {
                ""
            }
        ),
    );
}
