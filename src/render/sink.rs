//! Sink runtimes built from config: they decide the bytes, write them the configured way and
//! report what happened. The sync loop calls [`Sink::apply`] with fresh keys or
//! [`Sink::apply_missing`] when Vault says a key is gone, and never touches files itself.

use super::atomic::{
    create_dir_chain, create_parent_dirs, remove_if_present, resolve_owner, write_atomic, write_in_place,
};
use super::config::{DirSinkConfig, OnMissing, SinkConfig, SinkFormat, WriteMode};
use super::dir::{remove_dir_contents, write_dir};
use super::error::{RenderError, RenderOutcome, WriteOutcome};
use super::format::Content;
use super::material::KeyMaterial;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// A validated file sink with its template compiled. Build once at startup (errors then point
/// at config), apply on every change.
#[derive(Debug)]
pub struct Sink {
    config: SinkConfig,
    mode: u32,
    content: Content,
}

/// The bytes `sink` would write for `keys`, without touching the filesystem. Same as
/// [`Sink::render_content`].
pub fn render_content(sink: &Sink, keys: &[KeyMaterial]) -> Result<Vec<u8>, RenderError> {
    sink.render_content(keys)
}

/// `<path>.previous`: where a raw sink with `include_previous` puts the previous key.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut name: OsString = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".previous");
    path.with_file_name(name)
}

impl Sink {
    /// Validates `config`, reads `template_file` and compiles the template.
    pub fn new(config: SinkConfig) -> Result<Self, RenderError> {
        let invalid = |message: String| RenderError::Config { path: config.path.clone(), message };
        config.validate().map_err(invalid)?;
        let mode = config.mode_bits().map_err(|m| invalid(format!("mode: {m}")))?;
        let content = Content::new(&config.path, config.content())?;
        Ok(Sink { config, mode, content })
    }

    pub fn config(&self) -> &SinkConfig {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// The bytes of the main file for `keys` (pure).
    pub fn render_content(&self, keys: &[KeyMaterial]) -> Result<Vec<u8>, RenderError> {
        self.content.render(keys)
    }

    fn has_previous_file(&self) -> bool {
        self.config.format == SinkFormat::Raw && self.config.include_previous
    }

    /// Renders `keys` and writes the file (and, for raw with `include_previous`, writes or
    /// removes `<path>.previous`). Everything is rendered before anything is written, so a
    /// render error leaves the files as they were. `.previous` is written first so that when an
    /// app sees the new key, the old one is already in `.previous`.
    pub fn apply(&self, keys: &[KeyMaterial]) -> Result<RenderOutcome, RenderError> {
        let bytes = self.content.render(keys)?;
        let previous = self.content.render_previous(keys)?;
        let owner = resolve_owner(self.path(), self.config.owner.as_deref(), self.config.group.as_deref())?;
        if self.config.create_dirs {
            create_parent_dirs(self.path(), &owner)?;
        }
        let write = |path: &Path, bytes: &[u8]| match self.config.write {
            WriteMode::Atomic => write_atomic(path, bytes, self.mode, &owner),
            WriteMode::InPlace => write_in_place(path, bytes, self.mode, &owner),
        };
        let mut changed = false;
        if self.has_previous_file() {
            let prev_path = previous_path(self.path());
            changed |= match previous {
                Some(prev) => write(&prev_path, &prev)? == WriteOutcome::Written,
                None => remove_if_present(&prev_path)?,
            };
        }
        changed |= write(self.path(), &bytes)? == WriteOutcome::Written;
        Ok(if changed { RenderOutcome::Written } else { RenderOutcome::Unchanged })
    }

    /// The key is missing or disabled in Vault. `keep`: touch nothing and return `Kept` (the
    /// caller warns). `remove`: delete the file and its `.previous`; `Removed` if anything was
    /// deleted, `Unchanged` if nothing was there. Never call this because Vault is unreachable.
    pub fn apply_missing(&self) -> Result<RenderOutcome, RenderError> {
        match self.config.on_missing {
            OnMissing::Keep => Ok(RenderOutcome::Kept),
            OnMissing::Remove => {
                let mut removed = remove_if_present(self.path())?;
                if self.has_previous_file() {
                    removed |= remove_if_present(&previous_path(self.path()))?;
                }
                Ok(if removed { RenderOutcome::Removed } else { RenderOutcome::Unchanged })
            }
        }
    }
}

/// A validated directory sink: several files swapped together through `..data`.
///
/// Files without `keys` render the key the sink is attached to, so the caller passes exactly
/// that key; a sink whose files each list `keys` can be given all of them.
#[derive(Debug)]
pub struct DirSink {
    config: DirSinkConfig,
    mode: u32,
    files: Vec<(String, Content)>,
}

impl DirSink {
    /// Validates `config`, reads template files and compiles templates.
    pub fn new(config: DirSinkConfig) -> Result<Self, RenderError> {
        let invalid = |message: String| RenderError::Config { path: config.path.clone(), message };
        config.validate().map_err(invalid)?;
        let mode = config.mode_bits().map_err(|m| invalid(format!("mode: {m}")))?;
        let files = config
            .files
            .iter()
            .map(|f| Ok((f.name.clone(), Content::new(&config.path.join(&f.name), f.content())?)))
            .collect::<Result<Vec<_>, RenderError>>()?;
        Ok(DirSink { config, mode, files })
    }

    pub fn config(&self) -> &DirSinkConfig {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    /// Every file's bytes by name, `<name>.previous` included where configured (pure).
    pub fn render_files(&self, keys: &[KeyMaterial]) -> Result<BTreeMap<String, Vec<u8>>, RenderError> {
        let mut out = BTreeMap::new();
        for (name, content) in &self.files {
            out.insert(name.clone(), content.render(keys)?);
            if let Some(prev) = content.render_previous(keys)? {
                out.insert(format!("{name}.previous"), prev);
            }
        }
        Ok(out)
    }

    /// Renders all files and swaps them in at once; `Unchanged` if all already match.
    pub fn apply(&self, keys: &[KeyMaterial]) -> Result<RenderOutcome, RenderError> {
        let files = self.render_files(keys)?;
        let owner = resolve_owner(self.path(), self.config.owner.as_deref(), self.config.group.as_deref())?;
        if self.config.create_dirs {
            create_dir_chain(self.path(), self.path(), &owner)?;
        }
        Ok(write_dir(self.path(), &files, self.mode, &owner)?.into())
    }

    /// As [`Sink::apply_missing`]; `remove` deletes the links, `..data` and version
    /// directories, leaving other files in the directory alone.
    pub fn apply_missing(&self) -> Result<RenderOutcome, RenderError> {
        match self.config.on_missing {
            OnMissing::Keep => Ok(RenderOutcome::Kept),
            OnMissing::Remove => {
                Ok(if remove_dir_contents(self.path())? { RenderOutcome::Removed } else { RenderOutcome::Unchanged })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::atomic::tests::entries;
    use crate::render::config::DirFileConfig;
    use crate::secret::Secret;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    const SECRET: &str = "sk-test-SECRETSECRETSECRET";

    fn key() -> KeyMaterial {
        KeyMaterial::new("openai-prod", 2, Secret::new(SECRET))
    }

    fn file(name: &str, format: SinkFormat) -> DirFileConfig {
        DirFileConfig {
            name: name.into(),
            format,
            trailing_newline: None,
            include_previous: false,
            env_name: None,
            template: None,
            template_file: None,
            keys: vec![],
        }
    }

    #[test]
    fn sinks_can_be_shared_across_threads_and_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Sink>();
        assert_send_sync::<DirSink>();
        assert_send_sync::<RenderError>();
    }

    #[test]
    fn raw_sink_writes_the_key_then_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Sink::new(SinkConfig::new(dir.path().join("openai"))).unwrap();
        assert_eq!(sink.apply(&[key()]).unwrap(), RenderOutcome::Written);
        assert_eq!(fs::read_to_string(sink.path()).unwrap(), format!("{SECRET}\n"));
        assert_eq!(sink.apply(&[key()]).unwrap(), RenderOutcome::Unchanged);
    }

    #[test]
    fn include_previous_writes_then_removes_the_previous_file_when_grace_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SinkConfig::new(dir.path().join("openai"));
        cfg.include_previous = true;
        let sink = Sink::new(cfg).unwrap();
        let prev = previous_path(sink.path());
        assert_eq!(prev, dir.path().join("openai.previous"));
        let rotated = key().with_previous(1, Secret::new("sk-old-0123456789"));
        assert_eq!(sink.apply(std::slice::from_ref(&rotated)).unwrap(), RenderOutcome::Written);
        assert_eq!(fs::read_to_string(&prev).unwrap(), "sk-old-0123456789\n");
        assert_eq!(fs::metadata(&prev).unwrap().mode() & 0o777, 0o600);
        assert_eq!(sink.apply(&[rotated]).unwrap(), RenderOutcome::Unchanged);
        assert_eq!(sink.apply(&[key()]).unwrap(), RenderOutcome::Written, "grace ended: .previous goes");
        assert!(!prev.exists());
        assert_eq!(fs::read_to_string(sink.path()).unwrap(), format!("{SECRET}\n"));
    }

    #[test]
    fn on_missing_keep_touches_nothing_and_remove_deletes_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SinkConfig::new(dir.path().join("openai"));
        cfg.include_previous = true;
        let keep = Sink::new(cfg.clone()).unwrap();
        keep.apply(&[key().with_previous(1, Secret::new("sk-old-0123456789"))]).unwrap();
        assert_eq!(keep.apply_missing().unwrap(), RenderOutcome::Kept);
        assert_eq!(entries(dir.path()), vec!["openai", "openai.previous"]);
        cfg.on_missing = OnMissing::Remove;
        let remove = Sink::new(cfg).unwrap();
        assert_eq!(remove.apply_missing().unwrap(), RenderOutcome::Removed);
        assert!(entries(dir.path()).is_empty());
        assert_eq!(remove.apply_missing().unwrap(), RenderOutcome::Unchanged);
    }

    #[test]
    fn a_render_error_leaves_the_existing_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SinkConfig::new(dir.path().join("openai.env"));
        cfg.format = SinkFormat::Env;
        let sink = Sink::new(cfg).unwrap();
        sink.apply(&[key()]).unwrap();
        let bad = KeyMaterial::new("openai-prod", 3, Secret::new(format!("{SECRET}\n")));
        let err = sink.apply(&[bad]).unwrap_err().to_string();
        assert!(!err.contains("SECRETSECRET") && err.contains("openai.env"), "{err}");
        assert_eq!(fs::read_to_string(sink.path()).unwrap(), format!("OPENAI_PROD='{SECRET}'\n"));
    }

    #[test]
    fn create_dirs_creates_parents_and_without_it_the_error_says_how_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SinkConfig::new(dir.path().join("run/keys/openai"));
        let err = Sink::new(cfg.clone()).unwrap().apply(&[key()]).unwrap_err().to_string();
        assert!(err.contains("create_dirs"), "{err}");
        cfg.create_dirs = true;
        let sink = Sink::new(cfg).unwrap();
        assert_eq!(sink.apply(&[key()]).unwrap(), RenderOutcome::Written);
        assert_eq!(fs::metadata(dir.path().join("run/keys")).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn in_place_sink_keeps_the_inode_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SinkConfig::new(dir.path().join("openai"));
        cfg.write = WriteMode::InPlace;
        let sink = Sink::new(cfg).unwrap();
        sink.apply(&[key()]).unwrap();
        let ino = fs::metadata(sink.path()).unwrap().ino();
        sink.apply(&[KeyMaterial::new("openai-prod", 3, Secret::new("sk-new"))]).unwrap();
        assert_eq!(fs::metadata(sink.path()).unwrap().ino(), ino);
        assert_eq!(fs::read_to_string(sink.path()).unwrap(), "sk-new\n");
    }

    #[test]
    fn invalid_config_is_refused_when_the_sink_is_built() {
        let err = Sink::new(SinkConfig::new("relative/openai")).unwrap_err().to_string();
        assert!(err.contains("relative/openai") && err.contains("absolute"), "{err}");
        let mut cfg = SinkConfig::new("/run/k/openai");
        cfg.mode = "0777".into();
        let err = Sink::new(cfg).unwrap_err().to_string();
        assert!(err.contains("world-writable"), "{err}");
    }

    #[test]
    fn unknown_owner_fails_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SinkConfig::new(dir.path().join("openai"));
        cfg.owner = Some("no-such-user-keysync".into());
        let err = Sink::new(cfg).unwrap().apply(&[key()]).unwrap_err().to_string();
        assert!(err.contains("no-such-user-keysync"), "{err}");
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn render_errors_never_contain_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = key().with_previous(1, Secret::new("sk-old-SECRETSECRETSECRET"));
        let mut errors = Vec::new();
        for (format, template) in [
            (SinkFormat::Template, Some("{{ key.nope }}")),
            (SinkFormat::Template, Some("{{ key.api_key | int }}")),
            (SinkFormat::Template, Some("{{ key.api_key ~ '\n' | env_quote }}")),
            (SinkFormat::Template, Some("{{ key.fields[key.api_key] }}")),
        ] {
            let mut cfg = SinkConfig::new(dir.path().join("t"));
            cfg.format = format;
            cfg.include_previous = true;
            cfg.template = template.map(str::to_string);
            errors.push(Sink::new(cfg).unwrap().apply(std::slice::from_ref(&k)).unwrap_err());
        }
        let mut env = SinkConfig::new(dir.path().join("e"));
        env.format = SinkFormat::Env;
        let nl = KeyMaterial::new("openai-prod", 1, Secret::new(format!("{SECRET}\n")));
        errors.push(Sink::new(env).unwrap().apply(&[nl]).unwrap_err());
        let mut multi = SinkConfig::new(dir.path().join("m"));
        multi.format = SinkFormat::Json;
        multi.keys = vec!["openai-prod".into(), "other".into()];
        errors.push(Sink::new(multi).unwrap().apply(std::slice::from_ref(&k)).unwrap_err());
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        errors
            .push(Sink::new(SinkConfig::new(blocker.join("k"))).unwrap().apply(std::slice::from_ref(&k)).unwrap_err());
        for err in errors {
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains("SECRETSECRET"), "{text}");
            }
        }
    }

    #[test]
    fn dir_sink_renders_every_file_and_previous_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = file("openai", SinkFormat::Raw);
        raw.include_previous = true;
        let mut env = file("openai.env", SinkFormat::Env);
        env.env_name = Some("OPENAI_API_KEY".into());
        let cfg = DirSinkConfig {
            path: dir.path().join("llm"),
            mode: "0640".into(),
            owner: None,
            group: None,
            create_dirs: true,
            write: WriteMode::Atomic,
            on_missing: OnMissing::Remove,
            files: vec![raw, env],
        };
        let sink = DirSink::new(cfg).unwrap();
        let rotated = key().with_previous(1, Secret::new("sk-old-0123456789"));
        assert_eq!(sink.apply(std::slice::from_ref(&rotated)).unwrap(), RenderOutcome::Written);
        let d = sink.path();
        assert_eq!(fs::read_to_string(d.join("openai")).unwrap(), format!("{SECRET}\n"));
        assert_eq!(fs::read_to_string(d.join("openai.previous")).unwrap(), "sk-old-0123456789\n");
        assert_eq!(fs::read_to_string(d.join("openai.env")).unwrap(), format!("OPENAI_API_KEY='{SECRET}'\n"));
        assert_eq!(fs::metadata(d.join("openai")).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(sink.apply(&[rotated]).unwrap(), RenderOutcome::Unchanged);
        assert_eq!(sink.apply(&[key()]).unwrap(), RenderOutcome::Written);
        assert!(fs::symlink_metadata(d.join("openai.previous")).is_err());
        assert_eq!(sink.apply_missing().unwrap(), RenderOutcome::Removed);
        assert!(entries(d).is_empty());
    }
}
