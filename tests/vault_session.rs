//! The Vault session against a real dev server: AppRole (plain and wrapped secret_id), JWT,
//! renewal, re-login at max TTL, re-authentication after revocation, ACL denials.

mod support;

use keysync::config::{AppRoleAuth, AuthConfig, JwtAuth, TokenAuth, VaultConfig};
use keysync::secret::Secret;
use keysync::vault::{Authenticator, Request, Session, VaultClient, VaultError, VaultSettings};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{unique, Admin, DevServer};

fn client_for(server: &DevServer) -> VaultClient {
    let cfg = VaultConfig { address: Some(server.addr.clone()), ca_cert: support::test_ca(), ..Default::default() };
    let settings = VaultSettings::resolve(&cfg, &|_| None).expect("settings");
    VaultClient::new(settings).expect("client")
}

async fn session(server: &DevServer, auth: AuthConfig) -> Result<Arc<Session>, VaultError> {
    Session::login(client_for(server), Authenticator::with_env_token(auth, None)).await
}

/// Enables AppRole at a random mount with a role whose tokens have the given TTLs and may read
/// their own token; returns the auth config with role_id / secret_id written to files.
async fn approle_setup(admin: &Admin, dir: &Path, role_settings: serde_json::Value) -> (AppRoleAuth, String) {
    let mount = unique("approle");
    admin.enable_auth(&mount, "approle").await;
    let (role_id, secret_id) = admin.approle(&mount, "agent", role_settings).await;
    std::fs::write(dir.join("role_id"), &role_id).unwrap();
    std::fs::write(dir.join("secret_id"), &secret_id).unwrap();
    (
        AppRoleAuth {
            mount,
            role_id_file: dir.join("role_id"),
            secret_id_file: dir.join("secret_id"),
            secret_id_wrapped: false,
            remove_secret_id_file: false,
        },
        secret_id,
    )
}

#[tokio::test]
async fn approle_login_with_a_plain_secret_id() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (auth, _) = approle_setup(&admin, dir.path(), json!({"token_policies": ["default"], "token_ttl": "1h"})).await;
    let session = session(&server, AuthConfig::Approle(auth)).await.expect("login");
    let info = session.token_info();
    assert!(info.policies.contains(&"default".to_string()), "{info:?}");
    assert!(info.renewable);
    assert!(info.ttl_secs > 3500 && info.ttl_secs <= 3600, "{info:?}");
    assert!(!info.accessor.is_empty());
}

#[tokio::test]
async fn approle_login_with_a_wrapped_secret_id_and_a_clear_error_on_reuse() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (mut auth, _) = approle_setup(&admin, dir.path(), json!({"token_policies": ["default"]})).await;
    let wrapped = admin.write_wrapped(&format!("auth/{}/role/agent/secret-id", auth.mount), json!({}), "5m").await;
    let wrapping_token = wrapped["wrap_info"]["token"].as_str().expect("wrap token").to_string();
    std::fs::write(&auth.secret_id_file, &wrapping_token).unwrap();
    auth.secret_id_wrapped = true;
    auth.remove_secret_id_file = true;

    let first = session(&server, AuthConfig::Approle(auth.clone())).await.expect("login with wrapped secret_id");
    assert!(!first.token_info().accessor.is_empty());
    assert!(!auth.secret_id_file.exists(), "secret_id file should be removed after reading");

    // A second agent handed the same (now used) wrapping token gets an error naming the file.
    std::fs::write(&auth.secret_id_file, &wrapping_token).unwrap();
    let err = session(&server, AuthConfig::Approle(auth.clone())).await.unwrap_err().to_string();
    assert!(err.contains(&auth.secret_id_file.display().to_string()), "{err}");
    assert!(err.contains("wrap"), "{err}");
    assert!(!err.contains(&wrapping_token), "error leaks the wrapping token: {err}");
}

#[tokio::test]
async fn jwt_login_with_a_key_pair_made_by_the_test() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let pubkey = dir.path().join("pub.pem");
    run("openssl", &["genrsa", "-out", key.to_str().unwrap(), "2048"]);
    run("openssl", &["rsa", "-in", key.to_str().unwrap(), "-pubout", "-out", pubkey.to_str().unwrap()]);

    let mount = unique("jwt");
    admin.enable_auth(&mount, "jwt").await;
    admin
        .write(
            &format!("auth/{mount}/config"),
            json!({ "jwt_validation_pubkeys": [std::fs::read_to_string(&pubkey).unwrap()], "bound_issuer": "keysync-test" }),
        )
        .await;
    admin
        .write(
            &format!("auth/{mount}/role/agent"),
            json!({
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": ["keysync"],
                "token_policies": ["default"],
                "token_ttl": "10m",
            }),
        )
        .await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": "keysync-test", "sub": "agent-1", "aud": "keysync", "iat": now, "nbf": now - 5, "exp": now + 300});
    let jwt = sign_rs256(&key, &claims);
    let jwt_file = dir.path().join("jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();

    let auth = AuthConfig::Jwt(JwtAuth { mount: mount.clone(), role: "agent".into(), jwt_file: jwt_file.clone() });
    let session = session(&server, auth).await.expect("jwt login");
    assert!(session.token_info().policies.contains(&"default".to_string()));

    // A JWT for the wrong audience is refused with a message naming the file.
    let bad =
        sign_rs256(&key, &json!({"iss": "keysync-test", "sub": "x", "aud": "other", "iat": now, "exp": now + 300}));
    std::fs::write(&jwt_file, &bad).unwrap();
    let auth = AuthConfig::Jwt(JwtAuth { mount, role: "agent".into(), jwt_file: jwt_file.clone() });
    let err = self::session(&server, auth).await.unwrap_err().to_string();
    assert!(err.contains(&jwt_file.display().to_string()), "{err}");
    assert!(!err.contains(&bad), "error leaks the JWT");
}

#[tokio::test]
async fn renewals_keep_a_short_ttl_token_usable() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (auth, _) = approle_setup(
        &admin,
        dir.path(),
        json!({"token_policies": ["default"], "token_ttl": "3s", "token_max_ttl": "30s"}),
    )
    .await;
    let session = session(&server, AuthConfig::Approle(auth)).await.expect("login");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(session.clone().maintain(rx));
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        session.request(&Request::get("auth/token/lookup-self", "test")).await.expect("token still valid");
    }
    assert!(session.renewal_count() >= 4, "renewals: {}", session.renewal_count());
    assert_eq!(session.login_count(), 1, "renewal alone should have kept the first token");
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn the_session_logs_in_again_when_max_ttl_nears() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (auth, _) = approle_setup(
        &admin,
        dir.path(),
        json!({"token_policies": ["default"], "token_ttl": "3s", "token_max_ttl": "5s"}),
    )
    .await;
    let session = session(&server, AuthConfig::Approle(auth)).await.expect("login");
    let first = session.token_info().accessor;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(session.clone().maintain(rx));
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        session.request(&Request::get("auth/token/lookup-self", "test")).await.expect("token still valid");
    }
    assert!(session.login_count() >= 2, "logins: {}", session.login_count());
    assert_ne!(session.token_info().accessor, first);
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn a_revoked_token_is_replaced_on_the_next_call() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (auth, _) = approle_setup(&admin, dir.path(), json!({"token_policies": ["default"], "token_ttl": "1h"})).await;
    let session = session(&server, AuthConfig::Approle(auth)).await.expect("login");
    let accessor = session.token_info().accessor;
    admin.write("auth/token/revoke-accessor", json!({ "accessor": accessor })).await;

    session.request(&Request::get("auth/token/lookup-self", "test")).await.expect("re-authenticated call");
    assert_eq!(session.login_count(), 2);
    assert_ne!(session.token_info().accessor, accessor);
}

#[tokio::test]
async fn an_acl_denial_names_the_path_and_policies() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let (auth, _) = approle_setup(&admin, dir.path(), json!({"token_policies": ["default"]})).await;
    let session = session(&server, AuthConfig::Approle(auth)).await.expect("login");
    let err = session.request(&Request::get("secret/data/keysync/forbidden", "test")).await.unwrap_err();
    assert!(matches!(err, VaultError::PermissionDenied { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("secret/data/keysync/forbidden") && text.contains("default"), "{text}");
    assert_eq!(session.login_count(), 1, "an ACL denial must not trigger a re-login");
}

#[tokio::test]
async fn a_rewritten_token_file_is_picked_up() {
    let server = DevServer::start();
    let admin = server.admin();
    let dir = tempfile::tempdir().unwrap();
    let make_token = |admin: Admin| async move {
        admin.write("auth/token/create", json!({"policies": ["default"], "ttl": "1h"})).await["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, make_token(admin.clone()).await).unwrap();
    let auth = AuthConfig::Token(TokenAuth { token_file: Some(token_file.clone()) });
    let session = session(&server, auth).await.expect("login");
    let first = session.token_info().accessor;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(session.clone().maintain(rx));
    std::fs::write(&token_file, make_token(admin.clone()).await).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while session.token_info().accessor == first {
        assert!(std::time::Instant::now() < deadline, "new token file not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn a_token_from_the_environment_that_dies_gives_a_clear_error() {
    let server = DevServer::start();
    let admin = server.admin();
    let token = admin.write("auth/token/create", json!({"policies": ["default"], "ttl": "1h"})).await["auth"]
        ["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let session = Session::login(
        client_for(&server),
        Authenticator::with_env_token(AuthConfig::Token(TokenAuth::default()), Some(Secret::new(token.clone()))),
    )
    .await
    .expect("login");
    admin.with_token(&token).write("auth/token/revoke-self", json!({})).await;
    let err = session.request(&Request::get("auth/token/lookup-self", "test")).await.unwrap_err().to_string();
    assert!(err.contains("VAULT_TOKEN"), "{err}");
    assert!(!err.contains(&token));
}

fn run(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program).args(args).output().expect("run openssl");
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An RS256 JWT signed with `openssl dgst` (PKCS#1 v1.5 over SHA-256 is what RS256 is).
fn sign_rs256(key: &Path, claims: &serde_json::Value) -> String {
    let header = b64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = b64url(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("input");
    std::fs::write(&data, &input).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", key.to_str().unwrap(), data.to_str().unwrap()])
        .output()
        .expect("openssl dgst");
    assert!(out.status.success());
    format!("{input}.{}", b64url(&out.stdout))
}
