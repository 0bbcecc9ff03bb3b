//! The client's settings: values that cannot work are refused with a message naming the flag
//! (exit 2) before anything is sent; `--limit-rate 0` is no cap, as with curl; resume state is
//! never kept under the current directory.

use crate::support::download::{run, text};
use crate::support::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn values_that_cannot_work_exit_2_naming_the_flag() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("f.bin");
    std::fs::write(&file, b"abc").unwrap();
    let f = file.to_str().unwrap();
    // Nothing listens there: a refusal must come before any connection is tried.
    let url = "http://127.0.0.1:9/files/";
    let cases: [(&[&str], &str); 8] = [
        (
            &["upload", "--stall-timeout", "0s", f, url],
            "--stall-timeout",
        ),
        (
            &["upload", "--connect-timeout", "0", f, url],
            "--connect-timeout",
        ),
        (&["upload", "--chunk-size", "0", f, url], "--chunk-size"),
        (
            &["upload", "--files-at-once", "0", f, url],
            "--files-at-once",
        ),
        (&["upload", "--max-parallel", "0", f, url], "--max-parallel"),
        (&["upload", "-j", "0", f, url], "-j"),
        (
            &["download", "--max-parallel", "0", "http://127.0.0.1:9/x"],
            "--max-parallel",
        ),
        (
            &["download", "--stall-timeout", "0s", "http://127.0.0.1:9/x"],
            "--stall-timeout",
        ),
    ];
    for (args, flag) in cases {
        let r = run_ferry(args, &t.path().join("state"), Duration::from_secs(20));
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(flag), "{args:?}: {}", r.stderr);
        assert!(
            r.elapsed < Duration::from_secs(5),
            "{args:?} took {:?}",
            r.elapsed
        );
    }
}

#[test]
fn limit_rate_0_is_no_cap() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (file, _) = random_file(t.path(), "f.bin", 2 << 20, 7);
    let r = run_ferry(
        &[
            "upload",
            "--limit-rate",
            "0",
            file.to_str().unwrap(),
            &server.files_url,
        ],
        &t.path().join("state"),
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
}

#[test]
fn without_a_home_the_state_is_never_under_the_current_directory() {
    let t = tempfile::tempdir().unwrap();
    // HOME empty and a relative XDG_STATE_HOME (which the XDG spec says to ignore): `status`
    // only reads, so nothing is written wherever the state is.
    let out = run(
        Command::new(ferry_bin())
            .current_dir(t.path())
            .arg("status")
            .env("HOME", "")
            .env("XDG_STATE_HOME", "rel")
            .env_remove("FERRY_STATE_DIR")
            .stdin(Stdio::null()),
        Duration::from_secs(20),
    );
    // The home directory then comes from the password database: an absolute path.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains(" in /"), "{said}");
    let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "created {left:?}");
}
