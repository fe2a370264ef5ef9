//! The config reference (docs/configuration.md, "## Config reference") cannot drift from the
//! config types.
//!
//! Every config struct refuses unknown fields, so a bogus field fed into a section makes serde
//! list every field that section accepts ("expected one of ..."), and a bogus `method`/`type`
//! lists every auth method / provider. The test compares those lists with the reference's
//! tables both ways, parses every documented example into the real `Config`, checks every
//! documented literal default against what the code fills in, and loads every ```toml block
//! of README.md and docs/*.md as a config.

use keysync::config::{Config, HumanDuration};
use std::collections::{BTreeMap, BTreeSet};

const BOGUS: &str = "zz_not_a_field";

/// Each reference section: its heading id, the TOML path of its table in the serialized config,
/// and the smallest TOML that makes it exist (with its required fields).
struct Probe {
    id: &'static str,
    /// Where the section's table is, e.g. `["keys", "k", "sinks", 0]`.
    path: &'static [Step],
    base: &'static str,
    /// The enum tag this section is selected by (`method`, `type`): absent from serde's list.
    tag: Option<&'static str>,
}

#[derive(Clone, Copy)]
enum Step {
    Key(&'static str),
    Index(usize),
}
use Step::{Index as I, Key as K};

const PROBES: &[Probe] = &[
    Probe { id: "(top level)", path: &[], base: "", tag: None },
    Probe { id: "[vault]", path: &[K("vault")], base: "[vault]\n", tag: None },
    Probe {
        id: "[vault.auth] method = \"token\"",
        path: &[K("vault"), K("auth")],
        base: "[vault.auth]\nmethod = \"token\"\n",
        tag: Some("method"),
    },
    Probe {
        id: "[vault.auth] method = \"approle\"",
        path: &[K("vault"), K("auth")],
        base: "[vault.auth]\nmethod = \"approle\"\nrole_id_file = \"/r\"\nsecret_id_file = \"/s\"\n",
        tag: Some("method"),
    },
    Probe {
        id: "[vault.auth] method = \"jwt\"",
        path: &[K("vault"), K("auth")],
        base: "[vault.auth]\nmethod = \"jwt\"\nrole = \"r\"\njwt_file = \"/j\"\n",
        tag: Some("method"),
    },
    Probe {
        id: "[vault.auth] method = \"kubernetes\"",
        path: &[K("vault"), K("auth")],
        base: "[vault.auth]\nmethod = \"kubernetes\"\nrole = \"r\"\n",
        tag: Some("method"),
    },
    Probe {
        id: "[vault.auth] method = \"cert\"",
        path: &[K("vault"), K("auth")],
        base: "[vault.auth]\nmethod = \"cert\"\n",
        tag: Some("method"),
    },
    Probe { id: "[kv]", path: &[K("kv")], base: "[kv]\n", tag: None },
    Probe { id: "[rotation]", path: &[K("rotation")], base: "[rotation]\n", tag: None },
    Probe { id: "[agent]", path: &[K("agent")], base: "[agent]\n", tag: None },
    Probe { id: "[keys.NAME]", path: &[K("keys"), K("k")], base: "[keys.k]\n", tag: None },
    Probe {
        id: "[[keys.NAME.sinks]]",
        path: &[K("keys"), K("k"), K("sinks"), I(0)],
        base: "[[keys.k.sinks]]\npath = \"/run/keys/k.key\"\n",
        tag: None,
    },
    Probe {
        id: "[[sinks]]",
        path: &[K("sinks"), I(0)],
        base: "[[sinks]]\npath = \"/run/keys/k.key\"\nkeys = [\"k\"]\n",
        tag: None,
    },
    Probe {
        id: "[keys.NAME.on_change]",
        path: &[K("keys"), K("k"), K("on_change")],
        base: "[keys.k.on_change]\ncommand = [\"true\"]\n",
        tag: None,
    },
    Probe {
        id: "[keys.NAME.rotation]",
        path: &[K("keys"), K("k"), K("rotation")],
        base: "[keys.k.rotation]\n",
        tag: None,
    },
    Probe {
        id: "[keys.NAME.provider] type = \"generate\"",
        path: &[K("keys"), K("k"), K("provider")],
        base: "[keys.k.provider]\ntype = \"generate\"\n",
        tag: Some("type"),
    },
    Probe {
        id: "[keys.NAME.provider] type = \"command\"",
        path: &[K("keys"), K("k"), K("provider")],
        base: "[keys.k.provider]\ntype = \"command\"\ncommand = [\"/bin/mint\"]\n",
        tag: Some("type"),
    },
    Probe {
        id: "[keys.NAME.provider] type = \"openai\"",
        path: &[K("keys"), K("k"), K("provider")],
        base: "[keys.k.provider]\ntype = \"openai\"\nproject_id = \"proj_1\"\nadmin_key_file = \"/a\"\n",
        tag: Some("type"),
    },
    Probe {
        id: "[keys.NAME.provider] type = \"manual\"",
        path: &[K("keys"), K("k"), K("provider")],
        base: "[keys.k.provider]\ntype = \"manual\"\n",
        tag: Some("type"),
    },
    Probe {
        id: "[keys.NAME.provider.revoke.anthropic]",
        path: &[K("keys"), K("k"), K("provider"), K("revoke"), K("anthropic")],
        base: "[keys.k.provider]\ntype = \"manual\"\n[keys.k.provider.revoke.anthropic]\nadmin_key_file = \"/a\"\n",
        tag: None,
    },
    Probe {
        id: "[keys.NAME.validation]",
        path: &[K("keys"), K("k"), K("validation")],
        base: "[keys.k.validation]\npreset = \"openai\"\n",
        tag: None,
    },
    Probe {
        id: "[[dir_sinks]]",
        path: &[K("dir_sinks"), I(0)],
        base: "[[dir_sinks]]\npath = \"/run/keys/bundle\"\nfiles = []\n",
        tag: None,
    },
    Probe {
        id: "[[dir_sinks.files]]",
        path: &[K("dir_sinks"), I(0), K("files"), I(0)],
        base: "[[dir_sinks]]\npath = \"/run/keys/bundle\"\n[[dir_sinks.files]]\nname = \"f\"\nkeys = [\"k\"]\n",
        tag: None,
    },
    Probe { id: "[exec]", path: &[K("exec")], base: "[exec]\n", tag: None },
];

/// One documented field: default cell and example cell, as written.
#[derive(Debug, Clone)]
struct Row {
    default: String,
    example: String,
}

/// Where the config reference lives.
const REFERENCE: &str = "docs/configuration.md";

/// The reference's "## Config reference": heading id → field → row. A heading may name several
/// sections that share one table (`[[keys.NAME.sinks]]`, `[[sinks]]`).
fn readme_reference() -> BTreeMap<String, BTreeMap<String, Row>> {
    let readme = std::fs::read_to_string(repo().join(REFERENCE)).unwrap_or_else(|e| panic!("{REFERENCE}: {e}"));
    let start =
        readme.find("\n## Config reference").expect("docs/configuration.md has a \"## Config reference\" section");
    let body = &readme[start + 1..];
    let end = body[3..].find("\n## ").map(|i| i + 3).unwrap_or(body.len());
    let body = &body[..end];
    let mut out: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    let mut current: Vec<String> = Vec::new();
    for line in body.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            current = h.split('`').skip(1).step_by(2).map(str::to_string).collect();
            assert!(!current.is_empty(), "heading {h:?} names no `section`");
            for id in &current {
                assert!(out.insert(id.clone(), BTreeMap::new()).is_none(), "{REFERENCE} documents {id} twice");
            }
            continue;
        }
        let Some(id) = current.first() else { continue };
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 4, "{id}: a row needs field | default | example | meaning: {line}");
        let field = cells[0].trim_matches('`').to_string();
        let row = Row { default: cells[1].to_string(), example: cells[2].to_string() };
        for id in &current {
            let rows = out.get_mut(id).unwrap();
            assert!(rows.insert(field.clone(), row.clone()).is_none(), "{id}: {field} documented twice");
        }
    }
    out
}

/// Names between backticks after `marker` in a serde error (`expected one of `a`, `b``).
fn listed_after(err: &str, marker: &str) -> BTreeSet<String> {
    let at = err.find(marker).unwrap_or_else(|| panic!("no {marker:?} in: {err}"));
    let rest = &err[at + marker.len()..];
    if rest.trim_start().starts_with("there are no fields") {
        return BTreeSet::new();
    }
    let rest = rest.split('\n').next().unwrap_or("");
    rest.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The fields a section accepts, as serde lists them for an unknown one.
fn accepted_fields(p: &Probe) -> BTreeSet<String> {
    let text = insert_field(p, BOGUS, toml::Value::Integer(1));
    let err = toml::from_str::<Config>(&text).expect_err("a bogus field must be refused").to_string();
    let mut fields = listed_after(&err, &format!("unknown field `{BOGUS}`, expected"));
    fields.extend(p.tag.map(str::to_string));
    fields
}

/// The probe's base with `field = value` set in its section.
fn insert_field(p: &Probe, field: &str, value: toml::Value) -> String {
    let mut doc: toml::Table = toml::from_str(p.base).unwrap();
    let table = navigate_mut(&mut doc, p.path);
    table.insert(field.to_string(), value);
    toml::to_string(&doc).unwrap()
}

fn navigate_mut<'a>(doc: &'a mut toml::Table, path: &[Step]) -> &'a mut toml::Table {
    let mut value: &mut toml::Value = {
        if path.is_empty() {
            return doc;
        }
        let Step::Key(k) = path[0] else { panic!("a path starts with a key") };
        doc.get_mut(k).unwrap_or_else(|| panic!("base lacks {k}"))
    };
    for step in &path[1..] {
        value = match step {
            Step::Key(k) => value.get_mut(*k).unwrap_or_else(|| panic!("base lacks {k}")),
            Step::Index(i) => value.get_mut(*i).unwrap_or_else(|| panic!("base lacks [{i}]")),
        };
    }
    value.as_table_mut().expect("the path ends at a table")
}

fn navigate<'a>(value: &'a toml::Value, path: &[Step]) -> Option<&'a toml::Value> {
    let mut v = value;
    for step in path {
        v = match step {
            Step::Key(k) => v.get(*k)?,
            Step::Index(i) => v.get(*i)?,
        };
    }
    Some(v)
}

/// A cell holding one TOML value in backticks, e.g. `` `"10s"` `` or `` `true` ``.
fn literal(cell: &str) -> Option<toml::Value> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    if inner.contains('`') {
        return None;
    }
    let table: toml::Table = toml::from_str(&format!("v = {inner}")).ok()?;
    table.get("v").cloned()
}

/// Durations compare by length ("24h" is "1day"); everything else as TOML values.
fn same_value(a: &toml::Value, b: &toml::Value) -> bool {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        if let (Ok(dx), Ok(dy)) = (HumanDuration::try_from(x.to_string()), HumanDuration::try_from(y.to_string())) {
            return dx == dy;
        }
    }
    a == b
}

#[test]
fn every_section_in_the_code_is_documented_and_nothing_else() {
    let readme = readme_reference();
    let documented: BTreeSet<&str> = readme.keys().map(String::as_str).collect();
    let known: BTreeSet<&str> = PROBES.iter().map(|p| p.id).collect();
    let missing: Vec<_> = known.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&known).collect();
    assert!(missing.is_empty(), "{REFERENCE} lacks the sections {missing:?}");
    assert!(
        extra.is_empty(),
        "{REFERENCE} documents sections {extra:?} that this test does not know: add a Probe for each"
    );
}

#[test]
fn every_field_in_the_code_is_documented_and_nothing_else() {
    let readme = readme_reference();
    let mut problems = Vec::new();
    for p in PROBES {
        let code = accepted_fields(p);
        let docs: BTreeSet<String> = readme.get(p.id).map(|r| r.keys().cloned().collect()).unwrap_or_default();
        for f in code.difference(&docs) {
            problems.push(format!("{}: `{f}` is accepted by the code but not in {REFERENCE}", p.id));
        }
        for f in docs.difference(&code) {
            problems.push(format!("{}: `{f}` is documented in {REFERENCE} but the code does not accept it", p.id));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_auth_method_and_provider_type_is_documented() {
    let readme = readme_reference();
    for (tag_field, base, prefix) in [
        ("method", "[vault.auth]\nmethod = \"zz_nope\"\n", "[vault.auth] method = "),
        ("type", "[keys.k.provider]\ntype = \"zz_nope\"\n", "[keys.NAME.provider] type = "),
    ] {
        let err = toml::from_str::<Config>(base).expect_err("unknown variant").to_string();
        let code = listed_after(&err, "unknown variant `zz_nope`, expected");
        let docs: BTreeSet<String> =
            readme.keys().filter_map(|id| id.strip_prefix(prefix)).map(|v| v.trim_matches('"').to_string()).collect();
        assert_eq!(code, docs, "{tag_field}: the code's variants vs {REFERENCE}'s sections");
    }
}

#[test]
fn every_documented_example_parses_into_the_config() {
    let readme = readme_reference();
    let mut problems = Vec::new();
    for p in PROBES {
        for (field, row) in readme.get(p.id).into_iter().flatten() {
            if p.tag == Some(field.as_str()) {
                continue;
            }
            let Some(value) = literal(&row.example) else {
                problems
                    .push(format!("{}: `{field}`: example {:?} is not one TOML value in backticks", p.id, row.example));
                continue;
            };
            let text = insert_field(p, field, value);
            if let Err(e) = toml::from_str::<Config>(&text) {
                problems.push(format!("{}: `{field}` = {}: {e}", p.id, row.example));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_documented_default_is_the_codes_default() {
    let readme = readme_reference();
    let mut problems = Vec::new();
    for p in PROBES {
        let cfg: Config = toml::from_str(p.base).unwrap_or_else(|e| panic!("{}: base does not parse: {e}", p.id));
        let serialized = toml::Value::try_from(&cfg).unwrap();
        let Some(section) = navigate(&serialized, p.path) else {
            problems.push(format!("{}: the section is not in the serialized config", p.id));
            continue;
        };
        let base: toml::Table = toml::from_str(p.base).unwrap();
        let in_base = navigate(&toml::Value::Table(base), p.path).cloned();
        for (field, row) in readme.get(p.id).into_iter().flatten() {
            let given = in_base.as_ref().and_then(|t| t.get(field)).is_some();
            let actual = section.get(field);
            let structured = matches!(actual, Some(toml::Value::Table(_)))
                || matches!(actual, Some(toml::Value::Array(a)) if a.iter().any(toml::Value::is_table));
            if given || structured {
                continue;
            }
            match (literal(&row.default), actual) {
                (Some(doc), Some(code)) if !same_value(&doc, code) => {
                    problems.push(format!("{}: `{field}` {REFERENCE} says default {}, the code has {code}", p.id, row.default))
                }
                (Some(_), Some(_)) => {}
                (Some(doc), None) => problems.push(format!(
                    "{}: `{field}` {REFERENCE} says default {doc}, the code leaves it unset (write what unset means instead)",
                    p.id
                )),
                (None, Some(code)) => problems.push(format!(
                    "{}: `{field}` defaults to {code} in the code; {REFERENCE}'s default cell {:?} should say `{code}`",
                    p.id, row.default
                )),
                (None, None) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_probe_finds_fields_the_way_the_test_assumes() {
    // If serde's wording changed, the list would come back empty and the comparison would be
    // vacuous: pin it on a section whose fields are known.
    let kv = PROBES.iter().find(|p| p.id == "[kv]").unwrap();
    assert_eq!(accepted_fields(kv), BTreeSet::from(["mount".to_string(), "prefix".to_string()]));
}

/// The repository root.
fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, with their text.
fn markdown_files() -> Vec<(String, String)> {
    let mut files = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(repo().join(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            (f, text)
        })
        .collect()
}

#[test]
fn every_toml_example_in_the_docs_is_a_valid_config() {
    // The recipes and section examples are meant to be copied: each ```toml block of README.md
    // and docs/*.md must load and validate as it stands.
    let mut count = 0;
    let mut problems = Vec::new();
    for (file, text) in markdown_files() {
        let blocks: Vec<&str> =
            text.split("```toml\n").skip(1).map(|rest| rest.split("```").next().unwrap_or("")).collect();
        for (i, block) in blocks.iter().enumerate() {
            count += 1;
            let first = block.lines().next().unwrap_or("");
            match toml::from_str::<Config>(block) {
                Ok(cfg) => {
                    if let Err(e) = keysync::config::validate(&cfg, &file) {
                        problems.push(format!("{file} block {i} ({first}): {e}"));
                    }
                }
                Err(e) => problems.push(format!("{file} block {i} ({first}): {e}")),
            }
        }
    }
    assert!(count >= 5, "expected the docs' config examples, found {count}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
