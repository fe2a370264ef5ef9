//! `keysync rotate NAME [--force]` and `keysync rotate --due`.

use super::output::{print_table, table};
use super::{print_json, CliError, Output};
use crate::config::Config;
use crate::rotation::{Engine, Outcome, SystemClock};
use crate::store::KeyStore;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    // Many keys: index entries go out together every half second, not one PATCH per change.
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
    for n in &names {
        plans.push(cfg.rotation_plan(n).map_err(CliError::usage)?);
    }
    // Keys rotate independently (each step is CAS-guarded and the index is merge-PATCHed), and
    // one rotation is a dozen-odd sequential round trips: a few keys in flight at once keep
    // the server busy instead of waiting on latency (1,000 keys: minutes → seconds).
    let next = AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<Outcome, String>>>> =
        std::sync::Mutex::new(names.iter().map(|_| None).collect());
    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let (Some(n), Some(plan)) = (names.get(i), plans.get(i)) else { break };
            bar.set_message(n.clone());
            let result = match plan {
                Some(plan) => engine.step(plan, force, &reason).await.map_err(|e| e.to_string()),
                None => Err("no provider".to_string()),
            };
            results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
            bar.inc(1);
        }
    };
    let done = AtomicBool::new(false);
    let workers = async {
        // Eight workers: enough to hide latency, few enough not to swamp the server or a provider.
        tokio::join!(worker(), worker(), worker(), worker(), worker(), worker(), worker(), worker());
        done.store(true, Ordering::SeqCst);
    };
    // Flushes every 0.5 s, and notices within 50 ms that the workers are done (the final flush
    // follows), so the command does not linger.
    let flusher = async {
        let mut last = std::time::Instant::now();
        while !done.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if last.elapsed() >= std::time::Duration::from_millis(500) {
                store.flush_index().await;
                last = std::time::Instant::now();
            }
        }
    };
    tokio::join!(workers, flusher);
    store.flush_index().await;
    bar.finish_and_clear();
    let rows: Vec<(String, Result<Outcome, String>)> = names
        .iter()
        .cloned()
        .zip(results.into_inner().unwrap_or_else(|e| e.into_inner()))
        .map(|(n, r)| (n, r.unwrap_or_else(|| Err("not attempted".to_string()))))
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
