//! Directory sinks, the kubelet `AtomicWriter` way: every version of the files lives in its own
//! hidden directory `..<timestamp>.<random>`; a `..data` symlink points at the current one and
//! is replaced with a single rename; the names apps open are symlinks `name -> ..data/name`. A
//! reader therefore sees all files of one version, never a mix across a rotation.

use super::atomic::{check_directory, create_exclusive, fchown, same_content, sync_dir, FileOwner};
use super::error::{RenderError, WriteOutcome};
use nix::libc;
use nix::unistd::{Gid, Uid};
use rand::Rng;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The link that points at the current version directory.
pub const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";

/// Writes `files` (name → bytes) into `dir` so they all change at once. Unchanged content,
/// modes and owners → nothing is touched. Names must be plain file names (validated in
/// config). A regular file or directory already at one of the names is refused rather than
/// replaced, since it is not keysync's. Old version directories are removed after the swap;
/// files dropped from `files` lose their link.
pub fn write_dir(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    mode: u32,
    owner: &FileOwner,
) -> Result<WriteOutcome, RenderError> {
    check_directory(dir, dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        check_directory(dir, parent)?;
    }
    let current = current_version(dir)?;
    if let Some(cur) = &current {
        if version_matches(dir, cur, files, mode, owner)? {
            return Ok(WriteOutcome::Unchanged);
        }
    }
    for name in files.keys() {
        check_user_link(dir, name)?;
    }

    let version = new_version_name();
    let version_path = dir.join(&version);
    let dir_mode = mode | ((mode & 0o444) >> 2);
    fs::DirBuilder::new().create(&version_path).map_err(|e| RenderError::io(dir, "create a version directory", e))?;
    let guard = VersionGuard(Some(version_path.clone()));
    fs::set_permissions(&version_path, fs::Permissions::from_mode(dir_mode))
        .map_err(|e| RenderError::io(dir, "set the version directory's mode", e))?;
    if owner.uid.is_some() || owner.gid.is_some() {
        nix::unistd::chown(&version_path, owner.uid.map(Uid::from_raw), owner.gid.map(Gid::from_raw))
            .map_err(|e| RenderError::io(dir, "chown the version directory", io::Error::from(e)))?;
    }
    for (name, bytes) in files {
        let path = version_path.join(name);
        let mut f = create_exclusive(&path, mode)
            .map_err(|e| RenderError::io(dir, "create a file in the version directory", e))?;
        fchown(dir, &f, owner)?;
        f.write_all(bytes).map_err(|e| RenderError::io(dir, "write a file in the version directory", e))?;
        f.sync_all().map_err(|e| RenderError::io(dir, "fsync a file in the version directory", e))?;
    }
    sync_dir(dir, &version_path)?;

    let tmp_link = dir.join(DATA_TMP_LINK);
    match fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(RenderError::io(dir, "remove a stale ..data_tmp link", e)),
    }
    symlink(&version, &tmp_link).map_err(|e| RenderError::io(dir, "create the ..data_tmp link", e))?;
    if let Err(e) = fs::rename(&tmp_link, dir.join(DATA_LINK)) {
        let _ = fs::remove_file(&tmp_link);
        return Err(RenderError::io(dir, "swap the ..data link", e));
    }
    guard.disarm();
    sync_dir(dir, dir)?;

    for name in files.keys() {
        ensure_user_link(dir, name)?;
    }
    if let Some(old) = &current {
        for name in version_files(dir, old)? {
            if !files.contains_key(&name) && is_our_link(dir, &name) {
                fs::remove_file(dir.join(&name))
                    .map_err(|e| RenderError::io(dir, "remove a dropped file's link", e))?;
            }
        }
    }
    remove_old_versions(dir, &version)?;
    sync_dir(dir, dir)?;
    Ok(WriteOutcome::Written)
}

/// Removes what [`write_dir`] made (user links, `..data`, version directories), for
/// `on_missing = "remove"`. Other files in the directory are left alone. Returns whether
/// anything was removed.
pub fn remove_dir_contents(dir: &Path) -> Result<bool, RenderError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RenderError::io(dir, "inspect the directory", e)),
        Ok(_) => {}
    }
    let current = match current_version(dir) {
        Ok(c) => c,
        Err(RenderError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut removed = false;
    if let Some(cur) = &current {
        for name in version_files(dir, cur)? {
            if is_our_link(dir, &name) {
                fs::remove_file(dir.join(&name)).map_err(|e| RenderError::io(dir, "remove a file link", e))?;
            }
        }
        fs::remove_file(dir.join(DATA_LINK)).map_err(|e| RenderError::io(dir, "remove the ..data link", e))?;
        removed = true;
    }
    removed |= remove_old_versions(dir, "")?;
    if removed {
        sync_dir(dir, dir)?;
    }
    Ok(removed)
}

/// The version directory `..data` points at, if any.
fn current_version(dir: &Path) -> Result<Option<String>, RenderError> {
    let link = dir.join(DATA_LINK);
    match fs::read_link(&link) {
        Ok(target) => {
            let name = target.to_str().filter(|n| is_version_name(n)).map(str::to_string);
            match name {
                Some(n) => Ok(Some(n)),
                None => Err(RenderError::Config {
                    path: dir.to_path_buf(),
                    message: format!(
                        "{} points at {}, which keysync did not create; remove it",
                        link.display(),
                        target.display()
                    ),
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(RenderError::Config {
            path: dir.to_path_buf(),
            message: format!("{} exists but is not a symlink; remove it", link.display()),
        }),
        Err(e) => Err(RenderError::io(dir, "read the ..data link", e)),
    }
}

fn version_files(dir: &Path, version: &str) -> Result<Vec<String>, RenderError> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(dir.join(version)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(RenderError::io(dir, "list the current version directory", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| RenderError::io(dir, "list the current version directory", e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The current version holds exactly `files`, with the right mode and owner, and every user
/// link is in place.
fn version_matches(
    dir: &Path,
    version: &str,
    files: &BTreeMap<String, Vec<u8>>,
    mode: u32,
    owner: &FileOwner,
) -> Result<bool, RenderError> {
    let present = version_files(dir, version)?;
    if present.len() != files.len() || !present.iter().all(|n| files.contains_key(n)) {
        return Ok(false);
    }
    for (name, bytes) in files {
        let path = dir.join(version).join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => return Ok(false),
        };
        let owner_ok = owner.uid.is_none_or(|u| u == meta.uid()) && owner.gid.is_none_or(|g| g == meta.gid());
        if !meta.is_file() || meta.mode() & 0o7777 != mode || !owner_ok || meta.len() != bytes.len() as u64 {
            return Ok(false);
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| RenderError::io(dir, "open a file to compare", e))?;
        if !same_content(dir, file, bytes)? || !is_our_link(dir, name) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn link_target(name: &str) -> PathBuf {
    Path::new(DATA_LINK).join(name)
}

fn is_our_link(dir: &Path, name: &str) -> bool {
    fs::read_link(dir.join(name)).is_ok_and(|t| t == link_target(name))
}

/// A user-visible name may be missing or a symlink; anything else is not ours to replace.
fn check_user_link(dir: &Path, name: &str) -> Result<(), RenderError> {
    let path = dir.join(name);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => Ok(()),
        Ok(_) => Err(RenderError::Config {
            path: dir.to_path_buf(),
            message: format!(
                "{} exists and is not a symlink into ..data; keysync will not replace it: move it away",
                path.display()
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RenderError::io(dir, "inspect a file link", e)),
    }
}

/// Points `dir/name` at `..data/name`, replacing another symlink with a rename.
fn ensure_user_link(dir: &Path, name: &str) -> Result<(), RenderError> {
    if is_our_link(dir, name) {
        return Ok(());
    }
    check_user_link(dir, name)?;
    let tmp = dir.join(format!("..{name}.tmp.{:08x}", rand::rng().random::<u32>()));
    symlink(link_target(name), &tmp).map_err(|e| RenderError::io(dir, "create a file link", e))?;
    if let Err(e) = fs::rename(&tmp, dir.join(name)) {
        let _ = fs::remove_file(&tmp);
        return Err(RenderError::io(dir, "put a file link in place", e));
    }
    Ok(())
}

/// `..2026_11_03_10_15_30.123456789.1a2b3c4d`: sorts by time, unique by the random part.
fn new_version_name() -> String {
    let now = chrono::Utc::now();
    format!("..{}.{:08x}", now.format("%Y_%m_%d_%H_%M_%S%.9f"), rand::rng().random::<u32>())
}

fn is_version_name(name: &str) -> bool {
    name.strip_prefix("..").is_some_and(|rest| {
        rest.len() >= 20
            && rest.chars().take(4).all(|c| c.is_ascii_digit())
            && rest.chars().all(|c| c.is_ascii_hexdigit() || c == '_' || c == '.')
    })
}

/// Deletes version directories other than `keep`; returns whether any was removed.
fn remove_old_versions(dir: &Path, keep: &str) -> Result<bool, RenderError> {
    let mut removed = false;
    let entries = fs::read_dir(dir).map_err(|e| RenderError::io(dir, "list the directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| RenderError::io(dir, "list the directory", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == keep || !is_version_name(name) {
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            fs::remove_dir_all(entry.path()).map_err(|e| RenderError::io(dir, "remove an old version directory", e))?;
            removed = true;
        }
    }
    Ok(removed)
}

/// Removes a half-written version directory unless the swap happened.
struct VersionGuard(Option<PathBuf>);

impl VersionGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for VersionGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::atomic::tests::entries;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(n, c)| (n.to_string(), c.as_bytes().to_vec())).collect()
    }

    #[test]
    fn dir_sink_swaps_data_and_both_files_change_together() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let v1 = files(&[("openai", "sk-a-1\n"), ("anthropic", "sk-b-1\n")]);
        assert_eq!(write_dir(d, &v1, 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
        let first = fs::read_link(d.join(DATA_LINK)).unwrap();
        assert_eq!(fs::read(d.join("openai")).unwrap(), b"sk-a-1\n");
        assert_eq!(fs::read_link(d.join("openai")).unwrap(), Path::new("..data/openai"));
        assert_eq!(fs::metadata(d.join("openai")).unwrap().mode() & 0o7777, 0o600);

        let v2 = files(&[("openai", "sk-a-2\n"), ("anthropic", "sk-b-2\n")]);
        assert_eq!(write_dir(d, &v2, 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
        let second = fs::read_link(d.join(DATA_LINK)).unwrap();
        assert_ne!(first, second);
        assert_eq!(fs::read(d.join("openai")).unwrap(), b"sk-a-2\n");
        assert_eq!(fs::read(d.join("anthropic")).unwrap(), b"sk-b-2\n");
        assert!(!d.join(&first).exists(), "the old version directory is removed");
        let names = entries(d);
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.contains(&"..data".to_string()) && !names.contains(&"..data_tmp".to_string()));
    }

    #[test]
    fn dir_sink_with_unchanged_content_does_not_swap() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let v1 = files(&[("a", "1"), ("b", "2")]);
        write_dir(d, &v1, 0o640, &FileOwner::default()).unwrap();
        let link = fs::read_link(d.join(DATA_LINK)).unwrap();
        assert_eq!(write_dir(d, &v1, 0o640, &FileOwner::default()).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(fs::read_link(d.join(DATA_LINK)).unwrap(), link);
        assert_eq!(write_dir(d, &v1, 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
    }

    #[test]
    fn dir_sink_drops_links_of_removed_files_and_restores_missing_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_dir(d, &files(&[("a", "1"), ("a.previous", "0")]), 0o600, &FileOwner::default()).unwrap();
        write_dir(d, &files(&[("a", "1")]), 0o600, &FileOwner::default()).unwrap();
        assert!(fs::symlink_metadata(d.join("a.previous")).is_err());
        fs::remove_file(d.join("a")).unwrap();
        assert_eq!(write_dir(d, &files(&[("a", "1")]), 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(d.join("a")).unwrap(), b"1");
    }

    #[test]
    fn dir_sink_refuses_to_replace_a_regular_file_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("a"), b"mine").unwrap();
        let err = write_dir(d, &files(&[("a", "1")]), 0o600, &FileOwner::default()).unwrap_err().to_string();
        assert!(err.contains("not a symlink") && err.contains(&d.display().to_string()), "{err}");
        assert_eq!(entries(d), vec!["a"]);
        assert_eq!(fs::read(d.join("a")).unwrap(), b"mine");
    }

    #[test]
    fn removing_a_dir_sink_that_was_never_written_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!remove_dir_contents(&dir.path().join("never")).unwrap());
    }

    #[test]
    fn dir_sink_under_a_world_writable_non_sticky_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let d = dir.path().join("llm");
        fs::create_dir(&d).unwrap();
        let err = write_dir(&d, &files(&[("a", "1")]), 0o600, &FileOwner::default()).unwrap_err();
        assert!(matches!(err, RenderError::UnsafeDirectory { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn dir_sink_in_a_world_writable_non_sticky_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = write_dir(dir.path(), &files(&[("a", "1")]), 0o600, &FileOwner::default()).unwrap_err();
        assert!(matches!(err, RenderError::UnsafeDirectory { .. }), "{err}");
    }

    #[test]
    fn remove_dir_contents_removes_only_what_keysync_made() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("README"), b"hands off").unwrap();
        write_dir(d, &files(&[("a", "1"), ("b", "2")]), 0o600, &FileOwner::default()).unwrap();
        assert!(remove_dir_contents(d).unwrap());
        assert_eq!(entries(d), vec!["README"]);
        assert!(!remove_dir_contents(d).unwrap());
    }

    #[test]
    fn readers_of_a_dir_sink_always_see_files_from_one_version() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let version = |i: usize| files(&[("a", &format!("{i}")), ("b", &format!("{i}"))]);
        write_dir(&d, &version(0), 0o600, &FileOwner::default()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Resolve ..data once, as an app reading a consistent set would.
                        let v = fs::read_link(d.join(DATA_LINK)).unwrap();
                        let (a, b) = match (fs::read(d.join(&v).join("a")), fs::read(d.join(&v).join("b"))) {
                            (Ok(a), Ok(b)) => (a, b),
                            // The version was retired between readlink and open: retry.
                            _ => continue,
                        };
                        assert_eq!(a, b, "files from two versions");
                        // Through the user link the file may vanish only if its version is
                        // retired mid-lookup (as in kubelet); it is never empty.
                        if let Ok(via_link) = fs::read(d.join("a")) {
                            assert!(!via_link.is_empty());
                        }
                    }
                })
            })
            .collect();
        for i in 1..=200 {
            write_dir(&d, &version(i), 0o600, &FileOwner::default()).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().expect("reader saw an inconsistent directory");
        }
    }
}
