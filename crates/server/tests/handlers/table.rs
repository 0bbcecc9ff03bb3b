//! docs/handler-tests.md and the tests agree: every cited test exists, every test is cited,
//! and no route × status cell is empty.

use std::collections::BTreeSet;
use std::path::Path;

const MODULES: [&str; 10] = [
    "capabilities",
    "chunks",
    "download",
    "finish",
    "edge",
    "ietf",
    "misc",
    "share",
    "tus_collection",
    "tus_upload",
];

/// `module::name` of every test function in the in-process test files.
fn tests_in(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in MODULES.iter().copied().chain(["table"]) {
        let text = std::fs::read_to_string(dir.join(format!("{m}.rs"))).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if !matches!(line.trim(), "#[tokio::test]" | "#[test]") {
                continue;
            }
            let def = lines.next().unwrap_or("");
            let name = def
                .trim()
                .trim_start_matches("async ")
                .strip_prefix("fn ")
                .and_then(|r| r.split('(').next())
                .unwrap_or_else(|| panic!("{m}.rs: a test attribute not followed by fn: {def}"));
            out.insert(format!("{m}::{name}"));
        }
    }
    out
}

/// The rows of the route × status table: (route, status, cited tests).
fn rows(doc: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') || line.starts_with("|---") || line.starts_with("| Route") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 4, "malformed row: {line}");
        let cited = cells[3]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.push((cells[0].to_string(), cells[1].to_string(), cited));
    }
    out
}

#[test]
fn every_cited_test_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/handlers");
    let doc = std::fs::read_to_string(root.join("../../docs/handler-tests.md")).unwrap();
    let have = tests_in(&dir);
    let rows = rows(&doc);
    assert!(rows.len() > 100, "table not found: {} rows", rows.len());
    let mut cited = BTreeSet::new();
    for (route, status, tests) in &rows {
        assert!(!tests.is_empty(), "empty cell: {route} {status}");
        for t in tests {
            if let Some(it) = t.strip_prefix("it::") {
                // A process-level test in crates/cli/tests/it/.
                let (module, name) = it.split_once("::").unwrap();
                let file = root.join(format!("../cli/tests/it/{module}.rs"));
                let text = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{route} {status}: {t}: {e}"));
                assert!(
                    text.contains(&format!("fn {name}(")),
                    "{route} {status}: {t} does not exist"
                );
            } else {
                assert!(have.contains(t), "{route} {status}: {t} does not exist");
                cited.insert(t.clone());
            }
        }
    }
    let uncited: Vec<_> = have
        .iter()
        .filter(|t| !cited.contains(*t) && !t.starts_with("table::"))
        .collect();
    assert!(
        uncited.is_empty(),
        "tests not in docs/handler-tests.md: {uncited:?}"
    );
}
