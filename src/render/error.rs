//! Outcomes and errors of rendering. Every error names the sink path and says how to fix the
//! problem; none ever carries key material (messages that might are scrubbed, see
//! `redact`).

use std::io;
use std::path::{Path, PathBuf};

/// What a low-level write did: the sync loop runs change hooks only on `Written`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// New content (or new mode/owner) is in place.
    Written,
    /// The file already had these bytes, mode and owner: nothing was touched, mtime included.
    Unchanged,
}

/// What rendering a sink did, for the sync loop to log and decide on hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderOutcome {
    /// Something on disk changed.
    Written,
    /// Everything already matched; nothing was touched.
    Unchanged,
    /// The key is missing and `on_missing = "remove"`: the file(s) were deleted.
    Removed,
    /// The key is missing and `on_missing = "keep"`: the last good file stays; warn about it.
    Kept,
}

impl From<WriteOutcome> for RenderOutcome {
    fn from(w: WriteOutcome) -> Self {
        match w {
            WriteOutcome::Written => RenderOutcome::Written,
            WriteOutcome::Unchanged => RenderOutcome::Unchanged,
        }
    }
}

/// Why a sink could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("sink {path}: invalid configuration: {message}")]
    Config { path: PathBuf, message: String },

    #[error("sink {path}: template error{}: {message}", line.map(|l| format!(" at template line {l}")).unwrap_or_default())]
    Template { path: PathBuf, line: Option<usize>, message: String },

    #[error("sink {path}: key {key:?}: {message}")]
    Value { path: PathBuf, key: String, message: String },

    #[error("sink {path}: key {key:?} was not provided; add it to the sync set or remove it from `keys`")]
    MissingKey { path: PathBuf, key: String },

    #[error(
        "sink {path}: is a symbolic link; keysync refuses to write through links (someone may have \
         planted it): remove the link or point `path` at the real file"
    )]
    Symlink { path: PathBuf },

    #[error("sink {path}: exists but is not a regular file; remove it or choose another path")]
    NotRegularFile { path: PathBuf },

    #[error(
        "sink {path}: directory {} is writable by others without the sticky bit (mode {mode:04o}), \
         so anyone could replace the key file; run `chmod o-w {}` or choose another directory",
        dir.display(), dir.display()
    )]
    UnsafeDirectory { path: PathBuf, dir: PathBuf, mode: u32 },

    #[error(
        "sink {path}: directory {} does not exist; create it or set `create_dirs = true`",
        dir.display()
    )]
    MissingDirectory { path: PathBuf, dir: PathBuf },

    #[error("sink {path}: {message}")]
    Owner { path: PathBuf, message: String },

    #[error("sink {path}: cannot {action}: {source}{}", io_hint(source))]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What to do about the write errors an operator can fix outside keysync. The old file is
/// kept in every case and the sink is rendered again on the next poll.
fn io_hint(e: &io::Error) -> &'static str {
    use nix::libc;
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            "; free space (or quota) on that filesystem: the old file is kept and the sink is retried every poll"
        }
        Some(libc::EFBIG) => {
            "; the file size limit (ulimit -f / LimitFSIZE) is below the file's size: raise it; the old file is kept and the sink is retried every poll"
        }
        Some(libc::EROFS) => "; the filesystem is mounted read-only: point the sink at a writable one",
        _ => "",
    }
}

impl RenderError {
    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        RenderError::Io { path: path.to_path_buf(), action, source }
    }

    /// The sink path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            RenderError::Config { path, .. }
            | RenderError::Template { path, .. }
            | RenderError::Value { path, .. }
            | RenderError::MissingKey { path, .. }
            | RenderError::Symlink { path }
            | RenderError::NotRegularFile { path }
            | RenderError::UnsafeDirectory { path, .. }
            | RenderError::MissingDirectory { path, .. }
            | RenderError::Owner { path, .. }
            | RenderError::Io { path, .. } => path,
        }
    }
}

/// Scrubs `message` of key material: an exact occurrence of a secret is replaced by
/// `<redacted>`, and if any 8-character window of a secret still appears (a library quoting
/// part of a value), the whole message is withheld. Used on text that comes from code we do not
/// control (template engine errors).
pub(crate) fn redact<'a>(message: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let secrets: Vec<&str> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    let mut out = message.to_string();
    for s in &secrets {
        out = out.replace(s, "<redacted>");
    }
    for s in &secrets {
        let chars: Vec<char> = s.chars().collect();
        if chars.len() < 8 {
            continue;
        }
        for window in chars.windows(8) {
            let piece: String = window.iter().collect();
            if out.contains(&piece) {
                return "(details withheld because they contained part of a key)".into();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_replaces_whole_secrets_and_withholds_partial_ones() {
        let s = "sk-test-SECRETSECRETSECRET";
        assert_eq!(redact(&format!("bad value {s:?}"), [s]), "bad value \"<redacted>\"");
        let partial = redact("cannot parse 'SECRETSECRE…'", [s]);
        assert!(!partial.contains("SECRETSECRE"), "{partial}");
        assert_eq!(redact("no secrets here", [s]), "no secrets here");
    }

    #[test]
    fn a_full_disk_error_says_what_to_do() {
        let e = RenderError::io(Path::new("/run/k/a"), "write the temporary file", io::Error::from_raw_os_error(28));
        let text = e.to_string();
        assert!(text.contains("/run/k/a") && text.contains("free space") && text.contains("retried"), "{text}");
    }

    #[test]
    fn errors_name_the_sink_path_and_a_fix() {
        let e = RenderError::MissingDirectory { path: "/run/k/a".into(), dir: "/run/k".into() };
        let text = e.to_string();
        assert!(text.contains("/run/k/a") && text.contains("create_dirs"), "{text}");
        let e = RenderError::UnsafeDirectory { path: "/d/a".into(), dir: "/d".into(), mode: 0o777 };
        assert!(e.to_string().contains("chmod o-w /d"), "{e}");
    }
}
