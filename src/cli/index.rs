//! `keysync index status|migrate|drop-legacy`: look at the change index agents poll, convert
//! a legacy (format 1) index now rather than at the next write, and remove the legacy secret
//! once every agent reads the sharded format.

use super::output::{print_table, table};
use super::{print_json, CliError, Output};
use crate::store::{IndexFormat, KeyStore, INDEX_DIR, INDEX_NAME, SHARDS};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Format, entries, shards and the largest shard's size.
    Status {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Convert a legacy single-secret index to the sharded format now (writers also do it on
    /// their first change). Idempotent.
    Migrate,
    /// Delete the legacy index secret. Only once every agent runs a keysync that reads the
    /// sharded index: older agents would then see changes only at their full sync.
    DropLegacy {
        /// Confirm that every agent is upgraded.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(store: &KeyStore, command: IndexCommand) -> Result<(), CliError> {
    let index = store.kv().index();
    match command {
        IndexCommand::Status { output } => {
            let snapshot = index.read().await?;
            let largest = snapshot.shards.values().map(|(_, bytes)| *bytes).max().unwrap_or(0);
            let format = match snapshot.format {
                IndexFormat::Empty => "empty",
                IndexFormat::Legacy => "legacy",
                IndexFormat::Sharded => "sharded",
            };
            match output {
                Output::Json => print_json(&json!({
                    "format": snapshot.format,
                    "entries": snapshot.entries.len(),
                    "unreadable": snapshot.unreadable,
                    "shards": snapshot.shards.len(),
                    "largest_shard_bytes": largest,
                    "legacy_present": snapshot.legacy_present,
                })),
                Output::Table => {
                    let mut t = table(&["format", "entries", "shards", "largest shard", "legacy secret"]);
                    t.add_row(vec![
                        format.to_string(),
                        snapshot.entries.len().to_string(),
                        format!("{} of {SHARDS}", snapshot.shards.len()),
                        format!("{largest} bytes"),
                        if snapshot.legacy_present {
                            format!("{INDEX_NAME} (kept for older agents)")
                        } else {
                            "-".into()
                        },
                    ]);
                    print_table(&t);
                    if !snapshot.unreadable.is_empty() {
                        eprintln!(
                            "warning: {} entries are not keysync's and are ignored: {}",
                            snapshot.unreadable.len(),
                            snapshot.unreadable.join(", ")
                        );
                    }
                }
            }
            Ok(())
        }
        IndexCommand::Migrate => {
            let shards = index.migrate().await?;
            println!("the change index is sharded under {INDEX_DIR}/ ({shards} shards written by this conversion)");
            Ok(())
        }
        IndexCommand::DropLegacy { yes } => {
            if !yes {
                return Err(CliError::usage(format!(
                    "dropping {INDEX_NAME} leaves agents older than the sharded index without change notices \
                     (they fall back to their full sync); run again with --yes once every agent is upgraded"
                )));
            }
            if index.drop_legacy().await? {
                println!("deleted the legacy change index {INDEX_NAME}");
            } else {
                println!("there is no legacy change index {INDEX_NAME}; nothing to do");
            }
            Ok(())
        }
    }
}
