//! A local server that follows OpenAI's documented Admin API shapes for project service
//! accounts (create, delete, and list with cursor paging: `limit` 1–100, default 20, `after`
//! = an id, answer `{object: "list", data, first_id, last_id, has_more}`), and answers
//! `GET /v1/models` only for keys of live service accounts, with OpenAI's documented refusal
//! (401 `invalid_api_key`). `refuse` makes it refuse every key (to drive failed validations),
//! `rate_limit` answers 429 with `Retry-After`.
#![allow(dead_code)]

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
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
    /// Answer every validation with 429 and this `Retry-After` (seconds).
    pub rate_limit: Option<u64>,
    /// List requests served, and the `after` cursor each one carried.
    pub list_requests: Vec<Option<String>>,
    /// A broken server: every list answer is the first page with `has_more: true`.
    pub stuck_cursor: bool,
}

impl Accounts {
    /// Adds a live service account as if created at `created_at` (unix seconds), without a
    /// request: for seeding a project with other keys' and people's accounts. Returns its id.
    pub fn seed(&mut self, name: &str, created_at: i64) -> String {
        self.next += 1;
        let id = format!("svc_acct_{}", self.next);
        let key = format!("sk-svcacct-seeded{:06}-{:016x}-secretpart", self.next, rand::random::<u64>());
        crate::support::leak::register(&key);
        self.accounts.insert(id.clone(), (key, false));
        self.names.insert(id.clone(), (name.to_string(), created_at));
        id
    }

    /// Names of the live accounts.
    pub fn live_names(&self) -> Vec<String> {
        self.accounts
            .iter()
            .filter(|(_, (_, deleted))| !deleted)
            .filter_map(|(id, _)| self.names.get(id).map(|(n, _)| n.clone()))
            .collect()
    }
}

/// OpenAI's answer to a request with a bad key (developers.openai.com/docs/guides/error-codes).
const INVALID_KEY: &str = r#"{"error":{"message":"Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

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
    let now = chrono::Utc::now().timestamp();
    s.names.insert(id.clone(), (name.clone(), now));
    let body = serde_json::json!({
        "object": "organization.project.service_account", "id": id, "name": name, "role": "member",
        "created_at": now,
        "api_key": {"object": "organization.project.service_account.api_key", "value": key, "name": "Secret Key",
                    "created_at": now, "id": format!("key_{}", s.next)}
    });
    (StatusCode::OK, body.to_string())
}

/// Live accounts in id order, `limit` of them after the `after` cursor (which may name an
/// account deleted since).
async fn list(State(s): State<Shared>, Path(_project): Path<String>, uri: Uri, h: HeaderMap) -> (StatusCode, String) {
    if bearer(&h) != ADMIN_KEY {
        return (StatusCode::UNAUTHORIZED, r#"{"error":{"message":"Invalid admin key"}}"#.into());
    }
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (limit_param, after) = (param("limit"), param("after"));
    let limit = match limit_param.as_deref().map(str::parse::<usize>) {
        None => 20,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                r#"{"error":{"message":"limit must be between 1 and 100","type":"invalid_request_error","param":"limit","code":null}}"#.into(),
            )
        }
    };
    let mut s = s.lock().unwrap();
    s.list_requests.push(after.clone());
    // Creation order (ids are numbered), like OpenAI's lists; the cursor may name an account
    // deleted since.
    let seq = |id: &str| id.rsplit('_').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let mut all: Vec<(&String, bool)> = s.accounts.iter().map(|(id, (_, deleted))| (id, *deleted)).collect();
    all.sort_by_key(|(id, _)| seq(id));
    let from = match after.as_deref() {
        Some(a) if !s.stuck_cursor => all.iter().take_while(|(id, _)| seq(id) <= seq(a)).count(),
        _ => 0,
    };
    let live: Vec<String> =
        all[from..].iter().filter(|(_, deleted)| !deleted).map(|(id, _)| (*id).clone()).take(limit + 1).collect();
    let has_more = live.len() > limit || s.stuck_cursor;
    let data: Vec<serde_json::Value> = live
        .iter()
        .take(limit)
        .map(|id| {
            let (name, created) = s.names.get(id).cloned().unwrap_or_default();
            serde_json::json!({"object": "organization.project.service_account", "id": id, "name": name, "role": "member", "created_at": created})
        })
        .collect();
    let first = data.first().map(|a| a["id"].clone()).unwrap_or(serde_json::Value::Null);
    let last = data.last().map(|a| a["id"].clone()).unwrap_or(serde_json::Value::Null);
    let body =
        serde_json::json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more});
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

async fn models(State(s): State<Shared>, h: HeaderMap) -> (StatusCode, HeaderMap, String) {
    let latency = s.lock().unwrap().latency;
    tokio::time::sleep(latency).await;
    let key = bearer(&h);
    let s = s.lock().unwrap();
    let mut headers = HeaderMap::new();
    if let Some(seconds) = s.rate_limit {
        headers.insert("retry-after", seconds.into());
        let body = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        return (StatusCode::TOO_MANY_REQUESTS, headers, body.into());
    }
    let live = !s.refuse && s.accounts.values().any(|(k, deleted)| *k == key && !deleted);
    if live {
        let body = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1721172741,"owned_by":"system"}]}"#;
        (StatusCode::OK, headers, body.into())
    } else {
        (StatusCode::UNAUTHORIZED, headers, INVALID_KEY.into())
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
