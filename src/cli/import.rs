//! `keysync import FILE`: many keys at once from JSON or a `.env` file. One bad entry does not
//! stop the rest; every entry is reported, by name and fingerprint, never by value.

use super::output::{print_table, table};
use super::{print_json, CliError, Output};
use crate::secret::{short_fingerprint, Secret};
use crate::store::{KeyData, KeyName, KeyStore, PutOptions, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::path::Path;

/// Puts in flight at once.
const IMPORT_CONCURRENCY: usize = 32;
/// Keys stored between two index writes. Each flush writes every shard the batch touched
/// (up to 256) and the root, so a large batch is what keeps a big import from writing the
/// index almost once per key.
const INDEX_BATCH: usize = 5_000;

/// What became of one entry: (key, version, short fingerprint, imported|unchanged) or
/// (key if known, why it failed).
type RowResult = Result<(KeyName, u64, String, &'static str), (Option<KeyName>, String)>;

/// One entry read from the import file.
struct Entry {
    /// Where it came from (`line 3`, `"openai"`), for messages.
    origin: String,
    name: Result<KeyName, String>,
    data: Result<KeyData, String>,
}

pub async fn run(store: &KeyStore, file: &Path, promote: bool, output: Output) -> Result<(), CliError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| CliError::usage(format!("cannot read {} ({e})", file.display())))?;
    let entries = if text.trim_start().starts_with('{') {
        parse_json(&text).map_err(|e| CliError::usage(format!("{}: {e}", file.display())))?
    } else {
        parse_env(&text)
    };
    if entries.is_empty() {
        return Err(CliError::usage(format!(
            "{} holds no keys; write JSON ({{\"openai\": \"sk-…\"}}) or .env lines (OPENAI_API_KEY=sk-…)",
            file.display()
        )));
    }
    let bar = if std::io::stderr().is_terminal() && output == Output::Table {
        let bar = ProgressBar::new(entries.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let opts = PutOptions { promote, reason: format!("import from {}", file.display()), keep_fields: true };
    // Several puts in flight and one index write per batch: each put is still its own
    // check-and-set write, but the change index is written once per shard and batch instead
    // of once per key (importing 10,000 keys one index write at a time wrote the index
    // 10,000 times).
    let batched = store.clone().batching_index();
    // Keys not in Vault yet are created with check-and-set 0 straight away (no metadata read
    // first: an import into an empty prefix costs one data write and one metadata PATCH a
    // key). One LIST tells which exist; if it cannot be made, every key is read first.
    let existing: Option<std::collections::BTreeSet<KeyName>> = match store.list().await {
        Ok(names) => Some(names.into_iter().collect()),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list the keys; reading each key before writing it");
            None
        }
    };
    let existing = std::sync::Arc::new(existing);
    let total = entries.len();
    let mut rows: Vec<Option<(String, RowResult)>> = (0..total).map(|_| None).collect();
    let mut running = tokio::task::JoinSet::new();
    let mut entries = entries.into_iter().enumerate();
    let mut since_flush = 0usize;
    let mut unreachable: Option<String> = None;
    loop {
        while running.len() < IMPORT_CONCURRENCY && unreachable.is_none() {
            let Some((i, entry)) = entries.next() else { break };
            let (name, data) = match (entry.name, entry.data) {
                (Err(e), _) | (_, Err(e)) => {
                    rows[i] = Some((entry.origin, Err((None, e))));
                    bar.inc(1);
                    continue;
                }
                (Ok(name), Ok(data)) => (name, data),
            };
            let (store, opts, origin, existing) = (batched.clone(), opts.clone(), entry.origin, existing.clone());
            running.spawn(async move {
                let fp = short_fingerprint(&data.api_key.fingerprint()).to_string();
                let new = existing.as_ref().as_ref().is_some_and(|e| !e.contains(&name));
                let result = if new {
                    // Created meanwhile by someone else: the CAS write fails and nothing was
                    // written; then the usual put (read, compare, write on the latest).
                    match store.put_from(&name, data.clone(), &opts, None).await {
                        Err(StoreError::Conflict { .. }) => store.put(&name, data, &opts).await,
                        other => other,
                    }
                } else {
                    store.put(&name, data, &opts).await
                };
                (i, origin, name, fp, result)
            });
        }
        let Some(done) = running.join_next().await else { break };
        let (i, origin, name, fp, result) =
            done.map_err(|e| CliError::failed(format!("an import task stopped: {e}")))?;
        bar.set_message(name.to_string());
        bar.inc(1);
        let row = match result {
            Ok(o) => Ok((name, o.version, fp, if o.unchanged { "unchanged" } else { "imported" })),
            Err(e @ StoreError::Vault(crate::vault::VaultError::Unreachable { .. })) => {
                unreachable.get_or_insert(e.to_string());
                Err((Some(name), e.to_string()))
            }
            Err(e) => Err((Some(name), e.to_string())),
        };
        rows[i] = Some((origin, row));
        since_flush += 1;
        if since_flush >= INDEX_BATCH {
            batched.flush_index().await;
            since_flush = 0;
        }
    }
    batched.flush_index().await;
    if let Some(e) = unreachable {
        bar.finish_and_clear();
        return Err(CliError::failed(e));
    }
    let rows: Vec<_> = rows.into_iter().flatten().collect();
    bar.finish_and_clear();
    let failed = rows.iter().filter(|(_, r)| r.is_err()).count();
    let unchanged = rows.iter().filter(|(_, r)| matches!(r, Ok((_, _, _, "unchanged")))).count();
    let imported = rows.len() - failed - unchanged;
    match output {
        Output::Json => print_json(&json!({
            "imported": imported, "unchanged": unchanged, "failed": failed,
            "entries": rows.iter().map(|(origin, r)| match r {
                Ok((name, v, fp, what)) => json!({"entry": origin, "name": name, "version": v, "fingerprint": fp, "result": what}),
                Err((name, e)) => json!({"entry": origin, "name": name, "result": "failed", "error": e}),
            }).collect::<Vec<_>>(),
        })),
        Output::Table => {
            let mut t = table(&["ENTRY", "KEY", "RESULT", "VERSION", "FINGERPRINT"]);
            for (origin, r) in &rows {
                match r {
                    Ok((name, v, fp, what)) => {
                        t.add_row(vec![origin.clone(), name.to_string(), what.to_string(), format!("v{v}"), fp.clone()])
                    }
                    Err((name, e)) => t.add_row(vec![
                        origin.clone(),
                        name.as_ref().map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                        format!("failed: {e}"),
                        "-".into(),
                        "-".into(),
                    ]),
                };
            }
            print_table(&t);
            println!("\n{imported} imported, {unchanged} unchanged, {failed} failed");
        }
    }
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} of {} entries were not imported (see above)", rows.len())));
    }
    Ok(())
}

/// `{"name": "key"}` or `{"name": {"api_key": "key", "base_url": "…"}}`.
fn parse_json(text: &str) -> Result<Vec<Entry>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let Value::Object(map) = value else { return Err("the top level must be an object of name → key".into()) };
    Ok(map
        .into_iter()
        .map(|(name, v)| {
            let origin = format!("{name:?}");
            let data = match v {
                Value::String(key) => Ok(KeyData::new(Secret::new(key))),
                Value::Object(mut fields) => match fields.remove("api_key") {
                    Some(Value::String(key)) => {
                        Ok(KeyData { api_key: Secret::new(key), fields: string_fields(fields) })
                    }
                    Some(_) => Err("api_key is not a string".to_string()),
                    None => Err("no api_key field".to_string()),
                },
                _ => Err("value must be the key (a string) or an object with api_key".to_string()),
            };
            Entry { origin, name: KeyName::parse(&name), data }
        })
        .collect())
}

fn string_fields(fields: Map<String, Value>) -> Map<String, Value> {
    fields.into_iter().filter(|(k, _)| !crate::store::is_provenance_field(k)).collect()
}

/// `OPENAI_API_KEY=sk-…` lines (optionally `export`, quoted); `#` comments and blank lines
/// skipped. The name is lowercased, `_API_KEY` dropped and `_` turned into `-`
/// (`DEEPSEEK_API_KEY` → `deepseek`).
fn parse_env(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let origin = format!("line {}", i + 1);
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((var, value)) = line.split_once('=') else {
            out.push(Entry { origin, name: Err("not NAME=value".into()), data: Err("not NAME=value".into()) });
            continue;
        };
        let var = var.trim();
        let base = var.strip_suffix("_API_KEY").unwrap_or(var);
        let name =
            KeyName::parse(&base.to_ascii_lowercase().replace('_', "-")).map_err(|e| format!("variable {var}: {e}"));
        let value = unquote(value.trim());
        out.push(Entry { origin, name, data: Ok(KeyData::new(Secret::new(value))) });
    }
    out
}

fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_become_key_names() {
        let entries =
            parse_env("# keys\nOPENAI_API_KEY=sk-a\nexport DEEPSEEK_API_KEY='sk-b'\n\nGLM_KEY=\"x\"\nbad line\n");
        let names: Vec<String> =
            entries.iter().map(|e| e.name.as_ref().map(|n| n.to_string()).unwrap_or_else(|e| e.clone())).collect();
        assert_eq!(names[0], "openai");
        assert_eq!(names[1], "deepseek");
        assert_eq!(names[2], "glm-key");
        assert!(entries[3].name.is_err());
        assert_eq!(entries[1].data.as_ref().unwrap().api_key.expose(), "sk-b");
    }

    #[test]
    fn json_accepts_strings_and_objects_and_reports_bad_entries() {
        let entries =
            parse_json(r#"{"openai":"sk-a","deepseek":{"api_key":"sk-b","base_url":"https://x"},"bad":{"key":1}}"#)
                .unwrap();
        assert_eq!(entries.len(), 3);
        let bad = entries.iter().find(|e| e.origin == "\"bad\"").unwrap();
        assert!(bad.data.is_err());
        let ds = entries.iter().find(|e| e.origin == "\"deepseek\"").unwrap();
        assert_eq!(ds.data.as_ref().unwrap().fields["base_url"], "https://x");
    }
}
