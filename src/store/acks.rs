//! Render acknowledgements: agents with `agent.report_renders = true` record which
//! fingerprint of each key they rendered, under `<prefix>/_acks/<agent-id>`. Retirement of a
//! previous key can then wait for consumers to switch instead of only for the clock.

use crate::vault::{Request, Session, VaultError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One agent's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub seen_at: Option<DateTime<Utc>>,
    /// key name → fingerprint of the current key it rendered.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Acks {
    session: Arc<Session>,
    mount: String,
    prefix: String,
}

/// Agent ids become path segments: keep letters, digits, '.', '_' and '-'.
pub fn ack_id(agent: &str) -> String {
    let id: String = agent
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .collect();
    id.trim_matches('-').chars().take(100).collect()
}

impl Acks {
    pub fn new(session: Arc<Session>, mount: &str, prefix: &str) -> Self {
        Acks { session, mount: mount.into(), prefix: prefix.into() }
    }

    /// Records this agent's rendered fingerprints (a plain write: each agent owns its secret).
    pub async fn report(&self, agent: &str, keys: &BTreeMap<String, String>) -> Result<(), VaultError> {
        let path = format!("{}/data/{}/_acks/{}", self.mount, self.prefix, ack_id(agent));
        let body = json!({ "data": { "seen_at": Utc::now().to_rfc3339(), "keys": keys } });
        self.session.request(&Request::post(path, "ack_write", body)).await.map(|_| ())
    }

    /// Every agent's latest report.
    pub async fn all(&self) -> Result<Vec<(String, Ack)>, VaultError> {
        let list = Request::list(format!("{}/metadata/{}/_acks", self.mount, self.prefix), "ack_list");
        let resp = self.session.request_allowing(&list, &[404]).await?;
        if resp.status == 404 {
            return Ok(Vec::new());
        }
        let names: Vec<String> = resp
            .body
            .pointer("/data/keys")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).filter(|k| !k.ends_with('/')).map(str::to_string).collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for name in names {
            let req = Request::get(format!("{}/data/{}/_acks/{name}", self.mount, self.prefix), "ack_read");
            let resp = self.session.request_allowing(&req, &[404]).await?;
            if let Some(data) = resp.body.pointer("/data/data") {
                if let Ok(ack) = serde_json::from_value::<Ack>(data.clone()) {
                    out.push((name, ack));
                }
            }
        }
        Ok(out)
    }
}
