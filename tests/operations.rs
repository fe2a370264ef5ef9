//! Running keysync in production: the Kubernetes manifests (validated offline against the
//! Kubernetes schemas, their configs through `check-config`), the Prometheus alerts (checked
//! and unit-tested with `promtool`), a real scrape through `promtool check metrics`, metric
//! values after real events, `/readyz` on a failing sink, JSON logs, `check-config` never
//! showing a token, and what a fingerprint hashes. scripts/test installs promtool (Debian's
//! `prometheus`) and `kubernetes-validate` (PyPI) when they are missing.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::scenario::Scenario;
use support::{eventually, free_listen_addr, Agent, DevServer};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("{name} is not installed: {install} (scripts/test does this)"))
}

fn promtool() -> PathBuf {
    tool("promtool", "apt-get install prometheus")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Every document of a YAML file, as JSON, through python3's yaml.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3 with yaml");
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let bin = tool("kubernetes-validate", "pip install kubernetes-validate");
    run(Command::new(bin).args(["--strict", "--quiet"]).args(files))
}

#[test]
fn every_kubernetes_manifest_validates_against_the_kubernetes_schemas_offline() {
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let (ok, out) = kubernetes_validate(&files);
    assert!(ok, "kubernetes-validate --strict:\n{out}");

    // The check has teeth: a misspelt field and a wrong type are both refused.
    let dir = tempfile::tempdir().unwrap();
    let app = std::fs::read_to_string(repo().join("examples/kubernetes/app-deployment.yaml")).unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, app.replacen("\n          restartPolicy: Always", "\n          restartPolcy: Always", 1))
        .unwrap();
    let (ok, out) = kubernetes_validate(&[typo]);
    assert!(!ok && out.contains("restartPolcy"), "{out}");
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(&wrong, app.replacen("containerPort: 9464", "containerPort: \"9464\"", 1)).unwrap();
    let (ok, out) = kubernetes_validate(&[wrong]);
    assert!(!ok && out.contains("containerPort"), "{out}");
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in examples/kubernetes"))
}

fn assert_locked_down(what: &str, pod: &Value, container: &Value) {
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{what}");
    assert!(sc["capabilities"]["add"].is_null(), "{what}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{what}");
    assert!(pod["securityContext"]["runAsUser"].as_u64().is_some_and(|u| u > 0), "{what}");
}

fn probe_path(c: &Value, probe: &str) -> String {
    c[probe]["httpGet"]["path"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_sidecar_example_shares_an_in_memory_volume_and_is_locked_down() {
    let docs: Vec<Value> = manifests().iter().flat_map(|f| yaml_docs(f)).collect();
    let app = find(&docs, "Deployment", "llm-app");
    let pod = &app["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "keysync");
    assert!(find(&docs, "ServiceAccount", "keysync").is_object());

    // keysync is a native sidecar: an init container that keeps running.
    let sidecar = &pod["initContainers"][0];
    assert_eq!(sidecar["name"], "keysync");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(probe_path(sidecar, "startupProbe"), "/readyz", "the app starts once the key is rendered");
    assert_eq!(probe_path(sidecar, "readinessProbe"), "/readyz");
    assert_eq!(probe_path(sidecar, "livenessProbe"), "/healthz");
    assert_locked_down("keysync sidecar", pod, sidecar);

    let app_container = &pod["containers"][0];
    assert_locked_down("app", pod, app_container);
    let env = app_container["env"].as_array().unwrap();
    let key_file = env.iter().find(|e| e["name"] == "OPENAI_API_KEY_FILE").expect("OPENAI_API_KEY_FILE");

    // Both mount the same in-memory emptyDir; the key file is in it.
    let keys = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "keys").expect("keys volume");
    assert_eq!(keys["emptyDir"]["medium"], "Memory", "rendered keys stay off the node's disk");
    let mount_of = |c: &Value| {
        c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "keys").expect("keys mount")["mountPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (sidecar_dir, app_dir) = (mount_of(sidecar), mount_of(app_container));
    assert_eq!(sidecar_dir, app_dir);
    let cfg = configmap_entry("sidecar.toml");
    let sink: toml::Value = toml::from_str(&cfg).unwrap();
    let path = sink["keys"]["openai"]["sinks"][0]["path"].as_str().unwrap();
    assert_eq!(key_file["value"], path);
    assert!(path.starts_with(&format!("{sidecar_dir}/")), "{path} is not in the shared volume");
    // The config comes from the ConfigMap, the Vault token from a projected token.
    let configmap = find(&docs, "ConfigMap", "keysync");
    assert!(configmap["data"]["sidecar.toml"].is_string());
    assert!(sidecar["args"].as_array().unwrap().iter().any(|a| a == "/etc/keysync/config/sidecar.toml"));

    // The rotator: one replica, rotate = true, same lockdown.
    let rotator = find(&docs, "Deployment", "keysync-rotator");
    assert_eq!(rotator["spec"]["replicas"], 1);
    assert_eq!(rotator["spec"]["strategy"]["type"], "Recreate");
    let rpod = &rotator["spec"]["template"]["spec"];
    assert_locked_down("rotator", rpod, &rpod["containers"][0]);
    assert_eq!(probe_path(&rpod["containers"][0], "readinessProbe"), "/readyz");
    let rcfg: toml::Value = toml::from_str(&configmap_entry("rotator.toml")).unwrap();
    assert_eq!(rcfg["agent"]["rotate"].as_bool(), Some(true));
}

fn configmap_entry(name: &str) -> String {
    let docs = yaml_docs(&repo().join("examples/kubernetes/configmap.yaml"));
    docs[0]["data"][name].as_str().unwrap_or_else(|| panic!("no {name} in the ConfigMap")).to_string()
}

#[test]
fn the_configmap_configs_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    for (entry, role) in [("sidecar.toml", "keysync-reader"), ("rotator.toml", "keysync-rotator")] {
        let path = dir.path().join(entry);
        std::fs::write(&path, configmap_entry(entry)).unwrap();
        let out = assert_cmd::Command::cargo_bin("keysync")
            .unwrap()
            .args(["--config", path.to_str().unwrap(), "check-config"])
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{entry}: {text}");
        assert!(
            text.contains(&format!("token: from a kubernetes login at auth/kubernetes/login as role \"{role}\"")),
            "{entry}: {text}"
        );
        assert!(text.contains("service-account token from /var/run/secrets/vault/token"), "{text}");
    }
}

#[test]
fn check_config_says_where_the_token_comes_from_and_never_shows_any_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = "hvs.CAESIQpZ7x4Lr2mT9kWq3vNbHdFgYjUeXc8sA1oP";
    let config = dir.path().join("keysync.toml");
    std::fs::write(&config, "[vault]\naddress = \"http://127.0.0.1:8200\"\n").unwrap();
    for output in ["table", "json"] {
        let out = assert_cmd::Command::cargo_bin("keysync")
            .unwrap()
            .args(["--config", config.to_str().unwrap(), "check-config", "--output", output])
            .env("VAULT_TOKEN", token)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("from the VAULT_TOKEN environment variable"), "{text}");
        // Not even the mask's 4 + 4 characters.
        for piece in [&token[..4], &token[token.len() - 4..], "…"] {
            assert!(!text.contains(piece), "check-config --output {output} shows {piece:?} of the token:\n{text}");
        }
    }
}

// ---- Prometheus -------------------------------------------------------------------------

fn alert_names(doc: &Value) -> Vec<String> {
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_fire_and_clear_every_alert() {
    let promtool = promtool();
    let (ok, out) = run(Command::new(&promtool).args(["check", "rules", "examples/alerts.yml"]).current_dir(repo()));
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) =
        run(Command::new(&promtool).args(["test", "rules", "examples/alerts_test.yml"]).current_dir(repo()));
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");

    // Every alert has a case where it fires and one where it does not.
    let alerts = alert_names(&yaml_docs(&repo().join("examples/alerts.yml"))[0]);
    let tests = &yaml_docs(&repo().join("examples/alerts_test.yml"))[0];
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for case in tests["tests"].as_array().unwrap().iter().flat_map(|t| t["alert_rule_test"].as_array().unwrap()) {
        let name = case["alertname"].as_str().unwrap().to_string();
        if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
            fires.insert(name);
        } else {
            silent.insert(name);
        }
    }
    for alert in &alerts {
        assert!(fires.contains(alert), "examples/alerts_test.yml never makes {alert} fire");
        assert!(silent.contains(alert), "examples/alerts_test.yml never checks that {alert} stays quiet");
    }

    // The unit tests have teeth: a rule with a wrong threshold fails them.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(repo().join("examples/alerts.yml")).unwrap();
    std::fs::write(dir.path().join("alerts.yml"), rules.replacen("< 7 * 86400", "< 1 * 86400", 1)).unwrap();
    std::fs::copy(repo().join("examples/alerts_test.yml"), dir.path().join("alerts_test.yml")).unwrap();
    let (ok, out) = run(Command::new(&promtool).args(["test", "rules", "alerts_test.yml"]).current_dir(dir.path()));
    assert!(!ok && out.contains("KeysyncKeyExpiresSoon"), "a broken rule passed its unit test:\n{out}");
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_get_accepting(addr, path, "*/*")
}

fn http_get_accepting(addr: &str, path: &str, accept: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\nAccept: {accept}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// The value of the sample `name{labels}` (labels as exported, e.g. `key="openai"`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

async fn put(store: &keysync::store::KeyStore, name: &str, key: &str, fields: &[(&str, &str)]) {
    use keysync::store::{KeyData, KeyName, PutOptions};
    support::leak::register(key);
    let mut data = KeyData::new(keysync::secret::Secret::new(key));
    for (k, v) in fields {
        data.fields.insert(k.to_string(), Value::String(v.to_string()));
    }
    let opts = PutOptions { promote: true, reason: "test".into(), keep_fields: false };
    store.put(&KeyName::parse(name).unwrap(), data, &opts).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_scrape_passes_promtool_and_metric_values_follow_real_events() {
    let server = DevServer::start();
    let admin = server.admin();
    support::load_repo_policies(&admin).await;
    // A token with a TTL, so keysync_token_ttl_seconds has something to show.
    let token = admin
        .write("auth/token/create", serde_json::json!({ "policies": ["keysync-agent"], "ttl": "1h" }))
        .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(60), "test-writer").await;
    let now = chrono::Utc::now();
    let expires = (now + chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let expired = (now - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    put(&writer, "openai", "sk-metrics-openai-0123456789", &[("expires_at", &expires)]).await;
    put(&writer, "glm", "sk-metrics-glm-0123456789abc", &[("expires_at", &expired)]).await;
    put(&writer, "odd", "sk-metrics-odd-0123456789abc", &[("expires_at", "next tuesday")]).await;
    let promoted = chrono::Utc::now().timestamp() as f64;

    let sc = Scenario::new(&server)
        .token(&token)
        .agent("rotate = true")
        .agent("rotation_check_interval = \"1s\"")
        .agent("unready_after_sink_failures = 0");
    let (d, listen) = (sc.d().to_path_buf(), sc.listen.clone().unwrap());
    // The glm sink's path is a directory: every render of it fails.
    std::fs::create_dir_all(d.join("out/glm.key")).unwrap();
    let sc = sc.toml(
        r#"
[keys.openai.provider]
type = "generate"
[keys.openai.rotation]
interval = "1h"
max_age = "2h"
validate = false
[[keys.openai.sinks]]
path = "{dir}/out/openai.key"

[keys.glm.provider]
type = "manual"
[keys.glm.rotation]
interval = "30d"
validate = false
[[keys.glm.sinks]]
path = "{dir}/out/glm.key"

[[keys.odd.sinks]]
path = "{dir}/out/odd.key"
"#,
    );
    let agent = sc.run();
    let scrape = || http_get(&listen, "/metrics").1;
    let failed = "keysync_sink_render_total{sink=\"".to_string() + &d.join("out/glm.key").display().to_string();
    let failed = failed + "\",result=\"failed\"}";
    assert!(
        eventually(Duration::from_secs(15), || {
            let m = scrape();
            sample(&m, &failed).is_some_and(|n| n >= 2.0)
                && sample(&m, "keysync_key_rotation_overdue{key=\"glm\"}").is_some()
                && sample(&m, "keysync_key_next_rotation_timestamp_seconds{key=\"openai\"}").is_some()
        })
        .await,
        "{}\n{}",
        scrape(),
        agent.log_text()
    );
    let m = scrape();
    let at = chrono::Utc::now().timestamp() as f64;
    let get = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("no {series} in:\n{m}"));

    // Key age: seconds since the put promoted it.
    let age = get("keysync_key_age_seconds{key=\"openai\"}");
    assert!(age >= 0.0 && age <= at - promoted + 2.0, "age {age}, promoted {} s ago", at - promoted);
    // Next rotation: promotion + interval (no jitter); not overdue. glm is past its
    // expires_at: overdue, and a manual key is never rotated by the agent.
    let next = get("keysync_key_next_rotation_timestamp_seconds{key=\"openai\"}");
    assert!((next - (promoted + 3600.0)).abs() <= 3.0, "next rotation {next}, expected ~{}", promoted + 3600.0);
    assert_eq!(get("keysync_key_rotation_overdue{key=\"openai\"}"), 0.0);
    assert_eq!(get("keysync_key_rotation_overdue{key=\"glm\"}"), 1.0);
    // expires_at: a day ahead, an hour behind.
    let left = get("keysync_key_expires_in_seconds{key=\"openai\"}");
    let expect = 86400.0 - (at - promoted);
    assert!((left - expect).abs() <= 5.0, "expires in {left}, expected ~{expect}");
    let past = get("keysync_key_expires_in_seconds{key=\"glm\"}");
    assert!((past + 3600.0 + (at - promoted)).abs() <= 5.0, "glm expired {past}");
    // An expires_at that is not RFC 3339 exports nothing and says so in the log.
    assert!(sample(&m, "keysync_key_expires_in_seconds{key=\"odd\"}").is_none(), "{m}");
    assert!(agent.log_text().contains("expires_at field is not an RFC 3339 time"), "{}", agent.log_text());
    // Render failures count one per poll; the good sink has none.
    assert!(get(&failed) >= 2.0);
    let openai_sink = d.join("out/openai.key").display().to_string();
    assert!(sample(&m, &format!("keysync_sink_render_total{{sink=\"{openai_sink}\",result=\"failed\"}}")).is_none());
    assert_eq!(get(&format!("keysync_sink_render_total{{sink=\"{openai_sink}\",result=\"written\"}}")), 1.0);
    // Token TTL: the 1 h token, minus the seconds since it was made.
    let ttl = get("keysync_token_ttl_seconds");
    assert!(ttl > 3500.0 && ttl <= 3600.0, "token ttl {ttl}");
    // unready_after_sink_failures = 0: a failing sink alone does not make the agent unready.
    assert_eq!(get("keysync_ready"), 1.0);

    // promtool lints the real exposition.
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n--- scrape:\n{m}");

    // Prometheus asks for OpenMetrics and gets it, with the same samples.
    let (_, open) = http_get_accepting(
        &listen,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert!(open.ends_with("# EOF\n") && open.contains("# TYPE keysync_sink_render counter\n"), "{open}");
    assert!(!m.contains("# EOF") && m.contains("# TYPE keysync_sink_render_total counter\n"), "{m}");

    // A real rotation (by the CLI, with the same config): the agent's metrics follow it.
    let mut cli = sc.cli();
    cli.secrets.extend(["sk-metrics-openai-0123456789".to_string(), token.clone()]);
    let config = sc.path("keysync.toml");
    cli.ok(&["--config", config.to_str().unwrap(), "rotate", "openai", "--force", "--reason", "metrics test"]);
    let rotated = chrono::Utc::now().timestamp() as f64;
    assert!(
        eventually(Duration::from_secs(10), || {
            let m = scrape();
            // The version gauge is set when the key is read and the render counted after the
            // write, within one pass: wait for both.
            sample(&m, "keysync_key_current_version{key=\"openai\"}") == Some(2.0)
                && sample(&m, "keysync_key_next_rotation_timestamp_seconds{key=\"openai\"}")
                    .is_some_and(|n| (n - (rotated + 3600.0)).abs() <= 3.0)
                && sample(&m, &format!("keysync_sink_render_total{{sink=\"{openai_sink}\",result=\"written\"}}"))
                    == Some(2.0)
        })
        .await,
        "{}",
        scrape()
    );
    let m2 = scrape();
    let age = sample(&m2, "keysync_key_age_seconds{key=\"openai\"}").unwrap();
    assert!(age <= chrono::Utc::now().timestamp() as f64 - rotated + 2.0, "age after rotation {age}");
    assert!(
        sample(&m2, "keysync_key_expires_in_seconds{key=\"openai\"}").is_none(),
        "a generated key has no expires_at (it is not inherited from the old key)"
    );
    assert_eq!(
        sample(&m2, &format!("keysync_sink_render_total{{sink=\"{openai_sink}\",result=\"written\"}}")),
        Some(2.0)
    );

    // A sink that recovers: the failure counter stops.
    std::fs::remove_dir(d.join("out/glm.key")).unwrap();
    assert!(eventually(Duration::from_secs(5), || std::fs::read_to_string(d.join("out/glm.key")).is_ok()).await);
    let settled = sample(&scrape(), &failed).unwrap();
    sc.next_passes(2).await; // a whole poll without a failure
    assert_eq!(sample(&scrape(), &failed), Some(settled));
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_a_sink_that_keeps_failing_and_json_logs_are_one_stable_object_per_line() {
    let server = DevServer::start();
    let writer = support::key_store(&server, &server.root_token, Duration::from_secs(60), "test-writer").await;
    put(&writer, "openai", "sk-readyz-openai-0123456789", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let listen = free_listen_addr();
    let sink = d.join("out/openai.key");
    std::fs::create_dir_all(&sink).unwrap();
    let config = d.join("keysync.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\npoll_interval = \"500ms\"\nlisten = \"{listen}\"\nunready_after_sink_failures = 3\n\n[[keys.openai.sinks]]\npath = \"{}\"\n",
            sink.display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let agent = Agent::start(&config, &server.addr, &server.root_token, &["--log-format", "json", "run"], d);

    // Three failed passes in a row: 503 naming the sink and the reason.
    assert!(
        eventually(Duration::from_secs(10), || http_get(&listen, "/readyz").0 == 503
            && http_get(&listen, "/readyz").1.contains("passes in a row"))
        .await,
        "{:?}\n{}",
        http_get(&listen, "/readyz"),
        agent.log_text()
    );
    let unready_after = started.elapsed().as_secs_f64();
    let (_, body) = http_get(&listen, "/readyz");
    assert!(body.contains(&format!("sink {} failed", sink.display())), "{body}");
    assert!(body.contains("failed 3 passes in a row: exists but is not a regular file"), "the reason is given: {body}");
    assert!(http_get(&listen, "/metrics").1.contains("\nkeysync_ready 0\n"));
    assert_eq!(http_get(&listen, "/healthz").0, 200, "alive all the same");

    // The sink recovers: ready again at the next pass.
    std::fs::remove_dir(&sink).unwrap();
    let repaired = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(5), || http_get(&listen, "/readyz").0 == 200).await);
    support::report::record(
        "Faults",
        "A sink whose path is a directory, unready_after_sink_failures = 3, poll 0.5 s; then the directory removed",
        1,
        &format!(
            "/readyz 503 naming the sink and the error {unready_after:.1} s after start (3 failed passes); 200 again {:.1} s after the repair; /healthz 200 throughout",
            repaired.elapsed().as_secs_f64()
        ),
    );
    assert_eq!(std::fs::read_to_string(&sink).unwrap().trim(), "sk-readyz-openai-0123456789");
    drop(agent);

    // Every line of the log is one JSON object with timestamp, level and message, and the
    // events operators build alerts and searches on keep their field names.
    let log = std::fs::read_to_string(
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("agent-"))
            .unwrap(),
    )
    .unwrap();
    let events: Vec<serde_json::Map<String, Value>> = log
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => o,
            _ => panic!("not one JSON object: {l:?}"),
        })
        .collect();
    assert!(events.len() >= 5, "{log}");
    for e in &events {
        for field in ["timestamp", "level", "message"] {
            assert!(e.get(field).is_some_and(Value::is_string), "{field} missing: {e:?}");
        }
        let level = e["level"].as_str().unwrap();
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level), "{level}");
        assert!(chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).is_ok(), "{e:?}");
    }
    let keys_of = |message: &str| -> BTreeSet<String> {
        let e = events.iter().find(|e| e["message"] == message).unwrap_or_else(|| panic!("no {message:?} in:\n{log}"));
        e.keys().cloned().collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    assert_eq!(
        keys_of("logged in to Vault"),
        set(&["timestamp", "level", "message", "method", "accessor", "policies", "ttl_secs", "renewable"])
    );
    assert_eq!(
        keys_of("render failed; the previous file is left as it was"),
        set(&["timestamp", "level", "message", "sink", "error"])
    );
    assert_eq!(keys_of("rendered"), set(&["timestamp", "level", "message", "sink", "result"]));
    assert_eq!(keys_of("first render done"), set(&["timestamp", "level", "message", "sinks"]));
}

// ---- Fingerprints -----------------------------------------------------------------------

fn sha256_cli(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

#[tokio::test]
async fn a_fingerprint_is_the_sha256_of_the_key_without_its_trailing_newline() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = "sk-fp-pinned-0123456789abcdef";
    let mut cli = support::Cli::new(&server, &server.root_token, dir.path());
    cli.secrets.push(key.into());
    // The key file ends with a newline, as `echo` and editors leave it.
    std::fs::write(dir.path().join("key.txt"), format!("{key}\n")).unwrap();
    cli.ok(&["put", "openai", "--file", "key.txt"]);
    let shown = cli.json(&["get", "openai"]);
    let fp = shown["fingerprint"].as_str().unwrap();
    assert_eq!(fp, sha256_cli(key.as_bytes()), "the key's bytes, nothing added");
    assert_ne!(fp, sha256_cli(format!("{key}\n").as_bytes()), "not the file's bytes");
    // A raw sink ends the file with a newline; the README's recipe strips it to compare.
    let sink = dir.path().join("openai.key");
    std::fs::write(dir.path().join("keysync.toml"), format!("[[keys.openai.sinks]]\npath = \"{}\"\n", sink.display()))
        .unwrap();
    cli.ok(&["--config", "keysync.toml", "run", "--once"]);
    let file = std::fs::read(&sink).unwrap();
    assert_eq!(file.last(), Some(&b'\n'));
    assert_eq!(sha256_cli(&file[..file.len() - 1]), fp);
}
