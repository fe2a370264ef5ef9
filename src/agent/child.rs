//! What `on_change` hooks and `keysync exec` children inherit: a minimal environment and,
//! optionally, another user.
//!
//! A child runs code keysync does not control, so it must never see keysync's own
//! credentials: every `VAULT_*`, `BAO_*` and `KEYSYNC_*` variable is withheld, whatever
//! `pass_env` says. Beyond that a child gets a small base set (hooks: `PATH`; exec: `PATH`,
//! home, user and locale basics), the variables named in `pass_env`, and what keysync sets for
//! it (the hook's `KEYSYNC_KEY`…, exec's key variables). With `user`/`group` it runs under that
//! identity with no supplementary groups (std's `uid()` clears them when switching from root),
//! so a hook can be less privileged than keysync, which must read tokens and write key files.

use nix::unistd::{Gid, Group, Uid, User};
use std::collections::BTreeMap;

/// Variables a hook gets from keysync's environment without asking.
pub const HOOK_BASE_ENV: &[&str] = &["PATH"];

/// Variables an exec child gets from keysync's environment without asking: what a program
/// needs to find binaries, its home, its locale and its terminal.
pub const EXEC_BASE_ENV: &[&str] =
    &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM", "TMPDIR"];

/// Fallback `PATH` when keysync itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// keysync's own credentials and settings: never passed to a child.
pub fn withheld(name: &str) -> bool {
    name.starts_with("VAULT_") || name.starts_with("BAO_") || name.starts_with("KEYSYNC_")
}

/// `NAME`, `PREFIX_*` or `*`.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Checks a `pass_env` list from the config: names or `PREFIX_*` patterns, none of them one
/// of keysync's own variables.
pub fn check_pass_env(list: &[String]) -> Result<(), String> {
    for pattern in list {
        let name = pattern.strip_suffix('*').unwrap_or(pattern);
        let valid = (!name.is_empty() || pattern == "*")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!(
                "pass_env: {pattern:?} is not a variable name or NAME_* pattern; write e.g. [\"HOME\", \"APP_*\"]"
            ));
        }
        if !name.is_empty() && withheld(name) {
            return Err(format!(
                "pass_env: {pattern:?} names keysync's own settings; children never get VAULT_*, BAO_* or \
                 KEYSYNC_* variables (the Vault token stays with keysync); remove it"
            ));
        }
    }
    Ok(())
}

/// The environment a child starts from: the base names and `pass_env` patterns that are set
/// in keysync's environment, minus everything [`withheld`].
pub fn inherited_env(base: &[&str], pass_env: &[String]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !withheld(k))
        .filter(|(k, _)| base.iter().any(|p| matches(p, k)) || pass_env.iter().any(|p| matches(p, k)))
        .collect();
    out.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    out
}

/// Who a child runs as (`user`/`group` in the config), resolved to ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// The user's name and home, when `user` was given, so the child's `USER`/`HOME` match.
    pub user: Option<(String, String)>,
}

impl RunAs {
    /// Resolves `user`/`group` (names or numeric ids; `group` defaults to the user's primary
    /// group, `user` to keysync's own). `field` names the config section for errors. Fails
    /// clearly when keysync is not root and would have to switch identity.
    pub fn resolve(field: &str, user: Option<&str>, group: Option<&str>) -> Result<Option<RunAs>, String> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let (euid, egid) = (Uid::effective().as_raw(), Gid::effective().as_raw());
        let mut run_as = RunAs { uid: euid, gid: egid, user: None };
        if let Some(u) = user {
            let found = match u.parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id))
                    .map_err(|e| format!("{field}.user: cannot look up uid {id} ({e})"))?,
                Err(_) => User::from_name(u).map_err(|e| format!("{field}.user: cannot look up user {u:?} ({e})"))?,
            };
            match found {
                Some(entry) => {
                    run_as.uid = entry.uid.as_raw();
                    run_as.gid = entry.gid.as_raw();
                    run_as.user = Some((entry.name, entry.dir.to_string_lossy().into_owned()));
                }
                None => match u.parse::<u32>() {
                    // A bare uid without a passwd entry is fine (containers); its group is then
                    // the same number unless `group` says otherwise.
                    Ok(id) => {
                        run_as.uid = id;
                        run_as.gid = id;
                    }
                    Err(_) => {
                        return Err(format!("{field}.user: user {u:?} does not exist; create it or use a numeric uid"))
                    }
                },
            }
        }
        if let Some(g) = group {
            run_as.gid = match g.parse::<u32>() {
                Ok(id) => id,
                Err(_) => Group::from_name(g)
                    .map_err(|e| format!("{field}.group: cannot look up group {g:?} ({e})"))?
                    .ok_or_else(|| {
                        format!("{field}.group: group {g:?} does not exist; create it or use a numeric gid")
                    })?
                    .gid
                    .as_raw(),
            };
        }
        if euid != 0 && (run_as.uid != euid || run_as.gid != egid) {
            return Err(format!(
                "{field}: running the child as uid {} gid {} needs root, but keysync runs as uid {euid}; \
                 run keysync as root or remove {field}.user/group",
                run_as.uid, run_as.gid
            ));
        }
        Ok(Some(run_as))
    }

    /// Sets the child's identity on `cmd` and makes `USER`/`LOGNAME`/`HOME` match it.
    pub fn apply(&self, cmd: &mut tokio::process::Command, env: &mut BTreeMap<String, String>) {
        cmd.uid(self.uid).gid(self.gid);
        if let Some((name, home)) = &self.user {
            env.insert("USER".into(), name.clone());
            env.insert("LOGNAME".into(), name.clone());
            env.insert("HOME".into(), home.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysync_and_vault_variables_are_never_passed() {
        assert!(withheld("VAULT_TOKEN") && withheld("BAO_TOKEN") && withheld("KEYSYNC_VAULT__ADDRESS"));
        assert!(!withheld("HOME"));
        assert!(check_pass_env(&["VAULT_TOKEN".into()]).unwrap_err().contains("never"));
        assert!(check_pass_env(&["KEYSYNC_*".into()]).is_err());
        assert!(check_pass_env(&["BAD NAME".into()]).unwrap_err().contains("not a variable name"));
        assert!(check_pass_env(&["HOME".into(), "APP_*".into(), "*".into()]).is_ok());
    }

    #[test]
    fn patterns_match_names_and_prefixes() {
        assert!(matches("LC_*", "LC_ALL") && matches("*", "ANY") && matches("HOME", "HOME"));
        assert!(!matches("HOME", "HOMEDIR") && !matches("LC_*", "LANG"));
    }

    #[test]
    fn nothing_to_switch_resolves_to_none_and_unknown_users_are_named() {
        assert_eq!(RunAs::resolve("exec", None, None).unwrap(), None);
        let err = RunAs::resolve("exec", Some("no-such-user-xyz"), None).unwrap_err();
        assert!(err.contains("exec.user") && err.contains("no-such-user-xyz"), "{err}");
        let err = RunAs::resolve("exec", None, Some("no-such-group-xyz")).unwrap_err();
        assert!(err.contains("exec.group") && err.contains("does not exist"), "{err}");
    }
}
