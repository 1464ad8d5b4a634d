//! The source tree reads as the pipeline: every file opens with a `//!` doc, stays under
//! 500 lines, and no module imports one that imports it back (directly or around a loop).
//! A module and its own parent or child are one room and may use each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 500;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/score/passes.rs` -> ["score", "passes"].
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The code of a file without its test module and comments.
fn code(text: &str) -> String {
    let mut end = text.len();
    for marker in [
        "#[cfg(test)]\nmod tests",
        "#[cfg(test)]\npub(crate) mod tests",
    ] {
        if let Some(i) = text.find(marker) {
            end = end.min(i);
        }
    }
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names: `crate::a::b`, `super::x`, `self::y`, and the members of
/// `crate::{a, b}` / `super::{a, b}` groups, each made absolute.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for start in ["crate::", "super::", "self::"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(start) {
            let i = at + i;
            at = i + start.len();
            if i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':') {
                continue;
            }
            let mut base: Vec<String> = match start {
                "crate::" => Vec::new(),
                "self::" => module.to_vec(),
                _ => module[..module.len().saturating_sub(1)].to_vec(),
            };
            let mut rest = &code[at..];
            // super::super::x
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            base.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
            // `a::{b, c::d}`: one path per member.
            match rest[path.len()..].strip_prefix('{') {
                Some(group) if path.is_empty() || path.ends_with("::") => {
                    let inner = &group[..group.find('}').unwrap_or(group.len())];
                    for member in inner.split(',') {
                        let name: String = member
                            .trim()
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                            .collect();
                        let mut p = base.clone();
                        p.extend(name.split("::").filter(|s| !s.is_empty()).map(String::from));
                        out.push(p);
                    }
                }
                _ => out.push(base),
            }
        }
    }
    out
}

/// The longest prefix of `path` that is a module.
fn resolve<'a>(modules: &'a BTreeSet<Vec<String>>, path: &[String]) -> Option<&'a Vec<String>> {
    (1..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n].to_vec()))
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The import graph of the crate: module -> modules it names (parent and child links left
/// out).
fn graph(root: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    sources(root, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(root, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let m = module_of(root, f);
        let text = std::fs::read_to_string(f).unwrap();
        let mut edges = BTreeSet::new();
        for p in named_paths(&m, &code(&text)) {
            if let Some(t) = resolve(&modules, &p) {
                if !t.is_empty() && !related(t, &m) {
                    edges.insert(t.clone());
                }
            }
        }
        g.insert(m, edges);
    }
    g
}

/// A cycle of the graph, if there is one (depth-first search).
fn find_cycle(g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        v: &Vec<String>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in g.get(v).into_iter().flatten() {
            match state.get(w).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|x| x == w).unwrap();
                    let mut c: Vec<String> = stack[from..].iter().map(|m| m.join("::")).collect();
                    c.push(w.join("::"));
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(g, w, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in g.keys() {
        if state.get(v).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(g, v, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_source_file_has_a_module_doc_and_stays_short() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    assert!(files.len() > 40, "the tree was not found");
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{}: no //! module doc at the top", f.display()));
        }
        let n = text.lines().count();
        if n > MAX_LINES {
            problems.push(format!("{}: {n} lines (most {MAX_LINES})", f.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph(&src());
    assert!(
        g.contains_key(&vec!["score".to_string()]),
        "the tree was not found"
    );
    if let Some(c) = find_cycle(&g) {
        panic!("import circle: {}", c.join(" -> "));
    }
}

/// The checker itself: a hand-made circle is found, a parent/child pair is not one, and
/// `super::` and grouped imports resolve to the right modules.
#[test]
fn the_circle_checker_finds_circles() {
    let m = |s: &str| -> Vec<String> { s.split("::").map(String::from).collect() };
    let here = m("score::workers");
    let paths = named_paths(
        &here,
        "use super::intake::{Intake, duplicate};\nuse crate::{files, input::reader};\nlet x = self::a;",
    );
    assert!(paths.contains(&m("score::intake::Intake")), "{paths:?}");
    assert!(paths.contains(&m("files")), "{paths:?}");
    assert!(paths.contains(&m("input::reader")), "{paths:?}");
    assert!(paths.contains(&m("score::workers::a")), "{paths:?}");
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    g.insert(m("a"), [m("b")].into());
    g.insert(m("b"), [m("c")].into());
    g.insert(m("c"), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
    g.insert(m("c"), [m("a")].into());
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    assert!(related(&m("score"), &m("score::intake")));
    assert!(!related(&m("score"), &m("scores")));
}
