//! `ferry forget` says only what happened: a chunk session is deleted on the server (it said
//! "deleted" while the server kept it), and when the server cannot be reached the record is
//! kept and the exit code says why (it said "forgot"); `--local` drops only the record.

use crate::support::*;
use std::time::Duration;

fn status_lists(state: &std::path::Path, what: &str) -> bool {
    let r = run_ferry(&["status"], state, Duration::from_secs(20));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.stdout.contains(what)
}

#[test]
fn a_chunk_session_is_really_deleted() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (file, _) = random_file(t.path(), "f.bin", 6 << 20, 1);
    let f = file.to_str().unwrap();
    let state = t.path().join("state");
    let chunks = format!("http://{}/chunks/", server.addr);
    upload_then_kill(&["--protocol", "chunks", f, &chunks], &state);
    let r = run_ferry(&["forget", f], &state, Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let url = r
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("deleted "))
        .unwrap_or_else(|| panic!("{}", r.stderr))
        .to_owned();
    assert!(url.contains("/chunks/"), "{url}");
    assert!(r.stderr.contains("forgot "), "{}", r.stderr);
    let head = client().head(&url).send().unwrap();
    assert_eq!(head.status(), 404, "the server still has {url}");
    assert!(!status_lists(&state, "f.bin"));
}

#[test]
fn an_unreachable_server_keeps_the_record_until_local() {
    let mut server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (file, _) = random_file(t.path(), "f.bin", 6 << 20, 2);
    let f = file.to_str().unwrap();
    let state = t.path().join("state");
    upload_then_kill(&[f, &server.files_url], &state);
    server.kill9();
    let r = run_ferry(&["forget", f], &state, Duration::from_secs(30));
    assert_eq!(r.code, Some(7), "{}", r.stderr);
    assert!(r.stderr.contains("could not delete"), "{}", r.stderr);
    assert!(r.stderr.contains("nothing listens"), "{}", r.stderr);
    assert!(r.stderr.contains("kept the record"), "{}", r.stderr);
    assert!(!r.stderr.contains("forgot"), "{}", r.stderr);
    assert!(status_lists(&state, "f.bin"));

    let r = run_ferry(&["forget", "--local", f], &state, Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("forgot "), "{}", r.stderr);
    assert!(!r.stderr.contains("deleted"), "{}", r.stderr);
    assert!(!status_lists(&state, "f.bin"));
}
