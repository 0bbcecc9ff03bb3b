//! Closed standard output and error (a log reader that went away, `ferry status | head -1`):
//! no panic, and the server still stops on SIGTERM. tracing-subscriber reports a failed log
//! write with `eprintln!`, which panicked on the closed stderr inside the task that handles
//! SIGTERM, so the server could no longer be stopped.

use crate::support::download::Kid;
use crate::support::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_server_whose_stderr_is_closed_still_stops_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let mut child = Command::new(ferry_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(t.path().join("data"))
        .env_remove("FERRY_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // Both pipes are now closed at the reading end.
    drop(child.stderr.take());
    let files_url = first
        .trim()
        .strip_prefix("ferry listening on ")
        .unwrap()
        .to_owned();
    let kid = Kid(Some(child));
    // Requests that log (a creation at info) still work.
    for _ in 0..3 {
        let r = client()
            .post(&files_url)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", "10")
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    kid.signal("TERM");
    let mut kid = kid;
    let t0 = Instant::now();
    let status = kid
        .wait_for(Duration::from_secs(20))
        .expect("stopped on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn clients_with_a_closed_stdout_do_not_panic() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..3 {
        random_file(&dir, &format!("f{i}"), 1000, i);
    }
    let state = t.path().join("state");
    // A record for `status` to print.
    let (big, _) = random_file(t.path(), "big", 6 << 20, 9);
    upload_then_kill(&[big.to_str().unwrap(), &server.files_url], &state);
    for args in [
        vec!["status"],
        vec!["upload", dir.to_str().unwrap(), server.files_url.as_str()],
    ] {
        let mut child = Command::new(ferry_bin())
            .args(&args)
            .arg("--state-dir")
            .arg(&state)
            .env_remove("FERRY_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
