//! `keysync verify FILE…`: do the files on disk hold what Vault says is current?
//!
//! A file may be raw (the key alone), env (`NAME=value` lines) or JSON (`api_key`); every
//! candidate value is fingerprinted and compared with the keys' current and previous
//! fingerprints. Only fingerprints are compared and printed, never the values.

use super::keys::parse_name;
use super::output::{print_table, table};
use super::{print_json, CliError, Output};
use crate::secret::{fingerprint, short_fingerprint};
use crate::store::{KeyRecord, KeyStore};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The verdict for one file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Holds the current key (or, for a `.previous` file, the previous key in grace).
    Ok,
    /// Holds an older version of a key: the consumer has not switched.
    Stale,
    /// Holds no key keysync knows.
    Unknown,
    Unreadable,
}

pub async fn run(store: &KeyStore, files: &[PathBuf], key: Option<&str>, output: Output) -> Result<(), CliError> {
    let names = match key {
        Some(k) => vec![parse_name(k)?],
        None => store.list().await?,
    };
    let mut records = Vec::new();
    for n in &names {
        records.push(store.require(n).await?);
    }
    let mut results = Vec::new();
    for file in files {
        results.push(check_file(file, &records));
    }
    let drift = results.iter().any(|r| r.verdict != Verdict::Ok);
    match output {
        Output::Json => print_json(&Value::Array(
            results
                .iter()
                .map(|r| {
                    json!({"file": r.file.display().to_string(), "status": r.verdict, "key": r.key, "version": r.version,
                           "role": r.role, "fingerprint": r.fingerprint, "detail": r.detail})
                })
                .collect(),
        )),
        Output::Table => {
            let mut t = table(&["FILE", "STATUS", "KEY", "VERSION", "FINGERPRINT", "DETAIL"]);
            for r in &results {
                t.add_row(vec![
                    r.file.display().to_string(),
                    format!("{:?}", r.verdict).to_lowercase(),
                    r.key.clone().unwrap_or_else(|| "-".into()),
                    r.version.map(|v| format!("v{v}")).unwrap_or_else(|| "-".into()),
                    r.fingerprint.as_deref().map(|f| short_fingerprint(f).to_string()).unwrap_or_else(|| "-".into()),
                    r.detail.clone(),
                ]);
            }
            print_table(&t);
        }
    }
    if drift {
        let bad: Vec<String> =
            results.iter().filter(|r| r.verdict != Verdict::Ok).map(|r| r.file.display().to_string()).collect();
        return Err(CliError::failed(format!("drift: {} do(es) not hold the current key", bad.join(", "))));
    }
    Ok(())
}

#[derive(Debug)]
struct FileCheck {
    file: PathBuf,
    verdict: Verdict,
    key: Option<String>,
    version: Option<u64>,
    role: Option<String>,
    fingerprint: Option<String>,
    detail: String,
}

fn check_file(file: &Path, records: &[KeyRecord]) -> FileCheck {
    let mut result = FileCheck {
        file: file.to_path_buf(),
        verdict: Verdict::Unknown,
        key: None,
        version: None,
        role: None,
        fingerprint: None,
        detail: String::new(),
    };
    let text = match std::fs::read(file) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).to_string(),
        Err(e) => {
            result.verdict = Verdict::Unreadable;
            result.detail = e.to_string();
            return result;
        }
    };
    let is_previous_file = file.extension().is_some_and(|e| e == "previous");
    let fps: Vec<String> = candidates(&text).iter().map(|c| fingerprint(c.as_bytes())).collect();
    let mut stale = None;
    for r in records {
        for fp in &fps {
            let version = r.state.fingerprints.iter().find(|(_, f)| *f == fp).map(|(v, _)| *v);
            let Some(version) = version else { continue };
            let role = r.role(version);
            let fine = if is_previous_file {
                r.state.previous == Some(version) && r.state.in_grace(crate::clock::now())
            } else {
                r.state.current == Some(version)
            };
            let found = (r.name.to_string(), version, role.as_str().to_string(), fp.clone());
            if fine {
                result.verdict = Verdict::Ok;
                (result.key, result.version, result.role, result.fingerprint) =
                    (Some(found.0), Some(found.1), Some(found.2), Some(found.3));
                result.detail = format!("{} key", role.as_str());
                return result;
            }
            stale.get_or_insert(found);
        }
    }
    if let Some((key, version, role, fp)) = stale {
        result.verdict = Verdict::Stale;
        result.detail = format!("holds {role} v{version}; current is v{}", current_of(records, &key).unwrap_or(0));
        (result.key, result.version, result.role, result.fingerprint) =
            (Some(key), Some(version), Some(role), Some(fp));
    } else {
        result.detail = "holds no key known to Vault".into();
    }
    result
}

fn current_of(records: &[KeyRecord], key: &str) -> Option<u64> {
    records.iter().find(|r| r.name.as_str() == key).and_then(|r| r.state.current)
}

/// Values a key file may hold: the whole text (raw), `NAME=value` values (env), `api_key`
/// and `previous.api_key` (JSON).
fn candidates(text: &str) -> Vec<String> {
    let mut out = vec![text.trim_end_matches(['\n', '\r']).to_string(), text.trim().to_string()];
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        for ptr in ["/api_key", "/previous/api_key"] {
            if let Some(s) = v.pointer(ptr).and_then(Value::as_str) {
                out.push(s.to_string());
            }
        }
    }
    for line in text.lines() {
        let line = line.trim().trim_start_matches("export ");
        if let Some((_, value)) = line.split_once('=') {
            out.push(unquote(value.trim()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Undoes env-file quoting: `'…'` with `'\''` escapes, or `"…"` with backslash escapes.
fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        return v[1..v.len() - 1].replace("'\\''", "'");
    }
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let mut out = String::new();
        let mut chars = v[1..v.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_raw_env_and_json() {
        assert!(candidates("sk-abc\n").contains(&"sk-abc".to_string()));
        assert!(candidates("OPENAI_API_KEY='sk-a'\\''b'\n").contains(&"sk-a'b".to_string()));
        assert!(candidates("export K=\"sk-\\\"x\"\n").contains(&"sk-\"x".to_string()));
        assert!(candidates("{\"api_key\":\"sk-j\",\"previous\":{\"api_key\":\"sk-p\"}}").contains(&"sk-p".to_string()));
    }
}
