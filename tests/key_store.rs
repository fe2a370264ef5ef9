//! The key store and key commands against a real server: CAS races, fingerprints, metadata
//! limits, external versions, deleted/destroyed versions, masking, and the policies.

mod support;

use keysync::secret::Secret;
use keysync::store::{KeyData, KeyName, KeyStore, PutOptions, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use support::{load_repo_policies, token_with_policies, Cli, DevServer};

async fn store(server: &DevServer, token: &str, actor: &str) -> KeyStore {
    support::key_store(server, token, Duration::from_secs(3600), actor).await
}

fn name(s: &str) -> KeyName {
    KeyName::parse(s).unwrap()
}

fn opts() -> PutOptions {
    PutOptions { promote: true, reason: "test".into(), keep_fields: true }
}

fn data(key: &str) -> KeyData {
    support::leak::register(key);
    KeyData::new(Secret::new(key))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn two_writers_racing_on_one_key_make_exactly_one_version() {
    let server = DevServer::start();
    let a = store(&server, &server.root_token, "writer-a").await;
    let b = store(&server, &server.root_token, "writer-b").await;
    let key = name("openai");
    a.put(&key, data("sk-first-000000000000000000"), &opts()).await.unwrap();

    // Writer A reads, writer B writes in between, then A writes on its stale read.
    let stale = a.record(&key).await.unwrap();
    let won = b.put(&key, data("sk-bbbbbbbbbbbbbbbbbbbbbbbbbb"), &opts()).await.unwrap();
    let lost = a.put_from(&key, data("sk-aaaaaaaaaaaaaaaaaaaaaaaaaa"), &opts(), stale).await.unwrap_err();
    match &lost {
        StoreError::Conflict { winner_version, winner, .. } => {
            assert_eq!(*winner_version, won.version);
            assert_eq!(winner, "writer-b");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(lost.to_string().contains("writer-b") && lost.to_string().contains("nothing was written"), "{lost}");
    let record = a.require(&key).await.unwrap();
    assert_eq!(record.meta.current_version, 2, "exactly one new version");
    assert_eq!(record.state.current, Some(2));
    assert_eq!(record.state.previous, Some(1));

    // Many writers at once: every put either lands as its own version or reports a conflict.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = store(&server, &server.root_token, &format!("racer-{i}")).await;
        let key = key.clone();
        tasks.push(tokio::spawn(
            async move { s.put(&key, data(&format!("sk-racer-{i}-xxxxxxxxxxxxxxxx")), &opts()).await },
        ));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let record = a.require(&key).await.unwrap();
    assert_eq!(record.meta.current_version, 2 + wins, "versions written = puts that won");
    assert_eq!(record.state.current, Some(record.meta.current_version));
}

#[tokio::test]
async fn audit_fingerprints_are_the_sha256_of_the_stored_keys() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    let keys = ["sk-proj-0001-aaaaaaaaaaaaaaaa", "sk-proj-0002-bbbbbbbbbbbbbbbb", "sk-proj-0003-cccccccccccccccc"];
    cli.secrets = keys.iter().map(|k| k.to_string()).collect();
    for k in keys {
        cli.run_with_stdin(&["put", "openai", "--field", "base_url=https://api.openai.com/v1"], k);
    }
    let audit = cli.json(&["audit", "openai"]);
    let versions = audit["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 3);
    for v in versions {
        let n = v["version"].as_u64().unwrap();
        let stored = admin.read(&format!("secret/data/keysync/openai?version={n}")).await;
        let api_key = stored["data"]["data"]["api_key"].as_str().unwrap();
        assert_eq!(v["fingerprint"], format!("sha256:{}", sha256_hex(api_key.as_bytes())));
        assert_eq!(v["rotated_by"], "test-cli");
        assert_eq!(stored["data"]["data"]["base_url"], "https://api.openai.com/v1", "fields carried over");
    }
    assert_eq!(versions[0]["role"], "current");
    assert_eq!(versions[1]["role"], "previous");
    assert_eq!(versions[2]["role"], "retired");
    let table = cli.ok(&["audit", "openai"]);
    assert!(table.contains("current") && table.contains("test-cli"), "{table}");
}

#[tokio::test]
async fn seventy_versions_stay_within_the_custom_metadata_limit() {
    let server = DevServer::start();
    let admin = server.admin();
    let s = store(&server, &server.root_token, "bulk").await;
    let key = name("many");
    s.put(&key, data("sk-many-000-xxxxxxxxxxxxxxxx"), &opts()).await.unwrap();
    admin.write("secret/metadata/keysync/many", json!({ "max_versions": 100 })).await;
    admin
        .write("secret/metadata/keysync/many", json!({ "max_versions": 100, "custom_metadata": {"owner": "team-a"} }))
        .await;
    // POST replaced custom_metadata: put keysync's state back the way an operator would.
    let mut record = s.require(&key).await.unwrap();
    assert!(!record.state.managed);
    for i in 1..70 {
        s.put(&key, data(&format!("sk-many-{i:03}-xxxxxxxxxxxxxxxx")), &opts()).await.unwrap();
    }
    record = s.require(&key).await.unwrap();
    assert_eq!(record.meta.current_version, 70);
    assert!(record.meta.custom.len() <= 64, "{} custom_metadata keys", record.meta.custom.len());
    assert_eq!(record.meta.custom.get("owner").map(String::as_str), Some("team-a"), "foreign field kept");
    assert_eq!(record.state.current, Some(70));
    assert_eq!(record.state.previous, Some(69));
    assert!(record.state.fingerprints.contains_key(&70) && record.state.fingerprints.contains_key(&69));
}

#[tokio::test]
async fn a_hand_written_version_shows_as_external() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    cli.secrets = vec!["sk-keysync-written-1234567890".into(), "sk-by-hand-0987654321abcdef".into()];
    cli.run_with_stdin(&["put", "deepseek"], "sk-keysync-written-1234567890");
    admin.write("secret/data/keysync/deepseek", json!({ "data": { "api_key": "sk-by-hand-0987654321abcdef" } })).await;

    let status = cli.json(&["status", "deepseek"]);
    assert_eq!(status[0]["external_versions"], json!([2]));
    assert_eq!(status[0]["current"]["version"], 1, "consumers keep following current, not KV's latest");
    assert!(cli.ok(&["status", "deepseek"]).contains("external   v2"));
    let audit = cli.json(&["audit", "deepseek"]);
    assert_eq!(audit["versions"][0]["role"], "external");
    assert_eq!(audit["versions"][1]["role"], "current");
    let got = cli.json(&["get", "deepseek"]);
    assert_eq!(got["version"], 1);
}

#[tokio::test]
async fn deleted_and_destroyed_versions_are_reported_not_crashed_on() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    cli.secrets = (1..=3).map(|i| format!("sk-ver-{i}-aaaaaaaaaaaaaaaaaaaa")).collect();
    for s in cli.secrets.clone() {
        cli.run_with_stdin(&["put", "glm"], &s);
    }
    let (code, _, stderr) = cli.run(&["destroy", "glm", "--version", "1"]);
    assert_eq!(code, 2, "destroy without --yes is refused");
    assert!(stderr.contains("--yes"));
    let (code, _, stderr) = cli.run(&["destroy", "glm", "--version", "3", "--yes"]);
    assert_eq!(code, 1, "the current version cannot be destroyed");
    assert!(stderr.contains("current"), "{stderr}");
    cli.ok(&["destroy", "glm", "--version", "1", "--yes"]);

    let audit = cli.json(&["audit", "glm"]);
    let v1 = &audit["versions"][2];
    assert_eq!(v1["destroyed"], true);
    assert!(v1["fingerprint"].as_str().unwrap().starts_with("sha256:"), "fingerprint kept for audit");

    cli.ok(&["delete", "glm"]);
    let status = cli.ok(&["status", "glm"]);
    assert!(status.contains("SOFT-DELETED"), "{status}");
    let (code, _, stderr) = cli.run(&["get", "glm"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("soft-deleted") && stderr.contains("undelete"), "{stderr}");
    let audit = cli.json(&["audit", "glm"]);
    assert_eq!(audit["versions"][0]["deleted"], true);
    cli.ok(&["undelete", "glm"]);
    assert_eq!(cli.json(&["get", "glm"])["version"], 3);
    let (code, _, stderr) = cli.run(&["get", "glm", "--version", "1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("destroyed"), "{stderr}");
    let (code, _, stderr) = cli.run(&["get", "glm", "--version", "9"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("out of range") && stderr.contains("1 to 3"), "{stderr}");
}

#[tokio::test]
async fn keys_are_masked_unless_revealed() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    let key = "sk-proj-MASKME-abcdefghijklmnopqrstuvwxyz";
    cli.secrets = vec![key.into()];
    cli.run_with_stdin(&["put", "openai"], &format!("{key}\n"));
    for args in [
        vec!["get", "openai"],
        vec!["get", "openai", "--output", "json"],
        vec!["list"],
        vec!["list", "--output", "json"],
        vec!["status"],
        vec!["status", "--output", "json"],
        vec!["audit", "openai"],
    ] {
        let out = cli.ok(&args);
        assert!(!out.is_empty(), "{args:?} printed nothing");
    }
    assert!(cli.ok(&["get", "openai"]).contains("sk-p…wxyz"));
    let revealed = cli.ok(&["get", "openai", "--reveal"]);
    assert_eq!(revealed.trim(), key, "--reveal prints the key itself (newline stripped on put)");
}

#[tokio::test]
async fn rollback_swaps_current_and_previous_during_grace_only() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    cli.secrets = vec!["sk-good-old-1111111111111111".into(), "sk-bad-new-22222222222222222".into()];
    let (code, _, stderr) = cli.run(&["rollback", "openai"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not exist"), "{stderr}");
    cli.run_with_stdin(&["put", "openai"], "sk-good-old-1111111111111111");
    let (code, _, stderr) = cli.run(&["rollback", "openai"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no previous version"), "{stderr}");
    cli.run_with_stdin(&["put", "openai"], "sk-bad-new-22222222222222222");
    cli.ok(&["rollback", "openai", "--reason", "bad key"]);
    let status = cli.json(&["status", "openai"]);
    assert_eq!(status[0]["current"]["version"], 1);
    assert_eq!(status[0]["previous"]["version"], 2);
    assert_eq!(status[0]["reason"], "bad key");
}

#[tokio::test]
async fn verify_reports_drift_by_file() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    cli.secrets = vec!["sk-verify-old-aaaaaaaaaaaaaaaa".into(), "sk-verify-new-bbbbbbbbbbbbbbbb".into()];
    cli.run_with_stdin(&["put", "openai"], "sk-verify-old-aaaaaaaaaaaaaaaa");
    cli.run_with_stdin(&["put", "openai"], "sk-verify-new-bbbbbbbbbbbbbbbb");
    let good = dir.path().join("openai.key");
    let env = dir.path().join("openai.env");
    let stale = dir.path().join("stale.key");
    let prev = dir.path().join("openai.key.previous");
    std::fs::write(&good, "sk-verify-new-bbbbbbbbbbbbbbbb\n").unwrap();
    std::fs::write(&env, "OPENAI_API_KEY='sk-verify-new-bbbbbbbbbbbbbbbb'\n").unwrap();
    std::fs::write(&stale, "sk-verify-old-aaaaaaaaaaaaaaaa").unwrap();
    std::fs::write(&prev, "sk-verify-old-aaaaaaaaaaaaaaaa\n").unwrap();
    let files = [&good, &env, &prev].map(|p| p.display().to_string());
    cli.ok(&["verify", &files[0], &files[1], &files[2]]);
    let (code, stdout, stderr) = cli.run(&["verify", &files[0], &stale.display().to_string()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("stale.key") && !stderr.contains("openai.key,"), "{stderr}");
    assert!(stdout.contains("stale") && stdout.contains("v1"), "{stdout}");
}

#[tokio::test]
async fn import_reports_each_bad_entry_and_keeps_going() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    cli.secrets = vec!["sk-imp-openai-aaaaaaaaaaaa".into(), "sk-imp-deepseek-bbbbbbbbbb".into()];
    let file = dir.path().join("keys.env");
    std::fs::write(
        &file,
        "# provider keys\nOPENAI_API_KEY=sk-imp-openai-aaaaaaaaaaaa\nexport DEEPSEEK_API_KEY='sk-imp-deepseek-bbbbbbbbbb'\nBAD KEY=x\nQWEN_API_KEY=has space inside\n",
    )
    .unwrap();
    let (code, stdout, stderr) = cli.run(&["import", &file.display().to_string()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("2 imported, 0 unchanged, 2 failed"), "{stdout}");
    assert!(stdout.contains("line 4") && stdout.contains("line 5"), "{stdout}");
    let list = cli.json(&["list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["deepseek", "openai"]);
    let json_file = dir.path().join("keys.json");
    std::fs::write(&json_file, r#"{"openai": "sk-imp-openai-aaaaaaaaaaaa"}"#).unwrap();
    let out = cli.json(&["import", &json_file.display().to_string()]);
    assert_eq!(out["unchanged"], 1);
}

#[tokio::test]
async fn bad_data_in_vault_gets_a_clear_error() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    admin.write("secret/data/keysync/nokey", json!({ "data": { "token": "x" } })).await;
    admin.write("secret/data/keysync/numkey", json!({ "data": { "api_key": 12345 } })).await;
    admin.write("secret/data/keysync/corrupt", json!({ "data": { "api_key": "sk-corrupt-xxxxxxxxxxxxxx" } })).await;
    admin
        .write(
            "secret/metadata/keysync/corrupt",
            json!({ "custom_metadata": { "current": "three", "keysync_schema": "1" } }),
        )
        .await;
    let (code, _, stderr) = cli.run(&["get", "nokey", "--version", "1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no api_key") && stderr.contains("nokey"), "{stderr}");
    let (code, _, stderr) = cli.run(&["get", "numkey", "--version", "1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("number, not a string"), "{stderr}");
    let (code, _, stderr) = cli.run(&["status", "corrupt"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("corrupt") && stderr.contains("\"current\"") && stderr.contains("three"), "{stderr}");
    // `list` goes on past a broken key and says which.
    let (code, stdout, _) = cli.run(&["list"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("corrupt") && stdout.contains("error"), "{stdout}");
}

#[tokio::test]
async fn bad_cli_input_changes_nothing() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    for (args, stdin, code, words) in [
        (vec!["put", "Bad/Name"], "sk-x-aaaaaaaaaaaaa", 2, vec!["invalid key name", "Bad/Name"]),
        (vec!["put", "ok"], "", 2, vec!["empty"]),
        (vec!["put", "ok"], "sk-with space-aaaaaaaaaaaa", 1, vec!["whitespace"]),
        (vec!["put", "ok", "--field", "novalue"], "sk-aaaaaaaaaaaaaaaa", 2, vec!["NAME=VALUE"]),
        (vec!["put", "ok", "--field", "api_key=x"], "sk-aaaaaaaaaaaaaaaa", 2, vec!["api_key"]),
        (vec!["get"], "", 2, vec!["NAME"]),
        (vec!["destroy", "ok", "--version", "1"], "", 2, vec!["--yes"]),
        (vec!["verify"], "", 2, vec!["FILE"]),
    ] {
        let (got, stdout, stderr) = cli.run_with_stdin(&args, stdin);
        assert_eq!(got, code, "{args:?}: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{args:?}: {stderr:?} should mention {w}");
        }
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    let (status, _) = admin.try_read("secret/metadata/keysync/ok").await;
    assert_eq!(status, 404, "nothing was written");
}

#[tokio::test]
async fn each_policy_allows_its_job_and_nothing_more() {
    let server = DevServer::start();
    let admin = server.admin();
    load_repo_policies(&admin).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = ["sk-pol-admin-aaaaaaaaaaaaaa", "sk-pol-agent-bbbbbbbbbbbbbb", "sk-pol-reader-cccccccccccc"];
    let cli_for = |token: String| {
        let mut c = Cli::new(&server, &token, dir.path());
        c.secrets = keys.iter().map(|k| k.to_string()).collect();
        c
    };
    let admin_cli = cli_for(token_with_policies(&admin, &["keysync-admin"]).await);
    let agent_cli = cli_for(token_with_policies(&admin, &["keysync-agent"]).await);
    let reader_cli = cli_for(token_with_policies(&admin, &["keysync-reader"]).await);

    // admin: manages keys by hand.
    let (code, _, e) = admin_cli.run_with_stdin(&["put", "openai"], keys[0]);
    assert_eq!(code, 0, "{e}");
    // agent: writes new versions and state, destroys retired data; cannot delete.
    let (code, _, e) = agent_cli.run_with_stdin(&["put", "openai"], keys[1]);
    assert_eq!(code, 0, "{e}");
    agent_cli.ok(&["status", "openai"]);
    agent_cli.ok(&["destroy", "openai", "--version", "1", "--yes"]);
    let (code, _, e) = agent_cli.run(&["delete", "openai"]);
    assert_eq!(code, 1);
    assert!(
        e.contains("permission denied") && e.contains("secret/delete/keysync/openai") && e.contains("keysync-agent"),
        "{e}"
    );
    // reader: reads and lists, nothing else.
    reader_cli.ok(&["get", "openai"]);
    reader_cli.ok(&["list"]);
    reader_cli.ok(&["audit", "openai"]);
    let (code, _, e) = reader_cli.run_with_stdin(&["put", "openai"], keys[2]);
    assert_eq!(code, 1);
    assert!(
        e.contains("permission denied") && e.contains("secret/data/keysync/openai") && e.contains("keysync-reader"),
        "a reader's write names the path and policy: {e}"
    );
    for args in
        [vec!["disable", "openai"], vec!["delete", "openai"], vec!["destroy", "openai", "--version", "1", "--yes"]]
    {
        let (code, _, e) = reader_cli.run(&args);
        assert_eq!(code, 1, "reader {args:?}");
        assert!(e.contains("permission denied"), "reader {args:?}: {e}");
    }
    // admin can do the rest.
    admin_cli.ok(&["disable", "openai"]);
    admin_cli.ok(&["enable", "openai"]);
    admin_cli.ok(&["delete", "openai"]);
    admin_cli.ok(&["undelete", "openai"]);
    // Outside the prefix nobody gets anything.
    for c in [&admin_cli, &agent_cli, &reader_cli] {
        let (status, _) = admin.with_token(&c.token).try_read("secret/data/other/thing").await;
        assert_eq!(status, 403);
        let (status, _) = admin.with_token(&c.token).try_read("sys/policies/acl").await;
        assert_eq!(status, 403);
    }
    let record = admin.read("secret/metadata/keysync/openai").await;
    assert_eq!(record["data"]["current_version"], 2);
}
