//! The module layers of `src/`, and the test that keeps them.
//!
//! Layers, top to bottom; a module imports only from layers below it:
//!
//! | layer | modules | why there |
//! |---|---|---|
//! | 1 | `main` | parses arguments, calls `cli` |
//! | 2 | `cli` | one file per command; puts config, store, rotation and agent together |
//! | 3 | `config` | reads the file and the environment into the types the modules below own, and turns errors into messages; so it imports them all |
//! | 4 | `agent` | the sync loop; owns the file's schema (`agent::Config`) and `[agent]`, `[exec]`, hooks; reads its config through `agent::ConfigLoader`, never through `config` |
//! | 5 | `rotation` | the engine and `[rotation]` / the key plan |
//! | 6 | `provider`, `render`, `store`, `telemetry` | providers, sinks, the key store (`[kv]`), metrics and health |
//! | 7 | `vault` | the Vault client, sessions, `[vault]` |
//! | 8 | `secret`, `duration`, `field`, `clock`, `failpoint`, `logging` | leaves: import nothing of keysync |
//!
//! What is checked here, on the `use crate::…` / `crate::…` / `super::…` / `keysync::…` paths
//! of every file under `src/` (comments and literals stripped), folded to top-level modules:
//! - no import cycle (the failure names the cycle and the file and line of each import);
//! - nothing below the agent imports `agent`, `config` or `cli`, and among those four only a
//!   higher one imports a lower one (`main` → `cli` → `config` → `agent`).
//!
//! Each rule is checked on hand-made input too, so a finder that found nothing would fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top four layers, highest first: each may import only the ones after it.
const TOP: [&str; 4] = ["main", "cli", "config", "agent"];

/// Imports that break a rule today and are being removed in a branch in flight, each with
/// the reason. Tolerated only while they exist: one that is gone fails the test, so the list
/// shrinks to nothing instead of hiding new ones.
const PENDING: &[(&str, &str, &str)] = &[];

/// A module-level import: from, to.
type Edge = (String, String);

/// Where an import was seen: file and line.
type Site = (PathBuf, usize);

#[test]
fn src_modules_import_no_cycle_and_nothing_below_the_agent_imports_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = scan_tree(&root);
    assert!(
        graph.contains_key(&("cli".to_string(), "agent".to_string())),
        "the scan found no cli → agent import; it is not reading src/ ({})",
        root.display()
    );
    let mut problems = Vec::new();
    let mut edges = graph.clone();
    for (from, to, why) in PENDING {
        if edges.remove(&(from.to_string(), to.to_string())).is_none() {
            problems.push(format!(
                "{from} → {to} is listed in PENDING but no longer imported; remove it from PENDING ({why})"
            ));
        }
    }
    let where_ = |e: &Edge| {
        let (file, line) = &graph[e];
        format!("{}:{line}", file.strip_prefix(root.parent().unwrap_or(&root)).unwrap_or(file).display())
    };
    for edge in edges.keys() {
        if let Err(why) = layer_rule(&edge.0, &edge.1) {
            problems.push(format!("{} → {} ({}): {why}", edge.0, edge.1, where_(edge)));
        }
    }
    for cycle in find_cycles(&edges.keys().cloned().collect()) {
        // Every import inside the tangle, so one run shows all that has to go.
        let inside: Vec<String> = edges
            .keys()
            .filter(|(a, b)| cycle.members.contains(a) && cycle.members.contains(b))
            .map(|e| format!("{} → {} ({})", e.0, e.1, where_(e)))
            .collect();
        problems.push(format!(
            "import cycle {} (modules {} import each other):\n    {}",
            cycle.walk.join(" → "),
            cycle.members.join(", "),
            inside.join("\n    ")
        ));
    }
    assert!(problems.is_empty(), "module layering broken:\n  {}", problems.join("\n  "));
}

/// `Err(why)` when `from` may not import `to`.
fn layer_rule(from: &str, to: &str) -> Result<(), String> {
    let rank = |m: &str| TOP.iter().position(|t| *t == m);
    match (rank(from), rank(to)) {
        (_, None) => Ok(()),
        (Some(f), Some(t)) if f < t => Ok(()),
        (Some(_), Some(_)) => Err(format!("{to} is above {from} (layers {})", TOP.join(" → "))),
        (None, Some(_)) => Err(format!(
            "{from} is below the agent and may not import {to}; pass what it needs down instead (layers {} → the rest)",
            TOP.join(" → ")
        )),
    }
}

/// Every module-level import under `root` (a `src/` directory), with where it was first seen.
fn scan_tree(root: &Path) -> BTreeMap<Edge, Site> {
    let mut files = Vec::new();
    collect_rs(root, &mut files);
    files.sort();
    let mut graph = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(root).expect("under root");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for (to, line) in imports(&module_path(rel), &text) {
            let from = top_module(rel);
            if from != to && from != "lib" {
                graph.entry((from, to)).or_insert((file.clone(), line));
            }
        }
    }
    graph
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `agent/exec.rs` → `agent`; `main.rs` → `main`; `lib.rs` → `lib` (the crate root).
fn top_module(rel: &Path) -> String {
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.strip_suffix(".rs").map(str::to_string).unwrap_or(first)
}

/// The module a file is: `agent/exec.rs` → `[agent, exec]`, `agent/mod.rs` → `[agent]`,
/// `lib.rs` and `main.rs` → `[]` (a crate root).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.strip_suffix(".rs").unwrap_or(&last).to_string();
    if !(stem == "mod" || (parts.is_empty() && (stem == "lib" || stem == "main"))) {
        parts.push(stem);
    }
    parts
}

/// A token of Rust source, comments and literals already dropped.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Splits Rust source into identifiers, `::` and single punctuation, with line numbers;
/// comments, strings (raw, byte, C), char literals and lifetimes leave nothing behind, so a
/// path in a doc comment or an error message is not an import.
fn tokens(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_quoted(&c, i, &mut line);
        } else if let Some(end) = raw_string_end(&c, i, &mut line) {
            i = end;
        } else if ch == '\'' {
            // 'x', '\n', '\u{1F600}' are literals; 'a and 'static are lifetimes.
            if at(i + 1) == '\\' {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // A byte or C string prefix (`b"…"`, `c"…"`).
            if (word == "b" || word == "c") && at(i) == '"' {
                i = skip_quoted(&c, i, &mut line);
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, line));
            i += 2;
        } else {
            // `$crate` reads as `crate`: the `$` is dropped here.
            if ch != '$' {
                out.push((Tok::Punct(ch), line));
            }
            i += 1;
        }
    }
    out
}

/// From the opening `"` at `i` to just past the closing one, honouring `\"`.
fn skip_quoted(c: &[char], mut i: usize, line: &mut usize) -> usize {
    i += 1;
    while i < c.len() && c[i] != '"' {
        if c[i] == '\\' {
            i += 1;
        }
        *line += usize::from(c.get(i) == Some(&'\n'));
        i += 1;
    }
    i + 1
}

/// `r"…"`, `r#"…"#`, `br##"…"##` at `i`: the index just past it; `None` if there is none.
fn raw_string_end(c: &[char], i: usize, line: &mut usize) -> Option<usize> {
    let mut j = i;
    if c.get(j) == Some(&'b') || c.get(j) == Some(&'c') {
        j += 1;
    }
    if c.get(j) != Some(&'r') || (i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')) {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    loop {
        match c.get(j) {
            None => return Some(j),
            Some('"') if (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) => return Some(j + 1 + hashes),
            Some(ch) => {
                *line += usize::from(*ch == '\n');
                j += 1;
            }
        }
    }
}

/// The top-level modules `text` (the file that is module `path`) names, each with the line of
/// its first mention: `crate::x`, `crate::{x, y::z}`, `$crate::x`, `super::…::x` climbing to
/// the crate root, and `keysync::x` (the binary naming the library). Inline `mod name { … }`
/// blocks deepen the path for their `super`.
fn imports(path: &[String], text: &str) -> Vec<(String, usize)> {
    let toks = tokens(text);
    let mut out = Vec::new();
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let is = |k: usize, t: &Tok| toks.get(k).map(|(x, _)| x) == Some(t);
    // Inline modules: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut k = 0;
    while k < toks.len() {
        let line = toks[k].1;
        match &toks[k].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" && is(k + 2, &Tok::Punct('{')) => {
                if let Some(name) = ident(k + 1) {
                    inline.push((name.to_string(), depth));
                }
            }
            // `keysync::` only from the binary's root; in the library it would be a local name.
            Tok::Ident(w) if (w == "crate" || (w == "keysync" && path.is_empty())) && is(k + 1, &Tok::PathSep) => {
                out.extend(named_after(&toks, k + 2).into_iter().map(|m| (m, line)));
            }
            Tok::Ident(w) if w == "super" && is(k + 1, &Tok::PathSep) && (k == 0 || !is(k - 1, &Tok::PathSep)) => {
                let mut here: Vec<String> = path.iter().cloned().chain(inline.iter().map(|(n, _)| n.clone())).collect();
                let mut j = k;
                while ident(j) == Some("super") && is(j + 1, &Tok::PathSep) {
                    here.pop();
                    j += 2;
                }
                match here.first() {
                    Some(top) => out.push((top.clone(), line)),
                    None => out.extend(named_after(&toks, j).into_iter().map(|m| (m, line))),
                }
            }
            _ => {}
        }
        k += 1;
    }
    out
}

/// The first segment(s) after a crate-root `::` at `k`: `x` or each item of `{x, y::z}`.
fn named_after(toks: &[(Tok, usize)], k: usize) -> Vec<String> {
    match toks.get(k).map(|(t, _)| t) {
        Some(Tok::Ident(s)) if s != "self" => vec![s.clone()],
        Some(Tok::Punct('{')) => {
            let (mut out, mut depth, mut expect) = (Vec::new(), 0, true);
            for (t, _) in &toks[k..] {
                match t {
                    Tok::Punct('{') => {
                        depth += 1;
                        expect = depth == 1;
                    }
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Tok::Punct(',') if depth == 1 => expect = true,
                    Tok::Ident(s) if expect && depth == 1 => {
                        if s != "self" {
                            out.push(s.clone());
                        }
                        expect = false;
                    }
                    _ => expect = false,
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Modules that import each other (a strongly connected component of more than one), and
/// the shortest cycle through the first of them.
#[derive(Debug, PartialEq)]
struct Cycle {
    /// Sorted.
    members: Vec<String>,
    /// A closed walk, `[a, b, a]`, from the first member: the same graph always gives the same
    /// message.
    walk: Vec<String>,
}

/// One [`Cycle`] per group of modules that import each other.
fn find_cycles(edges: &BTreeSet<Edge>) -> Vec<Cycle> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a.as_str()).or_default().push(b.as_str());
        next.entry(b.as_str()).or_default();
    }
    fn reach<'a>(next: &BTreeMap<&'a str, Vec<&'a str>>, from: &'a str) -> BTreeSet<&'a str> {
        let mut seen = BTreeSet::from([from]);
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            for m in &next[n] {
                if seen.insert(*m) {
                    stack.push(*m);
                }
            }
        }
        seen
    }
    let reachable: BTreeMap<&str, BTreeSet<&str>> = next.keys().map(|n| (*n, reach(&next, n))).collect();
    let mut done = BTreeSet::new();
    let mut cycles = Vec::new();
    for &n in next.keys() {
        if done.contains(n) {
            continue;
        }
        // n's component: the modules n reaches that reach n back.
        let component: BTreeSet<&str> = reachable[n].iter().copied().filter(|m| reachable[m].contains(n)).collect();
        done.extend(component.iter().copied());
        if component.len() < 2 {
            continue;
        }
        // Shortest way back to n inside the component (breadth first).
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([n]);
        'search: while let Some(x) = queue.pop_front() {
            for &y in &next[x] {
                if !component.contains(y) {
                    continue;
                }
                if y == n {
                    // x back to n through the parents, then turned round: n → … → x → n.
                    let mut back = Vec::new();
                    let mut at = x;
                    while at != n {
                        back.push(at.to_string());
                        at = parent[at];
                    }
                    back.reverse();
                    let walk = std::iter::once(n.to_string()).chain(back).chain([n.to_string()]).collect();
                    cycles.push(Cycle { members: component.iter().map(|m| m.to_string()).collect(), walk });
                    break 'search;
                }
                if y != n && !parent.contains_key(y) {
                    parent.insert(y, x);
                    queue.push_back(y);
                }
            }
        }
    }
    cycles
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn edges(list: &[(&str, &str)]) -> BTreeSet<Edge> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn the_cycle_finder_names_a_cycle_in_a_hand_made_graph() {
    let g = edges(&[("d", "a"), ("a", "b"), ("b", "c"), ("c", "a"), ("c", "e")]);
    let found = find_cycles(&g);
    assert_eq!(found, vec![Cycle { members: strings(&["a", "b", "c"]), walk: strings(&["a", "b", "c", "a"]) }]);
}

#[test]
fn the_cycle_finder_finds_two_cycles_and_the_shortest_way_round() {
    // a → b → a is shorter than a → c → d → a; both are in one group, named once with all four.
    let g = edges(&[("a", "c"), ("c", "d"), ("d", "a"), ("a", "b"), ("b", "a"), ("x", "y"), ("y", "x")]);
    let walks: Vec<Vec<String>> = find_cycles(&g).into_iter().map(|c| c.walk).collect();
    assert_eq!(walks, vec![strings(&["a", "b", "a"]), strings(&["x", "y", "x"])]);
    assert_eq!(find_cycles(&g)[0].members, strings(&["a", "b", "c", "d"]));
}

#[test]
fn the_cycle_finder_finds_nothing_in_layers() {
    let g = edges(&[("main", "cli"), ("cli", "config"), ("cli", "agent"), ("config", "agent"), ("agent", "vault")]);
    assert!(find_cycles(&g).is_empty());
}

#[test]
fn the_layer_rule_refuses_upward_imports() {
    assert!(layer_rule("cli", "agent").is_ok());
    assert!(layer_rule("config", "agent").is_ok());
    assert!(layer_rule("agent", "vault").is_ok());
    assert!(layer_rule("agent", "config").unwrap_err().contains("above"));
    assert!(layer_rule("store", "agent").unwrap_err().contains("below the agent"));
    assert!(layer_rule("vault", "config").is_err());
    assert!(layer_rule("render", "cli").is_err());
}

#[test]
fn imports_are_read_from_paths_not_from_comments_or_literals() {
    let src = r####"
        //! See [`crate::cli`] for the commands.
        use crate::{store::KeyName, vault, self};
        use super::super::render::Sink;
        /* crate::telemetry /* nested */ crate::cli */
        fn f<'a>(x: &'a str) -> char {
            let _ = "crate::cli \" crate::cli";
            let _ = r#"crate::cli "still" crate::cli"#;
            let _ = br"crate::cli";
            let _ = b"crate::cli";
            let _ = '{';
            let _ = '\'';
            crate::rotation::decide();
            $crate::failpoint::hit();
            '}'
        }
        mod tests {
            use super::*;
            use super::super::super::provider;
        }
    "####;
    let path = vec!["agent".to_string(), "exec".to_string()];
    let found: BTreeSet<String> = imports(&path, src).into_iter().map(|(m, _)| m).collect();
    let want: BTreeSet<String> = ["store", "vault", "render", "rotation", "failpoint", "agent", "provider"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, want);
    let lines: BTreeMap<String, usize> = imports(&path, src).into_iter().rev().collect();
    assert_eq!(lines["store"], 3);
    assert_eq!(lines["rotation"], 13);
}

#[test]
fn the_binary_names_the_library_as_keysync() {
    let found: Vec<String> = imports(&[], "fn main() { keysync::cli::main() }").into_iter().map(|(m, _)| m).collect();
    assert_eq!(found, ["cli"]);
    assert_eq!(module_path(Path::new("agent/mod.rs")), ["agent"]);
    assert_eq!(module_path(Path::new("agent/exec.rs")), ["agent", "exec"]);
    assert!(module_path(Path::new("main.rs")).is_empty());
    assert_eq!(top_module(Path::new("duration.rs")), "duration");
}
