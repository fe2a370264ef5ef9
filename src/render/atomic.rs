//! Putting bytes in a file safely: atomic replace (temp file + rename) or in-place rewrite,
//! with "nothing changed → nothing touched", no symlink following, restrictive permissions from
//! the first byte, and no temp file left behind on errors.

use super::error::{RenderError, WriteOutcome};
use nix::libc;
use nix::unistd::{Gid, Group, Uid, User};
use rand::Rng;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who should own a written file; `None` leaves that id as the process creates it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOwner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl FileOwner {
    fn matches(&self, meta: &fs::Metadata) -> bool {
        self.uid.is_none_or(|u| u == meta.uid()) && self.gid.is_none_or(|g| g == meta.gid())
    }

    fn is_set(&self) -> bool {
        self.uid.is_some() || self.gid.is_some()
    }
}

/// Resolves `owner`/`group` (names or numeric ids) for the sink at `path`. Done at write time
/// so a user created after keysync started (containers) is still found.
pub fn resolve_owner(path: &Path, owner: Option<&str>, group: Option<&str>) -> Result<FileOwner, RenderError> {
    let err = |message: String| RenderError::Owner { path: path.to_path_buf(), message };
    let uid = match owner {
        None => None,
        Some(o) => Some(match o.parse::<u32>() {
            Ok(id) => id,
            Err(_) => User::from_name(o)
                .map_err(|e| err(format!("cannot look up user {o:?}: {e}")))?
                .ok_or_else(|| err(format!("user {o:?} does not exist; create it or use a numeric uid")))?
                .uid
                .as_raw(),
        }),
    };
    let gid = match group {
        None => None,
        Some(g) => Some(match g.parse::<u32>() {
            Ok(id) => id,
            Err(_) => Group::from_name(g)
                .map_err(|e| err(format!("cannot look up group {g:?}: {e}")))?
                .ok_or_else(|| err(format!("group {g:?} does not exist; create it or use a numeric gid")))?
                .gid
                .as_raw(),
        }),
    };
    Ok(FileOwner { uid, gid })
}

/// Where a test asks [`write_atomic_inner`] to fail, to prove cleanup without needing a broken
/// disk (tests run as root, where permission bits stop nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailPoint {
    None,
    #[cfg(test)]
    AfterData,
}

/// Replaces `path` with `bytes` atomically: readers see the old or the new content, never a
/// mix. Byte-equal content with the right mode and owner is left alone (mtime too), so change
/// hooks only run on real changes. Refuses a symlink at `path` and an unsafe parent directory.
/// On error the old file is untouched and no temp file remains.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, owner: &FileOwner) -> Result<WriteOutcome, RenderError> {
    write_atomic_inner(path, bytes, mode, owner, FailPoint::None)
}

pub(crate) fn write_atomic_inner(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: &FileOwner,
    fail: FailPoint,
) -> Result<WriteOutcome, RenderError> {
    if existing_matches(path, bytes, mode, owner)? {
        return Ok(WriteOutcome::Unchanged);
    }
    let dir = parent_of(path)?;
    check_directory(path, &dir)?;
    let (mut file, temp) = create_temp(path, &dir, mode)?;
    let guard = TempGuard(Some(temp.clone()));
    fchown(path, &file, owner)?;
    file.write_all(bytes).map_err(|e| RenderError::io(path, "write the temporary file", e))?;
    file.sync_all().map_err(|e| RenderError::io(path, "fsync the temporary file", e))?;
    drop(file);
    #[cfg(test)]
    if fail == FailPoint::AfterData {
        return Err(RenderError::io(path, "continue (injected test failure)", io::Error::other("injected")));
    }
    let _ = fail;
    fs::rename(&temp, path).map_err(|e| RenderError::io(path, "rename the temporary file over the target", e))?;
    guard.disarm();
    sync_dir(path, &dir)?;
    Ok(WriteOutcome::Written)
}

/// Rewrites `path` in place (same inode), for Docker single-file bind mounts where a rename
/// would leave the container looking at the old file. Not atomic: a reader racing the write
/// can see a mix of old and new bytes or a short file; apps should re-read on error. Refuses
/// symlinks like [`write_atomic`]; creates the file (with `mode`) if it does not exist.
pub fn write_in_place(path: &Path, bytes: &[u8], mode: u32, owner: &FileOwner) -> Result<WriteOutcome, RenderError> {
    if existing_matches(path, bytes, mode, owner)? {
        return Ok(WriteOutcome::Unchanged);
    }
    let dir = parent_of(path)?;
    check_directory(path, &dir)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, "open the file for writing", e))?;
    let meta = file.metadata().map_err(|e| RenderError::io(path, "stat the file", e))?;
    if !meta.is_file() {
        return Err(RenderError::NotRegularFile { path: path.to_path_buf() });
    }
    if meta.mode() & 0o7777 != mode {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| RenderError::io(path, "set the file mode", e))?;
    }
    if !owner.matches(&meta) {
        fchown(path, &file, owner)?;
    }
    file.write_all_at(bytes, 0).map_err(|e| RenderError::io(path, "write the file in place", e))?;
    file.set_len(bytes.len() as u64).map_err(|e| RenderError::io(path, "truncate the file", e))?;
    file.sync_all().map_err(|e| RenderError::io(path, "fsync the file", e))?;
    Ok(WriteOutcome::Written)
}

/// Deletes `path` if it exists (a symlink there is removed, never followed). Returns whether
/// something was deleted.
pub fn remove_if_present(path: &Path) -> Result<bool, RenderError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RenderError::io(path, "stat the file", e)),
        Ok(meta) if meta.is_dir() => Err(RenderError::NotRegularFile { path: path.to_path_buf() }),
        Ok(_) => {
            fs::remove_file(path).map_err(|e| RenderError::io(path, "remove the file", e))?;
            if let Ok(dir) = parent_of(path) {
                sync_dir(path, &dir)?;
            }
            Ok(true)
        }
    }
}

/// Creates the missing directories above `path` (for `create_dirs`): 0700, or 0750 with the
/// configured group when a group should read the files. They stay owned by keysync's user, not
/// `owner`: an app user owning the directory could swap files in it. Existing directories are
/// left as they are.
pub fn create_parent_dirs(path: &Path, owner: &FileOwner) -> Result<(), RenderError> {
    let dir = parent_of(path)?;
    create_dir_chain(path, &dir, owner)
}

pub(crate) fn create_dir_chain(path: &Path, dir: &Path, owner: &FileOwner) -> Result<(), RenderError> {
    let mode = if owner.gid.is_some() { 0o750 } else { 0o700 };
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        match fs::symlink_metadata(d) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(d.to_path_buf()),
            Err(e) => return Err(RenderError::io(path, "inspect a parent directory", e)),
        }
        cur = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(RenderError::io(path, "create a parent directory (create_dirs)", e)),
        }
        fs::set_permissions(d, fs::Permissions::from_mode(mode))
            .map_err(|e| RenderError::io(path, "set a created directory's mode", e))?;
        if let Some(gid) = owner.gid {
            nix::unistd::chown(d, None, Some(Gid::from_raw(gid)))
                .map_err(|e| RenderError::io(path, "set a created directory's group", io::Error::from(e)))?;
        }
    }
    Ok(())
}

/// The directory that holds `path`.
pub(crate) fn parent_of(path: &Path) -> Result<PathBuf, RenderError> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p.to_path_buf()),
        _ => Err(RenderError::Config {
            path: path.to_path_buf(),
            message: "the path has no parent directory; write an absolute file path".into(),
        }),
    }
}

/// Refuses to write into a directory that is missing, not a directory, or writable by others
/// without the sticky bit (anyone could rename their own file over the key).
pub(crate) fn check_directory(path: &Path, dir: &Path) -> Result<(), RenderError> {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RenderError::MissingDirectory { path: path.to_path_buf(), dir: dir.to_path_buf() })
        }
        Err(e) => return Err(RenderError::io(path, "inspect the parent directory", e)),
    };
    if !meta.is_dir() {
        return Err(RenderError::io(
            path,
            "use the parent directory",
            io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", dir.display())),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(RenderError::UnsafeDirectory { path: path.to_path_buf(), dir: dir.to_path_buf(), mode });
    }
    Ok(())
}

/// Whether `path` already holds exactly `bytes` with `mode` and `owner`. Errors on a symlink or
/// a non-regular file at `path`; `false` when it does not exist.
pub(crate) fn existing_matches(path: &Path, bytes: &[u8], mode: u32, owner: &FileOwner) -> Result<bool, RenderError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(false),
        Err(e) => return Err(RenderError::io(path, "inspect the file", e)),
    };
    if meta.file_type().is_symlink() {
        return Err(RenderError::Symlink { path: path.to_path_buf() });
    }
    if !meta.is_file() {
        return Err(RenderError::NotRegularFile { path: path.to_path_buf() });
    }
    if meta.mode() & 0o7777 != mode || !owner.matches(&meta) || meta.len() != bytes.len() as u64 {
        return Ok(false);
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(open_error(path, "open the file to compare", e)),
    };
    same_content(path, file, bytes)
}

/// Compares an open file's content with `bytes`, reading at most one byte more than needed.
pub(crate) fn same_content(path: &Path, file: File, bytes: &[u8]) -> Result<bool, RenderError> {
    let meta = file.metadata().map_err(|e| RenderError::io(path, "stat the file", e))?;
    if !meta.is_file() {
        return Err(RenderError::NotRegularFile { path: path.to_path_buf() });
    }
    let mut current = Vec::with_capacity(bytes.len() + 1);
    file.take(bytes.len() as u64 + 1)
        .read_to_end(&mut current)
        .map_err(|e| RenderError::io(path, "read the file to compare", e))?;
    Ok(current == bytes)
}

/// Creates a fresh temp file next to `path` with O_EXCL and O_NOFOLLOW, owner-only at creation
/// and `mode` applied with fchmod before any data is written (independent of the umask).
fn create_temp(path: &Path, dir: &Path, mode: u32) -> Result<(File, PathBuf), RenderError> {
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut last_err = None;
    for _ in 0..8 {
        let suffix: u64 = rand::rng().random();
        let temp = dir.join(format!(".{base}.keysync-{suffix:016x}.tmp"));
        match create_exclusive(&temp, mode) {
            Ok(f) => return Ok((f, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(RenderError::io(path, "create a temporary file in the target directory", e)),
        }
    }
    Err(RenderError::io(
        path,
        "create a temporary file in the target directory",
        last_err.unwrap_or_else(|| io::Error::other("name collisions")),
    ))
}

/// Opens a new file with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600 at creation, then `mode`.
pub(crate) fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if let Err(e) = file.set_permissions(fs::Permissions::from_mode(mode)) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

pub(crate) fn fchown(path: &Path, file: &File, owner: &FileOwner) -> Result<(), RenderError> {
    if !owner.is_set() {
        return Ok(());
    }
    nix::unistd::fchown(file, owner.uid.map(Uid::from_raw), owner.gid.map(Gid::from_raw)).map_err(|e| {
        RenderError::Owner {
            path: path.to_path_buf(),
            message: format!(
                "cannot set owner {}:{} ({e}); run keysync as root or drop owner/group",
                owner.uid.map(|u| u.to_string()).unwrap_or_default(),
                owner.gid.map(|g| g.to_string()).unwrap_or_default()
            ),
        }
    })
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(path: &Path, dir: &Path) -> Result<(), RenderError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| RenderError::io(path, "fsync the directory", e))
}

fn open_error(path: &Path, action: &'static str, e: io::Error) -> RenderError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        RenderError::Symlink { path: path.to_path_buf() }
    } else if e.raw_os_error() == Some(libc::ENXIO) {
        RenderError::NotRegularFile { path: path.to_path_buf() }
    } else {
        RenderError::io(path, action, e)
    }
}

/// Removes the temp file unless the rename succeeded.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    /// umask is process-wide: tests that change it take this lock.
    pub(crate) static UMASK: Mutex<()> = Mutex::new(());

    pub(crate) fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
        let _lock = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: umask only swaps the process's file mode creation mask.
        let old = unsafe { libc::umask(mask as libc::mode_t) };
        let out = f();
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        out
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    pub(crate) fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn identical_content_leaves_inode_and_mtime_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        assert_eq!(write_atomic(&p, b"sk-1\n", 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
        let old_mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options().write(true).open(&p).unwrap().set_modified(old_mtime).unwrap();
        let before = fs::metadata(&p).unwrap();
        assert_eq!(write_atomic(&p, b"sk-1\n", 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Unchanged);
        let after = fs::metadata(&p).unwrap();
        assert_eq!(before.ino(), after.ino());
        assert_eq!(after.modified().unwrap(), old_mtime);
    }

    #[test]
    fn a_new_key_replaces_the_file_atomically_with_mode_0600_regardless_of_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        with_umask(0o000, || {
            write_atomic(&p, b"sk-1\n", 0o600, &FileOwner::default()).unwrap();
            let ino = fs::metadata(&p).unwrap().ino();
            assert_eq!(mode_of(&p), 0o600);
            assert_eq!(write_atomic(&p, b"sk-2\n", 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
            assert_ne!(fs::metadata(&p).unwrap().ino(), ino);
            assert_eq!(fs::read(&p).unwrap(), b"sk-2\n");
            assert_eq!(mode_of(&p), 0o600);
        });
        with_umask(0o077, || {
            write_atomic(&p, b"sk-3\n", 0o640, &FileOwner::default()).unwrap();
            assert_eq!(mode_of(&p), 0o640, "a restrictive umask must not change the configured mode");
        });
        assert_eq!(entries(dir.path()), vec!["key"]);
    }

    #[test]
    fn a_wrong_mode_alone_triggers_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write_atomic(&p, b"sk-1", 0o644, &FileOwner::default()).unwrap();
        assert_eq!(write_atomic(&p, b"sk-1", 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
        assert_eq!(mode_of(&p), 0o600);
    }

    #[test]
    fn owner_and_group_are_applied_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let owner = FileOwner { uid: Some(1234), gid: Some(2345) };
        write_atomic(&p, b"sk-1", 0o640, &owner).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 2345));
        assert_eq!(write_atomic(&p, b"sk-1", 0o640, &owner).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(write_atomic(&p, b"sk-1", 0o640, &FileOwner::default()).unwrap(), WriteOutcome::Unchanged);
        let other = FileOwner { uid: Some(1235), gid: None };
        assert_eq!(write_atomic(&p, b"sk-1", 0o640, &other).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::metadata(&p).unwrap().uid(), 1235);
    }

    #[test]
    fn owner_names_and_numbers_resolve_and_unknown_names_are_explained() {
        let p = Path::new("/run/k/a");
        assert_eq!(resolve_owner(p, Some("root"), Some("0")).unwrap(), FileOwner { uid: Some(0), gid: Some(0) });
        assert_eq!(resolve_owner(p, Some("1000"), None).unwrap(), FileOwner { uid: Some(1000), gid: None });
        let err = resolve_owner(p, Some("no-such-user-keysync"), None).unwrap_err().to_string();
        assert!(
            err.contains("/run/k/a") && err.contains("no-such-user-keysync") && err.contains("does not exist"),
            "{err}"
        );
        let err = resolve_owner(p, None, Some("no-such-group-keysync")).unwrap_err().to_string();
        assert!(err.contains("group"), "{err}");
    }

    #[test]
    fn a_write_error_leaves_the_old_file_intact_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write_atomic(&p, b"old", 0o600, &FileOwner::default()).unwrap();
        let err = write_atomic_inner(&p, b"new", 0o600, &FileOwner::default(), FailPoint::AfterData).unwrap_err();
        assert!(err.to_string().contains(&p.display().to_string()), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec!["key"], "temp files must not linger");
    }

    #[test]
    fn a_parent_that_is_a_file_fails_with_the_path_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let p = file.join("key");
        let err = write_atomic(&p, b"new", 0o600, &FileOwner::default()).unwrap_err().to_string();
        assert!(err.contains(&p.display().to_string()) && err.contains("not a directory"), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"x");
        assert_eq!(entries(dir.path()), vec!["plain"]);
    }

    #[test]
    fn a_missing_parent_says_to_create_it_or_set_create_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope/key");
        let err = write_atomic(&p, b"new", 0o600, &FileOwner::default()).unwrap_err().to_string();
        assert!(err.contains("create_dirs") && err.contains(&p.display().to_string()), "{err}");
    }

    #[test]
    fn a_symlink_planted_at_the_target_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let p = dir.path().join("key");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        for result in [
            write_atomic(&p, b"sk-1", 0o600, &FileOwner::default()),
            write_in_place(&p, b"sk-1", 0o600, &FileOwner::default()),
        ] {
            let err = result.unwrap_err();
            assert!(matches!(err, RenderError::Symlink { .. }), "{err}");
            assert!(err.to_string().contains("symbolic link"), "{err}");
        }
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(entries(dir.path()), vec!["key", "victim"]);
    }

    #[test]
    fn a_symlink_planted_at_a_temp_path_is_never_followed() {
        // Temp names are random, but if one were guessed: O_EXCL|O_NOFOLLOW refuses the
        // planted link (dangling or not) and the file it points at is neither created nor
        // changed.
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let planted = dir.path().join(".key.keysync-0000000000000000.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = create_exclusive(&planted, 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let dangling = dir.path().join(".other.keysync-0000000000000001.tmp");
        let would_create = dir.path().join("created-through-link");
        std::os::unix::fs::symlink(&would_create, &dangling).unwrap();
        assert!(create_exclusive(&dangling, 0o600).is_err());
        assert!(!would_create.exists(), "a dangling planted link must not create its target");
    }

    #[test]
    fn a_world_writable_non_sticky_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let p = open.join("key");
        let err = write_atomic(&p, b"sk", 0o600, &FileOwner::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RenderError::UnsafeDirectory { .. }), "{text}");
        assert!(text.contains(&open.display().to_string()) && text.contains("chmod o-w"), "{text}");
        assert!(!p.exists());
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        write_atomic(&p, b"sk", 0o600, &FileOwner::default()).unwrap();
    }

    #[test]
    fn in_place_keeps_the_inode_and_truncates_shorter_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        fs::write(&p, b"a-much-longer-old-key\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let ino = fs::metadata(&p).unwrap().ino();
        assert_eq!(write_in_place(&p, b"short\n", 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&p).unwrap(), b"short\n");
        assert_eq!(fs::metadata(&p).unwrap().ino(), ino);
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(write_in_place(&p, b"short\n", 0o600, &FileOwner::default()).unwrap(), WriteOutcome::Unchanged);
        let q = dir.path().join("new");
        with_umask(0, || write_in_place(&q, b"x", 0o640, &FileOwner::default()).unwrap());
        assert_eq!(mode_of(&q), 0o640);
    }

    #[test]
    fn a_directory_at_the_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        fs::create_dir(&p).unwrap();
        let err = write_atomic(&p, b"x", 0o600, &FileOwner::default()).unwrap_err();
        assert!(matches!(err, RenderError::NotRegularFile { .. }), "{err}");
    }

    #[test]
    fn create_dirs_makes_private_parents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/key");
        with_umask(0, || create_parent_dirs(&p, &FileOwner::default()).unwrap());
        assert_eq!(mode_of(&dir.path().join("a")), 0o700);
        assert_eq!(mode_of(&dir.path().join("a/b")), 0o700);
        let q = dir.path().join("g/key");
        create_parent_dirs(&q, &FileOwner { uid: Some(1234), gid: Some(4321) }).unwrap();
        assert_eq!(mode_of(&dir.path().join("g")), 0o750);
        let m = fs::metadata(dir.path().join("g")).unwrap();
        assert_eq!((m.uid(), m.gid()), (nix::unistd::geteuid().as_raw(), 4321), "the app user must not own it");
    }

    #[test]
    fn remove_if_present_reports_whether_it_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        assert!(!remove_if_present(&p).unwrap());
        fs::write(&p, b"x").unwrap();
        assert!(remove_if_present(&p).unwrap());
        assert!(!p.exists());
    }

    #[test]
    fn concurrent_readers_never_see_empty_or_partial_content_during_atomic_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let content = |i: usize| format!("sk-{i:06}-{}\n", "x".repeat(4000 + i % 97)).into_bytes();
        write_atomic(&p, &content(0), 0o600, &FileOwner::default()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..10)
            .map(|_| {
                let p = p.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let bytes = fs::read(&p).expect("the target must always exist");
                        let text = String::from_utf8(bytes).expect("utf-8");
                        let i: usize = text[3..9].parse().expect("a complete header");
                        assert_eq!(text.len(), 11 + 4000 + i % 97, "partial content for write {i}");
                        assert!(text.ends_with("x\n"), "partial content for write {i}");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for i in 1..=1000 {
            write_atomic(&p, &content(i), 0o600, &FileOwner::default()).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let total: u64 = readers.into_iter().map(|r| r.join().expect("reader saw torn content")).sum();
        assert!(total > 0);
        assert_eq!(fs::read(&p).unwrap(), content(1000));
        assert_eq!(entries(dir.path()), vec!["key"]);
    }
}
