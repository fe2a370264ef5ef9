//! `keysync login` / `check-config` as a person runs them: good paths against the real server,
//! and bad input that must give one clear line, a non-zero exit, no panic and no secret.

mod support;

use assert_cmd::Command;
use serde_json::json;
use std::path::Path;
use support::{unique, DevServer};

fn keysync(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("keysync").expect("binary");
    cmd.current_dir(dir).env_remove("VAULT_ADDR").env_remove("VAULT_TOKEN").env("HOME", dir);
    cmd
}

/// Runs and returns (exit code, stdout, stderr); asserts no panic text either way.
fn outcome(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run keysync");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked") && !stdout.contains("panicked"), "panic: {stderr}");
    support::leak::check(&stdout, "stdout of keysync");
    support::leak::check(&stderr, "stderr of keysync");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn login_with_approle_shows_policies_and_never_the_token() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let mount = unique("approle");
    admin.enable_auth(&mount, "approle").await;
    admin.put_policy("keysync-test", "path \"secret/*\" { capabilities = [\"read\"] }").await;
    let (role_id, secret_id) =
        admin.approle(&mount, "agent", json!({"token_policies": ["keysync-test"], "token_ttl": "20m"})).await;
    let rid = write(dir.path(), "role_id", &role_id);
    let sid = write(dir.path(), "secret_id", &secret_id);
    let cfg = write(
        dir.path(),
        "keysync.toml",
        &format!(
            "[vault]\naddress = \"{}\"\n[vault.auth]\nmethod = \"approle\"\nmount = \"{mount}\"\nrole_id_file = \"{rid}\"\nsecret_id_file = \"{sid}\"\n",
            server.addr
        ),
    );
    let (code, stdout, stderr) = outcome(keysync(dir.path()).args(["--config", &cfg, "login"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("keysync-test"), "{stdout}");
    assert!(stdout.contains("renewable   yes"), "{stdout}");
    assert!(stdout.contains("ttl         19m") || stdout.contains("ttl         20m"), "{stdout}");

    let (code, stdout, stderr) =
        outcome(keysync(dir.path()).args(["--config", &cfg, "--log-level", "trace", "login", "--output", "json"]));
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let ttl = v["ttl_secs"].as_u64().expect("ttl_secs");
    assert!((1190..=1200).contains(&ttl), "{ttl}");
    assert!(v["policies"].as_array().unwrap().iter().any(|p| p == "keysync-test"));
    for secret in [&secret_id, &role_id] {
        assert!(!stdout.contains(secret.as_str()) && !stderr.contains(secret.as_str()), "secret leaked");
    }
}

#[tokio::test]
async fn login_with_vault_token_from_the_environment() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        outcome(keysync(dir.path()).env("VAULT_ADDR", &server.addr).env("VAULT_TOKEN", &server.root_token).args([
            "--log-level",
            "trace",
            "login",
        ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("root") && stdout.contains("never expires"), "{stdout}");
    assert!(!stdout.contains(&server.root_token) && !stderr.contains(&server.root_token));
}

#[test]
fn check_config_prints_the_resolved_config_and_never_shows_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "keysync.toml", "[kv]\nprefix = \"keysync/prod\"\n");
    let token = "hvs.CAESIJ0123456789abcdefghijklmnop";
    let (code, stdout, stderr) =
        outcome(keysync(dir.path()).env("VAULT_ADDR", "http://127.0.0.1:8200").env("VAULT_TOKEN", token).args([
            "--config",
            &cfg,
            "check-config",
        ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("prefix = \"keysync/prod\""), "{stdout}");
    assert!(stdout.contains("http://127.0.0.1:8200"), "{stdout}");
    assert!(stdout.contains("token: from the VAULT_TOKEN environment variable"), "{stdout}");
    for piece in ["hvs.", "mnop", "…"] {
        assert!(!stdout.contains(piece) && !stderr.contains(piece), "shows {piece:?} of the token: {stdout}");
    }
}

/// One bad input: name, config text, arguments, exit code, words the message must contain.
type BadInput<'a> = (&'a str, String, Vec<&'a str>, i32, Vec<&'a str>);

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rid = write(d, "rid", "role-id-value");
    let sid = write(d, "sid", "secret-id-value");
    let refused_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cases: Vec<BadInput> = vec![
        (
            "connection refused",
            format!(
                "[vault]\naddress = \"http://127.0.0.1:{refused_port}\"\ntimeout = \"3s\"\n[vault.auth]\nmethod = \"approle\"\nrole_id_file = \"{rid}\"\nsecret_id_file = \"{sid}\"\n"
            ),
            vec!["login"],
            1,
            vec!["cannot reach Vault", "127.0.0.1", "refused", "VAULT_ADDR"],
        ),
        ("unknown auth method", "[vault]\naddress = \"http://127.0.0.1:1\"\n[vault.auth]\nmethod = \"ldap\"\n".into(), vec!["login"], 2, vec!["vault.auth.method", "ldap", "approle"]),
        (
            "missing role_id file",
            format!(
                "[vault]\naddress = \"http://127.0.0.1:{refused_port}\"\n[vault.auth]\nmethod = \"approle\"\nrole_id_file = \"{0}/nope/role_id\"\nsecret_id_file = \"{0}/nope/secret_id\"\n",
                d.display()
            ),
            vec!["login"],
            1,
            vec!["role_id", "nope/role_id", "vault.auth.role_id_file"],
        ),
        ("invalid TOML", "[vault\naddress = 1\n".into(), vec!["check-config"], 2, vec!["invalid TOML", "keysync.toml", "line 1"]),
        ("unknown field", "[vault]\nadress = \"http://x:1\"\n".into(), vec!["check-config"], 2, vec!["vault.adress", "unknown field"]),
        ("bad URL", "[vault]\naddress = \"localhost:8200\"\n".into(), vec!["login"], 2, vec!["vault.address", "http://"]),
        ("bad duration", "[vault]\ntimeout = \"forever\"\n".into(), vec!["check-config"], 2, vec!["forever", "30s"]),
        ("wrong type", "[vault]\nskip_verify = \"maybe\"\n".into(), vec!["check-config"], 2, vec!["skip_verify"]),
        ("no address anywhere", "".into(), vec!["login"], 2, vec!["vault.address", "VAULT_ADDR"]),
        ("bad log level", "".into(), vec!["--log-level", "loud!", "check-config"], 2, vec!["--log-level"]),
    ];
    for (name, config, args, want_code, words) in cases {
        let cfg = write(d, "keysync.toml", &config);
        let mut cmd = keysync(d);
        cmd.args(["--config", &cfg]).args(&args);
        let (code, stdout, stderr) = outcome(&mut cmd);
        assert_eq!(code, want_code, "{name}: exit {code}, stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{name}: expected one line, got: {stderr}");
        assert!(lines[0].starts_with("error: "), "{name}: {stderr}");
        for w in words {
            assert!(stderr.contains(w), "{name}: {stderr:?} should mention {w:?}");
        }
        assert!(stdout.is_empty(), "{name}: stdout: {stdout}");
    }
}

#[test]
fn missing_explicit_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = outcome(keysync(dir.path()).args(["--config", "/nonexistent/k.toml", "check-config"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/k.toml") && stderr.contains("not found"), "{stderr}");
}

#[test]
fn version_flag_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = outcome(keysync(dir.path()).arg("--version"));
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("keysync {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn bash_completions_load_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = outcome(keysync(dir.path()).args(["completions", "bash"]));
    assert_eq!(code, 0);
    let script = dir.path().join("keysync.bash");
    std::fs::write(&script, &stdout).unwrap();
    let out = std::process::Command::new("bash")
        .args(["-c", &format!("set -e; source {}; complete -p keysync", script.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("keysync"));
    assert!(out.stderr.is_empty(), "bash printed errors: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_man_page_renders() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, _) = outcome(keysync(dir.path()).arg("man"));
    assert_eq!(code, 0);
    assert!(stdout.contains(".TH keysync") && stdout.contains("rollback"), "{}", &stdout[..stdout.len().min(300)]);
}
