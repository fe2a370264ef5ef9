//! `keysync status NAME --consumers`: the fleet view of one key — every agent that reports
//! renders, when it last reported, what each of its sinks holds (current / previous / stale /
//! unknown, or failed and still holding one of those), and whether retirement of the
//! previous key is held and by whom. Uses the same rule as the rotation engine
//! ([`crate::rotation::holds`]).

use super::output::{age_since, print_table, table, time};
use super::{print_json, CliError, Output};
use crate::config::Config;
use crate::rotation::holds::{self, Consumer, Retirement};
use crate::secret::short_fingerprint;
use crate::store::{KeyName, KeyStore};
use serde_json::{json, Value};
use std::time::Duration;

pub async fn run(cfg: &Config, store: &KeyStore, name: &KeyName, output: Output) -> Result<(), CliError> {
    let record = store.require(name).await?;
    let acks = store.kv().acks().all().await?;
    let now = crate::clock::now();
    let ack_ttl = cfg.rotation.ack_ttl.get();
    let max_hold = cfg
        .keys
        .get(name.as_str())
        .and_then(|k| k.rotation.as_ref())
        .and_then(|p| p.max_hold)
        .map(|d| d.get())
        .unwrap_or(cfg.rotation.max_hold.get());
    let consumers = holds::consumers(&record, &acks, now, ack_ttl);
    let decision = holds::decide(&record, &consumers, now, max_hold);
    let s = &record.state;
    let fp = |v: Option<u64>| v.and_then(|v| s.fingerprints.get(&v)).cloned();
    match output {
        Output::Json => print_json(&json!({
            "name": name,
            "current": s.current.map(|v| json!({"version": v, "fingerprint": fp(Some(v))})),
            "previous": s.previous.map(|v| json!({"version": v, "fingerprint": fp(Some(v)), "grace_until": s.grace_until})),
            "ack_ttl": humantime::format_duration(ack_ttl).to_string(),
            "max_hold": humantime::format_duration(max_hold).to_string(),
            "retirement": serde_json::to_value(&decision).unwrap_or(Value::Null),
            "forced_retirement": s.forced_retirement,
            "consumers": consumers.iter().map(consumer_json).collect::<Vec<_>>(),
        })),
        Output::Table => {
            println!("{name}  retirement: {}", describe(&decision, max_hold));
            if let Some(note) = &s.forced_retirement {
                println!("  last forced retirement: {note}");
            }
            if consumers.is_empty() {
                println!(
                    "  no agent reports this key (agents report with [agent] report_renders = true; reports live under _acks/)"
                );
                return Ok(());
            }
            let mut t = table(&["AGENT", "REPORTED", "SINK", "STATE", "HOLDS", "NOTE"]);
            for c in &consumers {
                let reported = match c.reported_at {
                    Some(_) if !c.fresh => format!("{} ago (silent: older than ack_ttl)", age_since(c.reported_at)),
                    Some(_) => format!("{} ago", age_since(c.reported_at)),
                    None => "never".into(),
                };
                for (i, sink) in c.sinks.iter().enumerate() {
                    let holds = match (&sink.version, &sink.fingerprint) {
                        (_, None) => "nothing known".to_string(),
                        (Some(v), Some(f)) => format!("v{v} {} ({})", short_fingerprint(f), sink.holds.as_str()),
                        (None, Some(f)) => format!("{} ({})", short_fingerprint(f), sink.holds.as_str()),
                    };
                    let mut note = sink.error.clone().unwrap_or_default();
                    if c.holds_retirement && matches!(sink.holds, holds::Held::Previous | holds::Held::Unknown) {
                        note = if note.is_empty() {
                            "holds retirement".into()
                        } else {
                            format!("holds retirement; {note}")
                        };
                    }
                    let (agent, when) =
                        if i == 0 { (c.agent.clone(), reported.clone()) } else { (String::new(), String::new()) };
                    t.add_row(vec![agent, when, sink.sink.clone(), sink.state.to_string(), holds, note]);
                }
            }
            print_table(&t);
        }
    }
    Ok(())
}

fn consumer_json(c: &Consumer) -> Value {
    json!({
        "agent": c.agent,
        "reported_at": c.reported_at,
        "fresh": c.fresh,
        "state": c.state(),
        "holds_retirement": c.holds_retirement,
        "sinks": c.sinks.iter().map(|s| json!({
            "sink": s.sink,
            "state": s.state,
            "holds": s.holds.as_str(),
            "version": s.version,
            "fingerprint": s.fingerprint,
            "error": s.error,
        })).collect::<Vec<_>>(),
    })
}

fn describe(d: &Retirement, max_hold: Duration) -> String {
    match d {
        Retirement::Nothing => "nothing to retire (no previous key)".into(),
        Retirement::Waiting { grace_until } => format!(
            "waiting: not every reporting agent holds the current key; retired at grace end {} at the latest \
             (unless an agent still holds the previous key then)",
            time(Some(*grace_until))
        ),
        Retirement::Early => "every reporting agent holds the current key: retired early at the next check".into(),
        Retirement::Due => "grace is over and no agent holds the previous key: retired at the next check".into(),
        Retirement::Held { by, until } => format!(
            "HELD by {} (still holding the previous key or nothing known); forced at {} (max_hold {})",
            by.join(", "),
            time(Some(*until)),
            humantime::format_duration(max_hold)
        ),
        Retirement::Forced { by, .. } => format!(
            "FORCED at the next check: max_hold ({}) ran out while {} still held the previous key",
            humantime::format_duration(max_hold),
            by.join(", ")
        ),
    }
}
