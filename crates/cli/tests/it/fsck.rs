//! `ferry fsck`: a served data directory checks clean; planted orphans and missing data are
//! found, repaired, and gone on the next check; `serve` deletes orphaned data when it starts.

use crate::support::tus::*;
use crate::support::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn fsck(dir: &Path, repair: bool) -> Output {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(["fsck", "--data-dir"]).arg(dir);
    if repair {
        cmd.arg("--repair");
    }
    cmd.output().expect("ferry fsck runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Uploads of every kind on `server`: a regular one, two partials and a final, a chunk session.
fn fill(server: &Server) -> (String, String) {
    let url = create(server, 5, None);
    assert_eq!(patch(&url, 0, b"hello".to_vec()), (204, Some(5)));
    let a = partial_with(server, b"abc");
    let b = partial_with(server, b"defg");
    let resp = post_final(server, &format!("final;{} {}", path_of(&a), path_of(&b)));
    assert_eq!(resp.status().as_u16(), 201);
    let r = send(
        server.addr,
        "POST",
        "/chunks/",
        &[("Upload-Length", "3")],
        b"",
    );
    assert_eq!(status_of(&r), 201, "{r}");
    (url, a)
}

#[test]
fn a_served_directory_is_clean_and_planted_problems_are_found_and_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &[]);
    let (regular, part) = fill(&server);
    // A deleted part that a final still uses stays, hidden: not a problem.
    assert_eq!(delete(&part), 204);
    assert_eq!(
        server
            .terminate(Duration::from_secs(10))
            .map(|s| s.success()),
        Some(true)
    );

    let clean = fsck(&dir, false);
    assert!(clean.status.success(), "{clean:?}");
    assert!(stdout(&clean).contains("no problems"), "{}", stdout(&clean));

    // An orphan (data no record owns) and a record whose data is gone.
    let orphan = dir.join("uploads/ab/ab000000000000000000000000000000");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"left by a crash").unwrap();
    let id = id_of(&regular);
    std::fs::remove_file(dir.join("uploads").join(&id[..2]).join(&id)).unwrap();

    let found = fsck(&dir, false);
    assert_eq!(found.status.code(), Some(1), "{found:?}");
    let text = stdout(&found);
    assert!(
        text.contains("ab000000000000000000000000000000 (15 bytes) belongs to no upload"),
        "{text}"
    );
    assert!(
        text.contains(&format!("upload {id} needs 5 bytes, its data is missing")),
        "{text}"
    );
    assert!(text.contains("2 problems"), "{text}");

    let repaired = fsck(&dir, true);
    assert!(repaired.status.success(), "{repaired:?}");
    assert!(
        stdout(&repaired).contains("0 left after repair"),
        "{}",
        stdout(&repaired)
    );
    assert!(!orphan.exists());
    let again = fsck(&dir, false);
    assert!(again.status.success(), "{again:?}");
    assert!(stdout(&again).contains("no problems"));

    // The upload whose data was lost is gone; the others still serve.
    let server = Server::start_in(&dir, &[]);
    assert_eq!(head_offset(&server.rebase(&regular)), None);
    let _ = server;
}

#[test]
fn serve_deletes_orphaned_data_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &[]);
    fill(&server);
    assert_eq!(
        server
            .terminate(Duration::from_secs(10))
            .map(|s| s.success()),
        Some(true)
    );
    let orphan = dir.join("uploads/cd/cd000000000000000000000000000000");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"x").unwrap();
    let mut server = Server::start_in(&dir, &[]);
    assert!(!orphan.exists(), "{}", server.log());
    assert!(
        server.log().contains("deleted data that no upload owns"),
        "{}",
        server.log()
    );
    assert_eq!(
        server
            .terminate(Duration::from_secs(10))
            .map(|s| s.success()),
        Some(true)
    );
    assert!(fsck(&dir, false).status.success());
}

#[test]
fn a_directory_without_ferry_data_or_in_use_is_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = fsck(tmp.path(), false);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let dir = tmp.path().join("data");
    let server = Server::start_in(&dir, &[]);
    let out = fsck(&dir, false);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already"),
        "{out:?}"
    );
    drop(server);
}
