//! The README and docs/ stay usable: every relative link and anchor resolves, the README stays
//! a short front page that shows the two commands CI runs, and its five-minute tour runs as
//! printed against a real server.
//!
//! The config reference (docs/configuration.md) is checked against the code by
//! tests/config_reference.rs, the metrics table and consumer recipes by tests/packaging.rs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The README is a front page, the reference lives in docs/ (issue: an 813-line README).
const README_MAX_LINES: usize = 250;
/// What a newcomer sees without scrolling.
const FIRST_SCREEN_LINES: usize = 30;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md and every docs/*.md, as paths relative to the repository.
fn markdown_files() -> Vec<String> {
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    let mut files = vec!["README.md".to_string()];
    files.extend(docs);
    files
}

/// The lines of `text` outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// `line` without its inline code spans (a link inside backticks is not a link).
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The anchor GitHub gives a heading: lowercased, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`; repeated headings get `-1`, `-2`, ….
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a markdown file offers.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let Some(rest) = line.strip_prefix('#') else { continue };
        let heading = rest.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// Inline links `[text](target)` in prose: (line number, target).
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let dir = Path::new(&file).parent().unwrap_or(Path::new("")).to_path_buf();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let target_file = if path.is_empty() { PathBuf::from(&file) } else { dir.join(path) };
            let on_disk = repo().join(&target_file);
            if !on_disk.exists() {
                problems.push(format!("{file}:{line}: {target}: {} does not exist", target_file.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if on_disk.extension().is_none_or(|e| e != "md") {
                problems.push(format!("{file}:{line}: {target}: an anchor into a file that is not markdown"));
                continue;
            }
            let offered = anchors(&std::fs::read_to_string(&on_disk).unwrap_or_default());
            if !offered.contains(anchor) {
                problems.push(format!(
                    "{file}:{line}: {target}: {} has no heading with anchor #{anchor}",
                    target_file.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
    assert!(checked >= 30, "found only {checked} relative links: is the link parser still finding them?");
}

#[test]
fn the_link_checker_reads_links_and_anchors_the_way_github_does() {
    // Pin the parser and the anchor rule, so the test above cannot pass by finding nothing.
    assert_eq!(slug(" Several agents on one host: `KEYSYNC_AGENT_ID`"), "several-agents-on-one-host-keysync_agent_id");
    assert_eq!(
        slug(" Performance (keysync and `vault agent` side by side)"),
        "performance-keysync-and-vault-agent-side-by-side"
    );
    assert_eq!(
        anchors("# A\n```sh\n# not a heading\n```\n## A\n#hashtag\n"),
        BTreeSet::from(["a".to_string(), "a-1".to_string()])
    );
    assert_eq!(
        links("see [x](a.md#b) and `[y](not-a-link)` [z](https://e.com)\n```\n[w](in-code)\n```\n"),
        vec![(1, "a.md#b".to_string()), (1, "https://e.com".to_string())]
    );
}

#[test]
fn the_readme_is_a_short_front_page_with_the_two_commands_ci_runs() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines; keep it under {README_MAX_LINES} and move reference text to docs/"
    );
    let first_screen: String = readme.lines().take(FIRST_SCREEN_LINES).collect::<Vec<_>>().join("\n");
    // .ci/run runs "exactly the README's test command, then the README's demo command".
    let ci = read(".ci/run");
    for command in ["scripts/test", "scripts/demo"] {
        assert!(
            first_screen.contains(&format!("`{command}`")),
            "the README's first {FIRST_SCREEN_LINES} lines must show `{command}`"
        );
        assert!(ci.lines().any(|l| l.trim() == command), ".ci/run must run `{command}` as the README says CI does");
        assert!(repo().join(command).is_file(), "{command} does not exist");
    }
    let linked: BTreeSet<String> = links(&readme).into_iter().map(|(_, t)| t).collect();
    for file in markdown_files().iter().filter(|f| f.starts_with("docs/")) {
        assert!(
            linked.iter().any(|t| t == file || t.starts_with(&format!("{file}#"))),
            "README.md does not link to {file}: add it to the Documentation table"
        );
    }
}

/// The ```sh blocks of the README's tour, except the one that starts a dev server (the test
/// brings its own server).
fn tour_blocks() -> (String, usize) {
    let readme = read("README.md");
    let start = readme.find("\n## A five-minute tour").expect("README has \"## A five-minute tour\"");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map(|e| e + 3).unwrap_or(section.len());
    let section = &section[..end];
    let (mut script, mut skipped) = (String::new(), 0);
    for block in section.split("```sh\n").skip(1) {
        let block = block.split("```").next().unwrap_or("");
        if block.contains("server -dev") {
            skipped += 1;
            continue;
        }
        script.push_str(block);
    }
    (script, skipped)
}

#[test]
fn the_readme_tour_runs_as_printed() {
    let (script, skipped) = tour_blocks();
    assert_eq!(skipped, 1, "the tour has one block that starts the dev server");
    assert!(script.contains("keysync put") && script.contains("keysync run --once"), "the tour:\n{script}");
    let server = support::DevServer::start();
    let home = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_keysync")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-euo", "pipefail", "-c", &script])
        .env_clear()
        .env("PATH", path)
        .env("HOME", home.path())
        .env("TMPDIR", home.path())
        .env("VAULT_ADDR", &server.addr)
        .env("VAULT_TOKEN", &server.root_token)
        // Its own prefix, in case the tests run against a shared external server.
        .env("KEYSYNC_KV__PREFIX", support::unique("tour"))
        .current_dir(home.path());
    if let Some(ca) = support::test_ca() {
        cmd.env("VAULT_CACERT", ca);
    }
    let out = cmd.output().expect("bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the README's tour failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What the tour promises a reader sees: the second key rendered, the first one kept beside
    // it during grace, the key masked where it is not asked for.
    assert!(
        stdout.contains("sk-tour-second-9876543210\nsk-tour-first-0123456789"),
        "`cat keys/openai.key keys/openai.key.previous` did not show the new key, then the old one:\n{stdout}"
    );
    // `keysync get openai` comes before the first `cat`: the key shows only masked there.
    let before_cat = &stdout[..stdout.find("sk-tour-first-0123456789").unwrap_or(0)];
    assert!(before_cat.contains("sk-t…6789"), "`keysync get openai` did not show the masked key first:\n{stdout}");
    assert!(stdout.contains("rotated: v1 is current"), "`keysync rotate gateway` did not create v1:\n{stdout}");
}

#[test]
fn the_command_reference_lists_every_subcommand() {
    // docs/cli.md's table against `keysync --help`, so a new subcommand cannot go undocumented.
    let out = Command::new(env!("CARGO_BIN_EXE_keysync")).arg("--help").output().expect("keysync --help");
    assert!(out.status.success(), "keysync --help: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let listed = help.split("Commands:").nth(1).and_then(|s| s.split("Options:").next()).unwrap_or("");
    let subcommands: Vec<&str> =
        listed.lines().filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").collect();
    assert!(subcommands.len() >= 15, "parsed too few subcommands from keysync --help:\n{help}");
    let doc = read("docs/cli.md");
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `keysync ")).collect();
    let missing: Vec<&&str> = subcommands
        .iter()
        .filter(|c| {
            !rows.iter().any(|r| {
                let cell = r.split(" | ").next().unwrap_or("");
                // `keysync NAME …`, `keysync NAME`, or the second of `keysync a\|NAME …`.
                [format!("`keysync {c}"), format!("\\|{c}")].iter().any(|head| {
                    cell.match_indices(head.as_str())
                        .any(|(at, _)| matches!(cell[at + head.len()..].chars().next(), Some(' ' | '`' | '\\')))
                })
            })
        })
        .collect();
    assert!(missing.is_empty(), "docs/cli.md has no row for the subcommands {missing:?}");
}
