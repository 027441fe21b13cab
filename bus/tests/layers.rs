//! The layout stays true: every file of `bus/src` belongs to a layer, and
//! imports only point down (or within the layer), with no import cycle
//! between files.
//!
//! Layers, bottom up:
//! 0. contracts with no I/O: `domain/` (topic names, headers, the share
//!    policy, principals, the one restart policy);
//! 1. observation: `metrics.rs`, `events.rs` (a log line and its counter
//!    in one call);
//! 2. Kafka and the schema registry's store: `kafka/`, `registry/`;
//! 3. what configuration sections share (`config/section.rs`: the error
//!    naming a key, secret resolution), the feeds' section
//!    (`source/config.rs`, kept by the catalog below the feeds) and the
//!    standards (`standards.rs`). Every other section lives with its owner
//!    at the owner's layer (`subscribe/config.rs`, `distributor/share.rs`,
//!    `state/audit.rs`, `auth.rs`, `http.rs`, `runtime/`, `domain/division.rs`);
//! 4. state kept in Kafka and who may touch it: `state/` (catalog, audit
//!    trail, offsets), `auth.rs`, `admission.rs`;
//! 5. components: feeds (`source/`), the distributor, subscriptions
//!    (`subscribe/`: apply, cascade, reconcile), lag, upper grants and
//!    holders, the HTTP basics;
//! 6. control plane: `control/` (the API, the schema registry's REST API,
//!    the dashboard);
//! 7. runtime: `config/` (assembles the sections into one configuration and
//!    checks them together), `runtime/` (node, subscriber process,
//!    logging);
//! 8. the binary: `main.rs`, `demo.rs`.
//!
//! An import is any `crate::path` in code (comments and `#[cfg(test)]`
//! modules aside), a `use crate::{...}` group, or `super::` in a folder.
//! Anyone can check the same with `cargo test -p backflow --test layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of a file (its path under `bus/src`), by the longest matching
/// prefix.
const LAYERS: &[(&str, usize)] = &[
    ("domain/", 0),
    ("metrics.rs", 1),
    ("events.rs", 1),
    ("kafka/", 2),
    ("registry/", 2),
    ("config/section.rs", 3),
    ("source/config.rs", 3),
    ("standards.rs", 3),
    ("state/", 4),
    ("auth.rs", 4),
    ("admission.rs", 4),
    ("http.rs", 5),
    ("source/", 5),
    ("distributor/", 5),
    ("subscribe/", 5),
    ("lag.rs", 5),
    ("upper.rs", 5),
    ("holders.rs", 5),
    ("acls.rs", 5),
    ("control/", 6),
    ("config/", 7),
    ("runtime/", 7),
    ("main.rs", 8),
    ("demo.rs", 8),
    ("lib.rs", 8),
];

fn layer(file: &str) -> Option<usize> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| {
            file == *prefix || (prefix.ends_with('/') && file.starts_with(prefix))
        })
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, l)| *l)
}

fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("bus/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .expect("under bus/src")
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel, path);
        }
    }
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string (a URL) is rare in paths of interest;
            // a line that starts with a comment is dropped whole.
            Some(i) if l[..i].trim().is_empty() => "",
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The file a module path names (`["kafka", "Consumer"]` → `kafka/mod.rs`).
fn resolve(files: &BTreeMap<String, PathBuf>, segments: &[&str]) -> Option<String> {
    (1..=segments.len()).rev().find_map(|n| {
        let base = segments[..n].join("/");
        [format!("{base}.rs"), format!("{base}/mod.rs")]
            .into_iter()
            .find(|c| files.contains_key(c))
    })
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths after each `prefix` in `code` (`crate::a::b::C`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(is_ident) {
            continue;
        }
        let end = rest
            .find(|c: char| !(is_ident(c) || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        if rest[end..].starts_with('{') {
            // `crate::{a::X, b}` or `crate::a::{X, Y}`: each item.
            let close = rest[end..].find('}').map_or(rest.len(), |j| end + j);
            for item in rest[end + 1..close].split(',') {
                let mut p = path.clone();
                p.extend(
                    item.trim()
                        .split("::")
                        .map(|s| s.trim_matches(|c: char| !is_ident(c)))
                        .filter(|s| !s.is_empty()),
                );
                out.push(p);
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// file → the files it imports, with the paths that import them.
fn imports(files: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut graph = BTreeMap::new();
    for (file, path) in files {
        let text = code(&std::fs::read_to_string(path).expect("a source file"));
        let mut to: BTreeMap<String, String> = BTreeMap::new();
        for p in paths_after(&text, "crate::") {
            if let Some(target) = resolve(files, &p) {
                to.entry(target)
                    .or_insert_with(|| format!("crate::{}", p.join("::")));
            }
        }
        if let Some((folder, _)) = file.rsplit_once('/') {
            let parent: Vec<&str> = folder.split('/').collect();
            for p in paths_after(&text, "super::") {
                let mut full = parent.clone();
                full.extend(p.iter().copied());
                if let Some(target) = resolve(files, &full) {
                    to.entry(target)
                        .or_insert_with(|| format!("super::{}", p.join("::")));
                }
            }
        }
        to.remove(file);
        graph.insert(file.clone(), to);
    }
    graph
}

fn source_files() -> BTreeMap<String, PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&root, &root, &mut files);
    files
}

#[test]
fn every_file_has_a_layer_and_imports_point_down() {
    let files = source_files();
    let graph = imports(&files);
    let mut wrong = Vec::new();
    for (file, to) in &graph {
        let Some(from_layer) = layer(file) else {
            wrong.push(format!("{file} has no layer: add it to LAYERS"));
            continue;
        };
        for (target, via) in to {
            let to_layer = layer(target).unwrap_or(usize::MAX);
            if to_layer > from_layer && file != "lib.rs" {
                wrong.push(format!(
                    "{file} (layer {from_layer}) imports {target} (layer {to_layer}) through {via}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_import_cycle_between_files() {
    let files = source_files();
    let graph = imports(&files);
    // Tarjan's strongly connected components.
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        cycles: Vec<Vec<&'g str>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph[v].keys() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().expect("on the stack");
                    self.on_stack.remove(w);
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.cycles.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph: &graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        cycles: Vec::new(),
    };
    for file in graph.keys() {
        if !walk.index.contains_key(file.as_str()) {
            walk.visit(file);
        }
    }
    let described: Vec<String> = walk
        .cycles
        .iter()
        .map(|c| {
            let ties: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[*a]
                        .iter()
                        .filter(|(b, _)| c.contains(&b.as_str()))
                        .map(move |(b, via)| format!("  {a} -> {b} ({via})"))
                })
                .collect();
            format!("{}:\n{}", c.join(", "), ties.join("\n"))
        })
        .collect();
    assert!(
        described.is_empty(),
        "import cycles:\n{}",
        described.join("\n")
    );
}

#[test]
fn the_check_sees_imports_of_every_form() {
    let code = "use crate::{kafka::Consumer, state::catalog};\nlet x = crate::lag::board();\n// crate::control::api::x\nuse super::{a, b::C};";
    let code = code_of(code);
    let found: Vec<String> = paths_after(&code, "crate::")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(found, ["kafka::Consumer", "state::catalog", "lag::board"]);
    let sup: Vec<String> = paths_after(&code, "super::")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(sup, ["a", "b::C"]);
    assert_eq!(layer("control/registry.rs"), Some(6));
    assert_eq!(layer("registry/state.rs"), Some(2));
    assert_eq!(layer("domain/topics.rs"), Some(0));
    assert_eq!(layer("state/catalog.rs"), Some(4));
    assert_eq!(layer("nowhere.rs"), None);
}

fn code_of(text: &str) -> String {
    code(text)
}
