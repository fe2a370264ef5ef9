//! Rendering keys to files for the apps that use them (`OPENAI_API_KEY_FILE` and friends).
//!
//! No Vault code here: the sync loop hands a sink the current [`KeyMaterial`] and gets back a
//! [`RenderOutcome`] (`Written` → run hooks). Responsibilities, one module each:
//! - [`config`]: the serde sink types and their validation;
//! - [`material`]: what a key looks like to the renderer;
//! - [`format`](mod@format): bytes for raw, env, json and template formats (pure);
//! - [`atomic`]: safe single-file writes (atomic or in place);
//! - [`dir`]: directory sinks with a `..data` symlink swap;
//! - [`sink`]: runtimes that tie config, format and writing together;
//! - [`error`]: outcomes and errors (which never contain key material).

pub mod atomic;
pub mod config;
pub mod dir;
pub mod error;
pub mod format;
pub mod material;
pub mod sink;

pub use atomic::{resolve_owner, write_atomic, write_in_place, FileOwner};
pub use config::{is_shell_identifier, DirFileConfig, DirSinkConfig, OnMissing, SinkConfig, SinkFormat, WriteMode};
pub use error::{RenderError, RenderOutcome, WriteOutcome};
pub use material::{KeyMaterial, PreviousKey};
pub use sink::{render_content, DirSink, Sink};
