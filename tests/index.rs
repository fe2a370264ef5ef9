//! The sharded change index against the real server: concurrent writers of one shard lose
//! nothing, a steady poll is one small read, a change costs an agent one shard read, and an
//! agent on a legacy (format 1) index keeps working through the upgrade.

mod support;

use keysync::store::{
    names_in_shard, shard_of, IndexCursor, IndexEntry, IndexFormat, KeyData, KeyName, KeyStore, PutOptions, INDEX_DIR,
    INDEX_NAME,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::{eventually, report, Agent, DevServer};

async fn store(server: &DevServer, actor: &str) -> KeyStore {
    support::key_store(server, &server.root_token, Duration::from_secs(3600), actor).await
}

fn name(n: &str) -> KeyName {
    KeyName::parse(n).unwrap()
}

fn entry(current: u64) -> IndexEntry {
    IndexEntry {
        current: Some(current),
        fingerprint: Some(keysync::secret::fingerprint(&current.to_le_bytes())),
        ..Default::default()
    }
}

#[tokio::test]
async fn ten_writers_on_one_shard_lose_no_entry() {
    let server = DevServer::start();
    let writers = 10;
    let per_writer = report::scale(5, 20);
    let rounds = report::scale(3, 10);
    // Every name falls in the same shard, so every write is a merge into one secret.
    let names = names_in_shard(0x5a, writers * per_writer, "shared-");
    let mut stores = Vec::new();
    for w in 0..writers {
        stores.push(store(&server, &format!("writer-{w}")).await);
    }
    let started = Instant::now();
    for round in 1..=rounds as u64 {
        let mut tasks = tokio::task::JoinSet::new();
        for (w, s) in stores.iter().enumerate() {
            let index = s.kv().index();
            let mine: Vec<String> = names[w * per_writer..(w + 1) * per_writer].to_vec();
            tasks.spawn(async move {
                for n in mine {
                    index.update(&name(&n), &entry(round)).await.expect("index update");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
    let snapshot = stores[0].kv().index().read().await.unwrap();
    assert_eq!(snapshot.format, IndexFormat::Sharded);
    assert_eq!(snapshot.shards.keys().copied().collect::<Vec<_>>(), vec![0x5a], "one shard only");
    let missing: Vec<&String> = names.iter().filter(|n| !snapshot.entries.contains_key(*n)).collect();
    assert!(missing.is_empty(), "entries lost by concurrent writers: {missing:?}");
    let stale: Vec<&String> = names.iter().filter(|n| snapshot.entries[*n].current != Some(rounds as u64)).collect();
    assert!(stale.is_empty(), "entries left at an older round: {stale:?}");
    // Every writer's root PATCH named a version the shard reached; the root holds one of them.
    let writes = (writers * per_writer * rounds) as u64;
    let (shard_version, _) = snapshot.shards[&0x5a];
    assert!(shard_version >= writes, "shard at v{shard_version} after {writes} writes");
    report::record(
        "Concurrency",
        &format!(
            "{writers} writers at once on keys that share one index shard, {per_writer} keys each, {rounds} rounds"
        ),
        rounds,
        &format!(
            "{} entries present with the last round's value, 0 lost; {writes} shard merges in {:.1} s",
            names.len(),
            started.elapsed().as_secs_f64()
        ),
    );
}

#[tokio::test]
async fn a_steady_poll_is_one_small_read_and_a_change_costs_one_shard_read() {
    let server = DevServer::start();
    let writer = store(&server, "writer").await;
    let index = writer.kv().index();
    // Entries in every shard, so the root is as large as it gets.
    let mut all = BTreeMap::new();
    for s in 0..=255u8 {
        for n in names_in_shard(s, 2, "k") {
            all.insert(name(&n), entry(1));
        }
    }
    index.update_many(&all).await.unwrap();
    let snapshot = index.read().await.unwrap();
    assert_eq!(snapshot.shards.len(), 256);
    assert_eq!(snapshot.entries.len(), 512);

    let reader = store(&server, "reader").await;
    let watched: BTreeSet<KeyName> = all.keys().take(40).cloned().collect();
    let mut cursor = IndexCursor::default();
    let first = reader.kv().index().poll(&mut cursor, &watched).await.unwrap();
    assert_eq!(first.entries.len(), 40, "a first poll reads the shards of every watched key");
    let steady = reader.kv().index().poll(&mut cursor, &watched).await.unwrap();
    assert_eq!((steady.reads, steady.entries.len()), (1, 0), "a steady poll reads the root only");

    // A change to a watched key: the root, then its shard.
    let changed = watched.iter().nth(7).unwrap().clone();
    writer.kv().index().update(&changed, &entry(2)).await.unwrap();
    let after = reader.kv().index().poll(&mut cursor, &watched).await.unwrap();
    assert_eq!(after.reads, 2);
    assert_eq!(after.entries.get(changed.as_str()).and_then(|e| e.current), Some(2));
    // A change in a shard the reader does not watch costs it nothing.
    let other = all.keys().find(|n| !watched.iter().any(|w| shard_of(w.as_str()) == shard_of(n.as_str()))).unwrap();
    writer.kv().index().update(other, &entry(3)).await.unwrap();
    let unrelated = reader.kv().index().poll(&mut cursor, &watched).await.unwrap();
    assert_eq!((unrelated.reads, unrelated.entries.len()), (1, 0));

    // What a steady poll moves: the root's whole HTTP answer, as Vault sends it.
    let url = format!("{}/v1/secret/data/keysync/{INDEX_DIR}/root", server.addr);
    let body = reqwest::Client::new()
        .get(&url)
        .header("X-Vault-Token", &server.root_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body.len() < 4096, "the root answer is {} bytes with all 256 shards", body.len());
    report::record(
        "Scale",
        "steady poll on a sharded index with all 256 shards written; a change to a watched key; a change elsewhere",
        1,
        &format!(
            "steady poll: 1 read of {} bytes; watched change: 2 reads (root + shard); unwatched change: 1 read",
            body.len()
        ),
    );
}

/// Writes a key the way keysync before the sharded index did: data, custom_metadata, and its
/// entry in the single `_index` secret.
async fn old_writer_put(admin: &support::Admin, key: &str, version: u64, api_key: &str) {
    admin
        .write(
            &format!("secret/data/keysync/{key}"),
            json!({ "data": { "api_key": api_key, "keysync_by": "old-keysync", "keysync_reason": "test" } }),
        )
        .await;
    let fp = keysync::secret::fingerprint(api_key.as_bytes());
    let mut custom = json!({ "keysync_schema": "1", "current": version.to_string() });
    custom[format!("fp.v{version}")] = json!(fp);
    let (status, _) =
        admin.try_write(&format!("secret/metadata/keysync/{key}"), json!({ "custom_metadata": custom })).await;
    assert!(status < 300, "metadata write: {status}");
    let old_entry = json!({
        "current": version, "previous": null, "grace_until": null, "disabled": false,
        "deleted": false, "fingerprint": fp, "since": null,
    });
    let (status, body) = admin.try_read(&format!("secret/data/keysync/{INDEX_NAME}")).await;
    let mut data = if status == 200 { body["data"]["data"].clone() } else { json!({}) };
    data[key] = old_entry;
    admin.write(&format!("secret/data/keysync/{INDEX_NAME}"), json!({ "data": data })).await;
}

#[tokio::test]
async fn an_agent_on_a_legacy_index_renders_and_follows_the_upgrade() {
    let server = DevServer::start();
    let admin = server.admin();
    let schema = keysync::store::SCHEMA_FIELD;
    assert_eq!(schema, "keysync_schema", "the test writes metadata as keysync does");
    old_writer_put(&admin, "legacy-a", 1, "sk-legacy-a-one-1111111111111").await;
    old_writer_put(&admin, "legacy-b", 1, "sk-legacy-b-one-1111111111111").await;
    for k in ["sk-legacy-a-one-1111111111111", "sk-legacy-a-two-2222222222222", "sk-legacy-b-one-1111111111111"] {
        support::leak::register(k);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("keysync.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\npoll_interval = \"300ms\"\nlisten = \"off\"\n\
             [[keys.legacy-a.sinks]]\npath = \"{0}/a.key\"\n\
             [[keys.legacy-b.sinks]]\npath = \"{0}/b.key\"\n",
            d.display()
        ),
    )
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default().trim().to_string();
    let agent = Agent::start(&config, &server.addr, &server.root_token, &["run"], d);
    // One pass renders both files, one after the other (each written and fsynced): wait for
    // both, not for the first only.
    assert!(
        eventually(Duration::from_secs(10), || read("a.key") == "sk-legacy-a-one-1111111111111"
            && read("b.key") == "sk-legacy-b-one-1111111111111")
        .await,
        "a: {:?}, b: {:?}",
        read("a.key"),
        read("b.key")
    );

    // An old writer changes a key: the agent follows it through the legacy index (its full
    // sync is an hour away).
    old_writer_put(&admin, "legacy-a", 2, "sk-legacy-a-two-2222222222222").await;
    assert!(
        eventually(Duration::from_secs(5), || read("a.key") == "sk-legacy-a-two-2222222222222").await,
        "the agent did not follow a change announced in the legacy index: {}",
        agent.log_text()
    );

    // The first writer of this version converts: shards hold every legacy entry, the legacy
    // secret keeps being updated for older agents, and the agent switches to the shards.
    let writer = store(&server, "new-writer").await;
    let opts = PutOptions { promote: true, reason: "test".into(), keep_fields: true };
    let new_key = "sk-legacy-b-two-2222222222222";
    support::leak::register(new_key);
    writer.put(&name("legacy-b"), KeyData::new(keysync::secret::Secret::new(new_key)), &opts).await.unwrap();
    let snapshot = writer.kv().index().read().await.unwrap();
    assert_eq!(snapshot.format, IndexFormat::Sharded);
    assert!(snapshot.legacy_present, "the legacy secret stays for older agents");
    assert_eq!(snapshot.entries["legacy-a"].current, Some(2), "converted from the legacy index");
    assert_eq!(snapshot.entries["legacy-b"].current, Some(2));
    let (_, legacy) = admin.try_read(&format!("secret/data/keysync/{INDEX_NAME}")).await;
    assert_eq!(legacy["data"]["data"]["legacy-b"]["current"], json!(2), "older agents still hear of changes");
    assert!(
        eventually(Duration::from_secs(5), || read("b.key") == new_key).await,
        "the agent did not follow the sharded index: {}",
        agent.log_text()
    );

    // Once every agent is upgraded, the legacy secret goes; writers stop keeping it.
    let cli = support::Cli::new(&server, &server.root_token, d);
    let (code, _, err) = cli.run(&["index", "drop-legacy"]);
    assert_eq!(code, 2, "dropping needs --yes");
    assert!(err.contains("--yes") && err.contains("upgraded"), "{err}");
    cli.ok(&["index", "drop-legacy", "--yes"]);
    let (status, _) = admin.try_read(&format!("secret/metadata/keysync/{INDEX_NAME}")).await;
    assert_eq!(status, 404);
    let status = cli.json(&["index", "status"]);
    assert_eq!(status["format"], "sharded");
    assert_eq!(status["legacy_present"], false);
    assert_eq!(status["entries"], 2);
    report::record(
        "Upgrade",
        "an agent started on a legacy (single-secret) index; an old writer changes a key; a new writer converts; legacy dropped",
        1,
        "the agent rendered from the legacy index, followed the old writer's change within a poll, then the new \
         writer's change through the shards; the legacy secret was kept current until `index drop-legacy --yes`",
    );
}

#[tokio::test]
async fn import_writes_the_index_in_batches() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let count = report::scale(120, 2_000);
    let mut file = serde_json::Map::new();
    for i in 0..count {
        file.insert(format!("bulk-{i}"), json!(format!("sk-bulk-{i:05}-abcdefghijklmnop")));
    }
    std::fs::write(d.join("keys.json"), serde_json::to_string(&file).unwrap()).unwrap();
    let cli = support::Cli::new(&server, &server.root_token, d);
    let started = Instant::now();
    let out = cli.json(&["import", "keys.json"]);
    let took = started.elapsed();
    assert_eq!(out["imported"], json!(count), "{out}");
    let writer = store(&server, "check").await;
    let snapshot = writer.kv().index().read().await.unwrap();
    assert_eq!(snapshot.entries.len(), count);
    assert!(snapshot.entries.values().all(|e| e.current == Some(1)));
    // Batches: one merge per shard and batch of 500 keys, not one per key.
    let shard_writes: u64 = snapshot.shards.values().map(|(v, _)| *v).sum();
    let batches = count.div_ceil(500) as u64;
    assert!(
        shard_writes <= snapshot.shards.len() as u64 * batches,
        "{shard_writes} shard writes for {count} keys in {batches} batches"
    );
    eprintln!("import of {count} keys took {took:?}");
    report::record(
        "Scale",
        &format!("`keysync import` of {count} keys into the dev server"),
        1,
        &format!(
            "{count} keys in {:.1} s; the index took {shard_writes} shard writes ({} shards), not one per key",
            took.as_secs_f64(),
            snapshot.shards.len()
        ),
    );
}

#[tokio::test]
async fn the_paced_full_sync_catches_a_change_the_index_never_announced() {
    let server = DevServer::start();
    let admin = server.admin();
    let writer = store(&server, "writer").await;
    let opts = PutOptions { promote: true, reason: "test".into(), keep_fields: true };
    let keys: Vec<String> = (0..6).map(|i| format!("paced-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let v1 = format!("sk-paced-{i}-one-11111111111111");
        support::leak::register(&v1);
        writer.put(&name(k), KeyData::new(keysync::secret::Secret::new(v1)), &opts).await.unwrap();
    }
    // A second version of the last key, promoted by hand in custom_metadata (as `vault kv
    // metadata patch` would): nothing tells the index.
    let target = &keys[5];
    let v2 = "sk-paced-5-two-22222222222222";
    support::leak::register(v2);
    let pending = PutOptions { promote: false, ..opts.clone() };
    let out = writer.put(&name(target), KeyData::new(keysync::secret::Secret::new(v2)), &pending).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cfg = "[agent]\npoll_interval = \"200ms\"\nfull_sync_interval = \"3s\"\nlisten = \"off\"\n".to_string();
    for k in &keys {
        cfg.push_str(&format!("[[keys.{k}.sinks]]\npath = \"{}/{k}.key\"\n", d.display()));
    }
    std::fs::write(d.join("keysync.toml"), cfg).unwrap();
    let read = |k: &str| std::fs::read_to_string(d.join(format!("{k}.key"))).unwrap_or_default().trim().to_string();
    let agent = Agent::start(&d.join("keysync.toml"), &server.addr, &server.root_token, &["run"], d);
    assert!(eventually(Duration::from_secs(10), || read(target) == "sk-paced-5-one-11111111111111").await);
    let index_before = writer.kv().index().read().await.unwrap();
    let fp = keysync::secret::fingerprint(v2.as_bytes());
    let (status, body) = admin
        .call_patch(
            &format!("secret/metadata/keysync/{target}"),
            json!({ "custom_metadata": { "current": out.version.to_string(), "pending": null, format!("fp.v{}", out.version): fp } }),
        )
        .await;
    assert!(status < 300, "{status}: {body}");
    let changed_at = Instant::now();
    // The sweep checks 6 keys over 3 s: one key every 100 ms of polls, each key within ~3 s.
    assert!(
        eventually(Duration::from_secs(8), || read(target) == v2).await,
        "a hand-promoted version never reached the file: {}",
        agent.log_text()
    );
    let took = changed_at.elapsed();
    let index_after = writer.kv().index().read().await.unwrap();
    assert_eq!(
        index_before.entries[target.as_str()],
        index_after.entries[target.as_str()],
        "the index never heard of it"
    );
    report::record(
        "Faults",
        "a version promoted by hand in custom_metadata (no index update); 6 keys, full_sync_interval 3 s, poll 200 ms",
        1,
        &format!(
            "the paced full sync found it and rendered it {:.1} s later (bound: one interval)",
            took.as_secs_f64()
        ),
    );
}
