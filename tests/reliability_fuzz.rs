//! Property-based fuzzing of the three parsers that take outside input: the config loader
//! (arbitrary text and structured mutations of valid configs, plus environment overrides),
//! the `custom_metadata` state codec (arbitrary maps, arbitrary states), and template
//! rendering (arbitrary templates over keys). Each target runs a bounded number of cases in
//! CI (`report::scale`) and many more in the full run; `KEYSYNC_FUZZ_CASES=N` sets the count
//! by hand (e.g. `KEYSYNC_FUZZ_CASES=1000000 cargo test --release --test reliability_fuzz`).

mod support;

use keysync::config::{load_with_env, ConfigSource};
use keysync::render::{render_content, KeyMaterial, Sink, SinkConfig, SinkFormat};
use keysync::secret::Secret;
use keysync::store::{Intent, RotationState, ValidationRetry, FIXED_FIELDS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;
use support::report;

/// Cases per target: CI's count, the full run's, or `KEYSYNC_FUZZ_CASES`.
fn cases(ci: u32, full: u32) -> u32 {
    std::env::var("KEYSYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(report::scale(ci as usize, full as usize) as u32)
}

/// Runs `test` over `cases` inputs from `strategy`; records the row; panics with the
/// (shrunk) failing input otherwise.
fn fuzz<S: Strategy>(
    target: &str,
    what_held: &str,
    n: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    ACCEPTED.with(|a| a.set(0));
    let mut runner = TestRunner::new(Config { cases: n, failure_persistence: None, ..Config::default() });
    let started = Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{target}: {e}");
    }
    let accepted = ACCEPTED.with(Cell::get);
    let split = if accepted > 0 { format!(" ({accepted} inputs accepted, the rest refused)") } else { String::new() };
    report::record(
        "Fuzzing",
        target,
        n as usize,
        &format!("{what_held}{split}; {:.1} s", started.elapsed().as_secs_f64()),
    );
}

thread_local! {
    /// Inputs the parser under test accepted (the rest it refused), for the report; per
    /// thread, because the test functions run in parallel and the runner stays on its thread.
    static ACCEPTED: Cell<usize> = const { Cell::new(0) };
}

// ---------------------------------------------------------------------------------------
// Config parser

/// A config touching every section, valid as it stands.
const BASE_CONFIG: &str = r#"[vault]
address = "http://127.0.0.1:8200"
timeout = "30s"
[vault.auth]
method = "approle"
role_id_file = "/etc/keysync/role_id"
secret_id_file = "/etc/keysync/secret_id"
[kv]
mount = "secret"
prefix = "keysync"
[rotation]
grace = "24h"
[agent]
poll_interval = "10s"
listen = "off"
rotate = true
[[keys.openai.sinks]]
path = "/run/keys/openai.key"
mode = "0640"
include_previous = true
[keys.openai.on_change]
command = ["systemctl", "reload", "app"]
wait_min = "2s"
[keys.openai.provider]
type = "generate"
prefix = "sk-gw-"
length = 48
[keys.openai.rotation]
interval = "30d"
grace = "1h"
[[sinks]]
path = "/run/keys/llm.env"
format = "env"
keys = ["openai", "deepseek"]
[[sinks]]
path = "/run/keys/t.yaml"
format = "template"
keys = ["openai"]
template = "api_key: {{ keys.openai.api_key }}\n"
[[dir_sinks]]
path = "/run/keys/bundle"
files = [{ name = "openai", keys = ["openai"] }]
[exec]
env = { OPENAI_API_KEY = "openai" }
pass_env = ["HOME", "APP_*"]
"#;

/// Values that are wrong somewhere: other types, edge durations, paths, modes, signals.
const VALUE_POOL: &[&str] = &[
    "5",
    "-1",
    "0",
    "1.5",
    "true",
    "\"\"",
    "\"x\"",
    "[]",
    "{}",
    "[1, \"a\"]",
    "{ a = 1 }",
    "\"0600\"",
    "\"0666\"",
    "\"4755\"",
    "\"-1s\"",
    "\"0s\"",
    "\"1ms\"",
    "\"99999999999999999999d\"",
    "\"10 parsecs\"",
    "\"../x\"",
    "\"/abs/path\"",
    "\"relative\"",
    "\"\\u0000\"",
    "\"SIGHUP\"",
    "\"SIGNOPE\"",
    "\"61 * * * *\"",
    "\"0 3 * * 1\"",
    "\"raw\"",
    "\"template\"",
    "\"in_place\"",
    "\"approle\"",
    "\"{{ keys.x.api_key }}\"",
    "\"{% if %}\"",
    "\"http://[::1\"",
    "\"nobody\"",
    "\"VAULT_TOKEN\"",
    "\"*\"",
    "18446744073709551616",
];

/// Lines that may be added anywhere (known fields, often in the wrong section).
const LINE_POOL: &[&str] = &[
    "[agent]",
    "[vault]",
    "[vault.auth]",
    "[kv]",
    "[exec]",
    "[[sinks]]",
    "[[keys.openai.sinks]]",
    "[keys.openai.rotation]",
    "[keys.openai.provider]",
    "[keys.\"Bad Name\"]",
    "[[dir_sinks]]",
    "method = \"token\"",
    "method = \"jwt\"",
    "type = \"command\"",
    "type = \"openai\"",
    "schedule = \"0 3 * * 1\"",
    "window = \"2h\"",
    "user = \"nobody\"",
    "pass_env = [\"VAULT_TOKEN\"]",
    "keys = []",
    "format = \"json\"",
    "write = \"in_place\"",
    "on_missing = \"remove\"",
    "signal = \"SIGHUP\"",
    "pid_file = \"/run/app.pid\"",
    "adopt_after = \"1s\"",
    "path = \"/run/keys/openai.key\"",
    "unknown_field = 1",
    "= 1",
    "[",
    "\"",
    "]]",
];

#[derive(Clone, Debug)]
enum Mutation {
    /// Replace the value of line `n` (if it has one) with a pool value.
    Value(usize, usize),
    Delete(usize),
    Duplicate(usize),
    /// Insert a pool line before line `n`.
    Insert(usize, usize),
    /// Append `x` to the field name of line `n`.
    Rename(usize),
    /// Cut the file at byte offset `n` (a truncated write).
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (0..64usize, 0..VALUE_POOL.len()).prop_map(|(l, v)| Mutation::Value(l, v)),
        3 => (0..64usize).prop_map(Mutation::Delete),
        1 => (0..64usize).prop_map(Mutation::Duplicate),
        2 => (0..64usize, 0..LINE_POOL.len()).prop_map(|(l, p)| Mutation::Insert(l, p)),
        1 => (0..64usize).prop_map(Mutation::Rename),
        1 => (0..2000usize).prop_map(Mutation::Truncate),
    ]
}

fn mutate(base: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = base.lines().map(String::from).collect();
    for m in mutations {
        let n = lines.len().max(1);
        match *m {
            Mutation::Value(l, v) => {
                if let Some((k, _)) = lines.get(l % n).and_then(|line| line.split_once(" = ")) {
                    lines[l % n] = format!("{k} = {}", VALUE_POOL[v]);
                }
            }
            Mutation::Delete(l) if !lines.is_empty() => {
                lines.remove(l % n);
            }
            Mutation::Duplicate(l) if !lines.is_empty() => {
                let line = lines[l % n].clone();
                lines.insert(l % n, line);
            }
            Mutation::Insert(l, p) => lines.insert(l % (lines.len() + 1), LINE_POOL[p].to_string()),
            Mutation::Rename(l) => {
                if let Some((k, v)) = lines.get(l % n).and_then(|line| line.split_once(" = ")) {
                    lines[l % n] = format!("{k}x = {v}");
                }
            }
            Mutation::Truncate(at) => {
                let text = lines.join("\n");
                let cut = text.char_indices().map(|(i, _)| i).take_while(|i| *i <= at).last().unwrap_or(0);
                lines = text[..cut].lines().map(String::from).collect();
            }
            _ => {}
        }
    }
    lines.join("\n") + "\n"
}

/// Overrides in the environment: known and unknown fields with pool values.
fn env_overrides() -> impl Strategy<Value = Vec<(String, String)>> {
    let names = prop_oneof![
        Just("KEYSYNC_AGENT__POLL_INTERVAL".to_string()),
        Just("KEYSYNC_AGENT__ROTATE".to_string()),
        Just("KEYSYNC_KV__PREFIX".to_string()),
        Just("KEYSYNC_VAULT__ADDRESS".to_string()),
        Just("KEYSYNC_VAULT__TIMEOUT".to_string()),
        Just("KEYSYNC_VAULT__AUTH__METHOD".to_string()),
        "KEYSYNC_[A-Z_]{1,12}__[A-Z_]{1,12}",
    ];
    let values =
        prop_oneof![(0..VALUE_POOL.len()).prop_map(|i| VALUE_POOL[i].trim_matches('"').to_string()), "\\PC{0,20}"];
    proptest::collection::vec((names, values), 0..3)
}

/// The loader never panics; an accepted config prints as TOML that loads back to the same
/// config; a refused one says which file (and usually which field).
fn check_config(text: &str, env: &[(String, String)]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let path = dir.path().join("keysync.toml");
    std::fs::write(&path, text).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let env: HashMap<String, String> = env.iter().cloned().collect();
    let source = ConfigSource { path: path.clone(), explicit: true };
    let loaded = std::panic::catch_unwind(|| load_with_env(&source, &env))
        .map_err(|_| TestCaseError::fail(format!("config loader panicked on {text:?} with {env:?}")))?;
    match loaded {
        Ok(cfg) => {
            ACCEPTED.with(|a| a.set(a.get() + 1));
            let printed = cfg.to_toml();
            let again_path = dir.path().join("again.toml");
            std::fs::write(&again_path, &printed).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = load_with_env(&ConfigSource { path: again_path, explicit: true }, &HashMap::new())
                .map_err(|e| TestCaseError::fail(format!("the printed config does not load back: {e}\n{printed}")))?;
            prop_assert_eq!(again, cfg, "printed config differs after a round trip:\n{}", printed);
        }
        Err(e) => {
            let said = e.to_string();
            prop_assert!(said.contains(&path.display().to_string()), "error does not name the file: {}", said);
            prop_assert!(!e.message.trim().is_empty(), "empty error message");
        }
    }
    Ok(())
}

#[test]
fn fuzz_config_parser() {
    let n = cases(300, 20_000);
    fuzz(
        "config parser: arbitrary text",
        "no panic; accepted configs round-trip through to_toml; errors name the file",
        n,
        prop_oneof![any::<String>(), "[\\[\\]a-z_.=\" 0-9\n{}#,*/-]{0,300}"],
        |text| check_config(&text, &[]),
    );
    fuzz(
        "config parser: 1-3 structured mutations of a valid config + env overrides",
        "no panic; accepted configs round-trip through to_toml; errors name the file",
        n * 2,
        (proptest::collection::vec(mutation(), 1..4), env_overrides()),
        |(muts, env)| check_config(&mutate(BASE_CONFIG, &muts), &env),
    );
}

// ---------------------------------------------------------------------------------------
// custom_metadata state codec

fn metadata_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0..FIXED_FIELDS.len()).prop_map(|i| FIXED_FIELDS[i].to_string()),
        1 => "fp\\.v[0-9]{1,3}",
        1 => "fp\\.v.{0,4}",
        2 => "[a-zA-Z_.-]{1,20}",
        1 => "\\PC{1,12}",
    ]
}

fn metadata_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[0-9]{1,4}",
        1 => Just("1".to_string()),
        1 => Just("true".to_string()),
        1 => Just("false".to_string()),
        1 => Just("2026-01-01T00:00:00Z".to_string()),
        1 => "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](Z|\\+0[0-9]:00)",
        1 => "sha256:[0-9a-f]{64}",
        1 => "sha256:[0-9a-fA-Fg]{0,70}",
        1 => "[0-9]{1,3}(,[0-9]{1,3}){0,4}",
        1 => "v[0-9]{1,3}:[0-9]{1,2}:2026-0[1-9]-1[0-9]T00:00:00Z",
        1 => "v?[0-9]{0,3}:?[0-9]{0,2}:?.{0,10}",
        2 => "\\PC{0,40}",
        1 => any::<String>(),
    ]
}

fn arbitrary_state() -> impl Strategy<Value = RotationState> {
    let version = || proptest::option::of(1u64..100_000);
    let time =
        || proptest::option::of((0i64..4_000_000_000).prop_map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap()));
    let text = || proptest::option::of("[!-~]([ -~]{0,80}[!-~])?");
    // A rotation intent: any printable actor, any time (with nanoseconds, as recorded).
    let intent = || {
        proptest::option::of(
            ("[!-~]([ -~]{0,80}[!-~])?", 0i64..4_000_000_000, 0u32..1_000_000_000)
                .prop_map(|(actor, s, n)| Intent::new(&actor, chrono::DateTime::from_timestamp(s, n).unwrap())),
        )
    };
    (
        (version(), version(), version(), time(), time()),
        (text(), text(), any::<bool>(), proptest::collection::btree_set(1u64..100_000, 0..5)),
        (
            proptest::option::of((1u64..100_000, 0u32..50, 0i64..4_000_000_000)),
            intent(),
            proptest::collection::btree_map(1u64..100_000, "[0-9a-f]{64}", 0..8),
            text(),
        ),
    )
        .prop_map(
            |(
                (current, previous, pending, grace_until, rotated_at),
                (rotated_by, reason, disabled, failed),
                (retry, intent, fps, forced_retirement),
            )| {
                RotationState {
                    current,
                    previous,
                    pending,
                    grace_until,
                    rotated_at,
                    rotated_by,
                    reason,
                    disabled,
                    failed,
                    retry: retry.map(|(version, attempts, t)| ValidationRetry {
                        version,
                        attempts,
                        next_at: chrono::DateTime::from_timestamp(t, 0).unwrap(),
                    }),
                    intent,
                    forced_retirement,
                    fingerprints: fps.into_iter().map(|(v, h)| (v, format!("sha256:{h}"))).collect(),
                    revoked: Vec::new(),
                    managed: true,
                }
            },
        )
}

/// What Vault accepts in custom_metadata: at most 64 keys, keys ≤ 128 bytes, values 1–512
/// printable bytes.
fn vault_accepts(meta: &BTreeMap<String, String>) -> bool {
    meta.len() <= 64
        && meta.iter().all(|(k, v)| {
            !k.is_empty() && k.len() <= 128 && !v.is_empty() && v.len() <= 512 && !v.chars().any(char::is_control)
        })
}

#[test]
fn fuzz_state_codec() {
    fuzz(
        "custom_metadata codec: arbitrary maps (keysync, foreign and garbage fields)",
        "decode never panics; decoded states re-encode within Vault's limits and decode to the same state; \
         a state change never patches a foreign field",
        cases(3000, 200_000),
        proptest::collection::btree_map(metadata_key(), metadata_value(), 0..20),
        |meta| {
            let decoded = std::panic::catch_unwind(|| RotationState::decode("k", &meta))
                .map_err(|_| TestCaseError::fail("decode panicked"))?;
            let Ok(state) = decoded else { return Ok(()) };
            ACCEPTED.with(|a| a.set(a.get() + 1));
            let encoded = state.encode();
            prop_assert!(vault_accepts(&encoded), "encode broke Vault's limits: {:?}", encoded);
            let again = RotationState::decode("k", &encoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut want = state.clone();
            want.managed = again.managed; // the schema marker is written with the first state
            prop_assert_eq!(again, want);
            let mut next = state.clone();
            next.current = Some(state.current.unwrap_or(0) + 1);
            next.previous = state.current;
            next.intent = None;
            next.managed = true;
            for k in next.merge_patch(&state).keys() {
                prop_assert!(RotationState::is_own_field(k), "a state change patched foreign field {:?}", k);
            }
            Ok(())
        },
    );
    fuzz(
        "custom_metadata codec: arbitrary rotation states",
        "encode stays within Vault's limits; decode(encode(s)) == s",
        cases(3000, 200_000),
        arbitrary_state(),
        |state| {
            let encoded = state.encode();
            prop_assert!(vault_accepts(&encoded), "encode broke Vault's limits: {:?}", encoded);
            let back = RotationState::decode("k", &encoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, state);
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// Template rendering

const TEMPLATE_POOL: &[&str] = &[
    "{{ keys.k.api_key }}",
    "{{ keys.k.api_key | upper }}",
    "{{ keys.k.api_key | int }}",
    "{{ keys.k.api_key | float }}",
    "{{ keys.k.api_key[0:60] }}",
    "{{ keys.k.api_key[99] }}",
    "{{ keys.k.api_key.nope }}",
    "{{ keys.k.api_key + 1 }}",
    "{{ keys.k.api_key ~ 1 }}",
    "{{ keys.k.api_key | env_quote }}",
    "{{ keys.k.api_key | tojson }}",
    "{{ keys.k.api_key | list | join('-') }}",
    "{% for c in keys.k.api_key %}{{ c }}{% endfor %}",
    "{% if keys.k.api_key %}yes{% endif %}",
    "{% if keys.k.api_key == 1 %}",
    "{% endif %}",
    "{% endfor %}",
    "{{ keys.k.fields.base_url }}",
    "{{ keys.k.previous.api_key }}",
    "{{ keys.nope.api_key }}",
    "{{ nope }}",
    "{{ keys.k.api_key(1) }}",
    "{{ range(keys.k.api_key) }}",
    "{{ keys.k.api_key | batch(3) }}",
    "{{ keys.k.api_key is divisibleby 3 }}",
    "{{ keys.k.fingerprint }}",
    "{{ keys.k.version }}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "\n",
    "api_key: ",
    "'",
    "\"",
    "{{ 1/0 }}",
    "{{ keys.k.api_key / 2 }}",
    "{{ keys['k'].api_key }}",
    "{% set x = keys.k.api_key %}{{ x | int }}",
    "{% include keys.k.api_key %}",
    "{% extends keys.k.api_key %}",
    "{{ keys.k.api_key | replace('a', keys.k.api_key) | int }}",
    "{{ keys.k.api_key | default(1) | abs }}",
];

fn template() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![4 => (0..TEMPLATE_POOL.len()).prop_map(|i| TEMPLATE_POOL[i].to_string()), 1 => "\\PC{0,8}"],
        1..8,
    )
    .prop_map(|parts| parts.concat())
}

/// No run of 8 characters of `secret` appears in `text`.
fn shows_secret(text: &str, secret: &str) -> bool {
    let chars: Vec<char> = secret.chars().collect();
    chars.windows(8).any(|w| text.contains(&w.iter().collect::<String>()))
}

#[test]
fn fuzz_template_rendering() {
    fuzz(
        "template rendering: 1-7 fragments (filters, loops, includes, type errors, bad syntax) over arbitrary keys",
        "never panics; errors name the sink path and never show 8+ characters of the current or previous key",
        cases(1500, 50_000),
        (template(), "[A-Za-z0-9_-]{20,60}", "[A-Za-z0-9_-]{20,60}", "\\PC{0,30}"),
        |(template, key, prev, base_url)| {
            let mut cfg = SinkConfig::new("/run/keys/fuzz.yaml");
            cfg.format = SinkFormat::Template;
            cfg.keys = vec!["k".into()];
            cfg.template = Some(template.clone());
            let material = KeyMaterial::new("k", 3, Secret::new(format!("sk-{key}")))
                .with_previous(2, Secret::new(format!("sk-{prev}")))
                .with_field("base_url", base_url);
            let result = std::panic::catch_unwind(|| {
                Sink::new(cfg).and_then(|sink| render_content(&sink, std::slice::from_ref(&material)))
            })
            .map_err(|_| TestCaseError::fail(format!("rendering panicked on {template:?}")))?;
            if result.is_ok() {
                ACCEPTED.with(|a| a.set(a.get() + 1));
            }
            if let Err(e) = result {
                let said = e.to_string();
                prop_assert!(said.contains("/run/keys/fuzz.yaml"), "error does not name the sink: {}", said);
                prop_assert!(
                    !shows_secret(&said, &format!("sk-{key}")) && !shows_secret(&said, &format!("sk-{prev}")),
                    "error shows a key: {}",
                    said
                );
                prop_assert!(
                    !shows_secret(&format!("{e:?}"), &format!("sk-{key}")),
                    "Debug of the error shows the key"
                );
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_helpers_are_sound() {
    // The mutator really changes the config and the secret check really finds a key.
    assert_ne!(mutate(BASE_CONFIG, &[Mutation::Value(1, 0)]), BASE_CONFIG);
    // The base config is valid, so the mutations explore the edge of validity.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.toml"), BASE_CONFIG).unwrap();
    let source = ConfigSource { path: dir.path().join("k.toml"), explicit: true };
    if let Err(e) = load_with_env(&source, &HashMap::new()) {
        panic!("BASE_CONFIG does not load: {e}");
    }
    assert!(shows_secret("x sk-abcdefgh y", "sk-abcdefghij"));
    assert!(!shows_secret("sk-abcd…", "sk-abcdefghij"));
}
