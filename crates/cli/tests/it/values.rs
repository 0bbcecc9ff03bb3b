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
        // An option between the file and the URL is fine (clap refused it: "2 values required").
        &[
            "upload",
            file.to_str().unwrap(),
            "--limit-rate",
            "0",
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

/// Bytes sent, over the time they took, must stay under the cap plus the burst a token bucket
/// allows (a tenth of a second's worth) for the whole run, whatever the files and streams.
fn assert_capped(bytes: u64, rate: u64, took: Duration, what: &str) {
    let least = Duration::from_secs_f64((bytes as f64 - rate as f64 / 10.0) / rate as f64);
    assert!(
        took >= least,
        "{what}: {bytes} bytes at {rate} B/s took {took:?} (at least {least:?})"
    );
}

#[test]
fn limit_rate_is_one_budget_for_the_whole_run() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    // Small files go in their creation request, one request each: that path ignored the
    // limit, as five 2 MiB files at 1M finished in 0.15 s.
    for i in 0..5 {
        random_file(&dir, &format!("f{i}"), 256 << 10, i);
    }
    let rate = 512u64 << 10;
    let r = run_ferry(
        &[
            "upload",
            "--limit-rate",
            "512K",
            "--files-at-once",
            "5",
            dir.to_str().unwrap(),
            &server.files_url,
        ],
        &t.path().join("state"),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_capped(5 * (256 << 10), rate, r.elapsed, "5 small files");

    // Two larger files, four streams each.
    let (a, _) = random_file(t.path(), "big1", 3 << 20, 9);
    let (b, _) = random_file(t.path(), "big2", 3 << 20, 10);
    let r = run_ferry(
        &[
            "upload",
            "--limit-rate",
            "2M",
            "-j",
            "4",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            &server.files_url,
        ],
        &t.path().join("state"),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_capped(6 << 20, 2 << 20, r.elapsed, "2 files, 4 streams each");

    // Downloading them back, four streams each.
    let out_dir = t.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut args = vec![
        "--limit-rate",
        "2M",
        "-j",
        "4",
        "-d",
        out_dir.to_str().unwrap(),
    ];
    // Several files: each beside its URL.
    args.extend(
        r.stdout
            .lines()
            .filter_map(|l| l.split_once('\t').map(|(_, u)| u)),
    );
    assert_eq!(args.len(), 8, "{}", r.stdout);
    let start = std::time::Instant::now();
    let out = crate::support::download::ferry_download(&t.path().join("dstate"), &args);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_capped(6 << 20, 2 << 20, took, "2 downloads");
}

#[test]
fn parallel_streams_refused_by_size_are_explained_once() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..3 {
        random_file(&dir, &format!("f{i}"), 3 << 20, i);
    }
    let r = run_ferry(
        &[
            "upload",
            "-j",
            "8",
            dir.to_str().unwrap(),
            &server.files_url,
        ],
        &t.path().join("state"),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stderr
            .matches("-j 8: files under 32.0 MiB go over one stream")
            .count(),
        1,
        "{}",
        r.stderr
    );
}

/// A small file goes in its creation request; paced, that request outlasts the stall timeout,
/// which must then bound only the time without progress (it was a whole-request deadline, and
/// every attempt was cut off).
#[test]
fn a_paced_creation_outlasting_the_stall_timeout_finishes() {
    let server = Server::start(&[]);
    let t = tempfile::tempdir().unwrap();
    let (file, sha) = random_file(t.path(), "f.bin", 200 << 10, 11);
    for protocol in ["tus", "ietf"] {
        let r = run_ferry(
            &[
                "upload",
                "--protocol",
                protocol,
                "--limit-rate",
                "32K",
                "--stall-timeout",
                "2s",
                file.to_str().unwrap(),
                &server.files_url,
            ],
            &t.path().join(format!("state-{protocol}")),
            Duration::from_secs(60),
        );
        assert_eq!(r.code, Some(0), "{protocol}: {}", r.stderr);
        assert!(!r.stderr.contains("retrying"), "{protocol}: {}", r.stderr);
        assert!(
            r.elapsed > Duration::from_secs(5),
            "{protocol}: {:?}",
            r.elapsed
        );
        assert_eq!(get_sha256(r.stdout.trim()), sha);
    }
}
