//! keysync keeps LLM-provider API keys in HashiCorp Vault / OpenBao KV v2, rotates them, and
//! renders them to files for the apps that use them.
//!
//! `main.rs` only parses arguments; everything else lives here so it can be tested without a
//! process.

pub mod agent;
pub mod cli;
pub mod clock;
pub mod config;
pub mod duration;
pub mod failpoint;
pub mod field;
pub mod logging;
pub mod provider;
pub mod render;
pub mod rotation;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod vault;
