//! Security properties against a real server: file modes (final and while a temp file
//! exists), symlinks planted at sink and temp paths, the three policies in `policies/` as a
//! full allowed/denied matrix, and what hooks and exec children get (environment, user).

mod support;

use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, report, Admin, Agent, Cli, DevServer};

fn fresh_key() -> String {
    let n: u128 = rand::random();
    let key = format!("sk-{n:032x}");
    support::leak::register(&key);
    key
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

// ---------------------------------------------------------------------------------------
// File modes

#[tokio::test]
async fn rendered_files_are_0600_unless_configured_whatever_the_umask() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    cli.run_with_stdin(&["put", "openai"], &fresh_key());
    cli.run_with_stdin(&["put", "openai"], &fresh_key());
    let cfg = d.join("keysync.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"off\"\n\
             [[keys.openai.sinks]]\npath = \"{0}/out/raw.key\"\ncreate_dirs = true\ninclude_previous = true\n\
             [[keys.openai.sinks]]\npath = \"{0}/out/group.key\"\nmode = \"0640\"\n\
             [[sinks]]\npath = \"{0}/out/all.env\"\nformat = \"env\"\nkeys = [\"openai\"]\n\
             [[sinks]]\npath = \"{0}/out/inplace.json\"\nformat = \"json\"\nwrite = \"in_place\"\nkeys = [\"openai\"]\n\
             [[dir_sinks]]\npath = \"{0}/out/bundle\"\ncreate_dirs = true\nfiles = [{{ name = \"openai\", keys = [\"openai\"] }}]\n",
            d.display()
        ),
    )
    .unwrap();
    // keysync runs with umask 0: a file created with the default 0666 would show it.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keysync"));
    cmd.args(["--config", cfg.to_str().unwrap(), "--log-level", "trace", "run", "--once"])
        .env("VAULT_ADDR", &server.addr)
        .env("VAULT_TOKEN", &server.root_token)
        .env("HOME", d);
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    support::leak::check(&stderr, "trace log of run --once under umask 0");
    assert!(out.status.success(), "{stderr}");
    let o = d.join("out");
    let bundle_file = std::fs::canonicalize(o.join("bundle/openai")).unwrap();
    let expect = [
        (o.join("raw.key"), 0o600),
        (o.join("raw.key.previous"), 0o600),
        (o.join("group.key"), 0o640),
        (o.join("all.env"), 0o600),
        (o.join("inplace.json"), 0o600),
        (bundle_file, 0o600),
    ];
    for (path, want) in &expect {
        assert_eq!(mode(path), *want, "{}", path.display());
    }
    assert_eq!(mode(&o), 0o700, "create_dirs makes private directories");
    report::record(
        "Security",
        "modes of rendered files under umask 0 (raw, previous, env, json in place, dir sink file, one with mode = 0640)",
        expect.len(),
        "every file 0600 unless configured (0640 where configured); created directory 0700",
    );
}

/// A watcher lists the directory as fast as it can while the renderer replaces the file
/// over and over; no temp file it catches may ever allow group or other access.
#[test]
fn temp_files_are_never_readable_by_others_even_briefly() {
    // Under the usual umask 022 a temp file created with the default 0666 would be 0644 and
    // caught here. (The umask is process-wide, so this test leaves it alone; the render test
    // above runs keysync itself under umask 0.)
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("openai.key");
    let renders = report::scale(2_000, 50_000);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (stop, seen, bad, dir) = (stop.clone(), seen.clone(), bad.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if !name.ends_with(".tmp") {
                        continue;
                    }
                    if let Ok(meta) = std::fs::symlink_metadata(entry.path()) {
                        seen.fetch_add(1, Ordering::Relaxed);
                        if meta.mode() & 0o077 != 0 {
                            bad.lock().unwrap().push(format!("{name}: {:o}", meta.mode() & 0o7777));
                        }
                    }
                }
            }
        })
    };
    let owner = keysync::render::FileOwner::default();
    for i in 0..renders {
        let content = format!("sk-{i:032x}\n");
        keysync::render::write_atomic(&target, content.as_bytes(), 0o600, &owner).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let bad = bad.lock().unwrap().clone();
    let seen = seen.load(Ordering::Relaxed);
    assert!(bad.is_empty(), "temp files readable by others: {bad:?}");
    assert_eq!(mode(&target), 0o600);
    assert!(seen > 0, "the watcher never caught a temp file in {renders} renders; the check proved nothing");
    report::record(
        "Security",
        "temp files during atomic renders (mode 0600, umask 022), a watcher stat-ing the directory continuously",
        renders,
        &format!("{seen} stat()s of temp files caught mid-render, none with group/other bits; final file 0600"),
    );
}

// ---------------------------------------------------------------------------------------
// Symlinks

#[tokio::test]
async fn symlinks_planted_at_sink_and_temp_paths_do_not_redirect_writes() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    cli.run_with_stdin(&["put", "openai"], &fresh_key());
    std::fs::create_dir_all(d.join("out/bundle")).unwrap();
    let victim = d.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();

    // 1. A symlink at the sink path: refused, named, the target untouched.
    std::os::unix::fs::symlink(&victim, d.join("out/openai.key")).unwrap();
    let cfg = d.join("sink.toml");
    std::fs::write(
        &cfg,
        format!("[agent]\nlisten = \"off\"\n[[keys.openai.sinks]]\npath = \"{}/out/openai.key\"\n", d.display()),
    )
    .unwrap();
    let (code, _, stderr) = cli.run(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("out/openai.key") && stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(mode(&victim), 0o644, "the target's mode is untouched too");
    assert!(std::fs::symlink_metadata(d.join("out/openai.key")).unwrap().file_type().is_symlink());

    // 2. A symlink at a dir sink's predictable temp link `..data_tmp`, pointing at the victim:
    // keysync removes the planted link (never following it) and swaps in its own.
    std::os::unix::fs::symlink(&victim, d.join("out/bundle/..data_tmp")).unwrap();
    let cfg = d.join("dir.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"off\"\n[[dir_sinks]]\npath = \"{}/out/bundle\"\nfiles = [{{ name = \"openai\", keys = [\"openai\"] }}]\n",
            d.display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = cli.run(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!d.join("out/bundle/..data_tmp").exists(), "the planted link is gone");
    let data = std::fs::read_link(d.join("out/bundle/..data")).unwrap();
    assert!(data.to_string_lossy().starts_with(".."), "..data points into the bundle: {data:?}");
    assert!(std::fs::read_to_string(d.join("out/bundle/openai")).unwrap().starts_with("sk-"));

    report::record(
        "Security",
        "symlink planted at a sink path (pointing at another file)",
        1,
        "render refused with an error naming the path and the symlink; exit 1; the link's target unchanged (content and mode)",
    );
    report::record(
        "Security",
        "symlink planted at a dir sink's predictable ..data_tmp path",
        1,
        "the planted link is removed without being followed and replaced by keysync's own; the target unchanged",
    );
}

// ---------------------------------------------------------------------------------------
// Policy matrix

/// One operation a token may try, with the HTTP call that performs it.
struct Op {
    name: &'static str,
    method: &'static str,
    /// `{k}` is a fresh key made for this cell.
    path: &'static str,
    body: Option<Value>,
}

async fn call(admin: &Admin, token: &str, method: &str, path: &str, body: Option<&Value>) -> u16 {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/{path}", admin.addr);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(method.clone(), url).header("X-Vault-Token", token);
    if method == reqwest::Method::PATCH {
        req = req.header("Content-Type", "application/merge-patch+json");
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_allows_its_job_and_nothing_else() {
    let server = DevServer::start();
    let admin = server.admin();
    support::load_repo_policies(&admin).await;
    let roles = ["keysync-agent", "keysync-reader", "keysync-admin", "default-only"];
    let mut tokens = Vec::new();
    for role in roles {
        // An empty list would inherit the creator's (root) policies.
        let policies: Vec<&str> = if role == "default-only" { vec!["default"] } else { vec![role] };
        tokens.push(support::token_with_policies(&admin, &policies).await);
    }
    let data = |k: &str| json!({ "data": { "api_key": k } });
    let ops = vec![
        Op { name: "read a key version", method: "GET", path: "secret/data/keysync/{k}", body: None },
        Op { name: "read a key's metadata", method: "GET", path: "secret/metadata/keysync/{k}", body: None },
        Op { name: "list keys", method: "LIST", path: "secret/metadata/keysync", body: None },
        Op {
            name: "write a key version",
            method: "POST",
            path: "secret/data/keysync/{k}",
            body: Some(data("sk-matrix-new")),
        },
        Op {
            name: "patch custom_metadata (rotation state)",
            method: "PATCH",
            path: "secret/metadata/keysync/{k}",
            body: Some(json!({ "custom_metadata": { "current": "1" } })),
        },
        Op {
            name: "patch the change index",
            method: "PATCH",
            path: "secret/data/keysync/_index.d/root",
            body: Some(json!({ "data": { "{k}": { "current": 1 } } })),
        },
        Op {
            name: "replace the change index",
            method: "POST",
            path: "secret/data/keysync/_index.d/root",
            body: Some(json!({ "data": { "{k}": { "current": 9 } } })),
        },
        Op { name: "read the change index", method: "GET", path: "secret/data/keysync/_index.d/root", body: None },
        Op {
            name: "write an agent's render report (_acks)",
            method: "POST",
            path: "secret/data/keysync/_acks/agent-{k}",
            body: Some(json!({ "data": { "openai": "sha256:00" } })),
        },
        Op {
            name: "write another agent's render report (_acks)",
            method: "POST",
            path: "secret/data/keysync/_acks/someone-else",
            body: Some(json!({ "data": { "openai": "sha256:00" } })),
        },
        Op {
            name: "soft-delete versions",
            method: "POST",
            path: "secret/delete/keysync/{k}",
            body: Some(json!({ "versions": [1] })),
        },
        Op {
            name: "undelete versions",
            method: "POST",
            path: "secret/undelete/keysync/{k}",
            body: Some(json!({ "versions": [1] })),
        },
        Op {
            name: "destroy versions",
            method: "POST",
            path: "secret/destroy/keysync/{k}",
            body: Some(json!({ "versions": [1] })),
        },
        Op {
            name: "delete a key and all its history",
            method: "DELETE",
            path: "secret/metadata/keysync/{k}",
            body: None,
        },
        Op { name: "read outside the prefix", method: "GET", path: "secret/data/other/{k}", body: None },
        Op {
            name: "write outside the prefix",
            method: "POST",
            path: "secret/data/other/{k}",
            body: Some(data("sk-x")),
        },
        Op { name: "list the whole mount", method: "LIST", path: "secret/metadata", body: None },
        Op {
            name: "change the mount's KV config",
            method: "POST",
            path: "secret/config",
            body: Some(json!({ "max_versions": 1 })),
        },
        Op { name: "read ACL policies", method: "GET", path: "sys/policies/acl/keysync-admin", body: None },
        Op {
            name: "write an ACL policy",
            method: "PUT",
            path: "sys/policies/acl/evil",
            body: Some(json!({ "policy": "path \"*\" { capabilities = [\"sudo\"] }" })),
        },
        Op {
            name: "mount a secrets engine",
            method: "POST",
            path: "sys/mounts/evil",
            body: Some(json!({ "type": "kv" })),
        },
        Op { name: "create a child token", method: "POST", path: "auth/token/create", body: Some(json!({})) },
        Op { name: "look up its own token", method: "GET", path: "auth/token/lookup-self", body: None },
    ];
    // Allowed per role (agent, reader, admin, default-only), from policies/*.hcl.
    let y = true;
    let n = false;
    let expected: Vec<[bool; 4]> = vec![
        [y, y, y, n], // read a key version
        [y, y, y, n], // read metadata
        [y, y, y, n], // list keys
        [y, n, y, n], // write a version
        [y, n, y, n], // patch custom_metadata
        [y, n, y, n], // patch the index
        [y, n, y, n], // replace the index
        [y, y, y, n], // read the index
        [y, y, y, n], // write _acks: readers report renders
        [y, y, y, n], // ...under any agent id (README: known limit, no identity templating)
        [n, n, y, n], // soft-delete
        [n, n, y, n], // undelete
        [y, n, y, n], // destroy: a rotating agent destroys refused and retired keys' data
        [n, n, y, n], // delete metadata
        [n, n, n, n], // read outside the prefix
        [n, n, n, n], // write outside the prefix
        [n, n, n, n], // list the mount
        [n, n, n, n], // KV config
        [n, n, n, n], // read policies
        [n, n, n, n], // write a policy
        [n, n, n, n], // mount
        [n, n, n, n], // child token
        [y, y, y, y], // lookup-self (the default policy)
    ];
    assert_eq!(ops.len(), expected.len());
    // The index and every cell's key exist first, so "allowed" is never a 404.
    admin.write("secret/data/keysync/_index.d/root", json!({ "data": { "00": 1 } })).await;
    let mut failures = Vec::new();
    let mut cells = 0;
    for (i, op) in ops.iter().enumerate() {
        for (r, role) in roles.iter().enumerate() {
            let k = format!("m{i}-{r}");
            for v in 1..=2 {
                admin.write(&format!("secret/data/keysync/{k}"), data(&format!("sk-matrix-{k}-v{v}-0123456789"))).await;
                admin.write(&format!("secret/data/other/{k}"), data(&format!("sk-other-{k}-v{v}-0123456789"))).await;
            }
            let path = op.path.replace("{k}", &k);
            let body =
                op.body.as_ref().map(|b| serde_json::from_str::<Value>(&b.to_string().replace("{k}", &k)).unwrap());
            let status = call(&admin, &tokens[r], op.method, &path, body.as_ref()).await;
            let allowed = (200..300).contains(&status);
            let denied = status == 403;
            cells += 1;
            let want = expected[i][r];
            if !(allowed && want || denied && !want) {
                failures.push(format!(
                    "{role} / {}: HTTP {status}, want {}",
                    op.name,
                    if want { "allowed (2xx)" } else { "denied (403)" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "policy matrix:\n{}", failures.join("\n"));
    for (i, op) in ops.iter().enumerate() {
        let cell = |r: usize| if expected[i][r] { "allowed" } else { "denied" };
        report::record(
            "Least privilege",
            &format!("{} (`{} {}`)", op.name, op.method, op.path.replace("{k}", "NAME")),
            4,
            &format!("agent {}, reader {}, admin {}, default policy only {}", cell(0), cell(1), cell(2), cell(3)),
        );
    }

    // Each role's job, done by keysync itself with that role's token.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin_cli = Cli::new(&server, &tokens[2], d);
    admin_cli.run_with_stdin(&["put", "jobkey"], &fresh_key());
    admin_cli.run_with_stdin(&["put", "jobkey"], &fresh_key());
    admin_cli.ok(&["rollback", "jobkey"]);
    admin_cli.ok(&["disable", "jobkey"]);
    admin_cli.ok(&["enable", "jobkey"]);
    admin_cli.ok(&["destroy", "jobkey", "--version", "2", "--yes"]);
    admin_cli.ok(&["delete", "jobkey"]);
    admin_cli.ok(&["undelete", "jobkey"]);
    let agent_cli = Cli::new(&server, &tokens[0], d);
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"off\"\nreport_renders = true\n[keys.jobkey.provider]\ntype = \"generate\"\n[[keys.jobkey.sinks]]\npath = \"{}/jobkey.key\"\n",
            d.display()
        ),
    )
    .unwrap();
    let out = agent_cli.json(&["--config", cfg.to_str().unwrap(), "rotate", "jobkey", "--force"]);
    assert_eq!(out[0]["outcome"]["result"], "rotated", "the agent policy rotates: {out}");
    let reader_cli = Cli::new(&server, &tokens[1], d);
    reader_cli.ok(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert!(!std::fs::read_to_string(d.join("jobkey.key")).unwrap().trim().is_empty(), "the reader rendered the key");
    let (code, _, stderr) = reader_cli.run_with_stdin(&["put", "jobkey"], &fresh_key());
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("keysync-reader") && stderr.contains("jobkey"),
        "the denial names the policy and path: {stderr}"
    );
    let (code, _, stderr) = agent_cli.run(&["delete", "jobkey"]);
    assert_ne!(code, 0, "a rotating agent cannot soft-delete keys: {stderr}");
    report::record(
        "Least privilege",
        "each role's job through keysync with that role's token",
        3,
        "admin: put, rollback, disable, enable, destroy, delete, undelete; agent: rotate (generate provider); \
         reader: run --once renders; reader put and agent delete are refused naming the policy",
    );
    report::record("Least privilege", "matrix cells asserted against the server", cells, "every cell as listed above");
}

// ---------------------------------------------------------------------------------------
// Hooks and exec: environment and privilege drop

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A directory everyone can enter, with a subdirectory anyone can write (for a child that
/// runs as `nobody`).
fn shared_dirs() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = dir.path().join("drop");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    (dir, shared)
}

fn env_of(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What a child wrote about itself: `env`, then `id -u`, `id -g`, `id -G` on the last three lines.
const DUMP: &str = "env > \"$OUT.tmp\"; echo \"uid=$(id -u)\" >> \"$OUT.tmp\"; echo \"gid=$(id -g)\" >> \"$OUT.tmp\"; echo \"groups=$(id -G)\" >> \"$OUT.tmp\"; mv \"$OUT.tmp\" \"$OUT\"";

fn start_agent(server: &DevServer, cfg: &Path, args: &[&str], d: &Path) -> Agent {
    // Extra variables in keysync's own environment that a child must not see.
    std::env::set_var("SECRET_ID_TEST_ONLY", "s.this-is-not-for-children-0123456789");
    std::env::set_var("APP_MODE", "production");
    std::env::set_var("KEYSYNC_AGENT_ID", "env-test-agent");
    Agent::start(cfg, &server.addr, &server.root_token, args, d)
}

#[tokio::test]
async fn hooks_and_exec_children_get_a_minimal_env_and_drop_privileges() {
    let server = DevServer::start();
    let (dir, dropdir) = shared_dirs();
    let d = dir.path();
    let cli = Cli::new(&server, &server.root_token, d);
    let key = fresh_key();
    cli.run_with_stdin(&["put", "openai"], &key);
    let user = if is_root() { "user = \"nobody\"\n" } else { "" };
    let hook_out = dropdir.join("hook.env");
    let hook_script = DUMP.replace("$OUT", &hook_out.display().to_string());
    let cfg = d.join("hook.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"off\"\npoll_interval = \"1s\"\n[[keys.openai.sinks]]\npath = \"{}/out/openai.key\"\ncreate_dirs = true\n\
             [keys.openai.on_change]\ncommand = [\"sh\", \"-c\", {hook_script:?}]\npass_env = [\"APP_*\"]\n{user}",
            d.display()
        ),
    )
    .unwrap();
    let agent = start_agent(&server, &cfg, &["run"], d);
    assert!(eventually(Duration::from_secs(15), || hook_out.exists()).await, "hook never ran: {}", agent.log_text());
    let hook = env_of(&std::fs::read_to_string(&hook_out).unwrap());
    drop(agent);

    let exec_out = dropdir.join("exec.env");
    let exec_script = format!(
        "{}; trap 'exit 0' TERM; while true; do sleep 0.1; done",
        DUMP.replace("$OUT", &exec_out.display().to_string())
    );
    let cfg = d.join("exec.toml");
    std::fs::write(
        &cfg,
        format!("[agent]\nlisten = \"off\"\npoll_interval = \"1s\"\n[exec]\nenv = {{ OPENAI_API_KEY = \"openai\" }}\npass_env = [\"APP_*\"]\n{user}"),
    )
    .unwrap();
    let mut agent = start_agent(&server, &cfg, &["exec", "--", "sh", "-c", &exec_script], d);
    assert!(eventually(Duration::from_secs(15), || exec_out.exists()).await, "child never ran: {}", agent.log_text());
    let exec = env_of(&std::fs::read_to_string(&exec_out).unwrap());
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    drop(agent);

    for (who, env) in [("hook", &hook), ("exec child", &exec)] {
        for var in env.keys() {
            assert!(
                !var.starts_with("VAULT_")
                    && !var.starts_with("BAO_")
                    && (!var.starts_with("KEYSYNC_") || who == "hook"),
                "{who} got {var}"
            );
        }
        assert!(!env.contains_key("SECRET_ID_TEST_ONLY"), "{who} got a variable it did not ask for");
        assert_eq!(env.get("APP_MODE").map(String::as_str), Some("production"), "{who}: pass_env = [\"APP_*\"]");
        assert!(env.contains_key("PATH"), "{who} has PATH");
        if is_root() {
            assert_eq!(env["uid"], "65534", "{who} runs as nobody");
            assert_eq!(env["gid"], "65534", "{who} runs with nobody's group");
            assert_eq!(env["groups"], "65534", "{who} keeps no supplementary group (root's 0 is gone)");
        }
    }
    let hook_vars: Vec<&str> = hook.keys().map(String::as_str).filter(|k| k.starts_with("KEYSYNC_")).collect();
    assert_eq!(
        hook_vars,
        ["KEYSYNC_FINGERPRINT", "KEYSYNC_KEY", "KEYSYNC_KEYS", "KEYSYNC_VERSION"],
        "the hook gets only its four"
    );
    assert!(!hook.values().any(|v| v.contains(&key)), "the hook never gets the key");
    assert_eq!(exec.get("OPENAI_API_KEY"), Some(&key), "the exec child gets its key");
    if is_root() {
        assert_eq!(exec.get("USER").map(String::as_str), Some("nobody"));
        assert_eq!(exec.get("HOME").map(String::as_str), Some("/nonexistent"));
    }
    let hook_list: Vec<&str> =
        hook.keys().map(String::as_str).filter(|k| !["uid", "gid", "groups"].contains(k)).collect();
    let exec_list: Vec<&str> =
        exec.keys().map(String::as_str).filter(|k| !["uid", "gid", "groups"].contains(k)).collect();
    let identity =
        if is_root() { "as nobody (uid/gid 65534, no supplementary groups)" } else { "(not root: no user switch)" };
    report::record(
        "Security",
        "environment and identity of an on_change hook (keysync has VAULT_TOKEN, VAULT_ADDR, a secret-id-like variable, KEYSYNC_AGENT_ID, APP_MODE)",
        1,
        &format!("hook saw only {} {identity}; no VAULT_*, no key, no unlisted variable", hook_list.join(", ")),
    );
    report::record(
        "Security",
        "environment and identity of a `keysync exec` child (same keysync environment)",
        1,
        &format!("child saw only {} {identity}; no VAULT_*/KEYSYNC_*", exec_list.join(", ")),
    );
}

/// Switching users needs root: without it keysync must refuse clearly rather than run the
/// child as itself. Run as root, the test starts keysync as `nobody` to see that refusal.
#[tokio::test]
async fn a_user_switch_without_root_is_refused_clearly() {
    let (dir, _) = shared_dirs();
    let cfg = dir.path().join("k.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nlisten = \"off\"\n[[keys.openai.sinks]]\npath = \"{}/drop/o.key\"\n[keys.openai.on_change]\ncommand = [\"true\"]\nuser = \"root\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keysync"));
    cmd.args(["--config", cfg.to_str().unwrap(), "check-config"]).env("HOME", dir.path()).current_dir(dir.path());
    if is_root() {
        use std::os::unix::process::CommandExt;
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("keys.openai.on_change") && stderr.contains("needs root") && stderr.contains("remove"),
        "{stderr}"
    );
    report::record(
        "Security",
        "hook with user = \"root\" while keysync runs as uid 65534",
        1,
        "refused at config load: exit 2, names keys.openai.on_change, says it needs root and how to fix",
    );
}

#[test]
fn the_leak_check_finds_nine_characters_of_a_secret_and_passes_eight() {
    let secret = "sk-leakcheck-Zq81xYw3Vb7T";
    support::leak::register(secret);
    support::leak::check("a mask sk-leakc…vb7T shows at most eight", "a masked line");
    let nine = &secret[13..22];
    let caught = std::panic::catch_unwind(|| support::leak::check(&format!("log: ää {nine} ää"), "a leaking line"));
    assert!(caught.is_err(), "nine characters of a known secret must fail the check");
}
