//! Bad input, case by case: broken configs, wrong command lines, bad provider answers and
//! damaged Vault data. Every case runs the real `keysync` binary against a real dev server
//! (and, for provider answers, a local server following OpenAI's documented Admin API) and
//! asserts three things: the exit code, that the error names the offending thing and how to
//! fix it, and that Vault (custom_metadata, versions and every version's data of the keys
//! involved, plus the change index) and the files on disk are unchanged.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use support::{report, Admin, Cli, DevServer};

/// One bad input and what keysync must answer.
struct Case {
    name: String,
    /// Config file text, if the case has one (written to `cfg/<n>.toml`).
    config: Option<String>,
    args: Vec<String>,
    stdin: String,
    env: Vec<(String, String)>,
    code: i32,
    /// Every one of these must appear in the error text (what is wrong and how to fix it).
    says: Vec<String>,
    /// Provider failures: whether the rotation intent of `openai` must be recorded afterwards
    /// (the provider may hold a key keysync could not take) or cleared (nothing was minted).
    intent_after: Option<bool>,
}

impl Case {
    fn new(name: &str, args: &[&str], code: i32, says: &[&str]) -> Case {
        Case {
            name: name.into(),
            config: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdin: String::new(),
            env: Vec::new(),
            code,
            says: says.iter().map(|s| s.to_string()).collect(),
            intent_after: None,
        }
    }

    fn config(mut self, text: &str) -> Case {
        self.config = Some(text.into());
        self
    }

    fn stdin(mut self, text: &str) -> Case {
        support::leak::register(text);
        self.stdin = text.into();
        self
    }

    fn intent_after(mut self, recorded: bool) -> Case {
        self.intent_after = Some(recorded);
        self
    }

    fn env(mut self, k: &str, v: &str) -> Case {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// The server, a work directory with pre-rendered files, and the keys every case checks.
struct World {
    _server: DevServer,
    admin: Admin,
    dir: tempfile::TempDir,
    cli: Cli,
    keys: Vec<String>,
}

impl World {
    async fn new() -> World {
        let server = DevServer::start();
        let admin = server.admin();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cfg")).unwrap();
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        let cli = Cli::new(&server, &server.root_token, dir.path());
        World { _server: server, admin, dir, cli, keys: Vec::new() }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// A key with `n` versions (the last current, the one before previous) written through
    /// keysync.
    fn put_versions(&mut self, name: &str, n: u32) {
        for _ in 0..n {
            let key = fresh_key();
            support::leak::register(&key);
            let (code, _, stderr) = self.cli.run_with_stdin(&["put", name], &key);
            assert_eq!(code, 0, "{stderr}");
        }
        self.keys.push(name.into());
    }

    /// A key written straight into Vault (as another tool would), with `custom_metadata`.
    async fn put_raw(&mut self, name: &str, data: Value, custom_metadata: Value) {
        self.admin.write(&format!("secret/data/keysync/{name}"), json!({ "data": data })).await;
        self.admin
            .write(&format!("secret/metadata/keysync/{name}"), json!({ "custom_metadata": custom_metadata }))
            .await;
        self.keys.push(name.into());
    }

    /// Everything Vault holds about the world's keys: metadata (minus `updated_time`, which
    /// a failed mint bumps by setting and clearing its intent marker), every version's data,
    /// and the change index.
    async fn vault(&self) -> Value {
        let mut out = serde_json::Map::new();
        // The legacy index secret and every secret of the sharded index (root and shards).
        let index: Vec<String> = std::iter::once("_index".to_string())
            .chain(
                self.admin.list("secret/metadata/keysync/_index.d").await.into_iter().map(|n| format!("_index.d/{n}")),
            )
            .collect();
        for name in self.keys.iter().map(String::as_str).chain(index.iter().map(String::as_str)) {
            let (status, mut meta) = self.admin.try_read(&format!("secret/metadata/keysync/{name}")).await;
            if status == 404 {
                out.insert(name.into(), Value::Null);
                continue;
            }
            assert_eq!(status, 200, "{name}: {meta}");
            let meta = meta["data"].take();
            let mut versions = serde_json::Map::new();
            for v in meta["versions"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                let (_, data) = self.admin.try_read(&format!("secret/data/keysync/{name}?version={v}")).await;
                versions.insert(v, data["data"]["data"].clone());
            }
            let mut meta = meta;
            meta.as_object_mut().unwrap().remove("updated_time");
            // The rotation intent is checked on its own (`Case::intent_after`).
            if let Some(custom) = meta["custom_metadata"].as_object_mut() {
                custom.remove("intent");
            }
            out.insert(name.into(), json!({ "metadata": meta, "data": versions }));
        }
        Value::Object(out)
    }

    /// Every file under `out/`: path → (mode, owner, bytes).
    fn disk(&self) -> BTreeMap<PathBuf, (u32, u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.d().join("out")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    stack.push(path.clone());
                    out.insert(path, (meta.mode(), meta.uid(), Vec::new()));
                } else if meta.file_type().is_symlink() {
                    out.insert(
                        path.clone(),
                        (
                            meta.mode(),
                            meta.uid(),
                            std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes(),
                        ),
                    );
                } else {
                    out.insert(path.clone(), (meta.mode(), meta.uid(), std::fs::read(&path).unwrap()));
                }
            }
        }
        out
    }

    /// Runs every case; panics with all failures listed at the end.
    async fn run(&self, group: &str, cases: Vec<Case>) -> usize {
        let mut failures = Vec::new();
        let n = cases.len();
        for (i, case) in cases.into_iter().enumerate() {
            let vault_before = self.vault().await;
            let disk_before = self.disk();
            let mut args = Vec::new();
            if let Some(text) = &case.config {
                let path = self.d().join(format!("cfg/{group}-{i}.toml"));
                std::fs::write(&path, text.replace("{D}", &self.d().display().to_string())).unwrap();
                args.extend(["--config".to_string(), path.display().to_string()]);
            }
            args.extend(case.args.iter().map(|a| a.replace("{D}", &self.d().display().to_string())));
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = self.cli.command(&arg_refs);
            for (k, v) in &case.env {
                cmd.env(k, v);
            }
            let out = cmd.write_stdin(case.stdin.clone()).output().expect("run keysync");
            let code = out.status.code().unwrap_or(-1);
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            support::leak::check(&stdout, &format!("stdout of case {}", case.name));
            support::leak::check(&stderr, &format!("stderr of case {}", case.name));
            // The message a person reads: stdout and stderr without the trace log lines.
            let said: String = stdout
                .lines()
                .chain(stderr.lines().filter(|l| !l.starts_with(|c: char| c.is_ascii_digit() || c == '\u{1b}')))
                .collect::<Vec<_>>()
                .join("\n");
            let mut problems = Vec::new();
            if said.contains("panicked") {
                problems.push("panicked".to_string());
            }
            if code != case.code {
                problems.push(format!("exit {code}, want {}", case.code));
            }
            for s in &case.says {
                if !said.contains(s.as_str()) {
                    problems.push(format!("message lacks {s:?}"));
                }
            }
            if let Some(want) = case.intent_after {
                let meta = self.admin.read("secret/metadata/keysync/openai").await;
                let recorded = meta["data"]["custom_metadata"]["intent"].is_string();
                if recorded != want {
                    problems.push(format!("rotation intent recorded: {recorded}, want {want}"));
                }
            }
            let vault_after = self.vault().await;
            if vault_after != vault_before {
                let changed: Vec<String> = vault_before
                    .as_object()
                    .unwrap()
                    .iter()
                    .filter(|(k, v)| vault_after.get(k.as_str()) != Some(v))
                    .map(|(k, v)| format!("{k}: {v} -> {}", vault_after[k.as_str()]))
                    .collect();
                problems.push(format!("Vault changed: {}", changed.join("; ")));
            }
            if self.disk() != disk_before {
                problems.push("files on disk changed".into());
            }
            if problems.is_empty() {
                let dir = self.d().display().to_string();
                let first = said
                    .lines()
                    .map(str::trim)
                    .find(|l| l.contains("error") || l.contains("unexpected"))
                    .or_else(|| said.lines().find(|l| !l.trim().is_empty()))
                    .unwrap_or("")
                    .trim()
                    .replace(&dir, "$DIR")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let vault = match case.intent_after {
                    Some(true) => "Vault unchanged but for the rotation intent (a key may be orphaned at the provider)",
                    Some(false) => "Vault unchanged (intent cleared: nothing minted)",
                    None => "Vault unchanged",
                };
                report::record(
                    "Bad input",
                    &format!("{group}: {}", case.name),
                    1,
                    &format!("exit {code}; says \"{}\"; {vault}; disk unchanged", md_cell(&first)),
                );
            } else {
                failures.push(format!("[{group}] {}: {}\n--- said:\n{said}\n---", case.name, problems.join("; ")));
            }
        }
        assert!(failures.is_empty(), "{} of {n} cases failed:\n{}", failures.len(), failures.join("\n"));
        n
    }
}

/// A random API key that shares no 9-character run with key names or messages.
fn fresh_key() -> String {
    let n: u128 = rand::random();
    format!("sk-{n:032x}")
}

/// A message fit for one Markdown table cell.
fn md_cell(text: &str) -> String {
    let t: String = text.chars().take(220).collect();
    t.replace('|', "\\|")
}

/// A config that would render `openai` to `out/openai.key` if it were accepted, with `extra`
/// added (bad on purpose).
fn sink_config(extra: &str) -> String {
    format!("[agent]\nlisten = \"off\"\n[[keys.openai.sinks]]\npath = \"{{D}}/out/openai.key\"\n{extra}")
}

/// Each config case is tried with both a command that writes to Vault (`put`) and one that
/// writes files (`run --once`): neither may act on a config that is refused.
fn config_cases() -> Vec<Case> {
    let table: Vec<(&str, String, Vec<&str>)> = vec![
        ("bad TOML", "[agent\npoll_interval = \"1s\"\n".into(), vec!["invalid TOML", "line 1"]),
        (
            "unknown field",
            "[agent]\npoll_intervall = \"1s\"\n[[keys.openai.sinks]]\npath = \"{D}/out/openai.key\"\n".into(),
            vec!["agent.poll_intervall", "unknown field; remove it or fix its spelling"],
        ),
        ("unknown section", sink_config("[sinkz]\na = 1\n"), vec!["sinkz", "unknown field"]),
        (
            "wrong type (number for a duration)",
            "[agent]\npoll_interval = 5\n".into(),
            vec!["poll_interval", "like \"30s\""],
        ),
        (
            "wrong type (word for a bool)",
            sink_config("[agent]\nrotate = \"maybe\"\n").replace("[agent]\nlisten = \"off\"\n", ""),
            vec!["agent.rotate", "maybe", "bool"],
        ),
        (
            "unparsable duration",
            "[agent]\npoll_interval = \"10 parsecs\"\n".into(),
            vec!["poll_interval", "10 parsecs", "like \"30s\""],
        ),
        (
            "duration too short",
            "[agent]\npoll_interval = \"1ms\"\n".into(),
            vec!["agent.poll_interval", "at least 100ms"],
        ),
        (
            "bad cron field",
            "[keys.openai.provider]\ntype = \"generate\"\n[keys.openai.rotation]\nschedule = \"61 * * * *\"\n".into(),
            vec!["keys.openai.rotation", "schedule", "61 * * * *"],
        ),
        (
            "interval and schedule both",
            "[keys.openai.provider]\ntype = \"generate\"\n[keys.openai.rotation]\ninterval = \"7d\"\nschedule = \"0 3 * * 1\"\n"
                .into(),
            vec!["keys.openai.rotation", "interval", "schedule"],
        ),
        (
            "sink path traversal",
            "[[keys.openai.sinks]]\npath = \"{D}/out/../../etc/keysync-test\"\n".into(),
            vec!["keys.openai.sinks[0]", "contains `..`", "without it"],
        ),
        (
            "relative sink path",
            "[[keys.openai.sinks]]\npath = \"out/openai.key\"\n".into(),
            vec!["keys.openai.sinks[0]", "relative; write an absolute path"],
        ),
        ("mode string not octal", sink_config("mode = \"rw-------\"\n"), vec!["mode", "not an octal mode", "\"0600\""]),
        ("world-writable mode", sink_config("mode = \"0666\"\n"), vec!["mode", "world-writable", "0644"]),
        ("setuid mode", sink_config("mode = \"4600\"\n"), vec!["mode", "setuid", "0600"]),
        (
            "two sinks, one path",
            sink_config("[[sinks]]\npath = \"{D}/out/openai.key\"\nkeys = [\"openai\"]\n"),
            vec!["sinks[0]", "written by another sink too", "its own path"],
        ),
        (
            "template sink without a template",
            "[[sinks]]\npath = \"{D}/out/t.yaml\"\nformat = \"template\"\nkeys = [\"openai\"]\n".into(),
            vec!["sinks[0]", "template"],
        ),
        (
            "unknown sink format",
            sink_config("format = \"yaml\"\n"),
            vec!["keys.openai.sinks[0].format", "\"yaml\" is not a valid value", "raw, env, json, template"],
        ),
        (
            "invalid key name",
            "[[keys.\"Open AI\".sinks]]\npath = \"{D}/out/x.key\"\n".into(),
            vec!["keys.Open AI", "lowercase letters"],
        ),
        (
            "exec env variable name",
            "[exec]\nenv = { \"1BAD\" = \"openai\" }\n".into(),
            vec!["exec.env", "1BAD", "not a valid environment variable name"],
        ),
        (
            "exec pass_env asks for the Vault token",
            "[exec]\nenv = { OPENAI_API_KEY = \"openai\" }\npass_env = [\"VAULT_TOKEN\"]\n".into(),
            vec!["exec.pass_env", "VAULT_TOKEN", "remove it"],
        ),
        (
            "hook signal without pid_file",
            sink_config("[keys.openai.on_change]\nsignal = \"SIGHUP\"\n"),
            vec!["keys.openai.on_change", "signal and pid_file go together"],
        ),
        (
            "hook user that does not exist",
            sink_config("[keys.openai.on_change]\ncommand = [\"true\"]\nuser = \"no-such-user-ks\"\n"),
            vec!["keys.openai.on_change.user", "no-such-user-ks", "does not exist"],
        ),
        (
            "unknown signal name",
            sink_config("[keys.openai.on_change]\nsignal = \"SIGBOGUS\"\npid_file = \"/run/x.pid\"\n"),
            vec!["keys.openai.on_change.signal", "SIGBOGUS", "SIGHUP"],
        ),
        ("kv.prefix traversal", "[kv]\nprefix = \"a/../b\"\n".into(), vec!["kv.prefix", "not a valid path segment"]),
        ("vault.address not a URL", "[vault]\naddress = \"not a url\"\n".into(), vec!["vault.address"]),
        (
            "unknown auth method",
            "[vault.auth]\nmethod = \"ldap\"\n".into(),
            vec!["vault.auth.method", "ldap", "token, approle, jwt, kubernetes"],
        ),
        (
            "approle without secret_id_file",
            "[vault.auth]\nmethod = \"approle\"\nrole_id_file = \"/r\"\n".into(),
            vec!["vault.auth.secret_id_file", "required field is missing; add it"],
        ),
        (
            "multi-key list on a per-key sink",
            sink_config("format = \"env\"\nkeys = [\"openai\", \"other\"]\n"),
            vec!["keys.openai.sinks[0].keys", "put multi-key sinks in [[sinks]]"],
        ),
        ("agent.listen not host:port", "[agent]\nlisten = \"nowhere\"\n".into(), vec!["agent.listen", "host:port"]),
        (
            "dir sink written in place",
            "[[dir_sinks]]\npath = \"{D}/out/bundle\"\nwrite = \"in_place\"\nfiles = [{ name = \"openai\", keys = [\"openai\"] }]\n"
                .into(),
            vec!["dir_sinks[0]", "write", "remove `write`"],
        ),
        (
            "command provider without a command",
            "[keys.openai.provider]\ntype = \"command\"\ncommand = []\n".into(),
            vec!["keys.openai.provider", "command"],
        ),
    ];
    let mut cases = Vec::new();
    for (name, text, says) in table {
        cases.push(
            Case::new(&format!("{name} (put)"), &["put", "openai"], 2, &says)
                .config(&text)
                .stdin(&format!("sk-must-not-land-{}", support::unique("x"))),
        );
        cases.push(Case::new(&format!("{name} (run --once)"), &["run", "--once"], 2, &says).config(&text));
    }
    cases.push(
        Case::new(
            "environment override with a typo",
            &["run", "--once"],
            2,
            &["KEYSYNC_AGENT__POLL_INTERVALL", "poll_intervall", "fix its spelling"],
        )
        .config(&sink_config(""))
        .env("KEYSYNC_AGENT__POLL_INTERVALL", "1s"),
    );
    cases.push(
        Case::new("explicit config file missing", &["run", "--once"], 2, &["not found", "--config"])
            .env("KEYSYNC_CONFIG", "/nonexistent/keysync.toml"),
    );
    cases
}

fn cli_cases() -> Vec<Case> {
    vec![
        Case::new("bad key name", &["put", "Bad/Name"], 2, &["invalid key name \"Bad/Name\"", "lowercase letters"])
            .stdin("sk-bad-name-0123456789abcdef"),
        Case::new("key name with ..", &["disable", "a..b"], 2, &["invalid key name \"a..b\""]),
        Case::new("missing key name", &["put"], 2, &["<NAME>"]),
        Case::new("missing file list", &["verify"], 2, &["<FILE>"]),
        Case::new(
            "--version out of range",
            &["get", "openai", "--version", "99"],
            2,
            &["--version 99", "openai", "1 to 2"],
        ),
        Case::new("--version negative", &["get", "openai", "--version", "-1"], 2, &["'-1'", "Usage: keysync get"]),
        Case::new("--version not a number", &["destroy", "openai", "--version", "two", "--yes"], 2, &["two"]),
        Case::new("destroy without --yes", &["destroy", "openai", "--version", "1"], 2, &["permanent", "add --yes"]),
        Case::new("destroy the current version", &["destroy", "openai", "--version", "2", "--yes"], 1, &["current"]),
        Case::new("--field without =", &["put", "openai", "--field", "novalue"], 2, &["--field", "NAME=VALUE"])
            .stdin("sk-field-test-0123456789abcdef"),
        Case::new("--field api_key", &["put", "openai", "--field", "api_key=x"], 2, &["api_key", "--file or stdin"])
            .stdin("sk-field-test-0123456789abcdef"),
        Case::new("empty key on stdin", &["put", "openai"], 2, &["no key given for openai", "stdin is empty"]),
        Case::new("key with a space", &["put", "openai"], 1, &["openai", "whitespace", "pass the bare key"])
            .stdin("sk-has space-0123456789abcdef"),
        Case::new("key with an inner newline", &["put", "openai"], 1, &["openai", "whitespace", "pass the bare key"])
            .stdin("sk-line-one-01234567\nsk-line-two-89abcdef\n"),
        Case::new("key too long", &["put", "openai"], 1, &["openai", "bytes", "far shorter"]).stdin(&"k".repeat(9000)),
        Case::new("key file missing", &["put", "openai", "--file", "{D}/no-such.key"], 2, &["no-such.key"]),
        Case::new("unknown subcommand", &["frobnicate"], 2, &["frobnicate"]),
        Case::new("rollback without a previous key", &["rollback", "stable"], 1, &["stable", "previous"]),
        Case::new("get a key that does not exist", &["get", "nosuchkey"], 1, &["nosuchkey"]),
        Case::new("bad --log-level", &["--log-level", "loud", "list"], 2, &["--log-level", "loud", "trace"]),
        Case::new("bad --output", &["list", "--output", "xml"], 2, &["xml", "table"]),
        Case::new("import file that is not JSON", &["import", "{D}/bad.json"], 2, &["bad.json", "not valid JSON"]),
    ]
}

/// A local server following OpenAI's documented Admin API route for creating a project
/// service account; the project id picks how it misbehaves.
mod bad_provider {
    use axum::extract::Path;
    use axum::routing::post;
    use axum::Router;

    async fn create(Path(project): Path<String>) -> (axum::http::StatusCode, String) {
        let ok = axum::http::StatusCode::OK;
        let account = |value: serde_json::Value| {
            serde_json::json!({
                "object": "organization.project.service_account", "id": "svc_acct_1", "name": "x", "role": "member",
                "created_at": 1711471533,
                "api_key": {"object": "organization.project.service_account.api_key", "value": value,
                            "name": "Secret Key", "created_at": 1711471533, "id": "key_1"}
            })
            .to_string()
        };
        match project.as_str() {
            "proj_html" => (ok, "<html><body>Bad gateway</body></html>".into()),
            "proj_big" => (ok, format!("{{\"id\":\"svc_acct_1\",\"pad\":\"{}\"}}", "x".repeat(10 * 1024 * 1024))),
            "proj_empty" => (ok, account(serde_json::json!(""))),
            "proj_space" => (ok, account(serde_json::json!("sk-svcacct-with space-0123456789"))),
            "proj_newline" => (ok, account(serde_json::json!("sk-svcacct-line-0123456789\nmore"))),
            "proj_types" => (ok, serde_json::json!({"id": 5, "api_key": {"value": 7}}).to_string()),
            "proj_slow" => {
                tokio::time::sleep(std::time::Duration::from_secs(4)).await;
                (ok, account(serde_json::json!("sk-svcacct-too-late-0123456789")))
            }
            "proj_500" => (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":{"message":"upstream broke","type":"server_error"}}"#.into(),
            ),
            _ => (axum::http::StatusCode::NOT_FOUND, "{}".into()),
        }
    }

    async fn list() -> String {
        r#"{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}"#.into()
    }

    pub async fn start() -> String {
        let app = Router::new().route("/v1/organization/projects/{project}/service_accounts", post(create).get(list));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn provider_cases(base: &str) -> Vec<Case> {
    let command = |name: &str, script: &str, says: &[&str]| {
        Case::new(&format!("command provider: {name}"), &["rotate", "openai", "--force"], 1, says).config(&format!(
            "[keys.openai.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {script:?}]\ntimeout = \"1s\"\n"
        ))
    };
    let openai = |name: &str, project: &str, says: &[&str]| {
        Case::new(&format!("OpenAI Admin API: {name}"), &["rotate", "openai", "--force"], 1, says).config(&format!(
            "[keys.openai.provider]\ntype = \"openai\"\nproject_id = \"{project}\"\nadmin_key_file = \"{{D}}/admin.key\"\n\
             base_url = \"{base}\"\ntimeout = \"1s\"\n"
        ))
    };
    let maybe = "may hold a key";
    vec![
        command("empty key", r#"printf '{"api_key": ""}'"#, &["openai", "api_key", maybe]).intent_after(true),
        command("space in key", r#"printf '{"api_key": "sk-cmd with space-0123456789"}'"#, &["openai", "whitespace", maybe]).intent_after(true),
        command("newline in key", r#"printf '{"api_key": "sk-cmd-0123456789\\nabc"}'"#, &["openai", "whitespace", maybe]).intent_after(true),
        command("not JSON", "echo 'Traceback (most recent call last):'", &["openai", "invalid output", maybe]).intent_after(true),
        command("wrong type", r#"printf '{"api_key": 42}'"#, &["openai", "api_key", maybe]).intent_after(true),
        command("10 MB of output", "head -c 10485760 /dev/zero | tr '\\0' x", &["openai", "more than 1048576 bytes", maybe]).intent_after(true),
        command("slower than its timeout", "sleep 5", &["openai", "did not finish within", maybe]).intent_after(true),
        command("exits non-zero", "echo 'quota exceeded' >&2; exit 3", &["openai", "exited with", "quota exceeded"]).intent_after(false),
        openai("non-JSON answer", "proj_html", &["openai", "OpenAI Admin API", "not JSON", maybe]).intent_after(true),
        openai("10 MB answer", "proj_big", &["openai", "larger than 1048576 bytes", maybe]).intent_after(true),
        openai("empty api_key.value", "proj_empty", &["openai", "lacks id or api_key.value", maybe]).intent_after(true),
        openai("space in api_key.value", "proj_space", &["openai", "contains whitespace", maybe]).intent_after(true),
        openai("newline in api_key.value", "proj_newline", &["openai", "contains whitespace", maybe]).intent_after(true),
        openai("wrong types", "proj_types", &["openai", "lacks id or api_key.value", maybe]).intent_after(true),
        openai("slower than the timeout", "proj_slow", &["openai", "OpenAI Admin API", "timed out", maybe]).intent_after(true),
        openai("HTTP 500", "proj_500", &["openai", "HTTP 500", "upstream broke"]).intent_after(false),
        Case::new("OpenAI Admin API: connection refused", &["rotate", "openai", "--force"], 1, &["openai", "cannot connect; check base_url"])
            .config(&format!(
                "[keys.openai.provider]\ntype = \"openai\"\nproject_id = \"proj_x\"\nadmin_key_file = \"{{D}}/admin.key\"\n\
                 base_url = \"http://127.0.0.1:{}\"\ntimeout = \"1s\"\n",
                closed_port()
            ))
            .intent_after(false),
    ]
}

fn vault_data_cases() -> Vec<Case> {
    vec![
        Case::new("current version without api_key (get)", &["get", "vd-nokey"], 1, &["vd-nokey", "api_key"]),
        Case::new("current version without api_key (run --once)", &["run", "--once"], 1, &["vd-nokey"])
            .config("[agent]\nlisten = \"off\"\n[[keys.vd-nokey.sinks]]\npath = \"{D}/out/vd-nokey.key\"\n"),
        Case::new("api_key is a number (get)", &["get", "vd-number"], 1, &["vd-number", "api_key"]),
        Case::new("api_key is a number (run --once)", &["run", "--once"], 1, &["vd-number"])
            .config("[agent]\nlisten = \"off\"\n[[keys.vd-number.sinks]]\npath = \"{D}/out/vd-number.key\"\n"),
        Case::new(
            "corrupted current (status)",
            &["status", "vd-badmeta"],
            1,
            &["vd-badmeta", "\"current\"", "not a version number", "fix or remove it"],
        ),
        Case::new("corrupted current (put refuses)", &["put", "vd-badmeta"], 1, &["vd-badmeta", "\"current\""])
            .stdin("sk-on-top-of-corruption-0123456789"),
        Case::new(
            "corrupted current (rotate refuses)",
            &["rotate", "vd-badmeta", "--force"],
            1,
            &["vd-badmeta", "current"],
        )
        .config("[keys.vd-badmeta.provider]\ntype = \"generate\"\n"),
        Case::new("corrupted grace_until", &["get", "vd-badtime"], 1, &["vd-badtime", "grace_until", "RFC 3339"]),
        Case::new(
            "corrupted disabled flag",
            &["status", "vd-baddisabled"],
            1,
            &["vd-baddisabled", "disabled", "true or false"],
        ),
        Case::new("metadata from a newer keysync", &["put", "vd-future"], 1, &["vd-future", "upgrade keysync"])
            .stdin("sk-on-top-of-future-0123456789"),
        Case::new(
            "current points at a missing version",
            &["get", "vd-dangling"],
            1,
            &["current version of vd-dangling is 7", "damaged", "keysync put vd-dangling"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let mut world = World::new().await;
    world.put_versions("openai", 2);
    world.put_versions("stable", 1);
    std::fs::write(world.d().join("bad.json"), "{\"openai\": sk-unquoted").unwrap();
    let admin_key = "sk-admin-bad-input-0123456789";
    support::leak::register(admin_key);
    std::fs::write(world.d().join("admin.key"), admin_key).unwrap();
    // Files from an earlier good render: a refused run must leave them exactly so.
    std::fs::write(world.d().join("out/openai.key"), "sk-last-good-render\n").unwrap();

    let ts = "2026-01-01T00:00:00Z";
    world
        .put_raw(
            "vd-nokey",
            json!({"base_url": "https://api.example.com"}),
            json!({"keysync_schema": "1", "current": "1"}),
        )
        .await;
    world.put_raw("vd-number", json!({"api_key": 1234567890}), json!({"keysync_schema": "1", "current": "1"})).await;
    world
        .put_raw("vd-badmeta", json!({"api_key": fresh_key()}), json!({"keysync_schema": "1", "current": "abc"}))
        .await;
    world
        .put_raw(
            "vd-badtime",
            json!({"api_key": fresh_key()}),
            json!({"keysync_schema": "1", "current": "1", "grace_until": "next tuesday", "rotated_at": ts}),
        )
        .await;
    world
        .put_raw(
            "vd-baddisabled",
            json!({"api_key": fresh_key()}),
            json!({"keysync_schema": "1", "current": "1", "disabled": "maybe"}),
        )
        .await;
    world.put_raw("vd-future", json!({"api_key": fresh_key()}), json!({"keysync_schema": "2", "current": "1"})).await;
    world.put_raw("vd-dangling", json!({"api_key": fresh_key()}), json!({"keysync_schema": "1", "current": "7"})).await;

    let base = bad_provider::start().await;
    let started = std::time::Instant::now();
    let mut total = 0;
    let mut groups = Vec::new();
    for (group, cases) in [
        ("config", config_cases()),
        ("CLI", cli_cases()),
        ("provider answer", provider_cases(&base)),
        ("Vault data", vault_data_cases()),
    ] {
        let n = world.run(group, cases).await;
        groups.push(format!("{n} {group}"));
        total += n;
    }
    assert!(total >= 30, "the issue asks for at least 30 cases, ran {total}");
    report::record(
        "Bad input",
        &format!("all bad-input cases ({})", groups.join(", ")),
        total,
        &format!(
            "every case: expected exit code, error names the field/key/path/provider and the fix, \
             Vault metadata + every version + index and the files on disk unchanged, no panic, no secret in \
             output; {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
}

/// Other tools' custom_metadata fields are not bad input: keysync reads around them and keeps
/// them through its own writes.
#[tokio::test]
async fn foreign_custom_metadata_is_kept_through_keysync_writes() {
    let mut world = World::new().await;
    world
        .put_raw(
            "shared",
            json!({"api_key": "sk-shared-v1-0123456789abcdef"}),
            json!({"owner": "team-billing", "ticket": "SEC-1234", "keysync_schema": "1", "current": "1"}),
        )
        .await;
    support::leak::register("sk-shared-v2-0123456789abcdef");
    world.cli.run_with_stdin(&["put", "shared"], "sk-shared-v2-0123456789abcdef");
    world.cli.ok(&["disable", "shared"]);
    world.cli.ok(&["enable", "shared"]);
    let meta = world.admin.read("secret/metadata/keysync/shared").await;
    let custom = &meta["data"]["custom_metadata"];
    assert_eq!(custom["owner"], "team-billing", "{custom}");
    assert_eq!(custom["ticket"], "SEC-1234", "{custom}");
    assert_eq!(custom["current"], "2", "{custom}");
    let status = world.cli.json(&["status", "shared"]);
    assert_eq!(status[0]["current"]["version"], 2, "{status}");
    report::record(
        "Bad input",
        "foreign custom_metadata fields (owner, ticket) on a key",
        1,
        "put, disable and enable work; the foreign fields are unchanged afterwards",
    );
}
