//! A local server that follows OpenAI's documented Admin API shapes for project service
//! accounts, and answers `GET /v1/models` only for keys of live service accounts. `refuse`
//! makes it refuse every key (to drive failed validations).
#![allow(dead_code)]

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::Router;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub const ADMIN_KEY: &str = "sk-admin-test-0123456789";

#[derive(Default)]
pub struct Accounts {
    /// id → (key, deleted)
    pub accounts: BTreeMap<String, (String, bool)>,
    /// id → (name, created_at)
    pub names: BTreeMap<String, (String, i64)>,
    next: u32,
    /// Answer 401 to every validation, live key or not.
    pub refuse: bool,
    /// How long creating an account and validating a key take (a real API is not instant).
    pub latency: std::time::Duration,
}

pub type Shared = Arc<Mutex<Accounts>>;

fn bearer(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string()
}

async fn create(
    State(s): State<Shared>,
    Path(project): Path<String>,
    h: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    if bearer(&h) != ADMIN_KEY {
        return (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Invalid admin key"}}"#.into());
    }
    let latency = s.lock().unwrap().latency;
    tokio::time::sleep(latency).await;
    let name = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["name"].as_str().map(String::from));
    let Some(name) = name else {
        return (StatusCode::BAD_REQUEST, r#"{"error":{"message":"name is required"}}"#.into());
    };
    let mut s = s.lock().unwrap();
    s.next += 1;
    let id = format!("svc_acct_{}", s.next);
    // Random like real keys (a key embedding the non-secret project id would share characters
    // with output that shows the project), and known to the leak check.
    let key = format!(
        "sk-svcacct-{project_len:02}{:08}-{:016x}-secretpart",
        s.next,
        rand::random::<u64>(),
        project_len = project.len()
    );
    crate::support::leak::register(&key);
    s.accounts.insert(id.clone(), (key.clone(), false));
    s.names.insert(id.clone(), (name.clone(), chrono::Utc::now().timestamp()));
    let body = serde_json::json!({
        "object": "organization.project.service_account", "id": id, "name": name, "role": "member",
        "created_at": 1711471533,
        "api_key": {"object": "organization.project.service_account.api_key", "value": key, "name": "Secret Key",
                    "created_at": 1711471533, "id": format!("key_{}", s.next)}
    });
    (StatusCode::OK, body.to_string())
}

async fn list(State(s): State<Shared>, Path(_project): Path<String>, h: HeaderMap) -> (StatusCode, String) {
    if bearer(&h) != ADMIN_KEY {
        return (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Invalid admin key"}}"#.into());
    }
    let s = s.lock().unwrap();
    let data: Vec<serde_json::Value> = s
        .accounts
        .iter()
        .filter(|(_, (_, deleted))| !deleted)
        .map(|(id, _)| {
            let (name, created) = s.names.get(id).cloned().unwrap_or_default();
            serde_json::json!({"object": "organization.project.service_account", "id": id, "name": name, "role": "member", "created_at": created})
        })
        .collect();
    let body =
        serde_json::json!({"object": "list", "data": data, "first_id": null, "last_id": null, "has_more": false});
    (StatusCode::OK, body.to_string())
}

async fn remove(
    State(s): State<Shared>,
    Path((_project, id)): Path<(String, String)>,
    h: HeaderMap,
) -> (StatusCode, String) {
    if bearer(&h) != ADMIN_KEY {
        return (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Invalid admin key"}}"#.into());
    }
    match s.lock().unwrap().accounts.get_mut(&id) {
        Some(a) if !a.1 => {
            a.1 = true;
            let body = serde_json::json!({"object": "organization.project.service_account.deleted", "id": id, "deleted": true});
            (StatusCode::OK, body.to_string())
        }
        _ => (StatusCode::NOT_FOUND, r#"{"error":{"message":"not found"}}"#.into()),
    }
}

async fn models(State(s): State<Shared>, h: HeaderMap) -> (StatusCode, String) {
    let latency = s.lock().unwrap().latency;
    tokio::time::sleep(latency).await;
    let key = bearer(&h);
    let s = s.lock().unwrap();
    let live = !s.refuse && s.accounts.values().any(|(k, deleted)| *k == key && !deleted);
    if live {
        (StatusCode::OK, r#"{"object":"list","data":[]}"#.into())
    } else {
        (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Incorrect API key provided"}}"#.into())
    }
}

pub async fn start() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/v1/organization/projects/{project}/service_accounts", post(create).get(list))
        .route("/v1/organization/projects/{project}/service_accounts/{id}", delete(remove))
        .route("/v1/models", get(models))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, state)
}
