//! TLS settings against a raft + TLS Vault server with a CA the test made: the CA by file,
//! by `VAULT_CACERT` and by directory, `tls_server_name`, the `skip_verify` warning, and what a
//! certificate error says (the setting to fix, never just "cannot reach Vault").

mod support;

use std::path::Path;
use support::pki::{pki, SERVER_NAME};
use support::raft::{shared, Shared};

/// `keysync login` with only the given environment (no VAULT_* from the test process).
fn login(dir: &Path, server: &Shared, config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let cfg = dir.join("keysync.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut cmd = assert_cmd::Command::cargo_bin("keysync").unwrap();
    cmd.current_dir(dir).env("HOME", dir).env("VAULT_TOKEN", &server.root_token);
    for var in [
        "VAULT_ADDR",
        "VAULT_CACERT",
        "VAULT_CAPATH",
        "VAULT_TLS_SERVER_NAME",
        "VAULT_SKIP_VERIFY",
        "VAULT_CLIENT_CERT",
        "VAULT_CLIENT_KEY",
        "KEYSYNC_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(["--config", cfg.to_str().unwrap(), "login"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    support::assert_no_leak(&server.root_token, &stderr, "stderr");
    support::assert_no_leak(&server.root_token, &stdout, "stdout");
    (out.status.code().unwrap_or(-1), format!("{stdout}\n{stderr}"))
}

fn vault_section(server: &Shared, extra: &str) -> String {
    format!("[vault]\naddress = \"{}\"\ntimeout = \"5s\"\n{extra}\n", server.addr)
}

#[test]
fn a_wrong_ca_is_refused_with_a_message_naming_the_ca_setting() {
    let server = shared();
    let dir = tempfile::tempdir().unwrap();
    let other = pki().other_ca_cert.display().to_string();
    let (code, out) = login(dir.path(), &server, &vault_section(&server, &format!("ca_cert = \"{other}\"")), &[]);
    assert_eq!(code, 1, "{out}");
    for word in ["vault.ca_cert", "VAULT_CACERT", "not signed by a CA keysync trusts", &other] {
        assert!(out.contains(word), "the message names {word:?}: {out}");
    }
    assert!(!out.contains("check that the server is running"), "not a reachability message: {out}");
    // No CA at all: the system roots do not know the test CA either.
    let (code, out) = login(dir.path(), &server, &vault_section(&server, ""), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("vault.ca_cert") && out.contains("only the system's root CAs"), "{out}");
}

#[test]
fn the_ca_comes_from_vault_cacert_when_the_config_has_none() {
    let server = shared();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki().ca_cert.display().to_string();
    let (code, out) = login(dir.path(), &server, &vault_section(&server, ""), &[("VAULT_CACERT", &ca)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("root"), "login shows the token's policies: {out}");
    // The config wins over the environment, as with Vault Agent.
    let other = pki().other_ca_cert.display().to_string();
    let (code, out) = login(
        dir.path(),
        &server,
        &vault_section(&server, &format!("ca_cert = \"{other}\"")),
        &[("VAULT_CACERT", &ca)],
    );
    assert_eq!(code, 1, "{out}");
}

#[test]
fn a_ca_directory_is_read_by_ca_path_and_vault_capath() {
    let server = shared();
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = pki().ca_dir.display().to_string();
    let (code, out) = login(dir.path(), &server, &vault_section(&server, &format!("ca_path = \"{ca_dir}\"")), &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = login(dir.path(), &server, &vault_section(&server, ""), &[("VAULT_CAPATH", &ca_dir)]);
    assert_eq!(code, 0, "{out}");
    // A directory without our CA: the message names ca_path.
    let only_other = dir.path().join("only-other");
    std::fs::create_dir(&only_other).unwrap();
    std::fs::copy(&pki().other_ca_cert, only_other.join("other.pem")).unwrap();
    let (code, out) =
        login(dir.path(), &server, &vault_section(&server, &format!("ca_path = \"{}\"", only_other.display())), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("vault.ca_path / VAULT_CAPATH"), "{out}");
    // An empty directory is a settings error before any request.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, out) =
        login(dir.path(), &server, &vault_section(&server, &format!("ca_path = \"{}\"", empty.display())), &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("holds no") && out.contains("VAULT_CAPATH"), "{out}");
}

#[test]
fn tls_server_name_checks_the_certificate_against_that_name() {
    let server = shared();
    let dir = tempfile::tempdir().unwrap();
    let ca = format!("ca_cert = \"{}\"\n", pki().ca_cert.display());
    let (code, out) =
        login(dir.path(), &server, &vault_section(&server, &format!("{ca}tls_server_name = \"{SERVER_NAME}\"")), &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) =
        login(dir.path(), &server, &vault_section(&server, &format!("{ca}tls_server_name = \"wrong.test\"")), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("vault.tls_server_name") && out.contains("wrong.test"), "{out}");
    let (code, out) =
        login(dir.path(), &server, &vault_section(&server, &ca), &[("VAULT_TLS_SERVER_NAME", "wrong.test")]);
    assert_eq!(code, 1, "VAULT_TLS_SERVER_NAME is used: {out}");
    let (code, out) =
        login(dir.path(), &server, &vault_section(&server, &ca), &[("VAULT_TLS_SERVER_NAME", SERVER_NAME)]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn skip_verify_works_and_warns_at_every_start() {
    let server = shared();
    let dir = tempfile::tempdir().unwrap();
    for (config, env) in [
        (vault_section(&server, "skip_verify = true"), vec![]),
        (vault_section(&server, ""), vec![("VAULT_SKIP_VERIFY", "true")]),
    ] {
        let (code, out) = login(dir.path(), &server, &config, &env);
        assert_eq!(code, 0, "{out}");
        let warning = out.lines().find(|l| l.contains("skip_verify")).unwrap_or_else(|| panic!("no warning: {out}"));
        assert!(warning.contains("WARN"), "{warning}");
        for word in ["not checked", "pose as Vault", "vault.ca_cert"] {
            assert!(warning.contains(word), "the warning names the risk and the fix ({word}): {warning}");
        }
    }
    let (code, out) =
        login(dir.path(), &server, &vault_section(&server, &format!("ca_cert = \"{}\"", pki().ca_cert.display())), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("skip_verify"), "no warning when verifying: {out}");
}

/// Enables cert auth at a random mount with one role trusting the test CA; returns the mount.
async fn cert_auth_setup(server: &Shared, role_settings: serde_json::Value) -> String {
    let admin = support::Admin::new(&server.addr, &server.root_token);
    let mount = support::unique("cert");
    admin.enable_auth(&mount, "cert").await;
    let mut settings = role_settings;
    settings["certificate"] = serde_json::Value::String(std::fs::read_to_string(&pki().ca_cert).unwrap());
    admin.write(&format!("auth/{mount}/certs/agent"), settings).await;
    mount
}

#[tokio::test]
async fn cert_auth_logs_in_with_the_client_certificate_from_config_or_environment() {
    let server = shared();
    let mount = cert_auth_setup(&server, serde_json::json!({ "token_policies": ["default"], "token_ttl": "1h" })).await;
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let ca = format!("ca_cert = \"{}\"\n", p.ca_cert.display());
    let auth = format!("[vault.auth]\nmethod = \"cert\"\nmount = \"{mount}\"\nname = \"agent\"\n");
    let files = format!("client_cert = \"{}\"\nclient_key = \"{}\"\n", p.client_cert.display(), p.client_key.display());
    let (code, out) =
        login(dir.path(), &server, &format!("{}{auth}", vault_section(&server, &format!("{ca}{files}"))), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("cert login at auth/{mount}/login")), "{out}");
    assert!(out.contains("default"), "the token has the role's policy: {out}");
    let (cert, key) = (p.client_cert.display().to_string(), p.client_key.display().to_string());
    let (code, out) = login(
        dir.path(),
        &server,
        &format!("{}{auth}", vault_section(&server, &ca)),
        &[("VAULT_CLIENT_CERT", &cert), ("VAULT_CLIENT_KEY", &key)],
    );
    assert_eq!(code, 0, "{out}");
    // Without a client certificate: said before anything is sent.
    let (code, out) = login(dir.path(), &server, &format!("{}{auth}", vault_section(&server, &ca)), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("vault.client_cert") && out.contains("VAULT_CLIENT_CERT"), "{out}");
    // A certificate from a CA the role does not trust: refused, and the message says what to check.
    let other_mount = support::unique("cert");
    let admin = support::Admin::new(&server.addr, &server.root_token);
    admin.enable_auth(&other_mount, "cert").await;
    admin
        .write(
            &format!("auth/{other_mount}/certs/agent"),
            serde_json::json!({ "certificate": std::fs::read_to_string(&p.other_ca_cert).unwrap() }),
        )
        .await;
    let auth = format!("[vault.auth]\nmethod = \"cert\"\nmount = \"{other_mount}\"\n");
    let (code, out) =
        login(dir.path(), &server, &format!("{}{auth}", vault_section(&server, &format!("{ca}{files}"))), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cert login") && out.contains("refused") && out.contains("vault.client_cert"), "{out}");
}

#[tokio::test]
async fn cert_auth_tokens_are_renewed_then_replaced_by_a_new_login_at_max_ttl() {
    use keysync::config::{AuthConfig, CertAuth, VaultConfig};
    use keysync::vault::{Authenticator, Session, VaultClient, VaultSettings};
    let server = shared();
    let mount = cert_auth_setup(
        &server,
        serde_json::json!({ "token_policies": ["default"], "token_ttl": "3s", "token_max_ttl": "7s" }),
    )
    .await;
    let p = pki();
    let cfg = VaultConfig {
        address: Some(server.addr.clone()),
        ca_cert: Some(p.ca_cert.clone()),
        client_cert: Some(p.client_cert.clone()),
        client_key: Some(p.client_key.clone()),
        ..Default::default()
    };
    let client = VaultClient::new(VaultSettings::resolve(&cfg, &|_| None).unwrap()).unwrap();
    let auth = Authenticator::with_env_token(AuthConfig::Cert(CertAuth { mount, name: None }), None);
    let session = Session::login(client, auth).await.expect("cert login");
    assert!(session.token_info().origin.starts_with("cert login"), "{:?}", session.token_info());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let maintain = tokio::spawn(session.clone().maintain(rx));
    let renewed_and_relogged = support::eventually(std::time::Duration::from_secs(30), || {
        session.renewal_count() >= 1 && session.login_count() >= 2
    })
    .await;
    let _ = stop.send(true);
    let _ = maintain.await;
    assert!(renewed_and_relogged, "renewals {}, logins {}", session.renewal_count(), session.login_count());
    // The session still works with the token from the new login.
    let info = keysync::vault::Request::get("auth/token/lookup-self", "lookup_self");
    session.request(&info).await.expect("lookup-self with the new token");
}
