//! Commands that manage keys by hand: put, get, list, status, audit, rollback,
//! disable/enable, delete/undelete, destroy. Keys are shown masked unless `--reveal`.

use super::output::{age_since, print_table, read_key_from_stdin, table, time};
use super::{print_json, CliError, Output};
use crate::secret::{fingerprint, short_fingerprint, Secret};
use crate::store::{
    is_provenance_field, KeyData, KeyName, KeyRecord, KeyStore, PutOptions, Role, StoreError, VersionRead,
    REASON_FIELD, WRITTEN_BY_FIELD,
};
use serde_json::{json, Map, Value};
use std::path::Path;

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => CliError { code: 3, message: e.to_string() },
            StoreError::Vault(v) => v.into(),
            other => CliError::failed(other.to_string()),
        }
    }
}

pub fn parse_name(text: &str) -> Result<KeyName, CliError> {
    KeyName::parse(text).map_err(CliError::usage)
}

/// `--field K=V` pairs.
pub fn parse_fields(pairs: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut fields = Map::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "--field {pair:?} must look like NAME=VALUE (e.g. base_url=https://api.deepseek.com)"
            ))
        })?;
        let k = k.trim();
        if k.is_empty() || k == "api_key" || is_provenance_field(k) {
            return Err(CliError::usage(format!(
                "--field {k:?}: field name must not be empty, api_key or a keysync_ field; the key itself comes from --file or stdin"
            )));
        }
        fields.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(fields)
}

/// The key text from a file or stdin, without its line ending.
pub fn read_key(file: Option<&Path>, name: &KeyName) -> Result<Secret, CliError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read the key from {} ({e})", path.display())))?,
        None => read_key_from_stdin(&format!("API key for {name} (input hidden)"))
            .map_err(|e| CliError::usage(format!("cannot read the key from stdin ({e})")))?,
    };
    let key = text.trim_end_matches(['\n', '\r']);
    if key.is_empty() {
        let from = file.map(|p| p.display().to_string()).unwrap_or_else(|| "stdin".into());
        return Err(CliError::usage(format!("no key given for {name}: {from} is empty")));
    }
    Ok(Secret::new(key))
}

pub async fn put(
    store: &KeyStore,
    name: &KeyName,
    key: Secret,
    fields: Map<String, Value>,
    promote: bool,
    reason: Option<String>,
    output: Output,
) -> Result<(), CliError> {
    let opts = PutOptions { promote, reason: reason.unwrap_or_else(|| "manual put".into()), keep_fields: true };
    let outcome = store.put(name, KeyData { api_key: key, fields }, &opts).await?;
    match output {
        Output::Json => print_json(&serde_json::to_value(&outcome).unwrap_or_default()),
        Output::Table => {
            let fp = short_fingerprint(&outcome.fingerprint);
            if outcome.unchanged {
                println!("{name}: unchanged — that key is already current (version {}, {fp})", outcome.version);
            } else if outcome.promoted {
                print!("{name}: version {} ({fp}) is now current", outcome.version);
                match outcome.previous {
                    Some(p) => println!("; version {p} stays valid as previous during the grace period"),
                    None => println!(),
                }
            } else {
                println!(
                    "{name}: version {} ({fp}) written as pending; it is not rendered until promoted",
                    outcome.version
                );
            }
        }
    }
    Ok(())
}

pub async fn get(
    store: &KeyStore,
    name: &KeyName,
    version: Option<u64>,
    reveal: bool,
    output: Output,
) -> Result<(), CliError> {
    let record = store.require(name).await?;
    let asked = version.is_some();
    let version = match version.or(record.state.current) {
        Some(v) => v,
        None => {
            return Err(CliError::failed(format!(
            "{name} has no current version (written outside keysync?); pass --version N (see `keysync audit {name}`)"
        )))
        }
    };
    if !record.meta.versions.contains_key(&version) {
        if !asked {
            // Not the user's input: the metadata points at a version Vault does not have.
            return Err(CliError::failed(format!(
                "the current version of {name} is {version}, but Vault has versions {} only: its custom_metadata \
                 is damaged; put a working key with `keysync put {name}` or fix `current` ({} kv metadata patch)",
                version_range(&record),
                crate::vault::cli_name()
            )));
        }
        return Err(CliError::usage(format!(
            "--version {version} is out of range for {name}: it has versions {}",
            version_range(&record)
        )));
    }
    let data = match store.read(name, version).await? {
        VersionRead::Live(d) => d,
        VersionRead::Deleted => {
            return Err(CliError::failed(format!(
                "version {version} of {name} is soft-deleted; `keysync undelete {name}` restores it"
            )))
        }
        VersionRead::Destroyed => {
            return Err(CliError::failed(format!(
                "version {version} of {name} is destroyed; only its fingerprint remains"
            )))
        }
        VersionRead::Missing => return Err(CliError::failed(format!("version {version} of {name} no longer exists"))),
    };
    let shown = if reveal { data.api_key.expose().to_string() } else { data.api_key.masked() };
    let role = record.role(version);
    let fields: Map<String, Value> =
        data.fields.iter().filter(|(k, _)| !is_provenance_field(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    match output {
        Output::Json => print_json(&json!({
            "name": name,
            "version": version,
            "role": role,
            "fingerprint": data.api_key.fingerprint(),
            "api_key": shown,
            "revealed": reveal,
            "fields": fields,
            "created_time": record.meta.versions.get(&version).and_then(|m| m.created_time),
        })),
        Output::Table => {
            if reveal {
                println!("{shown}");
            } else {
                println!("{name} version {version} ({})", role.as_str());
                println!("  api_key      {shown}   (use --reveal to print it)");
                println!("  fingerprint  {}", data.api_key.fingerprint());
                for (k, v) in &fields {
                    println!("  {k:<12} {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                }
            }
        }
    }
    Ok(())
}

fn version_range(record: &KeyRecord) -> String {
    match (record.meta.versions.keys().next(), record.meta.versions.keys().last()) {
        (Some(a), Some(b)) if a == b => format!("{a} only"),
        (Some(a), Some(b)) => format!("{a} to {b}"),
        _ => "none".into(),
    }
}

pub async fn list(store: &KeyStore, output: Output) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for name in store.list().await? {
        match store.record(&name).await {
            Ok(Some(r)) => rows.push(Ok(r)),
            Ok(None) => {}
            Err(e) => rows.push(Err((name, e.to_string()))),
        }
    }
    match output {
        Output::Json => {
            let items: Vec<Value> = rows
                .iter()
                .map(|r| match r {
                    Ok(r) => json!({
                        "name": r.name,
                        "current": r.state.current,
                        "fingerprint": r.state.current.and_then(|c| r.state.fingerprints.get(&c)),
                        "since": r.current_since(),
                        "disabled": r.state.disabled,
                        "pending": r.state.pending,
                    }),
                    Err((name, err)) => json!({ "name": name, "error": err }),
                })
                .collect();
            print_json(&Value::Array(items));
        }
        Output::Table => {
            if rows.is_empty() {
                println!(
                    "no keys under {} — add one with `keysync put NAME`",
                    store.kv().display_path(&dummy_name()).trim_end_matches("/x")
                );
                return Ok(());
            }
            let mut t = table(&["NAME", "CURRENT", "FINGERPRINT", "AGE", "NOTE"]);
            for r in &rows {
                match r {
                    Ok(r) => {
                        let fp = r
                            .state
                            .current
                            .and_then(|c| r.state.fingerprints.get(&c))
                            .map(|f| short_fingerprint(f).to_string());
                        let mut notes = Vec::new();
                        if r.state.disabled {
                            notes.push("disabled".to_string());
                        }
                        if let Some(p) = r.state.pending {
                            notes.push(format!("pending v{p}"));
                        }
                        if r.state.current.is_none() {
                            notes.push("no current version".into());
                        }
                        t.add_row(vec![
                            r.name.to_string(),
                            r.state.current.map(|v| format!("v{v}")).unwrap_or_else(|| "-".into()),
                            fp.unwrap_or_else(|| "-".into()),
                            age_since(r.current_since()),
                            notes.join(", "),
                        ]);
                    }
                    Err((name, err)) => {
                        t.add_row(vec![name.to_string(), "?".into(), "?".into(), "?".into(), format!("error: {err}")]);
                    }
                }
            }
            print_table(&t);
        }
    }
    Ok(())
}

fn dummy_name() -> KeyName {
    KeyName::parse("x").unwrap_or_else(|_| unreachable!("'x' is a valid key name"))
}

fn status_json(r: &KeyRecord) -> Value {
    let fp = |v: Option<u64>| v.and_then(|v| r.state.fingerprints.get(&v)).cloned();
    json!({
        "name": r.name,
        "current": r.state.current.map(|v| json!({"version": v, "fingerprint": fp(Some(v))})),
        "previous": r.state.previous.map(|v| json!({"version": v, "fingerprint": fp(Some(v)), "grace_until": r.state.grace_until})),
        "pending": r.state.pending.map(|v| json!({"version": v, "fingerprint": fp(Some(v))})),
        "since": r.current_since(),
        "rotated_at": r.state.rotated_at,
        "rotated_by": r.state.rotated_by,
        "reason": r.state.reason,
        "disabled": r.state.disabled,
        "failed_versions": r.state.failed,
        "external_versions": r.external_versions(),
        "latest_version": r.meta.current_version,
        "interrupted_rotation": r.state.intent,
        "forced_retirement": r.state.forced_retirement,
        "deleted_versions": r.meta.versions.iter().filter(|(_, m)| m.deletion_time.is_some() && !m.destroyed).map(|(v, _)| *v).collect::<Vec<_>>(),
        "destroyed_versions": r.meta.versions.iter().filter(|(_, m)| m.destroyed).map(|(v, _)| *v).collect::<Vec<_>>(),
        "managed": r.state.managed,
    })
}

pub async fn status(store: &KeyStore, name: Option<&KeyName>, output: Output) -> Result<(), CliError> {
    let records = match name {
        Some(n) => vec![store.require(n).await?],
        None => {
            let mut all = Vec::new();
            for n in store.list().await? {
                if let Some(r) = store.record(&n).await? {
                    all.push(r);
                }
            }
            all
        }
    };
    match output {
        Output::Json => print_json(&Value::Array(records.iter().map(status_json).collect())),
        Output::Table => {
            if records.is_empty() {
                println!("no keys yet — add one with `keysync put NAME`");
            }
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_status(r);
            }
        }
    }
    Ok(())
}

fn print_status(r: &KeyRecord) {
    let s = &r.state;
    let fp = |v: u64| s.fingerprints.get(&v).map(|f| short_fingerprint(f).to_string()).unwrap_or_else(|| "-".into());
    let mut flags = Vec::new();
    if s.disabled {
        flags.push("DISABLED (not rendered)".to_string());
    }
    if !s.managed {
        flags.push("not managed by keysync yet".to_string());
    }
    println!("{}{}", r.name, if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) });
    let gone = |v: u64| match r.meta.versions.get(&v) {
        Some(m) if m.destroyed => "  [DESTROYED]",
        Some(m) if m.deletion_time.is_some() => "  [SOFT-DELETED: keysync undelete restores it]",
        None => "  [MISSING]",
        _ => "",
    };
    match s.current {
        Some(v) => println!(
            "  current    v{v}  {}  since {} ({} ago){}",
            fp(v),
            time(r.current_since()),
            age_since(r.current_since()),
            gone(v)
        ),
        None => println!("  current    -  (no current version: consumers get nothing new)"),
    }
    if let Some(v) = s.previous {
        let grace = match s.grace_until {
            Some(g) if g > crate::clock::now() => format!("valid until {}", time(Some(g))),
            Some(g) => format!("grace ended {}", time(Some(g))),
            None => "no grace recorded".into(),
        };
        println!("  previous   v{v}  {}  {grace}{}", fp(v), gone(v));
    }
    if let Some(v) = s.pending {
        println!("  pending    v{v}  {}  not yet validated/promoted", fp(v));
    }
    if !s.failed.is_empty() {
        let list: Vec<String> = s.failed.iter().map(|v| format!("v{v}")).collect();
        println!("  failed     {}", list.join(", "));
    }
    if let Some(note) = &s.forced_retirement {
        println!("  forced retirement: {note} (see `keysync status {} --consumers`)", r.name);
    }
    if let Some(intent) = &s.intent {
        println!("  interrupted rotation by {intent}: a key may have been minted at the provider and not stored; check for an unused key");
    }
    let external = r.external_versions();
    if !external.is_empty() {
        let list: Vec<String> = external.iter().map(|v| format!("v{v}")).collect();
        println!(
            "  external   {}  written outside keysync (e.g. {} kv put); not used until put/adopted",
            list.join(", "),
            crate::vault::cli_name()
        );
    }
    if let Some(by) = &s.rotated_by {
        println!(
            "  last change {} by {by}{}",
            time(s.rotated_at),
            s.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
    }
}

pub async fn audit(store: &KeyStore, name: &KeyName, output: Output) -> Result<(), CliError> {
    let record = store.require(name).await?;
    let mut rows = Vec::new();
    for (version, meta) in record.meta.versions.iter().rev() {
        let recorded = record.state.fingerprints.get(version).cloned();
        let (actual, by, reason) = match store.read(name, *version).await? {
            VersionRead::Live(d) => (
                Some(fingerprint(d.api_key.expose().as_bytes())),
                d.fields.get(WRITTEN_BY_FIELD).and_then(Value::as_str).map(str::to_string),
                d.fields.get(REASON_FIELD).and_then(Value::as_str).map(str::to_string),
            ),
            _ => (None, None, None),
        };
        let mut role = record.role(*version);
        // A version with keysync's provenance in its data is ours even if a crash kept its
        // fingerprint out of the metadata.
        if role == Role::External && by.is_some() {
            role = Role::Retired;
        }
        let fingerprint = recorded.clone().or(actual.clone());
        let mismatch = matches!((&recorded, &actual), (Some(r), Some(a)) if r != a);
        rows.push(json!({
            "version": version,
            "created_time": meta.created_time,
            "fingerprint": fingerprint,
            "fingerprint_mismatch": mismatch,
            "role": role,
            "rotated_by": by,
            "reason": reason,
            "deleted": meta.deletion_time.is_some() && !meta.destroyed,
            "deletion_time": meta.deletion_time,
            "destroyed": meta.destroyed,
        }));
    }
    match output {
        Output::Json => print_json(&json!({ "name": name, "path": store.kv().display_path(name), "versions": rows })),
        Output::Table => {
            println!("{} ({})", name, store.kv().display_path(name));
            let mut t = table(&["VERSION", "CREATED", "FINGERPRINT", "ROLE", "BY", "REASON", "STATE"]);
            for r in &rows {
                let state = if r["destroyed"] == true {
                    "destroyed"
                } else if r["deleted"] == true {
                    "deleted"
                } else if r["fingerprint_mismatch"] == true {
                    "FINGERPRINT MISMATCH"
                } else {
                    "live"
                };
                let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                t.add_row(vec![
                    format!("v{}", r["version"]),
                    r["created_time"]
                        .as_str()
                        .map(|c| c.get(..19).unwrap_or(c).replace('T', " "))
                        .unwrap_or_else(|| "-".into()),
                    r["fingerprint"].as_str().map(|f| short_fingerprint(f).to_string()).unwrap_or_else(|| "-".into()),
                    s("role"),
                    s("rotated_by"),
                    s("reason"),
                    state.into(),
                ]);
            }
            print_table(&t);
        }
    }
    Ok(())
}

pub async fn rollback(
    store: &KeyStore,
    name: &KeyName,
    reason: Option<String>,
    output: Output,
) -> Result<(), CliError> {
    let state = store.rollback(name, reason.as_deref().unwrap_or("rollback")).await?;
    match output {
        Output::Json => print_json(
            &json!({"name": name, "current": state.current, "previous": state.previous, "grace_until": state.grace_until}),
        ),
        Output::Table => println!(
            "{name}: rolled back — v{} is current again; v{} is previous until {}",
            state.current.unwrap_or(0),
            state.previous.unwrap_or(0),
            time(state.grace_until)
        ),
    }
    Ok(())
}

pub async fn set_disabled(store: &KeyStore, name: &KeyName, disabled: bool) -> Result<(), CliError> {
    store.set_disabled(name, disabled).await?;
    if disabled {
        println!("{name}: disabled — agents stop rendering it (files keep the last good key)");
    } else {
        println!("{name}: enabled");
    }
    Ok(())
}

pub async fn delete(store: &KeyStore, name: &KeyName) -> Result<(), CliError> {
    let versions = store.delete(name).await?;
    println!("{name}: soft-deleted {} version(s); `keysync undelete {name}` restores them", versions.len());
    Ok(())
}

pub async fn undelete(store: &KeyStore, name: &KeyName) -> Result<(), CliError> {
    let versions = store.undelete(name).await?;
    println!("{name}: restored {} version(s)", versions.len());
    Ok(())
}

/// `destroy` without `--yes`: refused before anything connects to Vault.
pub fn destroy_refused(name: &KeyName, version: u64) -> Result<(), CliError> {
    Err(CliError::usage(format!(
        "destroying version {version} of {name} is permanent; add --yes to confirm (its fingerprint stays for audit)"
    )))
}

pub async fn destroy(store: &KeyStore, name: &KeyName, version: u64, yes: bool) -> Result<(), CliError> {
    if !yes {
        return destroy_refused(name, version);
    }
    store.destroy(name, version).await?;
    println!("{name}: version {version} destroyed (fingerprint kept for audit)");
    Ok(())
}

/// A key put by hand for a key with `[keys.NAME.validation]` is checked with the provider
/// before it becomes current: a key the provider refuses must never reach consumers.
pub async fn validate_before_promote(
    name: &KeyName,
    key: &Secret,
    validation: &crate::provider::Validation,
) -> Result<(), CliError> {
    match validation.validate(key).await {
        crate::provider::Verdict::Valid => Ok(()),
        crate::provider::Verdict::Invalid(why) => Err(CliError::failed(format!(
            "not stored: the provider refused the key for {name} ({why}); check the key, or store it unpromoted with --no-promote"
        ))),
        crate::provider::Verdict::Undecided(why) => Err(CliError::failed(format!(
            "not stored: could not validate the key for {name} ({why}); try again, or store it unpromoted with --no-promote"
        ))),
    }
}
