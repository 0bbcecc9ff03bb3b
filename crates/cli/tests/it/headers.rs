//! `-H/--header`: sent with every request of upload, download and forget (a gate that wants a
//! token lets them through), and never written to the resume state or the logs.

use crate::support::download::{Kid, Nginx, ferry_download, text, wait_saved};
use crate::support::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "s3cret-9f2c41d7";

/// Every file under `dir`, read whole: none may hold the secret.
fn assert_not_in_files(dir: &Path) {
    for e in walk(dir) {
        let bytes = std::fs::read(&e).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "{} holds the header's value",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `ferry ARGS` in the background with stderr to `err`.
fn spawn(args: &[&str], err: &Path) -> Kid {
    Kid(Some(
        Command::new(ferry_bin())
            .args(args)
            .env_remove("FERRY_STATE_DIR")
            .env_remove("FERRY_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(err).unwrap())
            .spawn()
            .unwrap(),
    ))
}

#[test]
fn headers_reach_every_request_and_are_never_saved_or_logged() {
    let server = Server::start(&[]);
    let gate = Nginx::gate(server.addr, "X-Api-Key", SECRET);
    let endpoint = gate.url("files/");
    let t = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(t.path(), "f.bin", 6 << 20, 3);
    let f = file.to_str().unwrap();
    let state = t.path().join("state");
    let header = format!("X-Api-Key: {SECRET}");

    // Without the header the gate refuses.
    let r = run_ferry(
        &["upload", "--retries", "0", f, &endpoint],
        &t.path().join("nostate"),
        Duration::from_secs(60),
    );
    assert_ne!(r.code, Some(0), "{}", r.stderr);

    // Interrupted with the record on disk, at trace.
    upload_then_kill(&["-H", &header, "--log", "trace", f, &endpoint], &state);
    assert_not_in_files(&state);
    let logged = std::fs::read_to_string(state.with_extension("killed.err")).unwrap();
    assert!(logged.contains("TRACE"), "traced: {logged}");
    assert!(!logged.contains(SECRET), "{logged}");

    // Resumed with the header, at trace again.
    let r = run_ferry(
        &["upload", "-H", &header, "--log", "trace", f, &endpoint],
        &state,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stderr.contains(SECRET));
    // nginx drops request trailers: the checksum moves to a header, once, and the upload goes on.
    assert_eq!(
        r.stderr.matches("sending checksums in a header").count(),
        1,
        "{}",
        r.stderr
    );
    let url = r.stdout.lines().next().unwrap().to_owned();
    assert!(url.starts_with(&gate.url("files/")), "{url}");

    // Download through the gate, interrupted and resumed.
    let dstate = t.path().join("dstate");
    let out = t.path().join("back.bin");
    let err = t.path().join("down.err");
    let mut down = spawn(
        &[
            "download",
            "-H",
            &header,
            "--log",
            "trace",
            "--limit-rate",
            "1M",
            "--state-dir",
            dstate.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            &url,
        ],
        &err,
    );
    wait_saved(&dstate, 1, Duration::from_secs(20));
    down.kill9();
    assert_not_in_files(&dstate);
    assert!(!std::fs::read_to_string(&err).unwrap().contains(SECRET));
    let done = ferry_download(&dstate, &["-H", &header, "-o", out.to_str().unwrap(), &url]);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done.stderr));
    assert_eq!(sha256_file(&out), sha);

    // forget deletes an unfinished upload through the gate.
    let (other, _) = random_file(t.path(), "g.bin", 6 << 20, 4);
    let o = other.to_str().unwrap();
    let fstate = t.path().join("fstate");
    upload_then_kill(&["-H", &header, o, &endpoint], &fstate);
    let r = run_ferry(
        &["forget", "-H", &header, o],
        &fstate,
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let said = r.stdout + &r.stderr;
    assert!(said.contains("deleted http"), "{said}");
    assert!(walk(&fstate.join("transfers")).is_empty());
}

#[test]
fn a_header_ferry_sets_itself_is_refused_and_a_bad_one_is_not_echoed() {
    let t = tempfile::tempdir().unwrap();
    for h in [
        "Upload-Offset: 0",
        "Content-Length: 1",
        "Accept-Encoding: gzip",
        "Authorization Bearer s3cret-typo",
    ] {
        for cmd in [
            &["download", "-H", h][..],
            &["upload", "-H", h, "/dev/null"],
        ] {
            let r = run_ferry(
                &[cmd, &["http://127.0.0.1:9/x"]].concat(),
                &t.path().join("state"),
                Duration::from_secs(20),
            );
            assert_eq!(r.code, Some(2), "{cmd:?} {h}: {}", r.stderr);
            assert!(r.stderr.contains("-H"), "{cmd:?} {h}: {}", r.stderr);
            assert!(!r.stderr.contains("s3cret"), "{cmd:?} {h}: {}", r.stderr);
        }
    }
}
