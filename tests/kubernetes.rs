//! Kubernetes auth end to end: the real Vault server's `kubernetes` auth method, configured
//! against an HTTPS stand-in for the cluster's TokenReview API (tests/support/token_review.rs),
//! logs keysync in with a service-account token file, renews, logs in again with the
//! kubelet's fresh token, and refuses a wrong service account or namespace with an error that
//! says what to change. The example's own `vault-setup.sh` configures Vault for the last
//! test, which runs the ConfigMap's sidecar config as a real `keysync run`.

mod support;

use keysync::config::{AuthConfig, KubernetesAuth, VaultConfig};
use keysync::vault::{Authenticator, Request, Session, VaultClient, VaultError, VaultSettings};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::token_review::TokenReviewApi;
use support::{eventually, unique, Admin, DevServer};

const NAMESPACE: &str = "llm-apps";

fn client_for(server: &DevServer) -> VaultClient {
    let cfg = VaultConfig { address: Some(server.addr.clone()), ..Default::default() };
    VaultClient::new(VaultSettings::resolve(&cfg, &|_| None).expect("settings")).expect("client")
}

async fn login(server: &DevServer, mount: &str, jwt_file: &Path) -> Result<Arc<Session>, VaultError> {
    let auth = AuthConfig::Kubernetes(KubernetesAuth {
        mount: mount.into(),
        role: "keysync".into(),
        jwt_file: jwt_file.to_path_buf(),
    });
    Session::login(client_for(server), Authenticator::with_env_token(auth, None)).await
}

/// Enables kubernetes auth at a random mount pointed at the stand-in, with a role `keysync`
/// bound to service account `keysync` in `llm-apps` and the audience `vault`.
async fn kubernetes_auth(admin: &Admin, api: &TokenReviewApi, token_ttl: &str, token_max_ttl: &str) -> String {
    let mount = unique("kubernetes");
    admin.enable_auth(&mount, "kubernetes").await;
    admin
        .write(
            &format!("auth/{mount}/config"),
            json!({ "kubernetes_host": api.url, "kubernetes_ca_cert": api.ca_pem, "token_reviewer_jwt": api.reviewer_jwt }),
        )
        .await;
    admin
        .write(
            &format!("auth/{mount}/role/keysync"),
            json!({
                "bound_service_account_names": ["keysync"],
                "bound_service_account_namespaces": [NAMESPACE],
                "audience": "vault",
                "token_policies": ["default"],
                "token_ttl": token_ttl,
                "token_max_ttl": token_max_ttl,
            }),
        )
        .await;
    mount
}

fn write_token(path: &Path, jwt: &str) {
    // As the kubelet does: replace the file whole.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, jwt).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn keysync_logs_in_through_token_review_renews_and_logs_in_again_with_the_kubelets_new_token() {
    let server = DevServer::start();
    let admin = server.admin();
    let api = TokenReviewApi::start().await;
    let mount = kubernetes_auth(&admin, &api, "3s", "6s").await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    let first_jwt = api.issue(NAMESPACE, "keysync", &["vault"]);
    write_token(&jwt_file, &first_jwt);

    let session = login(&server, &mount, &jwt_file).await.expect("kubernetes login");
    let info = session.token_info();
    assert!(info.policies.contains(&"default".to_string()), "{info:?}");
    assert!(info.renewable && info.ttl_secs <= 3, "{info:?}");
    // Vault asked the stand-in, as itself, about this token for the role's audience.
    let reviews = api.reviews();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert!(reviews[0].reviewer_ok && reviews[0].authenticated, "{reviews:?}");
    assert_eq!(reviews[0].audiences, vec!["vault".to_string()]);
    // The token Vault issued works.
    session.request(&Request::get("auth/token/lookup-self", "test")).await.expect("lookup-self");

    // The kubelet projects a fresh token and the pod's old one stops working; renewal keeps
    // the Vault token alive until max TTL, then keysync logs in again with the new file.
    let first_accessor = info.accessor;
    write_token(&jwt_file, &api.issue(NAMESPACE, "keysync", &["vault"]));
    api.invalidate(&first_jwt);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(session.clone().maintain(rx));
    let deadline = Instant::now() + Duration::from_secs(20);
    while session.login_count() < 2 || session.renewal_count() < 1 {
        assert!(
            Instant::now() < deadline,
            "no renewal and re-login within 20 s: logins {}, renewals {}",
            session.login_count(),
            session.renewal_count()
        );
        session.request(&Request::get("auth/token/lookup-self", "test")).await.expect("token stays usable");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_ne!(session.token_info().accessor, first_accessor, "a new Vault token after re-login");
    let reviews = api.reviews();
    assert!(reviews.len() >= 2 && reviews.iter().all(|r| r.reviewer_ok && r.authenticated), "{reviews:?}");
    support::report::record(
        "Auth and server state",
        "Kubernetes auth (real Vault, HTTPS TokenReview stand-in): token_ttl 3 s, token_max_ttl 6 s, the kubelet's token replaced and the old one invalidated",
        1,
        &format!(
            "{} logins, {} renewals, {} TokenReviews (all with the reviewer token, all authenticated); every request in between succeeded",
            session.login_count(),
            session.renewal_count(),
            reviews.len()
        ),
    );
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_namespace_service_account_or_deleted_account_is_refused_with_what_to_change() {
    let server = DevServer::start();
    let admin = server.admin();
    let api = TokenReviewApi::start().await;
    let mount = kubernetes_auth(&admin, &api, "1h", "4h").await;
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    let file = jwt_file.display().to_string();

    // The right service account in the wrong namespace: Vault refuses from the claims alone.
    let jwt = api.issue("default", "keysync", &["vault"]);
    write_token(&jwt_file, &jwt);
    let err = login(&server, &mount, &jwt_file).await.unwrap_err().to_string();
    for part in [
        "namespace not authorized",
        "service account \"keysync\" in namespace \"default\"",
        "bound_service_account_namespaces",
        &format!("auth/{mount}/role/keysync"),
        &file,
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!err.contains(&jwt), "the error shows the token");

    // Another service account in the right namespace.
    write_token(&jwt_file, &api.issue(NAMESPACE, "llm-app", &["vault"]));
    let err = login(&server, &mount, &jwt_file).await.unwrap_err().to_string();
    for part in
        ["service account name not authorized", "\"llm-app\"", "bound_service_account_names", "serviceAccountName"]
    {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(api.reviews().is_empty(), "claims that do not match the role are refused before TokenReview");

    // The right account, deleted in the cluster since: TokenReview says no.
    write_token(&jwt_file, &api.issue(NAMESPACE, "keysync", &["vault"]));
    login(&server, &mount, &jwt_file).await.expect("the right account logs in");
    api.delete_service_account(NAMESPACE, "keysync");
    let err = login(&server, &mount, &jwt_file).await.unwrap_err().to_string();
    for part in ["permission denied", "TokenReview", "kubernetes_host", &file] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    let last = api.reviews().pop().expect("a review");
    assert!(last.reviewer_ok && !last.authenticated, "{last:?}");

    // A file that is no service-account token at all.
    write_token(&jwt_file, "not-a-jwt");
    let err = login(&server, &mount, &jwt_file).await.unwrap_err().to_string();
    assert!(err.contains("not a Kubernetes service-account token") && err.contains(&file), "{err}");

    // A missing token file names the field to fix.
    let err = login(&server, &mount, &dir.path().join("absent")).await.unwrap_err().to_string();
    assert!(err.contains("vault.auth.jwt_file") && err.contains("absent"), "{err}");

    // A role that does not exist.
    write_token(&jwt_file, &api.issue(NAMESPACE, "keysync", &["vault"]));
    let auth = AuthConfig::Kubernetes(KubernetesAuth { mount: mount.clone(), role: "nope".into(), jwt_file });
    let err =
        Session::login(client_for(&server), Authenticator::with_env_token(auth, None)).await.unwrap_err().to_string();
    assert!(err.contains("invalid role name") && err.contains("vault.auth.role"), "{err}");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One entry of the example ConfigMap's `data`, through python3's yaml (as tests/packaging.rs).
pub fn configmap_entry(name: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys, yaml; sys.stdout.write(yaml.safe_load(open(sys.argv[1]))['data'][sys.argv[2]])"])
        .arg(repo().join("examples/kubernetes/configmap.yaml"))
        .arg(name)
        .output()
        .expect("python3 with yaml");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} should appear once in:\n{text}");
    text.replace(from, to)
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_examples_vault_setup_and_sidecar_config_render_a_key_through_kubernetes_auth() {
    let server = DevServer::start();
    let api = TokenReviewApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("kube-ca.pem"), &api.ca_pem).unwrap();
    std::fs::write(d.join("reviewer.jwt"), &api.reviewer_jwt).unwrap();

    // examples/kubernetes/vault-setup.sh, as an operator runs it, with the cluster facts given.
    // Default mount "kubernetes", as the ConfigMap's config expects.
    let out = std::process::Command::new("bash")
        .arg(repo().join("examples/kubernetes/vault-setup.sh"))
        .env("VAULT_CLI", support::vault_cli())
        .env("VAULT_ADDR", &server.addr)
        .env("VAULT_TOKEN", &server.root_token)
        .env("KUBERNETES_HOST", &api.url)
        .env("KUBERNETES_CA_CERT_FILE", d.join("kube-ca.pem"))
        .env("TOKEN_REVIEWER_JWT_FILE", d.join("reviewer.jwt"))
        .env("HOME", d)
        .env_remove("VAULT_CACERT")
        .output()
        .expect("bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "vault-setup.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("roles keysync-reader and keysync-rotator"), "{stdout}");
    for leaked in [&api.reviewer_jwt, &server.root_token] {
        support::assert_no_leak(leaked, &format!("{stdout}{stderr}"), "vault-setup.sh output");
    }

    // A key to render, written by an admin.
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(60), "test-writer").await;
    let key = "sk-k8s-sidecar-0123456789abcdef";
    support::leak::register(key);
    let opts = keysync::store::PutOptions { promote: true, reason: "test".into(), keep_fields: true };
    writer
        .put(
            &keysync::store::KeyName::parse("openai").unwrap(),
            keysync::store::KeyData::new(keysync::secret::Secret::new(key)),
            &opts,
        )
        .await
        .unwrap();

    // The ConfigMap's sidecar config, with this machine's addresses and paths.
    let listen = support::free_listen_addr();
    let keys_dir = d.join("keys");
    std::fs::create_dir(&keys_dir).unwrap();
    let token_file = d.join("sa-token");
    write_token(&token_file, &api.issue(NAMESPACE, "keysync", &["vault"]));
    let mut cfg = configmap_entry("sidecar.toml");
    cfg = replace_once(&cfg, "https://vault.vault.svc:8200", &server.addr);
    cfg = replace_once(&cfg, "ca_cert = \"/etc/keysync/vault-ca/ca.crt\"\n", "");
    cfg = replace_once(&cfg, "/var/run/secrets/vault/token", &token_file.display().to_string());
    cfg = replace_once(&cfg, "0.0.0.0:9464", &listen);
    cfg = replace_once(&cfg, "/keys/openai.key", &keys_dir.join("openai.key").display().to_string());
    let config = d.join("sidecar.toml");
    std::fs::write(&config, cfg).unwrap();

    // VAULT_TOKEN holds nothing usable: the agent must log in through kubernetes auth.
    let agent = support::Agent::start(&config, &server.addr, "not-a-vault-token", &["run"], d);
    let key_file = keys_dir.join("openai.key");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(&key_file).unwrap_or_default() == key).await,
        "{}",
        agent.log_text()
    );
    assert!(eventually(Duration::from_secs(5), || http_get(&listen, "/readyz").0 == 200).await, "{}", agent.log_text());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().mode() & 0o777, 0o640, "group-readable for the app");
    assert!(api.reviews().iter().any(|r| r.authenticated && r.audiences == ["vault"]), "{:?}", api.reviews());
    let log = agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("logged in to Vault") && l.contains("kubernetes") && l.contains("keysync-reader")),
        "{log}"
    );
}
