//! Repository checks run by CI (`cargo xtask check`) and by hand.
//!
//! - `cycles`: no import cycle between sibling modules of any crate (library, binary and
//!   integration-test roots), reported with the file and line of each edge.
//! - `long-files`: no non-test source file under `crates/*/src` over [`MAX_LINES`] lines,
//!   unless the file says why on a line containing `long-file:`.
//! - `check`: both.

mod modules;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use modules::Graph;

/// The longest a source file may be before it must say why.
const MAX_LINES: usize = 800;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // An optional second argument checks another checkout (a worktree, a fresh clone).
    let root = args.get(1).map_or_else(workspace_root, PathBuf::from);
    let ok = match args.first().map(String::as_str) {
        Some("cycles") => cycles(&root),
        Some("long-files") => long_files(&root),
        Some("check") => {
            let a = cycles(&root);
            let b = long_files(&root);
            a && b
        }
        _ => {
            eprintln!("usage: cargo xtask <check|cycles|long-files> [WORKSPACE_ROOT]");
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is crates/xtask.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("xtask lives two levels below the workspace root")
        .to_path_buf()
}

/// Every crate root: `src/lib.rs`, `src/main.rs` and each integration test's `main.rs`.
fn crate_roots(root: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for krate in sorted_dir(&root.join("crates")) {
        for file in ["src/lib.rs", "src/main.rs"] {
            let p = krate.join(file);
            if p.is_file() {
                roots.push(p);
            }
        }
        for test in sorted_dir(&krate.join("tests")) {
            let p = test.join("main.rs");
            if p.is_file() {
                roots.push(p);
            }
        }
    }
    roots
}

fn sorted_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn cycles(root: &Path) -> bool {
    let mut ok = true;
    let roots = crate_roots(root);
    for r in &roots {
        let shown = r.strip_prefix(root).unwrap_or(r).display().to_string();
        match Graph::read(r) {
            Ok(g) => {
                for c in g.cycles() {
                    ok = false;
                    eprint!("{shown}: {c}");
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("{shown}: cannot read: {e}");
            }
        }
    }
    if ok {
        println!("cycles: none in {} crate roots", roots.len());
    }
    ok
}

fn long_files(root: &Path) -> bool {
    let mut files = Vec::new();
    for krate in sorted_dir(&root.join("crates")) {
        collect_rs(&krate.join("src"), &mut files);
    }
    let mut ok = true;
    let mut excused = 0;
    for f in &files {
        if is_test_file(f) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let lines = text.lines().count();
        if lines <= MAX_LINES {
            continue;
        }
        let shown = f.strip_prefix(root).unwrap_or(f).display();
        if text.lines().any(|l| l.contains("long-file:")) {
            excused += 1;
            println!("long-files: {shown} has {lines} lines and says why");
        } else {
            ok = false;
            eprintln!(
                "long-files: {shown} has {lines} lines (limit {MAX_LINES}); split it, or say why on a `long-file:` line"
            );
        }
    }
    if ok {
        println!(
            "long-files: {} source files, none over {MAX_LINES} lines without a reason ({excused} with)",
            files.len()
        );
    }
    ok
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for p in sorted_dir(dir) {
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Files holding only tests: `tests.rs` and `*_tests.rs` modules.
fn is_test_file(p: &Path) -> bool {
    p.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s == "tests" || s.ends_with("_tests"))
}
