//! Providers against their documented APIs (local fakes) and the real Vault server: OpenAI
//! orphan cleanup that touches only the rotated key's own service accounts and reads every
//! page, and each validation preset's valid / invalid / rate-limited answers, in process and
//! through `keysync rotate`.

mod support;

use keysync::provider::anthropic::AnthropicRevoke;
use keysync::provider::{Preset, ProviderError, Validation, Verdict};
use keysync::secret::Secret;
use std::path::Path;
use std::time::{Duration, Instant};
use support::fake_llm::{self, Family, Mode};
use support::{fake_openai, report, Cli, DevServer};

/// Writes the config beside (not as) the working directory's keysync.toml, so the plain
/// `put` calls that set up a test do not pick it up.
fn config(dir: &Path, body: &str) -> String {
    let path = dir.join("providers.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `keysync-openai-<digits>`: the names keysync gives the `openai` key's service accounts.
fn is_openai_own(name: &str) -> bool {
    name.strip_prefix("keysync-openai-").is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_openai_never_deletes_openai_batch_accounts_and_cleanup_reads_every_page() {
    let server = DevServer::start();
    let (base, accounts) = fake_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let mut cli = Cli::new(&server, &server.root_token, dir.path());
    cli.secrets = vec![fake_openai::ADMIN_KEY.into(), "secretpart".into()];
    std::fs::write(dir.path().join("admin.key"), fake_openai::ADMIN_KEY).unwrap();
    let key = |name: &str| {
        format!(
            "[keys.{name}.provider]\ntype = \"openai\"\nproject_id = \"proj_shared\"\nadmin_key_file = \"{d}/admin.key\"\nbase_url = \"{base}\"\n\
             [keys.{name}.validation]\npreset = \"openai\"\nbase_url = \"{base}/v1\"\n"
        )
    };
    let cfg = config(dir.path(), &format!("{}{}", key("openai"), key("openai-batch")));
    let tok = random_token();
    cli.run_with_stdin(&["put", "openai"], &format!("sk-proj-hand-{tok}-openai"));
    cli.run_with_stdin(&["put", "openai-batch"], &format!("sk-proj-hand-{tok}-batch"));
    // `openai-batch` gets live accounts of its own: v2 (previous, in grace) and v3 (current).
    for _ in 0..2 {
        let out = cli.json(&["--config", &cfg, "rotate", "openai-batch", "--force"]);
        assert_eq!(out[0]["outcome"]["result"], "rotated", "{out}");
    }
    // Fill the project to 250 accounts, an hour old: people's and CI's, names that only look
    // like ours, an unreferenced `openai-batch` leftover (openai-batch's business, not
    // openai's), and last, on page 3, four real `openai` orphans.
    let old = chrono::Utc::now().timestamp() - 3600;
    let mut spared: Vec<String> = Vec::new();
    let orphans: Vec<String>;
    {
        let mut a = accounts.lock().unwrap();
        for i in 0..240 {
            spared.push(a.seed(&format!("ci-runner-{i}"), old));
        }
        for name in [
            format!("keysync-openai-batch-{old}"),
            format!("keysync-openai-2024-{old}"),
            "keysync-openai-".to_string(),
            format!("keysync-openai-{old}x"),
        ] {
            spared.push(a.seed(&name, old));
        }
        orphans = (0..4).map(|i| a.seed(&format!("keysync-openai-{}", old - i), old)).collect();
        assert_eq!(a.accounts.len(), 250);
        a.list_requests.clear();
    }
    // Nothing deleted yet: an account's place in the list is its creation order.
    for id in &orphans {
        let n: usize = id.trim_start_matches("svc_acct_").parse().unwrap();
        assert_eq!((n - 1) / 100 + 1, 3, "{id} is on page 3");
    }
    let batch_names = |a: &fake_openai::Accounts| -> Vec<String> {
        a.names.values().map(|(n, _)| n.clone()).filter(|n| n.starts_with("keysync-openai-batch-")).collect()
    };
    let batch_before = batch_names(&accounts.lock().unwrap());
    assert_eq!(batch_before.len(), 3, "two minted, one leftover");

    let rotations = report::scale(3, 6);
    for run in 0..rotations {
        let out = cli.json(&["--config", &cfg, "rotate", "openai", "--force"]);
        assert_eq!(out[0]["outcome"]["result"], "rotated", "run {run}: {out}");
        if run == 0 {
            let a = accounts.lock().unwrap();
            assert_eq!(
                a.list_requests,
                vec![None, Some("svc_acct_100".to_string()), Some("svc_acct_200".to_string())],
                "the first cleanup read all three pages, following last_id"
            );
            for id in &orphans {
                assert!(a.accounts[id].1, "orphan {id} on page 3 deleted");
            }
        }
    }
    let a = accounts.lock().unwrap();
    let live_names = a.live_names();
    for name in &batch_before {
        assert!(live_names.contains(name), "openai-batch account {name} is alive");
    }
    for id in &spared {
        assert!(!a.accounts[id].1, "{id} ({}) is not openai's and is alive", a.names[id].0);
    }
    let deleted: Vec<&String> = a.accounts.iter().filter(|(_, (_, gone))| *gone).map(|(id, _)| id).collect();
    for id in &deleted {
        assert!(is_openai_own(&a.names[*id].0), "only openai's own accounts are deleted, not {}", a.names[*id].0);
    }
    let cleanups = a.list_requests.iter().filter(|c| c.is_none()).count();
    assert_eq!(cleanups, rotations, "one cleanup per rotation");
    assert_eq!(a.list_requests.len(), 3 * rotations, "every cleanup read all 3 pages");
    let deleted_count = deleted.len();
    drop(a);
    let current = cli.json(&["get", "openai"]);
    let current_id = current["fields"]["key_id"].as_str().unwrap().to_string();
    assert!(!accounts.lock().unwrap().accounts[&current_id].1, "the current key's account is live");
    let status = cli.json(&["status", "openai"]);
    assert_eq!(status[0]["current"]["version"], rotations as u64 + 1, "{status}");
    let batch = cli.json(&["status", "openai-batch"]);
    assert_eq!(batch[0]["current"]["version"], 3, "openai-batch untouched: {batch}");
    report::record(
        "Providers",
        &format!(
            "OpenAI cleanup: keys `openai` and `openai-batch` in one project of 250 service accounts, `openai` rotated {rotations}× (real keysync rotate)"
        ),
        rotations,
        &format!(
            "0 of 3 `openai-batch` accounts and 0 of {} look-alike/other accounts deleted; 4 of 4 `openai` orphans on page 3 deleted \
             ({deleted_count} deletions in all, each an `openai` account); {} list requests for {rotations} cleanups (limit 100, after = last_id)",
            spared.len() - 1,
            3 * rotations
        ),
    );
}

/// Each preset's API root path (`/v1`, `/compatible-mode/v1`, …), so the fake is called where
/// the real provider would be.
fn root_path(preset: Preset) -> String {
    let default = preset.default_base_url().expect("a preset with a URL");
    url::Url::parse(default).unwrap().path().trim_end_matches('/').to_string()
}

const PRESETS: [(Preset, Family, &str); 13] = [
    (Preset::Openai, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Deepseek, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Qwen, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Moonshot, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Zhipu, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Doubao, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Mistral, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Groq, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Openrouter, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Together, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Ollama, Family::OpenaiCompatible, "invalid_api_key"),
    (Preset::Anthropic, Family::Anthropic, "authentication_error"),
    (Preset::Gemini, Family::Gemini, "API_KEY_INVALID"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_tells_valid_invalid_and_rate_limited_keys_apart() {
    let mut fakes = Vec::new();
    for family in [Family::OpenaiCompatible, Family::Anthropic, Family::Gemini] {
        fakes.push((family, fake_llm::start(family).await));
    }
    let fake_for = |family: Family| fakes.iter().find(|(f, _)| *f == family).map(|(_, s)| s.clone()).unwrap();
    let tok = random_token();
    let mut checks = 0;
    for (preset, family, refusal) in PRESETS {
        let (base, fake) = fake_for(family);
        let path = root_path(preset);
        let v = Validation { base_url: Some(format!("{base}{path}")), ..Validation::preset(preset) };
        let good = Secret::new(format!("sk-good-{tok}-{preset:?}"));
        let bad = Secret::new(format!("sk-bad-{tok}-{preset:?}"));
        {
            let mut f = fake.lock().unwrap();
            f.mode = Mode::Known;
            f.valid.insert(good.expose().to_string());
            f.requests.clear();
        }
        assert_eq!(v.validate(&good).await, Verdict::Valid, "{preset:?}: a key the provider knows");
        assert_eq!(fake.lock().unwrap().requests, vec![format!("{path}/models")], "{preset:?} asks GET <root>/models");
        let verdict = v.validate(&bad).await;
        assert!(
            matches!(&verdict, Verdict::Invalid(m) if m.contains(refusal) && !m.contains(&tok)),
            "{preset:?}: the documented refusal means invalid, without retries or the key: {verdict:?}"
        );
        assert_eq!(fake.lock().unwrap().requests.len(), 2, "{preset:?}: a refusal is not retried");
        // Rate limited for longer than a check waits: undecided at once, no early retry.
        fake.lock().unwrap().mode = Mode::RateLimited(120);
        let start = Instant::now();
        let verdict = v.validate(&good).await;
        assert!(
            matches!(&verdict, Verdict::Undecided(m) if m.contains("429") && m.contains("2m")),
            "{preset:?}: rate limited is undecided and says how long to wait: {verdict:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "{preset:?}: {:?}", start.elapsed());
        assert_eq!(fake.lock().unwrap().requests.len(), 3, "{preset:?}: no retry before the provider's delay");
        checks += 3;
    }
    // A short delay is waited out (Retry-After for OpenAI and Anthropic, RetryInfo.retryDelay
    // for Gemini), then tried again: still limited after 3 tries → undecided.
    for (family, preset) in [
        (Family::OpenaiCompatible, Preset::Deepseek),
        (Family::Anthropic, Preset::Anthropic),
        (Family::Gemini, Preset::Gemini),
    ] {
        let (base, fake) = fake_for(family);
        let v = Validation { base_url: Some(format!("{base}{}", root_path(preset))), ..Validation::preset(preset) };
        {
            let mut f = fake.lock().unwrap();
            f.mode = Mode::RateLimited(1);
            f.requests.clear();
        }
        let start = Instant::now();
        let verdict = v.validate(&Secret::new(format!("sk-good-{tok}-{preset:?}"))).await;
        assert!(matches!(&verdict, Verdict::Undecided(m) if m.contains("3 tries")), "{preset:?}: {verdict:?}");
        assert_eq!(fake.lock().unwrap().requests.len(), 3);
        assert!(start.elapsed() >= Duration::from_millis(1900), "{preset:?}: waited 2 × 1 s, {:?}", start.elapsed());
        checks += 1;
    }
    report::record(
        "Providers",
        "each validation preset (13) against its API family's fake: valid key, documented refusal (Gemini: 400 API_KEY_INVALID), rate limited",
        checks,
        "valid → valid; refusal → invalid after 1 request (Gemini's 400 included); 429 asking ≥ 2 min → undecided after 1 request; 429 asking 1 s → 3 tries, each ≥ 1 s apart, then undecided",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_promotes_valid_revokes_refused_and_keeps_rate_limited_keys_pending_for_each_family() {
    let server = DevServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    let tok = random_token();
    let mut body = String::new();
    let mut keys = Vec::new();
    for (i, (name, preset, family)) in [
        ("llm-deepseek", "deepseek", Family::OpenaiCompatible),
        ("llm-claude", "anthropic", Family::Anthropic),
        ("llm-gemini", "gemini", Family::Gemini),
    ]
    .into_iter()
    .enumerate()
    {
        let (base, fake) = fake_llm::start(family).await;
        let preset_value: Preset = serde_json::from_value(serde_json::json!(preset)).unwrap();
        // Keys never contain the key name: the leak check would find the name in the logs.
        let mint = format!(
            "n=$(cat {d}/{i}.n 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/{i}.n; printf '{{\"api_key\": \"sk-{tok}-{i}-%s-minted\", \"key_id\": \"kid-{i}-%s\"}}' $n $n"
        );
        let revoke = format!("echo $KEYSYNC_KEY_ID >> {d}/{i}.revoked");
        body.push_str(&format!(
            "[keys.{name}.provider]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", {mint:?}]\nrevoke_command = [\"sh\", \"-c\", {revoke:?}]\n\
             [keys.{name}.validation]\npreset = \"{preset}\"\nbase_url = \"{base}{}\"\n",
            root_path(preset_value)
        ));
        keys.push((name, i, fake));
    }
    let cfg = config(dir.path(), &body);
    for (name, i, fake) in &keys {
        cli.run_with_stdin(&["put", name], &format!("sk-initial-{tok}-{i}-handmade"));
        // Valid: promoted.
        fake.lock().unwrap().mode = Mode::AcceptAll;
        let out = cli.json(&["--config", &cfg, "rotate", name, "--force"]);
        assert_eq!(out[0]["outcome"]["result"], "rotated", "{name}: {out}");
        assert_eq!(cli.ok(&["get", name, "--reveal"]).trim(), format!("sk-{tok}-{i}-1-minted"));
        // Refused with the family's documented answer: failed, never promoted, revoked.
        fake.lock().unwrap().mode = Mode::RefuseAll;
        let (code, stdout, _) = cli.run(&["--config", &cfg, "rotate", name, "--force"]);
        assert_eq!(code, 1, "{name}: {stdout}");
        assert!(stdout.contains("FAILED") && stdout.contains("current key kept"), "{name}: {stdout}");
        let status = cli.json(&["status", name]);
        assert_eq!(status[0]["current"]["version"], 2, "{name}: {status}");
        assert_eq!(status[0]["failed_versions"], serde_json::json!([3]), "{name}: {status}");
        let revoked = || std::fs::read_to_string(dir.path().join(format!("{i}.revoked"))).unwrap_or_default();
        assert_eq!(revoked(), format!("kid-{i}-2\n"), "{name}: the refused key was revoked");
        // Rate limited: pending (undecided), the current key stays, nothing revoked.
        fake.lock().unwrap().mode = Mode::RateLimited(120);
        let out = cli.json(&["--config", &cfg, "rotate", name, "--force"]);
        assert_eq!(out[0]["outcome"]["result"], "pending", "{name}: {out}");
        let status = cli.json(&["status", name]);
        assert_eq!(status[0]["current"]["version"], 2, "{name}: {status}");
        assert_eq!(status[0]["pending"]["version"], 4, "{name}: {status}");
        assert_eq!(revoked(), format!("kid-{i}-2\n"), "{name}: a rate-limited key is not revoked");
        assert_eq!(cli.ok(&["get", name, "--reveal"]).trim(), format!("sk-{tok}-{i}-1-minted"));
    }
    report::record(
        "Providers",
        "`keysync rotate` with validation against each API family's fake (OpenAI-compatible, Anthropic, Gemini): valid, refused, rate limited",
        keys.len() * 3,
        "valid → promoted; documented refusal → failed, revoked, current kept; 429 → pending, not revoked, current kept",
    );
}

#[tokio::test]
async fn an_anthropic_admin_api_refusal_is_a_provider_error_not_a_config_error() {
    let (base, fake) = fake_llm::start(Family::Anthropic).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_file = dir.path().join("anthropic-admin.key");
    std::fs::write(&admin_file, "sk-ant-admin01-wrong-key-000000000000").unwrap();
    support::leak::register("sk-ant-admin01-wrong-key-000000000000");
    support::leak::register(fake_llm::ANTHROPIC_ADMIN_KEY);
    let revoke = AnthropicRevoke { admin_key_file: admin_file.clone(), base_url: base.clone() };
    let err = revoke.revoke("apikey_01").await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::ApiRefused(m) if m.contains("401") && m.contains("authentication_error") && m.contains("apikey_01")),
        "{err:?}"
    );
    assert!(!err.to_string().contains("invalid provider config"), "{err}");
    assert!(!err.to_string().contains("wrong-key"), "the admin key is never in the message: {err}");
    std::fs::write(&admin_file, fake_llm::ANTHROPIC_ADMIN_KEY).unwrap();
    revoke.revoke("apikey_01").await.unwrap();
    assert_eq!(fake.lock().unwrap().deactivated, vec!["apikey_01".to_string()]);
    // Nobody listening: a provider error too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone =
        AnthropicRevoke { admin_key_file: admin_file, base_url: format!("http://{}", closed.local_addr().unwrap()) };
    drop(closed);
    let err = gone.revoke("apikey_02").await.unwrap_err();
    assert!(matches!(&err, ProviderError::ApiRefused(m) if m.contains("cannot connect")), "{err:?}");
}

#[tokio::test]
async fn cleanup_deletes_nothing_when_the_list_never_ends() {
    let (base, accounts) = fake_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.key"), fake_openai::ADMIN_KEY).unwrap();
    let old = chrono::Utc::now().timestamp() - 3600;
    let orphan = {
        let mut a = accounts.lock().unwrap();
        for i in 0..150 {
            a.seed(&format!("ci-runner-{i}"), old);
        }
        a.stuck_cursor = true;
        a.seed(&format!("keysync-openai-{old}"), old)
    };
    let openai = keysync::provider::OpenAiConfig {
        project_id: "proj_x".into(),
        admin_key_file: dir.path().join("admin.key"),
        base_url: base,
        name_prefix: "keysync".into(),
        timeout: keysync::config::HumanDuration::from_secs(5),
    };
    let unreferenced = std::collections::BTreeSet::new();
    let cleanup = || keysync::provider::delete_orphans(&openai, "openai", &unreferenced, Duration::from_secs(30));
    let err = cleanup().await.unwrap_err();
    assert!(err.to_string().contains("no new last_id") && err.to_string().contains("nothing deleted"), "{err}");
    assert_eq!(accounts.lock().unwrap().list_requests.len(), 2, "stopped at the repeated cursor");
    assert!(!accounts.lock().unwrap().accounts[&orphan].1, "nothing deleted from a list never read to its end");
    // The same project with a working list: the orphan (on page 2) goes, nothing else.
    accounts.lock().unwrap().stuck_cursor = false;
    let deleted = cleanup().await.unwrap();
    assert_eq!(deleted, vec![orphan]);
    assert_eq!(accounts.lock().unwrap().live_names().len(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_put_gemini_key_that_google_calls_invalid_is_refused_at_once_not_retried() {
    let server = DevServer::start();
    let (base, fake) = fake_llm::start(Family::Gemini).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli::new(&server, &server.root_token, dir.path());
    let tok = random_token();
    let good = format!("AIzaSy-good-{tok}-xxxxxxxx");
    fake.lock().unwrap().valid.insert(good.clone());
    let cfg = config(
        dir.path(),
        &format!("[keys.gemini.provider]\ntype = \"manual\"\n[keys.gemini.validation]\npreset = \"gemini\"\nbase_url = \"{base}/v1beta\"\n"),
    );
    let start = Instant::now();
    let (code, _, stderr) =
        cli.run_with_stdin(&["--config", &cfg, "put", "gemini"], &format!("AIzaSy-typo-{tok}-xxxxxxxx"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("refused") && stderr.contains("API_KEY_INVALID"), "{stderr}");
    assert_eq!(fake.lock().unwrap().requests.len(), 1, "Google's 400 API_KEY_INVALID is a verdict, not retried");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let (status, _) = server.admin().try_read("secret/metadata/keysync/gemini").await;
    assert_eq!(status, 404, "nothing written");
    let (code, _, stderr) = cli.run_with_stdin(&["--config", &cfg, "put", "gemini"], &good);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(cli.ok(&["get", "gemini", "--reveal"]).trim(), good);
}
