//! The module graph on small crates written in memory.

use super::*;

fn names(g: &Graph) -> Vec<String> {
    g.cycles()
        .iter()
        .map(|c| {
            let mut m: Vec<String> = c.members.iter().map(|p| p.join("::")).collect();
            m.sort();
            m.join(",")
        })
        .collect()
}

fn graph(files: &[(&str, &str)]) -> Graph {
    Graph::from_sources(files).expect("reads")
}

#[test]
fn plain_use_both_ways_is_a_cycle() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", "use crate::b::B; pub struct A;"),
        ("b.rs", "use crate::a::A; pub struct B;"),
    ]);
    assert_eq!(names(&g), ["a,b"]);
    let c = &g.cycles()[0];
    assert_eq!(c.evidence.len(), 2);
    assert_eq!(c.evidence[0].line, 1);
}

#[test]
fn one_way_is_not_a_cycle() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", "use crate::b::B;"),
        ("b.rs", "pub struct B;"),
    ]);
    assert!(g.cycles().is_empty());
    assert_eq!(g.sibling_edges().len(), 1);
}

#[test]
fn grouped_use_is_seen() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b; mod c;"),
        ("a.rs", "use crate::{c::C, b::{self, B}};"),
        ("b.rs", "use crate::a::*;"),
        ("c.rs", ""),
    ]);
    assert_eq!(names(&g), ["a,b"]);
}

#[test]
fn inline_path_in_an_expression_is_seen() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", "pub fn f() { crate::b::g(); }"),
        ("b.rs", "pub fn g() -> u8 { let x: crate::a::T = 1; x }"),
    ]);
    assert_eq!(names(&g), ["a,b"]);
}

#[test]
fn super_paths_are_seen() {
    let g = graph(&[
        ("lib.rs", "mod p;"),
        ("p.rs", "mod a; mod b;"),
        ("p/a.rs", "use super::b::B;"),
        ("p/b.rs", "fn f() { super::a::g() }"),
    ]);
    assert_eq!(names(&g), ["p::a,p::b"]);
}

#[test]
fn paths_inside_macro_bodies_are_seen() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        (
            "a.rs",
            "fn f() { tokio::select! { () = crate::b::wait() => {} } }",
        ),
        ("b.rs", "fn g() { println!(\"{}\", crate::a::NAME); }"),
    ]);
    assert_eq!(names(&g), ["a,b"]);
}

#[test]
fn paths_inside_attribute_arguments_are_seen() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        (
            "a.rs",
            "#[derive(Debug)]\npub enum E {\n    #[error(\"{}\", crate::b::MAX)]\n    Big,\n}",
        ),
        (
            "b.rs",
            "/// See [`crate::a::E`].\npub const MAX: u8 = 1; fn f() -> crate::a::E { crate::a::E::Big }",
        ),
    ]);
    assert_eq!(names(&g), ["a,b"]);
    let c = &g.cycles()[0];
    assert_eq!(c.evidence[0].line, 3, "{c}");
}

#[test]
fn a_longer_loop_is_one_cycle() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b; mod c;"),
        ("a.rs", "use crate::b::X;"),
        ("b.rs", "use crate::c::Y;"),
        ("c.rs", "use crate::a::Z;"),
    ]);
    assert_eq!(names(&g), ["a,b,c"]);
    assert_eq!(g.cycles()[0].members.len(), 3);
}

#[test]
fn a_re_export_is_followed_to_where_the_item_lives() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b; pub use b::B;"),
        ("a.rs", "use crate::B; pub struct A;"),
        ("b.rs", "use crate::a::A; pub struct B;"),
    ]);
    assert_eq!(names(&g), ["a,b"]);
}

#[test]
fn nested_modules_count_as_their_top_sibling() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        ("a/mod.rs", "mod inner;"),
        ("a/inner.rs", "use crate::b::B;"),
        ("b.rs", "use crate::a::inner::X; pub struct B;"),
    ]);
    assert_eq!(names(&g), ["a,b"]);
}

#[test]
fn parent_and_child_are_not_a_cycle() {
    let g = graph(&[
        ("lib.rs", "mod a; pub use a::A; pub struct Root;"),
        (
            "a.rs",
            "use crate::Root; use super::Root as R; pub struct A;",
        ),
    ]);
    assert!(g.cycles().is_empty());
}

#[test]
fn test_modules_are_left_out() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        (
            "a.rs",
            "use crate::b::B; #[cfg(test)] mod tests { use crate::a::*; }",
        ),
        (
            "b.rs",
            "pub struct B; #[cfg(test)] mod tests { use crate::a::A; }",
        ),
    ]);
    assert!(g.cycles().is_empty());
}

#[test]
fn feature_gated_modules_count() {
    let g = graph(&[
        ("lib.rs", "mod a; #[cfg(any(test, feature = \"x\"))] mod b;"),
        ("a.rs", "use crate::b::B;"),
        ("b.rs", "use crate::a::A;"),
    ]);
    assert_eq!(names(&g), ["a,b"]);
}

#[test]
fn other_crates_and_std_are_ignored() {
    let g = graph(&[
        ("lib.rs", "mod a; mod b;"),
        (
            "a.rs",
            "use std::sync::Arc; use ferry_proto::b::X; fn f() { b::g() }",
        ),
        ("b.rs", "use crate::a::A;"),
    ]);
    assert!(g.cycles().is_empty());
}

#[test]
fn inline_modules_are_modules() {
    let g = graph(&[(
        "lib.rs",
        "mod a { pub fn f() { super::b::g() } } mod b { pub fn g() { crate::a::f() } }",
    )]);
    assert_eq!(names(&g), ["a,b"]);
}
