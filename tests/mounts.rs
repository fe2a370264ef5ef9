//! `kv.mount` is checked before the first read or write: a KV v1 mount and a missing mount
//! are refused with a message that names the mount and the fix, and Vault is left unchanged.

mod support;

use serde_json::json;
use support::{unique, Agent, Cli, DevServer};

fn config(dir: &std::path::Path, mount: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{mount}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kv]\nmount = \"{mount}\"\n[agent]\nlisten = \"off\"\n[[keys.openai.sinks]]\npath = \"{}/openai.key\"\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_kv_version_1_mount_is_refused_with_nothing_written() {
    let server = DevServer::start();
    let admin = server.admin();
    let mount = unique("kv1");
    admin.write(&format!("sys/mounts/{mount}"), json!({ "type": "kv", "options": { "version": "1" } })).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(d, &mount);
    let cli = Cli::new(&server, &server.root_token, d);
    let want = format!("{mount}/ is KV version 1; keysync needs KV v2: vault kv enable-versioning {mount}");
    let cfg_arg = cfg.to_str().unwrap();
    for args in [
        vec!["--config", cfg_arg, "put", "openai"],
        vec!["--config", cfg_arg, "list"],
        vec!["--config", cfg_arg, "get", "openai"],
    ] {
        let (code, _, stderr) = cli.run_with_stdin(&args, "sk-kv1-aaaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains(&want), "{args:?}: {stderr}");
    }
    // Nothing landed in the v1 mount: it lists no path at all.
    let (status, body) = admin.try_read(&format!("{mount}/?list=true")).await;
    assert_eq!(status, 404, "the v1 mount is still empty: {body}");
    let mut agent = Agent::start(&cfg, &server.addr, &server.root_token, &["run", "--once"], d);
    assert_eq!(agent.wait(std::time::Duration::from_secs(30)), Some(1));
    assert!(agent.log_text().contains(&want), "{}", agent.log_text());
    assert!(!d.join("openai.key").exists());
    // After `vault kv enable-versioning`, the same config works.
    admin.write(&format!("sys/mounts/{mount}/tune"), json!({ "options": { "version": "2" } })).await;
    let ok = support::eventually(std::time::Duration::from_secs(20), || {
        cli.run_with_stdin(&["--config", cfg_arg, "put", "openai"], "sk-kv1-aaaaaaaaaaaaaaaaaaaaaaaa").0 == 0
    })
    .await;
    assert!(ok, "put works once the mount is KV v2");
}

#[tokio::test]
async fn a_missing_mount_is_named_and_run_once_says_why_nothing_was_rendered() {
    let server = DevServer::start();
    let admin = server.admin();
    let mounts_before =
        admin.read("sys/mounts").await["data"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
    let mount = unique("nope");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = config(d, &mount);
    let cli = Cli::new(&server, &server.root_token, d);
    let want = format!("no KV mount at {mount}/: check kv.mount");
    let cfg_arg = cfg.to_str().unwrap();
    for args in [
        vec!["--config", cfg_arg, "put", "openai"],
        vec!["--config", cfg_arg, "get", "openai"],
        vec!["--config", cfg_arg, "list"],
    ] {
        let (code, _, stderr) = cli.run_with_stdin(&args, "sk-nope-aaaaaaaaaaaaaaaaaaaaaaa");
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains(&want), "{args:?}: {stderr}");
        assert!(!stderr.contains("does not exist; create it"), "not mistaken for a missing key: {stderr}");
    }
    let mut agent = Agent::start(&cfg, &server.addr, &server.root_token, &["run", "--once"], d);
    assert_eq!(agent.wait(std::time::Duration::from_secs(30)), Some(1));
    assert!(agent.log_text().contains(&want), "run --once says why: {}", agent.log_text());
    let mounts_after =
        admin.read("sys/mounts").await["data"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
    assert_eq!(mounts_before, mounts_after, "no mount was created or changed");
    // A key missing from a good mount still says which sink and why.
    let good = d.join("good.toml");
    std::fs::write(
        &good,
        format!("[agent]\nlisten = \"off\"\n[[keys.{}.sinks]]\npath = \"{}/x.key\"\n", unique("absent"), d.display()),
    )
    .unwrap();
    let mut agent = Agent::start(&good, &server.addr, &server.root_token, &["run", "--once"], d);
    assert_eq!(agent.wait(std::time::Duration::from_secs(30)), Some(1));
    assert!(agent.log_text().contains("its key does not exist under secret/keysync"), "{}", agent.log_text());
}
