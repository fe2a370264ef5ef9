//! Rotation against a real server: generate and command providers, grace and retirement with
//! revocation, validation failures that are never promoted, and racing agents.

mod support;

use std::path::Path;
use std::time::Duration;
use support::{Cli, DevServer};

fn config(dir: &Path, body: &str) -> String {
    let path = dir.join("keysync.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn generate_rotation_promotes_keeps_previous_in_grace_then_retires_it() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    let cfg = config(
        dir.path(),
        "[keys.gateway.provider]\ntype = \"generate\"\nprefix = \"sk-gw-\"\nlength = 40\n[keys.gateway.rotation]\ninterval = \"7d\"\ngrace = \"2s\"\n",
    );
    cli.run_with_stdin(&["put", "gateway"], "sk-gw-initial-aaaaaaaaaaaaaaaaaaaa");
    let out = cli.json(&["--config", &cfg, "rotate", "gateway"]);
    assert_eq!(out[0]["outcome"]["result"], "not_due", "{out}");
    let out = cli.json(&["--config", &cfg, "rotate", "gateway", "--force", "--reason", "test"]);
    assert_eq!(out[0]["outcome"]["result"], "rotated", "{out}");
    assert_eq!(out[0]["outcome"]["version"], 2);
    let status = cli.json(&["status", "gateway"]);
    assert_eq!(status[0]["current"]["version"], 2);
    assert_eq!(status[0]["previous"]["version"], 1);
    let key = cli.ok(&["get", "gateway", "--reveal"]);
    assert!(key.starts_with("sk-gw-") && key.trim().len() == 46, "{key}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cli.json(&["--config", &cfg, "rotate", "gateway"]);
    let status = cli.json(&["status", "gateway"]);
    assert!(status[0]["previous"].is_null(), "previous retired after grace: {status}");
    assert_eq!(status[0]["current"]["version"], 2);
}

#[tokio::test]
async fn command_rotation_revokes_the_previous_key_after_grace() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    let mint = format!(
        "n=$(cat {d}/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/n; printf '{{\"api_key\": \"sk-cmd-%s-xxxxxxxxxxxxxxxx\", \"key_id\": \"id-%s\"}}' $n $n"
    );
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
    let cfg = config(
        dir.path(),
        &format!(
            "[keys.svc.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n[keys.svc.rotation]\ninterval = \"7d\"\ngrace = \"1s\"\n"
        ),
    );
    cli.run_with_stdin(&["put", "svc"], "sk-cmd-initial-xxxxxxxxxxxxxxxx");
    cli.ok(&["--config", &cfg, "rotate", "svc", "--force"]); // v2 = id-1
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cli.ok(&["--config", &cfg, "rotate", "svc", "--force"]); // retires v1 (no key_id), v3 = id-2
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cli.ok(&["--config", &cfg, "rotate", "svc"]); // retires v2 → revokes id-1
    let revoked = std::fs::read_to_string(dir.path().join("revoked")).unwrap_or_default();
    assert_eq!(revoked, "id-1\n", "exactly the retired key was revoked");
    let status = cli.json(&["status", "svc"]);
    assert_eq!(status[0]["current"]["version"], 3);
    assert!(status[0]["previous"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_fails_validation_is_never_promoted_and_is_revoked() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    // A provider endpoint that refuses every key: 401, like OpenAI for a bad key.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await;
        }
    });
    let mint = "printf '{\"api_key\": \"sk-bad-new-key-xxxxxxxxxxxxxxxx\", \"key_id\": \"id-bad\"}'";
    let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/revoked");
    let cfg = config(
        dir.path(),
        &format!(
            "[keys.llm.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n[keys.llm.validation]\npreset = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
        ),
    );
    cli.run_with_stdin(&["put", "llm"], "sk-good-current-xxxxxxxxxxxxxxx");
    let (code, stdout, _) = cli.run(&["--config", &cfg, "rotate", "llm", "--force"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAILED") && stdout.contains("current key kept"), "{stdout}");
    let status = cli.json(&["status", "llm"]);
    assert_eq!(status[0]["current"]["version"], 1, "the failed key is not current");
    assert_eq!(status[0]["failed_versions"], serde_json::json!([2]));
    assert!(status[0]["pending"].is_null());
    assert_eq!(std::fs::read_to_string(dir.path().join("revoked")).unwrap(), "id-bad\n");
    assert_eq!(cli.ok(&["get", "llm", "--reveal"]).trim(), "sk-good-current-xxxxxxxxxxxxxxx");
}

#[tokio::test]
async fn three_agents_rotating_the_same_due_keys_make_one_version_each() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    let mut body = String::new();
    for i in 0..5 {
        cli.run_with_stdin(&["put", &format!("k{i}")], &format!("sk-race-{i}-aaaaaaaaaaaaaaaaaaaa"));
        body.push_str(&format!("[keys.k{i}.provider]\ntype = \"generate\"\n[keys.k{i}.rotation]\ninterval = \"4s\"\n"));
    }
    let cfg = config(dir.path(), &body);
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let mut children = Vec::new();
    for _ in 0..3 {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keysync"));
        cmd.args(["--config", &cfg, "rotate", "--due", "--output", "json"])
            .env("VAULT_ADDR", &server.addr)
            .env("VAULT_TOKEN", &server.root_token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for i in 0..5 {
        let status = cli.json(&["status", &format!("k{i}")]);
        assert_eq!(status[0]["latest_version"], 2, "k{i}: exactly one new version: {status}");
        assert_eq!(status[0]["current"]["version"], 2);
    }
}
