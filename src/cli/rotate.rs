//! `keysync rotate NAME [--force]` and `keysync rotate --due`.

use super::output::{print_table, table};
use super::{print_json, CliError, Output};
use crate::config::Config;
use crate::rotation::{rotate_due, DueOptions, Engine, Outcome, SystemClock};
use crate::store::KeyStore;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;

/// Keys rotated at once: enough to hide latency (one rotation is a dozen-odd sequential round
/// trips), few enough not to swamp the server or a provider (see [`rotate_due`]).
const CONCURRENCY: usize = 8;

pub async fn run(
    cfg: &Config,
    store: &KeyStore,
    name: Option<&str>,
    due: bool,
    force: bool,
    reason: Option<String>,
    output: Output,
) -> Result<(), CliError> {
    let names: Vec<String> = match (name, due) {
        (Some(n), false) => {
            super::keys::parse_name(n)?;
            if cfg.rotation_plan(n).map_err(CliError::usage)?.is_none() {
                return Err(CliError::usage(format!(
                    "key {n} has no [keys.{n}.provider] in the config, so keysync cannot mint a new key for it; add one (type = \"generate\" or \"command\") or put a new key with `keysync put {n}`"
                )));
            }
            vec![n.to_string()]
        }
        (None, true) => cfg.keys.iter().filter(|(_, k)| k.provider.is_some()).map(|(n, _)| n.clone()).collect(),
        _ => return Err(CliError::usage("give a key name, or --due to rotate every key that is due")),
    };
    let reason = reason.unwrap_or_else(|| if force { "forced rotation".into() } else { "scheduled rotation".into() });
    let clock = SystemClock;
    // Many keys: index entries go out together every half second (`rotate_due` flushes
    // them), not one PATCH per change.
    let batched = store.clone().batching_index();
    let store = if names.len() > 1 { &batched } else { store };
    let memory = crate::rotation::Memory::default();
    let engine = Engine::new(store, &clock, None, &memory);
    let bar = if std::io::stderr().is_terminal() && output == Output::Table && names.len() > 1 {
        let b = ProgressBar::new(names.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let mut plans = Vec::with_capacity(names.len());
    let mut results: BTreeMap<String, Result<Outcome, String>> = BTreeMap::new();
    for n in &names {
        match cfg.rotation_plan(n).map_err(CliError::usage)? {
            Some(plan) => plans.push(plan),
            None => {
                results.insert(n.clone(), Err("no provider".to_string()));
            }
        }
    }
    let opts = DueOptions { concurrency: CONCURRENCY, force, reason: &reason, stop: None };
    rotate_due(&engine, plans, opts, |name, result| {
        bar.set_message(name.to_string());
        bar.inc(1);
        results.insert(name.to_string(), result.map_err(|e| e.to_string()));
    })
    .await;
    bar.finish_and_clear();
    let rows: Vec<(String, Result<Outcome, String>)> = names
        .iter()
        .map(|n| (n.clone(), results.remove(n).unwrap_or_else(|| Err("not attempted".to_string()))))
        .collect();
    let failed = rows.iter().filter(|(_, r)| matches!(r, Err(_) | Ok(Outcome::Failed { .. }))).count();
    match output {
        Output::Json => print_json(&serde_json::Value::Array(
            rows.iter()
                .map(|(n, r)| match r {
                    Ok(o) => serde_json::json!({"name": n, "outcome": o}),
                    Err(e) => serde_json::json!({"name": n, "outcome": {"result": "error", "error": e}}),
                })
                .collect(),
        )),
        Output::Table => {
            let mut t = table(&["KEY", "RESULT"]);
            for (n, r) in &rows {
                let text = match r {
                    Ok(Outcome::NotDue { next }) => format!("not due (next {})", next.format("%Y-%m-%d %H:%M:%SZ")),
                    Ok(Outcome::Overdue { since }) => format!(
                        "OVERDUE since {} — managed by hand: keysync put {n}",
                        since.format("%Y-%m-%d %H:%M:%SZ")
                    ),
                    Ok(Outcome::Rotated { version, previous }) => match previous {
                        Some(p) => format!("rotated: v{version} is current, v{p} stays valid during grace"),
                        None => format!("rotated: v{version} is current"),
                    },
                    Ok(Outcome::Pending { version, why }) => {
                        format!("v{version} pending: validation undecided ({why}); retried next run")
                    }
                    Ok(Outcome::Failed { version, why }) => {
                        format!("FAILED: v{version} did not validate ({why}); current key kept")
                    }
                    Ok(Outcome::LostRace) => "another agent rotated it first".into(),
                    Err(e) => format!("error: {e}"),
                };
                t.add_row(vec![n.clone(), text]);
            }
            print_table(&t);
            if names.len() > 1 {
                println!("\n{} keys checked, {failed} failed", names.len());
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} rotation(s) failed (see above)")));
    }
    Ok(())
}
