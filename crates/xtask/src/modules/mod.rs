//! The module graph of one crate, and the cycles in it.
//!
//! A crate is read from its root file (`lib.rs`, `main.rs`, an integration test's `main.rs`)
//! through its `mod` declarations, as rustc would. Every path in a module's code is resolved
//! to the module it names: `use` trees (grouped, renamed, globbed), paths in types,
//! expressions and patterns, and `crate::`/`super::`/`self::` paths inside macro bodies
//! (a `tokio::select!` arm is tokens, not syntax). A path through a `use` re-export (for
//! example `crate::Uploader`, re-exported by `lib.rs`) is followed to where the item lives.
//!
//! A reference from module `a::b` to `c::d` is a dependency of sibling `a` on sibling `c`:
//! cycles are counted between siblings, at every level. References between a module and
//! its own ancestors or descendants are containment, not dependencies (a parent declares
//! and re-exports its children; a child may use its parent's items). Items under
//! `#[cfg(test)]` are left out: a test module may use whatever it tests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit_mut::VisitMut;

/// A module's path inside its crate (`[]` is the crate root).
pub type ModPath = Vec<String>;

/// Where a dependency was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The file the reference is in.
    pub file: PathBuf,
    /// Its line (1-based).
    pub line: usize,
    /// The path as written, segments joined by `::`.
    pub path: String,
}

/// One module of the crate.
#[derive(Debug, Default)]
struct Module {
    /// Child module names.
    children: BTreeSet<String>,
    /// Names brought in by `use` (the alias) → the full path they stand for, as written.
    uses: BTreeMap<String, Vec<String>>,
    /// Every path the module's (non-test) code mentions.
    refs: Vec<(Vec<String>, Evidence)>,
}

/// A crate read into modules.
#[derive(Debug, Default)]
pub struct Graph {
    modules: BTreeMap<ModPath, Module>,
    /// Each file's text, to find a reported reference's line in.
    texts: BTreeMap<PathBuf, String>,
}

/// An error reading a crate.
#[derive(Debug)]
pub struct ReadError(pub String);

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cycle between sibling modules: each edge with the reference that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The modules in the cycle, in order; the last one depends on the first.
    pub members: Vec<ModPath>,
    /// For each `members[i] → members[i + 1]` (wrapping), one reference that makes it.
    pub evidence: Vec<Evidence>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.members.iter().map(|m| m.join("::")).collect();
        writeln!(f, "cycle: {} → {}", names.join(" → "), names[0])?;
        for (i, e) in self.evidence.iter().enumerate() {
            let to = &names[(i + 1) % names.len()];
            writeln!(
                f,
                "  {} → {to}: {}:{} `{}`",
                names[i],
                e.file.display(),
                e.line,
                e.path
            )?;
        }
        Ok(())
    }
}

impl Graph {
    /// Reads the crate whose root file is `root` (its modules are found beside it).
    pub fn read(root: &Path) -> Result<Self, ReadError> {
        let mut g = Graph::default();
        let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
        let file = g.parse(root)?;
        g.add_module(Vec::new(), root, &file.items, &dir)?;
        Ok(g)
    }

    /// Reads a crate from source text held in memory: `files` maps paths relative to the
    /// crate's source directory (`lib.rs`, `a.rs`, `a/b.rs`, …) to their text. For tests.
    #[cfg(test)]
    pub fn from_sources(files: &[(&str, &str)]) -> Result<Self, ReadError> {
        let tmp = std::env::temp_dir().join(format!(
            "xtask-modules-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        for (name, text) in files {
            let p = tmp.join(name);
            std::fs::create_dir_all(p.parent().expect("has a parent"))
                .map_err(|e| ReadError(e.to_string()))?;
            std::fs::write(&p, text).map_err(|e| ReadError(e.to_string()))?;
        }
        let g = Graph::read(&tmp.join(files[0].0));
        let _ = std::fs::remove_dir_all(&tmp);
        g
    }

    fn add_module(
        &mut self,
        path: ModPath,
        file: &Path,
        items: &[syn::Item],
        child_dir: &Path,
    ) -> Result<(), ReadError> {
        let mut module = Module::default();
        let mut pending = Vec::new();
        for item in items {
            if is_test_only(item_attrs(item)) {
                continue;
            }
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    module.children.insert(name.clone());
                    pending.push(m);
                }
                syn::Item::Use(u) => {
                    let mut flat = Vec::new();
                    flatten_use(&u.tree, &mut Vec::new(), &mut flat);
                    for (alias, full) in flat {
                        if let Some(alias) = alias {
                            module.uses.insert(alias, full.clone());
                        }
                        let ev = evidence(file, &full);
                        module.refs.push((full, ev));
                    }
                }
                other => {
                    let mut v = PathCollector {
                        file,
                        refs: &mut module.refs,
                    };
                    // VisitMut, not Visit: the workspace's proc macros already build syn with
                    // `visit-mut`, so this adds no feature that would rebuild them.
                    v.visit_item_mut(&mut other.clone());
                }
            }
        }
        self.modules.insert(path.clone(), module);
        for m in pending {
            let name = m.ident.to_string();
            let mut child = path.clone();
            child.push(name.clone());
            match &m.content {
                Some((_, items)) => {
                    self.add_module(child, file, items, &child_dir.join(&name))?;
                }
                None => {
                    let child_file = module_file(m, child_dir, &name)?;
                    let parsed = self.parse(&child_file)?;
                    self.add_module(child, &child_file, &parsed.items, &child_dir.join(&name))?;
                }
            }
        }
        Ok(())
    }

    /// The dependencies between siblings: `(from, to) → first reference seen`.
    pub fn sibling_edges(&self) -> BTreeMap<(ModPath, ModPath), Evidence> {
        let mut edges = BTreeMap::new();
        for (from, module) in &self.modules {
            for (segments, ev) in &module.refs {
                let Some(to) = self.resolve(from, segments, 0) else {
                    continue;
                };
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                if common == from.len() || common == to.len() {
                    continue; // the same module, an ancestor or a descendant
                }
                let a = from[..=common].to_vec();
                let b = to[..=common].to_vec();
                edges.entry((a, b)).or_insert_with(|| ev.clone());
            }
        }
        edges
    }

    /// The module a path names, seen from module `at`; `None` for paths that leave the
    /// crate (other crates, the standard library) or name no module.
    fn resolve(&self, at: &ModPath, segments: &[String], depth: usize) -> Option<ModPath> {
        if depth > 8 || segments.is_empty() {
            return None;
        }
        let (mut cur, rest): (ModPath, &[String]) = match segments[0].as_str() {
            "crate" => (Vec::new(), &segments[1..]),
            "self" => (at.clone(), &segments[1..]),
            "super" => {
                let mut cur = at.clone();
                let mut i = 0;
                while segments.get(i).map(String::as_str) == Some("super") {
                    cur.pop()?;
                    i += 1;
                }
                (cur, &segments[i..])
            }
            first => {
                let module = self.modules.get(at)?;
                if module.children.contains(first) {
                    (at.clone(), segments)
                } else if let Some(full) = module.uses.get(first) {
                    // A name imported with `use`: the import itself is already an edge;
                    // follow it so `alias::f()` resolves where the alias points.
                    let mut joined = full.clone();
                    joined.extend_from_slice(&segments[1..]);
                    return self.resolve(at, &joined, depth + 1);
                } else {
                    return None;
                }
            }
        };
        let mut i = 0;
        while i < rest.len() {
            let module = self.modules.get(&cur)?;
            let seg = &rest[i];
            if module.children.contains(seg) {
                cur.push(seg.clone());
                i += 1;
                continue;
            }
            // An item of `cur`: follow it if `cur` brings it in with `use` (a re-export).
            if let Some(full) = module.uses.get(seg) {
                let mut joined = full.clone();
                joined.extend_from_slice(&rest[i + 1..]);
                if let Some(target) = self.resolve(&cur, &joined, depth + 1) {
                    return Some(target);
                }
            }
            break;
        }
        Some(cur)
    }

    fn parse(&mut self, path: &Path) -> Result<syn::File, ReadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ReadError(format!("{}: {e}", path.display())))?;
        let file =
            syn::parse_file(&text).map_err(|e| ReadError(format!("{}: {e}", path.display())))?;
        self.texts.insert(path.to_path_buf(), text);
        Ok(file)
    }

    /// The cycles between siblings, each reported once with the references that make it.
    pub fn cycles(&self) -> Vec<Cycle> {
        let edges = self.sibling_edges();
        let mut adj: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
        for (a, b) in edges.keys() {
            adj.entry(a).or_default().push(b);
        }
        let mut cycles = Vec::new();
        for scc in strongly_connected(&adj) {
            if scc.len() < 2 {
                continue;
            }
            let members = shortest_cycle(&adj, &scc);
            let evidence = (0..members.len())
                .map(|i| {
                    let key = (members[i].clone(), members[(i + 1) % members.len()].clone());
                    let mut ev = edges[&key].clone();
                    ev.line = self.texts.get(&ev.file).map_or(0, |t| locate(t, &ev));
                    ev
                })
                .collect();
            cycles.push(Cycle { members, evidence });
        }
        cycles
    }
}

#[cfg(test)]
static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn module_file(m: &syn::ItemMod, dir: &Path, name: &str) -> Result<PathBuf, ReadError> {
    for attr in &m.attrs {
        if attr.path().is_ident("path")
            && let syn::Meta::NameValue(nv) = &attr.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            // Inside a file, `#[path]` is relative to where that file's children live.
            return Ok(dir.join(s.value()));
        }
    }
    // `dir` is where this module's children live: `src/` for the root, `src/a/` for `a`.
    let candidates = [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| ReadError(format!("module `{name}` not found in {}", dir.display())))
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[cfg(test)]` exactly: code under `cfg(any(test, feature = …))` ships, so it counts.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && matches!(&a.meta, syn::Meta::List(l) if l.tokens.to_string() == "test")
    })
}

/// Expands a `use` tree into `(alias, full path)` pairs; globs give the module itself.
fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Option<String>, Vec<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                out.push((prefix.last().cloned(), prefix.clone()));
            } else {
                let mut full = prefix.clone();
                full.push(name.clone());
                out.push((Some(name), full));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            if r.ident != "self" {
                full.push(r.ident.to_string());
            }
            out.push((Some(r.rename.to_string()), full));
        }
        syn::UseTree::Glob(_) => out.push((None, prefix.clone())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

/// A reference, its line found later ([`locate`]): spans carry no lines unless
/// proc-macro2's `span-locations` is on, and turning it on rebuilds every proc macro of the
/// workspace.
fn evidence(file: &Path, segments: &[String]) -> Evidence {
    Evidence {
        file: file.to_path_buf(),
        line: 0,
        path: segments.join("::"),
    }
}

/// The line of `ev`'s file (outside `//` comments) that writes its path: the whole path, else
/// its last two segments, else its last segment as a word (a grouped `use`); 0 if none does.
fn locate(text: &str, ev: &Evidence) -> usize {
    let segments: Vec<&str> = ev.path.split("::").collect();
    let tail = segments[segments.len().saturating_sub(2)..].join("::");
    let last = segments.last().copied().unwrap_or("");
    let is_word = |line: &str| {
        line.match_indices(last).any(|(i, _)| {
            let ident = |c: char| c.is_alphanumeric() || c == '_';
            !line[..i].ends_with(ident) && !line[i + last.len()..].starts_with(ident)
        })
    };
    let code: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .collect();
    let find = |pred: &dyn Fn(&str) -> bool| code.iter().find(|(_, l)| pred(l)).map(|(i, _)| i + 1);
    find(&|l| l.contains(ev.path.as_str()))
        .or_else(|| find(&|l| l.contains(tail.as_str())))
        .or_else(|| find(&|l| is_word(l)))
        .unwrap_or(0)
}

/// Collects every path in an item, without entering inline child modules (read on their
/// own) or test-only items.
struct PathCollector<'a> {
    file: &'a Path,
    refs: &'a mut Vec<(Vec<String>, Evidence)>,
}

impl VisitMut for PathCollector<'_> {
    fn visit_item_mut(&mut self, i: &mut syn::Item) {
        if is_test_only(item_attrs(i)) || matches!(i, syn::Item::Mod(_)) {
            return;
        }
        if let syn::Item::Use(u) = i {
            // A `use` inside a function body.
            let mut flat = Vec::new();
            flatten_use(&u.tree, &mut Vec::new(), &mut flat);
            for (_, full) in flat {
                let ev = evidence(self.file, &full);
                self.refs.push((full, ev));
            }
            return;
        }
        syn::visit_mut::visit_item_mut(self, i);
    }

    fn visit_impl_item_fn_mut(&mut self, f: &mut syn::ImplItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit_mut::visit_impl_item_fn_mut(self, f);
        }
    }

    fn visit_path_mut(&mut self, p: &mut syn::Path) {
        if p.segments.len() >= 2 || p.leading_colon.is_none() {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            let ev = evidence(self.file, &segments);
            self.refs.push((segments, ev));
        }
        syn::visit_mut::visit_path_mut(self, p);
    }

    fn visit_attribute_mut(&mut self, a: &mut syn::Attribute) {
        // Attribute arguments are tokens too: `#[error("…", crate::tus::MAX)]` is a
        // dependency. Doc comments are text, not code.
        if a.path().is_ident("doc") {
            return;
        }
        if let syn::Meta::List(l) = &a.meta {
            macro_paths(l.tokens.clone(), self.file, self.refs);
        }
    }

    fn visit_macro_mut(&mut self, m: &mut syn::Macro) {
        self.visit_path_mut(&mut m.path);
        macro_paths(m.tokens.clone(), self.file, self.refs);
    }
}

/// Finds `crate::a::b`, `super::a` and `self::a` paths in a macro's tokens.
fn macro_paths(tokens: TokenStream, file: &Path, refs: &mut Vec<(Vec<String>, Evidence)>) {
    let toks: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < toks.len() {
        if let TokenTree::Group(g) = &toks[i] {
            macro_paths(g.stream(), file, refs);
            i += 1;
            continue;
        }
        let TokenTree::Ident(id) = &toks[i] else {
            i += 1;
            continue;
        };
        let head = id.to_string();
        if !matches!(head.as_str(), "crate" | "super" | "self") {
            i += 1;
            continue;
        }
        let mut segments = vec![head];
        let mut j = i + 1;
        // `::` is two `:` puncts, then an identifier.
        while j + 2 < toks.len() + 1 {
            match (&toks.get(j), &toks.get(j + 1), &toks.get(j + 2)) {
                (
                    Some(TokenTree::Punct(a)),
                    Some(TokenTree::Punct(b)),
                    Some(TokenTree::Ident(n)),
                ) if a.as_char() == ':' && b.as_char() == ':' => {
                    segments.push(n.to_string());
                    j += 3;
                }
                _ => break,
            }
        }
        if segments.len() >= 2 {
            let ev = evidence(file, &segments);
            refs.push((segments, ev));
        }
        i = j.max(i + 1);
    }
}

/// Tarjan's strongly connected components.
fn strongly_connected<'a>(adj: &BTreeMap<&'a ModPath, Vec<&'a ModPath>>) -> Vec<Vec<&'a ModPath>> {
    struct State<'a> {
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        on_stack: BTreeSet<&'a ModPath>,
        stack: Vec<&'a ModPath>,
        next: usize,
        out: Vec<Vec<&'a ModPath>>,
    }
    fn visit<'a>(v: &'a ModPath, adj: &BTreeMap<&'a ModPath, Vec<&'a ModPath>>, s: &mut State<'a>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in adj.get(v).map(Vec::as_slice).unwrap_or(&[]) {
            if !s.index.contains_key(w) {
                visit(w, adj, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(scc);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on_stack: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for &v in adj.keys() {
        if !s.index.contains_key(v) {
            visit(v, adj, &mut s);
        }
    }
    s.out
}

/// The shortest cycle through the component's smallest member (breadth-first).
fn shortest_cycle(adj: &BTreeMap<&ModPath, Vec<&ModPath>>, scc: &[&ModPath]) -> Vec<ModPath> {
    let members: BTreeSet<&ModPath> = scc.iter().copied().collect();
    let start = *members.iter().next().expect("non-empty");
    let mut prev: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in adj.get(v).map(Vec::as_slice).unwrap_or(&[]) {
            if !members.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![v.clone()];
                let mut cur = v;
                while cur != start {
                    cur = prev[cur];
                    path.push(cur.clone());
                }
                path.reverse();
                return path;
            }
            if !prev.contains_key(w) {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    scc.iter().map(|m| (*m).clone()).collect()
}

#[cfg(test)]
mod tests;
