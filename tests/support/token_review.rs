//! A stand-in for the one Kubernetes API endpoint Vault's `kubernetes` auth method calls:
//! `POST /apis/authentication.k8s.io/v1/tokenreviews`, over HTTPS with a CA the test makes
//! with the openssl CLI. Kubernetes itself cannot run here; this follows the documented
//! `authentication.k8s.io/v1` TokenReview request and response:
//!
//! - request: `Authorization: Bearer <reviewer token>`, body
//!   `{"spec": {"token": "<service-account token>", "audiences": ["…"]}}` (`kind` and
//!   `apiVersion` may be omitted, as Vault's Go client does);
//! - a reviewer token the API server does not know: 401 with a `Status` object
//!   (`"reason": "Unauthorized"`);
//! - otherwise 201 with the TokenReview echoed back and its `status`: `authenticated: true`,
//!   `user.username = system:serviceaccount:<namespace>:<name>`, `user.uid`, `user.groups`,
//!   `audiences` (those asked for that the token carries); or `authenticated: false` with an
//!   `error` for a token it did not issue, one whose service account was deleted, or one for
//!   other audiences.
//!
//! Service-account tokens are RS256 JWTs signed by a key the stand-in makes, with the claims
//! a projected token carries (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`,
//! `kubernetes.io.{namespace, serviceaccount, pod}`), which Vault decodes before it calls
//! TokenReview.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// The issuer real clusters put in service-account tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[derive(Clone, Debug)]
struct Issued {
    namespace: String,
    name: String,
    uid: String,
    audiences: Vec<String>,
}

/// One TokenReview the stand-in answered.
#[derive(Clone, Debug)]
pub struct Review {
    /// Whether the caller presented the reviewer token.
    pub reviewer_ok: bool,
    pub audiences: Vec<String>,
    pub authenticated: bool,
}

#[derive(Default)]
struct State {
    tokens: BTreeMap<String, Issued>,
    /// Service accounts deleted since their tokens were issued (namespace, name).
    deleted: Vec<(String, String)>,
    reviews: Vec<Review>,
}

pub struct TokenReviewApi {
    /// `https://127.0.0.1:<port>`: what Vault's `kubernetes_host` is set to.
    pub url: String,
    /// The CA that signed the server certificate (PEM): Vault's `kubernetes_ca_cert`.
    pub ca_pem: String,
    /// The token Vault must present (`token_reviewer_jwt`).
    pub reviewer_jwt: String,
    signing_key: PathBuf,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TokenReviewApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenReviewApi {
    /// Serves on a free loopback port until dropped, with the test PKI's server certificate
    /// and a service-account signing key made with openssl.
    pub async fn start() -> TokenReviewApi {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // The server certificate the TLS tests use (127.0.0.1 and localhost, signed by the
        // test CA): Vault checks the stand-in against that CA.
        let pki = super::pki::pki();
        super::pki::openssl(d, &["genrsa", "-out", "sa-signing.key", "2048"]);

        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&pki.server_cert).expect("server.pem").map(|c| c.expect("cert")).collect();
        let key = PrivateKeyDer::from_pem_file(&pki.server_key).expect("server.key");
        let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().unwrap());

        let state = Arc::new(Mutex::new(State::default()));
        let mut api = TokenReviewApi {
            url,
            ca_pem: std::fs::read_to_string(&pki.ca_cert).unwrap(),
            reviewer_jwt: String::new(),
            signing_key: d.join("sa-signing.key"),
            state: state.clone(),
            task: tokio::spawn(async {}),
            _dir: dir,
        };
        // Vault's own identity towards the API server (system:auth-delegator in a cluster).
        api.reviewer_jwt = api.issue("kube-system", "vault-token-reviewer", &[ISSUER]);
        let reviewer = api.reviewer_jwt.clone();
        api.task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, state, reviewer) = (acceptor.clone(), state.clone(), reviewer.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve_one(tls, &state, &reviewer).await;
                    }
                });
            }
        });
        api
    }

    /// A token for service account `name` in `namespace`, valid for `audiences`, as the
    /// kubelet projects it into a pod.
    pub fn issue(&self, namespace: &str, name: &str, audiences: &[&str]) -> String {
        let uid = super::unique("uid");
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": { "name": name, "uid": uid },
                "pod": { "name": format!("{name}-pod"), "uid": super::unique("pod-uid") },
            },
        });
        let jwt = sign_rs256(&self.signing_key, &claims);
        super::leak::register(&jwt);
        let issued = Issued {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
        };
        self.state.lock().unwrap().tokens.insert(jwt.clone(), issued);
        jwt
    }

    /// Deletes a service account: its tokens stop passing TokenReview.
    pub fn delete_service_account(&self, namespace: &str, name: &str) {
        self.state.lock().unwrap().deleted.push((namespace.into(), name.into()));
    }

    /// Invalidates one token, as deleting the pod it was projected into does.
    pub fn invalidate(&self, jwt: &str) {
        self.state.lock().unwrap().tokens.remove(jwt);
    }

    /// Every review answered so far.
    pub fn reviews(&self) -> Vec<Review> {
        self.state.lock().unwrap().reviews.clone()
    }
}

/// Reads one HTTP/1.1 request, answers it, and closes the connection.
async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    state: &Mutex<State>,
    reviewer: &str,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buf[head_end..head_end + length];
    let (status, answer) = answer(&request_line, &headers, body, state, reviewer);
    let text = answer.to_string();
    let reason = match status {
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

fn answer(
    request_line: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    state: &Mutex<State>,
    reviewer: &str,
) -> (u16, Value) {
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if path != "/apis/authentication.k8s.io/v1/tokenreviews" {
        return (404, status_object(404, "NotFound", "the server could not find the requested resource"));
    }
    if method != "POST" {
        return (405, status_object(405, "MethodNotAllowed", "only create is supported"));
    }
    let bearer = headers.get("authorization").and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    let mut st = state.lock().unwrap();
    let reviewer_ok = bearer == reviewer;
    if !reviewer_ok {
        st.reviews.push(Review { reviewer_ok, audiences: vec![], authenticated: false });
        return (401, status_object(401, "Unauthorized", "Unauthorized"));
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return (400, status_object(400, "BadRequest", "the body is not a TokenReview"));
    };
    let token = request.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default();
    let wanted: Vec<String> = request
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let status = match st.tokens.get(token).cloned() {
        None => {
            json!({ "user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]" })
        }
        Some(sa) if st.deleted.contains(&(sa.namespace.clone(), sa.name.clone())) => json!({
            "user": {},
            "error": format!("[invalid bearer token, service account {}/{} has been deleted]", sa.namespace, sa.name),
        }),
        Some(sa) => {
            // No audiences asked for: the API server's own audiences apply (the issuer's).
            let asked = if wanted.is_empty() { vec![ISSUER.to_string()] } else { wanted.clone() };
            let common: Vec<String> = asked.iter().filter(|a| sa.audiences.contains(a)).cloned().collect();
            if common.is_empty() {
                json!({ "user": {}, "error": "[invalid bearer token, token audiences are invalid]" })
            } else {
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", sa.namespace, sa.name),
                        "uid": sa.uid,
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", sa.namespace), "system:authenticated"],
                    },
                    "audiences": common,
                })
            }
        }
    };
    let authenticated = status.get("authenticated").and_then(Value::as_bool).unwrap_or(false);
    st.reviews.push(Review { reviewer_ok, audiences: wanted, authenticated });
    let mut spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    // The real API server does not echo the token back either.
    if let Some(s) = spec.as_object_mut() {
        s.remove("token");
    }
    (
        201,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "spec": spec,
            "status": status,
        }),
    )
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
fn sign_rs256(key: &Path, claims: &Value) -> String {
    let header = b64url(br#"{"alg":"RS256","kid":"keysync-test","typ":"JWT"}"#);
    let input = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("input");
    std::fs::write(&data, &input).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign", key.to_str().unwrap(), data.to_str().unwrap()])
        .output()
        .expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst: {}", String::from_utf8_lossy(&out.stderr));
    format!("{input}.{}", b64url(&out.stdout))
}
