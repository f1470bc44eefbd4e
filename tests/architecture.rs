//! The module contracts that the compiler does not enforce: the consensus core performs no
//! IO, reads no clock and uses no async runtime (architecture.md §7.1, STYLE "IO contract"), and the
//! top-level modules depend on each other without cycles.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

const FORBIDDEN_IN_CORE: &[&str] = &[
    "tokio",
    "std::time",
    "SystemTime",
    "Instant",
    "std::fs",
    "std::net",
    "std::thread",
    "rand::",
    "getrandom",
];

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).expect("source directory exists") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("readable source");
            out.push((path.display().to_string(), text));
        }
    }
    out
}

#[test]
fn the_raft_core_touches_no_clock_no_io_and_no_runtime() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft");
    let files = sources(&dir);
    assert!(files.len() >= 5, "found the core's sources");
    let mut offences = Vec::new();
    for (path, text) in &files {
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN_IN_CORE {
                if code.contains(word) {
                    offences.push(format!("{path}:{}: uses `{word}`", number + 1));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the raft core must stay sans-IO:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_check_itself_would_notice_an_offence() {
    // Negative twin: the scan finds a forbidden word when one is there.
    let sample = "use std::time::Instant; // clock";
    assert!(FORBIDDEN_IN_CORE
        .iter()
        .any(|w| sample.split("//").next().unwrap_or("").contains(w)));
}

/// What the member (the runtime's decisions) must not touch: it takes the time as an
/// input and hands every effect to its driver (STYLE "sans-IO cores"), so that the
/// simulator can drive it.
const FORBIDDEN_IN_MEMBER: &[&str] = &[
    "tokio",
    "Instant::now",
    "SystemTime",
    "std::fs",
    "std::net",
    "std::thread",
    "std::sync",
    "rand::",
    "getrandom",
    "iroh",
];

#[test]
fn the_member_reads_no_clock_and_does_no_io() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/groups/member.rs");
    let text = fs::read_to_string(&path).expect("the member's source");
    let offences: Vec<String> = text
        .lines()
        .enumerate()
        .flat_map(|(number, line)| {
            let code = line.split("//").next().unwrap_or("").to_string();
            FORBIDDEN_IN_MEMBER
                .iter()
                .filter(move |word| code.contains(*word))
                .map(move |word| format!("member.rs:{}: uses `{word}`", number + 1))
        })
        .collect();
    assert!(
        offences.is_empty(),
        "the member must stay sans-IO:\n{}",
        offences.join("\n")
    );
}

#[test]
fn the_image_measurement_reads_no_file_clock_or_network() {
    // attestation/src/measure: bytes in, digests out (its module doc); the CLI reads files.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("attestation/src/measure");
    let files = sources(&dir);
    assert!(files.len() >= 4, "found the measurement's sources");
    let offences: Vec<String> = files
        .iter()
        .flat_map(|(path, text)| {
            text.lines().enumerate().flat_map(move |(number, line)| {
                let code = line.split("//").next().unwrap_or("").to_string();
                FORBIDDEN_IN_CORE
                    .iter()
                    .filter(move |word| code.contains(*word))
                    .map(move |word| format!("{path}:{}: uses `{word}`", number + 1))
            })
        })
        .collect();
    assert!(
        offences.is_empty(),
        "the measurement must stay IO-free:\n{}",
        offences.join("\n")
    );
}

/// The collateral refresh decides with `now` as an input and leaves every effect (HTTP,
/// files, sleeping) to its driver (`collateral::task`), so its schedule and its
/// install-or-keep rule are tested at fixed times.
#[test]
fn the_collateral_refresh_decisions_touch_no_clock_no_io_and_no_runtime() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/collateral/refresh.rs");
    let text = fs::read_to_string(&path).expect("refresh.rs");
    let forbidden = [
        "tokio",
        "reqwest",
        "SystemTime",
        "Instant",
        "std::fs",
        "std::net",
        "std::thread",
    ];
    let offences: Vec<String> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .flat_map(|(n, line)| {
            let code = line.split("//").next().unwrap_or("");
            forbidden
                .iter()
                .filter(move |w| code.contains(*w))
                .map(move |w| format!("refresh.rs:{}: uses `{w}`", n + 1))
        })
        .collect();
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}

/// A dependency between two top-level modules, with the first place that names it.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The crate's top-level modules: the library's (declared in `src/lib.rs`) and the
/// binary's `cli` (with `src/main.rs`).
fn top_level_modules(root: &Path) -> BTreeSet<String> {
    let lib = fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let mut modules: BTreeSet<String> = lib
        .lines()
        .map(|line| line.split("//").next().unwrap_or("").trim())
        .filter_map(|line| {
            // `mod m;`, with any visibility before it.
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                [.., "mod", name] => Some(name.strip_suffix(';')?.to_string()),
                _ => None,
            }
        })
        .collect();
    assert!(modules.len() >= 10, "read the module list of src/lib.rs");
    modules.insert("cli".into());
    modules
}

/// The top-level modules that `code` (comments removed) names through `prefix`
/// (`crate::` in the library, `tessera::` in the binary), each with its byte offset:
/// `prefix<m>` and the first segments of `prefix{a::.., b, ..}`.
fn names_after(code: &str, prefix: &str) -> Vec<(usize, String)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].chars().next_back().is_some_and(ident) {
            continue; // `foo_crate::`, not `crate::`
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's own segments: those at brace depth 0, up to its first `::`.
            let (mut depth, mut segment, mut expect_name) = (0usize, String::new(), true);
            let mut flush = |segment: &mut String| {
                if !segment.is_empty() {
                    out.push((at, std::mem::take(segment)));
                }
            };
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    _ if depth > 0 => {}
                    ',' => {
                        flush(&mut segment);
                        expect_name = true;
                    }
                    c if expect_name && ident(c) => segment.push(c),
                    _ if expect_name && !segment.is_empty() => {
                        flush(&mut segment);
                        expect_name = false;
                    }
                    _ => {}
                }
            }
            flush(&mut segment);
        } else {
            let name: String = rest.chars().take_while(|c| ident(*c)).collect();
            if !name.is_empty() {
                out.push((at, name));
            }
        }
    }
    out
}

/// `text` without its line comments (doc comments and doc links included), line for line.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which top-level module names which: `crate::<m>` in each module's files (`src/<m>.rs`
/// and everything under `src/<m>/`), `tessera::<m>` in the binary's. Comments (doc links
/// included) do not count. References listed in `left_out` (file, module) are skipped.
fn module_graph(root: &Path, left_out: &[(&str, &str)]) -> Graph {
    let modules = top_level_modules(root);
    let mut graph = Graph::new();
    for module in &modules {
        let mut files = Vec::new();
        let dir = root.join("src").join(module);
        if dir.is_dir() {
            files.extend(sources(&dir));
        }
        let file = root.join("src").join(format!("{module}.rs"));
        if file.is_file() {
            files.push((
                file.display().to_string(),
                fs::read_to_string(&file).expect("source"),
            ));
        }
        let mut prefixes = vec!["crate::"];
        if module == "cli" {
            let main = root.join("src/main.rs");
            files.push((
                main.display().to_string(),
                fs::read_to_string(&main).expect("main.rs"),
            ));
            prefixes.push("tessera::");
        }
        assert!(!files.is_empty(), "found the sources of `{module}`");
        let edges = graph.entry(module.clone()).or_default();
        for (path, text) in &files {
            let relative = path
                .strip_prefix(&format!("{}/", root.display()))
                .unwrap_or(path);
            let code = without_comments(text);
            for prefix in &prefixes {
                for (at, name) in names_after(&code, prefix) {
                    if name == *module
                        || !modules.contains(&name)
                        || left_out.contains(&(relative, name.as_str()))
                    {
                        continue;
                    }
                    let line = code[..at].matches('\n').count() + 1;
                    edges
                        .entry(name)
                        .or_insert_with(|| format!("{relative}:{line}"));
                }
            }
        }
    }
    graph
}

/// A cycle of `graph`, as the modules along it (the first repeated at the end).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|edges| edges.keys()) {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

/// Edges that close a cycle today, with why they are tolerated. The list only shrinks: an
/// entry whose edge is gone fails the test until it is deleted.
const KNOWN_CYCLE_EDGES: &[(&str, &str, &str)] = &[];

/// References the graph leaves out for now, each a known debt: (file, module it names).
/// Stale entries fail too.
const PENDING_REFERENCES: &[(&str, &str)] = &[];

/// Edges that must never exist: (from, to).
fn forbidden_edges(modules: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut forbidden = vec![("discovery".to_string(), "groups".to_string())];
    for to in ["groups", "net", "discovery", "client", "storage", "cli"] {
        forbidden.push(("raft".into(), to.into()));
    }
    // The group id is a leaf: it hashes the core's configuration and names nothing else.
    for to in modules.iter().filter(|m| *m != "raft") {
        forbidden.push(("group_id".into(), to.clone()));
    }
    // The clock is a leaf that tickets, collateral and the runtime all read.
    for to in modules {
        forbidden.push(("clock".into(), to.clone()));
    }
    forbidden
}

fn describe(graph: &Graph, cycle: &[String]) -> String {
    cycle
        .windows(2)
        .map(|pair| format!("{} -> {} ({})", pair[0], pair[1], graph[&pair[0]][&pair[1]]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every violation of the module graph's rules: forbidden edges, cycles other than the
/// known ones, and known cycle edges or pending references that are gone.
fn module_graph_offences(root: &Path) -> Vec<String> {
    let modules = top_level_modules(root);
    let mut offences = Vec::new();
    let full = module_graph(root, &[]);
    let mut graph = module_graph(root, PENDING_REFERENCES);
    for (file, module) in PENDING_REFERENCES {
        let names = fs::read_to_string(root.join(file)).is_ok_and(|text| {
            names_after(&without_comments(&text), "crate::")
                .iter()
                .any(|(_, name)| name == module)
        });
        if !names {
            offences.push(format!(
                "{file} no longer names `{module}`: delete it from PENDING_REFERENCES"
            ));
        }
    }
    for (from, to) in forbidden_edges(&modules) {
        if let Some(at) = graph.get(&from).and_then(|edges| edges.get(&to)) {
            offences.push(format!("`{from}` must not depend on `{to}`: {at}"));
        }
    }
    for (from, to, _) in KNOWN_CYCLE_EDGES {
        match graph.get_mut(*from).and_then(|edges| edges.remove(*to)) {
            Some(_) => {}
            None => offences.push(format!(
                "`{from}` no longer depends on `{to}`: delete it from KNOWN_CYCLE_EDGES"
            )),
        }
    }
    // Every cycle, one at a time: each found is broken at its last edge before the next
    // search.
    while let Some(cycle) = find_cycle(&graph) {
        offences.push(format!(
            "the top-level modules depend on each other in a cycle:\n{}",
            describe(&full, &cycle)
        ));
        let [.., from, to] = &cycle[..] else {
            unreachable!("a cycle has an edge")
        };
        if let Some(edges) = graph.get_mut(from) {
            edges.remove(to);
        }
    }
    offences
}

#[test]
fn the_top_level_modules_form_no_cycle_and_keep_their_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = module_graph(root, &[]);
    assert!(
        graph["groups"].contains_key("raft") && graph["cli"].contains_key("groups"),
        "the graph has the edges every build has: {graph:?}"
    );
    let offences = module_graph_offences(root);
    assert!(offences.is_empty(), "{}", offences.join("\n"));
}

#[test]
fn the_module_graph_check_would_notice_a_cycle() {
    // Negative twin: references are read in both forms, and a cycle is found and shown.
    let names = |code: &str| -> Vec<String> {
        names_after(&without_comments(code), "crate::")
            .into_iter()
            .map(|(_, name)| name)
            .collect()
    };
    assert_eq!(
        names("use crate::{groups::{GroupId, x},\n    raft,net::Endpoint};"),
        ["groups", "raft", "net"]
    );
    assert_eq!(
        names("let x = crate::discovery::Catalog::new(); foo_crate::raft // crate::net"),
        ["discovery"]
    );
    fn edge(graph: &mut Graph, from: &str, to: &str) {
        graph
            .entry(from.into())
            .or_default()
            .insert(to.into(), format!("src/{from}.rs:1"));
    }
    let mut graph = Graph::new();
    edge(&mut graph, "raft", "machine");
    edge(&mut graph, "groups", "raft");
    edge(&mut graph, "discovery", "groups");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "groups", "discovery");
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(describe(&graph, &cycle).contains("groups -> discovery (src/groups.rs:1)"));
}
